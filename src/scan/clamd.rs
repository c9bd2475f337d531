//! ClamAV's clamd as a scanner: the message goes out with INSTREAM through the `clamav-client`
//! crate, endpoints (Unix socket paths or host:port) are tried in order, and clamd's answer is
//! turned into clean / infected / error. clamav-client connects by itself and returns clamd's raw
//! reply, so this module adds what it lacks: a connect timeout, failover, and reply parsing.

use crate::scan::FailureKind;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clamav_client::tokio::TransportProtocol;
use tokio::net::{TcpStream, UnixStream};
use tokio_stream::StreamExt;
use tokio_util::either::Either;

use crate::message::Message;
use crate::scan::parts::Contents;

/// What clamd said about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Infected(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to clamd at {endpoint}: {source}")]
    Connect { endpoint: String, source: io::Error },
    #[error("clamd at {endpoint} timed out")]
    Timeout { endpoint: String },
    #[error("clamd at {endpoint}: {detail}")]
    Protocol { endpoint: String, detail: String },
    #[error("clamd at {endpoint}: {source}")]
    Io { endpoint: String, source: io::Error },
}

impl Error {
    /// The kind of failure, shared by every check: clamd's `… ERROR` replies are refusals,
    /// its `INSTREAM size limit exceeded` a limit.
    pub fn kind(&self) -> FailureKind {
        match self {
            Error::Connect { .. } => FailureKind::Connect,
            Error::Timeout { .. } => FailureKind::Timeout,
            Error::Protocol { detail, .. } if detail.contains("size limit") => FailureKind::Limit,
            Error::Protocol { detail, .. } if detail.ends_with("ERROR") => FailureKind::Refused,
            Error::Protocol { .. } | Error::Io { .. } => FailureKind::Protocol,
        }
    }
}

#[derive(Debug, Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    fn parse(s: &str) -> Endpoint {
        if s.starts_with('/') {
            Endpoint::Unix(PathBuf::from(s))
        } else {
            Endpoint::Tcp(s.to_owned())
        }
    }

    fn name(&self) -> String {
        match self {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Tcp(a) => a.clone(),
        }
    }
}

/// An endpoint with a connect timeout, as clamav-client's transport.
struct Transport<'a> {
    endpoint: &'a Endpoint,
    connect_timeout: Duration,
}

impl TransportProtocol for Transport<'_> {
    type Stream = Either<UnixStream, TcpStream>;

    async fn connect(&self) -> io::Result<Self::Stream> {
        let connect = async {
            let s: io::Result<Self::Stream> = match self.endpoint {
                Endpoint::Unix(p) => UnixStream::connect(p).await.map(Either::Left),
                Endpoint::Tcp(a) => TcpStream::connect(a.as_str()).await.map(Either::Right),
            };
            s
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(r) => r.map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e)),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout")),
        }
    }
}

/// What goes to clamd: a whole spooled message, or one decoded part (in memory, or its head
/// and its spill file, streamed like a spooled message).
enum Source<'a> {
    Message(&'a Message),
    Part(&'a Contents),
}

pub struct ClamdClient {
    endpoints: Vec<Endpoint>,
    connect_timeout: Duration,
    timeout: Duration,
}

/// Chunks of at most this size go to clamd: big enough to keep system calls few, small enough
/// that 64 sessions streaming big messages at once stay within a few MiB of buffers.
const CHUNK: usize = 64 * 1024;

impl ClamdClient {
    pub fn new(endpoints: &[String], connect_timeout: Duration, timeout: Duration) -> Self {
        ClamdClient {
            endpoints: endpoints.iter().map(|e| Endpoint::parse(e)).collect(),
            connect_timeout,
            timeout,
        }
    }

    /// Scans `msg`; each endpoint in turn until one gives an answer. Scanning has no side
    /// effects, so trying the next clamd after any failure is safe. The whole call is bounded
    /// by the scan timeout.
    pub async fn scan(&self, msg: &Message) -> Result<Verdict, Error> {
        let mut last = None;
        for ep in &self.endpoints {
            match tokio::time::timeout(self.timeout, self.scan_one(ep, Source::Message(msg))).await
            {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    tracing::warn!(endpoint = %ep.name(), error = %e, "clamd failed, trying the next endpoint");
                    last = Some(e);
                }
                Err(_) => {
                    tracing::warn!(endpoint = %ep.name(), "clamd timed out");
                    last = Some(Error::Timeout {
                        endpoint: ep.name(),
                    });
                }
            }
        }
        Err(last.unwrap_or(Error::Protocol {
            endpoint: "-".into(),
            detail: "no endpoints".into(),
        }))
    }

    /// Scans one decoded part, with the same failover and timeout as [`ClamdClient::scan`].
    pub async fn scan_part(&self, part: &Contents) -> Result<Verdict, Error> {
        let mut last = None;
        for ep in &self.endpoints {
            match tokio::time::timeout(self.timeout, self.scan_one(ep, Source::Part(part))).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(Error::Timeout {
                        endpoint: ep.name(),
                    })
                }
            }
        }
        Err(last.unwrap_or(Error::Protocol {
            endpoint: "-".into(),
            detail: "no endpoints".into(),
        }))
    }

    async fn scan_one(&self, ep: &Endpoint, source: Source<'_>) -> Result<Verdict, Error> {
        let transport = Transport {
            endpoint: ep,
            connect_timeout: self.connect_timeout,
        };
        let endpoint = ep.name();
        let opened = match source {
            Source::Part(c) => c.stream(),
            Source::Message(msg) => msg.reopen_tail().map(|tail| (msg.head().clone(), tail)),
        };
        let (first, tail) = opened.map_err(|source| Error::Io {
            endpoint: endpoint.clone(),
            source,
        })?;
        let head = tokio_stream::iter(std::iter::once(Ok::<Bytes, io::Error>(first)));
        let reply = match tail {
            None => clamav_client::tokio::scan_stream(head, &transport, Some(CHUNK)).await,
            Some(file) => {
                let tail = tokio_util::io::ReaderStream::with_capacity(
                    tokio::fs::File::from_std(file),
                    CHUNK,
                );
                clamav_client::tokio::scan_stream(head.chain(tail), &transport, Some(CHUNK)).await
            }
        };
        let reply = reply.map_err(|source| match source.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => Error::Connect {
                endpoint: endpoint.clone(),
                source,
            },
            io::ErrorKind::TimedOut => Error::Timeout {
                endpoint: endpoint.clone(),
            },
            // clamd closes the socket when a stream passes StreamMaxLength, often before we
            // can read its "size limit exceeded" line.
            _ => Error::Io {
                endpoint: endpoint.clone(),
                source,
            },
        })?;
        parse_reply(&reply).map_err(|detail| Error::Protocol { endpoint, detail })
    }

    /// `zPING`: true if the first reachable clamd answers PONG.
    pub async fn ping(&self) -> bool {
        for ep in &self.endpoints {
            let transport = Transport {
                endpoint: ep,
                connect_timeout: self.connect_timeout,
            };
            if let Ok(Ok(r)) =
                tokio::time::timeout(self.timeout, clamav_client::tokio::ping(&transport)).await
            {
                if r == clamav_client::PONG {
                    return true;
                }
            }
        }
        false
    }
}

/// clamd's INSTREAM replies: `stream: OK`, `stream: <name> FOUND` (one line per signature with
/// AllMatchScan), `<text> ERROR`; NUL-terminated for z-commands.
pub fn parse_reply(reply: &[u8]) -> Result<Verdict, String> {
    let text = String::from_utf8_lossy(reply);
    let mut names = Vec::new();
    let mut ok = false;
    for line in text
        .split(['\0', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let body = line.strip_prefix("stream:").map(str::trim).unwrap_or(line);
        if let Some(name) = body.strip_suffix(" FOUND") {
            names.push(name.trim().to_owned());
        } else if body == "OK" {
            ok = true;
        } else {
            return Err(line.to_owned());
        }
    }
    match (names.is_empty(), ok) {
        (false, _) => Ok(Verdict::Infected(names)),
        (true, true) => Ok(Verdict::Clean),
        (true, false) => Err(format!(
            "unexpected reply {:?}",
            text.trim_end_matches('\0')
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(parse_reply(b"stream: OK\0"), Ok(Verdict::Clean));
        assert_eq!(
            parse_reply(b"stream: Eicar-Test-Signature FOUND\0"),
            Ok(Verdict::Infected(vec!["Eicar-Test-Signature".into()]))
        );
        assert_eq!(
            parse_reply(b"INSTREAM size limit exceeded. ERROR\0"),
            Err("INSTREAM size limit exceeded. ERROR".into())
        );
        assert!(parse_reply(b"").is_err());
        assert!(parse_reply(b"garbage").is_err());
    }
}
