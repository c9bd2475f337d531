//! The series of the listeners and sessions: open and finished sessions, replies by class,
//! connections refused at accept, spool use, and configuration reloads.

use prometheus::{Gauge, IntCounterVec, IntGauge, Registry};

use crate::metrics::{counter, float_gauge, gauge};

pub const PROTOCOLS: &[&str] = &["smtp", "esmtp", "lmtp", "none"];
pub const REPLY_CLASSES: &[&str] = &["2xx", "4xx", "5xx"];
pub const RELOAD_RESULTS: &[&str] = &["success", "failure"];
/// A listener that closes connections over its limit at accept (the `listener` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Policy,
    Release,
    Metrics,
}

impl Listener {
    pub const ALL: [Listener; 3] = [Listener::Policy, Listener::Release, Listener::Metrics];

    pub fn label(self) -> &'static str {
        match self {
            Listener::Policy => "policy",
            Listener::Release => "release",
            Listener::Metrics => "metrics",
        }
    }
}

#[derive(Clone)]
pub struct ServerMetrics {
    pub sessions_active: IntGauge,
    pub sessions: IntCounterVec,
    pub replies: IntCounterVec,
    /// Bytes of message data held in memory by all spools (`server.max_memory` caps it).
    pub spool_memory: IntGauge,
    /// Spool files open (`server.max_spool_files` caps it).
    pub spool_files: IntGauge,
    /// Connections closed at accept because their listener's limit was reached, by listener
    /// ("policy", "release", "metrics").
    pub listener_refused: IntCounterVec,
    pub config_reloads: IntCounterVec,
    /// Unix time of the last configuration taken into use: set at start and at every
    /// successful reload.
    pub config_last_reload_success: Gauge,
}

impl ServerMetrics {
    pub fn register(r: &Registry) -> ServerMetrics {
        ServerMetrics {
            sessions_active: gauge(r, "postsift_sessions_active", "Open SMTP/LMTP sessions"),
            sessions: counter(
                r,
                "postsift_sessions_total",
                "Finished sessions by protocol",
                &["protocol"],
                &[PROTOCOLS],
            ),
            replies: counter(
                r,
                "postsift_smtp_replies_total",
                "Replies sent to clients, by class",
                &["class"],
                &[REPLY_CLASSES],
            ),
            spool_memory: gauge(
                r,
                "postsift_spool_memory_bytes",
                "Bytes of message data held in memory by all messages (capped by server.max_memory)",
            ),
            spool_files: gauge(
                r,
                "postsift_spool_files",
                "Spool files open (capped by server.max_spool_files)",
            ),
            listener_refused: counter(
                r,
                "postsift_listener_refused_total",
                "Connections closed at accept: the listener's connection limit was reached",
                &["listener"],
                &[&Listener::ALL.map(Listener::label)],
            ),
            config_reloads: counter(
                r,
                "postsift_config_reloads_total",
                "Configuration reloads (SIGHUP), by result",
                &["result"],
                &[RELOAD_RESULTS],
            ),
            config_last_reload_success: float_gauge(
                r,
                "postsift_config_last_reload_success_timestamp_seconds",
                "Unix time of the last configuration taken into use (start or reload)",
            ),
        }
    }

    /// The counter of connections `listener` closed at accept.
    pub fn refused(&self, listener: Listener) -> prometheus::IntCounter {
        self.listener_refused.with_label_values(&[listener.label()])
    }

    /// A configuration was taken into use (at start, or by a successful reload).
    pub fn config_applied(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.config_last_reload_success.set(now.as_secs_f64());
    }

    /// Counts one reload attempt; a success also moves the timestamp.
    pub fn reload_done(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
        if ok {
            self.config_applied();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_counts_by_result_and_moves_the_timestamp_on_success() {
        let m = ServerMetrics::register(&Registry::new());
        m.reload_done(false);
        assert_eq!(m.config_reloads.with_label_values(&["failure"]).get(), 1);
        assert_eq!(m.config_last_reload_success.get(), 0.0);
        m.reload_done(true);
        assert_eq!(m.config_reloads.with_label_values(&["success"]).get(), 1);
        assert!(m.config_last_reload_success.get() > 1.6e9);
    }
}
