//! The series of the checks: time, health and failures by scanner, spam scores, the MIME
//! walk's part count, and mail authentication's results and DNS lookups. Label values come from
//! [`Scanner`] and [`FailureKind`]. A leaf of `scan`: the checks record into it.

use prometheus::{Histogram, HistogramVec, IntCounterVec, IntGaugeVec, Registry};

pub use crate::scan::auth_metrics::AuthMetrics;

use crate::scan::report::FailureKind;

/// A scanner, as the `scanner` label of the scan series names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanner {
    Clamd,
    Spamd,
    Rspamd,
}

impl Scanner {
    pub const ALL: [Scanner; 3] = [Scanner::Clamd, Scanner::Spamd, Scanner::Rspamd];

    pub fn label(self) -> &'static str {
        match self {
            Scanner::Clamd => "clamd",
            Scanner::Spamd => "spamd",
            Scanner::Rspamd => "rspamd",
        }
    }
}

/// The series of the scanners: time, health and failures by scanner, spam scores, the MIME
/// walk's part count, and mail authentication's own (see [`auth::AuthMetrics`]).
#[derive(Clone)]
pub struct ScanMetrics {
    pub spam_score: Histogram,
    pub scanner_duration: HistogramVec,
    pub scanner_up: IntGaugeVec,
    pub scanner_errors: IntCounterVec,
    /// Decoded parts the MIME walk found per message.
    pub parts: Histogram,
    pub auth: AuthMetrics,
    /// The verdict cache's lookups, evictions and size.
    pub cache: crate::scan::cache_metrics::CacheMetrics,
    /// Messages the spam engine was not asked about: a virus or banned file decided them.
    pub spam_skipped: prometheus::IntCounter,
    /// Bytes of messages clamd was not sent with the message: sent decoded as parts instead.
    pub clamd_left_out: prometheus::IntCounter,
    /// Decoded bytes of text parts not sent to clamd: its own MIME parser decodes them from
    /// the message it is sent (`[parts] clamd_decodes_text`).
    pub clamd_text_in_message: prometheus::IntCounter,
}

impl ScanMetrics {
    pub fn register(r: &Registry) -> ScanMetrics {
        use crate::metrics::{counter, gauge_vec, histogram, histogram_vec, TIME_BUCKETS};
        let scanners = Scanner::ALL.map(Scanner::label);
        ScanMetrics {
            parts: histogram(
                r,
                "postsift_message_parts",
                "Decoded parts the MIME walk found per message (clamd scans each)",
                vec![0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0],
            ),
            spam_score: histogram(
                r,
                "postsift_spam_score",
                "Spam scores given by spamd",
                vec![
                    -5.0, -2.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 15.0, 20.0,
                    50.0, 100.0, 1000.0,
                ],
            ),
            scanner_duration: histogram_vec(
                r,
                "postsift_scanner_duration_seconds",
                "Time each scanner took per message",
                "scanner",
                &scanners,
                TIME_BUCKETS.to_vec(),
            ),
            // Only the configured scanners have a series (see `set_scanner_up`).
            scanner_up: gauge_vec(
                r,
                "postsift_scanner_up",
                "1 if the scanner answered the last scan or probe",
                "scanner",
                &[],
            ),
            scanner_errors: counter(
                r,
                "postsift_scanner_errors_total",
                "Scanner failures by kind",
                &["scanner", "kind"],
                &[&scanners, FailureKind::ALL],
            ),
            auth: AuthMetrics::register(r),
            cache: crate::scan::cache_metrics::CacheMetrics::register(r),
            spam_skipped: crate::metrics::counter0(
                r,
                "postsift_spam_skipped_total",
                "Messages the spam engine was not asked about: a virus or banned file it \
                 discards or rejects decided them for every recipient",
            ),
            clamd_left_out: crate::metrics::counter0(
                r,
                "postsift_clamd_left_out_bytes_total",
                "Bytes of messages left out of what clamd is sent of the message: encoded \
                 bodies of files it is sent decoded as parts (or whose answer is cached)",
            ),
            clamd_text_in_message: crate::metrics::counter0(
                r,
                "postsift_clamd_text_in_message_bytes_total",
                "Decoded bytes of text parts not sent to clamd as parts: its own MIME parser \
                 decodes them from the message it is sent",
            ),
        }
    }

    pub fn set_scanner_up(&self, scanner: Scanner, up: bool) {
        self.scanner_up
            .with_label_values(&[scanner.label()])
            .set(up as i64);
    }

    /// Drops the series of a scanner no longer configured.
    pub fn forget_scanner(&self, scanner: Scanner) {
        let _ = self.scanner_up.remove_label_values(&[scanner.label()]);
    }
}
