//! `[quarantine]`: the store the `quarantine` action keeps messages in, and the release
//! protocol's listener.
use std::path::PathBuf;

use serde::Deserialize;

use super::check::{Check, Error};
use super::listen::{parse_policy_listen, PolicyListen};

/// `[quarantine]`: where the `quarantine` action keeps messages, and how they are released.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quarantine {
    /// The store: one file per message under `msgs/` and the index `index.db` (SQLite).
    /// Default `"/var/lib/postsift/quarantine"`.
    pub dir: PathBuf,
    /// Days a quarantined message is kept; the daemon purges older ones hourly. Default 14.
    pub retention_days: u64,
    /// Where amavis's release protocol (AM.PDP, `request=release`, what `amavisd-release`
    /// speaks) is served: `"127.0.0.1:9998"` or `"unix:/path"`. Default `""`: off.
    pub release_listen: String,
    /// AM.PDP connections served at once; more are closed at once (counted in
    /// `postsift_listener_refused_total{listener="release"}`). An idle one is closed after
    /// `server.read_timeout`, and at shutdown between requests. Default 8.
    pub release_max_connections: usize,
    /// Where quarantined messages are kept: `"file"` (`dir`, on this node) or `"sql"` (amavis's
    /// `quarantine` table in the `[sql] url` database, shared by every node that names it;
    /// listed and released from any of them). Default `"file"`.
    pub store: Store,
}

/// `[quarantine] store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    #[default]
    File,
    Sql,
}

impl Default for Quarantine {
    fn default() -> Self {
        Quarantine {
            dir: "/var/lib/postsift/quarantine".into(),
            retention_days: 14,
            release_listen: String::new(),
            release_max_connections: 8,
            store: Store::File,
        }
    }
}

impl Quarantine {
    /// `release_listen`, parsed (validated at load); None when off.
    pub fn release_listener(&self) -> Option<PolicyListen> {
        parse_policy_listen(&self.release_listen)
    }

    /// True with `store = "sql"`.
    pub fn in_sql(&self) -> bool {
        self.store == Store::Sql
    }
}

impl Quarantine {
    /// `store = "sql"` needs the database: `sql_url` is `[sql] url`.
    pub(super) fn validate_store(&self, check: Check, sql_url: &str) -> Result<(), Error> {
        if self.in_sql() && sql_url.is_empty() {
            return Err(check.bad(
                "quarantine.store",
                "\"sql\" needs the [sql] database: set `sql.url`",
            ));
        }
        Ok(())
    }

    pub(super) fn validate(&self, check: Check) -> Result<(), Error> {
        check.at_least_one(&[("quarantine.retention_days", self.retention_days)])?;
        if !self.release_listen.is_empty() && self.release_listener().is_none() {
            return Err(check.bad(
                "quarantine.release_listen",
                "expected ip:port, unix:/absolute/path, or \"\" to switch it off",
            ));
        }
        check.at_least_one(&[(
            "quarantine.release_max_connections",
            self.release_max_connections as u64,
        )])
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    #[test]
    fn store_sql_needs_the_sql_url() {
        let p = Path::new("t.toml");
        let e = Config::parse("[quarantine]\nstore = \"sql\"\n", p).unwrap_err();
        assert!(e.to_string().contains("quarantine.store"), "{e}");
        let c = Config::parse(
            "[quarantine]\nstore = \"sql\"\n[sql]\nurl = \"postgresql://u@127.0.0.1/db\"\n",
            p,
        )
        .unwrap();
        assert!(c.quarantine.in_sql());
        assert!(!Config::default().quarantine.in_sql());
        assert!(Config::parse("[quarantine]\nstore = \"nfs\"\n", p).is_err());
    }
}
