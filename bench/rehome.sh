#!/usr/bin/env bash
# Re-homing under load (issue 3): the sharded topology on loopback, thousands
# of simulated proxies through one frontend, then
#   phase 1: kill -9 the shard that serves the most proxies,
#   phase 2: gracefully stop (drain) the busiest remaining shard,
# measuring for each the time from the decision to move to each re-homed
# proxy converging on its new owner, the time from the kill/SIGTERM to the
# last one, and what the new owners sent versus a full push.
#
#   bench/rehome.sh
#
# Environment (defaults):
#   PROXIES=3000 SERVICES=200 PODS=10 NAMESPACES=10 SHARDS=3
#   DURATION=120         loadtest scenario seconds after the initial sync
#   FULL_PUSH_SAMPLE=500 views read per phase to size a full push
#   BASE_PORT=27300      topology ports (see scripts/topology.sh)
#   OUT=bench/results/rehome
#   SKIP_BUILD=          set: no release build
#   KEEP_LOGS=           set: copy the processes' logs to OUT/logs
#   MESHPLANE_BIN, LOADTEST_BIN   default: target/release of this checkout
#   MESHPLANE_LOG=warn,meshplane_frontend::rehome=debug (the per-move lines)
# Writes OUT/{summary.txt,summary.json,report.json,loadtest.log} and the
# per-phase proxy lists, metrics scrapes and full-push sizes.
# Everything runs on loopback and is stopped by PID at the end.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
PROXIES=${PROXIES:-3000}
SERVICES=${SERVICES:-200}
PODS=${PODS:-10}
NAMESPACES=${NAMESPACES:-10}
SHARDS=${SHARDS:-3}
DURATION=${DURATION:-120}
FULL_PUSH_SAMPLE=${FULL_PUSH_SAMPLE:-500}
BASE=${BASE_PORT:-27300}
OUT=${OUT:-$root/bench/results/rehome}
export MESHPLANE_LOG=${MESHPLANE_LOG:-warn,meshplane_frontend::rehome=debug}

# shellcheck source=../scripts/peer-env.sh
source scripts/peer-env.sh >/dev/null
if [[ -z ${SKIP_BUILD:-} ]]; then
	cargo build --release -p meshplane -p meshplane-loadtest
fi
export MESHPLANE_BIN=${MESHPLANE_BIN:-$root/target/release/meshplane}
LOADTEST=${LOADTEST_BIN:-$root/target/release/loadtest}

work=$(mktemp -d /tmp/meshplane-rehome.XXXXXX)
export MESHPLANE_RUN_DIR=$work/topology MESHPLANE_BASE_PORT=$BASE
mesh=$work/mesh
frontend_admin=http://127.0.0.1:$((BASE + 30))
xds=127.0.0.1:$((BASE + 10))
lt_pid=
mkdir -p "$OUT"
# Nothing of an earlier run may be read as this one's.
rm -rf "$OUT/logs" "$OUT"/{summary.txt,summary.json,report.json,loadtest.log}
rm -f "$OUT"/*.proxies "$OUT"/*.metrics.* "$OUT"/*.full_push.json "$OUT"/*.t0 "$OUT"/*.victim

cleanup() {
	if [[ -n $lt_pid ]] && kill -0 "$lt_pid" 2>/dev/null; then
		kill -TERM "$lt_pid" 2>/dev/null || true
		wait "$lt_pid" 2>/dev/null || true
	fi
	MESHPLANE_STOP_GRACE=10 scripts/topology.sh stop >/dev/null 2>&1 || true
	if [[ -n ${KEEP_LOGS:-} ]]; then
		cp -r "$work/topology/logs" "$OUT/logs" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/analyze.py" <<'EOF'
import datetime, json, re, sys, urllib.parse, urllib.request
cmd, out, topo, base = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
out_name = sys.argv[5] if len(sys.argv) > 5 else None
sample = int(sys.argv[6]) if len(sys.argv) > 6 else 500

def parse_metrics(path):
    m = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        m[name] = float(value)
    return m

def varint_len(n):
    k = 1
    while n >= 0x80:
        n >>= 7
        k += 1
    return k

def field(n):  # tag + length + n bytes of a length-delimited field
    return 1 + varint_len(n) + n if n else 0

TYPE_URLS = {
    "cds": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "eds": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "lds": "type.googleapis.com/envoy.config.listener.v3.Listener",
    "rds": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "sds": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
}

def full_push(dump):
    """Resources and encoded bytes of a full Delta push of a proxy's view
    (one DeltaDiscoveryResponse per non-empty type, as the relay counts them)."""
    resources = total = 0
    for ty, entries in dump["resources"].items():
        if not entries:
            continue
        url = TYPE_URLS.get(ty, "")
        body = 0
        for e in entries:
            any_len = field(len(url)) + field(e["bytes"])
            body += field(field(len(e["name"])) + field(len(e["version"])) + field(any_len))
        resources += len(entries)
        # type_url, nonce ("E.n"), system_version_info (revision)
        total += body + field(len(url)) + field(4) + field(6)
    return resources, total

def ts(line):
    t = line.split()[0]
    return datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()


def fullpush(name):
    """A full push to the proxies a phase moved: each one's view on its new
    owner (every shard serves the same snapshot), from /debug/config_dump,
    read while they are still connected."""
    conns = json.load(urllib.request.urlopen(f"http://127.0.0.1:{base + 30}/debug/connections", timeout=10))
    owner = {p["proxy"]: p["shard"] for p in conns["proxies"]}
    res = byt = n = 0
    proxies = open(f"{out}/{name}.proxies").read().split()
    # An even sample: reading every view takes ~15 ms each.
    step = max(1, len(proxies) // sample)
    for p in proxies[::step]:
        shard = owner.get(p)
        if not shard:
            continue
        i = int(shard.rsplit("-", 1)[1])
        url = f"http://127.0.0.1:{base + 200 + i}/debug/config_dump?bodies=false&proxyID={urllib.parse.quote(p)}"
        try:
            dump = json.load(urllib.request.urlopen(url, timeout=10))
        except Exception as e:
            print(f"config_dump of {p} on {shard}: {e}", file=sys.stderr)
            continue
        r, b = full_push(dump)
        res, byt, n = res + r, byt + b, n + 1
    # Scaled from the sample to every proxy the phase moved.
    k = len(proxies) / max(n, 1)
    fp = {"proxies": len(proxies), "sampled": n, "resources": round(res * k), "bytes": round(byt * k),
          "per_proxy_resources": res / max(n, 1), "per_proxy_bytes": byt / max(n, 1)}
    json.dump(fp, open(f"{out}/{name}.full_push.json", "w"))
    print(f"{name}: a full push to the {len(proxies)} proxies (views of {n} read): "
          f"{fp['resources']} resources, {fp['bytes']} bytes")

if cmd == "fullpush":
    fullpush(out_name)
    sys.exit(0)

rehomed = []
for line in open(f"{topo}/logs/frontend-0.log"):
    if "re-homed" not in line:
        continue
    f = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))
    rehomed.append({
        "t": ts(line),
        "proxy": f["proxy"].strip('"'),
        "reason": f["reason"].strip('"'),
        "ms": float(f["duration_ms"]),
        "resources": int(f["resources"]),
        "bytes": int(f["bytes"]),
    })

def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    i = min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))
    return xs[i]

summary = {}
phases = [("kill9", "upstream_failure"), ("drain", "membership")]
starts = [float(open(f"{out}/{name}.t0").read()) for name, _ in phases] + [float("inf")]
for k, (name, reason) in enumerate(phases):
    t0, t_next = starts[k], starts[k + 1]
    victim = open(f"{out}/{name}.victim").read().strip()
    proxies = set(open(f"{out}/{name}.proxies").read().split())
    mine = [r for r in rehomed if t0 <= r["t"] < t_next and r["reason"] == reason]
    moved = [r for r in mine if r["proxy"] in proxies]
    others = [r for r in mine if r["proxy"] not in proxies]
    before, after = parse_metrics(f"{out}/{name}.metrics.before"), parse_metrics(f"{out}/{name}.metrics.after")
    d = lambda k: after.get(k, 0) - before.get(k, 0)
    lab = f'{{reason="{reason}"}}'
    ms = [r["ms"] for r in moved]
    since_t0 = [(r["t"] - t0) * 1e3 for r in moved]
    s = {
        "victim": victim,
        "proxies_on_victim": len(proxies),
        "rehomed": len(moved),
        "rehomed_not_on_victim": len(others),
        "rehome_ms": {"p50": pct(ms, .5), "p90": pct(ms, .9), "p99": pct(ms, .99), "max": max(ms, default=float("nan"))},
        "since_signal_ms": {"p50": pct(since_t0, .5), "p99": pct(since_t0, .99), "last": max(since_t0, default=float("nan"))},
        "metrics": {
            "histogram_count": d(f"meshplane_frontend_rehome_duration_seconds_count{lab}"),
            "histogram_sum_s": d(f"meshplane_frontend_rehome_duration_seconds_sum{lab}"),
            "rehome_resources": d(f"meshplane_frontend_rehome_resources_total{lab}"),
            "rehome_bytes": d(f"meshplane_frontend_rehome_bytes_total{lab}"),
            "rehomes_counter": d(f"meshplane_frontend_rehomes_total{lab}"),
            "moves_started": {r: d(f'meshplane_frontend_rehomes_total{{reason="{r}"}}') for r in ("membership", "upstream_failure")},
            "upstream_errors": d("meshplane_frontend_upstream_errors_total"),
            "stale_acks": d('meshplane_frontend_stale_nonces_total{kind="ack"}'),
            "stale_nacks": d('meshplane_frontend_stale_nonces_total{kind="nack"}'),
        },
        "sent": {"resources": sum(r["resources"] for r in moved), "bytes": sum(r["bytes"] for r in moved),
                 "proxies_sent_anything": sum(1 for r in moved if r["resources"] > 0)},
    }
    summary[name] = s

for name in ("kill9", "drain"):
    try:
        summary[name]["full_push"] = json.load(open(f"{out}/{name}.full_push.json"))
    except OSError:
        pass

report = json.load(open(f"{out}/report.json"))
summary["loadtest"] = {
    "proxies": report["proxies"],
    "nacks": report["nacks"],
    "reconnects": report["reconnects"],
    "errors": report.get("errors"),
    "convergence": {k: report["convergence"].get(k) for k in ("affected", "converged", "p50_ms", "p99_ms", "max_ms")},
    "initial_sync_ms": report.get("initial_sync_ms"),
    "frontend_peak_rss_mb": (report.get("target") or {}).get("peak_rss_kb", 0) / 1024,
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)

for name in ("kill9", "drain"):
    s = summary[name]
    fp = s.get("full_push", {})
    print(f"== {name}: {s['victim']} had {s['proxies_on_victim']} proxies; {s['rehomed']} re-homes logged "
          f"(+{s['rehomed_not_on_victim']} of other proxies)")
    r = s["rehome_ms"]
    print(f"   decision -> converged: p50 {r['p50']:.0f} ms, p90 {r['p90']:.0f} ms, p99 {r['p99']:.0f} ms, max {r['max']:.0f} ms")
    r = s["since_signal_ms"]
    print(f"   signal -> converged:   p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms, last {r['last']:.0f} ms")
    m = s["metrics"]
    print(f"   metrics: {m['histogram_count']:.0f} re-homes, mean {m['histogram_sum_s'] / max(m['histogram_count'], 1) * 1e3:.0f} ms; "
          f"sent {m['rehome_resources']:.0f} resources, {m['rehome_bytes']:.0f} bytes; "
          f"stale acks {m['stale_acks']:.0f} nacks {m['stale_nacks']:.0f}")
    ms_ = m["moves_started"]
    extra = ms_["membership"] + ms_["upstream_failure"] - s["proxies_on_victim"]
    print(f"   moves started in this phase: {ms_['membership']:.0f} membership, {ms_['upstream_failure']:.0f} upstream_failure"
          + (f" ({extra:.0f} more than the victim's proxies: streams to other shards failed too)" if extra > 0 else "")
          + f"; upstream errors {m['upstream_errors']:.0f}")
    if fp:
        print(f"   full push to the same {fp['proxies']} proxies ({fp['sampled']} sampled): {fp['resources']} resources, {fp['bytes']} bytes "
              f"({fp['per_proxy_resources']:.0f} resources, {fp['per_proxy_bytes'] / 1024:.1f} KiB per proxy); "
              f"sent/full = {m['rehome_resources'] / max(fp['resources'], 1):.4f} resources, "
              f"{m['rehome_bytes'] / max(fp['bytes'], 1):.4f} bytes; "
              f"{s['sent']['proxies_sent_anything']} proxies were sent any resource")
l = summary["loadtest"]
print(f"== loadtest: {l['proxies']['synced']} of {l['proxies']['requested']} synced at the end, nacks {l['nacks']}, "
      f"reconnects {l['reconnects']}, errors {l['errors']}; endpoint changes: {l['convergence']}")
EOF

log() { echo "[rehome $(date -u +%T)] $*" | tee -a "$OUT/summary.txt" >&2; }
: >"$OUT/summary.txt"
now() { date +%s.%N; }
pid_of() { cat "$work/topology/pids/$1.pid"; }
metrics() { curl -fsS --max-time 10 "$frontend_admin/metrics"; }
connections() { curl -fsS --max-time 10 "$frontend_admin/debug/connections"; }


# registry-sync writes the whole directory as one etcd transaction: a mesh of
# this size is more operations (and bytes) than etcd takes by default.
real_etcd=$MESHPLANE_ETCD
export MESHPLANE_ETCD=$work/etcd
printf '#!/bin/sh\nexec %q "$@" --max-txn-ops 100000 --max-request-bytes 67108864\n' "$real_etcd" >"$MESHPLANE_ETCD"
chmod +x "$MESHPLANE_ETCD"

"$LOADTEST" gen-mesh --services "$SERVICES" --pods-per-service "$PODS" --namespaces "$NAMESPACES" --out "$mesh" >&2
scripts/topology.sh start --shards "$SHARDS" --config-dir "$mesh" >&2

log "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)," \
	"$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1), $(uname -r); load average $(cut -d' ' -f1-3 /proc/loadavg)"
log "mesh: $SERVICES services x $PODS pods in $NAMESPACES namespaces; $SHARDS shards, 2 frontends; $PROXIES proxies on frontend-0 ($xds)"

# The proxies, through frontend-0 only: its streams are the ones measured.
"$LOADTEST" run --xds "$xds" --proxies "$PROXIES" --mesh "$mesh" --scenario steady --duration "$DURATION" \
	--target-pid "$(pid_of frontend-0)" --report "$OUT/report.json" >"$OUT/loadtest.log" 2>&1 &
lt_pid=$!

# Every proxy synced (loadtest's progress line) and relayed to a shard.
deadline=$((SECONDS + 300))
until tail -n 3 "$OUT/loadtest.log" 2>/dev/null | grep -q "connected $PROXIES/$PROXIES synced $PROXIES "; do
	kill -0 "$lt_pid" 2>/dev/null || { log "loadtest exited early"; tail -20 "$OUT/loadtest.log" >&2; exit 1; }
	((SECONDS < deadline)) || { log "proxies not synced after 300 s"; exit 1; }
	sleep 1
done
log "all $PROXIES proxies synced: $(tail -n 1 "$OUT/loadtest.log")"
sleep 3

# Which shard serves which proxy, per frontend-0.
owners() {
	connections | python3 -c '
import json, sys, collections
c = json.load(sys.stdin)
by = collections.Counter(p["shard"] for p in c["proxies"])
print(" ".join(f"{s}={n}" for s, n in sorted(by.items(), key=lambda kv: -kv[1])))'
}
# busiest SHARD...: the shard (not among the excluded) with the most proxies.
busiest() {
	connections | python3 -c '
import json, sys, collections
c = json.load(sys.stdin)
excl = set(sys.argv[1:])
by = collections.Counter(p["shard"] for p in c["proxies"] if p["shard"] and p["shard"] not in excl)
print(by.most_common(1)[0][0])' "$@"
}
# proxies_of SHARD FILE: the proxies it serves, one per line.
proxies_of() {
	connections | python3 -c '
import json, sys
for p in json.load(sys.stdin)["proxies"]:
    if p["shard"] == sys.argv[1]:
        print(p["proxy"])' "$1" >"$2"
}
# rehomes REASON: completed re-homes of that reason (the histogram count).
rehomes() {
	metrics | awk -v r="$1" '$1 == "meshplane_frontend_rehome_duration_seconds_count{reason=\"" r "\"}" {print $2}'
}
# wait_rehomes REASON TARGET TIMEOUT
wait_rehomes() {
	local deadline=$((SECONDS + $3)) n
	while :; do
		n=$(rehomes "$1")
		((n >= $2)) && return 0
		((SECONDS < deadline)) || { log "only $n of $2 $1 re-homes completed within $3 s"; return 1; }
		sleep 0.2
	done
}

# phase NAME REASON SIGNAL
phase() {
	local name=$1 reason=$2 signal=$3 victim moved before t0 t_done
	log "owners before $name: $(owners)"
	victim=$(busiest "${killed[@]}")
	proxies_of "$victim" "$OUT/$name.proxies"
	moved=$(wc -l <"$OUT/$name.proxies")
	metrics >"$OUT/$name.metrics.before"
	before=$(rehomes "$reason")
	t0=$(now)
	kill "-$signal" "$(pid_of "$victim")"
	log "$name: load average $(cut -d' ' -f1-3 /proc/loadavg)"
	log "$name: SIG$signal to $victim (PID $(pid_of "$victim")), serving $moved proxies, at $t0"
	if wait_rehomes "$reason" $((before + moved)) 120; then
		t_done=$(now)
		log "$name: $moved $reason re-homes completed; polled at +$(python3 -c "print(f'{$t_done - $t0:.2f}')") s"
	fi
	python3 "$work/analyze.py" fullpush "$OUT" "$work/topology" "$BASE" "$name" "$FULL_PUSH_SAMPLE" | tee -a "$OUT/summary.txt" >&2
	# Let the lease expire or the drain finish: no proxy may move twice.
	sleep 8
	metrics >"$OUT/$name.metrics.after"
	echo "$t0" >"$OUT/$name.t0"
	echo "$victim" >"$OUT/$name.victim"
	killed+=("$victim")
	log "owners after $name: $(owners)"
}

killed=()
phase kill9 upstream_failure KILL
phase drain membership TERM

log "waiting for loadtest to end its ${DURATION} s scenario"
wait "$lt_pid" || log "loadtest exited with $?"
lt_pid=

python3 "$work/analyze.py" summary "$OUT" "$work/topology" "$BASE" | tee -a "$OUT/summary.txt"
