//! What forward-proxy mode costs a new connection, on loopback and bounded: `cargo bench
//! --bench forward` (env BENCH_CONNECTIONS, default 2000). meter runs in this process with its
//! CA, in front of the tests' HTTPS fake provider; a client opens new connections one after
//! another, round-robin over three provider hosts, and the bench reports, per new connection:
//! - a direct TLS handshake with the fake provider (TCP + TLS 1.3, no proxy): the baseline;
//! - TCP + CONNECT + 200 + TLS with meter's minted leaf: what an agent pays to reach meter;
//! - the same plus one metered call (non-streaming, HTTP/1.1 inside the tunnel), against one
//!   call on a new plain connection in base-URL mode;
//! - minting one leaf (the cost of a cache miss);
//!
//! and the leaf cache's hits and misses over the run, from meter's own /metrics.
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::{proxy_connect, tls_client, FakeProvider, FakeResponse, Meter};

const HOSTS: [&str; 3] = [
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
];
const REPLY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1741570283,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29}}"#;
const REQUEST: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi."}]}"#;

fn summary(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index].as_secs_f64() * 1e6
    };
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64 * 1e6;
    println!(
        "{name:<44} n={:<5} mean {mean:>7.0} us  p50 {:>7.0} us  p95 {:>7.0} us  p99 {:>7.0} us",
        samples.len(),
        at(0.5),
        at(0.95),
        at(0.99),
    );
}

async fn one_call(sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>, uri: &str) {
    let request = Request::post(uri)
        .header("host", "api.openai.com")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench")
        .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let connections: usize = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(connections));
}

async fn run(connections: usize) {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("meter-ca");
    let meter_ca = meter::ca::init(&ca_dir, false).unwrap().cert;
    let provider_ca = dir.path().join("provider-ca.pem");
    let provider = FakeProvider::start_tls(|_| FakeResponse::json(200, REPLY), &provider_ca).await;
    let upstream = provider.url();
    let extra = format!(
        "[upstream]\nca_file = {provider_ca:?}\n\n[proxy.forward]\nenabled = true\nca_dir = {ca_dir:?}\n\n\
         [[provider]]\nname = \"anthropic\"\nupstream = \"{upstream}\"\n\n\
         [[provider]]\nname = \"gemini\"\nupstream = \"{upstream}\"\n",
    );
    let mut meter = Meter::start(&upstream, &extra).await;
    println!("forward-proxy handshakes, {connections} new connections each, loopback\n");

    // Baseline: a TLS handshake straight with the provider, on a new connection each time.
    let mut direct = Vec::with_capacity(connections);
    for _ in 0..connections {
        let started = Instant::now();
        let tcp = tokio::net::TcpStream::connect(provider.addr).await.unwrap();
        let tls = tls_client(tcp, "127.0.0.1", &provider_ca, &[b"http/1.1"])
            .await
            .unwrap();
        direct.push(started.elapsed());
        drop(tls);
    }
    summary("direct TCP + TLS (no proxy)", &mut direct);

    // Through meter: TCP + CONNECT + TLS with the minted leaf.
    let mut through = Vec::with_capacity(connections);
    for i in 0..connections {
        let host = HOSTS[i % HOSTS.len()];
        let started = Instant::now();
        let (status, tunnel) = proxy_connect(meter.proxy, &format!("{host}:443")).await;
        assert_eq!(status, 200);
        let tls = tls_client(tunnel, host, &meter_ca, &[b"http/1.1"])
            .await
            .unwrap();
        through.push(started.elapsed());
        drop(tls);
    }
    summary("TCP + CONNECT + TLS through meter", &mut through);

    // A whole call on a new connection: base-URL mode (plain HTTP to meter) and through a tunnel.
    let calls = connections / 4;
    let mut base_url = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let tcp = tokio::net::TcpStream::connect(meter.proxy).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        let task = tokio::spawn(connection);
        one_call(&mut sender, "/openai/v1/chat/completions").await;
        base_url.push(started.elapsed());
        drop(sender);
        let _ = task.await;
    }
    summary("new connection + 1 call, base-URL mode", &mut base_url);
    let mut tunnelled = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let (status, tunnel) = proxy_connect(meter.proxy, "api.openai.com:443").await;
        assert_eq!(status, 200);
        let tls = tls_client(tunnel, "api.openai.com", &meter_ca, &[b"http/1.1"])
            .await
            .unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        let task = tokio::spawn(connection);
        one_call(&mut sender, "/v1/chat/completions").await;
        tunnelled.push(started.elapsed());
        drop(sender);
        let _ = task.await;
    }
    summary("new tunnel + 1 call, forward-proxy mode", &mut tunnelled);

    // A cache miss: minting one leaf (P-256 key, signed by the CA, rustls config).
    let leaves = meter::ca::Leaves::new(meter::ca::LocalCa::load(&ca_dir).unwrap());
    let mut mint = Vec::with_capacity(200);
    for i in 0..200 {
        let started = Instant::now();
        let (_, result) = leaves.server_config(&format!("host-{i}.example")).unwrap();
        mint.push(started.elapsed());
        assert_eq!(result, meter::ca::CacheResult::Miss);
    }
    summary("minting a leaf (cache miss)", &mut mint);

    let metrics = meter.metrics_text().await;
    let sample = |series: &str| {
        metrics
            .lines()
            .find(|line| line.starts_with(series))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let hits = sample(r#"meter_forward_cert_cache_total{result="hit"}"#);
    let misses = sample(r#"meter_forward_cert_cache_total{result="miss"}"#);
    println!(
        "\nleaf cache over the run: {hits} hits, {misses} misses, hit rate {:.2}% ({} hosts)",
        100.0 * hits / (hits + misses),
        HOSTS.len()
    );
    println!(
        "tunnels intercepted: {}",
        sample(r#"meter_forward_tunnels_total{kind="intercepted"}"#)
    );
    meter.stop().await;
}
