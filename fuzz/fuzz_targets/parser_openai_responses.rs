//! OpenAI's other endpoints: Responses, legacy completions, embeddings, images, audio.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meter::usage::{BodyKind, Endpoint, Flavor, ParseContext};
use meter_fuzz::{check_parser, pick, split_input};

const ENDPOINTS: &[Endpoint] = &[
    Endpoint::Responses,
    Endpoint::Completions,
    Endpoint::Embeddings,
    Endpoint::ImagesGenerations,
    Endpoint::ImagesEdits,
    Endpoint::AudioTranscriptions,
    Endpoint::AudioTranslations,
    Endpoint::AudioSpeech,
];

fuzz_target!(|data: &[u8]| {
    let (choice, seed, body) = split_input(data);
    let context = ParseContext {
        endpoint: pick(ENDPOINTS, choice / 2),
        body: pick(&[BodyKind::Sse, BodyKind::Json], choice),
        flavor: Flavor::OpenAi,
    };
    check_parser(&context, body, seed);
});
