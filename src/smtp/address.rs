//! The reverse and forward paths of MAIL FROM and RCPT TO, parsed strictly by RFC 5321 §4.1.2
//! (with RFC 6531's UTF-8 under SMTPUTF8), so that an address leaves postsift exactly as the
//! client sent it. smtp-proto's parser returns a quoted local part without its quotes
//! (`"x> ORCPT=rfc822;y"@example.com` becomes `x> ORCPT=rfc822;y@example.com`), which, written
//! back between angle brackets, changes the recipient and injects parameters; it also drops a
//! bare CR and takes invalid UTF-8. So the path is parsed here, kept in its wire form, and only
//! the parameters after it go to smtp-proto.

use std::fmt;

/// A validated mailbox in its wire form: exactly the bytes between the angle brackets (less a
/// source route), safe to write back between `<` and `>`. Empty for the null reverse path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Address(String);

impl Address {
    /// The null reverse path `<>`.
    pub fn null() -> Address {
        Address(String::new())
    }

    pub fn is_null(&self) -> bool {
        self.0.is_empty()
    }

    /// The wire form, quotes included (`"a b"@example.org`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain (after the last `@` outside quotes), if any.
    pub fn domain(&self) -> Option<&str> {
        let at = last_unquoted_at(self.0.as_bytes())?;
        Some(&self.0[at + 1..])
    }

    /// Parses a mailbox given without angle brackets (tests, the `scan` command); the same
    /// rules as in a command.
    pub fn parse(s: &str, utf8: bool) -> Result<Address, Error> {
        let wrapped = format!("<{s}>");
        let (addr, rest) = parse_path(&wrapped, true, utf8)?;
        if !rest.is_empty() {
            return Err(Error::Syntax);
        }
        Ok(addr)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not an RFC 5321 path (also: a control character, an unquoted space or `>`).
    #[error("bad address syntax")]
    Syntax,
    /// Bytes that are not UTF-8.
    #[error("address is not valid UTF-8")]
    BadUtf8,
    /// Non-ASCII without the SMTPUTF8 parameter.
    #[error("non-ASCII address requires SMTPUTF8")]
    NeedsUtf8,
}

/// Parses `<path>` at the start of `s` (spaces before it are skipped) and returns the address
/// and the rest of the line after `>` (the parameters). `allow_null` admits `<>` (MAIL FROM);
/// `utf8` admits non-ASCII (SMTPUTF8).
pub fn parse_path(s: &str, allow_null: bool, utf8: bool) -> Result<(Address, &str), Error> {
    let s = s.trim_start_matches(' ');
    let b = s.as_bytes();
    if b.first() != Some(&b'<') {
        return Err(Error::Syntax);
    }
    let mut i = 1;
    // A source route (`@a,@b:`) must be accepted and is ignored (RFC 5321 §4.1.1.3, C).
    if b.get(i) == Some(&b'@') {
        let colon = b[i..]
            .iter()
            .position(|&c| c == b':')
            .ok_or(Error::Syntax)?
            + i;
        for hop in s[i..colon].split(',') {
            let d = hop.strip_prefix('@').ok_or(Error::Syntax)?;
            domain_end(d.as_bytes(), 0, utf8)
                .filter(|&e| e == d.len())
                .ok_or(Error::Syntax)?;
        }
        i = colon + 1;
    }
    let start = i;
    if b.get(i) == Some(&b'>') {
        if start != 1 || !allow_null {
            return Err(Error::Syntax);
        }
        return Ok((Address::null(), &s[i + 1..]));
    }
    // Local part: a quoted string or a run of atext and dots (lenient about dots: Postfix
    // takes `a..b` and `a.` and so must we; they are written back as they came).
    if b.get(i) == Some(&b'"') {
        i += 1;
        loop {
            match *b.get(i).ok_or(Error::Syntax)? {
                b'"' => break,
                b'\\' => {
                    let c = *b.get(i + 1).ok_or(Error::Syntax)?;
                    if !(32..=126).contains(&c) {
                        return Err(non_ascii_or_syntax(c, utf8));
                    }
                    i += 2;
                }
                c @ (32..=126) => {
                    let _ = c;
                    i += 1;
                }
                c => {
                    check_non_ascii(c, utf8)?;
                    i += 1;
                }
            }
        }
        i += 1;
    } else {
        let from = i;
        while let Some(&c) = b.get(i) {
            if is_atext(c) || c == b'.' {
                i += 1;
            } else if c >= 0x80 {
                check_non_ascii(c, utf8)?;
                i += 1;
            } else {
                break;
            }
        }
        if i == from {
            return Err(Error::Syntax);
        }
    }
    // Domain, or none: `<Postmaster>` and other unqualified local parts are taken, as Postfix
    // takes them.
    if b.get(i) == Some(&b'@') {
        i = domain_end(b, i + 1, utf8).ok_or(Error::Syntax)?;
    }
    match b.get(i) {
        Some(b'>') => Ok((Address(s[start..i].to_owned()), &s[i + 1..])),
        Some(&c) if c >= 0x80 && !utf8 => Err(Error::NeedsUtf8),
        _ => Err(Error::Syntax),
    }
}

/// Where a domain or address literal starting at `i` ends (the index after it).
fn domain_end(b: &[u8], mut i: usize, utf8: bool) -> Option<usize> {
    if b.get(i) == Some(&b'[') {
        // Address literal: dtext (RFC 5321: %d33-90 / %d94-126) up to the closing bracket.
        i += 1;
        let from = i;
        while let Some(&c) = b.get(i) {
            match c {
                b']' => return (i > from).then_some(i + 1),
                33..=90 | 94..=126 => i += 1,
                _ => return None,
            }
        }
        return None;
    }
    // Labels of letters, digits, hyphens (and underscores, seen in real host names), UTF-8
    // under SMTPUTF8; no empty label.
    let from = i;
    let mut label = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'.' if label > 0 => label = 0,
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => label += 1,
            0x80..=0xff if utf8 => label += 1,
            _ => break,
        }
        i += 1;
    }
    (i > from && label > 0).then_some(i)
}

/// RFC 5322 atext.
fn is_atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c)
}

fn check_non_ascii(c: u8, utf8: bool) -> Result<(), Error> {
    if c < 0x80 {
        return Err(Error::Syntax);
    }
    if !utf8 {
        return Err(Error::NeedsUtf8);
    }
    Ok(())
}

fn non_ascii_or_syntax(c: u8, utf8: bool) -> Error {
    match check_non_ascii(c, utf8) {
        Err(e) => e,
        Ok(()) => Error::Syntax,
    }
}

fn last_unquoted_at(b: &[u8]) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    let mut at = None;
    for (i, &c) in b.iter().enumerate() {
        match c {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'@' if !quoted => at = Some(i),
            _ => {}
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> Result<(String, String), Error> {
        parse_path(s, true, false).map(|(a, r)| (a.0, r.to_owned()))
    }

    #[test]
    fn plain_and_null() {
        assert_eq!(
            path("<a@example.org>").unwrap(),
            ("a@example.org".into(), "".into())
        );
        assert_eq!(path("<>").unwrap(), ("".into(), "".into()));
        assert_eq!(
            path("<a@b.c> SIZE=10").unwrap(),
            ("a@b.c".into(), " SIZE=10".into())
        );
        assert_eq!(parse_path("<>", false, false), Err(Error::Syntax));
        assert_eq!(path("<Postmaster>").unwrap().0, "Postmaster");
        assert_eq!(path("<a@[192.0.2.1]>").unwrap().0, "a@[192.0.2.1]");
        assert_eq!(
            path("<first..last.@docomo.ne.jp>").unwrap().0,
            "first..last.@docomo.ne.jp"
        );
    }

    #[test]
    fn quoted_local_parts_keep_their_quotes() {
        let (a, rest) = path("<\"x> ORCPT=rfc822;y\"@example.com>").unwrap();
        assert_eq!(a, "\"x> ORCPT=rfc822;y\"@example.com");
        assert_eq!(rest, "");
        assert_eq!(
            path("<\"a b\"@example.org>").unwrap().0,
            "\"a b\"@example.org"
        );
        assert_eq!(
            path("<\"user@evil.example\"@example.com>").unwrap().0,
            "\"user@evil.example\"@example.com"
        );
        assert_eq!(path(r#"<"a\"b\\"@x.y>"#).unwrap().0, r#""a\"b\\"@x.y"#);
        let a = Address::parse("\"user@evil.example\"@example.com", false).unwrap();
        assert_eq!(a.domain(), Some("example.com"));
    }

    #[test]
    fn source_route_is_dropped() {
        assert_eq!(
            path("<@a.example,@b.example:u@c.example>").unwrap().0,
            "u@c.example"
        );
        assert_eq!(path("<@a.example u@c.example>"), Err(Error::Syntax));
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "a@b.c",
            "<a b@c.d>",
            "<a@b.c",
            "<a@b c>",
            "<a@b.c\r>",
            "<a\rb@c.d>",
            "<\"a\rb\"@c.d>",
            "<a@b\"c\">",
            "<a@\"b> X=y\">",
            "<a@>",
            "<@b.c>",
            "<a@b..c>",
            "<a@[1.2.3.4>",
            "<a@[1.2 3.4]>",
            "<\"unterminated@b.c>",
            "<a\0b@c.d>",
            "<a@b.c>>",
        ] {
            assert!(
                path(bad).is_err() || !path(bad).unwrap().1.is_empty(),
                "{bad:?}"
            );
        }
        assert_eq!(path("<a@b.c>>").unwrap().1, ">");
    }

    #[test]
    fn non_ascii_needs_smtputf8() {
        assert_eq!(path("<jörg@example.org>"), Err(Error::NeedsUtf8));
        assert_eq!(path("<j@exämple.org>"), Err(Error::NeedsUtf8));
        assert_eq!(path("<\"jö rg\"@example.org>"), Err(Error::NeedsUtf8));
        let (a, _) = parse_path("<jörg@exämple.org>", false, true).unwrap();
        assert_eq!(a.as_str(), "jörg@exämple.org");
    }
}
