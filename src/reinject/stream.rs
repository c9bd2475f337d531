//! The bytes reinjection writes: the message body from memory and the spool ([`BodyChunks`]),
//! over a socket that refuses to write the final dot once the body could not be read
//! completely ([`GuardedStream`]): a message is never sent truncated. While the body goes out
//! the socket holds lettre's writes back (lettre writes and flushes every piece, then the final
//! dot on its own) and sends them together, so a small message and its dot are one write and
//! one TCP segment, a large one goes in 64 KiB writes.
//!
//! The body is dot-stuffed here ([`Stuffer`], memchr's search for CRLF dot), not by lettre,
//! whose codec pushes byte by byte (callgrind: 86k of the hop's ~500k instructions a 4 KiB
//! message): [`BodyChunks`] puts the stuffed bytes in the socket's queue and hands lettre
//! empty pieces, whose write is nothing and whose flush sends what is queued.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::message::Message;

/// The message body for lettre's `message_iter`: the new header block, then the original
/// message after its header section, read from memory and from the spool file in 64 KiB
/// pieces. A read error is recorded and the guard set, so lettre's final dot is never written.
pub(super) struct BodyChunks<'a> {
    header_block: &'a [u8],
    header_pos: usize,
    msg: &'a Message,
    head_pos: usize,
    file: Option<std::fs::File>,
    file_opened: bool,
    left: u64,
    error: Arc<Mutex<Option<io::Error>>>,
    guard: Arc<AtomicBool>,
    /// The socket's [`GuardedStream::hold`]: set while the body goes out, cleared after its
    /// last piece so that lettre's final dot sends everything held.
    hold: Arc<AtomicBool>,
    /// The socket's [`GuardedStream::queued`]: where the stuffed body goes.
    queued: Arc<Mutex<Vec<u8>>>,
    stuffer: Stuffer,
    /// The piece read last, before stuffing (kept to reuse its allocation).
    scratch: Vec<u8>,
}

/// SMTP's dot-stuffing (RFC 5321 4.5.2) exactly as lettre's `ClientCodec` does it: a dot is
/// doubled at the start of the data and after every CRLF (a bare CR or LF starts no line for
/// it), across pieces.
pub(super) struct Stuffer {
    /// The last two bytes seen; CRLF at the start, where a dot is doubled too.
    last: [u8; 2],
}

impl Stuffer {
    pub(super) fn new() -> Stuffer {
        Stuffer { last: *b"\r\n" }
    }

    /// Appends `input`, stuffed, to `out`.
    pub(super) fn stuff(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + 8);
        let mut from = 0;
        // A CRLF ending in the bytes before this piece.
        let starts_line = |k: usize| match k {
            0 => self.last == *b"\r\n",
            1 => self.last[1] == b'\r' && input[0] == b'\n',
            _ => false,
        };
        for k in 0..input.len().min(2) {
            if input[k] == b'.' && starts_line(k) {
                out.extend_from_slice(&input[from..=k]);
                out.push(b'.');
                from = k + 1;
            }
        }
        // Every other dot to double follows a CRLF inside this piece (its index is 2 or more).
        for p in memchr::memmem::find_iter(input, b"\r\n.") {
            let dot = p + 2;
            out.extend_from_slice(&input[from..=dot]);
            out.push(b'.');
            from = dot + 1;
        }
        out.extend_from_slice(&input[from..]);
        match input.len() {
            0 => {}
            1 => self.last = [self.last[1], input[0]],
            n => self.last = [input[n - 2], input[n - 1]],
        }
    }
}

/// Each piece handed to lettre becomes one write: fill pieces up to this size from every
/// source in turn, so a small message goes out in one write (plus lettre's final dot).
const PIECE: usize = 64 * 1024;

impl<'a> BodyChunks<'a> {
    pub(super) fn new(
        header_block: &'a [u8],
        msg: &'a Message,
        limit: u64,
        error: Arc<Mutex<Option<io::Error>>>,
        guard: Arc<AtomicBool>,
        (hold, queued): (Arc<AtomicBool>, Arc<Mutex<Vec<u8>>>),
    ) -> Self {
        hold.store(true, Ordering::SeqCst);
        BodyChunks {
            header_block,
            header_pos: 0,
            msg,
            head_pos: msg.header_end(),
            file: None,
            file_opened: false,
            left: limit,
            error,
            guard,
            hold,
            queued,
            stuffer: Stuffer::new(),
            scratch: Vec::new(),
        }
    }

    fn fail(&mut self, e: io::Error) -> Option<Vec<u8>> {
        self.guard.store(true, Ordering::SeqCst);
        *self.error.lock().unwrap() = Some(e);
        None
    }

    /// Appends up to `room` bytes from the next source with data; Ok(0) only at the end of
    /// the spool file.
    fn fill(&mut self, buf: &mut Vec<u8>, room: usize) -> io::Result<usize> {
        if self.header_pos < self.header_block.len() {
            let n = room.min(self.header_block.len() - self.header_pos);
            buf.extend_from_slice(&self.header_block[self.header_pos..self.header_pos + n]);
            self.header_pos += n;
            return Ok(n);
        }
        let head = self.msg.head();
        if self.head_pos < head.len() {
            let n = room.min(head.len() - self.head_pos);
            buf.extend_from_slice(&head[self.head_pos..self.head_pos + n]);
            self.head_pos += n;
            return Ok(n);
        }
        if !self.file_opened {
            self.file_opened = true;
            self.file = self.msg.reopen_tail()?;
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(0);
        };
        let start = buf.len();
        buf.resize(start + room, 0);
        let n = io::Read::read(file, &mut buf[start..])?;
        buf.truncate(start + n);
        Ok(n)
    }
}

impl Iterator for BodyChunks<'_> {
    /// Always empty: the piece, stuffed, is in the socket's queue (see the module's doc).
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let want = (PIECE as u64).min(self.left) as usize;
        if want == 0 {
            // The whole body was handed over: the dot that follows flushes it.
            self.hold.store(false, Ordering::SeqCst);
            return None;
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        while buf.len() < want {
            let room = want - buf.len();
            match self.fill(&mut buf, room) {
                Ok(0) => {
                    let left = self.left - buf.len() as u64;
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{left} bytes missing"),
                    );
                    return self.fail(e);
                }
                Ok(_) => {}
                Err(e) => return self.fail(e),
            }
        }
        self.left -= buf.len() as u64;
        let mut q = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        self.stuffer.stuff(&buf, &mut q);
        drop(q);
        self.scratch = buf;
        Some(Vec::new())
    }
}

/// The reinjection socket. Once `refuse_writes` is set, every write fails, so a transaction
/// whose body could not be read in full dies before its final dot and the server discards it.
/// While `hold` is set, writes are kept in `held` (sent whenever it reaches [`PIECE`]) and a
/// flush sends nothing; the first flush after `hold` is cleared sends what is held.
#[derive(Debug)]
pub(super) struct GuardedStream {
    pub(super) inner: TcpStream,
    pub(super) refuse_writes: Arc<AtomicBool>,
    pub(super) hold: Arc<AtomicBool>,
    pub(super) held: Vec<u8>,
    /// How much of `held` is already written.
    pub(super) sent: usize,
    /// The stuffed body [`BodyChunks`] puts here, taken into `held` at the next write or flush.
    pub(super) queued: Arc<Mutex<Vec<u8>>>,
}

impl GuardedStream {
    pub(super) fn new(inner: TcpStream, refuse_writes: Arc<AtomicBool>) -> GuardedStream {
        GuardedStream {
            inner,
            refuse_writes,
            hold: Arc::new(AtomicBool::new(false)),
            held: Vec::new(),
            sent: 0,
            queued: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Moves what [`BodyChunks`] queued to the end of `held`.
    fn take_queued(&mut self) {
        let mut q = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        if q.is_empty() {
            return;
        }
        if self.held.is_empty() {
            std::mem::swap(&mut self.held, &mut q);
        } else {
            self.held.extend_from_slice(&q);
            q.clear();
        }
    }

    fn refused(&self) -> Option<io::Error> {
        self.refuse_writes
            .load(Ordering::SeqCst)
            .then(|| io::Error::new(io::ErrorKind::BrokenPipe, "transaction aborted"))
    }

    /// Writes out everything held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            if let Some(e) = self.refused() {
                return Poll::Ready(Err(e));
            }
            let GuardedStream {
                inner, held, sent, ..
            } = self;
            match Pin::new(inner).poll_write(cx, &held[*sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.sent = 0;
        if self.held.capacity() > 2 * PIECE {
            self.held = Vec::new();
        } else {
            self.held.clear();
        }
        Poll::Ready(Ok(()))
    }

    /// True when a write is to be held back: the body is going out, or something is held or
    /// queued.
    fn holding(&self) -> bool {
        self.hold.load(Ordering::SeqCst)
            || !self.held.is_empty()
            || !self.queued.lock().map(|q| q.is_empty()).unwrap_or(false)
    }

    /// Takes `bufs` into `held`, after sending what is held if it is full.
    fn poll_hold<'b>(
        &mut self,
        cx: &mut Context<'_>,
        bufs: impl Iterator<Item = &'b [u8]>,
    ) -> Poll<io::Result<usize>> {
        self.take_queued();
        if self.held.len() >= PIECE {
            match self.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let mut n = 0;
        for b in bufs {
            self.held.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.refused() {
            return Poll::Ready(Err(e));
        }
        if self.holding() {
            return self.poll_hold(cx, std::iter::once(buf));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.refused() {
            return Poll::Ready(Err(e));
        }
        if self.holding() {
            return self.poll_hold(cx, bufs.iter().map(|b| &b[..]));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.take_queued();
        if self.hold.load(Ordering::SeqCst) {
            // Holding: send only once a whole piece is there (the body's pieces come queued).
            if self.held.len() >= PIECE {
                return self.poll_drain(cx);
            }
            return Poll::Ready(Ok(()));
        }
        match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for GuardedStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lettre 0.11's `ClientCodec::encode`, byte by byte, as the reference.
    fn lettre_stuffing(pieces: &[&[u8]]) -> Vec<u8> {
        #[derive(Clone, Copy, PartialEq)]
        enum S {
            Mid,
            Cr,
            Start,
        }
        let (mut st, mut out) = (S::Start, Vec::new());
        for &b in pieces.iter().flat_map(|p| p.iter()) {
            out.push(b);
            st = match (b, st) {
                (b'\r', _) => S::Cr,
                (b'\n', S::Cr) => S::Start,
                (b'.', S::Start) => {
                    out.push(b'.');
                    S::Mid
                }
                (_, S::Cr) | (_, S::Start) => S::Mid,
                (_, s) => s,
            };
        }
        out
    }

    #[test]
    fn stuffing_is_lettres_whatever_the_pieces() {
        let mut x: u32 = 7;
        for _ in 0..300 {
            let mut input = Vec::new();
            for _ in 0..200 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                input.push(b"a.\r\n\r\n."[(x >> 16) as usize % 7]);
            }
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            for size in [1, 2, 3, (x >> 16) as usize % 50 + 1, input.len()] {
                let pieces: Vec<&[u8]> = input.chunks(size).collect();
                let mut s = Stuffer::new();
                let mut out = Vec::new();
                for p in &pieces {
                    s.stuff(p, &mut out);
                }
                assert_eq!(out, lettre_stuffing(&pieces), "piece size {size}");
            }
        }
    }

    #[test]
    fn a_dot_first_and_after_crlf_is_doubled() {
        let mut out = Vec::new();
        Stuffer::new().stuff(b".a\r\n.b\n.c\r.d\r\n..\r\n", &mut out);
        assert_eq!(out, b"..a\r\n..b\n.c\r.d\r\n...\r\n");
    }
}
