//! The quarantine: each category stored (EICAR with the real clamd, GTUBE with the real spamd,
//! a banned attachment, an UNCHECKED message) byte for byte as it arrived; release through the
//! CLI arrives once at the sink; Debian's real `amavisd-release` releases over AM.PDP; a store
//! that cannot be written (read-only or full file system, in a private mount namespace) is a
//! 4xx with nothing kept; `kill -9` during a store leaves no entry and no 250; retention purge.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postsift::quarantine::{Filter as ListFilter, Quarantine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::capture::Capture;
use crate::client::{Client, Reply};
use crate::peers;
use crate::test_config::TestConfig;
use crate::util::{self, config, fixture, start_filter};

/// A message with an attachment the default `[banned]` rules ban (double extension, .exe).
pub(crate) const BANNED: &str = "From: <alice@example.org>\r\nTo: <bob@example.com>\r\nSubject: invoice\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n\
Content-Type: text/plain\r\n\r\nsee attached\r\n.leading dot\r\n--b1\r\n\
Content-Type: application/octet-stream; name=\"invoice.pdf.exe\"\r\n\
Content-Disposition: attachment; filename=\"invoice.pdf.exe\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAA==\r\n--b1--\r\n";

/// Three text parts: over `max_parts = 1`, so the MIME walk stops (UNCHECKED).
const THREE_PARTS: &str = "From: <alice@example.org>\r\nSubject: parts\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"p\"\r\n\r\n--p\r\nContent-Type: text/plain\r\n\r\none\r\n\
--p\r\nContent-Type: text/plain\r\n\r\ntwo\r\n--p\r\nContent-Type: text/plain\r\n\r\nthree\r\n--p--\r\n";

/// Runs `postsift quarantine --config cfg <args>`: (exit code, stdout, stderr).
fn cli(cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["quarantine".as_ref(), "--config".as_ref(), cfg.as_os_str()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    util::postsift_out(&all)
}

/// What postsift received of `body` once dot-unstuffed: what the test client sends
/// (`peers::dot_stuff`: bare LF as CRLF, a CRLF at the end), less the stuffing.
fn as_received(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &b) in body.iter().enumerate() {
        if b == b'\n' && (i == 0 || body[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The id in `250 2.7.0 Ok, quarantined, id=<id> - …`.
fn quarantined_id(r: &Reply) -> String {
    assert_eq!(r.code, 250, "{r:?}");
    assert!(r.text.contains("2.7.0 Ok, quarantined, id="), "{r:?}");
    let rest = r.text.split("id=").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().to_owned()
}

/// A quarantine test's start: a temp dir, the quarantine dir `q` in it, the sink, the config
/// ([`qconfig`] with `extra`, no scanners) written to `postsift.toml` there and as text, and
/// postsift on it.
async fn quarantine_filter(
    extra: &str,
) -> (
    tempfile::TempDir,
    PathBuf,
    Capture,
    PathBuf,
    String,
    util::Filter,
) {
    let tmp = peers::private_dir("quarantine-");
    let dir = tmp.path().join("q");
    let sink = Capture::start().await;
    let toml = qconfig(&dir, None, None, sink.addr, extra);
    let cfg = tmp.path().join("postsift.toml");
    peers::write_file(&cfg, &toml);
    let f = start_filter(&toml).await;
    (tmp, dir, sink, cfg, toml, f)
}

fn qconfig(
    dir: &Path,
    clamd: Option<&str>,
    spamd: Option<&str>,
    sink: std::net::SocketAddr,
    extra: &str,
) -> String {
    config(
        clamd,
        spamd,
        sink,
        &format!("[quarantine]\ndir = \"{}\"\n{extra}", dir.display()),
    )
}

/// Sends `body` over LMTP to two recipients; both replies.
async fn lmtp_two(addr: std::net::SocketAddr, body: &[u8]) -> Vec<Reply> {
    let mut c = Client::greeted(addr).await;
    c.transaction(
        true,
        "alice@example.org",
        &["bob@example.com", "carol@example.com"],
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_category_is_quarantined_as_it_arrived() {
    let (clamd, spamd) = util::blocking(|| (util::clamd(), util::spamd())).await;
    let cases: Vec<(&str, Vec<u8>, &str, &str, &str)> = vec![
        (
            "virus",
            fixture("eicar-plain.eml"),
            "[virus]\naction = \"quarantine\"\n",
            "INFECTED: Postsift.Test.EICAR",
            "Postsift.Test.EICAR",
        ),
        (
            "banned",
            BANNED.as_bytes().to_vec(),
            "[banned]\naction = \"quarantine\"\n",
            "BANNED: invoice.pdf.exe",
            "invoice.pdf.exe",
        ),
        (
            "spam",
            fixture("gtube.eml"),
            "[spam]\nquarantine_level = 20\n",
            "spam",
            "score=1000",
        ),
        (
            "unchecked",
            THREE_PARTS.as_bytes().to_vec(),
            "[parts]\nmax_parts = 1\non_max_parts = \"quarantine\"\n",
            "UNCHECKED",
            "parts",
        ),
    ];
    for (category, body, extra, text, reason) in cases {
        let tmp = peers::private_dir("quarantine-");
        let dir = tmp.path().join("q");
        let sink = Capture::start().await;
        let f = start_filter(&qconfig(&dir, Some(&clamd), Some(&spamd), sink.addr, extra)).await;
        let replies = lmtp_two(f.addr, &body).await;
        // LMTP: one reply per recipient, both for the one stored copy.
        let id = quarantined_id(&replies[0]);
        assert_eq!(quarantined_id(&replies[1]), id);
        assert!(
            replies[0].text.contains(&format!("- {text}")),
            "{category}: {replies:?}"
        );
        f.stop().await;
        assert_eq!(sink.count(), 0, "{category} reached the sink");

        let q = Quarantine::open(&dir).unwrap();
        let list = q.list(&ListFilter::default()).unwrap();
        assert_eq!(list.len(), 1, "{category}");
        let e = &list[0];
        assert_eq!(
            (e.id.as_str(), e.category.as_str()),
            (id.as_str(), category)
        );
        assert!(e.reason.contains(reason), "{category}: {e:?}");
        assert_eq!(e.sender, "alice@example.org");
        let states: Vec<(&str, &str)> = e
            .recipients
            .iter()
            .map(|r| (r.address.as_str(), r.state.as_str()))
            .collect();
        assert_eq!(
            states,
            [("bob@example.com", "held"), ("carol@example.com", "held")]
        );
        let (meta, stored) = q.read(&id).unwrap();
        assert_eq!(
            stored,
            as_received(&body),
            "{category}: stored copy differs"
        );
        assert_eq!(e.size, stored.len() as u64);
        assert_eq!(meta.recipients.len(), 2);
        peers::finish_dir(Some(tmp));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_through_the_cli_arrives_once_per_recipient() {
    let tmp = peers::private_dir("quarantine-");
    let dir = tmp.path().join("q");
    let sink = Capture::start().await;
    let metrics_port = peers::free_port();
    let toml = TestConfig::parse(&qconfig(
        &dir,
        None,
        None,
        sink.addr,
        "[banned]\naction = \"quarantine\"\n",
    ))
    .set("metrics.listen", format!("127.0.0.1:{metrics_port}"))
    .toml();
    let cfg = tmp.path().join("postsift.toml");
    peers::write_file(&cfg, &toml);
    let f = start_filter(&toml).await;

    let mut c = Client::greeted(f.addr).await;
    c.expect("EHLO postfix.test.local", 250).await;
    c.expect(
        "XFORWARD NAME=mail.example.org ADDR=192.0.2.7 PORT=40000 HELO=mail.example.org",
        250,
    )
    .await;
    c.expect("XFORWARD PROTO=ESMTP SOURCE=REMOTE IDENT=4AbCdE", 250)
        .await;
    c.expect("MAIL FROM:<alice@example.org> RET=HDRS ENVID=env+2B1", 250)
        .await;
    c.expect(
        "RCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.com",
        250,
    )
    .await;
    c.expect("RCPT TO:<carol@example.com>", 250).await;
    c.expect("DATA", 354).await;
    c.body(BANNED.as_bytes()).await;
    let id = quarantined_id(&c.reply().await);
    assert!(c.cmd("QUIT").await.code == 221);
    assert_eq!(sink.count(), 0);

    let (_, m) = util::http_get(peers::localhost(metrics_port), "/metrics").await;
    assert!(
        m.contains("postsift_quarantined_total{category=\"banned\"} 1"),
        "{m}"
    );
    assert!(m.contains("postsift_quarantine_entries 1"), "{m}");
    assert!(
        m.contains("postsift_messages_total{action=\"quarantine\",frontend=\"content_filter\",verdict=\"banned\"} 1"),
        "{m}"
    );

    // Beside the running daemon.
    let (code, out, err) = util::blocking({
        let cfg = cfg.clone();
        move || cli(&cfg, &["list"])
    })
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id), "{out}");
    assert!(out.contains("banned"), "{out}");
    assert!(
        out.contains("bob@example.com=held,carol@example.com=held"),
        "{out}"
    );
    for filter in [
        vec!["list", "--category", "virus"],
        vec!["list", "--recipient", "dave@example.com"],
    ] {
        let (code, out, _) = cli(&cfg, &filter);
        assert_eq!((code, out.as_str()), (0, ""), "{filter:?}");
    }
    let (code, out, _) = cli(
        &cfg,
        &["list", "--recipient", "BOB@example.com", "--since", "1h"],
    );
    assert_eq!(code, 0);
    assert!(out.contains(&id), "{out}");

    let (code, out, err) = cli(&cfg, &["show", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Subject: invoice"), "{out}");
    assert!(out.contains("see attached"), "{out}");
    assert!(
        out.contains("invoice.pdf.exe (application/octet-stream"),
        "{out}"
    );
    assert!(out.contains("[192.0.2.7]"), "{out}");

    // One recipient first.
    let (code, out, err) = util::blocking({
        let (cfg, id) = (cfg.clone(), id.clone());
        move || cli(&cfg, &["release", &id, "--recipient", "bob@example.com"])
    })
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("<bob@example.com>: 250 2.0.0 Ok"), "{out}");
    let m = sink.wait_for(1).await.pop().unwrap();
    assert_eq!(
        m.rcpts,
        ["RCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.com"]
    );
    assert!(
        m.mail.starts_with("MAIL FROM:<alice@example.org>"),
        "{}",
        m.mail
    );
    assert!(
        m.mail.contains("RET=HDRS") && m.mail.contains("ENVID=env+2B1"),
        "{}",
        m.mail
    );
    assert!(
        m.xforward.iter().any(|l| l.contains("ADDR=192.0.2.7")),
        "{:?}",
        m.xforward
    );
    assert!(
        m.xforward.iter().any(|l| l.contains("IDENT=4AbCdE")),
        "{:?}",
        m.xforward
    );
    let (first, rest) = m
        .text()
        .split_once("\r\n")
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .unwrap();
    assert!(first.starts_with("X-Quarantine-Released: "), "{first}");
    assert!(first.ends_with(" by postsift"), "{first}");
    assert_eq!(rest.as_bytes(), as_received(BANNED.as_bytes()));

    // Everyone: bob not again, carol now.
    let (code, out, err) = util::blocking({
        let (cfg, id) = (cfg.clone(), id.clone());
        move || cli(&cfg, &["release", &id])
    })
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("<bob@example.com>: 250 2.0.0 Ok, id="),
        "{out}"
    );
    assert!(out.contains("released before, not sent again"), "{out}");
    let all = sink.wait_for(2).await;
    assert_eq!(all[1].rcpts, ["RCPT TO:<carol@example.com>"]);
    // A third release sends nothing.
    let (code, out, _) = util::blocking({
        let (cfg, id) = (cfg.clone(), id.clone());
        move || cli(&cfg, &["release", &id])
    })
    .await;
    assert_eq!(code, 0, "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.count(), 2, "released twice");

    // Not a recipient: refused; another address: with --to, once.
    let (code, _, err) = cli(&cfg, &["release", &id, "--recipient", "dave@example.com"]);
    assert_eq!(code, 64, "{err}");
    for _ in 0..2 {
        let (code, out, err) = util::blocking({
            let (cfg, id) = (cfg.clone(), id.clone());
            move || cli(&cfg, &["release", &id, "--to", "admin@example.com"])
        })
        .await;
        assert_eq!(code, 0, "{out}{err}");
    }
    let all = sink.wait_for(3).await;
    assert_eq!(all[2].rcpts, ["RCPT TO:<admin@example.com>"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.count(), 3);
    let (_, out, _) = cli(&cfg, &["list"]);
    assert!(
        out.contains(
            "bob@example.com=released,carol@example.com=released,+admin@example.com=released"
        ),
        "{out}"
    );

    // On the stopped daemon's files.
    f.stop().await;
    let (code, out, err) = cli(&cfg, &["delete", &id]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = cli(&cfg, &["list"]);
    assert_eq!((code, out.as_str()), (0, ""));
    let (code, _, _) = cli(&cfg, &["show", &id]);
    assert_eq!(code, 64);
    assert_eq!(std::fs::read_dir(dir.join("msgs")).unwrap().count(), 0);
    peers::finish_dir(Some(tmp));
}

/// Time from the final dot to the 250 for a 4 KiB message: quarantined (two fsyncs and an
/// index commit) against discarded. Printed, for the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_to_quarantine_a_small_message() {
    let tmp = peers::private_dir("quarantine-");
    let dir = tmp.path().join("q");
    let sink = Capture::start().await;
    let body = BANNED.replace("see attached", &vec!["x".repeat(76); 45].join("\r\n"));
    assert!((3500..5000).contains(&body.len()), "{}", body.len());
    let mut took = Vec::new();
    for action in ["quarantine", "discard"] {
        let f = start_filter(&qconfig(
            &dir,
            None,
            None,
            sink.addr,
            &format!("[banned]\naction = \"{action}\"\n"),
        ))
        .await;
        let mut c = Client::greeted(f.addr).await;
        c.expect("EHLO t", 250).await;
        let n = 20;
        let mut total = Duration::ZERO;
        for _ in 0..n {
            c.expect("MAIL FROM:<a@example.org>", 250).await;
            c.expect("RCPT TO:<b@example.com>", 250).await;
            c.expect("DATA", 354).await;
            let start = Instant::now();
            c.body(body.as_bytes()).await;
            let r = c.reply().await;
            total += start.elapsed();
            assert_eq!(r.code, 250, "{r:?}");
        }
        took.push((action, total / n));
        f.stop().await;
    }
    eprintln!("4 KiB message, final dot to 250 (mean of 20): {took:?}");
    let q = Quarantine::open(&dir).unwrap();
    assert_eq!(q.list(&ListFilter::default()).unwrap().len(), 20);
    peers::finish_dir(Some(tmp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_amavisd_release_releases_over_ampdp() {
    let tmp = peers::private_dir("quarantine-");
    let dir = tmp.path().join("q");
    let sock = tmp.path().join("amavisd.sock");
    let sink = Capture::start().await;
    let f = start_filter(&qconfig(
        &dir,
        None,
        None,
        sink.addr,
        &format!(
            "release_listen = \"unix:{}\"\n[banned]\naction = \"quarantine\"\n",
            sock.display()
        ),
    ))
    .await;
    let replies = lmtp_two(f.addr, BANNED.as_bytes()).await;
    let id = quarantined_id(&replies[0]);
    // Debian's script, its socket path (fixed in a BEGIN block) pointed at ours.
    let script = std::fs::read_to_string("/usr/sbin/amavisd-release")
        .expect("amavisd-new is installed (scripts/install-deps.sh)");
    let script = script.replace(
        "'/var/lib/amavis/amavisd.sock'",
        &format!("'{}'", sock.display()),
    );
    assert!(script.contains(&sock.display().to_string()));
    let path = tmp.path().join("amavisd-release");
    peers::write_file(&path, script);
    peers::chmod(&path, 0o755);
    let run = move |args: Vec<String>| {
        // Run as itself: its #! line asks for taint mode (-T).
        let out = Command::new(&path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let run2 = run.clone();
    let i = id.clone();
    let (code, err) = util::blocking(move || run2(vec![i])).await;
    assert_eq!(code, 0, "{err}");
    // One setreply per recipient, printed by the script.
    assert_eq!(
        err.matches(&format!("250 2.0.0 Ok, id={id}, released"))
            .count(),
        2,
        "{err}"
    );
    let m = sink.wait_for(1).await.pop().unwrap();
    assert_eq!(
        m.rcpts,
        ["RCPT TO:<bob@example.com>", "RCPT TO:<carol@example.com>"]
    );
    assert!(m.text().starts_with("X-Quarantine-Released: "));

    // Again: nothing sent. To another address (the script's alt recipients): sent once.
    let run3 = run.clone();
    let i = id.clone();
    let (code, err) = util::blocking(move || run3(vec![i])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("released before").count(), 2, "{err}");
    let i = id.clone();
    let (code, err) = util::blocking(move || run(vec![i, "postmaster@example.com".into()])).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("250 2.0.0 Ok"), "{err}");
    let all = sink.wait_for(2).await;
    assert_eq!(all[1].rcpts, ["RCPT TO:<postmaster@example.com>"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.count(), 2);
    f.stop().await;
    peers::finish_dir(Some(tmp));
}

/// Debian's `amavisd-release`, its socket path (fixed in a BEGIN block) pointed at `sock`.
pub(crate) fn debian_release_script(tmp: &Path, sock: &Path) -> PathBuf {
    let script = std::fs::read_to_string("/usr/sbin/amavisd-release")
        .expect("amavisd-new is installed (scripts/install-deps.sh)");
    let script = script.replace(
        "'/var/lib/amavis/amavisd.sock'",
        &format!("'{}'", sock.display()),
    );
    let path = tmp.join("amavisd-release");
    peers::write_file(&path, script);
    peers::chmod(&path, 0o755);
    path
}

/// Issue 17: an AM.PDP `recipient` (and a CLI `--to`) with CRLF in it was %-decoded and written
/// into RCPT TO as it was: the next hop got `NOOP INJECTED-1` and a copy went to a second,
/// injected address. Both entries now refuse it, nothing is claimed, nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_recipient_with_crlf_injected_smtp_commands_into_reinjection() {
    let tmp = peers::private_dir("quarantine-");
    let dir = tmp.path().join("q");
    let sock = tmp.path().join("amavisd.sock");
    let sink = Capture::start().await;
    let toml = qconfig(
        &dir,
        None,
        None,
        sink.addr,
        &format!(
            "release_listen = \"unix:{}\"\n[banned]\naction = \"quarantine\"\n",
            sock.display()
        ),
    );
    let cfg = tmp.path().join("postsift.toml");
    peers::write_file(&cfg, &toml);
    let f = start_filter(&toml).await;
    let replies = lmtp_two(f.addr, BANNED.as_bytes()).await;
    let id = quarantined_id(&replies[0]);
    let script = debian_release_script(tmp.path(), &sock);
    let evil = "x@evil.example>\r\nNOOP INJECTED-1\r\nRCPT TO:<injected@evil.example";

    let i = id.clone();
    let (code, err) = util::blocking(move || {
        let out = Command::new(&script)
            .args([i.as_str(), evil])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await;
    // The script prints the setreply and exits 0 whatever it says.
    assert!(err.contains("553 5.1.3"), "{code} {err}");
    assert!(err.contains("bad address syntax"), "{err}");

    let (code, out, err) = cli(&cfg, &["release", &id, "--to", evil]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("bad address syntax"), "{err}");
    // A well-formed release afterwards still works: nothing was claimed by the refused ones.
    let (code, out, err) = cli(&cfg, &["release", &id]);
    assert_eq!(code, 0, "{out} {err}");
    let all = sink.wait_for(1).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        all[0].rcpts,
        ["RCPT TO:<bob@example.com>", "RCPT TO:<carol@example.com>"]
    );
    assert!(!all
        .iter()
        .any(|t| t.rcpts.iter().any(|r| r.contains("injected"))));
    f.stop().await;
    peers::finish_dir(Some(tmp));
}

/// Issue 17: NOTIFY= (and the sender) of a release came from the quarantine file unchecked: a
/// file edited to hold CRLF in them injected commands into the reinjection connection. The
/// reinjection client now checks every address and parameter it writes, whatever its source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_notify_from_a_quarantine_file_injected_smtp_commands() {
    let (tmp, dir, sink, cfg, _toml, f) =
        quarantine_filter("[banned]\naction = \"quarantine\"\n").await;
    let replies = lmtp_two(f.addr, BANNED.as_bytes()).await;
    let id = quarantined_id(&replies[0]);
    f.stop().await;

    // The file: "postsift-quarantine 1 <len>\n<json>\n<message>".
    let path = dir.join("msgs").join(&id);
    let data = std::fs::read(&path).unwrap();
    let nl = data.iter().position(|&b| b == b'\n').unwrap();
    let first = std::str::from_utf8(&data[..nl]).unwrap();
    let (magic, len) = first.rsplit_once(' ').unwrap();
    let len: usize = len.parse().unwrap();
    let mut meta: serde_json::Value = serde_json::from_slice(&data[nl + 1..nl + 1 + len]).unwrap();
    meta["recipients"][0]["notify"] =
        "SUCCESS\r\nNOOP INJECTED-1\r\nRCPT TO:<injected@evil.example>".into();
    let json = serde_json::to_string(&meta).unwrap();
    let mut out = format!("{magic} {}\n{json}", json.len()).into_bytes();
    out.extend_from_slice(&data[nl + 1 + len..]);
    std::fs::write(&path, out).unwrap();

    let (code, out, err) = cli(&cfg, &["release", &id]);
    assert_eq!(code, 75, "{out} {err}");
    assert!(out.contains("501 5.5.4"), "{out}");
    assert!(!out.contains('\r'), "{out:?}");
    assert_eq!(sink.count(), 0, "{:?}", sink.all());
    peers::finish_dir(Some(tmp));
}

/// `postsift run` as a child in a mount namespace of its own, where `msgs` is a tmpfs mounted
/// with `mount_opts` (owned by the daemon's user), run as that user once mounted
/// ([`util::daemon_argv`]; `tmp` is a [`util::daemon_dir`]). Returns the child and its SMTP
/// address.
fn run_with_msgs_mount(
    tmp: &Path,
    toml: &str,
    mount_opts: &str,
) -> (std::process::Child, std::net::SocketAddr) {
    let port = peers::free_port();
    let toml = TestConfig::parse(toml)
        .set("server.listen", vec![format!("127.0.0.1:{port}")])
        .toml();
    let cfg = tmp.join("postsift.toml");
    peers::write_file(&cfg, toml);
    let msgs = tmp.join("q/msgs");
    std::fs::create_dir_all(&msgs).unwrap();
    util::give_to_daemon(&tmp.join("q"));
    let (uid, gid) = util::daemon_ids();
    let daemon: Vec<String> = util::daemon_argv(&cfg)
        .iter()
        .map(|a| format!("'{}'", a.to_str().unwrap()))
        .collect();
    let mut unshare = Command::new("unshare");
    util::with_daemon_umask(&mut unshare);
    let child = unshare
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o {mount_opts},uid={uid},gid={gid},mode=0700 postsift-test {} && exec {}",
            msgs.display(),
            daemon.join(" ")
        ))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = peers::localhost(port);
    assert!(
        peers::wait_until(Duration::from_secs(10), || peers::port_open(addr)),
        "postsift did not start"
    );
    (child, addr)
}

/// The files in the child's view of `msgs` (through /proc/<pid>/root).
fn child_msgs(pid: u32, tmp: &Path) -> Vec<String> {
    let p = PathBuf::from(format!("/proc/{pid}/root"))
        .join(tmp.join("q/msgs").strip_prefix("/").unwrap());
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_is_a_tempfail_and_keeps_nothing() {
    for (case, opts) in [("read-only", "ro,size=1m"), ("full", "size=64k")] {
        let tmp = util::daemon_dir("quarantine-");
        let sink = Capture::start().await;
        let toml = qconfig(
            &tmp.path().join("q"),
            None,
            None,
            sink.addr,
            "[banned]\naction = \"quarantine\"\n",
        );
        let (mut child, addr) = {
            let (t, toml, opts) = (tmp.path().to_owned(), toml.clone(), opts.to_owned());
            util::blocking(move || run_with_msgs_mount(&t, &toml, &opts)).await
        };
        // 200 KB: more than the full file system holds.
        let big = BANNED.replace("see attached", &vec!["y".repeat(98); 2000].join("\r\n"));
        let mut c = Client::greeted(addr).await;
        let r = c
            .transaction(
                false,
                "alice@example.org",
                &["bob@example.com"],
                big.as_bytes(),
            )
            .await;
        assert_eq!(r[0].code, 451, "{case}: {r:?}");
        assert!(
            r[0].text.contains("4.3.0 Error in processing, id="),
            "{case}: {r:?}"
        );
        assert!(r[0].text.contains("quarantine FAILED"), "{case}: {r:?}");
        let files = child_msgs(child.id(), tmp.path());
        assert!(files.is_empty(), "{case}: left {files:?}");
        if case == "full" {
            // Room for a small one: stored, and only it.
            let mut c = Client::greeted(addr).await;
            let r = c
                .transaction(
                    false,
                    "alice@example.org",
                    &["bob@example.com"],
                    BANNED.as_bytes(),
                )
                .await;
            let id = quarantined_id(&r[0]);
            assert_eq!(
                child_msgs(child.id(), tmp.path()),
                std::slice::from_ref(&id)
            );
            let q = Quarantine::open(&tmp.path().join("q")).unwrap();
            let ids: Vec<String> = q
                .list(&ListFilter::default())
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect();
            assert_eq!(ids, [id]);
        } else {
            let q = Quarantine::open(&tmp.path().join("q")).unwrap();
            assert!(q.list(&ListFilter::default()).unwrap().is_empty());
        }
        assert_eq!(sink.count(), 0);
        child.kill().unwrap();
        child.wait().unwrap();
        peers::finish_dir(Some(tmp));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_store_leaves_no_entry_and_no_250() {
    let tmp = util::daemon_dir("quarantine-");
    let dir = tmp.path().join("q");
    let sink = Capture::start().await;
    let port = peers::free_port();
    let toml = TestConfig::parse(&qconfig(
        &dir,
        None,
        None,
        sink.addr,
        "[banned]\naction = \"quarantine\"\n",
    ))
    .set("server.listen", vec![format!("127.0.0.1:{port}")])
    .toml();
    let cfg = tmp.path().join("postsift.toml");
    peers::write_file(&cfg, &toml);
    // 12 MB, under parts.max_message_size so the walk finds the banned part.
    let filler: String = (0..150_000)
        .map(|i| format!("line {i:08} of filler text to make the store take a while\r\n"))
        .collect();
    let big = BANNED.replace("see attached", &filler);
    let wire = {
        let mut w =
            b"EHLO t\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n".to_vec();
        w.extend(peers::dot_stuff(big.as_bytes()));
        w.extend_from_slice(b".\r\n");
        w
    };
    let mut caught = false;
    for attempt in 0..5 {
        let mut child = util::daemon_cmd(&cfg)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = peers::localhost(port);
        assert!(
            util::blocking(move || peers::wait_until(Duration::from_secs(10), || {
                peers::port_open(addr)
            }))
            .await
        );
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let wire = wire.clone();
        let client = tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let send = async {
                let _ = w.write_all(&wire).await;
            };
            let mut got = Vec::new();
            let recv = r.read_to_end(&mut got);
            let (_, _) = tokio::join!(send, recv);
            String::from_utf8_lossy(&got).into_owned()
        });
        // Kill the moment a store's file appears.
        let msgs = dir.join("msgs");
        let pid = child.id();
        let seen = util::blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if std::fs::read_dir(&msgs).is_ok_and(|d| d.count() > 0) {
                    // SAFETY: kill(2) on our own child.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    return true;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            false
        })
        .await;
        child.wait().unwrap();
        let got = tokio::time::timeout(Duration::from_secs(30), client)
            .await
            .unwrap()
            .unwrap();
        let q = Quarantine::open(&dir).unwrap();
        let entries = q.list(&ListFilter::default()).unwrap();
        let acked = got.contains("250 2.7.0");
        // Whenever the kill came: a 250 only for a complete entry. (An entry without a 250 is
        // possible if the kill falls between the index commit and the reply: the client sends
        // it again, a duplicate, never a loss.)
        assert!(
            !acked || !entries.is_empty(),
            "attempt {attempt}: 250 without an entry"
        );
        for e in &entries {
            let (_, stored) = q.read(&e.id).unwrap();
            assert_eq!(
                stored,
                as_received(big.as_bytes()),
                "attempt {attempt}: a partial entry"
            );
        }
        if seen && !acked && entries.is_empty() {
            caught = true;
            // What the kill left (a temp file, or a linked file without its row) is no entry.
            let (code, out, _) = cli(&cfg, &["list"]);
            assert_eq!((code, out.as_str()), (0, ""));
            for e in std::fs::read_dir(dir.join("msgs")).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(q.read(&name).is_err(), "{name} readable as an entry");
            }
            break;
        }
        for e in entries {
            q.delete(&e.id).unwrap();
        }
        let _ = std::fs::remove_dir_all(dir.join("msgs"));
    }
    assert!(caught, "never killed during a store in 5 attempts");
    assert_eq!(sink.count(), 0);
    peers::finish_dir(Some(tmp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purge_by_the_daemon_and_the_cli() {
    let (tmp, dir, _sink, cfg, toml, f) =
        quarantine_filter("retention_days = 2\n[banned]\naction = \"quarantine\"\n").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut c = Client::greeted(f.addr).await;
        let r = c
            .transaction(
                false,
                "a@example.org",
                &["b@example.com"],
                BANNED.as_bytes(),
            )
            .await;
        ids.push(quarantined_id(&r[0]));
    }
    f.stop().await;
    let age = |id: &str, days: i64| {
        let c = rusqlite::Connection::open(dir.join("index.db")).unwrap();
        c.execute(
            "UPDATE messages SET time = time - ?1 WHERE id = ?2",
            rusqlite::params![days * 86400 + 60, id],
        )
        .unwrap();
    };
    age(&ids[0], 2);
    age(&ids[1], 1);
    // The CLI purge: only what is older than retention_days.
    let (code, out, err) = cli(&cfg, &["purge"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("purged 1 messages"), "{out}");
    let (_, out, _) = cli(&cfg, &["list"]);
    assert!(
        !out.contains(&ids[0]) && out.contains(&ids[1]) && out.contains(&ids[2]),
        "{out}"
    );
    assert!(!dir.join("msgs").join(&ids[0]).exists());
    // The daemon purges at start (then hourly).
    age(&ids[1], 1);
    let f = start_filter(&toml).await;
    let q = Quarantine::open(&dir).unwrap();
    let gone = util::blocking(move || {
        peers::wait_until(Duration::from_secs(10), || {
            q.list(&ListFilter::default()).unwrap().len() == 1
        })
    })
    .await;
    assert!(gone, "the daemon did not purge");
    let (_, out, _) = cli(&cfg, &["list"]);
    assert!(out.contains(&ids[2]) && !out.contains(&ids[1]), "{out}");
    f.stop().await;
    peers::finish_dir(Some(tmp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_the_next_hop_refuses_stays_held_for_a_later_release() {
    let tmp = peers::private_dir("quarantine-");
    let dir = tmp.path().join("q");
    let sink = Capture::start_with(crate::capture::Behaviour {
        refuse_rcpt: vec![(
            "bob@".into(),
            "450 4.2.0 <bob@example.com>: mailbox busy".into(),
        )],
        ..Default::default()
    })
    .await;
    let toml = qconfig(
        &dir,
        None,
        None,
        sink.addr,
        "[banned]\naction = \"quarantine\"\n",
    );
    let cfg = tmp.path().join("postsift.toml");
    peers::write_file(&cfg, &toml);
    let f = start_filter(&toml).await;
    let id = quarantined_id(&lmtp_two(f.addr, BANNED.as_bytes()).await[0]);
    f.stop().await;

    let release = |args: Vec<String>| {
        let cfg = cfg.clone();
        util::blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&cfg, &args)
        })
    };
    let (code, out, _) = release(vec!["release".into(), id.clone()]).await;
    assert_eq!(code, 75, "{out}");
    assert!(out.contains("<bob@example.com>: 450 4.2.0"), "{out}");
    assert!(out.contains("<carol@example.com>: 250 2.0.0 Ok"), "{out}");
    assert_eq!(
        sink.wait_for(1).await[0].rcpts,
        ["RCPT TO:<carol@example.com>"]
    );
    let (_, out, _) = cli(&cfg, &["list"]);
    assert!(
        out.contains("bob@example.com=held,carol@example.com=released"),
        "{out}"
    );

    // The next hop takes bob now: he gets it, carol not again.
    sink.set(crate::capture::Behaviour::default());
    let (code, out, _) = release(vec!["release".into(), id.clone()]).await;
    assert_eq!(code, 0, "{out}");
    let all = sink.wait_for(2).await;
    assert_eq!(all[1].rcpts, ["RCPT TO:<bob@example.com>"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.count(), 2);
    peers::finish_dir(Some(tmp));
}
