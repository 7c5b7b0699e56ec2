//! How close the estimator's output count comes to what providers reported, over every stream
//! fixture whose report covers visible text only (no hidden reasoning). Prints a table; run with
//! `cargo test --test estimate_accuracy -- --ignored --nocapture`. The fixtures' counts follow
//! the providers' documented examples and captures, so this measures the tokenizer gap (meter
//! counts with OpenAI's o200k_base), not a live sample.
#![allow(clippy::unwrap_used)]

use meter::usage::estimate::{estimate, EstimateInput};
use meter::usage::{parser_for, BodyKind, Endpoint, Flavor, ParseContext};

#[test]
#[ignore = "prints a measurement; not a pass/fail check"]
fn estimator_error_per_provider() {
    let cases = [
        (
            "openai/chat_stream_include_usage.sse",
            Endpoint::ChatCompletions,
            Flavor::OpenAi,
        ),
        (
            "openai/chat_stream_tool_calls.sse",
            Endpoint::ChatCompletions,
            Flavor::OpenAi,
        ),
        (
            "anthropic/stream_plain.sse",
            Endpoint::Messages,
            Flavor::Anthropic,
        ),
        (
            "anthropic/stream_tool_use.sse",
            Endpoint::Messages,
            Flavor::Anthropic,
        ),
        (
            "gemini/stream_running_usage.sse",
            Endpoint::StreamGenerateContent,
            Flavor::Gemini,
        ),
        (
            "mistral/chat_stream.sse",
            Endpoint::ChatCompletions,
            Flavor::Mistral,
        ),
        (
            "groq/chat_stream_x_groq.sse",
            Endpoint::ChatCompletions,
            Flavor::Groq,
        ),
        (
            "vllm/chat_stream_continuous.sse",
            Endpoint::ChatCompletions,
            Flavor::Vllm,
        ),
    ];
    println!(
        "{:<44} {:>9} {:>9} {:>7}",
        "fixture", "reported", "estimate", "error"
    );
    for (fixture, endpoint, flavor) in cases {
        let body = std::fs::read(format!(
            "{}/tests/fixtures/{fixture}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let mut parser = parser_for(&ParseContext {
            endpoint,
            body: BodyKind::Sse,
            flavor,
        })
        .unwrap();
        parser.feed(&body);
        let parsed = parser.finish();
        let reported = parsed.usage.unwrap();
        let visible = reported.output_tokens - reported.reasoning_tokens;
        let estimated = estimate(&EstimateInput {
            partial: Some(Default::default()),
            output_text: parsed.output_text,
            ..EstimateInput::default()
        })
        .unwrap()
        .output_tokens;
        let error = (estimated as f64 - visible as f64) / visible.max(1) as f64 * 100.0;
        println!("{fixture:<44} {visible:>9} {estimated:>9} {error:>+6.0}%");
    }
}
