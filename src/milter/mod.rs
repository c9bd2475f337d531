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
