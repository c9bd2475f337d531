//! Policy-protocol load generator: `policyload ADDR CONNECTIONS SECONDS [NEW_PERCENT] [POOL]
//! [FILL] [WARM]`. Each connection sends one request at a time, as a Postfix smtpd does, and waits for
//! its answer. A request is a repeat of one of POOL triplets (default 1000, warmed up first),
//! or with NEW_PERCENT % probability (default 5) a triplet never seen before. With WARM=1
//! (default) the pool is sent once before the run; SECONDS=0 only warms. (Warm, wait out the
//! delay, warm again: the pool's triplets have passed, so repeats are answered DUNNO.) Prints one line:
//! `requests=N rps=R p50_us=… p99_us=… max_us=… deferred=… dunno=…`.
//! With FILL=n, instead sends n new triplets as fast as it can (for the memory test) and prints
//! `filled=n rps=R`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn request(client: u32, sender: u64, rcpt: u64) -> String {
    let ip = format!("10.{}.{}.{}", (client >> 16) & 255, (client >> 8) & 255, client & 255);
    format!(
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
         client_address={ip}\nclient_name=unknown\nreverse_client_name=unknown\n\
         helo_name=mx{client}.example\nsender=s{sender}@sender.example\n\
         recipient=r{rcpt}@rcpt.example\nrecipient_count=0\nqueue_id=\ninstance=i{sender}.{rcpt}\n\
         size=0\netrn_domain=\nstress=\n\n"
    )
}

/// xorshift: no rand crate needed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn ask(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    req: &str,
    line: &mut String,
) -> std::io::Result<bool> {
    w.write_all(req.as_bytes()).await?;
    line.clear();
    r.read_line(line).await?;
    let deferred = line.starts_with("action=DEFER");
    let mut blank = String::new();
    r.read_line(&mut blank).await?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(deferred)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: policyload ADDR CONNECTIONS SECONDS [NEW_PERCENT] [POOL] [FILL]");
        std::process::exit(64);
    }
    let addr: SocketAddr = args[1].parse().expect("ADDR");
    let conns: u64 = args[2].parse().expect("CONNECTIONS");
    let secs: u64 = args[3].parse().expect("SECONDS");
    let new_pct: u64 = args.get(4).map_or(5, |a| a.parse().expect("NEW_PERCENT"));
    let pool: u64 = args.get(5).map_or(1000, |a| a.parse().expect("POOL"));
    let fill: u64 = args.get(6).map_or(0, |a| a.parse().expect("FILL"));
    let warm = args.get(7).is_none_or(|a| a != "0");
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;

    if fill > 0 {
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                let next = next.clone();
                tokio::spawn(async move {
                    let s = TcpStream::connect(addr).await.expect("connect");
                    let _ = s.set_nodelay(true);
                    let (r, mut w) = s.into_split();
                    let mut r = BufReader::new(r);
                    let mut line = String::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= fill {
                            break;
                        }
                        let req = request((i % 65536) as u32, run_id ^ i, i);
                        ask(&mut r, &mut w, &req, &mut line).await.expect("answer");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let el = start.elapsed().as_secs_f64();
        println!("filled={fill} rps={:.0}", fill as f64 / el);
        return;
    }

    // Warm the pool up (not measured): every pool triplet is known.
    if warm {
        let s = TcpStream::connect(addr).await.expect("connect");
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        let mut line = String::new();
        for i in 0..pool {
            let req = request((i % 256) as u32, i, i);
            ask(&mut r, &mut w, &req, &mut line).await.expect("warm-up");
        }
    }
    if secs == 0 {
        println!("warmed={pool}");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            tokio::spawn(async move {
                let s = TcpStream::connect(addr).await.expect("connect");
                let _ = s.set_nodelay(true);
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let mut line = String::new();
                let mut rng = Rng(run_id ^ (c + 1).wrapping_mul(0x9E3779B97F4A7C15));
                let mut lat = Vec::with_capacity(1 << 16);
                let (mut deferred, mut fresh) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let req = if rng.next() % 100 < new_pct {
                        fresh += 1;
                        request((rng.next() % 65536) as u32, run_id ^ (c << 40) ^ fresh, rng.next())
                    } else {
                        let i = rng.next() % pool;
                        request((i % 256) as u32, i, i)
                    };
                    let t = Instant::now();
                    if ask(&mut r, &mut w, &req, &mut line).await.expect("answer") {
                        deferred += 1;
                    }
                    lat.push(t.elapsed().as_micros() as u64);
                }
                (lat, deferred)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut deferred = 0;
    for t in tasks {
        let (l, d) = t.await.unwrap();
        all.extend(l);
        deferred += d;
    }
    let el = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "requests={} rps={:.0} p50_us={} p99_us={} max_us={} deferred={} dunno={}",
        all.len(),
        all.len() as f64 / el,
        pct(0.50),
        pct(0.99),
        all.last().unwrap(),
        deferred,
        all.len() as u64 - deferred
    );
}
