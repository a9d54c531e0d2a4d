#!/usr/bin/env bash
# Where the memory of `meshplane up` goes: a heaptrack profile while it serves
# PROXIES loadtest proxies on the standard mesh, stopped with SIGKILL once
# they are connected and a few changes have been pushed, so what heaptrack
# reports as "leaked" is the live heap at steady state. Prints it by
# category (bench/heap_categories.py) and writes OUT/leaked.stacks.
#
#   bench/heap-profile.sh PROXIES [OUT]          (default OUT: /tmp/meshplane-heap)
#
# heaptrack sees only malloc: MESHPLANE_BIN must be built without jemalloc,
#   cargo build --release --locked -p meshplane --no-default-features
#   cp target/release/meshplane /tmp/meshplane-malloc && MESHPLANE_BIN=/tmp/meshplane-malloc bench/heap-profile.sh 2000
# (then rebuild without --no-default-features for benchmarks).
# Needs heaptrack (Debian: apt-get install heaptrack). Ports: XDS (27310), ADMIN (27314).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
proxies=${1:?usage: bench/heap-profile.sh PROXIES [OUT]}
out=${2:-/tmp/meshplane-heap}
bin=${MESHPLANE_BIN:?set MESHPLANE_BIN to a meshplane built with --no-default-features (see the header)}
loadtest=${LOADTEST_BIN:-$root/target/release/loadtest}
xds=${XDS:-127.0.0.1:27310}
admin=${ADMIN:-127.0.0.1:27314}
command -v heaptrack >/dev/null || { echo "heaptrack is not installed (apt-get install heaptrack)" >&2; exit 1; }
if grep -q _rjem_malloc "$bin"; then
	echo "$bin allocates with jemalloc, which heaptrack cannot see: build it with --no-default-features" >&2
	exit 1
fi
mkdir -p "$out"
rm -rf "${out:?}"/*
"$loadtest" gen-mesh --services 1000 --pods-per-service 10 --namespaces 20 --out "$out/mesh" >/dev/null

MESHPLANE_LOG=warn heaptrack -o "$out/heaptrack" "$bin" up --config-dir "$out/mesh" --xds-addr "$xds" \
	--admin-addr "$admin" >"$out/meshplane.log" 2>&1 &
tracer=$!
pid=
cleanup() {
	[[ -n $pid ]] && kill -9 "$pid" 2>/dev/null
	wait "$tracer" 2>/dev/null || true
	rm -rf "$out/mesh"
}
trap cleanup EXIT
for _ in $(seq 1 1200); do curl -fs "http://$admin/ready" >/dev/null 2>&1 && break; sleep 0.1; done
for p in $(pgrep -f "up --config-dir $out/mesh"); do
	[[ $(readlink "/proc/$p/exe") == "$(readlink -f "$bin")" ]] && pid=$p
done
[[ -n $pid ]] || { echo "meshplane did not start; see $out/meshplane.log" >&2; exit 1; }
rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
"$loadtest" run --xds "$xds" --mesh "$out/mesh" --proxies "$proxies" --target-pid "$pid" --scenario steady \
	--duration 90 --change-interval 10 --quiet >"$out/loadtest.log" 2>&1 &
for _ in $(seq 1 600); do
	connected=$(curl -s "http://$admin/metrics" | awk '$1 == "pilot_xds" {print $2}')
	[[ ${connected:-0} -ge $proxies ]] && break
	sleep 1
done
# Two or three endpoint changes pushed to every proxy.
sleep 30
rss_after=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
kill -9 "$pid"
pid=
wait "$tracer" 2>/dev/null || true
echo "RSS (with heaptrack's overhead): $((rss_before / 1024)) MB before the proxies, $((rss_after / 1024)) MB with $proxies"
heaptrack_print -f "$out"/heaptrack.zst --flamegraph-cost-type leaked -F "$out/leaked.stacks" -p 0 -a 0 -T 0 \
	| grep -E 'peak heap|total memory leaked'
python3 "$root/bench/heap_categories.py" "$out/leaked.stacks" "$proxies"
