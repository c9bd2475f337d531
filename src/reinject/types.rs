//! What reinjection answers, as typed values: the next hop's own reply, a fault on postsift's
//! side, and one result per recipient. The SMTP side words replies from them (`smtp::reply`).

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
    /// Nothing sent to `n` recipients: another part of the message failed first and the
    /// client takes one reply for all. `to` is the next hop the delivery would have gone to.
    pub fn withheld(n: usize, to: String) -> Delivery {
        Delivery {
            rcpts: vec![RcptResult::Withheld; n],
            accepted: None,
            to,
            queue_id: None,
            failure: None,
        }
    }

    /// True when every recipient was accepted.
    pub fn all_accepted(&self) -> bool {
        self.rcpts.iter().all(|r| *r == RcptResult::Accepted)
    }
}
