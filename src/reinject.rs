//! Reinjection: the scanned message goes back into Postfix by SMTP (normally 127.0.0.1:10025)
//! through lettre's `AsyncSmtpConnection`, with connections kept for reuse. lettre's
//! high-level `send` knows neither XFORWARD nor the DSN parameters and wants the message in one
//! slice, so this module drives the connection command by command: a second EHLO to learn every
//! keyword the server offers (lettre keeps only a few), our own MAIL/RCPT/XFORWARD command
//! types, and `message_iter` fed from the spool so a big message is never held in memory.
//! The socket is wrapped in [`GuardedStream`], which refuses to write the final dot once the
//! body could not be read completely: a message is never sent truncated.

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
use crate::smtp::reply::Reply;
use crate::smtp::xforward::xtext_encode;

/// Reinjection's answer for one message.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// One reply per envelope recipient, in order: the server's refusal of that recipient, or
    /// the reply to the message (2xx when it was accepted).
    pub per_recipient: Vec<Reply>,
    /// The reply to the message as a whole (for SMTP clients): 2xx only if every recipient was
    /// accepted and the data was accepted.
    pub overall: Reply,
    /// The queue id the server gave (from `250 2.0.0 Ok: queued as X`), for the log.
    pub queue_id: Option<String>,
    /// A short label for metrics when the reinjection failed: "connect", "timeout",
    /// "rejected", "tempfail", "network", "spool".
    pub failure: Option<&'static str>,
}

pub struct Reinjector {
    to: String,
    helo: ClientId,
    connect_timeout: Duration,
    command_timeout: Duration,
    data_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Pooled>>,
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

/// Why one attempt failed, with the reply to give.
struct Failure {
    reply: Reply,
    label: &'static str,
    /// The failure happened on a reused connection before anything was accepted: a fresh
    /// connection may succeed (the server closed the idle one).
    retry: bool,
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
        }
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
    ) -> Outcome {
        let mut first = true;
        loop {
            let (pooled, reused) = match self.take_idle() {
                Some(p) if first => (p, true),
                _ => match self.connect().await {
                    Ok(p) => (p, false),
                    Err(f) => return failed_all(env, f),
                },
            };
            first = false;
            match self
                .transaction(pooled, env, header_block, msg, all_or_nothing)
                .await
            {
                Ok(outcome) => return outcome,
                Err(f) if f.retry && reused => {
                    tracing::debug!("reused reinjection connection failed early, reconnecting");
                    continue;
                }
                Err(f) => return failed_all(env, f),
            }
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
        let fail = |text: String, label| Failure {
            reply: Reply::new(450, "4.4.1", text),
            label,
            retry: false,
        };
        let tcp =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.to.as_str()))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return Err(fail(
                        format!("Can't connect to {}: {e}", self.to),
                        "connect",
                    ))
                }
                Err(_) => {
                    return Err(fail(
                        format!("Can't connect to {}: timed out", self.to),
                        "timeout",
                    ))
                }
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
            Ok(Err(e)) => {
                return Err(fail_from_lettre(
                    &e,
                    &format!("greeting of {}", self.to),
                    false,
                ))
            }
            Err(_) => {
                return Err(Failure {
                    reply: Reply::new(
                        450,
                        "4.4.2",
                        format!("Timed out during greeting of {}", self.to),
                    ),
                    label: "timeout",
                    retry: false,
                })
            }
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
        stage: &str,
        early: bool,
    ) -> Result<Reply, Failure> {
        match tokio::time::timeout(self.command_timeout, p.conn.command(cmd)).await {
            Ok(Ok(resp)) => Ok(reply_from_response(&resp)),
            Ok(Err(e)) if e.status().is_some() => Err(Failure {
                reply: reply_from_error(&e),
                label: "rejected",
                retry: false,
            }),
            Ok(Err(e)) => Err(fail_from_lettre(&e, stage, early)),
            Err(_) => Err(Failure {
                reply: Reply::new(
                    450,
                    "4.4.2",
                    format!("Timed out during {stage} to {}", self.to),
                ),
                label: "timeout",
                retry: false,
            }),
        }
    }

    /// Sends the envelope commands and returns each one's reply (Err for 4xx/5xx). With
    /// PIPELINING they go out in one write and the replies are read back in order (RFC 2920);
    /// DATA is not part of the group, so a refused recipient never meets a 354 we cannot undo.
    async fn envelope(
        &self,
        p: &mut Pooled,
        lines: &[String],
    ) -> Result<Vec<Result<Reply, Reply>>, Failure> {
        let mut out = Vec::with_capacity(lines.len());
        if !p.has("PIPELINING") {
            for line in lines {
                match self.command(p, Raw(line.clone()), "MAIL/RCPT", true).await {
                    Ok(r) => out.push(Ok(r)),
                    Err(f) if f.label == "rejected" => out.push(Err(f.reply)),
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
            Err(_) => {
                return Err(Failure {
                    reply: Reply::new(
                        450,
                        "4.4.2",
                        format!("Timed out during MAIL/RCPT to {}", self.to),
                    ),
                    label: "timeout",
                    retry: false,
                })
            }
        };
        for r in results {
            match r {
                Ok(resp) => out.push(Ok(reply_from_response(&resp))),
                Err(e) if e.status().is_some() => out.push(Err(reply_from_error(&e))),
                // Nothing was accepted yet: a fresh connection may do better.
                Err(e) => return Err(fail_from_lettre(&e, "MAIL/RCPT", true)),
            }
        }
        Ok(out)
    }

    async fn transaction(
        &self,
        mut p: Pooled,
        env: &Envelope,
        header_block: &[u8],
        msg: &Message,
        all_or_nothing: bool,
    ) -> Result<Outcome, Failure> {
        let xforward = env.xforward.commands(&p.xforward);
        let body_len = msg.len() - msg.header_end() as u64;
        let total = header_block.len() as u64 + body_len;
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

        for _ in &xforward {
            match replies.next().expect("one reply per command") {
                Ok(_) => {}
                // A 421 here is an idle connection the server already closed (Postfix says
                // "421 4.4.2 Error: timeout exceeded"): worth a fresh connection.
                Err(r) if r.code == 421 => return Err(stale(r)),
                // XFORWARD only informs; a refusal (no smtpd_authorized_xforward_hosts) is logged.
                Err(r) => {
                    tracing::warn!(reply = %r, "reinjection server refused XFORWARD; check smtpd_authorized_xforward_hosts")
                }
            }
        }
        match replies.next().expect("one reply per command") {
            Ok(_) => {}
            Err(r) if r.code == 421 => return Err(stale(r)),
            Err(r) => {
                let _ = self.command(&mut p, Rset, "RSET", false).await;
                self.put_idle(p);
                return Ok(failed_all(
                    env,
                    Failure {
                        reply: r,
                        label: "rejected",
                        retry: false,
                    },
                ));
            }
        }
        let rcpt_replies: Vec<Option<Reply>> = replies.map(|r| r.err()).collect();
        let refused = rcpt_replies.iter().filter(|r| r.is_some()).count();
        if refused == env.recipients.len() || (all_or_nothing && refused > 0) {
            let _ = self.command(&mut p, Rset, "RSET", false).await;
            self.put_idle(p);
            return Ok(refused_outcome(rcpt_replies));
        }
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
            return Err(Failure {
                reply: Reply::new(
                    451,
                    "4.3.0",
                    format!("Error in processing: reading the spool: {e}"),
                ),
                label: "spool",
                retry: false,
            });
        }
        let data_reply = match sent {
            Ok(Ok(resp)) => reply_from_response(&resp),
            Ok(Err(e)) if e.status().is_some() => {
                let reply = reply_from_error(&e);
                self.put_idle(p);
                return Ok(data_refused(rcpt_replies, reply));
            }
            Ok(Err(e)) => return Err(fail_from_lettre(&e, "end of data", false)),
            Err(_) => {
                return Err(Failure {
                    reply: Reply::new(
                        450,
                        "4.4.2",
                        format!("Timed out during end of data to {}", self.to),
                    ),
                    label: "timeout",
                    retry: false,
                })
            }
        };
        self.put_idle(p);
        let queue_id = data_reply
            .text
            .split_once("queued as ")
            .map(|(_, q)| q.split_whitespace().next().unwrap_or("").to_owned());
        let relayed = Reply::new(
            250,
            "2.0.0",
            format!(
                "from MTA(smtp:{}): {}",
                bracketed(&self.to),
                one_line(&data_reply)
            ),
        );
        let per_recipient = rcpt_replies
            .into_iter()
            .map(|r| r.unwrap_or_else(|| relayed.clone()))
            .collect::<Vec<_>>();
        let overall = per_recipient
            .iter()
            .find(|r| !r.is_positive())
            .cloned()
            .unwrap_or(relayed);
        Ok(Outcome {
            per_recipient,
            overall,
            queue_id,
            failure: None,
        })
    }
}

/// `127.0.0.1:10025` as Postfix writes a next hop: `[127.0.0.1]:10025`.
fn bracketed(hostport: &str) -> String {
    match hostport.rsplit_once(':') {
        Some((host, port)) => format!(
            "[{}]:{port}",
            host.trim_start_matches('[').trim_end_matches(']')
        ),
        None => format!("[{hostport}]"),
    }
}

fn one_line(r: &Reply) -> String {
    format!("{} {}", r.code, r.text.replace('\n', " "))
}

/// A 421 before anything was accepted: the (pooled) connection had been closed by the server.
fn stale(reply: Reply) -> Failure {
    Failure {
        reply,
        label: "tempfail",
        retry: true,
    }
}

fn failed_all(env: &Envelope, f: Failure) -> Outcome {
    Outcome {
        per_recipient: vec![f.reply.clone(); env.recipients.len()],
        overall: f.reply,
        queue_id: None,
        failure: Some(f.label),
    }
}

/// Some or all recipients refused and no data sent: refused ones keep their own reply, the
/// others get 4xx so the client retries them (nothing was delivered to them).
fn refused_outcome(rcpt_replies: Vec<Option<Reply>>) -> Outcome {
    let per_recipient: Vec<Reply> = rcpt_replies
        .iter()
        .map(|r| {
            r.clone().unwrap_or_else(|| {
                Reply::new(
                    450,
                    "4.5.3",
                    "Not delivered: other recipients of this message were refused; retry",
                )
            })
        })
        .collect();
    let all_perm = rcpt_replies
        .iter()
        .all(|r| r.as_ref().is_some_and(|r| r.code >= 500));
    let overall = if all_perm {
        per_recipient[0].clone()
    } else {
        let first = rcpt_replies
            .iter()
            .flatten()
            .next()
            .cloned()
            .expect("at least one refused");
        if first.is_transient() {
            first
        } else {
            Reply::new(
                450,
                "4.5.3",
                format!(
                    "Some recipients refused by the next hop ({}); retry",
                    one_line(&first)
                ),
            )
        }
    };
    Outcome {
        per_recipient,
        overall,
        queue_id: None,
        failure: Some(if all_perm { "rejected" } else { "tempfail" }),
    }
}

fn data_refused(rcpt_replies: Vec<Option<Reply>>, reply: Reply) -> Outcome {
    let per_recipient = rcpt_replies
        .into_iter()
        .map(|r| r.unwrap_or_else(|| reply.clone()))
        .collect();
    Outcome {
        per_recipient,
        failure: Some(if reply.is_transient() {
            "tempfail"
        } else {
            "rejected"
        }),
        overall: reply,
        queue_id: None,
    }
}

fn reply_from_response(resp: &lettre::transport::smtp::response::Response) -> Reply {
    let code: u16 = resp.code().to_string().parse().unwrap_or(250);
    Reply::raw(code, resp.message().collect::<Vec<_>>().join("\n"))
}

/// lettre reports 4xx/5xx replies as errors carrying the code and the joined text.
fn reply_from_error(e: &lettre::transport::smtp::Error) -> Reply {
    let code: u16 = e
        .status()
        .map_or(451, |c| c.to_string().parse().unwrap_or(451));
    let text = std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string());
    Reply::raw(code, text)
}

fn fail_from_lettre(e: &lettre::transport::smtp::Error, stage: &str, early: bool) -> Failure {
    let detail = std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string());
    Failure {
        reply: Reply::new(
            451,
            "4.4.2",
            format!("Lost connection during {stage}: {detail}"),
        ),
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
