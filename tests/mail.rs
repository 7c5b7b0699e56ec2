//! `meter::mail` against a real SMTP server (`tests/support/smtp_server.py`, aiosmtpd): plain,
//! plain with AUTH, STARTTLS with AUTH, implicit TLS; wrong passwords, servers down, servers
//! that do not offer STARTTLS, certificates not trusted; and what arrives, part by part.
#![allow(clippy::unwrap_used)]

#[path = "support/smtp.rs"]
mod smtp;

use std::time::Duration;

use meter::config::SmtpConfig;
use meter::mail::{Email, MailError, Mailer};
use serde_json::Value;
use smtp::{free_port, smtp_config, SmtpMode, SmtpOptions, SmtpServer, TestCerts};

const WAIT: Duration = Duration::from_secs(10);

fn email() -> Email {
    Email {
        to: vec![
            "ops@example.com".to_string(),
            "finance@example.org".to_string(),
        ],
        subject: "€ – budget \"prod\" at 80%".to_string(),
        text: "Budget prod: $80.00 of $100.00 (80%).\nTop agent: coder.\n".to_string(),
        html: "<p>Budget <b>prod</b>: $80.00 of $100.00 (80%).</p>\n<p>Top agent: coder.</p>\n"
            .to_string(),
    }
}

/// `config` with AUTH as `user`, the password in the environment variable `var` (unique to the
/// test: tests run in parallel in one process).
fn with_auth(mut config: SmtpConfig, user: &str, var: &str, password: &str) -> SmtpConfig {
    std::env::set_var(var, password);
    config.username = user.to_string();
    config.password_env = var.to_string();
    config
}

fn send_error(result: Result<(), MailError>) -> (String, String) {
    match result {
        Err(MailError::Send { server, reason }) => (server, reason),
        other => panic!("expected a send error, got {other:?}"),
    }
}

/// The one message the server received, checked against `email()` in full.
fn assert_delivered(message: &Value, tls: bool, auth_user: Option<&str>) {
    let sent = email();
    assert_eq!(message["mail_from"], "meter@example.com", "{message:#}");
    assert_eq!(
        message["rcpt_tos"],
        serde_json::json!(["ops@example.com", "finance@example.org"]),
        "{message:#}"
    );
    assert_eq!(message["subject"], sent.subject.as_str(), "{message:#}");
    assert_eq!(message["from"], "meter@example.com", "{message:#}");
    assert_eq!(
        message["to"], "ops@example.com, finance@example.org",
        "{message:#}"
    );
    assert_eq!(message["content_type"], "multipart/alternative");
    assert_eq!(
        message["parts"],
        serde_json::json!([
            {"content_type": "text/plain", "charset": "utf-8"},
            {"content_type": "text/html", "charset": "utf-8"},
        ]),
        "{message:#}"
    );
    assert_eq!(message["text"], sent.text.as_str(), "{message:#}");
    assert_eq!(message["html"], sent.html.as_str(), "{message:#}");
    assert_eq!(message["tls"], tls, "{message:#}");
    assert_eq!(
        message["auth_user"],
        serde_json::json!(auth_user),
        "{message:#}"
    );

    let date = message["date"].as_str().expect("a Date header");
    let date = chrono::DateTime::parse_from_rfc2822(date).unwrap();
    let skew = (chrono::Utc::now() - date.to_utc()).num_seconds().abs();
    assert!(skew < 300, "Date {date} is {skew} s off");
    let id = message["message_id"].as_str().expect("a Message-ID header");
    assert!(
        id.starts_with('<') && id.ends_with("@example.com>") && id.len() > 16,
        "{id}"
    );
}

#[tokio::test]
async fn plain_without_auth() {
    let server = SmtpServer::start(SmtpMode::Plain);
    let mailer = Mailer::new(&server.config()).unwrap();
    mailer.send(&email()).await.unwrap();
    let messages = server.wait_for_messages(1, WAIT);
    assert_eq!(messages.len(), 1);
    assert_delivered(&messages[0], false, None);
}

#[tokio::test]
async fn plain_with_auth() {
    let server =
        SmtpServer::start_with(SmtpOptions::new(SmtpMode::Plain).auth("alerts", "pl41n-pw"));
    let config = with_auth(
        server.config(),
        "alerts",
        "METER_TEST_MAIL_PLAIN_AUTH_PASSWORD",
        "pl41n-pw",
    );
    let mailer = Mailer::new(&config).unwrap();
    mailer.send(&email()).await.unwrap();
    let messages = server.wait_for_messages(1, WAIT);
    assert_eq!(messages.len(), 1);
    assert_delivered(&messages[0], false, Some("alerts"));
}

#[tokio::test]
async fn auth_is_required_by_the_server() {
    // The server insists on AUTH; a mailer without credentials is refused.
    let server =
        SmtpServer::start_with(SmtpOptions::new(SmtpMode::Plain).auth("alerts", "pw-1234"));
    let mailer = Mailer::new(&server.config()).unwrap();
    let (_, reason) = send_error(mailer.send(&email()).await);
    assert!(reason.contains("530"), "{reason}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn starttls_with_auth() {
    let server =
        SmtpServer::start_with(SmtpOptions::new(SmtpMode::StartTls).auth("alerts", "st4rt-pw"));
    let config = with_auth(
        server.config(),
        "alerts",
        "METER_TEST_MAIL_STARTTLS_PASSWORD",
        "st4rt-pw",
    );
    assert!(config.ca_file.is_some());
    let mailer = Mailer::new(&config).unwrap();
    mailer.send(&email()).await.unwrap();
    let messages = server.wait_for_messages(1, WAIT);
    assert_eq!(messages.len(), 1);
    assert_delivered(&messages[0], true, Some("alerts"));
}

#[tokio::test]
async fn implicit_tls() {
    let server = SmtpServer::start(SmtpMode::Tls);
    let mailer = Mailer::new(&server.config()).unwrap();
    mailer.send(&email()).await.unwrap();
    let messages = server.wait_for_messages(1, WAIT);
    assert_eq!(messages.len(), 1);
    assert_delivered(&messages[0], true, None);
}

#[tokio::test]
async fn implicit_tls_with_auth_by_host_name() {
    let server = SmtpServer::start_with(SmtpOptions::new(SmtpMode::Tls).auth("alerts", "tls-pw-9"));
    let mut config = with_auth(
        server.config(),
        "alerts",
        "METER_TEST_MAIL_TLS_AUTH_PASSWORD",
        "tls-pw-9",
    );
    // The certificate names localhost too.
    config.host = "localhost".to_string();
    let mailer = Mailer::new(&config).unwrap();
    mailer.send(&email()).await.unwrap();
    let messages = server.wait_for_messages(1, WAIT);
    assert_delivered(&messages[0], true, Some("alerts"));
}

#[tokio::test]
async fn wrong_password_is_a_send_error_without_the_password() {
    let server =
        SmtpServer::start_with(SmtpOptions::new(SmtpMode::StartTls).auth("alerts", "right-pw"));
    let config = with_auth(
        server.config(),
        "alerts",
        "METER_TEST_MAIL_WRONG_PASSWORD",
        "wr0ng-s3cret",
    );
    let mailer = Mailer::new(&config).unwrap();
    let err = mailer.send(&email()).await.unwrap_err();
    let shown = err.to_string();
    let (server_name, reason) = send_error(Err(err));
    assert_eq!(server_name, format!("127.0.0.1:{}", server.port()));
    assert!(reason.contains("535"), "{reason}");
    assert!(!shown.contains("wr0ng-s3cret"), "{shown}");
    assert!(!format!("{mailer:?}").contains("wr0ng-s3cret"));
    assert!(
        shown.starts_with(&format!("smtp 127.0.0.1:{}: ", server.port())),
        "{shown}"
    );
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn server_down_then_up() {
    let port = free_port();
    let mut config = smtp_config(port, SmtpMode::Plain, None);
    config.timeout = Duration::from_secs(5);
    let mailer = Mailer::new(&config).unwrap();

    let (server_name, reason) = send_error(mailer.send(&email()).await);
    assert_eq!(server_name, format!("127.0.0.1:{port}"));
    assert!(reason.to_lowercase().contains("refused"), "{reason}");

    // The same mailer delivers once the server is up on that port.
    let mut server = SmtpServer::start_on(port, SmtpMode::Plain, None);
    mailer.send(&email()).await.unwrap();
    let messages = server.wait_for_messages(1, WAIT);
    assert_delivered(&messages[0], false, None);

    // And fails again once it is gone.
    server.stop();
    assert!(!server.is_running());
    let (_, reason) = send_error(mailer.send(&email()).await);
    assert!(reason.to_lowercase().contains("refused"), "{reason}");
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn tls_server_down_then_up_with_a_ca_fixed_in_advance() {
    let certs = TestCerts::generate();
    let port = free_port();
    let config = smtp_config(port, SmtpMode::Tls, Some(&certs.ca_pem));
    let mailer = Mailer::new(&config).unwrap();
    send_error(mailer.send(&email()).await);

    let server = SmtpServer::start_with(SmtpOptions::new(SmtpMode::Tls).port(port).certs(&certs));
    mailer.send(&email()).await.unwrap();
    assert_delivered(&server.wait_for_messages(1, WAIT)[0], true, None);
}

#[tokio::test]
async fn a_silent_server_times_out() {
    // Accepts connections (the kernel's backlog) but never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut config = smtp_config(port, SmtpMode::Plain, None);
    config.timeout = Duration::from_secs(1);
    let mailer = Mailer::new(&config).unwrap();
    // A mailer that waited for ever would hang the suite: fail instead.
    let sent = tokio::time::timeout(Duration::from_secs(10), mailer.send(&email()))
        .await
        .expect("smtp.timeout_secs did not bound the send");
    let (_, reason) = send_error(sent);
    assert_eq!(reason, "timed out after 1 s (smtp.timeout_secs)");
    drop(listener);
}

#[tokio::test]
async fn starttls_never_falls_back_to_plain_text() {
    // A server that offers no STARTTLS: the mailer refuses to go on in plain text.
    let server =
        SmtpServer::start_with(SmtpOptions::new(SmtpMode::Plain).auth("alerts", "n0-tls-pw"));
    let mut config = with_auth(
        server.config(),
        "alerts",
        "METER_TEST_MAIL_NO_FALLBACK_PASSWORD",
        "n0-tls-pw",
    );
    config.tls = meter::config::SmtpTls::StartTls;
    let mailer = Mailer::new(&config).unwrap();
    let (_, reason) = send_error(mailer.send(&email()).await);
    assert!(reason.contains("STARTTLS"), "{reason}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn a_certificate_not_trusted_is_a_send_error() {
    // The server's CA is not in ca_file (nor among the system roots).
    let server = SmtpServer::start(SmtpMode::Tls);
    let other_ca = TestCerts::generate();
    let mut config = server.config();
    config.ca_file = Some(other_ca.ca_pem.clone());
    let mailer = Mailer::new(&config).unwrap();
    let (_, reason) = send_error(mailer.send(&email()).await);
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
    assert!(server.messages().is_empty());

    // And without ca_file at all, for STARTTLS too.
    let server = SmtpServer::start(SmtpMode::StartTls);
    let mut config = server.config();
    config.ca_file = None;
    let mailer = Mailer::new(&config).unwrap();
    let (_, reason) = send_error(mailer.send(&email()).await);
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn parts_and_headers_arrive_intact() {
    let server = SmtpServer::start(SmtpMode::StartTls);
    let mailer = Mailer::new(&server.config()).unwrap();
    let long = "Spend by agent: ".to_string() + &"coder €1.00, ".repeat(20);
    let email = Email {
        to: vec![
            "Ops Team <ops@example.com>".to_string(),
            "finance@example.org".to_string(),
        ],
        subject: "€ – budget “prod” reached 100% — ünïcödé, long enough to be folded over more than one header line"
            .to_string(),
        text: format!("Ligne 1: dépassé\n\n{long}\n.\n..leading dots\nlast line without newline"),
        html: format!(
            "<!doctype html>\n<html><body><h1>€ – budget</h1>\n<p>{long}</p>\n<p>.</p></body></html>\n"
        ),
    };
    mailer.send(&email).await.unwrap();
    mailer
        .send(&Email {
            to: vec!["second@example.com".to_string()],
            subject: "second".to_string(),
            text: "two".to_string(),
            html: "<p>two</p>".to_string(),
        })
        .await
        .unwrap();
    let messages = server.wait_for_messages(2, WAIT);
    assert_eq!(messages.len(), 2);
    let first = &messages[0];
    assert_eq!(first["subject"], email.subject.as_str(), "{first:#}");
    assert_eq!(
        first["to"], "Ops Team <ops@example.com>, finance@example.org",
        "{first:#}"
    );
    assert_eq!(
        first["rcpt_tos"],
        serde_json::json!(["ops@example.com", "finance@example.org"])
    );
    assert_eq!(first["text"], email.text.as_str(), "{first:#}");
    assert_eq!(first["html"], email.html.as_str(), "{first:#}");
    assert_eq!(first["tls"], true);
    // The wire form is 7-bit clean: encoded words and transfer encodings, no raw UTF-8.
    let raw = first["raw"].as_str().unwrap();
    assert!(raw.is_ascii(), "{raw}");
    assert!(raw.lines().all(|line| line.len() <= 998));

    let second = &messages[1];
    assert_eq!(second["subject"], "second");
    assert_eq!(
        second["rcpt_tos"],
        serde_json::json!(["second@example.com"])
    );
    assert_eq!(second["text"], "two");
    assert_eq!(second["html"], "<p>two</p>");
    assert_ne!(first["message_id"], second["message_id"]);
}

#[tokio::test]
async fn a_bad_recipient_is_a_config_error_and_nothing_is_sent() {
    let server = SmtpServer::start(SmtpMode::Plain);
    let mailer = Mailer::new(&server.config()).unwrap();
    let mut bad = email();
    bad.to.push("finance at example.org".to_string());
    match mailer.send(&bad).await {
        Err(MailError::Config(reason)) => {
            assert!(reason.contains("\"finance at example.org\""), "{reason}")
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    // The server saw nothing: give a stray delivery a moment to show up.
    std::thread::sleep(Duration::from_millis(200));
    assert!(server.messages().is_empty());
}

#[test]
fn from_toml_config_reaches_the_server() {
    // The helper's [smtp] table parses into the config the mailer is built from.
    let server = SmtpServer::start(SmtpMode::Tls);
    let config = meter::config::Config::from_toml(&server.toml(), "test.toml")
        .unwrap()
        .smtp;
    assert_eq!(config.port, server.port());
    assert_eq!(config.tls, meter::config::SmtpTls::Tls);
    assert_eq!(config.ca_file.as_deref(), server.ca_file());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(Mailer::new(&config).unwrap().send(&email()))
        .unwrap();
    assert_delivered(&server.wait_for_messages(1, WAIT)[0], true, None);
}
