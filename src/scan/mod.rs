//! The scanners and their concurrent run: clamd and spamd look at the same message at the same
//! time, each under its own timeout, and their answers (or failures) are gathered into one
//! [`ScanReport`] for the policy to judge.

pub mod clamd;
pub mod spamd;

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::message::Message;
use crate::metrics::Metrics;

pub use spamd::SpamResult;

/// The virus scanner's part of the report.
#[derive(Debug, Clone, PartialEq)]
pub enum VirusScan {
    /// No virus scanner configured.
    Off,
    Clean,
    Infected(Vec<String>),
    /// The scanner failed: the reason, and a metric label for it.
    Failed {
        reason: String,
        kind: &'static str,
    },
}

/// The spam scanner's part of the report.
#[derive(Debug, Clone, PartialEq)]
pub enum SpamScan {
    Off,
    Scored(SpamResult),
    Failed { reason: String, kind: &'static str },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScanReport {
    pub virus: VirusScan,
    pub spam: SpamScan,
    pub virus_time: Duration,
    pub spam_time: Duration,
}

pub struct Scanners {
    clamd: Option<clamd::ClamdClient>,
    spamd: Option<spamd::SpamdClient>,
    spam_max_size: usize,
    spam_timeout: Duration,
}

impl Scanners {
    pub fn new(config: &Config) -> Scanners {
        let c = &config.clamd;
        let s = &config.spamd;
        Scanners {
            clamd: (!c.endpoints.is_empty()).then(|| {
                clamd::ClamdClient::new(
                    &c.endpoints,
                    Duration::from_secs(c.connect_timeout),
                    Duration::from_secs(c.timeout),
                )
            }),
            spamd: (!s.endpoints.is_empty()).then(|| {
                spamd::SpamdClient::new(
                    s.endpoints.clone(),
                    Duration::from_secs(s.connect_timeout),
                    Duration::from_secs(s.io_timeout),
                    s.user.clone(),
                )
            }),
            spam_max_size: s.max_size,
            spam_timeout: Duration::from_secs(s.timeout),
        }
    }

    pub fn clamd(&self) -> Option<&clamd::ClamdClient> {
        self.clamd.as_ref()
    }

    pub fn spamd(&self) -> Option<&spamd::SpamdClient> {
        self.spamd.as_ref()
    }

    /// Runs every configured scanner on `msg` at once, recording durations, errors and health.
    pub async fn scan(&self, msg: &Message, metrics: &Metrics) -> ScanReport {
        let virus = async {
            let start = Instant::now();
            let r = match &self.clamd {
                None => VirusScan::Off,
                Some(c) => match c.scan(msg).await {
                    Ok(clamd::Verdict::Clean) => VirusScan::Clean,
                    Ok(clamd::Verdict::Infected(names)) => VirusScan::Infected(names),
                    Err(e) => VirusScan::Failed {
                        reason: e.to_string(),
                        kind: e.kind(),
                    },
                },
            };
            (r, start.elapsed())
        };
        let spam = async {
            let start = Instant::now();
            let r = match &self.spamd {
                None => SpamScan::Off,
                Some(s) => match msg.prefix_for_spam_check(self.spam_max_size) {
                    Err(e) => SpamScan::Failed {
                        reason: format!("reading the spool: {e}"),
                        kind: "io",
                    },
                    Ok(prefix) => {
                        match tokio::time::timeout(self.spam_timeout, s.check(&prefix)).await {
                            Ok(Ok(r)) => SpamScan::Scored(r),
                            Ok(Err(e)) => SpamScan::Failed {
                                reason: e.to_string(),
                                kind: e.kind(),
                            },
                            Err(_) => SpamScan::Failed {
                                reason: "spamd timed out".into(),
                                kind: "timeout",
                            },
                        }
                    }
                },
            };
            (r, start.elapsed())
        };
        let ((virus, virus_time), (spam, spam_time)) = tokio::join!(virus, spam);
        let record = |scanner: &str, failed: Option<&'static str>, took: Duration| {
            metrics
                .scanner_duration
                .with_label_values(&[scanner])
                .observe(took.as_secs_f64());
            metrics.set_scanner_up(scanner, failed.is_none());
            if let Some(kind) = failed {
                metrics
                    .scanner_errors
                    .with_label_values(&[scanner, kind])
                    .inc();
            }
        };
        match &virus {
            VirusScan::Off => {}
            VirusScan::Failed { kind, .. } => record("clamd", Some(kind), virus_time),
            _ => record("clamd", None, virus_time),
        }
        match &spam {
            SpamScan::Off => {}
            SpamScan::Failed { kind, .. } => record("spamd", Some(kind), spam_time),
            SpamScan::Scored(r) => {
                metrics.spam_score.observe(r.score);
                record("spamd", None, spam_time)
            }
        }
        ScanReport {
            virus,
            spam,
            virus_time,
            spam_time,
        }
    }
}
