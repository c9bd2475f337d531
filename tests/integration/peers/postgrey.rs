//! Debian's postgrey (`/usr/sbin/postgrey`) on 127.0.0.1, the reference the greylisting tests
//! compare postsift's policy service with; the whitelist files both read; and a tiny blocking
//! policy-protocol client (for postgrey and for postsift alike).

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{free_port, localhost, write_file, Peer, PeerProcess};

/// A running postgrey, foreground, as the `postgrey` user, with its BerkeleyDB in its temp dir.
pub struct Postgrey {
    /// 127.0.0.1:<free port>.
    pub addr: SocketAddr,
    args: Vec<OsString>,
    peer: PeerProcess,
}

impl Postgrey {
    /// Starts postgrey with greylisting `delay` (seconds), the two whitelist files (see
    /// [`write_whitelists`]) and `extra` options; blocks until its port accepts connections.
    pub fn start(delay: u32, whitelists: (&Path, &Path), extra: &[&str]) -> Postgrey {
        let peer = PeerProcess::new("postgrey-");
        let dir = peer.dir.clone();
        let db = dir.join("db");
        fs::create_dir(&db).unwrap();
        let _ = Command::new("chown")
            .args(["postgrey:postgrey"])
            .arg(&db)
            .status();
        let port = free_port();
        let mut args: Vec<OsString> = vec![
            format!("--inet=127.0.0.1:{port}").into(),
            format!("--dbdir={}", db.display()).into(),
            format!("--pidfile={}", dir.join("postgrey.pid").display()).into(),
            format!("--delay={delay}").into(),
            "--user=postgrey".into(),
            "--group=postgrey".into(),
            format!("--whitelist-clients={}", whitelists.0.display()).into(),
            format!("--whitelist-recipients={}", whitelists.1.display()).into(),
        ];
        args.extend(extra.iter().map(OsString::from));
        let mut pg = Postgrey {
            addr: localhost(port),
            args,
            peer,
        };
        pg.start_again();
        pg
    }
}

port_peer!(Postgrey, "postgrey", "/usr/sbin/postgrey");

/// Writes the whitelist files both postgrey and postsift read in the differential test.
pub fn write_whitelists(dir: &Path) -> (PathBuf, PathBuf) {
    let clients = dir.join("whitelist_clients");
    let recipients = dir.join("whitelist_recipients");
    write_file(
        &clients,
        "# test whitelist\ntrusted.example\n/^mx[0-9]+\\.regex\\.example$/\n198.51.100\n2001:db8:ffff::/48\n",
    );
    write_file(
        &recipients,
        "postmaster@\nabuse@example.com\nopen.example\n",
    );
    (clients, recipients)
}

/// A blocking policy-protocol client: one connection, many requests.
pub struct PolicyClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl PolicyClient {
    pub fn connect(addr: SocketAddr) -> io::Result<PolicyClient> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(PolicyClient {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Reads `action=…` and the empty line; the action's value. Err at EOF.
    pub fn read_action(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
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
    pub fn ask(&mut self, attrs: &[(&str, String)]) -> io::Result<String> {
        let mut req = String::new();
        for (k, v) in attrs {
            req.push_str(&format!("{k}={v}\n"));
        }
        req.push('\n');
        self.send_raw(req.as_bytes())?;
        self.read_action()
    }
}
