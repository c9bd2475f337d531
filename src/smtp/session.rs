//! One inbound SMTP or LMTP session (chosen by EHLO/HELO versus LHLO) as an explicit state
//! machine over any byte stream. Commands are parsed by smtp-proto (XFORWARD by our own module);
//! at the end of DATA the message is scanned, judged, rewritten and reinjected, and only then
//! does the client get its reply: one per message in SMTP, one per recipient in LMTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use smtp_proto::{Error as ProtoError, Request};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::message::{Envelope, Recipient, Spool};
use crate::policy::{self, Disposition};
use crate::rewrite;
use crate::smtp::codec::{Conn, DataEnd, Error as ConnError, Line};
use crate::smtp::reply::{self, Reply};
use crate::smtp::xforward;
use crate::Shared;

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

pub struct Session<S> {
    conn: Conn<S>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    local: SocketAddr,
    state: State,
    protocol: Protocol,
    helo: String,
    env: Envelope,
    errors: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub fn new(stream: S, peer: SocketAddr, local: SocketAddr, shared: Arc<Shared>) -> Self {
        let c = &shared.config;
        Session {
            conn: Conn::new(stream, c.read_timeout(), c.write_timeout()),
            shared,
            peer,
            local,
            state: State::Greeted,
            protocol: Protocol::Esmtp,
            helo: String::new(),
            env: Envelope::default(),
            errors: 0,
        }
    }

    /// Runs the session to its end. Shutdown is honoured only while waiting for a command, so
    /// a message being received, scanned or reinjected always gets its answer first.
    pub async fn run(mut self) {
        let metrics = self.shared.metrics.clone();
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
                    self.shared.metrics.tempfails.with_label_values(&["shutdown"]).inc();
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
        if self.errors >= self.shared.config.server.max_errors {
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
        if line[..verb_end].eq_ignore_ascii_case(b"XFORWARD") {
            return self.xforward(&line[verb_end..]);
        }
        let mut with_crlf = Vec::with_capacity(line.len() + 2);
        with_crlf.extend_from_slice(line);
        with_crlf.extend_from_slice(b"\r\n");
        match Request::parse(&mut with_crlf.iter()) {
            Ok(req) => self.request(req).await,
            Err(e) => {
                let r = match e {
                    ProtoError::UnknownCommand => reply::unknown_command(),
                    ProtoError::InvalidSenderAddress => {
                        Reply::new(501, "5.1.7", "Bad sender address syntax")
                    }
                    ProtoError::InvalidRecipientAddress => {
                        Reply::new(501, "5.1.3", "Bad recipient address syntax")
                    }
                    ProtoError::SyntaxError { syntax } => {
                        reply::syntax(&format!("Syntax: {syntax}"))
                    }
                    ProtoError::InvalidParameter { param } => {
                        reply::syntax(&format!("Invalid value for parameter {param}"))
                    }
                    ProtoError::UnsupportedParameter { param } => {
                        Reply::new(555, "5.5.4", format!("Unsupported parameter {param}"))
                    }
                    ProtoError::ResponseTooLong => reply::line_too_long(),
                    ProtoError::NeedsMoreData { .. } | ProtoError::InvalidResponse { .. } => {
                        reply::syntax("Syntax error")
                    }
                };
                self.error(r)
            }
        }
    }

    async fn request(&mut self, req: Request<String>) -> Result<Flow, ConnError> {
        match req {
            Request::Ehlo { host } => self.hello(host, Protocol::Esmtp),
            Request::Lhlo { host } => self.hello(host, Protocol::Lmtp),
            Request::Helo { host } => self.hello(host, Protocol::Smtp),
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
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
            self.shared.config.server.max_message_size,
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
            Err(e) => self.error(reply::syntax(&e.to_string())),
        }
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<String>) -> Result<Flow, ConnError> {
        match self.state {
            State::Greeted => {
                return self.error(reply::bad_sequence("Error: send HELO/EHLO first"))
            }
            State::Mail | State::Rcpt => {
                return self.error(reply::bad_sequence("Error: nested MAIL command"))
            }
            State::Ready => {}
        }
        if from.size as u64 > self.shared.config.server.max_message_size {
            return self.error(reply::message_too_big());
        }
        let env = &mut self.env;
        env.sender = from.address;
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

    fn rcpt(&mut self, to: smtp_proto::RcptTo<String>) -> Result<Flow, ConnError> {
        if !matches!(self.state, State::Mail | State::Rcpt) {
            return self.error(reply::bad_sequence("Error: need MAIL command"));
        }
        if self.env.recipients.len() >= self.shared.config.server.max_recipients {
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
            address: to.address,
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
        let cfg = &shared.config;
        let started = Instant::now();
        self.send(&reply::start_data()).await?;
        let mut spool = Spool::new(cfg.server.spool_threshold, &self.shared.spool_dir);
        let end = self
            .conn
            .read_data(&mut spool, cfg.server.max_message_size)
            .await?;
        let id = new_id();
        let metrics = self.shared.metrics.clone();
        metrics.in_flight.inc();
        let (replies, verdict, action) = match end {
            DataEnd::TooBig => (
                self.same_for_all(reply::message_too_big()),
                "unscanned",
                "reject",
            ),
            DataEnd::SpoolError(e) => {
                tracing::error!(%id, error = %e, "cannot spool message");
                metrics.tempfails.with_label_values(&["spool"]).inc();
                (
                    self.same_for_all(reply::no_space(&id)),
                    "unscanned",
                    "tempfail",
                )
            }
            DataEnd::Complete => self.process(spool, &id, started).await,
        };
        metrics.in_flight.dec();
        metrics.messages.with_label_values(&[verdict, action]).inc();
        metrics
            .stage_duration
            .with_label_values(&["total"])
            .observe(started.elapsed().as_secs_f64());
        // One reply per recipient in LMTP; in SMTP the single reply stands for all of them.
        for i in 0..self.env.recipients.len() {
            let r = replies.get(i).unwrap_or(&replies[0]);
            let result = match (action, r.code) {
                ("discard", _) => "discarded",
                (_, 200..=399) => "delivered",
                (_, 400..=499) => "deferred",
                _ => "rejected",
            };
            metrics.recipients.with_label_values(&[result]).inc();
        }
        for r in &replies {
            self.queue(r);
        }
        self.env = Envelope::default();
        self.state = State::Ready;
        Ok(Flow::Continue)
    }

    fn same_for_all(&self, r: Reply) -> Vec<Reply> {
        match self.protocol {
            Protocol::Lmtp => vec![r; self.env.recipients.len()],
            _ => vec![r],
        }
    }

    /// Scan, judge, rewrite, reinject; returns the replies for the client with the verdict
    /// and final action as metric labels.
    async fn process(
        &mut self,
        spool: Spool,
        id: &str,
        started: Instant,
    ) -> (Vec<Reply>, &'static str, &'static str) {
        let shared = self.shared.clone();
        let cfg = &shared.config;
        let m = &shared.metrics;
        let received = started.elapsed();
        m.stage_duration
            .with_label_values(&["receive"])
            .observe(received.as_secs_f64());
        let msg = match spool.finish() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(%id, error = %e, "cannot spool message");
                shared.metrics.tempfails.with_label_values(&["spool"]).inc();
                return (
                    self.same_for_all(reply::no_space(id)),
                    "unscanned",
                    "tempfail",
                );
            }
        };
        m.message_size.observe(msg.len() as f64);
        let scan_start = Instant::now();
        let xf = &self.env.xforward;
        let scan_env = crate::scan::ScanEnvelope {
            ip: Some(
                xf.addr
                    .clone()
                    .unwrap_or_else(|| self.peer.ip().to_string()),
            ),
            helo: Some(xf.helo.clone().unwrap_or_else(|| self.helo.clone())),
            hostname: xf.name.clone(),
            from: self.env.sender.clone(),
            rcpts: self
                .env
                .recipients
                .iter()
                .map(|r| r.address.clone())
                .collect(),
            queue_id: xf.ident.clone(),
        };
        let report = shared.scanners.scan(&msg, &scan_env, m).await;
        let scan_time = scan_start.elapsed();
        m.stage_duration
            .with_label_values(&["scan"])
            .observe(scan_time.as_secs_f64());
        let decision = policy::decide(cfg, &report, id);

        let reinject_start = Instant::now();
        let mut queue_id = None;
        let (replies, result) = match &decision.disposition {
            Disposition::Deliver => {
                let trace = rewrite::Trace {
                    helo: &self.helo,
                    peer: self.peer,
                    local: self.local,
                    protocol: self.protocol.name(),
                    id,
                };
                let block = rewrite::header_block(cfg, &decision, &trace, msg.header_section());
                let outcome = shared
                    .reinjector
                    .send(&self.env, &block, &msg, self.protocol != Protocol::Lmtp)
                    .await;
                queue_id = outcome.queue_id.clone();
                let result = outcome.overall.clone();
                if let Some(kind) = outcome.failure {
                    m.reinject_errors.with_label_values(&[kind]).inc();
                    if outcome.overall.is_transient() {
                        m.tempfails.with_label_values(&["reinject"]).inc();
                    }
                }
                m.reinject_up.set(!matches!(
                    outcome.failure,
                    Some("connect") | Some("timeout") | Some("network")
                ) as i64);
                let replies = match self.protocol {
                    Protocol::Lmtp => outcome.per_recipient,
                    _ => vec![outcome.overall],
                };
                (replies, result)
            }
            Disposition::Discard(r) | Disposition::Reject(r) | Disposition::Tempfail(r) => {
                (self.same_for_all(r.clone()), r.clone())
            }
        };
        let reinject_time = reinject_start.elapsed();
        if decision.disposition == Disposition::Deliver {
            m.stage_duration
                .with_label_values(&["reinject"])
                .observe(reinject_time.as_secs_f64());
        }
        if let Disposition::Tempfail(r) = &decision.disposition {
            m.tempfails
                .with_label_values(&[decision.tempfail_reason.unwrap_or("clamd")])
                .inc();
            tracing::debug!(%id, reply = %r, "tempfail");
        }
        let action = match &decision.disposition {
            Disposition::Discard(_) => "discard",
            Disposition::Reject(_) => "reject",
            Disposition::Tempfail(_) => "tempfail",
            Disposition::Deliver => match result.code {
                200..=399 => "pass",
                400..=499 => "tempfail",
                _ => "reject",
            },
        };

        let (score, rules) = match &decision.spam {
            Some(s) => (rewrite::score(s.score), s.rules.len()),
            None => ("-".into(), 0),
        };
        let virus = match &decision.category {
            policy::Category::Virus(names) => names.join(","),
            _ => "-".into(),
        };
        let failures: Vec<String> = [
            match &report.virus {
                crate::scan::VirusScan::Failed { reason, .. } => Some(format!("clamd: {reason}")),
                _ => None,
            },
            match &report.spam {
                crate::scan::SpamScan::Failed { reason, .. } => Some(format!("spamd: {reason}")),
                _ => None,
            },
        ]
        .into_iter()
        .flatten()
        .collect();
        let rcpts: Vec<&str> = self
            .env
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        tracing::info!(
            target: "postsift::message",
            id,
            queue_id = self.env.xforward.ident.as_deref().unwrap_or("-"),
            client = self.env.xforward.addr.as_deref().unwrap_or("-"),
            from = %format!("<{}>", self.env.sender),
            to = %rcpts.join(","),
            verdict = decision.category.label(),
            action = action_label(&decision.disposition),
            score = %score,
            rules,
            virus = %virus,
            size = msg.len(),
            receive_ms = received.as_millis() as u64,
            scan_ms = scan_time.as_millis() as u64,
            clamd_ms = report.virus_time.as_millis() as u64,
            spamd_ms = report.spam_time.as_millis() as u64,
            reinject_ms = reinject_time.as_millis() as u64,
            queued_as = queue_id.as_deref().unwrap_or("-"),
            reply = %result,
            problems = %failures.join("; "),
            "message"
        );
        (replies, decision.category.label(), action)
    }
}

fn action_label(d: &Disposition) -> &'static str {
    match d {
        Disposition::Deliver => "pass",
        Disposition::Discard(_) => "discard",
        Disposition::Reject(_) => "reject",
        Disposition::Tempfail(_) => "tempfail",
    }
}

/// A 12-character id in amavis's style, unique enough to find one message in the logs.
fn new_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::thread_rng();
    (0..12)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}
