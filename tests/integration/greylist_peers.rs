//! Starts the greylisting tests' real peers: Debian's postgrey and redis-server, each in its own
//! temp dir on a 127.0.0.1 port, stopped by pid when dropped (and by the harness's watchdog if
//! the test process dies first). Plus a tiny blocking policy-protocol client.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{self, Watchdog, Watched};

/// A running daemon started by the tests.
pub struct Daemon {
    pub addr: SocketAddr,
    child: Child,
    _watchdog: Option<Watchdog>,
    tmp: Option<tempfile::TempDir>,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &str, tmp: tempfile::TempDir, port: u16, cmd: &mut Command) -> Daemon {
        let dir = tmp.path().to_path_buf();
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let watchdog = Watchdog::spawn(Watched::Pid(child.id()), &dir);
        let addr = harness::localhost(port);
        let mut d = Daemon {
            addr,
            child,
            _watchdog: watchdog,
            tmp: Some(tmp),
            log,
        };
        let up = harness::wait_until(Duration::from_secs(30), || {
            harness::port_open(addr) || !matches!(d.child.try_wait(), Ok(None))
        });
        assert!(
            up && harness::port_open(addr),
            "{name} did not start\n{}",
            harness::tail(&d.log, 30)
        );
        d
    }

    /// SIGKILL (the "crash" of a peer); the temp dir stays until drop.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        harness::signal(&self.child.id().to_string(), "TERM");
        let exited = harness::wait_until(Duration::from_secs(10), || {
            !matches!(self.child.try_wait(), Ok(None))
        });
        if !exited {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        harness::finish_dir(self.tmp.take());
    }
}

/// Writes the whitelist files both postgrey and postsift read in the differential test.
pub fn write_whitelists(dir: &Path) -> (PathBuf, PathBuf) {
    let clients = dir.join("whitelist_clients");
    let recipients = dir.join("whitelist_recipients");
    harness::write_file(
        &clients,
        "# test whitelist\ntrusted.example\n/^mx[0-9]+\\.regex\\.example$/\n198.51.100\n2001:db8:ffff::/48\n",
    );
    harness::write_file(
        &recipients,
        "postmaster@\nabuse@example.com\nopen.example\n",
    );
    (clients, recipients)
}

/// Debian's postgrey (`/usr/sbin/postgrey`) on 127.0.0.1, foreground, as the `postgrey` user,
/// with its BerkeleyDB in the temp dir and the given options.
pub fn postgrey(delay: u32, whitelists: (&Path, &Path), extra: &[&str]) -> Daemon {
    let tmp = harness::private_dir("postgrey-");
    let dir = tmp.path().to_path_buf();
    let db = dir.join("db");
    fs::create_dir(&db).unwrap();
    let _ = Command::new("chown")
        .args(["postgrey:postgrey"])
        .arg(&db)
        .status();
    let port = harness::free_port();
    let mut cmd = Command::new("/usr/sbin/postgrey");
    cmd.arg(format!("--inet=127.0.0.1:{port}"))
        .arg(format!("--dbdir={}", db.display()))
        .arg(format!("--pidfile={}", dir.join("postgrey.pid").display()))
        .arg(format!("--delay={delay}"))
        .arg("--user=postgrey")
        .arg("--group=postgrey")
        .arg(format!("--whitelist-clients={}", whitelists.0.display()))
        .arg(format!("--whitelist-recipients={}", whitelists.1.display()))
        .args(extra);
    Daemon::spawn("postgrey", tmp, port, &mut cmd)
}

/// Debian's redis-server on 127.0.0.1, no persistence.
pub fn redis() -> Daemon {
    let tmp = harness::private_dir("redis-");
    let port = harness::free_port();
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(tmp.path());
    Daemon::spawn("redis-server", tmp, port, &mut cmd)
}

/// A blocking policy-protocol client: one connection, many requests.
pub struct PolicyClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl PolicyClient {
    pub fn connect(addr: SocketAddr) -> std::io::Result<PolicyClient> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(PolicyClient {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Reads `action=…` and the empty line; the action's value. Err at EOF.
    pub fn read_action(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let mut blank = String::new();
        self.reader.read_line(&mut blank)?;
        assert_eq!(
            blank, "\n",
            "answer not ended by an empty line after {line:?}"
        );
        Ok(line
            .trim_end()
            .strip_prefix("action=")
            .unwrap_or_else(|| panic!("not an action line: {line:?}"))
            .to_owned())
    }

    /// Sends the attributes and the empty line; the action answered.
    pub fn ask(&mut self, attrs: &[(&str, String)]) -> std::io::Result<String> {
        let mut req = String::new();
        for (k, v) in attrs {
            req.push_str(&format!("{k}={v}\n"));
        }
        req.push('\n');
        self.send_raw(req.as_bytes())?;
        self.read_action()
    }
}
