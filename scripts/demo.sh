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

. scripts/netns.sh
in_private_netns postsift-demo ./target/release/examples/demo
