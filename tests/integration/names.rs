//! Hostile names (issue 16, items 5 and 7), one test named after each defect: a banned file
//! slipped past the rules under a trailing dot or a second name, and a name from the message
//! forged a log line, drove the terminal of `postsift scan`, or made a 20 KB reply line.

use crate::capture::Capture;
use crate::client::send_one;
use crate::peers;
use crate::reload::{cfg, Daemon};
use crate::util::{self, base64, config, start_filter};

/// A message whose one attachment carries `headers` (Content-Type, Content-Disposition, …).
fn attached(headers: &str, data: &[u8]) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nSubject: see attached\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
         hello\r\n--b\r\n{headers}Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        base64(data)
    )
    .into_bytes()
}

fn zip_of(name: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file(name, zip::write::SimpleFileOptions::default())
        .unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap().into_inner()
}

/// A `filename*` parameter (RFC 2231) of `name`, %-encoded and split into continuations of
/// 600 characters, so that no header line is long whatever the name.
fn rfc2231(name: &[u8]) -> String {
    let enc: String = name
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let chunks: Vec<&str> = enc
        .as_bytes()
        .chunks(600)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let charset = if i == 0 { "utf-8''" } else { "" };
            format!(";\r\n filename*{i}*={charset}{c}")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_dots_and_spaces_bypassed_the_banned_rules() {
    let sink = Capture::start().await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    for name in ["evil.js.", "evil.vbs...", "evil.hta. "] {
        let plain = attached(
            &format!(
                "Content-Type: application/octet-stream; name=\"{name}\"\r\n\
                 Content-Disposition: attachment; filename=\"{name}\"\r\n"
            ),
            b"harmless-looking text",
        );
        let zipped = attached(
            "Content-Type: application/zip; name=\"files.zip\"\r\n",
            &zip_of(name, b"harmless-looking text"),
        );
        for (how, msg) in [("attached", plain), ("in a zip", zipped)] {
            let r = send_one(f.addr, "a@example.org", &["b@example.com"], &msg).await;
            assert_eq!(r.code, 554, "{name:?} {how}: {r:?}");
            assert!(r.text.contains("BANNED: evil."), "{name:?} {how}: {r:?}");
        }
    }
    f.stop().await;
    assert_eq!(sink.count(), 0, "no banned file delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_declared_name_was_judged() {
    let sink = Capture::start().await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    for headers in [
        // Content-Type name= beside Content-Disposition filename=.
        "Content-Type: application/pdf; name=\"evil.js\"\r\n\
         Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n",
        // A second filename parameter.
        "Content-Type: application/pdf\r\n\
         Content-Disposition: attachment; filename=\"invoice.pdf\"; filename=\"evil.js\"\r\n",
        // A second Content-Disposition header.
        "Content-Type: application/pdf\r\n\
         Content-Disposition: attachment; filename=\"evil.js\"\r\n\
         Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n",
        // RFC 2231 with a NUL: a C string ends at `evil.js`.
        "Content-Type: application/pdf\r\n\
         Content-Disposition: attachment; filename*=utf-8''evil.js%00.pdf\r\n",
        // RFC 2047 in name=, and an NTFS stream name.
        "Content-Type: application/pdf; name=\"=?utf-8?q?evil=2Ejs?=\"\r\n\
         Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n",
        "Content-Type: application/pdf\r\n\
         Content-Disposition: attachment; filename=\"evil.js::$DATA\"\r\n",
    ] {
        let r = send_one(
            f.addr,
            "a@example.org",
            &["b@example.com"],
            &attached(headers, b"%PDF-1.4 not really"),
        )
        .await;
        assert_eq!(r.code, 554, "{headers}: {r:?}");
        assert!(r.text.contains("BANNED: evil.js"), "{headers}: {r:?}");
    }
    f.stop().await;
    assert_eq!(sink.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crlf_in_a_file_name_forged_a_log_line() {
    let sink = Capture::start().await;
    let port = peers::free_port();
    let mut d = Daemon::start(&cfg(&[port], sink.addr, "", ""), port).await;
    let forged = b"evil\r\n2026-12-04T00:00:00Z  INFO postsift::message: FORGED LINE.exe";
    let msg = attached(
        &format!(
            "Content-Type: application/octet-stream{}\r\n",
            rfc2231(forged).replace("filename*", "name*")
        ),
        b"x",
    );
    let r = send_one(
        peers::localhost(port),
        "a@example.org",
        &["b@example.com"],
        &msg,
    )
    .await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(
        !r.text.contains('\r') && r.text.contains("\\x0d\\x0a2026"),
        "{r:?}"
    );
    let line = d.wait_log("verdict=\"banned\"", 1).await;
    assert!(
        line.contains("banned=application/octet-stream,evil\\x0d\\x0a2026-12-04T00:00:00Z  INFO postsift::message: FORGED LINE.exe"),
        "{line}"
    );
    let log = d.log_text();
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-04T00:00:00Z")),
        "a forged line:\n{log}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20000_character_file_name_made_a_20_kb_reply_line() {
    let sink = Capture::start().await;
    let f = start_filter(&config(None, None, sink.addr, "")).await;
    let name = format!("{}.exe", "a".repeat(20_000));
    let msg = attached(
        &format!(
            "Content-Type: application/octet-stream{}\r\n",
            rfc2231(name.as_bytes())
        ),
        b"x",
    );
    let r = send_one(f.addr, "a@example.org", &["b@example.com"], &msg).await;
    assert_eq!(r.code, 554, "{}", &r.text[..r.text.len().min(300)]);
    assert!(r.text.len() < 512, "{} bytes", r.text.len());
    assert!(r.text.contains("...[+"), "{}", r.text);
    f.stop().await;
}

#[test]
fn postsift_scan_printed_terminal_escapes_in_part_names() {
    let dir = tempfile::tempdir().unwrap();
    let eml = dir.path().join("osc.eml");
    let name = b"\x1b]0;owned\x07\x1b[2Jreport\xe2\x80\xae.pdf";
    std::fs::write(
        &eml,
        attached(
            &format!(
                "Content-Type: application/pdf\r\nContent-Disposition: attachment{}\r\n",
                rfc2231(name)
            ),
            b"%PDF-1.4",
        ),
    )
    .unwrap();
    let cfg = dir.path().join("scan.toml");
    std::fs::write(
        &cfg,
        "[clamd]\nendpoints = []\n[spamd]\nendpoints = []\n[metrics]\nlisten = \"\"\n",
    )
    .unwrap();
    let out = util::postsift_cmd()
        .args(["scan", "--config"])
        .arg(&cfg)
        .arg(&eml)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.stdout.iter().any(|&b| b == 0x1b || b == 0x07),
        "raw escapes:\n{stdout:?}"
    );
    assert!(!stdout.contains('\u{202e}'), "{stdout:?}");
    assert!(
        stdout.contains("\\x1b]0;owned\\x07\\x1b[2Jreport\\u{202e}.pdf"),
        "{stdout}"
    );
}

/// One AM.PDP request on the unix socket at `sock`; the reply's lines.
async fn ampdp(sock: &std::path::Path, lines: &[&str]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
    let mut req = lines.join("\r\n");
    req.push_str("\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.ends_with(b"\r\n\r\n") && !out.ends_with(b"\n\n") {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crlf_in_ampdp_recipient_or_requested_by_forged_a_log_line_and_a_rcpt() {
    let tmp = util::daemon_dir("names-");
    let sock = tmp.path().join("amavisd.sock");
    let sink = Capture::start().await;
    let port = peers::free_port();
    let extra = format!(
        "[quarantine]\ndir = \"{}\"\nrelease_listen = \"unix:{}\"\n[banned]\naction = \"quarantine\"\n",
        tmp.path().join("q").display(),
        sock.display()
    );
    let mut d = Daemon::start(&cfg(&[port], sink.addr, "", &extra), port).await;
    let msg = attached(
        "Content-Type: application/octet-stream; name=\"setup.exe\"\r\n",
        b"x",
    );
    let r = send_one(
        peers::localhost(port),
        "a@example.org",
        &["b@example.com"],
        &msg,
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    let id = r.text.split("id=").nth(1).unwrap();
    let id = id.split_whitespace().next().unwrap().to_owned();
    // A recipient that would add a RCPT of its own: refused, nothing sent.
    let reply = ampdp(
        &sock,
        &[
            "request=release",
            &format!("mail_id={id}"),
            "recipient=<ok@example.com>%0D%0ARCPT%20TO:<evil@example.net>%0D%0A2026-12-04T00:00:00Z%20%20INFO%20postsift::quarantine:%20FORGED",
        ],
    )
    .await;
    assert!(reply.contains("553 5.1.3"), "{reply}");
    // A requested_by with a CR LF: released, logged on one line.
    let reply = ampdp(
        &sock,
        &[
            "request=release",
            &format!("mail_id={id}"),
            "recipient=<postmaster@example.com>",
            "requested_by=<admin>%0D%0A2026-12-04T00:00:00Z%20%20INFO%20postsift::quarantine:%20FORGED",
        ],
    )
    .await;
    assert!(reply.contains("250"), "{reply}");
    let line = d.wait_log("requested_by=", 1).await;
    assert!(
        line.contains("requested_by=<admin>\\x0d\\x0a2026"),
        "{line}"
    );
    let m = sink.wait_for(1).await.pop().unwrap();
    assert_eq!(m.rcpts, ["RCPT TO:<postmaster@example.com>"]);
    let log = d.log_text();
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-04T00:00:00Z")),
        "a forged line:\n{log}"
    );
    let refused = log
        .lines()
        .find(|l| l.contains("release (AM.PDP) refused"))
        .unwrap_or_else(|| panic!("the refusal is not logged:\n{log}"));
    assert!(refused.contains("\\x0d\\x0aRCPT"), "{refused}");
    d.stop().await;
    peers::finish_dir(Some(tmp));
}
