//! Manual pages and shell completions for the package: `postsift(8)` and one page per
//! subcommand from the CLI definitions (clap_mangen), `postsift.toml(5)` from the annotated
//! example configuration, and bash/zsh/fish completions (clap_complete).

use std::io::Write;
use std::path::{Path, PathBuf};

use roff::{bold, roman, Roff};

/// The example configuration, every key with its default and meaning: the reference that
/// `postsift.toml(5)` is made from.
pub const EXAMPLE_CONFIG: &str = include_str!("../postsift.example.toml");

/// Writes `man8/postsift*.8`, `man5/postsift.toml.5` and `completions/{postsift.bash,_postsift,
/// postsift.fish}` under `out`; returns the files written.
pub fn generate(cmd: clap::Command, out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man8 = out.join("man8");
    std::fs::create_dir_all(&man8)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    man_pages(&cmd, &man8, &mut written)?;

    let man5 = out.join("man5");
    std::fs::create_dir_all(&man5)?;
    let path = man5.join("postsift.toml.5");
    std::fs::File::create(&path)?.write_all(config_page(EXAMPLE_CONFIG).as_bytes())?;
    written.push(path);

    let comp = out.join("completions");
    std::fs::create_dir_all(&comp)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        written.push(clap_complete::generate_to(
            shell,
            &mut cmd.clone(),
            "postsift",
            &comp,
        )?);
    }
    Ok(written)
}

fn man_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, dir, written)?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Manager's Manual")
        .source(format!("postsift {}", env!("CARGO_PKG_VERSION")));
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)?;
    let mut see_also = Roff::new();
    see_also.control("SH", ["SEE ALSO"]);
    let mut refs = vec![bold("postsift.toml"), roman("(5)")];
    if cmd.get_name() != "postsift" {
        refs.extend([roman(", "), bold("postsift"), roman("(8)")]);
    }
    refs.push(roman(", /usr/share/doc/postsift/README.md"));
    see_also.text(refs);
    page.extend_from_slice(see_also.to_roff().as_bytes());
    std::fs::write(&path, page)?;
    written.push(path);
    Ok(())
}

/// `postsift.toml(5)`: each `[section]` of the example is a subsection, each key a tagged
/// paragraph with its default, described by the comment lines above it.
pub fn config_page(example: &str) -> String {
    let mut r = Roff::new();
    r.control(
        "TH",
        [
            "POSTSIFT.TOML",
            "5",
            "",
            &format!("postsift {}", env!("CARGO_PKG_VERSION")),
            "File Formats Manual",
        ],
    );
    r.control("SH", ["NAME"]);
    r.text([roman("postsift.toml - postsift configuration file")]);
    r.control("SH", ["SYNOPSIS"]);
    r.text([roman("/etc/postsift/postsift.toml")]);
    r.control("SH", ["DESCRIPTION"]);
    let mut comment: Vec<String> = Vec::new();
    let mut in_sections = false;
    let flush = |r: &mut Roff, comment: &mut Vec<String>| {
        if !comment.is_empty() {
            r.control("PP", [] as [&str; 0]);
            r.text([roman(comment.join(" "))]);
            comment.clear();
        }
    };
    for line in example.lines() {
        let t = line.trim();
        if let Some(c) = t.strip_prefix('#') {
            comment.push(c.trim().to_owned());
        } else if t.starts_with('[') {
            if !in_sections {
                flush(&mut r, &mut comment);
                r.control("SH", ["SECTIONS AND KEYS"]);
                in_sections = true;
            }
            r.control("SS", [t]);
            flush(&mut r, &mut comment);
        } else if let Some((key, value)) = t.split_once('=') {
            r.control("TP", [] as [&str; 0]);
            r.text([bold(key.trim()), roman(format!(" = {}", value.trim()))]);
            if !comment.is_empty() {
                r.text([roman(comment.join(" "))]);
                comment.clear();
            }
        } else if t.is_empty() {
            flush(&mut r, &mut comment);
        } else {
            // A continuation line of a multi-line value.
            r.text([roman(t)]);
        }
    }
    flush(&mut r, &mut comment);
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("postsift"),
        roman("(8), "),
        bold("postsift-check-config"),
        roman("(8), /usr/share/doc/postsift/README.md"),
    ]);
    r.to_roff()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_page_has_every_section_of_the_example() {
        let page = config_page(EXAMPLE_CONFIG);
        for line in EXAMPLE_CONFIG.lines() {
            if line.starts_with('[') {
                assert!(page.contains(&format!(".SS {line}")), "{line} missing");
            }
        }
        assert!(page.contains("max_sessions"));
    }
}
