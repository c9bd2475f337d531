//! Starts the real peers of postsift for integration tests: a private clamd, a private spamd and a
//! private Postfix instance, each in its own temp dir (config, socket, pid file, log) on 127.0.0.1,
//! each a [`Peer`] (its own process group, stopped when dropped and when the test process ends);
//! plus the SMTP/LMTP client pieces both test clients share ([`dot_stuff`], [`reply_line`]) and a
//! small blocking client ([`SmtpClient`], [`smtp_send`]).
//!
//! Nothing here touches /etc/postfix or a system-wide daemon. Tests are expected to run as root
//! inside a loopback-only network namespace (`ip netns exec <ns> cargo test`): only root may run
//! `postfix -c <dir>` for a config dir that the default main.cf does not list in
//! `alternate_config_directories` (and there is no default main.cf here), and spamd needs root to
//! switch its children to `nobody`. Temp dirs live under `/tmp/postsift-test/` (mode 0755, override
//! with `POSTSIFT_TEST_TMP`) so that `nobody` (spamd children) and `postfix` (Postfix daemons) can
//! reach them; keep that path short (a unix socket path has at most 107 bytes). Set
//! `POSTSIFT_KEEP_TEST_DIRS=1` to keep the temp dirs (configs, logs, queues) for a post-mortem.
//!
//! How peers are stopped when a test panics, exits or is killed: see [`Peer`]. Postfix's
//! main.cf and master.cf are templates in tests/fixtures/postfix/.
//!
//! Uses std, `tempfile` and `libc` (process groups, parent-death signal); signals are sent with
//! kill(1), MD5 is taken with md5sum(1).
#![allow(dead_code)]

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The EICAR anti-virus test string (68 bytes).
pub const EICAR: &str = concat!(
    "X5O!P%@AP[4\\PZX54(P^)7CC)7}$",
    "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
);
/// SpamAssassin's GTUBE test string (scores 1000).
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
/// The name under which the tests' clamd reports EICAR (`stream: <name> FOUND`).
pub const CLAMD_EICAR: &str = "Postsift.Test.EICAR.UNOFFICIAL";
/// The name under which the tests' clamd reports clamav-testfiles' `clam.exe` (also inside archives).
pub const CLAMD_CLAMEXE: &str = "Postsift.Test.ClamExe.UNOFFICIAL";
/// Directory of Debian's clamav-testfiles package.
pub const CLAMAV_TESTFILES: &str = "/usr/share/clamav-testfiles";

/// The hostname of every test Postfix instance. A server that greets with this name makes Postfix
/// report "mail loops back to myself", so fake peers must greet with another name.
pub const POSTFIX_HOSTNAME: &str = "postfix-test.localdomain";

// ---------------------------------------------------------------------------------------------
// small helpers

/// A free TCP port on 127.0.0.1 (bind :0, read, drop).
pub fn free_port() -> u16 {
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

// ---------------------------------------------------------------------------------------------
// Peer: one running daemon in its temp dir (clamd, spamd, rspamd and Postfix are each one)

/// Spawns `cmd` from the harness's one long-lived thread, with `PR_SET_PDEATHSIG = SIGKILL` and,
/// if `own_group`, in a new process group (pgid = its pid).
///
/// Why a thread of its own: the kernel sends the parent-death signal when the *thread* that forked
/// the child ends, not the process. Tests start peers from short-lived threads (a test's own
/// thread, tokio's `spawn_blocking` pool, whose idle threads exit after 10 s) while the peer
/// lives on in a `static` shared by later tests; forking from those threads would kill the peer
/// under the next test. The spawner thread lives as long as the test process, so the signal
/// means "the test process is gone" (exit, abort, SIGKILL alike).
///
/// The kernel clears the parent-death signal of a process that changes its credentials (setuid,
/// setgid …) and of every forked child: it reaches clamd (stays root, one process), not spamd
/// (`-u nobody`), rspamd (`-u _rspamd`) or Postfix's master (daemonizes, switches ids). What it
/// does not reach is cleaned up by [`sweep_stale_dirs`] (see [`Peer`]).
pub fn spawn_peer(cmd: Command, own_group: bool) -> io::Result<Child> {
    type Job = (Command, bool, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, own_group, reply) in rx {
                    let _ = reply.send(spawn_here(&mut cmd, own_group));
                }
            })
            .expect("start the harness's spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    let sent = spawner.lock().unwrap().send((cmd, own_group, tx));
    sent.map_err(|_| io::Error::other("harness spawner thread gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("harness spawner thread gone"))?
}

fn spawn_here(cmd: &mut Command, own_group: bool) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (setpgid, prctl, getppid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if own_group && libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The test process died between fork and prctl: the signal will never come.
            if libc::getppid() != parent {
                return Err(io::Error::other("test process gone"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// What to clean up if the test process exits without dropping it (a peer in a `static` never
/// is): (process group, dir); a [`Peer`] is found by its dir, a [`Watchdog`] by its group.
type Live = Vec<(Option<u32>, Option<PathBuf>)>;
static LIVE: Mutex<Live> = Mutex::new(Vec::new());

/// [`LIVE`], with the exit handler installed.
fn live() -> std::sync::MutexGuard<'static, Live> {
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain extern "C" function.
    AT_EXIT.call_once(|| unsafe {
        libc::atexit(clean_up_at_exit);
    });
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// At exit: SIGTERM to every registered group, 5 s for them to go, SIGKILL, remove the dirs.
extern "C" fn clean_up_at_exit() {
    let live = std::mem::take(&mut *live());
    let groups: Vec<i32> = live
        .iter()
        .filter_map(|(g, _)| *g)
        .map(|g| g as i32)
        .collect();
    let kill = |sig| {
        for &g in groups.iter().filter(|&&g| g > 1) {
            // SAFETY: kill(2) on a process (group) this process started.
            unsafe {
                libc::kill(g, sig);
                libc::kill(-g, sig);
            }
        }
    };
    let gone = || {
        groups
            .iter()
            .all(|&g| !pid_alive(g as u32) && group_members(g as u32).is_empty())
    };
    kill(libc::SIGTERM);
    if !wait_until(Duration::from_secs(5), gone) {
        kill(libc::SIGKILL);
        wait_until(Duration::from_secs(2), gone);
    }
    if std::env::var_os("POSTSIFT_KEEP_TEST_DIRS").is_none() {
        for (_, dir) in live {
            if let Some(d) = dir {
                let _ = fs::remove_dir_all(d);
            }
        }
    }
}

/// Removes the peer dirs under [`base_dir`] left by test processes that are gone (killed, aborted)
/// and kills what still runs of their peers: every member of the recorded process group
/// (`harness.pgid`) that is still recognisably that peer (`POSTSIFT_TEST_PEER=<dir>` in its
/// environment, or its working directory in the dir: Postfix's daemons run in `<dir>/queue`), so
/// a recycled pgid is left alone. Dirs of live test processes (other runs
/// side by side) and dirs without `harness.owner` (the rspamd cache) are not touched. Runs once
/// per process, before its first peer starts; tests of the clean-up call it directly.
pub fn sweep_stale_dirs() {
    let Ok(rd) = fs::read_dir(base_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let dir = e.path();
        let Ok(owner) = fs::read_to_string(dir.join("harness.owner")) else {
            continue;
        };
        let owner = owner.trim();
        let pid = owner.split(' ').next().and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| owner_id(p).as_deref() == Some(owner)) {
            continue; // its test process still runs
        }
        let d = dir.display().to_string();
        let marker = format!("{PEER_ENV}={d}\0");
        let ours = |p: u32| {
            let environ = fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
            let cwd = fs::read_link(format!("/proc/{p}/cwd")).unwrap_or_default();
            String::from_utf8_lossy(&environ).contains(&marker) || cwd.starts_with(&dir)
        };
        if let Some(g) = read_pid(&dir.join("harness.pgid")) {
            for _ in 0..50 {
                let left: Vec<u32> = group_members(g).into_iter().filter(|&p| ours(p)).collect();
                if left.is_empty() {
                    break;
                }
                for p in left {
                    signal(&p.to_string(), "KILL");
                }
                sleep(Duration::from_millis(100));
            }
        }
        eprintln!("harness: removing {d}, left by test process {owner} (gone)");
        let _ = fs::remove_dir_all(&dir);
    }
}

/// One daemon of a test in its own temp dir: clamd, spamd, rspamd and Postfix are each a `Peer`.
///
/// Start: [`Peer::new`] makes the dir, [`Peer::spawn`] starts the process (see [`spawn_peer`]) or
/// [`Peer::adopt_group`] takes over a daemon that detached itself (Postfix's master),
/// [`Peer::wait_ready`] waits for the peer's own "ready" probe. Stop: [`Peer::stop`] — SIGTERM to
/// the leader, SIGKILL to the whole process group after a grace period, wait until no member is
/// left; Drop does the same and removes the dir.
///
/// When the test process ends without dropping the peer:
/// - normal exit (a peer in a `static`): an `atexit` handler stops every live group and removes
///   its dir;
/// - killed or aborted: the kernel SIGKILLs what [`spawn_peer`] started and still carries the
///   parent-death signal (clamd); the peers that switched user ids meanwhile (spamd, rspamd,
///   Postfix) and every dir are taken care of by [`sweep_stale_dirs`] when the next test process
///   starts a peer — and under scripts/test.sh, before that, by the teardown of the test's
///   network namespace, which kills every process left in it.
pub struct Peer {
    /// The temp dir.
    pub dir: PathBuf,
    child: Option<Child>,
    /// The process group (= its leader's pid).
    group: Option<u32>,
    tmp: Option<tempfile::TempDir>,
}

impl Peer {
    /// A fresh dir `<base>/<prefix>XXXXXX` (mode 0755) that names this test process as its owner;
    /// nothing runs yet.
    pub fn new(prefix: &str) -> Peer {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(sweep_stale_dirs);
        let tmp = private_dir(prefix);
        let dir = tmp.path().to_path_buf();
        live().push((None, Some(dir.clone())));
        write_file(
            &dir.join("harness.owner"),
            owner_id(std::process::id()).expect("own /proc/self/stat") + "\n",
        );
        Peer {
            dir,
            child: None,
            group: None,
            tmp: Some(tmp),
        }
    }

    /// Starts `cmd` as this peer's process, in its own process group (see [`spawn_peer`]), with
    /// `POSTSIFT_TEST_PEER=<dir>` in its environment: how [`sweep_stale_dirs`] recognises its
    /// processes (and their children) after their test process is gone.
    pub fn spawn(&mut self, mut cmd: Command) {
        cmd.env(PEER_ENV, &self.dir);
        let program = format!("{:?}", cmd.get_program());
        let child = spawn_peer(cmd, true).unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        self.adopt_group(child.id());
        self.child = Some(child);
    }

    /// Takes over a process group this peer did not spawn (a daemon that detached itself).
    pub fn adopt_group(&mut self, pgid: u32) {
        write_file(&self.dir.join("harness.pgid"), format!("{pgid}\n"));
        self.set_live_group(Some(pgid));
        self.group = Some(pgid);
    }

    fn set_live_group(&self, group: Option<u32>) {
        for (g, d) in live().iter_mut() {
            if d.as_deref() == Some(&*self.dir) {
                *g = group;
            }
        }
    }

    /// The leader's pid (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.group
    }

    /// Polls `ready` every 100 ms; Err (with `what`, and the tails of the files `logs` in the dir)
    /// if the spawned process exits or `timeout` passes first.
    pub fn wait_ready(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
        logs: &[&str],
    ) -> Result<(), String> {
        let end = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= end {
                let mut why = match exited {
                    Some(st) => format!("{what} exited ({st})"),
                    None => format!("{what} not ready within {} s", timeout.as_secs()),
                };
                for log in logs {
                    why = why + "\n" + &tail(&self.dir.join(log), 30);
                }
                return Err(why);
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM to the leader; SIGKILL to the group if the group is not gone after `grace`; waits
    /// until no member is left (5 s more at most) and reaps the child. Idempotent. The dir stays
    /// until Drop.
    pub fn stop(&mut self, grace: Duration) {
        let Some(g) = self.group.take() else {
            return;
        };
        let mut child = self.child.take();
        let mut gone = || {
            if let Some(c) = child.as_mut() {
                if matches!(c.try_wait(), Ok(None)) {
                    return false;
                }
            }
            !pid_alive(g) && group_members(g).is_empty()
        };
        signal(&g.to_string(), "TERM");
        if !wait_until(grace, &mut gone) {
            signal(&format!("-{g}"), "KILL");
            signal(&g.to_string(), "KILL");
            wait_until(Duration::from_secs(5), &mut gone);
        }
        if let Some(mut c) = child {
            let _ = c.wait();
        }
        // The group is gone: neither the exit handler nor a sweep must look for it.
        self.set_live_group(None);
        let _ = fs::remove_file(self.dir.join("harness.pgid"));
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
        live().retain(|(_, d)| d.as_deref() != Some(&*self.dir));
        finish_dir(self.tmp.take());
    }
}

/// What a [`Watchdog`] looks after.
pub enum Watched {
    /// This pid (and its process group, if it leads one).
    Pid(u32),
}

/// For daemons a caller starts itself (examples/soak.rs restarts clamd and spamd): registers the
/// process (group) with the harness's clean-up at exit (see [`Peer`]) until dropped. Runs no
/// process of its own (it used to be a shell loop) and never removes `dir`: the [`Peer`] that owns
/// the dir does.
pub struct Watchdog(u32);

impl Watchdog {
    /// Registers `target`; always `Some` (an `Option` for callers of the old watchdog).
    pub fn spawn(target: Watched, _dir: &Path) -> Option<Watchdog> {
        let Watched::Pid(pid) = target;
        live().push((Some(pid), None));
        Some(Watchdog(pid))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        live().retain(|e| *e != (Some(self.0), None));
    }
}

// ---------------------------------------------------------------------------------------------
// clamd

/// A private clamd (Debian's /usr/sbin/clamd) on a unix socket in its own temp dir.
pub struct Clamd {
    /// The clamd socket (`LocalSocket`).
    pub socket: PathBuf,
    /// The temp dir: clamd.conf, db/, clamd.log, clamd.out (stdout/stderr), clamd.pid.
    pub dir: PathBuf,
    peer: Peer,
}

impl Clamd {
    /// `start_with("60M")`.
    pub fn start() -> Clamd {
        Clamd::start_with("60M")
    }

    /// Starts clamd with `StreamMaxLength <stream_max_len>` (clamd syntax: "60M", "1M", "512K"),
    /// blocks until it answers `zPING` (60 s, then panics with the log's tail).
    pub fn start_with(stream_max_len: &str) -> Clamd {
        Clamd::start_with_conf(stream_max_len, "")
    }

    /// Like [`Clamd::start_with`], with `extra` (whole clamd.conf lines) appended to the
    /// config, e.g. `"ScanMail no\n"`.
    pub fn start_with_conf(stream_max_len: &str, extra: &str) -> Clamd {
        let mut peer = Peer::new("clamd-");
        let dir = peer.dir.clone();
        let db = dir.join("db");
        fs::create_dir(&db).expect("mkdir db");
        chmod(&db, 0o755);

        let ndb = fixtures().join("clamav/postsift-test.ndb");
        fs::copy(&ndb, db.join("postsift-test.ndb"))
            .unwrap_or_else(|e| panic!("copy {}: {e}", ndb.display()));
        let clam_exe = Path::new(CLAMAV_TESTFILES).join("clam.exe");
        match hdb_line(&clam_exe, "Postsift.Test.ClamExe") {
            Some(line) => write_file(&db.join("postsift-clamexe.hdb"), line + "\n"),
            None => eprintln!(
                "harness: {} not usable (package clamav-testfiles?): no ClamExe signature",
                clam_exe.display()
            ),
        }

        let socket = dir.join("clamd.sock");
        assert!(
            socket.as_os_str().len() < 100,
            "clamd socket path too long for a unix socket: {} (shorten POSTSIFT_TEST_TMP)",
            socket.display()
        );
        let conf = dir.join("clamd.conf");
        // No `User`: clamd keeps the uid it was started with (root in the test namespace).
        write_file(
            &conf,
            format!(
                "LocalSocket {sock}\n\
                 LocalSocketMode 666\n\
                 Foreground yes\n\
                 DatabaseDirectory {db}\n\
                 SelfCheck 0\n\
                 PidFile {dir}/clamd.pid\n\
                 LogFile {dir}/clamd.log\n\
                 LogTime yes\n\
                 LogVerbose no\n\
                 StreamMaxLength {stream_max_len}\n\
                 MaxThreads 8\n\
                 {extra}",
                sock = socket.display(),
                db = db.display(),
                dir = dir.display(),
            ),
        );
        let out = fs::File::create(dir.join("clamd.out")).expect("create clamd.out");
        let mut cmd = Command::new("/usr/sbin/clamd");
        cmd.arg("-c")
            .arg(&conf)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out);
        peer.spawn(cmd);
        let ready = peer.wait_ready(
            "clamd (zPING)",
            Duration::from_secs(60),
            || clamd_ping(&socket),
            &["clamd.log", "clamd.out"],
        );
        ready.unwrap_or_else(|why| panic!("{why}"));
        Clamd { socket, dir, peer }
    }

    /// `zPING\0` → `PONG`.
    pub fn ping(&self) -> bool {
        clamd_ping(&self.socket)
    }

    /// The clamd pid (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.peer.pid()
    }

    /// The contents of clamd.log.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.join("clamd.log"))
    }

    /// SIGTERM by pid (SIGKILL after 10 s), wait. Idempotent. The temp dir stays until Drop.
    pub fn stop(&mut self) {
        self.peer.stop(Duration::from_secs(10));
    }
    /// Starts the stopped clamd again with the same configuration and socket; blocks until it
    /// answers `zPING` (60 s, then panics with the log's tail).
    pub fn start_again(&mut self) {
        let _ = fs::remove_file(&self.socket);
        let out = fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("clamd.out"))
            .expect("open clamd.out");
        let mut cmd = Command::new("/usr/sbin/clamd");
        cmd.arg("-c")
            .arg(self.dir.join("clamd.conf"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out);
        self.peer.spawn(cmd);
        let socket = self.socket.clone();
        self.peer
            .wait_ready(
                "clamd (zPING)",
                Duration::from_secs(60),
                || clamd_ping(&socket),
                &["clamd.log", "clamd.out"],
            )
            .unwrap_or_else(|why| panic!("{why}"));
    }
}

fn clamd_ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"zPING\0").is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"PONG")
}

/// `md5:size:name` for a file (ClamAV .hdb), via md5sum(1).
fn hdb_line(file: &Path, name: &str) -> Option<String> {
    let size = fs::metadata(file).ok()?.len();
    let out = Command::new("md5sum").arg(file).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let md5 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .to_string();
    Some(format!("{md5}:{size}:{name}"))
}

// ---------------------------------------------------------------------------------------------
// spamd

/// A private spamd (Debian's /usr/sbin/spamd) on 127.0.0.1, with network tests off.
pub struct Spamd {
    /// 127.0.0.1:<free port>.
    pub addr: SocketAddr,
    /// The temp dir: site/ (siteconfigpath: *.pre + local.cf), spamd.log, spamd.pid.
    pub dir: PathBuf,
    peer: Peer,
}

const SPAMD_LOCAL_CF: &str = "\
# postsift tests: local tests only, nothing may leave the machine
dns_available no
skip_rbl_checks 1
use_razor2 0
use_pyzor 0
use_bayes 0
bayes_auto_learn 0
ifplugin Mail::SpamAssassin::Plugin::DCC
use_dcc 0
endif
ifplugin Mail::SpamAssassin::Plugin::AWL
use_auto_whitelist 0
endif
ifplugin Mail::SpamAssassin::Plugin::TxRep
use_txrep 0
endif
ifplugin Mail::SpamAssassin::Plugin::URIDNSBL
skip_uribl_checks 1
endif
report_safe 0
";

impl Spamd {
    /// Starts spamd on a free port and blocks until it answers PING (120 s, then panics with the
    /// log's tail). Retries with another port if the chosen one was taken meanwhile.
    pub fn start() -> Spamd {
        retry_if_port_taken("spamd", Spamd::try_start)
    }

    fn try_start() -> Result<Spamd, String> {
        let mut peer = Peer::new("spamd-");
        let dir = peer.dir.clone();
        let site = dir.join("site");
        fs::create_dir(&site).expect("mkdir site");
        chmod(&site, 0o755);
        // With --siteconfigpath the .pre files (plugin loading) must be there too, or spamd fails
        // with "no loaded plugin implements 'check_main'".
        let mut pre = 0;
        for e in fs::read_dir("/etc/spamassassin")
            .expect("read /etc/spamassassin")
            .flatten()
        {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "pre") {
                let to = site.join(e.file_name());
                fs::copy(&p, &to).unwrap_or_else(|err| panic!("copy {}: {err}", p.display()));
                chmod(&to, 0o644);
                pre += 1;
            }
        }
        assert!(pre > 0, "no .pre files in /etc/spamassassin");
        write_file(&site.join("local.cf"), SPAMD_LOCAL_CF);
        chmod(&site.join("local.cf"), 0o644);
        let home = dir.join("home");
        fs::create_dir(&home).expect("mkdir home");
        chmod(&home, 0o777);

        let addr = localhost(free_port());
        let logf = fs::File::create(dir.join("spamd.log")).expect("create spamd.log");
        peer.spawn(spamd_command(&dir, addr, logf));
        let mut spamd = Spamd { addr, dir, peer };
        spamd.peer.wait_ready(
            "spamd (PING)",
            Duration::from_secs(120),
            || spamd_ping(addr),
            &["spamd.log"],
        )?;
        Ok(spamd)
    }

    /// Starts the stopped spamd again on the same port with the same configuration; blocks
    /// until it answers PING (120 s, then panics with the log's tail).
    pub fn start_again(&mut self) {
        let logf = fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("spamd.log"))
            .expect("open spamd.log");
        self.peer.spawn(spamd_command(&self.dir, self.addr, logf));
        let addr = self.addr;
        self.peer
            .wait_ready(
                "spamd (PING)",
                Duration::from_secs(120),
                || spamd_ping(addr),
                &["spamd.log"],
            )
            .unwrap_or_else(|why| panic!("{why}"));
    }
}

/// The spamd command line of a [`Spamd`] in `dir` listening on `addr`, logging to `logf`.
fn spamd_command(dir: &Path, addr: SocketAddr, logf: fs::File) -> Command {
    let (site, home) = (dir.join("site"), dir.join("home"));
    let mut cmd = Command::new("/usr/sbin/spamd");
    cmd.arg("-x")
        .arg(format!("--listen={addr}"))
        .arg("--allowed-ips=127.0.0.1")
        .arg("--max-children=2")
        .arg("-u")
        .arg("nobody")
        .arg(format!("--siteconfigpath={}", site.display()))
        .arg(format!("--pidfile={}", dir.join("spamd.pid").display()))
        .arg(format!("--helper-home-dir={}", home.display()))
        .arg("--syslog=stderr")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().expect("dup"))
        .stderr(logf);
    cmd
}

impl Spamd {
    /// `PING SPAMC/1.5` → `SPAMD/1.5 0 PONG`.
    pub fn ping(&self) -> bool {
        spamd_ping(self.addr)
    }

    /// The spamd parent's pid (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.peer.pid()
    }

    /// The contents of spamd.log.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.join("spamd.log"))
    }

    /// SIGTERM to the parent (it stops its children), SIGKILL to its process group after 15 s,
    /// wait until the port is closed. Idempotent. The temp dir stays until Drop.
    pub fn stop(&mut self) {
        self.peer.stop(Duration::from_secs(15));
        let addr = self.addr;
        if !wait_until(Duration::from_secs(10), || !port_open(addr)) {
            eprintln!("harness: spamd port {addr} still open after stop");
        }
    }
}

fn spamd_ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(b"PING SPAMC/1.5\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"SPAMD/1.5 0 PONG")
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

// ---------------------------------------------------------------------------------------------
// Postfix

/// Where a test Postfix instance sends mail (see [`Postfix::start`]).
#[derive(Clone, Copy, Debug)]
pub struct PostfixOpts {
    /// content_filter target (the filter under test). IPv4 only.
    pub filter: SocketAddr,
    /// true: `content_filter = postsift-lmtp:[ip]:port` (an lmtp transport); false:
    /// `postsift-smtp:[ip]:port` (an smtp transport). Both send XFORWARD.
    pub filter_lmtp: bool,
    /// Every message after filtering is relayed here (catch-all transport map). IPv4 only.
    pub final_dest: SocketAddr,
}

/// A private Postfix instance (Debian's binaries, `postfix -c <dir>/etc start`), configured from
/// the templates tests/fixtures/postfix/{main,master}.cf.
///
/// Layout of `dir`: `etc/` (main.cf, master.cf = config_directory), `queue/` (queue_directory),
/// `data/` (data_directory), `maillog` (maillog_file, written by postlogd; there is no syslog).
pub struct Postfix {
    /// The front smtpd (127.0.0.1), with content_filter.
    pub smtp_port: u16,
    /// The reinjection smtpd (127.0.0.1), content_filter empty, XFORWARD allowed from 127.0.0.0/8.
    pub reinject_port: u16,
    /// The instance's root dir.
    pub dir: PathBuf,
    peer: Peer,
}

fn nexthop(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("[{}]:{}", a.ip(), a.port()),
        SocketAddr::V6(_) => panic!("test Postfix is IPv4-only (inet_protocols = ipv4): {addr}"),
    }
}

/// A template from tests/fixtures/postfix with every `{{NAME}}` replaced; panics if one is left.
fn render(template: &str, vars: &[(&str, String)]) -> String {
    let path = fixtures().join("postfix").join(template);
    let mut text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for (name, value) in vars {
        text = text.replace(&format!("{{{{{name}}}}}"), value);
    }
    if let Some(at) = text.find("{{") {
        let rest = &text[at..];
        let name = &rest[..rest.find("}}").map_or(rest.len(), |e| e + 2)];
        panic!("{}: no value for {name}", path.display());
    }
    text
}

impl Postfix {
    /// Renders main.cf/master.cf, runs `postfix -c <etc> start` (which creates the queue and data
    /// dirs with the owners Postfix wants, then returns once master has bound its listeners) and
    /// checks both smtpd ports accept connections. Panics with `postfix`'s output and the maillog
    /// tail on failure; retries with other ports if a port was taken meanwhile.
    ///
    /// master detaches itself (its own session and process group, pgid = its pid) and switches
    /// user ids, so no parent-death signal can reach it: its [`Peer`] adopts that process group.
    pub fn start(opts: PostfixOpts) -> Postfix {
        retry_if_port_taken("Postfix", || Postfix::try_start(&opts))
    }

    fn try_start(opts: &PostfixOpts) -> Result<Postfix, String> {
        let peer = Peer::new("postfix-");
        let dir = peer.dir.clone();
        let etc = dir.join("etc");
        fs::create_dir(&etc).expect("mkdir etc");
        chmod(&etc, 0o755);
        // `postfix` chdirs into queue_directory before anything else, so that must exist; its
        // subdirs and data_directory are made by `postfix start` (`post-install create-missing`)
        // with the owners and modes of Postfix's postfix-files list.
        let queue = dir.join("queue");
        fs::create_dir(&queue).expect("mkdir queue");
        chmod(&queue, 0o755);
        let avoid = [opts.filter.port(), opts.final_dest.port()];
        let smtp_port = loop {
            let p = free_port();
            if !avoid.contains(&p) {
                break p;
            }
        };
        let reinject_port = loop {
            let p = free_port();
            if !avoid.contains(&p) && p != smtp_port {
                break p;
            }
        };
        let transport = if opts.filter_lmtp {
            "postsift-lmtp"
        } else {
            "postsift-smtp"
        };
        let main_cf = render(
            "main.cf",
            &[
                ("DIR", dir.display().to_string()),
                ("BASE", base_dir().display().to_string()),
                ("HOSTNAME", POSTFIX_HOSTNAME.to_string()),
                ("FILTER", format!("{transport}:{}", nexthop(opts.filter))),
                ("FINAL_DEST", nexthop(opts.final_dest)),
            ],
        );
        let master_cf = render(
            "master.cf",
            &[
                ("SMTP_PORT", smtp_port.to_string()),
                ("REINJECT_PORT", reinject_port.to_string()),
            ],
        );
        write_file(&etc.join("main.cf"), main_cf);
        write_file(&etc.join("master.cf"), master_cf);
        backdate_config(&etc);
        let mut pf = Postfix {
            smtp_port,
            reinject_port,
            dir,
            peer,
        };

        let out = pf.postfix_cmd(&["start"]);
        let started = out.as_ref().is_ok_and(|o| o.status.success());
        if let Some(master) = read_pid(&pf.dir.join("queue/pid/master.pid")) {
            pf.peer.adopt_group(master);
        }
        if started && pf.peer.pid().is_some() {
            let (a, b) = (localhost(smtp_port), localhost(reinject_port));
            if wait_until(Duration::from_secs(30), || port_open(a) && port_open(b)) {
                return Ok(pf);
            }
        }
        let output = match &out {
            Ok(o) => format!(
                "exit {}\n{}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("cannot run postfix: {e}"),
        };
        // pf is dropped on return: that stops whatever did start.
        Err(format!(
            "Postfix instance {} did not start (ports {smtp_port}, {reinject_port}): {output}\n{}",
            pf.dir.display(),
            tail(&pf.dir.join("maillog"), 40)
        ))
    }

    /// The config_directory (`<dir>/etc`).
    pub fn etc(&self) -> PathBuf {
        self.dir.join("etc")
    }

    /// The front smtpd's address.
    pub fn smtp_addr(&self) -> SocketAddr {
        localhost(self.smtp_port)
    }

    /// The reinjection smtpd's address.
    pub fn reinject_addr(&self) -> SocketAddr {
        localhost(self.reinject_port)
    }

    /// The master daemon's pid (None once stopped).
    pub fn master_pid(&self) -> Option<u32> {
        self.peer.pid()
    }

    fn postfix_cmd(&self, args: &[&str]) -> io::Result<std::process::Output> {
        Command::new("postfix")
            .arg("-c")
            .arg(self.etc())
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// Runs a Postfix admin command (postqueue, postconf, postsuper …) with `-c <etc>` and the
    /// given arguments; returns its stdout, panics with its output unless it succeeds.
    pub fn admin(&self, cmd: &str, args: &[&str]) -> String {
        let out = Command::new(cmd)
            .arg("-c")
            .arg(self.etc())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
        if !out.status.success() {
            panic!(
                "{cmd} -c {} {args:?}: {}\n{}{}",
                self.etc().display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `postqueue -c <etc> -f`: attempt to deliver all queued mail now.
    pub fn flush(&self) {
        self.admin("postqueue", &["-f"]);
    }

    /// Messages in this instance's queue (maildrop, incoming, active, deferred, hold), by
    /// `postqueue -j`; counts queue files directly if that fails (e.g. after stop()).
    pub fn queue_count(&self) -> usize {
        let out = Command::new("postqueue")
            .arg("-c")
            .arg(self.etc())
            .arg("-j")
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.trim_start().starts_with('{'))
                .count(),
            _ => ["maildrop", "incoming", "active", "deferred", "hold"]
                .iter()
                .map(|q| count_files(&self.dir.join("queue").join(q)))
                .sum(),
        }
    }

    /// `postconf -c <etc> -e <settings…>` (e.g. `"content_filter ="`), then `postfix reload`, and
    /// waits until master has reloaded and every process started under the old configuration has
    /// exited (≤ 10 s). Without that wait, a message sent right after could still be taken by an
    /// old smtpd/cleanup and queued under the old settings (content_filter is stored in the queue
    /// file).
    pub fn postconf(&self, settings: &[&str]) {
        let mut args = vec!["-e"];
        args.extend_from_slice(settings);
        self.admin("postconf", &args);
        backdate_config(&self.etc());
        let master = self.peer.pid().expect("Postfix instance not running");
        let old = processes(|pid, _, pgrp| pgrp == master && pid != master);
        let reloads_before = self.log().matches(" reload -- version").count();
        let out = self.postfix_cmd(&["reload"]).expect("run postfix reload");
        assert!(
            out.status.success(),
            "postfix reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let done = wait_until(Duration::from_secs(10), || {
            self.log().matches(" reload -- version").count() > reloads_before
                && old.iter().all(|&p| !pid_alive(p))
        });
        if !done {
            eprintln!("harness: Postfix reload not complete after 10 s; going on");
        }
    }

    /// Contents of its maillog_file.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.join("maillog"))
    }

    /// Waits until the maillog contains `needle` (true) or `timeout` passes (false).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle))
    }

    /// Stops the instance the way `postfix stop` does — SIGTERM to master, which passes it on to
    /// its children — without `postfix stop`'s polling in whole seconds; SIGKILL to the process
    /// group after 10 s. Idempotent. The temp dir (queue, log) stays until Drop.
    pub fn stop(&mut self) {
        self.peer.stop(Duration::from_secs(10));
    }
}

/// Postfix refuses to read a main.cf/master.cf modified within the last second or two (it rereads
/// it every 300 ms until the file is older, assuming it is still being written): that costs ~2 s
/// per `postfix` command on a freshly written config, so date the files 10 s back.
fn backdate_config(etc: &Path) {
    let past = std::time::SystemTime::now() - Duration::from_secs(10);
    for f in ["main.cf", "master.cf"] {
        let path = etc.join(f);
        if let Ok(file) = fs::File::options().write(true).open(&path) {
            let _ = file.set_modified(past);
        }
    }
}

fn count_files(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// SMTP client

/// The EHLO name smtp_send uses.
pub const CLIENT_HELO: &str = "client.postsift-test.localdomain";

/// A tiny blocking SMTP/LMTP client, one command at a time (no pipelining). Read timeout 120 s.
pub struct SmtpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl SmtpClient {
    /// Connects (10 s timeout). Read the greeting with [`SmtpClient::read_reply`].
    pub fn connect(addr: SocketAddr) -> io::Result<SmtpClient> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        s.set_write_timeout(Some(Duration::from_secs(120)))?;
        Ok(SmtpClient {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// One reply: (code, all its lines without CRLF joined by '\n', codes included), e.g.
    /// `(250, "250-postfix-test.localdomain\n250-PIPELINING\n…\n250 CHUNKING")`.
    pub fn read_reply(&mut self) -> io::Result<(u16, String)> {
        let mut lines = Vec::new();
        loop {
            let mut raw = Vec::new();
            if self.reader.read_until(b'\n', &mut raw)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {lines:?}"),
                ));
            }
            let (code, last, line) = reply_line(&raw);
            let code = code.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad reply line {line:?}"),
                )
            })?;
            lines.push(line);
            if last {
                return Ok((code, lines.join("\n")));
            }
        }
    }

    /// Sends `line` + CRLF and reads one reply.
    pub fn command(&mut self, line: &str) -> io::Result<(u16, String)> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    /// Writes bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Sends a message body after a 354: [`dot_stuff`]ed, then `.` CRLF. Reads no reply (SMTP has
    /// one, LMTP one per accepted recipient).
    pub fn send_data(&mut self, body: &[u8]) -> io::Result<()> {
        let mut data = dot_stuff(body);
        data.extend_from_slice(b".\r\n");
        self.writer.write_all(&data)
    }

    /// Half-closes the connection (write side).
    pub fn shutdown(&self) {
        let _ = self.writer.shutdown(Shutdown::Write);
    }
}

/// One line of an SMTP/LMTP reply, as both test clients read it: (its code if it starts with
/// three digits, whether it is the reply's last line — no `-` after the code —, the line without
/// its line end, lossy UTF-8).
pub fn reply_line(raw: &[u8]) -> (Option<u16>, bool, String) {
    let line = String::from_utf8_lossy(raw)
        .trim_end_matches(['\r', '\n'])
        .to_string();
    let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
    let last = line.as_bytes().get(3) != Some(&b'-');
    (code, last, line)
}

/// Prepares a message body for DATA (RFC 5321 4.5.2), for both test clients (this module's
/// [`SmtpClient`] and `client::Client`): bare LF becomes CRLF (so LF-terminated .eml fixtures
/// work), a '.' at the start of the body or after a CRLF is doubled, and the body ends with CRLF.
/// Bare LF is made CRLF *before* stuffing, so a dot after it is doubled too: a server that takes
/// bare LF as a line end (Postfix) and one that normalises it to CRLF (postsift) both get the
/// body back, and neither can see `<CRLF>.<CRLF>` early. Bare CR is left alone and is no line
/// start. Append `.` CRLF to end the data. To send bytes unchanged (smuggling tests) use
/// [`smtp_send_raw`] or `Client::send`.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 8);
    let mut at_line_start = true;
    for (i, &b) in body.iter().enumerate() {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && (i == 0 || body[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Sends one message: EHLO, MAIL FROM, RCPT TO (each), DATA, the body (see [`dot_stuff`]), QUIT.
/// Returns every reply, in order, as (code, full text): greeting, EHLO, MAIL, each RCPT, DATA,
/// end of data, QUIT. It stops early (sending QUIT if it can) when the greeting, EHLO or MAIL is
/// not 2xx, when no RCPT got 2xx, or when DATA is not 354; it stops without a panic when the
/// server closes the connection. Panics only if it cannot connect.
pub fn smtp_send(addr: SocketAddr, from: &str, rcpts: &[&str], body: &[u8]) -> Vec<(u16, String)> {
    send(addr, from, rcpts, &{
        let mut d = dot_stuff(body);
        d.extend_from_slice(b".\r\n");
        d
    })
}

/// Like [`smtp_send`] but the data is sent exactly as given, followed by `\r\n.\r\n` (no
/// dot-stuffing, no line-ending repair): for SMTP smuggling and bare CR/LF tests.
pub fn smtp_send_raw(
    addr: SocketAddr,
    from: &str,
    rcpts: &[&str],
    data: &[u8],
) -> Vec<(u16, String)> {
    let mut d = data.to_vec();
    d.extend_from_slice(b"\r\n.\r\n");
    send(addr, from, rcpts, &d)
}

fn send(addr: SocketAddr, from: &str, rcpts: &[&str], wire_data: &[u8]) -> Vec<(u16, String)> {
    let mut c =
        SmtpClient::connect(addr).unwrap_or_else(|e| panic!("smtp_send: connect {addr}: {e}"));
    let mut out = Vec::new();
    let ok = |code: u16| (200..300).contains(&code);
    macro_rules! step {
        ($e:expr) => {
            match $e {
                Ok(r) => {
                    out.push(r.clone());
                    r.0
                }
                Err(_) => return out,
            }
        };
    }
    macro_rules! quit {
        () => {{
            if let Ok(r) = c.command("QUIT") {
                out.push(r);
            }
            return out;
        }};
    }
    if !ok(step!(c.read_reply())) {
        quit!();
    }
    if !ok(step!(c.command(&format!("EHLO {CLIENT_HELO}")))) {
        quit!();
    }
    if !ok(step!(c.command(&format!("MAIL FROM:<{from}>")))) {
        quit!();
    }
    let mut accepted = 0;
    for r in rcpts {
        if ok(step!(c.command(&format!("RCPT TO:<{r}>")))) {
            accepted += 1;
        }
    }
    if accepted == 0 {
        quit!();
    }
    if step!(c.command("DATA")) != 354 {
        quit!();
    }
    if c.send_raw(wire_data).is_err() {
        return out;
    }
    step!(c.read_reply());
    quit!();
}

#[cfg(test)]
mod dot_stuff_tests {
    use super::{dot_stuff, reply_line};

    #[test]
    fn reply_line_reads_code_continuation_and_text() {
        assert_eq!(
            reply_line(b"250-PIPELINING\r\n"),
            (Some(250), false, "250-PIPELINING".into())
        );
        assert_eq!(reply_line(b"250 ok\n"), (Some(250), true, "250 ok".into()));
        assert_eq!(reply_line(b"354\r\n"), (Some(354), true, "354".into()));
        assert_eq!(reply_line(b"oops\r\n"), (None, true, "oops".into()));
    }

    /// Bodies with every kind of line end and dot placement.
    const BODIES: &[&[u8]] = &[
        b"",
        b".",
        b".a",
        b"..\r\n",
        b"no end",
        b"a\r\n.b\r\n",
        b"x\r\n.\r\n",
        b"a\n.b",
        b"a\n.\nb\n",
        b"\n.",
        b"a\r.b\r\n",
        b"a\r\n\r\n.\r\n..\r\n",
        b"ends in CR\r",
    ];

    #[test]
    fn dot_stuff_doubles_dots_at_line_starts_and_makes_bare_lf_crlf() {
        for (body, wire) in [
            (&b""[..], &b"\r\n"[..]),
            (b".", b"..\r\n"),
            (b".a", b"..a\r\n"),
            (b"..\r\n", b"...\r\n"),
            (b"no end", b"no end\r\n"),
            (b"a\r\n.b\r\n", b"a\r\n..b\r\n"),
            (b"x\r\n.\r\n", b"x\r\n..\r\n"),
            // Where the two test clients used to differ: a dot after a bare LF.
            (b"a\n.b", b"a\r\n..b\r\n"),
            (b"\n.", b"\r\n..\r\n"),
            // A bare CR is not a line end for stuffing.
            (b"a\r.b\r\n", b"a\r.b\r\n"),
        ] {
            assert_eq!(
                String::from_utf8_lossy(&dot_stuff(body)),
                String::from_utf8_lossy(wire),
                "body {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// What a receiver reading CRLF lines gets back: the body with bare LF as CRLF, ending in
    /// CRLF; and the data never ends before the terminator appended after it.
    #[test]
    fn dot_stuffed_data_ends_only_at_the_terminator_and_unstuffs_to_the_body() {
        for &body in BODIES {
            let shown = String::from_utf8_lossy(body);
            // The DATA command's own CRLF comes first: a leading "." is at a line start too.
            let mut wire = b"DATA\r\n".to_vec();
            wire.extend(dot_stuff(body));
            wire.extend_from_slice(b".\r\n");
            let end = wire.windows(5).position(|w| w == b"\r\n.\r\n").unwrap();
            assert_eq!(end + 5, wire.len(), "{shown:?}: data ends early");

            let mut unstuffed = Vec::new();
            for line in wire[6..end + 2].split_inclusive(|&b| b == b'\n') {
                assert!(line.ends_with(b"\r\n"), "{shown:?}: bare LF on the wire");
                unstuffed.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            }
            let mut expected = Vec::new();
            for (i, &b) in body.iter().enumerate() {
                if b == b'\n' && (i == 0 || body[i - 1] != b'\r') {
                    expected.push(b'\r');
                }
                expected.push(b);
            }
            if !expected.ends_with(b"\r\n") {
                expected.extend_from_slice(b"\r\n");
            }
            assert_eq!(
                String::from_utf8_lossy(&unstuffed),
                String::from_utf8_lossy(&expected),
                "{shown:?}"
            );
        }
    }
}
