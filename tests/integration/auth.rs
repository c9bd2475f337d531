//! Mail authentication against a real DNS server (a private unbound answering the zones written
//! here): each SPF, DKIM and DMARC result, a domain whose lookups time out, the forged
//! `Authentication-Results` removed and the foreign one kept, DMARC enforcement, and the rules
//! in the spam score. DKIM keys (RSA 512/1024/2048, Ed25519) are made by openssl at start and
//! the test messages signed with mail-auth's signer.

use std::process::Command;
use std::sync::OnceLock;

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{Algorithm, Ed25519Key, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::common::headers::Writable;
use mail_auth::dkim::DkimSigner;
use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults};

use crate::capture::{Capture, Transaction};
use crate::client::{Client, Reply};
use crate::peers;
use crate::peers::unbound::Unbound;
use crate::test_config::TestConfig;
use crate::util::{self, base64, config, http_get, spamd, start_filter};

/// The client address postsift is told of by XFORWARD; SPF records below authorise it or not.
const CLIENT: &str = "192.0.2.10";

struct World {
    dns: Unbound,
    keys: Vec<(&'static str, Key)>,
}

enum Key {
    Rsa(Vec<u8>),
    Ed25519(Vec<u8>),
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A TXT record's data in strings of at most 250 characters.
fn txt(data: &str) -> String {
    data.as_bytes()
        .chunks(250)
        .map(|c| format!("\"{}\"", std::str::from_utf8(c).unwrap()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let mut records: Vec<String> = Vec::new();
        let mut keys = Vec::new();
        for (sel, bits) in [("r512", 512), ("r1024", 1024), ("r2048", 2048)] {
            let pem = d.join(format!("{sel}.pem"));
            let der = d.join(format!("{sel}.der"));
            let spki = d.join(format!("{sel}.pub"));
            openssl(&["genrsa", "-out", pem.to_str().unwrap(), &bits.to_string()]);
            openssl(&[
                "rsa",
                "-in",
                pem.to_str().unwrap(),
                "-traditional",
                "-outform",
                "DER",
                "-out",
                der.to_str().unwrap(),
            ]);
            openssl(&[
                "rsa",
                "-in",
                pem.to_str().unwrap(),
                "-pubout",
                "-outform",
                "DER",
                "-out",
                spki.to_str().unwrap(),
            ]);
            let record = txt(&format!(
                "v=DKIM1; k=rsa; p={}",
                base64(&std::fs::read(&spki).unwrap())
            ));
            records.push(format!("{sel}._domainkey.dkim.test. 3600 IN TXT {record}"));
            if sel == "r2048" {
                // The mailing list's ARC key.
                records.push(format!("arc._domainkey.lists.test. 3600 IN TXT {record}"));
            }
            keys.push((sel, Key::Rsa(std::fs::read(der).unwrap())));
        }
        let ed = d.join("ed.der");
        openssl(&[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-outform",
            "DER",
            "-out",
            ed.to_str().unwrap(),
        ]);
        let ed_der = std::fs::read(&ed).unwrap();
        let ed_pub = Ed25519Key::from_pkcs8_maybe_unchecked_der(&ed_der)
            .unwrap()
            .public_key();
        records.push(format!(
            "ed._domainkey.dkim.test. 3600 IN TXT \"v=DKIM1; k=ed25519; p={}\"",
            base64(&ed_pub)
        ));
        keys.push(("ed", Key::Ed25519(ed_der)));
        let t = |name: &str, data: &str| format!("{name}. 3600 IN TXT {}", txt(data));
        records.extend([
            t("spf-pass.test", "v=spf1 ip4:192.0.2.10 -all"),
            t("mx.spf-pass.test", "v=spf1 ip4:192.0.2.10 -all"),
            t("spf-fail.test", "v=spf1 ip4:198.51.100.1 -all"),
            t("spf-soft.test", "v=spf1 ~all"),
            t("spf-neutral.test", "v=spf1 ?all"),
            t("spf-include.test", "v=spf1 include:a.spf-include.test -all"),
            t(
                "a.spf-include.test",
                "v=spf1 include:b.spf-include.test -all",
            ),
            t("b.spf-include.test", "v=spf1 ip4:192.0.2.0/24 -all"),
            t("spf-loop.test", "v=spf1 include:spf-loop.test -all"),
            t("dkim.test", "v=spf1 -all"),
            t("_dmarc.dkim.test", "v=DMARC1; p=none"),
            t("_dmarc.spf-pass.test", "v=DMARC1; p=reject"),
            t("dmarc-none.test", "v=spf1 -all"),
            t("_dmarc.dmarc-none.test", "v=DMARC1; p=none"),
            t("dmarc-quar.test", "v=spf1 -all"),
            t("_dmarc.dmarc-quar.test", "v=DMARC1; p=quarantine"),
            t("dmarc-reject.test", "v=spf1 -all"),
            t(
                "_dmarc.dmarc-reject.test",
                "v=DMARC1; p=reject; sp=quarantine",
            ),
            t("sub.dmarc-reject.test", "v=spf1 -all"),
            "sub.dmarc-reject.test. 3600 IN A 192.0.2.99".to_string(),
        ]);
        // Eleven includes: one DNS-querying term over RFC 7208's limit of ten.
        let many: Vec<String> = (1..=11)
            .map(|i| format!("include:m{i}.spf-many.test"))
            .collect();
        records.push(t(
            "spf-many.test",
            &format!("v=spf1 {} -all", many.join(" ")),
        ));
        for i in 1..=11 {
            records.push(t(
                &format!("m{i}.spf-many.test"),
                "v=spf1 ip4:203.0.113.1 -all",
            ));
        }
        World {
            dns: Unbound::start(&records, Some("slow.test")),
            keys,
        }
    })
}

/// An RSA signer of the test's own (rsa-sha256, PKCS#1 v1.5 with the rsa crate): ring, the
/// crypto postsift's mail-auth uses, signs with 2048 bits and up only, and the tests need
/// signatures by 512- and 1024-bit keys too.
struct TestRsa(rsa::RsaPrivateKey);

impl TestRsa {
    fn from_pkcs1(der: &[u8]) -> TestRsa {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        TestRsa(rsa::RsaPrivateKey::from_pkcs1_der(der).unwrap())
    }
}

impl SigningKey for TestRsa {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        // DigestInfo of SHA-256 (RFC 8017 §9.2), ahead of the 32-byte digest.
        const SHA256_PREFIX: [u8; 19] = [
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ];
        let digest = self.hash(input);
        let scheme = rsa::Pkcs1v15Sign {
            hash_len: Some(32),
            prefix: SHA256_PREFIX.into(),
        };
        Ok(self.0.sign(scheme, digest.as_ref()).unwrap())
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::RsaSha256
    }
}

/// `msg` with a DKIM-Signature by `selector` of dkim.test (valid for `expire` seconds; 0: no
/// expiry).
fn signed(selector: &str, msg: &str, expire: u64) -> String {
    let key = &world()
        .keys
        .iter()
        .find(|(s, _)| *s == selector)
        .expect("key")
        .1;
    let headers = ["From", "To", "Subject", "Date", "Message-ID"];
    let sig = match key {
        Key::Rsa(der) => DkimSigner::from_key(TestRsa::from_pkcs1(der))
            .domain("dkim.test")
            .selector(selector)
            .headers(headers)
            .expiration(expire)
            .sign(msg.as_bytes())
            .unwrap(),
        Key::Ed25519(der) => {
            DkimSigner::from_key(Ed25519Key::from_pkcs8_maybe_unchecked_der(der).unwrap())
                .domain("dkim.test")
                .selector(selector)
                .headers(headers)
                .expiration(expire)
                .sign(msg.as_bytes())
                .unwrap()
        }
    };
    format!("{}{msg}", sig.to_header())
}

/// `msg` as a mailing list at lists.test forwards it: ARC-sealed (i=1) with the r2048 key.
fn arc_sealed(msg: &str) -> String {
    let Key::Rsa(der) = &world().keys.iter().find(|(s, _)| *s == "r2048").unwrap().1 else {
        unreachable!()
    };
    let key = TestRsa::from_pkcs1(der);
    let parsed = AuthenticatedMessage::parse(msg.as_bytes()).unwrap();
    let results = AuthenticationResults::new("lists.test");
    let set = ArcSealer::from_key(key)
        .domain("lists.test")
        .selector("arc")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .seal(&parsed, &results, &ArcOutput::default())
        .unwrap();
    format!("{}{msg}", set.to_header())
}

fn message(from: &str, extra: &str) -> String {
    format!(
        "{extra}From: <{from}>\r\nTo: <b@example.com>\r\nSubject: auth test\r\n\
         Date: Wed, 02 Dec 2026 01:00:00 +0000\r\nMessage-ID: <{n}@test>\r\n\r\nHello.\r\n",
        n = rand_id()
    )
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The filter config: no clamd, spamd if asked, the test DNS server, authserv-id
/// mx.test.local, `extra` keys for `[auth]`.
fn auth_config(sink: &Capture, with_spamd: bool, auth_extra: &str) -> String {
    let spamd = with_spamd.then(spamd);
    config(
        None,
        spamd.as_deref(),
        sink.addr,
        &format!(
            "[auth]\nauthserv_id = \"mx.test.local\"\n{auth_extra}\n\
             [dns]\nservers = [\"{}\"]\ntimeout = 1\nattempts = 1\n",
            world().dns.addr
        ),
    )
}

/// One message with XFORWARD ADDR/HELO (if given); the end-of-data reply.
async fn send(addr: std::net::SocketAddr, xforward: Option<&str>, from: &str, body: &str) -> Reply {
    let mut c = Client::greeted(addr).await;
    c.expect("EHLO test.local", 250).await;
    if let Some(x) = xforward {
        c.expect(&format!("XFORWARD {x}"), 250).await;
    }
    c.expect(&format!("MAIL FROM:<{from}>"), 250).await;
    c.expect("RCPT TO:<b@example.com>", 250).await;
    c.expect("DATA", 354).await;
    c.body(body.as_bytes()).await;
    let r = c.reply().await;
    let _ = c.cmd("QUIT").await;
    r
}

/// postsift's Authentication-Results, unfolded.
fn auth_results(t: &Transaction) -> String {
    let h = t.headers();
    let start = h
        .find("Authentication-Results: mx.test.local;")
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

fn xf(helo: &str) -> String {
    format!("ADDR={CLIENT} HELO={helo}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_each_result_against_real_dns() {
    let sink = Capture::start().await;
    let f = start_filter(&auth_config(&sink, false, "")).await;
    for (domain, expected) in [
        ("spf-pass.test", "spf=pass"),
        ("spf-fail.test", "spf=fail"),
        ("spf-soft.test", "spf=softfail"),
        ("spf-neutral.test", "spf=neutral"),
        ("spf-include.test", "spf=pass"),
        ("spf-loop.test", "spf=permerror"),
        ("spf-many.test", "spf=permerror"),
        ("nospf.test", "spf=none"),
    ] {
        let from = format!("a@{domain}");
        let r = send(
            f.addr,
            Some(&xf("mx.spf-pass.test")),
            &from,
            &message(&from, ""),
        )
        .await;
        assert_eq!(r.code, 250, "{r:?}");
        let ar = auth_results(&sink.last());
        assert!(
            ar.contains(&format!("{expected} smtp.mailfrom={from};")),
            "{domain}: {ar}"
        );
        assert!(ar.contains("spf=pass smtp.helo=mx.spf-pass.test;"), "{ar}");
    }
    // Without XFORWARD ADDR there is no client to check: no SPF result, never 127.0.0.1's.
    let from = "a@spf-fail.test";
    let r = send(f.addr, None, from, &message(from, "")).await;
    assert_eq!(r.code, 250, "{r:?}");
    let ar = auth_results(&sink.last());
    assert!(!ar.contains("spf="), "{ar}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_each_result_against_real_dns() {
    let sink = Capture::start().await;
    let f = start_filter(&auth_config(&sink, false, "")).await;
    let from = "a@dkim.test";
    let cases: Vec<(String, &str)> = vec![
        (
            signed("r1024", &message(from, ""), 0),
            "dkim=pass header.d=dkim.test header.s=r1024",
        ),
        (
            signed("r2048", &message(from, ""), 0),
            "dkim=pass header.d=dkim.test header.s=r2048",
        ),
        (
            signed("ed", &message(from, ""), 0),
            "dkim=pass header.d=dkim.test header.s=ed",
        ),
        (
            signed("r2048", &message(from, ""), 0).replace("Hello.", "Hello!"),
            "dkim=neutral (body hash did not verify) header.d=dkim.test header.s=r2048",
        ),
        (
            signed("r512", &message(from, ""), 0),
            "dkim=policy (key too short: 512 bits) header.d=dkim.test header.s=r512",
        ),
        (
            signed("r1024", &message(from, ""), 0).replacen("s=r1024", "s=nokey", 1),
            "dkim=permerror (no key for signature) header.d=dkim.test header.s=nokey",
        ),
    ];
    let expired = signed("r1024", &message(from, ""), 1);
    for (body, expected) in &cases {
        let r = send(f.addr, Some(&xf("mx.spf-pass.test")), from, body).await;
        assert_eq!(r.code, 250, "{r:?}");
        let ar = auth_results(&sink.last());
        assert!(ar.contains(expected), "expected {expected:?} in {ar}");
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let r = send(f.addr, Some(&xf("mx.spf-pass.test")), from, &expired).await;
    assert_eq!(r.code, 250, "{r:?}");
    let ar = auth_results(&sink.last());
    assert!(
        ar.contains("dkim=neutral (signature expired) header.d=dkim.test header.s=r1024"),
        "{ar}"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmarc_policies_reported_and_enforced() {
    let sink = Capture::start().await;
    let f = start_filter(&auth_config(&sink, false, "")).await;
    for (from, expected) in [
        (
            "a@spf-pass.test",
            "dmarc=pass (p=reject dis=none) header.from=spf-pass.test",
        ),
        (
            "a@dmarc-none.test",
            "dmarc=fail (p=none dis=none) header.from=dmarc-none.test",
        ),
        (
            "a@dmarc-quar.test",
            "dmarc=fail (p=quarantine dis=none) header.from=dmarc-quar.test",
        ),
        (
            "a@dmarc-reject.test",
            "dmarc=fail (p=reject sp=quarantine dis=none) header.from=dmarc-reject.test",
        ),
        (
            "a@sub.dmarc-reject.test",
            "dmarc=fail (p=reject sp=quarantine dis=none) header.from=sub.dmarc-reject.test",
        ),
        ("a@nodmarc.test", "dmarc=none header.from=nodmarc.test"),
    ] {
        let r = send(
            f.addr,
            Some(&xf("mx.spf-pass.test")),
            from,
            &message(from, ""),
        )
        .await;
        assert_eq!(r.code, 250, "{r:?}");
        let ar = auth_results(&sink.last());
        assert!(
            ar.contains(expected),
            "{from}: expected {expected:?} in {ar}"
        );
    }
    f.stop().await;

    // Enforced: p=reject refused, p=quarantine spam (subject tag), sp= for the subdomain.
    let f = start_filter(&auth_config(&sink, false, "dmarc_policy = \"enforce\"")).await;
    let from = "a@dmarc-reject.test";
    let before = sink.count();
    let r = send(
        f.addr,
        Some(&xf("mx.spf-pass.test")),
        from,
        &message(from, ""),
    )
    .await;
    assert_eq!(r.code, 550, "{r:?}");
    assert!(
        r.text.contains("5.7.1") && r.text.contains("DMARC policy for dmarc-reject.test"),
        "{r:?}"
    );
    assert_eq!(sink.count(), before, "a rejected message is not delivered");
    for from in ["a@dmarc-quar.test", "a@sub.dmarc-reject.test"] {
        let r = send(
            f.addr,
            Some(&xf("mx.spf-pass.test")),
            from,
            &message(from, ""),
        )
        .await;
        assert_eq!(r.code, 250, "{r:?}");
        let t = sink.last();
        assert!(
            t.headers().contains("Subject: ***Spam*** auth test"),
            "{}",
            t.headers()
        );
        assert!(
            auth_results(&t).contains("dis=quarantine"),
            "{}",
            t.headers()
        );
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_whose_lookups_time_out_gives_temperror_and_the_message_is_delivered() {
    let sink = Capture::start().await;
    let f = start_filter(&auth_config(&sink, false, "")).await;
    let from = "a@slow.test";
    let started = std::time::Instant::now();
    let r = send(
        f.addr,
        Some(&xf("mx.spf-pass.test")),
        from,
        &message(from, ""),
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    let ar = auth_results(&sink.last());
    assert!(
        ar.contains("spf=temperror smtp.mailfrom=a@slow.test"),
        "{ar}\n{}",
        world().dns.log()
    );
    assert!(ar.contains("dmarc=temperror"), "{ar}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "bounded by dns.timeout: {:?}",
        started.elapsed()
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_authentication_results_with_our_id_removed_others_kept() {
    let sink = Capture::start().await;
    let f = start_filter(&auth_config(&sink, false, "")).await;
    let from = "a@spf-fail.test";
    let forged =
        "Authentication-Results: mx.test.local; spf=pass smtp.mailfrom=a@spf-fail.test\r\n\
                  authentication-results :\r\n (trust me) MX.TEST.LOCAL.; dkim=pass\r\n\
                  Authentication-Results: \"mx.test.local\"; dmarc=pass\r\n\
                  Authentication-Results: relay.example.net; spf=pass\r\n\
                  ARC-Authentication-Results: i=1; mx.test.local; spf=pass\r\n";
    let r = send(
        f.addr,
        Some(&xf("mx.spf-pass.test")),
        from,
        &message(from, forged),
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    let h = sink.last().headers();
    let ours: Vec<&str> = h
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with("authentication-results"))
        .collect();
    assert_eq!(
        ours,
        [
            "Authentication-Results: mx.test.local;",
            "Authentication-Results: relay.example.net; spf=pass"
        ],
        "{h}"
    );
    assert!(h.contains("ARC-Authentication-Results: i=1; mx.test.local; spf=pass"));
    assert!(auth_results(&sink.last()).contains("spf=fail"), "{h}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_rules_count_in_the_spam_score() {
    let sink = Capture::start().await;
    let f = start_filter(&auth_config(&sink, true, "")).await;
    let from = "a@dkim.test";
    let body = signed("r2048", &message(from, ""), 0);
    let r = send(f.addr, Some(&xf("mx.spf-pass.test")), from, &body).await;
    assert_eq!(r.code, 250, "{r:?}");
    let h = sink.last().headers();
    let status: String = h
        .split("\r\n")
        .skip_while(|l| !l.starts_with("X-Spam-Status:"))
        .take_while(|l| l.starts_with("X-Spam-Status:") || l.starts_with(' '))
        .collect();
    for rule in [
        "DKIM_SIGNED=0.1",
        "DKIM_VALID=-0.1",
        "DKIM_VALID_AU=-0.1",
        "DKIM_VALID_EF=-0.1",
        "SPF_FAIL=0.919",
        "SPF_HELO_PASS=-0.001",
        "DMARC_PASS=-0.001",
    ] {
        assert!(status.contains(rule), "{rule} missing: {status}");
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmarc_reject_is_waived_for_a_trusted_arc_sealer() {
    let sink = Capture::start().await;
    let from = "a@dmarc-reject.test";
    let body = arc_sealed(&message(from, ""));
    // Without trust in the list: refused.
    let f = start_filter(&auth_config(&sink, false, "dmarc_policy = \"enforce\"")).await;
    let r = send(f.addr, Some(&xf("mx.spf-pass.test")), from, &body).await;
    assert_eq!(r.code, 550, "{r:?}");
    f.stop().await;
    // The list trusted: delivered, the chain and the waiver in the header.
    let f = start_filter(&auth_config(
        &sink,
        false,
        "dmarc_policy = \"enforce\"\ntrusted_arc_sealers = [\"lists.test\"]",
    ))
    .await;
    let r = send(f.addr, Some(&xf("mx.spf-pass.test")), from, &body).await;
    assert_eq!(r.code, 250, "{r:?}");
    let ar = auth_results(&sink.last());
    assert!(ar.contains("arc=pass (i=1 d=lists.test)"), "{ar}");
    assert!(
        ar.contains("dmarc=fail (p=reject sp=quarantine dis=none)"),
        "{ar}"
    );
    // A broken chain (the body changed after sealing) is no exception.
    let broken = body.replace("Hello.", "Hello, changed.");
    let r = send(f.addr, Some(&xf("mx.spf-pass.test")), from, &broken).await;
    assert_eq!(r.code, 550, "{r:?}");
    f.stop().await;
}

/// The value of the series `line` starts with in a /metrics text (0 when absent).
fn series(text: &str, line: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_and_auth_metrics_after_real_traffic() {
    let sink = Capture::start().await;
    let maddr = peers::localhost(peers::free_port());
    let cfg = TestConfig::parse(&auth_config(&sink, false, ""))
        .set("metrics.listen", maddr.to_string())
        .toml();
    let f = start_filter(&cfg).await;
    let from = "a@dkim.test";
    for _ in 0..2 {
        let body = signed("r1024", &message(from, ""), 0);
        let r = send(f.addr, Some(&xf("mx.spf-pass.test")), from, &body).await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    let (_, text) = http_get(maddr, "/metrics").await;
    // The second message found every record of the first in the cache.
    assert!(
        series(
            &text,
            "postsift_dns_cache_requests_total{result=\"hit\",type=\"txt\"}"
        ) >= 3.0,
        "{text}"
    );
    assert!(
        series(
            &text,
            "postsift_dns_lookups_total{outcome=\"answer\",type=\"txt\"}"
        ) >= 3.0,
        "{text}"
    );
    assert!(
        series(
            &text,
            "postsift_dns_lookup_duration_seconds_count{type=\"txt\"}"
        ) >= 3.0,
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            "postsift_auth_results_total{method=\"dkim\",result=\"pass\"}"
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            "postsift_auth_results_total{method=\"spf\",result=\"fail\"}"
        ),
        2.0,
        "{text}"
    );
    assert_eq!(series(&text, "postsift_auth_duration_seconds_count"), 2.0);
    f.stop().await;
}

#[test]
fn postsift_scan_shows_the_results_and_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("postsift.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nhostname = \"mx.test.local\"\n[clamd]\nendpoints = []\n\
             [spamd]\nendpoints = []\n[metrics]\nlisten = \"\"\n\
             [dns]\nservers = [\"{}\"]\ntimeout = 1\n",
            world().dns.addr
        ),
    )
    .unwrap();
    let msg = dir.path().join("m.eml");
    std::fs::write(&msg, signed("ed", &message("a@dkim.test", ""), 0)).unwrap();
    let out = util::postsift_cmd()
        .args(["scan", "--config", cfg.to_str().unwrap()])
        .args(["--client-ip", CLIENT, "--helo", "mx.spf-pass.test"])
        .args(["--mail-from", "a@spf-pass.test", msg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for line in [
        "auth:       dkim=pass header.d=dkim.test header.s=ed",
        "auth:       spf=pass smtp.mailfrom=a@spf-pass.test",
        "auth:       dmarc=pass (p=none dis=none) header.from=dkim.test",
        "auth rules: DKIM_SIGNED=0.1, DKIM_VALID=-0.1, DKIM_VALID_AU=-0.1, DMARC_PASS=-0.001",
        // Printed for a terminal: one line each, LF, control characters escaped.
        "---\nAuthentication-Results: mx.test.local;\n dkim=pass",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }
    // Without --client-ip: SPF not checked, and the output says why.
    let out = util::postsift_cmd()
        .args([
            "scan",
            "--config",
            cfg.to_str().unwrap(),
            msg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("spf not checked: no client address from XFORWARD ADDR"),
        "{text}"
    );
}

/// This thread's CPU time.
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// postsift's CPU for the authentication of one 4 KiB DKIM-signed (RSA 2048) message with
/// SPF for MAIL FROM and HELO, DMARC and ARC, warm cache; and the wall time of the first
/// (cold cache) check. Measured on a single-threaded runtime, so all the work is this thread's.
/// `cargo test --release --test integration auth::cost -- --ignored --nocapture`
#[test]
#[ignore]
fn cost_of_authentication_per_message() {
    let mut c = postsift::config::Config::default();
    c.dns.servers = vec![world().dns.addr.to_string()];
    c.server.hostname = Some("mx.test.local".into());
    let metrics = postsift::scan::auth::AuthMetrics::register(&prometheus::Registry::new());
    let filler =
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n".repeat(52);
    let from = "a@dkim.test";
    let msg = signed(
        "r2048",
        &message(from, "").replace("Hello.\r\n", &filler),
        0,
    );
    assert!((4000..5000).contains(&msg.len()), "{}", msg.len());
    let client = postsift::scan::auth::Client {
        ip: Some(CLIENT.parse().unwrap()),
        helo: Some("mx.spf-pass.test".into()),
        mail_from: from.into(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let checker = postsift::scan::auth::Checker::new(&c).unwrap().unwrap();
    let cold = std::time::Instant::now();
    let first = rt.block_on(checker.check(msg.as_bytes(), &client, &metrics));
    let cold = cold.elapsed();
    assert_eq!(
        first.dkim.as_ref().unwrap()[0].result,
        postsift::scan::auth::Verdict::Pass
    );
    let lookups: u64 = postsift::dns::TYPES
        .iter()
        .flat_map(|t| postsift::dns::OUTCOMES.iter().map(move |o| (t, o)))
        .map(|(t, o)| metrics.dns.lookups.with_label_values(&[t, o]).get())
        .sum();
    let n = 300;
    let cpu = thread_cpu();
    let wall = std::time::Instant::now();
    for _ in 0..n {
        let r = rt.block_on(checker.check(msg.as_bytes(), &client, &metrics));
        assert_eq!(
            r.spf.as_ref().unwrap().result,
            postsift::scan::auth::Verdict::Fail
        );
    }
    let per_cpu = (thread_cpu() - cpu) / n;
    let per_wall = wall.elapsed() / n;
    println!(
        "auth cost: {} bytes, warm cache: {:.3} ms CPU, {:.3} ms wall per message; \
         cold cache: {:.1} ms wall, {lookups} lookups",
        msg.len(),
        per_cpu.as_secs_f64() * 1e3,
        per_wall.as_secs_f64() * 1e3,
        cold.as_secs_f64() * 1e3,
    );
}
