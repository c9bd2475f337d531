//! The accept loop: client access control, the session limit, one task per session, and the
//! graceful drain on shutdown (stop accepting, let messages in flight finish, `421 4.3.2` to
//! idle sessions, give up after the grace period).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::smtp::reply::{self, Reply};
use crate::smtp::session::Session;
use crate::Shared;

/// Serves on already bound listeners until `shutdown` is cancelled, then drains. Tests bind
/// `127.0.0.1:0` and run many servers side by side.
pub async fn serve(
    config: Config,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let grace = Duration::from_secs(config.server.shutdown_grace);
    let limit = Arc::new(Semaphore::new(config.server.max_sessions));
    let metrics_listener = match config.metrics.listen.as_str() {
        "" => None,
        addr => Some(TcpListener::bind(addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} (metrics.listen): {e}"),
            )
        })?),
    };
    let shared = Arc::new(Shared::new(config, shutdown.clone()));
    let tracker = TaskTracker::new();
    if let Some(l) = metrics_listener {
        tracing::info!(addr = %shared.config.metrics.listen, "metrics endpoint");
        tracker.spawn(crate::metrics::serve_http(
            l,
            shared.metrics.clone(),
            shutdown.clone(),
        ));
    }
    tracker.spawn(crate::health::probe_loop(shared.clone()));

    for listener in listeners {
        let bound = listener.local_addr()?;
        let shared = shared.clone();
        let limit = limit.clone();
        let sessions = tracker.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::error!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let shared = shared.clone();
                let permit = limit.clone().try_acquire_owned();
                if permit.is_err() {
                    shared.metrics.replies.with_label_values(&["4xx"]).inc();
                }
                sessions.spawn(async move {
                    match permit {
                        Ok(_permit) => handle(stream, peer, bound, shared).await,
                        Err(_) => refuse(stream, reply::too_busy()).await,
                    }
                });
            }
        });
    }

    shutdown.cancelled().await;
    tracker.close();
    tracing::info!(tasks = tracker.len(), "shutting down: draining sessions");
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            left = tracker.len(),
            "grace period over; unanswered messages stay queued in Postfix"
        );
    }
    Ok(())
}

/// `bound` is the listener's address: the session's local address unless the listener is on a
/// wildcard address (saves a getsockname per connection).
async fn handle(stream: TcpStream, peer: SocketAddr, bound: SocketAddr, shared: Arc<Shared>) {
    if !allowed(&shared.config, peer.ip()) {
        tracing::warn!(%peer, "client not in server.allow_networks");
        shared.metrics.replies.with_label_values(&["5xx"]).inc();
        return refuse(stream, reply::access_denied()).await;
    }
    let _ = stream.set_nodelay(true);
    let local = if bound.ip().is_unspecified() {
        stream.local_addr().unwrap_or(bound)
    } else {
        bound
    };
    Session::new(stream, peer, local, shared).run().await;
}

async fn refuse(mut stream: TcpStream, r: Reply) {
    let mut out = Vec::new();
    r.write_to(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&out)).await;
    let _ = stream.shutdown().await;
}

fn allowed(config: &Config, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    config.server.allow_networks.iter().any(|n| n.contains(&ip))
}
