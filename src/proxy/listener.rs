//! Bounds on client connections to the proxy port: at most `server.max_connections` open at
//! once (past it, new connections wait in the listen backlog until one closes), and none kept
//! longer than `server.header_read_timeout_secs` without a request in progress. The latter
//! closes slow-header (slowloris) and silent clients, HTTP/1.1 and HTTP/2 alike, and idle
//! keep-alive connections.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// The limits the accept loop applies, and the metrics it keeps.
#[derive(Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

impl ConnectionLimits {
    pub fn from_config(config: &crate::config::ServerConfig, metrics: Arc<Metrics>) -> Self {
        ConnectionLimits {
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            metrics,
        }
    }
}

/// One of the `max_connections` places, held by a connection's task while it runs (a task
/// aborted at the end of the drain frees it too).
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Slot {
    pub fn new(permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Slot {
        metrics.client_connections.inc();
        Slot {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.client_connections.dec();
    }
}

/// What one connection is doing: the requests whose response is still open, and when the last
/// request began or ended (milliseconds since the connection was accepted).
pub struct Activity {
    accepted: Instant,
    open: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            accepted: Instant::now(),
            open: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// A request's headers are in: the connection is busy until the returned guard (carried by
    /// the response body) is dropped.
    pub fn begin(self: &Arc<Self>) -> ResponseGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.touch();
        ResponseGuard(self.clone())
    }

    /// When the connection becomes closable for idleness: `None` while a response is open,
    /// else `timeout` after the last request began or ended.
    pub fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.open.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.accepted + last + timeout)
    }
}

/// Marks a request in progress on its connection until dropped.
pub struct ResponseGuard(Arc<Activity>);

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its connection marked busy until hyper drops it. Frames, end of
/// stream and size hint pass through unchanged.
pub struct Tracked<B> {
    inner: B,
    _guard: ResponseGuard,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, guard: ResponseGuard) -> Tracked<B> {
        Tracked {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How much of a refused request body is read and thrown away (bytes, or frames where a
/// `Limited` body hides their size), and for how long at most.
const DISCARD_BYTES: u64 = 1 << 30;
const DISCARD_FRAMES: u64 = 1 << 16;
const DISCARD_TIME: Duration = Duration::from_secs(30);

/// Reads and throws away the rest of a request body meter refused (413), bounded in bytes and
/// time, so that a client still uploading gets to read the answer: a connection closed with
/// unread data in it is reset, and the client would see a broken pipe instead of the 413 (and
/// an SDK would retry it). Over-limit frames of a `Limited` body are skipped like the others.
pub fn discard_rest<B>(body: B)
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    tokio::spawn(async move {
        let mut body = body;
        let (mut read, mut frames) = (0u64, 0u64);
        let discard = async {
            while let Some(frame) = body.frame().await {
                frames += 1;
                match frame {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            read += bytes::Buf::remaining(data) as u64;
                        }
                    }
                    Err(err) => {
                        let err: Box<dyn std::error::Error + Send + Sync> = err.into();
                        if !err.is::<http_body_util::LengthLimitError>() {
                            return;
                        }
                    }
                }
                if read > DISCARD_BYTES || frames > DISCARD_FRAMES {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(DISCARD_TIME, discard).await;
    });
}

/// Whether a connection's error is hyper's HTTP/1 header read timeout.
pub fn is_header_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn idle_deadline_waits_for_open_responses() {
        let activity = Activity::new();
        let timeout = Duration::from_secs(30);
        let first = activity.idle_deadline(timeout).unwrap();
        assert!(first <= Instant::now() + timeout);
        let guard = activity.begin();
        assert_eq!(activity.idle_deadline(timeout), None, "busy: never idle");
        let second = activity.begin();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(guard);
        assert_eq!(activity.idle_deadline(timeout), None, "one still open");
        drop(second);
        let after = activity.idle_deadline(timeout).unwrap();
        assert!(
            after >= first + Duration::from_millis(20),
            "counted from the end"
        );
    }
}
