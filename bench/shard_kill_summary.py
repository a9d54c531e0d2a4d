#!/usr/bin/env python3
"""Summarise a bench/shard-kill.sh run: loadtest's report (convergence of the
changes before, in flight at, during and after the kill), the frontends'
metrics scraped before and after the run, and the processes' logs (each
completed re-home, and every warning, timed from the kill).

    python3 bench/shard_kill_summary.py OUT LOG_DIR

OUT holds report.json and frontend-N.metrics.{before,after}; LOG_DIR the
topology's logs (bench/shard-kill.sh passes its run's; with KEEP_LOGS they
are kept in OUT/logs and can be summarised again). Writes OUT/summary.json
and prints the summary.
"""
import collections
import datetime
import glob
import json
import os
import re
import sys

out, logs = sys.argv[1], sys.argv[2]
r = json.load(open(f"{out}/report.json"))
d = r["disruption"]
kill_t = d["unix_ns"] / 1e9


def metrics(path):
    m = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        m[name] = float(value)
    return m


def delta(name):
    paths = sorted(glob.glob(f"{out}/frontend-*.metrics.before"))
    return sum(metrics(p.replace(".before", ".after")).get(name, 0) - metrics(p).get(name, 0) for p in paths)


def pct(xs, q):
    """Nearest-rank quantile, as loadtest computes them."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    rank = -(-q * len(xs) // 1)
    return xs[min(len(xs) - 1, max(0, int(rank) - 1))]


def when(line):
    return datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()


# Each completed re-home (the frontends' debug lines) and every warning, by process.
moves = []
warnings = {}
for path in sorted(glob.glob(f"{logs}/*.log")):
    name = os.path.basename(path)[:-4]
    kinds = collections.defaultdict(list)
    for line in open(path, errors="replace"):
        if " WARN " not in line and " ERROR " not in line and "re-homed" not in line:
            continue
        try:
            t = when(line)
        except ValueError:
            continue
        if "re-homed" in line:
            f = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))
            moves.append({"t": t, "ms": float(f["duration_ms"]), "reason": f["reason"].strip('"'),
                          "resources": int(f["resources"]), "bytes": int(f["bytes"])})
            continue
        # The message without its fields, addresses and numbers: one kind per message.
        message = line.split(" ", 2)[-1]
        message = re.sub(r'\b\w+=("[^"]*"|\S+)', "", message)
        message = re.sub(r"\b\d+(\.\d+)*(:\d+)?\b", "N", message).strip()
        kinds[message[:150]].append(t - kill_t)
    if kinds:
        warnings[name] = sorted(
            ({"count": len(ts), "message": m, "first_s": min(ts), "last_s": max(ts)} for m, ts in kinds.items()),
            key=lambda w: -w["count"])

after = [m for m in moves if m["t"] >= kill_t]
ms = [m["ms"] for m in after]
since = [(m["t"] - kill_t) * 1e3 for m in after]
summary = {
    "proxies": r["proxies"],
    "nacks": r["nacks"],
    "reconnects": r["reconnects"],
    "errors": r["errors"],
    "convergence": {k: r["convergence"][k] for k in ("affected", "converged", "p50_ms", "p90_ms", "p99_ms", "max_ms")},
    "changes": len(r["changes"]),
    "store_write_ms_p50": pct([c["store_write_ms"] for c in r["changes"] if c.get("store_write_ms")], .5),
    "disruption": {k: v for k, v in d.items() if k != "phases"},
    "phases": [{k: v for k, v in p.items() if k != "cdf"} for p in d["phases"]],
    "rehomes": {
        "completed_after_kill": len(after),
        "by_reason": {reason: sum(1 for m in after if m["reason"] == reason)
                      for reason in ("upstream_failure", "membership")},
        "decision_to_converged_ms": {"p50": pct(ms, .5), "p90": pct(ms, .9), "p99": pct(ms, .99),
                                     "max": max(ms, default=float("nan"))},
        "signal_to_converged_ms": {"p50": pct(since, .5), "p99": pct(since, .99),
                                   "last": max(since, default=float("nan"))},
        "resources_sent": sum(m["resources"] for m in after),
        "bytes_sent": sum(m["bytes"] for m in after),
        "moves_started": {reason: delta(f'meshplane_frontend_rehomes_total{{reason="{reason}"}}')
                          for reason in ("upstream_failure", "membership")},
        "upstream_errors": delta("meshplane_frontend_upstream_errors_total"),
    },
    "warnings": warnings,
    "peak_rss_mb": (r.get("target") or {}).get("peak_rss_kb", 0) / 1024,
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)


def f(v):
    return "-" if v is None or v != v else f"{v:,.0f}"


print(f"== {d['signal']} to {d['name']} (PID {d['pid']}) at {d['scenario_at_s']:.1f} s into the churn"
      f"{' FAILED: ' + d['error'] if d.get('error') else ''}; gone after {f(d.get('gone_after_ms'))} ms")
print(f"   proxies: {r['proxies']['connected']:,} connected, {r['proxies']['converged']:,} converged on every change;"
      f" reconnects {r['reconnects']} (after the kill {d['reconnects_after']}), NACKs {r['nacks']}; errors {r['errors']}")
c = r["convergence"]
print(f"   {len(r['changes'])} changes, {c['converged']:,} of {c['affected']:,} pairs converged;"
      f" p50 {f(c['p50_ms'])} p90 {f(c['p90_ms'])} p99 {f(c['p99_ms'])} max {f(c['max_ms'])} ms"
      f" (store write p50 {summary['store_write_ms_p50']:.1f} ms)")
for p in d["phases"]:
    print(f"   {p['phase']:<10} {p['changes']:>3} changes, {p['converged']:,}/{p['affected']:,} pairs"
          f" ({p['converged_after_kill']:,} after the kill): p50 {f(p['p50_ms'])} p90 {f(p['p90_ms'])}"
          f" p99 {f(p['p99_ms'])} max {f(p['max_ms'])} ms")
rh = summary["rehomes"]
x, y = rh["decision_to_converged_ms"], rh["signal_to_converged_ms"]
print(f"   re-homes after the kill: {rh['completed_after_kill']:,} completed {rh['by_reason']};"
      f" moves started {rh['moves_started']}, upstream errors {rh['upstream_errors']:.0f}")
print(f"     decision -> converged p50 {f(x['p50'])} p90 {f(x['p90'])} p99 {f(x['p99'])} max {f(x['max'])} ms;"
      f" signal -> converged p50 {f(y['p50'])} p99 {f(y['p99'])} last {f(y['last'])} ms;"
      f" sent {rh['resources_sent']:,} resources, {rh['bytes_sent']:,} bytes")
print(f"   control plane peak RSS {summary['peak_rss_mb']:,.0f} MB (shards + frontends)")
for name, ws in warnings.items():
    print(f"   warnings of {name} (s from the kill):")
    for w in ws[:6]:
        print(f"     {w['count']:>6} {w['first_s']:+7.1f} .. {w['last_s']:+7.1f}  {w['message'][:110]}")
