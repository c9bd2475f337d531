#!/bin/bash
# Runs every test: installs the Debian packages the tests start for real (Postfix, clamd,
# spamd), builds, then runs `cargo test` inside a private loopback-only network namespace, so
# nothing the tests start (spamd, Postfix) can reach another host. Touches no running Postfix,
# clamd or spamd and never /etc/postfix: every peer gets its own temp dir, socket and port.
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: run as root (network namespace, spamd -u nobody, Postfix)" >&2; exit 1; }

./scripts/install-deps.sh
cargo build --tests --bins

. scripts/netns.sh
in_private_netns postsift-test cargo test --offline "$@"
