//! The MIME walk's own CPU per message, measured (not asserted): `parts::walk` run many times
//! on each message file given, with the default `[parts]` limits, printing the CPU time per
//! walk (this thread's user + system time) and what the walk found.
//!   cargo run --release --example walkcost -- MESSAGE.eml... [-n N]

use std::time::Duration;

use postsift::scan::parts;

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut n = 2000;
    if let Some(i) = args.iter().position(|a| a == "-n") {
        n = args[i + 1].parse().expect("-n N");
        args.drain(i..=i + 1);
    }
    let limits = parts::Limits::from_config(&postsift::config::Parts::default());
    let spool = std::env::temp_dir();
    for path in &args {
        let raw = std::fs::read(path).expect("message file");
        let w = parts::walk(&raw, &limits, &spool).expect("walk");
        println!("{path}: {} bytes, {} parts", raw.len(), w.parts.len());
        for p in &w.parts {
            println!(
                "  {:<5} {:<28} {:<24} verbatim={} {} bytes{}",
                p.found,
                p.declared.as_deref().unwrap_or("-"),
                p.name.as_deref().unwrap_or("-"),
                p.verbatim,
                p.contents.len(),
                if p.containers.is_empty() {
                    ""
                } else {
                    " (member)"
                },
            );
        }
        let t0 = thread_cpu();
        for _ in 0..n {
            std::hint::black_box(parts::walk(&raw, &limits, &spool).expect("walk"));
        }
        let per = (thread_cpu() - t0).as_secs_f64() * 1e6 / n as f64;
        println!("  walk: {per:.1} µs CPU per message ({n} walks)");
    }
}
