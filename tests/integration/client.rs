//! A small async SMTP/LMTP client for driving postsift in tests: raw lines in, whole replies
//! (code and text) out, so tests can pipeline, misbehave and read every reply. The async twin of
//! `peers::SmtpClient`: the same reply-line parser (`peers::reply_line`) and the same
//! dot-stuffing (`peers::dot_stuff`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::peers;

pub struct Client {
    r: BufReader<OwnedReadHalf>,
    /// None once [`Client::take_writer`] took it.
    w: Option<OwnedWriteHalf>,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, w) = s.into_split();
        Client {
            r: BufReader::new(r),
            w: Some(w),
        }
    }

    /// Connects and reads the greeting.
    pub async fn greeted(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        let g = c.reply().await;
        assert_eq!(g.code, 220, "{g:?}");
        c
    }

    /// Takes the write half (to write from another task while this one reads replies).
    pub fn take_writer(&mut self) -> OwnedWriteHalf {
        self.w.take().expect("writer already taken")
    }

    pub async fn send(&mut self, raw: &[u8]) {
        let w = self.w.as_mut().expect("writer taken");
        w.write_all(raw).await.unwrap();
    }

    pub async fn line(&mut self, l: &str) {
        self.send(format!("{l}\r\n").as_bytes()).await;
    }

    /// Reads one (possibly multi-line) reply, each line parsed by [`peers::reply_line`]; code 0
    /// if the server closed the connection (or the last line has no code).
    pub async fn reply(&mut self) -> Reply {
        let mut text = String::new();
        loop {
            let mut raw = Vec::new();
            let n =
                tokio::time::timeout(Duration::from_secs(300), self.r.read_until(b'\n', &mut raw))
                    .await
                    .expect("reply timed out")
                    .unwrap_or(0);
            if n == 0 {
                return Reply { code: 0, text };
            }
            let (code, last, line) = peers::reply_line(&raw);
            text.push_str(line.trim_end());
            text.push('\n');
            if last {
                return Reply {
                    code: code.unwrap_or(0),
                    text,
                };
            }
        }
    }

    pub async fn cmd(&mut self, l: &str) -> Reply {
        self.line(l).await;
        self.reply().await
    }

    pub async fn expect(&mut self, l: &str, code: u16) -> Reply {
        let r = self.cmd(l).await;
        assert_eq!(r.code, code, "after {l:?}: {r:?}");
        r
    }

    /// Sends a body after DATA's 354, prepared by [`peers::dot_stuff`] (bare LF made CRLF,
    /// leading dots doubled, CRLF at the end), then the final dot. Raw bytes go with
    /// [`Client::send`].
    pub async fn body(&mut self, body: &[u8]) {
        let mut out = peers::dot_stuff(body);
        out.extend_from_slice(b".\r\n");
        self.send(&out).await;
    }

    /// A whole transaction after the greeting: EHLO or LHLO, MAIL, RCPTs, DATA, body. Returns
    /// the replies to the end of data (one per recipient for LMTP).
    pub async fn transaction(
        &mut self,
        lmtp: bool,
        from: &str,
        rcpts: &[&str],
        body: &[u8],
    ) -> Vec<Reply> {
        self.expect(
            if lmtp {
                "LHLO test.local"
            } else {
                "EHLO test.local"
            },
            250,
        )
        .await;
        self.expect(&format!("MAIL FROM:<{from}>"), 250).await;
        for r in rcpts {
            self.expect(&format!("RCPT TO:<{r}>"), 250).await;
        }
        self.expect("DATA", 354).await;
        self.body(body).await;
        let n = if lmtp { rcpts.len() } else { 1 };
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.reply().await);
        }
        out
    }
}

/// One message, one connection: EHLO, MAIL, RCPT, DATA, QUIT. Returns the end-of-data reply.
pub async fn send_one(addr: SocketAddr, from: &str, rcpts: &[&str], body: &[u8]) -> Reply {
    let mut c = Client::greeted(addr).await;
    let r = c.transaction(false, from, rcpts, body).await.remove(0);
    let _ = c.cmd("QUIT").await;
    r
}
