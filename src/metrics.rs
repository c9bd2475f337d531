//! Prometheus helpers: registering a series with every label value shown from the first scrape,
//! the text encoding, and the small HTTP endpoint serving `/metrics`, `/healthz` and `/readyz`.
//! Each part registers and owns its own series (`XMetrics::register(&Registry)`); the registry
//! is built with the runtime's metrics (never the global default). Label values are small
//! closed sets, never an address or a virus name.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The buckets of the per-message time histograms (stages, scanners, quarantine store).
pub const TIME_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

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

pub(crate) fn histogram_vec(
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

pub(crate) fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

pub(crate) fn float_gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// A counter without labels.
pub(crate) fn counter0(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// A gauge with one label, each of `values` shown from the start.
pub(crate) fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    for v in values {
        g.with_label_values(&[v]);
    }
    g
}

/// `postsift_build_info`, `postsift_runtime_worker_threads` (inside a runtime) and, on Linux,
/// the process's own metrics (`process_*`).
pub fn register_process(r: &Registry) {
    let build = gauge_vec(
        r,
        "postsift_build_info",
        "postsift's version",
        "version",
        &[],
    );
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        gauge(
            r,
            "postsift_runtime_worker_threads",
            "Threads running sessions (server.worker_threads)",
        )
        .set(i64::try_from(rt.metrics().num_workers()).unwrap_or(i64::MAX));
    }
    #[cfg(target_os = "linux")]
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
    .expect("unique metric");
}

/// `registry` in Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = Vec::with_capacity(16 * 1024);
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding cannot fail");
    String::from_utf8(out).expect("text format is UTF-8")
}

/// What the HTTP endpoint serves: the registry, and the readiness the health probe sets.
pub struct Endpoint {
    pub registry: Registry,
    /// Set by the health probe: every configured peer answered at the last probe.
    pub ready: AtomicBool,
    /// `postsift_listener_refused_total{listener="metrics"}`.
    refused: IntCounter,
}

impl Endpoint {
    pub fn new(registry: Registry, refused: IntCounter) -> Endpoint {
        Endpoint {
            registry,
            ready: AtomicBool::new(false),
            refused,
        }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        encode(&self.registry)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown`: at most `max_connections` at
/// once (more are closed at accept, so a flood of connections cannot take the descriptors the
/// mail listeners need), each request's header within 10 s, each connection 30 s at most, and
/// every connection closed at shutdown.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Endpoint>,
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
            metrics.refused.inc();
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

fn respond(metrics: &Endpoint, path: &str) -> Response<Full<Bytes>> {
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
    fn endpoints_answer() {
        let m = Endpoint::new(Registry::new(), IntCounter::new("x", "x").unwrap());
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
