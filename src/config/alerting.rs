//! The `[smtp]`, `[[budget]]` and `[report.weekly]` sections (SPEC §8): raw TOML structs and
//! their validation into [`SmtpConfig`], [`BudgetConfig`] and [`WeeklyConfig`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{NaiveTime, Weekday};
use serde::Deserialize;

use super::{is_valid_name, Route};

/// How meter talks to the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP (a relay on loopback or a trusted network).
    None,
    /// Plain connect, then `STARTTLS` (required: meter never falls back to plain text).
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

impl SmtpTls {
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpTls::None => "none",
            SmtpTls::StartTls => "starttls",
            SmtpTls::Tls => "tls",
        }
    }
}

/// `[smtp]`: where alert and report emails go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// Empty: no authentication.
    pub username: String,
    /// The environment variable holding the password (never the password itself).
    pub password_env: String,
    pub from: String,
    /// Extra CA certificates (PEM) trusted for the SMTP server, besides the system's.
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    /// Back-off between attempts at an email that failed: doubles from `retry_min` to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

/// A budget's period (SPEC §8 `period`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    Day,
    Week,
    Month,
    Quarter,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Week => "week",
            BudgetPeriod::Month => "month",
            BudgetPeriod::Quarter => "quarter",
        }
    }
}

/// How calls meter cannot price count against a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpriced {
    /// They pass and are not counted; alerts say how many there were.
    Allow,
    /// With `enforce`, they are refused: meter cannot tell what they would cost.
    Block,
}

/// Which calls a budget counts: every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetScope {
    pub agent: Option<String>,
    pub provider: Option<String>,
    /// Exact, or a glob with `*` (`claude-*`).
    pub model: Option<String>,
    pub route: Option<Route>,
}

impl BudgetScope {
    /// Whether a call is in scope. `model` is the model as the ledger records it (the
    /// provider's name for it) or as the request names it; a `model` pattern matches either
    /// that name or its undated form (`gpt-4o` matches `gpt-4o-2024-08-06`), case aside.
    pub fn matches(&self, agent: &str, provider: &str, model: &str, route: &str) -> bool {
        self.agent.as_deref().is_none_or(|a| a == agent)
            && self.provider.as_deref().is_none_or(|p| p == provider)
            && self.route.is_none_or(|r| r.as_str() == route)
            && self.model.as_deref().is_none_or(|pattern| {
                let pattern = pattern.to_ascii_lowercase();
                crate::pricing::model_names(model)
                    .iter()
                    .any(|name| crate::pricing::glob_match_str(&pattern, name))
            })
    }

    /// `agent=coder, provider=openai`, or `all calls`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(agent) = &self.agent {
            parts.push(format!("agent={agent}"));
        }
        if let Some(provider) = &self.provider {
            parts.push(format!("provider={provider}"));
        }
        if let Some(model) = &self.model {
            parts.push(format!("model={model}"));
        }
        if let Some(route) = self.route {
            parts.push(format!("route={}", route.as_str()));
        }
        if parts.is_empty() {
            "all calls".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// One `[[budget]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    pub name: String,
    pub period: BudgetPeriod,
    /// The limit in nano-dollars.
    pub limit_nanos: i64,
    pub scope: BudgetScope,
    /// Fractions of the limit, ascending, each alerted once per period.
    pub alert_at: Vec<f64>,
    pub forecast_alert: bool,
    /// The share of the period that must have elapsed before a forecast alert may fire.
    pub forecast_min_elapsed: f64,
    pub notify: Vec<String>,
    pub enforce: bool,
    pub unpriced: Unpriced,
    /// Output tokens reserved for a call that sets no `max_tokens` (enforcement only).
    pub reserve_output_tokens: u64,
}

/// `[report.weekly]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeeklyConfig {
    pub to: Vec<String>,
    pub weekday: Weekday,
    pub at: NaiveTime,
}

pub(super) const DEFAULT_SMTP_PORT: u16 = 25;
pub(super) const DEFAULT_SMTP_TIMEOUT_SECS: u64 = 30;
pub(super) const DEFAULT_SMTP_RETRY_MIN_SECS: u64 = 10;
pub(super) const DEFAULT_SMTP_RETRY_MAX_SECS: u64 = 600;
pub(super) const DEFAULT_ALERT_AT: [f64; 3] = [0.5, 0.8, 1.0];
pub(super) const DEFAULT_FORECAST_MIN_ELAPSED: f64 = 0.2;
pub(super) const DEFAULT_RESERVE_OUTPUT_TOKENS: u64 = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSmtp {
    host: String,
    port: u16,
    tls: String,
    username: String,
    password_env: String,
    from: String,
    ca_file: String,
    timeout_secs: u64,
    retry_min_secs: u64,
    retry_max_secs: u64,
}

impl Default for RawSmtp {
    fn default() -> Self {
        RawSmtp {
            host: "127.0.0.1".to_string(),
            port: DEFAULT_SMTP_PORT,
            tls: "none".to_string(),
            username: String::new(),
            password_env: "METER_SMTP_PASSWORD".to_string(),
            from: "meter@localhost".to_string(),
            ca_file: String::new(),
            timeout_secs: DEFAULT_SMTP_TIMEOUT_SECS,
            retry_min_secs: DEFAULT_SMTP_RETRY_MIN_SECS,
            retry_max_secs: DEFAULT_SMTP_RETRY_MAX_SECS,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    name: String,
    period: String,
    limit_usd: f64,
    agent: Option<String>,
    provider: Option<String>,
    model: Option<String>,
    route: Option<String>,
    alert_at: Option<Vec<f64>>,
    #[serde(default)]
    forecast_alert: bool,
    forecast_min_elapsed: Option<f64>,
    #[serde(default)]
    notify: Vec<String>,
    #[serde(default)]
    enforce: bool,
    unpriced: Option<String>,
    reserve_output_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawReport {
    weekly: Option<RawWeekly>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeekly {
    to: Vec<String>,
    #[serde(default = "default_weekday")]
    weekday: String,
    #[serde(default = "default_at")]
    at: String,
}

fn default_weekday() -> String {
    "mon".to_string()
}

fn default_at() -> String {
    "09:00".to_string()
}

/// A plausible email address: `local@domain`, no spaces or angle brackets. The SMTP server
/// has the last word; this catches typos at startup instead of at the first alert.
fn check_address(key: &str, address: &str) -> Result<(), String> {
    let ok = address
        .split_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !address.contains(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | ',' | ';'))
        && address.matches('@').count() == 1;
    if ok {
        Ok(())
    } else {
        Err(format!("{key}: {address:?} is not an email address"))
    }
}

fn nonzero_secs(key: &str, secs: u64) -> Result<Duration, String> {
    if secs == 0 {
        return Err(format!("{key}: must be at least 1"));
    }
    super::bounded_secs(key, secs)
}

impl RawSmtp {
    pub(super) fn validate(self, base: &Path) -> Result<SmtpConfig, String> {
        if self.host.trim().is_empty() || self.host.contains(['/', ' ']) {
            return Err(format!("smtp.host: {:?} is not a host name", self.host));
        }
        if self.port == 0 {
            return Err("smtp.port: must be 1-65535".to_string());
        }
        let tls = match self.tls.as_str() {
            "none" => SmtpTls::None,
            "starttls" => SmtpTls::StartTls,
            "tls" => SmtpTls::Tls,
            other => {
                return Err(format!(
                    "smtp.tls: unknown mode {other:?} (none, starttls, tls)"
                ))
            }
        };
        check_address("smtp.from", &self.from)?;
        if !self.username.is_empty() && self.password_env.trim().is_empty() {
            return Err(
                "smtp.password_env: must name an environment variable when smtp.username is set"
                    .to_string(),
            );
        }
        let ca_file = if self.ca_file.is_empty() {
            None
        } else {
            let path = base.join(&self.ca_file);
            if !path.is_file() {
                return Err(format!(
                    "smtp.ca_file: {:?} is not a readable file",
                    self.ca_file
                ));
            }
            Some(path)
        };
        let retry_min = nonzero_secs("smtp.retry_min_secs", self.retry_min_secs)?;
        let retry_max = nonzero_secs("smtp.retry_max_secs", self.retry_max_secs)?;
        if retry_max < retry_min {
            return Err("smtp.retry_max_secs: must not be below smtp.retry_min_secs".to_string());
        }
        Ok(SmtpConfig {
            host: self.host,
            port: self.port,
            tls,
            username: self.username,
            password_env: self.password_env,
            from: self.from,
            ca_file,
            timeout: nonzero_secs("smtp.timeout_secs", self.timeout_secs)?,
            retry_min,
            retry_max,
        })
    }
}

pub(super) fn validate_budgets(
    raw: Vec<RawBudget>,
    agents: &[super::Agent],
    providers: &[super::Provider],
) -> Result<Vec<BudgetConfig>, String> {
    let mut budgets: Vec<BudgetConfig> = Vec::new();
    for (index, raw) in raw.into_iter().enumerate() {
        let key = format!("budget[{index}]");
        if !is_valid_name(&raw.name) {
            return Err(format!(
                "{key}.name: {:?} is not a valid budget name (1-64 letters, digits, '-', '_', '.')",
                raw.name
            ));
        }
        if budgets.iter().any(|b| b.name == raw.name) {
            return Err(format!(
                "{key}.name: budget {:?} is configured twice",
                raw.name
            ));
        }
        let period = match raw.period.as_str() {
            "day" => BudgetPeriod::Day,
            "week" => BudgetPeriod::Week,
            "month" => BudgetPeriod::Month,
            "quarter" => BudgetPeriod::Quarter,
            other => {
                return Err(format!(
                    "{key}.period: unknown period {other:?} (day, week, month, quarter)"
                ))
            }
        };
        if !raw.limit_usd.is_finite() || raw.limit_usd <= 0.0 || raw.limit_usd > 1e9 {
            return Err(format!(
                "{key}.limit_usd: {} must be a positive amount of dollars",
                raw.limit_usd
            ));
        }
        let limit_nanos = (raw.limit_usd * 1e9).round() as i64;
        if let Some(agent) = &raw.agent {
            if !is_valid_name(agent) {
                return Err(format!("{key}.agent: {agent:?} is not a valid agent name"));
            }
            // An agent named only by header or path is legitimate; one in config is checked
            // for typos only when agents are configured at all.
            if !agents.is_empty() && agent != "default" && !agents.iter().any(|a| &a.name == agent)
            {
                tracing::debug!(budget = %raw.name, agent = %agent, "budget scoped to an agent not listed in [[agent]]");
            }
        }
        if let Some(provider) = &raw.provider {
            if !providers.iter().any(|p| &p.name == provider) {
                return Err(format!(
                    "{key}.provider: no provider {provider:?} (configured: {})",
                    providers
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if raw.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            return Err(format!("{key}.model: must not be empty"));
        }
        let route = match &raw.route {
            Some(route) => Some(Route::parse(route).ok_or_else(|| {
                format!("{key}.route: unknown route {route:?} (direct, router, local)")
            })?),
            None => None,
        };
        let mut alert_at = raw.alert_at.unwrap_or_else(|| DEFAULT_ALERT_AT.to_vec());
        for fraction in &alert_at {
            if !fraction.is_finite() || *fraction <= 0.0 || *fraction > 10.0 {
                return Err(format!(
                    "{key}.alert_at: {fraction} is not a fraction of the limit (0 < f <= 10)"
                ));
            }
        }
        alert_at.sort_by(f64::total_cmp);
        alert_at.dedup();
        let forecast_min_elapsed = raw
            .forecast_min_elapsed
            .unwrap_or(DEFAULT_FORECAST_MIN_ELAPSED);
        if !(0.0..1.0).contains(&forecast_min_elapsed) {
            return Err(format!(
                "{key}.forecast_min_elapsed: {forecast_min_elapsed} must be a fraction of the period in [0, 1)"
            ));
        }
        for (i, address) in raw.notify.iter().enumerate() {
            check_address(&format!("{key}.notify[{i}]"), address)?;
        }
        let unpriced = match raw.unpriced.as_deref() {
            None | Some("allow") => Unpriced::Allow,
            Some("block") => Unpriced::Block,
            Some(other) => {
                return Err(format!(
                    "{key}.unpriced: unknown setting {other:?} (allow, block)"
                ))
            }
        };
        budgets.push(BudgetConfig {
            name: raw.name,
            period,
            limit_nanos,
            scope: BudgetScope {
                agent: raw.agent,
                provider: raw.provider,
                model: raw.model,
                route,
            },
            alert_at,
            forecast_alert: raw.forecast_alert,
            forecast_min_elapsed,
            notify: raw.notify,
            enforce: raw.enforce,
            unpriced,
            reserve_output_tokens: raw
                .reserve_output_tokens
                .unwrap_or(DEFAULT_RESERVE_OUTPUT_TOKENS),
        });
    }
    Ok(budgets)
}

impl RawReport {
    pub(super) fn validate(self) -> Result<Option<WeeklyConfig>, String> {
        let Some(weekly) = self.weekly else {
            return Ok(None);
        };
        if weekly.to.is_empty() {
            return Err("report.weekly.to: list at least one address".to_string());
        }
        for (i, address) in weekly.to.iter().enumerate() {
            check_address(&format!("report.weekly.to[{i}]"), address)?;
        }
        let weekday = match weekly.weekday.to_ascii_lowercase().as_str() {
            "mon" | "monday" => Weekday::Mon,
            "tue" | "tuesday" => Weekday::Tue,
            "wed" | "wednesday" => Weekday::Wed,
            "thu" | "thursday" => Weekday::Thu,
            "fri" | "friday" => Weekday::Fri,
            "sat" | "saturday" => Weekday::Sat,
            "sun" | "sunday" => Weekday::Sun,
            other => {
                return Err(format!(
                "report.weekly.weekday: unknown day {other:?} (mon, tue, wed, thu, fri, sat, sun)"
            ))
            }
        };
        let at = NaiveTime::parse_from_str(&weekly.at, "%H:%M").map_err(|_| {
            format!(
                "report.weekly.at: {:?} is not a time of day (HH:MM, 24-hour)",
                weekly.at
            )
        })?;
        Ok(Some(WeeklyConfig {
            to: weekly.to,
            weekday,
            at,
        }))
    }
}
