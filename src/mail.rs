//! Sending email over SMTP with lettre: plain, STARTTLS or implicit TLS, with or without
//! authentication (the password comes from the environment). Used by the alerter and
//! `meter alert test`; knows nothing about budgets.
//!
//! Everything that can be checked without the server is checked by [`Mailer::new`]: the
//! `from` address, the password's environment variable, the `ca_file` certificates. A send
//! opens one connection (`tls = "starttls"` never falls back to plain text), delivers one
//! `multipart/alternative` message (text/plain, then text/html) and closes it, all within
//! `smtp.timeout_secs`; retrying is the caller's business. No error or log line carries the
//! password.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::config::{SmtpConfig, SmtpTls};

/// One email: recipients, subject, and a plain-text and an HTML version of the same content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Meter's side is wrong (a setting, the environment, an address): retrying will not help.
    #[error("smtp: {0}")]
    Config(String),
    /// The server could not be reached or refused the email (`server` is `host:port`;
    /// `reason` is lettre's error with its causes on one line).
    #[error("smtp {server}: {reason}")]
    Send { server: String, reason: String },
}

/// The configured SMTP transport. Cheap to share (`Arc`).
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `host:port`, for errors and logs.
    server: String,
    /// Bounds a whole send.
    timeout: Duration,
    /// The password, kept only to scrub it from error text should a server ever echo it.
    password: Option<String>,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .field("authenticated", &self.password.is_some())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Builds the transport for `config`: checks `from`, reads the password from the
    /// environment variable `password_env` (when `username` is set) and the extra CA
    /// certificates from `ca_file` (when set). Connects to nothing.
    pub fn new(config: &SmtpConfig) -> Result<Mailer, MailError> {
        let from: Mailbox = config.from.parse().map_err(|err| {
            MailError::Config(format!(
                "smtp.from: {:?} is not an email address ({err})",
                config.from
            ))
        })?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .timeout(Some(config.timeout));
        builder = match config.tls {
            SmtpTls::None => builder.tls(Tls::None),
            SmtpTls::StartTls => builder.tls(Tls::Required(tls_parameters(config)?)),
            SmtpTls::Tls => builder.tls(Tls::Wrapper(tls_parameters(config)?)),
        };
        let password = if config.username.is_empty() {
            None
        } else {
            let password = read_password(&config.password_env)?;
            builder =
                builder.credentials(Credentials::new(config.username.clone(), password.clone()));
            Some(password)
        };
        Ok(Mailer {
            transport: builder.build(),
            from,
            server: format!("{}:{}", config.host, config.port),
            timeout: config.timeout,
            password,
        })
    }

    /// The sender every email goes out as (`smtp.from`).
    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    /// `host:port` of the SMTP server.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends `email` to all its recipients in one message. A bad recipient address is a
    /// [`MailError::Config`] (nothing is sent); anything the connection or the server does
    /// wrong is a [`MailError::Send`].
    ///
    /// The whole conversation, from connecting to the server's last reply, is bounded by
    /// `smtp.timeout_secs` (lettre's own timeout covers only the connect).
    pub async fn send(&self, email: &Email) -> Result<(), MailError> {
        let message = self.message(email)?;
        let sent = tokio::time::timeout(self.timeout, self.transport.send(message)).await;
        let reason = match sent {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(err)) => self.scrub(error_chain(&err)),
            Err(_) => format!(
                "timed out after {} s (smtp.timeout_secs)",
                self.timeout.as_secs_f64()
            ),
        };
        Err(MailError::Send {
            server: self.server.clone(),
            reason,
        })
    }

    /// The message for `email`: From, To (every recipient), Subject, Date, Message-ID, and a
    /// `multipart/alternative` body with the text/plain part first and the text/html part
    /// second, both UTF-8.
    fn message(&self, email: &Email) -> Result<Message, MailError> {
        if email.to.is_empty() {
            return Err(MailError::Config("an email needs a recipient".to_string()));
        }
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(email.subject.as_str())
            .date_now()
            .message_id(Some(message_id(self.from.email.domain())));
        for address in &email.to {
            let mailbox: Mailbox = address.parse().map_err(|err| {
                MailError::Config(format!(
                    "recipient {address:?} is not an email address ({err})"
                ))
            })?;
            builder = builder.to(mailbox);
        }
        builder
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))
            .map_err(|err| MailError::Config(format!("cannot build the email: {err}")))
    }

    /// `text` with the password (if any) replaced by `***`.
    fn scrub(&self, text: String) -> String {
        match &self.password {
            Some(password) if !password.is_empty() && text.contains(password.as_str()) => {
                text.replace(password.as_str(), "***")
            }
            _ => text,
        }
    }
}

/// TLS for `config.host`, trusting the system's roots plus every certificate in `ca_file`.
fn tls_parameters(config: &SmtpConfig) -> Result<TlsParameters, MailError> {
    let mut builder = TlsParameters::builder(config.host.clone());
    if let Some(path) = &config.ca_file {
        for certificate in read_ca_file(path)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|err| {
        MailError::Config(format!(
            "cannot set up TLS for {}: {}",
            config.host,
            error_chain(&err)
        ))
    })
}

/// The PEM certificates in `path` (at least one).
fn read_ca_file(path: &std::path::Path) -> Result<Vec<Certificate>, MailError> {
    let bad = |reason: String| MailError::Config(format!("smtp.ca_file: {path:?}: {reason}"));
    let pem = std::fs::read(path).map_err(|err| bad(format!("cannot read it: {err}")))?;
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| bad(format!("not valid PEM: {err}")))?;
    if ders.is_empty() {
        return Err(bad(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string(),
        ));
    }
    ders.into_iter()
        .map(|der| {
            Certificate::from_der(der.to_vec())
                .map_err(|err| bad(format!("bad certificate: {}", error_chain(&err))))
        })
        .collect()
}

/// The SMTP password from the environment variable `name`.
fn read_password(name: &str) -> Result<String, MailError> {
    match std::env::var(name) {
        Ok(password) if !password.is_empty() => Ok(password),
        Ok(_) => Err(MailError::Config(format!(
            "smtp.password_env: environment variable {name} is empty (it must hold the password for smtp.username)"
        ))),
        Err(std::env::VarError::NotPresent) => Err(MailError::Config(format!(
            "smtp.password_env: environment variable {name} is not set (it must hold the password for smtp.username)"
        ))),
        Err(std::env::VarError::NotUnicode(_)) => Err(MailError::Config(format!(
            "smtp.password_env: environment variable {name} is not valid UTF-8"
        ))),
    }
}

/// A Message-ID unique to this process and moment, in the sender's domain:
/// `<1764000000123456789.4242.7@example.com>`.
fn message_id(domain: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("<{nanos}.{}.{n}@{domain}>", std::process::id())
}

/// An error and its causes on one line (`Connection error: Connection refused (os error
/// 111)`). lettre's errors already print their source, and nest (`Connection error:
/// Connection error: ...`), so a cause whose text is already there is not repeated, nor is a
/// segment that repeats the one before it.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split(": ") {
        if segments.last() != Some(&segment) {
            segments.push(segment);
        }
    }
    segments.join(": ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;

    use super::*;

    fn config(tls: SmtpTls) -> SmtpConfig {
        SmtpConfig {
            host: "127.0.0.1".to_string(),
            port: 2525,
            tls,
            username: String::new(),
            password_env: "METER_MAIL_UNIT_UNUSED".to_string(),
            from: "meter@example.com".to_string(),
            ca_file: None,
            timeout: Duration::from_secs(5),
            retry_min: Duration::from_secs(10),
            retry_max: Duration::from_secs(600),
        }
    }

    fn email(to: &[&str]) -> Email {
        Email {
            to: to.iter().map(|s| s.to_string()).collect(),
            subject: "€ – budget".to_string(),
            text: "spent 80%\n".to_string(),
            html: "<p>spent <b>80%</b></p>\n".to_string(),
        }
    }

    fn config_error(result: Result<Mailer, MailError>) -> String {
        match result {
            Err(MailError::Config(reason)) => reason,
            Err(other) => panic!("expected a config error, got {other}"),
            Ok(mailer) => panic!("expected a config error, got {mailer:?}"),
        }
    }

    #[test]
    fn builds_every_tls_mode_without_connecting() {
        for tls in [SmtpTls::None, SmtpTls::StartTls, SmtpTls::Tls] {
            let mailer = Mailer::new(&config(tls)).unwrap();
            assert_eq!(mailer.server(), "127.0.0.1:2525");
            assert_eq!(mailer.from().email.to_string(), "meter@example.com");
        }
    }

    #[test]
    fn a_missing_password_variable_is_named() {
        let mut config = config(SmtpTls::StartTls);
        config.username = "alerts".to_string();
        config.password_env = "METER_MAIL_UNIT_NOT_SET_ANYWHERE".to_string();
        let reason = config_error(Mailer::new(&config));
        assert!(
            reason.contains("METER_MAIL_UNIT_NOT_SET_ANYWHERE"),
            "{reason}"
        );
        assert!(reason.contains("not set"), "{reason}");
    }

    #[test]
    fn the_password_is_read_at_construction_and_never_shown() {
        let mut config = config(SmtpTls::StartTls);
        config.username = "alerts".to_string();
        config.password_env = "METER_MAIL_UNIT_PASSWORD_SHOWN".to_string();
        std::env::set_var(&config.password_env, "hunter2-secret");
        let mailer = Mailer::new(&config).unwrap();
        // Changing the variable later does not matter: it was read once.
        std::env::remove_var(&config.password_env);
        assert_eq!(mailer.password.as_deref(), Some("hunter2-secret"));
        let debug = format!("{mailer:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert_eq!(
            mailer.scrub("535 bad credentials hunter2-secret for alerts".to_string()),
            "535 bad credentials *** for alerts"
        );
    }

    #[test]
    fn an_empty_password_variable_is_an_error() {
        let mut config = config(SmtpTls::None);
        config.username = "alerts".to_string();
        config.password_env = "METER_MAIL_UNIT_EMPTY_PASSWORD".to_string();
        std::env::set_var(&config.password_env, "");
        let reason = config_error(Mailer::new(&config));
        assert!(
            reason.contains("METER_MAIL_UNIT_EMPTY_PASSWORD is empty"),
            "{reason}"
        );
    }

    #[test]
    fn a_bad_from_address_is_named() {
        let mut config = config(SmtpTls::None);
        config.from = "not an address".to_string();
        let reason = config_error(Mailer::new(&config));
        assert!(
            reason.starts_with("smtp.from: \"not an address\""),
            "{reason}"
        );
    }

    #[test]
    fn a_bad_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(PathBuf, &str); 3] = [
            (dir.path().join("absent.pem"), "cannot read it"),
            (dir.path().join("empty.pem"), "holds no PEM certificate"),
            (dir.path().join("junk.pem"), "holds no PEM certificate"),
        ];
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").unwrap();
        for (path, expected) in cases {
            for tls in [SmtpTls::StartTls, SmtpTls::Tls] {
                let mut config = config(tls);
                config.ca_file = Some(path.clone());
                let reason = config_error(Mailer::new(&config));
                assert!(reason.starts_with("smtp.ca_file: "), "{reason}");
                assert!(reason.contains(expected), "{reason}");
            }
        }
        // Plain SMTP never uses TLS, so its CA file is not read.
        let mut plain = config(SmtpTls::None);
        plain.ca_file = Some(dir.path().join("junk.pem"));
        Mailer::new(&plain).unwrap();
    }

    #[test]
    fn a_pem_ca_file_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, format!("# a comment\n{}", ca.pem())).unwrap();
        assert_eq!(read_ca_file(&path).unwrap().len(), 1);
        let mut config = config(SmtpTls::Tls);
        config.ca_file = Some(path);
        Mailer::new(&config).unwrap();
    }

    #[test]
    fn the_message_is_multipart_alternative_text_then_html() {
        let mailer = Mailer::new(&config(SmtpTls::None)).unwrap();
        let message = mailer
            .message(&email(&["ops@example.com", "Fin Team <fin@example.org>"]))
            .unwrap();
        let envelope = message.envelope();
        let recipients: Vec<String> = envelope.to().iter().map(|a| a.to_string()).collect();
        assert_eq!(recipients, ["ops@example.com", "fin@example.org"]);
        assert_eq!(
            envelope.from().map(|a| a.to_string()).as_deref(),
            Some("meter@example.com")
        );
        let raw = String::from_utf8(message.formatted()).unwrap();
        let head = &raw[..raw.find("\r\n\r\n").unwrap()];
        assert!(head.contains("From: meter@example.com\r\n"), "{head}");
        assert!(
            head.contains("To: ops@example.com, \"Fin Team\" <fin@example.org>\r\n"),
            "{head}"
        );
        // Non-ASCII subjects are RFC 2047 encoded words.
        assert!(head.contains("Subject: =?utf-8?b?"), "{head}");
        assert!(head.contains("\r\nDate: "), "{head}");
        assert!(head.contains("Message-ID: <"), "{head}");
        assert!(head.contains("@example.com>"), "{head}");
        assert!(
            head.contains("Content-Type: multipart/alternative;"),
            "{head}"
        );
        let plain = raw.find("Content-Type: text/plain; charset=utf-8").unwrap();
        let html = raw.find("Content-Type: text/html; charset=utf-8").unwrap();
        assert!(plain < html, "{raw}");
    }

    #[test]
    fn message_ids_differ() {
        let a = message_id("example.com");
        let b = message_id("example.com");
        assert_ne!(a, b);
        assert!(a.starts_with('<') && a.ends_with("@example.com>"), "{a}");
    }

    #[test]
    fn a_bad_recipient_is_named() {
        let mailer = Mailer::new(&config(SmtpTls::None)).unwrap();
        match mailer.message(&email(&["ops@example.com", "ops at example"])) {
            Err(MailError::Config(reason)) => {
                assert!(reason.contains("\"ops at example\""), "{reason}")
            }
            other => panic!("expected a config error, got {other:?}"),
        }
        match mailer.message(&email(&[])) {
            Err(MailError::Config(reason)) => assert!(reason.contains("recipient"), "{reason}"),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn error_chain_does_not_repeat_causes() {
        #[derive(Debug)]
        struct Outer(std::io::Error, bool);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if self.1 {
                    write!(f, "network error: {}", self.0)
                } else {
                    f.write_str("network error")
                }
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            error_chain(&Outer(refused(), true)),
            "network error: refused"
        );
        assert_eq!(
            error_chain(&Outer(refused(), false)),
            "network error: refused"
        );
        let nested = Outer(std::io::Error::other("network error: refused"), true);
        assert_eq!(error_chain(&nested), "network error: refused");
    }
}
