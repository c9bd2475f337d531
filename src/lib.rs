//! postsift: an after-queue content filter for Postfix, in place of amavisd-new.
//!
//! Mail flows one way, and the modules read in that order:
//!
//! ```text
//! Postfix ──LMTP/SMTP──▶ server ──▶ smtp::session ──▶ message (spooled)
//!                                        │ Received          │
//!                                        ▼                   ▼
//!                                     filter ──▶ scan (clamd ‖ spamd/rspamd) ──▶ policy
//!                                        │                                        │
//! Postfix ◀──SMTP + XFORWARD── reinject ◀── rewrite (headers) ◀──── verdict ──────┘
//! ```
//!
//! Before the scan, [`banks`] groups the recipients by the `[[policy]]` banks that apply to
//! them; the filter scans once for all groups, then decides, rewrites and reinjects per group.
//!
//! The `smtp` side speaks the protocol and turns the [`filter`]'s typed [`filter::Outcome`]
//! into replies (`smtp::reply`); nothing below it imports `smtp`. Beside it, [`greylist`]
//! answers Postfix's `check_policy_service` (postgrey's greylisting) on listeners of its own,
//! under the same accept loop, drain and metrics. [`config`] feeds every stage; [`metrics`]
//! observes every stage and [`health`] probes the peers for `/readyz`. What policy sends to
//! [`quarantine`] is stored durably before the client's 250, and released from there (CLI,
//! AM.PDP) through the same reinjection. Outgoing mail is DKIM-signed by [`sign`] after its
//! headers are rewritten, just before it is reinjected. The client gets its reply
//! only after the reinjection server answered, so Postfix keeps the message until it is safely
//! back in its queue.

pub mod banks;
pub mod config;
pub mod dns;
pub mod docs;
pub mod escape;
pub mod filter;
pub mod fsmode;
pub mod greylist;
pub mod health;
pub mod import_amavis;
pub mod message;
pub mod metrics;
pub mod peers;
pub mod policy;
pub mod quarantine;
pub mod reinject;
pub mod rewrite;
pub mod scan;
pub mod server;
pub mod sign;
pub mod smtp;
pub mod sql;
pub mod xforward;

use std::path::PathBuf;

pub use server::{serve, serve_with_reload, Reload};

/// What every session shares: configuration, scanner clients, the reinjection pool, and the
/// shutdown signal. A reload builds a new one for new sessions; a session keeps the one it
/// started with to its end. Only `metrics` (and `shutdown`) outlive a reload.
pub struct Shared {
    pub config: config::Config,
    pub hostname: String,
    pub spool_dir: PathBuf,
    pub scanners: scan::Scanners,
    pub reinjector: reinject::Reinjector,
    pub metrics: std::sync::Arc<metrics::Metrics>,
    /// Memory and spool files all messages together may hold (kept across reloads).
    pub budget: std::sync::Arc<message::Budget>,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The policy service's answerer when `[greylist] listen` is set (the server fills it in;
    /// its store outlives reloads).
    pub greylist: Option<std::sync::Arc<greylist::Greylist>>,
    /// The quarantine, when the configuration can quarantine or release (the server opens it
    /// once; it outlives reloads).
    pub quarantine: Option<std::sync::Arc<quarantine::Quarantine>>,
}

impl Shared {
    /// With a fresh metrics registry; configured scanners start "down" until the first probe or
    /// scan says otherwise.
    pub fn new(config: config::Config, shutdown: tokio_util::sync::CancellationToken) -> Shared {
        let budget = message::Budget::new(config.server.max_memory, config.server.max_spool_files);
        let shared = Shared::with_metrics(
            config,
            shutdown,
            std::sync::Arc::new(metrics::Metrics::new()),
            budget,
        );
        for name in shared.scanner_names() {
            shared.metrics.set_scanner_up(name, false);
        }
        shared
    }

    /// Builds the scanner clients and the reinjection pool for `config`, recording into
    /// `metrics` and taking spool memory from `budget`, which the caller keeps across reloads
    /// (the Prometheus registry must survive them, and messages in flight keep their share of
    /// the budget). Leaves the metric values alone; sets the budget's limits from `config`.
    pub fn with_metrics(
        config: config::Config,
        shutdown: tokio_util::sync::CancellationToken,
        metrics: std::sync::Arc<metrics::Metrics>,
        budget: std::sync::Arc<message::Budget>,
    ) -> Shared {
        budget.set_limits(config.server.max_memory, config.server.max_spool_files);
        metrics.declare_banks(&config);
        let shared = Shared {
            metrics,
            hostname: config.hostname(),
            spool_dir: config.spool_dir(),
            scanners: scan::Scanners::new(&config).with_budget(budget.clone()),
            budget,
            reinjector: reinject::Reinjector::new(&config),
            config,
            shutdown,
            greylist: None,
            quarantine: None,
        };
        for g in shared.peer_groups() {
            g.observe(shared.metrics.peer_metrics(g.peer()));
        }
        shared
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
    pub fn scanner_names(&self) -> Vec<&'static str> {
        let clamd = self.scanners.clamd().map(|_| "clamd");
        let spam = self.scanners.spam().map(|e| e.name());
        clamd.into_iter().chain(spam).collect()
    }
}
