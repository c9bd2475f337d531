//! Second stage: one scan for every group (the scanners some group needs, each group's banned
//! rules), then each group's verdict under its own settings. [`judge`] is a pure function of
//! the scan report and the settings, so the decision logic is tested without peers.

use std::borrow::Cow;

use crate::config::{Action, Config};
use crate::message::Message;
use crate::policy::{self, Decision};
use crate::runtime::Runtime;
use crate::scan::cost::Decisive;
use crate::scan::{banned, Needs, ScanEnvelope, ScanReport, SpamScan, VirusScan};

use super::groups::Groups;
use super::reuse::Kept;

/// What the scan found: the report (judged by `[banned] rules`), and the banned part under each
/// bank's own rules (see [`needs`]).
pub struct Scanned {
    pub report: ScanReport,
    pub banned_by: Vec<Option<banned::Banned>>,
    /// For each group, its index in `banned_by` (None: `[banned] rules`).
    rule_set: Vec<Option<usize>>,
}

impl Scanned {
    /// A report given, not scanned (tests: the decision logic with fixed reports). Groups with
    /// banned rules of their own find nothing banned.
    #[cfg(test)]
    pub fn fixed(config: &Config, groups: &Groups<'_>, report: ScanReport) -> Scanned {
        let (needs, rule_set) = needs(config, &groups.configs);
        Scanned {
            report,
            banned_by: vec![None; needs.banned_rules.len()],
            rule_set,
        }
    }
}

impl Scanned {
    /// A scan the milter kept, for `groups` (the hop's): each group's banned rule set found
    /// again. The caller has checked that the groups need the same checks ([`needs_of`]), so
    /// the sets are the same ones, in the same order.
    pub(super) fn kept(k: Kept, config: &Config, groups: &Groups<'_>) -> Scanned {
        Scanned {
            report: k.report,
            banned_by: k.banned_by,
            rule_set: needs(config, &groups.configs).1,
        }
    }

    /// What the milter keeps of this scan for the after-queue hop.
    pub(super) fn keep(self) -> Kept {
        Kept {
            report: self.report,
            banned_by: self.banned_by,
        }
    }
}

/// The checks `groups` need (one scan for all of them).
pub(super) fn needs_of(config: &Config, groups: &Groups<'_>) -> Needs {
    needs(config, &groups.configs).0
}

/// One group's verdict: the report as it stands for the group, and the policy's decision.
pub type Judged = (ScanReport, Decision);

/// Runs the scanners the groups need, once for all of them.
pub async fn scan(
    shared: &Runtime,
    msg: &Message,
    env: &ScanEnvelope,
    groups: &Groups<'_>,
) -> Scanned {
    let (needs, rule_set) = needs(&shared.config, &groups.configs);
    let (report, banned_by) = shared
        .scanners
        .scan_for(msg, env, &shared.metrics.scan, &needs)
        .await;
    Scanned {
        report,
        banned_by,
        rule_set,
    }
}

/// Each group's verdict under its own settings.
pub fn judge(groups: &Groups<'_>, scanned: &Scanned) -> Vec<Judged> {
    groups
        .configs
        .iter()
        .zip(&scanned.rule_set)
        .map(|(c, set)| {
            let mut report = scanned.report.clone();
            // A bypassed check ran for others: its answer is not this group's, except a virus
            // found (a bypass saves the scan; it does not deliver a known virus).
            if c.clamd.endpoints.is_empty() && !matches!(report.virus, VirusScan::Infected(_)) {
                report.virus = VirusScan::Off;
            }
            if !spam_on(c) {
                report.spam = SpamScan::Off;
            }
            if let Some(i) = set {
                report.banned = scanned.banned_by[*i].clone();
            }
            let decision = policy::decide(c, &report);
            (report, decision)
        })
        .collect()
}

/// One scan serves every group: the scanners some group needs, and the banned rules of each
/// group whose rules are not `[banned] rules` (for each group: its index in
/// `Needs::banned_rules`, None for the defaults).
fn needs(config: &Config, groups: &[Cow<'_, Config>]) -> (Needs, Vec<Option<usize>>) {
    let mut needs = Needs {
        virus: false,
        spam: false,
        banned_rules: Vec::new(),
        decisive: Vec::new(),
    };
    let mut rule_set = Vec::new();
    for c in groups {
        needs.virus |= !c.clamd.endpoints.is_empty();
        needs.spam |= spam_on(c);
        rule_set.push(if c.banned.rules == config.banned.rules {
            None
        } else {
            let rules = c.banned.rules.clone().unwrap_or_else(banned::default_rules);
            Some(match needs.banned_rules.iter().position(|x| *x == rules) {
                Some(i) => i,
                None => {
                    needs.banned_rules.push(rules);
                    needs.banned_rules.len() - 1
                }
            })
        });
    }
    // Which findings leave the spam score nothing to change, group by group.
    let final_ = |a: Action| matches!(a, Action::Discard | Action::Reject);
    needs.decisive = groups
        .iter()
        .zip(&rule_set)
        .map(|(c, set)| Decisive {
            virus: c.spam.skip_when_decided && final_(c.virus.action),
            banned: c.spam.skip_when_decided && final_(c.banned.action),
            spam_off: !spam_on(c),
            rule_set: *set,
        })
        .collect();
    (needs, rule_set)
}

/// Whether the spam engine in use is on in `c` (a bank may bypass it).
fn spam_on(c: &Config) -> bool {
    crate::scan::spam_engine(c).is_some()
}
