//! Banned files, with amavis's semantics (`$banned_filename_re`): an ordered list of rules,
//! the first rule that matches a part decides (ban or allow), no match allows. A rule matches
//! on any combination of the part's declared name (its last extension, or a double extension
//! such as `invoice.pdf.exe`), its declared MIME type, its type as its first bytes show it
//! (sniffed: PE, ELF, Mach-O, scripts, Office files carrying VBA macros), and the archives it sits
//! in (any of them, as amavis matches a part's whole ancestry: a file in a zip in a tar is in a
//! tar); within a rule every condition given must hold, and each condition is a list of
//! alternatives.
//!
//! Sniffing reads a part's first bytes (and a PE header wherever `e_lfanew` points); the VBA
//! markers are searched through the whole part, also when it was spilled to disk (read back in
//! pieces), because an Office file's directory can sit anywhere in it.

use crate::scan::parts::{Contents, Part};

pub use crate::config::BannedRule as Rule;

/// Executable extensions Windows runs on a double click (amavis's and Debian's lists).
const EXECUTABLE: &[&str] = &[
    "exe", "com", "scr", "pif", "bat", "cmd", "cpl", "vbs", "vbe", "js", "jse", "wsf", "wsh",
    "hta", "lnk", "msi", "dll",
];
/// Macro-enabled Office formats.
const MACRO_OFFICE: &[&str] = &["docm", "xlsm", "pptm", "dotm", "xltm", "potm"];

fn list(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The rules when `[banned] rules` is not given, in amavis's order: Windows executables (by
/// their bytes) banned anywhere, also inside archives (amavis's first rule,
/// `qr'^\.(exe-ms|dll)$'`); everything else inside tar/rpm/cpio allowed (amavis's
/// `[qr'^\.(rpm|cpio|tar)$' => 0]`, so a Unix archive may carry `setup.exe` as text, ELF
/// binaries and scripts); double extensions ending in an executable one banned; executable MIME
/// types banned; sniffed executables and macro-carrying Office files banned; executable and
/// macro-enabled Office extensions banned.
pub fn default_rules() -> Vec<Rule> {
    vec![
        Rule {
            sniffed: list(&["exe-ms"]),
            ban: true,
            ..Rule::default()
        },
        Rule {
            container: list(&["tar", "rpm", "cpio"]),
            ban: false,
            ..Rule::default()
        },
        Rule {
            double_extension: list(EXECUTABLE),
            ban: true,
            ..Rule::default()
        },
        Rule {
            declared_type: list(&[
                "application/x-msdownload",
                "application/x-msdos-program",
                "application/x-ms-dos-executable",
                "application/x-dosexec",
                "application/hta",
            ]),
            ban: true,
            ..Rule::default()
        },
        Rule {
            sniffed: list(&["exe-ms", "elf", "macho", "office-macro"]),
            ban: true,
            ..Rule::default()
        },
        Rule {
            extension: EXECUTABLE
                .iter()
                .chain(MACRO_OFFICE)
                .map(|s| s.to_string())
                .collect(),
            ban: true,
            ..Rule::default()
        },
    ]
}

/// A part that a rule banned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banned {
    /// The part's declared name, or `-`.
    pub name: String,
    /// What it is, as amavis reports it: the sniffed type, else the declared type, else the
    /// extension.
    pub kind: String,
    /// Which rule (1-based) banned it.
    pub rule: usize,
}

/// The first part a rule bans, if any.
pub fn check(rules: &[Rule], parts: &[Part]) -> Option<Banned> {
    parts.iter().find_map(|p| judge(rules, p))
}

fn judge(rules: &[Rule], p: &Part) -> Option<Banned> {
    let sniffed = sniff(&p.contents);
    let declared: Vec<&String> = p.name.iter().chain(&p.other_names).collect();
    if declared.is_empty() {
        return judge_as(rules, p, sniffed, None, None);
    }
    declared.into_iter().find_map(|n| {
        as_saved(n)
            .into_iter()
            .find_map(|c| judge_as(rules, p, sniffed, Some(&c), Some(n)))
    })
}

/// The names a declared name can be saved or opened under, lower case, each judged on its own:
/// - the name less trailing dots and white space, which Windows strips when it saves a file
///   (`evil.js.`, `evil.vbs...`, `evil.hta. ` are `.js`, `.vbs`, `.hta`; amavis's rules end
///   in `[.\s]*$` for this);
/// - each piece between NULs (and a literal `%00`): a C string ends at the NUL, so
///   `evil.js%00.pdf` (RFC 2231-decoded to `evil.js\0.pdf`) is judged as `evil.js` and as
///   `.pdf`, and any piece that is banned bans the part;
/// - an NTFS alternate data stream (`evil.js::$DATA`, `evil.js:Zone.Identifier`) as the file
///   it belongs to: the name before the first `:` (no Windows file name holds a `:`), beside
///   the whole name.
fn as_saved(name: &str) -> Vec<String> {
    let lower = name.to_lowercase();
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: &str| {
        let s = s
            .trim()
            .trim_end_matches(|c: char| c == '.' || c.is_whitespace());
        if !s.is_empty() && !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    };
    push(&lower);
    for piece in lower.split(['\0']).flat_map(|p| p.split("%00")) {
        push(piece);
        if let Some((file, _stream)) = piece.split_once(':') {
            push(file);
        }
    }
    out
}

/// The rules applied to `p` under one of its names (`name`, normalised; `shown`, as declared).
fn judge_as(
    rules: &[Rule],
    p: &Part,
    sniffed: Option<&'static str>,
    name: Option<&str>,
    shown: Option<&String>,
) -> Option<Banned> {
    let exts: Vec<&str> = name
        .map(|n| n.rsplit('.').collect::<Vec<_>>())
        .unwrap_or_default();
    // "a.pdf.exe" → ["exe", "pdf", "a"]: the last extension, and whether another precedes it.
    let last = (exts.len() >= 2).then(|| exts[0]);
    let double = (exts.len() >= 3 && !exts[1].is_empty()).then(|| exts[0]);
    let declared = p.declared.as_deref();
    for (i, r) in rules.iter().enumerate() {
        let cond = |want: &Vec<String>, have: Option<&str>| {
            want.is_empty() || have.is_some_and(|h| want.iter().any(|w| w.eq_ignore_ascii_case(h)))
        };
        let within = |want: &Vec<String>| {
            want.is_empty()
                || p.containers
                    .iter()
                    .any(|c| want.iter().any(|w| w.eq_ignore_ascii_case(c)))
        };
        let any_given = !(r.extension.is_empty()
            && r.double_extension.is_empty()
            && r.declared_type.is_empty()
            && r.sniffed.is_empty()
            && r.container.is_empty());
        if any_given
            && cond(&r.extension, last)
            && cond(&r.double_extension, double)
            && cond(&r.declared_type, declared)
            && cond(&r.sniffed, sniffed)
            && within(&r.container)
        {
            if !r.ban {
                return None;
            }
            return Some(Banned {
                name: shown.cloned().unwrap_or_else(|| "-".into()),
                kind: sniffed
                    .map(str::to_owned)
                    .or_else(|| p.declared.clone())
                    .or_else(|| last.map(|e| format!(".{e}")))
                    .unwrap_or_else(|| "-".into()),
                rule: i + 1,
            });
        }
    }
    None
}

/// The type a file's first bytes show, in amavis's short names where it has one.
pub fn sniff(c: &Contents) -> Option<&'static str> {
    const OLE2: &[u8] = b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1";
    let data = c.prefix(64);
    let data = &data[..];
    if data.starts_with(b"MZ") && is_pe(c) {
        return Some("exe-ms");
    }
    if data.starts_with(b"\x7fELF") {
        return Some("elf");
    }
    if [
        &b"\xFE\xED\xFA\xCE"[..],
        b"\xFE\xED\xFA\xCF",
        b"\xCE\xFA\xED\xFE",
        b"\xCF\xFA\xED\xFE",
    ]
    .iter()
    .any(|m| data.starts_with(m))
    {
        return Some("macho");
    }
    if data.starts_with(b"#!") {
        return Some("script");
    }
    // OOXML (a zip) carrying a VBA project: its member name is stored in the clear.
    if data.starts_with(b"PK\x03\x04") && c.contains(b"vbaProject.bin") {
        return Some("office-macro");
    }
    // OLE2 (doc/xls/ppt) with a VBA storage: the directory names are UTF-16LE.
    if data.starts_with(OLE2) {
        let vba = "_VBA_PROJECT"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect::<Vec<u8>>();
        return Some(if c.contains(&vba) {
            "office-macro"
        } else {
            "ole2"
        });
    }
    None
}

/// An MZ header whose `e_lfanew` points at a `PE\0\0` signature (plain DOS programs too: a bare
/// MZ with no PE header is still an executable for Windows).
fn is_pe(c: &Contents) -> bool {
    let head = c.prefix(0x40);
    let Some(off) = head.get(0x3c..0x40) else {
        return c.len() >= 2;
    };
    let off = u32::from_le_bytes([off[0], off[1], off[2], off[3]]) as u64;
    match c.slice(off, 4) {
        Ok(sig) if sig.len() == 4 => {
            &sig[..] == b"PE\0\0" || sig.starts_with(b"NE") || sig.starts_with(b"LE")
        }
        // A DOS MZ program, or a header cut short: still executable.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: Option<&str>, declared: Option<&str>, data: &[u8]) -> Part {
        Part {
            name: name.map(str::to_owned),
            other_names: Vec::new(),
            declared: declared.map(str::to_owned),
            found: "mime",
            depth: 0,
            containers: Vec::new(),
            verbatim: false,
            encoded: None,
            clamd_reads: false,
            contents: data.into(),
        }
    }

    fn banned(p: Part) -> Option<Banned> {
        check(&default_rules(), &[p])
    }

    #[test]
    fn amavis_default_cases() {
        let pe = {
            let mut d = b"MZ".to_vec();
            d.resize(0x40, 0);
            d[0x3c] = 0x40;
            d.extend_from_slice(b"PE\0\0rest");
            d
        };
        // Double extension, extension, MIME type, sniffed executable under an innocent name.
        let b = banned(part(
            Some("invoice.pdf.exe"),
            Some("application/pdf"),
            b"%PDF",
        ))
        .unwrap();
        assert_eq!((b.name.as_str(), b.rule), ("invoice.pdf.exe", 3));
        assert_eq!(banned(part(Some("setup.EXE"), None, b"x")).unwrap().rule, 6);
        assert_eq!(
            banned(part(Some("a"), Some("application/x-msdownload"), b"x"))
                .unwrap()
                .rule,
            4
        );
        let b = banned(part(Some("photo.jpg"), Some("image/jpeg"), &pe)).unwrap();
        assert_eq!((b.kind.as_str(), b.rule), ("exe-ms", 1));
        let elf = banned(part(Some("tool"), None, b"\x7fELF\x02\x01")).unwrap();
        assert_eq!((elf.kind.as_str(), elf.rule), ("elf", 5));
        assert_eq!(
            banned(part(Some("report.xlsm"), None, b"PK\x03\x04"))
                .unwrap()
                .rule,
            6
        );
        let docm = b"PK\x03\x04....word/vbaProject.bin....";
        assert_eq!(
            banned(part(Some("report.docx"), None, docm)).unwrap().kind,
            "office-macro"
        );
        // Not banned: ordinary files, a dotless name, a harmless double extension.
        assert_eq!(
            banned(part(
                Some("report.pdf"),
                Some("application/pdf"),
                b"%PDF-1.4"
            )),
            None
        );
        assert_eq!(banned(part(Some("README"), None, b"text")), None);
        assert_eq!(
            banned(part(Some("archive.tar.gz"), None, b"\x1f\x8b")),
            None
        );
        assert_eq!(banned(part(None, Some("text/plain"), b"hello")), None);
    }

    #[test]
    fn inside_a_unix_archive_only_windows_executables_are_banned() {
        let pe = b"MZ\x90\0 a DOS program".to_vec();
        let in_tar = |name: &str, data: &[u8], containers: &[&'static str]| {
            let mut p = part(Some(name), None, data);
            p.containers = containers.to_vec();
            banned(p)
        };
        // amavis allows anything in a tar (its second rule) but what its first rule bans
        // anywhere: Windows executables by their bytes.
        assert_eq!(
            in_tar("setup.exe", b"echo not really a program", &["tar"]),
            None
        );
        assert_eq!(in_tar("invoice.pdf.exe", b"%PDF", &["tar", "gzip"]), None);
        assert_eq!(in_tar("install.sh", b"#!/bin/sh\n", &["tar"]), None);
        assert_eq!(in_tar("a.out", b"\x7fELF\x02\x01", &["tar"]), None);
        // The whole ancestry counts: a file in a zip in a tar is in a tar.
        assert_eq!(in_tar("setup.exe", b"text", &["zip", "tar", "gzip"]), None);
        let b = in_tar("setup.exe", &pe, &["tar", "gzip"]).unwrap();
        assert_eq!((b.kind.as_str(), b.rule), ("exe-ms", 1));
        // Members of a zip or a plain gzip are judged like attachments.
        assert_eq!(in_tar("setup.exe", b"text", &["zip"]).unwrap().rule, 6);
        assert_eq!(in_tar("setup.exe", b"text", &["gzip"]).unwrap().rule, 6);
        // And straight in the message, .exe is banned whatever it holds.
        assert_eq!(in_tar("setup.exe", b"text", &[]).unwrap().rule, 6);
    }

    #[test]
    fn first_matching_rule_decides() {
        let allow_exe = Rule {
            extension: vec!["exe".into()],
            ban: false,
            ..Rule::default()
        };
        let mut rules = vec![allow_exe];
        rules.extend(default_rules());
        assert_eq!(check(&rules, &[part(Some("a.exe"), None, b"x")]), None);
        // A rule with no condition matches nothing.
        let rules = vec![Rule {
            ban: true,
            ..Rule::default()
        }];
        assert_eq!(check(&rules, &[part(Some("a.exe"), None, b"x")]), None);
    }

    #[test]
    fn ole2_with_vba_is_a_macro() {
        let mut d = b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1".to_vec();
        d.extend("_VBA_PROJECT".encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(sniff(&d.into()), Some("office-macro"));
        let s = |b: &[u8]| sniff(&b.into());
        assert_eq!(s(b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1plain"), Some("ole2"));
        assert_eq!(s(b"\x7fELF\x02"), Some("elf"));
        assert_eq!(s(b"#!/bin/sh\n"), Some("script"));
        assert_eq!(s(b"plain text"), None);
    }

    #[test]
    fn trailing_dots_and_spaces_do_not_hide_an_executable_extension() {
        for name in [
            "evil.js.",
            "evil.vbs...",
            "evil.hta. ",
            "EVIL.EXE . .",
            "a.pdf.exe.",
        ] {
            assert!(banned(part(Some(name), None, b"x")).is_some(), "{name:?}");
            let mut in_zip = part(Some(name), None, b"x");
            in_zip.containers = vec!["zip"];
            assert!(banned(in_zip).is_some(), "{name:?} in a zip");
        }
        assert_eq!(banned(part(Some("report.pdf."), None, b"%PDF")), None);
        assert_eq!(banned(part(Some("..."), None, b"x")), None);
    }

    #[test]
    fn every_declared_name_is_judged_not_only_the_first() {
        let mut p = part(Some("invoice.pdf"), None, b"%PDF");
        p.other_names = vec!["notes.txt".into(), "evil.js".into()];
        let b = banned(p).unwrap();
        assert_eq!((b.name.as_str(), b.rule), ("evil.js", 6));
        let mut p = part(Some("invoice.pdf"), None, b"%PDF");
        p.other_names = vec!["notes.txt".into()];
        assert_eq!(banned(p), None);
    }

    #[test]
    fn a_nul_in_a_name_and_an_ntfs_stream_name_are_judged_as_windows_saves_them() {
        // Each NUL-separated piece is judged: a C string ends at the NUL.
        for name in [
            "evil.js\0.pdf",
            "evil.js%00.pdf",
            "evil.js::$DATA",
            "evil.js:Zone.Identifier",
        ] {
            let b = banned(part(Some(name), None, b"x"));
            assert_eq!(b.map(|b| b.rule), Some(6), "{name:?}");
        }
        assert_eq!(banned(part(Some("report.pdf::$DATA"), None, b"%PDF")), None);
    }
}
