//! The embedded store: one SQLite file (WAL mode) written by one thread, which takes every
//! decision waiting and runs them in one transaction.
//!
//! Why SQLite and not redb: the store must survive `kill -9` with every answered decision in
//! it, answer in well under a millisecond, and let `postsift greylist …` read and write it
//! while the daemon runs. redb's only durable commit fsyncs (about 4 ms on this machine's
//! disk, so one answer per fsync), its non-durable commits are rolled back when the process
//! dies, and it locks the file to one process. SQLite in WAL mode with `synchronous=NORMAL`
//! commits by appending to the WAL: a commit is in the OS's page cache when the answer goes
//! out, so it survives the process being killed; only a power loss can lose the last
//! transactions before a checkpoint's fsync (a triplet greylisted again, never a corrupt
//! file). Checkpoints run on their own connection, off the decision path. Another process
//! (the CLI) opens the same file under SQLite's locking.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::decide::{self, Client, Outcome, Params, Triplet};
use super::record::{Entry, Error};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS triplets (key TEXT PRIMARY KEY, first INTEGER NOT NULL, last INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS clients (ip TEXT PRIMARY KEY, count INTEGER NOT NULL, last INTEGER NOT NULL) WITHOUT ROWID;
";

fn sql(e: rusqlite::Error) -> Error {
    Error::Embedded(e.to_string())
}

pub(super) fn open(path: &Path) -> Result<Connection, Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsmode::create_private_dir(dir)
            .map_err(|e| Error::Embedded(format!("cannot create {}: {e}", dir.display())))?;
    }
    // 0600 before SQLite opens it: its -wal and -shm take the database file's mode.
    crate::fsmode::create_private_file(path)
        .map_err(|e| Error::Embedded(format!("cannot create {}: {e}", path.display())))?;
    let c =
        Connection::open(path).map_err(|e| Error::Embedded(format!("{}: {e}", path.display())))?;
    c.busy_timeout(Duration::from_secs(5)).map_err(sql)?;
    c.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
    c.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sql)?;
    c.execute_batch(SCHEMA).map_err(sql)?;
    Ok(c)
}

/// WAL size at which the writer checkpoints itself. Under steady load the checkpointer's
/// passive checkpoints never see the WAL fully copied (new frames keep coming), so SQLite
/// cannot start the WAL over and it would grow without end; the writer's own checkpoint,
/// between two transactions, completes, and the next transaction restarts the WAL (truncated
/// to this size by `journal_size_limit`). Most frames are already copied by then, so it costs
/// little more than one fsync, once per some tens of thousands of decisions.
const WAL_LIMIT: u64 = 64 << 20;

type Reply<T> = oneshot::Sender<Result<T, Error>>;

enum Job {
    Check {
        params: Params,
        now: i64,
        triplet: String,
        client: String,
        reply: Reply<Outcome>,
    },
    Whitelist {
        client: String,
        count: u32,
        now: i64,
        reply: Reply<()>,
    },
    Purge {
        params: Params,
        now: i64,
        reply: Reply<(u64, u64)>,
    },
    Evict {
        max: u64,
        reply: Reply<u64>,
    },
}

/// Handle to the writer thread; the thread ends when the last handle is dropped.
pub struct Embedded {
    jobs: std_mpsc::Sender<Job>,
    /// Dropped with the store: the checkpointer's channel closes and it ends.
    _stop_checkpoints: std_mpsc::Sender<()>,
    pub path: PathBuf,
}

impl Embedded {
    pub fn open(path: &Path) -> Result<Embedded, Error> {
        let conn = open(path)?;
        // Checkpoints happen on the checkpointer's connection, not in a decision's commit; the
        // writer checkpoints only when the WAL passes WAL_LIMIT (see `writer`).
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(sql)?;
        conn.pragma_update(None, "journal_size_limit", WAL_LIMIT as i64)
            .map_err(sql)?;
        let (jobs, rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("greylist-store".into())
            .spawn(move || writer(conn, rx))
            .map_err(|e| Error::Embedded(format!("cannot start the store thread: {e}")))?;
        let cp = open(path)?;
        let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("greylist-checkpoint".into())
            .spawn(move || checkpointer(cp, stop_rx))
            .map_err(|e| Error::Embedded(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Embedded {
            jobs,
            _stop_checkpoints: stop_tx,
            path: path.to_owned(),
        })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Job) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(make(tx))
            .map_err(|_| Error::Embedded("store thread gone".into()))?;
        rx.await
            .map_err(|_| Error::Embedded("store thread gone".into()))?
    }

    pub async fn check(
        &self,
        params: Params,
        now: i64,
        triplet: String,
        client: String,
    ) -> Result<Outcome, Error> {
        self.call(|reply| Job::Check {
            params,
            now,
            triplet,
            client,
            reply,
        })
        .await
    }

    pub async fn whitelist(&self, client: String, count: u32, now: i64) -> Result<(), Error> {
        self.call(|reply| Job::Whitelist {
            client,
            count,
            now,
            reply,
        })
        .await
    }

    /// On a connection of its own: a reader never holds up the decisions.
    pub async fn list(&self) -> Result<Vec<Entry>, Error> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || list(&open(&path)?).map_err(sql))
            .await
            .map_err(|e| Error::Embedded(e.to_string()))?
    }

    pub async fn purge(&self, params: Params, now: i64) -> Result<(u64, u64), Error> {
        self.call(|reply| Job::Purge { params, now, reply }).await
    }

    /// Past `max` triplets, deletes the least recently seen down to nine tenths of `max`;
    /// returns how many went.
    pub async fn evict(&self, max: u64) -> Result<u64, Error> {
        self.call(|reply| Job::Evict { max, reply }).await
    }

    /// On a connection of its own, like [`Embedded::list`].
    pub async fn count(&self) -> Result<(u64, u64), Error> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || count(&open(&path)?).map_err(sql))
            .await
            .map_err(|e| Error::Embedded(e.to_string()))?
    }
}

fn checkpointer(conn: Connection, stop: std_mpsc::Receiver<()>) {
    loop {
        match stop.recv_timeout(Duration::from_secs(1)) {
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "greylist store: checkpoint failed");
                }
            }
            _ => return,
        }
    }
}

fn check_one(
    tx: &rusqlite::Transaction,
    p: &Params,
    now: i64,
    key: &str,
    ip: &str,
) -> rusqlite::Result<Outcome> {
    let triplet = tx
        .prepare_cached("SELECT first, last FROM triplets WHERE key = ?1")?
        .query_row([key], |r| {
            Ok(Triplet {
                first: r.get(0)?,
                last: r.get(1)?,
            })
        })
        .optional()?;
    let client = if p.awl_clients > 0 {
        tx.prepare_cached("SELECT count, last FROM clients WHERE ip = ?1")?
            .query_row([ip], |r| {
                Ok(Client {
                    count: r.get(0)?,
                    last: r.get(1)?,
                })
            })
            .optional()?
    } else {
        None
    };
    let (outcome, update) = decide::decide(p, now, triplet, client);
    if let Some(t) = update.triplet {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO triplets (key, first, last) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![key, t.first, t.last])?;
    }
    if let Some(c) = update.client {
        tx.prepare_cached("INSERT OR REPLACE INTO clients (ip, count, last) VALUES (?1, ?2, ?3)")?
            .execute(params![ip, c.count, c.last])?;
    }
    Ok(outcome)
}

fn writer(mut conn: Connection, jobs: std_mpsc::Receiver<Job>) {
    let wal = conn.path().map(|p| PathBuf::from(format!("{p}-wal")));
    let mut pending = Vec::new();
    let mut batches = 0u64;
    while let Ok(job) = jobs.recv() {
        batches += 1;
        if batches.is_multiple_of(64) {
            let big = wal
                .as_ref()
                .and_then(|w| std::fs::metadata(w).ok())
                .is_some_and(|m| m.len() > WAL_LIMIT);
            if big {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "greylist store: checkpoint failed");
                }
            }
        }
        pending.push(job);
        // Everything that queued up meanwhile goes into the same transaction.
        pending.extend(jobs.try_iter().take(1023));
        let mut checks = Vec::new();
        for job in pending.drain(..) {
            match job {
                Job::Check {
                    params,
                    now,
                    triplet,
                    client,
                    reply,
                } => checks.push((params, now, triplet, client, reply)),
                other => other_job(&mut conn, other),
            }
        }
        if checks.is_empty() {
            continue;
        }
        let result = (|| {
            let tx = conn.transaction()?;
            let mut out = Vec::with_capacity(checks.len());
            for (p, now, key, ip, _) in &checks {
                out.push(check_one(&tx, p, *now, key, ip)?);
            }
            tx.commit()?;
            Ok::<_, rusqlite::Error>(out)
        })();
        match result {
            Ok(outcomes) => {
                for ((.., reply), o) in checks.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(o));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (.., reply) in checks {
                    let _ = reply.send(Err(Error::Embedded(msg.clone())));
                }
            }
        }
    }
}

fn other_job(conn: &mut Connection, job: Job) {
    match job {
        Job::Check { .. } => unreachable!("batched by the caller"),
        Job::Whitelist {
            client,
            count,
            now,
            reply,
        } => {
            let r = conn
                .execute(
                    "INSERT OR REPLACE INTO clients (ip, count, last) VALUES (?1, ?2, ?3)",
                    params![client, count, now],
                )
                .map(|_| ())
                .map_err(sql);
            let _ = reply.send(r);
        }
        Job::Purge { params, now, reply } => {
            let _ = reply.send(purge(conn, &params, now).map_err(sql));
        }
        Job::Evict { max, reply } => {
            let _ = reply.send(evict(conn, max).map_err(sql));
        }
    }
}

pub(super) fn list(conn: &Connection) -> rusqlite::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut s = conn.prepare("SELECT key, first, last FROM triplets ORDER BY key")?;
    for r in s.query_map([], |r| {
        Ok(Entry::Triplet {
            key: r.get(0)?,
            first: r.get(1)?,
            last: r.get(2)?,
        })
    })? {
        out.push(r?);
    }
    let mut s = conn.prepare("SELECT ip, count, last FROM clients ORDER BY ip")?;
    for r in s.query_map([], |r| {
        Ok(Entry::Client {
            ip: r.get(0)?,
            count: r.get(1)?,
            last: r.get(2)?,
        })
    })? {
        out.push(r?);
    }
    Ok(out)
}

/// postgrey's maintenance: triplets unseen for `max_age`, unpassed ones unseen for
/// `retry_window`, clients unseen for `max_age`. Returns (triplets, clients) deleted.
pub(super) fn purge(conn: &mut Connection, p: &Params, now: i64) -> rusqlite::Result<(u64, u64)> {
    let tx = conn.transaction()?;
    let t = tx.execute(
        "DELETE FROM triplets WHERE ?1 - last > ?2 OR (last - first < ?3 AND ?1 - last > ?4)",
        params![now, p.max_age, p.delay, p.retry_window],
    )?;
    let c = tx.execute(
        "DELETE FROM clients WHERE ?1 - last > ?2",
        params![now, p.max_age],
    )?;
    tx.commit()?;
    Ok((t as u64, c as u64))
}

/// The store's size cap: past `max` triplets, the least recently seen go, down to nine tenths
/// of `max` (so the next check does not find it full again at once).
pub(super) fn evict(conn: &mut Connection, max: u64) -> rusqlite::Result<u64> {
    let n: i64 = conn.query_row("SELECT count(*) FROM triplets", [], |r| r.get(0))?;
    let n = n as u64;
    if max == 0 || n <= max {
        return Ok(0);
    }
    let gone = n - max + max / 10;
    let tx = conn.transaction()?;
    let d = tx.execute(
        "DELETE FROM triplets WHERE key IN (SELECT key FROM triplets ORDER BY last LIMIT ?1)",
        params![gone as i64],
    )?;
    tx.commit()?;
    Ok(d as u64)
}

pub(super) fn count(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    let t: i64 = conn.query_row("SELECT count(*) FROM triplets", [], |r| r.get(0))?;
    let c: i64 = conn.query_row("SELECT count(*) FROM clients", [], |r| r.get(0))?;
    Ok((t.max(0) as u64, c.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 17: the store had no size cap (200,000 distinct triplets made 86 MB). Past
    /// `max_triplets` the least recently seen go first.
    #[test]
    fn greylist_store_grew_without_a_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir.path().join("greylist.db")).unwrap();
        for i in 0..150i64 {
            conn.execute(
                "INSERT INTO triplets (key, first, last) VALUES (?1, ?2, ?2)",
                params![
                    format!("192.0.2.0/a{i}@example.org/b@example.com"),
                    1000 + i
                ],
            )
            .unwrap();
        }
        assert_eq!(evict(&mut conn, 200).unwrap(), 0, "under the cap");
        assert_eq!(evict(&mut conn, 0).unwrap(), 0, "0: no cap");
        assert_eq!(
            evict(&mut conn, 100).unwrap(),
            60,
            "down to nine tenths of 100"
        );
        let (t, _) = count(&conn).unwrap();
        assert_eq!(t, 90);
        let oldest: i64 = conn
            .query_row("SELECT min(last) FROM triplets", [], |r| r.get(0))
            .unwrap();
        assert_eq!(oldest, 1060, "the least recently seen went");
    }
}
