//! What clamd's per-part scanning costs, measured (not asserted; `--ignored` to run): the same
//! multipart message scanned whole only, whole plus each decoded part on a connection of its
//! own (INSTREAM each, as before IDSESSION), and whole plus parts in one `IDSESSION` — wall
//! time and clamd's CPU per message.
//!   scripts/test.sh --test integration clamd_cost -- --ignored --nocapture

use std::time::Instant;

use bytes::Bytes;
use postsift::message::Message;
use postsift::scan::clamd::ClamdClient;
use postsift::scan::parts::Contents;

use crate::peers::{self, Peer};
use crate::util;

/// clamd's user + system CPU so far, in milliseconds (from /proc/<pid>/stat).
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks * 1000.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn clamd_session_cost() {
    let clamd = tokio::task::spawn_blocking(peers::Clamd::start)
        .await
        .unwrap();
    let pid = clamd.pid().unwrap();
    let ep = clamd.socket.display().to_string();
    let client = ClamdClient::new(
        std::slice::from_ref(&ep),
        std::time::Duration::from_secs(5),
        std::time::Duration::from_secs(60),
    );
    // Decoded parts as the walk would give them: a text, a PDF-like file, a zip-like file.
    let mut pdf = b"%PDF-1.4\n".to_vec();
    pdf.extend(util::noise(30_000, 1));
    let mut zip = b"PK\x03\x04".to_vec();
    zip.extend(util::noise(20_000, 2));
    let parts: Vec<Bytes> = vec![
        Bytes::from("Dear reader, the minutes are attached.\r\n".repeat(50)),
        Bytes::from(pdf),
        Bytes::from(zip),
    ];
    let mut raw = b"From: a@example.org\r\nSubject: minutes\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n".to_vec();
    for p in &parts {
        raw.extend_from_slice(b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n");
        for line in util::base64(p).as_bytes().chunks(76) {
            raw.extend_from_slice(line);
            raw.extend_from_slice(b"\r\n");
        }
    }
    raw.extend_from_slice(b"--b--\r\n");
    let msg = Message::from_bytes(&raw);
    let contents: Vec<Contents> = parts.iter().map(|p| p.to_vec().into()).collect();
    let n = 300;
    println!(
        "{n} messages of {} bytes with {} parts ({} bytes decoded), one at a time:",
        raw.len(),
        parts.len(),
        parts.iter().map(|p| p.len()).sum::<usize>()
    );
    for mode in [
        "whole only",
        "whole + parts, a connection each",
        "whole + parts, one IDSESSION",
    ] {
        // Warm-up, then measure.
        for round in 0..2 {
            let (c0, t0) = (cpu_ms(pid), Instant::now());
            for _ in 0..if round == 0 { 20 } else { n } {
                match mode {
                    "whole only" => {
                        client.scan(&msg).await.unwrap();
                    }
                    "whole + parts, a connection each" => {
                        client.scan(&msg).await.unwrap();
                        for p in &parts {
                            let r = clamav_client::tokio::scan_buffer(
                                p,
                                clamav_client::tokio::Socket {
                                    socket_path: clamd.socket.as_path(),
                                },
                                None,
                            )
                            .await
                            .unwrap();
                            assert!(clamav_client::clean(&r).unwrap());
                        }
                    }
                    _ => {
                        let refs: Vec<&Contents> = contents.iter().collect();
                        assert_eq!(client.scan_with_parts(&msg, &refs).await.unwrap(), None);
                    }
                }
            }
            if round == 1 {
                let wall = t0.elapsed().as_secs_f64();
                println!(
                    "  {mode:<36} {:>7.1} msgs/s   clamd CPU {:>5.2} ms/msg",
                    n as f64 / wall,
                    (cpu_ms(pid) - c0) / n as f64
                );
            }
        }
    }
}
