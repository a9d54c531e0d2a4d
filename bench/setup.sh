#!/usr/bin/env bash
# Build the release binaries the benchmarks run, and install the font the
# plots are drawn with (Debian's fonts-dejavu-core) if it is missing.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf && -z "${LOADTEST_FONT:-}" ]]; then
	echo "bench/setup.sh: installing fonts-dejavu-core for the plots" >&2
	apt-get update -qq && apt-get install -y -qq fonts-dejavu-core >/dev/null
fi
cd "$root"
# shellcheck source=/dev/null
source scripts/peer-env.sh
cargo build --release -p meshplane -p meshplane-loadtest
