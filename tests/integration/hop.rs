//! The hop (issue 22): reinjection pipelines XFORWARD, MAIL, every RCPT and DATA in one write
//! where the next hop offers PIPELINING and goes one command at a time where it does not;
//! against Postfix's smtp-sink (every message delivered exactly once, a server that closes or
//! says 421 mid-group), and the capture server for one refused recipient among several.

use crate::capture::{Behaviour, Capture};
use crate::client::{send_one, Client};
use crate::peers::{wait_until, SmtpSink};
use crate::util::{config, fixture, start_filter};
use std::time::Duration;

/// `n` messages, each to two recipients, over `n` concurrent sessions into a filter that
/// reinjects to `sink`: every one answered 250 and dumped by the sink exactly once, with both
/// recipients and its dot-stuffed line intact.
async fn each_message_once_through(sink: &SmtpSink, n: usize) {
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let mut tasks = Vec::new();
    for i in 0..n {
        let addr = f.addr;
        tasks.push(tokio::spawn(async move {
            let body = format!(
                "From: a@example.org\r\nSubject: hop {i}\r\n\r\nmarker-{i}-end\r\n.a line with a leading dot\r\n"
            );
            send_one(
                addr,
                "a@example.org",
                &["one@example.com", "two@example.com"],
                body.as_bytes(),
            )
            .await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.code, 250, "{r:?}");
    }
    // Every message was answered 250 after the sink's own 250; the guard is for its file.
    assert!(
        wait_until(Duration::from_secs(30), || sink.messages().len() >= n),
        "the sink dumped {} of {n} messages",
        sink.messages().len()
    );
    let msgs = sink.messages();
    assert_eq!(msgs.len(), n, "a message was delivered twice");
    for i in 0..n {
        let marker = format!("marker-{i}-end");
        let found: Vec<&String> = msgs.iter().filter(|m| m.contains(&marker)).collect();
        assert_eq!(found.len(), 1, "{marker} delivered {} times", found.len());
        let m = found[0];
        let rcpts: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("X-Rcpt-Args:"))
            .collect();
        assert_eq!(rcpts.len(), 2, "{m}");
        assert!(rcpts[0].contains("<one@example.com>"), "{m}");
        assert!(rcpts[1].contains("<two@example.com>"), "{m}");
        assert!(
            m.lines()
                .any(|l| l.trim_end() == ".a line with a leading dot"),
            "{m}"
        );
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinjection_through_smtp_sink_with_pipelining_delivers_each_message_once() {
    let sink = SmtpSink::start(&[]);
    each_message_once_through(&sink, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinjection_through_smtp_sink_without_pipelining_delivers_each_message_once() {
    let sink = SmtpSink::start(&["-p"]);
    each_message_once_through(&sink, 12).await;
}

/// A next hop that closes the connection at the pipelined DATA (smtp-sink `-q DATA`), or answers
/// a RCPT with 421 and closes (`-Q RCPT`): the client gets a 4xx, nothing is delivered, and the
/// filter keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_hop_closing_inside_the_pipelined_group_gets_a_tempfail_and_no_message() {
    for opt in ["DATA", "RCPT"] {
        let flag = if opt == "DATA" { "-q" } else { "-Q" };
        let sink = SmtpSink::start(&[flag, opt]);
        let f = start_filter(&config(None, None, sink.addr, "")).await;
        for _ in 0..2 {
            let r = send_one(
                f.addr,
                "a@example.org",
                &["b@example.com"],
                b"Subject: x\r\n\r\ny\r\n",
            )
            .await;
            assert_eq!(r.code / 100, 4, "{flag} {opt}: {r:?}");
        }
        assert!(sink.messages().is_empty(), "{flag} {opt}");
        f.stop().await;
    }
}

/// With PIPELINING, DATA goes in the same write as MAIL and the RCPTs; each LMTP recipient
/// still gets its own reply with one refused, and the message reaches the others once.
/// Without PIPELINING, DATA waits for the RCPT replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_data_keeps_per_recipient_results_with_one_refused() {
    for no_pipelining in [false, true] {
        let sink = Capture::start_with(Behaviour {
            refuse_rcpt: vec![("nobody@".into(), "550 5.1.1 no such user".into())],
            no_pipelining,
            ..Default::default()
        })
        .await;
        let f = start_filter(&config(None, None, sink.addr, "")).await;
        let mut c = Client::greeted(f.addr).await;
        let replies = c
            .transaction(
                true,
                "a@example.org",
                &["one@example.com", "nobody@example.com", "two@example.com"],
                &fixture("clean.eml"),
            )
            .await;
        let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
        assert_eq!(codes, vec![250, 550, 250], "{replies:?}");
        assert!(replies[1].text.contains("5.1.1"), "{replies:?}");
        let all = sink.all();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(
            all[0].rcpts,
            vec![
                "RCPT TO:<one@example.com>".to_string(),
                "RCPT TO:<two@example.com>".to_string()
            ]
        );
        assert_eq!(all[0].data_with_mail, !no_pipelining, "{:?}", all[0].mail);

        // SMTP takes one reply for all: the refused recipient withholds the message (the
        // pipelined DATA's 354 is undone by closing the connection), and the next message
        // still goes through.
        let r = send_one(
            f.addr,
            "a@example.org",
            &["one@example.com", "nobody@example.com"],
            b"Subject: x\r\n\r\ny\r\n",
        )
        .await;
        assert_eq!(r.code, 450, "{r:?}");
        assert_eq!(sink.count(), 1, "partial delivery would duplicate on retry");
        let r = send_one(
            f.addr,
            "a@example.org",
            &["one@example.com"],
            b"Subject: z\r\n\r\nz\r\n",
        )
        .await;
        assert_eq!(r.code, 250, "{r:?}");
        assert_eq!(sink.count(), 2);
        f.stop().await;
    }
}
