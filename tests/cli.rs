//! The `meter` binary as a user runs it: exit codes, config errors, `init`, `serve` on its
//! defaults and its clean exit on SIGTERM (with streams in flight: tests/faults.rs).
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use http::Request;
use http_body_util::Full;
use support::*;

fn meter(cwd: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meter"))
        .current_dir(cwd)
        .env_remove("METER_CONFIG")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bad_config_exits_2_with_one_line_naming_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\nlisten = \"localhost\"\n", "server.listen"),
        (
            "[[provider]]\nname = \"acme\"\nkind = \"openai\"\n",
            "provider[0].upstream",
        ),
        ("[store]\npaht = \"x.db\"\n", "paht"),
        ("timezone = 3\n", "timezone"),
    ];
    for (text, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = meter(dir.path(), &["--config", path.to_str().unwrap(), "serve"]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("bad.toml") && stderr.contains(key),
            "{stderr}"
        );
    }
    // METER_CONFIG is honoured like --config.
    let out = Command::new(env!("CARGO_BIN_EXE_meter"))
        .current_dir(dir.path())
        .env("METER_CONFIG", dir.path().join("missing.toml"))
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    // Bad usage is 2 as well.
    assert_eq!(
        meter(dir.path(), &["serve", "--listen", "nope"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn init_writes_a_config_that_loads_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = meter(dir.path(), &["init"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("meter.toml")).unwrap();
    assert!(text.contains("listen = \"127.0.0.1:8787\""));
    assert_eq!(
        meter::config::Config::from_toml(&text, "meter.toml").unwrap(),
        meter::config::Config::from_toml("", "defaults").unwrap()
    );
    assert_eq!(meter(dir.path(), &["init"]).status.code(), Some(2));
    assert_eq!(
        meter(dir.path(), &["init", "--force"]).status.code(),
        Some(0)
    );
    let printed = meter(dir.path(), &["init", "--path", "-"]);
    assert_eq!(String::from_utf8(printed.stdout).unwrap(), text);
}

#[test]
fn every_command_documents_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["init", "--help"],
    ] {
        let out = meter(dir.path(), &args);
        assert_eq!(out.status.code(), Some(0));
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(help.contains("--config") && help.contains("--db"), "{help}");
    }
}

#[tokio::test]
async fn serve_runs_on_built_in_defaults_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut meter = BinMeter::start(dir.path(), &[]);
    assert!(
        meter.banner.contains("OPENAI_BASE_URL=http://"),
        "{}",
        meter.banner
    );
    assert!(meter.banner.contains("/openai/v1"), "{}", meter.banner);
    let (status, _, _) = send(
        Request::get(format!("http://{}/readyz", meter.metrics))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = send(
        Request::get(format!("http://{}/healthz", meter.metrics))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        dir.path().join("meter.db").exists(),
        "the ledger defaults to ./meter.db"
    );
    meter.signal("TERM");
    assert_eq!(meter.wait(Duration::from_secs(20)), Some(0));
}

/// `worker_threads = 1` (what one CPU picks by itself) serves plain and streamed calls on a
/// single-threaded runtime, metrics included, and drains on SIGTERM.
#[tokio::test]
async fn a_single_threaded_meter_serves_calls_and_drains() {
    let upstream = FakeProvider::start(|received| {
        if String::from_utf8_lossy(&received.body).contains("\"stream\":true") {
            FakeResponse::sse(vec![
                Piece::now(
                    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
                ),
                Piece::after(
                    Duration::from_millis(300),
                    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1,\"total_tokens\":8}}\n\ndata: [DONE]\n\n",
                ),
            ])
        } else {
            FakeResponse::json(
                200,
                r#"{"id":"c2","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#,
            )
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meter.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nworker_threads = 1\n\n[[provider]]\nname = \"openai\"\nupstream = \"{}\"\n",
            upstream.url()
        ),
    )
    .unwrap();
    let mut meter = BinMeter::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let pid = meter.child.id();
    let url = format!("http://{}/openai/v1/chat/completions", meter.proxy);
    let (status, _, body) = send(post_json(
        &url,
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}"#,
    ))
    .await;
    assert_eq!(status, 200, "{body:?}");
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    let stream = tokio::spawn(send(post_json(
        &url,
        r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hi"}]}"#,
    )));
    tokio::time::sleep(Duration::from_millis(100)).await;
    meter.signal("TERM");
    let (status, _, body) = stream.await.unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("[DONE]"));
    assert_eq!(meter.wait(Duration::from_secs(20)), Some(0));
    let rows = rows(&dir.path().join("meter.db"));
    let tokens: Vec<(i64, i64)> = rows
        .iter()
        .map(|r| (r.input_tokens, r.output_tokens))
        .collect();
    assert_eq!(rows.len(), 2, "{tokens:?}");
    assert!(
        tokens.contains(&(5, 1)) && tokens.contains(&(7, 1)),
        "{tokens:?}"
    );
    // The serving runtime is the main thread; besides it only the ledger writer runs (a
    // work-stealing runtime would add its worker threads).
    assert_eq!(threads, 2, "threads of a single-threaded meter");
}
