//! `[clamd]`, `[spamd]` and `[rspamd]`: the scanners' endpoints, timeouts and what their
//! failure does; which spam engine `[spam] engine` selects, and what an unused scanner section
//! is told.

use serde::Deserialize;

use super::check::{describe, Check, Error, Present};
use super::policy::SpamEngine;

/// What to do when a scanner fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// `451 4.5.0`: Postfix keeps the message and retries.
    Tempfail,
    /// Deliver anyway (for clamd: marked `***UNCHECKED***`).
    Pass,
}

/// `[clamd]`: ClamAV's daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Clamd {
    /// Unix socket paths or `host:port`, tried in order. Empty: no virus scanning.
    /// Default `["/run/clamav/clamd.ctl"]`.
    pub endpoints: Vec<String>,
    /// Default `"tempfail"`.
    pub on_failure: OnFailure,
    /// Seconds to connect. Default 10.
    pub connect_timeout: u64,
    /// Seconds for the whole scan (send and verdict). Default 120.
    pub timeout: u64,
}

impl Default for Clamd {
    fn default() -> Self {
        Clamd {
            endpoints: vec!["/run/clamav/clamd.ctl".into()],
            on_failure: OnFailure::Tempfail,
            connect_timeout: 10,
            timeout: 120,
        }
    }
}

/// `[spamd]`: SpamAssassin's daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Spamd {
    /// `host:port` or Unix socket paths, tried in order. Empty: no spam scanning.
    /// Default `["127.0.0.1:783"]`.
    pub endpoints: Vec<String>,
    /// Bytes sent to spamd at most; longer messages are truncated at a line end, as amavis
    /// does. Default 524288.
    pub max_size: usize,
    /// Default `"pass"`.
    pub on_failure: OnFailure,
    /// `User:` sent to spamd. Default: none.
    pub user: Option<String>,
    /// Seconds to connect. Default 10.
    pub connect_timeout: u64,
    /// Seconds for each read or write. Default 60.
    pub io_timeout: u64,
    /// Seconds for the whole scan. Default 120.
    pub timeout: u64,
}

impl Default for Spamd {
    fn default() -> Self {
        Spamd {
            endpoints: vec!["127.0.0.1:783".into()],
            max_size: 524_288,
            on_failure: OnFailure::Pass,
            user: None,
            connect_timeout: 10,
            io_timeout: 60,
            timeout: 120,
        }
    }
}

/// `[rspamd]`: rspamd's normal worker (or controller, with a password), used when
/// `spam.engine = "rspamd"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rspamd {
    /// `host:port`, tried in order. Empty: no spam scanning. Default `["127.0.0.1:11333"]`.
    pub endpoints: Vec<String>,
    /// Bytes sent at most (cut at a line end). Default 524288.
    pub max_size: usize,
    /// Default `"pass"`.
    pub on_failure: OnFailure,
    /// Sent as the `Password` header (controller-protected setups). Default: none.
    pub password: Option<String>,
    /// Seconds to connect. Default 10.
    pub connect_timeout: u64,
    /// Seconds for the whole scan. Default 60.
    pub timeout: u64,
    /// Follow rspamd's `action` instead of comparing its score with the `[spam]` levels:
    /// reject → spam (kill level), rewrite subject / add header → flagged (tag2), greylist /
    /// soft reject → `greylist_action`, no action → clean. Default false.
    pub use_action: bool,
    /// With `use_action`: `"pass"` (default) or `"tempfail"` (451 4.7.1) for rspamd's greylist
    /// and soft reject.
    pub greylist_action: OnFailure,
}

impl Default for Rspamd {
    fn default() -> Self {
        Rspamd {
            endpoints: vec!["127.0.0.1:11333".into()],
            max_size: 524_288,
            on_failure: OnFailure::Pass,
            password: None,
            connect_timeout: 10,
            timeout: 60,
            use_action: false,
            greylist_action: OnFailure::Pass,
        }
    }
}

/// Unix socket paths (absolute) or `host:port`.
fn socket_or_host_port(check: Check, key: &'static str, endpoints: &[String]) -> Result<(), Error> {
    for ep in endpoints {
        if !(ep.starts_with('/')
            || ep
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok()))
        {
            return Err(check.bad(
                key,
                format!("`{ep}` is neither an absolute socket path nor host:port"),
            ));
        }
    }
    Ok(())
}

impl Clamd {
    pub(super) fn validate(&self, check: Check) -> Result<(), Error> {
        socket_or_host_port(check, "clamd.endpoints", &self.endpoints)?;
        check.seconds(&[
            ("clamd.connect_timeout", self.connect_timeout),
            ("clamd.timeout", self.timeout),
        ])
    }
}

impl Spamd {
    pub(super) fn validate(&self, check: Check) -> Result<(), Error> {
        socket_or_host_port(check, "spamd.endpoints", &self.endpoints)?;
        check.seconds(&[
            ("spamd.connect_timeout", self.connect_timeout),
            ("spamd.io_timeout", self.io_timeout),
            ("spamd.timeout", self.timeout),
        ])
    }
}

impl Rspamd {
    pub(super) fn validate(&self, check: Check) -> Result<(), Error> {
        for ep in &self.endpoints {
            if ep
                .rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err())
            {
                return Err(check.bad("rspamd.endpoints", format!("`{ep}` is not host:port")));
            }
        }
        check.seconds(&[
            ("rspamd.connect_timeout", self.connect_timeout),
            ("rspamd.timeout", self.timeout),
        ])
    }
}

/// The selected spam engine, then the other one: section name and endpoints.
fn spam_engines<'a>(
    engine: SpamEngine,
    spamd: &'a Spamd,
    rspamd: &'a Rspamd,
) -> [(&'static str, &'a [String]); 2] {
    let spamd = ("spamd", &spamd.endpoints[..]);
    let rspamd = ("rspamd", &rspamd.endpoints[..]);
    match engine {
        SpamEngine::Spamd => [spamd, rspamd],
        SpamEngine::Rspamd => [rspamd, spamd],
    }
}

/// The selected engine (`spam.engine`) switched off while the other one is configured
/// (`present`): no spam check runs at all, which nobody who wrote both sections meant.
pub(super) fn validate_engine(
    check: Check,
    present: &Present,
    engine: SpamEngine,
    spamd: &Spamd,
    rspamd: &Rspamd,
) -> Result<(), Error> {
    let [(engine, engine_endpoints), (other, other_endpoints)] =
        spam_engines(engine, spamd, rspamd);
    if engine_endpoints.is_empty() && present.contains_key(other) && !other_endpoints.is_empty() {
        return Err(check.bad(
            "spam.engine",
            format!(
                "\"{engine}\" but {engine}.endpoints is empty while [{other}] is configured, \
                 so no spam check would run; set spam.engine = \"{other}\" (or remove \
                 [{other}] if no spam check is meant)"
            ),
        ));
    }
    Ok(())
}

/// The section of the engine not selected, and keys of a switched-off scanner (`present`: what
/// the file wrote).
pub(super) fn warnings(
    present: &Present,
    engine: SpamEngine,
    clamd: &Clamd,
    spamd: &Spamd,
    rspamd: &Rspamd,
) -> Vec<String> {
    let mut out = Vec::new();
    let [(engine, engine_endpoints), (other, _)] = spam_engines(engine, spamd, rspamd);
    if present.contains_key(other) {
        out.push(format!(
            "[{other}] is not used: spam.engine is \"{engine}\"; set spam.engine = \
             \"{other}\" to scan with {other}, or remove [{other}]"
        ));
    }
    for (section, endpoints, what) in [
        ("clamd", &clamd.endpoints[..], "virus scanning"),
        (engine, engine_endpoints, "spam scanning"),
    ] {
        if !endpoints.is_empty() {
            continue;
        }
        let Some(keys) = present.get(section) else {
            continue;
        };
        let unused = keys.iter().filter(|k| *k != "endpoints");
        if unused.clone().next().is_some() {
            out.push(format!(
                "{} not used: {section}.endpoints is empty, so {what} is off",
                describe(section, unused)
            ));
        }
    }
    out
}

impl Rspamd {
    /// Only the non-default value: it asks for 451s that will never be given.
    pub(super) fn warning(&self, engine: SpamEngine) -> Option<String> {
        (engine == SpamEngine::Rspamd
            && !self.use_action
            && self.greylist_action == OnFailure::Tempfail)
            .then(|| {
                "rspamd.greylist_action is not used: rspamd.use_action is false, so rspamd's \
                 score goes through the [spam] levels and its greylist action is ignored"
                    .to_owned()
            })
    }
}
