//! `[quarantine] store = "sql"` through real `postsift run` daemons on real PostgreSQL and
//! MariaDB: a message quarantined on node A is listed, shown and released from node B (AM.PDP
//! as Modoboa and Debian's `amavisd-release` send it, and the CLI), each recipient once across
//! the nodes, to a real next hop (Postfix's smtp-sink); a second release sends nothing;
//! retention purges the rows and chunks; the database stopped is a 451 with nothing kept, and
//! mail flows again once it is back.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use postsift::quarantine::ampdp;
use postsift::sql::{schema, Backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{send_one, Reply};
use crate::peers::sql::{shared, Kind, SqlServer};
use crate::peers::{self, localhost, SmtpSink};
use crate::quarantine::{debian_release_script, BANNED};
use crate::reload::Daemon;
use crate::util;

/// Bounds the waits for events (a broken build must not hang the suite).
const PATIENCE: Duration = Duration::from_secs(60);

fn backend(kind: Kind) -> Backend {
    match kind {
        Kind::Postgres => Backend::Postgres,
        Kind::MariaDb => Backend::MySql,
    }
}

/// A fresh database on `s` with amavis's own DDL, as a site running amavis has it.
fn amavis_db(s: &SqlServer, prefix: &str) -> String {
    let db = s.create_db(prefix);
    s.client(&db, schema::amavis_ddl(backend(s.kind)));
    db
}

/// A node's configuration: scanners off, banned parts quarantined in SQL, AM.PDP on
/// `release`, `sql` added to `[sql]`.
fn node(host: &str, port: u16, sink: SocketAddr, release: &str, url: &str, sql: &str) -> String {
    util::test_config(
        None,
        None,
        sink,
        &format!(
            "[quarantine]\nstore = \"sql\"\nrelease_listen = \"{release}\"\n\
             [banned]\naction = \"quarantine\"\n[sql]\nurl = \"{url}\"\n{sql}"
        ),
    )
    .set("server.listen", vec![format!("127.0.0.1:{port}")])
    .set("server.hostname", host)
    .toml()
}

/// Runs `postsift quarantine --config cfg <args>` as the administrator: (code, stdout, stderr).
async fn cli(cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<std::ffi::OsString> = vec!["quarantine".into(), "--config".into(), cfg.into()];
    all.extend(args.iter().map(Into::into));
    util::blocking(move || util::postsift_out(&all)).await
}

/// One AM.PDP request on a new connection; the answer, %XX-decoded (as Modoboa decodes it).
async fn ampdp_request(addr: SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("an AM.PDP answer")
            .unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    ampdp::decode(&String::from_utf8_lossy(&out))
}

/// Modoboa's release request (modoboa-amavis lib.py `AMrelease.sendreq`): LF line ends, the
/// recipient as `maddr.email` has it, `quar_type=Q`, the row's `secret_id`.
fn modoboa_release(mail_id: &str, secret_id: &str, rcpt: &str) -> String {
    format!(
        "request=release\nmail_id={mail_id}\nsecret_id={secret_id}\nquar_type=Q\n\
         recipient={rcpt}\n\n"
    )
}

/// Waits until the sink has dumped at least `n` messages; all it has then.
async fn delivered(sink: &SmtpSink, n: usize) -> Vec<String> {
    let end = Instant::now() + PATIENCE;
    loop {
        let m = sink.messages();
        if m.len() >= n {
            return m;
        }
        assert!(Instant::now() < end, "the sink has {} of {n}", m.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rcpts(dump: &str) -> Vec<String> {
    dump.lines()
        .filter_map(|l| l.strip_prefix("X-Rcpt-Args: "))
        .map(|l| l.trim_end().to_owned())
        .collect()
}

/// The id in `250 2.7.0 Ok, quarantined, id=<id> - …`.
fn quarantined_id(r: &Reply) -> String {
    assert_eq!(r.code, 250, "{r:?}");
    assert!(r.text.contains("quarantined, id="), "{r:?}");
    let rest = r.text.split("id=").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().to_owned()
}

/// Node A quarantines; node B lists, shows and releases by AM.PDP (Modoboa's request, one
/// recipient); node A's second release of that recipient sends nothing; the CLI on node A
/// releases the other; amavisd-release on node B finds nothing left to send; the database says
/// who got what (rs R), and what Modoboa lists; retention purges the rows and chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_quarantine_on_node_a_released_once_from_node_b() {
    for kind in [Kind::Postgres, Kind::MariaDb] {
        let s = shared(kind);
        let db = amavis_db(s, "nodes");
        let url = s.url(&db);
        let sink = util::blocking(|| SmtpSink::start(&[])).await;
        let tmp = peers::private_dir("sqlq-");
        // The daemon (an ordinary user) makes its socket in a dir of its own.
        let sock_dir = util::daemon_dir("sqlq-sock-");
        let sock = sock_dir.path().join("amavisd.sock");
        let (pa, pb, rb) = (peers::free_port(), peers::free_port(), peers::free_port());
        let ta = node(
            "node-a.example",
            pa,
            sink.addr,
            &format!("unix:{}", sock.display()),
            &url,
            "",
        );
        let tb = node(
            "node-b.example",
            pb,
            sink.addr,
            &format!("127.0.0.1:{rb}"),
            &url,
            "",
        );
        let (cfg_a, cfg_b) = (tmp.path().join("a.toml"), tmp.path().join("b.toml"));
        peers::write_file(&cfg_a, &ta);
        peers::write_file(&cfg_b, &tb);
        let a = Daemon::start(&ta, pa).await;
        let b = Daemon::start(&tb, pb).await;

        let r = send_one(
            localhost(pa),
            "alice@example.org",
            &["bob@example.com", "Carol@Example.com"],
            BANNED.as_bytes(),
        )
        .await;
        let id = quarantined_id(&r);
        assert!(sink.messages().is_empty());
        let row = s.client(
            &db,
            &format!("SELECT quar_type, quar_loc, host, content FROM msgs WHERE mail_id='{id}'"),
        );
        assert_eq!(
            row,
            format!("Q\t{id}\tnode-a.example\tB\n"),
            "{kind:?}: {row}"
        );

        // Listed and shown from node B's configuration.
        let (code, out, err) = cli(&cfg_b, &["list"]).await;
        assert_eq!(code, 0, "{kind:?}: {err}");
        assert!(out.contains(&id), "{out}");
        assert!(out.contains("banned"), "{out}");
        assert!(
            out.contains("bob@example.com=held,carol@example.com=held"),
            "{kind:?}: {out}"
        );
        let (code, out, _) = cli(&cfg_b, &["list", "--category", "spam"]).await;
        assert_eq!((code, out.as_str()), (0, ""));
        let (code, out, _) = cli(
            &cfg_b,
            &["list", "--recipient", "BOB@example.com", "--since", "1h"],
        )
        .await;
        assert_eq!(code, 0);
        assert!(out.contains(&id), "{out}");
        let (code, out, err) = cli(&cfg_b, &["show", &id]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("Subject: invoice"), "{out}");
        assert!(out.contains("invoice.pdf.exe"), "{out}");
        assert!(!out.contains("X-Postsift-Envelope"), "{out}");

        // The gauges' numbers: one message of the size received.
        let sqlcfg = postsift::config::Config::parse(&tb, Path::new("b.toml"))
            .unwrap()
            .sql;
        let q = postsift::sql::quarantine::SqlQuarantine::new(
            postsift::sql::Pool::connect_lazy(&sqlcfg).unwrap(),
            &sqlcfg,
            postsift::sql::metrics::SqlMetrics::register(&prometheus::Registry::new()),
        );
        let size = s.client(&db, &format!("SELECT size FROM msgs WHERE mail_id='{id}'"));
        assert_eq!(
            q.stats().await.unwrap(),
            (1, size.trim().parse().unwrap()),
            "{kind:?}"
        );
        // Modoboa's listing finds it for the domain admin of example.com.
        let listed = s.client(
            &db,
            "SELECT msgs.mail_id FROM msgrcpt INNER JOIN maddr ON (msgrcpt.rid = maddr.id) \
             INNER JOIN msgs ON (msgrcpt.mail_id = msgs.mail_id) \
             WHERE (msgrcpt.rs IN (' ', 'V', 'R', 'p', 'S', 'H') \
             AND maddr.domain IN ('com.example') \
             AND msgrcpt.mail_id IN (SELECT U0.mail_id FROM quarantine U0 WHERE U0.chunk_ind = 1)) \
             ORDER BY msgs.time_num DESC",
        );
        let listed = match kind {
            Kind::Postgres => listed.replace(&format!("\\x{}", hex(&id)), &id),
            Kind::MariaDb => listed,
        };
        assert_eq!(listed, format!("{id}\n{id}\n"), "{kind:?}");

        // Bob asks for its release in Modoboa (rs 'p'); the admin's release, on node B, by
        // Modoboa's AM.PDP request: 250 … Ok, and bob gets it.
        s.client(
            &db,
            &format!("UPDATE msgrcpt SET rs='p' WHERE mail_id='{id}' AND rseqnum=1"),
        );
        let (_, out, _) = cli(&cfg_b, &["list"]).await;
        assert!(out.contains("bob@example.com=requested"), "{kind:?}: {out}");
        // The row's secret_id, as Modoboa reads it; a wrong one is refused as amavis refuses
        // it, nothing sent, nothing claimed.
        let secret = s.client(
            &db,
            &match kind {
                Kind::Postgres => {
                    format!("SELECT encode(secret_id, 'escape') FROM msgs WHERE mail_id='{id}'")
                }
                Kind::MariaDb => format!("SELECT secret_id FROM msgs WHERE mail_id='{id}'"),
            },
        );
        let secret = secret.trim().to_owned();
        assert_eq!(secret.len(), 16, "{kind:?}: {secret:?}");
        let answer = ampdp_request(
            localhost(rb),
            &modoboa_release(&id, "AAAAAAAAAAAAAAAA", "bob@example.com"),
        )
        .await;
        assert_eq!(
            answer,
            format!(
                "setreply=450 4.5.0 Failure: Secret_id AAAAAAAAAAAAAAAA does not match \
                 mail_id {id}\r\n\r\n"
            ),
            "{kind:?}"
        );
        let rs = s.client(
            &db,
            &format!("SELECT rs FROM msgrcpt WHERE mail_id='{id}' ORDER BY rseqnum"),
        );
        // (bob asked for it, carol held; the mysql client drops the blank.)
        assert_eq!(rs.replace(' ', ""), "p\n\n", "{kind:?}: nothing claimed");
        assert!(sink.messages().is_empty());
        let answer = ampdp_request(
            localhost(rb),
            &modoboa_release(&id, &secret, "bob@example.com"),
        )
        .await;
        assert!(
            answer.contains(&format!("setreply=250 2.0.0 Ok, id={id}, released")),
            "{kind:?}: {answer}"
        );
        let m = delivered(&sink, 1).await;
        assert_eq!(rcpts(&m[0]), ["<bob@example.com>"], "{}", m[0]);
        assert!(m[0].contains("X-Quarantine-Released: "), "{}", m[0]);
        assert!(m[0].contains("Subject: invoice"), "{}", m[0]);
        assert!(!m[0].contains("X-Postsift-Envelope"), "{}", m[0]);

        // The same release on node A, by Debian's amavisd-release (bob as its alternative
        // recipient): released before, nothing sent.
        let script = debian_release_script(tmp.path(), &sock);
        let amavisd_release = move |args: Vec<String>| {
            let out = std::process::Command::new(&script)
                .args(args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (run, i, sec) = (amavisd_release.clone(), id.clone(), secret.clone());
        let (code, err) = util::blocking(move || run(vec![i, sec, "bob@example.com".into()])).await;
        assert_eq!(code, Some(0), "{kind:?}: {err}");
        assert_eq!(err.matches("released before").count(), 1, "{kind:?}: {err}");
        // The CLI on node A releases all: only carol is left to send.
        let (code, out, err) = cli(&cfg_a, &["release", &id]).await;
        assert_eq!(code, 0, "{kind:?}: {out}{err}");
        assert!(
            out.contains("<bob@example.com>: 250 2.0.0 Ok, id="),
            "{out}"
        );
        assert!(out.contains("released before"), "{out}");
        assert!(out.contains("<Carol@Example.com>: 250 2.0.0 Ok"), "{out}");
        // Every release answered after the sink's 250: two messages, carol's the second.
        let m = delivered(&sink, 2).await;
        assert_eq!(m.len(), 2, "{kind:?}: a recipient got it twice");
        let mut all: Vec<Vec<String>> = m.iter().map(|d| rcpts(d)).collect();
        all.sort();
        assert_eq!(
            all,
            [
                vec!["<Carol@Example.com>".to_string()],
                vec!["<bob@example.com>".to_string()]
            ],
            "{kind:?}"
        );
        let rs = s.client(
            &db,
            &format!("SELECT rs FROM msgrcpt WHERE mail_id='{id}' ORDER BY rseqnum"),
        );
        assert_eq!(rs, "R\nR\n", "{kind:?}");
        let (_, out, _) = cli(&cfg_b, &["list"]).await;
        assert!(
            out.contains("bob@example.com=released,carol@example.com=released"),
            "{out}"
        );

        // amavisd-release on node A for all: nothing left, nothing sent.
        let i = id.clone();
        let (code, err) = util::blocking(move || amavisd_release(vec![i])).await;
        assert_eq!(code, Some(0), "{kind:?}: {err}");
        assert_eq!(err.matches("released before").count(), 2, "{err}");
        // An address that is not a recipient is refused, nothing claimed.
        let answer = ampdp_request(
            localhost(rb),
            &modoboa_release(&id, "", "mallory@example.net"),
        )
        .await;
        assert!(
            answer.contains(&format!(
                "setreply=550 5.1.1 mallory@example.net is not a recipient of {id}"
            )),
            "{answer}"
        );
        assert_eq!(sink.messages().len(), 2);

        // Retention: the message is made old; the purge takes its rows and chunks.
        s.client(
            &db,
            &format!("UPDATE msgs SET time_num=1000 WHERE mail_id='{id}'"),
        );
        let (code, out, err) = cli(&cfg_b, &["purge"]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("purged 1 messages"), "{out}");
        for t in ["msgs", "msgrcpt", "quarantine"] {
            assert_eq!(
                s.client(&db, &format!("SELECT count(*) FROM {t}")),
                "0\n",
                "{kind:?}: {t}"
            );
        }
        let (code, out, _) = cli(&cfg_a, &["list"]).await;
        assert_eq!((code, out.as_str()), (0, ""));

        // Deleted from node B: gone from every node's list, its chunks gone, its recipients
        // 'D'; a release then finds nothing and sends nothing.
        let r = send_one(
            localhost(pa),
            "alice@example.org",
            &["bob@example.com"],
            BANNED.as_bytes(),
        )
        .await;
        let id2 = quarantined_id(&r);
        let (code, out, err) = cli(&cfg_b, &["delete", &id2]).await;
        assert_eq!(code, 0, "{kind:?}: {err}");
        assert!(out.contains(&format!("deleted {id2}")), "{out}");
        let (code, out, _) = cli(&cfg_a, &["list"]).await;
        assert_eq!((code, out.as_str()), (0, ""), "{kind:?}");
        assert_eq!(s.client(&db, "SELECT count(*) FROM quarantine"), "0\n");
        assert_eq!(s.client(&db, "SELECT rs FROM msgrcpt"), "D\n");
        let answer =
            ampdp_request(localhost(rb), &modoboa_release(&id2, "", "bob@example.com")).await;
        assert!(answer.contains("setreply=550 5.1.1"), "{kind:?}: {answer}");
        let (code, _, err) = cli(&cfg_a, &["delete", &id2]).await;
        assert_ne!(code, 0, "a second delete: {err}");
        assert_eq!(sink.messages().len(), 2);
        a.stop().await;
        b.stop().await;
        peers::finish_dir(Some(tmp));
        peers::finish_dir(Some(sock_dir));
    }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The database stopped: a message to quarantine is 451 and nothing is kept (the client
/// keeps it), a clean one is delivered; once the database is back, the client's retry is
/// quarantined and released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_quarantine_database_stopped_is_451_and_mail_flows_after() {
    let mut s = util::blocking(|| SqlServer::start(Kind::Postgres)).await;
    let db = amavis_db(&s, "down");
    let sink = util::blocking(|| SmtpSink::start(&[])).await;
    let tmp = peers::private_dir("sqlq-");
    let (port, release, mport) = (peers::free_port(), peers::free_port(), peers::free_port());
    let toml = node(
        "node-a.example",
        port,
        sink.addr,
        &format!("127.0.0.1:{release}"),
        &s.url(&db),
        "connect_timeout = 1\ntimeout = 3\n",
    );
    let toml = crate::test_config::TestConfig::parse(&toml)
        .set("metrics.listen", format!("127.0.0.1:{mport}"))
        .toml();
    let cfg = tmp.path().join("a.toml");
    peers::write_file(&cfg, &toml);
    let d = Daemon::start(&toml, port).await;

    s = util::blocking(move || {
        s.stop();
        s
    })
    .await;
    let r = send_one(
        localhost(port),
        "alice@example.org",
        &["bob@example.com"],
        BANNED.as_bytes(),
    )
    .await;
    assert_eq!(r.code, 451, "{r:?}");
    assert!(r.text.contains("quarantine"), "{r:?}");
    let clean = b"From: alice@example.org\r\nSubject: hello\r\n\r\nclean-marker\r\n";
    let r = send_one(
        localhost(port),
        "alice@example.org",
        &["bob@example.com"],
        clean,
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(delivered(&sink, 1).await[0].contains("clean-marker"));
    let (code, _, err) = cli(&cfg, &["list"]).await;
    assert_ne!(code, 0, "list with the database down");
    assert!(err.contains("SQL") || err.contains("database"), "{err}");

    s = util::blocking(move || {
        s.start_again();
        s
    })
    .await;
    assert_eq!(s.client(&db, "SELECT count(*) FROM msgs"), "0\n");
    let r = send_one(
        localhost(port),
        "alice@example.org",
        &["bob@example.com"],
        BANNED.as_bytes(),
    )
    .await;
    let id = quarantined_id(&r);
    assert_eq!(
        s.client(&db, "SELECT count(*) FROM msgs"),
        "1\n",
        "one row: the 451 kept nothing"
    );
    let answer = ampdp_request(
        localhost(release),
        &format!("request=release\r\nmail_id={id}\r\nquar_type=Q\r\n\r\n"),
    )
    .await;
    assert!(answer.contains("setreply=250 2.0.0 Ok"), "{answer}");
    let m = delivered(&sink, 2).await;
    assert!(m.iter().any(|x| x.contains("Subject: invoice")));
    // The store's time and its failure are in the SQL series (the bench reads its p99 there).
    let (_, m) = util::http_get(localhost(mport), "/metrics").await;
    assert!(
        m.contains("postsift_sql_errors_total{kind=\"quarantine_store\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("postsift_sql_duration_seconds_count{kind=\"quarantine_store\"} 2"),
        "{m}"
    );
    assert!(m.contains("postsift_quarantine_entries"), "{m}");
    d.stop().await;
    util::blocking(move || s.stop()).await;
    peers::finish_dir(Some(tmp));
}

/// A site switching from amavis: a message amavis quarantined into its tables (no envelope
/// field of postsift's, LF line ends) is listed, shown and released by `postsift quarantine`
/// to its `msgrcpt` recipient from its `msgs` sender, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_quarantine_releases_what_amavis_quarantined() {
    for kind in [Kind::Postgres, Kind::MariaDb] {
        releases_what_amavis_quarantined(kind).await;
    }
}

async fn releases_what_amavis_quarantined(kind: Kind) {
    let s = shared(kind);
    let db = amavis_db(s, "amavis_quar");
    // What each database's amavis writes: time_iso a timestamp (PostgreSQL) or char(16)
    // (MySQL), mail_text bytea or a blob.
    let (now_num, now_iso, chunk) = match kind {
        Kind::Postgres => (
            "CAST(EXTRACT(EPOCH FROM now()) AS integer)",
            "now()".to_string(),
            (|t: &str| format!("convert_to(E'{t}', 'UTF8')")) as fn(&str) -> String,
        ),
        Kind::MariaDb => (
            "UNIX_TIMESTAMP()",
            format!("'{}'", chrono::Utc::now().format("%Y%m%dT%H%M%SZ")),
            (|t: &str| format!("'{t}'")) as fn(&str) -> String,
        ),
    };
    s.client(
        &db,
        &format!(
            "INSERT INTO maddr (partition_tag, email, domain) VALUES \
               (0, 'sender@example.net', 'net.example'), (0, 'user@example.com', 'com.example'); \
             INSERT INTO msgs (partition_tag, mail_id, secret_id, am_id, time_num, time_iso, sid, \
               policy, client_addr, size, originating, content, quar_type, quar_loc, dsn_sent, \
               spam_level, message_id, from_addr, subject, host) VALUES (0, 'AmAvIsId0001', \
               'secret', '12345-01', {now_num}, {now_iso}, \
               (SELECT id FROM maddr WHERE email='sender@example.net'), '', '192.0.2.1', 60, 'N', \
               'S', 'Q', 'AmAvIsId0001', 'N', 9.5, '<m@example.net>', 'sender@example.net', \
               'amavis spam', 'amavis.example'); \
             INSERT INTO msgrcpt (partition_tag, mail_id, rseqnum, rid, is_local, content, ds, rs, \
               bl, wl, bspam_level, smtp_resp) VALUES (0, 'AmAvIsId0001', 1, \
               (SELECT id FROM maddr WHERE email='user@example.com'), 'Y', 'S', 'D', ' ', 'N', 'N', \
               9.5, '250 2.7.0 Ok, discarded'); \
             INSERT INTO quarantine (partition_tag, mail_id, chunk_ind, mail_text) VALUES \
               (0, 'AmAvIsId0001', 1, {}), (0, 'AmAvIsId0001', 2, {});",
            chunk("Subject: amavis spam\\n\\nbody-from"),
            chunk("-amavis\\n"),
        ),
    );
    let sink = util::blocking(|| SmtpSink::start(&[])).await;
    let tmp = peers::private_dir("sqlq-");
    let cfg = tmp.path().join("node.toml");
    let toml = node(
        "node-a.example",
        peers::free_port(),
        sink.addr,
        "",
        &s.url(&db),
        "",
    );
    peers::write_file(&cfg, &toml);
    let (code, out, err) = cli(&cfg, &["list"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("AmAvIsId0001"), "{out}");
    assert!(out.contains("spam"), "{out}");
    assert!(out.contains("score=9.5"), "{out}");
    assert!(out.contains("<sender@example.net>"), "{out}");
    assert!(out.contains("user@example.com=held"), "{out}");
    let (code, out, err) = cli(&cfg, &["show", "AmAvIsId0001"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("body-from-amavis"), "{out}");
    let (code, out, err) = cli(&cfg, &["release", "AmAvIsId0001"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("<user@example.com>: 250 2.0.0 Ok"), "{out}");
    let m = delivered(&sink, 1).await;
    assert_eq!(rcpts(&m[0]), ["<user@example.com>"], "{}", m[0]);
    assert!(m[0].contains("sender@example.net"), "{}", m[0]);
    assert!(m[0].contains("body-from-amavis"), "{}", m[0]);
    let (code, out, _) = cli(&cfg, &["release", "AmAvIsId0001"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("released before"), "{out}");
    assert_eq!(sink.messages().len(), 1);
    peers::finish_dir(Some(tmp));
}
