//! postsift: an after-queue content filter for Postfix, in place of amavisd-new.
//!
//! Mail flows one way, and the modules read in that order:
//!
//! ```text
//! Postfix ──LMTP/SMTP──▶ server ──▶ smtp::session ──▶ message (spooled)
//!                                        │ Received          │
//!                                        ▼                   ▼
//!                                     filter ──▶ scan (clamd ‖ spamd/rspamd) ──▶ policy
//!                                        │                                        │
//! Postfix ◀──SMTP + XFORWARD── reinject ◀── rewrite (headers) ◀──── verdict ──────┘
//! ```
//!
//! Before the scan, [`banks`] groups the recipients by the `[[policy]]` banks that apply to
//! them; the filter scans once for all groups, then decides, rewrites and reinjects per group.
//!
//! The `smtp` side speaks the protocol and turns the [`filter`]'s typed [`filter::Outcome`]
//! into replies (`smtp::reply`); nothing below it imports `smtp`. Beside it, [`greylist`]
//! answers Postfix's `check_policy_service` (postgrey's greylisting) on listeners of its own,
//! under the same accept loop, drain and metrics. [`config`] feeds every stage; [`runtime`]
//! builds what one configuration serves with, and each part registers its own [`metrics`] and [`health`] probes the peers for `/readyz`. What policy sends to
//! [`quarantine`] is stored durably before the client's 250, and released from there (CLI,
//! AM.PDP) through the same reinjection. Outgoing mail is DKIM-signed by [`sign`] after its
//! headers are rewritten, just before it is reinjected. The client gets its reply
//! only after the reinjection server answered, so Postfix keeps the message until it is safely
//! back in its queue.

pub mod banks;
pub mod config;
pub mod dns;
pub mod docs;
pub mod escape;
pub mod filter;
pub mod fsmode;
pub mod greylist;
pub mod health;
pub mod import_amavis;
pub mod malloc;
pub mod message;
pub mod metrics;
pub mod milter;
pub mod peers;
pub mod policy;
pub mod quarantine;
pub mod reinject;
pub mod rewrite;
pub mod runtime;
pub mod scan;
pub mod server;
pub mod sign;
pub mod smtp;
pub mod sql;
pub mod xforward;

pub use runtime::Runtime;
pub use server::{serve, serve_with_reload, Reload};
