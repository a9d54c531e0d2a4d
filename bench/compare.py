#!/usr/bin/env python3
"""Side by side: the reports of one scenario run against several servers.

    bench/compare.py DIR TARGET...    (reads DIR/TARGET/report.json)

Prints Markdown: convergence and cost per server, then what each server sent
per change and connected proxy during the scenario (from the report's
scenario_totals), by xDS type.
"""
import json
import os
import sys

if len(sys.argv) < 3:
    sys.exit(__doc__)
root, targets = sys.argv[1], sys.argv[2:]
reports = {t: json.load(open(os.path.join(root, t, "report.json"))) for t in targets}


def num(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v)


def milestones(r):
    """Mean time from a change's write until each watched metric changed."""
    seen = {}
    for ch in r["changes"]:
        for metric, ms in (ch.get("milestones_ms") or {}).items():
            if ms is not None:
                seen.setdefault(metric, []).append(ms)
    return ", ".join(f"{m}: {sum(v) / len(v):,.0f}" for m, v in sorted(seen.items())) or "-"


def table(head, rows):
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


rows = []
for t, r in reports.items():
    p, c, tg = r["proxies"], r["convergence"], r.get("target") or {}
    rows.append(
        [
            t,
            f"{p['connected']:,} / {p['synced']:,} / {p['converged']:,}",
            f"{len(r['changes'])}",
            f"{c['converged']:,}/{c['affected']:,}",
            num(c["p50_ms"]),
            num(c["p90_ms"]),
            num(c["p99_ms"]),
            num(c["max_ms"]),
            num(tg.get("rss_kb_per_proxy"), "{:.1f}"),
            num(tg.get("peak_rss_kb", 0) / 1024),
            num((tg.get("cpu_s_per_push_per_proxy") or 0) * 1e3 or None, "{:.3f}"),
            num(r.get("initial_sync_ms")),
            f"{r['nacks']}/{r['reconnects']}",
            milestones(r),
        ]
    )
table(
    [
        "server",
        "connected / synced / converged",
        "changes",
        "pairs converged",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "RSS KB/proxy",
        "peak RSS MB",
        "CPU ms/change/proxy",
        "initial sync ms",
        "NACKs/reconnects",
        "write→milestone ms (mean)",
    ],
    rows,
)

rows = []
for t, r in reports.items():
    s = r.get("scenario_totals") or {}
    # Every connected proxy, affected or not: a server may push to proxies a
    # change does not concern.
    per = len(r["changes"]) * r["proxies"]["connected"] or None
    affected = sum(ch["affected"] for ch in r["changes"])
    row = [t, "-" if per is None else f"{affected / per:.2f}"]
    for ty in ("cds", "eds", "lds", "rds"):
        n, res, b = (s.get(f"{ty}_{k}", 0) for k in ("responses", "resources", "resource_bytes"))
        row.append("-" if per is None else f"{n / per:.2f} / {res / per:.1f} / {b / per / 1024:.1f}")
    row.append("-" if per is None else f"{s.get('bytes', 0) / per / 1024:.1f}")
    rows.append(row)
print("Received per change and connected proxy during the scenario (responses / resources / KB of resource bodies):")
print()
table(["server", "share affected", "CDS", "EDS", "LDS", "RDS", "KB on the wire"], rows)
