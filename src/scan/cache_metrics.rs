//! The verdict cache's series (lookups by cache and result, evictions, bytes held) and the
//! [`Kind`] of cache their label names. A leaf of `scan`: `scan::metrics` registers it and
//! `scan::cache` records into it.

use prometheus::{IntCounterVec, IntGauge, Registry};

/// Which cache an answer is in, as the `cache` metric label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// clamd's answer for one stream (a message or a decoded part).
    Clamd,
    /// The spam engine's answer for one message.
    Spam,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Clamd, Kind::Spam];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Clamd => "clamd",
            Kind::Spam => "spam",
        }
    }
}

/// The series of the cache: lookups by result, evictions, bytes held.
#[derive(Clone)]
pub struct CacheMetrics {
    pub lookups: IntCounterVec,
    pub evictions: IntCounterVec,
    pub bytes: IntGauge,
}

impl CacheMetrics {
    pub fn register(r: &Registry) -> CacheMetrics {
        use crate::metrics::{counter, gauge};
        let caches = Kind::ALL.map(Kind::label);
        CacheMetrics {
            lookups: counter(
                r,
                "postsift_cache_lookups_total",
                "Verdict cache lookups by cache (clamd: per stream, spam: per message) and result",
                &["cache", "result"],
                &[&caches, &["hit", "miss"]],
            ),
            evictions: counter(
                r,
                "postsift_cache_evictions_total",
                "Answers dropped from the verdict cache to stay within cache.max_bytes",
                &["cache"],
                &[&caches],
            ),
            bytes: gauge(
                r,
                "postsift_cache_bytes",
                "Bytes the verdict cache holds (at most cache.max_bytes)",
            ),
        }
    }

    pub(super) fn looked_up(&self, kind: Kind, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.lookups
            .with_label_values(&[kind.label(), result])
            .inc();
    }
}
