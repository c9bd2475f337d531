//! Issue 22, "each byte through clamd once": clamd is sent the message without the encoded
//! bodies of the files it is sent decoded, and detection holds for every content kind against
//! the real clamd (the project's own signatures, tests/fixtures/clamav): a virus in a base64,
//! quoted-printable or uuencoded attachment, inside a zip, in a forwarded message/rfc822, and a
//! mail-format signature (ClamAV target 4, the raw mail) and an HTML one (target 3, the
//! normalised text/html part) that need the text part kept in the message.
//!
//! Each virus case is caught twice: by the daemon (discarded, never delivered, the
//! `postsift_clamd_left_out_bytes_total` counter grown), and by `postsift scan` on the same
//! clamd, whose output says the message went without the body (`sent the message without`) and
//! that the virus was found in the decoded part — clamd, which parses mail, would otherwise
//! have found it in the message first.

use std::net::SocketAddr;

use crate::capture::Capture;
use crate::client::send_one;
use crate::inspection::{
    filter_with_metrics, forwarded, mail, scan_cli, uuencode, with_attachment, wrap,
    zip_attachment, zip_of, EICAR,
};
use crate::util::{self, base64, http_get};

/// The name clamd gives the project's EICAR signature.
const FOUND: &str = "Postsift.Test.EICAR";

/// The value of the unlabelled counter `name` on `metrics`' /metrics (0 if absent).
async fn counter(metrics: SocketAddr, name: &str) -> f64 {
    let (status, text) = http_get(metrics, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `postsift_clamd_left_out_bytes_total`.
async fn left_out(metrics: SocketAddr) -> f64 {
    counter(metrics, "postsift_clamd_left_out_bytes_total").await
}

/// `postsift scan` with the shared clamd: (exit code, output).
async fn scan(msg: Vec<u8>) -> (i32, String) {
    let clamd = util::blocking(util::clamd).await;
    scan_cli(
        format!("[clamd]\nendpoints = [\"{clamd}\"]\n[spamd]\nendpoints = []\n[metrics]\nlisten = \"\"\n"),
        msg,
    )
    .await
}

/// `postsift scan`'s output for `msg`, which it must call infected by `found` (exit code 2).
async fn scan_infected(case: &str, msg: Vec<u8>, found: &str) -> String {
    let (code, out) = scan(msg).await;
    assert_eq!(code, 2, "{case}: {out}");
    assert!(
        out.contains(&format!("Infected([\"{found}")),
        "{case}: {out}"
    );
    out
}

/// The daemon discards `msg` as infected by `found` with bodies left out of the message, and
/// `postsift scan` names `part` (None: the message itself) as where clamd found it.
async fn caught(case: &str, msg: Vec<u8>, found: &str, part: Option<&str>) {
    let sink = Capture::start().await;
    let (f, metrics) = filter_with_metrics(sink.addr, "").await;
    let before = left_out(metrics).await;
    let r = send_one(f.addr, "a@example.org", &["b@example.com"], &msg).await;
    assert_eq!(r.code, 250, "{case}: {r:?}");
    assert!(r.text.contains("2.7.0 Ok, discarded, id="), "{case}: {r:?}");
    assert!(
        r.text.contains(&format!("- INFECTED: {found}")),
        "{case}: {r:?}"
    );
    assert!(left_out(metrics).await > before, "{case}: nothing left out");
    f.stop().await;
    assert_eq!(sink.count(), 0, "{case} reached the sink");

    let out = scan_infected(case, msg, found).await;
    assert!(
        out.contains("clamd:      sent the message without "),
        "{case}: {out}"
    );
    match part {
        Some(p) => assert!(
            out.contains(&format!(", virus in: {p}\n")),
            "{case}: not found in the part {p}: {out}"
        ),
        None => assert!(!out.contains("virus in:"), "{case}: {out}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virus_in_a_base64_attachment_left_out_of_the_message() {
    let msg = with_attachment(
        "eicar.com",
        "application/octet-stream",
        "base64",
        &wrap(&base64(EICAR), &[76]),
    );
    caught("base64", msg, FOUND, Some("eicar.com")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virus_in_a_quoted_printable_attachment_left_out_of_the_message() {
    let eicar = std::str::from_utf8(EICAR).unwrap();
    let (a, b) = eicar.split_at(30);
    let msg = with_attachment(
        "eicar.com",
        "application/octet-stream",
        "quoted-printable",
        &format!("{a}=\r\n{b}\r\n"),
    );
    caught("quoted-printable", msg, FOUND, Some("eicar.com")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virus_uuencoded_in_a_text_body_left_out_of_the_message() {
    let msg = mail(
        "uuencoded",
        "Content-Type: text/plain\r\n",
        &format!(
            "the file follows\r\n\r\n{}\r\nbye\r\n",
            uuencode("eicar.com", EICAR)
        ),
    );
    caught("uuencode", msg, FOUND, Some("eicar.com")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virus_in_a_zip_attachment_left_out_of_the_message() {
    let zip = zip_of(&[("readme.txt", b"hello"), ("eicar.com", EICAR)]);
    caught("zip", zip_attachment(&zip), FOUND, Some("files.zip")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virus_in_a_forwarded_message_left_out_of_the_message() {
    caught("message/rfc822", forwarded(2), FOUND, Some("eicar.txt")).await;
}

/// A newsletter-like mail: a quoted-printable HTML part with `html` in it and a base64 PDF.
fn html_with_pdf(html: &str) -> Vec<u8> {
    let pdf = format!(
        "%PDF-1.4\n{}",
        "1 0 obj << /Type /Catalog >> endobj\n".repeat(40)
    );
    mail(
        "your statement",
        "Content-Type: multipart/mixed; boundary=\"b\"\r\n",
        &format!(
            "--b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
             <html><body><p>Dear customer,</p>{html}</body></html>\r\n\
             --b\r\nContent-Type: application/pdf; name=\"statement.pdf\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{}--b--\r\n",
            wrap(&base64(pdf.as_bytes()), &[76])
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_format_and_html_signatures_still_read_the_text_part_kept_in_the_message() {
    // Target 4 (the raw mail): the phrase as it stands in the HTML part.
    let msg = html_with_pdf(
        "<p><a href=3D\"http://example.net/\">postsift-mail-format-test-phrase</a></p>",
    );
    caught("mail-format", msg, "Postsift.Test.MailPhrase", None).await;
    // Target 3 (HTML, normalised by clamd's MIME parser: quoted-printable decoded, lower
    // case): the phrase split by a soft line break, in mixed case.
    let msg =
        html_with_pdf("<p><a href=3D\"http://example.net/\">PostSift=\r\nHtmlTestPhrase</a></p>");
    caught("html", msg, "Postsift.Test.HtmlPhrase", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_attachment_left_out_leaves_a_clean_message_clean() {
    let msg = html_with_pdf("<p>nothing to see</p>");
    let (code, out) = scan(msg).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("clamd:      sent the message without "),
        "{out}"
    );
}

/// ClamAV's own evasion mails (`../shared/corpus/real/clamav`, not in the repository) and the
/// mailbox files of the `clamav-testfiles` package: clam.exe is found in each with bodies left
/// out as it was without (`--ignored`: the files are outside the repository).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn clamavs_evasion_mails_are_all_caught_with_bodies_left_out() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<std::path::PathBuf> = [
        "../../shared/corpus/real/clamav",
        "../shared/corpus/real/clamav",
    ]
    .iter()
    .filter_map(|d| std::fs::read_dir(root.join(d)).ok())
    .flat_map(|d| d.filter_map(|e| Some(e.ok()?.path())))
    .collect();
    files.extend(
        ["clam.exe.mbox.base64", "clam.exe.mbox.uu", "clam.mail"]
            .iter()
            .map(|f| std::path::Path::new("/usr/share/clamav-testfiles").join(f)),
    );
    let clamd = util::blocking(crate::peers::Clamd::start).await;
    let ep = clamd.socket.display().to_string();
    let mut missed = Vec::new();
    for f in files.iter().filter(|f| f.exists()) {
        let (code, out) = scan_cli(
            format!("[clamd]\nendpoints = [\"{ep}\"]\n[spamd]\nendpoints = []\n[metrics]\nlisten = \"\"\n"),
            std::fs::read(f).unwrap(),
        )
        .await;
        println!(
            "{}: exit {code}: {}",
            f.display(),
            out.lines()
                .filter(|l| l.starts_with("clamd:")
                    || l.contains("Infected")
                    || l.starts_with("parts:"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        if code != 2 {
            missed.push(f.display().to_string());
        }
    }
    assert!(missed.is_empty(), "not caught: {missed:?}");
}

/// `postsift_clamd_text_in_message_bytes_total`.
async fn text_in_message(metrics: SocketAddr) -> f64 {
    counter(metrics, "postsift_clamd_text_in_message_bytes_total").await
}

/// A newsletter: a multipart/alternative of a text/plain and a text/html part, each given in
/// its transfer encoding (`Content-Transfer-Encoding` value, body).
fn alternative(plain: (&str, &str), html: (&str, &str)) -> Vec<u8> {
    mail(
        "our news",
        "Content-Type: multipart/alternative; boundary=\"=_alt_1\"\r\n",
        &format!(
            "--=_alt_1\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: {}\r\n\r\n{}\r\n\
             --=_alt_1\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Transfer-Encoding: {}\r\n\r\n{}\r\n--=_alt_1--\r\n",
            plain.0, plain.1, html.0, html.1
        ),
    )
}

/// EICAR in quoted-printable: its `[` escaped as `=5B` (`=5b` with `lower`), cut by a soft
/// line break, between lines of text, a rule of dashes and a signature.
fn eicar_qp(lower: bool) -> String {
    let eicar = std::str::from_utf8(EICAR).unwrap();
    let (a, b) = eicar.split_at(30);
    let escape = if lower { "=5b" } else { "=5B" };
    format!(
        "Hello,\r\n\r\n{}=\r\n{b}\r\n-----------------\r\n--=20\r\nThe team",
        a.replace('[', escape)
    )
}

/// The daemon discards `msg` as infected by `found` with the decoded copies of its text parts
/// not sent (`postsift_clamd_text_in_message_bytes_total` grown): clamd found the virus in
/// the message, whose text parts its own MIME parser decoded; `postsift scan` says so too.
async fn caught_in_message(case: &str, msg: Vec<u8>, found: &str) {
    let sink = Capture::start().await;
    let (f, metrics) = filter_with_metrics(sink.addr, "").await;
    let before = text_in_message(metrics).await;
    let r = send_one(f.addr, "a@example.org", &["b@example.com"], &msg).await;
    assert_eq!(r.code, 250, "{case}: {r:?}");
    assert!(
        r.text.contains(&format!("- INFECTED: {found}")),
        "{case}: {r:?}"
    );
    assert!(
        text_in_message(metrics).await > before,
        "{case}: a decoded copy was sent"
    );
    f.stop().await;
    assert_eq!(sink.count(), 0, "{case} reached the sink");

    let out = scan_infected(case, msg, found).await;
    assert!(
        out.contains("bytes of text parts not sent decoded"),
        "{case}: {out}"
    );
    assert!(!out.contains("virus in:"), "{case}: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virus_in_a_quoted_printable_text_part_is_found_without_its_decoded_copy() {
    let msg = alternative(
        ("quoted-printable", &eicar_qp(false)),
        ("quoted-printable", "<html><body><p>Hello</p></body></html>"),
    );
    caught_in_message("quoted-printable text/plain", msg, FOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virus_and_an_html_signature_in_a_base64_html_part_are_found_without_its_decoded_copy() {
    let eicar = std::str::from_utf8(EICAR).unwrap();
    let html = |inner: &str| {
        wrap(
            &base64(format!("<html><body><p>Hello</p>{inner}</body></html>").as_bytes()),
            &[76],
        )
    };
    // EICAR as the part's whole text: inside HTML markup clamd matches its signatures on the
    // normalised HTML only (lower case), the decoded copy sent as a stream as much as the part
    // its parser decoded (both were tried: neither finds EICAR in `<pre>`).
    let msg = alternative(
        ("quoted-printable", "Hello=2C reader"),
        (
            "base64",
            &wrap(&base64(format!("{eicar}\r\n").as_bytes()), &[76]),
        ),
    );
    caught_in_message("base64 text/html, EICAR", msg, FOUND).await;
    // Target 3: clamd's normalised HTML (lower case), from the body it decoded itself.
    let msg = alternative(
        ("quoted-printable", "Hello=2C reader"),
        (
            "base64",
            &html("<p><a href=\"http://example.net/\">PostSiftHtmlTestPhrase</a></p>"),
        ),
    );
    caught_in_message("base64 text/html, HTML", msg, "Postsift.Test.HtmlPhrase").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_quoted_printable_text_part_still_gets_its_decoded_copy() {
    // A lower-case escape: decoders may differ, so the decoded copy is sent as well.
    let msg = alternative(
        ("quoted-printable", &eicar_qp(true)),
        ("quoted-printable", "<html><body><p>Hello</p></body></html>"),
    );
    let sink = Capture::start().await;
    let (f, metrics) = filter_with_metrics(sink.addr, "").await;
    let r = send_one(f.addr, "a@example.org", &["b@example.com"], &msg).await;
    assert!(r.text.contains(&format!("- INFECTED: {FOUND}")), "{r:?}");
    // Only the well-formed HTML part was left to clamd's parser.
    let html = "<html><body><p>Hello</p></body></html>".len() as f64;
    assert_eq!(text_in_message(metrics).await, html);
    f.stop().await;
    assert_eq!(sink.count(), 0);
    let (code, out) = scan(msg).await;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!(
            "clamd:      {} bytes of text parts not sent decoded",
            html
        )),
        "{out}"
    );
}
