//! Everything `[sql]` asks for, built once from the config: the pool, the log writer (with
//! `sql.log`), the quarantine, the lookups (with `sql.lookups`) and their metrics. The runtime
//! holds one; a reload whose `[sql]` is unchanged keeps it (the pool, the writer and the lookup
//! cache carry on), one whose `[sql]` changed builds a new one and the old ends with the last
//! session that uses it (its log writer finishes the backlog it has, then ends).

use std::sync::Mutex;
use std::time::Duration;

use prometheus::Registry;
use tokio::task::JoinHandle;

use super::log::{LogHandle, LogWriter};
use super::lookups::SqlLookups;
use super::metrics::SqlMetrics;
use super::quarantine::SqlQuarantine;
use super::{Error, Pool, SqlConfig};

/// The SQL parts of one runtime.
pub struct SqlStore {
    /// The `[sql]` it was built from.
    pub config: SqlConfig,
    pub pool: Pool,
    pub metrics: SqlMetrics,
    /// With `sql.log`: where the message path submits its records.
    pub log: Option<LogHandle>,
    /// The log writer's task (ends when every [`LogHandle`] is dropped, or at
    /// [`SqlStore::close`]).
    pub log_task: Mutex<Option<JoinHandle<()>>>,
    /// The quarantine in the database (used when `[quarantine] store = "sql"`).
    pub quarantine: SqlQuarantine,
    /// With `sql.lookups`.
    pub lookups: Option<SqlLookups>,
}

impl SqlStore {
    /// Builds the store for `cfg` (validated here too) and registers its metrics on
    /// `registry`. Needs a tokio runtime (the log writer is spawned on it). Connects lazily: a
    /// database that is down does not stop postsift from starting.
    pub fn build(cfg: &SqlConfig, registry: &Registry) -> Result<SqlStore, Error> {
        SqlStore::with_metrics(cfg, SqlMetrics::register(registry))
    }

    /// Like [`SqlStore::build`], recording into `metrics` (registered once, by the runtime).
    pub fn with_metrics(cfg: &SqlConfig, metrics: SqlMetrics) -> Result<SqlStore, Error> {
        cfg.validate()?;
        let pool = Pool::connect_lazy(cfg)?;
        let (log, log_task) = if cfg.log {
            let (h, t) = LogWriter::spawn(pool.clone(), cfg, metrics.clone());
            (Some(h), Some(t))
        } else {
            (None, None)
        };
        Ok(SqlStore {
            config: cfg.clone(),
            quarantine: SqlQuarantine::new(pool.clone(), cfg, metrics.clone()),
            lookups: cfg
                .lookups
                .then(|| SqlLookups::new(pool.clone(), cfg, metrics.clone())),
            pool,
            metrics,
            log,
            log_task: Mutex::new(log_task),
        })
    }

    /// At shutdown: the log writer takes nothing more and writes its backlog, waited for up to
    /// `limit` (what is left then is lost: the messages themselves are delivered).
    pub async fn close(&self, limit: Duration) {
        let Some(log) = &self.log else { return };
        log.finish();
        let task = self
            .log_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = task {
            if tokio::time::timeout(limit, t).await.is_err() {
                tracing::warn!(
                    backlog = self.metrics.log_backlog.get(),
                    "sql log: backlog not written at shutdown"
                );
            }
        }
        let _ = tokio::time::timeout(limit, self.pool.close()).await;
    }
}

/// Checks that `cfg.url` can be read as a connection URL, without connecting (and without a
/// tokio runtime): what `check-config` and `reload` run. Err names `sql.url`.
pub fn check_url(cfg: &SqlConfig) -> Result<(), Error> {
    if !cfg.enabled() {
        return Ok(());
    }
    let bad = |e: sqlx::Error| Error::Config {
        key: "url",
        message: e.to_string(),
    };
    match super::Backend::of_url(&cfg.url)? {
        super::Backend::Postgres => cfg
            .url
            .parse::<sqlx::postgres::PgConnectOptions>()
            .map(drop)
            .map_err(bad),
        super::Backend::MySql => {
            let url = match cfg.url.split_once("://") {
                Some((s, rest)) if s.eq_ignore_ascii_case("mariadb") => format!("mysql://{rest}"),
                _ => cfg.url.clone(),
            };
            url.parse::<sqlx::mysql::MySqlConnectOptions>()
                .map(drop)
                .map_err(bad)
        }
    }
}
