#!/usr/bin/env python3
"""Print the benchmark results in bench/results/*/report.json as a Markdown table."""
import glob
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def ms(v):
    return "-" if v is None else f"{v:,.0f}"


rows = []
for path in sorted(glob.glob(os.path.join(root, "*", "report.json"))):
    r = json.load(open(path))
    p, c, t, lt = r["proxies"], r["convergence"], r.get("target") or {}, r["loadtest"]
    params = r["parameters"]
    snap = [m.get("meshplane_shard_snapshot_revision") for m in (ch.get("milestones_ms", {}) for ch in r["changes"])]
    snap = [s for s in snap if s is not None]
    rows.append(
        [
            os.path.basename(os.path.dirname(path)),
            f"{p['requested']:,}",
            f"{params['api']}, {params['streams_per_conn']}/conn",
            f"{p['connected']:,} / {p['converged']:,}",
            f"{c['converged']:,}/{c['affected']:,}",
            ms(c["p50_ms"]),
            ms(c["p90_ms"]),
            ms(c["p99_ms"]),
            ms(c["max_ms"]),
            ms(sum(snap) / len(snap)) if snap else "-",
            f"{t['rss_kb_per_proxy']:.0f}" if t.get("rss_kb_per_proxy") is not None else "-",
            f"{t.get('peak_rss_kb', 0) / 1024:,.0f}",
            f"{t['cpu_s_per_push_per_proxy'] * 1e3:.2f}" if t.get("cpu_s_per_push_per_proxy") else "-",
            f"{t['resources_per_cpu_s'] / 1e3:,.0f}k" if t.get("resources_per_cpu_s") else "-",
            ms(r.get("initial_sync_ms")),
            ms(r.get("reconnect_storm_ms")),
            f"{r['nacks']}/{r['reconnects']}",
            f"{lt['rss_kb_per_proxy']:.1f}" if lt.get("rss_kb_per_proxy") is not None else "-",
        ]
    )
head = [
    "run",
    "proxies",
    "API",
    "connected / converged",
    "pairs converged",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "write→snapshot ms",
    "CP KB/proxy",
    "CP peak MB",
    "CP CPU ms/push/proxy",
    "CP res/CPU-s",
    "initial sync ms",
    "storm ms",
    "NACKs/reconnects",
    "loadtest KB/proxy",
]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for row in rows:
    print("| " + " | ".join(row) + " |")
