//! The ledger: one [`LedgerRecord`] per proxied call, written to SQLite off the request path.
//! [`Recorder`] is the request path's handle (never blocks); [`writer`] owns the connection and
//! writes batches; [`schema`] holds the versioned migrations.

pub mod db;
pub mod postgres;
pub mod query;
pub mod schema;
pub mod writer;

pub use writer::{Recorder, WriterHandle};

use chrono::{DateTime, Utc};

use crate::usage::estimate::EstimateInput;
use crate::usage::{Quantities, Usage, UsageStatus};

/// One proxied call, as stored in the `usage` table (SPEC §5).
#[derive(Debug)]
pub struct LedgerRecord {
    pub ts: DateTime<Utc>,
    pub agent: String,
    pub provider: String,
    pub route: &'static str,
    pub model: Option<String>,
    pub endpoint: &'static str,
    pub streaming: bool,
    pub status: u16,
    pub usage: Usage,
    pub usage_status: UsageStatus,
    pub quantities: Quantities,
    /// What the provider said the call cost (OpenRouter), in nano-dollars.
    pub reported_cost_nanos: Option<i64>,
    /// The cost recorded, in nano-dollars (1e-9 USD); `None` while unpriced.
    pub cost_nanos: Option<i64>,
    /// The rate table's figure at the seller's list price (before any markup), also when the
    /// provider reported the cost: the difference is what a router charged on top.
    pub table_cost_nanos: Option<i64>,
    pub cost_source: Option<&'static str>,
    pub price_id: Option<String>,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    pub key_fingerprint: Option<String>,
    pub request_id: Option<String>,
    pub tags: Option<String>,
    /// What went wrong, when something did: `upstream_unreachable`, `upstream_timeout`,
    /// `upstream_reset`, `upstream_idle_timeout`, `client_gone`, `request_too_large`, ...
    pub error: Option<&'static str>,
    /// Set when usage must be counted locally; the writer thread does it, off the request path.
    pub estimate: Option<EstimateInput>,
    /// Priced and counted in the metrics already.
    pub observed: bool,
    /// The budget (or `route_policy`) that refused the call, when meter refused it.
    pub blocked_by: Option<String>,
    /// What the call held against enforced budgets while in flight; released once it is priced.
    pub reservation: Option<crate::budget::Reservation>,
    /// What the record added to budgets, marked committed once the row is in the ledger.
    pub budget_hits: Vec<crate::budget::BudgetHit>,
}

impl LedgerRecord {
    /// A record of a call with nothing known yet but who made it where: the start for tests,
    /// benches and imports; the proxy builds its records from the call's context.
    pub fn new(
        ts: DateTime<Utc>,
        agent: &str,
        provider: &str,
        route: &'static str,
    ) -> LedgerRecord {
        LedgerRecord {
            ts,
            agent: agent.to_string(),
            provider: provider.to_string(),
            route,
            model: None,
            endpoint: "other",
            streaming: false,
            status: 200,
            usage: Usage::default(),
            usage_status: UsageStatus::Reported,
            quantities: Quantities::default(),
            reported_cost_nanos: None,
            cost_nanos: None,
            table_cost_nanos: None,
            cost_source: None,
            price_id: None,
            latency_ms: 0,
            ttft_ms: None,
            key_fingerprint: None,
            request_id: None,
            tags: None,
            error: None,
            estimate: None,
            observed: false,
            blocked_by: None,
            reservation: None,
            budget_hits: Vec::new(),
        }
    }

    /// Prices the record (SPEC §6); returns true when it needed a price and found none.
    pub fn price(
        &mut self,
        table: &crate::pricing::RateTable,
        provider: crate::pricing::ProviderPricing,
    ) -> bool {
        let usage = (self.usage_status != UsageStatus::Missing).then_some(&self.usage);
        let priced = crate::pricing::price_call(
            table,
            &self.provider,
            provider,
            self.model.as_deref(),
            self.ts.date_naive(),
            usage,
            &self.quantities,
            self.reported_cost_nanos,
        );
        self.cost_nanos = priced.cost_nanos;
        self.table_cost_nanos = priced.table_cost_nanos;
        self.cost_source = priced.cost_source;
        self.price_id = priced.price_id;
        priced.unpriced
    }

    /// Replaces missing usage with an estimate where one can be made.
    pub fn resolve_estimate(&mut self) {
        if let Some(input) = self.estimate.take() {
            if let Some(usage) = crate::usage::estimate::estimate(&input) {
                self.usage = usage;
                self.usage_status = UsageStatus::Estimated;
            }
        }
    }
}

/// `ts` as stored: UTC, RFC 3339 with milliseconds.
pub fn format_ts(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
