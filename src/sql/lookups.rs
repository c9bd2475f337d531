//! Per-user policy from amavis's lookup tables, with amavis's semantics:
//! - `$sql_select_policy`: the `users` rows matching a recipient's lookup keys (full address,
//!   without extension, bare local part for a local user, `@domain`, `@.domain`, each parent
//!   `@.parent`, `@.`), highest `users.priority` first, joined to their `policy` row; each policy
//!   field takes the first non-NULL value in that order (Lookup/SQLfield.pm).
//! - `$sql_select_white_black_list`: for each matched user id in turn, the sender's lookup keys
//!   in `mailaddr`, highest `mailaddr.priority` first; the first row decides: W/Y/T white, B/N/F
//!   black, blank neutral (each stops the search), a number adds to the score and the search
//!   goes on (SpamControl.pm `white_black_list`).
//!
//! Results are cached for `sql.cache_ttl`. A database that fails gives Err, counted in
//! `postsift_sql_lookup_fallbacks_total` by [`SqlLookups::policy_or_fallback`]: the caller then
//! uses the file's configuration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::metrics::{SqlMetrics, StmtKind};
use super::{dynamic_sql, on_pool, text, within, AnyRow, Error, Pool, SqlConfig};

/// amavis's lookup keys for `addr` (rfc2821_2822_Tools.pm `make_query_keys`, with
/// `$sql_lookups_no_at_means_domain` off): the address as is, `user+ext@domain`, `user@domain`,
/// for a local address `user+ext` and `user`, then `@domain`, `@.domain`, `@.parent` … `@.`.
pub fn query_keys(addr: &str, is_local: bool, delimiter: &str) -> Vec<String> {
    let (local, domain) = match addr.rfind('@') {
        Some(i) => (&addr[..i], &addr[i + 1..]),
        None => (addr, ""),
    };
    let local = local.to_lowercase();
    let domain = domain
        .trim_start_matches('@')
        .trim_end_matches('.')
        .to_lowercase();
    let (user, ext) = match delimiter.chars().next() {
        Some(d) => match local.find(d) {
            // amavis keeps "owner-…" and "…-request" whole; a delimiter at the start is no split
            Some(i) if i > 0 => (local[..i].to_string(), local[i..].to_string()),
            _ => (local.clone(), String::new()),
        },
        None => (local.clone(), String::new()),
    };
    let mut keys = vec![addr.to_string()];
    if !ext.is_empty() {
        keys.push(format!("{user}{ext}@{domain}"));
    }
    keys.push(format!("{user}@{domain}"));
    if is_local {
        if !ext.is_empty() {
            keys.push(format!("{user}{ext}"));
        }
        keys.push(user.clone());
    }
    keys.push(format!("@{domain}"));
    if domain.contains('[') {
        keys.push("@.".into());
    } else {
        let mut dkeys = Vec::new();
        let mut d = domain.as_str();
        loop {
            dkeys.push(format!("@.{d}"));
            if d.is_empty() {
                break;
            }
            d = d.split_once('.').map(|(_, rest)| rest).unwrap_or("");
        }
        let skip = dkeys.len().saturating_sub(20);
        keys.extend(dkeys.into_iter().skip(skip));
    }
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
    keys
}

/// A recipient's settings from `users` ⋈ `policy`; None where no matching row sets it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserPolicy {
    /// `users.id` of every matching row, highest priority first (the wblist is looked up for
    /// each).
    pub user_ids: Vec<i64>,
    /// The policy of the first matching row (its own bank group).
    pub policy_id: Option<i64>,
    pub policy_name: Option<String>,
    pub virus_lover: Option<bool>,
    pub spam_lover: Option<bool>,
    pub unchecked_lover: Option<bool>,
    pub banned_files_lover: Option<bool>,
    pub bad_header_lover: Option<bool>,
    pub bypass_virus_checks: Option<bool>,
    pub bypass_spam_checks: Option<bool>,
    pub bypass_banned_checks: Option<bool>,
    pub bypass_header_checks: Option<bool>,
    pub spam_tag_level: Option<f64>,
    pub spam_tag2_level: Option<f64>,
    pub spam_tag3_level: Option<f64>,
    pub spam_kill_level: Option<f64>,
    pub spam_dsn_cutoff_level: Option<f64>,
    pub spam_quarantine_cutoff_level: Option<f64>,
    pub spam_subject_tag: Option<String>,
    pub spam_subject_tag2: Option<String>,
    pub spam_subject_tag3: Option<String>,
    pub virus_quarantine_to: Option<String>,
    pub spam_quarantine_to: Option<String>,
    pub banned_quarantine_to: Option<String>,
    pub bad_header_quarantine_to: Option<String>,
    pub message_size_limit: Option<i64>,
}

/// The white/blacklist's answer for one sender and recipient.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WbResult {
    /// Some(true) whitelisted, Some(false) blacklisted, None neither (or neutral).
    pub listed: Option<bool>,
    /// The sum of the numeric entries met before a decision (added to the spam score).
    pub boost: f64,
}

fn yes_no(v: Option<String>) -> Option<bool> {
    let c = v?.trim().chars().next()?;
    Some(matches!(c, 'Y' | 'y' | 'T' | 't' | '1'))
}

/// Merges the rows (highest priority first): each field the first non-NULL.
fn merge<R: AnyRow>(rows: &[R]) -> Result<UserPolicy, Error> {
    let mut p = UserPolicy::default();
    macro_rules! first {
        ($get:expr) => {{
            let mut v = None;
            for r in rows {
                if let Some(x) = $get(r)? {
                    v = Some(x);
                    break;
                }
            }
            v
        }};
    }
    macro_rules! flag {
        ($col:literal) => {
            first!(|r: &R| text(r, $col).map(yes_no))
        };
    }
    macro_rules! level {
        ($col:literal) => {
            first!(|r: &R| r.float($col))
        };
    }
    macro_rules! string {
        ($col:literal) => {
            first!(|r: &R| text(r, $col))
        };
    }
    for r in rows {
        if let Some(id) = r.int("postsift_user_id")? {
            p.user_ids.push(id);
        }
    }
    if let Some(r) = rows.first() {
        p.policy_id = r.int("postsift_policy_id")?;
        p.policy_name = text(r, "policy_name")?;
    }
    p.virus_lover = flag!("virus_lover");
    p.spam_lover = flag!("spam_lover");
    p.unchecked_lover = flag!("unchecked_lover");
    p.banned_files_lover = flag!("banned_files_lover");
    p.bad_header_lover = flag!("bad_header_lover");
    p.bypass_virus_checks = flag!("bypass_virus_checks");
    p.bypass_spam_checks = flag!("bypass_spam_checks");
    p.bypass_banned_checks = flag!("bypass_banned_checks");
    p.bypass_header_checks = flag!("bypass_header_checks");
    p.spam_tag_level = level!("spam_tag_level");
    p.spam_tag2_level = level!("spam_tag2_level");
    p.spam_tag3_level = level!("spam_tag3_level");
    p.spam_kill_level = level!("spam_kill_level");
    p.spam_dsn_cutoff_level = level!("spam_dsn_cutoff_level");
    p.spam_quarantine_cutoff_level = level!("spam_quarantine_cutoff_level");
    p.spam_subject_tag = string!("spam_subject_tag");
    p.spam_subject_tag2 = string!("spam_subject_tag2");
    p.spam_subject_tag3 = string!("spam_subject_tag3");
    p.virus_quarantine_to = string!("virus_quarantine_to");
    p.spam_quarantine_to = string!("spam_quarantine_to");
    p.banned_quarantine_to = string!("banned_quarantine_to");
    p.bad_header_quarantine_to = string!("bad_header_quarantine_to");
    p.message_size_limit = first!(|r: &R| r.int("message_size_limit"));
    Ok(p)
}

/// amavis's reading of one `wblist.wb` value: Some(Ok(listed)) decides, Some(Err(score)) adds
/// to the score, None (NULL) goes on.
fn read_wb(wb: &str) -> Result<Option<bool>, f64> {
    let t = wb.trim_matches(|c| c == ' ' || c == '\0');
    if let Ok(n) = t.parse::<f64>() {
        return Err(n);
    }
    match t.chars().next() {
        None => Ok(None),
        Some('B' | 'b' | 'N' | 'n' | 'F' | 'f') if t.len() == 1 => Ok(Some(false)),
        Some(_) => Ok(Some(true)),
    }
}

type Cache<T> = Mutex<HashMap<String, (Instant, T)>>;

/// Lookups with a short-lived cache.
pub struct SqlLookups {
    pool: Pool,
    cfg: SqlConfig,
    metrics: SqlMetrics,
    policies: Cache<Option<Arc<UserPolicy>>>,
    wb: Cache<WbResult>,
}

impl SqlLookups {
    pub fn new(pool: Pool, cfg: &SqlConfig, metrics: SqlMetrics) -> SqlLookups {
        SqlLookups {
            pool,
            cfg: cfg.clone(),
            metrics,
            policies: Mutex::new(HashMap::new()),
            wb: Mutex::new(HashMap::new()),
        }
    }

    fn cached<T: Clone>(&self, cache: &Cache<T>, key: &str) -> Option<T> {
        let c = cache.lock().unwrap_or_else(|e| e.into_inner());
        let (at, v) = c.get(key)?;
        (at.elapsed() < Duration::from_secs(self.cfg.cache_ttl)).then(|| v.clone())
    }

    fn remember<T>(&self, cache: &Cache<T>, key: String, v: T) {
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= self.cfg.cache_size {
            let ttl = Duration::from_secs(self.cfg.cache_ttl);
            c.retain(|_, (at, _)| at.elapsed() < ttl);
            if c.len() >= self.cfg.cache_size {
                c.clear();
            }
        }
        c.insert(key, (Instant::now(), v));
    }

    /// The policy of `rcpt` (None: no `users` row matches). `is_local`: the recipient is in
    /// the local domains (adds the bare local part to the keys, as amavis does).
    pub async fn policy(
        &self,
        rcpt: &str,
        is_local: bool,
    ) -> Result<Option<Arc<UserPolicy>>, Error> {
        let key = format!("{}\0{rcpt}", is_local as u8);
        if let Some(v) = self.cached(&self.policies, &key) {
            return Ok(v);
        }
        let start = Instant::now();
        let r = within(self.cfg.timeout(), self.select_policy(rcpt, is_local)).await;
        self.metrics
            .observe(StmtKind::Policy, start, &self.pool, &r);
        let v = r?.map(Arc::new);
        self.remember(&self.policies, key, v.clone());
        Ok(v)
    }

    /// [`SqlLookups::policy`], or None (the file's configuration) if the database fails:
    /// logged and counted.
    pub async fn policy_or_fallback(&self, rcpt: &str, is_local: bool) -> Option<Arc<UserPolicy>> {
        match self.policy(rcpt, is_local).await {
            Ok(v) => v,
            Err(e) => {
                self.metrics.lookup_fallbacks.inc();
                tracing::warn!(error = %e, "sql lookups: database failed, using the configuration file");
                None
            }
        }
    }

    async fn select_policy(&self, rcpt: &str, is_local: bool) -> Result<Option<UserPolicy>, Error> {
        let keys = query_keys(rcpt, is_local, &self.cfg.recipient_delimiter);
        let sql = format!(
            "SELECT users.id AS postsift_user_id, users.priority AS postsift_priority, \
             policy.id AS postsift_policy_id, policy.* \
             FROM users LEFT JOIN policy ON users.policy_id=policy.id \
             WHERE users.email IN ({}) ORDER BY users.priority DESC",
            vec!["?"; keys.len()].join(",")
        );
        let backend = self.pool.backend();
        on_pool!(&self.pool, p => {
            let mut q = sqlx::query(dynamic_sql(&sql, backend));
            for k in &keys {
                q = q.bind(k.as_bytes().to_vec());
            }
            let rows = q.fetch_all(p).await?;
            if rows.is_empty() {
                return Ok(None);
            }
            Ok(Some(merge(&rows)?))
        })
    }

    /// The white/blacklist entry of `sender` for the recipient whose policy is `policy`.
    /// `sender_is_local` as for [`SqlLookups::policy`].
    pub async fn wblist(
        &self,
        policy: &UserPolicy,
        sender: &str,
        sender_is_local: bool,
    ) -> Result<WbResult, Error> {
        let ids: Vec<String> = policy.user_ids.iter().map(i64::to_string).collect();
        let key = format!("{}\0{}\0{sender}", ids.join(","), sender_is_local as u8);
        if let Some(v) = self.cached(&self.wb, &key) {
            return Ok(v);
        }
        let start = Instant::now();
        let r = within(
            self.cfg.timeout(),
            self.select_wb(&policy.user_ids, sender, sender_is_local),
        )
        .await;
        self.metrics
            .observe(StmtKind::Wblist, start, &self.pool, &r);
        let v = r?;
        self.remember(&self.wb, key, v);
        Ok(v)
    }

    async fn select_wb(
        &self,
        user_ids: &[i64],
        sender: &str,
        is_local: bool,
    ) -> Result<WbResult, Error> {
        let keys = query_keys(sender, is_local, &self.cfg.recipient_delimiter);
        let sql = format!(
            "SELECT wb FROM wblist JOIN mailaddr ON wblist.sid=mailaddr.id \
             WHERE wblist.rid=? AND mailaddr.email IN ({}) ORDER BY mailaddr.priority DESC",
            vec!["?"; keys.len()].join(",")
        );
        let backend = self.pool.backend();
        let mut out = WbResult::default();
        for &id in user_ids {
            let first: Option<String> = on_pool!(&self.pool, p => {
                let mut q = sqlx::query(dynamic_sql(&sql, backend)).bind(id);
                for k in &keys {
                    q = q.bind(k.as_bytes().to_vec());
                }
                match q.fetch_optional(p).await? {
                    Some(row) => text(&row, "wb")?,
                    None => None,
                }
            });
            match first.as_deref().map(read_wb) {
                None => {}
                Some(Err(score)) => out.boost += score,
                Some(Ok(listed)) => {
                    out.listed = listed;
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_make_query_keys() {
        assert_eq!(
            query_keys("User+Foo@Sub.Example.COM", true, "+"),
            [
                "User+Foo@Sub.Example.COM",
                "user+foo@sub.example.com",
                "user@sub.example.com",
                "user+foo",
                "user",
                "@sub.example.com",
                "@.sub.example.com",
                "@.example.com",
                "@.com",
                "@."
            ]
        );
        assert_eq!(
            query_keys("a@example.org", false, "+"),
            [
                "a@example.org",
                "@example.org",
                "@.example.org",
                "@.org",
                "@."
            ]
        );
        assert_eq!(query_keys("", false, "+"), ["", "@", "@."]);
    }

    #[test]
    fn wb_values_as_amavis_reads_them() {
        assert_eq!(read_wb("W"), Ok(Some(true)));
        assert_eq!(read_wb("y"), Ok(Some(true)));
        assert_eq!(read_wb("B"), Ok(Some(false)));
        assert_eq!(read_wb("N "), Ok(Some(false)));
        assert_eq!(read_wb(" "), Ok(None));
        assert_eq!(read_wb("-3.5"), Err(-3.5));
        assert_eq!(yes_no(Some("Y".into())), Some(true));
        assert_eq!(yes_no(Some("N".into())), Some(false));
        assert_eq!(yes_no(None), None);
    }
}
