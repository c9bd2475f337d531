//! rspamd's /checkv2 JSON reply parser on arbitrary bytes: no panic, and a parsed score,
//! threshold and symbol score is finite.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postsift::scan::rspamd::parse_reply;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = parse_reply(data) {
        assert!(r.score.is_finite(), "score {} from rspamd", r.score);
        assert!(
            r.required.is_finite(),
            "required {} from rspamd",
            r.required
        );
        for (name, s) in &r.rules {
            assert!(s.is_finite(), "symbol {name:?} scored {s}");
        }
    }
});
