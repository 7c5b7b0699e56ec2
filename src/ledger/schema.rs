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
    "#,
    // v3: what the rate table says a call cost, kept beside a provider-reported cost so that a
    // router's markup can be shown; and an index for `prices check`.
    r#"
    ALTER TABLE usage ADD COLUMN table_cost_nanos INTEGER;
    CREATE INDEX usage_unpriced ON usage (provider, model) WHERE cost_nanos IS NULL;
    "#,
];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

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
}

/// Brings the schema up to [`VERSION`], one transaction per migration.
pub fn migrate(conn: &mut Connection) -> Result<(), SchemaError> {
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(SchemaError::Read)?;
    if found > VERSION {
        return Err(SchemaError::TooNew { found });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as i64 + 1;
        let wrap = |source| SchemaError::Migration { version, source };
        let tx = conn.transaction().map_err(wrap)?;
        tx.execute_batch(sql).map_err(wrap)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(wrap)?;
        tx.commit().map_err(wrap)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
