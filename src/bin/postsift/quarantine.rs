//! `postsift quarantine list|show|release|delete|purge`: straight on `quarantine.dir`, or on the
//! `[sql]` database with `quarantine.store = "sql"`.

use anyhow::Context;
use clap::Subcommand;
use postsift::config::Config;

use crate::EX_TEMPFAIL;

#[derive(Subcommand)]
pub enum Action {
    /// One line per message: id, time, category, size, sender, recipients (with their
    /// release state), reason, subject.
    List {
        /// virus, banned, spam or unchecked.
        #[arg(long)]
        category: Option<String>,
        /// Only messages for this recipient.
        #[arg(long)]
        recipient: Option<String>,
        /// Only messages since: `2h`, `3d`, `30m`, a date `2026-12-01`, RFC 3339 or unix time.
        #[arg(long)]
        since: Option<String>,
    },
    /// The envelope, the headers and a safe text rendering of the body (control characters
    /// escaped; nothing fetched or opened).
    Show {
        id: String,
        /// The whole body text, not its first 64 KiB.
        #[arg(long)]
        full: bool,
    },
    /// Sends the message to `reinject.to` with its original envelope, once per recipient.
    /// Exit code 0 when every recipient asked for is released (now or before), 75 otherwise.
    Release {
        id: String,
        /// Release only to this original recipient (repeatable; default: all).
        #[arg(long)]
        recipient: Vec<String>,
        /// Send it to this address instead (repeatable; each gets it once).
        #[arg(long)]
        to: Vec<String>,
        /// Also send to recipients an interrupted release left `releasing` (they may have
        /// got it already: check the next hop's log first).
        #[arg(long)]
        force: bool,
    },
    /// Removes the message from the quarantine.
    Delete { id: String },
    /// Removes what is older than `quarantine.retention_days` (the daemon does it hourly).
    Purge,
}

/// `--since`: a duration back from now (`30m`, `2h`, `3d`), a date, RFC 3339, or unix time.
fn parse_since(s: &str, now: i64) -> anyhow::Result<i64> {
    let s = s.trim();
    if let Some((n, unit)) = s
        .find(|c: char| !c.is_ascii_digit())
        .filter(|&i| i > 0)
        .map(|i| s.split_at(i))
    {
        let mult = match unit {
            "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            "d" => Some(86400),
            _ => None,
        };
        if let (Some(m), Ok(n)) = (mult, n.parse::<i64>()) {
            return Ok(now - n * m);
        }
    }
    if let Ok(t) = s.parse::<i64>() {
        return Ok(t);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp());
    }
    anyhow::bail!("--since {s:?}: expected 30m, 2h, 3d, a date (2026-12-01), RFC 3339 or unix time")
}

fn utc(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// `postsift quarantine …`: straight on the directory and its index (SQLite's locking lets it
/// run beside the daemon), or with `store = "sql"` on the database every node shares.
pub fn quarantine(config: &Config, action: Action) -> anyhow::Result<u8> {
    use postsift::quarantine::sql::Store;
    use postsift::quarantine::Quarantine;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _in_rt = rt.enter();
    let empty;
    let store = if config.quarantine.in_sql() {
        anyhow::ensure!(
            !config.sql.url.is_empty(),
            "quarantine.store = \"sql\" needs `sql.url`"
        );
        let pool = postsift::sql::Pool::connect_lazy(&config.sql).context("sql.url")?;
        let metrics = postsift::sql::metrics::SqlMetrics::register(&prometheus::Registry::new());
        Store::Sql(postsift::sql::quarantine::SqlQuarantine::new(
            pool,
            &config.sql,
            metrics,
        ))
    } else {
        let dir = &config.quarantine.dir;
        // A quarantine that does not exist yet reads as an empty one, and is not created here:
        // the daemon creates it, as its own user (run as root, this would make it root's, and
        // the daemon run as `_postsift` could not open it).
        let open = if dir.join("index.db").exists() {
            dir.as_path()
        } else {
            empty = tempfile::tempdir()?;
            empty.path()
        };
        Store::File(std::sync::Arc::new(
            Quarantine::open(open).with_context(|| format!("quarantine.dir {}", dir.display()))?,
        ))
    };
    rt.block_on(run(config, &store, action))
}

async fn run(
    config: &Config,
    q: &postsift::quarantine::sql::Store,
    action: Action,
) -> anyhow::Result<u8> {
    use postsift::escape;
    use postsift::quarantine::{release, show, Filter};
    let now = chrono::Utc::now().timestamp();
    match action {
        Action::List {
            category,
            recipient,
            since,
        } => {
            let f = Filter {
                category,
                recipient,
                since: since.map(|s| parse_since(&s, now)).transpose()?,
            };
            for e in q.list(&f).await? {
                let rcpts: Vec<String> = e
                    .recipients
                    .iter()
                    .map(|r| {
                        let mark = if r.original { "" } else { "+" };
                        format!("{mark}{}={}", r.address, r.state)
                    })
                    .collect();
                println!(
                    "{}  {}  {:<9}  {:>8}  <{}>  {}  {}  {}",
                    e.id,
                    utc(e.time),
                    e.category,
                    e.size,
                    escape::text(e.sender.trim()),
                    escape::text(rcpts.join(",").trim()),
                    escape::text(e.reason.trim()),
                    escape::text(e.subject.trim()),
                );
            }
            Ok(0)
        }
        Action::Show { id, full } => {
            let e = q.entry(&id).await?;
            let (meta, raw) = q.read(&id).await?;
            println!("id:         {}", e.id);
            println!("time:       {}", utc(e.time));
            println!(
                "category:   {} ({})",
                e.category,
                escape::text(e.reason.trim())
            );
            println!("size:       {}", e.size);
            println!("sender:     <{}>", escape::text(meta.sender.trim()));
            for r in &e.recipients {
                let when = r.changed.map(utc).unwrap_or_default();
                println!(
                    "recipient:  <{}> {}{} {when} {}",
                    escape::text(r.address.trim()),
                    r.state,
                    if r.original { "" } else { " (released to)" },
                    escape::text(r.detail.as_deref().unwrap_or("").trim())
                );
            }
            let xf = &meta.xforward;
            println!(
                "client:     {} [{}] helo={} queue_id={}",
                escape::text(xf.name.as_deref().unwrap_or("-").trim()),
                escape::text(xf.addr.as_deref().unwrap_or("-").trim()),
                escape::text(xf.helo.as_deref().unwrap_or("-").trim()),
                escape::text(xf.ident.as_deref().unwrap_or("-").trim()),
            );
            println!("---");
            print!(
                "{}",
                show::render(&raw, (!full).then_some(show::BODY_LIMIT))
            );
            Ok(0)
        }
        Action::Release {
            id,
            recipient,
            to,
            force,
        } => {
            let reinjector = postsift::reinject::Reinjector::new(config);
            let req = release::Request {
                recipients: recipient,
                to,
                force,
            };
            let results = q.release(&reinjector, &id, &req).await?;
            let mut ok = true;
            for (rcpt, r) in &results {
                println!(
                    "<{}>: {}",
                    escape::text(rcpt.trim()),
                    escape::text(r.reply(&id).trim())
                );
                ok &= matches!(
                    r,
                    release::Result1::Released(_) | release::Result1::AlreadyReleased { .. }
                );
            }
            Ok(if ok { 0 } else { EX_TEMPFAIL })
        }
        Action::Delete { id } => {
            q.delete(&id).await?;
            println!("deleted {id}");
            Ok(0)
        }
        Action::Purge => {
            let before = now - (config.quarantine.retention_days * 86400) as i64;
            let (n, other) = q.purge(before).await?;
            match q {
                postsift::quarantine::sql::Store::File(_) => {
                    println!("purged {n} messages, {other} unfinished files")
                }
                postsift::quarantine::sql::Store::Sql(_) => {
                    println!("purged {n} messages, {other} quarantine chunks")
                }
            }
            Ok(0)
        }
    }
}
