//! What a scanner's check gives, shared by the scanners and the scan report: a spam engine's
//! answer, and a failure with its kind. A leaf: it imports nothing of the crate.

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
