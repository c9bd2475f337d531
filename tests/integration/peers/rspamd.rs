//! A private rspamd (Debian's /usr/bin/rspamd, 3.4) for integration tests: its own config, database,
//! run and log dirs in a temp dir under `/tmp/postsift-test/`, a normal worker (HTTP `/checkv2`,
//! `/ping`) and a controller on 127.0.0.1 free ports: a [`Peer`] like the other peers (its
//! own process group, stopped when dropped or when the test process ends). Same conventions as
//! `peers/mod.rs`, whose helpers it uses (root, loopback-only network namespace,
//! `POSTSIFT_TEST_TMP`, `POSTSIFT_KEEP_TEST_DIRS`).
//!
//! Config: `<dir>/etc` is a fresh copy of /etc/rspamd (so every stock rule loads), without the
//! site-local files (`local.d/`, `override.d/`, `rspamd.conf.local*`, `rspamd.conf.override`) and
//! without its top-level rspamd.conf; `tests/fixtures/rspamd/local.d` and `override.d` are put in
//! their place, and `tests/fixtures/rspamd/rspamd.conf` becomes `<dir>/rspamd.conf` (only a normal
//! worker and a controller: no proxy/milter, no fuzzy storage). Every module that looks something
//! up in DNS, talks to redis or fetches a remote map is off (see the fixture files), DNS goes to a
//! closed port on 127.0.0.1, and each scan's log line says `dns req: 0`. Paths and ports reach the
//! config as rspamd variables (`--var=NAME=value`), so the fixture files are used verbatim.
//!
//! Start-up time: rspamd compiles its URL/TLD matcher and its rule regexps into hyperscan
//! databases, kept in one cache dir shared by all test instances and kept between runs:
//! `<POSTSIFT_TEST_TMP or /tmp/postsift-test>/rspamd-cache` (option `hs_cache_dir`; it must be
//! writable by the workers' user). With an empty cache (the first start on a machine) the main
//! process spends ~13 s on the TLD matcher before it forks the workers, then the `hs_helper`
//! worker compiles the ~170 rule regexps in ~5 s, and `start()` waits for both (see
//! `wait_for_hyperscan` for why); with a complete cache a start takes about half a second. Delete
//! the dir to force a recompile (rspamd checks the files against its rules and platform anyway).
//!
#![allow(dead_code)]

use super::{
    base_dir, chmod, fixtures, free_port, localhost, port_open, retry_if_port_taken, wait_until,
    write_file, Peer, PeerProcess,
};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's rspamd binary.
pub const RSPAMD_BIN: &str = "/usr/bin/rspamd";
/// The controller's password (`password` and `enable_password`), sent as the `Password` header.
pub const RSPAMD_PASSWORD: &str = "postsift-test";
/// The user the workers run as (created by Debian's package); root with `-i` if it is missing.
pub const RSPAMD_USER: &str = "_rspamd";
/// How long [`Rspamd::start`] waits for `/ping` (a first start with an empty cache takes ~15 s).
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// A private rspamd: `rspamd -f -c <dir>/rspamd.conf` with its own config, db, run and log dirs.
pub struct Rspamd {
    /// The normal worker (HTTP: `POST /checkv2`, `GET /ping`), 127.0.0.1:<free port>.
    pub addr: SocketAddr,
    /// The controller (HTTP: `/stat`, `/learnspam`, … with `Password: postsift-test`).
    pub controller: SocketAddr,
    /// The temp dir: rspamd.conf, etc/ (config), db/ (DBDIR), run/ (RUNDIR), log/rspamd.log
    /// (LOGDIR), rspamd.out (stdout/stderr), rspamd.pid (written by us: rspamd writes no pid file
    /// in foreground mode).
    pub dir: PathBuf,
    peer: PeerProcess,
}

impl Rspamd {
    /// Starts rspamd in the foreground on two free ports and blocks until `GET /ping` answers
    /// `pong` on both workers (180 s, then panics with the tails of the log and of stdout/stderr)
    /// and, if the hyperscan cache was incomplete, until the rule regexps are compiled (see the
    /// module doc: ~18 s the first time on a machine, ~0.5 s after). Retries with other ports if
    /// a chosen one was taken meanwhile.
    pub fn start() -> Rspamd {
        retry_if_port_taken("rspamd", Rspamd::try_start)
    }

    fn try_start() -> Result<Rspamd, String> {
        let cache = base_dir().join("rspamd-cache");
        fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("mkdir {}: {e}", cache.display()));

        let mut peer = PeerProcess::new("rspamd-");
        let dir = peer.dir.clone();
        let etc = dir.join("etc");
        copy_stock_config(Path::new("/etc/rspamd"), &etc);
        let fix = fixtures().join("rspamd");
        for sub in ["local.d", "override.d"] {
            copy_tree(&fix.join(sub), &etc.join(sub));
        }
        let conf = dir.join("rspamd.conf");
        copy_file(&fix.join("rspamd.conf"), &conf);
        for sub in ["db", "run", "log"] {
            fs::create_dir(dir.join(sub)).expect("mkdir");
            chmod(&dir.join(sub), 0o755);
        }

        // Who runs the workers: rspamd refuses to run them as root without -i.
        let mut user_args: Vec<String> = Vec::new();
        if is_root() {
            match user_ids(RSPAMD_USER) {
                Some((uid, gid)) => {
                    for d in [&dir.join("db"), &dir.join("run"), &dir.join("log"), &cache] {
                        std::os::unix::fs::chown(d, Some(uid), Some(gid))
                            .unwrap_or_else(|e| panic!("chown {}: {e}", d.display()));
                    }
                    user_args = ["-u", RSPAMD_USER, "-g", RSPAMD_USER]
                        .map(String::from)
                        .to_vec();
                }
                None => user_args.push("-i".into()),
            }
        }
        let _ = fs::set_permissions(&cache, fs::Permissions::from_mode(0o755)); // may not be ours

        let addr = localhost(free_port());
        let controller = localhost(free_port());
        // Nothing answers there: a query waits for its timeout (rspamd does not see the ICMP
        // error), but none is made (see `dns req` in the log).
        let dns = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("bind udp 127.0.0.1:0");
        let vars = [
            ("CONFDIR", etc.display().to_string()),
            ("LOCAL_CONFDIR", etc.display().to_string()),
            ("DBDIR", dir.join("db").display().to_string()),
            ("RUNDIR", dir.join("run").display().to_string()),
            ("LOGDIR", dir.join("log").display().to_string()),
            ("POSTSIFT_NORMAL", addr.to_string()),
            ("POSTSIFT_CONTROLLER", controller.to_string()),
            ("POSTSIFT_DNS", dns.to_string()),
            ("POSTSIFT_HS_CACHE", cache.display().to_string()),
        ];

        let mut args: Vec<String> = vec!["-f".into(), "-c".into(), conf.display().to_string()];
        args.extend(user_args);
        args.extend(vars.iter().map(|(k, v)| format!("--var={k}={v}")));
        // For a post-mortem (POSTSIFT_KEEP_TEST_DIRS=1): how to start it again by hand.
        write_file(
            &dir.join("command"),
            format!("{RSPAMD_BIN} {}\n", args.join(" ")),
        );

        let out = fs::File::create(dir.join("rspamd.out")).expect("create rspamd.out");
        let mut cmd = Command::new(RSPAMD_BIN);
        cmd.args(&args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out);
        peer.spawn(cmd);
        write_file(
            &dir.join("rspamd.pid"),
            format!("{}\n", peer.pid().unwrap()),
        );
        let end = Instant::now() + START_TIMEOUT;
        peer.wait_ready(
            "rspamd (/ping)",
            START_TIMEOUT,
            || ping(addr) && ping(controller),
            &["log/rspamd.log", "rspamd.out"],
        )?; // on Err, peer is dropped: that stops what is left and removes the dir
        let rspamd = Rspamd {
            addr,
            controller,
            dir,
            peer,
        };
        rspamd.wait_for_hyperscan(end);
        let took = START_TIMEOUT - end.saturating_duration_since(Instant::now());
        if took > Duration::from_secs(5) {
            eprintln!(
                "rspamd_peer: rspamd took {:.1} s to start (hyperscan cache {} was empty?)",
                took.as_secs_f64(),
                cache.display()
            );
        }
        Ok(rspamd)
    }

    /// With a complete cache the main process loads every compiled regexp before it forks the
    /// workers. Otherwise the `hs_helper` worker compiles what is missing (~5 s) while the workers
    /// already answer (with PCRE: same results); wait for that too, because a stopping rspamd
    /// deletes every cache file its main process has not loaded itself ("remove stale hyperscan
    /// file"): an instance stopped before its compile ended would delete what others compiled,
    /// and the cache would never become complete. Waits at most 60 s (and not past `end`), then
    /// goes on with a warning: the instance works anyway.
    fn wait_for_hyperscan(&self, end: Instant) {
        let done = |log: &str| {
            log.contains("full hyperscan database of")
                // a CPU without SSSE3: no hyperscan at all
                || log.contains("required for hyperscan, disable it")
        };
        let limit = Duration::from_secs(60).min(end.saturating_duration_since(Instant::now()));
        if !wait_until(limit, || done(&self.log())) {
            eprintln!(
                "rspamd_peer: hyperscan regexps still not compiled after {} s; going on",
                limit.as_secs()
            );
        }
    }

    /// The contents of log/rspamd.log (one line per scan: `rspamd_task_write_log: … qid: <…>, …
    /// (default: F (no action): [score/15.00] [symbols]), len: …, time: …, dns req: 0, …`).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.join("log/rspamd.log")).unwrap_or_default())
            .into_owned()
    }
}

impl Peer for Rspamd {
    const NAME: &'static str = "rspamd";

    peer_process!();

    /// The normal worker.
    fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// `GET /ping` on the normal worker → `pong`.
    fn ping(&self) -> bool {
        ping(self.addr)
    }

    /// SIGTERM to the main process (it stops its workers), SIGKILL to its process group after
    /// 15 s.
    fn grace(&self) -> Duration {
        Duration::from_secs(15)
    }

    /// Starts the stopped rspamd again with the same command line (the `command` file: same
    /// ports and directories); blocks until both workers answer `/ping` (180 s, then panics).
    fn start_again(&mut self) {
        let line = fs::read_to_string(self.dir.join("command")).expect("read command");
        let mut words = line.split_whitespace();
        let mut cmd = Command::new(words.next().expect("program"));
        let out = fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("rspamd.out"))
            .expect("open rspamd.out");
        cmd.args(words)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out);
        self.peer.spawn(cmd);
        let (a, c) = (self.addr, self.controller);
        self.peer
            .wait_ready(
                "rspamd (/ping)",
                START_TIMEOUT,
                || ping(a) && ping(c),
                &["log/rspamd.log", "rspamd.out"],
            )
            .unwrap_or_else(|why| panic!("{why}"));
    }

    /// SIGTERM to the main process (it stops its workers), SIGKILL to its process group after
    /// 15 s; wait until both ports are closed. Idempotent. The temp dir stays until Drop.
    fn stop(&mut self) {
        self.peer.stop(self.grace());
        let (a, c) = (self.addr, self.controller);
        if !wait_until(Duration::from_secs(10), || !port_open(a) && !port_open(c)) {
            eprintln!("rspamd_peer: rspamd port {a} or {c} still open after stop");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// A reply from [`http`].
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The status code (200, 403 …).
    pub status: u16,
    /// The status line and headers, CRLF-separated, without the blank line.
    pub head: String,
    /// The body (lossy UTF-8).
    pub body: String,
}

/// One blocking HTTP/1.1 request on a new connection (`Connection: close`, `Content-Length`
/// always sent; 5 s to connect, 60 s per read). Reads the reply up to its Content-Length (or EOF
/// when it has none). Enough for rspamd's workers: `http(r.addr, "POST", "/checkv2", &[("IP",
/// "192.0.2.7"), …], msg)`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpReply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut wire = req.into_bytes();
    wire.extend_from_slice(body);
    s.write_all(&wire)?;

    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(bad(format!(
                "connection closed before the end of the headers: {:?}",
                String::from_utf8_lossy(&buf)
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("bad status line in {head:?}")))?;
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    let mut body = buf.split_off(head_end + 4);
    loop {
        if length.is_some_and(|len| body.len() >= len) {
            break;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            if let Some(len) = length {
                return Err(bad(format!("body cut at {} of {len} bytes", body.len())));
            }
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if let Some(len) = length {
        body.truncate(len);
    }
    Ok(HttpReply {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `GET /ping` → 200 `pong` (either worker).
pub fn ping(addr: SocketAddr) -> bool {
    matches!(http(addr, "GET", "/ping", &[], b""), Ok(r) if r.status == 200 && r.body.trim() == "pong")
}

// ---------------------------------------------------------------------------------------------
// helpers (rspamd's own; the generic ones are the harness's)

fn copy_file(from: &Path, to: &Path) {
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    chmod(to, 0o644);
}

/// Copies a directory tree (files world-readable, dirs 0755), following symlinks.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    chmod(to, 0o755);
    let rd = fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for e in rd.flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else {
            copy_file(&src, &dst);
        }
    }
}

/// /etc/rspamd without what a site adds to it (local.d/, override.d/, rspamd.conf.local,
/// rspamd.conf.local.override, rspamd.conf.override: empty local.d/ and override.d/ instead) and
/// without its top-level rspamd.conf (ours is `<dir>/rspamd.conf`).
fn copy_stock_config(from: &Path, to: &Path) {
    fs::create_dir(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    chmod(to, 0o755);
    let rd = fs::read_dir(from)
        .unwrap_or_else(|e| panic!("read {}: {e} (is rspamd installed?)", from.display()));
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let (src, dst) = (e.path(), to.join(&*name));
        match &*name {
            "rspamd.conf"
            | "rspamd.conf.local"
            | "rspamd.conf.local.override"
            | "rspamd.conf.override"
            | "local.d"
            | "override.d" => {}
            _ if src.is_dir() => copy_tree(&src, &dst),
            _ => copy_file(&src, &dst),
        }
    }
}

/// True if this process runs as root (/proc/self belongs to the effective uid).
fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// (uid, gid) of a user from /etc/passwd.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.split(':').next() == Some(user))?;
    let f: Vec<&str> = line.split(':').collect();
    Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}
