# bench/sql.sh — `bench/run sql`, sourced by bench/run inside its namespace (its sink, LOADGEN,
# POSTSIFT_BIN, ps_cpu, stop_pid, wait_listen are used as they are).
#
# The cost of the SQL message log (`[sql] log = true`, issue 20): a private PostgreSQL (Debian's,
# initdb in a temp dir, 127.0.0.1:$SQL_PG_PORT, fsync off as a test server), amavis's schema by
# `postsift sql init`, and one postsift in noscan mode started twice per repeat — `sql-off`
# (no [sql]) and `sql-on` (the log into that database) — alternating, each fed SQL_MSGS
# synthetic SQL_SIZE-byte messages at SQL_CONC sessions. Per run: messages/s, postsift's own CPU
# per message (user + system ticks of its process around the run), and for sql-on the rows in
# msgs once the backlog is written (every message logged once). Targets: CPU per message at most
# +0.3 ms with the log on, throughput loss at most 10 %. PostgreSQL shares the machine's CPUs, as
# it does at a site that runs it beside the filter; SQL_PG_CPUS=1 with bench/run under
# `taskset -c 0` keeps them apart (postsift's own part of the loss). Report:
# bench/results/<ts>-sql.md (and latest-sql.md).

SQL_CONC=${SQL_CONC:-16}
SQL_SIZE=${SQL_SIZE:-4096}
if [ "$QUICK" = 1 ]; then : "${SQL_MSGS:=600}" "${SQL_REPEATS:=1}"; fi
SQL_MSGS=${SQL_MSGS:-3000}
SQL_REPEATS=${SQL_REPEATS:-3}
SQL_PG_PORT=${SQL_PG_PORT:-15432}
SQL_METRICS=${SQL_METRICS:-127.0.0.1:19726}   # /metrics of the sql-quar postsift
SQL_QUAR_MSGS=${SQL_QUAR_MSGS:-$SQL_MSGS}
SQL_PG_PID=""
SQL_PG_CPUS=${SQL_PG_CPUS:-}   # e.g. 1: PostgreSQL pinned to these CPUs (taskset -c); run bench/run itself under `taskset -c 0` to keep the rest off them
SQL_LOGGED=0   # messages the sql-on runs have had accepted so far (warm-ups included): msgs rows expected

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

start_pg() {
  local bin; bin=$(pg_bin)
  [ -x "$bin/postgres" ] || die "PostgreSQL is not installed (apt-get install postgresql)"
  SQL_PG_DIR=$(mktemp -d /tmp/postsift-bench-pg.XXXXXX)
  chown postgres: "$SQL_PG_DIR"; chmod 700 "$SQL_PG_DIR"
  runuser -u postgres -- "$bin/initdb" -D "$SQL_PG_DIR/data" -U postgres -A trust --no-sync -E UTF8 \
    --locale=C.UTF-8 > "$WORK/pg-initdb.log" 2>&1 || die "initdb failed: $(tail -3 "$WORK/pg-initdb.log")"
  ${SQL_PG_CPUS:+taskset -c "$SQL_PG_CPUS"} runuser -u postgres -- "$bin/postgres" -D "$SQL_PG_DIR/data" -h 127.0.0.1 -p $SQL_PG_PORT \
    -c unix_socket_directories= -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
    > "$WORK/pg.log" 2>&1 &
  SQL_PG_PID=$!; STARTED+=("postgres $SQL_PG_PID")
  wait_listen 127.0.0.1:$SQL_PG_PORT 60 $SQL_PG_PID || die "postgres did not start: $(tail -3 "$WORK/pg.log")"
  local i
  for ((i = 0; i < 100; i++)); do "$bin/pg_isready" -q -h 127.0.0.1 -p $SQL_PG_PORT && break; sleep 0.1; done
  "$bin/psql" -X -q -h 127.0.0.1 -p $SQL_PG_PORT -U postgres -c "CREATE DATABASE amavis" ||
    die "CREATE DATABASE failed"
  log "postgres up (pid $SQL_PG_PID, 127.0.0.1:$SQL_PG_PORT, $("$bin/postgres" --version)${SQL_PG_CPUS:+, CPUs $SQL_PG_CPUS}; bench/run on CPUs $(taskset -pc $$ | sed 's/.*: //'))"
}
stop_pg() {
  [ -z "$SQL_PG_PID" ] && return 0
  runuser -u postgres -- "$(pg_bin)/pg_ctl" stop -D "$SQL_PG_DIR/data" -m fast -w -t 30 >/dev/null 2>&1
  stop_pid "$SQL_PG_PID" 10; forget postgres; SQL_PG_PID=""
  rm -rf "$SQL_PG_DIR"
}
# Ticks of CPU PostgreSQL used: the postmaster (with its reaped children) and its live children
# (the pool's backends stay connected through a run).
pg_cpu() {  # (SQL_PG_PID is runuser's; the postmaster's pid is in its data directory)
  local t=0 st p pm
  { read -r pm < "$SQL_PG_DIR/data/postmaster.pid"; } 2>/dev/null || { echo 0; return; }
  { read -r st < "/proc/$pm/stat"; } 2>/dev/null || { echo 0; return; }
  st=${st##*) }; set -- $st; t=$(( ${12} + ${13} + ${14} + ${15} ))
  for p in $(ps --ppid "$pm" -o pid= 2>/dev/null); do
    { read -r st < "/proc/$p/stat"; } 2>/dev/null || continue
    st=${st##*) }; set -- $st; t=$(( t + ${12} + ${13} ))
  done
  echo $t
}
sql_rows() { "$(pg_bin)/psql" -X -At -h 127.0.0.1 -p $SQL_PG_PORT -U postgres -d amavis -c "SELECT count(*) FROM msgs"; }

sql_conf() {  # sql_conf on|off|quar > file
  cat <<EOF
# bench/run sql: $1
[server]
listen = ["$PS_ADDR"]
hostname = "filter.$HELO"
max_sessions = 64
spool_dir = "$WORK/postsift/spool"

[reinject]
to = "127.0.0.1:$SINK_PORT"

[clamd]
endpoints = []

[spamd]
endpoints = []

[auth]
enabled = false

[metrics]
listen = "$([ "$1" = quar ] && echo "$SQL_METRICS")"

[log]
level = "warn"
EOF
  [ "$1" = on ] && cat <<EOF

[sql]
url = "postgresql://postgres@127.0.0.1:$SQL_PG_PORT/amavis"
log = true
EOF
  [ "$1" = quar ] && cat <<EOF

[quarantine]
store = "sql"

[banned]
action = "quarantine"

[sql]
url = "postgresql://postgres@127.0.0.1:$SQL_PG_PORT/amavis"
EOF
  return 0
}

# A message the default [banned] rules quarantine (invoice.pdf.exe), padded to about SQL_SIZE.
sql_banned_eml() {
  printf 'From: <%s>\r\nTo: <%s>\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n' "$FROM" "$RCPT"
  printf 'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n'
  head -c $((SQL_SIZE * 3 / 4)) /dev/zero | tr '\0' 'x' | fold -w 76 | sed 's/$/\r/'
  printf '\r\n--b1\r\nContent-Type: application/octet-stream; name="invoice.pdf.exe"\r\n'
  printf 'Content-Disposition: attachment; filename="invoice.pdf.exe"\r\n'
  printf 'Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAA==\r\n--b1--\r\n'
}

# The SQL quarantine store's time: SQL_QUAR_MSGS banned messages quarantined into the database
# (`[quarantine] store = "sql"`; each 250 waits for the commit), the store's latency from
# postsift's own histogram (postsift_sql_duration_seconds{kind="quarantine_store"}: p50/p99
# interpolated in its buckets as Prometheus's histogram_quantile does, and the mean) and the
# client's p99 per message (loadgen).
sql_quar_run() {
  local f="$WORK/postsift/sql-quar.toml" eml="$WORK/sql-banned.eml" out
  sql_conf quar > "$f"; sql_banned_eml > "$eml"
  "$POSTSIFT_BIN" check-config --config "$f" 2>&1 | grep -v '^configuration ok' | sed 's/^/  check-config: /' >&2
  wait_free "$PS_ADDR" || die "$PS_ADDR still busy"
  "$POSTSIFT_BIN" run --config "$f" >> "$WORK/postsift/sql-quar.log" 2>&1 &
  PS_PID=$!; STARTED+=("postsift $PS_PID")
  wait_listen "$PS_ADDR" 30 $PS_PID || die "postsift did not start: $(tail -n 5 "$WORK/postsift/sql-quar.log")"
  out=$("$LOADGEN" --target "$PS_ADDR" --conc "$SQL_CONC" --count "$SQL_QUAR_MSGS" --message "$eml" \
          --from $FROM --to $RCPT --helo $HELO --timeout 120 2> "$WORK/loadgen.err")
  curl -s "http://$SQL_METRICS/metrics" > "$WORK/sql-quar.metrics"
  stop_pid "$PS_PID" 30; forget postsift; PS_PID=""
  echo "$out" > "$WORK/sql-quar.loadgen"
  log "    sql-quar: $out"
}

sql_run() {  # sql_run on|off REPEAT
  local v=$1 r=$2 f="$WORK/postsift/sql-$1.toml" c0 t0 t1 out rows0 rows1 i ok
  sql_conf "$v" > "$f"
  "$POSTSIFT_BIN" check-config --config "$f" 2>&1 | grep -v '^configuration ok' | sed 's/^/  check-config: /' >&2
  wait_free "$PS_ADDR" || die "$PS_ADDR still busy"
  "$POSTSIFT_BIN" run --config "$f" >> "$WORK/postsift/sql-$v.log" 2>&1 &
  PS_PID=$!; STARTED+=("postsift $PS_PID")
  wait_listen "$PS_ADDR" 30 $PS_PID || die "postsift did not start: $(tail -n 5 "$WORK/postsift/sql-$v.log")"
  # warm-up (connections, the pool, the page cache), not measured
  out=$("$LOADGEN" --target "$PS_ADDR" --conc "$SQL_CONC" --count 50 --size "$SQL_SIZE" \
    --from $FROM --to $RCPT --helo $HELO --timeout 120 2>/dev/null)
  ok=$(echo "$out" | sed -n 's/.* ok=\([0-9]*\).*/\1/p')
  rows0=0
  if [ "$v" = on ]; then
    # the warm-up's records written before the measured run starts
    SQL_LOGGED=$((SQL_LOGGED + ${ok:-0}))
    for ((i = 0; i < 600; i++)); do rows0=$(sql_rows); [ "$rows0" -ge "$SQL_LOGGED" ] && break; sleep 0.1; done
  fi
  c0=$(sink_count); t0=$(ps_cpu "$PS_PID"); local g0; g0=$(pg_cpu)
  out=$("$LOADGEN" --target "$PS_ADDR" --conc "$SQL_CONC" --count "$SQL_MSGS" --size "$SQL_SIZE" \
          --from $FROM --to $RCPT --helo $HELO --timeout 120 2> "$WORK/loadgen.err")
  t1=$(ps_cpu "$PS_PID")
  ok=$(echo "$out" | sed -n 's/.* ok=\([0-9]*\).*/\1/p')
  wait_sink $((c0 + ${ok:-0})) 30
  rows1=$rows0
  if [ "$v" = on ]; then
    SQL_LOGGED=$((SQL_LOGGED + ${ok:-0}))
    # the log's backlog written (its CPU is after t1: counted below as the tail)
    for ((i = 0; i < 600; i++)); do
      rows1=$(sql_rows); [ "$rows1" -ge $((rows0 + ${ok:-0})) ] && break; sleep 0.1
    done
  fi
  local t2 g2; t2=$(ps_cpu "$PS_PID"); g2=$(pg_cpu)
  stop_pid "$PS_PID" 30; forget postsift; PS_PID=""
  echo "$out" | awk -v v="$v" -v r="$r" -v a="$t0" -v b="$t2" -v hz="$CLK_TCK" -v d=$(( $(sink_count) - c0 )) \
      -v rows=$((rows1 - rows0)) -v pg=$((g2 - g0)) '{
    for (i = 1; i <= NF; i++) { split($i, kv, "="); x[kv[1]] = kv[2] }
    cpu_ms = (b - a) / hz * 1000
    printf "%s,%d,%d,%d,%d,%s,%s,%.3f,%d,%d,%.3f\n", v, r, x["count"], x["ok"], x["fail"], x["wall_s"], x["mps"],
      (x["ok"] > 0 ? cpu_ms / x["ok"] : 0), d, rows, (x["ok"] > 0 ? pg / hz * 1000 / x["ok"] : 0) }' >> "$WORK/sql.csv"
  tail -1 "$WORK/sql.csv" | awk -F, '{printf "    sql-%s #%d: %d msgs, %d ok, %d failed, %s msg/s, %.3f ms CPU/msg, sink +%d, msgs rows +%d, PostgreSQL %.3f ms CPU/msg\n", $1, $2, $3, $4, $5, $7, $8, $9, $10, $11}' >&2
}

sql_phase() {
  log "== sql: PostgreSQL message log on/off, $SQL_REPEATS x $SQL_MSGS msgs of $SQL_SIZE bytes at $SQL_CONC sessions"
  echo "variant,repeat,count,ok,fail,wall_s,mps,cpu_ms_per_msg,sink_delta,rows,pg_cpu_ms_per_msg" > "$WORK/sql.csv"
  start_pg
  sql_conf on > "$WORK/postsift/sql-init.toml"
  "$POSTSIFT_BIN" sql init --config "$WORK/postsift/sql-init.toml" >&2 || die "postsift sql init failed"
  local r
  for ((r = 1; r <= SQL_REPEATS; r++)); do
    sql_run off "$r"
    sql_run on "$r"
  done
  sql_quar_run
  stop_pg
  sql_report
}

sql_report() {
  local md="$BENCH_DIR/results/$TS-sql.md"
  python3 - "$WORK/sql.csv" "$META" "$SQL_CONC" "$SQL_SIZE" "$WORK/sql-quar.metrics" "$WORK/sql-quar.loadgen" \
    "$SQL_PG_CPUS" "$(taskset -pc $$ | sed 's/.*: //')" "$POSTSIFT_BIN" > "$md" <<'PY'
import csv, os, re, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
meta = dict(l.strip().split("=", 1) for l in open(sys.argv[2]) if "=" in l)
conc, size = sys.argv[3], sys.argv[4]
print("# bench/run sql\n")
print(f"postsift {meta.get('postsift_rev','?')}, {meta.get('nproc','?')} CPUs, {meta.get('ts','')}. "
      f"noscan, synthetic {size}-byte messages, {conc} sessions; `sql-on` logs every message into a "
      "private PostgreSQL on the same machine (amavis's schema by `postsift sql init`), `sql-off` has no "
      "[sql]. CPU: postsift's own user + system time from the measured run's start until the log's "
      "backlog is written, per message.\n")
pg_cpus, run_cpus, binary = sys.argv[7], sys.argv[8], sys.argv[9]
if pg_cpus:
    print(f"PostgreSQL pinned to CPU(s) {pg_cpus} (taskset), bench/run (postsift, loadgen, the sink) on "
          f"CPU(s) {run_cpus}: the database does not take the pipeline's CPU, as on a host of its own.\n")
print(f"Binary: `{binary}`.\n")
print("Targets: CPU per message with the log on at most +0.3 ms; throughput loss at most 10 %; every "
      "message logged once (msgs rows = messages accepted).\n")
print("| variant | run | msgs | ok | failed | msg/s | CPU ms/msg | sink | msgs rows | PostgreSQL CPU ms/msg |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| sql-{r['variant']} | {r['repeat']} | {r['count']} | {r['ok']} | {r['fail']} | {float(r['mps']):.1f} | "
          f"{float(r['cpu_ms_per_msg']):.3f} | {r['sink_delta']} | {r['rows'] if r['variant'] == 'on' else '-'} | "
          f"{float(r.get('pg_cpu_ms_per_msg') or 0):.3f} |")
def med(v, k):
    x = [float(r[k]) for r in rows if r["variant"] == v]
    return statistics.median(x) if x else 0.0
off_mps, on_mps = med("off", "mps"), med("on", "mps")
off_cpu, on_cpu = med("off", "cpu_ms_per_msg"), med("on", "cpu_ms_per_msg")
loss = (1 - on_mps / off_mps) * 100 if off_mps else 0
delta = on_cpu - off_cpu
logged = all(int(r["rows"]) == int(r["ok"]) for r in rows if r["variant"] == "on")
def spread(v, k):
    x = [float(r[k]) for r in rows if r["variant"] == v]
    return (min(x), max(x)) if x else (0.0, 0.0)
# Loss per round (each sql-on against the sql-off run just before it): the spread of the pairs.
offs = [float(r["mps"]) for r in rows if r["variant"] == "off"]
ons = [float(r["mps"]) for r in rows if r["variant"] == "on"]
pair_loss = [(1 - b / a) * 100 for a, b in zip(offs, ons) if a]
print(f"\nMedians: sql-off {off_mps:.1f} msg/s, {off_cpu:.3f} ms CPU/msg; sql-on {on_mps:.1f} msg/s, "
      f"{on_cpu:.3f} ms CPU/msg; PostgreSQL's own CPU per message with the log on "
      f"{med('on', 'pg_cpu_ms_per_msg'):.3f} ms (on the same CPUs).\n")
print("| target | measured | result |")
print("|---|---|---|")
print(f"| CPU per message +0.3 ms at most | {delta:+.3f} ms | {'ok' if delta <= 0.3 else 'MISSED'} |")
print(f"| throughput loss 10 % at most | {loss:.1f} % | {'ok' if loss <= 10 else 'MISSED'} |")
print(f"| every message logged once | {'yes' if logged else 'no'} | {'ok' if logged else 'MISSED'} |")
if pair_loss:
    lo, hi = spread("off", "mps"), spread("on", "mps")
    print(f"\nSpread over {len(offs)} rounds: sql-off {lo[0]:.0f}-{lo[1]:.0f} msg/s, sql-on "
          f"{hi[0]:.0f}-{hi[1]:.0f} msg/s; loss per round (sql-on against the sql-off run before it) "
          f"median {statistics.median(pair_loss):.1f} %, from {min(pair_loss):.1f} % to {max(pair_loss):.1f} %.")
# The SQL quarantine store: postsift's histogram of the store's time.
mpath, lpath = sys.argv[5], sys.argv[6]
if os.path.exists(mpath) and os.path.getsize(mpath) > 0:
    buckets, total, count = [], 0.0, 0.0
    for line in open(mpath):
        m = re.match(r'postsift_sql_duration_seconds_bucket\{kind="quarantine_store",le="([^"]+)"\} (\S+)', line)
        if m:
            buckets.append((float("inf") if m[1] == "+Inf" else float(m[1]), float(m[2])))
        m = re.match(r'postsift_sql_duration_seconds_(sum|count)\{kind="quarantine_store"\} (\S+)', line)
        if m and m[1] == "sum":
            total = float(m[2])
        elif m:
            count = float(m[2])
    def quantile(q):
        rank, prev_le, prev_c = q * count, 0.0, 0.0
        for le, c in buckets:
            if c >= rank:
                if le == float("inf"):
                    return prev_le
                return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 1)
            prev_le, prev_c = le, c
        return float("nan")
    lg = dict(kv.split("=", 1) for kv in open(lpath).read().split() if "=" in kv) if os.path.exists(lpath) else {}
    errs = next((l.split()[-1] for l in open(mpath) if l.startswith('postsift_sql_errors_total{kind="quarantine_store"}')), "0")
    if count:
        print(f"\nSQL quarantine store (`sql-quar`: {int(count)} banned messages quarantined into the same "
              f"PostgreSQL, `[quarantine] store = \"sql\"`, {conc} sessions; errors {errs}): the store's time "
              f"(postsift_sql_duration_seconds{{kind=\"quarantine_store\"}}, interpolated in its buckets) p50 "
              f"{quantile(0.5)*1000:.2f} ms, **p99 {quantile(0.99)*1000:.2f} ms**, mean {total/count*1000:.2f} ms; "
              f"the client's time per message (loadgen, connect to the 250 after the commit) p50 "
              f"{lg.get('p50_ms', '?')} ms, p99 {lg.get('p99_ms', '?')} ms, {lg.get('mps', '?')} msg/s.")
PY
  cp "$md" "$BENCH_DIR/results/latest-sql.md"
  cp "$WORK/sql.csv" "$BENCH_DIR/results/$TS-sql.csv"
  cat "$md" >&2
}
