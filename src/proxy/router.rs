//! The router: turns a request's path and headers into a [`RouteTarget`] (provider, agent,
//! upstream path) or a refusal. Pure: no IO, no logging of keys (only fingerprints leave here).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, Method, Uri, Version};
use sha2::{Digest, Sha256};

use crate::config::{is_valid_name, Agent, Config, Provider};

/// Headers meter reads and never forwards.
pub const AGENT_HEADER: &str = "x-meter-agent";
pub const TAGS_HEADER: &str = "x-meter-tags";
const MAX_TAGS_HEADER_BYTES: usize = 1024;
const MAX_TAGS: usize = 16;
const MAX_TAG_VALUE_BYTES: usize = 128;

/// The providers and agents meter knows, indexed for the request path.
#[derive(Debug)]
pub struct RouteTable {
    providers: HashMap<String, Arc<Provider>>,
    /// Provider names in configuration order, for the 404 body.
    names: Vec<String>,
    agents_by_name: HashMap<String, Arc<Agent>>,
    agents_by_fingerprint: HashMap<String, Arc<Agent>>,
    /// `server.listen`: an absolute-form request naming meter itself is routed like any other.
    listen: SocketAddr,
    /// `[proxy.forward] enabled` and `passthrough`.
    forward: bool,
    passthrough: bool,
}

/// How a request is to be routed, from its method and target ([`RouteTable::target`]).
#[derive(Debug, Clone)]
pub enum Target {
    /// By its path: `/<provider>/<rest>` (base-URL mode).
    Path,
    /// Forward-proxy mode, plain HTTP in absolute form (`GET http://127.0.0.1:11434/api/chat`)
    /// to a provider's host: routed to `provider` by [`RouteTable::route_host`].
    Host {
        provider: Arc<Provider>,
        host: String,
    },
    /// Forward-proxy mode, `CONNECT` to a provider's host: TLS is terminated with a leaf for
    /// `host` and the requests inside (which must name `host:port`) are routed to `provider`.
    Intercept {
        provider: Arc<Provider>,
        host: String,
        port: u16,
    },
    /// Forward-proxy mode with `passthrough`, `CONNECT` to another host: tunnelled blind.
    Passthrough { host: String, port: u16 },
}

/// The port an authority spells out after its host: `Ok(None)` when it names none, an error
/// when what follows the host is not `:` and 1-5 digits of a port from 1 to 65535 (the `http`
/// crate reads `host:abc` and `host:70000` as having no port at all).
fn explicit_port(authority: &http::uri::Authority) -> Result<Option<u16>, ()> {
    // What the `http` crate takes the host from: after any userinfo, up to the port.
    let text = authority.as_str();
    let text = text.rsplit_once('@').map_or(text, |(_, rest)| rest);
    let tail = text.strip_prefix(authority.host()).ok_or(())?;
    let Some(digits) = tail.strip_prefix(':') else {
        return if tail.is_empty() { Ok(None) } else { Err(()) };
    };
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    match digits.parse::<u16>() {
        Ok(port) if port != 0 => Ok(Some(port)),
        _ => Err(()),
    }
}

/// A `CONNECT` target's port (RFC 9110 §9.3.6: required, there is no default).
fn connect_port(authority: &http::uri::Authority) -> Option<u16> {
    explicit_port(authority).ok().flatten()
}

/// A host as forward-proxy mode compares it: lower case, without a trailing dot.
pub fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
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
    UnknownProvider {
        prefix: String,
    },
    BadPath(&'static str),
    BadAgent(String),
    BadTags(String),
    /// A proxy request (CONNECT, or an HTTP/1 absolute-form target naming another host) while
    /// forward-proxy mode is off: answered 403, nothing forwarded. `code` is
    /// `forward_proxy_off` when the host is a configured provider's, else `not_a_proxy`.
    NotAProxy {
        code: &'static str,
        message: String,
    },
    /// A `CONNECT` whose target is not `host:port` with a port of 1-65535 (RFC 9110 §9.3.6):
    /// answered 400.
    BadConnect(String),
    /// A request inside an intercepted tunnel that names another host than the tunnel's
    /// (`Host`, `:authority`, or an absolute-form target): answered 421, nothing forwarded.
    Misdirected(String),
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
            listen: config.server.listen,
            forward: config.forward.enabled,
            passthrough: config.forward.passthrough,
        }
    }

    /// The provider prefixes, in configuration order.
    pub fn provider_names(&self) -> &[String] {
        &self.names
    }

    /// Decides how a request is routed from its method and target (SPEC §2). Origin-form
    /// requests, and absolute-form ones naming meter's own `server.listen`, are routed by path.
    /// While forward-proxy mode is off, every `CONNECT` and every other HTTP/1 absolute-form
    /// target (`GET http://host/... HTTP/1.1`, which only a client configured to use a proxy
    /// sends) is refused: the credentials such a request carries are meant for the host it
    /// names, so it is never routed by its path alone. With forward-proxy mode on, a `CONNECT`
    /// to a provider's host is intercepted, an absolute-form request to one is routed to that
    /// provider, and a `CONNECT` elsewhere is tunnelled blind when `passthrough` is on. HTTP/2
    /// requests always carry `:authority` (the `Host` of HTTP/2) and are routed by path.
    pub fn target(
        &self,
        method: &Method,
        uri: &Uri,
        version: Version,
    ) -> Result<Target, RouteError> {
        let http1 = matches!(
            version,
            Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
        );
        let connect = method == Method::CONNECT;
        let Some(authority) = uri.authority().filter(|_| connect || http1) else {
            if connect {
                return Err(not_a_proxy(""));
            }
            return Ok(Target::Path);
        };
        // RFC 9110 §9.3.6: a CONNECT target is `host:port`, and there is no default port.
        if connect && connect_port(authority).is_none() {
            let shown: String = authority.as_str().chars().take(128).collect();
            return Err(RouteError::BadConnect(format!(
                "CONNECT {shown:?}: the target must be host:port with a port of 1-65535"
            )));
        }
        if !connect && self.is_self(authority) {
            return Ok(Target::Path);
        }
        let shown: String = authority.as_str().chars().take(128).collect();
        // A CONNECT tunnel carries TLS; an absolute-form target names its scheme.
        let https = connect || uri.scheme_str() == Some("https");
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = normalize_host(authority.host());
        if !self.forward {
            // Named for the message only: the upstream by host and port first, then `hosts`.
            let provider = self
                .ordered()
                .find(|p| {
                    let default = if p.upstream.https { 443 } else { 80 };
                    normalize_host(p.upstream.host()) == host
                        && p.upstream.authority.port_u16().unwrap_or(default)
                            == authority.port_u16().unwrap_or(default)
                })
                .or_else(|| {
                    self.ordered()
                        .find(|p| p.hosts.iter().any(|h| normalize_host(h) == host))
                });
            return Err(match provider {
                Some(p) => RouteError::NotAProxy {
                    code: "forward_proxy_off",
                    message: format!(
                        "{shown:?} is provider {:?}'s host, but forward-proxy mode is off: use http://<meter>/{}/<path> as the base URL, or set [proxy.forward] enabled = true",
                        p.name, p.name
                    ),
                },
                None => not_a_proxy(&shown),
            });
        }
        if connect && !http1 {
            return Err(RouteError::NotAProxy {
                code: "connect_needs_http1",
                message: "meter answers CONNECT over HTTP/1.1 only; talk to the proxy over HTTP/1.1 (the TLS inside the tunnel may be HTTP/2)".to_string(),
            });
        }
        if connect && self.is_self(authority) {
            return Err(not_a_proxy(&shown));
        }
        match self.provider_for_host(&host, port, https) {
            Some(provider) if connect => Ok(Target::Intercept {
                provider,
                host,
                port,
            }),
            Some(provider) => Ok(Target::Host { provider, host }),
            None if connect && self.passthrough => Ok(Target::Passthrough {
                host: authority.host().to_string(),
                port,
            }),
            None => {
                Err(RouteError::NotAProxy {
                    code: "host_not_metered",
                    message: if connect {
                        format!(
                        "{shown:?} is not a configured provider host, and meter tunnels only those (set [proxy.forward] passthrough = true to tunnel other hosts unmetered)"
                    )
                    } else {
                        format!("{shown:?} is not a configured provider host; meter is not an open proxy")
                    },
                })
            }
        }
    }

    /// Providers in configuration order.
    fn ordered(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.names
            .iter()
            .filter_map(|name| self.providers.get(name))
    }

    /// The provider a forward-proxy request to `host:port` is for: the one whose upstream is
    /// that very scheme, host and port, else the first whose `hosts` name `host`, when `port`
    /// is the scheme's default (443 for a tunnel, 80 for plain HTTP).
    fn provider_for_host(&self, host: &str, port: u16, https: bool) -> Option<Arc<Provider>> {
        let default = if https { 443 } else { 80 };
        self.ordered()
            .find(|p| {
                p.upstream.https == https
                    && normalize_host(p.upstream.host()) == host
                    && p.upstream.authority.port_u16().unwrap_or(default) == port
            })
            .or_else(|| {
                (port == default)
                    .then(|| {
                        self.ordered()
                            .find(|p| p.hosts.iter().any(|h| normalize_host(h) == host))
                    })
                    .flatten()
            })
            .cloned()
    }

    /// Whether a request inside a tunnel to `host:port` (as [`Target::Intercept`] names them)
    /// names that same host and port in its target (absolute form, or HTTP/2's `:authority`)
    /// and in every `Host` header it has. Names compare as the router compares them (case and
    /// a trailing dot aside), a missing port being the scheme's default (443 inside a tunnel).
    pub fn check_tunnel_host(
        host: &str,
        port: u16,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<(), RouteError> {
        let default = if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        };
        let names = uri
            .authority()
            .map(|a| a.as_str().as_bytes())
            .into_iter()
            .chain(
                headers
                    .get_all(http::header::HOST)
                    .iter()
                    .map(|v| v.as_bytes()),
            );
        for name in names {
            let same = http::uri::Authority::try_from(name).is_ok_and(|named| {
                normalize_host(named.host()) == host
                    && explicit_port(&named).is_ok_and(|p| p.unwrap_or(default) == port)
            });
            if !same {
                let shown: String = String::from_utf8_lossy(name).chars().take(128).collect();
                return Err(RouteError::Misdirected(format!(
                    "this tunnel is to {host}:{port}, and the request names {shown:?}: open a tunnel to that host instead"
                )));
            }
        }
        Ok(())
    }

    /// Whether an absolute-form authority names meter's own listen address.
    fn is_self(&self, authority: &http::uri::Authority) -> bool {
        if self.listen.port() == 0 || authority.port_u16() != Some(self.listen.port()) {
            return false;
        }
        let host = authority.host();
        let ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>();
        match ip {
            Ok(ip) => ip == self.listen.ip(),
            Err(_) => host.eq_ignore_ascii_case("localhost") && self.listen.ip().is_loopback(),
        }
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
        self.attribute(provider, path_agent, upstream_path, query, headers)
    }

    /// Routes a request that named its provider's host rather than meter (forward-proxy mode:
    /// inside an intercepted tunnel, or plain HTTP in absolute form). Its whole path is the
    /// provider's own: the upstream's base path is not added a second time when the path
    /// already starts with it (`https://openrouter.ai/api/v1/...` to upstream
    /// `https://openrouter.ai/api`), and is added otherwise (an upstream mounted elsewhere).
    /// The agent comes from `X-Meter-Agent`, else the key's fingerprint, else `default`.
    pub fn route_host(
        &self,
        provider: &Arc<Provider>,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<RouteTarget, RouteError> {
        check_path(path)?;
        let base = provider.upstream.base_path.as_str();
        let upstream_path = match path.strip_prefix(base) {
            Some(rest) if !base.is_empty() && (rest.is_empty() || rest.starts_with('/')) => rest,
            _ => path,
        };
        self.attribute(provider.clone(), None, upstream_path, query, headers)
    }

    /// The agent, key fingerprint, tags and route policy of a request for `provider`.
    fn attribute(
        &self,
        provider: Arc<Provider>,
        path_agent: Option<&str>,
        upstream_path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<RouteTarget, RouteError> {
        // `//host/...` is not a path but a network-path reference (RFC 3986 §4.2): as the
        // whole request target it could be read as another host by whatever parses it next.
        if provider.upstream.base_path.is_empty() && upstream_path.starts_with("//") {
            return Err(RouteError::BadPath(
                "the path after the provider prefix must not start with '//'",
            ));
        }

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

/// Encoded bytes refused anywhere in the path: dot, slash, backslash (`%2e`, `%2f`, `%5c`), NUL,
/// and the overlong UTF-8 leads `%c0`/`%c1` (`%c0%ae` is a dot to some old decoders).
const REFUSED_ESCAPES: [&str; 6] = ["%2e", "%2f", "%5c", "%00", "%c0", "%c1"];

/// Refuses paths that could climb out of a provider's base path once a server normalises them.
fn check_path(path: &str) -> Result<(), RouteError> {
    if !path.starts_with('/') {
        return Err(RouteError::BadPath("the path must start with '/'"));
    }
    let lower = path.to_ascii_lowercase();
    if REFUSED_ESCAPES.iter().any(|escape| lower.contains(escape)) || lower.contains('\\') {
        return Err(RouteError::BadPath(
            "encoded dots, slashes, backslashes and NULs are not allowed in the path",
        ));
    }
    // `..;x` is `..` to servers that strip path parameters (Tomcat, Spring).
    if path.split('/').any(|segment| {
        let name = segment.split(';').next().unwrap_or(segment);
        name == ".." || name == "."
    }) {
        return Err(RouteError::BadPath("'.' and '..' segments are not allowed"));
    }
    Ok(())
}

/// The 403 for a proxy request to a host meter does not know.
fn not_a_proxy(shown: &str) -> RouteError {
    RouteError::NotAProxy {
        code: "not_a_proxy",
        message: format!(
            "meter is not an open proxy and forward-proxy mode is off: it forwards only to its configured providers, never to {shown:?}; use http://<meter>/<provider>/<path> as the base URL"
        ),
    }
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

/// Characters refused in tag values: controls, and the invisible and bidirectional formatting
/// characters that make a value display as something it is not.
fn hidden_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// `k=v,k=v` into a JSON object with sorted keys. Keys are names; values are at most 128 bytes
/// of visible UTF-8 (see [`hidden_char`]), JSON-escaped when stored.
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
        if value.len() > MAX_TAG_VALUE_BYTES || value.chars().any(hidden_char) {
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
                    "encoded dots, slashes, backslashes and NULs are not allowed in the path",
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
    fn traversal_and_odd_paths_are_refused() {
        let bad_path = |path: &str| matches!(check(path, &[]), Err(RouteError::BadPath(_)));
        for path in [
            "/openai/../anthropic/v1/messages",
            "/openai/v1/..",
            "/openai/./v1",
            "/openai/..;/etc/passwd",
            "/openai/v1/.;x/models",
            "/%2e%2e/openai/v1",
            "/openai/%2E%2E/x",
            "/openai/..%2f..%2fetc/passwd",
            "/openai/v1%2Fmodels",
            "/openai/v1%5c..%5cx",
            "/openai/v1\\..\\x",
            "/openai/v1/%00",
            "/openai/%c0%ae%c0%ae/x",
            "/agent/ci/../openai/v1",
            "/openai//evil.example/x",
            "*",
            "",
        ] {
            assert!(bad_path(path), "{path}: {:?}", check(path, &[]));
        }
        // `//host` is only refused where it would be the whole upstream path.
        let config = Config::from_toml(
            "[[provider]]\nname = \"based\"\nupstream = \"http://127.0.0.1:9/api\"\n",
            "t",
        )
        .unwrap();
        let target = RouteTable::new(&config)
            .route("/based//x", None, &HeaderMap::new())
            .unwrap();
        assert_eq!(target.upstream_path, "//x");
        // Not traversal: dots inside names, and `..` as part of a longer segment.
        assert_eq!(
            check("/openai/v1/models/gpt-4.1..x", &[]),
            ok("openai", "default", "/v1/models/gpt-4.1..x")
        );
        assert!(matches!(
            check("//evil.example/x", &[]),
            Err(RouteError::UnknownProvider { .. })
        ));
    }

    #[test]
    fn proxy_requests_are_refused_while_forward_mode_is_off() {
        let config = Config::from_toml(
            "[server]\nlisten = \"127.0.0.1:8787\"\n[[provider]]\nname = \"local\"\nupstream = \"http://127.0.0.1:9000\"\n",
            "t",
        )
        .unwrap();
        let table = RouteTable::new(&config);
        let check = |method: Method, uri: &str, version: Version| {
            table
                .target(&method, &uri.parse::<Uri>().unwrap(), version)
                .map(|target| assert!(matches!(target, Target::Path), "{target:?}"))
                .map_err(|err| match err {
                    RouteError::NotAProxy { code, .. } => code,
                    other => panic!("{other:?}"),
                })
        };
        let h1 = Version::HTTP_11;
        assert_eq!(check(Method::GET, "/openai/v1/models", h1), Ok(()));
        assert_eq!(
            check(Method::CONNECT, "evil.example:443", h1),
            Err("not_a_proxy")
        );
        assert_eq!(
            check(Method::CONNECT, "api.openai.com:443", h1),
            Err("forward_proxy_off")
        );
        assert_eq!(
            check(Method::CONNECT, "api.openai.com:443", Version::HTTP_2),
            Err("forward_proxy_off")
        );
        assert_eq!(
            check(Method::GET, "http://evil.example/openai/v1/models", h1),
            Err("not_a_proxy")
        );
        assert_eq!(
            check(
                Method::POST,
                "https://API.OpenAI.com./v1/chat/completions",
                h1
            ),
            Err("forward_proxy_off")
        );
        assert_eq!(
            check(
                Method::GET,
                "http://127.0.0.1:9000/v1/models",
                Version::HTTP_10
            ),
            Err("forward_proxy_off")
        );
        // Another port on a provider's host is still that provider's host (`hosts` are names).
        assert_eq!(
            check(Method::GET, "http://127.0.0.1:1/v1/models", h1),
            Err("forward_proxy_off")
        );
        assert_eq!(
            check(Method::GET, "http://10.9.9.9:9000/v1/models", h1),
            Err("not_a_proxy")
        );
        // meter's own address in absolute form is an ordinary request.
        assert_eq!(
            check(Method::GET, "http://127.0.0.1:8787/openai/v1", h1),
            Ok(())
        );
        assert_eq!(
            check(Method::GET, "http://localhost:8787/openai/v1", h1),
            Ok(())
        );
        assert_eq!(
            check(Method::GET, "http://localhost:8788/openai/v1", h1),
            Err("not_a_proxy")
        );
        // HTTP/2 always carries an authority: routed by path.
        assert_eq!(
            check(
                Method::GET,
                "http://evil.example/openai/v1",
                Version::HTTP_2
            ),
            Ok(())
        );
    }

    #[test]
    fn forward_mode_intercepts_provider_hosts_only() {
        let table = |passthrough: bool| {
            let config = Config::from_toml(
                &format!(
                    "[server]\nlisten = \"127.0.0.1:8787\"\n[proxy.forward]\nenabled = true\npassthrough = {passthrough}\n\
                     [[provider]]\nname = \"openai\"\nupstream = \"https://127.0.0.1:9443\"\n\
                     [[provider]]\nname = \"local\"\nupstream = \"http://10.0.0.5:9000/base\"\nhosts = [\"llm.internal\"]\n"
                ),
                "t",
            )
            .unwrap();
            RouteTable::new(&config)
        };
        let (strict, open) = (table(false), table(true));
        // What each request becomes: "intercept:<provider>", "host:<provider>", "passthrough",
        // "path", or the refusal's code.
        let check = |table: &RouteTable, method: Method, uri: &str, version: Version| -> String {
            match table.target(&method, &uri.parse::<Uri>().unwrap(), version) {
                Ok(Target::Intercept { provider, host, .. }) => {
                    format!("intercept:{}:{host}", provider.name)
                }
                Ok(Target::Host { provider, .. }) => format!("host:{}", provider.name),
                Ok(Target::Passthrough { host, port }) => format!("passthrough:{host}:{port}"),
                Ok(Target::Path) => "path".to_string(),
                Err(RouteError::NotAProxy { code, .. }) => code.to_string(),
                Err(other) => panic!("{other:?}"),
            }
        };
        let h1 = Version::HTTP_11;
        let cases = [
            // The built-in public host, moved upstream or not.
            (
                Method::CONNECT,
                "api.openai.com:443",
                "intercept:openai:api.openai.com",
                "intercept:openai:api.openai.com",
            ),
            (
                Method::CONNECT,
                "API.Anthropic.com.:443",
                "intercept:anthropic:api.anthropic.com",
                "intercept:anthropic:api.anthropic.com",
            ),
            // `hosts` are names on the default port; an upstream is its host and port.
            (
                Method::CONNECT,
                "api.openai.com:8443",
                "host_not_metered",
                "passthrough:api.openai.com:8443",
            ),
            (
                Method::CONNECT,
                "127.0.0.1:9443",
                "intercept:openai:127.0.0.1",
                "intercept:openai:127.0.0.1",
            ),
            (
                Method::CONNECT,
                "llm.internal:443",
                "intercept:local:llm.internal",
                "intercept:local:llm.internal",
            ),
            (
                Method::CONNECT,
                "evil.example:443",
                "host_not_metered",
                "passthrough:evil.example:443",
            ),
            // meter itself is never a tunnel's far end.
            (
                Method::CONNECT,
                "127.0.0.1:8787",
                "not_a_proxy",
                "not_a_proxy",
            ),
            (
                Method::GET,
                "http://10.0.0.5:9000/base/v1/models",
                "host:local",
                "host:local",
            ),
            (
                Method::GET,
                "http://llm.internal/v1/models",
                "host:local",
                "host:local",
            ),
            (
                Method::GET,
                "http://127.0.0.1:11434/api/chat",
                "host:ollama",
                "host:ollama",
            ),
            (
                Method::GET,
                "http://10.0.0.5:9001/v1/models",
                "host_not_metered",
                "host_not_metered",
            ),
            (
                Method::GET,
                "http://evil.example/v1",
                "host_not_metered",
                "host_not_metered",
            ),
            (
                Method::GET,
                "http://127.0.0.1:8787/openai/v1",
                "path",
                "path",
            ),
            (Method::GET, "/openai/v1/models", "path", "path"),
        ];
        for (method, uri, want_strict, want_open) in cases {
            assert_eq!(
                check(&strict, method.clone(), uri, h1),
                want_strict,
                "{uri}"
            );
            assert_eq!(
                check(&open, method, uri, h1),
                want_open,
                "{uri} (passthrough)"
            );
        }
        assert_eq!(
            check(
                &strict,
                Method::CONNECT,
                "api.openai.com:443",
                Version::HTTP_2
            ),
            "connect_needs_http1"
        );
        // Inside a tunnel: the whole path is the provider's; a base path is not added twice.
        let local = strict.providers.get("local").unwrap().clone();
        let route = |path: &str| strict.route_host(&local, path, None, &HeaderMap::new());
        assert_eq!(
            route("/base/v1/chat/completions").unwrap().upstream_path,
            "/v1/chat/completions"
        );
        assert_eq!(
            route("/v1/chat/completions").unwrap().upstream_path,
            "/v1/chat/completions"
        );
        assert_eq!(route("/basement").unwrap().upstream_path, "/basement");
        assert!(matches!(route("/v1/../x"), Err(RouteError::BadPath(_))));
        let target = strict
            .route_host(
                &local,
                "/v1/x",
                None,
                &headers(&[("x-meter-agent", "bot"), ("authorization", "Bearer hello")]),
            )
            .unwrap();
        assert_eq!(
            (target.agent.as_str(), target.key_fingerprint.as_deref()),
            ("bot", Some("2cf24dba5fb0"))
        );
    }

    #[test]
    fn connect_needs_host_and_port() {
        for forward in [false, true] {
            let config = Config::from_toml(
                &format!("[server]\nlisten = \"127.0.0.1:8787\"\n[proxy.forward]\nenabled = {forward}\npassthrough = {forward}\n"),
                "t",
            )
            .unwrap();
            let table = RouteTable::new(&config);
            for target in [
                "api.openai.com",
                "api.openai.com:",
                "api.openai.com:abc",
                "api.openai.com:70000",
                "api.openai.com:0",
                "api.openai.com:+443",
                "[::1]",
                "[::1]:",
            ] {
                let Ok(uri) = target.parse::<Uri>() else {
                    continue;
                };
                let routed = table.target(&Method::CONNECT, &uri, Version::HTTP_11);
                assert!(
                    matches!(routed, Err(RouteError::BadConnect(_))),
                    "{target}: {routed:?}"
                );
            }
            let routed = table.target(
                &Method::CONNECT,
                &"[::1]:443".parse::<Uri>().unwrap(),
                Version::HTTP_11,
            );
            assert_eq!(routed.is_ok(), forward, "{routed:?}");
        }
    }

    #[test]
    fn requests_in_a_tunnel_must_name_its_host() {
        let check = |uri: &str, hosts: &[&str]| {
            let mut map = HeaderMap::new();
            for host in hosts {
                map.append(
                    http::header::HOST,
                    http::HeaderValue::from_str(host).unwrap(),
                );
            }
            RouteTable::check_tunnel_host("api.openai.com", 443, &uri.parse().unwrap(), &map)
                .map_err(|err| assert!(matches!(err, RouteError::Misdirected(_)), "{err:?}"))
                .is_ok()
        };
        assert!(check("/v1/models", &["api.openai.com"]));
        assert!(check("/v1/models", &["API.OpenAI.com.:443"]));
        assert!(check("https://api.openai.com/v1/models", &[]));
        assert!(check(
            "https://api.openai.com:443/v1/models",
            &["api.openai.com"]
        ));
        assert!(
            check("/v1/models", &[]),
            "nothing named, nothing contradicted"
        );
        assert!(!check("/v1/models", &["evil.example"]));
        assert!(!check("/v1/models", &["api.openai.com:8443"]));
        assert!(!check("/v1/models", &["api.openai.com:abc"]));
        assert!(!check("/v1/models", &["api.openai.com", "evil.example"]));
        assert!(!check(
            "https://evil.example/v1/models",
            &["api.openai.com"]
        ));
        assert!(!check(
            "https://api.openai.com/v1/models",
            &["evil.example"]
        ));
        assert!(!check("http://api.openai.com/v1/models", &[]), "port 80");
    }

    #[test]
    fn tag_values_are_bounded_and_visible() {
        let tags = |value: &str| {
            table()
                .route("/openai/v1", None, &headers(&[("x-meter-tags", value)]))
                .map(|t| t.tags)
        };
        assert_eq!(tags("k=a=b").unwrap().as_deref(), Some(r#"{"k":"a=b"}"#));
        assert_eq!(
            tags("k=1'); DROP TABLE usage;--").unwrap().as_deref(),
            Some(r#"{"k":"1'); DROP TABLE usage;--"}"#)
        );
        assert!(tags(&format!("k={}", "v".repeat(128))).is_ok());
        for bad in [
            format!("k={}", "v".repeat(129)),
            "k=a\tb".to_string(),
            "k=a\u{202E}b".to_string(),
            "k=\u{200B}".to_string(),
            "k\u{00e9}=v".to_string(),
            (0..17)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(","),
        ] {
            let mut map = HeaderMap::new();
            map.insert(
                TAGS_HEADER,
                http::HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            );
            assert!(
                matches!(
                    table().route("/openai/v1", None, &map),
                    Err(RouteError::BadTags(_))
                ),
                "{bad:?}"
            );
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
