//! Judging a scan: the content category in amavis order (virus > unchecked > spam at kill level >
//! clean) and the configured action for it, as typed values (the reply texts are the SMTP
//! side's, in `smtp::reply`). Pure functions of the report and the configuration.

use crate::config::{Action, Config, OnFailure};
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
    /// At or above the kill level.
    Spam,
    Clean,
}

impl Category {
    pub fn label(&self) -> &'static str {
        match self {
            Category::Virus(_) => "virus",
            Category::Banned { .. } => "banned",
            Category::Unchecked => "unchecked",
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub category: Category,
    pub disposition: Disposition,
    /// The spam result that the headers report, if spam was checked.
    pub spam: Option<SpamResult>,
    /// For a tempfail, what caused it (a metric label): "clamd", "spamd", "rspamd" or "greylist".
    pub tempfail_reason: Option<&'static str>,
}

pub fn decide(config: &Config, report: &ScanReport) -> Decision {
    let spam = match &report.spam {
        SpamScan::Scored(r) => Some(r.clone()),
        _ => None,
    };
    let decision = |category: Category, disposition| Decision {
        category,
        disposition,
        spam: spam.clone(),
        tempfail_reason: None,
    };
    let tempfail = |reason: &'static str, category: Category, t: Tempfail| Decision {
        tempfail_reason: Some(reason),
        ..decision(category, Disposition::Tempfail(t))
    };
    let action = |a: Action| match a {
        Action::Pass => Disposition::Deliver,
        Action::Discard => Disposition::Discard,
        Action::Reject => Disposition::Reject,
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
    if let VirusScan::Failed(Failure { reason, .. }) = &report.virus {
        if config.clamd.on_failure == OnFailure::Tempfail {
            return tempfail(
                "clamd",
                Category::Unchecked,
                Tempfail::VirusScan(one_line(reason)),
            );
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
    // Not fully checked: clamd failed (and on_failure = "pass"), or the MIME walk stopped at
    // a limit. Passed tagged ***UNCHECKED***, as amavis passes it.
    let walk_limited = report.parts.as_ref().is_some_and(|p| p.limit.is_some());
    if matches!(report.virus, VirusScan::Failed(_)) || walk_limited {
        return decision(Category::Unchecked, Disposition::Deliver);
    }

    if let Some(s) = &spam {
        let level = spam_level(config, s);
        if level == SpamLevel::Greylist {
            let what = s.action.as_deref().unwrap_or("greylist");
            return tempfail(
                "greylist",
                Category::Clean,
                Tempfail::Greylist(one_line(what)),
            );
        }
        if level == SpamLevel::Kill {
            return decision(Category::Spam, action(config.spam.action));
        }
    }
    decision(Category::Clean, Disposition::Deliver)
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

    #[test]
    fn a_walk_stopped_by_a_limit_is_unchecked() {
        let c = Config::default();
        let mut r = report(VirusScan::Clean, scored(0.0));
        r.parts = Some(crate::scan::PartsSummary {
            count: 1000,
            limit: Some("more than 1000 parts".into()),
            infected: None,
        });
        let d = decide(&c, &r);
        assert_eq!(
            (d.category, d.disposition),
            (Category::Unchecked, Disposition::Deliver)
        );
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
}
