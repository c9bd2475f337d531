//! `postsift reload`: the configuration checked, then SIGHUP to the daemon named by
//! `server.pid_file`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use postsift::config::Config;

use crate::{EX_UNAVAILABLE, EX_USAGE};

pub fn reload(config: &Config) -> ExitCode {
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
