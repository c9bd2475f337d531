//! The pipeline behind the session: a received message is checked (every configured scanner at
//! once), judged by policy, its headers rewritten, and reinjected; what became of each recipient
//! comes back as typed values ([`Outcome`]) that the SMTP side turns into replies. The session
//! knows none of these steps, and nothing here knows SMTP reply texts.
//!
//! [`Pipeline`] is the interface the session calls; [`Filter`] is the real one. It is a trait
//! (not an enum of known pipelines) so that the session can be tested against a stand-in with
//! no peers at all, and so that new stages change this module only.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::message::{Envelope, Message};
use crate::policy::{self, Category, Decision, Disposition, Tempfail};
use crate::reinject::{Delivery, RcptResult};
use crate::rewrite;
use crate::scan::{ScanEnvelope, ScanReport, SpamScan, VirusScan};
use crate::Shared;

/// The client side of the hop into postsift, for the `Received:` line and the scanners.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The HELO/EHLO/LHLO name the client (Postfix) gave.
    pub helo: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// "ESMTP", "SMTP" or "LMTP".
    pub protocol: &'static str,
}

/// A message as the session received it.
pub struct Received {
    /// postsift's id for the message (logs, replies).
    pub id: String,
    pub env: Envelope,
    pub msg: Message,
    pub hop: Hop,
    /// When DATA began.
    pub started: Instant,
    /// The client takes one reply per recipient (LMTP); otherwise one per message, and the
    /// message goes on only if every recipient can take it.
    pub per_recipient: bool,
}

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
}

/// The outcome with what the log line and the metrics need.
pub struct Processed {
    pub outcome: Outcome,
    /// Metric label of the content category ("unscanned" when no check ran).
    pub verdict: &'static str,
    log: Option<LogLine>,
}

/// The stages the pipeline runs.
pub trait Pipeline: Send + Sync {
    fn process(&self, received: Received) -> impl Future<Output = Processed> + Send;
}

/// The real pipeline: scanners, policy, rewrite, reinjection, as configured in `shared`.
pub struct Filter {
    shared: Arc<Shared>,
}

impl Filter {
    pub fn new(shared: Arc<Shared>) -> Filter {
        Filter { shared }
    }
}

impl Pipeline for Filter {
    fn process(&self, received: Received) -> impl Future<Output = Processed> + Send {
        process(&self.shared, received)
    }
}

/// Runs the checks and the policy on `msg`: the verdict without delivering (also what
/// `postsift scan` shows).
pub async fn judge(shared: &Shared, msg: &Message, env: &ScanEnvelope) -> (ScanReport, Decision) {
    let report = shared.scanners.scan(msg, env, &shared.metrics).await;
    let decision = policy::decide(&shared.config, &report);
    (report, decision)
}

/// The header block that replaces the original header section: postsift's headers, the
/// original ones less the forged, and a blank line before a malformed first body line.
pub fn header_block(
    shared: &Shared,
    decision: &Decision,
    hop: &Hop,
    id: &str,
    msg: &Message,
) -> Vec<u8> {
    let trace = rewrite::Trace {
        helo: &hop.helo,
        peer: hop.peer,
        local: hop.local,
        protocol: hop.protocol,
        id,
    };
    let mut block = rewrite::header_block(&shared.config, decision, &trace, msg.header_section());
    if msg.needs_separator() {
        block.extend_from_slice(b"\r\n");
    }
    block
}

async fn process(shared: &Shared, r: Received) -> Processed {
    let m = &shared.metrics;
    let received = r.started.elapsed();
    m.stage_duration
        .with_label_values(&["receive"])
        .observe(received.as_secs_f64());
    m.message_size.observe(r.msg.len() as f64);
    if r.msg.header_too_big() {
        tracing::warn!(id = %r.id, size = r.msg.len(), "header section over server.max_header_size: refused");
        return Processed {
            outcome: Outcome::HeaderTooBig,
            verdict: "unscanned",
            log: None,
        };
    }

    let scan_start = Instant::now();
    let xf = &r.env.xforward;
    let scan_env = ScanEnvelope {
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
    };
    let (report, decision) = judge(shared, &r.msg, &scan_env).await;
    let scan_time = scan_start.elapsed();
    m.stage_duration
        .with_label_values(&["scan"])
        .observe(scan_time.as_secs_f64());

    let reinject_start = Instant::now();
    let outcome = match &decision.disposition {
        Disposition::Deliver => {
            let block = header_block(shared, &decision, &r.hop, &r.id, &r.msg);
            let d = shared
                .reinjector
                .send(&r.env, &block, &r.msg, !r.per_recipient)
                .await;
            if let Some(kind) = d.failure {
                m.reinject_errors.with_label_values(&[kind]).inc();
                if d.rcpts.iter().any(|x| matches!(x, RcptResult::Failed(_)))
                    || d.rcpts
                        .iter()
                        .any(|x| matches!(x, RcptResult::Refused(u) if u.is_transient()))
                {
                    m.tempfails.with_label_values(&["reinject"]).inc();
                }
            }
            m.reinject_up.set(!matches!(
                d.failure,
                Some("connect") | Some("timeout") | Some("network")
            ) as i64);
            m.stage_duration
                .with_label_values(&["reinject"])
                .observe(reinject_start.elapsed().as_secs_f64());
            Outcome::Delivered(d)
        }
        Disposition::Discard => Outcome::Discarded(decision.category.clone()),
        Disposition::Reject => Outcome::Rejected(decision.category.clone()),
        Disposition::Quarantine => quarantine(shared, &r, &decision).await,
        Disposition::Tempfail(t) => {
            m.tempfails
                .with_label_values(&[decision.tempfail_reason.unwrap_or("clamd")])
                .inc();
            Outcome::Tempfailed(t.clone())
        }
    };
    if let Some(reason) = decision.unchecked_reason {
        m.unchecked
            .with_label_values(&[reason, outcome.action()])
            .inc();
    }
    let log = LogLine::new(
        &r,
        &report,
        &decision,
        &outcome,
        received,
        scan_time,
        reinject_start.elapsed(),
    );
    Processed {
        outcome,
        verdict: decision.category.label(),
        log: Some(log),
    }
}

/// Stores the message in the quarantine; a failure is a tempfail (the client keeps it).
async fn quarantine(shared: &Shared, r: &Received, decision: &Decision) -> Outcome {
    let m = &shared.metrics;
    let failed = |why: String| {
        tracing::error!(id = %r.id, error = %why, "cannot quarantine: answering 451");
        m.tempfails.with_label_values(&["quarantine"]).inc();
        Outcome::Tempfailed(Tempfail::Quarantine(why))
    };
    let Some(q) = &shared.quarantine else {
        return failed("the quarantine is not open (restart postsift after enabling it)".into());
    };
    let category = decision.category.label();
    let mut meta = crate::quarantine::Meta::new(&r.id, &r.env, &r.msg, category, reason(decision));
    meta.helo = r.hop.helo.clone();
    let start = Instant::now();
    match crate::quarantine::store_message(q.clone(), meta, &r.msg).await {
        Ok(()) => {
            m.quarantine_store_duration
                .observe(start.elapsed().as_secs_f64());
            m.quarantined.with_label_values(&[category]).inc();
            m.quarantine_entries.inc();
            m.quarantine_bytes.add(r.msg.len() as i64);
            Outcome::Quarantined(decision.category.clone())
        }
        Err(e) => failed(e.to_string()),
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

impl Outcome {
    /// The metric label of the action taken: pass (delivered to every recipient), discard,
    /// reject, tempfail, quarantine.
    pub fn action(&self) -> &'static str {
        match self {
            Outcome::Discarded(_) => "discard",
            Outcome::Quarantined(_) => "quarantine",
            Outcome::Rejected(_) | Outcome::HeaderTooBig => "reject",
            Outcome::Tempfailed(_) => "tempfail",
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
            Outcome::Delivered(d) => match d.rcpts.get(i) {
                Some(RcptResult::Accepted) => "delivered",
                Some(RcptResult::Refused(u)) if u.code >= 500 => "rejected",
                _ => "deferred",
            },
        }
    }
}

impl Processed {
    /// An outcome without a log line (a stand-in pipeline in tests).
    pub fn new(outcome: Outcome, verdict: &'static str) -> Processed {
        Processed {
            outcome,
            verdict,
            log: None,
        }
    }

    /// Writes the one log line for this message, with the reply the client got.
    pub fn log(&self, reply: &str) {
        if let Some(l) = &self.log {
            l.write(reply);
        }
    }
}

/// The fields of the per-message log line.
struct LogLine {
    id: String,
    queue_id: String,
    client: String,
    from: String,
    to: String,
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
    size: u64,
    receive: Duration,
    scan: Duration,
    clamd: Duration,
    spamd: Duration,
    reinject: Duration,
    queued_as: String,
    problems: String,
}

impl LogLine {
    #[allow(clippy::too_many_arguments)]
    fn new(
        r: &Received,
        report: &ScanReport,
        decision: &Decision,
        outcome: &Outcome,
        receive: Duration,
        scan: Duration,
        reinject: Duration,
    ) -> LogLine {
        let (score, rules) = match &decision.spam {
            Some(s) => (rewrite::score(s.score), s.rules.len()),
            None => ("-".into(), 0),
        };
        let virus = match &decision.category {
            Category::Virus(names) => names.join(","),
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
            queue_id: r.env.xforward.ident.clone().unwrap_or_else(|| "-".into()),
            client: r.env.xforward.addr.clone().unwrap_or_else(|| "-".into()),
            from: format!("<{}>", r.env.sender),
            to: r
                .env
                .recipients
                .iter()
                .map(|x| x.address.as_str())
                .collect::<Vec<_>>()
                .join(","),
            verdict: decision.category.label(),
            action: match &decision.disposition {
                Disposition::Deliver => "pass",
                Disposition::Discard => "discard",
                Disposition::Reject => "reject",
                Disposition::Quarantine => match outcome {
                    Outcome::Quarantined(_) => "quarantine",
                    _ => "tempfail",
                },
                Disposition::Tempfail(_) => "tempfail",
            },
            score,
            rules,
            virus,
            banned: match &decision.category {
                Category::Banned { name, kind } => format!("{kind},{name}"),
                _ => "-".into(),
            },
            parts: match &report.parts {
                None => "-".into(),
                Some(p) => match &p.limit {
                    None => p.count.to_string(),
                    Some(l) => format!("{} (stopped: {}: {l})", p.count, l.kind.label()),
                },
            },
            auth: report
                .auth
                .as_ref()
                .map_or_else(|| "-".into(), auth_summary),
            size: r.msg.len(),
            receive,
            scan,
            clamd: report.virus_time,
            spamd: report.spam_time,
            reinject: if matches!(outcome, Outcome::Delivered(_)) {
                reinject
            } else {
                Duration::ZERO
            },
            queued_as: queued_as.unwrap_or_else(|| "-".into()),
            problems: problems.join("; "),
        }
    }

    fn write(&self, reply: &str) {
        tracing::info!(
            target: "postsift::message",
            id = %self.id,
            queue_id = %self.queue_id,
            client = %self.client,
            from = %self.from,
            to = %self.to,
            verdict = self.verdict,
            action = self.action,
            score = %self.score,
            rules = self.rules,
            virus = %self.virus,
            banned = %self.banned,
            parts = %self.parts,
            auth = %self.auth,
            size = self.size,
            receive_ms = self.receive.as_millis() as u64,
            scan_ms = self.scan.as_millis() as u64,
            clamd_ms = self.clamd.as_millis() as u64,
            spamd_ms = self.spamd.as_millis() as u64,
            reinject_ms = self.reinject.as_millis() as u64,
            queued_as = %self.queued_as,
            reply = %reply,
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
        }
    }
}
