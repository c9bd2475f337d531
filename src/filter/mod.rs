//! The pipeline behind the session: a received message is checked (every configured scanner at
//! once), judged by policy, its headers rewritten, and delivered; what became of each recipient
//! comes back as typed values ([`Outcome`]) that the SMTP side turns into replies. The session
//! knows none of these steps, and nothing here knows SMTP reply texts.
//!
//! The stages, in order, one module each: [`groups`] (which recipients share settings: policy
//! banks), [`judge`] (one scan, each group's verdict), [`dispose`] (discard, reject, tempfail,
//! quarantine), [`deliver`] (header section, DKIM signature, and the front end's [`Deliver`]:
//! reinjection, or a dry run for `postsift scan`), and the [`log`] line.
//!
//! [`Pipeline`] is the interface the session calls; [`Filter`] is the real one. It is a trait
//! (not an enum of known pipelines) so that the session can be tested against a stand-in with
//! no peers at all, and so that new stages change this module only.

pub mod deliver;
pub mod dispose;
pub mod groups;
pub mod judge;
mod log;
mod outcome;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::message::{Envelope, Message};
use crate::policy::Decision;
use crate::scan::ScanReport;
use crate::Shared;

pub use deliver::{Deliver, DryRun, Reinjection, Signing};
pub use outcome::{GroupOutcome, Outcome};

use dispose::Dispositions;
use groups::Groups;
use judge::Judged;
use log::{GroupView, LogLine, Timings};

/// The client side of the hop into postsift, for the `Received:` line and the scanners.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The HELO/EHLO/LHLO name the client (Postfix) gave.
    pub helo: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The configured `server.listen` address it came in on, if known.
    pub listener: Option<SocketAddr>,
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

/// The outcome with what the log line, the metrics and `postsift scan` need.
pub struct Processed {
    pub outcome: Outcome,
    /// Metric label of the content category ("unscanned" when no check ran).
    pub verdict: &'static str,
    /// Each recipient group as judged (none when the message was not checked).
    pub groups: Vec<GroupReport>,
    /// One line per recipient group (one for a message without policy banks).
    log: Vec<LogLine>,
}

/// One recipient group's verdict.
#[derive(Debug, Clone)]
pub struct GroupReport {
    /// Indices of the envelope's recipients.
    pub rcpts: Vec<usize>,
    /// The policy banks applied, `-` for none.
    pub bank: String,
    /// The scan report as it stands for the group (a check the group bypasses is off).
    pub report: ScanReport,
    pub decision: Decision,
    pub signing: Signing,
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
        let shared = &self.shared;
        async move { run(shared, received, &Reinjection::new(shared)).await }
    }
}

/// Runs every stage on `r`, under `shared`'s configuration, scanners and metrics; what is to
/// be delivered or quarantined goes to `out`.
pub async fn run(shared: &Shared, r: Received, out: &impl Deliver) -> Processed {
    let m = &shared.metrics;
    let receive = r.started.elapsed();
    m.stage_duration
        .with_label_values(&["receive"])
        .observe(receive.as_secs_f64());
    m.message_size.observe(r.msg.len() as f64);
    if r.msg.header_too_big() {
        tracing::warn!(id = %r.id, size = r.msg.len(), "header section over server.max_header_size: refused");
        return Processed::new(Outcome::HeaderTooBig, "unscanned");
    }
    let scan_start = Instant::now();
    let groups = Groups::of(&shared.config, &r);
    let scanned = judge::scan(shared, &r.msg, &groups::scan_envelope(&r), &groups).await;
    let judged = judge::judge(&groups, &scanned);
    let t = Timings {
        receive,
        scan: scan_start.elapsed(),
        ..Timings::default()
    };
    m.stage_duration
        .with_label_values(&["scan"])
        .observe(t.scan.as_secs_f64());
    dispose_and_deliver(shared, &r, groups, judged, out, t).await
}

/// The stages after the verdict: dispose, deliver, and the message's outcome and log lines.
async fn dispose_and_deliver(
    shared: &Shared,
    r: &Received,
    groups: Groups<'_>,
    judged: Vec<Judged>,
    out: &impl Deliver,
    mut t: Timings,
) -> Processed {
    let start = Instant::now();
    let mut d = Dispositions::new(shared, &judged, r.per_recipient);
    dispose::dispose(shared, r, &groups, &judged, &mut d, out).await;
    let signing = deliver::deliver(shared, r, &groups, &judged, &mut d, out).await;
    t.reinject = start.elapsed();
    finish(shared, r, groups, judged, d, signing, t)
}

/// The metrics and log lines of a disposed message, and its outcome.
fn finish(
    shared: &Shared,
    r: &Received,
    groups: Groups<'_>,
    judged: Vec<Judged>,
    d: Dispositions,
    signing: Vec<Signing>,
    t: Timings,
) -> Processed {
    let m = &shared.metrics;
    let outcomes: Vec<Outcome> = d
        .outcomes
        .into_iter()
        .map(|o| o.expect("every group decided"))
        .collect();
    if outcomes.iter().any(|o| matches!(o, Outcome::Delivered(_))) {
        m.stage_duration
            .with_label_values(&["reinject"])
            .observe(t.reinject.as_secs_f64());
    }
    for (o, (_, d)) in outcomes.iter().zip(&judged) {
        if let Some(reason) = d.unchecked_reason {
            m.unchecked.with_label_values(&[reason, o.action()]).inc();
        }
    }
    let applied: std::collections::BTreeSet<usize> = groups
        .list
        .iter()
        .flat_map(|g| g.banks.iter().copied())
        .collect();
    for b in applied {
        m.bank(&shared.config.policy[b].name);
    }
    let reports: Vec<GroupReport> = judged
        .into_iter()
        .zip(signing)
        .enumerate()
        .map(|(i, ((report, decision), signing))| GroupReport {
            rcpts: groups.list[i].rcpts.clone(),
            bank: groups.bank_names(&shared.config, i),
            report,
            decision,
            signing,
        })
        .collect();
    let log = reports
        .iter()
        .zip(&outcomes)
        .zip(&groups.envs)
        .map(|((g, outcome), env)| {
            let view = GroupView {
                env,
                rcpts: &g.rcpts,
                bank: g.bank.clone(),
                report: &g.report,
                decision: &g.decision,
                outcome,
                dkim_signed: g.signing.log_word(),
            };
            LogLine::new(r, &view, t)
        })
        .collect();
    // The message's verdict (one metric sample) is its most severe group's.
    let verdict = reports
        .iter()
        .map(|g| &g.decision.category)
        .min_by_key(|c| c.rank())
        .map_or("clean", |c| c.label());
    let rcpts = groups.list.into_iter().map(|g| g.rcpts);
    let parts = rcpts
        .zip(outcomes)
        .zip(d.ids)
        .map(|((g, o), id)| (g, o, id));
    Processed {
        outcome: outcome::combine(parts.collect(), d.lead),
        verdict,
        groups: reports,
        log,
    }
}

impl Processed {
    /// An outcome without a log line (a stand-in pipeline in tests).
    pub fn new(outcome: Outcome, verdict: &'static str) -> Processed {
        Processed {
            outcome,
            verdict,
            groups: Vec::new(),
            log: Vec::new(),
        }
    }

    /// Group `i`'s outcome (see [`Processed::groups`]).
    pub fn group_outcome(&self, i: usize) -> &Outcome {
        match &self.outcome {
            Outcome::Split { groups, .. } => &groups[i].outcome,
            o => o,
        }
    }

    /// Writes the message's log lines (one per recipient group), each with the reply its
    /// first recipient got: `reply(i)` is recipient `i`'s.
    pub fn log(&self, reply: &dyn Fn(usize) -> String) {
        for l in &self.log {
            l.write(&reply(l.first_rcpt));
        }
    }
}
