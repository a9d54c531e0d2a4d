#!/usr/bin/env bash
# Run every check CI runs, in order, stopping at the first failure:
#   1. install the real test peers (Envoy, gRPC client venv, etcd, protoc)
#   2. cargo fmt --all --check
#   3. cargo clippy --workspace --all-targets --locked -- -D warnings
#   4. cargo test --workspace --locked [EXTRA ARGS...]
#
# Usage: scripts/test.sh [extra cargo test args, e.g. --test harness_smoke]
# Env:   MESHPLANE_CACHE   cache root (default $HOME/.cache/meshplane)
#        CARGO_BUILD_BUILD_DIR  default $MESHPLANE_CACHE/cargo-build (shared, see peer-env.sh)
#        MESHPLANE_SKIP_LINT=1  skip steps 2 and 3 (local iteration only)
#        CARGO_INCREMENTAL  default 0: CI builds a fresh clone each time, and the
#                           shared build dir would keep gigabytes of incremental
#                           state per clone path that no later run reads
set -euo pipefail
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

cd "$(dirname "${BASH_SOURCE[0]}")/.."

T0=$SECONDS
STEP_NAME=""
STEP_T0=$SECONDS
section() {
	[[ -z $STEP_NAME ]] || echo "=== ok: $STEP_NAME ($((SECONDS - STEP_T0))s)"
	STEP_NAME=$1
	STEP_T0=$SECONDS
	echo
	echo "=================================================================="
	echo "=== $1"
	echo "=================================================================="
}
on_exit() {
	local rc=$?
	if [[ $rc != 0 ]]; then
		echo
		echo "=== FAILED in step: ${STEP_NAME:-setup} (exit $rc, after $((SECONDS - T0))s)"
	fi
}
trap on_exit EXIT

section "install peers (scripts/install-peers.sh all)"
# shellcheck source=/dev/null # (a sourced file ending in `return` confuses the checker)
source scripts/peer-env.sh
echo "MESHPLANE_ENVOY=$MESHPLANE_ENVOY"
echo "MESHPLANE_PYTHON_GRPC=$MESHPLANE_PYTHON_GRPC"
echo "MESHPLANE_ETCD=$MESHPLANE_ETCD"
echo "PROTOC=$PROTOC"
echo "CARGO_BUILD_BUILD_DIR=$CARGO_BUILD_BUILD_DIR"
cargo --version
rustc --version

if [[ ${MESHPLANE_SKIP_LINT:-0} != 1 ]]; then
	section "cargo fmt --all --check"
	cargo fmt --all --check

	section "cargo clippy --workspace --all-targets --locked -- -D warnings"
	cargo clippy --workspace --all-targets --locked -- -D warnings
fi

section "cargo test --workspace --locked $*"
cargo test --workspace --locked "$@"

echo "=== ok: $STEP_NAME ($((SECONDS - STEP_T0))s)"
STEP_NAME=""
echo
echo "=== all checks passed in $((SECONDS - T0))s"
