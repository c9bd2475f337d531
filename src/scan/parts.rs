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
//! Identical decoded contents are kept once. Limits (parts, decoded bytes, nesting) stop the
//! walk; the report says which limit was hit. Archives are not opened yet (clamd opens zip, tar
//! and the rest itself when it scans each part).

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

/// What the walk found.
#[derive(Debug, Default)]
pub struct Walk {
    pub parts: Vec<Part>,
    /// The limit that stopped the walk early, if one did.
    pub limit: Option<String>,
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

    /// Keeps a part unless its contents were seen already; false once a limit is hit.
    fn add(&mut self, part: Part) -> bool {
        if self.full() {
            return false;
        }
        if part.data.is_empty() {
            return true;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        part.data.hash(&mut h);
        if !self.seen.insert(h.finish()) {
            return true;
        }
        if self.walk.parts.len() >= self.limits.max_parts {
            self.walk.limit = Some(format!("more than {} parts", self.limits.max_parts));
            return false;
        }
        if self.bytes + part.data.len() > self.limits.max_bytes {
            self.walk.limit = Some(format!("more than {} decoded bytes", self.limits.max_bytes));
            return false;
        }
        self.bytes += part.data.len();
        self.walk.parts.push(part);
        true
    }

    fn tree(&mut self, m: &mail_parser::Message<'_>, depth: usize) {
        if depth > self.limits.max_depth {
            self.walk.limit = Some(format!(
                "message/rfc822 nested deeper than {}",
                self.limits.max_depth
            ));
            return;
        }
        for p in &m.parts {
            let declared = p.content_type().map(|c| match c.subtype() {
                Some(sub) => format!("{}/{}", c.ctype(), sub).to_ascii_lowercase(),
                None => c.ctype().to_ascii_lowercase(),
            });
            let name = p.attachment_name().map(str::to_owned);
            let data = match &p.body {
                PartType::Binary(b) | PartType::InlineBinary(b) => b.to_vec(),
                PartType::Text(t) | PartType::Html(t) => t.as_bytes().to_vec(),
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
                data,
            };
            if !self.add(part) {
                return;
            }
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
        assert_eq!(w.limit.as_deref(), Some("more than 5 parts"));
    }
}
