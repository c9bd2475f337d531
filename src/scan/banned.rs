//! Banned files, with amavis's semantics (`$banned_filename_re`): an ordered list of rules,
//! the first rule that matches a part decides (ban or allow), no match allows. A rule matches
//! on any combination of the part's declared name (its last extension, or a double extension
//! such as `invoice.pdf.exe`), its declared MIME type, its type as its first bytes show it
//! (sniffed: PE, ELF, Mach-O, scripts, Office files carrying VBA macros), and the archive it sits
//! in; within a rule every condition given must hold, and each condition is a list of
//! alternatives.

use crate::scan::parts::{contains, Part};

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

/// The rules when `[banned] rules` is not given, in order: members of tar/rpm/cpio allowed;
/// double extensions ending in an executable one banned; executable MIME types banned; sniffed
/// executables and macro-carrying Office files banned; executable and macro-enabled Office
/// extensions banned.
pub fn default_rules() -> Vec<Rule> {
    vec![
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
    let name = p.name.as_deref().map(|n| n.trim().to_ascii_lowercase());
    let exts: Vec<&str> = name
        .as_deref()
        .map(|n| n.rsplit('.').collect::<Vec<_>>())
        .unwrap_or_default();
    // "a.pdf.exe" → ["exe", "pdf", "a"]: the last extension, and whether another precedes it.
    let last = (exts.len() >= 2).then(|| exts[0]);
    let double = (exts.len() >= 3 && !exts[1].is_empty()).then(|| exts[0]);
    let sniffed = sniff(&p.data);
    let declared = p.declared.as_deref();
    let container = p.container.as_deref();
    for (i, r) in rules.iter().enumerate() {
        let cond = |want: &Vec<String>, have: Option<&str>| {
            want.is_empty() || have.is_some_and(|h| want.iter().any(|w| w.eq_ignore_ascii_case(h)))
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
            && cond(&r.container, container)
        {
            if !r.ban {
                return None;
            }
            return Some(Banned {
                name: p.name.clone().unwrap_or_else(|| "-".into()),
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
pub fn sniff(data: &[u8]) -> Option<&'static str> {
    const OLE2: &[u8] = b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1";
    if data.starts_with(b"MZ") && is_pe(data) {
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
    if data.starts_with(b"PK\x03\x04") && contains(data, b"vbaProject.bin") {
        return Some("office-macro");
    }
    // OLE2 (doc/xls/ppt) with a VBA storage: the directory names are UTF-16LE.
    if data.starts_with(OLE2) {
        let vba = "_VBA_PROJECT"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect::<Vec<u8>>();
        return Some(if contains(data, &vba) {
            "office-macro"
        } else {
            "ole2"
        });
    }
    None
}

/// An MZ header whose `e_lfanew` points at a `PE\0\0` signature (plain DOS programs too: a bare
/// MZ with no PE header is still an executable for Windows).
fn is_pe(data: &[u8]) -> bool {
    let Some(off) = data.get(0x3c..0x40) else {
        return data.len() >= 2;
    };
    let off = u32::from_le_bytes([off[0], off[1], off[2], off[3]]) as usize;
    match data.get(off..off + 4) {
        Some(sig) => sig == b"PE\0\0" || sig.starts_with(b"NE") || sig.starts_with(b"LE"),
        // A DOS MZ program, or a header cut short: still executable.
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: Option<&str>, declared: Option<&str>, data: &[u8]) -> Part {
        Part {
            name: name.map(str::to_owned),
            declared: declared.map(str::to_owned),
            found: "mime",
            depth: 0,
            container: None,
            verbatim: false,
            data: data.to_vec(),
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
        assert_eq!((b.name.as_str(), b.rule), ("invoice.pdf.exe", 2));
        assert_eq!(banned(part(Some("setup.EXE"), None, b"x")).unwrap().rule, 5);
        assert_eq!(
            banned(part(Some("a"), Some("application/x-msdownload"), b"x"))
                .unwrap()
                .rule,
            3
        );
        let b = banned(part(Some("photo.jpg"), Some("image/jpeg"), &pe)).unwrap();
        assert_eq!((b.kind.as_str(), b.rule), ("exe-ms", 4));
        assert_eq!(
            banned(part(Some("report.xlsm"), None, b"PK\x03\x04"))
                .unwrap()
                .rule,
            5
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
        // A tar member is allowed by the first rule, whatever it is.
        let mut member = part(Some("tool.exe"), None, &pe);
        member.container = Some("tar".into());
        assert_eq!(banned(member), None);
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
        assert_eq!(sniff(&d), Some("office-macro"));
        assert_eq!(
            sniff(b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1plain"),
            Some("ole2")
        );
        assert_eq!(sniff(b"\x7fELF\x02"), Some("elf"));
        assert_eq!(sniff(b"#!/bin/sh\n"), Some("script"));
        assert_eq!(sniff(b"plain text"), None);
    }
}
