//! Decoded contents: in memory while the walk's budget lasts, past it the first bytes in
//! memory and the rest in an unlinked temp file in the spool directory.

use super::*;
use std::borrow::Cow;
use std::fs::File;
use std::hash::Hasher;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

/// Bytes of a spilled part kept in memory (within the budget): enough for every magic number
/// and header the sniffing and the archive detection look at first.
pub const HEAD: usize = 4096;

/// Pieces in which spilled contents are read back.
pub(super) const CHUNK: usize = 64 * 1024;

/// A part's decoded bytes: all in memory, or (spilled) the first bytes in memory and the rest
/// in an unlinked temp file. Cloning shares the file.
#[derive(Clone, Default)]
pub struct Contents {
    /// The whole contents, or the first bytes of spilled ones.
    pub(super) head: Bytes,
    /// Spilled: the bytes after `head`.
    pub(super) tail: Option<Arc<File>>,
    pub(super) len: u64,
    /// Keyed hash of the bytes (set by the walk, for keeping identical contents once).
    pub(super) digest: u64,
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
    pub(super) c: &'a Contents,
    pub(super) pos: u64,
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
pub(super) struct Sink {
    pub(super) head: Vec<u8>,
    pub(super) tail: Option<BufWriter<File>>,
    pub(super) len: u64,
    pub(super) room: usize,
    pub(super) dir: Arc<Path>,
    pub(super) hasher: std::hash::DefaultHasher,
    /// Writing the spill file failed: the walk ends with this error (a read error of the
    /// archive being decompressed, by contrast, only ends that member).
    pub(super) failed: Option<io::Error>,
}

impl Sink {
    pub(super) fn spill(&mut self, data: &[u8]) -> io::Result<()> {
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

    pub(super) fn finish(mut self) -> io::Result<Contents> {
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
