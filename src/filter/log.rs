//! The per-message log line (`target: postsift::message`), one per recipient group: who, what
//! the checks found, what was done, how long each stage took, and the reply. Every value from
//! outside is escaped here.

use std::time::Duration;

use crate::escape;
use crate::message::Envelope;
use crate::policy::{Category, Decision, Disposition};
use crate::rewrite;
use crate::scan::{ScanReport, SpamScan, VirusScan};

use super::outcome::Outcome;
use super::received::Received;

/// How long the message spent in each stage, for the log line.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Timings {
    pub receive: Duration,
    pub scan: Duration,
    pub reinject: Duration,
    /// Hybrid mode: the hop took the milter's scan instead of scanning (`scan_ms` is then the
    /// lookup's, the scanners' times those of the milter's scan).
    pub reused: bool,
}

/// One recipient group's part of the message, as the log line reports it.
pub(super) struct GroupView<'a> {
    pub env: &'a Envelope,
    /// The group's recipients (indices into the message's envelope).
    pub rcpts: &'a [usize],
    /// The policy banks applied, `-` for none.
    pub bank: String,
    pub report: &'a ScanReport,
    pub decision: &'a Decision,
    pub outcome: &'a Outcome,
    /// DKIM signing: the signing domain, `no_key`, `error`, or `-` (not outgoing mail).
    pub dkim_signed: String,
}

/// The fields of the per-message log line.
pub(super) struct LogLine {
    id: String,
    /// `milter` (before queue) or `content_filter` (after queue).
    frontend: &'static str,
    queue_id: String,
    client: String,
    from: String,
    to: String,
    /// The policy banks applied, `-` for none.
    bank: String,
    /// The group's first recipient (whose reply the line shows).
    pub(super) first_rcpt: usize,
    verdict: &'static str,
    action: &'static str,
    score: String,
    rules: usize,
    virus: String,
    /// The banned part, `-` if none.
    banned: String,
    /// Parts the MIME walk decoded (`-`: not walked), and why it stopped early.
    parts: String,
    /// Mail authentication, one word per method (`-`: off).
    auth: String,
    /// DKIM signing: the signing domain, `no_key`, `error`, or `-` (not outgoing mail).
    dkim_signed: String,
    size: u64,
    receive: Duration,
    scan: Duration,
    /// Hybrid mode: the milter's scan reused (see [`Timings::reused`]).
    reused: bool,
    clamd: Duration,
    spamd: Duration,
    reinject: Duration,
    queued_as: String,
    problems: String,
}

impl LogLine {
    pub(super) fn new(r: &Received, g: &GroupView<'_>, t: Timings) -> LogLine {
        let (report, decision, outcome) = (g.report, g.decision, g.outcome);
        let (score, rules) = match &decision.spam {
            Some(s) => (rewrite::score(s.score), s.rules.len()),
            None => ("-".into(), 0),
        };
        let virus = match &decision.category {
            Category::Virus(names) => escape::text(&names.join(",")),
            _ => "-".into(),
        };
        let problems: Vec<String> = [
            match &report.virus {
                VirusScan::Failed(f) => Some(format!("clamd: {f}")),
                _ => None,
            },
            match &report.spam {
                SpamScan::Failed(f) => Some(format!("spam: {f}")),
                _ => None,
            },
        ]
        .into_iter()
        .flatten()
        .collect();
        let queued_as = match outcome {
            Outcome::Delivered(d) => d.queue_id.clone(),
            _ => None,
        };
        LogLine {
            id: r.id.clone(),
            frontend: r.hop.frontend(),
            queue_id: r
                .env
                .xforward
                .ident
                .as_deref()
                .map_or_else(|| "-".into(), escape::text),
            client: r
                .env
                .xforward
                .addr
                .as_deref()
                .map_or_else(|| "-".into(), escape::text),
            from: format!("<{}>", escape::text(&r.env.sender)),
            to: g
                .env
                .recipients
                .iter()
                .map(|x| escape::text(&x.address))
                .collect::<Vec<_>>()
                .join(","),
            bank: g.bank.clone(),
            first_rcpt: g.rcpts.first().copied().unwrap_or(0),
            verdict: decision.category.label(),
            action: match (&decision.disposition, outcome) {
                // Over SMTP another group's reject or tempfail became this one's.
                (Disposition::Deliver | Disposition::Discard | Disposition::Quarantine, o)
                    if matches!(o, Outcome::Rejected(_) | Outcome::Tempfailed(_)) =>
                {
                    o.action()
                }
                (d, _) => match d {
                    Disposition::Deliver => "pass",
                    Disposition::Discard => "discard",
                    Disposition::Reject => "reject",
                    Disposition::Quarantine => match outcome {
                        Outcome::Quarantined(_) => "quarantine",
                        _ => "tempfail",
                    },
                    Disposition::Tempfail(_) => "tempfail",
                },
            },
            score,
            rules,
            virus,
            banned: match &decision.category {
                Category::Banned { name, kind } => {
                    format!("{},{}", escape::text(kind), escape::text(name))
                }
                _ => "-".into(),
            },
            parts: match &report.parts {
                None => "-".into(),
                Some(p) => match &p.limit {
                    None => p.count.to_string(),
                    Some(l) => format!(
                        "{} (stopped: {}: {})",
                        p.count,
                        l.kind.label(),
                        escape::text(&l.to_string())
                    ),
                },
            },
            auth: report
                .auth
                .as_ref()
                .map_or_else(|| "-".into(), auth_summary),
            dkim_signed: g.dkim_signed.clone(),
            size: r.msg.len(),
            receive: t.receive,
            scan: t.scan,
            reused: t.reused,
            clamd: report.virus_time,
            spamd: report.spam_time,
            reinject: if matches!(outcome, Outcome::Delivered(_)) {
                t.reinject
            } else {
                Duration::ZERO
            },
            queued_as: queued_as.map_or_else(|| "-".into(), |q| escape::text(&q)),
            problems: escape::text(&problems.join("; ")),
        }
    }

    pub(super) fn write(&self, reply: &str) {
        tracing::info!(
            target: "postsift::message",
            id = %self.id,
            frontend = self.frontend,
            queue_id = %self.queue_id,
            client = %self.client,
            from = %self.from,
            to = %self.to,
            bank = %self.bank,
            verdict = self.verdict,
            action = self.action,
            score = %self.score,
            rules = self.rules,
            virus = %self.virus,
            banned = %self.banned,
            parts = %self.parts,
            auth = %self.auth,
            dkim_signed = %self.dkim_signed,
            size = self.size,
            receive_ms = self.receive.as_millis() as u64,
            scan_ms = self.scan.as_millis() as u64,
            scan_reused = self.reused,
            clamd_ms = self.clamd.as_millis() as u64,
            spamd_ms = self.spamd.as_millis() as u64,
            reinject_ms = self.reinject.as_millis() as u64,
            queued_as = %self.queued_as,
            reply = %escape::Shown(reply),
            problems = %self.problems,
            "message"
        );
    }
}

/// `spf=pass spf_helo=none dkim=pass,fail dmarc=pass arc=none`; SPF that could not be checked
/// says why (`spf=unchecked(no client address from XFORWARD ADDR)`).
fn auth_summary(a: &crate::scan::auth::AuthReport) -> String {
    let mut out = Vec::new();
    match (&a.spf, a.spf_skipped) {
        (Some(s), _) => out.push(format!("spf={}", s.result.label())),
        (None, Some(why)) => out.push(format!("spf=unchecked({why})")),
        _ => {}
    }
    if let Some(s) = &a.spf_helo {
        out.push(format!("spf_helo={}", s.result.label()));
    }
    if let Some(d) = &a.dkim {
        let r: Vec<&str> = d.iter().map(|s| s.result.label()).collect();
        out.push(format!(
            "dkim={}",
            if r.is_empty() {
                "none".into()
            } else {
                r.join(",")
            }
        ));
    }
    if let Some(d) = &a.dmarc {
        out.push(format!("dmarc={}", d.result.label()));
    }
    if let Some(x) = &a.arc {
        out.push(format!("arc={}", x.result.label()));
    }
    if let Some(why) = a.message_skipped {
        out.push(format!("dkim,dmarc,arc=unchecked({why})"));
    }
    out.join(" ")
}
