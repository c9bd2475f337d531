//! `postsift import-amavis`: an amavisd-new configuration translated into postsift.toml. The
//! Perl is evaluated by perl itself in a Safe compartment (import_amavis.pl beside this file, which defines
//! amavis's helpers and dumps the variables as JSON); this module maps those values to postsift's
//! keys and lists every setting it could not carry over, and why.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use toml::{Table, Value as T};

mod banned;
mod translate;

/// The sandboxed reader, run with `perl -e`.
const DUMPER: &str = include_str!("import_amavis.pl");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run perl: {0}")]
    Perl(std::io::Error),
    #[error("reading the amavis configuration failed: {0}")]
    Read(String),
    #[error("perl's output is not the expected JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write the TOML: {0}")]
    Toml(#[from] toml::ser::Error),
}

/// The translation: the TOML text, and one line per setting not carried over.
pub struct Import {
    pub toml: String,
    pub skipped: Vec<String>,
}

/// Reads `path` (a conf.d directory in run-parts order, or one amavisd.conf) and translates it.
pub fn import(path: &Path) -> Result<Import, Error> {
    let out = Command::new("perl")
        .arg("-e")
        .arg(DUMPER)
        .arg(path)
        .output()
        .map_err(Error::Perl)?;
    if !out.status.success() {
        return Err(Error::Read(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    let dump: Value = serde_json::from_slice(&out.stdout)?;
    let mut t = Translation::default();
    for e in dump["errors"].as_array().into_iter().flatten() {
        t.skip(format!(
            "{} (the rest of that file was not read)",
            e.as_str().unwrap_or("").trim()
        ));
    }
    for n in dump["notes"].as_array().into_iter().flatten() {
        t.skip(n.as_str().unwrap_or("").to_owned());
    }
    t.translate(&dump["vars"]);
    let files: Vec<&str> = dump["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut text = format!(
        "# postsift.toml made by `postsift import-amavis` from:\n#   {}\n\
         # Keys not set here take postsift's defaults (postsift.toml(5)); what could not be\n\
         # carried over was listed on stderr. Check it with `postsift check-config`.\n\n",
        files.join("\n#   ")
    );
    text.push_str(&toml::to_string(&t.out)?);
    Ok(Import {
        toml: text,
        skipped: t.skipped,
    })
}

/// `s` with control characters escaped (quotes and other printable text kept), for stderr.
pub fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let esc: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            esc
        })
        .collect()
}

#[derive(Default)]
struct Translation {
    out: Table,
    skipped: Vec<String>,
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// amavis's final destinies (D_PASS 1, D_DISCARD 0, D_BOUNCE -2, D_REJECT -3, D_TEMPFAIL -4).
fn destiny(v: &Value) -> Option<&'static str> {
    match num(v)? as i64 {
        1 => Some("pass"),
        0 => Some("discard"),
        -2 | -3 => Some("reject"),
        _ => None,
    }
}

/// A map list that is true for every recipient, like Debian's `@bypass_spam_checks_maps = (1)`.
fn all_true(v: &Value) -> bool {
    v.as_array().and_then(|a| a.first()).is_some_and(|f| {
        num(f).is_some_and(|n| n != 0.0)
            || f.get("ref")
                .is_some_and(|r| num(r).is_some_and(|n| n != 0.0))
    })
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Number(n) => vec![n.to_string()],
        Value::Array(a) => a.iter().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// An amavis network (`[::1]`, `[fe80::]/10`, `10.0.0.0/8`, `192.0.2.1`) as a CIDR.
fn cidr(s: &str) -> Option<String> {
    let s = s.trim();
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = addr.parse().ok()?;
    let len = match len {
        Some(l) => l.parse::<u8>().ok()?,
        None if ip.is_ipv4() => 32,
        None => 128,
    };
    let net = format!("{ip}/{len}");
    net.parse::<ipnet::IpNet>()
        .ok()
        .map(|n| n.trunc().to_string())
}

fn table<'a>(out: &'a mut Table, key: &str) -> &'a mut Table {
    out.entry(key.to_owned())
        .or_insert_with(|| T::Table(Table::new()))
        .as_table_mut()
        .expect("a table")
}

fn list(v: Vec<String>) -> T {
    T::Array(v.into_iter().map(T::String).collect())
}

impl Translation {
    fn skip(&mut self, why: String) {
        if !why.is_empty() {
            self.skipped.push(why);
        }
    }

    fn set(&mut self, section: &str, key: &str, value: T) {
        table(&mut self.out, section).insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of Debian's /etc/amavis/conf.d (package amavisd-new) plus `extra` as 60-test.
    fn debian_conf(extra: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf.d");
        std::fs::create_dir(&conf).unwrap();
        for e in std::fs::read_dir("/etc/amavis/conf.d").expect("package amavisd-new") {
            let e = e.unwrap();
            std::fs::copy(e.path(), conf.join(e.file_name())).unwrap();
        }
        if !extra.is_empty() {
            std::fs::write(conf.join("60-test"), extra).unwrap();
        }
        dir
    }

    fn imported(dir: &tempfile::TempDir) -> (crate::config::Config, String, Vec<String>) {
        let import = import(&dir.path().join("conf.d")).expect("import");
        let config = crate::config::Config::parse(&import.toml, Path::new("imported.toml"))
            .unwrap_or_else(|e| panic!("check-config refuses the import: {e}\n{}", import.toml));
        (config, import.toml, import.skipped)
    }

    #[test]
    fn debian_stock_config_imports_with_scanning_off_as_amavis_has_it() {
        let dir = debian_conf("");
        let (c, toml, skipped) = imported(&dir);
        // /usr/share/amavis/conf.d/20-package: @bypass_*_checks_maps = (1).
        assert!(c.clamd.endpoints.is_empty(), "{toml}");
        assert!(c.spamd.endpoints.is_empty(), "{toml}");
        assert!(skipped
            .iter()
            .any(|s| s.starts_with("@bypass_virus_checks_maps = (1)")));
        assert_eq!(c.spam.tag_level, 2.0);
        assert_eq!(c.spam.subject_tag, "***SPAM*** ");
        // D_DISCARD with Debian's $QUARANTINEDIR: discarded and kept, i.e. quarantined.
        assert!(toml.contains("[virus]\naction = \"quarantine\""), "{toml}");
        assert!(toml.contains("[banned]\naction = \"quarantine\""), "{toml}");
        // Debian's banned rules: all but the CLSID one carry over, in order.
        assert!(
            skipped
                .iter()
                .any(|s| s.contains("$banned_filename_re rule 2 ")),
            "{skipped:?}"
        );
        assert_eq!(c.banned.rules.as_deref().unwrap().len(), 6, "{toml}");
        assert_eq!(
            c.banned.rules.as_deref().unwrap()[0].double_extension.len(),
            9
        );
        assert_eq!(
            c.banned.rules.as_deref().unwrap()[5].sniffed,
            vec!["exe-ms"]
        );
        // AM.PDP on amavis's socket.
        assert!(toml.contains("release_listen = \"unix:/var/lib/postsift/amavisd.sock\""));
    }

    #[test]
    fn policy_banks_changed_banned_rule_and_dkim_keys_import() {
        let keys = tempfile::tempdir().unwrap();
        let key = keys.path().join("example.com.pem");
        let ok = Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(ok.success());
        let extra = format!(
            r#"use strict;
@bypass_virus_checks_maps = (\%bypass_virus_checks, \@bypass_virus_checks_acl, \$bypass_virus_checks_re);
@bypass_spam_checks_maps = (\%bypass_spam_checks, \@bypass_spam_checks_acl, \$bypass_spam_checks_re);
%bypass_spam_checks = ('postmaster@example.com' => 1, '.lists.example.com' => 1);
$sa_tag_level_deflt = undef; $sa_tag2_level_deflt = 5.5; $sa_kill_level_deflt = 8;
$sa_quarantine_cutoff_level = 20;
$final_spam_destiny = D_DISCARD;
$X_HEADER_LINE = "Debian amavisd-new at example.com";
@mynetworks = qw(127.0.0.0/8 [::1] 192.0.2.0/24);
$inet_socket_port = [10024, 10026];
$interface_policy{{'10026'}} = 'ORIGINATING';
$policy_bank{{'ORIGINATING'}} = {{ originating => 1, bypass_spam_checks_maps => [1], os_fingerprint_method => undef }};
$policy_bank{{'MYNETS'}} = {{ originating => 1, spam_kill_level_maps => [12] }};
$banned_filename_re = new_RE(
  [qr'^\.(rpm|cpio|tar)$' => 0],
  qr'^\.(exe-ms)$',
  qr'.\.(exe|vbs|pif|scr|js)$'i,
  qr'^application/x-msdownload$'i,
);
$enable_dkim_signing = 1;
dkim_key('example.com', '202612', '{}', a => 'ed25519-sha256');
$x = `touch {}/RAN`;
1;
"#,
            key.display(),
            keys.path().display()
        );
        let dir = debian_conf(&extra);
        let (c, toml, skipped) = imported(&dir);
        assert!(
            !keys.path().join("RAN").exists(),
            "a command in backticks ran"
        );
        assert!(
            skipped.iter().any(|s| s.contains("not run (sandbox)")),
            "{skipped:?}"
        );
        assert_eq!(c.clamd.endpoints, vec!["/run/clamav/clamd.ctl"], "{toml}");
        assert_eq!(c.spam.tag_level, -999.0);
        assert_eq!(c.spam.tag2_level, 5.5);
        assert_eq!(c.spam.kill_level, 8.0);
        assert!(toml.contains("[spam]\naction = \"quarantine\""), "{toml}");
        assert!(skipped
            .iter()
            .any(|s| s.starts_with("$sa_quarantine_cutoff_level = 20")));
        assert_eq!(
            c.headers.virus_scanned.as_deref(),
            Some("Debian amavisd-new at example.com")
        );
        assert_eq!(c.server.listen.len(), 2, "{toml}");
        // The changed banned rules, one by one.
        assert_eq!(c.banned.rules.as_deref().unwrap().len(), 4, "{toml}");
        assert_eq!(
            c.banned.rules.as_deref().unwrap()[0].container,
            vec!["rpm", "cpio", "tar"]
        );
        assert!(!c.banned.rules.as_deref().unwrap()[0].ban);
        assert_eq!(
            c.banned.rules.as_deref().unwrap()[1].sniffed,
            vec!["exe-ms"]
        );
        assert_eq!(
            c.banned.rules.as_deref().unwrap()[2].extension,
            vec!["exe", "vbs", "pif", "scr", "js"]
        );
        assert_eq!(
            c.banned.rules.as_deref().unwrap()[3].declared_type,
            vec!["application/x-msdownload"]
        );
        // Banks: the per-recipient bypass, ORIGINATING by its port, MYNETS by @mynetworks.
        let names: Vec<&str> = c.policy.iter().map(|p| p.name.as_str()).collect();
        assert!(names.contains(&"originating"), "{names:?}\n{toml}");
        assert!(names.contains(&"mynets"), "{names:?}");
        assert!(names.contains(&"bypass-spam-recipient"), "{names:?}");
        assert!(names.contains(&"bypass-spam-recipient-domain"), "{names:?}");
        assert!(toml.contains("listener = [\"127.0.0.1:10026\"]"), "{toml}");
        assert!(
            toml.contains("client = [\"127.0.0.0/8\", \"::1/128\", \"192.0.2.0/24\"]"),
            "{toml}"
        );
        assert!(
            skipped
                .iter()
                .any(|s| s.contains("{os_fingerprint_method}")),
            "{skipped:?}"
        );
        // DKIM.
        assert!(c.dkim_sign.enabled);
        assert_eq!(c.dkim_sign.keys.len(), 1);
        assert_eq!(c.dkim_sign.keys[0].domain, "example.com");
    }

    /// The classic layout (CentOS, the upstream recipe): one amavisd.conf. Debian's own files,
    /// its package defaults and then conf.d in run-parts order, joined into one file, import to
    /// the same TOML and the same list of what was not carried over.
    #[test]
    fn a_single_amavisd_conf_imports_as_debian_s_conf_d_does() {
        let dir = debian_conf("");
        let mut joined = String::new();
        for d in ["/usr/share/amavis/conf.d", "/etc/amavis/conf.d"] {
            let mut files: Vec<_> = std::fs::read_dir(d)
                .expect("package amavisd-new")
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            for f in files {
                joined.push_str(&std::fs::read_to_string(&f).unwrap());
                joined.push('\n');
            }
        }
        let single = dir.path().join("amavisd.conf");
        std::fs::write(&single, joined).unwrap();
        let one = import(&single).expect("import amavisd.conf");
        let (_, toml, skipped) = imported(&dir);
        let body = |t: &str| -> String {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(one.toml.contains(&format!("#   {}\n", single.display())));
        assert_eq!(body(&one.toml), body(&toml));
        assert_eq!(one.skipped, skipped);
        crate::config::Config::parse(&one.toml, Path::new("imported.toml"))
            .unwrap_or_else(|e| panic!("check-config refuses the import: {e}\n{}", one.toml));
        // What Debian's files set that postsift does differently is said, with the value.
        for want in [
            "@local_domains_acl = ",
            "$virus_quarantine_method = \"local:virus-%m\" in $QUARANTINEDIR /var/lib/amavis/virusmails",
            "$spam_quarantine_method = \"local:spam-%m.gz\"",
        ] {
            assert!(
                skipped.iter().any(|s| s.starts_with(want)),
                "{want}: {skipped:?}"
            );
        }
    }

    #[test]
    fn networks_as_cidr() {
        assert_eq!(cidr("[::1]").as_deref(), Some("::1/128"));
        assert_eq!(cidr("[fe80::]/10").as_deref(), Some("fe80::/10"));
        assert_eq!(cidr("10.1.2.3/8").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(cidr("!10.0.0.1"), None);
    }
}
