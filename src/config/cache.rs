//! `[cache]`: the verdict cache (see `scan::cache`): how many bytes it may hold and how long
//! an answer is reused.
use serde::Deserialize;

use super::check::{Check, Error};

/// `[cache]`: answers of clamd (per stream sent: the message, each decoded part) and of the
/// spam engine (per message) kept for reuse, so that a message Postfix retries after a 4xx,
/// or an attachment a campaign repeats, is not scanned again.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cache {
    /// Bytes the cache may hold (keys, verdicts and their bookkeeping), all caches together;
    /// the oldest answers are dropped first. 0 turns the cache off. Default 64 MiB.
    pub max_bytes: u64,
    /// Seconds an answer is reused. Postfix's first retry comes after `minimal_backoff_time`
    /// (300 s by default), so this should be longer. Default 900.
    pub ttl: u64,
    /// Seconds clamd's `VERSION` (its signature database's version, part of every clamd
    /// answer's key) is trusted before it is asked again (0: every message). New signatures
    /// make cached answers miss once `VERSION` is asked again: at most this long after clamd
    /// loaded them (clamd itself looks for a new database every `SelfCheck`, 600 s by
    /// default). Default 10.
    pub clamd_version_refresh: u64,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            max_bytes: 64 * 1024 * 1024,
            ttl: 900,
            clamd_version_refresh: 10,
        }
    }
}

impl Cache {
    pub(super) fn validate(&self, check: Check) -> Result<(), Error> {
        if self.max_bytes > 0 {
            check.seconds(&[("cache.ttl", self.ttl)])?;
        }
        Ok(())
    }
}
