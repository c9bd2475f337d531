//! The pipeline behind the session: a received message is checked (every configured scanner at
//! once), judged by policy, its headers rewritten, and reinjected; what became of each recipient
//! comes back as typed values ([`Outcome`]) that the SMTP side turns into replies. The session
//! knows none of these steps, and nothing here knows SMTP reply texts.
//!
//! [`Pipeline`] is the interface the session calls; [`Filter`] is the real one. It is a trait
//! (not an enum of known pipelines) so that the session can be tested against a stand-in with
//! no peers at all, and so that new stages change this module only.

pub mod metrics;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::banks;
use crate::config::{Config, DkimSign, SignOnError};
use crate::escape;
use crate::message::{Envelope, Message};
use crate::policy::{self, Category, Decision, Disposition, Tempfail};
use crate::reinject::{Delivery, RcptResult};
use crate::rewrite;
use crate::runtime::Runtime;
use crate::scan::{banned, Needs, ScanEnvelope, ScanReport, SpamScan, VirusScan};
use crate::sign::Signed;

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

/// The outcome with what the log line and the metrics need.
pub struct Processed {
    pub outcome: Outcome,
    /// Metric label of the content category ("unscanned" when no check ran).
    pub verdict: &'static str,
    /// One line per recipient group (one for a message without policy banks).
    log: Vec<LogLine>,
}

/// The stages the pipeline runs.
pub trait Pipeline: Send + Sync {
    fn process(&self, received: Received) -> impl Future<Output = Processed> + Send;
}

/// The real pipeline: scanners, policy, rewrite, reinjection, as configured in `shared`.
pub struct Filter {
    shared: Arc<Runtime>,
}

impl Filter {
    pub fn new(shared: Arc<Runtime>) -> Filter {
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
pub async fn judge(shared: &Runtime, msg: &Message, env: &ScanEnvelope) -> (ScanReport, Decision) {
    let report = shared.scanners.scan(msg, env, &shared.metrics.scan).await;
    let decision = policy::decide(&shared.config, &report);
    (report, decision)
}

/// The header block that replaces the original header section: postsift's headers, the
/// original ones less the forged, and a blank line before a malformed first body line.
pub fn header_block(
    shared: &Runtime,
    decision: &Decision,
    hop: &Hop,
    id: &str,
    msg: &Message,
) -> Vec<u8> {
    header_block_with(&shared.config, decision, hop, id, msg)
}

/// [`header_block`] under `config` (a recipient group's effective settings).
fn header_block_with(
    config: &Config,
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
    let mut block = rewrite::header_block(config, decision, &trace, msg.header_section());
    if msg.needs_separator() {
        block.extend_from_slice(b"\r\n");
    }
    block
}

async fn process(shared: &Runtime, r: Received) -> Processed {
    let m = &shared.metrics.filter;
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
            log: Vec::new(),
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

    // Recipients grouped by their policy banks; each group has its own settings.
    let ctx = banks::Context {
        listener: r.hop.listener,
        // XFORWARD ADDR=[UNAVAILABLE] (local submission): not known, so no client network
        // matches; without XFORWARD the connecting client is the original one.
        client: match xf.addr.as_deref() {
            Some(a) => a.strip_prefix("IPv6:").unwrap_or(a).parse().ok(),
            None => {
                banks::warn_once_without_xforward(&shared.config);
                Some(r.hop.peer.ip())
            }
        },
        sender: &r.env.sender,
    };
    let groups = banks::group(
        &shared.config,
        &ctx,
        r.env.recipients.iter().map(|x| x.address.as_str()),
    );
    let configs: Vec<Cow<'_, Config>> = groups
        .iter()
        .map(|g| match g.banks.is_empty() {
            true => Cow::Borrowed(&shared.config),
            false => Cow::Owned(banks::effective(&shared.config, &g.banks)),
        })
        .collect();
    let (needs, rule_set) = needs(&shared.config, &configs);
    let (report, banned_by) = shared
        .scanners
        .scan_for(&r.msg, &scan_env, &shared.metrics.scan, &needs)
        .await;
    let judged: Vec<(ScanReport, Decision)> = configs
        .iter()
        .zip(&rule_set)
        .map(|(c, set)| {
            let mut report = report.clone();
            // A bypassed check ran for others: its answer is not this group's, except a virus
            // found (a bypass saves the scan; it does not deliver a known virus).
            if c.clamd.endpoints.is_empty() && !matches!(report.virus, VirusScan::Infected(_)) {
                report.virus = VirusScan::Off;
            }
            if !spam_on(c) {
                report.spam = SpamScan::Off;
            }
            if let Some(i) = set {
                report.banned = banned_by[*i].clone();
            }
            let decision = policy::decide(c, &report);
            (report, decision)
        })
        .collect();
    let scan_time = scan_start.elapsed();
    m.stage_duration
        .with_label_values(&["scan"])
        .observe(scan_time.as_secs_f64());

    let reinject_start = Instant::now();
    let split = groups.len() > 1;
    let envs: Vec<Cow<'_, Envelope>> = groups
        .iter()
        .map(|g| match split {
            false => Cow::Borrowed(&r.env),
            true => Cow::Owned(sub_envelope(&r.env, &g.rcpts)),
        })
        .collect();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; groups.len()];
    let mut ids: Vec<Option<String>> = vec![None; groups.len()];
    // SMTP gives one reply for all recipients: a tempfail or a reject of one group is the
    // whole message's, decided before anything is stored or sent.
    let mut lead = None;
    if split && !r.per_recipient {
        let tempfail = judged
            .iter()
            .position(|(_, d)| matches!(d.disposition, Disposition::Tempfail(_)));
        let reject = judged
            .iter()
            .position(|(_, d)| d.disposition == Disposition::Reject);
        let whole = match (tempfail, reject) {
            (Some(i), _) => {
                let d = &judged[i].1;
                m.tempfails
                    .with_label_values(&[d.tempfail_reason.unwrap_or("clamd")])
                    .inc();
                let Disposition::Tempfail(t) = &d.disposition else {
                    unreachable!("found as a tempfail")
                };
                Some((i, Outcome::Tempfailed(t.clone())))
            }
            (None, Some(i)) => Some((i, Outcome::Rejected(judged[i].1.category.clone()))),
            (None, None) => None,
        };
        if let Some((i, o)) = whole {
            outcomes = vec![Some(o); groups.len()];
            lead = Some(i);
        }
    }
    // Everything but delivery first: a failed quarantine then withholds the deliveries of an
    // SMTP message (its 4xx makes the client send it again).
    let mut failed = false;
    let mut quarantined = 0;
    for (i, (_, d)) in judged.iter().enumerate() {
        if outcomes[i].is_some() {
            continue;
        }
        outcomes[i] = match &d.disposition {
            Disposition::Deliver => continue,
            Disposition::Discard => Some(Outcome::Discarded(d.category.clone())),
            Disposition::Reject => Some(Outcome::Rejected(d.category.clone())),
            Disposition::Tempfail(t) => {
                m.tempfails
                    .with_label_values(&[d.tempfail_reason.unwrap_or("clamd")])
                    .inc();
                Some(Outcome::Tempfailed(t.clone()))
            }
            Disposition::Quarantine => {
                // Each quarantined group is its own entry with its own recipients.
                let id = match quarantined {
                    0 => r.id.clone(),
                    k => format!("{}-{}", r.id, k + 1),
                };
                quarantined += 1;
                let o = quarantine(shared, &r, &id, &envs[i], d).await;
                if matches!(o, Outcome::Tempfailed(_)) {
                    failed = true;
                    lead.get_or_insert(i);
                }
                ids[i] = (id != r.id).then_some(id);
                Some(o)
            }
        };
    }
    let delivering: Vec<usize> = (0..groups.len())
        .filter(|&i| outcomes[i].is_none())
        .collect();
    let mut blocks: Vec<Vec<u8>> = delivering
        .iter()
        .map(|&i| header_block_with(&configs[i], &judged[i].1, &r.hop, &r.id, &r.msg))
        .collect();
    // Outgoing copies are signed over what goes out: the rewritten header block and the body.
    let mut dkim: Vec<String> = vec!["-".into(); groups.len()];
    for (&i, block) in delivering.iter().zip(blocks.iter_mut()) {
        let c = &configs[i].dkim_sign;
        if !crate::sign::wanted(c, r.hop.listener, xf.addr.as_deref()) {
            continue;
        }
        dkim[i] = match dkim_sign(shared, c, block, &r.msg, &r.id).await {
            Ok(word) => word,
            Err(why) if c.on_error == SignOnError::Tempfail => {
                m.tempfails.with_label_values(&["dkim_sign"]).inc();
                outcomes[i] = Some(Outcome::Tempfailed(Tempfail::Sign(why)));
                // Over SMTP the other copies are withheld: the client sends them all again.
                failed = true;
                lead.get_or_insert(i);
                "error".into()
            }
            Err(_) => "error".into(),
        };
    }
    let (delivering, blocks): (Vec<usize>, Vec<Vec<u8>>) = delivering
        .into_iter()
        .zip(blocks)
        .filter(|(i, _)| outcomes[*i].is_none())
        .unzip();
    if r.per_recipient || delivering.len() < 2 || failed {
        // Each group on its own (LMTP: each recipient has its own reply anyway).
        for (&i, block) in delivering.iter().zip(&blocks) {
            let env = &envs[i];
            let d = if failed && !r.per_recipient {
                shared.reinjector.withheld(env)
            } else {
                deliver(shared, env, block, &r.msg, !r.per_recipient).await
            };
            if !r.per_recipient && !d.all_accepted() {
                lead.get_or_insert(i);
            }
            outcomes[i] = Some(Outcome::Delivered(d));
        }
    } else {
        // SMTP, several copies: all envelopes accepted before any data goes.
        let parts: Vec<(&Envelope, &[u8])> = delivering
            .iter()
            .zip(&blocks)
            .map(|(&i, b)| (&*envs[i], &b[..]))
            .collect();
        let results = shared.reinjector.send_together(&parts, &r.msg).await;
        let mut sent = false;
        for (&i, d) in delivering.iter().zip(results) {
            record_delivery(shared, &d);
            if !d.all_accepted() && d.failure.is_some() {
                if sent {
                    tracing::warn!(id = %r.id, "recipients in several policy groups over SMTP: a copy failed at its end of data after an earlier one was accepted; the client's retry sends the earlier one again");
                }
                lead.get_or_insert(i);
            }
            sent |= d.all_accepted();
            outcomes[i] = Some(Outcome::Delivered(d));
        }
    }
    if outcomes
        .iter()
        .any(|o| matches!(o, Some(Outcome::Delivered(_))))
    {
        m.stage_duration
            .with_label_values(&["reinject"])
            .observe(reinject_start.elapsed().as_secs_f64());
    }
    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .map(|o| o.expect("every group decided"))
        .collect();
    for (o, (_, d)) in outcomes.iter().zip(&judged) {
        if let Some(reason) = d.unchecked_reason {
            m.unchecked.with_label_values(&[reason, o.action()]).inc();
        }
    }
    let applied: std::collections::BTreeSet<usize> = groups
        .iter()
        .flat_map(|g| g.banks.iter().copied())
        .collect();
    m.banks_applied(
        applied
            .into_iter()
            .map(|b| shared.config.policy[b].name.as_str()),
    );
    let reinject_time = reinject_start.elapsed();
    let log = groups
        .iter()
        .zip(&judged)
        .zip(&outcomes)
        .zip(&envs)
        .zip(dkim)
        .map(|((((g, (report, decision)), outcome), env), dkim)| {
            LogLine::new(
                &r,
                env,
                g,
                banks::names(&shared.config, &g.banks),
                report,
                decision,
                outcome,
                received,
                scan_time,
                reinject_time,
                dkim,
            )
        })
        .collect();
    // The message's verdict (one metric sample) is its most severe group's.
    let verdict = judged
        .iter()
        .map(|(_, d)| &d.category)
        .min_by_key(|c| c.rank())
        .map_or("clean", |c| c.label());
    let outcome = if split {
        let lead = lead.unwrap_or_else(|| {
            let first = |f: fn(&Outcome) -> bool| outcomes.iter().position(f);
            first(|o| matches!(o, Outcome::Delivered(_)))
                .or_else(|| first(|o| matches!(o, Outcome::Quarantined(_))))
                .unwrap_or(0)
        });
        Outcome::Split {
            groups: groups
                .iter()
                .zip(outcomes)
                .zip(ids)
                .map(|((g, outcome), id)| GroupOutcome {
                    rcpts: g.rcpts.clone(),
                    outcome,
                    id,
                })
                .collect(),
            lead,
        }
    } else {
        outcomes.into_iter().next().expect("one group")
    };
    Processed {
        outcome,
        verdict,
        log,
    }
}

/// One scan serves every group: the scanners some group needs, and the banned rules of each
/// group whose rules are not `[banned] rules` (for each group: its index in
/// `Needs::banned_rules`, None for the defaults).
fn needs(config: &Config, groups: &[Cow<'_, Config>]) -> (Needs, Vec<Option<usize>>) {
    let mut needs = Needs {
        virus: false,
        spam: false,
        banned_rules: Vec::new(),
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
    (needs, rule_set)
}

/// Whether the spam engine in use is on in `c` (a bank may bypass it).
fn spam_on(c: &Config) -> bool {
    crate::scan::spam_engine(c).is_some()
}

/// `env` with only the recipients at `rcpts`.
fn sub_envelope(env: &Envelope, rcpts: &[usize]) -> Envelope {
    Envelope {
        recipients: rcpts.iter().map(|&i| env.recipients[i].clone()).collect(),
        ..env.clone()
    }
}

/// DKIM-signs one copy: the signatures go on top of `block`. Returns the log word (the
/// signing domain, or `no_key`), or why signing failed (logged and counted here; the caller
/// applies `on_error`).
async fn dkim_sign(
    shared: &Runtime,
    c: &DkimSign,
    block: &mut Vec<u8>,
    msg: &Message,
    id: &str,
) -> Result<String, String> {
    let m = &shared.metrics.dkim_sign;
    let start = Instant::now();
    match crate::sign::sign(c, block, msg).await {
        Ok(Signed::Signed { headers, domain }) => {
            m.duration.observe(start.elapsed().as_secs_f64());
            m.signed.with_label_values(&["signed"]).inc();
            block.splice(0..0, headers);
            Ok(domain)
        }
        Ok(Signed::NoKey) => {
            m.signed.with_label_values(&["no_key"]).inc();
            Ok("no_key".into())
        }
        Err(e) => {
            m.signed.with_label_values(&["error"]).inc();
            let action = match c.on_error {
                SignOnError::Pass => "delivered unsigned",
                SignOnError::Tempfail => "answering 451",
            };
            tracing::error!(%id, error = %escape::Shown(&e.to_string()), "DKIM signing failed: {action}");
            Err(e.to_string())
        }
    }
}

/// Reinjects one group's copy, recording the reinjection's metrics.
async fn deliver(
    shared: &Runtime,
    env: &Envelope,
    block: &[u8],
    msg: &Message,
    all_or_nothing: bool,
) -> Delivery {
    let d = shared
        .reinjector
        .send(env, block, msg, all_or_nothing)
        .await;
    record_delivery(shared, &d);
    d
}

/// The reinjection metrics for one copy.
fn record_delivery(shared: &Runtime, d: &Delivery) {
    let m = &shared.metrics;
    if let Some(kind) = d.failure {
        m.reinject.reinject_errors.with_label_values(&[kind]).inc();
        if d.rcpts.iter().any(|x| matches!(x, RcptResult::Failed(_)))
            || d.rcpts
                .iter()
                .any(|x| matches!(x, RcptResult::Refused(u) if u.is_transient()))
        {
            m.filter.tempfails.with_label_values(&["reinject"]).inc();
        }
    }
    m.reinject.reinject_up.set(!matches!(
        d.failure,
        Some("connect") | Some("timeout") | Some("network")
    ) as i64);
}

/// Stores the message in the quarantine; a failure is a tempfail (the client keeps it).
async fn quarantine(
    shared: &Runtime,
    r: &Received,
    id: &str,
    env: &Envelope,
    decision: &Decision,
) -> Outcome {
    let m = &shared.metrics;
    let failed = |why: String| {
        tracing::error!(%id, error = %escape::Shown(&why), "cannot quarantine: answering 451");
        m.filter.tempfails.with_label_values(&["quarantine"]).inc();
        Outcome::Tempfailed(Tempfail::Quarantine(why))
    };
    let Some(q) = &shared.quarantine else {
        return failed("the quarantine is not open (restart postsift after enabling it)".into());
    };
    let category = decision.category.label();
    let mut meta = crate::quarantine::Meta::new(id, env, &r.msg, category, reason(decision));
    meta.helo = r.hop.helo.clone();
    let start = Instant::now();
    match crate::quarantine::store_message(q.clone(), meta, &r.msg).await {
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

impl Processed {
    /// An outcome without a log line (a stand-in pipeline in tests).
    pub fn new(outcome: Outcome, verdict: &'static str) -> Processed {
        Processed {
            outcome,
            verdict,
            log: Vec::new(),
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

/// The fields of the per-message log line.
struct LogLine {
    id: String,
    queue_id: String,
    client: String,
    from: String,
    to: String,
    /// The policy banks applied, `-` for none.
    bank: String,
    /// The group's first recipient (whose reply the line shows).
    first_rcpt: usize,
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
        env: &Envelope,
        group: &banks::Group,
        bank: String,
        report: &ScanReport,
        decision: &Decision,
        outcome: &Outcome,
        receive: Duration,
        scan: Duration,
        reinject: Duration,
        dkim_signed: String,
    ) -> LogLine {
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
            to: env
                .recipients
                .iter()
                .map(|x| escape::text(&x.address))
                .collect::<Vec<_>>()
                .join(","),
            bank,
            first_rcpt: group.rcpts.first().copied().unwrap_or(0),
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
            dkim_signed,
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
            queued_as: queued_as.map_or_else(|| "-".into(), |q| escape::text(&q)),
            problems: escape::text(&problems.join("; ")),
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
