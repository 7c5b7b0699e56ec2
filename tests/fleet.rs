//! Fleets on PostgreSQL (issue 10): meters sharing one ledger on a real PostgreSQL server that
//! the test starts (tests/support/postgres.rs), a fake provider, real SMTP for the alerts.
//! Each test prints what it measured (`cargo test --test fleet -- --nocapture`).
#![allow(clippy::unwrap_used)]

#[path = "support/smtp.rs"]
mod smtp;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use meter::clock::Clock;
use meter::ledger::db::{Db, Row, Store};
use smtp::{SmtpMode, SmtpServer};
use support::postgres::Postgres;
use support::{call_at, FakeProvider, FakeResponse, Instance, Received};

/// Every call costs $2.00: 1,000 output tokens at $2,000 per 1M.
const PRICES: &str = r#"
[[price]]
provider = "*"
model = "test-*"
effective = "2020-01-01"
input = 0.0
output = 2000.0
"#;

const CHAT: &str =
    r#"{"model":"test-model","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#;

fn answer(_: &Received) -> FakeResponse {
    FakeResponse::json(
        200,
        r#"{"id":"chatcmpl-1","object":"chat.completion","model":"test-model","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":1000,"total_tokens":2000}}"#,
    )
}

/// Runs `work` on a connection to the PostgreSQL ledger through meter's storage interface, on a
/// plain thread (the synchronous client must not run on the test's async threads).
fn on_postgres<T: Send + 'static>(
    url: &str,
    work: impl FnOnce(&mut Db) -> T + Send + 'static,
) -> T {
    let url = url.to_string();
    std::thread::spawn(move || {
        let pool = meter::ledger::db::postgres_pool(&url, 1, Duration::from_secs(5), None).unwrap();
        let store = Store::Postgres { pool, display: url };
        let mut db = store.open().unwrap();
        work(&mut db)
    })
    .join()
    .unwrap()
}

fn scalar(url: &str, sql: &'static str) -> i64 {
    on_postgres(url, move |db| {
        db.query_one(sql, &[])
            .unwrap()
            .get::<Option<i64>>(0)
            .unwrap()
            .unwrap_or(0)
    })
}

/// Waits (bounded) until `sql` returns `want`; returns how long it took.
async fn wait_scalar(url: &str, sql: &'static str, want: i64, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let url = url.to_string();
        let got = tokio::task::spawn_blocking(move || scalar(&url, sql))
            .await
            .unwrap();
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{sql}: {got}, not {want}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn store_toml(pg: &Postgres, dir: &Path, name: &str, extra: &str) -> String {
    format!(
        "url = {:?}\njournal = {:?}\nconnect_timeout_secs = 1\n{extra}",
        pg.url(),
        dir.join(format!("{name}-journal.db"))
    )
}

/// `calls` calls to `meter`, `concurrency` at a time; each must succeed.
async fn load(meter: &Instance, agent: &str, calls: usize, concurrency: usize) {
    let url = meter.url("/openai/v1/chat/completions");
    let mut done = 0;
    while done < calls {
        let batch = concurrency.min(calls - done);
        let handles: Vec<_> = (0..batch)
            .map(|_| tokio::spawn(call_at(url.clone(), agent.to_string(), CHAT.to_string())))
            .collect();
        for handle in handles {
            assert_eq!(handle.await.unwrap().0, 200);
        }
        done += batch;
    }
}

/// The harness itself: a server starts, answers, stops and starts again on its data.
#[test]
fn a_throwaway_postgres_starts_stops_and_restarts() {
    let pg = Postgres::start();
    let mut client = pg.client();
    client.batch_execute("CREATE TABLE t (n BIGINT)").unwrap();
    client.execute("INSERT INTO t VALUES (1)", &[]).unwrap();
    drop(client);
    pg.stop();
    assert!(
        postgres::Client::connect(
            &format!(
                "host=127.0.0.1 port={} user=meter dbname=meter connect_timeout=2",
                pg.port
            ),
            postgres::NoTls
        )
        .is_err(),
        "the server is down"
    );
    pg.start_server();
    let n: i64 = pg
        .client()
        .query_one("SELECT sum(n)::bigint FROM t", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// Three meters write one PostgreSQL ledger under concurrent load: every call is one row, the
/// rollup agrees, and a report read through the storage interface counts them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_meters_on_one_postgres_ledger_agree_with_the_calls_made() {
    let pg = Postgres::start();
    let url = pg.url();
    let upstream = FakeProvider::start(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::system();
    let mut meters = Vec::new();
    for name in ["a", "b", "c"] {
        meters.push(
            Instance::start_with_store(
                &dir.path().join(format!("{name}.db")),
                &store_toml(&pg, dir.path(), name, ""),
                &upstream.url(),
                PRICES,
                clock,
            )
            .await,
        );
    }
    const PER_METER: usize = 400;
    let started = Instant::now();
    let loads: Vec<_> = meters
        .iter()
        .enumerate()
        .map(|(i, meter)| load(meter, ["a", "b", "c"][i], PER_METER, 16))
        .collect();
    futures_join(loads).await;
    let total = (3 * PER_METER) as i64;
    wait_scalar(
        &url,
        "SELECT count(*) FROM usage",
        total,
        Duration::from_secs(30),
    )
    .await;
    let elapsed = started.elapsed();
    println!(
        "three meters: {total} calls in {:.2}s, {:.0} records/s into PostgreSQL (end to end, through the proxy)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    for meter in &mut meters {
        meter.stop().await;
    }
    assert_eq!(scalar(&url, "SELECT count(*) FROM usage"), total);
    assert_eq!(
        scalar(&url, "SELECT count(DISTINCT record_key) FROM usage"),
        total
    );
    assert_eq!(
        scalar(&url, "SELECT sum(requests) FROM usage_hourly"),
        total
    );
    assert_eq!(
        scalar(&url, "SELECT sum(cost_nanos) FROM usage_hourly"),
        total * 2_000_000_000
    );
    // Per agent (one per meter), through the same report code `meter report` runs.
    let report = on_postgres(&url, |db| {
        let now = chrono::Utc::now();
        let today = now.date_naive();
        let period = meter::report::Period::custom(
            today.pred_opt().unwrap(),
            today.succ_opt().unwrap(),
            chrono_tz::UTC,
        )
        .unwrap();
        meter::ledger::query::build_report(
            db,
            &period,
            &[meter::report::GroupBy::Agent],
            chrono_tz::UTC,
            now,
        )
        .unwrap()
        .to_json()
    });
    assert_eq!(report["totals"]["requests"], total);
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    for group in groups {
        assert_eq!(group["requests"], PER_METER as i64);
    }
}

/// `SELECT count(*) FROM usage` over TLS, trusting `ca` (the server takes nothing else).
fn count_over_tls(url: &str, ca: &Path) -> Result<i64, String> {
    let (url, ca) = (url.to_string(), ca.to_path_buf());
    std::thread::spawn(move || {
        let pool = meter::ledger::db::postgres_pool(&url, 1, Duration::from_secs(5), Some(&ca))
            .map_err(|err| err.to_string())?;
        let store = Store::Postgres { pool, display: url };
        let mut db = store.open().map_err(|err| err.to_string())?;
        let row = db
            .query_one("SELECT count(*) FROM usage", &[])
            .map_err(|err| err.to_string())?;
        Ok(row.get::<Option<i64>>(0).unwrap().unwrap_or(0))
    })
    .join()
    .unwrap()
}

/// A ledger that takes TLS connections only. With `sslmode=require` and the server's CA in
/// `store.ca_file`, meter's records land over TLS; a meter that does not trust that CA refuses
/// the server (never falls back to plain or unverified) and serves its clients all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_only_postgres_ledger_is_reached_over_verified_tls() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("pg-ca.pem");
    pg.require_tls(&ca);
    let url = format!("{}?sslmode=require", pg.url());
    // The server refuses plain connections, and meter refuses a server it cannot verify.
    let plain = format!("{}?sslmode=disable", pg.url());
    assert!(count_over_tls(&plain, &ca).is_err(), "a plain connection");
    assert_eq!(
        count_over_tls(&url, &ca),
        Ok(0),
        "over TLS, trusting its CA"
    );
    let other_ca = dir.path().join("other-ca.pem");
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    assert!(
        count_over_tls(&url, &other_ca).is_err(),
        "a certificate from another CA"
    );

    let upstream = FakeProvider::start(answer).await;
    let store = |name: &str, extra: &str| {
        format!(
            "url = {url:?}\njournal = {:?}\nconnect_timeout_secs = 1\n{extra}",
            dir.path().join(format!("{name}-journal.db"))
        )
    };
    let mut trusted = Instance::start_with_store(
        &dir.path().join("a.db"),
        &store("a", &format!("ca_file = {ca:?}")),
        &upstream.url(),
        PRICES,
        Clock::system(),
    )
    .await;
    load(&trusted, "a", 20, 4).await;
    let start = Instant::now();
    while count_over_tls(&url, &ca) != Ok(20) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "records over TLS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    trusted.stop().await;

    let mut untrusting = Instance::start_with_store(
        &dir.path().join("b.db"),
        &store("b", ""),
        &upstream.url(),
        PRICES,
        Clock::system(),
    )
    .await;
    load(&untrusting, "b", 10, 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count_over_tls(&url, &ca),
        Ok(20),
        "nothing lands unverified"
    );
    untrusting.stop().await;
}

/// PostgreSQL stopped in the middle of the load and started again: clients never notice,
/// records spill to the journal past the in-memory bound, and once it is back every call is
/// in the ledger exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_outage_loses_and_duplicates_nothing() {
    let pg = Postgres::start();
    let url = pg.url();
    let upstream = FakeProvider::start(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let mut meter = Instance::start_with_store(
        &dir.path().join("a.db"),
        &store_toml(&pg, dir.path(), "a", "queue_limit = 40"),
        &upstream.url(),
        PRICES,
        Clock::system(),
    )
    .await;
    load(&meter, "a", 100, 8).await;
    wait_scalar(
        &url,
        "SELECT count(*) FROM usage",
        100,
        Duration::from_secs(20),
    )
    .await;
    pg.stop();
    // Calls during the outage: answered as usual, and quickly.
    let started = Instant::now();
    load(&meter, "a", 200, 8).await;
    let during = started.elapsed();
    assert!(
        during < Duration::from_secs(20),
        "200 calls took {during:?} during the outage"
    );
    let spilled = meter
        .wait_sample("meter_ledger_journal_records", |v| v > 0.0)
        .await;
    println!("outage: 200 calls in {during:?}, {spilled} records in the journal");
    pg.start_server();
    load(&meter, "a", 50, 8).await;
    let caught_up = wait_scalar(
        &url,
        "SELECT count(*) FROM usage",
        350,
        Duration::from_secs(60),
    )
    .await;
    println!("outage: the ledger caught up {caught_up:?} after PostgreSQL returned");
    meter
        .wait_sample("meter_ledger_journal_records", |v| v == 0.0)
        .await;
    meter.stop().await;
    assert_eq!(scalar(&url, "SELECT count(*) FROM usage"), 350);
    assert_eq!(
        scalar(&url, "SELECT count(DISTINCT record_key) FROM usage"),
        350
    );
    assert_eq!(scalar(&url, "SELECT sum(requests) FROM usage_hourly"), 350);
    // The journal is empty once replayed.
    let journal = rusqlite::Connection::open(dir.path().join("a-journal.db")).unwrap();
    let left: i64 = journal
        .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0);
}

/// A threshold crossed by calls on three meters at once sends one email; and how long a
/// call on one meter takes to show in another meter's budget (the enforcement staleness).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_threshold_crossed_from_three_hosts_sends_one_email() {
    let pg = Postgres::start();
    let smtp = SmtpServer::start(SmtpMode::Plain);
    let upstream = FakeProvider::start(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{PRICES}\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"meter@example.com\"\ntimeout_secs = 5\nretry_min_secs = 1\nretry_max_secs = 2\n\n\
         [[budget]]\nname = \"fleet-monthly\"\nperiod = \"month\"\nlimit_usd = 1000.0\nalert_at = [0.01]\nnotify = [\"ops@example.com\"]\n",
        smtp.port()
    );
    let mut meters = Vec::new();
    for name in ["a", "b", "c"] {
        meters.push(
            Instance::start_with_store(
                &dir.path().join(format!("{name}.db")),
                &store_toml(&pg, dir.path(), name, ""),
                &upstream.url(),
                &extra,
                Clock::system(),
            )
            .await,
        );
    }
    // $10 crosses 1% of $1,000: 4 calls of $2 on each meter at once make $24.
    let loads: Vec<_> = meters
        .iter()
        .enumerate()
        .map(|(i, meter)| load(meter, ["a", "b", "c"][i], 4, 4))
        .collect();
    futures_join(loads).await;
    smtp.wait_for_messages(1, Duration::from_secs(20));
    // Every meter sees the crossing within a refresh; give the others time to send theirs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(
        scalar(
            &pg.url(),
            "SELECT count(*) FROM alert_outbox WHERE kind = 'threshold'"
        ),
        1
    );
    // Visibility: a call on meter a, seen in meter c's budget spend.
    let series = "meter_budget_spend_usd{budget=\"fleet-monthly\"}";
    let mut lags = Vec::new();
    for round in 0..3 {
        let before = meters[2].sample(series).await.unwrap();
        let started = Instant::now();
        load(&meters[round % 2], "a", 1, 1).await;
        meters[2].wait_sample(series, |v| v >= before + 1.99).await;
        lags.push(started.elapsed());
    }
    let worst = lags.iter().max().copied().unwrap_or_default();
    println!("budget visibility across hosts: {lags:?} (refresh_secs = 1, commit interval 100 ms)");
    // The stated bound: one commit interval plus one refresh, plus scheduling.
    assert!(
        worst < Duration::from_millis(100 + 1_000 + 1_500),
        "{lags:?}"
    );
    for meter in &mut meters {
        meter.stop().await;
    }
}

/// Like [`answer`], but the response names the model asked for: a model without a price then
/// stays unpriced (the ledger's `model` is what the response reports).
fn echo_model(request: &Received) -> FakeResponse {
    let asked: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
    let model = asked["model"].as_str().unwrap_or("test-model");
    FakeResponse::json(
        200,
        format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion","model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"hi"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":1000,"completion_tokens":1000,"total_tokens":2000}}}}"#
        ),
    )
}

/// A call to a model without a price: it costs the budget nothing, and an enforced budget
/// refuses it once spent (`unpriced = "allow"` only lets it through while under the limit), so
/// it tells whether a meter enforces without moving the spend.
const PROBE: &str =
    r#"{"model":"probe-unpriced","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#;

/// An enforced budget crossed by calls through three meters on one PostgreSQL ledger: the meter
/// that makes the crossing call refuses at once, the other two within the stated staleness
/// bound (one commit interval plus one `refresh_secs`), and paid calls never overspend it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enforced_budget_crossed_on_several_hosts_is_enforced_by_every_host() {
    let pg = Postgres::start();
    let url = pg.url();
    let upstream = FakeProvider::start(echo_model).await;
    let dir = tempfile::tempdir().unwrap();
    // $20 a month, enforced: ten calls of $2.
    let extra = format!(
        "{PRICES}\n[[budget]]\nname = \"fleet-cap\"\nperiod = \"month\"\nlimit_usd = 20.0\nenforce = true\n"
    );
    let mut meters = Vec::new();
    for name in ["a", "b", "c"] {
        meters.push(
            Instance::start_with_store(
                &dir.path().join(format!("{name}.db")),
                &store_toml(&pg, dir.path(), name, ""),
                &upstream.url(),
                &extra,
                Clock::system(),
            )
            .await,
        );
    }
    let chat = meters.iter().map(|m| m.url("/openai/v1/chat/completions"));
    let chat: Vec<String> = chat.collect();
    // $18 spread over the three hosts (3 calls each, at once): none has spent more than $6.
    let loads: Vec<_> = meters
        .iter()
        .enumerate()
        .map(|(i, meter)| load(meter, ["a", "b", "c"][i], 3, 3))
        .collect();
    futures_join(loads).await;
    // Every meter has read the others' calls and still lets calls through.
    let series = "meter_budget_spend_usd{budget=\"fleet-cap\"}";
    for (meter, url) in meters.iter().zip(&chat) {
        meter.wait_sample(series, |v| (v - 18.0).abs() < 1e-6).await;
        let (status, ..) = call_at(url.clone(), "probe".into(), PROBE.into()).await;
        assert_eq!(status, 200, "a meter under the limit refused");
    }
    // The crossing call, on a: $20 of $20. a refuses the next call at once.
    let (status, ..) = call_at(chat[0].clone(), "a".into(), CHAT.into()).await;
    assert_eq!(status, 200);
    let crossed = Instant::now();
    let (status, _, body) = call_at(chat[0].clone(), "a".into(), PROBE.into()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    // b and c: probed every 20 ms until they refuse.
    let mut lags = Vec::new();
    for url in &chat[1..] {
        loop {
            let (status, _, body) = call_at(url.clone(), "probe".into(), PROBE.into()).await;
            if status == 429 {
                assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
                lags.push(crossed.elapsed());
                break;
            }
            assert_eq!(status, 200);
            assert!(
                crossed.elapsed() < Duration::from_secs(10),
                "still admitting calls 10 s after the budget was spent"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "enforcement across hosts: b and c refuse {lags:?} after the crossing call on a (refresh_secs = 1, commit interval 100 ms)"
    );
    // The stated bound: one commit interval plus one refresh, plus scheduling.
    let worst = lags.iter().max().copied().unwrap_or_default();
    assert!(
        worst < Duration::from_millis(100 + 1_000 + 1_500),
        "{lags:?}"
    );
    // Paid calls are refused everywhere now, and the ledger never went over the limit.
    for url in &chat {
        let (status, ..) = call_at(url.clone(), "late".into(), CHAT.into()).await;
        assert_eq!(status, 429);
    }
    for meter in &mut meters {
        meter.stop().await;
    }
    assert_eq!(
        scalar(&url, "SELECT sum(cost_nanos) FROM usage"),
        20_000_000_000
    );
    assert_eq!(
        scalar(
            &url,
            "SELECT count(*) FROM usage WHERE blocked_by IS NOT NULL AND agent = 'late'"
        ),
        3
    );
}

/// A meter started while its PostgreSQL ledger is down serves at once: calls pass, records
/// queue and spill to the journal; when PostgreSQL comes up the meter creates the schema,
/// replays everything once, and its budget reads the ledger (another meter's calls included).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_meter_started_while_postgres_is_down_serves_and_catches_up() {
    let pg = Postgres::start();
    let url = pg.url();
    let upstream = FakeProvider::start(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{PRICES}\n[[budget]]\nname = \"fleet-monthly\"\nperiod = \"month\"\nlimit_usd = 1000.0\n"
    );
    // Another meter writes $20 first (and creates the schema): the late one must see it.
    let mut other = Instance::start_with_store(
        &dir.path().join("b.db"),
        &store_toml(&pg, dir.path(), "b", ""),
        &upstream.url(),
        &extra,
        Clock::system(),
    )
    .await;
    load(&other, "b", 10, 4).await;
    wait_scalar(
        &url,
        "SELECT count(*) FROM usage",
        10,
        Duration::from_secs(20),
    )
    .await;
    other.stop().await;
    pg.stop();
    let started = Instant::now();
    let mut meter = Instance::start_with_store(
        &dir.path().join("a.db"),
        &store_toml(&pg, dir.path(), "a", "queue_limit = 20"),
        &upstream.url(),
        &extra,
        Clock::system(),
    )
    .await;
    load(&meter, "a", 60, 4).await;
    let served = started.elapsed();
    assert!(served < Duration::from_secs(20), "60 calls took {served:?}");
    let spilled = meter
        .wait_sample("meter_ledger_journal_records", |v| v > 0.0)
        .await;
    println!(
        "started with PostgreSQL down: 60 calls served in {served:?}, {spilled} records in the journal"
    );
    pg.start_server();
    wait_scalar(
        &url,
        "SELECT count(*) FROM usage",
        70,
        Duration::from_secs(60),
    )
    .await;
    meter
        .wait_sample("meter_ledger_journal_records", |v| v == 0.0)
        .await;
    // The fleet's spend: 70 calls of $2.
    let series = "meter_budget_spend_usd{budget=\"fleet-monthly\"}";
    meter
        .wait_sample(series, |v| (v - 140.0).abs() < 1e-6)
        .await;
    meter.stop().await;
    assert_eq!(scalar(&url, "SELECT count(*) FROM usage"), 70);
    assert_eq!(
        scalar(&url, "SELECT count(DISTINCT record_key) FROM usage"),
        70
    );
    assert_eq!(scalar(&url, "SELECT sum(requests) FROM usage_hourly"), 70);
}

/// `meter ledger migrate --to` copies a SQLite ledger row for row, and a second run copies
/// nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_from_sqlite_matches_row_for_row() {
    let pg = Postgres::start();
    let upstream = FakeProvider::start(answer).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("meter.db");
    let mut meter = Instance::start(&db, &upstream.url(), PRICES, Clock::system()).await;
    load(&meter, "coder", 30, 4).await;
    meter.stop().await;
    // A row inserted by hand, as a history import would.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO usage (ts, agent, provider, route, model, status, cost_usd, tags)
             VALUES ('2026-01-01T00:00:00.000Z', 'import', 'openai', 'direct', 'gpt-4o', 200, 0.25, '{\"k\":\"v\"}')",
            [],
        )
        .unwrap();
    let migrate = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_meter"))
            .arg("--db")
            .arg(&db)
            .args(["ledger", "migrate", "--to", &pg.url()])
            .env_remove("METER_CONFIG")
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = migrate();
    assert!(
        first.contains("31 rows read") && first.contains("31 copied"),
        "{first}"
    );
    let second = migrate();
    assert!(second.contains("0 copied"), "{second}");
    let columns: Vec<&str> = meter::ledger::postgres::COLUMNS
        .iter()
        .copied()
        .filter(|c| *c != "record_key")
        .collect();
    let select = format!(
        "SELECT {} FROM usage ORDER BY ts, request_id, agent",
        columns.join(", ")
    );
    let mut sqlite = Db::Sqlite(rusqlite::Connection::open(&db).unwrap());
    // Rows with equal sort keys come back in any order: compare them sorted whole.
    let sorted = |rows: Vec<Row>| {
        let mut rows: Vec<String> = rows.iter().map(|r| format!("{:?}", r.values())).collect();
        rows.sort();
        rows
    };
    let from_sqlite = sorted(sqlite.query(&select, &[]).unwrap());
    let from_postgres = sorted(on_postgres(&pg.url(), move |db| {
        db.query(&select, &[]).unwrap()
    }));
    assert_eq!(from_sqlite.len(), 31);
    assert_eq!(from_postgres.len(), 31);
    for (a, b) in from_sqlite.iter().zip(&from_postgres) {
        assert_eq!(a, b);
    }
    // The rollup on PostgreSQL was kept by its triggers for the copied rows.
    let rollup = "SELECT sum(requests) FROM usage_hourly";
    assert_eq!(scalar(&pg.url(), rollup), 31);
}

/// Runs the futures at once on this task.
async fn futures_join<F: std::future::Future<Output = ()>>(futures: Vec<F>) {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        pinned.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pinned.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// Runs the real `meter` binary in `dir` (no `METER_CONFIG`); its stdout, after it succeeded.
fn meter_cli(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meter"))
        .args(args)
        .env_remove("METER_CONFIG")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "meter {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `meter review`, `meter prices check`, `meter reprice` and `meter report` through the real
/// binary on a PostgreSQL ledger print what they print on the SQLite ledger it was migrated
/// from, and reprice changes both alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn review_prices_check_and_reprice_on_postgres_match_sqlite() {
    let pg = Postgres::start();
    let upstream = FakeProvider::start(echo_model).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("meter.db");
    let providers = format!(
        "[[provider]]\nname = \"openrouter\"\nupstream = \"{}\"\nmarkup = 0.05\n",
        upstream.url()
    );
    let mut meter = Instance::start(
        &db,
        &upstream.url(),
        &format!("{PRICES}\n{providers}"),
        Clock::system(),
    )
    .await;
    for (path, agent, model, n) in [
        ("/openai/v1/chat/completions", "coder", "test-model", 5),
        ("/openrouter/v1/chat/completions", "coder", "test-model", 3),
        ("/openrouter/v1/chat/completions", "writer", "test-mini", 2),
        ("/openai/v1/chat/completions", "writer", "mystery-1", 2),
        ("/anthropic/v1/chat/completions", "writer", "unknown-2", 1),
    ] {
        let body = format!(
            r#"{{"model":"{model}","max_tokens":1000,"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        for _ in 0..n {
            let (status, ..) = meter.call(path, agent, &body).await;
            assert_eq!(status, 200);
        }
    }
    meter.stop().await;
    let db_arg = db.to_str().unwrap();
    let migrated = meter_cli(
        dir.path(),
        &["--db", db_arg, "ledger", "migrate", "--to", &pg.url()],
    );
    assert!(migrated.contains("13 copied"), "{migrated}");
    // One config per backend, the same prices and providers.
    let write_configs = |prices: &str| {
        let budget = "[[budget]]\nname = \"coder-month\"\nperiod = \"month\"\nlimit_usd = 100.0\nagent = \"coder\"\n";
        let common = format!("{prices}\n{providers}\n{budget}");
        std::fs::write(
            dir.path().join("sqlite.toml"),
            format!("[store]\npath = {db:?}\n\n{common}"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("pg.toml"),
            format!(
                "[store]\nurl = {:?}\njournal = {:?}\n\n{common}",
                pg.url(),
                dir.path().join("cli-journal.db")
            ),
        )
        .unwrap();
    };
    write_configs(PRICES);
    let run = |config: &str, args: &[&str]| {
        let mut all = vec!["--config", config];
        all.extend_from_slice(args);
        meter_cli(dir.path(), &all)
    };
    // Output is compared whole, but for how long a command took ("... in 0.1s").
    let untimed = |text: String| -> String {
        text.lines()
            .map(|line| match line.rsplit_once(" in ") {
                Some((head, tail))
                    if tail
                        .strip_suffix('s')
                        .is_some_and(|t| t.parse::<f64>().is_ok()) =>
                {
                    format!("{head}\n")
                }
                _ => format!("{line}\n"),
            })
            .collect()
    };
    let both = |args: &[&str]| {
        let (sqlite, postgres) = (
            untimed(run("sqlite.toml", args)),
            untimed(run("pg.toml", args)),
        );
        assert_eq!(
            sqlite, postgres,
            "meter {args:?}: SQLite and PostgreSQL differ"
        );
        sqlite
    };
    let today = chrono::Utc::now().date_naive();
    let since = today.pred_opt().unwrap().to_string();
    let until = today.succ_opt().unwrap().to_string();
    // The report, on both: the same but for the forecast, which projects to the instant each
    // command ran.
    let report = |label: &str| -> serde_json::Value {
        let args = [
            "report",
            "--since",
            &since,
            "--until",
            &until,
            "--by",
            "agent,provider,model",
            "--format",
            "json",
        ];
        let parse = |config: &str| {
            let text = run(config, &args);
            let mut json: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{label}: {e}: {text}"));
            assert!(json["forecast_usd"].as_f64().is_some(), "{text}");
            json["forecast_usd"] = serde_json::Value::Null;
            json
        };
        let sqlite = parse("sqlite.toml");
        assert_eq!(
            sqlite,
            parse("pg.toml"),
            "{label}: SQLite and PostgreSQL differ"
        );
        sqlite
    };
    let before = report("before");
    assert_eq!(before["totals"]["requests"], 13);
    // `meter budget status`: the same spend on both, but for what depends on the instant.
    let status = |config: &str| -> serde_json::Value {
        let text = run(config, &["budget", "status", "--format", "json"]);
        let mut json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        for budget in json["budgets"].as_array_mut().unwrap() {
            for key in ["forecast_usd", "elapsed_fraction"] {
                budget[key] = serde_json::Value::Null;
            }
        }
        json
    };
    let budgets = status("sqlite.toml");
    assert_eq!(budgets, status("pg.toml"), "budget status differs");
    // The coder's calls: 5 direct at $2.00, 3 through the router at $2.10 (5% markup).
    let spend = budgets["budgets"][0]["spend_usd"].as_f64().unwrap();
    assert!((spend - 16.3).abs() < 1e-9, "{budgets}");
    assert_eq!(before["totals"]["unpriced_requests"], 3);
    // The review (every format) and the unpriced models.
    for format in ["json", "table", "markdown", "csv"] {
        let review = both(&["review", "--format", format]);
        assert!(!review.trim().is_empty());
    }
    let review: serde_json::Value =
        serde_json::from_str(&both(&["review", "--format", "json"])).unwrap();
    // It rests on the whole ledger: the router's traffic, its markup, the unpriced models.
    assert_eq!(review["calls"], 13, "{review}");
    assert_eq!(review["spend_by_route"]["router"], 10.5, "{review}");
    let findings = review["findings"].as_array().unwrap();
    let markup: f64 = findings
        .iter()
        .filter(|f| f["kind"] == "router_markup")
        .map(|f| f["usd"].as_f64().unwrap())
        .sum();
    assert!((markup - 0.5).abs() < 1e-9, "{review}");
    assert_eq!(
        findings
            .iter()
            .filter(|f| f["kind"] == "unread_or_unpriced")
            .count(),
        2,
        "{review}"
    );
    let check = both(&["prices", "check"]);
    assert!(
        check.contains("mystery-1") && check.contains("unknown-2"),
        "{check}"
    );
    // New prices: output at $3,000 per 1M instead of $2,000. A dry run changes nothing.
    write_configs(&PRICES.replace("output = 2000.0", "output = 3000.0"));
    let dry = both(&["reprice", "--since", "2020-01-01", "--dry-run"]);
    assert!(!dry.trim().is_empty());
    assert_eq!(report("dry run")["totals"], before["totals"]);
    let repriced = both(&["reprice", "--since", "2020-01-01"]);
    assert!(!repriced.trim().is_empty());
    let after = report("after");
    let cost = |r: &serde_json::Value| r["totals"]["cost_usd"].as_f64().unwrap();
    assert!(cost(&before) > 0.0);
    // Every priced call's cost is its output at the output price (input is free): x1.5.
    assert!(
        (cost(&after) - cost(&before) * 1.5).abs() < 1e-6,
        "{} then {}",
        cost(&before),
        cost(&after)
    );
    // And the rows agree, row for row, on both backends.
    let select = "SELECT agent, provider, model, cost_nanos, table_cost_nanos, price_id FROM usage ORDER BY id";
    let mut sqlite = Db::Sqlite(rusqlite::Connection::open(&db).unwrap());
    let from_sqlite: Vec<String> = sqlite
        .query(select, &[])
        .unwrap()
        .iter()
        .map(|r| format!("{:?}", r.values()))
        .collect();
    let from_postgres: Vec<String> = on_postgres(&pg.url(), move |db| {
        db.query(select, &[])
            .unwrap()
            .iter()
            .map(|r| format!("{:?}", r.values()))
            .collect()
    });
    assert_eq!(from_sqlite.len(), 13);
    assert_eq!(from_sqlite, from_postgres);
}

/// A start-up error with a PostgreSQL ledger configured (here forward-proxy mode without its
/// CA) is reported in a line that says what to do, and meter exits without a panic.
#[test]
fn a_startup_error_with_a_postgres_ledger_exits_cleanly() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meter.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\n\
             [store]\n{}\n\n[proxy.forward]\nenabled = true\nca_dir = {:?}\n",
            store_toml(&pg, dir.path(), "a", ""),
            dir.path().join("no-ca")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meter"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("meter ca init"), "{stderr}");
}
