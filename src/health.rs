//! The health probe: every few seconds, each clamd and spam engine endpoint is pinged, the
//! resolver asked for `health.dns_probe_name` and the reinjection server's greeting read, each
//! result fed to that endpoint's health state ([`crate::peers`]: this is what brings a peer
//! marked down back), so `postsift_scanner_up`, `postsift_reinject_up` and `/readyz` tell the
//! truth even when no mail is flowing. The probe follows the current configuration: after a
//! reload it probes the new peers at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::runtime::Runtime;

/// Probes the peers of the current [`Runtime`] until shutdown, at once again whenever a reload
/// replaces it.
pub async fn probe_loop(mut current: watch::Receiver<Arc<Runtime>>) {
    loop {
        let shared = current.borrow_and_update().clone();
        probe_once(&shared).await;
        let interval = Duration::from_secs(shared.config.metrics.probe_interval);
        let shutdown = shared.shutdown.clone();
        // Not held while waiting: the old generation's clients go when its last session ends.
        drop(shared);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            changed = current.changed() => if changed.is_err() { return },
        }
    }
}

pub async fn probe_once(shared: &Runtime) {
    let m = &shared.metrics;
    let limit = Duration::from_secs(shared.config.health.probe_timeout);
    // Every endpoint of every peer at once, each fed to its health state (see `peers`).
    let clamd = async {
        let c = shared.scanners.clamd()?;
        let pings = (0..c.health().len()).map(|i| async move {
            let ok = c.ping_endpoint(i, limit).await;
            c.health().probed(i, ok);
            ok
        });
        Some(any(pings).await)
    };
    let spam = async {
        let engine = shared.scanners.spam()?;
        let pings = (0..engine.health().len()).map(|i| async move {
            let ok = engine.ping_endpoint(i, limit).await;
            engine.health().probed(i, ok);
            ok
        });
        let up = any(pings).await;
        Some((engine.scanner(), up))
    };
    let dns = async {
        if let Some(auth) = shared.scanners.auth() {
            let r = auth.resolver();
            r.health().probed(0, r.probe(limit).await);
        }
    };
    let reinject = async {
        let ok = reinject_answers(&shared.config.reinject.to, limit).await;
        shared.reinjector.health().probed(0, ok);
        ok
    };
    let (clamd, spam, (), reinject) = tokio::join!(clamd, spam, dns, reinject);
    if let Some(up) = clamd {
        m.scan.set_scanner_up(crate::scan::Scanner::Clamd, up);
    }
    if let Some((name, up)) = spam {
        m.scan.set_scanner_up(name, up);
    }
    m.reinject.reinject_up.set(reinject as i64);
    // Mail cannot pass without these; a resolver down only makes the checks that need it
    // temperror, so it shows in postsift_peer_up{peer="dns"} and its alert, not here.
    let usable = shared
        .peer_groups()
        .iter()
        .all(|g| g.peer() == crate::peers::Peer::Dns || g.usable());
    let ready = clamd.unwrap_or(true) && spam.is_none_or(|(_, up)| up) && reinject && usable;
    m.endpoint.ready.store(ready, Ordering::Relaxed);
}

/// True if `to` greets with 220 within `timeout` (we then say QUIT).
async fn reinject_answers(to: &str, timeout: Duration) -> bool {
    let attempt = async {
        let s = TcpStream::connect(to).await.ok()?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).await.ok()?;
        let _ = r.get_mut().write_all(b"QUIT\r\n").await;
        Some(line.starts_with("220"))
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

/// Runs all of `probes` at once; true if any said true.
async fn any<F: std::future::Future<Output = bool>>(probes: impl Iterator<Item = F>) -> bool {
    let mut fs: Vec<std::pin::Pin<Box<F>>> = probes.map(Box::pin).collect();
    let mut up = false;
    std::future::poll_fn(move |cx| {
        fs.retain_mut(|f| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(ok) => {
                up |= ok;
                false
            }
            std::task::Poll::Pending => true,
        });
        match fs.is_empty() {
            true => std::task::Poll::Ready(up),
            false => std::task::Poll::Pending,
        }
    })
    .await
}
