//! Hybrid mode: the milter's scan kept for the after-queue hop. With both front ends in one
//! postsift, Postfix's smtpd hands each message to the milter before it queues it, and its
//! content_filter hands the queued copy to the hop; the hop takes the milter's scan (clamd, the
//! spam engine, the MIME walk and banned rules, mail authentication) by Postfix's queue id
//! (milter macro `i` at end of message, `XFORWARD IDENT` on the hop) instead of scanning again.
//!
//! What is matched: an entry is taken once (a second delivery of the same queue id scans), and
//! used only when the message body (everything after the header section) has the SHA-256
//! digest the milter saw and the hop's recipient groups need the same checks (scanners, banned
//! rule sets, the findings that make the spam check needless). The header section is not
//! compared: Postfix adds its Received line to the queued copy, and the milter's own edits
//! (X-Spam-*, X-Virus-Scanned, Authentication-Results on top, forged ones removed) change it;
//! the checks saw the header section the client sent, as the milter's reply did. What the hop
//! does again is the cheap, header- and recipient-dependent part: the groups (policy banks),
//! each group's decision, the header rewrite (it removes the milter's headers as its own and
//! writes them anew from the same report, leaves a subject tag that is already there, and
//! replaces a DKIM signature of postsift's own keys with its own) and delivery.
//!
//! The map is bounded (`milter.reuse_entries`, oldest out first), an entry expires after
//! `milter.reuse_ttl`, and it outlives reloads but not a restart: with no entry the hop scans.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::message::Message;
use crate::scan::{banned::Banned, Needs, ScanReport};

/// What a scan found, as kept: the report and what each bank's own banned rules banned (the
/// pipeline's `judge::Scanned` without its groups).
#[derive(Debug, Clone)]
pub struct Kept {
    pub report: ScanReport,
    pub banned_by: Vec<Option<Banned>>,
}

/// SHA-256 of a message's body.
pub type Digest = [u8; 32];

/// One kept scan.
struct Entry {
    seq: u64,
    at: Instant,
    body: Digest,
    needs: Needs,
    scanned: Kept,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// Queue ids in the order kept, with the entry's sequence number (a stale pair, of an
    /// entry taken or replaced since, is skipped).
    order: VecDeque<(String, u64)>,
    seq: u64,
}

/// Why the hop scanned after all (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No scan kept for the queue id (never kept, expired, evicted, taken, or a restart).
    None,
    /// The body differs from the one the milter scanned.
    Body,
    /// The hop's recipients need other checks than the milter's did.
    Checks,
}

impl Miss {
    pub fn label(self) -> &'static str {
        match self {
            Miss::None => "none",
            Miss::Body => "body",
            Miss::Checks => "checks",
        }
    }
}

/// The kept scans, by Postfix queue id.
#[derive(Default)]
pub struct Reports {
    inner: Mutex<Inner>,
}

impl Reports {
    pub fn new() -> Reports {
        Reports::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Scans kept now (expired ones included until the next [`Reports::keep`]).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps `scanned` for queue id `id`: at most `max` entries (the oldest go first), those
    /// older than `ttl` dropped.
    pub fn keep(
        &self,
        id: &str,
        body: Digest,
        needs: Needs,
        scanned: Kept,
        max: usize,
        ttl: Duration,
    ) {
        if max == 0 {
            return;
        }
        let mut g = self.lock();
        let inner = &mut *g;
        while let Some((k, seq)) = inner.order.front() {
            let live = inner.map.get(k).filter(|e| e.seq == *seq);
            match live {
                Some(e) if inner.map.len() < max && e.at.elapsed() <= ttl => break,
                Some(_) => {
                    inner.map.remove(k);
                }
                None => {}
            }
            inner.order.pop_front();
        }
        inner.seq += 1;
        let seq = inner.seq;
        inner.order.push_back((id.to_string(), seq));
        inner.map.insert(
            id.to_string(),
            Entry {
                seq,
                at: Instant::now(),
                body,
                needs,
                scanned,
            },
        );
    }

    /// Takes the scan kept for `id` (once) if it is younger than `ttl`, its body's digest is
    /// what `body` gives, and it was made for `needs`.
    pub async fn take(
        &self,
        id: &str,
        msg: &Message,
        needs: &Needs,
        ttl: Duration,
    ) -> Result<Kept, Miss> {
        let e = self.lock().map.remove(id).ok_or(Miss::None)?;
        if e.at.elapsed() >= ttl {
            return Err(Miss::None);
        }
        if !same_checks(&e.needs, needs) {
            return Err(Miss::Checks);
        }
        match body_digest(msg).await {
            Some(d) if d == e.body => Ok(e.scanned),
            _ => Err(Miss::Body),
        }
    }
}

/// Whether two scans asked the same checks.
fn same_checks(a: &Needs, b: &Needs) -> bool {
    a.virus == b.virus
        && a.spam == b.spam
        && a.banned_rules == b.banned_rules
        && a.decisive == b.decisive
}

/// SHA-256 of the message from its header section's end (the blank line and the body), read
/// on a blocking thread (a spooled message is read from its file); None if it cannot be read.
pub async fn body_digest(msg: &Message) -> Option<Digest> {
    let mut reader = msg.reader_from(msg.header_end()).ok()?;
    tokio::task::spawn_blocking(move || {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => ctx.update(&buf[..n]),
                Err(_) => return None,
            }
        }
        <Digest>::try_from(ctx.finish().as_ref()).ok()
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{SpamScan, VirusScan};

    fn scanned() -> Kept {
        Kept {
            banned_by: Vec::new(),
            report: ScanReport {
                virus: VirusScan::Off,
                spam: SpamScan::Off,
                virus_time: Duration::ZERO,
                spam_time: Duration::ZERO,
                parts: None,
                banned: None,
                auth: None,
            },
        }
    }

    const TTL: Duration = Duration::from_secs(600);

    #[tokio::test]
    async fn a_scan_is_taken_once_and_only_for_the_same_body() {
        let r = Reports::new();
        let milter = Message::from_bytes(b"Subject: a\r\n\r\nbody\r\n");
        let d = body_digest(&milter).await.unwrap();
        r.keep("Q1", d, Needs::default(), scanned(), 10, TTL);
        r.keep("Q2", d, Needs::default(), scanned(), 10, TTL);
        // Postfix's queued copy: a Received line and the milter's headers more, the same body.
        let hop =
            Message::from_bytes(b"Received: x\r\nX-Spam-Flag: NO\r\nSubject: a\r\n\r\nbody\r\n");
        let n = Needs::default();
        assert!(r.take("Q1", &hop, &n, TTL).await.is_ok());
        assert_eq!(r.take("Q1", &hop, &n, TTL).await.err(), Some(Miss::None));
        let other = Message::from_bytes(b"Subject: a\r\n\r\nbody!\r\n");
        assert_eq!(r.take("Q2", &other, &n, TTL).await.err(), Some(Miss::Body));
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn other_checks_expired_and_evicted_entries_are_not_used() {
        let r = Reports::new();
        let m = Message::from_bytes(b"Subject: a\r\n\r\nbody\r\n");
        let d = body_digest(&m).await.unwrap();
        let n = Needs::default();
        r.keep("Q1", d, n.clone(), scanned(), 10, TTL);
        let no_spam = Needs {
            spam: false,
            ..Needs::default()
        };
        assert_eq!(
            r.take("Q1", &m, &no_spam, TTL).await.err(),
            Some(Miss::Checks)
        );
        r.keep("Q2", d, n.clone(), scanned(), 10, TTL);
        assert_eq!(
            r.take("Q2", &m, &n, Duration::ZERO).await.err(),
            Some(Miss::None)
        );
        // At most two: the third pushes the first out.
        for id in ["A", "B", "C"] {
            r.keep(id, d, n.clone(), scanned(), 2, TTL);
        }
        assert_eq!(r.len(), 2);
        assert_eq!(r.take("A", &m, &n, TTL).await.err(), Some(Miss::None));
        assert!(r.take("C", &m, &n, TTL).await.is_ok());
    }
}
