//! Per-call state: created when a request is routed, filled as the call goes, and consumed once
//! to make the call's single [`LedgerRecord`].

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::config::Provider;
use crate::ledger::LedgerRecord;
use crate::usage::estimate::EstimateInput;
use crate::usage::request::RequestFacts;
use crate::usage::{Endpoint, ParsedUsage, Usage, UsageStatus};

/// Request bodies up to this size are kept while the call runs, for the estimator.
const KEEP_REQUEST_BODY_BYTES: usize = 1 << 20;

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

/// What meter knows about a call in flight. Its `Debug` leaves the request body out.
pub struct CallContext {
    pub started: Instant,
    pub ts: DateTime<Utc>,
    pub agent: String,
    pub provider: Arc<Provider>,
    pub endpoint: Endpoint,
    /// Whether the call can bill tokens at all (a POST); listing models cannot.
    pub billable: bool,
    pub streaming: bool,
    pub key_fingerprint: Option<String>,
    pub tags: Option<String>,
    pub status: u16,
    pub first_byte: Option<Instant>,
    /// What the request body said (model, stream, output cap, image size).
    pub facts: RequestFacts,
    /// The request body, when small enough, in case usage must be estimated.
    pub request_body: Option<bytes::Bytes>,
    pub request_len: u64,
    /// Set when meter refuses the call: the budget's name, or `route_policy`.
    pub blocked_by: Option<String>,
    /// Held against enforced budgets while the call is in flight.
    pub reservation: Option<crate::budget::Reservation>,
}

impl std::fmt::Debug for CallContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallContext")
            .field("agent", &self.agent)
            .field("provider", &self.provider.name)
            .field("endpoint", &self.endpoint)
            .field("streaming", &self.streaming)
            .field("status", &self.status)
            .field("model", &self.facts.model)
            .field("request_len", &self.request_len)
            .finish_non_exhaustive()
    }
}

impl CallContext {
    /// Keeps what the estimator may need from the request body.
    pub fn keep_request(&mut self, body: &bytes::Bytes) {
        self.request_len = body.len() as u64;
        if body.len() <= KEEP_REQUEST_BODY_BYTES {
            self.request_body = Some(body.clone());
        }
    }

    /// Makes the call's record. `parsed` is what the usage parser read, if one ran.
    pub fn into_record(mut self, parsed: Option<ParsedUsage>, outcome: Outcome) -> LedgerRecord {
        let parsed = parsed.unwrap_or_default();
        let error = match outcome {
            Outcome::Complete => None,
            Outcome::Refused(error) | Outcome::Cut(error) => Some(error),
        };
        let mut estimate = None;
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
            // Billed per image, and the images were counted (DALL-E reports no tokens).
            None if parsed.quantities.images > 0 => (Usage::default(), UsageStatus::Reported),
            // Nothing seen to count from (a body meter cannot read at all): missing.
            None if parsed.partial.is_none() && parsed.output_text.is_empty() => {
                (Usage::default(), UsageStatus::Missing)
            }
            // The writer thread counts it (estimated), or leaves it missing.
            None => {
                estimate = Some(EstimateInput {
                    request_body: self.request_body.take(),
                    request_len: self.request_len,
                    max_output_tokens: self.facts.max_output_tokens,
                    partial: parsed.partial,
                    output_text: parsed.output_text,
                });
                (Usage::default(), UsageStatus::Missing)
            }
        };
        let mut quantities = parsed.quantities;
        if quantities.images > 0 {
            quantities.image_size = quantities.image_size.or(self.facts.image_size.take());
            quantities.image_quality = quantities.image_quality.or(self.facts.image_quality.take());
        }
        let tags = match parsed.upstream_provider {
            Some(upstream) => Some(add_tag(
                self.tags.as_deref(),
                "upstream_provider",
                &upstream,
            )),
            None => self.tags,
        };
        let now = Instant::now();
        LedgerRecord {
            ts: self.ts,
            agent: self.agent,
            provider: self.provider.name.clone(),
            route: self.provider.route.as_str(),
            model: parsed.model.or(self.facts.model),
            endpoint: self.endpoint.as_str(),
            streaming: self.streaming,
            status: self.status,
            usage,
            usage_status,
            quantities,
            reported_cost_nanos: parsed.reported_cost_nanos,
            cost_nanos: None,
            table_cost_nanos: None,
            cost_source: None,
            price_id: None,
            latency_ms: millis(now.duration_since(self.started)),
            ttft_ms: self
                .first_byte
                .map(|first| millis(first.duration_since(self.started))),
            key_fingerprint: self.key_fingerprint,
            request_id: parsed.request_id,
            tags,
            error,
            estimate,
            observed: false,
            blocked_by: self.blocked_by,
            reservation: self.reservation,
            budget_hits: Vec::new(),
        }
    }
}

/// Sets `key: value` in a JSON object of tags (or starts one). Values are JSON-escaped. What
/// meter read from the response replaces a client's `X-Meter-Tags` entry of the same name, so a
/// client cannot pass off its own value as the provider's.
fn add_tag(tags: Option<&str>, key: &str, value: &str) -> String {
    let mut object = tags
        .and_then(|t| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(t).ok())
        .unwrap_or_default();
    object.insert(
        key.to_string(),
        serde_json::Value::String(value.to_string()),
    );
    serde_json::Value::Object(object).to_string()
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_providers_tag_replaces_a_clients_one() {
        assert_eq!(
            add_tag(Some(r#"{"team":"a"}"#), "upstream_provider", "Anthropic"),
            r#"{"team":"a","upstream_provider":"Anthropic"}"#
        );
        assert_eq!(
            add_tag(
                Some(r#"{"upstream_provider":"spoofed"}"#),
                "upstream_provider",
                "Anthropic"
            ),
            r#"{"upstream_provider":"Anthropic"}"#
        );
        assert_eq!(
            add_tag(None, "upstream_provider", "a\"b"),
            r#"{"upstream_provider":"a\"b"}"#
        );
    }
}
