//! The registry after real traffic: clean, spam, virus and tempfailed messages go through a
//! postsift with real clamd and spamd, and `/metrics` counts each where it belongs;
//! `/healthz` and `/readyz` follow the peers.

use std::time::Duration;

use crate::capture::Capture;
use crate::client::send_one;
use crate::peers;
use crate::util::{self, fixture, http_get, start_filter, test_config};

/// The value of one sample line (`name{labels} value`), 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_outcome() {
    let (clamd, spamd) = util::blocking(|| (util::clamd(), util::spamd())).await;
    let sink = Capture::start().await;
    let port = peers::free_port();
    // Every scanner on every message, EICAR included (by default the spam check is skipped
    // for a virus that is discarded: see cache::eicar_with_discard_is_not_shown_to_spamd).
    let cfg = test_config(Some(&clamd), Some(&spamd), sink.addr, "")
        .set("metrics.listen", format!("127.0.0.1:{port}"))
        .set("metrics.probe_interval", 1)
        .set("spam.skip_when_decided", false)
        .toml();
    let f = start_filter(&cfg).await;
    let maddr = format!("127.0.0.1:{port}").parse().unwrap();

    let (status, _) = http_get(maddr, "/healthz").await;
    assert_eq!(status, 200);
    // Waits for the probe's answer; bounded only so that a regression fails, not hangs.
    let mut ready = false;
    let end = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < end {
        if http_get(maddr, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "never ready with clamd, spamd and the sink up");

    for file in ["clean.eml", "gtube.eml", "eicar-plain.eml"] {
        let r = send_one(f.addr, "a@example.org", &["b@example.com"], &fixture(file)).await;
        assert_eq!(r.code, 250, "{file}: {r:?}");
    }
    let (_, text) = http_get(maddr, "/metrics").await;
    assert_eq!(
        sample(
            &text,
            "postsift_messages_total{action=\"pass\",frontend=\"content_filter\",verdict=\"clean\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "postsift_messages_total{action=\"pass\",frontend=\"content_filter\",verdict=\"spam\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "postsift_messages_total{action=\"discard\",frontend=\"content_filter\",verdict=\"virus\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "postsift_recipients_total{frontend=\"content_filter\",result=\"delivered\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "postsift_recipients_total{frontend=\"content_filter\",result=\"discarded\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "postsift_scanner_duration_seconds_count{scanner=\"clamd\"}"
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "postsift_scanner_duration_seconds_count{scanner=\"spamd\"}"
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "postsift_stage_duration_seconds_count{stage=\"total\"}"
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "postsift_stage_duration_seconds_count{stage=\"reinject\"}"
        ),
        2.0
    );
    assert_eq!(sample(&text, "postsift_spam_score_count"), 3.0);
    assert_eq!(sample(&text, "postsift_message_size_bytes_count"), 3.0);
    assert_eq!(sample(&text, "postsift_scanner_up{scanner=\"clamd\"}"), 1.0);
    assert_eq!(sample(&text, "postsift_reinject_up"), 1.0);
    // A session is counted when it ends, just after its QUIT reply.
    let mut sessions = 0.0;
    let end = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < end {
        let (_, text) = http_get(maddr, "/metrics").await;
        sessions = sample(&text, "postsift_sessions_total{protocol=\"esmtp\"}");
        if sessions >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sessions, 3.0);
    assert!(sample(&text, "postsift_smtp_replies_total{class=\"2xx\"}") >= 15.0);
    assert!(sample(&text, "process_resident_memory_bytes") > 0.0);

    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_failures_and_readyz_follows_peers() {
    let sink = Capture::start().await;
    let port = peers::free_port();
    let closed = format!("127.0.0.1:{}", peers::free_port()).parse().unwrap();
    let cfg = test_config(Some("/nonexistent/clamd.ctl"), None, closed, "")
        .set("metrics.listen", format!("127.0.0.1:{port}"))
        .set("metrics.probe_interval", 1)
        .toml();
    let f = start_filter(&cfg).await;
    let maddr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = util::send_fixture(f.addr, "clean.eml").await;
    assert_eq!(r.code, 451);
    let (status, _) = http_get(maddr, "/readyz").await;
    assert_eq!(status, 503);
    let (_, text) = http_get(maddr, "/metrics").await;
    assert_eq!(
        sample(
            &text,
            "postsift_messages_total{action=\"tempfail\",frontend=\"content_filter\",verdict=\"unchecked\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "postsift_tempfails_total{reason=\"clamd\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "postsift_scanner_errors_total{kind=\"connect\",scanner=\"clamd\"}"
        ),
        1.0
    );
    assert_eq!(sample(&text, "postsift_scanner_up{scanner=\"clamd\"}"), 0.0);
    assert_eq!(
        sample(
            &text,
            "postsift_recipients_total{frontend=\"content_filter\",result=\"deferred\"}"
        ),
        1.0
    );
    f.stop().await;

    // Scanning off, reinjection down: a reinjection tempfail.
    let port = peers::free_port();
    let cfg = test_config(None, None, closed, "")
        .set("metrics.listen", format!("127.0.0.1:{port}"))
        .toml();
    let f = start_filter(&cfg).await;
    let maddr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = util::send_fixture(f.addr, "clean.eml").await;
    assert_eq!(r.code, 450);
    let (_, text) = http_get(maddr, "/metrics").await;
    assert_eq!(
        sample(
            &text,
            "postsift_messages_total{action=\"tempfail\",frontend=\"content_filter\",verdict=\"clean\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "postsift_reinject_errors_total{kind=\"connect\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "postsift_tempfails_total{reason=\"reinject\"}"),
        1.0
    );
    assert_eq!(sample(&text, "postsift_reinject_up"), 0.0);
    assert!(
        !text.contains("postsift_scanner_up{scanner=\"clamd\"}"),
        "unconfigured scanner exported"
    );
    drop(sink);
    f.stop().await;
}
