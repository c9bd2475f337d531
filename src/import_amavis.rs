//! `postsift import-amavis`: an amavisd-new configuration translated into postsift.toml. The
//! Perl is evaluated by perl itself in a Safe compartment (src/import_amavis.pl, which defines
//! amavis's helpers and dumps the variables as JSON); this module maps those values to postsift's
//! keys and lists every setting it could not carry over, and why.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use toml::{Table, Value as T};

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

    fn translate(&mut self, vars: &Value) {
        let var = |n: &str| vars.get(n).unwrap_or(&Value::Null);

        // Listeners: $inet_socket_bind × $inet_socket_port.
        let binds: Vec<String> = match strings(var("$inet_socket_bind")) {
            b if b.is_empty() => vec!["127.0.0.1".into()],
            b => b
                .into_iter()
                .map(|b| {
                    if b.contains(':') && !b.starts_with('[') {
                        format!("[{b}]")
                    } else {
                        b
                    }
                })
                .collect(),
        };
        let ports = strings(var("$inet_socket_port"));
        let listen_on =
            |port: &str| -> Vec<String> { binds.iter().map(|b| format!("{b}:{port}")).collect() };
        let mut listen: Vec<String> = ports.iter().flat_map(|p| listen_on(p)).collect();

        // Levels and tags.
        if vars.get("$sa_tag_level_deflt").is_some() || vars.get("$sa_tag2_level_deflt").is_some() {
            let tag = num(var("$sa_tag_level_deflt")).unwrap_or(-999.0);
            self.set("spam", "tag_level", T::Float(tag));
        }
        for (amavis, key) in [
            ("$sa_tag2_level_deflt", "tag2_level"),
            ("$sa_kill_level_deflt", "kill_level"),
        ] {
            if let Some(n) = num(var(amavis)) {
                self.set("spam", key, T::Float(n));
            }
        }
        match var("$sa_spam_subject_tag") {
            Value::String(s) => self.set("spam", "subject_tag", T::String(s.clone())),
            Value::Null => self.set("spam", "subject_tag", T::String(String::new())),
            _ => self.skip("$sa_spam_subject_tag: not a string".into()),
        }
        if let Some(tag3) = num(var("$sa_tag3_level_deflt")) {
            self.skip(format!(
                "$sa_tag3_level_deflt = {tag3}: postsift has no third level"
            ));
        }
        match var("$X_HEADER_LINE") {
            Value::String(s) if s.trim_end().ends_with(" at") => self.skip(format!(
                "$X_HEADER_LINE = {s:?}: ends in an empty domain ($mydomain unset, e.g. no \
                 /etc/mailname); headers.virus_scanned keeps postsift's default"
            )),
            Value::String(s) => self.set("headers", "virus_scanned", T::String(s.clone())),
            _ => {}
        }

        // Scanning on or off.
        if all_true(var("@bypass_virus_checks_maps")) {
            self.set("clamd", "endpoints", T::Array(Vec::new()));
            self.skip(
                "@bypass_virus_checks_maps = (1): amavis scans no mail for viruses (Debian's \
                 default until 15-content_filter_mode enables it), so clamd.endpoints = [] \
                 (virus scanning off); remove that line to scan"
                    .into(),
            );
        } else {
            self.clamd(var("@av_scanners"));
            self.bypass_maps(var("@bypass_virus_checks_maps"), "virus");
        }
        if all_true(var("@bypass_spam_checks_maps")) {
            self.set("spamd", "endpoints", T::Array(Vec::new()));
            self.skip(
                "@bypass_spam_checks_maps = (1): amavis checks no mail for spam (Debian's \
                 default until 15-content_filter_mode enables it), so spamd.endpoints = [] \
                 (spam checks off); remove that line to check"
                    .into(),
            );
        } else {
            self.bypass_maps(var("@bypass_spam_checks_maps"), "spam");
        }
        if all_true(var("@bypass_banned_checks_maps")) {
            self.set("banned", "rules", T::Array(Vec::new()));
        } else if var("@bypass_banned_checks_maps")
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            self.skip("@bypass_banned_checks_maps: per-recipient banned-check bypass is not carried over (postsift's banks cannot switch banned rules off by recipient list here)".into());
        }
        if var("@bypass_header_checks_maps")
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            self.skip("@bypass_header_checks_maps: postsift has no bad-header check".into());
        }

        // Destinies and quarantine.
        let quarantine_dir = var("$QUARANTINEDIR").as_str().map(str::to_owned);
        for (cat, destiny_var, method_var, to_var) in [
            (
                "virus",
                "$final_virus_destiny",
                "$virus_quarantine_method",
                "$virus_quarantine_to",
            ),
            (
                "banned",
                "$final_banned_destiny",
                "$banned_files_quarantine_method",
                "$banned_quarantine_to",
            ),
            (
                "spam",
                "$final_spam_destiny",
                "$spam_quarantine_method",
                "$spam_quarantine_to",
            ),
        ] {
            let method = var(method_var).as_str().unwrap_or("");
            let to = var(to_var).as_str().unwrap_or("");
            let quarantined = !method.is_empty()
                && !to.is_empty()
                && (!method.starts_with("local:") || quarantine_dir.is_some());
            if let Some(action) = self.action(cat, destiny_var, var(destiny_var), quarantined) {
                self.set(cat, "action", T::String(action.into()));
            }
            if quarantined {
                if method.starts_with("local:") {
                    self.skip(format!(
                        "{method_var} = {method:?} in $QUARANTINEDIR {}: postsift keeps its quarantine in \
                         quarantine.dir (/var/lib/postsift/quarantine, its own format; \
                         `postsift quarantine list`); messages already in amavis's directory are not moved",
                        quarantine_dir.as_deref().unwrap_or("")
                    ));
                } else {
                    self.skip(format!(
                        "{method_var} = {method:?}: postsift quarantines into quarantine.dir only \
                         (no SQL, BSMTP or SMTP quarantine)"
                    ));
                }
            }
        }
        match (
            destiny(var("$final_bad_header_destiny")),
            var("$final_bad_header_destiny"),
        ) {
            (_, Value::Null) | (Some("pass"), _) => {}
            (_, v) => self.skip(format!(
                "$final_bad_header_destiny = {v}: postsift has no bad-header check"
            )),
        }
        if let Some(cut) = num(var("$sa_quarantine_cutoff_level")) {
            self.skip(format!(
                "$sa_quarantine_cutoff_level = {cut}: postsift has no cutoff; with spam.action = \
                 \"quarantine\" it quarantines all spam at or above kill_level"
            ));
        }

        // Banned file rules.
        if let Some(rules) = self.banned_rules(var("$banned_filename_re"), "$banned_filename_re") {
            self.set("banned", "rules", T::Array(rules));
        }
        for v in ["@banned_filename_maps", "$banned_namepath_re"] {
            if !var(v).is_null() && var(v) != &Value::Array(Vec::new()) {
                self.skip(format!(
                    "{v}: not carried over (postsift reads $banned_filename_re's rules only)"
                ));
            }
        }

        // Local domains: amavis marks (X-Spam headers, subject tags) only mail to them.
        for v in [
            "@local_domains_acl",
            "@local_domains_maps",
            "%local_domains",
        ] {
            if !var(v).is_null() {
                self.skip(format!(
                    "{v} = {}: postsift adds its headers for every recipient (amavis only for \
                     local domains); to treat outgoing mail differently use a [[policy]] bank \
                     on the listener or client",
                    var(v)
                ));
            }
        }

        // Policy banks: ORIGINATING and the like by port, MYNETS by @mynetworks.
        let mynetworks: Vec<String> = strings(var("@mynetworks"));
        let mut policies = Vec::new();
        let mut bank_ports: Vec<(String, String)> = Vec::new();
        if let Some(ip) = var("%interface_policy").as_object() {
            for (port, bank) in ip {
                bank_ports.push((port.clone(), bank.as_str().unwrap_or("").to_owned()));
            }
        }
        bank_ports.sort();
        if let Some(banks) = var("%policy_bank").as_object() {
            let mut names: Vec<&String> = banks.keys().collect();
            names.sort();
            for name in names {
                let bank = &banks[name];
                if bank.get("protocol").and_then(Value::as_str) == Some("AM.PDP") {
                    self.am_pdp(name, &bank_ports, var("$unix_socketname"));
                    continue;
                }
                let ports: Vec<&String> = bank_ports
                    .iter()
                    .filter(|(p, b)| b == name && p.chars().all(|c| c.is_ascii_digit()))
                    .map(|(p, _)| p)
                    .collect();
                let mut m = Table::new();
                if !ports.is_empty() {
                    let l: Vec<String> = ports.iter().flat_map(|p| listen_on(p)).collect();
                    for a in &l {
                        if !listen.contains(a) {
                            listen.push(a.clone());
                        }
                    }
                    m.insert("listener".into(), list(l));
                } else if name == "MYNETS" {
                    let nets: Vec<String> = mynetworks.iter().filter_map(|n| {
                        let c = cidr(n);
                        if c.is_none() {
                            self.skip(format!("@mynetworks entry {n:?}: not a network postsift can match (negations and hosts by name are not carried over)"));
                        }
                        c
                    }).collect();
                    m.insert("client".into(), list(nets));
                } else {
                    self.skip(format!(
                        "$policy_bank{{'{name}'}}: not selected by a port in %interface_policy nor \
                         MYNETS, so postsift cannot tell when it applies"
                    ));
                    continue;
                }
                let mut p = Table::new();
                p.insert("name".into(), T::String(name.to_lowercase()));
                p.insert("match".into(), T::Table(m));
                self.bank_settings(name, bank, &mut p);
                policies.push(T::Table(p));
            }
        }
        if !listen.is_empty() {
            self.set("server", "listen", list(listen));
        }
        if let Some(existing) = self.out.get_mut("policy").and_then(T::as_array_mut) {
            existing.extend(policies);
        } else if !policies.is_empty() {
            self.out.insert("policy".into(), T::Array(policies));
        }

        // DKIM signing keys.
        let mut keys = Vec::new();
        for k in var("dkim_keys").as_array().into_iter().flatten() {
            let (Some(domain), Some(selector), Some(key)) = (
                k["domain"].as_str(),
                k["selector"].as_str(),
                k["key"].as_str(),
            ) else {
                self.skip(format!("dkim_key({}, {}, …): a domain given as a regular expression or a key object is not carried over", k["domain"], k["selector"]));
                continue;
            };
            let mut e = Table::new();
            e.insert("domain".into(), T::String(domain.to_owned()));
            e.insert("selector".into(), T::String(selector.to_owned()));
            e.insert("key".into(), T::String(key.to_owned()));
            if let Some(opts) = k["options"].as_object() {
                for (o, v) in opts {
                    match (o.as_str(), v.as_str()) {
                        ("a", Some(a @ ("rsa-sha256" | "ed25519-sha256"))) => {
                            e.insert("algorithm".into(), T::String(a.into()));
                        }
                        _ => self.skip(format!(
                            "dkim_key('{domain}', '{selector}', …) option {o} => {v}: not carried over \
                             (postsift signs with relaxed/relaxed and its own header list)"
                        )),
                    }
                }
            }
            self.skip(format!(
                "dkim_key('{domain}', '{selector}'): make {key} readable by the user _postsift"
            ));
            keys.push(T::Table(e));
        }
        if !keys.is_empty() {
            let enabled = num(var("$enable_dkim_signing")).is_some_and(|n| n != 0.0);
            self.set("dkim_sign", "enabled", T::Boolean(enabled));
            self.set("dkim_sign", "keys", T::Array(keys));
            if !enabled {
                self.skip("dkim_key(...) given but $enable_dkim_signing is off: dkim_sign.enabled = false".into());
            }
        }
    }

    fn action(
        &mut self,
        cat: &str,
        var_name: &str,
        v: &Value,
        quarantined: bool,
    ) -> Option<&'static str> {
        if v.is_null() {
            return None;
        }
        match destiny(v) {
            Some("pass") if quarantined && cat != "spam" => {
                self.skip(format!("{var_name} = D_PASS with a quarantine: postsift either delivers or quarantines, so {cat}.action = \"pass\" (no copy kept)"));
                Some("pass")
            }
            Some("discard") | Some("reject") if quarantined => {
                if destiny(v) == Some("reject") {
                    self.skip(format!("{var_name} = D_REJECT/D_BOUNCE with a quarantine: {cat}.action = \"quarantine\" (the sender gets 250, not a bounce)"));
                }
                Some("quarantine")
            }
            Some(a) => Some(a),
            None => {
                self.skip(format!(
                    "{var_name} = {v}: D_TEMPFAIL or an unknown destiny is not carried over"
                ));
                None
            }
        }
    }

    fn clamd(&mut self, scanners: &Value) {
        let mut endpoints = Vec::new();
        let mut others = Vec::new();
        for s in scanners.as_array().into_iter().flatten() {
            let name = s[0].as_str().unwrap_or("?");
            let daemon = s[1]
                .get("code")
                .and_then(Value::as_str)
                .is_some_and(|c| c.starts_with("ask_"));
            if name.to_lowercase().contains("clam") && daemon {
                for sock in strings(&s[2][1]) {
                    let sock = sock.trim_start_matches("unix:").to_owned();
                    let sock = sock
                        .strip_prefix("/var/run/")
                        .map(|r| format!("/run/{r}"))
                        .unwrap_or(sock);
                    if !endpoints.contains(&sock) {
                        endpoints.push(sock);
                    }
                }
            } else {
                others.push(name.to_owned());
            }
        }
        if !endpoints.is_empty() {
            self.set("clamd", "endpoints", list(endpoints));
        }
        if !others.is_empty() {
            self.skip(format!(
                "@av_scanners: {} scanner(s) other than clamd not carried over (postsift asks clamd only): {}",
                others.len(),
                others.join(", ")
            ));
        }
    }

    /// Per-recipient bypass lists (hashes and ACLs of addresses and domains) as banks.
    fn bypass_maps(&mut self, maps: &Value, what: &str) {
        let mut recipients = Vec::new();
        let mut domains = Vec::new();
        for m in maps.as_array().into_iter().flatten() {
            let m = m.get("ref").unwrap_or(m);
            let entries: Vec<(String, bool)> = match m {
                Value::Object(h) if h.contains_key("new_RE") || h.contains_key("re") => {
                    self.skip(format!(
                        "@bypass_{what}_checks_maps: a regular-expression map is not carried over"
                    ));
                    continue;
                }
                Value::Object(h) => h
                    .iter()
                    .map(|(k, v)| (k.clone(), num(v).is_some_and(|n| n != 0.0) || v.is_string()))
                    .collect(),
                Value::Array(a) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|s| match s.strip_prefix('!') {
                        Some(s) => (s.to_owned(), false),
                        None => (s.to_owned(), true),
                    })
                    .collect(),
                _ => continue,
            };
            for (k, on) in entries {
                if !on {
                    self.skip(format!(
                        "@bypass_{what}_checks_maps: the exception {k:?} is not carried over"
                    ));
                } else if let Some(d) = k.strip_prefix('@') {
                    domains.push(d.to_lowercase());
                } else if k.contains('@') {
                    recipients.push(k.to_lowercase());
                } else if k == "." {
                    self.skip(format!(
                        "@bypass_{what}_checks_maps: the catch-all \".\" is not carried over"
                    ));
                } else {
                    domains.push(k.to_lowercase());
                }
            }
        }
        for (key, v) in [("recipient", recipients), ("recipient_domain", domains)] {
            if v.is_empty() {
                continue;
            }
            let mut m = Table::new();
            m.insert(key.into(), list(v));
            let mut p = Table::new();
            p.insert(
                "name".into(),
                T::String(format!("bypass-{what}-{}", key.replace('_', "-"))),
            );
            p.insert("match".into(), T::Table(m));
            p.insert(format!("bypass_{what}_checks"), T::Boolean(true));
            self.out
                .entry("policy".to_owned())
                .or_insert_with(|| T::Array(Vec::new()))
                .as_array_mut()
                .expect("array")
                .push(T::Table(p));
        }
    }

    fn am_pdp(&mut self, name: &str, ports: &[(String, String)], socket: &Value) {
        for (p, _) in ports.iter().filter(|(_, b)| b == name) {
            if p == "SOCK" {
                self.set(
                    "quarantine",
                    "release_listen",
                    T::String("unix:/var/lib/postsift/amavisd.sock".into()),
                );
                self.skip(format!(
                    "$policy_bank{{'{name}'}} (AM.PDP on {}): quarantine.release_listen = \
                     \"unix:/var/lib/postsift/amavisd.sock\" (the unit can write only there); point \
                     amavisd-release at it (its $socketname)",
                    socket.as_str().unwrap_or("$unix_socketname")
                ));
            } else if p.chars().all(|c| c.is_ascii_digit()) {
                self.set(
                    "quarantine",
                    "release_listen",
                    T::String(format!("127.0.0.1:{p}")),
                );
            }
        }
    }

    fn bank_settings(&mut self, name: &str, bank: &Value, p: &mut Table) {
        let Some(h) = bank.as_object() else { return };
        let mut keys: Vec<&String> = h.keys().collect();
        keys.sort();
        for k in keys {
            let v = &h[k];
            let first = v.as_array().and_then(|a| a.first()).unwrap_or(v);
            let sub = |p: &mut Table, section: &str, key: &str, val: T| {
                p.entry(section.to_owned())
                    .or_insert_with(|| T::Table(Table::new()))
                    .as_table_mut()
                    .expect("table")
                    .insert(key.to_owned(), val);
            };
            match k.as_str() {
                "originating" => {
                    p.insert(
                        "dkim_sign".into(),
                        T::Boolean(num(v).is_some_and(|n| n != 0.0)),
                    );
                }
                "bypass_spam_checks_maps" | "bypass_virus_checks_maps" => {
                    let key = k.trim_end_matches("_maps");
                    if all_true(v) || (num(first).is_some_and(|n| n == 0.0)) {
                        p.insert(key.into(), T::Boolean(all_true(v)));
                    } else {
                        self.skip(format!("$policy_bank{{'{name}'}}{{{k}}}: a per-recipient list inside a bank is not carried over"));
                    }
                }
                "spam_tag_level_maps" | "spam_tag2_level_maps" | "spam_kill_level_maps"
                    if num(first).is_some() =>
                {
                    let key = k.trim_start_matches("spam_").trim_end_matches("_maps");
                    sub(p, "spam", key, T::Float(num(first).unwrap_or_default()));
                }
                "spam_subject_tag_maps" | "spam_subject_tag2_maps" if first.is_string() => {
                    sub(
                        p,
                        "spam",
                        "subject_tag",
                        T::String(first.as_str().unwrap_or("").into()),
                    );
                }
                "final_spam_destiny" | "final_virus_destiny" | "final_banned_destiny" => {
                    let cat = k.trim_start_matches("final_").trim_end_matches("_destiny");
                    let global_q = self
                        .out
                        .get(cat)
                        .and_then(|t| t.get("action"))
                        .and_then(T::as_str)
                        == Some("quarantine");
                    if let Some(a) = self.action(
                        cat,
                        &format!("$policy_bank{{'{name}'}}{{{k}}}"),
                        v,
                        global_q,
                    ) {
                        sub(p, cat, "action", T::String(a.into()));
                    }
                }
                "banned_filename_re" => {
                    if let Some(rules) = self.banned_rules(
                        v,
                        &format!("$policy_bank{{'{name}'}}{{banned_filename_re}}"),
                    ) {
                        sub(p, "banned", "rules", T::Array(rules));
                    }
                }
                _ => self.skip(format!(
                    "$policy_bank{{'{name}'}}{{{k}}}: no postsift bank setting for it"
                )),
            }
        }
    }

    /// `$banned_filename_re = new_RE(...)`, rule by rule.
    fn banned_rules(&mut self, v: &Value, what: &str) -> Option<Vec<T>> {
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

    #[test]
    fn networks_as_cidr() {
        assert_eq!(cidr("[::1]").as_deref(), Some("::1/128"));
        assert_eq!(cidr("[fe80::]/10").as_deref(), Some("fe80::/10"));
        assert_eq!(cidr("10.1.2.3/8").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(cidr("!10.0.0.1"), None);
    }
}
