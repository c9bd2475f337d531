//! `[parts]`: postsift's own MIME walk (how far it goes, what an unfinished walk gives).
use serde::Deserialize;

use super::check::{Check, Error};
use super::server::Server;

/// `[parts]`: postsift's own MIME walk, whose decoded parts clamd scans besides the whole
/// message (amavis's `$MAXFILES`, `$MAX_EXPANSION_QUOTA`, `$MAXLEVELS`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Parts {
    /// Walk the MIME structure and have clamd scan every decoded part. Default true.
    pub enabled: bool,
    /// Messages larger than this (bytes) are scanned whole only. Default 16777216.
    pub max_message_size: u64,
    /// Decoded parts kept at most; more → UNCHECKED. Default 1000.
    pub max_parts: usize,
    /// Decoded bytes of all parts together at most; more → UNCHECKED. Default 33554432.
    pub max_decoded_bytes: usize,
    /// message/rfc822 and archive nesting followed at most; deeper → UNCHECKED. Default 16.
    pub max_depth: usize,
    /// Decoded bytes one message's walk holds in memory, all parts together; past it, parts
    /// spill to unlinked temp files in `server.spool_dir` (keeping their first 4 KiB in
    /// memory while this lasts), so a decompression bomb costs disk, not RAM. At least 65536.
    /// Default 4194304 (4 MiB).
    pub max_memory: usize,
    /// What a message gets when the walk stopped at `max_parts`. Default "pass".
    pub on_max_parts: Unchecked,
    /// … at `max_decoded_bytes`. Default "pass".
    pub on_max_decoded_bytes: Unchecked,
    /// … at `max_depth`. Default "pass".
    pub on_max_depth: Unchecked,
    /// … at an archive member expanding more than 100 times (a decompression bomb).
    /// Default "pass".
    pub on_ratio: Unchecked,
    /// … at an encrypted archive member. Default "pass".
    pub on_encrypted: Unchecked,
    /// Seconds of wall-clock time one message's walk may take (decompressing included);
    /// past it the walk stops. At least 1. Default 10.
    pub max_walk_time: u64,
    /// … at `max_walk_time` (reason `time`). Default "pass".
    pub on_max_walk_time: Unchecked,
    /// … at an archive postsift will not open (reason `decoder`: an xz or 7z asking for a
    /// dictionary over 64 MiB, a zip member compressed with a method postsift does not read).
    /// Default "pass".
    pub on_decoder: Unchecked,
    /// … at a message larger than `max_message_size`, which is not walked (reason `size`).
    /// Default "pass".
    pub on_max_message_size: Unchecked,
    /// … at a walk that failed (reason `error`: a spill file that could not be written, the
    /// spooled message not read back). Default "tempfail": the parts were not judged.
    pub on_walk_error: Unchecked,
    /// clamd's own MIME parser decodes the message's quoted-printable and base64 text parts
    /// (clamd's `ScanMail yes`, its default): a text part it provably reads as the walk did
    /// (README, "What clamd is given") is not sent to it decoded as well. Set false when clamd
    /// runs with `ScanMail no` or mail limits far below its defaults. Default true.
    pub clamd_decodes_text: bool,
}

/// What a message the MIME walk could not finish gets (amavis passes it tagged
/// `***UNCHECKED***`; a stricter site may tempfail or ban it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unchecked {
    /// Deliver with `headers.unchecked_subject_tag` (`***UNCHECKED*** `) in the subject.
    Pass,
    /// `451 4.7.0`: the client keeps it queued and retries (Postfix bounces it when its
    /// queue lifetime ends).
    Tempfail,
    /// Judged as a banned file: `[banned] action` decides.
    Banned,
    /// Stored in the quarantine (category UNCHECKED), `250 2.7.0 Ok, quarantined`.
    Quarantine,
}

impl Default for Parts {
    fn default() -> Self {
        Parts {
            enabled: true,
            max_message_size: 16_777_216,
            max_parts: 1000,
            max_decoded_bytes: 33_554_432,
            max_depth: 16,
            max_memory: 4_194_304,
            on_max_parts: Unchecked::Pass,
            on_max_decoded_bytes: Unchecked::Pass,
            on_max_depth: Unchecked::Pass,
            on_ratio: Unchecked::Pass,
            on_encrypted: Unchecked::Pass,
            max_walk_time: 10,
            on_max_walk_time: Unchecked::Pass,
            on_decoder: Unchecked::Pass,
            on_max_message_size: Unchecked::Pass,
            on_walk_error: Unchecked::Tempfail,
            clamd_decodes_text: true,
        }
    }
}

impl Parts {
    pub(super) fn validate(&self, check: Check) -> Result<(), Error> {
        if self.max_memory < 65_536 {
            return Err(check.bad("parts.max_memory", "must be at least 65536 bytes"));
        }
        check.seconds(&[("parts.max_walk_time", self.max_walk_time)])
    }

    /// Messages over `max_message_size` are not walked (UNCHECKED, reason `size`): a
    /// configuration that accepts larger ones (`accepted`, `server.max_message_size`) is told
    /// so. Not for the defaults (16 MiB walked, 50 MiB accepted), whose gap the README documents.
    pub(super) fn size_warning(&self, accepted: u64) -> Option<String> {
        let walked = self.max_message_size;
        let defaults = (
            Parts::default().max_message_size,
            Server::default().max_message_size,
        );
        (self.enabled && walked < accepted && (walked, accepted) != defaults).then(|| {
            format!(
                "parts.max_message_size ({walked}) is below server.max_message_size \
                 ({accepted}): larger messages are not walked, so the banned-file rules do not \
                 see their parts; they are UNCHECKED (reason size, parts.on_max_message_size)"
            )
        })
    }

    /// Every `on_…` key, in the file's order.
    pub fn unchecked_actions(&self) -> [Unchecked; 9] {
        [
            self.on_max_parts,
            self.on_max_decoded_bytes,
            self.on_max_depth,
            self.on_ratio,
            self.on_encrypted,
            self.on_max_walk_time,
            self.on_decoder,
            self.on_max_message_size,
            self.on_walk_error,
        ]
    }
}
