//! Ollama's native API: /api/chat and /api/generate, NDJSON streams or one JSON object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meter::usage::{BodyKind, Endpoint, Flavor, ParseContext};
use meter_fuzz::{check_parser, pick, split_input};

fuzz_target!(|data: &[u8]| {
    let (choice, seed, body) = split_input(data);
    let context = ParseContext {
        endpoint: pick(
            &[Endpoint::OllamaChat, Endpoint::OllamaGenerate],
            choice / 2,
        ),
        body: pick(&[BodyKind::Ndjson, BodyKind::Json], choice),
        flavor: Flavor::Ollama,
    };
    check_parser(&context, body, seed);
});
