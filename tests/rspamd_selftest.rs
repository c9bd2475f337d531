//! Tests of the tests' private rspamd (tests/integration/rspamd_peer.rs): it starts, rejects GTUBE,
//! passes a clean message without waiting on DNS, guards its controller with the password, and
//! stops without leaving a process behind (also when the test panics or the test process dies).
//!
//! Run as root in a loopback-only namespace:
//! `ip netns exec <ns> cargo test --test rspamd_selftest`.
//!
//! What rspamd 3.4 answered here (`POST /checkv2` with `SCAN_HEADERS`), recorded 2026-11-27,
//! verbatim. GTUBE is a pre-result: every other rule is skipped (`is_skipped`), the score is set to
//! the reject threshold (15) and the GTUBE symbol itself scores 0:
//!
//! ```text
//! {"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0}},"messages":{"smtp_message":"Gtube pattern"},"message-id":"20261127120001.ABC123@mail.example.org","time_real":0.077196}
//! ```
//!
//! The clean message (`clean_message()`; "MIME_GOOD" although it has no Content-Type: rspamd
//! assumes text/plain):
//!
//! ```text
//! {"is_skipped":false,"score":-0.100000,"required_score":15.0,"action":"no action","symbols":{"TO_DN_ALL":{"name":"TO_DN_ALL","score":0.0,"metric_score":0.0,"description":"All the recipients have display names"},"FROM_HAS_DN":{"name":"FROM_HAS_DN","score":0.0,"metric_score":0.0,"description":"From header has a display name"},"TO_MATCH_ENVRCPT_ALL":{"name":"TO_MATCH_ENVRCPT_ALL","score":0.0,"metric_score":0.0,"description":"All of the recipients match the envelope"},"RCVD_COUNT_ZERO":{"name":"RCVD_COUNT_ZERO","score":0.0,"metric_score":0.0,"description":"Message has no Received headers","options":["0"]},"FROM_EQ_ENVFROM":{"name":"FROM_EQ_ENVFROM","score":0.0,"metric_score":0.0,"description":"From address is the same as the envelope"},"MIME_TRACE":{"name":"MIME_TRACE","score":0.0,"metric_score":0.0,"options":["0:+"]},"MIME_GOOD":{"name":"MIME_GOOD","score":-0.100000,"metric_score":-0.100000,"description":"Known content-type","options":["text/plain"]},"RCPT_COUNT_ONE":{"name":"RCPT_COUNT_ONE","score":0.0,"metric_score":0.0,"description":"One recipient","options":["1"]},"MID_RHS_MATCH_FROMTLD":{"name":"MID_RHS_MATCH_FROMTLD","score":0.0,"metric_score":0.0,"description":"Message-ID RHS matches From domain tld"}},"messages":{},"message-id":"20261127120000.ABC123@mail.example.org","time_real":0.002187,"milter":{"remove_headers":{"X-Spam":0}}}
//! ```
//!
//! (With once_received on, the clean message also got RDNS_NONE (+1.0) and RDNS_DNSFAIL after a
//! PTR lookup of 192.0.2.7 that waited for the DNS timeout: that is why it is off.)
//!
//! Time per scan on this 2-CPU machine (debug build of the test, loopback): ~1 ms for the clean
//! message, ~0.3 ms for GTUBE; the first scan after a start ~50-100 ms.

#[path = "integration/harness.rs"]
mod harness;
#[path = "integration/rspamd_peer.rs"]
mod rspamd_peer;

use harness::*;
use rspamd_peer::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// helpers

/// The envelope, as an MTA would pass it to `/checkv2`.
const SCAN_HEADERS: &[(&str, &str)] = &[
    ("IP", "192.0.2.7"),
    ("Helo", "mail.example.org"),
    ("From", "a@example.org"),
    ("Rcpt", "b@example.com"),
    ("Queue-Id", "ABC123"),
];

fn clean_message() -> Vec<u8> {
    b"From: Alice <a@example.org>\r\n\
      To: Bob <b@example.com>\r\n\
      Subject: Lunch on Friday\r\n\
      Date: Fri, 27 Nov 2026 12:00:00 +0000\r\n\
      Message-ID: <20261127120000.ABC123@mail.example.org>\r\n\
      \r\n\
      Hi Bob,\r\n\
      \r\n\
      are we still on for lunch on Friday at noon?\r\n\
      \r\n\
      Alice\r\n"
        .to_vec()
}

fn gtube_message() -> Vec<u8> {
    format!(
        "From: Alice <a@example.org>\r\n\
         To: Bob <b@example.com>\r\n\
         Subject: Test spam mail (GTUBE)\r\n\
         Date: Fri, 27 Nov 2026 12:00:01 +0000\r\n\
         Message-ID: <20261127120001.ABC123@mail.example.org>\r\n\
         \r\n\
         This is the GTUBE, the\r\n\
         \tGeneric\r\n\
         \tTest for\r\n\
         \tUnsolicited\r\n\
         \tBulk\r\n\
         \tEmail\r\n\
         \r\n\
         {GTUBE}\r\n"
    )
    .into_bytes()
}

/// `POST /checkv2` with `SCAN_HEADERS`: (reply body, time taken). Panics unless 200.
fn checkv2(r: &Rspamd, msg: &[u8]) -> (String, Duration) {
    let t = Instant::now();
    let reply = http(r.addr, "POST", "/checkv2", SCAN_HEADERS, msg)
        .unwrap_or_else(|e| panic!("POST /checkv2: {e}"));
    let took = t.elapsed();
    assert_eq!(reply.status, 200, "{}\n{}", reply.head, reply.body);
    (reply.body, took)
}

/// The first `"key":<number>` of a JSON text (the top-level "score" comes before the symbols').
fn json_number(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {pat} in {json}"))
        + pat.len();
    let num: String = json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'))
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("bad number after {pat} in {json}"))
}

/// Alive = exists and is not a zombie (this sandbox's PID 1 does not reap orphans).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s[s.rfind(')').unwrap() + 1..]
                .trim_start()
                .chars()
                .next()
                .unwrap();
            state != 'Z' && state != 'X'
        }
        Err(_) => false,
    }
}

fn keep_dirs() -> bool {
    std::env::var_os("POSTSIFT_KEEP_TEST_DIRS").is_some()
}

// ---------------------------------------------------------------------------------------------
// tests

#[test]
fn gtube_is_rejected_clean_mail_passes_and_no_scan_waits_on_dns() {
    let t = Instant::now();
    let rspamd = Rspamd::start();
    eprintln!(
        "rspamd: start() returned after {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert!(rspamd.ping());

    let (gtube, _) = checkv2(&rspamd, &gtube_message());
    eprintln!("GTUBE reply: {gtube}");
    assert!(gtube.contains(r#""action":"reject""#), "{gtube}");
    assert_eq!(json_number(&gtube, "score"), 15.0, "{gtube}");
    assert_eq!(json_number(&gtube, "required_score"), 15.0, "{gtube}");
    assert!(gtube.contains(r#""GTUBE":{"name":"GTUBE""#), "{gtube}");
    assert!(
        gtube.contains(r#""smtp_message":"Gtube pattern""#),
        "{gtube}"
    );

    let (clean, _) = checkv2(&rspamd, &clean_message());
    eprintln!("clean reply: {clean}");
    assert!(clean.contains(r#""action":"no action""#), "{clean}");
    let score = json_number(&clean, "score");
    assert!(score < 1.0, "{clean}");
    // Nothing that needs DNS may fire (or fail) on a clean message.
    for sym in [
        "RDNS_NONE",
        "RDNS_DNSFAIL",
        "R_SPF_",
        "DMARC_",
        "R_DKIM_",
        "RBL_",
        "ASN",
    ] {
        assert!(!clean.contains(sym), "{sym} in {clean}");
    }

    // Time per scan, and a loose bound: a scan that waited on a DNS timeout takes ≥ 0.5 s.
    let n = 20;
    for (name, msg) in [("clean", clean_message()), ("GTUBE", gtube_message())] {
        let mut times: Vec<Duration> = (0..n).map(|_| checkv2(&rspamd, &msg).1).collect();
        times.sort();
        let total: Duration = times.iter().sum();
        eprintln!(
            "{name}: {n} scans, mean {:.2} ms, median {:.2} ms, max {:.2} ms",
            total.as_secs_f64() * 1000.0 / n as f64,
            times[n / 2].as_secs_f64() * 1000.0,
            times[n - 1].as_secs_f64() * 1000.0
        );
        assert!(
            times[n - 1] < Duration::from_secs(1),
            "a {name} scan took {:?}\n{}",
            times[n - 1],
            tail(&rspamd.dir.join("log/rspamd.log"), 20)
        );
    }

    // rspamd's own count: every scan's log line says `dns req: 0`.
    let expected = 2 + 2 * n;
    let scans = || {
        rspamd
            .log()
            .lines()
            .filter(|l| l.contains("rspamd_task_write_log") && l.contains("qid: <ABC123>"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(5), || scans().len() >= expected),
        "{} scan log lines, {expected} expected\n{}",
        scans().len(),
        rspamd.log()
    );
    for line in scans() {
        assert!(line.contains(", dns req: 0,"), "{line}");
    }
}

#[test]
fn controller_needs_the_password() {
    let rspamd = Rspamd::start();
    let no = http(rspamd.controller, "GET", "/stat", &[], b"").expect("GET /stat");
    assert_eq!(no.status, 401, "{}\n{}", no.head, no.body); // {"error":"Unauthorized"}
    let wrong = http(
        rspamd.controller,
        "GET",
        "/stat",
        &[("Password", "nope")],
        b"",
    )
    .expect("GET /stat");
    assert_eq!(wrong.status, 401, "{}\n{}", wrong.head, wrong.body);
    let yes = http(
        rspamd.controller,
        "GET",
        "/stat",
        &[("Password", RSPAMD_PASSWORD)],
        b"",
    )
    .expect("GET /stat");
    assert_eq!(yes.status, 200, "{}\n{}", yes.head, yes.body);
    assert!(yes.body.contains("\"scanned\""), "{}", yes.body);
    // The scanner needs no password.
    assert!(rspamd.ping());
}

#[test]
fn stop_leaves_no_process_and_drop_removes_the_dir() {
    let mut rspamd = Rspamd::start();
    let pid = rspamd.pid().unwrap();
    let (addr, controller, dir) = (rspamd.addr, rspamd.controller, rspamd.dir.clone());
    // main, controller, normal and hs_helper (forked last, maybe after /ping answered)
    assert!(
        wait_until(Duration::from_secs(10), || group_members(pid).len() >= 4),
        "process group {pid}: {:?}",
        group_members(pid)
    );
    let group = group_members(pid);

    rspamd.stop();
    assert_eq!(rspamd.pid(), None);
    assert!(!alive(pid));
    assert!(group.iter().all(|&p| !alive(p)), "{group:?}");
    assert!(group_members(pid).is_empty(), "{:?}", group_members(pid));
    assert!(!port_open(addr) && !port_open(controller));
    assert!(!rspamd.ping());
    assert!(rspamd.log().contains("terminating"), "{}", rspamd.log());
    rspamd.stop(); // idempotent
    assert!(
        dir.join("log/rspamd.log").exists(),
        "the dir stays until Drop"
    );

    drop(rspamd);
    assert!(!dir.exists() || keep_dirs());
}

#[test]
fn two_instances_run_side_by_side() {
    let a = Rspamd::start();
    let b = Rspamd::start();
    assert_ne!(a.addr, b.addr);
    assert_ne!(a.dir, b.dir);
    let (ra, _) = checkv2(&a, &gtube_message());
    let (rb, _) = checkv2(&b, &clean_message());
    assert!(ra.contains(r#""action":"reject""#), "{ra}");
    assert!(rb.contains(r#""action":"no action""#), "{rb}");
    drop(a);
    assert!(b.ping(), "stopping one instance must not touch the other");
}

#[test]
fn drop_during_a_panicking_test_stops_rspamd() {
    let pid = Arc::new(Mutex::new(None));
    let p = pid.clone();
    let r = std::thread::spawn(move || {
        let rspamd = Rspamd::start();
        *p.lock().unwrap() = rspamd.pid();
        panic!("deliberate panic with a live rspamd");
    })
    .join();
    assert!(r.is_err());
    let pid = pid.lock().unwrap().expect("rspamd started");
    assert!(!alive(pid), "rspamd {pid} survived the panic");
    assert!(group_members(pid).is_empty(), "{:?}", group_members(pid));
}

/// Run by `watchdog_stops_rspamd_when_the_test_process_dies` in a child process: starts rspamd,
/// tells its pid and dir, and aborts (no Drop runs).
#[test]
#[ignore = "helper of watchdog_stops_rspamd_when_the_test_process_dies"]
fn child_starts_rspamd_and_aborts() {
    let Some(out) = std::env::var_os("POSTSIFT_RSPAMD_CHILD_OUT") else {
        return;
    };
    let rspamd = Rspamd::start();
    let info = format!("{}\n{}\n", rspamd.pid().unwrap(), rspamd.dir.display());
    std::fs::write(out, info).unwrap();
    std::process::abort();
}

#[test]
fn watchdog_stops_rspamd_when_the_test_process_dies() {
    let out = tempfile::NamedTempFile::new().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_starts_rspamd_and_aborts",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("POSTSIFT_RSPAMD_CHILD_OUT", out.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child should have aborted");
    let info = std::fs::read_to_string(out.path()).unwrap();
    let mut lines = info.lines();
    let pid: u32 = lines
        .next()
        .expect("child wrote its rspamd pid")
        .parse()
        .unwrap();
    let dir = std::path::PathBuf::from(lines.next().unwrap());
    assert!(
        wait_until(Duration::from_secs(30), || group_members(pid).is_empty()),
        "rspamd {pid} left behind: {:?}",
        group_members(pid)
    );
    assert!(wait_until(Duration::from_secs(10), || !dir.exists() || keep_dirs()));
}
