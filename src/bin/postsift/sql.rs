//! `postsift sql init`: amavis 2.13's schema created in the database `sql.url` names, where
//! missing (an existing amavis database is left as it is).

use std::process::ExitCode;

use clap::Subcommand;
use postsift::config::Config;
use postsift::sql::{schema, Error, Pool};

use crate::{EX_UNAVAILABLE, EX_USAGE};

#[derive(Subcommand)]
pub enum Action {
    /// Creates amavis's tables and indexes (maddr, msgs, msgrcpt, quarantine, policy, users,
    /// mailaddr, wblist) where missing; tables that exist are left unchanged. Exit 0, 64
    /// without `sql.url`, 69 when the database cannot be reached or refuses.
    Init,
}

/// `sql.url`'s problem as check-config says it (sqlx's reason, never the URL: it may hold a
/// password).
pub fn url_problem(e: &Error) -> String {
    match e {
        Error::Config { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

pub fn sql(config: &Config, action: Action) -> ExitCode {
    match action {
        Action::Init => init(config),
    }
}

fn init(config: &Config) -> ExitCode {
    if !config.sql.enabled() {
        eprintln!("postsift: sql.url is not set: no database to initialise");
        return ExitCode::from(EX_USAGE);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("postsift: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let r = rt.block_on(async {
        let pool = Pool::connect_lazy(&config.sql)?;
        let n = postsift::sql::within(config.sql.timeout() * 6, schema::init(&pool, None)).await;
        pool.close().await;
        n.map(|n| (n, pool.backend()))
    });
    match r {
        Ok((n, backend)) => {
            println!(
                "sql init: amavis schema ready ({backend:?}, {n} statements, existing tables kept)"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("postsift: sql init: {e}");
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
}
