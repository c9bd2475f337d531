//! The quarantine in amavis's SQL tables (`[quarantine] store = "sql"`), shared by every node
//! with the same `[sql] url`: the message in `quarantine` chunks, its `msgs` row (`quar_type`
//! Q, `quar_loc` the mail_id) and one `msgrcpt` row per recipient, in one transaction that
//! commits before the client's 250 ([`store`]); listed, shown, released and deleted from any
//! node ([`Store`]), each recipient released once across nodes by claiming its `msgrcpt.rs`
//! ('R') before anything is sent.
//!
//! The envelope the release needs beyond what amavis's tables hold (DSN parameters, XFORWARD
//! attributes, BODY/SMTPUTF8) goes in front of the stored message as one header field,
//! `X-Postsift-Envelope:` (base64 of the same JSON the file store writes, folded), which a
//! release removes again. A message amavis quarantined before the switch (no such field) is
//! released with the sender and recipients of its `msgs` and `msgrcpt` rows.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::release::{self, Request, Result1};
use super::{Entry, Error, Filter, Meta, Quarantine, QuarantineMetrics, RecipientState};
use crate::escape::Shown;
use crate::message::Message;
use crate::reinject::Reinjector;
use crate::runtime::Runtime;
use crate::sql::log::{maddr_key, Content, Ds, LogRecord, RcptRecord};
use crate::sql::quarantine::{QuarEntry, QuarFilter, SqlQuarantine};

/// The header field that carries the envelope in front of the stored message.
pub const ENVELOPE_FIELD: &str = "X-Postsift-Envelope";

/// Where quarantined messages are: this node's files, or the shared database.
#[derive(Clone)]
pub enum Store {
    File(Arc<Quarantine>),
    Sql(SqlQuarantine),
}

impl Store {
    /// The store a runtime quarantines into and releases from: the database with
    /// `store = "sql"` (None without `[sql] url`), else the directory (None when not open).
    pub fn of(shared: &Runtime) -> Option<Store> {
        if shared.config.quarantine.in_sql() {
            shared
                .sql
                .as_ref()
                .map(|s| Store::Sql(s.quarantine.clone()))
        } else {
            shared.quarantine.clone().map(Store::File)
        }
    }

    /// The entries matching `f`, oldest first.
    pub async fn list(&self, f: &Filter) -> Result<Vec<Entry>, Error> {
        match self {
            Store::File(q) => q.list(f),
            Store::Sql(q) => {
                let content = match &f.category {
                    None => Vec::new(),
                    Some(c) => match content_codes(c) {
                        Some(codes) => codes.to_vec(),
                        None => return Ok(Vec::new()),
                    },
                };
                let sf = QuarFilter {
                    mail_id: None,
                    content,
                    recipient: f.recipient.clone(),
                    since: f.since,
                };
                Ok(q.list(&sf).await?.into_iter().map(entry).collect())
            }
        }
    }

    /// One entry.
    pub async fn entry(&self, id: &str) -> Result<Entry, Error> {
        match self {
            Store::File(q) => q.entry(id),
            Store::Sql(q) => q
                .entry(id)
                .await?
                .map(entry)
                .ok_or_else(|| Error::NotFound(id.to_owned())),
        }
    }

    /// The stored envelope and message of entry `id`.
    pub async fn read(&self, id: &str) -> Result<(Meta, Vec<u8>), Error> {
        match self {
            Store::File(q) => q.read(id),
            Store::Sql(q) => read(q, id).await,
        }
    }

    /// Releases entry `id` per `req`: (address, result) for each address asked for.
    pub async fn release(
        &self,
        reinjector: &Reinjector,
        id: &str,
        req: &Request,
    ) -> Result<Vec<(String, Result1)>, Error> {
        match self {
            Store::File(q) => release::release_file(q, reinjector, id, req).await,
            Store::Sql(q) => release(q, reinjector, id, req).await,
        }
    }

    /// Checks an AM.PDP release's `secret_id` for entry `id`, as amavis does when the request
    /// carries one: in SQL it must be the one `mail_id` was made from (amavis's ids) or the
    /// one the `msgs` row keeps (postsift's); [`Error::Secret`] otherwise. The file store keeps
    /// no secret: nothing to check (its listener is for administrators only).
    pub async fn check_secret(&self, id: &str, secret: &str) -> Result<(), Error> {
        let Store::Sql(q) = self else {
            return Ok(());
        };
        let Some(stored) = q.secret(id).await? else {
            return Err(Error::NotFound(id.to_owned()));
        };
        if secret_matches(id, secret, &stored) {
            Ok(())
        } else {
            Err(Error::Secret {
                secret: crate::escape::text(secret),
                id: crate::escape::text(id),
            })
        }
    }

    /// Deletes entry `id` (in SQL: its chunks; its recipients become 'D').
    pub async fn delete(&self, id: &str) -> Result<(), Error> {
        match self {
            Store::File(q) => q.delete(id),
            Store::Sql(q) => match q.delete(id).await? {
                true => Ok(()),
                false => Err(Error::NotFound(id.to_owned())),
            },
        }
    }

    /// Deletes what was stored before `before` (unix time): (entries, orphan files) for the
    /// files, (msgs rows, quarantine chunks) in SQL.
    pub async fn purge(&self, before: i64) -> Result<(u64, u64), Error> {
        match self {
            Store::File(q) => q.purge(before),
            Store::Sql(q) => {
                let t = UNIX_EPOCH + Duration::from_secs(before.max(0) as u64);
                let p = q.purge(t).await?;
                Ok((p.msgs, p.quarantine))
            }
        }
    }
}

/// A new release secret: 12 random bytes in base64url, 16 characters (amavis's size, what
/// `msgs.secret_id` holds).
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Whether `secret` authorizes a release of `mail_id`: amavis (2.7 and later) made `mail_id`
/// as base64url(md5(the secret's bytes)), cut to 12; before 2.7, almost-base64 of md5(the
/// secret's text); postsift keeps a random one in `msgs.secret_id` (`stored`). Compared
/// without early exit (a guess learns nothing from the time taken).
pub fn secret_matches(mail_id: &str, secret: &str, stored: &str) -> bool {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use md5::Digest;
    let digest = |b: &[u8]| STANDARD.encode(md5::Md5::digest(b));
    let mut ok = false;
    if !secret.contains('+') {
        let std: String = secret
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        if let Ok(bin) = STANDARD_NO_PAD.decode(std.trim_end_matches('=')) {
            let id: String = digest(&bin)[..12]
                .chars()
                .map(|c| match c {
                    '+' => '-',
                    '/' => '_',
                    c => c,
                })
                .collect();
            ok |= same(&id, mail_id);
        }
    }
    if !secret.contains('_') {
        let id = digest(secret.as_bytes())[..12].replace('/', "-");
        ok |= same(&id, mail_id);
    }
    ok | (!stored.is_empty() && same(stored, secret))
}

/// Equal, comparing every byte whatever the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The `msgs.content` codes of a quarantine category (`list --category`).
fn content_codes(category: &str) -> Option<&'static [char]> {
    Some(match category {
        "virus" => &['V'],
        "banned" => &['B'],
        "spam" => &['S', 'Y'],
        "unchecked" => &['U'],
        _ => return None,
    })
}

/// amavis's content code of a quarantine category.
fn content_of(category: &str) -> Content {
    match category {
        "virus" => Content::Virus,
        "banned" => Content::Banned,
        "spam" => Content::Spam,
        "unchecked" => Content::Unchecked,
        "dmarc" => Content::Spammy,
        _ => Content::Clean,
    }
}

/// The category `list` shows for a content code.
fn category_of(code: char) -> String {
    match code {
        'V' => "virus".into(),
        'B' => "banned".into(),
        'S' | 'Y' => "spam".into(),
        'U' => "unchecked".into(),
        c => crate::escape::text(&c.to_string()),
    }
}

/// A recipient's `msgrcpt.rs` as `list` shows it.
fn state_of(rs: char) -> String {
    match rs {
        ' ' | 'V' => super::HELD.into(),
        'p' => "requested".into(),
        'R' => super::RELEASED.into(),
        'D' => "deleted".into(),
        c => crate::escape::text(&c.to_string()),
    }
}

fn entry(e: QuarEntry) -> Entry {
    Entry {
        reason: match e.spam_level {
            Some(s) if matches!(e.content, 'S' | 'Y') => {
                format!("score={}", crate::rewrite::score(s))
            }
            _ => "-".into(),
        },
        category: category_of(e.content),
        id: e.mail_id,
        time: e.time,
        size: e.size,
        sender: e.sender,
        subject: e.subject,
        recipients: e
            .recipients
            .into_iter()
            .map(|r| RecipientState {
                address: r.addr,
                original: true,
                state: state_of(r.rs),
                changed: None,
                detail: None,
            })
            .collect(),
    }
}

/// The `msgs`/`msgrcpt` rows of a quarantined message, as amavis writes them for a
/// quarantined-and-discarded message (`ds` D, `quar_type` Q). `header` is the message's header
/// section (From and Message-ID are taken from it); `host` is this node.
pub fn record(meta: &Meta, header: &[u8], host: &str) -> LogRecord {
    let content = content_of(&meta.category);
    let (from_addr, message_id) = header_fields(header);
    let spam_level = meta.spam_score.map(|s| s as f32);
    LogRecord {
        mail_id: meta.id.clone(),
        secret_id: String::new(),
        am_id: meta.id.clone(),
        time: UNIX_EPOCH + Duration::from_secs(meta.time.max(0) as u64),
        host: host.to_owned(),
        policy: String::new(),
        client_addr: meta.xforward.addr.clone().unwrap_or_default(),
        size: meta.size,
        originating: false,
        content,
        quar_type: Some('Q'),
        quar_loc: meta.id.clone(),
        dsn_sent: None,
        spam_level,
        message_id,
        from_addr,
        subject: meta.subject.clone(),
        sender: meta.sender.clone(),
        recipients: meta
            .recipients
            .iter()
            .map(|r| RcptRecord {
                addr: r.address.clone(),
                is_local: true,
                content,
                ds: Ds::Discard,
                blacklisted: false,
                whitelisted: false,
                bspam_level: spam_level,
                smtp_resp: format!("250 2.7.0 Ok, quarantined, id={}", meta.id),
            })
            .collect(),
    }
}

/// From (decoded, "name <address>") and Message-ID ("<…>") of a header section.
fn header_fields(header: &[u8]) -> (String, String) {
    let mut h = header.to_vec();
    h.extend_from_slice(b"\r\n");
    let Some(m) = mail_parser::MessageParser::new().parse_headers(&h) else {
        return (String::new(), String::new());
    };
    let from = m
        .from()
        .and_then(|a| a.first())
        .map(|a| match (a.name(), a.address()) {
            (Some(n), Some(ad)) => format!("{} <{ad}>", n.trim()),
            (None, Some(ad)) => ad.to_owned(),
            (Some(n), None) => n.to_owned(),
            (None, None) => String::new(),
        })
        .unwrap_or_default();
    let id = m.message_id().map(|i| format!("<{i}>")).unwrap_or_default();
    (from, id)
}

/// The `X-Postsift-Envelope:` field for `meta`, folded at 76 columns, CRLF-terminated.
pub fn envelope_field(meta: &Meta) -> Result<Vec<u8>, Error> {
    let json = serde_json::to_vec(meta).map_err(|e| Error::Corrupt(e.to_string()))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(json);
    let mut out = format!("{ENVELOPE_FIELD}:").into_bytes();
    for piece in b64.as_bytes().chunks(76) {
        out.extend_from_slice(b" ");
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    if b64.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// Splits a stored message into the envelope of its leading `X-Postsift-Envelope:` field and
/// the message after it; None when it does not start with one (amavis stored it).
pub fn split_envelope(data: &[u8]) -> Option<Result<(Meta, &[u8]), Error>> {
    let prefix = format!("{ENVELOPE_FIELD}:");
    if data.len() < prefix.len() || !data[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes()) {
        return None;
    }
    let mut b64 = Vec::new();
    let mut pos = prefix.len();
    loop {
        let end = match data[pos..].windows(2).position(|w| w == b"\r\n") {
            Some(i) => pos + i,
            None => return Some(Err(Error::Corrupt("envelope field not ended".into()))),
        };
        b64.extend(data[pos..end].iter().filter(|b| !b.is_ascii_whitespace()));
        pos = end + 2;
        if !matches!(data.get(pos), Some(b' ') | Some(b'\t')) {
            break;
        }
    }
    let parsed = base64::engine::general_purpose::STANDARD
        .decode(&b64)
        .map_err(|e| e.to_string())
        .and_then(|j| serde_json::from_slice::<Meta>(&j).map_err(|e| e.to_string()));
    Some(match parsed {
        Ok(meta) => Ok((meta, &data[pos..])),
        Err(e) => Err(Error::Corrupt(format!("envelope field: {e}"))),
    })
}

/// Stores `msg` with `meta` in the database: Ok only once committed (the client's 250 may
/// follow), Err (database down, timeout, refused) leaves nothing behind. A transaction the
/// database gave up for another's sake (a deadlock with another node's purge) is tried again,
/// up to three times in all.
pub async fn store(q: &SqlQuarantine, meta: &Meta, msg: &Message, host: &str) -> Result<(), Error> {
    let mut rec = record(meta, msg.header_section(), host);
    // What Modoboa reads and sends back, and `amavisd-release ID SECRET` checks.
    rec.secret_id = new_secret();
    let field = envelope_field(meta)?;
    let mut tries = 0;
    loop {
        tries += 1;
        let mut reader = stored_bytes(&field, msg)?;
        match q.store(&rec, &mut reader).await {
            Err(e) if e.is_conflict() && tries < 3 => {
                tracing::info!(id = %Shown(&meta.id), error = %e, "quarantine (sql): trying the store again");
            }
            r => return Ok(r?),
        }
    }
}

/// The bytes a store writes: the envelope field, then the spooled message from its start.
fn stored_bytes<'a>(
    field: &'a [u8],
    msg: &'a Message,
) -> Result<impl AsyncRead + Unpin + Send + 'a, Error> {
    let len = msg.len();
    let head = msg.head();
    let n = (head.len() as u64).min(len) as usize;
    let tail: Box<dyn AsyncRead + Unpin + Send> = match msg
        .reopen_tail()
        .map_err(super::io_err("cannot reopen the spool"))?
    {
        Some(mut f) => {
            use std::io::Seek;
            f.seek(io::SeekFrom::Start(0))
                .map_err(super::io_err("cannot read the spool"))?;
            Box::new(tokio::fs::File::from_std(f))
        }
        None => Box::new(tokio::io::empty()),
    };
    Ok(field.chain(&head[..n]).chain(Exact {
        inner: tail,
        left: len - n as u64,
    }))
}

/// Reads exactly `left` bytes of `inner`: an end before is an error (a short spool is never
/// stored as if whole).
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: AsyncRead + Unpin> AsyncRead for Exact<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.left == 0 || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let want = (buf.remaining() as u64).min(this.left) as usize;
        let mut sub = ReadBuf::new(buf.initialize_unfilled_to(want));
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
        let n = sub.filled().len();
        if n == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the spooled message is shorter than received",
            )));
        }
        buf.advance(n);
        this.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

/// The envelope and message of `id`.
pub async fn read(q: &SqlQuarantine, id: &str) -> Result<(Meta, Vec<u8>), Error> {
    let Some(data) = q.fetch(id).await? else {
        return Err(Error::NotFound(id.to_owned()));
    };
    if let Some(split) = split_envelope(&data) {
        let (meta, msg) = split?;
        return Ok((meta, msg.to_vec()));
    }
    // Stored by amavis: the envelope of its rows.
    let e = q
        .entry(id)
        .await?
        .ok_or_else(|| Error::NotFound(id.to_owned()))?;
    let e = entry(e);
    let meta = Meta {
        id: e.id.clone(),
        time: e.time,
        category: e.category.clone(),
        reason: e.reason.clone(),
        size: e.size,
        sender: e.sender.clone(),
        recipients: e
            .recipients
            .iter()
            .map(|r| super::StoredRecipient {
                address: r.address.clone(),
                notify: None,
                orcpt: None,
            })
            .collect(),
        subject: e.subject.clone(),
        body: None,
        smtputf8: false,
        ret: None,
        envid: None,
        xforward: Default::default(),
        helo: String::new(),
        spam_score: None,
    };
    Ok((meta, data))
}

/// Releases `id` from the database per `req`: each recipient asked for (all when none) is
/// claimed ('R') in the database before anything is sent, so that across nodes it is sent
/// once; one whose send failed gets its old `rs` back. `recipient` lines (AM.PDP) and
/// `--recipient`/`--to` (the CLI) must name recipients of the message.
pub async fn release(
    q: &SqlQuarantine,
    reinjector: &Reinjector,
    id: &str,
    req: &Request,
) -> Result<Vec<(String, Result1)>, Error> {
    let asked: Vec<String> = req.to.iter().chain(&req.recipients).cloned().collect();
    if let Some(bad) = asked.iter().find(|a| release::bad_address(a)) {
        return Err(Error::Usage(format!(
            "{bad:?}: bad address syntax (RFC 5321), nothing released"
        )));
    }
    let (meta, data) = read(q, id).await?;
    let rcpts = q.recipients(id).await?;
    for a in &asked {
        let key = maddr_key(a).0;
        if !rcpts.iter().any(|r| maddr_key(&r.addr).0 == key) {
            return Err(Error::Usage(format!(
                "{a} is not a recipient of {id} (the SQL quarantine releases to the message's \
                 own recipients)"
            )));
        }
    }
    let claim = q.claim(id, &asked, req.force).await?;
    let mut results: Vec<(String, Result1)> = claim
        .refused
        .iter()
        .map(|r| {
            let res = match r.rs {
                'D' => Result1::Failed {
                    code: 550,
                    text: "5.7.1 deleted from the quarantine, not released".into(),
                },
                _ => Result1::AlreadyReleased { at: None },
            };
            (r.addr.clone(), res)
        })
        .collect();
    if claim.claimed.is_empty() {
        return Ok(results);
    }
    // The envelope's own spelling of each address (its DSN parameters go with it).
    let addrs: Vec<String> = claim
        .claimed
        .iter()
        .map(|r| {
            meta.recipients
                .iter()
                .find(|m| m.address.eq_ignore_ascii_case(&r.addr))
                .map_or_else(|| r.addr.clone(), |m| m.address.clone())
        })
        .collect();
    let sent = release::send(reinjector, &meta, &data, &addrs).await;
    for ((r, addr), result) in claim.claimed.iter().zip(addrs).zip(sent) {
        let released = matches!(result, Result1::Released(_));
        if let Err(e) = q.finish(id, r, released).await {
            // Not sent, and still claimed: `release --force` sends it.
            tracing::error!(id = %Shown(id), rcpt = %Shown(&addr), error = %e, "release not recorded");
        }
        results.push((addr, result));
    }
    Ok(results)
}

/// The daemon's quarantine store for `store = "sql"`.
pub async fn store_in(shared: &Runtime, meta: &Meta, msg: &Message) -> Result<(), String> {
    let Some(s) = &shared.sql else {
        return Err("quarantine.store = \"sql\" without a [sql] database".into());
    };
    store(&s.quarantine, meta, msg, &shared.hostname)
        .await
        .map_err(|e| e.to_string())
}

/// The daemon's upkeep of the database: with `store = "sql"`, purges the quarantine's rows and
/// chunks past `quarantine.retention_days` and refreshes the entries and bytes gauges every
/// minute (every node stores into the same tables); with `sql.log` on, purges the log's rows
/// past `sql.log_retention_days` (whatever the store). Purges at start and hourly. Takes each
/// generation's database and retentions as reloads bring them.
pub async fn maintenance(
    current: tokio::sync::watch::Receiver<Arc<Runtime>>,
    metrics: QuarantineMetrics,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (q, quarantine_days, log_days) = {
            let rt = current.borrow();
            let Some(s) = &rt.sql else { continue };
            let c = &rt.config;
            let quarantine_days = c.quarantine.in_sql().then_some(c.quarantine.retention_days);
            let log_days = c.sql.log.then(|| {
                c.sql
                    .log_retention_days
                    .unwrap_or(c.quarantine.retention_days)
            });
            if quarantine_days.is_none() && log_days.is_none() {
                continue;
            }
            (s.quarantine.clone(), quarantine_days, log_days)
        };
        let purge = n.is_multiple_of(60);
        n += 1;
        if purge {
            if let Some(days) = quarantine_days {
                match q.purge(days_ago(days)).await {
                    Ok(p) => purged("quarantine (sql)", p),
                    Err(e) => tracing::warn!(error = %e, "quarantine (sql): purge failed"),
                }
            }
            if let Some(days) = log_days {
                match q.purge_log(days_ago(days)).await {
                    Ok(p) => purged("sql log", p),
                    Err(e) => tracing::warn!(error = %e, "sql log: purge failed"),
                }
            }
        }
        if quarantine_days.is_some() {
            if let Ok((entries, bytes)) = q.stats().await {
                metrics.quarantine_entries.set(entries as i64);
                metrics.quarantine_bytes.set(bytes as i64);
            }
        }
    }
}

fn days_ago(days: u64) -> std::time::SystemTime {
    let before =
        chrono::Utc::now().timestamp() - (days.saturating_mul(86400)).min(i64::MAX as u64) as i64;
    UNIX_EPOCH + Duration::from_secs(before.max(0) as u64)
}

fn purged(what: &str, p: crate::sql::quarantine::Purged) {
    if p.msgs + p.quarantine > 0 {
        tracing::info!(
            msgs = p.msgs,
            msgrcpt = p.msgrcpt,
            chunks = p.quarantine,
            maddr = p.maddr,
            "{what}: purged"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Envelope, Recipient};

    fn meta() -> Meta {
        let env = Envelope {
            sender: "s@example.org".into(),
            recipients: vec![Recipient {
                address: "A@example.com".into(),
                notify: Some("SUCCESS,FAILURE".into()),
                orcpt: Some("rfc822;a@example.com".into()),
            }],
            ..Default::default()
        };
        let msg = Message::from_bytes(b"Subject: x\r\n\r\nbody\r\n");
        let mut m = Meta::new("abc", &env, &msg, "spam", "score=9".into());
        m.spam_score = Some(9.5);
        m
    }

    #[test]
    fn the_envelope_field_round_trips_and_is_removed() {
        let m = meta();
        let mut data = envelope_field(&m).unwrap();
        assert!(data.len() > 100);
        assert!(data.split(|&b| b == b'\n').all(|l| l.len() <= 100));
        let raw = b"Subject: x\r\n\r\nbody\r\n";
        data.extend_from_slice(raw);
        let (back, rest) = split_envelope(&data).unwrap().unwrap();
        assert_eq!(back, m);
        assert_eq!(rest, raw);
        // A message amavis stored, and a broken field
        assert!(split_envelope(raw).is_none());
        assert!(split_envelope(b"X-Postsift-Envelope: !!\r\n\r\n")
            .unwrap()
            .is_err());
    }

    #[test]
    fn the_record_is_amavis_quarantined_and_discarded() {
        let m = meta();
        let r = record(
            &m,
            b"From: =?utf-8?q?J=C3=B6rg?= <j@example.net>\r\nMessage-ID: <x@y>\r\n",
            "node-a",
        );
        assert_eq!(r.quar_type, Some('Q'));
        assert_eq!(r.quar_loc, "abc");
        assert_eq!(r.content, Content::Spam);
        assert_eq!(r.from_addr, "J\u{f6}rg <j@example.net>");
        assert_eq!(r.message_id, "<x@y>");
        assert_eq!(r.recipients[0].ds, Ds::Discard);
        assert_eq!(r.spam_level, Some(9.5));
    }

    #[test]
    fn secrets_are_checked_as_amavis_does() {
        // amavis 2.7+: mail_id = base64url(md5(secret's bytes))[..12]
        let secret = "dGVzdC1zZWNyZXQtMTI"; // base64url of b"test-secret-12"
        let bin = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(secret)
            .unwrap();
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(<md5::Md5 as md5::Digest>::digest(&bin))[..12]
            .to_string();
        assert!(secret_matches(&id, secret, ""));
        assert!(!secret_matches(&id, "dGVzdC1zZWNyZXQtMTM", ""));
        // A pair amavisd-new 2.13's own Amavis::Util::generate_mail_id made.
        assert!(secret_matches("Ur_s__J1rz9t", "sPeFARYueugw", ""));
        assert!(!secret_matches("Ur_s__J1rz9t", "sPeFARYueugx", ""));
        // postsift's: the stored one, and only a non-empty one
        let s = new_secret();
        assert_eq!(s.len(), 16);
        assert!(secret_matches("abcdefghijkl", &s, &s));
        assert!(!secret_matches("abcdefghijkl", &new_secret(), &s));
        assert!(!secret_matches("abcdefghijkl", "", ""));
        assert!(!secret_matches("abcdefghijkl", "x", ""));
    }

    #[tokio::test]
    async fn a_short_read_is_an_error() {
        let mut r = Exact {
            inner: &b"abc"[..],
            left: 5,
        };
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).await.is_err());
        let mut r = Exact {
            inner: &b"abcdef"[..],
            left: 5,
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"abcde");
    }
}
