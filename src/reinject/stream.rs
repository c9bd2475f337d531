//! The bytes reinjection writes: the message body fed to lettre from memory and the spool
//! ([`BodyChunks`]), over a socket that refuses to write the final dot once the body could not
//! be read completely ([`GuardedStream`]): a message is never sent truncated.

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
    ) -> Self {
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
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let want = (PIECE as u64).min(self.left) as usize;
        if want == 0 {
            return None;
        }
        let mut buf = Vec::with_capacity(want);
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
        Some(buf)
    }
}

/// The reinjection socket. Once `refuse_writes` is set, every write fails, so a transaction
/// whose body could not be read in full dies before its final dot and the server discards it.
#[derive(Debug)]
pub(super) struct GuardedStream {
    pub(super) inner: TcpStream,
    pub(super) refuse_writes: Arc<AtomicBool>,
}

impl GuardedStream {
    fn refused(&self) -> Option<io::Error> {
        self.refuse_writes
            .load(Ordering::SeqCst)
            .then(|| io::Error::new(io::ErrorKind::BrokenPipe, "transaction aborted"))
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
