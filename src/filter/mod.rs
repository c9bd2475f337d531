//! The pipeline behind the session: a received message is checked (every configured scanner at
//! once), judged by policy, its headers rewritten, and delivered; what became of each recipient
//! comes back as typed values ([`Outcome`]) that the SMTP side turns into replies. The session
//! knows none of these steps, and nothing here knows SMTP reply texts.
//!
//! The stages, in order, one module each: [`groups`] (which recipients share settings: policy
//! banks), [`judge`] (one scan, each group's verdict), [`dispose`] (discard, reject, tempfail,
//! quarantine), [`deliver`] (header section, DKIM signature, and the front end's [`Deliver`]:
//! reinjection, or a dry run for `postsift scan`), and the log line (`log`).
//!
//! [`Pipeline`] is the interface the session calls; [`Filter`] is the real one. It is a trait
//! (not an enum of known pipelines) so that the session can be tested against a stand-in with
//! no peers at all, and so that new stages change this module only.

pub mod deliver;
mod delivery;
pub mod dispose;
pub mod groups;
pub mod judge;
mod log;
pub mod metrics;
mod outcome;
mod received;
pub mod reuse;
mod sqllog;
pub mod sqlpolicy;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::policy::Decision;
use crate::runtime::Runtime;
use crate::scan::ScanReport;

pub use deliver::Signing;
pub use delivery::{Copy, Deliver, DryRun, Reinjection, DRY_RUN_REPLY};
pub use outcome::{GroupOutcome, Outcome};
pub use received::{Hop, Received};

use dispose::Dispositions;
use groups::Groups;
use judge::Judged;
#[cfg(test)]
use judge::Scanned;
use log::{GroupView, LogLine, Timings};

/// The outcome with what the log line, the metrics and `postsift scan` need.
pub struct Processed {
    pub outcome: Outcome,
    /// Metric label of the content category ("unscanned" when no check ran).
    pub verdict: &'static str,
    /// Each recipient group as judged (none when the message was not checked).
    pub groups: Vec<GroupReport>,
    /// One line per recipient group (one for a message without policy banks).
    log: Vec<LogLine>,
    /// The SQL log's record, completed with the replies (`[sql] log`).
    sql: std::sync::Mutex<Option<sqllog::Pending>>,
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
    shared: Arc<Runtime>,
}

impl Filter {
    pub fn new(shared: Arc<Runtime>) -> Filter {
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
pub async fn run(shared: &Runtime, r: Received, out: &impl Deliver) -> Processed {
    let m = &shared.metrics.filter;
    let receive = r.started.elapsed();
    m.stage_duration
        .with_label_values(&["receive"])
        .observe(receive.as_secs_f64());
    m.message_size.observe(r.msg.len() as f64);
    if r.msg.header_too_big() {
        tracing::warn!(id = %r.id, size = r.msg.len(), "header section over server.max_header_size: refused");
        let p = Processed::new(Outcome::HeaderTooBig, "unscanned");
        *p.sql.lock().unwrap_or_else(|e| e.into_inner()) = sqllog::oversized(shared, &r);
        return p;
    }
    let scan_start = Instant::now();
    let per_user = sqlpolicy::lookup(shared, &r).await;
    let mut groups = Groups::of(&shared.config, &r);
    if let Some(per) = &per_user {
        sqlpolicy::regroup(&mut groups, &r, per);
    }
    // The scan and the delivery are boxed: each is a large future, and a future held by value
    // is copied whole wherever the one holding it is moved (the session's task, at spawn).
    let (scanned, reused) = Box::pin(scan_or_reuse(shared, &r, &groups)).await;
    // Hybrid mode: what the milter passes keeps its scan for the after-queue hop.
    let keeps = shared.config.milter.reuses() && r.hop.frontend() == "milter";
    let needs = keeps.then(|| judge::needs_of(&shared.config, &groups));
    let judged = judge::judge(&groups, &scanned);
    let t = Timings {
        receive,
        scan: scan_start.elapsed(),
        reused,
        ..Timings::default()
    };
    m.stage_duration
        .with_label_values(&["scan"])
        .observe(t.scan.as_secs_f64());
    let p = Box::pin(dispose_and_deliver(shared, &r, groups, judged, out, t)).await;
    if let Some(needs) = needs {
        keep_for_hop(shared, &r, &p, needs, scanned).await;
    }
    p
}

/// The scan of `r`: in hybrid mode, on the after-queue hop, the one the milter kept for its
/// Postfix queue id (`XFORWARD IDENT`) when it fits (see [`reuse`]; true), else the scanners'.
async fn scan_or_reuse(
    shared: &Runtime,
    r: &Received,
    groups: &Groups<'_>,
) -> (judge::Scanned, bool) {
    let cfg = &shared.config.milter;
    if cfg.reuses() && r.hop.frontend() == "content_filter" {
        let m = &shared.metrics.filter;
        let needs = judge::needs_of(&shared.config, groups);
        let ttl = std::time::Duration::from_secs(cfg.reuse_ttl);
        let kept = match r.env.xforward.ident.as_deref() {
            Some(id) => shared.reports.take(id, &r.msg, &needs, ttl).await,
            None => Err(reuse::Miss::None),
        };
        match kept {
            Ok(s) => {
                m.reused.inc();
                tracing::debug!(id = %r.id, "the milter's scan reused");
                return (judge::Scanned::kept(s, &shared.config, groups), true);
            }
            Err(miss) => m.reuse_missed.with_label_values(&[miss.label()]).inc(),
        }
    }
    let scanned = judge::scan(shared, &r.msg, &groups::scan_envelope(r), groups).await;
    (scanned, false)
}

/// Keeps the milter's scan of `r` for the after-queue hop, under Postfix's queue id (macro
/// `i`), when the milter lets Postfix queue the message.
async fn keep_for_hop(
    shared: &Runtime,
    r: &Received,
    p: &Processed,
    needs: crate::scan::Needs,
    scanned: judge::Scanned,
) {
    let Some(id) = r.env.xforward.ident.as_deref() else {
        return;
    };
    if p.outcome.action() != "pass" {
        return;
    }
    let Some(body) = reuse::body_digest(&r.msg).await else {
        return;
    };
    let cfg = &shared.config.milter;
    let ttl = std::time::Duration::from_secs(cfg.reuse_ttl);
    (shared.reports).keep(id, body, needs, scanned.keep(), cfg.reuse_entries, ttl);
}

/// The stages after the verdict: dispose, deliver, and the message's outcome and log lines.
async fn dispose_and_deliver(
    shared: &Runtime,
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
    shared: &Runtime,
    r: &Received,
    groups: Groups<'_>,
    judged: Vec<Judged>,
    d: Dispositions,
    signing: Vec<Signing>,
    t: Timings,
) -> Processed {
    let m = &shared.metrics.filter;
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
            m.unchecked
                .with_label_values(&[reason, o.action(), r.hop.frontend()])
                .inc();
        }
    }
    let applied: std::collections::BTreeSet<usize> = groups
        .list
        .iter()
        .flat_map(|g| g.banks.iter().copied())
        .collect();
    m.banks_applied(
        applied
            .into_iter()
            .map(|b| shared.config.policy[b].name.as_str()),
    );
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
    let sql = sqllog::draft(
        shared,
        r,
        &(reports.iter().enumerate())
            .map(|(i, g)| sqllog::GroupPart {
                config: &groups.configs[i],
                rcpts: &g.rcpts,
                decision: &g.decision,
                outcome: &outcomes[i],
                bank: &g.bank,
                listed: groups.sql.get(i).and_then(|s| s.as_ref()?.listed),
            })
            .collect::<Vec<_>>(),
    );
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
        sql: std::sync::Mutex::new(sql),
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
            sql: std::sync::Mutex::new(None),
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
        let sql = self.sql.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(p) = sql {
            p.submit(reply);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The decision logic after the scan, with fixed scan reports and a stand-in delivery: no
    //! peers, no sockets.
    use std::sync::Mutex;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::message::Recipient;
    use crate::message::{Envelope, Message};
    use crate::quarantine::Meta;
    use crate::reinject::{Delivery, RcptResult, Upstream};
    use crate::scan::{SpamResult, SpamScan, VirusScan};
    use crate::smtp::reply::{self, Reply};

    /// Four banks over the default settings (spam at 6.31, passed tagged): strict.test
    /// rejects spam, keep.test quarantines it, drop.test discards it, and lenient.test has
    /// its kill level at 20.
    const BANKS: &str = r#"
[server]
hostname = "filter.test"
[clamd]
endpoints = []
[spamd]
endpoints = ["127.0.0.1:9"]
[metrics]
listen = ""
[[policy]]
name = "strict"
match.recipient_domain = ["strict.test"]
spam.action = "reject"
[[policy]]
name = "keep"
match.recipient_domain = ["keep.test"]
spam.action = "quarantine"
[[policy]]
name = "drop"
match.recipient_domain = ["drop.test"]
spam.action = "discard"
[[policy]]
name = "lenient"
match.recipient_domain = ["lenient.test"]
spam.tag2_level = 20.0
spam.kill_level = 20.0
"#;

    fn shared() -> Runtime {
        let config = crate::config::Config::parse(BANKS, std::path::Path::new("t.toml")).unwrap();
        Runtime::new(config, CancellationToken::new()).unwrap()
    }

    /// A message to `rcpts`, over LMTP (`per_recipient`) or SMTP.
    fn received(rcpts: &[&str], per_recipient: bool) -> Received {
        let env = Envelope {
            sender: "a@example.org".into(),
            recipients: rcpts
                .iter()
                .map(|a| Recipient {
                    address: a.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let msg = b"From: a@example.org\r\nSubject: offer\r\n\r\nBuy now.\r\n";
        Received {
            id: "T1".into(),
            env,
            msg: Message::from_bytes(msg),
            hop: Hop {
                helo: "postfix.test".into(),
                peer: "127.0.0.1:40000".parse().unwrap(),
                local: "127.0.0.1:10024".parse().unwrap(),
                listener: None,
                protocol: if per_recipient { "LMTP" } else { "ESMTP" },
            },
            started: Instant::now(),
            per_recipient,
        }
    }

    /// What spamd would have said: `score`, no virus scanner, nothing banned.
    fn scored(score: f64) -> ScanReport {
        ScanReport {
            virus: VirusScan::Off,
            spam: SpamScan::Scored(SpamResult {
                score,
                required: 5.0,
                is_spam: score >= 5.0,
                rules: Vec::new(),
                action: None,
            }),
            virus_time: Default::default(),
            spam_time: Default::default(),
            parts: None,
            banned: None,
            auth: None,
        }
    }

    /// A stand-in delivery: records each copy (its recipients and header section) and each
    /// quarantined message, and accepts everything, unless told to fail the quarantine; the
    /// next hop refuses `nouser@` recipients.
    #[derive(Default)]
    struct Fake {
        quarantine_fails: bool,
        sent: Mutex<Vec<(Vec<String>, String)>>,
        stored: Mutex<Vec<(String, Vec<String>)>>,
    }

    impl Deliver for Fake {
        async fn deliver(&self, _: &Message, copies: &[Copy<'_>], _: bool) -> Vec<Delivery> {
            let mut sent = self.sent.lock().unwrap();
            copies
                .iter()
                .map(|c| {
                    let rcpts = c.env.recipients.iter().map(|r| r.address.clone());
                    let header = String::from_utf8_lossy(c.header).into_owned();
                    let rcpts: Vec<String> = rcpts.collect();
                    let refused = rcpts.iter().any(|r| r.starts_with("nouser@"));
                    sent.push((rcpts, header));
                    if refused {
                        let no = Upstream {
                            code: 550,
                            text: "5.1.1 no such user".into(),
                        };
                        return Delivery {
                            rcpts: vec![RcptResult::Refused(no); c.env.recipients.len()],
                            accepted: None,
                            to: "fake".into(),
                            queue_id: None,
                            failure: Some("rejected"),
                        };
                    }
                    Delivery {
                        rcpts: vec![RcptResult::Accepted; c.env.recipients.len()],
                        accepted: Some(Upstream {
                            code: 250,
                            text: "2.0.0 Ok: queued as Q".into(),
                        }),
                        to: "fake".into(),
                        queue_id: Some("Q".into()),
                        failure: None,
                    }
                })
                .collect()
        }

        fn withheld(&self, env: &Envelope) -> Delivery {
            Delivery::withheld(env.recipients.len(), "fake".into())
        }

        async fn quarantine(&self, meta: Meta, _: &Message) -> Result<(), String> {
            if self.quarantine_fails {
                return Err("disk full".into());
            }
            let rcpts = meta.recipients.iter().map(|r| r.address.clone()).collect();
            self.stored.lock().unwrap().push((meta.id, rcpts));
            Ok(())
        }
    }

    /// The stages after the scan, on a fixed report.
    async fn decide(
        shared: &Runtime,
        r: Received,
        report: ScanReport,
        out: &impl Deliver,
    ) -> Processed {
        let groups = Groups::of(&shared.config, &r);
        let scanned = Scanned::fixed(&shared.config, &groups, report);
        let judged = judge::judge(&groups, &scanned);
        dispose_and_deliver(shared, &r, groups, judged, out, Timings::default()).await
    }

    /// The replies the client gets for `rcpts`.
    async fn replies(rcpts: &[&str], lmtp: bool, score: f64, out: &Fake) -> Vec<Reply> {
        let p = decide(&shared(), received(rcpts, lmtp), scored(score), out).await;
        reply::for_outcome("T1", &p.outcome, lmtp, rcpts.len())
    }

    fn codes(replies: &[Reply]) -> Vec<u16> {
        replies.iter().map(|r| r.code).collect()
    }

    #[tokio::test]
    async fn a_bank_recipient_gets_its_banks_verdict() {
        let out = Fake::default();
        let r = received(&["ann@lenient.test", "bob@example.com"], true);
        let p = decide(&shared(), r, scored(10.0), &out).await;
        let verdicts: Vec<(&str, &str)> = p
            .groups
            .iter()
            .map(|g| (g.bank.as_str(), g.decision.category.label()))
            .collect();
        assert_eq!(verdicts, [("lenient", "clean"), ("-", "spam")]);
        // The message's verdict is its most severe group's.
        assert_eq!(p.verdict, "spam");
        let sent = out.sent.lock().unwrap();
        assert_eq!(sent.len(), 2, "{sent:?}");
        let copy = |rcpt: &str| &sent.iter().find(|(r, _)| r == &[rcpt]).unwrap().1;
        assert!(copy("ann@lenient.test").contains("X-Spam-Flag: NO"));
        assert!(copy("bob@example.com").contains("X-Spam-Flag: YES"));
    }

    #[tokio::test]
    async fn over_smtp_one_groups_reject_refuses_the_whole_message_and_sends_nothing() {
        let out = Fake::default();
        let r = replies(&["s@strict.test", "bob@example.com"], false, 10.0, &out).await;
        assert_eq!(codes(&r), [554], "{r:?}");
        assert!(r[0].text.contains("Reject, id=T1 - spam"), "{r:?}");
        assert!(out.sent.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn over_lmtp_each_recipient_gets_its_groups_outcome() {
        let out = Fake::default();
        let rcpts = ["s@strict.test", "bob@example.com", "d@drop.test"];
        let r = replies(&rcpts, true, 10.0, &out).await;
        assert_eq!(codes(&r), [554, 250, 250], "{r:?}");
        assert!(r[2].text.contains("Ok, discarded, id=T1 - spam"), "{r:?}");
        let sent = out.sent.lock().unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, ["bob@example.com"]);
    }

    #[tokio::test]
    async fn a_quarantine_that_fails_is_451_and_over_smtp_withholds_the_other_copy() {
        let out = Fake {
            quarantine_fails: true,
            ..Fake::default()
        };
        let r = replies(&["k@keep.test", "bob@example.com"], false, 10.0, &out).await;
        assert_eq!(codes(&r), [451], "{r:?}");
        assert!(r[0].text.contains("quarantine FAILED: disk full"), "{r:?}");
        assert!(out.sent.lock().unwrap().is_empty());

        // Over LMTP the other recipient is delivered; only the quarantined one is retried.
        let r = replies(&["k@keep.test", "bob@example.com"], true, 10.0, &out).await;
        assert_eq!(codes(&r), [451, 250], "{r:?}");
        assert_eq!(out.sent.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_stored_quarantine_is_250_with_its_own_recipients() {
        let out = Fake::default();
        let r = replies(&["k@keep.test", "bob@example.com"], false, 10.0, &out).await;
        // SMTP: the reply is the delivered group's; the quarantined one was stored first.
        assert_eq!(codes(&r), [250], "{r:?}");
        let stored = out.stored.lock().unwrap();
        assert_eq!(
            *stored,
            [("T1".to_string(), vec!["k@keep.test".to_string()])]
        );
        assert_eq!(out.sent.lock().unwrap()[0].0, ["bob@example.com"]);
    }

    #[tokio::test]
    async fn discard_is_250_and_reject_is_554_and_neither_sends() {
        let out = Fake::default();
        let r = replies(&["d@drop.test"], false, 10.0, &out).await;
        assert_eq!(codes(&r), [250], "{r:?}");
        assert!(r[0].text.starts_with("Ok, discarded"), "{r:?}");
        let r = replies(&["s@strict.test"], false, 10.0, &out).await;
        assert_eq!(codes(&r), [554], "{r:?}");
        assert!(out.sent.lock().unwrap().is_empty());
        // Below the kill level the same recipients are delivered: two banks, two copies.
        let r = replies(&["d@drop.test", "s@strict.test"], false, 1.0, &out).await;
        assert_eq!(codes(&r), [250], "{r:?}");
        assert_eq!(out.sent.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn over_smtp_a_copy_the_next_hop_refuses_is_the_reply() {
        let out = Fake::default();
        let r = replies(
            &["bob@example.com", "nouser@lenient.test"],
            false,
            1.0,
            &out,
        )
        .await;
        assert_eq!(codes(&r), [550], "{r:?}");
        assert!(r[0].text.contains("no such user"), "{r:?}");
        // Over LMTP each recipient has the next hop's own answer.
        let r = replies(&["bob@example.com", "nouser@lenient.test"], true, 1.0, &out).await;
        assert_eq!(codes(&r), [250, 550], "{r:?}");
    }

    #[tokio::test]
    async fn a_dry_run_sends_nothing_and_keeps_each_groups_header() {
        let out = DryRun::new();
        let r = received(&["ann@lenient.test", "bob@example.com"], false);
        let p = decide(&shared(), r, scored(10.0), &out).await;
        let r = reply::for_outcome("T1", &p.outcome, false, 2);
        assert_eq!(codes(&r), [250], "{r:?}");
        assert!(r[0].text.contains(DRY_RUN_REPLY), "{r:?}");
        let h = |i| String::from_utf8(out.header(i).unwrap()).unwrap();
        assert!(h(0).contains("X-Spam-Flag: NO"));
        assert!(h(1).contains("X-Spam-Flag: YES"));
        assert!(matches!(p.group_outcome(1), Outcome::Delivered(d) if d.all_accepted()));
    }

    #[tokio::test]
    async fn a_header_section_too_big_is_refused_unchecked() {
        let shared = shared();
        let mut r = received(&["bob@example.com"], false);
        let mut spool = crate::message::Spool::new(usize::MAX, 8, std::path::Path::new("/x"));
        spool
            .write(b"Subject: far too long a header\r\n\r\nbody\r\n")
            .unwrap();
        r.msg = spool.finish().unwrap();
        let p = run(&shared, r, &Fake::default()).await;
        assert!(matches!(p.outcome, Outcome::HeaderTooBig));
        assert_eq!((p.verdict, p.groups.len()), ("unscanned", 0));
    }
}
