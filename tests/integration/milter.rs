//! Before-queue mode through a real Postfix: its smtpd calls postsift as a milter
//! (`smtpd_milters`, `milter_protocol = 6`, no content_filter), the client talks to Postfix,
//! and what Postfix accepted goes straight to the capture sink. The real clamd and spamd.

use std::net::SocketAddr;
use std::time::Duration;

use crate::capture::Capture;
use crate::peers::{self, Postfix};
use crate::postfix::{send, settle, start_postfix};
use crate::util::{self, config, fixture, start_filter_on, Filter};

/// A Postfix whose smtpd uses a milter at `milter` and no content filter; its mail goes to
/// `sink`.
async fn postfix_with_milter(milter: SocketAddr, sink: SocketAddr) -> Postfix {
    // The content_filter target is never used: the setting is removed at once.
    let unused: SocketAddr = format!("127.0.0.1:{}", peers::free_port()).parse().unwrap();
    let pf = start_postfix(unused, sink).await;
    let setting = format!("smtpd_milters = inet:{milter}");
    pf.postconf(&[
        "content_filter =",
        &setting,
        "milter_protocol = 6",
        "milter_default_action = tempfail",
        "milter_command_timeout = 60s",
        "milter_content_timeout = 120s",
    ]);
    pf
}

/// postsift with `[milter] listen` on `milter`, once the milter port takes connections.
async fn start_milter(milter: SocketAddr, clamd: &str, spamd: Option<&str>, extra: &str) -> Filter {
    let toml = config(
        Some(clamd),
        spamd,
        "127.0.0.1:9".parse().unwrap(),
        &format!("[milter]\nlisten = [\"{milter}\"]\n{extra}"),
    );
    let f = start_filter_on("127.0.0.1:0".parse().unwrap(), &toml).await;
    let up = util::blocking(move || {
        peers::wait_until(Duration::from_secs(10), || peers::port_open(milter))
    })
    .await;
    assert!(up, "the milter listener never came up");
    f
}

/// A message with an executable attachment (banned by the default rules).
fn banned() -> Vec<u8> {
    b"From: a@example.org\r\nTo: bob@example.com\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n\
see attached\r\n--b1\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\neA==\r\n--b1--\r\n"
        .to_vec()
}

/// One message through Postfix as if from the Internet client 192.0.2.10 (Postfix's XCLIENT;
/// the test's own connection is loopback, for which SPF says nothing); every reply.
pub(crate) fn from_client(front: SocketAddr, from: &str, body: &[u8]) -> Vec<(u16, String)> {
    let mut c = peers::SmtpClient::connect(front).unwrap();
    let mut out = vec![c.read_reply().unwrap()];
    for cmd in [
        "EHLO client.example".to_string(),
        "XCLIENT ADDR=192.0.2.10 NAME=mx.client.example HELO=mx.client.example".into(),
        "EHLO mx.client.example".into(),
        format!("MAIL FROM:<{from}>"),
        "RCPT TO:<bob@example.com>".into(),
        "DATA".into(),
    ] {
        out.push(c.command(&cmd).unwrap());
    }
    c.send_data(body).unwrap();
    out.push(c.read_reply().unwrap());
    let _ = c.command("QUIT");
    out
}

/// The reply to the end of data.
fn data_reply(replies: &[(u16, String)]) -> &str {
    let i = replies
        .iter()
        .position(|r| r.0 == 354)
        .unwrap_or_else(|| panic!("DATA not accepted: {replies:?}"));
    &replies[i + 1].1
}

fn free_addr() -> SocketAddr {
    format!("127.0.0.1:{}", peers::free_port()).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milter_refuses_eicar_at_smtp_time_tags_gtube_and_strips_forged_headers() {
    let (clamd, spamd) = util::blocking(|| (util::clamd(), util::spamd())).await;
    let sink = Capture::start().await;
    let milter = free_addr();
    let pf = postfix_with_milter(milter, sink.addr).await;
    let f = start_milter(
        milter,
        &clamd,
        Some(&spamd),
        "[virus]\naction = \"reject\"\n[banned]\naction = \"reject\"\n",
    )
    .await;
    let front = pf.smtp_addr();

    // EICAR: refused while the client is connected, with SMTP mode's text; nothing queued.
    let (replies, code) = send(front, &["bob@example.com"], fixture("eicar-zip.eml")).await;
    assert_eq!(code, 554, "{replies:?}");
    let last = data_reply(&replies);
    assert!(
        last.contains("5.7.0 Reject, id=") && last.contains("INFECTED: "),
        "{replies:?}"
    );
    assert_eq!(pf.queue_count(), 0, "the refused message was queued");

    // A banned attachment: refused the same way.
    let (replies, code) = send(front, &["bob@example.com"], banned()).await;
    assert_eq!(code, 554, "{replies:?}");
    assert!(data_reply(&replies).contains("BANNED: "), "{replies:?}");
    assert_eq!(pf.queue_count(), 0, "the refused message was queued");

    // GTUBE with an 8-bit (raw UTF-8) subject: accepted and tagged, as the after-queue hop
    // tags it, the subject's bytes kept.
    let gtube = String::from_utf8(fixture("gtube.eml"))
        .unwrap()
        .replace("Subject: Cheap watches", "Subject: Cheap watches Grüße");
    let (replies, code) = send(front, &["bob@example.com"], gtube.into_bytes()).await;
    assert_eq!(code, 250, "{replies:?}");

    // A clean message carrying forged postsift headers, one folded, in odd case.
    let forged = b"X-Spam-Flag: YES\r\nFrom: alice@example.org\r\nx-spam-score:\r\n 1000\r\nTo: bob@example.com\r\nSubject: lunch\r\nX-SPAM-STATUS: Yes, forged\r\n\r\nLunch at noon?\r\n".to_vec();
    let (replies, code) = send(front, &["bob@example.com"], forged).await;
    assert_eq!(code, 250, "{replies:?}");

    sink.wait_for(2).await;
    settle(&pf, f).await;
    let arrived = sink.all();
    assert_eq!(
        arrived.len(),
        2,
        "EICAR arrived or something was duplicated"
    );

    let spam = arrived
        .iter()
        .find(|t| t.text().contains("GTUBE"))
        .expect("GTUBE mail");
    let h = spam.headers();
    assert!(
        h.contains("X-Spam-Flag: YES") && h.contains("Subject: ***Spam*** Cheap watches Grüße\r\n"),
        "{h}"
    );
    assert!(h.contains("X-Virus-Scanned: postsift at test.local"), "{h}");
    // Postfix writes its own Received line; postsift adds none of its own.
    assert!(!h.contains("(postsift, port"), "{h}");

    let clean = arrived
        .iter()
        .find(|t| t.text().contains("Lunch at noon"))
        .expect("clean mail");
    let h = clean.headers();
    assert_eq!(h.matches("X-Spam-Flag: NO").count(), 1, "{h}");
    let lower = h.to_ascii_lowercase();
    assert_eq!(lower.matches("x-spam-flag:").count(), 1, "{h}");
    assert!(!lower.contains("1000"), "a forged score survived: {h}");
    assert!(!lower.contains("forged"), "a forged status survived: {h}");
    assert!(h.contains("Subject: lunch"), "{h}");
    assert!(clean.data.ends_with(b"Lunch at noon?\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milter_with_clamd_down_answers_451_and_with_postsift_stopped_postfix_tempfails() {
    let sink = Capture::start().await;
    let milter = free_addr();
    let pf = postfix_with_milter(milter, sink.addr).await;
    let f = start_milter(milter, "/nonexistent/clamd.ctl", None, "").await;
    let front = pf.smtp_addr();

    let (replies, code) = send(front, &["bob@example.com"], fixture("clean.eml")).await;
    assert_eq!(code, 451, "{replies:?}");
    assert!(
        data_reply(&replies).contains("virus_scan FAILED"),
        "{replies:?}"
    );
    assert_eq!(pf.queue_count(), 0);

    // postsift gone: Postfix's milter_default_action (tempfail) decides; nothing is accepted.
    f.stop().await;
    let (replies, _) = send(front, &["bob@example.com"], fixture("clean.eml")).await;
    assert!(
        replies.iter().any(|r| r.0 == 451) && !replies.iter().any(|r| r.0 == 354),
        "{replies:?}"
    );
    assert_eq!(pf.queue_count(), 0);
    assert!(sink.all().is_empty());
}

/// Three recipients in three banks, one reply: bob's (default) copy is tagged as spam,
/// carol's bank quarantines spam (her recipient is deleted and the message stored in postsift's
/// quarantine), dave's bank bypasses the spam check. The header edits are per message: those of
/// the first delivered group (bob's) go to dave too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milter_three_recipients_in_three_banks_delete_the_quarantined_one() {
    let (clamd, spamd) = util::blocking(|| (util::clamd(), util::spamd())).await;
    let tmp = peers::private_dir("milter-banks-");
    let dir = tmp.path().join("q");
    let sink = Capture::start().await;
    let milter = free_addr();
    let pf = postfix_with_milter(milter, sink.addr).await;
    let extra = format!(
        "[quarantine]\ndir = \"{}\"\n{}",
        dir.display(),
        crate::banks::THREE_BANKS
    );
    let f = start_milter(milter, &clamd, Some(&spamd), &extra).await;
    let (replies, code) = send(pf.smtp_addr(), &crate::banks::THREE, fixture("gtube.eml")).await;
    assert_eq!(code, 250, "{replies:?}");
    let all = sink.wait_for(1).await;
    settle(&pf, f).await;
    assert_eq!(all.len(), 1, "{all:?}");
    let rcpts = &all[0].rcpts;
    assert_eq!(rcpts.len(), 2, "{rcpts:?}");
    assert!(
        rcpts.iter().any(|r| r.contains("<bob@example.com>")),
        "{rcpts:?}"
    );
    assert!(
        rcpts.iter().any(|r| r.contains("<dave@partner.example>")),
        "{rcpts:?}"
    );
    let h = all[0].headers();
    assert!(
        h.contains("X-Spam-Flag: YES") && h.contains("Subject: ***Spam*** Cheap watches"),
        "{h}"
    );
    crate::banks::check_three_in_the_quarantine(&dir);
    peers::finish_dir(Some(tmp));
}

/// Mail authentication with the real client address (Postfix's, from the milter's connect
/// event; no XFORWARD): the verdict goes on top as `Authentication-Results`, a forged one with
/// our authserv-id goes, another server's stays; a DMARC p=reject with `enforce` is refused
/// with SMTP mode's 550 while the client is connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milter_authentication_results_on_top_and_dmarc_reject_refused() {
    let t = |name: &str, data: &str| format!("{name}. 3600 IN TXT \"{data}\"");
    let records = [
        t("milter-pass.test", "v=spf1 ip4:192.0.2.10 -all"),
        t("_dmarc.milter-pass.test", "v=DMARC1; p=reject"),
        t("milter-reject.test", "v=spf1 -all"),
        t("_dmarc.milter-reject.test", "v=DMARC1; p=reject"),
    ];
    let dns = util::blocking(move || crate::peers::unbound::Unbound::start(&records, None)).await;
    let clamd = util::blocking(util::clamd).await;
    let sink = Capture::start().await;
    let milter = free_addr();
    let pf = postfix_with_milter(milter, sink.addr).await;
    let extra = format!(
        "[auth]\nauthserv_id = \"mx.test.local\"\ndmarc_policy = \"enforce\"\n\
         [dns]\nservers = [\"{}\"]\ntimeout = 1\nattempts = 1\n",
        dns.addr
    );
    let f = start_milter(milter, &clamd, None, &extra).await;
    let front = pf.smtp_addr();
    pf.postconf(&[
        "smtpd_authorized_xclient_hosts = 127.0.0.0/8",
        "mynetworks = 127.0.0.0/8 192.0.2.0/24",
    ]);
    let send_from =
        |from: &'static str, body: Vec<u8>| util::blocking(move || from_client(front, from, &body));

    let rejected =
        b"From: a@milter-reject.test\r\nTo: bob@example.com\r\nSubject: pay\r\n\r\npay now\r\n";
    let replies = send_from("a@milter-reject.test", rejected.to_vec()).await;
    let r = data_reply(&replies);
    assert!(
        r.starts_with("550 5.7.1 Rejected by DMARC policy for milter-reject.test"),
        "{replies:?}"
    );
    assert_eq!(pf.queue_count(), 0);

    let clean = b"Authentication-Results: mx.test.local; spf=pass smtp.mailfrom=forged\r\n\
From: a@milter-pass.test\r\nTo: bob@example.com\r\nSubject: hello\r\n\
Authentication-Results: other.example; spf=fail\r\n\r\nhello\r\n";
    let replies = send_from("a@milter-pass.test", clean.to_vec()).await;
    assert!(data_reply(&replies).starts_with("250 "), "{replies:?}");
    let all = sink.wait_for(1).await;
    settle(&pf, f).await;
    let h = all[0].headers();
    // At the very top, above Postfix's own Received line, as the after-queue hop writes it.
    assert!(
        h.starts_with("Authentication-Results: mx.test.local;"),
        "{h}"
    );
    let ours = h
        .find("Authentication-Results: mx.test.local;")
        .expect("no Authentication-Results");
    assert!(
        ours < h.find("From: a@milter-pass.test").unwrap(),
        "not on top: {h}"
    );
    assert!(
        h[ours..].contains("spf=pass smtp.mailfrom=a@milter-pass.test"),
        "{h}"
    );
    assert!(h.contains("dmarc=pass"), "{h}");
    assert!(
        !h.contains("forged"),
        "a forged Authentication-Results survived: {h}"
    );
    assert!(
        h.contains("Authentication-Results: other.example; spf=fail"),
        "{h}"
    );
    assert_eq!(
        h.matches("Authentication-Results: mx.test.local").count(),
        1,
        "{h}"
    );
}

/// A 20 MB message (spooled to a file as it arrives in body chunks, walked and scanned whole)
/// and an SMTPUTF8 message: both accepted, their bodies unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milter_twenty_megabytes_and_smtputf8_pass_whole() {
    let clamd = util::blocking(util::clamd).await;
    let sink = Capture::start().await;
    let milter = free_addr();
    let pf = postfix_with_milter(milter, sink.addr).await;
    let toml = util::patient(util::test_config(
        Some(&clamd),
        None,
        "127.0.0.1:9".parse().unwrap(),
        &format!(
            "[milter]\nlisten = [\"{milter}\"]\n\
             [parts]\nmax_message_size = 52428800\nmax_decoded_bytes = 67108864\nmax_walk_time = 600\n"
        ),
    ))
    .toml();
    let f = start_filter_on("127.0.0.1:0".parse().unwrap(), &toml).await;
    assert!(
        util::blocking(
            move || peers::wait_until(Duration::from_secs(10), || peers::port_open(milter))
        )
        .await
    );
    let front = pf.smtp_addr();

    let mut big = b"From: big@example.org\r\nTo: bob@example.com\r\nSubject: big\r\n\r\n".to_vec();
    let line =
        b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n";
    while big.len() < 20 * 1000 * 1000 {
        big.extend_from_slice(line);
    }
    let (replies, code) = send(front, &["bob@example.com"], big.clone()).await;
    assert_eq!(code, 250, "{replies:?}");

    let utf8 = fixture("smtputf8.eml");
    let replies = util::blocking({
        let utf8 = utf8.clone();
        move || {
            let mut c = peers::SmtpClient::connect(front).unwrap();
            let mut out = vec![c.read_reply().unwrap()];
            for cmd in [
                "EHLO client.example",
                "MAIL FROM:<üser@bücher.example> SMTPUTF8",
                "RCPT TO:<böb@example.com>",
                "DATA",
            ] {
                out.push(c.command(cmd).unwrap());
            }
            c.send_data(&utf8).unwrap();
            out.push(c.read_reply().unwrap());
            let _ = c.command("QUIT");
            out
        }
    })
    .await;
    assert!(data_reply(&replies).starts_with("250 "), "{replies:?}");

    let all = sink.wait_for(2).await;
    settle(&pf, f).await;
    let m = all
        .iter()
        .find(|t| t.text().contains("Subject: big"))
        .expect("the big one");
    assert!(
        m.data.ends_with(&big[big.len() - 1000..]),
        "{}",
        m.headers()
    );
    assert!(m.data.len() >= big.len(), "{}", m.data.len());
    // Checked by postsift on the way (clamd scanned it), not passed by default.
    assert!(
        m.headers().contains("X-Virus-Scanned: postsift"),
        "{}",
        m.headers()
    );
    let u = all
        .iter()
        .find(|t| t.text().contains("SMTPUTF8 ✓"))
        .expect("the UTF-8 one");
    let body = |d: &[u8]| {
        d.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| d[p..].to_vec())
    };
    assert_eq!(body(&u.data), body(&utf8), "{}", u.headers());
}

/// Whether Postfix's hold queue has a message (`postqueue -j`).
fn held(pf: &Postfix) -> bool {
    let out = std::process::Command::new("postqueue")
        .arg("-c")
        .arg(pf.etc())
        .arg("-j")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|m| m["queue_name"].as_str() == Some("hold"))
    })
}

/// A quarantined message: stored in postsift's quarantine and discarded (the client sees 250,
/// nothing is delivered); with `milter.hold`, put in Postfix's hold queue instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milter_quarantine_stores_then_discards_and_hold_uses_postfixs_hold_queue() {
    let clamd = util::blocking(util::clamd).await;
    let tmp = peers::private_dir("milter-q-");
    let dir = tmp.path().join("q");
    let sink = Capture::start().await;
    let milter = free_addr();
    let pf = postfix_with_milter(milter, sink.addr).await;
    let front = pf.smtp_addr();
    let q = format!(
        "[virus]\naction = \"quarantine\"\n[quarantine]\ndir = \"{}\"\n",
        dir.display()
    );

    let f = start_milter(milter, &clamd, None, &q).await;
    let (replies, code) = send(front, &["bob@example.com"], fixture("eicar-zip.eml")).await;
    assert_eq!(code, 250, "{replies:?}");
    f.stop().await;
    let list = postsift::quarantine::Quarantine::open(&dir)
        .unwrap()
        .list(&Default::default())
        .unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].recipients[0].address, "bob@example.com");
    assert_eq!(pf.queue_count(), 0, "a discarded message stayed queued");
    assert!(!held(&pf));

    let f = start_milter(milter, &clamd, None, &format!("hold = true\n{q}")).await;
    let (replies, code) = send(front, &["bob@example.com"], fixture("eicar-zip.eml")).await;
    assert_eq!(code, 250, "{replies:?}");
    f.stop().await;
    assert!(held(&pf), "not in Postfix's hold queue:\n{}", pf.log());
    assert!(sink.all().is_empty(), "an infected message was delivered");
    peers::finish_dir(Some(tmp));
}

/// Hybrid mode: one postsift with both front ends. Postfix's smtpd calls its milter, and its
/// content_filter hands the queued message to postsift's LMTP listener (the test Postfix's
/// `postsift-lmtp` transport, with XFORWARD), which reinjects into Postfix's 10025 (no milters);
/// returns Postfix, postsift and postsift's metrics address.
pub(crate) async fn hybrid(
    sink: SocketAddr,
    clamd: &str,
    spamd: Option<&str>,
    extra: &str,
) -> (Postfix, Filter, SocketAddr) {
    let milter = free_addr();
    let filter = free_addr();
    let pf = start_postfix(filter, sink).await;
    let setting = format!("smtpd_milters = inet:{milter}");
    pf.postconf(&[
        &setting,
        "milter_protocol = 6",
        "milter_default_action = tempfail",
        "milter_command_timeout = 60s",
        "milter_content_timeout = 120s",
        // `from_client`'s XCLIENT, and its client 192.0.2.10 allowed to relay.
        "smtpd_authorized_xclient_hosts = 127.0.0.0/8",
        "mynetworks = 127.0.0.0/8 192.0.2.0/24",
    ]);
    let port = peers::free_port();
    let toml = util::test_config(
        Some(clamd),
        spamd,
        pf.reinject_addr(),
        &format!("[milter]\nlisten = [\"{milter}\"]\n{extra}"),
    )
    .set("metrics.listen", format!("127.0.0.1:{port}"))
    .toml();
    let f = start_filter_on(filter, &toml).await;
    let up = util::blocking(move || {
        peers::wait_until(Duration::from_secs(10), || peers::port_open(milter))
    })
    .await;
    assert!(up, "the milter listener never came up");
    (pf, f, peers::localhost(port))
}

/// The value of the metrics sample `series` (its name and labels exactly as encoded), once it
/// reaches `want` (the after-queue hop counts its message after the reinjection, so the
/// sink can have it first), or its last value after 30 s.
pub(crate) async fn sample_reaching(metrics: SocketAddr, series: &str, want: f64) -> f64 {
    let mut last = 0.0;
    for _ in 0..150 {
        let (_, text) = util::http_get(metrics, "/metrics").await;
        last = text
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0);
        if last == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last
}

/// The `frontend` label on the message counters: a message through a hybrid setup is counted
/// once by each front end, under its own label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milter_and_content_filter_count_messages_under_their_own_frontend_label() {
    let clamd = util::blocking(util::clamd).await;
    let sink = Capture::start().await;
    let (pf, f, metrics) = hybrid(sink.addr, &clamd, None, "").await;
    let (replies, code) = send(pf.smtp_addr(), &["bob@example.com"], fixture("clean.eml")).await;
    assert_eq!(code, 250, "{replies:?}");
    sink.wait_for(1).await;
    for frontend in ["milter", "content_filter"] {
        let messages = format!(
            "postsift_messages_total{{action=\"pass\",frontend=\"{frontend}\",verdict=\"clean\"}}"
        );
        assert_eq!(
            sample_reaching(metrics, &messages, 1.0).await,
            1.0,
            "{messages}"
        );
        let rcpts =
            format!("postsift_recipients_total{{frontend=\"{frontend}\",result=\"delivered\"}}");
        assert_eq!(sample_reaching(metrics, &rcpts, 1.0).await, 1.0, "{rcpts}");
    }
    settle(&pf, f).await;
    assert_eq!(sink.all().len(), 1);
}

/// The sum of every sample of `name` whose labels include `label` (e.g. `scanner="clamd"`).
async fn total(metrics: SocketAddr, name: &str, label: &str) -> f64 {
    let (_, text) = util::http_get(metrics, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Hybrid mode: the after-queue hop takes the milter's scan by Postfix's queue id, so a message
/// through both front ends costs clamd what one message sent straight to the hop costs; a
/// message the hop gets with no kept scan (no queue id) is scanned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_message_is_scanned_once_by_the_milter_and_the_hop_reuses_it() {
    let clamd = util::blocking(util::clamd).await;
    let sink = Capture::start().await;
    // The verdict cache off: every scan the hop made would reach clamd.
    let (pf, f, metrics) = hybrid(sink.addr, &clamd, None, "[cache]\nmax_bytes = 0\n").await;
    let (replies, code) = send(pf.smtp_addr(), &["bob@example.com"], fixture("clean.eml")).await;
    assert_eq!(code, 250, "{replies:?}");
    sink.wait_for(1).await;
    let hop =
        "postsift_messages_total{action=\"pass\",frontend=\"content_filter\",verdict=\"clean\"}";
    assert_eq!(sample_reaching(metrics, hop, 1.0).await, 1.0);
    assert_eq!(
        sample_reaching(metrics, "postsift_milter_reused_total", 1.0).await,
        1.0
    );
    let clamd_count = "postsift_scanner_duration_seconds_count";
    let once = total(metrics, clamd_count, "scanner=\"clamd\"").await;
    assert!(once >= 1.0, "clamd never asked");

    // The same message straight to the hop, without XFORWARD IDENT: nothing kept, scanned.
    let r = crate::client::send_one(
        f.addr,
        "sender@example.org",
        &["bob@example.com"],
        &fixture("clean.eml"),
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    let twice = total(metrics, clamd_count, "scanner=\"clamd\"").await;
    assert_eq!(twice, 2.0 * once, "the hybrid message was scanned twice");
    assert_eq!(
        total(
            metrics,
            "postsift_milter_reuse_missed_total",
            "reason=\"none\""
        )
        .await,
        1.0
    );
    assert_eq!(
        total(
            metrics,
            "postsift_milter_reuse_missed_total",
            "reason=\"body\""
        )
        .await,
        0.0
    );
    let all = sink.wait_for(2).await;
    settle(&pf, f).await;
    // The hop wrote the milter's verdict headers anew from the same report: one of each.
    let h = all[0].headers();
    assert_eq!(h.matches("X-Spam-Flag:").count(), 0, "{h}");
    assert_eq!(h.matches("X-Virus-Scanned:").count(), 1, "{h}");
}

/// `name:` fields (any case) in header section `h`.
fn count_fields(h: &str, name: &str) -> usize {
    let want = format!("{}:", name.to_ascii_lowercase());
    h.split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with(&want))
        .count()
}

/// Hybrid mode with clamd and spamd: the milter edits the header section, then the hop edits
/// it again from the same report. GTUBE and a clean message end with one set of postsift's
/// fields each (X-Spam-*, X-Virus-Scanned, postsift's Authentication-Results) and GTUBE with
/// one subject tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_headers_are_written_once_and_the_subject_tagged_once() {
    let (clamd, spamd) = util::blocking(|| (util::clamd(), util::spamd())).await;
    let sink = Capture::start().await;
    let (pf, f, metrics) = hybrid(sink.addr, &clamd, Some(&spamd), "").await;
    let front = pf.smtp_addr();
    let clean =
        b"From: ann@example.org\r\nTo: bob@example.com\r\nSubject: lunch\r\n\r\nLunch at noon?\r\n";
    for body in [fixture("gtube.eml"), clean.to_vec()] {
        let replies = util::blocking(move || from_client(front, "ann@example.org", &body)).await;
        assert!(data_reply(&replies).contains(" 2.0.0 Ok"), "{replies:?}");
    }
    let all = sink.wait_for(2).await;
    // Both went through the hop, which took the milter's scans.
    assert_eq!(
        sample_reaching(metrics, "postsift_milter_reused_total", 2.0).await,
        2.0
    );
    settle(&pf, f).await;
    let spam = all
        .iter()
        .find(|t| t.text().contains("GTUBE"))
        .expect("GTUBE mail");
    let h = spam.headers();
    assert!(h.contains("X-Spam-Flag: YES\r\n"), "{h}");
    assert_eq!(h.matches("***Spam***").count(), 1, "{h}");
    assert!(h.contains("Subject: ***Spam*** "), "{h}");
    let clean = all
        .iter()
        .find(|t| t.text().contains("Lunch at noon"))
        .expect("clean mail");
    let hc = clean.headers();
    assert!(hc.contains("X-Spam-Flag: NO\r\n"), "{hc}");
    assert!(hc.contains("Subject: lunch\r\n"), "{hc}");
    for h in [&h, &hc] {
        for name in [
            "X-Spam-Flag",
            "X-Spam-Score",
            "X-Spam-Level",
            "X-Spam-Status",
            "X-Virus-Scanned",
            "Subject",
        ] {
            assert_eq!(count_fields(h, name), 1, "{name} in {h}");
        }
        assert_eq!(
            h.matches("Authentication-Results: filter.test.local")
                .count(),
            1,
            "{h}"
        );
        // The hop's Received line: one.
        assert_eq!(h.matches("(postsift, port").count(), 1, "{h}");
    }
}

/// Postfix calling the milter over a Unix socket (`smtpd_milters = unix:/path`): a banned
/// attachment whose name has a `%` is refused with the name as it is. Postfix reads a milter's
/// reply text as Sendmail's format string (`%%` is `%`, a single `%` is dropped): postsift
/// doubles each `%`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milter_over_a_unix_socket_refuses_a_banned_name_with_a_percent_sign_intact() {
    let clamd = util::blocking(util::clamd).await;
    let tmp = peers::private_dir("milter-unix-");
    let socket = tmp.path().join("milter.sock");
    let sink = Capture::start().await;
    let unused = free_addr();
    let pf = start_postfix(unused, sink.addr).await;
    let setting = format!("smtpd_milters = unix:{}", socket.display());
    pf.postconf(&[
        "content_filter =",
        &setting,
        "milter_protocol = 6",
        "milter_default_action = tempfail",
    ]);
    let toml = config(
        Some(&clamd),
        None,
        "127.0.0.1:9".parse().unwrap(),
        &format!(
            "[milter]\nlisten = [\"unix:{}\"]\n[banned]\naction = \"reject\"\n",
            socket.display()
        ),
    );
    let f = start_filter_on("127.0.0.1:0".parse().unwrap(), &toml).await;
    let s = socket.clone();
    let up =
        util::blocking(move || peers::wait_until(Duration::from_secs(10), || s.exists())).await;
    assert!(up, "the milter socket never appeared");

    let body = String::from_utf8(banned())
        .unwrap()
        .replace("setup.exe", "100%free.exe")
        .into_bytes();
    let (replies, code) = send(pf.smtp_addr(), &["bob@example.com"], body).await;
    assert_eq!(code, 554, "{replies:?}");
    let r = data_reply(&replies);
    assert!(
        r.contains("BANNED: ") && r.contains("100%free.exe") && !r.contains("%%"),
        "{replies:?}"
    );
    // A clean message passes through the same socket.
    let (replies, code) = send(pf.smtp_addr(), &["bob@example.com"], fixture("clean.eml")).await;
    assert_eq!(code, 250, "{replies:?}");
    sink.wait_for(1).await;
    settle(&pf, f).await;
    assert_eq!(pf.queue_count(), 0);
    peers::finish_dir(Some(tmp));
}
