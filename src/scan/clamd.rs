//! ClamAV's clamd as a scanner: a message and its decoded parts go out as `zINSTREAM`s in a
//! clamd session (`IDSESSION`), endpoints (Unix socket paths or host:port) are tried in order,
//! and clamd's answers are turned into clean / infected / error. clamav-client (used for the
//! health probes' `PING`) has no session API, writes the command, each length and each chunk
//! apart and reads to the end of the connection, so the framing is written here: a small
//! message goes out in one write and its reply is read up to its NUL (`strace -c -f` on
//! postsift, 4 KiB messages at 16 sessions: 52.8 → 42.4 system calls per message).
//!
//! Sessions are kept open across messages (clamd allows any number of commands in one
//! `IDSESSION`, each reply numbered): a session whose every stream was answered goes back to a
//! small pool per endpoint, and the next message's streams continue its numbering, so a
//! message costs clamd no accept and postsift no connect. A session that failed in any way,
//! or whose answers were not all read (a virus found early), is closed, never reused; one clamd
//! closed while it was idle (its `IdleTimeout`, a restart) is noticed when nothing comes back
//! and the streams go again on a new connection within the same attempt and scan timeout, so a
//! hung clamd still costs one timeout. clamd's own work per stream is the same either way
//! (about 93 system calls, most of them its temp directory): what a message costs clamd is
//! the bytes it is sent (see `Stream` and `Scanners::virus_scan`: each byte once).

use crate::scan::report::FailureKind;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clamav_client::tokio::TransportProtocol;
use tokio::net::{TcpStream, UnixStream};
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
    /// Every endpoint is marked down (see [`crate::peers`]): not tried.
    #[error("clamd is down (every endpoint failed {down_after} times in a row), not tried until a probe answers")]
    Down { down_after: u32 },
}

impl Error {
    /// The kind of failure, shared by every check: clamd's `… ERROR` replies are refusals,
    /// its `INSTREAM size limit exceeded` a limit.
    pub fn kind(&self) -> FailureKind {
        match self {
            Error::Connect { .. } | Error::Down { .. } => FailureKind::Connect,
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

/// Where a session found a virus: in the whole message, or in one of the parts given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Message,
    Part(usize),
}

pub struct ClamdClient {
    endpoints: Vec<Endpoint>,
    connect_timeout: Duration,
    timeout: Duration,
    /// Sessions left open for the next messages.
    pool: Pool,
    health: crate::peers::Group,
}

/// Chunks of at most this size go to clamd: big enough to keep system calls few, small enough
/// that 64 sessions streaming big messages at once stay within a few MiB of buffers.
const CHUNK: usize = 64 * 1024;

impl ClamdClient {
    pub fn new(endpoints: &[String], connect_timeout: Duration, timeout: Duration) -> Self {
        let health = crate::peers::Group::new(
            crate::peers::Peer::Clamd,
            endpoints,
            crate::peers::DEFAULT_DOWN_AFTER,
        );
        Self::with_health(endpoints, (connect_timeout, timeout), health)
    }

    /// Like [`ClamdClient::new`], `timeouts` being `(connect, scan)`, with `health` the
    /// endpoints' health state (the runtime builds it with `[health] down_after`).
    pub fn with_health(
        endpoints: &[String],
        (connect_timeout, timeout): (Duration, Duration),
        health: crate::peers::Group,
    ) -> Self {
        ClamdClient {
            endpoints: endpoints.iter().map(|e| Endpoint::parse(e)).collect(),
            connect_timeout,
            timeout,
            pool: Pool::new(endpoints.len()),
            health,
        }
    }

    /// Each endpoint's health.
    pub fn health(&self) -> &crate::peers::Group {
        &self.health
    }

    /// `attempt` on each endpoint not marked down, in order, until one gives an answer, each
    /// under the scan timeout; [`Error::Down`] at once when every endpoint is down. Scanning
    /// has no side effects, so trying the next clamd after any failure is safe.
    async fn failover<'s, T, F, Fut>(&'s self, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut(usize, &'s Endpoint) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut last = None;
        for (i, ep) in self.endpoints.iter().enumerate() {
            let Some(health) = self.health.attempt(i) else {
                continue;
            };
            let r = match tokio::time::timeout(self.timeout, attempt(i, ep)).await {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout {
                    endpoint: ep.name(),
                }),
            };
            health.finish(match &r {
                Err(e) if matches!(e.kind(), FailureKind::Connect | FailureKind::Timeout) => {
                    self.pool.clear(i);
                    crate::peers::Outcome::Failed
                }
                _ => crate::peers::Outcome::Answered,
            });
            match r {
                Ok(v) => return Ok(v),
                Err(e) => {
                    tracing::warn!(endpoint = %ep.name(), error = %e, "clamd failed, trying the next endpoint");
                    last = Some(e);
                }
            }
        }
        Err(match last {
            Some(e) => e,
            None if self.endpoints.is_empty() => Error::Protocol {
                endpoint: "-".into(),
                detail: "no endpoints".into(),
            },
            None => {
                self.health.skipped();
                Error::Down {
                    down_after: self.health.down_after(),
                }
            }
        })
    }

    /// Scans `msg`; each endpoint in turn until one gives an answer. Scanning has no side
    /// effects, so trying the next clamd after any failure is safe. The whole call is bounded
    /// by the scan timeout.
    pub async fn scan(&self, msg: &Message) -> Result<Verdict, Error> {
        let stream = Stream::message(msg, &[]).map_err(|source| Error::Io {
            endpoint: "-".into(),
            source,
        })?;
        self.scan_stream(&stream).await
    }

    /// Like [`ClamdClient::scan`], of a [`Stream`] (a message with bodies left out).
    pub async fn scan_stream(&self, stream: &Stream) -> Result<Verdict, Error> {
        let found = self
            .failover(|i, ep| self.session(i, ep, Some(stream), &[]))
            .await?;
        Ok(match found {
            None => Verdict::Clean,
            Some((_, names)) => Verdict::Infected(names),
        })
    }

    /// A connection to `ep` within the connect timeout.
    async fn connect(&self, ep: &Endpoint) -> Result<Either<UnixStream, TcpStream>, Error> {
        let transport = Transport {
            endpoint: ep,
            connect_timeout: self.connect_timeout,
        };
        transport
            .connect()
            .await
            .map_err(|source| match source.kind() {
                io::ErrorKind::TimedOut => Error::Timeout {
                    endpoint: ep.name(),
                },
                _ => Error::Connect {
                    endpoint: ep.name(),
                    source,
                },
            })
    }

    /// Scans the whole message and then several decoded parts over one connection (clamd's
    /// `IDSESSION`: one `zINSTREAM` per stream, each answered with `<n>: stream: …`), stream
    /// after stream until one is infected: where ([`Found`]) and its signature names, or None
    /// when all are clean. Same failover (a failed endpoint's session is started over on the
    /// next) and one scan timeout for the whole session. clamav-client has no session API; this
    /// is its INSTREAM framing (4-byte big-endian length, data, a zero length) written by hand.
    pub async fn scan_with_parts(
        &self,
        msg: &Message,
        parts: &[&Contents],
    ) -> Result<Option<(Found, Vec<String>)>, Error> {
        let stream = Stream::message(msg, &[]).map_err(|source| Error::Io {
            endpoint: "-".into(),
            source,
        })?;
        self.scan_streams(Some(&stream), parts).await
    }

    /// Like [`ClamdClient::scan_with_parts`], the message as a [`Stream`] (with bodies left
    /// out) or without it (the verdict cache knew its answer already): then [`Found::Part`]
    /// names one of `parts`.
    pub async fn scan_streams(
        &self,
        msg: Option<&Stream>,
        parts: &[&Contents],
    ) -> Result<Option<(Found, Vec<String>)>, Error> {
        self.failover(|i, ep| self.session(i, ep, msg, parts)).await
    }

    /// `zVERSION`: the first endpoint's (failover as for a scan) program and signature
    /// database version, `ClamAV 1.0.7/27480/Wed Dec  4 09:32:01 2024`: the verdict cache
    /// keys clamd's answers with it, so that new signatures make them miss.
    ///
    /// Asked in a session of the pool (`zVERSION` inside `IDSESSION`, answered `<id>: ClamAV
    /// …`), which goes back to the pool for the next scan: the verdict cache asks this for
    /// every message with a cached answer, and a connection of its own each time cost clamd
    /// an accept and postsift a connect and close per message. An idle session clamd closed
    /// meanwhile is replaced within the same attempt, as for a scan.
    pub async fn version(&self) -> Result<String, Error> {
        self.failover(|i, ep| async move {
            let endpoint = ep.name();
            self.over_session(i, ep, &endpoint, |session| {
                self.ask_version((i, &endpoint), session)
            })
            .await
        })
        .await
    }

    /// `ask` over a session of endpoint `i`: one left open in the pool by an earlier exchange
    /// first. clamd may have closed it meanwhile (its IdleTimeout, a restart): when `ask` fails
    /// before anything was answered (`Err((_, true))`), it runs again on a new connection,
    /// within the same attempt (and timeout).
    async fn over_session<T, F, Fut>(
        &self,
        i: usize,
        ep: &Endpoint,
        endpoint: &str,
        ask: F,
    ) -> Result<T, Error>
    where
        F: Fn(Session) -> Fut,
        Fut: std::future::Future<Output = Result<T, (Error, bool)>>,
    {
        if let Some(idle) = self.pool.take(i) {
            match ask(idle).await {
                Ok(v) => return Ok(v),
                Err((e, true)) => {
                    tracing::debug!(endpoint = %endpoint, error = %e, "clamd: an idle session was closed, opening a new one");
                }
                Err((e, false)) => return Err(e),
            }
        }
        let fresh = Session {
            conn: self.connect(ep).await?,
            next: 1,
            at: Instant::now(),
        };
        ask(fresh).await.map_err(|(e, _)| e)
    }

    /// `zVERSION` over `session` (`IDSESSION` sent first on a new one); the session goes back
    /// to the pool once answered. Err with whether nothing came back at all (a session clamd
    /// had closed while idle).
    async fn ask_version(
        &self,
        (i, endpoint): (usize, &str),
        session: Session,
    ) -> Result<String, (Error, bool)> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let Session { mut conn, next, .. } = session;
        let io_err = |source: io::Error| Error::Io {
            endpoint: endpoint.to_owned(),
            source,
        };
        let protocol = |detail: String| Error::Protocol {
            endpoint: endpoint.to_owned(),
            detail,
        };
        let frame: &[u8] = match next {
            1 => b"zIDSESSION\0zVERSION\0",
            _ => b"zVERSION\0",
        };
        conn.write_all(frame).await.map_err(|e| (io_err(e), true))?;
        let mut rd = tokio::io::BufReader::new(conn);
        let mut reply = Vec::with_capacity(64);
        // A version line is some tens of bytes: at most 4 KiB of anything else is read.
        let got = (&mut rd).take(4096).read_until(0, &mut reply).await;
        match got {
            Err(e) => return Err((io_err(e), true)),
            Ok(0) => return Err((io_err(io::ErrorKind::UnexpectedEof.into()), true)),
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&reply);
        let text = text.trim_end_matches('\0');
        // `<id>: ClamAV 1.4.6/27480/…`, numbered as the session's next reply.
        let version = text
            .split_once(": ")
            .filter(|(id, _)| id.trim().parse::<usize>().ok() == Some(next))
            .map(|(_, v)| v.trim())
            .filter(|v| v.starts_with("ClamAV "))
            .ok_or_else(|| {
                (
                    protocol(format!("unexpected VERSION reply {text:?}")),
                    false,
                )
            })?;
        if reply.ends_with(b"\0") && rd.buffer().is_empty() {
            self.pool.put(
                i,
                Session {
                    conn: rd.into_inner(),
                    next: next + 1,
                    at: Instant::now(),
                },
            );
        }
        Ok(version.to_owned())
    }

    /// The endpoints, as configured (part of the verdict cache's key).
    pub fn endpoint_names(&self) -> impl Iterator<Item = String> + '_ {
        self.endpoints.iter().map(Endpoint::name)
    }

    async fn session(
        &self,
        i: usize,
        ep: &Endpoint,
        msg: Option<&Stream>,
        parts: &[&Contents],
    ) -> Result<Option<(Found, Vec<String>)>, Error> {
        let endpoint = ep.name();
        // Every stream opened before the first byte goes out: the message (its head and
        // ranges of its spool file) and each part (in memory, or its head and its spill file).
        let mut streams = Vec::with_capacity(parts.len() + 1);
        streams.extend(msg.cloned());
        for p in parts {
            streams.push(Stream::contents(p).map_err(|source| Error::Io {
                endpoint: endpoint.clone(),
                source,
            })?);
        }
        // A session left open by an earlier message first, a new one if clamd had closed it.
        self.over_session(i, ep, &endpoint, |session| {
            self.exchange((i, &endpoint), session, &streams, msg.is_some())
        })
        .await
    }

    /// `streams` over `session` (`IDSESSION` sent first on a new one), until one is infected:
    /// where ([`Found`], `with_msg`: the first stream is the message) and its names, or None.
    /// A session whose every stream was answered, with nothing else pending, goes back to the
    /// pool; any other is closed. Err with whether nothing at all was answered (a session
    /// clamd had closed while idle).
    async fn exchange(
        &self,
        (i, endpoint): (usize, &str),
        session: Session,
        streams: &[Stream],
        with_msg: bool,
    ) -> Result<Option<(Found, Vec<String>)>, (Error, bool)> {
        let Session { conn, next, .. } = session;
        let n = streams.len();
        let (rd, mut wr) = tokio::io::split(conn);
        let mut rd = tokio::io::BufReader::new(rd);
        let mut answered = vec![false; n];
        let (found, written) = {
            // All streams are written without waiting for replies (clamd scans a session's streams
            // on several threads at once), while the replies are read as they come, in any order.
            let writer = async {
                let mut frame = Vec::with_capacity(CHUNK + 32);
                if next == 1 {
                    frame.extend_from_slice(b"zIDSESSION\0");
                }
                for stream in streams {
                    write_instream(&mut wr, &mut frame, stream).await?;
                }
                Ok::<_, io::Error>(())
            };
            let reader = read_replies(endpoint, &mut rd, next, &mut answered);
            tokio::pin!(writer, reader);
            let mut written = false;
            // The reader decides; a write error (clamd closed early, e.g. past StreamMaxLength)
            // leaves the reader to pick up clamd's last words or the closed connection.
            let closed = || Error::Protocol {
                endpoint: endpoint.to_owned(),
                detail: "clamd closed the session".into(),
            };
            let found = loop {
                tokio::select! {
                    w = &mut writer, if !written => match w {
                        Ok(()) => written = true,
                        Err(_) => {
                            break tokio::time::timeout(Duration::from_secs(1), &mut reader)
                                .await
                                .unwrap_or_else(|_| Err(closed()))
                                .and_then(|found| match found {
                                    // Not every stream got through: not a clean answer.
                                    None => Err(closed()),
                                    some => Ok(some),
                                });
                        }
                    },
                    r = &mut reader => break r,
                }
            };
            (found, written)
        };
        let none_answered = !answered.iter().any(|&a| a);
        let found = found.map_err(|e| (e, none_answered))?;
        // Every stream answered, every byte sent, nothing more to read: reusable.
        if written && answered.iter().all(|&a| a) && rd.buffer().is_empty() {
            let conn = rd.into_inner().unsplit(wr);
            self.pool.put(
                i,
                Session {
                    conn,
                    next: next + n,
                    at: Instant::now(),
                },
            );
        }
        Ok(found.map(|(id, names)| {
            let at = match (with_msg, id) {
                (true, 0) => Found::Message,
                (true, _) => Found::Part(id - 1),
                (false, _) => Found::Part(id),
            };
            (at, names)
        }))
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

    /// `zPING` to endpoint `i` alone: true if it answers PONG within `timeout`.
    pub async fn ping_endpoint(&self, i: usize, timeout: Duration) -> bool {
        let transport = Transport {
            endpoint: &self.endpoints[i],
            connect_timeout: self.connect_timeout.min(timeout),
        };
        matches!(
            tokio::time::timeout(timeout, clamav_client::tokio::ping(&transport)).await,
            Ok(Ok(r)) if r == clamav_client::PONG
        )
    }
}

/// Reads a session's replies to the streams numbered `next`, `next + 1`, … (`answered` has one
/// slot each) until every stream before the first infected one is answered: that one (its
/// index among the streams) and its names, or None when all are clean. A connection closed
/// before a reply is an I/O error (UnexpectedEof).
async fn read_replies<R: tokio::io::AsyncBufRead + Unpin>(
    endpoint: &str,
    rd: &mut R,
    next: usize,
    answered: &mut [bool],
) -> Result<Option<(usize, Vec<String>)>, Error> {
    use tokio::io::AsyncBufReadExt;
    let protocol = |detail: String| Error::Protocol {
        endpoint: endpoint.to_owned(),
        detail,
    };
    // clamd answers in any order; the first infected stream in the order sent is named (the
    // message before its parts), so the same message always gets the same answer.
    let mut first: Option<(usize, Vec<String>)> = None;
    let mut reply = Vec::new();
    for _ in 0..answered.len() {
        reply.clear();
        let got = rd.read_until(0, &mut reply).await;
        let got = got.map_err(|source| Error::Io {
            endpoint: endpoint.to_owned(),
            source,
        })?;
        if got == 0 {
            return Err(Error::Io {
                endpoint: endpoint.to_owned(),
                source: io::ErrorKind::UnexpectedEof.into(),
            });
        }
        // `<id>: stream: OK`, numbered in the order sent, from 1 in a new session.
        let text = String::from_utf8_lossy(&reply);
        let (i, body) = text
            .split_once(": ")
            .and_then(|(id, body)| Some((id.trim().parse::<usize>().ok()?, body)))
            .and_then(|(id, body)| Some((id.checked_sub(next)?, body)))
            .filter(|(i, _)| *i < answered.len() && !answered[*i])
            .ok_or_else(|| {
                protocol(format!(
                    "unexpected session reply {:?}",
                    text.trim_end_matches('\0')
                ))
            })?;
        answered[i] = true;
        match parse_reply(body.as_bytes()) {
            Ok(Verdict::Clean) => {}
            Ok(Verdict::Infected(names)) => {
                if first.as_ref().is_none_or(|(f, _)| i < *f) {
                    first = Some((i, names));
                }
            }
            Err(detail) => return Err(protocol(detail)),
        }
        // Every stream before the first infected one is answered: nothing earlier can take
        // its place.
        if let Some((f, _)) = &first {
            if answered[..*f].iter().all(|&a| a) {
                break;
            }
        }
    }
    Ok(first)
}

/// A clamd connection in an `IDSESSION`: the id its next command's reply will carry (1: the
/// session is not started yet) and when it was last used.
struct Session {
    conn: Either<UnixStream, TcpStream>,
    next: usize,
    at: Instant,
}

/// Sessions left open by earlier messages, per endpoint, for the next ones: a message then
/// costs no connection (clamd: no accept, no new client; postsift: no socket, connect, close).
/// Only a session whose every stream was answered and that has nothing left to read is put
/// back; one that failed in any way is dropped, never reused. A session idle longer than
/// [`POOL_IDLE`] is closed rather than reused (clamd's own `IdleTimeout` is 30 s by default).
#[derive(Default)]
struct Pool {
    idle: std::sync::Mutex<Vec<Vec<Session>>>,
}

/// Sessions kept open per endpoint, at most.
const POOL_SIZE: usize = 32;

/// A session idle this long is closed, not reused.
const POOL_IDLE: Duration = Duration::from_secs(10);

impl Pool {
    fn new(endpoints: usize) -> Pool {
        Pool {
            idle: std::sync::Mutex::new((0..endpoints).map(|_| Vec::new()).collect()),
        }
    }

    /// The most recently used idle session to endpoint `i` that is young enough.
    fn take(&self, i: usize) -> Option<Session> {
        let mut idle = self.idle.lock().expect("pool lock");
        let sessions = idle.get_mut(i)?;
        // The oldest are at the front: drop the stale ones.
        sessions.retain(|s| s.at.elapsed() < POOL_IDLE);
        sessions.pop()
    }

    fn put(&self, i: usize, session: Session) {
        let mut idle = self.idle.lock().expect("pool lock");
        if let Some(sessions) = idle.get_mut(i) {
            if sessions.len() < POOL_SIZE {
                sessions.push(session);
            }
        }
    }

    /// Closes every idle session (an endpoint failed: its sessions are suspect too).
    fn clear(&self, i: usize) {
        if let Some(s) = self.idle.lock().expect("pool lock").get_mut(i) {
            s.clear();
        }
    }
}

/// One stream for clamd: pieces in memory and ranges of one file, in order — a message (its
/// head, then its spool file), with the bodies clamd is sent decoded left out, or a decoded
/// part (its head, then its spill file). Cloning shares the file, which is read with `pread`,
/// so that a stream can be sent again (failover) and digested without reopening it.
#[derive(Clone, Default)]
pub struct Stream {
    pieces: Vec<Piece>,
    file: Option<std::sync::Arc<std::fs::File>>,
    len: u64,
}

#[derive(Clone)]
enum Piece {
    Memory(bytes::Bytes),
    /// `len` bytes of the file from `at`.
    File {
        at: u64,
        len: u64,
    },
}

impl Stream {
    fn push(&mut self, piece: Piece) {
        let len = match &piece {
            Piece::Memory(b) => b.len() as u64,
            Piece::File { len, .. } => *len,
        };
        if len > 0 {
            self.len += len;
            self.pieces.push(piece);
        }
    }

    /// A decoded part's bytes.
    pub fn contents(c: &Contents) -> io::Result<Stream> {
        let (head, tail) = c.stream()?;
        let mut s = Stream {
            file: tail.map(std::sync::Arc::new),
            ..Default::default()
        };
        let rest = c.len() - head.len() as u64;
        s.push(Piece::Memory(head));
        if s.file.is_some() {
            s.push(Piece::File { at: 0, len: rest });
        }
        Ok(s)
    }

    /// The message without the byte ranges `left_out` (`start..end`, sorted, apart): what is
    /// in memory shared, the rest read from the spool file when it is sent. Nothing of it is
    /// read here, so a 50 MB spooled message costs no memory.
    pub fn message(msg: &Message, left_out: &[(usize, usize)]) -> io::Result<Stream> {
        let head = msg.head();
        let h = head.len() as u64;
        let mut s = Stream {
            file: msg.reopen_tail()?.map(std::sync::Arc::new),
            ..Default::default()
        };
        let mut keep = |from: u64, to: u64| {
            if from < to.min(h) {
                s.push(Piece::Memory(head.slice(from as usize..to.min(h) as usize)));
            }
            if from.max(h) < to {
                let at = from.max(h);
                s.push(Piece::File {
                    at: at - h,
                    len: to - at,
                });
            }
        };
        let mut at = 0u64;
        for &(start, end) in left_out {
            let (start, end) = ((start as u64).min(msg.len()), (end as u64).min(msg.len()));
            if start > at {
                keep(at, start);
            }
            at = at.max(end);
        }
        keep(at, msg.len());
        Ok(s)
    }

    /// Bytes it holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its bytes, as an owned reader (for the verdict cache's digest).
    pub fn reader(&self) -> impl io::Read + Send + 'static {
        StreamReader {
            stream: self.clone(),
            piece: 0,
            pos: 0,
        }
    }
}

struct StreamReader {
    stream: Stream,
    piece: usize,
    /// Position within the current piece.
    pos: u64,
}

impl io::Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        loop {
            let Some(piece) = self.stream.pieces.get(self.piece) else {
                return Ok(0);
            };
            let got = match piece {
                Piece::Memory(b) => {
                    let rest = &b[self.pos as usize..];
                    let n = rest.len().min(buf.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    n
                }
                Piece::File { at, len } => {
                    let n = ((len - self.pos) as usize).min(buf.len());
                    let file = self
                        .stream
                        .file
                        .as_ref()
                        .expect("a file piece has its file");
                    match file.read_at(&mut buf[..n], at + self.pos)? {
                        0 if n > 0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                        got => got,
                    }
                }
            };
            if got == 0 && !buf.is_empty() {
                self.piece += 1;
                self.pos = 0;
                continue;
            }
            self.pos += got as u64;
            return Ok(got);
        }
    }
}

/// Writes one INSTREAM — the command, the stream in frames (4-byte big-endian length, data),
/// the zero length — after what `frame` holds already (`zIDSESSION`), in writes of one to two
/// [`CHUNK`]s: a stream of up to [`CHUNK`] bytes in memory goes out in a single write, command
/// and end included. Pieces in files are read off the async threads, a chunk at a time.
async fn write_instream<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    frame: &mut Vec<u8>,
    stream: &Stream,
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let put = |frame: &mut Vec<u8>, chunk: &[u8]| {
        frame.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        frame.extend_from_slice(chunk);
    };
    frame.extend_from_slice(b"zINSTREAM\0");
    for piece in &stream.pieces {
        match piece {
            Piece::Memory(b) => {
                for chunk in b.chunks(CHUNK) {
                    if frame.len() >= CHUNK {
                        wr.write_all(frame).await?;
                        frame.clear();
                    }
                    put(frame, chunk);
                }
            }
            &Piece::File { at, len } => {
                let file = stream.file.clone().expect("a file piece has its file");
                let mut done = 0u64;
                while done < len {
                    let want = ((len - done) as usize).min(CHUNK);
                    let file = file.clone();
                    let chunk = tokio::task::spawn_blocking(move || {
                        use std::os::unix::fs::FileExt;
                        let mut buf = vec![0u8; want];
                        file.read_exact_at(&mut buf, at + done).map(|()| buf)
                    })
                    .await
                    .map_err(|e| io::Error::other(e.to_string()))??;
                    if frame.len() >= CHUNK {
                        wr.write_all(frame).await?;
                        frame.clear();
                    }
                    put(frame, &chunk);
                    done += want as u64;
                }
            }
        }
    }
    frame.extend_from_slice(&0u32.to_be_bytes());
    wr.write_all(frame).await?;
    frame.clear();
    Ok(())
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
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A clamd stand-in on a Unix socket for one session: reads `zIDSESSION`, then per
    /// `zINSTREAM` the frames, and answers `<n>: ` + what `answer` says of the stream's bytes
    /// (in order; clamd may answer out of order, which the client accepts too).
    async fn fake_clamd(
        answer: fn(&[u8]) -> &'static str,
    ) -> (
        tempfile::TempDir,
        String,
        tokio::task::JoinHandle<Vec<Vec<u8>>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clamd.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut cmd = [0u8; 11];
            s.read_exact(&mut cmd).await.unwrap();
            assert_eq!(&cmd, b"zIDSESSION\0");
            let mut streams = Vec::new();
            loop {
                let mut cmd = [0u8; 5];
                // The client may hang up without zEND once it has its answer.
                if s.read_exact(&mut cmd).await.is_err() || &cmd == b"zEND\0" {
                    return streams;
                }
                let mut rest = [0u8; 5];
                s.read_exact(&mut rest).await.unwrap();
                assert_eq!([&cmd[..], &rest[..]].concat(), b"zINSTREAM\0");
                let mut data = Vec::new();
                loop {
                    let len = s.read_u32().await.unwrap() as usize;
                    if len == 0 {
                        break;
                    }
                    let mut chunk = vec![0; len];
                    s.read_exact(&mut chunk).await.unwrap();
                    data.extend_from_slice(&chunk);
                }
                let reply = format!("{}: {}\0", streams.len() + 1, answer(&data));
                streams.push(data);
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let ep = path.display().to_string();
        (dir, ep, task)
    }

    fn client(ep: &str) -> ClamdClient {
        ClamdClient::new(
            &[ep.to_owned()],
            Duration::from_secs(2),
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn one_session_carries_the_message_and_its_parts_and_names_the_infected_one() {
        let (_dir, ep, task) = fake_clamd(|d| {
            if d == b"bad part" {
                "stream: Test.Sig FOUND"
            } else {
                "stream: OK"
            }
        })
        .await;
        let msg = Message::from_bytes(b"Subject: x\r\n\r\nbody\r\n");
        let big = Bytes::from(vec![7u8; CHUNK * 2 + 5]);
        let parts = [
            big.clone(),
            Bytes::from_static(b"bad part"),
            Bytes::from_static(b"clean too"),
        ];
        let contents: Vec<Contents> = parts.iter().map(|p| p.to_vec().into()).collect();
        let refs: Vec<&Contents> = contents.iter().collect();
        let found = client(&ep).scan_with_parts(&msg, &refs).await.unwrap();
        assert_eq!(found, Some((Found::Part(1), vec!["Test.Sig".to_string()])));
        let streams = task.await.unwrap();
        assert_eq!(streams[0], b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(streams[1], big);
    }

    #[tokio::test]
    async fn a_session_error_or_a_misnumbered_reply_fails_the_scan() {
        let (_dir, ep, _task) = fake_clamd(|_| "INSTREAM size limit exceeded. ERROR").await;
        let msg = Message::from_bytes(b"Subject: x\r\n\r\nbody\r\n");
        let e = client(&ep)
            .scan_with_parts(&msg, &[&Contents::from(&b"p"[..])])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), FailureKind::Limit, "{e}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"7: stream: OK\0").await;
            let _ = s.read(&mut buf).await;
        });
        let e = client(&path.display().to_string())
            .scan_with_parts(&msg, &[&Contents::from(&b"p"[..])])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), FailureKind::Protocol, "{e}");

        // clamd gone mid-session (killed, restarted): a failure, never a clean answer.
        let path = dir.path().join("d.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 16];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"1: stream: OK\0").await;
        });
        let big = Bytes::from(vec![1u8; 4 << 20]);
        let e = client(&path.display().to_string())
            .scan_with_parts(&msg, &[&Contents::from(big.to_vec())])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), FailureKind::Protocol, "{e}");
    }

    /// Reads one `zINSTREAM`'s frames (after its command) and returns the stream's bytes.
    async fn read_stream(s: &mut tokio::net::UnixStream) -> Vec<u8> {
        let mut data = Vec::new();
        loop {
            let len = s.read_u32().await.unwrap() as usize;
            if len == 0 {
                return data;
            }
            let mut chunk = vec![0; len];
            s.read_exact(&mut chunk).await.unwrap();
            data.extend_from_slice(&chunk);
        }
    }

    #[tokio::test]
    async fn the_next_message_goes_over_the_session_the_last_one_left_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clamd.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        // One connection only: a second one would never be served, and the scan time out.
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut cmd = [0u8; 11];
            s.read_exact(&mut cmd).await.unwrap();
            assert_eq!(&cmd, b"zIDSESSION\0");
            for id in 1..=3 {
                let mut cmd = [0u8; 10];
                s.read_exact(&mut cmd).await.unwrap();
                assert_eq!(&cmd, b"zINSTREAM\0");
                let data = read_stream(&mut s).await;
                let reply = match data.as_slice() {
                    b"bad" => format!("{id}: stream: Test.Sig FOUND\0"),
                    _ => format!("{id}: stream: OK\0"),
                };
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let c = client(&path.display().to_string());
        let msg = Message::from_bytes(b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(c.scan(&msg).await.unwrap(), Verdict::Clean);
        let found = c
            .scan_with_parts(&msg, &[&Contents::from(&b"bad"[..])])
            .await
            .unwrap();
        assert_eq!(found, Some((Found::Part(0), vec!["Test.Sig".to_string()])));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn version_is_asked_in_a_pooled_session_and_a_misnumbered_answer_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clamd.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        // VERSION, a scan and VERSION again over one connection; then a second connection
        // whose VERSION answer carries the wrong id.
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut cmd = [0u8; 20];
            s.read_exact(&mut cmd).await.unwrap();
            assert_eq!(&cmd, b"zIDSESSION\0zVERSION\0");
            s.write_all(b"1: ClamAV 1.4.6/27480/Wed Dec  4 09:32:01 2024\0")
                .await
                .unwrap();
            let mut cmd = [0u8; 10];
            s.read_exact(&mut cmd).await.unwrap();
            assert_eq!(&cmd, b"zINSTREAM\0");
            read_stream(&mut s).await;
            s.write_all(b"2: stream: OK\0").await.unwrap();
            let mut cmd = [0u8; 9];
            s.read_exact(&mut cmd).await.unwrap();
            assert_eq!(&cmd, b"zVERSION\0");
            s.write_all(b"3: ClamAV 1.4.6/27481/Thu Dec  5 09:32:01 2024\0")
                .await
                .unwrap();
            // The session went back to the pool: a VERSION answered with another id fails.
            let mut cmd = [0u8; 9];
            s.read_exact(&mut cmd).await.unwrap();
            s.write_all(b"7: ClamAV 1.4.6/27481/Thu Dec  5 09:32:01 2024\0")
                .await
                .unwrap();
        });
        let c = client(&path.display().to_string());
        let v = c.version().await.unwrap();
        assert_eq!(v, "ClamAV 1.4.6/27480/Wed Dec  4 09:32:01 2024");
        let msg = Message::from_bytes(b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(c.scan(&msg).await.unwrap(), Verdict::Clean);
        let v = c.version().await.unwrap();
        assert_eq!(v, "ClamAV 1.4.6/27481/Thu Dec  5 09:32:01 2024");
        let e = c.version().await.unwrap_err();
        assert!(e.to_string().contains("unexpected VERSION reply"), "{e}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_session_clamd_closed_while_idle_is_replaced_and_one_that_failed_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clamd.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        // Each connection answers one stream, then clamd closes it (as at its IdleTimeout);
        // the third answers with an error.
        let server = tokio::spawn(async move {
            for n in 1..=3 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut cmd = [0u8; 21];
                s.read_exact(&mut cmd).await.unwrap();
                assert_eq!(&cmd, b"zIDSESSION\0zINSTREAM\0", "connection {n}");
                read_stream(&mut s).await;
                let reply: &[u8] = match n {
                    3 => b"1: INSTREAM size limit exceeded. ERROR\0",
                    _ => b"1: stream: OK\0",
                };
                s.write_all(reply).await.unwrap();
                if n == 3 {
                    // A session that answered an error is not used again: nothing more comes.
                    let mut rest = Vec::new();
                    s.read_to_end(&mut rest).await.unwrap();
                    assert!(rest.is_empty(), "{rest:?}");
                }
            }
        });
        let c = client(&path.display().to_string());
        let msg = Message::from_bytes(b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(c.scan(&msg).await.unwrap(), Verdict::Clean);
        assert_eq!(c.scan(&msg).await.unwrap(), Verdict::Clean);
        let e = c.scan(&msg).await.unwrap_err();
        assert_eq!(e.kind(), FailureKind::Limit, "{e}");
        drop(c);
        server.await.unwrap();
    }

    /// A message spooled past its first bytes (head in memory, the rest in a file).
    fn spooled(data: &[u8], dir: &std::path::Path) -> Message {
        let mut spool = crate::message::Spool::new(20, 20, dir);
        spool.write(data).unwrap();
        let msg = spool.finish().unwrap();
        assert!(msg.reopen_tail().unwrap().is_some() && msg.head().len() < data.len());
        msg
    }

    #[tokio::test]
    async fn a_message_goes_out_without_the_ranges_left_out_from_memory_and_spool_alike() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let msg = spooled(&data, dir.path());
        let h = msg.head().len();
        // Ranges across the head's end, inside the file, and up to the end; one out of bounds.
        let left_out = [(5, h + 10), (1_000, 70_000), (150_000, 300_000)];
        let mut want = data[..5].to_vec();
        want.extend_from_slice(&data[h + 10..1_000]);
        want.extend_from_slice(&data[70_000..150_000]);
        let stream = Stream::message(&msg, &left_out).unwrap();
        assert_eq!(stream.len(), want.len() as u64);
        let mut read = Vec::new();
        io::Read::read_to_end(&mut stream.reader(), &mut read).unwrap();
        assert_eq!(read, want, "the digest's reader");
        // What goes over the wire, frame by frame.
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let sent = stream.clone();
        let writer = tokio::spawn(async move {
            write_instream(&mut a, &mut Vec::new(), &sent)
                .await
                .unwrap();
        });
        let mut cmd = [0u8; 10];
        b.read_exact(&mut cmd).await.unwrap();
        assert_eq!(&cmd, b"zINSTREAM\0");
        let mut got = Vec::new();
        loop {
            let len = b.read_u32().await.unwrap() as usize;
            if len == 0 {
                break;
            }
            assert!(len <= CHUNK);
            let mut chunk = vec![0; len];
            b.read_exact(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk);
        }
        writer.await.unwrap();
        assert_eq!(got, want, "INSTREAM");
        // Nothing left out: the message as it is.
        let whole = Stream::message(&msg, &[]).unwrap();
        let mut read = Vec::new();
        io::Read::read_to_end(&mut whole.reader(), &mut read).unwrap();
        assert_eq!(read, data);
    }

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
