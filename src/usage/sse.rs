//! Incremental server-sent-events framer (WHATWG `EventSource` parsing rules) over raw bytes.
//! It keeps only the partial line and the current event's data, bounded by a limit; it never
//! decodes UTF-8, never allocates per line on the fast path, and never logs what it frames.
//!
//! Differences from the WHATWG algorithm, all deliberate:
//!
//! - `id:` and `retry:` are ignored: meter only reads events, it never reconnects.
//! - At [`SseFramer::finish`] a pending event without its closing blank line is still dispatched
//!   (a browser would drop it): usage arrives in the last event, and an upstream that closes
//!   right after its final `data:` line has still said everything it meant to.
//! - An event whose data would exceed the limit is dropped whole and counted in
//!   [`SseFramer::overflowed_events`] instead of growing memory without bound.

use memchr::memchr2;

/// Default cap on one event's data (its `data:` lines joined by `\n`).
pub const MAX_EVENT_DATA_BYTES: usize = 16 * 1024 * 1024;

/// Room for a field name and the separator on top of the data limit, so that a `data:` line
/// whose value fits the limit also fits the line buffer.
const LINE_SLACK_BYTES: usize = 16;

/// Buffers at most this large are kept for reuse; a larger one (left by a huge event) is shrunk
/// after use so that an idle stream does not pin megabytes.
const RETAINED_CAPACITY_BYTES: usize = 64 * 1024;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event. Borrowed from the framer; copy out what must outlive the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field as sent; empty when the event named none.
    pub event: &'a [u8],
    /// The `data:` lines joined by `\n`, without a trailing `\n`.
    pub data: &'a [u8],
}

impl SseEvent<'_> {
    /// The event type, defaulting to `message` as `EventSource` does.
    pub fn name(&self) -> &[u8] {
        if self.event.is_empty() {
            b"message"
        } else {
            self.event
        }
    }
}

/// Splits a byte stream into events; see the module comment.
#[derive(Debug)]
pub struct SseFramer {
    limit: usize,
    line: PartialLine,
    pending: PendingEvent,
    /// Bytes of a leading UTF-8 BOM seen so far, or `None` once the stream start is past.
    bom_matched: Option<usize>,
    /// The previous chunk ended in `\r`: a `\n` opening the next one belongs to that line end.
    skip_lf: bool,
}

/// A line not yet ended by `\r`, `\n` or `\r\n`.
#[derive(Debug, Default)]
struct PartialLine {
    bytes: Vec<u8>,
    /// The line outgrew the limit: its remaining bytes are skipped up to the line end.
    discarding: bool,
}

/// The event being assembled from its field lines.
#[derive(Debug, Default)]
struct PendingEvent {
    event: Vec<u8>,
    data: Vec<u8>,
    /// At least one `data` field was seen (`data` may still be empty: `data:` alone).
    has_data: bool,
    /// The data outgrew the limit; the event is dropped at its end.
    overflowed: bool,
    overflowed_events: u64,
}

impl Default for SseFramer {
    fn default() -> Self {
        SseFramer::with_limit(MAX_EVENT_DATA_BYTES)
    }
}

impl SseFramer {
    /// A framer that drops events whose data exceeds `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        SseFramer {
            limit,
            line: PartialLine::default(),
            pending: PendingEvent::default(),
            bom_matched: Some(0),
            skip_lf: false,
        }
    }

    /// How many events were dropped for exceeding the limit so far.
    pub fn overflowed_events(&self) -> u64 {
        self.pending.overflowed_events
    }

    /// Reads the next piece of the stream, calling `on_event` for each event it completes.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(&SseEvent<'_>)) {
        let chunk = self.strip_bom(chunk, &mut on_event);
        self.feed_lines(chunk, &mut on_event);
    }

    /// Ends the stream: a last line without its line end and a last event without its blank
    /// line are still processed. The framer is reset and may be reused for a new stream.
    pub fn finish(&mut self, mut on_event: impl FnMut(&SseEvent<'_>)) {
        // A stream that ended inside a would-be BOM began with those bytes as text.
        if let Some(matched) = self.bom_matched.take() {
            self.feed_lines(&UTF8_BOM[..matched], &mut on_event);
        }
        self.end_line(&mut on_event);
        self.pending.dispatch(&mut on_event);
        self.skip_lf = false;
        self.bom_matched = Some(0);
    }

    /// Drops one UTF-8 BOM at the very start of the stream, even when split across chunks.
    fn strip_bom<'c>(
        &mut self,
        chunk: &'c [u8],
        on_event: &mut impl FnMut(&SseEvent<'_>),
    ) -> &'c [u8] {
        let Some(matched) = self.bom_matched else {
            return chunk;
        };
        let wanted = &UTF8_BOM[matched..];
        let common = wanted.len().min(chunk.len());
        if chunk[..common] == wanted[..common] {
            if common == wanted.len() {
                self.bom_matched = None;
            } else {
                self.bom_matched = Some(matched + common);
            }
            return &chunk[common..];
        }
        // Not a BOM after all: the bytes held back so far are ordinary stream bytes.
        self.bom_matched = None;
        self.feed_lines(&UTF8_BOM[..matched], on_event);
        chunk
    }

    fn feed_lines(&mut self, mut chunk: &[u8], on_event: &mut impl FnMut(&SseEvent<'_>)) {
        if self.skip_lf && !chunk.is_empty() {
            self.skip_lf = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while let Some(end) = memchr2(b'\r', b'\n', chunk) {
            let line_end_len = if chunk[end] == b'\r' {
                match chunk.get(end + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    None => {
                        self.skip_lf = true;
                        1
                    }
                }
            } else {
                1
            };
            let content = &chunk[..end];
            if self.line.bytes.is_empty() && !self.line.discarding {
                // Fast path: the whole line is inside this chunk, so it is read in place.
                self.pending.process_line(content, self.limit, on_event);
            } else {
                self.line.push(content, self.limit, &mut self.pending);
                self.end_line(on_event);
            }
            chunk = &chunk[end + line_end_len..];
        }
        self.line.push(chunk, self.limit, &mut self.pending);
    }

    /// Processes the buffered partial line as a complete line.
    fn end_line(&mut self, on_event: &mut impl FnMut(&SseEvent<'_>)) {
        if self.line.discarding {
            // The line's fate was settled when it overflowed.
            self.line.discarding = false;
        } else if !self.line.bytes.is_empty() {
            self.pending
                .process_line(&self.line.bytes, self.limit, on_event);
        } else {
            // An empty buffered line is possible only at `finish`, after a complete line:
            // it is not a real blank line, so nothing is dispatched here.
            return;
        }
        self.line.bytes.clear();
        shrink_if_large(&mut self.line.bytes);
    }
}

impl PartialLine {
    /// Appends bytes of an unfinished line, switching to discarding past the limit.
    fn push(&mut self, bytes: &[u8], limit: usize, pending: &mut PendingEvent) {
        if self.discarding || bytes.is_empty() {
            return;
        }
        if self.bytes.len() + bytes.len() <= limit.saturating_add(LINE_SLACK_BYTES) {
            self.bytes.extend_from_slice(bytes);
            return;
        }
        // The line alone is larger than any event may be. If it is a `data` line (one this
        // long must have a colon right after the name), its event cannot fit either; any
        // other field is ignored by meter anyway.
        let mut head = [0u8; 5];
        let from_buffer = self.bytes.len().min(head.len());
        head[..from_buffer].copy_from_slice(&self.bytes[..from_buffer]);
        let from_chunk = (head.len() - from_buffer).min(bytes.len());
        head[from_buffer..from_buffer + from_chunk].copy_from_slice(&bytes[..from_chunk]);
        if &head == b"data:" {
            pending.overflow();
        }
        self.bytes = Vec::new();
        self.discarding = true;
    }
}

impl PendingEvent {
    fn process_line(
        &mut self,
        line: &[u8],
        limit: usize,
        on_event: &mut impl FnMut(&SseEvent<'_>),
    ) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line.len() > limit.saturating_add(LINE_SLACK_BYTES) {
            // A line read in place gets what one read in pieces gets (`PartialLine::push`):
            // skipped, and its event dropped if it is data. Otherwise an over-long `event:`
            // name would count or not depending on how the stream was cut.
            if line.starts_with(b"data:") {
                self.overflow();
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => self.push_data(value, limit),
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            // `id`, `retry` and unknown fields do not matter to meter.
            _ => {}
        }
    }

    fn push_data(&mut self, value: &[u8], limit: usize) {
        if self.overflowed {
            return;
        }
        let separator = usize::from(self.has_data);
        if self.data.len() + separator + value.len() > limit {
            self.overflow();
            return;
        }
        if self.has_data {
            self.data.push(b'\n');
        }
        self.data.extend_from_slice(value);
        self.has_data = true;
    }

    fn overflow(&mut self) {
        self.overflowed = true;
        self.data = Vec::new();
    }

    /// Ends the current event: hands it out if it had data, then starts a fresh one.
    fn dispatch(&mut self, on_event: &mut impl FnMut(&SseEvent<'_>)) {
        if self.overflowed {
            self.overflowed_events += 1;
        } else if self.has_data {
            on_event(&SseEvent {
                event: &self.event,
                data: &self.data,
            });
        }
        self.event.clear();
        self.data.clear();
        shrink_if_large(&mut self.event);
        shrink_if_large(&mut self.data);
        self.has_data = false;
        self.overflowed = false;
    }
}

fn shrink_if_large(buffer: &mut Vec<u8>) {
    if buffer.capacity() > RETAINED_CAPACITY_BYTES {
        buffer.shrink_to(RETAINED_CAPACITY_BYTES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One framed event, owned, with the event name shown as text for readable failures.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        event: String,
        data: Vec<u8>,
    }

    fn seen(event: &str, data: &[u8]) -> Seen {
        Seen {
            event: event.to_owned(),
            data: data.to_vec(),
        }
    }

    fn frame(framer: &mut SseFramer, chunks: &[&[u8]]) -> Vec<Seen> {
        let mut events = Vec::new();
        let mut collect = |event: &SseEvent<'_>| {
            events.push(Seen {
                event: String::from_utf8_lossy(event.event).into_owned(),
                data: event.data.to_vec(),
            })
        };
        for chunk in chunks {
            framer.feed(chunk, &mut collect);
        }
        framer.finish(&mut collect);
        events
    }

    /// Frames `input` whole, split in two at every offset, and byte by byte, with `limit`,
    /// asserting the same events and overflow count each time.
    fn check_with_limit(input: &[u8], limit: usize, expected: &[Seen], expected_overflows: u64) {
        let mut chunkings: Vec<Vec<&[u8]>> = vec![vec![input]];
        for split in 0..=input.len() {
            chunkings.push(vec![&input[..split], &input[split..]]);
        }
        chunkings.push(input.chunks(1).collect());
        for chunks in chunkings {
            let mut framer = SseFramer::with_limit(limit);
            let events = frame(&mut framer, &chunks);
            let sizes: Vec<usize> = chunks.iter().map(|chunk| chunk.len()).collect();
            assert_eq!(events, expected, "chunk sizes {sizes:?}");
            assert_eq!(
                framer.overflowed_events(),
                expected_overflows,
                "chunk sizes {sizes:?}"
            );
        }
    }

    fn check(input: &[u8], expected: &[Seen]) {
        check_with_limit(input, MAX_EVENT_DATA_BYTES, expected, 0);
    }

    #[test]
    fn line_endings() {
        let two = [seen("", b"a"), seen("", b"b")];
        check(b"data: a\n\ndata: b\n\n", &two);
        check(b"data: a\r\n\r\ndata: b\r\n\r\n", &two);
        check(b"data: a\r\rdata: b\r\r", &two);
        check(b"data: a\r\n\ndata: b\r\r\n", &two);
        // `\r` then `\n` is one line end, so this is a single event with two data lines.
        check(b"data: a\r\ndata: b\r\n\r\n", &[seen("", b"a\nb")]);
        // `\n` then `\r` are two line ends: the second is the blank line.
        check(b"data: a\n\rdata: b\n\r", &two);
    }

    #[test]
    fn fields() {
        check(b"data:a\n\n", &[seen("", b"a")]);
        check(b"data:  two spaces\n\n", &[seen("", b" two spaces")]);
        check(b"data\n\n", &[seen("", b"")]);
        check(b"data:\n\n", &[seen("", b"")]);
        check(b"data\ndata\n\n", &[seen("", b"\n")]);
        check(b"data: a\ndata: b\ndata: c\n\n", &[seen("", b"a\nb\nc")]);
        check(b"data: a:b: c\n\n", &[seen("", b"a:b: c")]);
        check(b"event: usage\ndata: {}\n\n", &[seen("usage", b"{}")]);
        check(
            b"event: one\ndata: 1\n\ndata: 2\n\n",
            &[seen("one", b"1"), seen("", b"2")],
        );
        check(
            b"id: 7\nretry: 10\nfoo: bar\ndata: x\n\n",
            &[seen("", b"x")],
        );
        // Field names are case-sensitive.
        check(b"Data: x\n\n", &[]);
        // An event without data is never dispatched, and its name does not leak on.
        check(b"event: ping\n\ndata: x\n\n", &[seen("", b"x")]);
    }

    #[test]
    fn comments_and_blank_lines() {
        check(b": keep-alive\n\n", &[]);
        check(
            b": keep-alive\r\n\r\ndata: x\r\n: mid-event comment\r\n\r\n",
            &[seen("", b"x")],
        );
        check(b"\n\n\r\n\r\r", &[]);
        check(b"", &[]);
    }

    #[test]
    fn missing_final_blank_line() {
        check(
            b"data: a\n\ndata: last",
            &[seen("", b"a"), seen("", b"last")],
        );
        check(b"data: last\n", &[seen("", b"last")]);
        check(b"data: last\r", &[seen("", b"last")]);
        check(b"data: a\ndata: b", &[seen("", b"a\nb")]);
        check(b"event: e\ndata: last\r\n", &[seen("e", b"last")]);
        check(b": only a comment", &[]);
    }

    #[test]
    fn byte_order_mark() {
        check(b"\xEF\xBB\xBFdata: a\n\n", &[seen("", b"a")]);
        // Only one BOM at the very start is removed.
        check(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n", &[]);
        check(b"data: \xEF\xBB\xBFa\n\n", &[seen("", b"\xEF\xBB\xBFa")]);
        // A broken BOM is ordinary bytes (here, part of an unknown field name).
        check(b"\xEF\xBBdata: a\n\ndata: b\n\n", &[seen("", b"b")]);
        check(b"\xEF\xBB", &[]);
    }

    #[test]
    fn invalid_utf8_passes_through() {
        check(
            b"event: \xFF\xFE\ndata: \xC3\x28 \xF0\x9F\x98\n\n",
            &[seen("\u{FFFD}\u{FFFD}", b"\xC3\x28 \xF0\x9F\x98")],
        );
        check("data: é✓😀\n\n".as_bytes(), &[seen("", "é✓😀".as_bytes())]);
    }

    #[test]
    fn oversized_events_are_dropped() {
        // Exactly at the limit is fine; one byte over drops the event, and only that event.
        check_with_limit(b"data: 12345\n\n", 5, &[seen("", b"12345")], 0);
        check_with_limit(b"data: 123456\n\ndata: ok\n\n", 5, &[seen("", b"ok")], 1);
        // The joining newline counts.
        check_with_limit(b"data: 12\ndata: 34\n\n", 5, &[seen("", b"12\n34")], 0);
        check_with_limit(
            b"data: 123\ndata: 45\n\ndata: x\n\n",
            5,
            &[seen("", b"x")],
            1,
        );
        // A line far longer than the limit is skipped without being buffered.
        let mut long = b"data: ".to_vec();
        long.extend(std::iter::repeat_n(b'x', 100));
        long.extend_from_slice(b"\ndata: more\n\ndata: ok\n\n");
        check_with_limit(&long, 5, &[seen("", b"ok")], 1);
        // A long line of another field costs nothing.
        let mut comment = b": ".to_vec();
        comment.extend(std::iter::repeat_n(b'x', 100));
        comment.extend_from_slice(b"\r\ndata: ok\r\n\r\n");
        check_with_limit(&comment, 5, &[seen("", b"ok")], 0);
        // An overflowing final event without its blank line is counted at finish.
        check_with_limit(b"data: ok\n\ndata: 123456", 5, &[seen("", b"ok")], 1);
    }

    #[test]
    fn buffers_stay_bounded() {
        let mut framer = SseFramer::with_limit(1024);
        let line = vec![b'x'; 4096];
        for _ in 0..1000 {
            framer.feed(b"data: ", |_| {});
            framer.feed(&line, |_| {});
        }
        assert!(framer.line.bytes.capacity() <= 1024 + LINE_SLACK_BYTES * 2);
        assert!(framer.pending.data.capacity() <= 1024);
        framer.finish(|_| {});
        assert_eq!(framer.overflowed_events(), 1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 64,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// An endless line of any field, in chunks of any size, never holds more than about
        /// twice the limit (a `Vec` grows by doubling), and an endless `data:` line drops its
        /// event.
        #[test]
        fn an_endless_line_is_bounded(
            head in proptest::sample::select(vec![&b"data: "[..], b"data:", b"event: ", b": ", b"x", b""]),
            limit in 1usize..2048,
            sizes in proptest::collection::vec(1usize..5000, 1..64),
            end in proptest::sample::select(vec![&b""[..], b"\n", b"\r\n\r\n"]),
        ) {
            let mut framer = SseFramer::with_limit(limit);
            let mut dispatched = 0;
            framer.feed(head, |_| dispatched += 1);
            let bound = 2 * (limit + LINE_SLACK_BYTES) + 64;
            for size in &sizes {
                framer.feed(&vec![b'y'; *size], |_| dispatched += 1);
                proptest::prop_assert!(framer.line.bytes.capacity() <= bound, "capacity {}", framer.line.bytes.capacity());
                proptest::prop_assert!(framer.line.bytes.len() <= limit + LINE_SLACK_BYTES);
                proptest::prop_assert!(framer.pending.data.len() <= limit);
                proptest::prop_assert!(framer.pending.event.len() <= limit + LINE_SLACK_BYTES);
            }
            framer.feed(end, |_| dispatched += 1);
            framer.finish(|_| dispatched += 1);
            let total = head.len() + sizes.iter().sum::<usize>();
            if head.starts_with(b"data:") && total > limit + LINE_SLACK_BYTES {
                proptest::prop_assert_eq!(dispatched, 0);
                proptest::prop_assert_eq!(framer.overflowed_events(), 1);
            }
            proptest::prop_assert!(framer.line.bytes.capacity() <= RETAINED_CAPACITY_BYTES);
            proptest::prop_assert!(framer.pending.data.capacity() <= RETAINED_CAPACITY_BYTES);
        }
    }

    #[test]
    fn framer_is_reusable_after_finish() {
        let mut framer = SseFramer::default();
        assert_eq!(frame(&mut framer, &[b"data: a"]), [seen("", b"a")]);
        assert_eq!(frame(&mut framer, &[b"\ndata: b\n\n"]), [seen("", b"b")]);
    }
}
