#!/usr/bin/env bash
# The same scenario against `meshplane up` and against istiod, on identical
# input: a mesh written by `loadtest gen-mesh --flavor istio-files`
# (ServiceEntries + WorkloadEntries + Sidecars, DRs, VSs), which both read
# from a directory. Each change moves one WorkloadEntry.
#
#   bench/istiod.sh NAME PROXIES [loadtest run options...]
#
# Writes bench/results/NAME/{meshplane,istiod}/{report.json,loadtest.log,*.png,
# server logs} and bench/results/NAME/summary.md (the side-by-side table).
#
# istiod (built by scripts/install-peers.sh istiod) reads its config with
# --configDir. It does not start without a Kubernetes API server (its service
# entry controller dereferences the multicluster controller, which only exists
# with a kube client), so it gets an empty one: etcd + kube-apiserver on
# loopback with no objects but the istio-system namespace. Only istiod's own
# process is measured (--target-pid); the idle API server and etcd are not.
#
# Environment (defaults): SERVICES=1000 PODS=10 NAMESPACES=20, GEN_ARGS=""
# (more `loadtest gen-mesh` options, e.g. "--dr-share 0 --vs-share 0"),
# TARGETS="meshplane istiod", CONNECT_RATE=20 (new ADS streams per second
# for both servers: istiod admits 25/s on 2 cores, PILOT_MAX_REQUESTS_PER_SECOND,
# and fails the stream after waiting 1 s past that), ISTIOD_LOG=all:warn
# (istiod's --log_output_level; e.g. all:warn,ads:info shows its pushes),
# MILESTONES=0 (1: poll each server's /metrics every 10 ms after a change to
# time when it had the change: meshplane_shard_snapshot_revision, istiod's
# pilot_debounce_time_count and pilot_pushcontext_init_seconds_count; the
# polling costs the server CPU), MESHPLANE_BIN and
# LOADTEST_BIN (target/release of this checkout), OUT=bench/results.
# Ports: meshplane 25110/25114 (not bench/run.sh's, so both can run); istiod
# 15010 (plaintext xDS), 15012, 15014, 15017, 18080, 19876; kube-apiserver
# 26443; etcd 23790/23800. Each must be free (checked first). Everything runs
# on loopback and stops by itself.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage="usage: bench/istiod.sh NAME PROXIES [loadtest run options...]"
name=${1:?$usage}
proxies=${2:?$usage}
shift 2
MESHPLANE_BIN=${MESHPLANE_BIN:-$root/target/release/meshplane}
LOADTEST_BIN=${LOADTEST_BIN:-$root/target/release/loadtest}
OUT=${OUT:-$root/bench/results}
SERVICES=${SERVICES:-1000}
PODS=${PODS:-10}
NAMESPACES=${NAMESPACES:-20}
read -ra targets <<<"${TARGETS:-meshplane istiod}"
CONNECT_RATE=${CONNECT_RATE:-20}
ISTIOD_LOG=${ISTIOD_LOG:-all:warn}
MILESTONES=${MILESTONES:-0}
read -ra gen_args <<<"${GEN_ARGS:-}"

for bin in "$MESHPLANE_BIN" "$LOADTEST_BIN"; do
	[[ -x $bin ]] || { echo "$bin missing: run bench/setup.sh" >&2; exit 1; }
done
peers=$(bash "$root/scripts/install-peers.sh" etcd istiod kube-apiserver)
eval "$peers"

out="$OUT/$name"
mkdir -p "$out"
work=$(mktemp -d /tmp/meshplane-istiod-bench.XXXXXX)
pids=()
# stop PID...: end these processes (started here), one after the other in
# the order given (istiod, then kube-apiserver, whose shutdown hangs while etcd
# is gone, then etcd): SIGTERM, then SIGKILL after 15 s.
stop() {
	local p keep=()
	for p in "$@"; do
		kill "$p" 2>/dev/null || continue
		local state
		for _ in $(seq 1 150); do
			state=$(ps -o stat= -p "$p" 2>/dev/null) || break
			[[ $state != Z* ]] || break
			sleep 0.1
		done
		kill -KILL "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do [[ " $* " == *" $p "* ]] || keep+=("$p"); done
	pids=("${keep[@]}")
}
cleanup() {
	# Last started first: servers before what they depend on.
	local rev=() i
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do rev+=("${pids[i]}"); done
	[[ ${#rev[@]} == 0 ]] || stop "${rev[@]}"
	rm -rf "$work"
}
trap cleanup EXIT

# free PORT...: fail unless nothing listens on these loopback ports.
free() {
	local port
	for port in "$@"; do
		if ss -Hltn "sport = :$port" | grep -q .; then
			echo "port $port is in use (another benchmark?): $(ss -Hltnp "sport = :$port" | head -n1)" >&2
			return 1
		fi
	done
}

# wait_for URL PID WHAT [CURL ARGS...]: poll until URL answers 2xx, for 120 s at most.
wait_for() {
	local url=$1 pid=$2 what=$3
	shift 3
	for _ in $(seq 1 1200); do
		kill -0 "$pid" 2>/dev/null || { echo "$what exited while starting; see the logs under $out" >&2; return 1; }
		if curl -fsk "$@" "$url" >/dev/null 2>&1; then return 0; fi
		sleep 0.1
	done
	echo "$what not ready at $url after 120 s" >&2
	return 1
}

gen_mesh() { # DIR: the identical input of both runs; prints its digest
	"$LOADTEST_BIN" gen-mesh --flavor istio-files --services "$SERVICES" --pods-per-service "$PODS" \
		--namespaces "$NAMESPACES" "${gen_args[@]}" --out "$1" >&2
	(cd "$1" && find . -type f -name '*.yaml' | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)
}

start_meshplane() { # MESH DIR -> sets server_pid, xds
	free 25110 25114
	MESHPLANE_LOG=warn "$MESHPLANE_BIN" up --config-dir "$1" --xds-addr 127.0.0.1:25110 \
		--admin-addr 127.0.0.1:25114 >"$2/meshplane.log" 2>&1 &
	server_pid=$!
	pids+=("$server_pid")
	xds=127.0.0.1:25110
	milestones=(--target-admin 127.0.0.1:25114 --watch-metric meshplane_shard_snapshot_revision)
	wait_for http://127.0.0.1:25114/ready "$server_pid" meshplane
}

start_istiod() { # MESH DIR -> sets server_pid, xds
	local mesh=$1 dir=$2 k="$work/kube"
	free 23790 23800 26443 15010 15012 15014 15017 18080 19876
	mkdir -p "$k"
	# A CA, an admin client certificate (system:masters) and service-account keys.
	(
		cd "$k"
		openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=bench-ca
		openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=admin"
		openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 2
		openssl genrsa -out sa.key 2048
		openssl rsa -in sa.key -pubout -out sa.pub
	) >"$k/openssl.log" 2>&1 || { cat "$k/openssl.log" >&2; return 1; }
	"$MESHPLANE_ETCD" --name bench --data-dir "$k/etcd" --listen-client-urls http://127.0.0.1:23790 \
		--advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800 \
		--initial-advertise-peer-urls http://127.0.0.1:23800 --initial-cluster bench=http://127.0.0.1:23800 \
		--heartbeat-interval 10 --election-timeout 100 >"$dir/etcd.log" 2>&1 &
	local etcd_pid=$!
	pids+=("$etcd_pid")
	wait_for http://127.0.0.1:23790/health "$etcd_pid" etcd
	"$MESHPLANE_KUBE_APISERVER" --etcd-servers http://127.0.0.1:23790 --etcd-prefix /istiod-bench \
		--cert-dir "$k/serving" --secure-port 26443 --bind-address 127.0.0.1 \
		--service-cluster-ip-range 10.0.0.0/24 --service-account-issuer https://kubernetes.default.svc \
		--service-account-key-file "$k/sa.pub" --service-account-signing-key-file "$k/sa.key" \
		--authorization-mode RBAC --client-ca-file "$k/ca.crt" >"$dir/kube-apiserver.log" 2>&1 &
	local kas_pid=$!
	pids+=("$kas_pid")
	local auth=(--cert "$k/admin.crt" --key "$k/admin.key")
	wait_for https://127.0.0.1:26443/readyz "$kas_pid" kube-apiserver "${auth[@]}"
	curl -fsk "${auth[@]}" -H 'Content-Type: application/json' -X POST https://127.0.0.1:26443/api/v1/namespaces \
		-d '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"istio-system"}}' >/dev/null
	cat >"$k/kubeconfig" <<-EOF
		apiVersion: v1
		kind: Config
		clusters: [{name: bench, cluster: {server: "https://127.0.0.1:26443", insecure-skip-tls-verify: true}}]
		users: [{name: admin, user: {client-certificate: $k/admin.crt, client-key: $k/admin.key}}]
		contexts: [{name: bench, context: {cluster: bench, user: admin}}]
		current-context: bench
	EOF
	# No mesh config or mesh networks files: istiod's defaults.
	(cd "$k" && POD_NAMESPACE=istio-system POD_NAME=istiod-bench exec "$MESHPLANE_ISTIOD" discovery \
		--configDir "$mesh" --kubeconfig "$k/kubeconfig" \
		--meshConfig "$k/no-mesh-config" --networksConfig "$k/no-mesh-networks" \
		--grpcAddr 127.0.0.1:15010 --secureGRPCAddr 127.0.0.1:15012 --monitoringAddr 127.0.0.1:15014 \
		--httpsAddr 127.0.0.1:15017 --httpAddr 127.0.0.1:18080 --ctrlz_port 19876 \
		--log_output_level "$ISTIOD_LOG") >"$dir/istiod.log" 2>&1 &
	server_pid=$!
	pids+=("$server_pid")
	xds=127.0.0.1:15010
	milestones=(--target-admin 127.0.0.1:15014 --watch-metric pilot_debounce_time_count
		--watch-metric pilot_pushcontext_init_seconds_count)
	wait_for http://127.0.0.1:18080/ready "$server_pid" istiod
	istiod_extra_pids=("$kas_pid" "$etcd_pid")
}

digests=()
for target in "${targets[@]}"; do
	dir="$out/$target"
	rm -rf "$dir"
	mkdir -p "$dir"
	mesh="$work/mesh-$target"
	digests+=("$(gen_mesh "$mesh")")
	istiod_extra_pids=()
	milestones=()
	case $target in
	meshplane) start_meshplane "$mesh" "$dir" ;;
	istiod) start_istiod "$mesh" "$dir" ;;
	*) echo "unknown target $target (meshplane, istiod)" >&2; exit 2 ;;
	esac
	[[ $MILESTONES == 1 ]] || milestones=()
	{
		echo "# $(date -u +%FT%TZ) $name on $target: $proxies proxies, $SERVICES services x $PODS pods in $NAMESPACES namespaces (istio-files ${gen_args[*]}, digest ${digests[-1]})"
		echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
		echo "# loadtest run --xds $xds --proxies $proxies --connect-rate $CONNECT_RATE ${milestones[*]} $*"
	} >"$dir/loadtest.log"
	"$LOADTEST_BIN" run --xds "$xds" --mesh "$mesh" --proxies "$proxies" --target-pid "$server_pid" \
		--connect-rate "$CONNECT_RATE" --report "$dir/report.json" --plots "$dir" "${milestones[@]}" "$@" 2>&1 |
		tee -a "$dir/loadtest.log"
	echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$dir/loadtest.log"
	stop "$server_pid" "${istiod_extra_pids[@]}"
	# Keep a server log only if it said something; etcd's and the API
	# server's only if istiod did not start (they are read on failure).
	rm -f "$dir/etcd.log" "$dir/kube-apiserver.log"
	for f in "$dir"/*.log; do [[ -s $f ]] || rm -f "$f"; done
	rm -rf "$mesh" "$work/kube"
done
if [[ ${#digests[@]} -gt 1 && $(printf '%s\n' "${digests[@]}" | sort -u | wc -l) != 1 ]]; then
	echo "the generated meshes differ between targets: ${digests[*]}" >&2
	exit 1
fi
python3 "$root/bench/compare.py" "$out" "${targets[@]}" | tee "$out/summary.md"
