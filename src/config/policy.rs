//! What a verdict does: the [`Action`] of a content category, `[virus]`, `[spam]` (its levels,
//! and the engine whose score goes through them), and `[headers]`, the headers postsift writes.
use serde::Deserialize;

use super::check::{Check, Error};

/// Which spam engine scores messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpamEngine {
    Spamd,
    Rspamd,
}

/// The action for a content category ("destiny" in amavis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Deliver (tagged).
    Pass,
    /// Accept with 250 and drop.
    Discard,
    /// Answer 554 5.7.0; Postfix bounces to the sender.
    Reject,
    /// Store in `[quarantine] dir`, then answer `250 2.7.0 Ok, quarantined` (451 if it
    /// cannot be stored).
    Quarantine,
}

/// `[virus]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Virus {
    /// `"discard"` (default), `"reject"`, `"quarantine"` or `"pass"` (then `X-Amavis-Alert`
    /// is added).
    pub action: Action,
}

impl Default for Virus {
    fn default() -> Self {
        Virus {
            action: Action::Discard,
        }
    }
}

/// `[spam]`: SpamAssassin levels, as amavis's `$sa_tag_level_deflt` and friends.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Spam {
    /// `"spamd"` (default) or `"rspamd"`: the one engine whose score goes through the levels
    /// below. Only one engine is asked; scores are never added up.
    pub engine: SpamEngine,
    /// `X-Spam-*` headers are added at or above this score. Default -999.0.
    pub tag_level: f64,
    /// At or above: `X-Spam-Flag: YES` and the subject tag. Default 6.31.
    pub tag2_level: f64,
    /// At or above: the spam action applies. Default 6.31.
    pub kill_level: f64,
    /// Prepended to the Subject at tag2. Default `"***Spam*** "`.
    pub subject_tag: String,
    /// `"pass"` (default), `"discard"`, `"reject"` or `"quarantine"`.
    pub action: Action,
    /// At or above this score spam is quarantined rather than delivered (a `discard` or
    /// `reject` action at `kill_level` still wins). Default: unset (off).
    pub quarantine_level: Option<f64>,
    /// The spam engine is not asked when the virus check (or a banned file) already decides
    /// the message for every recipient (its action is `discard` or `reject`): no score could
    /// change the outcome (amavis does the same). The spam check then waits for the virus
    /// check rather than running beside it. Default true.
    pub skip_when_decided: bool,
}

impl Default for Spam {
    fn default() -> Self {
        Spam {
            engine: SpamEngine::Spamd,
            tag_level: -999.0,
            tag2_level: 6.31,
            kill_level: 6.31,
            subject_tag: "***Spam*** ".into(),
            action: Action::Pass,
            quarantine_level: None,
            skip_when_decided: true,
        }
    }
}

/// `[headers]`: the headers postsift writes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Headers {
    /// Value of `X-Virus-Scanned`. Default `"postsift at <domain of hostname>"`.
    pub virus_scanned: Option<String>,
    /// Subject tag for mail that could not be virus-scanned and was passed. Default `"***UNCHECKED*** "`.
    pub unchecked_subject_tag: String,
}

impl Default for Headers {
    fn default() -> Self {
        Headers {
            virus_scanned: None,
            unchecked_subject_tag: "***UNCHECKED*** ".into(),
        }
    }
}

impl Spam {
    pub(super) fn validate(&self, check: Check) -> Result<(), Error> {
        check.finite(&[
            ("spam.quarantine_level", self.quarantine_level),
            ("spam.tag_level", Some(self.tag_level)),
            ("spam.tag2_level", Some(self.tag2_level)),
            ("spam.kill_level", Some(self.kill_level)),
        ])?;
        if self.tag2_level < self.tag_level {
            return Err(check.bad("spam.tag2_level", "must not be below spam.tag_level"));
        }
        Ok(())
    }
}
