//! A safe text rendering of a quarantined message for `postsift quarantine show`: the header
//! section as it is, the body's text as mail-parser decodes it (HTML turned into text, never
//! loaded, nothing fetched), the attachments by name, type and size — every control character
//! escaped, so no byte of a hostile message reaches the terminal as an escape sequence.

use mail_parser::{MimeHeaders, PartType};

/// Text shown of the body at most (bytes); `show --full` lifts it.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Escapes each line of `text` (kept as lines).
fn lines(text: &str, out: &mut String) {
    for l in text.split('\n') {
        out.push_str(&crate::escape::keeping_tabs(l.trim_end_matches('\r')));
        out.push('\n');
    }
}

/// The rendering: headers, a blank line, the body's text, the attachments.
pub fn render(raw: &[u8], limit: Option<usize>) -> String {
    let mut out = String::new();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |p| p + 2);
    lines(
        String::from_utf8_lossy(&raw[..end]).trim_end_matches("\r\n"),
        &mut out,
    );
    out.push('\n');
    // Parsed as the MIME walk parses (a message nesting 25,000 levels would overflow the
    // stack in mail-parser and abort the command), the text and names taken on its thread.
    let parsed = crate::scan::parts::parse_guarded(raw, |m| m.map(|m| contents(&m)));
    let (text, attachments) = match parsed {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) => {
            out.push_str("[the message could not be parsed]\n");
            return out;
        }
        Ok(Err(why)) => {
            out.push_str(&format!("[the message could not be parsed: {why}]\n"));
            return out;
        }
        Err(e) => {
            out.push_str(&format!("[the message could not be parsed: {e}]\n"));
            return out;
        }
    };
    let mut text = text;
    let limit = limit.unwrap_or(usize::MAX);
    if text.len() > limit {
        let mut cut = limit;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n[… cut; --full shows all]");
    }
    lines(&text, &mut out);
    if !attachments.is_empty() {
        out.push_str("\nattachments (not opened):\n");
        for a in attachments {
            out.push_str(&a);
            out.push('\n');
        }
    }
    out
}

/// The body's text and the attachments' lines of a parsed message.
fn contents(m: &mail_parser::Message<'_>) -> (String, Vec<String>) {
    let mut text = String::new();
    for i in 0.. {
        match m.body_text(i) {
            Some(t) => {
                if i > 0 {
                    text.push_str("\n----\n");
                }
                text.push_str(&t);
            }
            None => break,
        }
    }
    let attachments: Vec<String> = m
        .attachments()
        .map(|a| {
            let ty = a
                .content_type()
                .map_or("application/octet-stream".into(), |t| match t.subtype() {
                    Some(s) => format!("{}/{}", t.ctype(), s),
                    None => t.ctype().to_string(),
                });
            let size = match &a.body {
                PartType::Binary(b) | PartType::InlineBinary(b) => b.len(),
                PartType::Text(t) | PartType::Html(t) => t.len(),
                PartType::Message(m) => m.raw_message.len(),
                PartType::Multipart(_) => 0,
            };
            format!(
                "  - {} ({}, {} bytes)",
                crate::escape::text(a.attachment_name().unwrap_or("-").trim()),
                crate::escape::text(ty.trim()),
                size
            )
        })
        .collect();
    (text, attachments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escape::keeping_tabs as escape;

    #[test]
    fn escapes_terminal_controls_and_bidi() {
        assert_eq!(escape("a\x1b[31mred"), "a\\x1b[31mred");
        assert_eq!(escape("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(escape("tab\there"), "tab\there");
    }

    #[test]
    fn renders_text_and_names_attachments() {
        let raw = b"From: a@b\r\nSubject: hi\x1b]0;pwn\x07\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/html\r\n\r\n<p>Hello <img src=\"http://tracker/x.png\"> world</p>\r\n--x\r\nContent-Type: application/octet-stream; name=\"a.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAA==\r\n--x--\r\n";
        let r = render(raw, Some(BODY_LIMIT));
        assert!(r.contains("Subject: hi\\x1b]0;pwn\\x07"), "{r}");
        assert!(r.contains("Hello"), "{r}");
        assert!(!r.contains('\x1b'));
        assert!(
            r.contains("a.exe (application/octet-stream, 4 bytes)"),
            "{r}"
        );
    }

    /// Issue 16: `quarantine show` parsed with mail-parser directly, without the walk's
    /// nesting guard: a quarantined message nesting message/rfc822 25,000 deep overflowed the
    /// stack and aborted the command. It shows the headers and says why it is not parsed.
    #[test]
    fn a_message_nested_25000_deep_is_shown_not_a_stack_overflow() {
        let mut raw = b"Subject: deep\r\n".to_vec();
        raw.extend(b"Content-Type: message/rfc822\r\n\r\n".repeat(25_000));
        raw.extend_from_slice(b"Subject: innermost\r\n\r\nhello\r\n");
        let r = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || render(&raw, Some(BODY_LIMIT)))
            .unwrap()
            .join()
            .unwrap();
        assert!(r.starts_with("Subject: deep\n"), "{}", &r[..200]);
        assert!(r.contains("MIME structure not parsed"), "{}", &r[..200]);
        // Nested a little, it is parsed (on the parser's own thread) and shown.
        let mut raw = b"Content-Type: message/rfc822\r\n\r\n".repeat(50);
        raw.extend_from_slice(b"Subject: innermost\r\n\r\nhello\r\n");
        let r = render(&raw, Some(BODY_LIMIT));
        assert!(!r.contains("not parsed"), "{r}");
    }
}
