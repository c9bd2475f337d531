//! `[milter]`: the before-queue front end, the Sendmail milter protocol Postfix's smtpd speaks
//! (`smtpd_milters`), its listeners and what a quarantine means at SMTP time.

use serde::Deserialize;

use super::check::{Check, Error};
use super::listen::{parse_policy_listen, validate_listeners, PolicyListen};

/// `[milter]`: a milter listener for Postfix's `smtpd_milters` (before-queue mode).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Milter {
    /// Where the milter listens: `"127.0.0.1:10027"`, or `"unix:/path"` for a Unix socket
    /// (Postfix's chrooted smtpd on Debian needs it under /var/spool/postfix). Default `[]`:
    /// the milter front end is off.
    pub listen: Vec<String>,
    /// Mode of the Unix sockets, octal. Default `"0666"`.
    pub socket_mode: String,
    /// Milter connections open at once. Postfix keeps one open for each SMTP session of each
    /// smtpd process, idle most of the time, so these do not take `server.max_sessions`
    /// slots; more are closed at once (Postfix then applies its `milter_default_action`).
    /// Default 256.
    pub max_connections: usize,
    /// A message whose action is `quarantine` goes to Postfix's hold queue (the milter's
    /// quarantine request; `postsuper -H` releases it) instead of postsift's quarantine.
    /// Default false: stored in postsift's quarantine, then discarded.
    pub hold: bool,
    /// Seconds a milter connection may go without a byte read or written before it is closed
    /// (a hung Postfix costs one timeout, not a slot for ever). Postfix keeps the connection
    /// open while it waits on its SMTP client, so keep this above its `smtpd_timeout` (300 s).
    /// Default 600.
    pub idle_timeout: u64,
    /// Hybrid mode (the milter and the after-queue hop in one postsift): scans the milter
    /// passed kept for the hop, by Postfix queue id, so that the hop does not scan the message
    /// again. The most kept at once (oldest out first); 0 turns the reuse off. Default 4096.
    pub reuse_entries: usize,
    /// Seconds a kept scan waits for the hop (past them the hop scans). Keep it above the
    /// time mail waits in Postfix's queue for the content_filter. Default 600.
    pub reuse_ttl: u64,
}

impl Default for Milter {
    fn default() -> Self {
        Milter {
            listen: Vec::new(),
            socket_mode: "0666".into(),
            max_connections: 256,
            hold: false,
            idle_timeout: 600,
            reuse_entries: 4096,
            reuse_ttl: 600,
        }
    }
}

impl Milter {
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    /// The listen entries, parsed (validated at load).
    pub fn listeners(&self) -> Vec<PolicyListen> {
        self.listen
            .iter()
            .filter_map(|l| parse_policy_listen(l))
            .collect()
    }

    /// Whether the milter keeps its scans for the after-queue hop (hybrid mode).
    pub fn reuses(&self) -> bool {
        self.enabled() && self.reuse_entries > 0
    }

    /// The socket mode, parsed (validated at load).
    pub fn socket_mode(&self) -> u32 {
        u32::from_str_radix(&self.socket_mode, 8).unwrap_or(0o666)
    }

    pub(super) fn validate(&self, check: Check) -> Result<(), Error> {
        validate_listeners(
            check,
            ("milter.listen", &self.listen),
            ("milter.socket_mode", &self.socket_mode),
        )?;
        check.seconds(&[
            ("milter.idle_timeout", self.idle_timeout),
            ("milter.reuse_ttl", self.reuse_ttl),
        ])?;
        check.at_least_one(&[("milter.max_connections", self.max_connections as u64)])
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn absent_is_off_and_listen_takes_tcp_and_unix() {
        let c = Config::parse("", Path::new("t.toml")).unwrap();
        assert!(!c.milter.enabled());
        let c = Config::parse(
            "[milter]\nlisten = [\"127.0.0.1:10027\", \"unix:/run/postsift/milter.sock\"]\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.milter.listeners().len(), 2);
    }

    #[test]
    fn a_bad_listen_entry_names_the_key() {
        let e = Config::parse(
            "[milter]\nlisten = [\"milter.sock\"]\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`milter.listen`"), "{e}");
        let e = Config::parse("[milter]\nmax_connections = 0\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`milter.max_connections`"), "{e}");
    }
}
