//! Tests of the test harness itself (tests/integration/harness.rs): each real peer starts, answers
//! its protocol, and stops without leaving a process behind; a private Postfix instance delivers
//! a message through a content filter to its final destination. The fake filter and sink here are
//! just enough SMTP/LMTP to prove that; they are not the product.
//!
//! Run as root in a loopback-only namespace:
//! `ip netns exec <ns> cargo test --test harness_selftest`.

#[path = "integration/harness.rs"]
mod harness;

use harness::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// helpers

/// Alive = exists and is not a zombie (this sandbox's PID 1 does not reap orphans).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s[s.rfind(')').unwrap() + 1..]
                .trim_start()
                .chars()
                .next()
                .unwrap();
            state != 'Z' && state != 'X'
        }
        Err(_) => false,
    }
}

/// Live processes whose process group is `pgrp`.
fn group_members(pgrp: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let f: Vec<&str> = s[s.rfind(')').unwrap() + 1..].split_whitespace().collect();
        if f[0] != "Z" && f[2] == pgrp.to_string() {
            v.push(pid);
        }
    }
    v
}

/// clamd INSTREAM over the unix socket; returns the reply without the trailing NUL.
fn instream(socket: &Path, data: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut send = || -> std::io::Result<()> {
        s.write_all(b"zINSTREAM\0")?;
        for chunk in data.chunks(64 * 1024) {
            s.write_all(&(chunk.len() as u32).to_be_bytes())?;
            s.write_all(chunk)?;
        }
        s.write_all(&0u32.to_be_bytes())
    };
    // Over StreamMaxLength clamd answers and closes while we still write: EPIPE is expected then.
    let _ = send();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply)
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

/// One SPAMC/1.5 request; returns the whole reply.
fn spamc(addr: SocketAddr, verb: &str, msg: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{verb} SPAMC/1.5\r\nContent-length: {}\r\nUser: nobody\r\n\r\n",
        msg.len()
    )
    .unwrap();
    s.write_all(msg).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
}

/// The score of a `Spam: True ; 1000.3 / 5.0` line.
fn spam_score(reply: &str) -> (bool, f64) {
    let line = reply
        .lines()
        .find(|l| l.starts_with("Spam:"))
        .unwrap_or_else(|| panic!("no Spam: in {reply:?}"));
    let (flag, rest) = line["Spam:".len()..].split_once(';').unwrap();
    let score = rest.split('/').next().unwrap().trim().parse().unwrap();
    (flag.trim() == "True", score)
}

fn message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@example.com>\r\nTo: rcpt@example.org\r\nSubject: {subject}\r\n\
         Date: Fri, 27 Nov 2026 19:00:00 +0000\r\nMessage-ID: <{subject}@example.com>\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// fake SMTP/LMTP peers for the Postfix tests

/// One transaction a fake peer received.
#[derive(Clone, Debug, Default)]
struct Received {
    lmtp: bool,
    helo: String,
    xforward: Vec<String>,
    from: String,
    rcpts: Vec<String>,
    data: Vec<u8>,
    /// Filter role: the reinjection server's end-of-data reply.
    reinjected: Option<(u16, String)>,
}

#[derive(Clone, Copy)]
enum Role {
    /// Final destination: keep the message, answer 250.
    Sink,
    /// Content filter (SMTP or LMTP, by EHLO/LHLO): re-send the message with smtp_send to the
    /// reinjection port, answer (per recipient in LMTP) after that server's reply.
    Filter { reinject: SocketAddr },
}

type Inbox = Arc<Mutex<Vec<Received>>>;

/// Serves `role` on `listener` in background threads (one per connection) until the test ends.
fn serve(listener: TcpListener, role: Role) -> Inbox {
    let inbox: Inbox = Arc::default();
    let ib = inbox.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let ib = ib.clone();
            std::thread::spawn(move || {
                let _ = session(conn, role, ib);
            });
        }
    });
    inbox
}

fn arg_addr(line: &str) -> String {
    let start = line.find('<').map(|i| i + 1).unwrap_or(0);
    let end = line[start..]
        .find('>')
        .map(|i| start + i)
        .unwrap_or(line.len());
    line[start..end].to_string()
}

fn session(conn: TcpStream, role: Role, inbox: Inbox) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    // Not POSTFIX_HOSTNAME, or Postfix reports a mail loop.
    w.write_all(b"220 fake-peer.localdomain ESMTP harness selftest\r\n")?;
    let mut cur = Received::default();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_string();
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" | "LHLO" => {
                cur = Received {
                    lmtp: verb == "LHLO",
                    helo: line[4..].trim().to_string(),
                    ..Default::default()
                };
                w.write_all(
                    b"250-fake-peer.localdomain\r\n250-PIPELINING\r\n250-SIZE 209715200\r\n\
                      250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n\
                      250 XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE\r\n",
                )?;
            }
            "XFORWARD" => {
                cur.xforward.push(line[8..].trim().to_string());
                w.write_all(b"250 2.0.0 Ok\r\n")?;
            }
            "MAIL" => {
                cur.from = arg_addr(&line);
                w.write_all(b"250 2.1.0 Ok\r\n")?;
            }
            "RCPT" => {
                cur.rcpts.push(arg_addr(&line));
                w.write_all(b"250 2.1.5 Ok\r\n")?;
            }
            "DATA" => {
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if r.read_until(b'\n', &mut l)? == 0 {
                        return Ok(());
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    data.extend_from_slice(if l.starts_with(b".") { &l[1..] } else { &l });
                }
                cur.data = data;
                let n = if cur.lmtp { cur.rcpts.len() } else { 1 };
                let reply = match role {
                    Role::Sink => "250 2.0.0 Ok: captured".to_string(),
                    Role::Filter { reinject } => {
                        let rcpts: Vec<&str> = cur.rcpts.iter().map(String::as_str).collect();
                        let replies = smtp_send(reinject, &cur.from, &rcpts, &cur.data);
                        let eod = replies
                            .iter()
                            .position(|r| r.0 == 354)
                            .and_then(|i| replies.get(i + 1))
                            .cloned();
                        cur.reinjected = eod.clone();
                        match eod {
                            Some((250, text)) => format!("250 2.0.0 Ok, reinjected: {text}"),
                            other => format!("451 4.3.0 reinjection failed: {other:?} {replies:?}"),
                        }
                    }
                };
                let reply = reply.replace(['\r', '\n'], " ");
                for _ in 0..n {
                    w.write_all(format!("{reply}\r\n").as_bytes())?;
                }
                let helo = cur.helo.clone();
                let lmtp = cur.lmtp;
                inbox.lock().unwrap().push(std::mem::take(&mut cur));
                cur.helo = helo;
                cur.lmtp = lmtp;
            }
            "RSET" => {
                cur = Received {
                    lmtp: cur.lmtp,
                    helo: cur.helo.clone(),
                    ..Default::default()
                };
                w.write_all(b"250 2.0.0 Ok\r\n")?;
            }
            "NOOP" => w.write_all(b"250 2.0.0 Ok\r\n")?,
            "QUIT" => {
                w.write_all(b"221 2.0.0 Bye\r\n")?;
                return Ok(());
            }
            _ => w.write_all(b"502 5.5.2 Error: command not recognized\r\n")?,
        }
    }
}

fn bind_local() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// Sends a message into `pf`'s front smtpd and asserts it was queued.
fn submit(pf: &Postfix, subject: &str, rcpts: &[&str]) -> Vec<u8> {
    let body = message(
        subject,
        "line one\r\n.a line that starts with a dot\r\nlast line",
    );
    let replies = smtp_send(pf.smtp_addr(), "sender@example.com", rcpts, &body);
    let n = replies.len();
    assert!(n >= 2, "{replies:?}");
    assert_eq!(replies[n - 2].0, 250, "end of data: {replies:?}");
    assert!(replies[n - 2].1.contains("queued as"), "{replies:?}");
    assert_eq!(replies[n - 1].0, 221, "{replies:?}");
    body
}

fn wait_inbox(inbox: &Inbox, n: usize, pf: &Postfix) -> Vec<Received> {
    if !wait_until(Duration::from_secs(60), || inbox.lock().unwrap().len() >= n) {
        panic!(
            "{} message(s) expected, got {:?}\n{}",
            n,
            inbox.lock().unwrap(),
            pf.log()
        );
    }
    inbox.lock().unwrap().clone()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Postfix → fake filter (LMTP or SMTP) → reinjection port → fake sink; checks what arrives.
fn delivers_through_filter(lmtp: bool) {
    let (sink_l, sink_addr) = bind_local();
    let sink = serve(sink_l, Role::Sink);
    let (filter_l, filter_addr) = bind_local();
    // The filter needs the reinjection port, known only after start: start first, serve after
    // (Postfix simply waits/retries until the filter port answers).
    let pf = Postfix::start(PostfixOpts {
        filter: filter_addr,
        filter_lmtp: lmtp,
        final_dest: sink_addr,
    });
    let filter = serve(
        filter_l,
        Role::Filter {
            reinject: pf.reinject_addr(),
        },
    );

    let subject = if lmtp { "via-lmtp" } else { "via-smtp" };
    let rcpts = ["one@example.org", "two@example.net"];
    let sent = submit(&pf, subject, &rcpts);

    let got = wait_inbox(&sink, 1, &pf);
    assert_eq!(got.len(), 1, "{got:?}");
    let m = &got[0];
    assert_eq!(m.from, "sender@example.com");
    let mut r = m.rcpts.clone();
    r.sort();
    assert_eq!(r, ["one@example.org", "two@example.net"]);
    assert!(!m.lmtp, "final delivery is SMTP");
    assert_eq!(m.helo, POSTFIX_HOSTNAME);
    // body intact, dot-stuffing undone on every hop
    assert!(
        contains(&m.data, "\r\n.a line that starts with a dot\r\n"),
        "{}",
        String::from_utf8_lossy(&m.data)
    );
    assert!(contains(&m.data, &format!("Subject: {subject}\r\n")));
    assert!(m.data.ends_with(b"last line\r\n"));
    // two passes through Postfix: front smtpd, then the reinjection smtpd
    let received = String::from_utf8_lossy(&m.data)
        .matches("by postfix-test.localdomain (Postfix)")
        .count();
    assert_eq!(received, 2, "{}", String::from_utf8_lossy(&m.data));
    assert!(m.data.len() > sent.len());

    let f = filter.lock().unwrap().clone();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].lmtp, lmtp, "feed protocol: {f:?}");
    assert!(
        f[0].xforward.iter().any(|x| x.contains("ADDR=127.0.0.1")),
        "XFORWARD sent to the filter: {f:?}"
    );
    assert!(f[0].xforward.iter().any(|x| x.contains("IDENT=")), "{f:?}");
    assert_eq!(f[0].reinjected.as_ref().map(|r| r.0), Some(250));

    let log = pf.log();
    let feed = if lmtp {
        "postfix/postsift-lmtp"
    } else {
        "postfix/postsift-smtp"
    };
    assert!(
        log.contains(feed)
            && log.contains(&format!(
                "relay=127.0.0.1[127.0.0.1]:{}",
                filter_addr.port()
            )),
        "{log}"
    );
    assert!(
        log.contains(&format!("relay=127.0.0.1[127.0.0.1]:{}", sink_addr.port())),
        "{log}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || pf.queue_count() == 0),
        "queue not empty\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// clamd

#[test]
fn clamd_finds_eicar_in_a_message_and_clam_exe_in_a_zip() {
    let clamd = Clamd::start();
    assert!(clamd.ping());

    let eicar_mail = message("eicar", &format!("Hello,\r\n\r\n{EICAR}\r\n\r\nbye"));
    assert_eq!(
        instream(&clamd.socket, &eicar_mail),
        format!("stream: {CLAMD_EICAR} FOUND")
    );

    let zip = std::fs::read(Path::new(CLAMAV_TESTFILES).join("clam.zip"))
        .expect("clamav-testfiles installed");
    assert_eq!(
        instream(&clamd.socket, &zip),
        format!("stream: {CLAMD_CLAMEXE} FOUND")
    );

    assert_eq!(
        instream(&clamd.socket, &message("clean", "nothing to see")),
        "stream: OK"
    );
}

#[test]
fn clamd_stream_max_length_is_configurable_and_stop_leaves_nothing() {
    let mut clamd = Clamd::start_with("1M");
    let big = vec![b'a'; 2 * 1024 * 1024];
    let reply = instream(&clamd.socket, &big);
    assert!(reply.contains("INSTREAM size limit exceeded"), "{reply}");
    assert_eq!(
        instream(&clamd.socket, &vec![b'a'; 512 * 1024]),
        "stream: OK"
    );

    let pid = clamd.pid().unwrap();
    let dir = clamd.dir.clone();
    clamd.stop();
    assert!(!alive(pid));
    assert!(!clamd.ping());
    drop(clamd);
    assert!(!dir.exists() || std::env::var_os("POSTSIFT_KEEP_TEST_DIRS").is_some());
}

// ---------------------------------------------------------------------------------------------
// spamd

#[test]
fn spamd_scores_gtube_and_stops_cleanly() {
    let mut spamd = Spamd::start();
    assert!(spamd.ping());

    let reply = spamc(
        spamd.addr,
        "CHECK",
        &message("gtube", &format!("Buy now\r\n{GTUBE}")),
    );
    assert!(reply.starts_with("SPAMD/1.1 0 EX_OK\r\n"), "{reply}");
    let (spam, score) = spam_score(&reply);
    assert!(spam && score >= 1000.0, "{reply}");

    let reply = spamc(
        spamd.addr,
        "SYMBOLS",
        &message(
            "ham",
            "Hello Bob, see you tomorrow at the meeting.\r\nAlice",
        ),
    );
    let (spam, score) = spam_score(&reply);
    assert!(!spam && score < 5.0, "{reply}");

    let pid = spamd.pid().unwrap();
    let addr = spamd.addr;
    spamd.stop();
    assert!(!alive(pid));
    assert!(!port_open(addr), "spamd port still open");
    assert!(
        !std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read_to_string(e.path().join("cmdline"))
                .is_ok_and(|c| c.contains(&format!("--listen={addr}")))
                && e.file_name()
                    .to_str()
                    .and_then(|p| p.parse().ok())
                    .is_some_and(alive)
        }),
        "a spamd process survived"
    );
}

// ---------------------------------------------------------------------------------------------
// Postfix

#[test]
fn postfix_lmtp_feed_delivers_through_filter_to_final_dest() {
    delivers_through_filter(true);
}

#[test]
fn postfix_smtp_feed_delivers_through_filter_to_final_dest() {
    delivers_through_filter(false);
}

#[test]
fn postfix_keeps_mail_while_filter_is_down_and_flush_delivers_it() {
    let (sink_l, sink_addr) = bind_local();
    let sink = serve(sink_l, Role::Sink);
    let filter_port = free_port(); // nothing listens there yet
    let filter_addr = SocketAddr::from(([127, 0, 0, 1], filter_port));
    let pf = Postfix::start(PostfixOpts {
        filter: filter_addr,
        filter_lmtp: true,
        final_dest: sink_addr,
    });

    submit(&pf, "deferred", &["rcpt@example.org"]);
    assert!(
        pf.wait_for_log("status=deferred", Duration::from_secs(30)),
        "{}",
        pf.log()
    );
    assert_eq!(pf.queue_count(), 1, "{}", pf.log());

    let filter_l = TcpListener::bind(filter_addr).expect("filter port still free");
    let _filter = serve(
        filter_l,
        Role::Filter {
            reinject: pf.reinject_addr(),
        },
    );
    pf.flush();
    let got = wait_inbox(&sink, 1, &pf);
    assert!(contains(&got[0].data, "Subject: deferred\r\n"));
    assert!(
        wait_until(Duration::from_secs(10), || pf.queue_count() == 0),
        "{}",
        pf.log()
    );
}

#[test]
fn postfix_config_passes_postfix_check_and_postconf_changes_it() {
    let (sink_l, sink_addr) = bind_local();
    let sink = serve(sink_l, Role::Sink);
    let nobody = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let pf = Postfix::start(PostfixOpts {
        filter: nobody,
        filter_lmtp: true,
        final_dest: sink_addr,
    });
    let out = std::process::Command::new("postfix")
        .arg("-c")
        .arg(pf.etc())
        .arg("check")
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && complaints.is_empty(),
        "{complaints}"
    );

    // without the content filter, mail goes straight to the final destination (one pass)
    pf.postconf(&["content_filter ="]);
    submit(&pf, "unfiltered", &["r@example.org"]);
    let got = wait_inbox(&sink, 1, &pf);
    let text = String::from_utf8_lossy(&got[0].data);
    assert_eq!(
        text.matches("by postfix-test.localdomain (Postfix)")
            .count(),
        1,
        "{text}"
    );
    assert!(!pf.log().contains("warning"), "{}", pf.log());
}

#[test]
fn two_postfix_instances_run_side_by_side_and_stop_completely() {
    let (sink_l, sink_addr) = bind_local();
    let sink = serve(sink_l, Role::Sink);
    let (fl1, fa1) = bind_local();
    let (fl2, fa2) = bind_local();
    let mut a = Postfix::start(PostfixOpts {
        filter: fa1,
        filter_lmtp: true,
        final_dest: sink_addr,
    });
    let b = Postfix::start(PostfixOpts {
        filter: fa2,
        filter_lmtp: false,
        final_dest: sink_addr,
    });
    assert_ne!(a.dir, b.dir);
    let ports = [a.smtp_port, a.reinject_port, b.smtp_port, b.reinject_port];
    for (i, p) in ports.iter().enumerate() {
        assert!(!ports[i + 1..].contains(p), "{ports:?}");
    }
    let _f1 = serve(
        fl1,
        Role::Filter {
            reinject: a.reinject_addr(),
        },
    );
    let _f2 = serve(
        fl2,
        Role::Filter {
            reinject: b.reinject_addr(),
        },
    );
    submit(&a, "instance-a", &["x@example.org"]);
    submit(&b, "instance-b", &["y@example.org"]);
    let got = wait_inbox(&sink, 2, &a);
    assert!(got.iter().any(|m| contains(&m.data, "Subject: instance-a")));
    assert!(got.iter().any(|m| contains(&m.data, "Subject: instance-b")));
    assert!(
        a.log().contains("instance-a@example.com") && !a.log().contains("instance-b@example.com")
    );
    assert!(
        b.log().contains("instance-b@example.com") && !b.log().contains("instance-a@example.com")
    );

    let (pa, pb) = (a.master_pid().unwrap(), b.master_pid().unwrap());
    assert!(!group_members(pa).is_empty());
    a.stop();
    assert!(
        !alive(pa) && group_members(pa).is_empty(),
        "instance a left {:?}",
        group_members(pa)
    );
    assert!(!port_open(a.smtp_addr()) && !port_open(a.reinject_addr()));
    // b is unaffected by a's stop
    assert!(alive(pb) && port_open(b.smtp_addr()));
    let dir_b = b.dir.clone();
    drop(b);
    assert!(
        !alive(pb) && group_members(pb).is_empty(),
        "instance b left {:?}",
        group_members(pb)
    );
    assert!(!dir_b.exists() || std::env::var_os("POSTSIFT_KEEP_TEST_DIRS").is_some());
}

#[test]
fn drop_during_a_panicking_test_stops_the_daemons() {
    let pids = Arc::new(Mutex::new(Vec::new()));
    let p = pids.clone();
    let (_l, sink_addr) = bind_local();
    let r = std::thread::spawn(move || {
        let clamd = Clamd::start();
        p.lock().unwrap().push(clamd.pid().unwrap());
        let pf = Postfix::start(PostfixOpts {
            filter: sink_addr,
            filter_lmtp: true,
            final_dest: sink_addr,
        });
        p.lock().unwrap().push(pf.master_pid().unwrap());
        panic!("deliberate panic with live peers");
    })
    .join();
    assert!(r.is_err());
    let pids = pids.lock().unwrap().clone();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived the panic");
        assert!(
            group_members(pid).is_empty(),
            "group {pid} survived the panic"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// the SMTP client

#[test]
fn dot_stuff_normalises_line_ends_and_doubles_leading_dots() {
    assert_eq!(dot_stuff(b".a\n.b\r\nc"), b"..a\r\n..b\r\nc\r\n");
    assert_eq!(dot_stuff(b"x\r\n.\r\n"), b"x\r\n..\r\n");
    assert_eq!(dot_stuff(b"bare\rcr\n"), b"bare\rcr\r\n");
    assert_eq!(dot_stuff(b""), b"\r\n");
}

#[test]
fn smtp_send_reports_every_reply_and_stops_after_rejections() {
    let (l, addr) = bind_local();
    let inbox = serve(l, Role::Sink);
    let replies = smtp_send(
        addr,
        "a@example.com",
        &["b@example.org", "c@example.org"],
        b"Subject: x\n\nhi\n",
    );
    let codes: Vec<u16> = replies.iter().map(|r| r.0).collect();
    assert_eq!(
        codes,
        [220, 250, 250, 250, 250, 354, 250, 221],
        "{replies:?}"
    );
    assert!(replies[1].1.contains("250-PIPELINING\n") && replies[1].1.ends_with("IDENT SOURCE"));
    assert_eq!(inbox.lock().unwrap()[0].data, b"Subject: x\r\n\r\nhi\r\n");

    // a server that rejects MAIL: no RCPT, no DATA
    let (l, addr) = bind_local();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        s.write_all(b"220 x ESMTP\r\n").unwrap();
        for reply in ["250 x\r\n", "550 5.7.1 no\r\n", "221 bye\r\n"] {
            line.clear();
            r.read_line(&mut line).unwrap();
            s.write_all(reply.as_bytes()).unwrap();
        }
    });
    let codes: Vec<u16> = smtp_send(addr, "a@example.com", &["b@example.org"], b"x")
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(codes, [220, 250, 550, 221]);
}
