//! Issue 17's local surfaces, one regression test per defect, named after what broke: the stores
//! were world-readable (and lockable by anyone), AM.PDP and the metrics port had no connection
//! limit nor read deadline, two configuration traps passed check-config silently, and the DNS
//! caches, the greylist store and Authentication-Results grew without a byte bound.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::capture::Capture;
use crate::harness;
use crate::util::{config, start_filter};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

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

/// The greylisting store and the quarantine were 0644 files in 0755 directories: any local
/// user read every sender, recipient and subject, and a read lock on `-shm` stalled them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_were_world_readable() {
    let tmp = harness::private_dir("surfaces-");
    // The directories are postsift's to create: the test's own 0700 tempdir is not asked about.
    let gl = tmp.path().join("gl/greylist.db");
    let q = tmp.path().join("q");
    let sink = Capture::start().await;
    let port = harness::free_port();
    let toml = config(
        None,
        None,
        sink.addr,
        &format!(
            "[greylist]\nlisten = [\"127.0.0.1:{port}\"]\nstore = \"{}\"\n\
             [quarantine]\ndir = \"{}\"\n[banned]\naction = \"quarantine\"\n",
            gl.display(),
            q.display()
        ),
    );
    let f = start_filter(&toml).await;
    assert!(
        harness::wait_until(std::time::Duration::from_secs(30), || harness::port_open(
            harness::localhost(port)
        )),
        "policy listener"
    );
    assert_eq!(mode(gl.parent().unwrap()), 0o700);
    assert_eq!(mode(&q), 0o700);
    assert_eq!(mode(&q.join("msgs")), 0o700);
    for db in [&gl, &q.join("index.db")] {
        assert_eq!(mode(db), 0o600, "{}", db.display());
        for side in ["-wal", "-shm"] {
            let mut p = db.as_os_str().to_owned();
            p.push(side);
            let p = std::path::PathBuf::from(p);
            if p.exists() {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
            }
        }
    }
    f.stop().await;

    // check-config names an existing store that others may read, and the directory.
    std::fs::set_permissions(&gl, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = tmp.path().join("postsift.toml");
    harness::write_file(&cfg, &toml);
    let (code, out, err) = postsift_out(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!(
            "warning: greylist.store: file {} has mode 0644",
            gl.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "warning: quarantine.dir: directory {} has mode 0755",
            q.display()
        )),
        "{err}"
    );
    harness::finish_dir(Some(tmp));
}
