//! The fault soak behind `scripts/soak.sh`: N messages (default 10,000) through a real Postfix
//! (front smtpd, content_filter by LMTP) → the release `postsift run` → a second Postfix instance
//! on the reinjection port → an LMTP sink that records every Message-ID, while clamd and spamd
//! are SIGKILLed and restarted, spamd and the resolver (a private unbound) hang (SIGSTOP, then
//! SIGCONT), the reinjection Postfix is stopped and started, and postsift gets
//! SIGHUP, SIGTERM (restarted after its drain) and SIGKILL (restarted) at random. It then checks
//! that every message was delivered exactly once (EICAR ones discarded), that both Postfix queues
//! drained, and how much memory postsift used, within a time limit.
//!
//! Exit 0 only if no message was lost, both queues drained in time, no EICAR and no unscanned
//! message was delivered, every body arrived unchanged, every peer came back after its fault and
//! postsift's memory stayed under the limit. Duplicates are printed apart, each with its cause
//! read from the logs: a SIGKILL of postsift between 10025's 250 and its reply to Postfix, or a
//! stop of the 10025 instance at the same instant, is the at-least-once window every after-queue
//! filter has (amavisd-new too) and does not fail the run (`SOAK_STRICT_DUPLICATES=1` makes it);
//! a duplicate with no such cause does.
//!
//! postsift runs as an ordinary user, as the package's unit runs it: under root (scripts/soak.sh)
//! `setpriv` makes it `nobody`:`nogroup` with no supplementary groups, no capabilities and no new
//! privileges, umask 0077 (the unit's `UMask=`); its configuration, pid file and spool are in a
//! dir of its own, owned by that user, mode 0700. clamd's socket is mode 0666 in a 0755 dir (the
//! harness's), spamd and the Postfix ports are TCP on loopback: all reachable by that user.
//!
//! `soak [N] [SECONDS_MAX]`; environment: `SOAK_SEED`, `SOAK_SESSIONS` (8), `SOAK_BACKLOG` (200
//! messages accepted by Postfix but not yet delivered or discarded, before the senders wait),
//! `SOAK_FAULT_INTERVAL` (mean seconds between two faults of one injector, 15),
//! `SOAK_MAX_RSS_MIB` (256), `SOAK_STRICT_DUPLICATES=1` (fail on any duplicate),
//! `POSTSIFT_BIN` (default: `postsift` next to the examples directory).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, sleep};
use std::time::{Duration, Instant, SystemTime};

// The tests' peers (peers/mod.rs allows dead code itself); their private unbound is postsift's
// resolver here, SIGSTOPped for the hung-resolver fault.
#[path = "../tests/integration/peers/mod.rs"]
mod harness;

use harness::unbound as dns_peer;
use harness::{localhost, port_open, Peer as _, SmtpClient};

const SENDER: &str = "soak@postsift.test";
/// Each message's From is `soak@m<i>.<this>`: a domain never seen before, so its DMARC lookup
/// goes to the resolver (and waits on it while it hangs) instead of postsift's cache.
const SENDER_DOMAIN: &str = "postsift.test";
const RCPT_DOMAIN: &str = "soak.test";
const SINK_NAME: &str = "sink.soak.local";
const FILTER_NAME: &str = "filter.soak.local";
/// postsift's `server.shutdown_grace` here; a SIGTERM'd postsift must be gone well within it.
const GRACE_SECS: u64 = 30;
/// Faults stop when every message was submitted and at most this many are still on their way.
const FAULT_FREE_TAIL: usize = 20;
/// spamd gets at most this much of each message (`spamd.max_size`, cut at a line end as amavis
/// does): SpamAssassin's time grows with the size (measured here: 0.8 s under 3 KiB, 2.9 s at
/// 8–16 KiB on a busy 2-core box) and would make the soak a SpamAssassin benchmark. GTUBE and
/// EICAR sit in the first lines; clamd and the reinjection still get the whole message.
const SPAMD_MAX_SIZE: usize = 4 * 1024;
/// The user and group postsift runs as when the soak runs as root (tests/integration/util.rs's
/// `daemon_cmd` uses the same).
const DAEMON_USER: &str = "nobody";
const DAEMON_GROUP: &str = "nogroup";

// ---------------------------------------------------------------------------------------------
// parameters

struct Params {
    n: usize,
    max: Duration,
    seed: u64,
    sessions: usize,
    backlog: usize,
    fault_interval: f64,
    max_rss_kib: u64,
    strict_duplicates: bool,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        Err(_) => default,
    }
}

impl Params {
    fn from_env() -> Params {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let n: usize = args
            .first()
            .map(|a| a.parse().expect("N: a number of messages"))
            .unwrap_or(10_000);
        // Measured: about 1 message/s on a busy 2-core box, real SpamAssassin being the
        // bottleneck; 1.2 s a message plus 2 minutes (3.4 h for 10,000).
        let max = args
            .get(1)
            .map(|a| a.parse().expect("SECONDS_MAX: a number of seconds"))
            .unwrap_or_else(|| 120 + n as u64 * 6 / 5);
        let seed = env_or(
            "SOAK_SEED",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(1),
        );
        Params {
            n,
            max: Duration::from_secs(max),
            seed,
            sessions: env_or("SOAK_SESSIONS", 8usize).max(1),
            backlog: env_or("SOAK_BACKLOG", 200usize).max(1),
            fault_interval: env_or("SOAK_FAULT_INTERVAL", 15.0f64).max(0.5),
            max_rss_kib: env_or("SOAK_MAX_RSS_MIB", 256u64) * 1024,
            strict_duplicates: std::env::var_os("SOAK_STRICT_DUPLICATES").is_some_and(|v| v == "1"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// messages

/// splitmix64: small, seedable, good enough to pick sizes and fault timings.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn secs(&mut self, lo: f64, hi: f64) -> Duration {
        Duration::from_secs_f64(lo + (hi - lo) * self.unit())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Clean,
    /// Carries GTUBE: delivered, flagged.
    Gtube,
    /// Carries EICAR: discarded by postsift, never delivered.
    Eicar,
}

#[derive(Clone, Copy)]
struct Spec {
    kind: Kind,
    rcpts: u8,
    size: usize,
}

/// One message in 20 carries EICAR, one GTUBE; one in 5 has 2–4 recipients; sizes spread
/// evenly on a log scale from 1 to 64 KiB.
fn specs(n: usize, seed: u64) -> Vec<Spec> {
    (0..n)
        .map(|i| {
            let mut r = Rng::new(seed.wrapping_add((i as u64).wrapping_mul(0x1000_0000_01B3)));
            let kind = match i % 20 {
                3 => Kind::Eicar,
                11 => Kind::Gtube,
                _ => Kind::Clean,
            };
            let rcpts = if i % 5 == 1 { 2 + r.below(3) as u8 } else { 1 };
            let size = (1024.0 * 64f64.powf(r.unit())) as usize;
            Spec { kind, rcpts, size }
        })
        .collect()
}

const WORDS: &[&str] = &[
    "the", "meeting", "report", "is", "attached", "please", "review", "before", "friday", "and",
    "send", "your", "comments", "to", "the", "team", "we", "will", "discuss", "budget", "for",
    "next", "quarter", "project", "status", "update", "thanks", "regards", "schedule", "room",
    "agenda", "notes", "from", "last", "week", "customer", "feedback", "release", "plan", "draft",
    "version", "minutes", "office", "travel", "invoice", "order", "delivery", "date", "question",
    "answer", "about", "with", "this", "that", "have", "been", "also", "could",
];

fn fnv64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn rcpt(j: u8) -> String {
    format!("r{j}@{RCPT_DOMAIN}")
}

/// Message `i`: unique Message-ID `<soak-{i}@postsift.test>`, the body's FNV-1a hash in
/// `X-Soak-Body` so the sink can tell that the body arrived unchanged.
fn message(i: usize, spec: &Spec, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut body = String::with_capacity(spec.size + 80);
    match spec.kind {
        Kind::Eicar => body.push_str(&format!("{}\r\n", harness::EICAR)),
        Kind::Gtube => body.push_str(&format!("{}\r\n", harness::GTUBE)),
        Kind::Clean => {}
    }
    while body.len() < spec.size {
        let mut line = String::new();
        while line.len() < 64 {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(WORDS[r.below(WORDS.len() as u64) as usize]);
        }
        body.push_str(&line);
        body.push_str("\r\n");
    }
    let to: Vec<String> = (0..spec.rcpts).map(rcpt).collect();
    format!(
        "From: Soak Sender <soak@m{i}.{SENDER_DOMAIN}>\r\nTo: {to}\r\nSubject: soak message {i} ({kind:?})\r\n\
         Date: {date}\r\nMessage-ID: <soak-{i}@postsift.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\nX-Soak-Body: {hash:016x}\r\n\r\n{body}",
        to = to.join(", "),
        kind = spec.kind,
        date = chrono::Utc::now().to_rfc2822(),
        hash = fnv64(body.as_bytes()),
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// the ledger: what was sent, what arrived, what was discarded

/// One copy of a message that reached the sink.
#[derive(Clone)]
struct Copy {
    at: SystemTime,
    /// From postsift's Received line.
    postsift_id: String,
    /// The reinjection instance's queue id, from its Received line.
    reinject_qid: String,
}

struct Ledger {
    specs: Vec<Spec>,
    sent: Vec<bool>,
    sent_count: usize,
    /// Messages whose end of DATA got no reply (connection lost): Postfix may or may not have them.
    uncertain: Vec<usize>,
    /// Messages the front Postfix never accepted after every retry.
    unsent: Vec<usize>,
    /// Per message, a bit per recipient that was delivered or discarded.
    done: Vec<u8>,
    resolved: usize,
    copies: HashMap<(usize, u8), Vec<Copy>>,
    discarded: HashSet<(usize, u8)>,
    /// Deliveries at the sink that are not soak messages (a bounce would be one).
    strangers: usize,
    problems: Vec<String>,
    problem_count: usize,
    gtube_flagged: usize,
    clean_unflagged: usize,
    /// Front Postfix's deferrals of the feed to postsift, by reason.
    deferrals: BTreeMap<&'static str, u64>,
    /// "message may be sent more than once" in the front Postfix's log.
    maybe_twice: u64,
    last_status: HashMap<usize, String>,
}

impl Ledger {
    fn new(specs: Vec<Spec>) -> Ledger {
        let n = specs.len();
        Ledger {
            specs,
            sent: vec![false; n],
            sent_count: 0,
            uncertain: Vec::new(),
            unsent: Vec::new(),
            done: vec![0; n],
            resolved: 0,
            copies: HashMap::new(),
            discarded: HashSet::new(),
            strangers: 0,
            problems: Vec::new(),
            problem_count: 0,
            gtube_flagged: 0,
            clean_unflagged: 0,
            deferrals: BTreeMap::new(),
            maybe_twice: 0,
            last_status: HashMap::new(),
        }
    }

    fn problem(&mut self, p: String) {
        self.problem_count += 1;
        if self.problems.len() < 30 {
            self.problems.push(p);
        }
    }

    fn resolve(&mut self, i: usize, j: u8) {
        let full = (1u16 << self.specs[i].rcpts) - 1;
        let mask = &mut self.done[i];
        if *mask & (1 << j) == 0 {
            *mask |= 1 << j;
            if *mask as u16 == full {
                self.resolved += 1;
            }
        }
    }

    /// Accepted by Postfix, not yet delivered or discarded everywhere.
    fn backlog(&self) -> usize {
        self.sent_count.saturating_sub(self.resolved)
    }

    fn rcpt_index(&self, i: usize, addr: &str) -> Option<u8> {
        let j: u8 = addr
            .trim_matches(|c| c == '<' || c == '>')
            .strip_prefix('r')?
            .strip_suffix(&format!("@{RCPT_DOMAIN}"))?
            .parse()
            .ok()?;
        (j < self.specs[i].rcpts).then_some(j)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// the LMTP sink (the "inside mailbox server")

/// Binds 127.0.0.1:0 and serves LMTP forever on a thread per connection, recording every
/// delivery in the ledger before it answers 250 for it.
fn start_sink(ledger: Arc<Mutex<Ledger>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("sink: bind");
    let addr = listener.local_addr().expect("sink: address");
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let ledger = ledger.clone();
            thread::spawn(move || {
                let _ = sink_session(conn, &ledger);
            });
        }
    });
    addr
}

fn sink_session(conn: TcpStream, ledger: &Mutex<Ledger>) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(600)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    w.write_all(format!("220 {SINK_NAME} LMTP soak sink\r\n").as_bytes())?;
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let cmd = String::from_utf8_lossy(&line).trim_end().to_owned();
        let verb = cmd
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "LHLO" => format!("250-{SINK_NAME}\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"),
            "MAIL" => {
                rcpts.clear();
                "250 2.1.0 Ok\r\n".into()
            }
            "RCPT" => {
                let addr = cmd
                    .split_once(':')
                    .map(|(_, a)| a.split_whitespace().next().unwrap_or(""))
                    .unwrap_or("");
                rcpts.push(addr.trim_matches(|c| c == '<' || c == '>').to_owned());
                "250 2.1.5 Ok\r\n".into()
            }
            "DATA" if rcpts.is_empty() => "503 5.5.1 No valid recipients\r\n".into(),
            "DATA" => {
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                let mut data = Vec::new();
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line)? == 0 {
                        return Ok(()); // no end of data: nothing was delivered
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    let l = line.strip_prefix(b".").unwrap_or(&line);
                    data.extend_from_slice(l);
                }
                record_delivery(ledger, &data, &rcpts);
                let n = rcpts.len();
                rcpts.clear();
                "250 2.0.0 Ok delivered\r\n".repeat(n)
            }
            "RSET" => {
                rcpts.clear();
                "250 2.0.0 Ok\r\n".into()
            }
            "NOOP" => "250 2.0.0 Ok\r\n".into(),
            "QUIT" => {
                w.write_all(b"221 2.0.0 Bye\r\n")?;
                return Ok(());
            }
            _ => "502 5.5.2 Command not recognized\r\n".into(),
        };
        w.write_all(reply.as_bytes())?;
    }
}

/// The header section, unfolded, as (lower-case name, value).
fn headers(data: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let split = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4))
        .unwrap_or((data.len(), data.len()));
    let head = String::from_utf8_lossy(&data[..split.0]);
    let mut out: Vec<(String, String)> = Vec::new();
    for l in head.split("\r\n") {
        if l.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(l.trim());
            }
        } else if let Some((name, value)) = l.split_once(':') {
            out.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    (out, &data[split.1..])
}

/// The word after " id " in a Received value.
fn received_id(value: &str) -> String {
    value
        .split_once(" id ")
        .map(|(_, rest)| {
            rest.split(|c: char| c.is_whitespace() || c == ';')
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}

fn record_delivery(ledger: &Mutex<Ledger>, data: &[u8], rcpts: &[String]) {
    let (hs, body) = headers(data);
    let get = |name: &str| hs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let index = get("message-id").and_then(|m| {
        m.trim_matches(|c| c == '<' || c == '>')
            .strip_prefix("soak-")?
            .strip_suffix("@postsift.test")?
            .parse::<usize>()
            .ok()
    });
    let mut l = lock(ledger);
    let Some(i) = index.filter(|&i| i < l.specs.len()) else {
        l.strangers += rcpts.len();
        return;
    };
    let received = |pat: &str| {
        hs.iter()
            .find(|(n, v)| n == "received" && v.contains(pat))
            .map(|(_, v)| received_id(v))
            .unwrap_or_default()
    };
    // The reinjection instance's line is the topmost "(Postfix)" one.
    let copy = Copy {
        at: SystemTime::now(),
        postsift_id: received("(postsift, port"),
        reinject_qid: received("(Postfix)"),
    };
    let spec = l.specs[i];
    let flag = get("x-spam-flag").map(str::to_owned);
    let subject = get("subject").unwrap_or("").to_owned();
    let name = format!("soak-{i}");
    if spec.kind == Kind::Eicar {
        l.problem(format!("{name}: EICAR delivered"));
    }
    if get("x-soak-body") != Some(format!("{:016x}", fnv64(body)).as_str()) {
        l.problem(format!("{name}: body changed on the way"));
    }
    if get("x-virus-scanned").is_none() {
        l.problem(format!("{name}: delivered without X-Virus-Scanned"));
    }
    match (spec.kind, flag.as_deref()) {
        (_, None) => l.problem(format!(
            "{name}: delivered without X-Spam-Flag (not spam-checked)"
        )),
        (Kind::Gtube, Some("YES")) if subject.starts_with("***Spam*** ") => l.gtube_flagged += 1,
        (Kind::Gtube, _) => l.problem(format!(
            "{name}: GTUBE not flagged (X-Spam-Flag: {flag:?}, Subject: {subject})"
        )),
        (Kind::Clean, Some("NO")) => l.clean_unflagged += 1,
        (Kind::Clean, _) => l.problem(format!("{name}: clean message flagged ({flag:?})")),
        (Kind::Eicar, _) => {}
    }
    for r in rcpts {
        match l.rcpt_index(i, r) {
            Some(j) => {
                l.copies.entry((i, j)).or_default().push(copy.clone());
                l.resolve(i, j);
            }
            None => l.problem(format!("{name}: delivered to an unknown recipient {r}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the front Postfix's log: discards and deferrals of the feed to postsift

struct FrontLog {
    path: PathBuf,
    offset: u64,
    partial: String,
    /// Postfix queue id → message index (queue ids are reused; cleanup's line comes first).
    qids: HashMap<String, usize>,
    /// `relay=127.0.0.1[127.0.0.1]:<postsift port>`.
    relay: String,
}

impl FrontLog {
    fn new(path: PathBuf, postsift: SocketAddr) -> FrontLog {
        FrontLog {
            path,
            offset: 0,
            partial: String::new(),
            qids: HashMap::new(),
            relay: format!("relay=127.0.0.1[127.0.0.1]:{}", postsift.port()),
        }
    }

    /// Reads what was logged since the last call.
    fn poll(&mut self, ledger: &Mutex<Ledger>) {
        let Ok(mut f) = File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let Some(end) = self.partial.rfind('\n') else {
            return;
        };
        let text: String = self.partial.drain(..=end).collect();
        let mut l = lock(ledger);
        for line in text.lines() {
            self.line(line, &mut l);
        }
    }

    fn line(&mut self, line: &str, l: &mut Ledger) {
        let Some(p) = line.find("]: ") else { return };
        let rest = &line[p + 3..];
        let Some((qid, what)) = rest.split_once(": ") else {
            return;
        };
        if let Some(m) = what.strip_prefix("message-id=<soak-") {
            if let Some(i) = m
                .split('@')
                .next()
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|&i| i < l.specs.len())
            {
                self.qids.insert(qid.to_owned(), i);
            }
            return;
        }
        if what.contains("more than once") && !what.contains("temporarily suspended") {
            l.maybe_twice += 1;
        }
        if !what.starts_with("to=<") || !what.contains(&self.relay) {
            return;
        }
        let Some(&i) = self.qids.get(qid) else { return };
        let addr = &what[4..what.find('>').unwrap_or(4)];
        let Some(j) = l.rcpt_index(i, addr) else {
            return;
        };
        let Some(s) = what.find("status=") else {
            return;
        };
        let status = &what[s + 7..];
        let reason = status
            .split_once('(')
            .map(|(_, r)| r.trim_end_matches(')'))
            .unwrap_or("");
        if status.starts_with("sent") && reason.contains("discarded") {
            if l.specs[i].kind != Kind::Eicar {
                l.problem(format!("soak-{i}: discarded by postsift ({reason})"));
            }
            l.discarded.insert((i, j));
            l.resolve(i, j);
        } else if status.starts_with("deferred") {
            *l.deferrals.entry(defer_reason(reason)).or_default() += 1;
            l.last_status.insert(i, reason.to_owned());
        } else if status.starts_with("bounced") || status.starts_with("expired") {
            l.problem(format!("soak-{i} to {addr}: {status}"));
            l.last_status.insert(i, status.to_owned());
        }
    }
}

/// Why the front Postfix deferred a message it fed to postsift. After a failure Postfix suspends
/// the destination for a while and defers what it had queued for it with the same text,
/// prefixed "delivery temporarily suspended": those are counted apart.
fn defer_reason(r: &str) -> &'static str {
    let (suspended, r) = match r.strip_prefix("delivery temporarily suspended: ") {
        Some(rest) => (true, rest),
        None => (false, r),
    };
    let direct = [
        ("virus_scan FAILED", "451 clamd failed"),
        ("spam_scan FAILED", "451 spamd failed"),
        ("4.4.1", "450 10025 unreachable"),
        ("4.4.2 Timed out", "450 10025 timed out"),
        ("421 4.3.2", "421 postsift shutting down"),
        ("Connection refused", "postsift not listening"),
        ("lost connection", "connection to postsift lost"),
        ("said: 4", "other 4xx from postsift"),
    ];
    let i = direct
        .iter()
        .position(|(needle, _)| r.contains(needle))
        .unwrap_or(direct.len());
    if suspended {
        [
            "suspended after: 451 clamd failed",
            "suspended after: 451 spamd failed",
            "suspended after: 450 10025 unreachable",
            "suspended after: 450 10025 timed out",
            "suspended after: 421 postsift shutting down",
            "suspended after: postsift not listening",
            "suspended after: connection to postsift lost",
            "suspended after: other 4xx from postsift",
            "suspended after: other",
        ][i]
    } else {
        direct.get(i).map(|d| d.1).unwrap_or("other")
    }
}

// ---------------------------------------------------------------------------------------------
// processes

/// Alive and not a zombie (this sandbox's PID 1 does not reap orphans).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace()
                .next()
                .map(|st| st != "Z" && st != "X")
        })
        .unwrap_or(false)
}

fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// Keeps the kernel from handing these ports to outgoing connections, in this network namespace
/// only (`ip_local_reserved_ports`): the harness picks listening ports from the ephemeral range,
/// and a daemon restarted on its old port cannot bind it if a connection took it meanwhile (a
/// soak makes thousands). Never done in the host's namespace.
fn reserve_ports(ports: &[u16]) {
    let own = fs::read_link("/proc/self/ns/net").ok();
    if own.is_none() || own == fs::read_link("/proc/1/ns/net").ok() {
        println!(
            "   not in a private network namespace: a restarted daemon may find its port taken"
        );
        return;
    }
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    if let Err(e) = fs::write("/proc/sys/net/ipv4/ip_local_reserved_ports", list.join(",")) {
        println!("   cannot reserve ports {list:?}: {e}");
    }
}

fn log_file(path: &Path) -> File {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child, String> {
    let out = log_file(log);
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))
}

fn wait_exit(child: &mut Child, within: Duration) -> bool {
    harness::wait_until(within, || !matches!(child.try_wait(), Ok(None)))
}

/// clamd as the harness set it up (config, database, socket in its temp dir); after a SIGKILL
/// the soak starts `clamd -c <same config>` itself, on the same socket.
struct ClamdCtl {
    clamd: harness::Clamd,
    /// The clamd the soak started (None while the harness's first one runs).
    child: Option<Child>,
    watchdog: Option<harness::Watchdog>,
}

impl ClamdCtl {
    fn pid(&self) -> Option<u32> {
        match &self.child {
            Some(c) => Some(c.id()),
            None => self.clamd.pid().filter(|&p| alive(p)),
        }
    }

    fn kill(&mut self) {
        if let Some(pid) = self.pid() {
            harness::signal(&pid.to_string(), "KILL");
            harness::wait_until(Duration::from_secs(10), || !alive(pid));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        self.watchdog = None;
    }

    fn start(&mut self) -> Result<(), String> {
        let dir = &self.clamd.dir;
        let mut child = spawn_logged(
            Command::new("/usr/sbin/clamd")
                .arg("-c")
                .arg(dir.join("clamd.conf"))
                .current_dir(dir),
            &dir.join("clamd.out"),
        )?;
        self.watchdog = harness::Watchdog::spawn(harness::Watched::Pid(child.id()), dir);
        let mut up = false;
        harness::wait_until(Duration::from_secs(60), || {
            up = self.clamd.ping();
            up || !matches!(child.try_wait(), Ok(None))
        });
        let exited = child.try_wait().ok().flatten();
        self.child = Some(child);
        if up {
            Ok(())
        } else {
            Err(format!(
                "clamd did not come back (exit status {exited:?})\n{}\n{}",
                harness::tail(&dir.join("clamd.log"), 10),
                harness::tail(&dir.join("clamd.out"), 10)
            ))
        }
    }

    fn shutdown(&mut self) {
        self.watchdog = None;
        if let Some(mut c) = self.child.take() {
            harness::signal(&c.id().to_string(), "TERM");
            if !wait_exit(&mut c, Duration::from_secs(10)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// spamd as the harness set it up; after a SIGKILL (of the parent and its children) the soak
/// starts it again with the harness's arguments (see `Spamd::try_start` in peers/spamd.rs), on
/// the same port.
struct SpamdCtl {
    spamd: harness::Spamd,
    child: Option<Child>,
    watchdog: Option<harness::Watchdog>,
}

impl SpamdCtl {
    fn pid(&self) -> Option<u32> {
        match &self.child {
            Some(c) => Some(c.id()),
            None => self.spamd.pid().filter(|&p| alive(p)),
        }
    }

    fn kill(&mut self) {
        if let Some(pid) = self.pid() {
            let kids = children_of(pid);
            harness::signal(&pid.to_string(), "KILL");
            for k in &kids {
                harness::signal(&k.to_string(), "KILL");
            }
            harness::wait_until(Duration::from_secs(10), || {
                !alive(pid) && kids.iter().all(|&k| !alive(k))
            });
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        self.watchdog = None;
        let addr = self.spamd.addr;
        harness::wait_until(Duration::from_secs(10), || !port_open(addr));
    }

    fn start(&mut self) -> Result<(), String> {
        let dir = self.spamd.dir.clone();
        let mut child = spawn_logged(
            Command::new("/usr/sbin/spamd")
                .arg("-x")
                .arg(format!("--listen={}", self.spamd.addr))
                .arg("--allowed-ips=127.0.0.1")
                .arg("--max-children=2")
                .arg("-u")
                .arg("nobody")
                .arg(format!("--siteconfigpath={}", dir.join("site").display()))
                .arg(format!("--pidfile={}", dir.join("spamd.pid").display()))
                .arg(format!("--helper-home-dir={}", dir.join("home").display()))
                .arg("--syslog=stderr")
                .current_dir(&dir),
            &dir.join("spamd.log"),
        )?;
        self.watchdog = harness::Watchdog::spawn(harness::Watched::Pid(child.id()), &dir);
        // One PONG is enough: with both children busy a second PING can wait for long.
        let mut up = false;
        harness::wait_until(Duration::from_secs(120), || {
            up = self.spamd.ping();
            up || !matches!(child.try_wait(), Ok(None))
        });
        let exited = child.try_wait().ok().flatten();
        self.child = Some(child);
        if up {
            Ok(())
        } else {
            Err(format!(
                "spamd did not come back (exit status {exited:?})\n{}",
                harness::tail(&dir.join("spamd.log"), 10)
            ))
        }
    }

    fn shutdown(&mut self) {
        self.watchdog = None;
        if let Some(mut c) = self.child.take() {
            let kids = children_of(c.id());
            harness::signal(&c.id().to_string(), "TERM");
            if !wait_exit(&mut c, Duration::from_secs(15)) {
                let _ = c.kill();
            }
            let _ = c.wait();
            for k in kids.into_iter().filter(|&k| alive(k)) {
                harness::signal(&k.to_string(), "KILL");
            }
        }
    }
}

/// The Postfix instance that owns the reinjection smtpd and delivers by LMTP to the sink,
/// stopped and started with `postfix -c <etc> stop|start`. Its queue survives a stop.
struct ReinjectCtl {
    pf: harness::Postfix,
    /// The master of the latest start (the harness only knows the first one).
    master: Option<u32>,
}

impl ReinjectCtl {
    fn postfix(&self, what: &str) -> Result<(), String> {
        let out = Command::new("postfix")
            .arg("-c")
            .arg(self.pf.etc())
            .arg(what)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("postfix {what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "postfix {what}: {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn read_master(&self) -> Option<u32> {
        fs::read_to_string(self.pf.dir.join("queue/pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn stop(&mut self) -> Result<(), String> {
        let master = self.master.take().or_else(|| self.read_master());
        self.postfix("stop")?;
        if let Some(m) = master {
            if !harness::wait_until(Duration::from_secs(15), || {
                !alive(m) && harness::group_members(m).is_empty()
            }) {
                return Err(format!("reinjection Postfix master {m} still running"));
            }
        }
        Ok(())
    }

    fn start(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..5 {
            match self.postfix("start") {
                Ok(()) => {
                    self.master = self.read_master();
                    let addr = self.pf.reinject_addr();
                    if harness::wait_until(Duration::from_secs(30), || port_open(addr)) {
                        return Ok(());
                    }
                    last = "port not open after start".into();
                }
                Err(e) => last = e,
            }
            sleep(Duration::from_secs(1));
        }
        Err(last)
    }

    /// Stops an instance this soak restarted (the harness's Drop only knows the first master).
    fn shutdown(&mut self) {
        if self.master.is_some() {
            let _ = self.stop();
        }
    }
}

/// How a postsift process ended.
#[derive(Clone, Copy, Debug)]
enum End {
    Term,
    Kill,
    Final,
}

struct Gen {
    pid: u32,
    log: PathBuf,
    ended: Option<(End, SystemTime)>,
}

/// Peak memory seen per postsift pid (KiB): sampled VmRSS, and VmHWM.
#[derive(Default, Clone, Copy)]
struct Mem {
    rss: u64,
    hwm: u64,
}

/// The release `postsift run --config <file>`, one process ("generation") after another.
struct PostsiftCtl {
    bin: PathBuf,
    config: PathBuf,
    /// The soak's dir (logs, root's).
    dir: PathBuf,
    /// postsift's own dir ([`daemon_dir`]): configuration, pid file, spool.
    run_dir: PathBuf,
    listen: SocketAddr,
    reinject_to: SocketAddr,
    clamd: PathBuf,
    spamd: SocketAddr,
    resolver: SocketAddr,
    metrics_port: u16,
    child: Option<Child>,
    watchdog: Option<harness::Watchdog>,
    gens: Vec<Gen>,
    variant: bool,
}

impl PostsiftCtl {
    /// The configuration; `variant` changes two harmless values so that a SIGHUP has something
    /// to apply.
    fn toml(&self) -> String {
        let (sessions, idle) = if self.variant { (48, 8) } else { (64, 16) };
        format!(
            "[server]\nlisten = [\"{listen}\"]\nhostname = \"{FILTER_NAME}\"\n\
             pid_file = \"{pid}\"\nspool_dir = \"{spool}\"\nmax_sessions = {sessions}\nshutdown_grace = {GRACE_SECS}\n\
             [reinject]\nto = \"{reinject}\"\nconnect_timeout = 10\ncommand_timeout = 60\n\
             data_timeout = 120\nmax_idle = {idle}\n\
             [clamd]\nendpoints = [\"{clamd}\"]\non_failure = \"tempfail\"\nconnect_timeout = 5\n\
             timeout = 60\n\
             [spamd]\nendpoints = [\"{spamd}\"]\non_failure = \"tempfail\"\nconnect_timeout = 5\n\
             io_timeout = 20\ntimeout = 30\nmax_size = {SPAMD_MAX_SIZE}\n\
             [dns]\nservers = [\"{resolver}\"]\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics}\"\nprobe_interval = 2\n\
             [log]\nlevel = \"info\"\n",
            listen = self.listen,
            pid = self.run_dir.join("postsift.pid").display(),
            spool = self.run_dir.join("spool").display(),
            reinject = self.reinject_to,
            clamd = self.clamd.display(),
            spamd = self.spamd,
            resolver = self.resolver,
            metrics = self.metrics_port,
        )
    }

    /// Written by root; readable by the daemon's user (it owns the file).
    fn write_config(&self) {
        harness::write_file(&self.config, self.toml());
        give_to_daemon(&self.config);
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn start(&mut self, current: &AtomicU32) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..5 {
            let log = self
                .dir
                .join(format!("postsift-{:03}.log", self.gens.len()));
            let mut child = spawn_logged(
                daemon_command(&self.bin, &self.config).env_remove("RUST_LOG"),
                &log,
            )?;
            let pid = child.id();
            let listen = self.listen;
            let up = harness::wait_until(Duration::from_secs(20), || {
                port_open(listen) || !matches!(child.try_wait(), Ok(None))
            }) && matches!(child.try_wait(), Ok(None));
            self.gens.push(Gen {
                pid,
                log: log.clone(),
                ended: None,
            });
            if up {
                // Never root: the soak fails if postsift runs as anyone but the daemon's user.
                let uid = uid_of(pid);
                if uid != Some(daemon_ids().0) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "postsift (pid {pid}) runs as uid {uid:?}, not {DAEMON_USER}'s"
                    ));
                }
                self.watchdog = harness::Watchdog::spawn(
                    harness::Watched::Pid(pid),
                    &self.dir.join("watchdog"),
                );
                self.child = Some(child);
                current.store(pid, Ordering::SeqCst);
                return Ok(());
            }
            let _ = child.kill();
            let _ = child.wait();
            self.gens.last_mut().unwrap().ended = Some((End::Kill, SystemTime::now()));
            last = harness::tail(&log, 10);
            sleep(Duration::from_secs(1));
        }
        Err(format!("postsift did not start\n{last}"))
    }

    fn ended(&mut self, how: End) {
        if let Some(g) = self.gens.last_mut() {
            g.ended = Some((how, SystemTime::now()));
        }
        self.watchdog = None;
    }

    fn kill(&mut self, current: &AtomicU32, mem: &Mutex<BTreeMap<u32, Mem>>) {
        if let Some(mut c) = self.child.take() {
            sample(c.id(), mem);
            current.store(0, Ordering::SeqCst);
            let _ = c.kill();
            let _ = c.wait();
            self.ended(End::Kill);
        }
    }

    /// SIGTERM and wait for the drain; Err if it outlived its grace period (then SIGKILL).
    fn term(
        &mut self,
        current: &AtomicU32,
        mem: &Mutex<BTreeMap<u32, Mem>>,
        last: bool,
    ) -> Result<Duration, String> {
        let Some(mut c) = self.child.take() else {
            return Ok(Duration::ZERO);
        };
        sample(c.id(), mem);
        let t = Instant::now();
        harness::signal(&c.id().to_string(), "TERM");
        let exited = wait_exit(&mut c, Duration::from_secs(GRACE_SECS + 15));
        current.store(0, Ordering::SeqCst);
        let drain = t.elapsed();
        if !exited {
            let _ = c.kill();
        }
        let _ = c.wait();
        self.ended(if last { End::Final } else { End::Term });
        if exited {
            Ok(drain)
        } else {
            Err(format!(
                "postsift still running {} s after SIGTERM",
                drain.as_secs()
            ))
        }
    }

    fn hup(&mut self) {
        self.variant = !self.variant;
        self.write_config();
        if let Some(pid) = self.pid() {
            harness::signal(&pid.to_string(), "HUP");
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// (uid, gid) of [`DAEMON_USER`] and [`DAEMON_GROUP`] under root; the soak's own otherwise.
fn daemon_ids() -> (u32, u32) {
    if !is_root() {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        return unsafe { (libc::getuid(), libc::getgid()) };
    }
    let user = std::ffi::CString::new(DAEMON_USER).unwrap();
    let group = std::ffi::CString::new(DAEMON_GROUP).unwrap();
    // SAFETY: NUL-terminated names; the entries are read at once, before any other getpw*/getgr*.
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

/// Gives `path` to the daemon's user.
fn give_to_daemon(path: &Path) {
    let (uid, gid) = daemon_ids();
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// `dir` (created), owned by the daemon's user, mode 0700, as the package's /var/lib/postsift.
fn daemon_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    give_to_daemon(dir);
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
}

/// `postsift run --config <config>` as an ordinary user: under root, `setpriv` (which execs it:
/// the same pid) to [`DAEMON_USER`]:[`DAEMON_GROUP`], no supplementary groups, no capabilities,
/// no new privileges; umask 0077 either way.
fn daemon_command(bin: &Path, config: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={DAEMON_USER}"))
            .arg(format!("--regid={DAEMON_GROUP}"))
            .args([
                "--clear-groups",
                "--no-new-privs",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
            ])
            .arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.arg("run").arg("--config").arg(config);
    // SAFETY: umask(2) is async-signal-safe and only swaps the child's creation mask.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    cmd
}

/// The uid a process runs as (`Uid:` in /proc/<pid>/status, the real one).
fn uid_of(pid: u32) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn sample(pid: u32, mem: &Mutex<BTreeMap<u32, Mem>>) {
    if pid == 0 {
        return;
    }
    let (Some(rss), Some(hwm)) = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:")) else {
        return;
    };
    let mut m = lock(mem);
    let e = m.entry(pid).or_default();
    e.rss = e.rss.max(rss);
    e.hwm = e.hwm.max(hwm);
}

// ---------------------------------------------------------------------------------------------
// faults

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Fault {
    ClamdKill,
    SpamdKill,
    /// spamd SIGSTOPped (its parent and children): a real spamd that accepts (the kernel's
    /// backlog) and never answers, until SIGCONT.
    SpamdHang,
    /// The resolver (a real unbound) SIGSTOPped: queries are read into its socket and never
    /// answered, until SIGCONT.
    ResolverHang,
    ReinjectStop,
    PostsiftHup,
    PostsiftTerm,
    PostsiftKill,
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::ClamdKill => "clamd SIGKILL+restart",
            Fault::SpamdKill => "spamd SIGKILL+restart",
            Fault::SpamdHang => "spamd SIGSTOP+SIGCONT (hung)",
            Fault::ResolverHang => "resolver SIGSTOP+SIGCONT (hung)",
            Fault::ReinjectStop => "10025 Postfix stop+start",
            Fault::PostsiftHup => "postsift SIGHUP",
            Fault::PostsiftTerm => "postsift SIGTERM+restart",
            Fault::PostsiftKill => "postsift SIGKILL+restart",
        }
    }
}

struct Ctx {
    p: Params,
    started: Instant,
    ledger: Arc<Mutex<Ledger>>,
    clamd: Mutex<ClamdCtl>,
    spamd: Mutex<SpamdCtl>,
    resolver: Mutex<dns_peer::Unbound>,
    reinject: Mutex<ReinjectCtl>,
    postsift: Mutex<PostsiftCtl>,
    front: harness::Postfix,
    /// The running postsift's pid (0 while none runs), for the memory sampler.
    current: AtomicU32,
    mem: Mutex<BTreeMap<u32, Mem>>,
    faults: Mutex<Vec<(SystemTime, Fault)>>,
    longest_drain: Mutex<Duration>,
    /// Restarts that failed, drains that outlived the grace period: the soak fails.
    fatal: Mutex<Vec<String>>,
    stop_faults: AtomicBool,
    stop_senders: AtomicBool,
    senders_done: AtomicUsize,
}

impl Ctx {
    fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn fatal(&self, what: String) {
        println!("[{:7.1}s] ERROR {what}", self.t());
        lock(&self.fatal).push(what);
    }

    /// One fault and its repair. Holds the component's lock throughout, so the final shutdown
    /// waits for a repair in progress.
    fn inject(&self, f: Fault, rng: &mut Rng) {
        lock(&self.faults).push((SystemTime::now(), f));
        let t = Instant::now();
        let result: Result<String, String> = match f {
            Fault::ClamdKill => {
                let mut c = lock(&self.clamd);
                c.kill();
                sleep(rng.secs(0.2, 3.0));
                c.start().map(|()| String::new())
            }
            Fault::SpamdKill => {
                let mut s = lock(&self.spamd);
                s.kill();
                sleep(rng.secs(0.0, 2.0));
                s.start().map(|()| String::new())
            }
            Fault::SpamdHang => {
                let s = lock(&self.spamd);
                match s.pid() {
                    Some(pid) => {
                        let group: Vec<String> = std::iter::once(pid)
                            .chain(children_of(pid))
                            .map(|p| p.to_string())
                            .collect();
                        for p in &group {
                            harness::signal(p, "STOP");
                        }
                        // Longer than spamd's io_timeout: postsift marks it down meanwhile.
                        sleep(rng.secs(25.0, 40.0));
                        for p in &group {
                            harness::signal(p, "CONT");
                        }
                        Ok(String::new())
                    }
                    None => Ok(", spamd was not running".into()),
                }
            }
            Fault::ResolverHang => match lock(&self.resolver).pid() {
                Some(pid) => {
                    let pid = pid.to_string();
                    harness::signal(&pid, "STOP");
                    // Past dns.timeout x attempts several times: postsift marks it down.
                    sleep(rng.secs(25.0, 40.0));
                    harness::signal(&pid, "CONT");
                    Ok(String::new())
                }
                None => Ok(", the resolver was not running".into()),
            },
            Fault::ReinjectStop => {
                let mut r = lock(&self.reinject);
                r.stop().and_then(|()| {
                    sleep(rng.secs(0.5, 4.0));
                    r.start().map(|()| String::new())
                })
            }
            Fault::PostsiftHup => {
                lock(&self.postsift).hup();
                Ok(String::new())
            }
            Fault::PostsiftTerm => {
                let mut p = lock(&self.postsift);
                match p.term(&self.current, &self.mem, false) {
                    Ok(drain) => {
                        let mut longest = lock(&self.longest_drain);
                        *longest = (*longest).max(drain);
                        drop(longest);
                        sleep(rng.secs(0.0, 2.0));
                        p.start(&self.current)
                            .map(|()| format!(", drained in {:.1} s", drain.as_secs_f64()))
                    }
                    Err(e) => Err(e),
                }
            }
            Fault::PostsiftKill => {
                let mut p = lock(&self.postsift);
                p.kill(&self.current, &self.mem);
                sleep(rng.secs(0.0, 2.0));
                p.start(&self.current).map(|()| String::new())
            }
        };
        match result {
            Ok(note) => println!(
                "[{:7.1}s] fault: {} (back after {:.1} s{note})",
                self.t(),
                f.label(),
                t.elapsed().as_secs_f64()
            ),
            Err(e) => self.fatal(format!("{}: {e}", f.label())),
        }
    }

    /// Injects faults of `kinds` at random intervals until told to stop.
    fn injector(&self, kinds: &[Fault], seed: u64) {
        let mut rng = Rng::new(seed);
        loop {
            let wait = rng.secs(0.5 * self.p.fault_interval, 1.5 * self.p.fault_interval);
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if self.stop_faults.load(Ordering::SeqCst) {
                    return;
                }
                sleep(Duration::from_millis(100));
            }
            if self.stop_faults.load(Ordering::SeqCst) {
                return;
            }
            let f = kinds[rng.below(kinds.len() as u64) as usize];
            self.inject(f, &mut rng);
        }
    }

    /// After the last fault: starts whatever a failed repair left down, so the rest can drain.
    fn heal(&self) {
        let mut c = lock(&self.clamd);
        if !c.clamd.ping() {
            c.kill();
            if let Err(e) = c.start() {
                self.fatal(format!("clamd: {e}"));
            }
        }
        drop(c);
        let mut s = lock(&self.spamd);
        if !s.spamd.ping() {
            s.kill();
            if let Err(e) = s.start() {
                self.fatal(format!("spamd: {e}"));
            }
        }
        drop(s);
        let mut r = lock(&self.reinject);
        if !port_open(r.pf.reinject_addr()) {
            let _ = r.stop();
            if let Err(e) = r.start() {
                self.fatal(format!("10025 Postfix: {e}"));
            }
        }
        drop(r);
        let mut p = lock(&self.postsift);
        if p.child.is_none() {
            if let Err(e) = p.start(&self.current) {
                self.fatal(e);
            }
        }
    }

    fn sampler(&self) {
        while !self.stop_faults.load(Ordering::SeqCst) || !self.stop_senders.load(Ordering::SeqCst)
        {
            sample(self.current.load(Ordering::SeqCst), &self.mem);
            sleep(Duration::from_millis(200));
        }
    }

    // -----------------------------------------------------------------------------------------
    // the senders

    fn sender(&self, next: &AtomicUsize) {
        let front = self.front.smtp_addr();
        let mut conn: Option<SmtpClient> = None;
        let mut used = 0;
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let spec = match lock(&self.ledger).specs.get(i) {
                Some(s) => *s,
                None => break,
            };
            while lock(&self.ledger).backlog() >= self.p.backlog {
                if self.stop_senders.load(Ordering::SeqCst) {
                    break;
                }
                sleep(Duration::from_millis(50));
            }
            if self.stop_senders.load(Ordering::SeqCst) {
                lock(&self.ledger).unsent.push(i);
                continue;
            }
            let data = message(i, &spec, self.p.seed);
            let mut outcome = Submit::Retry("not tried".into());
            for attempt in 0..10 {
                if attempt > 0 {
                    sleep(Duration::from_millis(500));
                }
                if conn.is_none() || used >= 100 {
                    if let Some(mut c) = conn.take() {
                        let _ = c.command("QUIT");
                    }
                    used = 0;
                    conn = open_session(front).ok();
                }
                let Some(c) = conn.as_mut() else {
                    outcome = Submit::Retry("cannot connect".into());
                    continue;
                };
                outcome = submit(c, &spec, &data);
                used += 1;
                match &outcome {
                    Submit::Accepted | Submit::Uncertain(_) => break,
                    Submit::Retry(_) => conn = None,
                }
            }
            let mut l = lock(&self.ledger);
            match outcome {
                Submit::Accepted => {
                    l.sent[i] = true;
                    l.sent_count += 1;
                }
                Submit::Uncertain(e) => {
                    l.problem(format!("soak-{i}: no reply to end of DATA ({e})"));
                    l.uncertain.push(i);
                }
                Submit::Retry(e) => {
                    l.problem(format!(
                        "soak-{i}: the front Postfix did not accept it ({e})"
                    ));
                    l.unsent.push(i);
                }
            }
        }
        if let Some(mut c) = conn {
            let _ = c.command("QUIT");
        }
        self.senders_done.fetch_add(1, Ordering::SeqCst);
    }
}

enum Submit {
    Accepted,
    /// Not accepted (a refusal, or the session broke before the end of data): send again.
    Retry(String),
    /// The end of data was sent but no reply came: sending again could duplicate it.
    Uncertain(String),
}

fn open_session(addr: SocketAddr) -> io::Result<SmtpClient> {
    let mut c = SmtpClient::connect(addr)?;
    let bad = |r: (u16, String)| io::Error::other(r.1);
    let g = c.read_reply()?;
    if g.0 != 220 {
        return Err(bad(g));
    }
    let e = c.command(&format!("EHLO {}", harness::CLIENT_HELO))?;
    if e.0 != 250 {
        return Err(bad(e));
    }
    Ok(c)
}

fn submit(c: &mut SmtpClient, spec: &Spec, data: &[u8]) -> Submit {
    let step = |r: io::Result<(u16, String)>, want: u16| match r {
        Ok((code, _)) if code == want => Ok(()),
        Ok((_, text)) => Err(text),
        Err(e) => Err(e.to_string()),
    };
    let mut envelope = || -> Result<(), String> {
        step(c.command(&format!("MAIL FROM:<{SENDER}>")), 250)?;
        for j in 0..spec.rcpts {
            step(c.command(&format!("RCPT TO:<{}>", rcpt(j))), 250)?;
        }
        step(c.command("DATA"), 354)?;
        c.send_data(data).map_err(|e| e.to_string())
    };
    if let Err(e) = envelope() {
        return Submit::Retry(e);
    }
    match c.read_reply() {
        Ok((250, _)) => Submit::Accepted,
        Ok((_, text)) => Submit::Retry(text),
        Err(e) => Submit::Uncertain(e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// duplicates

/// postsift's log line for one message: when, and the reply it gave Postfix.
struct Logged {
    generation: usize,
    at: Option<SystemTime>,
    reply: String,
}

/// What every postsift process logged.
#[derive(Default)]
struct PostsiftLogs {
    /// Message lines by postsift id.
    lines: HashMap<String, Logged>,
    reloaded: usize,
    reload_failed: usize,
    /// Milliseconds per stage of every message line: scan_ms, clamd_ms, spamd_ms, reinject_ms.
    timings: BTreeMap<&'static str, Vec<u64>>,
}

fn read_postsift_logs(gens: &[Gen]) -> PostsiftLogs {
    let mut out = PostsiftLogs::default();
    for (g, gen) in gens.iter().enumerate() {
        let text = String::from_utf8_lossy(&fs::read(&gen.log).unwrap_or_default()).into_owned();
        for line in text.lines() {
            if line.contains("configuration reloaded") {
                out.reloaded += 1;
            }
            if line.contains("reload failed") {
                out.reload_failed += 1;
            }
            // `message id=ABC …` (the id is Display-formatted: no quotes; older logs had them).
            const AT: &str = "postsift::message: message id=";
            let Some(p) = line.find(AT) else {
                continue;
            };
            let rest = &line[p + AT.len()..];
            let id = rest
                .trim_start_matches('"')
                .split(['"', ' '])
                .next()
                .unwrap_or("")
                .to_owned();
            let at = line
                .split_whitespace()
                .next()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(SystemTime::from);
            let (fields, reply) = rest.split_once(" reply=").unwrap_or((rest, ""));
            let reply = reply.split(" problems=").next().unwrap_or(reply).to_owned();
            for key in ["scan_ms", "clamd_ms", "spamd_ms", "reinject_ms"] {
                let v = fields
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('=')?.parse().ok());
                if let Some(v) = v {
                    out.timings.entry(key).or_default().push(v);
                }
            }
            out.lines.insert(
                id,
                Logged {
                    generation: g,
                    at,
                    reply,
                },
            );
        }
    }
    out
}

fn near(a: SystemTime, b: SystemTime, within: Duration) -> bool {
    a.duration_since(b)
        .or_else(|_| b.duration_since(a))
        .is_ok_and(|d| d <= within)
}

/// Why a second copy arrived, if the cause is one of the known at-least-once windows.
fn explain(
    first: &Copy,
    again: &Copy,
    logged: &HashMap<String, Logged>,
    gens: &[Gen],
    faults: &[(SystemTime, Fault)],
) -> Result<&'static str, String> {
    let stop_near = |t: SystemTime| {
        faults
            .iter()
            .any(|(at, f)| *f == Fault::ReinjectStop && near(*at, t, Duration::from_secs(30)))
    };
    if first.postsift_id.is_empty() || again.postsift_id.is_empty() {
        return Err("a copy without postsift's Received line".into());
    }
    if first.postsift_id == again.postsift_id {
        if first.reinject_qid == again.reinject_qid && stop_near(first.at) {
            return Ok("the 10025 Postfix was stopped after the sink's 250, before it noted the delivery; it delivered the same queue file again");
        }
        return Err(format!(
            "same postsift id {} twice (10025 queue ids {} and {})",
            first.postsift_id, first.reinject_qid, again.reinject_qid
        ));
    }
    match logged.get(&first.postsift_id) {
        None => Ok("postsift was SIGKILLed after 10025's 250 and before its log line and reply; Postfix retried"),
        Some(l) => {
            let gen = &gens[l.generation];
            if l.reply.starts_with("250") {
                match (gen.ended, l.at) {
                    (Some((End::Kill, killed)), Some(at)) if near(killed, at, Duration::from_secs(2)) => {
                        Ok("postsift was SIGKILLed after it logged the 250, before the reply reached Postfix; Postfix retried")
                    }
                    _ => Err(format!(
                        "postsift {} answered {} (process {} ended {:?}) yet Postfix sent it again",
                        first.postsift_id, l.reply, gen.pid, gen.ended.map(|e| e.0)
                    )),
                }
            } else if stop_near(first.at) {
                Ok("the 10025 Postfix took the message but was stopped before its 250 reached postsift, which answered 4xx; Postfix retried")
            } else {
                Err(format!(
                    "postsift {} answered {} but 10025 had taken the message (queue id {})",
                    first.postsift_id, l.reply, first.reinject_qid
                ))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// main

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() -> ExitCode {
    let p = Params::from_env();
    println!(
        "== fault soak: {} messages, at most {} s, seed {} (SOAK_SEED={} to repeat), {} sessions, backlog {}, a fault every ~{} s per injector",
        p.n, p.max.as_secs(), p.seed, p.seed, p.sessions, p.backlog, p.fault_interval
    );
    let bin = std::env::var_os("POSTSIFT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("current_exe");
            exe.parent()
                .and_then(Path::parent)
                .expect("target/<profile>/examples")
                .join("postsift")
        });
    assert!(bin.exists(), "{} missing: build it first", bin.display());
    let started = Instant::now();
    let soak_dir = harness::private_dir("soak-");
    fs::create_dir_all(soak_dir.path().join("watchdog")).expect("mkdir");

    println!(
        "== starting private peers under {}",
        harness::base_dir().display()
    );
    let (clamd, spamd) = thread::scope(|s| {
        let c = s.spawn(harness::Clamd::start);
        let sp = s.spawn(harness::Spamd::start);
        (c.join().expect("clamd"), sp.join().expect("spamd"))
    });
    let ledger = Arc::new(Mutex::new(Ledger::new(specs(p.n, p.seed))));
    let sink = start_sink(ledger.clone());
    // No records: every name is NXDOMAIN, answered at once while unbound runs.
    let resolver = dns_peer::Unbound::start(&[], None);
    let filter = localhost(harness::free_port());
    let metrics_port = harness::free_port();

    // The reinjection instance: its 10025 smtpd takes mail back from postsift, delivers by LMTP
    // to the sink. Its front smtpd and content_filter are unused.
    let reinject = harness::Postfix::start(harness::PostfixOpts {
        filter: localhost(harness::free_port()),
        filter_lmtp: true,
        final_dest: sink,
    });
    let to_sink = format!("lmtp:[127.0.0.1]:{}", sink.port());
    let timers = [
        "queue_run_delay = 2s",
        "minimal_backoff_time = 2s",
        "maximal_backoff_time = 4s",
    ];
    let mut b = vec![
        "content_filter =".to_owned(),
        format!("transport_maps = inline:{{ *={to_sink} }}"),
        format!("default_transport = {to_sink}"),
        format!("relay_transport = {to_sink}"),
        "lmtp_connect_timeout = 5s".to_owned(),
    ];
    b.extend(timers.iter().map(|s| s.to_string()));
    reinject.postconf(&b.iter().map(String::as_str).collect::<Vec<_>>());

    // The front instance: content_filter = lmtp to postsift.
    let front = harness::Postfix::start(harness::PostfixOpts {
        filter,
        filter_lmtp: true,
        final_dest: sink,
    });
    // postsift's worst case: clamd 60 s + spamd 90 s in parallel, reinjection 10 + 60 + 120 s.
    front.admin(
        "postconf",
        &["-P", "postsift-lmtp/unix/lmtp_data_done_timeout=600s"],
    );
    let mut a: Vec<&str> = timers.to_vec();
    a.extend([
        "lmtp_connect_timeout = 5s",
        "lmtp_lhlo_timeout = 30s",
        "lmtp_xforward_timeout = 30s",
        "lmtp_mail_timeout = 30s",
        "lmtp_rcpt_timeout = 30s",
        "lmtp_data_init_timeout = 30s",
        "lmtp_data_xfer_timeout = 60s",
        "lmtp_rset_timeout = 20s",
        "lmtp_quit_timeout = 10s",
    ]);
    front.postconf(&a);

    reserve_ports(&[
        spamd.addr.port(),
        reinject.smtp_port,
        reinject.reinject_port,
        filter.port(),
        metrics_port,
    ]);
    let ps = PostsiftCtl {
        bin,
        config: soak_dir.path().join("postsift/postsift.toml"),
        dir: soak_dir.path().to_path_buf(),
        run_dir: soak_dir.path().join("postsift"),
        listen: filter,
        reinject_to: reinject.reinject_addr(),
        clamd: clamd.socket.clone(),
        spamd: spamd.addr,
        resolver: resolver.addr,
        metrics_port,
        child: None,
        watchdog: None,
        gens: Vec::new(),
        variant: false,
    };
    daemon_dir(&ps.run_dir);
    daemon_dir(&ps.run_dir.join("spool"));
    ps.write_config();

    let ctx = Ctx {
        started,
        ledger,
        clamd: Mutex::new(ClamdCtl {
            clamd,
            child: None,
            watchdog: None,
        }),
        spamd: Mutex::new(SpamdCtl {
            spamd,
            child: None,
            watchdog: None,
        }),
        resolver: Mutex::new(resolver),
        reinject: Mutex::new(ReinjectCtl {
            pf: reinject,
            master: None,
        }),
        postsift: Mutex::new(ps),
        front,
        current: AtomicU32::new(0),
        mem: Mutex::new(BTreeMap::new()),
        faults: Mutex::new(Vec::new()),
        longest_drain: Mutex::new(Duration::ZERO),
        fatal: Mutex::new(Vec::new()),
        stop_faults: AtomicBool::new(false),
        stop_senders: AtomicBool::new(false),
        senders_done: AtomicUsize::new(0),
        p,
    };
    if let Err(e) = lock(&ctx.postsift).start(&ctx.current) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    println!(
        "   clamd {}, spamd {}, front Postfix {} → postsift {} (LMTP) → 10025 Postfix {} → LMTP sink {}",
        lock(&ctx.clamd).clamd.socket.display(),
        lock(&ctx.spamd).spamd.addr,
        ctx.front.smtp_addr(),
        filter,
        lock(&ctx.reinject).pf.reinject_addr(),
        sink
    );
    println!(
        "   postsift runs as uid {} ({}), no capabilities, no new privileges, in {}",
        daemon_ids().0,
        if is_root() {
            DAEMON_USER
        } else {
            "the soak's user"
        },
        lock(&ctx.postsift).run_dir.display()
    );
    println!("   ready in {:.1} s\n", started.elapsed().as_secs_f64());

    let deadline = started + ctx.p.max;
    // Leave a third of the time for the drain, whatever happens.
    let faults_until = started + ctx.p.max * 2 / 3;
    let mut faults_stopped_at = None;
    let mut log = FrontLog::new(ctx.front.dir.join("maillog"), filter);
    let next = AtomicUsize::new(0);
    let mut timed_out = false;
    let mut sending_done_at = None;
    let send_start = Instant::now();
    let mut drained_at = None;

    thread::scope(|s| {
        s.spawn(|| ctx.sampler());
        let injectors = vec![
            // spamd costs seconds of CPU to start: killed half as often as clamd.
            s.spawn(|| {
                ctx.injector(
                    &[
                        Fault::ClamdKill,
                        Fault::ClamdKill,
                        Fault::SpamdKill,
                        Fault::SpamdHang,
                        Fault::ResolverHang,
                    ],
                    ctx.p.seed ^ 1,
                )
            }),
            s.spawn(|| ctx.injector(&[Fault::ReinjectStop], ctx.p.seed ^ 2)),
            s.spawn(|| {
                ctx.injector(
                    &[Fault::PostsiftHup, Fault::PostsiftTerm, Fault::PostsiftKill],
                    ctx.p.seed ^ 3,
                )
            }),
        ];
        for _ in 0..ctx.p.sessions {
            s.spawn(|| ctx.sender(&next));
        }

        let mut last_report = Instant::now();
        let mut last_flush = Instant::now();
        let mut injectors = Some(injectors);
        loop {
            sleep(Duration::from_millis(250));
            log.poll(&ctx.ledger);
            let (sent, resolved, backlog) = {
                let l = lock(&ctx.ledger);
                (l.sent_count, l.resolved, l.backlog())
            };
            let all_sent = ctx.senders_done.load(Ordering::SeqCst) == ctx.p.sessions;
            if all_sent && sending_done_at.is_none() {
                sending_done_at = Some(Instant::now());
                println!("[{:7.1}s] every message submitted", ctx.t());
            }
            // Faults go on until only the last few messages are left (or most of the time is
            // used up); then every peer is up and the rest drains.
            let tail = backlog <= FAULT_FREE_TAIL.min(ctx.p.n / 10);
            if injectors.is_some() && ((all_sent && tail) || Instant::now() >= faults_until) {
                println!(
                    "[{:7.1}s] faults stop ({} messages left); draining",
                    ctx.t(),
                    backlog
                );
                ctx.stop_faults.store(true, Ordering::SeqCst);
                for h in injectors.take().unwrap_or_default() {
                    let _ = h.join();
                }
                ctx.heal();
                faults_stopped_at = Some(Instant::now());
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                let faults = lock(&ctx.faults).len();
                let rss = lock(&ctx.mem)
                    .get(&ctx.current.load(Ordering::SeqCst))
                    .map(|m| mib(m.rss))
                    .unwrap_or(0.0);
                println!(
                    "[{:7.1}s] submitted {sent}/{}  resolved {resolved}  backlog {backlog}  faults {faults}  postsift RSS {rss:.1} MiB",
                    ctx.t(),
                    ctx.p.n
                );
            }
            if faults_stopped_at.is_some() && all_sent {
                if backlog == 0 {
                    let queues = (
                        ctx.front.queue_count(),
                        lock(&ctx.reinject).pf.queue_count(),
                    );
                    if queues == (0, 0) {
                        drained_at = Some(Instant::now());
                        break;
                    }
                }
                if last_flush.elapsed() >= Duration::from_secs(5) {
                    last_flush = Instant::now();
                    let _ = Command::new("postqueue")
                        .arg("-c")
                        .arg(ctx.front.etc())
                        .arg("-f")
                        .output();
                    let _ = Command::new("postqueue")
                        .arg("-c")
                        .arg(lock(&ctx.reinject).pf.etc())
                        .arg("-f")
                        .output();
                }
            }
            if Instant::now() >= deadline {
                timed_out = true;
                println!(
                    "[{:7.1}s] TIME LIMIT reached: stopping senders and faults",
                    ctx.t()
                );
                ctx.stop_senders.store(true, Ordering::SeqCst);
                ctx.stop_faults.store(true, Ordering::SeqCst);
                break;
            }
        }
        ctx.stop_faults.store(true, Ordering::SeqCst);
        ctx.stop_senders.store(true, Ordering::SeqCst);
    });
    let end = Instant::now();

    // Late copies (a duplicate would come within seconds) and the last log lines.
    sleep(Duration::from_secs(3));
    log.poll(&ctx.ledger);
    let queue_front = ctx.front.queue_count();
    let queue_reinject = lock(&ctx.reinject).pf.queue_count();

    // Stop postsift last-of-all gracefully, measuring its final memory, then the rest.
    let final_rss = status_kib(ctx.current.load(Ordering::SeqCst), "VmRSS:");
    {
        let mut ps = lock(&ctx.postsift);
        if let Err(e) = ps.term(&ctx.current, &ctx.mem, true) {
            ctx.fatal(e);
        }
    }
    let report = Report::build(&ctx, queue_front, queue_reinject, timed_out, final_rss);
    let secs_send = sending_done_at.map(|t| t - send_start);
    let secs_drain = match (faults_stopped_at, drained_at) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let pass = report.print(&ctx, end - started, end - send_start, secs_send, secs_drain);

    lock(&ctx.reinject).shutdown();
    lock(&ctx.spamd).shutdown();
    lock(&ctx.clamd).shutdown();
    drop(ctx);
    if pass {
        harness::finish_dir(Some(soak_dir));
        ExitCode::SUCCESS
    } else {
        let kept = soak_dir.path().to_path_buf();
        std::mem::forget(soak_dir);
        println!(
            "   postsift's logs and config kept in {} (POSTSIFT_KEEP_TEST_DIRS=1 keeps the peers' dirs too)",
            kept.display()
        );
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------------------------------------
// the report

struct Dup {
    name: String,
    copies: usize,
    why: Result<&'static str, String>,
}

struct Report {
    sent: usize,
    sent_rcpts: usize,
    delivered_msgs: usize,
    delivered_rcpts: usize,
    discarded_msgs: usize,
    discarded_rcpts: usize,
    lost: Vec<(usize, u8)>,
    dups: Vec<Dup>,
    faults: BTreeMap<Fault, usize>,
    reloaded: usize,
    reload_failed: usize,
    postsift_lines: usize,
    /// Per-stage milliseconds from postsift's message lines.
    timings: Vec<String>,
    generations: usize,
    max_rss: u64,
    max_hwm: u64,
    final_rss: Option<u64>,
    queue_front: usize,
    queue_reinject: usize,
    timed_out: bool,
}

impl Report {
    fn build(
        ctx: &Ctx,
        queue_front: usize,
        queue_reinject: usize,
        timed_out: bool,
        final_rss: Option<u64>,
    ) -> Report {
        let l = lock(&ctx.ledger);
        let ps = lock(&ctx.postsift);
        let faults_log = lock(&ctx.faults);
        let logs = read_postsift_logs(&ps.gens);
        let mut r = Report {
            sent: l.sent_count,
            sent_rcpts: 0,
            delivered_msgs: 0,
            delivered_rcpts: 0,
            discarded_msgs: 0,
            discarded_rcpts: 0,
            lost: Vec::new(),
            dups: Vec::new(),
            faults: BTreeMap::new(),
            reloaded: logs.reloaded,
            reload_failed: logs.reload_failed,
            postsift_lines: logs.lines.len(),
            timings: logs
                .timings
                .iter()
                .map(|(k, v)| {
                    let mut v = v.clone();
                    v.sort_unstable();
                    let q = |f: f64| v[((v.len() - 1) as f64 * f) as usize];
                    format!("{k} p50 {} p95 {} max {}", q(0.5), q(0.95), q(1.0))
                })
                .collect(),
            generations: ps.gens.len(),
            max_rss: 0,
            max_hwm: 0,
            final_rss,
            queue_front,
            queue_reinject,
            timed_out,
        };
        for (_, f) in faults_log.iter() {
            *r.faults.entry(*f).or_default() += 1;
        }
        for m in lock(&ctx.mem).values() {
            r.max_rss = r.max_rss.max(m.rss);
            r.max_hwm = r.max_hwm.max(m.hwm);
        }
        for (i, spec) in l.specs.iter().enumerate() {
            if !l.sent[i] && !l.uncertain.contains(&i) {
                continue;
            }
            let (mut delivered, mut discarded) = (0, 0);
            for j in 0..spec.rcpts {
                if l.sent[i] {
                    r.sent_rcpts += 1;
                }
                let copies = l.copies.get(&(i, j));
                if let Some(c) = copies {
                    delivered += 1;
                    if c.len() > 1 {
                        let mut c = c.clone();
                        c.sort_by_key(|c| c.at);
                        for again in &c[1..] {
                            r.dups.push(Dup {
                                name: format!("<soak-{i}@postsift.test> to {}", rcpt(j)),
                                copies: c.len(),
                                why: explain(&c[0], again, &logs.lines, &ps.gens, &faults_log),
                            });
                        }
                    }
                } else if l.discarded.contains(&(i, j)) {
                    discarded += 1;
                } else if l.sent[i] {
                    r.lost.push((i, j));
                }
            }
            r.delivered_rcpts += delivered;
            r.discarded_rcpts += discarded;
            if delivered == spec.rcpts as usize {
                r.delivered_msgs += 1;
            }
            if discarded == spec.rcpts as usize {
                r.discarded_msgs += 1;
            }
        }
        r
    }

    /// Prints the report; true if the soak passed.
    fn print(
        &self,
        ctx: &Ctx,
        total: Duration,
        run: Duration,
        sending: Option<Duration>,
        drain: Option<Duration>,
    ) -> bool {
        let l = lock(&ctx.ledger);
        let fatal = lock(&ctx.fatal);
        let unexplained = self.dups.iter().filter(|d| d.why.is_err()).count();
        let expected_discards = l
            .specs
            .iter()
            .enumerate()
            .filter(|(i, s)| l.sent[*i] && s.kind == Kind::Eicar)
            .count();
        println!("\n== fault soak result (seed {})", ctx.p.seed);
        println!(
            "   sent (accepted by Postfix)  {} of {} messages ({} recipients){}",
            self.sent,
            ctx.p.n,
            self.sent_rcpts,
            if l.unsent.is_empty() && l.uncertain.is_empty() {
                String::new()
            } else {
                format!(
                    "; NOT accepted {}, no reply to end of data {}",
                    l.unsent.len(),
                    l.uncertain.len()
                )
            }
        );
        println!(
            "   delivered                   {} messages ({} recipients)",
            self.delivered_msgs, self.delivered_rcpts
        );
        println!(
            "   discarded (EICAR)           {} messages ({} recipients) of {} EICAR messages sent",
            self.discarded_msgs, self.discarded_rcpts, expected_discards
        );
        println!(
            "   lost                        {} recipients{}",
            self.lost.len(),
            if self.lost.is_empty() {
                ""
            } else {
                "  <-- FAIL"
            }
        );
        for (i, j) in self.lost.iter().take(20) {
            println!(
                "      lost <soak-{i}@postsift.test> to {}; last front-Postfix status: {}",
                rcpt(*j),
                l.last_status.get(i).map(String::as_str).unwrap_or("-")
            );
        }
        println!(
            "   duplicated                  {} recipient copies ({} explained, {} unexplained)",
            self.dups.len(),
            self.dups.len() - unexplained,
            unexplained
        );
        for d in self.dups.iter().take(20) {
            match &d.why {
                Ok(why) => println!(
                    "      DUPLICATE (known at-least-once window) {} x{}: {why}",
                    d.name, d.copies
                ),
                Err(why) => println!(
                    "      DUPLICATE (UNEXPLAINED) {} x{}: {why}",
                    d.name, d.copies
                ),
            }
        }
        println!(
            "   content checks              GTUBE flagged {}, clean unflagged {}, other deliveries {}, problems {}",
            l.gtube_flagged, l.clean_unflagged, l.strangers, l.problem_count
        );
        for p in &l.problems {
            println!("      problem: {p}");
        }
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(f, n)| format!("{} {n}", f.label()))
            .collect();
        println!(
            "   faults injected             {} in all: {}",
            self.faults.values().sum::<usize>(),
            faults.join(", ")
        );
        println!(
            "   postsift processes          {} (SIGHUP: {} reloads applied, {} failed; longest SIGTERM drain {:.1} s); {} message attempts logged",
            self.generations,
            self.reloaded,
            self.reload_failed,
            lock(&ctx.longest_drain).as_secs_f64(),
            self.postsift_lines
        );
        println!("   postsift ms per message     {}", self.timings.join("; "));
        let deferrals: Vec<String> = l
            .deferrals
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "   Postfix deferred the feed   {} times: {}; \"may be sent more than once\" {}",
            l.deferrals.values().sum::<u64>(),
            deferrals.join(", "),
            l.maybe_twice
        );
        let secs = |d: Option<Duration>| {
            d.map(|d| format!("{:.0} s", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "   elapsed                     {:.0} s in all; {:.0} s from the first message (sending {}, drain after the last fault {})",
            total.as_secs_f64(),
            run.as_secs_f64(),
            secs(sending),
            secs(drain)
        );
        println!(
            "   throughput                  {:.1} messages/s ({:.1} recipients/s)",
            self.sent as f64 / run.as_secs_f64(),
            self.sent_rcpts as f64 / run.as_secs_f64()
        );
        println!(
            "   postsift max RSS            {:.1} MiB sampled VmRSS, {:.1} MiB VmHWM (limit {:.0} MiB); {:.1} MiB at the end",
            mib(self.max_rss),
            mib(self.max_hwm),
            mib(ctx.p.max_rss_kib),
            self.final_rss.map(mib).unwrap_or(0.0)
        );
        println!(
            "   Postfix queue at the end    front {}, reinjection {}",
            self.queue_front, self.queue_reinject
        );
        let mut why_failed = Vec::new();
        if !self.lost.is_empty() {
            why_failed.push(format!("{} lost", self.lost.len()));
        }
        if self.queue_front + self.queue_reinject > 0 {
            why_failed.push("queue not drained".into());
        }
        if self.timed_out {
            why_failed.push(format!("time limit of {} s", ctx.p.max.as_secs()));
        }
        if unexplained > 0 || (ctx.p.strict_duplicates && !self.dups.is_empty()) {
            why_failed.push("duplicates".into());
        }
        if l.problem_count > 0 {
            why_failed.push(format!("{} content/submission problems", l.problem_count));
        }
        if !l.unsent.is_empty() {
            why_failed.push("messages not submitted".into());
        }
        if !fatal.is_empty() {
            why_failed.push(format!(
                "{} peer failures: {}",
                fatal.len(),
                fatal.join("; ")
            ));
        }
        if self.max_hwm.max(self.max_rss) > ctx.p.max_rss_kib {
            why_failed.push("postsift's memory above the limit".into());
        }
        if why_failed.is_empty() {
            println!("   result                      PASS");
            true
        } else {
            println!(
                "   result                      FAIL: {}",
                why_failed.join(", ")
            );
            false
        }
    }
}
