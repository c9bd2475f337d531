//! The structure-blind reading (base64 runs and uuencoded blocks anywhere in the raw lines)
//! and the pre-scan of what mail-parser could build (nested messages, boundary lines).

use super::*;

/// Smallest decoded block worth a scan from the raw reading (shorter runs are mostly words
/// that happen to use only base64 letters).
pub(super) const MIN_RAW_BLOCK: usize = 32;

/// The structure-blind reading: base64 runs and uuencoded blocks in the raw lines.
pub(super) fn raw_blocks(raw: &[u8], w: &mut Collector) {
    // Lines as (start, end) in `raw`, without their line break.
    let mut at = 0;
    let mut lines = std::iter::from_fn(|| {
        if at > raw.len() {
            return None;
        }
        let start = at;
        let nl = memchr::memchr(b'\n', &raw[start..]).map_or(raw.len(), |i| start + i);
        at = nl + 1;
        let end = if nl > start && raw[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        Some((start, end))
    });
    // The current run of base64 lines: from the start of its first line to the end of its
    // last (the line breaks between are no base64 letters: the decoder skips them).
    let mut run: Option<(usize, usize)> = None;
    // Only runs after the word "base64" (any case, anywhere: a Content-Transfer-Encoding
    // header, however mangled) are decoded: no mail client decodes base64 it was not told of,
    // and lines of letters in a plain text (smtp-source's XXXX…) are no attachment.
    let mut armed = false;
    let flush = |run: &mut Option<(usize, usize)>, w: &mut Collector, armed: bool| {
        let Some((start, end)) = run.take() else {
            return;
        };
        // A body the MIME tree decoded already gives the same bytes again: not decoded twice.
        if !armed || end - start < MIN_RAW_BLOCK * 4 / 3 || w.decoded_here(raw, start, end) {
            return;
        }
        let data = base64_lenient(&raw[start..end]);
        if data.len() >= MIN_RAW_BLOCK {
            if let Some(contents) = w.contents(&data) {
                w.add(Part {
                    name: None,
                    other_names: Vec::new(),
                    declared: None,
                    found: "raw",
                    depth: 0,
                    containers: Vec::new(),
                    verbatim: false,
                    // Not left out of what clamd is sent: a run may stand inside a body it
                    // decodes otherwise (junk around it), and hidden ones are no cost worth it.
                    encoded: None,
                    clamd_reads: false,
                    contents,
                });
            }
        }
    };
    while let Some((start, end)) = lines.next() {
        if w.full() {
            return;
        }
        let line = &raw[start..end];
        if line.starts_with(b"begin ") && is_uu_begin(line) {
            flush(&mut run, w, armed);
            let name =
                String::from_utf8_lossy(line.splitn(3, |&b| b == b' ').nth(2).unwrap_or(b""))
                    .trim()
                    .to_owned();
            let mut data = Vec::new();
            // The block, `begin` to `end` lines included, when it is well-formed and ends.
            let mut block = Some((start, end));
            let mut ended = false;
            for (s, e) in lines.by_ref() {
                let l = &raw[s..e];
                if l == b"end" || l.starts_with(b"end ") {
                    block = block.map(|(b, _)| (b, e));
                    ended = true;
                    break;
                }
                if !leave_out::uu_line(l) {
                    block = None;
                }
                uudecode_line(l, &mut data);
            }
            let Some(contents) = w.contents(&data) else {
                return;
            };
            w.add(Part {
                name: (!name.is_empty()).then_some(name),
                other_names: Vec::new(),
                declared: None,
                found: "raw",
                depth: 0,
                containers: Vec::new(),
                verbatim: false,
                encoded: block.filter(|_| ended),
                clamd_reads: false,
                contents,
            });
            continue;
        }
        if is_base64_line(line) {
            run = Some((run.map_or(start, |(s, _)| s), end));
        } else {
            flush(&mut run, w, armed);
            armed = armed || line.windows(6).any(|x| x.eq_ignore_ascii_case(b"base64"));
        }
    }
    flush(&mut run, w, armed);
}

/// How many message/rfc822 parts mail-parser could nest in `raw`, at most (a cheap upper
/// bound, read before it runs): every `message` type token (`message` followed by `/` or a
/// comment, any case), every boundary line when a digest is declared (its parts default to
/// message/rfc822), and the same within every transfer-encoded body, decoded as mail-parser
/// would (base64 through padding and white space; quoted-printable), three encodings deep as
/// mail-parser goes. Counting stops past [`MAX_NESTED_MESSAGES`].
pub fn nested_messages(raw: &[u8]) -> usize {
    shape(raw, usize::MAX).messages
}

/// What mail-parser could build from a message, at most (see [`shape`]).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Shape {
    /// message/rfc822 (or digest) parts it could nest ([`nested_messages`]).
    pub messages: usize,
    /// Boundary lines (lines that start `--` and go on), in the message and in the
    /// transfer-encoded bodies it would parse as messages: every MIME part but the first
    /// follows one, so a message with at most `max_parts` of them cannot build more parts.
    pub delimiters: usize,
    /// Boundary lines that open a multipart container (not counted in `delimiters`): each
    /// costs mail-parser a node of its tree all the same.
    pub containers: usize,
}

/// What mail-parser's tree of a message holds at most, as measured (release, `postsift scan`):
/// about 2 KiB a multipart container (30,000 nested: 61 MB), 400 bytes a leaf part (100,000:
/// 39 MiB), plus the nested messages' nodes.
pub const TREE_CONTAINER_MEMORY: usize = 2 << 10;
pub const TREE_PART_MEMORY: usize = 512;

impl Shape {
    /// The memory the MIME tree is taken to hold (from `server.max_memory`, while it lives).
    pub fn tree_memory(&self) -> usize {
        self.containers
            .saturating_add(self.messages)
            .saturating_mul(TREE_CONTAINER_MEMORY)
            .saturating_add(self.delimiters.saturating_mul(TREE_PART_MEMORY))
    }
}

/// [`nested_messages`] and the boundary lines, read in one pass before mail-parser runs, so
/// that a tree of 100,000 parts (each holding its headers) is not built only to be cut at
/// `max_parts`. Counting boundary lines stops past `max_delimiters`.
pub fn shape(raw: &[u8], max_delimiters: usize) -> Shape {
    let mut s = Shape::default();
    shape_at(raw, 0, max_delimiters, &mut s);
    s
}

/// Boundary lines that open a leaf part: lines that start `--` and go on (a boundary needs a
/// character), not closing ones (ending `--`), and not followed by a header section that
/// declares a multipart (a container is not counted against `max_parts`: a multipart nested
/// 100,000 deep holding one text is walked). Counting stops just past `max`. Each header
/// section is read up to the next `--` line at most, so the whole costs one pass.
pub(super) fn delimiter_lines(raw: &[u8], max: usize, containers: &mut usize) -> usize {
    let mut n = 0;
    let mut lines = std::iter::once(0)
        .filter(|_| raw.starts_with(b"--"))
        .chain(memchr::memmem::find_iter(raw, b"\n--").map(|i| i + 1))
        .peekable();
    while let Some(at) = lines.next() {
        let line_end = memchr::memchr(b'\n', &raw[at..]).map_or(raw.len(), |i| at + i + 1);
        let line = raw[at..line_end].trim_ascii_end();
        if line.len() < 3
            || line[2].is_ascii_whitespace()
            || (line.len() > 3 && line.ends_with(b"--"))
        {
            continue;
        }
        let next = lines.peek().copied().unwrap_or(raw.len()).max(line_end);
        let header = &raw[line_end..next];
        let blank = [&b"\n\r\n"[..], b"\n\n"]
            .iter()
            .filter_map(|b| memchr::memmem::find(header, b))
            .min();
        let header = &header[..blank.unwrap_or(header.len())];
        if find_ci(header, b"multipart") {
            *containers += 1;
            continue;
        }
        n += 1;
        if n > max {
            break;
        }
    }
    n
}

/// mail-parser parses a transfer-encoded message/rfc822 body from its decoded copy, this
/// many encodings deep (its MAX_NESTED_ENCODED).
pub(super) const ENCODED_LEVELS: usize = 3;

pub(super) fn shape_at(raw: &[u8], level: usize, max_delimiters: usize, s: &mut Shape) {
    // Without a multipart type, no boundary is looked for.
    if s.delimiters <= max_delimiters && find_ci(raw, b"multipart") {
        s.delimiters += delimiter_lines(raw, max_delimiters - s.delimiters, &mut s.containers);
    }
    let mut counts = Shape { messages: 0, ..*s };
    s.messages += nested_at(raw, level, &mut |decoded, level| {
        let before = counts.messages;
        shape_at(decoded, level, max_delimiters, &mut counts);
        counts.messages - before
    });
    s.delimiters = counts.delimiters;
    s.containers = counts.containers;
}

pub(super) fn nested_at(
    raw: &[u8],
    level: usize,
    inner: &mut dyn FnMut(&[u8], usize) -> usize,
) -> usize {
    let mut n = message_tokens(raw);
    if find_ci(raw, b"digest") {
        n += raw
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"--"))
            .count();
    }
    // No message part: nothing is parsed from a decoded body either.
    if n == 0 || n > MAX_NESTED_MESSAGES || level >= ENCODED_LEVELS {
        return n;
    }
    // Runs of lines mail-parser's base64 decoder would read: base64 letters, padding and white
    // space only (blank lines included).
    let b64_line = |l: &[u8]| {
        l.iter()
            .all(|&b| BASE64[b as usize] < PAD || matches!(b, b'=' | b' ' | b'\t' | b'\r'))
    };
    let mut start = None;
    let mut at = 0;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let end = at + line.len();
        match (b64_line(line.strip_suffix(b"\n").unwrap_or(line)), start) {
            (true, None) => start = Some(at),
            (false, Some(s)) => {
                n += inner(&base64_through(&raw[s..at]), level + 1);
                start = None;
            }
            _ => {}
        }
        if n > MAX_NESTED_MESSAGES {
            return n;
        }
        at = end;
    }
    if let Some(s) = start {
        n += inner(&base64_through(&raw[s..]), level + 1);
    }
    if n <= MAX_NESTED_MESSAGES && find_ci(raw, b"quoted-printable") {
        n += inner(&qp_lenient(raw), level + 1);
    }
    n
}

/// `message` tokens as a Content-Type's type: `message`, any case, then `/` or a comment after
/// optional white space.
pub(super) fn message_tokens(raw: &[u8]) -> usize {
    let mut n = 0;
    let mut at = 0;
    while let Some(i) = memchr::memchr2(b'm', b'M', &raw[at..]) {
        let i = at + i;
        at = i + 1;
        if raw.len() - i < 7 || !raw[i..i + 7].eq_ignore_ascii_case(b"message") {
            continue;
        }
        let next = raw[i + 7..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .copied();
        if matches!(next, Some(b'/' | b'(')) {
            n += 1;
            if n > MAX_NESTED_MESSAGES {
                break;
            }
        }
    }
    n
}

/// Whether `needle` (lower case ASCII) is in `hay`, any case.
pub(super) fn find_ci(hay: &[u8], needle: &[u8]) -> bool {
    let first = needle[0];
    let mut at = 0;
    while let Some(i) = memchr::memchr2(first, first.to_ascii_uppercase(), &hay[at..]) {
        let i = at + i;
        if hay
            .get(i..i + needle.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(needle))
        {
            return true;
        }
        at = i + 1;
    }
    false
}

/// base64 as mail-parser decodes a body: letters outside the alphabet skipped, and padding
/// ending a group without ending the decoding.
pub(super) fn base64_through(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let (mut acc, mut n) = (0u32, 0u8);
    for &c in input {
        let v = BASE64[c as usize];
        if v < PAD {
            acc = acc << 6 | u32::from(v);
            n += 1;
            if n == 4 {
                out.extend_from_slice(&acc.to_be_bytes()[1..]);
                (acc, n) = (0, 0);
            }
        } else if c == b'=' && n >= 2 {
            let bytes = (acc << (6 * (4 - u32::from(n)))).to_be_bytes();
            out.extend_from_slice(&bytes[1..usize::from(n)]);
            (acc, n) = (0, 0);
        }
    }
    out
}

/// Quoted-printable decoded leniently: `=XX` is the byte, `=` at a line's end joins lines,
/// anything else stays.
pub(super) fn qp_lenient(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'=' {
            match (input.get(i + 1), input.get(i + 2)) {
                (Some(&a), Some(&b)) if hex(a).is_some() && hex(b).is_some() => {
                    out.push(hex(a).unwrap_or(0) << 4 | hex(b).unwrap_or(0));
                    i += 3;
                    continue;
                }
                (Some(b'\n'), _) => {
                    i += 2;
                    continue;
                }
                (Some(b'\r'), Some(b'\n')) => {
                    i += 3;
                    continue;
                }
                _ => {}
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

/// A line that could belong to a base64 body: base64 letters only (and `=` padding at the
/// end), at least 16 of them, no spaces.
pub(super) fn is_base64_line(line: &[u8]) -> bool {
    let body = line
        .strip_suffix(b"==")
        .or_else(|| line.strip_suffix(b"="))
        .unwrap_or(line);
    line.len() >= 16 && body.iter().all(|&b| BASE64[b as usize] < PAD)
}

pub(super) fn is_uu_begin(line: &[u8]) -> bool {
    let mut words = line.split(|&b| b == b' ');
    words.next() == Some(b"begin")
        && words.next().is_some_and(|mode| {
            !mode.is_empty() && mode.len() <= 4 && mode.iter().all(|b| (b'0'..=b'7').contains(b))
        })
}

/// Decodes base64 ignoring everything outside the alphabet and stopping at padding, so that
/// broken padding, odd line lengths and junk do not lose the rest (as mail clients do).
pub fn base64_lenient(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 3);
    let (mut acc, mut n) = (0u32, 0);
    for &c in input {
        match BASE64[c as usize] {
            v @ 0..=63 => {
                acc = (acc << 6) | v as u32;
                n += 1;
                if n == 4 {
                    out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
                    (acc, n) = (0, 0);
                }
            }
            PAD => break,
            _ => {}
        }
    }
    // A last group of 2 or 3 letters holds 1 or 2 whole bytes.
    match n {
        2 => out.push((acc >> 4) as u8),
        3 => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
        _ => {}
    }
    out
}

/// `=` in [`BASE64`].
pub(super) const PAD: u8 = 64;

/// Each byte's base64 value; [`PAD`] for `=`, 255 for the bytes outside the alphabet.
pub(super) const BASE64: [u8; 256] = {
    let mut t = [255u8; 256];
    let mut i = 0;
    while i < 26 {
        t[b'A' as usize + i] = i as u8;
        t[b'a' as usize + i] = 26 + i as u8;
        i += 1;
    }
    let mut d = 0;
    while d < 10 {
        t[b'0' as usize + d] = 52 + d as u8;
        d += 1;
    }
    t[b'+' as usize] = 62;
    t[b'/' as usize] = 63;
    t[b'=' as usize] = PAD;
    t
};

/// One uuencoded line: a length character, then groups of four characters for three bytes.
pub(super) fn uudecode_line(line: &[u8], out: &mut Vec<u8>) {
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
