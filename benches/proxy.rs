//! A small load benchmark, all on loopback and bounded in time: requests/s and p50/p99 latency
//! of a non-streaming call at concurrency 32, direct to a fake provider and through meter (the
//! release binary, full metering: parse + ledger write), in one run; and meter's RSS at idle and
//! under that load. Run: `cargo bench --bench proxy` (env BENCH_SECS, default 5).
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use support::{BinMeter, FakeProvider, FakeResponse};

const CONCURRENCY: usize = 32;
const MAX_REQUESTS: usize = 2_000_000;
const BODY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1741570283,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_06737a9306"}"#;
const REQUEST: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}"#;

struct Run {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> f64 {
        let index = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us.get(index).copied().unwrap_or(0) as f64 / 1000.0
    }
}

async fn load(url: String, duration: Duration) -> Run {
    let client = support::client();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            while !stop.load(Ordering::Relaxed) && latencies.len() < MAX_REQUESTS / CONCURRENCY {
                let request = Request::post(url.as_str())
                    .header("content-type", "application/json")
                    .header("authorization", "Bearer sk-bench")
                    .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
                    .unwrap();
                let t = Instant::now();
                match client.request(request).await {
                    Ok(response) if response.status() == 200 => {
                        let _ = response.into_body().collect().await;
                        latencies.push(t.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut run = Run {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    for task in tasks {
        let (latencies, errors) = task.await.unwrap();
        run.requests += latencies.len();
        run.errors += errors;
        run.latencies_us.extend(latencies);
    }
    run.elapsed = started.elapsed();
    run.latencies_us.sort_unstable();
    run
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; after the ')' they are at 11 and 12.
    fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .clamp(1, 60);
    let duration = Duration::from_secs(secs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let upstream = FakeProvider::start(|_| FakeResponse::json(200, BODY)).await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("meter.toml");
        std::fs::write(&config, format!("[[provider]]\nname = \"openai\"\nupstream = \"{}\"\n", upstream.url())).unwrap();
        let db = dir.path().join("bench.db");
        let mut meter = BinMeter::start(dir.path(), &["--config", config.to_str().unwrap(), "--db", db.to_str().unwrap()]);
        let pid = meter.child.id();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle_rss = rss_kib(pid, "VmRSS:");

        // Warm both paths (connection pools, page cache), then measure.
        let direct_url = format!("{}/v1/chat/completions", upstream.url());
        let meter_url = format!("http://{}/openai/v1/chat/completions", meter.proxy);
        load(direct_url.clone(), Duration::from_millis(500)).await;
        load(meter_url.clone(), Duration::from_millis(500)).await;

        let direct = load(direct_url, duration).await;
        let ticks_before = cpu_ticks(pid);
        let through = load(meter_url, duration).await;
        let ticks = cpu_ticks(pid) - ticks_before;
        let load_rss = rss_kib(pid, "VmRSS:");
        let peak_rss = rss_kib(pid, "VmHWM:");
        meter.signal("TERM");
        let code = meter.wait(Duration::from_secs(60));
        let rows: i64 = rusqlite::Connection::open(&db).unwrap().query_row("SELECT count(*) FROM usage", [], |r| r.get(0)).unwrap();

        println!("non-streaming chat completion, concurrency {CONCURRENCY}, {secs}s each, loopback, 2 cores shared");
        println!("{:<8} {:>10} {:>9} {:>9} {:>9} {:>7}", "path", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors");
        for (name, run) in [("direct", &direct), ("meter", &through)] {
            println!("{:<8} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>7}", name, run.rps(), run.percentile(0.5), run.percentile(0.99), run.percentile(0.999), run.errors);
        }
        println!("ratio meter/direct: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x", through.rps() / direct.rps(), through.percentile(0.5) / direct.percentile(0.5), through.percentile(0.99) / direct.percentile(0.99));
        let clock = 100.0; // USER_HZ
        println!("meter CPU per request: {:.1} us", ticks as f64 / clock * 1e6 / through.requests.max(1) as f64);
        println!("meter RSS: idle {:.1} MiB, after load {:.1} MiB, peak {:.1} MiB", idle_rss as f64 / 1024.0, load_rss as f64 / 1024.0, peak_rss as f64 / 1024.0);
        println!("ledger rows written: {rows} (warm-up included); meter exit status {code:?}");
    });
}
