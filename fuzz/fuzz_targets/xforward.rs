//! XFORWARD attributes: `Attrs::apply` on each line of arbitrary text (a rejected command
//! changes nothing), then `Attrs::commands` for every attribute: each command fits the 512-byte
//! command line with its CRLF, is printable ASCII, and applying the commands' arguments to empty
//! attributes gives the same attributes back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postsift::smtp::xforward::{Attrs, ATTRIBUTES};

/// RFC 5321's command line limit, CRLF included; Postfix holds XFORWARD to it.
const MAX_LINE: usize = 512;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut attrs = Attrs::default();
    for args in text.split('\n') {
        let before = attrs.clone();
        if attrs.apply(args).is_err() {
            assert_eq!(
                attrs, before,
                "rejected XFORWARD {args:?} changed the attributes"
            );
        }
    }

    let all: Vec<String> = ATTRIBUTES.iter().map(|a| a.to_string()).collect();
    let commands = attrs.commands(&all);
    let mut back = Attrs::default();
    for c in &commands {
        assert!(
            c.len() + 2 <= MAX_LINE,
            "XFORWARD command of {} bytes (+ CRLF > {MAX_LINE}) for {attrs:?}: {c:?}",
            c.len()
        );
        assert!(
            c.bytes().all(|b| (b' '..=b'~').contains(&b)),
            "XFORWARD command is not printable ASCII: {c:?}"
        );
        let args = c
            .strip_prefix("XFORWARD ")
            .unwrap_or_else(|| panic!("not an XFORWARD command: {c:?}"));
        back.apply(args)
            .unwrap_or_else(|e| panic!("our own command {c:?} is rejected: {e}"));
    }
    assert_eq!(back, attrs, "XFORWARD round trip through {commands:?}");
});
