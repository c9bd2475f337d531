//! postgrey 1.37's decision, as a pure function of the stored state and the time: the triplet
//! key (client net / normalised sender / recipient), the greylisting rule, and the client
//! auto-whitelist. The stores call [`decide`] inside one transaction (the embedded store) or
//! mirror it in one server-side script (Redis), so a decision never races another one.

use std::net::IpAddr;

use ipnet::IpNet;

/// The timings and the auto-whitelist threshold, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub delay: i64,
    pub max_age: i64,
    pub retry_window: i64,
    /// Passes before a client is auto-whitelisted; 0 switches the auto-whitelist off.
    pub awl_clients: u32,
}

/// The timings in seconds, from `[greylist]`.
impl From<&crate::config::Greylist> for Params {
    fn from(g: &crate::config::Greylist) -> Params {
        Params {
            delay: g.delay as i64,
            max_age: (g.max_age * 86400) as i64,
            retry_window: g.retry_window.seconds().unwrap_or(2 * 86400) as i64,
            awl_clients: g.auto_whitelist_clients,
        }
    }
}

/// A triplet's record: first seen (the start of the wait), last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Triplet {
    pub first: i64,
    pub last: i64,
}

/// A client's auto-whitelist record: counted passes (at most one an hour), last counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub count: u32,
    pub last: i64,
}

/// What the store's state says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The client passed `awl_clients` times already: no greylisting.
    AutoWhitelisted,
    /// First seen now: wait `remaining` seconds.
    New { remaining: i64 },
    /// Retried before the delay was over.
    Early { remaining: i64 },
    /// The delay is over. `delayed` is set on the first pass only: the seconds it waited (the
    /// X-Greylist header's number).
    Passed { delayed: Option<i64> },
}

/// What to write back: `None` leaves the record alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update {
    pub triplet: Option<Triplet>,
    pub client: Option<Client>,
}

/// A record past its useful life: postgrey's nightly purge deletes it; here it reads as gone
/// at once (the only difference: a passed triplet unseen for `max_age` is new again now rather
/// than after the next night).
pub fn triplet_expired(p: &Params, t: &Triplet, now: i64) -> bool {
    now - t.last > p.max_age || (t.last - t.first < p.delay && now - t.last > p.retry_window)
}

pub fn client_expired(p: &Params, c: &Client, now: i64) -> bool {
    now - c.last > p.max_age
}

/// postgrey's `smtpd_access_policy` from the auto-whitelist lookup on.
pub fn decide(
    p: &Params,
    now: i64,
    triplet: Option<Triplet>,
    client: Option<Client>,
) -> (Outcome, Update) {
    let triplet = triplet.filter(|t| !triplet_expired(p, t, now));
    let client = client.filter(|c| !client_expired(p, c, now));
    if p.awl_clients > 0 {
        if let Some(c) = client.filter(|c| c.count >= p.awl_clients) {
            // Counted once an hour "for statistics", which also keeps it from expiring.
            let client = (now >= c.last + 3600 || c.last > now).then_some(Client {
                count: c.count + 1,
                last: now,
            });
            let update = Update {
                triplet: None,
                client,
            };
            return (Outcome::AutoWhitelisted, update);
        }
    }
    let (first, last_passed) = match triplet {
        Some(t) => {
            let passed = t.last - t.first >= p.delay;
            let mut first = t.first;
            if !passed && now - first > p.retry_window {
                first = now;
            }
            // A first-seen time in the future (a clock stepped back) is corrected to now.
            (first.min(now), passed)
        }
        None => (now, false),
    };
    let remaining = p.delay - (now - first);
    let mut update = Update {
        triplet: Some(Triplet { first, last: now }),
        client: None,
    };
    if p.awl_clients > 0 && remaining <= 0 && !last_passed {
        match client {
            Some(c) if now < c.last + 3600 => {}
            c => {
                update.client = Some(Client {
                    count: c.map_or(0, |c| c.count) + 1,
                    last: now,
                })
            }
        }
    }
    let outcome = if remaining > 0 {
        if now != first {
            Outcome::Early { remaining }
        } else {
            Outcome::New { remaining }
        }
    } else {
        Outcome::Passed {
            delayed: (!last_passed).then_some(now - first),
        }
    };
    (outcome, update)
}

/// postgrey's `do_sender_substitutions`: BATV `prvs=` tags removed, the address extension
/// (`+…`) stripped, every whole number replaced by `#` (VERP). The caller lower-cases the key.
pub fn normalise_sender(addr: &str) -> String {
    let Some((user, domain)) = addr.split_once('@') else {
        return addr.to_owned();
    };
    let mut user = user.to_owned();
    if user.starts_with("prvs=") {
        // Perl's split drops trailing empty fields.
        let mut a: Vec<&str> = user.split('=').collect();
        while a.last() == Some(&"") {
            a.pop();
        }
        if a.len() == 3 {
            let tag = |s: &str| {
                s.len() >= 10
                    && s.as_bytes()[..10]
                        .iter()
                        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
            };
            user = if tag(a[1]) && !tag(a[2]) {
                a[2].to_owned()
            } else if tag(a[2]) && !tag(a[1]) {
                a[1].to_owned()
            } else {
                a[2].to_owned()
            };
        }
    }
    if let Some(i) = user.find('+') {
        user.truncate(i);
    }
    format!("{}@{domain}", replace_numbers(&user))
}

/// Perl's `s/\b\d+\b/#/g`: a run of digits with no word character on either side.
fn replace_numbers(s: &str) -> String {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() && (i == 0 || !word(chars[i - 1])) {
            let mut j = i;
            while j < chars.len() && chars[j].is_ascii_digit() {
                j += 1;
            }
            if j == chars.len() || !word(chars[j]) {
                out.push('#');
                i = j;
                continue;
            }
            out.extend(&chars[i..j]);
            i = j;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// The client part of the key: the /24 (IPv4) or /64 (IPv6) network address, or the address
/// itself with `by_subnet` false.
pub fn client_net(ip: IpAddr, by_subnet: bool) -> String {
    let ip = ip.to_canonical();
    if !by_subnet {
        return ip.to_string();
    }
    let prefix = if ip.is_ipv4() { 24 } else { 64 };
    IpNet::new(ip, prefix)
        .map(|n| n.network().to_string())
        .unwrap_or_else(|_| ip.to_string())
}

/// `client_net/sender/recipient`, lower-cased.
pub fn triplet_key(client_net: &str, sender: &str, recipient: &str) -> String {
    format!("{client_net}/{}/{recipient}", normalise_sender(sender)).to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Params = Params {
        delay: 300,
        max_age: 35 * 86400,
        retry_window: 2 * 86400,
        awl_clients: 5,
    };

    #[test]
    fn senders_are_normalised_as_postgrey_does() {
        for (from, to) in [
            ("user+ext@example.com", "user@example.com"),
            ("prvs=1234567890=user@example.com", "user@example.com"),
            ("prvs=user=1234abcdef@example.com", "user@example.com"),
            ("bounce-123-456@lists.example", "bounce-#-#@lists.example"),
            ("user123@example.com", "user123@example.com"),
            ("12345@example.com", "#@example.com"),
            ("a.1.b@x", "a.#.b@x"),
            ("", ""),
            ("nodomain", "nodomain"),
        ] {
            assert_eq!(normalise_sender(from), to, "{from}");
        }
    }

    #[test]
    fn client_nets() {
        assert_eq!(client_net("192.0.2.77".parse().unwrap(), true), "192.0.2.0");
        assert_eq!(
            client_net("2001:db8:1:2:3::4".parse().unwrap(), true),
            "2001:db8:1:2::"
        );
        assert_eq!(
            client_net("192.0.2.77".parse().unwrap(), false),
            "192.0.2.77"
        );
        assert_eq!(
            triplet_key("192.0.2.0", "Foo+x@EXAMPLE.com", "Bar@Example.org"),
            "192.0.2.0/foo@example.com/bar@example.org"
        );
    }

    #[test]
    fn new_early_passed_then_quiet() {
        let (o, u) = decide(&P, 1000, None, None);
        assert_eq!(o, Outcome::New { remaining: 300 });
        let t = u.triplet.unwrap();
        let (o, u) = decide(&P, 1100, Some(t), None);
        assert_eq!(o, Outcome::Early { remaining: 200 });
        let t = u.triplet.unwrap();
        assert_eq!(
            t,
            Triplet {
                first: 1000,
                last: 1100
            }
        );
        let (o, u) = decide(&P, 1400, Some(t), None);
        assert_eq!(o, Outcome::Passed { delayed: Some(400) });
        assert_eq!(
            u.client,
            Some(Client {
                count: 1,
                last: 1400
            })
        );
        let (o, _) = decide(&P, 1500, u.triplet, u.client);
        assert_eq!(o, Outcome::Passed { delayed: None });
    }

    #[test]
    fn retry_after_the_window_starts_over_and_max_age_expires() {
        let t = Triplet { first: 0, last: 10 };
        let (o, _) = decide(&P, 10 + P.retry_window + 1, Some(t), None);
        assert_eq!(o, Outcome::New { remaining: 300 });
        let passed = Triplet {
            first: 0,
            last: 400,
        };
        let (o, _) = decide(&P, 400 + P.max_age, Some(passed), None);
        assert_eq!(o, Outcome::Passed { delayed: None });
        let (o, _) = decide(&P, 401 + P.max_age, Some(passed), None);
        assert_eq!(o, Outcome::New { remaining: 300 });
    }

    #[test]
    fn auto_whitelist_counts_once_an_hour() {
        let c = Client { count: 4, last: 0 };
        let t = Triplet { first: 0, last: 0 };
        // Within the hour: not counted.
        let (_, u) = decide(&P, 400, Some(t), Some(c));
        assert_eq!(u.client, None);
        let (_, u) = decide(&P, 3600, Some(t), Some(c));
        assert_eq!(
            u.client,
            Some(Client {
                count: 5,
                last: 3600
            })
        );
        let (o, u) = decide(&P, 3700, None, u.client);
        assert_eq!(o, Outcome::AutoWhitelisted);
        assert_eq!(
            u,
            Update {
                triplet: None,
                client: None
            }
        );
        let off = Params {
            awl_clients: 0,
            ..P
        };
        let (o, _) = decide(&off, 3700, None, Some(Client { count: 9, last: 0 }));
        assert_eq!(o, Outcome::New { remaining: 300 });
    }
}
