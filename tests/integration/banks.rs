//! Policy banks with the real clamd and spamd: an originating listener that skips the spam
//! check, a client network (XFORWARD ADDR) that bypasses it, a recipient domain with stricter
//! levels; one LMTP message with three recipients and three outcomes (spam-tagged, quarantined,
//! clean through a bypass) checked at the sink recipient by recipient; the SMTP rule for mixed
//! groups (one reply: deliver each group apart, or refuse the whole message when one group is
//! refused); check-config's account of each bank.

use std::net::SocketAddr;

use postsift::quarantine::{Filter as ListFilter, Quarantine};

use crate::capture::{Behaviour, Capture, Transaction};
use crate::client::Client;
use crate::peers;
use crate::util::{self, config, fixture, start_filter, start_two};

fn flagged(t: &Transaction) -> bool {
    t.headers().contains("X-Spam-Flag: YES")
}

/// The transaction that went to `rcpt`.
fn to<'a>(all: &'a [Transaction], rcpt: &str) -> &'a Transaction {
    all.iter()
        .find(|t| t.rcpts.iter().any(|r| r.contains(rcpt)))
        .unwrap_or_else(|| panic!("nothing for {rcpt}: {all:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn originating_listener_skips_the_spam_check() {
    let (clamd, spamd) = util::blocking(|| (util::clamd(), util::spamd())).await;
    let sink = Capture::start().await;
    let bank = "[[policy]]\nname = \"originating\"\nmatch.listener = [\"127.0.0.1:10026\"]\n\
                bypass_spam_checks = true\n";
    let (f, originating) = start_two(&config(Some(&clamd), Some(&spamd), sink.addr, bank)).await;
    let gtube = fixture("gtube.eml");
    let inbound =
        crate::client::send_one(f.addr, "a@example.org", &["b@example.com"], &gtube).await;
    assert_eq!(inbound.code, 250, "{inbound:?}");
    let out =
        crate::client::send_one(originating, "b@example.com", &["a@example.org"], &gtube).await;
    assert_eq!(out.code, 250, "{out:?}");
    let all = sink.wait_for(2).await;
    assert!(flagged(to(&all, "b@example.com")), "inbound GTUBE is spam");
    let sent = to(&all, "a@example.org").headers();
    assert!(
        !sent.contains("X-Spam-"),
        "originating mail is not spam-checked: {sent}"
    );
    assert!(
        sent.contains("X-Virus-Scanned"),
        "but virus-checked: {sent}"
    );
    // The virus check still applies on the originating listener.
    let eicar = crate::client::send_one(
        originating,
        "b@example.com",
        &["a@example.org"],
        &fixture("eicar-plain.eml"),
    )
    .await;
    assert!(eicar.text.contains("discarded"), "{eicar:?}");
    assert_eq!(sink.count(), 2);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_network_from_xforward_bypasses_spam() {
    let spamd = util::blocking(util::spamd).await;
    let sink = Capture::start().await;
    // The test client connects from 127.0.0.1, which XFORWARD ADDR replaces: a loopback bank
    // matches none of these, not even ADDR=[UNAVAILABLE] (a local submission: unknown).
    let bank = "[[policy]]\nname = \"partner\"\nmatch.client = [\"192.0.2.0/24\"]\n\
                bypass_spam_checks = true\n\
                [[policy]]\nname = \"loopback\"\nmatch.client = [\"127.0.0.0/8\"]\n\
                bypass_spam_checks = true\n";
    let f = start_filter(&config(None, Some(&spamd), sink.addr, bank)).await;
    let gtube = fixture("gtube.eml");
    for (addr, rcpt) in [
        ("192.0.2.77", "p@example.com"),
        ("198.51.100.1", "q@example.com"),
        ("[UNAVAILABLE]", "r@example.com"),
    ] {
        let mut c = Client::greeted(f.addr).await;
        c.expect("EHLO test.local", 250).await;
        c.expect(
            &format!("XFORWARD NAME=mx.partner.example ADDR={addr}"),
            250,
        )
        .await;
        c.expect("MAIL FROM:<x@partner.example>", 250).await;
        c.expect(&format!("RCPT TO:<{rcpt}>"), 250).await;
        c.expect("DATA", 354).await;
        c.body(&gtube).await;
        assert_eq!(c.reply().await.code, 250);
    }
    let all = sink.wait_for(3).await;
    assert!(!to(&all, "p@example.com").headers().contains("X-Spam-"));
    assert!(flagged(to(&all, "q@example.com")));
    assert!(flagged(to(&all, "r@example.com")));
    // Without XFORWARD the connecting client (127.0.0.1) is the original one.
    let r = crate::client::send_one(f.addr, "x@example.org", &["s@example.com"], &gtube).await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(!to(&sink.wait_for(4).await, "s@example.com")
        .headers()
        .contains("X-Spam-"));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stricter_recipient_domain_per_recipient_over_lmtp() {
    let spamd = util::blocking(util::spamd).await;
    let sink = Capture::start().await;
    // Every score is spam for strict.example (and rejected there); the default levels for
    // the other recipient, whose copy is clean.
    let bank = "[[policy]]\nname = \"strict\"\nmatch.recipient_domain = [\"strict.example\"]\n\
                spam.tag2_level = -100.0\nspam.kill_level = -100.0\nspam.action = \"reject\"\n";
    let f = start_filter(&config(None, Some(&spamd), sink.addr, bank)).await;
    let mut c = Client::greeted(f.addr).await;
    let r = c
        .transaction(
            true,
            "a@example.org",
            &["ann@strict.example", "bob@example.com"],
            &fixture("clean.eml"),
        )
        .await;
    assert_eq!(r[0].code, 554, "{r:?}");
    assert!(
        r[0].text.contains("5.7.0 Reject") && r[0].text.contains("spam"),
        "{r:?}"
    );
    assert_eq!(r[1].code, 250, "{r:?}");
    let all = sink.wait_for(1).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].rcpts.len(), 1, "{all:?}");
    assert!(all[0].rcpts[0].contains("bob@example.com"));
    assert!(
        all[0].headers().contains("X-Spam-Flag: NO"),
        "{}",
        all[0].headers()
    );
    f.stop().await;
}

/// What a three-recipient GTUBE message gets: bob (defaults) spam-tagged and passed, carol
/// (strict.example) quarantined, dave (partner.example, spam bypassed) passed clean.
pub(crate) const THREE_BANKS: &str = "\
[[policy]]\nname = \"strict\"\nmatch.recipient_domain = [\"strict.example\"]\nspam.action = \"quarantine\"\n\
[[policy]]\nname = \"partner\"\nmatch.recipient_domain = [\"partner.example\"]\nbypass_spam_checks = true\n";

pub(crate) const THREE: [&str; 3] = [
    "bob@example.com",
    "carol@strict.example",
    "dave@partner.example",
];

fn check_three_at_the_sink(all: &[Transaction]) {
    assert_eq!(all.len(), 2, "{all:?}");
    let bob = to(all, "bob@");
    assert_eq!(bob.rcpts.len(), 1, "{bob:?}");
    assert!(flagged(bob) && bob.headers().contains("Subject: ***Spam*** "));
    let dave = to(all, "dave@");
    assert_eq!(dave.rcpts.len(), 1, "{dave:?}");
    let h = dave.headers();
    assert!(!h.contains("X-Spam-") && !h.contains("***Spam***"), "{h}");
    assert!(all
        .iter()
        .all(|t| !t.rcpts.iter().any(|r| r.contains("carol@"))));
    // The same body under both header blocks.
    assert_eq!(
        bob.text().split_once("\r\n\r\n").unwrap().1,
        dave.text().split_once("\r\n\r\n").unwrap().1
    );
}

pub(crate) fn check_three_in_the_quarantine(dir: &std::path::Path) {
    let q = Quarantine::open(dir).unwrap();
    let list = q.list(&ListFilter::default()).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let rcpts: Vec<&str> = list[0]
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(rcpts, ["carol@strict.example"]);
    assert_eq!(list[0].category, "spam");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_recipients_three_outcomes_over_lmtp() {
    let spamd = util::blocking(util::spamd).await;
    let tmp = peers::private_dir("banks-");
    let dir = tmp.path().join("q");
    let sink = Capture::start().await;
    let extra = format!("[quarantine]\ndir = \"{}\"\n{THREE_BANKS}", dir.display());
    let f = start_filter(&config(None, Some(&spamd), sink.addr, &extra)).await;
    let mut c = Client::greeted(f.addr).await;
    let r = c
        .transaction(true, "a@example.org", &THREE, &fixture("gtube.eml"))
        .await;
    assert_eq!(r.len(), 3);
    assert!(r[0].code == 250 && r[0].text.contains("from MTA"), "{r:?}");
    assert!(
        r[1].code == 250 && r[1].text.contains("2.7.0 Ok, quarantined"),
        "{r:?}"
    );
    assert!(r[2].code == 250 && r[2].text.contains("from MTA"), "{r:?}");
    check_three_at_the_sink(&sink.wait_for(2).await);
    f.stop().await;
    check_three_in_the_quarantine(&dir);
    peers::finish_dir(Some(tmp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_mixed_groups_deliver_apart_with_one_reply() {
    let spamd = util::blocking(util::spamd).await;
    let tmp = peers::private_dir("banks-");
    let dir = tmp.path().join("q");
    let sink = Capture::start().await;
    let extra = format!("[quarantine]\ndir = \"{}\"\n{THREE_BANKS}", dir.display());
    let f = start_filter(&config(None, Some(&spamd), sink.addr, &extra)).await;
    let mut c = Client::greeted(f.addr).await;
    let r = c
        .transaction(false, "a@example.org", &THREE, &fixture("gtube.eml"))
        .await;
    assert_eq!(r.len(), 1);
    assert!(r[0].code == 250 && r[0].text.contains("from MTA"), "{r:?}");
    check_three_at_the_sink(&sink.wait_for(2).await);
    f.stop().await;
    check_three_in_the_quarantine(&dir);
    peers::finish_dir(Some(tmp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_mixed_groups_one_refused_refuse_the_whole_message() {
    let spamd = util::blocking(util::spamd).await;
    let sink = Capture::start().await;
    let bank = "[[policy]]\nname = \"strict\"\nmatch.recipient_domain = [\"strict.example\"]\n\
                spam.action = \"reject\"\n\
                [[policy]]\nname = \"partner\"\nmatch.recipient_domain = [\"partner.example\"]\n\
                bypass_spam_checks = true\n";
    let f = start_filter(&config(None, Some(&spamd), sink.addr, bank)).await;
    let mut c = Client::greeted(f.addr).await;
    let r = c
        .transaction(false, "a@example.org", &THREE, &fixture("gtube.eml"))
        .await;
    assert_eq!(r[0].code, 554, "{r:?}");
    // LMTP, by contrast, refuses only carol.
    let mut c = Client::greeted(f.addr).await;
    let r = c
        .transaction(true, "a@example.org", &THREE, &fixture("gtube.eml"))
        .await;
    let codes: Vec<u16> = r.iter().map(|r| r.code).collect();
    assert_eq!(codes, [250, 554, 250], "{r:?}");
    let all = sink.wait_for(2).await;
    assert_eq!(
        all.len(),
        2,
        "nothing went out for the SMTP message: {all:?}"
    );
    f.stop().await;
}

/// SMTP, two delivering copies: the next hop refusing one copy's recipient means neither copy
/// is sent (every envelope is accepted before any data goes), so the client's retry
/// duplicates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_mixed_groups_send_no_copy_unless_every_envelope_is_accepted() {
    let spamd = util::blocking(util::spamd).await;
    let tmp = peers::private_dir("banks-");
    let dir = tmp.path().join("q");
    let sink = Capture::start_with(Behaviour {
        refuse_rcpt: vec![("dave@".into(), "450 4.2.0 try later".into())],
        ..Default::default()
    })
    .await;
    let extra = format!("[quarantine]\ndir = \"{}\"\n{THREE_BANKS}", dir.display());
    let f = start_filter(&config(None, Some(&spamd), sink.addr, &extra)).await;
    let mut c = Client::greeted(f.addr).await;
    let r = c
        .transaction(false, "a@example.org", &THREE, &fixture("gtube.eml"))
        .await;
    assert_eq!(r[0].code, 450, "{r:?}");
    assert_eq!(
        sink.count(),
        0,
        "bob's copy went out before dave's was refused"
    );
    // Once the next hop takes dave again, the retry delivers each copy once.
    sink.set(Behaviour::default());
    let mut c = Client::greeted(f.addr).await;
    let r = c
        .transaction(false, "a@example.org", &THREE, &fixture("gtube.eml"))
        .await;
    assert_eq!(r[0].code, 250, "{r:?}");
    check_three_at_the_sink(&sink.wait_for(2).await);
    f.stop().await;
    peers::finish_dir(Some(tmp));
}

/// The three-recipient message through a real Postfix: its LMTP client takes the three
/// replies, its reinjection smtpd takes the two copies, nothing stays queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_outcomes_through_a_real_postfix() {
    let spamd = util::blocking(util::spamd).await;
    let tmp = peers::private_dir("banks-pf-");
    let dir = tmp.path().join("q");
    let sink = Capture::start().await;
    let filter_addr: SocketAddr = format!("127.0.0.1:{}", peers::free_port()).parse().unwrap();
    let pf = crate::postfix::start_postfix(filter_addr, sink.addr).await;
    let extra = format!("[quarantine]\ndir = \"{}\"\n{THREE_BANKS}", dir.display());
    let f = util::start_filter_on(
        filter_addr,
        &config(None, Some(&spamd), pf.reinject_addr(), &extra),
    )
    .await;
    let (replies, code) = crate::postfix::send(pf.smtp_addr(), &THREE, fixture("gtube.eml")).await;
    assert_eq!(code, 250, "Postfix did not queue it: {replies:?}");
    sink.wait_for(2).await;
    crate::postfix::settle(&pf, f).await;
    assert_eq!(pf.queue_count(), 0, "mail left in Postfix's queue");
    let log = pf.log();
    assert!(
        log.contains("to=<carol@strict.example>") && log.contains("2.7.0 Ok, quarantined"),
        "{log}"
    );
    check_three_at_the_sink(&sink.all());
    check_three_in_the_quarantine(&dir);
    peers::finish_dir(Some(tmp));
}

/// The real `postsift run`: one log line per recipient group, each naming its banks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_line_names_the_banks_of_each_group() {
    let sink = Capture::start().await;
    let (p1, p2) = (peers::free_port(), peers::free_port());
    let banks = format!(
        "[[policy]]\nname = \"originating\"\nmatch.listener = [\"127.0.0.1:{p2}\"]\n\
         [[policy]]\nname = \"vip\"\nmatch.recipient = [\"vip@example.com\"]\n\
         spam.subject_tag = \"[SPAM] \"\n"
    );
    let toml = crate::reload::cfg(&[p1, p2], sink.addr, "", &banks);
    let mut d = crate::reload::Daemon::start(&toml, p1).await;
    let body = b"Subject: hi\r\n\r\nhello\r\n";
    let r = crate::client::send_one(
        peers::localhost(p1),
        "a@example.org",
        &["b@example.com"],
        body,
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    let line = d.wait_log("to=b@example.com", 1).await;
    assert!(line.contains("bank=- "), "{line}");
    let mut c = Client::greeted(peers::localhost(p2)).await;
    let r = c
        .transaction(
            true,
            "b@example.com",
            &["x@example.net", "vip@example.com"],
            body,
        )
        .await;
    assert!(r.iter().all(|r| r.code == 250), "{r:?}");
    let line = d.wait_log("to=x@example.net", 1).await;
    assert!(line.contains("bank=originating "), "{line}");
    let line = d.wait_log("to=vip@example.com", 1).await;
    assert!(line.contains("bank=originating,vip "), "{line}");
    assert_eq!(sink.wait_for(3).await.len(), 3);
    d.stop().await;
}

#[test]
fn check_config_prints_banks_and_refuses_one_that_cannot_match() {
    let tmp = peers::private_dir("banks-cli-");
    let path = tmp.path().join("postsift.toml");
    let run = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let out = util::postsift_cmd()
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(THREE_BANKS);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("policy bank \"strict\" (#1):"), "{out}");
    assert!(out.contains("spam check: skipped"), "{out}");
    assert!(out.ends_with("configuration ok\n"), "{out}");
    let (code, _, err) = run("[[policy]]\nname = \"x\"\nmatch.listener = [\"127.0.0.1:10026\"]\n");
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("policy.match.listener"), "{err}");
    let (code, _, err) = run("[[policy]]\nname = \"x\"\nmatch.client = [\"10.1.2.0/40\"]\n");
    assert_eq!(code, Some(64), "{err}");
    peers::finish_dir(Some(tmp));
}

/// `postsift scan` used to judge every message by the defaults: it ignored policy banks, so the
/// verdict it showed was not the one a bank's recipient gets. It now runs the daemon's pipeline
/// (dry run) with the envelope given: the strict.example recipient gets the strict bank's
/// verdict (every score spam, rejected), the other one the defaults'.
#[test]
fn scan_shows_the_verdict_of_the_bank_a_recipient_matches() {
    let spamd = util::spamd();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("scan.toml");
    let bank = "[[policy]]\nname = \"strict\"\nmatch.recipient_domain = [\"strict.example\"]\n\
                spam.tag2_level = -100.0\nspam.kill_level = -100.0\nspam.action = \"reject\"\n";
    let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
    std::fs::write(&cfg, config(None, Some(&spamd), unused, bank)).unwrap();
    let eml = peers::fixtures().join("messages/clean.eml");
    let scan = |extra: &[&str]| {
        let out = util::postsift_cmd()
            .args(["scan", "--config"])
            .arg(&cfg)
            .args(["--mail-from", "a@example.org"])
            .args(extra)
            .arg(&eml)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code(), text)
    };
    let (code, text) = scan(&["--rcpt", "ann@strict.example"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("bank:       strict\ncategory:   spam\n"),
        "{text}"
    );
    assert!(
        text.contains("action:     reply 554 5.7.0 Reject"),
        "{text}"
    );

    let (code, text) = scan(&["--rcpt", "bob@example.com"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("bank:       -\ncategory:   clean\n"),
        "{text}"
    );
    assert!(text.contains("X-Spam-Flag: NO"), "{text}");

    // Both, as an LMTP client gets them: each group its own verdict and reply.
    let (code, text) = scan(&[
        "--rcpt",
        "ann@strict.example",
        "--rcpt",
        "bob@example.com",
        "--lmtp",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("recipients: ann@strict.example\n"), "{text}");
    assert!(
        text.contains("action:     reply 554 5.7.0 Reject"),
        "{text}"
    );
    assert!(text.contains("recipients: bob@example.com\n"), "{text}");
    assert!(
        text.contains("action:     pass (headers below are added)"),
        "{text}"
    );
}
