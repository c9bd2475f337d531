//! The dashboard and the alert rules against a real Prometheus: Debian's `prometheus` scrapes a
//! postsift that has seen clean, spam, virus and tempfailed mail, and every PromQL expression in
//! dashboards/postsift.json and dashboards/alerts.yml is evaluated through its HTTP API; each
//! must parse and return at least one series. `promtool check rules` and `promtool test rules`
//! run here too. On a default configuration with no mail yet, every dashboard expression must
//! return series as well, and every metric a panel or rule reads must be in /metrics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::capture::Capture;
use crate::client::send_one;
use crate::peers;
use crate::util::{self, fixture, http_get, start_filter, test_config};

fn dashboards() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards"))
}

/// A private Prometheus on loopback, scraping `target` every second as job "postsift".
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = peers::free_port();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: postsift\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package prometheus) not installed?");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            peers::wait_until(Duration::from_secs(60), || peers::port_open(addr)),
            "prometheus did not start: {}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `query`; returns (status, number of series, raw body).
async fn query(prom: SocketAddr, q: &str) -> (String, usize, String) {
    let (_, body) = http_get(prom, &format!("/api/v1/query?query={}", encode(q))).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    let status = v["status"].as_str().unwrap_or("invalid").to_owned();
    let n = match &v["data"]["result"] {
        serde_json::Value::Array(a) => a.len(),
        serde_json::Value::Null => 0,
        _ => 1, // scalar or string
    };
    (status, n, body)
}

/// The expressions `dashboards/list-exprs.sh --dashboard|--alerts` prints, one per line
/// (`where<TAB>expression`, or the bare expression).
fn list_exprs(which: &str) -> Vec<(String, String)> {
    let out = Command::new("sh")
        .arg(dashboards().join("list-exprs.sh"))
        .arg(which)
        .output()
        .expect("dashboards/list-exprs.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.split_once('\t') {
            Some((at, e)) => (at.to_owned(), e.to_owned()),
            None => (which.to_owned(), l.to_owned()),
        })
        .collect()
}

/// The metric names an expression reads (alert conditions return nothing while all is well,
/// so for them each metric they read must exist in the scraped data instead).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names: Vec<String> = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("postsift_") || t.starts_with("process_") || *t == "up")
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn promtool(args: &[&str], dir: &Path) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_and_tests_the_alert_rules() {
    promtool(&["check", "rules", "alerts.yml"], &dashboards());
    promtool(&["test", "rules", "alerts_test.yml"], &dashboards());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_expression_evaluates_on_real_data() {
    let (clamd, spamd) = util::blocking(|| (util::clamd(), util::spamd())).await;
    let sink = Capture::start().await;
    let port = peers::free_port();
    // A policy bank that changes nothing, for the bank panel's series.
    let bank = "[[policy]]\nname = \"local\"\nmatch.client = [\"127.0.0.0/8\"]\n";
    let cfg = test_config(Some(&clamd), Some(&spamd), sink.addr, bank)
        .set("metrics.listen", format!("127.0.0.1:{port}"))
        .set("metrics.probe_interval", 1)
        .toml();
    let f = start_filter(&cfg).await;
    let metrics: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(http_get(metrics, "/healthz").await.0, 200);
    let prom = util::blocking(move || Prometheus::start(metrics)).await;

    // Traffic of every kind, spread over a few scrapes so rates have two points. (Counters of
    // outcomes that do not happen here, such as tempfails, exist from the start at 0.)
    for _ in 0..3 {
        for file in ["clean.eml", "gtube.eml", "eicar-plain.eml", "8bit.eml"] {
            let r = send_one(f.addr, "a@example.org", &["b@example.com"], &fixture(file)).await;
            assert_eq!(r.code, 250, "{file}: {r:?}");
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    // Wait until Prometheus has several scrapes of the traffic.
    let mut ok = false;
    let end = std::time::Instant::now() + Duration::from_secs(180);
    while std::time::Instant::now() < end {
        let (_, n, _) = query(prom.addr, "count_over_time(postsift_build_info[1m]) >= 5").await;
        if n > 0 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(ok, "Prometheus never scraped postsift five times");

    let mut failures = Vec::new();
    let dashboard = list_exprs("--dashboard");
    assert!(
        dashboard.len() >= 20,
        "only {} dashboard expressions",
        dashboard.len()
    );
    for (at, q) in &dashboard {
        let (status, n, body) = query(prom.addr, q).await;
        if status != "success" {
            failures.push(format!("{at}: invalid: {q}\n   {body}"));
        } else if n == 0 {
            failures.push(format!("{at}: no series: {q}"));
        }
    }
    let alerts = list_exprs("--alerts");
    assert!(alerts.len() >= 8, "only {} alert expressions", alerts.len());
    for (at, q) in &alerts {
        let (status, _, body) = query(prom.addr, q).await;
        if status != "success" {
            failures.push(format!("{at}: invalid: {q}\n   {body}"));
        }
        for name in metric_names(q) {
            let selector = if name == "up" {
                "up{job=\"postsift\"}".to_owned()
            } else {
                name.clone()
            };
            let (_, n, _) = query(prom.addr, &selector).await;
            if n == 0 {
                failures.push(format!("{at}: no series for {name} in: {q}"));
            }
        }
    }
    let total = dashboard.len() + alerts.len();
    assert!(
        failures.is_empty(),
        "{} of {total} expressions failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    drop(prom);
    f.stop().await;
}

/// Every metric a dashboard panel or an alert rule reads has a series on a default
/// configuration before any mail has passed (no policy banks, no greylisting, no traffic): a
/// panel must not show "No data" for want of a series (`postsift_policy_bank_total` had none
/// without banks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_has_a_series_on_a_default_configuration() {
    let port = peers::free_port();
    let f = start_filter(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")).await;
    let endpoint: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, text) = http_get(endpoint, "/metrics").await;
    assert_eq!(status, 200);
    let series: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or(""))
        .collect();
    let mut missing = Vec::new();
    for (at, q) in list_exprs("--dashboard")
        .into_iter()
        .chain(list_exprs("--alerts"))
    {
        // `up` is Prometheus's own, not postsift's.
        for name in metric_names(&q).into_iter().filter(|n| n != "up") {
            if !series.contains(name.as_str()) {
                missing.push(format!("{at}: no series for {name}"));
            }
        }
    }
    missing.dedup();
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    f.stop().await;
}

/// Every dashboard expression returns a series from a real Prometheus scraping postsift on a
/// default configuration before any mail has passed: rates of counters at 0 are 0, quantiles
/// of empty histograms NaN, both series; a panel shows "No data" only when a series is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_expression_returns_series_on_a_default_configuration() {
    let port = peers::free_port();
    let cfg = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\nprobe_interval = 1\n");
    let f = start_filter(&cfg).await;
    let metrics: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(http_get(metrics, "/healthz").await.0, 200);
    let prom = util::blocking(move || Prometheus::start(metrics)).await;
    let mut scraped = false;
    let end = std::time::Instant::now() + Duration::from_secs(180);
    while std::time::Instant::now() < end {
        let (_, n, _) = query(prom.addr, "count_over_time(postsift_build_info[1m]) >= 5").await;
        if n > 0 {
            scraped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(scraped, "Prometheus never scraped postsift five times");
    let mut failures = Vec::new();
    for (at, q) in list_exprs("--dashboard") {
        let (status, n, body) = query(prom.addr, &q).await;
        if status != "success" {
            failures.push(format!("{at}: invalid: {q}\n   {body}"));
        } else if n == 0 {
            failures.push(format!("{at}: no series: {q}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop(prom);
    f.stop().await;
}
