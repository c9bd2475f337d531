//! Debian's redis-server on 127.0.0.1, no persistence: the shared greylisting store of the
//! two-node tests.

use std::ffi::OsString;
use std::net::SocketAddr;

use super::{free_port, localhost, Peer, PeerProcess};

/// A running redis-server in its temp dir (its `--dir`).
pub struct Redis {
    /// 127.0.0.1:<free port>.
    pub addr: SocketAddr,
    args: Vec<OsString>,
    peer: PeerProcess,
}

impl Redis {
    /// Starts redis-server; blocks until its port accepts connections.
    pub fn start() -> Redis {
        let peer = PeerProcess::new("redis-");
        let port = free_port();
        let mut args: Vec<OsString> = ["--bind", "127.0.0.1", "--port"]
            .into_iter()
            .map(OsString::from)
            .collect();
        args.push(port.to_string().into());
        for a in [
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
        ] {
            args.push(a.into());
        }
        args.push(peer.dir.clone().into());
        let mut redis = Redis {
            addr: localhost(port),
            args,
            peer,
        };
        redis.start_again();
        redis
    }
}

port_peer!(Redis, "redis", "redis-server");
