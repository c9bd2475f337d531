//! `[metrics]`: the Prometheus endpoint and the health probe's interval.
use std::net::SocketAddr;

use serde::Deserialize;

use super::check::{Check, Error};

/// `[metrics]`: the Prometheus endpoint and the health probe behind `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// Address of the HTTP endpoint serving `/metrics`, `/healthz`, `/readyz`; `""` switches
    /// it off. Default `"127.0.0.1:9724"`.
    pub listen: String,
    /// Seconds between health probes of clamd, spamd and the reinjection server (they set
    /// `postsift_scanner_up`, `postsift_reinject_up` and `/readyz`). Default 10.
    pub probe_interval: u64,
    /// Connections the HTTP endpoint serves at once; more are closed at once (counted in
    /// `postsift_listener_refused_total{listener="metrics"}`). Default 32.
    pub max_connections: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: "127.0.0.1:9724".into(),
            probe_interval: 10,
            max_connections: 32,
        }
    }
}

impl Metrics {
    pub(super) fn validate(&self, check: Check) -> Result<(), Error> {
        check.at_least_one(&[("metrics.max_connections", self.max_connections as u64)])?;
        check.seconds(&[("metrics.probe_interval", self.probe_interval)])?;
        if !self.listen.is_empty() && self.listen.parse::<SocketAddr>().is_err() {
            return Err(check.bad(
                "metrics.listen",
                "expected ip:port, or \"\" to switch it off",
            ));
        }
        Ok(())
    }
}
