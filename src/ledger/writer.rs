//! The ledger writer: a thread that owns the SQLite connection and writes records in batched
//! transactions, fed by [`Recorder`] through a channel. The request path only ever sends on the
//! channel; a locked or failing database costs a retry and a metric, never a client request.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rusqlite::{params, Connection};

use super::db::{Db, Store};
use super::{format_ts, schema, LedgerRecord};
use std::collections::{HashMap, HashSet};

use crate::budget::{Budgets, WorstCase};
use crate::config::{Config, StoreConfig};
use crate::metrics::Metrics;
use crate::pricing::{ProviderPricing, RateTable};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("opening ledger {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("ledger {path}: {source}")]
    Schema {
        path: String,
        source: schema::SchemaError,
    },
    #[error("starting the ledger writer thread: {0}")]
    Thread(std::io::Error),
    #[error("ledger {url}: {source}")]
    Postgres {
        url: String,
        source: super::db::DbError,
    },
}

/// The request path's handle on the ledger. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct Recorder {
    sender: mpsc::Sender<LedgerRecord>,
    metrics: Arc<Metrics>,
    pricer: Arc<Pricer>,
    budgets: Arc<Budgets>,
}

impl Recorder {
    /// Finishes a record and queues it for the writer. A record with its usage read is priced
    /// and counted in the metrics here (a few microseconds), so `/metrics` shows a call by the
    /// time its response ends; one whose usage must be estimated is finished by the writer
    /// thread, off the request path.
    pub fn record(&self, mut record: LedgerRecord) {
        if record.estimate.is_none() {
            finish(&mut record, &self.pricer, &self.metrics, &self.budgets);
        }
        self.metrics.ledger_pending_records.inc();
        if let Err(mpsc::SendError(record)) = self.sender.send(record) {
            // Only after the writer has stopped, which happens once every Recorder is dropped.
            self.budgets.uncount(&record.budget_hits);
            self.metrics.ledger_pending_records.dec();
            self.metrics.ledger_write_errors_total.inc();
            tracing::error!("ledger writer has stopped; record lost");
        }
    }
}

/// Owns the writer thread; `join` waits until every queued record is written.
pub struct WriterHandle {
    thread: thread::JoinHandle<u64>,
    stopping: Arc<AtomicBool>,
}

impl WriterHandle {
    /// Tells the writer that shutdown began: a database that keeps failing is retried for at
    /// most 30 s more, then what is left is reported lost.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Waits for the writer to write what is queued and stop (it stops once every
    /// [`Recorder`] clone is dropped). Returns the number of records it could not write.
    pub fn join(self) -> u64 {
        self.thread.join().unwrap_or_else(|_| {
            tracing::error!("ledger writer thread panicked");
            u64::MAX
        })
    }
}

/// Prices records on the writer thread: the rate table, the providers' pricing facts, and
/// the unpriced models already warned about (each is logged once).
pub struct Pricer {
    pub table: RateTable,
    pub providers: HashMap<String, ProviderPricing>,
    warned: std::sync::Mutex<HashSet<(String, String)>>,
}

/// Resolves a record's estimate, prices it, counts it in the metrics and its budgets, and
/// releases what it reserved: once per record, on the request path or on the writer thread.
pub(super) fn finish(
    record: &mut LedgerRecord,
    pricer: &Pricer,
    metrics: &Metrics,
    budgets: &Budgets,
) {
    record.resolve_estimate();
    pricer.price(record, metrics);
    metrics.observe(record);
    // The cost joins the budget before the reservation leaves it: no moment counts neither.
    record.budget_hits = budgets.observe(record);
    record.reservation = None;
    record.observed = true;
}

impl Pricer {
    pub fn new(config: &Config, table: RateTable) -> Pricer {
        let providers = config
            .providers
            .iter()
            .map(|p| (p.name.clone(), config.provider_pricing(&p.name)))
            .collect();
        Pricer {
            table,
            providers,
            warned: std::sync::Mutex::new(HashSet::new()),
        }
    }

    fn provider(&self, name: &str) -> ProviderPricing {
        match self.providers.get(name) {
            Some(provider) => *provider,
            None => ProviderPricing {
                flavor: crate::usage::Flavor::detect(name, ""),
                markup: 0.0,
                local: false,
            },
        }
    }

    /// What a call can cost at most, for budget reservations: `input_tokens` at the input
    /// price plus `output_tokens` at the output price, and `quantities` (images) at theirs,
    /// markup included. A local provider without a price is free; a model without a price, or
    /// one whose price is per unit the request does not state, is unknown.
    pub fn worst_case(
        &self,
        provider: &str,
        model: Option<&str>,
        date: chrono::NaiveDate,
        input_tokens: u64,
        output_tokens: u64,
        quantities: &crate::usage::Quantities,
    ) -> WorstCase {
        let pricing = self.provider(provider);
        let usage = crate::usage::Usage {
            input_tokens,
            output_tokens,
            ..Default::default()
        };
        let priced = crate::pricing::price_call(
            &self.table,
            provider,
            pricing,
            model,
            date,
            Some(&usage),
            quantities,
            None,
        );
        match priced.cost_nanos {
            Some(nanos) if nanos > 0 => WorstCase::Paid(nanos),
            _ if pricing.local && priced.price_id.is_none() => WorstCase::Free,
            // Priced at zero (per image or per second, and the request does not say how
            // many), or not at all.
            _ => WorstCase::Unknown,
        }
    }

    fn price(&self, record: &mut LedgerRecord, metrics: &Metrics) {
        let provider = self.provider(&record.provider);
        if record.price(&self.table, provider) {
            let model = record.model.clone().unwrap_or_default();
            metrics.observe_unpriced(&record.provider, &model);
            let first = self
                .warned
                .lock()
                .map(|mut warned| warned.insert((record.provider.clone(), model.clone())))
                .unwrap_or(true);
            if first {
                tracing::warn!(provider = %record.provider, model = %model, "no price for this model: its calls are recorded unpriced; add a [[price]] entry and run `meter reprice`");
            }
        }
    }
}

/// Opens (creating if needed) the ledger at `config.path`, migrates it, and starts the writer.
/// The writer's view of the budgets: they are re-read from the ledger every `refresh`.
pub(super) struct BudgetSync {
    pub(super) budgets: Arc<Budgets>,
    refresh: Duration,
    last: std::time::Instant,
}

impl BudgetSync {
    /// Re-reads budget spend when it is due (never with records waiting: they come first).
    pub(super) fn due(&self) -> Option<Duration> {
        (!self.budgets.is_empty()).then(|| self.refresh.saturating_sub(self.last.elapsed()))
    }

    pub(super) fn run(&mut self, db: &mut Db) {
        if let Err(err) = self.budgets.sync(db) {
            tracing::warn!(error = %err, "reading budget spend from the ledger failed; will retry");
        }
        self.last = std::time::Instant::now();
    }
}

/// Opens (creating if needed) the ledger at `config.path`, migrates it, reads the budgets'
/// spend from it, and starts the writer.
pub fn open(
    config: &StoreConfig,
    metrics: Arc<Metrics>,
    pricer: Arc<Pricer>,
    budgets: Arc<Budgets>,
) -> Result<(Recorder, WriterHandle), LedgerError> {
    if let Some(url) = &config.url {
        return open_postgres(config, url, metrics, pricer, budgets);
    }
    let mut conn = open_connection(&config.path, config.busy_timeout)?;
    let rollup = take_over_triggers(&conn).map_err(|source| LedgerError::Open {
        path: config.path.display().to_string(),
        source,
    })?;
    let mut sync = BudgetSync {
        budgets: budgets.clone(),
        refresh: config.refresh,
        last: std::time::Instant::now(),
    };
    if !budgets.is_empty() {
        // Before the first call is admitted: enforcement starts from the ledger's figures.
        let mut db = Db::Sqlite(conn);
        let synced = budgets.sync(&mut db);
        let Db::Sqlite(back) = db else {
            unreachable!("a SQLite connection stays one")
        };
        conn = back;
        synced.map_err(|source| LedgerError::Postgres {
            url: config.path.display().to_string(),
            source,
        })?;
    }
    let (sender, receiver) = mpsc::channel();
    let batch_size = config.batch_size;
    let commit_interval = config.commit_interval;
    let writer_metrics = metrics.clone();
    let stopping = Arc::new(AtomicBool::new(false));
    let writer_stopping = stopping.clone();
    let writer_pricer = pricer.clone();
    let thread = thread::Builder::new()
        .name("meter-ledger".to_string())
        .spawn(move || {
            run(
                Db::Sqlite(conn),
                receiver,
                Batching {
                    size: batch_size,
                    interval: commit_interval,
                    rollup,
                },
                &writer_metrics,
                &writer_pricer,
                &mut sync,
                &writer_stopping,
            )
        })
        .map_err(LedgerError::Thread)?;
    Ok((
        Recorder {
            sender,
            metrics,
            pricer,
            budgets,
        },
        WriterHandle { thread, stopping },
    ))
}

/// The PostgreSQL store of `config`, a pool of at most `store.pool_size` connections.
pub fn postgres_store(config: &StoreConfig, url: &str) -> Result<Store, LedgerError> {
    let display = super::db::redact_url(url);
    let pool = super::db::postgres_pool(
        url,
        config.pool_size,
        config.connect_timeout,
        config.ca_file.as_deref(),
    )
    .map_err(|source| LedgerError::Postgres {
        url: display.clone(),
        source,
    })?;
    Ok(Store::Postgres { pool, display })
}

/// The ledger the configuration names: PostgreSQL when `store.url` is set, else SQLite.
pub fn store(config: &StoreConfig) -> Result<Store, LedgerError> {
    match &config.url {
        Some(url) => postgres_store(config, url),
        None => Ok(Store::Sqlite {
            path: config.path.clone(),
            busy_timeout: config.busy_timeout,
        }),
    }
}

/// Whether opening a PostgreSQL ledger failed because the server could not be reached (as
/// opposed to a schema it refuses, or a bad URL).
pub fn is_unreachable(err: &LedgerError) -> bool {
    matches!(
        err,
        LedgerError::Postgres {
            source: super::db::DbError::Pool(_),
            ..
        }
    )
}

/// The PostgreSQL writer: like [`open`], but the ledger is shared. When the server answers at
/// start, the schema is checked and the budgets read before the proxy opens. When it cannot be
/// reached, meter starts all the same (a sidecar that refuses to start cuts its host's agents
/// off their providers): records queue and spill to the journal as in any outage, the schema is
/// checked at the first connection, and budgets count this meter's own calls until their first
/// read of the ledger. After that an outage only queues and spills.
fn open_postgres(
    config: &StoreConfig,
    url: &str,
    metrics: Arc<Metrics>,
    pricer: Arc<Pricer>,
    budgets: Arc<Budgets>,
) -> Result<(Recorder, WriterHandle), LedgerError> {
    let store = postgres_store(config, url)?;
    let mut sync = BudgetSync {
        budgets: budgets.clone(),
        refresh: config.refresh,
        last: std::time::Instant::now(),
    };
    let db = match store.open() {
        Ok(mut db) => {
            if !budgets.is_empty() {
                budgets
                    .sync(&mut db)
                    .map_err(|source| LedgerError::Postgres {
                        url: store.describe(),
                        source,
                    })?;
            }
            Some(db)
        }
        Err(err) if is_unreachable(&err) => {
            tracing::warn!(error = %err, journal = %config.journal.display(), "PostgreSQL ledger unreachable at start: serving anyway; records wait in memory and the journal until it answers, and budgets count only this meter's calls until then");
            // Read the budgets at the first connection, not a refresh later.
            sync.last = std::time::Instant::now()
                .checked_sub(config.refresh)
                .unwrap_or_else(std::time::Instant::now);
            None
        }
        Err(err) => return Err(err),
    };
    let (sender, receiver) = mpsc::channel();
    let stopping = Arc::new(AtomicBool::new(false));
    let writer_stopping = stopping.clone();
    let writer_metrics = metrics.clone();
    let writer_pricer = pricer.clone();
    let writer = super::postgres::PgWriter {
        store,
        journal_path: config.journal.clone(),
        queue_limit: config.queue_limit,
        batch_size: config.batch_size,
        commit_interval: config.commit_interval,
        keys: super::postgres::KeyMaker::new(&super::postgres::hostname()),
    };
    let thread = thread::Builder::new()
        .name("meter-ledger".to_string())
        .spawn(move || {
            writer.run(
                receiver,
                &writer_metrics,
                &writer_pricer,
                &mut sync,
                &writer_stopping,
                db,
            )
        })
        .map_err(LedgerError::Thread)?;
    Ok((
        Recorder {
            sender,
            metrics,
            pricer,
            budgets,
        },
        WriterHandle { thread, stopping },
    ))
}

/// Opens the ledger file in WAL mode and brings its schema up to date.
pub fn open_connection(path: &Path, busy_timeout: Duration) -> Result<Connection, LedgerError> {
    let display = path.display().to_string();
    let open_err = |source| LedgerError::Open {
        path: display.clone(),
        source,
    };
    let mut conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(busy_timeout).map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    // WAL with synchronous=NORMAL is durable against application crashes; a power loss can drop
    // the last commits but never corrupts the file.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_err)?;
    schema::migrate(&mut conn).map_err(|source| LedgerError::Schema {
        path: display.clone(),
        source,
    })?;
    Ok(conn)
}

/// How long the writer keeps retrying after shutdown began before it gives up on the rest.
pub(super) const SHUTDOWN_RETRY: Duration = Duration::from_secs(30);

/// How records are grouped into transactions: at most `size` each, and (group commit) at most
/// one commit per `interval` while records keep coming.
#[derive(Clone, Copy)]
struct Batching {
    size: usize,
    interval: Duration,
    /// Who keeps `usage_hourly`: the writer, a sum per batch, or the triggers, row by row.
    rollup: Rollup,
}

/// Who keeps the hourly rollup (and `cost_nanos` from `cost_usd`) for the writer's inserts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Rollup {
    /// The writer's connection has triggers off and sums each batch into the rollup itself:
    /// one upsert per (hour, agent, provider, model, route) of the batch instead of a trigger
    /// program per row, the largest part of a row's cost. Other connections (`sqlite3`, `meter
    /// reprice`) keep the triggers.
    Writer,
    /// Someone else's trigger is on `usage`: triggers stay on, so it fires for meter's rows too.
    Triggers,
}

/// Turns triggers off on the writer's connection when only meter's own are on `usage`.
fn take_over_triggers(conn: &Connection) -> rusqlite::Result<Rollup> {
    let mut names = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'usage'")?;
    let names: Vec<String> = names
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if names
        .iter()
        .any(|name| !schema::OWN_TRIGGERS.contains(&name.as_str()))
    {
        return Ok(Rollup::Triggers);
    }
    let off = !conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
        false,
    )?;
    Ok(if off {
        Rollup::Writer
    } else {
        Rollup::Triggers
    })
}

fn run(
    mut db: Db,
    receiver: mpsc::Receiver<LedgerRecord>,
    batching: Batching,
    metrics: &Metrics,
    pricer: &Pricer,
    sync: &mut BudgetSync,
    stopping: &AtomicBool,
) -> u64 {
    let budgets = sync.budgets.clone();
    // Records are resolved (estimate, price) and counted in the metrics as they arrive, also
    // while a failing database is being retried: the metrics keep moving, and what waits in
    // `queue` no longer holds request bodies.
    let mut queue: VecDeque<LedgerRecord> = VecDeque::new();
    let take = |mut record: LedgerRecord, queue: &mut VecDeque<LedgerRecord>| {
        if !record.observed {
            finish(&mut record, pricer, metrics, &budgets);
        }
        queue.push_back(record);
    };
    let mut connected = true;
    let mut backoff = Duration::from_millis(50);
    let mut stop_seen: Option<std::time::Instant> = None;
    let batch_size = batching.size;
    // When the last transaction committed: the next waits until `interval` after it, sleeping
    // (not woken per record: senders never make a system call while the writer sleeps), so a
    // busy proxy pays one transaction per interval instead of one per wake-up.
    let mut last_commit: Option<std::time::Instant> = None;
    loop {
        if queue.is_empty() {
            if !connected {
                return 0;
            }
            // `recv` fails only when every Recorder is gone and nothing is queued. While idle,
            // budgets are re-read from the ledger when due.
            match sync.due() {
                None => match receiver.recv() {
                    Ok(record) => take(record, &mut queue),
                    Err(_) => return 0,
                },
                Some(wait) => match receiver.recv_timeout(wait) {
                    Ok(record) => take(record, &mut queue),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        sync.run(&mut db);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return 0,
                },
            }
        }
        if let Some(last) = last_commit {
            let due = last + batching.interval;
            let now = std::time::Instant::now();
            if connected && queue.len() < batch_size && due > now {
                thread::sleep(due - now);
            }
        }
        while connected {
            match receiver.try_recv() {
                Ok(record) => take(record, &mut queue),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => connected = false,
            }
        }
        let count = queue.len().min(batch_size);
        let batch = queue.make_contiguous();
        let Db::Sqlite(conn) = &mut db else {
            unreachable!("the SQLite writer owns a SQLite connection")
        };
        match write_batch(conn, &batch[..count], batching.rollup) {
            Ok(()) => {
                last_commit = Some(std::time::Instant::now());
                budgets.committed(
                    queue
                        .drain(..count)
                        .flat_map(|r| r.budget_hits)
                        .collect::<Vec<_>>()
                        .iter(),
                );
                metrics.ledger_pending_records.sub(count as i64);
                backoff = Duration::from_millis(50);
                if sync.due().is_some_and(|wait| wait.is_zero()) {
                    sync.run(&mut db);
                }
            }
            Err(err) if is_transient(&err) => {
                metrics.ledger_write_errors_total.inc();
                tracing::warn!(error = %err, records = queue.len(), retry_in_ms = backoff.as_millis() as u64, "ledger write failed; will retry");
                if stopping.load(Ordering::Relaxed) {
                    let since = *stop_seen.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > SHUTDOWN_RETRY {
                        // Nothing more can be done before exit: say exactly what is lost.
                        let mut lost = queue.len() as u64;
                        lost += receiver.try_iter().count() as u64;
                        tracing::error!(
                            records = lost,
                            "shutting down with the ledger still failing; records not written"
                        );
                        return lost;
                    }
                }
                // Wait, but keep taking (and counting) new records meanwhile.
                let deadline = std::time::Instant::now() + backoff;
                while connected {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match receiver.recv_timeout(left) {
                        Ok(record) => take(record, &mut queue),
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        Err(mpsc::RecvTimeoutError::Disconnected) => connected = false,
                    }
                }
                if !connected {
                    thread::sleep(deadline.saturating_duration_since(std::time::Instant::now()));
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(err) => {
                // A fault that retrying cannot cure (a constraint or trigger of the user's, a
                // malformed schema): write the batch row by row and drop only the rows that fail.
                tracing::error!(error = %err, "ledger write failed permanently; writing the batch row by row");
                let mut written = 0usize;
                for record in &batch[..count] {
                    if write_batch(conn, std::slice::from_ref(record), batching.rollup).is_ok() {
                        written += 1;
                        budgets.committed(&record.budget_hits);
                    } else {
                        budgets.uncount(&record.budget_hits);
                        metrics.ledger_write_errors_total.inc();
                    }
                }
                if written < count {
                    tracing::error!(
                        records = count - written,
                        "ledger rows dropped: the database refuses them"
                    );
                }
                queue.drain(..count);
                metrics.ledger_pending_records.sub(count as i64);
            }
        }
    }
}

/// Errors worth retrying: the database is busy or locked, the disk is full or failing.
pub(crate) fn is_transient(err: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    match err {
        rusqlite::Error::SqliteFailure(failure, _) => matches!(
            failure.code,
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::ReadOnly
                | ErrorCode::OutOfMemory
        ),
        _ => false,
    }
}

fn write_batch(
    conn: &mut Connection,
    batch: &[LedgerRecord],
    rollup: Rollup,
) -> rusqlite::Result<()> {
    let stamps: Vec<String> = batch.iter().map(|r| format_ts(&r.ts)).collect();
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO usage (ts, agent, provider, route, model, endpoint, streaming, status,
                input_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens,
                output_tokens, reasoning_tokens, cost_usd, cost_source, price_id, usage_status,
                latency_ms, ttft_ms, key_fingerprint, request_id, tags, error, images, image_size,
                image_quality, audio_input_tokens, audio_output_tokens, audio_seconds,
                web_search_calls, cost_nanos, reported_cost_nanos, table_cost_nanos, blocked_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33,
                ?34, ?35)",
        )?;
        for (record, stamp) in batch.iter().zip(&stamps) {
            let usage = &record.usage;
            let quantities = &record.quantities;
            let cost_usd = record.cost_nanos.map(|nanos| nanos as f64 / 1e9);
            let audio_seconds =
                (quantities.audio_millis > 0).then(|| quantities.audio_millis as f64 / 1000.0);
            insert.execute(params![
                stamp,
                record.agent,
                record.provider,
                record.route,
                record.model,
                record.endpoint,
                record.streaming,
                record.status,
                clamp(usage.input_tokens),
                clamp(usage.cache_read_tokens),
                clamp(usage.cache_write_tokens),
                clamp(usage.cache_write_1h_tokens),
                clamp(usage.output_tokens),
                clamp(usage.reasoning_tokens),
                cost_usd,
                record.cost_source,
                record.price_id,
                record.usage_status.as_str(),
                clamp(record.latency_ms),
                record.ttft_ms.map(clamp),
                record.key_fingerprint,
                record.request_id,
                record.tags,
                record.error,
                clamp(quantities.images),
                quantities.image_size,
                quantities.image_quality,
                clamp(quantities.audio_input_tokens),
                clamp(quantities.audio_output_tokens),
                audio_seconds,
                clamp(quantities.web_search_calls),
                record.cost_nanos,
                record.reported_cost_nanos,
                record.table_cost_nanos,
                record.blocked_by,
            ])?;
        }
    }
    if rollup == Rollup::Writer {
        let mut upsert = tx.prepare_cached(schema::rollup_upsert_sql())?;
        for ((hour, agent, provider, model, route), figures) in rollup_sums(batch, &stamps) {
            let mut values: Vec<&dyn rusqlite::ToSql> =
                vec![&hour, &agent, &provider, &model, &route];
            values.extend(figures.iter().map(|f| f as &dyn rusqlite::ToSql));
            upsert.execute(values.as_slice())?;
        }
    }
    tx.commit()
}

type RollupKey<'a> = (&'a str, &'a str, &'a str, &'a str, &'static str);

/// A batch summed per rollup key, exactly as the `usage_rollup_insert` trigger adds its rows
/// (`schema::ROLLUP_FIGURES`, in that order): hour = the timestamp's first 13 characters, an
/// empty or absent model is `(unknown)`.
fn rollup_sums<'a>(
    batch: &'a [LedgerRecord],
    stamps: &'a [String],
) -> HashMap<RollupKey<'a>, [i64; ROLLUP_WIDTH]> {
    let mut sums: HashMap<RollupKey<'a>, [i64; ROLLUP_WIDTH]> = HashMap::new();
    for (record, stamp) in batch.iter().zip(stamps) {
        let key: RollupKey<'a> = (
            stamp.get(..13).unwrap_or(stamp),
            &record.agent,
            &record.provider,
            match record.model.as_deref() {
                None | Some("") => "(unknown)",
                Some(model) => model,
            },
            record.route,
        );
        let figures = rollup_figures(record);
        let total = sums.entry(key).or_insert([0; ROLLUP_WIDTH]);
        for (t, f) in total.iter_mut().zip(figures) {
            *t = t.saturating_add(f);
        }
    }
    sums
}

use schema::ROLLUP_WIDTH;

/// One row's figures, in `schema::ROLLUP_FIGURES` order.
fn rollup_figures(record: &LedgerRecord) -> [i64; ROLLUP_WIDTH] {
    use crate::usage::UsageStatus;
    let usage = &record.usage;
    [
        1,
        i64::from(record.status >= 400),
        clamp(usage.input_tokens),
        clamp(usage.cache_read_tokens),
        clamp(usage.cache_write_tokens),
        clamp(usage.cache_write_1h_tokens),
        clamp(usage.output_tokens),
        clamp(usage.reasoning_tokens),
        record.cost_nanos.unwrap_or(0),
        i64::from(record.cost_nanos.is_none() && record.usage_status != UsageStatus::Missing),
        i64::from(record.usage_status == UsageStatus::Estimated),
        i64::from(record.usage_status == UsageStatus::Missing),
    ]
}

/// SQLite integers are i64; token counts beyond that are not real, but must not wrap negative.
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::UsageStatus;
    use chrono::TimeZone;

    fn record(i: i64) -> LedgerRecord {
        let ts = chrono::Utc
            .with_ymd_and_hms(2026, 11, 25, (i % 3) as u32, 59, 59)
            .single()
            .expect("a valid time");
        let mut record = LedgerRecord::new(ts, ["a", "b"][(i % 2) as usize], "openai", "direct");
        record.model = match i % 4 {
            0 => None,
            1 => Some(String::new()),
            _ => Some(format!("m{}", i % 3)),
        };
        record.status = [200, 429, 500, 302][(i % 4) as usize];
        record.usage.input_tokens = 10 * i as u64;
        record.usage.cache_read_tokens = i as u64;
        record.usage.cache_write_tokens = 2 * i as u64;
        record.usage.cache_write_1h_tokens = 3 * i as u64;
        record.usage.output_tokens = 5 * i as u64;
        record.usage.reasoning_tokens = i as u64 / 2;
        record.cost_nanos = (i % 5 != 0).then_some(1_000 * i);
        record.usage_status = [
            UsageStatus::Reported,
            UsageStatus::Estimated,
            UsageStatus::Missing,
        ][(i % 3) as usize];
        record
    }

    /// The rollup summed per batch by the writer equals the rollup recomputed from the rows (the
    /// migration's own query, what the triggers keep), and the triggers stay on for everyone else.
    #[test]
    fn writer_rollup_matches_the_rows() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("ledger.db");
        let mut conn = open_connection(&path, Duration::from_secs(5)).expect("ledger opens");
        assert_eq!(take_over_triggers(&conn).expect("triggers"), Rollup::Writer);
        let batch: Vec<LedgerRecord> = (0..40).map(record).collect();
        write_batch(&mut conn, &batch[..25], Rollup::Writer).expect("first batch");
        write_batch(&mut conn, &batch[25..], Rollup::Writer).expect("second batch");
        // A row by hand on another connection goes through the triggers.
        let other = Connection::open(&path).expect("second connection");
        other
            .execute(
                "INSERT INTO usage (ts, agent, provider, route, model, endpoint, streaming, status, usage_status, cost_usd)
                 VALUES ('2026-11-25T01:00:00.000Z', 'a', 'openai', 'direct', 'm1', 'other', 0, 200, 'reported', 0.5)",
                [],
            )
            .expect("insert by hand");
        let columns = schema::rollup_columns();
        let read = |sql: &str| -> Vec<Vec<rusqlite::types::Value>> {
            let mut statement = conn.prepare(sql).expect("query");
            let width = statement.column_count();
            statement
                .query_map([], |row| {
                    (0..width)
                        .map(|i| row.get::<_, rusqlite::types::Value>(i))
                        .collect()
                })
                .expect("rows")
                .collect::<rusqlite::Result<_>>()
                .expect("rows")
        };
        let kept = read(&format!(
            "SELECT hour, agent, provider, model, route, {} FROM usage_hourly ORDER BY 1, 2, 3, 4, 5",
            columns.join(", ")
        ));
        let recomputed = read(&format!(
            "SELECT substr(ts, 1, 13), agent, provider, coalesce(nullif(model, ''), '(unknown)'), route, {}
             FROM usage GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
            schema::rollup_sum_expressions().join(", ")
        ));
        assert!(kept.len() >= 6, "several groups: {}", kept.len());
        assert_eq!(kept, recomputed);
        let by_hand: i64 = conn
            .query_row(
                "SELECT cost_nanos FROM usage WHERE cost_usd = 0.5",
                [],
                |row| row.get(0),
            )
            .expect("the row by hand");
        assert_eq!(
            by_hand, 500_000_000,
            "the cost trigger ran for the row by hand"
        );
    }

    /// Someone else's trigger on `usage` keeps every trigger on for the writer too.
    #[test]
    fn a_foreign_trigger_keeps_the_triggers_on() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("ledger.db");
        let mut conn = open_connection(&path, Duration::from_secs(5)).expect("ledger opens");
        conn.execute_batch(
            "CREATE TABLE seen (n INTEGER);
             CREATE TRIGGER mine AFTER INSERT ON usage BEGIN INSERT INTO seen VALUES (NEW.id); END;",
        )
        .expect("a trigger of the user's");
        assert_eq!(
            take_over_triggers(&conn).expect("triggers"),
            Rollup::Triggers
        );
        let batch: Vec<LedgerRecord> = (0..7).map(record).collect();
        write_batch(&mut conn, &batch, Rollup::Triggers).expect("batch");
        let (seen, requests): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT count(*) FROM seen), (SELECT sum(requests) FROM usage_hourly)",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .expect("counts");
        assert_eq!((seen, requests), (7, 7));
    }
}
