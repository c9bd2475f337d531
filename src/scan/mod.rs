//! The checks and their concurrent run: the virus scanner (clamd) and the spam engine (spamd
//! or rspamd) look at the same message at the same time, each under its own timeout, and their
//! answers (or failures) are gathered into one [`ScanReport`] for the policy to judge.
//!
//! Every check fails the same way, with a [`Failure`] of one [`FailureKind`] (connect, timeout,
//! protocol, refused, limit): each peer module keeps its own error type and says which kind each
//! error is, so the policy, the metrics and the log treat all checks alike. The set of checks is
//! closed at compile time — an enum of engines and one slot per kind of finding, not a list of
//! trait objects — because each check's call is async and differently shaped (a stream to
//! clamd, a prefix to spamd, HTTP to rspamd) and a match keeps the dispatcher exhaustive:
//! adding a check adds its module and its arm here, and touches neither the session nor the
//! other checks.

pub mod auth;
mod auth_metrics;
pub mod banned;
pub mod cache;
mod cache_metrics;
pub mod clamd;
pub mod cost;
pub mod metrics;
pub mod parts;
pub mod report;
pub mod rspamd;
pub mod spamd;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, OnFailure};
use crate::message::Message;

pub use metrics::{ScanMetrics, Scanner};
pub use report::{Failure, FailureKind, PartsSummary, ScanReport, SpamResult, SpamScan, VirusScan};
pub use rspamd::Envelope as ScanEnvelope;

/// Messages up to this size are walked on the session's own task, unless they hold an archive.
const INLINE_WALK: usize = 128 * 1024;

fn summary(w: &parts::Walk) -> PartsSummary {
    PartsSummary {
        count: w.parts.len(),
        limit: w.limit.clone(),
        infected: None,
        left_out: 0,
        text_in_message: 0,
    }
}

/// The configured spam engine (check-config allows at most one).
pub enum SpamEngine {
    Spamd(spamd::SpamdClient),
    Rspamd(rspamd::RspamdClient),
}

impl SpamEngine {
    /// The metric label and log name.
    pub fn name(&self) -> &'static str {
        self.scanner().label()
    }

    pub fn scanner(&self) -> Scanner {
        match self {
            SpamEngine::Spamd(_) => Scanner::Spamd,
            SpamEngine::Rspamd(_) => Scanner::Rspamd,
        }
    }

    /// What its answers depend on besides the message (see [`cache::spam_key`]).
    pub fn identity(&self) -> Vec<String> {
        match self {
            SpamEngine::Spamd(s) => s.identity(),
            SpamEngine::Rspamd(r) => r.identity(),
        }
    }

    pub async fn ping(&self) -> bool {
        match self {
            SpamEngine::Spamd(s) => s.ping().await.is_ok(),
            SpamEngine::Rspamd(r) => r.ping().await.is_ok(),
        }
    }

    /// Each endpoint's health.
    pub fn health(&self) -> &crate::peers::Group {
        match self {
            SpamEngine::Spamd(s) => s.health(),
            SpamEngine::Rspamd(r) => r.health(),
        }
    }

    /// Probes endpoint `i` alone (spamd `PING`, rspamd `/ping`), bypassing its health state.
    pub async fn ping_endpoint(&self, i: usize, limit: Duration) -> bool {
        match self {
            SpamEngine::Spamd(s) => s.ping_endpoint(i, limit).await,
            SpamEngine::Rspamd(r) => r.ping_endpoint(i, limit).await,
        }
    }
}

/// Which checks a message needs: the scanners are asked only when some recipient's settings
/// want them.
#[derive(Debug, Clone)]
pub struct Needs {
    pub virus: bool,
    pub spam: bool,
    /// Banned rules besides `[banned] rules`, from policy banks.
    pub banned_rules: Vec<Vec<banned::Rule>>,
    /// Each recipient group's actions on a virus or a banned file: when they make the spam
    /// score useless, the spam engine is not asked (see [`cost`]). Empty: always asked.
    pub decisive: Vec<cost::Decisive>,
}

impl Default for Needs {
    fn default() -> Self {
        Needs {
            virus: true,
            spam: true,
            banned_rules: Vec::new(),
            decisive: Vec::new(),
        }
    }
}

pub struct Scanners {
    clamd: Option<clamd::ClamdClient>,
    /// The MIME walk's limits, `max_message_size` and spool directory; None when
    /// `[parts] enabled = false`.
    walk: Option<(parts::Limits, u64, std::path::PathBuf)>,
    /// `[parts] clamd_decodes_text`: text parts clamd's MIME parser decodes from the message
    /// are not sent again.
    clamd_decodes_text: bool,
    /// Walks off the async threads at once: one per CPU. A walk is CPU work, so more at once
    /// would not finish sooner, and each holds its parser tree and decoders (tens of MB for a
    /// hostile message, outside `server.max_memory`): 64 hostile messages at once took 478 MiB
    /// when they all walked together. The others wait for a slot (their session may end
    /// meanwhile; the wait does not count towards `max_walk_time`).
    walk_slots: Arc<tokio::sync::Semaphore>,
    banned_rules: Vec<banned::Rule>,
    spam: Option<SpamEngine>,
    spam_max_size: usize,
    spam_timeout: Duration,
    spam_on_failure: OnFailure,
    /// Mail authentication; None when `[auth]` is off (or no resolver could be built).
    auth: Option<auth::Checker>,
    /// `server.max_memory`, which the walk's decoders take their memory from.
    budget: Option<Arc<crate::message::Budget>>,
    /// The verdict cache; None when `[cache] max_bytes = 0`.
    cache: Option<cache::Cache>,
}

tokio::task_local! {
    /// Set by the SMTP session when its client closes the connection while the message is
    /// processed: the MIME walk stops at its next check, as when the session ends.
    pub static CLIENT_GONE: Arc<AtomicBool>;
}

/// Sets its flag when dropped: the MIME walk of a session that ended stops.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The spam engine `config` (or a bank's effective settings) uses: the one `spam.engine`
/// names, when it has endpoints; None when spam checks are off. The one place this is decided.
pub fn spam_engine(config: &Config) -> Option<crate::config::SpamEngine> {
    let on = match config.spam.engine {
        crate::config::SpamEngine::Spamd => !config.spamd.endpoints.is_empty(),
        crate::config::SpamEngine::Rspamd => !config.rspamd.endpoints.is_empty(),
    };
    on.then_some(config.spam.engine)
}

impl Scanners {
    pub fn new(config: &Config) -> Scanners {
        let c = &config.clamd;
        let s = &config.spamd;
        let r = &config.rspamd;
        // Each peer's health state, made once with `[health] down_after`.
        let health = |peer, endpoints: &[String]| {
            crate::peers::Group::new(peer, endpoints, config.health.down_after)
        };
        let secs = Duration::from_secs;
        let spam = spam_engine(config).map(|engine| match engine {
            crate::config::SpamEngine::Rspamd => {
                SpamEngine::Rspamd(rspamd::RspamdClient::with_health(
                    r.endpoints.clone(),
                    (secs(r.connect_timeout), secs(r.timeout)),
                    r.password.clone(),
                    health(crate::peers::Peer::Rspamd, &r.endpoints),
                ))
            }
            crate::config::SpamEngine::Spamd => SpamEngine::Spamd(spamd::SpamdClient::with_health(
                s.endpoints.clone(),
                (secs(s.connect_timeout), secs(s.io_timeout)),
                s.user.clone(),
                health(crate::peers::Peer::Spamd, &s.endpoints),
            )),
        });
        let rspamd = config.spam.engine == crate::config::SpamEngine::Rspamd;
        Scanners {
            clamd: (!c.endpoints.is_empty()).then(|| {
                clamd::ClamdClient::with_health(
                    &c.endpoints,
                    (secs(c.connect_timeout), secs(c.timeout)),
                    health(crate::peers::Peer::Clamd, &c.endpoints),
                )
            }),
            walk: config.parts.enabled.then(|| {
                (
                    parts::Limits::from_config(&config.parts),
                    config.parts.max_message_size,
                    config.spool_dir(),
                )
            }),
            clamd_decodes_text: config.parts.clamd_decodes_text,
            banned_rules: config
                .banned
                .rules
                .clone()
                .unwrap_or_else(banned::default_rules),
            spam,
            spam_max_size: if rspamd { r.max_size } else { s.max_size },
            spam_timeout: Duration::from_secs(if rspamd { r.timeout } else { s.timeout }),
            spam_on_failure: if rspamd { r.on_failure } else { s.on_failure },
            budget: None,
            cache: cache::Cache::new(&config.cache),
            walk_slots: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            auth: auth::Checker::new(config).unwrap_or_else(|e| {
                tracing::error!(
                    "mail authentication is off: {e}; set [dns] servers (or auth.enabled = false)"
                );
                None
            }),
        }
    }

    /// The mail authentication checker, when `[auth]` is on.
    pub fn auth(&self) -> Option<&auth::Checker> {
        self.auth.as_ref()
    }

    pub fn clamd(&self) -> Option<&clamd::ClamdClient> {
        self.clamd.as_ref()
    }

    pub fn spam(&self) -> Option<&SpamEngine> {
        self.spam.as_ref()
    }

    /// What the configured spam engine's failure leads to.
    /// Takes the walk's decoder memory from `budget` (`server.max_memory`).
    pub fn with_budget(mut self, budget: Arc<crate::message::Budget>) -> Scanners {
        self.budget = Some(budget);
        self
    }

    pub fn spam_on_failure(&self) -> OnFailure {
        self.spam_on_failure
    }

    /// Runs every configured scanner on `msg` at once, recording durations, errors and health.
    pub async fn scan(
        &self,
        msg: &Message,
        env: &ScanEnvelope,
        metrics: &ScanMetrics,
    ) -> ScanReport {
        self.scan_for(msg, env, metrics, &Needs::default()).await.0
    }

    /// Like [`Scanners::scan`], asking only the scanners `needs` names (policy banks bypass
    /// some), and also judging the MIME walk's parts by each of `needs.banned_rules`: their
    /// findings come back in that order.
    pub async fn scan_for(
        &self,
        msg: &Message,
        env: &ScanEnvelope,
        metrics: &ScanMetrics,
        needs: &Needs,
    ) -> (ScanReport, Vec<Option<banned::Banned>>) {
        let clamd = self.clamd.as_ref().filter(|_| needs.virus);
        let spam_engine = self.spam.as_ref().filter(|_| needs.spam);
        // The whole message, read from the spool once for the MIME walk and mail
        // authentication together, by whichever asks first.
        let whole = tokio::sync::OnceCell::new();
        let read_whole = || {
            whole.get_or_init(|| async {
                msg.read_all_within(self.budget.as_ref())
                    .map_err(|e| (e.kind(), e.to_string()))
            })
        };
        let virus = async {
            let start = Instant::now();
            // A walk that failed is UNCHECKED (reason error), never "not walked": the
            // banned-file rules have not seen its parts, whether clamd is on or off.
            let walk = self.walk(msg, read_whole).await.unwrap_or_else(|detail| {
                tracing::warn!("{detail}");
                Some(parts::Walk {
                    limit: Some(parts::Stop {
                        kind: parts::LimitKind::Error,
                        detail,
                    }),
                    ..Default::default()
                })
            });
            let (banned, banned_by) = match &walk {
                Some(w) => (
                    banned::check(&self.banned_rules, &w.parts),
                    needs
                        .banned_rules
                        .iter()
                        .map(|rules| banned::check(rules, &w.parts))
                        .collect(),
                ),
                None => (None, vec![None; needs.banned_rules.len()]),
            };
            let (r, parts) = match clamd {
                None => (VirusScan::Off, walk.map(|w| summary(&w))),
                // Boxed, as the spam check below: the scanner clients' futures are large, and
                // a future held inline makes every future around it (up to the session's task)
                // that large, copied whole when moved, whether the scanner is configured or not.
                Some(c) => Box::pin(self.virus_scan(c, msg, walk, metrics)).await,
            };
            (r, parts, (banned, banned_by), start.elapsed())
        };
        let spam = async {
            let start = Instant::now();
            let r = match spam_engine {
                None => SpamScan::Off,
                Some(engine) => Box::pin(self.spam_check(engine, msg, env, metrics)).await,
            };
            (r, start.elapsed())
        };
        // The spam check waits for the virus check where a virus or a banned file could make
        // it useless for every recipient group, and is then skipped (see `cost`).
        let virus_and_spam = async {
            if spam_engine.is_none() || !cost::may_skip(&needs.decisive) {
                return tokio::join!(virus, spam);
            }
            let v = virus.await;
            let (r, _, (banned, banned_by), _) = &v;
            if cost::skip_spam(&needs.decisive, r, banned, banned_by) {
                metrics.spam_skipped.inc();
                return (v, (SpamScan::Off, Duration::ZERO));
            }
            (v, spam.await)
        };
        let auth = async {
            let checker = self.auth.as_ref()?;
            // Over the limit: SPF only (it needs no part of the message).
            if msg.len() > checker.max_message_size() {
                return Some(checker.check(b"", &env.client, &metrics.auth).await);
            }
            match read_whole().await {
                Ok(raw) => Some(checker.check(raw, &env.client, &metrics.auth).await),
                Err((_, e)) => {
                    tracing::warn!("mail authentication not run: reading the spool: {e}");
                    None
                }
            }
        };
        let ((virus, parts, (banned, banned_by), virus_time), (spam, spam_time), auth) = {
            let (vs, auth) = tokio::join!(virus_and_spam, auth);
            (vs.0, vs.1, auth)
        };
        let record = |scanner: Scanner, failed: Option<FailureKind>, took: Duration| {
            metrics
                .scanner_duration
                .with_label_values(&[scanner.label()])
                .observe(took.as_secs_f64());
            metrics.set_scanner_up(scanner, failed.is_none());
            if let Some(kind) = failed {
                metrics
                    .scanner_errors
                    .with_label_values(&[scanner.label(), kind.label()])
                    .inc();
            }
        };
        match &virus {
            VirusScan::Off => {}
            VirusScan::Failed(f) => record(Scanner::Clamd, Some(f.kind), virus_time),
            _ => record(Scanner::Clamd, None, virus_time),
        }
        if let Some(engine) = spam_engine {
            match &spam {
                SpamScan::Off => {}
                SpamScan::Failed(f) => record(engine.scanner(), Some(f.kind), spam_time),
                SpamScan::Scored(r) => {
                    metrics.spam_score.observe(r.score);
                    record(engine.scanner(), None, spam_time)
                }
            }
        }
        if let Some(p) = &parts {
            metrics.parts.observe(p.count as f64);
        }
        let report = ScanReport {
            virus,
            spam,
            virus_time,
            spam_time,
            parts,
            banned,
            auth,
        };
        (report, banned_by)
    }

    /// The MIME walk, when on and the message is not too large for it: Ok(None) when not
    /// walked, Err (what failed) when the message could not be read back or the walk failed.
    async fn walk<'a, F>(
        &self,
        msg: &Message,
        read_whole: impl FnOnce() -> F,
    ) -> Result<Option<parts::Walk>, String>
    where
        F: std::future::Future<Output = &'a Result<bytes::Bytes, (std::io::ErrorKind, String)>>,
    {
        let Some((limits, max_size, spool)) = &self.walk else {
            return Ok(None);
        };
        // Not walked, and said so: the banned-file rules have not seen its parts.
        if msg.len() > *max_size {
            return Ok(Some(parts::Walk {
                limit: Some(parts::Stop {
                    kind: parts::LimitKind::Size,
                    detail: format!(
                        "message larger than {max_size} bytes (parts.max_message_size): not walked"
                    ),
                }),
                ..Default::default()
            }));
        }
        let limits = *limits;
        // The walk stops when this future is dropped (the session ended: client gone,
        // shutdown), not only at max_walk_time.
        let cancel = CancelOnDrop(
            CLIENT_GONE
                .try_with(Arc::clone)
                .unwrap_or_else(|_| Arc::new(AtomicBool::new(false))),
        );
        let ctl = parts::Control {
            cancel: Some(cancel.0.clone()),
            budget: self.budget.clone(),
        };
        let raw = match read_whole().await {
            Ok(raw) => raw.clone(),
            // The copy walked is taken from server.max_memory, as the decoders' windows are:
            // without it, the message is tempfailed (452 4.3.1), not walked outside the budget.
            Err((std::io::ErrorKind::OutOfMemory, e)) => {
                return Ok(Some(parts::Walk {
                    limit: Some(parts::Stop {
                        kind: parts::LimitKind::Memory,
                        detail: format!("reading the message for the MIME walk: {e}"),
                    }),
                    ..Default::default()
                }))
            }
            Err((_, e)) => return Err(format!("MIME walk: reading the spool: {e}")),
        };
        // CPU work on up to max_message_size bytes (and archives decompressed up to
        // max_decoded_bytes): off the async threads, unless the message is small enough and
        // holds no archive, so that the thread hand-off would cost more than the walk.
        let inline = match raw.len() <= INLINE_WALK {
            true => parts::walk_with(&raw, &limits, spool, &ctl, false).transpose(),
            false => None,
        };
        let walked = match inline {
            Some(w) => w,
            None => {
                let spool = spool.clone();
                // Held until the walk ends, even one whose session is gone (it stops at its
                // next check of the cancel flag).
                let slot = (self.walk_slots.clone().acquire_owned().await)
                    .map_err(|e| format!("MIME walk: {e}"))?;
                tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    parts::walk_with(&raw, &limits, &spool, &ctl, true)
                        .map(|w| w.expect("archives opened"))
                })
                .await
                .map_err(|e| format!("MIME walk: its thread failed: {e}"))?
            }
        };
        let walk = walked.map_err(|e| format!("MIME walk: {e}"))?;
        if walk.parser_failed {
            tracing::warn!(
                "mail-parser failed on this message; its parts come from the raw reading only"
            );
        }
        Ok(Some(walk))
    }

    /// clamd on the message (its own parsers see things ours may not) and on every part the
    /// MIME walk decoded that clamd's scan of the message does not already see as it is, all
    /// over one connection (`IDSESSION`), until one is infected. A failure on any of them fails
    /// the virus check: a part that could not be scanned is not clean.
    ///
    /// Each byte goes through clamd once: the message is sent without the encoded bodies of
    /// the parts sent decoded (or whose answer the verdict cache has), where leaving them out
    /// hides nothing ([`parts::leave_out`]: a file's clean base64 or well-formed
    /// quoted-printable body, a well-formed uuencoded block), so that clamd's own MIME parser
    /// does not decode and scan those files a second time. Headers, the MIME structure and
    /// every text part stay (clamd's mail-format and phishing signatures read them there).
    /// A text part clamd's parser provably decodes from the message as the walk did
    /// ([`parts::Part::clamd_reads`]) is not sent decoded as well (`[parts]
    /// clamd_decodes_text`), so that clamd does not scan it twice either.
    ///
    /// Not sent again: members of archives postsift listed (clamd opens the archive part
    /// itself), members that could not be read (encrypted: nothing to scan), and verbatim text
    /// parts — a 7bit/8bit text part is the message's own bytes, which clamd's raw scan of the
    /// message matched already; only clamd's type-specific handling of it (HTML normalisation)
    /// is lost, and only when clamd's MIME parser missed the part. Anything that sniffs as a
    /// file type, or holds a NUL byte, is sent whatever its encoding. A plain message thus
    /// costs one INSTREAM, as without the walk.
    async fn virus_scan(
        &self,
        c: &clamd::ClamdClient,
        msg: &Message,
        walk: Option<parts::Walk>,
        metrics: &ScanMetrics,
    ) -> (VirusScan, Option<PartsSummary>) {
        let fail = |e: clamd::Error| VirusScan::Failed(Failure::new(e.kind(), e.to_string()));
        let mut summary = walk.as_ref().map(summary);
        let parts = walk.map(|w| w.parts).unwrap_or_default();
        // Members of archives clamd opens itself (zip, 7z, tar, gzip, bzip2, xz, nested too),
        // unreadable (encrypted) members and verbatim text parts are not sent again.
        // Text parts clamd's own MIME parser decodes from the message are not sent again.
        let (mut send, mut text_in_message) = (Vec::<&parts::Part>::new(), 0u64);
        for p in parts
            .iter()
            .filter(|p| p.containers.is_empty() && !seen_whole(p))
        {
            if self.clamd_decodes_text && clamd_reads(p) {
                text_in_message += p.contents.len();
            } else if !p.contents.is_empty() {
                send.push(p);
            }
        }
        metrics.clamd_text_in_message.inc_by(text_in_message);
        let contents: Vec<&parts::Contents> = send.iter().map(|p| &p.contents).collect();
        let mut left_out: Vec<(usize, usize)> = send.iter().filter_map(|p| p.encoded).collect();
        left_out.sort_unstable();
        let stream = match clamd::Stream::message(msg, &left_out) {
            Ok(s) => s,
            Err(e) => {
                return (
                    fail(clamd::Error::Io {
                        endpoint: "-".into(),
                        source: e,
                    }),
                    summary,
                )
            }
        };
        let gone = msg.len() - stream.len();
        metrics.clamd_left_out.inc_by(gone);
        if let Some(s) = summary.as_mut() {
            s.left_out = gone;
            s.text_in_message = text_in_message;
        }
        // Each stream's answer from the verdict cache where it has one.
        let found =
            cache::clamd_scan(c, self.cache.as_ref(), &stream, &contents, &metrics.cache).await;
        match found {
            Ok(None) => (VirusScan::Clean, summary),
            Ok(Some((at, names))) => {
                if let (clamd::Found::Part(i), Some(s)) = (at, summary.as_mut()) {
                    s.infected = send.get(i).map(|p| p.label());
                }
                (VirusScan::Infected(names), summary)
            }
            Err(e) => (fail(e), summary),
        }
    }
}

/// A text part clamd's own MIME parser decodes from the message ([`parts::Part::clamd_reads`]),
/// unless its text sniffs as a file type or holds a NUL byte (sent whatever its encoding, as
/// for [`seen_whole`]).
fn clamd_reads(p: &parts::Part) -> bool {
    p.clamd_reads
        && p.contents.in_memory().is_some_and(|d| !d.contains(&0))
        && banned::sniff(&p.contents).is_none()
}

/// A verbatim text part: the message's own bytes, which clamd saw in its scan of the whole
/// message (see [`Scanners::virus_scan`]).
fn seen_whole(p: &parts::Part) -> bool {
    // Verbatim parts are slices of the message, so in memory up to the walk's budget; a
    // spilled one is simply sent.
    let Some(data) = p.contents.in_memory() else {
        return false;
    };
    p.verbatim
        && p.declared.as_deref().is_none_or(|t| t.starts_with("text/"))
        && !data.contains(&0)
        && banned::sniff(&p.contents).is_none()
}
