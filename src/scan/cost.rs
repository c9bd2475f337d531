//! What the checks spare the scanners: the spam engine's answer taken from the verdict cache
//! (see [`super::cache`]) when the same message was scored before, and the spam engine not asked
//! at all when the virus check or a banned file already decides the message for every
//! recipient group (amavis does the same): no score could change a discard or a reject.

use super::cache::{self, Kind, Value};
use super::{banned, Failure, FailureKind, ScanEnvelope, ScanMetrics, Scanners, SpamEngine};
use super::{SpamScan, VirusScan};
use crate::message::Message;

/// Whether a virus or a banned file decides one recipient group's outcome whatever the spam
/// score (see [`skip_spam`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decisive {
    /// The group's virus action is discard or reject.
    pub virus: bool,
    /// The group's banned action is discard or reject.
    pub banned: bool,
    /// The group does not use the spam engine (a bank bypasses it).
    pub spam_off: bool,
    /// Where its banned finding is: None for `[banned] rules`, else an index into the
    /// findings under `Needs::banned_rules`.
    pub rule_set: Option<usize>,
}

/// Whether the spam check should wait for the virus check: some virus or banned finding could
/// make it useless for every group.
pub fn may_skip(groups: &[Decisive]) -> bool {
    !groups.is_empty() && groups.iter().all(|g| g.spam_off || g.virus || g.banned)
}

/// Whether the virus check's findings decide every group's outcome, so that the spam engine
/// need not be asked: each group either does not use it, or has a virus it discards or rejects,
/// or (no virus) a banned file it discards or rejects. The policy ranks a virus above a banned
/// file, and both above every spam verdict.
pub fn skip_spam(
    groups: &[Decisive],
    virus: &VirusScan,
    banned: &Option<banned::Banned>,
    banned_by: &[Option<banned::Banned>],
) -> bool {
    !groups.is_empty()
        && groups.iter().all(|g| {
            let banned = match g.rule_set {
                None => banned.is_some(),
                Some(i) => banned_by.get(i).is_some_and(Option::is_some),
            };
            g.spam_off
                || match virus {
                    VirusScan::Infected(_) => g.virus,
                    _ => banned && g.banned,
                }
        })
}

impl Scanners {
    /// The spam engine's answer for `msg`: from the verdict cache when the same bytes (and, for
    /// rspamd, the same envelope) were scored before and the engine is not marked down, else
    /// asked within the spam timeout, a score being kept in the cache.
    pub(super) async fn spam_check(
        &self,
        engine: &SpamEngine,
        msg: &Message,
        env: &ScanEnvelope,
        metrics: &ScanMetrics,
    ) -> SpamScan {
        let prefix = match msg.prefix_for_spam_check(self.spam_max_size) {
            Ok(p) => p,
            Err(e) => {
                return SpamScan::Failed(Failure::new(
                    FailureKind::Protocol,
                    format!("reading the spool: {e}"),
                ))
            }
        };
        let m = &metrics.cache;
        // While every endpoint is marked down the cache is not used: the message takes the
        // engine's failure path, as it would without the cache.
        let key = self
            .cache
            .as_ref()
            .filter(|_| engine.health().usable())
            .map(|c| (c, cache::spam_key(engine, &prefix, env)));
        if let Some((c, key)) = &key {
            if let Some(Value::Spam(r)) = c.get(Kind::Spam, key, m) {
                return SpamScan::Scored(r);
            }
        }
        let check = async {
            match engine {
                SpamEngine::Spamd(s) => s
                    .check(&prefix)
                    .await
                    .map_err(|e| Failure::new(e.kind(), e.to_string())),
                SpamEngine::Rspamd(r) => r
                    .check(prefix.into(), env)
                    .await
                    .map_err(|e| Failure::new(e.kind(), e.to_string())),
            }
        };
        match tokio::time::timeout(self.spam_timeout, check).await {
            Ok(Ok(r)) => {
                if let Some((c, key)) = key {
                    c.put(key, Value::Spam(r.clone()), m);
                }
                SpamScan::Scored(r)
            }
            Ok(Err(f)) => SpamScan::Failed(f),
            Err(_) => SpamScan::Failed(Failure::new(
                FailureKind::Timeout,
                format!("{} timed out", engine.name()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn banned() -> Option<banned::Banned> {
        Some(banned::Banned {
            name: "x.exe".into(),
            kind: "exe".into(),
            rule: 1,
        })
    }

    #[test]
    fn a_virus_skips_the_spam_engine_only_where_every_group_discards_or_rejects_it() {
        let infected = VirusScan::Infected(vec!["Eicar-Signature".into()]);
        let drop = Decisive {
            virus: true,
            ..Default::default()
        };
        let keep = Decisive::default();
        let off = Decisive {
            spam_off: true,
            ..Default::default()
        };
        assert!(skip_spam(&[drop], &infected, &None, &[]));
        assert!(skip_spam(&[drop, off], &infected, &None, &[]));
        assert!(!skip_spam(&[drop, keep], &infected, &None, &[]));
        assert!(!skip_spam(&[drop], &VirusScan::Clean, &None, &[]));
        assert!(!skip_spam(&[], &infected, &None, &[]));
        assert!(may_skip(&[drop, off]));
        assert!(!may_skip(&[drop, keep]));
    }

    #[test]
    fn a_banned_file_skips_it_only_under_each_groups_own_rules_and_below_a_virus() {
        let by_bank = Decisive {
            banned: true,
            rule_set: Some(0),
            ..Default::default()
        };
        let default_rules = Decisive {
            banned: true,
            ..Default::default()
        };
        assert!(skip_spam(
            &[default_rules],
            &VirusScan::Clean,
            &banned(),
            &[]
        ));
        assert!(!skip_spam(
            &[by_bank],
            &VirusScan::Clean,
            &banned(),
            &[None]
        ));
        assert!(skip_spam(&[by_bank], &VirusScan::Clean, &None, &[banned()]));
        // A virus ranks above the banned file: its action (here pass) decides.
        let infected = VirusScan::Infected(vec!["Eicar-Signature".into()]);
        assert!(!skip_spam(&[default_rules], &infected, &banned(), &[]));
    }
}
