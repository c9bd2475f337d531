//! The demo behind `scripts/demo.sh`: the whole pipeline on loopback with private instances of
//! every peer — Postfix (front smtpd, content_filter by LMTP) → postsift → Postfix's
//! reinjection smtpd → a stand-in for the inside mailbox server — with Debian's clamd and
//! spamd, then a few test messages through it and what happened to each.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[path = "../tests/integration/capture.rs"]
#[allow(dead_code)]
mod capture;
// peers/mod.rs allows dead code itself.
#[path = "../tests/integration/peers/mod.rs"]
mod harness;

const MESSAGES: &[(&str, &str)] = &[
    ("clean.eml", "a clean message"),
    ("gtube.eml", "the GTUBE spam test string"),
    ("eicar-plain.eml", "the EICAR test virus"),
    ("eicar-zip.eml", "EICAR inside a zip attachment"),
    ("8bit.eml", "8-bit UTF-8 text"),
];

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(harness::fixtures().join("messages").join(name)).expect("fixture")
}

fn header(data: &str, name: &str) -> String {
    let mut out = Vec::new();
    let mut on = false;
    for line in data.split("\r\n") {
        if line.is_empty() {
            break;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if on {
                out.push(line.trim().to_owned());
            }
            continue;
        }
        on = line
            .to_ascii_lowercase()
            .starts_with(&format!("{}:", name.to_ascii_lowercase()));
        if on {
            out.push(line[name.len() + 1..].trim().to_owned());
        }
    }
    out.join(" ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter("postsift=info")
        .with_ansi(false)
        .with_target(false)
        .init();

    println!("== starting private peers (temp dirs under /tmp/postsift-test, loopback only)");
    let started = Instant::now();
    let (clamd, spamd) =
        tokio::task::spawn_blocking(|| (harness::Clamd::start(), harness::Spamd::start()))
            .await
            .unwrap();
    println!(
        "   clamd  {}  (test signatures: EICAR, clam.exe)",
        clamd.socket.display()
    );
    println!("   spamd  {}  (network tests off)", spamd.addr);
    let inside = capture::Capture::start().await;
    println!("   inside mailbox server (capturing SMTP)  {}", inside.addr);
    let filter: SocketAddr = format!("127.0.0.1:{}", harness::free_port())
        .parse()
        .unwrap();
    let final_dest = inside.addr;
    let postfix = tokio::task::spawn_blocking(move || {
        harness::Postfix::start(harness::PostfixOpts {
            filter,
            filter_lmtp: true,
            final_dest,
        })
    })
    .await
    .unwrap();
    println!(
        "   Postfix  front smtpd {}  →  content_filter lmtp:{}  →  reinjection smtpd {}",
        postfix.smtp_addr(),
        filter,
        postfix.reinject_addr()
    );
    let metrics_port = harness::free_port();
    let toml = format!(
        "[server]\nhostname = \"filter.demo.local\"\n\
         [reinject]\nto = \"{}\"\n\
         [clamd]\nendpoints = [\"{}\"]\n\
         [spamd]\nendpoints = [\"{}\"]\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\nprobe_interval = 2\n",
        postfix.reinject_addr(),
        clamd.socket.display(),
        spamd.addr
    );
    let daemon = Daemon::start(&toml, filter).await;
    println!("   postsift {filter}  (metrics on http://127.0.0.1:{metrics_port}/metrics)");
    println!("   ready in {:.1} s\n", started.elapsed().as_secs_f64());

    println!(
        "== sending test messages to Postfix's front door; postsift logs one line per message:"
    );
    let front = postfix.smtp_addr();
    let mut queue_ids = Vec::new();
    for (file, what) in MESSAGES {
        let body = fixture(file);
        let replies = tokio::task::spawn_blocking(move || {
            harness::smtp_send(front, "sender@example.org", &["bob@example.com"], &body)
        })
        .await
        .unwrap();
        let queued = replies
            .iter()
            .position(|r| r.0 == 354)
            .and_then(|i| replies.get(i + 1))
            .map(|r| r.1.clone())
            .unwrap_or_else(|| format!("{replies:?}"));
        let qid = queued.rsplit(' ').next().unwrap_or("").to_owned();
        queue_ids.push((file, what, qid));
    }

    // Wait until Postfix has handed everything to postsift and back out.
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let log = postfix.log();
        if queue_ids
            .iter()
            .all(|(_, _, q)| log.contains(&format!("{q}: removed")))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    println!("\n== what happened to each message");
    let log = postfix.log();
    let arrived = inside.all();
    for (file, what, qid) in &queue_ids {
        println!("\n-- {file}: {what} (Postfix queue id {qid})");
        let feed = log
            .lines()
            .find(|l| {
                l.contains(qid.as_str())
                    && l.contains(&format!(":{}", filter.port()))
                    && l.contains("status=")
            })
            .map(|l| l[l.find("status=").unwrap()..].to_owned())
            .unwrap_or_else(|| "no delivery to postsift logged yet".into());
        println!("   Postfix → postsift: {feed}");
        let subject_of = |m: &capture::Transaction| header(&m.text(), "Message-ID");
        let original_id = header(&String::from_utf8_lossy(&fixture(file)), "Message-ID");
        match arrived.iter().find(|m| subject_of(m) == original_id) {
            Some(m) => {
                let t = m.text();
                println!("   arrived at the inside server with:");
                for h in [
                    "Subject",
                    "X-Virus-Scanned",
                    "X-Spam-Flag",
                    "X-Spam-Score",
                    "X-Spam-Level",
                    "X-Spam-Status",
                ] {
                    let v = header(&t, h);
                    if !v.is_empty() || h == "X-Spam-Level" {
                        println!("     {h}: {v}");
                    }
                }
            }
            None => println!("   did not arrive at the inside server"),
        }
    }

    let metrics = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port))
            .await
            .ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        Some(buf)
    }
    .await
    .unwrap_or_default();
    println!("\n== postsift's counters (from /metrics)");
    for line in metrics.lines() {
        if (line.starts_with("postsift_messages_total") || line.starts_with("postsift_scanner_up"))
            && !line.ends_with(" 0")
        {
            println!("   {line}");
        }
    }
    println!(
        "\n   Postfix queue left: {} message(s); {} delivered inside.",
        postfix.queue_count(),
        inside.count()
    );

    let arrived_ids: Vec<String> = arrived
        .iter()
        .map(|m| header(&m.text(), "Message-ID"))
        .collect();
    daemon.stop().await;
    drop(postfix);
    drop(spamd);
    drop(clamd);
    println!("\n== done: every private instance stopped and its temp dir removed");
    // For scripts/package-test.sh: one line per message that reached the inside server.
    if let Ok(path) = std::env::var("POSTSIFT_DEMO_ARRIVED") {
        let lines: String = MESSAGES
            .iter()
            .filter(|(file, _)| {
                let id = header(&String::from_utf8_lossy(&fixture(file)), "Message-ID");
                arrived_ids.contains(&id)
            })
            .map(|(file, _)| format!("{file}\n"))
            .collect();
        std::fs::write(path, lines).expect("write POSTSIFT_DEMO_ARRIVED");
    }
}

/// postsift itself: in this process as the user running the demo, or, with `POSTSIFT_DAEMON`
/// set (a shell command, e.g. the installed binary under `setpriv` as `_postsift`), that command
/// reading the demo's configuration from `POSTSIFT_DAEMON_CONFIG`, with the lines of
/// `POSTSIFT_DAEMON_SERVER_TOML` added to its `[server]` section.
enum Daemon {
    InProcess {
        shutdown: tokio_util::sync::CancellationToken,
        server: tokio::task::JoinHandle<std::io::Result<()>>,
    },
    External(std::process::Child),
}

impl Daemon {
    async fn start(toml: &str, filter: SocketAddr) -> Daemon {
        let Ok(command) = std::env::var("POSTSIFT_DAEMON") else {
            let config =
                postsift::config::Config::parse(toml, std::path::Path::new("demo.toml")).unwrap();
            let listener = tokio::net::TcpListener::bind(filter).await.unwrap();
            let shutdown = tokio_util::sync::CancellationToken::new();
            let server = tokio::spawn(postsift::serve(config, vec![listener], shutdown.clone()));
            return Daemon::InProcess { shutdown, server };
        };
        let path = std::env::var("POSTSIFT_DAEMON_CONFIG").expect("POSTSIFT_DAEMON_CONFIG");
        let extra = std::env::var("POSTSIFT_DAEMON_SERVER_TOML").unwrap_or_default();
        let toml = toml.replacen(
            "[server]\n",
            &format!("[server]\nlisten = [\"{filter}\"]\n{extra}\n"),
            1,
        );
        std::fs::write(&path, toml).expect("write POSTSIFT_DAEMON_CONFIG");
        println!("   postsift started by: {command}");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .spawn()
            .expect("start POSTSIFT_DAEMON");
        // Ready when it accepts connections (or gone when it exited).
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("postsift exited before listening: {status}");
            }
            if tokio::net::TcpStream::connect(filter).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Daemon::External(child)
    }

    async fn stop(self) {
        match self {
            Daemon::InProcess { shutdown, server } => {
                shutdown.cancel();
                let _ = server.await;
            }
            Daemon::External(mut child) => {
                // SIGTERM drains, as systemctl stop would.
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let status = tokio::task::spawn_blocking(move || child.wait())
                    .await
                    .unwrap();
                println!("   postsift exited: {status:?}");
            }
        }
    }
}
