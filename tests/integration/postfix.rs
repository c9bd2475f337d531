//! End to end through a real Postfix, the way a gateway runs it: Postfix (front smtpd) →
//! content_filter by LMTP → postsift → Postfix's reinjection smtpd → the final sink. Checks what
//! arrived, and that mail Postfix queued while postsift was down or failing is delivered exactly
//! once when it is back.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::capture::{Capture, Transaction};
use crate::peers::{self, Postfix, PostfixOpts};
use crate::util::{self, config, fixture, start_filter_on, Filter};

fn message_id(t: &Transaction) -> String {
    t.text()
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
        .unwrap_or("")
        .to_owned()
}

fn numbered(i: usize) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nTo: b@example.com\r\nSubject: queued {i}\r\nMessage-ID: <queued-{i}@example.org>\r\n\r\nmessage {i}\r\n"
    )
    .into_bytes()
}

/// Messages in Postfix's queue that are not deferred (maildrop, incoming, active, hold), from
/// `postqueue -j`; None if postqueue failed or printed something else.
fn undeferred(etc: &Path) -> Option<usize> {
    let out = Command::new("postqueue")
        .arg("-c")
        .arg(etc)
        .arg("-j")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut n = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // One JSON object per message; anything else means this reads the wrong thing.
        let m: serde_json::Value = serde_json::from_str(line).ok()?;
        if m["queue_name"].as_str()? != "deferred" {
            n += 1;
        }
    }
    Some(n)
}

/// Stops postsift, then waits until Postfix's queue holds nothing but deferred mail. postsift
/// answers Postfix only after the reinjection server queued the message, and every session has
/// ended once `stop` returns, so whatever postsift passed on is then in Postfix's queue; once
/// nothing there is waiting to go out, it has reached the sink. After this the sink's count is
/// final: a late delivery is counted, not missed by a fixed sleep that was too short.
pub(crate) async fn settle(pf: &Postfix, f: Filter) {
    f.stop().await;
    let etc = pf.etc();
    let settled = util::blocking(move || {
        peers::wait_until(Duration::from_secs(60), || undeferred(&etc) == Some(0))
    })
    .await;
    assert!(settled, "Postfix's queue never settled:\n{}", pf.log());
}

pub(crate) async fn start_postfix(filter: SocketAddr, final_dest: SocketAddr) -> Postfix {
    util::blocking(move || {
        Postfix::start(PostfixOpts {
            filter,
            filter_lmtp: true,
            final_dest,
        })
    })
    .await
}

/// Sends through Postfix's front door; returns all replies and the end-of-data one.
pub(crate) async fn send(
    pf: SocketAddr,
    rcpts: &'static [&'static str],
    body: Vec<u8>,
) -> (Vec<(u16, String)>, u16) {
    let replies =
        util::blocking(move || peers::smtp_send(pf, "sender@example.org", rcpts, &body)).await;
    let data = replies
        .iter()
        .position(|r| r.0 == 354)
        .and_then(|i| replies.get(i + 1))
        .map_or(0, |r| r.0);
    (replies, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_to_postsift_to_postfix_delivers_scans_and_discards() {
    let (clamd, spamd) = util::blocking(|| (util::clamd(), util::spamd())).await;
    let sink = Capture::start().await;
    let filter_addr: SocketAddr = format!("127.0.0.1:{}", peers::free_port()).parse().unwrap();
    let pf = start_postfix(filter_addr, sink.addr).await;
    let f = start_filter_on(
        filter_addr,
        &config(Some(&clamd), Some(&spamd), pf.reinject_addr(), ""),
    )
    .await;

    let front = pf.smtp_addr();
    for (file, rcpts) in [
        (
            "clean.eml",
            &["bob@example.com", "carol@example.com", "dave@example.com"][..],
        ),
        ("gtube.eml", &["bob@example.com"][..]),
        ("eicar-zip.eml", &["bob@example.com"][..]),
    ] {
        let rcpts: &'static [&'static str] = Box::leak(rcpts.to_vec().into_boxed_slice());
        let (replies, code) = send(front, rcpts, fixture(file)).await;
        assert_eq!(code, 250, "{file}: Postfix did not queue it: {replies:?}");
    }
    sink.wait_for(2).await;
    // Postfix's own record of the EICAR message, then nothing left to arrive.
    assert!(
        util::blocking({
            let log_dir = pf.dir.clone();
            move || {
                peers::wait_until(Duration::from_secs(60), || {
                    std::fs::read_to_string(log_dir.join("maillog"))
                        .map(|l| l.contains("2.7.0 Ok, discarded"))
                        .unwrap_or(false)
                })
            }
        })
        .await,
        "no discard in Postfix's log:\n{}",
        pf.log()
    );
    settle(&pf, f).await;
    assert_eq!(pf.queue_count(), 0, "mail left in Postfix's queue");
    let arrived = sink.all();
    assert_eq!(
        arrived.len(),
        2,
        "EICAR arrived or something was duplicated"
    );

    let clean = arrived
        .iter()
        .find(|t| t.text().contains("Lunch on Friday"))
        .expect("clean mail");
    assert_eq!(clean.rcpts.len(), 3, "{:?}", clean.rcpts);
    let h = clean.headers();
    assert!(h.contains("X-Virus-Scanned: postsift at test.local"), "{h}");
    assert!(h.contains("X-Spam-Flag: NO"), "{h}");
    assert!(
        h.contains("(postsift, port ") && h.contains("with LMTP id "),
        "{h}"
    );
    assert!(clean.data.ends_with(
        b"shall we have lunch on Friday at noon?\r\n.leading dot line\r\n\r\nAlice\r\n"
    ));

    let spam = arrived
        .iter()
        .find(|t| t.text().contains("GTUBE"))
        .expect("GTUBE mail");
    let h = spam.headers();
    assert!(
        h.contains("X-Spam-Flag: YES") && h.contains("Subject: ***Spam*** Cheap watches"),
        "{h}"
    );
}

/// Mail queued in Postfix while postsift is down, then while clamd is missing (451), is
/// delivered exactly once after postsift comes back working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_queued_while_postsift_is_down_or_failing_arrives_exactly_once() {
    let clamd = util::blocking(util::clamd).await;
    let sink = Capture::start().await;
    let filter_addr: SocketAddr = format!("127.0.0.1:{}", peers::free_port()).parse().unwrap();
    let pf = start_postfix(filter_addr, sink.addr).await;
    let front = pf.smtp_addr();
    let reinject = pf.reinject_addr();

    // 1. postsift running: 3 messages go straight through.
    let f = start_filter_on(filter_addr, &config(Some(&clamd), None, reinject, "")).await;
    for i in 0..3 {
        assert_eq!(send(front, &["b@example.com"], numbered(i)).await.1, 250);
    }
    sink.wait_for(3).await;

    // 2. postsift stopped: Postfix queues 3 more (connection refused → deferred).
    f.stop().await;
    for i in 3..6 {
        assert_eq!(send(front, &["b@example.com"], numbered(i)).await.1, 250);
    }
    // 3. postsift back, but clamd missing: every attempt gets 451 and stays queued.
    let failing = start_filter_on(
        filter_addr,
        &config(Some("/nonexistent/clamd.ctl"), None, reinject, ""),
    )
    .await;
    for i in 6..8 {
        assert_eq!(send(front, &["b@example.com"], numbered(i)).await.1, 250);
    }
    let pf_log = pf.dir.join("maillog");
    assert!(
        util::blocking(move || peers::wait_until(Duration::from_secs(60), || {
            std::fs::read_to_string(&pf_log)
                .map(|l| l.contains("virus_scan FAILED"))
                .unwrap_or(false)
        }))
        .await,
        "Postfix never saw the 451:\n{}",
        pf.log()
    );
    // Whatever the failing postsift passed on has arrived once it is stopped and Postfix holds
    // only the deferred mail.
    settle(&pf, failing).await;
    assert_eq!(sink.count(), 3, "passed unscanned while clamd was missing");

    // 4. postsift restarted with clamd: everything queued arrives, once.
    let f = start_filter_on(filter_addr, &config(Some(&clamd), None, reinject, "")).await;
    util::blocking({
        let etc = pf.etc();
        move || {
            let _ = std::process::Command::new("postqueue")
                .arg("-c")
                .arg(&etc)
                .arg("-f")
                .status();
        }
    })
    .await;
    sink.wait_for(8).await;
    settle(&pf, f).await;
    assert_eq!(pf.queue_count(), 0);
    let all = sink.all();
    let ids: HashSet<String> = all.iter().map(message_id).collect();
    assert_eq!(all.len(), 8, "duplicates: {} arrived", all.len());
    assert_eq!(ids.len(), 8, "{ids:?}");
}

/// The same pipeline with an `smtp` feed instead of `lmtp` (content_filter = smtp:…, as some
/// amavis setups have it): one reply per message, XFORWARD, headers added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_feed_works_like_lmtp() {
    let clamd = util::blocking(util::clamd).await;
    let sink = Capture::start().await;
    let filter: SocketAddr = format!("127.0.0.1:{}", peers::free_port()).parse().unwrap();
    let final_dest = sink.addr;
    let pf = util::blocking(move || {
        Postfix::start(PostfixOpts {
            filter,
            filter_lmtp: false,
            final_dest,
        })
    })
    .await;
    let f = start_filter_on(filter, &config(Some(&clamd), None, pf.reinject_addr(), "")).await;
    let (replies, code) = send(
        pf.smtp_addr(),
        &["bob@example.com", "carol@example.com"],
        fixture("clean.eml"),
    )
    .await;
    assert_eq!(code, 250, "{replies:?}");
    let (_, code) = send(
        pf.smtp_addr(),
        &["bob@example.com"],
        fixture("eicar-plain.eml"),
    )
    .await;
    assert_eq!(code, 250);
    let arrived = sink.wait_for(1).await;
    let h = arrived[0].headers();
    assert!(
        h.contains("X-Virus-Scanned: postsift at test.local") && h.contains("with ESMTP id "),
        "{h}"
    );
    assert_eq!(arrived[0].rcpts.len(), 2);
    let log_dir = pf.dir.clone();
    assert!(
        util::blocking(move || peers::wait_until(Duration::from_secs(60), || {
            std::fs::read_to_string(log_dir.join("maillog"))
                .map(|l| l.contains("2.7.0 Ok, discarded"))
                .unwrap_or(false)
        }))
        .await
    );
    settle(&pf, f).await;
    assert_eq!(pf.queue_count(), 0, "mail left in Postfix's queue");
    assert_eq!(sink.count(), 1, "EICAR arrived");
}

/// Quarantine and release the whole way: Postfix → postsift (EICAR quarantined: Postfix logs
/// `2.7.0 Ok, quarantined` and keeps nothing queued) → `postsift quarantine release` → Postfix's
/// reinjection smtpd → the sink, once, though released twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_through_postfix_and_released_once() {
    let clamd = util::blocking(util::clamd).await;
    let sink = Capture::start().await;
    let filter_addr: SocketAddr = format!("127.0.0.1:{}", peers::free_port()).parse().unwrap();
    let pf = start_postfix(filter_addr, sink.addr).await;
    let tmp = peers::private_dir("quarantine-pf-");
    let toml = config(
        Some(&clamd),
        None,
        pf.reinject_addr(),
        &format!(
            "[virus]\naction = \"quarantine\"\n[quarantine]\ndir = \"{}\"\n",
            tmp.path().join("q").display()
        ),
    );
    let cfg = tmp.path().join("postsift.toml");
    peers::write_file(&cfg, &toml);
    let f = start_filter_on(filter_addr, &toml).await;
    let (replies, code) = send(
        pf.smtp_addr(),
        &["bob@example.com", "carol@example.com"],
        fixture("eicar-zip.eml"),
    )
    .await;
    assert_eq!(code, 250, "{replies:?}");
    let log_dir = pf.dir.clone();
    let logged = util::blocking(move || {
        peers::wait_until(Duration::from_secs(60), || {
            std::fs::read_to_string(log_dir.join("maillog"))
                .is_ok_and(|l| l.matches("2.7.0 Ok, quarantined, id=").count() >= 2)
        })
    })
    .await;
    assert!(logged, "no quarantine in Postfix's log:\n{}", pf.log());
    settle(&pf, f).await;
    assert_eq!(pf.queue_count(), 0);
    assert_eq!(sink.count(), 0, "EICAR arrived");

    let release = |cfg: std::path::PathBuf| {
        util::blocking(move || {
            let list = util::postsift_cmd()
                .args(["quarantine", "--config"])
                .arg(&cfg)
                .arg("list")
                .output()
                .unwrap();
            let list = String::from_utf8_lossy(&list.stdout).into_owned();
            let id = list
                .split_whitespace()
                .next()
                .expect("one entry")
                .to_owned();
            let out = util::postsift_cmd()
                .args(["quarantine", "--config"])
                .arg(&cfg)
                .args(["release", &id])
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        })
    };
    let (code, out) = release(cfg.clone()).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.matches("250 2.0.0 Ok, id=").count(), 2, "{out}");
    let arrived = sink.wait_for(1).await;
    // Below the Received: line Postfix's reinjection smtpd adds.
    let headers = arrived[0].headers();
    assert!(headers.contains("\r\nX-Quarantine-Released: "), "{headers}");
    assert!(
        headers.contains("Message-ID: <eicar-zip@example.org>"),
        "{headers}"
    );
    let (code, out) = release(cfg).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.matches("released before").count(), 2, "{out}");
    // Postfix's queue empty again: whatever was released has reached the sink.
    let etc = pf.etc();
    assert!(
        util::blocking(move || {
            peers::wait_until(Duration::from_secs(60), || undeferred(&etc) == Some(0))
        })
        .await
    );
    let arrived = sink.all();
    assert_eq!(arrived.len(), 1, "released twice");
    let mut rcpts = arrived[0].rcpts.clone();
    rcpts.sort();
    assert_eq!(rcpts.len(), 2, "{rcpts:?}");
    peers::finish_dir(Some(tmp));
}
