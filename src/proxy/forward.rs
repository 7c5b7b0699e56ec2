//! The forwarder: the pooled upstream client (HTTPS with rustls, HTTP/1.1 and HTTP/2 by ALPN)
//! and the rewriting of a client request into an upstream one: hop-by-hop and `X-Meter-*`
//! headers removed (RFC 9110 §7.6.1), `Host` taken from the upstream URI, everything else as is.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Upstream, UpstreamConfig};

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(
        "no trusted root certificates: neither the system store nor the built-in roots loaded"
    )]
    NoRoots,
    #[error("upstream.ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("building the upstream URI: {0}")]
    Uri(#[from] http::Error),
}

/// Builds the shared upstream client. Roots: the system store, else the bundled webpki roots.
pub fn client(config: &UpstreamConfig) -> Result<UpstreamClient, ForwardError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A single unparsable system certificate must not take the others down with it.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = &config.ca_file {
        add_ca_file(&mut roots, path)?;
    }
    if roots.is_empty() {
        return Err(ForwardError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| ForwardError::NoRoots)?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .build(https))
}

pub(crate) fn add_ca_file(
    roots: &mut rustls::RootCertStore,
    path: &std::path::Path,
) -> Result<(), ForwardError> {
    use rustls::pki_types::pem::PemObject;
    let fail = |reason: String| ForwardError::CaFile {
        path: path.display().to_string(),
        reason,
    };
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|err| fail(err.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| fail(err.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in the file".to_string()));
    }
    for cert in certs {
        roots.add(cert).map_err(|err| fail(err.to_string()))?;
    }
    Ok(())
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), plus the proxy-only ones; never forwarded.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Removes hop-by-hop headers, including those named by `Connection`, in place.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Removes meter's own request headers (`X-Meter-*`): they are for meter, not the provider.
fn strip_meter_headers(headers: &mut HeaderMap) {
    let meter: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-meter-"))
        .cloned()
        .collect();
    for name in meter {
        headers.remove(name);
    }
}

/// The upstream request for a routed client request.
pub fn upstream_request(
    upstream: &Upstream,
    upstream_path: &str,
    query: Option<&str>,
    parts: http::request::Parts,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, ForwardError> {
    let mut path_and_query =
        String::with_capacity(upstream.base_path.len() + upstream_path.len() + 64);
    path_and_query.push_str(&upstream.base_path);
    path_and_query.push_str(upstream_path);
    if path_and_query.is_empty() {
        path_and_query.push('/');
    }
    if let Some(query) = query {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    let uri = Uri::builder()
        .scheme(if upstream.https { "https" } else { "http" })
        .authority(upstream.authority.clone())
        .path_and_query(path_and_query)
        .build()?;

    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    strip_meter_headers(&mut headers);
    // meter already answered any `Expect: 100-continue` by reading the body.
    headers.remove(header::EXPECT);
    // The body was read whole, so its length is known; the client's framing was hop-by-hop.
    headers.remove(header::CONTENT_LENGTH);
    if !body.is_empty() || parts.method == http::Method::POST || parts.method == http::Method::PUT {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    // The client's `Host` names meter. The upstream's comes from the URI: the pooled client
    // writes it as `Host` on HTTP/1.1 and as `:authority` on HTTP/2 (where a `Host` header is
    // discouraged, RFC 9113 §8.3.1).
    headers.remove(header::HOST);

    let mut request = Request::new(Full::new(body));
    *request.method_mut() = parts.method;
    *request.uri_mut() = uri;
    // The upstream connection's version is chosen by ALPN, not by how the client reached us.
    *request.version_mut() = http::Version::HTTP_11;
    *request.headers_mut() = headers;
    Ok(request)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rewrites_headers_and_uri() {
        let request = Request::builder()
            .method("POST")
            .uri("/openrouter/v1/chat/completions?x=1")
            .header("host", "127.0.0.1:8787")
            .header("connection", "keep-alive, x-secret-hop")
            .header("x-secret-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("transfer-encoding", "chunked")
            .header("x-meter-agent", "coder")
            .header("x-meter-tags", "a=b")
            .header("authorization", "Bearer sk")
            .header("accept-encoding", "gzip")
            .header("expect", "100-continue")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let upstream = Upstream::parse("https://openrouter.ai/api").unwrap();
        let out = upstream_request(
            &upstream,
            "/v1/chat/completions",
            Some("x=1"),
            parts,
            Bytes::from_static(b"{}"),
        )
        .unwrap();
        assert_eq!(
            out.uri().to_string(),
            "https://openrouter.ai/api/v1/chat/completions?x=1"
        );
        let headers = out.headers();
        assert!(
            !headers.contains_key("host"),
            "the client's Host is not forwarded"
        );
        assert_eq!(out.uri().authority().unwrap().as_str(), "openrouter.ai");
        assert_eq!(headers["authorization"], "Bearer sk");
        assert_eq!(headers["accept-encoding"], "gzip");
        assert_eq!(headers["content-length"], "2");
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "te",
            "transfer-encoding",
            "x-meter-agent",
            "x-meter-tags",
            "expect",
        ] {
            assert!(!headers.contains_key(gone), "{gone} forwarded");
        }
    }
}
