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
    let mut server = miltr_server::Server::new(&mut session, false, MAX_PACKET);
    let mut stream = stream.compat();
    tokio::select! {
        r = server.handle_connection(&mut stream) => {
            if let Err(e) = r {
                tracing::debug!(error = %crate::escape::Shown(&e.to_string()), "milter connection ended");
            }
        }
        // A message being checked finishes first only if Postfix's own timeouts allow:
        // between messages the connection simply ends, and Postfix applies its
        // milter_default_action to the next message.
        _ = shutdown.cancelled() => {}
    }
    m.sessions_active.dec();
    m.sessions.inc();
}
