//! Configuration: raw TOML structs mirroring `meter.toml`, then one validating conversion into
//! [`Config`]. All defaults live here, once; `meter init` renders them. Nothing past this module
//! sees raw strings from the file.

use std::collections::BTreeSet;

use alerting::{
    DEFAULT_FORECAST_MIN_ELAPSED, DEFAULT_RESERVE_OUTPUT_TOKENS, DEFAULT_SMTP_PORT,
    DEFAULT_SMTP_RETRY_MAX_SECS, DEFAULT_SMTP_RETRY_MIN_SECS, DEFAULT_SMTP_TIMEOUT_SECS,
};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod alerting;
pub use alerting::{
    BudgetConfig, BudgetPeriod, BudgetScope, SmtpConfig, SmtpTls, Unpriced, WeeklyConfig,
};

/// A configuration error: names the file, the key path and the reason in one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("config {file}: {message}")]
    Invalid { file: String, message: String },
}

/// The wire format a provider speaks by default (SPEC §2 `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireKind {
    OpenAi,
    Anthropic,
    Gemini,
    Ollama,
}

impl WireKind {
    fn parse(value: &str) -> Option<WireKind> {
        match value {
            "openai" => Some(WireKind::OpenAi),
            "anthropic" => Some(WireKind::Anthropic),
            "gemini" => Some(WireKind::Gemini),
            "ollama" => Some(WireKind::Ollama),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WireKind::OpenAi => "openai",
            WireKind::Anthropic => "anthropic",
            WireKind::Gemini => "gemini",
            WireKind::Ollama => "ollama",
        }
    }
}

/// The routing tier of a provider: the three tiers of the hybrid setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    Direct,
    Router,
    Local,
}

impl Route {
    fn parse(value: &str) -> Option<Route> {
        match value {
            "direct" => Some(Route::Direct),
            "router" => Some(Route::Router),
            "local" => Some(Route::Local),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Router => "router",
            Route::Local => "local",
        }
    }

    pub const ALL: [Route; 3] = [Route::Direct, Route::Router, Route::Local];
}

/// How sensitive an agent's data is (SPEC §1 `data_class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataClass {
    Public,
    Confidential,
    Regulated,
}

impl DataClass {
    fn parse(value: &str) -> Option<DataClass> {
        match value {
            "public" => Some(DataClass::Public),
            "confidential" => Some(DataClass::Confidential),
            "regulated" => Some(DataClass::Regulated),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataClass::Public => "public",
            DataClass::Confidential => "confidential",
            DataClass::Regulated => "regulated",
        }
    }
}

/// A parsed upstream base URL: scheme, authority and an optional path prefix (no trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub https: bool,
    pub authority: http::uri::Authority,
    pub base_path: String,
}

impl Upstream {
    pub fn parse(value: &str) -> Result<Upstream, String> {
        let uri: http::Uri = value
            .parse()
            .map_err(|err| format!("invalid URL {value:?}: {err}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("URL {value:?} must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("URL {value:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("URL {value:?} must not carry credentials"));
        }
        if uri.query().is_some() {
            return Err(format!("URL {value:?} must not have a query"));
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Upstream {
            https,
            authority,
            base_path,
        })
    }

    pub fn host(&self) -> &str {
        self.authority.host()
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority, self.base_path)
    }
}

/// A provider meter routes to (built-in or from config).
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub name: String,
    pub upstream: Upstream,
    pub kind: WireKind,
    /// Whose conventions its responses follow (from the name, else the upstream host).
    pub flavor: crate::usage::Flavor,
    pub route: Route,
    pub markup: f64,
    pub hosts: Vec<String>,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    /// Add `stream_options.include_usage` to OpenAI-format streaming requests that lack it, and
    /// hide the usage-only chunk it causes from the client.
    pub inject_stream_usage: bool,
}

/// Whether meter asks a provider for stream usage by default: every OpenAI-format API that
/// documents `stream_options.include_usage`. Should a provider reject it (HTTP 400), the
/// request is resent as the client sent it.
fn default_inject(flavor: crate::usage::Flavor) -> bool {
    use crate::usage::Flavor;
    // Mistral and OpenRouter send stream usage unasked; injecting (and then hiding the chunk)
    // would take from the client a chunk it gets without meter.
    !matches!(flavor, Flavor::Mistral | Flavor::OpenRouter)
}

/// An agent known by name, with the fingerprints of its API keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub name: String,
    pub keys: Vec<String>,
    pub data_class: DataClass,
    pub routes: BTreeSet<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub drain_timeout: Duration,
    pub max_request_body_bytes: u64,
    pub max_parse_body_bytes: u64,
    pub max_rewrite_body_bytes: u64,
    /// Client connections served at once on the proxy port; past it, new ones wait.
    pub max_connections: usize,
    /// Threads serving calls; 0: one per CPU meter may run on. With one, meter runs a
    /// single-threaded runtime (no work-stealing scheduler: about a third less CPU per call).
    pub worker_threads: usize,
    /// How long a client connection may go without sending complete request headers (slow or
    /// silent clients, idle keep-alive and HTTP/2 connections) before it is closed.
    pub header_read_timeout: Duration,
    /// This meter's name in a fleet: the `instance_id` label of `meter_instance_info`
    /// (`server.instance`; empty in the file: the host name).
    pub instance: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub batch_size: usize,
    /// Group commit: records that arrive within this long of the last commit share its
    /// successor's transaction. A crash (`kill -9`, power loss) loses at most the records of
    /// the last interval; an idle ledger commits a lone record at once.
    pub commit_interval: Duration,
    pub busy_timeout: Duration,
    /// How often budget spend is re-read from the ledger (rows written by other meters on the
    /// same ledger, or by hand).
    pub refresh: Duration,
    /// A shared PostgreSQL ledger (`postgres://...`): when set, the ledger is there and
    /// `path` is not used for it.
    pub url: Option<String>,
    /// PostgreSQL connections each meter keeps at most (writer, alerter, commands).
    pub pool_size: u32,
    /// Records held in memory while PostgreSQL is unreachable; past it they spill to the
    /// journal.
    pub queue_limit: usize,
    /// The local SQLite journal records spill to during a PostgreSQL outage, replayed in order
    /// when it returns.
    pub journal: PathBuf,
    /// How long connecting to PostgreSQL may take before it counts as down.
    pub connect_timeout: Duration,
    /// Extra trusted roots (PEM) for the PostgreSQL server's certificate, added to the
    /// system's: the CA of a managed database or a private one.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Extra trusted roots (PEM), added to the system's: a private CA, a test CA.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// When the client hangs up mid-stream, read on to the provider's usage (bounded by
    /// `drain_on_disconnect_timeout`) instead of closing the upstream.
    pub drain_on_disconnect: bool,
    pub drain_on_disconnect_timeout: Duration,
    /// `upstream.idle_timeout_secs`: the providers' default, and the longest silence of a
    /// forward-proxy passthrough tunnel.
    pub idle_timeout: Duration,
}

/// `[proxy.forward]`: forward-proxy mode (SPEC §2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ForwardConfig {
    /// Answer `CONNECT` to configured provider hosts (intercepted and metered) and plain-HTTP
    /// absolute-form requests to them.
    pub enabled: bool,
    /// `CONNECT` to any other host is tunnelled blind (unmetered) instead of refused.
    pub passthrough: bool,
    /// Where the local CA lives; `None`: `meter-ca` beside the ledger (see [`Config::ca_dir`]).
    pub ca_dir: Option<PathBuf>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub timezone: chrono_tz::Tz,
    pub server: ServerConfig,
    pub forward: ForwardConfig,
    pub store: StoreConfig,
    pub upstream: UpstreamConfig,
    pub providers: Vec<Provider>,
    pub agents: Vec<Agent>,
    /// `[[price]]` entries: the rate table's top layer.
    pub prices: Vec<crate::pricing::RateEntry>,
    /// The `prices_file` (middle layer), loaded when it exists.
    pub prices_file: PathBuf,
    pub review: ReviewConfig,
    pub smtp: SmtpConfig,
    pub metrics: MetricsConfig,
    pub budgets: Vec<BudgetConfig>,
    /// `[report.weekly]`, when set.
    pub weekly: Option<WeeklyConfig>,
}

/// `[metrics]`: bounds on label cardinality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Distinct `agent` label values before new ones are counted as `other`.
    pub max_agents: usize,
    /// Distinct `model` label values before new ones are counted as `other`.
    pub max_models: usize,
}

/// Thresholds of `meter review` (`[review]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewConfig {
    /// Router spend an agent must save on a direct key, per quarter, to be worth a finding.
    pub min_savings_usd: f64,
    /// Direct providers with fewer calls than this in the quarter could sit behind the router.
    pub rare_provider_max_calls: u64,
    /// The router's fee assumed when moving a provider behind it (when no router is priced).
    pub router_fee: f64,
    /// Calls whose output is this short, and that cost at least `local_min_call_usd`, are
    /// candidates for a local model.
    pub local_max_output_tokens: u64,
    pub local_min_call_usd: f64,
}

/// Built-in providers (SPEC §2): name, upstream, kind, route.
pub const BUILTIN_PROVIDERS: &[(&str, &str, WireKind, Route)] = &[
    (
        "openai",
        "https://api.openai.com",
        WireKind::OpenAi,
        Route::Direct,
    ),
    (
        "anthropic",
        "https://api.anthropic.com",
        WireKind::Anthropic,
        Route::Direct,
    ),
    (
        "gemini",
        "https://generativelanguage.googleapis.com",
        WireKind::Gemini,
        Route::Direct,
    ),
    (
        "openrouter",
        "https://openrouter.ai/api",
        WireKind::OpenAi,
        Route::Router,
    ),
    (
        "mistral",
        "https://api.mistral.ai",
        WireKind::OpenAi,
        Route::Direct,
    ),
    ("xai", "https://api.x.ai", WireKind::OpenAi, Route::Direct),
    (
        "deepseek",
        "https://api.deepseek.com",
        WireKind::OpenAi,
        Route::Direct,
    ),
    (
        "groq",
        "https://api.groq.com/openai",
        WireKind::OpenAi,
        Route::Direct,
    ),
    (
        "ollama",
        "http://127.0.0.1:11434",
        WireKind::Ollama,
        Route::Local,
    ),
    (
        "vllm",
        "http://127.0.0.1:8000",
        WireKind::OpenAi,
        Route::Local,
    ),
];

// Defaults, once.
const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
const DEFAULT_DB: &str = "meter.db";
const DEFAULT_PRICES_FILE: &str = "prices.toml";
const DEFAULT_CA_DIR: &str = "meter-ca";
const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 30;
const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 32 * 1024 * 1024;
const DEFAULT_MAX_PARSE_BODY_BYTES: u64 = 64 * 1024 * 1024;
const DEFAULT_MAX_REWRITE_BODY_BYTES: u64 = 4 * 1024 * 1024;
const DEFAULT_DRAIN_ON_DISCONNECT_SECS: u64 = 120;
const DEFAULT_BATCH_SIZE: usize = 512;
const DEFAULT_COMMIT_INTERVAL_MS: u64 = 100;
const DEFAULT_BUSY_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_REFRESH_SECS: u64 = 10;
pub const DEFAULT_METRICS_MAX_AGENTS: usize = 200;
pub const DEFAULT_METRICS_MAX_MODELS: usize = 300;
const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
const DEFAULT_MAX_CONNECTIONS: usize = 4096;
const MAX_MAX_CONNECTIONS: usize = 1 << 20;
const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 30;
// Reasoning models can think for many minutes before the first byte of a non-streaming answer
// (o1/o3, extended thinking), and as long between two events of a stream (a reasoning phase
// that sends nothing). Both are above the SDKs' own 10-minute default timeouts, so that the
// client, not meter, decides when a slow call is given up.
const DEFAULT_RESPONSE_TIMEOUT_SECS: u64 = 900;
const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 900;
const DEFAULT_POOL_IDLE_TIMEOUT_SECS: u64 = 90;
const DEFAULT_POOL_MAX_IDLE_PER_HOST: usize = 512;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    timezone: String,
    prices_file: String,
    server: RawServer,
    proxy: RawProxy,
    store: RawStore,
    upstream: RawUpstream,
    provider: Vec<RawProvider>,
    agent: Vec<RawAgent>,
    price: Vec<crate::pricing::RawPrice>,
    review: RawReview,
    smtp: alerting::RawSmtp,
    metrics: RawMetrics,
    budget: Vec<alerting::RawBudget>,
    report: alerting::RawReport,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            timezone: "UTC".to_string(),
            prices_file: DEFAULT_PRICES_FILE.to_string(),
            server: RawServer::default(),
            proxy: RawProxy::default(),
            store: RawStore::default(),
            upstream: RawUpstream::default(),
            provider: Vec::new(),
            agent: Vec::new(),
            price: Vec::new(),
            review: RawReview::default(),
            smtp: alerting::RawSmtp::default(),
            metrics: RawMetrics::default(),
            budget: Vec::new(),
            report: alerting::RawReport::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    max_agents: usize,
    max_models: usize,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            max_agents: DEFAULT_METRICS_MAX_AGENTS,
            max_models: DEFAULT_METRICS_MAX_MODELS,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawReview {
    min_savings_usd: f64,
    rare_provider_max_calls: u64,
    router_fee: f64,
    local_max_output_tokens: u64,
    local_min_call_usd: f64,
}

impl Default for RawReview {
    fn default() -> Self {
        RawReview {
            min_savings_usd: 10.0,
            rare_provider_max_calls: 100,
            router_fee: 0.055,
            local_max_output_tokens: 200,
            local_min_call_usd: 0.001,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    metrics_listen: String,
    drain_timeout_secs: u64,
    max_request_body_bytes: u64,
    max_parse_body_bytes: u64,
    max_rewrite_body_bytes: u64,
    max_connections: usize,
    worker_threads: usize,
    header_read_timeout_secs: u64,
    instance: String,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: DEFAULT_LISTEN.to_string(),
            metrics_listen: DEFAULT_METRICS_LISTEN.to_string(),
            drain_timeout_secs: DEFAULT_DRAIN_TIMEOUT_SECS,
            max_request_body_bytes: DEFAULT_MAX_REQUEST_BODY_BYTES,
            max_parse_body_bytes: DEFAULT_MAX_PARSE_BODY_BYTES,
            max_rewrite_body_bytes: DEFAULT_MAX_REWRITE_BODY_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            worker_threads: 0,
            header_read_timeout_secs: DEFAULT_HEADER_READ_TIMEOUT_SECS,
            instance: String::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProxy {
    forward: RawForward,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawForward {
    enabled: bool,
    passthrough: bool,
    ca_dir: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    path: String,
    batch_size: usize,
    commit_interval_ms: u64,
    busy_timeout_ms: u64,
    refresh_secs: u64,
    url: String,
    pool_size: u32,
    queue_limit: usize,
    journal: String,
    connect_timeout_secs: u64,
    ca_file: String,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            path: DEFAULT_DB.to_string(),
            batch_size: DEFAULT_BATCH_SIZE,
            commit_interval_ms: DEFAULT_COMMIT_INTERVAL_MS,
            busy_timeout_ms: DEFAULT_BUSY_TIMEOUT_MS,
            refresh_secs: DEFAULT_REFRESH_SECS,
            url: String::new(),
            pool_size: DEFAULT_POOL_SIZE,
            queue_limit: DEFAULT_QUEUE_LIMIT,
            journal: DEFAULT_JOURNAL.to_string(),
            connect_timeout_secs: DEFAULT_PG_CONNECT_TIMEOUT_SECS,
            ca_file: String::new(),
        }
    }
}

/// `store.pool_size`: the writer, the alerter and a spare.
const DEFAULT_POOL_SIZE: u32 = 4;
/// `store.queue_limit`: about 10 s of a busy meter's records in memory.
const DEFAULT_QUEUE_LIMIT: usize = 50_000;
/// `store.journal`: beside the config (or the working directory).
const DEFAULT_JOURNAL: &str = "meter-journal.db";
const DEFAULT_PG_CONNECT_TIMEOUT_SECS: u64 = 5;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    ca_file: String,
    connect_timeout_secs: u64,
    response_timeout_secs: u64,
    idle_timeout_secs: u64,
    pool_idle_timeout_secs: u64,
    pool_max_idle_per_host: usize,
    drain_on_disconnect: bool,
    drain_on_disconnect_secs: u64,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            ca_file: String::new(),
            connect_timeout_secs: DEFAULT_CONNECT_TIMEOUT_SECS,
            response_timeout_secs: DEFAULT_RESPONSE_TIMEOUT_SECS,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            pool_idle_timeout_secs: DEFAULT_POOL_IDLE_TIMEOUT_SECS,
            pool_max_idle_per_host: DEFAULT_POOL_MAX_IDLE_PER_HOST,
            drain_on_disconnect: false,
            drain_on_disconnect_secs: DEFAULT_DRAIN_ON_DISCONNECT_SECS,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: String,
    upstream: Option<String>,
    kind: Option<String>,
    route: Option<String>,
    markup: Option<f64>,
    hosts: Option<Vec<String>>,
    response_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    inject_stream_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: String,
    #[serde(default)]
    keys: Vec<String>,
    data_class: Option<String>,
    routes: Option<Vec<String>>,
}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// No file: built-in defaults.
    Defaults,
    File(PathBuf),
}

impl ConfigSource {
    /// `--config`/`METER_CONFIG` when given, else `./meter.toml` when it exists, else defaults.
    pub fn resolve(explicit: Option<&Path>) -> ConfigSource {
        match explicit {
            Some(path) => ConfigSource::File(path.to_path_buf()),
            None => {
                let local = Path::new("meter.toml");
                if local.is_file() {
                    ConfigSource::File(local.to_path_buf())
                } else {
                    ConfigSource::Defaults
                }
            }
        }
    }
}

impl Config {
    /// Loads and validates the configuration from `source`.
    pub fn load(source: &ConfigSource) -> Result<Config, ConfigError> {
        match source {
            ConfigSource::Defaults => Config::from_toml("", "<built-in defaults>"),
            ConfigSource::File(path) => {
                let file = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    file: file.clone(),
                    source,
                })?;
                Config::from_toml(&text, &file)
            }
        }
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
        // One line, whatever the file holds: a quoted key may carry newlines or terminal
        // escapes, and errors quote keys.
        let invalid = |message: String| ConfigError::Invalid {
            file: file.to_string(),
            message: one_line(&message),
        };
        let value: toml::Table = text.parse().map_err(|err: toml::de::Error| {
            let location = err
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: ")
                })
                .unwrap_or_default();
            invalid(format!("{location}{}", err.message()))
        })?;
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(value)).map_err(|err| {
                let path = err.path().to_string();
                let inner = err.into_inner();
                let message = inner.message().to_string();
                if path == "." || path.is_empty() {
                    invalid(message)
                } else {
                    invalid(format!("{path}: {message}"))
                }
            })?;
        // A relative `prices_file` is beside the config file.
        let base = Path::new(file).parent().unwrap_or(Path::new(""));
        raw.validate(base).map_err(invalid)
    }

    /// The rate table: `[[price]]` entries over the `prices_file` (when present) over the
    /// built-in table.
    pub fn rate_table(&self) -> Result<crate::pricing::RateTable, ConfigError> {
        let file_entries = if self.prices_file.is_file() {
            let file = self.prices_file.display().to_string();
            let text =
                std::fs::read_to_string(&self.prices_file).map_err(|source| ConfigError::Read {
                    file: file.clone(),
                    source,
                })?;
            crate::pricing::parse_price_file(&text, crate::pricing::Layer::File)
                .map_err(|message| ConfigError::Invalid { file, message })?
        } else {
            Vec::new()
        };
        crate::pricing::RateTable::from_layers(self.prices.clone(), file_entries).map_err(
            |message| ConfigError::Invalid {
                file: "<built-in price table>".to_string(),
                message,
            },
        )
    }

    /// The local CA's directory: `proxy.forward.ca_dir`, else `meter-ca` beside the ledger
    /// (`store.path`, after `--db`).
    pub fn ca_dir(&self) -> PathBuf {
        match &self.forward.ca_dir {
            Some(dir) => dir.clone(),
            None => self
                .store
                .path
                .parent()
                .unwrap_or(Path::new(""))
                .join(DEFAULT_CA_DIR),
        }
    }

    /// What pricing needs to know about the provider named `name` (a provider no longer in the
    /// config is priced as a direct one without markup).
    pub fn provider_pricing(&self, name: &str) -> crate::pricing::ProviderPricing {
        match self.providers.iter().find(|p| p.name == name) {
            Some(p) => crate::pricing::ProviderPricing {
                flavor: p.flavor,
                markup: p.markup,
                local: p.route == Route::Local,
            },
            None => crate::pricing::ProviderPricing {
                flavor: crate::usage::Flavor::detect(name, ""),
                markup: 0.0,
                local: false,
            },
        }
    }
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`), so it prints as one line.
fn one_line(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("{key}: invalid listen address {value:?} (expected IP:PORT)"))
}

/// Names used in URL paths and as metric label values: provider and agent names.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name != "."
        && name != ".."
}

/// The longest duration any `*_secs` key takes: one year. Longer is never meant, and timers
/// computed as `now + duration` from a value near `u64::MAX` seconds would overflow.
pub const MAX_SECS: u64 = 366 * 24 * 3600;

fn positive_secs(key: &str, secs: u64) -> Result<Duration, String> {
    if secs == 0 {
        return Err(format!("{key}: must be at least 1"));
    }
    bounded_secs(key, secs)
}

/// A duration of 0 up to [`MAX_SECS`] seconds.
pub(crate) fn bounded_secs(key: &str, secs: u64) -> Result<Duration, String> {
    if secs > MAX_SECS {
        return Err(format!(
            "{key}: {secs} is more than a year (at most {MAX_SECS} seconds)"
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// The longest `server.instance` (a label value, shown on dashboards and in alerts).
pub const MAX_INSTANCE_LEN: usize = 128;

/// `server.instance`: empty means the host name; otherwise printable text without spaces or
/// quotes, at most [`MAX_INSTANCE_LEN`] bytes (it becomes a label value and a legend).
fn instance_name(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Ok(crate::ledger::postgres::hostname());
    }
    if value.len() > MAX_INSTANCE_LEN {
        return Err(format!(
            "server.instance: longer than {MAX_INSTANCE_LEN} bytes"
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '"' | '\\'))
    {
        return Err(format!(
            "server.instance: {value:?} contains {bad:?} (expected a name such as \"agents-eu-1\")"
        ));
    }
    Ok(value.to_string())
}

impl RawConfig {
    fn validate(self, base: &Path) -> Result<Config, String> {
        let timezone: chrono_tz::Tz = self.timezone.parse().map_err(|_| {
            format!(
                "timezone: unknown time zone {:?} (expected an IANA name such as \"Europe/Paris\")",
                self.timezone
            )
        })?;
        let server = ServerConfig {
            listen: parse_addr("server.listen", &self.server.listen)?,
            metrics_listen: parse_addr("server.metrics_listen", &self.server.metrics_listen)?,
            drain_timeout: bounded_secs(
                "server.drain_timeout_secs",
                self.server.drain_timeout_secs,
            )?,
            max_request_body_bytes: self.server.max_request_body_bytes,
            max_parse_body_bytes: self.server.max_parse_body_bytes,
            max_rewrite_body_bytes: self.server.max_rewrite_body_bytes,
            max_connections: self.server.max_connections,
            worker_threads: self.server.worker_threads,
            header_read_timeout: positive_secs(
                "server.header_read_timeout_secs",
                self.server.header_read_timeout_secs,
            )?,
            instance: instance_name(&self.server.instance)?,
        };
        if server.worker_threads > 1024 {
            return Err(format!(
                "server.worker_threads: {} must be at most 1024 (0: one per CPU)",
                server.worker_threads
            ));
        }
        if !(1..=MAX_MAX_CONNECTIONS).contains(&server.max_connections) {
            return Err(format!(
                "server.max_connections: {} must be between 1 and {MAX_MAX_CONNECTIONS}",
                server.max_connections
            ));
        }
        if server.listen == server.metrics_listen && server.listen.port() != 0 {
            return Err(format!(
                "server.metrics_listen: {} is also server.listen; the two need their own ports",
                server.metrics_listen
            ));
        }
        if server.max_request_body_bytes == 0 {
            return Err("server.max_request_body_bytes: must be at least 1".to_string());
        }
        if self.proxy.forward.passthrough && !self.proxy.forward.enabled {
            return Err(
                "proxy.forward.passthrough: needs proxy.forward.enabled = true".to_string(),
            );
        }
        let forward = ForwardConfig {
            enabled: self.proxy.forward.enabled,
            passthrough: self.proxy.forward.passthrough,
            // Relative to the config file, like prices_file.
            ca_dir: (!self.proxy.forward.ca_dir.trim().is_empty())
                .then(|| base.join(&self.proxy.forward.ca_dir)),
        };
        if self.store.path.trim().is_empty() {
            return Err("store.path: must not be empty".to_string());
        }
        if self.store.batch_size == 0 {
            return Err("store.batch_size: must be at least 1".to_string());
        }
        // SQLite takes the busy timeout as a C int of milliseconds.
        if i32::try_from(self.store.busy_timeout_ms).is_err() {
            return Err(format!(
                "store.busy_timeout_ms: {} is more than SQLite's maximum of {} (about 24 days)",
                self.store.busy_timeout_ms,
                i32::MAX
            ));
        }
        let store = StoreConfig {
            path: PathBuf::from(&self.store.path),
            batch_size: self.store.batch_size,
            commit_interval: {
                if self.store.commit_interval_ms > 10_000 {
                    return Err(
                        "store.commit_interval_ms: at most 10000 (a crash loses up to this long of records)"
                            .to_string(),
                    );
                }
                Duration::from_millis(self.store.commit_interval_ms)
            },
            busy_timeout: Duration::from_millis(self.store.busy_timeout_ms),
            refresh: positive_secs("store.refresh_secs", self.store.refresh_secs)?,
            url: match self.store.url.trim() {
                "" => None,
                url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                    if let Err(err) = url.parse::<postgres::Config>() {
                        return Err(format!("store.url: not a PostgreSQL URL: {err}"));
                    }
                    Some(url.to_string())
                }
                _ => {
                    return Err(
                        "store.url: must start with postgres:// (a SQLite ledger is store.path)"
                            .to_string(),
                    )
                }
            },
            pool_size: match self.store.pool_size {
                0 => return Err("store.pool_size: must be at least 1".to_string()),
                n => n,
            },
            queue_limit: match self.store.queue_limit {
                0 => return Err("store.queue_limit: must be at least 1".to_string()),
                n => n,
            },
            journal: match self.store.journal.trim() {
                "" => return Err("store.journal: must not be empty".to_string()),
                journal => PathBuf::from(journal),
            },
            connect_timeout: positive_secs(
                "store.connect_timeout_secs",
                self.store.connect_timeout_secs,
            )?,
            ca_file: match self.store.ca_file.trim() {
                "" => None,
                file if Path::new(file).is_file() => Some(PathBuf::from(file)),
                file => return Err(format!("store.ca_file: {file:?} is not a readable file")),
            },
        };
        if !self.upstream.ca_file.is_empty() && !Path::new(&self.upstream.ca_file).is_file() {
            return Err(format!(
                "upstream.ca_file: {:?} is not a readable file",
                self.upstream.ca_file
            ));
        }
        let default_idle_timeout = positive_secs(
            "upstream.idle_timeout_secs",
            self.upstream.idle_timeout_secs,
        )?;
        let upstream = UpstreamConfig {
            idle_timeout: default_idle_timeout,
            ca_file: (!self.upstream.ca_file.is_empty())
                .then(|| PathBuf::from(&self.upstream.ca_file)),
            connect_timeout: positive_secs(
                "upstream.connect_timeout_secs",
                self.upstream.connect_timeout_secs,
            )?,
            pool_idle_timeout: bounded_secs(
                "upstream.pool_idle_timeout_secs",
                self.upstream.pool_idle_timeout_secs,
            )?,
            pool_max_idle_per_host: self.upstream.pool_max_idle_per_host,
            drain_on_disconnect: self.upstream.drain_on_disconnect,
            drain_on_disconnect_timeout: positive_secs(
                "upstream.drain_on_disconnect_secs",
                self.upstream.drain_on_disconnect_secs,
            )?,
        };
        let default_response_timeout = positive_secs(
            "upstream.response_timeout_secs",
            self.upstream.response_timeout_secs,
        )?;

        let mut providers: Vec<Provider> = BUILTIN_PROVIDERS
            .iter()
            .map(|(name, upstream, kind, route)| {
                let upstream = Upstream::parse(upstream).expect("built-in upstream URLs are valid");
                let flavor = crate::usage::Flavor::detect(name, upstream.host());
                Provider {
                    name: name.to_string(),
                    flavor,
                    inject_stream_usage: default_inject(flavor),
                    hosts: vec![upstream.host().to_string()],
                    upstream,
                    kind: *kind,
                    route: *route,
                    markup: 0.0,
                    response_timeout: default_response_timeout,
                    idle_timeout: default_idle_timeout,
                }
            })
            .collect();
        let mut seen = BTreeSet::new();
        for (index, raw) in self.provider.into_iter().enumerate() {
            let key = format!("provider[{index}]");
            if !is_valid_name(&raw.name) || raw.name == "agent" {
                return Err(format!(
                    "{key}.name: {:?} is not a valid provider name (letters, digits, '-', '_', '.'; not \"agent\")",
                    raw.name
                ));
            }
            if !seen.insert(raw.name.clone()) {
                return Err(format!(
                    "{key}.name: provider {:?} is configured twice",
                    raw.name
                ));
            }
            let existing = providers.iter().position(|p| p.name == raw.name);
            let upstream = match (&raw.upstream, existing) {
                (Some(url), _) => {
                    Upstream::parse(url).map_err(|e| format!("{key}.upstream: {e}"))?
                }
                (None, Some(i)) => providers[i].upstream.clone(),
                (None, None) => {
                    return Err(format!(
                        "{key}.upstream: required for provider {:?}, which is not built in",
                        raw.name
                    ))
                }
            };
            let kind = match (&raw.kind, existing) {
                (Some(kind), _) => WireKind::parse(kind).ok_or_else(|| {
                    format!("{key}.kind: unknown wire format {kind:?} (openai, anthropic, gemini, ollama)")
                })?,
                (None, Some(i)) => providers[i].kind,
                (None, None) => WireKind::OpenAi,
            };
            let route = match (&raw.route, existing) {
                (Some(route), _) => Route::parse(route).ok_or_else(|| {
                    format!("{key}.route: unknown route {route:?} (direct, router, local)")
                })?,
                (None, Some(i)) => providers[i].route,
                (None, None) => Route::Direct,
            };
            let markup = raw
                .markup
                .or(existing.map(|i| providers[i].markup))
                .unwrap_or(0.0);
            if !markup.is_finite() || !(0.0..=10.0).contains(&markup) {
                return Err(format!(
                    "{key}.markup: {markup} is not a fraction between 0 and 10"
                ));
            }
            let hosts = match raw.hosts {
                Some(hosts) => {
                    for host in &hosts {
                        if host.is_empty() || host.contains(['/', ' ', ':']) {
                            return Err(format!("{key}.hosts: {host:?} is not a host name"));
                        }
                    }
                    hosts
                }
                None => match existing {
                    // A built-in keeps its public host even when its upstream is moved.
                    Some(i) => providers[i].hosts.clone(),
                    None => vec![upstream.host().to_string()],
                },
            };
            let response_timeout = match raw.response_timeout_secs {
                Some(secs) => positive_secs(&format!("{key}.response_timeout_secs"), secs)?,
                None => default_response_timeout,
            };
            let idle_timeout = match raw.idle_timeout_secs {
                Some(secs) => positive_secs(&format!("{key}.idle_timeout_secs"), secs)?,
                None => default_idle_timeout,
            };
            let flavor = crate::usage::Flavor::detect(&raw.name, upstream.host());
            let inject_stream_usage = raw.inject_stream_usage.unwrap_or(match existing {
                Some(i) if providers[i].upstream == upstream => providers[i].inject_stream_usage,
                _ => default_inject(flavor),
            });
            let provider = Provider {
                flavor,
                inject_stream_usage,
                name: raw.name,
                upstream,
                kind,
                route,
                markup,
                hosts,
                response_timeout,
                idle_timeout,
            };
            match existing {
                Some(i) => providers[i] = provider,
                None => providers.push(provider),
            }
        }

        let mut agents = Vec::new();
        let mut agent_names = BTreeSet::new();
        let mut fingerprints = BTreeSet::new();
        for (index, raw) in self.agent.into_iter().enumerate() {
            let key = format!("agent[{index}]");
            if !is_valid_name(&raw.name) {
                return Err(format!(
                    "{key}.name: {:?} is not a valid agent name (1-64 letters, digits, '-', '_', '.')",
                    raw.name
                ));
            }
            if !agent_names.insert(raw.name.clone()) {
                return Err(format!(
                    "{key}.name: agent {:?} is configured twice",
                    raw.name
                ));
            }
            let mut keys = Vec::new();
            for fingerprint in raw.keys {
                let normalized = fingerprint.to_ascii_lowercase();
                if normalized.len() != 12 || !normalized.bytes().all(|b| b.is_ascii_hexdigit()) {
                    // Not echoed: it may well be the key itself.
                    return Err(format!(
                        "{key}.keys: entry {} is not a key fingerprint (12 hex characters of sha256(key); never the key itself)",
                        keys.len()
                    ));
                }
                if !fingerprints.insert(normalized.clone()) {
                    return Err(format!(
                        "{key}.keys: fingerprint {normalized:?} is listed for two agents"
                    ));
                }
                keys.push(normalized);
            }
            let data_class = match raw.data_class {
                Some(class) => DataClass::parse(&class).ok_or_else(|| {
                    format!("{key}.data_class: unknown class {class:?} (public, confidential, regulated)")
                })?,
                None => DataClass::Public,
            };
            let routes = match raw.routes {
                Some(routes) => routes
                    .iter()
                    .map(|route| {
                        Route::parse(route).ok_or_else(|| {
                            format!("{key}.routes: unknown route {route:?} (direct, router, local)")
                        })
                    })
                    .collect::<Result<BTreeSet<_>, _>>()?,
                None => Route::ALL.into_iter().collect(),
            };
            agents.push(Agent {
                name: raw.name,
                keys,
                data_class,
                routes,
            });
        }

        let prices = self
            .price
            .iter()
            .enumerate()
            .map(|(i, price)| price.validate(&format!("price[{i}]"), crate::pricing::Layer::Config))
            .collect::<Result<Vec<_>, _>>()?;
        if self.prices_file.trim().is_empty() {
            return Err("prices_file: must not be empty".to_string());
        }
        let prices_file = base.join(&self.prices_file);
        let r = &self.review;
        for (key, value) in [
            ("review.min_savings_usd", r.min_savings_usd),
            ("review.router_fee", r.router_fee),
            ("review.local_min_call_usd", r.local_min_call_usd),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(format!("{key}: {value} must be 0 or more"));
            }
        }
        let review = ReviewConfig {
            min_savings_usd: r.min_savings_usd,
            rare_provider_max_calls: r.rare_provider_max_calls,
            router_fee: r.router_fee,
            local_max_output_tokens: r.local_max_output_tokens,
            local_min_call_usd: r.local_min_call_usd,
        };

        let smtp = self.smtp.validate(base)?;
        if self.metrics.max_agents == 0 || self.metrics.max_models == 0 {
            return Err("metrics.max_agents, metrics.max_models: must be at least 1".to_string());
        }
        let metrics = MetricsConfig {
            max_agents: self.metrics.max_agents,
            max_models: self.metrics.max_models,
        };
        let budgets = alerting::validate_budgets(self.budget, &agents, &providers)?;
        let weekly = self.report.validate()?;

        Ok(Config {
            smtp,
            metrics,
            budgets,
            weekly,
            timezone,
            server,
            forward,
            store,
            upstream,
            providers,
            agents,
            prices,
            prices_file,
            review,
        })
    }
}

/// The commented `meter.toml` that `meter init` writes: every key at its default.
pub fn render_default_config() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"# meter.toml: every key at its default. Delete what you do not change.
# Docs: README.md. Money is USD; durations are in the key's unit.

timezone = "UTC"                         # IANA zone for periods, budgets and schedules
prices_file = "{DEFAULT_PRICES_FILE}"                # [[price]] entries beside this file, loaded when present
                                         # (meter prices import writes it)

[server]
listen = "{DEFAULT_LISTEN}"              # the proxy; keep it on loopback unless you front it
metrics_listen = "{DEFAULT_METRICS_LISTEN}"      # /metrics, /healthz, /readyz
drain_timeout_secs = {DEFAULT_DRAIN_TIMEOUT_SECS}                # on SIGTERM: how long in-flight calls may finish
max_request_body_bytes = {DEFAULT_MAX_REQUEST_BODY_BYTES}       # larger request bodies get 413
max_parse_body_bytes = {DEFAULT_MAX_PARSE_BODY_BYTES}         # cap on (decompressed) bytes read for usage (per piece of an event stream)
max_rewrite_body_bytes = {DEFAULT_MAX_REWRITE_BODY_BYTES}        # larger requests are never rewritten (see inject_stream_usage)
max_connections = {DEFAULT_MAX_CONNECTIONS}                   # client connections served at once; past it, new ones wait
worker_threads = 0                       # threads serving calls; 0: one per CPU (1: single-threaded, least CPU per call)
                                         # (keep it under the file descriptor limit, ulimit -n)
header_read_timeout_secs = {DEFAULT_HEADER_READ_TIMEOUT_SECS}            # a connection without complete request headers for this
                                         # long is closed (slow or silent clients, idle keep-alive)
instance = ""                            # this meter's name in a fleet (meter_instance_info's
                                         # instance_id label); "": the host name

[proxy.forward]                          # forward-proxy mode: agents set HTTPS_PROXY=http://<listen>
enabled = false                          # intercept CONNECT to providers' `hosts` and meter it (needs
                                         # `meter ca init`, and clients that trust meter's CA)
passthrough = false                      # CONNECT to other hosts: tunnel it blind, unmetered (else 403)
ca_dir = ""                              # the local CA; "": {DEFAULT_CA_DIR}/ beside the ledger (meter ca path)

[store]
path = "{DEFAULT_DB}"                      # SQLite ledger (WAL); --db overrides it
batch_size = {DEFAULT_BATCH_SIZE}                         # records per write transaction, at most
commit_interval_ms = {DEFAULT_COMMIT_INTERVAL_MS}                  # group commit: a crash loses at most this long of records
busy_timeout_ms = {DEFAULT_BUSY_TIMEOUT_MS}                   # wait this long for a lock before retrying
refresh_secs = {DEFAULT_REFRESH_SECS}                        # re-read budget spend from the ledger this often
                                         # (calls of other meters on the same ledger)
url = ""                                 # fleets: "postgres://meter@db/meter" puts the ledger on
                                         # PostgreSQL, shared by many meters (?sslmode=require: TLS)
pool_size = {DEFAULT_POOL_SIZE}                            # PostgreSQL connections per meter, at most
queue_limit = {DEFAULT_QUEUE_LIMIT}                      # records held in memory while PostgreSQL is down;
journal = "{DEFAULT_JOURNAL}"               #   past it they spill to this SQLite journal, replayed
connect_timeout_secs = {DEFAULT_PG_CONNECT_TIMEOUT_SECS}                 #   in order when PostgreSQL returns
ca_file = ""                             # extra CA certificates (PEM) for PostgreSQL's TLS (?sslmode=require)

[metrics]                                # /metrics label cardinality: past these many distinct
max_agents = {DEFAULT_METRICS_MAX_AGENTS}                         # values, new agents or models are counted as "other"
max_models = {DEFAULT_METRICS_MAX_MODELS}                         # (meter_label_overflow_total says how often)

[review]                                 # thresholds of `meter review`
min_savings_usd = 10.0                   # router spend an agent must save on a direct key per quarter
rare_provider_max_calls = 100            # direct providers with fewer calls could sit behind the router
router_fee = 0.055                       # router fee assumed when a provider moves behind it
local_max_output_tokens = 200            # short answers from paid models: candidates for a local model
local_min_call_usd = 0.001               #   ... when each such call cost at least this

[upstream]
ca_file = ""                             # extra trusted CA certificates (PEM) besides the system's
connect_timeout_secs = {DEFAULT_CONNECT_TIMEOUT_SECS}
response_timeout_secs = {DEFAULT_RESPONSE_TIMEOUT_SECS}              # until the response headers arrive (504 after); reasoning
                                         # models can think for minutes before the first byte
idle_timeout_secs = {DEFAULT_IDLE_TIMEOUT_SECS}                  # longest silence inside a response body (cut after)
pool_idle_timeout_secs = {DEFAULT_POOL_IDLE_TIMEOUT_SECS}
pool_max_idle_per_host = {DEFAULT_POOL_MAX_IDLE_PER_HOST}
drain_on_disconnect = false              # client hung up mid-stream: read on to the provider's usage
drain_on_disconnect_secs = {DEFAULT_DRAIN_ON_DISCONNECT_SECS}            #   ... for at most this long (else the upstream is closed at once)

# Built-in providers. Each can be overridden by name or a new one added with a [[provider]]
# entry; keys left out keep the built-in value (for a new provider: kind "openai",
# route "direct", markup 0). response_timeout_secs and idle_timeout_secs override [upstream].
# hosts: the names forward-proxy mode intercepts for the provider (CONNECT on port 443, plain
# HTTP on port 80); its upstream's own host and port are always matched too.
# inject_stream_usage (default true, false for mistral and openrouter, which send usage unasked):
# for OpenAI-format streaming requests
# without stream_options.include_usage, meter asks for usage and hides the usage-only chunk
# from the client, so the client sees exactly the stream it asked for.
#"#
    );
    for (name, upstream, kind, route) in BUILTIN_PROVIDERS {
        let host = Upstream::parse(upstream)
            .map(|u| u.host().to_string())
            .unwrap_or_default();
        let inject = default_inject(crate::usage::Flavor::detect(name, &host));
        let _ = writeln!(
            out,
            "# [[provider]]\n# name = \"{name}\"\n# upstream = \"{upstream}\"\n# kind = \"{}\"\n# route = \"{}\"\n# markup = 0.0\n# hosts = [\"{host}\"]\n# inject_stream_usage = {inject}\n#",
            kind.as_str(),
            route.as_str()
        );
    }
    out.push_str(
        r#"# An OpenAI-compatible host of your own:
# [[provider]]
# name = "azure"
# upstream = "https://myresource.openai.azure.com"
# kind = "openai"

# Agents, attributed by the fingerprint of their API key: the first 12 hex characters of
# sha256(key). Never put a key itself here. Requests can also name their agent with the
# X-Meter-Agent header or the path form /agent/<name>/<provider>/...
# [[agent]]
# name = "coder"
# keys = ["3f9a1c0b2d4e"]
# data_class = "public"                  # public | confidential | regulated
# routes = ["direct", "router", "local"] # routes this agent may use; others get 403

# Prices (USD per 1M tokens) over the built-in table; `meter prices list` shows what is in
# force. Config entries beat prices_file entries, which beat built-in ones; within a layer the
# most specific model match wins, then the latest `effective` date not after the call.
# [[price]]
# provider = "openai"                    # a provider name, or "*"
# model = "gpt-4o*"                      # exact, or a glob
# effective = "2024-10-01"
# input = 2.50
# output = 10.00
# cache_read = 1.25                      # also: cache_write, cache_write_1h, audio_input,
#                                        # audio_output, batch_discount, per_image,
#                                        # per_audio_second, per_web_search, source
# [[price.tier]]                         # prices above a prompt size
# above_prompt_tokens = 200000
# input = 5.00
# output = 15.00
"#,
    );
    let _ = write!(
        out,
        r#"
# Alert and report emails. The password is read from the environment variable named by
# password_env, never from this file.
[smtp]
host = "127.0.0.1"
port = {DEFAULT_SMTP_PORT}
tls = "none"                             # none | starttls | tls (implicit TLS, usually port 465)
username = ""                            # empty: no authentication
password_env = "METER_SMTP_PASSWORD"
from = "meter@localhost"
ca_file = ""                             # extra CA certificates (PEM) for the SMTP server
timeout_secs = {DEFAULT_SMTP_TIMEOUT_SECS}
retry_min_secs = {DEFAULT_SMTP_RETRY_MIN_SECS}                      # a failed email is retried, backing off from this...
retry_max_secs = {DEFAULT_SMTP_RETRY_MAX_SECS}                     #   ... to this

# Budgets: spend over a period in `timezone`, for the calls in scope (every scope key set must
# match; none set: every call). Each threshold emails once per budget per period.
# [[budget]]
# name = "team-monthly"
# period = "month"                       # day | week | month | quarter
# limit_usd = 500.0
# agent = "coder"                        # optional scope: agent, provider, model (glob), route
# alert_at = [0.5, 0.8, 1.0]             # fractions of the limit
# forecast_alert = false                 # also warn when the period's forecast exceeds the limit
# forecast_min_elapsed = {DEFAULT_FORECAST_MIN_ELAPSED}             #   ... once this share of the period has passed
# notify = ["ops@example.com"]
# enforce = false                        # true: once spent, calls in scope get 429, not forwarded
# unpriced = "allow"                     # allow | block: calls meter cannot price (with enforce)
# reserve_output_tokens = {DEFAULT_RESERVE_OUTPUT_TOKENS}           # held for a call without max_tokens while in flight

# The weekly report email: last week's usage and what changed against the week before.
# [report.weekly]
# to = ["ops@example.com"]
# weekday = "mon"
# at = "09:00"                           # in `timezone`
"#
    );
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn error_of(text: &str) -> String {
        Config::from_toml(text, "meter.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_have_every_builtin_provider() {
        let config = Config::from_toml("", "x").unwrap();
        assert_eq!(config.providers.len(), BUILTIN_PROVIDERS.len());
        let openrouter = config
            .providers
            .iter()
            .find(|p| p.name == "openrouter")
            .unwrap();
        assert_eq!(openrouter.upstream.base_path, "/api");
        assert_eq!(openrouter.route, Route::Router);
        assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn init_output_parses_back_to_defaults() {
        let rendered = render_default_config();
        let parsed = Config::from_toml(&rendered, "init").unwrap();
        assert_eq!(parsed, Config::from_toml("", "x").unwrap());
        // Uncommenting every provider block reproduces the built-ins exactly.
        let uncommented: String = rendered
            .lines()
            .map(|line| {
                if line.starts_with("# [[provider]]")
                    || (line.starts_with("# ") && line.contains(" = ") && !line.contains("azure"))
                {
                    line.trim_start_matches("# ").to_string()
                } else {
                    line.to_string()
                }
            })
            .take_while(|line| !line.contains("An OpenAI-compatible host"))
            .collect::<Vec<_>>()
            .join("\n");
        let parsed = Config::from_toml(&uncommented, "init").unwrap();
        assert_eq!(parsed, Config::from_toml("", "x").unwrap());
    }

    #[test]
    fn errors_name_the_key_and_reason() {
        let cases = [
            (
                "[server]\nlisten = \"nope\"",
                "server.listen: invalid listen address",
            ),
            ("[server]\nlisten = 5", "server.listen: invalid type"),
            ("[server]\nlistn = \"x\"", "unknown field `listn`"),
            ("timezone = \"Mars/Base\"", "timezone: unknown time zone"),
            (
                "[[provider]]\nname = \"acme\"",
                "provider[0].upstream: required",
            ),
            (
                "[[provider]]\nname = \"openai\"\nroute = \"sideways\"",
                "provider[0].route: unknown route",
            ),
            (
                "[[provider]]\nname = \"x\"\nupstream = \"ftp://h\"",
                "provider[0].upstream: URL",
            ),
            (
                "[[agent]]\nname = \"a\"\nkeys = [\"sk-live\"]",
                "agent[0].keys:",
            ),
            ("[[agent]]\nname = \"a b\"", "agent[0].name:"),
            ("[server\n", "line 1:"),
            (
                "[upstream]\nconnect_timeout_secs = 0",
                "upstream.connect_timeout_secs",
            ),
        ];
        for (text, expected) in cases {
            let error = error_of(text);
            assert!(
                error.contains(expected),
                "{text:?}: got {error:?}, want {expected:?}"
            );
            assert!(error.starts_with("config meter.toml: "), "{error}");
            assert!(!error.contains('\n'), "one line: {error:?}");
        }
    }

    #[test]
    fn connection_limits_are_validated() {
        let config = Config::from_toml(
            "[server]\nmax_connections = 10\nheader_read_timeout_secs = 2",
            "x",
        )
        .unwrap();
        assert_eq!(config.server.max_connections, 10);
        assert_eq!(config.server.header_read_timeout, Duration::from_secs(2));
        for bad in [0, (1 << 20) + 1] {
            let error = error_of(&format!("[server]\nmax_connections = {bad}"));
            assert!(error.contains("server.max_connections"), "{error}");
        }
        assert!(error_of("[server]\nheader_read_timeout_secs = 0")
            .contains("server.header_read_timeout_secs"));
    }

    #[test]
    fn the_instance_name_defaults_to_the_host_name() {
        let config = Config::from_toml("", "x").unwrap();
        assert_eq!(config.server.instance, crate::ledger::postgres::hostname());
        assert!(!config.server.instance.is_empty());
        let config = Config::from_toml("[server]\ninstance = \"agents-eu-1\"", "x").unwrap();
        assert_eq!(config.server.instance, "agents-eu-1");
        for bad in [
            "a b",
            "a\\\"b",
            "tab\\there",
            &"x".repeat(MAX_INSTANCE_LEN + 1),
        ] {
            let error = error_of(&format!("[server]\ninstance = \"{bad}\""));
            assert!(error.contains("server.instance"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn provider_override_keeps_unset_keys() {
        let config = Config::from_toml(
            "[[provider]]\nname = \"openai\"\nupstream = \"http://127.0.0.1:9\"\n\n[[provider]]\nname = \"azure\"\nupstream = \"https://r.openai.azure.com/\"\nroute = \"direct\"",
            "x",
        )
        .unwrap();
        let openai = config
            .providers
            .iter()
            .find(|p| p.name == "openai")
            .unwrap();
        assert_eq!(openai.upstream.to_string(), "http://127.0.0.1:9");
        assert_eq!(openai.kind, WireKind::OpenAi);
        assert_eq!(openai.hosts, vec!["api.openai.com".to_string()]);
        let azure = config.providers.iter().find(|p| p.name == "azure").unwrap();
        assert_eq!(azure.upstream.base_path, "");
        assert_eq!(azure.hosts, vec!["r.openai.azure.com".to_string()]);
    }
}
