//! The types the greylisting stores share with their users: a store failure, one stored
//! record, and where the store lives. Apart from the store and its backends, so the backends
//! need not import the store that dispatches to them.

use std::path::PathBuf;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("embedded store: {0}")]
    Embedded(String),
    #[error("redis: {0}")]
    Redis(String),
    #[error("store timed out")]
    Timeout,
}

impl Error {
    /// The `kind` label of `postsift_greylist_store_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Embedded(_) => "embedded",
            Error::Redis(_) => "redis",
            Error::Timeout => "timeout",
        }
    }
}

/// One stored record, for `postsift greylist list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Triplet { key: String, first: i64, last: i64 },
    Client { ip: String, count: u32, last: i64 },
}

/// `greylist.store` parsed: a path, or a `redis://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Embedded(PathBuf),
    Redis(String),
}

impl Location {
    pub fn parse(s: &str) -> Location {
        if s.starts_with("redis://") || s.starts_with("rediss://") || s.starts_with("redis+unix://")
        {
            Location::Redis(s.to_owned())
        } else {
            Location::Embedded(PathBuf::from(s))
        }
    }
}
