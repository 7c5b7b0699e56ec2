//! The Grafana dashboards in `dashboards/`: each parses, is for current Grafana, takes its
//! Prometheus datasource from a variable, and every panel has a title, a description, a unit and
//! queries that name only metrics meter exports and filter on the dashboard's variables.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Every metric of the metric contract (histograms by their base name).
const METRICS: &[&str] = &[
    "meter_requests_total",
    "meter_tokens_total",
    "meter_cost_usd_total",
    "meter_markup_usd_total",
    "meter_blocked_requests_total",
    "meter_request_duration_seconds",
    "meter_time_to_first_byte_seconds",
    "meter_unpriced_requests_total",
    "meter_usage_unread_total",
    "meter_budget_spend_usd",
    "meter_budget_limit_usd",
    "meter_budget_forecast_usd",
    "meter_ledger_pending_records",
    "meter_ledger_write_errors_total",
    "meter_alerts_sent_total",
    "meter_alert_failures_total",
    "meter_label_overflow_total",
    "meter_build_info",
    "meter_instance_info",
    "meter_ledger_journal_records",
];

/// The histograms, whose series are named `<name>_bucket`, `<name>_sum` and `<name>_count`.
const HISTOGRAMS: &[&str] = &[
    "meter_request_duration_seconds",
    "meter_time_to_first_byte_seconds",
];

/// The dashboard variables that every query must filter on where the metric has the label.
const VARIABLES: &[&str] = &["agent", "provider", "model", "route"];

/// Which of [`VARIABLES`] each metric carries as a label.
fn filterable_labels(metric: &str) -> &'static [&'static str] {
    match metric {
        "meter_requests_total"
        | "meter_tokens_total"
        | "meter_cost_usd_total"
        | "meter_markup_usd_total" => &["agent", "provider", "model", "route"],
        "meter_blocked_requests_total" => &["agent"],
        "meter_request_duration_seconds" | "meter_time_to_first_byte_seconds" => {
            &["provider", "route"]
        }
        "meter_unpriced_requests_total" => &["provider", "model"],
        "meter_usage_unread_total" => &["provider"],
        _ => &[],
    }
}

/// The panel types of current Grafana a dashboard may use.
const PANEL_TYPES: &[&str] = &["timeseries", "stat", "gauge", "bargauge", "table"];

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

fn dashboard_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
}

/// A metric named in an expression: its contract name and the text of its label matchers (empty
/// when it has none).
#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: String,
}

/// Every `meter_[a-z_]+` token of `expr` with the `{...}` that follows it, if any; histogram
/// series suffixes are stripped. Text inside quotes is skipped, so label values never count.
fn selectors(expr: &str) -> Vec<Selector> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' || b == b'\'' || b == b'`' {
            i = skip_quoted(bytes, i);
            continue;
        }
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if boundary && expr[i..].starts_with("meter_") {
            let start = i;
            i += "meter_".len();
            while i < bytes.len() && (bytes[i].is_ascii_lowercase() || bytes[i] == b'_') {
                i += 1;
            }
            let token = &expr[start..i];
            let mut j = i;
            while j < bytes.len() && bytes[j] == b' ' {
                j += 1;
            }
            let mut matchers = String::new();
            if j < bytes.len() && bytes[j] == b'{' {
                let mut k = j + 1;
                while k < bytes.len() && bytes[k] != b'}' {
                    k = if bytes[k] == b'"' {
                        skip_quoted(bytes, k)
                    } else {
                        k + 1
                    };
                }
                matchers = expr[j + 1..k.min(bytes.len())].to_string();
                i = k + 1;
            }
            out.push(Selector {
                metric: contract_name(token).unwrap_or(token).to_string(),
                matchers,
            });
            continue;
        }
        i += 1;
    }
    out
}

/// The index just past the quoted string that starts at `start`.
fn skip_quoted(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() && bytes[i] != quote {
        i += if bytes[i] == b'\\' && quote != b'`' {
            2
        } else {
            1
        };
    }
    i + 1
}

/// The contract metric a series name belongs to, if any.
fn contract_name(token: &str) -> Option<&'static str> {
    if let Some(name) = METRICS.iter().find(|name| **name == token) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = token.strip_suffix(suffix)?;
        HISTOGRAMS.iter().copied().find(|name| *name == base)
    })
}

/// Every panel, those nested in rows included, rows themselves excluded.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            if panel["type"] != "row" {
                out.push(panel);
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn references_datasource_variable(datasource: &Value) -> bool {
    let uid = match datasource {
        Value::String(s) => s.as_str(),
        other => text(other, "/uid"),
    };
    uid == "${datasource}" || uid == "$datasource"
}

/// Everything wrong with one dashboard; empty when it is fine.
fn problems(dashboard: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |message: String| problems.push(message);

    if text(dashboard, "/uid").is_empty() {
        problem("no uid".into());
    }
    if text(dashboard, "/title").is_empty() {
        problem("no title".into());
    }
    match dashboard["schemaVersion"].as_u64() {
        Some(version) if version >= 39 => {}
        other => problem(format!("schemaVersion {other:?}, want 39 or later")),
    }

    let variables = dashboard
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name);
    match variable("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        Some(v) => problem(format!(
            "variable datasource must be of type datasource with query prometheus: {v}"
        )),
        None => problem("no datasource variable".into()),
    }
    for name in VARIABLES {
        let Some(v) = variable(name) else {
            problem(format!("no {name} variable"));
            continue;
        };
        let query = match &v["query"] {
            Value::String(s) => s.clone(),
            other => text(other, "/query").to_string(),
        };
        if !(query.starts_with("label_values(meter_requests_total")
            && query.ends_with(&format!(", {name})")))
        {
            problem(format!(
                "variable {name}: query {query:?} is not label_values(meter_requests_total..., {name})"
            ));
        }
        if !references_datasource_variable(&v["datasource"]) {
            problem(format!("variable {name} does not use ${{datasource}}"));
        }
        if v["includeAll"] == true && v["allValue"] != ".*" {
            problem(format!("variable {name}: All must be the regex .*"));
        }
    }

    let panels = panels(dashboard);
    if panels.is_empty() {
        problem("no panels".into());
    }
    let mut ids = std::collections::HashSet::new();
    for panel in panels {
        let title = text(panel, "/title");
        let kind = text(panel, "/type");
        let name = format!("panel {title:?} ({kind})");
        if title.trim().is_empty() {
            problem(format!("{name}: no title"));
        }
        if text(panel, "/description").trim().is_empty() {
            problem(format!("{name}: no description"));
        }
        if !PANEL_TYPES.contains(&kind) {
            problem(format!(
                "{name}: type {kind:?} is not one of {PANEL_TYPES:?}"
            ));
        }
        if let Some(id) = panel["id"].as_u64() {
            if !ids.insert(id) {
                problem(format!("{name}: id {id} used twice"));
            }
        }
        if !references_datasource_variable(&panel["datasource"]) {
            problem(format!("{name}: datasource is not ${{datasource}}"));
        }
        if text(panel, "/fieldConfig/defaults/unit").is_empty() {
            problem(format!("{name}: no fieldConfig.defaults.unit"));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if !targets.iter().any(|t| !text(t, "/expr").trim().is_empty()) {
            problem(format!("{name}: no target with an expr"));
        }
        for target in &targets {
            let expr = text(target, "/expr");
            if !references_datasource_variable(&target["datasource"]) {
                problem(format!(
                    "{name}: target {expr:?} datasource is not ${{datasource}}"
                ));
            }
            if expr.trim().is_empty() {
                problem(format!("{name}: a target without an expr"));
                continue;
            }
            for selector in selectors(expr) {
                if contract_name(&selector.metric).is_none() {
                    problem(format!(
                        "{name}: {} is not a metric meter exports (in {expr:?})",
                        selector.metric
                    ));
                    continue;
                }
                for label in filterable_labels(&selector.metric) {
                    let want = format!("{label}=~\"${label}\"");
                    if !selector.matchers.replace(' ', "").contains(&want) {
                        problem(format!(
                            "{name}: {} is not filtered by {want} (in {expr:?})",
                            selector.metric
                        ));
                    }
                }
            }
        }
    }
    problems
}

fn load(path: &Path) -> Value {
    let raw = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&raw).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[test]
fn every_dashboard_is_valid() {
    let files = dashboard_files();
    assert!(
        files.iter().any(|f| f.ends_with("meter-overview.json"))
            && files.iter().any(|f| f.ends_with("meter-agent.json")),
        "dashboards/ must hold meter-overview.json and meter-agent.json, has {files:?}"
    );
    let mut failures = Vec::new();
    for file in &files {
        for problem in problems(&load(file)) {
            failures.push(format!("{}: {problem}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn uids_are_the_documented_ones_and_distinct() {
    let uids: Vec<String> = dashboard_files()
        .iter()
        .map(|f| text(&load(f), "/uid").to_string())
        .collect();
    assert!(uids.contains(&"meter-overview".to_string()), "{uids:?}");
    assert!(uids.contains(&"meter-agent".to_string()), "{uids:?}");
    let mut distinct = uids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), uids.len(), "duplicate uid in {uids:?}");
}

/// The checker itself catches what it is there to catch.
#[test]
fn the_checks_catch_broken_dashboards() {
    let good = load(&dashboards_dir().join("meter-overview.json"));
    assert_eq!(problems(&good), Vec::<String>::new());

    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut d = good.clone();
        edit(&mut d);
        problems(&d)
    };
    let expect = |found: Vec<String>, needle: &str| {
        assert!(
            found.iter().any(|p| p.contains(needle)),
            "wanted a problem with {needle:?}, got {found:?}"
        );
    };
    let with_panel = |edit: &dyn Fn(&mut Value)| {
        broken(&|d: &mut Value| {
            let list = d["panels"].as_array_mut().unwrap();
            let index = list.iter().position(|p| p["type"] != "row").unwrap();
            edit(&mut list[index]);
        })
    };
    let set_expr = |expr: &'static str| {
        with_panel(&move |p: &mut Value| p["targets"][0]["expr"] = expr.into())
    };

    expect(broken(&|d| d["uid"] = "".into()), "no uid");
    expect(broken(&|d| d["title"] = Value::Null), "no title");
    expect(broken(&|d| d["schemaVersion"] = 36.into()), "schemaVersion");
    expect(
        broken(&|d| d["templating"]["list"][0]["type"] = "query".into()),
        "variable datasource",
    );
    expect(
        broken(&|d| {
            d["templating"]["list"]
                .as_array_mut()
                .unwrap()
                .retain(|v| v["name"] != "route")
        }),
        "no route variable",
    );
    expect(with_panel(&|p| p["title"] = "".into()), "no title");
    expect(
        with_panel(&|p| {
            p.as_object_mut().unwrap().remove("description");
        }),
        "no description",
    );
    expect(with_panel(&|p| p["type"] = "graph".into()), "\"graph\"");
    expect(
        with_panel(&|p| p["datasource"] = serde_json::json!({"type": "prometheus", "uid": "abc"})),
        "datasource is not",
    );
    expect(
        with_panel(&|p| p["targets"][0]["datasource"] = "Prometheus".into()),
        "datasource is not",
    );
    expect(
        with_panel(&|p| {
            p["fieldConfig"]["defaults"]
                .as_object_mut()
                .unwrap()
                .remove("unit");
        }),
        "no fieldConfig.defaults.unit",
    );
    expect(
        with_panel(&|p| p["targets"] = serde_json::json!([])),
        "no target with an expr",
    );
    expect(set_expr(""), "no target with an expr");
    expect(
        set_expr("sum(rate(meter_cost_dollars_total[5m]))"),
        "meter_cost_dollars_total is not a metric",
    );
    expect(
        set_expr("sum(rate(meter_requests_total_bucket[5m]))"),
        "meter_requests_total_bucket is not a metric",
    );
    expect(
        set_expr(
            r#"sum(rate(meter_cost_usd_total{agent=~"$agent",provider=~"$provider",model=~"$model"}[5m]))"#,
        ),
        "not filtered by route",
    );
    expect(
        set_expr("histogram_quantile(0.5, sum by (le) (rate(meter_request_duration_seconds_bucket[5m])))"),
        "not filtered by provider",
    );

    // A panel nested in a collapsed row is checked too.
    let nested = broken(&|d| {
        let mut panel = d["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["type"] != "row")
            .unwrap()
            .clone();
        panel["id"] = 9999.into();
        panel["description"] = "".into();
        let row = serde_json::json!({"type": "row", "title": "collapsed", "collapsed": true,
                                     "id": 9998, "panels": [panel]});
        d["panels"].as_array_mut().unwrap().push(row);
    });
    expect(nested, "no description");
}

#[test]
fn selectors_are_found_outside_quotes_only() {
    let found = selectors(
        r#"sum(rate(meter_request_duration_seconds_bucket{provider=~"$provider",route=~"meter_x"}[5m])) / on() group_left meter_build_info"#,
    );
    let names: Vec<&str> = found.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(
        names,
        ["meter_request_duration_seconds", "meter_build_info"]
    );
    assert_eq!(
        found[0].matchers,
        r#"provider=~"$provider",route=~"meter_x""#
    );
    assert_eq!(found[1].matchers, "");
    assert_eq!(contract_name("meter_tokens_total_sum"), None);
    assert_eq!(
        contract_name("meter_time_to_first_byte_seconds_count"),
        Some("meter_time_to_first_byte_seconds")
    );
}
