//! DKIM signing of outgoing mail, against a real DNS server: keys made by `postsift dkim
//! genkey` (RSA 2048, RSA 3072, Ed25519), their printed TXT records published in a private
//! unbound; messages sent on an originating listener, or on the inbound one with XFORWARD ADDR
//! inside or outside `[dkim_sign] networks`; what reaches the reinjection sink verified by
//! mail-auth (a second, inbound postsift's Authentication-Results) and by an independent
//! verifier, Python's dkimpy (Debian's python3-dkim) asking the same unbound.
//!
//! Why not opendkim: Debian 12's `opendkim-testmsg` (2.11.0~beta2-8+deb12u1) answers
//! `dkim_chunk(): Syntax error` (exit 70) to every message, in signing mode as well as in
//! verifying mode, LF or CRLF line ends, so it cannot verify anything; and it asks the
//! resolv.conf name server on port 53 only. dkimpy verifies with a resolver function, which is
//! pointed at the private unbound here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::capture::{Capture, Transaction};
use crate::client::Client;
use crate::peers::unbound::Unbound;
use crate::test_config::TestConfig;
use crate::util::{self, config, spamd, start_filter, start_two};

struct World {
    dns: Unbound,
    /// Holds the key files.
    dir: tempfile::TempDir,
}

impl World {
    fn key(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Runs `postsift dkim genkey`; returns the printed record as unbound `local-data`.
fn genkey(dir: &Path, domain: &str, selector: &str, algorithm: &str, bits: u32) -> String {
    let file = dir.join(format!("{selector}.{domain}.pem"));
    let out = util::postsift_cmd()
        .args(["dkim", "genkey", "--domain", domain, "--selector", selector])
        .args([
            "--algorithm",
            algorithm,
            "--bits",
            &bits.to_string(),
            "--out",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "genkey: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode");
    // `s._domainkey.d. IN TXT ( "…" "…" )`, the strings at most 255 bytes each.
    let (name, rest) = stdout.split_once(" IN TXT ( ").expect("a TXT record");
    assert_eq!(name, format!("{selector}._domainkey.{domain}."));
    let strings = rest.trim_end().strip_suffix(')').unwrap().trim();
    for s in strings.split_whitespace() {
        assert!(s.len() <= 257, "{s}");
    }
    let strings = strings.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("{name} 3600 IN TXT {strings}")
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let records = vec![
            genkey(d, "sign.test", "r2048", "rsa-sha256", 2048),
            genkey(d, "both.test", "r3072", "rsa-sha256", 3072),
            genkey(d, "both.test", "ed", "ed25519-sha256", 0),
            "sign.test. 3600 IN TXT \"v=spf1 -all\"".to_string(),
        ];
        World {
            dns: Unbound::start(&records, None),
            dir,
        }
    })
}

/// The filter's config: spamd, the test DNS server, signing on for listener 127.0.0.1:10026
/// and the network 192.0.2.0/24, keys for sign.test and both.test; `extra` appended.
fn sign_config(sink: &Capture, extra: &str) -> String {
    let spamd = spamd();
    config(
        None,
        Some(&spamd),
        sink.addr,
        &signing("[\"127.0.0.1:10026\"]", extra),
    )
}

/// [`sign_config`]'s sections after the peers: the test DNS server, signing (on for the
/// `originating` listeners, a TOML array, and the network 192.0.2.0/24), the keys.
fn signing(originating: &str, extra: &str) -> String {
    let w = world();
    let key = |n: &str| w.key(n).display().to_string();
    format!(
        "[auth]\nauthserv_id = \"mx.test.local\"\n\
             [dns]\nservers = [\"{dns}\"]\ntimeout = 1\nattempts = 1\n\
             [dkim_sign]\nenabled = true\noriginating_listeners = {originating}\n\
             networks = [\"192.0.2.0/24\"]\n\
             [[dkim_sign.keys]]\ndomain = \"sign.test\"\nselector = \"r2048\"\nkey = \"{k1}\"\n\
             [[dkim_sign.keys]]\ndomain = \"both.test\"\nselector = \"r3072\"\nkey = \"{k2}\"\n\
             [[dkim_sign.keys]]\ndomain = \"both.test\"\nselector = \"ed\"\nkey = \"{k3}\"\n\
             algorithm = \"ed25519-sha256\"\n{extra}",
        dns = w.dns.addr,
        k1 = key("r2048.sign.test.pem"),
        k2 = key("r3072.both.test.pem"),
        k3 = key("ed.both.test.pem"),
    )
}

fn message(from: &str, subject: &str, body: &str) -> String {
    format!(
        "Received: from submit.example (submit.example [192.0.2.10])\r\n\tby mx; Wed, 2 Dec 2026 01:00:00 +0000\r\n\
         From: Ann Example <{from}>\r\nTo: <b@example.net>\r\nCc: c@example.net\r\n\
         Subject: {subject}\r\nDate: Wed, 02 Dec 2026 01:00:00 +0000\r\n\
         Message-ID: <{subject}@sign.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n{body}"
    )
}

/// One message (with XFORWARD if given); asserts the 250.
async fn send(addr: SocketAddr, xforward: Option<&str>, from: &str, data: &str) {
    let mut c = Client::greeted(addr).await;
    c.expect("EHLO test.local", 250).await;
    if let Some(x) = xforward {
        c.expect(&format!("XFORWARD {x}"), 250).await;
    }
    c.expect(&format!("MAIL FROM:<{from}>"), 250).await;
    c.expect("RCPT TO:<b@example.net>", 250).await;
    c.expect("DATA", 354).await;
    c.body(data.as_bytes()).await;
    let r = c.reply().await;
    assert_eq!(r.code, 250, "{r:?}");
    let _ = c.cmd("QUIT").await;
}

/// The `DKIM-Signature` fields of a reinjected message, unfolded.
fn signatures(t: &Transaction) -> Vec<String> {
    let h = t.headers();
    let mut out: Vec<String> = Vec::new();
    for line in h.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut().filter(|_| !line.is_empty()) {
                if last.starts_with("DKIM-Signature:") {
                    last.push_str(line);
                }
            }
        } else {
            out.push(line.to_string());
        }
    }
    out.retain(|l| l.starts_with("DKIM-Signature:"));
    out
}

/// dkimpy's verdict on every DKIM signature of `data`, asking the test DNS server: "pass" or
/// "fail" per signature, in order.
fn dkimpy(data: &[u8]) -> Vec<String> {
    const SCRIPT: &str = r#"
import sys, dkim, dns.resolver
r = dns.resolver.Resolver(configure=False)
r.nameservers = ["127.0.0.1"]
r.port = int(sys.argv[1])
def txt(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    return b"".join(b"".join(x.strings) for x in r.resolve(name, "TXT"))
msg = sys.stdin.buffer.read()
d = dkim.DKIM(msg)
n = sum(1 for k, _ in d.headers if k.lower() == b"dkim-signature")
def one(i):
    try:
        return "pass" if d.verify(idx=i, dnsfunc=txt) else "fail"
    except dkim.ValidationError:
        return "fail"
print(" ".join(one(i) for i in range(n)))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT, &world().dns.addr.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with dkimpy (python3-dkim)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dkimpy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// mail-auth's verdict: `data` sent through an inbound postsift (auth on, no signing), its
/// Authentication-Results unfolded.
async fn mail_auth(data: &[u8], from: &str) -> String {
    let sink = Capture::start().await;
    let toml = config(
        None,
        None,
        sink.addr,
        &format!(
            "[auth]\nauthserv_id = \"verify.test.local\"\n\
             [dns]\nservers = [\"{}\"]\ntimeout = 1\nattempts = 1\n",
            world().dns.addr
        ),
    );
    let f = start_filter(&toml).await;
    send(
        f.addr,
        Some("ADDR=203.0.113.5 HELO=out.sign.test"),
        from,
        std::str::from_utf8(data).unwrap(),
    )
    .await;
    let h = sink.last().headers();
    f.stop().await;
    let start = h
        .find("Authentication-Results: verify.test.local;")
        .unwrap_or_else(|| panic!("no Authentication-Results in {h}"));
    let mut out = String::new();
    for (i, line) in h[start..].split("\r\n").enumerate() {
        if i > 0 && !line.starts_with([' ', '\t']) {
            break;
        }
        out.push_str(line.trim_start());
        out.push(' ');
    }
    out
}

/// GTUBE from the originating listener: spam-tagged (subject, X-Spam-*), Authentication-Results
/// and Received added, and signed over all that: the message as reinjected verifies with
/// mail-auth and with dkimpy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn originating_mail_is_signed_after_rewrite_and_verifies_independently() {
    let sink = Capture::start().await;
    let (f, originating) = start_two(&sign_config(&sink, "")).await;
    let gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
    let data = message(
        "ann@sign.test",
        "gtube",
        &format!("Hello,\r\n\r\n{gtube}\r\n\r\n.leading dot\r\n"),
    );
    send(originating, None, "ann@sign.test", &data).await;
    let t = sink.last();
    let h = t.headers();
    assert!(
        h.starts_with("DKIM-Signature: "),
        "the signature goes on top: {h}"
    );
    assert!(h.contains("Subject: ***Spam*** gtube"), "{h}");
    assert!(h.contains("X-Spam-Flag: YES"), "{h}");
    let sigs = signatures(&t);
    assert_eq!(sigs.len(), 1, "{sigs:?}");
    let s = sigs[0].replace([' ', '\t'], "");
    for tag in [
        "d=sign.test;",
        "s=r2048;",
        "a=rsa-sha256;",
        "c=relaxed/relaxed;",
    ] {
        assert!(s.contains(tag), "{tag} in {s}");
    }
    // The headers present in the default set, each once, and From once more; nothing absent.
    let hlist = s.split("h=").nth(1).unwrap().split(';').next().unwrap();
    let names: Vec<String> = hlist.split(':').map(|x| x.to_ascii_lowercase()).collect();
    for n in [
        "from",
        "to",
        "cc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
    ] {
        assert!(names.contains(&n.to_string()), "{n} in h={hlist}");
    }
    assert_eq!(names.iter().filter(|n| *n == "from").count(), 2, "{hlist}");
    assert!(!names.contains(&"reply-to".to_string()), "{hlist}");
    assert!(!names.contains(&"x-spam-flag".to_string()), "{hlist}");

    assert_eq!(dkimpy(&t.data), ["pass"], "dkimpy");
    let ar = mail_auth(&t.data, "ann@sign.test").await;
    assert!(
        ar.contains("dkim=pass header.d=sign.test header.s=r2048"),
        "mail-auth: {ar}"
    );
    // The control: the same message with one body byte changed fails both.
    let text = t.text().replacen("Hello,", "Hellx,", 1);
    assert_eq!(
        dkimpy(text.as_bytes()),
        ["fail"],
        "dkimpy on a changed body"
    );
    let ar = mail_auth(text.as_bytes(), "ann@sign.test").await;
    // mail-auth reports a body hash mismatch as neutral (RFC 6376 6.3: the signature is not
    // verified), never pass.
    assert!(
        !ar.contains("dkim=pass") && ar.contains("body hash did not verify"),
        "mail-auth on a changed body: {ar}"
    );
    f.stop().await;
}

/// On the inbound listener only a client in `networks` (XFORWARD ADDR) gets its mail signed;
/// no XFORWARD, `[UNAVAILABLE]` and other networks do not. A From domain without a key passes
/// unsigned, also on the originating listener. A bank can switch signing off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_listeners_keys_and_banks_decide_what_is_signed() {
    let sink = Capture::start().await;
    let bank = "[[policy]]\nname = \"nosign\"\nmatch.client = [\"192.0.2.99/32\"]\n\
                dkim_sign = false\n";
    let metrics = SocketAddr::from(([127, 0, 0, 1], crate::peers::free_port()));
    let toml = TestConfig::parse(&sign_config(&sink, bank))
        .set("metrics.listen", metrics.to_string())
        .toml();
    let (f, originating) = start_two(&toml).await;
    let from = "ann@sign.test";
    let cases: [(SocketAddr, Option<&str>, &str, bool); 7] = [
        (f.addr, None, from, false),
        (f.addr, Some("ADDR=192.0.2.10"), from, true),
        (f.addr, Some("ADDR=198.51.100.1"), from, false),
        (f.addr, Some("ADDR=[UNAVAILABLE]"), from, false),
        (originating, None, "ann@nokey.test", false),
        (originating, None, "ann@Sign.Test", true),
        // The bank matches this client: off, although the network matches.
        (f.addr, Some("ADDR=192.0.2.99"), from, false),
    ];
    for (i, (addr, xf, from, signed)) in cases.into_iter().enumerate() {
        let data = message(from, &format!("case{i}"), "Hello.\r\n");
        send(addr, xf, from, &data).await;
        let t = sink.last();
        assert!(t.text().contains(&format!("Subject: case{i}")));
        let sigs = signatures(&t);
        assert_eq!(
            !sigs.is_empty(),
            signed,
            "case {i} ({xf:?}, {from}): {sigs:?}"
        );
        if signed {
            assert_eq!(dkimpy(&t.data), ["pass"], "case {i}");
        } else {
            // Unsigned, and otherwise unharmed.
            assert!(t.text().ends_with("\r\n\r\nHello.\r\n"), "case {i}");
        }
    }
    // Counted per outgoing copy: the two signed, the one without a key; inbound mail not at all.
    let (_, text) = crate::util::http_get(metrics, "/metrics").await;
    for line in [
        "postsift_dkim_signed_total{result=\"signed\"} 2",
        "postsift_dkim_signed_total{result=\"no_key\"} 1",
        "postsift_dkim_signed_total{result=\"error\"} 0",
        "postsift_dkim_sign_duration_seconds_count 2",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    f.stop().await;
}

/// Two keys for one domain (RSA 3072 and Ed25519): two signatures, both verified by mail-auth
/// and by dkimpy; a message larger than the spool threshold is signed over the body read back
/// from the spool file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_beside_rsa_and_a_spooled_body() {
    let sink = Capture::start().await;
    let toml = TestConfig::parse(&sign_config(&sink, ""))
        .set("server.spool_threshold", 65536)
        .toml();
    let (f, originating) = start_two(&toml).await;
    let line = "The quick brown fox jumps over the lazy dog,  twice\t \r\n";
    let body = line.repeat(20_000);
    let data = message("bob@both.test", "big", &body);
    assert!(data.len() > 1_000_000);
    send(originating, None, "bob@both.test", &data).await;
    let t = sink.last();
    assert!(t.text().ends_with(&body), "body unchanged");
    let sigs = signatures(&t);
    assert_eq!(sigs.len(), 2, "{sigs:?}");
    let all = sigs.join("\n").replace([' ', '\t'], "");
    assert!(
        all.contains("a=ed25519-sha256;") && all.contains("a=rsa-sha256;"),
        "{all}"
    );
    assert_eq!(dkimpy(&t.data), ["pass", "pass"], "dkimpy");
    let ar = mail_auth(&t.data, "bob@both.test").await;
    assert!(
        ar.contains("dkim=pass header.d=both.test header.s=r3072"),
        "{ar}"
    );
    assert!(
        ar.contains("dkim=pass header.d=both.test header.s=ed"),
        "{ar}"
    );
    f.stop().await;
}

/// A key file that is not a key, or of the wrong kind, stops check-config (exit 64) naming the
/// entry; genkey refuses to overwrite without --force.
#[test]
fn bad_keys_are_named_and_genkey_keeps_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key\n").unwrap();
    let w = world();
    let check = |keys: &str| {
        let path = dir.path().join("p.toml");
        std::fs::write(&path, format!("[dkim_sign]\nenabled = true\n{keys}")).unwrap();
        let out = util::postsift_cmd()
            .args(["check-config", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let good = w.key("r2048.sign.test.pem");
    let (code, err) = check(&format!(
        "[[dkim_sign.keys]]\ndomain = \"a.test\"\nselector = \"s\"\nkey = \"{}\"\n\
         [[dkim_sign.keys]]\ndomain = \"b.test\"\nselector = \"s\"\nkey = \"{}\"\n",
        good.display(),
        junk.display()
    ));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("`dkim_sign.keys[1].key`"), "{err}");
    let (code, err) = check(&format!(
        "[[dkim_sign.keys]]\ndomain = \"a.test\"\nselector = \"s\"\nkey = \"{}\"\n\
         algorithm = \"ed25519-sha256\"\n",
        good.display()
    ));
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("`dkim_sign.keys[0].key`") && err.contains("RSA"),
        "{err}"
    );
    let (code, err) = check(&format!(
        "[[dkim_sign.keys]]\ndomain = \"a.test\"\nselector = \"s\"\nkey = \"{}\"\n",
        good.display()
    ));
    assert_eq!(code, Some(0), "{err}");
    // A 1024-bit key verifies (RFC 8301's floor) but is not signed with: the signer takes
    // 2048 bits and up, and says so by size.
    let short = dir.path().join("short.pem");
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
        ])
        .arg(&short)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let (code, err) = check(&format!(
        "[[dkim_sign.keys]]\ndomain = \"a.test\"\nselector = \"s\"\nkey = \"{}\"\n",
        short.display()
    ));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("1024 bits") && err.contains("2048"), "{err}");
    let out = util::postsift_cmd()
        .args([
            "dkim",
            "genkey",
            "--domain",
            "a.test",
            "--selector",
            "s",
            "--bits",
            "1024",
        ])
        .arg("--out")
        .arg(dir.path().join("new.pem"))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(!dir.path().join("new.pem").exists());

    let out = util::postsift_cmd()
        .args(["dkim", "genkey", "--domain", "a.test", "--selector", "s"])
        .arg("--out")
        .arg(&junk)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(std::fs::read_to_string(&junk).unwrap(), "not a key\n");
}

/// `postsift scan --dkim-sign` shows the signature outgoing mail would get, on top of the
/// header block.
#[test]
fn scan_shows_the_signature_it_would_add() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        format!(
            "[clamd]\nendpoints = []\n[spamd]\nendpoints = []\n[auth]\nenabled = false\n\
             [metrics]\nlisten = \"\"\n[dkim_sign]\nenabled = true\n\
             [[dkim_sign.keys]]\ndomain = \"sign.test\"\nselector = \"r2048\"\nkey = \"{}\"\n",
            world().key("r2048.sign.test.pem").display()
        ),
    )
    .unwrap();
    let msg = dir.path().join("m.eml");
    let scan = |from: &str| {
        std::fs::write(&msg, message(from, "scan", "Hello.\r\n")).unwrap();
        let out = util::postsift_cmd()
            .args(["scan", "--dkim-sign", "--config"])
            .arg(&cfg)
            .arg(&msg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = scan("ann@sign.test");
    assert!(out.contains("dkim_sign:  signed for sign.test"), "{out}");
    let block = out.split("---\n").nth(1).unwrap();
    assert!(block.starts_with("DKIM-Signature: "), "{out}");
    let out = scan("ann@nokey.test");
    assert!(out.contains("dkim_sign:  not signed"), "{out}");
    assert!(!out.contains("DKIM-Signature"), "{out}");
}

/// Recipients in two policy groups (a bank switches signing off for one recipient domain), over
/// SMTP (both copies sent together) and LMTP (each on its own): each copy is signed, or not,
/// over its own header block, and the signed one verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_recipient_group_gets_its_own_signature() {
    let sink = Capture::start().await;
    let bank = "[[policy]]\nname = \"partner\"\nmatch.recipient_domain = [\"partner.test\"]\n\
                dkim_sign = false\nspam.subject_tag = \"[partner spam] \"\n";
    let (f, originating) = start_two(&sign_config(&sink, bank)).await;
    let rcpts = ["b@example.net", "p@partner.test"];
    for lmtp in [false, true] {
        let before = sink.count();
        let data = message("ann@sign.test", &format!("groups-{lmtp}"), "Hello.\r\n");
        let mut c = Client::greeted(originating).await;
        let replies = c
            .transaction(lmtp, "ann@sign.test", &rcpts, data.as_bytes())
            .await;
        assert!(replies.iter().all(|r| r.code == 250), "{replies:?}");
        let all = sink.wait_for(before + 2).await;
        let copy = |rcpt: &str| {
            all[before..]
                .iter()
                .find(|t| t.rcpts.iter().any(|r| r.contains(rcpt)))
                .unwrap_or_else(|| panic!("no copy for {rcpt}"))
                .clone()
        };
        let ours = copy("b@example.net");
        assert_eq!(signatures(&ours).len(), 1, "lmtp={lmtp}");
        assert_eq!(dkimpy(&ours.data), ["pass"], "lmtp={lmtp}");
        let theirs = copy("p@partner.test");
        assert!(signatures(&theirs).is_empty(), "lmtp={lmtp}");
    }
    f.stop().await;
}

/// Hybrid mode (the milter and the after-queue hop in one postsift): originating mail (a client
/// in `networks`) is signed by both front ends, and the hop, which edits the header section
/// last, replaces the milter's signature with its own: the message goes out with one
/// signature from postsift, and it verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_originating_mail_gets_one_signature_made_by_the_hop() {
    let (clamd, spamd) = util::blocking(|| (util::clamd(), util::spamd())).await;
    let sink = Capture::start().await;
    let (pf, f, metrics) =
        crate::milter::hybrid(sink.addr, &clamd, Some(&spamd), &signing("[]", "")).await;
    let gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
    let data = message(
        "ann@sign.test",
        "hybrid",
        &format!("Hello,\r\n\r\n{gtube}\r\n"),
    );
    let front = pf.smtp_addr();
    // From the client 192.0.2.10 (XCLIENT), inside `networks`.
    let replies =
        util::blocking(move || crate::milter::from_client(front, "ann@sign.test", data.as_bytes()))
            .await;
    assert!(
        replies.iter().any(|r| r.1.contains(" 2.0.0 Ok: queued")),
        "{replies:?}"
    );
    let t = sink.wait_for(1).await.remove(0);
    // The milter signed, then the hop signed the copy it reinjected.
    let signed = "postsift_dkim_signed_total{result=\"signed\"}";
    assert_eq!(
        crate::milter::sample_reaching(metrics, signed, 2.0).await,
        2.0
    );
    crate::postfix::settle(&pf, f).await;
    let h = t.headers();
    assert!(h.contains("Subject: ***Spam*** hybrid\r\n"), "{h}");
    assert_eq!(h.matches("***Spam***").count(), 1, "{h}");
    let sigs = signatures(&t);
    assert_eq!(sigs.len(), 1, "{h}");
    let s = sigs[0].replace([' ', '\t'], "");
    assert!(s.contains("d=sign.test;") && s.contains("s=r2048;"), "{s}");
    assert_eq!(dkimpy(&t.data), ["pass"], "dkimpy");
    let ar = mail_auth(&t.data, "ann@sign.test").await;
    assert!(
        ar.contains("dkim=pass header.d=sign.test header.s=r2048"),
        "mail-auth: {ar}"
    );
}
