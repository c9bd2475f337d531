//! `[greylist]`: the policy service with postgrey's decisions, its store and whitelists.

use std::path::PathBuf;

use serde::Deserialize;

use super::check::{Check, Error};
use super::listen::{parse_policy_listen, validate_listeners, PolicyListen};
use super::scanners::OnFailure;

/// `[greylist]`: a Postfix policy service with postgrey 1.37's decisions (its option in
/// brackets), for `check_policy_service` after `reject_unauth_destination`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Greylist {
    /// Where the policy service listens: `"127.0.0.1:10023"`, or `"unix:/path"` for a Unix
    /// socket (Postfix's chrooted smtpd on Debian needs it under /var/spool/postfix). Default
    /// `[]`: greylisting off.
    pub listen: Vec<String>,
    /// Mode of the Unix sockets, octal. Default `"0666"` (postgrey's `--socketmode`).
    pub socket_mode: String,
    /// Owner and group given to the Unix sockets. Default: postsift's own.
    pub socket_owner: Option<String>,
    pub socket_group: Option<String>,
    /// A file path (the embedded SQLite store) or `redis://host:port/db` (shared by several
    /// nodes). Default `"/var/lib/postsift/greylist.db"`.
    pub store: String,
    /// Seconds a new triplet waits [--delay]. Default 300.
    pub delay: u64,
    /// Days an entry (triplet or auto-whitelisted client) is kept unseen [--max-age].
    /// Default 35.
    pub max_age: u64,
    /// How long a retry may come after the first attempt and still count [--retry-window]:
    /// days, or a string `"<n>h"` for hours. Default 2 (days).
    pub retry_window: RetryWindow,
    /// Passes (at most one an hour) after which a client is not greylisted any more
    /// [--auto-whitelist-clients]; 0 switches it off. Default 5.
    pub auto_whitelist_clients: u32,
    /// Key on the client's /24 (IPv4) or /64 (IPv6) network; false: on its address
    /// [--lookup-by-host]. Default true.
    pub lookup_by_subnet: bool,
    /// postgrey whitelist files of clients [--whitelist-clients]. Default
    /// `["/etc/postgrey/whitelist_clients", "/etc/postgrey/whitelist_clients.local"]`.
    pub whitelist_clients: Vec<PathBuf>,
    /// postgrey whitelist files of recipients [--whitelist-recipients]. Default
    /// `["/etc/postgrey/whitelist_recipients", "/etc/postgrey/whitelist_recipients.local"]`.
    pub whitelist_recipients: Vec<PathBuf>,
    /// The access(5) action for a greylisted request [--greylist-action]. Default
    /// `"DEFER_IF_PERMIT"`.
    pub action: String,
    /// Its text, `%s` the seconds left, `%r` the recipient's domain [--greylist-text].
    /// Default postgrey's: `"Greylisted, see http://postgrey.schweikert.ch/help/%r.html"`.
    pub text: String,
    /// On a triplet's first pass, answer `PREPEND X-Greylist: delayed N seconds by
    /// postsift-<version> at <hostname>; <date>`. Default true.
    pub prepend_header: bool,
    /// When the store fails or times out: `"pass"` (`DUNNO`, default) or `"tempfail"`
    /// (`DEFER_IF_PERMIT 4.3.0`).
    pub on_failure: OnFailure,
    /// Seconds a store operation may take before `on_failure` applies. Default 2.
    pub store_timeout: u64,
    /// Policy connections open at once (every Postfix smtpd process keeps one); more are
    /// closed at once. Default 256.
    pub max_connections: usize,
    /// Triplets the embedded store keeps at most (about 430 bytes each on disk); past it the
    /// daemon deletes the least recently seen, down to nine tenths, every five minutes
    /// (`postsift_greylist_evicted_total`). 0: no cap (the hourly purge only). Redis keys
    /// expire after `max_age` by themselves; cap Redis with its own `maxmemory`. Default 500000.
    pub max_triplets: u64,
    /// Honour postgrey's `policy_test_time` attribute (the request's clock), for tests only.
    /// Default false.
    pub policy_test_time: bool,
}

/// `retry_window`: whole days (`2`) or hours (`"6h"`), as postgrey's option.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RetryWindow {
    Days(u64),
    Text(String),
}

impl RetryWindow {
    /// Seconds, or None if the text is not `<n>h` or `<n>`.
    pub fn seconds(&self) -> Option<u64> {
        match self {
            RetryWindow::Days(d) => d.checked_mul(86400),
            RetryWindow::Text(t) => match t.strip_suffix(['h', 'H']) {
                Some(h) => h.parse::<u64>().ok()?.checked_mul(3600),
                None => t.parse::<u64>().ok()?.checked_mul(86400),
            },
        }
    }
}

impl Default for Greylist {
    fn default() -> Self {
        Greylist {
            listen: Vec::new(),
            socket_mode: "0666".into(),
            socket_owner: None,
            socket_group: None,
            store: "/var/lib/postsift/greylist.db".into(),
            delay: 300,
            max_age: 35,
            retry_window: RetryWindow::Days(2),
            auto_whitelist_clients: 5,
            lookup_by_subnet: true,
            whitelist_clients: vec![
                "/etc/postgrey/whitelist_clients".into(),
                "/etc/postgrey/whitelist_clients.local".into(),
            ],
            whitelist_recipients: vec![
                "/etc/postgrey/whitelist_recipients".into(),
                "/etc/postgrey/whitelist_recipients.local".into(),
            ],
            action: "DEFER_IF_PERMIT".into(),
            text: "Greylisted, see http://postgrey.schweikert.ch/help/%r.html".into(),
            prepend_header: true,
            on_failure: OnFailure::Pass,
            store_timeout: 2,
            max_connections: 256,
            max_triplets: 500_000,
            policy_test_time: false,
        }
    }
}

impl Greylist {
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

    /// The socket mode, parsed (validated at load).
    pub fn socket_mode(&self) -> u32 {
        u32::from_str_radix(&self.socket_mode, 8).unwrap_or(0o666)
    }

    pub(super) fn validate(&self, check: Check) -> Result<(), Error> {
        validate_listeners(
            check,
            ("greylist.listen", &self.listen),
            ("greylist.socket_mode", &self.socket_mode),
        )?;
        if self.store.is_empty() {
            return Err(check.bad(
                "greylist.store",
                "expected a file path or redis://host:port/db",
            ));
        }
        check.at_least_one(&[
            ("greylist.delay", self.delay),
            ("greylist.max_age", self.max_age),
            ("greylist.store_timeout", self.store_timeout),
            ("greylist.max_connections", self.max_connections as u64),
        ])?;
        if self.retry_window.seconds().is_none_or(|s| s == 0) {
            return Err(check.bad(
                "greylist.retry_window",
                "expected days (2) or hours (\"6h\"), at least 1",
            ));
        }
        if self.action.trim().is_empty()
            || self.action.contains(['\n', '\r'])
            || self.text.contains(['\n', '\r'])
        {
            return Err(check.bad(
                "greylist.action",
                "must be one line, not empty (with greylist.text)",
            ));
        }
        Ok(())
    }
}
