//! The SQL store against real PostgreSQL and MariaDB (tests/integration/peers/sql.rs): amavis's
//! schema by `sql init` and from amavis's own DDL, the message log with amavis's codes, the
//! quarantine shared by two nodes with release once per recipient, per-user policy and
//! wblist, and the database stopped mid-run.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use postsift::sql::log::{Content, Ds, LogRecord, LogWriter, RcptRecord};
use postsift::sql::lookups::SqlLookups;
use postsift::sql::metrics::{SqlMetrics, StmtKind};
use postsift::sql::quarantine::SqlQuarantine;
use postsift::sql::{schema, Backend, Pool, SqlConfig};
use prometheus::Registry;

use crate::peers::sql::{shared, Kind, SqlServer};

const KINDS: [Kind; 2] = [Kind::Postgres, Kind::MariaDb];

/// Polls `cond` every 50 ms (without blocking the runtime) until true or `limit` passes.
async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

fn config(url: String) -> SqlConfig {
    let c = SqlConfig {
        url,
        log: true,
        lookups: true,
        ..SqlConfig::default()
    };
    c.validate().unwrap();
    c
}

/// A fresh database on the shared server of `kind`, made as a site running amavis made it:
/// amavis's DDL text fed to the database's own client.
fn amavis_db(kind: Kind, prefix: &str) -> (&'static SqlServer, String) {
    let s = shared(kind);
    let db = s.create_db(prefix);
    let backend = backend(kind);
    s.client(&db, schema::amavis_ddl(backend));
    (s, db)
}

fn backend(kind: Kind) -> Backend {
    match kind {
        Kind::Postgres => Backend::Postgres,
        Kind::MariaDb => Backend::MySql,
    }
}

/// Every column of amavis's tables: table, column, type, nullable, default.
fn columns(s: &SqlServer, db: &str) -> String {
    let sql = match s.kind {
        Kind::Postgres => "SELECT table_name, column_name, data_type, is_nullable, column_default \
             FROM information_schema.columns WHERE table_schema='public' \
             ORDER BY table_name, ordinal_position"
            .to_string(),
        Kind::MariaDb => format!(
            "SELECT table_name, column_name, column_type, is_nullable, column_default \
             FROM information_schema.columns WHERE table_schema='{db}' \
             ORDER BY table_name, ordinal_position"
        ),
    };
    s.client(db, &sql)
}

fn indexes(s: &SqlServer, db: &str) -> String {
    let sql = match s.kind {
        Kind::Postgres => {
            "SELECT indexname FROM pg_indexes WHERE schemaname='public' ORDER BY indexname"
                .to_string()
        }
        Kind::MariaDb => format!(
            "SELECT DISTINCT index_name FROM information_schema.statistics \
             WHERE table_schema='{db}' ORDER BY index_name"
        ),
    };
    s.client(db, &sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_init_creates_amavis_schema_twice_without_harm() {
    for kind in KINDS {
        let (s, amavis) = amavis_db(kind, "amavis");
        let ours = s.create_db("init");
        let pool = Pool::connect_lazy(&config(s.url(&ours))).unwrap();
        let n = schema::init(&pool, None).await.unwrap();
        assert!(n >= 11, "{kind:?}: {n} statements");
        // Again on a database that has it all: nothing fails, nothing changes.
        let before = columns(s, &ours);
        schema::init(&pool, None).await.unwrap();
        assert_eq!(columns(s, &ours), before, "{kind:?}");
        assert_eq!(
            before,
            columns(s, &amavis),
            "{kind:?}: init differs from amavis's DDL"
        );
        assert_eq!(indexes(s, &ours), indexes(s, &amavis), "{kind:?}");
        for t in schema::TABLES {
            assert!(before.contains(&format!("{t}\t")), "{kind:?}: no table {t}");
        }
        // init on an existing amavis database leaves it as it is
        let pool = Pool::connect_lazy(&config(s.url(&amavis))).unwrap();
        let cols = columns(s, &amavis);
        schema::init(&pool, None).await.unwrap();
        assert_eq!(columns(s, &amavis), cols, "{kind:?}");
    }
}

fn rcpt(addr: &str, content: Content, ds: Ds, resp: &str) -> RcptRecord {
    RcptRecord {
        addr: addr.into(),
        is_local: true,
        content,
        ds,
        blacklisted: false,
        whitelisted: false,
        bspam_level: Some(1.5),
        smtp_resp: resp.into(),
    }
}

fn record(mail_id: &str, host: &str, content: Content, rcpts: Vec<RcptRecord>) -> LogRecord {
    LogRecord {
        mail_id: mail_id.into(),
        secret_id: format!("s{mail_id}"),
        am_id: format!("am-{mail_id}"),
        time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        host: host.into(),
        policy: "ORIGINATING,MYNETS".into(),
        client_addr: "192.0.2.7".into(),
        size: 1234,
        originating: false,
        content,
        quar_type: None,
        quar_loc: String::new(),
        dsn_sent: None,
        spam_level: Some(2.5),
        message_id: "<id@example.net>".into(),
        from_addr: "Jörg <Sender@Mail.Example.NET>".into(),
        subject: "Grüße ☃".into(),
        sender: "Sender@Mail.Example.NET".into(),
        recipients: rcpts,
    }
}

const CONTENTS: [Content; 10] = [
    Content::Virus,
    Content::Banned,
    Content::Unchecked,
    Content::Spam,
    Content::Spammy,
    Content::BadMime,
    Content::BadHeader,
    Content::Oversized,
    Content::MtaError,
    Content::Clean,
];

/// Each content category logged with amavis's codes, into an amavis database made from
/// amavis's own DDL, whose tables stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_log_writes_amavis_codes_into_an_existing_amavis_database() {
    for kind in KINDS {
        let (s, db) = amavis_db(kind, "log");
        let cols = columns(s, &db);
        let cfg = config(s.url(&db));
        let pool = Pool::connect_lazy(&cfg).unwrap();
        let m = SqlMetrics::register(&Registry::new());
        let (log, task) = LogWriter::spawn(pool.clone(), &cfg, m.clone());
        let ds = [Ds::Pass, Ds::Reject, Ds::Bounce, Ds::Discard, Ds::Tempfail];
        for (i, c) in CONTENTS.iter().enumerate() {
            let d = ds[i % ds.len()];
            let rec = record(
                &format!("id{:02}{}", i, c.code()),
                if i % 2 == 0 {
                    "node-a.example"
                } else {
                    "node-b.example"
                },
                *c,
                vec![
                    rcpt("User+Tag@Example.ORG", *c, d, "250 2.0.0 Ok"),
                    rcpt(
                        "other@sub.example.org",
                        Content::Clean,
                        Ds::Pass,
                        "250 2.0.0 Ok\r\n",
                    ),
                ],
            );
            assert!(log.submit(rec));
        }
        assert!(
            wait_for(Duration::from_secs(60), || m.log_written.get() == 10).await,
            "{kind:?}: written {}",
            m.log_written.get()
        );
        let q = "SELECT msgs.mail_id, msgs.content, msgrcpt.content, msgrcpt.ds, msgrcpt.rs, \
                 msgrcpt.rseqnum, msgrcpt.is_local, msgs.host, msgs.originating, msgs.time_num \
                 FROM msgs JOIN msgrcpt ON msgs.mail_id=msgrcpt.mail_id \
                 WHERE msgrcpt.rseqnum=1 ORDER BY msgs.mail_id";
        let rows = s.client(&db, q);
        let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(rows.len(), 10, "{kind:?}: {rows:?}");
        for (i, (r, c)) in rows.iter().zip(CONTENTS).enumerate() {
            let code = c.code().to_string();
            let d = ds[i % ds.len()].code().to_string();
            let host = if i % 2 == 0 {
                "node-a.example"
            } else {
                "node-b.example"
            };
            assert_eq!(r[1], code, "{kind:?} {r:?}");
            assert_eq!(r[2], code, "{kind:?} {r:?}");
            assert_eq!(r[3], d, "{kind:?} {r:?}");
            // rs is ' ' (PostgreSQL's char(1) shows it padded, MariaDB's trimmed)
            assert_eq!(r[4].trim(), "", "{kind:?} {r:?}");
            assert_eq!(&r[5..], ["1", "Y", host, "N", "1700000000"], "{kind:?}");
        }
        // maddr: lowercased, domain reversed; one row per address
        let maddr = s.client(
            &db,
            "SELECT email, domain FROM maddr ORDER BY domain, email",
        );
        let maddr = match kind {
            // psql shows bytea as hex
            Kind::Postgres => s.client(
                &db,
                "SELECT convert_from(email,'UTF8'), domain FROM maddr ORDER BY domain, email",
            ),
            Kind::MariaDb => maddr,
        };
        assert_eq!(
            maddr,
            "sender@mail.example.net\tnet.example.mail\n\
             user+tag@example.org\torg.example\n\
             other@sub.example.org\torg.example.sub\n",
            "{kind:?}"
        );
        let m1 = s.client(
            &db,
            "SELECT subject, from_addr, message_id, policy, client_addr, size, spam_level, \
             quar_type, dsn_sent FROM msgs WHERE mail_id='id00V'",
        );
        // quar_type ' ': PostgreSQL shows char(1) padded, MariaDB trimmed
        assert_eq!(
            m1.trim_end().replace("\t \t", "\t\t"),
            "Grüße ☃\tJörg <Sender@Mail.Example.NET>\t<id@example.net>\tORIGINATING,MYNETS\t\
             192.0.2.7\t1234\t2.5\t\tN",
            "{kind:?}"
        );
        // the SMTP reply is stored 7-bit printable, as amavis does
        let resp = s.client(&db, "SELECT smtp_resp FROM msgrcpt WHERE rseqnum=2 LIMIT 1");
        assert_eq!(resp, "250 2.0.0 Ok??\n");
        // time_iso: timestamptz on PostgreSQL, amavis's char(16) on MariaDB
        let iso = s.client(&db, "SELECT time_iso FROM msgs LIMIT 1");
        match kind {
            Kind::Postgres => assert!(iso.starts_with("2023-11-14 22:13:20"), "{iso}"),
            Kind::MariaDb => assert_eq!(iso, "20231114T221320Z\n"),
        }
        // the README's "mail from last two minutes" query shape, on both
        let joined = s.client(
            &db,
            "SELECT count(*) FROM msgs LEFT JOIN msgrcpt ON msgs.mail_id=msgrcpt.mail_id \
             LEFT JOIN maddr AS sender ON msgs.sid=sender.id \
             LEFT JOIN maddr AS recip ON msgrcpt.rid=recip.id \
             WHERE msgrcpt.content IS NOT NULL AND sender.domain='net.example.mail'",
        );
        assert_eq!(joined, "20\n");
        // The same record again (the quarantine wrote it already): nothing is duplicated.
        assert!(log.submit(record("id00V", "node-a.example", Content::Virus, vec![])));
        assert!(wait_for(Duration::from_secs(60), || m.log_backlog.get() == 0).await);
        assert_eq!(s.client(&db, "SELECT count(*) FROM msgrcpt"), "20\n");
        assert_eq!(columns(s, &db), cols, "{kind:?}: the schema was changed");
        drop(log);
        task.await.unwrap();
        assert_eq!(m.errors(StmtKind::LogBatch), 0);
    }
}

fn message(n: usize) -> Vec<u8> {
    let mut m = b"From: a@example.net\r\nSubject: held\r\n\r\n".to_vec();
    for i in 0..n {
        m.extend_from_slice(format!("line {i} é \0 binary ").as_bytes());
        m.extend_from_slice(b"\xff\xfe\r\n");
    }
    m
}

/// A message quarantined on node A is listed, read and released from node B, once per
/// recipient: two nodes claiming at once get each recipient once between them; a second
/// release claims nothing; retention purges rows and chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_quarantine_releases_once_across_two_nodes() {
    for kind in KINDS {
        let (s, db) = amavis_db(kind, "quar");
        let cfg = SqlConfig {
            chunk_size: 1024,
            ..config(s.url(&db))
        };
        let m = SqlMetrics::register(&Registry::new());
        let a = SqlQuarantine::new(Pool::connect_lazy(&cfg).unwrap(), &cfg, m.clone());
        let b = SqlQuarantine::new(Pool::connect_lazy(&cfg).unwrap(), &cfg, m.clone());
        let body = message(200); // several chunks
        let rec = record(
            "q1",
            "node-a.example",
            Content::Spam,
            vec![
                rcpt(
                    "one@example.org",
                    Content::Spam,
                    Ds::Discard,
                    "250 2.7.0 Ok, discarded",
                ),
                rcpt(
                    "two@example.org",
                    Content::Spam,
                    Ds::Discard,
                    "250 2.7.0 Ok, discarded",
                ),
            ],
        );
        a.store(&rec, &mut &body[..]).await.unwrap();
        // A second store of the same mail_id fails and changes nothing.
        assert!(a.store(&rec, &mut &body[..]).await.is_err());
        let chunks = s.client(&db, "SELECT count(*) FROM quarantine WHERE mail_id='q1'");
        assert_eq!(
            chunks.trim(),
            body.len().div_ceil(1024).to_string(),
            "{kind:?}"
        );
        let qt = s.client(
            &db,
            "SELECT quar_type, quar_loc FROM msgs WHERE mail_id='q1'",
        );
        assert_eq!(qt, "Q\tq1\n", "{kind:?}");
        assert_eq!(b.fetch("q1").await.unwrap().unwrap(), body, "{kind:?}");
        assert_eq!(b.fetch("nope").await.unwrap(), None);
        let listed = b.recipients("q1").await.unwrap();
        assert_eq!(listed.len(), 2);
        // Both nodes claim at once: each recipient goes to exactly one of them.
        let (ca, cb) = tokio::join!(a.claim("q1", &[], false), b.claim("q1", &[], false));
        let (ca, cb) = (ca.unwrap(), cb.unwrap());
        assert_eq!(
            ca.claimed.len() + cb.claimed.len(),
            2,
            "{kind:?}: {ca:?} {cb:?}"
        );
        for r in ca.claimed.iter() {
            assert!(!cb.claimed.iter().any(|x| x.addr == r.addr));
            a.finish("q1", r, true).await.unwrap();
        }
        for r in cb.claimed.iter() {
            b.finish("q1", r, true).await.unwrap();
        }
        let rs = s.client(
            &db,
            "SELECT rs FROM msgrcpt WHERE mail_id='q1' ORDER BY rseqnum",
        );
        assert_eq!(rs, "R\nR\n", "{kind:?}");
        // A second release claims nothing.
        let again = b.claim("q1", &[], false).await.unwrap();
        assert!(again.claimed.is_empty(), "{kind:?}: {again:?}");
        assert_eq!(again.refused.len(), 2);
        // Forced (a node died between claim and send), it does; its send failing leaves the
        // recipient held.
        let forced = a
            .claim("q1", &["two@example.org".into()], true)
            .await
            .unwrap();
        assert_eq!(forced.claimed.len(), 1, "{kind:?}: {forced:?}");
        a.finish("q1", &forced.claimed[0], false).await.unwrap();
        let rs = s.client(
            &db,
            "SELECT rs FROM msgrcpt WHERE mail_id='q1' ORDER BY rseqnum",
        );
        // (PostgreSQL shows char(1) ' ' padded, MariaDB trimmed)
        assert_eq!(rs.replace(' ', ""), "R\n\n", "{kind:?}");

        // A failed send puts the recipient back: it can be released later.
        let rec2 = record(
            "q2",
            "node-b.example",
            Content::Virus,
            vec![rcpt(
                "Three@Example.org",
                Content::Virus,
                Ds::Discard,
                "250 Ok",
            )],
        );
        let mut rec2 = rec2;
        // what a sender wrote may hold anything: NUL (PostgreSQL's text cannot), CR LF, 8-bit
        rec2.subject = "a\0b\r\n\u{7f}é".repeat(100);
        rec2.from_addr = "\0".into();
        b.store(&rec2, &mut &b"tiny"[..]).await.unwrap();
        let subj = s.client(&db, "SELECT subject FROM msgs WHERE mail_id='q2'");
        assert!(subj.starts_with("a?b???éa?b"), "{kind:?}: {subj}");
        let c = a
            .claim("q2", &["three@example.org".into()], false)
            .await
            .unwrap();
        assert_eq!(c.claimed.len(), 1, "{kind:?}");
        assert!(b.claim("q2", &[], false).await.unwrap().claimed.is_empty());
        a.finish("q2", &c.claimed[0], false).await.unwrap();
        assert_eq!(b.claim("q2", &[], false).await.unwrap().claimed.len(), 1);

        // Retention: everything received before now + 1 h goes, rows and chunks.
        let p = a
            .purge(SystemTime::now() + Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!((p.msgs, p.msgrcpt), (2, 3), "{kind:?}: {p:?}");
        for t in ["msgs", "msgrcpt", "quarantine", "maddr"] {
            assert_eq!(
                s.client(&db, &format!("SELECT count(*) FROM {t}")),
                "0\n",
                "{t}"
            );
        }
        assert_eq!(m.errors(StmtKind::QuarantineStore), 1); // the duplicate
    }
}

/// Lookup data in amavis's tables: priorities, a catch-all, white/black/neutral/score entries.
const LOOKUP_DATA: &str = "
INSERT INTO policy (id, policy_name, spam_tag2_level, spam_kill_level, spam_lover, spam_subject_tag2)
  VALUES (1, 'Normal', 6.9, 6.9, 'N', NULL), (2, 'Trigger happy', 4.0, 5.0, NULL, '[SPAM] '),
         (3, 'Lover', NULL, 20, 'Y', NULL);
INSERT INTO users (id, priority, policy_id, email) VALUES
  (1, 7, 2, 'u1@example.org'), (2, 5, 1, '@example.org'), (3, 0, 3, '@.'),
  (4, 5, 3, '@.sub.example.org');
INSERT INTO mailaddr (id, priority, email) VALUES
  (1, 5, '@example.com'), (2, 9, 'spammer@example.com'), (3, 9, 'friend@example.net'),
  (4, 9, 'quiet@example.com');
INSERT INTO wblist (rid, sid, wb) VALUES
  (1, 1, 'W'), (1, 2, 'B'), (1, 3, '-3'), (2, 3, 'W'), (1, 4, ' '), (2, 4, 'W');
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_lookups_per_user_spam_level_and_wblist() {
    for kind in KINDS {
        let (s, db) = amavis_db(kind, "lookups");
        s.client(&db, LOOKUP_DATA);
        let cfg = config(s.url(&db));
        let m = SqlMetrics::register(&Registry::new());
        let l = SqlLookups::new(Pool::connect_lazy(&cfg).unwrap(), &cfg, m.clone());
        let u1 = l
            .policy("U1+news@example.org", true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(u1.user_ids, [1, 2, 3], "{kind:?}");
        assert_eq!(u1.policy_name.as_deref(), Some("Trigger happy"));
        assert_eq!(u1.spam_kill_level, Some(5.0));
        assert_eq!(u1.spam_tag2_level, Some(4.0));
        assert_eq!(u1.spam_subject_tag2.as_deref(), Some("[SPAM] "));
        // NULL in the first row: the next row's value (amavis: first non-NULL)
        assert_eq!(u1.spam_lover, Some(false));
        let u2 = l.policy("u2@example.org", true).await.unwrap().unwrap();
        assert_eq!(u2.policy_name.as_deref(), Some("Normal"));
        assert_eq!(u2.spam_kill_level, Some(6.9f32 as f64));
        let sub = l
            .policy("x@deep.sub.example.org", false)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sub.policy_name.as_deref(), Some("Lover"));
        assert_eq!(sub.spam_lover, Some(true));
        let any = l.policy("x@elsewhere.test", false).await.unwrap().unwrap();
        assert_eq!(any.user_ids, [3]);

        let wb = |sender: &'static str, p: Arc<postsift::sql::lookups::UserPolicy>| {
            let l = &l;
            async move { l.wblist(&p, sender, false).await.unwrap() }
        };
        // mailaddr priority 9 beats the domain entry's 5: black
        assert_eq!(
            wb("spammer@example.com", u1.clone()).await.listed,
            Some(false),
            "{kind:?}"
        );
        assert_eq!(
            wb("someone@example.com", u1.clone()).await.listed,
            Some(true)
        );
        // a score goes on to the next user row (@example.org), which whitelists
        let f = wb("friend@example.net", u1.clone()).await;
        assert_eq!((f.listed, f.boost), (Some(true), -3.0), "{kind:?}");
        // neutral stops the search before @example.org's W
        assert_eq!(wb("quiet@example.com", u1.clone()).await.listed, None);
        assert_eq!(wb("quiet@example.com", u2.clone()).await.listed, Some(true));
        assert_eq!(wb("nobody@example.net", u2.clone()).await.listed, None);
        assert_eq!(m.errors(StmtKind::Policy) + m.errors(StmtKind::Wblist), 0);
    }
    // A database that is not there: the file's configuration, counted.
    let cfg = SqlConfig {
        connect_timeout: 1,
        timeout: 2,
        ..config(format!(
            "postgresql://postgres@127.0.0.1:{}/none",
            crate::peers::free_port()
        ))
    };
    let store = postsift::sql::store::SqlStore::build(&cfg, &Registry::new()).unwrap();
    let l = store.lookups.as_ref().unwrap();
    assert!(l.policy_or_fallback("u1@example.org", true).await.is_none());
    assert_eq!(store.metrics.lookup_fallbacks.get(), 1);
    assert_eq!(store.metrics.errors(StmtKind::Policy), 1);
    // the log takes the message and does not hold anything up
    assert!(store
        .log
        .as_ref()
        .unwrap()
        .submit(record("down1", "n", Content::Clean, vec![])));
}

/// The database stops mid-run: the log's backlog stays bounded (the rest is dropped and
/// counted), mail is never held up, the quarantine's store fails (→ 451); back up, the backlog
/// is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_database_stopped_mid_run_log_backlog_bounded_and_recovers() {
    for kind in KINDS {
        let mut s = SqlServer::start(kind);
        let db = s.create_db("outage");
        s.client(&db, schema::amavis_ddl(backend(kind)));
        let cfg = SqlConfig {
            log_backlog: 20,
            log_batch: 5,
            connect_timeout: 1,
            timeout: 3,
            ..config(s.url(&db))
        };
        let registry = Registry::new();
        let m = SqlMetrics::register(&registry);
        let pool = Pool::connect_lazy(&cfg).unwrap();
        let (log, task) = LogWriter::spawn(pool.clone(), &cfg, m.clone());
        let q = SqlQuarantine::new(pool.clone(), &cfg, m.clone());
        let rec = |i: usize| {
            record(
                &format!("out{i}"),
                "node-a.example",
                Content::Clean,
                vec![rcpt("r@example.org", Content::Clean, Ds::Pass, "250 Ok")],
            )
        };
        for i in 0..5 {
            assert!(log.submit(rec(i)));
        }
        assert!(wait_for(Duration::from_secs(60), || m.log_written.get() == 5).await);

        s.stop();
        let mut accepted = 0;
        for i in 5..65 {
            // submit never waits, whatever the database does
            if log.submit(rec(i)) {
                accepted += 1;
            }
        }
        // at most the backlog, plus the batch the writer holds
        assert!(accepted <= 25, "{kind:?}: {accepted} accepted");
        assert!(m.log_backlog.get() <= 25);
        let dropped = m.log_dropped.with_label_values(&["backlog_full"]).get();
        assert_eq!(dropped, 60 - accepted as u64);
        let err = q
            .store(&rec(1000), &mut &b"held"[..])
            .await
            .expect_err("store with the database down");
        assert!(err.is_unavailable(), "{kind:?}: {err}");
        assert!(wait_for(Duration::from_secs(60), || m.errors(StmtKind::LogBatch) > 0).await);

        s.start_again();
        assert!(
            wait_for(Duration::from_secs(90), || m.log_written.get()
                == 5 + accepted as u64)
            .await,
            "{kind:?}: written {} of {}",
            m.log_written.get(),
            5 + accepted
        );
        assert_eq!(m.log_backlog.get(), 0);
        let n = s.client(&db, "SELECT count(*) FROM msgs");
        assert_eq!(n.trim(), (5 + accepted).to_string(), "{kind:?}");
        // the quarantine works again
        q.store(&rec(1001), &mut &b"held"[..]).await.unwrap();
        let text = {
            let mut buf = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut buf,
            )
            .unwrap();
            String::from_utf8(buf).unwrap()
        };
        for series in [
            "postsift_sql_duration_seconds_bucket{kind=\"log_batch\"",
            "postsift_sql_errors_total{kind=\"quarantine_store\"} 1",
            "postsift_sql_log_backlog 0",
            "postsift_sql_log_dropped_total{reason=\"backlog_full\"}",
            "postsift_sql_pool_connections",
        ] {
            assert!(text.contains(series), "{kind:?}: no {series} in\n{text}");
        }
        drop(log);
        task.await.unwrap();
        s.stop();
    }
}

/// psql prints bytea as `\x…` hex: the text it holds (the UIs decode it the same way).
fn unhex(field: &str) -> String {
    match field.strip_prefix("\\x") {
        Some(h) => {
            let b: Vec<u8> = (0..h.len() / 2)
                .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            String::from_utf8_lossy(&b).into_owned()
        }
        None => field.to_string(),
    }
}

fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .map(|l| l.split('\t').map(unhex).collect())
        .collect()
}

/// The SQL the UIs send, from their published source, against what postsift wrote:
/// Modoboa's quarantine listing (modoboa-amavis sql_connector.py `_get_quarantine_content`,
/// the ORM's query written out, as a domain admin), its release request (`set_msgrcpt_status`
/// 'p') and pending count; iRedAdmin's listing and count (libs/amavisd/quarantine.py
/// `get_quarantined_mails`, a domain admin, type spam), its steps after a release, and its
/// cleanup tool's selection. A user's release request ('p') is claimed by an admin's release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_ui_queries_modoboa_and_iredadmin_list_and_release() {
    for kind in KINDS {
        let (s, db) = amavis_db(kind, "ui");
        let cfg = config(s.url(&db));
        let pool = Pool::connect_lazy(&cfg).unwrap();
        let q = SqlQuarantine::new(pool.clone(), &cfg, SqlMetrics::register(&Registry::new()));
        let mut spam = record(
            "ui1",
            "node-a.example",
            Content::Spam,
            vec![rcpt(
                "Alice@Example.org",
                Content::Spam,
                Ds::Discard,
                "250 2.7.0 Ok",
            )],
        );
        spam.spam_level = Some(12.5);
        q.store(&spam, &mut &b"Subject: spam\r\n\r\nbuy\r\n"[..])
            .await
            .unwrap();
        let virus = record(
            "ui2",
            "node-b.example",
            Content::Virus,
            vec![rcpt(
                "bob@other.test",
                Content::Virus,
                Ds::Discard,
                "250 2.7.0 Ok",
            )],
        );
        q.store(&virus, &mut &b"Subject: virus\r\n\r\nx\r\n"[..])
            .await
            .unwrap();
        let clean = record(
            "ui3",
            "node-a.example",
            Content::Clean,
            vec![rcpt(
                "alice@example.org",
                Content::Clean,
                Ds::Pass,
                "250 2.0.0 Ok",
            )],
        );
        postsift::sql::log::write_batch(&pool, &[clean], 0)
            .await
            .unwrap();

        // iRedAdmin: count and listing, domain admin of example.org, spam only
        let sel = " AND (sender.domain IN ('org.example') OR recip.domain IN ('org.example')) \
                   AND msgs.content IN ('S', 's', 'Y')";
        let count = s.client(
            &db,
            &format!(
                "SELECT COUNT(msgs.mail_id) AS total FROM msgs \
                 LEFT JOIN msgrcpt ON msgs.mail_id = msgrcpt.mail_id \
                 LEFT JOIN maddr AS sender ON msgs.sid = sender.id \
                 LEFT JOIN maddr AS recip ON msgrcpt.rid = recip.id \
                 WHERE msgs.quar_type = 'Q' {sel}"
            ),
        );
        assert_eq!(count, "1\n", "{kind:?}");
        let list = rows(&s.client(
            &db,
            &format!(
                "SELECT msgs.mail_id, msgs.secret_id, msgs.subject, msgs.time_num, \
                 msgs.content, msgs.size, msgs.spam_level, \
                 sender.email AS sender_email, recip.email AS recipient FROM msgs \
                 LEFT JOIN msgrcpt ON msgs.mail_id = msgrcpt.mail_id \
                 LEFT JOIN maddr AS sender ON msgs.sid = sender.id \
                 LEFT JOIN maddr AS recip ON msgrcpt.rid = recip.id \
                 WHERE msgs.quar_type = 'Q' {sel} ORDER BY msgs.time_num DESC LIMIT 25 OFFSET 0"
            ),
        ));
        assert_eq!(
            list,
            [[
                "ui1",
                "sui1",
                "Grüße ☃",
                "1700000000",
                "S",
                "1234",
                "12.5",
                "sender@mail.example.net",
                "alice@example.org"
            ]],
            "{kind:?}"
        );

        // Modoboa: the listing of a domain admin of example.org
        let modoboa_list = "SELECT msgrcpt.content, msgrcpt.bspam_level, msgrcpt.rs, maddr.email, \
             msgs.from_addr, msgs.subject, msgs.mail_id, msgs.time_num \
             FROM msgrcpt INNER JOIN maddr ON (msgrcpt.rid = maddr.id) \
             INNER JOIN msgs ON (msgrcpt.mail_id = msgs.mail_id) \
             WHERE (msgrcpt.rs IN (' ', 'V', 'R', 'p', 'S', 'H') \
             AND maddr.domain IN ('org.example') \
             AND msgrcpt.mail_id IN (SELECT U0.mail_id FROM quarantine U0 WHERE U0.chunk_ind = 1)) \
             ORDER BY msgs.time_num DESC";
        let list = rows(&s.client(&db, modoboa_list));
        assert_eq!(list.len(), 1, "{kind:?}: {list:?}");
        assert_eq!(list[0][0], "S");
        assert_eq!(list[0][2].trim(), "");
        assert_eq!(
            list[0][3..],
            [
                "alice@example.org",
                "Jörg <Sender@Mail.Example.NET>",
                "Grüße ☃",
                "ui1",
                "1700000000"
            ]
        );

        // Modoboa: the user asks for its release (rs 'p'); the admin sees one pending request
        let rid = s.client(&db, "SELECT id FROM maddr WHERE email='alice@example.org'");
        s.client(
            &db,
            &format!(
                "UPDATE msgrcpt SET rs='p' WHERE mail_id='ui1' AND rid={}",
                rid.trim()
            ),
        );
        let pending = s.client(
            &db,
            "SELECT COUNT(*) FROM msgrcpt INNER JOIN maddr ON (msgrcpt.rid = maddr.id) \
             WHERE (msgrcpt.rs = 'p' AND maddr.domain IN ('org.example'))",
        );
        assert_eq!(pending, "1\n", "{kind:?}");
        // the admin's release reaches postsift (AM.PDP): the requested recipient is claimed
        let c = q
            .claim("ui1", &["alice@example.org".into()], false)
            .await
            .unwrap();
        assert_eq!(c.claimed.len(), 1, "{kind:?}: {c:?}");
        assert_eq!(c.claimed[0].rs, 'p');
        q.finish("ui1", &c.claimed[0], true).await.unwrap();
        // Modoboa then marks it released itself; either way it is released once
        s.client(
            &db,
            &format!(
                "UPDATE msgrcpt SET rs='R' WHERE mail_id='ui1' AND rid={}",
                rid.trim()
            ),
        );
        assert!(q.claim("ui1", &[], false).await.unwrap().claimed.is_empty());

        // iRedAdmin after its release: the message is clean and its chunks go
        s.client(
            &db,
            "UPDATE msgs SET quar_type='', content='C' WHERE mail_id IN ('ui2'); \
             DELETE FROM quarantine WHERE mail_id IN ('ui2')",
        );
        assert_eq!(q.fetch("ui2").await.unwrap(), None, "{kind:?}");
        // iRedAdmin's cleanup tool: quarantined mail older than a day (ui1, from 2023)
        let old = match kind {
            Kind::Postgres => {
                "SELECT mail_id FROM msgs WHERE quar_type = 'Q' \
                 AND time_iso < CURRENT_TIMESTAMP - INTERVAL '1 DAYS'"
            }
            Kind::MariaDb => {
                "SELECT mail_id FROM msgs WHERE quar_type = 'Q' \
                 AND time_num < UNIX_TIMESTAMP(DATE_SUB(NOW(), INTERVAL 1 DAY))"
            }
        };
        assert_eq!(rows(&s.client(&db, old)), [["ui1"]], "{kind:?}");
    }
}

/// One log batch larger than a statement's rows (64) mixing messages the SQL quarantine wrote
/// first with new ones, a mail_id twice in the batch, more new addresses than one `IN` list
/// holds, and the same batch written again (an earlier try that did commit): every message has
/// one `msgs` row, every recipient one `msgrcpt` row numbered after the quarantine's, and
/// every row points at its own addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_log_batch_of_many_rows_beside_the_quarantine_duplicates_nothing() {
    for kind in KINDS {
        let (s, db) = amavis_db(kind, "batch");
        let cfg = config(s.url(&db));
        let pool = Pool::connect_lazy(&cfg).unwrap();
        let q = SqlQuarantine::new(pool.clone(), &cfg, SqlMetrics::register(&Registry::new()));
        // 150 messages: every 7th quarantined first (its row lists recipient 1 only); each
        // has its own sender and two recipients (one shared by all): 301 addresses.
        let mut batch = Vec::new();
        let mut quarantined = 0;
        for i in 0..150 {
            let mut rec = record(
                &format!("b{i:03}"),
                "node-a.example",
                Content::Spam,
                vec![
                    rcpt(
                        &format!("Rcpt{i}@Example.org"),
                        Content::Spam,
                        Ds::Discard,
                        "250 2.7.0 Ok",
                    ),
                    rcpt("all@example.org", Content::Clean, Ds::Pass, "250 2.0.0 Ok"),
                ],
            );
            rec.sender = format!("sender{i}@mail.example.net");
            if i % 7 == 0 {
                let mut first = rec.clone();
                first.recipients.truncate(1);
                q.store(&first, &mut &b"Subject: x\r\n\r\nx\r\n"[..])
                    .await
                    .unwrap();
                quarantined += 1;
            }
            batch.push(rec);
        }
        // the same mail_id again later in the batch, with one more recipient
        let mut again = batch[3].clone();
        again.recipients.push(rcpt(
            "late@example.org",
            Content::Spam,
            Ds::Pass,
            "250 2.0.0 Ok",
        ));
        batch.push(again);
        let (written, existed) = postsift::sql::log::write_batch(&pool, &batch, 0)
            .await
            .unwrap();
        assert_eq!(
            (written, existed),
            (150 - quarantined, quarantined + 1),
            "{kind:?}"
        );
        let check = |what: &str| {
            assert_eq!(
                s.client(&db, "SELECT count(*) FROM msgs"),
                "150\n",
                "{kind:?} {what}"
            );
            // 2 per message, and late@ for b003
            assert_eq!(
                s.client(&db, "SELECT count(*) FROM msgrcpt"),
                "301\n",
                "{kind:?} {what}"
            );
            // each recipient row's address is its own, numbered 1, 2 (3: late@), and its
            // message's sender is its own
            let rows = rows(&s.client(
                &db,
                "SELECT msgrcpt.mail_id, msgrcpt.rseqnum, recip.email, recip.domain, \
                 sender.email, sender.domain FROM msgrcpt \
                 JOIN msgs ON msgs.mail_id=msgrcpt.mail_id \
                 JOIN maddr AS recip ON msgrcpt.rid=recip.id \
                 JOIN maddr AS sender ON msgs.sid=sender.id \
                 ORDER BY msgrcpt.mail_id, msgrcpt.rseqnum",
            ));
            assert_eq!(rows.len(), 301, "{kind:?} {what}");
            for r in &rows {
                let i: usize = r[0][1..].parse().unwrap();
                let want = match (r[1].as_str(), i) {
                    ("1", _) => format!("rcpt{i}@example.org"),
                    ("2", _) => "all@example.org".into(),
                    ("3", 3) => "late@example.org".into(),
                    _ => panic!("{kind:?} {what}: {r:?}"),
                };
                let sender = format!("sender{i}@mail.example.net");
                assert_eq!(
                    r[2..],
                    [
                        want,
                        "org.example".into(),
                        sender,
                        "net.example.mail".into()
                    ],
                    "{kind:?} {what}: {r:?}"
                );
            }
            // one maddr row per address: 150 senders, 150 + all@ + late@
            assert_eq!(
                s.client(&db, "SELECT count(*) FROM maddr"),
                "302\n",
                "{kind:?} {what}"
            );
        };
        check("first write");
        // the batch again, as after a commit whose answer was lost: nothing added
        let (written, existed) = postsift::sql::log::write_batch(&pool, &batch, 0)
            .await
            .unwrap();
        assert_eq!((written, existed), (0, 151), "{kind:?}");
        check("written again");
        // the quarantine's rows kept its recipient first and its quar_type
        assert_eq!(
            s.client(&db, "SELECT count(*) FROM msgs WHERE quar_type='Q'"),
            format!("{quarantined}\n"),
            "{kind:?}"
        );
    }
}
