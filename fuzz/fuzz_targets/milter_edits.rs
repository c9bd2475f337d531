//! The milter's header diff on arbitrary header sections (the first byte splits the input into
//! the original section and the new block): no panic, and every edit's index is one Postfix
//! can take (a change names the 1st or later field of its name, an insertion a position within
//! the section).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postsift::milter::edits::{diff, Edit};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize * rest.len()) / 255;
    let (original, new) = rest.split_at(cut.min(rest.len()));
    let fields = postsift::message::fields(original).len() as u32;
    for e in diff(original, new) {
        match e {
            Edit::Change { index, name, .. } => {
                assert!(index >= 1 && index <= fields, "{index} of {fields}");
                assert!(!name.is_empty());
            }
            Edit::Insert { index, name, .. } => {
                assert!(index <= fields, "{index} of {fields}");
                assert!(!name.is_empty());
            }
        }
    }
});
