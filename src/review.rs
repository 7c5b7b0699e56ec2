//! `meter review`: the quarterly routing review (SPEC §7) on measured data. Each finding names
//! its agents and models and the dollar figure it rests on; findings are sorted by money at
//! stake. Pure: the ledger sums come from `ledger::query::review_groups`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use chrono::NaiveDate;
use serde_json::{json, Value};

use crate::config::{Config, DataClass, Route};
use crate::money::{format_usd, group_thousands};
use crate::pricing::{price_call, RateTable};
use crate::report::Period;
use crate::usage::{Quantities, Usage};

/// Sums of one (agent, provider, model, route) over the period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewGroup {
    pub agent: String,
    pub provider: String,
    pub model: String,
    pub route: String,
    pub calls: u64,
    pub usage: Usage,
    pub cost_nanos: i64,
    /// The rate table's figure for the calls that have one (a router's direct-key price).
    pub table_cost_nanos: i64,
    /// Spend of the calls that have both a cost and a table figure.
    pub compared_cost_nanos: i64,
    pub unpriced: u64,
    pub missing: u64,
    pub estimated: u64,
    /// Calls with short outputs that cost at least the local-model threshold, and their cost.
    pub short_calls: u64,
    pub short_cost_nanos: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub kind: &'static str,
    pub agents: Vec<String>,
    pub models: Vec<String>,
    /// The money the finding rests on, in nano-dollars.
    pub nanos: i64,
    pub summary: String,
}

/// `--what-if agent=A,model=M[,provider=P]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhatIf {
    pub agent: String,
    pub model: Option<String>,
    pub provider: Option<String>,
}

impl WhatIf {
    pub fn parse(text: &str) -> Result<WhatIf, String> {
        let mut agent = None;
        let mut model = None;
        let mut provider = None;
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("--what-if: {pair:?} is not key=value"))?;
            let value = value.trim().to_string();
            match key.trim() {
                "agent" => agent = Some(value),
                "model" => model = Some(value),
                "provider" => provider = Some(value),
                other => {
                    return Err(format!(
                        "--what-if: unknown key {other:?} (agent, model, provider)"
                    ))
                }
            }
        }
        let agent = agent.ok_or("--what-if: agent=NAME is required")?;
        if model.is_none() && provider.is_none() {
            return Err("--what-if: give model=M and/or provider=P".to_string());
        }
        Ok(WhatIf {
            agent,
            model,
            provider,
        })
    }
}

/// The result of a what-if: the agent's measured usage, priced as it was and as it would be.
#[derive(Debug, Clone, PartialEq)]
pub struct WhatIfResult {
    pub what_if: WhatIf,
    pub calls: u64,
    pub cost_nanos: i64,
    /// `None` when the target has no price.
    pub would_cost_nanos: Option<i64>,
    pub priced_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    pub period: Period,
    pub timezone: String,
    pub spend_by_route: BTreeMap<String, i64>,
    pub calls: u64,
    pub findings: Vec<Finding>,
    pub what_if: Option<WhatIfResult>,
}

fn add(total: &mut Usage, usage: &Usage) {
    // Sums of hand-inserted counts must not overflow into a panic.
    total.input_tokens = total.input_tokens.saturating_add(usage.input_tokens);
    total.cache_read_tokens = total
        .cache_read_tokens
        .saturating_add(usage.cache_read_tokens);
    total.cache_write_tokens = total
        .cache_write_tokens
        .saturating_add(usage.cache_write_tokens);
    total.cache_write_1h_tokens = total
        .cache_write_1h_tokens
        .saturating_add(usage.cache_write_1h_tokens);
    total.output_tokens = total.output_tokens.saturating_add(usage.output_tokens);
    total.reasoning_tokens = total
        .reasoning_tokens
        .saturating_add(usage.reasoning_tokens);
}

/// One model's quarter: summed usage, recorded cost, agents and calls.
type Used = (Usage, i64, BTreeSet<String>, u64);

/// Calls, two money sums and the agents and models behind them.
#[derive(Default)]
struct Tally {
    calls: u64,
    first: i64,
    second: i64,
    agents: BTreeSet<String>,
    models: BTreeSet<String>,
}

fn names(set: BTreeSet<String>) -> Vec<String> {
    set.into_iter().collect()
}

/// Runs the review over a period's groups.
pub fn review(
    config: &Config,
    table: &RateTable,
    period: Period,
    groups: &[ReviewGroup],
    today: NaiveDate,
    what_if: Option<&WhatIf>,
) -> Review {
    let thresholds = &config.review;
    let mut findings = Vec::new();
    let mut spend_by_route: BTreeMap<String, i64> = BTreeMap::new();
    for group in groups {
        *spend_by_route.entry(group.route.clone()).or_default() += group.cost_nanos;
    }
    let calls = groups.iter().map(|g| g.calls).sum();

    // Router traffic against the same calls on direct keys, per agent.
    let mut by_agent: BTreeMap<&str, Tally> = BTreeMap::new();
    for group in groups.iter().filter(|g| g.route == "router") {
        let entry = by_agent.entry(&group.agent).or_default();
        entry.first += group.compared_cost_nanos;
        entry.second += group.table_cost_nanos;
        entry.calls += group.calls;
        entry.models.insert(group.model.clone());
    }
    let min_savings = (thresholds.min_savings_usd * 1e9).round() as i64;
    for (agent, tally) in by_agent {
        let (paid, direct, calls, models) = (tally.first, tally.second, tally.calls, tally.models);
        let markup = paid - direct;
        if paid == 0 && direct == 0 {
            continue;
        }
        let (kind, verdict) = if markup >= min_savings && markup > 0 {
            (
                "direct_key_saves",
                format!("a direct key would save {} a quarter", format_usd(markup)),
            )
        } else if markup > 0 {
            (
                "router_markup",
                format!(
                    "the router's markup, {}, is below the {} worth a direct key",
                    format_usd(markup),
                    format_usd(min_savings)
                ),
            )
        } else {
            (
                "router_markup",
                "the router cost no more than direct keys".to_string(),
            )
        };
        findings.push(Finding {
            kind,
            agents: vec![agent.to_string()],
            models: names(models),
            nanos: markup.max(0),
            summary: format!(
                "{agent}: {} router calls cost {}; the same calls on direct keys {}: {verdict}",
                group_thousands(calls),
                format_usd(paid),
                format_usd(direct)
            ),
        });
    }

    // Direct providers used so rarely that their key could move behind the router.
    let router_fee = config
        .providers
        .iter()
        .find(|p| p.route == Route::Router && p.markup > 0.0)
        .map_or(thresholds.router_fee, |p| p.markup);
    let mut by_provider: BTreeMap<&str, Tally> = BTreeMap::new();
    for group in groups.iter().filter(|g| g.route == "direct") {
        let entry = by_provider.entry(&group.provider).or_default();
        entry.calls += group.calls;
        entry.first += group.cost_nanos;
        entry.agents.insert(group.agent.clone());
        entry.models.insert(group.model.clone());
    }
    for (provider, tally) in by_provider {
        let (calls, spend, agents, models) = (tally.calls, tally.first, tally.agents, tally.models);
        if calls >= thresholds.rare_provider_max_calls {
            continue;
        }
        let extra = (spend as f64 * router_fee).round() as i64;
        findings.push(Finding {
            kind: "rare_provider",
            agents: names(agents),
            models: names(models),
            nanos: extra,
            summary: format!(
                "{provider}: only {} calls ({}) this quarter; behind the router its key goes away for about {} more ({:.1}% fee)",
                group_thousands(calls),
                format_usd(spend),
                format_usd(extra),
                router_fee * 100.0
            ),
        });
    }

    // Expensive calls with short answers that a local model could serve.
    for group in groups
        .iter()
        .filter(|g| g.route != "local" && g.short_calls > 0)
    {
        findings.push(Finding {
            kind: "local_candidate",
            agents: vec![group.agent.clone()],
            models: vec![format!("{}/{}", group.provider, group.model)],
            nanos: group.short_cost_nanos,
            summary: format!(
                "{}: {} calls to {} answered in at most {} tokens yet cost {}; a local model could serve them",
                group.agent,
                group_thousands(group.short_calls),
                group.model,
                thresholds.local_max_output_tokens,
                format_usd(group.short_cost_nanos)
            ),
        });
    }

    // Usage meter could not read or price.
    let mut unread: BTreeMap<String, (u64, u64, u64, BTreeSet<String>)> = BTreeMap::new();
    for group in groups {
        if group.unpriced + group.missing + group.estimated == 0 {
            continue;
        }
        let entry = unread
            .entry(format!("{}/{}", group.provider, group.model))
            .or_default();
        entry.0 += group.unpriced;
        entry.1 += group.missing;
        entry.2 += group.estimated;
        entry.3.insert(group.agent.clone());
    }
    for (model, (unpriced, missing, estimated, agents)) in unread {
        findings.push(Finding {
            kind: "unread_or_unpriced",
            agents: names(agents),
            models: vec![model.clone()],
            nanos: 0,
            summary: format!(
                "{model}: {unpriced} calls unpriced, {missing} with unreadable usage, {estimated} estimated: their cost is not in the figures"
            ),
        });
    }

    // Price moves during the quarter, and the quarter at today's prices.
    let mut used: BTreeMap<(String, String), Used> = BTreeMap::new();
    for group in groups {
        let entry = used
            .entry((group.provider.clone(), group.model.clone()))
            .or_default();
        add(&mut entry.0, &group.usage);
        entry.1 += group.cost_nanos;
        entry.2.insert(group.agent.clone());
        entry.3 += group.calls;
    }
    // A move is judged up to today: a price dated later in an open quarter has not moved yet.
    let last_day = period.last_day.min(today);
    let mut then_total = 0i64;
    let mut now_total = 0i64;
    let mut moved = Vec::new();
    for ((provider, model), (usage, cost, agents, calls)) in &used {
        let pricing = config.provider_pricing(provider);
        let at = |date: NaiveDate| price_many(table, provider, pricing, model, date, usage, *calls);
        let start = at(period.first_day);
        let end = at(last_day);
        if let (Some(a), Some(b)) = (&start.1, &end.1) {
            if a != b {
                moved.push((
                    provider.clone(),
                    model.clone(),
                    a.clone(),
                    b.clone(),
                    agents.clone(),
                ));
            }
        }
        if let Some(today_cost) = at(today).0 {
            then_total += cost;
            now_total += today_cost;
        }
    }
    for (provider, model, before, after, agents) in moved {
        let (usage, cost, _, calls) = &used[&(provider.clone(), model.clone())];
        let pricing = config.provider_pricing(&provider);
        let old = price_many(
            table,
            &provider,
            pricing,
            &model,
            period.first_day,
            usage,
            *calls,
        )
        .0
        .unwrap_or(0);
        let new = price_many(table, &provider, pricing, &model, last_day, usage, *calls)
            .0
            .unwrap_or(0);
        findings.push(Finding {
            kind: "price_move",
            agents: names(agents),
            models: vec![format!("{provider}/{model}")],
            nanos: (new - old).abs(),
            summary: format!(
                "{provider}/{model}: the price changed during the quarter ({before} -> {after}); the quarter's usage costs {} at the old price and {} at the new (recorded: {})",
                format_usd(old),
                format_usd(new),
                format_usd(*cost)
            ),
        });
    }
    if then_total != now_total {
        findings.push(Finding {
            kind: "todays_prices",
            agents: Vec::new(),
            models: Vec::new(),
            nanos: (now_total - then_total).abs(),
            summary: format!(
                "at today's prices the quarter's priced usage would cost {} (recorded {}, {}{})",
                format_usd(now_total),
                format_usd(then_total),
                if now_total >= then_total { "+" } else { "" },
                format_usd(now_total - then_total)
            ),
        });
    }

    // Sensitive agents whose calls went through a router: a third party in their data path.
    for agent in config
        .agents
        .iter()
        .filter(|a| matches!(a.data_class, DataClass::Confidential | DataClass::Regulated))
    {
        let routed: Vec<&ReviewGroup> = groups
            .iter()
            .filter(|g| g.agent == agent.name && g.route == "router")
            .collect();
        if routed.is_empty() {
            continue;
        }
        let calls: u64 = routed.iter().map(|g| g.calls).sum();
        let spend: i64 = routed.iter().map(|g| g.cost_nanos).sum();
        findings.push(Finding {
            kind: "sensitive_via_router",
            agents: vec![agent.name.clone()],
            models: names(routed.iter().map(|g| g.model.clone()).collect()),
            nanos: spend,
            summary: format!(
                "{} is {} data, yet {} of its calls ({}) went through a router: a third party in its data path; use direct keys or restrict its routes",
                agent.name,
                agent.data_class.as_str(),
                group_thousands(calls),
                format_usd(spend)
            ),
        });
    }

    findings.sort_by(|a, b| {
        b.nanos
            .cmp(&a.nanos)
            .then(a.kind.cmp(b.kind))
            .then(a.summary.cmp(&b.summary))
    });

    let what_if = what_if.map(|w| what_if_result(config, table, groups, today, w));
    Review {
        period,
        timezone: config.timezone.name().to_string(),
        spend_by_route,
        calls,
        findings,
        what_if,
    }
}

/// Prices `calls` calls whose usage sums to `total`: exactly when the entry has no tiers, else
/// as that many average calls (tiers by prompt size apply per call, not to a quarter's sum).
/// Returns the cost and the id of the entry behind it.
fn price_many(
    table: &RateTable,
    provider: &str,
    pricing: crate::pricing::ProviderPricing,
    model: &str,
    date: NaiveDate,
    total: &Usage,
    calls: u64,
) -> (Option<i64>, Option<String>) {
    let tiered = table
        .lookup(provider, model, date)
        .is_some_and(|entry| !entry.tiers.is_empty());
    let price = |usage: &Usage| {
        price_call(
            table,
            provider,
            pricing,
            Some(model),
            date,
            Some(usage),
            &Quantities::default(),
            None,
        )
    };
    if !tiered || calls <= 1 {
        let priced = price(total);
        return (
            priced.cost_nanos.filter(|_| priced.price_id.is_some()),
            priced.price_id,
        );
    }
    let average = Usage {
        input_tokens: total.input_tokens / calls,
        cache_read_tokens: total.cache_read_tokens / calls,
        cache_write_tokens: total.cache_write_tokens / calls,
        cache_write_1h_tokens: total.cache_write_1h_tokens / calls,
        output_tokens: total.output_tokens / calls,
        reasoning_tokens: total.reasoning_tokens / calls,
    };
    let priced = price(&average);
    (
        priced
            .cost_nanos
            .filter(|_| priced.price_id.is_some())
            .map(|c| c.saturating_mul(i64::try_from(calls).unwrap_or(i64::MAX))),
        priced.price_id,
    )
}

fn what_if_result(
    config: &Config,
    table: &RateTable,
    groups: &[ReviewGroup],
    today: NaiveDate,
    what_if: &WhatIf,
) -> WhatIfResult {
    let mine: Vec<&ReviewGroup> = groups.iter().filter(|g| g.agent == what_if.agent).collect();
    let calls = mine.iter().map(|g| g.calls).sum();
    let cost_nanos = mine.iter().map(|g| g.cost_nanos).sum();
    // Each of the agent's groups repriced on `provider`, with the target model (or its own).
    let reprice = |provider: &str, model: Option<&str>| -> (Option<i64>, Option<String>) {
        let mut total = Some(0i64);
        let mut id = None;
        for group in &mine {
            let model = model.unwrap_or(&group.model);
            let pricing = config.provider_pricing(provider);
            let (cost, price_id) = price_many(
                table,
                provider,
                pricing,
                model,
                today,
                &group.usage,
                group.calls,
            );
            total = total.zip(cost).map(|(t, c)| t.saturating_add(c));
            id = id.or(price_id);
        }
        (total, id)
    };
    let (would_cost_nanos, priced_by) = match (&what_if.model, &what_if.provider) {
        // The model given, on the provider given, else on the first provider that prices it.
        (Some(model), provider) => {
            let candidates: Vec<String> = match provider {
                Some(p) => vec![p.clone()],
                None => config.providers.iter().map(|p| p.name.clone()).collect(),
            };
            candidates
                .iter()
                .map(|provider| reprice(provider, Some(model)))
                .find(|(cost, _)| cost.is_some())
                .unwrap_or((None, None))
        }
        (None, Some(provider)) => {
            let (cost, _) = reprice(provider, None);
            (cost, Some(format!("{provider} prices of the same models")))
        }
        (None, None) => (None, None),
    };
    WhatIfResult {
        what_if: what_if.clone(),
        calls,
        cost_nanos,
        would_cost_nanos,
        priced_by,
    }
}

impl Review {
    pub fn to_json(&self) -> Value {
        let findings: Vec<Value> = self
            .findings
            .iter()
            .map(|f| {
                json!({
                    "kind": f.kind,
                    "agents": f.agents,
                    "models": f.models,
                    "usd": f.nanos as f64 / 1e9,
                    "summary": f.summary,
                })
            })
            .collect();
        let what_if = self.what_if.as_ref().map(|w| {
            json!({
                "agent": w.what_if.agent,
                "model": w.what_if.model,
                "provider": w.what_if.provider,
                "calls": w.calls,
                "cost_usd": w.cost_nanos as f64 / 1e9,
                "would_cost_usd": w.would_cost_nanos.map(|n| n as f64 / 1e9),
                "priced_by": w.priced_by,
            })
        });
        json!({
            "period": self.period.to_json(),
            "currency": "USD",
            "calls": self.calls,
            "spend_by_route": self.spend_by_route.iter().map(|(r, n)| (r.clone(), json!(*n as f64 / 1e9))).collect::<serde_json::Map<_, _>>(),
            "findings": findings,
            "what_if": what_if,
        })
    }

    pub fn to_csv(&self) -> String {
        let cell = crate::report::csv_cell;
        let mut out = String::from("kind,agents,models,usd,summary\r\n");
        for f in &self.findings {
            let _ = write!(
                out,
                "{},{},{},{:.9},{}\r\n",
                f.kind,
                cell(&f.agents.join(" ")),
                cell(&f.models.join(" ")),
                f.nanos as f64 / 1e9,
                cell(&f.summary)
            );
        }
        out
    }

    pub fn to_text(&self, markdown: bool) -> String {
        let mut out = String::new();
        let head = format!(
            "meter review: {} {}, {} to {} ({})",
            self.period.kind.as_str(),
            self.period.label,
            self.period.first_day,
            self.period.last_day,
            self.timezone
        );
        if markdown {
            let _ = writeln!(out, "## {head}\n");
        } else {
            let _ = writeln!(out, "{head}");
        }
        let spend: Vec<String> = self
            .spend_by_route
            .iter()
            .map(|(route, nanos)| format!("{route} {}", format_usd(*nanos)))
            .collect();
        let _ = writeln!(
            out,
            "{} calls; spend by route: {}",
            group_thousands(self.calls),
            if spend.is_empty() {
                "none".to_string()
            } else {
                spend.join(", ")
            }
        );
        if self.calls == 0 {
            let _ = writeln!(
                out,
                "No calls recorded in {}: nothing to review.",
                self.period.label
            );
        } else if self.findings.is_empty() {
            let _ = writeln!(out, "No findings: the routing fits the measured usage.");
        } else {
            let _ = writeln!(out);
            for (i, f) in self.findings.iter().enumerate() {
                let bullet = if markdown {
                    "-".to_string()
                } else {
                    format!("{:>2}.", i + 1)
                };
                let _ = writeln!(
                    out,
                    "{bullet} [{}] {} at stake: {}",
                    f.kind,
                    format_usd(f.nanos),
                    f.summary
                );
            }
        }
        if let Some(w) = &self.what_if {
            let target = match (&w.what_if.model, &w.what_if.provider) {
                (Some(m), Some(p)) => format!("{p}/{m}"),
                (Some(m), None) => m.clone(),
                (None, Some(p)) => format!("provider {p}"),
                (None, None) => String::new(),
            };
            let _ = writeln!(out);
            let line = match w.would_cost_nanos {
                Some(would) => format!(
                    "What if {} used {target}: its {} calls cost {}; on {target} they would cost {} ({}{})",
                    w.what_if.agent,
                    group_thousands(w.calls),
                    format_usd(w.cost_nanos),
                    format_usd(would),
                    if would >= w.cost_nanos { "+" } else { "" },
                    format_usd(would - w.cost_nanos)
                ),
                None => format!("What if {} used {target}: no price for {target} in the rate table", w.what_if.agent),
            };
            let _ = writeln!(out, "{line}");
        }
        out
    }
}
