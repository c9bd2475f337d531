//! A received message: its envelope, and its bytes held in memory up to a threshold with the rest
//! spooled to an unlinked temp file, so a 50 MB message costs a fixed amount of RAM. Also finds
//! the header section, which is the only part postsift ever rewrites.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use bytes::Bytes;

use crate::smtp::xforward;

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
/// The file is written with plain blocking writes through a 64 KiB buffer: they land in the page
/// cache and return in microseconds, which costs far fewer system calls than tokio::fs's
/// thread hand-off per write.
pub struct Spool {
    head: Vec<u8>,
    file: Option<BufWriter<File>>,
    len: u64,
    threshold: usize,
    dir: std::path::PathBuf,
}

impl Spool {
    pub fn new(threshold: usize, dir: &Path) -> Spool {
        Spool {
            head: Vec::with_capacity(threshold.min(16 * 1024)),
            file: None,
            len: 0,
            threshold,
            dir: dir.to_owned(),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.len += data.len() as u64;
        if self.file.is_none() {
            let room = self.threshold - self.head.len();
            let n = room.min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
            if data.is_empty() {
                return Ok(());
            }
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
        let header_end = find_header_end(&head, tail.is_some());
        Ok(Message {
            head,
            tail,
            len: self.len,
            header_end,
        })
    }
}

/// A complete message: CRLF line ends only, dot-unstuffed, ending with CRLF (unless empty).
pub struct Message {
    head: Bytes,
    tail: Option<File>,
    len: u64,
    header_end: usize,
}

impl Message {
    /// A message from bytes already in memory (the `scan` command, tests).
    pub fn from_bytes(data: &[u8]) -> Message {
        let mut spool = Spool::new(usize::MAX, Path::new("/nonexistent"));
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
    /// line). Empty when the message does not start with a header field.
    pub fn header_section(&self) -> &[u8] {
        &self.head[..self.header_end]
    }

    /// Offset in [`Message::head`] where the part after the headers (blank line and body) begins.
    pub fn header_end(&self) -> usize {
        self.header_end
    }

    /// A second handle on the spool file with its own offset, for a concurrent reader.
    pub fn reopen_tail(&self) -> io::Result<Option<File>> {
        match &self.tail {
            None => Ok(None),
            // /proc/self/fd gives an independent open file description (own offset), which
            // File::try_clone (dup) would not.
            Some(f) => {
                use std::os::fd::AsRawFd;
                let path = format!("/proc/self/fd/{}", f.as_raw_fd());
                Ok(Some(File::open(path)?))
            }
        }
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

/// Where the header section ends: after the last line that is a header field or a
/// continuation. The first other line (normally the blank separator) begins the body; a line
/// that is not a header field ends the headers the way Postfix's cleanup ends them.
fn find_header_end(head: &[u8], truncated: bool) -> usize {
    let mut pos = 0;
    let mut seen_field = false;
    while pos < head.len() {
        let Some(nl) = head[pos..].iter().position(|&b| b == b'\n') else {
            // The head ends inside a line: a header section longer than the memory threshold
            // is not rewritten (only prepended to), since we cannot see all of it.
            return if truncated { 0 } else { pos };
        };
        let line = &head[pos..pos + nl + 1];
        let is_cont = seen_field && matches!(line[0], b' ' | b'\t');
        if !(is_cont || is_field_start(line)) {
            return pos;
        }
        seen_field = true;
        pos += nl + 1;
    }
    if truncated {
        0
    } else {
        pos
    }
}

/// `name:` with a name of printable ASCII other than colon (RFC 5322 ftext).
pub fn is_field_start(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(0) | None => false,
        Some(c) => line[..c].iter().all(|&b| (33..=126).contains(&b)),
    }
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
        let mut s = Spool::new(10, &dir);
        s.write(b"Subject: x\r\n\r\nhello world, this is long\r\n")
            .unwrap();
        let m = s.finish().unwrap();
        assert_eq!(m.head().len(), 10);
        assert_eq!(
            collect(&m, 0),
            b"Subject: x\r\n\r\nhello world, this is long\r\n"
        );
        // A header section cut by the threshold is not claimed.
        assert_eq!(m.header_end(), 0);
    }

    #[test]
    fn header_section_bounds() {
        let m = Message::from_bytes(b"A: 1\r\nB: 2\r\n  cont\r\n\r\nbody\r\n");
        assert_eq!(m.header_section(), b"A: 1\r\nB: 2\r\n  cont\r\n");
        let m = Message::from_bytes(b"no header here\r\nA: 1\r\n");
        assert_eq!(m.header_section(), b"");
        let m = Message::from_bytes(b"A: 1\r\nnot a header\r\nB: 2\r\n");
        assert_eq!(m.header_section(), b"A: 1\r\n");
        let m = Message::from_bytes(b"A: 1\r\nB: 2\r\n");
        assert_eq!(m.header_section(), b"A: 1\r\nB: 2\r\n");
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
