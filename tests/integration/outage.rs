//! Peer outages (issue 17): a peer that fails `[health] down_after` times in a row is marked
//! down, and later messages take its failure path at once without touching it (the hung
//! stand-in hears no new request; `postsift_peer_skipped_total` counts them); the health probe
//! brings the real peer back once it is restarted. Real clamd and unbound are stopped and
//! started again; a peer that accepts and never answers is a stand-in (no real one hangs on
//! demand). Nothing here times anything: the tests wait on the metrics, with a generous guard.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::capture::Capture;
use crate::client::send_one;
use crate::dns_peer::Unbound;
use crate::harness;
use crate::rspamd_peer::Rspamd;
use crate::util::{self, config, fixture, http_get, rspamd_config, start_filter};

/// How long a state change may take to show before the test gives up (a hang guard, not a
/// measurement).
const GUARD: Duration = Duration::from_secs(90);

/// A TCP peer that accepts, reads everything and never answers; it counts connections and
/// keeps what it heard.
#[derive(Clone, Default)]
struct Hung {
    addr: String,
    accepted: Arc<AtomicUsize>,
    heard: Arc<Mutex<Vec<u8>>>,
}

impl Hung {
    async fn start() -> Hung {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hung = Hung {
            addr: l.local_addr().unwrap().to_string(),
            ..Default::default()
        };
        let h = hung.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                h.accepted.fetch_add(1, Ordering::SeqCst);
                let heard = h.heard.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        heard.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                });
            }
        });
        hung
    }

    /// How many times `needle` was heard.
    fn count(&self, needle: &[u8]) -> usize {
        let heard = self.heard.lock().unwrap();
        heard.windows(needle.len()).filter(|w| *w == needle).count()
    }
}

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
fn with_health(cfg: &str, probe_interval: u64) -> (String, SocketAddr) {
    let port = harness::free_port();
    let cfg = cfg.replace(
        "listen = \"\"",
        &format!(
            "listen = \"127.0.0.1:{port}\"\nprobe_interval = {probe_interval}\n\
             [health]\ndown_after = 2\nprobe_timeout = 1"
        ),
    );
    (cfg, format!("127.0.0.1:{port}").parse().unwrap())
}

fn up(peer: &str) -> String {
    format!("postsift_peer_up{{peer=\"{peer}\"}}")
}

fn skipped(peer: &str) -> String {
    format!("postsift_peer_skipped_total{{peer=\"{peer}\"}}")
}

/// Sends clean.eml until `peer` is marked down (its failures, or the probe's); returns how many
/// were sent. Each gets `code`.
async fn send_until_down(f: SocketAddr, maddr: SocketAddr, peer: &str, code: u16) -> usize {
    for sent in 0..10 {
        if metric(maddr, &up(peer)).await == 0.0 {
            return sent;
        }
        let r = send_one(
            f,
            "a@example.org",
            &["b@example.com"],
            &fixture("clean.eml"),
        )
        .await;
        assert_eq!(r.code, code, "{r:?}");
    }
    wait_metric(maddr, &up(peer), 0.0).await;
    10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamd_stopped_is_skipped_at_once_and_used_again_once_restarted() {
    let mut clamd = util::blocking(harness::Clamd::start).await;
    let socket = clamd.socket.display().to_string();
    let sink = Capture::start().await;
    let (cfg, maddr) = with_health(
        &config(Some(&socket), None, sink.addr, "[auth]\nenabled = false\n"),
        1,
    );
    let f = start_filter(&cfg).await;
    let r = send_one(
        f.addr,
        "a@example.org",
        &["b@example.com"],
        &fixture("clean.eml"),
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    wait_metric(maddr, &up("clamd"), 1.0).await;

    let mut clamd = util::blocking(move || {
        clamd.stop();
        clamd
    })
    .await;
    send_until_down(f.addr, maddr, "clamd", 451).await;
    let before = metric(maddr, &skipped("clamd")).await;
    for _ in 0..3 {
        let r = send_one(
            f.addr,
            "a@example.org",
            &["b@example.com"],
            &fixture("clean.eml"),
        )
        .await;
        assert_eq!(r.code, 451, "{r:?}");
        assert!(r.text.contains("virus_scan FAILED"), "{r:?}");
    }
    assert_eq!(metric(maddr, &skipped("clamd")).await, before + 3.0);
    // /readyz follows at the next probe.
    let end = tokio::time::Instant::now() + GUARD;
    while http_get(maddr, "/readyz").await.0 == 200 {
        assert!(tokio::time::Instant::now() < end, "ready without clamd");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let clamd = util::blocking(move || {
        clamd.start_again();
        clamd
    })
    .await;
    wait_metric(maddr, &up("clamd"), 1.0).await;
    let r = send_one(
        f.addr,
        "a@example.org",
        &["b@example.com"],
        &fixture("clean.eml"),
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    f.stop().await;
    assert_eq!(sink.count(), 2, "only the scanned messages were delivered");
    drop(clamd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spamd_hung_costs_down_after_timeouts_then_none() {
    let hung = Hung::start().await;
    let sink = Capture::start().await;
    let cfg = config(
        None,
        Some(&hung.addr),
        sink.addr,
        "[auth]\nenabled = false\n",
    )
    .replace(
        "timeout = 20\nio_timeout = 20",
        "timeout = 2\nio_timeout = 1",
    );
    // One probe at start, then none: every REPORT the stand-in hears is a message's.
    let (cfg, maddr) = with_health(&cfg, 3600);
    let f = start_filter(&cfg).await;
    let sent = send_until_down(f.addr, maddr, "spamd", 250).await;
    let reports = hung.count(b"REPORT SPAMC");
    assert!(
        reports <= 2 && reports <= sent,
        "{reports} REPORTs for {sent} messages"
    );
    let before = metric(maddr, &skipped("spamd")).await;
    for _ in 0..3 {
        let r = send_one(
            f.addr,
            "a@example.org",
            &["b@example.com"],
            &fixture("clean.eml"),
        )
        .await;
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
    let hung = Hung::start().await;
    let sink: SocketAddr = hung.addr.parse().unwrap();
    let cfg = config(None, None, sink, "[auth]\nenabled = false\n").replace(
        "command_timeout = 10\ndata_timeout = 10\nconnect_timeout = 5",
        "command_timeout = 1\ndata_timeout = 1\nconnect_timeout = 1",
    );
    let (cfg, maddr) = with_health(&cfg, 3600);
    let f = start_filter(&cfg).await;
    send_until_down(f.addr, maddr, "reinject", 450).await;
    let connections = hung.accepted.load(Ordering::SeqCst);
    let before = metric(maddr, &skipped("reinject")).await;
    for _ in 0..3 {
        let r = send_one(
            f.addr,
            "a@example.org",
            &["b@example.com"],
            &fixture("clean.eml"),
        )
        .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_hung_gives_temperror_at_once_and_is_used_again_once_restarted() {
    // Holds the resolver's port and never answers (its queries sit in the socket's buffer).
    let hung = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = hung.local_addr().unwrap().port();
    // unbound will want the TCP port too: held, so that no client takes it as its own port.
    let hung_tcp = std::net::TcpListener::bind(("127.0.0.1", port)).ok();
    let sink = Capture::start().await;
    let cfg = config(
        None,
        None,
        sink.addr,
        &format!(
            "[dns]\nservers = [\"127.0.0.1:{port}\"]\ntimeout = 1\nattempts = 1\n\
             [auth]\ntimeout = 5\n"
        ),
    );
    let (cfg, maddr) = with_health(&cfg, 1);
    let f = start_filter(&cfg).await;
    let timeouts = "postsift_dns_lookups_total{outcome=\"timeout\",type=\"txt\"}";
    let mut n = 0;
    while metric(maddr, &up("dns")).await == 1.0 && n < 10 {
        n += 1;
        let r = send_one(
            f.addr,
            "a@example.org",
            &["b@example.com"],
            &dmarc_message(n),
        )
        .await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    wait_metric(maddr, &up("dns"), 0.0).await;
    let (before_timeouts, before_skipped) = (
        metric(maddr, timeouts).await,
        metric(maddr, &skipped("dns")).await,
    );
    for _ in 0..3 {
        n += 1;
        let r = send_one(
            f.addr,
            "a@example.org",
            &["b@example.com"],
            &dmarc_message(n),
        )
        .await;
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
    let r = send_one(
        f.addr,
        "a@example.org",
        &["b@example.com"],
        &dmarc_message(n),
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    let h = sink.last().headers();
    assert!(h.contains("dmarc=fail (p=none"), "{h}");
    f.stop().await;
    drop(unbound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rspamd_stopped_is_skipped_at_once_and_used_again_once_restarted() {
    let mut rspamd = util::blocking(Rspamd::start).await;
    let sink = Capture::start().await;
    let cfg = rspamd_config(
        None,
        &rspamd.addr.to_string(),
        sink.addr,
        "[auth]\nenabled = false\n",
    );
    let (cfg, maddr) = with_health(&cfg, 1);
    let f = start_filter(&cfg).await;
    let gtube = fixture("gtube.eml");
    let r = send_one(f.addr, "a@example.org", &["b@example.com"], &gtube).await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(sink.last().headers().contains("X-Spam-Flag: YES"));
    wait_metric(maddr, &up("rspamd"), 1.0).await;

    let mut rspamd = util::blocking(move || {
        rspamd.stop();
        rspamd
    })
    .await;
    send_until_down(f.addr, maddr, "rspamd", 250).await;
    let before = metric(maddr, &skipped("rspamd")).await;
    for _ in 0..3 {
        let r = send_one(f.addr, "a@example.org", &["b@example.com"], &gtube).await;
        assert_eq!(r.code, 250, "on_failure = pass: {r:?}");
        assert!(
            !sink.last().headers().contains("X-Spam-Flag"),
            "not scanned"
        );
    }
    assert_eq!(metric(maddr, &skipped("rspamd")).await, before + 3.0);

    let rspamd = util::blocking(move || {
        rspamd.start_again();
        rspamd
    })
    .await;
    wait_metric(maddr, &up("rspamd"), 1.0).await;
    let r = send_one(f.addr, "a@example.org", &["b@example.com"], &gtube).await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(
        sink.last().headers().contains("X-Spam-Flag: YES"),
        "scanned again once rspamd is back"
    );
    f.stop().await;
    drop(rspamd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spamd_stopped_is_skipped_at_once_and_used_again_once_restarted() {
    let mut spamd = util::blocking(harness::Spamd::start).await;
    let sink = Capture::start().await;
    let addr = spamd.addr.to_string();
    let cfg = config(None, Some(&addr), sink.addr, "[auth]\nenabled = false\n");
    let (cfg, maddr) = with_health(&cfg, 1);
    let f = start_filter(&cfg).await;
    let gtube = fixture("gtube.eml");
    let r = send_one(f.addr, "a@example.org", &["b@example.com"], &gtube).await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(sink.last().headers().contains("X-Spam-Flag: YES"));

    let mut spamd = util::blocking(move || {
        spamd.stop();
        spamd
    })
    .await;
    send_until_down(f.addr, maddr, "spamd", 250).await;
    let before = metric(maddr, &skipped("spamd")).await;
    for _ in 0..3 {
        let r = send_one(f.addr, "a@example.org", &["b@example.com"], &gtube).await;
        assert_eq!(r.code, 250, "on_failure = pass: {r:?}");
        assert!(
            !sink.last().headers().contains("X-Spam-Flag"),
            "not scanned"
        );
    }
    assert_eq!(metric(maddr, &skipped("spamd")).await, before + 3.0);

    let spamd = util::blocking(move || {
        spamd.start_again();
        spamd
    })
    .await;
    wait_metric(maddr, &up("spamd"), 1.0).await;
    let r = send_one(f.addr, "a@example.org", &["b@example.com"], &gtube).await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(
        sink.last().headers().contains("X-Spam-Flag: YES"),
        "scanned again once spamd is back"
    );
    f.stop().await;
    drop(spamd);
}
