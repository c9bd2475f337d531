#!/usr/bin/env python3
"""bench/run compare's report: postsift against a baseline build, cell by cell, same run.

Usage: compare.py RUNS_CSV META_ENV > report.md
For each mode/size/concurrency: the median messages per second and the median postsift CPU
per message (ms) of the smtp-source runs of both builds, their ratios, and the spread of each
build's own runs (max/min - 1), which is what "within noise" is judged against; the loadgen
run gives p50/p99 latency. A ratio is marked "within noise" when it lies within the larger of
the two builds' spreads (or 5 % when a build had a single run).
"""
import csv
import statistics
import sys


def spread(v):
    return (max(v) / min(v) - 1) if len(v) > 1 and min(v) > 0 else None


def main():
    rows = list(csv.DictReader(open(sys.argv[1])))
    meta = dict(l.rstrip("\n").split("=", 1) for l in open(sys.argv[2]) if "=" in l)
    cells = {}
    for r in rows:
        if r["filter"] not in ("postsift", "postsift-base"):
            continue
        key = (r["mode"], int(r["size"]), int(r["conc"]))
        c = cells.setdefault(key, {})
        d = c.setdefault(r["filter"], {"mps": [], "cpu": [], "p50": [], "p99": [], "lost": 0})
        if r["tool"] == "smtp-source":
            d["mps"].append(float(r["mps"]))
            d["cpu"].append(float(r["cpu_filter_ms"] or 0))
            d["lost"] += int(r["msgs"]) - int(r["sink"] or 0)
        else:
            d["p50"].append(float(r["p50_ms"] or 0))
            d["p99"].append(float(r["p99_ms"] or 0))
    print(f"# postsift against a baseline build, same run ({meta.get('ts', '?')})\n")
    print(f"- postsift: `{meta.get('postsift_bin')}` (rev {meta.get('postsift_rev')})")
    print(f"- baseline: `{meta.get('baseline_bin')}` (rev {meta.get('baseline_rev') or 'given as a binary'})")
    print(f"- {meta.get('nproc')} CPUs, load at start {meta.get('loadavg_start')}, "
          f"repeats {meta.get('knob_REPEATS')}, quick={meta.get('knob_QUICK')}\n")
    print("Both ran at once on their own address; runs alternated between them. msg/s and CPU are "
          "medians of the smtp-source runs; CPU is postsift's own user+system time per message; "
          "spread is each build's max/min - 1 over its runs.\n")
    print("| mode | size | conc | msg/s new | msg/s base | ratio | CPU ms/msg new | CPU base | ratio | "
          "p50 ms new/base | p99 ms new/base | spread new/base | verdict |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|")
    bad = shown = 0
    for key in sorted(cells):
        c = cells[key]
        if "postsift" not in c or "postsift-base" not in c:
            continue
        n, b = c["postsift"], c["postsift-base"]
        if not n["mps"] or not b["mps"]:
            continue
        shown += 1
        mn, mb = statistics.median(n["mps"]), statistics.median(b["mps"])
        cn, cb = statistics.median(n["cpu"]), statistics.median(b["cpu"])
        sp = [s for s in (spread(n["mps"]), spread(b["mps"]), spread(n["cpu"]), spread(b["cpu"])) if s is not None]
        noise = max(sp + [0.05])
        r_mps, r_cpu = mn / mb if mb else 0, cn / cb if cb else 0
        ok = r_mps >= 1 - noise and r_cpu <= 1 + noise
        lost = n["lost"] + b["lost"]
        verdict = "within noise" if ok else ("better" if r_mps > 1 and r_cpu < 1 else "OUTSIDE noise")
        if lost:
            verdict += f"; {lost} not at the sink"
        bad += (not ok and verdict.startswith("OUTSIDE")) or lost > 0
        lat = lambda d, k: f"{statistics.median(d[k]):.1f}" if d[k] else "-"
        print(f"| {key[0]} | {key[1]} | {key[2]} | {mn:.0f} | {mb:.0f} | {r_mps:.2f} | {cn:.2f} | {cb:.2f} | "
              f"{r_cpu:.2f} | {lat(n, 'p50')}/{lat(b, 'p50')} | {lat(n, 'p99')}/{lat(b, 'p99')} | "
              f"{spread(n['mps']) or 0:.0%}/{spread(b['mps']) or 0:.0%} | {verdict} |")
    print(f"\n{shown} cell(s) measured; {bad} outside noise or with messages missing at the sink.")
    return 0 if shown else 1


if __name__ == "__main__":
    sys.exit(main())
