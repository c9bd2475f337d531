//! One inbound SMTP or LMTP session (chosen by EHLO/HELO versus LHLO) as an explicit state
//! machine over any byte stream. Commands are parsed by smtp-proto (XFORWARD by our own module);
//! at the end of DATA the message is scanned, judged, rewritten and reinjected, and only then
//! does the client get its reply: one per message in SMTP, one per recipient in LMTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use smtp_proto::{Error as ProtoError, Request};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::filter::{Filter, Hop, Pipeline, Received};
use crate::message::{Envelope, Recipient, Spool};
use crate::runtime::Runtime;
use crate::smtp::address::{self, Address};
use crate::smtp::codec::{Conn, DataEnd, Error as ConnError, Line};
pub use crate::smtp::context::{Context, SessionLimits, SessionMetrics};
use crate::smtp::reply::{self, Reply};
use crate::xforward;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Connected, no HELO/EHLO/LHLO yet.
    Greeted,
    /// Between transactions.
    Ready,
    /// MAIL accepted.
    Mail,
    /// At least one RCPT accepted.
    Rcpt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Esmtp,
    Lmtp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "SMTP",
            Protocol::Esmtp => "ESMTP",
            Protocol::Lmtp => "LMTP",
        }
    }
}

/// Whether the session goes on after a command.
enum Flow {
    Continue,
    Close,
}

pub struct Session<S, P = Filter> {
    conn: Conn<S>,
    /// Shared by reference: each message's DATA takes a handle on it.
    shared: Arc<Context>,
    pipeline: P,
    peer: SocketAddr,
    local: SocketAddr,
    /// The configured `server.listen` address the session came in on (policy banks match it).
    listener: Option<SocketAddr>,
    state: State,
    protocol: Protocol,
    helo: String,
    env: Envelope,
    errors: u32,
    /// Commands since the last message that moved no mail forward.
    junk: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S, Filter> {
    /// A session whose messages go through the real pipeline ([`Filter`]).
    pub fn new(stream: S, peer: SocketAddr, local: SocketAddr, shared: Arc<Runtime>) -> Self {
        let ctx = Context::from(&*shared);
        Session::with_pipeline(stream, peer, local, ctx, Filter::new(shared))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin, P: Pipeline> Session<S, P> {
    /// Names the configured listener the session came in on, for `[[policy]] match.listener`.
    pub fn on_listener(mut self, listener: SocketAddr) -> Self {
        self.listener = Some(listener);
        self
    }

    /// A session handing its messages to `pipeline`; `ctx` gives the limits, the budget
    /// and the metrics of the protocol side.
    pub fn with_pipeline(
        stream: S,
        peer: SocketAddr,
        local: SocketAddr,
        ctx: impl Into<Context>,
        pipeline: P,
    ) -> Self {
        let shared: Arc<Context> = Arc::new(ctx.into());
        Session {
            conn: Conn::new(stream, shared.limits.conn),
            shared,
            pipeline,
            peer,
            local,
            listener: None,
            state: State::Greeted,
            protocol: Protocol::Esmtp,
            helo: String::new(),
            env: Envelope::default(),
            errors: 0,
            junk: 0,
        }
    }

    /// Runs the session to its end. Shutdown is honoured only while waiting for a command, so
    /// a message being received, scanned or reinjected always gets its answer first.
    pub async fn run(mut self) {
        let metrics = self.shared.metrics.server.clone();
        metrics.sessions_active.inc();
        self.serve().await;
        metrics.sessions_active.dec();
        let protocol = match (self.state, self.protocol) {
            (State::Greeted, _) => "none",
            (_, Protocol::Smtp) => "smtp",
            (_, Protocol::Esmtp) => "esmtp",
            (_, Protocol::Lmtp) => "lmtp",
        };
        metrics.sessions.with_label_values(&[protocol]).inc();
    }

    async fn serve(&mut self) {
        let greeting = Reply::raw(
            220,
            format!("{} ESMTP postsift (LMTP too)", self.shared.hostname),
        );
        if self.send(&greeting).await.is_err() {
            return;
        }
        loop {
            let shutdown = self.shared.shutdown.clone();
            let line = tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !self.conn.has_buffered_input() => {
                    self.shared.metrics.filter.tempfails.with_label_values(&["shutdown"]).inc();
                    let _ = self.send(&reply::shutting_down()).await;
                    return;
                }
                line = self.conn.read_line() => line,
            };
            let flow = match line {
                Ok(Line::TooLong) => self.error(reply::line_too_long()),
                Ok(Line::Command(l)) => self.command(&l).await,
                Err(ConnError::Timeout) => {
                    let _ = self.send(&reply::timeout()).await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "session ended");
                    return;
                }
            };
            match flow {
                Ok(Flow::Continue) => {}
                // A DATA body that missed its deadline: the client is told, the message dropped.
                Err(ConnError::Timeout) => {
                    let _ = self.send(&reply::timeout()).await;
                    return;
                }
                Ok(Flow::Close) | Err(_) => {
                    let _ = self.conn.flush().await;
                    return;
                }
            }
        }
    }

    /// Queues a reply, counting it by class.
    fn queue(&mut self, r: &Reply) {
        self.shared
            .metrics
            .server
            .replies
            .with_label_values(&[r.class()])
            .inc();
        self.conn.queue(r);
    }

    /// Sends a reply now.
    async fn send(&mut self, r: &Reply) -> Result<(), ConnError> {
        self.queue(r);
        self.conn.flush().await
    }

    /// Queues an error reply and counts it; too many errors end the session.
    fn error(&mut self, r: Reply) -> Result<Flow, ConnError> {
        self.errors += 1;
        self.queue(&r);
        if self.errors >= self.shared.limits.max_errors {
            self.queue(&reply::too_many_errors());
            return Ok(Flow::Close);
        }
        Ok(Flow::Continue)
    }

    fn ok(&mut self, r: Reply) -> Result<Flow, ConnError> {
        self.queue(&r);
        Ok(Flow::Continue)
    }

    async fn command(&mut self, line: &[u8]) -> Result<Flow, ConnError> {
        if line.contains(&0) {
            return self.error(reply::syntax("Error: NUL character in command"));
        }
        let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
        let verb = &line[..verb_end];
        if verb.eq_ignore_ascii_case(b"XFORWARD") {
            return self.xforward(&line[verb_end..]);
        }
        if verb.eq_ignore_ascii_case(b"MAIL") {
            return self.mail_command(line);
        }
        if verb.eq_ignore_ascii_case(b"RCPT") {
            return self.rcpt_command(line);
        }
        match parse_request(line) {
            Ok(req) => self.request(req).await,
            Err(r) => self.error(r),
        }
    }

    /// Counts a command that moves no mail forward; too many between two messages end the
    /// session, so a client cannot hold its slot with NOOPs (each within its deadline).
    fn junk(&mut self) -> bool {
        self.junk += 1;
        if self.junk > self.shared.limits.max_junk_commands {
            self.queue(&reply::too_many_junk_commands());
            return true;
        }
        false
    }

    async fn request(&mut self, req: Request<String>) -> Result<Flow, ConnError> {
        let junk = matches!(
            req,
            Request::Noop { .. }
                | Request::Rset
                | Request::Help { .. }
                | Request::Vrfy { .. }
                | Request::Expn { .. }
                | Request::Ehlo { .. }
                | Request::Helo { .. }
                | Request::Lhlo { .. }
        );
        if junk && self.junk() {
            return Ok(Flow::Close);
        }
        match req {
            Request::Ehlo { host } => self.hello(host, Protocol::Esmtp),
            Request::Lhlo { host } => self.hello(host, Protocol::Lmtp),
            Request::Helo { host } => self.hello(host, Protocol::Smtp),
            // Parsed by mail_command / rcpt_command before smtp-proto sees the line.
            Request::Mail { .. } | Request::Rcpt { .. } => {
                self.error(reply::syntax("Syntax error"))
            }
            Request::Data => self.data().await,
            Request::Rset => {
                self.reset();
                self.ok(reply::ok())
            }
            Request::Noop { .. } => self.ok(reply::ok()),
            Request::Quit => {
                self.queue(&reply::bye());
                Ok(Flow::Close)
            }
            Request::Help { .. } => self.ok(Reply::new(
                214,
                "2.0.0",
                "See RFC 5321 and Postfix's FILTER_README",
            )),
            Request::Vrfy { .. } => {
                self.error(Reply::new(502, "5.5.1", "VRFY command is disabled"))
            }
            Request::Expn { .. } => {
                self.error(Reply::new(502, "5.5.1", "EXPN command is disabled"))
            }
            Request::StartTls => self.error(reply::not_implemented("STARTTLS")),
            Request::Auth { .. } => self.error(reply::not_implemented("AUTH")),
            Request::Bdat { .. } => self.error(reply::not_implemented("BDAT")),
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.error(reply::unknown_command())
            }
        }
    }

    fn reset(&mut self) {
        self.env = Envelope::default();
        if self.state != State::Greeted {
            self.state = State::Ready;
        }
    }

    fn hello(&mut self, host: String, protocol: Protocol) -> Result<Flow, ConnError> {
        self.reset();
        self.state = State::Ready;
        self.protocol = protocol;
        self.helo = host;
        let name = &self.shared.hostname;
        if protocol == Protocol::Smtp {
            return self.ok(Reply::raw(250, name.clone()));
        }
        let text = format!(
            "{name}\nPIPELINING\nSIZE {}\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\nDSN\n{}",
            self.shared.limits.max_message_size,
            xforward::EHLO_LINE
        );
        self.ok(Reply::raw(250, text))
    }

    fn xforward(&mut self, args: &[u8]) -> Result<Flow, ConnError> {
        match self.state {
            State::Greeted => {
                return self.error(reply::bad_sequence("Error: send HELO/EHLO first"))
            }
            State::Mail | State::Rcpt => {
                return self.error(reply::bad_sequence("Error: MAIL transaction in progress"))
            }
            State::Ready => {}
        }
        let Ok(args) = std::str::from_utf8(args) else {
            return self.error(reply::syntax("Bad XFORWARD attribute value"));
        };
        match self.env.xforward.apply(args) {
            Ok(()) => self.ok(reply::ok()),
            Err(e) => self.error(reply::syntax(&crate::escape::text(&e.to_string()))),
        }
    }

    /// MAIL FROM: the path is parsed by [`address`] and kept as sent; smtp-proto parses only
    /// the parameters, after `SIZE=` was checked here (its parser saturates on overflow).
    fn mail_command(&mut self, line: &[u8]) -> Result<Flow, ConnError> {
        match self.state {
            State::Greeted => {
                return self.error(reply::bad_sequence("Error: send HELO/EHLO first"))
            }
            State::Mail | State::Rcpt => {
                return self.error(reply::bad_sequence("Error: nested MAIL command"))
            }
            State::Ready => {}
        }
        let (addr, params) = match self.path(line, "MAIL FROM:", true, true) {
            Ok(x) => x,
            Err(r) => return self.error(r),
        };
        let utf8 = params
            .split(' ')
            .any(|p| p.eq_ignore_ascii_case("SMTPUTF8"));
        if !utf8 && !addr.as_str().is_ascii() {
            return self.error(reply::needs_smtputf8());
        }
        let max = self.shared.limits.max_message_size;
        for p in params.split(' ') {
            if let Some((k, v)) = p.split_once('=') {
                // Any number of digits: a value that does not fit in u64 is over every limit.
                if k.eq_ignore_ascii_case("SIZE")
                    && !v.is_empty()
                    && v.bytes().all(|b| b.is_ascii_digit())
                    && v.parse::<u64>().map_or(true, |n| n > max)
                {
                    return self.error(reply::message_too_big());
                }
            }
        }
        match parse_request(format!("MAIL FROM:<>{params}").as_bytes()) {
            Ok(Request::Mail { from }) => self.mail(from, addr),
            Ok(_) => self.error(reply::syntax("Syntax: MAIL FROM:<address>")),
            Err(r) => self.error(r),
        }
    }

    /// RCPT TO: as [`Session::mail_command`].
    fn rcpt_command(&mut self, line: &[u8]) -> Result<Flow, ConnError> {
        if !matches!(self.state, State::Mail | State::Rcpt) {
            return self.error(reply::bad_sequence("Error: need MAIL command"));
        }
        let utf8 = self.env.smtputf8;
        let (addr, params) = match self.path(line, "RCPT TO:", false, utf8) {
            Ok(x) => x,
            Err(r) => return self.error(r),
        };
        match parse_request(format!("RCPT TO:<a@b>{params}").as_bytes()) {
            Ok(Request::Rcpt { to }) => self.rcpt(to, addr),
            Ok(_) => self.error(reply::syntax("Syntax: RCPT TO:<address>")),
            Err(r) => self.error(r),
        }
    }

    /// Splits `MAIL FROM:<path> params` into the validated path and the parameter text. An
    /// address is refused rather than altered: not UTF-8, a control character (a bare CR),
    /// bad syntax, or non-ASCII without SMTPUTF8.
    fn path<'l>(
        &self,
        line: &'l [u8],
        keyword: &str,
        sender: bool,
        utf8: bool,
    ) -> Result<(Address, &'l str), Reply> {
        let bad = || {
            if sender {
                Reply::new(501, "5.1.7", "Bad sender address syntax")
            } else {
                Reply::new(501, "5.1.3", "Bad recipient address syntax")
            }
        };
        let text = std::str::from_utf8(line).map_err(|_| bad())?;
        if text.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(bad());
        }
        let after = text
            .get(..keyword.len())
            .filter(|k| k.eq_ignore_ascii_case(keyword))
            .map(|_| &text[keyword.len()..])
            .ok_or_else(|| reply::syntax(&format!("Syntax: {keyword}<address>")))?;
        match address::parse_path(after, sender, utf8) {
            Ok(x) => Ok(x),
            Err(address::Error::NeedsUtf8) => Err(reply::needs_smtputf8()),
            Err(_) => Err(bad()),
        }
    }

    fn mail(
        &mut self,
        from: smtp_proto::MailFrom<String>,
        addr: Address,
    ) -> Result<Flow, ConnError> {
        let env = &mut self.env;
        env.sender = addr.as_str().to_owned();
        env.size = (from.size > 0).then_some(from.size as u64);
        env.body = if from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0 {
            Some("8BITMIME")
        } else if from.flags & smtp_proto::MAIL_BODY_7BIT != 0 {
            Some("7BIT")
        } else {
            None
        };
        env.smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        env.ret = if from.flags & smtp_proto::MAIL_RET_FULL != 0 {
            Some("FULL")
        } else if from.flags & smtp_proto::MAIL_RET_HDRS != 0 {
            Some("HDRS")
        } else {
            None
        };
        env.envid = from.env_id;
        self.state = State::Mail;
        self.ok(reply::sender_ok())
    }

    fn rcpt(&mut self, to: smtp_proto::RcptTo<String>, addr: Address) -> Result<Flow, ConnError> {
        if self.env.recipients.len() >= self.shared.limits.max_recipients {
            if self.junk() {
                return Ok(Flow::Close);
            }
            return self.ok(reply::too_many_recipients());
        }
        let f = to.flags;
        let notify = if f & smtp_proto::RCPT_NOTIFY_NEVER != 0 {
            Some("NEVER".to_owned())
        } else {
            let parts: Vec<&str> = [
                (smtp_proto::RCPT_NOTIFY_SUCCESS, "SUCCESS"),
                (smtp_proto::RCPT_NOTIFY_FAILURE, "FAILURE"),
                (smtp_proto::RCPT_NOTIFY_DELAY, "DELAY"),
            ]
            .iter()
            .filter(|(bit, _)| f & bit != 0)
            .map(|(_, s)| *s)
            .collect();
            (!parts.is_empty()).then(|| parts.join(","))
        };
        self.env.recipients.push(Recipient {
            address: addr.as_str().to_owned(),
            notify,
            orcpt: to.orcpt,
        });
        self.state = State::Rcpt;
        self.ok(reply::recipient_ok())
    }

    async fn data(&mut self) -> Result<Flow, ConnError> {
        match self.state {
            State::Rcpt => {}
            State::Greeted => {
                return self.error(reply::bad_sequence("Error: send HELO/EHLO first"))
            }
            State::Ready => return self.error(reply::bad_sequence("Error: need MAIL command")),
            State::Mail => return self.error(reply::bad_sequence("Error: need RCPT command")),
        }
        let shared = self.shared.clone();
        let started = Instant::now();
        let Some(mut spool) = Spool::reserve(
            &shared.budget,
            shared.limits.spool_threshold,
            shared.limits.max_header_size,
            &shared.spool_dir,
        ) else {
            // Every message in flight together holds server.max_memory: refuse this one
            // before its body arrives rather than grow.
            tracing::warn!(
                memory = shared.budget.memory(),
                "server.max_memory reached: DATA refused with 452"
            );
            shared
                .metrics
                .filter
                .tempfails
                .with_label_values(&["resources"])
                .inc();
            return self.ok(reply::no_space("-"));
        };
        self.record_budget();
        self.send(&reply::start_data()).await?;
        let end = self
            .conn
            .read_data(&mut spool, shared.limits.max_message_size)
            .await?;
        let id = new_id();
        let metrics = self.shared.metrics.filter.clone();
        metrics.in_flight.inc();
        let lmtp = self.protocol == Protocol::Lmtp;
        let n = self.env.recipients.len();
        let unscanned = |r: Reply, action: &'static str| (vec![r], "unscanned", action, None);
        let (replies, verdict, action, processed) = match end {
            DataEnd::TooBig => unscanned(reply::message_too_big(), "reject"),
            DataEnd::SpoolError(e) => {
                tracing::error!(%id, error = %e, "cannot spool message");
                let reason = match e.kind() {
                    std::io::ErrorKind::OutOfMemory => "resources",
                    _ => "spool",
                };
                metrics.tempfails.with_label_values(&[reason]).inc();
                unscanned(reply::no_space(&id), "tempfail")
            }
            DataEnd::Complete => match spool.finish() {
                Err(e) => {
                    tracing::error!(%id, error = %e, "cannot spool message");
                    metrics.tempfails.with_label_values(&["spool"]).inc();
                    unscanned(reply::no_space(&id), "tempfail")
                }
                Ok(msg) => {
                    let received = Received {
                        id: id.clone(),
                        env: std::mem::take(&mut self.env),
                        msg,
                        hop: Hop {
                            helo: self.helo.clone(),
                            peer: self.peer,
                            local: self.local,
                            listener: self.listener,
                            protocol: self.protocol.name(),
                        },
                        started,
                        per_recipient: lmtp,
                    };
                    // The connection is not watched while the message is processed: an end
                    // of input then may be a client that only half-closed after its final dot
                    // and still waits for the reply, and cutting its walk short would let a
                    // sender pass the banned-file rules unwalked. The walk stops at
                    // parts.max_walk_time, and when the session itself ends (shutdown).
                    let p = self.pipeline.process(received).await;
                    let replies = reply::for_outcome(&id, &p.outcome, lmtp, n);
                    (replies, p.verdict, p.outcome.action(), Some(p))
                }
            },
        };
        metrics.in_flight.dec();
        self.record_budget();
        // Every message this session takes came by the after-queue hop.
        let frontend = "content_filter";
        metrics
            .messages
            .with_label_values(&[verdict, action, frontend])
            .inc();
        metrics
            .stage_duration
            .with_label_values(&["total"])
            .observe(started.elapsed().as_secs_f64());
        for i in 0..n {
            let result = match &processed {
                Some(p) => p.outcome.recipient_result(i),
                None => match replies[0].code {
                    400..=499 => "deferred",
                    _ => "rejected",
                },
            };
            metrics
                .recipients
                .with_label_values(&[result, frontend])
                .inc();
        }
        if let Some(p) = &processed {
            p.log(&|i| replies.get(i).unwrap_or(&replies[0]).to_string());
        }
        // One reply per recipient in LMTP; in SMTP the single reply stands for all of them.
        for i in 0..if lmtp { n } else { 1 } {
            let r = replies.get(i).unwrap_or(&replies[0]).clone();
            self.queue(&r);
        }
        self.env = Envelope::default();
        self.state = State::Ready;
        self.junk = 0;
        Ok(Flow::Continue)
    }

    /// Puts the budget's use into the gauges (at each message's start and end).
    fn record_budget(&self) {
        let (m, b) = (&self.shared.metrics.server, &self.shared.budget);
        m.spool_memory.set(b.memory() as i64);
        m.spool_files.set(b.files() as i64);
    }
}

/// A 12-character id in amavis's style, unique enough to find one message in the logs.
pub(crate) fn new_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::thread_rng();
    (0..12)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Parses one command line (without its line end) with smtp-proto; an error comes back as the
/// reply to give.
fn parse_request(line: &[u8]) -> Result<Request<String>, Reply> {
    let mut with_crlf = Vec::with_capacity(line.len() + 2);
    with_crlf.extend_from_slice(line);
    with_crlf.extend_from_slice(b"\r\n");
    Request::parse(&mut with_crlf.iter()).map_err(|e| match e {
        ProtoError::UnknownCommand => reply::unknown_command(),
        ProtoError::InvalidSenderAddress => Reply::new(501, "5.1.7", "Bad sender address syntax"),
        ProtoError::InvalidRecipientAddress => {
            Reply::new(501, "5.1.3", "Bad recipient address syntax")
        }
        ProtoError::SyntaxError { syntax } => {
            reply::syntax(&format!("Syntax: {}", crate::escape::text(syntax)))
        }
        ProtoError::InvalidParameter { param } => reply::syntax(&format!(
            "Invalid value for parameter {}",
            crate::escape::text(param)
        )),
        ProtoError::UnsupportedParameter { param } => Reply::new(
            555,
            "5.5.4",
            format!("Unsupported parameter {}", crate::escape::text(&param)),
        ),
        ProtoError::ResponseTooLong => reply::line_too_long(),
        ProtoError::NeedsMoreData { .. } | ProtoError::InvalidResponse { .. } => {
            reply::syntax("Syntax error")
        }
    })
}

#[cfg(test)]
mod tests {
    //! The session alone, over an in-memory stream, against a stand-in pipeline: no sockets,
    //! no peers.
    use super::*;
    use crate::filter::{Outcome, Processed};
    use crate::policy::{Category, Tempfail};
    use crate::reinject::{Delivery, Fault, RcptResult, Upstream};
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;

    /// Sender, recipients and message bytes of each message handed over.
    type Seen = Arc<Mutex<Vec<(String, Vec<String>, Vec<u8>)>>>;

    /// Records what it was given and answers with a fixed outcome.
    #[derive(Clone)]
    struct StandIn {
        outcome: Outcome,
        seen: Seen,
    }

    impl StandIn {
        fn new(outcome: Outcome) -> StandIn {
            StandIn {
                outcome,
                seen: Arc::default(),
            }
        }
    }

    impl Pipeline for StandIn {
        async fn process(&self, r: Received) -> Processed {
            let mut body = Vec::new();
            r.msg
                .for_each_chunk(0, u64::MAX, |c| {
                    body.extend_from_slice(c);
                    Ok(())
                })
                .unwrap();
            let rcpts = r.env.recipients.iter().map(|x| x.address.clone()).collect();
            self.seen
                .lock()
                .unwrap()
                .push((r.env.sender.clone(), rcpts, body));
            Processed::new(self.outcome.clone(), "clean")
        }
    }

    fn delivery(rcpts: Vec<RcptResult>) -> Outcome {
        Outcome::Delivered(Delivery {
            rcpts,
            accepted: Some(Upstream {
                code: 250,
                text: "2.0.0 Ok: queued as Q1".into(),
            }),
            to: "127.0.0.1:10025".into(),
            queue_id: Some("Q1".into()),
            failure: None,
        })
    }

    fn shared(extra: &str) -> Arc<Runtime> {
        let toml = format!(
            "[server]\nhostname = \"filter.test\"\nmax_errors = 3\n{extra}\n[clamd]\nendpoints = []\n[spamd]\nendpoints = []\n[metrics]\nlisten = \"\"\n"
        );
        let config = crate::config::Config::parse(&toml, std::path::Path::new("t.toml")).unwrap();
        Arc::new(Runtime::new(config, CancellationToken::new()).expect("the runtime"))
    }

    /// Sends `input` in one write, then reads everything the session answers until it closes.
    async fn converse(shared: Arc<Runtime>, p: StandIn, input: &[u8]) -> String {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let peer = "127.0.0.1:40000".parse().unwrap();
        let local = "127.0.0.1:10024".parse().unwrap();
        let task = tokio::spawn(Session::with_pipeline(server, peer, local, shared, p).run());
        client.write_all(input).await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap();
        String::from_utf8(out).unwrap()
    }

    fn codes(out: &str) -> Vec<&str> {
        out.split("\r\n")
            .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
            .map(|l| &l[..3])
            .collect()
    }

    #[tokio::test]
    async fn pipelined_transaction_reaches_the_pipeline_once() {
        let p = StandIn::new(delivery(vec![RcptResult::Accepted, RcptResult::Accepted]));
        let out = converse(
            shared(""),
            p.clone(),
            b"EHLO t\r\nMAIL FROM:<\"a b\"@x.org>\r\nRCPT TO:<c@y.com>\r\nRCPT TO:<d@y.com>\r\nDATA\r\nSubject: s\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
        )
        .await;
        assert_eq!(
            codes(&out),
            ["220", "250", "250", "250", "250", "354", "250", "221"],
            "{out}"
        );
        assert!(
            out.contains(
                "250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok: queued as Q1\r\n"
            ),
            "{out}"
        );
        let seen = p.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, "\"a b\"@x.org");
        assert_eq!(seen[0].1, ["c@y.com", "d@y.com"]);
        assert_eq!(seen[0].2, b"Subject: s\r\n\r\n.dot\r\n");
    }

    #[tokio::test]
    async fn lmtp_answers_each_recipient_and_smtp_once() {
        let mixed = || {
            delivery(vec![
                RcptResult::Accepted,
                RcptResult::Refused(Upstream {
                    code: 550,
                    text: "5.1.1 <d@y.com>: unknown".into(),
                }),
                RcptResult::Failed(Fault::Timeout {
                    to: "127.0.0.1:10025".into(),
                    stage: "end of data",
                }),
            ])
        };
        let script = |hello: &str| {
            format!("{hello} t\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<c@y.com>\r\nRCPT TO:<d@y.com>\r\nRCPT TO:<e@y.com>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n")
        };
        let out = converse(shared(""), StandIn::new(mixed()), script("LHLO").as_bytes()).await;
        assert_eq!(
            codes(&out),
            ["220", "250", "250", "250", "250", "250", "354", "250", "550", "450", "221"],
            "{out}"
        );
        assert!(out.contains("550 5.1.1 <d@y.com>: unknown\r\n"), "{out}");
        assert!(
            out.contains("450 4.4.2 Timed out during end of data to 127.0.0.1:10025\r\n"),
            "{out}"
        );
        // SMTP: one reply; a permanent refusal among others becomes a retry for all.
        let out = converse(shared(""), StandIn::new(mixed()), script("EHLO").as_bytes()).await;
        assert_eq!(
            codes(&out),
            ["220", "250", "250", "250", "250", "250", "354", "450", "221"],
            "{out}"
        );
        assert!(out.contains("450 4.5.3 Some recipients refused by the next hop (550 5.1.1 <d@y.com>: unknown); retry"), "{out}");
    }

    #[tokio::test]
    async fn policy_outcomes_become_amavis_replies() {
        let cases = [
            (
                Outcome::Discarded(Category::Virus(vec!["Eicar-Test-Signature".into()])),
                "250 2.7.0 Ok, discarded, id=",
                " - INFECTED: Eicar-Test-Signature",
            ),
            (
                Outcome::Rejected(Category::Spam),
                "554 5.7.0 Reject, id=",
                " - spam",
            ),
            (
                Outcome::Tempfailed(Tempfail::VirusScan("clamd down".into())),
                "451 4.5.0 Error in processing, id=",
                ", virus_scan FAILED: clamd down",
            ),
            (
                Outcome::HeaderTooBig,
                "552 5.3.4 Message header section exceeds fixed limit",
                "",
            ),
            (
                Outcome::Quarantined(Category::Banned {
                    name: "a.pdf.exe".into(),
                    kind: "exe-ms".into(),
                }),
                "250 2.7.0 Ok, quarantined, id=",
                " - BANNED: a.pdf.exe",
            ),
            (
                Outcome::Tempfailed(Tempfail::Quarantine("no space\nleft".into())),
                "451 4.3.0 Error in processing, id=",
                ", quarantine FAILED: no space\\x0aleft",
            ),
        ];
        for (outcome, start, end) in cases {
            let out = converse(
                shared(""),
                StandIn::new(outcome),
                b"LHLO t\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<c@y.com>\r\nRCPT TO:<d@y.com>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n",
            )
            .await;
            let lines: Vec<&str> = out.split("\r\n").filter(|l| l.starts_with(start)).collect();
            assert_eq!(lines.len(), 2, "one per recipient: {out}");
            for l in lines {
                assert!(l.ends_with(end), "{l}");
            }
        }
    }

    #[tokio::test]
    async fn errors_are_answered_and_counted_to_a_close() {
        let p = StandIn::new(delivery(vec![RcptResult::Accepted]));
        let out = converse(
            shared(""),
            p.clone(),
            b"MAIL FROM:<a@x.org>\r\nEHLO t\r\nDATA\r\nRCPT TO:<\"unterminated@y.com>\r\nNOOP\r\n",
        )
        .await;
        // 503 (no EHLO), 250, 503 (no MAIL), 503 (no MAIL: sequence is checked first) -> 3rd
        // error closes with 421.
        assert_eq!(
            codes(&out),
            ["220", "503", "250", "503", "503", "421"],
            "{out}"
        );
        assert!(p.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn shutdown_closes_an_idle_session_with_421() {
        let shared = shared("");
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let p = StandIn::new(delivery(vec![]));
        let task = tokio::spawn(
            Session::with_pipeline(
                server,
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
                shared.clone(),
                p,
            )
            .run(),
        );
        let mut greeting = [0u8; 5];
        client.read_exact(&mut greeting).await.unwrap();
        shared.shutdown.cancel();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.ends_with("421 4.3.2 Service shutting down, closing channel\r\n"),
            "{out}"
        );
    }
}
