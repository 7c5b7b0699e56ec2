//! The router: turns a request's path and headers into a [`RouteTarget`] (provider, agent,
//! upstream path) or a refusal. Pure: no IO, no logging of keys (only fingerprints leave here).

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::{is_valid_name, Agent, Config, Provider};

/// Headers meter reads and never forwards.
pub const AGENT_HEADER: &str = "x-meter-agent";
pub const TAGS_HEADER: &str = "x-meter-tags";
const MAX_TAGS_HEADER_BYTES: usize = 1024;
const MAX_TAGS: usize = 16;

/// The providers and agents meter knows, indexed for the request path.
#[derive(Debug)]
pub struct RouteTable {
    providers: HashMap<String, Arc<Provider>>,
    /// Provider names in configuration order, for the 404 body.
    names: Vec<String>,
    agents_by_name: HashMap<String, Arc<Agent>>,
    agents_by_fingerprint: HashMap<String, Arc<Agent>>,
}

/// Where a request goes and who it is for.
#[derive(Debug, Clone)]
pub struct RouteTarget {
    pub provider: Arc<Provider>,
    pub agent: String,
    /// The path to append to the provider's upstream base path; starts with `/` or is empty.
    pub upstream_path: String,
    pub key_fingerprint: Option<String>,
    /// `X-Meter-Tags` as a JSON object, when given.
    pub tags: Option<String>,
    /// False when the agent's `routes` exclude this provider's route: answer 403, record it.
    pub allowed: bool,
}

/// Why a request cannot be routed; the proxy maps each to a status and a JSON error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    UnknownProvider { prefix: String },
    BadPath(&'static str),
    BadAgent(String),
    BadTags(String),
}

impl RouteTable {
    pub fn new(config: &Config) -> RouteTable {
        let mut providers = HashMap::new();
        let mut names = Vec::new();
        for provider in &config.providers {
            names.push(provider.name.clone());
            providers.insert(provider.name.clone(), Arc::new(provider.clone()));
        }
        let mut agents_by_name = HashMap::new();
        let mut agents_by_fingerprint = HashMap::new();
        for agent in &config.agents {
            let agent = Arc::new(agent.clone());
            for key in &agent.keys {
                agents_by_fingerprint.insert(key.clone(), agent.clone());
            }
            agents_by_name.insert(agent.name.clone(), agent);
        }
        RouteTable {
            providers,
            names,
            agents_by_name,
            agents_by_fingerprint,
        }
    }

    /// The provider prefixes, in configuration order.
    pub fn provider_names(&self) -> &[String] {
        &self.names
    }

    /// Routes a request (SPEC §2, §3).
    pub fn route(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<RouteTarget, RouteError> {
        check_path(path)?;
        let (path_agent, rest) = match path.strip_prefix("/agent/") {
            Some(after) => {
                let (name, rest) = split_segment(after);
                if !is_valid_name(name) {
                    return Err(RouteError::BadAgent(
                        "the agent name in the path must be 1-64 letters, digits, '-', '_', '.'"
                            .to_string(),
                    ));
                }
                (Some(name), rest)
            }
            None => (None, path),
        };
        let (prefix, upstream_path) = split_segment(rest.strip_prefix('/').unwrap_or(rest));
        let provider = self
            .providers
            .get(prefix)
            .ok_or_else(|| RouteError::UnknownProvider {
                prefix: prefix.chars().take(64).collect(),
            })?
            .clone();

        let key_fingerprint = api_key(headers)
            .map(fingerprint)
            .or_else(|| query_key_fingerprint(query));
        let header_agent = match headers.get(AGENT_HEADER) {
            Some(value) => {
                let name = value.to_str().ok().filter(|name| is_valid_name(name));
                Some(name.ok_or_else(|| {
                    RouteError::BadAgent(
                        "X-Meter-Agent must be 1-64 letters, digits, '-', '_', '.'".to_string(),
                    )
                })?)
            }
            None => None,
        };
        let known_by_key = key_fingerprint
            .as_deref()
            .and_then(|fp| self.agents_by_fingerprint.get(fp));
        let agent = header_agent
            .or(path_agent)
            .map(str::to_string)
            .or_else(|| known_by_key.map(|agent| agent.name.clone()))
            .unwrap_or_else(|| "default".to_string());

        let allowed = self
            .agents_by_name
            .get(&agent)
            .is_none_or(|config| config.routes.contains(&provider.route));

        let tags = match headers.get(TAGS_HEADER) {
            Some(value) => Some(parse_tags(value.as_bytes()).map_err(RouteError::BadTags)?),
            None => None,
        };

        Ok(RouteTarget {
            provider,
            agent,
            upstream_path: upstream_path.to_string(),
            key_fingerprint,
            tags,
            allowed,
        })
    }
}

/// Splits `name/rest` into `name` and `/rest` (or an empty rest).
fn split_segment(path: &str) -> (&str, &str) {
    match path.find('/') {
        Some(i) => (&path[..i], &path[i..]),
        None => (path, ""),
    }
}

/// Refuses paths that could climb out of a provider's base path once a server normalises them.
fn check_path(path: &str) -> Result<(), RouteError> {
    if !path.starts_with('/') {
        return Err(RouteError::BadPath("the path must start with '/'"));
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2e") || lower.contains("%2f") || lower.contains('\\') {
        return Err(RouteError::BadPath(
            "encoded dots, slashes and backslashes are not allowed in the path",
        ));
    }
    if path
        .split('/')
        .any(|segment| segment == ".." || segment == ".")
    {
        return Err(RouteError::BadPath("'.' and '..' segments are not allowed"));
    }
    Ok(())
}

/// The API key a request carries, in the places the supported SDKs put it.
fn api_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let bytes = value.as_bytes();
        let key = match bytes.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case(b"bearer ") => &bytes[7..],
            _ => bytes,
        };
        let key = key.trim_ascii();
        if !key.is_empty() {
            return Some(key);
        }
    }
    ["x-api-key", "x-goog-api-key", "api-key"]
        .iter()
        .filter_map(|name| headers.get(*name))
        .map(|value| value.as_bytes().trim_ascii())
        .find(|key| !key.is_empty())
}

/// `sha256(key)` as hex, first 12 characters (SPEC §3). The key itself goes nowhere else.
pub fn fingerprint(key: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(key);
    let mut out = String::with_capacity(12);
    for byte in &digest[..6] {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// The fingerprint of a `key=` query parameter (Gemini's REST form), when present.
fn query_key_fingerprint(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("key="))
        .filter(|key| !key.is_empty())
        .map(|key| fingerprint(key.as_bytes()))
}

/// `k=v,k=v` into a JSON object with sorted keys. Keys are names; values are printable ASCII.
fn parse_tags(raw: &[u8]) -> Result<String, String> {
    if raw.len() > MAX_TAGS_HEADER_BYTES {
        return Err(format!(
            "X-Meter-Tags is longer than {MAX_TAGS_HEADER_BYTES} bytes"
        ));
    }
    let text = std::str::from_utf8(raw).map_err(|_| "X-Meter-Tags is not UTF-8".to_string())?;
    let mut tags = std::collections::BTreeMap::new();
    for pair in text
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
    {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("X-Meter-Tags: {pair:?} is not k=v"))?;
        let (key, value) = (key.trim(), value.trim());
        if !is_valid_name(key) {
            return Err("X-Meter-Tags: keys must be 1-64 letters, digits, '-', '_', '.'".into());
        }
        if value.len() > 128 || value.chars().any(|c| c.is_control()) {
            return Err("X-Meter-Tags: values must be at most 128 printable characters".into());
        }
        tags.insert(key.to_string(), value.to_string());
    }
    if tags.len() > MAX_TAGS {
        return Err(format!("X-Meter-Tags: at most {MAX_TAGS} tags"));
    }
    serde_json::to_string(&tags).map_err(|err| format!("X-Meter-Tags: {err}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn table() -> RouteTable {
        let config = Config::from_toml(
            r#"
[[agent]]
name = "coder"
keys = ["5d41402abc4b"]
routes = ["direct"]
"#,
            "t",
        )
        .unwrap();
        RouteTable::new(&config)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    type Checked = Result<(String, String, String), RouteError>;
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Checked);

    /// Routes `path` with `pairs` and returns (provider, agent, upstream path) or the error.
    fn check(path: &str, pairs: &[(&str, &str)]) -> Checked {
        table()
            .route(path, None, &headers(pairs))
            .map(|t| (t.provider.name.clone(), t.agent, t.upstream_path))
    }

    fn ok(provider: &str, agent: &str, rest: &str) -> Checked {
        Ok((provider.into(), agent.into(), rest.into()))
    }

    #[test]
    fn routes_and_attributes() {
        // "hello" hashes to 2cf24dba5fb0...; coder's key in the table is a made-up fingerprint.
        assert_eq!(fingerprint(b"hello"), "2cf24dba5fb0");
        let cases: Vec<Case> = vec![
            (
                "/openai/v1/chat/completions",
                vec![],
                ok("openai", "default", "/v1/chat/completions"),
            ),
            ("/openrouter", vec![], ok("openrouter", "default", "")),
            (
                "/openai/v1/x",
                vec![("x-meter-agent", "bot")],
                ok("openai", "bot", "/v1/x"),
            ),
            (
                "/agent/ci/groq/v1/models",
                vec![],
                ok("groq", "ci", "/v1/models"),
            ),
            // The header wins over the path form.
            (
                "/agent/ci/groq/v1/models",
                vec![("x-meter-agent", "bot")],
                ok("groq", "bot", "/v1/models"),
            ),
            (
                "/nope/v1",
                vec![],
                Err(RouteError::UnknownProvider {
                    prefix: "nope".into(),
                }),
            ),
            (
                "/",
                vec![],
                Err(RouteError::UnknownProvider { prefix: "".into() }),
            ),
            (
                "/openai/../etc",
                vec![],
                Err(RouteError::BadPath("'.' and '..' segments are not allowed")),
            ),
            (
                "/openai/%2e%2e/etc",
                vec![],
                Err(RouteError::BadPath(
                    "encoded dots, slashes and backslashes are not allowed in the path",
                )),
            ),
        ];
        for (path, pairs, want) in cases {
            assert_eq!(check(path, &pairs), want, "{path}");
        }
        assert!(matches!(
            check("/openai/v1", &[("x-meter-agent", "bad agent")]),
            Err(RouteError::BadAgent(_))
        ));
        assert!(matches!(
            check("/openai/v1", &[("x-meter-agent", &"a".repeat(100))]),
            Err(RouteError::BadAgent(_))
        ));
    }

    #[test]
    fn key_fingerprint_attributes_and_routes_are_enforced() {
        let mut config = Config::from_toml("", "t").unwrap();
        config.agents.push(Agent {
            name: "coder".into(),
            keys: vec![fingerprint(b"sk-test-123")],
            data_class: crate::config::DataClass::Public,
            routes: [crate::config::Route::Direct].into_iter().collect(),
        });
        let table = RouteTable::new(&config);
        let target = table
            .route(
                "/openai/v1/chat/completions",
                None,
                &headers(&[("authorization", "Bearer sk-test-123")]),
            )
            .unwrap();
        assert_eq!(target.agent, "coder");
        assert_eq!(
            target.key_fingerprint.as_deref(),
            Some(fingerprint(b"sk-test-123").as_str())
        );
        let target = table
            .route(
                "/anthropic/v1/messages",
                None,
                &headers(&[("x-api-key", "sk-test-123")]),
            )
            .unwrap();
        assert_eq!(target.agent, "coder");
        assert!(target.allowed);
        let refused = table
            .route(
                "/openrouter/v1/chat/completions",
                None,
                &headers(&[("authorization", "Bearer sk-test-123")]),
            )
            .unwrap();
        assert_eq!(refused.agent, "coder");
        assert!(!refused.allowed);
    }

    #[test]
    fn tags_become_sorted_json() {
        let target = table()
            .route(
                "/openai/v1",
                None,
                &headers(&[("x-meter-tags", "team=a, env = prod")]),
            )
            .unwrap();
        assert_eq!(target.tags.as_deref(), Some(r#"{"env":"prod","team":"a"}"#));
        for bad in ["noequals", "bad key=1", "k=\"}{\"x\":1"] {
            let result = table().route("/openai/v1", None, &headers(&[("x-meter-tags", bad)]));
            if bad.starts_with("k=") {
                // Quotes are fine in values: they are JSON-escaped, never injected.
                let tags = result.unwrap().tags.unwrap();
                let parsed: serde_json::Value = serde_json::from_str(&tags).unwrap();
                assert_eq!(parsed.as_object().unwrap().len(), 1);
            } else {
                assert!(matches!(result, Err(RouteError::BadTags(_))), "{bad}");
            }
        }
    }

    #[test]
    fn query_key() {
        assert_eq!(
            query_key_fingerprint(Some("alt=sse&key=hello")).as_deref(),
            Some("2cf24dba5fb0")
        );
        assert_eq!(query_key_fingerprint(Some("alt=sse")), None);
    }
}
