//! The header rewrite on arbitrary messages, held in memory and spooled past a small memory
//! threshold, for a clean and a spam verdict: the output's header section (parsed here, leniently,
//! up to the first empty line) has no `X-Spam-*`, `X-Virus-Scanned` or `X-Amavis-Alert` field but
//! the ones postsift writes at the top, and everything after the header section is unchanged.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use postsift::config::Config;
use postsift::message::{normalize_line_ends, Message, Spool};
use postsift::policy::{Category, Decision, Disposition};
use postsift::rewrite::{header_block, Trace};
use postsift::scan::SpamResult;

/// clamd configured (so `X-Virus-Scanned` is written); a memory threshold of 1 KiB, so a short
/// input already takes the spooled path that a big message takes with the default 256 KiB.
const CONFIG: &str = r#"
[server]
hostname = "mx.example.com"
spool_threshold = 1024
"#;

fn config() -> &'static Config {
    static CONFIG_: OnceLock<Config> = OnceLock::new();
    CONFIG_.get_or_init(|| Config::parse(CONFIG, Path::new("fuzz.toml")).expect("fuzz config"))
}

fn decision(category: Category, score: f64, rules: &[(&str, f64)]) -> Decision {
    Decision {
        category,
        disposition: Disposition::Deliver,
        spam: Some(SpamResult {
            score,
            required: 5.0,
            is_spam: score >= 5.0,
            rules: rules.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
            action: None,
        }),
        tempfail_reason: None,
        unchecked_reason: None,
        auth: None,
        dmarc: postsift::policy::DmarcAction::None,
    }
}

fuzz_target!(|data: &[u8]| {
    let config = config();
    let normalized = normalize_line_ends(data);
    let in_memory = Message::from_bytes(data);
    // A small max_header_size too, so that the "header section too big" path is taken.
    let mut spool = Spool::new(config.server.spool_threshold, 4096, &std::env::temp_dir());
    spool.write(&normalized).expect("spool write");
    let spooled = spool.finish().expect("spool finish");

    let clean = decision(Category::Clean, -2.099, &[("BAYES_00", -1.9)]);
    let spam = decision(Category::Spam, 1000.0, &[("GTUBE", 1000.0)]);
    for (what, msg) in [("in memory", &in_memory), ("spooled", &spooled)] {
        for (verdict, d) in [("clean", &clean), ("spam", &spam)] {
            check(
                config,
                d,
                msg,
                &normalized,
                &format!("{verdict}, {what}, {} bytes", normalized.len()),
            );
        }
    }
});

fn check(config: &Config, decision: &Decision, msg: &Message, input: &[u8], case: &str) {
    let trace = Trace {
        helo: "mail.example.org",
        peer: "127.0.0.1:40000".parse().unwrap(),
        local: "127.0.0.1:10024".parse().unwrap(),
        protocol: "ESMTP",
        id: "fuzz00000000",
    };
    if msg.header_too_big() {
        // Refused with 552 by the session: never rewritten, never delivered.
        assert!(
            msg.header_section().is_empty(),
            "{case}: too big, yet a header section"
        );
        return;
    }
    // As the pipeline writes it (filter::deliver's header_block): a blank line goes before a malformed
    // line that ended the header section.
    let mut block = header_block(config, decision, &trace, msg.header_section());
    if msg.needs_separator() {
        block.extend_from_slice(b"\r\n");
    }
    let mut out = block.clone();
    msg.for_each_chunk(msg.header_end(), u64::MAX, |c| {
        out.extend_from_slice(c);
        Ok(())
    })
    .expect("read message");

    // (b) The original header section is a prefix of the message, and what follows it goes out
    // unchanged; so does what follows the first empty line, whatever the header section was.
    let h = msg.header_end();
    assert_eq!(
        msg.header_section(),
        &input[..h],
        "{case}: header section is not the message's start"
    );
    assert!(
        out[block.len()..] == input[h..],
        "{case}: the rest of the message after byte {h} changed"
    );
    let expected_body = if msg.needs_separator() {
        Some(&input[h..])
    } else {
        body(input)
    };
    assert!(
        body(&out) == expected_body,
        "{case}: the body after the first empty line changed"
    );

    // (a) postsift's own fields are those it writes for a message with no header section.
    let own_block = header_block(config, decision, &trace, b"");
    let own = header_lines(&own_block);
    let own_count = own
        .iter()
        .position(|l| field_name(l).is_some_and(|n| n.eq_ignore_ascii_case(b"subject")))
        .unwrap_or(own.len());
    let lines = header_lines(&out);
    for (i, mine) in own[..own_count].iter().enumerate() {
        assert_eq!(
            lines.get(i).map(|l| field_name(l)),
            Some(field_name(mine)),
            "{case}: postsift's own header line {i} is missing or out of place"
        );
    }
    for line in &lines[own_count.min(lines.len())..] {
        let Some(name) = field_name(line) else {
            continue;
        };
        if is_protected(name) {
            let at = line.as_ptr() as usize - out.as_ptr() as usize;
            let origin = if at < block.len() {
                format!("kept inside the header section postsift parsed ({h} bytes)")
            } else {
                let ended_at = header_lines(&input[h..])
                    .first()
                    .copied()
                    .unwrap_or_default();
                format!(
                    "after the header section postsift parsed ({h} bytes, {} of {} in memory), \
                     which ended before the line {:?}",
                    msg.head().len(),
                    input.len(),
                    String::from_utf8_lossy(ended_at)
                )
            };
            panic!(
                "{case}: forged field {:?} survives, {origin}: {:?}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(line)
            );
        }
    }
}

/// `X-Spam-*`, `X-Virus-Scanned`, `X-Amavis-Alert`: only postsift may write them.
fn is_protected(name: &[u8]) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with(b"x-spam-") || lower == b"x-virus-scanned" || lower == b"x-amavis-alert"
}

/// The lines of the header section as a lenient reader sees it: every line (without its line
/// end) up to the first empty one.
fn header_lines(msg: &[u8]) -> Vec<&[u8]> {
    msg.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
        .collect()
}

/// A field's name as a lenient reader takes it: the bytes before the colon, trailing blanks
/// trimmed. None for continuation lines and lines without a colon.
fn field_name(line: &[u8]) -> Option<&[u8]> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return None;
    }
    let colon = line.iter().position(|&b| b == b':')?;
    let mut name = &line[..colon];
    while let Some(n) = name.strip_suffix(b" ").or_else(|| name.strip_suffix(b"\t")) {
        name = n;
    }
    Some(name)
}

/// Everything after the first empty line (None without one).
fn body(msg: &[u8]) -> Option<&[u8]> {
    if msg.starts_with(b"\r\n") {
        return Some(&msg[2..]);
    }
    msg.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| &msg[p + 4..])
}
