//! Forward-proxy tunnels (`[proxy.forward]`): answers a `CONNECT` the router accepted, then
//! either terminates the client's TLS with a leaf minted for the provider host it named (the
//! requests inside are served by the proxy's handler, see `proxy::serve_tunnel`), or, for
//! another host with `passthrough`, copies bytes blind both ways. It never connects anywhere
//! the router did not name, and never weakens the upstream side: intercepted calls go out on
//! the same verified client as base-URL ones.

use std::net::{IpAddr, SocketAddr};
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
    /// meter's own listeners (the proxy and metrics addresses, as bound): a passthrough host
    /// that resolves to one of them is refused, so a tunnel never leads back into meter.
    pub own: Vec<SocketAddr>,
}

/// A tunnel meter said yes to, waiting for hyper to hand over the client's connection (it
/// does once the 200 is written and the connection's HTTP/1 task ends).
pub struct Pending {
    pub upgrade: hyper::upgrade::OnUpgrade,
    pub plan: Plan,
}

pub enum Plan {
    /// Terminate TLS as `host` and serve the requests inside (which must name `host:port`)
    /// for `provider`.
    Intercept {
        provider: Arc<Provider>,
        host: String,
        port: u16,
    },
    /// Copy bytes blind between the client and this connection.
    Passthrough(TcpStream),
}

/// Where a client connection's `CONNECT` leaves its tunnel for the connection's task, which
/// runs it (holding the connection's slot) once hyper lets go of the connection.
pub type Stash = Mutex<Option<Pending>>;

/// Says yes to a `CONNECT`: for passthrough, resolves and connects to the host first (so a
/// host that cannot be reached is a 502, not a tunnel that closes at once, and one that
/// resolves to meter's own listeners is a 403), then leaves the tunnel in `stash` and answers
/// 200.
pub async fn open(
    forward: &Forward,
    request: &mut Request<Incoming>,
    target: super::router::Target,
    stash: &Stash,
) -> Response<ProxyBody> {
    use super::router::Target;
    let plan = match target {
        Target::Intercept {
            provider,
            host,
            port,
        } => {
            forward
                .metrics
                .forward_tunnels_total
                .with_label_values(&["intercepted"])
                .inc();
            Plan::Intercept {
                provider,
                host,
                port,
            }
        }
        Target::Passthrough { host, port } => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let dialed =
                tokio::time::timeout(forward.connect_timeout, dial(bare, port, &forward.own)).await;
            match dialed {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    forward
                        .metrics
                        .forward_tunnels_total
                        .with_label_values(&["passthrough"])
                        .inc();
                    Plan::Passthrough(stream)
                }
                Ok(Err(DialError::Own(addr))) => {
                    forward
                        .metrics
                        .forward_tunnels_total
                        .with_label_values(&["refused"])
                        .inc();
                    let shown: String = host.chars().take(128).collect();
                    return super::json_error(
                        StatusCode::FORBIDDEN,
                        "not_a_proxy",
                        &format!("{shown}:{port} resolves to {addr}, which is meter itself; a tunnel never leads back into meter"),
                        None,
                    );
                }
                Ok(Err(DialError::Io(err))) => {
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

/// Why a passthrough host was not connected to.
enum DialError {
    /// It resolves to this address, one of meter's own listeners.
    Own(SocketAddr),
    /// It did not resolve, or no address of it accepted the connection.
    Io(std::io::Error),
}

/// Connects to a passthrough host: resolves it once, refuses it when any of its addresses is
/// one of meter's listeners (`own`, see [`is_own`]), then tries the addresses it resolved to,
/// in order (never resolving again, so what is connected to is what was checked).
async fn dial(host: &str, port: u16, own: &[SocketAddr]) -> Result<TcpStream, DialError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(DialError::Io)?
        .collect();
    if let Some(addr) = addrs.iter().find(|addr| is_own(**addr, own)) {
        return Err(DialError::Own(*addr));
    }
    let mut last = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "the host resolved to no address",
    );
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(err) => last = err,
        }
    }
    Err(DialError::Io(last))
}

/// Whether a connection to `addr` could reach one of meter's listeners `own`: the same port,
/// and the same address (an IPv4-mapped IPv6 address counts as its IPv4 one), or any address
/// of this machine when the listener's is unspecified (`0.0.0.0`, `::`) or `addr`'s is (a
/// connection to `0.0.0.0` reaches this machine).
pub fn is_own(addr: SocketAddr, own: &[SocketAddr]) -> bool {
    let ip = addr.ip().to_canonical();
    own.iter().any(|listener| {
        let listen = listener.ip().to_canonical();
        listener.port() == addr.port()
            && (listen == ip || ip.is_unspecified() || (listen.is_unspecified() && is_local(ip)))
    })
}

/// Whether `ip` is one of this machine's addresses: loopback, or one a socket can be bound to
/// (binding fails with "address not available" for any other).
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn own_listeners_are_recognized_by_address_not_by_name() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let loopback = [addr("127.0.0.1:8787"), addr("127.0.0.1:9090")];
        assert!(is_own(addr("127.0.0.1:8787"), &loopback));
        assert!(is_own(addr("127.0.0.1:9090"), &loopback), "metrics too");
        assert!(is_own(addr("[::ffff:127.0.0.1]:8787"), &loopback));
        assert!(is_own(addr("0.0.0.0:8787"), &loopback));
        assert!(is_own(addr("[::]:8787"), &loopback));
        assert!(!is_own(addr("127.0.0.1:8788"), &loopback), "another port");
        assert!(
            !is_own(addr("127.0.0.2:8787"), &loopback),
            "not bound there"
        );
        assert!(!is_own(addr("[::1]:8787"), &loopback));
        // Unspecified: every address of this machine, on that port.
        let any = [addr("0.0.0.0:8787")];
        assert!(is_own(addr("127.0.0.1:8787"), &any));
        assert!(is_own(addr("127.0.0.2:8787"), &any));
        assert!(is_own(addr("[::ffff:127.0.0.1]:8787"), &any));
        assert!(is_own(addr("[::1]:8787"), &any));
        assert!(!is_own(addr("127.0.0.1:8788"), &any));
        // TEST-NET-1 (RFC 5737) is no machine's address.
        assert!(!is_own(addr("192.0.2.1:8787"), &any));
        assert!(is_own(addr("[::1]:8787"), &[addr("[::]:8787")]));
    }
}
