//! `[dns]`: the resolver mail authentication asks, and its cache.

use std::net::SocketAddr;

use serde::Deserialize;

use super::check::{Check, Error};

/// `[dns]`: the resolver mail authentication (`[auth]`) asks. Answers are cached in-process,
/// shared by all sessions, for as long as their TTL says (see `dns`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dns {
    /// Name servers as `"ip:port"` (`"127.0.0.1:53"`, `"[::1]:5353"`), asked in order.
    /// Default `[]`: the `nameserver` lines of /etc/resolv.conf, port 53.
    pub servers: Vec<String>,
    /// Seconds to wait for one answer. Default 5.
    pub timeout: u64,
    /// Tries per query before it fails (then the check that asked gives `temperror`).
    /// Default 2.
    pub attempts: usize,
    /// Answers kept in postsift's own record cache, per record type (TXT, MX, A, AAAA, PTR);
    /// the resolver below it keeps `cache_bytes / 64 KiB` raw answers (at most as many).
    /// Default 10000.
    pub cache_size: usize,
    /// Bytes postsift's record cache keeps per record type (an estimate of each parsed
    /// answer's size, key included); the entries nearest their expiry go first. Default
    /// 8388608 (8 MiB).
    pub cache_bytes: usize,
    /// Largest answer kept in the cache, in bytes (estimated as for `cache_bytes`); a larger one
    /// is used for the message that asked and not kept. Default 16384.
    pub max_record_bytes: usize,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            servers: Vec::new(),
            timeout: 5,
            attempts: 2,
            cache_size: 10_000,
            cache_bytes: 8 << 20,
            max_record_bytes: 16 << 10,
        }
    }
}

impl Dns {
    /// The servers, parsed (validated at load).
    pub fn server_addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().filter_map(|s| s.parse().ok()).collect()
    }
}

impl Dns {
    pub(super) fn validate(&self, check: Check) -> Result<(), Error> {
        for s in &self.servers {
            if s.parse::<SocketAddr>().is_err() {
                return Err(check.bad(
                    "dns.servers",
                    format!("{s:?}: expected ip:port, such as \"127.0.0.1:53\""),
                ));
            }
        }
        check.at_least_one(&[("dns.attempts", self.attempts as u64)])?;
        if self.cache_bytes < self.max_record_bytes {
            return Err(check.bad("dns.cache_bytes", "must be at least dns.max_record_bytes"));
        }
        check.at_least_one(&[("dns.cache_size", self.cache_size as u64)])?;
        check.seconds(&[("dns.timeout", self.timeout)])
    }
}
