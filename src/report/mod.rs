//! `meter report`: a period's usage and spend from the ledger, grouped, compared with the
//! previous period, forecast to the period's end, rendered as a table, JSON (SPEC §7), CSV or
//! Markdown. Pure: the ledger queries that feed it live in `ledger::query`.

pub mod period;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::money::{format_usd, group_thousands};
pub use period::{Period, PeriodKind};

/// A grouping column (`--by`), named as in the ledger and the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupBy {
    Agent,
    Provider,
    Model,
    Route,
}

impl GroupBy {
    pub fn column(self) -> &'static str {
        match self {
            GroupBy::Agent => "agent",
            GroupBy::Provider => "provider",
            GroupBy::Model => "model",
            GroupBy::Route => "route",
        }
    }

    /// `agent,provider,model` into columns, in the order given, without repeats.
    pub fn parse_list(text: &str) -> Result<Vec<GroupBy>, String> {
        let mut out = Vec::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let by = match name {
                "agent" => GroupBy::Agent,
                "provider" => GroupBy::Provider,
                "model" => GroupBy::Model,
                "route" => GroupBy::Route,
                other => {
                    return Err(format!(
                        "--by: unknown column {other:?} (agent, provider, model, route)"
                    ))
                }
            };
            if !out.contains(&by) {
                out.push(by);
            }
        }
        Ok(out)
    }
}

/// Sums over a set of calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cache_write_1h_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_nanos: i64,
    pub unpriced_requests: u64,
    pub estimated_requests: u64,
    pub missing_requests: u64,
}

impl Figures {
    pub fn add(&mut self, other: &Figures) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.input_tokens += other.input_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.cache_write_1h_tokens += other.cache_write_1h_tokens;
        self.output_tokens += other.output_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.cost_nanos += other.cost_nanos;
        self.unpriced_requests += other.unpriced_requests;
        self.estimated_requests += other.estimated_requests;
        self.missing_requests += other.missing_requests;
    }

    /// Cached prompt tokens as a share of all prompt tokens, if there were any.
    pub fn cache_hit_share(&self) -> Option<f64> {
        let prompt = self.input_tokens + self.cache_read_tokens + self.cache_write_tokens;
        (prompt > 0).then(|| self.cache_read_tokens as f64 / prompt as f64)
    }

    fn json_fields(&self, object: &mut Map<String, Value>) {
        object.insert("requests".into(), json!(self.requests));
        object.insert("errors".into(), json!(self.errors));
        object.insert("input_tokens".into(), json!(self.input_tokens));
        object.insert("cache_read_tokens".into(), json!(self.cache_read_tokens));
        object.insert("cache_write_tokens".into(), json!(self.cache_write_tokens));
        object.insert(
            "cache_write_1h_tokens".into(),
            json!(self.cache_write_1h_tokens),
        );
        object.insert("output_tokens".into(), json!(self.output_tokens));
        object.insert("reasoning_tokens".into(), json!(self.reasoning_tokens));
        object.insert("cost_usd".into(), json!(usd(self.cost_nanos)));
        object.insert("unpriced_requests".into(), json!(self.unpriced_requests));
        object.insert("estimated_requests".into(), json!(self.estimated_requests));
    }
}

/// Nano-dollars as the JSON's USD number (rounded once, at the edge).
fn usd(nanos: i64) -> f64 {
    nanos as f64 / 1e9
}

/// A latency distribution as (value in ms, count) pairs, from the ledger's histogram query.
pub type Histogram = Vec<(i64, u64)>;

/// The value below which `q` of the calls fall.
pub fn percentile(histogram: &Histogram, q: f64) -> Option<f64> {
    let total: u64 = histogram.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let mut sorted = histogram.clone();
    sorted.sort_unstable();
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (value, count) in sorted {
        seen += count;
        if seen >= rank {
            return Some(value as f64);
        }
    }
    None
}

/// One group of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The group's value for each `--by` column, in that order.
    pub keys: Vec<String>,
    pub figures: Figures,
    pub latency: Histogram,
    pub ttfb: Histogram,
}

/// Models behind unpriced or estimated usage, for the warnings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flagged {
    pub unpriced: Vec<(String, u64)>,
    pub estimated: Vec<(String, u64)>,
    pub missing: Vec<(String, u64)>,
}

/// A complete report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub period: Period,
    pub by: Vec<GroupBy>,
    pub totals: Figures,
    pub groups: Vec<Group>,
    pub previous: Option<(Period, Figures)>,
    /// The open period's spend projected to its end.
    pub forecast_nanos: Option<i64>,
    pub flagged: Flagged,
    pub timezone: String,
    /// The share of the period elapsed when the report was made (1 for a closed one).
    pub elapsed: f64,
}

impl Report {
    /// Assembles a report: groups sorted by cost (then requests), totals, forecast.
    pub fn new(
        period: Period,
        by: Vec<GroupBy>,
        mut groups: Vec<Group>,
        previous: Option<(Period, Figures)>,
        flagged: Flagged,
        now: chrono::DateTime<chrono::Utc>,
        timezone: String,
    ) -> Report {
        groups.sort_by(|a, b| {
            b.figures
                .cost_nanos
                .cmp(&a.figures.cost_nanos)
                .then(b.figures.requests.cmp(&a.figures.requests))
                .then(a.keys.cmp(&b.keys))
        });
        let mut totals = Figures::default();
        for group in &groups {
            totals.add(&group.figures);
        }
        let forecast_nanos = period
            .is_open(now)
            .then(|| (totals.cost_nanos as f64 / period.elapsed_fraction(now)).round() as i64);
        let elapsed = if period.is_open(now) {
            period.elapsed_fraction(now)
        } else {
            1.0
        };
        Report {
            period,
            by,
            totals,
            groups,
            previous,
            forecast_nanos,
            flagged,
            timezone,
            elapsed,
        }
    }

    /// The JSON object of SPEC §7.
    pub fn to_json(&self) -> Value {
        let mut totals = Map::new();
        self.totals.json_fields(&mut totals);
        let groups: Vec<Value> = self
            .groups
            .iter()
            .map(|group| {
                let mut object = Map::new();
                for (by, key) in self.by.iter().zip(&group.keys) {
                    object.insert(by.column().into(), json!(key));
                }
                object.insert("requests".into(), json!(group.figures.requests));
                object.insert(
                    "latency_p50_ms".into(),
                    json!(percentile(&group.latency, 0.5)),
                );
                object.insert(
                    "latency_p95_ms".into(),
                    json!(percentile(&group.latency, 0.95)),
                );
                object.insert("ttfb_p50_ms".into(), json!(percentile(&group.ttfb, 0.5)));
                object.insert("ttfb_p95_ms".into(), json!(percentile(&group.ttfb, 0.95)));
                group.figures.json_fields(&mut object);
                Value::Object(object)
            })
            .collect();
        let previous = match &self.previous {
            Some((period, figures)) => json!({
                "label": period.label,
                "cost_usd": usd(figures.cost_nanos),
                "requests": figures.requests,
            }),
            None => Value::Null,
        };
        json!({
            "period": self.period.to_json(),
            "currency": "USD",
            "totals": Value::Object(totals),
            "groups": groups,
            "previous": previous,
            "forecast_usd": self.forecast_nanos.map(usd),
        })
    }

    /// CSV: a header and one line per group (RFC 4180 quoting).
    pub fn to_csv(&self) -> String {
        let mut header: Vec<&str> = self.by.iter().map(|b| b.column()).collect();
        header.extend([
            "requests",
            "errors",
            "input_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "cache_write_1h_tokens",
            "output_tokens",
            "reasoning_tokens",
            "cost_usd",
            "unpriced_requests",
            "estimated_requests",
            "latency_p50_ms",
            "latency_p95_ms",
            "ttfb_p50_ms",
        ]);
        let mut out = header.join(",");
        out.push_str("\r\n");
        for group in &self.groups {
            let f = &group.figures;
            let mut cells: Vec<String> = group.keys.iter().map(|k| csv_cell(k)).collect();
            cells.extend([
                f.requests.to_string(),
                f.errors.to_string(),
                f.input_tokens.to_string(),
                f.cache_read_tokens.to_string(),
                f.cache_write_tokens.to_string(),
                f.cache_write_1h_tokens.to_string(),
                f.output_tokens.to_string(),
                f.reasoning_tokens.to_string(),
                exact_usd(f.cost_nanos),
                f.unpriced_requests.to_string(),
                f.estimated_requests.to_string(),
                opt(percentile(&group.latency, 0.5)),
                opt(percentile(&group.latency, 0.95)),
                opt(percentile(&group.ttfb, 0.5)),
            ]);
            out.push_str(&cells.join(","));
            out.push_str("\r\n");
        }
        out
    }

    /// The table (or Markdown) for a person.
    pub fn to_text(&self, markdown: bool, colour: bool) -> String {
        let style = Style {
            colour: colour && !markdown,
        };
        let mut out = String::new();
        let tz = &self.timezone;
        let range = format!(
            "{} to {} ({tz})",
            self.period.first_day, self.period.last_day
        );
        if markdown {
            let _ = writeln!(
                out,
                "## meter report: {} {}\n\n{range}\n",
                self.period.kind.as_str(),
                self.period.label
            );
        } else {
            let _ = writeln!(
                out,
                "{}",
                style.bold(&format!(
                    "meter report: {} {}, {range}",
                    self.period.kind.as_str(),
                    self.period.label
                ))
            );
        }
        if self.totals.requests == 0 {
            let _ = writeln!(out, "No calls recorded in {} ({range}).", self.period.label);
            self.previous_line(&mut out, &style);
            return out;
        }
        let mut header: Vec<String> = self.by.iter().map(|b| b.column().to_uppercase()).collect();
        header.extend(
            [
                "REQUESTS",
                "ERRORS",
                "INPUT",
                "CACHED",
                "OUTPUT",
                "CACHE HIT",
                "P50",
                "P95",
                "TTFB P50",
                "COST",
            ]
            .map(str::to_string),
        );
        let mut rows = vec![header];
        for group in &self.groups {
            let mut row = group.keys.clone();
            row.extend(figure_cells(&group.figures, &group.latency, &group.ttfb));
            rows.push(row);
        }
        let mut total_row: Vec<String> = vec![String::new(); self.by.len()];
        if let Some(first) = total_row.first_mut() {
            *first = "TOTAL".to_string();
        }
        let all_latency: Histogram = merge(self.groups.iter().map(|g| &g.latency));
        let all_ttfb: Histogram = merge(self.groups.iter().map(|g| &g.ttfb));
        total_row.extend(figure_cells(&self.totals, &all_latency, &all_ttfb));
        if markdown {
            out.push_str(&markdown_table(&rows, &total_row, self.by.len()));
        } else {
            out.push_str(&aligned_table(&rows, &total_row, self.by.len(), &style));
        }
        out.push('\n');
        self.previous_line(&mut out, &style);
        if let Some(forecast) = self.forecast_nanos {
            let _ = writeln!(
                out,
                "Forecast for {}: {} (open period, {:.0}% elapsed)",
                self.period.label,
                format_usd(forecast),
                100.0 * self.elapsed
            );
        }
        if let Some(share) = self.totals.cache_hit_share() {
            let _ = writeln!(out, "Cache hits: {:.1}% of prompt tokens", share * 100.0);
        }
        for (label, list, hint) in [
            (
                "unpriced",
                &self.flagged.unpriced,
                " (not in the cost; see `meter prices check`)",
            ),
            ("with estimated usage", &self.flagged.estimated, ""),
            (
                "with unreadable usage",
                &self.flagged.missing,
                " (no tokens or cost counted)",
            ),
        ] {
            if list.is_empty() {
                continue;
            }
            let calls: u64 = list.iter().map(|(_, n)| n).sum();
            let models: Vec<String> = list
                .iter()
                .take(5)
                .map(|(m, n)| format!("{m} ({n})"))
                .collect();
            let more = if list.len() > 5 {
                format!(", and {} more", list.len() - 5)
            } else {
                String::new()
            };
            let line = format!(
                "Warning: {} calls {label}{hint}: {}{more}",
                group_thousands(calls),
                models.join(", ")
            );
            let _ = writeln!(out, "{}", style.warn(&line));
        }
        out
    }

    fn previous_line(&self, out: &mut String, style: &Style) {
        let Some((period, previous)) = &self.previous else {
            return;
        };
        let now = self.totals.cost_nanos;
        let before = previous.cost_nanos;
        let change = now - before;
        let percent = if before > 0 {
            format!(" ({:+.1}%)", 100.0 * change as f64 / before as f64)
        } else {
            String::new()
        };
        let sign = if change >= 0 { "+" } else { "" };
        let line = format!(
            "Previous {} {}: {} over {} calls; change {sign}{}{percent}",
            period.kind.as_str(),
            period.label,
            format_usd(before),
            group_thousands(previous.requests),
            format_usd(change),
        );
        let _ = writeln!(out, "{}", style.dim(&line));
    }
}

fn merge<'a>(histograms: impl Iterator<Item = &'a Histogram>) -> Histogram {
    let mut all: BTreeMap<i64, u64> = BTreeMap::new();
    for histogram in histograms {
        for (value, count) in histogram {
            *all.entry(*value).or_default() += count;
        }
    }
    all.into_iter().collect()
}

fn figure_cells(f: &Figures, latency: &Histogram, ttfb: &Histogram) -> Vec<String> {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), format_ms);
    vec![
        group_thousands(f.requests),
        group_thousands(f.errors),
        format_tokens(f.input_tokens + f.cache_write_tokens),
        format_tokens(f.cache_read_tokens),
        format_tokens(f.output_tokens),
        f.cache_hit_share()
            .map_or("-".to_string(), |s| format!("{:.0}%", s * 100.0)),
        ms(percentile(latency, 0.5)),
        ms(percentile(latency, 0.95)),
        ms(percentile(ttfb, 0.5)),
        format_usd(f.cost_nanos),
    ]
}

/// `1,234` below 10k, then `12.3k`, `1.2M`, `3.4B`.
pub fn format_tokens(tokens: u64) -> String {
    match tokens {
        0..=9_999 => group_thousands(tokens),
        10_000..=999_999 => format!("{:.1}k", tokens as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}M", tokens as f64 / 1e6),
        _ => format!("{:.1}B", tokens as f64 / 1e9),
    }
}

fn format_ms(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.0}s", ms / 1000.0)
    } else if ms >= 1000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else {
        format!("{ms:.0}ms")
    }
}

fn opt(value: Option<f64>) -> String {
    value.map_or(String::new(), |v| format!("{v}"))
}

/// Nano-dollars as an exact decimal USD string (`0.001972500`), for machines.
fn exact_usd(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let abs = nanos.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
}

/// One CSV field, quoted per RFC 4180 when it must be.
pub fn csv_cell(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

struct Style {
    colour: bool,
}

impl Style {
    fn wrap(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn bold(&self, text: &str) -> String {
        self.wrap("1", text)
    }
    fn dim(&self, text: &str) -> String {
        self.wrap("2", text)
    }
    fn warn(&self, text: &str) -> String {
        self.wrap("33", text)
    }
}

/// Key columns left-aligned, figures right-aligned, the totals row last.
fn aligned_table(rows: &[Vec<String>], totals: &[String], keys: usize, style: &Style) -> String {
    let mut widths = vec![0usize; rows[0].len()];
    for row in rows.iter().chain(std::iter::once(&totals.to_vec())) {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |row: &[String]| {
        let mut text = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if i < keys {
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', pad));
            } else {
                text.extend(std::iter::repeat_n(' ', pad));
                text.push_str(cell);
            }
            if i + 1 < row.len() {
                text.push_str("  ");
            }
        }
        text.trim_end().to_string()
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", style.bold(&line(&rows[0])));
    for row in &rows[1..] {
        let _ = writeln!(out, "{}", line(row));
    }
    let _ = writeln!(out, "{}", style.bold(&line(totals)));
    out
}

fn markdown_table(rows: &[Vec<String>], totals: &[String], keys: usize) -> String {
    let escape = |cell: &str| cell.replace('|', "\\|");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| {} |",
        rows[0]
            .iter()
            .map(|c| escape(c))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let rule: Vec<&str> = (0..rows[0].len())
        .map(|i| if i < keys { "---" } else { "---:" })
        .collect();
    let _ = writeln!(out, "| {} |", rule.join(" | "));
    for row in &rows[1..] {
        let _ = writeln!(
            out,
            "| {} |",
            row.iter()
                .map(|c| escape(c))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let bold: Vec<String> = totals
        .iter()
        .map(|c| {
            if c.is_empty() {
                String::new()
            } else {
                format!("**{}**", escape(c))
            }
        })
        .collect();
    let _ = writeln!(out, "| {} |", bold.join(" | "));
    out
}

#[cfg(test)]
mod tests;
