//! The message log in amavis's tables: per message one `msgs` row and one `msgrcpt` row per
//! recipient, the addresses in `maddr` (domain reversed: `com.example`), with amavis's codes.
//!
//! Off the message's path: [`LogHandle::submit`] only puts the record in a bounded channel
//! (`sql.log_backlog`); one task writes batches of up to `sql.log_batch` records per
//! transaction. A database that is down or slow keeps the batch and retries with backoff while
//! the channel fills; once full, new records are dropped and counted
//! (`postsift_sql_log_dropped_total{reason="backlog_full"}`), so mail never waits for the log.
//! A record the database refuses (not an outage) is dropped alone, counted as `refused`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::metrics::{SqlMetrics, StmtKind};
use super::{on_pool, truncate, within, Backend, Error, Pool, SqlConfig, Stmt};

/// amavis's content categories (`msgs.content`, `msgrcpt.content`), worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// V: virus.
    Virus,
    /// B: banned part.
    Banned,
    /// U: unchecked (a scanner failed, an archive could not be opened).
    Unchecked,
    /// S: spam at or above the kill level.
    Spam,
    /// Y: spammy, at or above tag2.
    Spammy,
    /// M: bad MIME.
    BadMime,
    /// H: bad header.
    BadHeader,
    /// O: oversized.
    Oversized,
    /// T: MTA error.
    MtaError,
    /// C: clean.
    Clean,
}

impl Content {
    pub fn code(self) -> char {
        match self {
            Content::Virus => 'V',
            Content::Banned => 'B',
            Content::Unchecked => 'U',
            Content::Spam => 'S',
            Content::Spammy => 'Y',
            Content::BadMime => 'M',
            Content::BadHeader => 'H',
            Content::Oversized => 'O',
            Content::MtaError => 'T',
            Content::Clean => 'C',
        }
    }
}

/// amavis's delivery status (`msgrcpt.ds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ds {
    Pass,
    Reject,
    Bounce,
    Discard,
    Tempfail,
}

impl Ds {
    pub fn code(self) -> char {
        match self {
            Ds::Pass => 'P',
            Ds::Reject => 'R',
            Ds::Bounce => 'B',
            Ds::Discard => 'D',
            Ds::Tempfail => 'T',
        }
    }

    /// amavis's rule (Out/SQL/Log.pm): a 4xx reply is T; a 5xx is B if the message was bounced
    /// (a DSN sent) and R otherwise; a pass with 2xx is P; a discard is D.
    pub fn of(reply_code: u16, discarded: bool, bounced: bool) -> Ds {
        match reply_code / 100 {
            4 => Ds::Tempfail,
            5 if bounced => Ds::Bounce,
            5 => Ds::Reject,
            _ if discarded => Ds::Discard,
            _ => Ds::Pass,
        }
    }
}

/// One recipient of a logged message.
#[derive(Debug, Clone, PartialEq)]
pub struct RcptRecord {
    /// The envelope address (RCPT TO, without <>).
    pub addr: String,
    /// A local recipient (`is_local` Y/N).
    pub is_local: bool,
    pub content: Content,
    pub ds: Ds,
    /// Sender blacklisted / whitelisted by this recipient (`bl`, `wl`).
    pub blacklisted: bool,
    pub whitelisted: bool,
    /// This recipient's total spam score (`bspam_level`).
    pub bspam_level: Option<f32>,
    /// The SMTP reply given for it (`smtp_resp`).
    pub smtp_resp: String,
}

/// One message as amavis logs it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// amavis's long-term id (`msgs.mail_id`, 12 characters by default), also the quarantine id.
    pub mail_id: String,
    /// The release secret (`msgs.secret_id`), may be empty.
    pub secret_id: String,
    /// The id in the log lines (`am_id`), at most 20 characters.
    pub am_id: String,
    /// When the message was received.
    pub time: SystemTime,
    /// This node (`server.hostname`).
    pub host: String,
    /// The policy bank names, comma-separated (amavis's `%p`).
    pub policy: String,
    pub client_addr: String,
    pub size: u64,
    /// From inside or authenticated.
    pub originating: bool,
    pub content: Content,
    /// How it was quarantined: None, or Some('Q') (SQL), Some('F') (file) …
    pub quar_type: Option<char>,
    pub quar_loc: String,
    /// A DSN sent: Some('Y'), Some('N'), Some('q') (quenched); amavis writes N when none.
    pub dsn_sent: Option<char>,
    /// The spam score without per-recipient boosts.
    pub spam_level: Option<f32>,
    pub message_id: String,
    /// The From and Subject header fields, decoded to UTF-8.
    pub from_addr: String,
    pub subject: String,
    /// The envelope sender ("" for <>).
    pub sender: String,
    pub recipients: Vec<RcptRecord>,
}

/// An address as amavis keeps it in `maddr`: the local part lowercased, the domain lowercased
/// without a leading `@` or trailing dots, at most 255 bytes, control characters as `?`; and
/// the domain with its labels reversed (`sub.example.com` → `com.example.sub`).
pub fn maddr_key(addr: &str) -> (Vec<u8>, String) {
    if addr.is_empty() {
        return (Vec::new(), String::new());
    }
    let (local, domain) = match addr.rfind('@') {
        Some(i) => (&addr[..i], &addr[i + 1..]),
        None => (addr, ""),
    };
    let domain = domain.trim_start_matches('@').trim_end_matches('.');
    let domain = domain.to_lowercase();
    let naddr: String = format!("{}@{}", local.to_lowercase(), domain)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let naddr = truncate(&naddr, 255).as_bytes().to_vec();
    let reversed = domain.rsplit('.').collect::<Vec<_>>().join(".");
    (naddr, truncate(&reversed, 255).to_string())
}

/// `time` as seconds since the epoch.
pub fn unix_secs(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `msgs.time_iso`: a `timestamptz` on PostgreSQL (given as ISO 8601 text), amavis's
/// `char(16)` `YYYYMMDDTHHMMSSZ` on MySQL.
pub(crate) fn time_iso(time: SystemTime, backend: Backend) -> String {
    let t = chrono::DateTime::<chrono::Utc>::from(time);
    match backend {
        Backend::Postgres => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Backend::MySql => t.format("%Y%m%dT%H%M%SZ").to_string(),
    }
}

pub(crate) const SEL_ADR: Stmt = Stmt("SELECT id FROM maddr WHERE partition_tag=? AND email=?");
pub(crate) const INS_ADR_PG: Stmt =
    Stmt("INSERT INTO maddr (partition_tag, email, domain) VALUES (?,?,?) ON CONFLICT DO NOTHING");
pub(crate) const INS_ADR_MY: Stmt =
    Stmt("INSERT IGNORE INTO maddr (partition_tag, email, domain) VALUES (?,?,?)");
// amavis's ins_msg and upd_msg in one: postsift knows everything when it logs.
pub(crate) const INS_MSG_PG: Stmt = Stmt(
    "INSERT INTO msgs (partition_tag, mail_id, secret_id, am_id, time_num, time_iso, sid, \
     policy, client_addr, size, originating, content, quar_type, quar_loc, dsn_sent, \
     spam_level, message_id, from_addr, subject, host) \
     VALUES (?,?,?,?,?,CAST(? AS timestamptz),?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
);
pub(crate) const INS_MSG_MY: Stmt = Stmt(
    "INSERT IGNORE INTO msgs (partition_tag, mail_id, secret_id, am_id, time_num, time_iso, \
     sid, policy, client_addr, size, originating, content, quar_type, quar_loc, dsn_sent, \
     spam_level, message_id, from_addr, subject, host) \
     VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
);
pub(crate) const SEL_RCP_IDS: Stmt =
    Stmt("SELECT rid, rseqnum FROM msgrcpt WHERE partition_tag=? AND mail_id=?");
pub(crate) const INS_RCP: Stmt = Stmt(
    "INSERT INTO msgrcpt (partition_tag, mail_id, rseqnum, rid, is_local, content, ds, rs, \
     bl, wl, bspam_level, smtp_resp) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
);

/// `msgrcpt` rows per multi-row INSERT (12 values each: far below both databases' limits).
pub(crate) const RCPT_ROWS_PER_INSERT: usize = 200;

/// A `msgrcpt` row waiting for [`insert_rcpts!`]: a batch writes its recipients in a few
/// multi-row INSERTs instead of one statement each.
pub(crate) struct RcptRow {
    pub mail_id: Vec<u8>,
    pub seq: i32,
    pub rid: i64,
    pub is_local: &'static str,
    pub content: String,
    pub ds: String,
    pub bl: &'static str,
    pub wl: &'static str,
    pub bspam_level: f32,
    pub smtp_resp: String,
}

/// `INSERT INTO msgrcpt … VALUES (…),(…)` for `n` rows.
pub(crate) fn rcpt_insert_sql(n: usize) -> String {
    let head = INS_RCP.0.split(" VALUES ").next().unwrap_or(INS_RCP.0);
    let row = "(?,?,?,?,?,?,?,?,?,?,?,?)";
    format!("{head} VALUES {}", vec![row; n].join(","))
}

/// Inserts the pending `msgrcpt` rows `$rows` (a `Vec<RcptRow>`, emptied) in transaction
/// `$tx`, [`RCPT_ROWS_PER_INSERT`] per statement.
macro_rules! insert_rcpts {
    ($backend:expr, $tx:expr, $ptag:expr, $rows:expr) => {
        async {
            let (backend, ptag): ($crate::sql::Backend, i32) = ($backend, $ptag);
            let rows: Vec<$crate::sql::log::RcptRow> = std::mem::take(&mut $rows);
            for chunk in rows.chunks($crate::sql::log::RCPT_ROWS_PER_INSERT) {
                let sql = $crate::sql::log::rcpt_insert_sql(chunk.len());
                let mut q = sqlx::query($crate::sql::dynamic_sql(&sql, backend));
                for r in chunk {
                    q = q
                        .bind(ptag)
                        .bind(r.mail_id.clone())
                        .bind(r.seq)
                        .bind(r.rid)
                        .bind(r.is_local)
                        .bind(r.content.clone())
                        .bind(r.ds.clone())
                        .bind(" ")
                        .bind(r.bl)
                        .bind(r.wl)
                        .bind(r.bspam_level)
                        .bind(r.smtp_resp.clone());
                }
                q.execute(&mut *$tx).await?;
            }
            Ok::<(), $crate::sql::Error>(())
        }
    };
}
pub(crate) use insert_rcpts;

pub(crate) fn yn(b: bool) -> &'static str {
    if b {
        "Y"
    } else {
        "N"
    }
}

/// Writes `rec` (maddr, msgs, msgrcpt) inside the transaction `$tx` of pool `$p`'s database;
/// evaluates to Ok(false) if a `msgs` row with its mail_id already exists (then only the
/// recipients its `msgrcpt` rows do not list yet are added). `$ids` (a `HashMap<Vec<u8>,
/// i64>`, `maddr.email` → id) holds the ids this transaction has seen: an address that comes
/// again in a batch costs no statement (the log's CPU per message is mostly its statements).
/// The `msgrcpt` rows go into `$pending` (a `Vec<RcptRow>`) for [`insert_rcpts!`], which the
/// caller runs before its commit.
/// A macro so that one text serves both databases' connection types.
macro_rules! write_record {
    ($backend:expr, $tx:expr, $rec:expr, $ptag:expr, $ids:expr, $pending:expr) => {
        async {
            use $crate::sql::AnyRow as _;
            let (backend, rec, ptag): ($crate::sql::Backend, &$crate::sql::log::LogRecord, i32) =
                ($backend, $rec, $ptag);
            let (ins_adr, ins_msg) = match backend {
                $crate::sql::Backend::Postgres => {
                    ($crate::sql::log::INS_ADR_PG, $crate::sql::log::INS_MSG_PG)
                }
                $crate::sql::Backend::MySql => {
                    ($crate::sql::log::INS_ADR_MY, $crate::sql::log::INS_MSG_MY)
                }
            };
            macro_rules! addr_id {
                ($addr:expr) => {
                    async {
                        let (email, domain) = $crate::sql::log::maddr_key($addr);
                        if let Some(id) = $ids.get(&email) {
                            return Ok::<i64, $crate::sql::Error>(*id);
                        }
                        let sel = || {
                            sqlx::query($crate::sql::log::SEL_ADR.sql(backend))
                                .bind(ptag)
                                .bind(email.clone())
                        };
                        let id = match sel().fetch_optional(&mut *$tx).await? {
                            Some(row) => row.int("id")?.unwrap_or(0),
                            None => {
                                sqlx::query(ins_adr.sql(backend))
                                    .bind(ptag)
                                    .bind(email.clone())
                                    .bind(domain)
                                    .execute(&mut *$tx)
                                    .await?;
                                let row = sel().fetch_one(&mut *$tx).await?;
                                row.int("id")?.unwrap_or(0)
                            }
                        };
                        $ids.insert(email, id);
                        Ok(id)
                    }
                };
            }
            let sid = addr_id!(&rec.sender).await?;
            let code = |c: Option<char>| c.map(String::from).unwrap_or_else(|| " ".into());
            let inserted = sqlx::query(ins_msg.sql(backend))
                .bind(ptag)
                .bind(rec.mail_id.as_bytes().to_vec())
                .bind(rec.secret_id.as_bytes().to_vec())
                .bind($crate::sql::clean_text(&rec.am_id, 20))
                .bind($crate::sql::log::unix_secs(rec.time))
                .bind($crate::sql::log::time_iso(rec.time, backend))
                .bind(sid)
                .bind($crate::sql::clean_text(&rec.policy, 255))
                .bind($crate::sql::printable7(&rec.client_addr))
                .bind(rec.size.min(u32::MAX as u64 / 2) as i64)
                .bind($crate::sql::log::yn(rec.originating))
                .bind(rec.content.code().to_string())
                .bind(code(rec.quar_type))
                .bind($crate::sql::printable7(&rec.quar_loc))
                .bind(code(Some(rec.dsn_sent.unwrap_or('N'))))
                .bind(rec.spam_level.unwrap_or(0.0))
                .bind($crate::sql::printable7(&rec.message_id))
                .bind($crate::sql::clean_text(&rec.from_addr, 255))
                .bind($crate::sql::clean_text(&rec.subject, 255))
                .bind($crate::sql::clean_text(&rec.host, 255))
                .execute(&mut *$tx)
                .await?
                .rows_affected();
            // A `msgs` row already there was written by the SQL quarantine (or by an earlier
            // try of this batch): add only the recipients it does not list, numbered after its.
            let mut present = std::collections::HashSet::new();
            let mut next_seq = 1i32;
            if inserted == 0 {
                // What is pending may be this mail_id's: written first, so it is counted.
                $crate::sql::log::insert_rcpts!(backend, $tx, ptag, $pending).await?;
                let rows = sqlx::query($crate::sql::log::SEL_RCP_IDS.sql(backend))
                    .bind(ptag)
                    .bind(rec.mail_id.as_bytes().to_vec())
                    .fetch_all(&mut *$tx)
                    .await?;
                for row in &rows {
                    present.insert(row.int("rid")?.unwrap_or(0));
                    let seq = row.int("rseqnum")?.unwrap_or(0);
                    next_seq = next_seq.max(seq.clamp(0, i32::MAX as i64 - 1) as i32 + 1);
                }
            }
            for r in rec.recipients.iter() {
                let rid = addr_id!(&r.addr).await?;
                if !present.insert(rid) {
                    continue;
                }
                let seq = next_seq;
                next_seq = next_seq.saturating_add(1);
                $pending.push($crate::sql::log::RcptRow {
                    mail_id: rec.mail_id.as_bytes().to_vec(),
                    seq,
                    rid,
                    is_local: $crate::sql::log::yn(r.is_local),
                    content: r.content.code().to_string(),
                    ds: r.ds.code().to_string(),
                    bl: $crate::sql::log::yn(r.blacklisted),
                    wl: $crate::sql::log::yn(r.whitelisted),
                    bspam_level: r.bspam_level.unwrap_or(0.0),
                    smtp_resp: $crate::sql::printable7(&r.smtp_resp),
                });
            }
            Ok::<bool, $crate::sql::Error>(inserted != 0)
        }
    };
}
pub(crate) use write_record;

/// Writes `records` in one transaction; Ok(written, already there).
pub async fn write_batch(
    pool: &Pool,
    records: &[LogRecord],
    partition_tag: i32,
) -> Result<(usize, usize), Error> {
    let backend = pool.backend();
    on_pool!(pool, p => {
        let mut tx = p.begin().await?;
        let (mut written, mut existed) = (0, 0);
        let mut ids = std::collections::HashMap::new();
        let mut pending = Vec::new();
        for rec in records {
            if write_record!(backend, tx, rec, partition_tag, ids, pending).await? {
                written += 1;
            } else {
                existed += 1;
            }
        }
        insert_rcpts!(backend, tx, partition_tag, pending).await?;
        tx.commit().await?;
        Ok((written, existed))
    })
}

/// Where the message path hands its records to the log writer.
#[derive(Clone)]
pub struct LogHandle {
    tx: mpsc::Sender<LogRecord>,
    metrics: SqlMetrics,
    /// Tells the writer to take nothing more, write what it has, and end (at shutdown).
    finish: CancellationToken,
}

impl LogHandle {
    /// Queues `rec` for the log; never waits. False (logged, counted) if the backlog is full.
    pub fn submit(&self, rec: LogRecord) -> bool {
        match self.tx.try_send(rec) {
            Ok(()) => {
                self.metrics.log_backlog.inc();
                true
            }
            Err(mpsc::error::TrySendError::Full(rec)) => {
                self.metrics
                    .log_dropped
                    .with_label_values(&["backlog_full"])
                    .inc();
                tracing::warn!(mail_id = %crate::escape::text(&rec.mail_id), "sql log: backlog full, message not logged");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Asks the writer to refuse new records, write its backlog (one more attempt per batch
    /// if the database is away) and end; its task then completes.
    pub fn finish(&self) {
        self.finish.cancel();
    }
}

/// The task that writes the log.
pub struct LogWriter {
    pool: Pool,
    rx: mpsc::Receiver<LogRecord>,
    metrics: SqlMetrics,
    finish: CancellationToken,
    partition_tag: i32,
    batch: usize,
    timeout: Duration,
}

impl LogWriter {
    /// Starts the writer on the current runtime. It ends when every [`LogHandle`] is dropped and
    /// the backlog is written (or, with the database down, after one more attempt per batch).
    pub fn spawn(pool: Pool, cfg: &SqlConfig, metrics: SqlMetrics) -> (LogHandle, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(cfg.log_backlog);
        let finish = CancellationToken::new();
        let w = LogWriter {
            pool,
            rx,
            metrics: metrics.clone(),
            finish: finish.clone(),
            partition_tag: cfg.partition_tag,
            batch: cfg.log_batch,
            timeout: cfg.timeout(),
        };
        (
            LogHandle {
                tx,
                metrics,
                finish,
            },
            tokio::spawn(w.run()),
        )
    }

    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch);
        let mut backoff = Duration::from_millis(100);
        loop {
            if batch.is_empty() {
                let n = tokio::select! {
                    n = self.rx.recv_many(&mut batch, self.batch) => n,
                    _ = self.finish.cancelled(), if !self.rx.is_closed() => {
                        self.rx.close(); // what is queued is still received
                        continue;
                    }
                };
                if n == 0 {
                    return; // every handle dropped or finished, nothing left
                }
            }
            let start = Instant::now();
            let r = within(
                self.timeout,
                write_batch(&self.pool, &batch, self.partition_tag),
            )
            .await;
            self.metrics
                .observe(StmtKind::LogBatch, start, &self.pool, &r);
            match r {
                Ok((written, _)) => {
                    self.done(batch.len(), written as u64);
                    batch.clear();
                    backoff = Duration::from_millis(100);
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, backlog = self.metrics.log_backlog.get(), "sql log: database unavailable (or a deadlock), retrying");
                    if self.rx.is_closed() && self.rx.is_empty() && backoff > Duration::from_secs(2)
                    {
                        return; // shutting down and the database stays away
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sql log: batch refused, writing its messages one by one");
                    self.one_by_one(&mut batch).await;
                }
            }
        }
    }

    /// After a refused batch: each record alone; those refused again are dropped and counted,
    /// those that meet an outage stay in `batch` for the next attempt.
    async fn one_by_one(&mut self, batch: &mut Vec<LogRecord>) {
        let mut kept = Vec::new();
        for rec in batch.drain(..) {
            let start = Instant::now();
            let one = std::slice::from_ref(&rec);
            let r = within(
                self.timeout,
                write_batch(&self.pool, one, self.partition_tag),
            )
            .await;
            self.metrics
                .observe(StmtKind::LogBatch, start, &self.pool, &r);
            match r {
                Ok((written, _)) => self.done(1, written as u64),
                Err(e) if e.is_transient() => kept.push(rec),
                Err(e) => {
                    tracing::warn!(mail_id = %crate::escape::text(&rec.mail_id), error = %e, "sql log: message refused by the database, not logged");
                    self.metrics
                        .log_dropped
                        .with_label_values(&["refused"])
                        .inc();
                    self.done(1, 0);
                }
            }
        }
        *batch = kept;
    }

    fn done(&self, n: usize, written: u64) {
        self.metrics.log_backlog.sub(n as i64);
        self.metrics.log_written.inc_by(written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_go_in_one_statement_per_chunk() {
        let one = rcpt_insert_sql(1);
        assert!(one.starts_with("INSERT INTO msgrcpt (partition_tag, mail_id, rseqnum, rid,"));
        assert!(one.ends_with(" VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"));
        let three = rcpt_insert_sql(3);
        assert_eq!(three.matches('?').count(), 36);
        assert_eq!(three.matches("),(").count(), 2);
    }

    #[test]
    fn maddr_domains_are_reversed_and_lowercased() {
        let (e, d) = maddr_key("User.Name@Sub.Example.COM.");
        assert_eq!(e, b"user.name@sub.example.com");
        assert_eq!(d, "com.example.sub");
        assert_eq!(maddr_key(""), (Vec::new(), String::new()));
        let (e, _) = maddr_key("a\r\nb@x");
        assert_eq!(e, b"a??b@x");
    }

    #[test]
    fn delivery_status_follows_amavis() {
        assert_eq!(Ds::of(250, false, false), Ds::Pass);
        assert_eq!(Ds::of(250, true, false), Ds::Discard);
        assert_eq!(Ds::of(451, false, false), Ds::Tempfail);
        assert_eq!(Ds::of(554, false, false), Ds::Reject);
        assert_eq!(Ds::of(554, false, true), Ds::Bounce);
    }

    #[test]
    fn time_iso_per_backend() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(time_iso(t, Backend::MySql), "20231114T221320Z");
        assert_eq!(time_iso(t, Backend::Postgres), "2023-11-14T22:13:20Z");
    }
}
