//! A private spamd (Debian's /usr/sbin/spamd) on 127.0.0.1, with network tests off.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{
    chmod, free_port, localhost, port_open, read_lossy, retry_if_port_taken, wait_until,
    write_file, Peer, PeerProcess,
};

/// A private spamd (Debian's /usr/sbin/spamd) on 127.0.0.1, with network tests off.
pub struct Spamd {
    /// 127.0.0.1:<free port>.
    pub addr: SocketAddr,
    /// The temp dir: site/ (siteconfigpath: *.pre + local.cf), spamd.log, spamd.pid.
    pub dir: PathBuf,
    peer: PeerProcess,
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
        let peer = PeerProcess::new("spamd-");
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
        let _ = fs::File::create(dir.join("spamd.log")).expect("create spamd.log");
        let mut spamd = Spamd { addr, dir, peer };
        spamd.launch()?;
        Ok(spamd)
    }

    /// Runs spamd in its dir on its port (log appended to spamd.log); waits until it answers
    /// PING (120 s; then Err with the log's tail).
    fn launch(&mut self) -> Result<(), String> {
        let logf = fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("spamd.log"))
            .expect("open spamd.log");
        self.peer.spawn(spamd_command(&self.dir, self.addr, logf));
        let addr = self.addr;
        self.peer.wait_ready(
            "spamd (PING)",
            Duration::from_secs(120),
            || spamd_ping(addr),
            &["spamd.log"],
        )
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
    /// The contents of spamd.log.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.join("spamd.log"))
    }
}

impl Peer for Spamd {
    const NAME: &'static str = "spamd";

    peer_process!();

    fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// `PING SPAMC/1.5` → `SPAMD/1.5 0 PONG`.
    fn ping(&self) -> bool {
        spamd_ping(self.addr)
    }

    /// Starts the stopped spamd again on the same port with the same configuration; blocks
    /// until it answers PING (120 s, then panics with the log's tail).
    fn start_again(&mut self) {
        self.launch().unwrap_or_else(|why| panic!("{why}"));
    }

    /// SIGTERM to the parent (it stops its children), SIGKILL to its process group after 15 s.
    fn grace(&self) -> Duration {
        Duration::from_secs(15)
    }

    /// [`PeerProcess::stop`], then waits until the port is closed. Idempotent. The temp dir
    /// stays until Drop.
    fn stop(&mut self) {
        self.peer.stop(self.grace());
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
