//! The archives the walk opens (zip, 7z, tar, gzip, bzip2, xz), told by their first bytes,
//! each member decompressed within the walk's limits and its decoder's memory taken from the
//! budget.

use super::*;
use std::io::{self, Read};
use std::sync::Arc;

impl Collector {
    /// Starts counting a decoder's memory against the budget: `fixed` bytes now, and for an
    /// LZMA window also twice what it has put out (it grows geometrically with its output, up
    /// to the dictionary size). False (and the walk stopped) when the budget cannot give it.
    pub(super) fn decoder_memory(&mut self, fixed: usize, window: bool) -> bool {
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

    pub(super) fn decoder_starved(&self) -> bool {
        self.decoder
            .as_ref()
            .is_some_and(|d| d.lock().map(|d| d.starved).unwrap_or(true))
    }

    /// How much one member may decompress to: what is left of `max_decoded_bytes`, and for a
    /// compressed member of `packed` bytes also `max_ratio` times that (at least 1 MiB).
    pub(super) fn cap(&self, packed: Option<u64>) -> Cap {
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
    pub(super) fn read_member(&mut self, r: impl Read, cap: Cap, name: &str) -> Got {
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
    pub(super) fn open(&mut self, kind: Archive, parent: &Part) {
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
    pub(super) fn un7z(&mut self, parent: &Part, m: &Member) {
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
    pub(super) fn unzip(&mut self, parent: &Part, m: &Member) {
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
    pub(super) fn untar(&mut self, parent: &Part, m: &Member) {
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
    pub(super) fn unpack(&mut self, kind: Archive, parent: &Part, m: &Member) {
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
pub(super) struct Cap {
    pub(super) bytes: u64,
    pub(super) ratio: bool,
}

/// What reading one archive member gave.
pub(super) enum Got {
    /// Its contents; true when the archive broke off in it (what was read is kept).
    Member(Contents, bool),
    /// Nothing to keep: a limit stopped the walk, or a spill file failed.
    Nothing,
}

/// What the members of one archive share.
pub(super) struct Member {
    pub(super) found: &'static str,
    pub(super) depth: usize,
    pub(super) containers: Vec<&'static str>,
}

impl Member {
    pub(super) fn part(&self, name: Option<String>, contents: Contents) -> Part {
        Part {
            name,
            other_names: Vec::new(),
            declared: None,
            found: self.found,
            depth: self.depth,
            containers: self.containers.clone(),
            verbatim: false,
            encoded: None,
            clamd_reads: false,
            contents,
        }
    }
}

/// What one xz or 7z decoder holds besides its window, and bzip2's block buffers (900k
/// blocks: four bytes per byte, plus the block).
pub(super) const DECODER_OVERHEAD: usize = 1 << 20;
pub(super) const BZIP2_MEMORY: usize = 4 << 20;

pub(super) const MEMORY_DETAIL: &str =
    "decoder memory not available: server.max_memory is held by the messages in flight";

/// One decoder's memory, held from the budget as it grows.
pub(super) struct DecoderMemory {
    pub(super) hold: crate::message::MemoryHold,
    pub(super) fixed: usize,
    /// An LZMA window, growing with the output.
    pub(super) window: bool,
    pub(super) out: u64,
    pub(super) starved: bool,
}

impl DecoderMemory {
    pub(super) fn account(&mut self, n: usize) -> io::Result<()> {
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
pub(super) struct Guarded<R> {
    pub(super) inner: R,
    pub(super) clock: Clock,
    pub(super) decoder: Option<Arc<std::sync::Mutex<DecoderMemory>>>,
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
pub(super) const MAX_NAME: u64 = 64 * 1024;

/// The largest xz dictionary opened: 64 MiB, what `xz -9` uses. The decoder's window grows
/// with its output up to this size.
pub(super) const XZ_MAX_DICT: u32 = 64 << 20;

pub(super) fn xz_memory_limit_kb() -> u32 {
    lzma_rust2::lzma2_get_memory_usage(XZ_MAX_DICT)
}

/// The decoder memory (header buffers, and dictionaries each) a 7z may ask for, in KiB: as
/// for xz, 64 MiB.
pub(super) const SEVENZ_MEMORY_KB: usize = 64 << 10;

/// The archive formats the walk opens, told by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Archive {
    Zip,
    SevenZ,
    Tar,
    Gzip,
    Bzip2,
    Xz,
}

impl Archive {
    pub(super) fn sniff(c: &Contents) -> Option<Archive> {
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
    pub(super) fn label(self) -> &'static str {
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
    pub(super) fn member_name(self, file: &str) -> Option<String> {
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
pub(super) fn base_name(path: &str) -> Option<String> {
    let name = path.rsplit(['/', '\\']).next().unwrap_or("");
    (!name.is_empty()).then(|| name.to_owned())
}

/// The `path` record of a pax extended header (`<len> path=<value>\n` records).
pub(super) fn pax_path(mut data: &[u8]) -> Option<String> {
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
