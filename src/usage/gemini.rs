//! Usage parsers for Gemini `generateContent` / `streamGenerateContent` responses, from the Gemini
//! API (`generativelanguage.googleapis.com`) and Vertex AI alike: one JSON body, an SSE stream
//! (`?alt=sse`), or the JSON array a stream is written as without `alt=sse`. They keep at most one
//! bounded body, event or array element, never fail, and never log what they read.
//!
//! | `usageMetadata` field | meter bucket |
//! |---|---|
//! | `promptTokenCount` - `cachedContentTokenCount` (at least 0) + `toolUsePromptTokenCount` | `input_tokens` |
//! | `cachedContentTokenCount` (part of `promptTokenCount`) | `cache_read_tokens` |
//! | none (cache storage is billed per hour, not per response) | `cache_write_tokens`, `cache_write_1h_tokens`: 0 |
//! | `candidatesTokenCount` + `thoughtsTokenCount` (candidates exclude thoughts) | `output_tokens` |
//! | `thoughtsTokenCount` (part of the above) | `reasoning_tokens` |
//! | `promptTokensDetails[]` + `toolUsePromptTokensDetails[]`, modality `AUDIO` | `quantities.audio_input_tokens` |
//! | `candidatesTokensDetails[]`, modality `AUDIO` | `quantities.audio_output_tokens` |
//! | `totalTokenCount`, `cacheTokensDetails`, `trafficType`, `serviceTier` | ignored |
//!
//! Sources: the Gemini API reference, <https://ai.google.dev/api/generate-content#UsageMetadata>
//! ("promptTokenCount: ... When cachedContent is set, this is still the total effective prompt
//! size meaning this includes the number of tokens in the cached content"); the Vertex AI
//! reference, <https://cloud.google.com/vertex-ai/docs/reference/rest/v1/GenerateContentResponse>,
//! whose `UsageMetadata` is the same message plus `trafficType`; and the Gen AI SDK's
//! `UsageMetadata` (<https://googleapis.github.io/js-genai/release_docs/interfaces/types.UsageMetadata.html>):
//! `toolUsePromptTokenCount` is "the number of tokens in the results from tool executions, which
//! are provided back to the model as input", and `totalTokenCount` "is the sum of
//! prompt_token_count, candidates_token_count, tool_use_prompt_token_count, and
//! thoughts_token_count". So tool-use prompt tokens are *not* inside `promptTokenCount`; they are
//! billed as input and added to `input_tokens`, which makes `input + cache_read + output ==
//! totalTokenCount` (checked on every fixture). Thinking tokens are priced as output
//! (<https://ai.google.dev/gemini-api/docs/pricing>: "Output price (including thinking tokens)").
//! The modality details of the prompt cover the cached part too (their counts sum to
//! `promptTokenCount`), so audio input is the part of `input_tokens` + `cache_read_tokens` that
//! was audio. Audio quantities are filled only with a final report.
//!
//! A count that is absent or `null` reads as 0. A `usageMetadata` with none of the five counts is
//! not a report (Vertex sends `{"trafficType": "ON_DEMAND"}` on every stream chunk before the
//! last); one with a count of the wrong type (negative, fractional, a string), or with only
//! `totalTokenCount`, is an unreadable report.
//!
//! A non-streaming body is final once its object closes, finish reason or not (a
//! `MALFORMED_FUNCTION_CALL` answer may carry only the prompt count). Streams repeat a running
//! `usageMetadata` (early chunks may carry only `promptTokenCount`, or prompt and thoughts); the
//! last report decides, nothing is added. A stream is complete once a chunk carried a terminal
//! marker (a candidate's `finishReason`, or `promptFeedback.blockReason`, which replaces the
//! candidates of a blocked prompt) and a report was read in that chunk or a later one. Until then the last report is only `partial`. An `error` object (a whole body, an
//! array element or an SSE event) means no final usage either. With `candidateCount` > 1 the
//! first candidate to finish already counts as the end: meter cannot tell how many were asked for.
//!
//! Without `alt=sse` a stream is one JSON array written element by element
//! (`[{...}\r\n,\r\n{...}\r\n]`, `application/json`), or a single error object when the call
//! failed before streaming. `ElementScanner` finds element ends by tracking nesting, strings and
//! escapes byte by byte and keeps only the current element; a cut-off element is never read.
//!
//! `model` is `modelVersion` and `request_id` is `responseId`, each the first non-empty one seen;
//! `output_text` collects `candidates[].content.parts[]` text (thoughts included), function-call
//! names and arguments, and generated code.

use memchr::memchr2;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use super::openai::MAX_JSON_BODY_BYTES;
use super::sse::{SseFramer, MAX_EVENT_DATA_BYTES};
use super::{OutputText, ParsedUsage, Quantities, Usage, UsageParser};

/// The top-level fields meter reads from a `GenerateContentResponse` (or an error object). The
/// candidates are skipped here and read by a second, separate pass ([`WireCandidates`]), so that
/// an odd candidate costs only the output text, never the usage report.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    #[serde(default)]
    candidates: Option<IgnoredAny>,
    #[serde(default)]
    usage_metadata: Option<Value>,
    #[serde(default)]
    model_version: Option<Value>,
    #[serde(default)]
    response_id: Option<Value>,
    #[serde(default)]
    prompt_feedback: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct WireCandidates {
    #[serde(default)]
    candidates: Option<Vec<WireCandidate>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCandidate {
    #[serde(default)]
    content: Option<WireContent>,
    #[serde(default)]
    finish_reason: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct WireContent {
    #[serde(default)]
    parts: Option<Vec<WirePart>>,
}

/// One part of a candidate's content. Leaves are kept as JSON values so that an odd type costs
/// only that leaf; `inlineData` (generated images or audio) and the rest are skipped unread.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePart {
    #[serde(default)]
    text: Option<Value>,
    #[serde(default)]
    function_call: Option<WireFunctionCall>,
    #[serde(default)]
    executable_code: Option<WireExecutableCode>,
}

#[derive(Debug, Default, Deserialize)]
struct WireFunctionCall {
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    args: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct WireExecutableCode {
    #[serde(default)]
    code: Option<Value>,
}

/// One readable `usageMetadata`, mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    usage: Usage,
    audio_input_tokens: u64,
    audio_output_tokens: u64,
}

/// What one `usageMetadata` value says.
#[derive(Debug, PartialEq, Eq)]
enum UsageRead {
    /// Absent, `null`, or an object without any count (Vertex's `{"trafficType": ...}`).
    NotAReport,
    /// A report that cannot be mapped (a count of the wrong type, only a total).
    Unreadable,
    Read(Reading),
}

/// The five counts the buckets are made of.
const COUNT_KEYS: [&str; 5] = [
    "promptTokenCount",
    "cachedContentTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "toolUsePromptTokenCount",
];

/// Reads a `usageMetadata` value per the table in the module comment.
fn read_usage(value: Option<&Value>) -> UsageRead {
    let object = match value {
        None | Some(Value::Null) => return UsageRead::NotAReport,
        Some(Value::Object(object)) => object,
        Some(_) => return UsageRead::Unreadable,
    };
    let mut counts = [0u64; COUNT_KEYS.len()];
    let mut any = false;
    for (count, key) in counts.iter_mut().zip(COUNT_KEYS) {
        match object.get(key) {
            None | Some(Value::Null) => {}
            Some(value) => match value.as_u64() {
                Some(read) => {
                    *count = read;
                    any = true;
                }
                None => return UsageRead::Unreadable,
            },
        }
    }
    if !any {
        return match object.get("totalTokenCount") {
            None | Some(Value::Null) => UsageRead::NotAReport,
            Some(_) => UsageRead::Unreadable,
        };
    }
    let [prompt, cached, candidates, thoughts, tool_use_prompt] = counts;
    UsageRead::Read(Reading {
        usage: Usage {
            input_tokens: prompt
                .saturating_sub(cached)
                .saturating_add(tool_use_prompt),
            cache_read_tokens: cached,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
            output_tokens: candidates.saturating_add(thoughts),
            reasoning_tokens: thoughts,
        },
        audio_input_tokens: audio_tokens(object.get("promptTokensDetails"))
            .saturating_add(audio_tokens(object.get("toolUsePromptTokensDetails"))),
        audio_output_tokens: audio_tokens(object.get("candidatesTokensDetails")),
    })
}

/// Sums the `AUDIO` entries of a `ModalityTokenCount` list. The details only refine counts
/// already read, so malformed entries are skipped rather than failing the report.
fn audio_tokens(details: Option<&Value>) -> u64 {
    let Some(Value::Array(entries)) = details else {
        return 0;
    };
    entries
        .iter()
        .filter(|entry| entry.get("modality").and_then(Value::as_str) == Some("AUDIO"))
        .filter_map(|entry| entry.get("tokenCount").and_then(Value::as_u64))
        .fold(0, u64::saturating_add)
}

fn non_empty_string(value: Option<Value>) -> Option<String> {
    match value {
        Some(Value::String(text)) if !text.is_empty() => Some(text),
        _ => None,
    }
}

/// Whether a value is present and says something (not `null`, not an empty string).
fn is_set(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::String(text)) => !text.is_empty(),
        Some(_) => true,
    }
}

/// Parses one JSON object; `None` for anything else (a struct would accept an array
/// positionally).
fn parse_object<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Option<T> {
    let first = json.iter().find(|byte| !byte.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// Everything read from one response so far; fed one `GenerateContentResponse` (or error) at a
/// time.
#[derive(Debug, Default)]
struct ResponseState {
    model: Option<String>,
    request_id: Option<String>,
    /// The last readable report.
    last: Option<Reading>,
    /// The last report seen was unreadable: it is not replaced by an earlier, stale one.
    last_unreadable: bool,
    /// A chunk carried a `finishReason` or `promptFeedback.blockReason`.
    terminal_seen: bool,
    /// A report was read in or after the first terminal chunk.
    final_read: bool,
    errored: bool,
    output_text: OutputText,
}

impl ResponseState {
    /// Reads one response object. `whole_body` says that it is the complete response (a
    /// non-streaming body), which is final whether or not it names a finish reason.
    fn on_object(&mut self, json: &[u8], whole_body: bool) {
        let Some(response) = parse_object::<WireResponse>(json) else {
            return;
        };
        if is_set(response.error.as_ref()) {
            self.errored = true;
        }
        if self.model.is_none() {
            self.model = non_empty_string(response.model_version);
        }
        if self.request_id.is_none() {
            self.request_id = non_empty_string(response.response_id);
        }
        let blocked = response
            .prompt_feedback
            .as_ref()
            .is_some_and(|feedback| is_set(feedback.get("blockReason")));
        let finished = response.candidates.is_some() && self.read_candidates(json);
        if whole_body || blocked || finished {
            self.terminal_seen = true;
        }
        match read_usage(response.usage_metadata.as_ref()) {
            UsageRead::NotAReport => {}
            UsageRead::Unreadable => self.last_unreadable = true,
            UsageRead::Read(reading) => {
                self.last = Some(reading);
                self.last_unreadable = false;
                if self.terminal_seen {
                    self.final_read = true;
                }
            }
        }
    }

    /// Collects the candidates' generated text; true if one of them names a finish reason.
    fn read_candidates(&mut self, json: &[u8]) -> bool {
        let Some(WireCandidates {
            candidates: Some(candidates),
        }) = parse_object::<WireCandidates>(json)
        else {
            return false;
        };
        let mut finished = false;
        for candidate in candidates {
            finished |= is_set(candidate.finish_reason.as_ref());
            let parts = candidate.content.and_then(|content| content.parts);
            for part in parts.into_iter().flatten() {
                self.push_part(part);
            }
        }
        finished
    }

    fn push_part(&mut self, part: WirePart) {
        if let Some(Value::String(text)) = &part.text {
            self.output_text.push(text);
        }
        if let Some(call) = part.function_call {
            if let Some(Value::String(name)) = &call.name {
                self.output_text.push(name);
            }
            match call.args {
                None | Some(Value::Null) => {}
                Some(args) => self.output_text.push(&args.to_string()),
            }
        }
        if let Some(WireExecutableCode {
            code: Some(Value::String(code)),
        }) = &part.executable_code
        {
            self.output_text.push(code);
        }
    }

    fn finish(self) -> ParsedUsage {
        let complete = self.final_read && !self.last_unreadable && !self.errored;
        let mut parsed = ParsedUsage {
            model: self.model,
            request_id: self.request_id,
            output_text: self.output_text,
            ..ParsedUsage::default()
        };
        match self.last {
            Some(reading) if complete => {
                parsed.usage = Some(reading.usage);
                parsed.quantities = Quantities {
                    audio_input_tokens: reading.audio_input_tokens,
                    audio_output_tokens: reading.audio_output_tokens,
                    ..Quantities::default()
                };
            }
            last => parsed.partial = last.map(|reading| reading.usage),
        }
        parsed
    }
}

/// Where the scanner is in the body's top-level structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Nothing but whitespace so far.
    Start,
    /// Inside a top-level array: its elements are the objects.
    Array,
    /// A single top-level object (a non-streaming body, or an error in place of the array).
    Object,
    /// The top-level value ended; the rest is ignored.
    Done,
    /// The body is not JSON meter understands (an HTML error page, say); it is ignored.
    Junk,
}

/// Finds the elements of a JSON array written progressively (`[{...}\r\n,\r\n{...}\r\n]`), or
/// the one top-level object, tracking nesting and strings byte by byte. Only the current element
/// is kept, up to a limit; the array itself is never buffered.
#[derive(Debug)]
struct ElementScanner {
    limit: usize,
    layout: Layout,
    /// Open brackets, the top-level array's included.
    depth: u32,
    in_string: bool,
    /// The previous byte was a backslash inside a string.
    escaped: bool,
    /// Inside an element.
    capturing: bool,
    element: Vec<u8>,
    /// The current element outgrew the limit: it is dropped at its end.
    overflowed: bool,
    overflowed_elements: u64,
}

impl ElementScanner {
    fn with_limit(limit: usize) -> Self {
        ElementScanner {
            limit,
            layout: Layout::Start,
            depth: 0,
            in_string: false,
            escaped: false,
            capturing: false,
            element: Vec::new(),
            overflowed: false,
            overflowed_elements: 0,
        }
    }

    /// The depth between elements: inside the array, or outside the single object.
    fn base_depth(&self) -> u32 {
        u32::from(self.layout == Layout::Array)
    }

    /// Reads the next piece of the body, calling `on_element` with each complete element and
    /// whether it came from a top-level array (rather than being the body's one object).
    fn feed(&mut self, chunk: &[u8], mut on_element: impl FnMut(&[u8], bool)) {
        let mut at = 0;
        // Start of the part of `chunk` that belongs to the current element.
        let mut captured_from = self.capturing.then_some(0);
        while at < chunk.len() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    at += 1;
                    continue;
                }
                match memchr2(b'"', b'\\', &chunk[at..]) {
                    None => at = chunk.len(),
                    Some(offset) => {
                        at += offset;
                        if chunk[at] == b'\\' {
                            self.escaped = true;
                        } else {
                            self.in_string = false;
                        }
                        at += 1;
                    }
                }
                continue;
            }
            let byte = chunk[at];
            match self.layout {
                Layout::Done | Layout::Junk => return,
                Layout::Start => match byte {
                    b' ' | b'\t' | b'\r' | b'\n' => {
                        at += 1;
                        continue;
                    }
                    b'[' => {
                        self.layout = Layout::Array;
                        self.depth = 1;
                        at += 1;
                        continue;
                    }
                    // Read again below as the opening of the element.
                    b'{' => self.layout = Layout::Object,
                    _ => {
                        self.layout = Layout::Junk;
                        return;
                    }
                },
                Layout::Array | Layout::Object => {}
            }
            let base = self.base_depth();
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    if self.depth == base {
                        self.capturing = true;
                        self.overflowed = false;
                        self.element.clear();
                        captured_from = Some(at);
                    }
                    self.depth = self.depth.saturating_add(1);
                }
                b'}' | b']' => {
                    if self.depth <= base {
                        // The array closed (or a stray bracket): nothing more to read.
                        self.layout = Layout::Done;
                        return;
                    }
                    self.depth -= 1;
                    if self.depth == base {
                        if let Some(from) = captured_from.take() {
                            self.append(&chunk[from..=at]);
                        }
                        self.capturing = false;
                        if self.overflowed {
                            self.overflowed_elements += 1;
                        } else {
                            on_element(&self.element, self.layout == Layout::Array);
                        }
                        self.element.clear();
                        if self.element.capacity() > MAX_RETAINED_BYTES {
                            self.element = Vec::new();
                        }
                        if self.layout == Layout::Object {
                            self.layout = Layout::Done;
                            return;
                        }
                    }
                }
                _ => {}
            }
            at += 1;
        }
        if let Some(from) = captured_from {
            self.append(&chunk[from..]);
        }
    }

    /// Adds bytes of the current element, dropping it past the limit.
    fn append(&mut self, bytes: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.element.len().saturating_add(bytes.len()) > self.limit {
            self.overflowed = true;
            self.element = Vec::new();
            return;
        }
        self.element.extend_from_slice(bytes);
    }
}

/// Element buffers at most this large are kept for reuse between elements.
const MAX_RETAINED_BYTES: usize = 64 * 1024;

/// A non-streaming `generateContent` body: one `GenerateContentResponse` or an error object,
/// buffered up to a limit and read when it closes.
#[derive(Debug)]
pub struct GenerateContentJson {
    scanner: ElementScanner,
    state: ResponseState,
}

impl Default for GenerateContentJson {
    fn default() -> Self {
        GenerateContentJson::with_limit(MAX_JSON_BODY_BYTES)
    }
}

impl GenerateContentJson {
    /// A parser that gives up (usage `None`) on bodies larger than `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        GenerateContentJson {
            scanner: ElementScanner::with_limit(limit),
            state: ResponseState::default(),
        }
    }
}

impl UsageParser for GenerateContentJson {
    fn feed(&mut self, chunk: &[u8]) {
        // An array here is a stream after all: its elements are chunks, not whole responses.
        let state = &mut self.state;
        self.scanner
            .feed(chunk, |object, in_array| state.on_object(object, !in_array));
    }

    fn finish(&mut self) -> ParsedUsage {
        std::mem::take(&mut self.state).finish()
    }
}

/// A `streamGenerateContent` body: SSE events (`?alt=sse`) or a JSON array (without it), each
/// event or element one `GenerateContentResponse` chunk or an error object.
#[derive(Debug)]
pub struct GenerateContentStream {
    framing: Framing,
    state: ResponseState,
}

#[derive(Debug)]
enum Framing {
    Sse(SseFramer),
    JsonArray(ElementScanner),
}

impl GenerateContentStream {
    /// For `text/event-stream` bodies (`?alt=sse`).
    pub fn sse() -> Self {
        GenerateContentStream {
            framing: Framing::Sse(SseFramer::default()),
            state: ResponseState::default(),
        }
    }

    /// For `application/json` bodies: the progressively written array, or a single object (an
    /// error returned before streaming began).
    pub fn json_array() -> Self {
        GenerateContentStream::json_array_with_limit(MAX_EVENT_DATA_BYTES)
    }

    /// Like [`GenerateContentStream::json_array`], dropping elements larger than `limit` bytes.
    pub fn json_array_with_limit(limit: usize) -> Self {
        GenerateContentStream {
            framing: Framing::JsonArray(ElementScanner::with_limit(limit)),
            state: ResponseState::default(),
        }
    }
}

impl UsageParser for GenerateContentStream {
    fn feed(&mut self, chunk: &[u8]) {
        let state = &mut self.state;
        match &mut self.framing {
            Framing::Sse(framer) => framer.feed(chunk, |event| state.on_object(event.data, false)),
            Framing::JsonArray(scanner) => {
                scanner.feed(chunk, |element, _| state.on_object(element, false))
            }
        }
    }

    fn finish(&mut self) -> ParsedUsage {
        let state = &mut self.state;
        if let Framing::Sse(framer) = &mut self.framing {
            framer.finish(|event| state.on_object(event.data, false));
        }
        // An array element still open here was cut off: it is not read.
        std::mem::take(&mut self.state).finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

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

    fn read(json: &str) -> UsageRead {
        let value: Value = serde_json::from_str(json).unwrap();
        read_usage(Some(&value))
    }

    fn reading(usage: Usage, audio_in: u64, audio_out: u64) -> UsageRead {
        UsageRead::Read(Reading {
            usage,
            audio_input_tokens: audio_in,
            audio_output_tokens: audio_out,
        })
    }

    #[test]
    fn bucket_mapping() {
        assert_eq!(
            read(r#"{"promptTokenCount": 9, "candidatesTokenCount": 37, "totalTokenCount": 46}"#),
            reading(usage(9, 0, 37, 0), 0, 0)
        );
        // Cached content is inside the prompt; thoughts are outside the candidates; tool-use
        // prompt tokens are outside the prompt and billed as input.
        assert_eq!(
            read(
                r#"{"promptTokenCount": 100, "cachedContentTokenCount": 60,
                    "candidatesTokenCount": 10, "thoughtsTokenCount": 30,
                    "toolUsePromptTokenCount": 20, "totalTokenCount": 160}"#
            ),
            reading(usage(60, 60, 40, 30), 0, 0)
        );
        // Early stream chunks: only the prompt, or the prompt and running thoughts.
        assert_eq!(
            read(r#"{"promptTokenCount": 8, "totalTokenCount": 8}"#),
            reading(usage(8, 0, 0, 0), 0, 0)
        );
        assert_eq!(
            read(r#"{"promptTokenCount": 2, "totalTokenCount": 73, "thoughtsTokenCount": 71}"#),
            reading(usage(2, 0, 71, 71), 0, 0)
        );
        // More cached than prompt tokens never makes input negative.
        assert_eq!(
            read(r#"{"promptTokenCount": 5, "cachedContentTokenCount": 7}"#),
            reading(usage(0, 7, 0, 0), 0, 0)
        );
        // Null counts read as 0.
        assert_eq!(
            read(r#"{"promptTokenCount": 5, "candidatesTokenCount": null}"#),
            reading(usage(5, 0, 0, 0), 0, 0)
        );
        assert_eq!(
            read(&format!(
                r#"{{"promptTokenCount": {max}, "toolUsePromptTokenCount": 1,
                    "candidatesTokenCount": {max}, "thoughtsTokenCount": 1}}"#,
                max = u64::MAX
            )),
            reading(usage(u64::MAX, 0, u64::MAX, 1), 0, 0)
        );
    }

    #[test]
    fn audio_modalities() {
        assert_eq!(
            read(
                r#"{"promptTokenCount": 1611, "candidatesTokenCount": 154, "toolUsePromptTokenCount": 40,
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 11},
                                            {"modality": "AUDIO", "tokenCount": 1600}],
                    "toolUsePromptTokensDetails": [{"modality": "AUDIO", "tokenCount": 40}],
                    "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": 154}],
                    "cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 999}]}"#
            ),
            reading(usage(1651, 0, 154, 0), 1640, 154)
        );
        // Malformed details refine nothing but cost nothing either.
        assert_eq!(
            read(
                r#"{"promptTokenCount": 10,
                    "promptTokensDetails": [{"modality": "AUDIO"}, {"modality": "AUDIO", "tokenCount": "3"},
                                            7, {"tokenCount": 4}, {"modality": "AUDIO", "tokenCount": 2}],
                    "candidatesTokensDetails": {"modality": "AUDIO", "tokenCount": 5}}"#
            ),
            reading(usage(10, 0, 0, 0), 2, 0)
        );
    }

    #[test]
    fn unreadable_and_missing_reports() {
        assert_eq!(
            read(r#"{"trafficType": "ON_DEMAND"}"#),
            UsageRead::NotAReport
        );
        assert_eq!(read(r#"{}"#), UsageRead::NotAReport);
        assert_eq!(read("null"), UsageRead::NotAReport);
        assert_eq!(read_usage(None), UsageRead::NotAReport);
        assert_eq!(read(r#"{"totalTokenCount": 15}"#), UsageRead::Unreadable);
        assert_eq!(read(r#"{"promptTokenCount": -1}"#), UsageRead::Unreadable);
        assert_eq!(read(r#"{"promptTokenCount": "10"}"#), UsageRead::Unreadable);
        assert_eq!(read(r#"{"promptTokenCount": 1.5}"#), UsageRead::Unreadable);
        assert_eq!(
            read(r#"{"promptTokenCount": 10, "thoughtsTokenCount": true}"#),
            UsageRead::Unreadable
        );
        assert_eq!(read("[10, 5]"), UsageRead::Unreadable);
        assert_eq!(read(r#""10 tokens""#), UsageRead::Unreadable);
    }

    /// Feeds `chunks` to a fresh scanner, returning the elements it found.
    fn scan(chunks: &[&[u8]], limit: usize) -> (Vec<String>, u64) {
        let mut scanner = ElementScanner::with_limit(limit);
        let mut elements = Vec::new();
        for chunk in chunks {
            scanner.feed(chunk, |element, _| {
                elements.push(String::from_utf8_lossy(element).into_owned())
            });
        }
        (elements, scanner.overflowed_elements)
    }

    /// Scans `input` whole, split at every offset, and byte by byte: always the same elements.
    fn check_scan(input: &str, limit: usize, expected: &[&str], overflows: u64) {
        let input = input.as_bytes();
        let mut chunkings: Vec<Vec<&[u8]>> = vec![vec![input]];
        for split in 0..=input.len() {
            chunkings.push(vec![&input[..split], &input[split..]]);
        }
        chunkings.push(input.chunks(1).collect());
        for chunks in chunkings {
            let sizes: Vec<usize> = chunks.iter().map(|chunk| chunk.len()).collect();
            assert_eq!(
                scan(&chunks, limit),
                (
                    expected.iter().map(|element| element.to_string()).collect(),
                    overflows
                ),
                "chunk sizes {sizes:?}"
            );
        }
    }

    #[test]
    fn array_elements() {
        check_scan(
            "[{\"a\": 1}\r\n,\r\n{\"b\": [2, {\"c\": 3}]}\r\n]",
            usize::MAX,
            &["{\"a\": 1}", "{\"b\": [2, {\"c\": 3}]}"],
            0,
        );
        // Brackets, quotes and backslashes inside strings do not count.
        check_scan(
            r#"[{"t": "a}]\"{[\\"}, {"u": "\\\"]"}]"#,
            usize::MAX,
            &[r#"{"t": "a}]\"{[\\"}"#, r#"{"u": "\\\"]"}"#],
            0,
        );
        // Strings and scalars between elements are skipped, and so is anything after the array.
        check_scan(
            r#" [ "x{", 7, {"a":1}, null ] {"b":2}"#,
            usize::MAX,
            &[r#"{"a":1}"#],
            0,
        );
        check_scan("[]", usize::MAX, &[], 0);
        check_scan("[\r\n]", usize::MAX, &[], 0);
        // A cut-off element is never handed out.
        check_scan("[{\"a\": 1},{\"b\": ", usize::MAX, &["{\"a\": 1}"], 0);
    }

    #[test]
    fn single_object_and_junk() {
        check_scan(
            "\n{\"error\": {\"code\": 429}}\n{\"x\": 1}",
            usize::MAX,
            &["{\"error\": {\"code\": 429}}"],
            0,
        );
        check_scan("<html>{\"a\": 1}</html>", usize::MAX, &[], 0);
        check_scan("\u{feff}{\"a\": 1}", usize::MAX, &[], 0);
        check_scan("}{\"a\": 1}", usize::MAX, &[], 0);
        check_scan("", usize::MAX, &[], 0);
    }

    #[test]
    fn element_limit() {
        // 9 bytes fit a limit of 9; the 10-byte element is dropped and counted, the next is read.
        check_scan(
            r#"[{"a": 12}, {"a": 123}, {"a": 1}]"#,
            9,
            &[r#"{"a": 12}"#, r#"{"a": 1}"#],
            1,
        );
        check_scan(r#"{"a": 123}"#, 9, &[], 1);
    }

    fn stream(body: &str) -> ParsedUsage {
        let mut sse = GenerateContentStream::sse();
        sse.feed(body.as_bytes());
        let parsed = sse.finish();
        // The same chunks as array elements must read the same.
        let array = format!(
            "[{}]",
            body.split("\n\n")
                .filter_map(|event| event.strip_prefix("data: "))
                .collect::<Vec<_>>()
                .join("\r\n,\r\n")
        );
        let mut json_array = GenerateContentStream::json_array();
        json_array.feed(array.as_bytes());
        assert_eq!(json_array.finish(), parsed, "{array}");
        parsed
    }

    const RUNNING: &str = r#"data: {"candidates": [{"content": {"parts": [{"text": "Hel"}],"role": "model"}}],"usageMetadata": {"promptTokenCount": 8,"totalTokenCount": 8},"modelVersion": "gemini-2.0-flash","responseId": "r1"}"#;

    #[test]
    fn stream_completion() {
        let last = r#"data: {"candidates": [{"content": {"parts": [{"text": "lo"}],"role": "model"},"finishReason": "STOP"}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 2,"totalTokenCount": 10},"modelVersion": "gemini-2.0-flash","responseId": "r1"}"#;
        let complete = stream(&format!("{RUNNING}\n\n{last}\n\n"));
        assert_eq!(complete.usage, Some(usage(8, 0, 2, 0)));
        assert_eq!(complete.partial, None);
        assert_eq!(complete.model.as_deref(), Some("gemini-2.0-flash"));
        assert_eq!(complete.request_id.as_deref(), Some("r1"));
        assert_eq!(complete.output_text.text, "Hello");

        // Without a finish reason the running report is only partial.
        let cut = stream(&format!("{RUNNING}\n\n"));
        assert_eq!(cut.usage, None);
        assert_eq!(cut.partial, Some(usage(8, 0, 0, 0)));
        assert_eq!(cut.request_id.as_deref(), Some("r1"));

        // A finish reason with no report in or after its chunk leaves the stale one partial.
        let bare_finish = r#"data: {"candidates": [{"content": {"parts": [{"text": "lo"}]},"finishReason": "STOP"}]}"#;
        let stale = stream(&format!("{RUNNING}\n\n{bare_finish}\n\n"));
        assert_eq!(stale.usage, None);
        assert_eq!(stale.partial, Some(usage(8, 0, 0, 0)));

        // A report after the finish chunk is read, and the last one wins.
        let trailing =
            r#"data: {"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 3}}"#;
        let late = stream(&format!("{RUNNING}\n\n{bare_finish}\n\n{trailing}\n\n"));
        assert_eq!(late.usage, Some(usage(8, 0, 3, 0)));

        // Vertex's count-less usageMetadata does not replace the final report...
        let vertex_tail = r#"data: {"usageMetadata": {"trafficType": "ON_DEMAND"}}"#;
        let vertex = stream(&format!("{RUNNING}\n\n{last}\n\n{vertex_tail}\n\n"));
        assert_eq!(vertex.usage, Some(usage(8, 0, 2, 0)));
        // ...but an unreadable one does, and no stale report stands in for it.
        let bad_tail = r#"data: {"usageMetadata": {"promptTokenCount": "8"}}"#;
        let bad = stream(&format!("{RUNNING}\n\n{last}\n\n{bad_tail}\n\n"));
        assert_eq!(bad.usage, None);
        assert_eq!(bad.partial, Some(usage(8, 0, 2, 0)));

        // A blocked prompt ends the stream without candidates.
        let blocked = r#"data: {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},"usageMetadata": {"promptTokenCount": 52,"totalTokenCount": 52},"modelVersion": "gemini-2.5-flash","responseId": "b1"}"#;
        assert_eq!(
            stream(&format!("{blocked}\n\n")).usage,
            Some(usage(52, 0, 0, 0))
        );

        // An error event: no final usage, the running report stays partial.
        let error = r#"data: {"error": {"code": 503,"message": "The model is overloaded. Please try again later.","status": "UNAVAILABLE"}}"#;
        let failed = stream(&format!("{RUNNING}\n\n{error}\n\n"));
        assert_eq!(failed.usage, None);
        assert_eq!(failed.partial, Some(usage(8, 0, 0, 0)));
        let failed_late = stream(&format!("{RUNNING}\n\n{last}\n\n{error}\n\n"));
        assert_eq!(failed_late.usage, None);
    }

    #[test]
    fn stream_junk_is_ignored() {
        let parsed = stream(&format!(
            "data: [DONE]\n\ndata: not json\n\ndata: {{\"candidates\": 7}}\n\n{RUNNING}\n\n"
        ));
        assert_eq!(parsed.partial, Some(usage(8, 0, 0, 0)));
        // Odd candidates cost the text and the finish reason, never the report.
        let odd = r#"data: {"candidates": [{"content": {"parts": {"text": "x"}},"finishReason": "STOP"}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 2}}"#;
        let parsed = stream(&format!("{odd}\n\n"));
        assert_eq!(parsed.usage, None);
        assert_eq!(parsed.partial, Some(usage(8, 0, 2, 0)));
    }

    fn json(body: &[u8], limit: usize) -> ParsedUsage {
        let mut parser = GenerateContentJson::with_limit(limit);
        for chunk in body.chunks(3) {
            parser.feed(chunk);
        }
        parser.finish()
    }

    #[test]
    fn json_bodies() {
        let body = br#"{"candidates": [{"content": {"parts": [{"text": "hi"}],"role": "model"},"finishReason": "STOP"}],"usageMetadata": {"promptTokenCount": 3,"candidatesTokenCount": 1,"totalTokenCount": 4,"candidatesTokensDetails": [{"modality": "AUDIO","tokenCount": 1}]},"modelVersion": "gemini-2.0-flash","responseId": "x"}"#;
        let parsed = json(body, MAX_JSON_BODY_BYTES);
        assert_eq!(parsed.usage, Some(usage(3, 0, 1, 0)));
        assert_eq!(parsed.quantities.audio_output_tokens, 1);
        assert_eq!(parsed.model.as_deref(), Some("gemini-2.0-flash"));
        assert_eq!(parsed.request_id.as_deref(), Some("x"));
        assert_eq!(parsed.output_text.text, "hi");
        assert_eq!(json(body, body.len()).usage, Some(usage(3, 0, 1, 0)));
        assert_eq!(json(body, body.len() - 1), ParsedUsage::default());
        // A whole body is final without a finish reason (a malformed function call, say).
        assert_eq!(
            json(
                br#"{"candidates": [{"index": 0}],"usageMetadata": {"promptTokenCount": 61,"totalTokenCount": 61}}"#,
                MAX_JSON_BODY_BYTES
            )
            .usage,
            Some(usage(61, 0, 0, 0))
        );
        // An array is read as a stream: its first chunk's running report is not final.
        let array = br#"[{"candidates": [{"content": {"parts": [{"text": "hi"}]}}],"usageMetadata": {"promptTokenCount": 3}}]"#;
        assert_eq!(json(array, MAX_JSON_BODY_BYTES).usage, None);
        assert_eq!(
            json(array, MAX_JSON_BODY_BYTES).partial,
            Some(usage(3, 0, 0, 0))
        );
        // An odd id or model type costs only that field.
        let parsed = json(
            br#"{"usageMetadata": {"promptTokenCount": 3},"modelVersion": 7,"responseId": ""}"#,
            MAX_JSON_BODY_BYTES,
        );
        assert_eq!(parsed.usage, Some(usage(3, 0, 0, 0)));
        assert_eq!((parsed.model, parsed.request_id), (None, None));
        for junk in [
            &b""[..],
            b"   ",
            b"not json",
            b"{\"usageMetadata\": {\"promptTokenCount\": 3}",
            b"\xFF\xFE{}",
            b"<html>502 Bad Gateway</html>",
            br#"{"candidates": [], "usageMetadata": {"trafficType": "ON_DEMAND"}}"#,
            br#"{"error": {"code": 400, "message": "x", "status": "INVALID_ARGUMENT"}}"#,
        ] {
            assert_eq!(
                json(junk, MAX_JSON_BODY_BYTES),
                ParsedUsage::default(),
                "{}",
                String::from_utf8_lossy(junk)
            );
        }
    }

    #[test]
    fn output_text_parts() {
        let body = br#"{"candidates": [{"content": {"parts": [
            {"text": "**Plan**", "thought": true},
            {"text": "Calling.", "thoughtSignature": "c2ln"},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
            {"functionCall": {"name": "ping"}},
            {"executableCode": {"language": "PYTHON", "code": "print(1)"}},
            {"codeExecutionResult": {"outcome": "OUTCOME_OK", "output": "1\n"}},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
            {"text": 7}
        ]}, "finishReason": "STOP"}, {"content": {"parts": [{"text": " Second."}]}}],
        "usageMetadata": {"promptTokenCount": 1}}"#;
        assert_eq!(
            json(body, MAX_JSON_BODY_BYTES).output_text.text,
            "**Plan**Calling.get_weather{\"city\":\"Paris\"}pingprint(1) Second."
        );
    }

    /// Random JSON-ish bytes (and invalid UTF-8) in random chunks never panic any parser.
    #[test]
    fn arbitrary_bytes_never_panic() {
        const ALPHABET: &[u8] = b"[]{}\":,\\ \r\n0123456789-.etruflanx\xFF\xC3data: usageMetadatapromptTokenCountfinishReason";
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize
        };
        for _ in 0..2_000 {
            let len = next() % 200;
            let body: Vec<u8> = (0..len)
                .map(|_| ALPHABET[next() % ALPHABET.len()])
                .collect();
            let parsers: [Box<dyn UsageParser>; 3] = [
                Box::new(GenerateContentJson::with_limit(64)),
                Box::new(GenerateContentStream::sse()),
                Box::new(GenerateContentStream::json_array_with_limit(64)),
            ];
            for mut parser in parsers {
                let mut rest = &body[..];
                while !rest.is_empty() {
                    let (chunk, tail) = rest.split_at(1 + next() % rest.len());
                    parser.feed(chunk);
                    rest = tail;
                }
                let parsed = parser.finish();
                assert!(parsed.usage.is_none() || parsed.partial.is_none());
            }
        }
    }
}
