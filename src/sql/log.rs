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
pub(crate) const SEL_RCP_IDS: Stmt =
    Stmt("SELECT rid, rseqnum FROM msgrcpt WHERE partition_tag=? AND mail_id=?");

/// The most rows (or `IN` values) one statement carries. A batch's rows go in statements of
/// power-of-two sizes, largest first (100 rows: 64, 32, 4), and an `IN` list is padded up to
/// one by repeating its last value: each connection's cache of prepared statements (sqlx keeps
/// 100) then holds seven texts per statement kind instead of one per row count, and a prepare
/// (parse and plan, a multi-row text is long) is not paid again and again.
pub(crate) const ROWS_PER_STMT: usize = 64;

/// `n` rows as statement sizes: powers of two up to [`ROWS_PER_STMT`], largest first.
pub(crate) fn stmt_sizes(mut n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    while n > 0 {
        let s = 1usize << (usize::BITS - 1 - n.min(ROWS_PER_STMT).leading_zeros());
        out.push(s);
        n -= s;
    }
    out
}

/// The length an `IN` list of `n` values (1..=[`ROWS_PER_STMT`]) is padded to.
pub(crate) fn padded(n: usize) -> usize {
    n.max(1).next_power_of_two().min(ROWS_PER_STMT)
}

/// A statement with `n` repeats of `row`: `head row,row,… tail` (a multi-row INSERT, an `IN`
/// list). Only placeholders are repeated, never values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Multi {
    pub head: &'static str,
    pub row: &'static str,
    pub tail: &'static str,
}

impl Multi {
    pub(crate) fn text(self, n: usize) -> String {
        let mut s = String::with_capacity(self.head.len() + n * (self.row.len() + 1) + 64);
        s.push_str(self.head);
        for i in 0..n {
            if i > 0 {
                s.push(',');
            }
            s.push_str(self.row);
        }
        s.push_str(self.tail);
        s
    }

    pub(crate) fn sql(self, n: usize, backend: Backend) -> sqlx::AssertSqlSafe<String> {
        super::dynamic_sql(&self.text(n), backend)
    }
}

pub(crate) const SEL_ADRS: Multi = Multi {
    head: "SELECT id, email FROM maddr WHERE partition_tag=? AND email IN (",
    row: "?",
    tail: ")",
};
pub(crate) const INS_ADRS_PG: Multi = Multi {
    head: "INSERT INTO maddr (partition_tag, email, domain) VALUES ",
    row: "(?,?,?)",
    tail: " ON CONFLICT DO NOTHING",
};
pub(crate) const INS_ADRS_MY: Multi = Multi {
    head: "INSERT IGNORE INTO maddr (partition_tag, email, domain) VALUES ",
    row: "(?,?,?)",
    tail: "",
};
// amavis's ins_msg and upd_msg in one: postsift knows everything when it logs. PostgreSQL
// answers which rows it wrote (RETURNING); for MySQL, which has no such answer per row of an
// INSERT IGNORE, the rows already there are selected first (SEL_MSGS).
pub(crate) const INS_MSGS_PG: Multi = Multi {
    head: "INSERT INTO msgs (partition_tag, mail_id, secret_id, am_id, time_num, time_iso, sid, \
           policy, client_addr, size, originating, content, quar_type, quar_loc, dsn_sent, \
           spam_level, message_id, from_addr, subject, host) VALUES ",
    row: "(?,?,?,?,?,CAST(? AS timestamptz),?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    tail: " ON CONFLICT DO NOTHING RETURNING mail_id",
};
pub(crate) const INS_MSGS_MY: Multi = Multi {
    head: "INSERT IGNORE INTO msgs (partition_tag, mail_id, secret_id, am_id, time_num, \
           time_iso, sid, policy, client_addr, size, originating, content, quar_type, quar_loc, \
           dsn_sent, spam_level, message_id, from_addr, subject, host) VALUES ",
    row: "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    tail: "",
};
pub(crate) const SEL_MSGS: Multi = Multi {
    head: "SELECT mail_id FROM msgs WHERE partition_tag=? AND mail_id IN (",
    row: "?",
    tail: ")",
};
pub(crate) const INS_RCPS: Multi = Multi {
    head: "INSERT INTO msgrcpt (partition_tag, mail_id, rseqnum, rid, is_local, content, ds, rs, \
           bl, wl, bspam_level, smtp_resp) VALUES ",
    row: "(?,?,?,?,?,?,?,?,?,?,?,?)",
    tail: "",
};

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

/// Inserts the pending `msgrcpt` rows `$rows` (a `Vec<RcptRow>`, emptied) in transaction
/// `$tx`, in statements of [`stmt_sizes`].
macro_rules! insert_rcpts {
    ($backend:expr, $tx:expr, $ptag:expr, $rows:expr) => {
        async {
            let (backend, ptag): ($crate::sql::Backend, i32) = ($backend, $ptag);
            let rows: Vec<$crate::sql::log::RcptRow> = std::mem::take(&mut $rows);
            let mut rest = &rows[..];
            for n in $crate::sql::log::stmt_sizes(rows.len()) {
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                let mut q = sqlx::query($crate::sql::log::INS_RCPS.sql(n, backend));
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

/// The `maddr` ids of every address (sender and recipients) of `$recs` (a `&[LogRecord]`),
/// as a `HashMap<&str, i64>` keyed by the address as written, in transaction `$tx`: one
/// `SELECT … email IN (…)` per [`ROWS_PER_STMT`] distinct addresses; those not there yet are
/// inserted in multi-row INSERTs (in `email` order, so that two writers take the same locks in
/// the same order) and selected again.
macro_rules! addr_ids {
    ($backend:expr, $tx:expr, $ptag:expr, $recs:expr) => {
        async {
            use $crate::sql::log as l;
            use $crate::sql::AnyRow as _;
            let (backend, ptag, recs): ($crate::sql::Backend, i32, &[l::LogRecord]) =
                ($backend, $ptag, $recs);
            let mut key_of = std::collections::HashMap::<&str, Vec<u8>>::new();
            let mut want = std::collections::BTreeMap::<Vec<u8>, String>::new();
            for rec in recs {
                let addrs = rec.recipients.iter().map(|r| r.addr.as_str());
                for a in std::iter::once(rec.sender.as_str()).chain(addrs) {
                    if !key_of.contains_key(a) {
                        let (email, domain) = l::maddr_key(a);
                        want.entry(email.clone()).or_insert(domain);
                        key_of.insert(a, email);
                    }
                }
            }
            let mut ids = std::collections::HashMap::<Vec<u8>, i64>::new();
            for round in 0..2 {
                let missing: Vec<&Vec<u8>> =
                    want.keys().filter(|e| !ids.contains_key(*e)).collect();
                if missing.is_empty() {
                    break;
                }
                if round == 1 {
                    let ins = match backend {
                        $crate::sql::Backend::Postgres => l::INS_ADRS_PG,
                        $crate::sql::Backend::MySql => l::INS_ADRS_MY,
                    };
                    let mut rest = &missing[..];
                    for n in l::stmt_sizes(missing.len()) {
                        let (part, tail) = rest.split_at(n);
                        rest = tail;
                        let mut q = sqlx::query(ins.sql(n, backend));
                        for e in part {
                            q = q.bind(ptag).bind((*e).clone()).bind(want[*e].clone());
                        }
                        q.execute(&mut *$tx).await?;
                    }
                }
                for part in missing.chunks(l::ROWS_PER_STMT) {
                    let n = l::padded(part.len());
                    let mut q = sqlx::query(l::SEL_ADRS.sql(n, backend)).bind(ptag);
                    for i in 0..n {
                        q = q.bind(part[i.min(part.len() - 1)].clone());
                    }
                    for row in q.fetch_all(&mut *$tx).await? {
                        if let (Some(e), Some(id)) = (row.bytes("email")?, row.int("id")?) {
                            ids.insert(e, id);
                        }
                    }
                }
            }
            // An address the database stores otherwise than it was given (a site's own schema
            // with a case-insensitive `email`): asked for alone, as amavis does.
            for e in want.keys() {
                if !ids.contains_key(e) {
                    let row = sqlx::query(l::SEL_ADR.sql(backend))
                        .bind(ptag)
                        .bind(e.clone())
                        .fetch_one(&mut *$tx)
                        .await?;
                    ids.insert(e.clone(), row.int("id")?.unwrap_or(0));
                }
            }
            let by_addr: std::collections::HashMap<&str, i64> = key_of
                .into_iter()
                .map(|(a, e)| (a, ids.get(&e).copied().unwrap_or(0)))
                .collect();
            Ok::<_, $crate::sql::Error>(by_addr)
        }
    };
}
pub(crate) use addr_ids;

/// Inserts the `msgs` rows of `$recs[i]` for each `i` in `$idx` (distinct mail_ids) with
/// sender ids from `$ids` (see [`addr_ids!`]); evaluates to the set of mail_ids written (those
/// not written were there already: the SQL quarantine's, or an earlier try's). MySQL: the rows
/// there are selected first and the rest inserted; a row that appears in between (another
/// writer's) makes the batch fail as refused, and the writer then takes its records one by one.
macro_rules! insert_msgs {
    ($backend:expr, $tx:expr, $ptag:expr, $recs:expr, $idx:expr, $ids:expr) => {
        async {
            use $crate::sql::log as l;
            use $crate::sql::AnyRow as _;
            let (backend, ptag, recs, idx): ($crate::sql::Backend, i32, &[l::LogRecord], &[usize]) =
                ($backend, $ptag, $recs, $idx);
            let mut written = std::collections::HashSet::<Vec<u8>>::new();
            let mut todo: Vec<usize> = idx.to_vec();
            let ins = match backend {
                $crate::sql::Backend::Postgres => l::INS_MSGS_PG,
                $crate::sql::Backend::MySql => l::INS_MSGS_MY,
            };
            if backend == $crate::sql::Backend::MySql && !todo.is_empty() {
                let mut there = std::collections::HashSet::<Vec<u8>>::new();
                for part in todo.chunks(l::ROWS_PER_STMT) {
                    let n = l::padded(part.len());
                    let mut q = sqlx::query(l::SEL_MSGS.sql(n, backend)).bind(ptag);
                    for i in 0..n {
                        q = q.bind(
                            recs[part[i.min(part.len() - 1)]]
                                .mail_id
                                .as_bytes()
                                .to_vec(),
                        );
                    }
                    for row in q.fetch_all(&mut *$tx).await? {
                        there.extend(row.bytes("mail_id")?);
                    }
                }
                todo.retain(|&i| !there.contains(recs[i].mail_id.as_bytes()));
            }
            let code = |c: Option<char>| c.map(String::from).unwrap_or_else(|| " ".into());
            let mut rest = &todo[..];
            for n in l::stmt_sizes(todo.len()) {
                let (part, tail) = rest.split_at(n);
                rest = tail;
                let mut q = sqlx::query(ins.sql(n, backend));
                for &i in part {
                    let rec = &recs[i];
                    q = q
                        .bind(ptag)
                        .bind(rec.mail_id.as_bytes().to_vec())
                        .bind(rec.secret_id.as_bytes().to_vec())
                        .bind($crate::sql::clean_text(&rec.am_id, 20))
                        .bind(l::unix_secs(rec.time))
                        .bind(l::time_iso(rec.time, backend))
                        .bind($ids.get(rec.sender.as_str()).copied().unwrap_or(0))
                        .bind($crate::sql::clean_text(&rec.policy, 255))
                        .bind($crate::sql::printable7(&rec.client_addr))
                        .bind(rec.size.min(u32::MAX as u64 / 2) as i64)
                        .bind(l::yn(rec.originating))
                        .bind(rec.content.code().to_string())
                        .bind(code(rec.quar_type))
                        .bind($crate::sql::printable7(&rec.quar_loc))
                        .bind(code(Some(rec.dsn_sent.unwrap_or('N'))))
                        .bind(rec.spam_level.unwrap_or(0.0))
                        .bind($crate::sql::printable7(&rec.message_id))
                        .bind($crate::sql::clean_text(&rec.from_addr, 255))
                        .bind($crate::sql::clean_text(&rec.subject, 255))
                        .bind($crate::sql::clean_text(&rec.host, 255));
                }
                match backend {
                    $crate::sql::Backend::Postgres => {
                        for row in q.fetch_all(&mut *$tx).await? {
                            written.extend(row.bytes("mail_id")?);
                        }
                    }
                    $crate::sql::Backend::MySql => {
                        let done = q.execute(&mut *$tx).await?.rows_affected();
                        if done != n as u64 {
                            return Err($crate::sql::Error::Data(format!(
                                "{} of {n} msgs rows written (another writer's came first)",
                                done
                            )));
                        }
                        written.extend(part.iter().map(|&i| recs[i].mail_id.as_bytes().to_vec()));
                    }
                }
            }
            Ok::<_, $crate::sql::Error>(written)
        }
    };
}
pub(crate) use insert_msgs;

/// Writes `$recs` (a `&[LogRecord]`: maddr, msgs, msgrcpt) inside the transaction `$tx` of pool
/// `$p`'s database; evaluates to one bool per record: false if a `msgs` row with its mail_id
/// was there already (or came earlier in `$recs`): then only the recipients its `msgrcpt` rows
/// do not list yet are added, numbered after theirs. The batch's addresses cost one statement
/// per [`ROWS_PER_STMT`] (more for new ones), its `msgs` rows one multi-row INSERT per
/// [`stmt_sizes`] piece; the `msgrcpt` rows go into `$pending` (a `Vec<RcptRow>`) for
/// [`insert_rcpts!`], which the caller runs before its commit. The log's cost per message, in
/// postsift and in the database, is mostly its statements.
/// A macro so that one text serves both databases' connection types.
macro_rules! write_records {
    ($backend:expr, $tx:expr, $recs:expr, $ptag:expr, $pending:expr) => {
        async {
            use $crate::sql::log as l;
            use $crate::sql::AnyRow as _;
            let (backend, recs, ptag): ($crate::sql::Backend, &[l::LogRecord], i32) =
                ($backend, $recs, $ptag);
            let ids = l::addr_ids!(backend, $tx, ptag, recs).await?;
            let mut fresh = vec![false; recs.len()];
            let mut seen = std::collections::HashSet::<&str>::new();
            for (c, chunk) in recs.chunks(l::ROWS_PER_STMT).enumerate() {
                let first = c * l::ROWS_PER_STMT;
                let range = first..first + chunk.len();
                let idx: Vec<usize> = range
                    .clone()
                    .filter(|&i| seen.insert(recs[i].mail_id.as_str()))
                    .collect();
                let written = l::insert_msgs!(backend, $tx, ptag, recs, &idx, ids).await?;
                for &i in &idx {
                    fresh[i] = written.contains(recs[i].mail_id.as_bytes());
                }
                for i in range {
                    let rec = &recs[i];
                    let mut present = std::collections::HashSet::new();
                    let mut next_seq = 1i32;
                    if !fresh[i] {
                        // What is pending may be this mail_id's: written first, so it counts.
                        l::insert_rcpts!(backend, $tx, ptag, $pending).await?;
                        let rows = sqlx::query(l::SEL_RCP_IDS.sql(backend))
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
                        let rid = ids.get(r.addr.as_str()).copied().unwrap_or(0);
                        if !present.insert(rid) {
                            continue;
                        }
                        let seq = next_seq;
                        next_seq = next_seq.saturating_add(1);
                        $pending.push(l::RcptRow {
                            mail_id: rec.mail_id.as_bytes().to_vec(),
                            seq,
                            rid,
                            is_local: l::yn(r.is_local),
                            content: r.content.code().to_string(),
                            ds: r.ds.code().to_string(),
                            bl: l::yn(r.blacklisted),
                            wl: l::yn(r.whitelisted),
                            bspam_level: r.bspam_level.unwrap_or(0.0),
                            smtp_resp: $crate::sql::printable7(&r.smtp_resp),
                        });
                    }
                }
            }
            Ok::<Vec<bool>, $crate::sql::Error>(fresh)
        }
    };
}
pub(crate) use write_records;

/// Writes `records` in one transaction; Ok(written, already there).
pub async fn write_batch(
    pool: &Pool,
    records: &[LogRecord],
    partition_tag: i32,
) -> Result<(usize, usize), Error> {
    let backend = pool.backend();
    on_pool!(pool, p => {
        let mut tx = p.begin().await?;
        let mut pending = Vec::new();
        let fresh = write_records!(backend, tx, records, partition_tag, pending).await?;
        insert_rcpts!(backend, tx, partition_tag, pending).await?;
        tx.commit().await?;
        let written = fresh.iter().filter(|f| **f).count();
        Ok((written, records.len() - written))
    })
}

/// How long the writer waits for a batch to fill once its first record is there: the log
/// lags the mail by at most this much more, and a busy filter writes fuller batches.
pub const LOG_LINGER: Duration = Duration::from_millis(20);

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
                self.fill(&mut batch).await;
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

    /// Waits up to [`LOG_LINGER`] for more records to join `batch` (until it holds
    /// `sql.log_batch`, or the writer is told to finish). A batch's statements and commit cost
    /// postsift and the database about the same whether it carries 3 records or 60: under load
    /// a few milliseconds more in the backlog make each message's share of them small.
    async fn fill(&mut self, batch: &mut Vec<LogRecord>) {
        let until = tokio::time::Instant::now() + LOG_LINGER;
        while batch.len() < self.batch && !self.finish.is_cancelled() {
            let room = self.batch - batch.len();
            tokio::select! {
                n = self.rx.recv_many(batch, room) => if n == 0 { return },
                _ = tokio::time::sleep_until(until) => return,
                _ = self.finish.cancelled() => return,
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
    fn rows_go_in_statements_of_few_sizes() {
        let one = INS_RCPS.text(1);
        assert!(one.starts_with("INSERT INTO msgrcpt (partition_tag, mail_id, rseqnum, rid,"));
        assert!(one.ends_with(" VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"));
        let three = INS_RCPS.text(3);
        assert_eq!(three.matches('?').count(), 36);
        assert_eq!(three.matches("),(").count(), 2);
        let msgs = INS_MSGS_PG.text(2);
        assert_eq!(msgs.matches("CAST(? AS timestamptz)").count(), 2);
        assert!(msgs.ends_with(") ON CONFLICT DO NOTHING RETURNING mail_id"));
        assert_eq!(INS_MSGS_MY.text(2).matches('?').count(), 40);
        assert!(SEL_ADRS.text(3).ends_with("email IN (?,?,?)"));
        assert_eq!(stmt_sizes(0), Vec::<usize>::new());
        assert_eq!(stmt_sizes(1), [1]);
        assert_eq!(stmt_sizes(7), [4, 2, 1]);
        assert_eq!(stmt_sizes(100), [64, 32, 4]);
        assert_eq!(stmt_sizes(200), [64, 64, 64, 8]);
        // every size a power of two up to ROWS_PER_STMT: a handful of statement texts
        let mut sizes: Vec<usize> = (1..=1000).flat_map(stmt_sizes).collect();
        sizes.sort();
        sizes.dedup();
        assert_eq!(sizes, [1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(
            (padded(1), padded(3), padded(33), padded(64)),
            (1, 4, 64, 64)
        );
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
