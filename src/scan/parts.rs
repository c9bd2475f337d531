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
//!   boundary that mail-parser (or clamd) followed instead of the real one. A run that is
//!   exactly a file's base64 body the tree decoded (same letters, padding only at its end) is
//!   not decoded a second time: it could only give the same bytes.
//!
//! A part that is not transfer-encoded is `verbatim` (its bytes are the message's own, which
//! clamd scans with the message) even when mail-parser converted its charset, provided the
//! charset writes ASCII as ASCII (us-ascii, UTF-8, ISO-8859-*, windows-125x): a 7bit text
//! declared us-ascii with a UTF-8 signature in it is not sent to clamd a second time.
//!
//! Archives are recognised by their first bytes, never by their names, and opened: zip (the
//! `zip` crate), 7z (`sevenz-rust2`, pure Rust), tar (ustar and GNU; `tar`), gzip (`flate2`),
//! bzip2 (`bzip2` with its pure-Rust libbz2-rs-sys) and xz (`lzma-rust2`, the pure-Rust decoder
//! the zip crate uses too). Each
//! member becomes a part of its own, one level deeper, with the archives it sits in
//! (`containers`, innermost first), so that banned-file rules see the names inside; a gzip,
//! bzip2 or xz file has one member, the decompressed stream, named by its header or by the
//! file's own name less the suffix. Members are opened in turn, so a zip in a .tar.gz or a tar
//! in a zip is listed too, up to `max_depth`. A member is decompressed only as far as the
//! limits allow — at most [`MAX_RATIO`] (100) times its packed size (at least 1 MiB) and at
//! most what is left of `max_decoded_bytes` — so a decompression bomb costs at most that
//! quota. An encrypted zip or 7z member cannot be read and stops the walk (UNCHECKED); a corrupt
//! archive is not an error (clamd still scans its bytes), and a member that breaks off is kept
//! with what was read of it. Office documents (OOXML are zips) are kept whole, not listed.
//! Members are not sent to clamd again (`Scanners::virus_scan`): clamd opens zip, 7z, tar,
//! gzip, bzip2 and xz itself, nested too, when it scans the archive part.
//!
//! rar is not opened: it has no maintained pure-Rust decoder (the `unrar` crate binds RARLAB's
//! C++ library under its own licence); clamd opens it itself when it scans the part.
//!
//! Decoded contents stay in memory up to the walk's budget (`max_memory`); past it a part's
//! first bytes stay in memory ([`HEAD`]) and the rest goes to an unlinked temp file in the spool
//! directory, written as it is decoded, so a 64 MiB member costs its budget, not 64 MiB of RAM.
//! Everything that looks at contents reads a spilled part back from its file: sniffing reads
//! its first bytes, `contains` (OOXML and VBA markers) streams the whole file in 64 KiB
//! pieces, and clamd is sent the file as a stream (see [`Contents`]). Two things still live in
//! memory whole: the message itself (mail-parser borrows from it; `max_message_size` bounds
//! it) and the window of an xz or 7z decoder, which grows with its output up to the dictionary
//! size (64 MiB at most, as `xz -9` writes it; a stream asking for more is not opened).
//!
//! Identical decoded contents are kept once. Limits (parts, decoded bytes, nesting, expansion
//! ratio) stop the walk; the report says which limit was hit.
//!
//! What it costs (`examples/walkcost.rs`, release, CPU per walk on the shared 2-vCPU bench
//! machine, bench/results/20261202T050744Z.md for the whole filter): about 20 µs for
//! smtp-source's 4 KiB message (postsift's CPU per message with and without the walk is the same
//! within the noise: 0.72 / 0.75 ms), 0.3 ms for a 30 KiB quoted-printable newsletter, 1.0 ms
//! for a 94 KiB mail with a PDF and a zip (2.2 ms before the raw reading stopped decoding the
//! bodies the tree decoded): a third mail-parser's base64 decoding, a fifth inflating the zip's
//! members, the rest reading lines, hashing and copying.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::File;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mail_parser::{MessageParser, MimeHeaders, PartType};

/// One decoded leaf part.
#[derive(Debug, Clone)]
pub struct Part {
    /// The declared file name (Content-Disposition `filename=` or Content-Type `name=`; an
    /// archive member's name, without its directories).
    pub name: Option<String>,
    /// Every other name the part declares (a second `filename`, the Content-Type `name` beside
    /// a Content-Disposition `filename`, a repeated header): the banned-file rules judge each.
    pub other_names: Vec<String>,
    /// The declared MIME type, lower case.
    pub declared: Option<String>,
    /// Where it was found: "mime" (the MIME tree), "raw" (a base64 / uuencoded block found in
    /// the raw lines), or the archive format it was listed from ("zip", "tar", …).
    pub found: &'static str,
    /// The nesting depth: message/rfc822 levels, plus one per archive it sits in.
    pub depth: usize,
    /// The archives it is a member of, innermost first (`["tar", "gzip"]` for a file in a
    /// .tar.gz); empty for a part straight in the message.
    pub containers: Vec<&'static str>,
    /// The decoded contents are the message's own bytes, unchanged (a 7bit/8bit/binary part):
    /// clamd's scan of the whole message saw them as they are.
    pub verbatim: bool,
    pub contents: Contents,
}

impl Part {
    /// A short name for the log: the file name, else the type.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .or_else(|| self.declared.clone())
            .unwrap_or_else(|| format!("part ({} bytes)", self.contents.len()))
    }

    /// The archive it is a member of (the innermost), if any.
    pub fn container(&self) -> Option<&'static str> {
        self.containers.first().copied()
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
    /// Decoded bytes held in memory at most, all parts together; the rest spills to files.
    pub max_memory: usize,
    /// An archive member may decompress to this many times its packed size (but always to
    /// 1 MiB); more stops the walk. [`MAX_RATIO`] in service.
    pub max_ratio: u64,
    /// Wall-clock time one walk may take (`max_walk_time`): checked between parts and inside
    /// every decompression loop; past it the walk stops ([`LimitKind::Time`]).
    pub max_time: Duration,
}

impl Limits {
    pub fn from_config(p: &crate::config::Parts) -> Limits {
        Limits {
            max_parts: p.max_parts,
            max_bytes: p.max_decoded_bytes,
            max_depth: p.max_depth,
            max_memory: p.max_memory,
            max_ratio: MAX_RATIO,
            max_time: Duration::from_secs(p.max_walk_time),
        }
    }
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
    /// An archive postsift will not open: its decoder would need more memory than the
    /// decoder limit (an xz or 7z dictionary over 64 MiB), or a method it does not read.
    Decoder,
    /// The walk ran longer than `max_walk_time` (or its session ended).
    Time,
    /// The message is larger than `[parts] max_message_size`: not walked at all.
    Size,
    /// The decoder memory the walk needed could not be taken from `server.max_memory`: the
    /// message is tempfailed (`452 4.3.1`) whatever the `[parts]` settings.
    Memory,
}

impl LimitKind {
    pub const ALL: &'static [&'static str] = &[
        "parts",
        "bytes",
        "depth",
        "ratio",
        "encrypted",
        "decoder",
        "time",
        "size",
        "memory",
    ];

    pub fn label(self) -> &'static str {
        match self {
            LimitKind::Parts => "parts",
            LimitKind::Bytes => "bytes",
            LimitKind::Depth => "depth",
            LimitKind::Ratio => "ratio",
            LimitKind::Encrypted => "encrypted",
            LimitKind::Decoder => "decoder",
            LimitKind::Time => "time",
            LimitKind::Size => "size",
            LimitKind::Memory => "memory",
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

impl Walk {
    /// Decoded bytes held in memory (at most `max_memory`).
    pub fn memory(&self) -> usize {
        self.parts.iter().map(|p| p.contents.memory()).sum()
    }

    /// Decoded bytes, in memory or spilled.
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.contents.len()).sum()
    }
}

/// Bytes of a spilled part kept in memory (within the budget): enough for every magic number
/// and header the sniffing and the archive detection look at first.
pub const HEAD: usize = 4096;

/// Pieces in which spilled contents are read back.
const CHUNK: usize = 64 * 1024;

/// A part's decoded bytes: all in memory, or (spilled) the first bytes in memory and the rest
/// in an unlinked temp file. Cloning shares the file.
#[derive(Clone, Default)]
pub struct Contents {
    /// The whole contents, or the first bytes of spilled ones.
    head: Bytes,
    /// Spilled: the bytes after `head`.
    tail: Option<Arc<File>>,
    len: u64,
    /// Keyed hash of the bytes (set by the walk, for keeping identical contents once).
    digest: u64,
}

impl std::fmt::Debug for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contents")
            .field("len", &self.len)
            .field("memory", &self.head.len())
            .field("spilled", &self.tail.is_some())
            .finish()
    }
}

impl From<Vec<u8>> for Contents {
    fn from(v: Vec<u8>) -> Contents {
        Contents {
            len: v.len() as u64,
            head: v.into(),
            tail: None,
            digest: 0,
        }
    }
}

impl From<&[u8]> for Contents {
    fn from(v: &[u8]) -> Contents {
        v.to_vec().into()
    }
}

impl Contents {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held in memory.
    pub fn memory(&self) -> usize {
        self.head.len()
    }

    /// Part of the contents lives in a spill file.
    pub fn is_spilled(&self) -> bool {
        self.tail.is_some()
    }

    /// The whole contents, when they are all in memory.
    pub fn in_memory(&self) -> Option<&Bytes> {
        self.tail.is_none().then_some(&self.head)
    }

    /// Reads at byte `offset` of the contents, like `pread`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let h = self.head.len() as u64;
        if offset < h {
            let from = &self.head[offset as usize..];
            let n = from.len().min(buf.len());
            buf[..n].copy_from_slice(&from[..n]);
            return Ok(n);
        }
        match &self.tail {
            Some(f) if offset < self.len => {
                let want = ((self.len - offset) as usize).min(buf.len());
                f.read_at(&mut buf[..want], offset - h)
            }
            _ => Ok(0),
        }
    }

    /// The bytes `offset..offset + n` (fewer at the end), from memory when the head holds them.
    pub fn slice(&self, offset: u64, n: usize) -> io::Result<Cow<'_, [u8]>> {
        let end = offset.saturating_add(n as u64).min(self.len);
        if end <= self.head.len() as u64 {
            let start = (offset as usize).min(end as usize);
            return Ok(Cow::Borrowed(&self.head[start..end as usize]));
        }
        let mut out = vec![0u8; end.saturating_sub(offset) as usize];
        let mut got = 0;
        while got < out.len() {
            match self.read_at(&mut out[got..], offset + got as u64)? {
                0 => break,
                k => got += k,
            }
        }
        out.truncate(got);
        Ok(Cow::Owned(out))
    }

    /// The first `n` bytes (fewer if shorter, or if a spill file cannot be read back).
    pub fn prefix(&self, n: usize) -> Cow<'_, [u8]> {
        self.slice(0, n).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading back a spilled part");
            Cow::Borrowed(&self.head[..n.min(self.head.len())])
        })
    }

    /// Whether `needle` occurs anywhere in the contents; a spilled part is read back in pieces
    /// (a read error counts as not found, with a warning).
    pub fn contains(&self, needle: &[u8]) -> bool {
        if let Some(all) = self.in_memory() {
            return contains(all, needle);
        }
        let mut r = self.reader();
        let mut buf = vec![0u8; CHUNK + needle.len()];
        let mut have = 0;
        loop {
            let got = match r.read(&mut buf[have..]) {
                Ok(0) => return false,
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(error = %e, "reading back a spilled part");
                    return false;
                }
            };
            have += got;
            if contains(&buf[..have], needle) {
                return true;
            }
            // Keep the last needle.len() - 1 bytes: a match may straddle two pieces.
            let keep = (needle.len().saturating_sub(1)).min(have);
            buf.copy_within(have - keep..have, 0);
            have = keep;
        }
    }

    /// A reader over the whole contents, with its own position.
    pub fn reader(&self) -> Reader<'_> {
        Reader { c: self, pos: 0 }
    }

    /// The whole contents in memory: for small parts and tests.
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(self.len as usize);
        self.reader().read_to_end(&mut v)?;
        Ok(v)
    }

    /// What a scanner streams: the head, then (spilled) a handle of its own on the spill file,
    /// at its start — independent of any other reader, so a scan abandoned at a timeout
    /// cannot disturb the next one.
    pub fn stream(&self) -> io::Result<(Bytes, Option<File>)> {
        let tail = match &self.tail {
            None => None,
            Some(f) => Some(crate::message::reopen(f)?),
        };
        Ok((self.head.clone(), tail))
    }
}

/// A positioned reader over [`Contents`] (reads a spill file with `pread`, so many readers
/// can share it).
pub struct Reader<'a> {
    c: &'a Contents,
    pos: u64,
}

impl Read for Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.c.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Reader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.c.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// Where new contents are written as they are decoded: memory while the walk's budget
/// (`room`) lasts, then the spill file.
struct Sink {
    head: Vec<u8>,
    tail: Option<BufWriter<File>>,
    len: u64,
    room: usize,
    dir: Arc<Path>,
    hasher: std::hash::DefaultHasher,
    /// Writing the spill file failed: the walk ends with this error (a read error of the
    /// archive being decompressed, by contrast, only ends that member).
    failed: Option<io::Error>,
}

impl Sink {
    fn spill(&mut self, data: &[u8]) -> io::Result<()> {
        if self.tail.is_none() {
            // tempfile() unlinks at once: nothing is left behind, whatever happens.
            let f = tempfile::tempfile_in(&self.dir)?;
            let mut f = BufWriter::with_capacity(CHUNK, f);
            let h = HEAD.min(self.room);
            if self.head.len() > h {
                f.write_all(&self.head[h..])?;
                self.head.truncate(h);
                self.head.shrink_to_fit();
            }
            self.tail = Some(f);
        }
        let h = HEAD.min(self.room);
        let take = h.saturating_sub(self.head.len()).min(data.len());
        self.head.extend_from_slice(&data[..take]);
        self.tail
            .as_mut()
            .expect("set above")
            .write_all(&data[take..])
    }

    fn finish(mut self) -> io::Result<Contents> {
        self.hasher.write_u64(self.len);
        let tail = match self.tail {
            None => None,
            Some(w) => Some(Arc::new(w.into_inner().map_err(|e| e.into_error())?)),
        };
        Ok(Contents {
            head: self.head.into(),
            tail,
            len: self.len,
            digest: self.hasher.finish(),
        })
    }
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hasher.write(data);
        self.len += data.len() as u64;
        if self.tail.is_none() && self.head.len() + data.len() <= self.room {
            self.head.extend_from_slice(data);
            return Ok(data.len());
        }
        match self.spill(data) {
            Ok(()) => Ok(data.len()),
            Err(e) => {
                let kept = io::Error::new(e.kind(), format!("spilling a decoded part: {e}"));
                self.failed = Some(kept);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Smallest decoded block worth a scan from the raw reading (shorter runs are mostly words
/// that happen to use only base64 letters).
const MIN_RAW_BLOCK: usize = 32;

/// What bounds one walk besides its [`Limits`]: the session it belongs to, and the memory
/// budget its decoders take their windows from.
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// Set when the walk's session ends (client gone, shutdown): the walk stops at its next
    /// check (between parts, and inside every decompression loop).
    pub cancel: Option<Arc<AtomicBool>>,
    /// `server.max_memory`: xz and 7z decoder windows (which grow with their output up to the
    /// dictionary size) and bzip2's block buffers are taken from it as they grow; when it
    /// cannot give them the walk stops ([`LimitKind::Memory`], `452 4.3.1`). None: not counted.
    pub budget: Option<Arc<crate::message::Budget>>,
}

/// Walks `raw` within `limits`, spilling decoded data past `limits.max_memory` to unlinked
/// temp files in `spool`. Err only when a spill file could not be written.
pub fn walk(raw: &[u8], limits: &Limits, spool: &Path) -> io::Result<Walk> {
    walk_with(raw, limits, spool, &Control::default(), true).map(|w| w.expect("archives opened"))
}

/// The walk, when it opens no archive: the readings of a small message cost less than a
/// thread hand-off, decompressing an archive (up to `max_decoded_bytes`, bzip2 at some tens
/// of MB/s) may not, so None tells the caller to run [`walk`] where it may block.
pub fn walk_unless_archives(raw: &[u8], limits: &Limits, spool: &Path) -> io::Result<Option<Walk>> {
    walk_with(raw, limits, spool, &Control::default(), false)
}

/// [`walk`] (or, without `archives`, [`walk_unless_archives`]) under `ctl`.
pub fn walk_with(
    raw: &[u8],
    limits: &Limits,
    spool: &Path,
    ctl: &Control,
    archives: bool,
) -> io::Result<Option<Walk>> {
    let spool: Arc<Path> = spool.into();
    let clock = Clock {
        start: Instant::now(),
        max: limits.max_time,
        cancel: ctl.cancel.clone(),
    };
    let new = || Collector::new(limits, &spool, &clock, &ctl.budget);
    let mut w = new();
    // mail-parser builds (and drops, and copies an encoded one) a nested message/rfc822
    // recursively: thousands deep overflow the stack, which no catch_unwind catches. Past
    // MAX_NESTED_MESSAGES possible nestings the tree is not built at all.
    let most = limits.max_parts.saturating_mul(TREE_PARTS_FACTOR);
    let shape = shape(raw, most);
    let nested = shape.messages;
    if shape.delimiters > most {
        // Every leaf part but the first follows a boundary line: far more of them than
        // max_parts, and the tree (each part holding its headers: 100,000 parts peaked at
        // 57 MiB) is not built only to be cut at max_parts.
        w.stop(
            LimitKind::Parts,
            format!(
                "more than {most} parts ({TREE_PARTS_FACTOR} × parts.max_parts): \
                 MIME structure not parsed"
            ),
        );
    } else if nested > MAX_NESTED_MESSAGES {
        w.stop(
            LimitKind::Depth,
            format!(
                "more than {MAX_NESTED_MESSAGES} nested message/rfc822 or digest parts: \
                 MIME structure not parsed"
            ),
        );
    } else {
        // mail-parser 0.11 panics on some real messages (e.g. SpamAssassin's nice-mime9 test
        // mail: "Invalid part ID"); such a message keeps the structure-blind reading below.
        let tree = parse_nested(raw, nested, |m| {
            let mut c = new();
            if let Some(m) = m {
                c.tree(&m, raw, 0);
            }
            c
        });
        match tree {
            Ok(Ok(c)) => w = c,
            Ok(Err(_)) => w.walk.parser_failed = true,
            Err(e) => w.fail(e),
        }
    }
    raw_blocks(raw, &mut w);
    // Archives found so far, and archives among their members, in turn (a zip in a .tar.gz).
    let mut i = 0;
    while i < w.walk.parts.len() && !w.full() && !w.over_time() {
        if let Some(kind) = Archive::sniff(&w.walk.parts[i].contents) {
            if !archives {
                return Ok(None);
            }
            let parent = w.walk.parts[i].clone();
            if w.listed.insert(parent.contents.digest) {
                w.open(kind, &parent);
            }
        }
        i += 1;
    }
    match w.error {
        Some(e) => Err(e),
        None => Ok(Some(w.walk)),
    }
}

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
fn parse_nested<T: Send>(
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

struct Collector {
    walk: Walk,
    /// Keyed hashes of (contents, name) kept, and of contents kept.
    seen: HashSet<u64>,
    contents_seen: HashSet<u64>,
    /// Contents of the archives listed (the same archive attached twice is listed once).
    listed: HashSet<u64>,
    /// Where in the message the MIME tree found base64 bodies of files (Binary parts) and
    /// decoded them: byte ranges, in order.
    base64_bodies: Vec<(usize, usize)>,
    bytes: usize,
    memory: usize,
    limits: Limits,
    spool: Arc<Path>,
    /// Keys the contents hashes: random per walk, so nobody can make two parts collide.
    hash: RandomState,
    /// A spill file could not be written: the walk ends, and fails.
    error: Option<io::Error>,
    /// A count limit (parts, decoded bytes) was hit: nothing more is read. The other stops
    /// (too deep, a bomb, an encrypted member) end only that branch: the other parts, and the
    /// structure-blind reading, still count (a virus one level too deep is still found).
    halted: bool,
    /// Parts counted against `max_parts`: those kept, and archive members dropped as
    /// duplicates (decompressed all the same).
    counted: usize,
    clock: Clock,
    budget: Option<Arc<crate::message::Budget>>,
    /// The memory of the decoder being read (xz, 7z, bzip2), taken from `budget`.
    decoder: Option<Arc<std::sync::Mutex<DecoderMemory>>>,
}

impl Collector {
    fn new(
        limits: &Limits,
        spool: &Arc<Path>,
        clock: &Clock,
        budget: &Option<Arc<crate::message::Budget>>,
    ) -> Collector {
        Collector {
            walk: Walk::default(),
            seen: HashSet::new(),
            contents_seen: HashSet::new(),
            listed: HashSet::new(),
            base64_bodies: Vec::new(),
            bytes: 0,
            memory: 0,
            limits: *limits,
            spool: spool.clone(),
            hash: RandomState::new(),
            error: None,
            halted: false,
            counted: 0,
            clock: clock.clone(),
            budget: budget.clone(),
            decoder: None,
        }
    }

    fn full(&self) -> bool {
        self.halted || self.error.is_some()
    }

    /// Whether the walk's time is up or its session ended: then it stops, and says why.
    fn over_time(&mut self) -> bool {
        if self.halted {
            return true;
        }
        match self.clock.out() {
            Some(why) => {
                self.stop(LimitKind::Time, why);
                true
            }
            None => false,
        }
    }

    /// Starts counting a decoder's memory against the budget: `fixed` bytes now, and for an
    /// LZMA window also twice what it has put out (it grows geometrically with its output, up
    /// to the dictionary size). False (and the walk stopped) when the budget cannot give it.
    fn decoder_memory(&mut self, fixed: usize, window: bool) -> bool {
        let mut d = DecoderMemory {
            hold: crate::message::MemoryHold::new(self.budget.clone()),
            fixed,
            window,
            out: 0,
            starved: false,
        };
        if d.account(0).is_err() {
            self.stop(LimitKind::Memory, MEMORY_DETAIL.into());
            return false;
        }
        self.decoder = Some(Arc::new(std::sync::Mutex::new(d)));
        true
    }

    fn decoder_starved(&self) -> bool {
        self.decoder
            .as_ref()
            .is_some_and(|d| d.lock().map(|d| d.starved).unwrap_or(true))
    }

    /// Records why the walk could not look at everything (the first reason is kept); a count
    /// limit also ends the walk.
    fn stop(&mut self, kind: LimitKind, detail: String) {
        if matches!(
            kind,
            LimitKind::Parts | LimitKind::Bytes | LimitKind::Time | LimitKind::Memory
        ) {
            self.halted = true;
        }
        if self.walk.limit.is_none() {
            self.walk.limit = Some(Stop { kind, detail });
        }
    }

    fn fail(&mut self, e: io::Error) {
        self.error.get_or_insert(e);
    }

    /// A place for new contents, in memory as far as the budget goes.
    fn sink(&self) -> Sink {
        Sink {
            head: Vec::new(),
            tail: None,
            len: 0,
            room: self.limits.max_memory.saturating_sub(self.memory),
            dir: self.spool.clone(),
            hasher: self.hash.build_hasher(),
            failed: None,
        }
    }

    /// `data` as contents (spilled past the budget); None when spilling failed.
    fn contents(&mut self, data: &[u8]) -> Option<Contents> {
        let mut s = self.sink();
        let done = match s.write_all(data) {
            Ok(()) => s.finish(),
            Err(e) => Err(s.failed.take().unwrap_or(e)),
        };
        done.map_err(|e| self.fail(e)).ok()
    }

    /// Keeps a part unless its contents were seen already; false once a limit is hit.
    fn add(&mut self, part: Part) -> bool {
        if self.full() || self.over_time() {
            return false;
        }
        // An empty part is kept only when it has a name (an archive member that could not be
        // read still has a name for the banned-file rules).
        if part.contents.is_empty() && part.name.is_none() {
            return true;
        }
        // Named parts with the same contents are each kept (the banned-file rules judge each
        // name); a part without a name adds nothing to one with the same contents (the raw
        // reading finds most attachments a second time).
        let mut h = self.hash.build_hasher();
        part.contents.digest.hash(&mut h);
        part.name.hash(&mut h);
        part.other_names.hash(&mut h);
        let named = h.finish();
        let contents = part.contents.digest;
        let duplicate = self.seen.contains(&named)
            || part.name.is_none() && self.contents_seen.contains(&contents);
        // A duplicate found in the message costs what the message's size bounds; an archive
        // member was decompressed to find out (2,000 entries pointing at one 15 MiB member):
        // it counts towards max_parts and max_decoded_bytes as if kept.
        if duplicate && part.containers.is_empty() {
            return true;
        }
        if self.counted >= self.limits.max_parts {
            self.stop(
                LimitKind::Parts,
                format!("more than {} parts", self.limits.max_parts),
            );
            return false;
        }
        let len = usize::try_from(part.contents.len()).unwrap_or(usize::MAX);
        if self.bytes.saturating_add(len) > self.limits.max_bytes {
            self.stop(
                LimitKind::Bytes,
                format!("more than {} decoded bytes", self.limits.max_bytes),
            );
            return false;
        }
        self.counted += 1;
        self.bytes += len;
        if duplicate {
            return true;
        }
        self.seen.insert(named);
        self.contents_seen.insert(contents);
        self.memory += part.contents.memory();
        self.walk.parts.push(part);
        true
    }

    /// The MIME tree's leaf parts, decoded by mail-parser; `raw` is the whole message (the
    /// offsets of a part within it tell a verbatim part and a base64 body the raw reading need
    /// not decode again).
    fn tree(&mut self, m: &mail_parser::Message<'_>, raw: &[u8], depth: usize) {
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
    fn decoded_here(&self, raw: &[u8], start: usize, end: usize) -> bool {
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

    /// How much one member may decompress to: what is left of `max_decoded_bytes`, and for a
    /// compressed member of `packed` bytes also `max_ratio` times that (at least 1 MiB).
    fn cap(&self, packed: Option<u64>) -> Cap {
        let room = self.limits.max_bytes.saturating_sub(self.bytes) as u64;
        match packed {
            Some(p) => {
                let ratio = p.max(1).saturating_mul(self.limits.max_ratio).max(1 << 20);
                Cap {
                    bytes: room.min(ratio),
                    ratio: ratio <= room,
                }
            }
            None => Cap {
                bytes: room,
                ratio: false,
            },
        }
    }

    /// Decompresses one member from `r` within `cap`, reading one byte more than allowed to
    /// tell a member that goes on past it.
    fn read_member(&mut self, r: impl Read, cap: Cap, name: &str) -> Got {
        let mut sink = self.sink();
        let guarded = Guarded {
            inner: r,
            clock: self.clock.clone(),
            decoder: self.decoder.clone(),
        };
        let read = io::copy(&mut guarded.take(cap.bytes.saturating_add(1)), &mut sink);
        if let Some(e) = sink.failed.take() {
            self.fail(e);
            return Got::Nothing;
        }
        if self.over_time() {
            return Got::Nothing;
        }
        if self.decoder_starved() {
            self.stop(LimitKind::Memory, MEMORY_DETAIL.into());
            return Got::Nothing;
        }
        if let Err(e) = &read {
            if e.kind() == io::ErrorKind::OutOfMemory {
                self.stop(
                    LimitKind::Decoder,
                    format!("archive member {name} needs more decoder memory than 64 MiB"),
                );
                return Got::Nothing;
            }
        }
        let contents = match sink.finish() {
            Ok(c) => c,
            Err(e) => {
                self.fail(e);
                return Got::Nothing;
            }
        };
        if contents.len() > cap.bytes {
            if cap.ratio {
                self.stop(
                    LimitKind::Ratio,
                    format!(
                        "archive member {name} expands more than {} times",
                        self.limits.max_ratio
                    ),
                );
            } else {
                self.stop(
                    LimitKind::Bytes,
                    format!("more than {} decoded bytes", self.limits.max_bytes),
                );
            }
            return Got::Nothing;
        }
        Got::Member(contents, read.is_err())
    }

    /// Lists one archive part and adds its members.
    fn open(&mut self, kind: Archive, parent: &Part) {
        let depth = parent.depth + 1;
        if depth > self.limits.max_depth {
            self.stop(
                LimitKind::Depth,
                format!("archives nested deeper than {}", self.limits.max_depth),
            );
            return;
        }
        let mut containers = Vec::with_capacity(parent.containers.len() + 1);
        containers.push(kind.label());
        containers.extend_from_slice(&parent.containers);
        let member = Member {
            found: kind.label(),
            depth,
            containers,
        };
        match kind {
            Archive::Zip => self.unzip(parent, &member),
            Archive::Tar => self.untar(parent, &member),
            Archive::SevenZ => self.un7z(parent, &member),
            Archive::Gzip | Archive::Bzip2 | Archive::Xz => self.unpack(kind, parent, &member),
        }
    }

    /// A 7z's files, each decompressed within the limits. Files compressed together (a solid
    /// block) are decoded in order, so reading one decodes those before it; the ratio is
    /// taken against the whole archive's packed size.
    fn un7z(&mut self, parent: &Part, m: &Member) {
        use sevenz_rust2::{ArchiveReader, EntryDecision, Error, Password};
        let mut src = parent.contents.reader();
        let archive = match sevenz_rust2::Archive::read_with_memory_limit(
            &mut src,
            &Password::empty(),
            SEVENZ_MEMORY_KB,
        ) {
            Ok(a) => a,
            // An encrypted header: not even the names can be read.
            Err(Error::PasswordRequired | Error::MaybeBadPassword(_)) => {
                self.stop(
                    LimitKind::Encrypted,
                    "encrypted 7z archive (names encrypted too)".into(),
                );
                return;
            }
            Err(Error::MaxMemLimited {
                max_kb,
                actaul_kb: actual_kb,
            }) => {
                self.stop(
                    LimitKind::Decoder,
                    format!("7z archive needs {actual_kb} KiB of decoder memory (limit {max_kb})"),
                );
                return;
            }
            Err(Error::UnsupportedCompressionMethod(m)) => {
                self.stop(
                    LimitKind::Decoder,
                    format!("7z archive compressed with {m}, which postsift does not read"),
                );
                return;
            }
            // Not a readable 7z: clamd still scans it.
            Err(_) => return,
        };
        // Encrypted contents under names in the clear: keep the names, say why it stops.
        let locked: Vec<Option<String>> = (0..archive.files.len())
            .filter(|&i| archive.is_file_encrypted(i) && archive.files[i].has_stream())
            .map(|i| base_name(archive.files[i].name()))
            .collect();
        if let Some(first) = locked.first() {
            let detail = format!(
                "encrypted archive member {}",
                first.as_deref().unwrap_or("-")
            );
            for name in &locked {
                self.add(m.part(name.clone(), Contents::default()));
            }
            self.stop(LimitKind::Encrypted, detail);
            return;
        }
        let packed: u64 = archive.pack_sizes().iter().sum();
        let mut reader = ArchiveReader::from_archive(archive, src, Password::empty());
        reader.set_thread_count(1);
        if !self.decoder_memory(DECODER_OVERHEAD, true) {
            return;
        }
        // An error ends the listing: a broken block, a bad checksum (clamd still scans it); a
        // block beyond the decoder limit or in a method postsift does not read is UNCHECKED.
        let listed = reader.for_each_entries_with_decision(|entry, r| {
            if entry.is_directory() {
                return Ok(EntryDecision::Continue);
            }
            let name = base_name(entry.name());
            let cap = self.cap(Some(packed));
            let label = name.clone().unwrap_or_else(|| "-".into());
            Ok(match self.read_member(r, cap, &label) {
                Got::Member(contents, broken) => {
                    if !self.add(m.part(name, contents)) || broken {
                        EntryDecision::Stop
                    } else {
                        EntryDecision::Continue
                    }
                }
                Got::Nothing => EntryDecision::Stop,
            })
        });
        self.decoder = None;
        match listed {
            Err(Error::MaxMemLimited {
                max_kb,
                actaul_kb: actual_kb,
            }) => self.stop(
                LimitKind::Decoder,
                format!("7z block needs {actual_kb} KiB of decoder memory (limit {max_kb})"),
            ),
            Err(Error::UnsupportedCompressionMethod(m)) => self.stop(
                LimitKind::Decoder,
                format!("7z block compressed with {m}, which postsift does not read"),
            ),
            _ => {}
        }
    }

    /// A zip's members, each decompressed within the limits.
    fn unzip(&mut self, parent: &Part, m: &Member) {
        let Ok(mut zip) = zip::ZipArchive::new(parent.contents.reader()) else {
            // Not a readable zip after all: clamd still scans the bytes.
            return;
        };
        for i in 0..zip.len() {
            if self.full() || self.over_time() {
                return;
            }
            let Ok(meta) = zip.by_index_raw(i) else {
                continue;
            };
            if meta.is_dir() {
                continue;
            }
            let full = meta.name().map(|n| n.into_owned()).unwrap_or_default();
            let name = base_name(&full);
            let (encrypted, packed) = (meta.encrypted(), meta.compressed_size());
            drop(meta);
            if encrypted {
                // Its name is visible, its contents are not: keep the name (for the banned-file
                // rules) and say why the message is not fully checked.
                self.add(m.part(name.clone(), Contents::default()));
                self.stop(
                    LimitKind::Encrypted,
                    format!("encrypted archive member {}", name.unwrap_or_default()),
                );
                return;
            }
            let cap = self.cap(Some(packed));
            let got = match zip.by_index(i) {
                Ok(file) => self.read_member(file, cap, name.as_deref().unwrap_or("-")),
                // A compression method postsift does not read (clamd may): the name still
                // counts for the banned-file rules, and the message is UNCHECKED.
                Err(e) => {
                    if let zip::result::ZipError::UnsupportedArchive(why) = e {
                        self.stop(
                            LimitKind::Decoder,
                            format!(
                                "archive member {} not opened: {why}",
                                name.as_deref().unwrap_or("-")
                            ),
                        );
                    }
                    Got::Member(Contents::default(), true)
                }
            };
            match got {
                Got::Member(contents, _) => {
                    if !self.add(m.part(name, contents)) {
                        return;
                    }
                }
                Got::Nothing => return,
            }
        }
    }

    /// A tar's regular files (ustar, GNU long names, pax `path`), read up to the limits.
    fn untar(&mut self, parent: &Part, m: &Member) {
        let mut tar = tar::Archive::new(parent.contents.reader());
        let Ok(entries) = tar.entries() else {
            return;
        };
        // Raw entries: the long-name and pax headers come to us, to be read within a bound
        // (the tar crate would read them whole, whatever their size).
        let mut long_name: Option<String> = None;
        for entry in entries.raw(true) {
            if self.full() || self.over_time() {
                return;
            }
            // A broken header ends the listing: what follows cannot be trusted to line up.
            let Ok(mut e) = entry else {
                return;
            };
            let t = e.header().entry_type();
            if t.is_gnu_longname() {
                let mut v = Vec::new();
                let _ = (&mut e).take(MAX_NAME).read_to_end(&mut v);
                let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
                long_name = Some(String::from_utf8_lossy(&v[..end]).into_owned());
                continue;
            }
            if t.is_pax_local_extensions() {
                let mut v = Vec::new();
                let _ = (&mut e).take(MAX_NAME).read_to_end(&mut v);
                if let Some(p) = pax_path(&v) {
                    long_name = Some(p);
                }
                continue;
            }
            if t.is_gnu_longlink() || t.is_pax_global_extensions() {
                continue;
            }
            if !(t.is_file() || t.is_contiguous() || t.is_gnu_sparse()) {
                long_name = None;
                continue;
            }
            let full = long_name
                .take()
                .unwrap_or_else(|| String::from_utf8_lossy(&e.header().path_bytes()).into_owned());
            let name = base_name(&full);
            // Stored, not compressed: only the decoded-bytes quota bounds a member.
            let cap = self.cap(None);
            match self.read_member(&mut e, cap, name.as_deref().unwrap_or("-")) {
                Got::Member(contents, broken) => {
                    if !self.add(m.part(name, contents)) || broken {
                        return;
                    }
                }
                Got::Nothing => return,
            }
        }
    }

    /// The one member of a gzip, bzip2 or xz file: its decompressed stream.
    fn unpack(&mut self, kind: Archive, parent: &Part, m: &Member) {
        let cap = self.cap(Some(parent.contents.len()));
        let outer = parent.name.as_deref().and_then(|n| kind.member_name(n));
        let label = outer.clone().unwrap_or_else(|| "-".into());
        let src = parent.contents.reader();
        let (got, name) = match kind {
            Archive::Gzip => {
                let mut d = flate2::read::MultiGzDecoder::new(src);
                let got = self.read_member(&mut d, cap, &label);
                let inner = d
                    .header()
                    .and_then(|h| h.filename())
                    .and_then(|f| base_name(&String::from_utf8_lossy(f)));
                (got, inner.or(outer))
            }
            Archive::Bzip2 => {
                if !self.decoder_memory(BZIP2_MEMORY, false) {
                    return;
                }
                let d = bzip2::read::MultiBzDecoder::new(src);
                (self.read_member(d, cap, &label), outer)
            }
            _ => {
                if !self.decoder_memory(DECODER_OVERHEAD, true) {
                    return;
                }
                let d = lzma_rust2::XzReader::new_mem_limit(src, true, xz_memory_limit_kb());
                (self.read_member(d, cap, &label), outer)
            }
        };
        self.decoder = None;
        if let Got::Member(contents, _) = got {
            // Nothing decoded: not this format after all (or unreadable): clamd still scans it.
            if !contents.is_empty() {
                self.add(m.part(name, contents));
            }
        }
    }
}

/// How much one member may decompress to, and whether the ratio (rather than what is left of
/// the decoded-bytes quota) sets it.
#[derive(Debug, Clone, Copy)]
struct Cap {
    bytes: u64,
    ratio: bool,
}

/// What reading one archive member gave.
enum Got {
    /// Its contents; true when the archive broke off in it (what was read is kept).
    Member(Contents, bool),
    /// Nothing to keep: a limit stopped the walk, or a spill file failed.
    Nothing,
}

/// What the members of one archive share.
struct Member {
    found: &'static str,
    depth: usize,
    containers: Vec<&'static str>,
}

impl Member {
    fn part(&self, name: Option<String>, contents: Contents) -> Part {
        Part {
            name,
            other_names: Vec::new(),
            declared: None,
            found: self.found,
            depth: self.depth,
            containers: self.containers.clone(),
            verbatim: false,
            contents,
        }
    }
}

/// The names a MIME part declares besides `first` (mail-parser's `attachment_name`: the last
/// Content-Disposition's first `filename`, else the last Content-Type's first `name`): every
/// `filename` and `name` parameter of every Content-Disposition and Content-Type header, as
/// mail-parser decoded them (RFC 2231 `name*=`/continuations, RFC 2047 words), each once.
/// Mail clients differ in which one they show and save, so the banned-file rules judge them
/// all. mail-parser keeps every header and every parameter (a repeated one too) in order, so
/// its parsed headers suffice and the raw header bytes need not be read again.
fn other_names(p: &mail_parser::MessagePart<'_>, first: Option<&str>) -> Vec<String> {
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

/// Members decompressed beyond this many times their compressed size stop the walk (amavis's
/// `$MAX_EXPANSION_QUOTA` is relative to the mail's size; a per-member ratio catches a bomb
/// however small the mail around it).
pub const MAX_RATIO: u64 = 100;

/// message/rfc822 (or digest) parts a message may declare, its transfer-encoded bodies
/// included, for mail-parser to be run on it: it nests them recursively (see
/// [`nested_messages`]), on a thread with a [`PARSER_STACK`] stack.
pub const MAX_NESTED_MESSAGES: usize = 1000;

/// A message whose boundary lines announce more than this many times `max_parts` leaf parts
/// is not parsed into a tree (see [`shape`]); below, the tree is built and the walk stops at
/// `max_parts` itself, keeping the first parts.
pub const TREE_PARTS_FACTOR: usize = 10;

/// The stack mail-parser runs on when a message nests messages: 1,000 levels fit with room
/// to spare in a debug build (a 2 MiB stack does not hold them); only the pages used are
/// touched.
const PARSER_STACK: usize = 16 << 20;

/// What one xz or 7z decoder holds besides its window, and bzip2's block buffers (900k
/// blocks: four bytes per byte, plus the block).
const DECODER_OVERHEAD: usize = 1 << 20;
const BZIP2_MEMORY: usize = 4 << 20;

const MEMORY_DETAIL: &str =
    "decoder memory not available: server.max_memory is held by the messages in flight";

/// The walk's clock: its start, its `max_walk_time`, and its session's cancel flag.
#[derive(Debug, Clone)]
struct Clock {
    start: Instant,
    max: Duration,
    cancel: Option<Arc<AtomicBool>>,
}

impl Clock {
    /// Why the walk must stop now, if it must.
    fn out(&self) -> Option<String> {
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Some("walk cancelled: its session ended".into());
        }
        (self.start.elapsed() >= self.max)
            .then(|| format!("walk took longer than {} s", self.max.as_secs_f64()))
    }
}

/// One decoder's memory, held from the budget as it grows.
struct DecoderMemory {
    hold: crate::message::MemoryHold,
    fixed: usize,
    /// An LZMA window, growing with the output.
    window: bool,
    out: u64,
    starved: bool,
}

impl DecoderMemory {
    fn account(&mut self, n: usize) -> io::Result<()> {
        self.out = self.out.saturating_add(n as u64);
        let window = match self.window {
            true => (self.out.saturating_mul(2) as usize).min(XZ_MAX_DICT as usize),
            false => 0,
        };
        let want = self.fixed + window;
        if want > self.hold.held() {
            // In steps of 1 MiB, not per read.
            let want = want.next_multiple_of(1 << 20);
            if let Err(e) = self.hold.grow_to(want) {
                self.starved = true;
                return Err(e);
            }
        }
        Ok(())
    }
}

/// An archive member's reader, checked at every read: the walk's time and session, and the
/// decoder's memory.
struct Guarded<R> {
    inner: R,
    clock: Clock,
    decoder: Option<Arc<std::sync::Mutex<DecoderMemory>>>,
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.clock.out().is_some() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "walk time is up"));
        }
        let n = self.inner.read(buf)?;
        if let Some(d) = &self.decoder {
            let mut d = d
                .lock()
                .map_err(|_| io::Error::other("decoder memory lock poisoned"))?;
            d.account(n)?;
        }
        Ok(n)
    }
}

/// Bytes of a GNU long name or a pax header read at most (Linux's PATH_MAX is 4096).
const MAX_NAME: u64 = 64 * 1024;

/// The largest xz dictionary opened: 64 MiB, what `xz -9` uses. The decoder's window grows
/// with its output up to this size.
const XZ_MAX_DICT: u32 = 64 << 20;

fn xz_memory_limit_kb() -> u32 {
    lzma_rust2::lzma2_get_memory_usage(XZ_MAX_DICT)
}

/// The decoder memory (header buffers, and dictionaries each) a 7z may ask for, in KiB: as
/// for xz, 64 MiB.
const SEVENZ_MEMORY_KB: usize = 64 << 10;

/// The archive formats the walk opens, told by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Archive {
    Zip,
    SevenZ,
    Tar,
    Gzip,
    Bzip2,
    Xz,
}

impl Archive {
    fn sniff(c: &Contents) -> Option<Archive> {
        let head = c.prefix(262);
        if head.starts_with(b"PK\x03\x04") {
            // OOXML files are zips with a content-types member; they are judged whole, by the
            // sniffed type.
            return (!c.contains(b"[Content_Types].xml")).then_some(Archive::Zip);
        }
        if head.starts_with(b"7z\xBC\xAF\x27\x1C") {
            return Some(Archive::SevenZ);
        }
        if head.starts_with(b"\x1f\x8b\x08") {
            return Some(Archive::Gzip);
        }
        if head.starts_with(b"BZh") && head.get(3).is_some_and(|b| (b'1'..=b'9').contains(b)) {
            return Some(Archive::Bzip2);
        }
        if head.starts_with(b"\xFD7zXZ\x00") {
            return Some(Archive::Xz);
        }
        // POSIX ustar ("ustar\000") and GNU ("ustar  \0") both start so at offset 257.
        if head.get(257..262) == Some(b"ustar") {
            return Some(Archive::Tar);
        }
        None
    }

    /// The `container` name rules match on, and the `found` of its members.
    fn label(self) -> &'static str {
        match self {
            Archive::Zip => "zip",
            Archive::SevenZ => "7z",
            Archive::Tar => "tar",
            Archive::Gzip => "gzip",
            Archive::Bzip2 => "bzip2",
            Archive::Xz => "xz",
        }
    }

    /// The name of a compressed file's one member, from the file's own name:
    /// `report.pdf.gz` → `report.pdf`, `src.tgz` → `src.tar`; None when it has no such suffix.
    fn member_name(self, file: &str) -> Option<String> {
        let (plain, tar): (&[&str], &[&str]) = match self {
            Archive::Gzip => (&[".gz", ".z"], &[".tgz", ".taz"]),
            Archive::Bzip2 => (&[".bz2", ".bz"], &[".tbz", ".tbz2", ".tb2"]),
            Archive::Xz => (&[".xz"], &[".txz"]),
            Archive::Zip | Archive::SevenZ | Archive::Tar => return None,
        };
        let lower = file.to_ascii_lowercase();
        let cut = |suffix: &str| file[..file.len() - suffix.len()].to_owned();
        if let Some(s) = plain.iter().find(|s| lower.ends_with(**s)) {
            return Some(cut(s)).filter(|n| !n.is_empty());
        }
        tar.iter()
            .find(|s| lower.ends_with(**s))
            .map(|s| cut(s) + ".tar")
    }
}

/// The last component of an archive path; None when empty.
fn base_name(path: &str) -> Option<String> {
    let name = path.rsplit(['/', '\\']).next().unwrap_or("");
    (!name.is_empty()).then(|| name.to_owned())
}

/// The `path` record of a pax extended header (`<len> path=<value>\n` records).
fn pax_path(mut data: &[u8]) -> Option<String> {
    let mut path = None;
    while let Some(sp) = data.iter().position(|&b| b == b' ') {
        let len: usize = std::str::from_utf8(&data[..sp]).ok()?.parse().ok()?;
        if len <= sp || len > data.len() {
            break;
        }
        let record = &data[sp + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(v) = record.strip_prefix(b"path=") {
            path = Some(String::from_utf8_lossy(v).into_owned());
        }
        data = &data[len..];
    }
    path
}

/// A charset that writes ASCII as ASCII, one byte each (or none given: us-ascii).
fn ascii_compatible(charset: Option<&str>) -> bool {
    let Some(c) = charset else {
        return true;
    };
    let c = c.trim().to_ascii_lowercase();
    matches!(c.as_str(), "us-ascii" | "ascii" | "utf-8" | "utf8")
        || ["iso-8859-", "iso8859-", "windows-125", "cp125", "latin"]
            .iter()
            .any(|p| c.starts_with(p))
}

/// Whether `needle` occurs in `hay` (also used by the banned-file sniffing).
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// The structure-blind reading: base64 runs and uuencoded blocks in the raw lines.
fn raw_blocks(raw: &[u8], w: &mut Collector) {
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
            for (s, e) in lines.by_ref() {
                let l = &raw[s..e];
                if l == b"end" || l.starts_with(b"end ") {
                    break;
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
fn delimiter_lines(raw: &[u8], max: usize) -> usize {
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
const ENCODED_LEVELS: usize = 3;

fn shape_at(raw: &[u8], level: usize, max_delimiters: usize, s: &mut Shape) {
    // Without a multipart type, no boundary is looked for.
    if s.delimiters <= max_delimiters && find_ci(raw, b"multipart") {
        s.delimiters += delimiter_lines(raw, max_delimiters - s.delimiters);
    }
    let mut delimiters = s.delimiters;
    s.messages += nested_at(raw, level, &mut |decoded, level| {
        let mut inner = Shape {
            delimiters,
            messages: 0,
        };
        shape_at(decoded, level, max_delimiters, &mut inner);
        delimiters = inner.delimiters;
        inner.messages
    });
    s.delimiters = delimiters;
}

fn nested_at(raw: &[u8], level: usize, inner: &mut dyn FnMut(&[u8], usize) -> usize) -> usize {
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
fn message_tokens(raw: &[u8]) -> usize {
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
fn find_ci(hay: &[u8], needle: &[u8]) -> bool {
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
fn base64_through(input: &[u8]) -> Vec<u8> {
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
fn qp_lenient(input: &[u8]) -> Vec<u8> {
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
fn is_base64_line(line: &[u8]) -> bool {
    let body = line
        .strip_suffix(b"==")
        .or_else(|| line.strip_suffix(b"="))
        .unwrap_or(line);
    line.len() >= 16 && body.iter().all(|&b| BASE64[b as usize] < PAD)
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
const PAD: u8 = 64;

/// Each byte's base64 value; [`PAD`] for `=`, 255 for the bytes outside the alphabet.
const BASE64: [u8; 256] = {
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

// The hostile shapes of issue 16, shared with the integration tests and examples/hostile.rs.
#[cfg(test)]
#[path = "../../tests/integration/hostile.rs"]
mod hostile;

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_parts: 100,
        max_bytes: 1 << 20,
        max_depth: 5,
        max_memory: 1 << 20,
        max_ratio: MAX_RATIO,
        max_time: Duration::from_secs(3600),
    };

    fn walk(raw: &[u8], limits: &Limits) -> Walk {
        super::walk(raw, limits, &std::env::temp_dir()).expect("spill files can be written")
    }

    use super::hostile;

    /// Runs `f` on a thread with a 2 MiB stack, as tokio's worker and blocking threads have:
    /// a stack overflow aborts the test process (and failed the old code so).
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    fn limit(w: &Walk) -> Option<LimitKind> {
        w.limit.as_ref().map(|l| l.kind)
    }

    #[test]
    fn message_rfc822_nested_25000_to_1000000_deep_does_not_overflow_the_stack() {
        for depth in [20_000, 25_000, 100_000, 1_000_000] {
            let raw = hostile::nested_rfc822(depth);
            let w = on_small_stack(move || walk(&raw, &LIMITS));
            assert_eq!(limit(&w), Some(LimitKind::Depth), "{depth}: {:?}", w.limit);
        }
    }

    #[test]
    fn message_rfc822_nested_inside_a_base64_body_does_not_overflow_the_stack() {
        for depth in [20_000, 100_000] {
            let raw = hostile::nested_in_base64(depth);
            let w = on_small_stack(move || walk(&raw, &LIMITS));
            assert_eq!(limit(&w), Some(LimitKind::Depth), "{depth}: {:?}", w.limit);
        }
    }

    /// Just under the pre-scan's bound, mail-parser runs (and the walk's own depth limit
    /// stops it) on a 2 MiB stack: the bound leaves room.
    #[test]
    fn nesting_just_under_the_prescan_bound_parses_on_a_small_stack() {
        let raw = hostile::nested_rfc822(MAX_NESTED_MESSAGES - 1);
        assert_eq!(nested_messages(&raw), MAX_NESTED_MESSAGES - 1);
        let w = on_small_stack(move || walk(&raw, &LIMITS));
        let stop = w.limit.expect("too deep");
        assert_eq!(stop.kind, LimitKind::Depth);
        assert!(stop.detail.contains("deeper than 5"), "{stop}");
        assert!(!w.parser_failed);
        let raw = hostile::nested_in_base64(MAX_NESTED_MESSAGES - 1);
        let w = on_small_stack(move || walk(&raw, &LIMITS));
        assert!(w.limit.is_some());
    }

    #[test]
    fn multipart_nested_100000_deep_does_not_overflow_the_stack() {
        let raw = hostile::nested_multipart(100_000);
        let w = on_small_stack(move || walk(&raw, &LIMITS));
        assert!(w.parts.iter().any(|p| data(p) == b"hello"), "{:?}", w.limit);
    }

    /// Issue 16: 100,000 parts were built into mail-parser's tree (each holding its headers;
    /// 57 MiB of peak RSS for one 1 MB message) before max_parts cut the walk. The pre-scan
    /// counts the boundary lines that open leaf parts, and the tree is not built past
    /// max_parts: UNCHECKED (reason parts), as when the walk counts them.
    #[test]
    fn a_message_of_100000_parts_is_not_parsed_into_a_tree() {
        let mut raw =
            b"Subject: many\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
        for i in 0..100_000 {
            raw.extend_from_slice(
                format!("--b\r\nContent-Type: text/plain\r\n\r\n{i}\r\n").as_bytes(),
            );
        }
        raw.extend_from_slice(b"--b--\r\n");
        assert_eq!(shape(&raw, 1000).delimiters, 1001);
        let w = walk(&raw, &LIMITS);
        let stop = w.limit.expect("too many parts");
        assert_eq!(stop.kind, LimitKind::Parts);
        assert!(stop.detail.contains("not parsed"), "{stop}");
        // Containers are not counted: a multipart nested 100 deep around one text is walked.
        assert_eq!(shape(&hostile::nested_multipart(100), 100).delimiters, 1);
        // Nor closing lines, signature lines, or boundary-like lines in a plain text.
        let raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nhi\r\n-- \r\nme\r\n--b--\r\n";
        assert_eq!(shape(raw, 100).delimiters, 1);
        assert_eq!(
            shape(b"Subject: x\r\n\r\n--a\r\n--b\r\n", 100).delimiters,
            0
        );
    }

    #[test]
    fn the_prescan_counts_what_mail_parser_nests_however_it_is_written() {
        assert_eq!(
            nested_messages(
                b"Subject: x

message / body
"
            ),
            1
        );
        assert_eq!(
            nested_messages(
                b"Subject: x

a message, plain
"
            ),
            0
        );
        let folded = b"Content-Type: MESSAGE
 (c) /RFC822

Subject: y

x
";
        assert_eq!(nested_messages(folded), 1);
        // A digest's parts are message/rfc822 by default: every boundary line counts.
        let digest = b"Content-Type: multipart/digest; boundary=d

--d

S: 1

--d

S: 2

--d--
";
        assert_eq!(nested_messages(digest), 3);
        // Quoted-printable hides the word; decoded, it counts.
        let qp = b"Content-Type: message/rfc822
Content-Transfer-Encoding: quoted-printable

Content-Type: =6Dessage/rfc822

x
";
        assert!(nested_messages(qp) >= 2);
        assert!(nested_messages(&hostile::nested_in_base64(5000)) > MAX_NESTED_MESSAGES);
    }

    /// 2,000 central-directory entries pointing at one member: each decompressed, dropped as
    /// a duplicate, and counted towards nothing (31.9 s of CPU, clean). Now every copy counts.
    #[test]
    fn zip_entries_pointing_at_one_member_count_towards_decoded_bytes() {
        let zip = hostile::zip_one_member_many_entries(2_000, 300 << 10);
        let w = walk(&hostile::mail_with("a.zip", &zip), &LIMITS);
        assert_eq!(limit(&w), Some(LimitKind::Bytes), "{:?}", w.limit);
        // Within max_parts too: 2,000 small copies stop at 100.
        let zip = hostile::zip_one_member_many_entries(2_000, 10);
        let w = walk(&hostile::mail_with("a.zip", &zip), &LIMITS);
        assert_eq!(limit(&w), Some(LimitKind::Parts), "{:?}", w.limit);
    }

    #[test]
    fn the_walk_stops_at_max_walk_time_and_when_cancelled() {
        let raw = hostile::mail_with("b.zip", &hostile::zip_many(20, 32 << 10));
        let w = walk(
            &raw,
            &Limits {
                max_time: Duration::ZERO,
                ..LIMITS
            },
        );
        let stop = w.limit.expect("out of time");
        assert_eq!(stop.kind, LimitKind::Time);
        assert!(stop.detail.contains("longer than"), "{stop}");
        let ctl = Control {
            cancel: Some(Arc::new(AtomicBool::new(true))),
            budget: None,
        };
        let w = walk_with(&raw, &LIMITS, &std::env::temp_dir(), &ctl, true)
            .unwrap()
            .unwrap();
        let stop = w.limit.expect("cancelled");
        assert_eq!(stop.kind, LimitKind::Time);
        assert!(stop.detail.contains("cancelled"), "{stop}");
        // Not cancelled, in time: the whole zip is listed.
        let w = walk(&raw, &LIMITS);
        assert_eq!(w.limit, None);
        assert_eq!(w.parts.iter().filter(|p| p.found == "zip").count(), 20);
    }

    /// A PE inside an xz whose header asks for a 1.5 GiB dictionary was not opened, and the
    /// message was clean.
    #[test]
    fn an_xz_beyond_the_decoder_limit_is_unchecked_not_clean() {
        let xz = hostile::xz_big_dictionary(b"MZ\x90\x00 a program");
        let w = walk(&hostile::mail_with("setup.exe.xz", &xz), &LIMITS);
        let stop = w.limit.expect("not opened");
        assert_eq!(stop.kind, LimitKind::Decoder, "{stop}");
        // The same with the dictionary it was written with is opened.
        let xz = hostile::xz(b"MZ\x90\x00 a program");
        let w = walk(&hostile::mail_with("setup.exe.xz", &xz), &LIMITS);
        assert_eq!(w.limit, None);
        assert!(w.parts.iter().any(|p| data(p) == b"MZ\x90\x00 a program"));
    }

    /// A solid 7z of 2,000 × 1 MiB took 113 MB of RSS outside server.max_memory. Its decoder
    /// window now comes from the budget: too small a budget stops the walk (452 4.3.1), enough
    /// of it lists the archive, and all of it is given back.
    #[test]
    fn seven_z_and_xz_decoder_memory_comes_from_the_budget() {
        let seven = hostile::mail_with("c.7z", &hostile::sevenz_solid(20, 128 << 10));
        let xz = hostile::mail_with("d.xz", &hostile::xz(&hostile::compressible(3 << 20, 3)));
        let limits = Limits {
            max_bytes: 64 << 20,
            ..LIMITS
        };
        for raw in [seven, xz] {
            let budget = crate::message::Budget::new(512 << 10, 10);
            let ctl = Control {
                cancel: None,
                budget: Some(budget.clone()),
            };
            let spool = std::env::temp_dir();
            let w = walk_with(&raw, &limits, &spool, &ctl, true)
                .unwrap()
                .unwrap();
            assert_eq!(limit(&w), Some(LimitKind::Memory), "{:?}", w.limit);
            assert_eq!(budget.memory(), 0);
            let budget = crate::message::Budget::new(64 << 20, 10);
            let ctl = Control {
                cancel: None,
                budget: Some(budget.clone()),
            };
            let w = walk_with(&raw, &limits, &spool, &ctl, true)
                .unwrap()
                .unwrap();
            assert_eq!(w.limit, None);
            assert!(w.parts.len() > 1);
            assert_eq!(budget.memory(), 0);
        }
    }

    fn clock() -> Clock {
        Clock {
            start: Instant::now(),
            max: Duration::from_secs(3600),
            cancel: None,
        }
    }

    fn data(p: &Part) -> Vec<u8> {
        p.contents.to_vec().unwrap()
    }

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
        assert!(w.parts.iter().any(|p| data(p) == file), "{:?}", w.parts);
    }

    #[test]
    fn letters_in_a_plain_text_are_not_an_attachment() {
        // smtp-source's body: lines of one letter, which are base64 letters too. Nothing says
        // base64, so the only part is the (verbatim) text.
        let line = "X".repeat(72);
        let msg = format!("Subject: load\r\n\r\n{line}\r\n{line}\r\n{line}\r\n");
        let w = walk(msg.as_bytes(), &LIMITS);
        assert_eq!(w.parts.len(), 1, "{:?}", w.parts);
        assert!(w.parts[0].verbatim && w.parts[0].found == "mime");
    }

    #[test]
    fn a_part_one_level_too_deep_is_still_read_structure_blind() {
        let file = b"MZ\x90\0this is a pretend executable with enough bytes to count";
        let mut msg = format!(
            "Content-Type: application/octet-stream; name=a.exe\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            b64(file)
        );
        for _ in 0..3 {
            msg = format!("Content-Type: message/rfc822\r\n\r\n{msg}");
        }
        let w = walk(
            msg.as_bytes(),
            &Limits {
                max_depth: 1,
                ..LIMITS
            },
        );
        assert_eq!(w.limit.as_ref().map(|l| l.kind), Some(LimitKind::Depth));
        assert!(w.parts.iter().any(|p| data(p) == file), "{:?}", w.parts);
    }

    #[test]
    fn a_base64_file_the_tree_decoded_is_not_decoded_again_by_the_raw_reading() {
        let file = noise(3000);
        let enc = b64(&file);
        let lines: Vec<&str> = enc
            .as_bytes()
            .chunks(76)
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect();
        let msg = format!(
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/octet-stream; name=a.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
            lines.join("\r\n")
        );
        let raw = msg.as_bytes();
        let spool: Arc<Path> = std::env::temp_dir().into();
        let mut c = Collector::new(&LIMITS, &spool, &clock(), &None);
        let m = MessageParser::default().parse(raw).unwrap();
        c.tree(&m, raw, 0);
        assert_eq!(c.walk.parts.len(), 1);
        let start = raw
            .windows(enc.len().min(20))
            .position(|w| w == &enc.as_bytes()[..20])
            .unwrap();
        let end = start + lines.join("\r\n").len();
        assert!(c.decoded_here(raw, start, end), "{:?}", c.base64_bodies);
        // Part of the body only, or a last group without its padding: decoded again.
        assert!(!c.decoded_here(raw, start + 78, end));
        assert!(!c.decoded_here(raw, start, end - 1));
        let w = walk(raw, &LIMITS);
        assert_eq!(w.parts.len(), 1, "{:?}", w.parts);
        assert_eq!(data(&w.parts[0]), file);
        // The same letters with a line that is no base64 in the middle: two runs the tree did
        // not decode as such, each read on its own.
        let broken = msg.replacen(lines[10], &format!("{}\r\n*junk*", lines[10]), 1);
        let w = walk(broken.as_bytes(), &LIMITS);
        assert!(w.parts.iter().any(|p| p.found == "raw"), "{:?}", w.parts);
    }

    #[test]
    fn a_text_not_transfer_encoded_is_verbatim_whatever_its_ascii_charset() {
        let text = |charset: &str, cte: &str, body: &[u8]| {
            let mut m = format!(
                "Subject: t\r\nContent-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
            )
            .into_bytes();
            m.extend_from_slice(body);
            let w = walk(&m, &LIMITS);
            assert_eq!(w.parts.len(), 1, "{:?}", w.parts);
            w.parts[0].verbatim
        };
        // mail-parser converts these, to the same bytes or to UTF-8 outside ASCII.
        assert!(text("us-ascii", "7bit", b"plain words only\r\n"));
        assert!(text(
            "us-ascii",
            "8bit",
            "caf\u{e9} \u{b7} signature\r\n".as_bytes()
        ));
        assert!(text("iso-8859-1", "8bit", b"caf\xe9\r\n"));
        // Charsets that turn other bytes into ASCII, and a transfer encoding: not verbatim.
        assert!(!text("utf-7", "7bit", b"+ADw-script+AD4-\r\n"));
        assert!(!text("utf-16", "binary", b"<\0s\0>\0\r\0\n\0"));
        assert!(!text("us-ascii", "quoted-printable", b"a=3Db\r\n"));
    }

    #[test]
    fn uuencoded_block_in_a_text_body_is_decoded() {
        let msg = b"Subject: uu\r\n\r\nsee attached\r\nbegin 644 cat.txt\r\n#0V%T\r\n`\r\nend\r\n";
        let w = walk(msg, &LIMITS);
        assert!(
            w.parts
                .iter()
                .any(|p| data(p) == b"Cat" && p.name.as_deref() == Some("cat.txt")),
            "{:?}",
            w.parts
        );
    }

    #[test]
    fn every_declared_file_name_of_a_part_is_kept() {
        let raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
Content-Type: application/pdf; name=\"b.exe\"\r\n\
Content-Disposition: attachment; filename=\"a.pdf\"; filename=\"second.js\"\r\n\
Content-Disposition: attachment; filename*=utf-8''evil.hta%00.pdf\r\n\
\r\n%PDF-1.4 x\r\n--b\r\n\
Content-Type: text/plain; name=\"=?utf-8?q?enc=2Evbs?=\"\r\n\r\nhi\r\n--b--\r\n";
        let w = walk(raw, &LIMITS);
        let p = w
            .parts
            .iter()
            .find(|p| data(p).starts_with(b"%PDF"))
            .unwrap();
        let mut all: Vec<&str> = p
            .name
            .iter()
            .chain(&p.other_names)
            .map(|s| s.as_str())
            .collect();
        all.sort();
        assert_eq!(
            all,
            ["a.pdf", "b.exe", "evil.hta\0.pdf", "second.js"],
            "{p:?}"
        );
        let t = w.parts.iter().find(|p| data(p).starts_with(b"hi")).unwrap();
        assert_eq!(t.name.as_deref(), Some("enc.vbs"));
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
            .map(|p| (p.name.as_deref(), p.container(), p.depth))
            .collect();
        assert!(
            names.contains(&(Some("readme.txt"), Some("zip"), 1)),
            "{names:?}"
        );
        assert!(
            names.contains(&(Some("tool.exe"), Some("zip"), 2)),
            "{names:?}"
        );
        assert!(w.parts.iter().any(|p| data(p) == b"MZ inner program bytes"));
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
        let kept = w.bytes() as usize;
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

    /// A deterministic, incompressible filler.
    fn noise(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A tar (GNU headers: long names work) of (path, contents) files, with a directory.
    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_size(0);
        dir.set_mode(0o755);
        b.append_data(&mut dir, "top/", &[][..]).unwrap();
        for (path, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8], name: Option<&str>) -> Vec<u8> {
        let mut b = flate2::GzBuilder::new();
        if let Some(n) = name {
            b = b.filename(n);
        }
        let mut e = b.write(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn bzip2(data: &[u8]) -> Vec<u8> {
        let mut e = ::bzip2::write::BzEncoder::new(Vec::new(), ::bzip2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut e =
            lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(6)).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A mail with one base64 attachment of that name.
    fn mail_named(name: &str, att: &[u8]) -> Vec<u8> {
        format!(
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/octet-stream; name={name}\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
            b64(att)
        )
        .into_bytes()
    }

    /// Name, containers and depth of each part.
    fn listing(w: &Walk) -> Vec<(Option<String>, Vec<&'static str>, usize)> {
        w.parts
            .iter()
            .map(|p| (p.name.clone(), p.containers.clone(), p.depth))
            .collect()
    }

    fn has(w: &Walk, name: &str, containers: &[&str], contents: &[u8]) -> bool {
        w.parts.iter().any(|p| {
            p.name.as_deref() == Some(name) && p.containers == containers && data(p) == contents
        })
    }

    #[test]
    fn tar_members_become_parts_and_directories_do_not() {
        let long = format!("top/{}/deep.txt", "d".repeat(120));
        let tar = tar_of(&[("top/readme.txt", b"read me"), (&long, b"a long path")]);
        let w = walk(&mail_named("src.tar", &tar), &LIMITS);
        assert!(
            has(&w, "readme.txt", &["tar"], b"read me"),
            "{:?}",
            listing(&w)
        );
        assert!(
            has(&w, "deep.txt", &["tar"], b"a long path"),
            "{:?}",
            listing(&w)
        );
        assert_eq!(w.parts.iter().filter(|p| p.found == "tar").count(), 2);
        assert_eq!(w.limit, None);
    }

    #[test]
    fn a_pax_path_names_the_member() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("path", &b"dir/real name.exe"[..])])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(4);
        h.set_mode(0o644);
        b.append_data(&mut h, "shortname", &b"data"[..]).unwrap();
        let w = walk(&mail_named("a.tar", &b.into_inner().unwrap()), &LIMITS);
        assert!(
            has(&w, "real name.exe", &["tar"], b"data"),
            "{:?}",
            listing(&w)
        );
    }

    #[test]
    fn gzip_bzip2_and_xz_have_one_member_named_by_header_or_file_name() {
        let doc = b"%PDF-1.4 a document that compresses well well well well well";
        let w = walk(&mail_named("report.pdf.gz", &gzip(doc, None)), &LIMITS);
        assert!(has(&w, "report.pdf", &["gzip"], doc), "{:?}", listing(&w));
        let w = walk(
            &mail_named("x.gz", &gzip(doc, Some("dir/inner.pdf"))),
            &LIMITS,
        );
        assert!(has(&w, "inner.pdf", &["gzip"], doc), "{:?}", listing(&w));
        let w = walk(&mail_named("report.pdf.bz2", &bzip2(doc)), &LIMITS);
        assert!(has(&w, "report.pdf", &["bzip2"], doc), "{:?}", listing(&w));
        let w = walk(&mail_named("report.pdf.xz", &xz(doc)), &LIMITS);
        assert!(has(&w, "report.pdf", &["xz"], doc), "{:?}", listing(&w));
        // Told by their bytes, not by their names.
        let w = walk(&mail_named("photo.jpg", &xz(doc)), &LIMITS);
        assert!(
            w.parts
                .iter()
                .any(|p| p.container() == Some("xz") && data(p) == doc && p.name.is_none()),
            "{:?}",
            listing(&w)
        );
        assert_eq!(w.limit, None);
    }

    #[test]
    fn a_zip_in_a_tar_gz_and_a_tar_in_a_zip_are_listed() {
        let inner = zip_of(&[("tool.exe", b"MZ inner program bytes")], true);
        let tgz = gzip(&tar_of(&[("top/inner.zip", &inner)]), None);
        let w = walk(&mail_named("src.tar.gz", &tgz), &LIMITS);
        let l = listing(&w);
        assert!(
            l.contains(&(Some("src.tar".into()), vec!["gzip"], 1)),
            "{l:?}"
        );
        assert!(
            l.contains(&(Some("inner.zip".into()), vec!["tar", "gzip"], 2)),
            "{l:?}"
        );
        assert!(
            has(
                &w,
                "tool.exe",
                &["zip", "tar", "gzip"],
                b"MZ inner program bytes"
            ),
            "{l:?}"
        );
        assert_eq!(w.parts[w.parts.len() - 1].depth, 3);

        let z = zip_of(
            &[(
                "bundle.tar.bz2",
                &bzip2(&tar_of(&[("a/b.sh", b"#!/bin/sh\n")])),
            )],
            true,
        );
        let w = walk(&mail_with(&z), &LIMITS);
        assert!(
            has(&w, "b.sh", &["tar", "bzip2", "zip"], b"#!/bin/sh\n"),
            "{:?}",
            listing(&w)
        );
        assert_eq!(w.limit, None);
    }

    /// A 7z of (name, contents) files: each compressed on its own, or all in one solid block.
    fn sevenz(members: &[(&str, &[u8])], solid: bool) -> Vec<u8> {
        use sevenz_rust2::{ArchiveEntry, ArchiveWriter, SourceReader};
        let mut w = ArchiveWriter::new(std::io::Cursor::new(Vec::new())).unwrap();
        w.set_encrypt_header(false);
        if solid {
            let entries = members.iter().map(|(n, _)| ArchiveEntry::new_file(n));
            let readers = members.iter().map(|(_, d)| SourceReader::new(*d)).collect();
            w.push_archive_entries(entries.collect(), readers).unwrap();
        } else {
            for (name, data) in members {
                w.push_archive_entry(ArchiveEntry::new_file(name), Some(*data))
                    .unwrap();
            }
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn seven_z_files_become_parts_solid_or_not() {
        let files: &[(&str, &[u8])] = &[
            ("dir/readme.txt", b"read me first"),
            ("dir/tool.exe", b"MZ a program inside a 7z archive"),
        ];
        for solid in [false, true] {
            let w = walk(&mail_named("bundle.7z", &sevenz(files, solid)), &LIMITS);
            assert!(
                has(&w, "readme.txt", &["7z"], b"read me first"),
                "{:?}",
                listing(&w)
            );
            assert!(
                has(&w, "tool.exe", &["7z"], b"MZ a program inside a 7z archive"),
                "{:?}",
                listing(&w)
            );
            assert_eq!(w.limit, None);
        }
        // A 7z bomb stops at the ratio, like the others.
        let zeros = vec![0u8; 2 << 20];
        let w = walk(
            &mail_named("z.7z", &sevenz(&[("zeros", &zeros)], false)),
            &Limits {
                max_bytes: 32 << 20,
                ..LIMITS
            },
        );
        assert_eq!(w.limit.as_ref().map(|l| l.kind), Some(LimitKind::Ratio));
        // A broken one is only not listed.
        let mut broken = sevenz(files, true);
        let n = broken.len();
        broken[n / 2..].fill(0);
        let w = walk(&mail_named("broken.7z", &broken), &LIMITS);
        assert!(w.parts.iter().any(|p| data(p) == broken));
    }

    #[test]
    fn only_a_walk_without_archives_is_done_inline() {
        let tmp = std::env::temp_dir();
        let plain = mail_named("a.txt", b"just some text in an attachment, nothing packed");
        let w = walk_unless_archives(&plain, &LIMITS, &tmp).unwrap();
        assert!(w.is_some_and(|w| w.parts.len() == 1));
        let packed = mail_named("a.txt.gz", &gzip(b"packed", None));
        assert!(walk_unless_archives(&packed, &LIMITS, &tmp)
            .unwrap()
            .is_none());
    }

    #[test]
    fn archives_nested_past_max_depth_stop_the_walk() {
        let mut data = b"the innermost file".to_vec();
        for _ in 0..4 {
            data = gzip(&data, None);
        }
        let w = walk(
            &mail_named("a.gz", &data),
            &Limits {
                max_depth: 2,
                ..LIMITS
            },
        );
        assert_eq!(
            w.limit.as_ref().map(|l| l.kind),
            Some(LimitKind::Depth),
            "{:?}",
            listing(&w)
        );
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_ratio() {
        let bomb = gzip(&vec![0u8; 8 << 20], None);
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let w = walk(
            &mail_named("zeros.gz", &bomb),
            &Limits {
                max_bytes: 32 << 20,
                ..LIMITS
            },
        );
        assert_eq!(
            w.limit,
            Some(Stop {
                kind: LimitKind::Ratio,
                detail: "archive member zeros expands more than 100 times".into()
            })
        );
        // No more than the 1 MiB floor of the cap was decoded (and none of it kept).
        assert!(w.bytes() < 1 << 20, "{}", w.bytes());
        // Within the quota instead, the quota stops it.
        let w = walk(&mail_named("zeros.gz", &bomb), &LIMITS);
        assert_eq!(w.limit.as_ref().map(|l| l.kind), Some(LimitKind::Bytes));
    }

    #[test]
    fn corrupt_and_truncated_archives_do_not_panic_and_stay_parts() {
        let tgz = gzip(
            &tar_of(&[("a.txt", &noise(20_000)), ("b.txt", b"second")]),
            None,
        );
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "junk.gz",
                b"\x1f\x8b\x08\x00garbage that is not deflate at all".to_vec(),
            ),
            ("cut.tar.gz", tgz[..tgz.len() / 2].to_vec()),
            (
                "junk.bz2",
                b"BZh9 not really bzip2 data, only the magic".to_vec(),
            ),
            (
                "junk.xz",
                b"\xFD7zXZ\x00 not really xz data behind the magic".to_vec(),
            ),
            ("junk.tar", {
                let mut t = vec![b'x'; 1024];
                t[257..263].copy_from_slice(b"ustar\0");
                t
            }),
            (
                "junk.zip",
                b"PK\x03\x04 not a zip after all, just the magic".to_vec(),
            ),
        ];
        for (name, att) in cases {
            let w = walk(&mail_named(name, &att), &LIMITS);
            assert!(
                w.parts.iter().any(|p| data(p) == att),
                "{name}: the archive itself is still a part"
            );
            assert_eq!(w.limit, None, "{name}");
        }
        // The truncated .tar.gz: what was decompressed is kept, and lists the first file.
        let w = walk(&mail_named("cut.tar.gz", &tgz[..tgz.len() / 2]), &LIMITS);
        assert!(
            w.parts
                .iter()
                .any(|p| p.name.as_deref() == Some("a.txt") && p.containers == ["tar", "gzip"]),
            "{:?}",
            listing(&w)
        );
    }

    #[test]
    fn spilled_contents_read_back_whole() {
        let spool: Arc<Path> = std::env::temp_dir().into();
        let mut c = Collector::new(
            &Limits {
                max_memory: 10,
                ..LIMITS
            },
            &spool,
            &clock(),
            &None,
        );
        let mut bytes = noise(3 * CHUNK);
        // A needle straddling the first read-back piece's end.
        bytes[CHUNK - 3..CHUNK + 4].copy_from_slice(b"NEEDLE!");
        let s = c.contents(&bytes).unwrap();
        assert!(s.is_spilled());
        assert_eq!(s.memory(), 10);
        assert_eq!(s.len(), bytes.len() as u64);
        assert_eq!(s.to_vec().unwrap(), bytes);
        assert!(s.contains(b"NEEDLE!"));
        assert!(!s.contains(b"not in there at all"));
        assert_eq!(&s.slice(5, 10).unwrap()[..], &bytes[5..15]);
        assert_eq!(&s.slice(CHUNK as u64, 3).unwrap()[..], b"DLE");
        let mut r = s.reader();
        r.seek(SeekFrom::End(-2)).unwrap();
        let mut end = Vec::new();
        r.read_to_end(&mut end).unwrap();
        assert_eq!(end, &bytes[bytes.len() - 2..]);
        let (head, tail) = s.stream().unwrap();
        let mut all = head.to_vec();
        tail.unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(all, bytes);
    }

    #[test]
    fn a_64_mib_member_spills_and_memory_stays_within_the_budget() {
        // 64 MiB of zeros deflate to about 64 KiB; quota and ratio raised so that it is read.
        let zeros = vec![0u8; 64 << 20];
        let z = zip_of(&[("zeros.bin", &zeros)], true);
        drop(zeros);
        let limits = Limits {
            max_bytes: 128 << 20,
            max_ratio: 10_000,
            max_memory: 1 << 20,
            ..LIMITS
        };
        let w = walk(&mail_with(&z), &limits);
        assert_eq!(w.limit, None);
        let m = w
            .parts
            .iter()
            .find(|p| p.name.as_deref() == Some("zeros.bin"))
            .expect("the member is kept");
        assert_eq!(m.contents.len(), 64 << 20);
        assert!(m.contents.is_spilled());
        assert!(m.contents.memory() <= HEAD);
        assert!(w.memory() <= limits.max_memory, "{} in memory", w.memory());
        assert_eq!(&m.contents.slice((64 << 20) - 4, 8).unwrap()[..], [0; 4]);
    }

    #[test]
    fn a_spilled_office_file_is_still_sniffed_and_kept_whole() {
        // A macro workbook whose VBA member comes after 200 KiB of other members.
        let xlsm = zip_of(
            &[
                ("[Content_Types].xml", b"<Types/>"),
                ("xl/media/image1.bin", &noise(200 * 1024)),
                ("xl/vbaProject.bin", b"\xD0\xCF\x11\xE0 vba"),
            ],
            false,
        );
        let w = walk(
            &mail_named("budget.xlsx", &xlsm),
            &Limits {
                max_memory: 65_536,
                ..LIMITS
            },
        );
        let p = w
            .parts
            .iter()
            .find(|p| p.name.as_deref() == Some("budget.xlsx"))
            .unwrap();
        assert!(p.contents.is_spilled());
        assert_eq!(
            crate::scan::banned::sniff(&p.contents),
            Some("office-macro")
        );
        assert!(
            w.parts.iter().all(|p| p.containers.is_empty()),
            "not listed"
        );
    }

    #[test]
    fn a_spilled_zip_is_listed_from_its_file() {
        let filler = noise(200 * 1024);
        let z = zip_of(
            &[("filler.bin", &filler), ("last.txt", b"the last member")],
            false,
        );
        let w = walk(
            &mail_named("big.zip", &z),
            &Limits {
                max_memory: 65_536,
                ..LIMITS
            },
        );
        assert!(w.parts[0].contents.is_spilled());
        assert!(
            has(&w, "filler.bin", &["zip"], &filler),
            "{:?}",
            listing(&w)
        );
        assert!(has(&w, "last.txt", &["zip"], b"the last member"));
        assert!(w.memory() <= 65_536, "{}", w.memory());
    }
}
