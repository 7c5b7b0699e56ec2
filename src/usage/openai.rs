//! Usage parsers for OpenAI chat completions (`/v1/chat/completions`), one JSON body or an SSE
//! stream of chunks. They read only `id`, `model` and `usage`, never keep more than one bounded
//! body or event, and never fail: an unreadable report is `usage: None`, not zero tokens.
//!
//! | OpenAI `usage` field | meter bucket |
//! |---|---|
//! | `prompt_tokens` - `prompt_tokens_details.cached_tokens` (at least 0) | `input_tokens` |
//! | `prompt_tokens_details.cached_tokens` (part of `prompt_tokens`) | `cache_read_tokens` |
//! | none (OpenAI does not charge cache writes) | `cache_write_tokens`, `cache_write_1h_tokens`: 0 |
//! | `completion_tokens` (reasoning included) | `output_tokens` |
//! | `completion_tokens_details.reasoning_tokens` (part of the above) | `reasoning_tokens` |
//! | `prompt_tokens_details.audio_tokens` | stays inside `input_tokens` |
//! | `completion_tokens_details.audio_tokens` | stays inside `output_tokens` |
//! | `completion_tokens_details.*_prediction_tokens` (billed as output) | inside `output_tokens` |
//! | `total_tokens`, extras (DeepSeek's `prompt_cache_hit_tokens`, ...) | ignored |
//!
//! Audio tokens are not split out yet: they are priced at the text rate, which undercounts the
//! cost of audio models until meter has audio buckets.
//!
//! A detail object may be absent or `null` and any count absent or `null`; those read as 0. A
//! `usage` object with neither `prompt_tokens` nor `completion_tokens` is unreadable (`None`).
//!
//! Streams: usage comes only when the request set `stream_options.include_usage`, in a last
//! chunk with `"choices": []` before `data: [DONE]`; the other chunks then carry `"usage": null`.
//! The last non-null `usage` of the stream decides (providers that repeat running totals end on
//! the full one). A stream cut after its usage chunk still reports it; `[DONE]` is not required.

use memchr::memmem;
use serde::Deserialize;

use super::sse::SseFramer;
use super::{ParsedUsage, Usage, UsageParser};

/// Default cap on a buffered non-streaming body; a larger body yields `usage: None`.
pub const MAX_JSON_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How many stream chunks are parsed in full while the id or model is still unknown.
const ID_SEARCH_CHUNKS: u8 = 8;

/// The fields meter reads from a `chat.completion` object or a `chat.completion.chunk`.
/// `id` and `model` are kept as JSON values so an odd type in one of them (or in `usage`) costs
/// only that field, not the whole report.
#[derive(Debug, Default, Deserialize)]
struct WireCompletion {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    model: Option<serde_json::Value>,
    #[serde(default)]
    usage: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<WirePromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<WireCompletionDetails>,
}

#[derive(Debug, Deserialize)]
struct WirePromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct WireCompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl WireUsage {
    /// Maps onto the buckets per the table in the module comment.
    fn to_usage(&self) -> Option<Usage> {
        if self.prompt_tokens.is_none() && self.completion_tokens.is_none() {
            return None;
        }
        let prompt_tokens = self.prompt_tokens.unwrap_or(0);
        let cached_tokens = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|details| details.cached_tokens)
            .unwrap_or(0);
        let reasoning_tokens = self
            .completion_tokens_details
            .as_ref()
            .and_then(|details| details.reasoning_tokens)
            .unwrap_or(0);
        Some(Usage {
            input_tokens: prompt_tokens.saturating_sub(cached_tokens),
            cache_read_tokens: cached_tokens,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
            output_tokens: self.completion_tokens.unwrap_or(0),
            reasoning_tokens,
        })
    }
}

/// Reads a `usage` value: `None` when it is `null`, not an object, or lacks both counts.
fn usage_from_value(value: serde_json::Value) -> Option<Usage> {
    if !value.is_object() {
        return None;
    }
    serde_json::from_value::<WireUsage>(value).ok()?.to_usage()
}

fn string_from_value(value: Option<serde_json::Value>) -> Option<String> {
    match value {
        Some(serde_json::Value::String(text)) if !text.is_empty() => Some(text),
        _ => None,
    }
}

/// Parses one JSON object; `None` for anything else (an array would otherwise fill the struct
/// positionally).
fn parse_completion(json: &[u8]) -> Option<WireCompletion> {
    let first = json.iter().find(|byte| !byte.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// A non-streaming chat completion: the body is buffered (up to a limit) and parsed at the end.
#[derive(Debug)]
pub struct ChatCompletionJson {
    body: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl Default for ChatCompletionJson {
    fn default() -> Self {
        ChatCompletionJson::with_limit(MAX_JSON_BODY_BYTES)
    }
}

impl ChatCompletionJson {
    /// A parser that gives up (usage `None`) on bodies larger than `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        ChatCompletionJson {
            body: Vec::new(),
            limit,
            overflowed: false,
        }
    }
}

impl UsageParser for ChatCompletionJson {
    fn feed(&mut self, chunk: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.body.len().saturating_add(chunk.len()) > self.limit {
            self.overflowed = true;
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(chunk);
    }

    fn finish(&mut self) -> ParsedUsage {
        let body = std::mem::take(&mut self.body);
        if self.overflowed {
            return ParsedUsage::default();
        }
        let Some(completion) = parse_completion(&body) else {
            return ParsedUsage::default();
        };
        ParsedUsage {
            usage: completion.usage.and_then(usage_from_value),
            model: string_from_value(completion.model),
            request_id: string_from_value(completion.id),
            ..ParsedUsage::default()
        }
    }
}

/// A streaming chat completion (`text/event-stream`): each event's data is one chunk object,
/// `[DONE]`, or an error object.
#[derive(Default)]
pub struct ChatCompletionStream {
    framer: SseFramer,
    state: StreamState,
}

struct StreamState {
    model: Option<String>,
    request_id: Option<String>,
    /// The reading of the last non-null `usage` seen (`None` inside if it was unreadable).
    last_usage: Option<Option<Usage>>,
    /// Chunks still worth parsing in full for a missing id or model. Azure opens with a
    /// content-filter chunk whose id and model are empty, so one chunk is not enough; a provider
    /// that never sends them must not cost a full parse of every chunk.
    id_searches_left: u8,
    usage_key: UsageKey,
}

impl Default for StreamState {
    fn default() -> Self {
        StreamState {
            model: None,
            request_id: None,
            last_usage: None,
            id_searches_left: ID_SEARCH_CHUNKS,
            usage_key: UsageKey::default(),
        }
    }
}

impl std::fmt::Debug for ChatCompletionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatCompletionStream")
            .field("model", &self.state.model)
            .field("request_id", &self.state.request_id)
            .field("last_usage", &self.state.last_usage)
            .finish_non_exhaustive()
    }
}

impl UsageParser for ChatCompletionStream {
    fn feed(&mut self, chunk: &[u8]) {
        let state = &mut self.state;
        self.framer.feed(chunk, |event| state.on_data(event.data));
    }

    fn finish(&mut self) -> ParsedUsage {
        let state = &mut self.state;
        self.framer.finish(|event| state.on_data(event.data));
        let state = std::mem::take(&mut self.state);
        ParsedUsage {
            usage: state.last_usage.flatten(),
            model: state.model,
            request_id: state.request_id,
            ..ParsedUsage::default()
        }
    }
}

impl StreamState {
    fn on_data(&mut self, data: &[u8]) {
        let seeking_ids =
            (self.model.is_none() || self.request_id.is_none()) && self.id_searches_left > 0;
        // Once id and model are known, most chunks (content deltas with no usage or
        // `"usage":null`) are skipped without parsing: only the usage chunk matters.
        if !seeking_ids && !self.usage_key.may_have_usage(data) {
            return;
        }
        // `[DONE]`, keep-alive junk and truncated chunks fall out here.
        let Some(chunk) = parse_completion(data) else {
            return;
        };
        self.id_searches_left = self.id_searches_left.saturating_sub(1);
        if self.request_id.is_none() {
            self.request_id = string_from_value(chunk.id);
        }
        if self.model.is_none() {
            self.model = string_from_value(chunk.model);
        }
        match chunk.usage {
            None | Some(serde_json::Value::Null) => {}
            Some(value) => self.last_usage = Some(usage_from_value(value)),
        }
    }
}

/// Finds the `"usage"` key in a chunk's raw bytes.
struct UsageKey {
    finder: memmem::Finder<'static>,
}

impl Default for UsageKey {
    fn default() -> Self {
        UsageKey {
            finder: memmem::Finder::new(b"\"usage\""),
        }
    }
}

impl UsageKey {
    /// False only when every `"usage"` in `data` is a key whose value is `null`, i.e. the chunk
    /// certainly carries no usage. A `"usage"` elsewhere (say, a nested key) only costs a
    /// parse; inside JSON strings the quotes would be escaped, so it cannot match there.
    fn may_have_usage(&self, data: &[u8]) -> bool {
        self.finder
            .find_iter(data)
            .any(|at| !is_null_value(&data[at + b"\"usage\"".len()..]))
    }
}

/// Whether `rest` (the bytes after a key) is `: null`, allowing JSON whitespace around `:`.
fn is_null_value(rest: &[u8]) -> bool {
    let rest = skip_json_whitespace(rest);
    let Some(rest) = rest.strip_prefix(b":") else {
        return false;
    };
    skip_json_whitespace(rest).starts_with(b"null")
}

fn skip_json_whitespace(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, cache_read: u64, output: u64, reasoning: u64) -> Usage {
        Usage {
            input_tokens: input,
            cache_read_tokens: cache_read,
            output_tokens: output,
            reasoning_tokens: reasoning,
            ..Usage::default()
        }
    }

    /// Maps one `usage` JSON object as both parsers see it.
    fn check_usage(usage_json: &str, expected: Option<Usage>) {
        let body = format!(r#"{{"id":"chatcmpl-1","model":"m","usage":{usage_json}}}"#);
        let mut json = ChatCompletionJson::default();
        json.feed(body.as_bytes());
        assert_eq!(json.finish().usage, expected, "json body {usage_json}");

        let stream_body = format!(
            "data: {{\"id\":\"chatcmpl-1\",\"model\":\"m\",\"choices\":[{{}}],\"usage\":null}}\n\n\
             data: {}\n\ndata: [DONE]\n\n",
            // Line breaks inside the JSON become multi-line data, joined back by the framer.
            body.replace('\n', "\ndata: ")
        );
        let mut stream = ChatCompletionStream::default();
        stream.feed(stream_body.as_bytes());
        assert_eq!(stream.finish().usage, expected, "stream {usage_json}");
    }

    #[test]
    fn bucket_mapping() {
        check_usage(
            r#"{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}"#,
            Some(usage(10, 0, 5, 0)),
        );
        check_usage(
            r#"{"prompt_tokens":100,"completion_tokens":50,
                "prompt_tokens_details":{"cached_tokens":64,"audio_tokens":3},
                "completion_tokens_details":{"reasoning_tokens":32,"audio_tokens":2}}"#,
            Some(usage(36, 64, 50, 32)),
        );
        check_usage(
            r#"{"prompt_tokens":10,"completion_tokens":5,
                "prompt_tokens_details":null,"completion_tokens_details":null}"#,
            Some(usage(10, 0, 5, 0)),
        );
        check_usage(
            r#"{"prompt_tokens":10,"completion_tokens":5,
                "prompt_tokens_details":{"cached_tokens":null},"completion_tokens_details":{}}"#,
            Some(usage(10, 0, 5, 0)),
        );
        check_usage(r#"{"completion_tokens":5}"#, Some(usage(0, 0, 5, 0)));
        check_usage(r#"{"prompt_tokens":7}"#, Some(usage(7, 0, 0, 0)));
        // More cached than prompt tokens never makes input negative.
        check_usage(
            r#"{"prompt_tokens":10,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":12}}"#,
            Some(usage(0, 12, 1, 0)),
        );
        // DeepSeek adds its own cache fields beside OpenAI's.
        check_usage(
            r#"{"prompt_tokens":20,"completion_tokens":9,"total_tokens":29,
                "prompt_tokens_details":{"cached_tokens":16},"prompt_cache_hit_tokens":16,
                "prompt_cache_miss_tokens":4,"completion_tokens_details":{"reasoning_tokens":3}}"#,
            Some(usage(4, 16, 9, 3)),
        );
        // Unreadable usage objects.
        check_usage(r#"{"total_tokens":15}"#, None);
        check_usage(r#"{}"#, None);
        check_usage(r#"{"prompt_tokens":-1,"completion_tokens":5}"#, None);
        check_usage(r#"{"prompt_tokens":"10","completion_tokens":5}"#, None);
        check_usage(r#"[10,5]"#, None);
        check_usage(r#""10 tokens""#, None);
        check_usage(r#"null"#, None);
    }

    fn check_json(body: &[u8], limit: usize, expected: ParsedUsage) {
        let mut parser = ChatCompletionJson::with_limit(limit);
        for chunk in body.chunks(3) {
            parser.feed(chunk);
        }
        assert_eq!(
            parser.finish(),
            expected,
            "{}",
            String::from_utf8_lossy(body)
        );
    }

    #[test]
    fn json_bodies() {
        let body = br#"{"id":"chatcmpl-9","model":"gpt-4o","usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let read = ParsedUsage {
            usage: Some(usage(3, 0, 4, 0)),
            model: Some("gpt-4o".into()),
            request_id: Some("chatcmpl-9".into()),
            ..ParsedUsage::default()
        };
        check_json(body, MAX_JSON_BODY_BYTES, read.clone());
        check_json(body, body.len(), read);
        check_json(body, body.len() - 1, ParsedUsage::default());
        // An odd id or model type costs only that field.
        check_json(
            br#"{"id":7,"model":null,"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            MAX_JSON_BODY_BYTES,
            ParsedUsage {
                usage: Some(usage(3, 0, 4, 0)),
                ..ParsedUsage::default()
            },
        );
        for junk in [
            &b""[..],
            b"   ",
            b"not json",
            b"[\"chatcmpl-9\",\"gpt-4o\",{\"prompt_tokens\":3,\"completion_tokens\":4}]",
            b"{\"id\":\"chatcmpl-9\"",
            b"\xFF\xFE{}",
            b"<html>502 Bad Gateway</html>",
        ] {
            check_json(junk, MAX_JSON_BODY_BYTES, ParsedUsage::default());
        }
    }

    fn check_stream(body: &str, expected: ParsedUsage) {
        let mut parser = ChatCompletionStream::default();
        parser.feed(body.as_bytes());
        assert_eq!(parser.finish(), expected, "{body}");
    }

    #[test]
    fn stream_usage_selection() {
        let ids = |usage| ParsedUsage {
            usage,
            model: Some("m".into()),
            request_id: Some("c".into()),
            ..ParsedUsage::default()
        };
        // Whitespace variants of a null usage are skipped; a real one is read.
        check_stream(
            "data: {\"id\":\"c\",\"model\":\"m\",\"usage\" :\n null}\n\n\
             data: {\"id\":\"c\",\"model\":\"m\",\"usage\": {\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n",
            ids(Some(usage(1, 0, 2, 0))),
        );
        // The last non-null usage wins, also over an earlier one and later nulls.
        check_stream(
            "data: {\"id\":\"c\",\"model\":\"m\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n\
             data: {\"id\":\"c\",\"model\":\"m\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":9}}\n\n\
             data: {\"id\":\"c\",\"model\":\"m\",\"usage\":null}\n\n",
            ids(Some(usage(1, 0, 9, 0))),
        );
        // A last usage that cannot be read is not replaced by an earlier, stale one.
        check_stream(
            "data: {\"id\":\"c\",\"model\":\"m\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n\
             data: {\"id\":\"c\",\"model\":\"m\",\"usage\":{\"total_tokens\":2}}\n\n",
            ids(None),
        );
        // A nested "usage" key does not hide the top-level one, nor fake one.
        check_stream(
            "data: {\"id\":\"c\",\"model\":\"m\",\"x\":{\"usage\":{\"prompt_tokens\":5}},\"usage\":null}\n\n",
            ids(None),
        );
        // Azure's opening content-filter chunk has empty ids; the next chunk names them.
        check_stream(
            "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[]}\n\n\
             data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[]}\n\n",
            ids(None),
        );
        // A provider without ids stops being searched, but its usage chunk is still read
        // and may still name them.
        let mut idless = "data: {\"choices\":[]}\n\n".repeat(20);
        idless.push_str(
            "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n",
        );
        check_stream(&idless, ids(Some(usage(1, 0, 2, 0))));
        // The first id and model seen are kept.
        check_stream(
            "data: {\"id\":\"c\",\"model\":\"m\"}\n\ndata: {\"id\":\"d\",\"model\":\"n\"}\n\n",
            ids(None),
        );
        // Error events carry no usage; junk events are ignored.
        check_stream(
            "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
            ParsedUsage::default(),
        );
        check_stream(
            "data: [DONE]\n\ndata: not json\n\ndata: {\"id\":\n\n",
            ParsedUsage::default(),
        );
    }

    #[test]
    fn null_detection() {
        let key = UsageKey::default();
        for (data, expected) in [
            (&br#"{"usage":null}"#[..], false),
            (br#"{"usage" : null }"#, false),
            (b"{\"usage\"\r\n:\tnull}", false),
            (br#"{"choices":[]}"#, false),
            (br#"{"content":"say \"usage\" here"}"#, false),
            (br#"{"usage":{}}"#, true),
            (br#"{"usage":nul"#, true),
            (br#"{"usage""#, true),
            (br#"{"usage":null,"x":{"usage":1}}"#, true),
        ] {
            assert_eq!(
                key.may_have_usage(data),
                expected,
                "{}",
                String::from_utf8_lossy(data)
            );
        }
    }
}
