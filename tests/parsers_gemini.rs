//! Gemini API and Vertex AI usage parsers on real wire bodies from `tests/fixtures/gemini/`, fed
//! whole, split at every byte, byte by byte, and cut short at every byte. Reads fixtures only; no
//! network, no ledger.
#![allow(clippy::unwrap_used)]

mod support;

use meter::usage::gemini::{GenerateContentJson, GenerateContentStream};
use meter::usage::{ParsedUsage, Quantities, Usage, UsageParser};
use support::parsing::{check_fixture, fixture_bytes};

/// Which parser a fixture is read with, as `parser_for` should pick it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Parser {
    /// `(GenerateContent, Json)`.
    Json,
    /// `(StreamGenerateContent, Sse)`: `?alt=sse`.
    Sse,
    /// `(StreamGenerateContent, Json)`: no `alt=sse`, or an error returned before streaming.
    JsonArray,
}

impl Parser {
    fn make(self) -> Box<dyn UsageParser> {
        match self {
            Parser::Json => Box::new(GenerateContentJson::default()),
            Parser::Sse => Box::new(GenerateContentStream::sse()),
            Parser::JsonArray => Box::new(GenerateContentStream::json_array()),
        }
    }
}

/// What one fixture must parse to. `total` is the fixture's (last) `totalTokenCount`, which
/// must equal input + cache_read + output of the (partial) report: Gemini's total is
/// prompt + candidates + thoughts + tool-use prompt.
struct Case {
    fixture: &'static str,
    parser: Parser,
    usage: Option<Usage>,
    partial: Option<Usage>,
    total: Option<u64>,
    audio_input_tokens: u64,
    model: Option<&'static str>,
    request_id: Option<&'static str>,
    /// The whole output text collected from the whole body.
    text: &'static str,
}

const fn tokens(input: u64, cache_read: u64, output: u64, reasoning: u64) -> Option<Usage> {
    Some(Usage {
        input_tokens: input,
        cache_read_tokens: cache_read,
        cache_write_tokens: 0,
        cache_write_1h_tokens: 0,
        output_tokens: output,
        reasoning_tokens: reasoning,
    })
}

/// One row per fixture (and parser). Gemini buckets: input = prompt - cached + toolUsePrompt,
/// cache_read = cached, output = candidates + thoughts, reasoning = thoughts.
const CASES: &[Case] = &[
    Case {
        fixture: "gemini/generate_content_plain.json",
        parser: Parser::Json,
        usage: tokens(12, 0, 38, 0),
        partial: None,
        total: Some(50),
        audio_input_tokens: 0,
        model: Some("gemini-2.0-flash"),
        request_id: Some("mNTGaPzsK6Kl1MkP7tWWsQ4"),
        text: "Rust's borrow checker enforces, at compile time, that every value has a single owner and that references never outlive the data they point to, so memory safety comes without a garbage collector.\n",
    },
    Case {
        // includeThoughts: the thought summary is a part with `"thought": true`.
        fixture: "gemini/generate_content_thinking.json",
        parser: Parser::Json,
        usage: tokens(31, 0, 974, 900),
        partial: None,
        total: Some(1005),
        audio_input_tokens: 0,
        model: Some("gemini-2.5-pro"),
        request_id: Some("Wt7GaJGBJN2Xz7IPxLyEmQs"),
        text: "**Evaluating the Riddle**\n\nI'm working through the classic bat-and-ball problem. The intuitive answer of ten cents fails the check: the bat would then cost $1.10 and the total $1.20. Setting the ball to x gives x + (x + 1.00) = 1.10, so 2x = 0.10 and the ball costs five cents.\n\n\nThe ball costs **$0.05** (five cents).\n\nIf the ball costs x, the bat costs x + $1.00, so x + (x + $1.00) = $1.10. That gives 2x = $0.10, so x = $0.05, and the bat costs $1.05.",
    },
    Case {
        // Implicit caching: prompt 12483 of which 11264 cached; thoughts 412.
        fixture: "gemini/generate_content_cached.json",
        parser: Parser::Json,
        usage: tokens(1219, 11264, 453, 412),
        partial: None,
        total: Some(12936),
        audio_input_tokens: 0,
        model: Some("gemini-2.5-flash"),
        request_id: Some("8uDGaKOaGcjb1e8P2ZGo0Q0"),
        text: "Section 4.2 of the agreement caps the supplier's liability at the fees paid in the twelve months before the claim, except for breaches of confidentiality and indemnity obligations, which are uncapped.",
    },
    Case {
        fixture: "gemini/generate_content_function_call.json",
        parser: Parser::Json,
        usage: tokens(87, 0, 87, 63),
        partial: None,
        total: Some(174),
        audio_input_tokens: 0,
        model: Some("gemini-2.5-flash"),
        request_id: Some("VOPGaMbQDc2b1e8Pm8a_yAk"),
        text: "get_current_weather{\"location\":\"Boston, MA\",\"unit\":\"celsius\"}",
    },
    Case {
        // Code execution: 147 tool-use prompt tokens, outside promptTokenCount, billed as input.
        fixture: "gemini/generate_content_code_execution.json",
        parser: Parser::Json,
        usage: tokens(185, 0, 301, 205),
        partial: None,
        total: Some(486),
        audio_input_tokens: 0,
        model: Some("gemini-2.5-flash"),
        request_id: Some("J-XGaPH3MfqP1e8Pn5ijqAo"),
        text: "def is_prime(n):\n    if n < 2:\n        return False\n    for i in range(2, int(n**0.5) + 1):\n        if n % i == 0:\n            return False\n    return True\n\nprimes = []\nnum = 2\nwhile len(primes) < 50:\n    if is_prime(num):\n        primes.append(num)\n    num += 1\n\nprint(f'{sum(primes)=}')\nThe sum of the first 50 prime numbers is **5117**.",
    },
    Case {
        // Audio understanding: 1600 of the 1611 prompt tokens are audio.
        fixture: "gemini/generate_content_audio.json",
        parser: Parser::Json,
        usage: tokens(1611, 0, 41, 0),
        partial: None,
        total: Some(1652),
        audio_input_tokens: 1600,
        model: Some("gemini-2.0-flash"),
        request_id: Some("x-fGaKmHFomT1e8P9MmG4Qw"),
        text: "The speaker welcomes listeners to the weekly engineering update, announces that the storage migration finished two days ahead of schedule, and asks every team to review the new on-call rota before Friday.",
    },
    Case {
        // A blocked prompt: no candidates, the prompt is still reported.
        fixture: "gemini/generate_content_blocked.json",
        parser: Parser::Json,
        usage: tokens(52, 0, 0, 0),
        partial: None,
        total: Some(52),
        audio_input_tokens: 0,
        model: Some("gemini-2.5-flash"),
        request_id: Some("MOnGaLmBJPaN1e8P5eS-mAs"),
        text: "",
    },
    Case {
        fixture: "gemini/error_429.json",
        parser: Parser::Json,
        usage: None,
        partial: None,
        total: None,
        audio_input_tokens: 0,
        model: None,
        request_id: None,
        text: "",
    },
    Case {
        // The same error body answering a streamGenerateContent call (it comes before any chunk,
        // as `application/json`, with or without `alt=sse`).
        fixture: "gemini/error_429.json",
        parser: Parser::JsonArray,
        usage: None,
        partial: None,
        total: None,
        audio_input_tokens: 0,
        model: None,
        request_id: None,
        text: "",
    },
    Case {
        // Vertex AI: `role` before `parts`, `trafficType`, `createTime`; prompt 37824 of which
        // 34745 cached.
        fixture: "gemini/vertex_generate_content.json",
        parser: Parser::Json,
        usage: tokens(3079, 34745, 505, 389),
        partial: None,
        total: Some(38329),
        audio_input_tokens: 0,
        model: Some("gemini-2.5-flash"),
        request_id: Some("0VvPaI3kBoS7nvgP2q2ZsAs"),
        text: "The incident started at 02:14 UTC when the connection pool on `orders-db` was exhausted after the deploy doubled the worker count; latency recovered at 02:41 once the pool size was raised.",
    },
    Case {
        // gemini-2.0-flash: the running usageMetadata carries only the prompt until the end.
        fixture: "gemini/stream_running_usage.sse",
        parser: Parser::Sse,
        usage: tokens(10, 0, 27, 0),
        partial: None,
        total: Some(37),
        audio_input_tokens: 0,
        model: Some("gemini-2.0-flash"),
        request_id: Some("kLnGaJ7vNd6T1e8PxPSbsQs"),
        text: "Here are three names for a grey cat:\n\n1. **Ash**\n2. **Pebble**\n3. **Smokey**\n",
    },
    Case {
        // gemini-2.5-flash with includeThoughts: running thoughts, then text.
        fixture: "gemini/stream_thinking.sse",
        parser: Parser::Sse,
        usage: tokens(12, 0, 460, 402),
        partial: None,
        total: Some(472),
        audio_input_tokens: 0,
        model: Some("gemini-2.5-flash"),
        request_id: Some("c1rHaKeJGMWW1e8Pq8OJuQo"),
        text: "**Counting the Letters**\n\nI'm spelling out \"strawberry\" letter by letter: s-t-r-a-w-b-e-r-r-y. I see an r in position three and a double r near the end.\n\n\n**Verifying the Count**\n\nRe-checking each position confirms r at 3, 8 and 9. That makes three, so the common answer of two undercounts the double r.\n\n\nThere are **three** r's in \"strawberry\": s-t-**r**-a-w-b-e-**r**-**r**-y.",
    },
    Case {
        // Vertex AI stream: `{"trafficType": "ON_DEMAND"}` without counts until the last chunk.
        fixture: "gemini/vertex_stream.sse",
        parser: Parser::Sse,
        usage: tokens(4, 0, 37, 28),
        partial: None,
        total: Some(41),
        audio_input_tokens: 0,
        model: Some("gemini-2.5-flash"),
        request_id: Some("7X7PaPnDE5qcnvgP_8OsmA4"),
        text: "Hello! How can I help you today?",
    },
    Case {
        // Upstream cut off mid-event: no finishReason, the running report is only partial.
        fixture: "gemini/stream_cut_off.sse",
        parser: Parser::Sse,
        usage: None,
        partial: tokens(15, 0, 1391, 1304),
        total: Some(1406),
        audio_input_tokens: 0,
        model: Some("gemini-2.5-flash"),
        request_id: Some("yJfHaIr9DsWb1e8Pv7KPoQ0"),
        text: "Warsaw, on the Vistula River in central Poland, is the country's capital and largest city, and a remarkable testament to resilience: its Old Town was rebuilt almost stone by stone after 1945.\n\n1.  **A City Reborn:**\n    *   ",
    },
    Case {
        // An error event after the first chunk.
        fixture: "gemini/stream_error.sse",
        parser: Parser::Sse,
        usage: None,
        partial: tokens(9, 0, 9, 0),
        total: Some(18),
        audio_input_tokens: 0,
        model: Some("gemini-2.5-flash-lite"),
        request_id: Some("Zr3GaLvXAoOb1e8P0Ju-uQ4"),
        text: "The Treaty of Westphalia (1648) ended",
    },
    Case {
        // A blocked prompt: one chunk, `promptFeedback.blockReason` ends the stream.
        fixture: "gemini/stream_blocked.sse",
        parser: Parser::Sse,
        usage: tokens(52, 0, 0, 0),
        partial: None,
        total: Some(52),
        audio_input_tokens: 0,
        model: Some("gemini-2.5-flash"),
        request_id: Some("3OnGaK7QMfKN1e8P3sXJwQk"),
        text: "",
    },
    Case {
        // Without `alt=sse`: `[{...}\r\n,\r\n{...}\r\n]`, brackets and escapes inside strings.
        fixture: "gemini/stream_json_array.json",
        parser: Parser::JsonArray,
        usage: tokens(14, 0, 45, 0),
        partial: None,
        total: Some(59),
        audio_input_tokens: 0,
        model: Some("gemini-2.5-flash-lite"),
        request_id: Some("HNjGaNbhM8an1e8PnKKbsAo"),
        text: "In Rust, `println!(\"{}\", v[0]);` prints the first element of `let v = vec![1, 2];` and `{:?}` prints all of it; on Windows the binary lands in `target\\debug\\app.exe`.",
    },
    Case {
        // An error element after the first chunk.
        fixture: "gemini/stream_json_array_error.json",
        parser: Parser::JsonArray,
        usage: None,
        partial: tokens(7, 0, 0, 0),
        total: Some(7),
        audio_input_tokens: 0,
        model: Some("gemini-2.5-flash-lite"),
        request_id: Some("Q9rGaPyjC4m_1e8P1dqY4Qs"),
        text: "Photosynthesis turns light,",
    },
];

fn expected(case: &Case) -> ParsedUsage {
    ParsedUsage {
        usage: case.usage,
        partial: case.partial,
        model: case.model.map(str::to_owned),
        request_id: case.request_id.map(str::to_owned),
        quantities: Quantities {
            audio_input_tokens: case.audio_input_tokens,
            ..Quantities::default()
        },
        ..ParsedUsage::default()
    }
}

fn run(parser: Parser, chunks: &[&[u8]]) -> ParsedUsage {
    let mut parser = parser.make();
    for chunk in chunks {
        parser.feed(chunk);
    }
    parser.finish()
}

#[test]
fn fixtures_parse_in_every_chunking() {
    for case in CASES {
        let parser = case.parser;
        check_fixture(case.fixture, &|| parser.make(), &expected(case));
    }
}

#[test]
fn buckets_add_up_to_the_reported_total() {
    for case in CASES {
        let report = case.usage.or(case.partial);
        let sum =
            report.map(|usage| usage.input_tokens + usage.cache_read_tokens + usage.output_tokens);
        assert_eq!(sum, case.total, "{}", case.fixture);
        if let Some(usage) = report {
            assert!(
                usage.reasoning_tokens <= usage.output_tokens,
                "{}",
                case.fixture
            );
        }
    }
}

#[test]
fn output_text_is_collected() {
    for case in CASES {
        let body = fixture_bytes(case.fixture);
        let whole = run(case.parser, &[&body]);
        assert_eq!(
            whole.output_text.text, case.text,
            "{}: whole body",
            case.fixture
        );
        assert_eq!(whole.output_text.overflow_bytes, 0, "{}", case.fixture);
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(
            run(case.parser, &bytes).output_text,
            whole.output_text,
            "{}: single bytes",
            case.fixture
        );
    }
}

/// A stream cut after its final chunk arrived whole still reports it; one cut before never does.
#[test]
fn streams_report_only_once_the_final_chunk_is_whole() {
    for (fixture, parser, final_chunk_end) in [
        (
            "gemini/stream_running_usage.sse",
            Parser::Sse,
            b"\"}\r\n\r\n".len(),
        ),
        (
            "gemini/stream_thinking.sse",
            Parser::Sse,
            b"\"}\r\n\r\n".len(),
        ),
        (
            "gemini/vertex_stream.sse",
            Parser::Sse,
            b"\"}\r\n\r\n".len(),
        ),
        (
            "gemini/stream_json_array.json",
            Parser::JsonArray,
            b"}\r\n]".len(),
        ),
    ] {
        let body = fixture_bytes(fixture);
        // The final chunk's JSON ends `final_chunk_end` bytes before the body does (its closing
        // brace included).
        let complete_from = body.len() - final_chunk_end + 1 + usize::from(parser == Parser::Sse);
        let expected = run(parser, &[&body]).usage;
        assert!(expected.is_some(), "{fixture}");
        for cut in 0..=body.len() {
            let usage = run(parser, &[&body[..cut]]).usage;
            let wanted = if cut >= complete_from { expected } else { None };
            assert_eq!(usage, wanted, "{fixture}: cut at {cut}");
        }
    }
}

/// The JSON-array framing never holds more than one element: an element over the limit is
/// dropped (and with it the report it carried), the others are still read.
#[test]
fn json_array_elements_are_bounded() {
    let body = fixture_bytes("gemini/stream_json_array.json");
    let mut parser = GenerateContentStream::json_array_with_limit(600);
    parser.feed(&body);
    let parsed = parser.finish();
    // The first two elements fit in 600 bytes; the last, with the final report, does not.
    assert_eq!(parsed.usage, None);
    assert_eq!(parsed.partial, tokens(14, 0, 0, 0));
    assert_eq!(parsed.model.as_deref(), Some("gemini-2.5-flash-lite"));

    let mut parser = GenerateContentJson::with_limit(500);
    parser.feed(&fixture_bytes("gemini/generate_content_plain.json"));
    assert_eq!(parser.finish(), ParsedUsage::default());
}
