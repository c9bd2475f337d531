//! postsift: an after-queue content filter for Postfix, in place of amavisd-new.
//!
//! Mail flows one way, and the modules read in that order:
//!
//! ```text
//! Postfix ──LMTP/SMTP──▶ server ──▶ smtp::session ──▶ message (spooled) ──▶ scan (clamd ‖ spamd)
//!                                                                               │
//! Postfix ◀──SMTP + XFORWARD── reinject ◀── rewrite (headers) ◀── policy (verdict → action)
//! ```
//!
//! [`config`] feeds every stage; [`metrics`] observes every stage and [`health`] probes the
//! peers for `/readyz`. The client gets its reply only after the reinjection server
//! answered, so Postfix keeps the message until it is safely back in its queue.

pub mod config;
pub mod health;
pub mod message;
pub mod metrics;
pub mod policy;
pub mod reinject;
pub mod rewrite;
pub mod scan;
pub mod server;
pub mod smtp;

use std::path::PathBuf;

pub use server::serve;

/// What every session shares: configuration, scanner clients, the reinjection pool, and the
/// shutdown signal.
pub struct Shared {
    pub config: config::Config,
    pub hostname: String,
    pub spool_dir: PathBuf,
    pub scanners: scan::Scanners,
    pub reinjector: reinject::Reinjector,
    pub metrics: std::sync::Arc<metrics::Metrics>,
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Shared {
    pub fn new(config: config::Config, shutdown: tokio_util::sync::CancellationToken) -> Shared {
        let metrics = metrics::Metrics::new();
        // Configured scanners start "down" until the first probe or scan says otherwise.
        if !config.clamd.endpoints.is_empty() {
            metrics.set_scanner_up("clamd", false);
        }
        let scanners = scan::Scanners::new(&config);
        if let Some(engine) = scanners.spam() {
            metrics.set_scanner_up(engine.name(), false);
        }
        Shared {
            metrics: std::sync::Arc::new(metrics),
            hostname: config.hostname(),
            spool_dir: config.spool_dir(),
            scanners,
            reinjector: reinject::Reinjector::new(&config),
            config,
            shutdown,
        }
    }
}
