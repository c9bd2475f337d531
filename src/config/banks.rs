//! `[[policy]]`: policy banks, settings that replace the top-level ones for the mail they match,
//! what each may set and how it is checked, and what one bank lays over the top-level settings
//! (the merge of all that apply, in file order, is [`super::Config::effective`]). Which banks
//! apply to a message is the `banks` module's business.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use ipnet::IpNet;
use serde::Deserialize;

use super::banned::{Banned, BannedRule};
use super::check::{Check, Error};
use super::dkim_sign::DkimSign;
use super::parts::{Parts, Unchecked};
use super::policy::{Action, Spam, Virus};

/// One `[[policy]]` bank: settings that replace the top-level ones for the mail it matches.
/// Every key but `name` and `match` is optional; what a bank leaves out stays as the defaults
/// (and earlier banks) set it.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Bank {
    /// Shown in the log line (`bank=`), the metric label and `check-config`. Required, unique.
    pub name: String,
    /// When the bank applies: every condition given must hold, each a list of alternatives.
    #[serde(rename = "match")]
    pub when: BankMatch,
    /// Don't ask clamd for this mail (amavis's `bypass_virus_checks`). If clamd is asked
    /// anyway, for other recipients of the same message, and finds a virus, the virus still
    /// counts: a bypass saves the scan, it does not deliver a known virus (set
    /// `virus.action = "pass"` in the bank for that).
    pub bypass_virus_checks: Option<bool>,
    /// Don't ask the spam engine (amavis's `bypass_spam_checks`): no `X-Spam-*` headers, never
    /// spam, even if the engine ran for other recipients of the same message.
    pub bypass_spam_checks: Option<bool>,
    pub spam: BankSpam,
    pub virus: BankVirus,
    pub banned: BankBanned,
    pub parts: BankParts,
    /// DKIM-sign the mail this bank matches (`true`, even if neither `[dkim_sign]
    /// originating_listeners` nor `networks` matches it) or not (`false`, even if they do).
    /// `[dkim_sign] enabled` must still be true and a key exist for the From domain.
    /// Default: unset (the listeners and networks decide).
    pub dkim_sign: Option<bool>,
}

/// `[policy.match]`. Listener, client and sender are the message's; `recipient` and
/// `recipient_domain` are each recipient's, and make one message split into groups.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BankMatch {
    /// Addresses from `server.listen` (e.g. an originating listener on `127.0.0.1:10026`).
    pub listener: Vec<SocketAddr>,
    /// The original client's network: XFORWARD ADDR (`[UNAVAILABLE]`, as for local
    /// submissions, matches no network); without XFORWARD, the connecting client.
    pub client: Vec<IpNet>,
    /// The envelope sender's domain; `.example.com` also matches its subdomains.
    pub sender_domain: Vec<String>,
    /// Recipient addresses (`user@example.com`, any case).
    pub recipient: Vec<String>,
    /// The recipient's domain; `.example.com` also matches its subdomains.
    pub recipient_domain: Vec<String>,
}

impl BankMatch {
    /// Whether a condition matches on the recipient (not the whole message).
    pub fn per_recipient(&self) -> bool {
        !self.recipient.is_empty() || !self.recipient_domain.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.listener.is_empty()
            && self.client.is_empty()
            && self.sender_domain.is_empty()
            && !self.per_recipient()
    }
}

/// `[policy.spam]`: the `[spam]` keys a bank may set.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BankSpam {
    pub tag_level: Option<f64>,
    pub tag2_level: Option<f64>,
    pub kill_level: Option<f64>,
    pub subject_tag: Option<String>,
    pub action: Option<Action>,
    pub quarantine_level: Option<f64>,
}

/// `[policy.virus]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BankVirus {
    pub action: Option<Action>,
}

/// `[policy.banned]`: the action, and rules that replace `[banned] rules` whole.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BankBanned {
    pub action: Option<Action>,
    pub rules: Option<Vec<BannedRule>>,
}

/// `[policy.parts]`: what an UNCHECKED message gets (`[parts] on_…`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BankParts {
    pub on_max_parts: Option<Unchecked>,
    pub on_max_decoded_bytes: Option<Unchecked>,
    pub on_max_depth: Option<Unchecked>,
    pub on_ratio: Option<Unchecked>,
    pub on_encrypted: Option<Unchecked>,
    pub on_max_walk_time: Option<Unchecked>,
    pub on_decoder: Option<Unchecked>,
    pub on_max_message_size: Option<Unchecked>,
    pub on_walk_error: Option<Unchecked>,
}

impl Bank {
    /// Whether a message this bank applies to can be quarantined.
    pub fn quarantines(&self) -> bool {
        let q = Action::Quarantine;
        [self.virus.action, self.banned.action, self.spam.action].contains(&Some(q))
            || self.spam.quarantine_level.is_some()
            || self
                .parts
                .unchecked_actions()
                .contains(&Some(Unchecked::Quarantine))
    }

    /// The setting of this bank that trusts the mail it matches (signs it, or skips a check),
    /// when the bank matches on `sender_domain` and on neither a listener nor a client network:
    /// MAIL FROM is whatever the sender types, so any Internet sender would get it. Returns the
    /// key.
    pub fn trust_by_sender_only(&self) -> Option<&'static str> {
        let m = &self.when;
        if m.sender_domain.is_empty() || !m.listener.is_empty() || !m.client.is_empty() {
            return None;
        }
        [
            ("policy.dkim_sign", self.dkim_sign == Some(true)),
            (
                "policy.bypass_virus_checks",
                self.bypass_virus_checks == Some(true),
            ),
            (
                "policy.bypass_spam_checks",
                self.bypass_spam_checks == Some(true),
            ),
            (
                "policy.virus.action",
                self.virus.action == Some(Action::Pass),
            ),
            (
                "policy.banned.action",
                self.banned.action == Some(Action::Pass),
            ),
        ]
        .into_iter()
        .find_map(|(key, set)| set.then_some(key))
    }

    /// `bank "name"`, or `bank #i` (from 1) for one without a name, as errors name it.
    fn label(&self, i: usize) -> String {
        if self.name.is_empty() {
            format!("bank #{}", i + 1)
        } else {
            format!("bank \"{}\"", self.name)
        }
    }

    /// A bank (the `i`th) must be able to match, and what it sets must be valid on its own;
    /// `names` are those of the banks before it, and gets its own. The levels it leaves are
    /// checked with the merge ([`super::Config::effective`]).
    pub(super) fn validate<'a>(
        &'a self,
        check: Check,
        i: usize,
        listen: &[SocketAddr],
        names: &mut BTreeSet<&'a str>,
    ) -> Result<(), Error> {
        let no = |key: &'static str, what: &str| Err(self.refused(check, i, key, what));
        if self.name.is_empty() || self.name.contains(|c: char| c.is_whitespace() || c == ',') {
            return no(
                "policy.name",
                "every bank needs a name, without spaces or commas",
            );
        }
        if !names.insert(self.name.as_str()) {
            return no("policy.name", "the name is used by an earlier bank");
        }
        let m = &self.when;
        if m.is_empty() {
            return no(
                "policy.match",
                "matches nothing: give at least one of listener, client, sender_domain, \
                 recipient, recipient_domain",
            );
        }
        if let Some(l) = m.listener.iter().find(|l| !listen.contains(l)) {
            return no(
                "policy.match.listener",
                &format!("{l} is not in server.listen, so no mail arrives there"),
            );
        }
        if let Some(key) = self.trust_by_sender_only() {
            return no(
                key,
                "matches on sender_domain only, which any Internet sender can type in \
                 MAIL FROM; also match a listener or client networks (e.g. an originating \
                 listener)",
            );
        }
        for (key, domains) in [
            ("policy.match.sender_domain", &m.sender_domain),
            ("policy.match.recipient_domain", &m.recipient_domain),
        ] {
            if let Some(d) = domains.iter().find(|d| {
                let d = d.strip_prefix('.').unwrap_or(d);
                d.is_empty() || d.contains(['@', ' ']) || d.starts_with('.')
            }) {
                return no(key, &format!("{d:?} is not a domain"));
            }
        }
        if let Some(r) = m.recipient.iter().find(|r| {
            r.rsplit_once('@')
                .is_none_or(|(l, d)| l.is_empty() || d.is_empty() || r.contains(' '))
        }) {
            return no(
                "policy.match.recipient",
                &format!("{r:?} is not an address"),
            );
        }
        for (key, level) in [
            ("policy.spam.tag_level", self.spam.tag_level),
            ("policy.spam.tag2_level", self.spam.tag2_level),
            ("policy.spam.kill_level", self.spam.kill_level),
            ("policy.spam.quarantine_level", self.spam.quarantine_level),
        ] {
            if level.is_some_and(|l| !l.is_finite()) {
                return no(key, "must be a finite number");
            }
        }
        Ok(())
    }

    /// The error for `key` of this bank (the `i`th).
    pub(super) fn refused(&self, check: Check, i: usize, key: &'static str, what: &str) -> Error {
        check.bad(key, format!("{}: {what}", self.label(i)))
    }

    /// When this bank's client networks include a network Postfix connects from
    /// (`server.allow_networks`): when Postfix sends no XFORWARD (`lmtp_send_xforward_command`
    /// and `smtp_send_xforward_command` are off by default), the client is Postfix itself, and
    /// the bank applies to every message. Says so.
    pub(super) fn postfix_warning(&self, allow_networks: &[IpNet]) -> Option<String> {
        let overlap = |a: &IpNet, b: &IpNet| a.contains(&b.network()) || b.contains(&a.network());
        let name = &self.name;
        self.when
            .client
            .iter()
            .any(|n| allow_networks.iter().any(|a| overlap(n, a)))
            .then(|| {
                format!(
                    "policy bank \"{name}\": match.client includes server.allow_networks, so \
                     when Postfix sends no XFORWARD the client is Postfix itself and the bank \
                     applies to every message; set lmtp_send_xforward_command = yes (or \
                     smtp_send_xforward_command) on postsift's transport in master.cf"
                )
            })
    }

    /// Lays the keys this bank sets over `spam`, `virus`, `banned`, `parts` and `dkim_sign`
    /// (the bypasses are the merge's: the last bank that says anything decides).
    pub(super) fn lay_over(
        &self,
        spam: &mut Spam,
        virus: &mut Virus,
        banned: &mut Banned,
        parts: &mut Parts,
        dkim_sign: &mut DkimSign,
    ) {
        let s = &self.spam;
        let set = |to: &mut f64, v: Option<f64>| {
            if let Some(v) = v {
                *to = v;
            }
        };
        set(&mut spam.tag_level, s.tag_level);
        set(&mut spam.tag2_level, s.tag2_level);
        set(&mut spam.kill_level, s.kill_level);
        if let Some(q) = s.quarantine_level {
            spam.quarantine_level = Some(q);
        }
        if let Some(t) = &s.subject_tag {
            spam.subject_tag = t.clone();
        }
        if let Some(a) = s.action {
            spam.action = a;
        }
        if let Some(a) = self.virus.action {
            virus.action = a;
        }
        if let Some(a) = self.banned.action {
            banned.action = a;
        }
        if let Some(r) = &self.banned.rules {
            banned.rules = Some(r.clone());
        }
        if let Some(v) = self.dkim_sign {
            dkim_sign.by_bank = Some(v);
        }
        let p = &self.parts;
        for (to, v) in [
            (&mut parts.on_max_parts, p.on_max_parts),
            (&mut parts.on_max_decoded_bytes, p.on_max_decoded_bytes),
            (&mut parts.on_max_depth, p.on_max_depth),
            (&mut parts.on_ratio, p.on_ratio),
            (&mut parts.on_encrypted, p.on_encrypted),
            (&mut parts.on_max_walk_time, p.on_max_walk_time),
            (&mut parts.on_decoder, p.on_decoder),
            (&mut parts.on_max_message_size, p.on_max_message_size),
            (&mut parts.on_walk_error, p.on_walk_error),
        ] {
            if let Some(v) = v {
                *to = v;
            }
        }
    }
}

impl BankParts {
    /// Every `on_…` key, in the order of [`Parts::unchecked_actions`].
    pub fn unchecked_actions(&self) -> [Option<Unchecked>; 9] {
        [
            self.on_max_parts,
            self.on_max_decoded_bytes,
            self.on_max_depth,
            self.on_ratio,
            self.on_encrypted,
            self.on_max_walk_time,
            self.on_decoder,
            self.on_max_message_size,
            self.on_walk_error,
        ]
    }
}
