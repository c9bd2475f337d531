//! What the checks found, shared by the checks and their dispatcher: the spam engine's answer,
//! how a check fails ([`Failure`] of one [`FailureKind`]), and the [`ScanReport`] gathered for
//! the policy. A leaf of `scan`: the peer modules import it, never the dispatcher.

use std::time::Duration;

use super::{auth, banned, parts};

/// A spam engine's answer, in SpamAssassin's terms whichever engine gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpamResult {
    /// The score (spamd rounds it to one decimal in its `Spam:` header).
    pub score: f64,
    /// The engine's own threshold (informational: postsift's levels decide).
    pub required: f64,
    /// The engine's own verdict (informational).
    pub is_spam: bool,
    /// Rule (symbol) names with their scores.
    pub rules: Vec<(String, f64)>,
    /// rspamd's action (`reject`, `add header`, …); None for spamd.
    pub action: Option<String>,
}

/// Why a check gave no answer, as a small closed set (also the `kind` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection to the peer.
    Connect,
    /// The peer did not answer in time.
    Timeout,
    /// The peer's answer made no sense, or the connection broke mid-answer.
    Protocol,
    /// The peer answered with an error of its own.
    Refused,
    /// A size or count limit (the peer's, e.g. clamd's StreamMaxLength, or postsift's).
    Limit,
}

impl FailureKind {
    pub const ALL: &'static [&'static str] =
        &["connect", "timeout", "protocol", "refused", "limit"];

    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Protocol => "protocol",
            FailureKind::Refused => "refused",
            FailureKind::Limit => "limit",
        }
    }
}

/// A check that failed: its kind and the reason, for the log and the tempfail reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub reason: String,
}

impl Failure {
    pub fn new(kind: FailureKind, reason: impl Into<String>) -> Failure {
        Failure {
            kind,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The virus scanner's part of the report.
#[derive(Debug, Clone, PartialEq)]
pub enum VirusScan {
    /// No virus scanner configured.
    Off,
    Clean,
    Infected(Vec<String>),
    /// The scanner failed.
    Failed(Failure),
}

/// The spam engine's part of the report.
#[derive(Debug, Clone, PartialEq)]
pub enum SpamScan {
    Off,
    Scored(SpamResult),
    Failed(Failure),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScanReport {
    pub virus: VirusScan,
    pub spam: SpamScan,
    pub virus_time: Duration,
    pub spam_time: Duration,
    /// What the MIME walk found (None: not walked).
    pub parts: Option<PartsSummary>,
    /// The first part a `[banned]` rule banned.
    pub banned: Option<banned::Banned>,
    /// Mail authentication (None: `[auth]` off).
    pub auth: Option<auth::AuthReport>,
}

/// The MIME walk's part of the report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartsSummary {
    /// Decoded parts scanned.
    pub count: usize,
    /// The limit that stopped the walk (the message is then UNCHECKED).
    pub limit: Option<parts::Stop>,
    /// The part a virus was found in (its file name or type), when not the whole message.
    pub infected: Option<String>,
    /// Bytes of the message clamd was not sent with it: encoded bodies it was sent decoded as
    /// parts (or whose answer the verdict cache had), see `Scanners::virus_scan`.
    pub left_out: u64,
    /// Decoded bytes of text parts not sent as parts: clamd's own MIME parser decodes them
    /// from the message (`parts::Part::clamd_reads`).
    pub text_in_message: u64,
}
