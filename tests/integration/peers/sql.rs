//! Starts the SQL tests' real databases from Debian's packages, each in its own temp dir on a
//! 127.0.0.1 port and stopped by pid ([`super::PeerProcess`]): PostgreSQL (`initdb`, then `postgres`
//! as the `postgres` user: it refuses to run as root) and MariaDB (`mariadb-install-db`, then
//! `mariadbd --datadir`, which drops to the `mysql` user itself). Tests get a fresh database
//! each ([`SqlServer::create_db`]) on a server shared by the test binary, or a server of their
//! own when they stop it.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::{self as harness, PeerProcess};

/// The two databases postsift speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    MariaDb,
}

/// A running database server.
pub struct SqlServer {
    pub kind: Kind,
    pub port: u16,
    peer: PeerProcess,
    data: PathBuf,
}

/// Whether the tests run as root (then the servers run as their Debian users; otherwise, as
/// scripts/test.sh runs most tests, as the test's own user).
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// (uid, gid) of a system user, from /etc/passwd; the test's own when it is not root.
fn user_ids(name: &str) -> (u32, u32) {
    if !is_root() {
        // SAFETY: getegid/geteuid have no preconditions.
        return unsafe { (libc::geteuid(), libc::getegid()) };
    }
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == name {
            return (f[2].parse().unwrap(), f[3].parse().unwrap());
        }
    }
    panic!("no user {name}: run scripts/install-deps.sh (postgresql, mariadb-server)");
}

/// The newest installed PostgreSQL's bin dir (/usr/lib/postgresql/<N>/bin).
fn pg_bin(tool: &str) -> PathBuf {
    let mut versions: Vec<u32> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (scripts/install-deps.sh)")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    let v = versions.last().expect("a PostgreSQL version");
    PathBuf::from(format!("/usr/lib/postgresql/{v}/bin/{tool}"))
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl SqlServer {
    /// A new server of `kind` in its own dir, started and ready.
    pub fn start(kind: Kind) -> SqlServer {
        let (prefix, user) = match kind {
            Kind::Postgres => ("postgres-", "postgres"),
            Kind::MariaDb => ("mariadb-", "mysql"),
        };
        let peer = PeerProcess::new(prefix);
        let data = peer.dir.join("data");
        fs::create_dir(&data).unwrap();
        let (uid, gid) = user_ids(user);
        std::os::unix::fs::chown(&data, Some(uid), Some(gid)).unwrap();
        match kind {
            Kind::Postgres => {
                run(
                    Command::new(pg_bin("initdb"))
                        .arg("-D")
                        .arg(&data)
                        .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
                        .args(["--locale=C.UTF-8"])
                        .uid(uid)
                        .gid(gid),
                    "initdb",
                );
            }
            Kind::MariaDb => {
                run(
                    Command::new("mariadb-install-db")
                        .arg("--no-defaults")
                        .arg(format!("--datadir={}", data.display()))
                        .args(is_root().then_some("--user=mysql"))
                        .arg("--auth-root-authentication-method=normal")
                        .arg("--skip-test-db"),
                    "mariadb-install-db",
                );
            }
        }
        let mut s = SqlServer {
            kind,
            port: harness::free_port(),
            peer,
            data,
        };
        for attempt in 1..=3 {
            match s.spawn() {
                Ok(()) => break,
                // a free port taken by someone else between free_port and the bind
                Err(m) if attempt < 3 && m.contains("Address already in use") => {
                    s.peer.stop(Duration::from_secs(10));
                    s.port = harness::free_port();
                }
                Err(m) => panic!("{m}"),
            }
        }
        if kind == Kind::MariaDb {
            s.mariadb_root(
                "CREATE USER 'postsift'@'127.0.0.1' IDENTIFIED BY 'postsift';\
                 GRANT ALL ON *.* TO 'postsift'@'127.0.0.1';",
            );
        }
        s
    }

    fn socket(&self) -> PathBuf {
        self.data.join("mariadb.sock")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.peer.dir.join("server.log");
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd;
        match self.kind {
            Kind::Postgres => {
                let (uid, gid) = user_ids("postgres");
                cmd = Command::new(pg_bin("postgres"));
                cmd.arg("-D")
                    .arg(&self.data)
                    .args(["-h", "127.0.0.1", "-p"])
                    .arg(self.port.to_string())
                    .args(["-c", "unix_socket_directories=", "-c", "fsync=off"])
                    .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
                    .args(["-c", "max_connections=60"])
                    .uid(uid)
                    .gid(gid);
            }
            Kind::MariaDb => {
                cmd = Command::new("/usr/sbin/mariadbd");
                cmd.arg("--no-defaults")
                    .arg(format!("--datadir={}", self.data.display()))
                    .arg(format!("--port={}", self.port))
                    .arg("--bind-address=127.0.0.1")
                    .arg(format!("--socket={}", self.socket().display()))
                    .arg(format!(
                        "--pid-file={}",
                        self.data.join("mariadb.pid").display()
                    ))
                    .args(is_root().then_some("--user=mysql"))
                    .args(["--skip-name-resolve", "--skip-log-bin"])
                    .args([
                        "--innodb-flush-log-at-trx-commit=0",
                        "--innodb-buffer-pool-size=32M",
                    ])
                    .arg("--max-connections=60");
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        self.peer.spawn(cmd);
        let (kind, port, sock) = (self.kind, self.port, self.socket());
        self.peer.wait_ready(
            "database server",
            Duration::from_secs(60),
            || match kind {
                Kind::Postgres => Command::new(pg_bin("pg_isready"))
                    .args(["-q", "-h", "127.0.0.1", "-p"])
                    .arg(port.to_string())
                    .status()
                    .is_ok_and(|s| s.success()),
                Kind::MariaDb => {
                    harness::port_open(harness::localhost(port))
                        && Command::new("mariadb")
                            .arg("--no-defaults")
                            .arg(format!("--socket={}", sock.display()))
                            .args(["-u", "root", "-e", "SELECT 1"])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .is_ok_and(|s| s.success())
                }
            },
            &["server.log"],
        )
    }

    /// Stops the server: PostgreSQL by `pg_ctl stop -m fast` (its SIGTERM, a "smart" shutdown,
    /// would wait for postsift's pooled connections to end), MariaDB by SIGTERM; then the
    /// peer's stop (SIGKILL to what is left after 10 s).
    pub fn stop(&mut self) {
        if self.kind == Kind::Postgres {
            let (uid, gid) = user_ids("postgres");
            let _ = Command::new(pg_bin("pg_ctl"))
                .arg("stop")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "-t", "30"])
                .uid(uid)
                .gid(gid)
                .stdout(Stdio::null())
                .status();
        }
        self.peer.stop(Duration::from_secs(10));
    }

    /// Starts it again on the same port and data.
    pub fn start_again(&mut self) {
        self.spawn().unwrap_or_else(|e| panic!("{e}"));
    }

    fn mariadb_root(&self, sql: &str) -> String {
        run(
            Command::new("mariadb")
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket().display()))
                .args(["-u", "root", "--batch", "--skip-column-names", "-e", sql]),
            "mariadb",
        )
    }

    /// Runs `sql` (any number of statements) in database `db` with the database's own client
    /// (psql, mariadb): how a site would load amavis's schema.
    pub fn client(&self, db: &str, sql: &str) -> String {
        match self.kind {
            Kind::Postgres => run(
                Command::new(pg_bin("psql"))
                    .args(["-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1"])
                    .args(["-h", "127.0.0.1"])
                    .args(["-U", "postgres", "-p"])
                    .arg(self.port.to_string())
                    .args(["-d", db, "-c", sql]),
                "psql",
            ),
            Kind::MariaDb => run(
                Command::new("mariadb")
                    .arg("--no-defaults")
                    .arg(format!("--socket={}", self.socket().display()))
                    .args([
                        "-u",
                        "root",
                        "--batch",
                        "--skip-column-names",
                        "-D",
                        db,
                        "-e",
                        sql,
                    ]),
                "mariadb",
            ),
        }
    }

    /// A new empty database; returns its name.
    pub fn create_db(&self, prefix: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        // One at a time: PostgreSQL refuses a CREATE DATABASE while another copies template1
        // ("source database is being accessed by other users").
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        let name = format!("{prefix}_{}", N.fetch_add(1, Ordering::Relaxed));
        match self.kind {
            Kind::Postgres => {
                // An autovacuum worker in template1 makes it "being accessed by other users"
                // for a moment: try again (the error is PostgreSQL's, not the test's).
                for attempt in 1.. {
                    let out = Command::new(pg_bin("psql"))
                        .args(["-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-p"])
                        .arg(self.port.to_string())
                        .args(["-d", "postgres", "-c"])
                        .arg(format!("CREATE DATABASE {name}"))
                        .stdin(Stdio::null())
                        .output()
                        .expect("psql");
                    let err = String::from_utf8_lossy(&out.stderr);
                    if out.status.success() {
                        break;
                    }
                    assert!(
                        attempt < 20 && err.contains("being accessed by other users"),
                        "CREATE DATABASE {name}: {err}"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Kind::MariaDb => {
                self.mariadb_root(&format!("CREATE DATABASE {name}"));
            }
        }
        name
    }

    /// The URL postsift is given for database `db`.
    pub fn url(&self, db: &str) -> String {
        match self.kind {
            Kind::Postgres => format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port),
            Kind::MariaDb => format!("mysql://postsift:postsift@127.0.0.1:{}/{db}", self.port),
        }
    }
}

/// The server of `kind` the test binary shares (started on first use, stopped at exit).
pub fn shared(kind: Kind) -> &'static SqlServer {
    static PG: OnceLock<SqlServer> = OnceLock::new();
    static MY: OnceLock<SqlServer> = OnceLock::new();
    match kind {
        Kind::Postgres => PG.get_or_init(|| SqlServer::start(Kind::Postgres)),
        Kind::MariaDb => MY.get_or_init(|| SqlServer::start(Kind::MariaDb)),
    }
}
