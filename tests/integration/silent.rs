//! A fake peer that accepts and never answers (a scanner, a reinjection server or a resolver
//! that hangs: the one fault a real peer cannot give on demand), shared by the fault and outage
//! tests.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Notify;

/// Where a [`Silent`] listens.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    async fn accept(&self) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        Ok(match self {
            Listener::Tcp(l) => Box::new(l.accept().await?.0),
            Listener::Unix(l) => Box::new(l.accept().await?.0),
        })
    }
}

/// A fake peer that accepts, reads everything, and never answers; it counts the connections
/// and keeps what it read, so a test can wait until a given request has reached it.
#[derive(Clone, Default)]
pub struct Silent {
    /// `127.0.0.1:port`, or the socket's path.
    pub addr: String,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    heard: Arc<(Mutex<Vec<u8>>, Notify)>,
}

impl Silent {
    /// A TCP one on 127.0.0.1.
    pub async fn tcp() -> Silent {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        Silent::serve(addr, Listener::Tcp(l))
    }

    /// A Unix-socket one in `dir`.
    pub fn unix(dir: &std::path::Path) -> Silent {
        let path = dir.join("silent.sock");
        let l = UnixListener::bind(&path).unwrap();
        Silent::serve(path.display().to_string(), Listener::Unix(l))
    }

    /// Takes every connection of `listener` (counted) and swallows it.
    fn serve(addr: String, listener: Listener) -> Silent {
        let peer = Silent {
            addr,
            ..Default::default()
        };
        let p = peer.clone();
        tokio::spawn(async move {
            while let Ok(s) = listener.accept().await {
                p.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(p.clone().swallow(s));
            }
        });
        peer
    }

    /// Reads everything the peer sends and never answers.
    async fn swallow(self, mut s: impl AsyncRead + Unpin) {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            self.heard.0.lock().unwrap().extend_from_slice(&buf[..n]);
            self.heard.1.notify_waiters();
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }

    /// Waits (at most 30 s) until `needle` arrived: health probes (PING) don't count, a
    /// message being scanned does.
    pub async fn wait_for(&self, needle: &[u8]) {
        let arrived = async {
            loop {
                // Registered before the check, so a read in between still wakes it.
                let more = self.heard.1.notified();
                let found = {
                    let got = self.heard.0.lock().unwrap();
                    got.windows(needle.len()).any(|w| w == needle)
                };
                if found {
                    return;
                }
                more.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), arrived)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{:?} never reached the silent peer",
                    String::from_utf8_lossy(needle)
                )
            });
    }

    /// How many times `needle` was heard.
    pub fn count(&self, needle: &[u8]) -> usize {
        let heard = self.heard.0.lock().unwrap();
        heard.windows(needle.len()).filter(|w| *w == needle).count()
    }
}
