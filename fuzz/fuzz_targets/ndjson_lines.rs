//! The NDJSON line splitter (Ollama's streams): any bytes in any chunking split like the whole
//! stream, never panic, and never hand out a line longer than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meter::usage::ollama::{LineSplitter, MAX_LINE_BYTES};
use meter_fuzz::{chunks, pick, split_input};

fn split(limit: usize, pieces: &[&[u8]]) -> (Vec<Vec<u8>>, u64) {
    let mut splitter = LineSplitter::with_limit(limit);
    let mut lines = Vec::new();
    let mut collect = |line: &[u8]| {
        assert!(line.len() <= limit);
        assert!(!line.contains(&b'\n'));
        lines.push(line.to_vec());
    };
    for piece in pieces {
        splitter.feed(piece, &mut collect);
    }
    splitter.finish(&mut collect);
    (lines, splitter.overflowed_lines())
}

fuzz_target!(|data: &[u8]| {
    let (choice, seed, body) = split_input(data);
    let limit = pick(&[0, 1, 5, 16, 64, 4096, MAX_LINE_BYTES], choice);
    let whole = split(limit, &[body]);
    assert_eq!(whole, split(limit, &chunks(body, seed)));
});
