//! Test support: a fake provider speaking real HTTP on a loopback port, meter under test (in
//! process or as the real binary), a plain client, and ledger queries.
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meter::clock::Clock;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};

pub mod parsing;
pub mod postgres;

/// One piece of a fake response body: wait for `delay`, then for a gate permit if `gated`,
/// then send `bytes` as one frame.
#[derive(Clone)]
pub struct Piece {
    pub delay: Duration,
    pub gated: bool,
    pub bytes: Bytes,
}

impl Piece {
    pub fn now(bytes: impl Into<Bytes>) -> Piece {
        Piece {
            delay: Duration::ZERO,
            gated: false,
            bytes: bytes.into(),
        }
    }
    pub fn after(delay: Duration, bytes: impl Into<Bytes>) -> Piece {
        Piece {
            delay,
            gated: false,
            bytes: bytes.into(),
        }
    }
    pub fn gated(bytes: impl Into<Bytes>) -> Piece {
        Piece {
            delay: Duration::ZERO,
            gated: true,
            bytes: bytes.into(),
        }
    }
}

/// What the fake provider answers.
#[derive(Clone)]
pub struct FakeResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub pieces: Vec<Piece>,
    /// Delay before the response headers.
    pub head_delay: Duration,
    /// Cut the connection after the pieces instead of ending the body cleanly.
    pub reset_after: bool,
}

impl FakeResponse {
    pub fn json(status: u16, body: impl Into<Bytes>) -> FakeResponse {
        FakeResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            pieces: vec![Piece::now(body)],
            head_delay: Duration::ZERO,
            reset_after: false,
        }
    }
    pub fn sse(pieces: Vec<Piece>) -> FakeResponse {
        FakeResponse {
            status: 200,
            headers: vec![
                (
                    "content-type".into(),
                    "text/event-stream; charset=utf-8".into(),
                ),
                ("cache-control".into(), "no-cache".into()),
            ],
            pieces,
            head_delay: Duration::ZERO,
            reset_after: false,
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> FakeResponse {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A request the fake provider received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type Handler = dyn Fn(&Received) -> FakeResponse + Send + Sync;

/// A fake provider on 127.0.0.1:<ephemeral>.
pub struct FakeProvider {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// One entry per accepted connection: the ALPN protocol agreed ("" for plain HTTP).
    pub connections: Arc<Mutex<Vec<String>>>,
    /// Responses whose body the other side stopped reading before the end.
    pub aborted: Arc<std::sync::atomic::AtomicUsize>,
    tls: bool,
    gate: Arc<Semaphore>,
    _stop: oneshot::Sender<()>,
}

impl FakeProvider {
    pub async fn start(
        handler: impl Fn(&Received) -> FakeResponse + Send + Sync + 'static,
    ) -> FakeProvider {
        FakeProvider::start_inner(handler, None).await
    }

    /// A fake provider serving HTTPS (ALPN h2 and http/1.1) for 127.0.0.1 with a certificate
    /// from a fresh test CA, whose PEM is written to `ca_pem`.
    pub async fn start_tls(
        handler: impl Fn(&Received) -> FakeResponse + Send + Sync + 'static,
        ca_pem: &Path,
    ) -> FakeProvider {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "meter test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        std::fs::write(ca_pem, ca.pem()).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        FakeProvider::start_inner(handler, Some(acceptor)).await
    }

    async fn start_inner(
        handler: impl Fn(&Received) -> FakeResponse + Send + Sync + 'static,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let (stop, mut stopped) = oneshot::channel();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let aborted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (rec, g, conns, abort_count) = (
            received.clone(),
            gate.clone(),
            connections.clone(),
            aborted.clone(),
        );
        let is_tls = tls.is_some();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                let _ = stream.set_nodelay(true);
                let (handler, rec, gate) = (handler.clone(), rec.clone(), g.clone());
                let (tls, conns, abort_count) = (tls.clone(), conns.clone(), abort_count.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (handler, rec, gate) = (handler.clone(), rec.clone(), gate.clone());
                        let abort_count = abort_count.clone();
                        async move {
                            Ok::<_, Infallible>(
                                serve(request, &*handler, &rec, gate, abort_count).await,
                            )
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            conns.lock().unwrap().push(String::new());
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let alpn = stream
                                .get_ref()
                                .1
                                .alpn_protocol()
                                .map(|p| String::from_utf8_lossy(p).into_owned());
                            conns.lock().unwrap().push(alpn.unwrap_or_default());
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        FakeProvider {
            addr,
            received,
            connections,
            aborted,
            tls: is_tls,
            gate,
            _stop: stop,
        }
    }

    /// Lets `n` gated pieces through.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

type FakeBody = StreamBody<FrameReceiver>;

async fn serve(
    request: Request<Incoming>,
    handler: &Handler,
    received: &Mutex<Vec<Received>>,
    gate: Arc<Semaphore>,
    aborted: Arc<std::sync::atomic::AtomicUsize>,
) -> Response<FakeBody> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let got = Received {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body,
    };
    let answer = handler(&got);
    received.lock().unwrap().push(got);
    tokio::time::sleep(answer.head_delay).await;
    let (tx, rx) = mpsc::channel(4);
    let pieces = answer.pieces.clone();
    let reset = answer.reset_after;
    tokio::spawn(async move {
        for piece in pieces {
            tokio::time::sleep(piece.delay).await;
            if piece.gated {
                let Ok(permit) = gate.acquire().await else {
                    return;
                };
                permit.forget();
            }
            if tx.send(Ok(Frame::data(piece.bytes))).await.is_err() {
                aborted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return;
            }
        }
        if reset {
            // Let the pieces reach the wire first: hyper aborts the connection at once.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(Err(std::io::Error::other("reset"))).await;
        }
    });
    let mut response = Response::new(StreamBody::new(FrameReceiver(rx)));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap();
    for (name, value) in &answer.headers {
        response.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}

/// The fake provider's body frames, as a `Stream` over an mpsc receiver.
pub struct FrameReceiver(mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl futures_core::Stream for FrameReceiver {
    type Item = Result<Frame<Bytes>, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Meter running in this process on ephemeral ports.
pub struct Meter {
    pub proxy: SocketAddr,
    pub metrics: SocketAddr,
    pub db: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Meter {
    /// Starts meter with `extra_toml` appended to a config that routes `test` (and `openai`) to
    /// the fake provider.
    pub async fn start(upstream: &str, extra_toml: &str) -> Meter {
        Meter::start_with(upstream, "", extra_toml).await
    }

    /// Like `start`, with `server_toml` lines added to the `[server]` table.
    pub async fn start_with(upstream: &str, server_toml: &str, extra_toml: &str) -> Meter {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("meter.db");
        let mut meter = Meter::start_at(&db, upstream, server_toml, "", extra_toml).await;
        meter._dir = Some(dir);
        meter
    }

    /// Meter with its ledger at `db` (kept by the caller), `server_toml` lines in `[server]`
    /// and `store_toml` lines in `[store]`.
    pub async fn start_at(
        db: &Path,
        upstream: &str,
        server_toml: &str,
        store_toml: &str,
        extra_toml: &str,
    ) -> Meter {
        Meter::start_on(
            "127.0.0.1:0",
            db,
            upstream,
            server_toml,
            store_toml,
            extra_toml,
        )
        .await
    }

    /// Like `start`, with the proxy listening on `listen` (`server.listen`).
    pub async fn start_listening(listen: &str, upstream: &str, extra_toml: &str) -> Meter {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("meter.db");
        let mut meter = Meter::start_on(listen, &db, upstream, "", "", extra_toml).await;
        meter._dir = Some(dir);
        meter
    }

    async fn start_on(
        listen: &str,
        db: &Path,
        upstream: &str,
        server_toml: &str,
        store_toml: &str,
        extra_toml: &str,
    ) -> Meter {
        let toml = format!(
            "[server]\nlisten = \"{listen}\"\nmetrics_listen = \"127.0.0.1:0\"\ndrain_timeout_secs = 5\n{server_toml}\n\n[store]\npath = {db:?}\n{store_toml}\n\n[[provider]]\nname = \"openai\"\nupstream = \"{upstream}\"\n\n{extra_toml}",
        );
        let config = meter::config::Config::from_toml(&toml, "test").unwrap();
        let listeners = meter::app::Listeners::bind(&config).await.unwrap();
        let proxy = listeners.proxy.local_addr().unwrap();
        let metrics = listeners.metrics.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(meter::app::run(config, listeners, async move {
            let _ = stopped.await;
        }));
        Meter {
            proxy,
            metrics,
            db: db.to_path_buf(),
            stop: Some(stop),
            task: Some(task),
            _dir: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    /// Shuts meter down (drain, every record written).
    pub async fn stop(&mut self) {
        self.finish().await.unwrap();
    }

    /// Shuts meter down and returns what `run` returned (Err when records were lost).
    pub async fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("meter did not stop within 60 s")
                .unwrap(),
            None => Ok(()),
        }
    }

    /// `/metrics` once `ready` holds (records are counted by the ledger writer, a moment after
    /// the response), waiting at most 10 s.
    pub async fn metrics_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.metrics_text().await;
            if ready(&text) || std::time::Instant::now() > deadline {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn metrics_text(&self) -> String {
        let (status, _, body) = send(
            Request::get(format!("http://{}/metrics", self.metrics))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        String::from_utf8(body.to_vec()).unwrap()
    }
}

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A client speaking HTTP/2 with prior knowledge (h2c).
pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>()
}

/// Sends a request and collects the whole response.
pub async fn send(request: Request<Full<Bytes>>) -> (u16, HeaderMap, Bytes) {
    let response = client().request(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

pub fn post_json(url: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test-key")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// One ledger row, the columns tests look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub agent: String,
    pub provider: String,
    pub route: String,
    pub model: Option<String>,
    pub endpoint: String,
    pub streaming: bool,
    pub status: i64,
    pub input_tokens: i64,
    pub cache_read_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub usage_status: String,
    pub key_fingerprint: Option<String>,
    pub request_id: Option<String>,
    pub tags: Option<String>,
    pub error: Option<String>,
    pub ttft_ms: Option<i64>,
    pub ts: String,
    pub cache_write_tokens: i64,
    pub cache_write_1h_tokens: i64,
    pub web_search_calls: i64,
    pub images: i64,
    pub reported_cost_nanos: Option<i64>,
    pub cost_nanos: Option<i64>,
    pub cost_usd: Option<f64>,
    pub cost_source: Option<String>,
    pub price_id: Option<String>,
    pub table_cost_nanos: Option<i64>,
}

pub fn rows(db: &Path) -> Vec<Row> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT agent, provider, route, model, endpoint, streaming, status, input_tokens,
                    cache_read_tokens, output_tokens, reasoning_tokens, usage_status,
                    key_fingerprint, request_id, tags, error, ttft_ms, ts, cache_write_tokens,
                    cache_write_1h_tokens, web_search_calls, images, reported_cost_nanos,
                    cost_nanos, cost_usd, cost_source, price_id, table_cost_nanos
             FROM usage ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok(Row {
            agent: r.get(0)?,
            provider: r.get(1)?,
            route: r.get(2)?,
            model: r.get(3)?,
            endpoint: r.get(4)?,
            streaming: r.get(5)?,
            status: r.get(6)?,
            input_tokens: r.get(7)?,
            cache_read_tokens: r.get(8)?,
            output_tokens: r.get(9)?,
            reasoning_tokens: r.get(10)?,
            usage_status: r.get(11)?,
            key_fingerprint: r.get(12)?,
            request_id: r.get(13)?,
            tags: r.get(14)?,
            error: r.get(15)?,
            ttft_ms: r.get(16)?,
            ts: r.get(17)?,
            cache_write_tokens: r.get(18)?,
            cache_write_1h_tokens: r.get(19)?,
            web_search_calls: r.get(20)?,
            images: r.get(21)?,
            reported_cost_nanos: r.get(22)?,
            cost_nanos: r.get(23)?,
            cost_usd: r.get(24)?,
            cost_source: r.get(25)?,
            price_id: r.get(26)?,
            table_cost_nanos: r.get(27)?,
        })
    })
    .unwrap()
    .map(|r| r.unwrap())
    .collect()
}

/// Waits (at most 10 s, polling every 10 ms) until `done` holds; panics naming `what` if it
/// never does. For conditions another task or process brings about.
pub async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads a fixture file under tests/fixtures.
pub fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(path),
    )
    .unwrap()
}

/// The real `meter` binary, started with `meter serve` on ports 0; killed on drop.
pub struct BinMeter {
    pub child: std::process::Child,
    pub proxy: SocketAddr,
    pub metrics: SocketAddr,
    pub banner: String,
}

impl BinMeter {
    /// Starts `meter [args] serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0` in `cwd`
    /// and reads the addresses from the first line it prints.
    pub fn start(cwd: &Path, args: &[&str]) -> BinMeter {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meter"))
            .current_dir(cwd)
            .env_remove("METER_CONFIG")
            .args(args)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().expect("meter printed nothing").unwrap();
        // "meter listening on http://A (metrics http://B/metrics), ledger ..."
        let proxy = first
            .split("http://")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let metrics = first
            .split("http://")
            .nth(2)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut banner = first.clone();
        for line in lines.by_ref().take(6) {
            banner.push('\n');
            banner.push_str(&line.unwrap());
        }
        // Keep draining stdout so meter never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        BinMeter {
            child,
            proxy,
            metrics,
            banner,
        }
    }

    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "meter did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BinMeter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Meter running in this process on a given clock, with its ledger at a given path (kept
/// across restarts).
pub struct Instance {
    pub metrics: std::net::SocketAddr,
    pub proxy: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Instance {
    /// Meter on ephemeral ports with its ledger at `db` (kept across restarts), every
    /// built-in provider the tests use routed to `upstream`, and `extra` appended.
    pub async fn start(db: &Path, upstream: &str, extra: &str, clock: Clock) -> Instance {
        Instance::start_with_store(db, "", upstream, extra, clock).await
    }

    /// Like `start`, with `store_toml` lines added to `[store]` (a PostgreSQL `url`, say).
    pub async fn start_with_store(
        db: &Path,
        store_toml: &str,
        upstream: &str,
        extra: &str,
        clock: Clock,
    ) -> Instance {
        Instance::start_configured(db, "", store_toml, upstream, extra, clock).await
    }

    /// Like `start_with_store`, with `server_toml` lines added to `[server]` too.
    pub async fn start_configured(
        db: &Path,
        server_toml: &str,
        store_toml: &str,
        upstream: &str,
        extra: &str,
        clock: Clock,
    ) -> Instance {
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\ndrain_timeout_secs = 5\n{server_toml}\n\n\
             [store]\npath = {db:?}\nrefresh_secs = 1\n{store_toml}\n\n\
             [[provider]]\nname = \"openai\"\nupstream = \"{upstream}\"\n\n\
             [[provider]]\nname = \"anthropic\"\nupstream = \"{upstream}\"\n\n\
             [[provider]]\nname = \"gemini\"\nupstream = \"{upstream}\"\n\n\
             [[provider]]\nname = \"ollama\"\nupstream = \"{upstream}\"\n\n\
             {extra}",
        );
        let config = meter::config::Config::from_toml(&toml, "test.toml").unwrap();
        let listeners = meter::app::Listeners::bind(&config).await.unwrap();
        let proxy = listeners.proxy.local_addr().unwrap();
        let metrics = listeners.metrics.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let run = meter::app::run_at(
            config,
            listeners,
            async move {
                let _ = stopped.await;
            },
            clock,
        );
        let task = tokio::spawn(async move {
            let result = run.await;
            // A meter that stops on its own closes its port: say why, for the failing test.
            if let Err(err) = &result {
                eprintln!("meter instance at {proxy} ended: {err:#}");
            }
            result
        });
        Instance {
            metrics,
            proxy,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub async fn call(&self, path: &str, agent: &str, body: &str) -> (u16, http::HeaderMap, Value) {
        call_at(self.url(path), agent.to_string(), body.to_string()).await
    }

    pub async fn metrics_text(&self) -> String {
        let request = http::Request::get(format!("http://{}/metrics", self.metrics))
            .body(http_body_util::Full::default())
            .unwrap();
        let (_, _, body) = send(request).await;
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// A sample's value on /metrics (the first line starting with `series`).
    pub async fn sample(&self, series: &str) -> Option<f64> {
        let text = self.metrics_text().await;
        text.lines()
            .find(|line| line.starts_with(series))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub async fn wait_sample(&self, series: &str, want: impl Fn(f64) -> bool) -> f64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let value = self.sample(series).await;
            if let Some(v) = value.filter(|v| want(*v)) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{series} never got there (last {value:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }
}

/// Sends `body` to `url` as `agent` (`X-Meter-Agent`); the answer's status, headers and JSON.
pub async fn call_at(url: String, agent: String, body: String) -> (u16, http::HeaderMap, Value) {
    let mut request = post_json(&url, &body);
    request
        .headers_mut()
        .insert("x-meter-agent", agent.parse().unwrap());
    let (status, headers, body) = send(request).await;
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, headers, json)
}

/// Sends `CONNECT authority` to meter (forward-proxy mode) and returns the status and the
/// connection after the response head (the tunnel, when the status is 200).
pub async fn proxy_connect(proxy: SocketAddr, authority: &str) -> (u16, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Byte by byte up to the blank line: whatever follows belongs to the tunnel.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, stream)
}

/// TLS to `name` through `tunnel`, trusting only `ca` and offering `alpn`.
pub async fn tls_client(
    tunnel: tokio::net::TcpStream,
    name: &str,
    ca: &Path,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tunnel)
        .await
}
