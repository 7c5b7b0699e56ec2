//! Meter's own Prometheus metrics, on a registry of their own (not the global one), updated in
//! one place from each finished [`LedgerRecord`] so that `/metrics` and the ledger agree.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

mod usd;

use std::sync::Arc;

use crate::ledger::LedgerRecord;
pub use usd::UsdCounterVec;

/// Registers a collector the metrics keep a handle on.
struct SharedCollector(Arc<UsdCounterVec>);

impl prometheus::core::Collector for SharedCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}
use crate::usage::UsageStatus;

/// Buckets for LLM calls: tens of milliseconds up to twenty minutes.
const DURATION_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
];

/// A cap on the distinct values of a label: past `max`, new values are counted as `other`
/// (and in `meter_label_overflow_total`), so a stream of new model or agent names cannot grow
/// the series without bound.
struct LabelCap {
    name: &'static str,
    max: usize,
    seen: std::sync::RwLock<std::collections::HashSet<String>>,
}

impl LabelCap {
    fn new(name: &'static str, max: usize) -> LabelCap {
        LabelCap {
            name,
            max,
            seen: std::sync::RwLock::new(std::collections::HashSet::new()),
        }
    }

    /// `value` while it is among the first `max` distinct values seen, else `other`. A value
    /// seen before costs a shared read lock.
    fn label<'a>(&self, value: &'a str, overflow: &IntCounterVec) -> &'a str {
        if self.seen.read().is_ok_and(|seen| seen.contains(value)) {
            return value;
        }
        let Ok(mut seen) = self.seen.write() else {
            return value;
        };
        if seen.contains(value) {
            return value;
        }
        if seen.len() < self.max {
            seen.insert(value.to_string());
            return value;
        }
        overflow.with_label_values(&[self.name]).inc();
        OTHER
    }
}

/// The label value of what a cap folded together.
pub const OTHER: &str = "other";

pub struct Metrics {
    registry: Registry,
    agents: LabelCap,
    models: LabelCap,
    pub markup_usd_total: Arc<UsdCounterVec>,
    pub blocked_requests_total: IntCounterVec,
    pub label_overflow_total: IntCounterVec,
    pub requests_total: IntCounterVec,
    pub tokens_total: IntCounterVec,
    pub cost_usd_total: Arc<UsdCounterVec>,
    pub unpriced_requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub time_to_first_byte_seconds: HistogramVec,
    pub usage_unread_total: IntCounterVec,
    pub ledger_pending_records: IntGauge,
    pub ledger_write_errors_total: IntCounter,
    /// Records spilled to the local journal while a PostgreSQL ledger is unreachable, not yet
    /// replayed into it.
    pub ledger_journal_records: IntGauge,
    pub budget_spend_usd: GaugeVec,
    pub budget_limit_usd: GaugeVec,
    pub budget_forecast_usd: GaugeVec,
    pub alerts_sent_total: IntCounterVec,
    pub alert_failures_total: IntCounterVec,
    pub client_connections: IntGauge,
    pub client_timeouts_total: IntCounter,
    /// CONNECT requests in forward-proxy mode, by `kind`: intercepted, passthrough, refused.
    pub forward_tunnels_total: IntCounterVec,
    /// Leaf-certificate lookups for intercepted hosts, by `result`: hit, miss (minted).
    pub forward_cert_cache_total: IntCounterVec,
    /// Intercepted tunnels whose client TLS handshake failed (a client that does not trust
    /// meter's CA shows up here).
    pub forward_handshake_failures_total: IntCounter,
    /// `meter_instance_info{instance_id, ledger}`: which meter this is (see [`Metrics::set_instance`]).
    instance_info: IntGaugeVec,
}

/// The `kind` label of `meter_forward_tunnels_total`.
pub const TUNNEL_KINDS: [&str; 3] = ["intercepted", "passthrough", "refused"];

/// The `kind` label of the alert counters.
pub const ALERT_KINDS: [&str; 4] = ["threshold", "forecast", "weekly", "test"];

impl Metrics {
    /// The metrics with the default label caps.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        Metrics::with_caps(
            crate::config::DEFAULT_METRICS_MAX_AGENTS,
            crate::config::DEFAULT_METRICS_MAX_MODELS,
        )
    }

    /// The metrics with at most `max_agents` agent and `max_models` model label values.
    pub fn with_caps(max_agents: usize, max_models: usize) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let markup_usd_total = Arc::new(UsdCounterVec::new(
            "meter_markup_usd_total",
            "The part of the spend above the rate table's list price: what a router (or a configured markup) added.",
            &["provider", "route", "model", "agent"],
        )?);
        let blocked_requests_total = IntCounterVec::new(
            Opts::new(
                "meter_blocked_requests_total",
                "Calls meter refused instead of forwarding, by reason (budget, route_policy).",
            ),
            &["agent", "reason"],
        )?;
        let label_overflow_total = IntCounterVec::new(
            Opts::new(
                "meter_label_overflow_total",
                "Calls whose agent or model label was counted as \"other\" because the label's cap of distinct values was reached.",
            ),
            &["label"],
        )?;
        for label in ["agent", "model"] {
            label_overflow_total.with_label_values(&[label]);
        }
        let build_info = IntGaugeVec::new(
            Opts::new("meter_build_info", "meter's version; always 1."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(SharedCollector(markup_usd_total.clone())))?;
        registry.register(Box::new(blocked_requests_total.clone()))?;
        registry.register(Box::new(label_overflow_total.clone()))?;
        registry.register(Box::new(build_info))?;
        let instance_info = IntGaugeVec::new(
            Opts::new(
                "meter_instance_info",
                "Which meter this is: instance_id is server.instance (default: the host name), ledger is sqlite or postgres (postgres: a ledger shared by a fleet, whose counters start at zero at each start); always 1. Join on (job, instance) to name the scrape target.",
            ),
            &["instance_id", "ledger"],
        )?;
        registry.register(Box::new(instance_info.clone()))?;
        let requests_total = IntCounterVec::new(
            Opts::new(
                "meter_requests_total",
                "Proxied requests, by provider, route, model, agent and HTTP status class.",
            ),
            &["provider", "route", "model", "agent", "status"],
        )?;
        let tokens_total = IntCounterVec::new(
            Opts::new(
                "meter_tokens_total",
                "Tokens metered, by type (input, cache_read, cache_write, output, reasoning); reasoning is part of output, cache_read and cache_write are not part of input.",
            ),
            &["provider", "route", "model", "agent", "type"],
        )?;
        let cost_usd_total = Arc::new(UsdCounterVec::new(
            "meter_cost_usd_total",
            "Spend in USD: the provider-reported cost where there is one, else the rate table's price (markup included). Unpriced calls add nothing; see meter_unpriced_requests_total.",
            &["provider", "route", "model", "agent"],
        )?);
        let unpriced_requests_total = IntCounterVec::new(
            Opts::new(
                "meter_unpriced_requests_total",
                "Calls recorded without a cost because the rate table has no price for their model.",
            ),
            &["provider", "model"],
        )?;
        let request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "meter_request_duration_seconds",
                "Time from the request reaching meter to the last byte of the response.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["provider", "route"],
        )?;
        let time_to_first_byte_seconds = HistogramVec::new(
            HistogramOpts::new(
                "meter_time_to_first_byte_seconds",
                "Time from the request reaching meter to the first byte of the upstream's response body.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["provider", "route"],
        )?;
        let usage_unread_total = IntCounterVec::new(
            Opts::new(
                "meter_usage_unread_total",
                "Responses whose usage could not be read from the provider's report.",
            ),
            &["provider", "usage_status"],
        )?;
        let ledger_pending_records = IntGauge::new(
            "meter_ledger_pending_records",
            "Records queued for the ledger and not yet committed.",
        )?;
        let ledger_write_errors_total = IntCounter::new(
            "meter_ledger_write_errors_total",
            "Failed ledger write attempts (each is retried).",
        )?;
        let ledger_journal_records = IntGauge::new(
            "meter_ledger_journal_records",
            "Records spilled to the local journal while the PostgreSQL ledger is unreachable, not yet replayed into it.",
        )?;
        let gauge = |name: &str, help: &str| GaugeVec::new(Opts::new(name, help), &["budget"]);
        let budget_spend_usd = gauge(
            "meter_budget_spend_usd",
            "Spend in USD counted against the budget in its current period (calls of every meter on the ledger, as of its last read).",
        )?;
        let budget_limit_usd = gauge(
            "meter_budget_limit_usd",
            "The budget's limit in USD per period.",
        )?;
        let budget_forecast_usd = gauge(
            "meter_budget_forecast_usd",
            "The budget's spend projected linearly to the end of its period; absent until forecast_min_elapsed of the period has passed.",
        )?;
        let alerts_sent_total = IntCounterVec::new(
            Opts::new(
                "meter_alerts_sent_total",
                "Emails sent, by kind (threshold, forecast, weekly, test).",
            ),
            &["kind"],
        )?;
        let alert_failures_total = IntCounterVec::new(
            Opts::new(
                "meter_alert_failures_total",
                "Failed attempts at sending an email, by kind; each is retried with back-off.",
            ),
            &["kind"],
        )?;
        let client_connections = IntGauge::new(
            "meter_client_connections",
            "Client connections open on the proxy port (at most server.max_connections; past it, new ones wait).",
        )?;
        let client_timeouts_total = IntCounter::new(
            "meter_client_timeouts_total",
            "Client connections closed because no complete request headers arrived within server.header_read_timeout_secs (slow or silent clients, idle keep-alive connections).",
        )?;
        registry.register(Box::new(client_connections.clone()))?;
        let forward_tunnels_total = IntCounterVec::new(
            Opts::new(
                "meter_forward_tunnels_total",
                "CONNECT requests in forward-proxy mode, by kind: intercepted (a provider host, metered), passthrough (another host, tunnelled blind and unmetered), refused (403).",
            ),
            &["kind"],
        )?;
        for kind in TUNNEL_KINDS {
            forward_tunnels_total.with_label_values(&[kind]);
        }
        let forward_cert_cache_total = IntCounterVec::new(
            Opts::new(
                "meter_forward_cert_cache_total",
                "Leaf certificates looked up for intercepted hosts, by result: hit (cached), miss (minted).",
            ),
            &["result"],
        )?;
        for result in ["hit", "miss"] {
            forward_cert_cache_total.with_label_values(&[result]);
        }
        let forward_handshake_failures_total = IntCounter::new(
            "meter_forward_handshake_failures_total",
            "Intercepted tunnels whose TLS handshake with the client failed (e.g. a client that does not trust meter's CA).",
        )?;
        registry.register(Box::new(forward_tunnels_total.clone()))?;
        registry.register(Box::new(forward_cert_cache_total.clone()))?;
        registry.register(Box::new(forward_handshake_failures_total.clone()))?;
        registry.register(Box::new(client_timeouts_total.clone()))?;
        for kind in ALERT_KINDS {
            alerts_sent_total.with_label_values(&[kind]);
            alert_failures_total.with_label_values(&[kind]);
        }
        registry.register(Box::new(budget_spend_usd.clone()))?;
        registry.register(Box::new(budget_limit_usd.clone()))?;
        registry.register(Box::new(budget_forecast_usd.clone()))?;
        registry.register(Box::new(alerts_sent_total.clone()))?;
        registry.register(Box::new(alert_failures_total.clone()))?;
        registry.register(Box::new(requests_total.clone()))?;
        registry.register(Box::new(tokens_total.clone()))?;
        registry.register(Box::new(SharedCollector(cost_usd_total.clone())))?;
        registry.register(Box::new(unpriced_requests_total.clone()))?;
        registry.register(Box::new(request_duration_seconds.clone()))?;
        registry.register(Box::new(time_to_first_byte_seconds.clone()))?;
        registry.register(Box::new(usage_unread_total.clone()))?;
        registry.register(Box::new(ledger_pending_records.clone()))?;
        registry.register(Box::new(ledger_write_errors_total.clone()))?;
        registry.register(Box::new(ledger_journal_records.clone()))?;
        Ok(Metrics {
            registry,
            agents: LabelCap::new("agent", max_agents),
            models: LabelCap::new("model", max_models),
            markup_usd_total,
            blocked_requests_total,
            label_overflow_total,
            requests_total,
            tokens_total,
            cost_usd_total,
            unpriced_requests_total,
            request_duration_seconds,
            time_to_first_byte_seconds,
            usage_unread_total,
            ledger_pending_records,
            ledger_write_errors_total,
            ledger_journal_records,
            budget_spend_usd,
            budget_limit_usd,
            budget_forecast_usd,
            alerts_sent_total,
            alert_failures_total,
            client_connections,
            client_timeouts_total,
            forward_tunnels_total,
            forward_cert_cache_total,
            forward_handshake_failures_total,
            instance_info,
        })
    }

    /// Names this meter: `meter_instance_info{instance_id, ledger} 1` (one series; a second
    /// call replaces it).
    pub fn set_instance(&self, instance_id: &str, ledger: &str) {
        self.instance_info.reset();
        self.instance_info
            .with_label_values(&[instance_id, ledger])
            .set(1);
    }

    /// Counts one finished call.
    pub fn observe(&self, record: &LedgerRecord) {
        let model = record
            .model
            .as_deref()
            .filter(|m| !m.is_empty())
            .unwrap_or("unknown");
        let model = self.models.label(model, &self.label_overflow_total);
        let agent = self
            .agents
            .label(record.agent.as_str(), &self.label_overflow_total);
        let status = match record.status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let base = [record.provider.as_str(), record.route, model, agent];
        self.requests_total
            .with_label_values(&[base[0], base[1], base[2], base[3], status])
            .inc();
        let usage = &record.usage;
        for (kind, count) in [
            ("input", usage.input_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
            ("output", usage.output_tokens),
            ("reasoning", usage.reasoning_tokens),
        ] {
            self.tokens_total
                .with_label_values(&[base[0], base[1], base[2], base[3], kind])
                .inc_by(count);
        }
        // Every priced series exists (at 0 for a free call), so spend panels show its calls.
        self.cost_usd_total
            .add(&base, record.cost_nanos.unwrap_or(0).max(0));
        if let Some(nanos) = record.cost_nanos {
            if let Some(table) = record.table_cost_nanos.filter(|t| *t < nanos) {
                self.markup_usd_total.add(&base, nanos - table);
            }
        }
        if let Some(blocked) = &record.blocked_by {
            let reason = if blocked == "route_policy" {
                "route_policy"
            } else {
                "budget"
            };
            self.blocked_requests_total
                .with_label_values(&[agent, reason])
                .inc();
        }
        let short = [record.provider.as_str(), record.route];
        self.request_duration_seconds
            .with_label_values(&short)
            .observe(record.latency_ms as f64 / 1000.0);
        if let Some(ttft) = record.ttft_ms {
            self.time_to_first_byte_seconds
                .with_label_values(&short)
                .observe(ttft as f64 / 1000.0);
        }
        if record.usage_status != UsageStatus::Reported {
            self.usage_unread_total
                .with_label_values(&[record.provider.as_str(), record.usage_status.as_str()])
                .inc();
        }
    }

    /// Sets the budget gauges.
    pub fn set_budgets(&self, views: &[crate::budget::BudgetView]) {
        for view in views {
            let label = [view.name.as_str()];
            self.budget_spend_usd
                .with_label_values(&label)
                .set(view.spend_nanos as f64 / 1e9);
            self.budget_limit_usd
                .with_label_values(&label)
                .set(view.limit_nanos as f64 / 1e9);
            match view.forecast_nanos {
                Some(nanos) => self
                    .budget_forecast_usd
                    .with_label_values(&label)
                    .set(nanos as f64 / 1e9),
                None => {
                    let _ = self.budget_forecast_usd.remove_label_values(&label);
                }
            }
        }
    }

    /// Counts a call recorded without a price.
    pub fn observe_unpriced(&self, provider: &str, model: &str) {
        let model = if model.is_empty() { "unknown" } else { model };
        let model = self.models.label(model, &self.label_overflow_total);
        self.unpriced_requests_total
            .with_label_values(&[provider, model])
            .inc();
    }

    /// Starts the counters from the ledger's totals, so that a restart continues them instead
    /// of dropping them to zero (Prometheus' `increase()` and `rate()` then see no reset).
    /// Histograms, markup and the blocked and alert counters start at zero (a reset, which
    /// `increase()` handles).
    pub fn seed(&self, totals: &[crate::ledger::query::SeedRow]) {
        for row in totals {
            let model = self.models.label(&row.model, &self.label_overflow_total);
            let agent = self.agents.label(&row.agent, &self.label_overflow_total);
            let base = [row.provider.as_str(), row.route.as_str(), model, agent];
            for (class, count) in &row.requests {
                if *count > 0 {
                    self.requests_total
                        .with_label_values(&[base[0], base[1], base[2], base[3], class])
                        .inc_by(*count);
                }
            }
            for (kind, count) in [
                ("input", row.input_tokens),
                ("cache_read", row.cache_read_tokens),
                ("cache_write", row.cache_write_tokens),
                ("output", row.output_tokens),
                ("reasoning", row.reasoning_tokens),
            ] {
                self.tokens_total
                    .with_label_values(&[base[0], base[1], base[2], base[3], kind])
                    .inc_by(count);
            }
            self.cost_usd_total.add(&base, row.cost_nanos.max(0));
            if row.unpriced > 0 {
                self.unpriced_requests_total
                    .with_label_values(&[base[0], model])
                    .inc_by(row.unpriced);
            }
            for (status, count) in [("estimated", row.estimated), ("missing", row.missing)] {
                if count > 0 {
                    self.usage_unread_total
                        .with_label_values(&[base[0], status])
                        .inc_by(count);
                }
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %err, "encoding metrics failed");
        }
        out
    }
}
