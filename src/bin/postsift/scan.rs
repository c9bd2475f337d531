//! `postsift scan`: one message file through the daemon's own pipeline (the same stages, the
//! same policy banks) with a dry-run delivery: nothing is sent or stored. Prints what the checks
//! found and, for each recipient group, the verdict, the reply the client would get and the
//! header section the copy would go out with.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use postsift::config::Config;
use postsift::escape;
use postsift::filter::{self, DryRun, GroupReport, Hop, Outcome, Received, Signing};
use postsift::message::{Envelope, Message, Recipient};
use postsift::policy::{Category, Disposition};
use postsift::smtp::reply;
use postsift::xforward::Attrs;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct Args {
    /// The original client's address (as XFORWARD ADDR would give it), for SPF and for the
    /// `match.client` of policy banks. Without it SPF is not checked and no client network
    /// matches.
    #[arg(long)]
    client_ip: Option<IpAddr>,
    /// The original client's HELO name, for SPF's HELO identity.
    #[arg(long)]
    helo: Option<String>,
    /// The envelope sender (MAIL FROM), for SPF, DMARC and `match.sender_domain`.
    #[arg(long, default_value = "")]
    mail_from: String,
    /// An envelope recipient (repeatable). Recipients that policy banks set apart are judged
    /// apart, each group under its banks' settings.
    #[arg(long)]
    rcpt: Vec<String>,
    /// The `server.listen` address the message comes in on, for `match.listener` and
    /// `dkim_sign.originating_listeners`.
    #[arg(long)]
    listener: Option<SocketAddr>,
    /// As an LMTP client would get it: each recipient its own reply. Default: SMTP, one reply
    /// for the message, all recipients or none.
    #[arg(long)]
    lmtp: bool,
    /// Treat it as outgoing mail: show the DKIM-Signature `[dkim_sign]` would add (with
    /// signing enabled and a key for the From domain).
    #[arg(long)]
    dkim_sign: bool,
    message: PathBuf,
}

/// The envelope and the hop as the session would have received them.
fn received(args: &Args, msg: Message) -> Received {
    let unavailable = || Some("[UNAVAILABLE]".to_string());
    let env = Envelope {
        sender: args.mail_from.clone(),
        recipients: args
            .rcpt
            .iter()
            .map(|a| Recipient {
                address: a.clone(),
                ..Default::default()
            })
            .collect(),
        xforward: Attrs {
            // As Postfix says "not known": no client network matches, SPF is not checked.
            addr: args.client_ip.map(|ip| ip.to_string()).or_else(unavailable),
            helo: args.helo.clone().or_else(unavailable),
            ..Default::default()
        },
        ..Default::default()
    };
    let local = "127.0.0.1:10024".parse().expect("literal");
    Received {
        id: "scan".into(),
        env,
        msg,
        hop: Hop {
            helo: "localhost".into(),
            peer: "127.0.0.1:0".parse().expect("literal"),
            local: args.listener.unwrap_or(local),
            listener: args.listener,
            protocol: if args.lmtp { "LMTP" } else { "ESMTP" },
        },
        started: Instant::now(),
        per_recipient: args.lmtp,
    }
}

/// Scans `args.message`; the exit code by the most severe group's verdict: 0 clean, 1 spam,
/// 2 virus, 3 not checked (or retried), 4 banned, 5 rejected by DMARC policy.
pub fn scan(mut config: Config, args: &Args) -> anyhow::Result<u8> {
    let path = &args.message;
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    // The pipeline takes one copy; the parts listing reads the other.
    let msg = Message::from_bytes(&data);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if args.dkim_sign {
        // As if an originating listener had it; `enabled` and a bank's `dkim_sign` still decide.
        config.dkim_sign.by_bank = Some(true);
    }
    // A dry run writes nothing to the SQL log; the lookups and the pool need the runtime.
    config.sql.log = false;
    let _entered = rt.enter();
    let shared = postsift::Runtime::new(config, CancellationToken::new())?;
    let out = DryRun::new();
    let p = rt.block_on(filter::run(
        &shared,
        received(args, Message::from_bytes(&data)),
        &out,
    ));
    if p.groups.is_empty() {
        println!(
            "action:     reply {}",
            reply::for_outcome("scan", &p.outcome, false, 1)[0]
        );
        return Ok(3);
    }
    for (i, g) in p.groups.iter().enumerate() {
        if i > 0 {
            println!();
        }
        if !args.rcpt.is_empty() {
            let rcpts: Vec<String> = g
                .rcpts
                .iter()
                .map(|&r| escape::text(&args.rcpt[r]))
                .collect();
            println!("recipients: {}", rcpts.join(", "));
        }
        print_group(&shared.config, args, &msg, g, i == 0);
        print_action(p.group_outcome(i));
        print_signing(&shared.config, args, g);
        if let Some(block) = out.header(i) {
            println!("---");
            for line in String::from_utf8_lossy(&block).split_inclusive('\n') {
                println!(
                    "{}",
                    escape::keeping_tabs(line.trim_end_matches(['\r', '\n']))
                );
            }
        }
    }
    let worst = |g: &&GroupReport| g.decision.category.rank();
    let tempfail = p
        .groups
        .iter()
        .any(|g| matches!(g.decision.disposition, Disposition::Tempfail(_)));
    Ok(match p.groups.iter().min_by_key(worst) {
        _ if tempfail => 3,
        Some(g) => exit_code(&g.decision.category),
        None => 0,
    })
}

fn exit_code(c: &Category) -> u8 {
    match c {
        Category::Unchecked => 3,
        Category::Virus(_) => 2,
        Category::Banned { .. } => 4,
        Category::Spam => 1,
        Category::DmarcReject { .. } => 5,
        Category::Clean => 0,
    }
}

/// What the checks found for group `g`, and its verdict; the parts the walk decoded with the
/// `first` group only (they are the same for every group).
fn print_group(config: &Config, args: &Args, msg: &Message, g: &GroupReport, first: bool) {
    let report = &g.report;
    println!(
        "virus scan: {}",
        escape::text(&format!("{:?}", report.virus))
    );
    println!(
        "spam scan:  {}",
        escape::text(&format!("{:?}", report.spam))
    );
    print_auth(config, &g.decision);
    if first {
        print_parts(config, msg, report.parts.as_ref());
    }
    if !args.rcpt.is_empty() || g.bank != "-" {
        println!("bank:       {}", escape::text(&g.bank));
    }
    println!("category:   {}", g.decision.category.label());
}

fn print_action(o: &Outcome) {
    match o {
        Outcome::Delivered(d) if d.all_accepted() => {
            println!("action:     pass (headers below are added)")
        }
        Outcome::Delivered(_) => println!(
            "action:     withheld: another recipient group failed, and the client retries the \
             whole message"
        ),
        o => println!(
            "action:     reply {}",
            reply::for_outcome("scan", o, false, 1)[0]
        ),
    }
}

fn print_signing(config: &Config, args: &Args, g: &GroupReport) {
    match &g.signing {
        Signing::NotWanted if !args.dkim_sign => {}
        Signing::NotWanted if !config.dkim_sign.enabled => {
            println!("dkim_sign:  off ([dkim_sign] enabled = false)")
        }
        Signing::NotWanted => {
            println!("dkim_sign:  off (not delivered, or its bank says dkim_sign = false)")
        }
        Signing::Signed(domain) => println!(
            "dkim_sign:  signed for {} (signature on top, below)",
            escape::text(domain)
        ),
        Signing::NoKey => {
            println!("dkim_sign:  not signed: no single From address, or no key for its domain")
        }
        Signing::Failed(e) => println!("dkim_sign:  failed: {}", escape::text(e)),
    }
}

/// The mail authentication results, one method a line, and the rules they scored.
fn print_auth(config: &Config, decision: &postsift::policy::Decision) {
    let Some(a) = &decision.auth else {
        println!("auth:       off");
        return;
    };
    if let Some(why) = a.spf_skipped {
        println!("auth:       spf not checked: {why} (give --client-ip, --helo, --mail-from)");
    }
    let header = postsift::rewrite::authentication_results_capped(
        &config.authserv_id(),
        a,
        decision.dmarc,
        config.auth.max_dkim_results,
    );
    for line in header.trim_end().lines().skip(1) {
        println!("auth:       {}", line.trim().trim_end_matches(';'));
    }
    let rules = postsift::scan::auth::rules(a, config);
    println!(
        "auth rules: {}",
        if rules.is_empty() {
            "none".to_string()
        } else {
            rules
                .iter()
                .map(|(n, s)| format!("{n}={}", postsift::rewrite::score(*s)))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
}

/// The parts the MIME walk decoded, one line each (what clamd was given besides the whole
/// message), so an administrator can see what postsift looked at.
fn print_parts(config: &Config, msg: &Message, summary: Option<&postsift::scan::PartsSummary>) {
    match summary {
        None => println!(
            "parts:      not scanned by clamd (no clamd, [parts] off, or over parts.max_message_size)"
        ),
        Some(summary) => println!(
            "parts:      {} scanned by clamd{}{}",
            summary.count,
            summary
                .limit
                .as_ref()
                .map_or(String::new(), |l| format!(
                    ", stopped ({}): {}",
                    l.kind.label(),
                    escape::text(&l.to_string())
                )),
            summary
                .infected
                .as_deref()
                .map_or(String::new(), |p| format!(", virus in: {}", escape::text(p))),
        ),
    }
    if let Some(s) = summary.filter(|s| s.left_out > 0) {
        println!(
            "clamd:      sent the message without {} bytes (bodies it was sent decoded)",
            s.left_out
        );
    }
    if let Some(s) = summary.filter(|s| s.text_in_message > 0) {
        println!(
            "clamd:      {} bytes of text parts not sent decoded (its MIME parser decodes them)",
            s.text_in_message
        );
    }
    let limits = postsift::scan::parts::Limits::from_config(&config.parts);
    let Ok(raw) = msg.read_all() else { return };
    let walk = match postsift::scan::parts::walk(&raw, &limits, &config.spool_dir()) {
        Ok(w) => w,
        Err(e) => {
            println!("  (the walk failed: {})", escape::text(&e.to_string()));
            return;
        }
    };
    for p in walk.parts {
        // Every name the part declares, each escaped (the banned-file rules judge them all).
        let names: Vec<String> = p
            .name
            .iter()
            .chain(&p.other_names)
            .map(|n| escape::text(n))
            .collect();
        let names = if names.is_empty() {
            "-".to_string()
        } else {
            names.join(" | ")
        };
        let inside = match p.containers.is_empty() {
            true => String::new(),
            false => format!(", in {}", p.containers.join(" in ")),
        };
        println!(
            "  - {:<30} {:<28} {:>9} bytes{}  ({} reading, depth {}{inside})",
            names,
            escape::text(p.declared.as_deref().unwrap_or("-")),
            p.contents.len(),
            if p.contents.is_spilled() {
                " on disk"
            } else {
                ""
            },
            p.found,
            p.depth
        );
    }
}
