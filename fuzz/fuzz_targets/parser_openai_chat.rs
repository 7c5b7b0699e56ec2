//! OpenAI chat completions (streamed and not) under every provider flavor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meter::usage::{BodyKind, Endpoint, Flavor, ParseContext};
use meter_fuzz::{check_parser, pick, split_input};

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

fuzz_target!(|data: &[u8]| {
    let (choice, seed, body) = split_input(data);
    let context = ParseContext {
        endpoint: Endpoint::ChatCompletions,
        body: pick(&[BodyKind::Sse, BodyKind::Json], choice),
        flavor: pick(FLAVORS, choice / 2),
    };
    check_parser(&context, body, seed);
});
