//! A listener of the side services (`greylist.listen`, `quarantine.release_listen`): an
//! `ip:port` or a `unix:/absolute/path`.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::check::{Check, Error};

/// A `greylist.listen` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

pub(super) fn parse_policy_listen(s: &str) -> Option<PolicyListen> {
    if let Some(p) = s.strip_prefix("unix:") {
        return (p.starts_with('/')).then(|| PolicyListen::Unix(p.into()));
    }
    s.parse().ok().map(PolicyListen::Tcp)
}

/// Checks a side service's `listen` entries and its unix sockets' octal `socket_mode`, naming
/// `listen_key` or `mode_key` in the error (greylist and milter share the rules).
pub(super) fn validate_listeners(
    check: Check,
    (listen_key, listen): (&'static str, &[String]),
    (mode_key, socket_mode): (&'static str, &str),
) -> Result<(), Error> {
    for l in listen {
        if parse_policy_listen(l).is_none() {
            return Err(check.bad(
                listen_key,
                format!("{l:?}: expected ip:port or unix:/absolute/path"),
            ));
        }
    }
    if u32::from_str_radix(socket_mode, 8).map_or(true, |m| m > 0o777) {
        return Err(check.bad(mode_key, "expected an octal mode such as \"0660\""));
    }
    Ok(())
}
