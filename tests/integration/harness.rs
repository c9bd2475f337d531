//! Starts the real peers of postsift for integration tests: a private clamd, a private spamd and a
//! private Postfix instance, each in its own temp dir (config, socket, pid file, log) on 127.0.0.1,
//! each stopped by its PID when dropped; plus a tiny blocking SMTP/LMTP client.
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
//! Besides `Drop`, every daemon is watched by a small `setsid sh` process that holds the read end of
//! a pipe whose write end only the test process has: if the test process ends without running
//! `Drop` (a peer kept in a `static`, SIGKILL, Ctrl-C, abort), the pipe hits EOF and the watchdog
//! stops the daemon and removes its temp dir.
//!
//! Uses std only (plus `tempfile`); signals are sent with kill(1), MD5 is taken with md5sum(1).
#![allow(dead_code)]

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
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

/// SIGTERM to a child we spawned, wait up to `grace`, then SIGKILL; always reaps it.
fn terminate_child(child: &mut Child, grace: Duration) {
    if let Ok(None) = child.try_wait() {
        signal(&child.id().to_string(), "TERM");
        let exited = wait_until(grace, || !matches!(child.try_wait(), Ok(None)));
        if !exited {
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

/// What a [`Watchdog`] kills.
pub enum Watched<'a> {
    /// This pid (SIGKILL after 10 s).
    Pid(u32),
    /// The pid in this file, waiting up to 15 s for the file to appear (the daemon may still be
    /// starting); SIGKILL to its process group after 10 s.
    PidFile(&'a Path),
    /// The process group led by this pid (a child spawned with `process_group(0)`), as long as
    /// any member is alive, even if the leader is gone: SIGTERM to the leader, SIGKILL to the
    /// whole group after 10 s.
    Group(u32),
    /// No process: only remove the dir (after an explicit stop(), until Drop).
    Nothing,
}

/// Stops its daemon if the test process dies without running Drop (see module doc), then removes
/// the daemon's temp dir (unless POSTSIFT_KEEP_TEST_DIRS is set). Dropping the Watchdog (normal
/// path) kills the watchdog itself first, so it never fires late.
pub struct Watchdog {
    child: Child,
    _pipe: Option<ChildStdin>,
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

impl Watchdog {
    /// Starts the watchdog of `target` and `dir`; None (with a message) if it cannot.
    pub fn spawn(target: Watched, dir: &Path) -> Option<Watchdog> {
        // (how to get $pid, is there something to stop, is it gone, what gets the SIGKILL)
        let (get_pid, live, gone, kill) = match target {
            Watched::Pid(pid) => (
                format!("pid={pid}"),
                "alive $pid",
                "! alive $pid",
                "$pid -$pid",
            ),
            Watched::Nothing => (String::new(), "false", "true", ""),
            Watched::PidFile(f) => (
                format!(
                    "i=0; while [ ! -s {f} ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done; \
                     pid=$(cat {f} 2>/dev/null | tr -d ' ')",
                    f = sh_quote(f)
                ),
                "alive $pid",
                "! group_alive $pid",
                "$pid -$pid",
            ),
            Watched::Group(pid) => (
                format!("pid={pid}"),
                "group_alive $pid",
                "! group_alive $pid",
                "-$pid",
            ),
        };
        let rm = if std::env::var_os("POSTSIFT_KEEP_TEST_DIRS").is_some() {
            String::new()
        } else {
            let d = sh_quote(dir);
            format!("for i in 1 2 3 4 5; do rm -rf {d}; [ -e {d} ] || break; sleep 1; done")
        };
        // `alive` ignores zombies: this sandbox's PID 1 does not reap orphans.
        let script = format!(
            "read _unused
alive() {{ s=$(sed 's/^.*) //' /proc/$1/stat 2>/dev/null | cut -c1); [ -n \"$s\" ] && [ \"$s\" != Z ]; }}
group_alive() {{ ps -e -o pgid=,stat= | awk -v g=$1 '$1 == g && $2 !~ /^Z/ {{ f = 1 }} END {{ exit !f }}'; }}
{get_pid}
if [ -n \"$pid\" ] && {live}; then
  kill -TERM $pid
  i=0; until {gone} || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
  {gone} || kill -KILL -- {kill}
  i=0; until {gone} || [ $i -ge 50 ]; do sleep 0.1; i=$((i+1)); done
fi
{rm}
"
        );
        let mut child = Command::new("setsid")
            .arg("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("harness: no watchdog ({e})"))
            .ok()?;
        let pipe = child.stdin.take();
        Some(Watchdog { child, _pipe: pipe })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    child: Option<Child>,
    watchdog: Option<Watchdog>,
    tmp: Option<tempfile::TempDir>,
}

impl Clamd {
    /// `start_with("60M")`.
    pub fn start() -> Clamd {
        Clamd::start_with("60M")
    }

    /// Starts clamd with `StreamMaxLength <stream_max_len>` (clamd syntax: "60M", "1M", "512K"),
    /// blocks until it answers `zPING` (60 s, then panics with the log's tail).
    pub fn start_with(stream_max_len: &str) -> Clamd {
        let tmp = private_dir("clamd-");
        let dir = tmp.path().to_path_buf();
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
        let log = dir.join("clamd.log");
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
                 LogFile {log}\n\
                 LogTime yes\n\
                 LogVerbose no\n\
                 StreamMaxLength {stream_max_len}\n\
                 MaxThreads 8\n",
                sock = socket.display(),
                db = db.display(),
                dir = dir.display(),
                log = log.display(),
            ),
        );
        let out = fs::File::create(dir.join("clamd.out")).expect("create clamd.out");
        let child = Command::new("/usr/sbin/clamd")
            .arg("-c")
            .arg(&conf)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn /usr/sbin/clamd: {e}"));
        let watchdog = Watchdog::spawn(Watched::Pid(child.id()), &dir);
        let mut clamd = Clamd {
            socket,
            dir,
            child: Some(child),
            watchdog,
            tmp: Some(tmp),
        };

        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if clamd.ping() {
                return clamd;
            }
            let exited = clamd
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= end {
                let why = match exited {
                    Some(st) => format!("clamd exited ({st})"),
                    None => "clamd did not answer zPING within 60 s".to_string(),
                };
                panic!(
                    "{why}\n{}\n{}",
                    tail(&clamd.dir.join("clamd.log"), 30),
                    tail(&clamd.dir.join("clamd.out"), 30)
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// `zPING\0` → `PONG`.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(&self.socket) else {
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

    /// The clamd pid (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The contents of clamd.log.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.join("clamd.log")).unwrap_or_default())
            .into_owned()
    }

    /// SIGTERM by pid (SIGKILL after 10 s), wait. Idempotent. The temp dir stays until Drop.
    pub fn stop(&mut self) {
        self.halt();
        if self.watchdog.is_none() && self.tmp.is_some() {
            self.watchdog = Watchdog::spawn(Watched::Nothing, &self.dir);
        }
    }

    fn halt(&mut self) {
        self.watchdog.take();
        if let Some(mut child) = self.child.take() {
            terminate_child(&mut child, Duration::from_secs(10));
        }
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        self.halt();
        finish_dir(self.tmp.take());
    }
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
    child: Option<Child>,
    watchdog: Option<Watchdog>,
    tmp: Option<tempfile::TempDir>,
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
        for attempt in 1..=3 {
            match Spamd::try_start() {
                Ok(s) => return s,
                Err(msg) if attempt < 3 && msg.contains("Address already in use") => {
                    eprintln!("harness: spamd port taken, retrying");
                }
                Err(msg) => panic!("{msg}"),
            }
        }
        unreachable!()
    }

    fn try_start() -> Result<Spamd, String> {
        let tmp = private_dir("spamd-");
        let dir = tmp.path().to_path_buf();
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
        let log = dir.join("spamd.log");
        let logf = fs::File::create(&log).expect("create spamd.log");
        let child = Command::new("/usr/sbin/spamd")
            .arg("-x")
            .arg(format!("--listen={addr}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg("--max-children=2")
            .arg("-u")
            .arg("nobody")
            .arg(format!("--siteconfigpath={}", site.display()))
            .arg(format!("--pidfile={}", dir.join("spamd.pid").display()))
            .arg(format!("--helper-home-dir={}", home.display()))
            .arg("--syslog=stderr")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup"))
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn /usr/sbin/spamd: {e}"));
        let watchdog = Watchdog::spawn(Watched::Pid(child.id()), &dir);
        let mut spamd = Spamd {
            addr,
            dir,
            child: Some(child),
            watchdog,
            tmp: Some(tmp),
        };

        let end = Instant::now() + Duration::from_secs(120);
        loop {
            if spamd.ping() {
                return Ok(spamd);
            }
            let exited = spamd
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= end {
                let why = match exited {
                    Some(st) => format!("spamd exited ({st})"),
                    None => "spamd did not answer PING within 120 s".to_string(),
                };
                return Err(format!("{why}\n{}", tail(&spamd.dir.join("spamd.log"), 30)));
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// `PING SPAMC/1.5` → `SPAMD/1.5 0 PONG`.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)) else {
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

    /// The spamd parent's pid (None once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The contents of spamd.log.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.join("spamd.log")).unwrap_or_default())
            .into_owned()
    }

    /// SIGTERM to the parent (it stops its children), wait for it, SIGKILL children that are left,
    /// wait until the port is closed. Idempotent. The temp dir stays until Drop.
    pub fn stop(&mut self) {
        self.halt();
        if self.watchdog.is_none() && self.tmp.is_some() {
            self.watchdog = Watchdog::spawn(Watched::Nothing, &self.dir);
        }
    }

    fn halt(&mut self) {
        self.watchdog.take();
        let Some(mut child) = self.child.take() else {
            return;
        };
        let parent = child.id();
        let children = processes(|_, ppid, _| ppid == parent);
        terminate_child(&mut child, Duration::from_secs(15));
        if !wait_until(Duration::from_secs(5), || {
            children.iter().all(|&p| !pid_alive(p))
        }) {
            for p in &children {
                if pid_alive(*p) {
                    signal(&p.to_string(), "KILL");
                }
            }
        }
        let addr = self.addr;
        if !wait_until(Duration::from_secs(10), || !port_open(addr)) {
            eprintln!("harness: spamd port {addr} still open after stop");
        }
    }
}

impl Drop for Spamd {
    fn drop(&mut self) {
        self.halt();
        finish_dir(self.tmp.take());
    }
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

/// A private Postfix instance (Debian's binaries, `postfix -c <dir>/etc start`).
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
    master_pid: Option<u32>,
    watchdog: Option<Watchdog>,
    tmp: Option<tempfile::TempDir>,
}

fn nexthop(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("[{}]:{}", a.ip(), a.port()),
        SocketAddr::V6(_) => panic!("test Postfix is IPv4-only (inet_protocols = ipv4): {addr}"),
    }
}

impl Postfix {
    /// Writes main.cf/master.cf, runs `postfix -c <etc> start` (which creates the queue and data
    /// dirs with the owners Postfix wants, then returns once master has bound its listeners) and
    /// checks both smtpd ports accept connections. Panics with `postfix`'s output and the maillog
    /// tail on failure; retries with other ports if a port was taken meanwhile.
    pub fn start(opts: PostfixOpts) -> Postfix {
        for attempt in 1..=3 {
            match Postfix::try_start(&opts) {
                Ok(p) => return p,
                Err(msg) if attempt < 3 && msg.contains("Address already in use") => {
                    eprintln!("harness: Postfix port taken, retrying");
                }
                Err(msg) => panic!("{msg}"),
            }
        }
        unreachable!()
    }

    fn try_start(opts: &PostfixOpts) -> Result<Postfix, String> {
        let tmp = private_dir("postfix-");
        let dir = tmp.path().to_path_buf();
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
        let mut pf = Postfix {
            smtp_port,
            reinject_port,
            dir,
            master_pid: None,
            watchdog: None,
            tmp: Some(tmp),
        };
        write_file(&etc.join("main.cf"), pf.main_cf(opts));
        write_file(&etc.join("master.cf"), pf.master_cf());
        backdate_config(&etc);

        // The watchdog goes first: if the test dies while `postfix start` runs, master still
        // comes up, after the test is gone.
        let pid_file = pf.dir.join("queue/pid/master.pid");
        pf.watchdog = Watchdog::spawn(Watched::PidFile(&pid_file), &pf.dir);
        let out = pf.postfix_cmd(&["start"]);
        let started = out.as_ref().is_ok_and(|o| o.status.success());
        if started {
            pf.master_pid = read_pid(&pid_file);
            let (a, b) = (localhost(smtp_port), localhost(reinject_port));
            if pf.master_pid.is_some()
                && wait_until(Duration::from_secs(30), || port_open(a) && port_open(b))
            {
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
        let msg = format!(
            "Postfix instance {} did not start (ports {smtp_port}, {reinject_port}): {output}\n{}",
            pf.dir.display(),
            tail(&pf.dir.join("maillog"), 40)
        );
        drop(pf); // stops whatever did start
        Err(msg)
    }

    fn main_cf(&self, o: &PostfixOpts) -> String {
        let d = self.dir.display();
        let base = base_dir();
        let filter = format!(
            "{}:{}",
            if o.filter_lmtp {
                "postsift-lmtp"
            } else {
                "postsift-smtp"
            },
            nexthop(o.filter)
        );
        let final_dest = nexthop(o.final_dest);
        format!(
            "# private test instance written by tests/integration/harness.rs
compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {POSTFIX_HOSTNAME}
mydomain = localdomain
myorigin = $myhostname
mydestination =
local_recipient_maps =
relay_domains =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
biff = no
append_dot_mydomain = no
readme_directory = no

# no syslog here: postlogd writes the log (service postlog in master.cf)
maillog_file = {d}/maillog
maillog_file_prefixes = {base}

# no DNS at all; next hops are literal [127.0.0.1]:port
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
smtpd_peername_lookup = no

# after-queue content filter = the filter under test
content_filter = {filter}
postsift-lmtp_destination_recipient_limit = 0
# every message after filtering (and every bounce) goes to the test's final destination
transport_maps = inline:{{ *=smtp:{final_dest} }}
default_transport = smtp:{final_dest}
relay_transport = smtp:{final_dest}
local_transport = error:5.1.1 local delivery disabled (postsift test)

# retry deferred mail quickly
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s

# tests push hard from one client; allow messages bigger than the default 10 MB
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_error_sleep_time = 0
in_flow_delay = 0
message_size_limit = 104857600
",
            base = base.display()
        )
    }

    fn master_cf(&self) -> String {
        let (smtp, reinject) = (self.smtp_port, self.reinject_port);
        format!(
            "# private test instance: chroot n everywhere (nothing populates a chroot jail here)
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:{smtp} inet n -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
        -o syslog_name=postfix/$service_name
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd

# feed: Postfix -> filter under test, LMTP (the amavis recipe) ...
postsift-lmtp unix -    -       n       -       20      lmtp
  -o syslog_name=postfix/postsift-lmtp
  -o lmtp_data_done_timeout=1200
  -o lmtp_send_xforward_command=yes
  -o lmtp_dns_support_level=disabled
  -o lmtp_tls_security_level=none
# ... or SMTP
postsift-smtp unix -    -       n       -       20      smtp
  -o syslog_name=postfix/postsift-smtp
  -o smtp_data_done_timeout=1200
  -o smtp_send_xforward_command=yes
  -o smtp_dns_support_level=disabled
  -o smtp_tls_security_level=none

# reinjection: filter -> Postfix, no content filter, XFORWARD honoured
127.0.0.1:{reinject} inet n -       n       -       -       smtpd
  -o syslog_name=postfix/reinject
  -o content_filter=
  -o smtpd_delay_reject=no
  -o smtpd_client_restrictions=permit_mynetworks,reject
  -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o smtpd_relay_restrictions=permit_mynetworks,reject
  -o smtpd_data_restrictions=reject_unauth_pipelining
  -o smtpd_end_of_data_restrictions=
  -o mynetworks=127.0.0.0/8
  -o smtpd_error_sleep_time=0
  -o smtpd_soft_error_limit=1001
  -o smtpd_hard_error_limit=1000
  -o smtpd_client_connection_count_limit=0
  -o smtpd_client_connection_rate_limit=0
  -o receive_override_options=no_header_body_checks,no_unknown_recipient_checks,no_milters,no_address_mappings
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
"
        )
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
        self.master_pid
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
        let master = self.master_pid.expect("Postfix instance not running");
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
        String::from_utf8_lossy(&fs::read(self.dir.join("maillog")).unwrap_or_default())
            .into_owned()
    }

    /// Waits until the maillog contains `needle` (true) or `timeout` passes (false).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle))
    }

    /// SIGTERM to master by pid (it stops its children; `postfix stop` does the same), wait until
    /// no process of its process group is left, SIGKILL the group after 10 s. Idempotent. The
    /// temp dir (queue, log) stays until Drop.
    pub fn stop(&mut self) {
        self.halt();
        if self.watchdog.is_none() && self.tmp.is_some() {
            self.watchdog = Watchdog::spawn(Watched::Nothing, &self.dir);
        }
    }

    fn halt(&mut self) {
        self.watchdog.take();
        let pid = self
            .master_pid
            .take()
            .or_else(|| read_pid(&self.dir.join("queue/pid/master.pid")));
        let Some(pid) = pid else { return };
        // master.pid of a dead instance may name a recycled pid: only signal a Postfix master.
        let is_master =
            fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.contains("master"));
        if !is_master || !pid_alive(pid) {
            return;
        }
        signal(&pid.to_string(), "TERM");
        let group_gone = || !pid_alive(pid) && group_members(pid).is_empty();
        if !wait_until(Duration::from_secs(10), group_gone) {
            signal(&format!("-{pid}"), "KILL");
            wait_until(Duration::from_secs(5), group_gone);
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.halt();
        finish_dir(self.tmp.take());
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
            let n = self.reader.read_until(b'\n', &mut raw)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {lines:?}"),
                ));
            }
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad reply line {line:?}"),
                    )
                })?;
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
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
    use super::dot_stuff;

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
