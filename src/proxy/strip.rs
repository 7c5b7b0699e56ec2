//! Hides what meter's own `stream_options.include_usage` (injected by `rewrite`) adds to an
//! OpenAI-format stream, so the client sees exactly the stream it asked for: the usage-only
//! chunk (`"choices": []` with a usage object) is removed, and so is the `"usage": null` member
//! that OpenAI then adds to every other chunk. Every other byte passes unchanged and in order; a
//! chunk that carries choices is never removed. Only complete events are judged, so the tail of
//! an event still arriving is held back until its blank line comes (a client cannot use half an
//! event anyway).

use bytes::{Bytes, BytesMut};
use memchr::memmem;

/// Past this many held-back bytes, meter stops judging and passes everything through.
const MAX_HELD_BYTES: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct UsageChunkStripper {
    held: BytesMut,
    gave_up: bool,
    /// Events removed so far (the test and the record can tell).
    pub removed: u32,
}

impl UsageChunkStripper {
    /// Takes the next upstream bytes; returns the bytes to forward now (possibly empty).
    pub fn filter(&mut self, data: Bytes) -> Bytes {
        if self.gave_up {
            return data;
        }
        // Fast path: nothing held, the frame ends on an event boundary and holds no usage
        // member at all: forward it as is, without a copy.
        if self.held.is_empty()
            && last_boundary(&data) == Some(data.len())
            && memmem::find(&data, b"\"usage\"").is_none()
        {
            return data;
        }
        self.held.extend_from_slice(&data);
        let Some(end) = last_boundary(&self.held) else {
            if self.held.len() > MAX_HELD_BYTES {
                self.gave_up = true;
                return self.held.split().freeze();
            }
            return Bytes::new();
        };
        let complete = self.held.split_to(end).freeze();
        let mut out = BytesMut::with_capacity(complete.len());
        for event in events(&complete) {
            if is_usage_only_event(event) {
                self.removed += 1;
            } else {
                remove_null_usage(event, &mut out);
            }
        }
        out.freeze()
    }

    /// The stream ended: whatever is held goes out as is.
    pub fn finish(&mut self) -> Bytes {
        self.held.split().freeze()
    }
}

/// Copies `event` to `out` without its `"usage": null` members (and the comma that joined each
/// to its neighbours). The pattern cannot match inside a JSON string, where quotes are escaped.
fn remove_null_usage(event: &[u8], out: &mut BytesMut) {
    let mut rest = event;
    while let Some(at) = memmem::find(rest, b"\"usage\"") {
        let after_key = &rest[at + b"\"usage\"".len()..];
        let value = skip_ws(after_key)
            .strip_prefix(b":")
            .map(skip_ws)
            .filter(|v| v.starts_with(b"null"));
        let Some(value) = value else {
            out.extend_from_slice(&rest[..at + b"\"usage\"".len()]);
            rest = after_key;
            continue;
        };
        let member_end = rest.len() - value.len() + b"null".len();
        // Drop a preceding comma (`,"usage":null}`) or else a following one (`{"usage":null,`).
        let before = &rest[..at];
        let trimmed = trim_ws_end(before);
        if let Some(without_comma) = trimmed.strip_suffix(b",") {
            out.extend_from_slice(without_comma);
            rest = &rest[member_end..];
        } else {
            out.extend_from_slice(before);
            let after = skip_ws(&rest[member_end..]);
            rest = after
                .strip_prefix(b",")
                .map(skip_ws)
                .unwrap_or(&rest[member_end..]);
        }
    }
    out.extend_from_slice(rest);
}

fn trim_ws_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// Offset just past the last blank line (an event's end) in `data`, if any. A trailing lone
/// `\r` is not taken as a line end: a `\n` may follow in the next frame.
fn last_boundary(data: &[u8]) -> Option<usize> {
    let mut last = None;
    let mut line_start = 0;
    let mut i = 0;
    while let Some(offset) = memchr::memchr2(b'\n', b'\r', &data[i..]) {
        let at = i + offset;
        let next = if data[at] == b'\r' {
            match data.get(at + 1) {
                Some(b'\n') => at + 2,
                Some(_) => at + 1,
                None => break,
            }
        } else {
            at + 1
        };
        if at == line_start {
            last = Some(next);
        }
        line_start = next;
        i = next;
    }
    last
}

/// Splits complete events (each with its terminating blank line) out of `data`, which ends on
/// a boundary.
fn events(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < data.len() {
        match first_boundary(&data[start..]) {
            Some(end) => {
                out.push(&data[start..start + end]);
                start += end;
            }
            None => {
                out.push(&data[start..]);
                break;
            }
        }
    }
    out
}

/// Offset just past the first blank line in `data`.
fn first_boundary(data: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    let mut i = 0;
    while let Some(offset) = memchr::memchr2(b'\n', b'\r', &data[i..]) {
        let at = i + offset;
        let next = if data[at] == b'\r' && data.get(at + 1) == Some(&b'\n') {
            at + 2
        } else {
            at + 1
        };
        if at == line_start {
            return Some(next);
        }
        line_start = next;
        i = next;
    }
    None
}

/// A cheap test that may say yes wrongly but never no wrongly: an empty `choices` array and a
/// `usage` key appear somewhere.
fn has_usage_only(data: &[u8]) -> bool {
    memmem::find(data, b"\"usage\"").is_some() && empty_choices(data)
}

fn empty_choices(data: &[u8]) -> bool {
    memmem::find_iter(data, b"\"choices\"").any(|at| {
        let rest = skip_ws(&data[at + b"\"choices\"".len()..]);
        rest.strip_prefix(b":")
            .map(skip_ws)
            .and_then(|rest| rest.strip_prefix(b"["))
            .map(skip_ws)
            .is_some_and(|rest| rest.starts_with(b"]"))
    })
}

fn skip_ws(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// Whether one SSE event is a chunk with no choices and a non-null usage object.
fn is_usage_only_event(event: &[u8]) -> bool {
    if !has_usage_only(event) {
        return false;
    }
    let mut data = Vec::new();
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(value) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(value.strip_prefix(b" ").unwrap_or(value));
        }
    }
    #[derive(serde::Deserialize)]
    struct Chunk {
        choices: Option<Vec<serde::de::IgnoredAny>>,
        usage: Option<serde_json::Map<String, serde_json::Value>>,
    }
    match serde_json::from_slice::<Chunk>(&data) {
        Ok(chunk) => chunk.choices.is_some_and(|c| c.is_empty()) && chunk.usage.is_some(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const A: &str =
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
    /// `A` as OpenAI sends it when stream usage was asked for.
    const A_NULL: &str = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const U: &str = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
    const D: &str = "data: [DONE]\n\n";

    /// Feeds `stream` in pieces of `size` bytes and returns what the client gets.
    fn run(stream: &str, size: usize) -> (String, u32) {
        let mut stripper = UsageChunkStripper::default();
        let mut out = Vec::new();
        for piece in stream.as_bytes().chunks(size.max(1)) {
            out.extend_from_slice(&stripper.filter(Bytes::copy_from_slice(piece)));
        }
        out.extend_from_slice(&stripper.finish());
        (String::from_utf8(out).unwrap(), stripper.removed)
    }

    #[test]
    fn removes_only_the_usage_only_chunk_in_any_chunking() {
        let both =
            "data: {\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}\n\n";
        let crlf_usage = U.replace('\n', "\r\n");
        let cases = [
            (format!("{A}{A}{U}{D}"), format!("{A}{A}{D}"), 1),
            (format!("{A_NULL}{A_NULL}{U}{D}"), format!("{A}{A}{D}"), 1),
            (
                "data: {\"usage\" : null , \"id\":\"c\",\"choices\":[],\"x\":\"\\\"usage\\\":null\"}\n\n".to_string(),
                "data: {\"id\":\"c\",\"choices\":[],\"x\":\"\\\"usage\\\":null\"}\n\n".to_string(),
                0,
            ),
            (format!("{A}{both}{D}"), format!("{A}{both}{D}"), 0),
            (format!("{A}: keep-alive\n\n{U}{D}"), format!("{A}: keep-alive\n\n{D}"), 1),
            (format!("{}{crlf_usage}{}", A.replace('\n', "\r\n"), D.replace('\n', "\r\n")), format!("{}{}", A.replace('\n', "\r\n"), D.replace('\n', "\r\n")), 1),
            // No final blank line: passed through at the end, never lost.
            (format!("{A}data: {{\"choices\":[]"), format!("{A}data: {{\"choices\":[]"), 0),
            (format!("{A}{}", "data: {\"choices\": [ ], \"usage\": {\"total_tokens\": 3}}\n\n"), A.to_string(), 1),
        ];
        for (stream, want, removed) in cases {
            for size in [1, 2, 3, 7, 64, 100_000] {
                assert_eq!(
                    run(&stream, size),
                    (want.clone(), removed),
                    "{stream:?} in pieces of {size}"
                );
            }
        }
    }

    #[test]
    fn whole_events_pass_without_a_copy() {
        let mut stripper = UsageChunkStripper::default();
        let frame = Bytes::from(A);
        let out = stripper.filter(frame.clone());
        assert_eq!(out.as_ptr(), frame.as_ptr());
    }
}
