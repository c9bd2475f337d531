#!/bin/bash
# The main job, on loopback: Postfix → postsift → Postfix with clamd and spamd, and a few test
# messages through it, showing what happened to each. Installs the Debian packages it needs,
# builds, and runs inside a private loopback-only network namespace with private instances of
# every peer (own config, queue directory, sockets and ports in temp dirs): it never touches a
# Postfix, clamd or spamd the machine already runs, nor /etc/postfix. postsift itself runs as an
# ordinary user (nobody, no capabilities, no new privileges), as the package's unit runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/demo.sh: run as root (network namespace, spamd -u nobody, Postfix)" >&2; exit 1; }

./scripts/install-deps.sh
cargo build --release --example demo --bin postsift

conf_dir=$(mktemp -d /tmp/postsift-demo-conf.XXXXXX)
chmod 755 "$conf_dir"
trap 'rm -rf "$conf_dir"' EXIT
export POSTSIFT_DAEMON_CONFIG="$conf_dir/postsift.toml"
export POSTSIFT_DAEMON="umask 0077; exec setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all -- $PWD/target/release/postsift run --config $POSTSIFT_DAEMON_CONFIG"

# In a subshell: in_private_netns sets its own EXIT trap.
(
  . scripts/netns.sh
  in_private_netns postsift-demo ./target/release/examples/demo
)
