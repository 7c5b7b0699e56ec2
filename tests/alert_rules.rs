//! The Prometheus alert rules in `alerts/`: promtool accepts them and their unit tests pass, and
//! every rule carries a severity, a summary, a description and a runbook link that resolves,
//! names only metrics and labels meter exports, and is covered by the promtool tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const RULES: &str = "alerts/meter.rules.yml";
const RULE_TESTS: &str = "alerts/meter.rules.test.yml";
const RUNBOOK: &str = "alerts/RUNBOOK.md";

/// The metrics meter exports (the metric contract, ../shared/SPEC.md section 9), with the
/// labels each carries.
const CONTRACT: &[(&str, &[&str])] = &[
    (
        "meter_requests_total",
        &["provider", "route", "model", "agent", "status"],
    ),
    (
        "meter_tokens_total",
        &["provider", "route", "model", "agent", "type"],
    ),
    (
        "meter_cost_usd_total",
        &["provider", "route", "model", "agent"],
    ),
    (
        "meter_markup_usd_total",
        &["provider", "route", "model", "agent"],
    ),
    ("meter_blocked_requests_total", &["agent", "reason"]),
    ("meter_request_duration_seconds", &["provider", "route"]),
    ("meter_time_to_first_byte_seconds", &["provider", "route"]),
    ("meter_unpriced_requests_total", &["provider", "model"]),
    ("meter_usage_unread_total", &["provider", "usage_status"]),
    ("meter_budget_spend_usd", &["budget"]),
    ("meter_budget_limit_usd", &["budget"]),
    ("meter_budget_forecast_usd", &["budget"]),
    ("meter_ledger_pending_records", &[]),
    ("meter_ledger_write_errors_total", &[]),
    ("meter_alerts_sent_total", &["kind"]),
    ("meter_alert_failures_total", &["kind"]),
    ("meter_label_overflow_total", &["label"]),
    ("meter_build_info", &["version"]),
    ("meter_instance_info", &["instance_id", "ledger"]),
    ("meter_ledger_journal_records", &[]),
];

/// The histograms of the contract: their series are `_bucket`, `_sum` and `_count`.
const HISTOGRAMS: &[&str] = &[
    "meter_request_duration_seconds",
    "meter_time_to_first_byte_seconds",
];

/// Labels every scraped series has (`instance`, `job`) or that histograms add (`le`).
const SCRAPE_LABELS: &[&str] = &["instance", "job", "le"];

const SEVERITIES: &[&str] = &["info", "warning", "critical"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs promtool (or `$PROMTOOL`) in the repository root and panics with its output unless it
/// succeeds.
fn promtool(args: &[&str]) {
    let program = std::env::var_os("PROMTOOL").unwrap_or_else(|| "promtool".into());
    let output = match Command::new(&program)
        .args(args)
        .current_dir(repo())
        .output()
    {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool not found ({}): install Debian's `prometheus` package \
             (`apt-get install prometheus`, as .ci/run does in CI), or set PROMTOOL to its path",
            program.to_string_lossy()
        ),
        Err(err) => panic!("running {}: {err}", program.to_string_lossy()),
    };
    assert!(
        output.status.success(),
        "`promtool {}` failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn promtool_check_rules_passes() {
    promtool(&["check", "rules", RULES]);
}

#[test]
fn promtool_rule_unit_tests_pass() {
    promtool(&["test", "rules", RULE_TESTS]);
}

/// A YAML file as JSON, through PyYAML (no YAML crate is a dependency).
fn yaml(path: &Path) -> Value {
    let output = Command::new("python3")
        .args([
            "-c",
            "import yaml,json,sys; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .unwrap_or_else(|err| panic!("running python3 (with PyYAML) to read YAML: {err}"));
    assert!(
        output.status.success(),
        "python3 could not read {} as YAML (is PyYAML installed?):\n{}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("{} as JSON: {err}", path.display()))
}

/// A JSON value as a string, or "" when it is missing or not a string.
fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The anchors GitHub gives the headings of a Markdown file: lowercase, punctuation other than
/// `-` and `_` dropped, spaces to `-`. Lines inside code fences are not headings.
fn heading_anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut in_fence = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let anchor: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        anchors.insert(anchor);
    }
    anchors
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Every whole identifier in `text` that starts with `meter_` (a metric name, as the token
/// `meter_[a-z_]+` and whatever else the name runs on with).
fn meter_metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    let mut previous: Option<char> = None;
    while let Some(at) = rest.find("meter_") {
        let before = rest[..at].chars().next_back().or(previous);
        let name: String = rest[at..]
            .chars()
            .take_while(|c| is_name_char(*c))
            .collect();
        if !before.is_some_and(is_name_char) {
            names.insert(name.clone());
        }
        previous = name.chars().next_back();
        rest = &rest[at + name.len()..];
    }
    names
}

/// Whether `name` is a contract metric (or a series of a contract histogram).
fn in_contract(name: &str) -> bool {
    CONTRACT.iter().any(|(metric, _)| *metric == name)
        || HISTOGRAMS.iter().any(|histogram| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name == format!("{histogram}{suffix}"))
        })
}

/// The label names a PromQL expression uses: in `by`, `without`, `on`, `ignoring`,
/// `group_left` and `group_right` lists, and on the left of matchers in `{...}` selectors.
fn label_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let words: Vec<(usize, String)> = {
        let mut words = Vec::new();
        let mut start = None;
        for (i, c) in expr.char_indices().chain([(expr.len(), ' ')]) {
            match (start, is_name_char(c)) {
                (None, true) => start = Some(i),
                (Some(s), false) => {
                    words.push((s, expr[s..i].to_string()));
                    start = None;
                }
                _ => {}
            }
        }
        words
    };
    let list_keywords = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    for (at, word) in &words {
        if !list_keywords.contains(&word.as_str()) {
            continue;
        }
        let after = expr[at + word.len()..].trim_start();
        if let Some(list) = after.strip_prefix('(') {
            let list = &list[..list.find(')').unwrap_or(list.len())];
            names.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|name| !name.is_empty())
                    .map(str::to_string),
            );
        }
    }
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        for matcher in rest[open + 1..open + close].split(',') {
            let name: String = matcher
                .trim()
                .chars()
                .take_while(|c| is_name_char(*c))
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
        rest = &rest[open + close + 1..];
    }
    names
}

#[test]
fn every_rule_is_annotated_in_contract_and_tested() {
    let rules = yaml(&repo().join(RULES));
    let tests = yaml(&repo().join(RULE_TESTS));
    let runbook = std::fs::read_to_string(repo().join(RUNBOOK))
        .unwrap_or_else(|err| panic!("reading {RUNBOOK}: {err}"));
    let anchors = heading_anchors(&runbook);
    let contract_labels: BTreeSet<&str> = CONTRACT
        .iter()
        .flat_map(|(_, labels)| labels.iter().copied())
        .chain(SCRAPE_LABELS.iter().copied())
        .collect();

    // What the promtool tests cover, per alert name: the severities seen firing with their
    // annotations checked, and whether some case expects it not to fire.
    let rule_files: Vec<&str> = tests["rule_files"]
        .as_array()
        .map(|files| files.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        rule_files,
        ["meter.rules.yml"],
        "{RULE_TESTS} must test {RULES}"
    );
    let mut fired: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut quiet: BTreeSet<String> = BTreeSet::new();
    let mut tested_instances: BTreeSet<String> = BTreeSet::new();
    for group in tests["tests"].as_array().into_iter().flatten() {
        for series in group["input_series"].as_array().into_iter().flatten() {
            let series = text(series, "series");
            if let Some(at) = series.find("instance=\"") {
                let value = &series[at + 10..];
                tested_instances.insert(value[..value.find('"').unwrap_or(0)].to_string());
            }
        }
        for case in group["alert_rule_test"].as_array().into_iter().flatten() {
            let name = text(case, "alertname").to_string();
            let expected = case["exp_alerts"].as_array().cloned().unwrap_or_default();
            if expected.is_empty() {
                quiet.insert(name.clone());
            }
            for alert in expected {
                let annotations = &alert["exp_annotations"];
                let checked = ["summary", "description", "runbook_url"]
                    .iter()
                    .all(|key| !text(annotations, key).is_empty());
                if checked {
                    fired
                        .entry(name.clone())
                        .or_default()
                        .insert(text(&alert["exp_labels"], "severity").to_string());
                }
            }
        }
    }
    assert!(
        tested_instances.len() >= 2,
        "{RULE_TESTS}: input series must come from several meter instances, got {tested_instances:?}"
    );

    let groups = rules["groups"].as_array().cloned().unwrap_or_default();
    let group_names: Vec<&str> = groups.iter().map(|group| text(group, "name")).collect();
    assert_eq!(group_names, ["meter"], "{RULES}: one group, named meter");

    let mut problems = Vec::new();
    let mut alerts = 0;
    for rule in groups[0]["rules"].as_array().into_iter().flatten() {
        let name = text(rule, "alert");
        let expr = text(rule, "expr");
        let what = if name.is_empty() {
            format!("recording rule {}", text(rule, "record"))
        } else {
            format!("alert {name}")
        };
        let annotations = &rule["annotations"];

        // Metric names in the expression and in the annotations' query templates.
        let mut metrics = meter_metric_names(expr);
        for (_, value) in annotations.as_object().into_iter().flatten() {
            metrics.extend(meter_metric_names(value.as_str().unwrap_or("")));
        }
        for metric in metrics.iter().filter(|metric| !in_contract(metric)) {
            problems.push(format!("{what}: metric {metric} is not one meter exports"));
        }
        for label in label_names(expr) {
            if !contract_labels.contains(label.as_str()) {
                problems.push(format!("{what}: label {label} is not on any meter metric"));
            }
        }
        if name.is_empty() {
            continue;
        }
        alerts += 1;

        let severity = text(&rule["labels"], "severity");
        if !SEVERITIES.contains(&severity) {
            problems.push(format!(
                "{what}: severity label {severity:?}, want one of {SEVERITIES:?}"
            ));
        }
        for key in ["summary", "description"] {
            if text(annotations, key).trim().is_empty() {
                problems.push(format!("{what}: no {key} annotation"));
            }
        }
        let runbook_url = text(annotations, "runbook_url");
        match runbook_url.split_once('#') {
            Some((file, anchor)) if file.ends_with(RUNBOOK) => {
                if !anchors.contains(anchor) {
                    problems.push(format!(
                        "{what}: runbook_url {runbook_url}: no heading #{anchor} in {RUNBOOK}"
                    ));
                }
            }
            _ => problems.push(format!(
                "{what}: runbook_url {runbook_url:?} does not point at {RUNBOOK}#<anchor>"
            )),
        }

        match fired.get(name) {
            Some(severities) if severities.contains(severity) => {}
            _ => problems.push(format!(
                "{what} ({severity}): no case in {RULE_TESTS} where it fires with its labels and \
                 annotations checked"
            )),
        }
        if !quiet.contains(name) {
            problems.push(format!(
                "{what}: no case in {RULE_TESTS} where it must not fire"
            ));
        }
    }
    assert!(alerts > 0, "{RULES}: no alerting rules");
    assert!(problems.is_empty(), "{RULES}:\n  {}", problems.join("\n  "));
}

#[test]
fn the_checks_see_what_they_look_for() {
    assert_eq!(
        meter_metric_names(
            "sum(rate(meter_cost_usd_total[5m])) / xmeter_y + meter_budget_limit_usd2{job=\"meter\"}"
        ),
        BTreeSet::from([
            "meter_cost_usd_total".to_string(),
            "meter_budget_limit_usd2".to_string()
        ])
    );
    assert!(in_contract("meter_request_duration_seconds_bucket"));
    assert!(!in_contract("meter_cost_total"));
    assert_eq!(
        label_names(
            "sum by (provider, le) (rate(x{status=\"5xx\", route!~\"l.*\"}[5m])) \
             and on (job, instance) up"
        ),
        ["instance", "job", "le", "provider", "route", "status"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert!(
        heading_anchors("# A\n```\n# not a heading\n```\n## Meter Down (2m)\n")
            .into_iter()
            .eq(["a", "meter-down-2m"].map(String::from))
    );
}
