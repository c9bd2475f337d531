//! XFORWARD attributes: `Attrs::apply` on each line of arbitrary text (a rejected command
//! changes nothing), then `Attrs::commands` for every attribute: each command fits the 512-byte
//! command line with its CRLF, is printable ASCII, and applying the commands' arguments to empty
//! attributes gives the same attributes back — each value whole, or cut at its end where its
//! xtext form would not fit in one command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postsift::xforward::{xtext_encode, Attrs, ATTRIBUTES};

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
    let fields = |a: &Attrs| {
        [
            a.name.clone(),
            a.addr.clone(),
            a.port.clone(),
            a.proto.clone(),
            a.helo.clone(),
            a.ident.clone(),
            a.source.clone(),
        ]
    };
    for (sent, had) in fields(&back).iter().zip(fields(&attrs).iter()) {
        match (sent, had) {
            (None, None) => {}
            (Some(s), Some(h)) => assert!(
                // Cut only when the encoded value nearly filled a command on its own (one more
                // character, up to 12 bytes as xtext, would not have fit).
                h.starts_with(s.as_str()) && (s == h || xtext_encode(s).len() > 470),
                "XFORWARD round trip: {h:?} came back as {s:?} through {commands:?}"
            ),
            _ => panic!("XFORWARD round trip lost or made up an attribute: {commands:?}"),
        }
    }
});
