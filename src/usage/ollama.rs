//! Usage parser for Ollama's native API (`POST /api/chat`, `POST /api/generate`): an NDJSON stream
//! (`application/x-ndjson`, one JSON object per line) or, with `"stream": false`, one JSON object.
//! It keeps only the current partial line (bounded), never the body, and never fails.
//!
//! | Ollama field (final object, `"done": true`) | meter bucket |
//! |---|---|
//! | `prompt_eval_count` - `prompt_eval_cached_count` | `input_tokens` |
//! | `prompt_eval_cached_count` (newer servers; part of `prompt_eval_count`) | `cache_read_tokens` |
//! | none | `cache_write_tokens`, `cache_write_1h_tokens`: 0 |
//! | `eval_count` (thinking included) | `output_tokens` |
//! | none (thinking is not counted apart) | `reasoning_tokens`: 0 |
//! | `total_duration`, `load_duration`, `*_duration`, `context`, `done_reason` | ignored |
//!
//! Source: <https://github.com/ollama/ollama/blob/main/docs/api.md> ("Generate a completion",
//! "Generate a chat completion"): the stream's last object has `done: true` and the counts; a
//! non-streaming response is that same object with the whole `response`/`message`.
//!
//! - `prompt_eval_count` is left out when it would be 0: Ollama serialises its metrics with
//!   `omitempty`, and a prompt served entirely from its cache evaluates nothing
//!   (<https://github.com/ollama/ollama/issues/2068>, #3427). An absent count on the final object
//!   therefore reads as 0; the report is still the provider's own. The same holds for `eval_count`.
//! - `prompt_eval_cached_count` (the "number of prompt tokens read from the cache" of newer
//!   servers, counted inside `prompt_eval_count`) moves that part to `cache_read_tokens`.
//! - Thinking models stream `message.thinking` (`/api/chat`) or `thinking` (`/api/generate`); those
//!   tokens are inside `eval_count`, which has no reasoning breakdown.
//! - The model is the response's `model`. Ollama sends no response id: `request_id` stays `None`.
//! - An error (`{"error": "..."}`, as a body or as a stream line) carries no usage, and a stream
//!   that ends before its `done: true` object has none either: `usage: None`, no `partial`,
//!   since Ollama reports nothing before the end.
//!
//! Text: `message.content`, `message.thinking`, `response`, `thinking` and tool-call arguments
//! (`message.tool_calls[].function.arguments`, a JSON object, kept as its JSON text) go to
//! `output_text`.
//!
//! Lines end with `\n`; a `\r` before it is dropped. A line longer than [`MAX_LINE_BYTES`] is
//! skipped whole. A pretty-printed (multi-line) body is not read: Ollama writes each object on
//! one line.

use serde::Deserialize;
use serde_json::Value;

use super::openai::Text;
use super::{OutputText, ParsedUsage, Usage, UsageParser};

/// Default cap on one NDJSON line; a final `/api/generate` object carries the whole `context`
/// token array, so this is generous.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Buffers at most this large are kept for reuse after a long line.
const RETAINED_CAPACITY_BYTES: usize = 64 * 1024;

/// Splits a byte stream into `\n`-terminated lines, keeping only the unfinished one.
#[derive(Debug)]
pub struct LineSplitter {
    limit: usize,
    partial: Vec<u8>,
    /// The current line outgrew the limit: its bytes are dropped up to its end.
    discarding: bool,
    /// Lines skipped for exceeding the limit.
    overflowed_lines: u64,
}

impl Default for LineSplitter {
    fn default() -> Self {
        LineSplitter::with_limit(MAX_LINE_BYTES)
    }
}

impl LineSplitter {
    /// A splitter that skips lines longer than `limit` bytes (the line end not counted).
    pub fn with_limit(limit: usize) -> Self {
        LineSplitter {
            limit,
            partial: Vec::new(),
            discarding: false,
            overflowed_lines: 0,
        }
    }

    /// How many lines were skipped for exceeding the limit.
    pub fn overflowed_lines(&self) -> u64 {
        self.overflowed_lines
    }

    /// Reads the next piece, calling `on_line` for each line it completes (without `\r\n`).
    pub fn feed(&mut self, mut chunk: &[u8], mut on_line: impl FnMut(&[u8])) {
        while let Some(end) = memchr::memchr(b'\n', chunk) {
            let piece = &chunk[..end];
            chunk = &chunk[end + 1..];
            if self.discarding {
                // The rest of a line already skipped.
                self.discarding = false;
            } else if self.partial.is_empty() {
                // Fast path: the whole line is inside this chunk and is read in place.
                self.emit(piece, &mut on_line);
            } else if self.push(piece) {
                let mut line = std::mem::take(&mut self.partial);
                self.emit(&line, &mut on_line);
                line.clear();
                if line.capacity() <= RETAINED_CAPACITY_BYTES {
                    self.partial = line;
                }
            } else {
                // It overflowed right at its end: nothing left to skip.
                self.discarding = false;
            }
        }
        if !self.discarding {
            self.push(chunk);
        }
    }

    /// Ends the stream: a last line without its `\n` is still handed out. The splitter is reset.
    pub fn finish(&mut self, mut on_line: impl FnMut(&[u8])) {
        let line = std::mem::take(&mut self.partial);
        if !self.discarding && !line.is_empty() {
            self.emit(&line, &mut on_line);
        }
        self.discarding = false;
    }

    /// Hands out a complete line (a `\r` before its `\n` dropped), or counts it if too long.
    fn emit(&mut self, line: &[u8], on_line: &mut impl FnMut(&[u8])) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() <= self.limit {
            on_line(line);
        } else {
            self.overflowed_lines += 1;
        }
    }

    /// Appends to the unfinished line; false (and discarding from now on) past the limit. The
    /// limit allows one byte more for a `\r` that the line end will drop.
    fn push(&mut self, bytes: &[u8]) -> bool {
        if self.partial.len() + bytes.len() > self.limit.saturating_add(1) {
            self.partial = Vec::new();
            self.discarding = true;
            self.overflowed_lines += 1;
            return false;
        }
        self.partial.extend_from_slice(bytes);
        true
    }
}

/// One object of the stream (or the whole non-streaming body).
#[derive(Deserialize)]
struct WireLine<'a> {
    #[serde(default, borrow)]
    model: Option<Text<'a>>,
    #[serde(default, borrow)]
    message: Option<WireMessage<'a>>,
    /// `/api/generate`'s text.
    #[serde(default, borrow)]
    response: Option<Text<'a>>,
    #[serde(default, borrow)]
    thinking: Option<Text<'a>>,
    #[serde(default)]
    done: Option<bool>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    prompt_eval_cached_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(default, borrow)]
    content: Option<Text<'a>>,
    #[serde(default, borrow)]
    thinking: Option<Text<'a>>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    #[serde(default)]
    arguments: Option<Value>,
}

/// Parser for `/api/chat` and `/api/generate` bodies, streaming (NDJSON) or not (one object).
#[derive(Debug, Default)]
pub struct OllamaParser {
    lines: LineSplitter,
    state: State,
}

#[derive(Debug, Default)]
struct State {
    model: Option<String>,
    usage: Option<Usage>,
    output_text: OutputText,
}

impl State {
    fn on_line(&mut self, line: &[u8]) {
        let line = line.trim_ascii();
        // Only objects; blank lines and junk are skipped, and error objects carry no counts.
        if line.first() != Some(&b'{') {
            return;
        }
        let Ok(object) = serde_json::from_slice::<WireLine<'_>>(line) else {
            return;
        };
        if self.model.is_none() {
            if let Some(model) = object.model.as_ref().and_then(Text::as_str) {
                if !model.is_empty() {
                    self.model = Some(model.to_owned());
                }
            }
        }
        if let Some(message) = &object.message {
            for text in [&message.content, &message.thinking].into_iter().flatten() {
                text.push_to(&mut self.output_text);
            }
            for call in message.tool_calls.iter().flatten() {
                match call.function.as_ref().and_then(|f| f.arguments.as_ref()) {
                    Some(Value::String(arguments)) => self.output_text.push(arguments),
                    Some(Value::Null) | None => {}
                    Some(arguments) => self.output_text.push(&arguments.to_string()),
                }
            }
        }
        for text in [&object.response, &object.thinking].into_iter().flatten() {
            text.push_to(&mut self.output_text);
        }
        if object.done == Some(true) && self.usage.is_none() {
            let prompt = object.prompt_eval_count.unwrap_or(0);
            let cached = object.prompt_eval_cached_count.unwrap_or(0);
            self.usage = Some(Usage {
                input_tokens: prompt.saturating_sub(cached),
                cache_read_tokens: cached,
                output_tokens: object.eval_count.unwrap_or(0),
                ..Usage::default()
            });
        }
    }
}

impl UsageParser for OllamaParser {
    fn feed(&mut self, chunk: &[u8]) {
        let state = &mut self.state;
        self.lines.feed(chunk, |line| state.on_line(line));
    }

    fn finish(&mut self) -> ParsedUsage {
        let state = &mut self.state;
        self.lines.finish(|line| state.on_line(line));
        let state = std::mem::take(&mut self.state);
        ParsedUsage {
            usage: state.usage,
            model: state.model,
            output_text: state.output_text,
            ..ParsedUsage::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(limit: usize, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, u64) {
        let mut splitter = LineSplitter::with_limit(limit);
        let mut lines = Vec::new();
        for chunk in chunks {
            splitter.feed(chunk, |line| lines.push(line.to_vec()));
        }
        splitter.finish(|line| lines.push(line.to_vec()));
        (lines, splitter.overflowed_lines())
    }

    /// Splits `input` whole, at every offset and byte by byte, expecting the same lines.
    fn check_lines(input: &[u8], limit: usize, expected: &[&[u8]], overflows: u64) {
        let mut chunkings: Vec<Vec<&[u8]>> = vec![vec![input]];
        for at in 0..=input.len() {
            chunkings.push(vec![&input[..at], &input[at..]]);
        }
        chunkings.push(input.chunks(1).collect());
        for chunks in chunkings {
            let (lines, overflowed) = split(limit, &chunks);
            let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
            assert_eq!(lines, expected, "chunk sizes {sizes:?}");
            assert_eq!(overflowed, overflows, "chunk sizes {sizes:?}");
        }
    }

    #[test]
    fn line_splitting() {
        check_lines(b"a\nb\n", 16, &[b"a", b"b"], 0);
        check_lines(b"a\r\nb\r\n", 16, &[b"a", b"b"], 0);
        check_lines(b"a\nb", 16, &[b"a", b"b"], 0);
        check_lines(b"a\n\nb\r\n\r\n", 16, &[b"a", b"", b"b", b""], 0);
        check_lines(b"", 16, &[], 0);
        // A lone `\r` inside a line is kept; only the one before `\n` goes.
        check_lines(b"a\rb\n", 16, &[b"a\rb"], 0);
        // Exactly at the limit, with or without `\r`, fits; one more byte does not.
        check_lines(b"12345\n12345\r\nok\n", 5, &[b"12345", b"12345", b"ok"], 0);
        check_lines(b"123456\nok\n", 5, &[b"ok"], 1);
        check_lines(b"ok\n123456", 5, &[b"ok"], 1);
        check_lines(b"1234567890123\r\nok\r\n", 5, &[b"ok"], 1);
    }

    #[test]
    fn splitter_stays_bounded() {
        let mut splitter = LineSplitter::with_limit(1024);
        let long = vec![b'x'; 4096];
        for _ in 0..100 {
            splitter.feed(&long, |_| {});
        }
        assert!(splitter.partial.capacity() <= 2048);
        let mut seen = Vec::new();
        splitter.feed(b"\nnext\n", |line| seen.push(line.to_vec()));
        assert_eq!(seen, [b"next".to_vec()]);
        assert_eq!(splitter.overflowed_lines(), 1);
    }

    fn parse(body: &str) -> ParsedUsage {
        let mut parser = OllamaParser::default();
        parser.feed(body.as_bytes());
        parser.finish()
    }

    #[test]
    fn final_object_counts() {
        let parsed = parse(
            "{\"model\":\"llama3.2\",\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n\
             {\"model\":\"llama3.2\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":26,\"eval_count\":259}\n",
        );
        assert_eq!(
            parsed.usage,
            Some(Usage {
                input_tokens: 26,
                output_tokens: 259,
                ..Usage::default()
            })
        );
        assert_eq!(parsed.model.as_deref(), Some("llama3.2"));
        assert_eq!(parsed.request_id, None);
        assert_eq!(parsed.output_text.text, "Hi");
        // A cached prompt: the count is absent, read as 0.
        let parsed = parse("{\"model\":\"m\",\"response\":\"\",\"done\":true,\"eval_count\":5}");
        assert_eq!(
            parsed.usage,
            Some(Usage {
                output_tokens: 5,
                ..Usage::default()
            })
        );
        // Newer servers say how much of the prompt came from the cache.
        let parsed = parse(
            "{\"model\":\"m\",\"done\":true,\"prompt_eval_count\":100,\"prompt_eval_cached_count\":64,\"eval_count\":5}",
        );
        assert_eq!(
            parsed.usage,
            Some(Usage {
                input_tokens: 36,
                cache_read_tokens: 64,
                output_tokens: 5,
                ..Usage::default()
            })
        );
        // No final object, an error, junk, or counts of the wrong type: no usage.
        for body in [
            "{\"model\":\"m\",\"response\":\"a\",\"done\":false}\n",
            "{\"error\":\"model \\\"nope\\\" not found, try pulling it first\"}",
            "{\"model\":\"m\",\"done\":true,\"eval_count\":\"5\"}",
            "not json\n[1,2]\n",
            "",
        ] {
            assert_eq!(parse(body).usage, None, "{body}");
        }
        // Tool-call arguments are JSON objects, kept as their text.
        let parsed = parse(
            "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":{\"city\":\"Paris\"}}}]},\"done\":false}",
        );
        assert_eq!(parsed.output_text.text, "{\"city\":\"Paris\"}");
    }
}
