//! Sending email over SMTP with lettre: plain, STARTTLS or implicit TLS, with or without
//! authentication (the password comes from the environment). Used by the alerter and
//! `meter alert test`; knows nothing about budgets.

use crate::config::SmtpConfig;

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
    #[error("smtp: {0}")]
    Config(String),
    #[error("smtp {server}: {reason}")]
    Send { server: String, reason: String },
}

/// The configured SMTP transport. Cheap to share (`Arc`).
pub struct Mailer {
    _config: SmtpConfig,
}

impl Mailer {
    pub fn new(config: &SmtpConfig) -> Result<Mailer, MailError> {
        Ok(Mailer {
            _config: config.clone(),
        })
    }

    pub async fn send(&self, _email: &Email) -> Result<(), MailError> {
        Err(MailError::Config("not implemented yet".to_string()))
    }
}
