//! OpenAI's non-chat parsers (Responses, legacy completions, embeddings, images, audio) on real
//! wire bodies from `tests/fixtures/openai_responses/`, fed whole, split at every byte, byte by
//! byte, and cut short at every byte. Reads fixtures only; no network, no ledger.
#![allow(clippy::unwrap_used)]

mod support;

use meter::usage::openai_responses::{
    CompletionsJson, CompletionsStream, EmbeddingsJson, ImagesJson, ImagesStream, NoUsage,
    ResponsesJson, ResponsesStream, SpeechStream, TranscriptionJson, TranscriptionStream,
};
use meter::usage::{ParsedUsage, Quantities, Usage, UsageParser};
use support::parsing::{check_fixture, fixture_bytes, usage_event_end};

const DIR: &str = "openai_responses";

type Make = fn() -> Box<dyn UsageParser>;

fn responses_json() -> Box<dyn UsageParser> {
    Box::new(ResponsesJson::default())
}
fn responses_stream() -> Box<dyn UsageParser> {
    Box::new(ResponsesStream::default())
}
fn completions_json() -> Box<dyn UsageParser> {
    Box::new(CompletionsJson::default())
}
fn completions_stream() -> Box<dyn UsageParser> {
    Box::new(CompletionsStream::default())
}
fn embeddings_json() -> Box<dyn UsageParser> {
    Box::new(EmbeddingsJson::default())
}
fn images_json() -> Box<dyn UsageParser> {
    Box::new(ImagesJson::default())
}
fn images_stream() -> Box<dyn UsageParser> {
    Box::new(ImagesStream::default())
}
fn transcription_json() -> Box<dyn UsageParser> {
    Box::new(TranscriptionJson::default())
}
fn transcription_stream() -> Box<dyn UsageParser> {
    Box::new(TranscriptionStream::default())
}
fn speech_stream() -> Box<dyn UsageParser> {
    Box::new(SpeechStream::default())
}
fn no_usage() -> Box<dyn UsageParser> {
    Box::new(NoUsage)
}

/// What one fixture must parse to; `text` is the exact output text kept for the estimator.
struct Case {
    fixture: &'static str,
    make: Make,
    usage: Option<Usage>,
    model: Option<&'static str>,
    request_id: Option<&'static str>,
    quantities: Quantities,
    text: &'static str,
}

fn usage(input: u64, cache_read: u64, output: u64, reasoning: u64) -> Option<Usage> {
    Some(Usage {
        input_tokens: input,
        cache_read_tokens: cache_read,
        output_tokens: output,
        reasoning_tokens: reasoning,
        ..Usage::default()
    })
}

fn case(fixture: &'static str, make: Make, usage: Option<Usage>) -> Case {
    Case {
        fixture,
        make,
        usage,
        model: None,
        request_id: None,
        quantities: Quantities::default(),
        text: "",
    }
}

impl Case {
    fn ids(mut self, model: &'static str, request_id: &'static str) -> Case {
        self.model = Some(model);
        self.request_id = Some(request_id);
        self
    }
    fn model(mut self, model: &'static str) -> Case {
        self.model = Some(model);
        self
    }
    fn quantities(mut self, quantities: Quantities) -> Case {
        self.quantities = quantities;
        self
    }
    fn text(mut self, text: &'static str) -> Case {
        self.text = text;
        self
    }
    fn expected(&self) -> ParsedUsage {
        ParsedUsage {
            usage: self.usage,
            model: self.model.map(str::to_owned),
            request_id: self.request_id.map(str::to_owned),
            quantities: self.quantities.clone(),
            ..ParsedUsage::default()
        }
    }
}

fn images(count: u64, size: Option<&str>, quality: Option<&str>) -> Quantities {
    Quantities {
        images: count,
        image_size: size.map(str::to_owned),
        image_quality: quality.map(str::to_owned),
        ..Quantities::default()
    }
}

/// One row per fixture file. Responses: input = input_tokens - cached_tokens, cache_read =
/// cached_tokens, output = output_tokens (reasoning included), reasoning = reasoning_tokens.
fn cases() -> Vec<Case> {
    vec![
        // Responses API, JSON.
        case("responses_plain.json", responses_json, usage(19, 0, 58, 0))
            .ids("gpt-4.1-mini-2025-04-14", "resp_68c2b7f1a0d48195b3e6f2c9d1a7e40b0d5f3c2a1b9e8d7c")
            .text("A borrow checker is the part of the Rust compiler that enforces ownership rules at compile time: every value has one owner, and references to it must never outlive it or alias a mutable borrow. It rejects code that could cause data races or use-after-free, so those bugs never reach runtime."),
        // input 3018 of which 2816 cached; output 1142 of which 960 reasoning.
        case("responses_reasoning_cached.json", responses_json, usage(202, 2816, 1142, 960))
            .ids("o4-mini-2025-04-16", "resp_68c2b9d04e788196a1f3c5e7b9d2a4c60e8a6b4c2d0f1e3a")
            .text("**Checking the loop bounds**\n\nThe loop runs to `len` inclusive, so the last iteration indexes one past the end of the slice. That panics in debug and release builds alike.The loop `for i in 0..=len` reads `items[len]`, which is out of bounds: use `0..len` (or iterate `items.iter()` directly). Everything else in the diff looks correct."),
        case("responses_function_call.json", responses_json, usage(291, 0, 23, 0))
            .ids("gpt-4.1-2025-04-14", "resp_68c2bb2e7d1c8190b5d7f9a1c3e5a7b90f2e4d6c8a0b1c3d")
            .text("{\"location\":\"Paris, France\",\"unit\":\"celsius\"}"),
        // Two `web_search_call` items; their search content is already in input_tokens.
        case("responses_web_search.json", responses_json, usage(9143, 0, 412, 0))
            .ids("gpt-4.1-2025-04-14", "resp_68c2bc8a1f5481979c2e4a6c8e0a2c4e06b8d0f2a4c6e8a0")
            .quantities(Quantities { web_search_calls: 2, ..Quantities::default() })
            .text("Rust 1.90.0 was released on September 18, 2025. It makes LLD the default linker on x86_64 Linux. ([blog.rust-lang.org](https://blog.rust-lang.org/2025/09/18/Rust-1.90.0/?utm_source=openai))"),
        // Responses API, SSE. input 1523 of which 1408 cached; output 612 of which 448 reasoning.
        case("responses_stream_completed.sse", responses_stream, usage(115, 1408, 612, 448))
            .ids("gpt-5-mini-2025-08-07", "resp_68c2be41b7f88193a0c2e4f6a8b0c2d40a1c3e5f7b9d1f3a")
            .text("**Comparing lifetimes**\n\nThe user wants a short answer; one sentence on elision is enough.Lifetime elision lets the compiler infer reference lifetimes in common function signatures, so you only write them when it is ambiguous."),
        // `response.incomplete` (max_output_tokens 16) still reports what was billed.
        case("responses_stream_incomplete.sse", responses_stream, usage(22, 0, 16, 0))
            .ids("gpt-4o-mini-2024-07-18", "resp_68c2c0157e3c819a8d0f2b4d6f8a0c2e09d1f3b5d7f9b1d3")
            .text("Once upon a time, in a quiet village nestled between rolling hills, there lived"),
        // `response.failed` with `"usage": null`.
        case("responses_stream_failed.sse", responses_stream, None)
            .ids("gpt-4.1-2025-04-14", "resp_68c2c1a9f04c8198b4d6f8a0c2e4a6c805e7a9c1e3a5c7e9"),
        // An `error` event and no terminal event.
        case("responses_stream_error.sse", responses_stream, None)
            .ids("o3-2025-04-16", "resp_68c2c2e0a5b0819cb7e9a1c3e5a7c9e103f5a7c9e1a3c5e7"),
        case("responses_stream_function_call.sse", responses_stream, usage(284, 0, 19, 0))
            .ids("gpt-4.1-2025-04-14", "resp_68c2c3f6d2e8819da6c8e0a2c4e6a8c00c2e4a6c8e0a2c4e")
            .text("{\"location\":\"Tokyo, Japan\",\"unit\":\"celsius\"}"),
        case("responses_stream_web_search.sse", responses_stream, usage(8437, 0, 61, 0))
            .ids("gpt-4.1-mini-2025-04-14", "resp_68c2c53b8e1c8192b0d2f4a6c8e0b2d4017f9b1d3f5a7c9e")
            .quantities(Quantities { web_search_calls: 1, ..Quantities::default() })
            .text("Lisbon is sunny today with a high of 27 °C and a light north wind. ([ipma.pt](https://www.ipma.pt/en/otempo/prev.localidade.hora/?utm_source=openai))"),
        // Embeddings: prompt_tokens is the only billed count.
        case("embeddings_float.json", embeddings_json, usage(17, 0, 0, 0)).model("text-embedding-3-small"),
        case("embeddings_base64.json", embeddings_json, usage(9, 0, 0, 0)).model("text-embedding-3-large"),
        // Legacy completions.
        case("completions_plain.json", completions_json, usage(41, 0, 27, 0))
            .ids("gpt-3.5-turbo-instruct:20230824-v2", "cmpl-CE8rT3vYq1NwKx5bZmH7pLcJdGsAf")
            .text("\n\nThe borrow checker rejects the program because `v` is borrowed immutably by `first` while `push` needs a mutable borrow."),
        case("completions_stream.sse", completions_stream, usage(12, 0, 13, 0))
            .ids("gpt-3.5-turbo-instruct:20230824-v2", "cmpl-CE8tQ7wXn2MvLz6cYkJ8rPbHfDaGe")
            .text("\n\n1. Check ownership\n2. Check borrows\n3."),
        // Images: gpt-image-1, n=2, text-only input.
        case("images_gpt_image_1.json", images_json, usage(21, 0, 2112, 0))
            .quantities(images(2, Some("1024x1024"), Some("medium"))),
        // An edit: 323 of the 344 input tokens are image tokens (priced higher, same bucket).
        case("images_edit_gpt_image_1.json", images_json, usage(344, 0, 6240, 0))
            .quantities(images(1, Some("1024x1536"), Some("high"))),
        // DALL·E 3 reports no usage and does not echo size or quality.
        case("images_dalle3.json", images_json, None).quantities(images(1, None, None)),
        // One partial image, then the completed image with its usage.
        case("images_stream.sse", images_stream, usage(16, 0, 372, 0))
            .quantities(images(1, Some("1024x1024"), Some("low"))),
        // Audio: 145 input tokens of which 133 audio.
        case("transcription_tokens.json", transcription_json, usage(145, 0, 31, 0))
            .quantities(Quantities { audio_input_tokens: 133, ..Quantities::default() })
            .text("Hi, this is Maria from the billing team. I'm calling about invoice 4471, which is still open. Could you call me back before Friday?"),
        // whisper-1 bills the rounded-up duration in `usage.seconds`, not `duration` (8.47).
        case("transcription_whisper_verbose.json", transcription_json, Some(Usage::default()))
            .quantities(Quantities { audio_millis: 9000, ..Quantities::default() })
            .text("The meeting is moved to Thursday at ten. Please bring the quarterly numbers and the draft budget."),
        case("translation_whisper.json", transcription_json, None)
            .text("Hello, my name is Lukas and I am calling from Munich about the delivery of the new chairs."),
        case("transcription_text.txt", transcription_json, None)
            .text("Thanks for calling. Your order shipped this morning and should arrive on Tuesday.\n"),
        case("transcription_stream.sse", transcription_stream, usage(59, 0, 11, 0))
            .quantities(Quantities { audio_input_tokens: 59, ..Quantities::default() })
            .text("Thanks for calling. Your order shipped this morning."),
        // gpt-4o-mini-tts with stream_format "sse": output tokens are audio tokens.
        case("speech_stream.sse", speech_stream, usage(12, 0, 186, 0))
            .quantities(Quantities { audio_output_tokens: 186, ..Quantities::default() }),
    ]
}

fn run(make: Make, chunks: &[&[u8]]) -> ParsedUsage {
    support::parsing::run(&make, chunks)
}

fn check(case: &Case) {
    let path = format!("{DIR}/{}", case.fixture);
    check_fixture(&path, &|| (case.make)(), &case.expected());

    let body = fixture_bytes(&path);
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    for (how, parsed) in [
        ("whole", run(case.make, &[&body])),
        ("single bytes", run(case.make, &bytes)),
    ] {
        assert_eq!(
            parsed.output_text.text, case.text,
            "{path}: {how}: output text"
        );
        assert_eq!(parsed.output_text.overflow_bytes, 0, "{path}: {how}");
    }

    if case.fixture.ends_with(".sse") && case.usage.is_some() {
        let end = usage_event_end(&body).unwrap();
        for cut in end..body.len() {
            assert_eq!(
                run(case.make, &[&body[..cut]]).usage,
                case.usage,
                "{path}: cut at {cut}, after the usage event"
            );
        }
    }
}

#[test]
fn fixtures_parse_in_every_chunking() {
    let cases = cases();
    // Each case is quadratic in its body length; run them side by side.
    std::thread::scope(|scope| {
        for case in &cases {
            scope.spawn(|| check(case));
        }
    });
}

/// A fixture added to the directory without a row here would silently go untested.
#[test]
fn every_fixture_has_a_case() {
    let cases = cases();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(DIR);
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            cases.iter().any(|case| case.fixture == name),
            "{DIR}/{name} has no case"
        );
    }
}

/// Speech answered as raw audio has no usage, and the parser reads none of it.
#[test]
fn raw_speech_audio_reads_nothing() {
    // An MP3 frame header followed by arbitrary audio bytes, with `{`, quotes and newlines.
    let mut audio = vec![0xFF, 0xFB, 0x90, 0x64];
    audio.extend((0..64 * 1024).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    audio.extend_from_slice(b"{\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}\ndata: {}\n\n");
    let parsed = run(no_usage, &[&audio]);
    assert_eq!(parsed, ParsedUsage::default());
}

/// The image-generation tool inside a Responses call is counted as an image.
#[test]
fn responses_image_generation_calls_count_as_images() {
    let body = br#"{"id":"resp_1","object":"response","model":"gpt-4.1-2025-04-14","status":"completed",
        "output":[{"id":"ig_1","type":"image_generation_call","status":"completed","background":"opaque",
        "output_format":"png","quality":"medium","result":"iVBORw0KGgo=","revised_prompt":"a fox","size":"1024x1024"},
        {"id":"msg_1","type":"message","status":"completed","role":"assistant","content":[]}],
        "usage":{"input_tokens":2302,"input_tokens_details":{"cached_tokens":0},"output_tokens":37,
        "output_tokens_details":{"reasoning_tokens":0},"total_tokens":2339}}"#;
    let parsed = run(responses_json, &[body]);
    assert_eq!(parsed.usage, usage(2302, 0, 37, 0));
    assert_eq!(
        parsed.quantities,
        images(1, Some("1024x1024"), Some("medium"))
    );
}
