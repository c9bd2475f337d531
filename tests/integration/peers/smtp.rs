//! A tiny blocking SMTP/LMTP client for the peers and the filter ([`SmtpClient`], [`smtp_send`]),
//! and the pieces both test clients share ([`dot_stuff`], [`reply_line`]).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// The EHLO name smtp_send uses.
pub const CLIENT_HELO: &str = "client.postsift-test.localdomain";

/// A tiny blocking SMTP/LMTP client, one command at a time (no pipelining). Read timeout 120 s.
pub struct SmtpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl SmtpClient {
    /// Connects (10 s timeout). Read the greeting with [`SmtpClient::read_reply`].
    pub fn connect(addr: SocketAddr) -> io::Result<SmtpClient> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        s.set_write_timeout(Some(Duration::from_secs(120)))?;
        Ok(SmtpClient {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// One reply: (code, all its lines without CRLF joined by '\n', codes included), e.g.
    /// `(250, "250-postfix-test.localdomain\n250-PIPELINING\n…\n250 CHUNKING")`.
    pub fn read_reply(&mut self) -> io::Result<(u16, String)> {
        let mut lines = Vec::new();
        loop {
            let mut raw = Vec::new();
            if self.reader.read_until(b'\n', &mut raw)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {lines:?}"),
                ));
            }
            let (code, last, line) = reply_line(&raw);
            let code = code.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad reply line {line:?}"),
                )
            })?;
            lines.push(line);
            if last {
                return Ok((code, lines.join("\n")));
            }
        }
    }

    /// Sends `line` + CRLF and reads one reply.
    pub fn command(&mut self, line: &str) -> io::Result<(u16, String)> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    /// Writes bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Sends a message body after a 354: [`dot_stuff`]ed, then `.` CRLF. Reads no reply (SMTP has
    /// one, LMTP one per accepted recipient).
    pub fn send_data(&mut self, body: &[u8]) -> io::Result<()> {
        let mut data = dot_stuff(body);
        data.extend_from_slice(b".\r\n");
        self.writer.write_all(&data)
    }

    /// Half-closes the connection (write side).
    pub fn shutdown(&self) {
        let _ = self.writer.shutdown(Shutdown::Write);
    }
}

/// One line of an SMTP/LMTP reply, as both test clients read it: (its code if it starts with
/// three digits, whether it is the reply's last line — no `-` after the code —, the line without
/// its line end, lossy UTF-8).
pub fn reply_line(raw: &[u8]) -> (Option<u16>, bool, String) {
    let line = String::from_utf8_lossy(raw)
        .trim_end_matches(['\r', '\n'])
        .to_string();
    let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
    let last = line.as_bytes().get(3) != Some(&b'-');
    (code, last, line)
}

/// Prepares a message body for DATA (RFC 5321 4.5.2), for both test clients (this module's
/// [`SmtpClient`] and `client::Client`): bare LF becomes CRLF (so LF-terminated .eml fixtures
/// work), a '.' at the start of the body or after a CRLF is doubled, and the body ends with CRLF.
/// Bare LF is made CRLF *before* stuffing, so a dot after it is doubled too: a server that takes
/// bare LF as a line end (Postfix) and one that normalises it to CRLF (postsift) both get the
/// body back, and neither can see `<CRLF>.<CRLF>` early. Bare CR is left alone and is no line
/// start. Append `.` CRLF to end the data. To send bytes unchanged (smuggling tests) use
/// [`smtp_send_raw`] or `Client::send`.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 8);
    let mut at_line_start = true;
    for (i, &b) in body.iter().enumerate() {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && (i == 0 || body[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Sends one message: EHLO, MAIL FROM, RCPT TO (each), DATA, the body (see [`dot_stuff`]), QUIT.
/// Returns every reply, in order, as (code, full text): greeting, EHLO, MAIL, each RCPT, DATA,
/// end of data, QUIT. It stops early (sending QUIT if it can) when the greeting, EHLO or MAIL is
/// not 2xx, when no RCPT got 2xx, or when DATA is not 354; it stops without a panic when the
/// server closes the connection. Panics only if it cannot connect.
pub fn smtp_send(addr: SocketAddr, from: &str, rcpts: &[&str], body: &[u8]) -> Vec<(u16, String)> {
    send(addr, from, rcpts, &{
        let mut d = dot_stuff(body);
        d.extend_from_slice(b".\r\n");
        d
    })
}

/// Like [`smtp_send`] but the data is sent exactly as given, followed by `\r\n.\r\n` (no
/// dot-stuffing, no line-ending repair): for SMTP smuggling and bare CR/LF tests.
pub fn smtp_send_raw(
    addr: SocketAddr,
    from: &str,
    rcpts: &[&str],
    data: &[u8],
) -> Vec<(u16, String)> {
    let mut d = data.to_vec();
    d.extend_from_slice(b"\r\n.\r\n");
    send(addr, from, rcpts, &d)
}

fn send(addr: SocketAddr, from: &str, rcpts: &[&str], wire_data: &[u8]) -> Vec<(u16, String)> {
    let mut c =
        SmtpClient::connect(addr).unwrap_or_else(|e| panic!("smtp_send: connect {addr}: {e}"));
    let mut out = Vec::new();
    let ok = |code: u16| (200..300).contains(&code);
    macro_rules! step {
        ($e:expr) => {
            match $e {
                Ok(r) => {
                    out.push(r.clone());
                    r.0
                }
                Err(_) => return out,
            }
        };
    }
    macro_rules! quit {
        () => {{
            if let Ok(r) = c.command("QUIT") {
                out.push(r);
            }
            return out;
        }};
    }
    if !ok(step!(c.read_reply())) {
        quit!();
    }
    if !ok(step!(c.command(&format!("EHLO {CLIENT_HELO}")))) {
        quit!();
    }
    if !ok(step!(c.command(&format!("MAIL FROM:<{from}>")))) {
        quit!();
    }
    let mut accepted = 0;
    for r in rcpts {
        if ok(step!(c.command(&format!("RCPT TO:<{r}>")))) {
            accepted += 1;
        }
    }
    if accepted == 0 {
        quit!();
    }
    if step!(c.command("DATA")) != 354 {
        quit!();
    }
    if c.send_raw(wire_data).is_err() {
        return out;
    }
    step!(c.read_reply());
    quit!();
}

#[cfg(test)]
mod dot_stuff_tests {
    use super::{dot_stuff, reply_line};

    #[test]
    fn reply_line_reads_code_continuation_and_text() {
        assert_eq!(
            reply_line(b"250-PIPELINING\r\n"),
            (Some(250), false, "250-PIPELINING".into())
        );
        assert_eq!(reply_line(b"250 ok\n"), (Some(250), true, "250 ok".into()));
        assert_eq!(reply_line(b"354\r\n"), (Some(354), true, "354".into()));
        assert_eq!(reply_line(b"oops\r\n"), (None, true, "oops".into()));
    }

    /// Bodies with every kind of line end and dot placement.
    const BODIES: &[&[u8]] = &[
        b"",
        b".",
        b".a",
        b"..\r\n",
        b"no end",
        b"a\r\n.b\r\n",
        b"x\r\n.\r\n",
        b"a\n.b",
        b"a\n.\nb\n",
        b"\n.",
        b"a\r.b\r\n",
        b"a\r\n\r\n.\r\n..\r\n",
        b"ends in CR\r",
    ];

    #[test]
    fn dot_stuff_doubles_dots_at_line_starts_and_makes_bare_lf_crlf() {
        for (body, wire) in [
            (&b""[..], &b"\r\n"[..]),
            (b".", b"..\r\n"),
            (b".a", b"..a\r\n"),
            (b"..\r\n", b"...\r\n"),
            (b"no end", b"no end\r\n"),
            (b"a\r\n.b\r\n", b"a\r\n..b\r\n"),
            (b"x\r\n.\r\n", b"x\r\n..\r\n"),
            // Where the two test clients used to differ: a dot after a bare LF.
            (b"a\n.b", b"a\r\n..b\r\n"),
            (b"\n.", b"\r\n..\r\n"),
            // A bare CR is not a line end for stuffing.
            (b"a\r.b\r\n", b"a\r.b\r\n"),
        ] {
            assert_eq!(
                String::from_utf8_lossy(&dot_stuff(body)),
                String::from_utf8_lossy(wire),
                "body {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// What a receiver reading CRLF lines gets back: the body with bare LF as CRLF, ending in
    /// CRLF; and the data never ends before the terminator appended after it.
    #[test]
    fn dot_stuffed_data_ends_only_at_the_terminator_and_unstuffs_to_the_body() {
        for &body in BODIES {
            let shown = String::from_utf8_lossy(body);
            // The DATA command's own CRLF comes first: a leading "." is at a line start too.
            let mut wire = b"DATA\r\n".to_vec();
            wire.extend(dot_stuff(body));
            wire.extend_from_slice(b".\r\n");
            let end = wire.windows(5).position(|w| w == b"\r\n.\r\n").unwrap();
            assert_eq!(end + 5, wire.len(), "{shown:?}: data ends early");

            let mut unstuffed = Vec::new();
            for line in wire[6..end + 2].split_inclusive(|&b| b == b'\n') {
                assert!(line.ends_with(b"\r\n"), "{shown:?}: bare LF on the wire");
                unstuffed.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            }
            let mut expected = Vec::new();
            for (i, &b) in body.iter().enumerate() {
                if b == b'\n' && (i == 0 || body[i - 1] != b'\r') {
                    expected.push(b'\r');
                }
                expected.push(b);
            }
            if !expected.ends_with(b"\r\n") {
                expected.extend_from_slice(b"\r\n");
            }
            assert_eq!(
                String::from_utf8_lossy(&unstuffed),
                String::from_utf8_lossy(&expected),
                "{shown:?}"
            );
        }
    }
}
