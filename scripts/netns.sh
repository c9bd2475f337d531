# Sourced by scripts/demo.sh and scripts/test.sh: run a command inside a private loopback-only
# network namespace, and take down everything left running in it on exit.
#   in_private_netns NAME-PREFIX COMMAND ARGS...
in_private_netns() {
  NS="$1-$$"; shift
  cleanup_netns() {
    for pid in $(ip netns pids "$NS" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
  }
  trap cleanup_netns EXIT
  ip netns add "$NS"
  ip netns exec "$NS" ip link set lo up
  ip netns exec "$NS" "$@"
}
