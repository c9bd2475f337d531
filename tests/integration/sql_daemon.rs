//! `[sql]` through the command and the daemon, against real PostgreSQL and MariaDB
//! (tests/integration/peers/sql.rs): `check-config` names the `[sql]` keys, `postsift sql init`
//! creates amavis's schema.

use crate::peers::sql::{shared, Kind};
use crate::util::postsift_out;

const KINDS: [Kind; 2] = [Kind::Postgres, Kind::MariaDb];

/// `cmd --config FILE` with `toml` written to FILE: (exit code, stdout, stderr).
fn with_config(cmd: &[&str], toml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postsift.toml");
    std::fs::write(&path, toml).unwrap();
    let mut args: Vec<&str> = cmd.to_vec();
    args.extend(["--config", path.to_str().unwrap()]);
    postsift_out(&args)
}

#[test]
fn check_config_names_sql_keys_and_never_prints_the_password() {
    for (toml, key) in [
        ("[sql]\nurl = \"sqlite:///secretpw\"\n", "sql.url"),
        ("[sql]\nlog = true\n", "sql.url"),
        (
            "[sql]\nurl = \"postgresql://u:secretpw@h/db\"\ntimeout = 0\n",
            "sql.timeout",
        ),
        (
            "[sql]\nurl = \"postgresql://u:secretpw@h:99999/db\"\n",
            "sql.url",
        ),
    ] {
        let (code, out, err) = with_config(&["check-config"], toml);
        assert_eq!(code, 64, "{toml}: {out}{err}");
        assert!(err.contains(&format!("`{key}`")), "{toml}: {err}");
        assert!(!err.contains("secretpw"), "{toml}: {err}");
    }
    let (code, out, err) = with_config(
        &["check-config"],
        "[sql]\nurl = \"mysql://u:pw@127.0.0.1:3306/amavis\"\nlog = true\n",
    );
    assert_eq!(code, 0, "{out}{err}");
}

/// Every table of amavis's schema in `db`, as the database's own client lists them.
fn tables(kind: Kind, db: &str) -> String {
    let s = shared(kind);
    let sql = match kind {
        Kind::Postgres => {
            "SELECT table_name FROM information_schema.tables WHERE table_schema='public' \
             ORDER BY table_name"
                .to_string()
        }
        Kind::MariaDb => format!(
            "SELECT table_name FROM information_schema.tables WHERE table_schema='{db}' \
             ORDER BY table_name"
        ),
    };
    s.client(db, &sql)
}

#[test]
fn sql_init_command_creates_amavis_schema_and_keeps_it() {
    for kind in KINDS {
        let s = shared(kind);
        let db = s.create_db("cliinit");
        let toml = format!("[sql]\nurl = \"{}\"\n", s.url(&db));
        let (code, out, err) = with_config(&["sql", "init"], &toml);
        assert_eq!(code, 0, "{kind:?}: {out}{err}");
        assert!(out.contains("amavis schema ready"), "{out}");
        let listed = tables(kind, &db);
        for t in postsift::sql::schema::TABLES {
            assert!(
                listed.lines().any(|l| l.trim() == t),
                "{kind:?}: no {t} in {listed}"
            );
        }
        // A second run over the tables it made: nothing fails.
        let (code, out, err) = with_config(&["sql", "init"], &toml);
        assert_eq!(code, 0, "{kind:?}: {out}{err}");
        assert_eq!(tables(kind, &db), listed);
    }
    // No url: nothing to do, 64. A database that is not there: 69, without the password.
    let (code, _, err) = with_config(&["sql", "init"], "");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("sql.url"), "{err}");
    let toml = format!(
        "[sql]\nurl = \"postgresql://u:secretpw@127.0.0.1:{}/none\"\nconnect_timeout = 1\n\
         timeout = 1\n",
        crate::peers::free_port()
    );
    let (code, out, err) = with_config(&["sql", "init"], &toml);
    assert_eq!(code, 69, "{out}{err}");
    assert!(!err.contains("secretpw"), "{err}");
}

/// A message with an attachment the default `[banned]` rules ban (double extension, .exe).
const BANNED: &str = "From: Alice <alice@example.org>\r\nTo: <bob@example.com>\r\n\
Subject: invoice\r\nMessage-ID: <banned-1@example.org>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n\
Content-Type: text/plain\r\n\r\nsee attached\r\n--b1\r\n\
Content-Type: application/octet-stream; name=\"invoice.pdf.exe\"\r\n\
Content-Disposition: attachment; filename=\"invoice.pdf.exe\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAA==\r\n--b1--\r\n";

/// Three text parts: over `max_parts = 1`, so the MIME walk stops (UNCHECKED).
const THREE_PARTS: &str = "From: <alice@example.org>\r\nSubject: parts\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"p\"\r\n\r\n--p\r\nContent-Type: text/plain\r\n\r\none\r\n\
--p\r\nContent-Type: text/plain\r\n\r\ntwo\r\n--p\r\nContent-Type: text/plain\r\n\r\nthree\r\n--p--\r\n";

/// The `[sql]` section of a daemon that logs to `url`.
fn sql_section(url: &str, extra: &str) -> String {
    format!("[sql]\nurl = \"{url}\"\nlog = true\nlog_batch = 5\nconnect_timeout = 1\ntimeout = 3\n{extra}")
}

/// One row per logged recipient, in the order of the recipients' addresses: recipient,
/// msgs.content, msgrcpt.content, ds, smtp_resp, policy, host, client_addr, size, from_addr,
/// subject, message_id, spam_level, rs.
fn logged(s: &crate::peers::sql::SqlServer, db: &str) -> Vec<Vec<String>> {
    let email = match s.kind {
        Kind::Postgres => "convert_from(a.email, 'UTF8')",
        Kind::MariaDb => "a.email",
    };
    let sql = format!(
        "SELECT {email}, m.content, r.content, r.ds, r.smtp_resp, m.policy, m.host, \
         m.client_addr, m.size, m.from_addr, m.subject, m.message_id, m.spam_level, r.rs \
         FROM msgs m JOIN msgrcpt r ON r.mail_id = m.mail_id JOIN maddr a ON a.id = r.rid \
         ORDER BY 1"
    );
    s.client(db, &sql)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Polls `cond` every 100 ms (without blocking the runtime) until true or `limit` passes.
async fn wait_for(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    cond()
}

/// Each content category through the real daemon (clamd, spamd, a next hop that refuses one
/// recipient) lands in amavis's tables with amavis's codes: msgs.content, msgrcpt.content and
/// ds per recipient, the reply in smtp_resp, the bank in policy, the node in host. Two nodes
/// share the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_log_through_the_daemon_writes_each_category_with_amavis_codes() {
    use crate::capture::{Behaviour, Capture};
    use crate::client::send_one;
    use crate::util::{self, fixture, start_filter};
    let (clamd, spamd) = util::blocking(|| (util::clamd(), util::spamd())).await;
    for kind in KINDS {
        let s = shared(kind);
        let db = s.create_db("dlog");
        s.client(&db, postsift::sql::schema::amavis_ddl(backend(kind)));
        let sink = Capture::start_with(Behaviour {
            refuse_rcpt: vec![("mta@".into(), "550 5.1.1 no such user".into())],
            ..Behaviour::default()
        })
        .await;
        let a = start_filter(&util::config(
            Some(&clamd),
            Some(&spamd),
            sink.addr,
            &format!(
                "{}[[policy]]\nname = \"lenient\"\nmatch.recipient_domain = [\"lenient.test\"]\n\
                 spam.tag2_level = 5.0\nspam.kill_level = 2000.0\n",
                sql_section(&s.url(&db), "")
            ),
        ))
        .await;
        let b = start_filter(
            &util::test_config(None, None, sink.addr, &sql_section(&s.url(&db), ""))
                .set("server.hostname", "node-b.test")
                .set("parts.max_parts", 1)
                .set("server.max_header_size", 4096)
                .toml(),
        )
        .await;
        let big_header = format!(
            "From: <alice@example.org>\r\nSubject: big\r\nX-Filler: {}\r\n\r\nbody\r\n",
            "x".repeat(6000)
        );
        let cases: Vec<(&str, std::net::SocketAddr, Vec<u8>, u16)> = vec![
            ("clean@example.com", a.addr, fixture("clean.eml"), 250),
            ("virus@example.com", a.addr, fixture("eicar-plain.eml"), 250),
            (
                "banned@example.com",
                a.addr,
                BANNED.as_bytes().to_vec(),
                554,
            ),
            ("spam@example.com", a.addr, fixture("gtube.eml"), 250),
            ("spammy@lenient.test", a.addr, fixture("gtube.eml"), 250),
            ("mta@example.com", a.addr, fixture("clean.eml"), 550),
            (
                "unchecked@example.com",
                b.addr,
                THREE_PARTS.as_bytes().to_vec(),
                250,
            ),
            (
                "oversized@example.com",
                b.addr,
                big_header.into_bytes(),
                552,
            ),
        ];
        for (rcpt, addr, body, code) in &cases {
            let r = send_one(*addr, "alice@example.org", &[rcpt], body).await;
            assert_eq!(r.code, *code, "{kind:?} {rcpt}: {r:?}");
        }
        assert!(
            wait_for(std::time::Duration::from_secs(60), || logged(s, &db).len()
                == cases.len())
            .await,
            "{kind:?}: {:?}",
            logged(s, &db)
        );
        let rows = logged(s, &db);
        let row = |rcpt: &str| {
            rows.iter()
                .find(|r| r[0] == rcpt)
                .unwrap_or_else(|| panic!("{kind:?}: no row for {rcpt}: {rows:?}"))
                .clone()
        };
        // recipient → (msgs.content, msgrcpt.content, ds, reply code)
        for (rcpt, content, ds, resp) in [
            ("clean@example.com", "C", "P", "250 "),
            ("virus@example.com", "V", "D", "250 "),
            ("banned@example.com", "B", "R", "554 "),
            ("spam@example.com", "S", "P", "250 "),
            ("spammy@lenient.test", "Y", "P", "250 "),
            ("mta@example.com", "T", "R", "550 "),
            ("unchecked@example.com", "U", "P", "250 "),
            ("oversized@example.com", "O", "R", "552 "),
        ] {
            let r = row(rcpt);
            assert_eq!(
                (r[1].as_str(), r[2].as_str()),
                (content, content),
                "{kind:?} {rcpt}: {r:?}"
            );
            assert_eq!(r[3], ds, "{kind:?} {rcpt}: {r:?}");
            assert!(r[4].starts_with(resp), "{kind:?} {rcpt}: {r:?}");
            assert_eq!(r[13].trim(), "", "{kind:?} {rcpt}: rs is blank: {r:?}");
            assert_eq!(r[7], "127.0.0.1", "{kind:?} {rcpt}: {r:?}");
            assert!(r[8].parse::<u64>().unwrap() > 100, "{kind:?} {rcpt}: {r:?}");
        }
        let clean = row("clean@example.com");
        assert_eq!(clean[6], "filter.test.local");
        assert_eq!(clean[9], "Alice <alice@example.org>");
        assert_eq!(clean[10], "Lunch on Friday?");
        assert_eq!(clean[11], "<clean-1@example.org>");
        assert_eq!(row("unchecked@example.com")[6], "node-b.test");
        let spammy = row("spammy@lenient.test");
        assert_eq!(spammy[5], "lenient", "{spammy:?}");
        assert!(spammy[12].parse::<f64>().unwrap() >= 5.0, "{spammy:?}");
        assert_eq!(row("spam@example.com")[5], "", "no bank applied");
        assert!(row("banned@example.com")[4].contains("invoice.pdf.exe"));
        a.stop().await;
        b.stop().await;
    }
}

fn backend(kind: Kind) -> postsift::sql::Backend {
    match kind {
        Kind::Postgres => postsift::sql::Backend::Postgres,
        Kind::MariaDb => postsift::sql::Backend::MySql,
    }
}

/// The database stopped while the daemon runs: every message still gets its 250 and reaches
/// the next hop, the log's backlog and errors show in the metrics, and once the database is
/// back the backlog is written: every message logged once. PostgreSQL and MariaDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_log_database_stopped_mid_run_mail_flows_and_backlog_recovers() {
    use crate::capture::Capture;
    use crate::client::send_one;
    use crate::peers::sql::SqlServer;
    use crate::util::{self, fixture, http_get, start_filter};
    for kind in [Kind::Postgres, Kind::MariaDb] {
        let mut s = util::blocking(move || SqlServer::start(kind)).await;
        let db = s.create_db("dout");
        s.client(&db, postsift::sql::schema::amavis_ddl(backend(kind)));
        let sink = Capture::start().await;
        let metrics = crate::peers::localhost(crate::peers::free_port());
        let f = start_filter(
            &util::test_config(None, None, sink.addr, &sql_section(&s.url(&db), ""))
                .set("metrics.listen", metrics.to_string())
                .toml(),
        )
        .await;
        let count = |s: &SqlServer| {
            s.client(&db, "SELECT count(*) FROM msgrcpt")
                .trim()
                .parse::<usize>()
                .unwrap()
        };
        let send = |i: usize| {
            let rcpt = format!("r{i}@example.com");
            async move { send_one(f.addr, "a@example.org", &[&rcpt], &fixture("clean.eml")).await }
        };
        for i in 0..3 {
            assert_eq!(send(i).await.code, 250);
        }
        assert!(
            wait_for(std::time::Duration::from_secs(60), || count(&s) == 3).await,
            "{kind:?}"
        );

        s.stop();
        // Mail flows: each message gets its 250 and reaches the next hop.
        for i in 3..10 {
            assert_eq!(
                send(i).await.code,
                250,
                "{kind:?}: message {i} with the database down"
            );
        }
        assert_eq!(sink.wait_for(10).await.len(), 10);
        let scrape = || async { http_get(metrics, "/metrics").await.1 };
        let value = |text: &str, series: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
                .unwrap_or(-1.0)
        };
        let mut text = scrape().await;
        for _ in 0..600 {
            if value(&text, "postsift_sql_errors_total{kind=\"log_batch\"}") > 0.0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            text = scrape().await;
        }
        assert!(
            value(&text, "postsift_sql_errors_total{kind=\"log_batch\"}") > 0.0,
            "{text}"
        );
        assert!(value(&text, "postsift_sql_log_backlog") > 0.0, "{text}");

        s.start_again();
        assert!(
            wait_for(std::time::Duration::from_secs(90), || count(&s) == 10).await,
            "{kind:?}: logged {} of 10",
            count(&s)
        );
        let text = scrape().await;
        assert_eq!(value(&text, "postsift_sql_log_backlog"), 0.0, "{text}");
        assert_eq!(
            value(&text, "postsift_sql_log_written_total"),
            10.0,
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "postsift_sql_log_dropped_total{reason=\"backlog_full\"}"
            ),
            0.0
        );
        f.stop().await;
        s.stop();
    }
}

/// Per-user policy and wblist rows as a UI writes them.
const LOOKUP_DATA: &str = "
INSERT INTO policy (id, policy_name, spam_tag2_level, spam_kill_level, spam_subject_tag2)
  VALUES (1, 'Low', -50, -50, '[LOW] '), (2, 'Plain', NULL, NULL, NULL);
INSERT INTO users (id, priority, policy_id, email) VALUES
  (1, 7, 1, 'low@example.com'), (2, 7, 2, 'black@example.com'), (3, 7, 2, 'white@example.com');
INSERT INTO mailaddr (id, priority, email) VALUES
  (1, 7, 'bad@example.net'), (2, 7, 'spammer@example.net');
INSERT INTO wblist (rid, sid, wb) VALUES (2, 1, 'B'), (3, 2, 'W');
";

/// The copy the next hop got for `rcpt`: its Subject and X-Spam-Flag lines.
fn copy_for(sink: &crate::capture::Capture, rcpt: &str) -> (String, String) {
    let t = sink
        .all()
        .into_iter()
        .find(|t| t.rcpts.iter().any(|r| r.contains(rcpt)))
        .unwrap_or_else(|| panic!("no copy for {rcpt}"));
    let text = String::from_utf8_lossy(&t.data).into_owned();
    let header = text.split("\r\n\r\n").next().unwrap_or("").to_string();
    let line = |name: &str| {
        header
            .split("\r\n")
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .to_string()
    };
    (line("Subject:"), line("X-Spam-Flag:"))
}

/// `[sql] lookups`: a recipient with its own policy row gets its own spam levels and subject
/// tag (its own copy; the other recipient's is untouched), a blacklisted sender is spam for
/// that recipient whatever the score, a whitelisted one never is; with the database away the
/// file's settings apply and the fallback is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_lookups_through_the_daemon_per_user_spam_level_and_wblist() {
    use crate::capture::Capture;
    use crate::client::send_one;
    use crate::util::{self, fixture, http_get, start_filter};
    let spamd = util::blocking(util::spamd).await;
    for kind in KINDS {
        let s = shared(kind);
        let db = s.create_db("dlook");
        s.client(&db, postsift::sql::schema::amavis_ddl(backend(kind)));
        s.client(&db, LOOKUP_DATA);
        let sink = Capture::start().await;
        let f = start_filter(&util::config(
            None,
            Some(&spamd),
            sink.addr,
            &sql_section(&s.url(&db), "lookups = true\n"),
        ))
        .await;
        let clean = fixture("clean.eml");
        let r = send_one(
            f.addr,
            "alice@example.org",
            &["low@example.com", "other@example.com"],
            &clean,
        )
        .await;
        assert_eq!(r.code, 250, "{kind:?}: {r:?}");
        sink.wait_for(2).await;
        let (subject, flag) = copy_for(&sink, "low@example.com");
        assert_eq!(subject, "Subject: [LOW] Lunch on Friday?", "{kind:?}");
        assert_eq!(flag, "X-Spam-Flag: YES", "{kind:?}");
        let (subject, flag) = copy_for(&sink, "other@example.com");
        assert_eq!(subject, "Subject: Lunch on Friday?", "{kind:?}");
        assert_eq!(flag, "X-Spam-Flag: NO", "{kind:?}");

        // Blacklisted: a clean message is spam for black@ (the file's subject tag).
        let r = send_one(f.addr, "bad@example.net", &["black@example.com"], &clean).await;
        assert_eq!(r.code, 250);
        sink.wait_for(3).await;
        let (subject, flag) = copy_for(&sink, "black@example.com");
        assert_eq!(subject, "Subject: ***Spam*** Lunch on Friday?", "{kind:?}");
        assert_eq!(flag, "X-Spam-Flag: YES", "{kind:?}");

        // Whitelisted: GTUBE is not spam for white@; for anyone else it is.
        let gtube = fixture("gtube.eml");
        let r = send_one(
            f.addr,
            "spammer@example.net",
            &["white@example.com", "else@example.com"],
            &gtube,
        )
        .await;
        assert_eq!(r.code, 250);
        sink.wait_for(5).await;
        let (subject, flag) = copy_for(&sink, "white@example.com");
        assert_eq!(subject, "Subject: Cheap watches", "{kind:?}");
        assert_eq!(flag, "X-Spam-Flag: NO", "{kind:?}");
        let (subject, flag) = copy_for(&sink, "else@example.com");
        assert_eq!(subject, "Subject: ***Spam*** Cheap watches", "{kind:?}");
        assert_eq!(flag, "X-Spam-Flag: YES", "{kind:?}");
        f.stop().await;

        // The log names the policy and marks the lists.
        let bl = s.client(
            &db,
            "SELECT m.policy, r.bl, r.wl FROM msgs m JOIN msgrcpt r ON r.mail_id = m.mail_id \
             WHERE r.bl = 'Y' OR r.wl = 'Y' ORDER BY r.bl DESC",
        );
        let want = "sql:Plain\tY\tN\nsql:Plain\tN\tY";
        assert!(
            wait_for(std::time::Duration::from_secs(30), || {
                s.client(
                    &db,
                    "SELECT m.policy, r.bl, r.wl FROM msgs m JOIN msgrcpt r ON r.mail_id = m.mail_id \
                     WHERE r.bl = 'Y' OR r.wl = 'Y' ORDER BY r.bl DESC",
                )
                .trim()
                    == want
            })
            .await,
            "{kind:?}: {bl}"
        );
    }

    // The database is not there: the file's settings, mail flows, the fallback counted.
    let sink = Capture::start().await;
    let metrics = crate::peers::localhost(crate::peers::free_port());
    let url = format!(
        "postgresql://postgres@127.0.0.1:{}/none",
        crate::peers::free_port()
    );
    let f = start_filter(
        &util::test_config(
            None,
            Some(&spamd),
            sink.addr,
            &sql_section(&url, "lookups = true\n"),
        )
        .set("metrics.listen", metrics.to_string())
        .toml(),
    )
    .await;
    let r = send_one(
        f.addr,
        "alice@example.org",
        &["low@example.com"],
        &fixture("clean.eml"),
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    sink.wait_for(1).await;
    assert_eq!(
        copy_for(&sink, "low@example.com").0,
        "Subject: Lunch on Friday?"
    );
    let text = http_get(metrics, "/metrics").await.1;
    assert!(
        text.contains("postsift_sql_lookup_fallbacks_total 1"),
        "{text}"
    );
    f.stop().await;
}

/// The log and the SQL quarantine share `msgs`: a message quarantined for one recipient
/// (its bank quarantines banned files) and delivered to another (whose bank passes them) is
/// logged with both recipients. The quarantine writes the `msgs` row first; the log then adds
/// the delivered recipient's `msgrcpt` row instead of skipping the whole record, and
/// `quar_type` is Q (the database), not F (files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_log_beside_the_sql_quarantine_keeps_the_delivered_recipients() {
    use crate::capture::Capture;
    use crate::client::send_one;
    use crate::util::{self, start_filter};
    for kind in KINDS {
        let s = shared(kind);
        let db = s.create_db("dlogq");
        s.client(&db, postsift::sql::schema::amavis_ddl(backend(kind)));
        let sink = Capture::start().await;
        let f = start_filter(
            &util::test_config(
                None,
                None,
                sink.addr,
                &format!(
                    "[quarantine]\nstore = \"sql\"\n[banned]\naction = \"quarantine\"\n{}\
                 [[policy]]\nname = \"lover\"\nmatch.recipient_domain = [\"lover.test\"]\n\
                 banned.action = \"pass\"\n",
                    sql_section(&s.url(&db), "")
                ),
            )
            .toml(),
        )
        .await;
        let r = send_one(
            f.addr,
            "alice@example.org",
            &["held@example.com", "fan@lover.test"],
            BANNED.as_bytes(),
        )
        .await;
        assert_eq!(r.code, 250, "{kind:?}: {r:?}");
        assert!(
            wait_for(std::time::Duration::from_secs(60), || logged(s, &db).len()
                == 2)
            .await,
            "{kind:?}: {:?}",
            logged(s, &db)
        );
        let rows = logged(s, &db);
        assert_eq!(rows[0][0], "fan@lover.test", "{kind:?}: {rows:?}");
        assert_eq!(rows[0][3], "P", "{kind:?}: delivered: {rows:?}");
        assert_eq!(rows[1][0], "held@example.com", "{kind:?}: {rows:?}");
        assert_eq!(rows[1][3], "D", "{kind:?}: quarantined: {rows:?}");
        let quar = s.client(&db, "SELECT quar_type FROM msgs");
        assert_eq!(quar.trim(), "Q", "{kind:?}: {quar}");
        // The log's own record came after the quarantine's: one msgs row, two recipients.
        let n = s.client(&db, "SELECT count(*) FROM msgs");
        assert_eq!(n.trim(), "1", "{kind:?}: {n}");
        f.stop().await;
    }
}

/// amavis's rows for one message of `age_days` ago: its `msgs` row (`quar_type` as given, a
/// `quarantine` chunk when Q) and one recipient, `rcpt`, with its own `maddr` row (the sender's
/// too).
fn old_message(
    s: &crate::peers::sql::SqlServer,
    db: &str,
    id: &str,
    age_days: i64,
    quar: &str,
    rcpt: &str,
) {
    let t = chrono::Utc::now().timestamp() - age_days * 86400;
    let domain = rcpt
        .rsplit('@')
        .next()
        .unwrap()
        .rsplit('.')
        .collect::<Vec<_>>()
        .join(".");
    // time_iso is a timestamp in PostgreSQL's schema, amavis's char(16) in MySQL's.
    let iso = match s.kind {
        Kind::Postgres => "now()",
        Kind::MariaDb => "'20261205T000000Z'",
    };
    let mut sql = format!(
        "INSERT INTO maddr (partition_tag, email, domain) VALUES (0, '{rcpt}', '{domain}'); \
         INSERT INTO msgs (partition_tag, mail_id, secret_id, am_id, time_num, time_iso, \
           sid, policy, client_addr, size, originating, content, quar_type, quar_loc, dsn_sent, \
           spam_level, message_id, from_addr, subject, host) VALUES (0, '{id}', '', '{id}', \
           {t}, {iso}, (SELECT id FROM maddr WHERE email='{rcpt}'), '', '192.0.2.1', 60, 'N', 'C', '{quar}', '{id}', 'N', 0, '<{id}@x>', \
           'a@example.net', 'old', 'amavis.example'); \
         INSERT INTO msgrcpt (partition_tag, mail_id, rseqnum, rid, is_local, content, ds, rs, \
           bl, wl, bspam_level, smtp_resp) VALUES (0, '{id}', 1, \
           (SELECT id FROM maddr WHERE email='{rcpt}'), 'Y', 'C', 'P', ' ', 'N', 'N', 0, \
           '250 2.0.0 Ok');"
    );
    if quar == "Q" {
        sql.push_str(&format!(
            " INSERT INTO quarantine (partition_tag, mail_id, chunk_ind, mail_text) \
             VALUES (0, '{id}', 1, 'Subject: old');"
        ));
    }
    s.client(db, &sql);
}

/// With the file store and the log on, the daemon purges the log's rows past
/// `sql.log_retention_days` (PostgreSQL) or, unset, `quarantine.retention_days` (MariaDB), at
/// its start: the old message's `msgs`, `msgrcpt` and its recipient's `maddr` go; a recent one
/// stays, and so does an old message of the SQL quarantine (its retention is the quarantine's,
/// purged by the nodes with `store = "sql"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_log_retention_purges_old_log_rows_with_the_file_store() {
    use crate::capture::Capture;
    use crate::util::{self, start_filter};
    for (kind, retention) in [
        (Kind::Postgres, "log_retention_days = 7\n"),
        (Kind::MariaDb, ""),
    ] {
        let s = shared(kind);
        let db = s.create_db("dlogpurge");
        s.client(&db, postsift::sql::schema::amavis_ddl(backend(kind)));
        old_message(s, &db, "OldLogRow001", 10, "", "gone@old.example");
        old_message(s, &db, "NewLogRow001", 3, "F", "kept@new.example");
        old_message(s, &db, "OldQuarRow01", 10, "Q", "held@quar.example");
        let count = |sql: &str| s.client(&db, sql).trim().to_string();
        assert_eq!(count("SELECT count(*) FROM msgs"), "3");
        let sink = Capture::start().await;
        let f = start_filter(
            &util::test_config(None, None, sink.addr, &sql_section(&s.url(&db), retention))
                .set("quarantine.retention_days", 7)
                .toml(),
        )
        .await;
        assert!(
            wait_for(std::time::Duration::from_secs(60), || count(
                "SELECT count(*) FROM msgs"
            ) == "2")
            .await,
            "{kind:?}: the old log row is not purged"
        );
        let ids = s.client(
            &db,
            "SELECT quar_loc, quar_type FROM msgs ORDER BY time_num, quar_type",
        );
        assert_eq!(
            ids.replace(' ', ""),
            "OldQuarRow01\tQ\nNewLogRow001\tF\n",
            "{kind:?}"
        );
        assert_eq!(count("SELECT count(*) FROM msgrcpt"), "2", "{kind:?}");
        assert_eq!(count("SELECT count(*) FROM quarantine"), "1", "{kind:?}");
        let emails = match kind {
            Kind::Postgres => "SELECT convert_from(email, 'UTF8') FROM maddr ORDER BY 1",
            Kind::MariaDb => "SELECT email FROM maddr ORDER BY 1",
        };
        assert_eq!(
            s.client(&db, emails),
            "held@quar.example\nkept@new.example\n",
            "{kind:?}"
        );
        f.stop().await;
    }
}

/// SIGHUP with `[sql]` (PostgreSQL, MariaDB): turning the log on takes effect for the next
/// message; a reload that changes something else (`server.hostname`) keeps the pool (the
/// database sees the same connections, none new, none closed), and the next row has the new
/// host; a new `sql.url` sends the next row to the other database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_reload_turns_the_log_on_keeps_an_unchanged_pool_and_follows_a_new_url() {
    for kind in KINDS {
        sql_reload_on(kind).await;
    }
}

async fn sql_reload_on(kind: Kind) {
    use crate::capture::Capture;
    use crate::peers::{self, localhost};
    use crate::reload::{cfg, Daemon, RELOADED};
    use crate::util::send_fixture;
    let s = shared(kind);
    let (db1, db2) = (s.create_db("reload1"), s.create_db("reload2"));
    for db in [&db1, &db2] {
        s.client(db, postsift::sql::schema::amavis_ddl(backend(kind)));
    }
    let sink = Capture::start().await;
    let port = peers::free_port();
    let conf = |host: &str, db: &str, log: bool| {
        cfg(
            &[port],
            sink.addr,
            &format!("hostname = \"{host}\""),
            &format!(
                "[sql]\nurl = \"{}\"\nlog = {log}\nlog_batch = 1\n",
                s.url(db)
            ),
        )
    };
    let hosts = |db: &str| s.client(db, "SELECT host FROM msgs ORDER BY time_num, host");
    // The daemon's connections to `db` (not the client asking).
    let backends = |db: &str| {
        let sql = match kind {
            Kind::Postgres => format!(
                "SELECT pid FROM pg_stat_activity WHERE datname='{db}' \
                 AND pid <> pg_backend_pid() ORDER BY pid"
            ),
            Kind::MariaDb => format!(
                "SELECT id FROM information_schema.processlist WHERE db='{db}' \
                 AND id <> connection_id() ORDER BY id"
            ),
        };
        s.client(db, &sql)
    };
    let deliver = async || {
        let r = send_fixture(localhost(port), "clean.eml").await;
        assert_eq!(r.code, 250, "{r:?}");
    };
    let mut d = Daemon::start(&conf("node-a.test", &db1, false), port).await;
    deliver().await;
    assert_eq!(sink.count(), 1);
    assert_eq!(hosts(&db1), "", "the log is off");

    // The log turned on.
    d.write_config(&conf("node-a.test", &db1, true));
    d.reload(RELOADED, 1).await;
    deliver().await;
    assert!(
        wait_for(std::time::Duration::from_secs(60), || hosts(&db1)
            == "node-a.test\n")
        .await,
        "{kind:?}: {}",
        hosts(&db1)
    );
    let before = backends(&db1);
    assert!(!before.trim().is_empty(), "{kind:?}: the pool is connected");

    // [sql] unchanged: the same pool writes the next row, under the new hostname.
    d.write_config(&conf("node-b.test", &db1, true));
    d.reload(RELOADED, 2).await;
    deliver().await;
    assert!(
        wait_for(std::time::Duration::from_secs(60), || hosts(&db1)
            .lines()
            .count()
            == 2)
        .await
    );
    assert_eq!(hosts(&db1), "node-a.test\nnode-b.test\n", "{kind:?}");
    assert_eq!(backends(&db1), before, "{kind:?}: the pool was kept");

    // A new url: the next row goes to the other database.
    d.write_config(&conf("node-b.test", &db2, true));
    d.reload(RELOADED, 3).await;
    deliver().await;
    assert!(
        wait_for(std::time::Duration::from_secs(60), || hosts(&db2)
            == "node-b.test\n")
        .await,
        "{}",
        hosts(&db2)
    );
    assert_eq!(hosts(&db1).lines().count(), 2);
    assert_eq!(sink.count(), 4);
    d.stop().await;
}
