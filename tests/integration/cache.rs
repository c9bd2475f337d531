//! The verdict cache and the skipped spam check against the real clamd and spamd: a retried
//! message costs them nothing (not even clamd's `VERSION` within `clamd_version_refresh`), a
//! new signature database makes clamd's cached answers miss once `VERSION` is asked again, a
//! failure is never kept, a part cached clean hides nothing else in a message, and EICAR with
//! the discard action is not shown to spamd. Each test watches the peers' own logs (a private
//! clamd logging clean streams, spamd's "checking message <Message-ID>" lines) or postsift's
//! metrics.

use std::time::Duration;

use crate::capture::Capture;
use crate::client::send_one;
use crate::peers::{self, Clamd, Peer, Spamd};
use crate::util::{self, base64, http_get, start_filter, test_config};

/// How long a peer's log may take to show what it did.
const LOG_WAIT: Duration = Duration::from_secs(60);

/// A private clamd that logs every stream it scans, clean ones too (`stream(…): OK`).
fn logging_clamd() -> Clamd {
    Clamd::start_with_conf("60M", "LogClean yes\n")
}

/// Streams clamd answered, clean or not.
fn clamd_streams(c: &Clamd) -> usize {
    c.log()
        .lines()
        .filter(|l| l.ends_with(": OK") || l.ends_with(" FOUND"))
        .count()
}

/// How often spamd checked the message with `id` as its Message-ID.
fn spamd_checks(s: &Spamd, id: &str) -> usize {
    s.log()
        .matches(&format!("checking message <{id}> for"))
        .count()
}

/// A message with `id` as Message-ID and a base64 attachment holding `attachment`, plus `body`.
fn message(id: &str, body: &str, attachment: &[u8]) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nTo: b@example.com\r\nSubject: report {id}\r\n\
         Message-ID: <{id}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\n{body}\r\n\
         --b1\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
        base64(attachment)
    )
    .into_bytes()
}

/// The EICAR test string, from the fixture.
fn eicar() -> String {
    let m = String::from_utf8(util::fixture("eicar-plain.eml")).unwrap();
    m.lines()
        .rfind(|l| l.contains("EICAR"))
        .unwrap()
        .trim()
        .to_owned()
}

async fn send(addr: std::net::SocketAddr, msg: &[u8]) -> crate::client::Reply {
    send_one(addr, "a@example.org", &["b@example.com"], msg).await
}

/// Waits until `cond` holds (the peers write their logs after they answer).
async fn eventually(what: &str, cond: impl FnMut() -> bool + Send + 'static) {
    let ok = util::blocking(move || peers::wait_until(LOG_WAIT, cond)).await;
    assert!(ok, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_message_costs_clamd_and_spamd_nothing_the_second_time() {
    let (clamd, spamd) = util::blocking(|| (logging_clamd(), Spamd::start())).await;
    let clamd = std::sync::Arc::new(clamd);
    let spamd = std::sync::Arc::new(spamd);
    let sink = Capture::start().await;
    let cfg = test_config(
        Some(&clamd.endpoint()),
        Some(&spamd.endpoint()),
        sink.addr,
        "",
    );
    let f = start_filter(&cfg.toml()).await;
    let msg = message(
        "retry-1@example.org",
        "Quarterly figures.",
        b"%PDF-1.4 figures",
    );

    assert_eq!(send(f.addr, &msg).await.code, 250);
    let (c, s) = (clamd.clone(), spamd.clone());
    eventually("the first pass is scanned by both", move || {
        clamd_streams(&c) == 2 && spamd_checks(&s, "retry-1@example.org") == 1
    })
    .await;
    // Postfix's retry: the same bytes again.
    let r = send(f.addr, &msg).await;
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(sink.count(), 2);
    assert!(
        sink.last().headers().contains("X-Spam-Score:"),
        "the cached score is applied: {}",
        sink.last().headers()
    );
    // Another message, to know that both peers' logs are up to date.
    let other = message("retry-2@example.org", "Other figures.", b"%PDF-1.4 other");
    assert_eq!(send(f.addr, &other).await.code, 250);
    let (c, s) = (clamd.clone(), spamd.clone());
    eventually("the other message is scanned by both", move || {
        clamd_streams(&c) >= 4 && spamd_checks(&s, "retry-2@example.org") == 1
    })
    .await;
    assert_eq!(
        spamd_checks(&spamd, "retry-1@example.org"),
        1,
        "spamd asked again"
    );
    assert_eq!(
        clamd_streams(&clamd),
        4,
        "clamd asked again: {}",
        clamd.log()
    );
    f.stop().await;
}

/// A clamd with one unrelated signature (database version 1), a filter whose clamd answers
/// are cached and whose `VERSION` is asked again after `refresh` seconds, and a message with
/// an attachment clamd does not know yet; the message sent twice (the second from the cache).
async fn cached_then_new_signature(
    refresh: u64,
) -> (
    std::sync::Arc<Clamd>,
    Capture,
    crate::test_config::TestConfig,
    Vec<u8>,
) {
    let clamd = std::sync::Arc::new(
        util::blocking(|| {
            let c = logging_clamd();
            c.install_daily(1, "Postsift.Test.Unrelated:0:*:756e72656c61746564\n");
            c
        })
        .await,
    );
    let sink = Capture::start().await;
    let cfg = test_config(Some(&clamd.endpoint()), None, sink.addr, "")
        .set("virus.action", "reject")
        .set(
            "cache.clamd_version_refresh",
            i64::try_from(refresh).unwrap(),
        );
    let marker = b"postsift-cache-marker-0042";
    let msg = message("sigs@example.org", "See attached.", marker);
    (clamd, sink, cfg, msg)
}

/// freshclam brings a signature for the attachment (database version 2); returns once clamd
/// says so.
async fn install_marker_signature(clamd: &std::sync::Arc<Clamd>) {
    let hex: String = b"postsift-cache-marker-0042"
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let c = clamd.clone();
    let version = util::blocking(move || {
        c.install_daily(2, &format!("Postsift.Test.Marker:0:*:{hex}\n"));
        c.version()
    })
    .await;
    assert!(version.contains("/2/"), "{version}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_clamd_signature_database_makes_its_cached_answers_miss() {
    // VERSION asked for every message: the retry after the new database is scanned again.
    let (clamd, sink, cfg, msg) = cached_then_new_signature(0).await;
    let f = start_filter(&cfg.toml()).await;
    assert_eq!(send(f.addr, &msg).await.code, 250);
    assert_eq!(send(f.addr, &msg).await.code, 250);
    install_marker_signature(&clamd).await;
    let r = send(f.addr, &msg).await;
    assert_eq!(r.code, 554, "{r:?}");
    assert_eq!(sink.count(), 2);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_clamd_version_refresh_a_retry_costs_clamd_nothing_and_a_new_runtime_asks_again() {
    // VERSION trusted for an hour: after the first message, clamd hears nothing from a message
    // whose streams are all cached, not even VERSION (had it been asked, version 2 would make
    // the answer miss and the retry a 554), so the answer made before the new database is
    // reused (the documented window); a new runtime (a restart, or a reload) asks VERSION
    // again and the answers made under version 1 miss.
    let (clamd, sink, cfg, msg) = cached_then_new_signature(3600).await;
    let f = start_filter(&cfg.toml()).await;
    assert_eq!(send(f.addr, &msg).await.code, 250);
    let c = clamd.clone();
    eventually("the first pass is scanned", move || clamd_streams(&c) == 2).await;
    install_marker_signature(&clamd).await;
    assert_eq!(send(f.addr, &msg).await.code, 250);
    assert_eq!(sink.count(), 2);
    f.stop().await;
    assert_eq!(
        clamd_streams(&clamd),
        2,
        "clamd asked again: {}",
        clamd.log()
    );

    let f = start_filter(&cfg.toml()).await;
    let r = send(f.addr, &msg).await;
    assert_eq!(r.code, 554, "{r:?}");
    assert_eq!(sink.count(), 2);
    f.stop().await;
}

/// clamd gone but not yet marked down (one probe at start, a hundred failures to mark it down):
/// the message it answered a moment ago passes on its cached answers, with nothing asked of
/// clamd; a message it has not seen takes clamd's failure path (451), and its retry too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamd_stopped_a_seen_message_passes_on_its_answers_and_a_new_one_gets_451() {
    let mut clamd = util::blocking(logging_clamd).await;
    let sink = Capture::start().await;
    let cfg = test_config(Some(&clamd.endpoint()), None, sink.addr, "")
        .set("cache.clamd_version_refresh", 3600)
        .set("metrics.probe_interval", 3600)
        .set("health.down_after", 100);
    let f = start_filter(&cfg.toml()).await;
    let seen = message("seen@example.org", "Seen before.", b"%PDF-1.4 seen");
    assert_eq!(send(f.addr, &seen).await.code, 250);

    let clamd = util::blocking(move || {
        clamd.stop();
        clamd
    })
    .await;
    let r = send(f.addr, &seen).await;
    assert_eq!(r.code, 250, "{r:?}");
    let new = message("new@example.org", "Not seen.", b"%PDF-1.4 new");
    for _ in 0..2 {
        let r = send(f.addr, &new).await;
        assert_eq!(r.code, 451, "{r:?}");
    }
    assert_eq!(sink.count(), 2);
    f.stop().await;
    drop(clamd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spamd_failure_is_not_cached_and_the_retry_is_scanned() {
    let spamd = util::blocking(Spamd::start).await;
    let sink = Capture::start().await;
    let cfg = test_config(Some(&util::clamd()), Some(&spamd.endpoint()), sink.addr, "")
        .set("spamd.on_failure", "tempfail");
    let f = start_filter(&cfg.toml()).await;
    let msg = message("tempfail@example.org", "Lunch?", b"menu");
    let mut spamd = util::blocking(move || {
        let mut s = spamd;
        s.stop();
        s
    })
    .await;
    let r = send(f.addr, &msg).await;
    assert_eq!(r.code, 451, "{r:?}");
    spamd = util::blocking(move || {
        spamd.start_again();
        spamd
    })
    .await;
    let r = send(f.addr, &msg).await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(sink.last().headers().contains("X-Spam-Score:"));
    let spamd = std::sync::Arc::new(spamd);
    let s = spamd.clone();
    eventually("spamd checked the retry", move || {
        spamd_checks(&s, "tempfail@example.org") == 1
    })
    .await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_cached_clean_hides_no_virus_elsewhere_in_another_message() {
    let sink = Capture::start().await;
    let cfg = test_config(Some(&util::clamd()), None, sink.addr, "").set("virus.action", "reject");
    let f = start_filter(&cfg.toml()).await;
    let part = b"%PDF-1.4 the same invoice in every message";
    let clean = message("campaign-1@example.org", "Your invoice.", part);
    assert_eq!(send(f.addr, &clean).await.code, 250);
    // The same part, and EICAR in the text: the message is not the one cached.
    let eicar_body = eicar();
    let eicar_body = eicar_body.as_str();
    let infected = message("campaign-2@example.org", eicar_body, part);
    let r = send(f.addr, &infected).await;
    assert_eq!(r.code, 554, "{r:?}");
    // The same text, and EICAR as a second attachment.
    let two = String::from_utf8(clean.clone())
        .unwrap()
        .replace(
            "--b1--\r\n",
            &format!(
                "--b1\r\nContent-Type: application/octet-stream; name=\"e.com\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
                base64(eicar_body.as_bytes())
            ),
        )
        .into_bytes();
    let r = send(f.addr, &two).await;
    assert_eq!(r.code, 554, "{r:?}");
    // And the clean one again is still clean.
    assert_eq!(send(f.addr, &clean).await.code, 250);
    assert_eq!(sink.count(), 2);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eicar_with_discard_is_not_shown_to_spamd() {
    let spamd = std::sync::Arc::new(util::blocking(Spamd::start).await);
    let sink = Capture::start().await;
    let port = peers::free_port();
    let cfg = test_config(Some(&util::clamd()), Some(&spamd.endpoint()), sink.addr, "")
        .set("metrics.listen", format!("127.0.0.1:{port}"));
    let f = start_filter(&cfg.toml()).await;
    let eicar_body = eicar();
    let eicar_body = eicar_body.as_str();
    let virus = message("skip-1@example.org", eicar_body, b"x");
    let r = send(f.addr, &virus).await;
    assert_eq!(r.code, 250, "discarded: {r:?}");
    assert_eq!(sink.count(), 0);
    // A clean message after it: once spamd has logged it, it would have logged the virus.
    let clean = message("skip-2@example.org", "Hello.", b"y");
    assert_eq!(send(f.addr, &clean).await.code, 250);
    let s = spamd.clone();
    eventually("spamd checked the clean message", move || {
        spamd_checks(&s, "skip-2@example.org") == 1
    })
    .await;
    assert_eq!(spamd_checks(&spamd, "skip-1@example.org"), 0);
    let (_, text) = http_get(peers::localhost(port), "/metrics").await;
    assert!(text.contains("postsift_spam_skipped_total 1"), "{text}");
    f.stop().await;

    // Without the skip, the virus is shown to spamd like any message.
    let cfg = test_config(Some(&util::clamd()), Some(&spamd.endpoint()), sink.addr, "")
        .set("spam.skip_when_decided", false);
    let f = start_filter(&cfg.toml()).await;
    let virus = message("skip-3@example.org", eicar_body, b"z");
    assert_eq!(send(f.addr, &virus).await.code, 250);
    let s = spamd.clone();
    eventually("spamd checked the virus", move || {
        spamd_checks(&s, "skip-3@example.org") == 1
    })
    .await;
    f.stop().await;
}
