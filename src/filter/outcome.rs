//! What became of a message, as typed values: [`Outcome`] per message or per recipient group,
//! the metric labels it maps to, and how the groups' outcomes make the message's. The SMTP
//! side words the replies (`smtp::reply`); nothing here knows reply texts.

use std::fmt;

use crate::policy::{Category, Tempfail};
use crate::reinject::{Delivery, RcptResult};

/// What became of the message.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Passed on: the next hop's answer for each recipient.
    Delivered(Delivery),
    /// Accepted and dropped by policy.
    Discarded(Category),
    /// Stored in the quarantine (durably, before this value exists).
    Quarantined(Category),
    /// Refused by policy.
    Rejected(Category),
    /// Not decided now: the client should retry.
    Tempfailed(Tempfail),
    /// The header section was larger than `server.max_header_size`: not checked, refused.
    HeaderTooBig,
    /// Recipients in groups with different settings (policy banks), each decided and
    /// delivered apart. Over SMTP (one reply) `lead` is the group whose outcome is the reply:
    /// the first that failed, else the first delivered, else the first quarantined.
    Split {
        groups: Vec<GroupOutcome>,
        lead: usize,
    },
}

/// One group's part of a [`Outcome::Split`].
#[derive(Debug, Clone)]
pub struct GroupOutcome {
    /// Indices of the envelope's recipients.
    pub rcpts: Vec<usize>,
    pub outcome: Outcome,
    /// The quarantine id, when it is not the message's (a second quarantined group).
    pub id: Option<String>,
}

impl Outcome {
    /// The metric label of the action taken: pass (delivered to every recipient), discard,
    /// reject, tempfail, quarantine.
    pub fn action(&self) -> &'static str {
        match self {
            Outcome::Discarded(_) => "discard",
            Outcome::Quarantined(_) => "quarantine",
            Outcome::Rejected(_) | Outcome::HeaderTooBig => "reject",
            Outcome::Tempfailed(_) => "tempfail",
            Outcome::Split { groups, lead } => groups[*lead].outcome.action(),
            Outcome::Delivered(d) => {
                if d.rcpts.contains(&RcptResult::Accepted) {
                    "pass"
                } else if d
                    .rcpts
                    .iter()
                    .all(|x| matches!(x, RcptResult::Refused(u) if u.code >= 500))
                {
                    "reject"
                } else {
                    "tempfail"
                }
            }
        }
    }

    /// The metric label for recipient `i`: delivered, discarded, rejected, deferred.
    pub fn recipient_result(&self, i: usize) -> &'static str {
        match self {
            Outcome::Discarded(_) => "discarded",
            Outcome::Quarantined(_) => "quarantined",
            Outcome::Rejected(_) | Outcome::HeaderTooBig => "rejected",
            Outcome::Tempfailed(_) => "deferred",
            Outcome::Split { groups, .. } => groups
                .iter()
                .find_map(|g| {
                    let j = g.rcpts.iter().position(|&x| x == i)?;
                    Some(g.outcome.recipient_result(j))
                })
                .unwrap_or("deferred"),
            Outcome::Delivered(d) => match d.rcpts.get(i) {
                Some(RcptResult::Accepted) => "delivered",
                Some(RcptResult::Refused(u)) if u.code >= 500 => "rejected",
                _ => "deferred",
            },
        }
    }
}

/// The message's outcome from its groups' (`rcpts` of each, and the quarantine id when not
/// the message's): the one group's, or a [`Outcome::Split`] whose lead is `lead`, else the
/// first delivered group, else the first quarantined.
pub(super) fn combine(
    groups: Vec<(Vec<usize>, Outcome, Option<String>)>,
    lead: Option<usize>,
) -> Outcome {
    if groups.len() == 1 {
        return groups.into_iter().next().expect("one group").1;
    }
    let lead = lead.unwrap_or_else(|| {
        let first = |f: fn(&Outcome) -> bool| groups.iter().position(|(_, o, _)| f(o));
        first(|o| matches!(o, Outcome::Delivered(_)))
            .or_else(|| first(|o| matches!(o, Outcome::Quarantined(_))))
            .unwrap_or(0)
    });
    Outcome::Split {
        groups: groups
            .into_iter()
            .map(|(rcpts, outcome, id)| GroupOutcome { rcpts, outcome, id })
            .collect(),
        lead,
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Delivered(d) => match &d.accepted {
                Some(u) => write!(f, "delivered: {}", u.one_line()),
                None => write!(f, "not delivered"),
            },
            Outcome::Discarded(c) => write!(f, "discarded ({})", c.label()),
            Outcome::Quarantined(c) => write!(f, "quarantined ({})", c.label()),
            Outcome::Rejected(c) => write!(f, "rejected ({})", c.label()),
            Outcome::Tempfailed(t) => write!(f, "tempfailed ({t:?})"),
            Outcome::HeaderTooBig => write!(f, "header section too big"),
            Outcome::Split { groups, .. } => {
                for (i, g) in groups.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "; " };
                    write!(f, "{sep}recipients {:?}: {}", g.rcpts, g.outcome)?;
                }
                Ok(())
            }
        }
    }
}
