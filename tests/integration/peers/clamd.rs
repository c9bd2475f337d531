//! A private clamd (Debian's /usr/sbin/clamd) on a unix socket in its own temp dir, with the
//! tests' signatures (EICAR, clamav-testfiles' `clam.exe`).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{chmod, fixtures, read_lossy, write_file, Peer, PeerProcess};

/// The name under which the tests' clamd reports EICAR (`stream: <name> FOUND`).
pub const CLAMD_EICAR: &str = "Postsift.Test.EICAR.UNOFFICIAL";
/// The name under which the tests' clamd reports clamav-testfiles' `clam.exe` (also inside archives).
pub const CLAMD_CLAMEXE: &str = "Postsift.Test.ClamExe.UNOFFICIAL";
/// Directory of Debian's clamav-testfiles package.
pub const CLAMAV_TESTFILES: &str = "/usr/share/clamav-testfiles";

/// A private clamd (Debian's /usr/sbin/clamd) on a unix socket in its own temp dir.
pub struct Clamd {
    /// The clamd socket (`LocalSocket`).
    pub socket: PathBuf,
    /// The temp dir: clamd.conf, db/, clamd.log, clamd.out (stdout/stderr), clamd.pid.
    pub dir: PathBuf,
    peer: PeerProcess,
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
        let peer = PeerProcess::new("clamd-");
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
        let _ = fs::File::create(dir.join("clamd.out")).expect("create clamd.out");
        let mut clamd = Clamd { socket, dir, peer };
        clamd.launch();
        clamd
    }

    /// The contents of clamd.log.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.join("clamd.log"))
    }

    /// Runs clamd with the config in its dir (output appended to clamd.out); blocks until it
    /// answers `zPING` (60 s, then panics with the log's tail).
    fn launch(&mut self) {
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

impl Peer for Clamd {
    const NAME: &'static str = "clamd";

    peer_process!();

    fn endpoint(&self) -> String {
        self.socket.display().to_string()
    }

    /// `zPING\0` → `PONG`.
    fn ping(&self) -> bool {
        clamd_ping(&self.socket)
    }

    /// Starts the stopped clamd again with the same configuration and socket.
    fn start_again(&mut self) {
        let _ = fs::remove_file(&self.socket);
        self.launch();
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
