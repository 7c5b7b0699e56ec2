//! Builds every part of `meter serve` from the [`Config`], owns its tasks, and shuts them down
//! in order: stop accepting, let calls in flight finish (bounded), write every pending record.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::ledger::writer;
use crate::metrics::Metrics;
use crate::proxy::{self, forward, router::RouteTable, ProxyState};

/// The bound listeners; tests bind port 0 and read the addresses back.
pub struct Listeners {
    pub proxy: TcpListener,
    pub metrics: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let proxy = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| {
                format!("cannot listen on {} (server.listen)", config.server.listen)
            })?;
        let metrics = TcpListener::bind(config.server.metrics_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (server.metrics_listen)",
                    config.server.metrics_listen
                )
            })?;
        Ok(Listeners { proxy, metrics })
    }
}

/// Runs the proxy, the metrics listener and the ledger writer until `shutdown` resolves, then
/// drains. Returns once every record is written.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let clock = crate::clock::Clock::from_env().map_err(anyhow::Error::msg)?;
    run_at(config, listeners, shutdown, clock).await
}

/// [`run`] on a given clock (tests, and `METER_NOW`).
pub async fn run_at(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    clock: crate::clock::Clock,
) -> anyhow::Result<()> {
    let metrics = Arc::new(
        Metrics::with_caps(config.metrics.max_agents, config.metrics.max_models)
            .context("registering metrics")?,
    );
    let table = config.rate_table()?;
    let pricer = Arc::new(writer::Pricer::new(&config, table));
    if clock.is_shifted() {
        tracing::warn!(now = %clock.now(), "METER_NOW is set: meter runs on a shifted clock");
    }
    let budgets = Arc::new(crate::budget::Budgets::new(
        &config.budgets,
        config.timezone,
        clock,
    ));
    // What can still fail at start fails before the ledger (and its journal) is opened.
    let client = forward::client(&config.upstream)?;
    let forward_mode = if config.forward.enabled {
        let dir = config.ca_dir();
        let ca = crate::ca::LocalCa::load(&dir).context(
            "forward-proxy mode ([proxy.forward] enabled = true) needs meter's local CA",
        )?;
        tracing::info!(ca = %ca.paths.cert.display(), passthrough = config.forward.passthrough, "forward-proxy mode on: clients set HTTPS_PROXY to meter and trust this CA");
        Some(proxy::tunnel::Forward {
            leaves: Arc::new(crate::ca::Leaves::new(ca)),
            metrics: metrics.clone(),
            connect_timeout: config.upstream.connect_timeout,
            idle_timeout: config.upstream.idle_timeout,
            own: [&listeners.proxy, &listeners.metrics]
                .iter()
                .filter_map(|listener| listener.local_addr().ok())
                .collect(),
        })
    } else {
        None
    };
    // Opening a PostgreSQL ledger blocks (its client runs a runtime of its own): off the
    // async threads, like every later use of it. A SQLite ledger opens here (no extra thread).
    let store_config = config.store.clone();
    let (writer_metrics, writer_pricer, writer_budgets) =
        (metrics.clone(), pricer.clone(), budgets.clone());
    let open = move || -> Result<_, crate::ledger::writer::LedgerError> {
        let opened = writer::open(&store_config, writer_metrics, writer_pricer, writer_budgets)?;
        let store = writer::store(&store_config)?;
        // A PostgreSQL ledger unreachable at start: the writer journals, the alerter connects
        // when it can.
        let conn = match store.open() {
            Ok(conn) => Some(conn),
            Err(err) if writer::is_unreachable(&err) => None,
            Err(err) => return Err(err),
        };
        Ok((opened, store, conn))
    };
    let ((recorder, writer), store, conn) = if config.store.url.is_some() {
        tokio::task::spawn_blocking(open)
            .await
            .context("opening the ledger")??
    } else {
        open()?
    };
    // Before /metrics serves: the counters continue from the ledger across restarts. Not on a
    // shared ledger: each meter's counters count its own calls (Prometheus sums the
    // instances and takes restarts in its stride), or a fleet would count every call N times.
    metrics.set_instance(
        &config.server.instance,
        if config.store.url.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
    );
    let mut conn = conn;
    if let Some(conn) = conn
        .as_mut()
        .filter(|c| c.backend() == crate::ledger::db::Backend::Sqlite)
    {
        let totals = crate::ledger::query::seed_totals(conn).with_context(|| {
            format!(
                "reading the ledger's totals from {}",
                config.store.path.display()
            )
        })?;
        metrics.seed(&totals);
    }
    let alerter = Arc::new(crate::alert::Alerter::new(
        conn,
        store.clone(),
        budgets.clone(),
        config.weekly.clone(),
        config.smtp.clone(),
        metrics.clone(),
    ));
    let drains = tokio_util::task::TaskTracker::new();
    let cut_drains = tokio_util::sync::CancellationToken::new();
    let proxy_state = Arc::new(ProxyState {
        routes: RouteTable::new(&config),
        client,
        recorder,
        max_request_body_bytes: config.server.max_request_body_bytes,
        max_parse_body_bytes: config.server.max_parse_body_bytes,
        max_rewrite_body_bytes: config.server.max_rewrite_body_bytes,
        drain_on_disconnect: config
            .upstream
            .drain_on_disconnect
            .then(|| proxy::tee::Drain {
                tracker: drains.clone(),
                limit: config.upstream.drain_on_disconnect_timeout,
                shutdown: cut_drains.clone(),
            }),
        budgets: budgets.clone(),
        pricer,
        clock,
        forward: forward_mode,
    });
    let limits = proxy::listener::ConnectionLimits::from_config(&config.server, metrics.clone());
    let admin_state = Arc::new(AdminState {
        metrics,
        ready: AtomicBool::new(true),
    });

    let (stop, stopped) = watch::channel(false);
    // The metrics listener outlives the drain, so /readyz can say 503 and scrapes still work.
    let (stop_admin, admin_stopped) = watch::channel(false);
    let proxy_task = tokio::spawn(proxy::serve(
        listeners.proxy,
        proxy_state,
        stopped.clone(),
        config.server.drain_timeout,
        limits,
    ));
    let (stop_alerter, alerter_stopped) = watch::channel(false);
    let alerter_task =
        (!alerter.is_idle()).then(|| tokio::spawn(alerter.clone().run(alerter_stopped)));
    let admin_task = tokio::spawn(admin::serve(
        listeners.metrics,
        admin_state.clone(),
        admin_stopped,
    ));

    shutdown.await;
    let _ = stop_alerter.send(true);
    if let Some(task) = alerter_task {
        let _ = task.await;
    }
    tracing::info!(
        drain_timeout_secs = config.server.drain_timeout.as_secs(),
        "shutting down: no new connections, letting calls in flight finish"
    );
    admin_state.ready.store(false, Ordering::Relaxed);
    let _ = stop.send(true);
    // The proxy task owns the last `ProxyState`, hence the last `Recorder`: once it returns,
    // the writer sees the channel close after the final record.
    if let Err(err) = proxy_task.await {
        tracing::error!(error = %err, "proxy task failed");
    }
    // Calls whose client left but whose usage is still being read hold a Recorder too. Shutdown
    // does not wait for their providers: it records what they read so far.
    drains.close();
    cut_drains.cancel();
    drains.wait().await;
    // A ledger that keeps failing must not hold the process forever: the writer retries for
    // a bounded time after this, then reports what it could not write.
    writer.begin_shutdown();
    let lost = tokio::task::spawn_blocking(move || writer.join())
        .await
        .context("waiting for the ledger writer")?;
    // A PostgreSQL connection and its pool are closed off the async threads too.
    if config.store.url.is_some() {
        let alerter_conn = alerter.take_connection();
        let _ = tokio::task::spawn_blocking(move || drop((alerter_conn, store, alerter))).await;
    }
    if lost > 0 {
        let _ = stop_admin.send(true);
        let _ = admin_task.await;
        anyhow::bail!("the ledger could not be written; {lost} records were not written");
    }
    let _ = stop_admin.send(true);
    let _ = admin_task.await;
    tracing::info!("every record written; bye");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
