//! `[health]`: when a peer counts as down, and how it is probed.
use serde::Deserialize;

use super::check::{Check, Error};

/// `[health]`: each peer's health state (see [`crate::peers`]); the probe runs every
/// `metrics.probe_interval` seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Health {
    /// Consecutive timeouts or connection failures (messages' or probes') after which an
    /// endpoint is marked down and skipped until a probe answers. Default 3.
    pub down_after: u32,
    /// Seconds one probe of one endpoint may take. Default 5.
    pub probe_timeout: u64,
    /// The name the resolver is asked for (its SOA record) to probe it; any answer, NXDOMAIN
    /// included, proves it alive. Not `localhost.`: the resolver library answers that itself.
    /// Default `"."`.
    pub dns_probe_name: String,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            down_after: 3,
            probe_timeout: 5,
            dns_probe_name: ".".into(),
        }
    }
}

impl Health {
    pub(super) fn validate(&self, check: Check) -> Result<(), Error> {
        check.seconds(&[("health.probe_timeout", self.probe_timeout)])?;
        check.at_least_one(&[("health.down_after", self.down_after.into())])?;
        if self.dns_probe_name.trim().is_empty() {
            return Err(check.bad("health.dns_probe_name", "must be a DNS name"));
        }
        Ok(())
    }
}
