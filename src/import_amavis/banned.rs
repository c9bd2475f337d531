//! amavis's banned-file regular expressions (`$banned_filename_re`), rule by rule, as postsift's
//! `[[banned.rules]]` where the pattern has a counterpart.

use serde_json::Value;
use toml::{Table, Value as T};

use super::{list, num, Translation};

impl Translation {
    /// `$banned_filename_re = new_RE(...)`, rule by rule.
    pub(super) fn banned_rules(&mut self, v: &Value, what: &str) -> Option<Vec<T>> {
        let rules = v.get("new_RE")?.as_array()?;
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let (re, ban) = match r {
                Value::Array(pair) => {
                    (&pair[0], pair.get(1).and_then(num).is_none_or(|n| n != 0.0))
                }
                other => (other, true),
            };
            let Some(src) = re.get("re").and_then(Value::as_str).or(re.as_str()) else {
                self.skip(format!("{what} rule {}: not a regular expression", i + 1));
                continue;
            };
            match banned_rule(src, ban) {
                Ok(mut t) => {
                    if !ban {
                        t.insert("ban".into(), T::Boolean(false));
                    }
                    out.push(T::Table(t));
                }
                Err(why) => self.skip(format!(
                    "{what} rule {} qr'{src}'{}: {why}",
                    i + 1,
                    if ban { "" } else { " => 0" }
                )),
            }
        }
        Some(out)
    }
}

/// The words of `(a|b|c)`, `(?:a|b)` or a bare word.
fn words(s: &str) -> Option<Vec<String>> {
    let inner = s
        .strip_prefix("(?:")
        .or_else(|| s.strip_prefix('('))
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(s);
    let w: Vec<String> = inner
        .split('|')
        .map(|w| w.replace("\\-", "-").replace("\\.", "."))
        .collect();
    w.iter()
        .all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_+.".contains(c))
        })
        .then_some(w)
}

const ARCHIVES: &[(&str, &str)] = &[
    ("zip", "zip"),
    ("7z", "7z"),
    ("tar", "tar"),
    ("gz", "gzip"),
    ("gzip", "gzip"),
    ("bz2", "bzip2"),
    ("bzip2", "bzip2"),
    ("xz", "xz"),
    ("rpm", "rpm"),
    ("cpio", "cpio"),
    ("rar", "rar"),
    ("arj", "arj"),
    ("arc", "arc"),
    ("zoo", "zoo"),
    ("lha", "lha"),
    ("cab", "cab"),
];
const SNIFFED: &[(&str, &str)] = &[
    ("exe-ms", "exe-ms"),
    ("exe-unix", "elf"),
    ("elf", "elf"),
    ("macho", "macho"),
    ("mach-o", "macho"),
];

/// One amavis banned rule (the source of its qr//) as a postsift `[[banned.rules]]` table.
fn banned_rule(src: &str, ban: bool) -> Result<Table, String> {
    let mut t = Table::new();
    // ^\.(exe-ms|...)$ : amavis's short file types (file(1)).
    if let Some(types) = src
        .strip_prefix("^\\.")
        .and_then(|s| s.strip_suffix('$'))
        .and_then(words)
    {
        let arch: Option<Vec<String>> = types
            .iter()
            .map(|w| {
                ARCHIVES
                    .iter()
                    .find(|(a, _)| a == w)
                    .map(|(_, p)| (*p).to_owned())
            })
            .collect();
        let sniff: Option<Vec<String>> = types
            .iter()
            .map(|w| {
                SNIFFED
                    .iter()
                    .find(|(a, _)| a == w)
                    .map(|(_, p)| (*p).to_owned())
            })
            .collect();
        if let (Some(a), false) = (arch, ban) {
            t.insert("container".into(), list(a));
            return Ok(t);
        }
        if let Some(s) = sniff {
            t.insert("sniffed".into(), list(s));
            return Ok(t);
        }
        return Err(format!("file types {types:?}: postsift sniffs exe-ms, elf and macho (and allows what is in zip, 7z, tar, gzip, bzip2, xz archives), not these"));
    }
    // ^type/subtype$ : a declared MIME type.
    if let Some(body) = src.strip_prefix('^').and_then(|s| s.strip_suffix('$')) {
        if let Some((ty, subs)) = body.split_once('/') {
            if ty.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                if let Some(subs) = words(subs) {
                    t.insert(
                        "declared_type".into(),
                        list(
                            subs.into_iter()
                                .map(|s| format!("{ty}/{s}").to_lowercase())
                                .collect(),
                        ),
                    );
                    return Ok(t);
                }
            }
        }
    }
    // ...\.[^./]*\.(exe|...)\.?$ : a double extension.
    let s = src.strip_suffix("\\.?$").or_else(|| src.strip_suffix('$'));
    if let Some(s) = s {
        if let Some(pos) = s.rfind("\\.(").or_else(|| s.rfind("\\.")) {
            let (head, tail) = (&s[..pos], &s[pos + 2..]);
            if let Some(exts) = words(tail) {
                let exts: Vec<String> = exts.into_iter().map(|e| e.to_lowercase()).collect();
                let head = head
                    .trim_start_matches("^(?!cid:)")
                    .trim_start_matches('^')
                    .trim_start_matches(".*");
                if head.ends_with("\\.[^./]*")
                    || head.ends_with("\\.[^./]*[^./0-9]")
                    || head.ends_with("\\.[^./]*[A-Za-z]")
                {
                    t.insert("double_extension".into(), list(exts));
                    return Ok(t);
                }
                if head.is_empty() || head == "." || head == "[^/]" {
                    t.insert("extension".into(), list(exts));
                    return Ok(t);
                }
            }
        }
    }
    Err("postsift's rules (extension, double_extension, declared_type, sniffed, container) cannot express this pattern".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(src: &str) -> String {
        banned_rule(src, true)
            .map(|t| toml::to_string(&t).unwrap().trim().to_owned())
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn debian_banned_rules_translate_rule_by_rule() {
        assert_eq!(
            rule(r"\.[^./]*\.(exe|vbs|pif|scr|bat|cmd|com|cpl|dll)\.?$"),
            r#"double_extension = ["exe", "vbs", "pif", "scr", "bat", "cmd", "com", "cpl", "dll"]"#
        );
        assert_eq!(
            rule(r".\.(exe|vbs|pif)$"),
            r#"extension = ["exe", "vbs", "pif"]"#
        );
        assert_eq!(
            rule(r"^application/x-msdownload$"),
            r#"declared_type = ["application/x-msdownload"]"#
        );
        assert_eq!(rule(r"^\.(exe-ms)$"), r#"sniffed = ["exe-ms"]"#);
        assert!(rule(r"\{[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\}?$").starts_with("ERR"));
        assert_eq!(
            banned_rule(r"^\.(rpm|cpio|tar)$", false)
                .map(|t| toml::to_string(&t).unwrap())
                .unwrap()
                .trim(),
            r#"container = ["rpm", "cpio", "tar"]"#
        );
    }
}
