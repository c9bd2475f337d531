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
//! it; the copy of a spooled message is taken from `server.max_memory`, see
//! `Message::read_all_within`) and the window of an xz or 7z decoder, which grows with its output up to the dictionary
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
//!
//! The files: this one holds the walk (its types, limits, clock and the collector every
//! reading adds to); `tree` the MIME tree's reading (mail-parser, behind its nesting guard);
//! `raw` the structure-blind reading and the nesting pre-scan; `archive` the archives;
//! `spill` the decoded contents, in memory or spilled to the spool.

mod archive;
pub mod leave_out;
mod raw;
mod spill;
mod tree;

pub use raw::{base64_lenient, nested_messages, shape, Shape};
pub use spill::{Contents, Reader, HEAD};
pub use tree::parse_guarded;

use archive::{Archive, DecoderMemory};
use raw::raw_blocks;
use spill::Sink;
use tree::parse_nested;

use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Where the bytes that encode it stand in the message (`start..end`), when clamd may be
    /// sent the message without them and this part instead (see [`leave_out`]): a file's
    /// body in clean base64, well-formed quoted-printable or as it is, a well-formed uuencoded
    /// block. None for everything else: text parts (clamd's mail-format and phishing
    /// signatures read them in the message), archive members, the raw reading's base64 runs.
    pub encoded: Option<(usize, usize)>,
    /// A text/plain or text/html part of the message clamd is sent, in quoted-printable or
    /// base64 that clamd's own MIME parser decodes as every decoder does, in a structure it
    /// provably reads as mail-parser did ([`leave_out::text_read_by_clamd`],
    /// `tree::plain_structure`): clamd scans its decoded text from the message, so the copy
    /// need not be sent as well (`[parts] clamd_decodes_text`).
    pub clamd_reads: bool,
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
    /// The walk failed: a spill file could not be written, the spooled message could not be
    /// read back, the walk's thread was lost. Never taken as "not walked": the banned-file
    /// rules have not seen the parts (`[parts] on_walk_error`, "tempfail" by default).
    Error,
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
        "error",
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
            LimitKind::Error => "error",
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
    let mut tree_memory = crate::message::MemoryHold::new(ctl.budget.clone());
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
    } else if let Err(e) = tree_memory.grow_to(shape.tree_memory()) {
        // The tree is taken from server.max_memory like the decoders' windows: a multipart
        // nested 30,000 deep holds about 60 MiB as mail-parser's tree.
        w.stop(LimitKind::Memory, format!("MIME tree: {e}"));
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
    drop(tree_memory);
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

/// Whether `needle` occurs in `hay` (also used by the banned-file sniffing).
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

// The hostile shapes of issue 16, shared with the integration tests and examples/hostile.rs.
#[cfg(test)]
#[path = "../../../tests/integration/hostile.rs"]
mod hostile;

#[cfg(test)]
mod tests;
