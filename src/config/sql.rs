//! `[sql]`: amavis's SQL database (PostgreSQL, or MariaDB/MySQL), shared by several nodes: the
//! message log, per-user lookups, and the SQL quarantine's connection settings.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::{Check, Error};

/// `[sql]`: where the database is and what postsift uses it for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlConfig {
    /// `postgresql://user:password@host:port/database` (or `postgres://`), or
    /// `mysql://user:password@host:port/database` (or `mariadb://`) for MariaDB and MySQL.
    /// Default "": no SQL at all.
    pub url: String,
    /// Write the message log (`msgs`, `msgrcpt`, `maddr`). Default false.
    pub log: bool,
    /// Per-recipient policy and white/blacklists from `users`, `policy`, `mailaddr`, `wblist`.
    /// Default false.
    pub lookups: bool,
    /// amavis's `$partition_tag` for new rows. Default 0.
    pub partition_tag: i32,
    /// Connections in the pool. Default 8.
    pub max_connections: u32,
    /// Seconds to get a connection (connect or wait for a free one). Default 5.
    pub connect_timeout: u64,
    /// Seconds for one unit of work (a log batch, a quarantine store, a lookup). Default 10.
    pub timeout: u64,
    /// Messages the log may hold while the database is slow or down; more are dropped and
    /// counted. Default 10000.
    pub log_backlog: usize,
    /// Messages written per log transaction at most. Default 100.
    pub log_batch: usize,
    /// Days the log's rows (`msgs` not in the SQL quarantine, their `msgrcpt`, the `maddr`
    /// rows nothing else refers to) are kept: every node with `log` on deletes older ones at
    /// start and hourly. Default: `quarantine.retention_days` (14).
    pub log_retention_days: Option<u64>,
    /// Seconds a lookup result is reused. Default 60.
    pub cache_ttl: u64,
    /// Lookup results kept at most. Default 10000.
    pub cache_size: usize,
    /// Bytes per `quarantine.mail_text` chunk (amavis's `$sql_quarantine_chunksize_max`).
    /// Default 16384.
    pub chunk_size: usize,
    /// amavis's `$recipient_delimiter`, for the lookup keys (`user+ext@…` → `user@…`).
    /// Default "+"; "" for none.
    pub recipient_delimiter: String,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            url: String::new(),
            log: false,
            lookups: false,
            partition_tag: 0,
            max_connections: 8,
            connect_timeout: 5,
            timeout: 10,
            log_backlog: 10000,
            log_batch: 100,
            log_retention_days: None,
            cache_ttl: 60,
            cache_size: 10000,
            chunk_size: 16384,
            recipient_delimiter: "+".into(),
        }
    }
}

/// A value of `[sql]` that cannot work: `key` is the full key (`sql.url`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid value for `{key}`: {message}")]
pub struct SqlConfigError {
    pub key: &'static str,
    pub message: String,
}

/// The URL schemes `sql.url` takes.
pub const SQL_SCHEMES: [&str; 4] = ["postgresql", "postgres", "mysql", "mariadb"];

impl SqlConfig {
    /// Whether any SQL is configured.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Checks the values; Err names the key. Never repeats the URL (it may hold a password).
    pub fn validate(&self) -> Result<(), SqlConfigError> {
        let bad = |key: &'static str, message: &str| {
            Err(SqlConfigError {
                key,
                message: message.to_string(),
            })
        };
        if !self.url.is_empty() {
            let scheme = self.url.split_once("://").map(|(s, _)| s).unwrap_or("");
            if !SQL_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
                return bad(
                    "sql.url",
                    "must start with postgresql:// or mysql:// (or mariadb://)",
                );
            }
            let rest = &self.url[scheme.len() + 3..];
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            let host = authority.rsplit('@').next().unwrap_or("");
            if host.is_empty() || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad(
                    "sql.url",
                    "expected scheme://user:password@host:port/database (no spaces)",
                );
            }
        } else if self.log || self.lookups {
            return bad("sql.url", "`sql.log` and `sql.lookups` need a database url");
        }
        if self.max_connections == 0 {
            return bad("sql.max_connections", "must be at least 1");
        }
        if self.connect_timeout == 0 {
            return bad("sql.connect_timeout", "must be at least 1 second");
        }
        if self.timeout == 0 {
            return bad("sql.timeout", "must be at least 1 second");
        }
        if self.log_batch == 0 {
            return bad("sql.log_batch", "must be at least 1");
        }
        if self.log_backlog == 0 {
            return bad("sql.log_backlog", "must be at least 1");
        }
        if self.log_retention_days == Some(0) {
            return bad("sql.log_retention_days", "must be at least 1");
        }
        if self.chunk_size < 512 || self.chunk_size > 16 << 20 {
            return bad("sql.chunk_size", "must be between 512 bytes and 16 MiB");
        }
        if self.recipient_delimiter.chars().count() > 1 {
            return bad("sql.recipient_delimiter", "must be one character or empty");
        }
        Ok(())
    }

    pub(super) fn validate_in(&self, check: Check) -> Result<(), Error> {
        self.validate().map_err(|e| check.bad(e.key, e.message))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<crate::config::Config, Error> {
        crate::config::Config::parse(text, std::path::Path::new("test.toml"))
    }

    #[test]
    fn sql_section_parses_with_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.sql, SqlConfig::default());
        assert!(!c.sql.enabled());
        let c = parse(
            "[sql]\nurl = \"postgresql://postsift:pw@127.0.0.1:5432/mail\"\nlog = true\n\
             lookups = true\npartition_tag = 49\nlog_batch = 10\n",
        )
        .unwrap();
        assert!(c.sql.enabled() && c.sql.log && c.sql.lookups);
        assert_eq!(c.sql.partition_tag, 49);
        assert_eq!(c.sql.log_batch, 10);
        assert_eq!(c.sql.max_connections, 8);
        parse("[sql]\nurl = \"mariadb://u:p@[::1]:3306/db\"\n").unwrap();
        parse("[sql]\nurl = \"mysql://u@localhost/db\"\n").unwrap();
    }

    #[test]
    fn sql_errors_name_their_key_and_hide_the_url() {
        let refused = |text: &str, key: &str| {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains(&format!("`{key}`")), "{text:?} → {e}");
            assert!(!e.contains("secretpw"), "the password is not repeated: {e}");
        };
        refused("[sql]\nurl = \"sqlite://secretpw\"\n", "sql.url");
        refused("[sql]\nurl = \"postgresql://u:secretpw@\"\n", "sql.url");
        refused(
            "[sql]\nurl = \"postgresql://u:secret pw@h/db\"\n",
            "sql.url",
        );
        refused("[sql]\nlog = true\n", "sql.url");
        refused("[sql]\nlookups = true\n", "sql.url");
        let url = "[sql]\nurl = \"postgresql://u:secretpw@h/db\"\n";
        for (key, value) in [
            ("max_connections", "0"),
            ("connect_timeout", "0"),
            ("timeout", "0"),
            ("log_batch", "0"),
            ("log_backlog", "0"),
            ("log_retention_days", "0"),
            ("chunk_size", "100"),
            ("recipient_delimiter", "\"+-\""),
        ] {
            refused(&format!("{url}{key} = {value}\n"), &format!("sql.{key}"));
        }
        let e = parse("[sql]\nurll = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("urll"), "{e}");
    }
}
