//! Writes the hostile message shapes of issue 16 (tests/integration/hostile.rs) to a directory,
//! one `.eml` each, for `postsift scan`, the bench's hostile mode and the fuzz corpus:
//! `cargo run --release --example hostile -- <dir> [small]` (`small`: only the shapes under
//! 1 MiB, scaled down, as fuzz seeds).

#[path = "../tests/integration/hostile.rs"]
mod hostile;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: hostile <dir> [small]");
        std::process::exit(64);
    };
    let small = args.next().as_deref() == Some("small");
    std::fs::create_dir_all(&dir).expect("output directory");
    let shapes = match small {
        false => hostile::all(),
        true => vec![
            ("nested-rfc822-2000.eml", hostile::nested_rfc822(2_000)),
            ("nested-multipart-500.eml", hostile::nested_multipart(500)),
            (
                "nested-in-base64-2000.eml",
                hostile::nested_in_base64(2_000),
            ),
            (
                "zip-200-entries-one-member.eml",
                hostile::mail_with(
                    "a.zip",
                    &hostile::zip_one_member_many_entries(200, 64 << 10),
                ),
            ),
            (
                "zip-100-members.eml",
                hostile::mail_with("b.zip", &hostile::zip_many(100, 16 << 10)),
            ),
            (
                "7z-solid-50-members.eml",
                hostile::mail_with("c.7z", &hostile::sevenz_solid(50, 16 << 10)),
            ),
            (
                "xz-1.5gib-dictionary.eml",
                hostile::mail_with(
                    "tool.xz",
                    &hostile::xz_big_dictionary(b"MZ\x90\x00 a program"),
                ),
            ),
        ],
    };
    for (name, data) in shapes {
        let path = std::path::Path::new(&dir).join(name);
        std::fs::write(&path, &data).expect("write");
        println!("{} {}", data.len(), path.display());
    }
}
