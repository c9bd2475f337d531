//! Postfix's smtp-sink on 127.0.0.1: a real next hop for reinjection that dumps every message
//! it takes to a file of its own (`-d`), so a test can count deliveries. It offers PIPELINING
//! unless started with `-p`.

use std::ffi::OsString;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::{free_port, localhost, Peer, PeerProcess};

/// A running smtp-sink in its temp dir; messages in `<dir>/dump/`.
pub struct SmtpSink {
    /// 127.0.0.1:<free port>.
    pub addr: SocketAddr,
    args: Vec<OsString>,
    peer: PeerProcess,
}

impl SmtpSink {
    /// Starts smtp-sink with `extra` options before its address (e.g. `-p`: no PIPELINING);
    /// blocks until its port accepts connections.
    pub fn start(extra: &[&str]) -> SmtpSink {
        let peer = PeerProcess::new("smtp-sink-");
        let port = free_port();
        // smtp-sink wants a user to switch to when started as root; it dumps as that user. Run
        // as anyone else (scripts/test.sh runs the tests as nobody), it stays that user.
        let dump = peer.dir.join("dump");
        fs::create_dir(&dump).expect("create the dump dir");
        super::chmod(&dump, 0o777);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let user: &[&str] = if root { &["-u", "postfix"] } else { &[] };
        let mut args: Vec<OsString> = user.iter().map(OsString::from).collect();
        args.extend(extra.iter().map(OsString::from));
        args.push("-d".into());
        args.push(peer.dir.join("dump/%H%M%S.").into());
        args.push(format!("127.0.0.1:{port}").into());
        args.push("64".into());
        let mut sink = SmtpSink {
            addr: localhost(port),
            args,
            peer,
        };
        sink.start_again();
        sink
    }

    /// The dumped messages, each as text (smtp-sink's X-* records, then the message).
    ///
    /// smtp-sink opens a dump file at MAIL and, when a transaction is cut off (`-q`, `-Q`, a
    /// client gone), closes the connection first and unlinks the file after. A client that has
    /// seen the close can read the dir in between and count a message that never came (seen in
    /// CI). So this first waits for the sink's greeting on a new connection: smtp-sink is one
    /// process, and it greets only after the handler that closed and unlinked has returned.
    pub fn messages(&self) -> Vec<String> {
        self.settle();
        let Ok(dir) = fs::read_dir(self.peer.dir.join("dump")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in dir.flatten() {
            if e.path().is_dir() {
                for f in fs::read_dir(e.path()).into_iter().flatten().flatten() {
                    out.push(super::read_lossy(&f.path()));
                }
            } else {
                out.push(super::read_lossy(&e.path()));
            }
        }
        out
    }

    /// Waits (5 s at most) for the greeting on a fresh connection: every earlier event has then
    /// been handled. Does nothing when the sink is stopped.
    fn settle(&self) {
        use std::io::Read;
        let Ok(mut c) = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)) else {
            return;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let mut b = [0u8; 64];
        let _ = c.read(&mut b);
    }
}

port_peer!(SmtpSink, "smtp-sink", "/usr/sbin/smtp-sink");
