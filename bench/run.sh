#!/usr/bin/env bash
# One benchmark: `meshplane up` on a generated mesh, loadtest against it.
#
#   bench/run.sh NAME PROXIES [loadtest run options...]
#
# Writes bench/results/NAME/{report.json,loadtest.log,meshplane.log,*.png}.
# Environment (defaults): SERVICES=1000 PODS=10 NAMESPACES=20 (1,000 services,
# 10,000 endpoints), XDS=127.0.0.1:25010 ADMIN=127.0.0.1:25014,
# MESHPLANE_BIN and LOADTEST_BIN (target/release of this checkout),
# OUT=bench/results. Everything runs on loopback and stops by itself.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=${1:?usage: bench/run.sh NAME PROXIES [loadtest run options...]}
proxies=${2:?usage: bench/run.sh NAME PROXIES [loadtest run options...]}
shift 2
MESHPLANE_BIN=${MESHPLANE_BIN:-$root/target/release/meshplane}
LOADTEST_BIN=${LOADTEST_BIN:-$root/target/release/loadtest}
OUT=${OUT:-$root/bench/results}
SERVICES=${SERVICES:-1000}
PODS=${PODS:-10}
NAMESPACES=${NAMESPACES:-20}
XDS=${XDS:-127.0.0.1:25010}
ADMIN=${ADMIN:-127.0.0.1:25014}

out="$OUT/$name"
mkdir -p "$out"
work=$(mktemp -d /tmp/meshplane-bench.XXXXXX)
mesh="$work/mesh"
"$LOADTEST_BIN" gen-mesh --services "$SERVICES" --pods-per-service "$PODS" --namespaces "$NAMESPACES" --out "$mesh"

MESHPLANE_LOG=${MESHPLANE_LOG:-warn} "$MESHPLANE_BIN" up --config-dir "$mesh" --xds-addr "$XDS" --admin-addr "$ADMIN" \
	>"$out/meshplane.log" 2>&1 &
pid=$!
cleanup() {
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	rm -rf "$work"
	# Keep meshplane's log only if it said something (warnings and up by default).
	[[ -s "$out/meshplane.log" ]] || rm -f "$out/meshplane.log"
}
trap cleanup EXIT

for _ in $(seq 1 600); do
	if curl -fs "http://$ADMIN/ready" >/dev/null 2>&1; then break; fi
	if ! kill -0 "$pid" 2>/dev/null; then
		echo "meshplane exited; see $out/meshplane.log" >&2
		exit 1
	fi
	sleep 0.1
done
curl -fs "http://$ADMIN/ready" >/dev/null || { echo "meshplane not ready after 60 s" >&2; exit 1; }

{
	echo "# $(date -u +%FT%TZ) $name: $proxies proxies, $SERVICES services x $PODS pods in $NAMESPACES namespaces"
	echo "# loadtest run --proxies $proxies $*"
} >"$out/loadtest.log"
"$LOADTEST_BIN" run --xds "$XDS" --mesh "$mesh" --proxies "$proxies" --target-pid "$pid" --target-admin "$ADMIN" \
	--report "$out/report.json" --plots "$out" "$@" 2>&1 | tee -a "$out/loadtest.log"
