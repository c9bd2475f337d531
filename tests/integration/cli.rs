//! The `postsift` command itself: `check-config` names the bad key and exits 64, `scan` runs
//! the real scanners on a file and exits by verdict.

use std::process::Command;

use crate::harness;
use crate::util;

fn postsift(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_postsift"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
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
    let (code, text) = postsift(&["check-config", "--config", example]);
    assert_eq!(code, 0, "{text}");
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
