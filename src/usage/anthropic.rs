//! Usage parsers for the Anthropic Messages API (`POST /v1/messages`), one JSON body or an SSE
//! stream of events. They keep at most one bounded body or event, never fail, never log bodies,
//! and never add a stream's `message_start` and `message_delta` counts together.
//!
//! | Anthropic `usage` field | meter bucket |
//! |---|---|
//! | `input_tokens` (after the last cache breakpoint: both cache fields excluded) | `input_tokens` |
//! | `cache_read_input_tokens` | `cache_read_tokens` |
//! | `cache_creation_input_tokens` (= `cache_creation`'s 5m + 1h parts) | `cache_write_tokens` |
//! | `cache_creation.ephemeral_1h_input_tokens` (part of the above) | `cache_write_1h_tokens` |
//! | `output_tokens` (extended thinking included: thinking is billed as output) | `output_tokens` |
//! | `output_tokens_details.thinking_tokens` (part of the above) | `reasoning_tokens` |
//! | `server_tool_use.web_search_requests` (billed per search) | `quantities.web_search_calls` |
//! | `server_tool_use.web_fetch_requests` (no charge beyond its tokens) | ignored |
//! | `iterations[]` (per sampling iteration) | see "Iterations" below |
//! | `service_tier`, `speed`, `inference_geo` | ignored (meter has no field for them yet) |
//!
//! Sources (Claude API docs, read 2026): the `usage` object and errors,
//! <https://platform.claude.com/docs/en/api/messages>,
//! <https://platform.claude.com/docs/en/api/errors>;
//! `total_input_tokens = cache_read_input_tokens + cache_creation_input_tokens + input_tokens`
//! and "`cache_creation_input_tokens` equals the sum of the values in the `cache_creation`
//! object", <https://platform.claude.com/docs/en/build-with-claude/prompt-caching>;
//! `output_tokens_details.thinking_tokens` ("how many of the billed output tokens were internal
//! reasoning", added 2026-05-27, "when streaming ... only on the final `message_delta` event"),
//! <https://platform.claude.com/docs/en/build-with-claude/extended-thinking>; web search "$10 per
//! 1,000 searches",
//! <https://platform.claude.com/docs/en/agents-and-tools/tool-use/web-search-tool>;
//! web fetch "no additional charges beyond standard token costs",
//! <https://platform.claude.com/docs/en/agents-and-tools/tool-use/web-fetch-tool>.
//!
//! Responses from models or dates without `output_tokens_details` leave `reasoning_tokens` at 0:
//! their thinking is still inside `output_tokens`, just not split out. A count that is absent or
//! `null` reads as 0; a report without both `input_tokens` and `output_tokens`, or with a count
//! of the wrong type, is unreadable (`usage: None`).
//!
//! # Streams
//!
//! <https://platform.claude.com/docs/en/build-with-claude/streaming>: `message_start` carries the
//! `Message` with a first `usage` (input and cache counts and an initial `output_tokens`, often
//! 1); then content blocks (`content_block_start`, `content_block_delta` of type `text_delta`,
//! `thinking_delta`, `input_json_delta`, `signature_delta` or `citations_delta`,
//! `content_block_stop`); then one or more `message_delta`, whose "token counts ... are
//! *cumulative*"; then `message_stop`. `ping` events may come anywhere; an `error` event (say
//! `overloaded_error`) ends the stream without `message_stop`.
//!
//! Each `usage` seen replaces, field by field, what an earlier one said: older API versions put
//! only `output_tokens` in `message_delta`, newer ones repeat or refresh the input, cache and
//! `server_tool_use` counts there too (a server-tool loop can leave `message_start` far below
//! the final figures). Nothing is ever summed across events. The report is final (`usage:
//! Some`) once a readable `message_delta` usage was followed by `message_stop`, or the stream
//! ended right after a `message_delta` that names its `stop_reason`; a `message_delta` without a
//! stop reason may still be followed by larger ones. Anything less, or an `error` event, leaves
//! `usage: None` with what was read so far (the `message_start` counts at least) in `partial`.
//!
//! Model and id come from `message_start.message` (`model`, `id` = `msg_...`) or the JSON body.
//! The generated text kept for the estimator is every `text`, `thinking` and tool-input
//! fragment (`input_json_delta.partial_json`, or a JSON body's `tool_use.input`) and advisor
//! advice; signatures, redacted thinking, citations and server-tool results are not generated
//! text.
//!
//! # Iterations
//!
//! `usage.iterations[]` (beta) lists one entry per sampling iteration with its own input, cache
//! and output counts; every entry is billed, but the top-level fields leave some out:
//!
//! - `compaction` entries: "The top-level `input_tokens` and `output_tokens` do not include
//!   compaction iteration usage ... To calculate total tokens consumed and billed for a request,
//!   sum across all entries in the `usage.iterations` array"
//!   (<https://platform.claude.com/docs/en/build-with-claude/compaction>).
//! - `advisor_message` entries: "Top-level `usage` fields reflect executor tokens only", and
//!   top-level `input_tokens` and `cache_read_input_tokens` "reflect the first executor
//!   iteration only"
//!   (<https://platform.claude.com/docs/en/agents-and-tools/tool-use/advisor-tool>).
//! - `message` and `fallback_message` entries: the executor's (or fallback model's) own turns.
//!
//! So each bucket is the larger of the top-level count and the sum over all entries: when the
//! array is complete the sum is the billed total and the top level is part of it, so nothing is
//! counted twice; when the array is absent, empty or lacks a field (it is absent unless a beta
//! feature is on), the top-level count stands. `cache_write_1h_tokens` is summed from each
//! entry's `cache_creation` the same way. Entries of another model (`advisor_message`,
//! `fallback_message` name their `model`) are counted in the same buckets, so their tokens are
//! not lost but are priced at the record's model's rates: one record has one model.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::sse::{SseEvent, SseFramer};
use super::{BoundedBody, OutputText, ParsedUsage, Quantities, Usage, UsageParser};

/// Default cap on a buffered non-streaming body; a larger body yields `usage: None`.
pub const MAX_JSON_BODY_BYTES: usize = 64 * 1024 * 1024;

/// A count of the wrong type (a string, a negative or fractional number, an object).
#[derive(Debug)]
struct Unreadable;

/// One `usage` object as read. `None` fields were absent or `null`: in a stream they leave the
/// earlier value in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Report {
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_write: Option<u64>,
    /// `cache_creation` as (5-minute, 1-hour) writes, when that object was readable.
    cache_split: Option<(u64, u64)>,
    thinking: Option<u64>,
    web_searches: Option<u64>,
    /// The buckets summed over `iterations[]`, when that array was present.
    iterations: Option<Usage>,
}

impl Report {
    /// Reads a `usage` value: `None` when it is not an object, has neither `input_tokens` nor
    /// `output_tokens`, or has a main count of the wrong type. The detail objects only refine
    /// or add, so a malformed one is skipped rather than failing the whole report.
    fn read(value: &Value) -> Option<Report> {
        let usage = value.as_object()?;
        let report = Report::read_counts(usage).ok()?;
        if report.input.is_none() && report.output.is_none() {
            return None;
        }
        Some(report)
    }

    fn read_counts(usage: &Map<String, Value>) -> Result<Report, Unreadable> {
        Ok(Report {
            input: count(usage, "input_tokens")?,
            output: count(usage, "output_tokens")?,
            cache_read: count(usage, "cache_read_input_tokens")?,
            cache_write: count(usage, "cache_creation_input_tokens")?,
            cache_split: usage.get("cache_creation").and_then(cache_split),
            thinking: nested_count(usage, "output_tokens_details", "thinking_tokens"),
            web_searches: nested_count(usage, "server_tool_use", "web_search_requests"),
            iterations: usage.get("iterations").and_then(iteration_sums),
        })
    }

    /// Takes every field `newer` has; keeps the rest (cumulative stream semantics).
    fn update(&mut self, newer: Report) {
        fn take<T>(field: &mut Option<T>, newer: Option<T>) {
            if newer.is_some() {
                *field = newer;
            }
        }
        take(&mut self.input, newer.input);
        take(&mut self.output, newer.output);
        take(&mut self.cache_read, newer.cache_read);
        take(&mut self.cache_write, newer.cache_write);
        take(&mut self.cache_split, newer.cache_split);
        take(&mut self.thinking, newer.thinking);
        take(&mut self.web_searches, newer.web_searches);
        take(&mut self.iterations, newer.iterations);
    }

    /// Whether this can stand as the final report: both main counts were read.
    fn is_complete(&self) -> bool {
        self.input.is_some() && self.output.is_some()
    }

    /// The buckets, per the tables in the module comment.
    fn usage(&self) -> Usage {
        let (write_5m, write_1h) = self.cache_split.unwrap_or((0, 0));
        let top = Usage {
            input_tokens: self.input.unwrap_or(0),
            cache_read_tokens: self.cache_read.unwrap_or(0),
            // Both describe the same writes; a refreshed total without a fresh split (or the
            // reverse) must not lose the larger one.
            cache_write_tokens: self
                .cache_write
                .unwrap_or(0)
                .max(write_5m.saturating_add(write_1h)),
            cache_write_1h_tokens: write_1h,
            output_tokens: self.output.unwrap_or(0),
            reasoning_tokens: 0,
        };
        let mut usage = match &self.iterations {
            Some(sums) => Usage {
                input_tokens: top.input_tokens.max(sums.input_tokens),
                cache_read_tokens: top.cache_read_tokens.max(sums.cache_read_tokens),
                cache_write_tokens: top.cache_write_tokens.max(sums.cache_write_tokens),
                cache_write_1h_tokens: top.cache_write_1h_tokens.max(sums.cache_write_1h_tokens),
                output_tokens: top.output_tokens.max(sums.output_tokens),
                reasoning_tokens: 0,
            },
            None => top,
        };
        // The "part of" buckets never exceed their parents, whatever a body claims.
        usage.cache_write_1h_tokens = usage.cache_write_1h_tokens.min(usage.cache_write_tokens);
        usage.reasoning_tokens = self.thinking.unwrap_or(0).min(usage.output_tokens);
        usage
    }

    fn quantities(&self) -> Quantities {
        Quantities {
            web_search_calls: self.web_searches.unwrap_or(0),
            ..Quantities::default()
        }
    }
}

/// A count field: `Ok(None)` when absent or `null`.
fn count(object: &Map<String, Value>, key: &str) -> Result<Option<u64>, Unreadable> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or(Unreadable),
    }
}

/// `object[outer][key]` as a count, `None` when anything on the way is missing or odd.
fn nested_count(object: &Map<String, Value>, outer: &str, key: &str) -> Option<u64> {
    object.get(outer)?.as_object()?.get(key)?.as_u64()
}

/// A `cache_creation` object as (5-minute, 1-hour) writes.
fn cache_split(value: &Value) -> Option<(u64, u64)> {
    let split = value.as_object()?;
    let write_5m = count(split, "ephemeral_5m_input_tokens").ok()?;
    let write_1h = count(split, "ephemeral_1h_input_tokens").ok()?;
    if write_5m.is_none() && write_1h.is_none() {
        return None;
    }
    Some((write_5m.unwrap_or(0), write_1h.unwrap_or(0)))
}

/// Sums the buckets over an `iterations` array. An entry or count that cannot be read adds
/// nothing: the sum only ever raises a bucket above the top-level count, so leaving something
/// out can lose tokens but never counts any twice.
fn iteration_sums(value: &Value) -> Option<Usage> {
    let entries = value.as_array()?;
    let mut sums = Usage::default();
    for entry in entries {
        let Some(entry) = entry.as_object() else {
            continue;
        };
        let lenient = |key: &str| entry.get(key).and_then(Value::as_u64).unwrap_or(0);
        let (write_5m, write_1h) = entry
            .get("cache_creation")
            .and_then(cache_split)
            .unwrap_or((0, 0));
        let cache_write =
            lenient("cache_creation_input_tokens").max(write_5m.saturating_add(write_1h));
        sums.input_tokens = sums.input_tokens.saturating_add(lenient("input_tokens"));
        sums.cache_read_tokens = sums
            .cache_read_tokens
            .saturating_add(lenient("cache_read_input_tokens"));
        sums.cache_write_tokens = sums.cache_write_tokens.saturating_add(cache_write);
        sums.cache_write_1h_tokens = sums.cache_write_1h_tokens.saturating_add(write_1h);
        sums.output_tokens = sums.output_tokens.saturating_add(lenient("output_tokens"));
    }
    Some(sums)
}

fn non_empty_string(value: Option<&Value>) -> Option<String> {
    match value {
        Some(Value::String(text)) if !text.is_empty() => Some(text.clone()),
        _ => None,
    }
}

/// Parses one JSON object; `None` for anything else (an array, `[DONE]`, junk, truncation).
fn parse_object<'de, T: Deserialize<'de>>(json: &'de [u8]) -> Option<T> {
    let first = json.iter().find(|byte| !byte.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// Pushes the generated text of one content block of a complete message (or of a
/// `content_block_start`, whose text fields are usually empty).
fn push_block_text(block: &Value, text: &mut OutputText) {
    let Some(block) = block.as_object() else {
        return;
    };
    let field = |key: &str| {
        block
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    match block.get("type").and_then(Value::as_str) {
        Some("text") => field("text").into_iter().for_each(|piece| text.push(piece)),
        Some("thinking") => field("thinking")
            .into_iter()
            .for_each(|piece| text.push(piece)),
        Some("tool_use" | "server_tool_use") => match block.get("input") {
            // Streams open tool blocks with `{}` and send the input as deltas.
            Some(Value::Object(input)) if !input.is_empty() => {
                if let Ok(json) = serde_json::to_string(input) {
                    text.push(&json);
                }
            }
            _ => {}
        },
        Some("advisor_tool_result") => {
            let advice = block
                .get("content")
                .and_then(Value::as_object)
                .filter(|content| {
                    content.get("type").and_then(Value::as_str) == Some("advisor_result")
                })
                .and_then(|content| content.get("text"))
                .and_then(Value::as_str);
            if let Some(advice) = advice.filter(|s| !s.is_empty()) {
                text.push(advice);
            }
        }
        _ => {}
    }
}

/// The top-level fields meter reads from a `Message` (or an error body).
#[derive(Debug, Default, Deserialize)]
struct WireMessage {
    #[serde(default, rename = "type")]
    kind: Option<Value>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    model: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    content: Option<Value>,
}

/// A non-streaming `Message`: the body is buffered (up to a limit) and parsed at the end.
#[derive(Debug)]
pub struct MessagesJson {
    body: BoundedBody,
}

impl Default for MessagesJson {
    fn default() -> Self {
        MessagesJson::with_limit(MAX_JSON_BODY_BYTES)
    }
}

impl MessagesJson {
    /// A parser that gives up (usage `None`) on bodies larger than `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        MessagesJson {
            body: BoundedBody::with_limit(limit),
        }
    }
}

impl UsageParser for MessagesJson {
    fn feed(&mut self, chunk: &[u8]) {
        self.body.push(chunk);
    }

    fn finish(&mut self) -> ParsedUsage {
        let Some(body) = self.body.take() else {
            return ParsedUsage::default();
        };
        let Some(message) = parse_object::<WireMessage>(&body) else {
            return ParsedUsage::default();
        };
        // `{"type":"error","error":{...},"request_id":"req_..."}`: no message, no usage.
        if matches!(&message.kind, Some(Value::String(kind)) if kind == "error") {
            return ParsedUsage::default();
        }
        let report = message.usage.as_ref().and_then(Report::read);
        let mut output_text = OutputText::default();
        if let Some(Value::Array(blocks)) = &message.content {
            for block in blocks {
                push_block_text(block, &mut output_text);
            }
        }
        ParsedUsage {
            usage: report
                .as_ref()
                .filter(|report| report.is_complete())
                .map(Report::usage),
            model: non_empty_string(message.model.as_ref()),
            request_id: non_empty_string(message.id.as_ref()),
            quantities: report.as_ref().map(Report::quantities).unwrap_or_default(),
            output_text,
            ..ParsedUsage::default()
        }
    }
}

/// A streaming `Message` (`text/event-stream`); see "Streams" in the module comment.
#[derive(Default)]
pub struct MessagesStream {
    framer: SseFramer,
    state: StreamState,
}

#[derive(Default)]
struct StreamState {
    model: Option<String>,
    request_id: Option<String>,
    /// Every `usage` read so far, merged field by field, latest first.
    report: Option<Report>,
    /// A `message_delta` with a readable `usage` was read, and the last one with a `usage` was
    /// readable: an unreadable last report is not replaced by an older, smaller one.
    delta_read: bool,
    /// The last `message_delta` named a `stop_reason`: no larger one is expected.
    delta_final: bool,
    stopped: bool,
    /// An `error` event ended the stream; later events are not trusted.
    errored: bool,
    output_text: OutputText,
}

/// The fields meter reads from one stream event.
#[derive(Debug, Default, Deserialize)]
struct WireEvent {
    #[serde(default, rename = "type")]
    kind: Option<Value>,
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    content_block: Option<Value>,
    #[serde(default)]
    delta: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
}

impl std::fmt::Debug for MessagesStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessagesStream")
            .field("model", &self.state.model)
            .field("request_id", &self.state.request_id)
            .field("report", &self.state.report)
            .field("stopped", &self.state.stopped)
            .field("errored", &self.state.errored)
            .finish_non_exhaustive()
    }
}

impl UsageParser for MessagesStream {
    fn feed(&mut self, chunk: &[u8]) {
        let state = &mut self.state;
        self.framer.feed(chunk, |event| state.on_event(event));
    }

    fn finish(&mut self) -> ParsedUsage {
        let state = &mut self.state;
        self.framer.finish(|event| state.on_event(event));
        let state = std::mem::take(&mut self.state);
        let complete = !state.errored
            && state.delta_read
            && (state.stopped || state.delta_final)
            && state.report.as_ref().is_some_and(Report::is_complete);
        let usage = state.report.as_ref().map(Report::usage);
        ParsedUsage {
            usage: usage.filter(|_| complete),
            partial: usage.filter(|_| !complete),
            model: state.model,
            request_id: state.request_id,
            quantities: state
                .report
                .as_ref()
                .map(Report::quantities)
                .unwrap_or_default(),
            output_text: state.output_text,
            ..ParsedUsage::default()
        }
    }
}

impl StreamState {
    fn on_event(&mut self, event: &SseEvent<'_>) {
        if self.errored {
            return;
        }
        // Keep-alives are frequent and never matter.
        if event.event == b"ping" {
            return;
        }
        let Some(wire) = parse_object::<WireEvent>(event.data) else {
            return;
        };
        // The data names its type; the SSE `event:` line is the same name, used as a fallback.
        let kind = match &wire.kind {
            Some(Value::String(kind)) => kind.as_str(),
            _ => std::str::from_utf8(event.name()).unwrap_or(""),
        };
        match kind {
            "message_start" => self.on_message_start(wire.message),
            "content_block_start" => {
                if let Some(block) = &wire.content_block {
                    push_block_text(block, &mut self.output_text);
                }
            }
            "content_block_delta" => {
                if let Some(delta) = &wire.delta {
                    self.on_content_delta(delta);
                }
            }
            "message_delta" => self.on_message_delta(wire.delta, wire.usage),
            "message_stop" => self.stopped = true,
            "error" => self.errored = true,
            // `ping`, `content_block_stop` and event types added later carry nothing to read.
            _ => {}
        }
    }

    fn on_message_start(&mut self, message: Option<Value>) {
        let Some(Value::Object(message)) = message else {
            return;
        };
        if self.request_id.is_none() {
            self.request_id = non_empty_string(message.get("id"));
        }
        if self.model.is_none() {
            self.model = non_empty_string(message.get("model"));
        }
        if let Some(report) = message.get("usage").and_then(Report::read) {
            self.merge(report);
        }
    }

    fn on_content_delta(&mut self, delta: &Value) {
        let piece = match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => delta.get("text"),
            Some("thinking_delta") => delta.get("thinking"),
            Some("input_json_delta") => delta.get("partial_json"),
            // `signature_delta`, `citations_delta` and unknown deltas are not generated text.
            _ => None,
        };
        if let Some(piece) = piece.and_then(Value::as_str).filter(|s| !s.is_empty()) {
            self.output_text.push(piece);
        }
    }

    fn on_message_delta(&mut self, delta: Option<Value>, usage: Option<Value>) {
        let usage = match usage {
            None | Some(Value::Null) => return,
            Some(usage) => usage,
        };
        match Report::read(&usage) {
            Some(report) => {
                self.merge(report);
                self.delta_read = true;
                self.delta_final = delta
                    .as_ref()
                    .and_then(|delta| delta.get("stop_reason"))
                    .is_some_and(|reason| matches!(reason, Value::String(s) if !s.is_empty()));
            }
            None => {
                self.delta_read = false;
                self.delta_final = false;
            }
        }
    }

    fn merge(&mut self, report: Report) {
        match &mut self.report {
            Some(merged) => merged.update(report),
            None => self.report = Some(report),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, cache_read: u64, cache_write: u64, write_1h: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            cache_read_tokens: cache_read,
            cache_write_tokens: cache_write,
            cache_write_1h_tokens: write_1h,
            output_tokens: output,
            reasoning_tokens: 0,
        }
    }

    fn reasoning(mut usage: Usage, reasoning: u64) -> Usage {
        usage.reasoning_tokens = reasoning;
        usage
    }

    fn json(body: &str) -> ParsedUsage {
        let mut parser = MessagesJson::default();
        for chunk in body.as_bytes().chunks(5) {
            parser.feed(chunk);
        }
        parser.finish()
    }

    fn stream(events: &[&str]) -> ParsedUsage {
        let mut body = String::new();
        for data in events {
            let kind = serde_json::from_str::<Value>(data)
                .ok()
                .and_then(|value| value.get("type").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            // Line breaks inside the JSON become multi-line data, joined back by the framer.
            let data = data.replace('\n', "\ndata: ");
            body.push_str(&format!("event: {kind}\ndata: {data}\n\n"));
        }
        let mut parser = MessagesStream::default();
        for chunk in body.as_bytes().chunks(7) {
            parser.feed(chunk);
        }
        parser.finish()
    }

    /// Maps one `usage` object as a JSON body and as a stream's final `message_delta` sees it.
    fn check_usage(usage_json: &str, expected: Option<Usage>) {
        let body = format!(
            r#"{{"id":"msg_1","type":"message","model":"m","content":[],"usage":{usage_json}}}"#
        );
        assert_eq!(json(&body).usage, expected, "json body {usage_json}");
        let start = r#"{"type":"message_start","message":{"id":"msg_1","model":"m","usage":{"input_tokens":0,"output_tokens":1}}}"#;
        let delta = format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}},"usage":{usage_json}}}"#
        );
        let parsed = stream(&[start, &delta, r#"{"type":"message_stop"}"#]);
        assert_eq!(parsed.usage, expected, "stream {usage_json}");
    }

    #[test]
    fn bucket_mapping() {
        check_usage(
            r#"{"input_tokens":10,"output_tokens":5}"#,
            Some(usage(10, 0, 0, 0, 5)),
        );
        check_usage(
            r#"{"input_tokens":14,"cache_creation_input_tokens":248,"cache_read_input_tokens":1800,
                "cache_creation":{"ephemeral_5m_input_tokens":148,"ephemeral_1h_input_tokens":100},
                "output_tokens":503,"service_tier":"standard"}"#,
            Some(usage(14, 1800, 248, 100, 503)),
        );
        // Nulls read as absent; a split without the total still counts the writes.
        check_usage(
            r#"{"input_tokens":3,"cache_creation_input_tokens":null,"cache_read_input_tokens":null,
                "cache_creation":{"ephemeral_5m_input_tokens":7,"ephemeral_1h_input_tokens":2},"output_tokens":4}"#,
            Some(usage(3, 0, 9, 2, 4)),
        );
        // A split larger than the total raises the total; thinking above output is clamped.
        check_usage(
            r#"{"input_tokens":1,"cache_creation_input_tokens":5,"cache_creation":{"ephemeral_1h_input_tokens":50},
                "output_tokens":4,"output_tokens_details":{"thinking_tokens":9}}"#,
            Some(reasoning(usage(1, 0, 50, 50, 4), 4)),
        );
        check_usage(
            r#"{"input_tokens":25,"output_tokens":348,"output_tokens_details":{"thinking_tokens":312}}"#,
            Some(reasoning(usage(25, 0, 0, 0, 348), 312)),
        );
        // Malformed refinements are skipped, not fatal.
        check_usage(
            r#"{"input_tokens":2,"output_tokens":3,"cache_creation":"x","output_tokens_details":null,
                "server_tool_use":[],"iterations":{}}"#,
            Some(usage(2, 0, 0, 0, 3)),
        );
        // Unreadable reports.
        check_usage(r#"{}"#, None);
        check_usage(r#"{"input_tokens":"10","output_tokens":5}"#, None);
        check_usage(r#"{"input_tokens":-1,"output_tokens":5}"#, None);
        check_usage(r#"{"input_tokens":1.5,"output_tokens":5}"#, None);
        check_usage(
            r#"{"input_tokens":1,"output_tokens":5,"cache_read_input_tokens":{}}"#,
            None,
        );
        check_usage(r#"[1,5]"#, None);
        check_usage(r#"null"#, None);
    }

    #[test]
    fn iterations() {
        // Compaction: the top level leaves the compaction iteration out; the sum is billed.
        check_usage(
            r#"{"input_tokens":23000,"output_tokens":1000,"iterations":[
                {"type":"compaction","input_tokens":180000,"output_tokens":3500},
                {"type":"message","input_tokens":23000,"output_tokens":1000}]}"#,
            Some(usage(203000, 0, 0, 0, 4500)),
        );
        // Advisor: top-level input and cache reads are the first executor iteration only.
        check_usage(
            r#"{"input_tokens":412,"cache_read_input_tokens":0,"cache_creation_input_tokens":0,"output_tokens":531,
                "iterations":[
                {"type":"message","input_tokens":412,"cache_read_input_tokens":0,"cache_creation_input_tokens":0,"output_tokens":89},
                {"type":"advisor_message","model":"claude-opus-4-6","input_tokens":823,"cache_read_input_tokens":0,"cache_creation_input_tokens":0,"output_tokens":1612},
                {"type":"message","input_tokens":1348,"cache_read_input_tokens":412,"cache_creation_input_tokens":0,"output_tokens":442}]}"#,
            Some(usage(2583, 412, 0, 0, 2143)),
        );
        // A single iteration equal to the top level changes nothing; per-entry splits add up.
        check_usage(
            r#"{"input_tokens":5,"cache_creation_input_tokens":248,"output_tokens":7,
                "cache_creation":{"ephemeral_5m_input_tokens":148,"ephemeral_1h_input_tokens":100},
                "iterations":[{"type":"message","input_tokens":5,"cache_creation_input_tokens":248,"output_tokens":7,
                "cache_creation":{"ephemeral_5m_input_tokens":148,"ephemeral_1h_input_tokens":100}}]}"#,
            Some(usage(5, 0, 248, 100, 7)),
        );
        // Empty, partial or junk iterations never lower the top level.
        check_usage(
            r#"{"input_tokens":5,"output_tokens":7,"iterations":[]}"#,
            Some(usage(5, 0, 0, 0, 7)),
        );
        check_usage(
            r#"{"input_tokens":5,"output_tokens":7,"iterations":[{"type":"message"},7,null,
                {"type":"compaction","input_tokens":"9","output_tokens":2}]}"#,
            Some(usage(5, 0, 0, 0, 7)),
        );
    }

    #[test]
    fn json_bodies() {
        let body = r#"{"id":"msg_9","type":"message","role":"assistant","model":"claude-x",
            "content":[{"type":"thinking","thinking":"Hmm.","signature":"sig"},
                       {"type":"redacted_thinking","data":"opaque"},
                       {"type":"text","text":"Hi."},
                       {"type":"tool_use","id":"toolu_1","name":"f","input":{"a":1}}],
            "usage":{"input_tokens":3,"output_tokens":4,"server_tool_use":{"web_search_requests":2,"web_fetch_requests":5}}}"#;
        let parsed = json(body);
        assert_eq!(parsed.usage, Some(usage(3, 0, 0, 0, 4)));
        assert_eq!(parsed.model.as_deref(), Some("claude-x"));
        assert_eq!(parsed.request_id.as_deref(), Some("msg_9"));
        assert_eq!(parsed.quantities.web_search_calls, 2);
        assert_eq!(parsed.output_text.text, "Hmm.Hi.{\"a\":1}");
        assert_eq!(parsed.partial, None);

        // A report missing one of its two main counts is not taken as zero.
        let half = json(r#"{"id":"msg_9","model":"m","usage":{"output_tokens":4}}"#);
        assert_eq!(half.usage, None);
        assert_eq!(half.request_id.as_deref(), Some("msg_9"));

        // The cap: at the limit the body is read, one byte over it is not.
        let small = r#"{"id":"msg_1","model":"m","usage":{"input_tokens":1,"output_tokens":2}}"#;
        for (limit, expected) in [
            (small.len(), Some(usage(1, 0, 0, 0, 2))),
            (small.len() - 1, None),
        ] {
            let mut parser = MessagesJson::with_limit(limit);
            parser.feed(small.as_bytes());
            assert_eq!(parser.finish().usage, expected, "limit {limit}");
        }

        for junk in [
            "",
            "  ",
            "not json",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#,
            r#"[{"usage":{"input_tokens":1,"output_tokens":2}}]"#,
            r#"{"id":"msg_1","usage":{"input_tokens":1,"output_tokens":2}"#,
            "\u{FFFD}{}",
            "<html>502 Bad Gateway</html>",
        ] {
            assert_eq!(json(junk), ParsedUsage::default(), "{junk}");
        }
        let mut invalid_utf8 = MessagesJson::default();
        invalid_utf8.feed(b"\xFF\xFE{\"usage\":{}}");
        assert_eq!(invalid_utf8.finish(), ParsedUsage::default());
    }

    const START: &str = r#"{"type":"message_start","message":{"id":"msg_s","type":"message","role":"assistant","model":"claude-y","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":10,"cache_creation_input_tokens":0,"cache_read_input_tokens":20,"output_tokens":1}}}"#;
    const STOP: &str = r#"{"type":"message_stop"}"#;

    fn delta(stop_reason: &str, usage_json: &str) -> String {
        format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":{stop_reason},"stop_sequence":null}},"usage":{usage_json}}}"#
        )
    }

    fn ids(usage: Option<Usage>, partial: Option<Usage>) -> ParsedUsage {
        ParsedUsage {
            usage,
            partial,
            model: Some("claude-y".into()),
            request_id: Some("msg_s".into()),
            ..ParsedUsage::default()
        }
    }

    fn check_stream(events: &[&str], expected: ParsedUsage) {
        let mut parsed = stream(events);
        parsed.output_text = OutputText::default();
        assert_eq!(parsed, expected, "{events:?}");
    }

    #[test]
    fn stream_report_selection() {
        let final_output = delta(r#""end_turn""#, r#"{"output_tokens":15}"#);
        // Older behaviour: message_delta has only output; the rest stays from message_start.
        check_stream(
            &[START, &final_output, STOP],
            ids(Some(usage(10, 20, 0, 0, 15)), None),
        );
        // The final delta with a stop reason is enough without message_stop.
        check_stream(
            &[START, &final_output],
            ids(Some(usage(10, 20, 0, 0, 15)), None),
        );
        // Newer behaviour: the delta refreshes input and cache counts; never summed.
        let refreshed = delta(
            r#""end_turn""#,
            r#"{"input_tokens":900,"cache_creation_input_tokens":5,"cache_read_input_tokens":20,"output_tokens":70}"#,
        );
        check_stream(
            &[START, &refreshed, STOP],
            ids(Some(usage(900, 20, 5, 0, 70)), None),
        );
        // An intermediate delta without a stop reason is only partial until message_stop.
        let running = delta("null", r#"{"output_tokens":40}"#);
        check_stream(&[START, &running], ids(None, Some(usage(10, 20, 0, 0, 40))));
        check_stream(
            &[START, &running, STOP],
            ids(Some(usage(10, 20, 0, 0, 40)), None),
        );
        check_stream(
            &[START, &running, &final_output, STOP],
            ids(Some(usage(10, 20, 0, 0, 15)), None),
        );
        // Without a delta, message_start is only partial, even with message_stop.
        check_stream(&[START], ids(None, Some(usage(10, 20, 0, 0, 1))));
        check_stream(&[START, STOP], ids(None, Some(usage(10, 20, 0, 0, 1))));
        // A last usage that cannot be read is not replaced by an older one.
        let unreadable = delta(r#""end_turn""#, r#"{"output_tokens":"15"}"#);
        check_stream(
            &[START, &unreadable, STOP],
            ids(None, Some(usage(10, 20, 0, 0, 1))),
        );
        // A delta without usage changes nothing.
        let bare =
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null}}"#;
        check_stream(
            &[START, bare, STOP],
            ids(None, Some(usage(10, 20, 0, 0, 1))),
        );
        // An error event ends the stream: what was read is partial, later events are ignored.
        let error =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        check_stream(
            &[START, error, &final_output, STOP],
            ids(None, Some(usage(10, 20, 0, 0, 1))),
        );
        // No message_start input and a delta with output only: the input is unknown, not 0.
        let no_usage_start =
            r#"{"type":"message_start","message":{"id":"msg_s","model":"claude-y","content":[]}}"#;
        check_stream(
            &[no_usage_start, &final_output, STOP],
            ids(None, Some(usage(0, 0, 0, 0, 15))),
        );
        // Error-only and junk streams.
        check_stream(&[error], ParsedUsage::default());
        check_stream(
            &[
                "[DONE]",
                "not json",
                r#"{"type":"message_start","message":"#,
            ],
            ParsedUsage::default(),
        );
        // The first id and model are kept.
        let second = r#"{"type":"message_start","message":{"id":"msg_other","model":"other"}}"#;
        check_stream(&[START, second], ids(None, Some(usage(10, 20, 0, 0, 1))));
    }

    #[test]
    fn stream_text_and_quantities() {
        let events = [
            START,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Plan. "}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQB"}}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Hi"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"citations_delta","citation":{"type":"web_search_result_location","cited_text":"x"}}}"#,
            r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#,
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#,
            r#"{"type":"content_block_start","index":3,"content_block":{"type":"web_search_tool_result","tool_use_id":"srvtoolu_1","content":[]}}"#,
        ];
        let final_delta = delta(
            r#""end_turn""#,
            r#"{"output_tokens":30,"server_tool_use":{"web_search_requests":3}}"#,
        );
        let mut all: Vec<&str> = events.to_vec();
        all.push(&final_delta);
        all.push(STOP);
        let parsed = stream(&all);
        assert_eq!(parsed.output_text.text, "Plan. Hi{\"a\":1}");
        assert_eq!(parsed.quantities.web_search_calls, 3);
        assert_eq!(parsed.usage, Some(usage(10, 20, 0, 0, 30)));
    }

    #[test]
    fn event_name_fallback_and_framing() {
        // Data without a `type` falls back to the SSE event name; pings are skipped by name.
        let body = "event: message_start\r\ndata: {\"message\":{\"id\":\"msg_s\",\"model\":\"claude-y\",\
                    \"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":20,\"output_tokens\":1}}}\r\n\r\n\
                    event: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n\
                    event: message_delta\r\ndata: {\"delta\":{\"stop_reason\":\"end_turn\"},\
                    \"usage\":{\"output_tokens\":9}}\r\n\r\n";
        let mut parser = MessagesStream::default();
        parser.feed(body.as_bytes());
        assert_eq!(parser.finish(), ids(Some(usage(10, 20, 0, 0, 9)), None));
    }
}
