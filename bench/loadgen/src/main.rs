//! SMTP load generator for `bench/run`.
//!
//! Sends `--count` messages to `--target` over `--conc` parallel sessions, one TCP connection
//! per message (connect, greeting, EHLO, [XFORWARD attributes], [XFORWARD IDENT], MAIL, RCPT,
//! DATA, body, ".", QUIT),
//! like Postfix's `smtp-source -s CONC -m COUNT -l SIZE`, and times every message.
//!
//! Per-message latency = from the start of connect() until the reply to the final "." arrived
//! (what a Postfix content_filter delivery waits for). The session time, which also covers QUIT,
//! is kept in the per-message file.
//!
//! Prints one line on stdout:
//!   count=N ok=N fail=N aborted=N wall_s=S mps=R mean_ms=M p50_ms=.. p90_ms=.. p99_ms=.. max_ms=..
//! (percentiles by nearest rank over the messages that got a 2xx reply; `mps` = ok / wall time).
//! Errors (non-2xx replies, timeouts, I/O) are counted per kind on stderr.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;

const USAGE: &str = "usage: loadgen --target HOST:PORT --conc N --count N --size BYTES
       [--from ADDR] [--to ADDR] [--helo NAME] [--ident PREFIX] [--xforward ATTRS]
       [--timeout SECS]
       [--deadline SECS] [--per-msg FILE] [--message FILE]...

  --size      body bytes (like smtp-source -l): 78 'X' + CRLF per line
  --ident     send XFORWARD IDENT=<PREFIX><seq> when the server offers XFORWARD
  --xforward  send `XFORWARD <ATTRS>` (e.g. ADDR=192.0.2.10 HELO=mx.example) when the server
              offers XFORWARD, before IDENT: the original client as Postfix would forward it
  --timeout   seconds allowed for each SMTP step (default 300)
  --deadline  give up after SECS in total: unfinished messages count as aborted (0 = never)
  --per-msg   write one CSV line per message: seq,ident,start_ms,latency_ms,session_ms,code,error
  --message   send this RFC 5322 file (headers and body; line ends made CRLF, dot-stuffed)
              instead of the synthetic message; --size is then ignored. Repeatable: message
              number i is file i mod n, in the order given (a mix; repeat a file to weight it).
              `{name}` in --from and --xforward is replaced by the message file's name without
              its directory and `.eml` (one envelope per file: e.g. a domain per message)
  Exit status: 0 if every message got a 2xx reply to its final dot, else 1.
  With --message, the last reply to the final dot is printed on stderr (reply=...).";

struct Opts {
    target: SocketAddr,
    conc: usize,
    count: usize,
    size: usize,
    from: String,
    to: String,
    helo: String,
    ident: Option<String>,
    xforward: Option<String>,
    step_timeout: Duration,
    deadline: Option<Duration>,
    per_msg: Option<String>,
    /// The files given with --message, in order (empty: the synthetic message).
    message: Vec<String>,
}

fn parse_args() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mut target = None;
    let (mut conc, mut count, mut size) = (1usize, 100usize, 4096usize);
    let mut from = "sender@example.com".to_string();
    let mut to = "rcpt@example.org".to_string();
    let mut helo = "bench.localdomain".to_string();
    let mut ident = None;
    let mut xforward = None;
    let mut step_timeout = Duration::from_secs(300);
    let mut deadline = None;
    let mut per_msg = None;
    let mut message = Vec::new();
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let num = |s: String, name: &str| {
            s.parse::<usize>()
                .map_err(|_| format!("{name}: not a number: {s}"))
        };
        match a.as_str() {
            "--target" => {
                let v = val("--target")?;
                target = Some(
                    v.parse()
                        .map_err(|_| format!("--target: bad address {v}"))?,
                )
            }
            "--conc" => conc = num(val("--conc")?, "--conc")?,
            "--count" => count = num(val("--count")?, "--count")?,
            "--size" => size = num(val("--size")?, "--size")?,
            "--from" => from = val("--from")?,
            "--to" => to = val("--to")?,
            "--helo" => helo = val("--helo")?,
            "--ident" => ident = Some(val("--ident")?),
            "--xforward" => xforward = Some(val("--xforward")?),
            "--timeout" => {
                step_timeout = Duration::from_secs(num(val("--timeout")?, "--timeout")? as u64)
            }
            "--deadline" => {
                let d = num(val("--deadline")?, "--deadline")?;
                deadline = (d > 0).then(|| Duration::from_secs(d as u64));
            }
            "--per-msg" => per_msg = Some(val("--per-msg")?),
            "--message" => message.push(val("--message")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let target = target.ok_or("--target is required")?;
    if conc == 0 {
        return Err("--conc must be at least 1".into());
    }
    Ok(Opts {
        target,
        conc,
        count,
        size,
        from,
        to,
        helo,
        ident,
        xforward,
        step_timeout,
        deadline,
        per_msg,
        message,
    })
}

/// Outcome of one message.
struct Record {
    seq: usize,
    start: Duration,
    latency: Option<Duration>,
    session: Option<Duration>,
    code: u16,
    error: Option<String>,
}

/// The message body (without headers), terminated by ".\r\n": `size` bytes of 'X' lines.
fn body(size: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(size + 3);
    let mut left = size;
    while left >= 80 {
        b.extend_from_slice(&[b'X'; 78]);
        b.extend_from_slice(b"\r\n");
        left -= 80;
    }
    if left > 2 {
        b.extend(std::iter::repeat_n(b'X', left - 2));
        b.extend_from_slice(b"\r\n");
    } else if left > 0 {
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b".\r\n");
    b
}

/// A whole message from a file: CRLF line ends, dot-stuffed, terminated by ".\r\n".
fn file_message(path: &str) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap_or_else(|e| {
        eprintln!("loadgen: read {path}: {e}");
        std::process::exit(2)
    });
    let mut out = Vec::with_capacity(raw.len() + 64);
    let text = raw.strip_suffix(b"\n").unwrap_or(&raw);
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// RFC 5322 date of now (UTC), without a date crate.
fn rfc5322_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // civil_from_days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        WD[days.rem_euclid(7) as usize],
        d,
        MON[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A failed message: the SMTP reply code (0 for I/O errors and timeouts) and what happened.
type Fail = (u16, String);

fn io(msg: String) -> Fail {
    (0, msg)
}

fn fail(code: u16, msg: String) -> Fail {
    (code, msg)
}

struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    step: Duration,
    line: String,
}

impl Conn {
    /// Reads one (possibly multi-line) reply; returns its code and the full text.
    async fn reply(&mut self, what: &str) -> Result<(u16, String), Fail> {
        let mut text = String::new();
        loop {
            self.line.clear();
            let n = timeout(self.step, self.r.read_line(&mut self.line))
                .await
                .map_err(|_| io(format!("timeout waiting for reply to {what}")))?
                .map_err(|e| io(format!("read after {what}: {e}")))?;
            if n == 0 {
                return Err(io(format!("connection closed after {what}")));
            }
            text.push_str(&self.line);
            let l = self.line.as_bytes();
            if l.len() < 4 || l[3] != b'-' {
                let code = std::str::from_utf8(&l[..3.min(l.len())])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| io(format!("bad reply to {what}: {}", self.line.trim_end())))?;
                return Ok((code, text));
            }
        }
    }

    async fn send(&mut self, data: &[u8], what: &str) -> Result<(), Fail> {
        timeout(self.step, self.w.write_all(data))
            .await
            .map_err(|_| io(format!("timeout writing {what}")))?
            .map_err(|e| io(format!("write {what}: {e}")))
    }

    async fn cmd(&mut self, line: String, what: &str, want: u16) -> Result<(u16, String), Fail> {
        self.send(line.as_bytes(), what).await?;
        let (code, text) = self.reply(what).await?;
        if code / 100 != want / 100 {
            return Err(fail(
                code,
                format!("{what}: {}", text.lines().last().unwrap_or("").trim_end()),
            ));
        }
        Ok((code, text))
    }
}

struct Shared {
    opts: Opts,
    /// The bodies sent in turn (message `seq` gets `bodies[seq % len]`).
    bodies: Vec<Vec<u8>>,
    /// Their files' names without directory and `.eml`: what `{name}` stands for.
    names: Vec<String>,
    date: String,
    next: AtomicUsize,
    t0: Instant,
    records: Mutex<Vec<Record>>,
    last_reply: Mutex<String>,
}

/// One message on its own connection. Returns (reply code to ".", latency to that reply).
async fn one(sh: &Shared, seq: usize) -> Result<(u16, Duration), Fail> {
    let o = &sh.opts;
    let name = sh
        .names
        .get(seq % sh.names.len().max(1))
        .map_or("", |n| n.as_str());
    let start = Instant::now();
    let stream = timeout(o.step_timeout, TcpStream::connect(o.target))
        .await
        .map_err(|_| io("timeout connecting".to_string()))?
        .map_err(|e| io(format!("connect: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut c = Conn {
        r: BufReader::with_capacity(8192, r),
        w,
        step: o.step_timeout,
        line: String::new(),
    };
    let (code, text) = c.reply("greeting").await?;
    if code / 100 != 2 {
        return Err(fail(code, format!("greeting: {}", text.trim_end())));
    }
    let (_, ehlo) = c.cmd(format!("EHLO {}\r\n", o.helo), "EHLO", 250).await?;
    let xforward = ehlo.to_ascii_uppercase().contains("XFORWARD");
    if let Some(attrs) = o.xforward.as_ref().filter(|_| xforward) {
        let attrs = attrs.replace("{name}", name);
        c.cmd(format!("XFORWARD {attrs}\r\n"), "XFORWARD", 250)
            .await?;
    }
    if let Some(prefix) = &o.ident {
        if ehlo.to_ascii_uppercase().contains("XFORWARD") {
            c.cmd(format!("XFORWARD IDENT={prefix}{seq}\r\n"), "XFORWARD", 250)
                .await?;
        }
    }
    let from = o.from.replace("{name}", name);
    c.cmd(format!("MAIL FROM:<{from}>\r\n"), "MAIL", 250)
        .await?;
    c.cmd(format!("RCPT TO:<{}>\r\n", o.to), "RCPT", 250)
        .await?;
    c.cmd("DATA\r\n".to_string(), "DATA", 354).await?;
    let headers = if !o.message.is_empty() {
        String::new()
    } else {
        format!(
            "From: <{}>\r\nTo: <{}>\r\nDate: {}\r\nMessage-Id: <{}.{}.loadgen@{}>\r\n\r\n",
            o.from,
            o.to,
            sh.date,
            seq,
            std::process::id(),
            o.helo
        )
    };
    if !headers.is_empty() {
        c.send(headers.as_bytes(), "headers").await?;
    }
    c.send(&sh.bodies[seq % sh.bodies.len()], "body").await?;
    let (code, text) = c.reply("end of data").await?;
    let latency = start.elapsed();
    if !o.message.is_empty() {
        *sh.last_reply.lock().unwrap() = text.lines().last().unwrap_or("").trim_end().to_string();
    }
    // QUIT: part of the session, not of the latency; errors here don't fail the message.
    if c.send(b"QUIT\r\n", "QUIT").await.is_ok() {
        let _ = c.reply("QUIT").await;
    }
    if code / 100 != 2 {
        return Err(fail(
            code,
            format!(
                "end of data: {}",
                text.lines().last().unwrap_or("").trim_end()
            ),
        ));
    }
    Ok((code, latency))
}

async fn worker(sh: Arc<Shared>) {
    loop {
        let seq = sh.next.fetch_add(1, Ordering::Relaxed);
        if seq >= sh.opts.count {
            return;
        }
        let start = sh.t0.elapsed();
        let s0 = Instant::now();
        let rec = match one(&sh, seq).await {
            Ok((code, lat)) => Record {
                seq,
                start,
                latency: Some(lat),
                session: Some(s0.elapsed()),
                code,
                error: None,
            },
            Err((code, e)) => Record {
                seq,
                start,
                latency: None,
                session: Some(s0.elapsed()),
                code,
                error: Some(e),
            },
        };
        sh.records.lock().unwrap().push(rec);
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("loadgen: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let bodies = if opts.message.is_empty() {
        vec![body(opts.size)]
    } else {
        opts.message.iter().map(|p| file_message(p)).collect()
    };
    let names = opts
        .message
        .iter()
        .map(|p| {
            let base = p.rsplit('/').next().unwrap_or(p);
            base.strip_suffix(".eml").unwrap_or(base).to_string()
        })
        .collect();
    let conc = opts.conc.min(opts.count.max(1));
    let deadline = opts.deadline;
    let sh = Arc::new(Shared {
        opts,
        bodies,
        names,
        date: rfc5322_now(),
        next: AtomicUsize::new(0),
        t0: Instant::now(),
        records: Mutex::new(Vec::new()),
        last_reply: Mutex::new(String::new()),
    });
    let handles: Vec<_> = (0..conc)
        .map(|_| tokio::spawn(worker(sh.clone())))
        .collect();
    let all = async {
        for h in handles {
            let _ = h.await;
        }
    };
    let timed_out = match deadline {
        Some(d) => timeout(d, all).await.is_err(),
        None => {
            all.await;
            false
        }
    };
    let wall = sh.t0.elapsed();
    let recs = std::mem::take(&mut *sh.records.lock().unwrap());
    let count = sh.opts.count;
    let ok: Vec<&Record> = recs.iter().filter(|r| r.error.is_none()).collect();
    let fail = recs.len() - ok.len();
    let aborted = count - recs.len();
    let mut lat: Vec<f64> = ok
        .iter()
        .filter_map(|r| r.latency)
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = if lat.is_empty() {
        f64::NAN
    } else {
        lat.iter().sum::<f64>() / lat.len() as f64
    };
    // Wall time until the last message finished (not the deadline) when everything completed.
    let wall_s = if timed_out {
        wall.as_secs_f64()
    } else {
        recs.iter()
            .map(|r| (r.start + r.session.unwrap_or_default()).as_secs_f64())
            .fold(0.0, f64::max)
            .max(1e-9)
    };
    println!(
        "count={count} ok={} fail={fail} aborted={aborted} wall_s={:.3} mps={:.2} mean_ms={:.2} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        ok.len(),
        wall_s,
        ok.len() as f64 / wall_s,
        mean,
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        lat.last().copied().unwrap_or(f64::NAN),
    );
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for r in &recs {
        if let Some(e) = &r.error {
            *kinds.entry(e.clone()).or_default() += 1;
        }
    }
    if !sh.opts.message.is_empty() {
        eprintln!("reply={}", sh.last_reply.lock().unwrap());
    }
    if timed_out {
        eprintln!("loadgen: deadline reached, {aborted} message(s) unfinished");
    }
    for (k, n) in kinds.iter().take(10) {
        eprintln!("loadgen: {n} x {k}");
    }
    if let Some(path) = &sh.opts.per_msg {
        let mut recs = recs;
        recs.sort_by_key(|r| r.seq);
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(path).expect("create --per-msg file"));
        let _ = writeln!(f, "seq,ident,start_ms,latency_ms,session_ms,code,error");
        let ms = |d: Option<Duration>| {
            d.map(|d| format!("{:.3}", d.as_secs_f64() * 1e3))
                .unwrap_or_default()
        };
        for r in &recs {
            let _ = writeln!(
                f,
                "{},{}{},{:.3},{},{},{},\"{}\"",
                r.seq,
                sh.opts.ident.as_deref().unwrap_or(""),
                r.seq,
                r.start.as_secs_f64() * 1e3,
                ms(r.latency),
                ms(r.session),
                r.code,
                r.error.as_deref().unwrap_or("").replace('"', "'")
            );
        }
    }
    std::process::exit(if fail == 0 && aborted == 0 { 0 } else { 1 });
}
