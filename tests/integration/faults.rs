//! Every fault ends in a 4xx the client retries, a clear 5xx, or a discard policy asked for,
//! and the sink's count shows nothing lost and nothing duplicated. Peers that must misbehave
//! on demand (a clamd or spamd that never answers, a 10025 that says 421 after DATA) are fakes;
//! everything else is real.

use std::time::{Duration, Instant};

use crate::capture::{AfterData, Behaviour, Capture};
use crate::client::{send_one, Client};
use crate::peers;
use crate::silent::Silent;
use crate::util::{self, config, fixture, start_filter, test_config, Filter};

/// `server.shutdown_grace` in [`util::config`].
const GRACE: Duration = Duration::from_secs(30);

/// Stops the filter and waits until every session has ended, so a delivery that was going to
/// happen has happened and the sink's count is final. Fails if the drain needed the whole grace
/// period: a session still running after it could deliver later.
async fn drained(f: Filter) {
    let started = Instant::now();
    f.stop().await;
    assert!(
        started.elapsed() < GRACE,
        "sessions still running after the grace period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamd_missing_tempfails_then_delivers_once_back() {
    let sink = Capture::start().await;
    let f = start_filter(&config(Some("/nonexistent/clamd.ctl"), None, sink.addr, "")).await;
    let r = util::send_fixture(f.addr, "clean.eml").await;
    assert_eq!(r.code, 451, "{r:?}");
    assert!(r.text.contains("4.5.0 Error in processing, id="), "{r:?}");
    assert!(r.text.contains("virus_scan FAILED"), "{r:?}");
    drained(f).await;
    assert_eq!(sink.count(), 0, "passed unscanned");

    // The retry, once clamd is there, is delivered exactly once.
    let clamd = util::blocking(util::clamd).await;
    let f = start_filter(&config(Some(&clamd), None, sink.addr, "")).await;
    let r = util::send_fixture(f.addr, "clean.eml").await;
    assert_eq!(r.code, 250, "{r:?}");
    drained(f).await;
    assert_eq!(sink.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamd_missing_with_pass_policy_tags_unchecked() {
    let sink = Capture::start().await;
    let f = start_filter(
        &test_config(Some("/nonexistent/clamd.ctl"), None, sink.addr, "")
            .set("clamd.on_failure", "pass")
            .toml(),
    )
    .await;
    let r = util::send_fixture(f.addr, "clean.eml").await;
    assert_eq!(r.code, 250, "{r:?}");
    let h = sink.last().headers();
    assert!(
        h.contains("\r\nSubject: ***UNCHECKED*** Lunch on Friday?\r\n"),
        "{h}"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamd_hanging_times_out_into_tempfail() {
    let dir = tempfile::tempdir().unwrap();
    let silent = Silent::unix(dir.path());
    let sink = Capture::start().await;
    let cfg = test_config(Some(&silent.addr), None, sink.addr, "").set("clamd.timeout", 2);
    let f = start_filter(&cfg.toml()).await;
    let r = util::send_fixture(f.addr, "clean.eml").await;
    assert_eq!(r.code, 451, "{r:?}");
    assert!(
        r.text.contains("virus_scan FAILED") && r.text.contains("timed out"),
        "{r:?}"
    );
    drained(f).await;
    assert_eq!(sink.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spamd_hanging_passes_by_default_and_tempfails_when_asked() {
    let silent = Silent::tcp().await;
    let sink = Capture::start().await;
    let cfg = test_config(None, Some(&silent.addr), sink.addr, "")
        .set("spamd.timeout", 2)
        .set("spamd.io_timeout", 1);
    let f = start_filter(&cfg.toml()).await;
    let r = util::send_fixture(f.addr, "clean.eml").await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(
        !sink.last().headers().contains("X-Spam-"),
        "no spam verdict, no spam headers"
    );
    f.stop().await;

    let f = start_filter(&cfg.set("spamd.on_failure", "tempfail").toml()).await;
    let r = util::send_fixture(f.addr, "clean.eml").await;
    assert_eq!(r.code, 451, "{r:?}");
    assert!(r.text.contains("spam_scan FAILED"), "{r:?}");
    drained(f).await;
    assert_eq!(sink.count(), 1, "the tempfailed message was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinjection_port_refusing_defers() {
    let closed = format!("127.0.0.1:{}", peers::free_port()).parse().unwrap();
    let f = start_filter(&config(None, None, closed, "")).await;
    let r = util::send_fixture(f.addr, "clean.eml").await;
    assert_eq!(r.code, 450, "{r:?}");
    assert!(
        r.text.contains("4.4.1 Can't connect to 127.0.0.1:"),
        "{r:?}"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinjection_421_after_data_defers_and_retry_delivers_once() {
    let sink = Capture::start_with(Behaviour {
        after_data: AfterData::Reply("421 4.3.0 shutting down".into()),
        ..Default::default()
    })
    .await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let mut c = Client::greeted(f.addr).await;
    let r = c
        .transaction(
            true,
            "a@example.org",
            &["b@example.com", "c@example.com"],
            &fixture("clean.eml"),
        )
        .await;
    assert!(
        r.iter()
            .all(|r| r.code == 421 || (400..500).contains(&r.code)),
        "{r:?}"
    );
    assert_eq!(sink.count(), 0);
    // 10025 recovers: the retry goes through, once.
    sink.set(Behaviour::default());
    let r = c
        .transaction(
            true,
            "a@example.org",
            &["b@example.com", "c@example.com"],
            &fixture("clean.eml"),
        )
        .await;
    assert!(r.iter().all(|r| r.code == 250), "{r:?}");
    drained(f).await;
    assert_eq!(sink.count(), 1, "delivered more than once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinjection_5xx_after_data_is_passed_back() {
    let sink = Capture::start_with(Behaviour {
        after_data: AfterData::Reply("554 5.7.1 content refused".into()),
        ..Default::default()
    })
    .await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let r = util::send_fixture(f.addr, "clean.eml").await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text.contains("5.7.1 content refused"), "{r:?}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinjection_hanging_after_data_defers() {
    let sink = Capture::start_with(Behaviour {
        after_data: AfterData::Hang,
        ..Default::default()
    })
    .await;
    let f = start_filter(
        &test_config(None, None, sink.addr, "")
            .set("reinject.data_timeout", 2)
            .toml(),
    )
    .await;
    let r = util::send_fixture(f.addr, "clean.eml").await;
    assert_eq!(r.code, 450, "{r:?}");
    assert!(
        r.text.contains("4.4.2 Timed out during end of data"),
        "{r:?}"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_data_delivers_nothing() {
    let sink = Capture::start().await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let mut c = Client::greeted(f.addr).await;
    c.expect("EHLO t", 250).await;
    c.expect("MAIL FROM:<a@example.org>", 250).await;
    c.expect("RCPT TO:<b@example.com>", 250).await;
    c.expect("DATA", 354).await;
    c.send(b"Subject: half\r\n\r\nthe first half of a message\r\n")
        .await;
    drop(c);
    // The filter carries on.
    let r = util::send_fixture(f.addr, "clean.eml").await;
    assert_eq!(r.code, 250, "{r:?}");
    // Once drained, the abandoned session has ended too: had it been going to deliver the half
    // message, it would have by now.
    drained(f).await;
    let all = sink.all();
    assert_eq!(all.len(), 1, "the half message was delivered");
    assert!(
        all[0].text().contains("Lunch on Friday"),
        "{}",
        all[0].text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_failure_is_a_temporary_error() {
    let sink = Capture::start().await;
    let cfg = test_config(None, None, sink.addr, "")
        .set("server.spool_threshold", 1024)
        .set("server.spool_dir", "/nonexistent/spool");
    let f = start_filter(&cfg.toml()).await;
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'x', 100_000));
    let r = send_one(f.addr, "a@example.org", &["b@example.com"], &body).await;
    assert_eq!(r.code, 452, "{r:?}");
    assert!(r.text.contains("4.3.1"), "{r:?}");
    drained(f).await;
    assert_eq!(sink.count(), 0);
}

/// SIGTERM while a message is being scanned: that message still gets its 250 and arrives;
/// an idle session gets 421 4.3.2; the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_messages_in_flight() {
    let silent = Silent::tcp().await;
    let sink = Capture::start().await;
    let port = peers::free_port();
    // spamd hangs for 3 s (then on_failure = pass): the message is in flight when SIGTERM comes.
    let cfg = test_config(None, Some(&silent.addr), sink.addr, "")
        .set("server.listen", vec![format!("127.0.0.1:{port}")])
        .set("spamd.timeout", 3)
        .toml();
    let dir = util::daemon_dir("faults-");
    let path = dir.path().join("postsift.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = tokio::process::Command::from(util::daemon_cmd(&path))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut connected = None;
    let end = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < end {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            connected = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(connected.expect("postsift did not start"));

    let mut idle = Client::greeted(addr).await;
    idle.expect("EHLO t", 250).await;
    let mut busy = Client::greeted(addr).await;
    busy.expect("EHLO t", 250).await;
    busy.expect("MAIL FROM:<a@example.org>", 250).await;
    busy.expect("RCPT TO:<b@example.com>", 250).await;
    busy.expect("DATA", 354).await;
    busy.body(&fixture("clean.eml")).await;
    // The message is in flight once spamd (which never answers) has it.
    silent.wait_for(b"Subject: Lunch on Friday?").await;
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id().unwrap() as i32, libc::SIGTERM);
    }
    let r = idle.reply().await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text.contains("4.3.2"), "{r:?}");
    let r = busy.reply().await;
    assert_eq!(r.code, 250, "in-flight message lost: {r:?}");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(sink.count(), 1);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

/// clamd refuses streams over its StreamMaxLength ("INSTREAM size limit exceeded"): that is a
/// scanner failure and follows on_failure, never a pass of unscanned mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamd_size_limit_is_a_scanner_failure() {
    let small = util::blocking(|| peers::Clamd::start_with("1M")).await;
    let sink = Capture::start().await;
    let sock = small.socket.display().to_string();
    let f = start_filter(&config(Some(&sock), None, sink.addr, "")).await;
    let mut body = b"Subject: big for clamd\r\n\r\n".to_vec();
    while body.len() < 3_000_000 {
        body.extend_from_slice(
            b"abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789\r\n",
        );
    }
    let r = send_one(f.addr, "a@example.org", &["b@example.com"], &body).await;
    assert_eq!(r.code, 451, "{r:?}");
    assert!(r.text.contains("virus_scan FAILED"), "{r:?}");
    assert_eq!(sink.count(), 0);
    // A small message still passes through the same clamd.
    let r = util::send_fixture(f.addr, "clean.eml").await;
    assert_eq!(r.code, 250, "{r:?}");
    drained(f).await;
    assert_eq!(
        sink.count(),
        1,
        "the message too big for clamd was delivered"
    );
    drop(small);
}

/// A pooled connection the reinjection server timed out (421 on the next command) costs a
/// reconnect, not a tempfail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_is_replaced_without_a_tempfail() {
    let sink = Capture::start_with(Behaviour {
        idle_timeout_after_message: true,
        ..Default::default()
    })
    .await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    for i in 1..=3 {
        let r = util::send_fixture(f.addr, "clean.eml").await;
        assert_eq!(r.code, 250, "message {i}: {r:?}");
    }
    drained(f).await;
    assert_eq!(sink.count(), 3);
}
