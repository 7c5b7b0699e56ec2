//! Forward-proxy mode end to end, on loopback: a fake provider serving HTTPS under a test CA
//! that meter's upstream client trusts (`upstream.ca_file`), meter with `[proxy.forward]` on
//! and its own CA from `meter::ca::init`, and clients that set meter as their proxy and trust
//! meter's CA: a hand-rolled CONNECT + rustls + hyper client (HTTP/1.1 and HTTP/2 inside the
//! tunnel), and real curl with `--proxy` and `--cacert`.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    fixture, proxy_connect as connect, rows, tls_client as tls, wait_for, FakeProvider,
    FakeResponse, Meter, Piece,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The parts of one forward-proxy test: meter's CA, the fake provider's CA, and a temp dir.
struct Setup {
    dir: tempfile::TempDir,
    meter_ca: PathBuf,
    provider_ca: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let paths = meter::ca::init(&dir.path().join("meter-ca"), false).unwrap();
        let provider_ca = dir.path().join("provider-ca.pem");
        Setup {
            meter_ca: paths.cert,
            provider_ca,
            dir,
        }
    }

    /// `[upstream]` trusting the fake provider's CA, `[proxy.forward]` on with meter's CA.
    fn toml(&self, passthrough: bool) -> String {
        format!(
            "[upstream]\nca_file = {:?}\n\n[proxy.forward]\nenabled = true\npassthrough = {passthrough}\nca_dir = {:?}\n",
            self.provider_ca,
            self.dir.path().join("meter-ca"),
        )
    }
}

/// A client connection inside a tunnel, HTTP/1.1 or HTTP/2 as ALPN decided.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn open(stream: tokio_rustls::client::TlsStream<TcpStream>) -> Sender {
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        if h2 {
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            Sender::H2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            Sender::H1(sender)
        }
    }

    /// Sends `request` and returns the status and the body's frames as they arrived.
    async fn send(&mut self, request: Request<Full<Bytes>>) -> (u16, Vec<Bytes>) {
        let response = match self {
            Sender::H1(sender) => sender.send_request(request).await.unwrap(),
            Sender::H2(sender) => sender.send_request(request).await.unwrap(),
        };
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                frames.push(data);
            }
        }
        (status, frames)
    }
}

fn chat(uri: &str, key: &str) -> http::request::Builder {
    Request::post(uri)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
}

/// A sample's value on meter's /metrics (0 when absent).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn calls_through_connect_are_metered_like_base_url_calls() {
    let setup = Setup::new();
    let plain = fixture("openai/chat_plain.json");
    let stream = fixture("openai/chat_stream_include_usage.sse");
    let (plain_body, stream_body) = (plain.clone(), stream.clone());
    let provider = FakeProvider::start_tls(
        move |request| {
            if String::from_utf8_lossy(&request.body).contains("\"stream\":true") {
                // One piece per event, as a provider streams them.
                let text = String::from_utf8(stream_body.clone()).unwrap();
                FakeResponse::sse(
                    text.split_inclusive("\n\n")
                        .map(|event| Piece::now(event.to_string()))
                        .collect(),
                )
            } else {
                FakeResponse::json(200, plain_body.clone())
            }
        },
        &setup.provider_ca,
    )
    .await;
    let keyed = meter::proxy::router::fingerprint(b"sk-keyed");
    let extra = format!(
        "{}\n[[agent]]\nname = \"keyed\"\nkeys = [\"{keyed}\"]\n",
        setup.toml(false)
    );
    let mut meter = Meter::start(&provider.url(), &extra).await;

    // Non-streamed, HTTP/1.1 inside the tunnel, attributed by header.
    let (status, tunnel) = connect(meter.proxy, "api.openai.com:443").await;
    assert_eq!(status, 200);
    let tls_stream = tls(tunnel, "api.openai.com", &setup.meter_ca, &[b"http/1.1"])
        .await
        .unwrap();
    let mut sender = Sender::open(tls_stream).await;
    assert!(matches!(sender, Sender::H1(_)));
    let request = chat("/v1/chat/completions", "sk-header")
        .header("host", "api.openai.com")
        .header("x-meter-agent", "coder")
        .header("x-meter-tags", "team=forward")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
        )))
        .unwrap();
    let (status, frames) = sender.send(request).await;
    assert_eq!(status, 200);
    assert_eq!(
        frames.concat(),
        plain,
        "the body is passed on byte for byte"
    );

    // Streamed, HTTP/2 inside a second tunnel (its leaf comes from the cache), attributed by
    // the API key's fingerprint.
    let (status, tunnel) = connect(meter.proxy, "api.openai.com:443").await;
    assert_eq!(status, 200);
    let tls_stream = tls(
        tunnel,
        "api.openai.com",
        &setup.meter_ca,
        &[b"h2", b"http/1.1"],
    )
    .await
    .unwrap();
    assert_eq!(tls_stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut sender = Sender::open(tls_stream).await;
    let request = chat("https://api.openai.com/v1/chat/completions", "sk-keyed")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        )))
        .unwrap();
    let (status, frames) = sender.send(request).await;
    assert_eq!(status, 200);
    assert_eq!(
        frames.concat(),
        stream,
        "the stream is passed on byte for byte"
    );
    assert!(
        frames.len() > 1,
        "streamed in pieces, not buffered: {}",
        frames.len()
    );

    wait_for("two rows", || rows(&meter.db).len() == 2).await;
    let rows = rows(&meter.db);
    let (first, second) = (&rows[0], &rows[1]);
    assert_eq!(
        (
            first.provider.as_str(),
            first.agent.as_str(),
            first.endpoint.as_str()
        ),
        ("openai", "coder", "chat.completions")
    );
    assert_eq!((first.input_tokens, first.output_tokens), (24, 8));
    assert_eq!(first.usage_status, "reported");
    assert!(!first.streaming);
    assert_eq!(first.tags.as_deref(), Some(r#"{"team":"forward"}"#));
    assert_eq!(
        first.key_fingerprint.as_deref(),
        Some(meter::proxy::router::fingerprint(b"sk-header").as_str())
    );
    assert!(first.cost_nanos.is_some(), "priced like any call");
    assert_eq!((second.agent.as_str(), second.streaming), ("keyed", true));
    assert_eq!((second.input_tokens, second.output_tokens), (31, 12));
    assert_eq!(second.usage_status, "reported");

    // The provider got the calls on its own path, without meter's headers, over verified TLS.
    let received = provider.requests();
    assert_eq!(received.len(), 2);
    for request in &received {
        // (An HTTP/2 request's URI carries the upstream's scheme and authority too.)
        let uri: http::Uri = request.uri.parse().unwrap();
        assert_eq!(uri.path(), "/v1/chat/completions");
        assert!(!request.headers.contains_key("x-meter-agent"));
        assert!(!request.headers.contains_key("x-meter-tags"));
    }
    assert_eq!(received[0].headers["authorization"], "Bearer sk-header");

    let metrics = meter
        .metrics_when(|m| m.contains(r#"meter_requests_total{agent="keyed""#))
        .await;
    assert_eq!(
        sample(
            &metrics,
            r#"meter_forward_tunnels_total{kind="intercepted"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(&metrics, r#"meter_forward_cert_cache_total{result="miss"}"#),
        1.0
    );
    assert_eq!(
        sample(&metrics, r#"meter_forward_cert_cache_total{result="hit"}"#),
        1.0
    );
    assert_eq!(
        sample(&metrics, "meter_forward_handshake_failures_total"),
        0.0
    );
    drop(sender);
    meter.stop().await;
}

#[tokio::test]
async fn other_hosts_are_refused_and_bad_handshakes_counted() {
    let setup = Setup::new();
    let provider =
        FakeProvider::start_tls(|_| FakeResponse::json(200, "{}"), &setup.provider_ca).await;
    let mut meter = Meter::start(&provider.url(), &setup.toml(false)).await;

    let (status, _) = connect(meter.proxy, "evil.example:443").await;
    assert_eq!(status, 403, "not a provider host, and passthrough is off");
    // Plain HTTP to another host, in absolute form: refused too.
    let mut stream = TcpStream::connect(meter.proxy).await.unwrap();
    stream
        .write_all(b"GET http://evil.example/v1/models HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("host_not_metered"), "{answer}");

    // A client that does not trust meter's CA gets no connection it would accept...
    let (status, tunnel) = connect(meter.proxy, "api.openai.com:443").await;
    assert_eq!(status, 200);
    let err = tls(tunnel, "api.openai.com", &setup.provider_ca, &[b"h2"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    // ...and one that asks for another name inside the tunnel is refused a certificate.
    let (status, tunnel) = connect(meter.proxy, "api.openai.com:443").await;
    assert_eq!(status, 200);
    assert!(tls(tunnel, "api.anthropic.com", &setup.meter_ca, &[b"h2"])
        .await
        .is_err());

    let metrics = meter
        .metrics_when(|m| sample(m, "meter_forward_handshake_failures_total") >= 2.0)
        .await;
    assert_eq!(
        sample(&metrics, r#"meter_forward_tunnels_total{kind="refused"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            r#"meter_forward_tunnels_total{kind="intercepted"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(&metrics, "meter_forward_handshake_failures_total"),
        2.0
    );
    // The untrusting client got a leaf (and refused it); the mismatched name got none: it was
    // refused before any leaf was looked up.
    assert_eq!(
        sample(&metrics, r#"meter_forward_cert_cache_total{result="miss"}"#),
        1.0
    );
    assert_eq!(
        sample(&metrics, r#"meter_forward_cert_cache_total{result="hit"}"#),
        0.0
    );
    assert!(
        provider.requests().is_empty(),
        "nothing reached the provider"
    );
    assert!(rows(&meter.db).is_empty(), "no call, no row");
    meter.stop().await;
}

#[tokio::test]
async fn passthrough_tunnels_other_hosts_untouched_and_unmetered() {
    let setup = Setup::new();
    let provider =
        FakeProvider::start_tls(|_| FakeResponse::json(200, "{}"), &setup.provider_ca).await;
    // Another host: an echo server on loopback.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    let mut meter = Meter::start(&provider.url(), &setup.toml(true)).await;

    let (status, mut tunnel) = connect(meter.proxy, &echo_addr.to_string()).await;
    assert_eq!(status, 200);
    // Not HTTP, not TLS: bytes meter must not touch, every value of a byte included.
    let sent: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
    let (mut read, mut write) = tunnel.split();
    let writer = async {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let mut echoed = Vec::new();
    let reader = read.read_to_end(&mut echoed);
    let ((), read_result) = tokio::join!(writer, reader);
    read_result.unwrap();
    assert_eq!(echoed, sent);

    // A host nobody listens on: 502, no tunnel. The port stays bound (so nothing else can take
    // it) but never listens, so a connection to it is refused.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed_addr = closed.local_addr().unwrap();
    let (status, _) = connect(meter.proxy, &closed_addr.to_string()).await;
    assert_eq!(status, 502);
    drop(closed);

    let metrics = meter.metrics_text().await;
    assert_eq!(
        sample(
            &metrics,
            r#"meter_forward_tunnels_total{kind="passthrough"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&metrics, r#"meter_forward_tunnels_total{kind="refused"}"#),
        0.0
    );
    meter.stop().await;
    assert!(rows(&meter.db).is_empty(), "passthrough is not metered");
}

/// The status and body of a CONNECT meter refused (it answers and closes).
async fn refused_connect(proxy: std::net::SocketAddr, target: &str) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("CONNECT {target}: no status in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, body)
}

#[tokio::test]
async fn passthrough_never_leads_back_into_meter() {
    let setup = Setup::new();
    let provider =
        FakeProvider::start_tls(|_| FakeResponse::json(200, "{}"), &setup.provider_ca).await;
    let mut meter = Meter::start(&provider.url(), &setup.toml(true)).await;
    let (port, metrics_port) = (meter.proxy.port(), meter.metrics.port());
    // Every spelling of loopback getaddrinfo accepts, for the proxy and the metrics listener.
    for target in [
        format!("127.0.0.1:{port}"),
        format!("127.1:{port}"),
        format!("2130706433:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("0.0.0.0:{port}"),
        format!("127.0.0.1:{metrics_port}"),
        format!("127.1:{metrics_port}"),
    ] {
        let (status, body) = refused_connect(meter.proxy, &target).await;
        assert_eq!(status, 403, "{target}: {body}");
        assert_eq!(body["error"]["code"], "not_a_proxy", "{target}");
    }
    // Whether `localhost.` resolves depends on the machine; it never tunnels into meter.
    let (status, body) = refused_connect(meter.proxy, &format!("localhost.:{port}")).await;
    assert!(status == 403 || status == 502, "{status}: {body}");
    let metrics = meter.metrics_text().await;
    assert_eq!(
        sample(
            &metrics,
            r#"meter_forward_tunnels_total{kind="passthrough"}"#
        ),
        0.0
    );
    assert!(sample(&metrics, r#"meter_forward_tunnels_total{kind="refused"}"#) >= 7.0);
    meter.stop().await;

    // Listening on every address: any of this machine's addresses on that port is meter.
    let mut meter =
        support::Meter::start_listening("0.0.0.0:0", &provider.url(), &setup.toml(true)).await;
    let proxy: std::net::SocketAddr = format!("127.0.0.1:{}", meter.proxy.port()).parse().unwrap();
    for target in [
        format!("127.0.0.1:{}", proxy.port()),
        format!("127.0.0.2:{}", proxy.port()),
        format!("localhost:{}", proxy.port()),
    ] {
        let (status, body) = refused_connect(proxy, &target).await;
        assert_eq!(status, 403, "{target}: {body}");
    }
    meter.stop().await;
}

#[tokio::test]
async fn connect_needs_a_valid_port() {
    let setup = Setup::new();
    let provider =
        FakeProvider::start_tls(|_| FakeResponse::json(200, "{}"), &setup.provider_ca).await;
    let mut meter = Meter::start(&provider.url(), &setup.toml(true)).await;
    for target in [
        "api.openai.com",
        "api.openai.com:",
        "api.openai.com:abc",
        "api.openai.com:70000",
        "api.openai.com:0",
    ] {
        let (status, body) = refused_connect(meter.proxy, target).await;
        assert_eq!(status, 400, "{target}: {body}");
        assert_eq!(body["error"]["code"], "bad_connect_target", "{target}");
    }
    let (status, _) = connect(meter.proxy, "api.openai.com:443").await;
    assert_eq!(status, 200);
    meter.stop().await;
}

#[tokio::test]
async fn requests_naming_another_host_are_misdirected() {
    let setup = Setup::new();
    let plain = fixture("openai/chat_plain.json");
    let plain_body = plain.clone();
    let provider = FakeProvider::start_tls(
        move |_| FakeResponse::json(200, plain_body.clone()),
        &setup.provider_ca,
    )
    .await;
    let mut meter = Meter::start(&provider.url(), &setup.toml(false)).await;
    let body = || Full::new(Bytes::from_static(br#"{"model":"gpt-4o","messages":[]}"#));
    let open = |alpn: &'static [&'static [u8]]| {
        let (proxy, ca) = (meter.proxy, setup.meter_ca.clone());
        async move {
            let (status, tunnel) = connect(proxy, "api.openai.com:443").await;
            assert_eq!(status, 200);
            Sender::open(tls(tunnel, "api.openai.com", &ca, alpn).await.unwrap()).await
        }
    };

    // HTTP/1.1: another Host, or an absolute-form target naming another host or port.
    let mut h1 = open(&[b"http/1.1"]).await;
    for (uri, host) in [
        ("/v1/chat/completions", "evil.example"),
        ("/v1/chat/completions", "api.openai.com:8443"),
        ("https://evil.example/v1/chat/completions", "evil.example"),
        ("https://evil.example/v1/chat/completions", "api.openai.com"),
    ] {
        let request = chat(uri, "sk-secret")
            .header("host", host)
            .body(body())
            .unwrap();
        let (status, frames) = h1.send(request).await;
        assert_eq!(status, 421, "{uri} {host}");
        let error: serde_json::Value = serde_json::from_slice(&frames.concat()).unwrap();
        assert_eq!(error["error"]["code"], "misdirected_request");
    }
    // HTTP/2: another `:authority`.
    let mut h2 = open(&[b"h2"]).await;
    assert!(matches!(h2, Sender::H2(_)));
    let request = chat("https://evil.example/v1/chat/completions", "sk-secret")
        .body(body())
        .unwrap();
    assert_eq!(h2.send(request).await.0, 421);
    assert!(provider.requests().is_empty(), "the key went nowhere");

    // The tunnel's own host, however it is spelled, goes through.
    let request = chat("/v1/chat/completions", "sk-secret")
        .header("host", "API.OpenAI.com.:443")
        .body(body())
        .unwrap();
    let (status, frames) = h1.send(request).await;
    assert_eq!((status, frames.concat()), (200, plain.clone()));
    let request = chat("https://api.openai.com/v1/chat/completions", "sk-secret")
        .body(body())
        .unwrap();
    assert_eq!(h2.send(request).await.0, 200);
    assert_eq!(provider.requests().len(), 2);
    wait_for("two rows", || rows(&meter.db).len() == 2).await;
    drop((h1, h2));
    meter.stop().await;
}

/// Runs curl with `args`, the environment's proxy settings removed; returns its stdout.
fn curl(args: &[&str]) -> String {
    let output = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .expect("curl is installed (.ci/run installs it)");
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn curl_through_the_proxy_is_metered() {
    let setup = Setup::new();
    let plain = fixture("openai/chat_plain.json");
    let plain_body = plain.clone();
    let provider = FakeProvider::start_tls(
        move |_| FakeResponse::json(200, plain_body.clone()),
        &setup.provider_ca,
    )
    .await;
    let ollama_reply = fixture("ollama/chat.json");
    let ollama_body = ollama_reply.clone();
    let ollama = FakeProvider::start(move |_| FakeResponse::json(200, ollama_body.clone())).await;
    let extra = format!(
        "{}\n[[provider]]\nname = \"ollama\"\nupstream = \"{}\"\n",
        setup.toml(false),
        ollama.url()
    );
    let mut meter = Meter::start(&provider.url(), &extra).await;
    let proxy = format!("http://{}", meter.proxy);
    let ca = setup.meter_ca.to_str().unwrap();

    // HTTPS through CONNECT: curl checks meter's leaf against --cacert.
    let body = tokio::task::spawn_blocking({
        let (proxy, ca) = (proxy.clone(), ca.to_string());
        move || {
            curl(&[
                "--proxy",
                &proxy,
                "--cacert",
                &ca,
                "-H",
                "authorization: Bearer sk-curl",
                "-H",
                "content-type: application/json",
                "-H",
                "x-meter-agent: curl",
                "--data",
                r#"{"model":"gpt-4o","messages":[]}"#,
                "https://api.openai.com/v1/chat/completions",
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(body.as_bytes(), plain);
    // Plain HTTP in absolute form to a local provider's host and port.
    let local = format!("{}/api/chat", ollama.url());
    let body = tokio::task::spawn_blocking({
        let proxy = proxy.clone();
        move || {
            curl(&[
                "--proxy",
                &proxy,
                "-H",
                "x-meter-agent: curl",
                "--data",
                r#"{"model":"llama3.2","messages":[],"stream":false}"#,
                &local,
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(body.as_bytes(), ollama_reply);

    wait_for("two rows", || rows(&meter.db).len() == 2).await;
    let rows = rows(&meter.db);
    assert_eq!(
        (
            rows[0].provider.as_str(),
            rows[0].agent.as_str(),
            rows[0].input_tokens,
            rows[0].output_tokens
        ),
        ("openai", "curl", 24, 8)
    );
    assert_eq!(
        (
            rows[1].provider.as_str(),
            rows[1].route.as_str(),
            rows[1].input_tokens,
            rows[1].output_tokens
        ),
        ("ollama", "local", 33, 17)
    );
    assert_eq!(ollama.requests()[0].uri, "/api/chat");
    meter.stop().await;
}

#[test]
fn ca_commands_create_print_and_refuse_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let meter = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_meter"))
            .current_dir(dir.path())
            .env_remove("METER_CONFIG")
            .args(args)
            .output()
            .unwrap()
    };
    // No CA yet: `path` fails, and so does `serve` with forward mode on, naming the fix.
    let out = meter(&["ca", "path"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("meter ca init"));
    std::fs::write(
        dir.path().join("meter.toml"),
        "[proxy.forward]\nenabled = true\n",
    )
    .unwrap();
    let out = meter(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("meter ca init"), "{stderr}");

    let out = meter(&["ca", "init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = meter(&["ca", "path"]);
    assert!(out.status.success());
    let cert = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert_eq!(
        cert,
        std::path::absolute(dir.path().join("meter-ca/ca.pem")).unwrap()
    );
    assert!(std::fs::read_to_string(&cert)
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    let key = dir.path().join("meter-ca/ca-key.pem");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let before = std::fs::read(&key).unwrap();
    let out = meter(&["ca", "init"]);
    assert_eq!(out.status.code(), Some(2), "an existing CA is kept");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(std::fs::read(&key).unwrap(), before);
    let out = meter(&["ca", "init", "--force"]);
    assert!(out.status.success());
    assert_ne!(std::fs::read(&key).unwrap(), before);
    // The CA's key is never printed.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("PRIVATE KEY"), "{text}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        // Under a strict umask the certificate is still readable by agents running as other
        // users, and the key still private.
        let out = std::process::Command::new("sh")
            .current_dir(dir.path())
            .env_remove("METER_CONFIG")
            .args(["-c", "umask 077 && exec \"$0\" ca init --force"])
            .arg(env!("CARGO_BIN_EXE_meter"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(mode(&cert), 0o644);
        assert_eq!(mode(&key), 0o600);

        // A key others can read: `serve` refuses to start, naming the file and the fix.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meter"))
            .current_dir(dir.path())
            .env_remove("METER_CONFIG")
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("meter serve started with a key others can read");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(2));
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("chmod 600"), "{stderr}");
        assert!(stderr.contains("ca-key.pem"), "{stderr}");
    }
}
