//! The `meter` binary as a user runs it: exit codes, config errors, `init`, `serve` on its
//! defaults, and SIGTERM with streams in flight.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
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

#[tokio::test]
async fn sigterm_with_streams_in_flight_loses_no_record() {
    const STREAMS: usize = 8;
    let usage = "data: {\"id\":\"chatcmpl-t\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\n";
    let first = "data: {\"id\":\"chatcmpl-t\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}],\"usage\":null}\n\n";
    let upstream = FakeProvider::start(move |_| {
        FakeResponse::sse(vec![
            Piece::now(first),
            Piece::gated(usage),
            Piece::now("data: [DONE]\n\n"),
        ])
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meter.toml");
    std::fs::write(
        &config,
        format!(
            "[[provider]]\nname = \"openai\"\nupstream = \"{}\"\n",
            upstream.url()
        ),
    )
    .unwrap();
    let db = dir.path().join("ledger.db");
    let mut meter = BinMeter::start(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ],
    );

    let mut bodies = Vec::new();
    for _ in 0..STREAMS {
        let request = post_json(
            &format!("http://{}/openai/v1/chat/completions", meter.proxy),
            r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        );
        let response = client().request(request).await.unwrap();
        let mut body = response.into_body();
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(frame, Bytes::from(first));
        bodies.push(body);
    }
    meter.signal("TERM");
    // Shutdown has begun once /readyz turns 503; the streams are still open.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = send(
            Request::get(format!("http://{}/readyz", meter.metrics))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        if status == 503 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "meter never began shutting down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New connections are refused while the old streams drain (once the accept loop has
    // dropped its listener, a moment after readiness turned off).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(meter.proxy).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "meter kept accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    upstream.release(STREAMS);
    for body in bodies {
        let rest = body.collect().await.unwrap().to_bytes();
        assert!(rest.ends_with(b"data: [DONE]\n\n"));
    }
    assert_eq!(meter.wait(Duration::from_secs(20)), Some(0));
    let rows = rows(&db);
    assert_eq!(rows.len(), STREAMS);
    for row in rows {
        assert_eq!(
            (
                row.input_tokens,
                row.output_tokens,
                row.usage_status.as_str()
            ),
            (7, 3, "reported")
        );
        assert_eq!(row.error, None);
    }
}
