#!/usr/bin/env bash
# Memory of one frontend relaying PROXIES loadtest proxies to one shard, on
# the standard mesh: etcd, registry-sync and the shard from
# scripts/topology.sh (--frontends 0), the frontend started here, optionally
# under heaptrack (then MESHPLANE_BIN must be a --no-default-features build,
# see bench/heap-profile.sh). Prints the frontend's and the shard's RSS
# before and 45 s after the proxies connect, and loadtest's summary (its
# "KB RSS per proxy" is the frontend's); with --heaptrack, the frontend's
# live heap at that moment by allocation site.
#
#   bench/frontend-mem.sh PROXIES [OUT] [--heaptrack]     (default OUT: /tmp/meshplane-frontend-mem)
#
# Ports from MESHPLANE_BASE_PORT (default 28000): etcd BASE, frontend xDS BASE+10, admin BASE+30.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
proxies=${1:?usage: bench/frontend-mem.sh PROXIES [OUT] [--heaptrack]}
out=${2:-/tmp/meshplane-frontend-mem}
heaptrack=${3:-}
bin=${MESHPLANE_BIN:-$root/target/release/meshplane}
loadtest=${LOADTEST_BIN:-$root/target/release/loadtest}
base=${MESHPLANE_BASE_PORT:-28000}
cd "$root"
# shellcheck source=/dev/null
source scripts/peer-env.sh >/dev/null
mkdir -p "$out"
rm -rf "${out:?}"/*
"$loadtest" gen-mesh --services 1000 --pods-per-service 10 --namespaces 20 --out "$out/mesh" >/dev/null
export MESHPLANE_RUN_DIR=$out/run MESHPLANE_BASE_PORT=$base MESHPLANE_BIN=$bin MESHPLANE_LOG=warn
frontend=()
if [[ $heaptrack == --heaptrack ]]; then
	if grep -q _rjem_malloc "$bin"; then
		echo "$bin allocates with jemalloc, which heaptrack cannot see: build it with --no-default-features" >&2
		exit 1
	fi
	frontend=(heaptrack -o "$out/heaptrack")
fi
scripts/topology.sh start --shards 1 --frontends 0 --config-dir "$out/mesh" >/dev/null
pid=
cleanup() {
	[[ -n $pid ]] && kill -9 "$pid" 2>/dev/null
	scripts/topology.sh stop >/dev/null 2>&1 || true
	rm -rf "$out/mesh" "$out/run/etcd"
}
trap cleanup EXIT
"${frontend[@]}" "$bin" frontend --store "etcd://127.0.0.1:$base" --xds-addr "127.0.0.1:$((base + 10))" \
	--admin-addr "127.0.0.1:$((base + 30))" >"$out/frontend.log" 2>&1 &
launcher=$!
for _ in $(seq 1 600); do curl -fs "http://127.0.0.1:$((base + 30))/ready" >/dev/null 2>&1 && break; sleep 0.2; done
for p in $(pgrep -f "frontend --store etcd://127.0.0.1:$base"); do
	[[ $(readlink "/proc/$p/exe") == "$(readlink -f "$bin")" ]] && pid=$p
done
[[ -n $pid ]] || { echo "the frontend did not start; see $out/frontend.log" >&2; exit 1; }
shard=$(cat "$out/run/pids/shard-0.pid")
rss() { awk '/VmRSS/ {printf "%d MB", $2 / 1024}' "/proc/$1/status"; }
echo "before: frontend $(rss "$pid"), shard $(rss "$shard")"
"$loadtest" run --xds "127.0.0.1:$((base + 10))" --mesh "$out/mesh" --proxies "$proxies" --target-pid "$pid" \
	--scenario steady --duration 70 --change-interval 10 --quiet >"$out/loadtest.log" 2>&1 &
run=$!
sleep 45
echo "after:  frontend $(rss "$pid"), shard $(rss "$shard")"
kill -9 "$pid"
pid=
wait "$launcher" 2>/dev/null || true
wait "$run" 2>/dev/null || true
grep -E 'control plane|nacks' "$out/loadtest.log" || true
if [[ $heaptrack == --heaptrack ]]; then
	heaptrack_print -f "$out"/heaptrack.zst --flamegraph-cost-type leaked -F "$out/leaked.stacks" -p 0 -a 0 -T 0 \
		| grep -E 'peak heap|total memory leaked'
	python3 "$root/bench/heap_categories.py" "$out/leaked.stacks" "$proxies" --sites 15
fi
