//! The commands reinjection writes (MAIL and RCPT with the original's parameters, verbatim
//! lines), and the check every envelope passes before any of them is written.

use std::fmt;

use crate::message::Envelope;
use crate::xforward::xtext_encode;

use super::types::Upstream;

/// `127.0.0.1:10025` as Postfix writes a next hop: `[127.0.0.1]:10025`.
pub fn bracketed(hostport: &str) -> String {
    match hostport.rsplit_once(':') {
        Some((host, port)) => format!(
            "[{}]:{port}",
            host.trim_start_matches('[').trim_end_matches(']')
        ),
        None => format!("[{hostport}]"),
    }
}

/// A command line written verbatim (lettre appends nothing; we add CRLF).
pub(super) struct Raw(pub String);

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

/// `MAIL FROM:<sender>` with the parameters the server supports, taken from the original.
pub(super) struct MailCmd<'a> {
    pub env: &'a Envelope,
    pub size: u64,
    /// The keywords the server's EHLO reply offers.
    pub keywords: &'a [String],
}

impl MailCmd<'_> {
    fn has(&self, kw: &str) -> bool {
        self.keywords.iter().any(|k| k == kw)
    }
}

impl fmt::Display for MailCmd<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MAIL FROM:<{}>", self.env.sender)?;
        if self.has("SIZE") {
            write!(f, " SIZE={}", self.size)?;
        }
        if let Some(body) = self.env.body {
            if self.has("8BITMIME") {
                write!(f, " BODY={body}")?;
            }
        }
        if self.env.smtputf8 && self.has("SMTPUTF8") {
            write!(f, " SMTPUTF8")?;
        }
        if self.has("DSN") {
            if let Some(ret) = self.env.ret {
                write!(f, " RET={ret}")?;
            }
            if let Some(envid) = &self.env.envid {
                write!(f, " ENVID={}", xtext_encode(envid))?;
            }
        }
        Ok(())
    }
}

pub(super) fn rcpt_cmd(r: &crate::message::Recipient, dsn: bool) -> String {
    let mut s = format!("RCPT TO:<{}>", r.address);
    if dsn {
        if let Some(n) = &r.notify {
            s.push_str(" NOTIFY=");
            s.push_str(n);
        }
        if let Some(o) = &r.orcpt {
            s.push_str(" ORCPT=rfc822;");
            s.push_str(&xtext_encode(o));
        }
    }
    s
}

/// The reinjection boundary: every address and parameter written on the connection passes the
/// inbound session's RFC 5321 check (`smtp::address`), whatever it came from (an SMTP client,
/// the CLI, AM.PDP, a quarantine file). A CR, LF, space or `>` in an address or a `NOTIFY=`
/// would otherwise end the command and start another (`RCPT TO:<x>\r\nNOOP …`). `ORCPT=`,
/// `ENVID=` and the XFORWARD values are xtext-encoded, `RET=` and `BODY=` are constants.
/// The refusal is the reply every recipient gets; nothing is sent.
pub fn check_envelope(env: &Envelope) -> Result<(), Upstream> {
    use crate::smtp::address::Address;
    let refuse = |code: u16, text: String| Upstream { code, text };
    if !env.sender.is_empty() && Address::parse(&env.sender, env.smtputf8).is_err() {
        return Err(refuse(
            553,
            format!(
                "5.1.7 Sender {:?}: bad address syntax, not reinjected",
                env.sender
            ),
        ));
    }
    for r in &env.recipients {
        if r.address.is_empty() || Address::parse(&r.address, env.smtputf8).is_err() {
            return Err(refuse(
                553,
                format!(
                    "5.1.3 Recipient {:?}: bad address syntax, not reinjected",
                    r.address
                ),
            ));
        }
        if let Some(n) = &r.notify {
            if !valid_notify(n) {
                return Err(refuse(
                    501,
                    format!(
                        "5.5.4 NOTIFY={n:?} of {:?}: invalid, not reinjected",
                        r.address
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// RFC 3461 §4.1: `NEVER`, or a comma-separated list of `SUCCESS`, `FAILURE`, `DELAY`.
pub fn valid_notify(n: &str) -> bool {
    n.eq_ignore_ascii_case("NEVER")
        || (!n.is_empty()
            && n.split(',').all(|w| {
                ["SUCCESS", "FAILURE", "DELAY"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k))
            }))
}
