#!/usr/bin/env python3
"""Turns the raw rows of one bench/run into results/<ts>.md and <ts>.csv (+ latest.*).

Input (in --work): runs.csv (one row per measured run), meta.env (versions, knobs), notes.csv
(sanity checks, amavisd's best $max_servers, idle RSS), postsift/<mode>-info.log +
<mode>-info.permsg.csv (the added-latency runs). Standard library only.
"""
import argparse
import csv
import os
import re
import shutil
import statistics
import sys

FILTER_ORDER = {"ceiling": 0, "postsift": 1, "amavisd": 2}
MODE_ORDER = {"-": 0, "noscan": 1, "clamd": 2, "clamd+spamd": 3}


def fnum(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=1):
    if x is None:
        return "–"
    if nd == 0 or abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"


def mib(kb):
    return None if kb is None or kb == 0 else kb / 1024.0


def size_label(b):
    b = int(b)
    if b % 1048576 == 0:
        return f"{b // 1048576} MiB"
    if b % 1024 == 0:
        return f"{b // 1024} KiB"
    return f"{b} B"


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = max(1, -(-len(xs) * p // 100))  # nearest rank
    return xs[int(min(k, len(xs))) - 1]


def load_meta(path):
    meta = {}
    if os.path.exists(path):
        for line in open(path):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    return meta


def cells(rows):
    """Groups runs by (filter, mode, setting, size, conc)."""
    out = {}
    for r in rows:
        key = (r["filter"], r["mode"], r["setting"], int(r["size"]), int(r["conc"]))
        out.setdefault(key, []).append(r)
    return out


def summarize(key, runs):
    src = [r for r in runs if r["tool"] == "smtp-source"]
    lg = [r for r in runs if r["tool"] == "loadgen"]
    mps = [fnum(r["mps"]) for r in src]
    lost = dup = 0
    sent = 0
    for r in runs:
        n = int(r["msgs"])
        sink = int(r["sink"] or 0)
        ok = int(r["ok"]) if r["ok"] not in ("", None) else n
        sent += n
        if sink < ok:
            lost += ok - sink
        if sink > ok:
            dup += sink - ok
        if ok < n:
            lost += 0  # refused messages are reported separately
    refused = sum(int(r["msgs"]) - int(r["ok"]) for r in lg if r["ok"] not in ("", None))
    refused += sum(max(0, int(r["msgs"]) - int(r["sink"] or 0)) for r in src)
    rss = [fnum(r["rss_kb"]) for r in runs]
    d = {
        "filter": key[0],
        "mode": key[1],
        "setting": key[2],
        "size": key[3],
        "conc": key[4],
        "msgs": int(src[0]["msgs"]) if src else (int(lg[0]["msgs"]) if lg else 0),
        "runs": len(src),
        "mps": median(mps),
        "mps_min": min([m for m in mps if m is not None], default=None),
        "mps_max": max([m for m in mps if m is not None], default=None),
        "lat_little_ms": median([fnum(r["mean_ms"]) for r in src]),
        "lg_mps": median([fnum(r["mps"]) for r in lg]),
        "lg_mean_ms": median([fnum(r["mean_ms"]) for r in lg]),
        "lg_p50_ms": median([fnum(r["p50_ms"]) for r in lg]),
        "lg_p99_ms": median([fnum(r["p99_ms"]) for r in lg]),
        "lg_max_ms": max([fnum(r["max_ms"]) or 0 for r in lg], default=None),
        "rss_kb": max([x for x in rss if x is not None], default=None),
        "rss_proc_kb": max([fnum(r["rss_proc_kb"]) or 0 for r in runs], default=None),
        "nprocs": max([int(fnum(r["nprocs"]) or 0) for r in runs], default=0),
        "clamd_kb": max([fnum(r["clamd_rss_kb"]) or 0 for r in runs], default=None),
        "spamd_kb": max([fnum(r["spamd_rss_kb"]) or 0 for r in runs], default=None),
        "sent": sent,
        "sink_lost": lost,
        "sink_dup": dup,
        "refused": refused,
        "notes": "; ".join(sorted({r["note"].strip() for r in runs if r["note"].strip()}))[:200],
    }
    if sent == 0:
        d["once"] = "–"
    elif lost == 0 and dup == 0 and refused == 0:
        d["once"] = f"yes ({sent}/{sent})"
    else:
        d["once"] = f"NO: {refused} refused/failed, {lost} lost, {dup} duplicated of {sent}"
    return d


def added_latency(work, mode):
    """Joins postsift's per-message log lines (queue_id = XFORWARD IDENT) to loadgen's times."""
    tag = mode.replace("+", "_")
    logf = os.path.join(work, "postsift", f"{tag}-info.log")
    permsg = os.path.join(work, "postsift", f"{tag}-info.permsg.csv")
    if not (os.path.exists(logf) and os.path.exists(permsg)):
        return None
    fields = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')
    logged = {}
    for line in open(logf, errors="replace"):
        if "postsift::message" not in line:
            continue
        kv = {k: v.strip('"') for k, v in fields.findall(line)}
        if kv.get("queue_id", "-").startswith("bench-"):
            logged[kv["queue_id"]] = kv
    client = {}
    for r in csv.DictReader(open(permsg)):
        if r["latency_ms"]:
            client[r["ident"]] = float(r["latency_ms"])
    both = [(client[i], logged[i]) for i in client if i in logged]
    if not both:
        return {"mode": mode, "n": 0, "n_client": len(client), "n_logged": len(logged)}

    def ms(kv, k):
        return float(kv.get(k, 0) or 0)

    own = [c - ms(kv, "scan_ms") for c, kv in both]
    recv_reinj = [ms(kv, "receive_ms") + ms(kv, "reinject_ms") for _, kv in both]
    return {
        "mode": mode,
        "n": len(both),
        "n_client": len(client),
        "n_logged": len(logged),
        "client_p50": pct([c for c, _ in both], 50),
        "client_p99": pct([c for c, _ in both], 99),
        "scan_p50": pct([ms(kv, "scan_ms") for _, kv in both], 50),
        "scan_p99": pct([ms(kv, "scan_ms") for _, kv in both], 99),
        "clamd_p99": pct([ms(kv, "clamd_ms") for _, kv in both], 99),
        "spamd_p99": pct([ms(kv, "spamd_ms") for _, kv in both], 99),
        "own_p50": pct(own, 50),
        "own_p99": pct(own, 99),
        "own_mean": statistics.mean(own),
        "rr_p50": pct(recv_reinj, 50),
        "rr_p99": pct(recv_reinj, 99),
        "receive_p99": pct([ms(kv, "receive_ms") for _, kv in both], 99),
        "reinject_p99": pct([ms(kv, "reinject_ms") for _, kv in both], 99),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ts", required=True)
    a = ap.parse_args()
    rows = list(csv.DictReader(open(os.path.join(a.work, "runs.csv"))))
    meta = load_meta(os.path.join(a.work, "meta.env"))
    notes = list(csv.reader(open(os.path.join(a.work, "notes.csv")))) if os.path.exists(
        os.path.join(a.work, "notes.csv")) else []
    best_ms = {n[1]: n[2] for n in notes if n and n[0] == "amavis_best"}

    grid_rows = [r for r in rows if r["filter"] in FILTER_ORDER]
    sweep_rows = [r for r in rows if r["filter"] == "amavisd-sweep"]
    mem_rows = [r for r in rows if r["filter"].endswith("-mem")]
    C = {k: summarize(k, v) for k, v in cells(grid_rows).items()}
    ordered = sorted(C.values(), key=lambda d: (MODE_ORDER.get(d["mode"], 9), d["size"], d["conc"],
                                                FILTER_ORDER[d["filter"]]))

    def get(filt, mode, size, conc):
        for d in C.values():
            if d["filter"] == filt and d["mode"] == mode and d["size"] == size and d["conc"] == conc:
                return d
        return None

    L = []
    w = L.append
    w(f"# postsift benchmark {meta.get('ts', a.ts)}")
    w("")
    w(f"postsift `{meta.get('postsift_rev', '?')}` · {meta.get('nproc', '?')} CPUs (`nproc`) · "
      f"{int(meta.get('mem_total_kb', '0') or 0) // 1048576} GiB RAM · kernel {meta.get('kernel', '?')} · "
      f"loopback-only netns `{meta.get('netns', '?')}`" + (" · **QUICK=1 smoke run**" if meta.get('knob_QUICK') == '1' else ""))
    w("")
    w("| package | version |")
    w("|---|---|")
    for p, label in [("postfix", "postfix (smtp-source, smtp-sink)"), ("amavisd-new", "amavisd-new"),
                     ("clamav-daemon", "clamav-daemon"), ("libclamav12", "libclamav12"),
                     ("spamassassin", "spamassassin"), ("spamd", "spamd"), ("perl", "perl"),
                     ("libnet-server-perl", "libnet-server-perl")]:
        w(f"| {label} | {meta.get('pkg_' + p, '?') or '–'} |")
    w(f"| amavisd -V | {meta.get('amavisd_version', '?')} |")
    w("")
    spamd_children = meta.get("knob_SPAMD_CHILDREN", "?")
    sweep = meta.get("knob_AMAVIS_SWEEP", "")
    w(f"Settings: postsift `max_sessions = 64`, log level warn, spamd with {spamd_children} children "
      f"(`--min-children = --max-children = {spamd_children}`) for postsift; amavisd runs SpamAssassin "
      f"in-process in each of its `$max_servers` children, " +
      (f"chosen per mode as the best of {sweep} at {size_label(meta.get('knob_SWEEP_SIZE', 4096))} conc "
       f"{meta.get('knob_SWEEP_CONC', '16')} (sweep below) and then used for every cell of that mode: "
       if not meta.get("knob_AMAVIS_SERVERS") else f"fixed at {meta.get('knob_AMAVIS_SERVERS')}: ") +
      ", ".join(f"{m} → {v}" for m, v in best_ms.items()) + ".")
    w("")

    # --- side by side
    w("## Throughput and latency, side by side")
    w("")
    w("msgs/s = median of the smtp-source runs (end to end: until smtp-sink counted every message). "
      "p99 = 99th percentile of per-message latency from `bench/loadgen` (connect → reply to the final dot). "
      "RSS = peak of the filter (amavisd: master + children, summed).")
    w("")
    w("| mode | size | conc | ceiling msgs/s | postsift msgs/s | amavisd msgs/s | postsift / amavisd | postsift % of ceiling | postsift p99 ms | amavisd p99 ms | postsift RSS MiB | amavisd RSS MiB (procs) |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    seen = set()
    for d in ordered:
        if d["filter"] == "ceiling":
            continue
        k = (d["mode"], d["size"], d["conc"])
        if k in seen:
            continue
        seen.add(k)
        ce = get("ceiling", "-", d["size"], d["conc"])
        ps = get("postsift", *k)
        am = get("amavisd", *k)
        ratio = (ps["mps"] / am["mps"]) if ps and am and ps["mps"] and am["mps"] else None
        ofc = (100 * ps["mps"] / ce["mps"]) if ps and ce and ps["mps"] and ce["mps"] else None
        w(f"| {d['mode']} | {size_label(d['size'])} | {d['conc']} | {fmt(ce and ce['mps'], 0)} | "
          f"{fmt(ps and ps['mps'])} | {fmt(am and am['mps'])} | {fmt(ratio, 2) + '×' if ratio else '–'} | "
          f"{fmt(ofc) + ' %' if ofc else '–'} | {fmt(ps and ps['lg_p99_ms'])} | {fmt(am and am['lg_p99_ms'])} | "
          f"{fmt(mib(ps and ps['rss_kb']))} | "
          f"{fmt(mib(am and am['rss_kb']))}{(' (' + str(am['nprocs']) + ')') if am else ''} |")
    w("")

    # --- target ratios
    w("## Target ratios")
    w("")
    TR = []
    ce = get("ceiling", "-", 4096, 16)
    ps = get("postsift", "noscan", 4096, 16)
    if ce and ps and ce["mps"] and ps["mps"]:
        TR.append(("postsift no-scan msgs/s as % of the ceiling (4 KiB, conc 16)",
                   f"{100 * ps['mps'] / ce['mps']:.1f} % ({fmt(ps['mps'])} of {fmt(ce['mps'], 0)} msgs/s)"))
    for mode in ("clamd", "clamd+spamd", "noscan"):
        for size in (4096, 65536):
            for conc in (16, 1):
                p = get("postsift", mode, size, conc)
                m = get("amavisd", mode, size, conc)
                if p and m and p["mps"] and m["mps"]:
                    TR.append((f"postsift {mode} / amavisd {mode} ({size_label(size)}, conc {conc})",
                               f"{p['mps'] / m['mps']:.2f}× ({fmt(p['mps'])} vs {fmt(m['mps'])} msgs/s)"))
    AL = [x for x in (added_latency(a.work, m) for m in ("noscan", "clamd", "clamd+spamd")) if x]
    for x in AL:
        if x["mode"] == "clamd+spamd" and x["n"]:
            TR.append((f"postsift's own added latency, p99 at {meta.get('knob_ADDED_CONC', '16')} sessions "
                       f"({size_label(meta.get('knob_ADDED_SIZE', 4096))}, clamd+spamd): client latency − scan_ms",
                       f"{fmt(x['own_p99'], 2)} ms (p50 {fmt(x['own_p50'], 2)} ms; scan p99 {fmt(x['scan_p99'], 0)} ms; "
                       f"receive_ms+reinject_ms p99 {fmt(x['rr_p99'], 0)} ms)"))
    for x in AL:
        if x["mode"] == "noscan" and x["n"]:
            TR.append((f"postsift no-scan latency p99 at {meta.get('knob_ADDED_CONC', '16')} sessions (whole SMTP transaction)",
                       f"{fmt(x['client_p99'], 2)} ms (ceiling p99 at the same load: "
                       f"{fmt((get('ceiling', '-', int(meta.get('knob_ADDED_SIZE', 4096)), int(meta.get('knob_ADDED_CONC', 16))) or {}).get('lg_p99_ms'), 2)} ms)"))
    MEM = {}
    for r in mem_rows:
        MEM[(r["filter"], r["setting"].split(";")[0])] = r
    for (f, st), r in sorted(MEM.items()):
        TR.append((f"peak RSS {f.replace('-mem', '')}, {st.replace('sessions=', '')} session(s) × {size_label(r['size'])}",
                   f"{fmt(mib(fnum(r['rss_kb'])))} MiB ({r['ok']}/{r['msgs']} delivered, {r['nprocs']} procs)"))
    w("| target | value |")
    w("|---|---|")
    for k, v in TR:
        w(f"| {k} | {v} |")
    w("")

    # --- added latency detail
    if AL:
        w("## postsift's own latency (runs with `[log] level = \"info\"`)")
        w("")
        w("Per message, loadgen's client-side latency is joined to postsift's log line by XFORWARD IDENT "
          "(`queue_id`). own = client latency − `scan_ms` (connection, SMTP dialogue, receiving, policy, "
          "header rewrite, reinjection into smtp-sink; log fields are whole milliseconds, so own is "
          "overstated by up to 1 ms).")
        w("")
        w("| mode | msgs joined | client p50 / p99 ms | scan_ms p50 / p99 | clamd_ms p99 | spamd_ms p99 | own p50 / p99 ms | own mean ms | receive_ms p99 | reinject_ms p99 |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for x in AL:
            if not x["n"]:
                w(f"| {x['mode']} | 0 (client {x['n_client']}, log {x['n_logged']}) | | | | | | | | |")
                continue
            w(f"| {x['mode']} | {x['n']} | {fmt(x['client_p50'], 2)} / {fmt(x['client_p99'], 2)} | "
              f"{fmt(x['scan_p50'], 0)} / {fmt(x['scan_p99'], 0)} | {fmt(x['clamd_p99'], 0)} | {fmt(x['spamd_p99'], 0)} | "
              f"{fmt(x['own_p50'], 2)} / {fmt(x['own_p99'], 2)} | {fmt(x['own_mean'], 2)} | "
              f"{fmt(x['receive_p99'], 0)} | {fmt(x['reinject_p99'], 0)} |")
        w("")

    # --- memory
    if mem_rows:
        w("## Memory under large messages (clamd only)")
        w("")
        idle = {n[1]: n[2] for n in notes if n and n[0] == "idle"}
        w("| filter | load | delivered | wall s | peak RSS MiB (sum) | largest process MiB | procs | idle RSS MiB | clamd peak MiB | notes |")
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in mem_rows:
            f = r["filter"].replace("-mem", "")
            idle_kb = fnum((idle.get(f, "0 0 0 0 0").split() or ["0"])[0])
            w(f"| {f} ({r['setting'].split(';', 1)[1] if ';' in r['setting'] else 'max_sessions=64'}) | "
              f"{r['conc']} session(s) × {size_label(r['size'])} | {r['ok']}/{r['msgs']} (sink {r['sink']}) | "
              f"{fmt(fnum(r['wall_s']))} | {fmt(mib(fnum(r['rss_kb'])))} | {fmt(mib(fnum(r['rss_proc_kb'])))} | "
              f"{r['nprocs']} | {fmt(mib(idle_kb))} | {fmt(mib(fnum(r['clamd_rss_kb'])))} | {r['note']} |")
        w("")

    # --- amavis sweep
    if sweep_rows:
        w("## amavisd `$max_servers` sweep")
        w("")
        w("| mode | max_servers | size | conc | msgs/s (median) | runs | peak RSS MiB (procs) |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for k, v in sorted(cells(sweep_rows).items(), key=lambda kv: (MODE_ORDER.get(kv[0][1], 9), kv[0][2])):
            d = summarize(k, v)
            chosen = " ← used" if best_ms.get(k[1]) == k[2].split("=")[1] else ""
            w(f"| {k[1]} | {k[2].split('=')[1]}{chosen} | {size_label(k[3])} | {k[4]} | {fmt(d['mps'])} | "
              f"{d['runs']}×{d['msgs']} | {fmt(mib(d['rss_kb']))} ({d['nprocs']}) |")
        w("")

    # --- details
    w("## All cells")
    w("")
    w("| filter | mode | setting | size | conc | runs × msgs | msgs/s median (min–max) | mean latency ms (Little) | "
      "loadgen msgs/s | loadgen mean / p50 / p99 / max ms | peak RSS MiB (largest proc, procs) | clamd / spamd MiB | exactly once |")
    w("|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for d in ordered:
        w(f"| {d['filter']} | {d['mode']} | {d['setting']} | {size_label(d['size'])} | {d['conc']} | "
          f"{d['runs']}×{d['msgs']} | {fmt(d['mps'])} ({fmt(d['mps_min'])}–{fmt(d['mps_max'])}) | "
          f"{fmt(d['lat_little_ms'], 2)} | {fmt(d['lg_mps'])} | {fmt(d['lg_mean_ms'], 2)} / {fmt(d['lg_p50_ms'], 2)} / "
          f"{fmt(d['lg_p99_ms'], 2)} / {fmt(d['lg_max_ms'], 2)} | "
          f"{fmt(mib(d['rss_kb']))} ({fmt(mib(d['rss_proc_kb']))}, {d['nprocs']}) | "
          f"{fmt(mib(d['clamd_kb']))} / {fmt(mib(d['spamd_kb']))} | {d['once']} |")
    w("")
    probs = [d for d in ordered if d["notes"]]
    if probs:
        w("Errors reported by the load generators:")
        w("")
        for d in probs:
            w(f"- {d['filter']} {d['mode']} {size_label(d['size'])} conc {d['conc']}: {d['notes']}")
        w("")
    san = [n for n in notes if n and n[0] == "sanity"]
    if san:
        w("Sanity checks (clean mail delivered; EICAR discarded in clamd modes; GTUBE seen as spam in spamd modes): " +
          "; ".join(f"{n[1]} {n[2]}: {n[3]}" for n in san) + ".")
        w("")
    knobs = {k[5:]: v for k, v in meta.items() if k.startswith("knob_")}
    w("Knobs: " + " ".join(f"`{k}={v}`" for k, v in knobs.items()) + ".")
    w("")
    w("See bench/README.md for what each column means and the caveats (tiny ClamAV DB, smtp-source's "
      "synthetic body, a sandboxed 2-vCPU VM with costly syscalls, other work on the machine: `load1` "
      "per run is in the raw CSV).")
    md = "\n".join(L) + "\n"

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"{a.ts}.md"), "w") as f:
        f.write(md)
    cols = ["filter", "mode", "setting", "size", "conc", "runs", "msgs", "mps", "mps_min", "mps_max",
            "lat_little_ms", "lg_mps", "lg_mean_ms", "lg_p50_ms", "lg_p99_ms", "lg_max_ms", "rss_kb",
            "rss_proc_kb", "nprocs", "clamd_kb", "spamd_kb", "sent", "refused", "sink_lost", "sink_dup", "once"]
    with open(os.path.join(a.out, f"{a.ts}.csv"), "w", newline="") as f:
        cw = csv.writer(f)
        cw.writerow(["postsift_rev", "nproc"] + cols)
        for d in ordered:
            cw.writerow([meta.get("postsift_rev", ""), meta.get("nproc", "")] +
                        [("" if d[c] is None else (f"{d[c]:.3f}" if isinstance(d[c], float) else d[c])) for c in cols])
        # the amavisd sweep and the memory runs, same columns
        for k, v in sorted(cells(sweep_rows + mem_rows).items()):
            d = summarize(k, v)
            cw.writerow([meta.get("postsift_rev", ""), meta.get("nproc", "")] +
                        [("" if d[c] is None else (f"{d[c]:.3f}" if isinstance(d[c], float) else d[c])) for c in cols])
    shutil.copyfile(os.path.join(a.out, f"{a.ts}.md"), os.path.join(a.out, "latest.md"))
    shutil.copyfile(os.path.join(a.out, f"{a.ts}.csv"), os.path.join(a.out, "latest.csv"))
    sys.stdout.write(md)
    bad = [d for d in ordered if not d["once"].startswith("yes")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
