//! The health probe: every few seconds, clamd and the spam engine are pinged and the reinjection server's
//! greeting is read, so `postsift_scanner_up`, `postsift_reinject_up` and `/readyz` tell the
//! truth even when no mail is flowing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::Shared;

/// Probes until shutdown.
pub async fn probe_loop(shared: Arc<Shared>) {
    let interval = Duration::from_secs(shared.config.metrics.probe_interval);
    loop {
        probe_once(&shared).await;
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
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
