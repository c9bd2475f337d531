//! The MIME tree's reading: mail-parser run behind the nesting guard (on a big stack, its
//! panics caught), and its leaf parts decoded into the walk.

use super::*;
use std::io::{self};

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// mail-parser run on `raw` as the walk runs it, for `f` to read the result (None: nothing
/// parsed): not at all past [`MAX_NESTED_MESSAGES`] possible nested messages (`Ok(Err)`
/// with the reason; mail-parser would recurse into them and overflow the stack), on a thread
/// with a [`PARSER_STACK`] stack when the message nests any, and with a panic of
/// mail-parser's caught (`Ok(Err)` too). Err only when that thread could not be started.
/// `postsift quarantine show` parses through it, as the walk does.
pub fn parse_guarded<T: Send>(
    raw: &[u8],
    f: impl FnOnce(Option<mail_parser::Message<'_>>) -> T + Send,
) -> io::Result<Result<T, String>> {
    let nested = nested_messages(raw);
    if nested > MAX_NESTED_MESSAGES {
        return Ok(Err(format!(
            "more than {MAX_NESTED_MESSAGES} nested message/rfc822 or digest parts: \
             MIME structure not parsed"
        )));
    }
    Ok(parse_nested(raw, nested, f)?.map_err(|_| "mail-parser failed on this message".into()))
}

/// [`parse_guarded`] once the nesting is counted (`nested`, at most [`MAX_NESTED_MESSAGES`]).
pub(super) fn parse_nested<T: Send>(
    raw: &[u8],
    nested: usize,
    f: impl FnOnce(Option<mail_parser::Message<'_>>) -> T + Send,
) -> io::Result<std::thread::Result<T>> {
    // mail-parser 0.11 panics on some real messages (e.g. SpamAssassin's nice-mime9 test
    // mail: "Invalid part ID").
    let run = || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f(MessageParser::default().parse(raw))
        }))
    };
    // With nested messages, on a thread whose stack is known to hold MAX_NESTED_MESSAGES
    // levels (the caller's may be a 2 MiB tokio thread); without, where it is.
    match nested {
        0 => Ok(run()),
        _ => std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("mime-parse".into())
                .stack_size(PARSER_STACK)
                .spawn_scoped(s, run)
                .map(|t| t.join().unwrap_or_else(Err))
        }),
    }
}

impl Collector {
    /// The MIME tree's leaf parts, decoded by mail-parser; `raw` is the whole message (the
    /// offsets of a part within it tell a verbatim part and a base64 body the raw reading need
    /// not decode again).
    pub(super) fn tree(&mut self, m: &mail_parser::Message<'_>, raw: &[u8], depth: usize) {
        if depth > self.limits.max_depth {
            self.stop(
                LimitKind::Depth,
                format!(
                    "message/rfc822 nested deeper than {}",
                    self.limits.max_depth
                ),
            );
            return;
        }
        // Where this (sub)message's offsets start in `raw`: mail-parser parses a nested message
        // in place (its offsets are the outer message's), except a transfer-encoded one, which
        // it parses from its decoded copy (no place in `raw`).
        let base = match &m.raw_message {
            std::borrow::Cow::Borrowed(b) => {
                let at = (b.as_ptr() as usize).wrapping_sub(raw.as_ptr() as usize);
                (at <= raw.len() && b.len() <= raw.len() - at).then_some(at)
            }
            std::borrow::Cow::Owned(_) => None,
        };
        // The message's boundaries when clamd's own MIME parser provably reads its structure
        // as mail-parser did: only the message clamd is sent (depth 0, parsed in place), and
        // only looked at once a text part could use it.
        let mut plain: Option<Option<Vec<&[u8]>>> = None;
        for p in &m.parts {
            if self.full() || self.over_time() {
                return;
            }
            let declared = p.content_type().map(|c| match c.subtype() {
                Some(sub) => format!("{}/{}", c.ctype(), sub).to_ascii_lowercase(),
                None => c.ctype().to_ascii_lowercase(),
            });
            let name = p.attachment_name().map(str::to_owned);
            let other_names = other_names(p, name.as_deref());
            // mail-parser borrows a part's bytes from the message when it decoded nothing.
            let (data, verbatim): (&[u8], bool) = match &p.body {
                PartType::Binary(b) | PartType::InlineBinary(b) => {
                    (b, matches!(b, std::borrow::Cow::Borrowed(_)))
                }
                PartType::Text(t) | PartType::Html(t) => {
                    (t.as_bytes(), matches!(t, std::borrow::Cow::Borrowed(_)))
                }
                PartType::Message(inner) => {
                    self.tree(inner, raw, depth + 1);
                    continue;
                }
                PartType::Multipart(_) => continue,
            };
            let body = base.map(|b| b + p.offset_body as usize);
            // Not transfer-encoded, with its bytes in the message (a place known): verbatim even
            // when mail-parser handed back a converted copy — identical bytes, or a text in an
            // ASCII-compatible charset whose ASCII mail-parser leaves as it is (only the other
            // bytes change, to their UTF-8). A UTF-16 or UTF-7 text, which turns into other
            // ASCII, is not.
            let verbatim = verbatim
                || p.encoding == mail_parser::Encoding::None
                    && body.is_some_and(|b| {
                        raw.get(b..b.saturating_add(data.len())) == Some(data)
                            || matches!(p.body, PartType::Text(_) | PartType::Html(_))
                                && ascii_compatible(
                                    p.content_type().and_then(|c| c.attribute("charset")),
                                )
                    });
            // A file's body (not a text, which clamd's mail-format and phishing signatures
            // read in the message) that clamd may be sent the message without.
            let file = matches!(p.body, PartType::Binary(_) | PartType::InlineBinary(_))
                && !declared
                    .as_deref()
                    .is_some_and(|t| t.starts_with("text/") || t.starts_with("message/"));
            let encoding = match p.encoding {
                mail_parser::Encoding::Base64 => leave_out::Encoding::Base64,
                mail_parser::Encoding::QuotedPrintable => leave_out::Encoding::QuotedPrintable,
                mail_parser::Encoding::None => leave_out::Encoding::Verbatim,
            };
            // The body's end in the message, where its place is known.
            let end = base.map(|base| (base + p.offset_end as usize).min(raw.len()));
            let encoded = match (body, end) {
                (Some(b), Some(end)) if file => {
                    (b <= end && leave_out::clean(&raw[b..end], encoding, data)).then_some((b, end))
                }
                _ => None,
            };
            let clamd_reads = depth == 0
                && base == Some(0)
                && encoding != leave_out::Encoding::Verbatim
                && matches!(p.body, PartType::Text(_) | PartType::Html(_))
                && matches!(declared.as_deref(), Some("text/plain" | "text/html"))
                && ascii_compatible(p.content_type().and_then(|c| c.attribute("charset")))
                && body.zip(end).is_some_and(|(b, end)| {
                    let plain = plain.get_or_insert_with(|| plain_structure(m, raw));
                    plain.as_ref().is_some_and(|bounds| {
                        b <= end && leave_out::text_read_by_clamd(&raw[b..end], encoding, bounds)
                    })
                });
            let Some(contents) = self.contents(data) else {
                return;
            };
            let part = Part {
                name,
                other_names,
                declared,
                found: "mime",
                depth,
                containers: Vec::new(),
                verbatim,
                encoded,
                clamd_reads,
                contents,
            };
            if !self.add(part) {
                return;
            }
            // A file's base64 body, decoded to its exact bytes (no charset conversion, as for
            // text): the raw reading need not decode it again (see [`Collector::decoded_here`]).
            if p.encoding == mail_parser::Encoding::Base64
                && matches!(p.body, PartType::Binary(_) | PartType::InlineBinary(_))
            {
                if let (Some(b), Some(base)) = (body, base) {
                    let end = (base + p.offset_end as usize).min(raw.len());
                    self.base64_bodies.push((b, end));
                }
            }
        }
    }

    /// Whether the MIME tree decoded, as a file, exactly the base64 run at `raw[start..end]`
    /// (whole lines of base64 letters): the run is the whole of one such body, give or take
    /// white space around it, with padding only on its last line and whole groups of four —
    /// the same letters, which any decoder (mail-parser's, [`base64_lenient`]) turns into the
    /// same bytes, already kept. Not so without padding: mail-parser drops an unpadded last
    /// group (`inspection::eicar_in_base64_with_odd_line_lengths_and_no_padding`).
    pub(super) fn decoded_here(&self, raw: &[u8], start: usize, end: usize) -> bool {
        let run = &raw[start..end];
        let last_line = memchr::memrchr(b'\n', run).map_or(0, |i| i + 1);
        if memchr::memchr(b'=', &run[..last_line]).is_some() {
            return false;
        }
        let breaks = run.iter().filter(|&&c| c == b'\n' || c == b'\r').count();
        if !(run.len() - breaks).is_multiple_of(4) {
            return false;
        }
        let blank = |b: &[u8]| b.iter().all(u8::is_ascii_whitespace);
        self.base64_bodies.iter().any(|&(from, to)| {
            from <= start && end <= to && blank(&raw[from..start]) && blank(&raw[end..to])
        })
    }
}

/// Multipart levels, MIME parts and bytes a message may have for its text parts to be left to
/// clamd's own MIME parser (see [`plain_structure`]): far below clamd's defaults (MaxRecursion
/// 17, MaxFiles 10000, MaxScanSize 400 MB, MaxFileSize 100 MB), so that no clamd limit stops
/// its parser before it reaches them.
pub(super) const CLAMD_TEXT_LIMITS: (usize, usize, usize) = (8, 100, 16 << 20);

/// The boundaries of `m` (the top-level message, `raw`) when clamd's MIME parser reads its
/// structure as mail-parser did, so that a text part mail-parser found is one clamd decodes
/// too; None when that is not certain. Certain only: within [`CLAMD_TEXT_LIMITS`]; for a
/// message that does not start with `From ` (clamd reads such a file as an mbox, split at
/// its `From ` lines); with no part with two Content-Type or two Content-Transfer-Encoding
/// headers (parsers differ on which one counts); no Content-Type with a comment, an RFC 2231
/// parameter or an encoded word in it (parsers differ on those); every
/// Content-Transfer-Encoding one of the plain names; every multipart with exactly one
/// boundary, none of them inside another (clamd's `boundaryStart` finds a boundary anywhere
/// in a line starting with `-` or `(`); and every line clamd could take for a boundary one
/// of the delimiter lines mail-parser read, each multipart of n parts having exactly n
/// `--boundary` lines and one `--boundary--`: no stray boundary line anywhere (a decoy that
/// closes a multipart early for one parser only).
pub(super) fn plain_structure<'a>(
    m: &'a mail_parser::Message<'_>,
    raw: &[u8],
) -> Option<Vec<&'a [u8]>> {
    let b = boundaries(m, raw)?;
    let bounds: Vec<&[u8]> = b.iter().map(|(b, _)| *b).collect();
    let mut counts = vec![(0usize, 0usize); b.len()];
    for line in leave_out::lines(raw) {
        if !leave_out::boundary_like(line, &bounds) {
            continue;
        }
        let trimmed = line.trim_ascii_end();
        let at = trimmed.strip_prefix(b"--").and_then(|rest| {
            let (name, end) = match rest.strip_suffix(b"--") {
                Some(r) if bounds.contains(&r) => (r, true),
                _ => (rest, false),
            };
            bounds.iter().position(|b| *b == name).map(|i| (i, end))
        });
        match at {
            Some((i, false)) => counts[i].0 += 1,
            Some((i, true)) => counts[i].1 += 1,
            None => return None,
        }
    }
    let expected = b.iter().map(|&(_, n)| (n, 1));
    counts.iter().copied().eq(expected).then_some(bounds)
}

/// `m`'s multipart boundaries with their number of parts, when its headers are plain (see
/// [`plain_structure`]).
fn boundaries<'a>(m: &'a mail_parser::Message<'_>, raw: &[u8]) -> Option<Vec<(&'a [u8], usize)>> {
    use mail_parser::HeaderName;
    let (max_nesting, max_parts, max_bytes) = CLAMD_TEXT_LIMITS;
    if raw.len() > max_bytes || m.parts.len() > max_parts || raw.starts_with(b"From ") {
        return None;
    }
    let mut boundaries: Vec<(&[u8], usize)> = Vec::new();
    for p in &m.parts {
        let (mut types, mut encodings) = (0, 0);
        for h in p.headers() {
            let value = raw
                .get(h.offset_start as usize..h.offset_end as usize)
                .unwrap_or_default();
            match h.name {
                HeaderName::ContentType => {
                    types += 1;
                    if value.iter().any(|&c| c == b'(' || c == b'*')
                        || memchr::memmem::find(value, b"=?").is_some()
                    {
                        return None;
                    }
                }
                HeaderName::ContentTransferEncoding => {
                    encodings += 1;
                    let v = String::from_utf8_lossy(value).trim().to_ascii_lowercase();
                    if !matches!(
                        v.as_str(),
                        "7bit" | "8bit" | "binary" | "base64" | "quoted-printable"
                    ) {
                        return None;
                    }
                }
                _ => {}
            }
        }
        if types > 1 || encodings > 1 {
            return None;
        }
        if let PartType::Multipart(children) = &p.body {
            let attrs = p
                .content_type()
                .and_then(|c| c.attributes())
                .unwrap_or_default();
            let mut named = attrs
                .iter()
                .filter(|a| a.name.eq_ignore_ascii_case("boundary"));
            match (named.next(), named.next()) {
                (Some(b), None) if !b.value.is_empty() => {
                    boundaries.push((b.value.as_bytes(), children.len()))
                }
                _ => return None,
            }
        }
    }
    for (i, a) in boundaries.iter().enumerate() {
        if boundaries
            .iter()
            .enumerate()
            .any(|(j, b)| i != j && memchr::memmem::find(b.0, a.0).is_some())
        {
            return None;
        }
    }
    // Multipart nesting, from the root.
    let mut stack = vec![(0usize, 0usize)];
    while let Some((id, level)) = stack.pop() {
        if level > max_nesting {
            return None;
        }
        if let Some(PartType::Multipart(children)) = m.parts.get(id).map(|p| &p.body) {
            stack.extend(children.iter().map(|&c| (c as usize, level + 1)));
        }
    }
    Some(boundaries)
}

/// The names a MIME part declares besides `first` (mail-parser's `attachment_name`: the last
/// Content-Disposition's first `filename`, else the last Content-Type's first `name`): every
/// `filename` and `name` parameter of every Content-Disposition and Content-Type header, as
/// mail-parser decoded them (RFC 2231 `name*=`/continuations, RFC 2047 words), each once.
/// Mail clients differ in which one they show and save, so the banned-file rules judge them
/// all. mail-parser keeps every header and every parameter (a repeated one too) in order, so
/// its parsed headers suffice and the raw header bytes need not be read again.
pub(super) fn other_names(p: &mail_parser::MessagePart<'_>, first: Option<&str>) -> Vec<String> {
    use mail_parser::{HeaderName, HeaderValue};
    let mut out: Vec<String> = Vec::new();
    for h in p.headers() {
        if !matches!(
            h.name,
            HeaderName::ContentDisposition | HeaderName::ContentType
        ) {
            continue;
        }
        let HeaderValue::ContentType(ct) = &h.value else {
            continue;
        };
        for a in ct.attributes().unwrap_or_default() {
            // `filename` or `name` (either header: clients take both from both), and their
            // RFC 2231 forms should a `*` be left on the attribute's name.
            let n = a.name.split('*').next().unwrap_or("");
            let is_name = n.eq_ignore_ascii_case("filename") || n.eq_ignore_ascii_case("name");
            let v = a.value.as_ref();
            if is_name && Some(v) != first && !out.iter().any(|o| o == v) {
                out.push(v.to_owned());
            }
        }
    }
    out
}

/// The stack mail-parser runs on when a message nests messages: 1,000 levels fit with room
/// to spare in a debug build (a 2 MiB stack does not hold them); only the pages used are
/// touched.
pub(super) const PARSER_STACK: usize = 16 << 20;

/// A charset that writes ASCII as ASCII, one byte each (or none given: us-ascii).
pub(super) fn ascii_compatible(charset: Option<&str>) -> bool {
    let Some(c) = charset else {
        return true;
    };
    let c = c.trim().to_ascii_lowercase();
    matches!(c.as_str(), "us-ascii" | "ascii" | "utf-8" | "utf8")
        || ["iso-8859-", "iso8859-", "windows-125", "cp125", "latin"]
            .iter()
            .any(|p| c.starts_with(p))
}
