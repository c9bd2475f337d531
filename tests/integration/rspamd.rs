//! rspamd as the spam engine, against Debian's real rspamd: the same headers and policy as with
//! spamd, its symbols in `tests=[…]`, its action followed when asked, and its failure handled by
//! `on_failure`.

use crate::capture::Capture;
use crate::client::send_one;
use crate::flow::gtube_is_rejected_with_554;
use crate::peers;
use crate::util::{self, fixture, http_get, rspamd_config, start_filter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtube_is_flagged_and_clean_mail_is_not() {
    let (clamd, rspamd) = util::blocking(|| (util::clamd(), util::rspamd())).await;
    let sink = Capture::start().await;
    let port = peers::free_port();
    let cfg = rspamd_config(Some(&clamd), &rspamd, sink.addr, "")
        .set("metrics.listen", format!("127.0.0.1:{port}"))
        .toml();
    let f = start_filter(&cfg).await;

    let r = send_one(
        f.addr,
        "spammer@example.net",
        &["bob@example.com"],
        &fixture("gtube.eml"),
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    let h = sink.last().headers();
    assert!(h.contains("\r\nX-Spam-Flag: YES\r\n"), "{h}");
    assert!(h.contains("\r\nX-Spam-Score: 15\r\n"), "{h}");
    assert!(
        h.contains("X-Spam-Status: Yes, score=15 tagged_above=-999 required=6.31\r\n tests=["),
        "{h}"
    );
    assert!(h.contains("GTUBE=0"), "{h}");
    assert!(
        h.contains("\r\nSubject: ***Spam*** Cheap watches\r\n"),
        "{h}"
    );

    let r = send_one(
        f.addr,
        "alice@example.org",
        &["bob@example.com"],
        &fixture("clean.eml"),
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    let m = sink.last();
    assert!(
        m.headers().contains("\r\nX-Spam-Flag: NO\r\n"),
        "{}",
        m.headers()
    );
    assert!(m.data.ends_with(&fixture("clean.eml")));

    let (_, text) = http_get(format!("127.0.0.1:{port}").parse().unwrap(), "/metrics").await;
    assert!(
        text.contains("postsift_scanner_duration_seconds_count{scanner=\"rspamd\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("postsift_scanner_up{scanner=\"rspamd\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("postsift_scanner_up{scanner=\"spamd\"}"),
        "spamd not configured"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rspamd_action_reject_with_spam_reject_policy_answers_554() {
    let rspamd = util::blocking(util::rspamd).await;
    let sink = Capture::start().await;
    let cfg = rspamd_config(None, &rspamd, sink.addr, "")
        .set("rspamd.use_action", true)
        .set("spam.action", "reject")
        .toml();
    let f = start_filter(&cfg).await;
    gtube_is_rejected_with_554(f, &sink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rspamd_down_follows_on_failure() {
    let sink = Capture::start().await;
    let closed = format!("127.0.0.1:{}", peers::free_port());
    let f = start_filter(&rspamd_config(None, &closed, sink.addr, "").toml()).await;
    let r = util::send_fixture(f.addr, "clean.eml").await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(
        !sink.last().headers().contains("X-Spam-"),
        "no verdict, no spam headers"
    );
    f.stop().await;

    let cfg = rspamd_config(None, &closed, sink.addr, "")
        .set("rspamd.on_failure", "tempfail")
        .toml();
    let f = start_filter(&cfg).await;
    let r = util::send_fixture(f.addr, "clean.eml").await;
    assert_eq!(r.code, 451, "{r:?}");
    assert!(r.text.contains("spam_scan FAILED"), "{r:?}");
    assert_eq!(sink.count(), 1);
    f.stop().await;
}
