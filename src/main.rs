//! The `postsift` command: `run` (the daemon), `check-config`, `reload`, `scan`, `greylist`,
//! `import-amavis`
//! and `quarantine`. Logging and
//! the signals (SIGTERM drains, SIGHUP reloads) are set up here, and this is the only place that
//! uses anyhow.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postsift::config::{Config, LogFormat};
use postsift::escape;
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
    /// Scan one message file with the configured scanners; print the verdict, the mail
    /// authentication results and the headers that would be added. Exit code: 0 clean, 1 spam,
    /// 2 virus, 3 not checked (scanner failure), 4 banned, 5 rejected by DMARC policy.
    Scan {
        /// The original client's address, for SPF (as XFORWARD ADDR would give it). Without
        /// it SPF is not checked.
        #[arg(long)]
        client_ip: Option<std::net::IpAddr>,
        /// The original client's HELO name, for SPF's HELO identity.
        #[arg(long)]
        helo: Option<String>,
        /// The envelope sender (MAIL FROM), for SPF and DMARC.
        #[arg(long, default_value = "")]
        mail_from: String,
        /// Treat it as outgoing mail: show the DKIM-Signature `[dkim_sign]` would add (with
        /// signing enabled and a key for the From domain).
        #[arg(long)]
        dkim_sign: bool,
        message: PathBuf,
    },
    /// The greylisting store named by `greylist.store` (works beside the running daemon).
    Greylist {
        #[command(subcommand)]
        action: GreylistAction,
    },
    /// DKIM keys for `[dkim_sign]`.
    Dkim {
        #[command(subcommand)]
        action: DkimAction,
    },
    /// The quarantine in `quarantine.dir` (works beside the running daemon and on a stopped
    /// one's files).
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
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

#[derive(Subcommand)]
enum QuarantineAction {
    /// One line per message: id, time, category, size, sender, recipients (with their
    /// release state), reason, subject.
    List {
        /// virus, banned, spam or unchecked.
        #[arg(long)]
        category: Option<String>,
        /// Only messages for this recipient.
        #[arg(long)]
        recipient: Option<String>,
        /// Only messages since: `2h`, `3d`, `30m`, a date `2026-12-01`, RFC 3339 or unix time.
        #[arg(long)]
        since: Option<String>,
    },
    /// The envelope, the headers and a safe text rendering of the body (control characters
    /// escaped; nothing fetched or opened).
    Show {
        id: String,
        /// The whole body text, not its first 64 KiB.
        #[arg(long)]
        full: bool,
    },
    /// Sends the message to `reinject.to` with its original envelope, once per recipient.
    /// Exit code 0 when every recipient asked for is released (now or before), 75 otherwise.
    Release {
        id: String,
        /// Release only to this original recipient (repeatable; default: all).
        #[arg(long)]
        recipient: Vec<String>,
        /// Send it to this address instead (repeatable; each gets it once).
        #[arg(long)]
        to: Vec<String>,
        /// Also send to recipients an interrupted release left `releasing` (they may have
        /// got it already: check the next hop's log first).
        #[arg(long)]
        force: bool,
    },
    /// Removes the message from the quarantine.
    Delete { id: String },
    /// Removes what is older than `quarantine.retention_days` (the daemon does it hourly).
    Purge,
}

#[derive(Subcommand)]
enum DkimAction {
    /// Writes a new private key (PEM, mode 0600) and prints the DNS TXT record to publish at
    /// `<selector>._domainkey.<domain>`; then add a `[[dkim_sign.keys]]` entry for it.
    Genkey {
        /// The domain it signs for (the From domain, the signature's d=).
        #[arg(long)]
        domain: String,
        /// The selector (s=), e.g. the year and month: "202612".
        #[arg(long)]
        selector: String,
        /// "rsa-sha256" or "ed25519-sha256" (not every verifier knows Ed25519 yet: publish an
        /// RSA key beside it).
        #[arg(long, default_value = "rsa-sha256")]
        algorithm: String,
        /// RSA key size.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
        /// The private key file to write.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
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
    if let Command::Dkim { action } = cli.command {
        return dkim(action);
    }
    if let Command::ImportAmavis { path } = &cli.command {
        return match postsift::import_amavis::import(path) {
            Ok(import) => {
                for s in &import.skipped {
                    eprintln!(
                        "not carried over: {}",
                        postsift::import_amavis::printable(s)
                    );
                }
                print!("{}", import.toml);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("postsift: {}: {e}", path.display());
                ExitCode::from(EX_UNAVAILABLE)
            }
        };
    }
    if let Command::GenerateDocs { out } = &cli.command {
        use clap::CommandFactory;
        return match postsift::docs::generate(Cli::command(), out) {
            Ok(files) => {
                files.iter().for_each(|f| println!("{}", f.display()));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("postsift: {}: {e}", out.display());
                ExitCode::from(EX_CANTCREAT)
            }
        };
    }
    let config_path = cli.config.clone();
    let config = match Config::load_or_default(config_path.as_deref()) {
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
        Command::CheckConfig => {
            // Warnings name what the file configures but postsift will not use; the
            // configuration still works, so the exit code stays 0.
            for w in config.warnings() {
                eprintln!("warning: {w}");
            }
            for w in postsift::fsmode::warnings(&config) {
                eprintln!("warning: {w}");
            }
            // Each bank with the settings in effect where it applies, so a typo in a level or
            // an action shows before mail does.
            for i in 0..config.policy.len() {
                println!("{}", postsift::banks::describe(&config, i));
            }
            println!("configuration ok");
            ExitCode::SUCCESS
        }
        Command::Reload => {
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
        Command::Run => {
            init_logging(&config);
            // Everything the daemon creates is its own (stores, quarantine, spool files).
            postsift::fsmode::restrict_umask();
            let nofile = postsift::fsmode::raise_nofile_limit();
            tracing::debug!(
                nofile,
                "descriptor limit (RLIMIT_NOFILE, soft raised to hard)"
            );
            match run(config, config_path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Dkim { .. } | Command::GenerateDocs { .. } | Command::ImportAmavis { .. } => {
            unreachable!("handled above")
        }
        Command::Greylist { action, .. } => match greylist(&config, action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("postsift: {e:#}");
                ExitCode::from(EX_UNAVAILABLE)
            }
        },
        Command::Quarantine { action, .. } => match quarantine(&config, action) {
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
        Command::Scan {
            message,
            client_ip,
            helo,
            mail_from,
            dkim_sign,
            ..
        } => {
            init_logging(&config);
            let client = postsift::scan::auth::Client {
                ip: client_ip,
                helo,
                mail_from,
            };
            match scan(config, &message, client, dkim_sign) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("postsift: {e:#}");
                    ExitCode::from(EX_IOERR)
                }
            }
        }
    }
}

/// `postsift dkim genkey`: no configuration needed. Exit 64 for a bad argument or an existing
/// file, 73 (EX_CANTCREAT) when the file cannot be written.
fn dkim(action: DkimAction) -> ExitCode {
    use postsift::config::SignAlgorithm;
    use postsift::sign;
    let DkimAction::Genkey {
        domain,
        selector,
        algorithm,
        bits,
        out,
        force,
    } = action;
    let algorithm = match algorithm.as_str() {
        "rsa-sha256" => SignAlgorithm::RsaSha256,
        "ed25519-sha256" => SignAlgorithm::Ed25519Sha256,
        other => {
            eprintln!("postsift: --algorithm {other:?}: expected rsa-sha256 or ed25519-sha256");
            return ExitCode::from(EX_USAGE);
        }
    };
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    if !name_ok(&domain) || !name_ok(&selector) {
        eprintln!("postsift: --domain and --selector take letters, digits, '-', '.' and '_'");
        return ExitCode::from(EX_USAGE);
    }
    let generated = match sign::generate(algorithm, bits) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("postsift: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Err(e) = sign::write_key(&out, &generated.pem, force) {
        eprintln!("postsift: {e}");
        return ExitCode::from(match e {
            sign::Error::Exists(_) => EX_USAGE,
            _ => EX_CANTCREAT,
        });
    }
    eprintln!(
        "postsift: private key written to {} (mode 0600); publish this record, then add to \
         postsift.toml:\n\n[[dkim_sign.keys]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\n\
         key = \"{}\"\nalgorithm = \"{}\"\n",
        out.display(),
        out.display(),
        algorithm.name()
    );
    println!(
        "{}",
        sign::txt_record(&domain, &selector, &generated.record)
    );
    ExitCode::SUCCESS
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
        for w in postsift::fsmode::warnings(&config) {
            tracing::warn!("file modes: {w}");
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

/// `--since`: a duration back from now (`30m`, `2h`, `3d`), a date, RFC 3339, or unix time.
fn parse_since(s: &str, now: i64) -> anyhow::Result<i64> {
    let s = s.trim();
    if let Some((n, unit)) = s
        .find(|c: char| !c.is_ascii_digit())
        .filter(|&i| i > 0)
        .map(|i| s.split_at(i))
    {
        let mult = match unit {
            "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            "d" => Some(86400),
            _ => None,
        };
        if let (Some(m), Ok(n)) = (mult, n.parse::<i64>()) {
            return Ok(now - n * m);
        }
    }
    if let Ok(t) = s.parse::<i64>() {
        return Ok(t);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp());
    }
    anyhow::bail!("--since {s:?}: expected 30m, 2h, 3d, a date (2026-12-01), RFC 3339 or unix time")
}

fn utc(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// `postsift quarantine …`: straight on the directory and its index (SQLite's locking lets it
/// run beside the daemon).
fn quarantine(config: &Config, action: QuarantineAction) -> anyhow::Result<u8> {
    use postsift::quarantine::{release, show, Filter, Quarantine};
    let dir = &config.quarantine.dir;
    let q = std::sync::Arc::new(
        Quarantine::open(dir).with_context(|| format!("quarantine.dir {}", dir.display()))?,
    );
    let now = chrono::Utc::now().timestamp();
    match action {
        QuarantineAction::List {
            category,
            recipient,
            since,
        } => {
            let f = Filter {
                category,
                recipient,
                since: since.map(|s| parse_since(&s, now)).transpose()?,
            };
            for e in q.list(&f)? {
                let rcpts: Vec<String> = e
                    .recipients
                    .iter()
                    .map(|r| {
                        let mark = if r.original { "" } else { "+" };
                        format!("{mark}{}={}", r.address, r.state)
                    })
                    .collect();
                println!(
                    "{}  {}  {:<9}  {:>8}  <{}>  {}  {}  {}",
                    e.id,
                    utc(e.time),
                    e.category,
                    e.size,
                    escape::text(e.sender.trim()),
                    escape::text(rcpts.join(",").trim()),
                    escape::text(e.reason.trim()),
                    escape::text(e.subject.trim()),
                );
            }
            Ok(0)
        }
        QuarantineAction::Show { id, full } => {
            let e = q.entry(&id)?;
            let (meta, raw) = q.read(&id)?;
            println!("id:         {}", e.id);
            println!("time:       {}", utc(e.time));
            println!(
                "category:   {} ({})",
                e.category,
                escape::text(e.reason.trim())
            );
            println!("size:       {}", e.size);
            println!("sender:     <{}>", escape::text(meta.sender.trim()));
            for r in &e.recipients {
                let when = r.changed.map(utc).unwrap_or_default();
                println!(
                    "recipient:  <{}> {}{} {when} {}",
                    escape::text(r.address.trim()),
                    r.state,
                    if r.original { "" } else { " (released to)" },
                    escape::text(r.detail.as_deref().unwrap_or("").trim())
                );
            }
            let xf = &meta.xforward;
            println!(
                "client:     {} [{}] helo={} queue_id={}",
                escape::text(xf.name.as_deref().unwrap_or("-").trim()),
                escape::text(xf.addr.as_deref().unwrap_or("-").trim()),
                escape::text(xf.helo.as_deref().unwrap_or("-").trim()),
                escape::text(xf.ident.as_deref().unwrap_or("-").trim()),
            );
            println!("---");
            print!(
                "{}",
                show::render(&raw, (!full).then_some(show::BODY_LIMIT))
            );
            Ok(0)
        }
        QuarantineAction::Release {
            id,
            recipient,
            to,
            force,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let reinjector = postsift::reinject::Reinjector::new(config);
            let req = release::Request {
                recipients: recipient,
                to,
                force,
            };
            let results = rt.block_on(release::release(&q, &reinjector, &id, &req))?;
            let mut ok = true;
            for (rcpt, r) in &results {
                println!(
                    "<{}>: {}",
                    escape::text(rcpt.trim()),
                    escape::text(r.reply(&id).trim())
                );
                ok &= matches!(
                    r,
                    release::Result1::Released(_) | release::Result1::AlreadyReleased { .. }
                );
            }
            Ok(if ok { 0 } else { EX_TEMPFAIL })
        }
        QuarantineAction::Delete { id } => {
            q.delete(&id)?;
            println!("deleted {id}");
            Ok(0)
        }
        QuarantineAction::Purge => {
            let before = now - (config.quarantine.retention_days * 86400) as i64;
            let (n, orphans) = q.purge(before)?;
            println!("purged {n} messages, {orphans} unfinished files");
            Ok(0)
        }
    }
}

/// `postsift scan`: the pipeline's checks and policy on one file, and the header block it would
/// write; nothing is delivered.
fn scan(
    config: Config,
    path: &std::path::Path,
    client: postsift::scan::auth::Client,
    dkim_sign: bool,
) -> anyhow::Result<u8> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let msg = Message::from_bytes(&data);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shared = postsift::Runtime::new(config, CancellationToken::new());
    let env = postsift::scan::ScanEnvelope {
        from: client.mail_from.clone(),
        client,
        ..Default::default()
    };
    let (report, decision) = rt.block_on(filter::judge(&shared, &msg, &env));
    println!(
        "virus scan: {}",
        escape::text(&format!("{:?}", report.virus))
    );
    println!(
        "spam scan:  {}",
        escape::text(&format!("{:?}", report.spam))
    );
    print_auth(&shared.config, &decision);
    print_parts(&shared.config, &msg, report.parts.as_ref());
    println!("category:   {}", decision.category.label());
    let outcome = match &decision.disposition {
        Disposition::Deliver => None,
        Disposition::Discard => Some(Outcome::Discarded(decision.category.clone())),
        Disposition::Reject => Some(Outcome::Rejected(decision.category.clone())),
        Disposition::Quarantine => Some(Outcome::Quarantined(decision.category.clone())),
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
            listener: None,
            protocol: "ESMTP",
        };
        let mut block = filter::header_block(&shared, &decision, &hop, "scan", &msg);
        if dkim_sign {
            use postsift::sign::{self, Signed};
            let mut c = shared.config.dkim_sign.clone();
            // As if an originating listener had it; `enabled` still decides.
            c.by_bank = Some(true);
            if !sign::wanted(&c, None, None) {
                println!("dkim_sign:  off ([dkim_sign] enabled = false)");
            } else {
                match rt.block_on(sign::sign(&c, &block, &msg)) {
                    Ok(Signed::Signed { headers, domain }) => {
                        println!("dkim_sign:  signed for {domain} (signature on top, below)");
                        block.splice(0..0, headers);
                    }
                    Ok(Signed::NoKey) => println!(
                        "dkim_sign:  not signed: no single From address, or no key for its domain"
                    ),
                    Err(e) => println!("dkim_sign:  failed: {e}"),
                }
            }
        }
        println!("---");
        for line in String::from_utf8_lossy(&block).split_inclusive('\n') {
            println!(
                "{}",
                escape::keeping_tabs(line.trim_end_matches(['\r', '\n']))
            );
        }
    }
    Ok(match (&decision.category, &decision.disposition) {
        (_, Disposition::Tempfail(_)) | (Category::Unchecked, _) => 3,
        (Category::Virus(_), _) => 2,
        (Category::Banned { .. }, _) => 4,
        (Category::Spam, _) => 1,
        (Category::DmarcReject { .. }, _) => 5,
        (Category::Clean, _) => 0,
    })
}

/// The mail authentication results, one method a line, and the rules they scored.
fn print_auth(config: &Config, decision: &postsift::policy::Decision) {
    let Some(a) = &decision.auth else {
        println!("auth:       off");
        return;
    };
    if let Some(why) = a.spf_skipped {
        println!("auth:       spf not checked: {why} (give --client-ip, --helo, --mail-from)");
    }
    let header = postsift::rewrite::authentication_results_capped(
        &config.authserv_id(),
        a,
        decision.dmarc,
        config.auth.max_dkim_results,
    );
    for line in header.trim_end().lines().skip(1) {
        println!("auth:       {}", line.trim().trim_end_matches(';'));
    }
    let rules = postsift::scan::auth::rules(a, config);
    println!(
        "auth rules: {}",
        if rules.is_empty() {
            "none".to_string()
        } else {
            rules
                .iter()
                .map(|(n, s)| format!("{n}={}", postsift::rewrite::score(*s)))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
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
                .map_or(String::new(), |l| format!(
                    ", stopped ({}): {}",
                    l.kind.label(),
                    escape::text(&l.to_string())
                )),
            summary
                .infected
                .as_deref()
                .map_or(String::new(), |p| format!(", virus in: {}", escape::text(p))),
        ),
    }
    let limits = postsift::scan::parts::Limits::from_config(&config.parts);
    let Ok(raw) = msg.read_all() else { return };
    let walk = match postsift::scan::parts::walk(&raw, &limits, &config.spool_dir()) {
        Ok(w) => w,
        Err(e) => {
            println!("  (the walk failed: {})", escape::text(&e.to_string()));
            return;
        }
    };
    for p in walk.parts {
        // Every name the part declares, each escaped (the banned-file rules judge them all).
        let names: Vec<String> = p
            .name
            .iter()
            .chain(&p.other_names)
            .map(|n| escape::text(n))
            .collect();
        let names = if names.is_empty() {
            "-".to_string()
        } else {
            names.join(" | ")
        };
        let inside = match p.containers.is_empty() {
            true => String::new(),
            false => format!(", in {}", p.containers.join(" in ")),
        };
        println!(
            "  - {:<30} {:<28} {:>9} bytes{}  ({} reading, depth {}{inside})",
            names,
            escape::text(p.declared.as_deref().unwrap_or("-")),
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
