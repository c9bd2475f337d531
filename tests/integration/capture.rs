//! A capturing SMTP server for the reinjection side: records every transaction postsift sends
//! (XFORWARD, MAIL, RCPT lines and the dot-unstuffed body) so tests can assert on the exact
//! bytes, and can misbehave on demand (refuse a recipient, 421 after DATA, hang) — faults a
//! real Postfix cannot produce when a test wants them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Default)]
pub struct Transaction {
    pub xforward: Vec<String>,
    pub mail: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    /// DATA had arrived already when MAIL was read: sent in the same write (pipelined).
    pub data_with_mail: bool,
}

impl Transaction {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// The header section (up to the first blank line).
    pub fn headers(&self) -> String {
        let t = self.text();
        t.split("\r\n\r\n").next().unwrap_or("").to_owned()
    }
}

#[derive(Debug, Clone, Default)]
pub enum AfterData {
    #[default]
    Accept,
    /// Answer this reply to the final dot (and close after a 421).
    Reply(String),
    /// Never answer the final dot.
    Hang,
}

#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Recipients (substring match) refused with this reply.
    pub refuse_rcpt: Vec<(String, String)>,
    pub after_data: AfterData,
    /// Don't advertise XFORWARD.
    pub no_xforward: bool,
    /// Don't advertise PIPELINING.
    pub no_pipelining: bool,
    /// After each accepted message, answer the next command with 421 and close, as Postfix's
    /// smtpd does when an idle connection times out.
    pub idle_timeout_after_message: bool,
}

#[derive(Clone)]
pub struct Capture {
    pub addr: SocketAddr,
    pub messages: Arc<Mutex<Vec<Transaction>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    counter: Arc<Mutex<u64>>,
}

impl Capture {
    pub async fn start() -> Capture {
        Self::start_with(Behaviour::default()).await
    }

    pub async fn start_with(b: Behaviour) -> Capture {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cap = Capture {
            addr: listener.local_addr().unwrap(),
            messages: Arc::default(),
            behaviour: Arc::new(Mutex::new(b)),
            counter: Arc::default(),
        };
        let c = cap.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    let _ = c.session(s).await;
                });
            }
        });
        cap
    }

    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    pub fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }

    pub fn all(&self) -> Vec<Transaction> {
        self.messages.lock().unwrap().clone()
    }

    pub fn last(&self) -> Transaction {
        self.messages
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no message captured")
    }

    /// Waits until `n` messages arrived (or panics after 180 s: a hang guard, not a timing).
    pub async fn wait_for(&self, n: usize) -> Vec<Transaction> {
        for _ in 0..1800 {
            if self.count() >= n {
                return self.all();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("expected {n} messages at the sink, got {}", self.count());
    }

    async fn session(&self, s: tokio::net::TcpStream) -> std::io::Result<()> {
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"220 capture.test ESMTP\r\n").await?;
        let mut t = Transaction::default();
        let mut xf = Vec::new();
        let mut stale = false;
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let cmd = line.trim_end().to_string();
            let upper = cmd.to_ascii_uppercase();
            let b = self.behaviour.lock().unwrap().clone();
            if stale {
                w.write_all(b"421 4.4.2 capture.test Error: timeout exceeded\r\n")
                    .await?;
                return Ok(());
            }
            if upper.starts_with("EHLO") {
                let xfl = if b.no_xforward {
                    String::new()
                } else {
                    "250-XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE\r\n".into()
                };
                let pl = if b.no_pipelining {
                    ""
                } else {
                    "250-PIPELINING\r\n"
                };
                let resp = format!(
                    "250-capture.test\r\n{pl}250-SIZE 104857600\r\n{xfl}250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n"
                );
                w.write_all(resp.as_bytes()).await?;
            } else if upper.starts_with("XFORWARD") {
                xf.push(cmd);
                w.write_all(b"250 2.0.0 Ok\r\n").await?;
            } else if upper.starts_with("MAIL") {
                t = Transaction {
                    xforward: std::mem::take(&mut xf),
                    mail: cmd,
                    data_with_mail: r.buffer().windows(6).any(|w| w == b"DATA\r\n"),
                    ..Default::default()
                };
                w.write_all(b"250 2.1.0 Ok\r\n").await?;
            } else if upper.starts_with("RCPT") {
                if let Some((_, reply)) = b
                    .refuse_rcpt
                    .iter()
                    .find(|(pat, _)| cmd.contains(pat.as_str()))
                {
                    w.write_all(format!("{reply}\r\n").as_bytes()).await?;
                } else {
                    t.rcpts.push(cmd);
                    w.write_all(b"250 2.1.5 Ok\r\n").await?;
                }
            } else if upper == "DATA" {
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = Vec::new();
                let mut l = Vec::new();
                loop {
                    l.clear();
                    if r.read_until(b'\n', &mut l).await? == 0 {
                        return Ok(());
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    let body = if l.starts_with(b".") { &l[1..] } else { &l[..] };
                    data.extend_from_slice(body);
                }
                t.data = data;
                match b.after_data {
                    AfterData::Accept => {
                        let id = {
                            let mut c = self.counter.lock().unwrap();
                            *c += 1;
                            *c
                        };
                        self.messages.lock().unwrap().push(std::mem::take(&mut t));
                        w.write_all(format!("250 2.0.0 Ok: queued as CAP{id}\r\n").as_bytes())
                            .await?;
                        stale = b.idle_timeout_after_message;
                    }
                    AfterData::Reply(rep) => {
                        w.write_all(format!("{rep}\r\n").as_bytes()).await?;
                        if rep.starts_with("421") {
                            return Ok(());
                        }
                    }
                    AfterData::Hang => {
                        let mut sink = [0u8; 1];
                        let _ = r.read(&mut sink).await;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
            } else if upper == "RSET" {
                t = Transaction::default();
                xf.clear();
                w.write_all(b"250 2.0.0 Ok\r\n").await?;
            } else if upper == "QUIT" {
                w.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            } else {
                w.write_all(b"250 2.0.0 Ok\r\n").await?;
            }
        }
    }
}
