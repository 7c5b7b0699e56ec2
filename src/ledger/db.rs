//! The storage interface: one connection type over the ledger's two backends, SQLite (embedded,
//! the default) and PostgreSQL (`store.url`, a fleet's shared ledger). Queries are written once,
//! in the SQL both understand; the dialect differences live here: `?N` placeholders become
//! `$N`, values cross as one [`Value`] type, and PostgreSQL's `numeric` sums come back as
//! integers. Nothing here knows the ledger's tables.

use std::time::Duration;

use postgres::types::{FromSql, IsNull, ToSql, Type};

/// A value crossing the interface, in SQLite's four storage classes (blobs are not used).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Integer(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Integer(i64::from(v))
    }
}
impl From<u16> for Value {
    fn from(v: u16) -> Value {
        Value::Integer(i64::from(v))
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// Parameters for a query: `&args![a, b, c]` (an array of [`Value`]).
#[macro_export]
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        [$($crate::ledger::db::Value::from($value)),*]
    };
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("connecting to the PostgreSQL ledger: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("column {column}: expected {expected}, found {found}")]
    Type {
        column: usize,
        expected: &'static str,
        found: String,
    },
    #[error("column {0} is out of range")]
    NoColumn(usize),
    #[error("the query returned no row")]
    NoRow,
    #[error("{0}")]
    Open(String),
    #[error("{0}")]
    Tls(String),
}

/// A PostgreSQL error with the server's message when it sent one (`db error` alone says
/// nothing).
fn postgres_message(err: &postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("postgresql: {}: {}", db.code().code(), db.message()),
        None => format!("postgresql: {err}"),
    }
}

impl DbError {
    /// Worth retrying: the database is busy, locked, full, unreachable or restarting.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Sqlite(err) => super::writer::is_transient(err),
            DbError::Pool(_) | DbError::Open(_) => true,
            DbError::Postgres(err) => match err.code() {
                // No SQLSTATE: the connection itself failed (refused, closed, timed out).
                None => true,
                Some(code) => {
                    let code = code.code();
                    let class = &code[..2.min(code.len())];
                    // 08 connection, 25 transaction state (a read-only standby after a
                    // failover), 40 serialization/deadlock, 53 resources, 57 shutdown or
                    // cancel, 58 system error; and what an operator can mend while meter
                    // waits: a missing grant, a dropped table, a lock held too long.
                    matches!(class, "08" | "25" | "40" | "53" | "57" | "58")
                        || matches!(code, "42501" | "42P01" | "55P03" | "55006")
                }
            },
            _ => false,
        }
    }
}

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    pub fn get<T: FromValue>(&self, column: usize) -> Result<T, DbError> {
        let value = self.0.get(column).ok_or(DbError::NoColumn(column))?;
        T::from_value(value).ok_or_else(|| DbError::Type {
            column,
            expected: T::NAME,
            found: format!("{value:?}"),
        })
    }

    pub fn values(&self) -> &[Value] {
        &self.0
    }
}

/// What a column can be read as (SQLite's rules: integers read as floats too, never the
/// other way but for PostgreSQL's integral `numeric`).
pub trait FromValue: Sized {
    const NAME: &'static str;
    fn from_value(value: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    const NAME: &'static str = "an integer";
    fn from_value(value: &Value) -> Option<i64> {
        match value {
            Value::Integer(v) => Some(*v),
            _ => None,
        }
    }
}
impl FromValue for f64 {
    const NAME: &'static str = "a number";
    fn from_value(value: &Value) -> Option<f64> {
        match value {
            Value::Integer(v) => Some(*v as f64),
            Value::Real(v) => Some(*v),
            _ => None,
        }
    }
}
impl FromValue for bool {
    const NAME: &'static str = "a boolean";
    fn from_value(value: &Value) -> Option<bool> {
        i64::from_value(value).map(|v| v != 0)
    }
}
impl FromValue for String {
    const NAME: &'static str = "text";
    fn from_value(value: &Value) -> Option<String> {
        match value {
            Value::Text(v) => Some(v.clone()),
            _ => None,
        }
    }
}
impl FromValue for Value {
    const NAME: &'static str = "a value";
    fn from_value(value: &Value) -> Option<Value> {
        Some(value.clone())
    }
}
impl<T: FromValue> FromValue for Option<T> {
    const NAME: &'static str = T::NAME;
    fn from_value(value: &Value) -> Option<Option<T>> {
        match value {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// Which backend a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub type PgManager =
    r2d2_postgres::PostgresConnectionManager<tokio_postgres_rustls::MakeRustlsConnect>;
pub type PgPool = r2d2::Pool<PgManager>;

/// An open connection on either backend.
pub enum Db {
    Sqlite(rusqlite::Connection),
    Postgres(Box<r2d2::PooledConnection<PgManager>>),
}

impl Db {
    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// The SQLite connection, for what only SQLite has (the writer's trigger takeover, tests).
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Db::Sqlite(conn) => Some(conn),
            Db::Postgres(_) => None,
        }
    }

    /// Every row of a query.
    pub fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        match self {
            Db::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql)?;
                let width = statement.column_count();
                let rows =
                    statement.query_map(rusqlite::params_from_iter(params.iter()), |row| {
                        (0..width)
                            .map(|i| row.get::<_, rusqlite::types::Value>(i).map(from_sqlite))
                            .collect::<rusqlite::Result<Vec<Value>>>()
                            .map(Row)
                    })?;
                Ok(rows.collect::<rusqlite::Result<Vec<Row>>>()?)
            }
            Db::Postgres(client) => {
                let sql = postgres_sql(sql);
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                let rows = client.query(sql.as_str(), &refs)?;
                rows.iter()
                    .map(|row| {
                        (0..row.len())
                            .map(|i| row.try_get::<_, Value>(i).map_err(DbError::from))
                            .collect::<Result<Vec<Value>, DbError>>()
                            .map(Row)
                    })
                    .collect()
            }
        }
    }

    /// The first row of a query, if any.
    pub fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The first row of a query; none is an error.
    pub fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row, DbError> {
        self.query_opt(sql, params)?.ok_or(DbError::NoRow)
    }

    /// Runs one statement; returns the rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        match self {
            Db::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql)?;
                Ok(statement.execute(rusqlite::params_from_iter(params.iter()))? as u64)
            }
            Db::Postgres(client) => {
                let sql = postgres_sql(sql);
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                Ok(client.execute(sql.as_str(), &refs)?)
            }
        }
    }

    /// Runs statements without parameters (`BEGIN`, DDL).
    pub fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Db::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Db::Postgres(client) => Ok(client.batch_execute(sql)?),
        }
    }

    /// Runs `work` in one transaction: committed when it returns `Ok`, rolled back otherwise.
    /// On SQLite it takes the write lock first (`BEGIN IMMEDIATE`), like every writer here.
    pub fn transaction<T>(
        &mut self,
        work: impl FnOnce(&mut Db) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.batch(match self.backend() {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        })?;
        match work(self) {
            Ok(value) => {
                if let Err(err) = self.batch("COMMIT") {
                    let _ = self.batch("ROLLBACK");
                    return Err(err);
                }
                Ok(value)
            }
            Err(err) => {
                let _ = self.batch("ROLLBACK");
                Err(err)
            }
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Integer(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Real(v) => ToSqlOutput::Borrowed(ValueRef::Real(*v)),
            Value::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
        })
    }
}

fn from_sqlite(value: rusqlite::types::Value) -> Value {
    use rusqlite::types::Value as V;
    match value {
        V::Null => Value::Null,
        V::Integer(v) => Value::Integer(v),
        V::Real(v) => Value::Real(v),
        V::Text(v) => Value::Text(v),
        V::Blob(v) => Value::Text(String::from_utf8_lossy(&v).into_owned()),
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// A value is sent as the type the server expects for its parameter: the SQL is shared with
/// SQLite, which has no parameter types, so the value adapts to what PostgreSQL inferred.
impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        let mismatch = || -> BoxError { format!("cannot send {self:?} as {ty}").into() };
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Integer(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    v.to_string().to_sql(&Type::TEXT, out)
                }
                _ => Err(mismatch()),
            },
            Value::Real(v) => match *ty {
                Type::FLOAT8 => v.to_sql(ty, out),
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::UNKNOWN => {
                    v.to_string().to_sql(&Type::TEXT, out)
                }
                _ => Err(mismatch()),
            },
            Value::Text(v) => match *ty {
                // PostgreSQL's text cannot hold NUL (SQLite's can): it is dropped, so a model
                // name with one in it, say, is written instead of refused.
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
                    if v.contains('\0') =>
                {
                    v.replace('\0', "").as_str().to_sql(&Type::TEXT, out)
                }
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    v.as_str().to_sql(&Type::TEXT, out)
                }
                _ => Err(mismatch()),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Value, BoxError> {
        Ok(match *ty {
            Type::BOOL => Value::Integer(i64::from(bool::from_sql(ty, raw)?)),
            Type::INT2 => Value::Integer(i64::from(i16::from_sql(ty, raw)?)),
            Type::INT4 => Value::Integer(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT8 => Value::Integer(i64::from_sql(ty, raw)?),
            Type::FLOAT4 => Value::Real(f64::from(f32::from_sql(ty, raw)?)),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::NUMERIC => numeric(raw)?,
            _ => Value::Text(<&str as FromSql>::from_sql(&Type::TEXT, raw)?.to_string()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Value, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// PostgreSQL's binary `numeric` (what `sum` of a `bigint` column returns): base-10000 digits
/// with a weight. Integral values that fit become integers, the rest floats.
fn numeric(raw: &[u8]) -> Result<Value, BoxError> {
    let word = |i: usize| -> Result<u16, BoxError> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric".into())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(1)? as i16);
    let sign = word(2)?;
    if sign == 0xC000 {
        return Ok(Value::Real(f64::NAN));
    }
    let mut integral: Option<i128> = Some(0);
    let mut float = 0f64;
    for i in 0..ndigits {
        let digit = word(4 + i)?;
        let power = weight - i as i32;
        float += f64::from(digit) * 10000f64.powi(power);
        if digit != 0 {
            integral = match (integral, u32::try_from(power)) {
                (Some(sum), Ok(power)) => 10000i128
                    .checked_pow(power)
                    .and_then(|scale| scale.checked_mul(i128::from(digit)))
                    .and_then(|v| sum.checked_add(v)),
                _ => None,
            };
        }
    }
    let negative = sign == 0x4000;
    match integral.and_then(|v| i64::try_from(if negative { -v } else { v }).ok()) {
        Some(v) => Ok(Value::Integer(v)),
        None => Ok(Value::Real(if negative { -float } else { float })),
    }
}

/// The shared SQL in PostgreSQL's spelling: `?N` becomes `$N` (a bare `?` takes the next
/// number), outside quoted strings and identifiers.
pub fn postgres_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    let mut next = 1u32;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                out.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                out.push('$');
                if digits.is_empty() {
                    out.push_str(&next.to_string());
                    next += 1;
                } else {
                    out.push_str(&digits);
                }
            }
            None => out.push(c),
        }
    }
    out
}

/// Where the ledger is: a SQLite file, or a PostgreSQL server through a pool of connections.
#[derive(Clone)]
pub enum Store {
    Sqlite {
        path: std::path::PathBuf,
        busy_timeout: Duration,
    },
    Postgres {
        pool: PgPool,
        /// The URL with any password removed, for messages.
        display: String,
    },
}

impl Store {
    /// Opens a connection (for PostgreSQL, takes one from the pool) and brings the schema up to
    /// date.
    pub fn open(&self) -> Result<Db, super::writer::LedgerError> {
        match self {
            Store::Sqlite { path, busy_timeout } => Ok(Db::Sqlite(super::writer::open_connection(
                path,
                *busy_timeout,
            )?)),
            Store::Postgres { pool, display } => {
                let mut db = Db::Postgres(Box::new(pool.get().map_err(|source| {
                    super::writer::LedgerError::Postgres {
                        url: display.clone(),
                        source: DbError::Pool(source),
                    }
                })?));
                super::schema::migrate_postgres(&mut db).map_err(|source| {
                    super::writer::LedgerError::Schema {
                        path: display.clone(),
                        source,
                    }
                })?;
                Ok(db)
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Store::Sqlite { path, .. } => path.display().to_string(),
            Store::Postgres { display, .. } => display.clone(),
        }
    }
}

/// A pool of PostgreSQL connections for `url` (`postgres://user[:password]@host[:port]/db`,
/// or key=value pairs), with TLS by rustls when the URL asks for it (`sslmode=require`; the
/// system's roots, falling back to the bundled Mozilla roots). Connections are made lazily:
/// the pool exists while the server is down.
/// How long a PostgreSQL connection may go unanswered before it counts as broken.
const DEAD_CONNECTION: Duration = Duration::from_secs(60);

pub fn postgres_pool(
    url: &str,
    size: u32,
    connect_timeout: Duration,
    ca_file: Option<&std::path::Path>,
) -> Result<PgPool, DbError> {
    let mut config: postgres::Config = url.parse().map_err(DbError::from)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(connect_timeout);
    }
    // A connection that went silent (a failover, a NAT that dropped it) must fail within a
    // minute, not the kernel's quarter of an hour, so the writer spills to its journal and
    // shutdown is not held up by a dead socket.
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(DEAD_CONNECTION);
    }
    if !config.get_keepalives() || config.get_keepalives_idle() > DEAD_CONNECTION {
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
    }
    config.application_name("meter");
    let manager = r2d2_postgres::PostgresConnectionManager::new(config, tls(ca_file)?);
    Ok(r2d2::Pool::builder()
        .max_size(size.max(1))
        .min_idle(Some(0))
        .connection_timeout(connect_timeout)
        .test_on_check_out(false)
        .build_unchecked(manager))
}

/// The URL (or key=value connection string) without its password: the userinfo's, and any
/// `password=` parameter's.
pub fn redact_url(url: &str) -> String {
    let userinfo_redacted = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    };
    redact_password_parameters(&userinfo_redacted)
}

/// Replaces the value of every `password=` parameter (`?password=x&...`, `password=x`,
/// `password='x y'`) with `***`.
fn redact_password_parameters(text: &str) -> String {
    const KEY: &str = "password=";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.to_ascii_lowercase().find(KEY) {
        let starts_key = at == 0
            || matches!(
                rest.as_bytes().get(at - 1),
                Some(b'?' | b'&' | b' ' | b'\t' | b'\n')
            );
        let value_start = at + KEY.len();
        out.push_str(&rest[..value_start]);
        let value = &rest[value_start..];
        if !starts_key {
            rest = value;
            continue;
        }
        let end = if let Some(quoted) = value.strip_prefix('\'') {
            // A quoted key=value: up to the closing quote (backslash escapes skipped).
            let mut escaped = false;
            quoted
                .char_indices()
                .find(|&(_, c)| {
                    let close = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    close
                })
                .map_or(value.len(), |(i, _)| i + 2)
        } else {
            value
                .find(|c: char| c == '&' || c.is_whitespace())
                .unwrap_or(value.len())
        };
        out.push_str("***");
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// TLS for PostgreSQL connections: the server's certificate is verified against the system's
/// roots (else the bundled Mozilla roots) plus `store.ca_file`, and its name against the URL's
/// host, whatever `sslmode` says: `require` gets libpq's `verify-full`, never less.
fn tls(
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, DbError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_file {
        crate::proxy::forward::add_ca_file(&mut roots, path)
            .map_err(|err| DbError::Tls(format!("store.ca_file: {err}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|builder| builder.with_root_certificates(roots).with_no_client_auth());
    let config = match config {
        Ok(config) => config,
        // The ring provider supports the default versions; this cannot fail in practice.
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn placeholders_in_postgres_spelling() {
        assert_eq!(
            postgres_sql("SELECT '?1', \"a?\" FROM t WHERE a = ?1 AND b = ?12 AND c = ?"),
            "SELECT '?1', \"a?\" FROM t WHERE a = $1 AND b = $12 AND c = $1"
        );
    }

    #[test]
    fn numeric_sums_decode() {
        // 123456789 = 1 2345 6789 (weight 2), positive.
        let bytes: Vec<u8> = [3u16, 2, 0, 0, 1, 2345, 6789]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(numeric(&bytes).unwrap(), Value::Integer(123_456_789));
        // -0.5: one digit 5000 at weight -1.
        let bytes: Vec<u8> = [1u16, 0xFFFF, 0x4000, 1, 5000]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(numeric(&bytes).unwrap(), Value::Real(-0.5));
        // Zero has no digits.
        let bytes: Vec<u8> = [0u16, 0, 0, 0]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert_eq!(numeric(&bytes).unwrap(), Value::Integer(0));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://meter:secret@db:5432/meter"),
            "postgres://meter:***@db:5432/meter"
        );
        assert_eq!(
            redact_url("postgres://meter@db/meter"),
            "postgres://meter@db/meter"
        );
        assert_eq!(
            redact_url("postgres://meter@db/meter?sslmode=require&password=s3cr%40t&x=1"),
            "postgres://meter@db/meter?sslmode=require&password=***&x=1"
        );
        assert_eq!(
            redact_url("postgres://meter@db/meter?Password=secret"),
            "postgres://meter@db/meter?Password=***"
        );
        assert_eq!(
            redact_url("host=db user=meter password='a \\' b' dbname=meter"),
            "host=db user=meter password=*** dbname=meter"
        );
        assert_eq!(
            redact_url("host=db password=secret"),
            "host=db password=***"
        );
        // Not a parameter of its own: left as is.
        assert_eq!(
            redact_url("host=db user=nopassword=x"),
            "host=db user=nopassword=x"
        );
    }

    #[test]
    fn sqlite_round_trip() {
        let mut db = Db::Sqlite(rusqlite::Connection::open_in_memory().unwrap());
        db.batch("CREATE TABLE t (a INTEGER, b TEXT, c REAL)")
            .unwrap();
        db.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3)",
            &args![7i64, "x", Option::<f64>::None],
        )
        .unwrap();
        let row = db.query_one("SELECT a, b, c FROM t", &[]).unwrap();
        assert_eq!(row.get::<i64>(0).unwrap(), 7);
        assert_eq!(row.get::<String>(1).unwrap(), "x");
        assert_eq!(row.get::<Option<f64>>(2).unwrap(), None);
        assert!(row.get::<i64>(1).is_err());
    }
}
