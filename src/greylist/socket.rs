//! The policy service's Unix sockets: bound in place of a stale socket file with
//! `greylist.socket_mode` and `socket_owner`/`socket_group`, so that Postfix's (chrooted)
//! smtpd, running as `postfix`, may connect.

use std::io;

use tokio::net::UnixListener;

use crate::config;

/// Binds a Unix socket (replacing a stale socket file) that has its mode and owner from the
/// moment it can be reached (see [`crate::fsmode::bind_unix`]).
pub fn bind(path: &std::path::Path, g: &config::Greylist) -> io::Result<UnixListener> {
    let uid = g.socket_owner.as_deref().map(user_id).transpose()?;
    let gid = g.socket_group.as_deref().map(group_id).transpose()?;
    crate::fsmode::bind_unix(path, g.socket_mode(), (uid, gid))
}

fn user_id(name: &str) -> io::Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: getpwnam with a NUL-terminated name; the result is read at once, before any
    // other getpw* call.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(io::Error::other(format!(
            "no user {name:?} (greylist.socket_owner)"
        )));
    }
    // SAFETY: non-null result of getpwnam.
    Ok(unsafe { (*pw).pw_uid })
}

fn group_id(name: &str) -> io::Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: as in user_id.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return Err(io::Error::other(format!(
            "no group {name:?} (greylist.socket_group)"
        )));
    }
    // SAFETY: non-null result of getgrnam.
    Ok(unsafe { (*gr).gr_gid })
}
