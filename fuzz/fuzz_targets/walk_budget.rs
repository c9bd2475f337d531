//! postsift's MIME walk (`scan::parts::walk_with`) under its budgets (issue 16), on arbitrary
//! messages: it never aborts (a nesting deep enough to overflow mail-parser's recursion is
//! refused before it parses), keeps within max_parts, max_decoded_bytes, max_depth and its
//! in-memory budget, stops within its time budget (plus what one read of the message itself
//! costs: the walk is not interrupted inside mail-parser), and gives back every byte of decoder
//! memory it took from the process-wide budget.
#![no_main]

mod common;

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use postsift::message::Budget;
use postsift::scan::parts::{walk_with, Control, Limits};

const LIMITS: Limits = common::limits(Duration::from_millis(500));

fuzz_target!(|data: &[u8]| {
    common::let_mail_parser_panics_unwind();
    // Small enough that a 7z or xz window can be refused (LimitKind::Memory).
    let budget = Budget::new(4 << 20, 4);
    let ctl = Control {
        cancel: None,
        budget: Some(budget.clone()),
    };
    let start = Instant::now();
    let Ok(Some(w)) = walk_with(data, &LIMITS, &std::env::temp_dir(), &ctl, true) else {
        return;
    };
    let took = start.elapsed();
    assert_eq!(budget.memory(), 0, "decoder memory not given back");
    assert!(w.parts.len() <= LIMITS.max_parts, "{} parts", w.parts.len());
    assert!(w.bytes() <= LIMITS.max_bytes as u64, "{} bytes", w.bytes());
    assert!(w.memory() <= LIMITS.max_memory, "{} in memory", w.memory());
    // Archive nesting adds one level per archive; message/rfc822 past max_depth is not kept.
    assert!(
        w.parts.iter().all(|p| p.depth <= LIMITS.max_depth),
        "a part deeper than max_depth"
    );
    // The time budget, with a wide margin for the uninterrupted reading of the message itself
    // (linear in its size) on a busy machine.
    let slack = Duration::from_secs(5) + Duration::from_millis(data.len() as u64 / 1000);
    assert!(
        took <= LIMITS.max_time + slack,
        "walk took {took:?}, stop {:?}",
        w.limit
    );
});
