//! Set-up shared by the MIME walk's targets (mime_walk, walk_budget): the walk's limits, small
//! so that the limits and spilling to disk are fuzzed too, and the panic hook that lets
//! mail-parser's panics unwind to the walk's catch_unwind.

use std::sync::Once;
use std::time::Duration;

use postsift::scan::parts::{Limits, MAX_RATIO};

/// The walk's limits in the targets, with the time budget `max_time`.
pub const fn limits(max_time: Duration) -> Limits {
    Limits {
        max_parts: 50,
        max_bytes: 256 * 1024,
        max_depth: 4,
        max_memory: 16 * 1024,
        max_ratio: MAX_RATIO,
        max_time,
    }
}

/// libfuzzer-sys aborts on every panic, even a caught one: let mail-parser's unwind to the
/// walk's catch_unwind (mail-parser 0.11 panics on some inputs; the walk catches that by design
/// and keeps its raw reading), abort on any other. Installed once per process.
pub fn let_mail_parser_panics_unwind() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| l.file().contains("mail-parser"))
            {
                return;
            }
            fuzzer_hook(info);
        }));
    });
}
