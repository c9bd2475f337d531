//! The normal paths against real clamd and spamd: clean mail gets amavis-style headers and
//! arrives byte for byte; EICAR never arrives; GTUBE arrives flagged; 8-bit, SMTPUTF8, DSN
//! parameters, XFORWARD, LMTP with several recipients, pipelining and a 50 MB message; archives
//! (EICAR in a .tar.gz, tar members and the banned-file rules).

use crate::capture::{Behaviour, Capture};
use crate::client::{send_one, Client};
use crate::util::{self, config, fixture, start_filter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_message_arrives_with_amavis_headers_and_unchanged_body() {
    let (clamd, spamd) = util::blocking(|| (util::clamd(), util::spamd())).await;
    let sink = Capture::start().await;
    let f = start_filter(&config(Some(&clamd), Some(&spamd), sink.addr, "")).await;
    let original = fixture("clean.eml");

    let mut c = Client::greeted(f.addr).await;
    c.expect("EHLO postfix.test.local", 250).await;
    c.expect(
        "XFORWARD NAME=mail.example.org ADDR=192.0.2.7 PORT=40000 HELO=mail.example.org",
        250,
    )
    .await;
    c.expect("XFORWARD PROTO=ESMTP SOURCE=REMOTE IDENT=4AbCdE", 250)
        .await;
    c.expect("MAIL FROM:<alice@example.org> SIZE=305", 250)
        .await;
    c.expect("RCPT TO:<bob@example.com>", 250).await;
    c.expect("DATA", 354).await;
    c.body(&original).await;
    let r = c.reply().await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(
        r.text.starts_with("250 2.0.0 from MTA(smtp:[127.0.0.1]:"),
        "{r:?}"
    );
    assert!(r.text.contains("queued as CAP1"), "{r:?}");

    let m = sink.last();
    let text = m.text();
    // Authentication-Results first (mail authentication is on by default), then amavis's
    // headers in amavis's order.
    assert!(
        text.starts_with("Authentication-Results: filter.test.local;"),
        "{text}"
    );
    assert!(
        text.contains(
            "\r\nX-Virus-Scanned: postsift at test.local\r\nX-Spam-Flag: NO\r\nX-Spam-Score: "
        ),
        "{text}"
    );
    assert!(
        m.headers().contains("\r\nX-Spam-Status: No, score="),
        "{text}"
    );
    assert!(
        m.headers()
            .contains("tagged_above=-999 required=6.31\r\n tests=["),
        "{text}"
    );
    assert!(m.headers().contains("\r\nReceived: from postfix.test.local ([127.0.0.1])\r\n by localhost (filter.test.local [127.0.0.1]) (postsift, port "), "{text}");
    // Everything after our block is the original, byte for byte.
    assert!(m.data.ends_with(&original), "{text}");
    // XFORWARD carried on, MAIL keeps SIZE (of the rewritten message).
    assert!(
        m.xforward.iter().any(|l| l.contains("ADDR=192.0.2.7")),
        "{:?}",
        m.xforward
    );
    assert!(
        m.xforward.iter().any(|l| l.contains("IDENT=4AbCdE")),
        "{:?}",
        m.xforward
    );
    assert_eq!(
        m.mail,
        format!("MAIL FROM:<alice@example.org> SIZE={}", m.data.len())
    );
    f.stop().await;
}

async fn eicar_case(file: &str) {
    let clamd = util::blocking(util::clamd).await;
    let sink = Capture::start().await;
    let f = start_filter(&config(Some(&clamd), None, sink.addr, "")).await;
    let r = send_one(f.addr, "a@example.org", &["b@example.com"], &fixture(file)).await;
    assert_eq!(r.code, 250, "{file}: {r:?}");
    assert!(r.text.contains("2.7.0 Ok, discarded, id="), "{file}: {r:?}");
    assert!(
        r.text.contains("- INFECTED: Postsift.Test.EICAR"),
        "{file}: {r:?}"
    );
    assert_eq!(sink.count(), 0, "{file} reached the sink");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eicar_plain_is_discarded() {
    eicar_case("eicar-plain.eml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eicar_base64_attachment_is_discarded() {
    eicar_case("eicar-base64.eml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eicar_inside_zip_is_discarded() {
    eicar_case("eicar-zip.eml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virus_reject_policy_answers_554() {
    let clamd = util::blocking(util::clamd).await;
    let sink = Capture::start().await;
    let f = start_filter(&config(
        Some(&clamd),
        None,
        sink.addr,
        "[virus]\naction = \"reject\"\n",
    ))
    .await;
    let r = util::send_fixture(f.addr, "eicar-plain.eml").await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text.contains("5.7.0 Reject, id="), "{r:?}");
    assert!(r.text.contains("INFECTED: Postsift.Test.EICAR"), "{r:?}");
    assert_eq!(sink.count(), 0);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtube_arrives_flagged_with_subject_tag() {
    let (clamd, spamd) = util::blocking(|| (util::clamd(), util::spamd())).await;
    let sink = Capture::start().await;
    let f = start_filter(&config(Some(&clamd), Some(&spamd), sink.addr, "")).await;
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
    assert!(
        h.contains(&format!("\r\nX-Spam-Level: {}\r\n", "*".repeat(64))),
        "{h}"
    );
    assert!(h.contains("\r\nX-Spam-Status: Yes, score=1"), "{h}");
    assert!(h.contains("GTUBE=1000"), "{h}");
    assert!(
        h.contains("\r\nSubject: ***Spam*** Cheap watches\r\n"),
        "{h}"
    );
    f.stop().await;
}

/// GTUBE from spammer@example.net through `f` (the spam engine's verdict, `action = "reject"`)
/// is refused with 554 and nothing reaches the sink; stops `f`. Shared with rspamd.rs.
pub async fn gtube_is_rejected_with_554(f: util::Filter, sink: &Capture) {
    let r = send_one(
        f.addr,
        "spammer@example.net",
        &["bob@example.com"],
        &fixture("gtube.eml"),
    )
    .await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(
        r.text.contains("5.7.0 Reject, id=") && r.text.contains("- spam"),
        "{r:?}"
    );
    assert_eq!(sink.count(), 0);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spam_reject_policy_answers_554() {
    let spamd = util::blocking(util::spamd).await;
    let sink = Capture::start().await;
    let f = start_filter(&config(
        None,
        Some(&spamd),
        sink.addr,
        "[spam]\naction = \"reject\"\n",
    ))
    .await;
    gtube_is_rejected_with_554(f, &sink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_and_smtputf8_keep_their_parameters_and_bytes() {
    let sink = Capture::start().await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    // A non-ASCII address needs SMTPUTF8 (without it: 553 5.6.7, see regression.rs).
    for (file, from, rcpt, params) in [
        (
            "8bit.eml",
            "joerg@example.de",
            "bob@example.com",
            " BODY=8BITMIME",
        ),
        (
            "smtputf8.eml",
            "üser@bücher.example",
            "böb@example.com",
            " SMTPUTF8",
        ),
    ] {
        let original = fixture(file);
        let mut c = Client::greeted(f.addr).await;
        c.expect("EHLO t", 250).await;
        c.expect(&format!("MAIL FROM:<{from}>{params}"), 250).await;
        c.expect(&format!("RCPT TO:<{rcpt}>"), 250).await;
        c.expect("DATA", 354).await;
        c.body(&original).await;
        assert_eq!(c.reply().await.code, 250);
        let m = sink.last();
        assert!(
            m.mail.starts_with(&format!("MAIL FROM:<{from}>")),
            "{}",
            m.mail
        );
        assert!(m.mail.contains(params.trim()), "{}", m.mail);
        assert!(m.data.ends_with(&original), "{file}");
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_parameters_reach_the_next_hop() {
    let sink = Capture::start().await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let mut c = Client::greeted(f.addr).await;
    c.expect("EHLO t", 250).await;
    c.expect("MAIL FROM:<a@example.org> RET=HDRS ENVID=QQ+2B1", 250)
        .await;
    c.expect(
        "RCPT TO:<b@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;B@example.com",
        250,
    )
    .await;
    c.expect("RCPT TO:<c@example.com> NOTIFY=NEVER", 250).await;
    c.expect("DATA", 354).await;
    c.body(b"Subject: dsn\r\n\r\nx\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    let m = sink.last();
    assert!(
        m.mail.contains(" RET=HDRS") && m.mail.contains(" ENVID=QQ+2B1"),
        "{}",
        m.mail
    );
    assert_eq!(
        m.rcpts,
        vec![
            "RCPT TO:<b@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;B@example.com".to_string(),
            "RCPT TO:<c@example.com> NOTIFY=NEVER".to_string()
        ]
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmtp_answers_once_per_recipient() {
    let sink = Capture::start_with(Behaviour {
        refuse_rcpt: vec![(
            "nobody@".into(),
            "550 5.1.1 <nobody@example.com>: Recipient address rejected".into(),
        )],
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
    let m = sink.last();
    assert_eq!(m.rcpts.len(), 2);
    assert!(m.headers().contains("with LMTP id "), "{}", m.headers());
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_mixed_recipient_results_defer_everything() {
    let sink = Capture::start_with(Behaviour {
        refuse_rcpt: vec![("nobody@".into(), "550 5.1.1 no such user".into())],
        ..Default::default()
    })
    .await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let mut c = Client::greeted(f.addr).await;
    let r = c
        .transaction(
            false,
            "a@example.org",
            &["one@example.com", "nobody@example.com"],
            b"Subject: x\r\n\r\ny\r\n",
        )
        .await;
    assert_eq!(r[0].code, 450, "{r:?}");
    assert_eq!(sink.count(), 0, "partial delivery would duplicate on retry");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_get_replies_in_order() {
    let sink = Capture::start().await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let mut c = Client::greeted(f.addr).await;
    c.expect("EHLO t", 250).await;
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
        .await;
    for want in [250, 250, 250, 354] {
        assert_eq!(c.reply().await.code, want);
    }
    c.send(b"Subject: p\r\n\r\nhello\r\n.\r\nMAIL FROM:<d@example.org>\r\nRCPT TO:<e@example.com>\r\nDATA\r\n")
        .await;
    for want in [250, 250, 250, 354] {
        assert_eq!(c.reply().await.code, want);
    }
    c.send(b"Subject: q\r\n\r\nworld\r\n.\r\nQUIT\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.reply().await.code, 221);
    let all = sink.wait_for(2).await;
    assert!(all[0].data.ends_with(b"Subject: p\r\n\r\nhello\r\n"));
    assert!(all[1].data.ends_with(b"Subject: q\r\n\r\nworld\r\n"));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabyte_message_passes_scanned_and_whole() {
    let (clamd, spamd) = util::blocking(|| (util::clamd(), util::spamd())).await;
    let sink = Capture::start().await;
    // clamd scans 50 MB and the capture sink (debug build) reads it line by line: give both
    // time on a busy box.
    // Walked whole too (the defaults walk 16 MiB and decode 32 MiB, and call a larger message
    // UNCHECKED), with
    // time for a debug build's walk of 50 MB on a busy box.
    let f = start_filter(
        &util::patient(util::test_config(
            Some(&clamd),
            Some(&spamd),
            sink.addr,
            "[parts]\nmax_message_size = 52428800\nmax_decoded_bytes = 67108864\nmax_walk_time = 600\n",
        ))
        .toml(),
    )
    .await;
    let mut body = b"From: big@example.org\r\nSubject: big\r\n\r\n".to_vec();
    let line =
        b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n";
    while body.len() < 50 * 1000 * 1000 {
        body.extend_from_slice(line);
    }
    let r = send_one(f.addr, "big@example.org", &["b@example.com"], &body).await;
    assert_eq!(r.code, 250, "{r:?}");
    let m = sink.last();
    assert!(m.data.ends_with(&body), "body changed: {}", m.headers());
    assert!(
        m.headers().contains("X-Spam-Status:"),
        "spamd saw the truncated copy"
    );
    f.stop().await;
}

/// A next hop without PIPELINING (or without XFORWARD) gets the envelope one command at a time;
/// results are the same, per recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_hop_without_pipelining_or_xforward() {
    let sink = Capture::start_with(Behaviour {
        no_pipelining: true,
        no_xforward: true,
        refuse_rcpt: vec![("nobody@".into(), "550 5.1.1 no such user".into())],
        ..Default::default()
    })
    .await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let mut c = Client::greeted(f.addr).await;
    c.expect("LHLO t", 250).await;
    c.expect("XFORWARD ADDR=192.0.2.9", 250).await;
    c.expect("MAIL FROM:<a@example.org>", 250).await;
    c.expect("RCPT TO:<one@example.com>", 250).await;
    c.expect("RCPT TO:<nobody@example.com>", 250).await;
    c.expect("DATA", 354).await;
    c.body(&fixture("clean.eml")).await;
    let codes = [c.reply().await.code, c.reply().await.code];
    assert_eq!(codes, [250, 550]);
    let m = sink.last();
    assert!(
        m.xforward.is_empty(),
        "XFORWARD sent to a server that did not offer it"
    );
    assert_eq!(m.rcpts, vec!["RCPT TO:<one@example.com>".to_string()]);
    f.stop().await;
}

/// A message with one base64 attachment.
fn with_attachment(name: &str, ctype: &str, data: &[u8]) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for c in data.chunks(3) {
        let w = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            b64.push(if i <= c.len() {
                A[(w >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    format!(
        "From: a@example.org\r\nSubject: see attached\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: {ctype}; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--b--\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banned_attachments_are_rejected_or_passed_with_an_alert() {
    let sink = Capture::start().await;
    // Banned-file checks need no scanner: the MIME walk runs with clamd off too.
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let pe = b"MZ\x90\x00 a pretend DOS program, enough bytes to be a file".to_vec();
    for (name, ctype, data) in [
        (
            "invoice.pdf.exe",
            "application/pdf",
            &b"%PDF-1.4 not really"[..],
        ),
        ("photo.jpg", "image/jpeg", &pe[..]),
        (
            "report.xlsm",
            "application/vnd.ms-excel.sheet.macroEnabled.12",
            b"PK\x03\x04xl/vbaProject.bin",
        ),
    ] {
        let r = send_one(
            f.addr,
            "a@example.org",
            &["b@example.com"],
            &with_attachment(name, ctype, data),
        )
        .await;
        assert_eq!(r.code, 554, "{name}: {r:?}");
        assert!(
            r.text.contains("5.7.0 Reject, id=") && r.text.contains(&format!("BANNED: {name}")),
            "{r:?}"
        );
    }
    let r = send_one(
        f.addr,
        "a@example.org",
        &["b@example.com"],
        &with_attachment("report.pdf", "application/pdf", b"%PDF-1.4 fine"),
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    f.stop().await;
    assert_eq!(sink.count(), 1, "only the PDF is delivered");

    let f = start_filter(&config(
        None,
        None,
        sink.addr,
        "[banned]\naction = \"pass\"\n",
    ))
    .await;
    let r = send_one(
        f.addr,
        "a@example.org",
        &["b@example.com"],
        &with_attachment("setup.exe", "application/octet-stream", &pe),
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(
        sink.last()
            .headers()
            .contains("X-Amavis-Alert: BANNED, message contains exe-ms,setup.exe\r\n"),
        "{}",
        sink.last().headers()
    );
    f.stop().await;
}

/// A .tar.gz of (path, contents) files.
fn tar_gz(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, *data).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eicar_inside_a_tar_gz_is_discarded_also_when_the_walk_spills_to_disk() {
    let clamd = util::blocking(util::clamd).await;
    let sink = Capture::start().await;
    // 100 KiB of filler and a 64 KiB budget: the archive and its members spill to disk.
    let f = start_filter(&config(
        Some(&clamd),
        None,
        sink.addr,
        "[parts]\nmax_memory = 65536\n",
    ))
    .await;
    let tgz = tar_gz(&[
        ("src/filler.bin", &util::noise(100 * 1024, 0)),
        ("src/eicar.com", EICAR),
    ]);
    let msg = with_attachment("src.tar.gz", "application/gzip", &tgz);
    let r = send_one(f.addr, "a@example.org", &["b@example.com"], &msg).await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(r.text.contains("2.7.0 Ok, discarded, id="), "{r:?}");
    assert!(r.text.contains("- INFECTED: Postsift.Test.EICAR"), "{r:?}");
    assert_eq!(sink.count(), 0);
    f.stop().await;

    // The walk's own view: the attachment is spilled, its members listed, and clamd finds
    // EICAR in the spilled part streamed from its file.
    let limits = postsift::scan::parts::Limits {
        max_memory: 65536,
        ..postsift::scan::parts::Limits::from_config(&Default::default())
    };
    let walk = postsift::scan::parts::walk(&msg, &limits, &std::env::temp_dir()).unwrap();
    assert!(walk.memory() <= 65536, "{}", walk.memory());
    let names: Vec<(Option<&str>, &[&str])> = walk
        .parts
        .iter()
        .map(|p| (p.name.as_deref(), &p.containers[..]))
        .collect();
    assert!(
        names.contains(&(Some("eicar.com"), &["tar", "gzip"][..])),
        "{names:?}"
    );
    let archive = walk
        .parts
        .iter()
        .find(|p| p.name.as_deref() == Some("src.tar.gz"))
        .unwrap();
    assert!(archive.contents.is_spilled());
    let c = postsift::scan::clamd::ClamdClient::new(
        &[clamd],
        std::time::Duration::from_secs(5),
        std::time::Duration::from_secs(20),
    );
    // The spilled part streamed from its file in a session after a clean message.
    let clean = postsift::message::Message::from_bytes(b"Subject: clean\r\n\r\nhello\r\n");
    match c
        .scan_with_parts(&clean, &[&archive.contents])
        .await
        .unwrap()
    {
        Some((postsift::scan::clamd::Found::Part(0), names)) => {
            assert!(names[0].starts_with("Postsift.Test.EICAR"), "{names:?}")
        }
        v => panic!("{v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tar_member_passes_the_default_banned_rules_unless_it_is_a_windows_program() {
    let sink = Capture::start().await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let script = b"#!/bin/sh\necho a shell script with a Windows name\n";
    let pe = b"MZ\x90\x00 a pretend DOS program, enough bytes to be a file".to_vec();
    let send = |msg: Vec<u8>| async move {
        send_one(f.addr, "a@example.org", &["b@example.com"], &msg).await
    };
    // In a tar: allowed (amavis's `[qr'^\.(rpm|cpio|tar)$' => 0]`).
    let r = send(with_attachment(
        "tools.tar.gz",
        "application/gzip",
        &tar_gz(&[("tools/setup.exe", script)]),
    ))
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(sink.count(), 1);
    let h = sink.last().headers();
    assert!(!h.contains("X-Amavis-Alert"), "{h}");
    // Attached as it is: banned by its extension.
    let r = send(with_attachment(
        "setup.exe",
        "application/octet-stream",
        script,
    ))
    .await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text.contains("BANNED: setup.exe"), "{r:?}");
    // A Windows program is banned inside a tar too (amavis's first rule, exe-ms anywhere).
    let r = send(with_attachment(
        "tools.tar.gz",
        "application/gzip",
        &tar_gz(&[("tools/setup.exe", &pe)]),
    ))
    .await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text.contains("BANNED: setup.exe"), "{r:?}");
    // In a plain gzip, the name counts as if attached (no allowance for gzip members).
    let mut gz = flate2::GzBuilder::new()
        .filename("setup.exe")
        .write(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, script).unwrap();
    let r = send(with_attachment(
        "tools.gz",
        "application/gzip",
        &gz.finish().unwrap(),
    ))
    .await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text.contains("BANNED: setup.exe"), "{r:?}");
    f.stop().await;
    assert_eq!(sink.count(), 1, "only the tar with the script is delivered");
}

/// A zip of one stored member whose encryption flag is set (general purpose bit 0, in the local
/// and the central header): its name can be listed, its contents not.
fn encrypted_zip(name: &str, data: &[u8]) -> Vec<u8> {
    let crc = {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    };
    let (n, len) = (name.len() as u16, data.len() as u32);
    let mut z = Vec::new();
    z.extend_from_slice(b"PK\x03\x04\x14\x00\x01\x00\x00\x00\x00\x00\x00\x00");
    for v in [crc, len, len] {
        z.extend_from_slice(&v.to_le_bytes());
    }
    z.extend_from_slice(&n.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(name.as_bytes());
    z.extend_from_slice(data);
    let central = z.len() as u32;
    z.extend_from_slice(b"PK\x01\x02\x14\x00\x14\x00\x01\x00\x00\x00\x00\x00\x00\x00");
    for v in [crc, len, len] {
        z.extend_from_slice(&v.to_le_bytes());
    }
    z.extend_from_slice(&n.to_le_bytes());
    z.extend_from_slice(&[0u8; 12]); // extra, comment, disk, attributes
    z.extend_from_slice(&0u32.to_le_bytes()); // local header offset
    z.extend_from_slice(name.as_bytes());
    let size = z.len() as u32 - central;
    z.extend_from_slice(b"PK\x05\x06\x00\x00\x00\x00\x01\x00\x01\x00");
    z.extend_from_slice(&size.to_le_bytes());
    z.extend_from_slice(&central.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_archive_is_unchecked_and_its_answer_is_configurable() {
    let clamd = util::blocking(util::clamd).await;
    let sink = Capture::start().await;
    let msg = with_attachment(
        "minutes.zip",
        "application/zip",
        &encrypted_zip("minutes.txt", b"scrambled bytes nobody can read here"),
    );
    let send = |addr| send_one(addr, "a@example.org", &["b@example.com"], &msg);

    // Default: passed, tagged as amavis tags it.
    let f = start_filter(&config(Some(&clamd), None, sink.addr, "")).await;
    let r = send(f.addr).await;
    assert_eq!(r.code, 250, "{r:?}");
    let h = sink.last().headers();
    assert!(
        h.contains("Subject: ***UNCHECKED*** see attached\r\n"),
        "{h}"
    );
    f.stop().await;

    let f = start_filter(&config(
        Some(&clamd),
        None,
        sink.addr,
        "[parts]\non_encrypted = \"tempfail\"\n",
    ))
    .await;
    let r = send(f.addr).await;
    assert_eq!(r.code, 451, "{r:?}");
    assert!(
        r.text.contains("4.7.0 Try again later, id=")
            && r.text
                .contains("UNCHECKED: encrypted archive member minutes.txt"),
        "{r:?}"
    );
    f.stop().await;

    let f = start_filter(&config(
        Some(&clamd),
        None,
        sink.addr,
        "[parts]\non_encrypted = \"banned\"\n",
    ))
    .await;
    let r = send(f.addr).await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(
        r.text
            .contains("BANNED: encrypted archive member minutes.txt"),
        "{r:?}"
    );
    f.stop().await;
    assert_eq!(sink.count(), 1, "only the default run delivers");
}
