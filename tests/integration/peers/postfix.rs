//! A private Postfix instance (Debian's binaries, `postfix -c <dir>/etc start`): the front smtpd
//! with `content_filter` pointing at the filter under test, and the reinjection smtpd.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{
    base_dir, chmod, fixtures, free_port, localhost, pid_alive, port_open, processes, read_lossy,
    read_pid, retry_if_port_taken, tail, wait_until, write_file, Peer, PeerProcess,
};

/// The hostname of every test Postfix instance. A server that greets with this name makes Postfix
/// report "mail loops back to myself", so fake peers must greet with another name.
pub const POSTFIX_HOSTNAME: &str = "postfix-test.localdomain";

/// Where a test Postfix instance sends mail (see [`Postfix::start`]).
#[derive(Clone, Copy, Debug)]
pub struct PostfixOpts {
    /// content_filter target (the filter under test). IPv4 only.
    pub filter: SocketAddr,
    /// true: `content_filter = postsift-lmtp:[ip]:port` (an lmtp transport); false:
    /// `postsift-smtp:[ip]:port` (an smtp transport). Both send XFORWARD.
    pub filter_lmtp: bool,
    /// Every message after filtering is relayed here (catch-all transport map). IPv4 only.
    pub final_dest: SocketAddr,
}

/// A private Postfix instance (Debian's binaries, `postfix -c <dir>/etc start`), configured from
/// the templates tests/fixtures/postfix/{main,master}.cf.
///
/// Layout of `dir`: `etc/` (main.cf, master.cf = config_directory), `queue/` (queue_directory),
/// `data/` (data_directory), `maillog` (maillog_file, written by postlogd; there is no syslog).
pub struct Postfix {
    /// The front smtpd (127.0.0.1), with content_filter.
    pub smtp_port: u16,
    /// The reinjection smtpd (127.0.0.1), content_filter empty, XFORWARD allowed from 127.0.0.0/8.
    pub reinject_port: u16,
    /// The instance's root dir.
    pub dir: PathBuf,
    peer: PeerProcess,
}

fn nexthop(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("[{}]:{}", a.ip(), a.port()),
        SocketAddr::V6(_) => panic!("test Postfix is IPv4-only (inet_protocols = ipv4): {addr}"),
    }
}

/// A template from tests/fixtures/postfix with every `{{NAME}}` replaced; panics if one is left.
fn render(template: &str, vars: &[(&str, String)]) -> String {
    let path = fixtures().join("postfix").join(template);
    let mut text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for (name, value) in vars {
        text = text.replace(&format!("{{{{{name}}}}}"), value);
    }
    if let Some(at) = text.find("{{") {
        let rest = &text[at..];
        let name = &rest[..rest.find("}}").map_or(rest.len(), |e| e + 2)];
        panic!("{}: no value for {name}", path.display());
    }
    text
}

impl Postfix {
    /// Renders main.cf/master.cf, runs `postfix -c <etc> start` (which creates the queue and data
    /// dirs with the owners Postfix wants, then returns once master has bound its listeners) and
    /// checks both smtpd ports accept connections. Panics with `postfix`'s output and the maillog
    /// tail on failure; retries with other ports if a port was taken meanwhile.
    ///
    /// master detaches itself (its own session and process group, pgid = its pid) and switches
    /// user ids, so no parent-death signal can reach it: its [`PeerProcess`] adopts that process group.
    pub fn start(opts: PostfixOpts) -> Postfix {
        // SAFETY: geteuid cannot fail and touches no memory.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the Postfix peer needs root (`postfix -c DIR start`): add this test to ROOT_TESTS \
             in scripts/test.sh, which runs the others as an ordinary user"
        );
        retry_if_port_taken("Postfix", || Postfix::try_start(&opts))
    }

    fn try_start(opts: &PostfixOpts) -> Result<Postfix, String> {
        let peer = PeerProcess::new("postfix-");
        let dir = peer.dir.clone();
        let etc = dir.join("etc");
        fs::create_dir(&etc).expect("mkdir etc");
        chmod(&etc, 0o755);
        // `postfix` chdirs into queue_directory before anything else, so that must exist; its
        // subdirs and data_directory are made by `postfix start` (`post-install create-missing`)
        // with the owners and modes of Postfix's postfix-files list.
        let queue = dir.join("queue");
        fs::create_dir(&queue).expect("mkdir queue");
        chmod(&queue, 0o755);
        let avoid = [opts.filter.port(), opts.final_dest.port()];
        let smtp_port = loop {
            let p = free_port();
            if !avoid.contains(&p) {
                break p;
            }
        };
        let reinject_port = loop {
            let p = free_port();
            if !avoid.contains(&p) && p != smtp_port {
                break p;
            }
        };
        let transport = if opts.filter_lmtp {
            "postsift-lmtp"
        } else {
            "postsift-smtp"
        };
        let main_cf = render(
            "main.cf",
            &[
                ("DIR", dir.display().to_string()),
                ("BASE", base_dir().display().to_string()),
                ("HOSTNAME", POSTFIX_HOSTNAME.to_string()),
                ("FILTER", format!("{transport}:{}", nexthop(opts.filter))),
                ("FINAL_DEST", nexthop(opts.final_dest)),
            ],
        );
        let master_cf = render(
            "master.cf",
            &[
                ("SMTP_PORT", smtp_port.to_string()),
                ("REINJECT_PORT", reinject_port.to_string()),
            ],
        );
        write_file(&etc.join("main.cf"), main_cf);
        write_file(&etc.join("master.cf"), master_cf);
        backdate_config(&etc);
        let mut pf = Postfix {
            smtp_port,
            reinject_port,
            dir,
            peer,
        };

        pf.launch()?;
        Ok(pf)
    }

    /// `postfix start` on the instance's config, adopts master's process group and waits until
    /// both smtpd ports accept connections; Err with `postfix`'s output and the maillog tail.
    fn launch(&mut self) -> Result<(), String> {
        let (smtp_port, reinject_port) = (self.smtp_port, self.reinject_port);
        let out = self.postfix_cmd(&["start"]);
        let started = out.as_ref().is_ok_and(|o| o.status.success());
        if let Some(master) = read_pid(&self.dir.join("queue/pid/master.pid")) {
            self.peer.adopt_group(master);
        }
        if started && self.peer.pid().is_some() {
            let (a, b) = (localhost(smtp_port), localhost(reinject_port));
            if wait_until(Duration::from_secs(30), || port_open(a) && port_open(b)) {
                return Ok(());
            }
        }
        let output = match &out {
            Ok(o) => format!(
                "exit {}\n{}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("cannot run postfix: {e}"),
        };
        // On Err the caller drops the instance: that stops whatever did start.
        Err(format!(
            "Postfix instance {} did not start (ports {smtp_port}, {reinject_port}): {output}\n{}",
            self.dir.display(),
            tail(&self.dir.join("maillog"), 40)
        ))
    }

    /// The config_directory (`<dir>/etc`).
    pub fn etc(&self) -> PathBuf {
        self.dir.join("etc")
    }

    /// The front smtpd's address.
    pub fn smtp_addr(&self) -> SocketAddr {
        localhost(self.smtp_port)
    }

    /// The reinjection smtpd's address.
    pub fn reinject_addr(&self) -> SocketAddr {
        localhost(self.reinject_port)
    }

    /// The master daemon's pid (None once stopped).
    pub fn master_pid(&self) -> Option<u32> {
        self.peer.pid()
    }

    fn postfix_cmd(&self, args: &[&str]) -> io::Result<std::process::Output> {
        Command::new("postfix")
            .arg("-c")
            .arg(self.etc())
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// Runs a Postfix admin command (postqueue, postconf, postsuper …) with `-c <etc>` and the
    /// given arguments; returns its stdout, panics with its output unless it succeeds.
    pub fn admin(&self, cmd: &str, args: &[&str]) -> String {
        let out = Command::new(cmd)
            .arg("-c")
            .arg(self.etc())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
        if !out.status.success() {
            panic!(
                "{cmd} -c {} {args:?}: {}\n{}{}",
                self.etc().display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `postqueue -c <etc> -f`: attempt to deliver all queued mail now.
    pub fn flush(&self) {
        self.admin("postqueue", &["-f"]);
    }

    /// Messages in this instance's queue (maildrop, incoming, active, deferred, hold), by
    /// `postqueue -j`; counts queue files directly if that fails (e.g. after stop()).
    pub fn queue_count(&self) -> usize {
        let out = Command::new("postqueue")
            .arg("-c")
            .arg(self.etc())
            .arg("-j")
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.trim_start().starts_with('{'))
                .count(),
            _ => ["maildrop", "incoming", "active", "deferred", "hold"]
                .iter()
                .map(|q| count_files(&self.dir.join("queue").join(q)))
                .sum(),
        }
    }

    /// `postconf -c <etc> -e <settings…>` (e.g. `"content_filter ="`), then `postfix reload`, and
    /// waits until master has reloaded and every process started under the old configuration has
    /// exited (≤ 10 s). Without that wait, a message sent right after could still be taken by an
    /// old smtpd/cleanup and queued under the old settings (content_filter is stored in the queue
    /// file).
    pub fn postconf(&self, settings: &[&str]) {
        let mut args = vec!["-e"];
        args.extend_from_slice(settings);
        self.admin("postconf", &args);
        backdate_config(&self.etc());
        let master = self.peer.pid().expect("Postfix instance not running");
        let old = processes(|pid, _, pgrp| pgrp == master && pid != master);
        let reloads_before = self.log().matches(" reload -- version").count();
        let out = self.postfix_cmd(&["reload"]).expect("run postfix reload");
        assert!(
            out.status.success(),
            "postfix reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let done = wait_until(Duration::from_secs(10), || {
            self.log().matches(" reload -- version").count() > reloads_before
                && old.iter().all(|&p| !pid_alive(p))
        });
        if !done {
            eprintln!("harness: Postfix reload not complete after 10 s; going on");
        }
    }

    /// Contents of its maillog_file.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.join("maillog"))
    }

    /// Waits until the maillog contains `needle` (true) or `timeout` passes (false).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(needle))
    }
}

impl Peer for Postfix {
    const NAME: &'static str = "postfix";

    peer_process!();

    /// The front smtpd.
    fn endpoint(&self) -> String {
        self.smtp_addr().to_string()
    }

    /// Both smtpd ports accept connections.
    fn ping(&self) -> bool {
        port_open(self.smtp_addr()) && port_open(self.reinject_addr())
    }

    /// `postfix start` again on the same configuration and ports (the queue is kept).
    fn start_again(&mut self) {
        self.launch().unwrap_or_else(|why| panic!("{why}"));
    }

    // Stops the instance the way `postfix stop` does — SIGTERM to master, which passes it on to
    // its children — without `postfix stop`'s polling in whole seconds; SIGKILL to the process
    // group after 10 s (the default grace).
}

/// Postfix refuses to read a main.cf/master.cf modified within the last second or two (it rereads
/// it every 300 ms until the file is older, assuming it is still being written): that costs ~2 s
/// per `postfix` command on a freshly written config, so date the files 10 s back.
fn backdate_config(etc: &Path) {
    let past = std::time::SystemTime::now() - Duration::from_secs(10);
    for f in ["main.cf", "master.cf"] {
        let path = etc.join(f);
        if let Ok(file) = fs::File::options().write(true).open(&path) {
            let _ = file.set_modified(past);
        }
    }
}

fn count_files(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}
