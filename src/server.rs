//! The accept loops: client access control, the session limit, one task per session, the
//! graceful drain on shutdown (stop accepting, let messages in flight finish, `421 4.3.2` to
//! idle sessions, give up after the grace period), and the configuration reload (SIGHUP): new
//! sessions get the new configuration while sessions in flight finish under theirs.
//!
//! The same accept loop, client ACL, connection limit and drain serve the greylisting policy
//! listeners (`[greylist] listen`, TCP or Unix sockets), with a limit of their own: every
//! Postfix smtpd process keeps a policy connection open, and those must not take the content
//! filter's session slots.

pub mod metrics;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, PolicyListen};
use crate::greylist::{self, store::Store};
use crate::runtime::Runtime;
use crate::runtime::{Lasting, Metrics};
use crate::smtp::reply::{self, Reply};
use crate::smtp::session::Session;

/// One reload request: the configuration file as loaded and validated again, or the error
/// that gave (the reload then fails and the error is logged, naming the bad key).
pub type Reload = Result<Config, config::Error>;

/// Why a reload was refused; the running configuration then stays entirely in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error("cannot listen on {addr} (server.listen): {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(transparent)]
    Runtime(#[from] crate::runtime::Error),
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    /// The content filter (SMTP/LMTP).
    Filter,
    /// The greylisting policy service.
    Policy,
    /// The milter front end (`[milter] listen`).
    Milter,
}

/// A bound listener of either family.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// An accepted connection.
enum Conn {
    Tcp(TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    async fn accept(&self) -> io::Result<Conn> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, p)| Conn::Tcp(s, p)),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
        }
    }
}

/// The greylisting store (opened once: it outlives reloads), the policy listeners and their
/// connection limit; `None` when `[greylist] listen` is empty at start.
struct PolicyService {
    store: Arc<Store>,
    listeners: Vec<(String, Listener)>,
    limit: Arc<Semaphore>,
    /// Unix socket files to remove at exit.
    sockets: Vec<std::path::PathBuf>,
}

impl PolicyService {
    async fn bind(config: &Config) -> io::Result<Option<PolicyService>> {
        let g = &config.greylist;
        if !g.enabled() {
            return Ok(None);
        }
        let location = greylist::store::Location::parse(&g.store);
        let store = Store::open(&location, Duration::from_secs(g.store_timeout))
            .map_err(|e| io::Error::other(format!("greylist.store {:?}: {e}", g.store)))?;
        let mut listeners = Vec::new();
        let mut sockets = Vec::new();
        for l in g.listeners() {
            let bound = match &l {
                PolicyListen::Tcp(addr) => TcpListener::bind(addr).await.map(Listener::Tcp),
                PolicyListen::Unix(path) => greylist::socket::bind(path, g).map(Listener::Unix),
            };
            let name = match &l {
                PolicyListen::Tcp(a) => a.to_string(),
                PolicyListen::Unix(p) => format!("unix:{}", p.display()),
            };
            let listener = bound.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {name} (greylist.listen): {e}"),
                )
            })?;
            if let PolicyListen::Unix(p) = l {
                sockets.push(p);
            }
            tracing::info!(addr = %name, store = store.kind(), "greylisting policy service");
            listeners.push((name, listener));
        }
        Ok(Some(PolicyService {
            store: Arc::new(store),
            listeners,
            limit: Arc::new(Semaphore::new(g.max_connections)),
            sockets,
        }))
    }
}

/// Binds `[milter] listen` (a restart-only key, like the policy listeners): the listeners,
/// their names, and the Unix socket files to remove at exit.
async fn bind_milter(
    config: &Config,
) -> io::Result<(Vec<(String, Listener)>, Vec<std::path::PathBuf>)> {
    let (mut out, mut sockets) = (Vec::new(), Vec::new());
    for l in config.milter.listeners() {
        let (name, bound) = match &l {
            PolicyListen::Tcp(a) => (a.to_string(), TcpListener::bind(a).await.map(Listener::Tcp)),
            PolicyListen::Unix(p) => (
                format!("unix:{}", p.display()),
                crate::fsmode::bind_unix(p, config.milter.socket_mode(), (None, None))
                    .map(Listener::Unix),
            ),
        };
        let listener = bound.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {name} (milter.listen): {e}"),
            )
        })?;
        if let PolicyListen::Unix(p) = l {
            sockets.push(p);
        }
        tracing::info!(addr = %name, "milter (before-queue) listener");
        out.push((name, listener));
    }
    Ok((out, sockets))
}

/// The quarantine, when the configuration can quarantine or release.
fn open_quarantine(config: &Config) -> io::Result<Option<Arc<crate::quarantine::Quarantine>>> {
    if !config.uses_quarantine() || config.quarantine.in_sql() {
        return Ok(None);
    }
    let dir = &config.quarantine.dir;
    crate::quarantine::Quarantine::open(dir)
        .map(|q| Some(Arc::new(q)))
        .map_err(|e| io::Error::other(format!("quarantine.dir {}: {e}", dir.display())))
}

/// Binds `[quarantine] release_listen` (a Unix socket gets mode 0600: the protocol has no
/// authentication of its own).
async fn bind_release(l: &PolicyListen) -> io::Result<(String, Listener)> {
    let (name, bound) = match l {
        PolicyListen::Tcp(a) => (a.to_string(), TcpListener::bind(a).await.map(Listener::Tcp)),
        PolicyListen::Unix(p) => {
            let bound = crate::fsmode::bind_unix(p, 0o600, (None, None)).map(Listener::Unix);
            (format!("unix:{}", p.display()), bound)
        }
    };
    let l = bound.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {name} (quarantine.release_listen): {e}"),
        )
    })?;
    Ok((name, l))
}

/// Accepts AM.PDP release connections until shutdown; each gets the generation current when
/// it connected. At most `quarantine.release_max_connections` at once: more are closed at
/// accept, so idle connections cannot take the descriptors the mail listeners need.
async fn release_loop(
    listener: Listener,
    current: watch::Receiver<Arc<Runtime>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    // Taken from the configuration at start (a restart-only key, like the listener).
    let limit = Arc::new(Semaphore::new(
        current.borrow().config.quarantine.release_max_connections,
    ));
    loop {
        let conn = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = listener.accept() => c,
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "release accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = current.borrow().clone();
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared
                .metrics
                .server
                .refused(metrics::Listener::Release)
                .inc();
            tracing::warn!("quarantine.release_max_connections reached; release connection closed");
            continue;
        };
        match conn {
            Conn::Tcp(s, peer) => {
                if !allowed(&shared.config, peer.ip()) {
                    tracing::warn!(%peer, "release client not in server.allow_networks; closed");
                    continue;
                }
                tracker.spawn(async move {
                    let _permit = permit;
                    if let Err(e) = crate::quarantine::ampdp::serve_conn(s, shared).await {
                        tracing::debug!(error = %e, "release connection");
                    }
                });
            }
            Conn::Unix(s) => {
                tracker.spawn(async move {
                    let _permit = permit;
                    if let Err(e) = crate::quarantine::ampdp::serve_conn(s, shared).await {
                        tracing::debug!(error = %e, "release connection");
                    }
                });
            }
        }
    }
}

/// Serves on already bound listeners until `shutdown` is cancelled, then drains. Tests bind
/// `127.0.0.1:0` and run many servers side by side.
pub async fn serve(
    config: Config,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    // The sender goes at once: the channel reads as closed and nothing is ever reloaded.
    let (_, no_reloads) = mpsc::channel(1);
    serve_with_reload(config, listeners, shutdown, no_reloads).await
}

/// Like [`serve`], and applies every [`Reload`] received on `reload` (the daemon sends one per
/// SIGHUP). `listeners[i]` serves `config.server.listen[i]`: a reload compares configured
/// addresses, keeps the listeners of those still listed, binds the new ones and closes the
/// rest. (A listener beyond the configured list is known by its own address.)
pub async fn serve_with_reload(
    config: Config,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
    mut reload: mpsc::Receiver<Reload>,
) -> io::Result<()> {
    let metrics_listener = match config.metrics.listen.as_str() {
        "" => None,
        addr => Some(TcpListener::bind(addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} (metrics.listen): {e}"),
            )
        })?),
    };
    let configured = config.server.listen.clone();
    let mut policy = PolicyService::bind(&config).await?;
    let (milter_listeners, milter_sockets) = bind_milter(&config).await?;
    let milter_limit = config.milter.max_connections;
    let quarantine = open_quarantine(&config)?;
    let release_listener = match config.quarantine.release_listener() {
        None => None,
        Some(l) => Some(bind_release(&l).await?),
    };
    let retention_days = config.quarantine.retention_days;
    let lasting = Lasting {
        greylist_store: policy.as_ref().map(|p| p.store.clone()),
        quarantine: quarantine.clone(),
        ..Lasting::new(&config, shutdown.clone())
    };
    let shared = Runtime::build(config, &lasting).map_err(io::Error::other)?;
    shared.declare_scanners();
    if let Some(g) = &shared.greylist {
        let (clients, recipients) = g.whitelist_len();
        tracing::info!(clients, recipients, "greylist whitelists loaded");
    }
    let metrics = shared.metrics.clone();
    metrics.server.config_applied();
    let limit = Arc::new(Semaphore::new(shared.config.server.max_sessions));
    // A watch channel rather than arc-swap: tokio already has it, and besides the current value
    // it wakes the health probe, which then probes the new peers at once. Each accept takes a
    // clone of the Arc; a session keeps the generation it started with until it ends.
    let (current, _) = watch::channel(Arc::new(shared));
    let tracker = TaskTracker::new();
    if let Some(l) = metrics_listener {
        tracing::info!(addr = %current.borrow().config.metrics.listen, "metrics endpoint");
        tracker.spawn(crate::metrics::serve_http(
            l,
            metrics.endpoint.clone(),
            current.borrow().config.metrics.max_connections,
            shutdown.clone(),
        ));
    }
    tracker.spawn(crate::health::probe_loop(current.subscribe()));
    if let Some(p) = &policy {
        let params = greylist::decide::Params::from(&current.borrow().config.greylist);
        tracker.spawn(greylist::maintenance(
            p.store.clone(),
            params,
            current.borrow().config.greylist.max_triplets,
            metrics.greylist.clone(),
            shutdown.clone(),
        ));
    }

    spawn_quarantine_maintenance(
        &tracker,
        quarantine.as_ref(),
        retention_days,
        &current,
        &shutdown,
    );
    let mut sockets = Vec::new();
    if let Some((name, l)) = release_listener {
        tracing::info!(addr = %name, "quarantine release service (AM.PDP)");
        if let Listener::Unix(_) = &l {
            sockets.push(std::path::PathBuf::from(name.trim_start_matches("unix:")));
        }
        tracker.spawn(release_loop(
            l,
            current.subscribe(),
            tracker.clone(),
            shutdown.clone(),
        ));
    }

    let mut running = Running {
        current,
        lasting,
        limit,
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        accepting: Vec::new(),
    };
    for (i, listener) in listeners.into_iter().enumerate() {
        let bound = listener.local_addr()?;
        running.accept_on(configured.get(i).copied().unwrap_or(bound), listener, bound);
    }
    if let Some(p) = policy.take() {
        for (name, listener) in p.listeners {
            tracker.spawn(accept_loop(
                listener,
                (
                    SocketAddr::from(([0, 0, 0, 0], 0)),
                    SocketAddr::from(([0, 0, 0, 0], 0)),
                    false,
                ),
                Service::Policy,
                running.current.subscribe(),
                p.limit.clone(),
                tracker.clone(),
                shutdown.child_token(),
            ));
            tracing::debug!(%name, "policy accept loop started");
        }
        sockets.extend(p.sockets);
    }
    running.accept_milter(milter_listeners, milter_limit);
    sockets.extend(milter_sockets);

    let mut reloads_open = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = reload.recv(), if reloads_open => match r {
                Some(r) => running.reload(r).await,
                None => reloads_open = false,
            },
        }
    }

    let grace = Duration::from_secs(running.current.borrow().config.server.shutdown_grace);
    tracker.close();
    tracing::info!(tasks = tracker.len(), "shutting down: draining sessions");
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            left = tracker.len(),
            "grace period over; unanswered messages stay queued in Postfix"
        );
    }
    for s in sockets {
        let _ = std::fs::remove_file(s);
    }
    running.lasting.close_sql().await;
    Ok(())
}

/// The purges: the file store's (when it is open) and the database's (the SQL store's, and the
/// SQL log's), which idles while the configuration uses neither (a reload may switch them on).
fn spawn_quarantine_maintenance(
    tracker: &TaskTracker,
    files: Option<&Arc<crate::quarantine::Quarantine>>,
    retention_days: u64,
    current: &watch::Sender<Arc<Runtime>>,
    shutdown: &CancellationToken,
) {
    let metrics = current.borrow().metrics.quarantine.clone();
    if let Some(q) = files {
        tracker.spawn(crate::quarantine::maintenance(
            q.clone(),
            retention_days,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    tracker.spawn(crate::quarantine::sql::maintenance(
        current.subscribe(),
        metrics,
        shutdown.clone(),
    ));
}

/// The serving state a reload changes.
struct Running {
    /// The generation new sessions get.
    current: watch::Sender<Arc<Runtime>>,
    /// Kept across reloads: the registry must survive them, and the stores opened once.
    lasting: Lasting,
    /// One semaphore for all generations, resized on reload, so sessions under an old
    /// configuration still count against `server.max_sessions`.
    limit: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// Configured address → the token that stops its accept loop.
    accepting: Vec<(SocketAddr, CancellationToken)>,
}

impl Running {
    fn metrics(&self) -> Arc<Metrics> {
        self.lasting.metrics.clone()
    }

    /// `key` is the configured address, `bound` the one the listener got.
    fn accept_on(&mut self, key: SocketAddr, listener: TcpListener, bound: SocketAddr) {
        let stop = self.shutdown.child_token();
        self.accepting.push((key, stop.clone()));
        let nodelay = listener_nodelay(&listener);
        self.tracker.spawn(accept_loop(
            Listener::Tcp(listener),
            (key, bound, nodelay),
            Service::Filter,
            self.current.subscribe(),
            self.limit.clone(),
            self.tracker.clone(),
            stop,
        ));
    }

    /// Starts the milter listeners' accept loops, with a connection limit of their own.
    fn accept_milter(&self, listeners: Vec<(String, Listener)>, limit: usize) {
        let limit = Arc::new(Semaphore::new(limit));
        let any = SocketAddr::from(([0, 0, 0, 0], 0));
        for (name, listener) in listeners {
            self.tracker.spawn(accept_loop(
                listener,
                (any, any, false),
                Service::Milter,
                self.current.subscribe(),
                limit.clone(),
                self.tracker.clone(),
                self.shutdown.child_token(),
            ));
            tracing::debug!(%name, "milter accept loop started");
        }
    }

    async fn reload(&mut self, r: Reload) {
        match self.apply(r).await {
            Ok(()) => self.metrics().server.reload_done(true),
            Err(e) => {
                // toml's errors span lines (source excerpt, caret); one log line per event.
                let error = e
                    .to_string()
                    .lines()
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" ");
                tracing::error!(%error, "reload failed; still running on the previous configuration");
                self.metrics().server.reload_done(false);
            }
        }
    }

    /// All that can fail (the configuration, binding new addresses) happens before anything
    /// changes, so a failed reload leaves the old configuration entirely in force.
    async fn apply(&mut self, r: Reload) -> Result<(), ReloadError> {
        let new = r?;
        let mut added: Vec<(SocketAddr, TcpListener, SocketAddr)> = Vec::new();
        for &addr in &new.server.listen {
            let known = self.accepting.iter().any(|(k, _)| *k == addr)
                || added.iter().any(|(k, _, _)| *k == addr);
            if !known {
                let bind = async {
                    let l = TcpListener::bind(addr).await?;
                    let bound = l.local_addr()?;
                    Ok((l, bound))
                };
                let (l, bound) = bind
                    .await
                    .map_err(|source| ReloadError::Bind { addr, source })?;
                added.push((addr, l, bound));
            }
        }

        let old = self.current.borrow().clone();
        let restart_only = [
            (
                "metrics.listen",
                old.config.metrics.listen != new.metrics.listen,
            ),
            ("log.level", old.config.log.level != new.log.level),
            ("log.format", old.config.log.format != new.log.format),
            (
                "server.pid_file",
                old.config.server.pid_file != new.server.pid_file,
            ),
            (
                "greylist.listen",
                old.config.greylist.listen != new.greylist.listen,
            ),
            (
                "server.worker_threads",
                old.config.server.worker_threads != new.server.worker_threads,
            ),
            (
                "greylist.store",
                old.config.greylist.store != new.greylist.store,
            ),
            (
                "greylist.max_connections",
                old.config.greylist.max_connections != new.greylist.max_connections,
            ),
            (
                "milter.listen",
                old.config.milter.listen != new.milter.listen,
            ),
            (
                "milter.max_connections",
                old.config.milter.max_connections != new.milter.max_connections,
            ),
            (
                "quarantine.dir",
                self.lasting.quarantine.is_some()
                    && old.config.quarantine.dir != new.quarantine.dir,
            ),
            (
                "quarantine.release_listen",
                old.config.quarantine.release_listen != new.quarantine.release_listen,
            ),
            (
                "quarantine.release_max_connections",
                old.config.quarantine.release_max_connections
                    != new.quarantine.release_max_connections,
            ),
            (
                "metrics.max_connections",
                old.config.metrics.max_connections != new.metrics.max_connections,
            ),
            (
                "quarantine.retention_days",
                old.config.quarantine.retention_days != new.quarantine.retention_days,
            ),
        ];
        for (key, changed) in restart_only {
            if changed {
                tracing::warn!(
                    key,
                    "changed, but takes effect only at a restart; keeping the old value"
                );
            }
        }
        // The whitelist files are read again and the DKIM keys loaded: a failure here leaves
        // everything as it was. The store and the policy listeners stay.
        let mut shared = Runtime::build(new, &self.lasting)?;
        self.resize_limit(
            old.config.server.max_sessions,
            shared.config.server.max_sessions,
        );
        if self.lasting.quarantine.is_none() && shared.config.uses_quarantine() {
            // A failure leaves it closed: quarantined messages get 451 and stay with the client.
            match open_quarantine(&shared.config) {
                Ok(q) => self.lasting.quarantine = q,
                Err(e) => tracing::error!(error = %e, "cannot open the quarantine"),
            }
        }
        shared.quarantine = self.lasting.quarantine.clone();
        let metrics = self.metrics();
        let (before, after) = (old.scanner_names(), shared.scanner_names());
        for name in before.iter().filter(|n| !after.contains(n)) {
            metrics.scan.forget_scanner(*name);
        }
        for name in after.iter().filter(|n| !before.contains(n)) {
            metrics.scan.set_scanner_up(*name, false);
        }
        let peers_after: Vec<_> = shared.peer_groups().iter().map(|g| g.peer()).collect();
        for g in old.peer_groups() {
            if !peers_after.contains(&g.peer()) {
                let _ = metrics
                    .peers
                    .peer_up
                    .remove_label_values(&[g.peer().label()]);
            }
        }
        let listen = shared.config.server.listen.clone();
        drop(old);
        self.current.send_replace(Arc::new(shared));

        for (addr, listener, bound) in added {
            self.accept_on(addr, listener, bound);
            tracing::info!(%addr, "listening");
        }
        self.accepting.retain(|(addr, stop)| {
            let keep = listen.contains(addr);
            if !keep {
                stop.cancel();
                tracing::info!(%addr, "no longer listening (removed from server.listen)");
            }
            keep
        });
        tracing::info!(?listen, "configuration reloaded; new sessions use it");
        Ok(())
    }

    /// Sessions open now keep their permits: a smaller limit is reached as they end.
    fn resize_limit(&self, was: usize, now: usize) {
        if now > was {
            self.limit.add_permits(now - was);
        } else if now < was {
            let fewer = u32::try_from(was - now).unwrap_or(u32::MAX);
            let limit = self.limit.clone();
            // Takes the surplus permits as they come free and drops them for good. A later
            // reload's add_permits feeds this first, so the sum stays right.
            tokio::spawn(async move {
                if let Ok(p) = limit.acquire_many_owned(fewer).await {
                    p.forget();
                }
            });
        }
    }
}

/// `(key, bound, nodelay)`: the listener's configured address, the one it got (see [`handle`]),
/// and whether its accepted connections inherit TCP_NODELAY (see [`listener_nodelay`]).
async fn accept_loop(
    listener: Listener,
    (key, bound, nodelay): (SocketAddr, SocketAddr, bool),
    service: Service,
    current: watch::Receiver<Arc<Runtime>>,
    limit: Arc<Semaphore>,
    sessions: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => break,
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
        // The generation current at accept time serves this session to its end.
        let shared = current.borrow().clone();
        let permit = limit.clone().try_acquire_owned();
        if permit.is_err() && service == Service::Filter {
            shared
                .metrics
                .server
                .replies
                .with_label_values(&["4xx"])
                .inc();
        }
        sessions.spawn(async move {
            match (service, conn, permit) {
                // Boxed: the session's future is tens of KiB, and the task would otherwise
                // copy it whole on every spawn (callgrind: a sixth of the hop's instructions).
                (Service::Filter, Conn::Tcp(stream, peer), Ok(_permit)) => {
                    Box::pin(handle(stream, peer, (key, bound, nodelay), shared)).await
                }
                (Service::Filter, Conn::Tcp(stream, _), Err(_)) => {
                    refuse(stream, reply::too_busy()).await
                }
                (Service::Policy, conn, Ok(_permit)) => Box::pin(handle_policy(conn, shared)).await,
                // Postfix retries on another connection, then applies its default_action.
                (Service::Policy, _, Err(_)) => {
                    shared
                        .metrics
                        .server
                        .refused(metrics::Listener::Policy)
                        .inc();
                    tracing::warn!("greylist: greylist.max_connections reached; connection closed")
                }
                (Service::Filter, Conn::Unix(_), _) => {}
                (Service::Milter, conn, Ok(_permit)) => Box::pin(handle_milter(conn, shared)).await,
                // Postfix applies its milter_default_action to the session's mail.
                (Service::Milter, _, Err(_)) => {
                    shared.metrics.milter.refused.inc();
                    tracing::warn!("milter.max_connections reached; milter connection closed")
                }
            }
        });
    }
}

/// `key` is the listener's configured address (what policy banks match), `bound` the address
/// it got: the session's local address unless the listener is on a wildcard address (saves a
/// getsockname per connection); `nodelay`: the connection has TCP_NODELAY from its listener
/// (saves a setsockopt per connection).
async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    (key, bound, nodelay): (SocketAddr, SocketAddr, bool),
    shared: Arc<Runtime>,
) {
    if !allowed(&shared.config, peer.ip()) {
        tracing::warn!(%peer, "client not in server.allow_networks");
        shared
            .metrics
            .server
            .replies
            .with_label_values(&["5xx"])
            .inc();
        return refuse(stream, reply::access_denied()).await;
    }
    if !nodelay {
        let _ = stream.set_nodelay(true);
    }
    let local = if bound.ip().is_unspecified() {
        stream.local_addr().unwrap_or(bound)
    } else {
        bound
    };
    Session::new(stream, peer, local, shared)
        .on_listener(key)
        .run()
        .await;
}

/// Sets TCP_NODELAY on a listening socket; true when every connection it accepts then has it
/// without a setsockopt of its own: Linux copies the option to the accepted socket (other
/// systems may not, so elsewhere each connection sets it).
fn listener_nodelay(listener: &TcpListener) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: a valid descriptor, and a c_int option value of the size given.
        let r = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        r == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = listener;
        false
    }
}

/// A policy client: the same ACL as the filter's for TCP (a Unix socket's ACL is its mode).
async fn handle_policy(conn: Conn, shared: Arc<Runtime>) {
    let Some(gl) = shared.greylist.clone() else {
        return;
    };
    let timeouts = (shared.config.read_timeout(), shared.config.write_timeout());
    let shutdown = shared.shutdown.clone();
    match conn {
        Conn::Tcp(stream, peer) => {
            if !allowed(&shared.config, peer.ip()) {
                tracing::warn!(%peer, "policy client not in server.allow_networks; closed");
                return;
            }
            let _ = stream.set_nodelay(true);
            greylist::serve_connection(stream, peer.to_string(), gl, timeouts, shutdown).await
        }
        Conn::Unix(stream) => {
            greylist::serve_connection(stream, "unix".into(), gl, timeouts, shutdown).await
        }
    }
}

/// A milter client: the same ACL as the filter's for TCP (a Unix socket's ACL is its mode).
async fn handle_milter(conn: Conn, shared: Arc<Runtime>) {
    let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
    match conn {
        Conn::Tcp(stream, peer) => {
            if !allowed(&shared.config, peer.ip()) {
                tracing::warn!(%peer, "milter client not in server.allow_networks; closed");
                return;
            }
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().unwrap_or(unknown);
            crate::milter::serve_conn(stream, peer, local, shared).await
        }
        Conn::Unix(stream) => crate::milter::serve_conn(stream, unknown, unknown, shared).await,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_inherit_nodelay_from_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inherited = listener_nodelay(&listener);
        assert_eq!(inherited, cfg!(target_os = "linux"));
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        // Where the listener's option is not inherited, handle() sets it on each connection.
        assert_eq!(stream.nodelay().unwrap(), inherited);
    }
}
