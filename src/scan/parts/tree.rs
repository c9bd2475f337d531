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
            let encoded = match (body, base) {
                (Some(b), Some(base)) if file => {
                    let end = (base + p.offset_end as usize).min(raw.len());
                    let encoding = match p.encoding {
                        mail_parser::Encoding::Base64 => leave_out::Encoding::Base64,
                        mail_parser::Encoding::QuotedPrintable => {
                            leave_out::Encoding::QuotedPrintable
                        }
                        mail_parser::Encoding::None => leave_out::Encoding::Verbatim,
                    };
                    (b <= end && leave_out::clean(&raw[b..end], encoding, data)).then_some((b, end))
                }
                _ => None,
            };
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
