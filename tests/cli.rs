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
