//! What a session needs of the runtime, and nothing more: its limits, the name it greets
//! with, the memory budget and spool directory of its messages, its metrics, and the shutdown
//! signal. Built from the [`Runtime`] a session starts under.

use std::sync::Arc;

use crate::runtime::Runtime;
use crate::smtp::codec::Limits;

/// The limits a session enforces (from `[server]` and the timeouts).
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max_errors: u32,
    pub max_junk_commands: u32,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub spool_threshold: usize,
    pub max_header_size: usize,
    /// Read and write deadlines of the connection.
    pub conn: Limits,
}

/// The series a session records into: its own (sessions, replies, spool use) and the
/// outcome of each message it answered.
#[derive(Clone)]
pub struct SessionMetrics {
    pub server: crate::server::metrics::ServerMetrics,
    pub filter: crate::filter::metrics::FilterMetrics,
}

/// What a session needs of the runtime, and nothing more: its limits, the name it greets
/// with, the memory budget and spool directory of its messages, its metrics, and the shutdown
/// signal. The pipeline it hands messages to is apart ([`Pipeline`]).
#[derive(Clone)]
pub struct Context {
    pub limits: SessionLimits,
    pub hostname: String,
    pub spool_dir: std::path::PathBuf,
    pub budget: Arc<crate::message::Budget>,
    pub metrics: SessionMetrics,
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl From<&Runtime> for Context {
    fn from(rt: &Runtime) -> Context {
        let c = &rt.config;
        Context {
            limits: SessionLimits {
                max_errors: c.server.max_errors,
                max_junk_commands: c.server.max_junk_commands,
                max_message_size: c.server.max_message_size,
                max_recipients: c.server.max_recipients,
                spool_threshold: c.server.spool_threshold,
                max_header_size: c.server.max_header_size,
                conn: Limits {
                    command: c.read_timeout(),
                    data: c.read_timeout(),
                    min_data_rate: c.server.min_data_rate,
                    write: c.write_timeout(),
                },
            },
            hostname: rt.hostname.clone(),
            spool_dir: rt.spool_dir.clone(),
            budget: rt.budget.clone(),
            metrics: SessionMetrics {
                server: rt.metrics.server.clone(),
                filter: rt.metrics.filter.clone(),
            },
            shutdown: rt.shutdown.clone(),
        }
    }
}

impl From<Arc<Runtime>> for Context {
    fn from(rt: Arc<Runtime>) -> Context {
        Context::from(&*rt)
    }
}
