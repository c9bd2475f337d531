//! The milter front end's own series: connections (open, finished, refused at the limit) and
//! each message's answer and time from its first header to the answer. The message counters
//! the SMTP front end records (`postsift_messages_total`, `postsift_recipients_total`, the stage
//! durations) count milter messages too, the first two under `frontend="milter"`.

use std::time::Duration;

use miltr_common::actions::Action;
use miltr_common::modifications::{ModificationAction, ModificationResponse};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Registry};

use crate::metrics::{counter, counter0, gauge, histogram};

/// The answer a milter message got (the `answer` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Accept,
    Reject,
    Tempfail,
    Discard,
    Hold,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Accept,
        Stage::Reject,
        Stage::Tempfail,
        Stage::Discard,
        Stage::Hold,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Stage::Accept => "accept",
            Stage::Reject => "reject",
            Stage::Tempfail => "tempfail",
            Stage::Discard => "discard",
            Stage::Hold => "hold",
        }
    }

    /// What Postfix will do with the message, from the milter's answer.
    pub fn of(r: &ModificationResponse) -> Stage {
        let held = r
            .modifications()
            .iter()
            .any(|m| matches!(m, ModificationAction::Quarantine(_)));
        match r.final_action() {
            Action::Discard(_) => Stage::Discard,
            Action::Replycode(c) if c.rcode().code()[0] == 5 => Stage::Reject,
            Action::Replycode(_) | Action::Tempfail(_) => Stage::Tempfail,
            Action::Reject(_) => Stage::Reject,
            _ if held => Stage::Hold,
            _ => Stage::Accept,
        }
    }
}

#[derive(Clone)]
pub struct MilterMetrics {
    pub sessions_active: IntGauge,
    pub sessions: IntCounter,
    /// Connections closed at accept: `milter.max_connections` reached.
    pub refused: IntCounter,
    pub messages: IntCounterVec,
    pub duration: Histogram,
}

impl MilterMetrics {
    pub fn register(r: &Registry) -> MilterMetrics {
        let answers: Vec<&str> = Stage::ALL.iter().map(|s| s.label()).collect();
        MilterMetrics {
            sessions_active: gauge(
                r,
                "postsift_milter_sessions_active",
                "Open milter connections (Postfix keeps one per SMTP session)",
            ),
            sessions: counter0(
                r,
                "postsift_milter_sessions_total",
                "Finished milter connections",
            ),
            refused: counter0(
                r,
                "postsift_milter_refused_total",
                "Milter connections closed at accept: milter.max_connections reached",
            ),
            messages: counter(
                r,
                "postsift_milter_messages_total",
                "Messages answered by the milter front end, by the answer Postfix got",
                &["answer"],
                &[&answers],
            ),
            duration: histogram(
                r,
                "postsift_milter_message_duration_seconds",
                "From a milter message's first header to the answer (receive, scan, decide)",
                vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ],
            ),
        }
    }

    /// One message answered with `stage` after `took`.
    pub fn answered(&self, stage: Stage, took: Duration) {
        self.messages.with_label_values(&[stage.label()]).inc();
        self.duration.observe(took.as_secs_f64());
    }
}
