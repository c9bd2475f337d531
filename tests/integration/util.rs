//! Starting postsift in-process on 127.0.0.1:0 with a config written for the test (as text with
//! [`config`], or key by key with [`test_config`]), the clamd, spamd and rspamd that all tests
//! share (started once; a `static` is never dropped: the harness stops them when the test binary
//! exits, see `peers::PeerProcess`), the one runner of the `postsift` binary
//! ([`postsift_cmd`], [`postsift_out`], [`postsift`]), and the daemon spawned as an ordinary
//! user ([`daemon_cmd`] in a [`daemon_dir`]).

use std::net::SocketAddr;
use std::sync::OnceLock;

use postsift::config::Config;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::peers;
use crate::test_config::TestConfig;

pub struct Filter {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<std::io::Result<()>>,
}

impl Filter {
    /// Cancels and waits for the drain to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.handle.await;
    }
}

/// Starts postsift with `toml` (the `[server] listen` key is ignored: the listener is bound
/// here on port 0).
pub async fn start_filter(toml: &str) -> Filter {
    start_filter_on("127.0.0.1:0".parse().unwrap(), toml).await
}

/// Like [`start_filter`] on a given address (a Postfix instance already points at it).
pub async fn start_filter_on(addr: SocketAddr, toml: &str) -> Filter {
    let config = Config::parse(toml, std::path::Path::new("test.toml")).expect("test config");
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(postsift::serve(config, vec![listener], shutdown.clone()));
    Filter {
        addr,
        shutdown,
        handle,
    }
}

/// Starts postsift with `toml` on two listeners bound on port 0, configured as
/// `127.0.0.1:10024` (inbound) and `127.0.0.1:10026` (originating: the keys policy banks and
/// DKIM signing match); returns the filter and the second address.
pub async fn start_two(toml: &str) -> (Filter, SocketAddr) {
    let config = TestConfig::parse(toml)
        .set("server.listen", vec!["127.0.0.1:10024", "127.0.0.1:10026"])
        .config();
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, second) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(postsift::serve(config, vec![a, b], shutdown.clone()));
    (
        Filter {
            addr,
            shutdown,
            handle,
        },
        second,
    )
}

/// A config with the given scanners and reinjection target, metrics off; `extra` is appended
/// (sections not written here: `[virus]`, `[spam]`, `[headers]`, `[log]`). Tests change other
/// keys by name with [`test_config`].
pub fn config(
    clamd: Option<&str>,
    spamd: Option<&str>,
    reinject: SocketAddr,
    extra: &str,
) -> String {
    let clamd = clamd.map_or("[]".to_string(), |c| format!("[\"{c}\"]"));
    let spamd = spamd.map_or("[]".to_string(), |s| format!("[\"{s}\"]"));
    format!(
        "[server]\nhostname = \"filter.test.local\"\nshutdown_grace = 30\n\
         [reinject]\nto = \"{reinject}\"\ncommand_timeout = 10\ndata_timeout = 10\nconnect_timeout = 5\n\
         [clamd]\nendpoints = {clamd}\ntimeout = 20\n\
         [spamd]\nendpoints = {spamd}\ntimeout = 20\nio_timeout = 20\n\
         [metrics]\nlisten = \"\"\n{extra}"
    )
}

/// [`config`] as a [`TestConfig`], to set further keys by name.
pub fn test_config(
    clamd: Option<&str>,
    spamd: Option<&str>,
    reinject: SocketAddr,
    extra: &str,
) -> TestConfig {
    TestConfig::parse(&config(clamd, spamd, reinject, extra))
}

/// Timeouts for a message of tens of MB through clamd, spamd and the (debug-built) capture sink:
/// 300 s for the scanners and the reinjection's end of data.
pub fn patient(c: TestConfig) -> TestConfig {
    c.set("reinject.data_timeout", 300)
        .set("clamd.timeout", 300)
        .set("spamd.timeout", 300)
        .set("spamd.io_timeout", 300)
}

/// The clamd shared by all tests (EICAR and clam.exe signatures).
pub fn clamd() -> String {
    static C: OnceLock<peers::Clamd> = OnceLock::new();
    let c = C.get_or_init(peers::Clamd::start);
    c.socket.display().to_string()
}

/// The spamd shared by all tests (network tests off).
pub fn spamd() -> String {
    static S: OnceLock<peers::Spamd> = OnceLock::new();
    let s = S.get_or_init(peers::Spamd::start);
    s.addr.to_string()
}

/// Sends the fixture message `name` from a@example.org to b@example.com in one session; the
/// reply to its end of data.
pub async fn send_fixture(addr: SocketAddr, name: &str) -> crate::client::Reply {
    crate::client::send_one(addr, "a@example.org", &["b@example.com"], &fixture(name)).await
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(peers::fixtures().join("messages").join(name)).unwrap()
}

/// The `postsift` binary under test, as a command to add arguments to.
pub fn postsift_cmd() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_postsift"))
}

/// The ordinary user and group the spawned daemon (`postsift run`) runs as, as scripts/demo.sh
/// runs it and the package's unit runs it as `_postsift`. The CLI an administrator runs
/// (check-config, quarantine, greylist, dkim, reload) runs as the test process (root).
pub const DAEMON_USER: &str = "nobody";
pub const DAEMON_GROUP: &str = "nogroup";

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// (uid, gid) the spawned daemon runs as: [`DAEMON_USER`]'s and [`DAEMON_GROUP`]'s when the
/// tests run as root, the test process's own otherwise (already an ordinary user).
pub fn daemon_ids() -> (u32, u32) {
    if !is_root() {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        return unsafe { (libc::getuid(), libc::getgid()) };
    }
    let user = std::ffi::CString::new(DAEMON_USER).unwrap();
    let group = std::ffi::CString::new(DAEMON_GROUP).unwrap();
    // SAFETY: NUL-terminated names; the returned entries are read at once, before any other
    // getpw*/getgr* call.
    unsafe {
        let pw = libc::getpwnam(user.as_ptr());
        let gr = libc::getgrnam(group.as_ptr());
        assert!(
            !pw.is_null() && !gr.is_null(),
            "no user {DAEMON_USER} or group {DAEMON_GROUP}"
        );
        ((*pw).pw_uid, (*gr).gr_gid)
    }
}

/// The command line of `postsift run --config <config>` as an ordinary user: under root,
/// `setpriv` to [`DAEMON_USER`]:[`DAEMON_GROUP`] with no supplementary groups, no capabilities
/// (inheritable and bounding sets cleared) and no new privileges, which execs postsift (the
/// same pid); otherwise the binary itself. Everything the daemon reads and writes must be
/// reachable by that user: put it in a [`daemon_dir`].
pub fn daemon_argv(config: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if is_root() {
        argv.push("setpriv".into());
        argv.push(format!("--reuid={DAEMON_USER}").into());
        argv.push(format!("--regid={DAEMON_GROUP}").into());
        for a in [
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ] {
            argv.push(a.into());
        }
    }
    argv.push(env!("CARGO_BIN_EXE_postsift").into());
    for a in ["run", "--config"] {
        argv.push(a.into());
    }
    argv.push(config.into());
    argv
}

/// Gives `cmd` the umask 0077 (the unit's `UMask=`), whatever the test process's.
pub fn with_daemon_umask(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: umask(2) is async-signal-safe and only swaps the child's creation mask.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        })
    }
}

/// `postsift run --config <config>` as an ordinary user ([`daemon_argv`]), umask 0077.
pub fn daemon_cmd(config: &std::path::Path) -> std::process::Command {
    let argv = daemon_argv(config);
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    with_daemon_umask(&mut cmd);
    cmd
}

/// A fresh dir for a spawned daemon's configuration and everything it writes (stores,
/// quarantine, sockets, pid file): owned by the daemon's user ([`daemon_ids`]), mode 0700, as
/// the package's `/var/lib/postsift`. The test process, root, still reads and writes in it.
pub fn daemon_dir(prefix: &str) -> tempfile::TempDir {
    let dir = peers::private_dir(prefix);
    let (uid, gid) = daemon_ids();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", dir.path().display()));
    peers::chmod(dir.path(), 0o700);
    dir
}

/// Gives `path` to the daemon's user (a key or file an administrator made as root for it).
pub fn give_to_daemon(path: &std::path::Path) {
    let (uid, gid) = daemon_ids();
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// Runs the binary with `args`: (exit code, -1 if a signal ended it; stdout; stderr).
pub fn postsift_out<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String, String) {
    let out = postsift_cmd().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary with `args`: (exit code, stdout and stderr together).
pub fn postsift<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String) {
    let (code, out, err) = postsift_out(args);
    (code, format!("{out}{err}"))
}

/// Runs a blocking harness start-up off the async runtime.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// GET `path` from an HTTP server; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The endpoint is bound inside serve(), which may not have run yet.
    let mut s = None;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < end {
        if let Ok(c) = tokio::net::TcpStream::connect(addr).await {
            s = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut s = s.expect("metrics endpoint not listening");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The rspamd shared by all tests (filter-only config, DNS-dependent modules off).
pub fn rspamd() -> String {
    static R: OnceLock<crate::peers::rspamd::Rspamd> = OnceLock::new();
    let r = R.get_or_init(crate::peers::rspamd::Rspamd::start);
    r.addr.to_string()
}

/// A config using rspamd as the spam engine.
pub fn rspamd_config(
    clamd: Option<&str>,
    rspamd: &str,
    reinject: SocketAddr,
    extra: &str,
) -> TestConfig {
    test_config(clamd, None, reinject, extra)
        .set("rspamd.endpoints", vec![rspamd])
        .set("rspamd.timeout", 20)
        .set("spam.engine", "rspamd")
}

/// Standard base64 with padding, on one line (tests wrap it as their message needs).
pub fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Incompressible filler, the same bytes every run for a given `seed` (xorshift64).
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
