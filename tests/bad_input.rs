//! Bad input at the edges (issue 8): malformed configuration values, hostile `X-Meter-*`
//! headers, path traversal through the provider prefix, and CONNECT or absolute-form requests.
//! Each must end in a clear error, forward nothing where nothing may go, and never panic.
//!
//! Requests that a client library would normalise or refuse to send are written as raw bytes on
//! a `TcpStream`. Everything runs on 127.0.0.1 and is bounded in time.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::Full;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHAT_JSON: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#;
const CHAT_REQUEST: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

// ---------------------------------------------------------------------------------------------
// (a) Malformed configuration: `meter serve` exits 2 with one line naming the file and the key.
// ---------------------------------------------------------------------------------------------

/// What the real binary did: exit code (`None` if it had to be killed), stdout, stderr.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `meter args...` in `cwd`, killing it after `limit` (a config that is wrongly accepted
/// would start serving).
fn run_meter(cwd: &Path, args: &[&str], limit: Duration) -> Ran {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meter"))
        .current_dir(cwd)
        .env_remove("METER_CONFIG")
        .env_remove("METER_LOG")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ran {
        code,
        stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    }
}

/// `meter --config <file> serve` on ephemeral ports (the flags apply after the file is read, so
/// a bad `server.listen` in the file is still refused).
fn serve_with(dir: &Path, config: &Path) -> Ran {
    run_meter(
        dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(20),
    )
}

/// Asserts exit 2, exactly one line on stderr naming `file` and every one of `needles`, and no
/// panic.
fn assert_refused(ran: &Ran, file: &str, needles: &[&str], what: &str) {
    assert_eq!(
        ran.code,
        Some(2),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        ran.code,
        ran.stdout,
        ran.stderr
    );
    assert!(!ran.stderr.contains("panicked"), "{what}: {}", ran.stderr);
    let stderr = ran.stderr.trim_end();
    assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
    assert!(stderr.starts_with("meter: "), "{what}: {stderr}");
    assert!(stderr.contains(file), "{what}: no file name in {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{what}: no {needle:?} in {stderr}");
    }
    assert!(
        ran.stdout.is_empty(),
        "{what}: printed a banner: {}",
        ran.stdout
    );
}

const PRICE: &str = "[[price]]\nprovider = \"openai\"\nmodel = \"m\"\neffective = \"2025-01-01\"\n";

#[test]
fn malformed_config_values_exit_2_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let provider = |rest: &str| format!("[[provider]]\nname = \"openai\"\n{rest}\n");
    let acme = |rest: &str| format!("[[provider]]\nname = \"acme\"\n{rest}\n");
    let cases: Vec<(&str, String, &str)> = vec![
        // Wrong types.
        ("string expected", "timezone = 3\n".into(), "timezone"),
        (
            "address as a number",
            "[server]\nlisten = 8787\n".into(),
            "server.listen",
        ),
        (
            "count as a string",
            "[store]\nbatch_size = \"big\"\n".into(),
            "store.batch_size",
        ),
        (
            "seconds as a float",
            "[upstream]\nconnect_timeout_secs = 1.5\n".into(),
            "upstream.connect_timeout_secs",
        ),
        (
            "bool as a string",
            "[upstream]\ndrain_on_disconnect = \"yes\"\n".into(),
            "upstream.drain_on_disconnect",
        ),
        (
            "markup as a string",
            provider("markup = \"5%\""),
            "provider[0].markup",
        ),
        (
            "name as a number",
            "[[provider]]\nname = 7\n".into(),
            "provider[0].name",
        ),
        (
            "keys as a string",
            "[[agent]]\nname = \"a\"\nkeys = \"abcdef012345\"\n".into(),
            "agent[0].keys",
        ),
        (
            "table as a string",
            "provider = \"openai\"\n".into(),
            "provider",
        ),
        (
            "section as a value",
            "server = 1\n".into(),
            "server",
        ),
        // Negative or zero where a positive value is needed.
        (
            "negative seconds",
            "[server]\ndrain_timeout_secs = -1\n".into(),
            "server.drain_timeout_secs",
        ),
        (
            "zero body limit",
            "[server]\nmax_request_body_bytes = 0\n".into(),
            "server.max_request_body_bytes",
        ),
        (
            "zero batch",
            "[store]\nbatch_size = 0\n".into(),
            "store.batch_size",
        ),
        (
            "zero refresh",
            "[store]\nrefresh_secs = 0\n".into(),
            "store.refresh_secs",
        ),
        (
            "zero connect timeout",
            "[upstream]\nconnect_timeout_secs = 0\n".into(),
            "upstream.connect_timeout_secs",
        ),
        (
            "zero response timeout",
            "[upstream]\nresponse_timeout_secs = 0\n".into(),
            "upstream.response_timeout_secs",
        ),
        (
            "negative idle timeout",
            "[upstream]\nidle_timeout_secs = -5\n".into(),
            "upstream.idle_timeout_secs",
        ),
        (
            "zero provider timeout",
            provider("response_timeout_secs = 0"),
            "provider[0].response_timeout_secs",
        ),
        (
            "negative markup",
            provider("markup = -0.1"),
            "provider[0].markup",
        ),
        ("NaN markup", provider("markup = nan"), "provider[0].markup"),
        (
            "zero label cap",
            "[metrics]\nmax_agents = 0\n".into(),
            "metrics.max_agents",
        ),
        (
            "negative fee",
            "[review]\nrouter_fee = -1.0\n".into(),
            "review.router_fee",
        ),
        (
            "negative price",
            format!("{PRICE}input = -1.0\noutput = 1.0\n"),
            "price[0].input",
        ),
        (
            "infinite price",
            format!("{PRICE}input = 1.0\noutput = inf\n"),
            "price[0].output",
        ),
        (
            "negative budget",
            "[[budget]]\nname = \"b\"\nperiod = \"month\"\nlimit_usd = -5.0\n".into(),
            "budget[0].limit_usd",
        ),
        (
            "zero smtp port",
            "[smtp]\nport = 0\n".into(),
            "smtp.port",
        ),
        (
            "busy timeout past SQLite's range",
            "[store]\nbusy_timeout_ms = 9999999999\n".into(),
            "store.busy_timeout_ms",
        ),
        // Addresses.
        (
            "host name",
            "[server]\nlisten = \"localhost\"\n".into(),
            "server.listen",
        ),
        (
            "port out of range",
            "[server]\nlisten = \"127.0.0.1:99999\"\n".into(),
            "server.listen",
        ),
        (
            "no port",
            "[server]\nmetrics_listen = \"0.0.0.0\"\n".into(),
            "server.metrics_listen",
        ),
        (
            "IPv6 without brackets",
            "[server]\nlisten = \"::1:8787\"\n".into(),
            "server.listen",
        ),
        (
            "empty address",
            "[server]\nlisten = \"\"\n".into(),
            "server.listen",
        ),
        (
            "proxy and metrics on one address",
            "[server]\nlisten = \"127.0.0.1:8787\"\nmetrics_listen = \"127.0.0.1:8787\"\n".into(),
            "server.metrics_listen",
        ),
        (
            "trailing space",
            "[server]\nlisten = \"127.0.0.1:8787 \"\n".into(),
            "server.listen",
        ),
        // Unknown enumerations.
        (
            "unknown kind",
            provider("kind = \"cohere\""),
            "provider[0].kind",
        ),
        (
            "unknown route",
            provider("route = \"cheap\""),
            "provider[0].route",
        ),
        (
            "unknown data class",
            "[[agent]]\nname = \"a\"\ndata_class = \"secret\"\n".into(),
            "agent[0].data_class",
        ),
        (
            "unknown period",
            "[[budget]]\nname = \"b\"\nperiod = \"fortnight\"\nlimit_usd = 5.0\n".into(),
            "budget[0].period",
        ),
        (
            "unknown tls",
            "[smtp]\ntls = \"maybe\"\n".into(),
            "smtp.tls",
        ),
        // Upstream URLs.
        (
            "ftp upstream",
            acme("upstream = \"ftp://example.com\""),
            "provider[0].upstream",
        ),
        (
            "not a URL",
            acme("upstream = \"not a url\""),
            "provider[0].upstream",
        ),
        (
            "credentials in the URL",
            acme("upstream = \"https://user:pw@example.com\""),
            "provider[0].upstream",
        ),
        (
            "query in the URL",
            acme("upstream = \"https://example.com/v1?key=x\""),
            "provider[0].upstream",
        ),
        (
            "empty URL",
            acme("upstream = \"\""),
            "provider[0].upstream",
        ),
        (
            "no host",
            acme("upstream = \"http://\""),
            "provider[0].upstream",
        ),
        (
            "scheme-relative URL",
            acme("upstream = \"//example.com\""),
            "provider[0].upstream",
        ),
        (
            "no upstream for a new provider",
            acme(""),
            "provider[0].upstream",
        ),
        (
            "hosts with a path",
            provider("hosts = [\"api.openai.com/v1\"]"),
            "provider[0].hosts",
        ),
        // Names and prefixes.
        (
            "duplicate provider",
            format!(
                "{}{}",
                acme("upstream = \"http://127.0.0.1:1\""),
                acme("upstream = \"http://127.0.0.1:2\"")
            ),
            "provider[1].name",
        ),
        (
            "built-in configured twice",
            format!("{}{}", provider(""), provider("")),
            "provider[1].name",
        ),
        (
            "prefix with a slash",
            "[[provider]]\nname = \"a/b\"\nupstream = \"http://127.0.0.1:1\"\n".into(),
            "provider[0].name",
        ),
        (
            "dot-dot prefix",
            "[[provider]]\nname = \"..\"\nupstream = \"http://127.0.0.1:1\"\n".into(),
            "provider[0].name",
        ),
        (
            "reserved prefix",
            "[[provider]]\nname = \"agent\"\nupstream = \"http://127.0.0.1:1\"\n".into(),
            "provider[0].name",
        ),
        (
            "empty prefix",
            "[[provider]]\nname = \"\"\nupstream = \"http://127.0.0.1:1\"\n".into(),
            "provider[0].name",
        ),
        (
            "duplicate agent",
            "[[agent]]\nname = \"a\"\n[[agent]]\nname = \"a\"\n".into(),
            "agent[1].name",
        ),
        (
            "key for two agents",
            "[[agent]]\nname = \"a\"\nkeys = [\"abcdef012345\"]\n[[agent]]\nname = \"b\"\nkeys = [\"ABCDEF012345\"]\n"
                .into(),
            "agent[1].keys",
        ),
        (
            "a key, not a fingerprint",
            "[[agent]]\nname = \"a\"\nkeys = [\"sk-live-123\"]\n".into(),
            "agent[0].keys",
        ),
        // Patterns: `*` and `?` are the only glob syntax, so every non-empty string is a valid
        // pattern; the empty one is refused.
        (
            "empty price model",
            "[[price]]\nprovider = \"openai\"\nmodel = \"\"\neffective = \"2025-01-01\"\ninput = 1.0\noutput = 1.0\n".into(),
            "price[0].model",
        ),
        (
            "blank budget model",
            "[[budget]]\nname = \"b\"\nperiod = \"month\"\nlimit_usd = 5.0\nmodel = \"  \"\n".into(),
            "budget[0].model",
        ),
        (
            "bad effective date",
            "[[price]]\nprovider = \"openai\"\nmodel = \"m\"\neffective = \"2025-13-01\"\ninput = 1.0\noutput = 1.0\n".into(),
            "price[0].effective",
        ),
        // Time zones.
        (
            "unknown zone",
            "timezone = \"Mars/Olympus_Mons\"\n".into(),
            "timezone",
        ),
        ("empty zone", "timezone = \"\"\n".into(), "timezone"),
        ("offset zone", "timezone = \"UTC+25\"\n".into(), "timezone"),
        // Unknown keys (every table denies them).
        (
            "unknown server key",
            "[server]\nlisten_address = \"127.0.0.1:1\"\n".into(),
            "listen_address",
        ),
        ("unknown table", "[proxyy]\nx = 1\n".into(), "proxyy"),
        (
            "unknown provider key",
            provider("base_url = \"https://x\""),
            "base_url",
        ),
        ("unknown top-level key", "verbose = true\n".into(), "verbose"),
        // Quoted keys carrying a newline or a terminal escape: still one line, escaped.
        (
            "newline in a key",
            "\"a\\nb\" = 1\n".into(),
            "a\\nb",
        ),
        (
            "escape sequence in a key",
            "[server]\n\"x\\u001b[31m\" = 1\n".into(),
            "server.x\\u{1b}[31m",
        ),
        // Syntax.
        ("unclosed table", "[server\nlisten = 1\n".into(), "line 1"),
        (
            "duplicate key",
            "[server]\nlisten = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:2\"\n".into(),
            "line 3",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let ran = serve_with(dir.path(), &path);
        let file = format!("bad{i}.toml");
        let result = std::panic::catch_unwind(|| {
            assert_refused(&ran, &file, &[key], what);
            // A value that may be a secret is never echoed.
            assert!(!ran.stderr.contains("sk-live"), "{}", ran.stderr);
        });
        if result.is_err() {
            failures.push(*what);
        }
    }
    assert!(failures.is_empty(), "cases that failed: {failures:?}");
}

#[test]
fn unreadable_config_files_exit_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // Not UTF-8.
    let path = dir.path().join("latin1.toml");
    std::fs::write(&path, b"timezone = \"Europe/Z\xfcrich\"\n").unwrap();
    assert_refused(
        &serve_with(dir.path(), &path),
        "latin1.toml",
        &["UTF-8"],
        "non-UTF-8 file",
    );
    // Binary noise.
    let path = dir.path().join("noise.toml");
    std::fs::write(&path, [0u8, 0xff, 0xfe, 0x00, b'\n', 0x1b, b'[']).unwrap();
    assert_refused(
        &serve_with(dir.path(), &path),
        "noise.toml",
        &[],
        "binary file",
    );
    // UTF-8 with a NUL byte and a BOM.
    let path = dir.path().join("nul.toml");
    std::fs::write(&path, "\u{feff}timezone = \"UTC\0\"\n").unwrap();
    assert_refused(
        &serve_with(dir.path(), &path),
        "nul.toml",
        &[],
        "NUL in a string",
    );
    // Missing.
    let path = dir.path().join("missing.toml");
    assert_refused(
        &serve_with(dir.path(), &path),
        "missing.toml",
        &["cannot read"],
        "missing file",
    );
    // A directory.
    let path = dir.path().join("adir.toml");
    std::fs::create_dir(&path).unwrap();
    assert_refused(
        &serve_with(dir.path(), &path),
        "adir.toml",
        &["cannot read"],
        "directory",
    );
    // The same errors through every command that reads the config.
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = \"nowhere\"\n").unwrap();
    for command in [
        &["prices", "list"][..],
        &["report", "--month"],
        &["budget", "status"],
        &["review"],
    ] {
        let mut args = vec!["--config", path.to_str().unwrap()];
        args.extend_from_slice(command);
        let ran = run_meter(dir.path(), &args, Duration::from_secs(20));
        assert_refused(
            &ran,
            "bad.toml",
            &["server.listen"],
            &format!("meter {}", command.join(" ")),
        );
    }
}

#[test]
fn durations_past_a_year_are_refused_naming_the_key() {
    // TOML's largest integer in each duration: refused at load (a timer at `now + 2^63 s`
    // overflows), never a panic at the first call.
    let dir = tempfile::tempdir().unwrap();
    let keys = [
        ("server", "drain_timeout_secs"),
        ("store", "refresh_secs"),
        ("upstream", "connect_timeout_secs"),
        ("upstream", "response_timeout_secs"),
        ("upstream", "idle_timeout_secs"),
        ("upstream", "pool_idle_timeout_secs"),
        ("upstream", "drain_on_disconnect_secs"),
        ("smtp", "timeout_secs"),
        ("smtp", "retry_min_secs"),
        ("smtp", "retry_max_secs"),
    ];
    for (i, (table, key)) in keys.iter().enumerate() {
        let path = dir.path().join(format!("long{i}.toml"));
        std::fs::write(&path, format!("[{table}]\n{key} = {}\n", i64::MAX)).unwrap();
        let what = format!("{table}.{key}");
        assert_refused(
            &serve_with(dir.path(), &path),
            &format!("long{i}.toml"),
            &[&what, "more than a year"],
            &what,
        );
    }
    for key in ["response_timeout_secs", "idle_timeout_secs"] {
        let path = dir.path().join("provider.toml");
        std::fs::write(
            &path,
            format!("[[provider]]\nname = \"openai\"\n{key} = {}\n", i64::MAX),
        )
        .unwrap();
        assert_refused(
            &serve_with(dir.path(), &path),
            "provider.toml",
            &[&format!("provider[0].{key}")],
            key,
        );
    }
}

#[tokio::test]
async fn the_largest_accepted_values_work() {
    // Every duration at its maximum (a year; SQLite's busy timeout at its C int of ms), every
    // size and count at TOML's largest integer: meter serves plain and streamed calls with them
    // and stops cleanly on SIGTERM.
    let sse = String::from_utf8(fixture("openai/chat_stream_include_usage.sse")).unwrap();
    let upstream = FakeProvider::start(move |r| {
        if r.body.windows(8).any(|w| w == b"\"stream\"") {
            FakeResponse::sse(vec![Piece::now(sse.clone())])
        } else {
            FakeResponse::json(200, CHAT_JSON)
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (max, year) = (i64::MAX, meter::config::MAX_SECS);
    let config = format!(
        "[server]\ndrain_timeout_secs = {year}\nmax_request_body_bytes = {max}\nmax_parse_body_bytes = {max}\nmax_rewrite_body_bytes = {max}\n\n[store]\nbatch_size = {max}\nrefresh_secs = {year}\nbusy_timeout_ms = {}\n\n[upstream]\nconnect_timeout_secs = {year}\nresponse_timeout_secs = {year}\nidle_timeout_secs = {year}\npool_idle_timeout_secs = {year}\npool_max_idle_per_host = {max}\ndrain_on_disconnect = true\ndrain_on_disconnect_secs = {year}\n\n[metrics]\nmax_agents = {max}\nmax_models = {max}\n\n[smtp]\ntimeout_secs = {year}\nretry_min_secs = {year}\nretry_max_secs = {year}\n\n[[budget]]\nname = \"huge\"\nperiod = \"day\"\nlimit_usd = 1e9\nenforce = true\nreserve_output_tokens = {max}\nalert_at = [10.0]\n\n[[provider]]\nname = \"openai\"\nupstream = \"{}\"\nresponse_timeout_secs = {year}\nidle_timeout_secs = {year}\nmarkup = 10.0\n",
        i32::MAX,
        upstream.url()
    );
    let path = dir.path().join("huge.toml");
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap();
    let mut meter = BinMeter::start(dir.path(), &["--config", path, "--db", "huge.db"]);
    let url = format!("http://{}/openai/v1/chat/completions", meter.proxy);
    let (status, _, _) = send(post_json(&url, CHAT_REQUEST)).await;
    assert_eq!(status, 200);
    let streamed =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, body) = send(post_json(&url, streamed)).await;
    assert_eq!(status, 200);
    assert!(
        body.ends_with(b"data: [DONE]\n\n"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    meter.signal("TERM");
    assert_eq!(meter.wait(Duration::from_secs(30)), Some(0));
    let rows = rows(&dir.path().join("huge.db"));
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter().all(|r| r.usage_status == "reported"),
        "{rows:?}"
    );
}

#[tokio::test]
async fn hostile_request_bodies_are_forwarded_or_refused_never_a_panic() {
    // The request probe reads model, stream and output cap from bodies a client controls; an
    // enforced budget turns the output cap into a reservation. None of these may break meter.
    let upstream = FakeProvider::start(|_| FakeResponse::json(200, CHAT_JSON)).await;
    let mut meter = Meter::start(
        &upstream.url(),
        "[[budget]]\nname = \"b\"\nperiod = \"day\"\nlimit_usd = 100.0\nenforce = true\n",
    )
    .await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let bodies = [
        r#"{"model":"gpt-4o","max_tokens":18446744073709551615,"messages":[]}"#.to_string(),
        r#"{"model":"gpt-4o","max_tokens":-1,"messages":[]}"#.to_string(),
        r#"{"model":"gpt-4o","max_tokens":1e999,"messages":[]}"#.to_string(),
        r#"{"model":"gpt-4o","max_completion_tokens":9223372036854775807,"n":4294967295}"#
            .to_string(),
        r#"{"model":"gpt-4o","stream":"yes","stream_options":7}"#.to_string(),
        r#"{"model":{"$gt":""},"messages":"\u0000"}"#.to_string(),
        format!(r#"{{"model":"{}"}}"#, "m".repeat(100_000)),
        format!(r#"{{"model":"gpt-4o","messages":{deep}}}"#),
        deep,
        "\u{feff}{\"model\":\"gpt-4o\"}".to_string(),
        "not json at all \0\u{1b}[31m".to_string(),
    ];
    for body in &bodies {
        let (status, _, answer) =
            send(post_json(&meter.url("/openai/v1/chat/completions"), body)).await;
        assert!(
            status == 200 || status == 429,
            "{status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    still_serves(&meter).await;
    meter.stop().await;
    assert_eq!(rows(&meter.db).len(), bodies.len() + 1);
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1 on a TcpStream: what a client library would not send.
// ---------------------------------------------------------------------------------------------

/// A response read off the wire; `status` is `None` when the connection closed without one.
#[derive(Debug)]
struct RawResponse {
    status: Option<u16>,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// meter's error code, from the body's `error.code`.
    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// Writes `request` as is and reads one response (up to its `content-length`, or to EOF),
/// bounded at 10 s.
async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The server may answer and close before reading everything (a refused header).
        let _ = stream.write_all(request).await;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(usize::MAX);
                if buf.len() - (end + 4) >= length {
                    break;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = find(&buf, b"\r\n\r\n").unwrap_or(buf.len());
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status = head
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse().ok());
        let body = buf.get(end + 4..).unwrap_or_default().to_vec();
        RawResponse { status, head, body }
    })
    .await
    .expect("no answer within 10 s")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A POST of the chat request to `target` with `extra` header lines (each ending in `\r\n`).
fn post(target: &str, extra: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {target} HTTP/1.1\r\nHost: meter\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        CHAT_REQUEST.len()
    )
    .into_bytes();
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(CHAT_REQUEST.as_bytes());
    out
}

fn get(target: &str, host: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// The `agent` label values of `meter_requests_total`.
fn agent_labels(metrics: &str) -> Vec<String> {
    let mut agents: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("meter_requests_total{"))
        .filter_map(|l| {
            let start = l.find("agent=\"")? + 7;
            let end = start + l[start..].find('"')?;
            Some(l[start..end].to_string())
        })
        .collect();
    agents.sort();
    agents.dedup();
    agents
}

/// A normal call still works: meter is alive and serving after the hostile ones.
async fn still_serves(meter: &Meter) {
    let (status, _, _) = send(post_json(
        &meter.url("/openai/v1/chat/completions"),
        CHAT_REQUEST,
    ))
    .await;
    assert_eq!(status, 200);
}

// ---------------------------------------------------------------------------------------------
// (b) Hostile X-Meter-Agent and X-Meter-Tags.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hostile_agent_headers_are_refused_or_sanitised_never_stored_raw() {
    let upstream = FakeProvider::start(|_| FakeResponse::json(200, CHAT_JSON)).await;
    let mut meter = Meter::start(&upstream.url(), "").await;
    let target = "/openai/v1/chat/completions";
    let mut refused = 0;
    // (header bytes, why it is refused): each is a clear 400, from meter or from hyper's
    // header parser, and nothing is forwarded.
    let long = format!("X-Meter-Agent: {}\r\n", "a".repeat(10_000));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"X-Meter-Agent: bad\x1b[31magent\r\n".to_vec(), "ESC"),
        (b"X-Meter-Agent: bad\x00agent\r\n".to_vec(), "NUL"),
        (b"X-Meter-Agent: bad\ragent\r\n".to_vec(), "bare CR"),
        (b"X-Meter-Agent: bad\x7fagent\r\n".to_vec(), "DEL"),
        (b"X-Meter-Agent: bad\tagent\r\n".to_vec(), "tab"),
        (long.into_bytes(), "10 kB"),
        ("X-Meter-Agent: caf\u{e9}\r\n".as_bytes().to_vec(), "UTF-8"),
        (b"X-Meter-Agent: caf\xe9\r\n".to_vec(), "Latin-1 obs-text"),
        (
            "X-Meter-Agent: \u{202e}tnega\r\n".as_bytes().to_vec(),
            "bidi override",
        ),
        (b"X-Meter-Agent: \r\n".to_vec(), "empty"),
        (b"X-Meter-Agent: a b\r\n".to_vec(), "space"),
        (b"X-Meter-Agent: ../../etc\r\n".to_vec(), "path"),
        (
            b"X-Meter-Agent: a\"} 1\r\n".to_vec(),
            "metric label injection",
        ),
        (b"X-Meter-Agent: a\r\n b\r\n".to_vec(), "obs-fold"),
    ];
    for (header, what) in &cases {
        let response = raw(meter.proxy, &post(target, header)).await;
        assert_eq!(response.status, Some(400), "{what}: {response:?}");
        if !response.body.is_empty() {
            // meter's own answer (hyper's parser errors have no body).
            assert_eq!(response.code(), "bad_agent", "{what}: {response:?}");
        }
        refused += 1;
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());

    // A bare LF ends the header line (HTTP/1.1 allows it): "X-Injected" is simply another
    // header of the client's own request, and the agent is the valid part.
    let response = raw(
        meter.proxy,
        &post(target, b"X-Meter-Agent: lf-agent\nX-Injected: 1\r\n"),
    )
    .await;
    assert_eq!(response.status, Some(200), "{response:?}");
    // Two agent headers: the first counts; both are stripped before forwarding.
    let response = raw(
        meter.proxy,
        &post(target, b"X-Meter-Agent: first\r\nX-Meter-Agent: second\r\n"),
    )
    .await;
    assert_eq!(response.status, Some(200), "{response:?}");
    // The longest valid name.
    let max = format!("X-Meter-Agent: {}\r\n", "m".repeat(64));
    let response = raw(meter.proxy, &post(target, max.as_bytes())).await;
    assert_eq!(response.status, Some(200), "{response:?}");
    // A 1 MB header: refused by hyper's header limit, the connection closed, meter unharmed.
    let huge = format!("X-Meter-Agent: {}\r\n", "a".repeat(1 << 20));
    let response = raw(meter.proxy, &post(target, huge.as_bytes())).await;
    assert!(
        response.status.is_none_or(|s| (400..500).contains(&s)),
        "{response:?}"
    );
    still_serves(&meter).await;

    let received = upstream.requests();
    assert_eq!(received.len(), 4);
    for request in &received {
        assert!(
            request
                .headers
                .keys()
                .all(|name| !name.as_str().starts_with("x-meter-")),
            "{:?}",
            request.headers
        );
    }
    let metrics = meter
        .metrics_when(|text| agent_labels(text).len() == 4)
        .await;
    meter.stop().await;
    let agents: Vec<String> = rows(&meter.db).into_iter().map(|r| r.agent).collect();
    assert_eq!(
        agents,
        vec![
            "lf-agent".to_string(),
            "first".to_string(),
            "m".repeat(64),
            "default".to_string()
        ],
        "refused calls have no row"
    );
    // Only the valid names reach the metric labels.
    let mut want = vec![
        "default".to_string(),
        "first".to_string(),
        "lf-agent".to_string(),
        "m".repeat(64),
    ];
    want.sort();
    assert_eq!(agent_labels(&metrics), want);
    assert_eq!(refused, cases.len());
}

#[tokio::test]
async fn tag_injection_is_escaped_or_refused() {
    let openrouter_body = fixture("openrouter/chat_cost.json");
    let upstream = FakeProvider::start(move |r| {
        if r.uri.contains("/api/") {
            FakeResponse::json(200, openrouter_body.clone())
        } else {
            FakeResponse::json(200, CHAT_JSON)
        }
    })
    .await;
    let mut meter = Meter::start(
        &upstream.url(),
        &format!(
            "[[provider]]\nname = \"openrouter\"\nupstream = \"{}/api\"\n",
            upstream.url()
        ),
    )
    .await;
    let target = "/openai/v1/chat/completions";
    // Accepted: stored as a JSON object whose keys are exactly the ones given, values escaped.
    let accepted: Vec<(&[u8], serde_json::Value)> = vec![
        (
            &b"X-Meter-Tags: team=a,agent=root\r\n"[..],
            serde_json::json!({"team": "a", "agent": "root"}),
        ),
        (
            &b"X-Meter-Tags: k=\"}{\"admin\":true}\r\n"[..],
            serde_json::json!({"k": "\"}{\"admin\":true}"}),
        ),
        (
            &b"X-Meter-Tags: k=1'); DROP TABLE usage;--\r\n"[..],
            serde_json::json!({"k": "1'); DROP TABLE usage;--"}),
        ),
        (
            &b"X-Meter-Tags: k=a=b=c, j = x \r\n"[..],
            serde_json::json!({"k": "a=b=c", "j": "x"}),
        ),
        (
            &b"X-Meter-Tags: k=1,k=2\r\n"[..],
            serde_json::json!({"k": "2"}),
        ),
        (
            "X-Meter-Tags: note=caf\u{e9} \u{2713}\r\n".as_bytes(),
            serde_json::json!({"note": "caf\u{e9} \u{2713}"}),
        ),
        (&b"X-Meter-Tags: ,,\r\n"[..], serde_json::json!({})),
    ];
    for (header, _) in &accepted {
        let response = raw(meter.proxy, &post(target, header)).await;
        assert_eq!(
            response.status,
            Some(200),
            "{}: {response:?}",
            String::from_utf8_lossy(header)
        );
    }
    // Refused with 400 bad_tags (or by hyper's parser, without a body): nothing forwarded.
    let long_value = format!("X-Meter-Tags: k={}\r\n", "v".repeat(129));
    let many = format!(
        "X-Meter-Tags: {}\r\n",
        (0..17)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let long_header = format!("X-Meter-Tags: k={}\r\n", "v,k=".repeat(300));
    let refused: Vec<Vec<u8>> = vec![
        b"X-Meter-Tags: noequals\r\n".to_vec(),
        b"X-Meter-Tags: k=\"},\"admin\":true,\"x\":{\"\r\n".to_vec(),
        b"X-Meter-Tags: bad key=1\r\n".to_vec(),
        b"X-Meter-Tags: \"k\"=1\r\n".to_vec(),
        b"X-Meter-Tags: k=a\tb\r\n".to_vec(),
        b"X-Meter-Tags: k=a\x1bb\r\n".to_vec(),
        b"X-Meter-Tags: k=a\x00b\r\n".to_vec(),
        b"X-Meter-Tags: k=\xff\xfe\r\n".to_vec(),
        "X-Meter-Tags: k=\u{202e}gnp.exe\r\n".as_bytes().to_vec(),
        "X-Meter-Tags: k=a\u{200b}b\r\n".as_bytes().to_vec(),
        long_value.into_bytes(),
        many.into_bytes(),
        long_header.into_bytes(),
    ];
    let before = upstream.requests().len();
    for header in &refused {
        let response = raw(meter.proxy, &post(target, header)).await;
        let what = String::from_utf8_lossy(header);
        assert_eq!(response.status, Some(400), "{what}: {response:?}");
        if !response.body.is_empty() {
            assert_eq!(response.code(), "bad_tags", "{what}: {response:?}");
        }
    }
    assert_eq!(upstream.requests().len(), before);
    // A client's `upstream_provider` tag never overrides the one meter read from OpenRouter.
    let response = raw(
        meter.proxy,
        &post(
            "/openrouter/v1/chat/completions",
            b"X-Meter-Tags: upstream_provider=spoofed,team=a\r\n",
        ),
    )
    .await;
    assert_eq!(response.status, Some(200), "{response:?}");
    meter.stop().await;

    let rows = rows(&meter.db);
    assert_eq!(rows.len(), accepted.len() + 1);
    for (row, (_, want)) in rows.iter().zip(&accepted) {
        let tags: serde_json::Value = serde_json::from_str(row.tags.as_deref().unwrap()).unwrap();
        assert_eq!(&tags, want);
        assert_eq!(row.agent, "default", "tags never set the agent");
    }
    let last: serde_json::Value =
        serde_json::from_str(rows.last().unwrap().tags.as_deref().unwrap()).unwrap();
    assert_eq!(last["team"], "a");
    assert_ne!(last["upstream_provider"], "spoofed", "{last}");
    assert!(last["upstream_provider"].is_string(), "{last}");
    assert!(upstream
        .requests()
        .iter()
        .all(|r| !r.headers.contains_key("x-meter-tags")));
}

// ---------------------------------------------------------------------------------------------
// (c) Path traversal through the provider prefix.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn path_traversal_never_leaves_the_prefixs_upstream_or_base() {
    let openai = FakeProvider::start(|_| FakeResponse::json(200, CHAT_JSON)).await;
    let anthropic = FakeProvider::start(|_| FakeResponse::json(200, "{}")).await;
    let mut meter = Meter::start(
        &openai.url(),
        &format!(
            "[[provider]]\nname = \"anthropic\"\nupstream = \"{0}\"\n\n[[provider]]\nname = \"based\"\nupstream = \"{0}/base\"\nkind = \"anthropic\"\n",
            anthropic.url()
        ),
    )
    .await;
    // (request target, status, meter's code or "" when hyper refuses it before meter sees it)
    let refused: &[(&str, u16, &str)] = &[
        ("/openai/../anthropic/v1/messages", 400, "bad_path"),
        ("/openai/./v1/models", 400, "bad_path"),
        ("/openai/v1/../../anthropic/v1/messages", 400, "bad_path"),
        ("/%2e%2e/anthropic/v1/messages", 400, "bad_path"),
        ("/openai/%2e%2e/anthropic/v1/messages", 400, "bad_path"),
        ("/openai/%2E%2e/%2e%2E/anthropic", 400, "bad_path"),
        ("/openai/.%2e/anthropic/v1/messages", 400, "bad_path"),
        ("/openai/..%2f..%2fetc/passwd", 400, "bad_path"),
        ("/openai%2f..%2fanthropic/v1/messages", 400, "bad_path"),
        ("/openai/v1%2F..%2F..%2Fanthropic", 400, "bad_path"),
        ("/openai/v1%5c..%5c..%5canthropic", 400, "bad_path"),
        ("/openai/..;/anthropic/v1/messages", 400, "bad_path"),
        ("/openai/%c0%ae%c0%ae/anthropic", 400, "bad_path"),
        ("/openai/v1/models%00.json", 400, "bad_path"),
        ("/based/../v1/messages", 400, "bad_path"),
        ("/based/..", 400, "bad_path"),
        ("/agent/../openai/v1/models", 400, "bad_path"),
        ("/agent/x%2f..%2f/openai/v1/models", 400, "bad_path"),
        ("/agent/a b/openai/v1/models", 400, ""),
        ("/openai//evil.example/x", 400, "bad_path"),
        ("//evil.example/x", 404, "unknown_provider"),
        ("//anthropic/v1/messages", 404, "unknown_provider"),
        ("/OPENAI/v1/models", 404, "unknown_provider"),
        ("/../openai/v1/models", 400, "bad_path"),
        ("/nosuch/../openai/v1/models", 400, "bad_path"),
        ("/openai\\..\\anthropic", 400, ""),
        ("*", 400, ""),
    ];
    for (target, status, code) in refused {
        let response = raw(meter.proxy, &get(target, "meter")).await;
        assert_eq!(response.status, Some(*status), "{target}: {response:?}");
        if !code.is_empty() {
            assert_eq!(response.code(), *code, "{target}: {response:?}");
        } else if !response.body.is_empty() {
            assert!(
                ["bad_path", "bad_agent", ""].contains(&response.code().as_str()),
                "{target}: {response:?}"
            );
        }
    }
    assert!(openai.requests().is_empty(), "{:?}", openai.requests());
    assert!(
        anthropic.requests().is_empty(),
        "{:?}",
        anthropic.requests()
    );

    // Allowed: each reaches its own prefix's upstream, under its base, path and query as sent;
    // a hostile Host header changes nothing (the upstream's own is sent).
    let allowed: &[(&str, &str, &str, &FakeProvider)] = &[
        ("/openai/v1/models", "evil.example", "/v1/models", &openai),
        (
            "/openai/v1/models?next=/../../etc/passwd",
            "meter",
            "/v1/models?next=/../../etc/passwd",
            &openai,
        ),
        (
            "/anthropic/v1/messages/..x",
            "meter",
            "/v1/messages/..x",
            &anthropic,
        ),
        (
            "/based//evil.example/x",
            "meter",
            "/base//evil.example/x",
            &anthropic,
        ),
        ("/based", "meter", "/base", &anthropic),
        (
            "/agent/ci/based/v1/models",
            "meter",
            "/base/v1/models",
            &anthropic,
        ),
    ];
    for (target, host, want, provider) in allowed {
        let before = provider.requests().len();
        let response = raw(meter.proxy, &get(target, host)).await;
        assert_eq!(response.status, Some(200), "{target}: {response:?}");
        let received = provider.requests();
        assert_eq!(received.len(), before + 1, "{target}");
        let got = received.last().unwrap();
        assert_eq!(got.uri, *want, "{target}");
        assert_eq!(
            got.headers["host"].to_str().unwrap(),
            provider.addr.to_string(),
            "{target}"
        );
    }
    assert_eq!(openai.requests().len(), 2);
    assert_eq!(anthropic.requests().len(), 4);
    still_serves(&meter).await;
    meter.stop().await;
    // Refused paths never reached a provider, so they have no row; the allowed ones do.
    assert_eq!(rows(&meter.db).len(), allowed.len() + 1);
}

// ---------------------------------------------------------------------------------------------
// (d) CONNECT and absolute-form requests while forward-proxy mode is off.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connect_and_absolute_form_are_refused_while_forward_mode_is_off() {
    let openai = FakeProvider::start(|_| FakeResponse::json(200, CHAT_JSON)).await;
    let mut meter = Meter::start(&openai.url(), "").await;
    let upstream = openai.addr.to_string();
    // (raw request, status, code)
    let cases: Vec<(Vec<u8>, u16, &str)> =
        vec![
        (
            b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n".to_vec(),
            403,
            "not_a_proxy",
        ),
        (
            b"CONNECT 169.254.169.254:80 HTTP/1.1\r\nHost: 169.254.169.254:80\r\n\r\n".to_vec(),
            403,
            "not_a_proxy",
        ),
        (
            // A configured provider's host: still refused, forward-proxy mode is off.
            b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n".to_vec(),
            403,
            "forward_proxy_off",
        ),
        (
            format!("CONNECT {upstream} HTTP/1.1\r\nHost: {upstream}\r\n\r\n").into_bytes(),
            403,
            "forward_proxy_off",
        ),
        (get("http://evil.example/", "evil.example"), 403, "not_a_proxy"),
        (
            // Never routed by its path to the openai upstream either.
            get("http://evil.example/openai/v1/models", "evil.example"),
            403,
            "not_a_proxy",
        ),
        (
            get("https://api.openai.com/v1/models", "api.openai.com"),
            403,
            "forward_proxy_off",
        ),
        (
            get(&format!("http://{upstream}/v1/models"), &upstream),
            403,
            "forward_proxy_off",
        ),
        (
            b"GET http://evil.example/openai/v1/models HTTP/1.0\r\n\r\n".to_vec(),
            403,
            "not_a_proxy",
        ),
        (
            post("http://evil.example/openai/v1/chat/completions", b""),
            403,
            "not_a_proxy",
        ),
        (
            b"GET ftp://evil.example/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
                .to_vec(),
            403,
            "not_a_proxy",
        ),
    ];
    for (request, status, code) in &cases {
        let what = String::from_utf8_lossy(&request[..request.len().min(60)]).into_owned();
        let response = raw(meter.proxy, request).await;
        assert_eq!(response.status, Some(*status), "{what}: {response:?}");
        assert_eq!(response.code(), *code, "{what}: {response:?}");
        assert!(
            response
                .head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{what}: {response:?}"
        );
        let message = response.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(message.contains("forward-proxy mode is off"), "{message}");
    }

    // A refused CONNECT is not a tunnel: bytes sent after it are read as the next request
    // (or dropped), never relayed.
    let mut stream = tokio::net::TcpStream::connect(meter.proxy).await.unwrap();
    stream
        .write_all(
            format!(
                "CONNECT {upstream} HTTP/1.1\r\nHost: {upstream}\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(!answer.contains("HTTP/1.1 200"), "{answer}");

    // Nonsense request lines: hyper's 400 (or a closed connection), never a panic.
    for junk in [
        &b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 not a TLS hello\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /openai/v1/models HTTP/9.9\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\n\r\n",
    ] {
        let response = raw(meter.proxy, junk).await;
        assert!(
            response.status.is_none_or(|s| (400..600).contains(&s)),
            "{junk:?}: {response:?}"
        );
    }
    assert!(openai.requests().is_empty(), "{:?}", openai.requests());
    still_serves(&meter).await;
    meter.stop().await;
    assert_eq!(rows(&meter.db).len(), 1, "refused requests have no row");
}

#[tokio::test]
async fn absolute_form_naming_meter_itself_is_routed_by_path() {
    // RFC 9112 §3.2.2: a server must accept the absolute form; naming meter's own listen
    // address it is an ordinary request. The port is picked, freed and given to meter.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let openai = FakeProvider::start(|_| FakeResponse::json(200, CHAT_JSON)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:0\"\n\n[store]\npath = {:?}\n\n[[provider]]\nname = \"openai\"\nupstream = \"{}\"\n",
        dir.path().join("meter.db"),
        openai.url()
    );
    let config = meter::config::Config::from_toml(&config, "test").unwrap();
    let listeners = meter::app::Listeners::bind(&config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(meter::app::run(config, listeners, async move {
        let _ = stopped.await;
    }));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for authority in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let response = raw(
            addr,
            &get(&format!("http://{authority}/openai/v1/models"), &authority),
        )
        .await;
        assert_eq!(response.status, Some(200), "{authority}: {response:?}");
    }
    let response = raw(
        addr,
        &get(&format!("http://127.0.0.2:{port}/openai/v1/models"), "x"),
    )
    .await;
    assert_eq!(response.status, Some(403), "{response:?}");
    let got: Vec<String> = openai.requests().into_iter().map(|r| r.uri).collect();
    assert_eq!(got, ["/v1/models", "/v1/models"]);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn http2_requests_with_any_authority_are_routed_by_path() {
    // HTTP/2 always carries `:authority`; it is the Host header of HTTP/2, not a proxy target.
    let openai = FakeProvider::start(|_| FakeResponse::json(200, CHAT_JSON)).await;
    let mut meter = Meter::start(&openai.url(), "").await;
    let client = h2_client();
    let request = Request::get(format!("http://{}/openai/v1/models", meter.proxy))
        .header("host", "evil.example")
        .body(Full::default())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let got = openai.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].uri, "/v1/models");
    assert_eq!(got[0].headers["host"], openai.addr.to_string().as_str());
    meter.stop().await;
}
