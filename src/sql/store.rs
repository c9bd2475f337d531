//! Everything `[sql]` asks for, built once from the config: the pool, the log writer (with
//! `sql.log`), the quarantine, the lookups (with `sql.lookups`) and their metrics. What the
//! runtime will hold; a reload builds a new one and drops the old (its log writer finishes the
//! backlog it has, then ends).

use prometheus::Registry;
use tokio::task::JoinHandle;

use super::log::{LogHandle, LogWriter};
use super::lookups::SqlLookups;
use super::metrics::SqlMetrics;
use super::quarantine::SqlQuarantine;
use super::{Error, Pool, SqlConfig};

/// The SQL parts of one runtime.
pub struct SqlStore {
    pub pool: Pool,
    pub metrics: SqlMetrics,
    /// With `sql.log`: where the message path submits its records.
    pub log: Option<LogHandle>,
    /// The log writer's task (ends when every [`LogHandle`] is dropped).
    pub log_task: Option<JoinHandle<()>>,
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
        cfg.validate()?;
        let pool = Pool::connect_lazy(cfg)?;
        let metrics = SqlMetrics::register(registry);
        let (log, log_task) = if cfg.log {
            let (h, t) = LogWriter::spawn(pool.clone(), cfg, metrics.clone());
            (Some(h), Some(t))
        } else {
            (None, None)
        };
        Ok(SqlStore {
            quarantine: SqlQuarantine::new(pool.clone(), cfg, metrics.clone()),
            lookups: cfg
                .lookups
                .then(|| SqlLookups::new(pool.clone(), cfg, metrics.clone())),
            pool,
            metrics,
            log,
            log_task,
        })
    }
}
