//! Peer outages (issue 17): a peer that fails `[health] down_after` times in a row is marked
//! down, and later messages take its failure path at once without touching it (the hung
//! stand-in hears no new request; `postsift_peer_skipped_total` counts them); the health probe
//! brings the real peer back once it is restarted. Real clamd and unbound are stopped and
//! started again; a peer that accepts and never answers is a stand-in (no real one hangs on
//! demand). Nothing here times anything: the tests wait on the metrics, with a generous guard.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::capture::Capture;
use crate::client::{send_one, Reply};
use crate::peers::{self, Clamd, Peer, Rspamd, Spamd, Unbound};
use crate::silent::Silent;
use crate::test_config::TestConfig;
use crate::util::{self, fixture, http_get, rspamd_config, start_filter, test_config};

/// How long a state change may take to show before the test gives up (a hang guard, not a
/// measurement).
const GUARD: Duration = Duration::from_secs(90);

/// Every config here: mail authentication off (no DNS).
const AUTH_OFF: &str = "[auth]\nenabled = false\n";

/// The value of one sample line (`name{labels} value`), 0 if absent.
async fn metric(maddr: SocketAddr, series: &str) -> f64 {
    let (_, text) = http_get(maddr, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Waits until `series` reads `want` (polling the endpoint; [`GUARD`] at most).
async fn wait_metric(maddr: SocketAddr, series: &str, want: f64) {
    let end = tokio::time::Instant::now() + GUARD;
    loop {
        let got = metric(maddr, series).await;
        if got == want {
            return;
        }
        if tokio::time::Instant::now() >= end {
            let (_, text) = http_get(maddr, "/metrics").await;
            let related: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("postsift_peer") || l.starts_with("postsift_dns_lookups"))
                .collect();
            panic!(
                "{series} stayed {got}, never {want}\n{}",
                related.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `cfg` with the metrics endpoint on a free port, the probe every `probe_interval` seconds,
/// and `[health]` marking a peer down after two failures.
fn with_health(cfg: TestConfig, probe_interval: i64) -> (String, SocketAddr) {
    let port = peers::free_port();
    let cfg = cfg
        .set("metrics.listen", format!("127.0.0.1:{port}"))
        .set("metrics.probe_interval", probe_interval)
        .set("health.down_after", 2)
        .set("health.probe_timeout", 1);
    (cfg.toml(), format!("127.0.0.1:{port}").parse().unwrap())
}

fn up(peer: &str) -> String {
    format!("postsift_peer_up{{peer=\"{peer}\"}}")
}

fn skipped(peer: &str) -> String {
    format!("postsift_peer_skipped_total{{peer=\"{peer}\"}}")
}

/// Sends clean.eml until `peer` is marked down (its failures, or the probe's); returns how many
/// were sent. Each gets `code`. Each copy differs (a header of its own), so that none is
/// answered from the verdict cache, which may answer a message it has seen while the peer is not
/// yet marked down.
async fn send_until_down(f: SocketAddr, maddr: SocketAddr, peer: &str, code: u16) -> usize {
    for sent in 0..10 {
        if metric(maddr, &up(peer)).await == 0.0 {
            return sent;
        }
        let msg = [
            format!("X-Outage-Try: {sent}\r\n").as_bytes(),
            &fixture("clean.eml"),
        ]
        .concat();
        let r = send_one(f, "a@example.org", &["b@example.com"], &msg).await;
        assert_eq!(r.code, code, "{r:?}");
    }
    wait_metric(maddr, &up(peer), 0.0).await;
    10
}

/// What shows of a scanner's verdict, for [`stopped_is_skipped_at_once_and_used_again`].
struct Verdict {
    /// The message sent each time (a fixture).
    fixture: &'static str,
    /// Checks a message scanned (`again`: after the restart, the scanner's name).
    scanned: fn(&Reply, &Capture, again: Option<&str>),
    /// Checks a message sent while the scanner is marked down (its `on_failure`).
    skipped: fn(&Reply, &Capture),
    /// The reply code of the messages that mark it down.
    down_code: u16,
    /// Whether `/readyz` must turn unready while it is down.
    readyz_follows: bool,
}

/// A real scanner `peer` (configured by `cfg` for the sink) serves a message; stopped, it is
/// marked down after its failures and the next three messages skip it at once (counted in
/// `postsift_peer_skipped_total`); started again on the same address, the probe marks it up and
/// it scans again. Returns the sink, once the filter has stopped.
async fn stopped_is_skipped_at_once_and_used_again<P: Peer + Send + 'static>(
    mut peer: P,
    cfg: impl FnOnce(&P, SocketAddr) -> TestConfig,
    v: Verdict,
) -> Capture {
    let name = P::NAME;
    let sink = Capture::start().await;
    let (cfg, maddr) = with_health(cfg(&peer, sink.addr), 1);
    let f = start_filter(&cfg).await;
    let msg = fixture(v.fixture);
    let r = send_one(f.addr, "a@example.org", &["b@example.com"], &msg).await;
    (v.scanned)(&r, &sink, None);
    wait_metric(maddr, &up(name), 1.0).await;

    let mut peer = util::blocking(move || {
        peer.stop();
        peer
    })
    .await;
    send_until_down(f.addr, maddr, name, v.down_code).await;
    let before = metric(maddr, &skipped(name)).await;
    for _ in 0..3 {
        let r = send_one(f.addr, "a@example.org", &["b@example.com"], &msg).await;
        (v.skipped)(&r, &sink);
    }
    assert_eq!(metric(maddr, &skipped(name)).await, before + 3.0);
    if v.readyz_follows {
        // /readyz follows at the next probe.
        let end = tokio::time::Instant::now() + GUARD;
        while http_get(maddr, "/readyz").await.0 == 200 {
            assert!(tokio::time::Instant::now() < end, "ready without {name}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let peer = util::blocking(move || {
        peer.start_again();
        peer
    })
    .await;
    wait_metric(maddr, &up(name), 1.0).await;
    let r = send_one(f.addr, "a@example.org", &["b@example.com"], &msg).await;
    (v.scanned)(&r, &sink, Some(name));
    f.stop().await;
    drop(peer);
    sink
}

/// clamd down: a tempfail (451) while it is down, as clamd's default `on_failure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamd_stopped_is_skipped_at_once_and_used_again_once_restarted() {
    let clamd = util::blocking(Clamd::start).await;
    let sink = stopped_is_skipped_at_once_and_used_again(
        clamd,
        |clamd, sink| test_config(Some(&clamd.endpoint()), None, sink, AUTH_OFF),
        Verdict {
            fixture: "clean.eml",
            scanned: |r, _, _| assert_eq!(r.code, 250, "{r:?}"),
            skipped: |r, _| {
                assert_eq!(r.code, 451, "{r:?}");
                assert!(r.text.contains("virus_scan FAILED"), "{r:?}");
            },
            down_code: 451,
            readyz_follows: true,
        },
    )
    .await;
    assert_eq!(sink.count(), 2, "only the scanned messages were delivered");
}

/// The spam engines: GTUBE flagged while up, passed unscanned (`on_failure = pass`) while down.
fn spam_verdict() -> Verdict {
    Verdict {
        fixture: "gtube.eml",
        scanned: |r, sink, again| {
            assert_eq!(r.code, 250, "{r:?}");
            if let Some(name) = again {
                assert!(
                    sink.last().headers().contains("X-Spam-Flag: YES"),
                    "scanned again once {name} is back"
                );
            } else {
                assert!(sink.last().headers().contains("X-Spam-Flag: YES"));
            }
        },
        skipped: |r, sink| {
            assert_eq!(r.code, 250, "on_failure = pass: {r:?}");
            assert!(
                !sink.last().headers().contains("X-Spam-Flag"),
                "not scanned"
            );
        },
        down_code: 250,
        readyz_follows: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spamd_stopped_is_skipped_at_once_and_used_again_once_restarted() {
    let spamd = util::blocking(Spamd::start).await;
    stopped_is_skipped_at_once_and_used_again(
        spamd,
        |spamd, sink| test_config(None, Some(&spamd.endpoint()), sink, AUTH_OFF),
        spam_verdict(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rspamd_stopped_is_skipped_at_once_and_used_again_once_restarted() {
    let rspamd = util::blocking(Rspamd::start).await;
    stopped_is_skipped_at_once_and_used_again(
        rspamd,
        |rspamd, sink| rspamd_config(None, &rspamd.endpoint(), sink, AUTH_OFF),
        spam_verdict(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spamd_hung_costs_down_after_timeouts_then_none() {
    let hung = Silent::tcp().await;
    let sink = Capture::start().await;
    let cfg = test_config(None, Some(&hung.addr), sink.addr, AUTH_OFF)
        .set("spamd.timeout", 2)
        .set("spamd.io_timeout", 1);
    // One probe at start, then none: every REPORT the stand-in hears is a message's.
    let (cfg, maddr) = with_health(cfg, 3600);
    let f = start_filter(&cfg).await;
    let sent = send_until_down(f.addr, maddr, "spamd", 250).await;
    let reports = hung.count(b"REPORT SPAMC");
    assert!(
        reports <= 2 && reports <= sent,
        "{reports} REPORTs for {sent} messages"
    );
    let before = metric(maddr, &skipped("spamd")).await;
    for _ in 0..3 {
        let r = util::send_fixture(f.addr, "clean.eml").await;
        assert_eq!(r.code, 250, "on_failure = pass: {r:?}");
    }
    assert_eq!(
        hung.count(b"REPORT SPAMC"),
        reports,
        "the hung spamd was asked again"
    );
    assert_eq!(metric(maddr, &skipped("spamd")).await, before + 3.0);
    assert_eq!(
        metric(maddr, "postsift_scanner_up{scanner=\"spamd\"}").await,
        0.0
    );
    f.stop().await;
    assert_eq!(sink.count(), sent + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinjection_hung_answers_450_at_once_once_down() {
    let hung = Silent::tcp().await;
    let sink: SocketAddr = hung.addr.parse().unwrap();
    let cfg = test_config(None, None, sink, AUTH_OFF)
        .set("reinject.command_timeout", 1)
        .set("reinject.data_timeout", 1)
        .set("reinject.connect_timeout", 1);
    let (cfg, maddr) = with_health(cfg, 3600);
    let f = start_filter(&cfg).await;
    send_until_down(f.addr, maddr, "reinject", 450).await;
    let connections = hung.accepted.load(Ordering::SeqCst);
    let before = metric(maddr, &skipped("reinject")).await;
    for _ in 0..3 {
        let r = util::send_fixture(f.addr, "clean.eml").await;
        assert_eq!(r.code, 450, "{r:?}");
        assert!(r.text.contains("marked down"), "{r:?}");
    }
    assert_eq!(
        hung.accepted.load(Ordering::SeqCst),
        connections,
        "the hung reinjection server was connected to again"
    );
    assert_eq!(metric(maddr, &skipped("reinject")).await, before + 3.0);
    f.stop().await;
}

/// A DMARC record, and the zone data of the restarted resolver.
fn dns_records() -> Vec<String> {
    vec!["_dmarc.dmarc-none.test. 3600 IN TXT \"v=DMARC1; p=none\"".to_string()]
}

fn dmarc_message(n: usize) -> Vec<u8> {
    format!(
        "From: a@dmarc-none.test\r\nTo: b@example.com\r\nSubject: outage {n}\r\n\
         Message-ID: <outage-{n}@dmarc-none.test>\r\nDate: Fri, 4 Dec 2026 12:00:00 +0000\r\n\
         \r\nHello.\r\n"
    )
    .into_bytes()
}

/// Sends [`dmarc_message`] `n` from a@example.org to b@example.com.
async fn send_dmarc(f: SocketAddr, n: usize) -> Reply {
    send_one(f, "a@example.org", &["b@example.com"], &dmarc_message(n)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_hung_gives_temperror_at_once_and_is_used_again_once_restarted() {
    // Holds the resolver's port and never answers (its queries sit in the socket's buffer).
    let hung = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = hung.local_addr().unwrap().port();
    // unbound will want the TCP port too: held, so that no client takes it as its own port.
    let hung_tcp = std::net::TcpListener::bind(("127.0.0.1", port)).ok();
    let sink = Capture::start().await;
    let cfg = test_config(
        None,
        None,
        sink.addr,
        &format!(
            "[dns]\nservers = [\"127.0.0.1:{port}\"]\ntimeout = 1\nattempts = 1\n\
             [auth]\ntimeout = 5\n"
        ),
    );
    let (cfg, maddr) = with_health(cfg, 1);
    let f = start_filter(&cfg).await;
    let timeouts = "postsift_dns_lookups_total{outcome=\"timeout\",type=\"txt\"}";
    let mut n = 0;
    while metric(maddr, &up("dns")).await == 1.0 && n < 10 {
        n += 1;
        let r = send_dmarc(f.addr, n).await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    wait_metric(maddr, &up("dns"), 0.0).await;
    let (before_timeouts, before_skipped) = (
        metric(maddr, timeouts).await,
        metric(maddr, &skipped("dns")).await,
    );
    for _ in 0..3 {
        n += 1;
        let r = send_dmarc(f.addr, n).await;
        assert_eq!(r.code, 250, "{r:?}");
        let h = sink.last().headers();
        assert!(h.contains("dmarc=temperror"), "{h}");
    }
    assert_eq!(
        metric(maddr, timeouts).await,
        before_timeouts,
        "a lookup waited for the hung resolver"
    );
    assert_eq!(metric(maddr, &skipped("dns")).await, before_skipped + 3.0);

    // The resolver is back: unbound on the same port.
    drop((hung, hung_tcp));
    let unbound = util::blocking(move || Unbound::start_on(&dns_records(), port)).await;
    wait_metric(maddr, &up("dns"), 1.0).await;
    n += 1;
    let r = send_dmarc(f.addr, n).await;
    assert_eq!(r.code, 250, "{r:?}");
    let h = sink.last().headers();
    assert!(h.contains("dmarc=fail (p=none"), "{h}");
    f.stop().await;
    drop(unbound);
}
