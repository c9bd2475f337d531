# bench/outage.sh — `bench/run outage`, sourced by bench/run inside its namespace (its daemons,
# LOADGEN, POSTSIFT_BIN, stop_pid, wait_listen are used as they are).
#
# For each peer of OUT_PEERS (dns, clamd, spamd, rspamd, reinject), one postsift in noscan mode
# plus that peer alone, three runs of OUT_MSGS synthetic 4 KiB messages at OUT_CONC sessions:
#   off      the same postsift without that peer (dns: [auth] off; reinject: the sink healthy)
#   hung     the peer's endpoint is bench/hung.py: accepts (TCP) / reads (UDP), never answers
#   refused  the peer's real endpoint with the real peer stopped (connection refused)
# then the real peer is started again and the time from its first answer (its own ping) to
# postsift_peer_up{peer} = 1 is measured, and OUT_AFTER more messages must all be delivered.
# Every timeout of the peer is OUT_TIMEOUT s, [health] down_after OUT_DOWN_AFTER, the probe
# every OUT_PROBE s. Report: bench/results/<ts>-outage.md (and latest-outage.md).

OUT_PEERS=${OUT_PEERS:-"dns clamd spamd rspamd reinject"}
OUT_CONC=${OUT_CONC:-16}
OUT_SIZE=${OUT_SIZE:-4096}
OUT_TIMEOUT=${OUT_TIMEOUT:-5}
OUT_PROBE=${OUT_PROBE:-2}
OUT_DOWN_AFTER=${OUT_DOWN_AFTER:-3}
if [ "$QUICK" = 1 ]; then : "${OUT_MSGS:=600}" "${OUT_AFTER:=50}"; fi
OUT_MSGS=${OUT_MSGS:-2000}
OUT_AFTER=${OUT_AFTER:-100}
HUNG_PORT=10090
OUT_METRICS=127.0.0.1:19726
OUT_XF="ADDR=192.0.2.10 HELO=mx.example.com"

start_hung() {
  python3 "$BENCH_DIR/hung.py" $HUNG_PORT > "$WORK/hung.out" 2>&1 &
  HUNG_PID=$!; STARTED+=("hung $HUNG_PID")
  wait_listen 127.0.0.1:$HUNG_PORT 10 $HUNG_PID || die "bench/hung.py did not start"
}

# outage_conf PEER VARIANT (off|hung|real) > file
outage_conf() {
  local peer=$1 v=$2 ep auth="[auth]
enabled = false" clamd='[]' spam="[spamd]
endpoints = []" engine=spamd to=127.0.0.1:$SINK_PORT
  case $v in hung) ep=127.0.0.1:$HUNG_PORT ;; esac
  case $peer:$v in
    dns:off) ;;
    dns:*) [ $v = real ] && ep=127.0.0.1:$UNBOUND_PORT
      auth="[auth]
enabled = true
timeout = $OUT_TIMEOUT

[dns]
servers = [\"$ep\"]
timeout = $OUT_TIMEOUT
attempts = 1" ;;
    clamd:off) ;;
    clamd:*) [ $v = real ] && ep=$WORK/clamd/clamd.sock; clamd="[\"$ep\"]" ;;
    spamd:off) ;;
    spamd:*) [ $v = real ] && ep=127.0.0.1:$SPAMD_PORT
      spam="[spamd]
endpoints = [\"$ep\"]
timeout = $OUT_TIMEOUT
io_timeout = $OUT_TIMEOUT" ;;
    rspamd:off) ;;
    rspamd:*) [ $v = real ] && ep=127.0.0.1:$RSPAMD_PORT; engine=rspamd
      spam="[rspamd]
endpoints = [\"$ep\"]
timeout = $OUT_TIMEOUT" ;;
    reinject:hung) to=$ep ;;
  esac
  cat <<EOF
# bench/run outage: $peer $v
[server]
listen = ["$PS_ADDR"]
hostname = "filter.$HELO"
max_sessions = 64
spool_dir = "$WORK/postsift/spool"

[reinject]
to = "$to"
connect_timeout = $OUT_TIMEOUT
command_timeout = $OUT_TIMEOUT
data_timeout = $OUT_TIMEOUT

[clamd]
endpoints = $clamd
timeout = $OUT_TIMEOUT
connect_timeout = $OUT_TIMEOUT

$spam

[spam]
engine = "$engine"

$auth

[metrics]
listen = "$OUT_METRICS"
probe_interval = $OUT_PROBE

[health]
down_after = $OUT_DOWN_AFTER
probe_timeout = 1

[log]
level = "warn"
EOF
}

outage_start() {  # outage_start PEER VARIANT
  local f="$WORK/postsift/outage-$1-$2.toml"
  outage_conf "$1" "$2" > "$f"
  "$POSTSIFT_BIN" check-config --config "$f" 2>&1 | grep -v '^ok' | sed 's/^/  check-config: /' >&2
  wait_free "$PS_ADDR" || die "$PS_ADDR still busy"
  (umask 0077; exec "${PS_RUN_AS[@]}" "$POSTSIFT_BIN" run --config "$f") >> "$WORK/postsift/outage-$1-$2.log" 2>&1 &
  PS_PID=$!; STARTED+=("postsift $PS_PID")
  wait_listen "$PS_ADDR" 30 $PS_PID || die "postsift did not start: $(tail -n 5 "$WORK/postsift/outage-$1-$2.log")"
}
outage_stop() { stop_pid "$PS_PID" 30; forget postsift; PS_PID=""; }

peer_up() {  # peer_up PEER: postsift_peer_up{peer} now (empty if not scraped)
  curl -s --max-time 2 "http://$OUT_METRICS/metrics" 2>/dev/null |
    sed -n "s/^postsift_peer_up{peer=\"$1\"} //p"
}

# out_run PEER VARIANT N: one loadgen run; appends a row to $WORK/outage.csv:
# peer,variant,count,ok,fail,aborted,wall_s,answered_per_s,first_max_ms,max_ms,sink_delta,steady_per_s
# (steady: the messages that started after the first wave -- the first OUT_CONC -- was answered,
# per second of their span: the throughput while the peer is out, once it was marked down)
out_run() {
  local peer=$1 v=$2 n=$3 c0 out pm="$WORK/outage-$1-$2.permsg.csv" xf=()
  [ "$peer" = dns ] && xf=(--xforward "$OUT_XF")
  c0=$(sink_count)
  out=$("$LOADGEN" --target "$PS_ADDR" --conc "$OUT_CONC" --count "$n" --size "$OUT_SIZE" \
          --from $FROM --to $RCPT --helo $HELO --timeout 120 --per-msg "$pm" "${xf[@]}" 2> "$WORK/loadgen.err")
  local ok; ok=$(echo "$out" | sed -n 's/.* ok=\([0-9]*\).*/\1/p')
  wait_sink $((c0 + ${ok:-0})) 15
  sleep 0.3
  local delta=$(( $(sink_count) - c0 ))
  # Latency of every message, answered or not (session time when no final reply), ms.
  local first all
  first=$(awk -F, -v c="$OUT_CONC" 'NR > 1 && $1 <= c { l = ($4 == "" ? $5 : $4); if (l + 0 > m) m = l + 0 } END { printf "%.0f", m }' "$pm")
  all=$(awk -F, 'NR > 1 { l = ($4 == "" ? $5 : $4); if (l + 0 > m) m = l + 0 } END { printf "%.0f", m }' "$pm")
  local steady
  steady=$(awk -F, -v c="$OUT_CONC" 'NR > 1 { l = ($4 == "" ? $5 : $4) + 0; s[NR] = $3 + 0; e[NR] = $3 + l
      if ($1 <= c && $3 + l > t1) t1 = $3 + l }
    END { for (i in s) if (s[i] >= t1) { n++; if (e[i] > last) last = e[i] }
          if (n > 0 && last > t1) printf "%.1f", n / (last - t1) * 1000; else printf "" }' "$pm")
  echo "$out" | awk -v p="$peer" -v vv="$v" -v first="$first" -v all="$all" -v d="$delta" -v st="$steady" '{
    for (i = 1; i <= NF; i++) { split($i, kv, "="); x[kv[1]] = kv[2] }
    ans = x["ok"] + x["fail"]
    printf "%s,%s,%d,%d,%d,%d,%s,%.1f,%s,%s,%d,%s\n", p, vv, x["count"], x["ok"], x["fail"], x["aborted"], x["wall_s"],
      (x["wall_s"] > 0 ? ans / x["wall_s"] : 0), first, all, d, st }' >> "$WORK/outage.csv"
  tail -1 "$WORK/outage.csv" | awk -F, '{printf "    %s %s: %d msgs, %d ok, %d 4xx/5xx, %d aborted, %.1f answered/s (%s after the first wave), first wave max %s ms, max %s ms, sink +%d\n", $1, $2, $3, $4, $5, $6, $8, $12, $9, $10, $11}' >&2
}

out_run_one() {  # the half-open trial: one message, its reply code logged
  local xf=() code
  [ "$1" = dns ] && xf=(--xforward "$OUT_XF")
  "$LOADGEN" --target "$PS_ADDR" --conc 1 --count 1 --size "$OUT_SIZE" --from $FROM --to $RCPT --helo $HELO \
    --timeout 120 --per-msg "$WORK/outage-$1-trial.csv" "${xf[@]}" > /dev/null 2>&1
  code=$(awk -F, 'NR == 2 {print $6}' "$WORK/outage-$1-trial.csv")
  echo "$1,$code" >> "$WORK/outage-trial.csv"
  log "    $1 half-open trial message: $code"
}

peer_stop() {
  case $1 in
    dns) stop_pid "$UNBOUND_PID" 10; forget unbound; UNBOUND_PID="" ;;
    clamd) stop_pid "$CLAMD_PID" 30; forget clamd; CLAMD_PID="" ;;
    spamd) stop_pid "$SPAMD_PID" 30; forget spamd; SPAMD_PID="" ;;
    rspamd) stop_pid "$RSPAMD_PID" 30; forget rspamd; RSPAMD_PID="" ;;
    reinject) SINK_BASE=$(( SINK_BASE + $(sink_count) )); stop_pid "$SINK_PID" 10; forget smtp-sink; SINK_PID="" ;;
  esac
}
peer_start() {
  case $1 in
    dns) start_unbound ;;
    clamd) start_clamd ;;
    spamd) start_spamd ;;
    rspamd) start_rspamd ;;
    reinject) start_sink ;;
  esac
}

outage_phase() {
  log "== outage: peers $OUT_PEERS; $OUT_MSGS msgs of $OUT_SIZE bytes at $OUT_CONC sessions per run; timeouts $OUT_TIMEOUT s, down_after $OUT_DOWN_AFTER, probe every $OUT_PROBE s"
  echo "peer,variant,count,ok,fail,aborted,wall_s,answered_per_s,first_max_ms,max_ms,sink_delta,steady_per_s" > "$WORK/outage.csv"
  : > "$WORK/outage-recovery.csv"; : > "$WORK/outage-trial.csv"
  SINK_BASE=0
  start_hung
  local peer t0 t1 up i
  for peer in $OUT_PEERS; do
    log "  $peer"
    case $peer in dns|clamd|spamd|rspamd) [ "$peer" = dns ] && { mkdir -p "$WORK/auth/unbound"; [ -s "$WORK/auth/zone.txt" ] || : > "$WORK/auth/zone.txt"; }; peer_start "$peer" ;; esac
    for v in off hung; do
      outage_start "$peer" "$v"; out_run "$peer" "$v" "$OUT_MSGS"; outage_stop
    done
    # refused: the real endpoint, the real peer stopped; then it comes back.
    outage_start "$peer" real
    peer_stop "$peer"
    out_run "$peer" refused "$OUT_MSGS"
    up=$(peer_up "$peer")
    peer_start "$peer"
    t0=$EPOCHREALTIME
    for ((i = 0; i < 600; i++)); do [ "$(peer_up "$peer")" = 1 ] && break; sleep 0.05; done
    t1=$EPOCHREALTIME
    # Half-open: one message is the trial (others meanwhile take the failure path), then all.
    out_run_one "$peer"
    out_run "$peer" after-restart "$OUT_AFTER"
    awk -v p="$peer" -v a="$t0" -v b="$t1" -v up="$up" -v probe="$OUT_PROBE" \
      'BEGIN { printf "%s,%s,%.2f,%d\n", p, up, b - a, probe }' >> "$WORK/outage-recovery.csv"
    log "    $peer back: peer_up was ${up:-?} during the outage, 1 again $(tail -1 "$WORK/outage-recovery.csv" | cut -d, -f3) s after the peer answered its own ping (probe every $OUT_PROBE s)"
    outage_stop
    case $peer in dns|spamd|rspamd) peer_stop "$peer" ;; esac
  done
  stop_pid "$HUNG_PID" 5; forget hung
  outage_report
}

outage_report() {
  local md="$BENCH_DIR/results/$TS-outage.md"
  python3 - "$WORK/outage.csv" "$WORK/outage-recovery.csv" "$OUT_TIMEOUT" "$OUT_PROBE" "$OUT_DOWN_AFTER" "$META" > "$md" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
rec = {r[0]: r for r in csv.reader(open(sys.argv[2]))}
timeout, probe, down = float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
meta = dict(l.strip().split("=", 1) for l in open(sys.argv[6]) if "=" in l)
print("# bench/run outage\n")
print(f"postsift {meta.get('postsift_rev','?')}, {meta.get('nproc','?')} CPUs, {meta.get('ts','')}. "
      f"Every peer timeout {timeout:g} s, `[health] down_after = {down}`, probe every {probe:g} s; "
      "synthetic 4 KiB messages, 16 sessions, noscan plus the one peer.\n")
print("Targets: during a total outage (hung or refused) throughput (answered messages/s) >= 50 % of the "
      f"run without the peer; the first wave of messages waits at most one timeout ({timeout:g} s); "
      "every message answered, nothing lost (sink count = 2xx count); after the real peer is "
      f"restarted, `postsift_peer_up` is 1 again within one probe interval ({probe:g} s).\n")
print("`answered/s`: the whole run, its first wave waiting one timeout included; `after wave 1`: the "
      "messages that started once the first wave was answered (the peer marked down), per second of their "
      "span -- the throughput while the peer stays out, which the 50 % target is about.\n")
print("| peer | run | msgs | 2xx | 4xx/5xx | aborted | answered/s | after wave 1 /s | vs without | first wave max ms | max ms | sink | targets |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
base = {r["peer"]: float(r["answered_per_s"]) for r in rows if r["variant"] == "off"}
for r in rows:
    b = base.get(r["peer"], 0)
    steady = float(r["steady_per_s"] or 0)
    ratio = (steady if r["variant"] in ("hung", "refused") else float(r["answered_per_s"])) / b * 100 if b else 0
    ok = []
    if r["variant"] in ("hung", "refused"):
        ok.append("tput " + ("ok" if ratio >= 50 else "MISSED"))
        ok.append("wait " + ("ok" if float(r["first_max_ms"]) <= timeout * 1000 + 1000 else "MISSED"))
    answered = int(r["ok"]) + int(r["fail"]) == int(r["count"]) and int(r["aborted"]) == 0
    ok.append("answered " + ("ok" if answered else "MISSED"))
    ok.append("lost " + ("none" if int(r["sink_delta"]) == int(r["ok"]) else "MISMATCH"))
    print(f"| {r['peer']} | {r['variant']} | {r['count']} | {r['ok']} | {r['fail']} | {r['aborted']} | "
          f"{float(r['answered_per_s']):.1f} | {r['steady_per_s'] or '-'} | {ratio:.0f} % | {r['first_max_ms']} | {r['max_ms']} | {r['sink_delta']} | {', '.join(ok)} |")
print("\n| peer | peer_up during the outage | back after the peer's own ping (s) | probe interval (s) | target |")
print("|---|---|---|---|---|")
for p, r in rec.items():
    print(f"| {p} | {r[1] or '?'} | {r[2]} | {r[3]} | {'ok' if float(r[2]) <= float(r[3]) + 1 else 'MISSED'} |")
PY
  cp "$md" "$BENCH_DIR/results/latest-outage.md"
  cp "$WORK/outage.csv" "$BENCH_DIR/results/$TS-outage.csv"
  cat "$md" >&2
}
