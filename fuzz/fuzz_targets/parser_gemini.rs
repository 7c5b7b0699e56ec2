//! Gemini and Vertex: generateContent, and streamGenerateContent as SSE or as a JSON array.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meter::usage::{BodyKind, Endpoint, Flavor, ParseContext};
use meter_fuzz::{check_parser, pick, split_input};

fuzz_target!(|data: &[u8]| {
    let (choice, seed, body) = split_input(data);
    let context = ParseContext {
        endpoint: pick(
            &[Endpoint::GenerateContent, Endpoint::StreamGenerateContent],
            choice / 2,
        ),
        body: pick(&[BodyKind::Sse, BodyKind::Json], choice),
        flavor: pick(&[Flavor::Gemini, Flavor::Vertex], choice / 4),
    };
    check_parser(&context, body, seed);
});
