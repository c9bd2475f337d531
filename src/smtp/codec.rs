//! Framing of the inbound connection: whole command lines with a length cap, and DATA bodies
//! decoded (dot-unstuffed, line ends normalised to CRLF) straight into a [`Spool`]. Replies are
//! buffered and flushed only when the client has nothing more pipelined, so a pipelined
//! MAIL/RCPT/DATA group costs one read and one write.
//!
//! smtp-proto parses the commands; its `DataReceiver` is not used for DATA because it collects
//! the whole body in one `Vec` (no spooling), keeps bare CR and LF (which the next server might
//! read as line ends: SMTP smuggling), and does not end a body that is empty.

use std::io;
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::message::Spool;
use crate::smtp::reply::Reply;

/// Longest command line taken (RFC 5321 says 512; extensions such as XFORWARD and long
/// parameters need more).
pub const MAX_LINE: usize = 4096;
/// Read size in DATA.
const READ_CHUNK: usize = 64 * 1024;
/// Read size while waiting for commands (a pipelined MAIL/RCPT group fits in a few).
const LINE_CHUNK: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("client closed the connection")]
    Closed,
    #[error("timeout waiting for the client")]
    Timeout,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// One line from the client.
pub enum Line {
    /// The line without its line end.
    Command(Vec<u8>),
    /// The line exceeded [`MAX_LINE`]; it was read to its end and dropped.
    TooLong,
}

/// How a DATA body ended.
pub enum DataEnd {
    /// `<CRLF>.<CRLF>` seen; the body is in the spool.
    Complete,
    /// `<CRLF>.<CRLF>` seen, but the body exceeded the size limit and was not kept whole.
    TooBig,
    /// The spool could not be written (disk full); the rest was read and dropped.
    SpoolError(io::Error),
}

pub struct Conn<S> {
    stream: S,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    limits: Limits,
}

/// How long the client may take. Each is a deadline for a whole unit of work, not for one
/// read: a client that dribbles a byte at a time cannot hold its session slot for longer than
/// these allow (Postfix's `smtpd_per_request_deadline` and `smtpd_min_data_rate`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For a whole command line, from when the session starts waiting for it.
    pub command: Duration,
    /// For a DATA body: this, plus one second for every `min_data_rate` bytes received.
    pub data: Duration,
    /// Bytes per second a DATA body must keep up on average; 0 = none (then `data` limits
    /// each read instead of the whole body).
    pub min_data_rate: u64,
    /// For each write of replies.
    pub write: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(stream: S, limits: Limits) -> Self {
        Conn {
            stream,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::with_capacity(1024),
            limits,
        }
    }

    /// Queues a reply; it goes out at the next [`Conn::flush`] or before the next read that
    /// would wait for the client.
    pub fn queue(&mut self, reply: &Reply) {
        reply.write_to(&mut self.wbuf);
    }

    pub async fn flush(&mut self) -> Result<(), Error> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let w = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.limits.write, w).await {
            Ok(r) => r?,
            Err(_) => return Err(Error::Timeout),
        }
        self.wbuf.clear();
        Ok(())
    }

    /// Sends `reply` now.
    pub async fn send(&mut self, reply: &Reply) -> Result<(), Error> {
        self.queue(reply);
        self.flush().await
    }

    fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    /// Reads more bytes from the client before `deadline` (at most `chunk` at a time),
    /// flushing queued replies first if nothing is buffered (the client may be waiting for
    /// them before it sends more). Reads go into the buffer's spare capacity, never zeroed
    /// first: an idle session costs only the memory its commands use.
    async fn fill(&mut self, deadline: Instant, chunk: usize) -> Result<(), Error> {
        self.flush().await?;
        if self.rpos > 0 && self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
            if self.rbuf.capacity() > LINE_CHUNK && chunk == LINE_CHUNK {
                // Back to command size after a DATA body.
                self.rbuf.shrink_to(LINE_CHUNK);
            }
        } else if self.rpos > READ_CHUNK {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        self.rbuf.reserve(chunk);
        let room = chunk.min(self.rbuf.capacity() - self.rbuf.len());
        let mut limited = (&mut self.stream).take(room as u64);
        let n = match tokio::time::timeout_at(deadline, limited.read_buf(&mut self.rbuf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(Error::Timeout),
        };
        if n == 0 {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Resolves when the client has closed the connection (or it failed), keeping whatever
    /// it sends meanwhile for the next command, up to one command chunk; past that it waits
    /// for ever. Cancel-safe. The session watches it while a message is processed, so that the
    /// MIME walk of a client that left stops.
    pub async fn closed(&mut self) {
        loop {
            if self.buffered().len() >= LINE_CHUNK {
                return std::future::pending().await;
            }
            self.rbuf.reserve(LINE_CHUNK);
            let room = LINE_CHUNK.min(self.rbuf.capacity() - self.rbuf.len());
            match (&mut self.stream)
                .take(room as u64)
                .read_buf(&mut self.rbuf)
                .await
            {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// True when the client already sent more than we consumed (pipelining).
    pub fn has_buffered_input(&self) -> bool {
        !self.buffered().is_empty()
    }

    /// Reads one command line. Over-long lines are consumed to their end and reported as
    /// [`Line::TooLong`] so the session can answer and carry on in step with the client.
    pub async fn read_line(&mut self) -> Result<Line, Error> {
        let deadline = Instant::now() + self.limits.command;
        let mut discarding = false;
        loop {
            let buf = self.buffered();
            if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let end = self.rpos + nl;
                let line = if discarding || nl > MAX_LINE {
                    None
                } else {
                    let mut l = self.rbuf[self.rpos..end].to_vec();
                    if l.last() == Some(&b'\r') {
                        l.pop();
                    }
                    Some(l)
                };
                self.rpos = end + 1;
                return Ok(line.map_or(Line::TooLong, Line::Command));
            }
            if buf.len() > MAX_LINE {
                discarding = true;
                self.rpos = self.rbuf.len();
            }
            self.fill(deadline, LINE_CHUNK).await?;
        }
    }

    /// Reads a DATA body up to its `<CRLF>.<CRLF>`, writing the decoded bytes to `spool` until
    /// it holds `max` bytes; past that, or after a spool error, bytes are read and dropped so
    /// the reply still comes at the right point in the conversation.
    pub async fn read_data(&mut self, spool: &mut Spool, max: u64) -> Result<DataEnd, Error> {
        let started = Instant::now();
        let mut received: u64 = 0;
        let mut dec = DataDecoder::new();
        let mut out = Vec::with_capacity(READ_CHUNK + 1024);
        let mut too_big = false;
        let mut spool_err: Option<io::Error> = None;
        loop {
            let (used, done) = dec.decode(self.buffered(), &mut out);
            self.rpos += used;
            received += used as u64;
            if !too_big && spool_err.is_none() {
                if spool.len() + out.len() as u64 > max {
                    too_big = true;
                } else if let Err(e) = spool.write(&out) {
                    spool_err = Some(e);
                }
            }
            out.clear();
            if done {
                return Ok(match (spool_err, too_big) {
                    (Some(e), _) => DataEnd::SpoolError(e),
                    (None, true) => DataEnd::TooBig,
                    (None, false) => DataEnd::Complete,
                });
            }
            let deadline = match self.limits.min_data_rate {
                0 => Instant::now() + self.limits.data,
                rate => {
                    started
                        + self.limits.data
                        + Duration::from_secs_f64(received as f64 / rate as f64)
                }
            };
            self.fill(deadline, READ_CHUNK).await?;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    /// At the start of a line; `crlf` tells whether the previous line ended in a real CRLF (or
    /// this is the first line), the only place where a dot is stuffing or the terminator.
    LineStart { crlf: bool },
    /// Inside a line.
    Mid,
    /// After a CR whose meaning depends on the next byte.
    Cr,
    /// After a dot at the start of a CRLF line.
    Dot,
    /// After `<CRLF>.<CR>`.
    DotCr,
}

/// The DATA state machine. Only `<CRLF>.<CRLF>` ends the body; every bare CR and bare LF
/// becomes CRLF, so the stored body has no sequence another server could take for the end of
/// data once it is dot-stuffed again.
pub struct DataDecoder {
    st: St,
}

impl Default for DataDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl DataDecoder {
    pub fn new() -> Self {
        DataDecoder {
            st: St::LineStart { crlf: true },
        }
    }

    /// Decodes from `input` into `out`; returns the bytes consumed and whether the end of data
    /// was reached (bytes after it are left for the command reader).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.st {
                St::Mid => {
                    // Copy the run of ordinary bytes in one go, across the line ends that need
                    // no rewriting (a CRLF followed by a byte that is neither a dot nor a line
                    // end): such a run leaves the state at Mid.
                    let run = clean_run(&input[i..]);
                    out.extend_from_slice(&input[i..i + run]);
                    i += run;
                    if i < input.len() {
                        if input[i] == b'\r' {
                            self.st = St::Cr;
                        } else {
                            out.extend_from_slice(b"\r\n");
                            self.st = St::LineStart { crlf: false };
                        }
                        i += 1;
                    }
                    continue;
                }
                St::LineStart { crlf } => match b {
                    b'.' if crlf => self.st = St::Dot,
                    b'\r' => self.st = St::Cr,
                    b'\n' => {
                        out.extend_from_slice(b"\r\n");
                        self.st = St::LineStart { crlf: false };
                    }
                    _ => {
                        out.push(b);
                        self.st = St::Mid;
                    }
                },
                St::Cr => {
                    out.extend_from_slice(b"\r\n");
                    if b == b'\n' {
                        self.st = St::LineStart { crlf: true };
                    } else {
                        // Bare CR: a line end of its own; reprocess this byte at line start.
                        self.st = St::LineStart { crlf: false };
                        continue;
                    }
                }
                St::Dot => match b {
                    b'\r' => self.st = St::DotCr,
                    b'\n' => {
                        // ".<LF>" is content: a lone dot, not stuffing.
                        out.extend_from_slice(b".\r\n");
                        self.st = St::LineStart { crlf: false };
                    }
                    _ => {
                        // The stuffing dot is dropped; this byte starts the line's content.
                        self.st = St::Mid;
                        continue;
                    }
                },
                St::DotCr => {
                    if b == b'\n' {
                        return (i + 1, true);
                    }
                    // "<CRLF>.<CR>x": a stuffed line holding a bare CR.
                    out.extend_from_slice(b"\r\n");
                    self.st = St::LineStart { crlf: false };
                    continue;
                }
            }
            i += 1;
        }
        (i, false)
    }
}

/// The length of the longest prefix of `input` (decoded in the middle of a line) that is copied
/// unchanged and ends in the middle of a line: ordinary bytes, and CRLFs each followed by a byte
/// that starts a line's content (not `.`, CR or LF). Stops at the first other CR or LF.
fn clean_run(input: &[u8]) -> usize {
    let mut i = 0;
    while let Some(p) = memchr::memchr2(b'\r', b'\n', &input[i..]) {
        let at = i + p;
        match input.get(at..at + 3) {
            Some([b'\r', b'\n', c]) if !matches!(c, b'.' | b'\r' | b'\n') => i = at + 3,
            _ => return at,
        }
    }
    input.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], split: usize) -> (Vec<u8>, Option<usize>) {
        let mut d = DataDecoder::new();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + split).min(input.len());
            let (used, done) = d.decode(&input[pos..end], &mut out);
            pos += used;
            if done {
                return (out, Some(pos));
            }
        }
        (out, None)
    }

    fn check(input: &[u8], want: &[u8]) {
        for split in [1, 2, 3, 7, 1000] {
            let (out, end) = decode_all(input, split);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "split {split}"
            );
            assert!(end.is_some(), "no end, split {split}");
        }
    }

    #[test]
    fn plain_body() {
        check(
            b"Subject: a\r\n\r\nhello\r\n.\r\n",
            b"Subject: a\r\n\r\nhello\r\n",
        );
    }

    #[test]
    fn empty_body() {
        check(b".\r\n", b"");
    }

    #[test]
    fn dot_unstuffing() {
        check(b"..leading\r\n...\r\n.\r\n", b".leading\r\n..\r\n");
    }

    #[test]
    fn bare_lf_and_cr_are_normalised() {
        check(b"a\nb\rc\r\n.\r\n", b"a\r\nb\r\nc\r\n");
    }

    #[test]
    fn smuggling_sequences_are_content() {
        // <LF>.<LF>, <LF>.<CR><LF>, <CR>.<CR> and <CRLF>.<CR>x must not end the body.
        let input = b"x\n.\nmail from:<a>\r\ny\n.\r\nz\r.\rw\r\n.\rq\r\n.\r\n";
        let (out, end) = decode_all(input, 1000);
        assert_eq!(end, Some(input.len()));
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "x\r\n.\r\nmail from:<a>\r\ny\r\n.\r\nz\r\n.\r\nw\r\n\r\nq\r\n"
        );
        // No bare CR or LF left.
        let b = s.as_bytes();
        for (i, &c) in b.iter().enumerate() {
            if c == b'\n' {
                assert_eq!(b[i - 1], b'\r');
            }
            if c == b'\r' {
                assert_eq!(b[i + 1], b'\n');
            }
        }
    }

    #[test]
    fn stops_at_terminator_leaving_pipelined_bytes() {
        let input = b"hi\r\n.\r\nQUIT\r\n";
        let (_, end) = decode_all(input, 1000);
        assert_eq!(end, Some(input.len() - 6));
    }

    #[test]
    fn whole_runs_decode_as_byte_by_byte() {
        // Byte soup of dots, line ends and letters: one byte a read (the state machine alone)
        // and everything at once (the run copy across clean CRLFs) give the same body and end.
        let mut x: u32 = 12345;
        for _ in 0..200 {
            let mut input = Vec::new();
            for _ in 0..300 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                input.push(b"ab.\r\n\r\n"[(x >> 16) as usize % 7]);
            }
            input.extend_from_slice(b"\r\n.\r\n");
            assert_eq!(decode_all(&input, 1), decode_all(&input, 100_000));
            assert_eq!(decode_all(&input, 2), decode_all(&input, 5));
        }
    }

    #[test]
    fn nul_bytes_pass_through() {
        check(b"a\0b\r\n.\r\n", b"a\0b\r\n");
    }
}
