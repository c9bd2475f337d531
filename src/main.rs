//! The `postsift` command: `run` (the daemon), `check-config`, `reload`, `scan` and `greylist`. Logging and
//! the signals (SIGTERM drains, SIGHUP reloads) are set up here, and this is the only place that
//! uses anyhow.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postsift::config::{Config, LogFormat};
use postsift::filter::{self, Outcome};
use postsift::message::Message;
use postsift::policy::{Category, Disposition};
use postsift::smtp::reply;
use tokio_util::sync::CancellationToken;

/// sysexits.h: a bad configuration or command line.
const EX_USAGE: u8 = 64;
/// sysexits.h: the daemon to signal is not there.
const EX_UNAVAILABLE: u8 = 69;
const EX_IOERR: u8 = 74;

#[derive(Parser)]
#[command(
    name = "postsift",
    version,
    about = "After-queue content filter for Postfix (clamd + spamd)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the filter in the foreground; logs go to stderr. SIGTERM/SIGINT drain gracefully;
    /// SIGHUP reloads the configuration file.
    Run {
        /// Configuration file (default: /etc/postsift/postsift.toml if it exists, else built-in defaults).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and exit (64 on error, naming the bad key).
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration (64 on error, naming the bad key), then send SIGHUP to the
    /// running daemon, whose pid is read from `server.pid_file`. Without a pid file: 64; use
    /// `kill -HUP $(pidof postsift)` instead. 69 if the daemon cannot be signalled.
    Reload {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Scan one message file with the configured scanners; print the verdict and the headers
    /// that would be added. Exit code: 0 clean, 1 spam, 2 virus, 3 not checked (scanner failure).
    Scan {
        #[arg(long)]
        config: Option<PathBuf>,
        message: PathBuf,
    },
    /// The greylisting store named by `greylist.store` (works beside the running daemon).
    Greylist {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: GreylistAction,
    },
}

#[derive(Subcommand)]
enum GreylistAction {
    /// Print every triplet and auto-whitelisted client, one a line.
    List,
    /// Put a client address on the auto-whitelist (as if it had passed
    /// `auto_whitelist_clients` times).
    Whitelist { client: std::net::IpAddr },
    /// Delete what is past `max_age` (or past `retry_window` without a pass).
    Purge,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = match &cli.command {
        Command::Run { config }
        | Command::CheckConfig { config }
        | Command::Reload { config }
        | Command::Scan { config, .. }
        | Command::Greylist { config, .. } => config.clone(),
    };
    let config = match Config::load_or_default(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postsift: {e}");
            if matches!(cli.command, Command::Reload { .. }) {
                eprintln!("postsift: not reloading; the daemon keeps running on its configuration");
            }
            return ExitCode::from(EX_USAGE);
        }
    };
    match cli.command {
        Command::CheckConfig { .. } => {
            // Warnings name what the file configures but postsift will not use; the
            // configuration still works, so the exit code stays 0.
            for w in config.warnings() {
                eprintln!("warning: {w}");
            }
            println!("configuration ok");
            ExitCode::SUCCESS
        }
        Command::Reload { .. } => {
            let Some(pid_file) = &config.server.pid_file else {
                eprintln!(
                    "postsift: server.pid_file is not set, so the daemon's pid is unknown; set it \
                     (and restart), or signal the daemon yourself: kill -HUP $(pidof postsift)"
                );
                return ExitCode::from(EX_USAGE);
            };
            match signal_daemon(pid_file) {
                Ok(pid) => {
                    println!("configuration ok; SIGHUP sent to postsift (pid {pid})");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("postsift: {e:#}");
                    ExitCode::from(EX_UNAVAILABLE)
                }
            }
        }
        Command::Run { .. } => {
            init_logging(&config);
            match run(config, config_path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Greylist { action, .. } => match greylist(&config, action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("postsift: {e:#}");
                ExitCode::from(EX_UNAVAILABLE)
            }
        },
        Command::Scan { message, .. } => {
            init_logging(&config);
            match scan(config, &message) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("postsift: {e:#}");
                    ExitCode::from(EX_IOERR)
                }
            }
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
}

/// `path` is the `--config` given at start: SIGHUP reads the same file again.
fn run(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // Handlers first: once the pid file is written anyone may send SIGHUP, whose default
        // action would end the process.
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
        for w in config.warnings() {
            tracing::warn!("configuration: {w}");
        }
        let mut listeners = Vec::new();
        for addr in &config.server.listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(%addr, "listening");
            listeners.push(l);
        }
        let _pid_file = config
            .server
            .pid_file
            .as_deref()
            .map(PidFile::create)
            .transpose()?;
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        let (reload, reloads) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => { tracing::info!("SIGTERM received"); break }
                    _ = int.recv() => { tracing::info!("SIGINT received"); break }
                    _ = hup.recv() => {
                        tracing::info!(config = %config_source(path.as_deref()), "SIGHUP received: reloading the configuration");
                        let loaded = Config::load_or_default(path.as_deref());
                        for w in loaded.iter().flat_map(Config::warnings) {
                            tracing::warn!("configuration: {w}");
                        }
                        if reload.send(loaded).await.is_err() {
                            break;
                        }
                    }
                }
            }
            signals.cancel();
        });
        postsift::serve_with_reload(config, listeners, shutdown, reloads).await?;
        Ok(())
    })
}

/// What `Config::load_or_default(path)` reads, for the log.
fn config_source(path: Option<&Path>) -> String {
    let default = Path::new(postsift::config::DEFAULT_PATH);
    match path {
        Some(p) => p.display().to_string(),
        None if default.exists() => default.display().to_string(),
        None => "built-in defaults".into(),
    }
}

/// The pid file named by `server.pid_file`: written once the listeners are bound, removed when
/// `run` returns.
struct PidFile(PathBuf);

impl PidFile {
    fn create(path: &Path) -> anyhow::Result<PidFile> {
        // Written aside and renamed, so `postsift reload` never reads half a pid.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write {} (server.pid_file)", path.display()))?;
        Ok(PidFile(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sends SIGHUP to the pid in `pid_file`, after checking that the process is a postsift: a
/// stale pid file may name an unrelated process now, which SIGHUP would end.
fn signal_daemon(pid_file: &Path) -> anyhow::Result<i32> {
    let shown = pid_file.display();
    let text = std::fs::read_to_string(pid_file)
        .with_context(|| format!("cannot read {shown} (server.pid_file): is postsift running?"))?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|&p| p > 0)
        .with_context(|| format!("{shown} holds no pid: {:?}", text.trim()))?;
    #[cfg(target_os = "linux")]
    {
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/comm")).with_context(|| {
            format!("no process {pid} (from {shown}): is postsift running? (stale pid file)")
        })?;
        let ours = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
        if theirs.trim() != ours.trim() {
            anyhow::bail!(
                "process {pid} (from {shown}) is {:?}, not postsift: stale pid file?",
                theirs.trim()
            );
        }
    }
    // SAFETY: kill(2) with a positive pid and a valid signal number.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot signal process {pid} (from {shown})"));
    }
    Ok(pid)
}

/// `postsift greylist list|whitelist|purge`: straight on the store, so it works whether or not
/// the daemon runs (SQLite's locking, or Redis).
fn greylist(config: &Config, action: GreylistAction) -> anyhow::Result<()> {
    use postsift::greylist::store::{Entry, Location, Store};
    let g = &config.greylist;
    let location = Location::parse(&g.store);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let time = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| t.to_string())
    };
    let now = chrono::Utc::now().timestamp();
    let params = g.params();
    rt.block_on(async {
        let store = Store::open(&location, std::time::Duration::from_secs(g.store_timeout))
            .with_context(|| format!("greylist.store {:?}", g.store))?;
        match action {
            GreylistAction::List => {
                for e in store.list().await? {
                    match e {
                        Entry::Triplet { key, first, last } => {
                            let state = if last - first >= params.delay {
                                "passed"
                            } else {
                                "waiting"
                            };
                            println!(
                                "triplet {key} first={} last={} {state}",
                                time(first),
                                time(last)
                            );
                        }
                        Entry::Client { ip, count, last } => {
                            let awl = params.awl_clients > 0 && count >= params.awl_clients;
                            println!(
                                "client {ip} passes={count} last={} {}",
                                time(last),
                                if awl { "whitelisted" } else { "counting" }
                            );
                        }
                    }
                }
            }
            GreylistAction::Whitelist { client } => {
                if params.awl_clients == 0 {
                    anyhow::bail!(
                        "greylist.auto_whitelist_clients is 0 (auto-whitelist off): a whitelisted \
                         client would not be honoured; add it to a whitelist_clients file instead"
                    );
                }
                let ip = client.to_canonical().to_string();
                store
                    .whitelist(params, &ip, params.awl_clients, now)
                    .await?;
                println!("client {ip} auto-whitelisted");
            }
            GreylistAction::Purge => {
                let (t, c) = store.purge(params, now).await?;
                println!("purged {t} triplets, {c} clients");
            }
        }
        Ok(())
    })
}

/// `postsift scan`: the pipeline's checks and policy on one file, and the header block it would
/// write; nothing is delivered.
fn scan(config: Config, path: &std::path::Path) -> anyhow::Result<u8> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let msg = Message::from_bytes(&data);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shared = postsift::Shared::new(config, CancellationToken::new());
    let env = postsift::scan::ScanEnvelope::default();
    let (report, decision) = rt.block_on(filter::judge(&shared, &msg, &env));
    println!("virus scan: {:?}", report.virus);
    println!("spam scan:  {:?}", report.spam);
    print_parts(&shared.config, &msg, report.parts.as_ref());
    println!("category:   {}", decision.category.label());
    let outcome = match &decision.disposition {
        Disposition::Deliver => None,
        Disposition::Discard => Some(Outcome::Discarded(decision.category.clone())),
        Disposition::Reject => Some(Outcome::Rejected(decision.category.clone())),
        Disposition::Tempfail(t) => Some(Outcome::Tempfailed(t.clone())),
    };
    match &outcome {
        None => println!("action:     pass (headers below are added)"),
        Some(o) => println!(
            "action:     reply {}",
            reply::for_outcome("scan", o, false, 1)[0]
        ),
    }
    if outcome.is_none() {
        let hop = filter::Hop {
            helo: "localhost".into(),
            peer: "127.0.0.1:0".parse().expect("literal"),
            local: "127.0.0.1:10024".parse().expect("literal"),
            protocol: "ESMTP",
        };
        let block = filter::header_block(&shared, &decision, &hop, "scan", &msg);
        println!("---");
        print!("{}", String::from_utf8_lossy(&block));
    }
    Ok(match (&decision.category, &decision.disposition) {
        (_, Disposition::Tempfail(_)) | (Category::Unchecked, _) => 3,
        (Category::Virus(_), _) => 2,
        (Category::Banned { .. }, _) => 4,
        (Category::Spam, _) => 1,
        (Category::Clean, _) => 0,
    })
}

/// The parts the MIME walk decoded, one line each (what clamd was given besides the whole
/// message), so an administrator can see what postsift looked at.
fn print_parts(config: &Config, msg: &Message, summary: Option<&postsift::scan::PartsSummary>) {
    match summary {
        None => println!(
            "parts:      not scanned by clamd (no clamd, [parts] off, or over parts.max_message_size)"
        ),
        Some(summary) => println!(
            "parts:      {} scanned by clamd{}{}",
            summary.count,
            summary
                .limit
                .as_ref()
                .map_or(String::new(), |l| format!(", stopped ({}): {l}", l.kind.label())),
            summary
                .infected
                .as_deref()
                .map_or(String::new(), |p| format!(", virus in: {p}")),
        ),
    }
    let limits = postsift::scan::parts::Limits::from_config(&config.parts);
    let Ok(raw) = msg.read_all() else { return };
    let walk = match postsift::scan::parts::walk(&raw, &limits, &config.spool_dir()) {
        Ok(w) => w,
        Err(e) => {
            println!("  (the walk failed: {e})");
            return;
        }
    };
    for p in walk.parts {
        let inside = match p.containers.is_empty() {
            true => String::new(),
            false => format!(", in {}", p.containers.join(" in ")),
        };
        println!(
            "  - {:<30} {:<28} {:>9} bytes{}  ({} reading, depth {}{inside})",
            p.name.as_deref().unwrap_or("-"),
            p.declared.as_deref().unwrap_or("-"),
            p.contents.len(),
            if p.contents.is_spilled() {
                " on disk"
            } else {
                ""
            },
            p.found,
            p.depth
        );
    }
}
