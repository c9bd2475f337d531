//! spamd's SPAMC/1.5 REPORT reply parser on arbitrary bytes, as a complete reply (the peer
//! closed) and as one still arriving: no panic, a complete reply is never "need more", and a
//! parsed score, threshold and rule score is finite.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postsift::scan::spamd::parse_reply;
use postsift::scan::SpamResult;

fn check(r: &SpamResult) {
    assert!(r.score.is_finite(), "score {} from spamd", r.score);
    assert!(r.required.is_finite(), "required {} from spamd", r.required);
    for (name, s) in &r.rules {
        assert!(s.is_finite(), "rule {name:?} scored {s}");
    }
}

fuzz_target!(|data: &[u8]| {
    match parse_reply(data, true) {
        Ok(Some(r)) => check(&r),
        Ok(None) => panic!("a complete reply still needs more bytes"),
        Err(_) => {}
    }
    if let Ok(Some(r)) = parse_reply(data, false) {
        check(&r);
    }
});
