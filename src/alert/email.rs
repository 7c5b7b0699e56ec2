//! The emails meter writes: budget alerts, the weekly report, the test email. Pure: data in,
//! subject + plain text + HTML out.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::report::{Group, Report};

/// A rendered email, without its recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// What drove a budget's spend: an agent, or a `provider/model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spender {
    pub name: String,
    pub cost_nanos: i64,
    pub requests: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlertKind {
    /// Spend reached this fraction of the limit (1.0 = the limit).
    Threshold(f64),
    /// The period's forecast is above the limit.
    Forecast,
}

/// Everything a budget alert says.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetAlert {
    pub budget: String,
    /// `agent=coder, provider=openai` or `all calls`.
    pub scope: String,
    pub kind: AlertKind,
    /// `day`, `week`, `month` or `quarter`.
    pub period_kind: &'static str,
    /// `2026-11-25`, `2026-W48`, `2026-11`, `2026-Q4`.
    pub period_label: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub timezone: Tz,
    pub spend_nanos: i64,
    pub limit_nanos: i64,
    /// The period's spend projected to its end (None before there is enough data).
    pub forecast_nanos: Option<i64>,
    /// Calls in scope meter could not price (not counted in `spend_nanos`).
    pub unpriced_calls: u64,
    /// Whether calls in scope are refused once the limit is spent.
    pub enforce: bool,
    /// Top agents and models in scope this period, most spend first (at most 5 each).
    pub top_agents: Vec<Spender>,
    pub top_models: Vec<Spender>,
    pub now: DateTime<Utc>,
}

/// Everything the weekly email says.
#[derive(Debug, Clone, PartialEq)]
pub struct Weekly {
    /// The week's report, grouped by agent, provider, model; `previous` holds the week before.
    pub report: Report,
    /// The week before, grouped the same way (for the biggest changes).
    pub previous_groups: Vec<Group>,
    pub now: DateTime<Utc>,
}

pub fn budget_alert(_alert: &BudgetAlert) -> Rendered {
    unimplemented_rendered()
}

pub fn weekly_report(_weekly: &Weekly) -> Rendered {
    unimplemented_rendered()
}

/// `meter alert test`: says where it came from and how meter is configured to send.
pub fn test_email(_now: DateTime<Utc>, _server: &str) -> Rendered {
    unimplemented_rendered()
}

fn unimplemented_rendered() -> Rendered {
    Rendered {
        subject: String::new(),
        text: String::new(),
        html: String::new(),
    }
}
