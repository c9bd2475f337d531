//! Prometheus metrics: a registry owned by the server (never the global default), the handles
//! every stage records into, and the small HTTP endpoint serving `/metrics`, `/healthz` and
//! `/readyz`. Label values are small closed sets, pre-initialised so every series exists from
//! the first scrape; never an address or a virus name.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus::{
    exponential_buckets, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const VERDICTS: &[&str] = &[
    "clean",
    "spam",
    "virus",
    "banned",
    "unchecked",
    "dmarc",
    "unscanned",
];
pub const ACTIONS: &[&str] = &["pass", "discard", "reject", "tempfail", "quarantine"];
pub const RECIPIENT_RESULTS: &[&str] = &[
    "delivered",
    "discarded",
    "rejected",
    "deferred",
    "quarantined",
];
/// The categories a message can be quarantined for.
pub const QUARANTINE_CATEGORIES: &[&str] = &["virus", "banned", "spam", "unchecked"];
/// What a release did for one recipient: sent, not sent again (released before, or claimed by
/// another release), or refused/failed at the next hop.
pub const RELEASE_RESULTS: &[&str] = &["released", "duplicate", "failed"];
pub const STAGES: &[&str] = &["receive", "scan", "reinject", "total"];
pub const SCANNERS: &[&str] = &["clamd", "spamd", "rspamd"];
pub const SCANNER_ERRORS: &[&str] = crate::scan::FailureKind::ALL;
pub const REINJECT_ERRORS: &[&str] = &[
    "connect", "timeout", "rejected", "tempfail", "network", "spool",
];
pub const TEMPFAIL_REASONS: &[&str] = &[
    "clamd",
    "spamd",
    "rspamd",
    "greylist",
    "unchecked",
    "reinject",
    "spool",
    "resources",
    "shutdown",
    "quarantine",
    "dkim_sign",
];
/// Why a message was not fully checked: clamd failed, or the MIME walk stopped at a limit.
pub const UNCHECKED_REASONS: &[&str] = &[
    "scanner",
    "parts",
    "bytes",
    "depth",
    "ratio",
    "encrypted",
    "decoder",
    "time",
    "size",
    "memory",
];
pub const PROTOCOLS: &[&str] = &["smtp", "esmtp", "lmtp", "none"];
pub const REPLY_CLASSES: &[&str] = &["2xx", "4xx", "5xx"];
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
pub const RELOAD_RESULTS: &[&str] = &["success", "failure"];
/// Mail authentication methods (`spf` is the MAIL FROM identity).
pub const AUTH_METHODS: &[&str] = &["spf", "spf_helo", "dkim", "dmarc", "arc"];
/// Their results (RFC 8601's words).
pub const AUTH_RESULTS: &[&str] = &[
    "pass",
    "fail",
    "softfail",
    "neutral",
    "policy",
    "none",
    "temperror",
    "permerror",
];

pub struct Metrics {
    pub registry: Registry,
    pub messages: IntCounterVec,
    /// Messages a policy bank applied to (to some recipient), by bank name: names come from
    /// `[[policy]]` only, a small set fixed by the configuration.
    pub policy_banks: IntCounterVec,
    pub recipients: IntCounterVec,
    pub message_size: Histogram,
    pub spam_score: Histogram,
    pub stage_duration: HistogramVec,
    pub scanner_duration: HistogramVec,
    pub scanner_up: IntGaugeVec,
    pub reinject_up: IntGauge,
    /// Per-peer health (see `peers`): 1 while some endpoint of the peer is not marked down.
    /// Only configured peers have a series.
    pub peer_up: IntGaugeVec,
    /// Attempts that took a peer's failure path at once because all its endpoints were down.
    pub peer_skipped: IntCounterVec,
    pub scanner_errors: IntCounterVec,
    pub reinject_errors: IntCounterVec,
    pub tempfails: IntCounterVec,
    /// Messages not fully checked, by reason and the action taken.
    pub unchecked: IntCounterVec,
    pub sessions_active: IntGauge,
    pub sessions: IntCounterVec,
    pub in_flight: IntGauge,
    /// Decoded parts the MIME walk found per message.
    pub parts: Histogram,
    /// Bytes of message data held in memory by all spools (`server.max_memory` caps it).
    pub spool_memory: IntGauge,
    /// Spool files open (`server.max_spool_files` caps it).
    pub spool_files: IntGauge,
    pub replies: IntCounterVec,
    pub config_reloads: IntCounterVec,
    /// Unix time of the last configuration taken into use: set at start and at every
    /// successful reload.
    pub config_last_reload_success: Gauge,
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
    /// Connections closed at accept because their listener's limit was reached, by listener
    /// ("policy", "release", "metrics").
    pub listener_refused: IntCounterVec,
    /// Messages stored in the quarantine, by category.
    pub quarantined: IntCounterVec,
    /// Entries in the quarantine and the bytes of their messages (refreshed every minute
    /// and after each store).
    pub quarantine_entries: IntGauge,
    pub quarantine_bytes: IntGauge,
    /// Time to store one message durably (file, fsyncs, index commit).
    pub quarantine_store_duration: Histogram,
    /// Recipients released by the daemon (AM.PDP), by result; `postsift quarantine release`
    /// runs in its own process and logs instead.
    pub quarantine_releases: IntCounterVec,
    /// Mail authentication results, by method (one per DKIM signature) and result.
    pub auth_results: IntCounterVec,
    /// DKIM results left out of `Authentication-Results` (over `auth.max_dkim_results`).
    pub auth_dkim_results_omitted: IntCounter,
    /// Time all authentication checks of one message took together.
    pub auth_duration: Histogram,
    /// The DNS lookups and cache of mail authentication (see `dns`).
    pub dns: crate::dns::DnsMetrics,
    /// DKIM signing of outgoing mail (see `sign`).
    pub dkim_sign: crate::sign::SignMetrics,
    /// Set by the health probe: every configured peer answered at the last probe.
    pub ready: AtomicBool,
}

pub(crate) fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    values: &[&[&str]],
) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    // Pre-initialise every combination so rate() and dashboards see the series at once.
    let mut combos: Vec<Vec<&str>> = vec![vec![]];
    for vs in values {
        combos = combos
            .into_iter()
            .flat_map(|c| vs.iter().map(move |v| [c.clone(), vec![*v]].concat()))
            .collect();
    }
    for combo in combos {
        c.with_label_values(&combo);
    }
    c
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &[label])
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    for v in values {
        h.with_label_values(&[v]);
    }
    h
}

pub(crate) fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn float_gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let time_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0, 120.0,
        ];
        let build = IntGaugeVec::new(
            Opts::new("postsift_build_info", "postsift's version"),
            &["version"],
        )
        .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        r.register(Box::new(build)).expect("unique metric");
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique metric");

        let scanner_up = IntGaugeVec::new(
            Opts::new(
                "postsift_scanner_up",
                "1 if the scanner answered the last scan or probe",
            ),
            &["scanner"],
        )
        .expect("valid metric");
        r.register(Box::new(scanner_up.clone()))
            .expect("unique metric");
        let peer_up = IntGaugeVec::new(
            Opts::new(
                "postsift_peer_up",
                "1 while some endpoint of the peer is usable (not marked down after failures)",
            ),
            &["peer"],
        )
        .expect("valid metric");
        r.register(Box::new(peer_up.clone()))
            .expect("unique metric");
        let greylist_entries = IntGaugeVec::new(
            Opts::new(
                "postsift_greylist_entries",
                "Greylisting records stored, by kind (triplets, clients)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        r.register(Box::new(greylist_entries.clone()))
            .expect("unique metric");
        for k in ["triplets", "clients"] {
            greylist_entries.with_label_values(&[k]);
        }
        let dns = crate::dns::DnsMetrics {
            lookups: counter(
                &r,
                "postsift_dns_lookups_total",
                "DNS lookups mail authentication handed to the resolver (misses of postsift's cache), by record type and outcome",
                &["type", "outcome"],
                &[crate::dns::TYPES, crate::dns::OUTCOMES],
            ),
            duration: histogram_vec(
                &r,
                "postsift_dns_lookup_duration_seconds",
                "Time of one DNS lookup, by record type (for lookups without an answer: an upper bound)",
                "type",
                crate::dns::TYPES,
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
            cache: counter(
                &r,
                "postsift_dns_cache_requests_total",
                "Requests to postsift's DNS record cache, by record type and result (hit, miss)",
                &["type", "result"],
                &[crate::dns::TYPES, &["hit", "miss"]],
            ),
        };
        Metrics {
            auth_dkim_results_omitted: {
                let c = IntCounter::new(
                    "postsift_auth_dkim_results_omitted_total",
                    "DKIM results left out of Authentication-Results (over auth.max_dkim_results)",
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            auth_results: counter(
                &r,
                "postsift_auth_results_total",
                "Mail authentication results, by method (one per DKIM signature) and result",
                &["method", "result"],
                &[AUTH_METHODS, AUTH_RESULTS],
            ),
            auth_duration: histogram(
                &r,
                "postsift_auth_duration_seconds",
                "Time the mail authentication checks of one message took together",
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            ),
            dns,
            dkim_sign: crate::sign::SignMetrics::register(&r),
            greylist_decisions: counter(
                &r,
                "postsift_greylist_decisions_total",
                "Greylisting policy decisions, by result",
                &["result"],
                &[GREYLIST_RESULTS],
            ),
            greylist_store_duration: histogram_vec(
                &r,
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
                &r,
                "postsift_greylist_store_errors_total",
                "Greylisting store failures (the on_failure answer was given), by kind",
                &["kind"],
                &[GREYLIST_STORE_ERRORS],
            ),
            greylist_store_up: gauge(
                &r,
                "postsift_greylist_store_up",
                "1 if the last greylisting store operation succeeded",
            ),
            greylist_entries,
            greylist_evicted: {
                let c = IntCounter::new(
                    "postsift_greylist_evicted_total",
                    "Greylisting triplets deleted, least recently seen first, over greylist.max_triplets",
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            greylist_connections_active: gauge(
                &r,
                "postsift_greylist_connections_active",
                "Open policy service connections",
            ),
            listener_refused: counter(
                &r,
                "postsift_listener_refused_total",
                "Connections closed at accept: the listener's connection limit was reached",
                &["listener"],
                &[&["policy", "release", "metrics"]],
            ),
            messages: counter(
                &r,
                "postsift_messages_total",
                "Messages that reached end of DATA, by content verdict and final action",
                &["verdict", "action"],
                &[VERDICTS, ACTIONS],
            ),
            recipients: counter(
                &r,
                "postsift_recipients_total",
                "Recipients by final result",
                &["result"],
                &[RECIPIENT_RESULTS],
            ),
            message_size: histogram(
                &r,
                "postsift_message_size_bytes",
                "Size of received messages",
                exponential_buckets(1024.0, 4.0, 9).expect("buckets"),
            ),
            parts: histogram(
                &r,
                "postsift_message_parts",
                "Decoded parts the MIME walk found per message (clamd scans each)",
                vec![0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0],
            ),
            spam_score: histogram(
                &r,
                "postsift_spam_score",
                "Spam scores given by spamd",
                vec![
                    -5.0, -2.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 15.0, 20.0,
                    50.0, 100.0, 1000.0,
                ],
            ),
            stage_duration: histogram_vec(
                &r,
                "postsift_stage_duration_seconds",
                "Time per message in each stage",
                "stage",
                STAGES,
                time_buckets.clone(),
            ),
            scanner_duration: histogram_vec(
                &r,
                "postsift_scanner_duration_seconds",
                "Time each scanner took per message",
                "scanner",
                SCANNERS,
                time_buckets.clone(),
            ),
            scanner_up,
            reinject_up: gauge(
                &r,
                "postsift_reinject_up",
                "1 if the reinjection server answered recently",
            ),
            peer_up,
            peer_skipped: counter(
                &r,
                "postsift_peer_skipped_total",
                "Attempts that took the peer's failure path at once: every endpoint was down",
                &["peer"],
                &[crate::peers::Peer::ALL],
            ),
            scanner_errors: counter(
                &r,
                "postsift_scanner_errors_total",
                "Scanner failures by kind",
                &["scanner", "kind"],
                &[SCANNERS, SCANNER_ERRORS],
            ),
            reinject_errors: counter(
                &r,
                "postsift_reinject_errors_total",
                "Reinjection failures by kind",
                &["kind"],
                &[REINJECT_ERRORS],
            ),
            tempfails: counter(
                &r,
                "postsift_tempfails_total",
                "Temporary failures given to the client, by reason",
                &["reason"],
                &[TEMPFAIL_REASONS],
            ),
            unchecked: counter(
                &r,
                "postsift_unchecked_total",
                "Messages not fully checked (clamd failed, or the MIME walk stopped at a limit), by reason and action",
                &["reason", "action"],
                &[UNCHECKED_REASONS, ACTIONS],
            ),
            sessions_active: gauge(&r, "postsift_sessions_active", "Open SMTP/LMTP sessions"),
            sessions: counter(
                &r,
                "postsift_sessions_total",
                "Finished sessions by protocol",
                &["protocol"],
                &[PROTOCOLS],
            ),
            in_flight: gauge(
                &r,
                "postsift_messages_in_flight",
                "Messages being scanned or reinjected",
            ),
            spool_memory: gauge(
                &r,
                "postsift_spool_memory_bytes",
                "Bytes of message data held in memory by all messages (capped by server.max_memory)",
            ),
            spool_files: gauge(
                &r,
                "postsift_spool_files",
                "Spool files open (capped by server.max_spool_files)",
            ),
            replies: counter(
                &r,
                "postsift_smtp_replies_total",
                "Replies sent to clients, by class",
                &["class"],
                &[REPLY_CLASSES],
            ),
            config_reloads: counter(
                &r,
                "postsift_config_reloads_total",
                "Configuration reloads (SIGHUP), by result",
                &["result"],
                &[RELOAD_RESULTS],
            ),
            config_last_reload_success: float_gauge(
                &r,
                "postsift_config_last_reload_success_timestamp_seconds",
                "Unix time of the last configuration taken into use (start or reload)",
            ),
            quarantined: counter(
                &r,
                "postsift_quarantined_total",
                "Messages stored in the quarantine, by category",
                &["category"],
                &[QUARANTINE_CATEGORIES],
            ),
            quarantine_entries: gauge(
                &r,
                "postsift_quarantine_entries",
                "Messages in the quarantine",
            ),
            quarantine_bytes: gauge(
                &r,
                "postsift_quarantine_bytes",
                "Bytes of the messages in the quarantine",
            ),
            quarantine_store_duration: histogram(
                &r,
                "postsift_quarantine_store_duration_seconds",
                "Time to store one message in the quarantine, fsyncs and index commit included",
                time_buckets.clone(),
            ),
            quarantine_releases: counter(
                &r,
                "postsift_quarantine_releases_total",
                "Recipients released from the quarantine through AM.PDP, by result",
                &["result"],
                &[RELEASE_RESULTS],
            ),
            policy_banks: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "postsift_policy_bank_total",
                        "Messages a policy bank ([[policy]]) applied to, for some or all recipients",
                    ),
                    &["bank"],
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            ready: AtomicBool::new(false),
            registry: r,
        }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("text format is UTF-8")
    }

    /// Shows every configured bank at 0 before its first message (at start and reload).
    pub fn declare_banks(&self, config: &crate::config::Config) {
        for b in &config.policy {
            self.policy_banks.with_label_values(&[&b.name]);
        }
    }

    /// Counts a message that bank `name` applied to.
    pub fn bank(&self, name: &str) {
        self.policy_banks.with_label_values(&[name]).inc();
    }

    /// The metric handles of one peer's health.
    pub fn peer_metrics(&self, peer: crate::peers::Peer) -> crate::peers::PeerMetrics {
        crate::peers::PeerMetrics {
            up: self.peer_up.with_label_values(&[peer.label()]),
            skipped: self.peer_skipped.with_label_values(&[peer.label()]),
        }
    }

    pub fn set_scanner_up(&self, scanner: &str, up: bool) {
        self.scanner_up.with_label_values(&[scanner]).set(up as i64);
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

    /// A configuration was taken into use (at start, or by a successful reload).
    pub fn config_applied(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.config_last_reload_success.set(now.as_secs_f64());
    }

    /// Counts one reload attempt; a success also moves the timestamp.
    pub fn reload_done(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
        if ok {
            self.config_applied();
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown`: at most `max_connections` at
/// once (more are closed at accept, so a flood of connections cannot take the descriptors the
/// mail listeners need), each request's header within 10 s, each connection 30 s at most, and
/// every connection closed at shutdown.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            metrics
                .listener_refused
                .with_label_values(&["metrics"])
                .inc();
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&metrics, req.uri().path())) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(io, service);
            tokio::select! {
                _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn) => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn respond(metrics: &Metrics, path: &str) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, "text/plain", "ready\n".to_owned())
        }
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: a scanner or the reinjection server did not answer the last probe\n"
                .to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_from_the_start() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(
            text.contains("postsift_messages_total{action=\"tempfail\",verdict=\"unchecked\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("postsift_scanner_errors_total{kind=\"timeout\",scanner=\"spamd\"} 0")
        );
        assert!(
            text.contains("postsift_stage_duration_seconds_bucket{stage=\"scan\",le=\"0.005\"} 0")
        );
        assert!(text.contains(&format!(
            "postsift_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains("postsift_sessions_total{protocol=\"lmtp\"} 0"));
        assert!(text.contains("process_resident_memory_bytes"));
        assert!(text.contains("postsift_config_reloads_total{result=\"success\"} 0"));
        assert!(text.contains("postsift_config_reloads_total{result=\"failure\"} 0"));
        assert!(text.contains("postsift_config_last_reload_success_timestamp_seconds 0"));
    }

    #[test]
    fn a_reload_counts_by_result_and_moves_the_timestamp_on_success() {
        let m = Metrics::new();
        m.reload_done(false);
        assert_eq!(m.config_reloads.with_label_values(&["failure"]).get(), 1);
        assert_eq!(m.config_last_reload_success.get(), 0.0);
        m.reload_done(true);
        assert_eq!(m.config_reloads.with_label_values(&["success"]).get(), 1);
        assert!(m.config_last_reload_success.get() > 1.6e9);
    }

    #[test]
    fn endpoints_answer() {
        let m = Metrics::new();
        assert_eq!(respond(&m, "/healthz").status(), StatusCode::OK);
        assert_eq!(
            respond(&m, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        m.ready.store(true, Ordering::Relaxed);
        assert_eq!(respond(&m, "/readyz").status(), StatusCode::OK);
        assert_eq!(respond(&m, "/nope").status(), StatusCode::NOT_FOUND);
    }
}
