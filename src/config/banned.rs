//! `[banned]`: the attachment types refused, as ordered rules.
use serde::Deserialize;

use super::policy::Action;

/// `[banned]`: attachment types refused, with amavis's semantics (see `scan::banned`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Banned {
    /// `"reject"` (default: `554 5.7.0 Reject, id=… - BANNED: <name>`, Postfix bounces it),
    /// `"discard"`, `"quarantine"`, or `"pass"` (with `X-Amavis-Alert: BANNED, message contains <type>,<name>`).
    pub action: Action,
    /// Ordered rules, first match decides, no match allows. Default: `scan::banned::default_rules`
    /// (documented in postsift.example.toml). An empty list bans nothing.
    pub rules: Option<Vec<BannedRule>>,
}

impl Default for Banned {
    fn default() -> Self {
        Banned {
            action: Action::Reject,
            rules: None,
        }
    }
}

/// One rule of `[[banned.rules]]`: every condition given must hold (each a list of
/// alternatives); a rule with none matches nothing.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BannedRule {
    /// The last extension of the declared name, without the dot, any case (`exe`).
    pub extension: Vec<String>,
    /// The last extension of a name that has another before it (`invoice.pdf.exe` → `exe`).
    pub double_extension: Vec<String>,
    /// The declared MIME type, lower case (`application/x-msdownload`).
    pub declared_type: Vec<String>,
    /// The sniffed type: `exe-ms`, `elf`, `macho`, `script`, `office-macro`, `ole2`.
    pub sniffed: Vec<String>,
    /// An archive the part sits in, at any depth (a file in a zip in a tar is in both).
    /// postsift opens `zip`, `7z`, `tar`, `gzip`, `bzip2` and `xz`; other formats (`rpm`,
    /// `cpio`, `rar`, …) are not opened, so such conditions match nothing.
    pub container: Vec<String>,
    /// Ban (true, default) or allow (false) a matching part.
    pub ban: bool,
}
