# bench/hop.sh, sourced by bench/syscalls, bench/callgrind and bench/cpusplit: the default hop's
# two ends on loopback.
#
# hop_start DIR CMD...: starts smtp-sink on 127.0.0.1:10025 ($SINK) and CMD (postsift listening
# on 127.0.0.1:10024, or postsift under a tool) as nobody, the way the package's unit starts it
# as _postsift: no supplementary groups, capabilities or new privileges, umask 0077 ($PS: setpriv
# execs CMD, so it is CMD's pid). Output goes to DIR/sink.out and DIR/ps.log. Returns once both
# ports accept connections, or after HOP_WAIT tenths of a second (default 100).
hop_start() {
  local dir=$1
  shift
  /usr/sbin/smtp-sink -u postfix -c 127.0.0.1:10025 1024 > "$dir/sink.out" 2>&1 & SINK=$!
  (umask 0077; exec setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all -- \
    "$@") > "$dir/ps.log" 2>&1 & PS=$!
  for _ in $(seq "${HOP_WAIT:-100}"); do
    (exec 3<>/dev/tcp/127.0.0.1/10024) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/10025) 2>/dev/null && break
    sleep 0.1
  done
}
