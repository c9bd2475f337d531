//! The quarantine in amavis's tables: the message in `quarantine` chunks (`chunk_ind` 1, 2 …)
//! with its `msgs` row (`quar_type` Q, `quar_loc` the mail_id) and `msgrcpt` rows, written in
//! one transaction: [`SqlQuarantine::store`] returns Ok only after the commit, so the client's
//! 250 can wait for it; an error (database down, timeout) is the caller's 451.
//!
//! Release from any node, once per recipient: [`SqlQuarantine::claim`] sets a recipient's
//! `msgrcpt.rs` to 'R' (released) in one conditional UPDATE that only one node can win, before
//! anything is sent; [`SqlQuarantine::finish`] with `released = false` puts the old value back
//! if the send failed. Not 'p' for "being released": amavis lists 'p' as pending and Modoboa
//! uses it for a user's release *request*, which an admin's release must be able to claim. A
//! node that dies between claim and send leaves 'R' with nothing sent; `force` releases again.

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::log::{insert_rcpts, maddr_key, unix_secs, write_records, LogRecord};
use super::metrics::{SqlMetrics, StmtKind};
use super::{code, on_pool, text, within, AnyRow, Backend, Error, Pool, SqlConfig, Stmt};

const INS_QUAR: Stmt =
    Stmt("INSERT INTO quarantine (partition_tag, mail_id, chunk_ind, mail_text) VALUES (?,?,?,?)");
const SEL_MSG: Stmt = Stmt("SELECT partition_tag FROM msgs WHERE mail_id=?");
const SEL_SECRET: Stmt = Stmt("SELECT secret_id FROM msgs WHERE mail_id=?");
const SEL_QUAR: Stmt =
    Stmt("SELECT mail_text FROM quarantine WHERE partition_tag=? AND mail_id=? ORDER BY chunk_ind");
const SEL_RCPTS: Stmt = Stmt(
    "SELECT msgrcpt.rseqnum AS rseqnum, maddr.email AS email, msgrcpt.rs AS rs \
     FROM msgrcpt JOIN maddr ON msgrcpt.rid=maddr.id \
     WHERE msgrcpt.partition_tag=? AND msgrcpt.mail_id=? ORDER BY msgrcpt.rseqnum",
);
// Held (' '), viewed ('V'), requested ('p') … anything but released or deleted.
const CLAIM: Stmt = Stmt(
    "UPDATE msgrcpt SET rs='R' WHERE partition_tag=? AND mail_id=? AND rseqnum=? \
     AND rs NOT IN ('R','D')",
);
const CLAIM_FORCE: Stmt =
    Stmt("UPDATE msgrcpt SET rs='R' WHERE partition_tag=? AND mail_id=? AND rseqnum=? AND rs<>'D'");
const UNCLAIM: Stmt =
    Stmt("UPDATE msgrcpt SET rs=? WHERE partition_tag=? AND mail_id=? AND rseqnum=? AND rs='R'");
// Retention, as amavis's README.sql suggests: old msgs rows, then what no msgs row refers to.
// The quarantine's rows (Q) and the log's (the rest) each have their own retention.
const PURGE_MSGS: Stmt = Stmt("DELETE FROM msgs WHERE time_num < ? AND quar_type='Q'");
const PURGE_LOG: Stmt =
    Stmt("DELETE FROM msgs WHERE time_num < ? AND COALESCE(quar_type,'') <> 'Q'");
const PURGE_RCPT: Stmt = Stmt(
    "DELETE FROM msgrcpt WHERE NOT EXISTS (SELECT 1 FROM msgs WHERE msgs.partition_tag=msgrcpt.partition_tag AND msgs.mail_id=msgrcpt.mail_id)",
);
const PURGE_QUAR: Stmt = Stmt(
    "DELETE FROM quarantine WHERE NOT EXISTS (SELECT 1 FROM msgs WHERE msgs.partition_tag=quarantine.partition_tag AND msgs.mail_id=quarantine.mail_id)",
);
const PURGE_MADDR: Stmt = Stmt(
    "DELETE FROM maddr WHERE NOT EXISTS (SELECT 1 FROM msgs WHERE sid=maddr.id) \
     AND NOT EXISTS (SELECT 1 FROM msgrcpt WHERE rid=maddr.id)",
);

/// One recipient of a quarantined message.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarRcpt {
    pub rseqnum: i64,
    pub addr: String,
    /// `msgrcpt.rs`: ' ' held, 'V' viewed, 'p' release requested (Modoboa), 'R' released,
    /// 'D' deleted. In [`Claim::claimed`], the value before the claim.
    pub rs: char,
}

/// What a claim got: the recipients this node may now send to, and the others.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claim {
    pub claimed: Vec<QuarRcpt>,
    pub refused: Vec<QuarRcpt>,
}

/// Rows deleted by a purge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub msgs: u64,
    pub msgrcpt: u64,
    pub quarantine: u64,
    pub maddr: u64,
}

/// The SQL quarantine of one node (any number of nodes share the database).
#[derive(Clone)]
pub struct SqlQuarantine {
    pool: Pool,
    /// Shared: every clone of the store (one per release, per message) reads the same.
    cfg: std::sync::Arc<SqlConfig>,
    metrics: SqlMetrics,
}

impl SqlQuarantine {
    pub fn new(pool: Pool, cfg: &SqlConfig, metrics: SqlMetrics) -> SqlQuarantine {
        SqlQuarantine {
            pool,
            cfg: std::sync::Arc::new(cfg.clone()),
            metrics,
        }
    }

    async fn timed<T>(
        &self,
        kind: StmtKind,
        fut: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let start = Instant::now();
        let r = within(self.cfg.timeout(), fut).await;
        self.metrics.observe(kind, start, &self.pool, &r);
        r
    }

    /// Stores `message` (read to its end) under `rec.mail_id` with `rec`'s msgs and msgrcpt
    /// rows (`quar_type` Q, `quar_loc` the mail_id), all in one transaction. Ok only once
    /// committed; Err leaves nothing behind. A mail_id already in `msgs` is an error.
    pub async fn store(
        &self,
        rec: &LogRecord,
        message: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<(), Error> {
        let mut rec = rec.clone();
        rec.quar_type = Some('Q');
        rec.quar_loc = rec.mail_id.clone();
        self.timed(StmtKind::QuarantineStore, self.store_tx(&rec, message))
            .await
    }

    async fn store_tx(
        &self,
        rec: &LogRecord,
        message: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<(), Error> {
        let backend = self.pool.backend();
        let ptag = self.cfg.partition_tag;
        let mut buf = vec![0u8; self.cfg.chunk_size];
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let mut pending = Vec::new();
            let one = std::slice::from_ref(rec);
            if !write_records!(backend, tx, one, ptag, pending).await?[0] {
                return Err(Error::Data(format!(
                    "mail_id {} is already in the database",
                    crate::escape::text(&rec.mail_id)
                )));
            }
            insert_rcpts!(backend, tx, ptag, pending).await?;
            let mut ind: i32 = 0;
            loop {
                let n = read_full(message, &mut buf).await?;
                if n == 0 && ind > 0 {
                    break;
                }
                ind += 1;
                sqlx::query(INS_QUAR.sql(backend))
                    .bind(ptag)
                    .bind(rec.mail_id.as_bytes().to_vec())
                    .bind(ind)
                    .bind(buf[..n].to_vec())
                    .execute(&mut *tx)
                    .await?;
                if n < buf.len() {
                    break;
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// The partition_tag of `mail_id` (amavis's `sel_msg`), if it is in `msgs`.
    async fn partition_of(&self, mail_id: &str) -> Result<Option<i32>, Error> {
        let backend = self.pool.backend();
        on_pool!(&self.pool, p => {
            let row = sqlx::query(SEL_MSG.sql(backend))
                .bind(mail_id.as_bytes().to_vec())
                .fetch_optional(p)
                .await?;
            match row {
                Some(r) => Ok(Some(r.int("partition_tag")?.unwrap_or(0) as i32)),
                None => Ok(None),
            }
        })
    }

    /// The `msgs.secret_id` of `mail_id` ("" when none was stored), None if it is not in
    /// `msgs`.
    pub async fn secret(&self, mail_id: &str) -> Result<Option<String>, Error> {
        self.timed(StmtKind::QuarantineFetch, async {
            let backend = self.pool.backend();
            on_pool!(&self.pool, p => {
                let rows = sqlx::query(SEL_SECRET.sql(backend))
                    .bind(mail_id.as_bytes().to_vec())
                    .fetch_all(p)
                    .await?;
                match rows.first() {
                    Some(r) => Ok(Some(text(r, "secret_id")?.unwrap_or_default())),
                    None => Ok(None),
                }
            })
        })
        .await
    }

    /// The stored message (its chunks in order), None if `mail_id` has none.
    pub async fn fetch(&self, mail_id: &str) -> Result<Option<Vec<u8>>, Error> {
        self.timed(StmtKind::QuarantineFetch, async {
            let Some(ptag) = self.partition_of(mail_id).await? else {
                return Ok(None);
            };
            let backend = self.pool.backend();
            let chunks = on_pool!(&self.pool, p => {
                let rows = sqlx::query(SEL_QUAR.sql(backend))
                    .bind(ptag)
                    .bind(mail_id.as_bytes().to_vec())
                    .fetch_all(p)
                    .await?;
                rows.iter()
                    .map(|r| r.bytes("mail_text").map(Option::unwrap_or_default))
                    .collect::<Result<Vec<_>, Error>>()?
            });
            if chunks.is_empty() {
                return Ok(None);
            }
            Ok(Some(chunks.concat()))
        })
        .await
    }

    /// The recipients of `mail_id` with their release status.
    pub async fn recipients(&self, mail_id: &str) -> Result<Vec<QuarRcpt>, Error> {
        let Some(ptag) = self.partition_of(mail_id).await? else {
            return Ok(Vec::new());
        };
        self.recipients_in(ptag, mail_id).await
    }

    async fn recipients_in(&self, ptag: i32, mail_id: &str) -> Result<Vec<QuarRcpt>, Error> {
        let backend = self.pool.backend();
        on_pool!(&self.pool, p => {
            let rows = sqlx::query(SEL_RCPTS.sql(backend))
                .bind(ptag)
                .bind(mail_id.as_bytes().to_vec())
                .fetch_all(p)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(QuarRcpt {
                        rseqnum: r.int("rseqnum")?.unwrap_or(0),
                        addr: text(r, "email")?.unwrap_or_default(),
                        rs: code(r, "rs")?,
                    })
                })
                .collect()
        })
    }

    /// Claims the recipients of `mail_id` whose address is one of `addresses` (all of them if
    /// empty) for a release: each one not yet released (nor deleted) becomes 'R' in a single
    /// UPDATE, so of two nodes releasing at once only one gets it. With `force`, released ones
    /// are claimed again (a release interrupted after its claim).
    pub async fn claim(
        &self,
        mail_id: &str,
        addresses: &[String],
        force: bool,
    ) -> Result<Claim, Error> {
        self.timed(StmtKind::Claim, async {
            let Some(ptag) = self.partition_of(mail_id).await? else {
                return Ok(Claim::default());
            };
            let wanted: Vec<Vec<u8>> = addresses.iter().map(|a| maddr_key(a).0).collect();
            let backend = self.pool.backend();
            let stmt = if force { CLAIM_FORCE } else { CLAIM };
            let mut claim = Claim::default();
            for r in self.recipients_in(ptag, mail_id).await? {
                if !wanted.is_empty() && !wanted.contains(&maddr_key(&r.addr).0) {
                    continue;
                }
                let n = on_pool!(&self.pool, p => sqlx::query(stmt.sql(backend))
                    .bind(ptag)
                    .bind(mail_id.as_bytes().to_vec())
                    .bind(r.rseqnum as i32)
                    .execute(p)
                    .await?
                    .rows_affected());
                if n > 0 {
                    claim.claimed.push(r);
                } else {
                    claim.refused.push(r);
                }
            }
            Ok(claim)
        })
        .await
    }

    /// Ends the release of a claimed recipient: if it was not sent, its `rs` goes back to
    /// what it was before the claim (' ' if that was 'R', a forced claim); if sent it stays 'R'.
    pub async fn finish(
        &self,
        mail_id: &str,
        rcpt: &QuarRcpt,
        released: bool,
    ) -> Result<(), Error> {
        if released {
            return Ok(());
        }
        self.timed(StmtKind::Claim, async {
            let Some(ptag) = self.partition_of(mail_id).await? else {
                return Ok(());
            };
            let backend = self.pool.backend();
            let rs = if rcpt.rs == 'R' { ' ' } else { rcpt.rs };
            on_pool!(&self.pool, p => sqlx::query(UNCLAIM.sql(backend))
                .bind(rs.to_string())
                .bind(ptag)
                .bind(mail_id.as_bytes().to_vec())
                .bind(rcpt.rseqnum as i32)
                .execute(p)
                .await?
                .rows_affected());
            Ok(())
        })
        .await
    }

    /// Deletes the quarantined messages (`quar_type` Q) received before `before` with their
    /// recipients and chunks, and the addresses nothing refers to any more.
    pub async fn purge(&self, before: std::time::SystemTime) -> Result<Purged, Error> {
        self.purge_rows(PURGE_MSGS, before).await
    }

    /// Deletes the log's messages (all but the quarantine's) received before `before` with
    /// their recipients, and the addresses nothing refers to any more.
    pub async fn purge_log(&self, before: std::time::SystemTime) -> Result<Purged, Error> {
        self.purge_rows(PURGE_LOG, before).await
    }

    async fn purge_rows(&self, msgs: Stmt, before: std::time::SystemTime) -> Result<Purged, Error> {
        let cutoff = unix_secs(before);
        self.timed(StmtKind::Purge, async {
            let backend = self.pool.backend();
            on_pool!(&self.pool, p => {
                let mut tx = p.begin().await?;
                let mut run = async |stmt: Stmt, cutoff: Option<i64>| {
                    let mut q = sqlx::query(stmt.sql(backend));
                    if let Some(c) = cutoff {
                        q = q.bind(c);
                    }
                    Ok::<u64, Error>(q.execute(&mut *tx).await?.rows_affected())
                };
                let out = Purged {
                    msgs: run(msgs, Some(cutoff)).await?,
                    msgrcpt: run(PURGE_RCPT, None).await?,
                    quarantine: run(PURGE_QUAR, None).await?,
                    maddr: run(PURGE_MADDR, None).await?,
                };
                tx.commit().await?;
                Ok(out)
            })
        })
        .await
    }

    /// The backend (tests, the CLI).
    pub fn backend(&self) -> Backend {
        self.pool.backend()
    }

    /// The quarantined messages `f` selects (those with their first chunk), oldest first,
    /// each with its recipients.
    pub async fn list(&self, f: &QuarFilter) -> Result<Vec<QuarEntry>, Error> {
        self.timed(StmtKind::QuarantineFetch, async {
            let mut sql = String::from(SEL_ENTRIES);
            let mut params: Vec<Param> = Vec::new();
            if let Some(id) = &f.mail_id {
                sql.push_str(" AND msgs.mail_id=?");
                params.push(Param::Bytes(id.as_bytes().to_vec()));
            }
            if let Some(t) = f.since {
                sql.push_str(" AND msgs.time_num>=?");
                params.push(Param::Int(t));
            }
            if !f.content.is_empty() {
                let marks = vec!["?"; f.content.len()].join(",");
                sql.push_str(&format!(" AND msgs.content IN ({marks})"));
                params.extend(f.content.iter().map(|c| Param::Text(c.to_string())));
            }
            if let Some(r) = &f.recipient {
                sql.push_str(
                    " AND EXISTS (SELECT 1 FROM msgrcpt JOIN maddr AS r ON msgrcpt.rid=r.id \
                     WHERE msgrcpt.partition_tag=msgs.partition_tag \
                     AND msgrcpt.mail_id=msgs.mail_id AND r.email=?)",
                );
                params.push(Param::Bytes(maddr_key(r).0));
            }
            sql.push_str(" ORDER BY msgs.time_num, msgs.mail_id");
            let backend = self.pool.backend();
            let mut out: Vec<(i32, QuarEntry)> = on_pool!(&self.pool, p => {
                let mut q = sqlx::query(super::dynamic_sql(&sql, backend));
                for v in params {
                    q = match v {
                        Param::Int(i) => q.bind(i),
                        Param::Bytes(b) => q.bind(b),
                        Param::Text(t) => q.bind(t),
                    };
                }
                let rows = q.fetch_all(p).await?;
                rows.iter().map(entry_of).collect::<Result<Vec<_>, Error>>()?
            });
            for (ptag, e) in &mut out {
                e.recipients = self.recipients_in(*ptag, &e.mail_id).await?;
            }
            Ok(out.into_iter().map(|(_, e)| e).collect())
        })
        .await
    }

    /// One quarantined message's entry, None if there is none (or its chunks are gone).
    pub async fn entry(&self, mail_id: &str) -> Result<Option<QuarEntry>, Error> {
        let f = QuarFilter {
            mail_id: Some(mail_id.to_owned()),
            ..QuarFilter::default()
        };
        Ok(self.list(&f).await?.into_iter().next())
    }

    /// Deletes the message of `mail_id` from the quarantine (its chunks), and marks its
    /// recipients not released 'D' (deleted, as amavis's UIs do); its log rows stay. False if
    /// it had no chunks.
    pub async fn delete(&self, mail_id: &str) -> Result<bool, Error> {
        self.timed(StmtKind::Purge, async {
            let Some(ptag) = self.partition_of(mail_id).await? else {
                return Ok(false);
            };
            let backend = self.pool.backend();
            let id = mail_id.as_bytes().to_vec();
            on_pool!(&self.pool, p => {
                let mut tx = p.begin().await?;
                let n = sqlx::query(DEL_QUAR.sql(backend))
                    .bind(ptag)
                    .bind(id.clone())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query(DEL_RCPT.sql(backend))
                    .bind(ptag)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(n > 0)
            })
        })
        .await
    }

    /// Quarantined messages and the bytes of their messages, for the gauges.
    pub async fn stats(&self) -> Result<(u64, u64), Error> {
        let backend = self.pool.backend();
        let stmt = match backend {
            Backend::Postgres => STATS_PG,
            Backend::MySql => STATS_MY,
        };
        self.timed(StmtKind::QuarantineFetch, async {
            on_pool!(&self.pool, p => {
                let row = sqlx::query(stmt.sql(backend)).fetch_one(p).await?;
                Ok((
                    row.int("n")?.unwrap_or(0).max(0) as u64,
                    row.int("bytes")?.unwrap_or(0).max(0) as u64,
                ))
            })
        })
        .await
    }
}

const SEL_ENTRIES: &str = "SELECT msgs.partition_tag AS partition_tag, msgs.mail_id AS mail_id, \
     msgs.time_num AS time_num, msgs.content AS content, msgs.size AS size, \
     msgs.spam_level AS spam_level, msgs.subject AS subject, msgs.host AS host, \
     sender.email AS sender FROM msgs LEFT JOIN maddr AS sender ON msgs.sid=sender.id \
     WHERE msgs.quar_type='Q' AND EXISTS (SELECT 1 FROM quarantine \
     WHERE quarantine.partition_tag=msgs.partition_tag AND quarantine.mail_id=msgs.mail_id \
     AND quarantine.chunk_ind=1)";
const DEL_QUAR: Stmt = Stmt("DELETE FROM quarantine WHERE partition_tag=? AND mail_id=?");
const DEL_RCPT: Stmt =
    Stmt("UPDATE msgrcpt SET rs='D' WHERE partition_tag=? AND mail_id=? AND rs<>'R'");
// SUM is a DECIMAL on MySQL, which sqlx reads only as a decimal type: cast per backend.
const STATS_PG: Stmt = Stmt(
    "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(size),0) AS bigint) AS bytes \
     FROM msgs WHERE quar_type='Q' AND EXISTS (SELECT 1 FROM quarantine \
     WHERE quarantine.partition_tag=msgs.partition_tag AND quarantine.mail_id=msgs.mail_id \
     AND quarantine.chunk_ind=1)",
);
const STATS_MY: Stmt = Stmt(
    "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(size),0) AS SIGNED) AS bytes \
     FROM msgs WHERE quar_type='Q' AND EXISTS (SELECT 1 FROM quarantine \
     WHERE quarantine.partition_tag=msgs.partition_tag AND quarantine.mail_id=msgs.mail_id \
     AND quarantine.chunk_ind=1)",
);

/// What [`SqlQuarantine::list`] keeps.
#[derive(Debug, Clone, Default)]
pub struct QuarFilter {
    pub mail_id: Option<String>,
    /// `msgs.content` codes (V, B, S …); empty: all.
    pub content: Vec<char>,
    /// A recipient's address (as `maddr` keeps it: lowercased).
    pub recipient: Option<String>,
    /// `time_num` at least.
    pub since: Option<i64>,
}

/// A quarantined message as `msgs` and `msgrcpt` describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarEntry {
    pub mail_id: String,
    pub time: i64,
    /// `msgs.content`: V, B, U, S, Y …
    pub content: char,
    pub size: u64,
    pub spam_level: Option<f64>,
    /// The envelope sender ("" for <>).
    pub sender: String,
    pub subject: String,
    /// The node that stored it.
    pub host: String,
    pub recipients: Vec<QuarRcpt>,
}

enum Param {
    Int(i64),
    Bytes(Vec<u8>),
    Text(String),
}

fn entry_of<R: AnyRow>(r: &R) -> Result<(i32, QuarEntry), Error> {
    Ok((
        r.int("partition_tag")?.unwrap_or(0) as i32,
        QuarEntry {
            mail_id: text(r, "mail_id")?.unwrap_or_default(),
            time: r.int("time_num")?.unwrap_or(0),
            content: code(r, "content")?,
            size: r.int("size")?.unwrap_or(0).max(0) as u64,
            spam_level: r.float("spam_level")?,
            sender: text(r, "sender")?.unwrap_or_default(),
            subject: text(r, "subject")?.unwrap_or_default(),
            host: text(r, "host")?.unwrap_or_default(),
            recipients: Vec::new(),
        },
    ))
}

/// Reads until `buf` is full or the end; the bytes read.
async fn read_full(r: &mut (dyn AsyncRead + Unpin + Send), buf: &mut [u8]) -> Result<usize, Error> {
    let mut n = 0;
    while n < buf.len() {
        let k = r.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}
