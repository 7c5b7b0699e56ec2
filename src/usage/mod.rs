//! Token usage read out of provider responses: the disjoint buckets of SPEC §4 and one
//! incremental parser per wire format. Pure code: no IO, no clocks, no logging of bodies.
//!
//! A parser is fed the (decompressed) response body chunk by chunk as the client receives it,
//! keeps only the partial line or event it needs, and at the end says what it read. Failing to
//! read usage is data (`UsageStatus::Missing`), never an error and never zero tokens "reported".

pub mod anthropic;
pub mod estimate;
pub mod gemini;
pub mod ollama;
pub mod openai;
pub mod openai_responses;
pub mod request;
pub mod sse;

use std::fmt;

/// Disjoint token buckets (SPEC §4): `cost = Σ bucket × its price`, where
/// `cache_write_1h_tokens` and `reasoning_tokens` only refine tokens already counted in
/// `cache_write_tokens` and `output_tokens` respectively.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cache_write_1h_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
}

/// How trustworthy a record's token counts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageStatus {
    /// Read from the provider's own usage report (or known to be zero: a request the provider
    /// rejected or a call that does not bill tokens).
    Reported,
    /// Counted locally because the provider's report could not be read.
    Estimated,
    /// Not known: the record carries zero tokens that must not be read as "free".
    Missing,
}

impl UsageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageStatus::Reported => "reported",
            UsageStatus::Estimated => "estimated",
            UsageStatus::Missing => "missing",
        }
    }
}

impl fmt::Display for UsageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a parser read from one response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedUsage {
    /// `Some` only when the provider's final usage report was read in full.
    pub usage: Option<Usage>,
    /// The model as the response names it (e.g. a dated snapshot).
    pub model: Option<String>,
    /// The provider's id for the response (e.g. `chatcmpl-...`).
    pub request_id: Option<String>,
    /// When `usage` is `None`: what the provider did report before the body ended (Anthropic's
    /// `message_start` input count, the last running Gemini `usageMetadata`). A floor for the
    /// estimator, never recorded as `reported`.
    pub partial: Option<Usage>,
    /// The cost the provider itself reported for the call (OpenRouter `usage.cost`), in
    /// nano-dollars (1e-9 USD).
    pub reported_cost_nanos: Option<i64>,
    /// The upstream a router chose (OpenRouter's top-level `provider`), kept as a tag.
    pub upstream_provider: Option<String>,
    /// Billable quantities beyond the token buckets.
    pub quantities: Quantities,
    /// Output text the parser saw, kept (bounded) for the estimator.
    pub output_text: OutputText,
}

/// Billable quantities that are not text tokens. Zero/`None` when the response has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quantities {
    /// Images generated or edited (per-image billing).
    pub images: u64,
    /// Their size as the response (or request) names it, e.g. `1024x1024`.
    pub image_size: Option<String>,
    /// Their quality, e.g. `standard`, `hd`, `low`, `medium`, `high`.
    pub image_quality: Option<String>,
    /// The part of `input_tokens`/`cache_read_tokens` that was audio (priced at its own rate).
    pub audio_input_tokens: u64,
    /// The part of `output_tokens` that was audio.
    pub audio_output_tokens: u64,
    /// Audio billed by duration (Whisper-style transcription), in milliseconds.
    pub audio_millis: u64,
    /// Web-search calls the provider ran and bills per call (Anthropic
    /// `server_tool_use.web_search_requests`, OpenAI `web_search_call` items).
    pub web_search_calls: u64,
}

/// Generated text seen by a parser, for counting tokens when the provider's report is missing.
/// Keeps at most [`OutputText::CAP`] bytes; beyond that only the byte count grows. Its `Debug`
/// shows sizes only, so completion text cannot reach a log by accident.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct OutputText {
    pub text: String,
    /// Bytes seen beyond the cap (not kept).
    pub overflow_bytes: u64,
}

impl fmt::Debug for OutputText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OutputText({} bytes kept, {} more seen)",
            self.text.len(),
            self.overflow_bytes
        )
    }
}

impl OutputText {
    pub const CAP: usize = 256 * 1024;

    pub fn push(&mut self, piece: &str) {
        let room = Self::CAP.saturating_sub(self.text.len());
        if piece.len() <= room {
            self.text.push_str(piece);
        } else {
            let mut cut = room;
            while !piece.is_char_boundary(cut) {
                cut -= 1;
            }
            self.text.push_str(&piece[..cut]);
            self.overflow_bytes += (piece.len() - cut) as u64;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty() && self.overflow_bytes == 0
    }
}

/// Whose conventions a response follows beyond its wire format: the same OpenAI-format field can
/// mean different things on different providers (SPEC §4 notes, issue 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Azure,
    Anthropic,
    Gemini,
    Vertex,
    OpenRouter,
    Mistral,
    Xai,
    DeepSeek,
    Groq,
    Ollama,
    Vllm,
    /// Any other OpenAI-compatible host.
    Generic,
}

impl Flavor {
    /// The flavor of a provider: a built-in name decides, else the upstream's host.
    pub fn detect(provider_name: &str, upstream_host: &str) -> Flavor {
        match provider_name {
            "openai" => return Flavor::OpenAi,
            "anthropic" => return Flavor::Anthropic,
            "gemini" => return Flavor::Gemini,
            "openrouter" => return Flavor::OpenRouter,
            "mistral" => return Flavor::Mistral,
            "xai" => return Flavor::Xai,
            "deepseek" => return Flavor::DeepSeek,
            "groq" => return Flavor::Groq,
            "ollama" => return Flavor::Ollama,
            "vllm" => return Flavor::Vllm,
            _ => {}
        }
        let host = upstream_host.to_ascii_lowercase();
        let is = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
        if is("openai.com") {
            Flavor::OpenAi
        } else if is("openai.azure.com")
            || is("cognitiveservices.azure.com")
            || is("services.ai.azure.com")
        {
            Flavor::Azure
        } else if is("anthropic.com") {
            Flavor::Anthropic
        } else if is("generativelanguage.googleapis.com") {
            Flavor::Gemini
        } else if host.ends_with("aiplatform.googleapis.com") {
            // Regional endpoints are `<region>-aiplatform.googleapis.com`.
            Flavor::Vertex
        } else if is("openrouter.ai") {
            Flavor::OpenRouter
        } else if is("mistral.ai") {
            Flavor::Mistral
        } else if is("x.ai") {
            Flavor::Xai
        } else if is("deepseek.com") {
            Flavor::DeepSeek
        } else if is("groq.com") {
            Flavor::Groq
        } else {
            Flavor::Generic
        }
    }
}

/// Everything a parser may depend on, known when the response headers arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseContext {
    pub endpoint: Endpoint,
    pub body: BodyKind,
    pub flavor: Flavor,
}

/// The body framing of a response, decided from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// One JSON document (or, for Gemini's `streamGenerateContent` without `alt=sse`, a JSON
    /// array streamed element by element).
    Json,
    /// Server-sent events (`text/event-stream`).
    Sse,
    /// Newline-delimited JSON (`application/x-ndjson`: Ollama's native streams).
    Ndjson,
}

impl BodyKind {
    pub fn from_content_type(content_type: Option<&str>) -> BodyKind {
        let essence = content_type
            .and_then(|ct| ct.split(';').next())
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "text/event-stream" => BodyKind::Sse,
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => BodyKind::Ndjson,
            _ => BodyKind::Json,
        }
    }
}

/// The API a call went to, recognised from its path (SPEC §2: the path decides the wire format,
/// the provider's `kind` is only the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Responses,
    Embeddings,
    Messages,
    GenerateContent,
    StreamGenerateContent,
    OllamaChat,
    OllamaGenerate,
    ImagesGenerations,
    ImagesEdits,
    ImagesVariations,
    AudioTranscriptions,
    AudioTranslations,
    AudioSpeech,
    Other,
}

impl Endpoint {
    /// Recognises the endpoint from the path the provider sees (query excluded).
    pub fn from_path(path: &str) -> Endpoint {
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Endpoint::ChatCompletions
        } else if path.ends_with("/responses") {
            Endpoint::Responses
        } else if path.ends_with("/embeddings") {
            Endpoint::Embeddings
        } else if path.ends_with("/completions") {
            Endpoint::Completions
        } else if path.ends_with("/messages") {
            Endpoint::Messages
        } else if path.ends_with(":streamGenerateContent") {
            Endpoint::StreamGenerateContent
        } else if path.ends_with(":generateContent") {
            Endpoint::GenerateContent
        } else if path.ends_with("/api/chat") {
            Endpoint::OllamaChat
        } else if path.ends_with("/api/generate") {
            Endpoint::OllamaGenerate
        } else if path.ends_with("/images/generations") {
            Endpoint::ImagesGenerations
        } else if path.ends_with("/images/edits") {
            Endpoint::ImagesEdits
        } else if path.ends_with("/images/variations") {
            Endpoint::ImagesVariations
        } else if path.ends_with("/audio/transcriptions") {
            Endpoint::AudioTranscriptions
        } else if path.ends_with("/audio/translations") {
            Endpoint::AudioTranslations
        } else if path.ends_with("/audio/speech") {
            Endpoint::AudioSpeech
        } else {
            Endpoint::Other
        }
    }

    /// The name stored in the ledger's `endpoint` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Responses => "responses",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::GenerateContent => "generateContent",
            Endpoint::StreamGenerateContent => "streamGenerateContent",
            Endpoint::OllamaChat => "api.chat",
            Endpoint::OllamaGenerate => "api.generate",
            Endpoint::ImagesGenerations => "images.generations",
            Endpoint::ImagesEdits => "images.edits",
            Endpoint::ImagesVariations => "images.variations",
            Endpoint::AudioTranscriptions => "audio.transcriptions",
            Endpoint::AudioTranslations => "audio.translations",
            Endpoint::AudioSpeech => "audio.speech",
            Endpoint::Other => "other",
        }
    }
}

/// A non-streaming body kept whole up to a limit; past it, nothing is kept (the parsers' cap on
/// a JSON body they must read in one piece).
#[derive(Default)]
pub struct BoundedBody {
    bytes: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl BoundedBody {
    pub fn with_limit(limit: usize) -> Self {
        BoundedBody {
            bytes: Vec::new(),
            limit,
            overflowed: false,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.bytes.len().saturating_add(chunk.len()) > self.limit {
            self.overflowed = true;
            self.bytes = Vec::new();
            return;
        }
        self.bytes.extend_from_slice(chunk);
    }

    /// The whole body, or `None` if it outgrew the limit.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        let bytes = std::mem::take(&mut self.bytes);
        (!self.overflowed).then_some(bytes)
    }
}

impl std::fmt::Debug for BoundedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedBody")
            .field("len", &self.bytes.len())
            .field("limit", &self.limit)
            .field("overflowed", &self.overflowed)
            .finish()
    }
}

/// An incremental usage parser for one response body.
pub trait UsageParser: Send {
    /// Reads the next piece of the (decompressed) body; pieces may split anywhere, even inside
    /// a UTF-8 sequence or a line ending.
    fn feed(&mut self, chunk: &[u8]);
    /// Ends the body and returns what was read. Called once.
    fn finish(&mut self) -> ParsedUsage;
}

/// The parser for a response, or `None` when meter cannot read usage of this endpoint yet.
pub fn parser_for(context: &ParseContext) -> Option<Box<dyn UsageParser>> {
    use openai_responses as responses;
    match (context.endpoint, context.body) {
        (Endpoint::ChatCompletions, BodyKind::Sse) => {
            Some(Box::new(openai::ChatCompletionStream::new(context.flavor)))
        }
        (Endpoint::ChatCompletions, _) => {
            Some(Box::new(openai::ChatCompletionJson::new(context.flavor)))
        }
        (Endpoint::OllamaChat | Endpoint::OllamaGenerate, _) => {
            Some(Box::new(ollama::OllamaParser::default()))
        }
        (Endpoint::Messages, BodyKind::Json) => Some(Box::new(anthropic::MessagesJson::default())),
        (Endpoint::Messages, BodyKind::Sse) => Some(Box::new(anthropic::MessagesStream::default())),
        (Endpoint::GenerateContent, BodyKind::Json) => {
            Some(Box::new(gemini::GenerateContentJson::default()))
        }
        (Endpoint::GenerateContent | Endpoint::StreamGenerateContent, BodyKind::Sse) => {
            Some(Box::new(gemini::GenerateContentStream::sse()))
        }
        (Endpoint::StreamGenerateContent, BodyKind::Json) => {
            Some(Box::new(gemini::GenerateContentStream::json_array()))
        }
        (Endpoint::Responses, BodyKind::Sse) => {
            Some(Box::new(responses::ResponsesStream::default()))
        }
        (Endpoint::Responses, _) => Some(Box::new(responses::ResponsesJson::default())),
        (Endpoint::Completions, BodyKind::Sse) => {
            Some(Box::new(responses::CompletionsStream::default()))
        }
        (Endpoint::Completions, _) => Some(Box::new(responses::CompletionsJson::default())),
        (Endpoint::Embeddings, _) => Some(Box::new(responses::EmbeddingsJson::default())),
        (
            Endpoint::ImagesGenerations | Endpoint::ImagesEdits | Endpoint::ImagesVariations,
            BodyKind::Sse,
        ) => Some(Box::new(responses::ImagesStream::default())),
        (Endpoint::ImagesGenerations | Endpoint::ImagesEdits | Endpoint::ImagesVariations, _) => {
            Some(Box::new(responses::ImagesJson::default()))
        }
        (Endpoint::AudioTranscriptions | Endpoint::AudioTranslations, BodyKind::Sse) => {
            Some(Box::new(responses::TranscriptionStream::default()))
        }
        (Endpoint::AudioTranscriptions | Endpoint::AudioTranslations, _) => {
            Some(Box::new(responses::TranscriptionJson::default()))
        }
        (Endpoint::AudioSpeech, BodyKind::Sse) => {
            Some(Box::new(responses::SpeechStream::default()))
        }
        (Endpoint::AudioSpeech, _) => Some(Box::new(responses::NoUsage)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_and_body_kind_recognition() {
        let endpoints = [
            ("/v1/chat/completions", Endpoint::ChatCompletions),
            (
                "/openai/deployments/d/chat/completions",
                Endpoint::ChatCompletions,
            ),
            ("/v1beta/openai/chat/completions", Endpoint::ChatCompletions),
            ("/v1/completions", Endpoint::Completions),
            ("/v1/responses", Endpoint::Responses),
            ("/openai/v1/responses", Endpoint::Responses),
            ("/v1/embeddings", Endpoint::Embeddings),
            ("/v1/messages", Endpoint::Messages),
            (
                "/v1beta/models/gemini-2.5-pro:generateContent",
                Endpoint::GenerateContent,
            ),
            (
                "/v1/projects/p/locations/l/publishers/google/models/m:streamGenerateContent",
                Endpoint::StreamGenerateContent,
            ),
            ("/api/chat", Endpoint::OllamaChat),
            ("/api/generate", Endpoint::OllamaGenerate),
            ("/v1/images/generations", Endpoint::ImagesGenerations),
            ("/v1/audio/transcriptions", Endpoint::AudioTranscriptions),
            ("/v1/audio/speech", Endpoint::AudioSpeech),
            ("/v1/models", Endpoint::Other),
        ];
        for (path, want) in endpoints {
            assert_eq!(Endpoint::from_path(path), want, "{path}");
        }
        let kinds = [
            (Some("text/event-stream; charset=utf-8"), BodyKind::Sse),
            (Some("Text/Event-Stream"), BodyKind::Sse),
            (Some("application/x-ndjson"), BodyKind::Ndjson),
            (Some("application/json"), BodyKind::Json),
            (None, BodyKind::Json),
        ];
        for (content_type, want) in kinds {
            assert_eq!(
                BodyKind::from_content_type(content_type),
                want,
                "{content_type:?}"
            );
        }
    }

    #[test]
    fn flavor_from_name_then_host() {
        let cases = [
            ("xai", "127.0.0.1", Flavor::Xai),
            ("azure", "acme.openai.azure.com", Flavor::Azure),
            (
                "vertex",
                "us-central1-aiplatform.googleapis.com",
                Flavor::Vertex,
            ),
            ("or", "openrouter.ai", Flavor::OpenRouter),
            ("mine", "10.0.0.7", Flavor::Generic),
        ];
        for (name, host, want) in cases {
            assert_eq!(Flavor::detect(name, host), want, "{name} {host}");
        }
    }

    #[test]
    fn output_text_is_capped_on_a_char_boundary() {
        let mut text = OutputText::default();
        text.push(&"é".repeat(OutputText::CAP));
        assert!(text.text.len() <= OutputText::CAP);
        assert!(text.overflow_bytes > 0);
        assert_eq!(
            text.text.len() as u64 + text.overflow_bytes,
            2 * OutputText::CAP as u64
        );
    }
}
