//! The SQL store's cost, measured (not asserted), against a private PostgreSQL and MariaDB
//! started as the tests start them: postsift's CPU per logged message (this process's user +
//! system time while the log writer drains N records; the database's own CPU is not counted),
//! the log's throughput, and the quarantine store's latency (p50, p99) for 4 KiB and 64 KiB
//! messages, one at a time and 16 at once.
//!   cargo run --release --example sqlcost -- [-n N]

#[path = "../tests/integration/peers/mod.rs"]
mod peers;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use peers::sql::{Kind, SqlServer};
use postsift::sql::log::{Content, Ds, LogRecord, LogWriter, RcptRecord};
use postsift::sql::metrics::SqlMetrics;
use postsift::sql::quarantine::SqlQuarantine;
use postsift::sql::{Pool, SqlConfig};

fn process_cpu() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn record(id: String, i: usize) -> LogRecord {
    LogRecord {
        mail_id: id,
        secret_id: "secret012345".into(),
        am_id: format!("am{i}"),
        time: SystemTime::now(),
        host: "bench.example".into(),
        policy: String::new(),
        client_addr: "192.0.2.1".into(),
        size: 4096,
        originating: false,
        content: Content::Clean,
        quar_type: None,
        quar_loc: String::new(),
        dsn_sent: None,
        spam_level: Some(1.0),
        message_id: format!("<{i}@bench.example>"),
        from_addr: "Sender <s@example.net>".into(),
        subject: "a bench message".into(),
        sender: format!("sender{}@example.net", i % 50),
        recipients: (0..2)
            .map(|r| RcptRecord {
                addr: format!("user{}@example.org", (i + r) % 200),
                is_local: true,
                content: Content::Clean,
                ds: Ds::Pass,
                blacklisted: false,
                whitelisted: false,
                bspam_level: Some(1.0),
                smtp_resp: "250 2.0.0 Ok".into(),
            })
            .collect(),
    }
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1e3
}

async fn measure(kind: Kind, n: usize) {
    let s = SqlServer::start(kind);
    let db = s.create_db("bench");
    s.client(
        &db,
        postsift::sql::schema::amavis_ddl(match kind {
            Kind::Postgres => postsift::sql::Backend::Postgres,
            Kind::MariaDb => postsift::sql::Backend::MySql,
        }),
    );
    let cfg = SqlConfig {
        url: s.url(&db),
        log: true,
        log_backlog: n + 1,
        ..SqlConfig::default()
    };
    let m = SqlMetrics::register(&prometheus::Registry::new());
    let pool = Pool::connect_lazy(&cfg).unwrap();
    let (log, task) = LogWriter::spawn(pool.clone(), &cfg, m.clone());
    let (c0, t0) = (process_cpu(), Instant::now());
    for i in 0..n {
        log.submit(record(format!("L{i:011}"), i));
    }
    drop(log);
    task.await.unwrap();
    let (cpu, wall) = (process_cpu() - c0, t0.elapsed());
    println!(
        "{kind:?} log: {n} messages (2 recipients each) in {:.2} s = {:.0}/s; postsift CPU {:.3} ms per message",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e3 / n as f64
    );
    let q = Arc::new(SqlQuarantine::new(pool.clone(), &cfg, m.clone()));
    for size in [4096usize, 65536] {
        let body = vec![b'x'; size];
        for conc in [1usize, 16] {
            let per = (n / 10).max(conc * 10) / conc;
            let mut tasks = Vec::new();
            for c in 0..conc {
                let (q, body) = (q.clone(), body.clone());
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    for i in 0..per {
                        let rec = record(format!("Q{size}{conc}c{c}i{i}"), i);
                        let t = Instant::now();
                        q.store(&rec, &mut &body[..]).await.unwrap();
                        lat.push(t.elapsed());
                    }
                    lat
                }));
            }
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await.unwrap());
            }
            println!(
                "{kind:?} quarantine store {} KiB × {conc} at once: {} stores, p50 {:.2} ms, p99 {:.2} ms",
                size / 1024,
                lat.len(),
                pct(&mut lat, 0.5),
                pct(&mut lat, 0.99)
            );
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = args
        .iter()
        .position(|a| a == "-n")
        .map(|i| args[i + 1].parse().expect("-n N"))
        .unwrap_or(5000);
    for kind in [Kind::Postgres, Kind::MariaDb] {
        measure(kind, n).await;
    }
}
