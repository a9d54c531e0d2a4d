# shellcheck shell=bash
# Source this file (do not execute it) to get the environment the tests need:
#
#   source scripts/peer-env.sh
#
# It runs scripts/install-peers.sh all (a fast no-op once cached) and exports:
#   MESHPLANE_ENVOY        the Envoy 1.40 binary
#   MESHPLANE_PYTHON_GRPC  python of the venv with grpcio + xds-protos
#   MESHPLANE_ETCD         the etcd 3.5 server binary (MESHPLANE_ETCDCTL: etcdctl)
#   PROTOC                 protoc, for crates that compile .proto files
#   MESHPLANE_CACHE        the cache root (default $HOME/.cache/meshplane)
#   CARGO_BUILD_BUILD_DIR  cargo's intermediate artifacts, shared by every checkout:
#                          $MESHPLANE_CACHE/cargo-build (kept if already set). Final
#                          binaries stay in each checkout's own target/: a target
#                          dir shared by two checkouts can hand one checkout's tests
#                          the other's `meshplane` binary (cargo re-links it into
#                          target/debug only when it rebuilds).
#
# It does not change the caller's shell options (no `set -e` leaks into an
# interactive shell); on failure it returns non-zero.

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	echo "peer-env.sh must be sourced: source scripts/peer-env.sh" >&2
	exit 2
fi

_meshplane_peer_env() {
	local here out
	here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd) || return 1
	export MESHPLANE_CACHE="${MESHPLANE_CACHE:-$HOME/.cache/meshplane}"
	out=$(bash "$here/install-peers.sh" all) || {
		echo "peer-env.sh: scripts/install-peers.sh failed" >&2
		return 1
	}
	eval "$out" || return 1
	export CARGO_BUILD_BUILD_DIR="${CARGO_BUILD_BUILD_DIR:-$MESHPLANE_CACHE/cargo-build}"
}
_meshplane_peer_env_rc=0
_meshplane_peer_env || _meshplane_peer_env_rc=$?
unset -f _meshplane_peer_env
return "$_meshplane_peer_env_rc"
