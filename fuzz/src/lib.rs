//! What the fuzz targets share: turning the fuzzer's bytes into a choice, a body and a chunking,
//! and the check every parser target makes (the body read whole and read in pieces agree).
//!
//! Input layout for the framing and parser targets: byte 0 picks among the target's choices
//! (limit, endpoint, body kind, flavor), byte 1 seeds the chunk sizes, the rest is the body. So
//! a fixture with two bytes in front (see `seed.sh`) is a useful seed.

use meter::usage::{parser_for, ParseContext, ParsedUsage};

/// Splits `data` into (choice byte, chunk seed, body).
pub fn split_input(data: &[u8]) -> (u8, u8, &[u8]) {
    match data {
        [] => (0, 0, &[]),
        [choice] => (*choice, 0, &[]),
        [choice, seed, body @ ..] => (*choice, *seed, body),
    }
}

/// Cuts `body` into pieces of 1 to 64 bytes (and empty ones) from a xorshift sequence seeded by
/// `seed`; seed 0 is the whole body as one piece.
pub fn chunks(body: &[u8], seed: u8) -> Vec<&[u8]> {
    if seed == 0 {
        return vec![body];
    }
    let mut state = u32::from(seed).wrapping_mul(0x9E37_79B9) | 1;
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = match state % 8 {
            0 => 0,
            1 => 1,
            _ => (state >> 8) as usize % 64 + 1,
        };
        let size = size.min(rest.len());
        let (piece, tail) = rest.split_at(size);
        out.push(piece);
        rest = tail;
    }
    out
}

/// Feeds `pieces` to a fresh parser for `context`; the output text is left out of the result
/// (it is compared apart where it matters).
pub fn parse(context: &ParseContext, pieces: &[&[u8]]) -> Option<ParsedUsage> {
    let mut parser = parser_for(context)?;
    for piece in pieces {
        parser.feed(piece);
    }
    let mut parsed = parser.finish();
    parsed.output_text = Default::default();
    Some(parsed)
}

/// The parser targets' check: never a panic, and the body read in pieces reads as the whole.
pub fn check_parser(context: &ParseContext, body: &[u8], seed: u8) {
    let whole = parse(context, &[body]);
    let pieces = parse(context, &chunks(body, seed));
    assert_eq!(whole, pieces, "{context:?}: chunking changed what was read");
}

/// `items[choice % len]`.
pub fn pick<T: Copy>(items: &[T], choice: u8) -> T {
    items[usize::from(choice) % items.len()]
}
