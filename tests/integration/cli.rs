//! The `postsift` command itself: `check-config` names the bad key and exits 64, or warns about
//! unused sections and exits 0; `scan` runs the real scanners on a file and exits by verdict.

use crate::peers;
use crate::util::{self, postsift, postsift_out};

/// `check-config` on `toml` written to a file: (exit code, stdout, stderr).
fn check_config(toml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postsift.toml");
    std::fs::write(&path, toml).unwrap();
    postsift_out(&["check-config", "--config", path.to_str().unwrap()])
}

#[test]
fn check_config_names_the_bad_key_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[spam]\nkill_levle = 5\n").unwrap();
    let (code, text) = postsift(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 64, "{text}");
    assert!(text.contains("kill_levle"), "{text}");

    std::fs::write(&bad, "[clamd]\nendpoints = [\"relative.sock\"]\n").unwrap();
    let (code, text) = postsift(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 64, "{text}");
    assert!(text.contains("clamd.endpoints"), "{text}");

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/postsift.example.toml");
    let (code, out, err) = postsift_out(&["check-config", "--config", example]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "configuration ok\n");
    assert!(!err.contains("warning"), "{err}");

    // Each timeout is checked on its own and named, not reported as another key.
    let (code, out, err) = check_config("[reinject]\ndata_timeout = 0\n");
    assert_eq!(code, 64, "{out}{err}");
    assert!(err.contains("`reinject.data_timeout`"), "{err}");
}

/// The trap: spamd switched off and [rspamd] written, but spam.engine left at "spamd", used to
/// pass check-config while no spam check ran at all.
#[test]
fn check_config_refuses_the_spam_engine_trap() {
    let (code, out, err) =
        check_config("[spamd]\nendpoints = []\n[rspamd]\nendpoints = [\"127.0.0.1:11333\"]\n");
    assert_eq!(code, 64, "{out}{err}");
    assert!(!out.contains("configuration ok"), "{out}");
    assert!(err.contains("`spam.engine`"), "{err}");
    assert!(err.contains("spamd.endpoints is empty"), "{err}");
    assert!(err.contains("set spam.engine = \"rspamd\""), "{err}");
}

#[test]
fn check_config_warns_about_an_unused_section_and_exits_0() {
    let (code, out, err) = check_config("[rspamd]\nendpoints = [\"127.0.0.1:11333\"]\n");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "configuration ok\n");
    assert!(
        err.lines()
            .any(|l| l.starts_with("warning: [rspamd] is not used: spam.engine is \"spamd\"")),
        "{err}"
    );

    let (code, out, err) =
        check_config("[spam]\nengine = \"rspamd\"\n[spamd]\nendpoints = [\"127.0.0.1:783\"]\n");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning: [spamd] is not used: spam.engine is \"rspamd\""),
        "{err}"
    );
}

#[test]
fn scan_exits_by_verdict_against_real_scanners() {
    let (clamd, spamd) = (util::clamd(), util::spamd());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("scan.toml");
    std::fs::write(
        &cfg,
        format!("[clamd]\nendpoints = [\"{clamd}\"]\n[spamd]\nendpoints = [\"{spamd}\"]\n[metrics]\nlisten = \"\"\n"),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap().to_owned();
    let msg = |f: &str| {
        peers::fixtures()
            .join("messages")
            .join(f)
            .display()
            .to_string()
    };
    let (code, text) = postsift(&["scan", "--config", &cfg, &msg("clean.eml")]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("X-Spam-Flag: NO"), "{text}");
    let (code, text) = postsift(&["scan", "--config", &cfg, &msg("gtube.eml")]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("Subject: ***Spam*** Cheap watches"), "{text}");
    let (code, text) = postsift(&["scan", "--config", &cfg, &msg("eicar-base64.eml")]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("INFECTED"), "{text}");

    std::fs::write(
        dir.path().join("down.toml"),
        "[clamd]\nendpoints = [\"/nonexistent.sock\"]\n[spamd]\nendpoints = []\n",
    )
    .unwrap();
    let down = dir.path().join("down.toml").display().to_string();
    let (code, text) = postsift(&["scan", "--config", &down, &msg("clean.eml")]);
    assert_eq!(code, 3, "{text}");
}

/// An admin types `postsift quarantine release ID --config F`; it used to be refused
/// ("unexpected argument '--config'") while `postsift quarantine --config F release ID` worked.
#[test]
fn config_is_taken_after_any_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("postsift.toml");
    std::fs::write(
        &cfg,
        format!(
            "[quarantine]\ndir = \"{0}/q\"\n[greylist]\nstore = \"{0}/greylist.db\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    for args in [
        vec!["check-config", "--config", cfg],
        vec!["--config", cfg, "check-config"],
        vec!["quarantine", "list", "--config", cfg],
        vec!["quarantine", "--config", cfg, "list"],
        vec!["--config", cfg, "quarantine", "list"],
        vec!["greylist", "list", "--config", cfg],
    ] {
        let (code, text) = postsift(&args);
        assert_eq!(code, 0, "{args:?}: {text}");
        assert!(!text.contains("unexpected argument"), "{args:?}: {text}");
    }
    // The file is really read wherever the flag stands: a bad one is refused, naming the key.
    std::fs::write(dir.path().join("bad.toml"), "[spam]\nkill_levle = 5\n").unwrap();
    let bad = dir.path().join("bad.toml");
    let (code, text) = postsift(&["quarantine", "list", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 64, "{text}");
    assert!(text.contains("kill_levle"), "{text}");
    // A release with the flag last gets as far as looking the id up.
    let (code, text) = postsift(&["quarantine", "release", "nosuchid", "--config", cfg]);
    assert_eq!(code, 64, "{text}");
    assert!(!text.contains("unexpected argument"), "{text}");
}
