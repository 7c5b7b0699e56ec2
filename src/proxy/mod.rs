//! The metering proxy: listener -> router -> forwarder -> tee. This module holds the request
//! handler that ties them together and the accept loop with its graceful drain.

pub mod context;
pub mod forward;
pub mod listener;
pub mod rewrite;
pub mod router;
pub mod strip;
pub mod tee;
pub mod tunnel;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::ledger::Recorder;
use crate::usage::request::RequestFacts;
use crate::usage::{self, BodyKind, Endpoint};
use context::{CallContext, Outcome};
use listener::{Activity, ConnectionLimits, Slot, Tracked};
use router::{RouteError, RouteTable, RouteTarget, Target};
use strip::UsageChunkStripper;
use tee::{Metering, TeeBody, UsageReader};

/// The body of every proxy response: the tee'd upstream body, or one meter wrote itself.
pub type ProxyBody = Either<TeeBody, Full<Bytes>>;

/// Everything the request path shares.
pub struct ProxyState {
    pub routes: RouteTable,
    pub client: forward::UpstreamClient,
    pub recorder: Recorder,
    pub max_request_body_bytes: u64,
    pub max_parse_body_bytes: u64,
    pub max_rewrite_body_bytes: u64,
    /// Tracks the tasks that read on after a client hung up (`upstream.drain_on_disconnect`).
    pub drain_on_disconnect: Option<tee::Drain>,
    pub budgets: Arc<crate::budget::Budgets>,
    /// Prices a call's worst case for budget reservations.
    pub pricer: Arc<crate::ledger::writer::Pricer>,
    pub clock: crate::clock::Clock,
    /// Forward-proxy mode (`[proxy.forward] enabled`), with the local CA's leaves.
    pub forward: Option<tunnel::Forward>,
}

/// Serves the proxy on `listener` until `shutdown` turns true, then lets in-flight calls finish
/// for at most `drain`, and cuts the rest (each still yields its record when its body drops).
/// At most `limits.max_connections` connections are served at once: past it, the loop stops
/// accepting (new connections wait in the backlog) until one closes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ProxyState>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    limits: ConnectionLimits,
) {
    let mut connections = JoinSet::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut full = false;
    loop {
        // A place first, then a connection: at the cap, connections wait unaccepted.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                full = false;
                permit
            }
            Err(_) => {
                if !full {
                    full = true;
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "client connection cap reached (server.max_connections); new connections wait"
                    );
                }
                tokio::select! {
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                    _ = shutdown.changed() => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let builder = builder.clone();
                    let state = state.clone();
                    let shutdown = shutdown.clone();
                    let slot = Slot::new(permit, limits.metrics.clone());
                    connections.spawn(serve_connection(
                        builder,
                        stream,
                        peer,
                        state,
                        shutdown,
                        (slot, limits.clone()),
                    ));
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "drain time is up; closing the calls still in flight"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// Serves one client connection until it ends or shutdown drains it. A connection with no
/// request in progress for `header_read_timeout` (its headers never complete, or it sits idle)
/// is closed; its `Slot` is freed when this returns. In forward-proxy mode, a `CONNECT` meter
/// answered 200 hands the connection over to its tunnel, which then runs here, in the same
/// task: the tunnel holds the slot and is drained (or cut) like any connection.
async fn serve_connection(
    builder: auto::Builder<TokioExecutor>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: Arc<ProxyState>,
    mut shutdown: watch::Receiver<bool>,
    (_slot, limits): (Slot, ConnectionLimits),
) {
    let stash: Option<Arc<tunnel::Stash>> = state.forward.is_some().then(Default::default);
    let activity = Activity::new();
    let tracker = activity.clone();
    let service_state = state.clone();
    let service_stash = stash.clone();
    let service = service_fn(move |request| {
        let guard = tracker.begin();
        let state = service_state.clone();
        let via = Via::Client(service_stash.clone());
        async move {
            let response = handle_in(state, request, via).await?;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, guard)))
        }
    });
    let io = TokioIo::new(stream);
    let ended = if stash.is_some() {
        let connection = builder.serve_connection_with_upgrades(io, service);
        watch_connection(connection, &activity, &mut shutdown, &limits, peer).await
    } else {
        let connection = builder.serve_connection(io, service);
        watch_connection(connection, &activity, &mut shutdown, &limits, peer).await
    };
    let pending = stash.and_then(|stash| stash.lock().ok()?.take());
    if let (true, Some(pending)) = (ended, pending) {
        if !*shutdown.borrow() {
            run_tunnel(pending, &builder, state, shutdown, &limits, peer).await;
        }
    }
}

/// Drives a connection until it ends, shutdown drains it, or it is idle for
/// `header_read_timeout` with no request in progress. False when it was closed for idleness.
async fn watch_connection<C>(
    connection: C,
    activity: &Activity,
    shutdown: &mut watch::Receiver<bool>,
    limits: &ConnectionLimits,
    peer: SocketAddr,
) -> bool
where
    C: hyper_util::server::graceful::GracefulConnection<
        Error = Box<dyn std::error::Error + Send + Sync>,
    >,
{
    tokio::pin!(connection);
    let timeout = limits.header_read_timeout;
    let result = loop {
        // Re-armed whenever it fires while the connection is busy or was used since.
        let deadline = activity
            .idle_deadline(timeout)
            .unwrap_or_else(|| tokio::time::Instant::now() + timeout);
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = shutdown.changed() => {
                connection.as_mut().graceful_shutdown();
                break connection.await;
            }
            _ = tokio::time::sleep_until(deadline) => {
                if activity
                    .idle_deadline(timeout)
                    .is_some_and(|idle| idle <= tokio::time::Instant::now())
                {
                    limits.metrics.client_timeouts_total.inc();
                    tracing::debug!(%peer, "no request headers in time; closing the connection");
                    // HTTP/2 clients get a GOAWAY; whatever is still unfinished after a
                    // moment is dropped (nothing is in flight on it).
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection.as_mut()).await;
                    return false;
                }
            }
        }
    };
    if let Err(err) = result {
        if listener::is_header_timeout(&*err) {
            limits.metrics.client_timeouts_total.inc();
        }
        tracing::debug!(%peer, error = %err, "client connection ended with an error");
    }
    true
}

/// Runs a tunnel meter answered 200 to, once hyper hands over the client's connection:
/// passthrough copies it blind; an intercepted one terminates TLS and serves the requests
/// inside (HTTP/1.1 or HTTP/2, by ALPN) for the tunnel's provider, with the same handler,
/// limits and watchdog as any client connection.
async fn run_tunnel(
    pending: tunnel::Pending,
    builder: &auto::Builder<TokioExecutor>,
    state: Arc<ProxyState>,
    mut shutdown: watch::Receiver<bool>,
    limits: &ConnectionLimits,
    peer: SocketAddr,
) {
    let Some(forward) = state.forward.as_ref() else {
        return;
    };
    let upgraded = match pending.upgrade.await {
        Ok(upgraded) => upgraded,
        Err(err) => {
            tracing::debug!(%peer, error = %err, "the CONNECT connection was not handed over");
            return;
        }
    };
    let (provider, host, port) = match pending.plan {
        tunnel::Plan::Passthrough(server) => {
            tunnel::passthrough(forward, upgraded, server, shutdown).await;
            return;
        }
        tunnel::Plan::Intercept {
            provider,
            host,
            port,
        } => (provider, host, port),
    };
    let tls = match tunnel::accept_tls(forward, upgraded, &host, limits.header_read_timeout).await {
        Ok(tls) => tls,
        Err(err) => {
            forward.metrics.forward_handshake_failures_total.inc();
            tracing::info!(%peer, %host, error = %err, "intercepted tunnel: TLS handshake failed (does the client trust meter's CA? see `meter ca path`)");
            return;
        }
    };
    let activity = Activity::new();
    let tracker = activity.clone();
    let tunnel = Arc::new(TunnelTo {
        provider,
        host,
        port,
    });
    let service = service_fn(move |request| {
        let guard = tracker.begin();
        let state = state.clone();
        let via = Via::Tunnel(tunnel.clone());
        async move {
            let response = handle_in(state, request, via).await?;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, guard)))
        }
    });
    let connection = builder.serve_connection(TokioIo::new(tls), service);
    watch_connection(connection, &activity, &mut shutdown, limits, peer).await;
}

/// How a request reached the handler.
enum Via {
    /// On a client connection to the proxy port; in forward-proxy mode (HTTP/1 connections),
    /// where a `CONNECT` leaves its tunnel.
    Client(Option<Arc<tunnel::Stash>>),
    /// Inside a tunnel intercepted for this provider.
    Tunnel(Arc<TunnelTo>),
}

/// An intercepted tunnel: the provider its requests go to, and the `CONNECT` host (as the
/// router normalized it) and port they must name.
struct TunnelTo {
    provider: Arc<crate::config::Provider>,
    host: String,
    port: u16,
}

/// Handles one client request. Never fails: every problem becomes a response.
pub async fn handle(
    state: Arc<ProxyState>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    handle_in(state, request, Via::Client(None)).await
}

async fn handle_in(
    state: Arc<ProxyState>,
    mut request: Request<Incoming>,
    via: Via,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let ts = state.clock.now();
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_string);
    let routed = match via {
        Via::Tunnel(tunnel) => {
            if request.method() == Method::CONNECT {
                Err(RouteError::NotAProxy {
                    code: "not_a_proxy",
                    message: "CONNECT inside a tunnel".to_string(),
                })
            } else {
                // The client's key is for the host it names: never sent to another one.
                RouteTable::check_tunnel_host(
                    &tunnel.host,
                    tunnel.port,
                    request.uri(),
                    request.headers(),
                )
                .and_then(|()| {
                    state.routes.route_host(
                        &tunnel.provider,
                        &path,
                        query.as_deref(),
                        request.headers(),
                    )
                })
            }
        }
        Via::Client(stash) => {
            let target = state
                .routes
                .target(request.method(), request.uri(), request.version());
            match (target, &state.forward, stash) {
                (Ok(Target::Path), _, _) => {
                    state
                        .routes
                        .route(&path, query.as_deref(), request.headers())
                }
                (Ok(Target::Host { provider, .. }), _, _) => {
                    state
                        .routes
                        .route_host(&provider, &path, query.as_deref(), request.headers())
                }
                (Ok(tunnel), Some(forward), Some(stash)) => {
                    return Ok(tunnel::open(forward, &mut request, tunnel, &stash).await);
                }
                (Ok(_), _, _) => Err(RouteError::NotAProxy {
                    code: "not_a_proxy",
                    message: "CONNECT is answered on HTTP/1.1 client connections only".to_string(),
                }),
                (Err(err), forward, _) => {
                    if let (Some(forward), true) = (forward, request.method() == Method::CONNECT) {
                        forward
                            .metrics
                            .forward_tunnels_total
                            .with_label_values(&["refused"])
                            .inc();
                    }
                    Err(err)
                }
            }
        }
    };
    let target = match routed {
        Ok(target) => target,
        Err(err) => return Ok(route_error(&state, err)),
    };
    let endpoint = Endpoint::from_path(&target.upstream_path);
    let billable = request.method() == Method::POST;
    let RouteTarget {
        provider,
        agent,
        upstream_path,
        key_fingerprint,
        tags,
        allowed,
    } = target;
    let mut context = CallContext {
        started,
        ts,
        agent,
        provider,
        endpoint,
        billable,
        streaming: false,
        key_fingerprint,
        tags,
        status: 0,
        first_byte: None,
        facts: RequestFacts::default(),
        request_body: None,
        request_len: 0,
        blocked_by: None,
        reservation: None,
    };
    if !allowed {
        let message = format!(
            "agent {:?} may not use {} routes (see its `routes` in the meter config)",
            context.agent,
            context.provider.route.as_str()
        );
        context.blocked_by = Some("route_policy".to_string());
        return Ok(refuse(
            &state,
            context,
            StatusCode::FORBIDDEN,
            "route_refused",
            &message,
        ));
    }

    let (parts, body) = request.into_parts();
    let limit = state.max_request_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        listener::discard_rest(body);
        return Ok(too_large(&state, context, limit));
    }
    let mut limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let body = match (&mut limited).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            listener::discard_rest(limited);
            return Ok(too_large(&state, context, limit));
        }
        Err(err) => {
            // The client went away while sending; nothing was forwarded, nothing to record.
            tracing::debug!(error = %err, "reading the request body failed");
            return Ok(json_error(
                StatusCode::BAD_REQUEST,
                "bad_request_body",
                "the request body could not be read",
                None,
            ));
        }
    };

    context.facts = RequestFacts::probe(&body);
    if context.facts.model.is_none() {
        context.facts.model = model_from_path(&upstream_path);
    }
    // Ollama's native API streams unless told not to.
    let native_ollama = matches!(endpoint, Endpoint::OllamaChat | Endpoint::OllamaGenerate);
    context.streaming = context.facts.stream.unwrap_or(native_ollama)
        || endpoint == Endpoint::StreamGenerateContent;
    context.keep_request(&body);
    if context.billable && state.budgets.any_enforced() {
        if let Err(blocked) = admit(&state, &mut context) {
            return Ok(over_budget(&state, context, blocked));
        }
    }

    // Ask for the usage the client did not ask for (issue 3): stream usage on OpenAI-format
    // streams, and OpenRouter's cost.
    let original_body = body.clone();
    let mut injected_stream_usage = false;
    let body = match rewrite_for_usage(&state, &context, endpoint, &body) {
        Some(rewritten) => {
            injected_stream_usage = rewritten.injected_stream_usage;
            Bytes::from(rewritten.body)
        }
        None => body,
    };

    // Kept to resend the request exactly as the client sent it, should the provider reject
    // meter's stream-usage option: a metering feature must never fail a call that works
    // without meter.
    let resend = injected_stream_usage.then(|| {
        (
            parts.method.clone(),
            parts.uri.clone(),
            parts.version,
            parts.headers.clone(),
            original_body.clone(),
        )
    });
    let upstream_request = match forward::upstream_request(
        &context.provider.upstream,
        &upstream_path,
        query.as_deref(),
        parts,
        body,
    ) {
        Ok(request) => request,
        Err(err) => {
            tracing::warn!(error = %err, "cannot build the upstream request");
            return Ok(refuse(
                &state,
                context,
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request cannot be forwarded: invalid path or query",
            ));
        }
    };

    let timeout = context.provider.response_timeout;
    let upstream = context.provider.upstream.clone();
    // From here the provider may be working on the call: if this future is dropped (the client
    // leaves, shutdown cuts the wait), the guard still records it.
    let pending = PendingCall::new(context, state.recorder.clone());
    let mut result = tokio::time::timeout(timeout, state.client.request(upstream_request)).await;
    if let (Some((method, uri, version, headers, original)), Ok(Ok(response))) = (resend, &result) {
        if response.status() == StatusCode::BAD_REQUEST {
            tracing::info!(provider = %upstream, "the provider rejected stream_options.include_usage; resending the request as the client sent it");
            injected_stream_usage = false;
            let (mut parts, ()) = Request::new(()).into_parts();
            parts.method = method;
            parts.uri = uri;
            parts.version = version;
            parts.headers = headers;
            if let Ok(request) = forward::upstream_request(
                &upstream,
                &upstream_path,
                query.as_deref(),
                parts,
                original,
            ) {
                result = tokio::time::timeout(timeout, state.client.request(request)).await;
            }
        }
    }
    let mut context = pending.into_inner();
    let response = match result {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            let connect = err.is_connect();
            tracing::warn!(provider = %context.provider.name, agent = %context.agent, error = %error_chain(&err), "upstream request failed");
            if connect {
                return Ok(refuse(
                    &state,
                    context,
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    "the upstream provider could not be reached",
                ));
            }
            // The request may have reached the provider: its usage is unknown, not zero.
            return Ok(fail(
                &state,
                context,
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "the upstream provider closed the connection without a response",
            ));
        }
        Err(_) => {
            tracing::warn!(provider = %context.provider.name, agent = %context.agent, timeout_secs = timeout.as_secs(), "upstream response timed out");
            return Ok(fail(
                &state,
                context,
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream provider did not answer in time",
            ));
        }
    };

    let (mut parts, upstream_body) = response.into_parts();
    forward::strip_hop_by_hop(&mut parts.headers);
    context.status = parts.status.as_u16();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let body_kind = BodyKind::from_content_type(content_type);
    if body_kind == BodyKind::Sse {
        context.streaming = true;
    }
    let parser = if parts.status.is_success() {
        usage::parser_for(&usage::ParseContext {
            endpoint,
            body: body_kind,
            flavor: context.provider.flavor,
        })
    } else {
        None
    };
    let encoding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    // The usage-only chunk meter caused is hidden only where it can be cut out cleanly: an
    // uncompressed event stream of unannounced length. Elsewhere the client sees it (it is a
    // valid, documented chunk).
    let identity = encoding.is_none_or(|e| e.trim().eq_ignore_ascii_case("identity"));
    let stripper = (injected_stream_usage
        && body_kind == BodyKind::Sse
        && identity
        && !parts.headers.contains_key(header::CONTENT_LENGTH))
    .then(UsageChunkStripper::default);
    let reader = UsageReader::new(
        parser,
        encoding,
        state.max_parse_body_bytes,
        matches!(body_kind, BodyKind::Sse | BodyKind::Ndjson),
    );
    let idle_timeout = context.provider.idle_timeout;
    let body = TeeBody::new(
        upstream_body,
        idle_timeout,
        Metering {
            context,
            reader,
            recorder: state.recorder.clone(),
            stripper,
            drain: state.drain_on_disconnect.clone(),
        },
    );
    Ok(Response::from_parts(parts, Either::Left(body)))
}

/// Checks the call against enforced budgets; on success the call holds its reservation.
fn admit(state: &ProxyState, context: &mut CallContext) -> Result<(), crate::budget::Blocked> {
    let model = context.facts.model.as_deref();
    let scope = crate::budget::CallScope {
        agent: &context.agent,
        provider: &context.provider.name,
        route: context.provider.route.as_str(),
        model: model
            .filter(|m| !m.is_empty())
            .unwrap_or(crate::budget::UNKNOWN_MODEL),
    };
    // The prompt at about four bytes a token (the request's JSON framing makes this an
    // over-estimate for text), plus the output cap or the budget's default.
    let input_tokens = context.request_len.div_ceil(4);
    let cap = context.facts.max_output_tokens;
    let date = context.ts.date_naive();
    let pricer = &state.pricer;
    let provider = &context.provider.name;
    // Image endpoints bill per image: as many as asked for (`n`, else one), at the size and
    // quality asked for.
    let images = matches!(
        context.endpoint,
        Endpoint::ImagesGenerations | Endpoint::ImagesEdits | Endpoint::ImagesVariations
    );
    let quantities = crate::usage::Quantities {
        images: if images {
            context.facts.images.unwrap_or(1)
        } else {
            0
        },
        image_size: images.then(|| context.facts.image_size.clone()).flatten(),
        image_quality: images
            .then(|| context.facts.image_quality.clone())
            .flatten(),
        ..Default::default()
    };
    let reservation = state.budgets.admit(scope, |default_output| {
        pricer.worst_case(
            provider,
            model,
            date,
            input_tokens,
            cap.unwrap_or(default_output),
            &quantities,
        )
    })?;
    context.reservation = reservation;
    Ok(())
}

/// 429 for a call an enforced budget refuses, in the caller's error format, recorded as blocked.
fn over_budget(
    state: &ProxyState,
    mut context: CallContext,
    blocked: crate::budget::Blocked,
) -> Response<ProxyBody> {
    let end = blocked
        .period_end
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let message = match blocked.reason {
        crate::budget::BlockReason::Spent => format!(
            "budget {:?} is spent for {}: {} of {} (with calls in flight); calls in its scope are refused until {end}",
            blocked.budget,
            blocked.period_label,
            crate::money::format_usd(blocked.spend_nanos),
            crate::money::format_usd(blocked.limit_nanos),
        ),
        crate::budget::BlockReason::Unpriced => format!(
            "budget {:?} refuses calls meter cannot price (unpriced = \"block\"), and model {:?} of provider {:?} has no price",
            blocked.budget,
            context.facts.model.as_deref().unwrap_or(""),
            context.provider.name,
        ),
    };
    context.blocked_by = Some(blocked.budget);
    let mut response = refuse(
        state,
        context,
        StatusCode::TOO_MANY_REQUESTS,
        "budget_exceeded",
        &message,
    );
    // Stainless-generated SDKs (OpenAI, Anthropic) honour this and do not retry a hard stop.
    response
        .headers_mut()
        .insert("x-should-retry", HeaderValue::from_static("false"));
    response
}

/// The rewritten request body when meter must ask for usage, else `None` (forwarded as is).
fn rewrite_for_usage(
    state: &ProxyState,
    context: &CallContext,
    endpoint: Endpoint,
    body: &Bytes,
) -> Option<rewrite::Rewritten> {
    if !matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions)
        || body.len() as u64 > state.max_rewrite_body_bytes
    {
        return None;
    }
    let provider = &context.provider;
    let inject_stream = provider.inject_stream_usage && context.facts.stream == Some(true);
    let openrouter = provider.flavor == usage::Flavor::OpenRouter;
    if !inject_stream && !openrouter {
        return None;
    }
    rewrite::request_usage(body, inject_stream, openrouter)
}

/// An error and its causes on one line (`client error (Connect): tcp connect error: Connection
/// refused`), for logs; never carries a request or response body.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The model named in a Gemini-style path: `.../models/<model>:generateContent`.
fn model_from_path(path: &str) -> Option<String> {
    let after = &path[path.rfind("/models/")? + "/models/".len()..];
    let model = after.split(':').next()?;
    (!model.is_empty() && !model.contains('/')).then(|| model.to_string())
}

fn too_large(state: &ProxyState, context: CallContext, limit: u64) -> Response<ProxyBody> {
    let message = format!("the request body is larger than meter's limit of {limit} bytes (server.max_request_body_bytes)");
    refuse(
        state,
        context,
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        &message,
    )
}

/// A call meter sent but got no usable answer for (timeout, connection lost): recorded with
/// its usage unknown, since the provider may have worked on it.
fn fail(
    state: &ProxyState,
    context: CallContext,
    status: StatusCode,
    code: &'static str,
    message: &str,
) -> Response<ProxyBody> {
    answer(state, context, status, Outcome::Cut(code), code, message)
}

/// Holds a call's context while meter waits for the upstream's response headers, so that a
/// call whose wait is cut short (the client leaves, shutdown aborts it) is still recorded.
struct PendingCall {
    context: Option<CallContext>,
    recorder: Recorder,
}

impl PendingCall {
    fn new(context: CallContext, recorder: Recorder) -> PendingCall {
        PendingCall {
            context: Some(context),
            recorder,
        }
    }

    fn into_inner(mut self) -> CallContext {
        self.context
            .take()
            .expect("a PendingCall holds its context until into_inner")
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if let Some(mut context) = self.context.take() {
            // 499: the client closed the request before the response (nginx's convention).
            context.status = 499;
            self.recorder
                .record(context.into_record(None, Outcome::Cut("client_gone")));
        }
    }
}

/// Answers a routed call meter did not send (403, 413, unreachable upstream), and records it.
fn refuse(
    state: &ProxyState,
    context: CallContext,
    status: StatusCode,
    code: &'static str,
    message: &str,
) -> Response<ProxyBody> {
    answer(
        state,
        context,
        status,
        Outcome::Refused(code),
        code,
        message,
    )
}

/// Records a call that ends in meter's own JSON error, and makes that error in the shape the
/// call's SDK understands.
fn answer(
    state: &ProxyState,
    mut context: CallContext,
    status: StatusCode,
    outcome: Outcome,
    code: &'static str,
    message: &str,
) -> Response<ProxyBody> {
    context.status = status.as_u16();
    let dialect = ErrorDialect::of(context.endpoint, context.provider.kind);
    state.recorder.record(context.into_record(None, outcome));
    provider_error(dialect, status, code, message)
}

/// Whose error format a call's client expects: the endpoint decides, the provider's `kind`
/// where the endpoint says nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorDialect {
    OpenAi,
    Anthropic,
    Gemini,
}

impl ErrorDialect {
    fn of(endpoint: Endpoint, kind: crate::config::WireKind) -> ErrorDialect {
        use crate::config::WireKind;
        match endpoint {
            Endpoint::Messages => ErrorDialect::Anthropic,
            Endpoint::GenerateContent | Endpoint::StreamGenerateContent => ErrorDialect::Gemini,
            Endpoint::Other => match kind {
                WireKind::Anthropic => ErrorDialect::Anthropic,
                WireKind::Gemini => ErrorDialect::Gemini,
                WireKind::OpenAi | WireKind::Ollama => ErrorDialect::OpenAi,
            },
            _ => ErrorDialect::OpenAi,
        }
    }
}

/// Meter's error in the provider's own format, so SDKs raise their usual error types:
/// OpenAI `{"error": {"message", "type", "code"}}`, Anthropic
/// `{"type": "error", "error": {"type", "message"}}`, Google
/// `{"error": {"code", "message", "status", "details": [ErrorInfo]}}`.
fn provider_error(
    dialect: ErrorDialect,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response<ProxyBody> {
    let prefixed = format!("meter: {message}");
    let body = match dialect {
        ErrorDialect::OpenAi => return json_error(status, code, message, None),
        ErrorDialect::Anthropic => {
            let kind = match status.as_u16() {
                400 => "invalid_request_error",
                403 => "permission_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                504 => "timeout_error",
                _ => "api_error",
            };
            serde_json::json!({
                "type": "error",
                "error": { "type": kind, "message": prefixed, "meter_code": code },
            })
        }
        ErrorDialect::Gemini => {
            let google_status = match status.as_u16() {
                400 | 413 => "INVALID_ARGUMENT",
                403 => "PERMISSION_DENIED",
                429 => "RESOURCE_EXHAUSTED",
                504 => "DEADLINE_EXCEEDED",
                _ => "UNAVAILABLE",
            };
            serde_json::json!({
                "error": {
                    "code": status.as_u16(),
                    "message": prefixed,
                    "status": google_status,
                    "details": [{
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": code,
                        "domain": "meter",
                    }],
                }
            })
        }
    };
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn route_error(state: &ProxyState, err: RouteError) -> Response<ProxyBody> {
    match err {
        RouteError::UnknownProvider { prefix } => json_error(
            StatusCode::NOT_FOUND,
            "unknown_provider",
            &format!(
                "no provider {prefix:?}: use http://<meter>/<provider>/<path> with one of the known prefixes"
            ),
            Some(state.routes.provider_names()),
        ),
        RouteError::BadPath(reason) => {
            json_error(StatusCode::BAD_REQUEST, "bad_path", reason, None)
        }
        RouteError::BadAgent(reason) => {
            json_error(StatusCode::BAD_REQUEST, "bad_agent", &reason, None)
        }
        RouteError::BadTags(reason) => {
            json_error(StatusCode::BAD_REQUEST, "bad_tags", &reason, None)
        }
        RouteError::NotAProxy { code, message } => {
            json_error(StatusCode::FORBIDDEN, code, &message, None)
        }
        RouteError::BadConnect(reason) => {
            json_error(StatusCode::BAD_REQUEST, "bad_connect_target", &reason, None)
        }
        RouteError::Misdirected(reason) => json_error(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_request",
            &reason,
            None,
        ),
    }
}

/// A JSON error in the shape OpenAI-style SDKs display: `{"error": {"message", "type", "code"}}`.
fn json_error(
    status: StatusCode,
    code: &str,
    message: &str,
    known_prefixes: Option<&[String]>,
) -> Response<ProxyBody> {
    let mut error = serde_json::json!({
        "message": format!("meter: {message}"),
        "type": "meter_error",
        "code": code,
    });
    if let Some(prefixes) = known_prefixes {
        error["known_prefixes"] = serde_json::json!(prefixes);
    }
    let body = serde_json::json!({ "error": error }).to_string();
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn errors_speak_the_callers_dialect() {
        use crate::config::WireKind;
        let body = |response: Response<ProxyBody>| async move {
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        };
        let openai = body(provider_error(
            ErrorDialect::of(Endpoint::ChatCompletions, WireKind::Anthropic),
            StatusCode::FORBIDDEN,
            "route_refused",
            "no",
        ))
        .await;
        assert_eq!(openai["error"]["code"], "route_refused");
        assert_eq!(openai["error"]["message"], "meter: no");
        let anthropic = body(provider_error(
            ErrorDialect::of(Endpoint::Messages, WireKind::OpenAi),
            StatusCode::FORBIDDEN,
            "route_refused",
            "no",
        ))
        .await;
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "permission_error");
        let gemini = body(provider_error(
            ErrorDialect::of(Endpoint::Other, WireKind::Gemini),
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "slow",
        ))
        .await;
        assert_eq!(gemini["error"]["code"], 504);
        assert_eq!(gemini["error"]["status"], "DEADLINE_EXCEEDED");
        assert_eq!(gemini["error"]["details"][0]["reason"], "upstream_timeout");
    }

    #[test]
    fn gemini_model_from_path() {
        let cases = [
            ("/v1beta/models/gemini-2.5-pro:generateContent", Some("gemini-2.5-pro")),
            ("/v1/projects/p/locations/l/publishers/google/models/gemini-2.0-flash:streamGenerateContent", Some("gemini-2.0-flash")),
            ("/v1/chat/completions", None),
            ("/v1/models/", None),
        ];
        for (path, want) in cases {
            assert_eq!(model_from_path(path).as_deref(), want, "{path}");
        }
    }
}
