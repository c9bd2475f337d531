//! File modes of what postsift writes: its stores (the greylisting database, the quarantine
//! and its index, with SQLite's `-wal` and `-shm`) hold every sender, recipient and subject,
//! and a lock taken on `-shm` by another user stalls them; so each directory is created 0700
//! and each file 0600, and an existing one that others may read or write is named in a
//! warning (`check-config`, and the log at start). SQLite creates `-wal` and `-shm` with the
//! mode of the database file, so creating that file 0600 first covers all three. Also the
//! process's descriptor limit, raised at start.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::Config;

/// The process umask for everything postsift creates (set once at start by `postsift run`).
pub const UMASK: u32 = 0o077;

/// Permission bits that make a store or directory someone else's: anything for others, or
/// write for the group (0640/0750 with a group of postsift's own is fine).
const LOOSE: u32 = 0o027;

/// Binds a Unix socket at `path` that is never reachable with other permissions than `mode`
/// and `owner` (uid, gid): it is bound under a temporary name beside `path`, given its mode
/// and owner, and only then renamed into place (a connect resolves the name to the socket's
/// inode, so the rename keeps it). A stale socket at `path` is replaced; any other file there
/// is an error, as a plain bind would give. Binding in place and changing the mode afterwards
/// left a moment in which the socket had the umask's mode.
pub fn bind_unix(
    path: &Path,
    mode: u32,
    owner: (Option<u32>, Option<u32>),
) -> io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".new{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let l = std::os::unix::net::UnixListener::bind(&tmp)?;
    let placed = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if owner.0.is_some() || owner.1.is_some() {
            std::os::unix::fs::chown(&tmp, owner.0, owner.1)?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    l.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(l)
}

/// Sets the process umask to [`UMASK`].
pub fn restrict_umask() {
    // SAFETY: umask only swaps the process's file mode creation mask.
    unsafe {
        libc::umask(UMASK as libc::mode_t);
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, so the mail listeners keep descriptors
/// for themselves whatever the other listeners hold (Debian's default soft limit is 1024).
/// Returns the soft limit now in force.
pub fn raise_nofile_limit() -> libc::rlim_t {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the one struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur < rl.rlim_max {
            let was = rl.rlim_cur;
            rl.rlim_cur = rl.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                return was;
            }
        }
    }
    rl.rlim_cur
}

/// Creates `dir` (and its missing parents) with mode 0700; an existing one is left as it is.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates `file` empty with mode 0600 unless it exists (its content is never touched).
pub fn create_private_file(file: &Path) -> io::Result<()> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// An SQLite database, its `-wal` and `-shm`.
fn with_sqlite_files(db: &Path) -> [PathBuf; 3] {
    let side = |suffix: &str| {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    [db.to_owned(), side("-wal"), side("-shm")]
}

/// What postsift writes, as `(path, config key)`: the stores the configuration uses and their
/// directories.
pub fn written_paths(config: &Config) -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    if config.greylist.enabled() {
        if let crate::greylist::record::Location::Embedded(db) =
            crate::greylist::record::Location::parse(&config.greylist.store)
        {
            if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
                out.push((dir.to_owned(), "greylist.store"));
            }
            out.extend(with_sqlite_files(&db).map(|p| (p, "greylist.store")));
        }
    }
    if config.uses_quarantine() && !config.quarantine.in_sql() {
        let q = &config.quarantine.dir;
        out.push((q.clone(), "quarantine.dir"));
        out.push((q.join("msgs"), "quarantine.dir"));
        out.extend(with_sqlite_files(&q.join("index.db")).map(|p| (p, "quarantine.dir")));
    }
    if let Some(spool) = &config.server.spool_dir {
        out.push((spool.clone(), "server.spool_dir"));
    }
    out
}

/// One warning per existing path of [`written_paths`] that others may read or write.
pub fn warnings(config: &Config) -> Vec<String> {
    written_paths(config)
        .into_iter()
        .filter_map(|(path, key)| {
            let meta = std::fs::symlink_metadata(&path).ok()?;
            let mode = meta.mode() & 0o7777;
            (mode & LOOSE != 0).then(|| {
                let (what, want) = if meta.is_dir() {
                    ("directory", "0700")
                } else {
                    ("file", "0600")
                };
                format!(
                    "{key}: {what} {} has mode {mode:04o}, readable or writable by other users; \
                     chmod {want} it",
                    path.display()
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The greylisting socket was bound, then chmod'ed: a client (the test, Postfix) could
    /// find it with the umask's mode. It is placed only once it has its mode.
    #[tokio::test]
    async fn a_unix_socket_appears_with_its_mode_and_replaces_only_a_socket() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.sock");
        let l = bind_unix(&path, 0o660, (None, None)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o660);
        tokio::net::UnixStream::connect(&path).await.unwrap();
        drop(l);
        // A stale socket is replaced; nothing is left under the temporary name.
        let _l = bind_unix(&path, 0o600, (None, None)).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("policy.sock")]);
        // Any other file is left alone.
        let file = dir.path().join("data");
        std::fs::write(&file, b"x").unwrap();
        assert!(bind_unix(&file, 0o600, (None, None)).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_dir_and_file_are_0700_and_0600_and_existing_ones_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_private_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        let f = dir.join("x.db");
        create_private_file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        std::fs::write(&f, b"kept").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_private_file(&f).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"kept");
        assert_eq!(mode(&f), 0o644);
    }
}
