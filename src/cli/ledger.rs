//! `meter ledger migrate --to postgres://...`: copies a SQLite ledger (`store.path`, `--db`)
//! into a PostgreSQL ledger, row for row. Each copied row's idempotency key names the file and
//! its row id, so running it again (after an interruption, say) copies only what is missing.

use anyhow::Context as _;
use sha2::Digest as _;

use super::{print, Cli, Failure};
use crate::args;
use crate::ledger::db::{Db, Value};
use crate::ledger::postgres::{insert_rows, COLUMNS};

#[derive(Debug, clap::Subcommand)]
pub enum LedgerCommand {
    /// Copy the SQLite ledger (store.path or --db) into a PostgreSQL ledger
    Migrate(MigrateArgs),
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The PostgreSQL ledger: postgres://user[:password]@host[:port]/database[?sslmode=require]
    #[arg(long, value_name = "URL")]
    pub to: String,
}

/// Rows read and written per transaction.
const BATCH: i64 = 5_000;

pub fn run(cli: &Cli, command: &LedgerCommand) -> Result<(), Failure> {
    match command {
        LedgerCommand::Migrate(args) => migrate(cli, args),
    }
}

fn migrate(cli: &Cli, args: &MigrateArgs) -> Result<(), Failure> {
    let config = cli.load_config()?;
    let mut store_config = config.store.clone();
    if !args.to.starts_with("postgres://") && !args.to.starts_with("postgresql://") {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--to: must be a postgres:// URL, not {:?}",
            crate::ledger::db::redact_url(&args.to)
        )));
    }
    store_config.url = None;
    let mut source = super::open_ledger(&crate::config::Config {
        store: store_config.clone(),
        ..config.clone()
    })?;
    let target_store = crate::ledger::writer::postgres_store(&store_config, &args.to)
        .map_err(|e| Failure::Usage(e.into()))?;
    let mut target = target_store
        .open()
        .map_err(|e| Failure::Runtime(e.into()))?;
    let copied = copy(&mut source, &mut target, &config.store.path)
        .with_context(|| {
            format!(
                "copying {} into {}",
                config.store.path.display(),
                target_store.describe()
            )
        })
        .map_err(Failure::Runtime)?;
    print(&format!(
        "{} rows read from {}: {} copied, {} already in {}; {} alert records copied\n",
        copied.rows,
        config.store.path.display(),
        copied.inserted,
        copied.rows - copied.inserted,
        target_store.describe(),
        copied.alerts,
    ))
}

/// What a copy did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub rows: u64,
    pub inserted: u64,
    pub alerts: u64,
}

/// Copies every `usage` row of `source` (SQLite) into `target`, in id order, and the alert
/// outbox (so thresholds already alerted are not alerted again).
pub fn copy(source: &mut Db, target: &mut Db, path: &std::path::Path) -> anyhow::Result<Copied> {
    // The file's identity in the keys: its path and its first row, so two hosts' ledgers (same
    // row ids) never collide, and a second run on the same file finds its keys.
    let first = source
        .query_opt("SELECT min(id), min(ts) FROM usage", &[])?
        .map(|row| format!("{:?}", row.values()))
        .unwrap_or_default();
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let digest = sha2::Sha256::digest(format!("{}\n{first}", canonical.display()).as_bytes());
    let file_id: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let columns: Vec<&str> = COLUMNS
        .iter()
        .copied()
        .filter(|c| *c != "record_key")
        .collect();
    let select = format!(
        "SELECT {}, record_key, id FROM usage WHERE id > ?1 ORDER BY id LIMIT ?2",
        columns.join(", ")
    );
    let mut copied = Copied::default();
    let mut after = 0i64;
    loop {
        let rows = source.query(&select, &args![after, BATCH])?;
        let Some(last) = rows.last() else { break };
        after = last.get::<i64>(columns.len() + 1)?;
        let values: Vec<Vec<Value>> = rows
            .iter()
            .map(|row| {
                let id: i64 = row.get(columns.len() + 1)?;
                let key: Option<String> = row.get(columns.len())?;
                let mut values = row.values()[..columns.len()].to_vec();
                values.push(Value::Text(
                    key.unwrap_or_else(|| format!("sqlite-{file_id}-{id}")),
                ));
                Ok(values)
            })
            .collect::<anyhow::Result<_>>()?;
        copied.rows += values.len() as u64;
        copied.inserted += insert_rows(target, &values)?;
    }
    let outbox = "kind, subject_key, period, detail, created_at, recipients, subject, body_text,
                  body_html, status, attempts, next_attempt, sent_at, last_error";
    let alerts = source.query(
        &format!("SELECT {outbox} FROM alert_outbox ORDER BY id"),
        &[],
    )?;
    target.transaction(|tx| {
        for row in &alerts {
            copied.alerts += tx.execute(
                &format!(
                    "INSERT INTO alert_outbox ({outbox}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,
                     ?9, ?10, ?11, ?12, ?13, ?14) ON CONFLICT DO NOTHING"
                ),
                row.values(),
            )?;
        }
        Ok(())
    })?;
    Ok(copied)
}
