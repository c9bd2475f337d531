//! Where the pipeline's copies go: the [`Deliver`] trait, the one part of the pipeline that
//! depends on the front end. [`Reinjection`] sends them back into Postfix (the daemon);
//! [`DryRun`] sends nothing and keeps what it would have sent (`postsift scan`); a milter front
//! end will answer with header edits and per-recipient replies.

use std::future::Future;
use std::sync::Mutex;

use crate::message::{Envelope, Message};
use crate::policy::Decision;
use crate::quarantine::Meta;
use crate::reinject::{Delivery, RcptResult, Upstream};
use crate::runtime::Runtime;

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
    shared: &'a Runtime,
}

impl<'a> Reinjection<'a> {
    pub fn new(shared: &'a Runtime) -> Reinjection<'a> {
        Reinjection { shared }
    }

    /// The reinjection metrics for one copy.
    fn record(&self, d: &Delivery) {
        let m = &self.shared.metrics;
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
            // Boxed: a large future, off the single-copy path (see scan_for).
            Box::pin(r.send_together(&parts, msg)).await
        };
        out.iter().for_each(|d| self.record(d));
        out
    }

    fn withheld(&self, env: &Envelope) -> Delivery {
        self.shared.reinjector.withheld(env)
    }

    async fn quarantine(&self, meta: Meta, msg: &Message) -> Result<(), String> {
        if self.shared.config.quarantine.in_sql() {
            return crate::quarantine::sql::store_in(self.shared, &meta, msg).await;
        }
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
        Delivery::withheld(env.recipients.len(), "dry run".into())
    }

    async fn quarantine(&self, _meta: Meta, _msg: &Message) -> Result<(), String> {
        Ok(())
    }
}
