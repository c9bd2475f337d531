//! The `postsift` command: `run` (the daemon), `check-config` and `scan`. Logging is set up here,
//! and this is the only place that uses anyhow.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postsift::config::{Config, LogFormat};
use postsift::message::Message;
use postsift::policy::{self, Category, Disposition};
use postsift::rewrite;
use postsift::scan::Scanners;
use tokio_util::sync::CancellationToken;

/// sysexits.h: a bad configuration or command line.
const EX_USAGE: u8 = 64;
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
    /// Run the filter in the foreground; logs go to stderr. SIGTERM/SIGINT drain gracefully.
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
    /// Scan one message file with the configured scanners; print the verdict and the headers
    /// that would be added. Exit code: 0 clean, 1 spam, 2 virus, 3 not checked (scanner failure).
    Scan {
        #[arg(long)]
        config: Option<PathBuf>,
        message: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = match &cli.command {
        Command::Run { config }
        | Command::CheckConfig { config }
        | Command::Scan { config, .. } => config.clone(),
    };
    let config = match Config::load_or_default(config_path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postsift: {e}");
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
        Command::Run { .. } => {
            init_logging(&config);
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::from(1)
                }
            }
        }
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

fn run(config: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut listeners = Vec::new();
        for addr in &config.server.listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(%addr, "listening");
            listeners.push(l);
        }
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            signals.cancel();
        });
        postsift::serve(config, listeners, shutdown).await?;
        Ok(())
    })
}

fn scan(config: Config, path: &std::path::Path) -> anyhow::Result<u8> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let msg = Message::from_bytes(&data);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = postsift::metrics::Metrics::new();
    let env = postsift::scan::ScanEnvelope::default();
    let report = rt.block_on(Scanners::new(&config).scan(&msg, &env, &metrics));
    let decision = policy::decide(&config, &report, "scan");
    println!("virus scan: {:?}", report.virus);
    println!("spam scan:  {:?}", report.spam);
    println!("category:   {}", decision.category.label());
    let action = match &decision.disposition {
        Disposition::Deliver => "pass (headers below are added)".to_owned(),
        Disposition::Discard(r) | Disposition::Reject(r) | Disposition::Tempfail(r) => {
            format!("reply {r}")
        }
    };
    println!("action:     {action}");
    if decision.disposition == Disposition::Deliver {
        let trace = rewrite::Trace {
            helo: "localhost",
            peer: "127.0.0.1:0".parse().expect("literal"),
            local: "127.0.0.1:10024".parse().expect("literal"),
            protocol: "ESMTP",
            id: "scan",
        };
        let block = rewrite::header_block(&config, &decision, &trace, msg.header_section());
        println!("---");
        print!("{}", String::from_utf8_lossy(&block));
    }
    Ok(match (&decision.category, &decision.disposition) {
        (_, Disposition::Tempfail(_)) | (Category::Unchecked, _) => 3,
        (Category::Virus(_), _) => 2,
        (Category::Spam, _) => 1,
        (Category::Clean, _) => 0,
    })
}
