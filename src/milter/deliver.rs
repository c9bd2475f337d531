//! The milter's [`Deliver`]: nothing is sent anywhere. Each accepted copy's header block is
//! kept for the header edits, and a quarantined group is stored in postsift's quarantine (or,
//! with `milter.hold`, left to Postfix's hold queue). Postfix then delivers the message itself
//! to the recipients left after the milter's answer.

use std::sync::Mutex;

use crate::filter::{Copy, Deliver};
use crate::message::{Envelope, Message};
use crate::quarantine::Meta;
use crate::reinject::{Delivery, RcptResult, Upstream};
use crate::runtime::Runtime;

/// What the milter answers with, in place of a reinjection.
pub struct MilterOut<'a> {
    shared: &'a Runtime,
    hold: bool,
    /// Each delivered copy: its group and its header block.
    copies: Mutex<Vec<(usize, Vec<u8>)>>,
    /// A quarantined group was left to Postfix's hold queue.
    held: Mutex<bool>,
}

/// The reply recorded for a copy the milter lets Postfix keep.
pub const ACCEPTED: &str = "2.0.0 Ok: accepted before queue";

impl<'a> MilterOut<'a> {
    pub fn new(shared: &'a Runtime, hold: bool) -> MilterOut<'a> {
        MilterOut {
            shared,
            hold,
            copies: Mutex::new(Vec::new()),
            held: Mutex::new(false),
        }
    }

    /// The header block of the first delivered group's copy (the lowest group index: the
    /// group of the first recipient in RCPT order that is delivered).
    pub fn first_header(&self) -> Option<(usize, Vec<u8>)> {
        let c = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        c.iter().min_by_key(|(g, _)| *g).cloned()
    }

    /// Whether a quarantine went to Postfix's hold queue.
    pub fn held(&self) -> bool {
        *self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Deliver for MilterOut<'_> {
    async fn deliver(&self, _msg: &Message, copies: &[Copy<'_>], _: bool) -> Vec<Delivery> {
        let mut kept = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        copies
            .iter()
            .map(|c| {
                kept.push((c.group, c.header.to_vec()));
                Delivery {
                    rcpts: vec![RcptResult::Accepted; c.env.recipients.len()],
                    accepted: Some(Upstream {
                        code: 250,
                        text: ACCEPTED.into(),
                    }),
                    to: "milter".into(),
                    queue_id: None,
                    failure: None,
                }
            })
            .collect()
    }

    fn withheld(&self, env: &Envelope) -> Delivery {
        Delivery::withheld(env.recipients.len(), "milter".into())
    }

    async fn quarantine(&self, meta: Meta, msg: &Message) -> Result<(), String> {
        if self.hold {
            *self.held.lock().unwrap_or_else(|e| e.into_inner()) = true;
            return Ok(());
        }
        let Some(q) = &self.shared.quarantine else {
            return Err("the quarantine is not open (restart postsift after enabling it)".into());
        };
        crate::quarantine::store_message(q.clone(), meta, msg)
            .await
            .map_err(|e| e.to_string())
    }
}
