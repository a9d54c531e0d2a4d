#!/usr/bin/env bash
# A local sharded topology on loopback: etcd, registry-sync, 2 frontends and
# N shards, for demos, tests and benchmarks.
#
#   scripts/topology.sh start [--shards N] [--frontends N] [--config-dir DIR]
#   scripts/topology.sh status
#   scripts/topology.sh stop
#
# Every process writes its PID to RUN_DIR/pids/NAME.pid and its log to
# RUN_DIR/logs/NAME.log; `stop` ends exactly those PIDs (SIGTERM, then SIGKILL
# after a grace period), in order: frontends, shards, registry-sync, etcd.
#
# Env:
#   MESHPLANE_ETCD        etcd binary (source scripts/peer-env.sh to get it)
#   MESHPLANE_BIN         meshplane binary (default: target/debug/meshplane, built if missing)
#   MESHPLANE_RUN_DIR     run dir (default: target/topology)
#   MESHPLANE_BASE_PORT   first port used (default 21000):
#                           etcd client BASE, peer BASE+1, registry-sync admin BASE+2,
#                           frontend i (0-based): xDS BASE+10+i, admin BASE+30+i,
#                           shard i: ADS BASE+100+i, admin BASE+200+i
#   MESHPLANE_LOG         log filter of the meshplane processes (default info)
#
# Proxies connect to any frontend's xDS address (printed by start/status);
# each frontend's /debug/connections shows which shard serves which proxy.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
RUN_DIR=${MESHPLANE_RUN_DIR:-$ROOT/target/topology}
BASE=${MESHPLANE_BASE_PORT:-21000}
BIN=${MESHPLANE_BIN:-$ROOT/target/debug/meshplane}
READY_TIMEOUT=${MESHPLANE_READY_TIMEOUT:-60}
STOP_GRACE=${MESHPLANE_STOP_GRACE:-40}

usage() {
	sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
}

die() {
	echo "topology: $*" >&2
	exit 1
}

pid_file() { echo "$RUN_DIR/pids/$1.pid"; }

alive() {
	local f
	f=$(pid_file "$1")
	[[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# start NAME CMD...: run in the background, PID and log under RUN_DIR.
launch() {
	local name=$1
	shift
	if alive "$name"; then
		die "$name is already running (PID $(cat "$(pid_file "$name")")); run stop first"
	fi
	"$@" >"$RUN_DIR/logs/$name.log" 2>&1 &
	echo $! >"$(pid_file "$name")"
	echo "started $name (PID $!): log $RUN_DIR/logs/$name.log"
}

# wait_ready NAME URL: poll until URL answers 200, bounded, failing early if NAME died.
wait_ready() {
	local name=$1 url=$2 deadline=$((SECONDS + READY_TIMEOUT))
	until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
		alive "$name" || die "$name exited; see $RUN_DIR/logs/$name.log"
		((SECONDS < deadline)) || die "$name not ready at $url after ${READY_TIMEOUT}s; see $RUN_DIR/logs/$name.log"
		sleep 0.2
	done
}

names() {
	[[ -d $RUN_DIR/pids ]] || return 0
	local f
	for f in "$RUN_DIR"/pids/*.pid; do
		[[ -e $f ]] && basename "$f" .pid
	done
}

start() {
	local shards=3 frontends=2 config_dir=$ROOT/examples/bookinfo
	while (($#)); do
		case $1 in
		--shards) shards=$2; shift 2 ;;
		--frontends) frontends=$2; shift 2 ;;
		--config-dir) config_dir=$2; shift 2 ;;
		*) usage ;;
		esac
	done
	[[ -n ${MESHPLANE_ETCD:-} && -x ${MESHPLANE_ETCD} ]] || die "MESHPLANE_ETCD is not set: source scripts/peer-env.sh first"
	[[ -d $config_dir ]] || die "--config-dir $config_dir is not a directory"
	if [[ ! -x $BIN ]]; then
		echo "building $BIN"
		cargo build --bin meshplane
	fi
	mkdir -p "$RUN_DIR/pids" "$RUN_DIR/logs"
	export MESHPLANE_LOG=${MESHPLANE_LOG:-info}

	# Every port of the layout must be free: benchmarks and tests share loopback.
	local i port ports=("$BASE" $((BASE + 1)) $((BASE + 2)))
	for ((i = 0; i < frontends; i++)); do ports+=($((BASE + 10 + i)) $((BASE + 30 + i))); done
	for ((i = 0; i < shards; i++)); do ports+=($((BASE + 100 + i)) $((BASE + 200 + i))); done
	for port in "${ports[@]}"; do
		if ss -Hltn "sport = :$port" | grep -q .; then
			die "port $port is in use (another topology or benchmark?): pick another MESHPLANE_BASE_PORT"
		fi
	done

	local client="http://127.0.0.1:$BASE" peer="http://127.0.0.1:$((BASE + 1))"
	local store="etcd://127.0.0.1:$BASE"
	rm -rf "$RUN_DIR/etcd"
	launch etcd "$MESHPLANE_ETCD" --name topology --data-dir "$RUN_DIR/etcd" \
		--listen-client-urls "$client" --advertise-client-urls "$client" \
		--listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
		--initial-cluster "topology=$peer" --initial-cluster-state new
	wait_ready etcd "$client/health"

	launch registry-sync "$BIN" registry-sync --config-dir "$config_dir" --store "$store" \
		--admin-addr "127.0.0.1:$((BASE + 2))"
	wait_ready registry-sync "http://127.0.0.1:$((BASE + 2))/ready"

	for ((i = 0; i < shards; i++)); do
		launch "shard-$i" "$BIN" shard --shard-id "shard-$i" --store "$store" \
			--listen "127.0.0.1:$((BASE + 100 + i))" --admin-addr "127.0.0.1:$((BASE + 200 + i))"
	done
	for ((i = 0; i < shards; i++)); do
		wait_ready "shard-$i" "http://127.0.0.1:$((BASE + 200 + i))/ready"
	done
	for ((i = 0; i < frontends; i++)); do
		launch "frontend-$i" "$BIN" frontend --store "$store" \
			--xds-addr "127.0.0.1:$((BASE + 10 + i))" --admin-addr "127.0.0.1:$((BASE + 30 + i))"
	done
	for ((i = 0; i < frontends; i++)); do
		wait_ready "frontend-$i" "http://127.0.0.1:$((BASE + 30 + i))/ready"
	done
	echo
	status
}

# The admin URL of a process, from its name.
admin_url() {
	local i
	case $1 in
	etcd) echo "http://127.0.0.1:$BASE/health" ;;
	registry-sync) echo "http://127.0.0.1:$((BASE + 2))/ready" ;;
	frontend-*) i=${1#frontend-}; echo "http://127.0.0.1:$((BASE + 30 + i))/ready" ;;
	shard-*) i=${1#shard-}; echo "http://127.0.0.1:$((BASE + 200 + i))/ready" ;;
	esac
}

status() {
	local name state ready any=0
	printf '%-16s %-8s %-8s %-6s %s\n' NAME PID STATE READY ADDRESS
	for name in $(names); do
		any=1
		state=dead
		alive "$name" && state=running
		ready=no
		curl -fsS -o /dev/null --max-time 2 "$(admin_url "$name")" 2>/dev/null && ready=yes
		local addr=""
		case $name in
		frontend-*) addr="xds 127.0.0.1:$((BASE + 10 + ${name#frontend-}))" ;;
		shard-*) addr="ads 127.0.0.1:$((BASE + 100 + ${name#shard-}))" ;;
		etcd) addr="etcd://127.0.0.1:$BASE" ;;
		esac
		printf '%-16s %-8s %-8s %-6s %s\n' "$name" "$(cat "$(pid_file "$name")")" "$state" "$ready" "$addr"
	done
	((any)) || echo "(no topology in $RUN_DIR)"
}

# stop_one NAME: SIGTERM its PID, wait, then SIGKILL.
stop_one() {
	local name=$1 f pid deadline
	f=$(pid_file "$name")
	[[ -f $f ]] || return 0
	pid=$(cat "$f")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		deadline=$((SECONDS + STOP_GRACE))
		while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
			sleep 0.2
		done
		if kill -0 "$pid" 2>/dev/null; then
			echo "$name (PID $pid) did not exit within ${STOP_GRACE}s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
		echo "stopped $name (PID $pid)"
	fi
	rm -f "$f"
}

stop() {
	local name
	# Frontends first (proxies go elsewhere), shards next (each drains), then the store's writers and the store.
	for name in $(names | grep '^frontend-' || true); do stop_one "$name"; done
	for name in $(names | grep '^shard-' || true); do stop_one "$name"; done
	stop_one registry-sync
	stop_one etcd
}

case ${1:-} in
start) shift; start "$@" ;;
stop) stop ;;
status) status ;;
*) usage ;;
esac
