//! `postsift run`: the daemon in the foreground. SIGTERM and SIGINT drain, SIGHUP reloads the
//! configuration file; the pid file is written once the listeners are bound.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use postsift::config::Config;
use tokio_util::sync::CancellationToken;

/// Runs the daemon until it is told to stop: 0, or 1 after logging why it could not run.
pub fn daemon(config: Config, path: Option<PathBuf>) -> ExitCode {
    // Everything the daemon creates is its own (stores, quarantine, spool files).
    postsift::fsmode::restrict_umask();
    let nofile = postsift::fsmode::raise_nofile_limit();
    tracing::debug!(
        nofile,
        "descriptor limit (RLIMIT_NOFILE, soft raised to hard)"
    );
    match run(config, path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

/// `path` is the `--config` given at start: SIGHUP reads the same file again.
fn run(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = config.server.workers(cpus);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    tracing::info!(workers, cpus, "runtime: worker threads");
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
