//! Greylisting: postsift's policy service against Debian's real postgrey (the same scripted
//! requests, the same answers), behind a real Postfix, shared by two nodes through a real
//! redis-server, across kill -9, and under bad input.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::capture::Capture;
use crate::peers::postgrey::{write_whitelists, PolicyClient};
use crate::peers::{self, Postfix, PostfixOpts, SmtpClient};
use crate::peers::{Peer, Postgrey, Redis};
use crate::util::{self, start_filter, start_filter_on, Filter};

const TEXT: &str = "Greylisted for %s seconds (%r)";

/// A postsift with only the policy service of interest: no scanners, metrics off, the policy
/// listener on a free port. `store` is a path or a redis:// URL.
async fn start_node(store: &str, whitelists: (&Path, &Path), extra: &str) -> (Filter, SocketAddr) {
    start_node_with_metrics(store, whitelists, extra, None).await
}

async fn start_node_with_metrics(
    store: &str,
    whitelists: (&Path, &Path),
    extra: &str,
    metrics: Option<u16>,
) -> (Filter, SocketAddr) {
    let port = peers::free_port();
    let mut toml = util::test_config(
        None,
        None,
        "127.0.0.1:9".parse().unwrap(),
        &format!(
            "[greylist]\nlisten = [\"127.0.0.1:{port}\"]\nstore = \"{store}\"\ndelay = 60\n\
             text = \"{TEXT}\"\npolicy_test_time = true\n\
             whitelist_clients = [\"{}\"]\nwhitelist_recipients = [\"{}\"]\n{extra}",
            whitelists.0.display(),
            whitelists.1.display()
        ),
    );
    if let Some(m) = metrics {
        toml = toml.set("metrics.listen", format!("127.0.0.1:{m}"));
    }
    let f = start_filter(&toml.toml()).await;
    let addr = peers::localhost(port);
    let up = util::blocking(move || {
        peers::wait_until(Duration::from_secs(10), || peers::port_open(addr))
    })
    .await;
    assert!(up, "policy listener {addr} did not open");
    (f, addr)
}

/// One request as Postfix sends it (with an attribute postgrey and postsift do not know).
fn request(
    t: i64,
    client: &str,
    name: &str,
    sender: &str,
    rcpt: &str,
    instance: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("request", "smtpd_access_policy".into()),
        ("protocol_state", "RCPT".into()),
        ("protocol_name", "ESMTP".into()),
        ("client_address", client.into()),
        ("client_name", name.into()),
        ("reverse_client_name", name.into()),
        ("helo_name", "helo.example".into()),
        ("sender", sender.into()),
        ("recipient", rcpt.into()),
        ("recipient_count", "0".into()),
        ("queue_id", String::new()),
        ("instance", instance.into()),
        ("size", "0".into()),
        ("etrn_domain", String::new()),
        ("stress", String::new()),
        ("some_future_attribute", "ignored".into()),
        ("policy_test_time", t.to_string()),
    ]
}

/// The scripted sequence: new triplet, early retries, the pass, subnet matches, sender
/// normalisation, whitelisted clients and recipients, IPv6 /64, auto-whitelisting after five
/// passes an hour apart, a retry past the retry window, a request missing an attribute.
fn script(t0: i64) -> Vec<(String, Vec<(&'static str, String)>)> {
    let mut s = Vec::new();
    let mut n = 0;
    let mut add = |what: &str, t: i64, client: &str, name: &str, sender: &str, rcpt: &str| {
        n += 1;
        let inst = format!("inst{n}");
        s.push((
            format!("{n} {what}"),
            request(t, client, name, sender, rcpt, &inst),
        ));
    };
    let (c1, alice, bob) = ("192.0.2.10", "alice@sender.example", "bob@rcpt.example");
    add("new triplet", t0, c1, "mx.sender.example", alice, bob);
    add("early retry", t0 + 10, c1, "mx.sender.example", alice, bob);
    add(
        "early retry, 1 s left",
        t0 + 59,
        c1,
        "mx.sender.example",
        alice,
        bob,
    );
    add(
        "retry after the delay",
        t0 + 60,
        c1,
        "mx.sender.example",
        alice,
        bob,
    );
    add("passed again", t0 + 61, c1, "mx.sender.example", alice, bob);
    add("same /24", t0 + 70, "192.0.2.200", "unknown", alice, bob);
    add("other /24", t0 + 70, "192.0.3.10", "unknown", alice, bob);
    add(
        "address extension",
        t0 + 80,
        c1,
        "unknown",
        "alice+tag@sender.example",
        bob,
    );
    add(
        "BATV",
        t0 + 80,
        c1,
        "unknown",
        "prvs=0123456789=alice@sender.example",
        bob,
    );
    add(
        "case",
        t0 + 80,
        c1,
        "unknown",
        "ALICE@Sender.Example",
        "BOB@rcpt.example",
    );
    add(
        "VERP new",
        t0 + 100,
        c1,
        "unknown",
        "bounce-1234@list.example",
        bob,
    );
    add(
        "VERP other number",
        t0 + 200,
        c1,
        "unknown",
        "bounce-5678@list.example",
        bob,
    );
    add("null sender", t0 + 200, c1, "unknown", "", bob);
    add(
        "client name whitelisted",
        t0 + 300,
        "203.0.113.50",
        "mail.trusted.example",
        alice,
        bob,
    );
    add(
        "client regexp",
        t0 + 300,
        "203.0.113.50",
        "mx12.regex.example",
        alice,
        bob,
    );
    add(
        "client /24 partial",
        t0 + 300,
        "198.51.100.7",
        "unknown",
        alice,
        bob,
    );
    add(
        "client ipv6 net",
        t0 + 300,
        "2001:db8:ffff:1::1",
        "unknown",
        alice,
        bob,
    );
    add(
        "recipient user@",
        t0 + 300,
        "203.0.113.50",
        "unknown",
        alice,
        "postmaster@rcpt.example",
    );
    add(
        "recipient address+ext",
        t0 + 300,
        "203.0.113.50",
        "unknown",
        alice,
        "abuse+x@example.com",
    );
    add(
        "recipient domain",
        t0 + 300,
        "203.0.113.50",
        "unknown",
        alice,
        "x@sub.open.example",
    );
    add(
        "not whitelisted",
        t0 + 300,
        "203.0.113.50",
        "unknown",
        alice,
        bob,
    );
    add(
        "ipv6 new",
        t0 + 300,
        "2001:db8:1:2::5",
        "unknown",
        alice,
        bob,
    );
    add(
        "ipv6 same /64",
        t0 + 400,
        "2001:db8:1:2::9",
        "unknown",
        alice,
        bob,
    );
    let awl = "203.0.113.9";
    for h in 0..5 {
        let t = t0 + 1000 + h * 3600;
        let rcpt = format!("user{h}@rcpt.example");
        add(&format!("awl {h}: new"), t, awl, "unknown", alice, &rcpt);
        add(
            &format!("awl {h}: pass"),
            t + 60,
            awl,
            "unknown",
            alice,
            &rcpt,
        );
        if h == 0 {
            // A second pass within the hour is not counted.
            add(
                "awl 0: second triplet",
                t + 1,
                awl,
                "unknown",
                alice,
                "extra@rcpt.example",
            );
            add(
                "awl 0: second pass",
                t + 61,
                awl,
                "unknown",
                alice,
                "extra@rcpt.example",
            );
        }
    }
    add(
        "awl: still greylisted",
        t0 + 1000 + 4 * 3600 + 100,
        awl,
        "unknown",
        alice,
        "late@rcpt.example",
    );
    add(
        "awl: whitelisted",
        t0 + 1000 + 5 * 3600,
        awl,
        "unknown",
        alice,
        "new@rcpt.example",
    );
    let carol = "carol@sender.example";
    add("window: new", t0 + 30000, c1, "unknown", carol, bob);
    add(
        "window: retry too late",
        t0 + 30000 + 2 * 86400 + 1,
        c1,
        "unknown",
        carol,
        bob,
    );
    add(
        "window: then passes",
        t0 + 30000 + 2 * 86400 + 61,
        c1,
        "unknown",
        carol,
        bob,
    );
    let mut missing = request(t0 + 40000, c1, "unknown", alice, bob, "x");
    missing.retain(|(k, _)| *k != "client_name");
    s.push(("missing client_name".into(), missing));
    s
}

/// The X-Greylist header names the program, host and date: compare up to "seconds".
fn normalise(action: &str) -> String {
    match action.find(" seconds by ") {
        Some(i) if action.starts_with("PREPEND X-Greylist: delayed ") => action[..i + 8].to_owned(),
        _ => action.to_owned(),
    }
}

/// Runs `script` over one connection per address in turn (round robin).
async fn run(
    addrs: Vec<SocketAddr>,
    script: Vec<(String, Vec<(&'static str, String)>)>,
) -> Vec<(String, String)> {
    util::blocking(move || {
        let mut clients: Vec<PolicyClient> = addrs
            .iter()
            .map(|a| PolicyClient::connect(*a).unwrap())
            .collect();
        let n = clients.len();
        script
            .into_iter()
            .enumerate()
            .map(|(i, (what, attrs))| {
                let a = clients[i % n]
                    .ask(&attrs)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                (what, normalise(&a))
            })
            .collect()
    })
    .await
}

fn assert_same(expected: &[(String, String)], got: &[(String, String)], who: &str) {
    assert_eq!(expected.len(), got.len());
    let diffs: Vec<String> = expected
        .iter()
        .zip(got)
        .filter(|(e, g)| e.1 != g.1)
        .map(|(e, g)| format!("{}: postgrey {:?}, {who} {:?}", e.0, e.1, g.1))
        .collect();
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylist_decides_as_postgrey_does() {
    let dir = peers::private_dir("gl-diff-");
    let (wc, wr) = write_whitelists(dir.path());
    let (wc2, wr2) = (wc.clone(), wr.clone());
    let pg = util::blocking(move || {
        Postgrey::start(60, (&wc2, &wr2), &[&format!("--greylist-text={TEXT}")])
    })
    .await;
    let db = dir.path().join("greylist.db");
    let (node, addr) = start_node(&db.display().to_string(), (&wc, &wr), "").await;
    let t0 = now();
    let expected = run(vec![pg.addr], script(t0)).await;
    // The sequence exercises every kind of answer.
    let answers: Vec<&str> = expected.iter().map(|(_, a)| a.as_str()).collect();
    assert!(
        answers.contains(&"DEFER_IF_PERMIT 4.2.0 Greylisted for 60 seconds (rcpt.example)"),
        "{expected:?}"
    );
    assert!(
        answers.contains(&"DEFER_IF_PERMIT 4.2.0 Greylisted for 1 seconds (rcpt.example)"),
        "{expected:?}"
    );
    assert!(
        answers.contains(&"PREPEND X-Greylist: delayed 60 seconds"),
        "{expected:?}"
    );
    assert!(
        answers.iter().filter(|a| **a == "DUNNO").count() > 10,
        "{expected:?}"
    );
    let got = run(vec![addr], script(t0)).await;
    assert_same(&expected, &got, "postsift");
    node.stop().await;
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylist_two_nodes_share_redis_and_agree() {
    let dir = peers::private_dir("gl-redis-");
    let (wc, wr) = write_whitelists(dir.path());
    let redis = util::blocking(Redis::start).await;
    let url = format!("redis://{}/0", redis.addr);
    let (a, a_addr) = start_node(&url, (&wc, &wr), "").await;
    let (b, b_addr) = start_node(&url, (&wc, &wr), "").await;
    let db = dir.path().join("greylist.db");
    let (single, single_addr) = start_node(&db.display().to_string(), (&wc, &wr), "").await;
    let t0 = now();
    // The embedded store is checked against postgrey above; two Redis nodes, asked in turn,
    // must answer as one embedded node does.
    let expected = run(vec![single_addr], script(t0)).await;
    let got = run(vec![a_addr, b_addr], script(t0)).await;
    assert_same(&expected, &got, "two redis nodes");

    // Races: 40 requests for one new triplet at the same instant on both nodes, then 40 at the
    // pass: exactly one first pass (one X-Greylist header) across both nodes.
    let t1 = t0 + 50_000;
    let ask_all = move |t: i64| {
        let addrs = [a_addr, b_addr];
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let addr = addrs[i % 2];
                std::thread::spawn(move || {
                    let mut c = PolicyClient::connect(addr).unwrap();
                    let r = request(
                        t,
                        "192.0.2.66",
                        "unknown",
                        "race@sender.example",
                        "race@rcpt.example",
                        &format!("race{t}-{i}"),
                    );
                    normalise(&c.ask(&r).unwrap())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    };
    let first = util::blocking(move || ask_all(t1)).await;
    assert!(
        first
            .iter()
            .all(|a| a == "DEFER_IF_PERMIT 4.2.0 Greylisted for 60 seconds (rcpt.example)"),
        "{first:?}"
    );
    let pass = util::blocking(move || ask_all(t1 + 60)).await;
    let headers = pass.iter().filter(|a| a.starts_with("PREPEND")).count();
    assert_eq!(headers, 1, "{pass:?}");
    assert_eq!(
        pass.iter().filter(|a| *a == "DUNNO").count(),
        39,
        "{pass:?}"
    );
    // The auto-whitelist is shared too: whitelisted on A by the CLI, not greylisted on B.
    let cfg = dir.path().join("redis.toml");
    peers::write_file(&cfg, format!("[greylist]\nstore = \"{url}\"\n"));
    let out = util::postsift_cmd()
        .args(["greylist", "--config"])
        .arg(&cfg)
        .args(["whitelist", "203.0.113.200"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = util::blocking(move || {
        let mut c = PolicyClient::connect(b_addr).unwrap();
        c.ask(&request(
            now(),
            "203.0.113.200",
            "unknown",
            "x@y.example",
            "z@rcpt.example",
            "w",
        ))
        .unwrap()
    })
    .await;
    assert_eq!(got, "DUNNO");
    let out = util::postsift_cmd()
        .args(["greylist", "--config"])
        .arg(&cfg)
        .arg("list")
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("client 203.0.113.200 passes=5"), "{list}");
    assert!(
        list.contains("triplet 192.0.2.0/race@sender.example/race@rcpt.example"),
        "{list}"
    );
    for n in [a, b, single] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylist_redis_down_fails_open_or_closed_as_configured() {
    let dir = peers::private_dir("gl-down-");
    let (wc, wr) = write_whitelists(dir.path());
    let mut redis = util::blocking(Redis::start).await;
    let url = format!("redis://{}/0", redis.addr);
    let mport = peers::free_port();
    let (open, open_addr) = start_node_with_metrics(&url, (&wc, &wr), "", Some(mport)).await;
    let (closed, closed_addr) = start_node(&url, (&wc, &wr), "on_failure = \"tempfail\"\n").await;
    let ask = |addr: SocketAddr, rcpt: &'static str| {
        util::blocking(move || {
            let mut c = PolicyClient::connect(addr).unwrap();
            c.ask(&request(
                now(),
                "192.0.2.1",
                "unknown",
                "a@b.example",
                rcpt,
                "i",
            ))
            .unwrap()
        })
    };
    assert!(ask(open_addr, "up@rcpt.example")
        .await
        .starts_with("DEFER_IF_PERMIT"));
    redis.kill();
    assert_eq!(ask(open_addr, "down@rcpt.example").await, "DUNNO");
    assert_eq!(
        ask(closed_addr, "down@rcpt.example").await,
        "DEFER_IF_PERMIT 4.3.0 Greylisting temporarily unavailable"
    );
    let (status, text) = util::http_get(peers::localhost(mport), "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "postsift_greylist_decisions_total{result=\"new\"} 1",
        "postsift_greylist_decisions_total{result=\"error\"} 1",
        "postsift_greylist_store_up 0",
        "postsift_greylist_store_duration_seconds_count{store=\"redis\"} 2",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    let errors: u64 = ["redis", "timeout"]
        .iter()
        .map(|k| {
            let prefix = format!("postsift_greylist_store_errors_total{{kind=\"{k}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .map_or(0, |v| v.parse().unwrap())
        })
        .sum();
    assert_eq!(errors, 1, "{text}");
    open.stop().await;
    closed.stop().await;
}

/// Bad input gets an answer or a closed connection, and the service goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylist_bad_input_does_not_harm_the_service() {
    let dir = peers::private_dir("gl-bad-");
    let (wc, wr) = write_whitelists(dir.path());
    let db = dir.path().join("greylist.db");
    let (node, addr) = start_node(&db.display().to_string(), (&wc, &wr), "").await;
    util::blocking(move || {
        // A healthy connection stays open through all of it.
        let mut good = PolicyClient::connect(addr).unwrap();
        let ok = |c: &mut PolicyClient, rcpt: &str| {
            c.ask(&request(
                now(),
                "192.0.2.1",
                "unknown",
                "a@b.example",
                rcpt,
                "i",
            ))
            .unwrap()
        };
        assert!(ok(&mut good, "one@rcpt.example").starts_with("DEFER_IF_PERMIT"));

        // A 1 MB line: the connection is closed.
        let mut c = PolicyClient::connect(addr).unwrap();
        let mut big = b"sender=".to_vec();
        big.extend(std::iter::repeat_n(b'x', 1 << 20));
        big.extend_from_slice(b"\n\n");
        let _ = c.send_raw(&big);
        assert!(c.read_action().is_err());

        // Binary garbage, then the empty line: an answer.
        let mut c = PolicyClient::connect(addr).unwrap();
        let mut junk: Vec<u8> = (0..4096u32)
            .map(|i| (i * 7 % 251) as u8)
            .filter(|b| *b != b'\n')
            .collect();
        junk.extend_from_slice(b"\n\xff\xfe=\x00\n\n");
        c.send_raw(&junk).unwrap();
        assert_eq!(c.read_action().unwrap(), "DUNNO");

        // A request without its empty line, then the client goes away.
        let mut c = PolicyClient::connect(addr).unwrap();
        c.send_raw(b"request=smtpd_access_policy\nsender=a@b\n")
            .unwrap();
        drop(c);

        assert!(ok(&mut good, "two@rcpt.example").starts_with("DEFER_IF_PERMIT"));
        let mut fresh = PolicyClient::connect(addr).unwrap();
        assert!(ok(&mut fresh, "three@rcpt.example").starts_with("DEFER_IF_PERMIT"));
    })
    .await;
    node.stop().await;
}

/// kill -9 while decisions are being written: every answered triplet is in the store, which
/// opens and reads after the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylist_kill_9_loses_no_answered_entry() {
    let dir = util::daemon_dir("gl-kill-");
    let db = dir.path().join("greylist.db");
    let port = peers::free_port();
    let cfg = dir.path().join("postsift.toml");
    peers::write_file(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\n[clamd]\nendpoints = []\n[spamd]\nendpoints = []\n\
             [metrics]\nlisten = \"\"\n[log]\nlevel = \"warn\"\n\
             [greylist]\nlisten = [\"127.0.0.1:{port}\"]\nstore = \"{}\"\nwhitelist_clients = []\nwhitelist_recipients = []\n",
            peers::free_port(),
            db.display()
        ),
    );
    let mut child = util::daemon_cmd(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = peers::localhost(port);
    let answered = util::blocking(move || {
        assert!(peers::wait_until(Duration::from_secs(10), || {
            peers::port_open(addr)
        }));
        // Four writers; the daemon is killed while they run.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                std::thread::spawn(move || {
                    let mut answered = Vec::new();
                    let Ok(mut c) = PolicyClient::connect(addr) else {
                        return answered;
                    };
                    for i in 0.. {
                        let rcpt = format!("w{w}-{i}@rcpt.example");
                        let r = request(now(), "192.0.2.1", "unknown", "a@b.example", &rcpt, "i");
                        match c.ask(&r) {
                            Ok(a) => {
                                assert!(a.starts_with("DEFER_IF_PERMIT"), "{a}");
                                answered.push(rcpt);
                            }
                            Err(_) => break,
                        }
                    }
                    answered
                })
            })
            .collect();
        // Wait for the event (a good number of answers), then kill.
        assert!(peers::wait_until(Duration::from_secs(30), || {
            std::fs::metadata(format!("{}-wal", db.display())).is_ok_and(|m| m.len() > 2 << 20)
        }));
        child.kill().unwrap();
        child.wait().unwrap();
        writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    })
    .await;
    assert!(answered.len() > 100, "{}", answered.len());
    let out = util::postsift_cmd()
        .args(["greylist", "--config"])
        .arg(&cfg)
        .arg("list")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&String> = answered
        .iter()
        .filter(|r| !list.contains(&format!("/a@b.example/{r} ")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered entries lost: {:?}",
        missing.len(),
        answered.len(),
        &missing[..missing.len().min(5)]
    );
    let ok = std::process::Command::new("sqlite3")
        .arg(dir.path().join("greylist.db"))
        .arg("PRAGMA integrity_check")
        .output();
    if let Ok(o) = ok {
        if o.status.success() {
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok");
        }
    }
}

/// Through a real Postfix: `check_policy_service` to postsift; the first attempt is deferred
/// with 450, a retry after the delay is accepted and the message carries X-Greylist; the
/// client, now auto-whitelisted, is not delayed for a new triplet. Also over a Unix socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylist_behind_real_postfix() {
    let dir = peers::private_dir("gl-pf-");
    let sink = Capture::start().await;
    let filter_addr = peers::localhost(peers::free_port());
    let final_dest = sink.addr;
    let pf = util::blocking(move || {
        Postfix::start(PostfixOpts {
            filter: filter_addr,
            filter_lmtp: true,
            final_dest,
        })
    })
    .await;
    let socket = dir.path().join("policy.sock");
    let toml = util::config(
        None,
        None,
        pf.reinject_addr(),
        &format!(
            "[greylist]\nlisten = [\"unix:{}\"]\nsocket_mode = \"0660\"\nsocket_owner = \"postfix\"\n\
             store = \"{}\"\ndelay = 2\nauto_whitelist_clients = 1\n\
             whitelist_clients = []\nwhitelist_recipients = []\n",
            socket.display(),
            dir.path().join("greylist.db").display()
        ),
    );
    let node = start_filter_on(filter_addr, &toml).await;
    let s = socket.clone();
    let bound =
        util::blocking(move || peers::wait_until(Duration::from_secs(10), || s.exists())).await;
    assert!(bound, "policy socket not created");
    let meta = std::fs::metadata(&socket).expect("policy socket");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_ne!(meta.uid(), 0, "socket_owner applied");
    let restriction = format!(
        "smtpd_recipient_restrictions = check_policy_service unix:{}, permit_mynetworks, reject",
        socket.display()
    );
    let smtp = pf.smtp_addr();
    let deliveries = util::blocking(move || {
        pf.postconf(&[&restriction]);
        let mut c = SmtpClient::connect(smtp).unwrap();
        c.read_reply().unwrap();
        c.command("EHLO client.example").unwrap();
        assert_eq!(
            c.command("MAIL FROM:<alice@sender.example>").unwrap().0,
            250
        );
        let (code, text) = c.command("RCPT TO:<bob@rcpt.example>").unwrap();
        assert_eq!(code, 450, "{text}\n{}", pf.log());
        assert!(
            text.contains("4.2.0") && text.contains("Greylisted"),
            "{text}"
        );
        // Retry as a sending MTA would, until accepted (the delay is 2 s).
        let accepted = peers::wait_until(Duration::from_secs(30), || {
            c.command("RSET").unwrap();
            c.command("MAIL FROM:<alice@sender.example>").unwrap();
            let (code, _) = c.command("RCPT TO:<bob@rcpt.example>").unwrap();
            if code != 250 {
                std::thread::sleep(Duration::from_millis(400));
            }
            code == 250
        });
        assert!(accepted, "never accepted\n{}", pf.log());
        assert_eq!(c.command("DATA").unwrap().0, 354);
        c.send_data(b"Subject: greylisted\r\n\r\nhello\r\n")
            .unwrap();
        assert_eq!(c.read_reply().unwrap().0, 250);
        // The client passed once: auto-whitelisted, a new triplet goes straight through.
        assert_eq!(c.command("MAIL FROM:<carol@other.example>").unwrap().0, 250);
        let (code, text) = c.command("RCPT TO:<dave@rcpt.example>").unwrap();
        assert_eq!(code, 250, "{text}");
        assert_eq!(c.command("DATA").unwrap().0, 354);
        c.send_data(b"Subject: whitelisted\r\n\r\nhello\r\n")
            .unwrap();
        assert_eq!(c.read_reply().unwrap().0, 250);
        c.command("QUIT").unwrap();
        pf
    })
    .await;
    let msgs = sink.wait_for(2).await;
    let first = msgs
        .iter()
        .find(|m| m.text().contains("Subject: greylisted"))
        .unwrap();
    assert!(
        first.headers().contains("X-Greylist: delayed "),
        "{}",
        first.headers()
    );
    let second = msgs
        .iter()
        .find(|m| m.text().contains("Subject: whitelisted"))
        .unwrap();
    assert!(
        !second.headers().contains("X-Greylist"),
        "{}",
        second.headers()
    );
    node.stop().await;
    assert!(!socket.exists(), "socket removed at shutdown");
    drop(deliveries);
}

/// The filter's client ACL applies to policy clients; past `greylist.max_connections` a
/// connection is closed while the open ones go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylist_acl_and_connection_limit() {
    let dir = peers::private_dir("gl-acl-");
    let (port, limited) = (peers::free_port(), peers::free_port());
    let section = |p: u16, extra: &str| {
        format!(
            "[greylist]\nlisten = [\"127.0.0.1:{p}\"]\nstore = \"{}/gl-{p}.db\"\n\
             whitelist_clients = []\nwhitelist_recipients = []\n{extra}",
            dir.path().display()
        )
    };
    let denied = util::test_config(
        None,
        None,
        "127.0.0.1:9".parse().unwrap(),
        &section(port, ""),
    )
    .set("server.allow_networks", vec!["10.0.0.0/8"]);
    let a = start_filter(&denied.toml()).await;
    let one = util::config(
        None,
        None,
        "127.0.0.1:9".parse().unwrap(),
        &section(limited, "max_connections = 1\n"),
    );
    let b = start_filter(&one).await;
    util::blocking(move || {
        let (a_addr, b_addr) = (peers::localhost(port), peers::localhost(limited));
        assert!(peers::wait_until(Duration::from_secs(10), || {
            peers::port_open(a_addr) && peers::port_open(b_addr)
        }));
        let req = request(
            now(),
            "192.0.2.1",
            "unknown",
            "a@b.example",
            "c@d.example",
            "i",
        );
        let mut c = PolicyClient::connect(a_addr).unwrap();
        assert!(
            c.ask(&req).is_err(),
            "a client outside allow_networks is closed"
        );

        // The port probe above held b's only slot for a moment: the first connection is the
        // first one that gets an answer.
        let mut first = None;
        assert!(peers::wait_until(Duration::from_secs(10), || {
            let Ok(mut c) = PolicyClient::connect(b_addr) else {
                return false;
            };
            let answered = c.ask(&req).is_ok_and(|r| r.starts_with("DEFER_IF_PERMIT"));
            if answered {
                first = Some(c);
            }
            answered
        }));
        let mut first = first.unwrap();
        let mut second = PolicyClient::connect(b_addr).unwrap();
        assert!(second.ask(&req).is_err(), "over max_connections: closed");
        assert!(first.ask(&req).unwrap().starts_with("DEFER_IF_PERMIT"));
        drop(first);
        // The slot comes free when the first connection ends.
        assert!(peers::wait_until(Duration::from_secs(10), || {
            PolicyClient::connect(b_addr).is_ok_and(|mut c| c.ask(&req).is_ok())
        }));
    })
    .await;
    a.stop().await;
    b.stop().await;
}
