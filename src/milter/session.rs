//! One milter connection from Postfix's smtpd: the connect, HELO, MAIL and RCPT events and the
//! macros (`i`, `{client_addr}`, `{client_name}`) give the envelope and the client; the header
//! and body events spool the message into the same [`Message`] the SMTP front end builds (to a
//! file past `server.spool_threshold`); end of message runs the same pipeline and answers with
//! header edits, recipient deletions and one final action (see [`answer`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::BytesMut;
use miltr_common::actions::{Action, Continue, Discard, Replycode};
use miltr_common::commands::{Body, Connect, Header, Helo, Macro, Mail, Recipient};
use miltr_common::encoding::Writable;
use miltr_common::modifications::headers::{ChangeHeader, InsertHeader};
use miltr_common::modifications::quarantine::Quarantine;
use miltr_common::modifications::recipients::DeleteRecipient;
use miltr_common::modifications::ModificationResponse;
use miltr_common::optneg::{OptNeg, Protocol};
use miltr_server::Milter;
use tokio::sync::Notify;

use crate::filter::{self, Hop, Outcome, Processed, Received};
use crate::message::{Envelope, Recipient as Rcpt, Spool};
use crate::runtime::Runtime;
use crate::smtp::reply::{self, Reply};

use super::deliver::MilterOut;
use super::edits::{self, Edit};
use super::metrics::Stage;

/// The error type the milter trait asks for. No callback fails today: every fault of a
/// message (spool, scanners, quarantine) is an answer (4xx/5xx), not a broken connection; a
/// variant here would end the connection, and Postfix would apply its `milter_default_action`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("milter session ended: {0}")]
    Ended(&'static str),
}

/// What is being received: the message's envelope and its spool.
#[derive(Default)]
struct InFlight {
    env: Envelope,
    spool: Option<Spool>,
    /// The spool could not be reserved or written: the answer is `452 4.3.1`.
    spool_failed: Option<std::io::Error>,
    /// Over `server.max_message_size`: the answer is `552 5.3.4`.
    too_big: bool,
    started: Option<Instant>,
    header_done: bool,
}

/// One connection's state across its messages.
pub struct MilterSession {
    shared: Arc<Runtime>,
    /// The milter listener's own addresses, for the hop when Postfix sends no client address.
    peer: SocketAddr,
    local: SocketAddr,
    client_addr: Option<String>,
    client_name: Option<String>,
    client_port: Option<u16>,
    helo: String,
    queue_id: Option<String>,
    /// Postfix keeps the whitespace after a header's colon (`SMFIP_HDR_LEADSPC`).
    leading_space: bool,
    msg: InFlight,
    /// Messages answered on this connection (for the session metrics).
    pub(super) messages: u64,
    /// Set from MAIL until Postfix's next command after the answer (or an abort): a message
    /// is being received, checked or answered. On shutdown the connection's task waits for it
    /// to clear before it ends (the `Notify` wakes it).
    pub(super) busy: Arc<(AtomicBool, Notify)>,
}

impl MilterSession {
    pub fn new(shared: Arc<Runtime>, peer: SocketAddr, local: SocketAddr) -> MilterSession {
        MilterSession {
            shared,
            peer,
            local,
            client_addr: None,
            client_name: None,
            client_port: None,
            helo: String::new(),
            queue_id: None,
            leading_space: false,
            msg: InFlight::default(),
            messages: 0,
            busy: Arc::new((AtomicBool::new(false), Notify::new())),
        }
    }

    fn write(&mut self, data: &[u8]) {
        let limit = self.shared.config.server.max_message_size;
        let m = &mut self.msg;
        if m.spool_failed.is_some() || m.too_big {
            return;
        }
        if m.spool.is_none() {
            m.started = Some(Instant::now());
            let s = &self.shared;
            let c = &s.config.server;
            m.spool = Spool::reserve(
                &s.budget,
                c.spool_threshold,
                c.max_header_size,
                &s.spool_dir,
            );
            if m.spool.is_none() {
                tracing::warn!(
                    memory = s.budget.memory(),
                    "server.max_memory reached: milter message answered 452"
                );
                m.spool_failed = Some(std::io::Error::other("server.max_memory reached"));
                return;
            }
        }
        let spool = m.spool.as_mut().expect("reserved above");
        if spool.len() + data.len() as u64 > limit {
            m.too_big = true;
            m.spool = None;
            return;
        }
        if let Err(e) = spool.write(data) {
            m.spool_failed = Some(e);
            m.spool = None;
        }
    }

    /// The hop into postsift as the pipeline sees it: Postfix's client, not Postfix.
    fn hop(&self) -> Hop {
        let ip: Option<IpAddr> = self.client_addr.as_deref().and_then(|a| a.parse().ok());
        let peer = match ip {
            Some(ip) => SocketAddr::new(ip, self.client_port.unwrap_or(0)),
            None => self.peer,
        };
        Hop {
            helo: self.helo.clone(),
            peer,
            local: self.local,
            listener: None,
            protocol: "MILTER",
        }
    }

    /// No message in flight any more.
    fn idle(&self) {
        if self.busy.0.swap(false, Ordering::SeqCst) {
            self.busy.1.notify_one();
        }
    }

    async fn end_of_message(&mut self) -> ModificationResponse {
        let shared = self.shared.clone();
        let m = std::mem::take(&mut self.msg);
        let id = crate::smtp::session::new_id();
        let started = m.started.unwrap_or_else(Instant::now);
        let metrics = &shared.metrics.filter;
        let n = m.env.recipients.len();
        let mut env = m.env;
        let rcpts: Vec<String> = env.recipients.iter().map(|r| r.address.clone()).collect();
        env.xforward.addr = self.client_addr.clone();
        env.xforward.name = self.client_name.clone();
        env.xforward.helo = Some(self.helo.clone()).filter(|h| !h.is_empty());
        env.xforward.ident = self.queue_id.clone();
        env.xforward.port = self.client_port.map(|p| p.to_string());
        env.xforward.source = Some("REMOTE".into());
        let unscanned = |r: Reply, action: &'static str| {
            metrics
                .messages
                .with_label_values(&["unscanned", action, "milter"])
                .inc();
            let result = if r.code < 500 { "deferred" } else { "rejected" };
            metrics
                .recipients
                .with_label_values(&[result, "milter"])
                .inc_by(n as u64);
            tracing::info!(target: "postsift::message", %id, frontend = "milter", queue_id = self.queue_id.as_deref().map(crate::escape::text).unwrap_or_default(), reply = %r, "message not checked");
            replycode(&r)
        };
        if m.too_big {
            return unscanned(reply::message_too_big(), "reject");
        }
        if let Some(e) = m.spool_failed {
            tracing::error!(%id, error = %e, "cannot spool message");
            metrics.tempfails.with_label_values(&["spool"]).inc();
            return unscanned(reply::no_space(&id), "tempfail");
        }
        let spool = match m.spool {
            Some(s) => s,
            None => Spool::new(0, shared.config.server.max_header_size, &shared.spool_dir),
        };
        let msg = match spool.finish() {
            Ok(msg) => msg,
            Err(e) => {
                tracing::error!(%id, error = %e, "cannot spool message");
                metrics.tempfails.with_label_values(&["spool"]).inc();
                return unscanned(reply::no_space(&id), "tempfail");
            }
        };
        let received = Received {
            id: id.clone(),
            env,
            msg,
            hop: self.hop(),
            started,
            per_recipient: false,
        };
        let original = received.msg.header_section().to_vec();
        metrics.in_flight.inc();
        let out = MilterOut::new(&shared, shared.config.milter.hold);
        let p = filter::run(&shared, received, &out).await;
        metrics.in_flight.dec();
        let r = reply::for_outcome(&id, &p.outcome, false, n)
            .into_iter()
            .next()
            .unwrap_or_else(|| reply::no_space(&id));
        metrics
            .messages
            .with_label_values(&[p.verdict, p.outcome.action(), "milter"])
            .inc();
        metrics
            .stage_duration
            .with_label_values(&["total"])
            .observe(started.elapsed().as_secs_f64());
        for i in 0..n {
            let result = p.outcome.recipient_result(i);
            metrics
                .recipients
                .with_label_values(&[result, "milter"])
                .inc();
        }
        let answer = answer(&p, &r, &out, &original, &rcpts);
        shared
            .metrics
            .milter
            .answered(Stage::of(&answer), started.elapsed());
        p.log(&|_| r.to_string());
        answer
    }
}

/// The milter's answer to a processed message, with reply `r` (the one the SMTP front end would
/// give): a 4xx or 5xx becomes that reply; otherwise the recipients of discarded or quarantined
/// groups are deleted and the first delivered group's header edits applied, or, with no group
/// delivered, the message is discarded (after a quarantine, stored first) or held.
pub(super) fn answer(
    p: &Processed,
    r: &Reply,
    out: &MilterOut<'_>,
    original: &[u8],
    rcpts: &[String],
) -> ModificationResponse {
    if r.code >= 400 {
        return replycode(r);
    }
    let mut b = ModificationResponse::builder();
    if out.held() {
        b.push(Quarantine::new(
            format!("postsift: {}", r.text.replace(['\r', '\n'], " ")).as_bytes(),
        ));
    }
    let Some((_, header)) = out.first_header() else {
        // No copy delivered: every group was discarded or quarantined (or held).
        if out.held() {
            return b.build(Continue);
        }
        return b.build(Discard);
    };
    if let Outcome::Split { groups, .. } = &p.outcome {
        for g in groups {
            if matches!(g.outcome, Outcome::Discarded(_) | Outcome::Quarantined(_)) && !out.held() {
                for &i in &g.rcpts {
                    if let Some(a) = rcpts.get(i) {
                        b.push(DeleteRecipient::new(format!("<{a}>").as_bytes()));
                    }
                }
            }
        }
    }
    for e in edits::diff(original, &header) {
        match e {
            Edit::Change { index, name, value } => b.push(ChangeHeader::new(index, &name, &value)),
            Edit::Insert { index, name, value } => b.push(InsertHeader::new(index, &name, &value)),
        }
    }
    b.build(Continue)
}

/// A 4xx or 5xx reply as the milter's reply code action. Postfix reads the text as Sendmail
/// does a format string: it turns `%%` into `%` and drops a single `%` (milter8.c), so each `%`
/// (a virus or file name can have one) is doubled. It also takes the reply only when the
/// enhanced status code's class is the reply's: a reply without one gets `X.0.0`.
pub(super) fn replycode(r: &Reply) -> ModificationResponse {
    let d = |c: u16| [(c / 100) as u8, (c / 10 % 10) as u8, (c % 10) as u8];
    let text = r.text.replace(['\r', '\n'], " ").replace('%', "%%");
    let x = r
        .enhanced
        .and_then(|e| {
            let v: Vec<u16> = e.split('.').filter_map(|p| p.parse().ok()).collect();
            <[u16; 3]>::try_from(v).ok()
        })
        .filter(|x| x[0] == r.code / 100)
        .unwrap_or([r.code / 100, 0, 0]);
    let action: Action = Replycode::new(d(r.code), x, &text).into();
    ModificationResponse::builder().build(action)
}

/// An address from the milter, without its angle brackets.
fn bare(a: &str) -> String {
    let a = a.trim();
    a.strip_prefix('<')
        .and_then(|x| x.strip_suffix('>'))
        .unwrap_or(a)
        .to_string()
}

#[async_trait]
impl Milter for MilterSession {
    type Error = Error;

    async fn option_negotiation(
        &mut self,
        theirs: OptNeg,
    ) -> Result<OptNeg, miltr_server::Error<Self::Error>> {
        let ours = OptNeg {
            protocol: Protocol::SMFIP_HDR_LEADSPC,
            ..OptNeg::default()
        };
        let ours = ours
            .merge_compatible(&theirs)
            .map_err(miltr_common::ProtocolError::CompatibilityError)?;
        self.leading_space = ours.protocol.contains(Protocol::SMFIP_HDR_LEADSPC);
        Ok(ours)
    }

    async fn macro_(&mut self, m: Macro) -> Result<(), Error> {
        for (k, v) in m.macros() {
            let v = String::from_utf8_lossy(v).into_owned();
            match k {
                b"i" => self.queue_id = Some(v).filter(|v| !v.is_empty()),
                b"{client_addr}" => self.client_addr = Some(v),
                b"{client_name}" => self.client_name = Some(v),
                _ => {}
            }
        }
        Ok(())
    }

    async fn connect(&mut self, c: Connect) -> Result<Action, Error> {
        let addr = c.address();
        let addr = addr.strip_prefix("IPv6:").unwrap_or(&addr);
        if addr.parse::<IpAddr>().is_ok() {
            self.client_addr = Some(addr.to_string());
        }
        self.client_name = Some(c.hostname().into_owned());
        self.client_port = c.port;
        Ok(Continue.into())
    }

    async fn helo(&mut self, h: Helo) -> Result<Action, Error> {
        self.helo = h.helo().trim_end_matches('\0').to_string();
        Ok(Continue.into())
    }

    async fn mail(&mut self, m: Mail) -> Result<Action, Error> {
        self.idle();
        self.busy.0.store(true, Ordering::SeqCst);
        self.msg = InFlight::default();
        self.msg.env.sender = bare(&m.sender());
        Ok(Continue.into())
    }

    async fn rcpt(&mut self, r: Recipient) -> Result<Action, Error> {
        self.msg.env.recipients.push(Rcpt {
            address: bare(&r.recipient()),
            ..Default::default()
        });
        Ok(Continue.into())
    }

    async fn header(&mut self, h: Header) -> Result<Action, Error> {
        // The raw bytes: `name\0value\0` (the accessors would decode them lossily as UTF-8).
        let mut raw = BytesMut::with_capacity(h.len());
        h.write(&mut raw);
        let mut parts = raw[..].split(|&b| b == 0);
        let name = parts.next().unwrap_or_default();
        let value = parts.next().unwrap_or_default();
        let mut line = Vec::with_capacity(name.len() + value.len() + 4);
        line.extend_from_slice(name);
        line.push(b':');
        if !self.leading_space {
            line.push(b' ');
        }
        // Folded lines come joined by a bare LF.
        for &b in value {
            if b == b'\n' && line.last() != Some(&b'\r') {
                line.push(b'\r');
            }
            line.push(b);
        }
        line.extend_from_slice(b"\r\n");
        self.write(&line);
        Ok(Continue.into())
    }

    async fn end_of_header(&mut self) -> Result<Action, Error> {
        self.msg.header_done = true;
        self.write(b"\r\n");
        Ok(Continue.into())
    }

    async fn body(&mut self, b: Body) -> Result<Action, Error> {
        if !self.msg.header_done {
            self.msg.header_done = true;
            self.write(b"\r\n");
        }
        self.write(b.as_bytes());
        Ok(Continue.into())
    }

    async fn end_of_body(&mut self) -> Result<ModificationResponse, Error> {
        if !self.msg.header_done {
            // A message without a header section: the blank line that ends it.
            self.write(b"\r\n");
        }
        let r = self.end_of_message().await;
        self.messages += 1;
        // Still busy: the answer goes out after this returns. Postfix's next command (MAIL,
        // ABORT, QUIT) shows it arrived.
        Ok(r)
    }

    async fn abort(&mut self) -> Result<(), Error> {
        // The spool (and its file) goes with it.
        self.msg = InFlight::default();
        self.idle();
        Ok(())
    }

    async fn quit(&mut self) -> Result<(), Error> {
        self.msg = InFlight::default();
        self.idle();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reply line Postfix reads from a reply code action.
    fn wire(r: &Reply) -> String {
        match replycode(r).final_action() {
            Action::Replycode(c) => {
                let mut b = BytesMut::new();
                c.write(&mut b);
                String::from_utf8_lossy(&b)
                    .trim_end_matches('\0')
                    .to_string()
            }
            a => panic!("not a reply code: {a:?}"),
        }
    }

    #[test]
    fn a_percent_in_the_reply_text_is_doubled_for_postfix() {
        let r = Reply::new(554, "5.7.0", "Reject, id=X - BANNED: 100%free.exe");
        assert_eq!(wire(&r), "554 5.7.0 Reject, id=X - BANNED: 100%%free.exe");
    }

    #[test]
    fn a_reply_without_a_matching_enhanced_code_gets_its_class() {
        let mut r = Reply::new(451, "4.3.0", "try\r\nlater");
        r.enhanced = None;
        assert_eq!(wire(&r), "451 4.0.0 try  later");
        r.enhanced = Some("5.1.1");
        assert!(wire(&r).starts_with("451 4.0.0 "), "{}", wire(&r));
    }
}
