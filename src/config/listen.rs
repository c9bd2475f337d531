//! A listener of the side services (`greylist.listen`, `quarantine.release_listen`): an
//! `ip:port` or a `unix:/absolute/path`.

use std::net::SocketAddr;
use std::path::PathBuf;

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
