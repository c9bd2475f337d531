//! `postsift greylist list|whitelist|purge`: the greylisting store, beside the daemon or not.

use anyhow::Context;
use clap::Subcommand;
use postsift::config::Config;

#[derive(Subcommand)]
pub enum Action {
    /// Print every triplet and auto-whitelisted client, one a line.
    List,
    /// Put a client address on the auto-whitelist (as if it had passed
    /// `auto_whitelist_clients` times).
    Whitelist { client: std::net::IpAddr },
    /// Delete what is past `max_age` (or past `retry_window` without a pass).
    Purge,
}

/// `postsift greylist list|whitelist|purge`: straight on the store, so it works whether or not
/// the daemon runs (SQLite's locking, or Redis).
pub fn greylist(config: &Config, action: Action) -> anyhow::Result<()> {
    use postsift::greylist::store::{Entry, Location, Store};
    let g = &config.greylist;
    let mut location = Location::parse(&g.store);
    // A store that does not exist yet reads as an empty one, and is not created here: the
    // daemon creates it, as its own user (run as root, this would make it root's, and the
    // daemon run as `_postsift` could not open it).
    let empty;
    if matches!(&location, Location::Embedded(db) if !db.exists()) {
        if matches!(action, Action::Whitelist { .. }) {
            anyhow::bail!(
                "greylist.store {}: no store there yet; `postsift run` creates it at start",
                g.store
            );
        }
        empty = tempfile::tempdir()?;
        location = Location::Embedded(empty.path().join("greylist.db"));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let time = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| t.to_string())
    };
    let now = chrono::Utc::now().timestamp();
    let params = postsift::greylist::decide::Params::from(g);
    rt.block_on(async {
        let store = Store::open(&location, std::time::Duration::from_secs(g.store_timeout))
            .with_context(|| format!("greylist.store {:?}", g.store))?;
        match action {
            Action::List => {
                for e in store.list().await? {
                    match e {
                        Entry::Triplet { key, first, last } => {
                            let state = if last - first >= params.delay {
                                "passed"
                            } else {
                                "waiting"
                            };
                            println!(
                                "triplet {key} first={} last={} {state}",
                                time(first),
                                time(last)
                            );
                        }
                        Entry::Client { ip, count, last } => {
                            let awl = params.awl_clients > 0 && count >= params.awl_clients;
                            println!(
                                "client {ip} passes={count} last={} {}",
                                time(last),
                                if awl { "whitelisted" } else { "counting" }
                            );
                        }
                    }
                }
            }
            Action::Whitelist { client } => {
                if params.awl_clients == 0 {
                    anyhow::bail!(
                        "greylist.auto_whitelist_clients is 0 (auto-whitelist off): a whitelisted \
                         client would not be honoured; add it to a whitelist_clients file instead"
                    );
                }
                let ip = client.to_canonical().to_string();
                store
                    .whitelist(params, &ip, params.awl_clients, now)
                    .await?;
                println!("client {ip} auto-whitelisted");
            }
            Action::Purge => {
                let (t, c) = store.purge(params, now).await?;
                println!("purged {t} triplets, {c} clients");
            }
        }
        Ok(())
    })
}
