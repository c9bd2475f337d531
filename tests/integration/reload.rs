//! SIGHUP reloads the configuration of the real `postsift run`: new sessions follow the new file
//! while a message in flight finishes under the old one, a bad file or an address that cannot be
//! bound leaves the old configuration in force, listeners follow `server.listen`, the DKIM
//! signing keys are read again (a bad one keeps the old), and `postsift reload` validates before
//! it signals the pid in `server.pid_file`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::capture::Capture;
use crate::client::Client;
use crate::peers::{self, localhost};
use crate::test_config::TestConfig;
use crate::util::{self, http_get, postsift};

/// Every wait in this file is for an event; this only bounds how long a broken build hangs.
const PATIENCE: Duration = Duration::from_secs(60);

/// A test config: scanners off, listening on `listen`, reinjecting to `reinject`; `server` is
/// added to `[server]`, `extra` at the end.
pub(crate) fn cfg(listen: &[u16], reinject: SocketAddr, server: &str, extra: &str) -> String {
    let listen: Vec<String> = listen.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    util::test_config(None, None, reinject, extra)
        .set("server.listen", listen)
        .set_toml("server", server)
        .toml()
}

/// `postsift run` as a child process, its stderr collected line by line.
pub(crate) struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts on `toml` and waits until `first` (a `server.listen` port) accepts.
    pub(crate) async fn start(toml: &str, first: u16) -> Daemon {
        let dir = util::daemon_dir("reload-");
        let config = dir.path().join("postsift.toml");
        std::fs::write(&config, toml).unwrap();
        let mut child = Command::from(util::daemon_cmd(&config))
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                sink.lock().unwrap().push(l);
            }
        });
        let mut d = Daemon {
            child,
            log,
            config,
            _dir: dir,
        };
        d.wait_accepting(localhost(first)).await;
        d
    }

    pub(crate) fn write_config(&self, toml: &str) {
        std::fs::write(&self.config, toml).unwrap();
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.id().expect("daemon exited") as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    pub(crate) fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Panics if the daemon is gone.
    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("postsift exited ({status}); log:\n{}", self.log_text());
        }
    }

    /// Waits until `n` log lines contain `needle`; returns the n-th.
    pub(crate) async fn wait_log(&mut self, needle: &str, n: usize) -> String {
        let end = Instant::now() + PATIENCE;
        loop {
            let hits: Vec<String> = {
                let log = self.log.lock().unwrap();
                log.iter().filter(|l| l.contains(needle)).cloned().collect()
            };
            if hits.len() >= n {
                return hits[n - 1].clone();
            }
            self.assert_alive();
            assert!(
                Instant::now() < end,
                "no {n}. log line with {needle:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_accepting(&mut self, addr: SocketAddr) {
        let end = Instant::now() + PATIENCE;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            self.assert_alive();
            assert!(Instant::now() < end, "nothing accepts on {addr}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGHUP and waits for the outcome's log line, the `n`-th of its kind.
    pub(crate) async fn reload(&mut self, outcome: &str, n: usize) -> String {
        self.signal(libc::SIGHUP);
        self.wait_log(outcome, n).await
    }

    /// SIGTERM, then waits for a clean exit.
    pub(crate) async fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("postsift did not exit after SIGTERM")
            .unwrap();
        assert!(status.success(), "{status}; log:\n{}", self.log_text());
    }
}

pub(crate) const RELOADED: &str = "configuration reloaded";
const FAILED: &str = "reload failed";

async fn deliver(addr: SocketAddr) {
    let r = util::send_fixture(addr, "clean.eml").await;
    assert_eq!(r.code, 250, "{r:?}");
}

/// The value of one sample line on /metrics, once it equals `want` (bounded wait).
async fn wait_metric(maddr: SocketAddr, series: &str, want: f64) {
    let end = Instant::now() + PATIENCE;
    loop {
        let (_, body) = http_get(maddr, "/metrics").await;
        let value = body
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()));
        if value == Some(want) {
            return;
        }
        assert!(Instant::now() < end, "{series} is {value:?}, not {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The regression itself: SIGHUP used to kill the daemon and every session with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_for_new_sessions_while_a_message_in_data_finishes_under_the_old() {
    let (old_sink, new_sink) = (Capture::start().await, Capture::start().await);
    let port = peers::free_port();
    let addr = localhost(port);
    let mut d = Daemon::start(&cfg(&[port], old_sink.addr, "", ""), port).await;
    deliver(addr).await;
    assert_eq!(old_sink.count(), 1);

    // A session in the middle of DATA when the signal arrives.
    let mut held = Client::greeted(addr).await;
    held.expect("EHLO held.test", 250).await;
    held.expect("MAIL FROM:<held@example.org>", 250).await;
    held.expect("RCPT TO:<b@example.com>", 250).await;
    held.expect("DATA", 354).await;
    held.send(b"Subject: held across a reload\r\n\r\nfirst half\r\n")
        .await;

    d.write_config(&cfg(&[port], new_sink.addr, "", ""));
    d.reload(RELOADED, 1).await;

    held.send(b"second half\r\n.\r\n").await;
    let r = held.reply().await;
    assert_eq!(r.code, 250, "message in flight lost: {r:?}");
    let _ = held.cmd("QUIT").await;
    // New session, new configuration.
    deliver(addr).await;

    let old = old_sink.all();
    assert_eq!(
        old.len(),
        2,
        "the held message goes under the old config, once"
    );
    assert!(
        old[1].text().contains("first half\r\nsecond half\r\n"),
        "{old:?}"
    );
    assert!(old[1].mail.contains("held@example.org"), "{old:?}");
    assert_eq!(
        new_sink.count(),
        1,
        "the next session follows the new config"
    );
    assert!(new_sink.last().mail.contains("a@example.org"));
    d.assert_alive();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_on_sighup_keeps_the_old_one_and_names_the_key() {
    let (old_sink, new_sink) = (Capture::start().await, Capture::start().await);
    let (port, mport) = (peers::free_port(), peers::free_port());
    let maddr = localhost(mport);
    let with_metrics = |toml: String| {
        TestConfig::parse(&toml)
            .set("metrics.listen", format!("127.0.0.1:{mport}"))
            .toml()
    };
    // Three session threads on this 2-CPU machine (the default would be one); a reload to the
    // default leaves them at three, as the setting is read at start only.
    let good = TestConfig::parse(&with_metrics(cfg(&[port], old_sink.addr, "", "")))
        .set("server.worker_threads", 3)
        .toml();
    let mut d = Daemon::start(&good, port).await;
    wait_metric(maddr, "postsift_runtime_worker_threads", 3.0).await;
    wait_metric(
        maddr,
        "postsift_config_reloads_total{result=\"failure\"}",
        0.0,
    )
    .await;
    let (_, body) = http_get(maddr, "/metrics").await;
    assert!(
        !body.contains("postsift_config_last_reload_success_timestamp_seconds 0\n"),
        "timestamp not set at start:\n{body}"
    );

    // An unknown key (a parse error) and a bad value (a validation error).
    let newer = with_metrics(cfg(&[port], new_sink.addr, "", ""));
    d.write_config(&format!("{newer}\n[spam]\nkill_levle = 5\n"));
    let line = d.reload(FAILED, 1).await;
    assert!(line.contains("kill_levle"), "{line}");
    d.write_config(
        &TestConfig::parse(&newer)
            .set("server.max_sessions", 0)
            .toml(),
    );
    let line = d.reload(FAILED, 2).await;
    assert!(line.contains("server.max_sessions"), "{line}");
    wait_metric(
        maddr,
        "postsift_config_reloads_total{result=\"failure\"}",
        2.0,
    )
    .await;
    wait_metric(
        maddr,
        "postsift_config_reloads_total{result=\"success\"}",
        0.0,
    )
    .await;

    deliver(localhost(port)).await;
    assert_eq!(old_sink.count(), 1, "still on the old configuration");
    assert_eq!(new_sink.count(), 0);

    // Fixed: the next SIGHUP takes it.
    d.write_config(&newer);
    d.reload(RELOADED, 1).await;
    wait_metric(
        maddr,
        "postsift_config_reloads_total{result=\"success\"}",
        1.0,
    )
    .await;
    deliver(localhost(port)).await;
    assert_eq!(new_sink.count(), 1);
    wait_metric(maddr, "postsift_runtime_worker_threads", 3.0).await;
    d.assert_alive();
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_binds_added_listen_addresses_and_closes_removed_ones() {
    let (old_sink, new_sink) = (Capture::start().await, Capture::start().await);
    let (p1, p2) = (peers::free_port(), peers::free_port());
    let mut d = Daemon::start(&cfg(&[p1], old_sink.addr, "", ""), p1).await;

    d.write_config(&cfg(&[p1, p2], old_sink.addr, "", ""));
    d.reload(RELOADED, 1).await;
    deliver(localhost(p2)).await;
    deliver(localhost(p1)).await;
    assert_eq!(old_sink.count(), 2);

    // An address taken by someone else: the whole reload fails, nothing changes.
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p3 = blocker.local_addr().unwrap().port();
    d.write_config(&cfg(&[p2, p3], new_sink.addr, "", ""));
    let line = d.reload(FAILED, 1).await;
    assert!(
        line.contains("server.listen") && line.contains(&format!("127.0.0.1:{p3}")),
        "{line}"
    );
    deliver(localhost(p1)).await;
    assert_eq!(old_sink.count(), 3, "old configuration kept entirely");
    assert_eq!(new_sink.count(), 0);
    drop(blocker);

    // Removed from server.listen: no longer accepting there.
    d.write_config(&cfg(&[p2], new_sink.addr, "", ""));
    d.reload(RELOADED, 2).await;
    let end = Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(localhost(p1)).await.is_ok() {
        assert!(
            Instant::now() < end,
            "still accepting on the removed address"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    deliver(localhost(p2)).await;
    assert_eq!(new_sink.count(), 1);
    d.assert_alive();
    d.stop().await;
}

/// A process named `postsift` (so `postsift reload` accepts its pid) that is really `sleep`,
/// with SIGHUP's default action: a SIGHUP sent to it decides at once that it dies of SIGHUP,
/// so killing it afterwards with SIGKILL tells for certain whether it was ever sent one.
fn sentinel(dir: &Path) -> std::process::Child {
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("sleep(1)");
    let name = dir.join("postsift");
    if !name.exists() {
        std::os::unix::fs::symlink(sleep, &name).unwrap();
    }
    let mut cmd = std::process::Command::new(&name);
    cmd.arg("600");
    // SAFETY: only async-signal-safe signal(2) between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// The signal that ended `child` after we send it SIGKILL.
fn killed_by(mut child: std::process::Child) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let _ = child.kill();
    child.wait().unwrap().signal()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_command_checks_the_config_then_signals_the_pid_file() {
    let (old_sink, new_sink) = (Capture::start().await, Capture::start().await);
    let port = peers::free_port();
    let dir = util::daemon_dir("reload-");
    let pid_file = dir.path().join("postsift.pid");
    let server = format!("pid_file = \"{}\"\n", pid_file.display());

    // No pid file configured: nothing to signal; says so, and how else to do it.
    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, cfg(&[port], old_sink.addr, "", "")).unwrap();
    let (code, text) = postsift(&["reload", "--config", plain.to_str().unwrap()]);
    assert_eq!(code, 64, "{text}");
    assert!(
        text.contains("server.pid_file") && text.contains("kill -HUP"),
        "{text}"
    );

    let mut d = Daemon::start(&cfg(&[port], old_sink.addr, &server, ""), port).await;
    let end = Instant::now() + PATIENCE;
    while std::fs::read_to_string(&pid_file)
        .ok()
        .map(|t| t.trim().to_owned())
        != Some(d.pid().to_string())
    {
        assert!(Instant::now() < end, "no pid in {}", pid_file.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let config = d.config.to_str().unwrap().to_owned();

    d.write_config(&cfg(&[port], new_sink.addr, &server, ""));
    let (code, text) = postsift(&["reload", "--config", &config]);
    assert_eq!(code, 0, "{text}");
    d.wait_log(RELOADED, 1).await;
    deliver(localhost(port)).await;
    assert_eq!(new_sink.count(), 1);
    assert_eq!(old_sink.count(), 0);

    // A bad file: exit 64 naming the key, and no signal. The pid file then names a sentinel,
    // which tells whether a SIGHUP reached it; the control shows a good file does signal it.
    let sdir = tempfile::tempdir().unwrap();
    let spid = sdir.path().join("sentinel.pid");
    let sserver = format!("pid_file = \"{}\"\n", spid.display());
    let sconfig = sdir.path().join("sentinel.toml");
    let good = cfg(&[port], new_sink.addr, &sserver, "");
    let sconfig = sconfig.to_str().unwrap();

    let s = sentinel(sdir.path());
    std::fs::write(&spid, format!("{}\n", s.id())).unwrap();
    std::fs::write(sconfig, format!("{good}\n[spam]\nkill_levle = 5\n")).unwrap();
    let (code, text) = postsift(&["reload", "--config", sconfig]);
    assert_eq!(code, 64, "{text}");
    assert!(text.contains("kill_levle"), "{text}");
    assert_eq!(
        killed_by(s),
        Some(libc::SIGKILL),
        "a bad config was signalled"
    );

    let s = sentinel(sdir.path());
    std::fs::write(&spid, format!("{}\n", s.id())).unwrap();
    std::fs::write(sconfig, &good).unwrap();
    let (code, text) = postsift(&["reload", "--config", sconfig]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        killed_by(s),
        Some(libc::SIGHUP),
        "control: a good config signals"
    );

    d.assert_alive();
    d.stop().await;
    assert!(!pid_file.exists(), "pid file left behind at exit");
}

/// The DKIM signing keys are read again on SIGHUP, with the rest of the file; a key file that
/// went bad keeps the running configuration, keys and all, and the log names the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_the_dkim_keys_again_and_a_bad_one_keeps_the_old() {
    let sink = Capture::start().await;
    let port = peers::free_port();
    let keys = util::daemon_dir("keys-");
    let genkey = |selector: &str| {
        let out = keys.path().join(format!("{selector}.pem"));
        let st = util::postsift_cmd()
            .args([
                "dkim",
                "genkey",
                "--domain",
                "sign.test",
                "--selector",
                selector,
            ])
            .args(["--algorithm", "ed25519-sha256", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
        // Made by root (as an administrator would), 0600: readable by the daemon once its own.
        util::give_to_daemon(&out);
        out
    };
    let (a, b) = (genkey("a"), genkey("b"));
    let junk = keys.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    util::give_to_daemon(&junk);
    let toml = |selector: &str, key: &Path| {
        cfg(
            &[port],
            sink.addr,
            "",
            &format!(
                "[auth]\nenabled = false\n[dkim_sign]\nenabled = true\n\
                 networks = [\"192.0.2.0/24\"]\n[[dkim_sign.keys]]\ndomain = \"sign.test\"\n\
                 selector = \"{selector}\"\nkey = \"{}\"\nalgorithm = \"ed25519-sha256\"\n",
                key.display()
            ),
        )
    };
    let selector = |sink: &Capture| {
        let h = sink.last().headers().replace(['\r', '\n', '\t', ' '], "");
        assert!(h.starts_with("DKIM-Signature:"), "{h}");
        h.split(";s=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    };
    let send = || async {
        let mut c = Client::greeted(localhost(port)).await;
        c.expect("EHLO test.local", 250).await;
        c.expect("XFORWARD ADDR=192.0.2.10", 250).await;
        c.expect("MAIL FROM:<ann@sign.test>", 250).await;
        c.expect("RCPT TO:<b@example.net>", 250).await;
        c.expect("DATA", 354).await;
        c.body(b"From: <ann@sign.test>\r\nSubject: reload\r\n\r\nHello.\r\n")
            .await;
        let r = c.reply().await;
        assert_eq!(r.code, 250, "{r:?}");
    };
    let mut d = Daemon::start(&toml("a", &a), port).await;
    send().await;
    assert_eq!(selector(&sink), "a");
    d.write_config(&toml("b", &b));
    d.reload(RELOADED, 1).await;
    send().await;
    assert_eq!(selector(&sink), "b");
    d.write_config(&toml("c", &junk));
    let log = d.reload(FAILED, 1).await;
    assert!(log.contains("dkim_sign.keys[0].key"), "{log}");
    send().await;
    assert_eq!(selector(&sink), "b", "the running keys stay");
    d.stop().await;
}
