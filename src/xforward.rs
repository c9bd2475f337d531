//! Postfix's XFORWARD extension, both sides: parsing the command Postfix sends us (smtp-proto
//! does not know it) and formatting the commands we send to the reinjection server, so that its
//! logs and its `Received:` line name the original client rather than postsift.

use std::fmt::Write;

/// The attributes postsift advertises and forwards.
pub const ATTRIBUTES: &[&str] = &["NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE"];

/// The EHLO keyword line.
pub const EHLO_LINE: &str = "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE";

/// Longest XFORWARD command line Postfix will take (`xforward` limit is 512, see XFORWARD_README).
const MAX_COMMAND: usize = 512;
/// Longest value of one attribute.
const MAX_VALUE: usize = 255;

/// The original client's attributes, as Postfix forwarded them. `None` = never sent;
/// `Some("[UNAVAILABLE]")` is kept as is, so it can be forwarded again as Postfix sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Attrs {
    pub name: Option<String>,
    pub addr: Option<String>,
    pub port: Option<String>,
    pub proto: Option<String>,
    pub helo: Option<String>,
    pub ident: Option<String>,
    pub source: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("Bad XFORWARD command syntax")]
    Syntax,
    #[error("Bad XFORWARD attribute name: {0}")]
    UnknownAttribute(String),
    #[error("Bad XFORWARD attribute value")]
    BadValue,
}

impl Attrs {
    fn slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        Some(match name.to_ascii_uppercase().as_str() {
            "NAME" => &mut self.name,
            "ADDR" => &mut self.addr,
            "PORT" => &mut self.port,
            "PROTO" => &mut self.proto,
            "HELO" => &mut self.helo,
            "IDENT" => &mut self.ident,
            "SOURCE" => &mut self.source,
            _ => return None,
        })
    }

    fn get(&self, name: &str) -> Option<&str> {
        match name {
            "NAME" => self.name.as_deref(),
            "ADDR" => self.addr.as_deref(),
            "PORT" => self.port.as_deref(),
            "PROTO" => self.proto.as_deref(),
            "HELO" => self.helo.as_deref(),
            "IDENT" => self.ident.as_deref(),
            "SOURCE" => self.source.as_deref(),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Attrs::default()
    }

    /// Applies the arguments of one `XFORWARD` command (everything after the verb). Nothing is
    /// changed if any attribute is bad, so a rejected command leaves no half-applied state.
    pub fn apply(&mut self, args: &str) -> Result<(), Error> {
        let args = args.trim();
        if args.is_empty() {
            return Err(Error::Syntax);
        }
        let mut next = self.clone();
        for pair in args.split_ascii_whitespace() {
            let (name, value) = pair.split_once('=').ok_or(Error::Syntax)?;
            let value = xtext_decode(value).ok_or(Error::BadValue)?;
            if value.len() > MAX_VALUE || value.chars().any(|c| c.is_control()) {
                return Err(Error::BadValue);
            }
            let slot = next
                .slot(name)
                .ok_or_else(|| Error::UnknownAttribute(name.to_owned()))?;
            *slot = Some(value);
        }
        *self = next;
        Ok(())
    }

    /// The XFORWARD command lines (each without CRLF) that carry these attributes to a server
    /// that advertised `offered`; split so that no line exceeds 512 bytes.
    pub fn commands(&self, offered: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        let mut line = String::from("XFORWARD");
        for &attr in ATTRIBUTES {
            if !offered.iter().any(|o| o.eq_ignore_ascii_case(attr)) {
                continue;
            }
            let Some(mut value) = self.get(attr) else {
                continue;
            };
            // A 255-byte value can take three times as much as xtext: cut it (at a character
            // boundary) until one attribute fits in a command on its own. XFORWARD only
            // informs the next hop's logs; a cut value is better than a refused command.
            let room = MAX_COMMAND - 2 - "XFORWARD".len() - " =".len() - attr.len();
            let mut encoded = xtext_encode(value);
            while encoded.len() > room {
                let mut cut = value.len() - 1;
                while !value.is_char_boundary(cut) {
                    cut -= 1;
                }
                value = &value[..cut];
                encoded = xtext_encode(value);
            }
            let mut item = String::new();
            let _ = write!(item, " {attr}={encoded}");
            if line.len() + item.len() > MAX_COMMAND - 2 && line.len() > "XFORWARD".len() {
                out.push(std::mem::replace(&mut line, String::from("XFORWARD")));
            }
            line.push_str(&item);
        }
        if line.len() > "XFORWARD".len() {
            out.push(line);
        }
        out
    }
}

/// RFC 3461 xtext: `+XX` hex escapes. Returns None on a malformed escape.
pub fn xtext_decode(s: &str) -> Option<String> {
    if !s.contains('+') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// RFC 3461 xtext encoding: `+`, `=`, controls, space and non-ASCII become `+XX`.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_sends_two_commands() {
        let mut a = Attrs::default();
        a.apply("NAME=mail.example.org ADDR=192.0.2.7 PORT=51234 HELO=mail.example.org")
            .unwrap();
        a.apply("PROTO=ESMTP SOURCE=REMOTE IDENT=4Xyz12abC")
            .unwrap();
        assert_eq!(a.addr.as_deref(), Some("192.0.2.7"));
        assert_eq!(a.ident.as_deref(), Some("4Xyz12abC"));
        assert_eq!(a.source.as_deref(), Some("REMOTE"));
    }

    #[test]
    fn unavailable_and_xtext() {
        let mut a = Attrs::default();
        a.apply("NAME=[UNAVAILABLE] HELO=a+20b").unwrap();
        assert_eq!(a.name.as_deref(), Some("[UNAVAILABLE]"));
        assert_eq!(a.helo.as_deref(), Some("a b"));
        assert_eq!(xtext_encode("a b=c+"), "a+20b+3Dc+2B");
    }

    #[test]
    fn bad_commands_change_nothing() {
        let mut a = Attrs::default();
        assert_eq!(a.apply(""), Err(Error::Syntax));
        assert_eq!(
            a.apply("ADDR=1.2.3.4 FOO=1"),
            Err(Error::UnknownAttribute("FOO".into()))
        );
        assert_eq!(a.apply("ADDR"), Err(Error::Syntax));
        assert_eq!(a.apply("NAME=+zz"), Err(Error::BadValue));
        assert_eq!(a.apply("NAME=+00"), Err(Error::BadValue));
        assert!(a.is_empty());
    }

    #[test]
    fn commands_only_offered_attributes() {
        let mut a = Attrs::default();
        a.apply("NAME=x.example ADDR=192.0.2.1 IDENT=ABC").unwrap();
        let offered = vec!["NAME".to_string(), "ADDR".to_string()];
        assert_eq!(
            a.commands(&offered),
            vec!["XFORWARD NAME=x.example ADDR=192.0.2.1"]
        );
        assert!(Attrs::default().commands(&offered).is_empty());
    }

    #[test]
    fn values_that_expand_as_xtext_are_cut_to_fit() {
        // Regression (found by fuzzing): 170 spaces decode to 170 bytes but encode to 510.
        let mut a = Attrs::default();
        a.apply(&format!("NAME={}", "+20".repeat(170))).unwrap();
        let all: Vec<String> = ATTRIBUTES.iter().map(|s| s.to_string()).collect();
        let cmds = a.commands(&all);
        assert_eq!(cmds.len(), 1);
        assert!(cmds[0].len() + 2 <= 512, "{}", cmds[0].len());
        assert!(cmds[0].starts_with("XFORWARD NAME=+20+20"));
    }

    #[test]
    fn long_values_split_across_commands() {
        let mut a = Attrs::default();
        let long = "h".repeat(250);
        a.apply(&format!("NAME={long} HELO={long} IDENT=Q1"))
            .unwrap();
        let all: Vec<String> = ATTRIBUTES.iter().map(|s| s.to_string()).collect();
        let cmds = a.commands(&all);
        assert_eq!(cmds.len(), 2);
        assert!(cmds.iter().all(|c| c.len() <= 510));
    }
}
