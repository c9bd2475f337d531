//! The runtime: what one configuration builds to serve mail (scanner clients, the reinjection
//! pool, the greylisting answerer, the quarantine), and the metrics every part registers once.
//! A reload builds a new [`Runtime`] for new sessions; a session keeps the one it started with
//! to its end. What outlives reloads (the registry and its series, the memory budget, the
//! shutdown signal, the stores opened once) is [`Lasting`].

use std::path::PathBuf;
use std::sync::Arc;

use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use crate::filter::metrics::FilterMetrics;
use crate::greylist::{self, GreylistMetrics};
use crate::metrics::Endpoint;
use crate::milter::metrics::MilterMetrics;
use crate::peers::HealthMetrics;
use crate::quarantine::{Quarantine, QuarantineMetrics};
use crate::reinject::ReinjectMetrics;
use crate::scan::ScanMetrics;
use crate::server::metrics::ServerMetrics;
use crate::sign::SignMetrics;
use crate::sql::metrics::SqlMetrics;
use crate::sql::store::SqlStore;
use crate::{config, message, peers, reinject, scan, sign};

/// Every part's series, registered once in one registry (a reload keeps them: a registry takes
/// each name once). Each part records into its own handles only.
pub struct Metrics {
    /// The registry, and the readiness `/readyz` serves.
    pub endpoint: Arc<Endpoint>,
    pub server: ServerMetrics,
    pub filter: FilterMetrics,
    pub scan: ScanMetrics,
    pub reinject: ReinjectMetrics,
    pub peers: HealthMetrics,
    pub greylist: GreylistMetrics,
    pub quarantine: QuarantineMetrics,
    /// DKIM signing of outgoing mail (see `sign`).
    pub dkim_sign: SignMetrics,
    /// The SQL store's series (`postsift_sql_*`), present whether or not `[sql]` is set.
    pub sql: SqlMetrics,
    /// The milter front end (see `milter`).
    pub milter: MilterMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every part's series in a fresh registry.
    pub fn new() -> Metrics {
        Metrics::register(Registry::new())
    }

    /// Every part's series in `registry`, which the endpoint then serves.
    pub fn register(registry: Registry) -> Metrics {
        let r = &registry;
        crate::metrics::register_process(r);
        let server = ServerMetrics::register(r);
        let refused = server.refused(crate::server::metrics::Listener::Metrics);
        Metrics {
            filter: FilterMetrics::register(r),
            scan: ScanMetrics::register(r),
            reinject: ReinjectMetrics::register(r),
            peers: HealthMetrics::register(r),
            greylist: GreylistMetrics::register(r),
            quarantine: QuarantineMetrics::register(r),
            dkim_sign: SignMetrics::register(r),
            sql: SqlMetrics::register(r),
            milter: MilterMetrics::register(r),
            server,
            endpoint: Arc::new(Endpoint::new(registry, refused)),
        }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        self.endpoint.encode()
    }
}

/// What outlives a reload: the metrics, the memory budget, the shutdown signal, and the stores
/// opened once (the greylisting store and the quarantine).
#[derive(Clone)]
pub struct Lasting {
    pub metrics: Arc<Metrics>,
    /// Memory and spool files all messages together may hold.
    pub budget: Arc<message::Budget>,
    pub shutdown: CancellationToken,
    /// The greylisting store when `[greylist] listen` was set at start.
    pub greylist_store: Option<Arc<greylist::store::Store>>,
    /// The quarantine, when the configuration can quarantine or release.
    pub quarantine: Option<Arc<Quarantine>>,
    /// The SQL store of the last build (see [`Lasting::sql_store`]).
    pub sql: Arc<std::sync::Mutex<Option<Arc<SqlStore>>>>,
    /// Hybrid mode: the milter's scans kept for the after-queue hop.
    pub reports: Arc<crate::filter::reuse::Reports>,
}

impl Lasting {
    /// The SQL store for `cfg`: the last one built if its `[sql]` is the same (a reload keeps
    /// the pool, the log writer and the lookup cache), else a new one (the old ends with the
    /// sessions that hold it). None when `sql.url` is empty. Needs a tokio runtime.
    pub fn sql_store(&self, cfg: &config::SqlConfig) -> Result<Option<Arc<SqlStore>>, Error> {
        let mut slot = self.sql.lock().unwrap_or_else(|e| e.into_inner());
        if !cfg.enabled() {
            *slot = None;
            return Ok(None);
        }
        if let Some(s) = slot.as_ref().filter(|s| s.config == *cfg) {
            return Ok(Some(s.clone()));
        }
        let s = Arc::new(SqlStore::with_metrics(cfg, self.metrics.sql.clone())?);
        *slot = Some(s.clone());
        Ok(Some(s))
    }

    /// At shutdown: the SQL log writes its backlog (for up to `sql.timeout`).
    pub async fn close_sql(&self) {
        let store = self.sql.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(s) = store {
            s.close(s.config.timeout()).await;
        }
    }

    /// Fresh metrics and budget, no stores.
    pub fn new(config: &config::Config, shutdown: CancellationToken) -> Lasting {
        Lasting {
            metrics: Arc::new(Metrics::new()),
            budget: message::Budget::new(config.server.max_memory, config.server.max_spool_files),
            shutdown,
            greylist_store: None,
            quarantine: None,
            sql: Default::default(),
            reports: Default::default(),
        }
    }
}

/// Why a runtime could not be built from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("greylist: {0}")]
    Greylist(#[from] greylist::whitelist::Error),
    /// A DKIM signing key that cannot be loaded; the message names `dkim_sign.keys[i].key`.
    #[error("{0}")]
    DkimKey(#[from] config::Error),
    /// `[sql]` that cannot be used (a URL sqlx cannot read).
    #[error("sql: {0}")]
    Sql(#[from] crate::sql::Error),
}

/// What every session shares: configuration, scanner clients, the reinjection pool, and the
/// shutdown signal. A reload builds a new one for new sessions; a session keeps the one it
/// started with to its end.
pub struct Runtime {
    pub config: config::Config,
    pub hostname: String,
    pub spool_dir: PathBuf,
    pub scanners: scan::Scanners,
    pub reinjector: reinject::Reinjector,
    pub metrics: Arc<Metrics>,
    /// Memory and spool files all messages together may hold (kept across reloads).
    pub budget: Arc<message::Budget>,
    pub shutdown: CancellationToken,
    /// The policy service's answerer when `[greylist] listen` is set (its store outlives
    /// reloads).
    pub greylist: Option<Arc<greylist::Greylist>>,
    /// The quarantine, when the configuration can quarantine or release (opened once; it
    /// outlives reloads).
    pub quarantine: Option<Arc<Quarantine>>,
    /// The DKIM signing keys `[dkim_sign] keys` names, loaded when the runtime is built.
    pub dkim_keys: sign::Keys,
    /// The SQL store when `sql.url` is set (kept across reloads while `[sql]` is unchanged).
    pub sql: Option<Arc<SqlStore>>,
    /// Hybrid mode: the milter's scans kept for the after-queue hop (they outlive reloads).
    pub reports: Arc<crate::filter::reuse::Reports>,
}

impl Runtime {
    /// With fresh metrics and no stores; configured scanners start "down" until the first probe
    /// or scan says otherwise.
    pub fn new(config: config::Config, shutdown: CancellationToken) -> Result<Runtime, Error> {
        let lasting = Lasting::new(&config, shutdown);
        let rt = Runtime::build(config, &lasting)?;
        rt.declare_scanners();
        Ok(rt)
    }

    /// Builds the scanner clients, the reinjection pool and the greylisting answerer for
    /// `config`, recording into `lasting`'s metrics and taking spool memory from its budget
    /// (messages in flight keep their share). Leaves the metric values alone; sets the
    /// budget's limits from `config`.
    pub fn build(config: config::Config, lasting: &Lasting) -> Result<Runtime, Error> {
        // What can fail comes first, so that a failed build (a reload) changes nothing.
        let dkim_keys = sign::Keys::configured(&config)?;
        let metrics = lasting.metrics.clone();
        // The whitelist files are read again at each build; the store stays.
        let greylist = match &lasting.greylist_store {
            Some(store) => Some(Arc::new(greylist::Greylist::new(
                &config,
                store.clone(),
                metrics.greylist.clone(),
            )?)),
            None => None,
        };
        let sql = lasting.sql_store(&config.sql)?;
        let budget = lasting.budget.clone();
        budget.set_limits(config.server.max_memory, config.server.max_spool_files);
        metrics
            .filter
            .declare_banks(config.policy.iter().map(|b| b.name.as_str()));
        let rt = Runtime {
            hostname: config.hostname(),
            spool_dir: config.spool_dir(),
            scanners: scan::Scanners::new(&config).with_budget(budget.clone()),
            reinjector: reinject::Reinjector::new(&config),
            metrics,
            budget,
            config,
            shutdown: lasting.shutdown.clone(),
            greylist,
            quarantine: lasting.quarantine.clone(),
            dkim_keys,
            sql,
            reports: lasting.reports.clone(),
        };
        for g in rt.peer_groups() {
            g.observe(rt.metrics.peers.peer_metrics(g.peer()));
        }
        Ok(rt)
    }

    /// Shows every configured scanner as down until the first probe or scan.
    pub fn declare_scanners(&self) {
        for name in self.scanner_names() {
            self.metrics.scan.set_scanner_up(name, false);
        }
    }

    /// The health state of every peer this configuration uses (see [`peers`]).
    pub fn peer_groups(&self) -> Vec<&peers::Group> {
        let s = &self.scanners;
        [
            s.auth().map(|a| a.resolver().health()),
            s.clamd().map(|c| c.health()),
            s.spam().map(|e| e.health()),
            Some(self.reinjector.health()),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The `scanner` label of every scanner this configuration uses.
    pub fn scanner_names(&self) -> Vec<scan::Scanner> {
        let clamd = self.scanners.clamd().map(|_| scan::Scanner::Clamd);
        let spam = self.scanners.spam().map(|e| e.scanner());
        clamd.into_iter().chain(spam).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_from_the_start() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(
            text.contains("postsift_messages_total{action=\"tempfail\",frontend=\"content_filter\",verdict=\"unchecked\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("postsift_scanner_errors_total{kind=\"timeout\",scanner=\"spamd\"} 0")
        );
        assert!(
            text.contains("postsift_stage_duration_seconds_bucket{stage=\"scan\",le=\"0.005\"} 0")
        );
        assert!(text.contains(&format!(
            "postsift_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains("postsift_sessions_total{protocol=\"lmtp\"} 0"));
        assert!(text.contains("process_resident_memory_bytes"));
        assert!(text.contains("postsift_config_reloads_total{result=\"success\"} 0"));
        assert!(text.contains("postsift_config_reloads_total{result=\"failure\"} 0"));
        assert!(text.contains("postsift_config_last_reload_success_timestamp_seconds 0"));
    }

    /// A reload that leaves `[sql]` as it was keeps the store (its pool, log writer and lookup
    /// cache); one that changes it gets a new one; none without `sql.url`.
    #[tokio::test]
    async fn sql_store_is_kept_across_builds_while_sql_is_unchanged() {
        let parse = |t: &str| config::Config::parse(t, std::path::Path::new("t.toml")).unwrap();
        let sql = "[sql]\nurl = \"postgresql://postsift@127.0.0.1:9/amavis\"\nlog = true\n";
        let c = parse(sql);
        let lasting = Lasting::new(&c, CancellationToken::new());
        let a = Runtime::build(c.clone(), &lasting).unwrap();
        let b = Runtime::build(c, &lasting).unwrap();
        let (sa, sb) = (a.sql.clone().unwrap(), b.sql.clone().unwrap());
        assert!(Arc::ptr_eq(&sa, &sb));
        assert!(sa.log.is_some() && sa.lookups.is_none());
        let changed = Runtime::build(parse(&format!("{sql}lookups = true\n")), &lasting).unwrap();
        let sc = changed.sql.clone().unwrap();
        assert!(!Arc::ptr_eq(&sa, &sc) && sc.lookups.is_some());
        assert!(Runtime::build(parse(""), &lasting).unwrap().sql.is_none());
        // the SQL series are there without [sql]
        assert!(a
            .metrics
            .encode()
            .contains("postsift_sql_errors_total{kind=\"log_batch\"} 0"));
        lasting.close_sql().await;
        sa.close(std::time::Duration::from_secs(1)).await;
    }

    #[test]
    fn a_message_no_bank_applied_to_is_counted_as_dash() {
        let m = Metrics::new();
        assert!(m
            .encode()
            .contains("postsift_policy_bank_total{bank=\"-\"} 0"));
        m.filter.banks_applied([]);
        m.filter.banks_applied(["strict"]);
        let text = m.encode();
        assert!(
            text.contains("postsift_policy_bank_total{bank=\"-\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("postsift_policy_bank_total{bank=\"strict\"} 1"),
            "{text}"
        );
    }
}
