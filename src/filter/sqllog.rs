//! The message's record for amavis's SQL log (`[sql] log = true`): drafted once the groups are
//! disposed (content category per recipient, in amavis's codes, the spam levels, the banks), and
//! completed with each recipient's reply (`ds`, `smtp_resp`) when the session has worded it;
//! then handed to the log writer, which never makes the message wait (a full backlog drops the
//! record and counts it).
//!
//! amavis's codes: V virus, B banned, U unchecked, S spam (at the kill level, and a DMARC
//! p=reject refusal), Y spammy (at tag2 but below kill), O oversized (a header section over
//! `server.max_header_size`), T an MTA error (the next hop refused or deferred a recipient the
//! filter passed), C clean. postsift has no bad-MIME or bad-header category, so it writes no M
//! or H.

use std::time::SystemTime;

use crate::config::Config;
use crate::policy::{Category, Decision};
use crate::reinject::RcptResult;
use crate::runtime::Runtime;
use crate::sql::log::{Content, Ds, LogHandle, LogRecord, RcptRecord};

use super::outcome::Outcome;
use super::received::Received;

/// A record waiting for the replies.
pub(super) struct Pending {
    handle: LogHandle,
    rec: LogRecord,
    /// Per envelope recipient: accepted and dropped by policy (discarded or quarantined).
    dropped: Vec<bool>,
}

/// One recipient group's part, as [`draft`] takes it.
pub(super) struct GroupPart<'a> {
    pub config: &'a Config,
    pub rcpts: &'a [usize],
    pub decision: &'a Decision,
    pub outcome: &'a Outcome,
    /// Bank names, `-` for none.
    pub bank: &'a str,
    /// Whitelisted / blacklisted by the recipient's SQL wblist (per group recipient).
    pub listed: Option<bool>,
}

/// amavis's category of one group's decision under its settings.
pub(super) fn content(d: &Decision, c: &Config) -> Content {
    match &d.category {
        Category::Virus(_) => Content::Virus,
        Category::Banned { .. } => Content::Banned,
        Category::Unchecked => Content::Unchecked,
        Category::Spam | Category::DmarcReject { .. } => Content::Spam,
        Category::Clean => match &d.spam {
            Some(s) if s.score >= c.spam.tag2_level => Content::Spammy,
            _ => Content::Clean,
        },
    }
}

/// amavis's order of the codes, worst first: the message's content is its worst recipient's.
fn rank(c: Content) -> usize {
    "VBUSYMHOTC".find(c.code()).unwrap_or(9)
}

/// The record of `r` with one recipient per envelope recipient; None without `[sql] log`.
pub(super) fn draft(shared: &Runtime, r: &Received, groups: &[GroupPart<'_>]) -> Option<Pending> {
    let handle = shared.sql.as_ref()?.log.clone()?;
    let n = r.env.recipients.len();
    let mut rcpts: Vec<Option<RcptRecord>> = vec![None; n];
    let mut dropped = vec![false; n];
    let mut spam_level = None;
    let mut banks = Vec::new();
    let mut originating = false;
    for g in groups {
        let group_content = content(g.decision, g.config);
        let score = g.decision.spam.as_ref().map(|s| s.score as f32);
        spam_level = spam_level.or(score);
        for b in g.bank.split(',').filter(|b| *b != "-" && !b.is_empty()) {
            if !banks.contains(&b) {
                banks.push(b);
            }
        }
        originating |= is_originating(g.config, r);
        for (j, &i) in g.rcpts.iter().enumerate() {
            let result = g.outcome.recipient_result(j);
            dropped[i] = matches!(result, "discarded" | "quarantined");
            let next_hop_refused = matches!(g.outcome, Outcome::Delivered(d)
                if !matches!(d.rcpts.get(j), Some(RcptResult::Accepted)));
            rcpts[i] = Some(RcptRecord {
                addr: r.env.recipients[i].address.clone(),
                is_local: true,
                content: if next_hop_refused {
                    Content::MtaError
                } else {
                    group_content
                },
                ds: Ds::Pass,
                blacklisted: g.listed == Some(false),
                whitelisted: g.listed == Some(true),
                bspam_level: score,
                smtp_resp: String::new(),
            });
        }
    }
    let recipients: Vec<RcptRecord> = rcpts
        .into_iter()
        .enumerate()
        .map(|(i, x)| {
            x.unwrap_or_else(|| RcptRecord {
                addr: r.env.recipients[i].address.clone(),
                is_local: true,
                content: Content::Clean,
                ds: Ds::Pass,
                blacklisted: false,
                whitelisted: false,
                bspam_level: None,
                smtp_resp: String::new(),
            })
        })
        .collect();
    let content = recipients
        .iter()
        .map(|x| x.content)
        .min_by_key(|c| rank(*c))
        .unwrap_or(Content::Clean);
    let quarantined = groups
        .iter()
        .any(|g| matches!(g.outcome, Outcome::Quarantined(_)));
    let mut rec = record(shared, r, content, recipients);
    rec.policy = banks.join(",");
    rec.spam_level = spam_level;
    rec.originating = originating;
    if quarantined {
        // amavis's quar_type: F for the file store, Q for the quarantine in the database.
        rec.quar_type = Some(if shared.config.quarantine.in_sql() {
            'Q'
        } else {
            'F'
        });
        rec.quar_loc = r.id.clone();
    }
    Some(Pending {
        handle,
        rec,
        dropped,
    })
}

/// The record of a message refused before any check (its header section over
/// `server.max_header_size`): content O.
pub(super) fn oversized(shared: &Runtime, r: &Received) -> Option<Pending> {
    let handle = shared.sql.as_ref()?.log.clone()?;
    let recipients = r
        .env
        .recipients
        .iter()
        .map(|x| RcptRecord {
            addr: x.address.clone(),
            is_local: true,
            content: Content::Oversized,
            ds: Ds::Reject,
            blacklisted: false,
            whitelisted: false,
            bspam_level: None,
            smtp_resp: String::new(),
        })
        .collect::<Vec<_>>();
    let dropped = vec![false; recipients.len()];
    let rec = record(shared, r, Content::Oversized, recipients);
    Some(Pending {
        handle,
        rec,
        dropped,
    })
}

/// The message's own fields.
fn record(shared: &Runtime, r: &Received, content: Content, rcpts: Vec<RcptRecord>) -> LogRecord {
    let header = fields(r.msg.header_section());
    LogRecord {
        mail_id: r.id.clone(),
        secret_id: String::new(),
        am_id: r.id.clone(),
        time: SystemTime::now()
            .checked_sub(r.started.elapsed())
            .unwrap_or_else(SystemTime::now),
        host: shared.hostname.clone(),
        policy: String::new(),
        client_addr: match r.env.xforward.addr.as_deref() {
            Some(a) => a.strip_prefix("IPv6:").unwrap_or(a).to_string(),
            None => r.hop.peer.ip().to_string(),
        },
        size: r.msg.len(),
        originating: false,
        content,
        quar_type: None,
        quar_loc: String::new(),
        dsn_sent: Some('N'),
        spam_level: None,
        message_id: header.message_id,
        from_addr: header.from,
        subject: header.subject,
        sender: r.env.sender.clone(),
        recipients: rcpts,
    }
}

/// amavis's `originating`: mail of our own users (an originating listener, client network or
/// bank, as `[dkim_sign]` tells them), whether or not signing is on.
fn is_originating(c: &Config, r: &Received) -> bool {
    let xf = r.env.xforward.addr.as_deref();
    if c.dkim_sign.enabled {
        return crate::sign::wanted(&c.dkim_sign, r.hop.listener, xf);
    }
    let on = crate::config::DkimSign {
        enabled: true,
        ..c.dkim_sign.clone()
    };
    crate::sign::wanted(&on, r.hop.listener, xf)
}

#[derive(Default)]
struct HeaderFields {
    message_id: String,
    from: String,
    subject: String,
}

/// Message-ID (in <>), From (`Name <addr>`, decoded) and Subject (decoded), as amavis logs them.
fn fields(header: &[u8]) -> HeaderFields {
    let mut h = header.to_vec();
    h.extend_from_slice(b"\r\n");
    let Some(m) = mail_parser::MessageParser::new().parse_headers(&h) else {
        return HeaderFields::default();
    };
    let from = m
        .from()
        .and_then(|a| a.first())
        .map(|a| match (a.name(), a.address()) {
            (Some(n), Some(addr)) => format!("{n} <{addr}>"),
            (None, Some(addr)) => addr.to_string(),
            (Some(n), None) => n.to_string(),
            (None, None) => String::new(),
        })
        .unwrap_or_default();
    HeaderFields {
        message_id: m
            .message_id()
            .map(|id| format!("<{id}>"))
            .unwrap_or_default(),
        from,
        subject: m
            .subject()
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

impl Pending {
    /// Completes the record with each recipient's reply (`reply(i)`: recipient `i`'s, as sent)
    /// and hands it to the log writer; never waits.
    pub(super) fn submit(self, reply: &dyn Fn(usize) -> String) {
        let mut rec = self.rec;
        for (i, x) in rec.recipients.iter_mut().enumerate() {
            let text = reply(i);
            let code = text.get(..3).and_then(|c| c.parse().ok()).unwrap_or(451);
            x.ds = Ds::of(code, self.dropped.get(i).copied().unwrap_or(false), false);
            x.smtp_resp = text;
        }
        self.handle.submit(rec);
    }
}
