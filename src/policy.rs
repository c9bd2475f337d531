//! Judging a scan: the content category in amavis order (virus > banned > unchecked > DMARC
//! reject > spam at kill level > clean) and the configured action for it, as typed values (the
//! reply texts are the SMTP side's, in `smtp::reply`). Pure functions of the report and the
//! configuration.
//!
//! Mail authentication counts in two ways. Its rules (`SPF_PASS`, `DKIM_VALID_AU`, …) are added
//! to the spam engine's score and listed with its rules, as SpamAssassin would list its own.
//! Without a spam engine (none configured, or it failed and was passed) there is no spam score
//! and so no X-Spam-* headers: a score of authentication alone cannot reach any spam level
//! worth the name, and a header saying "No, score=-0.1" would tell mailbox rules that the
//! content was scanned when it was not; the results are still in Authentication-Results.
//! With `[auth] dmarc_policy = "enforce"`, a DMARC failure is judged by the domain's policy:
//! p=reject refuses the message (unless a trusted ARC sealer vouches for it), p=quarantine makes
//! it spam.

use crate::config::{Action, Config, DmarcPolicy, OnFailure, Unchecked};
use crate::scan::auth::{self, AuthReport, DmarcPolicyKind, Verdict};
use crate::scan::parts::LimitKind;
use crate::scan::{Failure, ScanReport, SpamResult, SpamScan, VirusScan};

#[derive(Debug, Clone, PartialEq)]
pub enum Category {
    Virus(Vec<String>),
    /// A part a `[banned]` rule banned: its name and what it is.
    Banned {
        name: String,
        kind: String,
    },
    /// Not virus-scanned (scanner failed, passed by `on_failure = "pass"`).
    Unchecked,
    /// Failed DMARC for a domain whose policy is p=reject, with `dmarc_policy = "enforce"`.
    DmarcReject {
        /// The From domain.
        domain: String,
    },
    /// At or above the kill level.
    Spam,
    Clean,
}

impl Category {
    /// amavis's order, most important first (0: virus).
    pub fn rank(&self) -> u8 {
        match self {
            Category::Virus(_) => 0,
            Category::Banned { .. } => 1,
            Category::Unchecked => 2,
            Category::DmarcReject { .. } => 3,
            Category::Spam => 4,
            Category::Clean => 5,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Category::Virus(_) => "virus",
            Category::Banned { .. } => "banned",
            Category::Unchecked => "unchecked",
            Category::DmarcReject { .. } => "dmarc",
            Category::Spam => "spam",
            Category::Clean => "clean",
        }
    }
}

/// What happens to the message.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Rewrite headers and reinject.
    Deliver,
    /// Accept and drop (the client gets a 2xx).
    Discard,
    /// Refuse (5xx; Postfix bounces to the sender).
    Reject,
    /// Keep in the quarantine, then accept (2xx); a 4xx if it cannot be stored.
    Quarantine,
    /// Retry later (4xx): a check failed and policy says so, or rspamd asked to greylist.
    Tempfail(Tempfail),
}

/// Why a message is tempfailed.
#[derive(Debug, Clone, PartialEq)]
pub enum Tempfail {
    /// The virus scanner failed: its reason, on one line.
    VirusScan(String),
    /// The spam engine failed.
    SpamScan(String),
    /// rspamd's greylist or soft reject action.
    Greylist(String),
    /// The MIME walk stopped at a limit and `[parts] on_… = "tempfail"`: the limit's detail.
    Unchecked(String),
    /// The MIME walk could not get the decoder memory it needed from `server.max_memory`.
    Resources(String),
    /// The message was to be quarantined and could not be stored: why.
    Quarantine(String),
    /// DKIM signing failed and `[dkim_sign] on_error = "tempfail"`: why.
    Sign(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub category: Category,
    pub disposition: Disposition,
    /// The spam result that the headers report, if spam was checked.
    pub spam: Option<SpamResult>,
    /// For a tempfail, what caused it (a metric label): "clamd", "spamd", "rspamd", "greylist"
    /// or "unchecked".
    pub tempfail_reason: Option<&'static str>,
    /// Why the message could not be fully checked, whatever was done with it (a metric label):
    /// "scanner" (clamd failed) or the walk's limit ("parts", "bytes", "depth", "ratio",
    /// "encrypted").
    pub unchecked_reason: Option<&'static str>,
    /// The mail authentication results the headers report (None: `[auth]` off).
    pub auth: Option<AuthReport>,
    /// What DMARC enforcement did (the `dis=` of Authentication-Results).
    pub dmarc: DmarcAction,
}

/// What DMARC enforcement does to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DmarcAction {
    /// Nothing: DMARC passed, is not enforced, or the policy is p=none.
    #[default]
    None,
    /// Treated as spam (p=quarantine).
    Quarantine,
    /// Refused (p=reject).
    Reject,
}

impl DmarcAction {
    pub fn label(self) -> &'static str {
        match self {
            DmarcAction::None => "none",
            DmarcAction::Quarantine => "quarantine",
            DmarcAction::Reject => "reject",
        }
    }
}

/// The DMARC disposition under `[auth] dmarc_policy`: only `"enforce"` acts, only on a
/// `fail` with SPF checked, and a p=reject becomes nothing when the ARC chain passes with a
/// trusted sealer.
pub fn dmarc_action(config: &Config, auth: Option<&AuthReport>) -> DmarcAction {
    let Some(a) = auth else {
        return DmarcAction::None;
    };
    if config.auth.dmarc_policy != DmarcPolicy::Enforce {
        return DmarcAction::None;
    }
    // SPF could not be checked (no client address): a fail may only mean that SPF, which
    // would have passed, was missing. Reported, not enforced.
    if a.spf_skipped.is_some() {
        return DmarcAction::None;
    }
    match &a.dmarc {
        Some(d) if d.result == Verdict::Fail => match d.policy {
            Some(DmarcPolicyKind::Reject)
                if auth::trusted_arc(a, &config.auth.trusted_arc_sealers) =>
            {
                DmarcAction::None
            }
            Some(DmarcPolicyKind::Reject) => DmarcAction::Reject,
            Some(DmarcPolicyKind::Quarantine) => DmarcAction::Quarantine,
            _ => DmarcAction::None,
        },
        _ => DmarcAction::None,
    }
}

/// The spam engine's result with the authentication rules added (score and list, sorted by
/// name as SpamAssassin sorts its own). A rule the engine already fired itself (a SpamAssassin
/// with its SPF/DKIM plugins and DNS on) is not counted twice: the engine's stays.
fn with_auth_rules(mut r: SpamResult, rules: Vec<(String, f64)>) -> SpamResult {
    let rules: Vec<(String, f64)> = rules
        .into_iter()
        .filter(|(n, _)| !r.rules.iter().any(|(m, _)| m == n))
        .collect();
    if rules.is_empty() {
        return r;
    }
    r.score += rules.iter().map(|(_, s)| s).sum::<f64>();
    r.rules.extend(rules);
    r.rules.sort_by(|a, b| a.0.cmp(&b.0));
    r
}

/// The configured answer to a walk stopped by `kind`.
fn on_limit(config: &Config, kind: LimitKind) -> Unchecked {
    let p = &config.parts;
    match kind {
        LimitKind::Parts => p.on_max_parts,
        LimitKind::Bytes => p.on_max_decoded_bytes,
        LimitKind::Depth => p.on_max_depth,
        LimitKind::Ratio => p.on_ratio,
        LimitKind::Encrypted => p.on_encrypted,
        LimitKind::Decoder => p.on_decoder,
        LimitKind::Time => p.on_max_walk_time,
        LimitKind::Size => p.on_max_message_size,
        LimitKind::Error => p.on_walk_error,
        // Not the message's fault: postsift is busy; the client retries (`452 4.3.1`).
        LimitKind::Memory => Unchecked::Tempfail,
    }
}

pub fn decide(config: &Config, report: &ScanReport) -> Decision {
    let auth_rules = || {
        report
            .auth
            .as_ref()
            .map(|a| auth::rules(a, config))
            .unwrap_or_default()
    };
    let spam = match &report.spam {
        SpamScan::Scored(r) => Some(with_auth_rules(r.clone(), auth_rules())),
        _ => None,
    };
    let dmarc = dmarc_action(config, report.auth.as_ref());
    let decision = |category: Category, disposition| Decision {
        category,
        disposition,
        spam: spam.clone(),
        tempfail_reason: None,
        unchecked_reason: None,
        auth: report.auth.clone(),
        dmarc,
    };
    let tempfail = |reason: &'static str, category: Category, t: Tempfail| Decision {
        tempfail_reason: Some(reason),
        ..decision(category, Disposition::Tempfail(t))
    };
    let action = |a: Action| match a {
        Action::Pass => Disposition::Deliver,
        Action::Discard => Disposition::Discard,
        Action::Reject => Disposition::Reject,
        Action::Quarantine => Disposition::Quarantine,
    };

    if let VirusScan::Infected(names) = &report.virus {
        return decision(Category::Virus(names.clone()), action(config.virus.action));
    }
    // BANNED ranks below VIRUS and above everything else (amavis's order), and is known even
    // when clamd failed: a banned file is refused rather than retried.
    if let Some(b) = &report.banned {
        let category = Category::Banned {
            name: b.name.clone(),
            kind: b.kind.clone(),
        };
        return decision(category, action(config.banned.action));
    }
    // A walk stopped at a limit: UNCHECKED, unless `[parts] on_…` asks to treat it as banned
    // (same rank as a banned file) or to tempfail it.
    let stop = report.parts.as_ref().and_then(|p| p.limit.as_ref());
    if let Some(stop) = stop {
        let unchecked = |d: Decision| Decision {
            unchecked_reason: Some(stop.kind.label()),
            ..d
        };
        match on_limit(config, stop.kind) {
            Unchecked::Pass => {}
            Unchecked::Banned => {
                let category = Category::Banned {
                    name: stop.detail.clone(),
                    kind: "UNCHECKED".into(),
                };
                return unchecked(decision(category, action(config.banned.action)));
            }
            Unchecked::Quarantine => {
                return unchecked(decision(Category::Unchecked, Disposition::Quarantine));
            }
            Unchecked::Tempfail if stop.kind == LimitKind::Memory => {
                return unchecked(tempfail(
                    "resources",
                    Category::Unchecked,
                    Tempfail::Resources(one_line(&stop.detail)),
                ));
            }
            Unchecked::Tempfail => {
                return unchecked(tempfail(
                    "unchecked",
                    Category::Unchecked,
                    Tempfail::Unchecked(one_line(&stop.detail)),
                ));
            }
        }
    }
    if let VirusScan::Failed(Failure { reason, .. }) = &report.virus {
        if config.clamd.on_failure == OnFailure::Tempfail {
            return Decision {
                unchecked_reason: Some("scanner"),
                ..tempfail(
                    "clamd",
                    Category::Unchecked,
                    Tempfail::VirusScan(one_line(reason)),
                )
            };
        }
    }
    if let SpamScan::Failed(Failure { reason, .. }) = &report.spam {
        if spam_on_failure(config) == OnFailure::Tempfail {
            return tempfail(
                spam_engine(config),
                Category::Clean,
                Tempfail::SpamScan(one_line(reason)),
            );
        }
    }
    // A DMARC reject needs no content verdict: the domain's owner asked for it.
    if dmarc == DmarcAction::Reject {
        let domain = report
            .auth
            .as_ref()
            .and_then(|a| a.dmarc.as_ref())
            .map(|d| d.domain.clone())
            .unwrap_or_default();
        return decision(Category::DmarcReject { domain }, Disposition::Reject);
    }
    // Not fully checked: clamd failed (and on_failure = "pass"), or the MIME walk stopped at
    // a limit. Passed tagged ***UNCHECKED***, as amavis passes it.
    if matches!(report.virus, VirusScan::Failed(_)) {
        return Decision {
            unchecked_reason: Some("scanner"),
            ..decision(Category::Unchecked, Disposition::Deliver)
        };
    }
    if let Some(stop) = stop {
        return Decision {
            unchecked_reason: Some(stop.kind.label()),
            ..decision(Category::Unchecked, Disposition::Deliver)
        };
    }

    match content(config, spam.as_ref(), dmarc) {
        (category, Ok(a)) => decision(category, a),
        (category, Err(what)) => tempfail("greylist", category, Tempfail::Greylist(what)),
    }
}

/// The verdict on a fully checked message: spam by its level (and `quarantine_level`), or by
/// DMARC p=quarantine, else clean. Err: rspamd asked to greylist (what it said).
fn content(
    config: &Config,
    spam: Option<&SpamResult>,
    dmarc: DmarcAction,
) -> (Category, Result<Disposition, String>) {
    let action = |a: Action| match a {
        Action::Pass => Disposition::Deliver,
        Action::Discard => Disposition::Discard,
        Action::Reject => Disposition::Reject,
        Action::Quarantine => Disposition::Quarantine,
    };
    if let Some(s) = spam {
        let level = spam_level(config, s);
        if level == SpamLevel::Greylist {
            let what = s.action.as_deref().unwrap_or("greylist");
            return (Category::Clean, Err(one_line(what)));
        }
        let quarantine = config.spam.quarantine_level.is_some_and(|q| s.score >= q);
        if level == SpamLevel::Kill {
            let d = action(config.spam.action);
            if quarantine && d == Disposition::Deliver {
                return (Category::Spam, Ok(Disposition::Quarantine));
            }
            return (Category::Spam, Ok(d));
        }
        // Below the kill level (quarantine_level set lower): spam for the quarantine's sake.
        if quarantine {
            return (Category::Spam, Ok(Disposition::Quarantine));
        }
    }
    if dmarc == DmarcAction::Quarantine {
        return (Category::Spam, Ok(action(config.spam.action)));
    }
    (Category::Clean, Ok(Disposition::Deliver))
}

/// How spammy a scored message is, for the action and the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SpamLevel {
    /// Below tag2: `X-Spam-Flag: NO`.
    Clean,
    /// rspamd asked to greylist (with `greylist_action = "tempfail"`).
    Greylist,
    /// At or above tag2: flagged and subject-tagged.
    Flagged,
    /// At or above kill level: the spam action applies (also flagged).
    Kill,
}

/// The score against the `[spam]` levels, or rspamd's own action when `rspamd.use_action` is
/// set and rspamd gave one.
pub fn spam_level(config: &Config, s: &SpamResult) -> SpamLevel {
    if let (true, Some(action)) = (config.rspamd.use_action, s.action.as_deref()) {
        return match action {
            "reject" => SpamLevel::Kill,
            "rewrite subject" | "add header" => SpamLevel::Flagged,
            "greylist" | "soft reject" if config.rspamd.greylist_action == OnFailure::Tempfail => {
                SpamLevel::Greylist
            }
            _ => SpamLevel::Clean,
        };
    }
    if s.score >= config.spam.kill_level {
        SpamLevel::Kill
    } else if s.score >= config.spam.tag2_level {
        SpamLevel::Flagged
    } else {
        SpamLevel::Clean
    }
}

/// The spam engine in use, as a metric label.
fn spam_engine(config: &Config) -> &'static str {
    match config.spam.engine {
        crate::config::SpamEngine::Spamd => "spamd",
        crate::config::SpamEngine::Rspamd => "rspamd",
    }
}

/// `on_failure` of the spam engine in use.
fn spam_on_failure(config: &Config) -> OnFailure {
    match config.spam.engine {
        crate::config::SpamEngine::Spamd => config.spamd.on_failure,
        crate::config::SpamEngine::Rspamd => config.rspamd.on_failure,
    }
}

/// Scanner error texts can hold newlines; a reply line must not.
fn one_line(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn report(virus: VirusScan, spam: SpamScan) -> ScanReport {
        ScanReport {
            virus,
            spam,
            virus_time: Duration::ZERO,
            spam_time: Duration::ZERO,
            parts: None,
            banned: None,
            auth: None,
        }
    }

    fn scored(score: f64) -> SpamScan {
        SpamScan::Scored(SpamResult {
            score,
            required: 5.0,
            is_spam: score >= 5.0,
            rules: vec![],
            action: None,
        })
    }

    fn failed() -> VirusScan {
        VirusScan::Failed(Failure::new(
            crate::scan::FailureKind::Connect,
            "down\nreally",
        ))
    }

    #[test]
    fn virus_outranks_everything() {
        let c = Config::default();
        let d = decide(
            &c,
            &report(VirusScan::Infected(vec!["Eicar".into()]), scored(1000.0)),
        );
        assert_eq!(d.category, Category::Virus(vec!["Eicar".into()]));
        assert_eq!(d.disposition, Disposition::Discard);
        let mut c = Config::default();
        c.virus.action = Action::Reject;
        let d = decide(
            &c,
            &report(VirusScan::Infected(vec!["Eicar".into()]), SpamScan::Off),
        );
        assert_eq!(d.disposition, Disposition::Reject);
    }

    #[test]
    fn clamd_failure_follows_on_failure() {
        let c = Config::default();
        let d = decide(&c, &report(failed(), scored(0.0)));
        assert_eq!(
            d.disposition,
            Disposition::Tempfail(Tempfail::VirusScan("down really".into()))
        );
        let mut c = Config::default();
        c.clamd.on_failure = OnFailure::Pass;
        let d = decide(&c, &report(failed(), scored(0.0)));
        assert_eq!(
            (d.category, d.disposition),
            (Category::Unchecked, Disposition::Deliver)
        );
    }

    fn stopped(kind: LimitKind, detail: &str) -> ScanReport {
        let mut r = report(VirusScan::Clean, scored(0.0));
        r.parts = Some(crate::scan::PartsSummary {
            count: 3,
            limit: Some(crate::scan::parts::Stop {
                kind,
                detail: detail.into(),
            }),
            infected: None,
            left_out: 0,
            text_in_message: 0,
        });
        r
    }

    #[test]
    fn a_walk_stopped_by_a_limit_is_unchecked() {
        let c = Config::default();
        let d = decide(&c, &stopped(LimitKind::Parts, "more than 1000 parts"));
        assert_eq!(
            (d.category, d.disposition, d.unchecked_reason),
            (Category::Unchecked, Disposition::Deliver, Some("parts"))
        );
    }

    /// Issue 16: an archive not opened (beyond the decoder limit), a walk out of time and a
    /// message too large to walk are UNCHECKED with their own keys; decoder memory not
    /// available is a 452 4.3.1 whatever they say.
    #[test]
    fn new_walk_limits_have_their_keys_and_memory_tempfails() {
        let mut c = Config::default();
        for kind in [LimitKind::Decoder, LimitKind::Time, LimitKind::Size] {
            let d = decide(&c, &stopped(kind, "x"));
            assert_eq!(
                (d.category, d.disposition, d.unchecked_reason),
                (
                    Category::Unchecked,
                    Disposition::Deliver,
                    Some(kind.label())
                )
            );
        }
        c.parts.on_decoder = Unchecked::Quarantine;
        c.parts.on_max_walk_time = Unchecked::Tempfail;
        c.parts.on_max_message_size = Unchecked::Banned;
        assert_eq!(
            decide(&c, &stopped(LimitKind::Decoder, "x")).disposition,
            Disposition::Quarantine
        );
        assert_eq!(
            decide(&c, &stopped(LimitKind::Time, "slow")).disposition,
            Disposition::Tempfail(Tempfail::Unchecked("slow".into()))
        );
        assert_eq!(
            decide(&c, &stopped(LimitKind::Size, "big")).disposition,
            Disposition::Reject
        );
        let d = decide(&Config::default(), &stopped(LimitKind::Memory, "busy"));
        assert_eq!(
            (d.disposition, d.tempfail_reason),
            (
                Disposition::Tempfail(Tempfail::Resources("busy".into())),
                Some("resources")
            )
        );
    }

    /// Issue 16: a walk that failed (a spill file not written) is UNCHECKED, reason error, and
    /// tempfailed by default — with clamd off too, where it used to count as "not walked".
    #[test]
    fn a_failed_walk_is_tempfailed_by_default_never_clean() {
        let mut failed = stopped(LimitKind::Error, "MIME walk: disk full");
        failed.virus = VirusScan::Off;
        let d = decide(&Config::default(), &failed);
        assert_eq!(
            (d.category, d.disposition, d.unchecked_reason),
            (
                Category::Unchecked,
                Disposition::Tempfail(Tempfail::Unchecked("MIME walk: disk full".into())),
                Some("error")
            )
        );
        let mut c = Config::default();
        c.parts.on_walk_error = Unchecked::Pass;
        let d = decide(&c, &failed);
        assert_eq!(
            (d.category, d.disposition, d.unchecked_reason),
            (Category::Unchecked, Disposition::Deliver, Some("error"))
        );
    }

    #[test]
    fn each_limit_has_its_own_configured_answer() {
        let mut c = Config::default();
        c.parts.on_encrypted = Unchecked::Banned;
        c.parts.on_ratio = Unchecked::Tempfail;
        let d = decide(
            &c,
            &stopped(LimitKind::Encrypted, "encrypted archive member a.exe"),
        );
        assert_eq!(
            (d.category, d.disposition, d.unchecked_reason),
            (
                Category::Banned {
                    name: "encrypted archive member a.exe".into(),
                    kind: "UNCHECKED".into()
                },
                Disposition::Reject,
                Some("encrypted")
            )
        );
        let d = decide(&c, &stopped(LimitKind::Ratio, "archive member z expands"));
        assert_eq!(
            (d.disposition, d.tempfail_reason),
            (
                Disposition::Tempfail(Tempfail::Unchecked("archive member z expands".into())),
                Some("unchecked")
            )
        );
        // The other limits keep the default: passed, UNCHECKED.
        let d = decide(&c, &stopped(LimitKind::Depth, "deep"));
        assert_eq!(
            (d.category, d.disposition),
            (Category::Unchecked, Disposition::Deliver)
        );
        // A virus still outranks them all.
        let mut r = stopped(LimitKind::Encrypted, "encrypted archive member a.exe");
        r.virus = VirusScan::Infected(vec!["Eicar".into()]);
        assert_eq!(decide(&c, &r).category.label(), "virus");
    }

    #[test]
    fn banned_ranks_below_virus_and_above_a_clamd_failure() {
        let c = Config::default();
        let b = crate::scan::banned::Banned {
            name: "invoice.pdf.exe".into(),
            kind: "exe-ms".into(),
            rule: 2,
        };
        let mut r = report(failed(), scored(0.0));
        r.banned = Some(b.clone());
        let d = decide(&c, &r);
        assert_eq!(d.disposition, Disposition::Reject);
        assert_eq!(d.category.label(), "banned");
        let mut r = report(VirusScan::Infected(vec!["Eicar".into()]), scored(0.0));
        r.banned = Some(b);
        assert_eq!(decide(&c, &r).category.label(), "virus");
    }

    #[test]
    fn spam_levels() {
        let c = Config::default();
        assert_eq!(
            decide(&c, &report(VirusScan::Clean, scored(6.3))).category,
            Category::Clean
        );
        let d = decide(&c, &report(VirusScan::Clean, scored(6.31)));
        assert_eq!(
            (d.category, d.disposition),
            (Category::Spam, Disposition::Deliver)
        );
        let mut c = Config::default();
        c.spam.action = Action::Reject;
        let d = decide(&c, &report(VirusScan::Clean, scored(1000.0)));
        assert_eq!(d.disposition, Disposition::Reject);
    }

    #[test]
    fn quarantine_is_an_action_of_every_category() {
        let mut c = Config::default();
        c.virus.action = Action::Quarantine;
        let d = decide(
            &c,
            &report(VirusScan::Infected(vec!["Eicar".into()]), SpamScan::Off),
        );
        assert_eq!(d.disposition, Disposition::Quarantine);
        c.spam.action = Action::Quarantine;
        let d = decide(&c, &report(VirusScan::Clean, scored(7.0)));
        assert_eq!(
            (d.category, d.disposition),
            (Category::Spam, Disposition::Quarantine)
        );
        c.parts.on_max_depth = Unchecked::Quarantine;
        let d = decide(&c, &stopped(LimitKind::Depth, "deep"));
        assert_eq!(
            (d.category, d.disposition, d.unchecked_reason),
            (Category::Unchecked, Disposition::Quarantine, Some("depth"))
        );
    }

    #[test]
    fn quarantine_level_takes_spam_out_of_the_inbox() {
        let mut c = Config::default();
        c.spam.quarantine_level = Some(10.0);
        // Between kill and quarantine level: passed, tagged.
        let d = decide(&c, &report(VirusScan::Clean, scored(8.0)));
        assert_eq!(d.disposition, Disposition::Deliver);
        let d = decide(&c, &report(VirusScan::Clean, scored(1000.0)));
        assert_eq!(
            (d.category, d.disposition),
            (Category::Spam, Disposition::Quarantine)
        );
        // A stronger action at the kill level wins; below it the quarantine level applies.
        c.spam.action = Action::Reject;
        c.spam.quarantine_level = Some(5.0);
        let d = decide(&c, &report(VirusScan::Clean, scored(1000.0)));
        assert_eq!(d.disposition, Disposition::Reject);
        let d = decide(&c, &report(VirusScan::Clean, scored(5.5)));
        assert_eq!(
            (d.category, d.disposition),
            (Category::Spam, Disposition::Quarantine)
        );
        assert_eq!(
            decide(&c, &report(VirusScan::Clean, scored(4.9))).disposition,
            Disposition::Deliver
        );
    }

    #[test]
    fn spamd_failure_passes_by_default() {
        let c = Config::default();
        let fail = SpamScan::Failed(Failure::new(crate::scan::FailureKind::Timeout, "timeout"));
        let d = decide(&c, &report(VirusScan::Clean, fail.clone()));
        assert_eq!(
            (d.category, d.disposition, d.spam),
            (Category::Clean, Disposition::Deliver, None)
        );
        let mut c = Config::default();
        c.spamd.on_failure = OnFailure::Tempfail;
        assert!(matches!(
            decide(&c, &report(VirusScan::Clean, fail)).disposition,
            Disposition::Tempfail(_)
        ));
    }

    #[test]
    fn rspamd_action_mapping_when_asked() {
        let mut c = Config::default();
        c.spam.engine = crate::config::SpamEngine::Rspamd;
        let r = |score: f64, action: &str| SpamResult {
            score,
            required: 15.0,
            is_spam: action == "reject",
            rules: vec![],
            action: Some(action.into()),
        };
        // By default the score goes through the levels like spamd's.
        assert_eq!(spam_level(&c, &r(15.0, "reject")), SpamLevel::Kill);
        assert_eq!(spam_level(&c, &r(6.0, "add header")), SpamLevel::Clean);
        c.rspamd.use_action = true;
        assert_eq!(spam_level(&c, &r(1.0, "reject")), SpamLevel::Kill);
        assert_eq!(spam_level(&c, &r(6.0, "add header")), SpamLevel::Flagged);
        assert_eq!(
            spam_level(&c, &r(6.0, "rewrite subject")),
            SpamLevel::Flagged
        );
        assert_eq!(spam_level(&c, &r(20.0, "no action")), SpamLevel::Clean);
        assert_eq!(spam_level(&c, &r(4.0, "greylist")), SpamLevel::Clean);
        c.rspamd.greylist_action = OnFailure::Tempfail;
        assert_eq!(spam_level(&c, &r(4.0, "soft reject")), SpamLevel::Greylist);
        let d = decide(
            &c,
            &report(VirusScan::Clean, SpamScan::Scored(r(4.0, "greylist"))),
        );
        assert_eq!(
            d.disposition,
            Disposition::Tempfail(Tempfail::Greylist("greylist".into()))
        );
        // The engine's own on_failure applies.
        c.rspamd.on_failure = OnFailure::Tempfail;
        let fail = SpamScan::Failed(Failure::new(crate::scan::FailureKind::Connect, "down"));
        assert!(matches!(
            decide(&c, &report(VirusScan::Clean, fail)).disposition,
            Disposition::Tempfail(_)
        ));
    }

    fn dmarc_fail(policy: DmarcPolicyKind) -> AuthReport {
        AuthReport {
            dmarc: Some(crate::scan::auth::Dmarc {
                result: Verdict::Fail,
                domain: "example.org".into(),
                policy: Some(policy),
                p: Some(policy),
                sp: Some(policy),
                testing: false,
            }),
            arc: Some(crate::scan::auth::Arc {
                result: Verdict::Pass,
                sealer: Some(("lists.example.net".into(), 1)),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn dmarc_enforce_rejects_quarantines_and_honours_trusted_arc() {
        let mut c = Config::default();
        let mut r = report(VirusScan::Clean, scored(1.0));
        r.auth = Some(dmarc_fail(DmarcPolicyKind::Reject));
        // "score" (default): scored, not enforced.
        let d = decide(&c, &r);
        assert_eq!(d.category, Category::Clean);
        let s = d.spam.unwrap();
        assert!((s.score - (1.0 + 1.797 - 0.001)).abs() < 1e-9, "{s:?}");
        assert!(s.rules.contains(&("DMARC_REJECT".into(), 1.797)));
        // A rule the engine fired itself is not counted twice.
        let mut twice = r.clone();
        twice.spam = SpamScan::Scored(SpamResult {
            rules: vec![("DMARC_REJECT".into(), 2.0)],
            ..match scored(1.0) {
                SpamScan::Scored(s) => s,
                _ => unreachable!(),
            }
        });
        let s = decide(&c, &twice).spam.unwrap();
        assert!((s.score - (1.0 - 0.001)).abs() < 1e-9, "{s:?}");
        assert_eq!(
            s.rules.iter().filter(|(n, _)| n == "DMARC_REJECT").count(),
            1
        );
        c.auth.dmarc_policy = DmarcPolicy::Enforce;
        let d = decide(&c, &r);
        assert_eq!(
            (d.category, d.disposition, d.dmarc),
            (
                Category::DmarcReject {
                    domain: "example.org".into()
                },
                Disposition::Reject,
                DmarcAction::Reject
            )
        );
        // A virus still outranks it.
        let mut v = r.clone();
        v.virus = VirusScan::Infected(vec!["Eicar".into()]);
        assert_eq!(decide(&c, &v).category.label(), "virus");
        // A trusted sealer's passing chain exempts it.
        c.auth.trusted_arc_sealers = vec!["lists.example.net".into()];
        let d = decide(&c, &r);
        assert_eq!((d.category, d.dmarc), (Category::Clean, DmarcAction::None));
        // Without the client's address SPF was not checked: not enforced.
        c.auth.trusted_arc_sealers.clear();
        let mut unknown = r.clone();
        unknown.auth.as_mut().unwrap().spf_skipped = Some("no client address from XFORWARD ADDR");
        assert_eq!(decide(&c, &unknown).dmarc, DmarcAction::None);
        // p=quarantine: spam, with the spam action.
        r.auth = Some(dmarc_fail(DmarcPolicyKind::Quarantine));
        c.spam.action = Action::Discard;
        let d = decide(&c, &r);
        assert_eq!(
            (d.category, d.disposition, d.dmarc),
            (
                Category::Spam,
                Disposition::Discard,
                DmarcAction::Quarantine
            )
        );
    }

    #[test]
    fn without_a_spam_engine_authentication_makes_no_spam_score() {
        let mut r = report(VirusScan::Clean, SpamScan::Off);
        r.auth = Some(dmarc_fail(DmarcPolicyKind::None));
        let d = decide(&Config::default(), &r);
        assert_eq!((d.category, d.spam), (Category::Clean, None));
        assert!(d.auth.is_some());
    }
}
