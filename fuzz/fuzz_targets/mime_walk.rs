//! postsift's MIME walk (`scan::parts::walk`) on arbitrary messages: it never panics (mail-parser
//! 0.11 does on some inputs; the walk catches that by design and keeps its raw reading, so only
//! a panic from anywhere else is a crash here), it stays within its limits (parts, decoded
//! bytes, decoded bytes in memory — the budget is small here so that spilling to disk is
//! fuzzed too), and every part it keeps has contents or a name (an archive member that could
//! not be read is kept, empty, for the banned-file rules).
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use postsift::scan::parts::{walk, Limits, MAX_RATIO};

const LIMITS: Limits = Limits {
    max_parts: 50,
    max_bytes: 256 * 1024,
    max_depth: 4,
    max_memory: 16 * 1024,
    max_ratio: MAX_RATIO,
    max_time: std::time::Duration::from_secs(3600),
};

fuzz_target!(|data: &[u8]| {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // libfuzzer-sys aborts on every panic, even a caught one: let mail-parser's unwind to
        // the walk's catch_unwind, abort on any other.
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
    // Err only when a spill file cannot be written: the machine's fault, not the input's.
    let Ok(w) = walk(data, &LIMITS, &std::env::temp_dir()) else {
        return;
    };
    assert!(w.parts.len() <= LIMITS.max_parts, "{} parts", w.parts.len());
    assert!(
        w.bytes() <= LIMITS.max_bytes as u64,
        "{} decoded bytes",
        w.bytes()
    );
    assert!(
        w.memory() <= LIMITS.max_memory,
        "{} bytes in memory",
        w.memory()
    );
    assert!(
        w.parts
            .iter()
            .all(|p| !p.contents.is_empty() || p.name.is_some()),
        "an empty part without a name kept"
    );
});
