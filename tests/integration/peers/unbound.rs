//! Starts a private unbound (Debian's /usr/sbin/unbound) on a loopback port as the tests' DNS
//! server: every name it answers is written by the test as `local-data`, every other name is
//! NXDOMAIN (`local-zone: "." static`), so nothing is ever asked of another host. One zone can
//! be forwarded to a UDP socket that never answers (a domain whose lookups time out: the one
//! fault a real server cannot give on demand).

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, localhost, read_lossy, retry_if_port_taken, write_file, Peer, PeerProcess};

pub struct Unbound {
    /// 127.0.0.1:<free port>, UDP and TCP.
    pub addr: SocketAddr,
    /// Stops unbound when dropped.
    peer: PeerProcess,
    /// Held open, never read: the server of `silent_zone`.
    _silent: Option<UdpSocket>,
}

impl Unbound {
    /// Starts unbound answering `records` (zone-file lines: `name. TTL IN TYPE data`), and
    /// forwarding `silent_zone` (if any) to a socket that never answers. Blocks until it
    /// answers a query (30 s, then panics with its log).
    pub fn start(records: &[String], silent_zone: Option<&str>) -> Unbound {
        retry_if_port_taken("unbound", || Unbound::try_start(records, silent_zone, None))
    }

    /// Like [`Unbound::start`] on 127.0.0.1:`port` (where a stand-in listened before: the
    /// resolver "restarted"), nothing forwarded.
    /// The port may be held for a moment by another socket (a test client's ephemeral TCP
    /// port is drawn from the same range): tried again while unbound says it is in use.
    pub fn start_on(records: &[String], port: u16) -> Unbound {
        let mut tries = 0;
        loop {
            match Unbound::try_start(records, None, Some(port)) {
                Ok(u) => return u,
                Err(why) if why.contains("Address already in use") && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(why) => panic!("{why}"),
            }
        }
    }

    fn try_start(
        records: &[String],
        silent_zone: Option<&str>,
        port: Option<u16>,
    ) -> Result<Unbound, String> {
        let peer = PeerProcess::new("unbound-");
        let dir = peer.dir.clone();
        let port = port.unwrap_or_else(free_port);
        let addr = localhost(port);
        let silent = silent_zone.map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind silent"));
        let mut conf = format!(
            "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-daemonize: no\n  \
             username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n  \
             logfile: \"{d}/unbound.log\"\n  use-syslog: no\n  verbosity: 1\n  do-ip6: no\n  \
             access-control: 127.0.0.0/8 allow\n  do-not-query-localhost: no\n  \
             module-config: \"iterator\"\n  qname-minimisation: no\n  \
             local-zone: \".\" static\n  \
             local-data: \". 3600 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60\"\n",
            d = dir.display()
        );
        for r in records {
            let _ = writeln!(conf, "  local-data: '{r}'");
        }
        if let (Some(zone), Some(s)) = (silent_zone, &silent) {
            let _ = writeln!(conf, "  local-zone: \"{zone}.\" transparent");
            let _ = write!(
                conf,
                "forward-zone:\n  name: \"{zone}.\"\n  forward-addr: 127.0.0.1@{}\n",
                s.local_addr().unwrap().port()
            );
        }
        conf.push_str("remote-control:\n  control-enable: no\n");
        let conf_path = dir.join("unbound.conf");
        write_file(&conf_path, &conf);
        let check = Command::new("/usr/sbin/unbound-checkconf")
            .arg(&conf_path)
            .output()
            .expect("unbound-checkconf");
        assert!(
            check.status.success(),
            "unbound-checkconf: {}{}\n{conf}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let mut unbound = Unbound {
            addr,
            peer,
            _silent: silent,
        };
        unbound.launch()?;
        Ok(unbound)
    }

    /// Runs unbound in the foreground on the config in its dir; waits until it answers a query
    /// (30 s; then Err with its logs).
    fn launch(&mut self) -> Result<(), String> {
        let dir = &self.peer.dir;
        let mut cmd = Command::new("/usr/sbin/unbound");
        cmd.arg("-d")
            .arg("-c")
            .arg(dir.join("unbound.conf"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("unbound.err"))
                    .expect("open unbound.err"),
            );
        self.peer.spawn(cmd);
        let addr = self.addr;
        self.peer.wait_ready(
            "unbound (a query)",
            Duration::from_secs(30),
            || answers(addr),
            &["unbound.log", "unbound.err"],
        )
    }

    pub fn log(&self) -> String {
        read_lossy(&self.peer.dir.join("unbound.log"))
    }
}

impl Peer for Unbound {
    const NAME: &'static str = "dns";

    peer_process!();

    fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// It answers a query for `. SOA` over UDP.
    fn ping(&self) -> bool {
        answers(self.addr)
    }

    /// unbound again on the same port with the same zone data (the silent zone's socket is kept).
    fn start_again(&mut self) {
        self.launch().unwrap_or_else(|why| panic!("{why}"));
    }
}

/// Whether the server answers a query for `. SOA` over UDP.
fn answers(addr: SocketAddr) -> bool {
    let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    // id 0x1234, RD, one question: root, SOA (6), IN.
    let q = [
        0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 1,
    ];
    if s.send_to(&q, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(s.recv_from(&mut buf), Ok((n, _)) if n >= 12 && buf[..2] == [0x12, 0x34])
}
