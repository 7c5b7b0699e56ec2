//! Properties of every parser over every fixture: any chunking reads the same as the whole body;
//! corrupted, truncated or spliced bodies never panic, read the same in any chunking, and never
//! read a report the body does not hold whole. Every parser `parser_for` can return is fed (a
//! test checks the corpus reaches each one), OpenAI-format bodies under every provider flavor,
//! and arbitrary bytes under every parse context.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use meter::usage::{parser_for, BodyKind, Endpoint, Flavor, ParseContext, ParsedUsage};
use proptest::prelude::*;

/// The parse context a fixture is read with, from its folder and name.
fn context_for(path: &Path) -> ParseContext {
    let folder = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|f| f.to_str())
        .unwrap_or("");
    let name = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let body = match ext {
        "sse" => BodyKind::Sse,
        "ndjson" => BodyKind::Ndjson,
        _ => BodyKind::Json,
    };
    let flavor = match folder {
        "openrouter" => Flavor::OpenRouter,
        "mistral" => Flavor::Mistral,
        "xai" => Flavor::Xai,
        "deepseek" => Flavor::DeepSeek,
        "groq" => Flavor::Groq,
        "vllm" => Flavor::Vllm,
        "ollama" => Flavor::Ollama,
        "azure" => Flavor::Azure,
        "anthropic" => Flavor::Anthropic,
        "gemini" => Flavor::Gemini,
        _ => Flavor::OpenAi,
    };
    let endpoint = match folder {
        "anthropic" => Endpoint::Messages,
        "gemini" if name.starts_with("stream") => Endpoint::StreamGenerateContent,
        "gemini" if name.starts_with("vertex_stream") => Endpoint::StreamGenerateContent,
        "gemini" => Endpoint::GenerateContent,
        "ollama" if name.starts_with("generate") => Endpoint::OllamaGenerate,
        "ollama" => Endpoint::OllamaChat,
        "openai_responses" => match name.split('_').next().unwrap_or("") {
            "responses" => Endpoint::Responses,
            "embeddings" => Endpoint::Embeddings,
            "completions" => Endpoint::Completions,
            "images" => Endpoint::ImagesGenerations,
            "transcription" => Endpoint::AudioTranscriptions,
            "translation" => Endpoint::AudioTranslations,
            "speech" => Endpoint::AudioSpeech,
            _ => Endpoint::Other,
        },
        _ => Endpoint::ChatCompletions,
    };
    let endpoint = if folder == "gemini" && name.starts_with("vertex_stream") {
        Endpoint::StreamGenerateContent
    } else {
        endpoint
    };
    ParseContext {
        endpoint,
        body,
        flavor,
    }
}

/// The fixture corpus, read once per test binary.
fn fixtures() -> Vec<(PathBuf, Vec<u8>)> {
    static CORPUS: std::sync::OnceLock<Vec<(PathBuf, Vec<u8>)>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(read_fixtures).clone()
}

fn read_fixtures() -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out = Vec::new();
    for folder in std::fs::read_dir(&root).unwrap() {
        let folder = folder.unwrap().path();
        if !folder.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&folder).unwrap() {
            let file = file.unwrap().path();
            let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
            if matches!(ext, "json" | "sse" | "ndjson" | "txt") && !file.ends_with("expected.json")
            {
                out.push((file.clone(), std::fs::read(&file).unwrap()));
            }
        }
    }
    out.sort();
    assert!(
        out.len() >= 50,
        "expected the fixture corpus, found {}",
        out.len()
    );
    out
}

fn parse(context: &ParseContext, chunks: &[&[u8]]) -> ParsedUsage {
    let mut parser = parser_for(context).unwrap_or_else(|| panic!("no parser for {context:?}"));
    for chunk in chunks {
        parser.feed(chunk);
    }
    let mut parsed = parser.finish();
    parsed.output_text = Default::default();
    parsed
}

/// Splits `body` at the given cut points (taken modulo its length).
fn chunked<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for point in points {
        out.push(&body[start..point]);
        start = point;
    }
    out.push(&body[start..]);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_chunking_reads_the_same(cuts in proptest::collection::vec(any::<usize>(), 1..40)) {
        for (path, body) in fixtures() {
            let context = context_for(&path);
            let whole = parse(&context, &[&body]);
            let pieces = chunked(&body, &cuts);
            prop_assert_eq!(parse(&context, &pieces), whole, "{}", path.display());
        }
    }

    #[test]
    fn corruption_never_panics_nor_invents_a_report(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        for (path, body) in fixtures() {
            let context = context_for(&path);
            let whole = parse(&context, &[&body]);
            let mut corrupted = body.clone();
            for (at, byte) in &flips {
                let at = at % corrupted.len().max(1);
                if let Some(b) = corrupted.get_mut(at) {
                    *b = *byte;
                }
            }
            // Never panics, whatever the bytes.
            let _ = parse(&context, &chunked(&corrupted, &cuts));
            // Truncated: either no report or the true one.
            let cut = cut % (body.len() + 1);
            let truncated = parse(&context, &chunked(&body[..cut], &cuts));
            if let Some(usage) = truncated.usage {
                prop_assert_eq!(Some(usage), whole.usage, "{} cut at {}", path.display(), cut);
            }
        }
    }
}

/// Every (endpoint, body) pair that selects a parser of its own in `parser_for`.
const PARSERS: &[(Endpoint, BodyKind)] = &[
    (Endpoint::ChatCompletions, BodyKind::Sse),
    (Endpoint::ChatCompletions, BodyKind::Json),
    (Endpoint::OllamaChat, BodyKind::Ndjson),
    (Endpoint::OllamaChat, BodyKind::Json),
    (Endpoint::OllamaGenerate, BodyKind::Ndjson),
    (Endpoint::OllamaGenerate, BodyKind::Json),
    (Endpoint::Messages, BodyKind::Json),
    (Endpoint::Messages, BodyKind::Sse),
    (Endpoint::GenerateContent, BodyKind::Json),
    (Endpoint::StreamGenerateContent, BodyKind::Sse),
    (Endpoint::StreamGenerateContent, BodyKind::Json),
    (Endpoint::Responses, BodyKind::Sse),
    (Endpoint::Responses, BodyKind::Json),
    (Endpoint::Completions, BodyKind::Sse),
    (Endpoint::Completions, BodyKind::Json),
    (Endpoint::Embeddings, BodyKind::Json),
    (Endpoint::ImagesGenerations, BodyKind::Sse),
    (Endpoint::ImagesGenerations, BodyKind::Json),
    (Endpoint::AudioTranscriptions, BodyKind::Sse),
    (Endpoint::AudioTranscriptions, BodyKind::Json),
    (Endpoint::AudioTranslations, BodyKind::Json),
    (Endpoint::AudioSpeech, BodyKind::Sse),
];

const ENDPOINTS: &[Endpoint] = &[
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Responses,
    Endpoint::Embeddings,
    Endpoint::Messages,
    Endpoint::GenerateContent,
    Endpoint::StreamGenerateContent,
    Endpoint::OllamaChat,
    Endpoint::OllamaGenerate,
    Endpoint::ImagesGenerations,
    Endpoint::ImagesEdits,
    Endpoint::ImagesVariations,
    Endpoint::AudioTranscriptions,
    Endpoint::AudioTranslations,
    Endpoint::AudioSpeech,
    Endpoint::Other,
];

const FLAVORS: &[Flavor] = &[
    Flavor::OpenAi,
    Flavor::Azure,
    Flavor::Anthropic,
    Flavor::Gemini,
    Flavor::Vertex,
    Flavor::OpenRouter,
    Flavor::Mistral,
    Flavor::Xai,
    Flavor::DeepSeek,
    Flavor::Groq,
    Flavor::Ollama,
    Flavor::Vllm,
    Flavor::Generic,
];

const BODIES: &[BodyKind] = &[BodyKind::Json, BodyKind::Sse, BodyKind::Ndjson];

#[test]
fn the_corpus_reaches_every_parser() {
    let contexts: Vec<ParseContext> = fixtures().iter().map(|(p, _)| context_for(p)).collect();
    for (endpoint, body) in PARSERS {
        assert!(
            contexts
                .iter()
                .any(|c| c.endpoint == *endpoint && c.body == *body),
            "no fixture is read by the parser for {endpoint:?} with a {body:?} body"
        );
    }
    // And the list above is complete: every context with a parser maps to one of its pairs
    // (the endpoints that share a parser aside).
    for endpoint in ENDPOINTS {
        for body in BODIES {
            let context = ParseContext {
                endpoint: *endpoint,
                body: *body,
                flavor: Flavor::OpenAi,
            };
            if parser_for(&context).is_none() {
                continue;
            }
            let shared = match endpoint {
                Endpoint::ImagesEdits | Endpoint::ImagesVariations => Endpoint::ImagesGenerations,
                Endpoint::GenerateContent if *body != BodyKind::Json => {
                    Endpoint::StreamGenerateContent
                }
                Endpoint::AudioTranslations if *body == BodyKind::Sse => {
                    Endpoint::AudioTranscriptions
                }
                other => *other,
            };
            let body = match (shared, body) {
                // Only SSE has a parser of its own; JSON and NDJSON bodies share one.
                (Endpoint::ChatCompletions, BodyKind::Ndjson)
                | (Endpoint::Responses, BodyKind::Ndjson)
                | (Endpoint::Completions, BodyKind::Ndjson)
                | (Endpoint::ImagesGenerations, BodyKind::Ndjson)
                | (Endpoint::AudioTranscriptions, BodyKind::Ndjson)
                | (Endpoint::AudioTranslations, BodyKind::Ndjson)
                | (Endpoint::Embeddings, _) => BodyKind::Json,
                (Endpoint::OllamaChat | Endpoint::OllamaGenerate, BodyKind::Sse) => {
                    BodyKind::Ndjson
                }
                (Endpoint::AudioSpeech, BodyKind::Json | BodyKind::Ndjson) => continue,
                _ => *body,
            };
            assert!(
                PARSERS.contains(&(shared, body)),
                "{context:?} has a parser the corpus does not reach"
            );
        }
    }
}

/// The OpenAI-format chat fixtures (every flavor's folder).
fn chat_fixtures() -> Vec<(PathBuf, Vec<u8>)> {
    fixtures()
        .into_iter()
        .filter(|(path, _)| context_for(path).endpoint == Endpoint::ChatCompletions)
        .collect()
}

/// Applies structural edits: flips, deletions, insertions of bytes that matter to the framings
/// and to JSON, and a duplicated range (a spliced, repeated piece of stream).
fn corrupt(
    body: &[u8],
    edits: &[(usize, u8, u8)],
    splice: Option<(usize, usize, usize)>,
) -> Vec<u8> {
    const STRUCTURAL: &[&[u8]] = &[
        b"\n",
        b"\r",
        b"\r\n",
        b"\n\n",
        b"\"",
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b"\0",
        b"\xff",
        b"data: ",
        b"data: [DONE]\n\n",
        b"event: ",
        b"\"usage\":",
        b"\\",
        b"\xEF\xBB\xBF",
        b"1e999",
        b"-1",
        b"18446744073709551616",
    ];
    let mut out = body.to_vec();
    for (at, byte, kind) in edits {
        let at = at % (out.len() + 1);
        match kind % 4 {
            0 if at < out.len() => out[at] = *byte,
            1 if at < out.len() => {
                out.remove(at);
            }
            2 => {
                let piece = STRUCTURAL[usize::from(*byte) % STRUCTURAL.len()];
                out.splice(at..at, piece.iter().copied());
            }
            _ => out.insert(at, *byte),
        }
    }
    if let Some((from, len, to)) = splice {
        if !out.is_empty() {
            let from = from % out.len();
            let len = len % (out.len() - from + 1);
            let piece = out[from..from + len].to_vec();
            let to = to % (out.len() + 1);
            out.splice(to..to, piece);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// OpenAI-format bodies under every provider flavor (Gemini's, Anthropic's and Ollama's
    /// OpenAI-compatible endpoints included): any chunking reads the same, truncation never
    /// invents a report.
    #[test]
    fn every_flavor_reads_chat_bodies_the_same_in_any_chunking(
        cuts in proptest::collection::vec(any::<usize>(), 1..24),
        cut in any::<usize>(),
    ) {
        for (path, body) in chat_fixtures() {
            for flavor in FLAVORS {
                let context = ParseContext { flavor: *flavor, ..context_for(&path) };
                let whole = parse(&context, &[&body]);
                prop_assert_eq!(
                    parse(&context, &chunked(&body, &cuts)),
                    whole.clone(),
                    "{} as {:?}", path.display(), flavor
                );
                let cut = cut % (body.len() + 1);
                if let Some(usage) = parse(&context, &chunked(&body[..cut], &cuts)).usage {
                    prop_assert_eq!(Some(usage), whole.usage, "{} as {:?} cut at {}", path.display(), flavor, cut);
                }
            }
        }
    }

    /// Structurally corrupted bodies (line ends, quotes, braces, NULs, BOMs, huge numbers,
    /// duplicated stretches) never panic and read the same in any chunking.
    #[test]
    fn structural_corruption_reads_the_same_in_any_chunking(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..10),
        splice in proptest::option::of((any::<usize>(), any::<usize>(), any::<usize>())),
        cuts in proptest::collection::vec(any::<usize>(), 1..24),
    ) {
        for (path, body) in fixtures() {
            let context = context_for(&path);
            let corrupted = corrupt(&body, &edits, splice);
            let whole = parse(&context, &[&corrupted]);
            prop_assert_eq!(
                parse(&context, &chunked(&corrupted, &cuts)),
                whole,
                "{} corrupted", path.display()
            );
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary bytes under every parse context (any endpoint, body kind and flavor, including
    /// pairings no provider sends) never panic, and read the same fed whole or byte by byte.
    #[test]
    fn arbitrary_bytes_under_any_context_never_panic(
        bytes in proptest::collection::vec(
            prop_oneof![
                4 => any::<u8>(),
                1 => Just(b'\n'),
                1 => Just(b'{'),
                1 => Just(b'"'),
            ],
            0..400,
        ),
        prefix in proptest::sample::select(vec![
            &b""[..], b"data: {", b"[{", b"{\"usage\":{", b"{\"done\":true,", b"event: message_delta\ndata: {",
        ]),
        endpoint in proptest::sample::select(ENDPOINTS),
        body in proptest::sample::select(BODIES),
        flavor in proptest::sample::select(FLAVORS),
        cuts in proptest::collection::vec(any::<usize>(), 0..24),
    ) {
        let context = ParseContext { endpoint, body, flavor };
        if parser_for(&context).is_some() {
            let stream = [prefix, &bytes].concat();
            let whole = parse(&context, &[&stream]);
            prop_assert_eq!(parse(&context, &chunked(&stream, &cuts)), whole.clone());
            let single: Vec<&[u8]> = stream.chunks(1).collect();
            prop_assert_eq!(parse(&context, &single), whole);
        }
    }
}
