//! postsift's MIME walk (`scan::parts::walk`) on arbitrary messages: it never panics (mail-parser
//! 0.11 does on some inputs; the walk catches that by design and keeps its raw reading, so only
//! a panic from anywhere else is a crash here), it stays within its limits (parts, decoded
//! bytes, decoded bytes in memory — the budget is small here so that spilling to disk is
//! fuzzed too), and every part it keeps has contents or a name (an archive member that could
//! not be read is kept, empty, for the banned-file rules).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use postsift::scan::parts::{walk, Limits};

const LIMITS: Limits = common::limits(std::time::Duration::from_secs(3600));

fuzz_target!(|data: &[u8]| {
    common::let_mail_parser_panics_unwind();
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
