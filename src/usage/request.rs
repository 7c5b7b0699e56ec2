//! What meter reads from a request body: the model, whether it streams, the output cap, and the
//! image size/quality that per-image prices depend on. Nothing else is kept (no prompt text).

use serde::Deserialize;

/// The request fields meter cares about, whatever API's names they use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub model: Option<String>,
    /// `Some(true)` when the body asks for a stream, `None` when it does not say.
    pub stream: Option<bool>,
    pub max_output_tokens: Option<u64>,
    pub image_size: Option<String>,
    pub image_quality: Option<String>,
    /// Images requested (`n`), for per-image billing when the response does not count them.
    pub images: Option<u64>,
}

#[derive(Deserialize)]
struct Probe {
    model: Option<String>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    #[serde(rename = "generationConfig", alias = "generation_config")]
    generation_config: Option<GenerationConfig>,
    options: Option<OllamaOptions>,
    size: Option<String>,
    quality: Option<String>,
    n: Option<u64>,
}

#[derive(Deserialize)]
struct GenerationConfig {
    #[serde(rename = "maxOutputTokens", alias = "max_output_tokens")]
    max_output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct OllamaOptions {
    num_predict: Option<i64>,
}

impl RequestFacts {
    /// Reads a JSON request body, or the `model` field of a multipart upload (audio
    /// transcription, image edits); anything else yields no facts.
    pub fn probe(body: &[u8]) -> RequestFacts {
        let Ok(probe) = serde_json::from_slice::<Probe>(body) else {
            return RequestFacts {
                model: multipart_field(body, "model"),
                image_size: multipart_field(body, "size"),
                image_quality: multipart_field(body, "quality"),
                ..RequestFacts::default()
            };
        };
        RequestFacts {
            model: probe.model,
            stream: probe.stream,
            max_output_tokens: probe
                .max_completion_tokens
                .or(probe.max_tokens)
                .or(probe.max_output_tokens)
                .or(probe.generation_config.and_then(|c| c.max_output_tokens))
                // Ollama's -1 means "no limit".
                .or(probe
                    .options
                    .and_then(|o| o.num_predict)
                    .and_then(|n| u64::try_from(n).ok())),
            image_size: probe.size,
            image_quality: probe.quality,
            images: probe.n,
        }
    }
}

/// The value of a short text field in a `multipart/form-data` body: the part whose headers say
/// `name="<name>"`. Values longer than 256 bytes are not field values meter wants.
fn multipart_field(body: &[u8], name: &str) -> Option<String> {
    if !body.starts_with(b"--") {
        return None;
    }
    let needle = format!("name=\"{name}\"");
    let at = memchr::memmem::find(body, needle.as_bytes())?;
    let rest = &body[at + needle.len()..];
    let start = memchr::memmem::find(rest, b"\r\n\r\n")? + 4;
    let value = &rest[start..];
    let end = memchr::memmem::find(value, b"\r\n")?;
    if end > 256 {
        return None;
    }
    let value = std::str::from_utf8(&value[..end]).ok()?.trim();
    (!value.is_empty()).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_every_dialect() {
        let cases = [
            (
                r#"{"model":"gpt-4o","stream":true,"max_tokens":10}"#,
                Some("gpt-4o"),
                Some(true),
                Some(10),
            ),
            (
                r#"{"max_completion_tokens": 11, "max_tokens": 10}"#,
                None,
                None,
                Some(11),
            ),
            (
                r#"{"model":"gpt-5","max_output_tokens": 12}"#,
                Some("gpt-5"),
                None,
                Some(12),
            ),
            (
                r#"{"generationConfig": {"maxOutputTokens": 13}}"#,
                None,
                None,
                Some(13),
            ),
            (
                r#"{"model":"llama3.2","options": {"num_predict": 14}}"#,
                Some("llama3.2"),
                None,
                Some(14),
            ),
            (r#"{"options": {"num_predict": -1}}"#, None, None, None),
            (r#"not json"#, None, None, None),
            (r#"{"model": 5}"#, None, None, None),
        ];
        for (body, model, stream, max) in cases {
            let facts = RequestFacts::probe(body.as_bytes());
            assert_eq!(
                (
                    facts.model.as_deref(),
                    facts.stream,
                    facts.max_output_tokens
                ),
                (model, stream, max),
                "{body}"
            );
        }
        let multipart = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n\x00\x01binary\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-transcribe\r\n--XyZ--\r\n";
        assert_eq!(
            RequestFacts::probe(multipart).model.as_deref(),
            Some("gpt-4o-transcribe")
        );
        let image =
            RequestFacts::probe(br#"{"model":"dall-e-3","size":"1024x1792","quality":"hd","n":2}"#);
        assert_eq!(image.image_size.as_deref(), Some("1024x1792"));
        assert_eq!(image.image_quality.as_deref(), Some("hd"));
        assert_eq!(image.images, Some(2));
    }
}
