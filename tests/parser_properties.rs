//! Properties of every parser over every fixture: any chunking reads the same as the whole body;
//! corrupted, truncated or spliced bodies never panic and never read a report the body does not
//! hold whole.
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

fn fixtures() -> Vec<(PathBuf, Vec<u8>)> {
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
