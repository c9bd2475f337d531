//! The DATA decoder fed one body split at arbitrary points: the output and the end position are
//! the same for every split, the output has no bare CR or LF, and decoding ends exactly at the
//! first `<CRLF>.<CRLF>` (a leading `.<CRLF>` counts, the body being at a line start) and
//! nowhere else.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postsift::smtp::codec::DataDecoder;

/// The first bytes of the input choose the piece sizes (cycled); the rest is the body.
const SPLIT_BYTES: usize = 4;

/// Decodes `body` handed over in pieces of the given sizes; returns the output and, when the
/// end of data was reached, how many bytes of `body` it took.
fn decode(body: &[u8], sizes: &mut dyn Iterator<Item = usize>) -> (Vec<u8>, Option<usize>) {
    let mut dec = DataDecoder::new();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let end = (pos + sizes.next().unwrap()).min(body.len());
        let (used, done) = dec.decode(&body[pos..end], &mut out);
        assert!(used <= end - pos, "consumed {used} of {} bytes", end - pos);
        pos += used;
        if done {
            return (out, Some(pos));
        }
        assert_eq!(
            pos, end,
            "decoder stopped early without reaching the end of data"
        );
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < SPLIT_BYTES {
        return;
    }
    let (split, body) = data.split_at(SPLIT_BYTES);
    let whole = decode(body, &mut std::iter::repeat(body.len().max(1)));
    let bytewise = decode(body, &mut std::iter::repeat(1));
    let chosen = decode(body, &mut split.iter().map(|&b| 1 + b as usize).cycle());
    assert_eq!(whole, bytewise, "byte-at-a-time decoding differs");
    assert_eq!(whole, chosen, "decoding in pieces of {split:?} differs");

    let (out, end) = whole;
    for (i, &b) in out.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i} of the output");
        }
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i} of the output");
        }
    }

    // The body starts at a line start, as if after a CRLF.
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(body);
    let terminator = framed
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|p| p + 5 - 2);
    assert_eq!(
        end, terminator,
        "decoding ended at {end:?}, the first <CRLF>.<CRLF> ends at {terminator:?}"
    );
    if end.is_some() {
        assert!(
            out.is_empty() || out.ends_with(b"\r\n"),
            "a complete body does not end with CRLF"
        );
    }
});
