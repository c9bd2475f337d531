//! How a file is checked: the [`Error`] that names the key to change, the [`Check`] each
//! section's `validate()` makes its errors with, and the record of what the file wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid value for `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
    /// Like `Invalid`, for a key inside an array of tables (`dkim_sign.keys[1].key`).
    #[error("{path}: invalid value for `{key}`: {message}")]
    InvalidAt {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// Makes the errors of one file, each naming its key.
#[derive(Clone, Copy)]
pub(super) struct Check<'a> {
    pub(super) path: &'a Path,
}

impl Check<'_> {
    /// `key`'s value cannot work.
    pub(super) fn bad(self, key: &'static str, message: impl Into<String>) -> Error {
        Error::Invalid {
            path: self.path.to_owned(),
            key,
            message: message.into(),
        }
    }

    /// Like [`Check::bad`], for a key inside an array of tables (`dkim_sign.keys[1].key`).
    pub(super) fn at(self, key: String, message: impl Into<String>) -> Error {
        Error::InvalidAt {
            path: self.path.to_owned(),
            key,
            message: message.into(),
        }
    }

    /// Each of `counts` must be at least 1.
    pub(super) fn at_least_one(self, counts: &[(&'static str, u64)]) -> Result<(), Error> {
        match counts.iter().find(|(_, n)| *n == 0) {
            Some((key, _)) => Err(self.bad(key, "must be at least 1")),
            None => Ok(()),
        }
    }

    /// A zero timeout fails every operation it guards, so it is never what was meant.
    pub(super) fn seconds(self, timeouts: &[(&'static str, u64)]) -> Result<(), Error> {
        match timeouts.iter().find(|(_, n)| *n == 0) {
            Some((key, _)) => Err(self.bad(key, "must be at least 1 second")),
            None => Ok(()),
        }
    }

    /// TOML has `inf` and `nan`; neither compares usefully with a score.
    pub(super) fn finite(self, levels: &[(&'static str, Option<f64>)]) -> Result<(), Error> {
        match levels
            .iter()
            .find(|(_, l)| l.is_some_and(|l| !l.is_finite()))
        {
            Some((key, _)) => Err(self.bad(key, "must be a finite number")),
            None => Ok(()),
        }
    }
}

/// The keys written in the file, section by section (`"rspamd"` → `{"endpoints", …}`).
pub(super) type Present = BTreeMap<String, BTreeSet<String>>;

/// `clamd.timeout is`, `clamd.on_failure, clamd.timeout are`.
pub(super) fn describe<'a>(section: &str, keys: impl Iterator<Item = &'a String>) -> String {
    let keys: Vec<String> = keys.map(|k| format!("{section}.{k}")).collect();
    match keys.len() {
        1 => format!("{} is", keys[0]),
        _ => format!("{} are", keys.join(", ")),
    }
}
