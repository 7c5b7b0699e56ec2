//! The estimator: counts tokens locally (OpenAI's `o200k_base` BPE, via tiktoken-rs) when a
//! provider's usage report could not be read. Keeps whatever the provider did report
//! (`ParsedUsage::partial`), never counts more output than the request's `max_tokens` allows.
//! Runs on the ledger writer thread, never on the request path. Pure apart from the tokenizer's
//! lazily built tables.

use serde_json::Value;

use super::{OutputText, Usage};

/// Request keys whose string values are not prompt text (ids, enums, binary payloads).
const NOT_TEXT: &[&str] = &[
    "model",
    "role",
    "type",
    "id",
    "tool_call_id",
    "detail",
    "format",
    "mime_type",
    "mimeType",
    "media_type",
    "data",
    "b64_json",
    "image_url",
    "url",
    "file_id",
    "file_data",
    "signature",
    "cache_control",
    "stop",
    "service_tier",
    "reasoning_effort",
    "user",
    "encoding_format",
];

/// Roughly what chat formats add per message (role markers, separators).
const TOKENS_PER_MESSAGE: u64 = 4;

/// What the estimator needs to know about the request. Its `Debug` shows sizes only, so prompt
/// text cannot reach a log by accident.
#[derive(Clone, Default)]
pub struct EstimateInput {
    /// The request body (JSON), when it was small enough to keep.
    pub request_body: Option<bytes::Bytes>,
    /// Its length, kept even when the body was not.
    pub request_len: u64,
    pub max_output_tokens: Option<u64>,
    pub partial: Option<Usage>,
    pub output_text: OutputText,
}

impl std::fmt::Debug for EstimateInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EstimateInput")
            .field("request_len", &self.request_len)
            .field("request_kept", &self.request_body.is_some())
            .field("max_output_tokens", &self.max_output_tokens)
            .field("partial", &self.partial)
            .field("output_text", &self.output_text)
            .finish()
    }
}

fn count(text: &str) -> u64 {
    tiktoken_rs::o200k_base_singleton()
        .encode_ordinary(text)
        .len() as u64
}

/// Prompt tokens of a request body: the text of its strings, plus a small overhead per message.
pub fn prompt_tokens(body: &[u8]) -> u64 {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        // Not JSON (multipart audio upload, say): a byte-based guess.
        return body.len() as u64 / 4;
    };
    let mut text = String::new();
    let mut messages = 0u64;
    collect_text(&value, None, &mut text, &mut messages);
    count(&text) + messages * TOKENS_PER_MESSAGE
}

fn collect_text(value: &Value, key: Option<&str>, out: &mut String, messages: &mut u64) {
    match value {
        Value::String(s)
            if !key.is_some_and(|k| NOT_TEXT.contains(&k)) && !s.starts_with("data:") =>
        {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(items) => {
            if matches!(key, Some("messages" | "contents" | "input")) {
                *messages += items.len() as u64;
            }
            for item in items {
                collect_text(item, key, out, messages);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                collect_text(v, Some(k.as_str()), out, messages);
            }
        }
        _ => {}
    }
}

/// Estimates usage for a call whose report is missing. `None` when there is nothing to go on.
pub fn estimate(input: &EstimateInput) -> Option<Usage> {
    let output_estimate =
        count(&input.output_text.text) + input.output_text.overflow_bytes.div_ceil(4);
    let output_estimate = match input.max_output_tokens {
        Some(max) => output_estimate.min(max),
        None => output_estimate,
    };
    let mut usage = match (input.partial, &input.request_body) {
        (Some(partial), _) => partial,
        (None, Some(body)) => Usage {
            input_tokens: prompt_tokens(body),
            ..Usage::default()
        },
        (None, None) if input.request_len > 0 => Usage {
            input_tokens: input.request_len / 4,
            ..Usage::default()
        },
        (None, None) => return None,
    };
    usage.output_tokens = usage.output_tokens.max(output_estimate);
    Some(usage)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn counts_prompt_text_not_ids_or_images() {
        let plain = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello, world!"}]}"#;
        // "Hello, world!\n" is 5 o200k tokens; one message adds 4.
        assert_eq!(prompt_tokens(plain), count("Hello, world!\n") + 4);
        let with_image = br#"{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":"Hello, world!"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}"#;
        assert_eq!(prompt_tokens(with_image), prompt_tokens(plain));
        assert_eq!(prompt_tokens(b"not json at all"), 3);
    }

    #[test]
    fn keeps_reported_parts_and_caps_output() {
        let mut output_text = OutputText::default();
        output_text.push(&"word ".repeat(100));
        let partial = Usage {
            input_tokens: 1200,
            cache_read_tokens: 300,
            output_tokens: 1,
            ..Usage::default()
        };
        let got = estimate(&EstimateInput {
            partial: Some(partial),
            max_output_tokens: Some(50),
            output_text: output_text.clone(),
            ..EstimateInput::default()
        })
        .unwrap();
        assert_eq!(
            (got.input_tokens, got.cache_read_tokens, got.output_tokens),
            (1200, 300, 50)
        );
        let got = estimate(&EstimateInput {
            request_body: Some(bytes::Bytes::from_static(
                br#"{"messages":[{"role":"user","content":"hi"}]}"#,
            )),
            output_text,
            ..EstimateInput::default()
        })
        .unwrap();
        assert_eq!(got.input_tokens, count("hi\n") + 4);
        assert_eq!(got.output_tokens, count(&"word ".repeat(100)));
        assert_eq!(estimate(&EstimateInput::default()), None);
    }
}
