//! The ledger schema: an ordered list of migrations, applied in place on start and tracked in
//! `PRAGMA user_version`. Never edit a shipped migration; append a new one.

use rusqlite::Connection;

/// Each entry moves the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // v1: the usage table of SPEC §5.
    r#"
    CREATE TABLE usage (
        id                    INTEGER PRIMARY KEY,
        ts                    TEXT    NOT NULL,
        agent                 TEXT    NOT NULL DEFAULT 'default',
        provider              TEXT    NOT NULL,
        route                 TEXT    NOT NULL,
        model                 TEXT,
        endpoint              TEXT    NOT NULL DEFAULT 'other',
        streaming             INTEGER NOT NULL DEFAULT 0,
        status                INTEGER NOT NULL,
        input_tokens          INTEGER NOT NULL DEFAULT 0,
        cache_read_tokens     INTEGER NOT NULL DEFAULT 0,
        cache_write_tokens    INTEGER NOT NULL DEFAULT 0,
        cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens         INTEGER NOT NULL DEFAULT 0,
        reasoning_tokens      INTEGER NOT NULL DEFAULT 0,
        cost_usd              REAL,
        cost_source           TEXT,
        price_id              TEXT,
        usage_status          TEXT    NOT NULL DEFAULT 'reported',
        latency_ms            INTEGER,
        ttft_ms               INTEGER,
        key_fingerprint       TEXT,
        request_id            TEXT,
        tags                  TEXT,
        error                 TEXT
    );
    CREATE INDEX usage_ts ON usage (ts);
    CREATE INDEX usage_agent_ts ON usage (agent, ts);
    "#,
    // v2: quantities beyond tokens, and exact money. `cost_nanos` (1e-9 USD, an integer) is the
    // figure meter sums; `cost_usd` mirrors it for people using sqlite3. A row inserted by hand
    // with only `cost_usd` gets its `cost_nanos` from the trigger.
    r#"
    ALTER TABLE usage ADD COLUMN images INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage ADD COLUMN image_size TEXT;
    ALTER TABLE usage ADD COLUMN image_quality TEXT;
    ALTER TABLE usage ADD COLUMN audio_input_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage ADD COLUMN audio_output_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage ADD COLUMN audio_seconds REAL;
    ALTER TABLE usage ADD COLUMN web_search_calls INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage ADD COLUMN cost_nanos INTEGER;
    ALTER TABLE usage ADD COLUMN reported_cost_nanos INTEGER;
    CREATE TRIGGER usage_cost_nanos_from_usd AFTER INSERT ON usage
    WHEN NEW.cost_nanos IS NULL AND NEW.cost_usd IS NOT NULL
    BEGIN
        UPDATE usage SET cost_nanos = CAST(round(NEW.cost_usd * 1e9) AS INTEGER) WHERE id = NEW.id;
    END;
    CREATE TRIGGER usage_cost_nanos_from_usd_update AFTER UPDATE OF cost_usd ON usage
    WHEN NEW.cost_nanos IS OLD.cost_nanos AND NEW.cost_usd IS NOT OLD.cost_usd
    BEGIN
        UPDATE usage SET cost_nanos = CAST(round(NEW.cost_usd * 1e9) AS INTEGER) WHERE id = NEW.id;
    END;
    UPDATE usage SET cost_nanos = CAST(round(cost_usd * 1e9) AS INTEGER)
    WHERE cost_nanos IS NULL AND cost_usd IS NOT NULL;
    "#,
    // v3: what the rate table says a call cost, kept beside a provider-reported cost so that a
    // router's markup can be shown; and an index for `prices check`.
    r#"
    ALTER TABLE usage ADD COLUMN table_cost_nanos INTEGER;
    CREATE INDEX usage_unpriced ON usage (provider, model) WHERE cost_nanos IS NULL;
    "#,
];

/// The schema version this build writes: the plain migrations, the rollup, the alerts, the
/// failed-calls index.
pub const VERSION: i64 = MIGRATIONS.len() as i64 + 4;

/// The figures the hourly rollup keeps, as (column, expression over a `usage` row `R`).
const ROLLUP_FIGURES: &[(&str, &str)] = &[
    ("requests", "1"),
    ("errors", "(R.status >= 400)"),
    ("input_tokens", "R.input_tokens"),
    ("cache_read_tokens", "R.cache_read_tokens"),
    ("cache_write_tokens", "R.cache_write_tokens"),
    ("cache_write_1h_tokens", "R.cache_write_1h_tokens"),
    ("output_tokens", "R.output_tokens"),
    ("reasoning_tokens", "R.reasoning_tokens"),
    ("cost_nanos", "coalesce(R.cost_nanos, 0)"),
    (
        "unpriced_requests",
        "(R.cost_nanos IS NULL AND R.usage_status != 'missing')",
    ),
    ("estimated_requests", "(R.usage_status = 'estimated')"),
    ("missing_requests", "(R.usage_status = 'missing')"),
];

/// The names of meter's own triggers on `usage`: the ledger writer may take their work over
/// (see `ledger::writer`) only when no other trigger is on the table.
pub const OWN_TRIGGERS: &[&str] = &[
    "usage_cost_nanos_from_usd",
    "usage_cost_nanos_from_usd_update",
    "usage_rollup_insert",
    "usage_rollup_delete",
    "usage_rollup_update",
];

/// How many figures the rollup keeps per row.
pub const ROLLUP_WIDTH: usize = ROLLUP_FIGURES.len();

/// The rollup's figures as sums over `usage` rows, in column order (what the migration fills
/// the rollup with).
pub fn rollup_sum_expressions() -> Vec<String> {
    ROLLUP_FIGURES
        .iter()
        .map(|(_, expr)| format!("sum({})", expr.replace("R.", "")))
        .collect()
}

/// The rollup's figure columns, in order.
pub fn rollup_columns() -> Vec<&'static str> {
    ROLLUP_FIGURES.iter().map(|(c, _)| *c).collect()
}

/// Adds one group of rows to the rollup: parameters hour, agent, provider, model, route, then
/// one per figure of [`rollup_columns`]. What the insert trigger does row by row, for a writer
/// that sums a batch first.
pub fn rollup_upsert_sql() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(build_rollup_upsert_sql);
    &SQL
}

fn build_rollup_upsert_sql() -> String {
    let columns = rollup_columns();
    let params: Vec<String> = (6..6 + columns.len()).map(|i| format!("?{i}")).collect();
    let updates: Vec<String> = columns
        .iter()
        .map(|c| format!("{c} = {c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO usage_hourly (hour, agent, provider, model, route, {}) VALUES (?1, ?2, ?3, ?4, ?5, {})
         ON CONFLICT (hour, agent, provider, model, route) DO UPDATE SET {}",
        columns.join(", "),
        params.join(", "),
        updates.join(", ")
    )
}

/// Latency buckets: exact below 1 s, 10 ms up to 100 s, then whole seconds.
pub const LATENCY_BUCKET: &str = "CASE WHEN {c} < 1000 THEN {c} WHEN {c} < 100000 THEN ({c} / 10) * 10 ELSE ({c} / 1000) * 1000 END";

/// v4: an hourly rollup of `usage` kept by triggers (so rows inserted, updated or deleted with
/// plain SQL, and `meter reprice`, keep it right), which reports read instead of every row.
/// Latency percentiles are not rolled up: reports read them from (a sample of) the rows.
fn rollup_migration() -> String {
    let columns: Vec<&str> = ROLLUP_FIGURES.iter().map(|(c, _)| *c).collect();
    let mut sql = format!(
        "CREATE TABLE usage_hourly (
            hour TEXT NOT NULL, agent TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
            route TEXT NOT NULL, {},
            PRIMARY KEY (hour, agent, provider, model, route)) WITHOUT ROWID;\n",
        columns
            .iter()
            .map(|c| format!("{c} INTEGER NOT NULL DEFAULT 0"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Adds (sign = "+") or removes (sign = "-") one row `R` (NEW or OLD) from the rollup.
    let apply = |sign: &str, row: &str| {
        let values: Vec<String> = ROLLUP_FIGURES
            .iter()
            .map(|(_, expr)| format!("{sign}({})", expr.replace("R.", &format!("{row}."))))
            .collect();
        let updates: Vec<String> = columns
            .iter()
            .map(|c| format!("{c} = {c} + excluded.{c}"))
            .collect();
        let key = format!("substr({row}.ts, 1, 13), {row}.agent, {row}.provider, coalesce(nullif({row}.model, ''), '(unknown)'), {row}.route");
        format!(
            "INSERT INTO usage_hourly (hour, agent, provider, model, route, {}) VALUES ({key}, {})
             ON CONFLICT (hour, agent, provider, model, route) DO UPDATE SET {};\n",
            columns.join(", "),
            values.join(", "),
            updates.join(", ")
        )
    };
    sql.push_str(&format!(
        "CREATE TRIGGER usage_rollup_insert AFTER INSERT ON usage BEGIN\n{}END;\n",
        apply("+", "NEW")
    ));
    sql.push_str(&format!(
        "CREATE TRIGGER usage_rollup_delete AFTER DELETE ON usage BEGIN\n{}END;\n",
        apply("-", "OLD")
    ));
    sql.push_str(&format!(
        "CREATE TRIGGER usage_rollup_update AFTER UPDATE ON usage BEGIN\n{}{}END;\n",
        apply("-", "OLD"),
        apply("+", "NEW")
    ));
    // Rows already in the ledger.
    let sums = rollup_sum_expressions();
    sql.push_str(&format!(
        "INSERT INTO usage_hourly (hour, agent, provider, model, route, {})
         SELECT substr(ts, 1, 13), agent, provider, coalesce(nullif(model, ''), '(unknown)'), route, {}
         FROM usage GROUP BY 1, 2, 3, 4, 5;\n",
        columns.join(", "),
        sums.join(", ")
    ));
    sql
}

/// v5: calls meter refused by a budget or a route policy say which (`blocked_by`), and the
/// alert outbox: one row per email meter owes (a budget threshold in a period, a forecast, a
/// weekly report). Its unique key is what makes an alert go out once per period, across
/// restarts and across meters sharing the ledger; `status`, `attempts` and `next_attempt` carry
/// the retries while the SMTP server is down; `lease_until` keeps two meters from sending the
/// same row at once.
const ALERTS_MIGRATION: &str = r#"
    ALTER TABLE usage ADD COLUMN blocked_by TEXT;
    CREATE TABLE alert_outbox (
        id           INTEGER PRIMARY KEY,
        kind         TEXT    NOT NULL,
        subject_key  TEXT    NOT NULL,
        period       TEXT    NOT NULL,
        detail       TEXT    NOT NULL DEFAULT '',
        created_at   TEXT    NOT NULL,
        recipients   TEXT    NOT NULL,
        subject      TEXT    NOT NULL,
        body_text    TEXT    NOT NULL,
        body_html    TEXT    NOT NULL,
        status       TEXT    NOT NULL DEFAULT 'pending',
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_attempt TEXT    NOT NULL,
        lease_until  TEXT,
        sent_at      TEXT,
        last_error   TEXT,
        UNIQUE (kind, subject_key, period, detail)
    );
    CREATE INDEX alert_outbox_due ON alert_outbox (status, next_attempt);
"#;

/// v6: the calls that did not succeed, indexed, so the metrics can start from the ledger's
/// totals per status class without reading every row.
const FAILED_CALLS_MIGRATION: &str = r#"
    CREATE INDEX usage_not_2xx ON usage (status) WHERE status >= 300;
"#;

/// v7: fleets. Every record written to a shared ledger carries an idempotency key, made once
/// when the record enters the writer, so a batch retried after a timeout (or replayed from the
/// spill journal) is inserted once. Rows written by a SQLite meter have none (NULL: never a
/// conflict), and the index is partial so that they cost it nothing.
const RECORD_KEY_MIGRATION: &str = r#"
    ALTER TABLE usage ADD COLUMN record_key TEXT;
    CREATE UNIQUE INDEX usage_record_key ON usage (record_key) WHERE record_key IS NOT NULL;
"#;

/// Every migration, in order, in SQLite's spelling.
fn migrations() -> Vec<String> {
    let mut all: Vec<String> = MIGRATIONS.iter().map(|m| m.to_string()).collect();
    all.push(rollup_migration());
    all.push(ALERTS_MIGRATION.to_string());
    all.push(FAILED_CALLS_MIGRATION.to_string());
    all.push(RECORD_KEY_MIGRATION.to_string());
    all
}

/// Every migration, in order, in PostgreSQL's spelling: the same steps and versions. Table and
/// index definitions are SQLite's translated by [`postgres_types`]; the triggers, which the two
/// write differently, are PostgreSQL functions doing what SQLite's triggers do (the rollup by
/// statement, over the rows the statement touched).
fn postgres_migrations() -> Vec<String> {
    let plain = |sql: &str| postgres_types(sql);
    // v2 without SQLite's trigger bodies: its ALTERs and backfill, then the function.
    let v2 = MIGRATIONS[1];
    let v2_columns: String = v2
        .split(';')
        .filter(|statement| statement.trim_start().starts_with("ALTER TABLE"))
        .map(|statement| format!("{};\n", statement.trim()))
        .collect();
    let v2 = format!(
        "{}
        CREATE FUNCTION usage_cost_nanos_from_usd() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                IF NEW.cost_nanos IS NULL AND NEW.cost_usd IS NOT NULL THEN
                    NEW.cost_nanos := round(NEW.cost_usd * 1e9);
                END IF;
            ELSIF NEW.cost_nanos IS NOT DISTINCT FROM OLD.cost_nanos
                  AND NEW.cost_usd IS DISTINCT FROM OLD.cost_usd THEN
                NEW.cost_nanos := round(NEW.cost_usd * 1e9);
            END IF;
            RETURN NEW;
        END $fn$;
        CREATE TRIGGER usage_cost_nanos_from_usd BEFORE INSERT OR UPDATE ON usage
            FOR EACH ROW EXECUTE FUNCTION usage_cost_nanos_from_usd();
        UPDATE usage SET cost_nanos = CAST(round(cost_usd * 1e9) AS BIGINT)
        WHERE cost_nanos IS NULL AND cost_usd IS NOT NULL;\n",
        postgres_types(&v2_columns)
    );
    let mut all = vec![plain(MIGRATIONS[0]), v2, plain(MIGRATIONS[2])];
    all.push(postgres_rollup_migration());
    all.push(plain(ALERTS_MIGRATION));
    all.push(plain(FAILED_CALLS_MIGRATION));
    all.push(plain(RECORD_KEY_MIGRATION));
    all
}

/// SQLite's column types in PostgreSQL: 64-bit integers, identity keys, doubles, and text
/// compared byte by byte (collation "C", SQLite's BINARY) so timestamps order as strings.
fn postgres_types(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(match word.as_str() {
            "INTEGER" => "BIGINT",
            "REAL" => "DOUBLE PRECISION",
            "TEXT" => "TEXT COLLATE \"C\"",
            other => other,
        });
        word.clear();
    };
    for c in sql.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.replace(
        "BIGINT PRIMARY KEY",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    )
    .replace(" WITHOUT ROWID", "")
}

/// v4 on PostgreSQL: the same table, and one statement-level trigger per event that sums the
/// rows the statement inserted, deleted or updated (transition tables) into the rollup, in key
/// order (so meters writing at once take the rollup's row locks in one order).
fn postgres_rollup_migration() -> String {
    let columns = rollup_columns();
    let table = format!(
        "CREATE TABLE usage_hourly (
            hour TEXT NOT NULL, agent TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
            route TEXT NOT NULL, {},
            PRIMARY KEY (hour, agent, provider, model, route));\n",
        columns
            .iter()
            .map(|c| format!("{c} INTEGER NOT NULL DEFAULT 0"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let apply = |sign: &str, rows: &str| {
        let sums: Vec<String> = ROLLUP_FIGURES
            .iter()
            .map(|(_, expr)| format!("{sign}sum({})", postgres_figure(&expr.replace("R.", ""))))
            .collect();
        let updates: Vec<String> = columns
            .iter()
            .map(|c| format!("{c} = usage_hourly.{c} + excluded.{c}"))
            .collect();
        format!(
            "INSERT INTO usage_hourly (hour, agent, provider, model, route, {})
             SELECT substr(ts, 1, 13), agent, provider, coalesce(nullif(model, ''), '(unknown)'), route, {}
             FROM {rows} GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
             ON CONFLICT (hour, agent, provider, model, route) DO UPDATE SET {};\n",
            columns.join(", "),
            sums.join(", "),
            updates.join(", ")
        )
    };
    let mut sql = postgres_types(&table);
    sql.push_str(&format!(
        "CREATE FUNCTION usage_rollup() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
            IF TG_OP IN ('DELETE', 'UPDATE') THEN
                {}
            END IF;
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                {}
            END IF;
            RETURN NULL;
        END $fn$;
        CREATE TRIGGER usage_rollup_insert AFTER INSERT ON usage
            REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION usage_rollup();
        CREATE TRIGGER usage_rollup_delete AFTER DELETE ON usage
            REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION usage_rollup();
        CREATE TRIGGER usage_rollup_update AFTER UPDATE ON usage
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION usage_rollup();\n",
        apply("-", "old_rows"),
        apply("", "new_rows"),
    ));
    sql.push_str(&apply("", "usage"));
    sql
}

/// A rollup figure in PostgreSQL: a condition (parenthesised in `ROLLUP_FIGURES`) counts as 1
/// or 0, which SQLite does by itself.
pub fn postgres_figure(expr: &str) -> String {
    if expr.starts_with('(') {
        format!("CASE WHEN {expr} THEN 1 ELSE 0 END")
    } else {
        expr.to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("ledger schema version {found} is newer than this meter understands ({VERSION}); upgrade meter")]
    TooNew { found: i64 },
    #[error("migrating the ledger to schema version {version}: {source}")]
    Migration {
        version: i64,
        source: rusqlite::Error,
    },
    #[error("reading the ledger schema version: {0}")]
    Read(rusqlite::Error),
    #[error("migrating the ledger to schema version {version}: {source}")]
    Postgres {
        version: i64,
        source: super::db::DbError,
    },
}

/// Brings a PostgreSQL ledger's schema up to [`VERSION`]: the same migrations as SQLite's, in
/// PostgreSQL's spelling, tracked in `schema_version`. Each step runs in a transaction holding
/// an advisory lock, so meters starting at once on one ledger migrate it once between them.
pub fn migrate_postgres(db: &mut super::db::Db) -> Result<(), SchemaError> {
    // Meters of a fleet starting at once migrate side by side: a deadlock or a serialization
    // failure among them (or a connection reset) is tried again, briefly, before it counts.
    let mut attempt = 0u64;
    loop {
        match migrate_postgres_once(db) {
            Err(SchemaError::Postgres { source, .. }) if source.is_transient() && attempt < 5 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(100 * attempt));
            }
            done => return done,
        }
    }
}

fn migrate_postgres_once(db: &mut super::db::Db) -> Result<(), SchemaError> {
    use super::db::DbError;
    let err = |version: i64| move |source: DbError| SchemaError::Postgres { version, source };
    db.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .or_else(|e| {
            // Two meters creating it at once: one wins, the other sees a duplicate.
            if matches!(&e, DbError::Postgres(p) if p.code().is_some_and(|c| c.code() == "23505" || c.code() == "42P07")) {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(err(0))?;
    let all = postgres_migrations();
    loop {
        let done = db
            .transaction(|tx| {
                // An arbitrary, fixed key: meter's migrations.
                tx.batch("SELECT pg_advisory_xact_lock(7274367300)")?;
                let found: i64 = tx
                    .query_opt("SELECT version FROM schema_version", &[])?
                    .map(|row| row.get::<i64>(0))
                    .transpose()?
                    .unwrap_or(0);
                if found > VERSION {
                    return Ok(Err(SchemaError::TooNew { found }));
                }
                let Some(sql) = all.get(found as usize) else {
                    return Ok(Ok(true));
                };
                tx.batch(sql)?;
                tx.execute("DELETE FROM schema_version", &[])?;
                tx.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    &[super::db::Value::Integer(found + 1)],
                )?;
                Ok(Ok(false))
            })
            .map_err(err(-1))??;
        if done {
            return Ok(());
        }
    }
}

/// Brings the schema up to [`VERSION`], one transaction per migration. Each step takes the
/// write lock first (`BEGIN IMMEDIATE`) and reads the version under it, so meters starting at
/// once on one ledger migrate it once between them.
pub fn migrate(conn: &mut Connection) -> Result<(), SchemaError> {
    // Up to date: no write lock needed (a read-only ledger can still be reported on).
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(SchemaError::Read)?;
    if current == VERSION {
        return Ok(());
    }
    if current > VERSION {
        return Err(SchemaError::TooNew { found: current });
    }
    let all = migrations();
    loop {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(SchemaError::Read)?;
        let found: i64 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(SchemaError::Read)?;
        if found > VERSION {
            return Err(SchemaError::TooNew { found });
        }
        let Some(sql) = all.get(found as usize) else {
            tx.commit().map_err(SchemaError::Read)?;
            return Ok(());
        };
        let version = found + 1;
        let wrap = |source| SchemaError::Migration { version, source };
        tx.execute_batch(sql).map_err(wrap)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(wrap)?;
        tx.commit().map_err(wrap)?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hand_edited_costs_keep_nanos_in_step() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO usage (ts, provider, route, status, cost_usd) VALUES ('2026-01-01T00:00:00.000Z', 'openai', 'direct', 200, 1.5)",
            [],
        )
        .unwrap();
        conn.execute("UPDATE usage SET cost_usd = 2.25", [])
            .unwrap();
        let nanos: i64 = conn
            .query_row("SELECT cost_nanos FROM usage", [], |r| r.get(0))
            .unwrap();
        assert_eq!(nanos, 2_250_000_000);
        let rolled: i64 = conn
            .query_row("SELECT sum(cost_nanos) FROM usage_hourly", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rolled, 2_250_000_000);
    }

    #[test]
    fn hand_inserted_cost_gets_exact_nanos() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO usage (ts, provider, route, status, cost_usd) VALUES ('2026-01-01T00:00:00.000Z', 'openai', 'direct', 200, 0.000123456)",
            [],
        )
        .unwrap();
        let nanos: i64 = conn
            .query_row("SELECT cost_nanos FROM usage", [], |r| r.get(0))
            .unwrap();
        assert_eq!(nanos, 123_456);
    }

    #[test]
    fn the_rollup_follows_inserts_updates_and_deletes() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let insert = "INSERT INTO usage (ts, agent, provider, route, model, status, input_tokens, output_tokens, cost_nanos, usage_status, latency_ms, ttft_ms)
                      VALUES (?1, 'a', 'openai', 'direct', ?2, 200, 10, 5, ?3, 'reported', 1234, 300)";
        conn.execute(
            insert,
            rusqlite::params!["2026-11-01T10:15:00.000Z", "gpt-4o", 100],
        )
        .unwrap();
        conn.execute(
            insert,
            rusqlite::params!["2026-11-01T10:45:00.000Z", "gpt-4o", Option::<i64>::None],
        )
        .unwrap();
        conn.execute(
            insert,
            rusqlite::params!["2026-11-01T11:00:00.000Z", Option::<String>::None, 7],
        )
        .unwrap();
        let hourly = |conn: &Connection| -> Vec<(String, String, i64, i64, i64, i64)> {
            let mut statement = conn.prepare("SELECT hour, model, requests, input_tokens, cost_nanos, unpriced_requests FROM usage_hourly WHERE requests != 0 ORDER BY hour").unwrap();
            statement
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .unwrap()
                .map(|r| r.unwrap())
                .collect()
        };
        assert_eq!(
            hourly(&conn),
            vec![
                ("2026-11-01T10".into(), "gpt-4o".into(), 2, 20, 100, 1),
                ("2026-11-01T11".into(), "(unknown)".into(), 1, 10, 7, 0),
            ]
        );
        // A reprice (an UPDATE) moves the figures; a DELETE takes them out.
        conn.execute(
            "UPDATE usage SET cost_nanos = 50 WHERE cost_nanos IS NULL",
            [],
        )
        .unwrap();
        conn.execute("DELETE FROM usage WHERE model IS NULL", [])
            .unwrap();
        assert_eq!(
            hourly(&conn),
            vec![("2026-11-01T10".into(), "gpt-4o".into(), 2, 20, 150, 0)]
        );
        // A rollup built from existing rows (the migration's backfill) matches the triggers'.
        let mut fresh = Connection::open_in_memory().unwrap();
        fresh.execute_batch(MIGRATIONS.join("\n").as_str()).unwrap();
        fresh
            .pragma_update(None, "user_version", MIGRATIONS.len() as i64)
            .unwrap();
        fresh
            .execute(
                insert,
                rusqlite::params!["2026-11-01T10:15:00.000Z", "gpt-4o", 100],
            )
            .unwrap();
        fresh
            .execute(
                insert,
                rusqlite::params!["2026-11-01T10:45:00.000Z", "gpt-4o", 50],
            )
            .unwrap();
        migrate(&mut fresh).unwrap();
        assert_eq!(hourly(&fresh), hourly(&conn));
    }

    #[test]
    fn migrates_once_and_refuses_newer() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        conn.pragma_update(None, "user_version", VERSION + 1)
            .unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(SchemaError::TooNew { .. })
        ));
    }
}
