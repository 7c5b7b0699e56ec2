//! The PostgreSQL ledger writer (`store.url`): a thread fed by the same [`super::Recorder`]
//! channel as the SQLite writer, writing batches of rows with an idempotency key each
//! (`record_key`, `ON CONFLICT DO NOTHING`), so a batch retried after a timeout whose commit
//! did land is not written twice. While PostgreSQL is unreachable, records wait in memory up
//! to `store.queue_limit`, then the oldest spill to a local SQLite journal; when PostgreSQL
//! returns, the journal is replayed first, in order, then the queue. Nothing here is on the
//! request path: an outage costs memory, a journal file and metrics, never a client request.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::db::{Db, DbError, Store, Value};
use super::writer::{finish, BudgetSync, Pricer, SHUTDOWN_RETRY};
use super::{format_ts, LedgerRecord};
use crate::budget::BudgetHit;
use crate::metrics::Metrics;

/// The `usage` columns a record fills, in [`row_values`] order.
pub const COLUMNS: &[&str] = &[
    "ts",
    "agent",
    "provider",
    "route",
    "model",
    "endpoint",
    "streaming",
    "status",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cost_source",
    "price_id",
    "usage_status",
    "latency_ms",
    "ttft_ms",
    "key_fingerprint",
    "request_id",
    "tags",
    "error",
    "images",
    "image_size",
    "image_quality",
    "audio_input_tokens",
    "audio_output_tokens",
    "audio_seconds",
    "web_search_calls",
    "cost_nanos",
    "reported_cost_nanos",
    "table_cost_nanos",
    "blocked_by",
    "record_key",
];

/// Rows per INSERT statement (PostgreSQL takes at most 65,535 parameters in one).
const ROWS_PER_STATEMENT: usize = 1_000;

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A record as the values of [`COLUMNS`].
pub fn row_values(record: &LedgerRecord, key: &str) -> Vec<Value> {
    let usage = &record.usage;
    let quantities = &record.quantities;
    let audio_seconds =
        (quantities.audio_millis > 0).then(|| quantities.audio_millis as f64 / 1000.0);
    crate::args![
        format_ts(&record.ts),
        record.agent.as_str(),
        record.provider.as_str(),
        record.route,
        record.model.as_deref(),
        record.endpoint,
        record.streaming,
        record.status,
        clamp(usage.input_tokens),
        clamp(usage.cache_read_tokens),
        clamp(usage.cache_write_tokens),
        clamp(usage.cache_write_1h_tokens),
        clamp(usage.output_tokens),
        clamp(usage.reasoning_tokens),
        record.cost_nanos.map(|nanos| nanos as f64 / 1e9),
        record.cost_source,
        record.price_id.as_deref(),
        record.usage_status.as_str(),
        clamp(record.latency_ms),
        record.ttft_ms.map(clamp),
        record.key_fingerprint.as_deref(),
        record.request_id.as_deref(),
        record.tags.as_deref(),
        record.error,
        clamp(quantities.images),
        quantities.image_size.as_deref(),
        quantities.image_quality.as_deref(),
        clamp(quantities.audio_input_tokens),
        clamp(quantities.audio_output_tokens),
        audio_seconds,
        clamp(quantities.web_search_calls),
        record.cost_nanos,
        record.reported_cost_nanos,
        record.table_cost_nanos,
        record.blocked_by.as_deref(),
        key,
    ]
    .to_vec()
}

/// Inserts rows (each the values of [`COLUMNS`]) in one transaction; a row whose
/// `record_key` is already in the ledger is skipped. Returns the rows inserted.
pub fn insert_rows(db: &mut Db, rows: &[Vec<Value>]) -> Result<u64, DbError> {
    db.transaction(|tx| {
        let mut inserted = 0;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let width = COLUMNS.len();
            let tuples: Vec<String> = (0..chunk.len())
                .map(|r| {
                    let params: Vec<String> =
                        (1..=width).map(|c| format!("?{}", r * width + c)).collect();
                    format!("({})", params.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO usage ({}) VALUES {} ON CONFLICT DO NOTHING",
                COLUMNS.join(", "),
                tuples.join(", ")
            );
            let values: Vec<Value> = chunk.iter().flatten().cloned().collect();
            inserted += tx.execute(&sql, &values)?;
        }
        Ok(inserted)
    })
}

/// Idempotency keys: unique per record across meters and restarts (the host, the process,
/// the moment it started, a counter). Made once, when a record reaches the writer, and kept
/// through every retry and the journal.
pub struct KeyMaker {
    prefix: String,
    next: u64,
}

impl KeyMaker {
    pub fn new(instance: &str) -> KeyMaker {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        KeyMaker {
            prefix: format!("{instance}-{}-{started:x}", std::process::id()),
            next: 0,
        }
    }

    pub fn next_key(&mut self) -> String {
        self.next += 1;
        format!("{}-{:x}", self.prefix, self.next)
    }
}

/// The host's name (for keys and the metrics' `instance`), from the kernel.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "meter".to_string())
}

/// The spill journal: a local SQLite file of rows not yet in PostgreSQL, in arrival order.
pub struct Journal {
    conn: rusqlite::Connection,
    path: PathBuf,
    /// Rows in the file.
    pub len: u64,
}

impl Journal {
    /// Opens the journal (creating it); rows left by an earlier run are replayed first.
    pub fn open(path: &Path) -> Result<Journal, DbError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY, row TEXT NOT NULL)",
        )?;
        let len: i64 = conn.query_row("SELECT count(*) FROM journal", [], |r| r.get(0))?;
        Ok(Journal {
            conn,
            path: path.to_path_buf(),
            len: len.max(0) as u64,
        })
    }

    /// Appends rows at the end, in one transaction; returns their sequence numbers' last.
    fn append(&mut self, rows: &[Vec<Value>]) -> Result<i64, DbError> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT INTO journal (row) VALUES (?1)")?;
            for row in rows {
                let text = serde_json::to_string(row).map_err(|err| DbError::Type {
                    column: 0,
                    expected: "a row",
                    found: err.to_string(),
                })?;
                insert.execute([text])?;
            }
        }
        let last: i64 = tx.query_row("SELECT coalesce(max(seq), 0) FROM journal", [], |r| {
            r.get(0)
        })?;
        tx.commit()?;
        self.len += rows.len() as u64;
        Ok(last)
    }

    /// The oldest rows, with their sequence numbers.
    fn oldest(&self, limit: usize) -> Result<Vec<(i64, Vec<Value>)>, DbError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT seq, row FROM journal ORDER BY seq LIMIT ?1")?;
        let rows = statement.query_map([limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, text) = row?;
            match serde_json::from_str::<Vec<Value>>(&text) {
                Ok(values) if values.len() == COLUMNS.len() => out.push((seq, values)),
                // A row this build cannot read (a damaged file): kept out of the ledger, and
                // said once, not retried forever.
                _ => {
                    tracing::error!(seq, journal = %self.path.display(), "unreadable journal row skipped");
                    out.push((seq, Vec::new()));
                }
            }
        }
        Ok(out)
    }

    /// Removes the rows up to `seq` (they are in PostgreSQL).
    fn remove_through(&mut self, seq: i64) -> Result<(), DbError> {
        let removed = self
            .conn
            .execute("DELETE FROM journal WHERE seq <= ?1", [seq])?;
        self.len = self.len.saturating_sub(removed as u64);
        Ok(())
    }
}

/// What the PostgreSQL writer needs besides the channel.
pub struct PgWriter {
    pub store: Store,
    pub journal_path: PathBuf,
    pub queue_limit: usize,
    pub batch_size: usize,
    pub commit_interval: Duration,
    pub keys: KeyMaker,
}

/// A record waiting for PostgreSQL: its row (key included) and what it added to budgets.
struct Pending {
    row: Vec<Value>,
    hits: Vec<BudgetHit>,
}

impl PgWriter {
    /// Writes what arrives on `receiver` until every sender is gone and nothing is left;
    /// returns the records it could not write (only when shutdown outlasts its retries).
    pub(super) fn run(
        self,
        receiver: mpsc::Receiver<LedgerRecord>,
        metrics: &Metrics,
        pricer: &Pricer,
        sync: &mut BudgetSync,
        stopping: &AtomicBool,
        mut db: Option<Db>,
    ) -> u64 {
        let PgWriter {
            store,
            journal_path,
            queue_limit,
            batch_size,
            commit_interval,
            mut keys,
        } = self;
        let budgets = sync.budgets.clone();
        let mut queue: VecDeque<Pending> = VecDeque::new();
        // Budget hits of spilled records, by their journal sequence number: committed when the
        // journal row reaches PostgreSQL.
        let mut spilled_hits: VecDeque<(i64, Vec<BudgetHit>)> = VecDeque::new();
        let mut journal = match Journal::open(&journal_path) {
            Ok(journal) => Some(journal),
            Err(err) => {
                tracing::error!(error = %err, journal = %journal_path.display(), "the spill journal cannot be opened; records wait in memory only");
                None
            }
        };
        if let Some(journal) = &journal {
            metrics.ledger_journal_records.set(journal.len as i64);
            // Left by an earlier run: pending here until replayed.
            metrics.ledger_pending_records.add(journal.len as i64);
            if journal.len > 0 {
                tracing::info!(
                    records = journal.len,
                    "replaying the spill journal into PostgreSQL"
                );
            }
        }
        let mut connected = true;
        let mut backoff = Duration::from_millis(50);
        let mut stop_seen: Option<Instant> = None;
        let mut last_commit: Option<Instant> = None;
        let mut take = |mut record: LedgerRecord, queue: &mut VecDeque<Pending>| {
            if !record.observed {
                finish(&mut record, pricer, metrics, &budgets);
            }
            let key = keys.next_key();
            queue.push_back(Pending {
                row: row_values(&record, &key),
                hits: std::mem::take(&mut record.budget_hits),
            });
        };
        loop {
            let journal_len = journal.as_ref().map_or(0, |j| j.len);
            if queue.is_empty() && journal_len == 0 {
                if !connected {
                    return 0;
                }
                let received = match sync.due() {
                    None => receiver.recv().map_err(|_| true),
                    Some(wait) => receiver
                        .recv_timeout(wait)
                        .map_err(|e| matches!(e, mpsc::RecvTimeoutError::Disconnected)),
                };
                match received {
                    Ok(record) => take(record, &mut queue),
                    Err(true) => return 0,
                    Err(false) => {
                        if spilled_hits.is_empty() {
                            if let Some(conn) = connect(&store, &mut db) {
                                sync.run(conn);
                            }
                        }
                        continue;
                    }
                }
            }
            if let Some(last) = last_commit {
                let due = last + commit_interval;
                let now = Instant::now();
                // Replaying the journal goes at full speed; new records wait for the interval.
                if connected && journal_len == 0 && queue.len() < batch_size && due > now {
                    std::thread::sleep(due - now);
                }
            }
            while connected {
                match receiver.try_recv() {
                    Ok(record) => take(record, &mut queue),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => connected = false,
                }
            }
            // Past the bound, the oldest queued records go to the journal's end (everything in
            // the journal is older than everything queued: order holds).
            if queue.len() > queue_limit {
                if let Some(journal) = journal.as_mut() {
                    let spill = queue.len() - queue_limit / 2;
                    let rows: Vec<Vec<Value>> =
                        queue.iter().take(spill).map(|p| p.row.clone()).collect();
                    match journal.append(&rows) {
                        Ok(last_seq) => {
                            let hits: Vec<BudgetHit> =
                                queue.drain(..spill).flat_map(|p| p.hits).collect();
                            spilled_hits.push_back((last_seq, hits));
                            metrics.ledger_journal_records.set(journal.len as i64);
                            tracing::warn!(
                                records = spill,
                                journal = journal.len,
                                "PostgreSQL unreachable: records spilled to the local journal"
                            );
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "spilling to the journal failed; records stay in memory")
                        }
                    }
                }
            }
            let Some(conn) = connect(&store, &mut db) else {
                metrics.ledger_write_errors_total.inc();
                if let Some(lost) = give_up(
                    stopping,
                    connected,
                    &mut stop_seen,
                    &mut queue,
                    &mut journal,
                    &receiver,
                ) {
                    return lost;
                }
                wait_receiving(&receiver, &mut queue, &mut connected, backoff, &mut take);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            };
            // The journal first: it holds the oldest records.
            let journal_len = journal.as_ref().map_or(0, |j| j.len);
            let result = if journal_len > 0 {
                let journal = journal.as_mut().expect("a journal with rows is open");
                replay(
                    conn,
                    journal,
                    batch_size,
                    &mut spilled_hits,
                    &budgets,
                    metrics,
                )
            } else {
                let count = queue.len().min(batch_size);
                let rows: Vec<Vec<Value>> =
                    queue.iter().take(count).map(|p| p.row.clone()).collect();
                insert_rows(conn, &rows).map(|_| {
                    let hits: Vec<BudgetHit> = queue.drain(..count).flat_map(|p| p.hits).collect();
                    budgets.committed(hits.iter());
                    metrics.ledger_pending_records.sub(count as i64);
                })
            };
            match result {
                Ok(()) => {
                    last_commit = Some(Instant::now());
                    backoff = Duration::from_millis(50);
                    // Not while the journal replays: its replayed rows are in the ledger's sums
                    // but their budget hits are still counted here until its last row lands,
                    // and would count twice (a false alert, a false 429).
                    if spilled_hits.is_empty() && sync.due().is_some_and(|wait| wait.is_zero()) {
                        sync.run(conn);
                    }
                }
                Err(err) if err.is_transient() => {
                    metrics.ledger_write_errors_total.inc();
                    tracing::warn!(error = %err, queued = queue.len(), retry_in_ms = backoff.as_millis() as u64, "PostgreSQL ledger write failed; will retry");
                    // The connection may be broken: take a fresh one next time.
                    db = None;
                    if let Some(lost) = give_up(
                        stopping,
                        connected,
                        &mut stop_seen,
                        &mut queue,
                        &mut journal,
                        &receiver,
                    ) {
                        return lost;
                    }
                    wait_receiving(&receiver, &mut queue, &mut connected, backoff, &mut take);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(err) => {
                    // A fault retrying cannot cure (a constraint of the user's): row by row,
                    // dropping only the rows the database refuses. The journal is never the
                    // source here: its rows were written by this code and are replayed as is.
                    tracing::error!(error = %err, "PostgreSQL ledger write failed permanently; writing the batch row by row");
                    let count = queue.len().min(batch_size);
                    for pending in queue.drain(..count) {
                        if insert_rows(conn, std::slice::from_ref(&pending.row)).is_ok() {
                            budgets.committed(pending.hits.iter());
                        } else {
                            budgets.uncount(&pending.hits);
                            metrics.ledger_write_errors_total.inc();
                            tracing::error!("ledger row dropped: the database refuses it");
                        }
                    }
                    metrics.ledger_pending_records.sub(count as i64);
                }
            }
        }
    }
}

/// Once shutdown began and every recorder is gone: with a journal, what is queued moves to it
/// (replayed at the next start) at once; without one, retries go on for [`SHUTDOWN_RETRY`] and
/// what is left then is lost. `None`: keep going.
fn give_up(
    stopping: &AtomicBool,
    connected: bool,
    stop_seen: &mut Option<Instant>,
    queue: &mut VecDeque<Pending>,
    journal: &mut Option<Journal>,
    receiver: &mpsc::Receiver<LedgerRecord>,
) -> Option<u64> {
    if !stopping.load(Ordering::Relaxed) {
        return None;
    }
    let since = *stop_seen.get_or_insert_with(Instant::now);
    let out_of_time = since.elapsed() > SHUTDOWN_RETRY;
    if connected && !out_of_time {
        return None;
    }
    if let Some(journal) = journal.as_mut() {
        if connected {
            // Still receiving after the retry time: keep going, the journal takes the rest.
            return None;
        }
        let rows: Vec<Vec<Value>> = queue.drain(..).map(|p| p.row).collect();
        if rows.is_empty() {
            return Some(0);
        }
        return match journal.append(&rows) {
            Ok(_) => {
                tracing::warn!(
                    records = rows.len(),
                    journal = journal.len,
                    "PostgreSQL unreachable at shutdown: records kept in the journal for the next start"
                );
                Some(0)
            }
            Err(err) => {
                tracing::error!(error = %err, records = rows.len(), "shutting down: records could not be spilled and are lost");
                Some(rows.len() as u64)
            }
        };
    }
    if !out_of_time {
        return None;
    }
    let lost = queue.len() as u64 + receiver.try_iter().count() as u64;
    tracing::error!(
        records = lost,
        "shutting down with the PostgreSQL ledger still failing; records not written"
    );
    Some(lost)
}

/// A connection from the pool, kept across batches; `None` while PostgreSQL is unreachable.
fn connect<'a>(store: &Store, db: &'a mut Option<Db>) -> Option<&'a mut Db> {
    if db.is_none() {
        match store.open() {
            Ok(conn) => *db = Some(conn),
            Err(err) => {
                tracing::warn!(error = %err, "PostgreSQL ledger unreachable");
                return None;
            }
        }
    }
    db.as_mut()
}

/// Waits `backoff`, taking (and counting) new records meanwhile.
fn wait_receiving(
    receiver: &mpsc::Receiver<LedgerRecord>,
    queue: &mut VecDeque<Pending>,
    connected: &mut bool,
    backoff: Duration,
    take: &mut impl FnMut(LedgerRecord, &mut VecDeque<Pending>),
) {
    let deadline = Instant::now() + backoff;
    while *connected {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match receiver.recv_timeout(left) {
            Ok(record) => take(record, queue),
            Err(mpsc::RecvTimeoutError::Timeout) => return,
            Err(mpsc::RecvTimeoutError::Disconnected) => *connected = false,
        }
    }
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
}

/// Replays the journal's oldest rows into PostgreSQL, then removes them from the journal. A
/// crash between the two replays them again at the next start: their keys make that a no-op.
fn replay(
    db: &mut Db,
    journal: &mut Journal,
    batch_size: usize,
    spilled_hits: &mut VecDeque<(i64, Vec<BudgetHit>)>,
    budgets: &crate::budget::Budgets,
    metrics: &Metrics,
) -> Result<(), DbError> {
    let rows = journal.oldest(batch_size)?;
    let Some(last) = rows.last().map(|(seq, _)| *seq) else {
        journal.len = 0;
        return Ok(());
    };
    let values: Vec<Vec<Value>> = rows
        .into_iter()
        .map(|(_, row)| row)
        .filter(|row| !row.is_empty())
        .collect();
    let count = values.len();
    insert_rows(db, &values)?;
    journal.remove_through(last)?;
    while spilled_hits.front().is_some_and(|(seq, _)| *seq <= last) {
        if let Some((_, hits)) = spilled_hits.pop_front() {
            budgets.committed(hits.iter());
        }
    }
    metrics.ledger_pending_records.sub(count as i64);
    metrics.ledger_journal_records.set(journal.len as i64);
    Ok(())
}
