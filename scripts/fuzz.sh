#!/bin/bash
# Runs the libFuzzer targets in fuzz/ (cargo fuzz), each for SECONDS, at most two at a time,
# and prints per target the executions done and `ok`, or the crash file. Exits 1 if any target
# crashed. Installs cargo-fuzz when missing. cargo-fuzz passes nightly-only flags to rustc;
# RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 60, every target)
# Each target starts from fuzz/corpus/<target>/ (committed seeds; new entries it finds go there
# too, ignored by git) and fuzz/regressions/<target>/ (inputs that once crashed). Crashes land
# in fuzz/artifacts/<target>/, logs in fuzz/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
[[ "$secs" =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 64; }

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

# Seeds too big to commit, made here: a pipelined group of 10,000 RCPTs. libFuzzer's own corpus
# entries are named by their SHA-1; these by what they are.
gen="fuzz/corpus/smtp_session/gen-10000-rcpts"
if [ ! -e "$gen" ]; then
  mkdir -p "$(dirname "$gen")"
  {
    printf 'EHLO postfix.example.com\r\nMAIL FROM:<a@example.org>\r\n'
    for i in $(seq 1 10000); do printf 'RCPT TO:<r%d@example.com>\r\n' "$i"; done
    printf 'DATA\r\nSubject: many\r\n\r\nhi\r\n.\r\nQUIT\r\n'
  } > "$gen"
fi

# Issue 16: message/rfc822 nested 25,000 deep (775 KB; it overflowed mail-parser's stack), and
# 30,000 nested multiparts, for the MIME walk's targets. The smaller hostile shapes are committed
# seeds (issue16-*, written by `cargo run --example hostile -- DIR small`).
for t in mime_walk walk_budget; do
  mkdir -p "fuzz/corpus/$t"
  gen="fuzz/corpus/$t/gen-nested-rfc822-25000"
  if [ ! -e "$gen" ]; then
    { for _ in $(seq 1 25000); do printf 'Content-Type: message/rfc822\r\n\r\n'; done
      printf 'Subject: innermost\r\n\r\nhello\r\n'; } > "$gen"
  fi
  gen="fuzz/corpus/$t/gen-nested-multipart-30000"
  if [ ! -e "$gen" ]; then
    { for i in $(seq 1 30000); do printf 'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' "$i" "$i"; done
      printf 'Content-Type: text/plain\r\n\r\nhello\r\n'
      for i in $(seq 30000 -1 1); do printf -- '--b%d--\r\n' "$i"; done; } > "$gen"
  fi
done

if [ ${#targets[@]} -eq 1 ]; then cargo fuzz build "${targets[0]}"; else cargo fuzz build; fi

mkdir -p fuzz/logs
# One target: `-timeout` catches a single input that runs for long (libFuzzer's own hang check);
# the session target bounds itself too.
run_one() {
  local t="$1" log="fuzz/logs/$1.log"
  local dirs=("fuzz/corpus/$t")
  # Inputs that once crashed are replayed at the start of every run: what was fixed stays fixed.
  if [ -d "fuzz/regressions/$t" ]; then dirs+=("fuzz/regressions/$t"); fi
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  if cargo fuzz run "$t" "${dirs[@]}" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=60 -print_final_stats=1 \
      >"$log" 2>&1; then
    echo "ok"
  else
    echo "crash"
  fi > "fuzz/logs/$t.result"
}

pids=()
for t in "${targets[@]}"; do
  # Two at a time at most: wait for the oldest before starting a third.
  if [ ${#pids[@]} -ge 2 ]; then
    wait "${pids[0]}" || true
    pids=("${pids[@]:1}")
  fi
  run_one "$t" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || true; done

failed=0
for t in "${targets[@]}"; do
  log="fuzz/logs/$t.log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [ -n "$execs" ] || execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
  if [ "$(cat "fuzz/logs/$t.result")" = ok ]; then
    printf '%-16s %12s execs  ok\n' "$t" "${execs:-?}"
  else
    failed=1
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    printf '%-16s %12s execs  CRASH %s\n' "$t" "${execs:-?}" "${crash:-(no artifact; see $log)}"
    # The panic's location and message (the line after), or libFuzzer's own diagnosis.
    { grep -m1 -A1 "panicked at" "$log" || grep -m1 -E "ERROR: (libFuzzer|AddressSanitizer)" "$log"; } \
      | cut -c1-300 | sed 's/^/    /' || true
  fi
done
exit $failed
