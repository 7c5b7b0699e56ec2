//! Usage parsers for the OpenAI chat-completions format (`/v1/chat/completions`), one JSON body or
//! an SSE stream of chunks, as spoken by OpenAI and by every provider that copies it. They read
//! `id`, `model`, `usage` and the generated text, never keep more than one bounded body or event,
//! and never fail: an unreadable report is `usage: None`, never zero tokens.
//!
//! The same field means different things on different providers, so each parser is built for one
//! [`Flavor`]. Buckets per flavor (SPEC §4; "part of" buckets never add to their parents):
//!
//! | flavor | `input_tokens` | `cache_read_tokens` | `cache_write_tokens` | `output_tokens` | `reasoning_tokens` |
//! |---|---|---|---|---|---|
//! | OpenAI, Azure, Groq, vLLM, Anthropic, Vertex, Ollama, Generic | `prompt_tokens` - `prompt_tokens_details.cached_tokens` | `cached_tokens` | 0 | `completion_tokens` (reasoning included) | `completion_tokens_details.reasoning_tokens` |
//! | xAI | `prompt_tokens` - `cached_tokens` | `cached_tokens` | 0 | `completion_tokens` + `reasoning_tokens` (xAI leaves reasoning out) | `reasoning_tokens` |
//! | OpenRouter | `prompt_tokens` - `cached_tokens` - `cache_write_tokens` | `cached_tokens` | `prompt_tokens_details.cache_write_tokens` | `completion_tokens` (reasoning included) | `reasoning_tokens` |
//! | DeepSeek | `prompt_cache_miss_tokens` (else `prompt_tokens` - hit) | `prompt_cache_hit_tokens` (else `cached_tokens`) | 0 | `completion_tokens` (reasoning included) | `reasoning_tokens` |
//! | Mistral | `prompt_tokens` - cached | `prompt_tokens_details.cached_tokens`, `prompt_token_details.cached_tokens`, or `num_cached_tokens` (in `usage` or beside it) | 0 | `completion_tokens` | `reasoning_tokens` |
//! | Gemini | `prompt_tokens` - `cached_tokens` | `cached_tokens` | 0 | `completion_tokens` + thoughts, where thoughts = `total_tokens` - `prompt_tokens` - `completion_tokens` | `reasoning_tokens` if sent, else thoughts |
//!
//! Every flavor: `prompt_tokens_details.audio_tokens` and `completion_tokens_details.audio_tokens`
//! stay inside input and output and are also copied to `Quantities::audio_input_tokens` /
//! `audio_output_tokens`, so audio can be priced at its own rate. Predicted-output tokens
//! (`accepted_`/`rejected_prediction_tokens`) are billed as output and stay inside
//! `completion_tokens`. `total_tokens` is read only to reconcile xAI and Gemini (below).
//!
//! Sources, and the real bodies checked where they could be found:
//!
//! - OpenAI, <https://platform.openai.com/docs/api-reference/chat/object>: `prompt_tokens`
//!   includes `cached_tokens`; `completion_tokens` includes `reasoning_tokens`. Streams report
//!   usage only with `stream_options.include_usage`, in a last chunk with `"choices": []`; the
//!   other chunks carry `"usage": null`.
//! - Azure OpenAI, <https://learn.microsoft.com/azure/foundry/openai/concepts/content-streaming>:
//!   OpenAI's shape. Streams open with a chunk whose `id`, `model` and `object` are empty and
//!   which carries `prompt_filter_results`; later chunks carry `content_filter_results`. Both are
//!   ignored.
//! - xAI, <https://docs.x.ai/docs/guides/reasoning> and
//!   <https://docs.cloud.google.com/vertex-ai/generative-ai/docs/partner-models/grok/capabilities/reasoning>:
//!   "the reasoning token count is outputted in the `reasoning_tokens` field, separated from the
//!   `completion_tokens`" (real bodies: 288 + 25 + 532 reasoning = 845 `total_tokens`). Should xAI
//!   ever fold reasoning in, `total_tokens` = prompt + completion shows it and nothing is added.
//!   Cached tokens (<https://docs.x.ai/developers/advanced-api-usage/prompt-caching/usage-and-pricing>)
//!   are part of `prompt_tokens`. `num_sources_used` (Live Search,
//!   <https://docs.x.ai/docs/guides/live-search>: "$25 per 1,000 sources used") goes to
//!   `Quantities::web_search_calls`, one per source. `cost_in_usd_ticks`
//!   (<https://docs.x.ai/developers/cost-tracking>: 1 USD = 10^10 ticks, the billed amount after
//!   discounts) goes to `reported_cost_nanos` (ticks / 10, rounded half up).
//! - OpenRouter, <https://openrouter.ai/docs/use-cases/usage-accounting>: usage is always sent (the
//!   last SSE chunk, or the body). `prompt_tokens` counts the whole prompt whatever the upstream,
//!   cache reads (`cached_tokens`) and writes (`cache_write_tokens`) included. `usage.cost` is
//!   the USD credits charged; it goes to `reported_cost_nanos`, read from the number's decimal
//!   digits rather than float arithmetic. `cost_details.upstream_inference_cost` is what the
//!   upstream charged; it is added only when `is_byok` is true, because a BYOK request is billed
//!   twice (OpenRouter's fee in `cost`, the upstream on the user's own key). The top-level
//!   `provider` (e.g. `"Anthropic"`) goes to `upstream_provider`. Streams carry
//!   `: OPENROUTER PROCESSING` comments (dropped by the framer) and bodies may open with
//!   whitespace keep-alives (skipped by the JSON reader).
//! - Groq, <https://console.groq.com/docs/api-reference#chat-create>: non-streaming usage adds
//!   timing fields (`queue_time`, `prompt_time`, ...), ignored. Streams put usage in
//!   `x_groq.usage` on the finishing chunk and, with `include_usage`, also in `usage` on that chunk
//!   and on a last `"choices": []` chunk: within a chunk `usage` wins over `x_groq.usage`, and
//!   across chunks the last report wins, so it is counted once. Cached tokens are in
//!   `prompt_tokens_details.cached_tokens`.
//! - Mistral, <https://docs.mistral.ai/studio-api/conversations/advanced/prompt-caching>: cached
//!   tokens are part of `prompt_tokens` (billed at 10%), reported in
//!   `usage.prompt_tokens_details.cached_tokens`; the API schema also has `num_cached_tokens` and a
//!   singular `prompt_token_details`, all accepted. Streams send usage in the final chunk (beside
//!   the last delta and `finish_reason`) without being asked.
//! - DeepSeek, <https://api-docs.deepseek.com/guides/kv_cache>: `prompt_cache_hit_tokens` +
//!   `prompt_cache_miss_tokens` = `prompt_tokens`; deepseek-reasoner's `reasoning_tokens` are part
//!   of `completion_tokens` (real body: 92 completion, 81 reasoning, short answer). Streams send
//!   usage in the finishing chunk without being asked.
//! - vLLM, <https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html>: OpenAI's shape;
//!   `prompt_tokens_details` is `null` unless `--enable-prompt-tokens-details` is set (then it has
//!   the prefix-cache hits, <https://github.com/vllm-project/vllm/pull/18149>). With
//!   `stream_options.continuous_usage_stats` every chunk carries the running totals
//!   (<https://github.com/vllm-project/vllm/pull/6652>).
//! - Gemini's OpenAI endpoint (`/v1beta/openai/chat/completions`,
//!   <https://ai.google.dev/gemini-api/docs/openai>): real bodies show `completion_tokens` without
//!   the thinking tokens and no `completion_tokens_details`, while `total_tokens` includes them
//!   (`{"completion_tokens":2,"prompt_tokens":17,"total_tokens":49}`), so the difference is
//!   counted as output and as reasoning. Streams carry running usage in every chunk.
//! - Anthropic's OpenAI endpoint (<https://platform.claude.com/docs/en/api/openai-sdk>):
//!   `prompt_tokens`, `completion_tokens` (thinking included, as in Anthropic's `output_tokens`)
//!   and `total_tokens`; the page steers prompt caching to the native API. Read as OpenAI; no
//!   real body was found to confirm the detail objects.
//!
//! A detail object may be absent or `null` and any count absent or `null`; those read as 0. A
//! `usage` object with neither `prompt_tokens` nor `completion_tokens`, or with a token count of
//! the wrong type, is unreadable (`None`): a guessed zero would misprice the call.
//!
//! Streams: the last non-null usage report decides. It is final when its chunk ends the answer
//! (`"choices": []`, no `choices`, or a `finish_reason`) or when `data: [DONE]` follows; a running
//! total from a chunk mid-answer (vLLM `continuous_usage_stats`, Gemini, old xAI streams) that
//! the stream never completed is only `partial`. A stream cut after its final usage chunk still
//! reports it.
//!
//! Text: `content` (strings, or the `text`/`thinking` of content parts), `reasoning_content`,
//! `reasoning`, `refusal` and tool-call `function.arguments` of every choice go to `output_text`.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::sse::SseFramer;
use super::{BoundedBody, Flavor, OutputText, ParsedUsage, Quantities, Usage, UsageParser};

/// Default cap on a buffered non-streaming body; a larger body yields `usage: None`.
pub const MAX_JSON_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Nano-dollars per xAI tick (1 USD = 10^10 ticks = 10^9 nano-dollars).
const XAI_TICKS_PER_NANO: u64 = 10;

// ---------------------------------------------------------------------------------------------
// Wire types. Chunks are read into borrowed structs: strings without escapes are not copied, and
// fields meter does not read are skipped without being built. A chunk these types cannot take
// (an odd shape somewhere) is read again as a `serde_json::Value`, so it costs speed, not data.

/// A JSON value read only for the text it may hold: a string, or the `text`/`thinking` strings of
/// content parts. Any other value is accepted and ignored, so an odd type in one field never
/// loses the rest of the chunk.
#[derive(Debug, Default)]
pub(crate) enum Text<'a> {
    Str(Cow<'a, str>),
    Parts(Vec<Text<'a>>),
    #[default]
    Other,
}

impl Text<'_> {
    /// The value when it is a string.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Text::Str(text) => Some(text),
            _ => None,
        }
    }

    /// Appends every string held to `out`.
    pub(crate) fn push_to(&self, out: &mut OutputText) {
        match self {
            Text::Str(text) => {
                if !text.is_empty() {
                    out.push(text);
                }
            }
            Text::Parts(parts) => parts.iter().for_each(|part| part.push_to(out)),
            Text::Other => {}
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor(PhantomData))
    }
}

struct TextVisitor<'a>(PhantomData<Text<'a>>);

impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
    type Value = Text<'a>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Text::Str(Cow::Borrowed(value)))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Text::Str(Cow::Owned(value.to_owned())))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
        Ok(Text::Str(Cow::Owned(value)))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Text::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Text::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Text::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Text::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Text::Other)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Text::Other)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        Text::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut parts = Vec::new();
        while let Some(part) = seq.next_element::<Text<'a>>()? {
            if !matches!(part, Text::Other) {
                parts.push(part);
            }
        }
        Ok(if parts.is_empty() {
            Text::Other
        } else {
            Text::Parts(parts)
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut parts = Vec::new();
        while let Some(key) = map.next_key::<PartKey>()? {
            match key {
                PartKey::Text => {
                    let part = map.next_value::<Text<'a>>()?;
                    if !matches!(part, Text::Other) {
                        parts.push(part);
                    }
                }
                PartKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(if parts.is_empty() {
            Text::Other
        } else {
            Text::Parts(parts)
        })
    }
}

/// The keys of a content part whose values are generated text.
enum PartKey {
    Text,
    Other,
}

impl<'de> Deserialize<'de> for PartKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = PartKey;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<PartKey, E> {
                Ok(match key {
                    "text" | "thinking" => PartKey::Text,
                    _ => PartKey::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// A `chat.completion` object or a `chat.completion.chunk`.
#[derive(Deserialize)]
struct WireChunk<'a> {
    #[serde(default, borrow)]
    id: Option<Text<'a>>,
    #[serde(default, borrow)]
    model: Option<Text<'a>>,
    /// OpenRouter: the upstream that served the call.
    #[serde(default, borrow)]
    provider: Option<Text<'a>>,
    #[serde(default, borrow)]
    choices: Option<Vec<WireChoice<'a>>>,
    /// Borrowed as raw JSON and read only when present and not `null` (once per stream on
    /// most providers): straight into [`WireUsage`], never through a `Value`.
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    /// Groq: `x_groq.usage` on the finishing chunk of a stream.
    #[serde(default, borrow)]
    x_groq: Option<WireXGroq<'a>>,
    /// Mistral: the cached count beside `usage` rather than in it.
    #[serde(default)]
    num_cached_tokens: Option<Value>,
}

#[derive(Deserialize)]
struct WireChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<WireMessage<'a>>,
    #[serde(default, borrow)]
    message: Option<WireMessage<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(default, borrow)]
    content: Option<Text<'a>>,
    /// DeepSeek, xAI, vLLM, Groq (`reasoning_format: parsed` uses `reasoning`).
    #[serde(default, borrow)]
    reasoning_content: Option<Text<'a>>,
    /// OpenRouter, Groq.
    #[serde(default, borrow)]
    reasoning: Option<Text<'a>>,
    #[serde(default, borrow)]
    refusal: Option<Text<'a>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<WireToolCall<'a>>>,
}

#[derive(Deserialize)]
struct WireToolCall<'a> {
    #[serde(default, borrow)]
    function: Option<WireFunction<'a>>,
}

#[derive(Deserialize)]
struct WireFunction<'a> {
    #[serde(default, borrow)]
    arguments: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct WireXGroq<'a> {
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
}

impl WireMessage<'_> {
    fn push_to(&self, out: &mut OutputText) {
        for text in [
            &self.content,
            &self.reasoning_content,
            &self.reasoning,
            &self.refusal,
        ]
        .into_iter()
        .flatten()
        {
            text.push_to(out);
        }
        for call in self.tool_calls.iter().flatten() {
            if let Some(arguments) = call.function.as_ref().and_then(|f| f.arguments.as_ref()) {
                arguments.push_to(out);
            }
        }
    }
}

/// The `usage` object. Token counts are strict (a wrong type makes the report unreadable);
/// money and quantities are read leniently from raw values.
#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<WirePromptDetails>,
    /// Mistral's singular spelling.
    #[serde(default)]
    prompt_token_details: Option<WirePromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<WireCompletionDetails>,
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
    #[serde(default)]
    prompt_cache_miss_tokens: Option<u64>,
    #[serde(default)]
    num_cached_tokens: Option<u64>,
    #[serde(default)]
    num_sources_used: Option<Value>,
    #[serde(default)]
    cost: Option<Value>,
    #[serde(default)]
    cost_details: Option<Value>,
    #[serde(default)]
    is_byok: Option<Value>,
    #[serde(default)]
    cost_in_usd_ticks: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct WirePromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    cache_write_tokens: Option<u64>,
    #[serde(default)]
    audio_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct WireCompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
    #[serde(default)]
    audio_tokens: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// Bucket mapping.

/// What one usage object says, mapped onto meter's buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UsageReport {
    usage: Usage,
    cost_nanos: Option<i64>,
    quantities: Quantities,
}

/// Reads a `usage` value per the module table: `None` when it is not an object, lacks both counts
/// or has a token count of the wrong type.
fn read_usage(
    flavor: Flavor,
    value: &Value,
    beside_usage_cached: Option<&Value>,
) -> Option<UsageReport> {
    if !value.is_object() {
        return None;
    }
    let wire = WireUsage::deserialize(value).ok()?;
    report_from_wire(flavor, wire, beside_usage_cached)
}

/// [`read_usage`] of a `usage` borrowed as raw JSON.
fn read_raw_usage(
    flavor: Flavor,
    raw: &RawValue,
    beside_usage_cached: Option<&Value>,
) -> Option<UsageReport> {
    if !raw.get().starts_with('{') {
        return None;
    }
    let wire = serde_json::from_str::<WireUsage>(raw.get()).ok()?;
    report_from_wire(flavor, wire, beside_usage_cached)
}

fn report_from_wire(
    flavor: Flavor,
    wire: WireUsage,
    beside_usage_cached: Option<&Value>,
) -> Option<UsageReport> {
    if wire.prompt_tokens.is_none() && wire.completion_tokens.is_none() {
        return None;
    }
    let prompt = wire.prompt_tokens.unwrap_or(0);
    let completion = wire.completion_tokens.unwrap_or(0);
    let details = wire.prompt_tokens_details.as_ref();
    let cached = details.and_then(|d| d.cached_tokens);
    let reasoning = wire
        .completion_tokens_details
        .as_ref()
        .and_then(|d| d.reasoning_tokens)
        .unwrap_or(0);

    let mut usage = Usage {
        output_tokens: completion,
        reasoning_tokens: reasoning,
        ..Usage::default()
    };
    match flavor {
        Flavor::DeepSeek => {
            let hit = wire.prompt_cache_hit_tokens.or(cached).unwrap_or(0);
            usage.cache_read_tokens = hit;
            usage.input_tokens = wire
                .prompt_cache_miss_tokens
                .unwrap_or_else(|| prompt.saturating_sub(hit));
        }
        Flavor::Mistral => {
            let cached = cached
                .or_else(|| {
                    wire.prompt_token_details
                        .as_ref()
                        .and_then(|d| d.cached_tokens)
                })
                .or(wire.num_cached_tokens)
                .or_else(|| beside_usage_cached.and_then(Value::as_u64))
                .unwrap_or(0);
            usage.cache_read_tokens = cached;
            usage.input_tokens = prompt.saturating_sub(cached);
        }
        Flavor::OpenRouter => {
            let cached = cached.unwrap_or(0);
            let written = details.and_then(|d| d.cache_write_tokens).unwrap_or(0);
            usage.cache_read_tokens = cached;
            usage.cache_write_tokens = written;
            usage.input_tokens = prompt.saturating_sub(cached).saturating_sub(written);
        }
        _ => {
            let cached = cached.unwrap_or(0);
            usage.cache_read_tokens = cached;
            usage.input_tokens = prompt.saturating_sub(cached);
        }
    }
    match flavor {
        Flavor::Xai => {
            // Reasoning is left out of `completion_tokens`, unless the total says otherwise.
            let folded_in = reasoning > 0 && wire.total_tokens == prompt.checked_add(completion);
            if !folded_in {
                usage.output_tokens = completion.saturating_add(reasoning);
            }
        }
        Flavor::Gemini => {
            let unreported = wire
                .total_tokens
                .map(|total| total.saturating_sub(prompt.saturating_add(completion)))
                .unwrap_or(0);
            usage.output_tokens = completion.saturating_add(unreported);
            if reasoning == 0 {
                usage.reasoning_tokens = unreported;
            }
        }
        _ => {}
    }

    let quantities = Quantities {
        audio_input_tokens: details.and_then(|d| d.audio_tokens).unwrap_or(0),
        audio_output_tokens: wire
            .completion_tokens_details
            .as_ref()
            .and_then(|d| d.audio_tokens)
            .unwrap_or(0),
        web_search_calls: match flavor {
            Flavor::Xai => wire
                .num_sources_used
                .as_ref()
                .and_then(Value::as_u64)
                .unwrap_or(0),
            _ => 0,
        },
        ..Quantities::default()
    };
    let cost_nanos = match flavor {
        Flavor::OpenRouter => openrouter_cost_nanos(&wire),
        Flavor::Xai => wire.cost_in_usd_ticks.as_ref().and_then(xai_ticks_to_nanos),
        _ => None,
    };
    Some(UsageReport {
        usage,
        cost_nanos,
        quantities,
    })
}

/// OpenRouter's `cost`, plus the upstream's bill for BYOK requests.
fn openrouter_cost_nanos(wire: &WireUsage) -> Option<i64> {
    let cost = usd_to_nanos(wire.cost.as_ref()?)?;
    if wire.is_byok.as_ref().and_then(Value::as_bool) != Some(true) {
        return Some(cost);
    }
    let upstream = wire
        .cost_details
        .as_ref()
        .and_then(|details| details.get("upstream_inference_cost"))
        .and_then(usd_to_nanos)
        .unwrap_or(0);
    cost.checked_add(upstream)
}

fn xai_ticks_to_nanos(ticks: &Value) -> Option<i64> {
    let ticks = ticks.as_u64()?;
    i64::try_from(ticks / XAI_TICKS_PER_NANO + u64::from(ticks % XAI_TICKS_PER_NANO >= 5)).ok()
}

/// A USD amount (a JSON number, or a decimal string) in nano-dollars, rounded half away from zero.
pub(crate) fn usd_to_nanos(value: &Value) -> Option<i64> {
    match value {
        // Without `arbitrary_precision` a number holds an f64; its shortest round-trip digits
        // are the digits the provider wrote for any amount with up to 15 significant digits.
        Value::Number(number) => decimal_to_nanos(&number.to_string()),
        Value::String(text) => decimal_to_nanos(text.trim()),
        _ => None,
    }
}

/// Parses a decimal (`-0.000153`, `1.5e-4`, `12`) into units of 1e-9 exactly, rounding the first
/// dropped digit half up. `None` for anything else or an amount beyond `i64`.
fn decimal_to_nanos(text: &str) -> Option<i64> {
    const SCALE_DIGITS: i64 = 9;
    let (negative, unsigned) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], unsigned[at + 1..].parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if integer.is_empty() && fraction.is_empty() {
        return None;
    }
    let all_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
    if !all_digits(integer) || !all_digits(fraction) {
        return None;
    }
    // The value is `digits` with the decimal point after `point` digits (may lie outside).
    let digits: Vec<u8> = integer
        .bytes()
        .chain(fraction.bytes())
        .map(|b| b - b'0')
        .collect();
    let point = i64::try_from(integer.len())
        .ok()?
        .checked_add(exponent)?
        .checked_add(SCALE_DIGITS)?;
    if point > 40 {
        // Beyond any i64 of nano-dollars (unless the digits are all zero); also bounds the loop.
        return digits.iter().all(|&digit| digit == 0).then_some(0);
    }
    let mut nanos: i64 = 0;
    let mut index: i64 = 0;
    while index < point {
        let digit = usize::try_from(index)
            .ok()
            .and_then(|at| digits.get(at))
            .copied()
            .unwrap_or(0);
        nanos = nanos.checked_mul(10)?.checked_add(i64::from(digit))?;
        index += 1;
    }
    let rounding_digit = usize::try_from(point)
        .ok()
        .and_then(|at| digits.get(at))
        .copied()
        .unwrap_or(0);
    if rounding_digit >= 5 {
        nanos = nanos.checked_add(1)?;
    }
    Some(if negative { -nanos } else { nanos })
}

// ---------------------------------------------------------------------------------------------
// Collecting what a body says.

/// The last usage report seen and whether it ends the answer.
#[derive(Debug)]
struct Reading {
    report: Option<UsageReport>,
    is_final: bool,
}

/// Everything read so far from one response.
#[derive(Debug)]
struct Collector {
    flavor: Flavor,
    model: Option<String>,
    request_id: Option<String>,
    upstream_provider: Option<String>,
    output_text: OutputText,
    last: Option<Reading>,
    /// `data: [DONE]` was seen: the stream completed, so its last report is final.
    done: bool,
}

impl Collector {
    fn new(flavor: Flavor) -> Self {
        Collector {
            flavor,
            model: None,
            request_id: None,
            upstream_provider: None,
            output_text: OutputText::default(),
            last: None,
            done: false,
        }
    }

    /// Reads one chunk object (or a whole body); `[DONE]`, keep-alive junk and truncated JSON
    /// fall out here.
    fn absorb(&mut self, data: &[u8]) {
        let trimmed = trim_json_whitespace(data);
        if trimmed == b"[DONE]" {
            self.done = true;
            return;
        }
        // Only objects: an array would otherwise fill the structs positionally.
        if trimmed.first() != Some(&b'{') {
            return;
        }
        match serde_json::from_slice::<WireChunk<'_>>(trimmed) {
            Ok(chunk) => self.absorb_chunk(chunk),
            Err(_) => {
                if let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(trimmed) {
                    self.absorb_object(&object);
                }
            }
        }
    }

    fn absorb_chunk(&mut self, chunk: WireChunk<'_>) {
        note_first(
            &mut self.request_id,
            chunk.id.as_ref().and_then(Text::as_str),
        );
        note_first(&mut self.model, chunk.model.as_ref().and_then(Text::as_str));
        if self.flavor == Flavor::OpenRouter {
            note_first(
                &mut self.upstream_provider,
                chunk.provider.as_ref().and_then(Text::as_str),
            );
        }
        let mut ends_answer = true;
        if let Some(choices) = &chunk.choices {
            ends_answer = choices.is_empty();
            for choice in choices {
                for message in [&choice.delta, &choice.message].into_iter().flatten() {
                    message.push_to(&mut self.output_text);
                }
                if choice.finish_reason.is_some() {
                    ends_answer = true;
                }
            }
        }
        let usage = chunk
            .usage
            .or_else(|| chunk.x_groq.and_then(|groq| groq.usage));
        if let Some(usage) = usage {
            self.last = Some(Reading {
                report: read_raw_usage(self.flavor, usage, chunk.num_cached_tokens.as_ref()),
                is_final: ends_answer,
            });
        }
    }

    /// The slow path for a chunk of an unexpected shape: the same reading from a `Value`.
    fn absorb_object(&mut self, object: &serde_json::Map<String, Value>) {
        let string = |key: &str| object.get(key).and_then(Value::as_str);
        note_first(&mut self.request_id, string("id"));
        note_first(&mut self.model, string("model"));
        if self.flavor == Flavor::OpenRouter {
            note_first(&mut self.upstream_provider, string("provider"));
        }
        let mut ends_answer = true;
        if let Some(choices) = object.get("choices").and_then(Value::as_array) {
            ends_answer = choices.is_empty();
            for choice in choices {
                for key in ["delta", "message"] {
                    if let Some(message) = choice.get(key) {
                        push_message_value(message, &mut self.output_text);
                    }
                }
                if choice
                    .get("finish_reason")
                    .is_some_and(|reason| !reason.is_null())
                {
                    ends_answer = true;
                }
            }
        }
        let usage = non_null(object.get("usage"))
            .or_else(|| non_null(object.get("x_groq").and_then(|groq| groq.get("usage"))));
        if let Some(usage) = usage {
            self.record(usage, object.get("num_cached_tokens"), ends_answer);
        }
    }

    fn record(&mut self, usage: &Value, beside_usage_cached: Option<&Value>, is_final: bool) {
        self.last = Some(Reading {
            report: read_usage(self.flavor, usage, beside_usage_cached),
            is_final,
        });
    }

    fn into_parsed(self) -> ParsedUsage {
        let mut parsed = ParsedUsage {
            model: self.model,
            request_id: self.request_id,
            upstream_provider: self.upstream_provider,
            output_text: self.output_text,
            ..ParsedUsage::default()
        };
        // An unreadable last report is not replaced by an earlier, stale one.
        if let Some(Reading {
            report: Some(report),
            is_final,
        }) = self.last
        {
            if is_final || self.done {
                parsed.usage = Some(report.usage);
                parsed.reported_cost_nanos = report.cost_nanos;
                parsed.quantities = report.quantities;
            } else {
                parsed.partial = Some(report.usage);
            }
        }
        parsed
    }
}

fn non_null(value: Option<&Value>) -> Option<&Value> {
    value.filter(|value| !value.is_null())
}

fn note_first(slot: &mut Option<String>, value: Option<&str>) {
    if slot.is_none() {
        if let Some(value) = value.filter(|value| !value.is_empty()) {
            *slot = Some(value.to_owned());
        }
    }
}

/// Appends the generated text of a message or delta held as a `Value`.
fn push_message_value(message: &Value, out: &mut OutputText) {
    for key in ["content", "reasoning_content", "reasoning", "refusal"] {
        if let Some(value) = message.get(key) {
            push_text_value(value, out);
        }
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(arguments) = call.get("function").and_then(|f| f.get("arguments")) {
            push_text_value(arguments, out);
        }
    }
}

/// [`Text`]'s reading of a `Value`: strings, and the `text`/`thinking` of parts.
fn push_text_value(value: &Value, out: &mut OutputText) {
    match value {
        Value::String(text) if !text.is_empty() => out.push(text),
        Value::Array(parts) => parts.iter().for_each(|part| push_text_value(part, out)),
        Value::Object(part) => {
            for key in ["text", "thinking"] {
                if let Some(inner) = part.get(key) {
                    push_text_value(inner, out);
                }
            }
        }
        _ => {}
    }
}

fn trim_json_whitespace(bytes: &[u8]) -> &[u8] {
    let is_space = |byte: &u8| matches!(byte, b' ' | b'\t' | b'\n' | b'\r');
    let start = bytes
        .iter()
        .position(|b| !is_space(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |at| at + 1);
    &bytes[start..end]
}

// ---------------------------------------------------------------------------------------------
// Parsers.

/// A non-streaming chat completion: the body is buffered (up to a limit) and parsed at the end.
#[derive(Debug)]
pub struct ChatCompletionJson {
    flavor: Flavor,
    body: BoundedBody,
}

impl Default for ChatCompletionJson {
    fn default() -> Self {
        ChatCompletionJson::new(Flavor::OpenAi)
    }
}

impl ChatCompletionJson {
    /// A parser for `flavor`'s conventions, buffering at most [`MAX_JSON_BODY_BYTES`].
    pub fn new(flavor: Flavor) -> Self {
        ChatCompletionJson::with_limit(flavor, MAX_JSON_BODY_BYTES)
    }

    /// A parser that gives up (usage `None`) on bodies larger than `limit` bytes.
    pub fn with_limit(flavor: Flavor, limit: usize) -> Self {
        ChatCompletionJson {
            flavor,
            body: BoundedBody::with_limit(limit),
        }
    }
}

impl UsageParser for ChatCompletionJson {
    fn feed(&mut self, chunk: &[u8]) {
        self.body.push(chunk);
    }

    fn finish(&mut self) -> ParsedUsage {
        let Some(body) = self.body.take() else {
            return ParsedUsage::default();
        };
        let mut collector = Collector::new(self.flavor);
        collector.absorb(&body);
        // A whole completion object is final whatever its choices say.
        collector.done = true;
        collector.into_parsed()
    }
}

/// A streaming chat completion (`text/event-stream`): each event's data is one chunk object,
/// `[DONE]`, or an error object.
pub struct ChatCompletionStream {
    framer: SseFramer,
    collector: Collector,
}

impl Default for ChatCompletionStream {
    fn default() -> Self {
        ChatCompletionStream::new(Flavor::OpenAi)
    }
}

impl ChatCompletionStream {
    /// A parser for `flavor`'s conventions.
    pub fn new(flavor: Flavor) -> Self {
        ChatCompletionStream {
            framer: SseFramer::default(),
            collector: Collector::new(flavor),
        }
    }
}

impl fmt::Debug for ChatCompletionStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatCompletionStream")
            .field("flavor", &self.collector.flavor)
            .field("model", &self.collector.model)
            .field("request_id", &self.collector.request_id)
            .field("last", &self.collector.last)
            .finish_non_exhaustive()
    }
}

impl UsageParser for ChatCompletionStream {
    fn feed(&mut self, chunk: &[u8]) {
        let collector = &mut self.collector;
        self.framer
            .feed(chunk, |event| collector.absorb(event.data));
    }

    fn finish(&mut self) -> ParsedUsage {
        let collector = &mut self.collector;
        self.framer.finish(|event| collector.absorb(event.data));
        let flavor = self.collector.flavor;
        std::mem::replace(&mut self.collector, Collector::new(flavor)).into_parsed()
    }
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

    /// Maps one `usage` JSON object as both parsers of `flavor` see it.
    fn check_flavor(flavor: Flavor, usage_json: &str, expected: Option<Usage>) {
        let body = format!(r#"{{"id":"chatcmpl-1","model":"m","usage":{usage_json}}}"#);
        let mut json = ChatCompletionJson::new(flavor);
        json.feed(body.as_bytes());
        assert_eq!(
            json.finish().usage,
            expected,
            "{flavor:?} json body {usage_json}"
        );

        let stream_body = format!(
            "data: {{\"id\":\"chatcmpl-1\",\"model\":\"m\",\"choices\":[{{}}],\"usage\":null}}\n\n\
             data: {}\n\ndata: [DONE]\n\n",
            // Line breaks inside the JSON become multi-line data, joined back by the framer.
            body.replace('\n', "\ndata: ")
        );
        let mut stream = ChatCompletionStream::new(flavor);
        stream.feed(stream_body.as_bytes());
        assert_eq!(
            stream.finish().usage,
            expected,
            "{flavor:?} stream {usage_json}"
        );
    }

    fn check_usage(usage_json: &str, expected: Option<Usage>) {
        check_flavor(Flavor::OpenAi, usage_json, expected);
    }

    #[test]
    fn openai_bucket_mapping() {
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
        // Unreadable usage objects.
        check_usage(r#"{"total_tokens":15}"#, None);
        check_usage(r#"{}"#, None);
        check_usage(r#"{"prompt_tokens":-1,"completion_tokens":5}"#, None);
        check_usage(r#"{"prompt_tokens":"10","completion_tokens":5}"#, None);
        check_usage(
            r#"{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":"4"}}"#,
            None,
        );
        check_usage(r#"[10,5]"#, None);
        check_usage(r#""10 tokens""#, None);
        check_usage(r#"null"#, None);
        // Money fields of the wrong type cost only the money.
        check_usage(
            r#"{"prompt_tokens":3,"completion_tokens":4,"cost":"free","num_sources_used":"x"}"#,
            Some(usage(3, 0, 4, 0)),
        );
    }

    #[test]
    fn flavor_bucket_mapping() {
        // xAI leaves reasoning out of completion_tokens (real body: 288 + 25 + 532 = 845).
        let xai = r#"{"prompt_tokens":288,"completion_tokens":25,"total_tokens":845,
            "prompt_tokens_details":{"text_tokens":288,"audio_tokens":0,"image_tokens":0,"cached_tokens":4},
            "completion_tokens_details":{"reasoning_tokens":532,"audio_tokens":0}}"#;
        check_flavor(Flavor::Xai, xai, Some(usage(284, 4, 557, 532)));
        check_flavor(Flavor::OpenAi, xai, Some(usage(284, 4, 25, 532)));
        // ... unless the total shows it folded in.
        check_flavor(
            Flavor::Xai,
            r#"{"prompt_tokens":10,"completion_tokens":30,"total_tokens":40,
                "completion_tokens_details":{"reasoning_tokens":20}}"#,
            Some(usage(10, 0, 30, 20)),
        );
        // OpenRouter: prompt_tokens include cache reads and writes.
        check_flavor(
            Flavor::OpenRouter,
            r#"{"prompt_tokens":194,"completion_tokens":2,"total_tokens":196,"cost":0.95,
                "prompt_tokens_details":{"cached_tokens":50,"cache_write_tokens":100,"audio_tokens":0}}"#,
            Some(Usage {
                input_tokens: 44,
                cache_read_tokens: 50,
                cache_write_tokens: 100,
                output_tokens: 2,
                ..Usage::default()
            }),
        );
        // DeepSeek: hit + miss = prompt.
        let deepseek = r#"{"prompt_tokens":20,"completion_tokens":9,"total_tokens":29,
            "prompt_tokens_details":{"cached_tokens":16},"prompt_cache_hit_tokens":16,
            "prompt_cache_miss_tokens":4,"completion_tokens_details":{"reasoning_tokens":3}}"#;
        check_flavor(Flavor::DeepSeek, deepseek, Some(usage(4, 16, 9, 3)));
        check_flavor(Flavor::OpenAi, deepseek, Some(usage(4, 16, 9, 3)));
        check_flavor(
            Flavor::DeepSeek,
            r#"{"prompt_tokens":20,"completion_tokens":9,"prompt_cache_hit_tokens":5}"#,
            Some(usage(15, 5, 9, 0)),
        );
        // Mistral: every spelling of the cached count.
        for cached in [
            r#""prompt_tokens_details":{"cached_tokens":768}"#,
            r#""prompt_token_details":{"cached_tokens":768}"#,
            r#""num_cached_tokens":768"#,
        ] {
            check_flavor(
                Flavor::Mistral,
                &format!(r#"{{"prompt_tokens":801,"completion_tokens":2,{cached}}}"#),
                Some(usage(33, 768, 2, 0)),
            );
        }
        // Gemini: thoughts are the part of the total no other count covers.
        check_flavor(
            Flavor::Gemini,
            r#"{"completion_tokens":2,"prompt_tokens":17,"total_tokens":49}"#,
            Some(usage(17, 0, 32, 30)),
        );
        check_flavor(
            Flavor::Gemini,
            r#"{"completion_tokens":19,"prompt_tokens":4634,"prompt_tokens_details":{"cached_tokens":4088},"total_tokens":4653}"#,
            Some(usage(546, 4088, 19, 0)),
        );
        check_flavor(
            Flavor::Gemini,
            r#"{"completion_tokens":363,"prompt_tokens":2,"total_tokens":365,"completion_tokens_details":{"reasoning_tokens":354}}"#,
            Some(usage(2, 0, 363, 354)),
        );
    }

    #[test]
    fn usd_amounts_convert_exactly() {
        for (text, nanos) in [
            ("0", Some(0)),
            ("0.000153", Some(153_000)),
            ("0.00106375", Some(1_063_750)),
            ("0.95", Some(950_000_000)),
            ("19", Some(19_000_000_000)),
            ("1.5e-4", Some(150_000)),
            ("1E2", Some(100_000_000_000)),
            ("0.0000000015", Some(2)),
            ("0.0000000014", Some(1)),
            ("0.00000000049", Some(0)),
            ("-0.25", Some(-250_000_000)),
            ("1234567890.123456789", Some(1_234_567_890_123_456_789)),
            ("9300000000", None),
            ("1e30", None),
            ("", None),
            ("-", None),
            (".", None),
            ("1.2.3", None),
            ("abc", None),
            ("1e", None),
        ] {
            assert_eq!(decimal_to_nanos(text), nanos, "{text}");
        }
        // Shortest round-trip digits keep realistic float amounts exact.
        for (json, nanos) in [
            ("0.000153", 153_000),
            ("0.003561", 3_561_000),
            ("1e-7", 100),
        ] {
            let value: Value = serde_json::from_str(json).expect("valid JSON");
            assert_eq!(usd_to_nanos(&value), Some(nanos), "{json}");
        }
        assert_eq!(
            xai_ticks_to_nanos(&Value::from(37_756_000_u64)),
            Some(3_775_600)
        );
        assert_eq!(xai_ticks_to_nanos(&Value::from(15_u64)), Some(2));
        assert_eq!(xai_ticks_to_nanos(&Value::from(-1)), None);
    }

    #[test]
    fn reported_cost_and_quantities() {
        let parse = |flavor, body: &str| {
            let mut parser = ChatCompletionJson::new(flavor);
            parser.feed(body.as_bytes());
            parser.finish()
        };
        let byok = r#"{"id":"gen-1","provider":"OpenAI","usage":{"prompt_tokens":1,"completion_tokens":1,
            "cost":0.0001,"is_byok":true,"cost_details":{"upstream_inference_cost":0.002}}}"#;
        let parsed = parse(Flavor::OpenRouter, byok);
        assert_eq!(parsed.reported_cost_nanos, Some(2_100_000));
        assert_eq!(parsed.upstream_provider.as_deref(), Some("OpenAI"));
        // Other flavors neither read OpenRouter's money nor its provider tag.
        let parsed = parse(Flavor::OpenAi, byok);
        assert_eq!(parsed.reported_cost_nanos, None);
        assert_eq!(parsed.upstream_provider, None);

        let xai = r#"{"id":"x","usage":{"prompt_tokens":1,"completion_tokens":1,
            "num_sources_used":3,"cost_in_usd_ticks":750000000,
            "prompt_tokens_details":{"audio_tokens":0}}}"#;
        let parsed = parse(Flavor::Xai, xai);
        assert_eq!(parsed.reported_cost_nanos, Some(75_000_000));
        assert_eq!(parsed.quantities.web_search_calls, 3);

        let audio = r#"{"usage":{"prompt_tokens":40,"completion_tokens":90,
            "prompt_tokens_details":{"audio_tokens":25},"completion_tokens_details":{"audio_tokens":70}}}"#;
        let parsed = parse(Flavor::OpenAi, audio);
        assert_eq!(parsed.quantities.audio_input_tokens, 25);
        assert_eq!(parsed.quantities.audio_output_tokens, 70);
    }

    fn check_json(body: &[u8], limit: usize, expected: ParsedUsage) {
        let mut parser = ChatCompletionJson::with_limit(Flavor::OpenAi, limit);
        for chunk in body.chunks(3) {
            parser.feed(chunk);
        }
        let mut parsed = parser.finish();
        parsed.output_text = OutputText::default();
        assert_eq!(parsed, expected, "{}", String::from_utf8_lossy(body));
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
        // An odd shape elsewhere falls back to the slow path without losing the report.
        check_json(
            br#"{"id":"c","model":"m","choices":[7],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            MAX_JSON_BODY_BYTES,
            ParsedUsage {
                usage: Some(usage(3, 0, 4, 0)),
                model: Some("m".into()),
                request_id: Some("c".into()),
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

    fn stream(flavor: Flavor, body: &str) -> ParsedUsage {
        let mut parser = ChatCompletionStream::new(flavor);
        parser.feed(body.as_bytes());
        parser.finish()
    }

    fn check_stream(body: &str, expected: ParsedUsage) {
        let mut parsed = stream(Flavor::OpenAi, body);
        parsed.output_text = OutputText::default();
        assert_eq!(parsed, expected, "{body}");
    }

    #[test]
    fn stream_usage_selection() {
        let ids = |usage, partial| ParsedUsage {
            usage,
            partial,
            model: Some("m".into()),
            request_id: Some("c".into()),
            ..ParsedUsage::default()
        };
        // Whitespace variants of a null usage are skipped; a real one is read.
        check_stream(
            "data: {\"id\":\"c\",\"model\":\"m\",\"usage\" :\n null}\n\n\
             data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[],\"usage\": {\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n",
            ids(Some(usage(1, 0, 2, 0)), None),
        );
        // The last non-null usage wins, also over an earlier one and later nulls.
        check_stream(
            "data: {\"id\":\"c\",\"model\":\"m\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n\
             data: {\"id\":\"c\",\"model\":\"m\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":9}}\n\n\
             data: {\"id\":\"c\",\"model\":\"m\",\"usage\":null}\n\n",
            ids(Some(usage(1, 0, 9, 0)), None),
        );
        // A last usage that cannot be read is not replaced by an earlier, stale one.
        check_stream(
            "data: {\"id\":\"c\",\"model\":\"m\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n\
             data: {\"id\":\"c\",\"model\":\"m\",\"usage\":{\"total_tokens\":2}}\n\n",
            ids(None, None),
        );
        // A nested "usage" key does not hide the top-level one, nor fake one.
        check_stream(
            "data: {\"id\":\"c\",\"model\":\"m\",\"x\":{\"usage\":{\"prompt_tokens\":5}},\"usage\":null}\n\n",
            ids(None, None),
        );
        // Running totals mid-answer are partial until the answer ends...
        let running = "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1}}\n\n";
        check_stream(running, ids(None, Some(usage(4, 0, 1, 0))));
        // ... by a finish_reason, or by [DONE].
        check_stream(
            &format!("{running}data: {{\"id\":\"c\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":4,\"completion_tokens\":2}}}}\n\n"),
            ids(Some(usage(4, 0, 2, 0)), None),
        );
        check_stream(
            &format!("{running}data: [DONE]\n\n"),
            ids(Some(usage(4, 0, 1, 0)), None),
        );
        // Azure's opening content-filter chunk has empty ids; the next chunk names them.
        check_stream(
            "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[]}\n\n\
             data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[]}\n\n",
            ids(None, None),
        );
        // The first id and model seen are kept.
        check_stream(
            "data: {\"id\":\"c\",\"model\":\"m\"}\n\ndata: {\"id\":\"d\",\"model\":\"n\"}\n\n",
            ids(None, None),
        );
        // Groq: `usage` wins over `x_groq.usage` in a chunk; `x_groq.usage` alone is read.
        check_stream(
            "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"x_groq\":{\"id\":\"req_1\",\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":4}}}\n\n",
            ids(Some(usage(20, 0, 4, 0)), None),
        );
        check_stream(
            "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[],\"x_groq\":{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}},\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":4}}\n\n",
            ids(Some(usage(20, 0, 4, 0)), None),
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
    fn output_text_collection() {
        let text = |flavor, body: &str| stream(flavor, body).output_text.text;
        assert_eq!(
            text(
                Flavor::DeepSeek,
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":null,\"reasoning_content\":\"think \"}}]}\n\n\
                 data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"say \\\"hi\\\"\",\"reasoning_content\":null}}]}\n\n"
            ),
            "think say \"hi\""
        );
        assert_eq!(
            text(
                Flavor::OpenAi,
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n\
                 data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]}}]}\n\n"
            ),
            "{\"a\":1}"
        );
        // Content parts (Mistral's reasoning models) and OpenRouter's `reasoning`.
        assert_eq!(
            text(
                Flavor::Mistral,
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":[{\"type\":\"thinking\",\"thinking\":[{\"type\":\"text\",\"text\":\"hmm \"}]},{\"type\":\"text\",\"text\":\"ok\"}]}}]}\n\n"
            ),
            "hmm ok"
        );
        assert_eq!(
            text(
                Flavor::OpenRouter,
                ": OPENROUTER PROCESSING\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\",\"reasoning\":\"why \"}},{\"index\":1,\"delta\":{\"content\":\"two\"}}]}\n\n"
            ),
            "why two"
        );
        // The slow path reads the same text.
        assert_eq!(
            text(
                Flavor::OpenAi,
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\",\"tool_calls\":7}}]}\n\n"
            ),
            "a"
        );
        // Non-streaming message text.
        let mut json = ChatCompletionJson::new(Flavor::OpenAi);
        json.feed(br#"{"choices":[{"message":{"content":"x","refusal":null,"tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}}]}"#);
        assert_eq!(json.finish().output_text.text, "x{}");
    }

    /// Rough throughput of the stream parser on content deltas (run with `--ignored`).
    #[test]
    #[ignore = "timing, not a check"]
    fn stream_throughput() {
        let chunk = "data: {\"id\":\"chatcmpl-CE4fW8sNq1KdTx3jZmH6vBpRyLcGa\",\"object\":\"chat.completion.chunk\",\"created\":1757000000,\"model\":\"gpt-4o-2024-08-06\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_f33640a400\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" token\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null,\"obfuscation\":\"aB3\"}\n\n";
        let body = chunk.repeat(100_000);
        let started = std::time::Instant::now();
        let mut parser = ChatCompletionStream::new(Flavor::OpenAi);
        for piece in body.as_bytes().chunks(4096) {
            parser.feed(piece);
        }
        let parsed = parser.finish();
        let elapsed = started.elapsed();
        assert_eq!(parsed.output_text.text.len(), OutputText::CAP);
        println!(
            "{} chunks in {elapsed:?}: {:.0} ns/chunk, {:.0} MB/s",
            100_000,
            elapsed.as_nanos() as f64 / 100_000.0,
            body.len() as f64 / elapsed.as_secs_f64() / 1e6
        );
    }
}
