//! The `postsift` command itself: `check-config` names the bad key and exits 64, or warns about
//! unused sections and exits 0; `scan` runs the real scanners on a file and exits by verdict.

use std::process::Command;

use crate::harness;
use crate::util;

/// Runs the binary: (exit code, stdout, stderr).
fn postsift_out(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_postsift"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary: (exit code, stdout and stderr together).
fn postsift(args: &[&str]) -> (i32, String) {
    let (code, out, err) = postsift_out(args);
    (code, format!("{out}{err}"))
}

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
        harness::fixtures()
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
