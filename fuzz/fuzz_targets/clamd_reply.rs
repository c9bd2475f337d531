//! clamd's INSTREAM reply parser on arbitrary bytes: no panic, and an infected verdict names at
//! least one signature, none of them empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postsift::scan::clamd::{parse_reply, Verdict};

fuzz_target!(|data: &[u8]| {
    if let Ok(Verdict::Infected(names)) = parse_reply(data) {
        assert!(!names.is_empty(), "infected without a signature name");
        assert!(
            names.iter().all(|n| !n.is_empty()),
            "empty signature name in {names:?}"
        );
    }
});
