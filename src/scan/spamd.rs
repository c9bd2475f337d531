//! SpamAssassin's spamd as a scanner, over the SPAMC/1.5 protocol: the message goes out with
//! REPORT, and the answer becomes a score, spamd's own verdict and the rules that fired.
//! Endpoints are tried in order only while connecting, so a message is never scanned twice.

use crate::scan::report::FailureKind;
use std::io::{self, IoSlice};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;

pub use super::report::SpamResult;

/// A REPORT answer is a few KiB; a peer sending this much is not spamd, and reading on would
/// only spend memory.
const MAX_REPLY: usize = 1024 * 1024;

const READ_CHUNK: usize = 16 * 1024;

/// SpamAssassin right-aligns the score in a four-character column and indents wrapped
/// descriptions to column 28, so a line indented further than this is never a rule line.
const MAX_RULE_INDENT: usize = 7;

#[derive(Debug, Clone)]
pub struct SpamdClient {
    endpoints: Vec<String>,
    connect_timeout: Duration,
    io_timeout: Duration,
    user: Option<String>,
    health: std::sync::Arc<crate::peers::Group>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect to {endpoint}: {source}")]
    Connect { endpoint: String, source: io::Error },
    /// `stage` is "connect", "write" or "read".
    #[error("timeout {stage} ({endpoint})")]
    Timeout {
        endpoint: String,
        stage: &'static str,
    },
    #[error("protocol error from {endpoint}: {detail}")]
    Protocol { endpoint: String, detail: String },
    #[error("i/o error with {endpoint}: {source}")]
    Io { endpoint: String, source: io::Error },
    /// Every endpoint is marked down (see [`crate::peers`]): not tried.
    #[error("spamd is down (every endpoint failed {down_after} times in a row), not tried until a probe answers")]
    Down { down_after: u32 },
}

impl Error {
    /// The kind of failure, shared by every check: a non-zero `SPAMD/1.1 <code>` is a refusal.
    pub fn kind(&self) -> FailureKind {
        match self {
            Error::Connect { .. } | Error::Down { .. } => FailureKind::Connect,
            Error::Timeout { .. } => FailureKind::Timeout,
            Error::Protocol { detail, .. } if detail.starts_with("spamd answered") => {
                FailureKind::Refused
            }
            Error::Protocol { .. } | Error::Io { .. } => FailureKind::Protocol,
        }
    }
}

/// Whether a reply read so far is whole. Running out of bytes is a normal state while reading,
/// not an error; it becomes one only when the peer has closed the connection.
#[derive(Debug, PartialEq)]
enum Progress<T> {
    NeedMore,
    Done(T),
}

/// Parses the reply bytes received so far; `eof` says the peer has closed the connection.
type ReplyParser<T> = fn(&[u8], bool) -> Result<Progress<T>, String>;

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl SpamdClient {
    /// endpoints: "host:port" (TCP) or an absolute path (Unix socket), tried in order until one
    /// connects. `connect_timeout` bounds each connection attempt, `io_timeout` each read and
    /// write (spamd answers only after scanning, so it must cover a scan).
    pub fn new(
        endpoints: Vec<String>,
        connect_timeout: Duration,
        io_timeout: Duration,
        user: Option<String>,
    ) -> Self {
        let health = crate::peers::Group::new(
            crate::peers::Peer::Spamd,
            &endpoints,
            crate::peers::DEFAULT_DOWN_AFTER,
        );
        Self::with_health(endpoints, (connect_timeout, io_timeout), user, health)
    }

    /// Like [`SpamdClient::new`], `timeouts` being `(connect, io)`, with `health` the
    /// endpoints' health state (the runtime builds it with `[health] down_after`).
    pub fn with_health(
        endpoints: Vec<String>,
        (connect_timeout, io_timeout): (Duration, Duration),
        user: Option<String>,
        health: crate::peers::Group,
    ) -> Self {
        // The name goes into a header line of the request: a CR or LF would let it add headers
        // of its own, and spamd refuses control characters there anyway.
        let user = user.and_then(|u| {
            let clean: String = u.chars().filter(|c| !c.is_control()).collect();
            if clean != u {
                tracing::warn!(user = ?u, "control characters removed from the spamd user name");
            }
            (!clean.is_empty()).then_some(clean)
        });
        SpamdClient {
            health: std::sync::Arc::new(health),
            endpoints,
            connect_timeout,
            io_timeout,
            user,
        }
    }

    /// Each endpoint's health.
    /// What its answers depend on besides the message (the verdict cache's key): the
    /// endpoints and the user.
    pub fn identity(&self) -> Vec<String> {
        let mut id = self.endpoints.clone();
        id.push(format!("user={:?}", self.user));
        id
    }

    pub fn health(&self) -> &crate::peers::Group {
        &self.health
    }

    /// PING to endpoint `i` alone, bypassing its health state: Ok if it answers PONG within
    /// `limit`.
    pub async fn ping_endpoint(&self, i: usize, limit: Duration) -> bool {
        let endpoint = self.endpoints[i].as_str();
        let ping = async {
            let conn = self.connect_one(endpoint).await?;
            let (head, body) = (b"PING SPAMC/1.5\r\n\r\n", b"");
            match conn {
                Conn::Tcp(mut s) => {
                    self.exchange(&mut s, endpoint, head, body, parse_pong_reply)
                        .await
                }
                Conn::Unix(mut s) => {
                    self.exchange(&mut s, endpoint, head, body, parse_pong_reply)
                        .await
                }
            }
        };
        matches!(timeout(limit, ping).await, Ok(Ok(())))
    }

    /// Sends `message` (already truncated by the caller) with the REPORT command and parses the
    /// answer.
    pub async fn check(&self, message: &[u8]) -> Result<SpamResult, Error> {
        // spamd matches these header names case-sensitively ("Content-length", not
        // "Content-Length"); a differently spelt header is silently ignored.
        let mut head = format!("REPORT SPAMC/1.5\r\nContent-length: {}\r\n", message.len());
        if let Some(user) = &self.user {
            head.push_str("User: ");
            head.push_str(user);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        self.converse(head.as_bytes(), message, parse_report_reply)
            .await
    }

    /// PING SPAMC/1.5 → "SPAMD/1.5 0 PONG"; Ok(()) if the first endpoint that connects answers
    /// PONG.
    pub async fn ping(&self) -> Result<(), Error> {
        // From 1.5 on spamd reads a (here empty) header block after PING, hence the blank line.
        self.converse(b"PING SPAMC/1.5\r\n\r\n", b"", parse_pong_reply)
            .await
    }

    async fn converse<T>(
        &self,
        head: &[u8],
        body: &[u8],
        parse: ReplyParser<T>,
    ) -> Result<T, Error> {
        let (endpoint, conn, attempt) = self.connect().await?;
        let r = match conn {
            Conn::Tcp(mut s) => self.exchange(&mut s, endpoint, head, body, parse).await,
            Conn::Unix(mut s) => self.exchange(&mut s, endpoint, head, body, parse).await,
        };
        attempt.finish(outcome(&r));
        r
    }

    /// The first endpoint not marked down that connects, with its health attempt under way;
    /// [`Error::Down`] at once when every endpoint is down.
    async fn connect(&self) -> Result<(&str, Conn, crate::peers::Attempt<'_>), Error> {
        let mut last_error = None;
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let Some(attempt) = self.health.attempt(i) else {
                continue;
            };
            if let Some(e) = last_error.take() {
                // Failover hides an outage from the verdict, so it is logged here; the last
                // endpoint's error goes to the caller instead.
                let next = endpoint;
                tracing::warn!(error = %e, %next, "spamd endpoint failed, trying the next");
            }
            match self.connect_one(endpoint).await {
                Ok(conn) => return Ok((endpoint, conn, attempt)),
                Err(e) => {
                    attempt.finish(crate::peers::Outcome::Failed);
                    last_error = Some(e)
                }
            }
        }
        if last_error.is_none() && !self.endpoints.is_empty() {
            self.health.skipped();
            return Err(Error::Down {
                down_after: self.health.down_after(),
            });
        }
        Err(last_error.unwrap_or_else(|| Error::Connect {
            endpoint: "spamd".into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "no endpoint configured"),
        }))
    }

    async fn connect_one(&self, endpoint: &str) -> Result<Conn, Error> {
        let attempt = async {
            if endpoint.starts_with('/') {
                UnixStream::connect(endpoint).await.map(Conn::Unix)
            } else {
                let stream = TcpStream::connect(endpoint).await?;
                // The request is one write followed by a wait for the answer; with Nagle's
                // algorithm the tail of a large message could sit until spamd's delayed ACK.
                stream.set_nodelay(true)?;
                Ok(Conn::Tcp(stream))
            }
        };
        match timeout(self.connect_timeout, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(source)) => Err(Error::Connect {
                endpoint: endpoint.to_owned(),
                source,
            }),
            Err(_) => Err(Error::Timeout {
                endpoint: endpoint.to_owned(),
                stage: "connect",
            }),
        }
    }

    /// One request and its reply on an open connection.
    async fn exchange<S, T>(
        &self,
        stream: &mut S,
        endpoint: &str,
        head: &[u8],
        body: &[u8],
        parse: ReplyParser<T>,
    ) -> Result<T, Error>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let io_error = |source| Error::Io {
            endpoint: endpoint.to_owned(),
            source,
        };
        let timed_out = |stage| Error::Timeout {
            endpoint: endpoint.to_owned(),
            stage,
        };
        let protocol = |detail| Error::Protocol {
            endpoint: endpoint.to_owned(),
            detail,
        };

        write_request(stream, head, body, self.io_timeout)
            .await
            .map_err(|e| match e {
                WriteError::Timeout => timed_out("write"),
                WriteError::Io(source) => io_error(source),
            })?;

        let mut reply = Vec::new();
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            let n = timeout(self.io_timeout, stream.read(&mut chunk))
                .await
                .map_err(|_| timed_out("read"))?
                .map_err(io_error)?;
            if reply.len() + n > MAX_REPLY {
                return Err(protocol(format!("reply longer than {MAX_REPLY} bytes")));
            }
            reply.extend_from_slice(&chunk[..n]);
            let eof = n == 0;
            match parse(&reply, eof).map_err(protocol)? {
                Progress::Done(value) => return Ok(value),
                Progress::NeedMore if eof => {
                    return Err(protocol(
                        "connection closed before the reply was complete".into(),
                    ))
                }
                Progress::NeedMore => {}
            }
        }
    }
}

/// What an exchange says about the endpoint's health: only a timeout or a lost connection
/// counts against it; any answer proves it alive.
fn outcome<T>(r: &Result<T, Error>) -> crate::peers::Outcome {
    match r {
        Err(Error::Timeout { .. } | Error::Connect { .. } | Error::Io { .. }) => {
            crate::peers::Outcome::Failed
        }
        _ => crate::peers::Outcome::Answered,
    }
}

enum WriteError {
    Timeout,
    Io(io::Error),
}

/// Writes header and body with vectored writes, so a whole request usually leaves in one system
/// call without first copying the message into a new buffer. Each call gets `io_timeout`: a peer
/// that keeps taking bytes is not timed out (the caller bounds the whole scan).
async fn write_request<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut head: &[u8],
    mut body: &[u8],
    io_timeout: Duration,
) -> Result<(), WriteError> {
    while !head.is_empty() || !body.is_empty() {
        let bufs = [IoSlice::new(head), IoSlice::new(body)];
        let n = timeout(io_timeout, stream.write_vectored(&bufs))
            .await
            .map_err(|_| WriteError::Timeout)?
            .map_err(WriteError::Io)?;
        if n == 0 {
            return Err(WriteError::Io(io::ErrorKind::WriteZero.into()));
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    timeout(io_timeout, stream.flush())
        .await
        .map_err(|_| WriteError::Timeout)?
        .map_err(WriteError::Io)
}

fn parse_pong_reply(buf: &[u8], eof: bool) -> Result<Progress<()>, String> {
    match parse_status_line(buf, eof)? {
        None => Ok(Progress::NeedMore),
        Some((text, _)) if text == "PONG" => Ok(Progress::Done(())),
        Some((text, _)) => Err(format!("expected PONG, got {text:?}")),
    }
}

/// The REPORT reply parser on the bytes received so far (for the fuzz target): `Ok(None)`
/// while the reply is incomplete and the peer has not closed (`eof`).
pub fn parse_reply(buf: &[u8], eof: bool) -> Result<Option<SpamResult>, String> {
    match parse_report_reply(buf, eof)? {
        Progress::NeedMore => Ok(None),
        Progress::Done(r) => Ok(Some(r)),
    }
}

fn parse_report_reply(buf: &[u8], eof: bool) -> Result<Progress<SpamResult>, String> {
    let Some((_, mut pos)) = parse_status_line(buf, eof)? else {
        return Ok(Progress::NeedMore);
    };

    let mut content_length = None;
    let mut spam = None;
    loop {
        let Some(len) = buf[pos..].iter().position(|&b| b == b'\n') else {
            return need_more(eof, "reply headers", buf.len());
        };
        let line = trim_cr(&buf[pos..pos + len]);
        pos += len + 1;
        if line.is_empty() {
            break;
        }
        let line = std::str::from_utf8(line)
            .map_err(|_| format!("header line is not text: {:?}", excerpt(line)))?;
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed header line {line:?}"))?;
        if name.trim().eq_ignore_ascii_case("content-length") {
            let n = value
                .trim()
                .parse::<usize>()
                .map_err(|_| format!("bad Content-length {:?}", value.trim()))?;
            content_length = Some(n);
        } else if name.trim().eq_ignore_ascii_case("spam") {
            spam = Some(parse_spam_header(value)?);
        }
    }
    let (is_spam, score, required) = spam.ok_or("reply has no Spam header")?;

    let rest = &buf[pos..];
    let report = match content_length {
        Some(n) if rest.len() >= n => &rest[..n],
        Some(_) => return need_more(eof, "report", buf.len()),
        // Without a length the report ends where spamd closes the connection.
        None if eof => rest,
        None => return Ok(Progress::NeedMore),
    };
    Ok(Progress::Done(SpamResult {
        score,
        required,
        is_spam,
        rules: parse_rules(&String::from_utf8_lossy(report)),
        action: None,
    }))
}

/// Checks the first line, `SPAMD/<version> <code> <text>`, once it is complete, and returns its
/// text and where the next line starts. A non-zero code is an error carrying spamd's line: such
/// replies have no header block, so waiting for one would only end in a timeout.
fn parse_status_line(buf: &[u8], eof: bool) -> Result<Option<(String, usize)>, String> {
    const PREFIX: &[u8] = b"SPAMD/";
    // Something that is not spamd (an SMTP or HTTP server at a wrong port) is recognised from
    // its first bytes, before it sends a line end or closes.
    let seen = buf.len().min(PREFIX.len());
    if buf[..seen] != PREFIX[..seen] {
        return Err(format!("not a spamd reply: {:?}", excerpt(buf)));
    }
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return need_more::<()>(eof, "status line", buf.len()).map(|_| None);
    };
    let line = String::from_utf8_lossy(trim_cr(&buf[..end]));
    let mut parts = line.splitn(3, ' ');
    let _version = parts.next();
    let code = parts
        .next()
        .and_then(|c| c.parse::<u32>().ok())
        .ok_or_else(|| format!("malformed status line {line:?}"))?;
    if code != 0 {
        return Err(format!("spamd answered {line:?}"));
    }
    Ok(Some((
        parts.next().unwrap_or("").trim().to_owned(),
        end + 1,
    )))
}

/// `True ; 1000.0 / 5.0` → (is_spam, score, required).
fn parse_spam_header(value: &str) -> Result<(bool, f64, f64), String> {
    let malformed = || format!("malformed Spam header {:?}", value.trim());
    let (verdict, scores) = value.split_once(';').ok_or_else(malformed)?;
    let (score, required) = scores.split_once('/').ok_or_else(malformed)?;
    let is_spam = match verdict.trim() {
        v if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("yes") => true,
        v if v.eq_ignore_ascii_case("false") || v.eq_ignore_ascii_case("no") => false,
        _ => return Err(malformed()),
    };
    // Rust parses "NaN" and "inf"; either would make every later comparison with a threshold
    // meaningless.
    let number = |s: &str| s.trim().parse::<f64>().ok().filter(|x| x.is_finite());
    Ok((
        is_spam,
        number(score).ok_or_else(malformed)?,
        number(required).ok_or_else(malformed)?,
    ))
}

/// The (rule, score) pairs of SpamAssassin's report table.
fn parse_rules(report: &str) -> Vec<(String, f64)> {
    let lines: Vec<&str> = report.lines().collect();
    // The table comes last in the report, and the content preview above it quotes the message,
    // which could hold a line looking like the separator, or like a rule: so only what follows
    // the last separator counts.
    let Some(separator) = lines.iter().rposition(|l| is_separator(l)) else {
        return Vec::new();
    };
    lines[separator + 1..]
        .iter()
        .filter_map(|l| parse_rule_line(l))
        .collect()
}

/// `---- ---------------------- ----------…`
fn is_separator(line: &str) -> bool {
    let line = line.trim();
    line.starts_with("----") && line.contains(' ') && line.chars().all(|c| c == '-' || c == ' ')
}

/// `1000 GTUBE                  BODY: Generic Test for Unsolicited Bulk Email`
fn parse_rule_line(line: &str) -> Option<(String, f64)> {
    // A wrapped description can begin with a number ("2 of 3 …"): its indentation tells it apart.
    if line.len() - line.trim_start().len() > MAX_RULE_INDENT {
        return None;
    }
    let mut tokens = line.split_whitespace();
    let score = tokens
        .next()?
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite())?;
    let name = tokens.next()?;
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        .then(|| (name.to_owned(), score))
}

fn need_more<T>(eof: bool, what: &str, received: usize) -> Result<Progress<T>, String> {
    if eof {
        Err(format!(
            "connection closed in the middle of the {what} ({received} bytes received)"
        ))
    } else {
        Ok(Progress::NeedMore)
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The start of what a peer sent, short enough for an error message.
fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(60)]).into_owned()
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::path::PathBuf;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, UnixListener};
    use tokio::task::JoinHandle;

    use super::*;

    // Replies recorded byte for byte from Debian's spamd 4.0.1, run by hand in a loopback-only
    // network namespace (`spamd -x --listen=127.0.0.1:17830 -u nobody --siteconfigpath=<tmp>`;
    // local.cf: dns_available no, skip_rbl_checks 1, use_razor2/pyzor/bayes 0, report_safe 0,
    // DCC/AWL/TxRep off), answering `REPORT SPAMC/1.5` for SpamAssassin's sample-spam.txt
    // (GTUBE), a short plain-text note, and an HTML "you have won" message. Only the
    // Content-length headers count bytes: the report itself uses bare LF line ends.

    const REAL_GTUBE_REPLY: &str = concat!(
        "SPAMD/1.1 0 EX_OK\r\n",
        "Content-length: 973\r\n",
        "Spam: True ; 1000.0 / 5.0\r\n",
        "\r\n",
        "Spam detection software, running on the system \"vm\",\n",
        "has identified this incoming email as possible spam.  The original\n",
        "message has been attached to this so you can view it or label\n",
        "similar future email.  If you have any questions, see\n",
        "@@CONTACT_ADDRESS@@ for details.\n",
        "\n",
        "Content preview:  This is the GTUBE, the Generic Test for Unsolicited Bulk Email\n",
        "   If your spam filter supports it, the GTUBE provides a test by which you can\n",
        "   verify that the filter is installed correctly and is detecting incoming spam.\n",
        "   You can send yourself a test mail containing t [...] \n",
        "\n",
        "Content analysis details:   (1000.0 points, 5.0 required)\n",
        "\n",
        " pts rule name              description\n",
        "---- ---------------------- --------------------------------------------------\n",
        "-0.0 NO_RECEIVED            Informational: message has no Received headers\n",
        "-0.0 NO_RELAYS              Informational: message was not relayed via SMTP\n",
        "1000 GTUBE                  BODY: Generic Test for Unsolicited Bulk Email\n",
        "\n",
    );

    const REAL_CLEAN_REPLY: &str = concat!(
        "SPAMD/1.1 0 EX_OK\r\n",
        "Content-length: 702\r\n",
        "Spam: False ; -0.0 / 5.0\r\n",
        "\r\n",
        "Spam detection software, running on the system \"vm\",\n",
        "has NOT identified this incoming email as spam.  The original\n",
        "message has been attached to this so you can view it or label\n",
        "similar future email.  If you have any questions, see\n",
        "@@CONTACT_ADDRESS@@ for details.\n",
        "\n",
        "Content preview:  Hi Bob, are we still on for lunch on Thursday at noon? The\n",
        "   usual place is fine. Alice \n",
        "\n",
        "Content analysis details:   (-0.0 points, 5.0 required)\n",
        "\n",
        " pts rule name              description\n",
        "---- ---------------------- --------------------------------------------------\n",
        "-0.0 NO_RECEIVED            Informational: message has no Received headers\n",
        "-0.0 NO_RELAYS              Informational: message was not relayed via SMTP\n",
        "\n",
    );

    const REAL_SPAMMY_HTML_REPLY: &str = concat!(
        "SPAMD/1.1 0 EX_OK\r\n",
        "Content-length: 2099\r\n",
        "Spam: True ; 12.5 / 5.0\r\n",
        "\r\n",
        "Spam detection software, running on the system \"vm\",\n",
        "has identified this incoming email as possible spam.  The original\n",
        "message has been attached to this so you can view it or label\n",
        "similar future email.  If you have any questions, see\n",
        "@@CONTACT_ADDRESS@@ for details.\n",
        "\n",
        "Content preview:  CLICK HERE to claim your FREE prize of $1,000,000 USD!!! 100%\n",
        "   FREE, no risk, act now, limited time offer, viagra cialis cheap meds online\n",
        "   pharmacy. http://www.paypal.com/ \n",
        "\n",
        "Content analysis details:   (12.5 points, 5.0 required)\n",
        "\n",
        " pts rule name              description\n",
        "---- ---------------------- --------------------------------------------------\n",
        " 0.1 MISSING_MID            Missing Message-Id: header\n",
        "-0.0 NO_RECEIVED            Informational: message has no Received headers\n",
        " 1.4 MISSING_DATE           Missing Date: header\n",
        " 0.5 SUBJ_ALL_CAPS          Subject is all capitals\n",
        "-0.0 NO_RELAYS              Informational: message was not relayed via SMTP\n",
        " 1.2 DRUG_ED_ONLINE         BODY: Fast Viagra Delivery\n",
        " 1.2 TVD_VISIT_PHARMA       BODY: Body mentions online pharmacy\n",
        " 1.0 US_DOLLARS_3           BODY: Mentions millions of $ ($NN,NNN,NNN.NN)\n",
        " 2.4 ONLINE_PHARMACY        BODY: Online Pharmacy\n",
        " 0.0 NORMAL_HTTP_TO_IP      URI: URI host has a public dotted-decimal IPv4\n",
        "                            address\n",
        " 0.0 NUMERIC_HTTP_ADDR      URI: Uses a numeric IP address in URL\n",
        " 0.0 HTML_MESSAGE           BODY: HTML included in message\n",
        " 0.1 MIME_HTML_ONLY         BODY: Message only has text/html MIME parts\n",
        " 0.3 HTML_IMAGE_ONLY_04     BODY: HTML: images with 0-400 bytes of words\n",
        " 0.0 HTML_FONT_SIZE_HUGE    BODY: HTML font size is huge\n",
        " 0.0 LOTS_OF_MONEY          Huge... sums of money\n",
        " 2.2 DRUGS_ERECTILE         Refers to an erectile drug\n",
        " 1.0 RISK_FREE              No risk!\n",
        " 0.0 T_PDS_SHORT_SPOOFED_URL HTML message short and T_SPOOFED_URL (S_U_FP)\n",
        " 0.0 T_REMOTE_IMAGE         Message contains an external image\n",
        " 1.0 ADVANCE_FEE_2_NEW_MONEY Advance Fee fraud and lots of money\n",
        " 0.0 T_PDS_NO_FULL_NAME_SPOOFED_URL HTML message short, T_SPOOFED_URL and\n",
        "                            T_KHOP_NO_FULL_NAME\n",
        "\n",
    );

    fn parse_whole(reply: &str) -> Result<SpamResult, String> {
        match parse_report_reply(reply.as_bytes(), true)? {
            Progress::Done(result) => Ok(result),
            Progress::NeedMore => panic!("NeedMore at end of input"),
        }
    }

    fn rules(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|&(n, s)| (n.to_owned(), s)).collect()
    }

    #[test]
    fn real_gtube_report() {
        let r = parse_whole(REAL_GTUBE_REPLY).unwrap();
        assert_eq!(
            r,
            SpamResult {
                score: 1000.0,
                required: 5.0,
                is_spam: true,
                rules: rules(&[
                    ("NO_RECEIVED", -0.0),
                    ("NO_RELAYS", -0.0),
                    ("GTUBE", 1000.0)
                ]),
                action: None,
            }
        );
    }

    #[test]
    fn real_clean_report() {
        let r = parse_whole(REAL_CLEAN_REPLY).unwrap();
        assert_eq!(
            r,
            SpamResult {
                score: 0.0,
                required: 5.0,
                is_spam: false,
                rules: rules(&[("NO_RECEIVED", -0.0), ("NO_RELAYS", -0.0)]),
                action: None,
            }
        );
    }

    #[test]
    fn real_report_with_wrapped_descriptions_and_long_rule_names() {
        let r = parse_whole(REAL_SPAMMY_HTML_REPLY).unwrap();
        assert_eq!((r.score, r.required, r.is_spam), (12.5, 5.0, true));
        let names: Vec<&str> = r.rules.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "MISSING_MID",
                "NO_RECEIVED",
                "MISSING_DATE",
                "SUBJ_ALL_CAPS",
                "NO_RELAYS",
                "DRUG_ED_ONLINE",
                "TVD_VISIT_PHARMA",
                "US_DOLLARS_3",
                "ONLINE_PHARMACY",
                "NORMAL_HTTP_TO_IP",
                "NUMERIC_HTTP_ADDR",
                "HTML_MESSAGE",
                "MIME_HTML_ONLY",
                "HTML_IMAGE_ONLY_04",
                "HTML_FONT_SIZE_HUGE",
                "LOTS_OF_MONEY",
                "DRUGS_ERECTILE",
                "RISK_FREE",
                "T_PDS_SHORT_SPOOFED_URL",
                "T_REMOTE_IMAGE",
                "ADVANCE_FEE_2_NEW_MONEY",
                "T_PDS_NO_FULL_NAME_SPOOFED_URL",
            ]
        );
        let sum: f64 = r.rules.iter().map(|(_, s)| s).sum();
        assert!((sum - 12.4).abs() < 1e-9, "rule scores sum to {sum}");
    }

    #[test]
    fn only_the_table_after_the_last_separator_counts() {
        // The preview quotes the message, so a sender controls it; the continuation line
        // starting with a number is a wrapped description, not a rule.
        let body = concat!(
            "Content preview:  hello\n",
            "---- ----\n",
            "-100 FORGED_WELCOME_RULE from the message body\n",
            "\n",
            "Content analysis details:   (1000.0 points, 5.0 required)\n",
            "\n",
            " pts rule name              description\n",
            "---- ---------------------- --------------------------------------------------\n",
            "1000 GTUBE                  BODY: Generic Test for Unsolicited Bulk Email\n",
            " 2.5 SOME_RULE              A description long enough to wrap onto a line that\n",
            "                            2 of 3 readers would take for a rule\n",
            " 0.0 MISSING_DATE           Missing Date: header\n",
            "-1.9 BAYES_00               BODY: Bayes spam probability is 0 to 1%\n",
            "                            [score: 0.0000]\n",
        );
        let reply = format!(
            "SPAMD/1.1 0 EX_OK\r\nContent-length: {}\r\nSpam: True ; 1000.6 / 5.0\r\n\r\n{body}",
            body.len()
        );
        let r = parse_whole(&reply).unwrap();
        assert_eq!(
            r.rules,
            rules(&[
                ("GTUBE", 1000.0),
                ("SOME_RULE", 2.5),
                ("MISSING_DATE", 0.0),
                ("BAYES_00", -1.9)
            ])
        );
        assert_eq!(r.score, 1000.6);
    }

    #[test]
    fn non_zero_code_is_an_error_without_waiting_for_more() {
        let reply =
            b"SPAMD/1.0 76 Bad header line: (Content-Length contains non-numeric bytes)\r\n";
        for eof in [false, true] {
            let err = parse_report_reply(reply, eof).unwrap_err();
            assert!(err.contains("76 Bad header line"), "{err}");
        }
        let err = parse_pong_reply(b"SPAMD/1.0 74 Service Unavailable: x\r\n", false).unwrap_err();
        assert!(err.contains("74 Service Unavailable"), "{err}");
    }

    #[test]
    fn garbage_is_recognised_from_its_first_bytes() {
        for reply in [
            &b"220 mx.example.com ESMTP Postfix\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            b"SPAMX",
            b"\x00\x01\x02",
        ] {
            let err = parse_report_reply(reply, false).unwrap_err();
            assert!(err.starts_with("not a spamd reply"), "{err}");
        }
        for reply in [
            &b"SPAMD/1.1 zero EX_OK\r\n"[..],
            b"SPAMD/1.1\r\n",
            b"SPAMD/1.1 0 EX_OK\r\nContent-length: 3\r\n\r\nabc",
            b"SPAMD/1.1 0 EX_OK\r\nSpam: Maybe ; 1.0 / 5.0\r\n\r\n",
            b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; NaN / 5.0\r\n\r\n",
            b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1.0\r\n\r\n",
            b"SPAMD/1.1 0 EX_OK\r\nSpam True\r\n\r\n",
            b"SPAMD/1.1 0 EX_OK\r\nContent-length: -5\r\nSpam: True ; 1.0 / 5.0\r\n\r\n",
        ] {
            assert!(
                parse_report_reply(reply, true).is_err(),
                "{:?}",
                String::from_utf8_lossy(reply)
            );
        }
    }

    #[test]
    fn every_truncation_of_a_reply_is_incomplete() {
        let whole = REAL_GTUBE_REPLY.as_bytes();
        for cut in 0..whole.len() {
            let part = &whole[..cut];
            assert_eq!(
                parse_report_reply(part, false),
                Ok(Progress::NeedMore),
                "cut at {cut}"
            );
            let err = parse_report_reply(part, true).unwrap_err();
            assert!(err.contains("closed"), "cut at {cut}: {err}");
        }
        assert!(matches!(
            parse_report_reply(whole, false),
            Ok(Progress::Done(_))
        ));
    }

    #[test]
    fn bytes_beyond_content_length_are_not_report() {
        let reply = format!("{REAL_CLEAN_REPLY}---- ----\n 9.9 TRAILING_JUNK x\n");
        assert_eq!(
            parse_whole(&reply).unwrap(),
            parse_whole(REAL_CLEAN_REPLY).unwrap()
        );
    }

    #[test]
    fn without_content_length_the_report_ends_at_close() {
        let reply = "SPAMD/1.1 0 EX_OK\r\nSpam: False ; 1.4 / 5.0\r\n\r\n\
                     ---- ----\n 1.4 MISSING_DATE  Missing Date: header\n";
        assert_eq!(
            parse_report_reply(reply.as_bytes(), false),
            Ok(Progress::NeedMore)
        );
        let r = parse_whole(reply).unwrap();
        assert_eq!((r.score, r.is_spam), (1.4, false));
        assert_eq!(r.rules, rules(&[("MISSING_DATE", 1.4)]));
    }

    #[test]
    fn pong() {
        assert_eq!(
            parse_pong_reply(b"SPAMD/1.5 0 PONG\r\n", false),
            Ok(Progress::Done(()))
        );
        assert_eq!(
            parse_pong_reply(b"SPAMD/1.5 0 PO", false),
            Ok(Progress::NeedMore)
        );
        assert!(parse_pong_reply(b"SPAMD/1.5 0 PO", true).is_err());
        assert!(parse_pong_reply(b"SPAMD/1.5 0 EX_OK\r\n", false).is_err());
    }

    #[test]
    fn user_name_cannot_inject_headers() {
        let c = SpamdClient::new(vec![], T, T, Some("bob\r\nSet: local\r\n".into()));
        assert_eq!(c.user.as_deref(), Some("bobSet: local"));
        let c = SpamdClient::new(vec![], T, T, Some("\n".into()));
        assert_eq!(c.user, None);
    }

    // Fake spamd peers, for the faults a real spamd does not produce on demand.

    const T: Duration = Duration::from_secs(5);
    const SHORT: Duration = Duration::from_millis(200);

    /// A fake spamd on 127.0.0.1:0 that hands its first connection to `serve`.
    async fn fake_spamd<F, Fut>(serve: F) -> (String, JoinHandle<()>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(stream).await;
        });
        (endpoint, task)
    }

    /// Reads one request the way spamd does: a header block, then Content-length bytes.
    async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") {
            assert_eq!(
                stream.read(&mut byte).await.unwrap(),
                1,
                "request cut short"
            );
            request.push(byte[0]);
        }
        let head = String::from_utf8(request.clone()).unwrap();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-length: "))
            .map_or(0, |n| n.parse::<usize>().unwrap());
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
        request.extend_from_slice(&body);
        request
    }

    /// An address where nothing listens: bound for a moment, then closed.
    fn refused_endpoint() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    fn socket_path(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "postsift-spamd-test-{}-{name}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[tokio::test]
    async fn sends_the_request_spamd_expects() {
        let message: &[u8] = concat!(
            "Subject: hi\r\n\r\n",
            "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n"
        )
        .as_bytes();
        let (endpoint, server) = fake_spamd(move |mut s| async move {
            let request = read_request(&mut s).await;
            let expected = [
                format!("REPORT SPAMC/1.5\r\nContent-length: {}\r\n", message.len()).as_bytes(),
                b"User: alice\r\n\r\n",
                message,
            ]
            .concat();
            assert_eq!(
                String::from_utf8_lossy(&request),
                String::from_utf8_lossy(&expected)
            );
            s.write_all(REAL_GTUBE_REPLY.as_bytes()).await.unwrap();
            // Keep the connection open: the reply must be complete by its Content-length.
            tokio::time::sleep(T).await;
        })
        .await;
        let client = SpamdClient::new(vec![endpoint], T, T, Some("alice".into()));
        let r = client.check(message).await.unwrap();
        assert_eq!((r.score, r.is_spam), (1000.0, true));
        server.abort();
    }

    #[tokio::test]
    async fn hanging_server_times_out() {
        let (endpoint, server) = fake_spamd(|mut s| async move {
            read_request(&mut s).await;
            tokio::time::sleep(T).await;
        })
        .await;
        let client = SpamdClient::new(vec![endpoint.clone()], T, SHORT, None);
        let err = client
            .check(b"Subject: x\r\n\r\nbody\r\n")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Timeout { stage: "read", endpoint: e } if *e == endpoint),
            "{err}"
        );
        assert_eq!(err.kind(), FailureKind::Timeout);
        server.abort();
    }

    #[tokio::test]
    async fn server_that_never_reads_times_out_writing() {
        // A Unix socket's buffer is a few hundred KiB, so a few MiB are sure to block.
        let path = socket_path("never-reads");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (_stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(T).await;
        });
        let client = SpamdClient::new(vec![path.display().to_string()], T, SHORT, None);
        let err = client.check(&vec![b'x'; 8 << 20]).await.unwrap_err();
        assert!(
            matches!(err, Error::Timeout { stage: "write", .. }),
            "{err}"
        );
        server.abort();
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn refused_first_endpoint_fails_over_to_the_second() {
        let (endpoint, server) = fake_spamd(|mut s| async move {
            read_request(&mut s).await;
            s.write_all(REAL_CLEAN_REPLY.as_bytes()).await.unwrap();
        })
        .await;
        let client = SpamdClient::new(vec![refused_endpoint(), endpoint], T, T, None);
        let r = client.check(b"Subject: x\r\n\r\nbody\r\n").await.unwrap();
        assert_eq!((r.score, r.is_spam), (0.0, false));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn every_endpoint_refused() {
        let refused = refused_endpoint();
        let client = SpamdClient::new(
            vec![socket_path("absent").display().to_string(), refused.clone()],
            T,
            T,
            None,
        );
        let err = client.check(b"x").await.unwrap_err();
        assert!(
            matches!(&err, Error::Connect { endpoint, .. } if *endpoint == refused),
            "{err}"
        );
        assert_eq!(err.kind(), FailureKind::Connect);

        let err = SpamdClient::new(vec![], T, T, None)
            .ping()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), FailureKind::Connect);
    }

    #[tokio::test]
    async fn server_closing_mid_reply_is_an_error_and_not_retried_elsewhere() {
        let (endpoint, server) = fake_spamd(|mut s| async move {
            read_request(&mut s).await;
            let half = REAL_GTUBE_REPLY.len() / 2;
            s.write_all(&REAL_GTUBE_REPLY.as_bytes()[..half])
                .await
                .unwrap();
        })
        .await;
        // Once a connection is made the message is not sent again: spamd may have seen it.
        let second = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let second_endpoint = second.local_addr().unwrap().to_string();
        let client = SpamdClient::new(vec![endpoint, second_endpoint], T, T, None);
        let err = client
            .check(b"Subject: x\r\n\r\nbody\r\n")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Protocol { .. }), "{err}");
        assert!(err.to_string().contains("closed"), "{err}");
        assert_eq!(err.kind(), FailureKind::Protocol);
        assert!(tokio::time::timeout(SHORT, second.accept()).await.is_err());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn spamd_error_reply_is_reported_with_its_text() {
        let (endpoint, server) = fake_spamd(|mut s| async move {
            read_request(&mut s).await;
            s.write_all(b"SPAMD/1.0 74 Service Unavailable: busy\r\n")
                .await
                .unwrap();
            // spamd closes after such a line, but the client must not need that.
            tokio::time::sleep(T).await;
        })
        .await;
        let client = SpamdClient::new(vec![endpoint], T, T, None);
        let err = client.check(b"x").await.unwrap_err();
        assert!(
            err.to_string()
                .contains("SPAMD/1.0 74 Service Unavailable: busy"),
            "{err}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn oversized_reply_is_refused() {
        let (endpoint, server) = fake_spamd(|mut s| async move {
            read_request(&mut s).await;
            let head =
                "SPAMD/1.1 0 EX_OK\r\nContent-length: 4000000\r\nSpam: True ; 1.0 / 5.0\r\n\r\n";
            s.write_all(head.as_bytes()).await.unwrap();
            let _ = s.write_all(&vec![b'a'; 4_000_000]).await;
        })
        .await;
        let client = SpamdClient::new(vec![endpoint], T, T, None);
        let err = client.check(b"x").await.unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn ping_over_a_unix_socket() {
        let path = socket_path("ping");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            assert_eq!(read_request(&mut s).await, b"PING SPAMC/1.5\r\n\r\n");
            s.write_all(b"SPAMD/1.5 0 PONG\r\n").await.unwrap();
        });
        let client = SpamdClient::new(vec![path.display().to_string()], T, T, None);
        client.ping().await.unwrap();
        server.await.unwrap();
        let _ = std::fs::remove_file(&path);
    }
}
