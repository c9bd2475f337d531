//! Hostile message shapes (issue 16), built in memory: nesting that overflowed mail-parser's
//! stack, archives whose decompression cost CPU or memory outside the walk's budgets, an
//! archive postsift will not open, and a message too large to walk. Shared by the integration
//! tests (`mod hostile`), the unit tests of `scan::parts` and `examples/hostile.rs` (which
//! writes them to files for `postsift scan`, the bench and the fuzz corpus) through `#[path]`:
//! it uses only crates every one of them has (base64, flate2, zip, lzma-rust2 and
//! sevenz-rust2 with their encoders).
#![allow(dead_code)]

use std::io::Write;

/// `depth` messages nested as message/rfc822, each only a header and the next: the 775 KB
/// message at 25,000 that aborted the daemon (31 bytes a level).
pub fn nested_rfc822(depth: usize) -> Vec<u8> {
    let level = b"Content-Type: message/rfc822\r\n\r\n";
    let mut m = Vec::with_capacity(depth * level.len() + 64);
    for _ in 0..depth {
        m.extend_from_slice(level);
    }
    m.extend_from_slice(b"Subject: innermost\r\n\r\nhello\r\n");
    m
}

/// `depth` multiparts nested, each the only part of the one around it.
pub fn nested_multipart(depth: usize) -> Vec<u8> {
    let mut m = Vec::new();
    for i in 0..depth {
        m.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n")
                .as_bytes(),
        );
    }
    m.extend_from_slice(b"Content-Type: text/plain\r\n\r\nhello\r\n");
    for i in (0..depth).rev() {
        m.extend_from_slice(format!("--b{i}--\r\n").as_bytes());
    }
    m
}

/// [`nested_rfc822`] `depth` deep, sent base64-encoded as one message/rfc822 part: mail-parser
/// parses it from its decoded copy, where no raw count of the message sees the nesting.
pub fn nested_in_base64(depth: usize) -> Vec<u8> {
    let inner = base64_lines(&nested_rfc822(depth));
    format!(
        "Subject: forwarded\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
         --b\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{inner}\r\n--b--\r\n"
    )
    .into_bytes()
}

/// base64 in 76-letter lines.
pub fn base64_lines(data: &[u8]) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.encode(data);
    b.as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// A message with one base64 attachment named `name`.
pub fn mail_with(name: &str, att: &[u8]) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nTo: b@example.com\r\nSubject: see attached\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n\
         --b\r\nContent-Type: application/octet-stream; name=\"{name}\"\r\n\
         Content-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        base64_lines(att)
    )
    .into_bytes()
}

/// Filler that deflates about `ratio` to one (runs of one random byte), the same every run.
pub fn compressible(n: usize, ratio: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let run = (ratio * 3).max(1);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = run.min(n - out.len());
        out.extend(std::iter::repeat_n(x as u8, k));
    }
    out
}

/// CRC-32 (IEEE), as zip and xz use it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A zip whose `entries` central-directory entries (`d{i}/data.bin`: one base name in
/// different folders) all point at one deflated member of `size` bytes: 2,000 × 15 MiB was a
/// 375 KB zip that took 31.9 s of CPU, each entry decompressed again and dropped as a duplicate.
pub fn zip_one_member_many_entries(entries: usize, size: usize) -> Vec<u8> {
    let data = compressible(size, 40);
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&data).unwrap();
    let packed = enc.finish().unwrap();
    let crc = crc32(&data);
    let name = b"data.bin";
    let mut z = Vec::new();
    let le16 = |v: &mut Vec<u8>, x: u16| v.extend_from_slice(&x.to_le_bytes());
    let le32 = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
    // The one local header and its data.
    le32(&mut z, 0x0403_4b50);
    for x in [20u16, 0, 8, 0, 0x21] {
        le16(&mut z, x);
    }
    le32(&mut z, crc);
    le32(&mut z, packed.len() as u32);
    le32(&mut z, size as u32);
    le16(&mut z, name.len() as u16);
    le16(&mut z, 0);
    z.extend_from_slice(name);
    z.extend_from_slice(&packed);
    let cd_at = z.len();
    for i in 0..entries {
        let n = format!("d{i}/data.bin");
        le32(&mut z, 0x0201_4b50);
        for x in [20u16, 20, 0, 8, 0, 0x21] {
            le16(&mut z, x);
        }
        le32(&mut z, crc);
        le32(&mut z, packed.len() as u32);
        le32(&mut z, size as u32);
        le16(&mut z, n.len() as u16);
        for x in [0u16, 0, 0, 0] {
            le16(&mut z, x);
        }
        le32(&mut z, 0);
        le32(&mut z, 0);
        z.extend_from_slice(n.as_bytes());
    }
    let cd_len = z.len() - cd_at;
    le32(&mut z, 0x0605_4b50);
    for x in [0u16, 0, entries as u16, entries as u16] {
        le16(&mut z, x);
    }
    le32(&mut z, cd_len as u32);
    le32(&mut z, cd_at as u32);
    le16(&mut z, 0);
    z
}

/// A zip of `n` members `f{i}.bin`, each `size` zero bytes deflated (about a thousandth of
/// that), each its own entry with its own local header (10,000 × 1 MiB took 4.7 s). The data is
/// deflated once and copied, so that making it costs little.
pub fn zip_many(n: usize, size: usize) -> Vec<u8> {
    let data = vec![0u8; size];
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&data).unwrap();
    let packed = enc.finish().unwrap();
    let crc = crc32(&data);
    let le16 = |v: &mut Vec<u8>, x: u16| v.extend_from_slice(&x.to_le_bytes());
    let le32 = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
    let mut z = Vec::new();
    let mut at = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("f{i}.bin");
        at.push(z.len() as u32);
        le32(&mut z, 0x0403_4b50);
        for x in [20u16, 0, 8, 0, 0x21] {
            le16(&mut z, x);
        }
        le32(&mut z, crc);
        le32(&mut z, packed.len() as u32);
        le32(&mut z, size as u32);
        le16(&mut z, name.len() as u16);
        le16(&mut z, 0);
        z.extend_from_slice(name.as_bytes());
        z.extend_from_slice(&packed);
    }
    let cd_at = z.len();
    for (i, &offset) in at.iter().enumerate() {
        let name = format!("f{i}.bin");
        le32(&mut z, 0x0201_4b50);
        for x in [20u16, 20, 0, 8, 0, 0x21] {
            le16(&mut z, x);
        }
        le32(&mut z, crc);
        le32(&mut z, packed.len() as u32);
        le32(&mut z, size as u32);
        le16(&mut z, name.len() as u16);
        for x in [0u16, 0, 0, 0] {
            le16(&mut z, x);
        }
        le32(&mut z, 0);
        le32(&mut z, offset);
        z.extend_from_slice(name.as_bytes());
    }
    let cd_len = z.len() - cd_at;
    le32(&mut z, 0x0605_4b50);
    for x in [0u16, 0, n as u16, n as u16] {
        le16(&mut z, x);
    }
    le32(&mut z, cd_len as u32);
    le32(&mut z, cd_at as u32);
    le16(&mut z, 0);
    z
}

/// One solid 7z block (LZMA2 at level 9: a 64 MiB dictionary, as `7z -mx9`) of `n` files of
/// `size` zero bytes (2,000 × 1 MiB: 113 MB of peak RSS, outside server.max_memory).
pub fn sevenz_solid(n: usize, size: usize) -> Vec<u8> {
    use sevenz_rust2::{encoder_options::Lzma2Options, ArchiveEntry, ArchiveWriter, SourceReader};
    let data = vec![0u8; size];
    let mut w = ArchiveWriter::new(std::io::Cursor::new(Vec::new())).unwrap();
    w.set_encrypt_header(false);
    w.set_content_methods(vec![Lzma2Options::from_level(9).into()]);
    let names: Vec<String> = (0..n).map(|i| format!("f{i}.bin")).collect();
    let entries = names.iter().map(|n| ArchiveEntry::new_file(n)).collect();
    let readers = (0..n).map(|_| SourceReader::new(&data[..])).collect();
    w.push_archive_entries(entries, readers).unwrap();
    w.finish().unwrap().into_inner()
}

/// `data` as xz (preset 6: an 8 MiB dictionary).
pub fn xz(data: &[u8]) -> Vec<u8> {
    let mut e =
        lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(6)).unwrap();
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// `data` as xz whose block header asks for a 1.5 GiB dictionary (LZMA2 property 37), its
/// header CRC fixed: `xz -dc` opens it; postsift's decoder limit (64 MiB) does not.
pub fn xz_big_dictionary(data: &[u8]) -> Vec<u8> {
    let mut x = xz(data);
    // Stream header: 12 bytes. Block header: size byte ((n + 1) * 4 bytes), flags, optional
    // sizes, filter flags (id 0x21, properties size 1, the dictionary byte), padding, CRC32.
    let start = 12;
    let len = (usize::from(x[start]) + 1) * 4;
    let flags = x[start + 1];
    let mut at = start + 2;
    let varint = |x: &[u8], at: &mut usize| {
        while x[*at] & 0x80 != 0 {
            *at += 1;
        }
        *at += 1;
    };
    if flags & 0x40 != 0 {
        varint(&x, &mut at);
    }
    if flags & 0x80 != 0 {
        varint(&x, &mut at);
    }
    assert_eq!(x[at], 0x21, "LZMA2 filter");
    assert_eq!(x[at + 1], 1, "one property byte");
    x[at + 2] = 37;
    let crc = crc32(&x[start..start + len - 4]);
    x[start + len - 4..start + len].copy_from_slice(&crc.to_le_bytes());
    x
}

/// One file `name` holding `data` as a 7z (LZMA2) whose header asks for a 4 GiB dictionary
/// (the LZMA2 property byte set to 40, the header's and the start header's CRCs fixed): the
/// 7z counterpart of [`xz_big_dictionary`], which postsift's decoder limit does not open.
pub fn sevenz_big_dictionary(name: &str, data: &[u8]) -> Vec<u8> {
    use sevenz_rust2::{encoder_options::Lzma2Options, ArchiveEntry, ArchiveWriter, SourceReader};
    let mut w = ArchiveWriter::new(std::io::Cursor::new(Vec::new())).unwrap();
    w.set_encrypt_header(false);
    w.set_content_methods(vec![Lzma2Options::from_level(1).into()]);
    w.push_archive_entries(
        vec![ArchiveEntry::new_file(name)],
        vec![SourceReader::new(data)],
    )
    .unwrap();
    let mut z = w.finish().unwrap().into_inner();
    let u64_at = |z: &[u8], at: usize| u64::from_le_bytes(z[at..at + 8].try_into().unwrap());
    let start = 32 + u64_at(&z, 12) as usize;
    let len = u64_at(&z, 20) as usize;
    // The coder: flags 0x21 (a one-byte id with properties), id 0x21 (LZMA2), one property.
    let at = z[start..start + len]
        .windows(3)
        .position(|w| w == [0x21, 0x21, 0x01])
        .expect("an uncompressed header with the LZMA2 coder")
        + start
        + 3;
    z[at] = 40;
    let crc = crc32(&z[start..start + len]);
    z[28..32].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32(&z[12..32]);
    z[8..12].copy_from_slice(&crc.to_le_bytes());
    z
}

/// A message of about `size` bytes (a base64 text attachment of filler) with `setup.exe`
/// attached: over `parts.max_message_size` it was delivered clean, never walked.
pub fn big_with_exe(size: usize) -> Vec<u8> {
    let filler = base64_lines(&compressible(size / 4 * 3, 1));
    let exe = base64_lines(b"MZ\x90\x00 not really a program");
    format!(
        "From: a@example.org\r\nTo: b@example.com\r\nSubject: big\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n\
         --b\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{filler}\r\n\
         --b\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\n\
         Content-Disposition: attachment; filename=\"setup.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{exe}\r\n--b--\r\n"
    )
    .into_bytes()
}

/// Every shape at the size the probe used, by name (`examples/hostile.rs` writes them out).
pub fn all() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("nested-rfc822-25000.eml", nested_rfc822(25_000)),
        ("nested-rfc822-1000000.eml", nested_rfc822(1_000_000)),
        ("nested-multipart-30000.eml", nested_multipart(30_000)),
        ("nested-in-base64-25000.eml", nested_in_base64(25_000)),
        (
            "zip-2000-entries-one-15mib-member.eml",
            mail_with("a.zip", &zip_one_member_many_entries(2_000, 15 << 20)),
        ),
        (
            "zip-10000-members-1mib.eml",
            mail_with("b.zip", &zip_many(10_000, 1 << 20)),
        ),
        (
            // 200 rather than 2,000: the window is what costs memory (up to the 64 MiB
            // dictionary, reached after 32 MiB of output), and encoding 2 GB takes minutes.
            "7z-solid-200-members-1mib.eml",
            mail_with("c.7z", &sevenz_solid(200, 1 << 20)),
        ),
        (
            "xz-1.5gib-dictionary.eml",
            mail_with("setup.exe.xz", &xz_big_dictionary(b"MZ\x90\x00 a program")),
        ),
        ("big-with-setup-exe-17mb.eml", big_with_exe(17_000_000)),
    ]
}
