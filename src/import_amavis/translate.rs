//! The translation of amavis's variables, as the Perl reader dumps them, into postsift's keys,
//! one concern of amavisd.conf at a time; what cannot be carried over is listed with why.

use serde_json::Value;
use toml::{Table, Value as T};

use super::{all_true, cidr, destiny, list, num, strings, Translation};

impl Translation {
    pub(super) fn translate(&mut self, vars: &Value) {
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
        let listen: Vec<String> = strings(var("$inet_socket_port"))
            .iter()
            .flat_map(|port| binds.iter().map(move |b| format!("{b}:{port}")))
            .collect();

        self.levels_and_tags(vars);
        self.scanning(vars);
        self.destinies(vars);
        self.banned_and_local_domains(vars);
        self.policy_banks(vars, &binds, listen);
        self.dkim_keys(vars);
    }

    /// Spam levels, the subject tag, X-Virus-Scanned.
    fn levels_and_tags(&mut self, vars: &Value) {
        let var = |n: &str| vars.get(n).unwrap_or(&Value::Null);
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
    }

    /// Which checks run (the bypass maps that are true for all).
    fn scanning(&mut self, vars: &Value) {
        let var = |n: &str| vars.get(n).unwrap_or(&Value::Null);
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
    }

    /// What each category gets, and amavis's quarantine.
    fn destinies(&mut self, vars: &Value) {
        let var = |n: &str| vars.get(n).unwrap_or(&Value::Null);
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
    }

    /// The banned-file rules, and the local domains postsift does not need.
    fn banned_and_local_domains(&mut self, vars: &Value) {
        let var = |n: &str| vars.get(n).unwrap_or(&Value::Null);
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
    }

    /// Policy banks (`server.listen` grows by their ports) and the listeners.
    fn policy_banks(&mut self, vars: &Value, binds: &[String], mut listen: Vec<String>) {
        let var = |n: &str| vars.get(n).unwrap_or(&Value::Null);
        // Policy banks: ORIGINATING and the like by port, MYNETS by @mynetworks.
        let listen_on =
            |port: &str| -> Vec<String> { binds.iter().map(|b| format!("{b}:{port}")).collect() };
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
    }

    /// DKIM signing keys.
    fn dkim_keys(&mut self, vars: &Value) {
        let var = |n: &str| vars.get(n).unwrap_or(&Value::Null);
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
}
