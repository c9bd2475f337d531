//! Bad input gets a precise reply, never a panic, a hang or a lost message: overlong lines,
//! NUL bytes, commands out of order, SMTP smuggling sequences, too many errors, oversized
//! messages, and clients outside allow_networks.

use crate::capture::Capture;
use crate::client::{send_one, Client};
use crate::util::{config, start_filter, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_out_of_order_get_503() {
    let sink = Capture::start().await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let mut c = Client::greeted(f.addr).await;
    assert!(c
        .expect("MAIL FROM:<a@b.c>", 503)
        .await
        .text
        .contains("5.5.1"));
    c.expect("EHLO t", 250).await;
    c.expect("RCPT TO:<a@b.c>", 503).await;
    c.expect("DATA", 503).await;
    c.expect("MAIL FROM:<a@b.c>", 250).await;
    c.expect("MAIL FROM:<a@b.c>", 503).await;
    c.expect("DATA", 503).await;
    c.expect("XFORWARD ADDR=1.2.3.4", 503).await;
    c.expect("RSET", 250).await;
    c.expect("XFORWARD ADDR=1.2.3.4", 250).await;
    c.expect("XFORWARD BOGUS=1", 501).await;
    c.expect("FROB", 500).await;
    c.expect("VRFY root", 502).await;
    c.expect("STARTTLS", 502).await;
    c.expect("NOOP", 250).await;
    c.expect("QUIT", 221).await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_line_and_nul_bytes_are_refused_and_session_continues() {
    let sink = Capture::start().await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let mut c = Client::greeted(f.addr).await;
    c.expect("EHLO t", 250).await;
    let long = format!("MAIL FROM:<{}@example.org>", "a".repeat(100_000));
    let r = c.cmd(&long).await;
    assert_eq!(r.code, 500, "{r:?}");
    assert!(r.text.contains("5.5.2 Line too long"), "{r:?}");
    c.send(b"MAIL FROM:<a\0b@example.org>\r\n").await;
    let r = c.reply().await;
    assert_eq!(r.code, 501, "{r:?}");
    c.expect("MAIL FROM:<ok@example.org>", 250).await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_errors_close_the_session() {
    let sink = Capture::start().await;
    let f = start_filter(
        &test_config(None, None, sink.addr, "")
            .set("server.max_errors", 3)
            .toml(),
    )
    .await;
    let mut c = Client::greeted(f.addr).await;
    c.expect("FOO", 500).await;
    c.expect("BAR", 500).await;
    c.expect("BAZ", 500).await;
    let r = c.reply().await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text.contains("4.7.0"), "{r:?}");
    assert_eq!(c.reply().await.code, 0, "connection not closed");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_sequences_stay_content_and_leave_no_bare_line_ends() {
    let sink = Capture::start().await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let mut c = Client::greeted(f.addr).await;
    c.expect("EHLO t", 250).await;
    c.expect("MAIL FROM:<a@example.org>", 250).await;
    c.expect("RCPT TO:<b@example.com>", 250).await;
    c.expect("DATA", 354).await;
    // Bare-LF and bare-CR "ends of data" followed by a smuggled second transaction.
    c.send(
        b"Subject: smuggle\r\n\r\nhello\n.\nMAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nsmuggled\r\n\
x\r.\rMAIL FROM:<evil2@example.net>\r\n\
y\n.\r\nQUIT\r\n\
.\r\n",
    )
    .await;
    let r = c.reply().await;
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221).await;
    assert_eq!(sink.count(), 1, "smuggled message delivered separately");
    let m = sink.last();
    assert_eq!(m.rcpts, vec!["RCPT TO:<b@example.com>".to_string()]);
    let d = &m.data;
    for (i, &b) in d.iter().enumerate() {
        if b == b'\n' {
            assert_eq!(d[i - 1], b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(d.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
    let text = m.text();
    assert!(
        text.contains("MAIL FROM:<evil@example.net>") && text.contains("smuggled"),
        "{text}"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_gets_552_and_session_continues() {
    let sink = Capture::start().await;
    let f = start_filter(
        &test_config(None, None, sink.addr, "")
            .set("server.max_message_size", 10000)
            .toml(),
    )
    .await;
    let mut c = Client::greeted(f.addr).await;
    c.expect("EHLO t", 250).await;
    assert!(c.cmd("EHLO t").await.text.contains("SIZE 10000"));
    c.expect("MAIL FROM:<a@example.org> SIZE=20000", 552).await;
    c.expect("MAIL FROM:<a@example.org>", 250).await;
    c.expect("RCPT TO:<b@example.com>", 250).await;
    c.expect("DATA", 354).await;
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'y', 50_000));
    c.body(&body).await;
    let r = c.reply().await;
    assert_eq!(r.code, 552, "{r:?}");
    assert!(r.text.contains("5.3.4"), "{r:?}");
    assert_eq!(sink.count(), 0);
    let r = c
        .transaction(
            false,
            "a@example.org",
            &["b@example.com"],
            b"Subject: small\r\n\r\nok\r\n",
        )
        .await;
    assert_eq!(r[0].code, 250);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_body_lines_and_nul_bytes_pass_unharmed() {
    let sink = Capture::start().await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let mut body = b"Subject: long lines\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'z', 200_000));
    body.extend_from_slice(b"\r\nnul\0byte\r\n");
    let r = send_one(f.addr, "a@example.org", &["b@example.com"], &body).await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(sink.last().data.ends_with(&body));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_outside_allow_networks_gets_554() {
    let sink = Capture::start().await;
    let f = start_filter(
        &test_config(None, None, sink.addr, "")
            .set("server.allow_networks", vec!["10.0.0.0/8"])
            .toml(),
    )
    .await;
    let mut c = Client::connect(f.addr).await;
    let r = c.reply().await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text.contains("5.7.1"), "{r:?}");
    assert_eq!(c.reply().await.code, 0);
    f.stop().await;
}
