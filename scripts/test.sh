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

NS="postsift-test-$$"
cleanup() {
  # Whatever a test left running in the namespace goes with it.
  for pid in $(ip netns pids "$NS" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" cargo test --offline "$@"
