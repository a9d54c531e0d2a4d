#!/usr/bin/env bash
# Client memory per simulated proxy: loadtest's HTTP/2 client versus tonic
# (examples/tonic_baseline.rs: a Channel + Delta stream per proxy, CDS only),
# N proxies (default 5000) against `meshplane up` on a small mesh.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
n=${1:-5000}
MESHPLANE_BIN=${MESHPLANE_BIN:-$root/target/release/meshplane}
LOADTEST_BIN=${LOADTEST_BIN:-$root/target/release/loadtest}
XDS=${XDS:-127.0.0.1:25010}
ADMIN=${ADMIN:-127.0.0.1:25014}
work=$(mktemp -d /tmp/meshplane-bench.XXXXXX)
"$LOADTEST_BIN" gen-mesh --services 100 --pods-per-service 2 --namespaces 20 --out "$work/mesh" >/dev/null
MESHPLANE_LOG=warn "$MESHPLANE_BIN" up --config-dir "$work/mesh" --xds-addr "$XDS" --admin-addr "$ADMIN" >"$work/mp.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 300); do curl -fs "http://$ADMIN/ready" >/dev/null 2>&1 && break; sleep 0.1; done
"$root/target/release/examples/tonic_baseline" "$XDS" "$n" "$work/mesh/proxies.jsonl"
"$LOADTEST_BIN" run --xds "$XDS" --mesh "$work/mesh" --proxies "$n" --workloads 1 --duration 1 --quiet \
	--report "$work/report.json" | grep -E "loadtest:|proxies:"
