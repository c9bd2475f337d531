//! Reinjection: the scanned message goes back into Postfix by SMTP (normally 127.0.0.1:10025)
//! through lettre's `AsyncSmtpConnection`, with connections kept for reuse. lettre's
//! high-level `send` knows neither XFORWARD nor the DSN parameters and wants the message in one
//! slice, so this module drives the connection command by command: a second EHLO to learn every
//! keyword the server offers (lettre keeps only a few), our own MAIL/RCPT/XFORWARD command
//! types, and `message_iter` fed from the spool so a big message is never held in memory.
//! The socket is wrapped in [`GuardedStream`], which refuses to write the final dot once the
//! body could not be read completely: a message is never sent truncated.
//!
//! lettre's client does not pipeline: its `command` writes one command and waits for its
//! reply. Where the server offers PIPELINING, this module sends XFORWARD, MAIL, every RCPT and
//! DATA as one group in one `command` (the lines joined) and reads the other replies with
//! `read_response`, in order (RFC 2920): one write and one round trip instead of one per
//! command. lettre also writes and flushes every piece of the body and then the final dot on
//! its own; [`GuardedStream`] holds those writes back while the body goes out, so a small
//! message is one write. The body is dot-stuffed by `stream::Stuffer` rather than lettre's
//! byte-by-byte codec (lettre is handed empty pieces; see `stream`). lettre is wrapped, not
//! replaced: its `command` and `read_response` are enough to pipeline, and replacing it would
//! mean writing our own reply parser (lettre's is crate-private). Without PIPELINING, every
//! command waits for its reply, as RFC 5321 asks.

mod commands;
pub mod metrics;
mod stream;
mod types;

use std::fmt;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Ehlo, Rset};
use lettre::transport::smtp::extension::ClientId;
use tokio::net::TcpStream;

use crate::config::Config;
use crate::message::{Envelope, Message};

pub use commands::{bracketed, check_envelope, valid_notify};
pub use types::{Delivery, Fault, RcptResult, Upstream};

use commands::{rcpt_cmd, MailCmd, Raw};
use stream::{BodyChunks, GuardedStream};

pub use metrics::{ReinjectMetrics, REINJECT_ERRORS};

pub struct Reinjector {
    to: String,
    helo: ClientId,
    connect_timeout: Duration,
    command_timeout: Duration,
    data_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Pooled>>,
    /// The reinjection server's health (see [`crate::peers`]).
    health: crate::peers::Group,
}

struct Pooled {
    conn: AsyncSmtpConnection,
    guard: Arc<AtomicBool>,
    /// The socket's write hold while the body goes out (see [`GuardedStream`]).
    hold: Arc<AtomicBool>,
    /// The socket's queue of stuffed body bytes (see [`GuardedStream`]).
    queued: Arc<Mutex<Vec<u8>>>,
    keywords: Vec<String>,
    xforward: Vec<String>,
}

impl Pooled {
    fn has(&self, kw: &str) -> bool {
        self.keywords.iter().any(|k| k == kw)
    }
}

/// Why one attempt failed.
struct Failure {
    why: Why,
    label: &'static str,
    /// The failure happened on a reused connection before anything was accepted: a fresh
    /// connection may succeed (the server closed the idle one).
    retry: bool,
}

enum Why {
    Fault(Fault),
    Refused(Upstream),
}

impl Failure {
    fn fault(fault: Fault, label: &'static str) -> Failure {
        Failure {
            why: Why::Fault(fault),
            label,
            retry: false,
        }
    }

    fn result(self) -> RcptResult {
        match self.why {
            Why::Fault(f) => RcptResult::Failed(f),
            Why::Refused(u) => RcptResult::Refused(u),
        }
    }
}

impl Reinjector {
    pub fn new(config: &Config) -> Reinjector {
        let r = &config.reinject;
        Reinjector {
            to: r.to.clone(),
            helo: ClientId::Domain(r.helo.clone().unwrap_or_else(|| config.hostname())),
            connect_timeout: Duration::from_secs(r.connect_timeout),
            command_timeout: Duration::from_secs(r.command_timeout),
            data_timeout: Duration::from_secs(r.data_timeout),
            max_idle: r.max_idle,
            idle: Mutex::new(Vec::new()),
            health: crate::peers::Group::new(
                crate::peers::Peer::Reinject,
                std::slice::from_ref(&r.to),
                config.health.down_after,
            ),
        }
    }

    /// The reinjection server's health.
    pub fn health(&self) -> &crate::peers::Group {
        &self.health
    }

    /// Tells the health state how an exchange with the server went: a timeout or a lost or
    /// refused connection counts against it, any reply (a refusal too) proves it alive.
    fn judged<T>(&self, r: Result<T, Failure>) -> Result<T, Failure> {
        let outcome = match &r {
            Err(f) if matches!(f.label, "connect" | "timeout" | "network") => {
                crate::peers::Outcome::Failed
            }
            _ => crate::peers::Outcome::Answered,
        };
        self.health.record(0, outcome);
        r
    }

    /// Sends the message: `header_block` replaces the original header section, the rest of
    /// `msg` follows unchanged. `all_or_nothing` (SMTP clients, which take one reply per
    /// message) sends no data unless every recipient was accepted, so a retry can never
    /// duplicate; LMTP clients get each recipient's own result.
    pub async fn send(
        &self,
        env: &Envelope,
        header_block: &[u8],
        msg: &Message,
        all_or_nothing: bool,
    ) -> Delivery {
        if let Err(refused) = check_envelope(env) {
            return self.refused_all(env, refused);
        }
        let total = header_block.len() as u64 + msg.len() - msg.header_end() as u64;
        match self.open(env, total, all_or_nothing).await {
            Ok(Opened::Done(d)) => d,
            Ok(Opened::Ready(p)) => match self.judged(self.finish(p, header_block, msg).await) {
                Ok(d) => d,
                Err(f) => self.failed_all(env, f),
            },
            Err(f) => self.failed_all(env, f),
        }
    }

    /// Sends several copies of `msg`, each `(envelope, header block)` its own transaction,
    /// for a client that takes one reply for all of them (SMTP): every transaction is opened
    /// (MAIL, RCPT and, where pipelined, DATA, each on its own connection) before any data is
    /// sent, and none is sent unless every one took all its recipients. Then the data goes
    /// out, one after the other; only a failure at a later one's end of data (after an
    /// earlier one's was accepted) still leaves the copies apart. One result per part, in
    /// order; parts not sent because another failed are [`RcptResult::Withheld`].
    pub async fn send_together(
        &self,
        parts: &[(&Envelope, &[u8])],
        msg: &Message,
    ) -> Vec<Delivery> {
        let body = msg.len() - msg.header_end() as u64;
        let mut opened = Vec::new();
        let mut failed = None;
        for (i, (env, block)) in parts.iter().enumerate() {
            if let Err(refused) = check_envelope(env) {
                failed = Some((i, self.refused_all(env, refused)));
                break;
            }
            match self.open(env, block.len() as u64 + body, true).await {
                Ok(Opened::Ready(p)) => opened.push(p),
                Ok(Opened::Done(d)) => {
                    failed = Some((i, d));
                    break;
                }
                Err(f) => {
                    failed = Some((i, self.failed_all(env, f)));
                    break;
                }
            }
        }
        if let Some((i, d)) = failed {
            for p in opened {
                self.abandon(p).await;
            }
            let mut out: Vec<Delivery> = parts.iter().map(|(env, _)| self.withheld(env)).collect();
            out[i] = d;
            return out;
        }
        let mut out = Vec::new();
        let mut stop = false;
        for (p, (env, block)) in opened.into_iter().zip(parts) {
            if stop {
                // An earlier copy failed at its end of data: this one is not sent either.
                self.abandon(p).await;
                out.push(self.withheld(env));
                continue;
            }
            let d = match self.judged(self.finish(p, block, msg).await) {
                Ok(d) => d,
                Err(f) => self.failed_all(env, f),
            };
            stop = !d.all_accepted();
            out.push(d);
        }
        out
    }

    /// Gives up an opened transaction without sending its data: RSET, and the connection back
    /// to the pool; after a 354 (DATA went with the pipelined group) only closing the
    /// connection ends it without a message.
    async fn abandon(&self, mut p: Pending) {
        if p.data_open {
            return;
        }
        if self.command(&mut p.p, Rset, "RSET", false).await.is_ok() {
            self.put_idle(p.p);
        }
    }

    /// Ends a transaction refused before its data: RSET and the connection back to the pool;
    /// closed instead when the server already said 354 to a pipelined DATA, or 421.
    async fn release(&self, mut p: Pooled, data: Option<&Result<Upstream, Upstream>>) {
        match data {
            Some(Ok(_)) => {}
            Some(Err(r)) if r.code == 421 => {}
            _ => {
                let _ = self.command(&mut p, Rset, "RSET", false).await;
                self.put_idle(p);
            }
        }
    }

    /// MAIL and RCPT for `env` (`total` bytes to come) on a pooled or new connection; a
    /// reused connection the server had closed is replaced once.
    async fn open(
        &self,
        env: &Envelope,
        total: u64,
        all_or_nothing: bool,
    ) -> Result<Opened, Failure> {
        if !self.health.admit(0) {
            self.health.skipped();
            return Err(Failure::fault(
                Fault::Connect {
                    to: self.to.clone(),
                    detail: format!(
                        "marked down after {} failures in a row, not tried until a probe answers",
                        self.health.down_after()
                    ),
                },
                "connect",
            ));
        }
        let r = self.open_admitted(env, total, all_or_nothing).await;
        self.judged(r)
    }

    async fn open_admitted(
        &self,
        env: &Envelope,
        total: u64,
        all_or_nothing: bool,
    ) -> Result<Opened, Failure> {
        let mut first = true;
        loop {
            let (pooled, reused) = match self.take_idle() {
                Some(p) if first => (p, true),
                _ => (self.connect().await?, false),
            };
            first = false;
            match self
                .envelope_phase(pooled, env, total, all_or_nothing)
                .await
            {
                Err(f) if f.retry && reused => {
                    tracing::debug!("reused reinjection connection failed early, reconnecting");
                    continue;
                }
                r => return r,
            }
        }
    }

    /// Nothing sent for `env`'s recipients: another part of the message failed first and the
    /// client takes one reply for all (see `filter`).
    pub fn withheld(&self, env: &Envelope) -> Delivery {
        Delivery::withheld(env.recipients.len(), self.to.clone())
    }

    /// Nothing sent: `env` failed [`check_envelope`].
    fn refused_all(&self, env: &Envelope, refused: Upstream) -> Delivery {
        tracing::error!(reply = %refused.one_line(), "reinjection: envelope refused before sending");
        Delivery {
            rcpts: vec![RcptResult::Refused(refused); env.recipients.len()],
            accepted: None,
            to: self.to.clone(),
            queue_id: None,
            failure: Some("rejected"),
        }
    }

    fn failed_all(&self, env: &Envelope, f: Failure) -> Delivery {
        let label = f.label;
        let r = f.result();
        Delivery {
            rcpts: vec![r; env.recipients.len()],
            accepted: None,
            to: self.to.clone(),
            queue_id: None,
            failure: Some(label),
        }
    }

    fn take_idle(&self) -> Option<Pooled> {
        self.idle.lock().unwrap().pop()
    }

    fn put_idle(&self, p: Pooled) {
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < self.max_idle && !p.conn.has_broken() {
            idle.push(p);
        }
    }

    async fn connect(&self) -> Result<Pooled, Failure> {
        let fail = |detail: String, label| {
            Failure::fault(
                Fault::Connect {
                    to: self.to.clone(),
                    detail,
                },
                label,
            )
        };
        let tcp =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.to.as_str()))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(fail(e.to_string(), "connect")),
                Err(_) => return Err(fail("timed out".into(), "timeout")),
            };
        let _ = tcp.set_nodelay(true);
        let guard = Arc::new(AtomicBool::new(false));
        let stream = GuardedStream::new(tcp, guard.clone());
        let hold = stream.hold.clone();
        let queued = stream.queued.clone();
        let connect = async {
            let mut conn =
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.helo).await?;
            // lettre keeps only the keywords it knows; ask again to see XFORWARD, DSN, SIZE.
            let ehlo = conn.command(Ehlo::new(self.helo.clone())).await?;
            Ok::<_, lettre::transport::smtp::Error>((conn, ehlo))
        };
        let (conn, ehlo) = match tokio::time::timeout(self.command_timeout, connect).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return Err(fail_from_lettre(&e, "greeting", false)),
            Err(_) => return Err(self.timeout("greeting")),
        };
        let mut keywords = Vec::new();
        let mut xforward = Vec::new();
        for line in ehlo.message().skip(1) {
            let mut words = line.split_ascii_whitespace();
            if let Some(kw) = words.next() {
                let kw = kw.to_ascii_uppercase();
                if kw == "XFORWARD" {
                    xforward = words.map(|w| w.to_ascii_uppercase()).collect();
                }
                keywords.push(kw);
            }
        }
        Ok(Pooled {
            conn,
            guard,
            hold,
            queued,
            keywords,
            xforward,
        })
    }

    async fn command(
        &self,
        p: &mut Pooled,
        cmd: impl fmt::Display,
        stage: &'static str,
        early: bool,
    ) -> Result<Upstream, Failure> {
        match tokio::time::timeout(self.command_timeout, p.conn.command(cmd)).await {
            Ok(Ok(resp)) => Ok(upstream_from_response(&resp)),
            Ok(Err(e)) if e.status().is_some() => Err(Failure {
                why: Why::Refused(upstream_from_error(&e)),
                label: "rejected",
                retry: false,
            }),
            Ok(Err(e)) => Err(fail_from_lettre(&e, stage, early)),
            Err(_) => Err(self.timeout(stage)),
        }
    }

    fn timeout(&self, stage: &'static str) -> Failure {
        Failure::fault(
            Fault::Timeout {
                to: self.to.clone(),
                stage,
            },
            "timeout",
        )
    }

    /// Sends the envelope commands and returns each one's reply (Err for 4xx/5xx). With
    /// PIPELINING they go out in one write and the replies are read back in order (RFC 2920);
    /// the group ends with DATA then (see `envelope_phase`).
    async fn envelope(
        &self,
        p: &mut Pooled,
        lines: &[String],
    ) -> Result<Vec<Result<Upstream, Upstream>>, Failure> {
        let mut out = Vec::with_capacity(lines.len());
        if !p.has("PIPELINING") {
            for line in lines {
                match self.command(p, Raw(line.clone()), "MAIL/RCPT", true).await {
                    Ok(r) => out.push(Ok(r)),
                    Err(Failure {
                        why: Why::Refused(u),
                        ..
                    }) => out.push(Err(u)),
                    Err(f) => return Err(f),
                }
            }
            return Ok(out);
        }
        let exchange = async {
            let first = p.conn.command(Raw(lines.join("\r\n"))).await;
            let mut results = vec![first];
            for _ in 1..lines.len() {
                results.push(p.conn.read_response().await);
            }
            results
        };
        let results = match tokio::time::timeout(self.command_timeout, exchange).await {
            Ok(r) => r,
            Err(_) => return Err(self.timeout("MAIL/RCPT")),
        };
        for r in results {
            match r {
                Ok(resp) => out.push(Ok(upstream_from_response(&resp))),
                Err(e) if e.status().is_some() => out.push(Err(upstream_from_error(&e))),
                // Nothing was accepted yet: a fresh connection may do better.
                Err(e) => return Err(fail_from_lettre(&e, "MAIL/RCPT", true)),
            }
        }
        Ok(out)
    }

    /// XFORWARD, MAIL and RCPT (and DATA where the server pipelines): the transaction ready
    /// for its data, or already answered (a refusal; with `all_or_nothing`, any refused
    /// recipient). A pipelined DATA that got its 354 though the transaction is not to be sent
    /// (recipients refused) is ended by closing the connection: the server then discards it.
    async fn envelope_phase(
        &self,
        mut p: Pooled,
        env: &Envelope,
        total: u64,
        all_or_nothing: bool,
    ) -> Result<Opened, Failure> {
        let xforward = env.xforward.commands(&p.xforward);
        let mail = MailCmd {
            env,
            size: total,
            keywords: &p.keywords,
        }
        .to_string();
        let dsn = p.has("DSN");
        let mut lines = xforward.clone();
        lines.push(mail);
        lines.extend(env.recipients.iter().map(|r| rcpt_cmd(r, dsn)));
        let pipelined = p.has("PIPELINING");
        if pipelined {
            lines.push("DATA".into());
        }
        let mut replies = self.envelope(&mut p, &lines).await?;
        let data = if pipelined { replies.pop() } else { None };
        let mut replies = replies.into_iter();
        let done = |rcpts: Vec<RcptResult>, label: Option<&'static str>| Delivery {
            rcpts,
            accepted: None,
            to: self.to.clone(),
            queue_id: None,
            failure: label,
        };

        for _ in &xforward {
            match replies.next().expect("one reply per command") {
                Ok(_) => {}
                // A 421 here is an idle connection the server already closed (Postfix says
                // "421 4.4.2 Error: timeout exceeded"): worth a fresh connection.
                Err(r) if r.code == 421 => return Err(stale(r)),
                // XFORWARD only informs; a refusal (no smtpd_authorized_xforward_hosts) is logged.
                Err(r) => {
                    tracing::warn!(reply = %r.one_line(), "reinjection server refused XFORWARD; check smtpd_authorized_xforward_hosts")
                }
            }
        }
        match replies.next().expect("one reply per command") {
            Ok(_) => {}
            Err(r) if r.code == 421 => return Err(stale(r)),
            Err(r) => {
                self.release(p, data.as_ref()).await;
                let n = env.recipients.len();
                return Ok(Opened::Done(done(
                    vec![RcptResult::Refused(r); n],
                    Some("rejected"),
                )));
            }
        }
        let refusals: Vec<Option<Upstream>> = replies.map(|r| r.err()).collect();
        let refused = refusals.iter().filter(|r| r.is_some()).count();
        if refused == env.recipients.len() || (all_or_nothing && refused > 0) {
            self.release(p, data.as_ref()).await;
            let all_perm = refusals
                .iter()
                .all(|r| r.as_ref().is_some_and(|u| u.code >= 500));
            let rcpts = refusals
                .into_iter()
                .map(|r| r.map_or(RcptResult::Withheld, RcptResult::Refused))
                .collect();
            return Ok(Opened::Done(done(
                rcpts,
                Some(if all_perm { "rejected" } else { "tempfail" }),
            )));
        }
        // Refused at a pipelined DATA with recipients accepted: as the lock-step DATA in
        // `finish` answers it (every recipient gets the reply), the connection not kept.
        if let Some(Err(r)) = data {
            return Err(Failure {
                why: Why::Refused(r),
                label: "rejected",
                retry: false,
            });
        }
        Ok(Opened::Ready(Pending {
            p,
            refusals,
            total,
            data_open: data.is_some(),
        }))
    }

    /// DATA and the message for an opened transaction.
    async fn finish(
        &self,
        pending: Pending,
        header_block: &[u8],
        msg: &Message,
    ) -> Result<Delivery, Failure> {
        let Pending {
            mut p,
            refusals,
            total,
            data_open,
        } = pending;
        let done = |rcpts: Vec<RcptResult>, label: Option<&'static str>| Delivery {
            rcpts,
            accepted: None,
            to: self.to.clone(),
            queue_id: None,
            failure: label,
        };
        if !data_open {
            self.command(&mut p, Data, "DATA", false).await?;
        }

        // The body: header block, then the message after its original header section, less
        // the final CRLF that lettre writes itself before the dot.
        let read_error = Arc::new(Mutex::new(None::<io::Error>));
        let chunks = BodyChunks::new(
            header_block,
            msg,
            total.saturating_sub(2),
            read_error.clone(),
            p.guard.clone(),
            (p.hold.clone(), p.queued.clone()),
        );
        let sent = tokio::time::timeout(self.data_timeout, p.conn.message_iter(chunks)).await;
        if let Some(e) = read_error.lock().unwrap().take() {
            return Err(Failure::fault(
                Fault::Spool {
                    detail: e.to_string(),
                },
                "spool",
            ));
        }
        let data_reply = match sent {
            Ok(Ok(resp)) => upstream_from_response(&resp),
            Ok(Err(e)) if e.status().is_some() => {
                let reply = upstream_from_error(&e);
                self.put_idle(p);
                let label = if reply.is_transient() {
                    "tempfail"
                } else {
                    "rejected"
                };
                let rcpts = refusals
                    .into_iter()
                    .map(|r| RcptResult::Refused(r.unwrap_or_else(|| reply.clone())))
                    .collect();
                return Ok(done(rcpts, Some(label)));
            }
            Ok(Err(e)) => return Err(fail_from_lettre(&e, "end of data", false)),
            Err(_) => return Err(self.timeout("end of data")),
        };
        self.put_idle(p);
        let queue_id = data_reply
            .text
            .split_once("queued as ")
            .map(|(_, q)| q.split_whitespace().next().unwrap_or("").to_owned());
        let rcpts = refusals
            .into_iter()
            .map(|r| r.map_or(RcptResult::Accepted, RcptResult::Refused))
            .collect();
        Ok(Delivery {
            rcpts,
            accepted: Some(data_reply),
            to: self.to.clone(),
            queue_id,
            failure: None,
        })
    }
}

/// A transaction after MAIL and RCPT.
enum Opened {
    /// Every recipient needed was accepted: the data may go.
    Ready(Pending),
    /// Answered without data (refused).
    Done(Delivery),
}

/// An open transaction waiting for its data.
struct Pending {
    p: Pooled,
    /// Per recipient: its refusal, None if accepted.
    refusals: Vec<Option<Upstream>>,
    /// Bytes the data will be (the header block and the body after the original header).
    total: u64,
    /// DATA already went with the pipelined group and got its 354: the body comes next.
    data_open: bool,
}

/// A 421 before anything was accepted: the (pooled) connection had been closed by the server.
fn stale(reply: Upstream) -> Failure {
    Failure {
        why: Why::Refused(reply),
        label: "tempfail",
        retry: true,
    }
}

fn upstream_from_response(resp: &lettre::transport::smtp::response::Response) -> Upstream {
    let code: u16 = resp.code().to_string().parse().unwrap_or(250);
    Upstream {
        code,
        text: resp.message().collect::<Vec<_>>().join("\n"),
    }
}

/// lettre reports 4xx/5xx replies as errors carrying the code and the joined text.
fn upstream_from_error(e: &lettre::transport::smtp::Error) -> Upstream {
    let code: u16 = e
        .status()
        .map_or(451, |c| c.to_string().parse().unwrap_or(451));
    let text = std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string());
    Upstream { code, text }
}

fn fail_from_lettre(
    e: &lettre::transport::smtp::Error,
    stage: &'static str,
    early: bool,
) -> Failure {
    let detail = std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string());
    Failure {
        why: Why::Fault(Fault::Lost { stage, detail }),
        label: "network",
        retry: early,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Recipient;

    fn env(sender: &str, rcpt: &str, notify: Option<&str>) -> Envelope {
        Envelope {
            sender: sender.into(),
            recipients: vec![Recipient {
                address: rcpt.into(),
                notify: notify.map(Into::into),
                orcpt: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn crlf_in_a_recipient_or_notify_never_reaches_the_reinjection_server() {
        assert!(check_envelope(&env(
            "a@example.org",
            "b@example.com",
            Some("SUCCESS,DELAY")
        ))
        .is_ok());
        assert!(check_envelope(&env("", "\"a b\"@example.com", Some("NEVER"))).is_ok());
        let injected = "x@evil.example>\r\nNOOP INJECTED-1\r\nRCPT TO:<injected@evil.example";
        let e = check_envelope(&env("a@example.org", injected, None)).unwrap_err();
        assert_eq!(e.code, 553);
        assert!(e.text.starts_with("5.1.3 "), "{e:?}");
        assert!(!e.text.contains('\r') && !e.text.contains('\n'), "{e:?}");
        let e = check_envelope(&env(
            "a@example.org",
            "b@example.com",
            Some("SUCCESS\r\nNOOP X"),
        ))
        .unwrap_err();
        assert_eq!(e.code, 501);
        assert!(
            check_envelope(&env("a@example.org> NOTIFY=NEVER", "b@example.com", None)).is_err()
        );
        assert!(check_envelope(&env("a@example.org", "", None)).is_err());
        assert!(check_envelope(&env("a@example.org", "b@example.com x", None)).is_err());
    }
}
