//! Reinjection: the scanned message goes back into Postfix by SMTP (normally 127.0.0.1:10025)
//! through lettre's `AsyncSmtpConnection`, with connections kept for reuse. lettre's
//! high-level `send` knows neither XFORWARD nor the DSN parameters and wants the message in one
//! slice, so this module drives the connection command by command: a second EHLO to learn every
//! keyword the server offers (lettre keeps only a few), our own MAIL/RCPT/XFORWARD command
//! types, and `message_iter` fed from the spool so a big message is never held in memory.
//! The socket is wrapped in [`GuardedStream`], which refuses to write the final dot once the
//! body could not be read completely: a message is never sent truncated.

pub mod metrics;

use std::fmt;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::commands::{Data, Ehlo, Rset};
use lettre::transport::smtp::extension::ClientId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::message::{Envelope, Message};
use crate::xforward::xtext_encode;

/// The next hop's own reply (code and text, the text with its enhanced status code), relayed
/// as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub code: u16,
    /// Lines joined by `\n`.
    pub text: String,
}

impl Upstream {
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// The reply on one line, for a relayed text or a log.
    pub fn one_line(&self) -> String {
        format!("{} {}", self.code, self.text.replace('\n', " "))
    }
}

/// A reinjection that failed on postsift's side of the conversation (no reply of the next hop
/// to relay). Every fault is temporary: the client keeps the message and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// No connection to `to`.
    Connect { to: String, detail: String },
    /// The next hop did not answer in time during `stage` ("greeting", "MAIL/RCPT", "DATA",
    /// "end of data").
    Timeout { to: String, stage: &'static str },
    /// The connection broke during `stage`.
    Lost { stage: &'static str, detail: String },
    /// The message could not be read back from the spool; the final dot was never sent.
    Spool { detail: String },
}

/// What became of one envelope recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    /// The next hop accepted the message for it ([`Delivery::accepted`] has its reply).
    Accepted,
    /// The next hop refused it (its RCPT, or the message): its own reply.
    Refused(Upstream),
    /// Not sent, though the next hop took the recipient: others were refused and the client
    /// takes one reply per message (SMTP), so nothing goes out until all can.
    Withheld,
    /// Not sent: the reinjection failed.
    Failed(Fault),
}

/// Reinjection's answer for one message.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// One result per envelope recipient, in order.
    pub rcpts: Vec<RcptResult>,
    /// The next hop's reply to the message, when it accepted it.
    pub accepted: Option<Upstream>,
    /// The next hop (`reinject.to`), for the relayed reply.
    pub to: String,
    /// The queue id the server gave (from `250 2.0.0 Ok: queued as X`), for the log.
    pub queue_id: Option<String>,
    /// A short label for metrics when the reinjection failed: "connect", "timeout",
    /// "rejected", "tempfail", "network", "spool".
    pub failure: Option<&'static str>,
}

impl Delivery {
    /// True when every recipient was accepted.
    pub fn all_accepted(&self) -> bool {
        self.rcpts.iter().all(|r| *r == RcptResult::Accepted)
    }
}

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
    /// (MAIL, RCPT, each on its own connection) before any data is sent, and none is sent
    /// unless every one took all its recipients. Then the data goes out, one after the
    /// other; only a failure at a later one's end of data (after an earlier one's was
    /// accepted) still leaves the copies apart. One result per part, in order; parts not
    /// sent because another failed are [`RcptResult::Withheld`].
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
            for mut p in opened {
                if self.command(&mut p.p, Rset, "RSET", false).await.is_ok() {
                    self.put_idle(p.p);
                }
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
                let mut p = p;
                if self.command(&mut p.p, Rset, "RSET", false).await.is_ok() {
                    self.put_idle(p.p);
                }
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
        Delivery {
            rcpts: vec![RcptResult::Withheld; env.recipients.len()],
            accepted: None,
            to: self.to.clone(),
            queue_id: None,
            failure: None,
        }
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
        let stream = GuardedStream {
            inner: tcp,
            refuse_writes: guard.clone(),
        };
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
    /// DATA is not part of the group, so a refused recipient never meets a 354 we cannot undo.
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

    /// XFORWARD, MAIL and RCPT: the transaction ready for its data, or already answered (a
    /// refusal; with `all_or_nothing`, any refused recipient).
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
            p: &p,
        }
        .to_string();
        let dsn = p.has("DSN");
        let mut lines = xforward.clone();
        lines.push(mail);
        lines.extend(env.recipients.iter().map(|r| rcpt_cmd(r, dsn)));
        let mut replies = self.envelope(&mut p, &lines).await?.into_iter();
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
                let _ = self.command(&mut p, Rset, "RSET", false).await;
                self.put_idle(p);
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
            let _ = self.command(&mut p, Rset, "RSET", false).await;
            self.put_idle(p);
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
        Ok(Opened::Ready(Pending { p, refusals, total }))
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
        } = pending;
        let done = |rcpts: Vec<RcptResult>, label: Option<&'static str>| Delivery {
            rcpts,
            accepted: None,
            to: self.to.clone(),
            queue_id: None,
            failure: label,
        };
        self.command(&mut p, Data, "DATA", false).await?;

        // The body: header block, then the message after its original header section, less
        // the final CRLF that lettre writes itself before the dot.
        let read_error = Arc::new(Mutex::new(None::<io::Error>));
        let chunks = BodyChunks::new(
            header_block,
            msg,
            total.saturating_sub(2),
            read_error.clone(),
            p.guard.clone(),
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
}

/// `127.0.0.1:10025` as Postfix writes a next hop: `[127.0.0.1]:10025`.
pub fn bracketed(hostport: &str) -> String {
    match hostport.rsplit_once(':') {
        Some((host, port)) => format!(
            "[{}]:{port}",
            host.trim_start_matches('[').trim_end_matches(']')
        ),
        None => format!("[{hostport}]"),
    }
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

/// A command line written verbatim (lettre appends nothing; we add CRLF).
struct Raw(String);

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

/// `MAIL FROM:<sender>` with the parameters the server supports, taken from the original.
struct MailCmd<'a> {
    env: &'a Envelope,
    size: u64,
    p: &'a Pooled,
}

impl fmt::Display for MailCmd<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MAIL FROM:<{}>", self.env.sender)?;
        if self.p.has("SIZE") {
            write!(f, " SIZE={}", self.size)?;
        }
        if let Some(body) = self.env.body {
            if self.p.has("8BITMIME") {
                write!(f, " BODY={body}")?;
            }
        }
        if self.env.smtputf8 && self.p.has("SMTPUTF8") {
            write!(f, " SMTPUTF8")?;
        }
        if self.p.has("DSN") {
            if let Some(ret) = self.env.ret {
                write!(f, " RET={ret}")?;
            }
            if let Some(envid) = &self.env.envid {
                write!(f, " ENVID={}", xtext_encode(envid))?;
            }
        }
        Ok(())
    }
}

fn rcpt_cmd(r: &crate::message::Recipient, dsn: bool) -> String {
    let mut s = format!("RCPT TO:<{}>", r.address);
    if dsn {
        if let Some(n) = &r.notify {
            s.push_str(" NOTIFY=");
            s.push_str(n);
        }
        if let Some(o) = &r.orcpt {
            s.push_str(" ORCPT=rfc822;");
            s.push_str(&xtext_encode(o));
        }
    }
    s
}

/// The reinjection boundary: every address and parameter written on the connection passes the
/// inbound session's RFC 5321 check (`smtp::address`), whatever it came from (an SMTP client,
/// the CLI, AM.PDP, a quarantine file). A CR, LF, space or `>` in an address or a `NOTIFY=`
/// would otherwise end the command and start another (`RCPT TO:<x>\r\nNOOP …`). `ORCPT=`,
/// `ENVID=` and the XFORWARD values are xtext-encoded, `RET=` and `BODY=` are constants.
/// The refusal is the reply every recipient gets; nothing is sent.
pub fn check_envelope(env: &Envelope) -> Result<(), Upstream> {
    use crate::smtp::address::Address;
    let refuse = |code: u16, text: String| Upstream { code, text };
    if !env.sender.is_empty() && Address::parse(&env.sender, env.smtputf8).is_err() {
        return Err(refuse(
            553,
            format!(
                "5.1.7 Sender {:?}: bad address syntax, not reinjected",
                env.sender
            ),
        ));
    }
    for r in &env.recipients {
        if r.address.is_empty() || Address::parse(&r.address, env.smtputf8).is_err() {
            return Err(refuse(
                553,
                format!(
                    "5.1.3 Recipient {:?}: bad address syntax, not reinjected",
                    r.address
                ),
            ));
        }
        if let Some(n) = &r.notify {
            if !valid_notify(n) {
                return Err(refuse(
                    501,
                    format!(
                        "5.5.4 NOTIFY={n:?} of {:?}: invalid, not reinjected",
                        r.address
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// RFC 3461 §4.1: `NEVER`, or a comma-separated list of `SUCCESS`, `FAILURE`, `DELAY`.
pub fn valid_notify(n: &str) -> bool {
    n.eq_ignore_ascii_case("NEVER")
        || (!n.is_empty()
            && n.split(',').all(|w| {
                ["SUCCESS", "FAILURE", "DELAY"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k))
            }))
}

/// The message body for lettre's `message_iter`: the new header block, then the original
/// message after its header section, read from memory and from the spool file in 64 KiB
/// pieces. A read error is recorded and the guard set, so lettre's final dot is never written.
struct BodyChunks<'a> {
    header_block: &'a [u8],
    header_pos: usize,
    msg: &'a Message,
    head_pos: usize,
    file: Option<std::fs::File>,
    file_opened: bool,
    left: u64,
    error: Arc<Mutex<Option<io::Error>>>,
    guard: Arc<AtomicBool>,
}

/// Each piece handed to lettre becomes one write: fill pieces up to this size from every
/// source in turn, so a small message goes out in one write (plus lettre's final dot).
const PIECE: usize = 64 * 1024;

impl<'a> BodyChunks<'a> {
    fn new(
        header_block: &'a [u8],
        msg: &'a Message,
        limit: u64,
        error: Arc<Mutex<Option<io::Error>>>,
        guard: Arc<AtomicBool>,
    ) -> Self {
        BodyChunks {
            header_block,
            header_pos: 0,
            msg,
            head_pos: msg.header_end(),
            file: None,
            file_opened: false,
            left: limit,
            error,
            guard,
        }
    }

    fn fail(&mut self, e: io::Error) -> Option<Vec<u8>> {
        self.guard.store(true, Ordering::SeqCst);
        *self.error.lock().unwrap() = Some(e);
        None
    }

    /// Appends up to `room` bytes from the next source with data; Ok(0) only at the end of
    /// the spool file.
    fn fill(&mut self, buf: &mut Vec<u8>, room: usize) -> io::Result<usize> {
        if self.header_pos < self.header_block.len() {
            let n = room.min(self.header_block.len() - self.header_pos);
            buf.extend_from_slice(&self.header_block[self.header_pos..self.header_pos + n]);
            self.header_pos += n;
            return Ok(n);
        }
        let head = self.msg.head();
        if self.head_pos < head.len() {
            let n = room.min(head.len() - self.head_pos);
            buf.extend_from_slice(&head[self.head_pos..self.head_pos + n]);
            self.head_pos += n;
            return Ok(n);
        }
        if !self.file_opened {
            self.file_opened = true;
            self.file = self.msg.reopen_tail()?;
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(0);
        };
        let start = buf.len();
        buf.resize(start + room, 0);
        let n = io::Read::read(file, &mut buf[start..])?;
        buf.truncate(start + n);
        Ok(n)
    }
}

impl Iterator for BodyChunks<'_> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let want = (PIECE as u64).min(self.left) as usize;
        if want == 0 {
            return None;
        }
        let mut buf = Vec::with_capacity(want);
        while buf.len() < want {
            let room = want - buf.len();
            match self.fill(&mut buf, room) {
                Ok(0) => {
                    let left = self.left - buf.len() as u64;
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{left} bytes missing"),
                    );
                    return self.fail(e);
                }
                Ok(_) => {}
                Err(e) => return self.fail(e),
            }
        }
        self.left -= buf.len() as u64;
        Some(buf)
    }
}

/// The reinjection socket. Once `refuse_writes` is set, every write fails, so a transaction
/// whose body could not be read in full dies before its final dot and the server discards it.
#[derive(Debug)]
struct GuardedStream {
    inner: TcpStream,
    refuse_writes: Arc<AtomicBool>,
}

impl GuardedStream {
    fn refused(&self) -> Option<io::Error> {
        self.refuse_writes
            .load(Ordering::SeqCst)
            .then(|| io::Error::new(io::ErrorKind::BrokenPipe, "transaction aborted"))
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.refused() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.refused() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for GuardedStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
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
