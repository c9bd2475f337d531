//! Last stage: each group still to be delivered gets its header section (postsift's header
//! fields, the original ones less the forged), a DKIM signature when it is outgoing mail, and
//! goes to the front end's [`Deliver`]: reinjection into Postfix ([`Reinjection`]), a dry run
//! that sends nothing ([`DryRun`], for `postsift scan`), and later a milter's replies.
//!
//! Over SMTP the client takes one reply for the message, so nothing is sent unless every copy
//! can take all its recipients; over LMTP each recipient has its own result.

use std::future::Future;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::{Config, DkimSign, SignOnError};
use crate::escape;
use crate::message::{Envelope, Message};
use crate::policy::{Decision, Tempfail};
use crate::quarantine::Meta;
use crate::reinject::{Delivery, RcptResult, Upstream};
use crate::rewrite;
use crate::sign::Signed;
use crate::Shared;

use super::dispose::Dispositions;
use super::groups::Groups;
use super::judge::Judged;
use super::{Hop, Outcome, Received};

/// One copy of the message to deliver: a recipient group's envelope and its new header
/// section. The group's decision is there too, for a front end that passes header edits
/// rather than a whole message (a milter).
pub struct Copy<'a> {
    /// The group's index (see [`super::Processed::groups`]).
    pub group: usize,
    pub env: &'a Envelope,
    /// Replaces the message's header section: the DKIM signature, postsift's fields, the
    /// original fields less the forged, and a blank line before a malformed first body line.
    pub header: &'a [u8],
    pub decision: &'a Decision,
}

/// Where the pipeline's accepted copies and quarantined messages go: the one part of the
/// pipeline that depends on the front end.
pub trait Deliver: Send + Sync {
    /// Sends `copies` of `msg` (the body after its header section follows each copy's
    /// header). `per_recipient` (LMTP): each copy on its own, each recipient with its own
    /// result. Otherwise (SMTP, one reply for the message) no copy is sent unless every copy
    /// took all its recipients. One [`Delivery`] per copy, in order, with one result per
    /// recipient.
    fn deliver(
        &self,
        msg: &Message,
        copies: &[Copy<'_>],
        per_recipient: bool,
    ) -> impl Future<Output = Vec<Delivery>> + Send;

    /// A copy not sent because another part of the message failed first (SMTP).
    fn withheld(&self, env: &Envelope) -> Delivery;

    /// Stores a quarantined group's message, durably before it returns Ok; Err says why not.
    fn quarantine(
        &self,
        meta: Meta,
        msg: &Message,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// The daemon's delivery: reinjection into Postfix (`reinject.to`), the quarantine the
/// server opened.
pub struct Reinjection<'a> {
    shared: &'a Shared,
}

impl<'a> Reinjection<'a> {
    pub fn new(shared: &'a Shared) -> Reinjection<'a> {
        Reinjection { shared }
    }

    /// The reinjection metrics for one copy.
    fn record(&self, d: &Delivery) {
        let m = &self.shared.metrics;
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
    }
}

impl Deliver for Reinjection<'_> {
    async fn deliver(
        &self,
        msg: &Message,
        copies: &[Copy<'_>],
        per_recipient: bool,
    ) -> Vec<Delivery> {
        let r = &self.shared.reinjector;
        let out = if per_recipient || copies.len() < 2 {
            let mut out = Vec::with_capacity(copies.len());
            for c in copies {
                out.push(r.send(c.env, c.header, msg, !per_recipient).await);
            }
            out
        } else {
            // SMTP, several copies: all envelopes accepted before any data goes.
            let parts: Vec<(&Envelope, &[u8])> = copies.iter().map(|c| (c.env, c.header)).collect();
            r.send_together(&parts, msg).await
        };
        out.iter().for_each(|d| self.record(d));
        out
    }

    fn withheld(&self, env: &Envelope) -> Delivery {
        self.shared.reinjector.withheld(env)
    }

    async fn quarantine(&self, meta: Meta, msg: &Message) -> Result<(), String> {
        let Some(q) = &self.shared.quarantine else {
            return Err("the quarantine is not open (restart postsift after enabling it)".into());
        };
        crate::quarantine::store_message(q.clone(), meta, msg)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Sends nothing and stores nothing: every copy is reported accepted, and kept here (group and
/// header section) for `postsift scan` to show.
#[derive(Default)]
pub struct DryRun {
    sent: Mutex<Vec<(usize, Vec<u8>)>>,
}

/// The reply a dry run reports for every copy.
pub const DRY_RUN_REPLY: &str = "2.0.0 Ok: dry run, nothing sent";

impl DryRun {
    pub fn new() -> DryRun {
        DryRun::default()
    }

    /// The header section group `group`'s copy would have gone with, if it was delivered.
    pub fn header(&self, group: usize) -> Option<Vec<u8>> {
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.iter()
            .find(|(g, _)| *g == group)
            .map(|(_, h)| h.clone())
    }
}

impl Deliver for DryRun {
    async fn deliver(&self, _msg: &Message, copies: &[Copy<'_>], _: bool) -> Vec<Delivery> {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        copies
            .iter()
            .map(|c| {
                sent.push((c.group, c.header.to_vec()));
                Delivery {
                    rcpts: vec![RcptResult::Accepted; c.env.recipients.len()],
                    accepted: Some(Upstream {
                        code: 250,
                        text: DRY_RUN_REPLY.into(),
                    }),
                    to: "dry run".into(),
                    queue_id: None,
                    failure: None,
                }
            })
            .collect()
    }

    fn withheld(&self, env: &Envelope) -> Delivery {
        Delivery {
            rcpts: vec![RcptResult::Withheld; env.recipients.len()],
            accepted: None,
            to: "dry run".into(),
            queue_id: None,
            failure: None,
        }
    }

    async fn quarantine(&self, _meta: Meta, _msg: &Message) -> Result<(), String> {
        Ok(())
    }
}

/// What DKIM signing did to a group's copy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Signing {
    /// Not outgoing mail, signing off, or the copy was not delivered.
    #[default]
    NotWanted,
    /// Signed for this domain.
    Signed(String),
    /// No single From address, or no key for its domain.
    NoKey,
    /// Signing failed: why (`on_error` decided what became of the copy).
    Failed(String),
}

impl Signing {
    /// The log line's `dkim_signed` word.
    pub fn log_word(&self) -> String {
        match self {
            Signing::NotWanted => "-".into(),
            Signing::Signed(domain) => domain.clone(),
            Signing::NoKey => "no_key".into(),
            Signing::Failed(_) => "error".into(),
        }
    }
}

/// Builds, signs and delivers the copy of every group still undecided; returns each group's
/// signing.
pub async fn deliver(
    shared: &Shared,
    r: &Received,
    groups: &Groups<'_>,
    judged: &[Judged],
    d: &mut Dispositions,
    out: &impl Deliver,
) -> Vec<Signing> {
    let mut signing = vec![Signing::NotWanted; groups.len()];
    let mut headers = Vec::new();
    for i in d.undecided() {
        let mut block = header_block(&groups.configs[i], &judged[i].1, &r.hop, &r.id, &r.msg);
        // Outgoing copies are signed over what goes out: the rewritten header block and the
        // body.
        let c = &groups.configs[i].dkim_sign;
        if crate::sign::wanted(c, r.hop.listener, r.env.xforward.addr.as_deref()) {
            signing[i] = dkim_sign(shared, c, &mut block, &r.msg, &r.id).await;
            if let (Signing::Failed(why), SignOnError::Tempfail) = (&signing[i], c.on_error) {
                shared
                    .metrics
                    .tempfails
                    .with_label_values(&["dkim_sign"])
                    .inc();
                // Over SMTP the other copies are withheld: the client sends them all again.
                d.fail(i, Outcome::Tempfailed(Tempfail::Sign(why.clone())));
                continue;
            }
        }
        headers.push((i, block));
    }
    let copies: Vec<Copy<'_>> = headers
        .iter()
        .map(|(i, block)| Copy {
            group: *i,
            env: &groups.envs[*i],
            header: block,
            decision: &judged[*i].1,
        })
        .collect();
    let results = if d.failed && !r.per_recipient {
        copies.iter().map(|c| out.withheld(c.env)).collect()
    } else {
        out.deliver(&r.msg, &copies, r.per_recipient).await
    };
    // Sent together (SMTP, several copies): only a copy that failed leads the reply.
    let together = !r.per_recipient && copies.len() >= 2 && !d.failed;
    let mut sent = false;
    for (c, delivery) in copies.iter().zip(results) {
        let accepted = delivery.all_accepted();
        if together && !accepted && delivery.failure.is_some() {
            if sent {
                tracing::warn!(id = %r.id, "recipients in several policy groups over SMTP: a copy failed at its end of data after an earlier one was accepted; the client's retry sends the earlier one again");
            }
            d.lead.get_or_insert(c.group);
        } else if !together && !r.per_recipient && !accepted {
            d.lead.get_or_insert(c.group);
        }
        sent |= accepted;
        d.outcomes[c.group] = Some(Outcome::Delivered(delivery));
    }
    signing
}

/// The header block that replaces the original header section under `config` (a recipient
/// group's effective settings): postsift's headers, the original ones less the forged, and a
/// blank line before a malformed first body line.
fn header_block(
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

/// DKIM-signs one copy: the signatures go on top of `block`. A failure is logged and counted
/// here; the caller applies `on_error`.
async fn dkim_sign(
    shared: &Shared,
    c: &DkimSign,
    block: &mut Vec<u8>,
    msg: &Message,
    id: &str,
) -> Signing {
    let m = &shared.metrics.dkim_sign;
    let start = Instant::now();
    match crate::sign::sign(c, block, msg).await {
        Ok(Signed::Signed { headers, domain }) => {
            m.duration.observe(start.elapsed().as_secs_f64());
            m.signed.with_label_values(&["signed"]).inc();
            block.splice(0..0, headers);
            Signing::Signed(domain)
        }
        Ok(Signed::NoKey) => {
            m.signed.with_label_values(&["no_key"]).inc();
            Signing::NoKey
        }
        Err(e) => {
            m.signed.with_label_values(&["error"]).inc();
            let action = match c.on_error {
                SignOnError::Pass => "delivered unsigned",
                SignOnError::Tempfail => "answering 451",
            };
            tracing::error!(%id, error = %escape::Shown(&e.to_string()), "DKIM signing failed: {action}");
            Signing::Failed(e.to_string())
        }
    }
}
