//! The one way postsift prints a string a sender, client or local user controls (file names,
//! addresses, XFORWARD and AM.PDP fields, peers' replies) in a log line, the CLI's output or an
//! SMTP reply: every character that could end a line, move a terminal or reorder text is
//! escaped, and the result is capped in length.
//!
//! Escaped: C0 controls and DEL as `\xNN` (`\x0d\x0a` for CR LF: no forged log line, no
//! terminal escape sequence such as `ESC ] 0 ; … BEL`), C1 controls (U+0080–U+009F, which some
//! terminals obey as CSI/OSC too) as `\xNN`, and the characters that make a terminal or viewer
//! show text other than it is — bidirectional overrides and isolates (U+202A–U+202E,
//! U+2066–U+2069, U+200E/U+200F, U+061C), the Unicode line and paragraph separators
//! (U+2028/U+2029), U+FEFF — as `\u{NNNN}`. A backslash is doubled, so `\x0a` in the output
//! is always an escape and never a sender's own four characters. Everything else, UTF-8 letters
//! included, is kept.
//!
//! [`text`] caps the result at [`MAX_BYTES`] bytes of UTF-8, ending a longer one with
//! `...[+N chars]` (N counts the original's characters left out): a 20,000-character file name
//! makes neither a 20 KB reply line nor a 20 KB log field, and 200 two- or four-byte letters
//! make no reply line longer than RFC 5321's 512 octets either (the cap is in bytes, not
//! characters: found by fuzzing).

use std::fmt::{self, Write};
use std::io;

/// Bytes (UTF-8) kept of one value, escapes included.
pub const MAX_BYTES: usize = 200;

/// `s` escaped and capped at [`MAX_BYTES`].
pub fn text(s: &str) -> String {
    capped(s.chars().map(Ok), MAX_BYTES)
}

/// `s` escaped, with no length cap (for output that is long by design, such as the text of a
/// quarantined message `postsift quarantine show` prints line by line).
pub fn uncapped(s: &str) -> String {
    capped(s.chars().map(Ok), usize::MAX)
}

/// `s` escaped like [`uncapped`], but tabs kept as they are (text laid out in columns, such as
/// the quarantined message `postsift quarantine show` prints).
pub fn keeping_tabs(s: &str) -> String {
    s.split('\t').map(uncapped).collect::<Vec<_>>().join("\t")
}

/// Bytes that may not be UTF-8 (a raw header, a peer's line): valid UTF-8 as [`text`], every
/// other byte as `\xNN`.
pub fn bytes(b: &[u8]) -> String {
    let units = b.utf8_chunks().flat_map(|chunk| {
        chunk
            .valid()
            .chars()
            .map(Ok)
            .chain(chunk.invalid().iter().map(|&x| Err(x)))
    });
    capped(units, MAX_BYTES)
}

/// `s` escaped, as a `Display` value for `tracing` fields and `format!` (`%Shown(&x)`).
pub struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&text(self.0))
    }
}

/// Whether `c` is shown as an escape.
pub fn needs_escape(c: char) -> bool {
    let n = c as u32;
    n < 0x20
        || (0x7f..=0x9f).contains(&n)
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{feff}'
        )
}

/// Characters (`Ok`) and bytes that are not UTF-8 (`Err`), escaped, at most `max` bytes shown.
fn capped(mut units: impl Iterator<Item = Result<char, u8>>, max: usize) -> String {
    let mut out = String::new();
    let mut shown = 0usize;
    let mut one = String::new();
    while let Some(u) = units.next() {
        one.clear();
        match u {
            Ok('\\') => one.push_str("\\\\"),
            Ok(c) if needs_escape(c) && (c as u32) <= 0xff => {
                let _ = write!(one, "\\x{:02x}", c as u32);
            }
            Ok(c) if needs_escape(c) => {
                let _ = write!(one, "\\u{{{:04x}}}", c as u32);
            }
            Ok(c) => one.push(c),
            Err(b) => {
                let _ = write!(one, "\\x{b:02x}");
            }
        }
        let len = one.len();
        if shown + len > max {
            let left = 1 + units.count();
            let _ = write!(out, "...[+{left} chars]");
            return out;
        }
        shown += len;
        out.push_str(&one);
    }
    out
}

/// The log's writer: one event, one line, whatever a field holds. Every value from outside is
/// escaped where it is logged; this is the guard behind it, for a field someone forgets: a CR or
/// LF inside an event (all but the final line end) is written as `\x0d` / `\x0a`, so no value
/// can start a line of its own in the plain format. tracing-subscriber's fmt layer hands its
/// writer each event whole, in one `write_all`.
pub struct OneLine<W>(pub W);

impl<W: io::Write> io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        if !body.iter().any(|&b| b == b'\n' || b == b'\r') {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 16);
        for &b in body {
            match b {
                b'\n' => out.extend_from_slice(b"\\x0a"),
                b'\r' => out.extend_from_slice(b"\\x0d"),
                b => out.push(b),
            }
        }
        out.extend_from_slice(&buf[body.len()..]);
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_in_a_name_cannot_forge_a_log_line() {
        let e = text("a.exe\r\n2026-12-04T00:00:00Z INFO postsift::message: FORGED LINE.exe");
        assert!(!e.contains('\n') && !e.contains('\r'), "{e}");
        assert!(e.starts_with("a.exe\\x0d\\x0a2026"), "{e}");
    }

    #[test]
    fn terminal_escapes_and_bidi_overrides_are_escaped() {
        assert_eq!(text("\u{1b}]0;owned\u{7}x"), "\\x1b]0;owned\\x07x");
        assert_eq!(text("a\u{7f}b\u{9b}c"), "a\\x7fb\\x9bc");
        assert_eq!(text("inv\u{202e}fdp.exe"), "inv\\u{202e}fdp.exe");
        assert_eq!(text("tab\there"), "tab\\x09here");
        // Ordinary letters, accents and other scripts stay.
        assert_eq!(text("Rechnung-März_日本.pdf"), "Rechnung-März_日本.pdf");
    }

    #[test]
    fn a_backslash_is_doubled_so_escapes_are_unambiguous() {
        assert_eq!(text("a\\x0a"), "a\\\\x0a");
        assert_ne!(text("a\\x0a"), text("a\n"));
    }

    #[test]
    fn a_huge_value_is_capped_with_a_marker() {
        let e = text(&"a".repeat(20_000));
        assert!(e.len() < MAX_BYTES + 24, "{}", e.len());
        assert!(e.ends_with("...[+19800 chars]"), "{}", &e[190..]);
        // Escapes count towards the cap and are never cut in half.
        let e = text(&"\n".repeat(1000));
        assert!(e.starts_with("\\x0a") && e.contains("...[+"), "{e}");
        assert_eq!(e.split("...").next().unwrap().len() % 4, 0);
        assert_eq!(uncapped(&"b".repeat(5000)).len(), 5000);
    }

    #[test]
    fn the_cap_counts_bytes_so_wide_letters_make_no_long_line() {
        // 300 two-byte letters (a Latin-1 name read as UTF-8) and 300 four-byte ones: the cap
        // is 200 bytes whatever the letters, never cutting one in half.
        for s in ["\u{a1}".repeat(300), "\u{1f600}".repeat(300)] {
            let e = text(&s);
            let kept = e.split("...[+").next().unwrap();
            assert!(kept.len() <= MAX_BYTES, "{}", kept.len());
            assert!(e.len() < MAX_BYTES + 24, "{}", e.len());
        }
    }

    #[test]
    fn the_log_writer_keeps_an_event_on_one_line() {
        use std::io::Write;
        let mut w = OneLine(Vec::new());
        w.write_all(b"a INFO x: name=evil\r\n2026 INFO forged\n")
            .unwrap();
        w.write_all(b"next\n").unwrap();
        assert_eq!(
            w.0,
            b"a INFO x: name=evil\\x0d\\x0a2026 INFO forged\nnext\n"
        );
    }

    #[test]
    fn invalid_utf8_bytes_are_shown_as_hex() {
        assert_eq!(bytes(b"a\xff\r\nb"), "a\\xff\\x0d\\x0ab");
        assert_eq!(bytes("ü".as_bytes()), "ü");
    }
}
