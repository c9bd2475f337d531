//! The before-queue front end: a milter for Postfix's `smtpd_milters` (`milter_protocol = 6`).
//! The protocol is the `miltr-server` crate's (MIT, async; framing, option negotiation and the
//! message types of `miltr-common`); this module only maps its events onto postsift's
//! envelope, spool and pipeline ([`session`]), the pipeline's decision onto milter actions and
//! header edits ([`deliver`], [`edits`]), and records its own series ([`metrics`]). Imports go
//! one way: milter → filter, never back.
//!
//! The listener shares the server's accept loop, client ACL, drain and reload: each connection
//! gets the runtime current when it was accepted.

pub mod deliver;
pub mod edits;
pub mod idle;
pub mod metrics;
pub mod session;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::runtime::Runtime;

pub use session::MilterSession;

/// Largest milter packet taken from Postfix: a header field can be up to Postfix's
/// `header_size_limit` (100 KiB by default), a body chunk 64 KiB.
const MAX_PACKET: usize = 1 << 20;

/// Serves one milter connection to its end (Postfix closes it after its SMTP session). `peer`
/// and `local` are the milter connection's own addresses (loopback, or none for a Unix socket).
pub async fn serve_conn<S>(stream: S, peer: SocketAddr, local: SocketAddr, shared: Arc<Runtime>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let m = shared.metrics.milter.clone();
    m.sessions_active.inc();
    let shutdown = shared.shutdown.clone();
    let idle = std::time::Duration::from_secs(shared.config.milter.idle_timeout);
    let stream = idle::Idle::new(stream, idle);
    let mut session = MilterSession::new(shared, peer, local);
    let busy = session.busy.clone();
    let mut server = miltr_server::Server::new(&mut session, false, MAX_PACKET);
    let mut stream = stream.compat();
    let conn = server.handle_connection(&mut stream);
    tokio::pin!(conn);
    let ended = |r: Result<(), miltr_server::Error<session::Error>>| {
        if let Err(e) = r {
            let e = e.to_string();
            tracing::debug!(error = %crate::escape::Shown(&e), "milter connection ended");
        }
    };
    tokio::select! {
        r = &mut conn => ended(r),
        // On shutdown a message being checked gets its answer first; between messages the
        // connection simply ends, and Postfix applies its milter_default_action to the
        // session's next message.
        _ = shutdown.cancelled() => {
            while busy.0.load(Ordering::SeqCst) {
                tokio::select! {
                    r = &mut conn => { ended(r); break; }
                    _ = busy.1.notified() => {}
                }
            }
        }
    }
    m.sessions_active.dec();
    m.sessions.inc();
}

#[cfg(test)]
mod tests {
    //! The milter connection over an in-memory stream, the client's packets written by hand.
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;

    fn packet(cmd: u8, data: &[u8]) -> Vec<u8> {
        let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
        p.push(cmd);
        p.extend_from_slice(data);
        p
    }

    /// Reads one packet; its command byte.
    async fn reply(c: &mut tokio::io::DuplexStream) -> u8 {
        let mut len = [0u8; 4];
        c.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        c.read_exact(&mut body).await.unwrap();
        body[0]
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_ends_at_the_idle_timeout() {
        let toml = "[clamd]\nendpoints = []\n[spamd]\nendpoints = []\n[metrics]\nlisten = \"\"\n\
                    [milter]\nidle_timeout = 1\n";
        let config = crate::config::Config::parse(toml, std::path::Path::new("t.toml")).unwrap();
        let shared = Arc::new(Runtime::new(config, CancellationToken::new()).unwrap());
        let (_client, server) = tokio::io::duplex(1024);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        // The client stays connected and silent: the connection ends by itself.
        serve_conn(server, any, any, shared.clone()).await;
        assert!(shared
            .metrics
            .encode()
            .contains("postsift_milter_sessions_total 1"));
    }

    #[tokio::test]
    async fn a_connection_that_dies_mid_message_leaves_no_spool_behind() {
        let toml = "[server]\nhostname = \"filter.test\"\nspool_threshold = 1024\n\
                    [clamd]\nendpoints = []\n[spamd]\nendpoints = []\n[auth]\nenabled = false\n\
                    [metrics]\nlisten = \"\"\n";
        let config = crate::config::Config::parse(toml, std::path::Path::new("t.toml")).unwrap();
        let shared = Arc::new(Runtime::new(config, CancellationToken::new()).unwrap());
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let task = tokio::spawn(serve_conn(server, any, any, shared.clone()));

        let mut optneg = 6u32.to_be_bytes().to_vec();
        optneg.extend_from_slice(&0x1ffu32.to_be_bytes());
        optneg.extend_from_slice(&0x1f_ffffu32.to_be_bytes());
        client.write_all(&packet(b'O', &optneg)).await.unwrap();
        assert_eq!(reply(&mut client).await, b'O');
        let steps: [(u8, &[u8]); 6] = [
            (b'C', b"client.example\x004\x00\x19192.0.2.10\x00"),
            (b'H', b"client.example\x00"),
            (b'M', b"<a@example.org>\x00"),
            (b'R', b"<b@example.com>\x00"),
            (b'L', b"Subject\x00 hi\x00"),
            (b'N', b""),
        ];
        for (cmd, data) in steps {
            client.write_all(&packet(cmd, data)).await.unwrap();
            assert_eq!(reply(&mut client).await, b'c', "after {}", cmd as char);
        }
        // Past spool_threshold: the body goes to a spool file.
        let chunk = vec![b'x'; 60_000];
        client.write_all(&packet(b'B', &chunk)).await.unwrap();
        assert_eq!(reply(&mut client).await, b'c');
        assert_eq!(shared.budget.files(), 1);
        assert!(shared.budget.memory() > 0);
        // Postfix goes away before the end of the message.
        drop(client);
        task.await.unwrap();
        assert_eq!((shared.budget.memory(), shared.budget.files()), (0, 0));
        let text = shared.metrics.encode();
        assert!(text.contains("postsift_milter_sessions_total 1"), "{text}");
        assert!(text.contains("postsift_milter_sessions_active 0"), "{text}");
    }
}
