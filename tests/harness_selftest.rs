//! Tests of the test harness itself (tests/integration/peers/), only of what
//! the product's tests cannot see: that the peers the harness starts are really gone after
//! `stop()`, after a panic and after the test process was killed, with their temp dirs; that the
//! Postfix templates give a configuration `postfix check` does not complain about; and that the
//! rspamd fixture config makes no DNS query. (Whether each peer answers its protocol is shown by
//! every product test that uses it.)
//!
//! Run as root in a loopback-only namespace: `./scripts/test.sh --test harness_selftest`.

#[path = "integration/peers/mod.rs"]
mod peers;

use peers::rspamd as rspamd_peer;
use peers::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Alive = exists and is not a zombie (this sandbox's PID 1 does not reap orphans).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(
            s[s.rfind(')').unwrap() + 1..].trim_start().chars().next(),
            Some('Z' | 'X')
        ),
        Err(_) => false,
    }
}

fn keep_dirs() -> bool {
    std::env::var_os("POSTSIFT_KEEP_TEST_DIRS").is_some()
}

fn nowhere() -> SocketAddr {
    localhost(free_port())
}

fn postfix() -> Postfix {
    Postfix::start(PostfixOpts {
        filter: nowhere(),
        filter_lmtp: true,
        final_dest: nowhere(),
    })
}

/// Asserts that no process of group `pgid` is left.
fn assert_gone(what: &str, pgid: u32) {
    assert!(
        !alive(pgid) && group_members(pgid).is_empty(),
        "{what}: process group {pgid} left {:?}",
        group_members(pgid)
    );
}

#[test]
fn stop_leaves_no_process_and_drop_removes_the_dir() {
    let mut clamd = Clamd::start();
    let mut spamd = Spamd::start();
    let mut a = postfix();
    let b = postfix();
    let mut rspamd = Rspamd::start();
    let groups = [
        ("clamd", clamd.pid().unwrap()),
        ("spamd", spamd.pid().unwrap()),
        ("postfix a", a.master_pid().unwrap()),
        ("rspamd", rspamd.pid().unwrap()),
    ];
    // spamd's children, Postfix's daemons and rspamd's workers are in the leader's group.
    assert!(
        wait_until(Duration::from_secs(10), || group_members(groups[3].1).len()
            >= 3),
        "rspamd workers: {:?}",
        group_members(groups[3].1)
    );
    let dirs = [&clamd.dir, &spamd.dir, &a.dir, &rspamd.dir].map(|d| d.to_path_buf());
    let ports = [spamd.addr, a.smtp_addr(), a.reinject_addr(), rspamd.addr];

    clamd.stop();
    spamd.stop();
    a.stop();
    rspamd.stop();
    for (what, g) in groups {
        assert_gone(what, g);
    }
    assert!(!clamd.ping() && !rspamd.ping());
    for p in ports {
        assert!(!port_open(p), "{p} still open");
    }
    assert_eq!((clamd.pid(), a.master_pid()), (None, None));
    clamd.stop(); // idempotent
    for d in &dirs {
        assert!(d.exists(), "{} removed before Drop", d.display());
    }
    // One instance's stop does not touch the other.
    assert!(port_open(b.smtp_addr()) && alive(b.master_pid().unwrap()));

    let pb = b.master_pid().unwrap();
    let dir_b = b.dir.clone();
    drop((clamd, spamd, a, b, rspamd));
    assert_gone("postfix b", pb);
    for d in dirs.iter().chain([&dir_b]) {
        assert!(!d.exists() || keep_dirs(), "{} left", d.display());
    }
}

#[test]
fn postfix_templates_pass_postfix_check_and_postconf_changes_them() {
    let pf = postfix();
    let out = std::process::Command::new("postfix")
        .arg("-c")
        .arg(pf.etc())
        .arg("check")
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && complaints.is_empty(),
        "{complaints}"
    );
    assert!(pf
        .admin("postconf", &["-h", "content_filter"])
        .starts_with("postsift-lmtp:[127.0.0.1]:"));
    pf.postconf(&["content_filter ="]);
    assert_eq!(pf.admin("postconf", &["-h", "content_filter"]).trim(), "");
    assert!(port_open(pf.smtp_addr()));
    assert!(!pf.log().contains("warning"), "{}", pf.log());
}

#[test]
fn drop_during_a_panicking_test_stops_the_peers() {
    let pids = Arc::new(Mutex::new(Vec::new()));
    let p = pids.clone();
    let r = std::thread::spawn(move || {
        let clamd = Clamd::start();
        p.lock().unwrap().push(("clamd", clamd.pid().unwrap()));
        let pf = postfix();
        p.lock()
            .unwrap()
            .push(("postfix", pf.master_pid().unwrap()));
        panic!("deliberate panic with live peers");
    })
    .join();
    assert!(r.is_err());
    let pids = pids.lock().unwrap().clone();
    assert_eq!(pids.len(), 2);
    for (what, pid) in pids {
        assert_gone(what, pid);
    }
}

/// Run by `a_killed_test_process_leaves_no_process_behind` in a child process: starts peers,
/// writes "name pid dir" lines, and is SIGKILLed by its parent (no Drop, no atexit).
#[test]
#[ignore = "helper of a_killed_test_process_leaves_no_process_behind"]
fn child_starts_peers_and_waits_to_be_killed() {
    let Some(out) = std::env::var_os("POSTSIFT_SELFTEST_CHILD_OUT") else {
        return;
    };
    let clamd = Clamd::start();
    let spamd = Spamd::start();
    let pf = postfix();
    let rspamd = Rspamd::start();
    let line = |name: &str, pid: Option<u32>, dir: &Path| {
        format!("{name} {} {}\n", pid.unwrap(), dir.display())
    };
    let info = line("clamd", clamd.pid(), &clamd.dir)
        + &line("spamd", spamd.pid(), &spamd.dir)
        + &line("postfix", pf.master_pid(), &pf.dir)
        + &line("rspamd", rspamd.pid(), &rspamd.dir);
    std::fs::write(out, info).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_killed_test_process_leaves_no_process_behind() {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_starts_peers_and_waits_to_be_killed",
            "--exact",
            "--ignored",
        ])
        .env("POSTSIFT_SELFTEST_CHILD_OUT", out.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(out.path()).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(240), || read().lines().count() == 4),
        "the child did not start its peers: {:?}",
        read()
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let peers: Vec<(String, u32, PathBuf)> = read()
        .lines()
        .map(|l| {
            let mut f = l.splitn(3, ' ');
            let name = f.next().unwrap().to_string();
            (
                name,
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap().into(),
            )
        })
        .collect();

    // What the kernel stops at once: what kept the parent-death signal (clamd: one process that
    // stays root; the others switch user ids, which clears it).
    for (name, pid, _) in &peers {
        if name == "clamd" {
            assert!(
                wait_until(Duration::from_secs(10), || group_members(*pid).is_empty()),
                "{name}: {:?} survived its test process",
                group_members(*pid)
            );
        }
    }
    // The rest (spamd, Postfix, rspamd) and every dir: the sweep that the next test process runs
    // before its first peer starts.
    sweep_stale_dirs();
    for (name, pid, dir) in &peers {
        assert_gone(name, *pid);
        assert!(!dir.exists(), "{name}: {} left", dir.display());
    }
}

#[test]
fn rspamd_fixture_config_makes_no_dns_query() {
    let rspamd = Rspamd::start();
    let msg = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhello\r\n";
    let headers = [
        ("IP", "192.0.2.7"),
        ("Helo", "mail.example.org"),
        ("Queue-Id", "DNS1"),
    ];
    let r = rspamd_peer::http(rspamd.addr, "POST", "/checkv2", &headers, msg).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    for sym in [
        "RDNS_NONE",
        "RDNS_DNSFAIL",
        "R_SPF_",
        "DMARC_",
        "R_DKIM_",
        "RBL_",
    ] {
        assert!(!r.body.contains(sym), "{sym} in {}", r.body);
    }
    let scan = || {
        rspamd
            .log()
            .lines()
            .find(|l| l.contains("rspamd_task_write_log") && l.contains("qid: <DNS1>"))
            .map(String::from)
    };
    assert!(
        wait_until(Duration::from_secs(5), || scan().is_some()),
        "{}",
        rspamd.log()
    );
    assert!(scan().unwrap().contains(", dns req: 0,"), "{:?}", scan());
}
