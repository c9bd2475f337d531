//! postsift's own MIME walk: every leaf part of a message decoded (base64, quoted-printable,
//! 8bit/binary; nested message/rfc822 recursed), so that the virus scanner sees the files a
//! mail client would show and a verdict does not depend on clamd parsing the MIME structure
//! the same way as the reader's mail client.
//!
//! Parsers disagree on hostile structure (two Content-Type headers, two boundary parameters,
//! a comment inside a header name), so the walk takes two readings and keeps both:
//! - mail-parser's MIME tree (mail-parser 0.11: the newest release that builds with the
//!   machine's Rust; it decodes base64 leniently and follows RFC 2231 names);
//! - a structure-blind reading of the raw lines: every run of base64-looking lines and every
//!   uuencoded block (`begin NNN name` … `end`) anywhere in the message is decoded on its own,
//!   whatever the headers around it claim. This finds an attachment hidden behind a decoy
//!   boundary that mail-parser (or clamd) followed instead of the real one.
//!
//! Zip archives (also zip in zip, up to `max_depth`) are listed and their members decompressed,
//! each a part of its own with `container = "zip"`, so that banned-file rules see the names
//! inside; an encrypted member cannot be read and stops the walk (UNCHECKED), and a member is
//! decompressed only as far as the limits allow — a zip bomb costs at most the decoded-bytes
//! quota. Office documents (OOXML are zips) are kept whole, not listed. Other archive formats
//! are not opened yet (clamd opens tar, gzip and the rest itself when it scans each part).
//!
//! Identical decoded contents are kept once. Limits (parts, decoded bytes, nesting, expansion
//! ratio) stop the walk; the report says which limit was hit.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// One decoded leaf part.
#[derive(Debug, Clone)]
pub struct Part {
    /// The declared file name (Content-Disposition `filename=` or Content-Type `name=`).
    pub name: Option<String>,
    /// The declared MIME type, lower case.
    pub declared: Option<String>,
    /// Where it was found: "mime" (the MIME tree) or "raw" (a base64 / uuencoded block found
    /// in the raw lines), with the nesting depth of message/rfc822.
    pub found: &'static str,
    pub depth: usize,
    /// The archive it is a member of (`zip`, `tar`, …); None straight in the message.
    pub container: Option<String>,
    /// The decoded contents are the message's own bytes, unchanged (a 7bit/8bit/binary part):
    /// clamd's scan of the whole message saw them as they are.
    pub verbatim: bool,
    pub data: Vec<u8>,
}

impl Part {
    /// A short name for the log: the file name, else the type.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .or_else(|| self.declared.clone())
            .unwrap_or_else(|| format!("part ({} bytes)", self.data.len()))
    }
}

/// How far the walk may go.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Leaf parts kept at most.
    pub max_parts: usize,
    /// Decoded bytes kept at most, all parts together.
    pub max_bytes: usize,
    /// message/rfc822 nesting followed at most.
    pub max_depth: usize,
}

/// Why the walk could not look at everything: the message is then UNCHECKED, and `[parts]`
/// says per reason what that leads to (`on_max_parts`, …). Also the `reason` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// More parts than `max_parts`.
    Parts,
    /// More decoded bytes than `max_decoded_bytes`.
    Bytes,
    /// message/rfc822 or archives nested deeper than `max_depth`.
    Depth,
    /// An archive member expanding more than `MAX_RATIO` times (a zip bomb).
    Ratio,
    /// An encrypted archive member: its name is known, its contents are not.
    Encrypted,
}

impl LimitKind {
    pub const ALL: &'static [&'static str] = &["parts", "bytes", "depth", "ratio", "encrypted"];

    pub fn label(self) -> &'static str {
        match self {
            LimitKind::Parts => "parts",
            LimitKind::Bytes => "bytes",
            LimitKind::Depth => "depth",
            LimitKind::Ratio => "ratio",
            LimitKind::Encrypted => "encrypted",
        }
    }
}

/// The limit that stopped the walk, with the detail for the log and the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub kind: LimitKind,
    pub detail: String,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// What the walk found.
#[derive(Debug, Default)]
pub struct Walk {
    pub parts: Vec<Part>,
    /// The limit that stopped the walk early, if one did.
    pub limit: Option<Stop>,
    /// mail-parser gave up (panicked) on this message: only the raw reading was taken.
    pub parser_failed: bool,
}

/// Smallest decoded block worth a scan from the raw reading (shorter runs are mostly words
/// that happen to use only base64 letters).
const MIN_RAW_BLOCK: usize = 32;

pub fn walk(raw: &[u8], limits: &Limits) -> Walk {
    let mut w = Collector {
        walk: Walk::default(),
        seen: HashSet::new(),
        bytes: 0,
        limits: *limits,
    };
    // mail-parser 0.11 panics on some real messages (e.g. SpamAssassin's nice-mime9 test
    // mail: "Invalid part ID"); such a message keeps the structure-blind reading below.
    let tree = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut c = Collector {
            walk: Walk::default(),
            seen: HashSet::new(),
            bytes: 0,
            limits: *limits,
        };
        if let Some(m) = MessageParser::default().parse(raw) {
            c.tree(&m, 0);
        }
        c
    }));
    match tree {
        Ok(c) => w = c,
        Err(_) => w.walk.parser_failed = true,
    }
    raw_blocks(raw, &mut w);
    // Archives found so far, and in their members, in turn (zip in zip).
    let mut i = 0;
    while i < w.walk.parts.len() && !w.full() {
        if is_zip_archive(&w.walk.parts[i].data) {
            let depth = w.walk.parts[i].depth + 1;
            let data = std::mem::take(&mut w.walk.parts[i].data);
            unzip(&data, depth, &mut w);
            w.walk.parts[i].data = data;
        }
        i += 1;
    }
    w.walk
}

struct Collector {
    walk: Walk,
    seen: HashSet<u64>,
    bytes: usize,
    limits: Limits,
}

impl Collector {
    fn full(&self) -> bool {
        self.walk.limit.is_some()
    }

    /// Stops the walk for `kind`, unless it stopped already (the first reason is kept).
    fn stop(&mut self, kind: LimitKind, detail: String) {
        if self.walk.limit.is_none() {
            self.walk.limit = Some(Stop { kind, detail });
        }
    }

    /// Keeps a part unless its contents were seen already; false once a limit is hit.
    fn add(&mut self, part: Part) -> bool {
        if self.full() {
            return false;
        }
        // An empty part is kept only when it has a name (an archive member that could not be
        // read still has a name for the banned-file rules).
        if part.data.is_empty() && part.name.is_none() {
            return true;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        part.data.hash(&mut h);
        part.name.hash(&mut h);
        if !self.seen.insert(h.finish()) {
            return true;
        }
        if self.walk.parts.len() >= self.limits.max_parts {
            self.stop(
                LimitKind::Parts,
                format!("more than {} parts", self.limits.max_parts),
            );
            return false;
        }
        if self.bytes + part.data.len() > self.limits.max_bytes {
            self.stop(
                LimitKind::Bytes,
                format!("more than {} decoded bytes", self.limits.max_bytes),
            );
            return false;
        }
        self.bytes += part.data.len();
        self.walk.parts.push(part);
        true
    }

    fn tree(&mut self, m: &mail_parser::Message<'_>, depth: usize) {
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
        for p in &m.parts {
            let declared = p.content_type().map(|c| match c.subtype() {
                Some(sub) => format!("{}/{}", c.ctype(), sub).to_ascii_lowercase(),
                None => c.ctype().to_ascii_lowercase(),
            });
            let name = p.attachment_name().map(str::to_owned);
            // mail-parser borrows a part's bytes from the message when it decoded nothing.
            let (data, verbatim) = match &p.body {
                PartType::Binary(b) | PartType::InlineBinary(b) => {
                    (b.to_vec(), matches!(b, std::borrow::Cow::Borrowed(_)))
                }
                PartType::Text(t) | PartType::Html(t) => (
                    t.as_bytes().to_vec(),
                    matches!(t, std::borrow::Cow::Borrowed(_)),
                ),
                PartType::Message(inner) => {
                    self.tree(inner, depth + 1);
                    continue;
                }
                PartType::Multipart(_) => continue,
            };
            let part = Part {
                name,
                declared,
                found: "mime",
                depth,
                container: None,
                verbatim,
                data,
            };
            if !self.add(part) {
                return;
            }
        }
    }
}

/// Members decompressed beyond this many times their compressed size stop the walk.
const MAX_RATIO: u64 = 100;

/// A zip archive that is not an Office document (OOXML files are zips with a content-types
/// member; they are judged whole, by the sniffed type).
fn is_zip_archive(data: &[u8]) -> bool {
    data.starts_with(b"PK\x03\x04") && !contains(data, b"[Content_Types].xml")
}

/// Whether `needle` occurs in `hay` (also used by the banned-file sniffing).
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Lists a zip archive and adds each member as a part, decompressed within the limits.
fn unzip(data: &[u8], depth: usize, w: &mut Collector) {
    if depth > w.limits.max_depth {
        w.stop(
            LimitKind::Depth,
            format!("archives nested deeper than {}", w.limits.max_depth),
        );
        return;
    }
    let Ok(mut zip) = zip::ZipArchive::new(std::io::Cursor::new(data)) else {
        // Not a readable zip after all: clamd still scans the bytes.
        return;
    };
    for i in 0..zip.len() {
        if w.full() {
            return;
        }
        let Ok(meta) = zip.by_index_raw(i) else {
            continue;
        };
        if meta.is_dir() {
            continue;
        }
        let full = meta.name().map(|n| n.into_owned()).unwrap_or_default();
        let name = full.rsplit('/').next().unwrap_or("").to_owned();
        let (encrypted, packed) = (meta.encrypted(), meta.compressed_size());
        drop(meta);
        let named = |data: Vec<u8>| Part {
            name: (!name.is_empty()).then(|| name.clone()),
            declared: None,
            found: "zip",
            depth,
            container: Some("zip".into()),
            verbatim: false,
            data,
        };
        if encrypted {
            // Its name is visible, its contents are not: keep the name (for the banned-file
            // rules) and say why the message is not fully checked.
            w.add(named(Vec::new()));
            w.stop(
                LimitKind::Encrypted,
                format!("encrypted archive member {name}"),
            );
            return;
        }
        let room = w.limits.max_bytes.saturating_sub(w.bytes) as u64;
        let ratio_cap = packed.max(1).saturating_mul(MAX_RATIO).max(1 << 20);
        let cap = room.min(ratio_cap);
        let Ok(file) = zip.by_index(i) else {
            continue;
        };
        let mut out = Vec::new();
        // One byte more than allowed tells that the member goes on past the cap.
        let read = std::io::Read::read_to_end(&mut std::io::Read::take(file, cap + 1), &mut out);
        if read.is_err() {
            continue;
        }
        if out.len() as u64 > cap {
            if cap == ratio_cap {
                w.stop(
                    LimitKind::Ratio,
                    format!("archive member {name} expands more than {MAX_RATIO} times"),
                );
            } else {
                w.stop(
                    LimitKind::Bytes,
                    format!("more than {} decoded bytes", w.limits.max_bytes),
                );
            }
            return;
        }
        if !w.add(named(out)) {
            return;
        }
    }
}

/// The structure-blind reading: base64 runs and uuencoded blocks in the raw lines.
fn raw_blocks(raw: &[u8], w: &mut Collector) {
    let mut lines = raw
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut run: Vec<u8> = Vec::new();
    let flush = |run: &mut Vec<u8>, w: &mut Collector| {
        if run.len() >= MIN_RAW_BLOCK * 4 / 3 {
            let data = base64_lenient(run);
            if data.len() >= MIN_RAW_BLOCK {
                w.add(Part {
                    name: None,
                    declared: None,
                    found: "raw",
                    depth: 0,
                    container: None,
                    verbatim: false,
                    data,
                });
            }
        }
        run.clear();
    };
    while let Some(line) = lines.next() {
        if w.full() {
            return;
        }
        if line.starts_with(b"begin ") && is_uu_begin(line) {
            flush(&mut run, w);
            let name =
                String::from_utf8_lossy(line.splitn(3, |&b| b == b' ').nth(2).unwrap_or(b""))
                    .trim()
                    .to_owned();
            let mut data = Vec::new();
            for l in lines.by_ref() {
                if l == b"end" || l.starts_with(b"end ") {
                    break;
                }
                uudecode_line(l, &mut data);
            }
            w.add(Part {
                name: (!name.is_empty()).then_some(name),
                declared: None,
                found: "raw",
                depth: 0,
                container: None,
                verbatim: false,
                data,
            });
            continue;
        }
        if is_base64_line(line) {
            run.extend_from_slice(line);
        } else {
            flush(&mut run, w);
        }
    }
    flush(&mut run, w);
}

/// A line that could belong to a base64 body: base64 letters only (and `=` padding at the
/// end), at least 16 of them, no spaces.
fn is_base64_line(line: &[u8]) -> bool {
    let body = line
        .strip_suffix(b"==")
        .or_else(|| line.strip_suffix(b"="))
        .unwrap_or(line);
    line.len() >= 16
        && body
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn is_uu_begin(line: &[u8]) -> bool {
    let mut words = line.split(|&b| b == b' ');
    words.next() == Some(b"begin")
        && words.next().is_some_and(|mode| {
            !mode.is_empty() && mode.len() <= 4 && mode.iter().all(|b| (b'0'..=b'7').contains(b))
        })
}

/// Decodes base64 ignoring everything outside the alphabet and stopping at padding, so that
/// broken padding, odd line lengths and junk do not lose the rest (as mail clients do).
pub fn base64_lenient(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in input {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => continue,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// One uuencoded line: a length character, then groups of four characters for three bytes.
fn uudecode_line(line: &[u8], out: &mut Vec<u8>) {
    let Some((&len, rest)) = line.split_first() else {
        return;
    };
    let n = (len.wrapping_sub(b' ') & 0x3f) as usize;
    let mut got = Vec::with_capacity(n + 3);
    for quad in rest.chunks(4) {
        let v: Vec<u32> = quad
            .iter()
            .map(|&c| (c.wrapping_sub(b' ') & 0x3f) as u32)
            .collect();
        let v = |i: usize| v.get(i).copied().unwrap_or(0);
        let w = (v(0) << 18) | (v(1) << 12) | (v(2) << 6) | v(3);
        got.extend_from_slice(&[(w >> 16) as u8, (w >> 8) as u8, w as u8]);
    }
    got.truncate(n);
    out.extend_from_slice(&got);
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_parts: 100,
        max_bytes: 1 << 20,
        max_depth: 5,
    };

    fn b64(data: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in data.chunks(3) {
            let w = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    s.push(A[(w >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }

    #[test]
    fn lenient_base64_survives_bad_padding_and_junk() {
        let data = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
        let enc = b64(data);
        assert_eq!(base64_lenient(enc.as_bytes()), data);
        let broken = format!(
            "{}\r\n{}*?#\n{}",
            &enc[..10],
            &enc[10..50],
            enc[50..].trim_end_matches('=')
        );
        assert_eq!(base64_lenient(broken.as_bytes()), data);
    }

    #[test]
    fn a_decoy_boundary_does_not_hide_the_attachment() {
        // Two boundary parameters: a reader following the first sees only the text part.
        let file = b"MZ\x90\0this is a pretend executable with enough bytes to count";
        let msg = format!(
            "Content-Type: multipart/mixed; boundary=\"X\"; boundary=\"Y\"\r\n\r\n--X\r\nContent-Type: text/plain\r\n\r\nhello\r\n--X--\r\n--Y\r\nContent-Type: application/octet-stream; name=a.exe\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--Y--\r\n",
            b64(file)
        );
        let w = walk(msg.as_bytes(), &LIMITS);
        assert!(w.parts.iter().any(|p| p.data == file), "{:?}", w.parts);
    }

    #[test]
    fn uuencoded_block_in_a_text_body_is_decoded() {
        let msg = b"Subject: uu\r\n\r\nsee attached\r\nbegin 644 cat.txt\r\n#0V%T\r\n`\r\nend\r\n";
        let w = walk(msg, &LIMITS);
        assert!(
            w.parts
                .iter()
                .any(|p| p.data == b"Cat" && p.name.as_deref() == Some("cat.txt")),
            "{:?}",
            w.parts
        );
    }

    /// A zip with the given (name, contents) members, stored or deflated.
    fn zip_of(members: &[(&str, &[u8])], deflate: bool) -> Vec<u8> {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let method = if deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        for (name, data) in members {
            let opts = zip::write::SimpleFileOptions::default().compression_method(method);
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn mail_with(att: &[u8]) -> Vec<u8> {
        format!(
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/zip; name=a.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
            b64(att)
        )
        .into_bytes()
    }

    #[test]
    fn zip_members_and_zip_in_zip_become_parts() {
        let inner = zip_of(&[("deep/tool.exe", b"MZ inner program bytes")], true);
        let outer = zip_of(
            &[("readme.txt", b"read me please"), ("inner.zip", &inner)],
            true,
        );
        let w = walk(&mail_with(&outer), &LIMITS);
        let names: Vec<(Option<&str>, Option<&str>, usize)> = w
            .parts
            .iter()
            .map(|p| (p.name.as_deref(), p.container.as_deref(), p.depth))
            .collect();
        assert!(
            names.contains(&(Some("readme.txt"), Some("zip"), 1)),
            "{names:?}"
        );
        assert!(
            names.contains(&(Some("tool.exe"), Some("zip"), 2)),
            "{names:?}"
        );
        assert!(w.parts.iter().any(|p| p.data == b"MZ inner program bytes"));
        assert_eq!(w.limit, None);
    }

    #[test]
    fn a_zip_bomb_stops_at_the_ratio_and_costs_little() {
        // 64 MiB of zeros deflate to about 64 KiB.
        let zeros = vec![0u8; 64 << 20];
        let bomb = zip_of(&[("zeros.bin", &zeros)], true);
        assert!(bomb.len() < 1 << 20);
        let w = walk(
            &mail_with(&bomb),
            &Limits {
                max_bytes: 32 << 20,
                ..LIMITS
            },
        );
        assert!(
            w.limit.as_ref().is_some_and(
                |l| l.kind == LimitKind::Ratio && l.detail.contains("expands more than")
            ),
            "{:?}",
            w.limit
        );
        let kept: usize = w.parts.iter().map(|p| p.data.len()).sum();
        assert!(kept < 2 * bomb.len() + (1 << 20), "{kept} bytes kept");
    }

    #[test]
    fn limits_stop_the_walk_and_say_why() {
        let mut msg = String::from("Content-Type: multipart/mixed; boundary=b\r\n\r\n");
        for i in 0..20 {
            msg.push_str(&format!(
                "--b\r\nContent-Type: text/plain\r\n\r\npart number {i}\r\n"
            ));
        }
        msg.push_str("--b--\r\n");
        let w = walk(
            msg.as_bytes(),
            &Limits {
                max_parts: 5,
                ..LIMITS
            },
        );
        assert_eq!(w.parts.len(), 5);
        assert_eq!(
            w.limit,
            Some(Stop {
                kind: LimitKind::Parts,
                detail: "more than 5 parts".into()
            })
        );
    }
}
