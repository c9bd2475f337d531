#!/usr/bin/env python3
"""Turns the raw rows of one bench/run into results/<ts>.md and <ts>.csv (+ latest.*).

Input (in --work): runs.csv (one row per measured run), meta.env (versions, knobs), notes.csv
(sanity checks, amavisd's best $max_servers, idle RSS), postsift/<mode>-info.log +
<mode>-info.permsg.csv (the added-latency runs), auth/metrics/<tag>-{before,after}.prom and
<tag>.log (the auth comparison: postsift's auth/DNS series around each run, the cold postsift's
log lines of the run). Standard library only.
"""
import argparse
import csv
import os
import re
import shutil
import statistics
import sys

FILTER_ORDER = {"ceiling": 0, "postsift": 1, "amavisd": 2}
WALK_FILTERS = ("postsift-walk", "postsift-whole")
AUTH_FILTERS = ("postsift-auth", "postsift-noauth", "postsift-authcold")
HOP_FILTERS = ("hop-ceiling", "hop-default")
WALK_KINDS = {"synthetic": "synthetic (smtp-source)", "mix": "mix (bench/mix.py)",
              "attach": "attach-1.eml (PDF + zip)"}
FOREIGN_FLAG = 10  # % of the machine's CPU used by others during a cell: flagged
MODE_ORDER = {"-": 0, "noscan": 1, "clamd": 2, "clamd+spamd": 3, "clamd+rspamd": 4}


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
    if b >= 10240:
        return f"{b / 1024:.1f} KiB"
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
    # smtp-source can't tell a refused message from one lost after a 2xx: both are "missing".
    # loadgen knows which messages got a 2xx: the sink must have exactly those.
    missing = refused = lost = dup = sent = 0
    for r in runs:
        n = int(r["msgs"])
        sink = int(r["sink"] or 0)
        sent += n
        if r["tool"] == "smtp-source":
            missing += max(0, n - sink)
            dup += max(0, sink - n)
        else:
            ok = int(r["ok"] or 0)
            refused += n - ok
            lost += max(0, ok - sink)
            dup += max(0, sink - ok)
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
        "cpu_ms": median([fnum(r.get("cpu_filter_ms")) for r in src]),
        "cpu_clamd_ms": median([fnum(r.get("cpu_clamd_ms")) for r in src]),
        "cpu_spamd_ms": median([fnum(r.get("cpu_spamd_ms")) for r in src]),
        "foreign_pct": median([fnum(r.get("foreign_cpu_pct")) for r in runs]),
        "foreign_max": max([fnum(r.get("foreign_cpu_pct")) or 0 for r in runs], default=None),
        "sent": sent,
        "missing": missing,
        "sink_lost": lost,
        "sink_dup": dup,
        "refused": refused,
        "notes": "; ".join(sorted({r["note"].strip() for r in runs if r["note"].strip()}))[:200],
    }
    if sent == 0:
        d["once"] = "–"
    elif missing == lost == dup == refused == 0:
        d["once"] = f"yes ({sent}/{sent})"
    else:
        d["once"] = (f"NO, of {sent}: smtp-source {missing} missing at the sink; loadgen {refused} "
                     f"not accepted, {lost} accepted but lost; {dup} duplicated")
    return d


def walk_cells(rows):
    """The walk comparison's cells: summarize(), with throughput and CPU taken from loadgen when a
    cell has no smtp-source runs (the mix: smtp-source sends only its own body)."""
    out = {}
    for k, runs in cells(rows).items():
        d = summarize(k, runs)
        d["load1"] = median([fnum(r.get("load1")) for r in runs])
        if not d["runs"]:
            lg = [r for r in runs if r["tool"] == "loadgen"]
            d["runs"] = len(lg)
            lg_mps = [m for m in (fnum(r["mps"]) for r in lg) if m is not None]
            d["mps"] = d["lg_mps"]
            d["mps_min"], d["mps_max"] = min(lg_mps, default=None), max(lg_mps, default=None)
            d["cpu_ms"] = median([fnum(r.get("cpu_filter_ms")) for r in lg])
            d["cpu_clamd_ms"] = median([fnum(r.get("cpu_clamd_ms")) for r in lg])
            d["tool"] = "loadgen"
        else:
            d["tool"] = "smtp-source"
        tool = d["tool"]
        d["run_mps"] = {int(r["run"]): fnum(r["mps"]) for r in runs if r["tool"] == tool}
        out[(k[0], k[2], k[4])] = d  # (filter, kind, conc)
    return out


def paired_ratio(walk, whole):
    """Median over run numbers of walk msgs/s / whole msgs/s: the runs alternate (walk run r, then
    whole run r), so each pair saw nearly the same machine; a drifting machine moves both."""
    rs = [walk["run_mps"][r] / whole["run_mps"][r] for r in walk["run_mps"]
          if r in whole["run_mps"] and walk["run_mps"][r] and whole["run_mps"][r]]
    return (median(rs), min(rs), max(rs)) if rs else (None, None, None)


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


def read_prom(path):
    """{series: value} of a Prometheus text file (the lines bench/run kept)."""
    out = {}
    if os.path.exists(path):
        for line in open(path):
            if line.startswith("#") or " " not in line:
                continue
            k, v = line.rsplit(" ", 1)
            out[k] = fnum(v) or 0.0
    return out


def prom_delta(work, tag):
    a = read_prom(os.path.join(work, "auth", "metrics", f"{tag}-before.prom"))
    b = read_prom(os.path.join(work, "auth", "metrics", f"{tag}-after.prom"))
    return {k: v - a.get(k, 0.0) for k, v in b.items()} if b else None


def hist_quantile(d, name, q):
    """histogram_quantile() over the bucket deltas of `name` (linear within a bucket), seconds."""
    bs = []
    for k, v in d.items():
        m = re.match(re.escape(name) + r'_bucket\{(?:[^}]*,)?le="([^"]+)"', k)
        if m:
            bs.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), v))
    bs.sort()
    if not bs or bs[-1][1] <= 0:
        return None
    rank, prev_le, prev_c = q * bs[-1][1], 0.0, 0.0
    for le, c in bs:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0)
        prev_le, prev_c = le, c
    return None


def auth_stats(d):
    """From one run's metric deltas: what the auth checks and their DNS lookups did per message."""
    if not d:
        return None
    n = d.get("postsift_auth_duration_seconds_count", 0)
    if not n:
        return None
    tot = lambda pat: sum(v for k, v in d.items() if re.match(pat, k))
    look = tot(r"postsift_dns_lookups_total\{")
    ans = tot(r'postsift_dns_lookups_total\{outcome="answer"')
    dsum, dcnt = tot(r"postsift_dns_lookup_duration_seconds_sum"), tot(r"postsift_dns_lookup_duration_seconds_count")
    hit, miss = tot(r'postsift_dns_cache_requests_total\{result="hit"'), tot(r'postsift_dns_cache_requests_total\{result="miss"')
    return {
        "n": n,
        "mean_ms": 1000 * d.get("postsift_auth_duration_seconds_sum", 0) / n,
        "p50_ms": 1000 * (hist_quantile(d, "postsift_auth_duration_seconds", 0.5) or 0),
        "p99_ms": 1000 * (hist_quantile(d, "postsift_auth_duration_seconds", 0.99) or 0),
        "lookups": look / n,
        "answered": ans / n,
        "lookup_ms": 1000 * dsum / dcnt if dcnt else None,
        "lookup_sum_ms": 1000 * dsum / n,
        "hit_ratio": hit / (hit + miss) if hit + miss else None,
        "cache_req": (hit + miss) / n,
    }


def dns_stats(path):
    """dnsdelay.py's counters: udp, tcp, answered, ms (the answered queries' summed turnaround)."""
    if not os.path.exists(path):
        return None
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", open(path).read())}


def dns_count(path):
    d = dns_stats(path)
    return None if d is None else int(d.get("udp", 0) + d.get("tcp", 0))


def log_scan_ms(work, tag):
    xs = []
    path = os.path.join(work, "auth", "metrics", f"{tag}.log")
    if os.path.exists(path):
        for line in open(path):
            m = re.search(r" scan_ms=(\d+)", line)
            if m:
                xs.append(int(m.group(1)))
    return xs


def auth_section(work, rows, meta, TR):
    """The mail-authentication comparison: warm pairs (auth-warm / auth-off) and cold runs."""
    L = []
    w = L.append
    R = [r for r in rows if r["filter"] in AUTH_FILTERS]
    if not R:
        return L
    delay = meta.get("knob_DNS_DELAY_MS", "?")
    byk = {}
    for r in R:
        byk.setdefault((r["setting"].split(";")[0] + (";cold-pair" if "cold-pair" in r["setting"] else ""),
                        int(r["conc"])), []).append(r)

    def cell(setting, conc):
        rs = byk.get((setting, conc), [])
        if not rs:
            return None
        d = summarize((rs[0]["filter"], "noscan", setting, int(rs[0]["size"]), conc), rs)
        d["runs"] = len(rs)
        d["mps"] = median([fnum(r["mps"]) for r in rs])
        d["cpu_ms"] = median([fnum(r.get("cpu_filter_ms")) for r in rs])
        d["load1"] = median([fnum(r.get("load1")) for r in rs])
        d["by_run"] = {int(r["run"]): r for r in rs}
        return d

    w("## Mail authentication: `[auth]` on and off, warm and cold DNS cache")
    w("")
    w("Three postsifts in noscan mode (no clamd, no spam engine: only the authentication differs; the "
      "MIME walk runs in all three) side by side: `auth-warm` (`[auth] enabled = true`, `[dns] servers` = "
      "a private unbound on loopback), `auth-off` (`[auth] enabled = false`) and `auth-cold` (`[auth]` on, "
      f"`[dns]` = `bench/dnsdelay.py` in front of the same unbound, {delay} ms before each query is passed "
      "on). loadgen sends `bench/authmsg.py`'s DKIM-signed messages (rsa-sha256 2048 bit, relaxed/relaxed, "
      f"{R[0]['size']} bytes; the cold ones a few bytes less) with MAIL FROM `sender@<domain>` and "
      "`XFORWARD ADDR=192.0.2.10 HELO=mx.<domain>`; SPF (MAIL FROM and HELO), "
      "DKIM and DMARC pass, ARC is none. Every record has TTL 3600 and negative answers live 3600 s "
      "too (the SOA minimum). The warm runs send one domain's message, `warm.example`, over and over "
      "(after the first message every lookup is a hit in postsift's cache); every cold message comes "
      "from a domain of its own, `cold.<run>m<N>`, under a top-level name of its own (`<run>m<N>`, "
      "because DMARC's tree walk also asks the parent, `_dmarc.<run>m<N>`: a shared parent would be "
      "warm after the first message), with its own records in unbound (the same DKIM key everywhere), "
      "and the cold postsift is started afresh by every `bench/run`: nothing a cold message asks was "
      "asked before, while what it asks stays cached for the rest of the message, as on a real "
      "resolver.")
    w("")
    w("### Warm cache: CPU and latency, `[auth]` on against off (runs alternating)")
    w("")
    w("CPU = user + system time of the postsift process over the run / messages (loadgen runs); "
      "on − off = median over run numbers of (auth run r − off run r). Latency: loadgen, connect → "
      "reply to the final dot. auth ms: `postsift_auth_duration_seconds` over the run (mean; p50/p99 "
      "interpolated in its buckets).")
    w("")
    w("| conc | runs × msgs | msgs/s on / off | postsift CPU ms/msg on / off | on − off ms (range) | "
      "p50 ms on / off | p99 ms on / off | auth ms mean (p50 / p99) | DNS cache hit % | lookups/msg | "
      "load1 | other work % on / off (max) | exactly once |")
    w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for conc in sorted({k[1] for k in byk if k[0] == "auth-warm"}):
        on, off = cell("auth-warm", conc), cell("auth-off", conc)
        if not (on and off):
            continue
        diffs = [fnum(on["by_run"][r].get("cpu_filter_ms")) - fnum(off["by_run"][r].get("cpu_filter_ms"))
                 for r in on["by_run"] if r in off["by_run"]
                 and fnum(on["by_run"][r].get("cpu_filter_ms")) is not None
                 and fnum(off["by_run"][r].get("cpu_filter_ms")) is not None]
        st = [auth_stats(prom_delta(work, f"auth-warm-c{conc}-r{r}")) for r in sorted(on["by_run"])]
        st = [x for x in st if x]
        am = median([x["mean_ms"] for x in st])
        hr = median([x["hit_ratio"] for x in st if x["hit_ratio"] is not None])
        lk = median([x["lookups"] for x in st])
        dm = median(diffs)
        once = "yes" if on["once"].startswith("yes") and off["once"].startswith("yes") else f"on: {on['once']}; off: {off['once']}"
        w(f"| {conc} | {on['runs']}×{on['msgs']} | {fmt(on['mps'])} / {fmt(off['mps'])} | "
          f"{fmt(on['cpu_ms'], 2)} / {fmt(off['cpu_ms'], 2)} | "
          f"{'–' if dm is None else f'{dm:+.2f}'} ({fmt(min(diffs, default=None), 2)} … {fmt(max(diffs, default=None), 2)}) | "
          f"{fmt(on['lg_p50_ms'], 2)} / {fmt(off['lg_p50_ms'], 2)} | {fmt(on['lg_p99_ms'], 2)} / {fmt(off['lg_p99_ms'], 2)} | "
          f"{fmt(am, 2)} ({fmt(median([x['p50_ms'] for x in st]), 2)} / {fmt(median([x['p99_ms'] for x in st]), 2)}) | "
          f"{fmt(None if hr is None else 100 * hr, 1)} | {fmt(lk, 2)} | {fmt(on['load1'], 2)} | "
          f"{fmt(on['foreign_pct'], 0)} / {fmt(off['foreign_pct'], 0)} ({fmt(max(on['foreign_max'] or 0, off['foreign_max'] or 0), 0)}) | {once} |")
        TR.append((f"postsift's own CPU per message, [auth] on (warm cache) − off, DKIM-signed {size_label(on['size'])}, "
                   f"{conc} session(s) — target ≤ 0.3 ms",
                   f"{'–' if dm is None else f'{dm:+.2f}'} ms ({fmt(on['cpu_ms'], 2)} on / {fmt(off['cpu_ms'], 2)} off; "
                   f"paired runs {fmt(min(diffs, default=None), 2)} … {fmt(max(diffs, default=None), 2)}) — "
                   + ("met" if dm is not None and dm <= 0.3 else "not met")))
    w("")
    w(f"### Cold cache: a new domain per message, {delay} ms round trip")
    w("")
    w("auth ms: `postsift_auth_duration_seconds` (mean exact; p50/p99 interpolated in its buckets); "
      "scan_ms: the cold postsift's log line (noscan: the authentication, with the MIME walk beside it; "
      "whole ms). lookups/msg and their summed latency per message: `postsift_dns_lookups_total` "
      "(misses of postsift's cache handed to the resolver) and `postsift_dns_lookup_duration_seconds`' "
      "sum (a lookup ends at its answer or, lacking one, at the same check's next lookup, so the "
      "prefetch's two names, asked at once, show as one answer-less lookup of ~0 ms and one that runs "
      "until the prefetch ends: read these two columns as the resolver's view, not the wire's). DNS queries/msg: what dnsdelay.py passed on to unbound during the run, per message (a lookup "
      "the resolver answers from its negative cache — DMARC asking the NXDOMAIN parent the prefetch "
      "asked — is no query). round trip: the mean turnaround of those queries at dnsdelay.py, query in → "
      f"answer out (the {delay} ms plus dnsdelay.py's and unbound's own time; postsift's side of the "
      "socket is not in it). in round trips = auth mean / round trip (and scan_ms p50 / round trip: the histogram's p50 is an interpolation inside its 25–50 ms bucket). added p50 = loadgen p50 of auth-cold − "
      "auth-off in runs alternating with it (same load, the warm message).")
    w("")
    w("| conc | runs × msgs | auth ms mean (p50 / p99) | scan_ms p50 / p99 | round trip ms | lookups/msg (answered) | "
      "sum of lookup ms/msg | DNS queries/msg | auth in round trips mean (p50) | loadgen p50 / p99 ms cold / off | added p50 ms | load1 | other work % | exactly once |")
    w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for conc in sorted({k[1] for k in byk if k[0] == "auth-cold"}):
        co, off = cell("auth-cold", conc), cell("auth-off;cold-pair", conc)
        if not co:
            continue
        st = [auth_stats(prom_delta(work, f"auth-cold-c{conc}-r{r}")) for r in sorted(co["by_run"])]
        st = [x for x in st if x]
        if not st:
            continue
        scan = [x for r in sorted(co["by_run"]) for x in log_scan_ms(work, f"auth-cold-c{conc}-r{r}")]
        qpm = []  # DNS queries dnsdelay.py passed on, per message (runs alternate: only ours)
        rts = []  # their mean turnaround at dnsdelay.py (query in -> answer out), ms
        for r in sorted(co["by_run"]):
            q = [dns_count(os.path.join(work, "auth", "metrics", f"auth-cold-c{conc}-r{r}-{x}.dns")) for x in ("before", "after")]
            if None not in q and int(co["by_run"][r]["ok"] or 0):
                qpm.append((q[1] - q[0]) / int(co["by_run"][r]["ok"]))
            t = [dns_stats(os.path.join(work, "auth", "metrics", f"auth-cold-c{conc}-r{r}-{x}.dns")) for x in ("before", "after")]
            if None not in t and "ms" in t[1] and t[1]["answered"] > t[0].get("answered", 0):
                rts.append((t[1]["ms"] - t[0].get("ms", 0)) / (t[1]["answered"] - t[0].get("answered", 0)))
        g = lambda k: median([x[k] for x in st if x[k] is not None])
        am, qm = g("mean_ms"), median(qpm)
        rt = median(rts) if rts else g("lookup_ms")
        ratio = am / rt if am and rt else None
        ratio50 = pct(scan, 50) / rt if scan and rt else None
        added = (co["lg_p50_ms"] - off["lg_p50_ms"]) if off and co["lg_p50_ms"] is not None and off["lg_p50_ms"] is not None else None
        once = "yes" if co["once"].startswith("yes") and (not off or off["once"].startswith("yes")) else f"cold: {co['once']}; off: {off and off['once']}"
        w(f"| {conc} | {co['runs']}×{co['msgs']} | {fmt(am, 1)} ({fmt(g('p50_ms'), 1)} / {fmt(g('p99_ms'), 1)}) | "
          f"{fmt(pct(scan, 50), 0)} / {fmt(pct(scan, 99), 0)} | {fmt(rt, 1)} | {fmt(g('lookups'), 2)} ({fmt(g('answered'), 2)}) | "
          f"{fmt(g('lookup_sum_ms'), 1)} | {fmt(qm, 2)} | {fmt(ratio, 2)} ({fmt(ratio50, 2)}) | "
          f"{fmt(co['lg_p50_ms'], 1)} / {fmt(co['lg_p99_ms'], 1)} · {fmt(off and off['lg_p50_ms'], 1)} / {fmt(off and off['lg_p99_ms'], 1)} | "
          f"{fmt(added, 1)} | {fmt(co['load1'], 2)} | {fmt(co['foreign_pct'], 0)} ({fmt(co['foreign_max'], 0)}) | {once} |")
        TR.append((f"cold cache, {conc} session(s): authentication latency against one DNS round trip "
                   "(target: about the longest lookup chain, 2 round trips, not the sum of the chains)",
                   f"{fmt(am, 1)} ms mean = {fmt(ratio, 2)} round trips of {fmt(rt, 1)} ms (p50 {fmt(ratio50, 2)}); "
                   f"{fmt(qm, 1)} DNS queries and {fmt(g('lookups'), 1)} lookups per message, their latencies "
                   f"summing to {fmt(g('lookup_sum_ms'), 1)} ms — "
                   + ("met" if ratio is not None and ratio <= 2.5 else "not met")))
    w("")
    w("Lookup chains of a cold message, e.g. from `cold.c1r1m7` (each step waits for the one before): "
      "SPF MAIL FROM `cold.c1r1m7` TXT → `include:_spf.cold.c1r1m7` TXT (2); SPF HELO "
      "`mx.cold.c1r1m7` TXT (1); DKIM `bench._domainkey.cold.c1r1m7` TXT (1); DMARC's policy "
      "discovery, the DMARCbis tree walk: `_dmarc.cold.c1r1m7` TXT and `_dmarc.c1r1m7` TXT "
      "(NXDOMAIN) — asked at once, beside SPF, DKIM and ARC, by `src/scan/auth.rs`' prefetch (1); "
      "then `verify_dmarc`, after SPF and DKIM, finds both in the caches (the positive answer in "
      "postsift's, the NXDOMAIN in the resolver's negative cache: one more lookup in the metrics, no "
      "query) (0); ARC: no ARC headers (0). Six DNS queries; the longest chain is 2 deep, so all "
      "concurrent is about 2 round trips. Without the prefetch (DMARC after the others, walking the "
      "tree one name after another) it would be about 4; all one after another, 6.")
    w("")
    return L


def hop_section(rows, TR):
    """The default configuration's hop against smtp-source -> smtp-sink, runs alternating (issue 22)."""
    L = []
    w = L.append
    ceil = {int(r["run"]): r for r in rows if r["filter"] == "hop-ceiling"}
    hop = {int(r["run"]): r for r in rows if r["filter"] == "hop-default"}
    if not hop:
        return L
    runs = sorted(set(ceil) & set(hop))
    ratios = [fnum(hop[r]["mps"]) / fnum(ceil[r]["mps"]) for r in runs
              if fnum(hop[r]["mps"]) and fnum(ceil[r]["mps"])]
    hs = list(hop.values())
    tot = median([fnum(r.get("cpu_filter_ms")) for r in hs])
    sys_ = median([fnum(r.get("cpu_filter_sys_ms")) for r in hs])
    usr = median([fnum(r.get("cpu_filter_ms")) - fnum(r.get("cpu_filter_sys_ms")) for r in hs
                  if fnum(r.get("cpu_filter_ms")) is not None and fnum(r.get("cpu_filter_sys_ms")) is not None])
    ratio = median(ratios)
    size, conc = size_label(hs[0]["size"]), hs[0]["conc"]
    w("## The default hop against smtp-source → smtp-sink")
    w("")
    w(f"smtp-source ({size}, {conc} sessions, a connection per message) to smtp-sink directly "
      "(`ceiling`) and through the `auth-warm` postsift (`hop`: noscan, `[auth]` on with the private "
      "unbound answering, warm; smtp-source sends no XFORWARD, so SPF is checked for 127.0.0.1 and "
      "`example.com`, which unbound answers NXDOMAIN), runs alternating. hop / ceiling: the median "
      "over the run numbers of hop run r's msgs/s divided by ceiling run r's. CPU: postsift's user and "
      "system time per message (`/proc/PID/stat` utime and stime, children included).")
    w("")
    w("| run | ceiling msgs/s | hop msgs/s | hop / ceiling | postsift CPU ms/msg | user | system | load1 | other work % |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(hop):
        h, c = hop[r], ceil.get(r, {})
        t, sy = fnum(h.get("cpu_filter_ms")), fnum(h.get("cpu_filter_sys_ms"))
        rt = fnum(h["mps"]) / fnum(c["mps"]) if c and fnum(c.get("mps")) and fnum(h["mps"]) else None
        w(f"| {r} | {fmt(fnum(c.get('mps')), 0)} | {fmt(fnum(h['mps']), 0)} | {fmt(rt, 2)} | {fmt(t, 3)} | "
          f"{fmt(t - sy if t is not None and sy is not None else None, 3)} | {fmt(sy, 3)} | {h['load1']} | "
          f"{fmt(fnum(h.get('foreign_cpu_pct')), 0)} / {fmt(fnum(c.get('foreign_cpu_pct')), 0)} |")
    w("")
    w("other work %: during the hop run / the ceiling run (CPU that processes outside the benchmark took).")
    w("")
    TR.append((f"default hop ({size}, conc {conc}, [auth] on, resolver answering) msgs/s as a fraction of "
               "smtp-source → smtp-sink (target ≥ 0.67)",
               f"{fmt(ratio, 3)} ({'met' if ratio is not None and ratio >= 0.67 else 'not met'}; "
               f"runs {', '.join(fmt(x, 3) for x in ratios)})"))
    TR.append(("postsift CPU per message on the default hop: user / system",
               f"{fmt(usr, 3)} / {fmt(sys_, 3)} ms (total {fmt(tot, 3)})"))
    return L


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
    info_rows = [r for r in rows if r["filter"] == "postsift-info"]
    walk_rows = [r for r in rows if r["filter"] in WALK_FILTERS]
    auth_rows = [r for r in rows if r["filter"] in AUTH_FILTERS]
    W = walk_cells(walk_rows)
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
      f"loopback-only netns `{meta.get('netns', '?')}`" + (" · **QUICK=1 smoke run**" if meta.get('knob_QUICK') == '1' else "")
      + (f" · `bench/run {meta['action']}`" if meta.get("action", "all") != "all" else ""))
    w("")
    if meta.get("loadavg_start"):
        w(f"Load average (1, 5, 15 min) at the start: {meta['loadavg_start']}; at the end: "
          f"{meta.get('loadavg_end', '?')} (the machine is shared: see 'other work %' and load1 per cell).")
        w("")
    w("| package | version |")
    w("|---|---|")
    for p, label in [("postfix", "postfix (smtp-source, smtp-sink)"), ("amavisd-new", "amavisd-new"),
                     ("clamav-daemon", "clamav-daemon"), ("libclamav12", "libclamav12"),
                     ("spamassassin", "spamassassin"), ("spamd", "spamd"), ("rspamd", "rspamd"), ("perl", "perl"),
                     ("libnet-server-perl", "libnet-server-perl"), ("unbound", "unbound (auth comparison)")]:
        w(f"| {label} | {meta.get('pkg_' + p, '?') or '–'} |")
    w(f"| amavisd -V | {meta.get('amavisd_version', '?')} |")
    w("")
    grid = bool(grid_rows)  # False for `bench/run walk` (or memory): no side-by-side grid
    spamd_children = meta.get("knob_SPAMD_CHILDREN", "?")
    sweep = meta.get("knob_AMAVIS_SWEEP", "")
    if grid:
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
          "RSS = peak of the filter (amavisd: master + children, summed; with SpamAssassin that includes SA, "
          "which postsift has in spamd: its peak, parent + children, is shown as + spamd). CPU ms/msg = user + system "
          "CPU time of the filter's processes during the smtp-source runs / messages (median of the runs); "
          "clamd's share is in the detail table.")
        w("")
        w("| mode | size | conc | ceiling msgs/s | postsift msgs/s | amavisd msgs/s | postsift / amavisd | postsift % of ceiling | postsift p99 ms | amavisd p99 ms | postsift CPU ms/msg | amavisd CPU ms/msg | postsift RSS MiB | amavisd RSS MiB (procs) |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
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
            flag = lambda c: " †" if c and (c.get("foreign_pct") or 0) >= FOREIGN_FLAG else ""
            ofc = (100 * ps["mps"] / ce["mps"]) if ps and ce and ps["mps"] and ce["mps"] else None
            w(f"| {d['mode']} | {size_label(d['size'])} | {d['conc']} | {fmt(ce and ce['mps'], 0)}{flag(ce)} | "
              f"{fmt(ps and ps['mps'])}{flag(ps)} | {fmt(am and am['mps'])}{flag(am)} | {fmt(ratio, 2) + '×' if ratio else '–'} | "
              f"{fmt(ofc) + ' %' if ofc else '–'} | {fmt(ps and ps['lg_p99_ms'])} | {fmt(am and am['lg_p99_ms'])} | "
              f"{fmt(ps and ps['cpu_ms'], 2)}{(' + ' + ('rspamd' if 'rspamd' in d['mode'] else 'spamd') + ' ' + fmt(ps['cpu_spamd_ms'], 1)) if ps and 'spamd' in d['mode'] and ps['cpu_spamd_ms'] else ''} | "
              f"{fmt(am and am['cpu_ms'], 2)} | "
              f"{fmt(mib(ps and ps['rss_kb']))}{(' + ' + ('rspamd' if 'rspamd' in d['mode'] else 'spamd') + ' ' + fmt(mib(ps['spamd_kb']), 0)) if ps and 'spamd' in d['mode'] and ps['spamd_kb'] else ''} | "
              f"{fmt(mib(am and am['rss_kb']))}{(' (' + str(am['nprocs']) + ')') if am else ''} |")
        w("")
        w(f"† median CPU share taken by work outside the benchmark (other processes on the machine, and "
          f"hypervisor steal) was ≥ {FOREIGN_FLAG} % during that cell's runs: treat it with caution "
          f"(column 'other work %' in the detail table).")
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
    # rspamd: against amavisd with SpamAssassin (target ≥ 20×) and postsift without scanning (≤ 2×).
    for size in (4096, 65536):
        for conc in (16, 1):
            p = get("postsift", "clamd+rspamd", size, conc)
            m = get("amavisd", "clamd+spamd", size, conc)
            n = get("postsift", "noscan", size, conc)
            if p and m and p["mps"] and m["mps"]:
                TR.append((f"postsift clamd+rspamd / amavisd clamd+spamd ({size_label(size)}, conc {conc})",
                           f"{p['mps'] / m['mps']:.1f}× ({fmt(p['mps'])} vs {fmt(m['mps'])} msgs/s)"))
            if p and n and p["mps"] and n["mps"]:
                TR.append((f"postsift noscan / postsift clamd+rspamd ({size_label(size)}, conc {conc})",
                           f"{n['mps'] / p['mps']:.2f}× ({fmt(n['mps'])} vs {fmt(p['mps'])} msgs/s)"))
    # The MIME walk: postsift's own CPU per message with it (target ≤ 0.5 ms at 4 KiB; 0.33 ms
    # before the walk existed), and clamd-mode msgs/s with it within 10 % of whole-message scanning.
    for conc in (16, 1):
        for kind in WALK_KINDS:
            wk, wh = W.get(("postsift-walk", kind, conc)), W.get(("postsift-whole", kind, conc))
            if not (wk and wh):
                continue
            label = f"{WALK_KINDS[kind]}, {size_label(wk['size'])}{' mean' if kind == 'mix' else ''}, conc {conc}"
            if wk["cpu_ms"] is not None:
                target = " — target ≤ 0.5 ms (0.33 before the walk)" if kind == "synthetic" else ""
                TR.append((f"postsift's own CPU per message, clamd mode with the walk ({label}){target}",
                           f"{fmt(wk['cpu_ms'], 2)} ms (whole-message only, same run: {fmt(wh['cpu_ms'], 2)} ms; "
                           f"clamd {fmt(wk['cpu_clamd_ms'], 2)} vs {fmt(wh['cpu_clamd_ms'], 2)} ms)"))
            pr, lo, hi = paired_ratio(wk, wh)
            if pr:
                target = " — target ≥ 90 %" if kind == "synthetic" else ""
                TR.append((f"clamd-mode msgs/s with the walk as % of whole-message scanning ({label}){target}",
                           f"{100 * pr:.1f} % (median of {len(wk['run_mps'])} paired runs, {100 * lo:.0f}–{100 * hi:.0f} %; "
                           f"medians {fmt(wk['mps'])} vs {fmt(wh['mps'])} msgs/s)"))
    AL = [x for x in (added_latency(a.work, m) for m in ("noscan", "clamd", "clamd+spamd", "clamd+rspamd")) if x]
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
    AUTH_L = auth_section(a.work, auth_rows, meta, TR)
    HOP_L = hop_section([r for r in rows if r["filter"] in HOP_FILTERS], TR)
    w("| target | value |")
    w("|---|---|")
    for k, v in TR:
        w(f"| {k} | {v} |")
    w("")

    # --- the MIME walk
    if W:
        w("## MIME walk: clamd mode with the walk and whole-message only")
        w("")
        w("Two postsifts in clamd mode run side by side, their runs alternating: `walk` with the default "
          "`[parts]` (clamd scans the whole message, then every part the walk decoded) and `whole` with "
          "`[parts] enabled = false` (the whole message only). msgs/s and CPU per message: median over "
          "the runs (smtp-source for the synthetic message, loadgen for the mix, whose messages it sends "
          "in turn). walk / whole: the median, over the run numbers, of walk run r's msgs/s divided by "
          "whole run r's (each pair ran back to back, so a machine whose speed drifts moves both), with "
          "its range. CPU = user + system time of postsift's process and of clamd's, per message.")
        w("")
        w("| message | conc | runs × msgs | walk msgs/s | whole msgs/s | walk / whole | postsift CPU ms/msg walk / whole | "
          "clamd CPU ms/msg walk / whole | p99 ms walk / whole (loadgen) | load1 | other work % | exactly once |")
        w("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for kind in WALK_KINDS:
            for conc in sorted({k[2] for k in W if k[1] == kind}):
                wk, wh = W.get(("postsift-walk", kind, conc)), W.get(("postsift-whole", kind, conc))
                if not (wk and wh):
                    continue
                pr, lo, hi = paired_ratio(wk, wh)
                ratio = f"{100 * pr:.1f} % ({100 * lo:.0f}–{100 * hi:.0f})" if pr else "–"
                once = "yes" if wk["once"].startswith("yes") and wh["once"].startswith("yes") else f"walk: {wk['once']}; whole: {wh['once']}"
                w(f"| {WALK_KINDS[kind]}, {size_label(wk['size'])}{' mean' if kind == 'mix' else ''} | {conc} | "
                  f"{wk['runs']}×{wk['msgs']} ({wk['tool']}) | {fmt(wk['mps'])} ({fmt(wk['mps_min'])}–{fmt(wk['mps_max'])}) | "
                  f"{fmt(wh['mps'])} ({fmt(wh['mps_min'])}–{fmt(wh['mps_max'])}) | {ratio} | "
                  f"{fmt(wk['cpu_ms'], 2)} / {fmt(wh['cpu_ms'], 2)} | {fmt(wk['cpu_clamd_ms'], 2)} / {fmt(wh['cpu_clamd_ms'], 2)} | "
                  f"{fmt(wk['lg_p99_ms'])} / {fmt(wh['lg_p99_ms'])} | {fmt(wk['load1'], 2)} | "
                  f"{fmt(wk['foreign_pct'], 0)} / {fmt(wh['foreign_pct'], 0)} ({fmt(max(wk['foreign_max'] or 0, wh['foreign_max'] or 0), 0)}) | {once} |")
        w("")

    L.extend(AUTH_L)
    L.extend(HOP_L)

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
        w("| filter | load | delivered | wall s | peak RSS MiB (sum) | largest process MiB | procs | idle RSS MiB | clamd peak MiB | CPU ms/msg filter / clamd | other work % | notes |")
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in mem_rows:
            f = r["filter"].replace("-mem", "")
            idle_kb = fnum((idle.get(f, "0 0 0 0 0").split() or ["0"])[0])
            w(f"| {f} ({r['setting'].split(';', 1)[1] if ';' in r['setting'] else 'max_sessions=64'}) | "
              f"{r['conc']} session(s) × {size_label(r['size'])} | {r['ok']}/{r['msgs']} (sink {r['sink']}) | "
              f"{fmt(fnum(r['wall_s']))} | {fmt(mib(fnum(r['rss_kb'])))} | {fmt(mib(fnum(r['rss_proc_kb'])))} | "
              f"{r['nprocs']} | {fmt(mib(idle_kb))} | {fmt(mib(fnum(r['clamd_rss_kb'])))} | "
              f"{fmt(fnum(r.get('cpu_filter_ms')), 0)} / {fmt(fnum(r.get('cpu_clamd_ms')), 0)} | {fmt(fnum(r.get('foreign_cpu_pct')), 0)} | {r['note']} |")
        w("")

    # --- amavis sweep
    if sweep_rows:
        w("## amavisd `$max_servers` sweep")
        w("")
        w("| mode | max_servers | size | conc | msgs/s (median) | runs | peak RSS MiB (procs) | other work % |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for k, v in sorted(cells(sweep_rows).items(), key=lambda kv: (MODE_ORDER.get(kv[0][1], 9), kv[0][2])):
            d = summarize(k, v)
            chosen = " ← used" if best_ms.get(k[1]) == k[2].split("=")[1] else ""
            w(f"| {k[1]} | {k[2].split('=')[1]}{chosen} | {size_label(k[3])} | {k[4]} | {fmt(d['mps'])} | "
              f"{d['runs']}×{d['msgs']} | {fmt(mib(d['rss_kb']))} ({d['nprocs']}) | {fmt(d['foreign_pct'], 0)} |")
        w("")

    # --- details
    if grid:
        w("## All cells")
        w("")
        w("| filter | mode | setting | size | conc | runs × msgs | msgs/s median (min–max) | mean latency ms (Little) | "
          "loadgen msgs/s | loadgen mean / p50 / p99 / max ms | CPU ms/msg filter / clamd / spamd | peak RSS MiB (largest proc, procs) | clamd / spamd MiB | other work % (max) | exactly once |")
        w("|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for d in ordered:
            w(f"| {d['filter']} | {d['mode']} | {d['setting']} | {size_label(d['size'])} | {d['conc']} | "
              f"{d['runs']}×{d['msgs']} | {fmt(d['mps'])} ({fmt(d['mps_min'])}–{fmt(d['mps_max'])}) | "
              f"{fmt(d['lat_little_ms'], 2)} | {fmt(d['lg_mps'])} | {fmt(d['lg_mean_ms'], 2)} / {fmt(d['lg_p50_ms'], 2)} / "
              f"{fmt(d['lg_p99_ms'], 2)} / {fmt(d['lg_max_ms'], 2)} | "
              f"{fmt(d['cpu_ms'], 2)} / {fmt(d['cpu_clamd_ms'], 2)} / {fmt(d['cpu_spamd_ms'], 1)} | "
              f"{fmt(mib(d['rss_kb']))} ({fmt(mib(d['rss_proc_kb']))}, {d['nprocs']}) | "
              f"{fmt(mib(d['clamd_kb']))} / {fmt(mib(d['spamd_kb']))} | {fmt(d['foreign_pct'], 0)} ({fmt(d['foreign_max'], 0)}) | {d['once']} |")
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
            "rss_proc_kb", "nprocs", "clamd_kb", "spamd_kb", "cpu_ms", "cpu_clamd_ms", "cpu_spamd_ms", "foreign_pct", "sent", "missing", "refused", "sink_lost", "sink_dup", "once"]
    with open(os.path.join(a.out, f"{a.ts}.csv"), "w", newline="") as f:
        cw = csv.writer(f)
        cw.writerow(["postsift_rev", "nproc"] + cols)
        for d in ordered:
            cw.writerow([meta.get("postsift_rev", ""), meta.get("nproc", "")] +
                        [("" if d[c] is None else (f"{d[c]:.3f}" if isinstance(d[c], float) else d[c])) for c in cols])
        # the amavisd sweep and the memory runs, same columns
        for k, v in sorted(cells(sweep_rows + info_rows + mem_rows + walk_rows + auth_rows).items()):
            d = summarize(k, v)
            cw.writerow([meta.get("postsift_rev", ""), meta.get("nproc", "")] +
                        [("" if d[c] is None else (f"{d[c]:.3f}" if isinstance(d[c], float) else d[c])) for c in cols])
    # latest.* is the latest run of the grid; a partial run (`bench/run walk`, `memory`) leaves it.
    if meta.get("action", "all") in ("all", "throughput"):
        shutil.copyfile(os.path.join(a.out, f"{a.ts}.md"), os.path.join(a.out, "latest.md"))
        shutil.copyfile(os.path.join(a.out, f"{a.ts}.csv"), os.path.join(a.out, "latest.csv"))
    sys.stdout.write(md)
    bad = [d for d in ordered + list(W.values()) if not d["once"].startswith("yes")]
    bad += [d for d in (summarize(k, v) for k, v in cells(auth_rows).items()) if not d["once"].startswith("yes")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
