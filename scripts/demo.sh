#!/bin/bash
# The main job, on loopback: Postfix → postsift → Postfix with clamd and spamd, and a few test
# messages through it, showing what happened to each. Installs the Debian packages it needs,
# builds, and runs inside a private loopback-only network namespace with private instances of
# every peer (own config, queue directory, sockets and ports in temp dirs): it never touches a
# Postfix, clamd or spamd the machine already runs, nor /etc/postfix.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/demo.sh: run as root (network namespace, spamd -u nobody, Postfix)" >&2; exit 1; }

./scripts/install-deps.sh
cargo build --release --example demo

NS="postsift-demo-$$"
cleanup() {
  for pid in $(ip netns pids "$NS" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" ./target/release/examples/demo
