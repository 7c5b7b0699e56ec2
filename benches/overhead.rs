//! What meter costs a call, next to a plain reverse proxy (nginx) and no proxy at all, measured
//! in one run on loopback and bounded in time. Run `bench/run.sh` (it installs nginx when
//! missing), or `cargo bench --bench overhead` (env BENCH_SECS per load run, default 5;
//! `--quick` for a short smoke run).
//!
//! Layout: the proxy under test and the fake provider share core 0, this process (the load
//! generator, one thread) runs on core 1, so the proxies compare on equal terms. The fake
//! provider is this same binary started with `--role provider`. For each of direct, nginx and
//! meter it measures requests/s and p50/p99/p99.9 latency of non-streaming calls at concurrency
//! 32 and 256, the proxy's CPU time per request (utime + stime from /proc), time to first byte
//! and total time of streams of 200 events; then meter's (and nginx's) RSS while 1,000 slow
//! streams are in flight, sampled as the streams grow; then the ledger's ingest rate.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

const JSON_BODY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1741570283,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_06737a9306"}"#;
const REQUEST: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}"#;
const STREAM_REQUEST: &str =
    r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Count."}]}"#;
const PATH: &str = "/v1/chat/completions";

// ---------------------------------------------------------------------------------------------
// The fake provider: OpenAI's wire format, as fast as it can (or paced, for slow streams).

/// An OpenAI chat stream of `events` content chunks, one frame each, `interval` apart; then the
/// finish chunk, the usage chunk when the request asked for it, and `[DONE]`.
struct EventStream {
    next: usize,
    events: usize,
    usage: bool,
    interval: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

const CHUNK: &str = r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"content":" tok"},"logprobs":null,"finish_reason":null}]}"#;
const FINISH: &str = r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}"#;

impl Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.next > this.events + 2 {
            return Poll::Ready(None);
        }
        if !this.interval.is_zero() && this.next > 0 {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.interval)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        let n = this.next;
        this.next += 1;
        let text = if n == 0 {
            // The role chunk.
            CHUNK.replace(
                r#"{"content":" tok"}"#,
                r#"{"role":"assistant","content":""}"#,
            ) + "\n\n"
        } else if n < this.events {
            format!("{CHUNK}\n\n")
        } else if n == this.events {
            format!("{FINISH}\n\n")
        } else if n == this.events + 1 && this.usage {
            format!(
                "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_06737a9306\",\"choices\":[],\"usage\":{{\"prompt_tokens\":12,\"completion_tokens\":{},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":0,\"audio_tokens\":0}},\"completion_tokens_details\":{{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}}}}\n\n",
                this.events,
                this.events + 12
            )
        } else if n == this.events + 1 {
            this.next += 1;
            "data: [DONE]\n\n".to_string()
        } else {
            "data: [DONE]\n\n".to_string()
        };
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(text)))))
    }
}

type ProviderBody = http_body_util::Either<Full<Bytes>, EventStream>;

async fn provide(request: Request<Incoming>) -> Result<Response<ProviderBody>, Infallible> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let events = header("x-bench-events");
    let interval = Duration::from_millis(header("x-bench-interval-ms").unwrap_or(0));
    let body = request.into_body().collect().await.map(|b| b.to_bytes());
    let body = body.unwrap_or_default();
    let response = match events {
        Some(events) => Response::builder()
            .header("content-type", "text/event-stream; charset=utf-8")
            .header("x-request-id", "req_bench")
            .body(http_body_util::Either::Right(EventStream {
                next: 0,
                events: events.max(1) as usize,
                usage: memchr_find(&body, br#""include_usage":true"#),
                interval,
                sleep: None,
            })),
        None => Response::builder()
            .header("content-type", "application/json")
            .header("x-request-id", "req_bench")
            .body(http_body_util::Either::Left(Full::new(Bytes::from_static(
                JSON_BODY.as_bytes(),
            )))),
    };
    Ok(response.unwrap())
}

fn memchr_find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn run_provider(port_file: &Path) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        std::fs::write(port_file.with_extension("tmp"), addr.to_string()).unwrap();
        std::fs::rename(port_file.with_extension("tmp"), port_file).unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(provide))
                    .await;
            });
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Processes under test.

/// A process we started (killed on drop) and the pid whose CPU and memory are measured.
struct Proc {
    child: Child,
    measured: u32,
    addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pinned(core: usize, program: &Path) -> Command {
    let mut command = Command::new("taskset");
    command.arg("-c").arg(core.to_string()).arg(program);
    command
}

fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.is_empty() {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_provider(dir: &Path) -> Proc {
    let port_file = dir.join("provider.port");
    let exe = std::env::current_exe().unwrap();
    let child = pinned(0, &exe)
        .args(["--role", "provider", "--port-file"])
        .arg(&port_file)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let addr = wait_for_file(&port_file).trim().parse().unwrap();
    let measured = child.id();
    Proc {
        child,
        measured,
        addr,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find_nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn start_nginx(dir: &Path, upstream: SocketAddr) -> Option<Proc> {
    let nginx = find_nginx()?;
    let port = free_port();
    let template =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/nginx.conf"))
            .unwrap();
    let nginx_dir = dir.join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let conf = template
        .replace("{{DIR}}", nginx_dir.to_str().unwrap())
        .replace("{{UPSTREAM}}", &upstream.to_string())
        .replace("{{LISTEN}}", &format!("127.0.0.1:{port}"));
    let conf_path = nginx_dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = pinned(0, &nginx)
        .arg("-p")
        .arg(&nginx_dir)
        .arg("-e")
        .arg(nginx_dir.join("error.log"))
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let master = child.id();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The worker does the proxying: it is the master's one child.
    let deadline = Instant::now() + Duration::from_secs(10);
    let worker = loop {
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            if std::net::TcpStream::connect(addr).is_ok() {
                break pid.parse().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    Some(Proc {
        child,
        measured: worker,
        addr,
    })
}

fn start_meter(dir: &Path, upstream: SocketAddr) -> (Proc, PathBuf) {
    use std::io::{BufRead, BufReader};
    let config = dir.join("meter.toml");
    std::fs::write(
        &config,
        format!("[[provider]]\nname = \"openai\"\nupstream = \"http://{upstream}\"\n"),
    )
    .unwrap();
    let db = dir.join("meter.db");
    let mut child = pinned(0, Path::new(env!("CARGO_BIN_EXE_meter")))
        .current_dir(dir)
        .env_remove("METER_CONFIG")
        .env("RUST_LOG", "warn")
        .arg("--config")
        .arg(&config)
        .arg("--db")
        .arg(&db)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .split("http://")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    std::thread::spawn(move || for _ in lines {});
    let measured = child.id();
    (
        Proc {
            child,
            measured,
            addr,
        },
        db,
    )
}

// ---------------------------------------------------------------------------------------------
// /proc readings.

fn cpu_ticks(pid: u32) -> u64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// (utime, stime) of a process, in clock ticks.
fn cpu_split(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; after the ')' they are at 11 and 12.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field(11), field(12))
}

/// USER_HZ: the unit of utime and stime.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------------
// The load generator: one thread, one HTTP/1.1 connection per concurrent caller.

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    Some(sender)
}

fn request(prefix: &str, body: &'static str, stream: Option<(usize, u64)>) -> Request<Full<Bytes>> {
    let mut builder = Request::post(format!("{prefix}{PATH}"))
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench-0123456789")
        .header("x-meter-agent", "bench");
    if let Some((events, interval_ms)) = stream {
        builder = builder
            .header("x-bench-events", events.to_string())
            .header("x-bench-interval-ms", interval_ms.to_string());
    }
    builder
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[derive(Default)]
struct Latencies {
    us: Vec<u64>,
}

impl Latencies {
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.us.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return f64::NAN;
        }
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index] as f64 / 1000.0
    }
}

struct LoadRun {
    ok: u64,
    errors: u64,
    elapsed: Duration,
    latency: Latencies,
}

impl LoadRun {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// `concurrency` callers, each on its own connection, calling back to back for `duration`.
async fn closed_loop(
    addr: SocketAddr,
    prefix: &'static str,
    concurrency: usize,
    duration: Duration,
) -> LoadRun {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        tasks.push(tokio::task::spawn_local(async move {
            let mut latencies = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            let mut sender = connect(addr).await;
            while Instant::now() < deadline {
                let Some(s) = sender.as_mut() else {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    sender = connect(addr).await;
                    continue;
                };
                if s.ready().await.is_err() {
                    sender = connect(addr).await;
                    errors += 1;
                    continue;
                }
                let t = Instant::now();
                match s.send_request(request(prefix, REQUEST, None)).await {
                    Ok(response) if response.status() == 200 => {
                        if response.into_body().collect().await.is_ok() {
                            latencies.push(t.elapsed().as_micros() as u64);
                        } else {
                            errors += 1;
                        }
                    }
                    _ => {
                        errors += 1;
                        sender = connect(addr).await;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut run = LoadRun {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: Latencies::default(),
    };
    for task in tasks {
        let (latencies, errors) = task.await.unwrap();
        run.ok += latencies.len() as u64;
        run.errors += errors;
        run.latency.us.extend(latencies);
    }
    run.elapsed = started.elapsed();
    run
}

struct StreamRun {
    count: u64,
    errors: u64,
    ttfb: Latencies,
    total: Latencies,
}

/// One stream after another on one connection: time to the first event and to the end.
async fn sequential_streams(
    addr: SocketAddr,
    prefix: &'static str,
    events: usize,
    count: usize,
    limit: Duration,
) -> StreamRun {
    let deadline = Instant::now() + limit;
    let mut run = StreamRun {
        count: 0,
        errors: 0,
        ttfb: Latencies::default(),
        total: Latencies::default(),
    };
    let mut sender = connect(addr).await;
    while (run.count as usize) < count && Instant::now() < deadline {
        let Some(s) = sender.as_mut() else {
            run.errors += 1;
            sender = connect(addr).await;
            continue;
        };
        if s.ready().await.is_err() {
            run.errors += 1;
            sender = connect(addr).await;
            continue;
        }
        let t = Instant::now();
        let Ok(response) = s
            .send_request(request(prefix, STREAM_REQUEST, Some((events, 0))))
            .await
        else {
            run.errors += 1;
            sender = connect(addr).await;
            continue;
        };
        let mut body = response.into_body();
        let mut first = None;
        let mut failed = false;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) if frame.data_ref().is_some_and(|d| !d.is_empty()) => {
                    first.get_or_insert_with(|| t.elapsed());
                }
                Ok(_) => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        match (failed, first) {
            (false, Some(first)) => {
                run.count += 1;
                run.ttfb.us.push(first.as_micros() as u64);
                run.total.us.push(t.elapsed().as_micros() as u64);
            }
            _ => run.errors += 1,
        }
    }
    run
}

struct HeldRun {
    completed: u64,
    samples: Vec<(Duration, u64, u64)>,
    peak_kib: u64,
}

/// `count` slow streams at once (`events` events `interval_ms` apart each), while the measured
/// process's RSS is sampled at the given times after the last stream started.
async fn held_streams(
    addr: SocketAddr,
    prefix: &'static str,
    pid: u32,
    count: usize,
    events: usize,
    interval_ms: u64,
    at: &[Duration],
) -> HeldRun {
    let open = Rc::new(std::cell::Cell::new(0usize));
    let mut tasks = Vec::new();
    for _ in 0..count {
        let open = open.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let mut sender = connect(addr).await?;
            sender.ready().await.ok()?;
            let response = sender
                .send_request(request(prefix, STREAM_REQUEST, Some((events, interval_ms))))
                .await
                .ok()?;
            open.set(open.get() + 1);
            let mut body = response.into_body();
            let mut bytes = 0usize;
            while let Some(frame) = body.frame().await {
                bytes += frame.ok()?.data_ref().map_or(0, |d| d.len());
            }
            open.set(open.get() - 1);
            Some(bytes)
        }));
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(30);
    while open.get() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    for &when in at {
        tokio::time::sleep_until((started + when).into()).await;
        samples.push((when, open.get() as u64, status_kib(pid, "VmRSS:")));
    }
    let peak_kib = status_kib(pid, "VmHWM:");
    let mut completed = 0;
    for task in tasks {
        if let Ok(Some(_)) = task.await {
            completed += 1;
        }
    }
    HeldRun {
        completed,
        samples,
        peak_kib,
    }
}

// ---------------------------------------------------------------------------------------------
// The ledger's ingest rate, in this process: records priced and written through the writer.

fn ledger_ingest(dir: &Path, records: usize) -> (f64, u64) {
    use meter::ledger::LedgerRecord;
    let path = dir.join("ingest.db");
    let config =
        meter::config::Config::from_toml("[[provider]]\nname = \"openai\"\n", "bench.toml")
            .unwrap();
    let mut store = config.store.clone();
    store.path = path.clone();
    let metrics = Arc::new(meter::metrics::Metrics::new().unwrap());
    let pricer = Arc::new(meter::ledger::writer::Pricer::new(
        &config,
        config.rate_table().unwrap(),
    ));
    let clock = meter::clock::Clock::system();
    let budgets = Arc::new(meter::budget::Budgets::new(
        &config.budgets,
        config.timezone,
        clock,
    ));
    let (recorder, writer) = meter::ledger::writer::open(&store, metrics, pricer, budgets).unwrap();
    let started = Instant::now();
    for i in 0..records {
        let mut record = LedgerRecord::new(
            chrono::Utc::now(),
            ["alpha", "beta", "gamma", "delta"][i % 4],
            "openai",
            "direct",
        );
        record.model = Some("gpt-4o-mini-2024-07-18".to_string());
        record.endpoint = "chat.completions";
        record.usage.input_tokens = 19;
        record.usage.output_tokens = 10;
        record.latency_ms = 3;
        record.request_id = Some(format!("req_{i}"));
        recorder.record(record);
    }
    drop(recorder);
    let lost = writer.join();
    let elapsed = started.elapsed();
    let rows: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM usage", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows as usize + lost as usize, records);
    (records as f64 / elapsed.as_secs_f64(), lost)
}

// ---------------------------------------------------------------------------------------------

struct Target {
    name: &'static str,
    addr: SocketAddr,
    prefix: &'static str,
    /// The proxy's pid (None for direct).
    pid: Option<u32>,
}

struct Measured {
    run: LoadRun,
    proxy_us: Option<f64>,
    /// The share of the proxy's CPU time spent in the kernel.
    proxy_sys: Option<f64>,
    provider_us: f64,
}

fn pin_self(core: usize) -> bool {
    Command::new("taskset")
        .args([
            "-a",
            "-cp",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--role") {
        assert_eq!(args.get(i + 1).map(String::as_str), Some("provider"));
        let at = args.iter().position(|a| a == "--port-file").unwrap();
        run_provider(Path::new(&args[at + 1]));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 1 } else { 5 })
        .clamp(1, 60);
    let duration = Duration::from_secs(secs);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cores >= 2 && pin_self(1);
    let hz = clock_ticks();

    let dir = tempfile::tempdir().unwrap();
    let provider = start_provider(dir.path());
    let nginx = start_nginx(dir.path(), provider.addr);
    let (meter, db) = start_meter(dir.path(), provider.addr);
    let mut targets = vec![Target {
        name: "direct",
        addr: provider.addr,
        prefix: "",
        pid: None,
    }];
    if let Some(nginx) = &nginx {
        targets.push(Target {
            name: "nginx",
            addr: nginx.addr,
            prefix: "",
            pid: Some(nginx.measured),
        });
    } else {
        eprintln!("nginx not found: its rows are left out (bench/run.sh installs it)");
    }
    targets.push(Target {
        name: "meter",
        addr: meter.addr,
        prefix: "/openai",
        pid: Some(meter.measured),
    });

    // BENCH_ONLY=meter (a comma list) measures only those paths, e.g. while profiling one.
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        targets.retain(|t| only.split(',').any(|o| o.trim() == t.name));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let mut meter_requests = 0u64;
    let (loads, streams, held) = local.block_on(&runtime, async {
        let mut loads: Vec<(usize, Vec<(&'static str, Measured)>)> = Vec::new();
        for concurrency in [32usize, 256] {
            let mut rows = Vec::new();
            for target in &targets {
                // Warm up: connections, pools, caches.
                closed_loop(
                    target.addr,
                    target.prefix,
                    concurrency,
                    Duration::from_millis(500),
                )
                .await;
                let proxy_before = target.pid.map(cpu_split);
                let provider_before = cpu_ticks(provider.measured);
                let run = closed_loop(target.addr, target.prefix, concurrency, duration).await;
                let per_request = |ticks: u64| ticks as f64 / hz * 1e6 / run.ok.max(1) as f64;
                let proxy_delta = target.pid.zip(proxy_before).map(|(pid, before)| {
                    let after = cpu_split(pid);
                    (after.0 - before.0, after.1 - before.1)
                });
                let proxy_us = proxy_delta.map(|(user, system)| per_request(user + system));
                let proxy_sys =
                    proxy_delta.map(|(user, system)| system as f64 / (user + system).max(1) as f64);
                let provider_us = per_request(cpu_ticks(provider.measured) - provider_before);
                rows.push((
                    target.name,
                    Measured {
                        run,
                        proxy_us,
                        proxy_sys,
                        provider_us,
                    },
                ));
            }
            loads.push((concurrency, rows));
        }
        let stream_count = if quick { 50 } else { 400 };
        let mut streams = Vec::new();
        for target in &targets {
            sequential_streams(target.addr, target.prefix, 200, 20, duration).await;
            let run =
                sequential_streams(target.addr, target.prefix, 200, stream_count, duration * 4)
                    .await;
            streams.push((target.name, run));
        }
        let (held_count, events, interval) = if quick {
            (200, 60, 25)
        } else {
            (1000, 400, 25)
        };
        let span = Duration::from_millis(events as u64 * interval);
        let at = [span / 8, span / 4, span / 2, span * 7 / 8];
        let mut held = Vec::new();
        for target in targets.iter().filter(|t| t.pid.is_some()) {
            let run = held_streams(
                target.addr,
                target.prefix,
                target.pid.unwrap(),
                held_count,
                events,
                interval,
                &at,
            )
            .await;
            held.push((target.name, run, held_count, events, interval));
        }
        (loads, streams, held)
    });
    for (_, rows) in &loads {
        for (name, measured) in rows {
            if *name == "meter" {
                meter_requests += measured.run.ok;
            }
        }
    }
    drop(runtime);
    let (ingest_rate, ingest_lost) =
        ledger_ingest(dir.path(), if quick { 20_000 } else { 200_000 });

    // Meter's ledger holds a row for every call answered (warm-ups included).
    std::thread::sleep(Duration::from_millis(500));
    let rows: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM usage", [], |r| r.get(0))
        .unwrap_or(-1);

    println!();
    println!(
        "meter overhead benchmark: loopback, {} ({} cores), {secs}s per load run",
        if pinned {
            "proxy + fake provider on core 0, load generator on core 1"
        } else {
            "NOT pinned (taskset failed or one core): figures do not compare across runs"
        },
        cores
    );
    println!();
    println!("non-streaming chat completion (JSON body 702 B)");
    println!(
        "{:<6} {:>4} {:>9} {:>8} {:>8} {:>9} {:>7} {:>13} {:>6} {:>13}",
        "path",
        "conc",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "proxy CPU",
        "(sys)",
        "provider CPU"
    );
    for (concurrency, rows) in &loads {
        for (name, m) in rows {
            println!(
                "{:<6} {:>4} {:>9.0} {:>8.3} {:>8.3} {:>9.3} {:>7} {:>13} {:>6} {:>13}",
                name,
                concurrency,
                m.run.rps(),
                m.run.latency.percentile(0.5),
                m.run.latency.percentile(0.99),
                m.run.latency.percentile(0.999),
                m.run.errors,
                m.proxy_us
                    .map_or("-".to_string(), |us| format!("{us:.1} us/req")),
                m.proxy_sys
                    .map_or("-".to_string(), |s| format!("{:.0}%", s * 100.0)),
                format!("{:.1} us/req", m.provider_us),
            );
        }
    }
    println!();
    println!("streams of 200 events (one after another on one connection)");
    println!(
        "{:<6} {:>7} {:>12} {:>12} {:>12} {:>12} {:>7}",
        "path", "streams", "TTFB p50 ms", "TTFB p99 ms", "total p50", "total p99", "errors"
    );
    for (name, run) in &streams {
        println!(
            "{:<6} {:>7} {:>12.3} {:>12.3} {:>12.3} {:>12.3} {:>7}",
            name,
            run.count,
            run.ttfb.percentile(0.5),
            run.ttfb.percentile(0.99),
            run.total.percentile(0.5),
            run.total.percentile(0.99),
            run.errors
        );
    }
    println!();
    for (name, run, count, events, interval) in &held {
        let samples: Vec<String> = run
            .samples
            .iter()
            .map(|(at, open, kib)| {
                format!(
                    "{:.1}s: {open} open, {:.1} MiB",
                    at.as_secs_f64(),
                    mib(*kib)
                )
            })
            .collect();
        println!(
            "{name}: {count} concurrent streams of {events} events {interval} ms apart: RSS {}; peak {:.1} MiB; {} completed",
            samples.join(" | "),
            mib(run.peak_kib),
            run.completed
        );
    }
    println!();
    println!(
        "ledger ingest (priced, batched SQLite writes, WAL): {ingest_rate:.0} records/s ({ingest_lost} lost)"
    );
    println!(
        "meter's ledger: {rows} rows for {meter_requests} measured non-streaming calls (warm-ups and streams add more)"
    );
    println!();
    let find = |name: &str, concurrency: usize| {
        loads
            .iter()
            .find(|(c, _)| *c == concurrency)
            .and_then(|(_, rows)| rows.iter().find(|(n, _)| *n == name))
            .map(|(_, m)| m)
    };
    println!("ratios");
    for concurrency in [32usize, 256] {
        let Some(meter) = find("meter", concurrency) else {
            continue;
        };
        for base in ["nginx", "direct"] {
            let Some(other) = find(base, concurrency) else {
                continue;
            };
            println!(
                "  c={concurrency:<3} meter/{base:<6}: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x, p99.9 {:.2}x{}",
                meter.run.rps() / other.run.rps(),
                meter.run.latency.percentile(0.5) / other.run.latency.percentile(0.5),
                meter.run.latency.percentile(0.99) / other.run.latency.percentile(0.99),
                meter.run.latency.percentile(0.999) / other.run.latency.percentile(0.999),
                match (meter.proxy_us, other.proxy_us) {
                    (Some(m), Some(o)) => format!(", CPU/request {:.2}x", m / o),
                    _ => String::new(),
                }
            );
        }
    }
    let stream_of = |name: &str| streams.iter().find(|(n, _)| *n == name).map(|(_, r)| r);
    if let (Some(meter), Some(direct)) = (stream_of("meter"), stream_of("direct")) {
        let added = meter.ttfb.percentile(0.5) - direct.ttfb.percentile(0.5);
        let nginx_added =
            stream_of("nginx").map(|n| n.ttfb.percentile(0.5) - direct.ttfb.percentile(0.5));
        println!(
            "  streams: added TTFB p50 meter {added:.3} ms{}; total p50 meter/direct {:.2}x",
            nginx_added.map_or(String::new(), |n| format!(", nginx {n:.3} ms")),
            meter.total.percentile(0.5) / direct.total.percentile(0.5)
        );
    }
    drop(meter);
    drop(nginx);
    drop(provider);
}
