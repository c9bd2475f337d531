//! The `postsift` command: `run` (the daemon), `check-config`, `reload`, `scan`, `greylist`,
//! `dkim`, `quarantine`, `sql`, `import-amavis` and `generate-docs`, one file each. The command line,
//! logging and the exit codes are set up here; this binary is the only place that uses anyhow.

mod check_config;
mod dkim;
mod generate_docs;
mod greylist;
mod import_amavis;
mod quarantine;
mod reload;
mod run;
mod scan;
mod sql;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use postsift::config::{Config, LogFormat};

/// sysexits.h: a bad configuration or command line.
const EX_USAGE: u8 = 64;
/// sysexits.h: the daemon to signal is not there.
const EX_UNAVAILABLE: u8 = 69;
const EX_IOERR: u8 = 74;
/// sysexits.h: an output file cannot be created.
const EX_CANTCREAT: u8 = 73;
/// sysexits.h: a temporary failure (a release the next hop did not take).
const EX_TEMPFAIL: u8 = 75;

#[derive(Parser)]
#[command(
    name = "postsift",
    version,
    about = "After-queue content filter for Postfix (clamd + spamd)"
)]
struct Cli {
    /// Configuration file (default: /etc/postsift/postsift.toml if it exists, else built-in
    /// defaults). Accepted before or after any subcommand.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the filter in the foreground; logs go to stderr. SIGTERM/SIGINT drain gracefully;
    /// SIGHUP reloads the configuration file.
    Run,
    /// Validate the configuration and exit (64 on error, naming the bad key).
    CheckConfig,
    /// Validate the configuration (64 on error, naming the bad key), then send SIGHUP to the
    /// running daemon, whose pid is read from `server.pid_file`. Without a pid file: 64; use
    /// `kill -HUP $(pidof postsift)` instead. 69 if the daemon cannot be signalled.
    Reload,
    /// Run one message file through the pipeline (the configured scanners, policy banks,
    /// header rewriting, DKIM signing) without delivering or storing anything; print the
    /// verdict, the mail authentication results and, per recipient group, the reply and the
    /// headers that would be added. Exit code: 0 clean, 1 spam, 2 virus, 3 not checked
    /// (scanner failure), 4 banned, 5 rejected by DMARC policy.
    Scan(scan::Args),
    /// The greylisting store named by `greylist.store` (works beside the running daemon).
    Greylist {
        #[command(subcommand)]
        action: greylist::Action,
    },
    /// DKIM keys for `[dkim_sign]`.
    Dkim {
        #[command(subcommand)]
        action: dkim::Action,
    },
    /// The quarantine in `quarantine.dir` (works beside the running daemon and on a stopped
    /// one's files).
    Quarantine {
        #[command(subcommand)]
        action: quarantine::Action,
    },
    /// amavis's SQL database named by `sql.url`.
    Sql {
        #[command(subcommand)]
        action: sql::Action,
    },
    /// Reads an amavisd-new configuration (Debian's /etc/amavis/conf.d, read in run-parts order
    /// after /usr/share/amavis/conf.d, or one amavisd.conf), evaluated by perl in a Safe
    /// compartment, and prints the postsift.toml that does the same. Every setting it could not
    /// carry over is listed on stderr, with why. Exit 0, or 69 when perl cannot read it.
    ImportAmavis {
        /// A conf.d directory or an amavisd.conf file.
        #[arg(default_value = "/etc/amavis/conf.d")]
        path: PathBuf,
    },
    /// Writes the manual pages and shell completions under OUT (for packaging).
    #[command(hide = true)]
    GenerateDocs { out: PathBuf },
}

fn main() -> ExitCode {
    postsift::malloc::tune();
    let cli = Cli::parse();
    // The subcommands that need no configuration.
    match &cli.command {
        Command::Dkim { .. } => {
            let Command::Dkim { action } = cli.command else {
                unreachable!("matched")
            };
            return dkim::dkim(action);
        }
        Command::ImportAmavis { path } => return import_amavis::import_amavis(path),
        Command::GenerateDocs { out } => return generate_docs::generate_docs(out),
        _ => {}
    }
    // The DKIM keys are loaded here as the runtime loads them, so a bad key file stops every
    // command (check-config, reload, run) naming its entry, before anything binds.
    let config = match Config::load_or_default(cli.config.as_deref())
        .and_then(|c| postsift::sign::Keys::configured(&c).map(|_| c))
        .and_then(|c| match postsift::sql::store::check_url(&c.sql) {
            Ok(()) => Ok(c),
            Err(e) => Err(c.invalid_at("sql.url".into(), sql::url_problem(&e))),
        }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postsift: {e}");
            if matches!(cli.command, Command::Reload) {
                eprintln!("postsift: not reloading; the daemon keeps running on its configuration");
            }
            return ExitCode::from(EX_USAGE);
        }
    };
    match cli.command {
        Command::CheckConfig => check_config::check_config(&config),
        Command::Reload => reload::reload(&config),
        Command::Run => {
            init_logging(&config);
            run::daemon(config, cli.config)
        }
        Command::Greylist { action } => match greylist::greylist(&config, action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("postsift: {e:#}");
                ExitCode::from(EX_UNAVAILABLE)
            }
        },
        Command::Quarantine { action } => match quarantine::quarantine(&config, action) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("postsift: {e:#}");
                match e.downcast_ref::<postsift::quarantine::Error>() {
                    Some(postsift::quarantine::Error::NotFound(_))
                    | Some(postsift::quarantine::Error::Usage(_)) => ExitCode::from(EX_USAGE),
                    _ => ExitCode::from(EX_UNAVAILABLE),
                }
            }
        },
        Command::Sql { action } => sql::sql(&config, action),
        Command::Scan(args) => {
            init_logging(&config);
            match scan::scan(config, &args) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("postsift: {e:#}");
                    ExitCode::from(EX_IOERR)
                }
            }
        }
        Command::Dkim { .. } | Command::GenerateDocs { .. } | Command::ImportAmavis { .. } => {
            unreachable!("handled above")
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
        .with_writer(|| postsift::escape::OneLine(std::io::stderr()));
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
}
