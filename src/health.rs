//! The health probe: every few seconds, clamd and the spam engine are pinged and the reinjection server's
//! greeting is read, so `postsift_scanner_up`, `postsift_reinject_up` and `/readyz` tell the
//! truth even when no mail is flowing. The probe follows the current configuration: after a
//! reload it probes the new peers at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::Shared;

/// Probes the peers of the current [`Shared`] until shutdown, at once again whenever a reload
/// replaces it.
pub async fn probe_loop(mut current: watch::Receiver<Arc<Shared>>) {
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

pub async fn probe_once(shared: &Shared) {
    let m = &shared.metrics;
    let clamd = async {
        match shared.scanners.clamd() {
            Some(c) => Some(c.ping().await),
            None => None,
        }
    };
    let spam = async {
        match shared.scanners.spam() {
            Some(engine) => Some((engine.name(), engine.ping().await)),
            None => None,
        }
    };
    let reinject = reinject_answers(&shared.config.reinject.to, Duration::from_secs(5));
    let (clamd, spam, reinject) = tokio::join!(clamd, spam, reinject);
    if let Some(up) = clamd {
        m.set_scanner_up("clamd", up);
    }
    if let Some((name, up)) = spam {
        m.set_scanner_up(name, up);
    }
    m.reinject_up.set(reinject as i64);
    let ready = clamd.unwrap_or(true) && spam.is_none_or(|(_, up)| up) && reinject;
    m.ready.store(ready, Ordering::Relaxed);
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
