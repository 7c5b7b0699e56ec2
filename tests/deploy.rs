//! The deployment files in `deploy/`: the Prometheus config passes `promtool check config` (with
//! the repository's alert rules as its rule files), the systemd unit passes `systemd-analyze
//! verify` and a security review, every YAML and JSON file parses, both shipped meter configs load,
//! the compose file mounts and builds only files that exist and wires its services to each other
//! consistently, the Containerfile copies what exists and runs non-root, and the Kubernetes pod
//! runs meter hardened with its probes on the metrics port.
//!
//! Docker is not available in CI, so the image is not built and the stack is not started here.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use meter::config::Config;
use serde_json::Value;

/// The unit's ExecStart as installed; the verify test points it at the built binary.
const UNIT_EXEC_START: &str = "ExecStart=/usr/local/bin/meter --config /etc/meter/meter.toml serve";
/// The rule-file glob in prometheus.yml (a container path; compose mounts `../alerts` there).
const RULES_DIR_IN_CONTAINER: &str = "/etc/prometheus/rules";
const RULES_GLOB_SUFFIX: &str = ".rules.yml";
const METRICS_PORT: u16 = 9464;
const PROXY_PORT: u16 = 8787;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Parses YAML text (every document) with PyYAML's safe loader and returns it as JSON.
fn yaml_docs(text: &str, what: &str) -> Result<Vec<Value>, String> {
    let script = "import json, sys, yaml\n\
                  docs = list(yaml.safe_load_all(sys.stdin))\n\
                  print(json.dumps(docs, default=str))";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("python3 (with PyYAML) is required: {err}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(format!(
            "{what}: not valid YAML: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|err| format!("{what}: {err}"))
}

fn yaml_file(path: &Path) -> Vec<Value> {
    yaml_docs(&read(path), &path.display().to_string()).unwrap_or_else(|err| panic!("{err}"))
}

/// The single document of a YAML file.
fn yaml_doc(path: &Path) -> Value {
    let mut docs = yaml_file(path);
    assert_eq!(docs.len(), 1, "{}: expected one document", path.display());
    docs.remove(0)
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {value}"))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// `a/b/../c` -> `a/c`, without touching the filesystem.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn run(command: &mut Command) -> (bool, String, String) {
    let out = command
        .output()
        .unwrap_or_else(|err| panic!("{command:?}: {err}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn load_config(text: &str, name: &str) -> Config {
    Config::from_toml(text, name).unwrap_or_else(|err| panic!("{name}: {err}"))
}

fn builtin_drain_timeout() -> Duration {
    load_config("", "<defaults>").server.drain_timeout
}

// --- Prometheus --------------------------------------------------------------------------------

#[test]
fn prometheus_config_passes_promtool_with_the_repository_rules() {
    let promtool = tool("promtool").expect(
        "promtool is required (Debian/Ubuntu: apt-get install prometheus; .ci/run installs it)",
    );
    let config = deploy().join("prometheus/prometheus.yml");
    let (ok, stdout, stderr) = run(Command::new(&promtool)
        .arg("check")
        .arg("config")
        .arg(&config));
    assert!(
        ok,
        "promtool check config {}:\n{stdout}{stderr}",
        config.display()
    );

    // As deployed, the rules are the repository's alerts/, mounted at /etc/prometheus/rules:
    // check the same config with the glob pointing there, so the rule files it picks up are
    // checked too (a glob that matches nothing passes).
    let text = read(&config);
    let glob_in_container = format!("{RULES_DIR_IN_CONTAINER}/*{RULES_GLOB_SUFFIX}");
    assert_eq!(
        text.matches(&glob_in_container).count(),
        1,
        "prometheus.yml should load the rules from {glob_in_container}"
    );
    let alerts = repo().join("alerts");
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("prometheus.yml");
    std::fs::write(
        &copy,
        text.replace(RULES_DIR_IN_CONTAINER, &alerts.display().to_string()),
    )
    .unwrap();
    let (ok, stdout, stderr) = run(Command::new(&promtool)
        .arg("check")
        .arg("config")
        .arg(&copy));
    assert!(
        ok,
        "promtool check config with rule_files in {}:\n{stdout}{stderr}",
        alerts.display()
    );

    let doc = yaml_doc(&config);
    assert_eq!(
        doc["rule_files"],
        serde_json::json!([glob_in_container]),
        "rule_files"
    );
    let meter_job = doc["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|job| job["job_name"] == "meter")
        .expect("a scrape job named \"meter\" (the dashboards and rules select job=\"meter\")");
    let targets: Vec<&str> = meter_job["static_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["targets"].as_array().unwrap())
        .map(|target| str_of(target, "target"))
        .collect();
    assert_eq!(
        targets,
        [format!("meter:{METRICS_PORT}")],
        "meter job targets"
    );
    assert_eq!(
        doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"],
        serde_json::json!(["alertmanager:9093"]),
        "alerting"
    );
}

/// Every rule file in alerts/ is picked up by the `*.rules.yml` glob, and nothing else is (the
/// directory also holds the rules' promtool tests, which Prometheus cannot load as rules).
#[test]
fn the_rule_glob_matches_exactly_the_rule_files_in_alerts() {
    let alerts = repo().join("alerts");
    let Ok(entries) = std::fs::read_dir(&alerts) else {
        eprintln!("note: no alerts/ directory yet; nothing to match");
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.ends_with(".yml") || name.ends_with(".yaml")) {
            continue;
        }
        let docs = yaml_file(&path);
        let is_rule_file = docs.iter().any(|doc| doc.get("groups").is_some());
        assert_eq!(
            is_rule_file,
            name.ends_with(RULES_GLOB_SUFFIX),
            "alerts/{name}: Prometheus loads alerts/*{RULES_GLOB_SUFFIX} (deploy/prometheus/prometheus.yml); \
             rule files must be named so, and nothing else may be"
        );
    }
}

/// The commented Kubernetes service-discovery job, uncommented, is valid YAML, keeps job
/// "meter" and selects the container port the sidecar manifest names.
#[test]
fn the_commented_kubernetes_scrape_job_is_usable() {
    let text = read(&deploy().join("prometheus/prometheus.yml"));
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|line| line.trim() == "# - job_name: meter")
        .expect("a commented kubernetes_sd job named meter");
    let mut block = String::from("scrape_configs:\n");
    for line in &lines[start..] {
        let Some(rest) = line.strip_prefix("  # ") else {
            break;
        };
        if rest.trim_start().starts_with('#') {
            continue; // a comment inside the example
        }
        block.push_str("  ");
        block.push_str(rest);
        block.push('\n');
    }
    let docs = yaml_docs(&block, "the commented kubernetes_sd job").unwrap();
    let job = &docs[0]["scrape_configs"][0];
    assert_eq!(job["job_name"], "meter");
    assert_eq!(job["kubernetes_sd_configs"][0]["role"], "pod");
    let keeps_metrics_port = job["relabel_configs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|rule| {
            rule["action"] == "keep"
                && rule["source_labels"]
                    == serde_json::json!(["__meta_kubernetes_pod_container_port_name"])
                && rule["regex"] == "metrics"
        });
    assert!(
        keeps_metrics_port,
        "the job keeps the container port named metrics"
    );
}

// --- systemd -----------------------------------------------------------------------------------

/// `key=value` lines of a unit file's sections, in order.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value");
        out.push((
            section.clone(),
            key.trim().to_string(),
            value.trim().to_string(),
        ));
    }
    out
}

fn systemd_seconds(value: &str) -> u64 {
    let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().unwrap();
    match &value[digits.len()..] {
        "" | "s" | "sec" => n,
        "min" | "m" => n * 60,
        other => panic!("unexpected time unit {other:?} in {value:?}"),
    }
}

#[test]
fn systemd_unit_is_hardened_and_stops_after_the_drain() {
    let text = read(&deploy().join("systemd/meter.service"));
    let entries = unit_entries(&text);
    let service = |key: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|(section, k, _)| section == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    let one = |key: &str| -> &str {
        let values = service(key);
        assert_eq!(
            values.len(),
            1,
            "[Service] {key}= should be set once: {values:?}"
        );
        values[0]
    };

    assert!(
        text.lines().any(|l| l == UNIT_EXEC_START),
        "{UNIT_EXEC_START}"
    );
    assert_eq!(one("StateDirectory"), "meter");
    assert_eq!(one("ConfigurationDirectory"), "meter");
    assert_eq!(one("WorkingDirectory"), "/var/lib/meter");
    assert_eq!(one("EnvironmentFile"), "-/etc/meter/meter.env");
    assert!(
        one("User") == "meter" || service("DynamicUser") == ["yes"],
        "runs as an unprivileged user"
    );
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("KillSignal"), "SIGTERM");
    let drain = builtin_drain_timeout().as_secs();
    let stop = systemd_seconds(one("TimeoutStopSec"));
    assert!(
        stop >= drain + 30,
        "TimeoutStopSec={stop}s must exceed the drain ({drain}s) plus the ledger flush"
    );
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ] {
        assert_eq!(one(key), value, "[Service] {key}");
    }
    assert!(
        service("SystemCallFilter").contains(&"@system-service"),
        "SystemCallFilter=@system-service"
    );
}

#[test]
fn systemd_unit_passes_systemd_analyze() {
    let Some(analyze) = tool("systemd-analyze") else {
        eprintln!("note: systemd-analyze is not installed; the unit was not verified");
        return;
    };
    // verify needs ExecStart's binary to exist: point it at the one cargo built.
    let text = read(&deploy().join("systemd/meter.service"));
    let rewritten = text.replace(
        "ExecStart=/usr/local/bin/meter ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_meter")),
    );
    assert_ne!(
        rewritten, text,
        "ExecStart=/usr/local/bin/meter ... not found"
    );
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("meter.service");
    std::fs::write(&unit, rewritten).unwrap();

    let (ok, stdout, stderr) = run(Command::new(&analyze).arg("verify").arg(&unit));
    // verify exits 0 on unknown keys and unparsable values, with a warning naming the file.
    let complaints: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|line| line.contains("meter.service"))
        .collect();
    assert!(
        ok && complaints.is_empty(),
        "systemd-analyze verify:\n{stdout}{stderr}"
    );

    // The security review: overall exposure at most 2.0 ("OK"; the unit scores about 1.2).
    let (ok, stdout, stderr) = run(Command::new(&analyze)
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&unit));
    if stderr.contains("unrecognized option") {
        eprintln!("note: this systemd-analyze has no offline security review");
        return;
    }
    assert!(
        ok,
        "systemd-analyze security: exposure above 2.0:\n{stdout}{stderr}"
    );
}

#[test]
fn systemd_sysusers_creates_the_units_user() {
    let Some(sysusers) = tool("systemd-sysusers") else {
        eprintln!("note: systemd-sysusers is not installed; meter.sysusers was not checked");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let (ok, stdout, stderr) = run(Command::new(sysusers)
        .arg(format!("--root={}", root.path().display()))
        .arg(deploy().join("systemd/meter.sysusers")));
    assert!(
        ok && !stderr.contains("meter.sysusers:"),
        "systemd-sysusers:\n{stdout}{stderr}"
    );
    let passwd = read(&root.path().join("etc/passwd"));
    let user = passwd
        .lines()
        .find(|line| line.starts_with("meter:"))
        .unwrap_or_else(|| panic!("no meter user created:\n{passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    assert_eq!(fields[5], "/var/lib/meter", "home");
    assert_ne!(fields[2], "0", "uid");
    let unit = read(&deploy().join("systemd/meter.service"));
    assert!(unit.lines().any(|line| line == "User=meter"));
}

// --- every file parses -------------------------------------------------------------------------

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    let mut files = Vec::new();
    files_under(&deploy(), &mut files);
    let (mut yaml, mut json) = (0, 0);
    for path in &files {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => {
                let docs = yaml_file(path);
                assert!(
                    docs.iter().any(|doc| !doc.is_null()),
                    "{}: empty YAML",
                    path.display()
                );
                yaml += 1;
            }
            Some("json") => {
                serde_json::from_str::<Value>(&read(path))
                    .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
                json += 1;
            }
            _ => {}
        }
    }
    // compose, prometheus, alertmanager, two grafana provisioning files, kubernetes.
    assert!(yaml >= 6, "found only {yaml} YAML files under deploy/");
    eprintln!("{yaml} YAML and {json} JSON files parse");
}

// --- meter's own configuration -----------------------------------------------------------------

#[test]
fn compose_meter_toml_is_a_valid_meter_config() {
    let path = deploy().join("meter/meter.toml");
    let config = load_config(&read(&path), &path.display().to_string());
    // The SMTP host is the compose service name of the mail catcher, which speaks plain SMTP.
    assert_eq!(config.smtp.host, "mailpit");
    assert_eq!(config.smtp.port, 1025);
    assert_eq!(config.smtp.tls.as_str(), "none");
    assert!(config.smtp.username.is_empty(), "Mailpit needs no login");
    assert!(
        config.budgets.iter().any(|b| !b.notify.is_empty()),
        "a budget that emails"
    );
    let weekly = config.weekly.as_ref().expect("[report.weekly]");
    assert!(!weekly.to.is_empty());
    assert_eq!(config.store.path, Path::new("/var/lib/meter/meter.db"));
    assert_eq!(config.server.metrics_listen.port(), METRICS_PORT);
    assert_eq!(config.server.listen.port(), PROXY_PORT);
}

// --- compose -----------------------------------------------------------------------------------

struct Mount {
    /// Resolved host path (bind mounts only).
    host: Option<PathBuf>,
    target: String,
}

fn mounts(service: &Value, name: &str, compose_dir: &Path, named: &BTreeSet<String>) -> Vec<Mount> {
    let Some(volumes) = service.get("volumes") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for volume in volumes.as_array().unwrap() {
        let (source, target) = match volume {
            Value::String(short) => {
                let parts: Vec<&str> = short.split(':').collect();
                assert!(parts.len() >= 2, "{name}: volume {short:?} has no target");
                (parts[0].to_string(), parts[1].to_string())
            }
            Value::Object(long) => (
                str_of(&long["source"], "volume source").to_string(),
                str_of(&long["target"], "volume target").to_string(),
            ),
            other => panic!("{name}: unexpected volume {other}"),
        };
        let bind = source.starts_with('.') || source.starts_with('/') || source.starts_with('~');
        let host = if bind {
            let host = normalize(&compose_dir.join(&source));
            assert!(
                host.exists(),
                "{name}: bind-mounted {source} ({}) does not exist",
                host.display()
            );
            assert!(
                host.starts_with(repo()),
                "{name}: {source} is outside the repository"
            );
            Some(host)
        } else {
            assert!(
                named.contains(&source),
                "{name}: volume {source} is not declared"
            );
            None
        };
        out.push(Mount { host, target });
    }
    out
}

/// The host path behind a container path, through the service's bind mounts.
fn host_path(mounts: &[Mount], container_path: &str) -> Option<PathBuf> {
    mounts.iter().find_map(|mount| {
        let host = mount.host.as_ref()?;
        let rest = Path::new(container_path).strip_prefix(&mount.target).ok()?;
        Some(if rest.as_os_str().is_empty() {
            host.clone()
        } else {
            host.join(rest)
        })
    })
}

/// Absolute container paths named by a service's environment and command (`/x`, `--flag=/x`).
fn container_paths(service: &Value) -> Vec<String> {
    let mut values: Vec<&str> = Vec::new();
    match service.get("environment") {
        Some(Value::Object(env)) => values.extend(env.values().filter_map(Value::as_str)),
        Some(Value::Array(env)) => values.extend(
            env.iter()
                .filter_map(Value::as_str)
                .filter_map(|kv| kv.split_once('=').map(|(_, v)| v)),
        ),
        _ => {}
    }
    if let Some(Value::Array(command)) = service.get("command") {
        values.extend(command.iter().filter_map(Value::as_str));
    }
    values
        .into_iter()
        .map(|v| v.rsplit_once('=').map_or(v, |(_, path)| path))
        .filter(|v| v.starts_with('/'))
        .map(str::to_string)
        .collect()
}

#[test]
fn compose_builds_and_mounts_only_what_exists_and_wires_the_services() {
    let compose_path = deploy().join("compose.yaml");
    let compose_dir = compose_path.parent().unwrap();
    let compose = yaml_doc(&compose_path);
    let services = compose["services"].as_object().expect("services");
    for expected in ["meter", "prometheus", "alertmanager", "grafana", "mailpit"] {
        assert!(services.contains_key(expected), "no {expected} service");
    }
    let named: BTreeSet<String> = compose
        .get("volumes")
        .and_then(Value::as_object)
        .map(|v| v.keys().cloned().collect())
        .unwrap_or_default();

    let mut all_mounts = std::collections::BTreeMap::new();
    for (name, service) in services {
        // Images: pinned to a version (the locally built meter image aside).
        if service.get("build").is_none() {
            let image = str_of(&service["image"], "image");
            let (_, tag) = image
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("{name}: image {image} has no tag"));
            assert!(
                tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
                "{name}: image {image} is not pinned to a version"
            );
        }
        // Ports: published on loopback only.
        for port in service
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let port = str_of(port, "port");
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name}: port {port} is not bound to 127.0.0.1"
            );
        }
        let service_mounts = mounts(service, name, compose_dir, &named);
        for path in container_paths(service) {
            if let Some(host) = host_path(&service_mounts, &path) {
                assert!(
                    host.exists(),
                    "{name}: {path} is {} on the host, which does not exist",
                    host.display()
                );
            }
        }
        all_mounts.insert(name.clone(), service_mounts);
    }

    // meter: built from the Containerfile with the repository root as context.
    let build = &services["meter"]["build"];
    let context = normalize(&compose_dir.join(str_of(&build["context"], "build.context")));
    assert_eq!(context, repo(), "build context is the repository root");
    let dockerfile = context.join(str_of(&build["dockerfile"], "build.dockerfile"));
    assert!(
        dockerfile.is_file(),
        "{} does not exist",
        dockerfile.display()
    );
    assert_eq!(dockerfile, deploy().join("Containerfile"));
    let meter_config = host_path(&all_mounts["meter"], "/etc/meter/meter.toml")
        .expect("meter.toml mounted at /etc/meter/meter.toml");
    assert_eq!(meter_config, deploy().join("meter/meter.toml"));
    assert_eq!(
        services["meter"]["environment"]["METER_CONFIG"],
        "/etc/meter/meter.toml"
    );
    assert!(
        all_mounts["meter"]
            .iter()
            .any(|m| m.host.is_none() && m.target == "/var/lib/meter"),
        "the ledger is on a named volume at /var/lib/meter"
    );
    let ports: Vec<&str> = services["meter"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| str_of(p, "port"))
        .collect();
    assert_eq!(
        ports,
        [
            format!("127.0.0.1:{PROXY_PORT}:{PROXY_PORT}"),
            format!("127.0.0.1:{METRICS_PORT}:{METRICS_PORT}")
        ]
    );

    // prometheus: the config and the rules directory are the repository's.
    let prom = &all_mounts["prometheus"];
    assert_eq!(
        host_path(prom, "/etc/prometheus/prometheus.yml"),
        Some(deploy().join("prometheus/prometheus.yml"))
    );
    assert_eq!(
        host_path(prom, RULES_DIR_IN_CONTAINER),
        Some(repo().join("alerts")),
        "alerts/ mounted where prometheus.yml's rule_files point"
    );

    // alertmanager: its config, mailing the mail catcher without TLS.
    let am_config = host_path(
        &all_mounts["alertmanager"],
        "/etc/alertmanager/alertmanager.yml",
    )
    .expect("alertmanager.yml mounted");
    let am = yaml_doc(&am_config);
    assert_eq!(am["global"]["smtp_smarthost"], "mailpit:1025");
    assert_eq!(am["global"]["smtp_require_tls"], false);
    let receivers = am["receivers"].as_array().unwrap();
    assert!(receivers.iter().any(|r| r.get("email_configs").is_some()));

    // grafana: provisioning from deploy/grafana, dashboards from the repository's dashboards/.
    let grafana = &all_mounts["grafana"];
    let provisioning =
        host_path(grafana, "/etc/grafana/provisioning").expect("provisioning mounted");
    assert_eq!(provisioning, deploy().join("grafana/provisioning"));
    let datasources = yaml_doc(&provisioning.join("datasources/prometheus.yml"));
    let datasource = &datasources["datasources"][0];
    assert_eq!(datasource["uid"], "prometheus");
    assert_eq!(datasource["name"], "Prometheus");
    assert_eq!(datasource["type"], "prometheus");
    assert_eq!(datasource["url"], "http://prometheus:9090");
    let providers = yaml_doc(&provisioning.join("dashboards/meter.yml"));
    let dashboards_path = str_of(
        &providers["providers"][0]["options"]["path"],
        "dashboard provider path",
    );
    assert_eq!(
        host_path(grafana, dashboards_path),
        Some(repo().join("dashboards")),
        "the dashboard provider reads the mounted dashboards/"
    );
}

#[test]
fn alertmanager_config_passes_amtool() {
    let Some(amtool) = tool("amtool") else {
        eprintln!("note: amtool is not installed; alertmanager.yml was only parsed");
        return;
    };
    let config = deploy().join("alertmanager/alertmanager.yml");
    let (ok, stdout, stderr) = run(Command::new(amtool).arg("check-config").arg(&config));
    assert!(
        ok,
        "amtool check-config {}:\n{stdout}{stderr}",
        config.display()
    );
}

// --- Containerfile -----------------------------------------------------------------------------

/// Instructions with continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((op.to_uppercase(), args.trim().to_string()));
        current.clear();
    }
    out
}

#[test]
fn containerfile_builds_from_existing_files_and_runs_non_root() {
    let text = read(&deploy().join("Containerfile"));
    let steps = instructions(&text);
    let of = |op: &str| -> Vec<&str> {
        steps
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    assert!(of("FROM").len() >= 2, "multi-stage");
    assert!(
        of("RUN")
            .iter()
            .any(|run| run.contains("cargo build --release --locked")),
        "cargo build --release --locked"
    );
    // What the build copies from the context (the repository root) exists.
    for copy in of("COPY") {
        if copy.split_whitespace().any(|w| w.starts_with("--from")) {
            continue;
        }
        let words: Vec<&str> = copy
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        for source in &words[..words.len() - 1] {
            let path = repo().join(source.trim_end_matches('/'));
            assert!(
                path.exists(),
                "COPY {source}: {} does not exist",
                path.display()
            );
        }
    }
    let user = *of("USER").last().expect("USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric uid");
    assert_eq!(uid, 10001, "non-root uid 10001");
    assert_eq!(of("EXPOSE"), [format!("{PROXY_PORT} {METRICS_PORT}")]);
    assert_eq!(of("VOLUME"), ["[\"/var/lib/meter\"]"]);
    assert_eq!(of("ENTRYPOINT"), ["[\"meter\"]"]);
    let cmd: Vec<String> = serde_json::from_str(of("CMD").last().expect("CMD")).unwrap();
    assert_eq!(
        cmd,
        [
            "serve",
            "--listen",
            &format!("0.0.0.0:{PROXY_PORT}"),
            "--metrics-listen",
            &format!("0.0.0.0:{METRICS_PORT}"),
            "--db",
            "/var/lib/meter/meter.db"
        ]
    );
    // Every flag of the command is one `meter serve` takes.
    let help = run(Command::new(env!("CARGO_BIN_EXE_meter")).args(["serve", "--help"])).1;
    for flag in cmd.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag.as_str()), "meter serve has no {flag}");
    }
}

// --- Kubernetes --------------------------------------------------------------------------------

fn port_of(container: &Value, port: &Value) -> u64 {
    match port {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(name) => container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}")),
        other => panic!("unexpected port {other}"),
    }
}

#[test]
fn kubernetes_sidecar_runs_meter_hardened_with_probes() {
    let docs = yaml_file(&deploy().join("kubernetes/sidecar.yaml"));
    let kind = |kind: &str| -> Vec<&Value> { docs.iter().filter(|d| d["kind"] == kind).collect() };

    // The ConfigMap's meter.toml is a valid meter config.
    let config_map = kind("ConfigMap");
    let config_map = config_map.first().expect("a ConfigMap");
    let toml = str_of(&config_map["data"]["meter.toml"], "ConfigMap meter.toml");
    let config = load_config(toml, "sidecar.yaml ConfigMap meter.toml");

    let deployment = kind("Deployment");
    let deployment = deployment.first().expect("a Deployment");
    let pod = &deployment["spec"]["template"];
    let spec = &pod["spec"];
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|key| spec.get(*key).and_then(Value::as_array))
        .flatten()
        .collect();
    let meter = containers
        .iter()
        .find(|c| c["name"] == "meter")
        .expect("a container named meter");
    let agent = containers
        .iter()
        .find(|c| c["name"] != "meter")
        .expect("an agent container");

    // Hardening.
    let security = &meter["securityContext"];
    assert_eq!(security["runAsNonRoot"], true, "meter runAsNonRoot");
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert!(
        security["capabilities"]["drop"]
            .as_array()
            .unwrap()
            .contains(&Value::from("ALL")),
        "drops ALL capabilities"
    );
    assert_ne!(spec["securityContext"]["runAsNonRoot"], false);
    for kind in ["requests", "limits"] {
        assert!(
            meter["resources"][kind]["memory"].is_string(),
            "meter resources.{kind}.memory"
        );
    }

    // Probes on the metrics port, which is the config's metrics_listen port.
    let metrics_port = config.server.metrics_listen.port();
    assert_eq!(metrics_port, METRICS_PORT);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &meter[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe} path");
        assert_eq!(
            port_of(meter, &get["port"]),
            u64::from(metrics_port),
            "{probe} port"
        );
    }

    // The proxy is on loopback, and the agent is pointed at it.
    assert!(
        config.server.listen.ip().is_loopback(),
        "the proxy listens on loopback in the pod"
    );
    let env_of = |container: &Value, name: &str| -> Option<Value> {
        container["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
    };
    let base_url = env_of(agent, "OPENAI_BASE_URL").expect("agent OPENAI_BASE_URL");
    assert_eq!(
        base_url["value"],
        format!("http://{}/openai/v1", config.server.listen),
        "the agent's OPENAI_BASE_URL is meter's listen address"
    );
    assert!(
        meter["ports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["containerPort"] != u64::from(config.server.listen.port())),
        "the proxy port is not exposed on the pod IP"
    );

    // The SMTP password comes from a Secret, under the name the config reads.
    let password = env_of(meter, &config.smtp.password_env).expect("SMTP password env");
    assert!(
        password["valueFrom"]["secretKeyRef"]["name"].is_string(),
        "{} from a Secret",
        config.smtp.password_env
    );

    // meter runs with that config, its ledger on a volume.
    let args: Vec<&str> = meter["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    let config_arg = args
        .iter()
        .position(|a| *a == "--config")
        .map(|i| args[i + 1])
        .expect("--config");
    let mount_of = |path: &Path| -> Option<String> {
        meter["volumeMounts"]
            .as_array()?
            .iter()
            .filter(|m| path.starts_with(str_of(&m["mountPath"], "mountPath")))
            .map(|m| str_of(&m["name"], "volume name").to_string())
            .next()
    };
    let config_volume = mount_of(Path::new(config_arg)).expect("the config file is mounted");
    let ledger_volume = mount_of(&config.store.path).expect("the ledger is on a volume");
    let volumes = spec["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap();
    assert_eq!(
        volume(&config_volume)["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    let ledger = volume(&ledger_volume);
    assert!(
        ledger.get("persistentVolumeClaim").is_some() || ledger.get("emptyDir").is_some(),
        "ledger volume"
    );

    // Shutdown outlasts the drain; Prometheus finds the metrics port.
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > config.server.drain_timeout.as_secs() + 30,
        "terminationGracePeriodSeconds {grace} must exceed the drain plus the ledger flush"
    );
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], metrics_port.to_string());

    // The Service, if any, exposes the metrics port only.
    for service in kind("Service") {
        for port in service["spec"]["ports"].as_array().unwrap() {
            let target = port.get("targetPort").unwrap_or(&port["port"]);
            assert_eq!(port_of(meter, target), u64::from(metrics_port));
        }
    }
}
