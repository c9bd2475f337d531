//! postgrey's whitelist files, read with postgrey's rules: for clients, `/regexp/` on the
//! client name, IPv4 addresses (whole, `a.b.c` as a /24, or with a /mask), IPv6 addresses and
//! networks, and domains (the name or any name under it); for recipients, `/regexp/`,
//! `user@domain`, `user@` and `domain` (each also matching `user+extension`). Comments start
//! with `#`; a missing file is skipped with a warning (silently for `*.local`), as in postgrey;
//! an unreadable one is an error.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use regex::{Regex, RegexBuilder};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Both lists, compiled. Lines postgrey would warn about are skipped with a warning.
#[derive(Debug, Default)]
pub struct Whitelists {
    client_names: Vec<NameRule>,
    client_nets: Vec<IpNet>,
    recipients: Vec<RecipientRule>,
}

#[derive(Debug)]
enum NameRule {
    /// The name itself or any name under it (lower-case).
    Domain(String),
    Regex(Regex),
}

#[derive(Debug)]
enum RecipientRule {
    /// `user@domain` (`domain` `Some`) or `user@` (`None`), lower-case.
    User(String, Option<String>),
    /// `@domain` or `.domain` at the end.
    Domain(String),
    Regex(Regex),
}

fn regex(re: &str, file: &Path, line: usize) -> Option<Regex> {
    RegexBuilder::new(re)
        .case_insensitive(true)
        .build()
        .map_err(|e| {
            tracing::warn!(file = %file.display(), line, error = %e, "whitelist: regexp skipped");
        })
        .ok()
}

/// The meaningful lines of a file: comments and blanks gone, trimmed, with line numbers.
fn lines(path: &Path) -> Result<Vec<(usize, String)>, Error> {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        // As postgrey: a missing file is a warning (none for `*.local`), not a refusal to start.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if path.extension().is_none_or(|x| x != "local") {
                tracing::warn!(file = %path.display(), "greylist whitelist file missing; skipped");
            }
            return Ok(Vec::new());
        }
        Err(source) => {
            return Err(Error::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    Ok(text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.split('#').next().unwrap_or("").trim();
            (!l.is_empty()).then(|| (i + 1, l.to_owned()))
        })
        .collect())
}

fn is_regex_line(l: &str) -> Option<&str> {
    let inner = l.strip_prefix('/')?.strip_suffix('/')?;
    (!inner.is_empty() && !inner.contains(char::is_whitespace)).then_some(inner)
}

fn parse_ipv4(l: &str) -> Option<IpNet> {
    let (addr, mask) = match l.split_once('/') {
        Some((a, m)) => (a, Some(m.parse::<u8>().ok()?)),
        None => (l, None),
    };
    let parts: Vec<&str> = addr.split('.').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let octets: Vec<u8> = parts
        .iter()
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (ip, prefix) = match (octets.len(), mask) {
        (4, m) => (
            [octets[0], octets[1], octets[2], octets[3]],
            m.unwrap_or(32),
        ),
        (3, None) => ([octets[0], octets[1], octets[2], 0], 24),
        // postgrey's comment says /16 (its code makes a /24 of a mis-parsed address).
        (2, None) => ([octets[0], octets[1], 0, 0], 16),
        _ => return None,
    };
    IpNet::new(IpAddr::from(ip), prefix).ok().map(|n| n.trunc())
}

impl Whitelists {
    pub fn load(clients: &[PathBuf], recipients: &[PathBuf]) -> Result<Whitelists, Error> {
        let mut w = Whitelists::default();
        for f in clients {
            for (n, l) in lines(f)? {
                if let Some(re) = is_regex_line(&l) {
                    w.client_names.extend(regex(re, f, n).map(NameRule::Regex));
                } else if let Some(net) = parse_ipv4(&l) {
                    w.client_nets.push(net);
                } else if l.matches(':').count() >= 2 {
                    match l
                        .parse::<IpNet>()
                        .ok()
                        .or_else(|| l.parse::<IpAddr>().ok().map(IpNet::from))
                    {
                        Some(net) => w.client_nets.push(net.trunc()),
                        None => {
                            tracing::warn!(file = %f.display(), line = n, "whitelist: not an address")
                        }
                    }
                } else if !l.contains(char::is_whitespace) {
                    w.client_names.push(NameRule::Domain(l.to_lowercase()));
                } else {
                    tracing::warn!(file = %f.display(), line = n, "whitelist: doesn't look like a hostname");
                }
            }
        }
        for f in recipients {
            for (n, l) in lines(f)? {
                if let Some(re) = is_regex_line(&l) {
                    w.recipients
                        .extend(regex(re, f, n).map(RecipientRule::Regex));
                } else if l.contains(char::is_whitespace) {
                    tracing::warn!(file = %f.display(), line = n, "whitelist: doesn't look like an address");
                } else if let Some((user, domain)) = l.split_once('@') {
                    let domain = (!domain.is_empty()).then(|| domain.to_lowercase());
                    w.recipients
                        .push(RecipientRule::User(user.to_lowercase(), domain));
                } else {
                    w.recipients.push(RecipientRule::Domain(l.to_lowercase()));
                }
            }
        }
        Ok(w)
    }

    /// Entries loaded: (client rules, recipient rules).
    pub fn len(&self) -> (usize, usize) {
        (
            self.client_names.len() + self.client_nets.len(),
            self.recipients.len(),
        )
    }

    pub fn client(&self, name: &str, ip: Option<IpAddr>) -> bool {
        let lower = name.to_lowercase();
        let by_name = self.client_names.iter().any(|r| match r {
            NameRule::Domain(d) => lower
                .strip_suffix(d.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.ends_with('.')),
            NameRule::Regex(re) => re.is_match(name),
        });
        by_name
            || ip.is_some_and(|ip| {
                let ip = ip.to_canonical();
                self.client_nets.iter().any(|n| n.contains(&ip))
            })
    }

    pub fn recipient(&self, rcpt: &str) -> bool {
        let lower = rcpt.to_lowercase();
        self.recipients.iter().any(|r| match r {
            RecipientRule::Regex(re) => re.is_match(rcpt),
            RecipientRule::Domain(d) => lower
                .strip_suffix(d.as_str())
                .is_some_and(|rest| rest.ends_with('@') || rest.ends_with('.')),
            RecipientRule::User(user, domain) => {
                let Some((u, dom)) = lower.split_once('@') else {
                    return false;
                };
                // `user` or `user+extension`
                let u_ok = u.strip_prefix(user.as_str()).is_some_and(|rest| {
                    rest.is_empty() || (rest.len() > 1 && rest.starts_with('+'))
                });
                u_ok && domain.as_ref().is_none_or(|d| d == dom)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(clients: &str, recipients: &str) -> Whitelists {
        let dir = tempfile::tempdir().unwrap();
        let (c, r) = (dir.path().join("c"), dir.path().join("r"));
        std::fs::write(&c, clients).unwrap();
        std::fs::write(&r, recipients).unwrap();
        let missing = dir.path().join("whitelist_clients.local");
        Whitelists::load(&[c, missing], &[r]).unwrap()
    }

    #[test]
    fn client_rules() {
        let w = lists(
            "# comment\nexample.org\n/^mx[0-9]+\\.example\\.net$/\n192.0.2.7\n198.51.100\n10.1\n2001:db8::/32\n203.0.113.0/28 # net\n",
            "",
        );
        assert!(w.client("example.org", None));
        assert!(w.client("MX.Example.ORG", None));
        assert!(!w.client("badexample.org", None));
        assert!(w.client("mx12.example.net", None));
        assert!(!w.client("mx.example.net", None));
        let ip = |s: &str| Some(s.parse().unwrap());
        assert!(w.client("unknown", ip("192.0.2.7")));
        assert!(!w.client("unknown", ip("192.0.2.8")));
        assert!(w.client("unknown", ip("198.51.100.200")));
        assert!(w.client("unknown", ip("10.1.2.3")));
        assert!(w.client("unknown", ip("2001:db8:5::1")));
        assert!(w.client("unknown", ip("203.0.113.15")));
        assert!(!w.client("unknown", ip("203.0.113.16")));
        assert!(w.client("unknown", ip("::ffff:192.0.2.7")));
    }

    #[test]
    fn recipient_rules() {
        let w = lists(
            "",
            "postmaster@\nabuse@example.com\nexample.org\n/^list-.*@example\\.net$/\n",
        );
        assert!(w.recipient("postmaster@anything.test"));
        assert!(w.recipient("Postmaster+tag@anything.test"));
        assert!(!w.recipient("postmasterx@anything.test"));
        assert!(w.recipient("abuse@example.com"));
        assert!(!w.recipient("abuse@example.co"));
        assert!(w.recipient("anyone@example.org"));
        assert!(w.recipient("anyone@sub.example.org"));
        assert!(!w.recipient("anyone@badexample.org"));
        assert!(w.recipient("list-foo@example.net"));
    }

    #[test]
    fn debians_files_load() {
        let dir = Path::new("/etc/postgrey");
        if !dir.exists() {
            return;
        }
        let w = Whitelists::load(
            &[
                dir.join("whitelist_clients"),
                dir.join("whitelist_clients.local"),
            ],
            &[dir.join("whitelist_recipients")],
        )
        .unwrap();
        assert!(w.len().0 > 100 && w.len().1 >= 2, "{:?}", w.len());
        assert!(w.client("lists.debian.org", None));
        assert!(w.recipient("postmaster@example.com"));
    }
}
