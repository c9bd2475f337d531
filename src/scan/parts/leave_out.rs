//! Which encoded bodies clamd may be sent the message without (issue 22, "each byte through
//! clamd once"): a body whose decoded file clamd gets as a stream of its own need not be
//! decoded and scanned a second time by clamd's own MIME parser inside the message. A body is
//! left out only when leaving it out cannot hide anything from clamd:
//! - every decoder reads it alike, so the file postsift sends is the file clamd's parser would
//!   have made: base64 in whole lines of the alphabet, padding only at its end, in groups of
//!   four; quoted-printable with only `=XX` (upper-case hex) escapes and soft line breaks, no
//!   hard line break (decoders differ on what a line end becomes), no trailing white space;
//!   uuencoded lines whose length matches their count character;
//! - it holds no structure another parser could read otherwise: a line starting with `--`
//!   (a boundary to a parser that follows another one), `begin ` (uuencode) or BinHex's
//!   banner.
//!
//! Anything else stays in the message as it came, and is also sent decoded.
//!
//! Text parts stay in the message whatever their encoding (clamd's mail-format, phishing and
//! HTML signatures read them there). Their decoded copy is not sent as well when clamd's own
//! MIME parser provably decodes the same text from the message ([`text_read_by_clamd`] for
//! the body, `tree` for the structure around it): otherwise clamd would scan it twice.

/// A body's transfer encoding, as the MIME tree declared it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Base64,
    QuotedPrintable,
    /// Not transfer-encoded: never left out (decoders differ on line ends).
    Verbatim,
}

/// Whether `body` (the bytes between a part's header section and the line break before its
/// boundary), which the MIME tree decoded to `decoded`, may be left out of what clamd is sent.
pub fn clean(body: &[u8], encoding: Encoding, decoded: &[u8]) -> bool {
    match encoding {
        Encoding::Base64 => base64_len(body) == Some(decoded.len()),
        Encoding::QuotedPrintable => quoted_printable(body),
        Encoding::Verbatim => false,
    }
}

/// The longest line (without its line break) a text body may have for clamd's parser to read
/// it as one line: SMTP's 998 (clamd's mail reader splits longer lines, which could cut a
/// quoted-printable escape in two).
pub const TEXT_LINE_MAX: usize = 998;

/// Whether clamd's MIME parser decodes the text body `body` (a text/plain or text/html part's
/// bytes between its header section and its boundary) as every decoder does, so that the
/// decoded copy postsift would send adds nothing to clamd's scan of the message: base64 as
/// [`clean`] takes it (the length is not compared: mail-parser converts a text's charset);
/// quoted-printable with only `=XX` (upper-case hex) escapes, soft and hard line breaks,
/// printable ASCII and tabs, no trailing white space. Either way no line longer than
/// [`TEXT_LINE_MAX`], and none clamd could take for structure: a uuencoded block's or BinHex's
/// start, or a line that clamd's boundary matching (a line starting with `-` or `(` that
/// holds the boundary anywhere) would take for one of `boundaries`, the message's. Other
/// lines of dashes (a signature's `-- `, a rule of `-----`) are text to every parser.
pub fn text_read_by_clamd(body: &[u8], encoding: Encoding, boundaries: &[&[u8]]) -> bool {
    let plain = lines(body).all(|l| {
        l.len() <= TEXT_LINE_MAX
            && !l.starts_with(b"begin ")
            && !l.starts_with(b"(This file must be converted with BinHex")
            && !boundary_like(l, boundaries)
    });
    plain
        && match encoding {
            Encoding::Base64 => base64_len(body).is_some(),
            Encoding::QuotedPrintable => quoted_printable_text(body),
            Encoding::Verbatim => false,
        }
}

/// Whether clamd's MIME parser may take `line` for one of `boundaries` (its `boundaryStart`:
/// a line starting with `-` or `(` that holds the boundary anywhere, comments stripped or not).
pub fn boundary_like(line: &[u8], boundaries: &[&[u8]]) -> bool {
    matches!(line.first(), Some(b'-' | b'('))
        && boundaries
            .iter()
            .any(|b| memchr::memmem::find(line, b).is_some())
}

/// Quoted-printable text: hard line breaks allowed (see [`text_read_by_clamd`]).
fn quoted_printable_text(body: &[u8]) -> bool {
    lines(body).all(|line| {
        if line.last().is_some_and(|&c| c == b' ' || c == b'\t') {
            return false;
        }
        let text = line.strip_suffix(b"=").unwrap_or(line);
        qp_escapes_only(text)
    })
}

/// A quoted-printable line's text (its soft break stripped) holds only printable ASCII, tabs and
/// `=XX` escapes with upper-case hex digits.
fn qp_escapes_only(text: &[u8]) -> bool {
    let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'=' if text.len() > i + 2 && hex(text[i + 1]) && hex(text[i + 2]) => i += 3,
            b'=' => return false,
            c if c == b'\t' || (b' '..=b'~').contains(&c) => i += 1,
            _ => return false,
        }
    }
    true
}

/// Lines without their line break (CRLF or LF).
pub fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// A line another parser may read as structure: a boundary, a uuencoded or BinHex block.
fn structure(line: &[u8]) -> bool {
    line.starts_with(b"--")
        || line.starts_with(b"begin ")
        || line.starts_with(b"(This file must be converted with BinHex")
}

/// The decoded length of clean base64 (see the module's comment); None when it is not.
fn base64_len(body: &[u8]) -> Option<usize> {
    let alphabet = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
    let (mut letters, mut pad, mut ended) = (0usize, 0usize, false);
    for line in lines(body) {
        if line.is_empty() {
            // Blank lines only after the last line of letters.
            ended = letters > 0;
            continue;
        }
        if ended || pad > 0 {
            return None;
        }
        let text = line.strip_suffix(b"==").or_else(|| line.strip_suffix(b"="));
        pad = line.len() - text.map_or(line.len(), <[u8]>::len);
        if !text.unwrap_or(line).iter().all(|&c| alphabet(c)) {
            return None;
        }
        letters += line.len();
    }
    (letters > 0 && letters.is_multiple_of(4)).then(|| letters / 4 * 3 - pad)
}

/// Well-formed quoted-printable with soft line breaks only (see the module's comment).
fn quoted_printable(body: &[u8]) -> bool {
    let mut lines = lines(body).peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        if structure(line) || line.last().is_some_and(|&c| c == b' ' || c == b'\t') {
            return false;
        }
        // Every line but the last ends in a soft line break; the last has none.
        let (text, soft) = match line.strip_suffix(b"=") {
            Some(t) if !last => (t, true),
            _ => (line, false),
        };
        if soft == last {
            return false;
        }
        if !qp_escapes_only(text) {
            return false;
        }
    }
    true
}

/// A well-formed uuencoded line: its count character says how many bytes it holds, and its
/// length is what that many bytes take; every character in uuencoding's range.
pub fn uu_line(line: &[u8]) -> bool {
    let Some(&count) = line.first() else {
        return false;
    };
    let n = (count.wrapping_sub(b' ') & 0x3f) as usize;
    !structure(line)
        && line.iter().all(|c| (b' '..=b'`').contains(c))
        && line.len() == 1 + n.div_ceil(3) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_base64_only() {
        let b = Encoding::Base64;
        assert!(clean(
            b"SGVsbG8s\r\nIHdvcmxk\r\nIQ==\r\n",
            b,
            b"Hello, world!"
        ));
        assert!(clean(b"SGVsbG8s\r\nIHdvcmxk\r\nIQ==", b, b"Hello, world!"));
        // Wrong length (a decoder dropped something), padding inside, junk, a boundary.
        assert!(!clean(b"SGVsbG8s\r\nIHdvcmxk\r\nIQ==", b, b"Hello, world"));
        assert!(!clean(b"SGVsbG8=\r\nIHdvcmxk\r\n", b, b"Hello"));
        assert!(!clean(b"SGVsbG8s\r\nnot base64\r\n", b, b"Hello,"));
        assert!(!clean(
            b"SGVsbG8s\r\n--b\r\nIHdvcmxk\r\n",
            b,
            b"Hello, world"
        ));
        assert!(!clean(b"SGVsbG8s\r\n\r\nIHdvcmxk\r\n", b, b"Hello, world"));
        // Unpadded: decoders differ on a last group that is not whole.
        assert!(!clean(b"SGVsbG8sIQ", b, b"Hello,!"));
        assert!(!clean(b"", b, b""));
    }

    #[test]
    fn well_formed_quoted_printable_with_soft_breaks_only() {
        let q = Encoding::QuotedPrintable;
        assert!(clean(b"X5O!P%@AP=3D=\r\n[4\\PZX54(P^)7CC)7}$EICAR", q, b""));
        assert!(!clean(
            b"X5O!P%@AP=3D=\r\n[4\\PZX54(P^)7CC)7}$EICAR\r\n",
            q,
            b""
        ));
        assert!(clean(b"abc=\r\ndef", q, b""));
        // A hard line break, a lower-case escape, a broken escape, trailing white space, a
        // boundary, a uuencoded block, eight-bit bytes.
        assert!(!clean(b"abc\r\ndef", q, b""));
        assert!(!clean(b"a=3d=\r\nb", q, b""));
        assert!(!clean(b"a=G0=\r\nb", q, b""));
        assert!(!clean(b"a=\r\nb \r\n", q, b""));
        assert!(!clean(b"a=\r\n--b=\r\nc", q, b""));
        assert!(!clean(b"a=\r\nbegin 644 x=\r\nc", q, b""));
        assert!(!clean("caf\u{e9}".as_bytes(), q, b""));
        assert!(!clean(b"same bytes", Encoding::Verbatim, b"same bytes"));
    }

    #[test]
    fn text_bodies_clamd_decodes_as_every_decoder_does() {
        let q = Encoding::QuotedPrintable;
        const B: &[&[u8]] = &[b"alt"];
        // Hard and soft line breaks, escapes, a blank line, the CRLF before the boundary.
        assert!(text_read_by_clamd(
            b"Hello caf=C3=A9,\r\n\r\nA long line=\r\n cut.\r\n",
            q,
            B
        ));
        assert!(text_read_by_clamd(
            b"SGVsbG8s\r\nIHdvcmxk\r\nIQ==\r\n",
            Encoding::Base64,
            B
        ));
        // A lower-case or broken escape, trailing white space, eight-bit bytes, a boundary-like
        // line, an mbox From line, a uuencoded block, a line too long for clamd's reader.
        assert!(!text_read_by_clamd(b"caf=c3=a9\r\n", q, B));
        assert!(!text_read_by_clamd(b"a=G0\r\n", q, B));
        assert!(!text_read_by_clamd(b"a \r\nb\r\n", q, B));
        assert!(!text_read_by_clamd("caf\u{e9}\r\n".as_bytes(), q, B));
        assert!(!text_read_by_clamd(b"a\r\n--alt\r\nc\r\n", q, B));
        assert!(!text_read_by_clamd(b"a\r\n(x)---alt--\r\nc\r\n", q, B));
        // Dashes that are no boundary: a signature, a rule.
        assert!(text_read_by_clamd(
            b"a\r\n--=20\r\n-----------\r\nFrom me\r\n",
            q,
            B
        ));
        assert!(!text_read_by_clamd(b"begin 644 x\r\n", q, B));
        let long = "a".repeat(TEXT_LINE_MAX + 1);
        assert!(!text_read_by_clamd(long.as_bytes(), q, B));
        assert!(text_read_by_clamd(&long.as_bytes()[1..], q, B));
        // Base64 with junk, or not transfer-encoded at all.
        assert!(!text_read_by_clamd(
            b"SGVsbG8s\r\nnot base64\r\n",
            Encoding::Base64,
            B
        ));
        assert!(!text_read_by_clamd(b"plain\r\n", Encoding::Verbatim, B));
    }

    #[test]
    fn uuencoded_lines() {
        assert!(uu_line(b"#86)C")); // 3 bytes: 4 characters
        assert!(uu_line(b"`"));
        assert!(!uu_line(b"#86)C8")); // one too many
        assert!(!uu_line(b"#86)"));
        assert!(!uu_line(b"--------------------x"));
        assert!(!uu_line(b""));
    }
}
