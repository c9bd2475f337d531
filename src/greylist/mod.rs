//! Greylisting as postgrey does it, served to Postfix's `check_policy_service` over the policy
//! delegation protocol: [`protocol`] frames requests and answers, [`whitelist`] reads
//! postgrey's whitelist files, [`decide`] is postgrey's decision, [`store`] keeps the state in
//! the [`embedded`] SQLite file or in [`redis`]; [`socket`] sets up its Unix sockets. This module ties them together: one answer
//! per request, one log line and one metric per decision.

pub mod decide;
pub mod embedded;
pub mod protocol;
pub mod record;
pub mod redis;
pub mod socket;
pub mod store;
pub mod whitelist;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, BufReader};

use crate::config::{self, OnFailure};
use crate::escape::Shown;
use decide::{Outcome, Params};
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use store::Store;
use whitelist::Whitelists;

/// The answer when the store fails and `on_failure = "tempfail"`.
pub const STORE_FAILED: &str = "DEFER_IF_PERMIT 4.3.0 Greylisting temporarily unavailable";

/// What answers requests: one per configuration generation; the store outlives reloads.
pub struct Greylist {
    config: config::Greylist,
    params: Params,
    whitelists: Whitelists,
    pub store: Arc<Store>,
    hostname: String,
    metrics: GreylistMetrics,
    /// The last ten `instance`s given an X-Greylist header: one header per message even with
    /// several recipients (postgrey keeps the same list).
    instances: Mutex<VecDeque<String>>,
}

/// A decision and the numbers its log line and answer need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The `result` label: new, early, passed, whitelisted, auto_whitelisted, error.
    pub result: &'static str,
    pub action: String,
    pub reason: String,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Greylist {
    /// Reads the whitelist files named by `config.greylist`.
    pub fn new(
        config: &config::Config,
        store: Arc<Store>,
        metrics: GreylistMetrics,
    ) -> Result<Greylist, whitelist::Error> {
        let g = &config.greylist;
        let whitelists = Whitelists::load(&g.whitelist_clients, &g.whitelist_recipients)?;
        Ok(Greylist {
            params: decide::Params::from(g),
            whitelists,
            store,
            hostname: config.hostname(),
            metrics,
            config: g.clone(),
            instances: Mutex::new(VecDeque::with_capacity(10)),
        })
    }

    /// Whitelist rules loaded: (clients, recipients).
    pub fn whitelist_len(&self) -> (usize, usize) {
        self.whitelists.len()
    }

    fn is_new_instance(&self, instance: Option<&str>) -> bool {
        let Some(inst) = instance else { return true };
        let mut list = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        if list.iter().any(|i| i == inst) {
            return false;
        }
        if list.len() == 10 {
            list.pop_back();
        }
        list.push_front(inst.to_owned());
        true
    }

    /// The answer to one request (without `action=`), logged and counted.
    pub async fn answer(&self, req: &protocol::Request) -> String {
        let d = self.decide(req).await;
        self.metrics
            .greylist_decisions
            .with_label_values(&[d.result])
            .inc();
        tracing::info!(
            target: "postsift::greylist",
            result = d.result,
            reason = %Shown(&d.reason),
            queue_id = %Shown(req.get("queue_id").unwrap_or("")),
            client_name = %Shown(req.get("client_name").unwrap_or("")),
            client_address = %Shown(req.get("client_address").unwrap_or("")),
            sender = %Shown(req.get("sender").unwrap_or("")),
            recipient = %Shown(req.get("recipient").unwrap_or("")),
            "greylist"
        );
        d.action
    }

    pub async fn decide(&self, req: &protocol::Request) -> Decision {
        let decision = |result, action: &str, reason: String| Decision {
            result,
            action: action.to_owned(),
            reason,
        };
        if req.get("request") != Some("smtpd_access_policy") {
            return decision(
                "error",
                "DUNNO",
                "not an smtpd_access_policy request".into(),
            );
        }
        let (Some(addr), Some(name), Some(rcpt), Some(sender)) = (
            req.get("client_address"),
            req.get("client_name"),
            req.get("recipient"),
            req.get("sender"),
        ) else {
            return decision("error", "DUNNO", "attribute missing".into());
        };
        let Ok(ip) = addr.parse::<IpAddr>() else {
            return decision("error", "DUNNO", format!("bad client_address {addr:?}"));
        };
        let ip = ip.to_canonical();
        if self.whitelists.client(name, Some(ip)) {
            return decision("whitelisted", "DUNNO", "client whitelist".into());
        }
        if self.whitelists.recipient(rcpt) {
            return decision("whitelisted", "DUNNO", "recipient whitelist".into());
        }
        let now = match req.get("policy_test_time") {
            Some(t) if self.config.policy_test_time => t.parse().unwrap_or_else(|_| now()),
            _ => now(),
        };
        let key = decide::triplet_key(
            &decide::client_net(ip, self.config.lookup_by_subnet),
            sender,
            rcpt,
        );
        let started = Instant::now();
        let timeout = Duration::from_secs(self.config.store_timeout);
        let r = tokio::time::timeout(
            timeout,
            self.store.check(self.params, now, &key, &ip.to_string()),
        )
        .await
        .unwrap_or(Err(store::Error::Timeout));
        self.metrics
            .greylist_store_duration
            .with_label_values(&[self.store.kind()])
            .observe(started.elapsed().as_secs_f64());
        let outcome = match r {
            Ok(o) => {
                self.metrics.greylist_store_up.set(1);
                o
            }
            Err(e) => {
                self.metrics.greylist_store_up.set(0);
                self.metrics
                    .greylist_store_errors
                    .with_label_values(&[e.kind()])
                    .inc();
                let action = match self.config.on_failure {
                    OnFailure::Pass => "DUNNO",
                    OnFailure::Tempfail => STORE_FAILED,
                };
                return decision("error", action, e.to_string());
            }
        };
        match outcome {
            Outcome::AutoWhitelisted => decision("auto_whitelisted", "DUNNO", "client AWL".into()),
            Outcome::New { remaining } | Outcome::Early { remaining } => {
                let new = matches!(outcome, Outcome::New { .. });
                let mut text = self.config.text.clone();
                // Exchange mishandles 4.7.1 here; postgrey answers 4.2.0 when Postfix sends
                // etrn_domain (every Postfix since 2.3 does).
                if req.get("etrn_domain").is_some()
                    && !text.starts_with(|c: char| c.is_ascii_digit())
                {
                    text.insert_str(0, "4.2.0 ");
                }
                let domain = rcpt.rsplit_once('@').map_or(rcpt, |(_, d)| d);
                let text = text
                    .replacen("%s", &remaining.to_string(), 1)
                    .replacen("%r", domain, 1);
                let (result, reason) = if new {
                    ("new", "new".to_owned())
                } else {
                    ("early", format!("early-retry ({remaining}s missing)"))
                };
                decision(result, &format!("{} {text}", self.config.action), reason)
            }
            Outcome::Passed { delayed } => match delayed {
                Some(delay)
                    if self.config.prepend_header && self.is_new_instance(req.get("instance")) =>
                {
                    let date = chrono::Local::now().format("%a, %d %b %Y %H:%M:%S %z");
                    let header = format!(
                        "PREPEND X-Greylist: delayed {delay} seconds by postsift-{} at {}; {date}",
                        env!("CARGO_PKG_VERSION"),
                        self.hostname
                    );
                    decision("passed", &header, format!("triplet found, delay={delay}"))
                }
                _ => decision("passed", "DUNNO", "triplet found".into()),
            },
        }
    }
}

pub const GREYLIST_RESULTS: &[&str] = &[
    "new",
    "early",
    "passed",
    "whitelisted",
    "auto_whitelisted",
    "error",
];
pub const GREYLIST_STORES: &[&str] = &["embedded", "redis"];
pub const GREYLIST_STORE_ERRORS: &[&str] = &["embedded", "redis", "timeout"];

/// The series of greylisting: decisions, the store's time, failures and size, connections.
#[derive(Clone)]
pub struct GreylistMetrics {
    /// Greylisting decisions by result.
    pub greylist_decisions: IntCounterVec,
    /// Time of one store operation (a whole decision), by store.
    pub greylist_store_duration: HistogramVec,
    pub greylist_store_errors: IntCounterVec,
    /// 1 if the last store operation succeeded.
    pub greylist_store_up: IntGauge,
    /// Stored triplets and auto-whitelisted clients (refreshed every five minutes).
    pub greylist_entries: IntGaugeVec,
    pub greylist_connections_active: IntGauge,
    /// Triplets deleted because the store passed `greylist.max_triplets`.
    pub greylist_evicted: IntCounter,
}

impl GreylistMetrics {
    pub fn register(r: &Registry) -> GreylistMetrics {
        use crate::metrics::{counter, counter0, gauge, gauge_vec, histogram_vec};
        GreylistMetrics {
            greylist_decisions: counter(
                r,
                "postsift_greylist_decisions_total",
                "Greylisting policy decisions, by result",
                &["result"],
                &[GREYLIST_RESULTS],
            ),
            greylist_store_duration: histogram_vec(
                r,
                "postsift_greylist_store_duration_seconds",
                "Time of one greylisting store operation (a whole decision)",
                "store",
                GREYLIST_STORES,
                vec![
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            greylist_store_errors: counter(
                r,
                "postsift_greylist_store_errors_total",
                "Greylisting store failures (the on_failure answer was given), by kind",
                &["kind"],
                &[GREYLIST_STORE_ERRORS],
            ),
            greylist_store_up: gauge(
                r,
                "postsift_greylist_store_up",
                "1 if the last greylisting store operation succeeded",
            ),
            greylist_entries: gauge_vec(
                r,
                "postsift_greylist_entries",
                "Greylisting records stored, by kind (triplets, clients)",
                "kind",
                &["triplets", "clients"],
            ),
            greylist_evicted: counter0(
                r,
                "postsift_greylist_evicted_total",
                "Greylisting triplets deleted, least recently seen first, over greylist.max_triplets",
            ),
            greylist_connections_active: gauge(
                r,
                "postsift_greylist_connections_active",
                "Open policy service connections",
            ),
        }
    }

    pub fn set_greylist_entries(&self, triplets: u64, clients: u64) {
        let set = |k: &str, v: u64| {
            self.greylist_entries
                .with_label_values(&[k])
                .set(i64::try_from(v).unwrap_or(i64::MAX))
        };
        set("triplets", triplets);
        set("clients", clients);
    }
}

/// Serves one policy client connection: requests until the client closes, the read timeout,
/// bad framing (the connection is closed), or shutdown (between requests).
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: String,
    gl: Arc<Greylist>,
    (read_timeout, write_timeout): (Duration, Duration),
    shutdown: tokio_util::sync::CancellationToken,
) {
    let metrics = gl.metrics.clone();
    metrics.greylist_connections_active.inc();
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    let mut line = Vec::with_capacity(256);
    loop {
        let req = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = tokio::time::timeout(read_timeout, protocol::read_request(&mut r, &mut line)) => r,
        };
        let req = match req {
            Ok(Ok(Some(req))) => req,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "policy client: closing the connection");
                break;
            }
            Err(_) => break,
        };
        let action = gl.answer(&req).await;
        match tokio::time::timeout(write_timeout, protocol::write_action(&mut w, &action)).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    metrics.greylist_connections_active.dec();
}

/// Purges what postgrey's maintenance would (hourly) and refreshes the entries gauge (every
/// five minutes) until `shutdown`.
pub async fn maintenance(
    store: Arc<Store>,
    params: Params,
    max_triplets: u64,
    metrics: GreylistMetrics,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(300));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if n.is_multiple_of(12) {
            match store.purge(params, now()).await {
                Ok((t, c)) if t + c > 0 => {
                    tracing::info!(triplets = t, clients = c, "greylist: purged old entries")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "greylist: purge failed"),
            }
        }
        n += 1;
        match store.evict(max_triplets).await {
            Ok(0) => {}
            Ok(gone) => {
                metrics.greylist_evicted.inc_by(gone);
                tracing::warn!(
                    triplets = gone,
                    max_triplets,
                    "greylist: store over greylist.max_triplets; least recently seen deleted"
                );
            }
            Err(e) => tracing::warn!(error = %e, "greylist: eviction failed"),
        }
        if let Ok((t, c)) = store.count().await {
            metrics.set_greylist_entries(t, c);
        }
    }
}
