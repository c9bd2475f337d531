//! Per-user policy from amavis's SQL tables (`[sql] lookups = true`): each recipient's
//! `users` → `policy` row and the `wblist` entry for the sender, looked up (cached) before the
//! scan. A recipient with a policy row of its own, or whose wblist lists the sender, becomes a
//! recipient group of its own: the banks' settings with the policy's fields laid over them
//! (spam levels, subject tag, bypasses, lover flags), decided and delivered apart like any
//! bank group. A database that fails leaves the recipient under the file's configuration
//! (logged and counted in `postsift_sql_lookup_fallbacks_total`).
//!
//! The wblist as amavis reads it: whitelisted, the message is never spam for that recipient
//! (the spam levels out of reach); blacklisted, it is spam at any score (the spam levels at
//! amavis's floor, -999); a number is added to the score (the levels lowered by it).

use std::borrow::Cow;
use std::sync::Arc;

use crate::banks;
use crate::config::{Action, Config, Unchecked};
use crate::message::Envelope;
use crate::runtime::Runtime;
use crate::sql::lookups::{UserPolicy, WbResult};

use super::groups::{Groups, SqlGroup};
use super::received::Received;

/// What the database says about one recipient.
#[derive(Debug, Clone, Default)]
pub struct PerRcpt {
    pub policy: Option<Arc<UserPolicy>>,
    pub wb: WbResult,
}

/// Each recipient's policy and wblist entry; None without `[sql] lookups`.
pub async fn lookup(shared: &Runtime, r: &Received) -> Option<Vec<PerRcpt>> {
    let store = shared.sql.as_ref()?;
    let l = store.lookups.as_ref()?;
    let mut out = Vec::with_capacity(r.env.recipients.len());
    for rcpt in &r.env.recipients {
        let policy = l.policy_or_fallback(&rcpt.address, true).await;
        let wb = match &policy {
            Some(p) => match l.wblist(p, &r.env.sender, false).await {
                Ok(wb) => wb,
                Err(e) => {
                    store.metrics.lookup_fallbacks.inc();
                    tracing::warn!(error = %e, "sql lookups: wblist failed, using the configuration file");
                    WbResult::default()
                }
            },
            None => WbResult::default(),
        };
        out.push(PerRcpt { policy, wb });
    }
    Some(out)
}

/// Recipients of one bank group with the same key share a group: policy row, wblist answer
/// and score boost (its bits); None: no SQL settings.
type Key = Option<(Option<i64>, Option<bool>, u64)>;

fn key(p: &PerRcpt) -> Key {
    if p.policy.is_none() && p.wb == WbResult::default() {
        return None;
    }
    let id = p.policy.as_ref().and_then(|p| p.policy_id);
    Some((id, p.wb.listed, p.wb.boost.to_bits()))
}

/// Splits `groups` so that each recipient with a policy or wblist entry of its own is in a group
/// with only the recipients that share it, with the settings it gives.
pub fn regroup<'a>(groups: &mut Groups<'a>, r: &'a Received, per: &[PerRcpt]) {
    let mut list = Vec::new();
    let mut configs: Vec<Cow<'a, Config>> = Vec::new();
    let mut tags = Vec::new();
    for (g, base) in groups.list.iter().zip(&groups.configs) {
        let mut parts: Vec<(Key, Vec<usize>)> = Vec::new();
        for &i in &g.rcpts {
            let k = per.get(i).and_then(key);
            match parts.iter_mut().find(|(pk, _)| *pk == k) {
                Some((_, v)) => v.push(i),
                None => parts.push((k, vec![i])),
            }
        }
        for (k, rcpts) in parts {
            match k {
                None => {
                    configs.push(base.clone());
                    tags.push(None);
                }
                Some(_) => {
                    let p = &per[rcpts[0]];
                    let mut c = base.clone().into_owned();
                    if let Some(up) = &p.policy {
                        lay_over(&mut c, up);
                    }
                    apply_wb(&mut c, p.wb);
                    configs.push(Cow::Owned(c));
                    tags.push(Some(SqlGroup {
                        name: match p.policy.as_deref() {
                            Some(up) => match (&up.policy_name, up.policy_id) {
                                (Some(n), _) => format!("sql:{}", crate::escape::text(n)),
                                (None, Some(id)) => format!("sql:{id}"),
                                (None, None) => "sql:-".into(),
                            },
                            None => "sql:wblist".into(),
                        },
                        listed: p.wb.listed,
                    }));
                }
            }
            list.push(banks::Group {
                banks: g.banks.clone(),
                rcpts,
            });
        }
    }
    if tags.iter().all(Option::is_none) {
        return; // nobody has a policy of their own
    }
    let envs = list
        .iter()
        .map(|g| match list.len() > 1 {
            false => Cow::Borrowed(&r.env),
            true => Cow::Owned(sub_envelope(&r.env, &g.rcpts)),
        })
        .collect();
    groups.list = list;
    groups.configs = configs;
    groups.envs = envs;
    groups.sql = tags;
}

/// `env` with only the recipients at `rcpts`.
fn sub_envelope(env: &Envelope, rcpts: &[usize]) -> Envelope {
    Envelope {
        recipients: rcpts.iter().map(|&i| env.recipients[i].clone()).collect(),
        ..env.clone()
    }
}

/// amavis's `policy` fields that postsift has, laid over `c`: NULL (None) leaves the setting.
fn lay_over(c: &mut Config, p: &UserPolicy) {
    let s = &mut c.spam;
    if let Some(v) = p.spam_tag_level {
        s.tag_level = v;
    }
    if let Some(v) = p.spam_tag2_level {
        s.tag2_level = v;
    }
    if let Some(v) = p.spam_kill_level {
        s.kill_level = v;
    }
    s.tag2_level = s.tag2_level.max(s.tag_level);
    if let Some(t) = p
        .spam_subject_tag2
        .as_deref()
        .or(p.spam_subject_tag.as_deref())
    {
        s.subject_tag = crate::sql::clean_text(t, 255);
    }
    if p.bypass_virus_checks == Some(true) {
        c.clamd.endpoints.clear();
    }
    if p.bypass_spam_checks == Some(true) {
        c.spamd.endpoints.clear();
        c.rspamd.endpoints.clear();
    }
    if p.bypass_banned_checks == Some(true) || p.banned_files_lover == Some(true) {
        c.banned.action = Action::Pass;
    }
    if p.virus_lover == Some(true) {
        c.virus.action = Action::Pass;
    }
    if p.spam_lover == Some(true) {
        c.spam.action = Action::Pass;
        c.spam.quarantine_level = None;
    }
    if p.unchecked_lover == Some(true) {
        let x = &mut c.parts;
        for on in [
            &mut x.on_max_parts,
            &mut x.on_max_decoded_bytes,
            &mut x.on_max_depth,
            &mut x.on_ratio,
            &mut x.on_encrypted,
            &mut x.on_max_walk_time,
            &mut x.on_decoder,
            &mut x.on_max_message_size,
        ] {
            *on = Unchecked::Pass;
        }
    }
}

/// The wblist's answer laid over the spam levels.
fn apply_wb(c: &mut Config, wb: WbResult) {
    let s = &mut c.spam;
    match wb.listed {
        Some(true) => {
            s.tag2_level = 1e9;
            s.kill_level = 1e9;
            s.quarantine_level = None;
        }
        Some(false) => {
            s.tag_level = -999.0;
            s.tag2_level = -999.0;
            s.kill_level = -999.0;
        }
        None => {
            s.tag_level -= wb.boost;
            s.tag2_level -= wb.boost;
            s.kill_level -= wb.boost;
            if let Some(q) = s.quarantine_level.as_mut() {
                *q -= wb.boost;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_fields_and_wblist_lay_over_the_settings() {
        let mut c = Config::default();
        let p = UserPolicy {
            spam_tag2_level: Some(3.0),
            spam_kill_level: Some(5.0),
            spam_subject_tag2: Some("[SPAM]\r\n ".into()),
            bypass_virus_checks: Some(true),
            spam_lover: Some(true),
            ..UserPolicy::default()
        };
        lay_over(&mut c, &p);
        assert_eq!((c.spam.tag2_level, c.spam.kill_level), (3.0, 5.0));
        assert_eq!(c.spam.subject_tag, "[SPAM]?? ");
        assert!(c.clamd.endpoints.is_empty());
        assert_eq!(c.spam.action, Action::Pass);
        let mut w = Config::default();
        apply_wb(
            &mut w,
            WbResult {
                listed: Some(false),
                boost: 0.0,
            },
        );
        assert_eq!(w.spam.kill_level, -999.0);
        let mut n = Config::default();
        apply_wb(
            &mut n,
            WbResult {
                listed: None,
                boost: 2.0,
            },
        );
        assert!((n.spam.kill_level - 4.31).abs() < 1e-9);
    }
}
