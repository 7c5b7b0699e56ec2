//! One check for every parser test: a fixture fed whole, split at every byte offset, byte by
//! byte, and cut short at every byte, must always read the same (or, cut short, never a wrong
//! report and never panic).

use meter::usage::{ParsedUsage, UsageParser};

/// Reads a fixture under tests/fixtures.
pub fn fixture_bytes(path: &str) -> Vec<u8> {
    super::fixture(path)
}

/// Feeds `chunks` to a new parser and returns what it read.
pub fn run(make: &dyn Fn() -> Box<dyn UsageParser>, chunks: &[&[u8]]) -> ParsedUsage {
    let mut parser = make();
    for chunk in chunks {
        parser.feed(chunk);
    }
    parser.finish()
}

/// Everything but the collected output text, which depends on nothing but the deltas and is
/// checked separately where it matters.
fn comparable(mut parsed: ParsedUsage) -> ParsedUsage {
    parsed.output_text = Default::default();
    parsed
}

/// Checks `fixture` against `expected` in every chunking. `expected.output_text` is ignored.
/// A body cut short may lose the report (`usage: None`), but never reads a different one.
pub fn check_fixture(
    fixture: &str,
    make: &dyn Fn() -> Box<dyn UsageParser>,
    expected: &ParsedUsage,
) {
    let body = fixture_bytes(fixture);
    let expected = comparable(expected.clone());
    assert_eq!(
        comparable(run(make, &[&body])),
        expected,
        "{fixture}: whole body"
    );
    for split in 0..=body.len() {
        let (head, tail) = body.split_at(split);
        assert_eq!(
            comparable(run(make, &[head, tail])),
            expected,
            "{fixture}: split at {split}"
        );
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(
        comparable(run(make, &bytes)),
        expected,
        "{fixture}: single bytes"
    );
    for cut in 0..body.len() {
        let parsed = run(make, &[&body[..cut]]);
        if let Some(usage) = parsed.usage {
            assert_eq!(
                Some(usage),
                expected.usage,
                "{fixture}: cut at {cut} read a wrong report"
            );
        }
    }
}

/// Where the bytes of the last usage report end: a stream cut at or after this offset has
/// delivered it whole and must still report it.
pub fn usage_event_end(body: &[u8]) -> Option<usize> {
    let needle = b"\"usage\":{";
    let start = body
        .windows(needle.len())
        .rposition(|window| window == needle)?;
    let line_end = body[start..]
        .iter()
        .position(|byte| matches!(byte, b'\r' | b'\n'))?;
    Some(start + line_end)
}
