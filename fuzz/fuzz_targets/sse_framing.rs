//! The SSE framer: any bytes in any chunking frame like the whole stream, never panic, and
//! never hand out an event whose data exceeds the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meter::usage::sse::{SseEvent, SseFramer, MAX_EVENT_DATA_BYTES};
use meter_fuzz::{chunks, pick, split_input};

fn frame(limit: usize, pieces: &[&[u8]]) -> (Vec<(Vec<u8>, Vec<u8>)>, u64) {
    let mut framer = SseFramer::with_limit(limit);
    let mut events = Vec::new();
    let mut collect = |event: &SseEvent<'_>| {
        assert!(event.data.len() <= limit);
        events.push((event.event.to_vec(), event.data.to_vec()));
    };
    for piece in pieces {
        framer.feed(piece, &mut collect);
    }
    framer.finish(&mut collect);
    (events, framer.overflowed_events())
}

fuzz_target!(|data: &[u8]| {
    let (choice, seed, body) = split_input(data);
    let limit = pick(&[0, 1, 5, 16, 64, 4096, MAX_EVENT_DATA_BYTES], choice);
    let whole = frame(limit, &[body]);
    assert_eq!(whole, frame(limit, &chunks(body, seed)));
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(whole, frame(limit, &bytes));
});
