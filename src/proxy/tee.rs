//! The tee: wraps the upstream response body, passes every frame, the end of stream and the size
//! hint to the client unchanged, and shows the usage parser a (decompressed) copy of the data.
//! Its end hook fires exactly once: at the end of the body, on an upstream error, or when the
//! client goes away (drop).
//!
//! A data frame is handed to the client first and read by the parser only on the next poll, so
//! parsing never sits between an upstream byte and the client.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::context::{CallContext, Outcome};
use super::strip::UsageChunkStripper;
use crate::ledger::Recorder;
use crate::usage::{ParsedUsage, UsageParser};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The usage side of the tee: optional decompression, then the parser, under a byte cap.
pub struct UsageReader {
    decoder: Option<Decoder>,
    parser: Option<Box<dyn UsageParser>>,
    /// Decompressed bytes the parser may still read; past it, usage is unreadable.
    remaining: u64,
    /// The parser reads event by event in bounded memory (SSE, NDJSON): the cap bounds what one
    /// piece decompresses to, not the stream's length, so a long stream keeps its usage.
    incremental: bool,
    cap: u64,
}

impl UsageReader {
    /// `encoding` is the response's `Content-Encoding`; an encoding meter cannot decode leaves
    /// the usage unread (the client still gets every byte).
    pub fn new(
        parser: Option<Box<dyn UsageParser>>,
        encoding: Option<&str>,
        cap: u64,
        incremental: bool,
    ) -> Self {
        let (decoder, parser) = match (parser, encoding) {
            (Some(parser), encoding) => match Decoder::for_encoding(encoding) {
                Ok(decoder) => (decoder, Some(parser)),
                Err(()) => (None, None),
            },
            (None, _) => (None, None),
        };
        UsageReader {
            decoder,
            parser,
            remaining: cap,
            incremental,
            cap,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        let Some(parser) = self.parser.as_mut() else {
            return;
        };
        if self.incremental {
            match self.decoder.as_mut() {
                None => parser.feed(chunk),
                Some(decoder) => match decoder.decode(chunk, self.cap) {
                    Ok(plain) => parser.feed(&plain),
                    Err(()) => self.overflow(),
                },
            }
            return;
        }
        match self.decoder.as_mut() {
            None => {
                if chunk.len() as u64 > self.remaining {
                    self.overflow();
                    return;
                }
                self.remaining -= chunk.len() as u64;
                parser.feed(chunk);
            }
            Some(decoder) => match decoder.decode(chunk, self.remaining) {
                Ok(plain) => {
                    self.remaining -= plain.len() as u64;
                    parser.feed(&plain);
                }
                Err(()) => self.overflow(),
            },
        }
    }

    /// The body was too big (or not decodable) to read: drop the parser, usage is unread.
    fn overflow(&mut self) {
        tracing::debug!("response body over the parse cap or undecodable; usage left unread");
        self.parser = None;
        self.decoder = None;
    }

    fn finish(&mut self) -> Option<ParsedUsage> {
        let limit = if self.incremental {
            self.cap
        } else {
            self.remaining
        };
        if let Some(decoder) = self.decoder.as_mut() {
            match decoder.finish(limit) {
                Ok(plain) => {
                    if let Some(parser) = self.parser.as_mut() {
                        parser.feed(&plain);
                    }
                }
                Err(()) => self.overflow(),
            }
        }
        self.parser.as_mut().map(|parser| parser.finish())
    }
}

/// A `Write` sink that refuses to grow past a limit: the cap against decompression bombs.
struct CappedSink {
    buf: Vec<u8>,
    limit: u64,
}

impl Write for CappedSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if (self.buf.len() + data.len()) as u64 > self.limit {
            return Err(std::io::Error::other(
                "decompressed body over the parse cap",
            ));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Decoder {
    Gzip(flate2::write::MultiGzDecoder<CappedSink>),
    Deflate(flate2::write::ZlibDecoder<CappedSink>),
    Brotli(Box<brotli::DecompressorWriter<CappedSink>>),
    Zstd(zstd::stream::write::Decoder<'static, CappedSink>),
}

impl Decoder {
    fn for_encoding(encoding: Option<&str>) -> Result<Option<Decoder>, ()> {
        let sink = || CappedSink {
            buf: Vec::new(),
            limit: 0,
        };
        let encoding = encoding.map(|e| e.trim().to_ascii_lowercase());
        Ok(Some(match encoding.as_deref() {
            None | Some("") | Some("identity") => return Ok(None),
            Some("gzip") | Some("x-gzip") => {
                Decoder::Gzip(flate2::write::MultiGzDecoder::new(sink()))
            }
            Some("deflate") => Decoder::Deflate(flate2::write::ZlibDecoder::new(sink())),
            Some("br") => Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(sink(), 4096))),
            Some("zstd") => {
                Decoder::Zstd(zstd::stream::write::Decoder::new(sink()).map_err(|_| ())?)
            }
            Some(_) => return Err(()),
        }))
    }

    fn sink(&mut self) -> &mut CappedSink {
        match self {
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Deflate(d) => d.get_mut(),
            Decoder::Brotli(d) => d.get_mut(),
            Decoder::Zstd(d) => d.get_mut(),
        }
    }

    /// Decompresses `chunk`, returning at most `limit` bytes of output or `Err` past it.
    fn decode(&mut self, chunk: &[u8], limit: u64) -> Result<Vec<u8>, ()> {
        self.sink().limit = limit;
        let written = match self {
            Decoder::Gzip(d) => d.write_all(chunk).and_then(|_| d.flush()),
            Decoder::Deflate(d) => d.write_all(chunk).and_then(|_| d.flush()),
            Decoder::Brotli(d) => d.write_all(chunk).and_then(|_| d.flush()),
            Decoder::Zstd(d) => d.write_all(chunk).and_then(|_| d.flush()),
        };
        written.map_err(|_| ())?;
        Ok(std::mem::take(&mut self.sink().buf))
    }

    fn finish(&mut self, limit: u64) -> Result<Vec<u8>, ()> {
        self.sink().limit = limit;
        let done = match self {
            Decoder::Gzip(d) => d.try_finish(),
            Decoder::Deflate(d) => d.try_finish(),
            Decoder::Brotli(d) => d.flush(),
            Decoder::Zstd(d) => d.flush(),
        };
        done.map_err(|_| ())?;
        Ok(std::mem::take(&mut self.sink().buf))
    }
}

/// What the tee needs to close a call.
pub struct Metering {
    pub context: CallContext,
    pub reader: UsageReader,
    pub recorder: Recorder,
    /// Set when meter injected stream usage: hides the usage-only chunk from the client.
    pub stripper: Option<UsageChunkStripper>,
    /// Set when a client that hangs up mid-stream should not stop the reading of usage: the
    /// rest of the body is read (bounded in time) by a task tracked here.
    pub drain: Option<Drain>,
}

/// Reading on after a client hung up: the tracker that owns the tasks, their time limit, and
/// the token shutdown fires to cut them short.
#[derive(Clone)]
pub struct Drain {
    pub tracker: TaskTracker,
    pub limit: Duration,
    pub shutdown: CancellationToken,
}

/// The response body meter sends to the client.
pub struct TeeBody {
    /// `None` once handed to a drain task.
    inner: Option<Incoming>,
    /// Upstream data not yet read by the parser. It is read at the start of a poll once the
    /// client has been handed everything before it, so parsing never sits between an
    /// upstream byte and the client.
    unread: Vec<Bytes>,
    /// Data already come from upstream and not yet handed to hyper: the frames of one burst,
    /// sent in one write (see `poll_frame`).
    out: Outgoing,
    /// What ended a burst, due to the client after the burst's data.
    held: Option<Held>,
    /// Scheduler turns `out` has waited for more of its burst (see `poll_frame`).
    yielded: u8,
    /// The last data frame came within [`BURST_GAP`] of the one before it.
    burst: bool,
    /// A data frame has come.
    seen_data: bool,
    /// The upstream body has ended (a held tail may still be due to the client).
    upstream_done: bool,
    idle_timeout: Duration,
    /// Fires `idle_timeout` after the last frame at the earliest. It is not re-armed per frame
    /// (a timer-wheel update each time): when it fires, it is pushed to `last_frame` +
    /// `idle_timeout` if a frame came meanwhile.
    idle: Pin<Box<Sleep>>,
    last_frame: tokio::time::Instant,
    metering: Option<Metering>,
}

/// A burst of data for the client: one frame kept as is, more copied into one buffer.
#[derive(Default)]
enum Outgoing {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Outgoing {
    fn push(&mut self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        *self = match std::mem::take(self) {
            Outgoing::Empty => Outgoing::One(piece),
            Outgoing::One(first) => {
                let mut buf = BytesMut::with_capacity((first.len() + piece.len()).max(COALESCE));
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&piece);
                Outgoing::Many(buf)
            }
            Outgoing::Many(mut buf) => {
                buf.extend_from_slice(&piece);
                Outgoing::Many(buf)
            }
        };
    }

    fn len(&self) -> usize {
        match self {
            Outgoing::Empty => 0,
            Outgoing::One(bytes) => bytes.len(),
            Outgoing::Many(buf) => buf.len(),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Outgoing::Empty)
    }

    fn take(&mut self) -> Bytes {
        match std::mem::take(self) {
            Outgoing::Empty => Bytes::new(),
            Outgoing::One(bytes) => bytes,
            Outgoing::Many(buf) => buf.freeze(),
        }
    }
}

/// What ended a burst of data: a trailers frame or an upstream error.
enum Held {
    Frame(Frame<Bytes>),
    Error(hyper::Error),
}

/// A burst is handed over once it holds this much, whatever else is ready.
const COALESCE: usize = 16 * 1024;
/// Frames closer than this are a burst: the upstream had them ready at once.
const BURST_GAP: Duration = Duration::from_millis(1);
/// Scheduler turns a burst waits for its next frame: hyper's client connection task hands a
/// body over one frame at a time and needs two turns to pass on the next one it has buffered.
const BURST_TURNS: u8 = 2;

#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?}")]
pub struct IdleTimeout(Duration);

impl TeeBody {
    pub fn new(inner: Incoming, idle_timeout: Duration, metering: Metering) -> TeeBody {
        TeeBody {
            inner: Some(inner),
            unread: Vec::new(),
            out: Outgoing::Empty,
            held: None,
            yielded: 0,
            burst: false,
            seen_data: false,
            upstream_done: false,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            last_frame: tokio::time::Instant::now(),
            metering: Some(metering),
        }
    }

    fn read_unread(&mut self) {
        if let Some(metering) = self.metering.as_mut() {
            for chunk in self.unread.drain(..) {
                metering.reader.feed(&chunk);
            }
        }
    }

    /// The end hook: runs once, makes the call's record.
    fn finish(&mut self, outcome: Outcome) {
        self.read_unread();
        if let Some(metering) = self.metering.take() {
            metering.close(outcome);
        }
    }

    fn stripping(&self) -> bool {
        self.metering.as_ref().is_some_and(|m| m.stripper.is_some())
    }
}

impl Metering {
    fn close(mut self, outcome: Outcome) {
        let parsed = self.reader.finish();
        let record = self.context.into_record(parsed, outcome);
        self.recorder.record(record);
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.out.is_empty() {
                this.read_unread();
            }
            if !this.out.is_empty() && (this.upstream_done || this.held.is_some()) {
                return Poll::Ready(Some(Ok(Frame::data(this.out.take()))));
            }
            match this.held.take() {
                Some(Held::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Some(Held::Error(err)) => {
                    this.finish(Outcome::Cut("upstream_reset"));
                    return Poll::Ready(Some(Err(err.into())));
                }
                None => {}
            }
            if this.upstream_done {
                // Only a stripper's held tail can still be due.
                let tail = this
                    .metering
                    .as_mut()
                    .and_then(|m| m.stripper.as_mut())
                    .map(UsageChunkStripper::finish)
                    .filter(|tail| !tail.is_empty());
                if let Some(tail) = tail {
                    return Poll::Ready(Some(Ok(Frame::data(tail))));
                }
                this.finish(Outcome::Complete);
                return Poll::Ready(None);
            }
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let now = tokio::time::Instant::now();
                    this.burst = this.seen_data && now - this.last_frame < BURST_GAP;
                    this.last_frame = now;
                    match frame.into_data() {
                        Ok(data) => {
                            let Some(metering) = this.metering.as_mut() else {
                                return Poll::Ready(Some(Ok(Frame::data(data))));
                            };
                            metering.context.first_byte.get_or_insert_with(Instant::now);
                            this.seen_data = true;
                            this.unread.push(data.clone());
                            let piece = match metering.stripper.as_mut() {
                                Some(stripper) => stripper.filter(data),
                                None => data,
                            };
                            this.out.push(piece);
                            this.yielded = 0;
                            if this.out.len() >= COALESCE {
                                return Poll::Ready(Some(Ok(Frame::data(this.out.take()))));
                            }
                        }
                        Err(frame) if this.out.is_empty() => return Poll::Ready(Some(Ok(frame))),
                        Err(frame) => this.held = Some(Held::Frame(frame)),
                    }
                }
                Poll::Ready(Some(Err(err))) => this.held = Some(Held::Error(err)),
                Poll::Ready(None) => this.upstream_done = true,
                Poll::Pending if !this.out.is_empty() => {
                    // A burst (frames back to back): the upstream connection's task may hold
                    // more frames already read, and hands them over one per turn. Waiting a
                    // turn or two (a deferred wake-up, no timer) lets them join this write:
                    // one write per burst instead of one per frame. A frame after a pause is
                    // handed over at once, and nothing ever waits for the network.
                    if this.burst && this.yielded < BURST_TURNS {
                        this.yielded += 1;
                        let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
                        return Poll::Pending;
                    }
                    this.yielded = 0;
                    return Poll::Ready(Some(Ok(Frame::data(this.out.take()))));
                }
                Poll::Pending => {
                    while this.idle.as_mut().poll(cx).is_ready() {
                        let due = this.last_frame + this.idle_timeout;
                        if due <= tokio::time::Instant::now() {
                            this.finish(Outcome::Cut("upstream_idle_timeout"));
                            return Poll::Ready(Some(Err(IdleTimeout(this.idle_timeout).into())));
                        }
                        this.idle.as_mut().reset(due);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // With a stripper, a held tail may still be due after the upstream ends.
        self.out.is_empty()
            && self.held.is_none()
            && !self.stripping()
            && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            // Removing a chunk changes the length: promise nothing then.
            Some(inner) if !self.stripping() && self.out.is_empty() => inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for TeeBody {
    fn drop(&mut self) {
        if self.metering.is_none() {
            return;
        }
        // A server may stop polling once `is_end_stream` is true, without asking for the end:
        // that is a complete body. Anything else dropped early is a client that went away.
        if matches!(self.held, Some(Held::Error(_))) {
            self.finish(Outcome::Cut("upstream_reset"));
            return;
        }
        let upstream_ended =
            self.upstream_done || self.inner.as_ref().is_none_or(Body::is_end_stream);
        if upstream_ended {
            self.finish(Outcome::Complete);
            return;
        }
        self.read_unread();
        let (Some(mut metering), Some(inner)) = (self.metering.take(), self.inner.take()) else {
            return;
        };
        match metering.drain.take() {
            Some(drain) => {
                drain.tracker.spawn(drain_after_disconnect(
                    inner,
                    metering,
                    drain.limit,
                    drain.shutdown,
                ));
            }
            None => metering.close(Outcome::Cut("client_gone")),
        }
    }
}

/// Reads the rest of a body nobody will receive, so the provider's usage report is not lost;
/// dropping the upstream body at the deadline closes the connection (and the provider's meter).
async fn drain_after_disconnect(
    mut inner: Incoming,
    mut metering: Metering,
    limit: Duration,
    shutdown: CancellationToken,
) {
    use http_body_util::BodyExt;
    let read_rest = async {
        while let Some(frame) = inner.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        metering.reader.feed(data);
                    }
                }
                Err(_) => return,
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(limit, read_rest) => {}
        _ = shutdown.cancelled() => {}
    }
    metering.close(Outcome::Cut("client_gone"));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    struct Collect(Vec<u8>);
    impl UsageParser for Collect {
        fn feed(&mut self, chunk: &[u8]) {
            self.0.extend_from_slice(chunk);
        }
        fn finish(&mut self) -> ParsedUsage {
            ParsedUsage {
                model: Some(String::from_utf8_lossy(&self.0).into_owned()),
                ..ParsedUsage::default()
            }
        }
    }

    fn read(encoding: Option<&str>, body: &[u8], cap: u64) -> Option<String> {
        let mut reader =
            UsageReader::new(Some(Box::new(Collect(Vec::new()))), encoding, cap, false);
        for piece in body.chunks(7) {
            reader.feed(piece);
        }
        reader.finish().and_then(|p| p.model)
    }

    fn compress(encoding: &str, plain: &[u8]) -> Vec<u8> {
        match encoding {
            "gzip" => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(plain).unwrap();
                e.finish().unwrap()
            }
            "deflate" => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(plain).unwrap();
                e.finish().unwrap()
            }
            "br" => {
                let mut out = Vec::new();
                {
                    let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                    e.write_all(plain).unwrap();
                }
                out
            }
            "zstd" => zstd::encode_all(plain, 3).unwrap(),
            _ => plain.to_vec(),
        }
    }

    #[test]
    fn decodes_every_encoding_and_caps_bombs() {
        let plain = b"data: {\"usage\": 1}\n\n".repeat(50);
        for encoding in ["gzip", "deflate", "br", "zstd", "identity"] {
            let body = compress(encoding, &plain);
            let got = read(Some(encoding), &body, 1 << 20).unwrap();
            assert_eq!(got.as_bytes(), &plain[..], "{encoding}");
            // A cap below the decompressed size leaves usage unread instead of growing.
            assert_eq!(read(Some(encoding), &body, 100), None, "{encoding}");
        }
        let bomb = compress("zstd", &vec![0u8; 50 << 20]);
        assert!(bomb.len() < 10_000);
        assert_eq!(read(Some("zstd"), &bomb, 1 << 20), None);
        assert_eq!(read(Some("compress"), b"x", 1 << 20), None);
    }
}
