//! First stage: the recipients grouped by the policy banks that apply to them. Each group has
//! its own effective settings and its own envelope (the message's own when there is one
//! group); the rest of the pipeline decides, disposes and delivers per group.

use std::borrow::Cow;

use crate::banks;
use crate::config::Config;
use crate::message::Envelope;
use crate::scan::ScanEnvelope;

use super::received::Received;

/// The message's recipient groups.
pub struct Groups<'a> {
    /// Which banks apply and to which recipients, in the order of each group's first recipient.
    pub list: Vec<banks::Group>,
    /// Each group's effective settings.
    pub configs: Vec<Cow<'a, Config>>,
    /// Each group's envelope: the message's, or (several groups) one with its recipients only.
    pub envs: Vec<Cow<'a, Envelope>>,
    /// Groups made by SQL per-user policy (`[sql] lookups`), per group; empty when none.
    pub sql: Vec<Option<SqlGroup>>,
}

impl<'a> Groups<'a> {
    /// Groups `r`'s recipients under `config` (the listener it came in on, the original
    /// client and the sender choose the banks along with each recipient).
    pub fn of(config: &'a Config, r: &'a Received) -> Groups<'a> {
        let xf = &r.env.xforward;
        let ctx = banks::Context {
            listener: r.hop.listener,
            // XFORWARD ADDR=[UNAVAILABLE] (local submission): not known, so no client network
            // matches; without XFORWARD the connecting client is the original one.
            client: match xf.addr.as_deref() {
                Some(a) => a.strip_prefix("IPv6:").unwrap_or(a).parse().ok(),
                None => {
                    banks::warn_once_without_xforward(config);
                    Some(r.hop.peer.ip())
                }
            },
            sender: &r.env.sender,
        };
        let list = banks::group(
            config,
            &ctx,
            r.env.recipients.iter().map(|x| x.address.as_str()),
        );
        let configs = list
            .iter()
            .map(|g| match g.banks.is_empty() {
                true => Cow::Borrowed(config),
                false => Cow::Owned(banks::effective(config, &g.banks)),
            })
            .collect();
        let split = list.len() > 1;
        let envs = list
            .iter()
            .map(|g| match split {
                false => Cow::Borrowed(&r.env),
                true => Cow::Owned(sub_envelope(&r.env, &g.rcpts)),
            })
            .collect();
        Groups {
            list,
            configs,
            envs,
            sql: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// More than one group: each is decided and delivered apart.
    pub fn split(&self) -> bool {
        self.list.len() > 1
    }

    /// The names of the banks group `i` applies (`-` for none), for the log.
    pub fn bank_names(&self, config: &Config, i: usize) -> String {
        let names = banks::names(config, &self.list[i].banks);
        match self.sql.get(i).and_then(Option::as_ref) {
            None => names,
            Some(g) if names == "-" => g.name.clone(),
            Some(g) => format!("{names},{}", g.name),
        }
    }
}

/// What the scanners are told of the envelope and the original client: XFORWARD's, else the
/// connecting client's.
pub fn scan_envelope(r: &Received) -> ScanEnvelope {
    let xf = &r.env.xforward;
    ScanEnvelope {
        ip: Some(
            xf.addr
                .clone()
                .unwrap_or_else(|| r.hop.peer.ip().to_string()),
        ),
        helo: Some(xf.helo.clone().unwrap_or_else(|| r.hop.helo.clone())),
        hostname: xf.name.clone(),
        from: r.env.sender.clone(),
        rcpts: r.env.recipients.iter().map(|x| x.address.clone()).collect(),
        queue_id: xf.ident.clone(),
        client: crate::scan::auth::Client::from_xforward(
            xf.addr.as_deref(),
            xf.helo.as_deref(),
            &r.env.sender,
        ),
    }
}

/// A group made by a recipient's SQL policy: its name in the log and `msgs.policy`, and the
/// sender's wblist standing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SqlGroup {
    /// `sql:<policy name>` (or `sql:<policy id>`), `sql:wblist` for a wblist entry alone.
    pub name: String,
    /// Some(true) whitelisted, Some(false) blacklisted.
    pub listed: Option<bool>,
}

/// `env` with only the recipients at `rcpts`.
fn sub_envelope(env: &Envelope, rcpts: &[usize]) -> Envelope {
    Envelope {
        recipients: rcpts.iter().map(|&i| env.recipients[i].clone()).collect(),
        ..env.clone()
    }
}
