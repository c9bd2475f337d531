//! What the pipeline is given: the message as the session received it, with the hop it came
//! over.

use std::net::SocketAddr;
use std::time::Instant;

use crate::message::{Envelope, Message};

/// The client side of the hop into postsift, for the `Received:` line and the scanners.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The HELO/EHLO/LHLO name the client (Postfix) gave.
    pub helo: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The configured `server.listen` address it came in on, if known.
    pub listener: Option<SocketAddr>,
    /// "ESMTP", "SMTP" or "LMTP"; "MILTER" for the before-queue front end.
    pub protocol: &'static str,
}

impl Hop {
    /// The front end the message came through (the log line's `frontend`): `milter`
    /// (before queue) or `content_filter` (after queue).
    pub fn frontend(&self) -> &'static str {
        match self.protocol {
            "MILTER" => "milter",
            _ => "content_filter",
        }
    }
}

/// A message as the session received it.
pub struct Received {
    /// postsift's id for the message (logs, replies).
    pub id: String,
    pub env: Envelope,
    pub msg: Message,
    pub hop: Hop,
    /// When DATA began.
    pub started: Instant,
    /// The client takes one reply per recipient (LMTP); otherwise one per message, and the
    /// message goes on only if every recipient can take it.
    pub per_recipient: bool,
}
