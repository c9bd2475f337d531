//! The SQL store in amavisd-new 2.13's schema (PostgreSQL, or MariaDB/MySQL): the message log
//! (`msgs`, `msgrcpt`, `maddr`), the quarantine (`quarantine` chunks) and per-user policy
//! (`users`, `policy`, `mailaddr`, `wblist`), so that amavis's UIs keep working and several
//! postsift nodes share one quarantine.
//!
//! Client: sqlx 0.9 (its `postgres` and `mysql` drivers only: no TLS, no compile-time macros).
//! One crate gives both databases, a pool with acquire timeouts and per-connection prepared
//! statements on tokio; tokio-postgres plus mysql_async would be two APIs and a third crate for
//! pooling for the same job. Each statement is written once with `?` placeholders (as amavis's
//! `%sql_clause` is) and numbered `$1…` for PostgreSQL by [`Stmt`]; [`on_pool!`] runs the same
//! code against whichever pool the URL chose. sqlx's types are strict per database, so rows are
//! read through [`get_int`], [`get_float`] and friends, which accept every column type amavis's
//! two schemas (and older ones) use.
//!
//! [`SqlConfig`] is the configuration's `[sql]` (plain data, validated at load); [`Pool`] is
//! built from it, and [`log::LogWriter`], [`quarantine::SqlQuarantine`] and
//! [`lookups::SqlLookups`] take plain input structs. The runtime holds a [`store::SqlStore`].

pub mod log;
pub mod lookups;
pub mod metrics;
pub mod quarantine;
pub mod schema;
pub mod store;

use std::borrow::Cow;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlRow};
use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgRow};
use sqlx::Row;

pub use crate::config::{SqlConfig, SqlConfigError};

/// Errors of the SQL store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid value for `sql.{key}`: {message}")]
    Config { key: &'static str, message: String },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database: no answer within {0:?}")]
    Timeout(Duration),
    #[error("reading the message: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Data(String),
}

impl From<SqlConfigError> for Error {
    fn from(e: SqlConfigError) -> Error {
        Error::Config {
            key: e.key.strip_prefix("sql.").unwrap_or(e.key),
            message: e.message,
        }
    }
}

impl Error {
    /// True if the database could not be reached or did not answer (rather than refusing one
    /// statement): worth retrying the same work later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Timeout(_) | Error::Io(_) => true,
            Error::Db(e) => matches!(
                e,
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
            ),
            Error::Config { .. } | Error::Data(_) => false,
        }
    }

    /// True if the database gave up a transaction for another's sake (a deadlock, a
    /// serialization failure: SQLSTATE 40001, or PostgreSQL's 40P01), as MariaDB does when one
    /// node's purge and another's insert meet in `maddr`: the same work again succeeds.
    pub fn is_conflict(&self) -> bool {
        match self {
            Error::Db(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("40001") | Some("40P01"))
            }
            _ => false,
        }
    }

    /// [`Error::is_unavailable`] or [`Error::is_conflict`]: worth trying again.
    pub fn is_transient(&self) -> bool {
        self.is_unavailable() || self.is_conflict()
    }
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    MySql,
}

impl Backend {
    /// The backend of `url` by its scheme.
    pub fn of_url(url: &str) -> Result<Backend, Error> {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            "mysql" | "mariadb" => Ok(Backend::MySql),
            _ => Err(Error::Config {
                key: "url",
                message: "must start with postgresql:// or mysql:// (or mariadb://)".into(),
            }),
        }
    }
}

/// A statement in amavis's `?` style, numbered for PostgreSQL on use.
#[derive(Debug, Clone, Copy)]
pub struct Stmt(pub &'static str);

impl Stmt {
    /// The text for `backend`: `?` outside quotes becomes `$1`, `$2`… for PostgreSQL.
    pub fn text(self, backend: Backend) -> Cow<'static, str> {
        match backend {
            Backend::MySql => Cow::Borrowed(self.0),
            Backend::Postgres => Cow::Owned(number_placeholders(self.0)),
        }
    }

    /// [`Stmt::text`] as sqlx takes it (the text is a constant of postsift's, never input).
    pub fn sql(self, backend: Backend) -> sqlx::AssertSqlSafe<Cow<'static, str>> {
        sqlx::AssertSqlSafe(self.text(backend))
    }
}

/// A statement built at run time (an `IN (?,?,…)` list), numbered for `backend`. Only
/// placeholders are ever added to `sql`, never values.
pub fn dynamic_sql(sql: &str, backend: Backend) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(match backend {
        Backend::MySql => sql.to_string(),
        Backend::Postgres => number_placeholders(sql),
    })
}

fn number_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let (mut n, mut quoted) = (0, false);
    for c in sql.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

/// A pool for either database.
#[derive(Debug, Clone)]
pub enum Pool {
    Postgres(PgPool),
    MySql(MySqlPool),
}

/// Runs `$body` with `$p` bound to the concrete pool (`&PgPool` or `&MySqlPool`): the same code
/// compiles once per database.
#[macro_export]
#[doc(hidden)]
macro_rules! sql_on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            $crate::sql::Pool::Postgres($p) => $body,
            $crate::sql::Pool::MySql($p) => $body,
        }
    };
}
pub use sql_on_pool as on_pool;

impl Pool {
    /// A pool for `cfg.url`; connects lazily (a database that is down at start does not stop
    /// postsift: the first statement fails and is counted).
    pub fn connect_lazy(cfg: &SqlConfig) -> Result<Pool, Error> {
        let backend = Backend::of_url(&cfg.url)?;
        let bad_url = |e: sqlx::Error| Error::Config {
            key: "url",
            message: e.to_string(),
        };
        let acquire = Duration::from_secs(cfg.connect_timeout);
        Ok(match backend {
            Backend::Postgres => {
                let o: PgConnectOptions = cfg.url.parse().map_err(bad_url)?;
                Pool::Postgres(
                    PoolOptions::new()
                        .max_connections(cfg.max_connections)
                        .acquire_timeout(acquire)
                        .connect_lazy_with(o),
                )
            }
            Backend::MySql => {
                let url = match cfg.url.split_once("://") {
                    Some((s, rest)) if s.eq_ignore_ascii_case("mariadb") => {
                        format!("mysql://{rest}")
                    }
                    _ => cfg.url.clone(),
                };
                let o: MySqlConnectOptions = url.parse().map_err(bad_url)?;
                // amavis's from_addr/subject are utf8mb4; keep the session in it too.
                let o = o.charset("utf8mb4");
                Pool::MySql(
                    PoolOptions::new()
                        .max_connections(cfg.max_connections)
                        .acquire_timeout(acquire)
                        .connect_lazy_with(o),
                )
            }
        })
    }

    pub fn backend(&self) -> Backend {
        match self {
            Pool::Postgres(_) => Backend::Postgres,
            Pool::MySql(_) => Backend::MySql,
        }
    }

    /// (connections open, of them idle), for the gauges.
    pub fn usage(&self) -> (u32, usize) {
        on_pool!(self, p => (p.size(), p.num_idle()))
    }

    /// Closes every connection (waits for those in use).
    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }
}

/// Runs `fut` under `limit`: Err(Timeout) if it takes longer.
pub async fn within<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(limit)),
    }
}

/// Reads a column of any of the two schemas' types into the widest Rust type (None for NULL,
/// and for a column the row does not have: amavis's `policy` columns are all optional). sqlx checks
/// column types strictly (PostgreSQL `integer` is not an `i64`, MySQL `int unsigned` is not an
/// `i32`), and amavis's PostgreSQL and MySQL schemas, and sites' own, differ in them.
pub trait AnyRow: Row {
    fn int(&self, col: &str) -> Result<Option<i64>, Error>;
    fn float(&self, col: &str) -> Result<Option<f64>, Error>;
    fn bytes(&self, col: &str) -> Result<Option<Vec<u8>>, Error>;
}

impl AnyRow for PgRow {
    fn int(&self, col: &str) -> Result<Option<i64>, Error> {
        if self.try_column(col).is_err() {
            return Ok(None);
        }
        if let Ok(v) = self.try_get::<Option<i32>, _>(col) {
            return Ok(v.map(i64::from));
        }
        if let Ok(v) = self.try_get::<Option<i16>, _>(col) {
            return Ok(v.map(i64::from));
        }
        Ok(self.try_get::<Option<i64>, _>(col)?)
    }
    fn float(&self, col: &str) -> Result<Option<f64>, Error> {
        if self.try_column(col).is_err() {
            return Ok(None);
        }
        if let Ok(v) = self.try_get::<Option<f32>, _>(col) {
            return Ok(v.map(f64::from));
        }
        if let Ok(v) = self.try_get::<Option<f64>, _>(col) {
            return Ok(v);
        }
        Ok(self.int(col)?.map(|i| i as f64))
    }
    fn bytes(&self, col: &str) -> Result<Option<Vec<u8>>, Error> {
        if self.try_column(col).is_err() {
            return Ok(None);
        }
        if let Ok(v) = self.try_get::<Option<Vec<u8>>, _>(col) {
            return Ok(v);
        }
        Ok(self
            .try_get::<Option<String>, _>(col)?
            .map(String::into_bytes))
    }
}

impl AnyRow for MySqlRow {
    fn int(&self, col: &str) -> Result<Option<i64>, Error> {
        if self.try_column(col).is_err() {
            return Ok(None);
        }
        if let Ok(v) = self.try_get::<Option<i64>, _>(col) {
            return Ok(v);
        }
        if let Ok(v) = self.try_get::<Option<u64>, _>(col) {
            return Ok(v.map(|u| u as i64));
        }
        Ok(self.try_get::<Option<u32>, _>(col)?.map(i64::from))
    }
    fn float(&self, col: &str) -> Result<Option<f64>, Error> {
        if self.try_column(col).is_err() {
            return Ok(None);
        }
        if let Ok(v) = self.try_get::<Option<f32>, _>(col) {
            return Ok(v.map(f64::from));
        }
        if let Ok(v) = self.try_get::<Option<f64>, _>(col) {
            return Ok(v);
        }
        Ok(self.int(col)?.map(|i| i as f64))
    }
    fn bytes(&self, col: &str) -> Result<Option<Vec<u8>>, Error> {
        if self.try_column(col).is_err() {
            return Ok(None);
        }
        if let Ok(v) = self.try_get::<Option<Vec<u8>>, _>(col) {
            return Ok(v);
        }
        Ok(self
            .try_get::<Option<String>, _>(col)?
            .map(String::into_bytes))
    }
}

/// A text column (`char`, `varchar`, or bytes read as UTF-8, lossily).
pub fn text<R: AnyRow>(row: &R, col: &str) -> Result<Option<String>, Error> {
    Ok(row
        .bytes(col)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// The first character of a `char(1)` column; ' ' for NULL or empty.
pub fn code<R: AnyRow>(row: &R, col: &str) -> Result<char, Error> {
    Ok(text(row, col)?
        .and_then(|s| s.chars().next())
        .unwrap_or(' '))
}

/// At most `max` bytes of `s`, cut at a character boundary (amavis truncates to 255).
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` with its control characters (NUL, which PostgreSQL's text cannot hold, CR, LF …) as `?`
/// and cut to `max` bytes: the header fields a sender wrote (Subject, From) may hold anything,
/// and a row the database refuses would fail a quarantine store (a 451 each retry).
pub fn clean_text(s: &str, max: usize) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    truncate(&s, max).to_string()
}

/// `s` cut to 255 bytes with every octet outside printable ASCII as `?`, as amavis stores
/// Message-ID, quarantine location and SMTP responses.
pub fn printable7(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    truncate(&s, 255).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_outside_quotes() {
        assert_eq!(
            number_placeholders("SELECT '?' FROM t WHERE a=? AND b IN (?,?)"),
            "SELECT '?' FROM t WHERE a=$1 AND b IN ($2,$3)"
        );
    }

    #[test]
    fn url_schemes() {
        assert_eq!(
            Backend::of_url("postgresql://h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::of_url("postgres://h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(Backend::of_url("mysql://h/db").unwrap(), Backend::MySql);
        assert_eq!(Backend::of_url("MariaDB://h/db").unwrap(), Backend::MySql);
        assert!(Backend::of_url("sqlite://x").is_err());
        assert!(Backend::of_url("h/db").is_err());
    }

    #[test]
    fn config_errors_name_the_key() {
        let c = SqlConfig {
            log: true,
            ..SqlConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("`sql.url`"));
        let c = SqlConfig {
            url: "postgresql://localhost/x".into(),
            chunk_size: 1,
            ..SqlConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`sql.chunk_size`"));
        let c: SqlConfig =
            toml::from_str("url = \"mysql://u:p@127.0.0.1/db\"\nlog = true").unwrap();
        c.validate().unwrap();
        assert!(toml::from_str::<SqlConfig>("nope = 1").is_err());
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(printable7("a\u{e9}\r\nb"), "a???b");
        assert_eq!(clean_text("Grüße\0\r\n\u{85}x", 255), "Grüße????x");
    }
}
