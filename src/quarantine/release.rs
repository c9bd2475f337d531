//! Release: a quarantined message goes to `reinject.to` as it came (its original envelope and
//! XFORWARD attributes, its header section with `X-Quarantine-Released` in front), once per
//! recipient. Shared by `postsift quarantine release` and the AM.PDP listener.
//!
//! Once per recipient, and what a crash does: each recipient is claimed (`held` →
//! `releasing`, one transaction) before anything is sent, and marked `released` (or `held`
//! again, when the next hop refused or could not be reached) after the next hop answered. A
//! release that dies between the next hop's 250 and that last write leaves the recipient
//! `releasing`: it is never sent again by itself (at most once), `list` shows it with the time
//! of the claim, and `release --force` sends it again after the administrator checked the next
//! hop's log (which has the message's original XFORWARD IDENT and the released header).

use std::sync::Arc;

use crate::message::Message;
use crate::reinject::{Fault, RcptResult, Reinjector};

use super::{Error, Quarantine, RecipientState, RELEASED, RELEASING};

/// Which recipients a release is for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Original recipients to release to (empty: all of them).
    pub recipients: Vec<String>,
    /// Other addresses to send it to instead (each released once, like a recipient).
    pub to: Vec<String>,
    /// Send to recipients left `releasing` by an interrupted release too.
    pub force: bool,
}

/// What became of one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Result1 {
    /// The next hop accepted it: its reply.
    Released(String),
    /// Released before (nothing sent).
    AlreadyReleased { at: Option<i64> },
    /// Claimed by another release, in progress or interrupted (nothing sent).
    InProgress { since: Option<i64> },
    /// The next hop refused it (`code`, its reply), or could not be reached (a 4xx).
    Failed { code: u16, text: String },
}

impl Result1 {
    /// A metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Result1::Released(_) => "released",
            Result1::AlreadyReleased { .. } | Result1::InProgress { .. } => "duplicate",
            Result1::Failed { .. } => "failed",
        }
    }

    /// An SMTP reply for it (AM.PDP's `setreply`, the CLI's line).
    pub fn reply(&self, id: &str) -> String {
        match self {
            Result1::Released(r) => format!("250 2.0.0 Ok, id={id}, released: {r}"),
            Result1::AlreadyReleased { .. } => {
                format!("250 2.0.0 Ok, id={id}, released before, not sent again")
            }
            Result1::InProgress { .. } => format!(
                "450 4.5.0 id={id}: a release of this recipient is in progress or was \
                 interrupted; not sent (postsift quarantine release --force sends it)"
            ),
            Result1::Failed { code, text } => format!("{code} {text}"),
        }
    }
}

/// Releases entry `id` of the file store per `req`: (address, result) for each address asked
/// for. ([`super::sql::Store::release`] releases from either store.)
pub async fn release_file(
    q: &Arc<Quarantine>,
    reinjector: &Reinjector,
    id: &str,
    req: &Request,
) -> Result<Vec<(String, Result1)>, Error> {
    if let Some(bad) = req
        .to
        .iter()
        .chain(&req.recipients)
        .find(|a| bad_address(a))
    {
        return Err(Error::Usage(format!(
            "{bad:?}: bad address syntax (RFC 5321), nothing released"
        )));
    }
    let (meta, data) = blocking(q, {
        let id = id.to_owned();
        move |q| q.read(&id)
    })
    .await?;
    let targets: Vec<String> = if !req.to.is_empty() {
        req.to.clone()
    } else if req.recipients.is_empty() {
        meta.recipients.iter().map(|r| r.address.clone()).collect()
    } else {
        for r in &req.recipients {
            if !meta
                .recipients
                .iter()
                .any(|m| m.address.eq_ignore_ascii_case(r))
            {
                return Err(Error::Usage(format!(
                    "{r} is not a recipient of {id} (use --to to send it to another address)"
                )));
            }
        }
        req.recipients.clone()
    };
    let now = chrono::Utc::now().timestamp();
    let (claimed, not) = blocking(q, {
        let (id, force) = (id.to_owned(), req.force);
        move |q| q.claim(&id, &targets, force, now)
    })
    .await?;
    let mut results: Vec<(String, Result1)> = not
        .into_iter()
        .map(|(a, s): (String, RecipientState)| {
            let r = if s.state == RELEASED {
                Result1::AlreadyReleased { at: s.changed }
            } else {
                debug_assert_eq!(s.state, RELEASING);
                Result1::InProgress { since: s.changed }
            };
            (a, r)
        })
        .collect();
    if claimed.is_empty() {
        return Ok(results);
    }

    let sent = send(reinjector, &meta, &data, &claimed).await;
    let done = chrono::Utc::now().timestamp();
    for (addr, result) in claimed.iter().zip(sent) {
        let released = matches!(result, Result1::Released(_));
        let detail = match &result {
            Result1::Released(r) => r.clone(),
            other => other.reply(id),
        };
        let recorded = blocking(q, {
            let (id, addr) = (id.to_owned(), addr.clone());
            move |q| q.finish(&id, &addr, released, &detail, done)
        })
        .await;
        if let Err(e) = recorded {
            // Sent, but not recorded: it stays `releasing`, so it is not sent again unasked.
            tracing::error!(id = %crate::escape::Shown(id), rcpt = %crate::escape::Shown(addr), error = %e, "release not recorded");
        }
        results.push((addr.clone(), result));
    }
    Ok(results)
}

/// Sends the quarantined `data` to `addrs` with `meta`'s envelope (original recipients keep
/// their DSN parameters), `X-Quarantine-Released` in front of its header section: one result
/// per address, in order.
pub(crate) async fn send(
    reinjector: &Reinjector,
    meta: &super::Meta,
    data: &[u8],
    addrs: &[String],
) -> Vec<Result1> {
    let env = meta.envelope(addrs);
    let msg = Message::from_bytes(data);
    let mut block = format!(
        "X-Quarantine-Released: {} by postsift\r\n",
        chrono::Utc::now().to_rfc2822()
    )
    .into_bytes();
    block.extend_from_slice(msg.header_section());
    if msg.needs_separator() {
        block.extend_from_slice(b"\r\n");
    }
    let d = reinjector.send(&env, &block, &msg, false).await;
    d.rcpts
        .iter()
        .take(addrs.len())
        .map(|r| match r {
            RcptResult::Accepted => Result1::Released(
                d.accepted
                    .as_ref()
                    .map_or_else(|| "250".into(), |u| u.one_line()),
            ),
            RcptResult::Refused(u) => Result1::Failed {
                code: u.code,
                text: u.text.replace('\n', " "),
            },
            RcptResult::Withheld => Result1::Failed {
                code: 450,
                text: "4.5.3 not sent".into(),
            },
            RcptResult::Failed(f) => Result1::Failed {
                code: 450,
                text: fault(f),
            },
        })
        .collect()
}

/// True when `a` fails the inbound session's RFC 5321 check (SMTPUTF8 allowed): a release
/// address from the CLI or AM.PDP is refused before anything is claimed or sent.
pub fn bad_address(a: &str) -> bool {
    a.is_empty() || crate::smtp::address::Address::parse(a, true).is_err()
}

/// Runs `f` (file reads, SQLite commits) on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    q: &Arc<Quarantine>,
    f: impl FnOnce(&Quarantine) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let q = q.clone();
    tokio::task::spawn_blocking(move || f(&q))
        .await
        .map_err(|e| Error::Corrupt(format!("quarantine task: {e}")))?
}

/// A reinjection fault as the text of a 450 (enhanced code first).
fn fault(f: &Fault) -> String {
    match f {
        Fault::Connect { to, detail } => format!("4.4.1 Can't connect to {to}: {detail}"),
        Fault::Timeout { to, stage } => format!("4.4.2 Timed out during {stage} to {to}"),
        Fault::Lost { stage, detail } => format!("4.4.2 Lost connection during {stage}: {detail}"),
        Fault::Spool { detail } => format!("4.3.0 Reading the quarantined copy: {detail}"),
    }
}
