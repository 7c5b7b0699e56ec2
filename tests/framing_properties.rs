//! Properties of the two stream framings under every parser: the SSE framer
//! (`meter::usage::sse::SseFramer`) and the NDJSON line splitter
//! (`meter::usage::ollama::LineSplitter`). Each is checked against a small reference model
//! written from the rules (WHATWG `EventSource` parsing, and `\n`-terminated lines), over
//! generated streams and random bytes, in any chunking.
#![allow(clippy::unwrap_used)]

use meter::usage::ollama::LineSplitter;
use meter::usage::sse::{SseEvent, SseFramer};
use proptest::prelude::*;

/// One event as the framer hands it out: (event field, data).
type Event = (Vec<u8>, Vec<u8>);

const BOM: &[u8] = b"\xEF\xBB\xBF";
/// The framer's room for a field name on top of the data limit (`LINE_SLACK_BYTES`).
const LINE_SLACK: usize = 16;

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

fn frame(limit: usize, chunks: &[&[u8]]) -> (Vec<Event>, u64) {
    let mut framer = SseFramer::with_limit(limit);
    let mut events = Vec::new();
    let mut collect =
        |event: &SseEvent<'_>| events.push((event.event.to_vec(), event.data.to_vec()));
    for chunk in chunks {
        framer.feed(chunk, &mut collect);
    }
    framer.finish(&mut collect);
    (events, framer.overflowed_events())
}

/// The reference: the whole stream at once, line by line, per the WHATWG rules with meter's
/// documented differences (a last event without its blank line is dispatched; an event whose
/// data exceeds `limit` is dropped and counted; a line longer than `limit` plus the slack is
/// skipped, and if it is a `data:` line its event is dropped).
fn reference_sse(input: &[u8], limit: usize) -> (Vec<Event>, u64) {
    let input = input.strip_prefix(BOM).unwrap_or(input);
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\n' => {
                lines.push(&input[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&input[start..i]);
                if input.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < input.len() {
        lines.push(&input[start..]);
    }
    let mut events = Vec::new();
    let mut overflows = 0;
    let (mut event, mut data, mut has_data, mut overflowed) =
        (Vec::new(), Vec::new(), false, false);
    let mut dispatch =
        |event: &mut Vec<u8>, data: &mut Vec<u8>, has_data: &mut bool, overflowed: &mut bool| {
            if *overflowed {
                overflows += 1;
            } else if *has_data {
                events.push((event.clone(), data.clone()));
            }
            event.clear();
            data.clear();
            *has_data = false;
            *overflowed = false;
        };
    for line in lines {
        if line.len() > limit + LINE_SLACK {
            if line.starts_with(b"data:") {
                overflowed = true;
                data.clear();
            }
            continue;
        }
        if line.is_empty() {
            dispatch(&mut event, &mut data, &mut has_data, &mut overflowed);
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (name, value) = match line.iter().position(|b| *b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" if !overflowed => {
                let separator = usize::from(has_data);
                if data.len() + separator + value.len() > limit {
                    overflowed = true;
                    data.clear();
                } else {
                    if has_data {
                        data.push(b'\n');
                    }
                    data.extend_from_slice(value);
                    has_data = true;
                }
            }
            b"event" => {
                event.clear();
                event.extend_from_slice(value);
            }
            _ => {}
        }
    }
    dispatch(&mut event, &mut data, &mut has_data, &mut overflowed);
    (events, overflows)
}

fn split_lines(limit: usize, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, u64) {
    let mut splitter = LineSplitter::with_limit(limit);
    let mut lines = Vec::new();
    for chunk in chunks {
        splitter.feed(chunk, |line| lines.push(line.to_vec()));
    }
    splitter.finish(|line| lines.push(line.to_vec()));
    (lines, splitter.overflowed_lines())
}

/// The reference: `\n` ends a line, one `\r` before it is dropped, a last line without `\n` is
/// still a line (when not empty), and a line longer than `limit` is skipped and counted.
fn reference_lines(input: &[u8], limit: usize) -> (Vec<Vec<u8>>, u64) {
    let mut pieces: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    let last = pieces.pop().unwrap_or_default();
    if !last.is_empty() {
        pieces.push(last);
    }
    let mut lines = Vec::new();
    let mut overflows = 0;
    for piece in pieces {
        let line = piece.strip_suffix(b"\r").unwrap_or(piece);
        if line.len() > limit {
            overflows += 1;
        } else {
            lines.push(line.to_vec());
        }
    }
    (lines, overflows)
}

/// One SSE field line, from the shapes real streams and hostile ones use.
fn sse_line() -> impl Strategy<Value = Vec<u8>> {
    let text = proptest::collection::vec(
        prop_oneof![
            4 => proptest::char::range('a', 'z'),
            1 => Just(':'),
            1 => Just(' '),
            1 => Just('{'),
            1 => Just('"'),
            1 => Just('é'),
        ],
        0..24,
    )
    .prop_map(|chars| chars.into_iter().collect::<String>().into_bytes());
    let long = (0usize..200).prop_map(|n| vec![b'x'; n]);
    prop_oneof![
        6 => text.clone().prop_map(|v| [b"data: ".as_slice(), &v].concat()),
        2 => text.clone().prop_map(|v| [b"data:".as_slice(), &v].concat()),
        1 => Just(b"data".to_vec()),
        1 => long.clone().prop_map(|v| [b"data: ".as_slice(), &v].concat()),
        2 => text.clone().prop_map(|v| [b"event: ".as_slice(), &v].concat()),
        1 => long.clone().prop_map(|v| [b"event: ".as_slice(), &v].concat()),
        1 => long.prop_map(|v| [b": ".as_slice(), &v].concat()),
        2 => text.clone().prop_map(|v| [b":".as_slice(), &v].concat()),
        1 => Just(b"id: 7".to_vec()),
        1 => Just(b"retry: 10".to_vec()),
        1 => Just(b"Data: not a field".to_vec()),
        4 => Just(Vec::new()),
        1 => text,
        1 => Just(BOM.to_vec()),
    ]
}

/// A stream of lines with mixed line endings, maybe a leading BOM, maybe no final line end.
fn sse_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        proptest::collection::vec(
            (
                sse_line(),
                prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..]), Just(&b"\r"[..])],
            ),
            0..30,
        ),
        any::<bool>(),
    )
        .prop_map(|(bom, lines, unterminated)| {
            let mut out = if bom { BOM.to_vec() } else { Vec::new() };
            let count = lines.len();
            for (i, (line, end)) in lines.into_iter().enumerate() {
                out.extend_from_slice(&line);
                if !(unterminated && i + 1 == count) {
                    out.extend_from_slice(end);
                }
            }
            out
        })
}

fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(8usize),
        Just(40),
        Just(meter::usage::sse::MAX_EVENT_DATA_BYTES)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any chunking of a stream yields the events (and overflow count) of the reference model.
    #[test]
    fn sse_any_chunking_matches_the_reference(
        stream in sse_stream(),
        limit in limit(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let want = reference_sse(&stream, limit);
        prop_assert_eq!(frame(limit, &[&stream]), want.clone());
        prop_assert_eq!(frame(limit, &chunked(&stream, &cuts)), want.clone());
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        prop_assert_eq!(frame(limit, &bytes), want);
    }

    /// Arbitrary bytes (line ends, NULs, invalid UTF-8, stray BOMs) never panic and frame the
    /// same in any chunking.
    #[test]
    fn sse_random_bytes_frame_like_the_reference(
        bytes in proptest::collection::vec(
            prop_oneof![
                4 => any::<u8>(),
                1 => Just(b'\n'),
                1 => Just(b'\r'),
                1 => Just(b':'),
                1 => Just(b' '),
            ],
            0..300,
        ),
        prefix in prop_oneof![Just(&b""[..]), Just(&b"data: "[..]), Just(BOM)],
        limit in limit(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let stream = [prefix, &bytes].concat();
        let want = reference_sse(&stream, limit);
        prop_assert_eq!(frame(limit, &chunked(&stream, &cuts)), want);
    }

    /// A corrupted real stream (bytes flipped, a line end removed or added) still frames the
    /// same in any chunking.
    #[test]
    fn sse_corrupted_stream_frames_like_the_reference(
        stream in sse_stream(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut stream = stream;
        for (at, byte, kind) in edits {
            let at = at % (stream.len() + 1);
            match kind {
                0 if at < stream.len() => stream[at] = byte,
                1 if at < stream.len() => { stream.remove(at); }
                _ => stream.insert(at, byte),
            }
        }
        let want = reference_sse(&stream, 40);
        prop_assert_eq!(frame(40, &chunked(&stream, &cuts)), want);
    }

    /// NDJSON: any chunking of any bytes yields the reference's lines and overflow count.
    #[test]
    fn ndjson_any_chunking_matches_the_reference(
        bytes in proptest::collection::vec(
            prop_oneof![
                6 => any::<u8>(),
                2 => Just(b'\n'),
                2 => Just(b'\r'),
                1 => Just(b'{'),
            ],
            0..300,
        ),
        limit in prop_oneof![Just(0usize), Just(1), Just(5), Just(40), Just(meter::usage::ollama::MAX_LINE_BYTES)],
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let want = reference_lines(&bytes, limit);
        prop_assert_eq!(split_lines(limit, &[&bytes]), want.clone());
        prop_assert_eq!(split_lines(limit, &chunked(&bytes, &cuts)), want.clone());
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(split_lines(limit, &single), want);
    }

    /// NDJSON lines as Ollama writes them (objects, `\n` or `\r\n`, long lines) in any chunking.
    #[test]
    fn ndjson_streams_of_objects_split_the_same(
        lines in proptest::collection::vec(
            (
                prop_oneof![
                    Just(br#"{"model":"m","done":false}"#.to_vec()),
                    Just(br#"{"done":true,"eval_count":3}"#.to_vec()),
                    Just(Vec::new()),
                    (0usize..120).prop_map(|n| vec![b'x'; n]),
                ],
                prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..]), Just(&b""[..])],
            ),
            0..20,
        ),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let stream: Vec<u8> = lines.iter().flat_map(|(l, e)| [l.as_slice(), e].concat()).collect();
        let want = reference_lines(&stream, 40);
        prop_assert_eq!(split_lines(40, &chunked(&stream, &cuts)), want);
    }
}

#[test]
fn reference_models_agree_with_the_documented_cases() {
    // A few cases from the framers' own unit tests, so that the models above are models of the
    // right thing.
    let events = |v: &[(&str, &str)]| -> Vec<Event> {
        v.iter()
            .map(|(e, d)| (e.as_bytes().to_vec(), d.as_bytes().to_vec()))
            .collect()
    };
    let limit = meter::usage::sse::MAX_EVENT_DATA_BYTES;
    for (input, want) in [
        (&b"data: a\r\ndata: b\r\n\r\n"[..], events(&[("", "a\nb")])),
        (b"data: a\n\rdata: b\n\r", events(&[("", "a"), ("", "b")])),
        (b"event: ping\n\ndata: x\n\n", events(&[("", "x")])),
        (b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n", events(&[])),
        (b"data: last", events(&[("", "last")])),
        (b"data\ndata\n\n", events(&[("", "\n")])),
    ] {
        assert_eq!(reference_sse(input, limit), (want.clone(), 0));
        assert_eq!(frame(limit, &[input]), (want, 0));
    }
    let want = (vec![b"a".to_vec(), Vec::new(), b"b".to_vec()], 0);
    assert_eq!(reference_lines(b"a\r\n\nb\r", 5), want);
    assert_eq!(split_lines(5, &[b"a\r\n\nb\r"]), want);
}

#[test]
fn a_long_event_name_is_skipped_whatever_the_chunking() {
    // Regression (found by `sse_any_chunking_matches_the_reference`): a field line longer than
    // the limit was skipped when it arrived in pieces but applied when it arrived whole, so an
    // `event:` name past the limit depended on how the network cut the stream.
    let limit = 8;
    let stream = b"event: a-very-long-event-name-past-the-limit\ndata: x\n\n";
    let whole = frame(limit, &[stream]);
    let split = frame(limit, &[&stream[..10], &stream[10..]]);
    assert_eq!(whole, split);
    assert_eq!(whole, (vec![(Vec::new(), b"x".to_vec())], 0));
}
