//! Token usage read out of provider responses: the disjoint buckets of SPEC §4 and one
//! incremental parser per wire format. Pure code: no IO, no clocks, no logging of bodies.
//!
//! A parser is fed the (decompressed) response body chunk by chunk as the client receives it,
//! keeps only the partial line or event it needs, and at the end says what it read. Failing to
//! read usage is data (`UsageStatus::Missing`), never an error and never zero tokens "reported".

pub mod openai;
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
    /// `Some` only when the provider's usage report was read in full.
    pub usage: Option<Usage>,
    /// The model as the response names it (e.g. a dated snapshot).
    pub model: Option<String>,
    /// The provider's id for the response (e.g. `chatcmpl-...`).
    pub request_id: Option<String>,
}

/// The body framing of a response, decided from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// One JSON document.
    Json,
    /// Server-sent events (`text/event-stream`).
    Sse,
}

impl BodyKind {
    pub fn from_content_type(content_type: Option<&str>) -> BodyKind {
        match content_type {
            Some(ct)
                if ct
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with("text/event-stream") =>
            {
                BodyKind::Sse
            }
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
            Endpoint::Other => "other",
        }
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
pub fn parser_for(endpoint: Endpoint, body: BodyKind) -> Option<Box<dyn UsageParser>> {
    match (endpoint, body) {
        (Endpoint::ChatCompletions, BodyKind::Json) => {
            Some(Box::new(openai::ChatCompletionJson::default()))
        }
        (Endpoint::ChatCompletions, BodyKind::Sse) => {
            Some(Box::new(openai::ChatCompletionStream::default()))
        }
        _ => None,
    }
}
