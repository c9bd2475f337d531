//! Regressions, one test named after each defect an attacker's probe found (issue 12): a
//! sender must not change a recipient, forge a header past stripping, slip an oversized SIZE
//! through, or get an address altered instead of refused.

use std::net::SocketAddr;

use postsift::smtp::address::parse_path;

use crate::capture::Capture;
use crate::client::{Client, Reply};
use crate::peers::{Postfix, PostfixOpts};
use crate::util::{self, config, start_filter, test_config};

/// An LMTP session to postsift up to the per-recipient replies, with raw MAIL/RCPT lines.
async fn lmtp(addr: SocketAddr, mail: &str, rcpts: &[&str], body: &[u8]) -> Vec<u16> {
    let mut c = Client::greeted(addr).await;
    c.expect("LHLO t", 250).await;
    c.expect(mail, 250).await;
    for r in rcpts {
        c.expect(r, 250).await;
    }
    c.expect("DATA", 354).await;
    c.body(body).await;
    let mut codes = Vec::new();
    for _ in rcpts {
        codes.push(c.reply().await.code);
    }
    codes
}

const HOSTILE_RCPTS: &[&str] = &[
    "\"x> ORCPT=rfc822;y\"@example.com",
    "\"user@evil.example\"@example.com",
    "\"a\\\"b\"@example.com",
    "plain@example.com",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_local_parts_leave_exactly_as_sent() {
    let sink = Capture::start().await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let rcpts: Vec<String> = HOSTILE_RCPTS
        .iter()
        .map(|r| format!("RCPT TO:<{r}>"))
        .collect();
    let rcpt_refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let codes = lmtp(
        f.addr,
        "MAIL FROM:<\"a b\"@example.org>",
        &rcpt_refs,
        b"Subject: q\r\n\r\nhi\r\n",
    )
    .await;
    assert_eq!(codes, vec![250; HOSTILE_RCPTS.len()]);
    let m = sink.last();
    assert!(
        m.mail.starts_with("MAIL FROM:<\"a b\"@example.org>"),
        "{}",
        m.mail
    );
    assert_eq!(m.rcpts, rcpts, "recipients changed on the way out");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_local_parts_reach_real_postfix_10025_recipient_by_recipient() {
    // postsift reinjects into a real Postfix reinjection smtpd, which relays to the sink: what
    // Postfix understood is what its own smtp client sends on.
    let sink = Capture::start().await;
    let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let pf = {
        let dest = sink.addr;
        util::blocking(move || {
            Postfix::start(PostfixOpts {
                filter: unused,
                filter_lmtp: true,
                final_dest: dest,
            })
        })
        .await
    };
    let f = start_filter(&config(None, None, pf.reinject_addr(), "")).await;
    for r in HOSTILE_RCPTS {
        let codes = lmtp(
            f.addr,
            "MAIL FROM:<\"a b\"@example.org>",
            &[&format!("RCPT TO:<{r}>")],
            format!(
                "Subject: to {r}\r\nMessage-ID: <{}@t>\r\n\r\nhi\r\n",
                r.len()
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(codes, vec![250], "{r}: {}", pf.log());
    }
    let got = sink.wait_for(HOSTILE_RCPTS.len()).await;
    let mut rcpts: Vec<String> = got.iter().flat_map(|t| t.rcpts.clone()).collect();
    rcpts.sort();
    let mut want: Vec<String> = HOSTILE_RCPTS
        .iter()
        .map(|r| format!("RCPT TO:<{r}>"))
        .collect();
    want.sort();
    // Postfix may add parameters (ORCPT=…); compare the path only.
    let paths: Vec<String> = rcpts
        .iter()
        .map(|r| {
            let (a, _) = parse_path(&r["RCPT TO:".len()..], false, true).unwrap();
            format!("RCPT TO:<{a}>")
        })
        .collect();
    assert_eq!(paths, want, "Postfix delivered to other recipients");
    for t in &got {
        assert!(
            t.mail.starts_with("MAIL FROM:<\"a b\"@example.org>"),
            "{}",
            t.mail
        );
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_parameter_overflow_is_552() {
    let sink = Capture::start().await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let mut c = Client::greeted(f.addr).await;
    c.expect("EHLO t", 250).await;
    for size in [
        "100000000000000000000000",
        "18446744073709551616",
        "99999999999999999999",
        "999999999999999999999999999",
        "52428801",
    ] {
        let r = c
            .expect(&format!("MAIL FROM:<a@example.org> SIZE={size}"), 552)
            .await;
        assert!(r.text.contains("5.3.4"), "{r:?}");
    }
    c.expect("MAIL FROM:<a@example.org> SIZE=1000", 250).await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_are_refused_not_altered() {
    let sink = Capture::start().await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let mut c = Client::greeted(f.addr).await;
    c.expect("EHLO t", 250).await;
    // Invalid UTF-8 (was reinjected as U+FFFD) and a bare CR (was dropped).
    c.send(b"MAIL FROM:<a\xff@example.org>\r\n").await;
    let r = c.reply().await;
    assert_eq!(r.code, 501, "{r:?}");
    assert!(r.text.contains("5.1.7"), "{r:?}");
    c.send(b"MAIL FROM:<a\rb@example.org>\r\n").await;
    let r = c.reply().await;
    assert_eq!(r.code, 501, "{r:?}");
    // Non-ASCII without SMTPUTF8.
    let r = c.expect("MAIL FROM:<jörg@example.org>", 553).await;
    assert!(r.text.contains("5.6.7"), "{r:?}");
    c.expect("MAIL FROM:<a@example.org>", 250).await;
    let r = c.expect("RCPT TO:<jörg@example.com>", 553).await;
    assert!(r.text.contains("5.6.7"), "{r:?}");
    c.send(b"RCPT TO:<b\xfe@example.com>\r\n").await;
    let r = c.reply().await;
    assert_eq!(r.code, 501, "{r:?}");
    assert!(r.text.contains("5.1.3"), "{r:?}");
    c.send(b"RCPT TO:<b\r@example.com>\r\n").await;
    assert_eq!(c.reply().await.code, 501);
    c.expect("RCPT TO:<b@example.com> NOTIFY=NEVER", 250).await;
    c.expect("RSET", 250).await;
    // With SMTPUTF8 the same addresses go through, unchanged.
    c.expect("MAIL FROM:<jörg@example.org> SMTPUTF8", 250).await;
    c.expect("RCPT TO:<jörg@exämple.com>", 250).await;
    c.expect("DATA", 354).await;
    c.body(b"Subject: utf8\r\n\r\nhi\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    let m = sink.last();
    assert!(
        m.mail.starts_with("MAIL FROM:<jörg@example.org>"),
        "{}",
        m.mail
    );
    assert_eq!(m.rcpts, vec!["RCPT TO:<jörg@exämple.com>".to_string()]);
    f.stop().await;
}

/// Sends `body` and returns what reached the sink's header section.
async fn deliver(body: &[u8]) -> (u16, Option<crate::capture::Transaction>) {
    let sink = Capture::start().await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let r = crate::client::send_one(f.addr, "a@example.org", &["b@example.com"], body).await;
    f.stop().await;
    (r.code, (sink.count() > 0).then(|| sink.last()))
}

/// The delivered header section, as a lenient reader sees it: up to the first blank line.
fn forged_fields(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .map(|(n, _)| n.trim_end().to_ascii_lowercase())
        .filter(|n| n.starts_with("x-spam-flag") || n.starts_with("x-virus-scanned"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_header_before_a_header_section_over_the_threshold_is_stripped() {
    let mut body = b"X-Spam-Flag: YES\r\n".to_vec();
    for i in 0..33_000 {
        body.extend_from_slice(format!("X-L: {i:03}\r\n").as_bytes());
    }
    body.extend_from_slice(b"Subject: big\r\n\r\nbody\r\n");
    let (code, m) = deliver(&body).await;
    assert_eq!(code, 250);
    let m = m.expect("delivered");
    // Scanners are off: postsift writes no X-Spam-Flag itself, so none may arrive.
    assert_eq!(forged_fields(&m.data), Vec::<String>::new());
    let text = m.text();
    assert!(
        text.ends_with("X-L: 32999\r\nSubject: big\r\n\r\nbody\r\n"),
        "{}",
        &text[text.len() - 200..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_section_over_max_header_size_is_refused() {
    let mut body = b"X-Spam-Flag: YES\r\nX-Long: ".to_vec();
    body.extend(std::iter::repeat_n(b'a', 10 << 20));
    body.extend_from_slice(b"\r\n\r\nbody\r\n");
    let (code, m) = deliver(&body).await;
    assert_eq!(code, 552);
    assert!(m.is_none(), "delivered with an unchecked header section");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_header_with_whitespace_before_the_colon_is_stripped() {
    let body = b"X-Spam-Flag : YES\r\nX-Spam-Flag\t: YES\r\nX-Virus-Scanned  : Clean\r\nFrom: a@example.org\r\nX-Spam-Flag: YES\r\nSubject: hi\r\n\r\nbody\r\n";
    let (code, m) = deliver(body).await;
    assert_eq!(code, 250);
    let m = m.expect("delivered");
    assert_eq!(forged_fields(&m.data), Vec::<String>::new(), "{}", m.text());
    assert!(m
        .text()
        .ends_with("From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_header_line_cannot_carry_forged_headers_past_it() {
    // A line that is not a header field ends the header section (as Postfix reads it); a
    // lenient reader might go on. A blank line is put in front of it, so both agree.
    let body = b"From: a@example.org\r\nX-Spam\0Flag: YES\r\nX-Spam-Flag: YES\r\n\r\nbody\r\n";
    let (code, m) = deliver(body).await;
    assert_eq!(code, 250);
    let m = m.expect("delivered");
    assert_eq!(forged_fields(&m.data), Vec::<String>::new(), "{}", m.text());
    assert!(m.data.ends_with(
        b"From: a@example.org\r\n\r\nX-Spam\0Flag: YES\r\nX-Spam-Flag: YES\r\n\r\nbody\r\n"
    ));
}

/// Connects and sends `bytes` one at a time, `gap` apart, until the server closes; returns the
/// replies read after the greeting (the client reads while it dribbles).
async fn dribble(addr: SocketAddr, bytes: &'static [u8], gap: std::time::Duration) -> Reply {
    let mut c = Client::greeted(addr).await;
    let mut w = c.take_writer();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for b in bytes.iter().cycle() {
            if w.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(gap).await;
        }
    });
    // Bounded only so that a regression fails instead of hanging the suite.
    let r = tokio::time::timeout(std::time::Duration::from_secs(120), c.reply())
        .await
        .expect("the dribbling client still holds its slot after 120 s");
    writer.abort();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_hold_every_session_slot() {
    // Regression: with only per-read timeouts, clients sending a byte every few seconds kept
    // max_sessions full indefinitely. Now a whole command has read_timeout.
    let sink = Capture::start().await;
    let f = start_filter(
        &test_config(None, None, sink.addr, "")
            .set("server.max_sessions", 2)
            .set("server.read_timeout", 3)
            .toml(),
    )
    .await;
    let gap = std::time::Duration::from_millis(1500);
    let (a, b) = tokio::join!(
        dribble(f.addr, b"NOOP\r\n", gap),
        dribble(f.addr, b"EHLO slow.example\r\n", gap)
    );
    for r in [a, b] {
        assert_eq!(r.code, 421, "{r:?}");
        assert!(r.text.contains("4.4.2"), "{r:?}");
    }
    // The slots are free again.
    let r = crate::client::send_one(
        f.addr,
        "a@example.org",
        &["b@example.com"],
        b"Subject: after\r\n\r\nok\r\n",
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dribbled_below_the_minimum_rate_is_cut_off_and_not_delivered() {
    let sink = Capture::start().await;
    let f = start_filter(
        &test_config(None, None, sink.addr, "")
            .set("server.read_timeout", 3)
            .set("server.min_data_rate", 1000)
            .toml(),
    )
    .await;
    let mut c = Client::greeted(f.addr).await;
    c.expect("EHLO t", 250).await;
    c.expect("MAIL FROM:<a@example.org>", 250).await;
    c.expect("RCPT TO:<b@example.com>", 250).await;
    c.expect("DATA", 354).await;
    let mut w = c.take_writer();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = w.write_all(b"Subject: slow\r\n\r\n").await;
        loop {
            if w.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        }
    });
    let r = tokio::time::timeout(std::time::Duration::from_secs(120), c.reply())
        .await
        .expect("a dribbled DATA body is still being read after 120 s");
    writer.abort();
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text.contains("4.4.2"), "{r:?}");
    f.stop().await;
    assert_eq!(sink.count(), 0, "a cut-off body was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_commands_between_messages_are_limited() {
    let sink = Capture::start().await;
    let f = start_filter(
        &test_config(None, None, sink.addr, "")
            .set("server.max_junk_commands", 5)
            .toml(),
    )
    .await;
    let mut c = Client::greeted(f.addr).await;
    // Three NOOPs and an EHLO, a message (which resets the count), then five more are fine;
    // the sixth ends the session.
    for _ in 0..3 {
        c.expect("NOOP", 250).await;
    }
    let r = c
        .transaction(
            false,
            "a@example.org",
            &["b@example.com"],
            b"Subject: x\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r[0].code, 250);
    for _ in 0..5 {
        c.expect("RSET", 250).await;
    }
    let r = c.cmd("NOOP").await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text.contains("4.7.0"), "{r:?}");
    assert_eq!(c.reply().await.code, 0, "connection not closed");
    f.stop().await;
}

/// Opens a transaction up to the middle of DATA (`partial` sent, no final dot).
async fn hold_in_data(addr: SocketAddr, partial: &[u8]) -> Client {
    let mut c = Client::greeted(addr).await;
    c.expect("EHLO t", 250).await;
    c.expect("MAIL FROM:<a@example.org>", 250).await;
    c.expect("RCPT TO:<b@example.com>", 250).await;
    c.expect("DATA", 354).await;
    c.send(partial).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_budget_full_means_452_not_growth() {
    // Two messages' worth of memory: a third message in flight gets 452 4.3.1 at DATA.
    let sink = Capture::start().await;
    let f = start_filter(
        &test_config(None, None, sink.addr, "")
            .set("server.spool_threshold", 4096)
            .set("server.max_memory", 8192)
            .toml(),
    )
    .await;
    let mut a = hold_in_data(f.addr, b"Subject: a\r\n\r\n").await;
    let mut b = hold_in_data(f.addr, b"Subject: b\r\n\r\n").await;
    let mut c = Client::greeted(f.addr).await;
    c.expect("EHLO t", 250).await;
    c.expect("MAIL FROM:<a@example.org>", 250).await;
    c.expect("RCPT TO:<b@example.com>", 250).await;
    let r = c.expect("DATA", 452).await;
    assert!(r.text.contains("4.3.1"), "{r:?}");
    // A message that finishes gives its share back.
    a.send(b"done\r\n.\r\n").await;
    assert_eq!(a.reply().await.code, 250);
    c.expect("DATA", 354).await;
    c.body(b"Subject: c\r\n\r\nc\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    b.send(b"done\r\n.\r\n").await;
    assert_eq!(b.reply().await.code, 250);
    f.stop().await;
    assert_eq!(sink.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_file_budget_full_means_452_and_nothing_lost() {
    let sink = Capture::start().await;
    let spool = tempfile::tempdir().unwrap();
    let f = start_filter(
        &test_config(None, None, sink.addr, "")
            .set("server.spool_threshold", 1024)
            .set("server.max_spool_files", 1)
            .set("server.spool_dir", spool.path().display().to_string())
            .toml(),
    )
    .await;
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(4000));
    // The first message spills to a spool file and holds it. Nothing tells the client when
    // postsift has read that far, so wait for the event itself: the filter runs in this
    // process, and its (unlinked) spool file shows among our descriptors.
    let mut a = hold_in_data(f.addr, big.as_bytes()).await;
    wait_for_open_file_under(spool.path()).await;
    let r =
        crate::client::send_one(f.addr, "a@example.org", &["b@example.com"], big.as_bytes()).await;
    assert_eq!(r.code, 452, "{r:?}");
    assert!(r.text.contains("4.3.1"), "{r:?}");
    a.send(b".\r\n").await;
    assert_eq!(a.reply().await.code, 250);
    // The file is given back: the retry goes through.
    let r =
        crate::client::send_one(f.addr, "a@example.org", &["b@example.com"], big.as_bytes()).await;
    assert_eq!(r.code, 250, "{r:?}");
    f.stop().await;
    assert_eq!(sink.count(), 2);
}

/// Waits until this process holds a file descriptor on a file in `dir` (an unlinked spool file
/// shows in /proc/self/fd as `<dir>/.tmpXXXX (deleted)`). Bounded only so that a regression
/// fails instead of hanging the suite.
async fn wait_for_open_file_under(dir: &std::path::Path) {
    let dir = dir.canonicalize().unwrap();
    let found = || {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|target| target.starts_with(&dir))
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while !found() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("no spool file was opened within 120 s");
}
