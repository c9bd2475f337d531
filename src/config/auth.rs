//! `[auth]`: mail authentication (SPF, DKIM, DMARC, ARC), and `[auth.scores]` over the table
//! of the rules it scores ([`RULES`]).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::check::{describe, Check, Error, Present};

/// The rules postsift scores, with SpamAssassin 4.0's default scores for them (score set 1:
/// network tests on, Bayes off — the set where SPF and DMARC fire without assuming Bayes).
/// SpamAssassin has no scores for ARC; postsift's ARC rules are informational (±0.001).
pub const RULES: &[(&str, f64)] = &[
    ("SPF_PASS", -0.001),
    ("SPF_FAIL", 0.919),
    ("SPF_SOFTFAIL", 0.972),
    ("SPF_NEUTRAL", 0.652),
    ("SPF_NONE", 0.001),
    ("T_SPF_TEMPERROR", 0.01),
    ("T_SPF_PERMERROR", 0.01),
    ("SPF_HELO_PASS", -0.001),
    ("SPF_HELO_FAIL", 0.001),
    ("SPF_HELO_SOFTFAIL", 0.896),
    ("SPF_HELO_NEUTRAL", 0.001),
    ("SPF_HELO_NONE", 0.001),
    ("T_SPF_HELO_TEMPERROR", 0.01),
    ("T_SPF_HELO_PERMERROR", 0.01),
    ("DKIM_SIGNED", 0.1),
    ("DKIM_VALID", -0.1),
    ("DKIM_VALID_AU", -0.1),
    ("DKIM_VALID_EF", -0.1),
    ("DKIM_INVALID", 0.1),
    ("DMARC_PASS", -0.001),
    ("DMARC_NONE", 0.898),
    ("DMARC_QUAR", 1.198),
    ("DMARC_REJECT", 1.797),
    ("DMARC_MISSING", 0.001),
    ("ARC_VALID", -0.001),
    ("ARC_INVALID", 0.001),
];

/// What a DMARC failure does (`[auth] dmarc_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmarcPolicy {
    /// Reported in Authentication-Results only.
    Ignore,
    /// Reported, and its score (`DMARC_*`) added to the spam score.
    Score,
    /// Scored, and the domain's policy applied: p=reject → `550 5.7.1`, p=quarantine → spam.
    Enforce,
}

/// `[auth]`: mail authentication (SPF, DKIM, DMARC, ARC) checked on every message, written to
/// `Authentication-Results` and scored like SpamAssassin's rules of the same names.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// Check and add `Authentication-Results` (and remove forged ones carrying
    /// `authserv_id`). Default true.
    pub enabled: bool,
    /// The authserv-id of the `Authentication-Results` header postsift writes and removes.
    /// Default: `server.hostname`.
    pub authserv_id: Option<String>,
    /// SPF for MAIL FROM and HELO, with the client's address and HELO from XFORWARD (without
    /// XFORWARD ADDR, SPF is not checked). Default true.
    pub spf: bool,
    /// Every DKIM signature. Default true.
    pub dkim: bool,
    /// DMARC for the From domain. Default true.
    pub dmarc: bool,
    /// The ARC chain. Default true.
    pub arc: bool,
    /// `"ignore"`, `"score"` (default) or `"enforce"`.
    pub dmarc_policy: DmarcPolicy,
    /// ARC sealers (the `d=` of the newest ARC-Seal) whose passing chain exempts a message
    /// from a DMARC reject (mailing lists, forwarders). Default `[]`.
    pub trusted_arc_sealers: Vec<String>,
    /// Seconds all the checks of one message may take together; a method not finished by
    /// then gives `temperror`. Default 20.
    pub timeout: u64,
    /// Messages larger than this (bytes) get SPF only: DKIM, ARC and DMARC need the whole
    /// message in memory, and are left out rather than guessed. Default 16777216.
    pub max_message_size: u64,
    /// DKIM results written in `Authentication-Results` at most (passes first, then in the
    /// message's order); the header says how many more there were, and
    /// `postsift_auth_dkim_results_omitted_total` counts them. Default 10.
    pub max_dkim_results: usize,
    /// Scores by rule name, over SpamAssassin's defaults (`SPF_PASS = -0.001`, …; the full
    /// list is in postsift.example.toml). A rule scored 0 is off. Default: SpamAssassin's.
    pub scores: BTreeMap<String, f64>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            enabled: true,
            authserv_id: None,
            spf: true,
            dkim: true,
            dmarc: true,
            arc: true,
            dmarc_policy: DmarcPolicy::Score,
            trusted_arc_sealers: Vec::new(),
            timeout: 20,
            max_message_size: 16_777_216,
            max_dkim_results: 10,
            scores: BTreeMap::new(),
        }
    }
}

impl Auth {
    pub(super) fn validate(&self, check: Check) -> Result<(), Error> {
        check.at_least_one(&[("auth.max_dkim_results", self.max_dkim_results as u64)])?;
        if let Some(id) = &self.authserv_id {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
                return Err(check.bad(
                    "auth.authserv_id",
                    "must be a host name: printable ASCII without spaces or ';'",
                ));
            }
        }
        for (name, score) in &self.scores {
            if !RULES.iter().any(|(r, _)| r == name) {
                return Err(check.bad(
                    "auth.scores",
                    format!(
                        "unknown rule {name:?}; known: {}",
                        RULES.iter().map(|(r, _)| *r).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            if !score.is_finite() {
                return Err(check.bad("auth.scores", format!("{name}: must be a finite number")));
            }
        }
        for d in &self.trusted_arc_sealers {
            if d.is_empty() || d.contains(char::is_whitespace) {
                return Err(check.bad(
                    "auth.trusted_arc_sealers",
                    format!("{d:?}: expected a domain name"),
                ));
            }
        }
        check.seconds(&[("auth.timeout", self.timeout)])
    }
}

impl Auth {
    /// `[dns]` and `[auth]` keys written (`present`) while `auth.enabled` is false.
    pub(super) fn warnings(&self, present: &Present) -> Vec<String> {
        let mut out = Vec::new();
        if self.enabled {
            return out;
        }
        if present.contains_key("dns") {
            out.push(
                "[dns] is not used: auth.enabled is false, and only mail authentication \
                 asks DNS"
                    .to_owned(),
            );
        }
        if let Some(keys) = present.get("auth") {
            let unused = keys.iter().filter(|k| *k != "enabled");
            if unused.clone().next().is_some() {
                out.push(format!(
                    "{} not used: auth.enabled is false",
                    describe("auth", unused)
                ));
            }
        }
        out
    }
}
