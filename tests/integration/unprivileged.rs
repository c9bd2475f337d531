//! `postsift run` as an ordinary user (issue 21): every test that spawns the daemon runs it as
//! `nobody` ([`util::daemon_cmd`]); here it starts as `nobody` with nothing made for it but a
//! directory of its own, creates its stores, quarantine and sockets, takes mail, quarantines
//! one, and every file and directory it made is its own with the hardening modes.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::capture::Capture;
use crate::peers;
use crate::reload::{cfg, Daemon};
use crate::util;

/// Everything under `dir` (not `dir` itself), depth first.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let is_dir = std::fs::symlink_metadata(&p).unwrap().is_dir();
        out.push(p.clone());
        if is_dir {
            out.extend(walk(&p));
        }
    }
    out
}

/// One line of /proc/<pid>/status, e.g. `Uid:`.
fn status_line(pid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_default()
        .to_owned()
}

/// One policy request on the greylisting socket; the action.
async fn policy(sock: &Path) -> String {
    let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
    s.write_all(
        b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.1\n\
          client_name=unknown\nsender=a@example.org\nrecipient=b@example.com\n\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !out.ends_with(b"\n\n") {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The daemon ran as root in every test, so nothing showed that it works as the ordinary user
/// the package and the demo run it as, nor that what it creates is its own: a store made by
/// root, or a socket or directory it cannot create as `_postsift`, passed unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_only_ever_ran_as_root_in_the_tests() {
    let (uid, gid) = util::daemon_ids();
    // Its own directory, as the package's /var/lib/postsift: the rest it creates, parents too.
    let tmp = util::daemon_dir("nonroot-");
    let state = tmp.path().join("state");
    let spool = tmp.path().join("spool");
    // The spool directory is the one it does not create (the package does, 0750).
    std::fs::create_dir(&spool).unwrap();
    peers::chmod(&spool, 0o750);
    util::give_to_daemon(&spool);
    let (q, gl) = (state.join("q"), state.join("gl/greylist.db"));
    let (release, policy_sock, pid_file) = (
        tmp.path().join("amavisd.sock"),
        tmp.path().join("policy.sock"),
        tmp.path().join("postsift.pid"),
    );
    let sink = Capture::start().await;
    let port = peers::free_port();
    let toml = cfg(
        &[port],
        sink.addr,
        &format!(
            "pid_file = \"{}\"\nspool_dir = \"{}\"\nspool_threshold = 1024\n",
            pid_file.display(),
            spool.display()
        ),
        &format!(
            "[quarantine]\ndir = \"{}\"\nrelease_listen = \"unix:{}\"\n[banned]\naction = \"quarantine\"\n\
             [greylist]\nlisten = [\"unix:{}\"]\nsocket_mode = \"0660\"\nstore = \"{}\"\n\
             whitelist_clients = []\nwhitelist_recipients = []\n",
            q.display(),
            release.display(),
            policy_sock.display(),
            gl.display()
        ),
    );
    let d = Daemon::start(&toml, port).await;
    let pid = d.pid();
    let ids = status_line(pid, "Uid:");
    assert_eq!(
        ids.split_whitespace().skip(1).collect::<Vec<_>>(),
        vec![uid.to_string(); 4],
        "{ids}"
    );
    if uid != 0 {
        let caps = status_line(pid, "CapEff:");
        assert!(caps.ends_with("0000000000000000"), "{caps}");
        assert_eq!(status_line(pid, "NoNewPrivs:"), "NoNewPrivs:\t1");
    }
    assert!(
        peers::wait_until(std::time::Duration::from_secs(30), || release.exists()
            && policy_sock.exists()),
        "sockets; log:\n{}",
        d.log_text()
    );

    // Mail: a clean one over spool_threshold (spooled to disk), and a banned one, quarantined.
    let big = format!(
        "Subject: big\r\n\r\n{}",
        "a line of plain text for the spool\r\n".repeat(200)
    );
    let r = crate::client::send_one(
        peers::localhost(port),
        "a@example.org",
        &["b@example.com"],
        big.as_bytes(),
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    let banned = "Subject: invoice\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n\
        Content-Type: text/plain\r\n\r\nsee attached\r\n--b1\r\n\
        Content-Type: application/octet-stream; name=\"invoice.pdf.exe\"\r\n\r\nMZ\r\n--b1--\r\n";
    let r = crate::client::send_one(
        peers::localhost(port),
        "a@example.org",
        &["b@example.com"],
        banned.as_bytes(),
    )
    .await;
    assert!(r.text.contains("2.7.0 Ok, quarantined, id="), "{r:?}");
    assert_eq!(sink.wait_for(1).await.len(), 1);
    let action = policy(&policy_sock).await;
    assert!(action.starts_with("action=DEFER_IF_PERMIT"), "{action}");

    let check = |when: &str| {
        let made = walk(tmp.path());
        for p in &made {
            let m = std::fs::symlink_metadata(p).unwrap();
            let mode = m.mode() & 0o7777;
            assert_eq!(
                (m.uid(), m.gid()),
                (uid, gid),
                "{when}: owner of {}",
                p.display()
            );
            let want = if *p == spool {
                0o750 // the package's, kept as it is
            } else if *p == policy_sock {
                0o660 // greylist.socket_mode
            } else if m.is_dir() {
                0o700
            } else {
                0o600 // files and the release socket
            };
            assert_eq!(mode, want, "{when}: mode {mode:o} of {}", p.display());
        }
        made
    };
    let made = check("running");
    for want in [&q.join("index.db"), &q.join("msgs"), &gl, &pid_file] {
        assert!(made.contains(want), "{} not made: {made:?}", want.display());
    }
    assert!(
        made.iter()
            .any(|p| p.parent() == Some(&q.join("msgs")) && p.is_file()),
        "no quarantined message in {made:?}"
    );
    assert!(std::fs::metadata(&release).unwrap().file_type().is_socket());
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "the spool keeps nothing"
    );
    d.stop().await;
    check("stopped");
    assert!(!pid_file.exists(), "pid file left behind at exit");
    peers::finish_dir(Some(tmp));
}

/// `postsift quarantine list` or `greylist list` run by root before the daemon's first start
/// created the store, root's: the daemon, run as its own user, could then not open it. A store
/// that does not exist reads as empty and is left for the daemon to create.
#[test]
fn a_root_quarantine_list_made_the_store_root_s() {
    let tmp = util::daemon_dir("nonroot-cli-");
    let (q, gl) = (tmp.path().join("q"), tmp.path().join("gl.db"));
    let cfg = tmp.path().join("postsift.toml");
    peers::write_file(
        &cfg,
        format!(
            "[quarantine]\ndir = \"{}\"\n[greylist]\nstore = \"{}\"\n",
            q.display(),
            gl.display()
        ),
    );
    let cfg = cfg.to_str().unwrap();
    for args in [
        &["quarantine", "--config", cfg, "list"][..],
        &["quarantine", "--config", cfg, "purge"],
        &["greylist", "--config", cfg, "list"],
        &["greylist", "--config", cfg, "purge"],
    ] {
        let (code, out, err) = util::postsift_out(args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        let empty = match args[3] {
            "list" => out.is_empty(),
            _ => out.starts_with("purged 0 "),
        };
        assert!(empty, "{args:?}: {out}");
    }
    let (code, out, err) = util::postsift_out(&["quarantine", "--config", cfg, "release", "x"]);
    assert_eq!(code, 64, "{out}{err}");
    let (code, out, err) =
        util::postsift_out(&["greylist", "--config", cfg, "whitelist", "192.0.2.1"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("greylist.store"), "{err}");
    let left: Vec<PathBuf> = walk(tmp.path());
    assert_eq!(
        left,
        [tmp.path().join("postsift.toml")],
        "created: {left:?}"
    );
    peers::finish_dir(Some(tmp));
}
