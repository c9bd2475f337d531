//! The inbound SMTP/LMTP session fed arbitrary client bytes (commands and DATA) over an
//! in-memory pipe, then EOF: it must not panic, must end, and every reply line it writes must be
//! `NNN[ -]text<CRLF>` with a 2xx–5xx code, continuation lines keeping their reply's code.
#![no_main]
// The session future (SMTP, the filter, SQL and the milter seam) nests deeper than rustc's
// default query depth under the fuzzing flags.
#![recursion_limit = "256"]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use postsift::config::Config;
use postsift::smtp::session::Session;
use postsift::Runtime as Shared;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

/// Scanners and metrics off; reinjection to a loopback port where nothing listens (discard, 9),
/// so a message reaching the end of DATA is answered `450 4.4.1` at once; one-second timeouts;
/// a small spool threshold and size limit, so bodies reach the temp file and `552` too.
const CONFIG: &str = r#"
[server]
hostname = "fuzz.example.com"
read_timeout = 1
write_timeout = 1
spool_threshold = 4096
max_message_size = 200000

[reinject]
to = "127.0.0.1:9"
connect_timeout = 1
command_timeout = 1
data_timeout = 1

[clamd]
endpoints = []

[spamd]
endpoints = []

[metrics]
listen = ""

# The fuzzer runs outside the tests' loopback-only namespace: mail authentication would send
# DNS queries to the system's resolver. It is not what this target fuzzes.
[auth]
enabled = false
"#;

/// Far longer than any session may take: once the client has sent everything and closed, and
/// with the reinjection port refusing at once, nothing in a session waits on a timer. A session
/// still running after this is hung.
const BOUND: Duration = Duration::from_secs(20);

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn shared() -> Arc<Shared> {
    static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let config = Config::parse(CONFIG, Path::new("fuzz.toml")).expect("fuzz config");
            let _guard = runtime().enter();
            Arc::new(Shared::new(config, CancellationToken::new()).expect("the runtime"))
        })
        .clone()
}

/// libfuzzer-sys aborts on every panic, even a caught one. The session's MIME walk catches
/// mail-parser's own panics by design (it keeps its raw reading): let those unwind, abort on any
/// other.
fn let_mail_parser_panics_unwind() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| l.file().contains("mail-parser"))
            {
                return;
            }
            fuzzer_hook(info);
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    let_mail_parser_panics_unwind();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:10024".parse().unwrap();
    let shared = shared();
    let replies = runtime().block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let session = Session::new(server, peer, local, shared).run();
        let (mut from_server, mut to_server) = tokio::io::split(client);
        // The server may stop reading (QUIT, too many errors): a failed write is normal.
        let write = async {
            let _ = to_server.write_all(data).await;
            let _ = to_server.shutdown().await;
        };
        let read = async {
            let mut replies = Vec::new();
            from_server
                .read_to_end(&mut replies)
                .await
                .expect("in-memory read");
            replies
        };
        let all = async { tokio::join!(session, write, read).2 };
        tokio::time::timeout(BOUND, all).await
    });
    let Ok(replies) = replies else {
        panic!("session still running {BOUND:?} after the client closed");
    };
    check_replies(&replies);
});

/// Every line is `NNN[ -]…<CRLF>`, 200 ≤ NNN ≤ 599, at most 512 octets, no CR or LF inside a line; a `-` line is
/// followed by a line with the same code; the greeting comes first and the last line is final.
fn check_replies(out: &[u8]) {
    let shown = || String::from_utf8_lossy(&out[out.len().saturating_sub(2000)..]).into_owned();
    assert!(
        out.starts_with(b"220 "),
        "no 220 greeting first: {:?}",
        shown()
    );
    assert!(
        out.ends_with(b"\r\n"),
        "output does not end with CRLF: {:?}",
        shown()
    );
    let mut continued: Option<&[u8]> = None;
    for line in out.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r\n").unwrap_or_else(|| {
            panic!(
                "reply line not ended by CRLF: {:?}",
                String::from_utf8_lossy(line)
            )
        });
        let text = String::from_utf8_lossy(line);
        assert!(!line.contains(&b'\r'), "bare CR in a reply line {text:?}");
        assert!(line.len() >= 4, "reply line too short: {text:?}");
        // RFC 5321 4.5.3.1.5: 512 octets with the CRLF. A client's or a message's string in a
        // reply is escaped and capped (src/escape.rs), so no input makes a longer line.
        assert!(line.len() <= 510, "reply line of {} bytes", line.len());
        let code = &line[..3];
        assert!(
            code.iter().all(u8::is_ascii_digit) && (b'2'..=b'5').contains(&code[0]),
            "reply line without a 2xx-5xx code: {text:?}"
        );
        assert!(
            matches!(line[3], b' ' | b'-'),
            "reply code not followed by space or hyphen: {text:?}"
        );
        if let Some(prev) = continued {
            assert_eq!(prev, code, "multi-line reply changes its code at {text:?}");
        }
        continued = (line[3] == b'-').then_some(code);
    }
    assert!(
        continued.is_none(),
        "output ends inside a multi-line reply: {:?}",
        shown()
    );
}
