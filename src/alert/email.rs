//! The emails meter writes: budget alerts, the weekly report, the test email. Pure: data in,
//! subject + plain text + HTML out.
//!
//! Subjects start with `[meter]` and then the budget or the report, so an inbox sorts them
//! together. Each renderer builds one [`layout::Doc`] and renders it twice, so the plain-text
//! and HTML parts carry the same figures; all money goes through [`format_usd`], every time is
//! shown in the budget's or report's time zone with its abbreviation.

mod layout;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::money::{format_usd, group_thousands};
use crate::report::{format_tokens, Figures, Group, GroupBy, Period, PeriodKind, Report};
use layout::{code, one_line, strong, text, Doc, Span, Table};

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
    /// Calls in scope whose usage could not be read (not counted in `spend_nanos`, though the
    /// provider may bill them).
    pub unread_calls: u64,
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

/// The email for one budget alert: a threshold crossed or a forecast over the limit.
pub fn budget_alert(alert: &BudgetAlert) -> Rendered {
    let tz = alert.timezone;
    let limit = format_usd(alert.limit_nanos);
    let spend = format_usd(alert.spend_nanos);
    let used = share(alert.spend_nanos, alert.limit_nanos);
    let start = format_time(alert.period_start, tz);
    let end = format_time(alert.period_end, tz);
    let left = time_left(alert.now, alert.period_end);
    let period = format!("{} {}", alert.period_kind, alert.period_label);
    let prefix = format!("[meter] {} {}", alert.budget, alert.period_label);

    let mut doc = Doc::default();
    let subject = match alert.kind {
        AlertKind::Threshold(fraction) if fraction >= 1.0 => {
            let exactly_limit = percent(fraction) == "100%";
            let what = if exactly_limit {
                format!("limit of {limit} reached")
            } else {
                format!("{} of {limit} spent, over the limit", percent(fraction))
            };
            let refused = if alert.enforce {
                "; calls now refused with 429"
            } else {
                ""
            };
            doc.title(if exactly_limit {
                format!("Budget {}: limit reached", alert.budget)
            } else {
                format!(
                    "Budget {}: {} of the limit spent",
                    alert.budget,
                    percent(fraction)
                )
            });
            doc.para(vec![text(format!(
                "Spend for {} is {spend}: {used} of the {limit} limit for {period}, {left}.",
                alert.scope
            ))]);
            doc.para(if alert.enforce {
                vec![
                    strong("Calls in scope are now refused with HTTP 429"),
                    text(format!(" until the period ends at {end}.")),
                ]
            } else {
                vec![
                    text("Calls in scope are still forwarded: this budget alerts but does not enforce its limit ("),
                    code("enforce = false"),
                    text(")."),
                ]
            });
            format!("{prefix}: {what}{refused}")
        }
        AlertKind::Threshold(fraction) => {
            doc.title(format!(
                "Budget {}: {} of the limit spent",
                alert.budget,
                percent(fraction)
            ));
            doc.para(vec![text(format!(
                "Spend for {} is {spend}: {used} of the {limit} limit for {period}, {left}.",
                alert.scope
            ))]);
            format!("{prefix}: {} of {limit} spent", percent(fraction))
        }
        AlertKind::Forecast => {
            doc.title(format!("Budget {}: forecast over the limit", alert.budget));
            match alert.forecast_nanos {
                Some(forecast) => doc.para(vec![text(format!(
                    "At the current rate, spend for {} will reach {} by the end of {period} \
                     ({end}): {} of the {limit} limit. Spent so far: {spend} ({used}), {left}.",
                    alert.scope,
                    format_usd(forecast),
                    share(forecast, alert.limit_nanos),
                ))]),
                None => doc.para(vec![text(format!(
                    "At the current rate, spend for {} will pass the {limit} limit before the \
                     end of {period} ({end}). Spent so far: {spend} ({used}), {left}.",
                    alert.scope
                ))]),
            }
            match alert.forecast_nanos {
                Some(forecast) => format!(
                    "{prefix}: forecast {} over the {limit} limit",
                    format_usd(forecast)
                ),
                None => format!("{prefix}: forecast over the {limit} limit"),
            }
        }
    };

    let forecast = match alert.forecast_nanos {
        Some(forecast) => format!(
            "{} at the period's end ({} of the limit)",
            format_usd(forecast),
            share(forecast, alert.limit_nanos)
        ),
        None => "not enough data yet".to_string(),
    };
    let unpriced = match alert.unpriced_calls {
        0 => "none".to_string(),
        n => format!("{}, not counted in the spend", calls(n)),
    };
    let unread = match alert.unread_calls {
        0 => "none".to_string(),
        n => format!("{}, usage unknown, not counted in the spend", calls(n)),
    };
    let enforcement = match (alert.enforce, alert.spend_nanos >= alert.limit_nanos) {
        (true, true) => "on: calls in scope are refused with HTTP 429",
        (true, false) => "on: calls in scope will be refused with HTTP 429 once the limit is spent",
        (false, _) => "off: alerts only, calls are never refused",
    };
    doc.facts(vec![
        fact("Budget", &alert.budget),
        fact("Scope", &alert.scope),
        fact("Period", &period),
        fact("Starts", &start),
        fact("Ends", &format!("{end} ({left})")),
        fact("Spent", &spend),
        fact("Limit", &limit),
        fact("Used", &used),
        fact("Forecast", &forecast),
        fact("Unpriced calls", &unpriced),
        fact("Unread calls", &unread),
        fact("Enforcement", enforcement),
    ]);
    if alert.unpriced_calls > 0 {
        doc.warning(vec![
            text(format!(
                "{} in scope could not be priced and are not counted in the spend above; ",
                calls(alert.unpriced_calls)
            )),
            code("meter prices check"),
            text(" lists the models without a price."),
        ]);
    }
    if alert.unread_calls > 0 {
        doc.warning(vec![
            text(format!(
                "{} in scope ended before meter could read their usage (timeouts, clients that left); the provider may bill them, and they are not counted above.",
                calls(alert.unread_calls)
            )),
        ]);
    }
    for (heading, column, spenders) in [
        ("Top agents", "AGENT", &alert.top_agents),
        ("Top models", "MODEL", &alert.top_models),
    ] {
        doc.heading(heading);
        if spenders.is_empty() {
            doc.para(vec![text("No calls in scope yet this period.")]);
        } else {
            doc.table(spender_table(column, spenders, alert.spend_nanos));
        }
    }
    doc.para(vec![
        text("More: "),
        code("meter budget status"),
        text(" for every budget, "),
        code("meter report --by agent,model"),
        text(" for the breakdown."),
    ]);
    doc.footer(vec![text(format!(
        "Sent by meter at {} to the notify list of budget {}.",
        format_time(alert.now, tz),
        alert.budget
    ))]);
    rendered(subject, &doc)
}

/// The weekly email: the week's report and the biggest changes against the week before.
pub fn weekly_report(weekly: &Weekly) -> Rendered {
    let report = &weekly.report;
    let tz: Tz = report.timezone.parse().unwrap_or(Tz::UTC);
    let period = &report.period;
    let label = &period.label;
    let totals = &report.totals;
    let cost = format_usd(totals.cost_nanos);
    let range = format!(
        "{} to {} ({})",
        period.first_day, period.last_day, report.timezone
    );
    let previous = report.previous.as_ref();
    let before_label = previous.map_or("the week before".to_string(), |(p, _)| p.label.clone());

    let subject = if totals.requests == 0 {
        match previous {
            Some((p, f)) if f.cost_nanos > 0 => format!(
                "[meter] weekly report {label}: no calls (was {} in {})",
                format_usd(f.cost_nanos),
                p.label
            ),
            _ => format!("[meter] weekly report {label}: no calls"),
        }
    } else {
        match compare(totals.cost_nanos, previous) {
            Some(comparison) => format!("[meter] weekly report {label}: {cost} ({comparison})"),
            None => format!("[meter] weekly report {label}: {cost}"),
        }
    };

    let mut doc = Doc::default();
    doc.title(format!("meter weekly report {label}"));
    if totals.requests == 0 {
        doc.para(vec![text(format!(
            "No calls this week ({label}, {range})."
        ))]);
    } else {
        doc.para(vec![text(format!(
            "Week {label}, {range}: {cost} over {}.",
            calls(totals.requests)
        ))]);
    }
    if let Some((p, f)) = previous {
        let line = if f.requests == 0 && totals.requests == 0 {
            format!("The week before ({}): no calls either.", p.label)
        } else {
            let change = totals.cost_nanos - f.cost_nanos;
            let percent = if f.cost_nanos > 0 {
                change_percent(change as f64 / f.cost_nanos as f64)
            } else if change > 0 {
                "new spend".to_string()
            } else {
                "unchanged".to_string()
            };
            format!(
                "The week before ({}): {} over {}; change {} ({percent}).",
                p.label,
                format_usd(f.cost_nanos),
                calls(f.requests),
                signed_usd(change)
            )
        };
        doc.para(vec![text(line)]);
    }
    if let Some(forecast) = report.forecast_nanos {
        doc.para(vec![text(format!(
            "The week is still open ({} elapsed): forecast {} by its end.",
            percent(report.elapsed),
            format_usd(forecast)
        ))]);
    }

    if totals.requests > 0 {
        doc.heading("Totals");
        doc.facts(totals_facts(totals));
        for by in [GroupBy::Agent, GroupBy::Provider, GroupBy::Model] {
            if let Some(table) = spend_table(report, by) {
                doc.heading(format!("Spend by {}", by.column()));
                doc.table(table);
            }
        }
    }

    if previous.is_some() || !weekly.previous_groups.is_empty() {
        doc.heading(format!("Biggest changes vs {before_label}"));
        let changes = changes(&report.groups, &weekly.previous_groups);
        if changes.is_empty() {
            let columns: Vec<&str> = report.by.iter().map(|b| b.column()).collect();
            doc.para(vec![text(format!(
                "No change in spend by {}.",
                columns.join(", ")
            ))]);
        } else {
            let mut header: Vec<String> = report
                .by
                .iter()
                .map(|b| b.column().to_uppercase())
                .collect();
            header.extend(["BEFORE", "NOW", "CHANGE"].map(str::to_string));
            let rows = changes
                .iter()
                .take(TOP_CHANGES)
                .map(|change| {
                    let mut row = change.keys.clone();
                    row.resize(report.by.len(), String::new());
                    row.push(change.before.map_or("-".to_string(), format_usd));
                    row.push(change.now.map_or("-".to_string(), format_usd));
                    row.push(change.describe());
                    row
                })
                .collect();
            doc.table(Table {
                header,
                rows,
                keys: report.by.len(),
                total: None,
            });
            if changes.len() > TOP_CHANGES {
                let more = changes.len() - TOP_CHANGES;
                doc.para(vec![text(format!(
                    "{more} smaller {} not shown.",
                    if more == 1 { "change" } else { "changes" }
                ))]);
            }
        }
    }

    let warnings = flagged_warnings(report);
    if !warnings.is_empty() {
        doc.heading("Usage warnings");
        for warning in warnings {
            doc.warning(warning);
        }
    }
    doc.para(vec![
        text("Full report: "),
        code(report_command(period)),
        text("."),
    ]);
    doc.footer(vec![text(format!(
        "Sent by meter at {}, as scheduled in [report.weekly].",
        format_time(weekly.now, tz)
    ))]);
    rendered(subject, &doc)
}

/// `meter alert test`: says where it came from and how meter is configured to send.
pub fn test_email(now: DateTime<Utc>, server: &str) -> Rendered {
    let sent = now.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let mut doc = Doc::default();
    doc.title("meter test email");
    doc.para(vec![
        text("This is a test email from meter, sent at "),
        strong(sent),
        text(" through "),
        strong(server),
        text("."),
    ]);
    doc.para(vec![text(
        "Budget alerts and the weekly report will arrive like this: from the same sender, \
         through the same server, as plain text and HTML.",
    )]);
    doc.para(vec![
        text("If it landed in spam, allow the sender's address. To change the server, edit the "),
        code("[smtp]"),
        text(" section of meter.toml and run "),
        code("meter alert test"),
        text(" again."),
    ]);
    doc.footer(vec![text("Sent by "), code("meter alert test"), text(".")]);
    rendered("[meter] test email".to_string(), &doc)
}

/// The biggest changes shown in the weekly email.
const TOP_CHANGES: usize = 5;
/// Rows per "spend by" table before the rest is summed into one.
const TOP_ROWS: usize = 10;

fn rendered(subject: String, doc: &Doc) -> Rendered {
    let subject = one_line(&subject);
    Rendered {
        text: doc.text(),
        html: doc.html(&subject),
        subject,
    }
}

fn fact(label: &str, value: &str) -> (String, String) {
    (label.to_string(), value.to_string())
}

/// `2026-12-01 00:00 CET`: an instant in `tz`, with the zone's abbreviation.
fn format_time(instant: DateTime<Utc>, tz: Tz) -> String {
    instant
        .with_timezone(&tz)
        .format("%Y-%m-%d %H:%M %Z")
        .to_string()
}

/// `5 days 13 hours left`, `2 hours 5 minutes left`, `period ended`.
fn time_left(now: DateTime<Utc>, end: DateTime<Utc>) -> String {
    if end <= now {
        return "period ended".to_string();
    }
    let minutes = (end - now).num_minutes();
    let (days, hours, mins) = (minutes / 1440, minutes % 1440 / 60, minutes % 60);
    match (days, hours, mins) {
        (0, 0, 0) => "less than a minute left".to_string(),
        (0, 0, m) => format!("{} left", plural(m, "minute")),
        (0, h, 0) => format!("{} left", plural(h, "hour")),
        (0, h, m) => format!("{} {} left", plural(h, "hour"), plural(m, "minute")),
        (d, 0, _) => format!("{} left", plural(d, "day")),
        (d, h, _) => format!("{} {} left", plural(d, "day"), plural(h, "hour")),
    }
}

fn plural(count: i64, unit: &str) -> String {
    if count == 1 {
        format!("1 {unit}")
    } else {
        format!("{count} {unit}s")
    }
}

/// `1 call`, `1,204 calls`.
fn calls(count: u64) -> String {
    if count == 1 {
        "1 call".to_string()
    } else {
        format!("{} calls", group_thousands(count))
    }
}

/// A fraction as a percentage to a tenth, without a useless `.0`: `80%`, `112.5%`, `<0.1%`.
fn percent(fraction: f64) -> String {
    if !fraction.is_finite() {
        return "-".to_string();
    }
    let value = fraction * 100.0;
    let tenths = (value * 10.0).round() / 10.0;
    if tenths == 0.0 {
        return if value > 0.0 { "<0.1%" } else { "0%" }.to_string();
    }
    let text = format!("{tenths:.1}");
    format!("{}%", text.strip_suffix(".0").unwrap_or(&text))
}

/// `part` as a share of `whole`, or `-` when there is no whole to share.
fn share(part: i64, whole: i64) -> String {
    if whole <= 0 {
        "-".to_string()
    } else {
        percent(part as f64 / whole as f64)
    }
}

/// A signed change: whole percent from 10% up (`+12%`, `-35%`), a tenth below (`+4.2%`).
fn change_percent(fraction: f64) -> String {
    if !fraction.is_finite() {
        return "-".to_string();
    }
    let value = fraction * 100.0;
    if value.abs() >= 9.95 {
        format!("{value:+.0}%")
    } else {
        let text = format!("{value:+.1}");
        let text = text.strip_suffix(".0").unwrap_or(&text);
        format!("{}%", if text == "-0" { "+0" } else { text })
    }
}

/// `+$10.00`, `-$3.00`, `$0.00`.
fn signed_usd(nanos: i64) -> String {
    if nanos > 0 {
        format!("+{}", format_usd(nanos))
    } else {
        format_usd(nanos)
    }
}

/// How this week's cost compares with the week before's, for the subject.
fn compare(cost: i64, previous: Option<&(Period, Figures)>) -> Option<String> {
    let (period, figures) = previous?;
    let before = figures.cost_nanos;
    Some(if cost == before || (before <= 0 && cost <= 0) {
        format!("unchanged vs {}", period.label)
    } else if before <= 0 {
        format!(
            "new spend, {} in {}",
            format_usd(before.max(0)),
            period.label
        )
    } else {
        format!(
            "{} vs {}",
            change_percent((cost - before) as f64 / before as f64),
            period.label
        )
    })
}

fn spender_table(column: &str, spenders: &[Spender], total: i64) -> Table {
    Table {
        header: [column, "SPEND", "SHARE", "CALLS"]
            .map(str::to_string)
            .to_vec(),
        rows: spenders
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    format_usd(s.cost_nanos),
                    share(s.cost_nanos, total),
                    group_thousands(s.requests),
                ]
            })
            .collect(),
        keys: 1,
        total: None,
    }
}

fn totals_facts(totals: &Figures) -> Vec<(String, String)> {
    let tokens = |n: u64| group_thousands(n);
    let mut cache_write = tokens(totals.cache_write_tokens);
    if totals.cache_write_1h_tokens > 0 {
        cache_write.push_str(&format!(
            " (of which {} with a 1-hour lifetime)",
            tokens(totals.cache_write_1h_tokens)
        ));
    }
    let mut output = tokens(totals.output_tokens);
    if totals.reasoning_tokens > 0 {
        output.push_str(&format!(
            " (of which {} reasoning)",
            tokens(totals.reasoning_tokens)
        ));
    }
    let mut facts = vec![
        fact("Requests", &group_thousands(totals.requests)),
        fact(
            "Errors",
            &format!(
                "{} ({} of requests)",
                group_thousands(totals.errors),
                share(totals.errors as i64, totals.requests as i64)
            ),
        ),
        fact("Input tokens", &tokens(totals.input_tokens)),
        fact("Cache read tokens", &tokens(totals.cache_read_tokens)),
        fact("Cache write tokens", &cache_write),
        fact("Output tokens", &output),
        fact("Cost", &format_usd(totals.cost_nanos)),
    ];
    if let Some(hits) = totals.cache_hit_share() {
        facts.push(fact(
            "Cache hits",
            &format!("{} of prompt tokens", percent(hits)),
        ));
    }
    facts
}

/// The report's groups summed by one column (models named `provider/model` when the report
/// has the provider), most spend first, the tail folded into one row, the total last.
fn spend_table(report: &Report, by: GroupBy) -> Option<Table> {
    let index = report.by.iter().position(|b| *b == by)?;
    let provider = report.by.iter().position(|b| *b == GroupBy::Provider);
    let mut sums: BTreeMap<String, Figures> = BTreeMap::new();
    for group in &report.groups {
        let key = group.keys.get(index).cloned().unwrap_or_default();
        let name = match (by, provider.and_then(|i| group.keys.get(i))) {
            (GroupBy::Model, Some(provider)) => format!("{provider}/{key}"),
            _ => key,
        };
        sums.entry(name).or_default().add(&group.figures);
    }
    let mut sums: Vec<(String, Figures)> = sums.into_iter().collect();
    sums.sort_by(|(a_name, a), (b_name, b)| {
        b.cost_nanos
            .cmp(&a.cost_nanos)
            .then(b.requests.cmp(&a.requests))
            .then(a_name.cmp(b_name))
    });
    let total = report.totals.cost_nanos;
    let row = |name: String, f: &Figures| {
        vec![
            name,
            group_thousands(f.requests),
            format_tokens(
                f.input_tokens + f.cache_read_tokens + f.cache_write_tokens + f.output_tokens,
            ),
            format_usd(f.cost_nanos),
            share(f.cost_nanos, total),
        ]
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut rest = Figures::default();
    for (i, (name, figures)) in sums.iter().enumerate() {
        if i < TOP_ROWS {
            rows.push(row(name.clone(), figures));
        } else {
            rest.add(figures);
        }
    }
    if sums.len() > TOP_ROWS {
        rows.push(row(format!("{} others", sums.len() - TOP_ROWS), &rest));
    }
    Some(Table {
        header: [
            by.column().to_uppercase().as_str(),
            "CALLS",
            "TOKENS",
            "COST",
            "SHARE",
        ]
        .map(str::to_string)
        .to_vec(),
        rows,
        keys: 1,
        total: Some(row("TOTAL".to_string(), &report.totals)),
    })
}

/// One group's cost this week against the week before.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    keys: Vec<String>,
    /// None: the group had no calls the week before (new).
    before: Option<i64>,
    /// None: the group has no calls this week (gone).
    now: Option<i64>,
}

impl Change {
    fn delta(&self) -> i64 {
        self.now.unwrap_or(0) - self.before.unwrap_or(0)
    }

    /// `+$300.00 (+300%)`, `+$34.55 (new)`, `-$249.98 (gone)`.
    fn describe(&self) -> String {
        let delta = signed_usd(self.delta());
        match (self.before, self.now) {
            (None, _) => format!("{delta} (new)"),
            (_, None) => format!("{delta} (gone)"),
            (Some(before), Some(_)) if before > 0 => format!(
                "{delta} ({})",
                change_percent(self.delta() as f64 / before as f64)
            ),
            _ => delta,
        }
    }
}

/// Every group whose cost moved, or that appeared or disappeared, biggest move first.
fn changes(current: &[Group], previous: &[Group]) -> Vec<Change> {
    let mut by_keys: BTreeMap<&[String], (Option<i64>, Option<i64>)> = BTreeMap::new();
    for group in previous {
        let entry = by_keys.entry(&group.keys).or_default();
        entry.0 = Some(entry.0.unwrap_or(0) + group.figures.cost_nanos);
    }
    for group in current {
        let entry = by_keys.entry(&group.keys).or_default();
        entry.1 = Some(entry.1.unwrap_or(0) + group.figures.cost_nanos);
    }
    let mut changes: Vec<Change> = by_keys
        .into_iter()
        .map(|(keys, (before, now))| Change {
            keys: keys.to_vec(),
            before,
            now,
        })
        .filter(|c| c.delta() != 0 || c.before.is_none() || c.now.is_none())
        .collect();
    // BTreeMap order already sorts equal moves by their keys; the sort is stable.
    changes.sort_by_key(|c| std::cmp::Reverse(c.delta().unsigned_abs()));
    changes
}

/// The report's unpriced, estimated and unreadable usage, one warning each.
fn flagged_warnings(report: &Report) -> Vec<Vec<Span>> {
    let flagged = &report.flagged;
    let mut warnings = Vec::new();
    let models = |list: &[(String, u64)]| {
        let mut named: Vec<String> = list
            .iter()
            .take(5)
            .map(|(model, n)| format!("{model} ({})", group_thousands(*n)))
            .collect();
        if list.len() > 5 {
            named.push(format!("and {} more", list.len() - 5));
        }
        named.join(", ")
    };
    let total = |list: &[(String, u64)]| calls(list.iter().map(|(_, n)| n).sum());
    if !flagged.unpriced.is_empty() {
        warnings.push(vec![
            text(format!(
                "{} could not be priced and are not in the cost (see ",
                total(&flagged.unpriced)
            )),
            code("meter prices check"),
            text(format!("): {}", models(&flagged.unpriced))),
        ]);
    }
    if !flagged.estimated.is_empty() {
        warnings.push(vec![text(format!(
            "{} with estimated usage (counted locally with a tokenizer): {}",
            total(&flagged.estimated),
            models(&flagged.estimated)
        ))]);
    }
    if !flagged.missing.is_empty() {
        warnings.push(vec![text(format!(
            "{} with unreadable usage (no tokens or cost counted): {}",
            total(&flagged.missing),
            models(&flagged.missing)
        ))]);
    }
    warnings
}

/// The `meter report` command that prints the same period.
fn report_command(period: &Period) -> String {
    match period.kind {
        PeriodKind::Week | PeriodKind::Month | PeriodKind::Quarter => {
            format!("meter report --{} {}", period.kind.as_str(), period.label)
        }
        // Custom ranges and single days.
        _ => format!(
            "meter report --since {} --until {}",
            period.first_day, period.last_day
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::report::Flagged;

    const DOLLAR: i64 = 1_000_000_000;
    const CENT: i64 = 10_000_000;

    fn utc(value: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(value)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn spender(name: &str, cost_nanos: i64, requests: u64) -> Spender {
        Spender {
            name: name.to_string(),
            cost_nanos,
            requests,
        }
    }

    /// team-monthly, November 2026 in Paris (CET), 80% threshold, $412.30 of $500.00.
    fn alert() -> BudgetAlert {
        BudgetAlert {
            budget: "team-monthly".to_string(),
            scope: "agent=coder".to_string(),
            kind: AlertKind::Threshold(0.8),
            period_kind: "month",
            period_label: "2026-11".to_string(),
            period_start: utc("2026-10-31T23:00:00Z"),
            period_end: utc("2026-11-30T23:00:00Z"),
            timezone: chrono_tz::Europe::Paris,
            spend_nanos: 41_230 * CENT,
            limit_nanos: 500 * DOLLAR,
            forecast_nanos: Some(61_240 * CENT),
            unpriced_calls: 0,
            unread_calls: 0,
            enforce: false,
            top_agents: vec![
                spender("coder", 300 * DOLLAR, 1_204),
                spender("reviewer", 11_230 * CENT, 87),
            ],
            top_models: vec![
                spender("openai/gpt-4o", 250 * DOLLAR, 900),
                spender("anthropic/claude-sonnet-4", 16_230 * CENT, 391),
            ],
            now: utc("2026-11-25T10:00:00Z"),
        }
    }

    /// The cells of the first line of `text` after `heading` whose first cell is `first`.
    fn row(text: &str, heading: &str, first: &str) -> Vec<String> {
        let after = &text[text.find(heading).unwrap_or_else(|| panic!("{heading}"))..];
        let line = after
            .lines()
            .find(|line| line.split("  ").next() == Some(first))
            .unwrap_or_else(|| panic!("no row {first:?} under {heading:?} in\n{text}"));
        line.split("  ")
            .map(str::trim)
            .filter(|cell| !cell.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The HTML without its tags (entities kept), to find text that spans a `<strong>`.
    fn strip_tags(html: &str) -> String {
        let mut out = String::new();
        let mut in_tag = false;
        for c in html.chars() {
            match c {
                '<' => in_tag = true,
                '>' if in_tag => in_tag = false,
                _ if !in_tag => out.push(c),
                _ => {}
            }
        }
        out
    }

    /// Each needle is in the text, and (escaped) in the HTML.
    fn assert_both(rendered: &Rendered, needles: &[&str]) {
        for needle in needles {
            assert!(
                rendered.text.contains(needle),
                "text lacks {needle:?}:\n{}",
                rendered.text
            );
            let escaped = layout::escape_html(needle);
            assert!(
                strip_tags(&rendered.html).contains(&escaped),
                "html lacks {escaped:?}:\n{}",
                rendered.html
            );
        }
    }

    #[test]
    fn threshold_alert_says_budget_spend_limit_period_and_spenders() {
        let email = budget_alert(&alert());
        assert_eq!(
            email.subject,
            "[meter] team-monthly 2026-11: 80% of $500.00 spent"
        );
        assert_both(
            &email,
            &[
                "Budget team-monthly: 80% of the limit spent",
                "Spend for agent=coder is $412.30: 82.5% of the $500.00 limit for month 2026-11, \
                 5 days 13 hours left.",
                "2026-11-01 00:00 CET",
                "2026-12-01 00:00 CET (5 days 13 hours left)",
                "$612.40 at the period's end (122.5% of the limit)",
                "off: alerts only, calls are never refused",
                "Top agents",
                "Top models",
                "meter budget status",
                "meter report --by agent,model",
                "Sent by meter at 2026-11-25 11:00 CET",
            ],
        );
        let facts: Vec<&str> = email
            .text
            .lines()
            .filter(|l| {
                l.starts_with("Spent:") || l.starts_with("Limit:") || l.starts_with("Used:")
            })
            .collect();
        assert_eq!(
            facts,
            [
                "Spent:           $412.30",
                "Limit:           $500.00",
                "Used:            82.5%"
            ]
        );
        assert!(email.text.contains("Unpriced calls:  none"));
        assert!(!email.text.contains("Warning:"));
        assert!(!email.html.contains("Warning:"));
        // Share of the budget's spend: $300.00 of $412.30.
        assert_eq!(
            row(&email.text, "Top agents", "AGENT"),
            ["AGENT", "SPEND", "SHARE", "CALLS"]
        );
        assert_eq!(
            row(&email.text, "Top agents", "coder"),
            ["coder", "$300.00", "72.8%", "1,204"]
        );
        assert_eq!(
            row(&email.text, "Top agents", "reviewer"),
            ["reviewer", "$112.30", "27.2%", "87"]
        );
        assert_eq!(
            row(&email.text, "Top models", "anthropic/claude-sonnet-4"),
            ["anthropic/claude-sonnet-4", "$162.30", "39.4%", "391"]
        );
        assert!(email.html.contains(">openai/gpt-4o</td>"));
        assert!(email.html.contains(">60.6%</td>"));
        assert!(email.html.contains(">1,204</td>"));
        assert!(email
            .html
            .contains("<title>[meter] team-monthly 2026-11: 80% of $500.00 spent</title>"));
    }

    #[test]
    fn limit_reached_says_so_and_whether_calls_are_refused() {
        let mut reached = alert();
        reached.kind = AlertKind::Threshold(1.0);
        reached.spend_nanos = 501 * DOLLAR;
        let email = budget_alert(&reached);
        assert_eq!(
            email.subject,
            "[meter] team-monthly 2026-11: limit of $500.00 reached"
        );
        assert_both(
            &email,
            &[
                "Budget team-monthly: limit reached",
                "$501.00: 100.2% of the $500.00 limit",
                "Calls in scope are still forwarded",
                "enforce = false",
            ],
        );
        assert!(!email.text.contains("429"));

        reached.enforce = true;
        let email = budget_alert(&reached);
        assert_eq!(
            email.subject,
            "[meter] team-monthly 2026-11: limit of $500.00 reached; calls now refused with 429"
        );
        assert_both(
            &email,
            &[
                "Calls in scope are now refused with HTTP 429 until the period ends at \
                 2026-12-01 00:00 CET.",
                "on: calls in scope are refused with HTTP 429",
            ],
        );
        assert!(email
            .html
            .contains("<strong>Calls in scope are now refused with HTTP 429</strong>"));

        reached.kind = AlertKind::Threshold(1.5);
        reached.spend_nanos = 750 * DOLLAR;
        assert_eq!(
            budget_alert(&reached).subject,
            "[meter] team-monthly 2026-11: 150% of $500.00 spent, over the limit; calls now refused with 429"
        );

        // Enforced but not yet reached (an 80% alert): said as a future.
        let mut early = alert();
        early.enforce = true;
        let email = budget_alert(&early);
        assert_eq!(
            email.subject,
            "[meter] team-monthly 2026-11: 80% of $500.00 spent"
        );
        assert!(email.text.contains(
            "Enforcement:     on: calls in scope will be refused with HTTP 429 once the limit is spent"
        ));
    }

    #[test]
    fn forecast_alert_and_a_missing_forecast() {
        let mut forecast = alert();
        forecast.kind = AlertKind::Forecast;
        forecast.spend_nanos = 300 * DOLLAR;
        let email = budget_alert(&forecast);
        assert_eq!(
            email.subject,
            "[meter] team-monthly 2026-11: forecast $612.40 over the $500.00 limit"
        );
        assert_both(
            &email,
            &[
                "Budget team-monthly: forecast over the limit",
                "will reach $612.40 by the end of month 2026-11 (2026-12-01 00:00 CET): 122.5% of \
                 the $500.00 limit. Spent so far: $300.00 (60%), 5 days 13 hours left.",
            ],
        );

        forecast.forecast_nanos = None;
        let email = budget_alert(&forecast);
        assert_eq!(
            email.subject,
            "[meter] team-monthly 2026-11: forecast over the $500.00 limit"
        );
        assert!(email.text.contains("Forecast:        not enough data yet"));
        assert!(email.html.contains(">not enough data yet</td>"));

        let mut threshold = alert();
        threshold.forecast_nanos = None;
        assert_both(&budget_alert(&threshold), &["not enough data yet"]);
    }

    #[test]
    fn unpriced_calls_get_a_warning_and_empty_spenders_read_sensibly() {
        let mut unpriced = alert();
        unpriced.unpriced_calls = 1_234;
        unpriced.top_agents.clear();
        unpriced.top_models.clear();
        let email = budget_alert(&unpriced);
        assert!(email
            .text
            .contains("Unpriced calls:  1,234 calls, not counted in the spend"));
        assert!(email.text.contains(
            "Warning: 1,234 calls in scope could not be priced and are not counted in the spend \
             above; `meter prices check` lists the models without a price."
        ));
        assert!(email
            .html
            .contains("<strong>Warning:</strong> 1,234 calls in scope could not be priced"));
        assert_eq!(
            email
                .text
                .matches("No calls in scope yet this period.")
                .count(),
            2
        );
        assert_eq!(
            email
                .html
                .matches("No calls in scope yet this period.")
                .count(),
            2
        );
        assert!(!email.text.contains("AGENT"));

        unpriced.unpriced_calls = 1;
        assert!(budget_alert(&unpriced)
            .text
            .contains("Warning: 1 call in scope"));
    }

    #[test]
    fn every_interpolated_string_is_escaped_in_html() {
        let mut hostile = alert();
        hostile.budget = "<script>alert(1)</script>".to_string();
        hostile.scope = "agent=R&D \"ops\"".to_string();
        hostile.top_agents = vec![spender("<img src=x onerror=y>", 300 * DOLLAR, 1)];
        hostile.top_models = vec![spender("a&b/<model>", 300 * DOLLAR, 1)];
        let email = budget_alert(&hostile);
        assert!(!email.html.contains("<script>"));
        assert!(!email.html.contains("<img"));
        assert!(!email.html.contains("<model>"));
        assert!(!email.html.contains("R&D"));
        assert!(email.html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(email.html.contains("agent=R&amp;D &quot;ops&quot;"));
        assert!(email.html.contains("&lt;img src=x onerror=y&gt;"));
        assert!(email.html.contains("a&amp;b/&lt;model&gt;"));
        // The plain text says it as it is.
        assert!(email
            .text
            .contains("Budget <script>alert(1)</script>: 80% of the limit spent"));
        assert!(email.text.contains("Spend for agent=R&D \"ops\" is"));
        assert_eq!(
            email.subject,
            "[meter] <script>alert(1)</script> 2026-11: 80% of $500.00 spent"
        );
        // A newline cannot start another header.
        hostile.budget = "a\r\nBcc: x@example.com".to_string();
        let subject = budget_alert(&hostile).subject;
        assert!(!subject.contains(['\r', '\n']), "{subject:?}");
    }

    fn figures(cost_nanos: i64, requests: u64) -> Figures {
        Figures {
            requests,
            errors: requests / 100,
            input_tokens: requests * 1_000,
            cache_read_tokens: requests * 500,
            output_tokens: requests * 200,
            cost_nanos,
            ..Figures::default()
        }
    }

    fn group(agent: &str, provider: &str, model: &str, cost_nanos: i64, requests: u64) -> Group {
        Group {
            keys: vec![agent.into(), provider.into(), model.into()],
            figures: figures(cost_nanos, requests),
            latency: Vec::new(),
            ttfb: Vec::new(),
        }
    }

    fn paris() -> Tz {
        chrono_tz::Europe::Paris
    }

    fn week(n: u32) -> Period {
        Period::week(2026, n, paris()).unwrap()
    }

    fn report(groups: Vec<Group>, previous: Option<(Period, Figures)>, flagged: Flagged) -> Report {
        Report::new(
            week(47),
            vec![GroupBy::Agent, GroupBy::Provider, GroupBy::Model],
            groups,
            previous,
            flagged,
            utc("2026-11-23T08:00:00Z"),
            "Europe/Paris".to_string(),
        )
    }

    /// Week 47: $1,234.56; the week before $1,100.00.
    fn weekly() -> Weekly {
        let groups = vec![
            group("coder", "openai", "gpt-4o", 600 * DOLLAR, 1_000),
            group("coder", "anthropic", "claude-sonnet-4", 400 * DOLLAR, 500),
            group("reviewer", "openai", "gpt-4o", 200 * DOLLAR, 300),
            group("reviewer", "ollama", "llama3", 0, 100),
            group("batch", "openai", "gpt-4o-mini", 3_455 * CENT, 2_000),
            group("ops", "openai", "gpt-4o-mini", CENT, 3),
        ];
        let previous_groups = vec![
            group("coder", "openai", "gpt-4o", 500 * DOLLAR, 900),
            group("coder", "anthropic", "claude-sonnet-4", 100 * DOLLAR, 120),
            group("reviewer", "openai", "gpt-4o", 250 * DOLLAR, 400),
            group("reviewer", "ollama", "llama3", 0, 90),
            group("old", "openai", "gpt-4", 24_998 * CENT, 100),
            group("ops", "openai", "gpt-4o-mini", 2 * CENT, 5),
        ];
        let flagged = Flagged {
            unpriced: vec![("mystery-model".to_string(), 7)],
            estimated: vec![("gpt-4o".to_string(), 2)],
            missing: vec![("llama3".to_string(), 1)],
        };
        Weekly {
            report: report(
                groups,
                Some((week(46), figures(1_100 * DOLLAR, 1_615))),
                flagged,
            ),
            previous_groups,
            now: utc("2026-11-23T08:00:00Z"),
        }
    }

    #[test]
    fn weekly_report_subject_totals_and_spend_tables() {
        let email = weekly_report(&weekly());
        assert_eq!(
            email.subject,
            "[meter] weekly report 2026-W47: $1,234.56 (+12% vs 2026-W46)"
        );
        assert_both(
            &email,
            &[
                "meter weekly report 2026-W47",
                "Week 2026-W47, 2026-11-16 to 2026-11-22 (Europe/Paris): $1,234.56 over 3,903 calls.",
                "The week before (2026-W46): $1,100.00 over 1,615 calls; change +$134.56 (+12%).",
                "Spend by agent",
                "Spend by provider",
                "Spend by model",
                "meter report --week 2026-W47",
                "Sent by meter at 2026-11-23 09:00 CET",
            ],
        );
        let text = &email.text;
        assert!(text.contains("Requests:            3,903\n"));
        assert!(text.contains("Errors:              39 (1% of requests)\n"));
        assert!(text.contains("Input tokens:        3,903,000\n"));
        assert!(text.contains("Cache read tokens:   1,951,500\n"));
        assert!(text.contains("Output tokens:       780,600\n"));
        assert!(text.contains("Cost:                $1,234.56\n"));
        // 1,951,500 of 5,854,500 prompt tokens.
        assert!(text.contains("Cache hits:          33.3% of prompt tokens\n"));
        assert!(email.html.contains(">3,903</td>"));
        assert!(email.html.contains(">33.3% of prompt tokens</td>"));

        assert_eq!(
            row(text, "Spend by agent", "AGENT"),
            ["AGENT", "CALLS", "TOKENS", "COST", "SHARE"]
        );
        assert_eq!(
            row(text, "Spend by agent", "coder"),
            ["coder", "1,500", "2.5M", "$1,000.00", "81%"]
        );
        assert_eq!(
            row(text, "Spend by agent", "reviewer"),
            ["reviewer", "400", "680.0k", "$200.00", "16.2%"]
        );
        assert_eq!(
            row(text, "Spend by agent", "TOTAL"),
            ["TOTAL", "3,903", "6.6M", "$1,234.56", "100%"]
        );
        assert_eq!(
            row(text, "Spend by provider", "openai"),
            ["openai", "3,303", "5.6M", "$834.56", "67.6%"]
        );
        assert_eq!(
            row(text, "Spend by provider", "ollama"),
            ["ollama", "100", "170.0k", "$0.00", "0%"]
        );
        assert_eq!(
            row(text, "Spend by model", "openai/gpt-4o"),
            ["openai/gpt-4o", "1,300", "2.2M", "$800.00", "64.8%"]
        );
        assert_eq!(
            row(text, "Spend by model", "openai/gpt-4o-mini"),
            ["openai/gpt-4o-mini", "2,003", "3.4M", "$34.56", "2.8%"]
        );
        // Tables are in most-spend-first order.
        let agents =
            &text[text.find("Spend by agent").unwrap()..text.find("Spend by provider").unwrap()];
        let order: Vec<usize> = ["coder", "reviewer", "batch", "ops"]
            .iter()
            .map(|a| agents.find(&format!("\n{a} ")).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{agents}");
        assert!(email.html.contains(">openai/gpt-4o-mini</td>"));
        assert!(email.html.contains(">$834.56</td>"));
        assert!(email.html.contains(">67.6%</td>"));
    }

    #[test]
    fn weekly_report_biggest_changes_in_order_with_new_and_gone() {
        let email = weekly_report(&weekly());
        let text = &email.text;
        let section = &text[text.find("Biggest changes vs 2026-W46").unwrap()
            ..text.find("Usage warnings").unwrap()];
        let lines: Vec<Vec<String>> = section
            .lines()
            .skip(2)
            .take_while(|l| !l.is_empty())
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .collect();
        assert_eq!(
            lines,
            [
                vec!["AGENT", "PROVIDER", "MODEL", "BEFORE", "NOW", "CHANGE"],
                vec![
                    "coder",
                    "anthropic",
                    "claude-sonnet-4",
                    "$100.00",
                    "$400.00",
                    "+$300.00 (+300%)"
                ],
                vec!["old", "openai", "gpt-4", "$249.98", "-", "-$249.98 (gone)"],
                vec![
                    "coder",
                    "openai",
                    "gpt-4o",
                    "$500.00",
                    "$600.00",
                    "+$100.00 (+20%)"
                ],
                vec![
                    "reviewer",
                    "openai",
                    "gpt-4o",
                    "$250.00",
                    "$200.00",
                    "-$50.00 (-20%)"
                ],
                vec![
                    "batch",
                    "openai",
                    "gpt-4o-mini",
                    "-",
                    "$34.55",
                    "+$34.55 (new)"
                ],
            ]
        );
        // ops moved by a cent: the sixth change; the unchanged local model is not a change.
        assert!(section.contains("1 smaller change not shown."));
        assert!(!section.contains("llama3"));
        assert_both(
            &email,
            &[
                "+$300.00 (+300%)",
                "-$249.98 (gone)",
                "+$34.55 (new)",
                "1 smaller change not shown.",
            ],
        );
        let html = &email.html;
        let first = html.find("+$300.00 (+300%)").unwrap();
        let second = html.find("-$249.98 (gone)").unwrap();
        let last = html.find("+$34.55 (new)").unwrap();
        assert!(first < second && second < last);
    }

    #[test]
    fn weekly_report_usage_warnings() {
        let email = weekly_report(&weekly());
        assert!(email.text.contains(
            "Warning: 7 calls could not be priced and are not in the cost (see `meter prices \
             check`): mystery-model (7)"
        ));
        assert!(email.text.contains(
            "Warning: 2 calls with estimated usage (counted locally with a tokenizer): gpt-4o (2)"
        ));
        assert!(email.text.contains(
            "Warning: 1 call with unreadable usage (no tokens or cost counted): llama3 (1)"
        ));
        assert_eq!(email.html.matches("<strong>Warning:</strong>").count(), 3);
        assert!(email.html.contains("mystery-model (7)"));

        let mut many = weekly();
        many.report.flagged = Flagged {
            unpriced: (1..=7).map(|i| (format!("m{i}"), i)).collect(),
            ..Flagged::default()
        };
        let email = weekly_report(&many);
        assert!(email.text.contains(
            "Warning: 28 calls could not be priced and are not in the cost (see `meter prices \
             check`): m1 (1), m2 (2), m3 (3), m4 (4), m5 (5), and 2 more"
        ));
        many.report.flagged = Flagged::default();
        let email = weekly_report(&many);
        assert!(!email.text.contains("Warning"));
        assert!(!email.text.contains("Usage warnings"));
    }

    #[test]
    fn weekly_report_without_or_with_zero_previous_week() {
        let groups = || vec![group("coder", "openai", "gpt-4o", 5 * DOLLAR, 10)];
        let none = Weekly {
            report: report(groups(), None, Flagged::default()),
            previous_groups: Vec::new(),
            now: utc("2026-11-23T08:00:00Z"),
        };
        let email = weekly_report(&none);
        assert_eq!(email.subject, "[meter] weekly report 2026-W47: $5.00");
        assert!(!email.text.contains("The week before"));
        assert!(!email.text.contains("Biggest changes"));

        let zero = Weekly {
            report: report(
                groups(),
                Some((week(46), Figures::default())),
                Flagged::default(),
            ),
            ..none.clone()
        };
        let email = weekly_report(&zero);
        assert_eq!(
            email.subject,
            "[meter] weekly report 2026-W47: $5.00 (new spend, $0.00 in 2026-W46)"
        );
        assert_both(
            &email,
            &[
                "The week before (2026-W46): $0.00 over 0 calls; change +$5.00 (new spend).",
                "Biggest changes vs 2026-W46",
                "+$5.00 (new)",
            ],
        );

        let same = Weekly {
            report: report(
                groups(),
                Some((week(46), figures(5 * DOLLAR, 9))),
                Flagged::default(),
            ),
            previous_groups: groups(),
            ..none
        };
        let email = weekly_report(&same);
        assert_eq!(
            email.subject,
            "[meter] weekly report 2026-W47: $5.00 (unchanged vs 2026-W46)"
        );
        assert_both(&email, &["No change in spend by agent, provider, model."]);
    }

    #[test]
    fn a_zero_traffic_week_reads_sensibly() {
        let quiet = Weekly {
            report: report(
                Vec::new(),
                Some((week(46), figures(12 * DOLLAR, 40))),
                Flagged::default(),
            ),
            previous_groups: vec![group("coder", "openai", "gpt-4o", 12 * DOLLAR, 40)],
            now: utc("2026-11-23T08:00:00Z"),
        };
        let email = weekly_report(&quiet);
        assert_eq!(
            email.subject,
            "[meter] weekly report 2026-W47: no calls (was $12.00 in 2026-W46)"
        );
        assert_both(
            &email,
            &[
                "No calls this week (2026-W47, 2026-11-16 to 2026-11-22 (Europe/Paris)).",
                "The week before (2026-W46): $12.00 over 40 calls; change -$12.00 (-100%).",
                "-$12.00 (gone)",
                "meter report --week 2026-W47",
            ],
        );
        for absent in ["Totals", "Spend by", "TOTAL", "NaN", "inf"] {
            assert!(!email.text.contains(absent), "{absent}");
        }

        let silent = Weekly {
            report: report(
                Vec::new(),
                Some((week(46), Figures::default())),
                Flagged::default(),
            ),
            previous_groups: Vec::new(),
            now: utc("2026-11-23T08:00:00Z"),
        };
        let email = weekly_report(&silent);
        assert_eq!(email.subject, "[meter] weekly report 2026-W47: no calls");
        assert_both(
            &email,
            &[
                "No calls this week",
                "The week before (2026-W46): no calls either.",
                "No change in spend by agent, provider, model.",
            ],
        );

        let first = Weekly {
            report: report(Vec::new(), None, Flagged::default()),
            previous_groups: Vec::new(),
            now: utc("2026-11-23T08:00:00Z"),
        };
        let email = weekly_report(&first);
        assert_eq!(email.subject, "[meter] weekly report 2026-W47: no calls");
        assert!(!email.text.contains("Biggest changes"));
    }

    #[test]
    fn weekly_report_of_an_open_week_and_other_groupings() {
        let mut open = weekly();
        open.report = Report::new(
            week(47),
            vec![GroupBy::Model, GroupBy::Agent],
            vec![Group {
                keys: vec!["gpt-4o".into(), "coder".into()],
                figures: figures(10 * DOLLAR, 10),
                latency: Vec::new(),
                ttfb: Vec::new(),
            }],
            None,
            Flagged::default(),
            // Thursday 2026-11-19 12:00 CET: 3.5 of 7 days.
            utc("2026-11-19T11:00:00Z"),
            "Europe/Paris".to_string(),
        );
        open.previous_groups.clear();
        let email = weekly_report(&open);
        assert_both(
            &email,
            &["The week is still open (50% elapsed): forecast $20.00 by its end."],
        );
        assert_eq!(
            row(&email.text, "Spend by model", "gpt-4o"),
            ["gpt-4o", "10", "17.0k", "$10.00", "100%"]
        );
        assert_eq!(
            row(&email.text, "Spend by agent", "coder"),
            ["coder", "10", "17.0k", "$10.00", "100%"]
        );
        assert!(!email.text.contains("Spend by provider"));
    }

    #[test]
    fn long_spend_tables_fold_their_tail() {
        let groups: Vec<Group> = (1..=12)
            .map(|i| group(&format!("agent{i:02}"), "openai", "gpt-4o", i * DOLLAR, 1))
            .collect();
        let email = weekly_report(&Weekly {
            report: report(groups, None, Flagged::default()),
            previous_groups: Vec::new(),
            now: utc("2026-11-23T08:00:00Z"),
        });
        assert_eq!(
            row(&email.text, "Spend by agent", "2 others"),
            ["2 others", "2", "3,400", "$3.00", "3.8%"]
        );
        assert!(!email.text.contains("agent01"));
        assert!(email.text.contains("agent03"));
    }

    #[test]
    fn test_email_says_when_and_through_which_server() {
        let email = test_email(
            utc("2026-11-25T10:00:05Z"),
            "smtp.example.com:587 (starttls)",
        );
        assert_eq!(email.subject, "[meter] test email");
        assert_both(
            &email,
            &[
                "This is a test email from meter, sent at 2026-11-25 10:00:05 UTC through \
                 smtp.example.com:587 (starttls).",
                "Budget alerts and the weekly report will arrive like this",
                "meter alert test",
            ],
        );
        assert!(email
            .html
            .contains("<strong>smtp.example.com:587 (starttls)</strong>"));
        let hostile = test_email(utc("2026-11-25T10:00:05Z"), "<b>mail</b>&co");
        assert!(hostile.html.contains("&lt;b&gt;mail&lt;/b&gt;&amp;co"));
        assert!(!hostile.html.contains("<b>mail"));
    }

    #[test]
    fn percentages_times_and_durations_for_people() {
        for (fraction, want) in [
            (0.8, "80%"),
            (1.125, "112.5%"),
            (0.8246, "82.5%"),
            (0.5, "50%"),
            (1.0, "100%"),
            (0.0, "0%"),
            (0.0004, "<0.1%"),
            (f64::NAN, "-"),
        ] {
            assert_eq!(percent(fraction), want, "{fraction}");
        }
        for (fraction, want) in [
            (0.1223, "+12%"),
            (-0.35, "-35%"),
            (0.042, "+4.2%"),
            (-0.083, "-8.3%"),
            (0.05, "+5%"),
            (0.0, "+0%"),
            (-0.0001, "+0%"),
            (3.0, "+300%"),
        ] {
            assert_eq!(change_percent(fraction), want, "{fraction}");
        }
        assert_eq!(share(1, 0), "-");
        assert_eq!(signed_usd(10 * DOLLAR), "+$10.00");
        assert_eq!(signed_usd(-3 * DOLLAR), "-$3.00");
        assert_eq!(signed_usd(0), "$0.00");
        assert_eq!(
            format_time(utc("2026-11-30T23:00:00Z"), paris()),
            "2026-12-01 00:00 CET"
        );
        assert_eq!(
            format_time(utc("2026-07-01T10:30:00Z"), paris()),
            "2026-07-01 12:30 CEST"
        );
        assert_eq!(
            format_time(utc("2026-07-01T10:30:00Z"), chrono_tz::UTC),
            "2026-07-01 10:30 UTC"
        );
        let now = utc("2026-11-25T10:00:00Z");
        for (end, want) in [
            ("2026-11-30T23:00:00Z", "5 days 13 hours left"),
            ("2026-11-26T10:00:00Z", "1 day left"),
            ("2026-11-25T12:05:00Z", "2 hours 5 minutes left"),
            ("2026-11-25T11:00:00Z", "1 hour left"),
            ("2026-11-25T10:01:00Z", "1 minute left"),
            ("2026-11-25T10:00:30Z", "less than a minute left"),
            ("2026-11-25T10:00:00Z", "period ended"),
        ] {
            assert_eq!(time_left(now, utc(end)), want, "{end}");
        }
        assert_eq!(report_command(&week(47)), "meter report --week 2026-W47");
        assert_eq!(
            report_command(&Period::month(2026, 11, paris()).unwrap()),
            "meter report --month 2026-11"
        );
        let custom = Period::custom(
            chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
            chrono::NaiveDate::from_ymd_opt(2026, 11, 7).unwrap(),
            paris(),
        )
        .unwrap();
        assert_eq!(
            report_command(&custom),
            "meter report --since 2026-11-01 --until 2026-11-07"
        );
    }
}
