//! Peer health: a circuit breaker for each endpoint of each peer (the resolver, every clamd,
//! spamd and rspamd endpoint, the reinjection server), so that a hung or dead peer costs one
//! timeout, not one per message.
//!
//! An endpoint is **up** until `[health] down_after` consecutive timeouts or connection
//! failures (a message's or a probe's) mark it **down**. A down endpoint is skipped: the next
//! one is used where there are several, and while every endpoint of a peer is down a message
//! takes that peer's failure path at once, without trying it. The health probe
//! ([`crate::health`]) keeps asking a down endpoint; when it answers, the endpoint is
//! **half-open**: one real message may try it (DNS: every lookup may), and its success brings
//! the endpoint up, its failure down again. A second good probe in a row brings it up too,
//! whether or not mail came by. Any answer from the peer (a refusal, an error of its own) proves
//! it alive; only timeouts and failures to connect count against it.
//!
//! Each change of state is logged once, and `postsift_peer_up{peer}` says whether any endpoint
//! of the peer is usable; `postsift_peer_skipped_total{peer}` counts the attempts that took the
//! failure path at once because every endpoint was down.

use std::sync::{Mutex, OnceLock};

use prometheus::{IntCounter, IntGauge};

/// The peers, as a small closed set (the `peer` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Dns,
    Clamd,
    Spamd,
    Rspamd,
    Reinject,
}

impl Peer {
    pub const ALL: &'static [&'static str] = &["dns", "clamd", "spamd", "rspamd", "reinject"];

    pub fn label(self) -> &'static str {
        match self {
            Peer::Dns => "dns",
            Peer::Clamd => "clamd",
            Peer::Spamd => "spamd",
            Peer::Rspamd => "rspamd",
            Peer::Reinject => "reinject",
        }
    }
}

/// One endpoint's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
    /// Answered a probe after being down: one real attempt may go through.
    HalfOpen,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Consecutive failures.
    failures: u32,
    /// Half-open: the one attempt let through is under way.
    trial: bool,
}

/// One endpoint's circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    peer: Peer,
    endpoint: String,
    down_after: u32,
    inner: Mutex<Inner>,
}

/// The metric handles of one peer.
#[derive(Clone)]
pub struct PeerMetrics {
    /// `postsift_peer_up{peer}`
    pub up: IntGauge,
    /// `postsift_peer_skipped_total{peer}`
    pub skipped: IntCounter,
}

/// The series of peer health, for every peer.
#[derive(Clone)]
pub struct HealthMetrics {
    /// Per-peer health: 1 while some endpoint of the peer is not marked down. Only configured
    /// peers have a series.
    pub peer_up: prometheus::IntGaugeVec,
    /// Attempts that took a peer's failure path at once because all its endpoints were down.
    pub peer_skipped: prometheus::IntCounterVec,
}

impl HealthMetrics {
    pub fn register(r: &prometheus::Registry) -> HealthMetrics {
        HealthMetrics {
            peer_up: crate::metrics::gauge_vec(
                r,
                "postsift_peer_up",
                "1 while some endpoint of the peer is usable (not marked down after failures)",
                "peer",
                &[],
            ),
            peer_skipped: crate::metrics::counter(
                r,
                "postsift_peer_skipped_total",
                "Attempts that took the peer's failure path at once: every endpoint was down",
                &["peer"],
                &[Peer::ALL],
            ),
        }
    }

    /// The metric handles of one peer's health.
    pub fn peer_metrics(&self, peer: Peer) -> PeerMetrics {
        PeerMetrics {
            up: self.peer_up.with_label_values(&[peer.label()]),
            skipped: self.peer_skipped.with_label_values(&[peer.label()]),
        }
    }
}

/// Consecutive failures that mark an endpoint down when no configuration says otherwise.
pub const DEFAULT_DOWN_AFTER: u32 = 3;

/// Every endpoint of one peer, in the configured order.
#[derive(Debug)]
pub struct Group {
    peer: Peer,
    endpoints: Vec<Breaker>,
    down_after: u32,
    metrics: OnceLock<PeerMetricsCell>,
}

/// [`PeerMetrics`] without a Debug of its own.
struct PeerMetricsCell(PeerMetrics);

impl std::fmt::Debug for PeerMetricsCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerMetrics")
    }
}

/// What an attempt on an endpoint came to, for its breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The peer answered (whatever it said).
    Answered,
    /// A timeout, or no connection: counts against the endpoint.
    Failed,
}

/// An attempt on one endpoint under way: [`Attempt::finish`] records how it went; dropped
/// unfinished (an outer timeout cancelled it), it counts as a timeout.
pub struct Attempt<'a> {
    group: &'a Group,
    i: usize,
    done: bool,
}

impl Attempt<'_> {
    pub fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.group.record(self.i, outcome);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.group.record(self.i, Outcome::Failed);
        }
    }
}

impl Group {
    /// An attempt on endpoint `i` if [`Group::admit`] lets it go.
    pub fn attempt(&self, i: usize) -> Option<Attempt<'_>> {
        self.admit(i).then_some(Attempt {
            group: self,
            i,
            done: false,
        })
    }

    /// `endpoints` names each endpoint for the log; `down_after` 0 is taken as 1.
    pub fn new(peer: Peer, endpoints: &[String], down_after: u32) -> Group {
        Group {
            peer,
            endpoints: endpoints
                .iter()
                .map(|e| Breaker {
                    peer,
                    endpoint: e.clone(),
                    down_after: down_after.max(1),
                    inner: Mutex::new(Inner {
                        state: State::Up,
                        failures: 0,
                        trial: false,
                    }),
                })
                .collect(),
            down_after,
            metrics: OnceLock::new(),
        }
    }

    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// Consecutive failures that mark an endpoint down (`[health] down_after`), for messages.
    pub fn down_after(&self) -> u32 {
        self.down_after
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Records state into `metrics` from now on (the first call wins: a reload builds new
    /// groups).
    pub fn observe(&self, metrics: PeerMetrics) {
        metrics.up.set(self.usable() as i64);
        let _ = self.metrics.set(PeerMetricsCell(metrics));
    }

    /// Whether endpoint `i` may be tried now; a half-open endpoint admits one attempt at a
    /// time. The caller then [`Group::record`]s how it went.
    pub fn admit(&self, i: usize) -> bool {
        let mut inner = self.endpoints[i].lock();
        match inner.state {
            State::Up => true,
            State::Down => false,
            State::HalfOpen if inner.trial => false,
            State::HalfOpen => {
                inner.trial = true;
                true
            }
        }
    }

    /// Like [`Group::admit`], but a half-open endpoint admits everyone (DNS: a lookup is
    /// cheap and the probe just got an answer).
    pub fn admit_all(&self, i: usize) -> bool {
        self.endpoints[i].lock().state != State::Down
    }

    /// The endpoints that may be tried now, in order (each admitted as by [`Group::admit`]).
    /// None admitted: the peer's failure path, counted as skipped.
    pub fn admitted(&self) -> Vec<usize> {
        let v: Vec<usize> = (0..self.endpoints.len())
            .filter(|&i| self.admit(i))
            .collect();
        if v.is_empty() {
            self.skipped();
        }
        v
    }

    /// Counts an attempt that took the failure path at once.
    pub fn skipped(&self) {
        if let Some(m) = self.metrics.get() {
            m.0.skipped.inc();
        }
    }

    /// How an attempt on endpoint `i` (a message's) went.
    pub fn record(&self, i: usize, outcome: Outcome) {
        let changed = self.endpoints[i].record(outcome);
        if changed {
            self.publish();
        }
    }

    /// How a probe of endpoint `i` went.
    pub fn probed(&self, i: usize, answered: bool) {
        let changed = self.endpoints[i].probed(answered);
        if changed {
            self.publish();
        }
    }

    /// True while some endpoint is not down.
    pub fn usable(&self) -> bool {
        self.endpoints.iter().any(|b| b.lock().state != State::Down)
    }

    /// Endpoint `i`'s state.
    pub fn state(&self, i: usize) -> State {
        self.endpoints[i].lock().state
    }

    /// Endpoint `i`'s name.
    pub fn endpoint(&self, i: usize) -> &str {
        &self.endpoints[i].endpoint
    }

    fn publish(&self) {
        if let Some(m) = self.metrics.get() {
            m.0.up.set(self.usable() as i64);
        }
    }
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain data, consistent between statements: usable after a panic elsewhere.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns true when the state changed.
    fn record(&self, outcome: Outcome) -> bool {
        let mut inner = self.lock();
        let before = inner.state;
        match outcome {
            Outcome::Answered => {
                inner.failures = 0;
                inner.trial = false;
                inner.state = State::Up;
            }
            Outcome::Failed => {
                inner.failures = inner.failures.saturating_add(1);
                inner.trial = false;
                match inner.state {
                    State::Up if inner.failures >= self.down_after => inner.state = State::Down,
                    State::HalfOpen => inner.state = State::Down,
                    _ => {}
                }
            }
        }
        self.transition(before, &inner)
    }

    fn probed(&self, answered: bool) -> bool {
        let mut inner = self.lock();
        let before = inner.state;
        match (inner.state, answered) {
            // A probe's answer does not clear a running peer's failures: clamd may answer
            // PING and still hang on every scan.
            (State::Up, true) => {}
            (State::Down, true) => {
                inner.state = State::HalfOpen;
                inner.trial = false;
            }
            (State::HalfOpen, true) => {
                inner.state = State::Up;
                inner.failures = 0;
                inner.trial = false;
            }
            (_, false) => {
                drop(inner);
                return self.record(Outcome::Failed);
            }
        }
        self.transition(before, &inner)
    }

    fn transition(&self, before: State, inner: &Inner) -> bool {
        if before == inner.state {
            return false;
        }
        let (peer, endpoint, to) = (self.peer.label(), &self.endpoint, inner.state.label());
        match inner.state {
            State::Down => tracing::warn!(
                peer,
                %endpoint,
                failures = inner.failures,
                "peer marked down: its failure path is taken at once until a probe answers"
            ),
            State::HalfOpen => {
                tracing::info!(peer, %endpoint, state = to, "peer answers probes again: trying it")
            }
            State::Up => tracing::info!(peer, %endpoint, state = to, "peer back up"),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(n: usize) -> Group {
        let names: Vec<String> = (0..n).map(|i| format!("ep{i}")).collect();
        Group::new(Peer::Spamd, &names, 3)
    }

    #[test]
    fn down_after_n_consecutive_failures_only() {
        let g = group(1);
        g.record(0, Outcome::Failed);
        g.record(0, Outcome::Failed);
        g.record(0, Outcome::Answered);
        g.record(0, Outcome::Failed);
        g.record(0, Outcome::Failed);
        assert_eq!(g.state(0), State::Up, "an answer resets the count");
        g.record(0, Outcome::Failed);
        assert_eq!(g.state(0), State::Down);
        assert!(!g.usable());
        assert!(g.admitted().is_empty());
    }

    #[test]
    fn the_next_endpoint_is_used_while_the_first_is_down() {
        let g = group(2);
        for _ in 0..3 {
            g.record(0, Outcome::Failed);
        }
        assert_eq!(g.admitted(), vec![1]);
        assert!(g.usable());
    }

    #[test]
    fn half_open_admits_one_attempt_and_its_outcome_decides() {
        let g = group(1);
        for _ in 0..3 {
            g.record(0, Outcome::Failed);
        }
        g.probed(0, true);
        assert_eq!(g.state(0), State::HalfOpen);
        assert!(g.admit(0), "one real attempt");
        assert!(!g.admit(0), "only one at a time");
        g.record(0, Outcome::Failed);
        assert_eq!(g.state(0), State::Down, "one failure closes it again");
        g.probed(0, true);
        assert!(g.admit(0));
        g.record(0, Outcome::Answered);
        assert_eq!(g.state(0), State::Up);
        assert!(g.admit(0) && g.admit(0));
    }

    #[test]
    fn two_good_probes_bring_an_idle_peer_up() {
        let g = group(1);
        for _ in 0..3 {
            g.probed(0, false);
        }
        assert_eq!(g.state(0), State::Down, "probe failures count too");
        g.probed(0, true);
        g.probed(0, true);
        assert_eq!(g.state(0), State::Up);
    }

    #[test]
    fn metrics_follow_the_state() {
        let m = HealthMetrics::register(&prometheus::Registry::new());
        let g = group(1);
        g.observe(m.peer_metrics(Peer::Spamd));
        let up = || m.peer_up.with_label_values(&["spamd"]).get();
        let skipped = || m.peer_skipped.with_label_values(&["spamd"]).get();
        assert_eq!(up(), 1);
        for _ in 0..3 {
            g.record(0, Outcome::Failed);
        }
        assert_eq!(up(), 0);
        assert!(g.admitted().is_empty());
        assert_eq!(skipped(), 1);
        g.probed(0, true);
        assert_eq!(up(), 1, "half-open is usable");
    }
}
