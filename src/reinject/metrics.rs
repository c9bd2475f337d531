//! The series of reinjection: whether the next hop answered, failures by kind.

pub const REINJECT_ERRORS: &[&str] = &[
    "connect", "timeout", "rejected", "tempfail", "network", "spool",
];

#[derive(Clone)]
pub struct ReinjectMetrics {
    pub reinject_up: prometheus::IntGauge,
    pub reinject_errors: prometheus::IntCounterVec,
}

impl ReinjectMetrics {
    pub fn register(r: &prometheus::Registry) -> ReinjectMetrics {
        ReinjectMetrics {
            reinject_up: crate::metrics::gauge(
                r,
                "postsift_reinject_up",
                "1 if the reinjection server answered recently",
            ),
            reinject_errors: crate::metrics::counter(
                r,
                "postsift_reinject_errors_total",
                "Reinjection failures by kind",
                &["kind"],
                &[REINJECT_ERRORS],
            ),
        }
    }
}
