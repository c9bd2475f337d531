//! The SQL store's series (`postsift_sql_*`): latency and errors per statement kind, the log's
//! backlog and drops, lookup fallbacks, and the pool's connections. Registered on the caller's
//! registry, as every component's metrics are.

use std::time::Instant;

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

use super::Pool;

/// What a unit of SQL work was, the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StmtKind {
    /// A message-log batch (maddr, msgs, msgrcpt).
    LogBatch,
    /// A message stored in the quarantine (its rows and chunks, one transaction).
    QuarantineStore,
    /// A quarantined message read back.
    QuarantineFetch,
    /// A release claim or its outcome (msgrcpt.rs).
    Claim,
    /// Retention: old rows deleted.
    Purge,
    /// users → policy.
    Policy,
    /// wblist ⋈ mailaddr.
    Wblist,
    /// `postsift sql init`.
    Schema,
}

impl StmtKind {
    pub const ALL: [StmtKind; 8] = [
        StmtKind::LogBatch,
        StmtKind::QuarantineStore,
        StmtKind::QuarantineFetch,
        StmtKind::Claim,
        StmtKind::Purge,
        StmtKind::Policy,
        StmtKind::Wblist,
        StmtKind::Schema,
    ];

    pub fn label(self) -> &'static str {
        match self {
            StmtKind::LogBatch => "log_batch",
            StmtKind::QuarantineStore => "quarantine_store",
            StmtKind::QuarantineFetch => "quarantine_fetch",
            StmtKind::Claim => "claim",
            StmtKind::Purge => "purge",
            StmtKind::Policy => "policy",
            StmtKind::Wblist => "wblist",
            StmtKind::Schema => "schema",
        }
    }
}

/// The handles the SQL store records into.
#[derive(Clone)]
pub struct SqlMetrics {
    duration: HistogramVec,
    errors: IntCounterVec,
    /// Messages waiting to be logged.
    pub log_backlog: IntGauge,
    /// Messages written to the log.
    pub log_written: IntCounter,
    /// Messages the log dropped: backlog full, or a row the database refused.
    pub log_dropped: IntCounterVec,
    /// Lookups answered from the file's configuration because the database failed.
    pub lookup_fallbacks: IntCounter,
    pool_size: IntGauge,
    pool_idle: IntGauge,
}

impl SqlMetrics {
    pub fn register(r: &Registry) -> SqlMetrics {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "postsift_sql_duration_seconds",
                "Time of SQL work by kind (a log batch, a quarantine store, a lookup …)",
            )
            .buckets(exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")),
            &["kind"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "postsift_sql_errors_total",
                "SQL work that failed, by kind (database down, timeout, refused statement)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        // Every kind's series from the first scrape (the dashboard's SQL row), with or
        // without [sql].
        for k in StmtKind::ALL {
            errors.with_label_values(&[k.label()]);
            duration.with_label_values(&[k.label()]);
        }
        let log_dropped = IntCounterVec::new(
            Opts::new(
                "postsift_sql_log_dropped_total",
                "Messages not written to the SQL log: backlog full, or rows the database refused",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in ["backlog_full", "refused"] {
            log_dropped.with_label_values(&[reason]);
        }
        let m = SqlMetrics {
            duration,
            errors,
            log_backlog: IntGauge::new(
                "postsift_sql_log_backlog",
                "Messages waiting to be written to the SQL log",
            )
            .expect("valid metric"),
            log_written: IntCounter::new(
                "postsift_sql_log_written_total",
                "Messages written to the SQL log",
            )
            .expect("valid metric"),
            log_dropped,
            lookup_fallbacks: IntCounter::new(
                "postsift_sql_lookup_fallbacks_total",
                "Per-user lookups answered from the configuration file because the database failed",
            )
            .expect("valid metric"),
            pool_size: IntGauge::new(
                "postsift_sql_pool_connections",
                "Connections open in the SQL pool",
            )
            .expect("valid metric"),
            pool_idle: IntGauge::new(
                "postsift_sql_pool_idle_connections",
                "Idle connections in the SQL pool",
            )
            .expect("valid metric"),
        };
        r.register(Box::new(m.duration.clone()))
            .expect("unique metric");
        r.register(Box::new(m.errors.clone()))
            .expect("unique metric");
        r.register(Box::new(m.log_backlog.clone()))
            .expect("unique metric");
        r.register(Box::new(m.log_written.clone()))
            .expect("unique metric");
        r.register(Box::new(m.log_dropped.clone()))
            .expect("unique metric");
        r.register(Box::new(m.lookup_fallbacks.clone()))
            .expect("unique metric");
        r.register(Box::new(m.pool_size.clone()))
            .expect("unique metric");
        r.register(Box::new(m.pool_idle.clone()))
            .expect("unique metric");
        m
    }

    /// Records one unit of work of `kind` that started at `start`, and the pool's use.
    pub fn observe<T, E>(&self, kind: StmtKind, start: Instant, pool: &Pool, r: &Result<T, E>) {
        self.duration
            .with_label_values(&[kind.label()])
            .observe(start.elapsed().as_secs_f64());
        if r.is_err() {
            self.errors.with_label_values(&[kind.label()]).inc();
        }
        let (size, idle) = pool.usage();
        self.pool_size.set(i64::from(size));
        self.pool_idle.set(idle as i64);
    }

    /// Failures of `kind` so far (tests, logs).
    pub fn errors(&self, kind: StmtKind) -> u64 {
        self.errors.with_label_values(&[kind.label()]).get()
    }
}
