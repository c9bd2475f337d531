//! Third stage: what policy does with each group short of delivering it. Discard, reject and
//! tempfail need nothing done; quarantine stores the group's copy (through the front end's
//! [`Deliver`], so a dry run stores nothing). Over SMTP (one reply for the message) a group's
//! reject or tempfail is the whole message's, decided before anything is stored or sent.

use std::time::Instant;

use crate::escape;
use crate::message::Envelope;
use crate::policy::{Category, Decision, Disposition, Tempfail};
use crate::rewrite;
use crate::runtime::Runtime;

use super::delivery::Deliver;
use super::groups::Groups;
use super::judge::Judged;
use super::outcome::Outcome;
use super::received::Received;

/// Each group's outcome as far as it is decided, and which group's outcome is the message's
/// reply over SMTP.
#[derive(Debug)]
pub struct Dispositions {
    /// None: still to be delivered.
    pub outcomes: Vec<Option<Outcome>>,
    /// A group's quarantine id, when not the message's (a second quarantined group).
    pub ids: Vec<Option<String>>,
    /// The group whose outcome is the SMTP reply (the first that failed).
    pub lead: Option<usize>,
    /// Storing or signing a group failed: over SMTP the other copies are withheld, since the
    /// client's retry sends them all again.
    pub failed: bool,
}

impl Dispositions {
    /// Every group undecided, or, over SMTP with several groups, every group the first
    /// tempfail's outcome, else the first reject's: the client takes one reply for all.
    pub fn new(shared: &Runtime, judged: &[Judged], per_recipient: bool) -> Dispositions {
        let n = judged.len();
        let mut d = Dispositions {
            outcomes: vec![None; n],
            ids: vec![None; n],
            lead: None,
            failed: false,
        };
        if n < 2 || per_recipient {
            return d;
        }
        let tempfail = judged
            .iter()
            .position(|(_, d)| matches!(d.disposition, Disposition::Tempfail(_)));
        let reject = judged
            .iter()
            .position(|(_, d)| d.disposition == Disposition::Reject);
        let whole = match (tempfail, reject) {
            (Some(i), _) => Some((i, tempfailed(shared, &judged[i].1))),
            (None, Some(i)) => Some((i, Outcome::Rejected(judged[i].1.category.clone()))),
            (None, None) => None,
        };
        if let Some((i, o)) = whole {
            d.outcomes = vec![Some(o); n];
            d.lead = Some(i);
        }
        d
    }

    /// The groups still to be delivered.
    pub fn undecided(&self) -> Vec<usize> {
        (0..self.outcomes.len())
            .filter(|&i| self.outcomes[i].is_none())
            .collect()
    }

    /// Group `i` failed (a 4xx): over SMTP its reply is the message's, and nothing goes out.
    pub fn fail(&mut self, i: usize, outcome: Outcome) {
        self.outcomes[i] = Some(outcome);
        self.failed = true;
        self.lead.get_or_insert(i);
    }
}

/// Discards, rejects, tempfails and quarantines the groups policy says so of, before any
/// delivery: a failed quarantine then withholds the deliveries of an SMTP message (its 4xx
/// makes the client send it again).
pub async fn dispose(
    shared: &Runtime,
    r: &Received,
    groups: &Groups<'_>,
    judged: &[Judged],
    d: &mut Dispositions,
    out: &impl Deliver,
) {
    let mut quarantined = 0;
    for (i, (_, decision)) in judged.iter().enumerate() {
        if d.outcomes[i].is_some() {
            continue;
        }
        d.outcomes[i] = match &decision.disposition {
            Disposition::Deliver => continue,
            Disposition::Discard => Some(Outcome::Discarded(decision.category.clone())),
            Disposition::Reject => Some(Outcome::Rejected(decision.category.clone())),
            Disposition::Tempfail(_) => Some(tempfailed(shared, decision)),
            Disposition::Quarantine => {
                // Each quarantined group is its own entry with its own recipients.
                let id = match quarantined {
                    0 => r.id.clone(),
                    k => format!("{}-{}", r.id, k + 1),
                };
                quarantined += 1;
                // Boxed: a large future, off the default path (see scan_for).
                let o = Box::pin(quarantine(shared, r, &id, &groups.envs[i], decision, out)).await;
                d.ids[i] = (id != r.id).then_some(id);
                if matches!(o, Outcome::Tempfailed(_)) {
                    d.fail(i, o);
                    continue;
                }
                Some(o)
            }
        };
    }
}

/// A policy tempfail, counted under its reason.
fn tempfailed(shared: &Runtime, d: &Decision) -> Outcome {
    shared
        .metrics
        .filter
        .tempfails
        .with_label_values(&[d.tempfail_reason.unwrap_or("clamd")])
        .inc();
    let Disposition::Tempfail(t) = &d.disposition else {
        unreachable!("called for a tempfail")
    };
    Outcome::Tempfailed(t.clone())
}

/// Stores the group's copy in the quarantine; a failure is a tempfail (the client keeps it).
async fn quarantine(
    shared: &Runtime,
    r: &Received,
    id: &str,
    env: &Envelope,
    decision: &Decision,
    out: &impl Deliver,
) -> Outcome {
    let m = &shared.metrics;
    let category = decision.category.label();
    let mut meta = crate::quarantine::Meta::new(id, env, &r.msg, category, reason(decision));
    meta.helo = r.hop.helo.clone();
    meta.spam_score = decision.spam.as_ref().map(|s| s.score);
    let start = Instant::now();
    match out.quarantine(meta, &r.msg).await {
        Ok(()) => {
            m.quarantine
                .quarantine_store_duration
                .observe(start.elapsed().as_secs_f64());
            m.quarantine
                .quarantined
                .with_label_values(&[category])
                .inc();
            m.quarantine.quarantine_entries.inc();
            m.quarantine.quarantine_bytes.add(r.msg.len() as i64);
            Outcome::Quarantined(decision.category.clone())
        }
        Err(why) => {
            tracing::error!(%id, error = %escape::Shown(&why), "cannot quarantine: answering 451");
            m.filter.tempfails.with_label_values(&["quarantine"]).inc();
            Outcome::Tempfailed(Tempfail::Quarantine(why))
        }
    }
}

/// What the index records as the reason: virus names, the banned part, the score, or why the
/// message was not checked.
fn reason(decision: &Decision) -> String {
    match &decision.category {
        Category::Virus(names) => names.join(", "),
        Category::Banned { name, kind } => format!("{kind},{name}"),
        Category::Spam => decision.spam.as_ref().map_or_else(
            || "-".into(),
            |s| format!("score={}", rewrite::score(s.score)),
        ),
        Category::Unchecked => decision.unchecked_reason.unwrap_or("-").to_owned(),
        Category::DmarcReject { domain } => format!("DMARC p=reject for {domain}"),
        Category::Clean => "-".into(),
    }
}
