//! `[reinject]`: where scanned mail goes back into Postfix.

use std::net::SocketAddr;

use serde::Deserialize;

use super::check::{Check, Error};

/// `[reinject]`: where scanned mail goes back into Postfix.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Reinject {
    /// The reinjection smtpd, `host:port`. Default `"127.0.0.1:10025"`.
    pub to: String,
    /// Seconds to connect. Default 30.
    pub connect_timeout: u64,
    /// Seconds for each command's reply. Default 300.
    pub command_timeout: u64,
    /// Seconds for the reply to the final dot. Default 600.
    pub data_timeout: u64,
    /// Idle connections kept open for reuse. Default 16.
    pub max_idle: usize,
    /// Name sent in EHLO. Default: `server.hostname`.
    pub helo: Option<String>,
}

impl Default for Reinject {
    fn default() -> Self {
        Reinject {
            to: "127.0.0.1:10025".into(),
            connect_timeout: 30,
            command_timeout: 300,
            data_timeout: 600,
            max_idle: 16,
            helo: None,
        }
    }
}

impl Reinject {
    pub(super) fn validate(&self, check: Check) -> Result<(), Error> {
        if self.to.parse::<SocketAddr>().is_err() && !self.to.contains(':') {
            return Err(check.bad("reinject.to", "expected host:port"));
        }
        check.seconds(&[
            ("reinject.connect_timeout", self.connect_timeout),
            ("reinject.command_timeout", self.command_timeout),
            ("reinject.data_timeout", self.data_timeout),
        ])
    }
}
