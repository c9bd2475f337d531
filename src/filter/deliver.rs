//! Last stage: each group still to be delivered gets its header section (postsift's header
//! fields, the original ones less the forged), a DKIM signature when it is outgoing mail, and
//! goes to the front end's [`Deliver`] (see [`super::delivery`]).
//!
//! Over SMTP the client takes one reply for the message, so nothing is sent unless every copy
//! can take all its recipients; over LMTP each recipient has its own result.

use std::time::Instant;

use crate::config::{Config, DkimSign, SignOnError};
use crate::escape;
use crate::message::Message;
use crate::policy::{Decision, Tempfail};
use crate::rewrite;
use crate::runtime::Runtime;
use crate::sign::Signed;

use super::delivery::{Copy, Deliver};
use super::dispose::Dispositions;
use super::groups::Groups;
use super::judge::Judged;
use super::outcome::Outcome;
use super::received::{Hop, Received};

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
    shared: &Runtime,
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
            // Boxed: a large future, off the default path (see scan_for).
            signing[i] = Box::pin(dkim_sign(shared, c, &mut block, &r.msg, &r.id)).await;
            if let (Signing::Failed(why), SignOnError::Tempfail) = (&signing[i], c.on_error) {
                shared
                    .metrics
                    .filter
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
    shared: &Runtime,
    c: &DkimSign,
    block: &mut Vec<u8>,
    msg: &Message,
    id: &str,
) -> Signing {
    let m = &shared.metrics.dkim_sign;
    let start = Instant::now();
    // A signature of ours already there (hybrid mode: the milter's) goes when this one is made:
    // one signature from postsift, made over the header section that goes out.
    let stripped = crate::sign::without_own_signatures(block, &shared.dkim_keys);
    let signed_block = stripped.as_deref().unwrap_or(block);
    match crate::sign::sign(c, &shared.dkim_keys, signed_block, msg).await {
        Ok(Signed::Signed { headers, domain }) => {
            m.duration.observe(start.elapsed().as_secs_f64());
            m.signed.with_label_values(&["signed"]).inc();
            if let Some(s) = stripped {
                *block = s;
            }
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
