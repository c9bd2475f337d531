//! Mail authentication's own series (results by method, DKIM results left out, the checks'
//! time) and its DNS lookups'; a leaf of `scan`, so that `auth` and the scan metrics both use it.

use prometheus::{Histogram, IntCounter, IntCounterVec, Registry};

/// Mail authentication methods (`spf` is the MAIL FROM identity).
pub const AUTH_METHODS: &[&str] = &["spf", "spf_helo", "dkim", "dmarc", "arc"];
/// Their results (RFC 8601's words).
pub const AUTH_RESULTS: &[&str] = &[
    "pass",
    "fail",
    "softfail",
    "neutral",
    "policy",
    "none",
    "temperror",
    "permerror",
];

/// The series of mail authentication, and of its DNS lookups and cache.
#[derive(Clone)]
pub struct AuthMetrics {
    /// Mail authentication results, by method (one per DKIM signature) and result.
    pub auth_results: IntCounterVec,
    /// DKIM results left out of `Authentication-Results` (over `auth.max_dkim_results`).
    pub auth_dkim_results_omitted: IntCounter,
    /// Time all authentication checks of one message took together.
    pub auth_duration: Histogram,
    /// The DNS lookups and cache of mail authentication (see `dns`).
    pub dns: crate::dns::DnsMetrics,
}

impl AuthMetrics {
    pub fn register(r: &Registry) -> AuthMetrics {
        use crate::metrics::{counter, counter0, histogram};
        AuthMetrics {
            auth_dkim_results_omitted: counter0(
                r,
                "postsift_auth_dkim_results_omitted_total",
                "DKIM results left out of Authentication-Results (over auth.max_dkim_results)",
            ),
            auth_results: counter(
                r,
                "postsift_auth_results_total",
                "Mail authentication results, by method (one per DKIM signature) and result",
                &["method", "result"],
                &[AUTH_METHODS, AUTH_RESULTS],
            ),
            auth_duration: histogram(
                r,
                "postsift_auth_duration_seconds",
                "Time the mail authentication checks of one message took together",
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            ),
            dns: crate::dns::DnsMetrics::register(r),
        }
    }
}
