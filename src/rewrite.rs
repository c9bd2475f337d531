//! The header block that goes out in place of the original header section: postsift's own
//! `Authentication-Results` (RFC 8601) at the top, then `X-Virus-Scanned`, `X-Spam-*` and
//! `Received:` lines in the exact amavisd-new form (mailbox rules match on them), incoming copies
//! of those headers removed so senders cannot forge them — `Authentication-Results` only where
//! it carries postsift's own authserv-id, however written — and the subject tag. Everything else
//! in the header section is copied byte for byte.

use std::fmt::Write;
use std::net::SocketAddr;

use crate::config::Config;
use crate::message::{field_name, fields};
use crate::policy::{spam_level, Category, Decision, DmarcAction, SpamLevel};
use crate::scan::auth::{AuthReport, Verdict};
use crate::scan::SpamResult;

/// What the Received line says about the hop into postsift.
pub struct Trace<'a> {
    /// The HELO/EHLO/LHLO name the client (Postfix) gave.
    pub helo: &'a str,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// "ESMTP", "SMTP" or "LMTP".
    pub protocol: &'a str,
    pub id: &'a str,
}

/// Whether an incoming header field is one postsift writes itself and so removes, to keep
/// senders from forging it: `X-Spam-*`, `X-Virus-Scanned`, `X-Amavis-Alert` (names compared
/// without case and without whitespace before the colon).
pub fn is_stripped(name: &[u8]) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with(b"x-spam-") || lower == b"x-virus-scanned" || lower == b"x-amavis-alert"
}

/// Whether an incoming header field is an `Authentication-Results` carrying `authserv_id`
/// (RFC 8601 §5: a receiver removes those, so no sender can forge its verdict). The id is read
/// as a mail reader would: the field unfolded, comments (nested, with quoted pairs) skipped, a
/// quoted-string unquoted, compared without case and without a trailing dot. A value that cannot
/// be read that way (an unclosed comment or quote) is removed when it holds the id anywhere.
pub fn is_forged_auth_results(field: &[u8], authserv_id: &str) -> bool {
    let Some(name) = field_name(field) else {
        return false;
    };
    if !name.eq_ignore_ascii_case(b"authentication-results") {
        return false;
    }
    let colon = field.iter().position(|&b| b == b':').expect("a field");
    let value: Vec<u8> = field[colon + 1..]
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    let ours = authserv_id.trim_end_matches('.').as_bytes();
    match first_value(&value) {
        Some(id) => {
            let id = id.strip_suffix(b".").unwrap_or(&id);
            id.eq_ignore_ascii_case(ours)
        }
        None => value
            .to_ascii_lowercase()
            .windows(ours.len().max(1))
            .any(|w| w.eq_ignore_ascii_case(ours)),
    }
}

/// The first token or quoted-string of an unfolded header value, after whitespace and
/// comments; None when a comment or quoted-string never closes.
fn first_value(v: &[u8]) -> Option<Vec<u8>> {
    let mut i = 0;
    // Leading CFWS.
    loop {
        while i < v.len() && (v[i] == b' ' || v[i] == b'\t') {
            i += 1;
        }
        if v.get(i) != Some(&b'(') {
            break;
        }
        let mut depth = 0usize;
        loop {
            match v.get(i) {
                None => return None,
                Some(b'\\') => i += 1,
                Some(b'(') => depth += 1,
                Some(b')') => {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
    let mut out = Vec::new();
    if v.get(i) == Some(&b'"') {
        i += 1;
        loop {
            match v.get(i) {
                None => return None,
                Some(b'"') => return Some(out),
                Some(b'\\') => {
                    i += 1;
                    out.push(*v.get(i)?);
                }
                Some(&b) => out.push(b),
            }
            i += 1;
        }
    }
    while let Some(&b) = v.get(i) {
        if b == b' ' || b == b'\t' || b == b';' || b == b'(' || b == b'"' {
            break;
        }
        out.push(b);
        i += 1;
    }
    Some(out)
}

/// DKIM results `authentication_results_capped` leaves out of the header at `max`.
pub fn dkim_results_omitted(report: &AuthReport, max: usize) -> usize {
    report.dkim_results_omitted(max)
}

/// `Authentication-Results` for `report`, one method a line, in the order and form people
/// expect (RFC 8601; `dis=` is what DMARC enforcement did), with the default cap on DKIM
/// results (see [`authentication_results_capped`]).
pub fn authentication_results(authserv_id: &str, report: &AuthReport, dis: DmarcAction) -> String {
    let max = crate::config::Auth::default().max_dkim_results;
    authentication_results_capped(authserv_id, report, dis, max)
}

/// Like [`authentication_results`] with at most `max_dkim` DKIM results: a message with 1,000
/// signatures made a 103 KB header. Passes go first (what the next hop acts on), then the
/// others in the message's order; the last one shown carries a comment saying how many more
/// there were.
pub fn authentication_results_capped(
    authserv_id: &str,
    report: &AuthReport,
    dis: DmarcAction,
    max_dkim: usize,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(sigs) = &report.dkim {
        if sigs.is_empty() {
            parts.push("dkim=none".into());
        }
        let mut shown: Vec<_> = sigs.iter().collect();
        shown.sort_by_key(|d| d.result != Verdict::Pass);
        shown.truncate(max_dkim);
        let omitted = sigs.len() - shown.len();
        for (i, d) in shown.iter().enumerate() {
            let mut p = format!("dkim={}", d.result.label());
            if let Some(r) = &d.reason {
                let _ = write!(p, " ({r})");
            }
            if !d.domain.is_empty() {
                let _ = write!(p, " header.d={}", pvalue(&d.domain));
            }
            if !d.selector.is_empty() {
                let _ = write!(p, " header.s={}", pvalue(&d.selector));
            }
            if !d.b.is_empty() {
                let _ = write!(p, " header.b={}", pvalue(&d.b));
            }
            if omitted > 0 && i + 1 == shown.len() {
                let _ = write!(p, " ({omitted} more DKIM results not shown)");
            }
            parts.push(p);
        }
    }
    if let Some(s) = &report.spf {
        parts.push(format!(
            "spf={} smtp.mailfrom={}",
            s.result.label(),
            pvalue(&s.identity)
        ));
    }
    if let Some(s) = &report.spf_helo {
        parts.push(format!(
            "spf={} smtp.helo={}",
            s.result.label(),
            pvalue(&s.identity)
        ));
    }
    if let Some(d) = &report.dmarc {
        let mut p = format!("dmarc={}", d.result.label());
        if let Some(policy) = d.p {
            let _ = write!(p, " (p={}", policy.label());
            if let Some(sp) = d.sp.filter(|sp| *sp != policy) {
                let _ = write!(p, " sp={}", sp.label());
            }
            if d.testing {
                p.push_str(" t=y");
            }
            let _ = write!(p, " dis={})", dis.label());
        }
        if !d.domain.is_empty() {
            let _ = write!(p, " header.from={}", pvalue(&d.domain));
        }
        parts.push(p);
    }
    if let Some(a) = &report.arc {
        let mut p = format!("arc={}", a.result.label());
        if let (Some((d, i)), Verdict::Pass | Verdict::Fail) = (&a.sealer, a.result) {
            let _ = write!(p, " (i={i} d={})", pvalue(d));
        }
        parts.push(p);
    }
    let mut out = format!("Authentication-Results: {authserv_id}");
    if parts.is_empty() {
        out.push_str("; none\r\n");
        return out;
    }
    for p in parts {
        out.push_str(";\r\n ");
        out.push_str(&p);
    }
    out.push_str("\r\n");
    out
}

/// A property value: as it is when it is a dot-atom (with at most one `@`), else a
/// quoted-string; control characters never get through.
fn pvalue(s: &str) -> String {
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
    let at_ok = s.matches('@').count() <= 1
        && !s.starts_with('@')
        && !s.ends_with('@')
        && s.chars().all(|c| atext(c) || c == '@');
    if !s.is_empty() && at_ok {
        return s.to_owned();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Builds the new header section (ending in CRLF, without the blank line) from the original one.
pub fn header_block(
    config: &Config,
    decision: &Decision,
    trace: &Trace<'_>,
    original: &[u8],
) -> Vec<u8> {
    let hostname = config.hostname();
    let mut out = String::with_capacity(1024);
    let authserv_id = config.auth.enabled.then(|| config.authserv_id());
    if let (Some(id), Some(report)) = (&authserv_id, &decision.auth) {
        out.push_str(&authentication_results_capped(
            id,
            report,
            decision.dmarc,
            config.auth.max_dkim_results,
        ));
    }

    let scanned = config.headers.virus_scanned.clone().unwrap_or_else(|| {
        let domain = hostname
            .split_once('.')
            .map_or(hostname.as_str(), |(_, d)| d);
        format!("postsift at {domain}")
    });
    if config.clamd.endpoints.is_empty() {
        // Nothing was virus-scanned: do not claim it was.
    } else {
        let _ = write!(out, "X-Virus-Scanned: {scanned}\r\n");
    }
    if let Category::Virus(names) = &decision.category {
        let _ = write!(
            out,
            "X-Amavis-Alert: INFECTED, message contains virus: {}\r\n",
            sanitize(&names.join(", "))
        );
    }
    if let Category::Banned { name, kind } = &decision.category {
        let _ = write!(
            out,
            "X-Amavis-Alert: BANNED, message contains {},{}\r\n",
            sanitize(kind),
            sanitize(name)
        );
    }
    if let Some(spam) = &decision.spam {
        if spam.score >= config.spam.tag_level {
            spam_headers(&mut out, config, spam, flagged(config, decision));
        }
    }
    let _ = write!(
        out,
        "Received: from {helo} ([{peer_ip}])\r\n by localhost ({hostname} [{local_ip}]) (postsift, port {port})\r\n with {proto} id {id}; {date}\r\n",
        helo = sanitize(trace.helo),
        peer_ip = trace.peer.ip(),
        local_ip = trace.local.ip(),
        port = trace.local.port(),
        proto = trace.protocol,
        id = trace.id,
        date = chrono::Local::now().format("%a, %d %b %Y %H:%M:%S %z"),
    );

    let tag = subject_tag(config, decision);
    let mut out = out.into_bytes();
    let mut subject_done = tag.is_none();
    for field in fields(original) {
        let Some(name) = field_name(field) else {
            // Not reached for a header section the spool found; kept as it came.
            out.extend_from_slice(field);
            continue;
        };
        if is_stripped(name) {
            continue;
        }
        if authserv_id
            .as_deref()
            .is_some_and(|id| is_forged_auth_results(field, id))
        {
            continue;
        }
        if !subject_done && name.eq_ignore_ascii_case(b"subject") {
            let tag = tag.expect("subject_done is false only with a tag");
            let colon = field.iter().position(|&b| b == b':').expect("a field") + 1;
            let mut rest = &field[colon..];
            if rest.first() == Some(&b' ') {
                rest = &rest[1..];
            }
            subject_done = true;
            if already_tagged(rest, tag) {
                // Tagged before (hybrid mode: by the milter, then again here): one tag.
                out.extend_from_slice(field);
                continue;
            }
            out.extend_from_slice(&field[..colon]);
            out.push(b' ');
            if rest == b"\r\n" || rest.is_empty() {
                out.extend_from_slice(tag.trim_end().as_bytes());
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(tag.as_bytes());
                out.extend_from_slice(rest);
            }
            continue;
        }
        out.extend_from_slice(field);
    }
    if !subject_done {
        let tag = tag.expect("tag");
        out.extend_from_slice(format!("Subject: {}\r\n", tag.trim_end()).as_bytes());
    }
    out
}

/// Whether a subject's value (after the space following the colon) begins with `tag`, as a
/// word: `***Spam*** Buy`, or `***Spam***` alone, for the tag `***Spam*** `.
fn already_tagged(rest: &[u8], tag: &str) -> bool {
    let t = tag.trim_end().as_bytes();
    !t.is_empty()
        && rest.starts_with(t)
        && rest[t.len()..]
            .first()
            .is_none_or(|b| b.is_ascii_whitespace())
}

fn subject_tag<'c>(config: &'c Config, decision: &Decision) -> Option<&'c str> {
    if decision.category == Category::Unchecked {
        return Some(config.headers.unchecked_subject_tag.as_str()).filter(|t| !t.is_empty());
    }
    (flagged(config, decision) && !config.spam.subject_tag.is_empty())
        .then_some(config.spam.subject_tag.as_str())
}

/// Flagged as spam: at or above tag2, or judged spam for another reason (DMARC quarantine).
fn flagged(config: &Config, decision: &Decision) -> bool {
    decision.category == Category::Spam
        || decision
            .spam
            .as_ref()
            .is_some_and(|s| spam_level(config, s) >= SpamLevel::Flagged)
}

fn spam_headers(out: &mut String, config: &Config, spam: &SpamResult, flagged: bool) {
    let _ = write!(
        out,
        "X-Spam-Flag: {}\r\n",
        if flagged { "YES" } else { "NO" }
    );
    let _ = write!(out, "X-Spam-Score: {}\r\n", score(spam.score));
    let stars = if spam.score >= 1.0 {
        (spam.score.floor() as usize).min(64)
    } else {
        0
    };
    let _ = write!(out, "X-Spam-Level: {}\r\n", "*".repeat(stars));
    let _ = write!(
        out,
        "X-Spam-Status: {}, score={} tagged_above={} required={}\r\n",
        if flagged { "Yes" } else { "No" },
        score(spam.score),
        score(config.spam.tag_level),
        score(config.spam.tag2_level),
    );
    // tests=[A=1, B=2] folded the way amavis folds it: continuation lines start with a space
    // and stay under 78 columns where the rule names allow.
    let tests: Vec<String> = if spam.rules.is_empty() {
        vec!["none".into()]
    } else {
        spam.rules
            .iter()
            .map(|(name, s)| format!("{}={}", sanitize(name), score(*s)))
            .collect()
    };
    let mut line = String::from(" tests=[");
    for (i, t) in tests.iter().enumerate() {
        let last = i + 1 == tests.len();
        let piece = if last {
            format!("{t}]")
        } else {
            format!("{t},")
        };
        if line.len() + 1 + piece.len() > 78 && !line.ends_with('[') {
            out.push_str(&line);
            out.push_str("\r\n");
            line = String::new();
        }
        if !line.ends_with('[') {
            line.push(' ');
        }
        line.push_str(&piece);
    }
    out.push_str(&line);
    out.push_str("\r\n");
}

/// A score as amavis prints it: three decimals, trailing zeros (and a trailing dot) trimmed.
pub fn score(x: f64) -> String {
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_owned()
    }
}

/// Keeps header text on one line and printable.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 17: 1,000 DKIM signatures made a 103 KB Authentication-Results. Now at most
    /// `auth.max_dkim_results` are written, passes first, and the header says how many more.
    #[test]
    fn authentication_results_reached_103_kb_with_1000_signatures() {
        use crate::scan::auth::{sample_report, Dkim};
        let mut report = sample_report();
        let mut sigs: Vec<Dkim> = (0..1000)
            .map(|i| Dkim {
                result: Verdict::Fail,
                reason: Some("signature did not verify".into()),
                domain: format!("d{i}.example"),
                selector: format!("selector{i}"),
                b: "AbCdEfGh".into(),
            })
            .collect();
        sigs[700].result = Verdict::Pass;
        sigs[700].domain = "example.org".into();
        report.dkim = Some(sigs);
        let h = authentication_results_capped("mx.example.com", &report, DmarcAction::None, 10);
        assert!(h.len() < 4096, "{} bytes", h.len());
        assert_eq!(h.matches("dkim=").count(), 10, "{h}");
        let first = h.lines().nth(1).unwrap();
        assert!(
            first.contains("dkim=pass") && first.contains("header.d=example.org"),
            "{h}"
        );
        assert!(h.contains("(990 more DKIM results not shown)"), "{h}");
        assert!(h.contains("spf=pass") && h.contains("dmarc=pass"), "{h}");
        assert_eq!(dkim_results_omitted(&report, 10), 990);
        // Under the cap nothing is said.
        let h = authentication_results_capped(
            "mx.example.com",
            &sample_report(),
            DmarcAction::None,
            10,
        );
        assert!(!h.contains("not shown"), "{h}");
    }
    use crate::policy::Disposition;

    fn trace() -> Trace<'static> {
        Trace {
            helo: "mx.example.com",
            peer: "127.0.0.1:40000".parse().unwrap(),
            local: "127.0.0.1:10024".parse().unwrap(),
            protocol: "ESMTP",
            id: "abc123",
        }
    }

    fn config() -> Config {
        let mut c = Config::default();
        c.server.hostname = Some("mx.example.com".into());
        c
    }

    fn decision(score: f64, rules: &[(&str, f64)]) -> Decision {
        Decision {
            category: if score >= 6.31 {
                Category::Spam
            } else {
                Category::Clean
            },
            disposition: Disposition::Deliver,
            spam: Some(SpamResult {
                score,
                required: 5.0,
                is_spam: score >= 5.0,
                rules: rules.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
                action: None,
            }),
            tempfail_reason: None,
            unchecked_reason: None,
            auth: None,
            dmarc: DmarcAction::None,
        }
    }

    fn block(d: &Decision, orig: &str) -> String {
        String::from_utf8(header_block(&config(), d, &trace(), orig.as_bytes())).unwrap()
    }

    #[test]
    fn scores_like_amavis() {
        assert_eq!(score(-2.099), "-2.099");
        assert_eq!(score(1000.0), "1000");
        assert_eq!(score(6.31), "6.31");
        assert_eq!(score(-999.0), "-999");
        assert_eq!(score(-0.0001), "0");
        assert_eq!(score(0.1), "0.1");
    }

    #[test]
    fn clean_message_headers() {
        let d = decision(
            -2.099,
            &[
                ("BAYES_00", -1.9),
                ("DKIM_SIGNED", 0.1),
                ("DKIM_VALID", -0.1),
                ("DKIM_VALID_AU", -0.1),
            ],
        );
        let b = block(
            &d,
            "Subject: hi\r\nX-Spam-Flag: YES\r\nX-Spam-Status: forged\r\n  more\r\nFrom: a@b\r\n",
        );
        let expected_start = "X-Virus-Scanned: postsift at example.com\r\n\
X-Spam-Flag: NO\r\n\
X-Spam-Score: -2.099\r\n\
X-Spam-Level: \r\n\
X-Spam-Status: No, score=-2.099 tagged_above=-999 required=6.31\r\n \
tests=[BAYES_00=-1.9, DKIM_SIGNED=0.1, DKIM_VALID=-0.1, DKIM_VALID_AU=-0.1]\r\n\
Received: from mx.example.com ([127.0.0.1])\r\n by localhost (mx.example.com [127.0.0.1]) (postsift, port 10024)\r\n with ESMTP id abc123; ";
        assert!(b.starts_with(expected_start), "{b}");
        assert!(b.ends_with("\r\nSubject: hi\r\nFrom: a@b\r\n"), "{b}");
        assert!(!b.contains("forged"));
    }

    #[test]
    fn spam_gets_flag_level_and_subject_tag() {
        let d = decision(1000.0, &[("GTUBE", 1000.0)]);
        let b = block(&d, "From: a@b\r\nSubject:  Buy\r\n now\r\n");
        assert!(b.contains("X-Spam-Flag: YES\r\n"));
        assert!(b.contains(&format!("X-Spam-Level: {}\r\n", "*".repeat(64))));
        assert!(b.contains("X-Spam-Status: Yes, score=1000 tagged_above=-999 required=6.31\r\n tests=[GTUBE=1000]\r\n"));
        assert!(
            b.ends_with("From: a@b\r\nSubject: ***Spam***  Buy\r\n now\r\n"),
            "{b}"
        );
    }

    #[test]
    fn a_subject_tagged_before_is_not_tagged_twice() {
        let d = decision(12.0, &[]);
        let b = block(&d, "From: a@b\r\nSubject: ***Spam*** Buy\r\n");
        assert!(
            b.ends_with("From: a@b\r\nSubject: ***Spam*** Buy\r\n"),
            "{b}"
        );
        let b = block(&d, "From: a@b\r\nSubject: ***Spam***\r\n");
        assert!(b.ends_with("From: a@b\r\nSubject: ***Spam***\r\n"), "{b}");
        // Not the tag as a word: tagged.
        let b = block(&d, "From: a@b\r\nSubject: ***Spam***x\r\n");
        assert!(b.ends_with("Subject: ***Spam*** ***Spam***x\r\n"), "{b}");
    }

    #[test]
    fn missing_subject_is_added_when_tagging() {
        let d = decision(10.0, &[]);
        let b = block(&d, "From: a@b\r\n");
        assert!(b.ends_with("From: a@b\r\nSubject: ***Spam***\r\n"), "{b}");
        assert!(b.contains("tests=[none]"));
    }

    #[test]
    fn long_test_lists_fold() {
        let rules: Vec<(String, f64)> = (0..20)
            .map(|i| (format!("SOME_LONG_RULE_NAME_{i}"), 0.5))
            .collect();
        let r: Vec<(&str, f64)> = rules.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        let b = block(&decision(10.0, &r), "");
        let status: Vec<&str> = b
            .split("\r\n")
            .skip_while(|l| !l.starts_with("X-Spam-Status"))
            .take_while(|l| !l.starts_with("Received"))
            .collect();
        assert!(status.len() > 3);
        assert!(
            status[1..]
                .iter()
                .all(|l| l.starts_with(' ') && l.len() <= 78),
            "{status:?}"
        );
    }

    #[test]
    fn forged_headers_with_space_before_colon_are_stripped() {
        let d = decision(10.0, &[]);
        let b = block(
            &d,
            "X-Spam-Flag : YES\r\nx-spam-status\t: Yes\r\n more\r\nX-Virus-Scanned  : forged\r\nX-Amavis-Alert:x\r\nSubject :  Hi\r\nX-Spammy: kept? no\r\nX-Virus-Scanned-By: kept\r\n",
        );
        let after_ours = b.split_once(" with ESMTP id abc123; ").unwrap().1;
        let incoming = after_ours.split_once("\r\n").unwrap().1;
        assert_eq!(
            incoming,
            "Subject : ***Spam***  Hi\r\nX-Spammy: kept? no\r\nX-Virus-Scanned-By: kept\r\n"
        );
    }

    fn auth_config() -> Config {
        let mut c = config();
        c.auth.authserv_id = Some("mx.example.com".into());
        c
    }

    /// Hostile spellings of postsift's own authserv-id: each must go.
    #[test]
    fn forged_authentication_results_with_our_id_are_removed() {
        let id = "mx.example.com";
        for forged in [
            "Authentication-Results: mx.example.com; spf=pass\r\n",
            "authentication-results:mx.example.com;dkim=pass\r\n",
            "AUTHENTICATION-RESULTS : MX.Example.COM; dmarc=pass\r\n",
            "Authentication-Results:\tmx.example.com (x); spf=pass\r\n",
            "Authentication-Results: (a comment) mx.example.com; spf=pass\r\n",
            "Authentication-Results: (nested (comment \\) here)) mx.example.com;\r\n spf=pass\r\n",
            "Authentication-Results:\r\n mx.example.com;\r\n\tdkim=pass header.d=example.org\r\n",
            "Authentication-Results: \"mx.example.com\"; spf=pass\r\n",
            "Authentication-Results: mx.example.com. ; spf=pass\r\n",
            "Authentication-Results: mx.example.com 1; spf=pass\r\n",
            "Authentication-Results: mx.example.com(comment);spf=pass\r\n",
            "Authentication-Results: (unclosed comment mx.example.com; spf=pass\r\n",
            "Authentication-Results: \"mx.example.com; spf=pass\r\n",
        ] {
            assert!(
                is_forged_auth_results(forged.as_bytes(), id),
                "kept: {forged:?}"
            );
        }
        for kept in [
            "Authentication-Results: mx.example.org; spf=pass\r\n",
            "Authentication-Results: other.example.com; spf=pass smtp.mailfrom=a@mx.example.com\r\n",
            "Authentication-Results: mx.example.com.evil.net; spf=pass\r\n",
            "Authentication-Results: (mx.example.com) relay.example.net; spf=pass\r\n",
            "ARC-Authentication-Results: i=1; mx.example.com; spf=pass\r\n",
            "X-Authentication-Results: mx.example.com; spf=pass\r\n",
        ] {
            assert!(
                !is_forged_auth_results(kept.as_bytes(), id),
                "removed: {kept:?}"
            );
        }
    }

    #[test]
    fn authentication_results_at_the_top_forged_ones_removed() {
        use crate::scan::auth::{sample_report, Dkim};
        let mut report = sample_report();
        report.spf.as_mut().unwrap().identity = "sender@example.org".into();
        report.spf_helo = None;
        let dkim = report.dkim.as_mut().unwrap();
        dkim[0].selector = "sel1".into();
        dkim.push(Dkim {
            result: Verdict::Neutral,
            reason: Some("body hash did not verify".into()),
            domain: "ex ample\"org".into(),
            selector: "s2".into(),
            b: String::new(),
        });
        let mut d = decision(0.0, &[]);
        d.auth = Some(report);
        let orig = "Authentication-Results: mx.example.com; spf=pass\r\n\
                    Authentication-Results: relay.example.net; spf=fail\r\n\
                    ARC-Authentication-Results: i=1; mx.example.com; spf=pass\r\n\
                    authentication-results :\r\n (x) MX.EXAMPLE.COM; dkim=pass\r\nFrom: a@b\r\n";
        let b =
            String::from_utf8(header_block(&auth_config(), &d, &trace(), orig.as_bytes())).unwrap();
        assert!(
            b.starts_with(
                "Authentication-Results: mx.example.com;\r\n \
                 dkim=pass header.d=example.org header.s=sel1 header.b=AbCdEfGh;\r\n \
                 dkim=neutral (body hash did not verify) header.d=\"ex ample\\\"org\" header.s=s2;\r\n \
                 spf=pass smtp.mailfrom=sender@example.org;\r\n \
                 dmarc=pass (p=reject dis=none) header.from=example.org;\r\n \
                 arc=none\r\nX-Virus-Scanned: "
            ),
            "{b}"
        );
        let incoming = b.split_once(" with ESMTP id abc123; ").unwrap().1;
        let incoming = incoming.split_once("\r\n").unwrap().1;
        assert_eq!(
            incoming,
            "Authentication-Results: relay.example.net; spf=fail\r\n\
             ARC-Authentication-Results: i=1; mx.example.com; spf=pass\r\nFrom: a@b\r\n"
        );
        // Authentication off: nothing added, nothing removed.
        let mut c = auth_config();
        c.auth.enabled = false;
        let b = String::from_utf8(header_block(&c, &d, &trace(), orig.as_bytes())).unwrap();
        assert!(!b.starts_with("Authentication-Results"));
        assert!(b.contains("\r\nAuthentication-Results: mx.example.com; spf=pass\r\n"));
    }

    #[test]
    fn property_values_are_quoted_when_they_are_not_atoms() {
        assert_eq!(pvalue("a.b-c@example.org"), "a.b-c@example.org");
        assert_eq!(pvalue("a b@x"), "\"a b@x\"");
        assert_eq!(pvalue("a\r\nInjected: x"), "\"a??Injected: x\"");
        assert_eq!(pvalue("\"q\"@x"), "\"\\\"q\\\"@x\"");
        assert_eq!(pvalue("a@b@c"), "\"a@b@c\"");
        assert_eq!(pvalue(""), "\"\"");
    }
}
