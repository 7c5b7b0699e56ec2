//! Parser throughput (criterion): a long SSE stream of each wire format, fed in 4 KiB reads as
//! the tee would see it, in MB/s. Run: `cargo bench --bench parsers`.
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meter::usage::{parser_for, BodyKind, Endpoint, Flavor, ParseContext};

const EVENTS: usize = 20_000;

fn openai_stream() -> Vec<u8> {
    let mut body = String::new();
    for i in 0..EVENTS {
        body.push_str(&format!("data: {{\"id\":\"chatcmpl-CE4nL8qYw3XzRk1pTsVb7NdHgJmFa\",\"object\":\"chat.completion.chunk\",\"created\":1757000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_560af6e559\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" token{i}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null,\"obfuscation\":\"aB3dE\"}}\n\n"));
    }
    body.push_str("data: {\"id\":\"chatcmpl-CE4nL8qYw3XzRk1pTsVb7NdHgJmFa\",\"object\":\"chat.completion.chunk\",\"created\":1757000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":20000,\"total_tokens\":20012}}\n\ndata: [DONE]\n\n");
    body.into_bytes()
}

fn anthropic_stream() -> Vec<u8> {
    let mut body = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
    for i in 0..EVENTS {
        body.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\" token{i}\"}}}}\n\n"));
    }
    body.push_str("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":20000}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    body.into_bytes()
}

fn gemini_stream() -> Vec<u8> {
    let mut body = String::new();
    for i in 0..EVENTS {
        let finish = if i + 1 == EVENTS {
            ",\"finishReason\": \"STOP\""
        } else {
            ""
        };
        body.push_str(&format!("data: {{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": \" token{i}\"}}],\"role\": \"model\"}}{finish},\"index\": 0}}],\"usageMetadata\": {{\"promptTokenCount\": 9,\"candidatesTokenCount\": {i},\"totalTokenCount\": {}}},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"kLnGaJ7vNd6T1e8PxPSbsQs\"}}\r\n\r\n", i + 9));
    }
    body.into_bytes()
}

fn bench(c: &mut Criterion) {
    let cases = [
        (
            "openai_chat_sse",
            Endpoint::ChatCompletions,
            Flavor::OpenAi,
            openai_stream(),
        ),
        (
            "anthropic_messages_sse",
            Endpoint::Messages,
            Flavor::Anthropic,
            anthropic_stream(),
        ),
        (
            "gemini_stream_sse",
            Endpoint::StreamGenerateContent,
            Flavor::Gemini,
            gemini_stream(),
        ),
    ];
    let mut group = c.benchmark_group("parse");
    group.sample_size(20);
    for (name, endpoint, flavor, body) in cases {
        let context = ParseContext {
            endpoint,
            body: BodyKind::Sse,
            flavor,
        };
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut parser = parser_for(&context).unwrap();
                for chunk in body.chunks(4096) {
                    parser.feed(chunk);
                }
                let parsed = parser.finish();
                assert!(parsed.usage.is_some());
                parsed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
