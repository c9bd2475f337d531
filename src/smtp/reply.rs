//! SMTP replies: a `Reply` value (code, enhanced status code, text), its wire form, and the
//! named replies the filter gives, worded as amavisd-new words them where Postfix or a mail
//! administrator's habits depend on it.

use std::fmt;

use crate::filter::Outcome;
use crate::policy::{Category, Tempfail};
use crate::reinject::{bracketed, Delivery, Fault, RcptResult, Upstream};

/// One SMTP reply. `text` may hold several lines separated by `\n`; each goes out as its own
/// reply line with the same code and enhanced code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<&'static str>,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    /// A reply whose text already carries its enhanced code (relayed from another server).
    pub fn raw(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            text: text.into(),
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// "2xx", "4xx" or "5xx", for metrics.
    pub fn class(&self) -> &'static str {
        match self.code {
            200..=399 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        }
    }

    /// Appends the wire form (CRLF-terminated lines) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        if lines.peek().is_none() {
            lines = "".split('\n').peekable();
        }
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            let line = wire_line(line.trim_end_matches('\r'));
            let _ = match self.enhanced {
                Some(e) => {
                    use std::io::Write;
                    write!(out, "{}{}{} {}\r\n", self.code, sep, e, line)
                }
                None => {
                    use std::io::Write;
                    write!(out, "{}{}{}\r\n", self.code, sep, line)
                }
            };
        }
    }
}

/// Bytes of one reply line's text at most (RFC 5321 4.5.3.1.5: 512 octets with the code and
/// CRLF).
const MAX_LINE: usize = 480;

/// The last guard before the wire: a control character left in a line (a relayed reply) is
/// `?`, and a line is cut at [`MAX_LINE`] bytes, on a character boundary (counted in bytes, not
/// characters: 480 two-byte letters are 960 octets). Values from outside are escaped and capped
/// where the text is built ([`crate::escape`]); this only keeps the protocol intact.
fn wire_line(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= MAX_LINE && !line.chars().any(char::is_control) {
        return line.into();
    }
    let mut out = String::with_capacity(MAX_LINE);
    for c in line.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > MAX_LINE {
            break;
        }
        out.push(c);
    }
    out.into()
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text.replace('\n', " / ")),
            None => write!(f, "{} {}", self.code, self.text.replace('\n', " / ")),
        }
    }
}

pub fn ok() -> Reply {
    Reply::new(250, "2.0.0", "Ok")
}
pub fn sender_ok() -> Reply {
    Reply::new(250, "2.1.0", "Sender Ok")
}
pub fn recipient_ok() -> Reply {
    Reply::new(250, "2.1.5", "Recipient Ok")
}
pub fn start_data() -> Reply {
    Reply::raw(354, "End data with <CR><LF>.<CR><LF>")
}
pub fn bye() -> Reply {
    Reply::new(221, "2.0.0", "Bye")
}
pub fn shutting_down() -> Reply {
    Reply::new(421, "4.3.2", "Service shutting down, closing channel")
}
pub fn too_busy() -> Reply {
    Reply::new(421, "4.3.2", "Too many sessions, try again later")
}
pub fn access_denied() -> Reply {
    Reply::new(554, "5.7.1", "Access denied")
}
pub fn timeout() -> Reply {
    Reply::new(421, "4.4.2", "Timeout exceeded, closing channel")
}
pub fn too_many_errors() -> Reply {
    Reply::new(421, "4.7.0", "Too many errors, closing channel")
}
pub fn too_many_junk_commands() -> Reply {
    Reply::new(
        421,
        "4.7.0",
        "Too many commands without a message, closing channel",
    )
}
pub fn line_too_long() -> Reply {
    Reply::new(500, "5.5.2", "Line too long")
}
pub fn bad_sequence(text: &str) -> Reply {
    Reply::new(503, "5.5.1", text)
}
pub fn syntax(text: &str) -> Reply {
    Reply::new(501, "5.5.4", text)
}
pub fn unknown_command() -> Reply {
    Reply::new(500, "5.5.2", "Error: command not recognized")
}
pub fn not_implemented(verb: &str) -> Reply {
    Reply::new(502, "5.5.1", format!("{verb} not implemented"))
}
pub fn too_many_recipients() -> Reply {
    Reply::new(452, "4.5.3", "Too many recipients")
}
pub fn message_too_big() -> Reply {
    Reply::new(552, "5.3.4", "Message size exceeds fixed limit")
}
pub fn needs_smtputf8() -> Reply {
    Reply::new(
        553,
        "5.6.7",
        "Must declare SMTPUTF8 to send unicode address",
    )
}
pub fn header_too_big() -> Reply {
    Reply::new(552, "5.3.4", "Message header section exceeds fixed limit")
}
pub fn local_error(id: &str, what: &str) -> Reply {
    Reply::new(
        451,
        "4.3.0",
        format!("Error in processing, id={id}, {what}"),
    )
}
pub fn no_space(id: &str) -> Reply {
    Reply::new(
        452,
        "4.3.1",
        format!("Insufficient system storage, id={id}"),
    )
}

/// The replies for a processed message: one per recipient (`per_recipient`, LMTP) or one for
/// the message (SMTP). The one place where the pipeline's typed outcome becomes SMTP text.
pub fn for_outcome(id: &str, outcome: &Outcome, per_recipient: bool, n: usize) -> Vec<Reply> {
    let same = |r: Reply| if per_recipient { vec![r; n] } else { vec![r] };
    match outcome {
        Outcome::Discarded(c) => same(Reply::new(
            250,
            "2.7.0",
            format!("Ok, discarded, id={id} - {}", category_text(c)),
        )),
        Outcome::Quarantined(c) => same(Reply::new(
            250,
            "2.7.0",
            format!("Ok, quarantined, id={id} - {}", category_text(c)),
        )),
        Outcome::Rejected(Category::DmarcReject { domain }) => same(Reply::new(
            550,
            "5.7.1",
            format!(
                "Rejected by DMARC policy for {}, id={id}: the From domain asks receivers \
                 to reject mail that fails DMARC",
                one_line(domain)
            ),
        )),
        Outcome::Rejected(c) => same(Reply::new(
            554,
            "5.7.0",
            format!("Reject, id={id} - {}", category_text(c)),
        )),
        Outcome::Tempfailed(t) => same(tempfailed(id, t)),
        Outcome::HeaderTooBig => same(header_too_big()),
        Outcome::Split { groups, lead } => {
            let id_of = |g: &crate::filter::GroupOutcome| g.id.clone().unwrap_or_else(|| id.into());
            if !per_recipient {
                let g = &groups[*lead];
                return for_outcome(&id_of(g), &g.outcome, false, n);
            }
            let mut out = vec![None; n];
            for g in groups {
                let replies = for_outcome(&id_of(g), &g.outcome, true, g.rcpts.len());
                for (&i, r) in g.rcpts.iter().zip(replies) {
                    if let Some(slot) = out.get_mut(i) {
                        *slot = Some(r);
                    }
                }
            }
            out.into_iter()
                .map(|r| r.unwrap_or_else(|| Reply::new(451, "4.3.0", "Error in processing")))
                .collect()
        }
        Outcome::Delivered(d) if per_recipient => d.rcpts.iter().map(|r| recipient(d, r)).collect(),
        Outcome::Delivered(d) => vec![overall(d)],
    }
}

/// A value from outside (a file name, a domain, a peer's error) in a reply: escaped and capped
/// ([`crate::escape`]), so it stays on its line and the line stays short.
fn one_line(s: &str) -> String {
    crate::escape::text(s)
}

/// How a category is named in a reply, as amavis names it.
fn category_text(c: &Category) -> String {
    match c {
        Category::Virus(names) => format!("INFECTED: {}", one_line(&names.join(", "))),
        Category::Banned { name, .. } => format!("BANNED: {}", one_line(name)),
        Category::Spam => "spam".into(),
        Category::Unchecked => "UNCHECKED".into(),
        Category::DmarcReject { domain } => format!("DMARC reject: {}", one_line(domain)),
        Category::Clean => "CLEAN".into(),
    }
}

fn tempfailed(id: &str, t: &Tempfail) -> Reply {
    match t {
        Tempfail::VirusScan(why) => Reply::new(
            451,
            "4.5.0",
            format!(
                "Error in processing, id={id}, virus_scan FAILED: {}",
                one_line(why)
            ),
        ),
        Tempfail::SpamScan(why) => Reply::new(
            451,
            "4.5.0",
            format!(
                "Error in processing, id={id}, spam_scan FAILED: {}",
                one_line(why)
            ),
        ),
        Tempfail::Greylist(what) => Reply::new(
            451,
            "4.7.1",
            format!("Try again later, id={id} - rspamd: {}", one_line(what)),
        ),
        Tempfail::Unchecked(why) => Reply::new(
            451,
            "4.7.0",
            format!("Try again later, id={id} - UNCHECKED: {}", one_line(why)),
        ),
        Tempfail::Resources(why) => Reply::new(
            452,
            "4.3.1",
            format!("Insufficient system resources, id={id} - {why}"),
        ),
        Tempfail::Quarantine(why) => Reply::new(
            451,
            "4.3.0",
            format!(
                "Error in processing, id={id}, quarantine FAILED: {}",
                one_line(why)
            ),
        ),
        Tempfail::Sign(why) => Reply::new(
            451,
            "4.3.0",
            format!(
                "Error in processing, id={id}, dkim_sign FAILED: {}",
                one_line(why)
            ),
        ),
    }
}

/// The next hop's own reply, passed through.
fn upstream(u: &Upstream) -> Reply {
    Reply::raw(u.code, u.text.clone())
}

fn fault(f: &Fault) -> Reply {
    match f {
        Fault::Connect { to, detail } => Reply::new(
            450,
            "4.4.1",
            format!("Can't connect to {to}: {}", one_line(detail)),
        ),
        Fault::Timeout { to, stage } => {
            Reply::new(450, "4.4.2", format!("Timed out during {stage} to {to}"))
        }
        Fault::Lost { stage, detail } => Reply::new(
            451,
            "4.4.2",
            format!("Lost connection during {stage}: {}", one_line(detail)),
        ),
        Fault::Spool { detail } => Reply::new(
            451,
            "4.3.0",
            format!(
                "Error in processing: reading the spool: {}",
                one_line(detail)
            ),
        ),
    }
}

fn recipient(d: &Delivery, r: &RcptResult) -> Reply {
    match r {
        RcptResult::Accepted => relayed(d),
        RcptResult::Refused(u) => upstream(u),
        RcptResult::Withheld => Reply::new(
            450,
            "4.5.3",
            "Not delivered: other recipients of this message were refused; retry",
        ),
        RcptResult::Failed(f) => fault(f),
    }
}

/// amavis's `250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok: queued as X`.
fn relayed(d: &Delivery) -> Reply {
    let next = d
        .accepted
        .as_ref()
        .map_or_else(|| "250".to_string(), Upstream::one_line);
    Reply::new(
        250,
        "2.0.0",
        format!("from MTA(smtp:{}): {next}", bracketed(&d.to)),
    )
}

/// The one reply an SMTP client gets: 2xx only when every recipient was accepted; the common
/// 5xx when every recipient was refused for good; otherwise a 4xx (a permanent refusal of some
/// recipients is turned into a retry, since the others were not delivered either).
fn overall(d: &Delivery) -> Reply {
    if d.all_accepted() {
        return relayed(d);
    }
    let all_perm = d
        .rcpts
        .iter()
        .all(|r| matches!(r, RcptResult::Refused(u) if u.code >= 500));
    let first = d
        .rcpts
        .iter()
        .find(|r| !matches!(r, RcptResult::Accepted | RcptResult::Withheld))
        .map_or_else(|| recipient(d, &RcptResult::Withheld), |r| recipient(d, r));
    if all_perm || first.is_transient() {
        return first;
    }
    Reply::new(
        450,
        "4.5.3",
        format!(
            "Some recipients refused by the next hop ({} {}); retry",
            first.code,
            first.text.replace('\n', " ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_without_decoder_memory_is_452_4_3_1() {
        let r = tempfailed("ID", &Tempfail::Resources("busy".into()));
        assert_eq!((r.code, r.enhanced), (452, Some("4.3.1")), "{r:?}");
        assert!(r.text.contains("id=ID - busy"), "{r:?}");
    }

    fn wire(r: &Reply) -> String {
        let mut v = Vec::new();
        r.write_to(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn a_failed_dkim_signature_is_a_tempfail_naming_it() {
        let o = Outcome::Tempfailed(Tempfail::Sign("spool unreadable".into()));
        let r = for_outcome("abc", &o, false, 1);
        assert_eq!(
            wire(&r[0]),
            "451 4.3.0 Error in processing, id=abc, dkim_sign FAILED: spool unreadable\r\n"
        );
    }

    #[test]
    fn a_line_of_wide_letters_is_cut_in_bytes_on_a_character_boundary() {
        for letter in ["\u{a1}", "\u{65e5}", "\u{1f600}"] {
            let r = Reply::new(554, "5.7.0", letter.repeat(400));
            let w = wire(&r);
            assert!(w.len() <= 512, "{} octets", w.len());
            assert!(w.ends_with("\r\n") && w.starts_with("554 5.7.0 "), "{w:?}");
        }
    }

    #[test]
    fn single_and_multi_line() {
        assert_eq!(wire(&ok()), "250 2.0.0 Ok\r\n");
        let r = Reply::raw(250, "mx\nPIPELINING\nSIZE 10");
        assert_eq!(wire(&r), "250-mx\r\n250-PIPELINING\r\n250 SIZE 10\r\n");
        assert_eq!(wire(&Reply::raw(354, "")), "354 \r\n");
    }

    /// Recipients decided apart get their own group's reply over LMTP, in RCPT order; over
    /// SMTP the lead group's reply stands for all.
    #[test]
    fn split_outcome_replies_per_group() {
        use crate::filter::GroupOutcome;
        let split = Outcome::Split {
            groups: vec![
                GroupOutcome {
                    rcpts: vec![0, 2],
                    outcome: Outcome::Quarantined(Category::Spam),
                    id: None,
                },
                GroupOutcome {
                    rcpts: vec![1],
                    outcome: Outcome::Quarantined(Category::Spam),
                    id: Some("abc-2".into()),
                },
                GroupOutcome {
                    rcpts: vec![3],
                    outcome: Outcome::Rejected(Category::Spam),
                    id: None,
                },
            ],
            lead: 2,
        };
        let r: Vec<String> = for_outcome("abc", &split, true, 4)
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert!(r[0].contains("quarantined, id=abc -"), "{r:?}");
        assert!(r[1].contains("quarantined, id=abc-2 -"), "{r:?}");
        assert!(r[2].contains("quarantined, id=abc -"), "{r:?}");
        assert!(r[3].starts_with("554 5.7.0 Reject, id=abc"), "{r:?}");
        let one = for_outcome("abc", &split, false, 4);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].code, 554);
    }
}
