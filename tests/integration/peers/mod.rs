//! The real peers of postsift that integration tests start, one file each: clamd, spamd, rspamd,
//! Postfix, unbound, postgrey, redis, PostgreSQL and MariaDB. Each is a [`Peer`]: a daemon in its own temp dir (config,
//! socket, pid file, log) on 127.0.0.1, run as one process group ([`PeerProcess`]), stopped by pid
//! when dropped and when the test process ends, and started again at the same address where a
//! test needs it. Shared here: ports, temp dirs, waiting, /proc and signals. Plus the SMTP/LMTP
//! client pieces both test clients share ([`dot_stuff`], [`reply_line`]) and a small blocking
//! client ([`SmtpClient`], [`smtp_send`]), in smtp.rs.
//!
//! Nothing here touches /etc/postfix or a system-wide daemon. Tests run inside a loopback-only
//! network namespace; `scripts/test.sh` runs them as `nobody`, and as root only those in its
//! `ROOT_TESTS`: only root may run `postfix -c <dir>` for a config dir that the default main.cf
//! does not list in `alternate_config_directories` (and there is no default main.cf here), so
//! [`Postfix::start`] refuses to start without root. Every other peer runs as the test's user
//! (spamd switches its children to `nobody` only when started as root; rspamd runs its workers
//! as `_rspamd` only then). Temp dirs live under `/tmp/postsift-test/` (mode 0755, override
//! with `POSTSIFT_TEST_TMP`) so that `nobody` (spamd children) and `postfix` (Postfix daemons) can
//! reach them; keep that path short (a unix socket path has at most 107 bytes). Set
//! `POSTSIFT_KEEP_TEST_DIRS=1` to keep the temp dirs (configs, logs, queues) for a post-mortem.
//!
//! How peers are stopped when a test panics, exits or is killed: see [`PeerProcess`]. Postfix's
//! main.cf and master.cf are templates in tests/fixtures/postfix/.
//!
//! Uses std, `tempfile` and `libc` (process groups, parent-death signal); signals are sent with
//! kill(1), MD5 is taken with md5sum(1).
#![allow(dead_code, unused_imports)]

/// `process` and `process_mut` of a [`Peer`] whose [`PeerProcess`] is its `peer` field.
macro_rules! peer_process {
    () => {
        fn process(&self) -> &PeerProcess {
            &self.peer
        }

        fn process_mut(&mut self) -> &mut PeerProcess {
            &mut self.peer
        }
    };
}

/// The whole [`Peer`] impl of a daemon without a protocol ping of its own (postgrey, redis):
/// reached at its `addr`, run again as `program` with its `args`, ready once `addr` accepts
/// connections.
macro_rules! port_peer {
    ($t:ty, $name:literal, $program:literal) => {
        impl Peer for $t {
            const NAME: &'static str = $name;
            peer_process!();

            fn endpoint(&self) -> String {
                self.addr.to_string()
            }

            /// Its port accepts connections.
            fn ping(&self) -> bool {
                super::port_open(self.addr)
            }

            /// The same command line again (same port, same files), output appended to its
            /// log; blocks until its port accepts connections (30 s, then panics).
            fn start_again(&mut self) {
                self.peer
                    .run_until_port_open($program, &self.args, self.addr);
            }
        }
    };
}

pub mod clamd;
pub mod postfix;
pub mod postgrey;
pub mod process;
pub mod redis;
pub mod rspamd;
pub mod sink;
pub mod smtp;
pub mod spamd;
pub mod sql; // PostgreSQL and MariaDB (initdb/postgres, mariadb-install-db/mariadbd)
pub mod unbound;

pub use clamd::{Clamd, CLAMAV_TESTFILES, CLAMD_CLAMEXE, CLAMD_EICAR};
pub use postfix::{Postfix, PostfixOpts, POSTFIX_HOSTNAME};
pub use postgrey::{PolicyClient, Postgrey};
pub use process::{spawn_peer, sweep_stale_dirs, PeerProcess, Watchdog, Watched};
pub use redis::Redis;
pub use rspamd::Rspamd;
pub use sink::SmtpSink;
pub use smtp::{dot_stuff, reply_line, smtp_send, smtp_send_raw, SmtpClient, CLIENT_HELO};
pub use spamd::Spamd;
pub use unbound::Unbound;

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The EICAR anti-virus test string (68 bytes).
pub const EICAR: &str = concat!(
    "X5O!P%@AP[4\\PZX54(P^)7CC)7}$",
    "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
);
/// SpamAssassin's GTUBE test string (scores 1000).
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// What every real peer a test starts can do: it runs in a temp dir of its own as one process
/// group ([`PeerProcess`]) and listens at one address ([`Peer::endpoint`]); it is stopped by pid
/// and can be started again at the same address with the same configuration.
pub trait Peer {
    /// Its name in postsift's metrics (`peer="clamd"`) and in the harness's messages.
    const NAME: &'static str;

    /// The running process (group) and its temp dir.
    fn process(&self) -> &PeerProcess;

    /// The same, to stop or start it.
    fn process_mut(&mut self) -> &mut PeerProcess;

    /// Where postsift reaches it, as its config's `endpoints` entry would say it: a unix socket
    /// path or `127.0.0.1:port`.
    fn endpoint(&self) -> String;

    /// Whether it answers its protocol's ping (or accepts connections, for those without one).
    fn ping(&self) -> bool;

    /// Starts the stopped peer again at the same address with the same configuration; blocks
    /// until it answers (panics with its log's tail if it does not).
    fn start_again(&mut self);

    /// How long [`Peer::stop`] waits after SIGTERM before it SIGKILLs the process group.
    fn grace(&self) -> Duration {
        Duration::from_secs(10)
    }

    /// SIGTERM by pid, SIGKILL to the process group after [`Peer::grace`], wait until no member
    /// is left. Idempotent. The temp dir stays until Drop.
    fn stop(&mut self) {
        let grace = self.grace();
        self.process_mut().stop(grace);
    }

    /// SIGKILL to the whole process group at once (a peer's crash); the temp dir stays.
    fn kill(&mut self) {
        self.process_mut().kill();
    }

    /// The leader's pid (None once stopped).
    fn pid(&self) -> Option<u32> {
        self.process().pid()
    }

    /// Its temp dir.
    fn dir(&self) -> &Path {
        &self.process().dir
    }
}

/// A free TCP port on 127.0.0.1 for a server a test starts and names by port.
///
/// Taken below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768–60999 by
/// default), from a counter no two calls share: a port from `bind :0` is an ephemeral one, which
/// any other test's `connect` or `bind :0` may take between this call and the server's own bind
/// (seen in CI: a daemon whose metrics port was taken meanwhile failed to start, and its test got
/// "connection refused"). Falls back to `bind :0` where the range starts too low to leave room.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 20_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(0)
        .min(u32::from(u16::MAX));
    if ephemeral_low > LOWEST + 1_000 {
        let size = ephemeral_low - LOWEST;
        // Processes with neighbouring pids (a test and the child it spawns) start far apart.
        let start = (std::process::id() as u64 * 7_919 % u64::from(size)) as u32;
        for _ in 0..size {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = (LOWEST + (start + n) % size) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The directory of fixture files: `$CARGO_MANIFEST_DIR/tests/fixtures`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

/// Polls `cond` every 50 ms until it is true (→ true) or `timeout` has passed (→ false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        sleep(Duration::from_millis(50));
    }
}

/// True if something accepts TCP connections on `addr`.
pub fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// `127.0.0.1:<port>`.
pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The base dir for all peers' temp dirs, world-traversable (0755) so that unprivileged daemon
/// users can reach their config: `$POSTSIFT_TEST_TMP` or /tmp/postsift-test, mode 0755.
pub fn base_dir() -> PathBuf {
    let base = std::env::var_os("POSTSIFT_TEST_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/postsift-test"));
    fs::create_dir_all(&base).unwrap_or_else(|e| panic!("create {}: {e}", base.display()));
    chmod(&base, 0o755);
    base
}

/// A fresh private dir `<base>/<prefix>XXXXXX`, mode 0755 (tempfile makes it 0700).
pub fn private_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base_dir())
        .expect("create temp dir");
    chmod(dir.path(), 0o755);
    dir
}

/// chmod, panicking on failure.
pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

/// fs::write, panicking on failure.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Drops the TempDir (removing it) unless POSTSIFT_KEEP_TEST_DIRS is set.
pub fn finish_dir(tmp: Option<tempfile::TempDir>) {
    if let Some(tmp) = tmp {
        if std::env::var_os("POSTSIFT_KEEP_TEST_DIRS").is_some() {
            eprintln!("harness: keeping {}", tmp.path().display());
            std::mem::forget(tmp); // (TempDir::keep is not in every tempfile 3.x)
        }
    }
}

/// The last `n` lines of a (log) file, for panic messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = match fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => return format!("<cannot read {}: {e}>", path.display()),
    };
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    format!(
        "--- last lines of {} ---\n{}",
        path.display(),
        lines[start..].join("\n")
    )
}

/// (state, ppid, pgrp) of a process from /proc/<pid>/stat, None if it does not exist.
fn proc_stat(pid: u32) -> Option<(char, u32, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid pgrp ..." — comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Alive = exists and is not a zombie. (PID 1 of this sandbox does not reap orphans, so a dead
/// daemon that was re-parented to it stays a zombie forever and `kill -0` still succeeds.)
fn pid_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((s, _, _)) if s != 'Z' && s != 'X')
}

/// Live processes matching `pred(pid, ppid, pgrp)`.
fn processes(pred: impl Fn(u32, u32, u32) -> bool) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if let Some((s, ppid, pgrp)) = proc_stat(pid) {
                    if s != 'Z' && s != 'X' && pred(pid, ppid, pgrp) {
                        out.push(pid);
                    }
                }
            }
        }
    }
    out
}

/// Live (not zombie) processes of process group `pgrp`, the leader included.
pub fn group_members(pgrp: u32) -> Vec<u32> {
    processes(|_, _, g| g == pgrp)
}

/// Sends a signal with kill(1). `target` is a pid, or `-pgid` for a process group.
pub fn signal(target: &str, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(target)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Reads a pid file.
fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The environment variable that marks a peer's processes with its dir.
const PEER_ENV: &str = "POSTSIFT_TEST_PEER";

/// (pid, start time) of this test process: what a peer dir's `harness.owner` file holds.
fn owner_id(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // field 22, starttime; the fields after "(comm)" start at field 3
    let start = stat[stat.rfind(')')? + 1..].split_whitespace().nth(19)?;
    Some(format!("{pid} {start}"))
}

/// Runs `try_start` up to three times while it fails with "Address already in use" (a free port
/// taken by someone else between [`free_port`] and the daemon's bind); panics with its message
/// otherwise.
pub fn retry_if_port_taken<T>(what: &str, mut try_start: impl FnMut() -> Result<T, String>) -> T {
    for attempt in 1..=3 {
        match try_start() {
            Ok(t) => return t,
            Err(msg) if attempt < 3 && msg.contains("Address already in use") => {
                eprintln!("harness: {what} port taken, retrying");
            }
            Err(msg) => panic!("{msg}"),
        }
    }
    unreachable!()
}

pub fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}
