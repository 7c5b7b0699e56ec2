//! Per-call state: created when a request is routed, filled as the call goes, and consumed once
//! to make the call's single [`LedgerRecord`].

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::config::Provider;
use crate::ledger::LedgerRecord;
use crate::usage::{Endpoint, ParsedUsage, Usage, UsageStatus};

/// How a call ended, as far as the ledger cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole response reached the client.
    Complete,
    /// Meter answered itself without a usable upstream response (`error` says why).
    Refused(&'static str),
    /// The response started but did not finish (`error` says why).
    Cut(&'static str),
}

/// What meter knows about a call in flight.
#[derive(Debug)]
pub struct CallContext {
    pub started: Instant,
    pub ts: DateTime<Utc>,
    pub agent: String,
    pub provider: Arc<Provider>,
    pub endpoint: Endpoint,
    /// Whether the call can bill tokens at all (a POST); listing models cannot.
    pub billable: bool,
    pub streaming: bool,
    pub requested_model: Option<String>,
    pub key_fingerprint: Option<String>,
    pub tags: Option<String>,
    pub status: u16,
    pub first_byte: Option<Instant>,
}

impl CallContext {
    /// Makes the call's record. `parsed` is what the usage parser read, if one ran.
    pub fn into_record(self, parsed: Option<ParsedUsage>, outcome: Outcome) -> LedgerRecord {
        let parsed = parsed.unwrap_or_default();
        let error = match outcome {
            Outcome::Complete => None,
            Outcome::Refused(error) | Outcome::Cut(error) => Some(error),
        };
        let (usage, usage_status) = match parsed.usage {
            Some(usage) => (usage, UsageStatus::Reported),
            // Known to be zero: the provider rejected the call, meter never sent it, or the call
            // cannot bill tokens. Anything else without a readable report is missing, not free.
            None if !self.billable
                || matches!(outcome, Outcome::Refused(_))
                || (self.status >= 400 && outcome == Outcome::Complete) =>
            {
                (Usage::default(), UsageStatus::Reported)
            }
            None => (Usage::default(), UsageStatus::Missing),
        };
        let now = Instant::now();
        LedgerRecord {
            ts: self.ts,
            agent: self.agent,
            provider: self.provider.name.clone(),
            route: self.provider.route.as_str(),
            model: parsed.model.or(self.requested_model),
            endpoint: self.endpoint.as_str(),
            streaming: self.streaming,
            status: self.status,
            usage,
            usage_status,
            cost_usd: None,
            cost_source: None,
            price_id: None,
            latency_ms: millis(now.duration_since(self.started)),
            ttft_ms: self
                .first_byte
                .map(|first| millis(first.duration_since(self.started))),
            key_fingerprint: self.key_fingerprint,
            request_id: parsed.request_id,
            tags: self.tags,
            error,
        }
    }
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
