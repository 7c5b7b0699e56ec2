//! Forward-proxy tunnels (`[proxy.forward]`): answers a `CONNECT` the router accepted, then
//! either terminates the client's TLS with a leaf minted for the provider host it named (the
//! requests inside are served by the proxy's handler, see `proxy::serve_tunnel`), or, for
//! another host with `passthrough`, copies bytes blind both ways. It never connects anywhere
//! the router did not name, and never weakens the upstream side: intercepted calls go out on
//! the same verified client as base-URL ones.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::router::normalize_host;
use super::ProxyBody;
use crate::ca::Leaves;
use crate::config::Provider;
use crate::metrics::Metrics;

/// What forward-proxy mode needs at run time.
pub struct Forward {
    pub leaves: Arc<Leaves>,
    pub metrics: Arc<Metrics>,
    /// Bounds the connection to a passthrough host (`upstream.connect_timeout_secs`).
    pub connect_timeout: Duration,
    /// A passthrough tunnel silent both ways this long is closed (`upstream.idle_timeout_secs`).
    pub idle_timeout: Duration,
}

/// A tunnel meter said yes to, waiting for hyper to hand over the client's connection (it
/// does once the 200 is written and the connection's HTTP/1 task ends).
pub struct Pending {
    pub upgrade: hyper::upgrade::OnUpgrade,
    pub plan: Plan,
}

pub enum Plan {
    /// Terminate TLS as `host` and serve the requests inside for `provider`.
    Intercept {
        provider: Arc<Provider>,
        host: String,
    },
    /// Copy bytes blind between the client and this connection.
    Passthrough(TcpStream),
}

/// Where a client connection's `CONNECT` leaves its tunnel for the connection's task, which
/// runs it (holding the connection's slot) once hyper lets go of the connection.
pub type Stash = Mutex<Option<Pending>>;

/// Says yes to a `CONNECT`: for passthrough, connects to the host first (so a host that
/// cannot be reached is a 502, not a tunnel that closes at once), then leaves the tunnel in
/// `stash` and answers 200.
pub async fn open(
    forward: &Forward,
    request: &mut Request<Incoming>,
    target: super::router::Target,
    stash: &Stash,
) -> Response<ProxyBody> {
    use super::router::Target;
    let plan = match target {
        Target::Intercept { provider, host } => {
            forward
                .metrics
                .forward_tunnels_total
                .with_label_values(&["intercepted"])
                .inc();
            Plan::Intercept { provider, host }
        }
        Target::Passthrough { host, port } => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let connected =
                tokio::time::timeout(forward.connect_timeout, TcpStream::connect((bare, port)))
                    .await;
            match connected {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    forward
                        .metrics
                        .forward_tunnels_total
                        .with_label_values(&["passthrough"])
                        .inc();
                    Plan::Passthrough(stream)
                }
                Ok(Err(err)) => {
                    tracing::debug!(%host, port, error = %err, "passthrough host unreachable");
                    return super::json_error(
                        StatusCode::BAD_GATEWAY,
                        "tunnel_unreachable",
                        "the CONNECT host could not be reached",
                        None,
                    );
                }
                Err(_) => {
                    return super::json_error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "tunnel_timeout",
                        "the CONNECT host did not accept the connection in time (upstream.connect_timeout_secs)",
                        None,
                    )
                }
            }
        }
        Target::Path | Target::Host { .. } => {
            return super::json_error(StatusCode::BAD_REQUEST, "bad_request", "not a tunnel", None)
        }
    };
    let upgrade = hyper::upgrade::on(request);
    if let Ok(mut slot) = stash.lock() {
        *slot = Some(Pending { upgrade, plan });
    }
    Response::new(Either::Right(Full::new(Bytes::new())))
}

/// Why an intercepted tunnel's TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake: {0}")]
    Tls(#[from] std::io::Error),
    #[error("the client asked for {sni:?} (SNI) inside a tunnel to {host:?}")]
    WrongName { sni: String, host: String },
    #[error(transparent)]
    Mint(#[from] crate::ca::CaError),
    #[error("no TLS handshake within {0:?}")]
    Timeout(Duration),
}

/// Terminates the client's TLS inside an intercepted tunnel to `host`: reads the ClientHello,
/// refuses an SNI other than `host` (a leaf is only ever minted for the host the router
/// matched), and completes the handshake with the cached (or newly minted) leaf for `host`.
pub async fn accept_tls(
    forward: &Forward,
    upgraded: Upgraded,
    host: &str,
    limit: Duration,
) -> Result<tokio_rustls::server::TlsStream<TokioIo<Upgraded>>, HandshakeError> {
    let handshake = async {
        let acceptor = tokio_rustls::LazyConfigAcceptor::new(
            rustls::server::Acceptor::default(),
            TokioIo::new(upgraded),
        );
        let start = acceptor.await?;
        let name = host.trim_start_matches('[').trim_end_matches(']');
        if let Some(sni) = start.client_hello().server_name() {
            let sni = normalize_host(sni);
            if sni != name {
                return Err(HandshakeError::WrongName {
                    sni,
                    host: name.to_string(),
                });
            }
        }
        let (config, cache) = forward.leaves.server_config(name)?;
        forward
            .metrics
            .forward_cert_cache_total
            .with_label_values(&[cache.as_str()])
            .inc();
        Ok(start.into_stream(config).await?)
    };
    match tokio::time::timeout(limit, handshake).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::Timeout(limit)),
    }
}

/// Copies bytes between the client and the passthrough host until either side closes, the
/// tunnel is silent both ways for `forward.idle_timeout`, or shutdown begins (a blind tunnel
/// has no call to finish and no record to write).
pub async fn passthrough(
    forward: &Forward,
    upgraded: Upgraded,
    server: TcpStream,
    mut shutdown: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Watched {
        inner: TokioIo::new(upgraded),
        started,
        last: last.clone(),
    };
    let mut server = Watched {
        inner: server,
        started,
        last: last.clone(),
    };
    let idle = forward.idle_timeout;
    let silence = async {
        loop {
            let since_start = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = started + since_start + idle;
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut server) => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "passthrough tunnel ended with an error");
            }
        }
        () = silence => tracing::debug!("passthrough tunnel idle; closing it"),
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
}

/// An IO that notes when it last read anything, for the passthrough idle timer.
struct Watched<T> {
    inner: T,
    started: Instant,
    last: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = u64::try_from(this.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            this.last.fetch_max(ms, Ordering::Relaxed);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
