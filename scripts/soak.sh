#!/bin/bash
# The fault soak (issue 12): N messages (default 10,000) through a real Postfix → postsift (LMTP)
# → Postfix's reinjection smtpd → an LMTP sink, while clamd and spamd are SIGKILLed (spamd also
# SIGSTOPped: hung), the
# reinjection Postfix is stopped, and postsift gets SIGHUP, SIGTERM and SIGKILL, all at random;
# then checks that every message arrived exactly once (EICAR ones discarded) and the queues
# drained, within SECONDS_MAX (default: 120 + 1.2 s a message). Exit 0 only if it passed.
#   scripts/soak.sh [N] [SECONDS_MAX]      (environment knobs: see examples/soak.rs)
# Installs the Debian packages it needs, builds in release mode, and runs inside a private
# loopback-only network namespace with private instances of every peer: it never touches a
# Postfix, clamd or spamd the machine already runs, nor /etc/postfix.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/soak.sh: run as root (network namespace, spamd -u nobody, Postfix)" >&2; exit 1; }

./scripts/install-deps.sh
cargo build --release --bin postsift --example soak

. scripts/netns.sh
in_private_netns postsift-soak ./target/release/examples/soak "$@"
