//! Policy banks (`[[policy]]`): which banks apply to a message and to each of its recipients,
//! the effective settings they give (the top-level configuration with every matching bank's
//! keys laid over it, in file order), and the grouping of recipients by those settings, so that
//! the pipeline scans once and decides, rewrites and delivers once per group. Pure functions of
//! the configuration and the envelope.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::config::{Action, Bank, Config, Unchecked};

/// What a bank can match on besides the recipient: the message's own facts.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The configured `server.listen` address the message came in on (None: not known, e.g.
    /// `postsift scan`).
    pub listener: Option<SocketAddr>,
    /// The original client (XFORWARD ADDR, else the connecting client).
    pub client: Option<IpAddr>,
    /// The envelope sender (empty for the null sender).
    pub sender: &'a str,
}

/// Recipients that share their banks, hence their settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Indices into `config.policy`, in order (empty: the defaults).
    pub banks: Vec<usize>,
    /// Indices into the envelope's recipients, in RCPT order.
    pub rcpts: Vec<usize>,
}

/// `example.com` matches that domain, `.example.com` it and its subdomains; any case.
fn domain_matches(pattern: &str, domain: &str) -> bool {
    match pattern.strip_prefix('.') {
        Some(parent) => {
            domain.eq_ignore_ascii_case(parent)
                || (domain.len() > parent.len()
                    && domain.as_bytes()[domain.len() - parent.len() - 1] == b'.'
                    && domain[domain.len() - parent.len()..].eq_ignore_ascii_case(parent))
        }
        None => domain.eq_ignore_ascii_case(pattern),
    }
}

fn domain_of(address: &str) -> Option<&str> {
    address.rsplit_once('@').map(|(_, d)| d)
}

/// Whether `bank` applies to `rcpt` of a message seen as `ctx`.
pub fn matches(bank: &Bank, ctx: &Context, rcpt: &str) -> bool {
    let m = &bank.when;
    let any =
        |list: &[String], f: &dyn Fn(&str) -> bool| list.is_empty() || list.iter().any(|x| f(x));
    (m.listener.is_empty() || ctx.listener.is_some_and(|l| m.listener.contains(&l)))
        && (m.client.is_empty()
            || ctx
                .client
                .map(|ip| ip.to_canonical())
                .is_some_and(|ip| m.client.iter().any(|n| n.contains(&ip))))
        && any(&m.sender_domain, &|p| {
            domain_of(ctx.sender).is_some_and(|d| domain_matches(p, d))
        })
        && any(&m.recipient, &|p| p.eq_ignore_ascii_case(rcpt))
        && any(&m.recipient_domain, &|p| {
            domain_of(rcpt).is_some_and(|d| domain_matches(p, d))
        })
}

/// Logs once per process, at the first message that came without XFORWARD ADDR, when a bank
/// matches client networks: that bank then sees Postfix as the client.
pub fn warn_once_without_xforward(config: &Config) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    if config.policy.iter().any(|b| !b.when.client.is_empty())
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            "a message came without XFORWARD: [[policy]] banks matching match.client see the \
             connecting Postfix as the client; set lmtp_send_xforward_command = yes (or \
             smtp_send_xforward_command) on postsift's transport in master.cf"
        );
    }
}

/// The banks that apply to `rcpt`, in order.
pub fn for_recipient(config: &Config, ctx: &Context, rcpt: &str) -> Vec<usize> {
    (0..config.policy.len())
        .filter(|&i| matches(&config.policy[i], ctx, rcpt))
        .collect()
}

/// The recipients grouped by the banks that apply to them, groups in the order of their first
/// recipient. Without banks (or with none matching) there is one group with every recipient.
pub fn group<'r>(
    config: &Config,
    ctx: &Context,
    rcpts: impl IntoIterator<Item = &'r str>,
) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, r) in rcpts.into_iter().enumerate() {
        let banks = for_recipient(config, ctx, r);
        match groups.iter_mut().find(|g| g.banks == banks) {
            Some(g) => g.rcpts.push(i),
            None => groups.push(Group {
                banks,
                rcpts: vec![i],
            }),
        }
    }
    if groups.is_empty() {
        groups.push(Group {
            banks: Vec::new(),
            rcpts: Vec::new(),
        });
    }
    groups
}

/// The settings in effect under `banks` (indices into `config.policy`, applied in that order):
/// [`Config::effective`].
pub fn effective(config: &Config, banks: &[usize]) -> Config {
    config.effective(banks)
}

/// The names of `banks`, comma-separated, `-` for none (the log line's `bank=`).
pub fn names(config: &Config, banks: &[usize]) -> String {
    if banks.is_empty() {
        return "-".into();
    }
    banks
        .iter()
        .map(|&i| config.policy[i].name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// What `check-config` prints for bank `i`: its match and the settings in effect where it
/// applies on its own (later banks matching the same mail override it further).
pub fn describe(config: &Config, i: usize) -> String {
    let b = &config.policy[i];
    let m = &b.when;
    let e = effective(config, &[i]);
    let mut out = format!("policy bank \"{}\" (#{}):\n  match:", b.name, i + 1);
    let list = |v: Vec<String>| v.join(" | ");
    for (what, v) in [
        (
            "listener",
            m.listener.iter().map(|x| x.to_string()).collect(),
        ),
        ("client", m.client.iter().map(|x| x.to_string()).collect()),
        ("sender_domain", m.sender_domain.clone()),
        ("recipient", m.recipient.clone()),
        ("recipient_domain", m.recipient_domain.clone()),
    ] {
        if !v.is_empty() {
            let _ = write!(out, " {what}={}", list(v));
        }
    }
    let on = |off: bool| if off { "skipped" } else { "on" };
    let level = |x: Option<f64>| x.map_or("-".into(), |x| x.to_string());
    let _ = write!(
        out,
        "\n  virus check: {}, spam check: {}\n  spam: tag_level={} tag2_level={} kill_level={} \
         quarantine_level={} subject_tag={:?} action={}\n  actions: virus={} banned={}, \
         banned rules: {}\n  unchecked: on_max_parts={} on_max_decoded_bytes={} \
         on_max_depth={} on_ratio={} on_encrypted={}\n  dkim_sign: {}",
        on(e.clamd.endpoints.is_empty()),
        on(crate::scan::spam_engine(&e).is_none()),
        e.spam.tag_level,
        e.spam.tag2_level,
        e.spam.kill_level,
        level(e.spam.quarantine_level),
        e.spam.subject_tag,
        action(e.spam.action),
        action(e.virus.action),
        action(e.banned.action),
        match (&b.banned.rules, &e.banned.rules) {
            (Some(r), _) => format!("{} of the bank's own", r.len()),
            (None, Some(r)) => format!("{} from [banned]", r.len()),
            (None, None) => "the defaults".into(),
        },
        unchecked(e.parts.on_max_parts),
        unchecked(e.parts.on_max_decoded_bytes),
        unchecked(e.parts.on_max_depth),
        unchecked(e.parts.on_ratio),
        unchecked(e.parts.on_encrypted),
        match (e.dkim_sign.enabled, e.dkim_sign.by_bank) {
            (false, _) => "off ([dkim_sign] enabled = false)",
            (true, Some(true)) => "on (for a From domain with a key)",
            (true, Some(false)) => "off (by this bank)",
            (true, None) => "as [dkim_sign] decides",
        },
    );
    out
}

/// An action as the file writes it.
fn action(a: Action) -> &'static str {
    match a {
        Action::Pass => "pass",
        Action::Discard => "discard",
        Action::Reject => "reject",
        Action::Quarantine => "quarantine",
    }
}

fn unchecked(u: Unchecked) -> &'static str {
    match u {
        Unchecked::Pass => "pass",
        Unchecked::Tempfail => "tempfail",
        Unchecked::Banned => "banned",
        Unchecked::Quarantine => "quarantine",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(t: &str) -> Config {
        Config::parse(t, Path::new("test.toml")).unwrap()
    }

    fn refused(t: &str) -> String {
        Config::parse(t, Path::new("test.toml"))
            .unwrap_err()
            .to_string()
    }

    const BANKS: &str = r#"
[server]
listen = ["127.0.0.1:10024", "127.0.0.1:10026"]

[[policy]]
name = "originating"
match.listener = ["127.0.0.1:10026"]
bypass_spam_checks = true

[[policy]]
name = "partner"
match.client = ["192.0.2.0/24", "2001:db8::/32"]
bypass_spam_checks = true

[[policy]]
name = "strict"
match.recipient_domain = [".strict.example"]
spam.kill_level = 3.0
spam.tag2_level = 2.0
spam.action = "quarantine"

[[policy]]
name = "boss"
match.recipient = ["Boss@Example.com"]
bypass_spam_checks = false
virus.action = "reject"
"#;

    fn ctx<'a>(listener: &str, client: &str, sender: &'a str) -> Context<'a> {
        Context {
            listener: Some(listener.parse().unwrap()),
            client: Some(client.parse().unwrap()),
            sender,
        }
    }

    #[test]
    fn each_kind_of_match() {
        let c = parse(BANKS);
        let inbound = ctx("127.0.0.1:10024", "198.51.100.7", "a@x.example");
        assert_eq!(
            for_recipient(&c, &inbound, "bob@example.com"),
            Vec::<usize>::new()
        );
        let out = ctx("127.0.0.1:10026", "198.51.100.7", "a@x.example");
        assert_eq!(for_recipient(&c, &out, "bob@example.com"), vec![0]);
        let partner = ctx("127.0.0.1:10024", "192.0.2.200", "a@x.example");
        assert_eq!(for_recipient(&c, &partner, "bob@example.com"), vec![1]);
        // IPv4-mapped IPv6 is the IPv4 address.
        let mapped = ctx("127.0.0.1:10024", "::ffff:192.0.2.1", "");
        assert_eq!(for_recipient(&c, &mapped, "x@y.example"), vec![1]);
        assert_eq!(
            for_recipient(&c, &inbound, "ann@mail.STRICT.example"),
            vec![2]
        );
        assert_eq!(for_recipient(&c, &inbound, "ann@strict.example"), vec![2]);
        assert_eq!(
            for_recipient(&c, &inbound, "ann@notstrict.example"),
            Vec::<usize>::new()
        );
        assert_eq!(for_recipient(&c, &partner, "boss@example.COM"), vec![1, 3]);
    }

    #[test]
    fn sender_domain_and_conditions_together() {
        let c = parse(
            r#"
[[policy]]
name = "ours-to-partner"
match.sender_domain = ["example.com"]
match.recipient_domain = ["partner.example"]
spam.subject_tag = "[SPAM] "
"#,
        );
        let ours = Context {
            listener: None,
            client: None,
            sender: "a@EXAMPLE.com",
        };
        let theirs = Context {
            sender: "a@other.example",
            ..ours
        };
        let null = Context { sender: "", ..ours };
        assert_eq!(for_recipient(&c, &ours, "p@partner.example"), vec![0]);
        assert!(for_recipient(&c, &ours, "p@else.example").is_empty());
        assert!(for_recipient(&c, &theirs, "p@partner.example").is_empty());
        assert!(for_recipient(&c, &null, "p@partner.example").is_empty());
    }

    #[test]
    fn later_banks_override_earlier_ones_on_top_of_the_defaults() {
        let c = parse(BANKS);
        let e = effective(&c, &[]);
        assert_eq!(e.spam.kill_level, 6.31);
        assert!(!e.spamd.endpoints.is_empty());
        let e = effective(&c, &[1]);
        assert!(e.spamd.endpoints.is_empty(), "partner bypasses spam");
        assert!(!e.clamd.endpoints.is_empty());
        // boss comes later and says bypass_spam_checks = false: the spam check is back.
        let e = effective(&c, &[1, 3]);
        assert!(!e.spamd.endpoints.is_empty());
        assert_eq!(e.virus.action, Action::Reject);
        let e = effective(&c, &[2]);
        assert_eq!(
            (e.spam.kill_level, e.spam.tag2_level, e.spam.tag_level),
            (3.0, 2.0, -999.0)
        );
        assert_eq!(e.spam.action, Action::Quarantine);
        assert_eq!(e.spam.subject_tag, "***Spam*** ");
        assert!(e.policy.is_empty());
    }

    #[test]
    fn recipients_group_by_their_banks() {
        let c = parse(BANKS);
        let inbound = ctx("127.0.0.1:10024", "198.51.100.7", "a@x.example");
        let g = group(
            &c,
            &inbound,
            [
                "a@example.com",
                "b@strict.example",
                "boss@example.com",
                "c@example.com",
                "d@strict.example",
            ],
        );
        assert_eq!(
            g,
            vec![
                Group {
                    banks: vec![],
                    rcpts: vec![0, 3]
                },
                Group {
                    banks: vec![2],
                    rcpts: vec![1, 4]
                },
                Group {
                    banks: vec![3],
                    rcpts: vec![2]
                },
            ]
        );
        // Message-level banks alone: one group.
        let out = ctx("127.0.0.1:10026", "198.51.100.7", "a@x.example");
        assert_eq!(group(&c, &out, ["a@x", "b@y"]).len(), 1);
        assert_eq!(names(&c, &[0, 2]), "originating,strict");
        assert_eq!(names(&c, &[]), "-");
    }

    #[test]
    fn a_bank_that_cannot_match_is_refused() {
        let e = refused("[[policy]]\nname = \"x\"\nspam.kill_level = 3.0\n");
        assert!(
            e.contains("`policy.match`") && e.contains("bank \"x\""),
            "{e}"
        );
        let e = refused("[[policy]]\nname = \"x\"\nmatch.listener = [\"127.0.0.1:10026\"]\n");
        assert!(
            e.contains("`policy.match.listener`") && e.contains("not in server.listen"),
            "{e}"
        );
        let e = refused("[[policy]]\nname = \"x\"\nmatch.client = [\"10.0.0.0/33\"]\n");
        assert!(e.contains("client") || e.contains("10.0.0.0/33"), "{e}");
        let e = refused("[[policy]]\nmatch.recipient_domain = [\"a.example\"]\n");
        assert!(e.contains("`policy.name`"), "{e}");
        let e = refused(
            "[[policy]]\nname = \"x\"\nmatch.recipient_domain = [\"a.example\"]\n\
             [[policy]]\nname = \"x\"\nmatch.recipient_domain = [\"b.example\"]\n",
        );
        assert!(e.contains("earlier bank"), "{e}");
        let e = refused("[[policy]]\nname = \"x\"\nmatch.recipient_domain = [\"@a.example\"]\n");
        assert!(e.contains("`policy.match.recipient_domain`"), "{e}");
        let e = refused("[[policy]]\nname = \"x\"\nmatch.recipient = [\"nobody\"]\n");
        assert!(e.contains("`policy.match.recipient`"), "{e}");
        let e = refused(
            "[[policy]]\nname = \"x\"\nmatch.recipient = [\"a@b\"]\nspam.tag_level = 9.0\n",
        );
        assert!(e.contains("`policy.spam.tag2_level`"), "{e}");
        let e = refused(
            "[[policy]]\nname = \"x\"\nmatch.recipient = [\"a@b\"]\nspam.kill_levle = 9.0\n",
        );
        assert!(e.contains("kill_levle"), "{e}");
    }

    #[test]
    fn describe_shows_the_effective_settings() {
        let c = parse(BANKS);
        let d = describe(&c, 2);
        assert!(d.starts_with("policy bank \"strict\" (#3):"), "{d}");
        assert!(d.contains("match: recipient_domain=.strict.example"), "{d}");
        assert!(d.contains("kill_level=3 "), "{d}");
        assert!(d.contains("action=quarantine"), "{d}");
        assert!(d.contains("virus=discard"), "{d}");
        let d = describe(&c, 0);
        assert!(d.contains("virus check: on, spam check: skipped"), "{d}");
    }

    #[test]
    fn banks_that_quarantine_open_the_quarantine() {
        let c = parse(BANKS);
        assert!(c.uses_quarantine());
        let c = parse(
            "[[policy]]\nname = \"x\"\nmatch.recipient = [\"a@b\"]\nbypass_spam_checks = true\n",
        );
        assert!(!c.uses_quarantine());
    }

    /// The banks the example file shows, uncommented (with the second listener they need),
    /// parse and mean what their comments say.
    #[test]
    fn example_file_banks_work_uncommented() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("postsift.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text.find("# [[policy]]").expect("example banks");
        let mut out = text[..start].replacen(
            "listen = [\"127.0.0.1:10024\"]",
            "listen = [\"127.0.0.1:10024\", \"127.0.0.1:10026\"]",
            1,
        );
        for line in text[start..].lines() {
            let l = line.strip_prefix("# ").unwrap_or(line);
            let key = l == "[[policy]]" || l.split_once(" = ").is_some();
            out.push_str(if key { l } else { line });
            out.push('\n');
        }
        let c = parse(&out);
        let names: Vec<&str> = c.policy.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["originating", "partner", "strict"]);
        let out = ctx("127.0.0.1:10026", "127.0.0.1", "me@example.com");
        assert_eq!(for_recipient(&c, &out, "x@example.net"), vec![0]);
        let partner = ctx("127.0.0.1:10024", "2001:db8:42::1", "p@partner.example");
        assert_eq!(
            for_recipient(&c, &partner, "ann@finance.example.com"),
            vec![1, 2]
        );
        let e = effective(&c, &[1, 2]);
        assert!(e.spamd.endpoints.is_empty());
        assert_eq!(e.spam.action, Action::Quarantine);
    }

    #[test]
    fn bank_metric_shows_every_configured_bank_from_the_start() {
        let c = parse(BANKS);
        let m = crate::runtime::Metrics::new();
        m.filter
            .declare_banks(c.policy.iter().map(|b| b.name.as_str()));
        m.filter.bank("strict");
        let text = m.encode();
        assert!(
            text.contains("postsift_policy_bank_total{bank=\"originating\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("postsift_policy_bank_total{bank=\"strict\"} 1"),
            "{text}"
        );
    }
}
