#!/usr/bin/env bash
# One benchmark against the sharded topology (scripts/topology.sh: etcd,
# registry-sync, F frontends, S shards on loopback): proxies are spread over
# the frontends, and RSS/CPU are the sums over every process (per-process RSS
# is in the report's timeline and plot).
#
#   bench/topology.sh NAME PROXIES [loadtest run options...]
#
# Env: SHARDS=2 FRONTENDS=2, SERVICES/PODS/NAMESPACES as bench/run.sh,
# MESHPLANE_BIN, LOADTEST_BIN, OUT, MESHPLANE_BASE_PORT (default 21000).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=${1:?usage: bench/topology.sh NAME PROXIES [loadtest run options...]}
proxies=${2:?usage: bench/topology.sh NAME PROXIES [loadtest run options...]}
shift 2
export MESHPLANE_BIN=${MESHPLANE_BIN:-$root/target/release/meshplane}
LOADTEST_BIN=${LOADTEST_BIN:-$root/target/release/loadtest}
OUT=${OUT:-$root/bench/results}
SHARDS=${SHARDS:-2}
FRONTENDS=${FRONTENDS:-2}
BASE=${MESHPLANE_BASE_PORT:-21000}
export MESHPLANE_BASE_PORT=$BASE
export MESHPLANE_LOG=${MESHPLANE_LOG:-warn}

out="$OUT/$name"
mkdir -p "$out"
work=$(mktemp -d /tmp/meshplane-bench.XXXXXX)
export MESHPLANE_RUN_DIR="$work/run"
# shellcheck source=/dev/null
source "$root/scripts/peer-env.sh" >/dev/null
"$LOADTEST_BIN" gen-mesh --services "${SERVICES:-1000}" --pods-per-service "${PODS:-10}" \
	--namespaces "${NAMESPACES:-20}" --out "$work/mesh"
cleanup() {
	"$root/scripts/topology.sh" stop >/dev/null 2>&1 || true
	mkdir -p "$out/logs" && cp "$MESHPLANE_RUN_DIR"/logs/*.log "$out/logs/" 2>/dev/null || true
	find "$out/logs" -empty -delete 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
"$root/scripts/topology.sh" start --shards "$SHARDS" --frontends "$FRONTENDS" --config-dir "$work/mesh"

xds=$(seq 0 $((FRONTENDS - 1)) | sed "s/.*/127.0.0.1:\$(($BASE + 10 + &))/" | while read -r e; do eval echo "$e"; done | paste -sd,)
pids=$(cat "$MESHPLANE_RUN_DIR"/pids/*.pid | paste -sd,)
{
	echo "# $(date -u +%FT%TZ) $name: $proxies proxies, $SHARDS shards, $FRONTENDS frontends; pids $(cd "$MESHPLANE_RUN_DIR/pids" && for f in *.pid; do printf '%s=%s ' "${f%.pid}" "$(cat "$f")"; done)"
	echo "# loadtest run --proxies $proxies $*"
} >"$out/loadtest.log"
"$LOADTEST_BIN" run --xds "$xds" --mesh "$work/mesh" --proxies "$proxies" --target-pid "$pids" \
	--target-admin "127.0.0.1:$((BASE + 200))" --report "$out/report.json" --plots "$out" "$@" 2>&1 | tee -a "$out/loadtest.log"
