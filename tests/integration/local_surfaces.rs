//! Issue 17's local surfaces, one regression test per defect, named after what broke: the stores
//! were world-readable (and lockable by anyone), AM.PDP and the metrics port had no connection
//! limit nor read deadline, two configuration traps passed check-config silently, and the DNS
//! caches, the greylist store and Authentication-Results grew without a byte bound.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::capture::Capture;
use crate::peers;
use crate::util::{config, postsift_out, start_filter, test_config};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// The greylisting store and the quarantine were 0644 files in 0755 directories: any local
/// user read every sender, recipient and subject, and a read lock on `-shm` stalled them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_were_world_readable() {
    let tmp = peers::private_dir("surfaces-");
    // The directories are postsift's to create: the test's own 0700 tempdir is not asked about.
    let gl = tmp.path().join("gl/greylist.db");
    let q = tmp.path().join("q");
    let sink = Capture::start().await;
    let port = peers::free_port();
    let toml = config(
        None,
        None,
        sink.addr,
        &format!(
            "[greylist]\nlisten = [\"127.0.0.1:{port}\"]\nstore = \"{}\"\n\
             [quarantine]\ndir = \"{}\"\n[banned]\naction = \"quarantine\"\n",
            gl.display(),
            q.display()
        ),
    );
    let f = start_filter(&toml).await;
    assert!(
        peers::wait_until(std::time::Duration::from_secs(30), || peers::port_open(
            peers::localhost(port)
        )),
        "policy listener"
    );
    assert_eq!(mode(gl.parent().unwrap()), 0o700);
    assert_eq!(mode(&q), 0o700);
    assert_eq!(mode(&q.join("msgs")), 0o700);
    for db in [&gl, &q.join("index.db")] {
        assert_eq!(mode(db), 0o600, "{}", db.display());
        for side in ["-wal", "-shm"] {
            let mut p = db.as_os_str().to_owned();
            p.push(side);
            let p = std::path::PathBuf::from(p);
            if p.exists() {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
            }
        }
    }
    f.stop().await;

    // check-config names an existing store that others may read, and the directory.
    std::fs::set_permissions(&gl, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = tmp.path().join("postsift.toml");
    peers::write_file(&cfg, &toml);
    let (code, out, err) = postsift_out(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!(
            "warning: greylist.store: file {} has mode 0644",
            gl.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "warning: quarantine.dir: directory {} has mode 0755",
            q.display()
        )),
        "{err}"
    );
    peers::finish_dir(Some(tmp));
}

/// How many connections wait in the accept queue of the listening TCP socket on `port`
/// (`/proc/net/tcp`: a LISTEN socket's rx_queue); None when no such socket.
fn accept_queue(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
        if local_port != port || *f.get(3)? != "0A" {
            return None;
        }
        u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()
    })
}

/// An idle AM.PDP connection was never closed, and SIGTERM waited for it the whole
/// `shutdown_grace` (120 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ampdp_connection_held_up_shutdown() {
    use tokio::io::AsyncReadExt;
    let tmp = peers::private_dir("surfaces-");
    let sock = tmp.path().join("amavisd.sock");
    let sink = Capture::start().await;
    let toml = test_config(
        None,
        None,
        sink.addr,
        &format!(
            "[quarantine]\ndir = \"{}\"\nrelease_listen = \"unix:{}\"\n",
            tmp.path().join("q").display(),
            sock.display()
        ),
    )
    .set("server.shutdown_grace", 3600)
    .toml();
    let f = start_filter(&toml).await;
    assert!(
        peers::wait_until(std::time::Duration::from_secs(30), || sock.exists()),
        "release socket"
    );
    let mut idle = tokio::net::UnixStream::connect(&sock).await.unwrap();
    // One full request first, so the connection is surely being served (not in the backlog).
    tokio::io::AsyncWriteExt::write_all(&mut idle, b"request=nothing\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("setreply=550"));

    f.shutdown.cancel();
    // The drain ends with the idle connection closed, long before the grace period.
    let drained = tokio::time::timeout(std::time::Duration::from_secs(120), f.handle).await;
    assert!(
        drained.is_ok(),
        "the drain waited for an idle AM.PDP connection"
    );
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    peers::finish_dir(Some(tmp));
}

/// 1,100 connections to the metrics port or AM.PDP exhausted the descriptors (RLIMIT_NOFILE
/// 1024) and mail on the SMTP listener stalled (`accept failed: Too many open files`). Here
/// the child runs with a hard limit of 256 (so raising the soft limit does not help) and gets
/// 300 AM.PDP and 100 metrics connections: the listeners' own limits keep the descriptors
/// for mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_on_metrics_and_ampdp_stalled_mail() {
    let tmp = crate::util::daemon_dir("surfaces-");
    let sink = Capture::start().await;
    let (smtp, metrics, release) = (peers::free_port(), peers::free_port(), peers::free_port());
    let toml = test_config(
        None,
        None,
        sink.addr,
        &format!(
            "[quarantine]\ndir = \"{}\"\nrelease_listen = \"127.0.0.1:{release}\"\n\
             [log]\nlevel = \"warn\"\n",
            tmp.path().join("q").display(),
        ),
    )
    .set("server.listen", vec![format!("127.0.0.1:{smtp}")])
    .set("metrics.listen", format!("127.0.0.1:{metrics}"))
    .toml();
    let cfg = tmp.path().join("postsift.toml");
    peers::write_file(&cfg, &toml);
    /// Ends the child however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Killed(run_with_nofile("256:256", &cfg));
    let ports = [smtp, metrics, release];
    assert!(
        peers::wait_until(std::time::Duration::from_secs(30), || ports
            .iter()
            .all(|&p| peers::port_open(peers::localhost(p)))),
        "postsift did not start"
    );
    let mut flood = Vec::new();
    for (port, n) in [(release, 300), (metrics, 100)] {
        for _ in 0..n {
            flood.push(std::net::TcpStream::connect(peers::localhost(port)).unwrap());
        }
    }
    // Every connection is taken off the accept queues (served, or closed over the limit)...
    let drained = peers::wait_until(std::time::Duration::from_secs(60), || {
        accept_queue(release) == Some(0) && accept_queue(metrics) == Some(0)
    });
    // ...and mail still flows, while the flood's connections are all still open on our side.
    let replies = crate::util::blocking(move || {
        peers::smtp_send(
            peers::localhost(smtp),
            "alice@example.org",
            &["bob@example.com"],
            b"Subject: flood\r\n\r\nhello\r\n",
        )
    })
    .await;
    assert!(drained, "accept queues never drained");
    assert!(
        replies
            .iter()
            .any(|r| r.0 == 250 && r.1.contains("queued as")),
        "{replies:?}"
    );
    assert_eq!(sink.wait_for(1).await.len(), 1);
    drop(flood);
    peers::finish_dir(Some(tmp));
}

/// A bank matching on `sender_domain` alone that signed or bypassed checks passed
/// check-config: any Internet sender typing that domain in MAIL FROM got its mail signed with
/// the domain's key (or unchecked). And a bank matching client networks that include the
/// address Postfix connects from silently applied to every message without XFORWARD.
#[test]
fn sender_domain_bank_signing_forged_mail_passed_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postsift.toml");
    let check = |toml: &str| {
        std::fs::write(&path, toml).unwrap();
        postsift_out(&["check-config", "--config", path.to_str().unwrap()])
    };
    for (setting, key) in [
        ("dkim_sign = true", "policy.dkim_sign"),
        ("bypass_spam_checks = true", "policy.bypass_spam_checks"),
        ("bypass_virus_checks = true", "policy.bypass_virus_checks"),
        ("virus.action = \"pass\"", "policy.virus.action"),
    ] {
        let (code, out, err) = check(&format!(
            "[[policy]]\nname = \"ours\"\nmatch.sender_domain = [\"example.com\"]\n{setting}\n"
        ));
        assert_eq!(code, 64, "{setting}: {out}{err}");
        assert!(err.contains(&format!("`{key}`")), "{err}");
        assert!(err.contains("sender_domain"), "{err}");
    }
    // With a listener (an originating one) or client networks as well, it is fine.
    let (code, out, err) = check(
        "[server]\nlisten = [\"127.0.0.1:10024\", \"127.0.0.1:10026\"]\n\
         [[policy]]\nname = \"ours\"\nmatch.sender_domain = [\"example.com\"]\n\
         match.listener = [\"127.0.0.1:10026\"]\ndkim_sign = true\nbypass_spam_checks = true\n",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
    // Tagging by sender domain trusts nothing: allowed.
    let (code, out, err) = check(
        "[[policy]]\nname = \"ours\"\nmatch.sender_domain = [\"example.com\"]\n\
         spam.subject_tag = \"[x] \"\n",
    );
    assert_eq!(code, 0, "{out}{err}");

    // A client bank over the networks Postfix connects from: a warning; elsewhere none.
    let (code, out, err) = check(
        "[[policy]]\nname = \"local\"\nmatch.client = [\"127.0.0.0/8\"]\nbypass_spam_checks = true\n",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning: policy bank \"local\": match.client includes server.allow_networks")
            && err.contains("lmtp_send_xforward_command"),
        "{err}"
    );
    let (code, out, err) = check(
        "[[policy]]\nname = \"partner\"\nmatch.client = [\"192.0.2.0/24\"]\nbypass_spam_checks = true\n",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
}

/// The mail listeners had only the soft descriptor limit (1024 on Debian) whatever the hard
/// limit allowed: `postsift run` now raises the soft limit to the hard one at start.
#[test]
fn soft_nofile_limit_was_left_below_the_hard_limit() {
    let tmp = crate::util::daemon_dir("surfaces-");
    let smtp = peers::free_port();
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:{smtp}\"]\n[clamd]\nendpoints = []\n[spamd]\nendpoints = []\n\
         [metrics]\nlisten = \"\"\n[log]\nlevel = \"warn\"\n"
    );
    let cfg = tmp.path().join("postsift.toml");
    peers::write_file(&cfg, &toml);
    let mut child = run_with_nofile("256:2048", &cfg);
    let started = peers::wait_until(std::time::Duration::from_secs(30), || {
        peers::port_open(peers::localhost(smtp))
    });
    // prlimit execs postsift: the same pid.
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(started, "postsift did not start");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.get(3..5), Some(&["2048", "2048"][..]), "{limits}");
    peers::finish_dir(Some(tmp));
}

/// `postsift run --config cfg` as the daemon's user ([`crate::util::daemon_argv`]) under
/// `prlimit --nofile=<nofile>` (soft:hard), stderr dropped.
fn run_with_nofile(nofile: &str, cfg: &std::path::Path) -> std::process::Child {
    let mut prlimit = Command::new("prlimit");
    crate::util::with_daemon_umask(&mut prlimit);
    prlimit
        .arg(format!("--nofile={nofile}"))
        .args(crate::util::daemon_argv(cfg))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}
