//! Anthropic Messages, streamed and not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meter::usage::{BodyKind, Endpoint, Flavor, ParseContext};
use meter_fuzz::{check_parser, pick, split_input};

fuzz_target!(|data: &[u8]| {
    let (choice, seed, body) = split_input(data);
    let context = ParseContext {
        endpoint: Endpoint::Messages,
        body: pick(&[BodyKind::Sse, BodyKind::Json], choice),
        flavor: Flavor::Anthropic,
    };
    check_parser(&context, body, seed);
});
