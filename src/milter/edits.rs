//! The header edits that turn the message's header section, as Postfix sent it to the milter,
//! into the section the after-queue hop would have written: postsift's fields inserted at the
//! top, forged fields deleted (a change to an empty value, by the field's index among those of
//! its name), a changed Subject. Pure: a diff of two field lists, unit-tested without a socket.

use crate::message::{field_name, fields};

/// One header edit, in the milter's terms. Names and values are bytes as they go on the wire;
/// a value keeps its leading whitespace and its folding (lines joined by a bare LF, as the
/// milter protocol carries them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// `SMFIR_CHGHEADER`: the `index`th (from 1) field named `name` gets `value`; an empty
    /// value deletes it.
    Change {
        index: u32,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    /// `SMFIR_INSHEADER`: a new field at position `index` (0: the top).
    Insert {
        index: u32,
        name: Vec<u8>,
        value: Vec<u8>,
    },
}

/// The edits that make `original` (the header section received) into `new` (the header block
/// the filter built, possibly ending in a blank line), less the `Received:` fields the filter
/// adds (Postfix writes its own). Deletions and changes come first, each name's from its last
/// index down, so that none moves another's index; then the insertions, in positions counted
/// after the deletions, from the bottom up.
pub fn diff(original: &[u8], new: &[u8]) -> Vec<Edit> {
    let old: Vec<&[u8]> = fields(original)
        .into_iter()
        .filter(|f| field_name(f).is_some())
        .collect();
    let new: Vec<&[u8]> = fields(new)
        .into_iter()
        .filter(|f| field_name(f).is_some())
        .collect();
    // For each original field: kept, changed to a new field, or deleted; and the new fields
    // inserted before it (or at the end).
    let mut fate: Vec<Fate> = Vec::with_capacity(old.len());
    let mut inserted: Vec<(usize, &[u8])> = Vec::new();
    let mut j = 0;
    for (k, o) in old.iter().enumerate() {
        if let Some(p) = (j..new.len()).find(|&p| new[p] == *o) {
            inserted.extend(new[j..p].iter().map(|f| (k, *f)));
            fate.push(Fate::Kept);
            j = p + 1;
        } else if new.get(j).is_some_and(|n| {
            // Only the subject is changed in place (its tag); any other field of
            // postsift's is new, and a forged one of the same name goes.
            same_name(n, o) && is_named(n, b"Subject") && !old[k + 1..].contains(n)
        }) {
            fate.push(Fate::Changed(new[j]));
            j += 1;
        } else {
            fate.push(Fate::Deleted);
        }
    }
    inserted.extend(new[j..].iter().map(|f| (old.len(), *f)));

    let mut edits = Vec::new();
    // Each original field's index among the fields of its name, from 1.
    let mut by_name: Vec<(usize, u32)> = Vec::new();
    for (k, o) in old.iter().enumerate() {
        let n = old[..k].iter().filter(|p| same_name(p, o)).count() as u32 + 1;
        by_name.push((k, n));
    }
    for &(k, index) in by_name.iter().rev() {
        let (name, _) = split(old[k]);
        match fate[k] {
            Fate::Kept => {}
            Fate::Deleted => edits.push(Edit::Change {
                index,
                name: name.to_vec(),
                value: Vec::new(),
            }),
            Fate::Changed(f) => edits.push(Edit::Change {
                index,
                name: name.to_vec(),
                value: split(f).1,
            }),
        }
    }
    // Positions after the deletions: the surviving fields before original k.
    let survivors_before = |k: usize| {
        fate[..k]
            .iter()
            .filter(|f| !matches!(f, Fate::Deleted))
            .count() as u32
    };
    for &(k, f) in inserted.iter().rev() {
        if is_received(f) {
            continue;
        }
        let (name, value) = split(f);
        edits.push(Edit::Insert {
            index: survivors_before(k),
            name: name.to_vec(),
            value,
        });
    }
    edits
}

#[derive(Debug, Clone, Copy)]
enum Fate<'a> {
    Kept,
    Changed(&'a [u8]),
    Deleted,
}

fn same_name(a: &[u8], b: &[u8]) -> bool {
    match (field_name(a), field_name(b)) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

fn is_named(f: &[u8], name: &[u8]) -> bool {
    field_name(f).is_some_and(|n| n.eq_ignore_ascii_case(name))
}

fn is_received(f: &[u8]) -> bool {
    is_named(f, b"Received")
}

/// A field's name, and its value as the milter carries it: everything after the colon, the
/// final line end dropped and the folds joined by a bare LF.
fn split(f: &[u8]) -> (&[u8], Vec<u8>) {
    let name = field_name(f).unwrap_or_default();
    let colon = f.iter().position(|&b| b == b':').unwrap_or(f.len());
    let mut value = f.get(colon + 1..).unwrap_or_default();
    while let Some(v) = value
        .strip_suffix(b"\n")
        .map(|v| v.strip_suffix(b"\r").unwrap_or(v))
    {
        value = v;
    }
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'\r' && value.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(value[i]);
        i += 1;
    }
    (name, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(index: u32, name: &str, value: &str) -> Edit {
        Edit::Insert {
            index,
            name: name.into(),
            value: value.into(),
        }
    }

    fn chg(index: u32, name: &str, value: &str) -> Edit {
        Edit::Change {
            index,
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn new_fields_go_on_top_in_order_and_the_received_line_is_left_to_postfix() {
        let old = b"From: a@example.org\r\nSubject: hi\r\n";
        let new = b"Authentication-Results: mx.test;\r\n spf=pass\r\nX-Virus-Scanned: postsift\r\nReceived: from x\r\n by y\r\nFrom: a@example.org\r\nSubject: hi\r\n";
        assert_eq!(
            diff(old, new),
            [
                ins(0, "X-Virus-Scanned", " postsift"),
                ins(0, "Authentication-Results", " mx.test;\n spf=pass"),
            ]
        );
    }

    #[test]
    fn forged_fields_are_deleted_by_their_index_from_the_last_and_a_tagged_subject_changed() {
        let old = b"X-Spam-Flag: NO\r\nFrom: a@example.org\r\nx-spam-flag:\r\n\tNO\r\nSubject: buy\r\nX-Spam-Flag: NO\r\n";
        let new = b"X-Spam-Flag: YES\r\nFrom: a@example.org\r\nSubject: ***Spam*** buy\r\n\r\n";
        assert_eq!(
            diff(old, new),
            [
                chg(3, "X-Spam-Flag", ""),
                chg(1, "Subject", " ***Spam*** buy"),
                chg(2, "x-spam-flag", ""),
                chg(1, "X-Spam-Flag", ""),
                ins(0, "X-Spam-Flag", " YES"),
            ]
        );
    }

    #[test]
    fn the_same_section_needs_no_edit() {
        let h = b"From: a@example.org\r\nTo: b@example.com\r\n";
        assert!(diff(h, h).is_empty());
    }
}
