//! A received message: its envelope, and its bytes held in memory up to a threshold with the rest
//! spooled to an unlinked temp file, so a 50 MB message costs a fixed amount of RAM. Also finds
//! the header section, which is the only part postsift ever rewrites.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::xforward;

/// The SMTP envelope of one transaction, with the ESMTP parameters that must reach the
/// reinjection server unchanged.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// Reverse path without angle brackets; empty for the null sender.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// `SIZE=` as the client declared it.
    pub size: Option<u64>,
    /// `BODY=7BIT` / `8BITMIME`.
    pub body: Option<&'static str>,
    pub smtputf8: bool,
    /// `RET=FULL` / `HDRS`.
    pub ret: Option<&'static str>,
    /// `ENVID=`, decoded from xtext.
    pub envid: Option<String>,
    /// Postfix's XFORWARD attributes of the original client.
    pub xforward: xforward::Attrs,
}

#[derive(Debug, Clone, Default)]
pub struct Recipient {
    pub address: String,
    /// `NOTIFY=` value as sent (e.g. `SUCCESS,FAILURE`).
    pub notify: Option<String>,
    /// `ORCPT=rfc822;` address, decoded from xtext.
    pub orcpt: Option<String>,
}

/// Collects message bytes as they arrive: in memory up to `threshold`, then in a temp file.
/// The header section is the exception: it stays in memory whole, up to `max_header` bytes,
/// because it is what postsift rewrites and every forged header in it must be seen; a larger
/// one is flagged ([`Message::header_too_big`]) and the message refused.
/// The file is written with plain blocking writes through a 64 KiB buffer: they land in the page
/// cache and return in microseconds, which costs far fewer system calls than tokio::fs's
/// thread hand-off per write.
pub struct Spool {
    held: Held,
    head: Vec<u8>,
    file: Option<BufWriter<File>>,
    len: u64,
    threshold: usize,
    max_header: usize,
    scan: HeaderScan,
    header_too_big: bool,
    dir: std::path::PathBuf,
}

impl Spool {
    /// A spool outside any [`Budget`] (the `scan` command, tests).
    pub fn new(threshold: usize, max_header: usize, dir: &Path) -> Spool {
        Spool::with_held(Held::default(), threshold, max_header, dir)
    }

    /// A spool that takes its memory and spool file from `budget`: None when the budget
    /// cannot even give it `threshold` bytes (the caller answers `452 4.3.1`).
    pub fn reserve(
        budget: &Arc<Budget>,
        threshold: usize,
        max_header: usize,
        dir: &Path,
    ) -> Option<Spool> {
        if !budget.take_memory(threshold) {
            return None;
        }
        let held = Held {
            budget: Some(budget.clone()),
            memory: threshold,
            file: false,
        };
        Some(Spool::with_held(held, threshold, max_header, dir))
    }

    fn with_held(held: Held, threshold: usize, max_header: usize, dir: &Path) -> Spool {
        Spool {
            held,
            head: Vec::with_capacity(threshold.min(16 * 1024)),
            file: None,
            len: 0,
            threshold,
            max_header,
            scan: HeaderScan::new(),
            header_too_big: false,
            dir: dir.to_owned(),
        }
    }

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

    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        let offset = self.len;
        self.len += data.len() as u64;
        self.scan.feed(data, offset);
        if self.file.is_none() {
            // While the header section goes on, memory holds it (up to max_header); after
            // it, memory holds up to the threshold or the header section's end.
            let in_headers = match self.scan.end() {
                None => self.max_header,
                Some(end) => usize::try_from(end)
                    .unwrap_or(usize::MAX)
                    .min(self.max_header),
            };
            let limit = self.threshold.max(in_headers);
            if self.scan.end().is_none_or(|e| e > self.max_header as u64)
                && self.len > self.max_header as u64
            {
                self.header_too_big = true;
            }
            let room = limit.saturating_sub(self.head.len());
            let n = room.min(data.len());
            self.held.grow_to(self.head.len() + n)?;
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
            if data.is_empty() {
                return Ok(());
            }
            self.held.take_file()?;
            // tempfile() unlinks at once: a crash leaves nothing behind in the spool directory.
            let f = tempfile::tempfile_in(&self.dir)?;
            self.file = Some(BufWriter::with_capacity(64 * 1024, f));
        }
        self.file.as_mut().expect("file set above").write_all(data)
    }

    pub fn finish(self) -> io::Result<Message> {
        let tail = match self.file {
            Some(w) => {
                let mut f = w.into_inner().map_err(|e| e.into_error())?;
                f.flush()?;
                Some(f)
            }
            None => None,
        };
        let head = Bytes::from(self.head);
        let header_too_big =
            self.header_too_big || self.scan.end().is_none() && self.len > head.len() as u64;
        let header_end = if header_too_big {
            0
        } else {
            // No line that ends the header section: the whole message is header fields.
            self.scan.end().map_or(head.len(), |e| e as usize)
        };
        Ok(Message {
            _held: self.held,
            head,
            tail,
            len: self.len,
            header_end,
            header_too_big,
            separated: self.scan.end().is_none() || self.scan.blank,
        })
    }
}

/// What all messages being received or processed together may hold: bytes in memory and
/// spool files open. Past either, new messages are answered `452 4.3.1` instead of the
/// process growing. Shared by every session (and across reloads, which may change the limits).
#[derive(Debug, Default)]
pub struct Budget {
    memory: AtomicUsize,
    files: AtomicUsize,
    max_memory: AtomicUsize,
    max_files: AtomicUsize,
}

impl Budget {
    pub fn new(max_memory: usize, max_files: usize) -> Arc<Budget> {
        let b = Budget::default();
        b.set_limits(max_memory, max_files);
        Arc::new(b)
    }

    pub fn set_limits(&self, max_memory: usize, max_files: usize) {
        self.max_memory.store(max_memory, Ordering::Relaxed);
        self.max_files.store(max_files, Ordering::Relaxed);
    }

    /// Bytes held in memory by spools now.
    pub fn memory(&self) -> usize {
        self.memory.load(Ordering::Relaxed)
    }

    /// Spool files open now.
    pub fn files(&self) -> usize {
        self.files.load(Ordering::Relaxed)
    }

    fn take(counter: &AtomicUsize, n: usize, max: usize) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                cur.checked_add(n).filter(|&t| t <= max)
            })
            .is_ok()
    }

    fn take_memory(&self, n: usize) -> bool {
        Budget::take(&self.memory, n, self.max_memory.load(Ordering::Relaxed))
    }

    fn take_file(&self) -> bool {
        Budget::take(&self.files, 1, self.max_files.load(Ordering::Relaxed))
    }
}

/// Memory taken from a [`Budget`] by something other than a spool (the MIME walk's xz, 7z and
/// bzip2 decoders); given back on drop. Without a budget it counts nothing.
#[derive(Debug, Default)]
pub struct MemoryHold(Held);

impl MemoryHold {
    pub fn new(budget: Option<Arc<Budget>>) -> MemoryHold {
        MemoryHold(Held {
            budget,
            memory: 0,
            file: false,
        })
    }

    /// Makes sure `total` bytes are held: Err (`OutOfMemory`) when the budget cannot give them.
    pub fn grow_to(&mut self, total: usize) -> io::Result<()> {
        self.0.grow_to(total)
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.0.memory
    }
}

/// A copy of a message and the budget it was taken from (see [`Message::read_all_within`]).
struct HeldCopy {
    data: Vec<u8>,
    _hold: MemoryHold,
}

impl AsRef<[u8]> for HeldCopy {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// One spool's share of a [`Budget`]; returned on drop. Without a budget it counts nothing.
#[derive(Debug, Default)]
struct Held {
    budget: Option<Arc<Budget>>,
    memory: usize,
    file: bool,
}

impl Held {
    fn exhausted(what: &str) -> io::Error {
        // OutOfMemory tells the session to count it as a resource limit, not a disk fault.
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("{what} budget exhausted (server.max_memory / server.max_spool_files)"),
        )
    }

    /// Makes sure `total` bytes of memory are held.
    fn grow_to(&mut self, total: usize) -> io::Result<()> {
        let Some(b) = &self.budget else {
            return Ok(());
        };
        if total > self.memory {
            if !b.take_memory(total - self.memory) {
                return Err(Held::exhausted("memory"));
            }
            self.memory = total;
        }
        Ok(())
    }

    fn take_file(&mut self) -> io::Result<()> {
        let Some(b) = &self.budget else {
            return Ok(());
        };
        if !b.take_file() {
            return Err(Held::exhausted("spool file"));
        }
        self.file = true;
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.memory.fetch_sub(self.memory, Ordering::AcqRel);
            if self.file {
                b.files.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// Finds the end of the header section as the bytes stream past, in constant memory: the
/// start of the first line that is neither a header field (`name WSP* ":"`, RFC 5322 with its
/// obsolete whitespace before the colon, which mail clients and Postfix accept) nor a
/// continuation of one. Normally that is the blank line before the body.
#[derive(Debug, Clone, Copy)]
struct HeaderScan {
    st: Scan,
    line_start: u64,
    end: Option<u64>,
    /// The line that ended the header section is blank (the normal separator).
    blank: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    LineStart { after_field: bool },
    Name,
    Space,
    Value,
}

impl HeaderScan {
    fn new() -> HeaderScan {
        HeaderScan {
            st: Scan::LineStart { after_field: false },
            line_start: 0,
            end: None,
            blank: false,
        }
    }

    fn end(&self) -> Option<u64> {
        self.end
    }

    /// Feeds `data`, which starts at byte `offset` of the message.
    fn feed(&mut self, data: &[u8], offset: u64) {
        let mut i = 0;
        while self.end.is_none() && i < data.len() {
            let b = data[i];
            self.st = match self.st {
                Scan::Value => match data[i..].iter().position(|&c| c == b'\n') {
                    Some(p) => {
                        i += p + 1;
                        self.line_start = offset + i as u64;
                        self.st = Scan::LineStart { after_field: true };
                        continue;
                    }
                    None => return,
                },
                Scan::LineStart { after_field } => match b {
                    b' ' | b'\t' if after_field => Scan::Value,
                    _ if is_name_byte(b) => Scan::Name,
                    _ => {
                        // Lines end in CRLF here, so a CR at a line's start is a blank line.
                        self.blank = b == b'\r';
                        self.end = Some(self.line_start);
                        return;
                    }
                },
                Scan::Name => match b {
                    b':' => Scan::Value,
                    b' ' | b'\t' => Scan::Space,
                    _ if is_name_byte(b) => Scan::Name,
                    _ => {
                        self.end = Some(self.line_start);
                        return;
                    }
                },
                Scan::Space => match b {
                    b':' => Scan::Value,
                    b' ' | b'\t' => Scan::Space,
                    _ => {
                        self.end = Some(self.line_start);
                        return;
                    }
                },
            };
            i += 1;
        }
    }
}

/// RFC 5322 ftext: printable ASCII but the colon.
fn is_name_byte(b: u8) -> bool {
    (33..=126).contains(&b) && b != b':'
}

/// A complete message: CRLF line ends only, dot-unstuffed, ending with CRLF (unless empty).
pub struct Message {
    /// Memory and file taken from the budget, given back when the message is dropped.
    _held: Held,
    head: Bytes,
    tail: Option<File>,
    len: u64,
    header_end: usize,
    header_too_big: bool,
    /// The header section is followed by a blank line, or by nothing.
    separated: bool,
}

impl Message {
    /// A message from bytes already in memory (the `scan` command, tests).
    pub fn from_bytes(data: &[u8]) -> Message {
        let mut spool = Spool::new(usize::MAX, usize::MAX, Path::new("/nonexistent"));
        spool
            .write(&normalize_line_ends(data))
            .expect("memory spool");
        spool.finish().expect("memory spool")
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes held in memory (the whole message when it was not spooled).
    pub fn head(&self) -> &Bytes {
        &self.head
    }

    /// The header section, up to and including its last header line's CRLF (not the blank
    /// line). Empty when the message does not start with a header field, or when the header
    /// section was larger than the spool's `max_header` ([`Message::header_too_big`]).
    pub fn header_section(&self) -> &[u8] {
        &self.head[..self.header_end]
    }

    /// The header section did not fit in `max_header` bytes: it could not be checked whole,
    /// so the message must be refused rather than passed with forged headers in it.
    pub fn header_too_big(&self) -> bool {
        self.header_too_big
    }

    /// The header section ends at a line that is not blank (a malformed line): a blank line
    /// must go in front of it on output, so that no later parser, stricter or more lenient,
    /// reads what follows as header fields.
    pub fn needs_separator(&self) -> bool {
        !self.header_too_big && !self.separated
    }

    /// Offset in [`Message::head`] where the part after the headers (blank line and body) begins.
    pub fn header_end(&self) -> usize {
        self.header_end
    }

    /// A second handle on the spool file with its own offset, for a concurrent reader.
    pub fn reopen_tail(&self) -> io::Result<Option<File>> {
        self.tail.as_ref().map(reopen).transpose()
    }

    /// Calls `f` with consecutive pieces of the message from byte `from` of the head onwards,
    /// up to `limit` bytes in all; pieces from the spool file are at most 64 KiB.
    pub fn for_each_chunk(
        &self,
        from: usize,
        limit: u64,
        mut f: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut left = limit;
        let head = &self.head[from.min(self.head.len())..];
        let n = (head.len() as u64).min(left) as usize;
        if n > 0 {
            f(&head[..n])?;
        }
        left -= n as u64;
        if left == 0 {
            return Ok(());
        }
        if let Some(mut file) = self.reopen_tail()? {
            file.seek(SeekFrom::Start(0))?;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                let want = (buf.len() as u64).min(left) as usize;
                let got = file.read(&mut buf[..want])?;
                if got == 0 {
                    break;
                }
                f(&buf[..got])?;
                left -= got as u64;
            }
        }
        Ok(())
    }

    /// The message from byte `from` of the head to its end, as an owned reader (for work on
    /// another thread): the head's bytes shared, the spool file through its own handle.
    pub fn reader_from(&self, from: usize) -> io::Result<impl Read + Send + 'static> {
        let head = self.head.slice(from.min(self.head.len())..);
        let rest = self.len - self.head.len() as u64;
        let tail: Box<dyn Read + Send> = match self.reopen_tail()? {
            Some(mut f) => {
                f.seek(SeekFrom::Start(0))?;
                Box::new(f.take(rest))
            }
            None => Box::new(io::empty()),
        };
        Ok(io::Cursor::new(head).chain(tail))
    }

    /// The whole message in memory (for the MIME walk, which bounds the size it asks for).
    /// A message held wholly in memory is shared, not copied (the common, small case).
    pub fn read_all(&self) -> io::Result<Bytes> {
        if self.tail.is_none() {
            return Ok(self.head.clone());
        }
        let mut out = Vec::with_capacity(self.len as usize);
        self.for_each_chunk(0, u64::MAX, |c| {
            out.extend_from_slice(c);
            Ok(())
        })?;
        Ok(out.into())
    }

    /// [`Message::read_all`] for the MIME walk and mail authentication: a copy of a spooled
    /// message is taken from `budget` (`server.max_memory`) before it is read, and given back
    /// when the last clone of it is dropped (a walk on another thread may outlive the session).
    /// Err (`OutOfMemory`) when the budget cannot give it: the caller answers `452 4.3.1`.
    pub fn read_all_within(&self, budget: Option<&Arc<Budget>>) -> io::Result<Bytes> {
        if self.tail.is_none() {
            return Ok(self.head.clone());
        }
        let mut hold = MemoryHold::new(budget.cloned());
        hold.grow_to(self.len as usize)?;
        let mut out = Vec::with_capacity(self.len as usize);
        self.for_each_chunk(0, u64::MAX, |c| {
            out.extend_from_slice(c);
            Ok(())
        })?;
        Ok(Bytes::from_owner(HeldCopy {
            data: out,
            _hold: hold,
        }))
    }

    /// At most `max` bytes from the start, cut after the last complete line: what spamd is sent
    /// (amavis truncates the same way rather than skipping big messages).
    pub fn prefix_for_spam_check(&self, max: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity((self.len as usize).min(max));
        self.for_each_chunk(0, max as u64, |c| {
            out.extend_from_slice(c);
            Ok(())
        })?;
        if (out.len() as u64) < self.len {
            if let Some(p) = out.iter().rposition(|&b| b == b'\n') {
                out.truncate(p + 1);
            }
        }
        Ok(out)
    }
}

/// A second handle on an (unlinked) spool file with its own offset: /proc/self/fd gives an
/// independent open file description, which File::try_clone (dup) would not.
pub(crate) fn reopen(f: &File) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    File::open(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

/// The name of a header field line (`name WSP* ":" …`), without the whitespace before the
/// colon; None when the line is not a header field.
pub fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    let trimmed = match name.iter().rposition(|&b| b != b' ' && b != b'\t') {
        Some(p) => &name[..p + 1],
        None => return None,
    };
    trimmed.iter().all(|&b| is_name_byte(b)).then_some(trimmed)
}

/// `name WSP* ":"` with a name of printable ASCII other than colon (RFC 5322 ftext; the
/// whitespace is RFC 5322's obsolete syntax, which mail clients still parse).
pub fn is_field_start(line: &[u8]) -> bool {
    field_name(line).is_some()
}

/// The fields of a header section, each with its continuation lines and final CRLF.
pub fn fields(section: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < section.len() {
        let nl = section[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(section.len(), |p| pos + p + 1);
        let next_is_cont = matches!(section.get(nl), Some(b' ') | Some(b'\t'));
        if !next_is_cont {
            out.push(&section[start..nl]);
            start = nl;
        }
        pos = nl;
    }
    out
}

/// Turns every bare CR and bare LF into CRLF (used for messages that did not come through the
/// SMTP decoder, which normalises on its own).
pub fn normalize_line_ends(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 50);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' if data.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(m: &Message, from: usize) -> Vec<u8> {
        let mut v = Vec::new();
        m.for_each_chunk(from, u64::MAX, |c| {
            v.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        v
    }

    #[test]
    fn spills_to_file_above_threshold() {
        let dir = std::env::temp_dir();
        let mut s = Spool::new(10, 1 << 20, &dir);
        s.write(b"Subject: x\r\n\r\nhello world, this is long\r\n")
            .unwrap();
        let m = s.finish().unwrap();
        // The header section stays in memory whole, past the threshold.
        assert_eq!(m.head().len(), 12);
        assert_eq!(m.header_section(), b"Subject: x\r\n");
        assert_eq!(
            collect(&m, 0),
            b"Subject: x\r\n\r\nhello world, this is long\r\n"
        );
    }

    /// Issue 16: the whole-message copy the MIME walk reads from the spool was outside
    /// server.max_memory (64 hostile messages at once: 273 MiB against 192). It is taken from
    /// the budget while any clone of it lives, and refused when the budget cannot give it.
    #[test]
    fn the_walks_copy_of_a_spooled_message_is_taken_from_the_budget() {
        let dir = std::env::temp_dir();
        let mut s = Spool::new(10, 1 << 20, &dir);
        let data = b"Subject: x\r\n\r\nhello world, this is long\r\n";
        s.write(data).unwrap();
        let m = s.finish().unwrap();
        let budget = Budget::new(1000, 10);
        let copy = m.read_all_within(Some(&budget)).unwrap();
        assert_eq!(&copy[..], &data[..]);
        assert_eq!(budget.memory(), data.len());
        let clone = copy.slice(2..);
        drop(copy);
        assert_eq!(budget.memory(), data.len());
        drop(clone);
        assert_eq!(budget.memory(), 0);
        let small = Budget::new(data.len() - 1, 10);
        let e = m.read_all_within(Some(&small)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::OutOfMemory);
        assert_eq!(small.memory(), 0);
    }

    /// Feeds `data` to a spool in pieces of `split` bytes.
    fn spooled(data: &[u8], split: usize, threshold: usize, max_header: usize) -> Message {
        let mut s = Spool::new(threshold, max_header, &std::env::temp_dir());
        for piece in data.chunks(split) {
            s.write(piece).unwrap();
        }
        s.finish().unwrap()
    }

    #[test]
    fn header_section_larger_than_threshold_is_kept_whole() {
        // Regression: a forged X-Spam-Flag followed by 33,000 short header lines (264 KB)
        // was past the 256 KiB threshold and escaped stripping.
        let mut data = b"X-Spam-Flag: YES\r\n".to_vec();
        for i in 0..33_000 {
            data.extend_from_slice(format!("X-L: {i:03}\r\n").as_bytes());
        }
        let header_len = data.len();
        data.extend_from_slice(b"\r\nbody\r\n");
        for split in [1000, 65536, 7] {
            let m = spooled(&data, split, 262_144, 1 << 20);
            assert!(!m.header_too_big());
            assert_eq!(m.header_section().len(), header_len, "split {split}");
            assert!(m.header_section().starts_with(b"X-Spam-Flag: YES\r\n"));
            assert_eq!(collect(&m, 0), data);
        }
    }

    #[test]
    fn header_section_over_max_is_flagged() {
        // Regression: one 10 MiB header line.
        let mut data = b"X-Spam-Flag: YES\r\nX-Long: ".to_vec();
        data.extend(std::iter::repeat_n(b'a', 10 << 20));
        data.extend_from_slice(b"\r\n\r\nbody\r\n");
        let m = spooled(&data, 65536, 262_144, 1 << 20);
        assert!(m.header_too_big());
        assert_eq!(m.header_section(), b"");
        assert!(m.head().len() <= 1 << 20);
        assert_eq!(collect(&m, 0), data);
        // All header lines, no body, over the limit.
        let m = spooled(&data[..(2 << 20)], 65536, 1024, 1 << 20);
        assert!(m.header_too_big());
    }

    #[test]
    fn whitespace_before_colon_is_a_header_field() {
        // Regression: "X-Spam-Flag : YES" as the first line made the header section empty.
        let m =
            Message::from_bytes(b"X-Spam-Flag : YES\r\nX-Spam-Flag\t: YES\r\nA: 1\r\n\r\nbody\r\n");
        assert_eq!(
            m.header_section(),
            b"X-Spam-Flag : YES\r\nX-Spam-Flag\t: YES\r\nA: 1\r\n"
        );
        assert_eq!(
            field_name(b"X-Spam-Flag \t : YES\r\n"),
            Some(&b"X-Spam-Flag"[..])
        );
        assert_eq!(field_name(b"X-Spam Flag: YES\r\n"), None);
        assert_eq!(field_name(b" X-Spam-Flag: YES\r\n"), None);
        assert_eq!(field_name(b": YES\r\n"), None);
        assert_eq!(field_name(b"X-\xffSpam: YES\r\n"), None);
    }

    #[test]
    fn header_section_bounds() {
        let m = Message::from_bytes(b"A: 1\r\nB: 2\r\n  cont\r\n\r\nbody\r\n");
        assert_eq!(m.header_section(), b"A: 1\r\nB: 2\r\n  cont\r\n");
        assert!(!m.needs_separator());
        let m = Message::from_bytes(b"no header here\r\nA: 1\r\n");
        assert_eq!(m.header_section(), b"");
        assert!(m.needs_separator());
        let m = Message::from_bytes(b"A: 1\r\nnot a header\r\nB: 2\r\n");
        assert_eq!(m.header_section(), b"A: 1\r\n");
        assert!(m.needs_separator());
        let m = Message::from_bytes(b"A: 1\r\nB: 2\r\n");
        assert_eq!(m.header_section(), b"A: 1\r\nB: 2\r\n");
        assert!(!m.needs_separator());
        let m = Message::from_bytes(b" cont first\r\nA: 1\r\n");
        assert_eq!(m.header_section(), b"");
        let m = Message::from_bytes(b"");
        assert_eq!(m.header_section(), b"");
        assert!(!m.needs_separator());
    }

    #[test]
    fn spam_prefix_cuts_at_line_end() {
        let m = Message::from_bytes(b"A: 1\r\n\r\nline one\r\nline two\r\n");
        assert_eq!(
            m.prefix_for_spam_check(20).unwrap(),
            b"A: 1\r\n\r\nline one\r\n"
        );
        assert_eq!(m.prefix_for_spam_check(1000).unwrap().len() as u64, m.len());
    }

    #[test]
    fn normalizes_bare_cr_and_lf() {
        assert_eq!(
            normalize_line_ends(b"a\nb\rc\r\nd"),
            b"a\r\nb\r\nc\r\nd\r\n"
        );
    }
}
