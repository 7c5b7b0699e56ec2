//! The shipped dashboards and alert rules against a real Prometheus (Debian's `prometheus`)
//! scraping a real meter: traffic of every kind goes through meter, Prometheus scrapes it, and
//! every PromQL expression in every dashboard panel and every alert rule is evaluated over the
//! HTTP API: each must parse, and each panel must return data. Then a fleet: three meters on one
//! PostgreSQL ledger (tests/support/postgres.rs), where the panels must count each call and
//! each budget once.
#![allow(clippy::unwrap_used)]

#[path = "support/smtp.rs"]
mod smtp;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use meter::clock::Clock;
use serde_json::Value;
use support::{FakeProvider, FakeResponse, Instance, Received};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Answers like OpenAI; `no-usage-*` models answer without usage (meter estimates it),
/// `fail-*` models with a 500.
fn answer(request: &Received) -> FakeResponse {
    let asked: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let model = asked["model"].as_str().unwrap_or("m-1").to_string();
    if model.starts_with("fail-") {
        return FakeResponse::json(500, r#"{"error":{"message":"boom","type":"server_error"}}"#);
    }
    let usage = if model.starts_with("no-usage-") {
        String::new()
    } else {
        r#","usage":{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500,"prompt_tokens_details":{"cached_tokens":200}}"#.to_string()
    };
    FakeResponse::json(
        200,
        format!(
            r#"{{"id":"c","object":"chat.completion","model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"hello there"}},"finish_reason":"stop"}}]{usage}}}"#
        ),
    )
}

/// Prometheus on a free loopback port, scraping `target` every second; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[std::net::SocketAddr]) -> Prometheus {
        let targets = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let binary = which("prometheus").unwrap_or_else(|| {
            panic!(
                "prometheus is not installed: install Debian's `prometheus` package (.ci/run does)"
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let rules: Vec<String> = std::fs::read_dir(repo("alerts"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                name.ends_with(".yml") && !name.contains(".test.")
            })
            .map(|p| format!("  - {:?}", p.display().to_string()))
            .collect();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\nscrape_configs:\n  - job_name: meter\n    static_configs:\n      - targets: [{targets}]\n",
                rules.join("\n")
            ),
        )
        .unwrap();
        let port = smtp::free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        prometheus.wait_ready();
        prometheus
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if get(&format!("{}/-/ready", self.url)).is_some_and(|(status, _)| status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("prometheus did not get ready in 30 s");
    }

    /// `/api/v1/query?query=...`: the JSON answer.
    fn query(&self, expr: &str) -> Value {
        let url = format!("{}/api/v1/query?query={}", self.url, encode(expr));
        let (_, body) = get(&url).unwrap();
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// A blocking GET on loopback with a plain HTTP/1.1 request: (status, body).
fn get(url: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_at(rest.find('/')?);
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Grafana's variables as a dashboard query would see them with "All" selected; a fallback to
/// zero (`or vector(0)`) on meter's metrics is taken off, so that "returns data" means meter's
/// metrics did (a count of instances down is rightly empty without it).
fn substitute(expr: &str) -> String {
    let mut out = if expr.contains("meter_") {
        expr.replace(" or on() vector(0)", "")
            .replace(" or vector(0)", "")
    } else {
        expr.to_string()
    };
    for (var, value) in [
        ("$__rate_interval", "30s"),
        ("${__rate_interval}", "30s"),
        ("$__interval", "5s"),
        ("${__interval}", "5s"),
        ("$__range", "1h"),
        ("${__range}", "1h"),
    ] {
        out = out.replace(var, value);
    }
    // Every other variable (`$agent`, `${provider}`, ...) is a multi-value "All": `.*`.
    let mut result = String::new();
    let mut chars = out.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            result.push(c);
            continue;
        }
        if chars.peek() == Some(&'{') {
            chars.next();
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
            }
        } else {
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
            {
                chars.next();
            }
        }
        result.push_str(".*");
    }
    result
}

/// The `meter_*` metric names in a text, histogram suffixes taken off.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("meter_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if boundary {
            let mut name = &text[start..end];
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    if base.ends_with("_seconds") {
                        name = base;
                    }
                }
            }
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        i = end.max(start + 1);
    }
    names
}

/// Every panel (rows included) of a dashboard: (title, exprs).
fn panels(dashboard: &Value) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = stack.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested.iter());
        }
        if panel["type"] == "row" {
            continue;
        }
        let exprs: Vec<String> = panel["targets"]
            .as_array()
            .map(|targets| {
                targets
                    .iter()
                    .filter(|t| t["hide"] != true)
                    .filter_map(|t| t["expr"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        out.push((panel["title"].as_str().unwrap_or("").to_string(), exprs));
    }
    out
}

/// The alert rules' (name, expr), read from the YAML with Python's yaml (the tests' only
/// YAML reader).
fn rules() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo("alerts")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".yml") || name.contains(".test.") {
            continue;
        }
        let output = Command::new("python3")
            .args([
                "-c",
                "import yaml,json,sys; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
        for group in doc["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                let name = rule["alert"]
                    .as_str()
                    .or(rule["record"].as_str())
                    .unwrap()
                    .to_string();
                out.push((name, rule["expr"].as_str().unwrap().to_string()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_panel_and_alert_rule_works_against_real_prometheus() {
    let smtp = smtp::SmtpServer::start(smtp::SmtpMode::Plain);
    let upstream = FakeProvider::start(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[provider]]\nname = \"openrouter\"\nupstream = \"{}\"\nmarkup = 0.055\n\n\
         [[price]]\nprovider = \"*\"\nmodel = \"m-*\"\neffective = \"2020-01-01\"\ninput = 2.0\noutput = 8.0\ncache_read = 0.5\n\n\
         [[price]]\nprovider = \"*\"\nmodel = \"no-usage-*\"\neffective = \"2020-01-01\"\ninput = 2.0\noutput = 8.0\n\n\
         [smtp]\nhost = \"127.0.0.1\"\nport = {}\nfrom = \"meter@example.com\"\n\n\
         [[budget]]\nname = \"team-monthly\"\nperiod = \"month\"\nlimit_usd = 0.01\nalert_at = [0.5]\nforecast_alert = true\nforecast_min_elapsed = 0.0\nnotify = [\"ops@example.com\"]\n\n\
         [[budget]]\nname = \"capped\"\nperiod = \"day\"\nlimit_usd = 0.000001\nagent = \"capped\"\nenforce = true\n",
        upstream.url(),
        smtp.port(),
    );
    // Two meters (two agent hosts, a ledger each) scraped by one Prometheus.
    let clock = Clock::starting_at(Utc::now());
    let mut meter = Instance::start(&dir.path().join("a.db"), &upstream.url(), &extra, clock).await;
    let mut other = Instance::start(&dir.path().join("b.db"), &upstream.url(), &extra, clock).await;
    let prometheus = Prometheus::start(&[meter.metrics, other.metrics]);
    // Traffic of every kind on the first, spread over a few scrapes; plain calls on the second.
    for round in 0..4 {
        for _ in 0..=round {
            other
                .call(
                    "/openai/v1/chat/completions",
                    "coder",
                    r#"{"model":"m-1","messages":[{"role":"user","content":"hi"}]}"#,
                )
                .await;
        }
        for (path, agent, model) in [
            ("/openai/v1/chat/completions", "coder", "m-1"),
            ("/openai/v1/chat/completions", "writer", "m-2"),
            ("/openrouter/v1/chat/completions", "coder", "m-1"),
            ("/openai/v1/chat/completions", "coder", "fail-1"),
            ("/openai/v1/chat/completions", "writer", "no-usage-1"),
            ("/openai/v1/chat/completions", "writer", "mystery-1"),
            ("/openai/v1/chat/completions", "capped", "m-1"),
            ("/ollama/v1/chat/completions", "coder", "llama3"),
        ] {
            let body = format!(
                r#"{{"model":"{model}","max_tokens":500,"messages":[{{"role":"user","content":"hello number {round}"}}]}}"#
            );
            meter.call(path, agent, &body).await;
        }
        tokio::time::sleep(Duration::from_millis(1_200)).await;
    }
    meter
        .wait_sample("meter_alerts_sent_total{kind=\"threshold\"}", |v| v >= 1.0)
        .await;
    // Enough scrapes after the last call for rates over 30 s windows.
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Queries add up both instances: coder's m-1 calls on openai, one a round (4) on the first
    // meter and 1 + 2 + 3 + 4 (10) on the second.
    let answer = prometheus.query(
        r#"sum(meter_requests_total{agent="coder",model="m-1",provider="openai",status="2xx"})"#,
    );
    assert_eq!(answer["data"]["result"][0]["value"][1], "14", "{answer}");
    let answer = prometheus.query(r#"count(up{job="meter"} == 1)"#);
    assert_eq!(answer["data"]["result"][0]["value"][1], "2", "{answer}");

    // The rules load in Prometheus, and each rule's expression parses.
    let (_, body) = get(&format!("{}/api/v1/rules", prometheus.url)).unwrap();
    let loaded: Value = serde_json::from_str(&body).unwrap();
    let groups = loaded["data"]["groups"].as_array().unwrap();
    assert!(!groups.is_empty(), "no rule group loaded: {body}");
    for group in groups {
        for rule in group["rules"].as_array().unwrap() {
            assert_ne!(rule["health"], "err", "{rule}");
        }
    }
    let rules = rules();
    assert!(!rules.is_empty());
    // No rule or panel names a metric meter does not export.
    let exported = meter.metrics_text().await;
    let mut texts: Vec<String> = rules.iter().map(|(_, expr)| expr.clone()).collect();
    for entry in std::fs::read_dir(repo("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            texts.push(std::fs::read_to_string(&path).unwrap());
        }
    }
    for text in &texts {
        for name in metric_names(text) {
            assert!(
                exported.contains(&format!("# TYPE {name} ")),
                "{name} is not exported by meter"
            );
        }
    }
    for (name, expr) in &rules {
        let answer = prometheus.query(expr);
        assert_eq!(answer["status"], "success", "rule {name}: {expr}\n{answer}");
    }

    // Every panel's every query parses and returns data.
    let mut checked = 0;
    let mut empty = Vec::new();
    for entry in std::fs::read_dir(repo("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (title, exprs) in panels(&dashboard) {
            assert!(
                !exprs.is_empty(),
                "{}: panel {title:?} has no query",
                path.display()
            );
            for expr in exprs {
                let query = substitute(&expr);
                let answer = prometheus.query(&query);
                assert_eq!(
                    answer["status"],
                    "success",
                    "{}: panel {title:?}: {query}\n{answer}",
                    path.display()
                );
                let result = &answer["data"]["result"];
                let has_data = match answer["data"]["resultType"].as_str() {
                    Some("vector") | Some("matrix") => {
                        result.as_array().is_some_and(|r| !r.is_empty())
                    }
                    _ => !result.is_null(),
                };
                if !has_data {
                    empty.push(format!("{}: {title:?}: {query}", path.display()));
                }
                checked += 1;
            }
        }
    }
    eprintln!(
        "{checked} panel queries and {} alert rules evaluated",
        rules.len()
    );
    assert!(checked >= 20, "only {checked} panel queries found");
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );
    meter.stop().await;
    other.stop().await;
}

/// Every dashboard panel's queries (substituted as Grafana would with "All" selected).
fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (title, exprs) in panels(&dashboard) {
            for expr in exprs {
                out.push((title.clone(), substitute(&expr)));
            }
        }
    }
    out
}

/// An instant query's samples: (labels, value).
fn samples(prometheus: &Prometheus, expr: &str) -> Vec<(Value, f64)> {
    let answer = prometheus.query(expr);
    assert_eq!(answer["status"], "success", "{expr}\n{answer}");
    answer["data"]["result"]
        .as_array()
        .map(|result| {
            result
                .iter()
                .map(|s| {
                    let value = s["value"][1].as_str().unwrap().parse::<f64>().unwrap();
                    (s["metric"].clone(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (bounded) until `expr`'s one sample is `want`.
fn wait_value(prometheus: &Prometheus, expr: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = samples(prometheus, expr);
        if got.len() == 1 && (got[0].1 - want).abs() <= want.abs() * 1e-9 {
            return;
        }
        assert!(Instant::now() < deadline, "{expr}: {got:?}, not {want}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Three meters on one PostgreSQL ledger, scraped by one Prometheus, as a fleet is: summing the
/// instances' counters counts each call once (each meter counts only its own calls), every
/// budget panel shows the ledger's figure once (not once per meter), and `meter_instance_info`
/// names each scrape target by its `server.instance`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_on_one_postgres_ledger_is_counted_once() {
    let pg = support::postgres::Postgres::start();
    let upstream = FakeProvider::start(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[[price]]\nprovider = \"*\"\nmodel = \"m-*\"\neffective = \"2020-01-01\"\ninput = 2.0\noutput = 8.0\ncache_read = 0.5\n\n\
                 [[budget]]\nname = \"fleet\"\nperiod = \"month\"\nlimit_usd = 1000.0\n";
    let names = ["host-a", "host-b", "host-c"];
    let mut meters = Vec::new();
    for name in names {
        let store = format!(
            "url = {:?}\njournal = {:?}",
            pg.url(),
            dir.path().join(format!("{name}-journal.db"))
        );
        meters.push(
            Instance::start_configured(
                &dir.path().join(format!("{name}.db")),
                &format!("instance = {name:?}"),
                &store,
                &upstream.url(),
                extra,
                Clock::system(),
            )
            .await,
        );
    }
    let targets: Vec<_> = meters.iter().map(|m| m.metrics).collect();
    let prometheus = Prometheus::start(&targets);
    // 2, 3 and 4 calls; two models so that there are several series per instance.
    let calls = [2usize, 3, 4];
    for (meter, n) in meters.iter().zip(calls) {
        for i in 0..n {
            let model = if i % 2 == 0 { "m-1" } else { "m-2" };
            let body =
                format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
            let (status, ..) = meter
                .call("/openai/v1/chat/completions", "coder", &body)
                .await;
            assert_eq!(status, 200);
        }
    }
    let total: usize = calls.iter().sum();
    // What the shared ledger holds.
    let (rows, cost_nanos) = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = pg.url();
            let (rows, cost): (i64, i64) = tokio::task::spawn_blocking(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                let row = client
                    .query_one(
                        "SELECT count(*), coalesce(sum(cost_nanos), 0)::bigint FROM usage",
                        &[],
                    )
                    .unwrap();
                (row.get(0), row.get(1))
            })
            .await
            .unwrap();
            if rows == total as i64 {
                break (rows, cost);
            }
            assert!(Instant::now() < deadline, "{rows} rows, not {total}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let spend = cost_nanos as f64 / 1e9;
    assert!(spend > 0.0);
    // Counters: the sum over instances is the ledger's count and cost.
    wait_value(&prometheus, "sum(meter_requests_total)", rows as f64);
    wait_value(&prometheus, "sum(meter_cost_usd_total)", spend);
    // Budget gauges: every meter reports the fleet's spend, read from the shared ledger.
    wait_value(
        &prometheus,
        r#"min(meter_budget_spend_usd{budget="fleet"})"#,
        spend,
    );
    wait_value(
        &prometheus,
        r#"count(meter_budget_spend_usd{budget="fleet"})"#,
        3.0,
    );
    // Each instance by its name: its own calls.
    let per_instance = samples(
        &prometheus,
        "sum by (instance_id, ledger) (meter_requests_total * on (job, instance) group_left (instance_id, ledger) meter_instance_info)",
    );
    let mut seen: Vec<(String, String, f64)> = per_instance
        .iter()
        .map(|(labels, v)| {
            (
                labels["instance_id"].as_str().unwrap().to_string(),
                labels["ledger"].as_str().unwrap().to_string(),
                *v,
            )
        })
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let want: Vec<(String, String, f64)> = names
        .iter()
        .zip(calls)
        .map(|(n, c)| (n.to_string(), "postgres".to_string(), c as f64))
        .collect();
    assert_eq!(seen, want);
    // Every dashboard query on the budget gauges shows the ledger's spend (or its share of the
    // limit) once; summing the instances would show three times it.
    let mut budget_queries = 0;
    for (title, query) in dashboard_queries() {
        if !query.contains("meter_budget_spend_usd") {
            continue;
        }
        budget_queries += 1;
        let result = samples(&prometheus, &query);
        let fleet: Vec<f64> = result
            .iter()
            .filter(|(labels, _)| labels["budget"] == "fleet")
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(fleet.len(), 1, "{title}: {query}: {result:?}");
        let ok = [spend, spend / 1000.0]
            .iter()
            .any(|want| (fleet[0] - want).abs() <= want * 1e-9);
        assert!(ok, "{title}: {query}: {} (the ledger: {spend})", fleet[0]);
    }
    assert!(budget_queries >= 3, "{budget_queries} budget queries");
    // Every per-instance panel names the three meters by their server.instance.
    let mut instance_queries = 0;
    for (title, query) in dashboard_queries() {
        if !query.contains("meter_instance_info") {
            continue;
        }
        instance_queries += 1;
        // Rates need two scrapes of every target: wait for them (bounded).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut ids: Vec<String> = samples(&prometheus, &query)
                .iter()
                .map(|(labels, _)| labels["instance_id"].as_str().unwrap_or("").to_string())
                .collect();
            ids.sort();
            if ids == names {
                break;
            }
            assert!(Instant::now() < deadline, "{title}: {query}: {ids:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(instance_queries >= 3, "{instance_queries} instance queries");
    drop(prometheus);
    for meter in &mut meters {
        meter.stop().await;
    }
}
