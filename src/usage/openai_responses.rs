//! Usage parsers for OpenAI's non-chat APIs: Responses, legacy completions, embeddings, images
//! and audio, one JSON body or an SSE stream each. They keep at most one bounded body, event or
//! top-level JSON value, never log what they read, and never fail: an unreadable report is
//! `usage: None`, never zero tokens. Big payloads (embedding vectors, base64 images, audio) are
//! skipped as they stream by, not buffered.
//!
//! # Responses API (`POST /v1/responses`)
//!
//! <https://platform.openai.com/docs/api-reference/responses/object>; streaming events:
//! <https://platform.openai.com/docs/api-reference/responses-streaming>. Azure's
//! `/openai/v1/responses` and xAI's `/v1/responses` send the same shape and are read the same.
//! For xAI that `output_tokens` includes reasoning, as OpenAI's does, is assumed, not verified:
//! xAI's chat completions API leaves reasoning out of `completion_tokens`.
//!
//! | `usage` field | meter bucket |
//! |---|---|
//! | `input_tokens` - `input_tokens_details.cached_tokens` (at least 0) | `input_tokens` |
//! | `input_tokens_details.cached_tokens` (part of `input_tokens`) | `cache_read_tokens` |
//! | none (OpenAI does not bill cache writes) | `cache_write_tokens`, `cache_write_1h_tokens`: 0 |
//! | `output_tokens` (reasoning included) | `output_tokens` |
//! | `output_tokens_details.reasoning_tokens` (part of the above) | `reasoning_tokens` |
//! | `total_tokens` | ignored |
//! | one `output[]` item of type `web_search_call` | `quantities.web_search_calls` += 1 |
//! | one `output[]` item of type `image_generation_call` | `quantities.images` += 1, its `size`, `quality` |
//!
//! Web search also bills its search content at the model's input rate (pricing page); those
//! tokens are assumed to be inside `input_tokens`. Every `web_search_call` item is counted, whatever its `action` (`search`,
//! `open_page`, `find`). Image-generation tool calls are billed at the image model's rates, not
//! in `usage`, so they are counted as images for the price table.
//!
//! The model is `response.model`, the request id `response.id` (`resp_...`). A stream carries
//! usage only in its terminal event's `response`: `response.completed`, `response.incomplete`
//! (cut short by `max_output_tokens` or a content filter, still billed, still reported) or
//! `response.failed`, whose `usage` is usually `null` (then `None`) and, when present, is the
//! provider's final word on what was consumed and is read like the others. An `error` event or a
//! stream cut before its terminal event leaves `usage: None`; Responses streams report no running
//! usage, so `partial` stays `None`. The terminal event's `output` decides the quantities; the
//! `response.output_item.done` events stand in for it when the stream ends without one.
//!
//! # Legacy completions (`POST /v1/completions`)
//!
//! <https://platform.openai.com/docs/api-reference/completions/object>. The streamed chunk and the
//! body have the same shape; a stream has usage only with `stream_options.include_usage`, in a
//! last chunk with `"choices": []` (the others carry `"usage": null`); the last non-null `usage`
//! decides.
//!
//! | `usage` field | meter bucket |
//! |---|---|
//! | `prompt_tokens` - `prompt_tokens_details.cached_tokens` (at least 0) | `input_tokens` |
//! | `prompt_tokens_details.cached_tokens` | `cache_read_tokens` |
//! | `completion_tokens` (reasoning included) | `output_tokens` |
//! | `completion_tokens_details.reasoning_tokens` | `reasoning_tokens` |
//!
//! # Embeddings (`POST /v1/embeddings`)
//!
//! <https://platform.openai.com/docs/api-reference/embeddings/object>. `usage.prompt_tokens` ->
//! `input_tokens`; nothing else is billed (`total_tokens` equals it). The `data` vectors, floats
//! or base64, can run to hundreds of megabytes: the body is scanned, never buffered, and only
//! the top-level `usage` and `model` values are kept.
//!
//! # Images (`POST /v1/images/generations`, `/v1/images/edits`, `/v1/images/variations`)
//!
//! <https://platform.openai.com/docs/api-reference/images/create>; streaming events:
//! <https://platform.openai.com/docs/api-reference/images-streaming>.
//!
//! | field | meter |
//! |---|---|
//! | `usage.input_tokens` (text and image input) | `input_tokens` |
//! | `usage.input_tokens_details.image_tokens` | stays inside `input_tokens` (see below) |
//! | `usage.output_tokens` (image output tokens) | `output_tokens` |
//! | `usage.output_tokens_details.{image,text}_tokens` | stay inside `output_tokens` |
//! | `data.len()` / one `*.completed` event | `quantities.images` |
//! | top-level `size`, `quality` (GPT image models only) | `quantities.image_size`, `image_quality` |
//!
//! Only the GPT image models (`gpt-image-1`, `-mini`, `-1.5`) report `usage`. Their image input
//! tokens cost twice the text input rate (gpt-image-1: text $5, image $10 per 1M; output $40),
//! and meter has no bucket for them yet, so an edit's input is undercounted until the price
//! table can use `input_tokens_details.image_tokens`. DALL·E 2 and 3 report no usage at all and
//! bill per image by size and quality, which their responses do not echo: they read as
//! `usage: None` with `quantities.images` set, and pricing them needs the request's `size` and
//! `quality`. The body carries base64 images (tens of megabytes), so it is scanned like
//! embeddings. A stream (`stream: true`) ends each image with an `image_generation.completed` /
//! `image_edit.completed` event carrying usage; several are summed. Not verified: whether a
//! completed event's usage covers only its own image (summing assumes so), and whether the 100
//! output tokens OpenAI bills per partial image are inside it (assumed, as nothing else reports
//! them).
//!
//! # Audio (`POST /v1/audio/transcriptions`, `/v1/audio/translations`, `/v1/audio/speech`)
//!
//! <https://platform.openai.com/docs/api-reference/audio/createTranscription>,
//! <https://platform.openai.com/docs/api-reference/audio/verbose-json-object>,
//! <https://platform.openai.com/docs/api-reference/audio/speech-audio-done-event>.
//!
//! | field | meter |
//! |---|---|
//! | `usage.type = "tokens"`: `input_tokens` (text prompt + audio) | `input_tokens` |
//! | `usage.input_token_details.audio_tokens` (part of the above) | `quantities.audio_input_tokens` |
//! | `usage.output_tokens` (transcript text) | `output_tokens` |
//! | `usage.type = "duration"`: `seconds` (whisper-1, billed per minute) | `quantities.audio_millis`, tokens 0 |
//! | no `usage`, top-level `duration` (older `verbose_json`) | `quantities.audio_millis`, `usage: None` |
//! | speech SSE `speech.audio.done` `usage.input_tokens` / `output_tokens` | `input_tokens` / `output_tokens` (= `audio_output_tokens`) |
//!
//! A streamed transcription (`transcript.text.delta` events) reports usage in its
//! `transcript.text.done` event. `response_format` `text`, `srt` and `vtt` answer plain text with
//! no usage (`None`; the text is kept for the estimator). Speech without `stream_format: "sse"`
//! answers raw audio and no usage: [`NoUsage`] reads nothing. It is billed per input character
//! (`tts-1`, `tts-1-hd`) or per text-input and audio-output token (`gpt-4o-mini-tts`), which the
//! estimator must take from the request.

use memchr::memchr2;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::sse::{SseEvent, SseFramer};
use super::{BoundedBody, OutputText, ParsedUsage, Quantities, Usage, UsageParser};

/// Default cap on a buffered non-streaming body; a larger body yields `usage: None`.
pub const MAX_JSON_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Cap on one kept top-level value of a scanned body (`usage`, `model`, `size`...).
const MAX_CAPTURE_BYTES: usize = 64 * 1024;

/// Top-level keys longer than this are never among the wanted ones.
const MAX_KEY_BYTES: usize = 64;

// ---------------------------------------------------------------------------------------------
// Reading usage objects

/// A usage object that is present but cannot be read (a count of the wrong type).
struct Unreadable;

/// A count field: absent or `null` is `None`; anything but a non-negative integer is unreadable.
fn count(object: &Map<String, Value>, key: &str) -> Result<Option<u64>, Unreadable> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or(Unreadable),
    }
}

/// A count inside a details object; an absent or `null` object or count reads as 0.
fn detail(object: &Map<String, Value>, details: &str, key: &str) -> Result<u64, Unreadable> {
    match object.get(details) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Object(inner)) => Ok(count(inner, key)?.unwrap_or(0)),
        Some(_) => Err(Unreadable),
    }
}

/// Input and output counts where at least one must be present for the object to be a report.
fn input_output(
    object: &Map<String, Value>,
    input_key: &str,
    output_key: &str,
) -> Result<(u64, u64), Unreadable> {
    let input = count(object, input_key)?;
    let output = count(object, output_key)?;
    if input.is_none() && output.is_none() {
        return Err(Unreadable);
    }
    Ok((input.unwrap_or(0), output.unwrap_or(0)))
}

/// Responses API `usage`, per the table in the module comment.
fn responses_usage(value: &Value) -> Option<Usage> {
    let object = value.as_object()?;
    let read = || -> Result<Usage, Unreadable> {
        let (input, output) = input_output(object, "input_tokens", "output_tokens")?;
        let cached = detail(object, "input_tokens_details", "cached_tokens")?;
        let reasoning = detail(object, "output_tokens_details", "reasoning_tokens")?;
        Ok(Usage {
            input_tokens: input.saturating_sub(cached),
            cache_read_tokens: cached,
            output_tokens: output,
            reasoning_tokens: reasoning,
            ..Usage::default()
        })
    };
    read().ok()
}

/// Legacy completions `usage` (the chat completions shape).
fn completion_usage(value: &Value) -> Option<Usage> {
    let object = value.as_object()?;
    let read = || -> Result<Usage, Unreadable> {
        let (prompt, completion) = input_output(object, "prompt_tokens", "completion_tokens")?;
        let cached = detail(object, "prompt_tokens_details", "cached_tokens")?;
        let reasoning = detail(object, "completion_tokens_details", "reasoning_tokens")?;
        Ok(Usage {
            input_tokens: prompt.saturating_sub(cached),
            cache_read_tokens: cached,
            output_tokens: completion,
            reasoning_tokens: reasoning,
            ..Usage::default()
        })
    };
    read().ok()
}

/// Embeddings `usage`: only `prompt_tokens` is billed.
fn embeddings_usage(value: &Value) -> Option<Usage> {
    let prompt = count(value.as_object()?, "prompt_tokens").ok()??;
    Some(Usage {
        input_tokens: prompt,
        ..Usage::default()
    })
}

/// Images `usage` (GPT image models): image and text input together, image output.
fn images_usage(value: &Value) -> Option<Usage> {
    let (input, output) = input_output(value.as_object()?, "input_tokens", "output_tokens").ok()?;
    Some(Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    })
}

/// What a transcription `usage` object says.
struct AudioReading {
    usage: Usage,
    audio_input_tokens: u64,
    audio_millis: u64,
}

/// Transcription `usage`: `{"type": "tokens", ...}` or `{"type": "duration", "seconds": N}`.
/// The streamed `transcript.text.done` example in OpenAI's reference omits `type`, so the
/// variant is told by its fields when `type` is missing.
fn transcription_usage(value: &Value) -> Option<AudioReading> {
    let object = value.as_object()?;
    let kind = object.get("type").and_then(Value::as_str);
    let by_duration = match kind {
        Some("duration") => true,
        Some(_) => false,
        None => !object.contains_key("input_tokens") && !object.contains_key("output_tokens"),
    };
    if by_duration {
        // The reference names the field `seconds`; an older SDK schema named it `duration`.
        let seconds = object.get("seconds").or_else(|| object.get("duration"))?;
        return Some(AudioReading {
            usage: Usage::default(),
            audio_input_tokens: 0,
            audio_millis: millis(seconds)?,
        });
    }
    let (input, output) = input_output(object, "input_tokens", "output_tokens").ok()?;
    let audio = detail(object, "input_token_details", "audio_tokens").ok()?;
    Some(AudioReading {
        usage: Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        },
        audio_input_tokens: audio,
        audio_millis: 0,
    })
}

/// Speech `usage` (`speech.audio.done`): text input tokens, audio output tokens.
fn speech_usage(value: &Value) -> Option<Usage> {
    let (input, output) = input_output(value.as_object()?, "input_tokens", "output_tokens").ok()?;
    Some(Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    })
}

/// Seconds (a JSON number) as whole milliseconds; `None` for anything negative or not a number.
fn millis(seconds: &Value) -> Option<u64> {
    let seconds = seconds.as_f64()?;
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    // `as` saturates for floats beyond u64, which no real duration reaches.
    Some((seconds * 1000.0).round() as u64)
}

fn string_of(value: Option<&Value>) -> Option<String> {
    match value {
        Some(Value::String(text)) if !text.is_empty() => Some(text.clone()),
        _ => None,
    }
}

fn owned_string(value: Option<Value>) -> Option<String> {
    match value {
        Some(Value::String(text)) if !text.is_empty() => Some(text),
        _ => None,
    }
}

fn push_str(out: &mut OutputText, value: Option<&Value>) {
    if let Some(text) = value.and_then(Value::as_str) {
        out.push(text);
    }
}

fn is_json_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether `json` starts (after whitespace) with `{`: an array would otherwise fill a struct
/// positionally.
fn starts_with_object(json: &[u8]) -> bool {
    json.iter().find(|byte| !is_json_whitespace(**byte)) == Some(&b'{')
}

fn parse_object<T: serde::de::DeserializeOwned>(json: &[u8]) -> Option<T> {
    if !starts_with_object(json) {
        return None;
    }
    serde_json::from_slice(json).ok()
}

// ---------------------------------------------------------------------------------------------
// Buffered bodies

// ---------------------------------------------------------------------------------------------
// Top-level JSON scanner

/// Where the scanner is in the top-level object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the opening `{`.
    Start,
    /// After `{` or `,` at the top level.
    ExpectKey,
    /// Inside a top-level key string.
    Key,
    ExpectColon,
    ExpectValue,
    /// Inside a top-level value, up to the `,` or `}` that ends it.
    Value,
    /// After the closing `}`.
    Done,
    /// Not one JSON object: nothing is reported.
    Invalid,
}

/// Reads one JSON object incrementally without buffering it: keeps the raw bytes of a few
/// top-level values (bounded) and counts the elements of one top-level array, skipping
/// everything else (strings by `memchr`, numbers by a byte scan). It checks structure only as
/// far as it needs to; the kept values are parsed with serde afterwards.
struct TopLevelScanner {
    wanted: &'static [&'static str],
    count_key: Option<&'static str>,
    phase: Phase,
    /// Open objects and arrays; the top-level object is depth 1.
    depth: usize,
    in_string: bool,
    /// The previous string byte was a backslash.
    escaped: bool,
    /// The current top-level key with its closing quote, or cleared if it grew too long.
    key: Vec<u8>,
    key_too_long: bool,
    /// Which wanted key the current value belongs to.
    capturing: Option<usize>,
    buffer: Vec<u8>,
    buffer_overflowed: bool,
    captured: Vec<Option<Vec<u8>>>,
    /// The current value is the counted array.
    counting: bool,
    /// Inside the counted array, the next non-blank byte starts an element.
    expect_element: bool,
    elements: u64,
    count: Option<u64>,
}

/// What a complete object held.
struct Scanned {
    /// Raw JSON of each wanted key, in the order asked for, if present.
    values: Vec<Option<Vec<u8>>>,
    /// Elements of the counted array, if the key held an array.
    count: Option<u64>,
}

impl Scanned {
    fn value(&self, index: usize) -> Option<Value> {
        let raw = self.values.get(index)?.as_ref()?;
        serde_json::from_slice(raw).ok()
    }
}

impl TopLevelScanner {
    fn new(wanted: &'static [&'static str], count_key: Option<&'static str>) -> Self {
        TopLevelScanner {
            wanted,
            count_key,
            phase: Phase::Start,
            depth: 0,
            in_string: false,
            escaped: false,
            key: Vec::new(),
            key_too_long: false,
            capturing: None,
            buffer: Vec::new(),
            buffer_overflowed: false,
            captured: vec![None; wanted.len()],
            counting: false,
            expect_element: false,
            elements: 0,
            count: None,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        let mut at = 0;
        while at < chunk.len() {
            if self.phase == Phase::Invalid {
                return;
            }
            if self.in_string {
                at = self.skip_string(chunk, at);
                continue;
            }
            if self.phase == Phase::Value && self.may_skip() {
                // Commas only end a top-level value or an element of the counted array; the
                // ones between numbers deep inside a vector are passed over with the numbers.
                let commas_matter = self.depth == 1 || (self.counting && self.depth == 2);
                let rest = &chunk[at..];
                at += rest
                    .iter()
                    .position(|byte| is_structural(*byte, commas_matter))
                    .unwrap_or(rest.len());
                if at == chunk.len() {
                    return;
                }
            }
            let byte = chunk[at];
            at += 1;
            self.step(byte);
        }
    }

    /// Bytes other than brackets, quotes and commas can be passed over unseen unless they are
    /// kept or might start an element of the counted array.
    fn may_skip(&self) -> bool {
        self.capturing.is_none() && !(self.counting && self.depth == 2 && self.expect_element)
    }

    /// Consumes string bytes from `at` up to and including the closing quote, if in `chunk`.
    fn skip_string(&mut self, chunk: &[u8], at: usize) -> usize {
        if self.escaped {
            self.escaped = false;
            self.sink(&chunk[at..at + 1]);
            return at + 1;
        }
        let rest = &chunk[at..];
        match memchr2(b'"', b'\\', rest) {
            None => {
                self.sink(rest);
                chunk.len()
            }
            Some(end) => {
                self.sink(&rest[..=end]);
                if rest[end] == b'\\' {
                    self.escaped = true;
                } else {
                    self.in_string = false;
                    if self.phase == Phase::Key {
                        self.phase = Phase::ExpectColon;
                    }
                }
                at + end + 1
            }
        }
    }

    /// Keeps bytes of the current key or wanted value, within their limits.
    fn sink(&mut self, bytes: &[u8]) {
        if self.phase == Phase::Key {
            if self.key.len() + bytes.len() > MAX_KEY_BYTES + 1 {
                self.key_too_long = true;
                self.key.clear();
            } else if !self.key_too_long {
                self.key.extend_from_slice(bytes);
            }
        } else if self.capturing.is_some() && !self.buffer_overflowed {
            if self.buffer.len() + bytes.len() > MAX_CAPTURE_BYTES {
                self.buffer_overflowed = true;
                self.buffer = Vec::new();
            } else {
                self.buffer.extend_from_slice(bytes);
            }
        }
    }

    /// One byte outside any string.
    fn step(&mut self, byte: u8) {
        let blank = is_json_whitespace(byte);
        match self.phase {
            Phase::Start if blank => {}
            Phase::Start if byte == b'{' => {
                self.depth = 1;
                self.phase = Phase::ExpectKey;
            }
            Phase::ExpectKey if blank => {}
            Phase::ExpectKey if byte == b'"' => {
                self.key.clear();
                self.key_too_long = false;
                self.phase = Phase::Key;
                self.in_string = true;
            }
            Phase::ExpectKey if byte == b'}' => {
                self.depth = 0;
                self.phase = Phase::Done;
            }
            Phase::ExpectColon if blank => {}
            Phase::ExpectColon if byte == b':' => self.phase = Phase::ExpectValue,
            Phase::ExpectValue if blank => {}
            Phase::ExpectValue if !matches!(byte, b',' | b'}' | b']' | b':') => {
                self.start_value(byte)
            }
            Phase::Value => self.value_byte(byte),
            Phase::Done if blank => {}
            _ => self.phase = Phase::Invalid,
        }
    }

    fn start_value(&mut self, byte: u8) {
        let key: &[u8] = match self.key.split_last() {
            Some((b'"', name)) if !self.key_too_long => name,
            _ => b"",
        };
        self.capturing = self
            .wanted
            .iter()
            .position(|wanted| !wanted.is_empty() && wanted.as_bytes() == key);
        self.counting = byte == b'['
            && self
                .count_key
                .is_some_and(|count_key| count_key.as_bytes() == key);
        if self.counting {
            self.expect_element = true;
            self.elements = 0;
        }
        self.buffer.clear();
        self.buffer_overflowed = false;
        self.phase = Phase::Value;
        self.sink(&[byte]);
        match byte {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            _ => {}
        }
    }

    fn value_byte(&mut self, byte: u8) {
        if self.depth == 1 && matches!(byte, b',' | b'}') {
            self.end_value();
            if byte == b',' {
                self.phase = Phase::ExpectKey;
            } else {
                self.depth = 0;
                self.phase = Phase::Done;
            }
            return;
        }
        if self.counting && self.depth == 2 {
            if self.expect_element && !is_json_whitespace(byte) && byte != b']' {
                self.elements += 1;
                self.expect_element = false;
            }
            if byte == b',' {
                self.expect_element = true;
            }
        }
        self.sink(&[byte]);
        match byte {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                if self.depth <= 1 {
                    self.phase = Phase::Invalid;
                    return;
                }
                self.depth -= 1;
                if self.counting && self.depth == 1 {
                    self.count = Some(self.elements);
                    self.counting = false;
                }
            }
            _ => {}
        }
    }

    fn end_value(&mut self) {
        self.counting = false;
        if let Some(index) = self.capturing.take() {
            let kept = std::mem::take(&mut self.buffer);
            self.captured[index] = (!self.buffer_overflowed).then_some(kept);
        }
    }

    /// What the body held, if it was one complete object.
    fn finish(&mut self) -> Option<Scanned> {
        if self.phase != Phase::Done {
            return None;
        }
        Some(Scanned {
            values: std::mem::take(&mut self.captured),
            count: self.count,
        })
    }
}

/// Bytes that can change the scanner's state outside strings.
fn is_structural(byte: u8, commas_matter: bool) -> bool {
    matches!(byte, b'"' | b'{' | b'[' | b'}' | b']') || (commas_matter && byte == b',')
}

impl std::fmt::Debug for TopLevelScanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopLevelScanner")
            .field("phase", &self.phase)
            .field("depth", &self.depth)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Responses API

/// The fields meter reads from a `response` object. `id`, `model` and `usage` are JSON values
/// so an odd type in one costs only that field; everything else (instructions, tools) is
/// skipped unread.
#[derive(Debug, Default, Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    model: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    output: Option<Value>,
}

/// Billable items among a response's output.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct OutputTally {
    web_search_calls: u64,
    images: u64,
    image_size: Option<String>,
    image_quality: Option<String>,
}

impl OutputTally {
    fn add(&mut self, kind: Option<&str>, size: Option<&Value>, quality: Option<&Value>) {
        match kind {
            Some("web_search_call") => self.web_search_calls += 1,
            Some("image_generation_call") => {
                self.images += 1;
                if self.image_size.is_none() {
                    self.image_size = string_of(size);
                }
                if self.image_quality.is_none() {
                    self.image_quality = string_of(quality);
                }
            }
            _ => {}
        }
    }

    fn add_item(&mut self, item: &Value) {
        self.add(
            item.get("type").and_then(Value::as_str),
            item.get("size"),
            item.get("quality"),
        );
    }

    fn of_output(output: &Value) -> Option<OutputTally> {
        let items = output.as_array()?;
        let mut tally = OutputTally::default();
        for item in items {
            tally.add_item(item);
        }
        Some(tally)
    }

    fn quantities(self) -> Quantities {
        Quantities {
            images: self.images,
            image_size: self.image_size,
            image_quality: self.image_quality,
            web_search_calls: self.web_search_calls,
            ..Quantities::default()
        }
    }
}

/// Generated text of a response's `output` items, for the estimator.
fn push_output_text(output: &Value, out: &mut OutputText) {
    let Some(items) = output.as_array() else {
        return;
    };
    for item in items {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                for part in item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    match part.get("type").and_then(Value::as_str) {
                        Some("refusal") => push_str(out, part.get("refusal")),
                        _ => push_str(out, part.get("text")),
                    }
                }
            }
            Some("reasoning") => {
                for key in ["summary", "content"] {
                    for part in item
                        .get(key)
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        push_str(out, part.get("text"));
                    }
                }
            }
            Some("function_call" | "mcp_call") => push_str(out, item.get("arguments")),
            Some("custom_tool_call") => push_str(out, item.get("input")),
            Some("code_interpreter_call") => push_str(out, item.get("code")),
            _ => {}
        }
    }
}

/// A non-streaming Responses API body (`object: "response"`), buffered up to a limit.
#[derive(Debug)]
pub struct ResponsesJson {
    body: BoundedBody,
}

impl Default for ResponsesJson {
    fn default() -> Self {
        ResponsesJson::with_limit(MAX_JSON_BODY_BYTES)
    }
}

impl ResponsesJson {
    /// A parser that gives up (usage `None`) on bodies larger than `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        ResponsesJson {
            body: BoundedBody::with_limit(limit),
        }
    }
}

impl UsageParser for ResponsesJson {
    fn feed(&mut self, chunk: &[u8]) {
        self.body.push(chunk);
    }

    fn finish(&mut self) -> ParsedUsage {
        let Some(response) = self
            .body
            .take()
            .and_then(|body| parse_object::<WireResponse>(&body))
        else {
            return ParsedUsage::default();
        };
        let mut parsed = ParsedUsage {
            usage: response.usage.as_ref().and_then(responses_usage),
            model: owned_string(response.model),
            request_id: owned_string(response.id),
            ..ParsedUsage::default()
        };
        if let Some(output) = &response.output {
            if let Some(tally) = OutputTally::of_output(output) {
                parsed.quantities = tally.quantities();
            }
            push_output_text(output, &mut parsed.output_text);
        }
        parsed
    }
}

/// Stream events whose data carries generated text in `delta`.
const RESPONSES_TEXT_DELTAS: &[&str] = &[
    "response.output_text.delta",
    "response.refusal.delta",
    "response.reasoning_summary_text.delta",
    "response.reasoning_text.delta",
    "response.function_call_arguments.delta",
    "response.custom_tool_call_input.delta",
    "response.mcp_call_arguments.delta",
    "response.code_interpreter_call_code.delta",
];

/// Stream events that end a response and carry its final `usage`.
const RESPONSES_TERMINAL: &[&str] = &[
    "response.completed",
    "response.incomplete",
    "response.failed",
];

/// Stream events that name the response (id and model) before it ends.
const RESPONSES_OPENING: &[&str] = &[
    "response.created",
    "response.in_progress",
    "response.queued",
];

const RESPONSES_ITEM_DONE: &str = "response.output_item.done";

/// Whether an event named `name` can matter; everything else (partial images, audio, content
/// parts, search progress) is skipped without parsing its data.
fn responses_event_matters(name: &[u8]) -> bool {
    let listed = |list: &[&str]| list.iter().any(|kind| kind.as_bytes() == name);
    listed(RESPONSES_TEXT_DELTAS)
        || listed(RESPONSES_TERMINAL)
        || listed(RESPONSES_OPENING)
        || name == RESPONSES_ITEM_DONE.as_bytes()
}

/// One Responses stream event as meter reads it.
#[derive(Debug, Default, Deserialize)]
struct WireResponsesEvent {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
    #[serde(default)]
    delta: Option<Value>,
    #[serde(default)]
    response: Option<WireResponse>,
    #[serde(default)]
    item: Option<WireItemHead>,
}

/// The head of an output item: its kind and, for images, size and quality. The rest (a base64
/// image `result`, say) is skipped unread.
#[derive(Debug, Default, Deserialize)]
struct WireItemHead {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
    #[serde(default)]
    size: Option<Value>,
    #[serde(default)]
    quality: Option<Value>,
}

/// A streaming Responses API body (`text/event-stream`): named events whose data is one JSON
/// object with a `type` and a `sequence_number`.
#[derive(Default)]
pub struct ResponsesStream {
    framer: SseFramer,
    state: ResponsesState,
}

#[derive(Default)]
struct ResponsesState {
    model: Option<String>,
    request_id: Option<String>,
    /// The reading of the last terminal event's `usage`, once one was seen.
    terminal_usage: Option<Option<Usage>>,
    /// Billable items of the terminal event's `output`, when it had one.
    terminal_tally: Option<OutputTally>,
    /// Billable items of the `response.output_item.done` events.
    done_items: OutputTally,
    output_text: OutputText,
}

impl std::fmt::Debug for ResponsesStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponsesStream")
            .field("model", &self.state.model)
            .field("request_id", &self.state.request_id)
            .field("terminal_usage", &self.state.terminal_usage)
            .finish_non_exhaustive()
    }
}

impl UsageParser for ResponsesStream {
    fn feed(&mut self, chunk: &[u8]) {
        let state = &mut self.state;
        self.framer.feed(chunk, |event| state.on_event(event));
    }

    fn finish(&mut self) -> ParsedUsage {
        let state = &mut self.state;
        self.framer.finish(|event| state.on_event(event));
        let state = std::mem::take(&mut self.state);
        let tally = state.terminal_tally.unwrap_or(state.done_items);
        ParsedUsage {
            usage: state.terminal_usage.flatten(),
            model: state.model,
            request_id: state.request_id,
            quantities: tally.quantities(),
            output_text: state.output_text,
            ..ParsedUsage::default()
        }
    }
}

impl ResponsesState {
    fn on_event(&mut self, event: &SseEvent<'_>) {
        if !event.event.is_empty() && !responses_event_matters(event.event) {
            return;
        }
        // Opening events echo the whole request configuration (instructions, tools); once they
        // have named the response there is nothing more to read in them.
        let named = self.model.is_some() && self.request_id.is_some();
        if named
            && RESPONSES_OPENING
                .iter()
                .any(|kind| kind.as_bytes() == event.event)
        {
            return;
        }
        let Some(wire) = parse_object::<WireResponsesEvent>(event.data) else {
            return;
        };
        // The data's own `type` decides; the SSE name only stands in when it is missing.
        let kind = match &wire.kind {
            Some(Value::String(kind)) => kind.as_str(),
            _ => std::str::from_utf8(event.event).unwrap_or(""),
        };
        if RESPONSES_TEXT_DELTAS.contains(&kind) {
            push_str(&mut self.output_text, wire.delta.as_ref());
        } else if kind == RESPONSES_ITEM_DONE {
            if let Some(item) = &wire.item {
                let kind = item.kind.as_ref().and_then(Value::as_str);
                self.done_items
                    .add(kind, item.size.as_ref(), item.quality.as_ref());
            }
        } else if RESPONSES_OPENING.contains(&kind) {
            if let Some(response) = wire.response {
                self.name_from(response);
            }
        } else if RESPONSES_TERMINAL.contains(&kind) {
            if let Some(response) = wire.response {
                self.on_terminal(response);
            }
        }
    }

    fn name_from(&mut self, response: WireResponse) {
        if self.request_id.is_none() {
            self.request_id = owned_string(response.id);
        }
        if self.model.is_none() {
            self.model = owned_string(response.model);
        }
    }

    fn on_terminal(&mut self, mut response: WireResponse) {
        self.terminal_usage = Some(response.usage.as_ref().and_then(responses_usage));
        if let Some(output) = response.output.take() {
            if let Some(tally) = OutputTally::of_output(&output) {
                self.terminal_tally = Some(tally);
            }
            // A stream whose deltas carried no text (or a client that asked for none) still
            // leaves the final text for the estimator.
            if self.output_text.is_empty() {
                push_output_text(&output, &mut self.output_text);
            }
        }
        self.name_from(response);
    }
}

// ---------------------------------------------------------------------------------------------
// Legacy completions

/// The fields meter reads from a `text_completion` body or chunk.
#[derive(Debug, Default, Deserialize)]
struct WireCompletion {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    model: Option<Value>,
    #[serde(default)]
    choices: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
}

fn push_choice_texts(choices: Option<&Value>, out: &mut OutputText) {
    for choice in choices.and_then(Value::as_array).into_iter().flatten() {
        push_str(out, choice.get("text"));
    }
}

/// A non-streaming legacy completion (`object: "text_completion"`), buffered up to a limit.
#[derive(Debug)]
pub struct CompletionsJson {
    body: BoundedBody,
}

impl Default for CompletionsJson {
    fn default() -> Self {
        CompletionsJson::with_limit(MAX_JSON_BODY_BYTES)
    }
}

impl CompletionsJson {
    /// A parser that gives up (usage `None`) on bodies larger than `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        CompletionsJson {
            body: BoundedBody::with_limit(limit),
        }
    }
}

impl UsageParser for CompletionsJson {
    fn feed(&mut self, chunk: &[u8]) {
        self.body.push(chunk);
    }

    fn finish(&mut self) -> ParsedUsage {
        let Some(completion) = self
            .body
            .take()
            .and_then(|body| parse_object::<WireCompletion>(&body))
        else {
            return ParsedUsage::default();
        };
        let mut parsed = ParsedUsage {
            usage: completion.usage.as_ref().and_then(completion_usage),
            model: owned_string(completion.model),
            request_id: owned_string(completion.id),
            ..ParsedUsage::default()
        };
        push_choice_texts(completion.choices.as_ref(), &mut parsed.output_text);
        parsed
    }
}

/// A streaming legacy completion: each event's data is one chunk of the body's shape, or
/// `[DONE]`.
#[derive(Default)]
pub struct CompletionsStream {
    framer: SseFramer,
    state: CompletionsState,
}

#[derive(Default)]
struct CompletionsState {
    model: Option<String>,
    request_id: Option<String>,
    /// The reading of the last non-null `usage` seen (`None` inside if it was unreadable).
    last_usage: Option<Option<Usage>>,
    output_text: OutputText,
}

impl std::fmt::Debug for CompletionsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionsStream")
            .field("model", &self.state.model)
            .field("request_id", &self.state.request_id)
            .field("last_usage", &self.state.last_usage)
            .finish_non_exhaustive()
    }
}

impl UsageParser for CompletionsStream {
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
            output_text: state.output_text,
            ..ParsedUsage::default()
        }
    }
}

impl CompletionsState {
    fn on_data(&mut self, data: &[u8]) {
        // `[DONE]`, keep-alive junk and truncated chunks fall out here.
        let Some(chunk) = parse_object::<WireCompletion>(data) else {
            return;
        };
        if self.request_id.is_none() {
            self.request_id = owned_string(chunk.id);
        }
        if self.model.is_none() {
            self.model = owned_string(chunk.model);
        }
        push_choice_texts(chunk.choices.as_ref(), &mut self.output_text);
        match &chunk.usage {
            None | Some(Value::Null) => {}
            Some(value) => self.last_usage = Some(completion_usage(value)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Embeddings

const EMBEDDINGS_KEYS: &[&str] = &["usage", "model"];

/// An embeddings body (`object: "list"`), scanned without keeping its vectors.
#[derive(Debug)]
pub struct EmbeddingsJson {
    scanner: TopLevelScanner,
}

impl Default for EmbeddingsJson {
    fn default() -> Self {
        EmbeddingsJson {
            scanner: TopLevelScanner::new(EMBEDDINGS_KEYS, None),
        }
    }
}

impl UsageParser for EmbeddingsJson {
    fn feed(&mut self, chunk: &[u8]) {
        self.scanner.feed(chunk);
    }

    fn finish(&mut self) -> ParsedUsage {
        let Some(scanned) = self.scanner.finish() else {
            return ParsedUsage::default();
        };
        ParsedUsage {
            usage: scanned.value(0).as_ref().and_then(embeddings_usage),
            model: owned_string(scanned.value(1)),
            ..ParsedUsage::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Images

const IMAGES_KEYS: &[&str] = &["usage", "size", "quality"];

/// An images body (generations, edits, variations), scanned without keeping its base64 images.
#[derive(Debug)]
pub struct ImagesJson {
    scanner: TopLevelScanner,
}

impl Default for ImagesJson {
    fn default() -> Self {
        ImagesJson {
            scanner: TopLevelScanner::new(IMAGES_KEYS, Some("data")),
        }
    }
}

impl UsageParser for ImagesJson {
    fn feed(&mut self, chunk: &[u8]) {
        self.scanner.feed(chunk);
    }

    fn finish(&mut self) -> ParsedUsage {
        let Some(scanned) = self.scanner.finish() else {
            return ParsedUsage::default();
        };
        ParsedUsage {
            usage: scanned.value(0).as_ref().and_then(images_usage),
            quantities: Quantities {
                images: scanned.count.unwrap_or(0),
                image_size: owned_string(scanned.value(1)),
                image_quality: owned_string(scanned.value(2)),
                ..Quantities::default()
            },
            ..ParsedUsage::default()
        }
    }
}

/// One image stream event as meter reads it; `b64_json` is skipped unread.
#[derive(Debug, Default, Deserialize)]
struct WireImageEvent {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    size: Option<Value>,
    #[serde(default)]
    quality: Option<Value>,
}

fn is_image_completed(kind: &[u8]) -> bool {
    kind == b"image_generation.completed" || kind == b"image_edit.completed"
}

/// A streaming images body (`stream: true`): `*.partial_image` events, then one `*.completed`
/// event per image with that image's usage.
#[derive(Default)]
pub struct ImagesStream {
    framer: SseFramer,
    state: ImagesState,
}

#[derive(Default)]
struct ImagesState {
    images: u64,
    /// The sum of the completed images' usage; `None` inside once one could not be read.
    usage: Option<Option<Usage>>,
    image_size: Option<String>,
    image_quality: Option<String>,
}

impl std::fmt::Debug for ImagesStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImagesStream")
            .field("images", &self.state.images)
            .field("usage", &self.state.usage)
            .finish_non_exhaustive()
    }
}

impl UsageParser for ImagesStream {
    fn feed(&mut self, chunk: &[u8]) {
        let state = &mut self.state;
        self.framer.feed(chunk, |event| state.on_event(event));
    }

    fn finish(&mut self) -> ParsedUsage {
        let state = &mut self.state;
        self.framer.finish(|event| state.on_event(event));
        let state = std::mem::take(&mut self.state);
        ParsedUsage {
            usage: state.usage.flatten(),
            quantities: Quantities {
                images: state.images,
                image_size: state.image_size,
                image_quality: state.image_quality,
                ..Quantities::default()
            },
            ..ParsedUsage::default()
        }
    }
}

impl ImagesState {
    fn on_event(&mut self, event: &SseEvent<'_>) {
        // Partial images are megabytes of base64 and carry nothing meter needs.
        if !event.event.is_empty() && !is_image_completed(event.event) {
            return;
        }
        let Some(wire) = parse_object::<WireImageEvent>(event.data) else {
            return;
        };
        let completed = match &wire.kind {
            Some(Value::String(kind)) => is_image_completed(kind.as_bytes()),
            _ => is_image_completed(event.event),
        };
        if !completed {
            return;
        }
        self.images += 1;
        if self.image_size.is_none() {
            self.image_size = string_of(wire.size.as_ref());
        }
        if self.image_quality.is_none() {
            self.image_quality = string_of(wire.quality.as_ref());
        }
        let this = wire.usage.as_ref().and_then(images_usage);
        self.usage = Some(match (self.usage.take(), this) {
            (None, this) => this,
            (Some(Some(sum)), Some(this)) => Some(Usage {
                input_tokens: sum.input_tokens.saturating_add(this.input_tokens),
                output_tokens: sum.output_tokens.saturating_add(this.output_tokens),
                ..Usage::default()
            }),
            (Some(_), _) => None,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Audio

/// The fields meter reads from a transcription or translation body (`json`, `verbose_json`,
/// `diarized_json`); segments, words and logprobs are skipped unread.
#[derive(Debug, Default, Deserialize)]
struct WireTranscription {
    #[serde(default)]
    text: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    duration: Option<Value>,
}

/// A non-streaming transcription or translation: JSON, or plain text for `response_format`
/// `text`, `srt` and `vtt`. Buffered up to a limit.
#[derive(Debug)]
pub struct TranscriptionJson {
    body: BoundedBody,
}

impl Default for TranscriptionJson {
    fn default() -> Self {
        TranscriptionJson::with_limit(MAX_JSON_BODY_BYTES)
    }
}

impl TranscriptionJson {
    /// A parser that gives up (usage `None`) on bodies larger than `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        TranscriptionJson {
            body: BoundedBody::with_limit(limit),
        }
    }
}

impl UsageParser for TranscriptionJson {
    fn feed(&mut self, chunk: &[u8]) {
        self.body.push(chunk);
    }

    fn finish(&mut self) -> ParsedUsage {
        let Some(body) = self.body.take() else {
            return ParsedUsage::default();
        };
        let mut parsed = ParsedUsage::default();
        if !starts_with_object(&body) {
            // Plain-text formats carry the transcript and nothing else.
            parsed.output_text.push(&String::from_utf8_lossy(&body));
            return parsed;
        }
        let Some(transcription) = parse_object::<WireTranscription>(&body) else {
            return parsed;
        };
        push_str(&mut parsed.output_text, transcription.text.as_ref());
        match transcription.usage.as_ref().and_then(transcription_usage) {
            Some(reading) => apply_audio(&mut parsed, reading),
            None if transcription.usage.is_none() => {
                // No usage report, but the audio's length is still what whisper-1 bills.
                if let Some(millis) = transcription.duration.as_ref().and_then(millis) {
                    parsed.quantities.audio_millis = millis;
                }
            }
            None => {}
        }
        parsed
    }
}

fn apply_audio(parsed: &mut ParsedUsage, reading: AudioReading) {
    parsed.usage = Some(reading.usage);
    parsed.quantities.audio_input_tokens = reading.audio_input_tokens;
    parsed.quantities.audio_millis = reading.audio_millis;
}

/// One transcription stream event as meter reads it.
#[derive(Debug, Default, Deserialize)]
struct WireTranscriptEvent {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
    #[serde(default)]
    delta: Option<Value>,
    #[serde(default)]
    text: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
}

/// A streaming transcription (`stream: true`, GPT-4o transcribe models): data-only events
/// `transcript.text.delta`, `transcript.text.segment` (diarization) and a last
/// `transcript.text.done` with the usage.
#[derive(Default)]
pub struct TranscriptionStream {
    framer: SseFramer,
    state: TranscriptState,
}

#[derive(Default)]
struct TranscriptState {
    /// The reading of the last `transcript.text.done` event, once one was seen.
    done: Option<Option<AudioReading>>,
    saw_delta: bool,
    output_text: OutputText,
}

impl std::fmt::Debug for TranscriptionStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranscriptionStream")
            .field("done", &self.state.done.as_ref().map(Option::is_some))
            .finish_non_exhaustive()
    }
}

impl UsageParser for TranscriptionStream {
    fn feed(&mut self, chunk: &[u8]) {
        let state = &mut self.state;
        self.framer.feed(chunk, |event| state.on_event(event));
    }

    fn finish(&mut self) -> ParsedUsage {
        let state = &mut self.state;
        self.framer.finish(|event| state.on_event(event));
        let state = std::mem::take(&mut self.state);
        let mut parsed = ParsedUsage {
            output_text: state.output_text,
            ..ParsedUsage::default()
        };
        if let Some(reading) = state.done.flatten() {
            apply_audio(&mut parsed, reading);
        }
        parsed
    }
}

impl TranscriptState {
    fn on_event(&mut self, event: &SseEvent<'_>) {
        let Some(wire) = parse_object::<WireTranscriptEvent>(event.data) else {
            return;
        };
        let kind = match &wire.kind {
            Some(Value::String(kind)) => kind.as_str(),
            _ => std::str::from_utf8(event.event).unwrap_or(""),
        };
        match kind {
            "transcript.text.delta" => {
                self.saw_delta = true;
                push_str(&mut self.output_text, wire.delta.as_ref());
            }
            // Diarized segments repeat what deltas already said, when there are deltas.
            "transcript.text.segment" if !self.saw_delta => {
                push_str(&mut self.output_text, wire.text.as_ref());
            }
            "transcript.text.done" => {
                if self.output_text.is_empty() {
                    push_str(&mut self.output_text, wire.text.as_ref());
                }
                self.done = Some(wire.usage.as_ref().and_then(transcription_usage));
            }
            _ => {}
        }
    }
}

/// A body that never carries usage: speech answered as raw audio (`stream_format: "audio"`, the
/// default). Reads nothing and keeps nothing.
#[derive(Debug, Default)]
pub struct NoUsage;

impl UsageParser for NoUsage {
    fn feed(&mut self, _chunk: &[u8]) {}

    fn finish(&mut self) -> ParsedUsage {
        ParsedUsage::default()
    }
}

/// One speech stream event as meter reads it; the base64 `audio` is skipped unread.
#[derive(Debug, Default, Deserialize)]
struct WireSpeechEvent {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
}

const SPEECH_DONE: &[u8] = b"speech.audio.done";

/// Speech streamed as events (`stream_format: "sse"`, `gpt-4o-mini-tts`): `speech.audio.delta`
/// events with base64 audio, then `speech.audio.done` with the usage.
#[derive(Default)]
pub struct SpeechStream {
    framer: SseFramer,
    /// The reading of the last `speech.audio.done` event, once one was seen.
    done: Option<Option<Usage>>,
}

impl std::fmt::Debug for SpeechStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeechStream")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

fn on_speech_event(done: &mut Option<Option<Usage>>, event: &SseEvent<'_>) {
    if !event.event.is_empty() && event.event != SPEECH_DONE {
        return;
    }
    let Some(wire) = parse_object::<WireSpeechEvent>(event.data) else {
        return;
    };
    let is_done = match &wire.kind {
        Some(Value::String(kind)) => kind.as_bytes() == SPEECH_DONE,
        _ => event.event == SPEECH_DONE,
    };
    if is_done {
        *done = Some(wire.usage.as_ref().and_then(speech_usage));
    }
}

impl UsageParser for SpeechStream {
    fn feed(&mut self, chunk: &[u8]) {
        let done = &mut self.done;
        self.framer
            .feed(chunk, |event| on_speech_event(done, event));
    }

    fn finish(&mut self) -> ParsedUsage {
        let done = &mut self.done;
        self.framer.finish(|event| on_speech_event(done, event));
        let usage = self.done.take().flatten();
        ParsedUsage {
            usage,
            quantities: Quantities {
                audio_output_tokens: usage.map_or(0, |usage| usage.output_tokens),
                ..Quantities::default()
            },
            ..ParsedUsage::default()
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "test failures should panic")]
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

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// Feeds `body` whole, split at every offset and byte by byte; all must agree.
    fn run_all(make: &dyn Fn() -> Box<dyn UsageParser>, body: &[u8]) -> ParsedUsage {
        let run = |chunks: &[&[u8]]| {
            let mut parser = make();
            for chunk in chunks {
                parser.feed(chunk);
            }
            parser.finish()
        };
        let whole = run(&[body]);
        for split in 0..=body.len() {
            let (head, tail) = body.split_at(split);
            assert_eq!(run(&[head, tail]), whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(run(&bytes), whole, "single bytes");
        whole
    }

    #[test]
    fn responses_usage_mapping() {
        let cases = [
            (
                r#"{"input_tokens":3018,"input_tokens_details":{"cached_tokens":2816},
                   "output_tokens":1142,"output_tokens_details":{"reasoning_tokens":960},
                   "total_tokens":4160}"#,
                Some(usage(202, 2816, 1142, 960)),
            ),
            (
                r#"{"input_tokens":10,"output_tokens":5}"#,
                Some(usage(10, 0, 5, 0)),
            ),
            (
                r#"{"input_tokens":10,"output_tokens":5,"input_tokens_details":null}"#,
                Some(usage(10, 0, 5, 0)),
            ),
            (
                r#"{"input_tokens":4,"input_tokens_details":{"cached_tokens":9},"output_tokens":1}"#,
                Some(usage(0, 9, 1, 0)),
            ),
            (r#"{"output_tokens":5}"#, Some(usage(0, 0, 5, 0))),
            (r#"{"total_tokens":15}"#, None),
            (r#"{"input_tokens":-1,"output_tokens":5}"#, None),
            (r#"{"input_tokens":"10","output_tokens":5}"#, None),
            (r#"{"input_tokens":1.5,"output_tokens":5}"#, None),
            (
                r#"{"input_tokens":10,"output_tokens":5,"input_tokens_details":7}"#,
                None,
            ),
            (r#"[10,5]"#, None),
            (r#"null"#, None),
        ];
        for (text, expected) in cases {
            assert_eq!(responses_usage(&json(text)), expected, "{text}");
        }
    }

    #[test]
    fn other_usage_mappings() {
        assert_eq!(
            completion_usage(&json(
                r#"{"prompt_tokens":40,"completion_tokens":9,"prompt_tokens_details":{"cached_tokens":32}}"#
            )),
            Some(usage(8, 32, 9, 0))
        );
        assert_eq!(
            embeddings_usage(&json(r#"{"prompt_tokens":17,"total_tokens":17}"#)),
            Some(usage(17, 0, 0, 0))
        );
        assert_eq!(embeddings_usage(&json(r#"{"total_tokens":17}"#)), None);
        assert_eq!(
            images_usage(&json(
                r#"{"input_tokens":344,"input_tokens_details":{"image_tokens":323,"text_tokens":21},"output_tokens":1056,"total_tokens":1400}"#
            )),
            Some(usage(344, 0, 1056, 0))
        );
        assert_eq!(
            speech_usage(&json(
                r#"{"input_tokens":12,"output_tokens":186,"total_tokens":198}"#
            )),
            Some(usage(12, 0, 186, 0))
        );
    }

    #[test]
    fn transcription_usage_variants() {
        let read = |text: &str| {
            transcription_usage(&json(text))
                .map(|r| (r.usage, r.audio_input_tokens, r.audio_millis))
        };
        assert_eq!(
            read(
                r#"{"type":"tokens","input_tokens":145,"input_token_details":{"text_tokens":12,"audio_tokens":133},"output_tokens":58,"total_tokens":203}"#
            ),
            Some((usage(145, 0, 58, 0), 133, 0))
        );
        // The streamed `done` example omits `type`.
        assert_eq!(
            read(
                r#"{"input_tokens":14,"input_token_details":{"text_tokens":0,"audio_tokens":14},"output_tokens":45,"total_tokens":59}"#
            ),
            Some((usage(14, 0, 45, 0), 14, 0))
        );
        assert_eq!(
            read(r#"{"type":"duration","seconds":9}"#),
            Some((Usage::default(), 0, 9000))
        );
        assert_eq!(
            read(r#"{"type":"duration","seconds":27.4}"#),
            Some((Usage::default(), 0, 27400))
        );
        assert_eq!(
            read(r#"{"type":"duration","duration":1.25}"#),
            Some((Usage::default(), 0, 1250))
        );
        assert_eq!(read(r#"{"seconds":3}"#), Some((Usage::default(), 0, 3000)));
        assert_eq!(read(r#"{"type":"duration","seconds":-3}"#), None);
        assert_eq!(read(r#"{"type":"duration"}"#), None);
        assert_eq!(read(r#"{"type":"tokens"}"#), None);
        assert_eq!(read(r#"{}"#), None);
    }

    fn scan(wanted: &'static [&'static str], count_key: Option<&'static str>, body: &[u8]) {
        // Every chunking must agree with the whole body.
        let result = |chunks: &[&[u8]]| {
            let mut scanner = TopLevelScanner::new(wanted, count_key);
            for chunk in chunks {
                scanner.feed(chunk);
            }
            scanner.finish().map(|s| (s.values, s.count))
        };
        let whole = result(&[body]);
        for split in 0..=body.len() {
            let (head, tail) = body.split_at(split);
            assert_eq!(result(&[head, tail]), whole, "split at {split}");
        }
    }

    fn scanned(
        wanted: &'static [&'static str],
        count_key: Option<&'static str>,
        body: &str,
    ) -> Option<(Vec<Option<String>>, Option<u64>)> {
        scan(wanted, count_key, body.as_bytes());
        let mut scanner = TopLevelScanner::new(wanted, count_key);
        scanner.feed(body.as_bytes());
        scanner.finish().map(|s| {
            let values = s
                .values
                .into_iter()
                .map(|v| v.map(|v| String::from_utf8(v).unwrap().trim_end().to_owned()))
                .collect();
            (values, s.count)
        })
    }

    #[test]
    fn scanner_keeps_wanted_values_and_counts() {
        const KEYS: &[&str] = &["usage", "size"];
        let body = r#" {"created":1,"data":[{"b64_json":"a\"b\\"},{"url":"x","n":[1,[2,{}]]}, "s"],
            "size" : "1024x1024" , "usage":{"input_tokens":5,"nested":{"usage":1}},"x":null} "#;
        assert_eq!(
            scanned(KEYS, Some("data"), body),
            Some((
                vec![
                    Some(r#"{"input_tokens":5,"nested":{"usage":1}}"#.to_owned()),
                    Some(r#""1024x1024""#.to_owned()),
                ],
                Some(3)
            ))
        );
        // Empty arrays, missing keys, nested keys named like wanted ones.
        assert_eq!(
            scanned(KEYS, Some("data"), r#"{"data":[ ],"a":{"size":"no"}}"#),
            Some((vec![None, None], Some(0)))
        );
        assert_eq!(
            scanned(KEYS, Some("data"), r#"{"data":null,"size":7}"#),
            Some((vec![None, Some("7".to_owned())], None))
        );
        assert_eq!(scanned(KEYS, None, "{}"), Some((vec![None, None], None)));
        // Escaped quotes in keys and values do not end them.
        assert_eq!(
            scanned(KEYS, None, r#"{"si\"ze":"a","size":"b\"}\\"}"#),
            Some((vec![None, Some(r#""b\"}\\""#.to_owned())], None))
        );
    }

    #[test]
    fn scanner_rejects_what_is_not_one_object() {
        const KEYS: &[&str] = &["usage"];
        for body in [
            "",
            "   ",
            "[1,2]",
            r#"{"usage":{"a":1}"#,
            r#"{"usage":{"a":1}} x"#,
            r#"{"usage":{"a":1}]}"#,
            r#"{"usage" 1}"#,
            r#"{"usage":}"#,
            r#"{usage:1}"#,
            "<html>502 Bad Gateway</html>",
            "\u{feff}{}",
        ] {
            assert_eq!(scanned(KEYS, Some("data"), body), None, "{body}");
        }
    }

    #[test]
    fn scanner_bounds_what_it_keeps() {
        const KEYS: &[&str] = &["usage"];
        let big = format!(r#"{{"usage":"{}"}}"#, "x".repeat(MAX_CAPTURE_BYTES));
        let mut scanner = TopLevelScanner::new(KEYS, None);
        scanner.feed(big.as_bytes());
        assert_eq!(scanner.finish().map(|s| s.values), Some(vec![None]));
        let long_key = format!(r#"{{"{}":1,"usage":2}}"#, "k".repeat(10 * MAX_KEY_BYTES));
        let mut scanner = TopLevelScanner::new(KEYS, None);
        scanner.feed(long_key.as_bytes());
        assert_eq!(
            scanner.finish().map(|s| s.values),
            Some(vec![Some(b"2".to_vec())])
        );
    }

    #[test]
    fn huge_image_and_embedding_bodies_stream_through() {
        // 50 MB of base64 in three images, fed in 64 KiB chunks.
        let image = "A".repeat(50 * 1024 * 1024 / 3);
        let body = format!(
            r#"{{"created":1757590412,"data":[{{"b64_json":"{image}"}},{{"b64_json":"{image}"}},{{"b64_json":"{image}"}}],"quality":"high","size":"1536x1024","usage":{{"input_tokens":21,"input_tokens_details":{{"image_tokens":0,"text_tokens":21}},"output_tokens":18624,"total_tokens":18645}}}}"#
        );
        let mut parser = ImagesJson::default();
        for chunk in body.as_bytes().chunks(64 * 1024) {
            parser.feed(chunk);
        }
        let parsed = parser.finish();
        assert_eq!(parsed.usage, Some(usage(21, 0, 18624, 0)));
        assert_eq!(parsed.quantities.images, 3);
        assert_eq!(parsed.quantities.image_size.as_deref(), Some("1536x1024"));

        // 80 MB of floats: past any buffer cap, still read.
        let vector = vec!["-0.0069292835"; 3072].join(",");
        let element = format!(r#"{{"object":"embedding","index":0,"embedding":[{vector}]}}"#);
        let mut parser = EmbeddingsJson::default();
        parser.feed(br#"{"object":"list","data":["#);
        let mut fed = 0;
        while fed < 80 * 1024 * 1024 {
            parser.feed(element.as_bytes());
            parser.feed(b",");
            fed += element.len() + 1;
        }
        parser.feed(element.as_bytes());
        parser.feed(br#"],"model":"text-embedding-3-large","usage":{"prompt_tokens":2048,"total_tokens":2048}}"#);
        let parsed = parser.finish();
        assert_eq!(parsed.usage, Some(usage(2048, 0, 0, 0)));
        assert_eq!(parsed.model.as_deref(), Some("text-embedding-3-large"));
    }

    #[test]
    fn buffered_bodies_respect_their_limit() {
        let body = br#"{"id":"resp_1","object":"response","model":"m","usage":{"input_tokens":3,"output_tokens":4}}"#;
        let read = |limit: usize| {
            let mut parser = ResponsesJson::with_limit(limit);
            for chunk in body.chunks(5) {
                parser.feed(chunk);
            }
            parser.finish().usage
        };
        assert_eq!(read(body.len()), Some(usage(3, 0, 4, 0)));
        assert_eq!(read(body.len() - 1), None);
    }

    #[test]
    fn junk_never_reads_usage() {
        let makers: Vec<Box<dyn Fn() -> Box<dyn UsageParser>>> = vec![
            Box::new(|| Box::new(ResponsesJson::default())),
            Box::new(|| Box::new(ResponsesStream::default())),
            Box::new(|| Box::new(CompletionsJson::default())),
            Box::new(|| Box::new(CompletionsStream::default())),
            Box::new(|| Box::new(EmbeddingsJson::default())),
            Box::new(|| Box::new(ImagesJson::default())),
            Box::new(|| Box::new(ImagesStream::default())),
            Box::new(|| Box::new(TranscriptionJson::default())),
            Box::new(|| Box::new(TranscriptionStream::default())),
            Box::new(|| Box::new(SpeechStream::default())),
            Box::new(|| Box::new(NoUsage)),
        ];
        for junk in [
            &b""[..],
            b"not json",
            b"\xFF\xFE{\"usage\":{\"input_tokens\":1}}",
            b"[{\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}]",
            b"{\"usage\":{\"input_tokens\":1,\"output_tokens\":1}",
            b"data: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":1\n\n",
            b"data: [DONE]\n\n",
            b"{\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}",
        ] {
            for make in &makers {
                let parsed = run_all(make.as_ref(), junk);
                assert_eq!(parsed.usage, None, "{}", String::from_utf8_lossy(junk));
            }
        }
    }

    #[test]
    fn responses_stream_events_by_type_or_name() {
        let parse = |body: &str| run_all(&|| Box::new(ResponsesStream::default()), body.as_bytes());
        // Data-only framing (no `event:` lines) is read by the data's `type`.
        let parsed = parse(
            "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"model\":\"m\",\"usage\":null}}\n\n\
             data: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n\
             data: {\"type\":\"response.output_item.done\",\"item\":{\"type\":\"web_search_call\"}}\n\n\
             data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"model\":\"m\",\"usage\":{\"input_tokens\":5,\"output_tokens\":2}}}\n\n",
        );
        assert_eq!(parsed.usage, Some(usage(5, 0, 2, 0)));
        assert_eq!(parsed.request_id.as_deref(), Some("resp_1"));
        assert_eq!(parsed.output_text.text, "Hi");
        // No terminal `output` array: the done items stand in.
        assert_eq!(parsed.quantities.web_search_calls, 1);
        // An event named but typeless is read by its name; unknown names are skipped.
        let parsed = parse(
            "event: response.completed\ndata: {\"response\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":2},\"output\":[]}}\n\n\
             event: response.audio.delta\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":9}}}\n\n",
        );
        assert_eq!(parsed.usage, Some(usage(5, 0, 2, 0)));
        // A failed response with null usage reads as no report.
        let parsed = parse(
            "data: {\"type\":\"response.failed\",\"response\":{\"id\":\"resp_2\",\"usage\":null,\"error\":{\"code\":\"server_error\",\"message\":\"x\"}}}\n\n",
        );
        assert_eq!(parsed.usage, None);
        assert_eq!(parsed.request_id.as_deref(), Some("resp_2"));
    }

    #[test]
    fn images_stream_sums_completed_images() {
        let parse = |body: &str| run_all(&|| Box::new(ImagesStream::default()), body.as_bytes());
        let completed = |n: u64| {
            format!(
                "data: {{\"type\":\"image_generation.completed\",\"b64_json\":\"QUJD\",\"size\":\"1024x1024\",\"quality\":\"low\",\"usage\":{{\"input_tokens\":{n},\"output_tokens\":272,\"total_tokens\":{}}}}}\n\n",
                n + 272
            )
        };
        let parsed = parse(&format!("{}{}", completed(16), completed(16)));
        assert_eq!(parsed.usage, Some(usage(32, 0, 544, 0)));
        assert_eq!(parsed.quantities.images, 2);
        assert_eq!(parsed.quantities.image_quality.as_deref(), Some("low"));
        // One image without a readable usage spoils the sum.
        let parsed = parse(&format!(
            "{}data: {{\"type\":\"image_edit.completed\",\"usage\":null}}\n\n",
            completed(16)
        ));
        assert_eq!(parsed.usage, None);
        assert_eq!(parsed.quantities.images, 2);
    }

    #[test]
    fn transcription_bodies() {
        let parse =
            |body: &str| run_all(&|| Box::new(TranscriptionJson::default()), body.as_bytes());
        let parsed = parse("Hello there.\n");
        assert_eq!(parsed.usage, None);
        assert_eq!(parsed.output_text.text, "Hello there.\n");
        // `verbose_json` without a usage object still says how long the audio was.
        let parsed =
            parse(r#"{"task":"translate","language":"english","duration":8.47,"text":"Hi."}"#);
        assert_eq!(parsed.usage, None);
        assert_eq!(parsed.quantities.audio_millis, 8470);
        let parsed =
            parse(r#"{"text":"Hi.","usage":{"type":"duration","seconds":9},"duration":8.47}"#);
        assert_eq!(parsed.usage, Some(Usage::default()));
        assert_eq!(parsed.quantities.audio_millis, 9000);
        // An unreadable usage object is no report, and its duration is not guessed.
        let parsed = parse(r#"{"text":"Hi.","usage":{"type":"tokens"},"duration":8.47}"#);
        assert_eq!(parsed.usage, None);
        assert_eq!(parsed.quantities.audio_millis, 0);
    }

    #[test]
    fn output_text_is_bounded() {
        let delta = "x".repeat(100 * 1024);
        let event =
            format!("data: {{\"type\":\"response.output_text.delta\",\"delta\":\"{delta}\"}}\n\n");
        let mut parser = ResponsesStream::default();
        for _ in 0..4 {
            parser.feed(event.as_bytes());
        }
        let parsed = parser.finish();
        assert_eq!(parsed.output_text.text.len(), OutputText::CAP);
        assert_eq!(
            parsed.output_text.overflow_bytes,
            (4 * delta.len() - OutputText::CAP) as u64
        );
    }
}
