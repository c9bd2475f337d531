//! The series of the message pipeline: messages and recipients by outcome, sizes, stage times,
//! unchecked messages, policy banks, tempfails and messages in flight. The session counts the
//! outcome it replied with; the filter the rest.

use prometheus::{
    exponential_buckets, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry,
};

use crate::metrics::{counter, counter0, gauge, histogram, histogram_vec, TIME_BUCKETS};

pub const VERDICTS: &[&str] = &[
    "clean",
    "spam",
    "virus",
    "banned",
    "unchecked",
    "dmarc",
    "unscanned",
];
/// The front end a message came through (the `frontend` label): the before-queue milter or
/// the after-queue SMTP/LMTP hop (`Hop::frontend`).
pub const FRONTENDS: &[&str] = &["milter", "content_filter"];
pub const ACTIONS: &[&str] = &["pass", "discard", "reject", "tempfail", "quarantine"];
pub const RECIPIENT_RESULTS: &[&str] = &[
    "delivered",
    "discarded",
    "rejected",
    "deferred",
    "quarantined",
];
pub const STAGES: &[&str] = &["receive", "scan", "reinject", "total"];
pub const TEMPFAIL_REASONS: &[&str] = &[
    "clamd",
    "spamd",
    "rspamd",
    "greylist",
    "unchecked",
    "reinject",
    "spool",
    "resources",
    "shutdown",
    "quarantine",
    "dkim_sign",
];
/// Why a message was not fully checked: clamd failed ("scanner"), or the MIME walk stopped at
/// one of its limits (`LimitKind::ALL`).
fn unchecked_reasons() -> Vec<&'static str> {
    std::iter::once("scanner")
        .chain(crate::scan::parts::LimitKind::ALL.iter().copied())
        .collect()
}
/// Why the after-queue hop had no milter scan to reuse (`reuse::Miss`).
pub const REUSE_MISSES: &[&str] = &["none", "body", "checks"];
/// The `bank` label of a message no policy bank applied to.
pub const NO_BANK: &str = "-";

#[derive(Clone)]
pub struct FilterMetrics {
    pub messages: IntCounterVec,
    /// Messages a policy bank applied to (to some recipient), by bank name: names come from
    /// `[[policy]]` only, a small set fixed by the configuration; `-` for messages no bank
    /// applied to.
    pub policy_banks: IntCounterVec,
    pub recipients: IntCounterVec,
    pub message_size: Histogram,
    pub stage_duration: HistogramVec,
    pub tempfails: IntCounterVec,
    /// Messages not fully checked, by reason and the action taken.
    pub unchecked: IntCounterVec,
    pub in_flight: IntGauge,
    /// Hybrid mode: messages the after-queue hop did not scan, the milter's scan reused.
    pub reused: IntCounter,
    /// Hybrid mode: messages the after-queue hop scanned, by why no kept scan was used.
    pub reuse_missed: IntCounterVec,
}

impl FilterMetrics {
    pub fn register(r: &Registry) -> FilterMetrics {
        FilterMetrics {
            messages: counter(
                r,
                "postsift_messages_total",
                "Messages that reached end of DATA, by content verdict, final action and front end",
                &["verdict", "action", "frontend"],
                &[VERDICTS, ACTIONS, FRONTENDS],
            ),
            recipients: counter(
                r,
                "postsift_recipients_total",
                "Recipients by final result and front end",
                &["result", "frontend"],
                &[RECIPIENT_RESULTS, FRONTENDS],
            ),
            message_size: histogram(
                r,
                "postsift_message_size_bytes",
                "Size of received messages",
                exponential_buckets(1024.0, 4.0, 9).expect("buckets"),
            ),
            stage_duration: histogram_vec(
                r,
                "postsift_stage_duration_seconds",
                "Time per message in each stage",
                "stage",
                STAGES,
                TIME_BUCKETS.to_vec(),
            ),
            tempfails: counter(
                r,
                "postsift_tempfails_total",
                "Temporary failures given to the client, by reason",
                &["reason"],
                &[TEMPFAIL_REASONS],
            ),
            unchecked: counter(
                r,
                "postsift_unchecked_total",
                "Messages not fully checked (clamd failed, or the MIME walk stopped at a limit), by reason, action and front end",
                &["reason", "action", "frontend"],
                &[&unchecked_reasons(), ACTIONS, FRONTENDS],
            ),
            in_flight: gauge(
                r,
                "postsift_messages_in_flight",
                "Messages being scanned or reinjected",
            ),
            reused: counter0(
                r,
                "postsift_milter_reused_total",
                "Hybrid mode: messages the after-queue hop took the milter's scan for instead of scanning",
            ),
            reuse_missed: counter(
                r,
                "postsift_milter_reuse_missed_total",
                "Hybrid mode: messages the after-queue hop scanned, by why it had no milter scan to reuse (none, body, checks)",
                &["reason"],
                &[REUSE_MISSES],
            ),
            policy_banks: counter(
                r,
                "postsift_policy_bank_total",
                "Messages a policy bank ([[policy]]) applied to, for some or all recipients",
                &["bank"],
                &[&[NO_BANK]],
            ),
        }
    }

    /// Shows every configured bank at 0 before its first message (at start and reload).
    pub fn declare_banks<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            self.policy_banks.with_label_values(&[name]);
        }
    }

    /// Counts a message that bank `name` applied to.
    pub fn bank(&self, name: &str) {
        self.policy_banks.with_label_values(&[name]).inc();
    }

    /// Counts a message once for each bank that applied to it, or as `-` when none did.
    pub fn banks_applied<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut none = true;
        for name in names {
            self.bank(name);
            none = false;
        }
        if none {
            self.bank(NO_BANK);
        }
    }
}
