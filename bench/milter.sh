# bench/milter.sh — `bench/run milter`, sourced by bench/run inside its namespace (its sink, clamd,
# LOADGEN, POSTSIFT_BIN, postsift_conf, ps_cpu, stop_pid, wait_listen, wait_sink are used as they
# are).
#
# The before-queue front end's cost (issue 19): one private Postfix (Debian's binaries, the test
# suite's main.cf/master.cf templates, `postfix -c $WORK/postfix/etc start`, no content_filter)
# relays everything to smtp-sink on 127.0.0.1:$SINK_PORT. It has three smtpd listeners that differ
# only in `smtpd_milters`: `postfix` (none, Postfix alone), `milter-noscan` (a postsift with its
# scanners off) and `milter-clamd` (a postsift with clamd), both postsifts running the whole time
# with `milter_protocol = 6`. Per repeat, the three alternate: MILTER_MSGS synthetic
# MILTER_SIZE-byte messages from smtp-source at MILTER_CONC sessions (throughput: smtp-source's
# start until smtp-sink has them all), then loadgen for the latency (MAIL FROM to the end-of-data
# reply, per message). postsift's CPU per message: the user + system ticks of the postsift behind
# that listener around the run (and clamd's). Target: noscan throughput at least 70 % of Postfix
# alone. MILTER_HYBRID=1 (default) adds two hybrid variants (issue 19's "hybrid" saving): a
# listener whose smtpd calls a clamd postsift's milter and whose content_filter hands the queued
# message to the same postsift's LMTP hop (reinjecting into the template's 10025-style smtpd on
# MILTER_PF_BASE + 1, no milters, then the sink): `hybrid-reuse` (milter.reuse_entries at its
# default: the hop takes the milter's scan) and `hybrid-scan` (reuse_entries = 0: it scans again).
# Report: bench/results/<ts>-milter.md (and latest-milter.md), the runs in <ts>-milter.csv.

MILTER_CONC=${MILTER_CONC:-16}
MILTER_SIZE=${MILTER_SIZE:-4096}
if [ "$QUICK" = 1 ]; then : "${MILTER_MSGS:=600}" "${MILTER_REPEATS:=2}"; fi
MILTER_MSGS=${MILTER_MSGS:-3000}
MILTER_REPEATS=${MILTER_REPEATS:-3}
MILTER_WARMUP=${MILTER_WARMUP:-50}
# Postfix's listeners (127.0.0.1): alone, with the noscan milter, with the clamd milter; the
# template's reinjection smtpd (unused here) on MILTER_PF_BASE + 1.
MILTER_PF_BASE=${MILTER_PF_BASE:-10030}
PF_ALONE=127.0.0.1:$MILTER_PF_BASE
PF_NOSCAN=127.0.0.1:$((MILTER_PF_BASE + 2))
PF_CLAMD=127.0.0.1:$((MILTER_PF_BASE + 3))
# The two postsifts: their milter listeners, and the SMTP listeners postsift always has (unused)
MILTER_NOSCAN=127.0.0.1:10040
MILTER_CLAMD=127.0.0.1:10041
PSM_NOSCAN_SMTP=127.0.0.11:10024
PSM_CLAMD_SMTP=127.0.0.12:10024
PSM_NOSCAN_PID=""; PSM_CLAMD_PID=""; PF_MASTER=""
MILTER_HYBRID=${MILTER_HYBRID:-1}
# The hybrid variants: Postfix listener, milter, the postsift's LMTP hop (content_filter)
PF_HREUSE=127.0.0.1:$((MILTER_PF_BASE + 4))
PF_HSCAN=127.0.0.1:$((MILTER_PF_BASE + 5))
MILTER_HREUSE=127.0.0.1:10042
MILTER_HSCAN=127.0.0.1:10043
PSM_HREUSE_SMTP=127.0.0.13:10024
PSM_HSCAN_SMTP=127.0.0.14:10024
PSM_HREUSE_PID=""; PSM_HSCAN_PID=""
milter_variants() { echo "postfix milter-noscan milter-clamd$([ "$MILTER_HYBRID" = 1 ] && echo " hybrid-reuse hybrid-scan")"; }

pf_cmd() { postfix -c "$WORK/postfix/etc" "$@"; }

start_bench_postfix() {
  local d="$WORK/postfix" tpl="$ROOT/tests/fixtures/postfix"
  mkdir -p "$d/etc" "$d/queue"; chmod 755 "$d" "$d/etc" "$d/queue"
  sed -e "s|{{DIR}}|$d|g" -e "s|{{BASE}}|$WORK|g" -e "s|{{HOSTNAME}}|postfix-bench.localdomain|g" \
      -e "s|{{FILTER}}||g" -e "s|{{FINAL_DEST}}|[127.0.0.1]:$SINK_PORT|g" "$tpl/main.cf" > "$d/etc/main.cf"
  sed -e "s|{{SMTP_PORT}}|$MILTER_PF_BASE|g" -e "s|{{REINJECT_PORT}}|$((MILTER_PF_BASE + 1))|g" \
      "$tpl/master.cf" > "$d/etc/master.cf"
  grep -q '{{' "$d/etc/main.cf" "$d/etc/master.cf" && die "a Postfix template placeholder was left"
  local name addr milter hop
  for name in noscan clamd; do
    if [ $name = noscan ]; then addr=$PF_NOSCAN milter=$MILTER_NOSCAN; else addr=$PF_CLAMD milter=$MILTER_CLAMD; fi
    cat >> "$d/etc/master.cf" <<EOF
$addr inet n -       n       -       -       smtpd
  -o syslog_name=postfix/milter-$name
  -o smtpd_milters=inet:$milter
EOF
  done
  for name in reuse scan; do
    if [ $name = reuse ]; then addr=$PF_HREUSE milter=$MILTER_HREUSE hop=$PSM_HREUSE_SMTP; else addr=$PF_HSCAN milter=$MILTER_HSCAN hop=$PSM_HSCAN_SMTP; fi
    cat >> "$d/etc/master.cf" <<EOF
$addr inet n -       n       -       -       smtpd
  -o syslog_name=postfix/hybrid-$name
  -o smtpd_milters=inet:$milter
  -o content_filter=postsift-lmtp:[${hop%:*}]:${hop##*:}
EOF
  done
  cat >> "$d/etc/main.cf" <<EOF
# bench/run milter: the values README's "Before-queue mode" recommends
milter_protocol = 6
milter_default_action = tempfail
milter_connect_timeout = 10s
milter_command_timeout = 60s
milter_content_timeout = 300s
EOF
  # Postfix rereads a config file younger than a second or two until it is older.
  touch -d '-10 seconds' "$d/etc/main.cf" "$d/etc/master.cf"
  pf_cmd start > "$WORK/postfix-start.out" 2>&1 || die "postfix start: $(cat "$WORK/postfix-start.out"; tail -5 "$d/maillog" 2>/dev/null)"
  PF_MASTER=$(tr -d ' \n' < "$d/queue/pid/master.pid" 2>/dev/null)
  [ -n "$PF_MASTER" ] && STARTED+=("postfix $PF_MASTER")
  local a
  for a in "$PF_ALONE" "$PF_NOSCAN" "$PF_CLAMD" "$PF_HREUSE" "$PF_HSCAN"; do
    wait_listen "$a" 30 "$PF_MASTER" || die "Postfix does not listen on $a: $(tail -5 "$d/maillog")"
  done
  log "postfix up (master $PF_MASTER; $PF_ALONE alone, $PF_NOSCAN -> milter $MILTER_NOSCAN, $PF_CLAMD -> milter $MILTER_CLAMD; $(postconf -d -h mail_version))"
}
stop_bench_postfix() {
  [ -z "$PF_MASTER" ] && return 0
  pf_cmd stop >/dev/null 2>&1
  stop_pid "$PF_MASTER" 30; forget postfix; PF_MASTER=""
}

start_milter_postsift() {  # start_milter_postsift noscan|clamd|hreuse|hscan: sets PSM_<MODE>_PID
  local mode=$1 smtp milter f conf=clamd extra=""
  case $mode in
    noscan) smtp=$PSM_NOSCAN_SMTP milter=$MILTER_NOSCAN conf=noscan ;;
    clamd) smtp=$PSM_CLAMD_SMTP milter=$MILTER_CLAMD ;;
    hreuse) smtp=$PSM_HREUSE_SMTP milter=$MILTER_HREUSE ;;
    hscan) smtp=$PSM_HSCAN_SMTP milter=$MILTER_HSCAN extra="reuse_entries = 0" ;;
  esac
  f="$WORK/postsift/milter-$mode.toml"
  # The hybrids' hop reinjects into Postfix's smtpd without milters, which relays to the sink.
  { postsift_conf "$conf" warn 52428800 "$smtp" |
      sed "s|^to = \"127.0.0.1:$SINK_PORT\"|to = \"127.0.0.1:$((MILTER_PF_BASE + 1))\"|"
    printf '\n[milter]\nlisten = ["%s"]\n%s\n' "$milter" "$extra"; } > "$f"
  "$POSTSIFT_BIN" check-config --config "$f" 2>&1 | grep -v '^configuration ok' | sed 's/^/  check-config: /' >&2
  (umask 0077; exec "${PS_RUN_AS[@]}" "$POSTSIFT_BIN" run --config "$f") >> "$WORK/postsift/milter-$mode.log" 2>&1 &
  local pid=$!; STARTED+=("postsift-milter-$mode $pid")
  wait_listen "$milter" 30 $pid || die "postsift ($mode) did not start: $(tail -n 5 "$WORK/postsift/milter-$mode.log")"
  case $mode in
    noscan) PSM_NOSCAN_PID=$pid ;; clamd) PSM_CLAMD_PID=$pid ;;
    hreuse) PSM_HREUSE_PID=$pid ;; hscan) PSM_HSCAN_PID=$pid ;;
  esac
  log "postsift milter $mode up (pid $pid, milter $milter)"
}

# milter_target VARIANT: sets TARGET (the Postfix listener) and MPID (the postsift behind it)
milter_target() {
  case $1 in
    postfix) TARGET=$PF_ALONE; MPID="" ;;
    milter-noscan) TARGET=$PF_NOSCAN; MPID=$PSM_NOSCAN_PID ;;
    milter-clamd) TARGET=$PF_CLAMD; MPID=$PSM_CLAMD_PID ;;
    hybrid-reuse) TARGET=$PF_HREUSE; MPID=$PSM_HREUSE_PID ;;
    hybrid-scan) TARGET=$PF_HSCAN; MPID=$PSM_HSCAN_PID ;;
  esac
}

milter_run() {  # milter_run VARIANT REPEAT
  local v=$1 r=$2 c0 t0 t1 rc c_a c_b w out ok cnt lat
  milter_target "$v"
  wait_quiet
  # throughput: smtp-source until the sink has every message
  c0=$(sink_count); c_a=$( [ -n "$MPID" ] && ps_cpu "$MPID" || echo 0 )
  local k_a k_b; k_a=$(ps_cpu "$CLAMD_PID")
  FILTER_PID=$MPID; cpu_snap; local snap0=$CPU
  t0=$EPOCHREALTIME
  /usr/sbin/smtp-source -A -s "$MILTER_CONC" -l "$MILTER_SIZE" -m "$MILTER_MSGS" -f $FROM -t $RCPT -M $HELO \
    "$TARGET" > "$WORK/src.err" 2>&1
  rc=$?
  wait_sink $((c0 + MILTER_MSGS)) 120
  t1=$EPOCHREALTIME
  c_b=$( [ -n "$MPID" ] && ps_cpu "$MPID" || echo 0 )
  k_b=$(ps_cpu "$CLAMD_PID")
  cnt=$(( $(sink_count) - c0 ))
  w=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b - a}')
  cpu_snap; local foreign; foreign=$(foreign_pct "$snap0" "$CPU" "$w")
  [ "$rc" != 0 ] && log "    smtp-source rc=$rc: $(sort "$WORK/src.err" | uniq -c | sort -rn | head -2 | tr -s ' \n' ' ')"
  # latency: loadgen, MAIL FROM to the end-of-data reply
  c0=$(sink_count)
  out=$("$LOADGEN" --target "$TARGET" --conc "$MILTER_CONC" --count "$MILTER_MSGS" --size "$MILTER_SIZE" \
          --from $FROM --to $RCPT --helo $HELO --timeout 120 2> "$WORK/loadgen.err")
  ok=$(echo "$out" | sed -n 's/.* ok=\([0-9]*\).*/\1/p')
  wait_sink $((c0 + ${ok:-0})) 120
  lat=$(echo "$out" | awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); x[kv[1]] = kv[2] }
    printf "%s,%s,%s,%s,%s,%s", x["ok"], x["fail"], x["mps"], x["p50_ms"], x["p99_ms"], x["max_ms"] }')
  awk -v v="$v" -v r="$r" -v n="$MILTER_MSGS" -v cnt="$cnt" -v w="$w" -v a="$c_a" -v b="$c_b" -v hz="$CLK_TCK" -v lat="$lat" -v fo="$foreign" -v ka="$k_a" -v kb="$k_b" 'BEGIN{
    d = (cnt > 0 ? cnt : 1)
    printf "%s,%d,%d,%d,%.3f,%.2f,%.3f,%s,%s,%.3f\n", v, r, n, cnt, w, cnt / w, (b - a) / hz * 1000 / d, lat, fo, (kb - ka) / hz * 1000 / d }' >> "$WORK/milter.csv"
  tail -1 "$WORK/milter.csv" | awk -F, '{printf "    %s #%d: %d/%d at the sink, %s msg/s, postsift %.3f ms CPU/msg; loadgen %s ok, %s failed, p50 %s ms, p99 %s ms; clamd %.3f ms CPU/msg; other work %s%%\n", $1, $2, $4, $3, $6, $7, $8, $9, $11, $12, $15, $14}' >&2
}

milter_phase() {
  log "== milter: Postfix alone against Postfix + postsift's milter (noscan, clamd), $MILTER_REPEATS x $MILTER_MSGS msgs of $MILTER_SIZE bytes at $MILTER_CONC sessions"
  echo "variant,repeat,msgs,sink,wall_s,mps,cpu_ms_per_msg,lat_ok,lat_fail,lat_mps,p50_ms,p99_ms,max_ms,foreign_cpu_pct,clamd_cpu_ms_per_msg" > "$WORK/milter.csv"
  start_bench_postfix
  start_milter_postsift noscan
  start_milter_postsift clamd
  if [ "$MILTER_HYBRID" = 1 ]; then start_milter_postsift hreuse; start_milter_postsift hscan; fi
  local v r c0
  for v in $(milter_variants); do
    milter_target "$v"; c0=$(sink_count)
    /usr/sbin/smtp-source -A -s "$MILTER_CONC" -l "$MILTER_SIZE" -m "$MILTER_WARMUP" -f $FROM -t $RCPT -M $HELO "$TARGET" >/dev/null 2>&1
    wait_sink $((c0 + MILTER_WARMUP)) 60
    [ $(( $(sink_count) - c0 )) -ge "$MILTER_WARMUP" ] || die "$v: the warm-up did not reach the sink ($(tail -3 "$WORK/postfix/maillog"))"
  done
  for ((r = 1; r <= MILTER_REPEATS; r++)); do
    for v in $(milter_variants); do milter_run "$v" "$r"; done
  done
  stop_pid "$PSM_NOSCAN_PID" 30; forget postsift-milter-noscan
  stop_pid "$PSM_CLAMD_PID" 30; forget postsift-milter-clamd
  [ -n "$PSM_HREUSE_PID" ] && { stop_pid "$PSM_HREUSE_PID" 30; forget postsift-milter-hreuse; }
  [ -n "$PSM_HSCAN_PID" ] && { stop_pid "$PSM_HSCAN_PID" 30; forget postsift-milter-hscan; }
  stop_bench_postfix
  milter_report
}

milter_report() {
  local md="$BENCH_DIR/results/$TS-milter.md"
  python3 - "$WORK/milter.csv" "$META" "$MILTER_CONC" "$MILTER_SIZE" > "$md" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
meta = dict(l.strip().split("=", 1) for l in open(sys.argv[2]) if "=" in l)
conc, size = sys.argv[3], sys.argv[4]
print("# bench/run milter\n")
print(f"postsift {meta.get('postsift_rev','?')}, {meta.get('nproc','?')} CPUs, {meta.get('ts','')}. "
      f"One private Postfix relaying to smtp-sink, three smtpd listeners alike but for `smtpd_milters`: "
      f"`postfix` (none), `milter-noscan` (postsift, scanners off), `milter-clamd` (postsift with clamd); "
      f"synthetic {size}-byte messages, {conc} sessions, the variants alternating. msg/s: smtp-source's "
      "start until smtp-sink has every message (Postfix queues, then relays). Latency: loadgen, MAIL FROM to "
      "the end-of-data reply (the milter answers before Postfix replies). CPU: postsift's own user + "
      "system time per message.\n")
print("| variant | run | msgs | sink | msg/s | of Postfix alone (same run) | postsift CPU ms/msg | loadgen ok/failed | p50 ms | p99 ms | max ms | other work |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
alone = {r["repeat"]: float(r["mps"]) for r in rows if r["variant"] == "postfix"}
run_ratio = {}
for r in rows:
    a = alone.get(r["repeat"], 0)
    q = float(r["mps"]) / a * 100 if a else 0
    run_ratio.setdefault(r["variant"], []).append(q)
    print(f"| {r['variant']} | {r['repeat']} | {r['msgs']} | {r['sink']} | {float(r['mps']):.1f} | {q:.0f} % | "
          f"{float(r['cpu_ms_per_msg']):.3f} | {r['lat_ok']}/{r['lat_fail']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | "
          f"{r.get('foreign_cpu_pct') or '?'} % |")
def med(v, k):
    x = [float(r[k]) for r in rows if r["variant"] == v and r[k] not in ("", None)]
    return statistics.median(x) if x else 0.0
base, base_p99 = med("postfix", "mps"), med("postfix", "p99_ms")
print("\nMedians:\n")
print("| variant | msg/s | of Postfix alone | p99 ms | added p99 ms | postsift CPU ms/msg | clamd CPU ms/msg |")
print("|---|---|---|---|---|---|---|")
ratios = {}
variants = [v for v in ("postfix", "milter-noscan", "milter-clamd", "hybrid-reuse", "hybrid-scan")
            if any(r["variant"] == v for r in rows)]
for v in variants:
    m, p99, cpu = med(v, "mps"), med(v, "p99_ms"), med(v, "cpu_ms_per_msg")
    ratios[v] = m / base * 100 if base else 0
    added = "-" if v == "postfix" else f"{p99 - base_p99:+.2f}"
    cpu_s = "-" if v == "postfix" else f"{cpu:.3f}"
    print(f"| {v} | {m:.1f} | {ratios[v]:.0f} % | {p99:.2f} | {added} | {cpu_s} | {med(v, 'clamd_cpu_ms_per_msg'):.3f} |")
if "hybrid-reuse" in variants:
    print("\nHybrid (milter + after-queue hop in one postsift, clamd; msg/s at the sink after the hop's "
          "reinjection; latency is the milter's, at SMTP time): the hop reusing the milter's scan "
          f"(`hybrid-reuse`) against scanning again (`hybrid-scan`): postsift {med('hybrid-reuse', 'cpu_ms_per_msg'):.3f} "
          f"against {med('hybrid-scan', 'cpu_ms_per_msg'):.3f} ms CPU/msg, clamd {med('hybrid-reuse', 'clamd_cpu_ms_per_msg'):.3f} "
          f"against {med('hybrid-scan', 'clamd_cpu_ms_per_msg'):.3f} ms CPU/msg, {med('hybrid-reuse', 'mps'):.1f} against "
          f"{med('hybrid-scan', 'mps'):.1f} msg/s.")
paired = statistics.median(run_ratio.get("milter-noscan", [0]))
print(f"\nMedian of the per-run ratios (each milter run against the Postfix-alone run of the same repeat): "
      f"noscan {paired:.0f} %, clamd {statistics.median(run_ratio.get('milter-clamd', [0])):.0f} %.")
ok = paired >= 70
print(f"\n| target | measured | result |\n|---|---|---|\n| noscan throughput at least 70 % of Postfix alone (median per-run ratio) | "
      f"{paired:.0f} % | {'ok' if ok else 'MISSED'} |")
PY
  cp "$md" "$BENCH_DIR/results/latest-milter.md"
  cp "$WORK/milter.csv" "$BENCH_DIR/results/$TS-milter.csv"
  cat "$md" >&2
}
