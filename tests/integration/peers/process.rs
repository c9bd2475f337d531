//! One daemon of a test as a process group in its own temp dir ([`PeerProcess`]): how it is
//! spawned (parent-death signal, own group), stopped by pid, and cleaned up when the test process
//! exits or is killed; and [`Watchdog`] for daemons a caller starts itself.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::{
    base_dir, finish_dir, group_members, owner_id, pid_alive, port_open, private_dir, read_pid,
    signal, tail, wait_until, write_file, PEER_ENV,
};

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
/// does not reach is cleaned up by [`sweep_stale_dirs`] (see [`PeerProcess`]).
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
/// is): (process group, dir); a [`PeerProcess`] is found by its dir, a [`Watchdog`] by its group.
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

/// One daemon of a test in its own temp dir: the process behind every [`super::Peer`].
///
/// Start: [`PeerProcess::new`] makes the dir, [`PeerProcess::spawn`] starts the process (see [`spawn_peer`]) or
/// [`PeerProcess::adopt_group`] takes over a daemon that detached itself (Postfix's master),
/// [`PeerProcess::wait_ready`] waits for the peer's own "ready" probe. Stop: [`PeerProcess::stop`] — SIGTERM to
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
pub struct PeerProcess {
    /// The temp dir.
    pub dir: PathBuf,
    child: Option<Child>,
    /// The process group (= its leader's pid).
    group: Option<u32>,
    tmp: Option<tempfile::TempDir>,
}

impl PeerProcess {
    /// A fresh dir `<base>/<prefix>XXXXXX` (mode 0755) that names this test process as its owner;
    /// nothing runs yet.
    pub fn new(prefix: &str) -> PeerProcess {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(sweep_stale_dirs);
        let tmp = private_dir(prefix);
        let dir = tmp.path().to_path_buf();
        live().push((None, Some(dir.clone())));
        write_file(
            &dir.join("harness.owner"),
            owner_id(std::process::id()).expect("own /proc/self/stat") + "\n",
        );
        PeerProcess {
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

    /// Runs `program args` as this peer's process, stdout and stderr appended to
    /// `<program's name>.log` in the dir, and waits until `addr` accepts connections (30 s, then
    /// panics with the log's tail): for the peers without a protocol ping (postgrey, redis).
    pub fn run_until_port_open(&mut self, program: &str, args: &[OsString], addr: SocketAddr) {
        let name = Path::new(program).file_name().unwrap().to_string_lossy();
        let log = format!("{name}.log");
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(&log))
            .unwrap_or_else(|e| panic!("open {log}: {e}"));
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out);
        self.spawn(cmd);
        self.wait_ready(
            &format!("{name} (port {addr})"),
            Duration::from_secs(30),
            || port_open(addr),
            &[&log],
        )
        .unwrap_or_else(|why| panic!("{why}"));
    }

    /// SIGTERM to the leader; SIGKILL to the group if the group is not gone after `grace`; waits
    /// until no member is left (5 s more at most) and reaps the child. Idempotent. The dir stays
    /// until Drop.
    pub fn stop(&mut self, grace: Duration) {
        self.end("TERM", grace);
    }

    /// SIGKILL to the leader and then the group (a crash: no clean shut-down), waits like
    /// [`PeerProcess::stop`]. Idempotent. The dir stays until Drop.
    pub fn kill(&mut self) {
        self.end("KILL", Duration::from_secs(5));
    }

    fn end(&mut self, first: &str, grace: Duration) {
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
        signal(&g.to_string(), first);
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

impl Drop for PeerProcess {
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
/// process (group) with the harness's clean-up at exit (see [`PeerProcess`]) until dropped. Runs no
/// process of its own (it used to be a shell loop) and never removes `dir`: the [`PeerProcess`] that owns
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
