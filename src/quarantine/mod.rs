//! The quarantine: messages the `quarantine` action keeps instead of delivering, one file each
//! under `[quarantine] dir`/msgs (the envelope as a JSON line, then the message exactly as it
//! arrived), and an index in SQLite (`index.db`) with what `postsift quarantine list` shows and
//! each recipient's release state.
//!
//! Durability, in the order the client's 250 depends on it: the file is written under a
//! temporary name, fsynced, linked to its final name (never over an existing one), the
//! directory fsynced; then the index row is committed (WAL, `synchronous=FULL`). The committed
//! row is the entry: a file without a row is what a crash (or a failed commit) left of a store
//! whose client got no 250 and will send the message again, and `purge` removes it once it is
//! an hour old. Temporary files (`.tmp-*`) are never listed and are removed the same way.
//!
//! The index is SQLite for the reasons `greylist::embedded` gives: it survives `kill -9`, and
//! the CLI opens it beside the running daemon under SQLite's locking.

pub mod ampdp;
pub mod release;
pub mod show;
pub mod sql;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::message::{Envelope, Message, Recipient};
use crate::xforward;

/// First line of every stored file: the format, then the length of the JSON line after it.
const MAGIC: &str = "postsift-quarantine 1";

/// Files of a store that never got its index row are left alone this long (it may still be
/// committing), then purged.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY, time INTEGER NOT NULL, category TEXT NOT NULL, reason TEXT NOT NULL,
    size INTEGER NOT NULL, sender TEXT NOT NULL, subject TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS messages_time ON messages(time);
CREATE TABLE IF NOT EXISTS recipients (
    id TEXT NOT NULL, address TEXT NOT NULL, original INTEGER NOT NULL, state TEXT NOT NULL,
    changed INTEGER, detail TEXT, PRIMARY KEY (id, address));
";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("quarantine index: {0}")]
    Index(#[from] rusqlite::Error),
    #[error("no quarantined message {0}")]
    NotFound(String),
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Usage(String),
    /// An AM.PDP release's `secret_id` that does not authorize `mail_id` (amavis's words).
    #[error("Secret_id {secret} does not match mail_id {id}")]
    Secret { secret: String, id: String },
    /// The SQL store (`store = "sql"`) failed.
    #[error("quarantine in SQL: {0}")]
    Sql(#[from] crate::sql::Error),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A recipient's release state.
pub const HELD: &str = "held";
pub const RELEASING: &str = "releasing";
pub const RELEASED: &str = "released";

/// The envelope as stored: everything the reinjection needs to send the message as it came.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub id: String,
    /// Unix time of the store.
    pub time: i64,
    /// "virus", "banned", "spam", "unchecked".
    pub category: String,
    /// Virus names, the banned part, the score, or why the message was not checked.
    pub reason: String,
    pub size: u64,
    pub sender: String,
    pub recipients: Vec<StoredRecipient>,
    pub subject: String,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub smtputf8: bool,
    #[serde(default)]
    pub ret: Option<String>,
    #[serde(default)]
    pub envid: Option<String>,
    #[serde(default)]
    pub xforward: xforward::Attrs,
    /// The client's HELO and address as postsift saw them (Postfix's content filter hop).
    #[serde(default)]
    pub helo: String,
    /// The spam score (the SQL store's `msgs.spam_level`); absent from files of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spam_score: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredRecipient {
    pub address: String,
    #[serde(default)]
    pub notify: Option<String>,
    #[serde(default)]
    pub orcpt: Option<String>,
}

impl Meta {
    pub fn new(id: &str, env: &Envelope, msg: &Message, category: &str, reason: String) -> Meta {
        Meta {
            id: id.to_owned(),
            time: chrono::Utc::now().timestamp(),
            category: category.to_owned(),
            reason,
            size: msg.len(),
            sender: env.sender.clone(),
            recipients: env
                .recipients
                .iter()
                .map(|r| StoredRecipient {
                    address: r.address.clone(),
                    notify: r.notify.clone(),
                    orcpt: r.orcpt.clone(),
                })
                .collect(),
            subject: subject(msg.header_section()),
            body: env.body.map(str::to_owned),
            smtputf8: env.smtputf8,
            ret: env.ret.map(str::to_owned),
            envid: env.envid.clone(),
            xforward: env.xforward.clone(),
            helo: String::new(),
            spam_score: None,
        }
    }

    /// The envelope to reinject with, for `rcpts` (original recipients keep their DSN
    /// parameters).
    pub fn envelope(&self, rcpts: &[String]) -> Envelope {
        let recipients = rcpts
            .iter()
            .map(|a| {
                match self
                    .recipients
                    .iter()
                    .find(|r| r.address.eq_ignore_ascii_case(a))
                {
                    Some(r) => Recipient {
                        address: r.address.clone(),
                        notify: r.notify.clone(),
                        orcpt: r.orcpt.clone(),
                    },
                    None => Recipient {
                        address: a.clone(),
                        notify: None,
                        orcpt: None,
                    },
                }
            })
            .collect();
        Envelope {
            sender: self.sender.clone(),
            recipients,
            size: None,
            body: match self.body.as_deref() {
                Some(b) if b.eq_ignore_ascii_case("8BITMIME") => Some("8BITMIME"),
                Some(b) if b.eq_ignore_ascii_case("7BIT") => Some("7BIT"),
                _ => None,
            },
            smtputf8: self.smtputf8,
            ret: match self.ret.as_deref() {
                Some(r) if r.eq_ignore_ascii_case("FULL") => Some("FULL"),
                Some(r) if r.eq_ignore_ascii_case("HDRS") => Some("HDRS"),
                _ => None,
            },
            envid: self.envid.clone(),
            xforward: self.xforward.clone(),
        }
    }
}

/// The Subject, RFC 2047-decoded, on one line ("" if none).
fn subject(header: &[u8]) -> String {
    let mut h = header.to_vec();
    h.extend_from_slice(b"\r\n");
    mail_parser::MessageParser::new()
        .parse_headers(&h)
        .and_then(|m| m.subject().map(|s| crate::escape::text(s.trim())))
        .unwrap_or_default()
}

/// One row of the index, as `list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    pub time: i64,
    pub category: String,
    pub reason: String,
    pub size: u64,
    pub sender: String,
    pub subject: String,
    pub recipients: Vec<RecipientState>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecipientState {
    pub address: String,
    /// In the message's envelope (not an address given to `release --to`).
    pub original: bool,
    pub state: String,
    pub changed: Option<i64>,
    pub detail: Option<String>,
}

/// What `list` keeps.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub category: Option<String>,
    pub recipient: Option<String>,
    pub since: Option<i64>,
}

/// The quarantine directory and its index. One per process; every method blocks (the daemon
/// calls them on tokio's blocking threads).
pub struct Quarantine {
    dir: PathBuf,
    msgs: PathBuf,
    index: Mutex<Connection>,
}

impl Quarantine {
    /// Opens (creating if need be) `dir`, `dir/msgs` and `dir/index.db`.
    pub fn open(dir: &Path) -> Result<Quarantine, Error> {
        let msgs = dir.join("msgs");
        crate::fsmode::create_private_dir(&msgs)
            .map_err(io_err(format!("cannot create {}", msgs.display())))?;
        let path = dir.join("index.db");
        // 0600 before SQLite opens it: its -wal and -shm take the database file's mode.
        crate::fsmode::create_private_file(&path)
            .map_err(io_err(format!("cannot create {}", path.display())))?;
        let c = Connection::open(&path)?;
        c.busy_timeout(Duration::from_secs(10))?;
        c.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: the row is on disk before the client hears 250 (the file already is).
        c.pragma_update(None, "synchronous", "FULL")?;
        c.execute_batch(SCHEMA)?;
        Ok(Quarantine {
            dir: dir.to_owned(),
            msgs,
            index: Mutex::new(c),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of entry `id` (which must be a plain name).
    pub fn path(&self, id: &str) -> Result<PathBuf, Error> {
        if id.is_empty()
            || id.starts_with('.')
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::NotFound(id.to_owned()));
        }
        Ok(self.msgs.join(id))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `msg` durably and indexes it; only an `Ok` may be answered with 250. `head` and
    /// `tail` are the message's bytes (see [`Message::head`], [`Message::reopen_tail`]), taken
    /// apart so that this can run on a blocking thread.
    pub fn store(
        &self,
        meta: &Meta,
        head: &[u8],
        tail: Option<File>,
        len: u64,
    ) -> Result<(), Error> {
        let path = self.path(&meta.id)?;
        let tmp = self.msgs.join(format!(".tmp-{}", meta.id));
        let json = serde_json::to_string(meta).map_err(|e| Error::Corrupt(e.to_string()))?;
        let written = write_durably(&tmp, &json, head, tail, len);
        let linked = written.and_then(|()| {
            // A link, not a rename: it fails rather than replace an entry of the same id.
            fs::hard_link(&tmp, &path).map_err(io_err(format!("cannot link {}", path.display())))
        });
        let _ = fs::remove_file(&tmp);
        linked?;
        let synced = File::open(&self.msgs)
            .and_then(|d| d.sync_all())
            .map_err(io_err(format!("cannot fsync {}", self.msgs.display())));
        let indexed = synced.and_then(|()| self.index_entry(meta));
        if let Err(e) = indexed {
            // Not acknowledged: the client keeps the message; leave no entry behind.
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(())
    }

    fn index_entry(&self, meta: &Meta) -> Result<(), Error> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        tx.execute(
            "INSERT INTO messages (id, time, category, reason, size, sender, subject)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                meta.id,
                meta.time,
                meta.category,
                meta.reason,
                meta.size as i64,
                meta.sender,
                meta.subject
            ],
        )?;
        for r in &meta.recipients {
            tx.execute(
                "INSERT OR IGNORE INTO recipients (id, address, original, state)
                 VALUES (?1, ?2, 1, ?3)",
                params![meta.id, r.address, HELD],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The entries matching `f`, oldest first.
    pub fn list(&self, f: &Filter) -> Result<Vec<Entry>, Error> {
        let c = self.conn();
        let mut stmt = c.prepare(
            "SELECT id, time, category, reason, size, sender, subject FROM messages
             WHERE (?1 IS NULL OR category = ?1) AND (?2 IS NULL OR time >= ?2)
               AND (?3 IS NULL OR id IN (SELECT id FROM recipients WHERE address = ?3 COLLATE NOCASE))
             ORDER BY time, id",
        )?;
        let rows = stmt.query_map(params![f.category, f.since, f.recipient], |r| {
            Ok(Entry {
                id: r.get(0)?,
                time: r.get(1)?,
                category: r.get(2)?,
                reason: r.get(3)?,
                size: r.get::<_, i64>(4)? as u64,
                sender: r.get(5)?,
                subject: r.get(6)?,
                recipients: Vec::new(),
            })
        })?;
        let mut out = rows.collect::<Result<Vec<_>, _>>()?;
        drop(stmt);
        for e in &mut out {
            e.recipients = recipients(&c, &e.id)?;
        }
        Ok(out)
    }

    /// One entry of the index.
    pub fn entry(&self, id: &str) -> Result<Entry, Error> {
        let c = self.conn();
        let e = c
            .query_row(
                "SELECT id, time, category, reason, size, sender, subject FROM messages WHERE id = ?1",
                params![id],
                |r| {
                    Ok(Entry {
                        id: r.get(0)?,
                        time: r.get(1)?,
                        category: r.get(2)?,
                        reason: r.get(3)?,
                        size: r.get::<_, i64>(4)? as u64,
                        sender: r.get(5)?,
                        subject: r.get(6)?,
                        recipients: Vec::new(),
                    })
                },
            )
            .optional()?
            .ok_or_else(|| Error::NotFound(id.to_owned()))?;
        let recipients = recipients(&c, id)?;
        Ok(Entry { recipients, ..e })
    }

    /// The stored envelope and message of entry `id` (which must be in the index).
    pub fn read(&self, id: &str) -> Result<(Meta, Vec<u8>), Error> {
        self.entry(id)?;
        let path = self.path(id)?;
        let data = fs::read(&path).map_err(io_err(format!("cannot read {}", path.display())))?;
        parse_file(&data)
    }

    /// Deletes entry `id`: the index row first (then it is gone for every command), then the
    /// file.
    pub fn delete(&self, id: &str) -> Result<(), Error> {
        let path = self.path(id)?;
        {
            let mut c = self.conn();
            let tx = c.transaction()?;
            let n = tx.execute("DELETE FROM messages WHERE id = ?1", params![id])?;
            tx.execute("DELETE FROM recipients WHERE id = ?1", params![id])?;
            tx.commit()?;
            if n == 0 {
                return Err(Error::NotFound(id.to_owned()));
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("cannot remove {}", path.display()))(e)),
        }
    }

    /// Deletes the entries stored before `before` (unix time), and the files no committed
    /// entry owns that are older than an hour. Returns (entries, orphan files) removed.
    pub fn purge(&self, before: i64) -> Result<(u64, u64), Error> {
        let old: Vec<String> = {
            let c = self.conn();
            let mut stmt = c.prepare("SELECT id FROM messages WHERE time < ?1")?;
            let ids = stmt
                .query_map(params![before], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            ids
        };
        let mut n = 0;
        for id in old {
            match self.delete(&id) {
                Ok(()) => n += 1,
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut orphans = 0;
        let dir = fs::read_dir(&self.msgs)
            .map_err(io_err(format!("cannot read {}", self.msgs.display())))?;
        for f in dir.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let old_enough = f
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= ORPHAN_AGE);
            if !old_enough {
                continue;
            }
            let indexed = !name.starts_with('.') && {
                let c = self.conn();
                c.query_row(
                    "SELECT 1 FROM messages WHERE id = ?1",
                    params![name],
                    |_| Ok(()),
                )
                .optional()?
                .is_some()
            };
            if !indexed && fs::remove_file(f.path()).is_ok() {
                orphans += 1;
            }
        }
        Ok((n, orphans))
    }

    /// Entries and their bytes (message sizes), for the gauges.
    pub fn stats(&self) -> Result<(u64, u64), Error> {
        let c = self.conn();
        let (n, bytes): (i64, i64) = c.query_row(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((n as u64, bytes as u64))
    }

    /// Claims `addresses` of entry `id` for a release: each one held (or, with `force`, left
    /// `releasing` by an interrupted release) becomes `releasing`, in one transaction, so two
    /// releases at once never both send it. Addresses not in the index are added (a release
    /// `--to` another address). Returns the claimed ones and, for the others, their state.
    pub fn claim(
        &self,
        id: &str,
        addresses: &[String],
        force: bool,
        now: i64,
    ) -> Result<Claim, Error> {
        let mut c = self.conn();
        // IMMEDIATE: the write lock is taken first, so a release in another process (the CLI
        // beside the daemon) waits for this one instead of both reading `held`.
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut claimed = Vec::new();
        let mut not = Vec::new();
        for a in addresses {
            tx.execute(
                "INSERT OR IGNORE INTO recipients (id, address, original, state)
                 SELECT ?1, ?2, 0, ?3 WHERE NOT EXISTS
                   (SELECT 1 FROM recipients WHERE id = ?1 AND address = ?2 COLLATE NOCASE)",
                params![id, a, HELD],
            )?;
            let n = tx.execute(
                "UPDATE recipients SET state = ?4, changed = ?5, detail = NULL
                 WHERE id = ?1 AND address = ?2 COLLATE NOCASE
                   AND (state = ?3 OR (?6 AND state = ?4))",
                params![id, a, HELD, RELEASING, now, force],
            )?;
            if n > 0 {
                claimed.push(a.clone());
            } else {
                let s = tx.query_row(
                    "SELECT address, original, state, changed, detail FROM recipients
                     WHERE id = ?1 AND address = ?2 COLLATE NOCASE",
                    params![id, a],
                    recipient_row,
                )?;
                not.push((a.clone(), s));
            }
        }
        tx.commit()?;
        Ok((claimed, not))
    }

    /// Records how the release of `address` ended: released (with the next hop's reply), or
    /// back to held.
    pub fn finish(
        &self,
        id: &str,
        address: &str,
        released: bool,
        detail: &str,
        now: i64,
    ) -> Result<(), Error> {
        let state = if released { RELEASED } else { HELD };
        self.conn().execute(
            "UPDATE recipients SET state = ?3, changed = ?4, detail = ?5
             WHERE id = ?1 AND address = ?2 COLLATE NOCASE",
            params![id, address, state, now, detail],
        )?;
        Ok(())
    }
}

/// The addresses a release claimed, and the others with the state that kept them out.
pub type Claim = (Vec<String>, Vec<(String, RecipientState)>);

fn recipient_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecipientState> {
    Ok(RecipientState {
        address: r.get(0)?,
        original: r.get::<_, i64>(1)? != 0,
        state: r.get(2)?,
        changed: r.get(3)?,
        detail: r.get(4)?,
    })
}

fn recipients(c: &Connection, id: &str) -> Result<Vec<RecipientState>, Error> {
    let mut stmt = c.prepare(
        "SELECT address, original, state, changed, detail FROM recipients WHERE id = ?1
         ORDER BY original DESC, rowid",
    )?;
    let rows = stmt.query_map(params![id], recipient_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Writes the file (header line, JSON, message) and fsyncs it; removes it on failure.
fn write_durably(
    tmp: &Path,
    json: &str,
    head: &[u8],
    tail: Option<File>,
    len: u64,
) -> Result<(), Error> {
    let what = || format!("cannot write {}", tmp.display());
    use std::os::unix::fs::OpenOptionsExt;
    // Mail of others: readable by postsift's user (and root's CLI) only.
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(io_err(what()))?;
    let r = (|| {
        let mut w = BufWriter::with_capacity(64 * 1024, &f);
        write!(w, "{MAGIC} {}\n{json}\n", json.len())?;
        let n = (head.len() as u64).min(len) as usize;
        w.write_all(&head[..n])?;
        let mut left = len - n as u64;
        if let Some(t) = tail {
            left -= io::copy(&mut t.take(left), &mut w)?;
        }
        if left != 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the spooled message is shorter than received",
            ));
        }
        w.flush()?;
        drop(w);
        f.sync_all()
    })();
    if let Err(e) = r {
        let _ = fs::remove_file(tmp);
        return Err(io_err(what())(e));
    }
    Ok(())
}

/// Splits a stored file into its envelope and its message.
pub fn parse_file(data: &[u8]) -> Result<(Meta, Vec<u8>), Error> {
    let bad = |why: &str| Error::Corrupt(format!("not a quarantine file: {why}"));
    let nl = data
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("no first line"))?;
    let first = std::str::from_utf8(&data[..nl]).map_err(|_| bad("first line"))?;
    let len: usize = first
        .strip_prefix(MAGIC)
        .and_then(|r| r.trim().parse().ok())
        .ok_or_else(|| bad("first line"))?;
    let start = nl + 1;
    let end = start + len;
    if data.len() < end + 1 || data[end] != b'\n' {
        return Err(bad("envelope length"));
    }
    let meta: Meta =
        serde_json::from_slice(&data[start..end]).map_err(|e| bad(&format!("envelope: {e}")))?;
    Ok((meta, data[end + 1..].to_vec()))
}

/// The store, off the async threads: the bytes of `msg` are handed over as an owned head and
/// a second handle on its spool file.
pub async fn store_message(
    q: std::sync::Arc<Quarantine>,
    meta: Meta,
    msg: &Message,
) -> Result<(), Error> {
    let head = msg.head().clone();
    let tail = msg
        .reopen_tail()
        .map_err(io_err("cannot reopen the spool"))?;
    let len = msg.len();
    tokio::task::spawn_blocking(move || q.store(&meta, &head, tail, len))
        .await
        .map_err(|e| Error::Corrupt(format!("store task: {e}")))?
}

/// The categories a message can be quarantined for.
pub const QUARANTINE_CATEGORIES: &[&str] = &["virus", "banned", "spam", "unchecked"];
/// What a release did for one recipient: sent, not sent again (released before, or claimed by
/// another release), or refused/failed at the next hop.
pub const RELEASE_RESULTS: &[&str] = &["released", "duplicate", "failed"];

/// The series of the quarantine: stores by category, its size, store time, releases.
#[derive(Clone)]
pub struct QuarantineMetrics {
    /// Messages stored in the quarantine, by category.
    pub quarantined: prometheus::IntCounterVec,
    /// Entries in the quarantine and the bytes of their messages (refreshed every minute
    /// and after each store).
    pub quarantine_entries: prometheus::IntGauge,
    pub quarantine_bytes: prometheus::IntGauge,
    /// Time to store one message durably (file, fsyncs, index commit).
    pub quarantine_store_duration: prometheus::Histogram,
    /// Recipients released by the daemon (AM.PDP), by result; `postsift quarantine release`
    /// runs in its own process and logs instead.
    pub quarantine_releases: prometheus::IntCounterVec,
}

impl QuarantineMetrics {
    pub fn register(r: &prometheus::Registry) -> QuarantineMetrics {
        use crate::metrics::{counter, gauge, histogram, TIME_BUCKETS};
        QuarantineMetrics {
            quarantined: counter(
                r,
                "postsift_quarantined_total",
                "Messages stored in the quarantine, by category",
                &["category"],
                &[QUARANTINE_CATEGORIES],
            ),
            quarantine_entries: gauge(
                r,
                "postsift_quarantine_entries",
                "Messages in the quarantine",
            ),
            quarantine_bytes: gauge(
                r,
                "postsift_quarantine_bytes",
                "Bytes of the messages in the quarantine",
            ),
            quarantine_store_duration: histogram(
                r,
                "postsift_quarantine_store_duration_seconds",
                "Time to store one message in the quarantine, fsyncs and index commit included",
                TIME_BUCKETS.to_vec(),
            ),
            quarantine_releases: counter(
                r,
                "postsift_quarantine_releases_total",
                "Recipients released from the quarantine through AM.PDP, by result",
                &["result"],
                &[RELEASE_RESULTS],
            ),
        }
    }
}

/// The daemon's upkeep: purges what is past `retention_days` at start and hourly, and
/// refreshes the entries and bytes gauges every minute (stores by another process, deletes by
/// the CLI).
pub async fn maintenance(
    q: std::sync::Arc<Quarantine>,
    retention_days: u64,
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
        let q = q.clone();
        let purge = n.is_multiple_of(60);
        n += 1;
        let before = chrono::Utc::now().timestamp() - (retention_days * 86400) as i64;
        let r = tokio::task::spawn_blocking(move || {
            let purged = if purge { Some(q.purge(before)) } else { None };
            (purged, q.stats())
        })
        .await;
        let Ok((purged, stats)) = r else { continue };
        match purged {
            Some(Ok((e, o))) if e + o > 0 => {
                tracing::info!(entries = e, orphans = o, "quarantine: purged")
            }
            Some(Err(e)) => tracing::warn!(error = %e, "quarantine: purge failed"),
            _ => {}
        }
        if let Ok((entries, bytes)) = stats {
            metrics.quarantine_entries.set(entries as i64);
            metrics.quarantine_bytes.set(bytes as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str) -> Meta {
        let env = Envelope {
            sender: "s@example.org".into(),
            recipients: vec![
                Recipient {
                    address: "a@example.com".into(),
                    notify: Some("SUCCESS,FAILURE".into()),
                    orcpt: Some("rfc822;a@example.com".into()),
                },
                Recipient {
                    address: "b@example.com".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let msg = Message::from_bytes(b"Subject: =?utf-8?q?h=C3=A9llo?=\r\n\r\nbody\r\n");
        Meta::new(id, &env, &msg, "virus", "Eicar".into())
    }

    #[test]
    fn store_read_claim_release_delete() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::open(dir.path()).unwrap();
        let m = meta("abc123");
        let raw = b"Subject: x\r\n\r\nbody\r\n.\r\n";
        q.store(&m, raw, None, raw.len() as u64).unwrap();
        assert_eq!(m.subject, "h\u{e9}llo");
        let (back, data) = q.read("abc123").unwrap();
        assert_eq!(back, m);
        assert_eq!(data, raw);
        // No temporary file left; a second store of the same id is refused.
        assert_eq!(fs::read_dir(dir.path().join("msgs")).unwrap().count(), 1);
        assert!(q.store(&m, raw, None, raw.len() as u64).is_err());
        assert_eq!(q.stats().unwrap(), (1, m.size));

        let all = vec!["a@example.com".to_string(), "B@example.com".to_string()];
        let (claimed, not) = q.claim("abc123", &all, false, 1).unwrap();
        assert_eq!((claimed.len(), not.len()), (2, 0));
        // Claimed (an interrupted release looks the same): not again without force.
        let (claimed, not) = q.claim("abc123", &all, false, 2).unwrap();
        assert!(claimed.is_empty());
        assert_eq!(not[0].1.state, RELEASING);
        q.finish("abc123", "a@example.com", true, "250 ok", 3)
            .unwrap();
        q.finish("abc123", "b@example.com", false, "450 later", 3)
            .unwrap();
        let (claimed, _) = q.claim("abc123", &all, true, 4).unwrap();
        assert_eq!(claimed, vec!["B@example.com".to_string()]);
        // Another address becomes a recipient of its own.
        let (claimed, _) = q
            .claim("abc123", &["admin@example.com".into()], false, 5)
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let e = q.entry("abc123").unwrap();
        assert_eq!(e.recipients.len(), 3);
        assert!(!e.recipients[2].original);

        let f = Filter {
            recipient: Some("A@EXAMPLE.COM".into()),
            ..Default::default()
        };
        assert_eq!(q.list(&f).unwrap().len(), 1);
        let f = Filter {
            category: Some("spam".into()),
            ..Default::default()
        };
        assert!(q.list(&f).unwrap().is_empty());

        q.delete("abc123").unwrap();
        assert!(matches!(q.read("abc123"), Err(Error::NotFound(_))));
        assert_eq!(fs::read_dir(dir.path().join("msgs")).unwrap().count(), 0);
    }

    #[test]
    fn a_file_without_an_index_row_is_not_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::open(dir.path()).unwrap();
        fs::write(dir.path().join("msgs/zzz"), b"half").unwrap();
        fs::write(dir.path().join("msgs/.tmp-yyy"), b"half").unwrap();
        assert!(q.list(&Filter::default()).unwrap().is_empty());
        assert!(matches!(q.read("zzz"), Err(Error::NotFound(_))));
        // Young orphans are left alone (a store may be committing).
        assert_eq!(q.purge(0).unwrap(), (0, 0));
        assert!(q.path("../x").is_err());
    }

    #[test]
    fn purge_removes_what_is_past_retention() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::open(dir.path()).unwrap();
        let mut m = meta("old1");
        m.time = 100;
        q.store(&m, b"x\r\n", None, 3).unwrap();
        q.store(&meta("new1"), b"x\r\n", None, 3).unwrap();
        assert_eq!(q.purge(1000).unwrap(), (1, 0));
        let left: Vec<String> = q
            .list(&Filter::default())
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(left, vec!["new1".to_string()]);
    }

    #[test]
    fn a_short_spool_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::open(dir.path()).unwrap();
        assert!(q.store(&meta("short"), b"x\r\n", None, 10).is_err());
        assert_eq!(fs::read_dir(dir.path().join("msgs")).unwrap().count(), 0);
        assert_eq!(q.stats().unwrap(), (0, 0));
    }
}
