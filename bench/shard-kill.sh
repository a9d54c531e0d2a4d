#!/usr/bin/env bash
# A shard killed during churn: the sharded topology on loopback (etcd,
# registry-sync serving an empty directory, SHARDS shards, 2 frontends), the
# standard mesh written straight into etcd (`loadtest gen-mesh --store`),
# PROXIES proxies spread over both frontends, endpoint changes at RATE per
# second as store transactions (`--scenario churn`), and shard-0 killed
# KILL_AT seconds into the churn (`--kill-pid --kill-at`). loadtest reports the
# convergence of the changes before, in flight at, during and after the
# kill, reconnects and NACKs; the frontends' per-move log gives how long the
# re-homes took.
#
#   bench/shard-kill.sh
#   PROXIES=10000 OUT=bench/results/shard-kill-10k bench/shard-kill.sh
#
# Environment (defaults):
#   PROXIES=5000 SERVICES=1000 PODS=10 NAMESPACES=20 SHARDS=3
#   RATE=1 DURATION=60 KILL_AT=20 KILL_WINDOW=10 SIGNAL=kill (or term: a drain)
#   CHANGE_TIMEOUT=60    loadtest's bound on each change's convergence
#   BASE_PORT=27500      topology ports (see scripts/topology.sh)
#   OUT=bench/results/shard-kill-5k
#   SKIP_BUILD=          set: no release build
#   KEEP_LOGS=           set: copy the processes' logs to OUT/logs
#   MESHPLANE_BIN, LOADTEST_BIN   default: target/release of this checkout
#   MESHPLANE_LOG=warn,meshplane_frontend::rehome=debug (the per-move lines)
# Writes OUT/{report.json,loadtest.log,summary.txt,summary.json,loadavg.log,
# frontend-N.metrics.{before,after},*.png}. Everything runs on loopback and
# is stopped by PID at the end. Run it under `nice` on a shared machine.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
PROXIES=${PROXIES:-5000}
SERVICES=${SERVICES:-1000}
PODS=${PODS:-10}
NAMESPACES=${NAMESPACES:-20}
SHARDS=${SHARDS:-3}
RATE=${RATE:-1}
DURATION=${DURATION:-60}
KILL_AT=${KILL_AT:-20}
KILL_WINDOW=${KILL_WINDOW:-10}
SIGNAL=${SIGNAL:-kill}
CHANGE_TIMEOUT=${CHANGE_TIMEOUT:-60}
BASE=${BASE_PORT:-27500}
OUT=${OUT:-$root/bench/results/shard-kill-5k}
export MESHPLANE_LOG=${MESHPLANE_LOG:-warn,meshplane_frontend::rehome=debug}

# shellcheck source=../scripts/peer-env.sh
source scripts/peer-env.sh >/dev/null
if [[ -z ${SKIP_BUILD:-} ]]; then
	cargo build --release -p meshplane -p meshplane-loadtest
fi
export MESHPLANE_BIN=${MESHPLANE_BIN:-$root/target/release/meshplane}
LOADTEST=${LOADTEST_BIN:-$root/target/release/loadtest}


work=$(mktemp -d /tmp/meshplane-shard-kill.XXXXXX)
export MESHPLANE_RUN_DIR=$work/topology MESHPLANE_BASE_PORT=$BASE
loadavg_pid=
mkdir -p "$OUT"
# Nothing of an earlier run may be read as this one's.
rm -rf "$OUT/logs"
rm -f "$OUT"/{report.json,loadtest.log,summary.txt,summary.json,loadavg.log} "$OUT"/*.metrics.* "$OUT"/*.png

cleanup() {
	if [[ -n $loadavg_pid ]]; then kill "$loadavg_pid" 2>/dev/null || true; fi
	MESHPLANE_STOP_GRACE=10 scripts/topology.sh stop >/dev/null 2>&1 || true
	if [[ -n ${KEEP_LOGS:-} ]]; then
		cp -r "$work/topology/logs" "$OUT/logs" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

log() { echo "[shard-kill $(date -u +%T)] $*" | tee -a "$OUT/summary.txt" >&2; }
pid_of() { cat "$work/topology/pids/$1.pid"; }
scrape() { # scrape SUFFIX: every frontend's /metrics
	local i
	for ((i = 0; i < 2; i++)); do
		curl -fsS --max-time 10 "http://127.0.0.1:$((BASE + 30 + i))/metrics" >"$OUT/frontend-$i.metrics.$1"
	done
}

mkdir -p "$work/empty"
scripts/topology.sh start --shards "$SHARDS" --config-dir "$work/empty" >&2
"$LOADTEST" gen-mesh --services "$SERVICES" --pods-per-service "$PODS" --namespaces "$NAMESPACES" \
	--store "etcd://127.0.0.1:$BASE" --out "$work/mesh" | tee -a "$OUT/summary.txt" >&2

log "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)," \
	"$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1), $(uname -r); meshplane $(git rev-parse --short HEAD)"
log "mesh: $SERVICES services x $PODS pods in $NAMESPACES namespaces, in etcd; $SHARDS shards, 2 frontends;" \
	"$PROXIES proxies; churn $RATE/s for $DURATION s; SIG${SIGNAL^^} to shard-0 (PID $(pid_of shard-0)) at $KILL_AT s"
# The load average every 5 s: the machine is shared.
(while :; do echo "$(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)"; sleep 5; done) >"$OUT/loadavg.log" &
loadavg_pid=$!

scrape before
pids=$(cat "$work"/topology/pids/{shard,frontend}-*.pid | paste -sd,)
{
	echo "# $(date -u +%FT%TZ) shard-kill: $PROXIES proxies, $SHARDS shards, 2 frontends; pids $(cd "$work/topology/pids" && for f in *.pid; do printf '%s=%s ' "${f%.pid}" "$(cat "$f")"; done)"
} >"$OUT/loadtest.log"
"$LOADTEST" run --xds "127.0.0.1:$((BASE + 10)),127.0.0.1:$((BASE + 11))" --mesh "$work/mesh" --proxies "$PROXIES" \
	--scenario churn --rate "$RATE" --duration "$DURATION" --change-timeout "$CHANGE_TIMEOUT" \
	--kill-pid "$(pid_of shard-0)" --kill-at "$KILL_AT" --kill-window "$KILL_WINDOW" --kill-signal "$SIGNAL" \
	--target-pid "$pids" --target-admin "127.0.0.1:$((BASE + 201))" \
	--report "$OUT/report.json" --plots "$OUT" 2>&1 | tee -a "$OUT/loadtest.log"
scrape after
log "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 bench/shard_kill_summary.py "$OUT" "$work/topology/logs" | tee -a "$OUT/summary.txt"
