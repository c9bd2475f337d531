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

    /// Installs `ndb` (ClamAV .ndb lines) as the signature database `daily` at `version`, as
    /// freshclam would (clamd's `VERSION` then says `ClamAV x.y.z/<version>/…`), asks clamd to
    /// reload and blocks until `VERSION` names `version` (60 s, then panics). An unsigned CVD
    /// (`daily.cud`: the 512-byte header, then a tar.gz of `daily.info` and the signatures),
    /// which clamd loads without the official signature.
    pub fn install_daily(&self, version: u32, ndb: &str) {
        let stime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = |md5: &str| {
            format!("ClamAV-VDB:04 Dec 2026 00-00 +0000:{version}:1:90:{md5}:X:postsift:{stime}")
        };
        let sha256 = ring::digest::digest(&ring::digest::SHA256, ndb.as_bytes());
        let sha256: String = sha256.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let info = format!("{}\ndaily.ndb:{}:{sha256}\n", header("X"), ndb.len());
        let mut tgz = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (name, data) in [
            ("daily.info", info.as_bytes()),
            ("daily.ndb", ndb.as_bytes()),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            tgz.append_data(&mut h, name, data).expect("tar");
        }
        let body = tgz.into_inner().expect("tar").finish().expect("gzip");
        let tmp = self.dir.join("daily.tgz");
        write_file(&tmp, &body);
        let md5 = Command::new("md5sum").arg(&tmp).output().expect("md5sum");
        let md5 = String::from_utf8_lossy(&md5.stdout);
        let md5 = md5.split_whitespace().next().expect("md5sum output");
        let mut cud = header(md5).into_bytes();
        cud.resize(512, b' ');
        cud.extend_from_slice(&body);
        let db = self.dir.join("db");
        write_file(&db.join("daily.cud.tmp"), &cud);
        fs::rename(db.join("daily.cud.tmp"), db.join("daily.cud")).expect("rename daily.cud");
        assert!(
            clamd_command(&self.socket, b"zRELOAD\0").starts_with("RELOADING"),
            "clamd refused RELOAD"
        );
        let want = format!("/{version}/");
        assert!(
            super::wait_until(Duration::from_secs(60), || {
                clamd_command(&self.socket, b"zVERSION\0").contains(&want)
            }),
            "clamd did not load daily version {version}: {}",
            self.log()
        );
    }

    /// clamd's `VERSION` answer.
    pub fn version(&self) -> String {
        clamd_command(&self.socket, b"zVERSION\0")
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

/// One command to clamd; its answer (empty when it could not be asked).
fn clamd_command(socket: &Path, command: &[u8]) -> String {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    if s.write_all(command).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .trim_end_matches('\0')
        .to_owned()
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
