//! `[server]`: the inbound SMTP/LMTP listener, its limits and timeouts.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

use super::check::{Check, Error};

/// `[server]`: the inbound SMTP/LMTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    /// Addresses to listen on. Default `["127.0.0.1:10024"]`.
    pub listen: Vec<SocketAddr>,
    /// Clients allowed to connect; others get `554 5.7.1` and are closed.
    /// Default `["127.0.0.0/8", "::1/128"]`.
    pub allow_networks: Vec<IpNet>,
    /// Name in the greeting and the Received line. Default: the system's FQDN.
    pub hostname: Option<String>,
    /// Concurrent sessions; more are answered `421 4.3.2` and closed. Default 64.
    pub max_sessions: usize,
    /// Largest message accepted, in bytes; larger → `552 5.3.4`. Default 52428800 (50 MiB).
    pub max_message_size: u64,
    /// Recipients per message; more → `452 4.5.3`. Default 1000.
    pub max_recipients: usize,
    /// Bytes of a message held in memory; the rest spools to a temp file. Default 262144.
    pub spool_threshold: usize,
    /// Largest header section, in bytes, held (whole, in memory) and checked for forged
    /// headers; a message with a larger one is refused with `552 5.3.4`. Default 1048576.
    pub max_header_size: usize,
    /// Bytes of message data all messages being received or processed together may hold in
    /// memory (each takes `spool_threshold`, more for a larger header section); past it, new
    /// messages get `452 4.3.1` instead of the process growing. Default 134217728 (128 MiB).
    pub max_memory: usize,
    /// Spool files all messages together may have open; past it, `452 4.3.1`. Default 512.
    pub max_spool_files: usize,
    /// Directory for spooled messages. Default: `$TMPDIR` or `/tmp`.
    pub spool_dir: Option<PathBuf>,
    /// Seconds a whole command may take, counted from when postsift starts waiting for it
    /// (a client that sends a byte at a time gets no more), and the base time for a DATA
    /// body. Default 300.
    pub read_timeout: u64,
    /// Bytes per second a DATA body must average: the body's deadline is `read_timeout` plus
    /// one second per `min_data_rate` bytes received, so a stuck or dribbling client frees its
    /// slot (`421 4.4.2`). 0 switches the rate off (then `read_timeout` limits each read).
    /// Default 8192 (the only client is the local Postfix; its smtpd's own default for
    /// Internet clients is 500).
    pub min_data_rate: u64,
    /// Commands that move no mail forward (NOOP, RSET, HELP, VRFY, EXPN, HELO/EHLO/LHLO, RCPT
    /// beyond `max_recipients`) between two messages before `421 4.7.0`, like Postfix's
    /// `smtpd_junk_command_limit`. Default 100.
    pub max_junk_commands: u32,
    /// Seconds a write to the client may take. Default 300.
    pub write_timeout: u64,
    /// Protocol errors in one session before `421` and close. Default 20.
    pub max_errors: u32,
    /// Seconds messages in flight get to finish on SIGTERM. Default 120.
    pub shutdown_grace: u64,
    /// File `postsift run` writes its pid to at start (and removes at exit), for
    /// `postsift reload`. Default: none (no pid file).
    pub pid_file: Option<PathBuf>,
    /// Threads running sessions (tokio's workers); read at start only. 0: half the CPUs,
    /// rounded up (see [`Server::workers`]). The MIME walk of larger messages, DKIM signing,
    /// large digests and quarantine writes run on a separate pool of blocking threads that is
    /// not limited by this. Default 0.
    pub worker_threads: usize,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: vec!["127.0.0.1:10024".parse().unwrap()],
            allow_networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            hostname: None,
            max_sessions: 64,
            max_message_size: 52_428_800,
            max_recipients: 1000,
            spool_threshold: 262_144,
            max_header_size: 1_048_576,
            max_memory: 134_217_728,
            max_spool_files: 512,
            spool_dir: None,
            read_timeout: 300,
            min_data_rate: 8192,
            max_junk_commands: 100,
            write_timeout: 300,
            max_errors: 20,
            shutdown_grace: 120,
            pid_file: None,
            worker_threads: 0,
        }
    }
}

impl Server {
    /// The number of worker threads `worker_threads` asks for on a machine with `cpus` CPUs:
    /// the setting, or 0 → half the CPUs rounded up. postsift shares its machine with
    /// Postfix, clamd and the spam engine, which take most of the CPU per message; its workers
    /// mostly wait on sockets, and fewer of them wake and steal work from each other less
    /// (measured in bench/README.md, "The runtime's worker threads").
    pub fn workers(&self, cpus: usize) -> usize {
        match self.worker_threads {
            0 => cpus.div_ceil(2).max(1),
            n => n,
        }
    }

    pub(super) fn validate(&self, check: Check) -> Result<(), Error> {
        if self.listen.is_empty() {
            return Err(check.bad("server.listen", "at least one address is needed"));
        }
        check.at_least_one(&[
            ("server.max_sessions", self.max_sessions as u64),
            ("server.max_message_size", self.max_message_size),
            ("server.max_recipients", self.max_recipients as u64),
        ])?;
        if let Some(h) = &self.hostname {
            if h.is_empty() || h.contains(char::is_whitespace) {
                return Err(check.bad("server.hostname", "must be a host name without spaces"));
            }
        }
        if self.max_header_size < 1024 {
            return Err(check.bad("server.max_header_size", "must be at least 1024 bytes"));
        }
        if self.max_memory < self.spool_threshold {
            return Err(check.bad(
                "server.max_memory",
                "must be at least server.spool_threshold (one message's share)",
            ));
        }
        check.at_least_one(&[
            ("server.max_spool_files", self.max_spool_files as u64),
            ("server.max_junk_commands", self.max_junk_commands.into()),
        ])?;
        if self.worker_threads > 1024 {
            return Err(check.bad("server.worker_threads", "must be at most 1024"));
        }
        check.seconds(&[
            ("server.read_timeout", self.read_timeout),
            ("server.write_timeout", self.write_timeout),
        ])
    }
}
