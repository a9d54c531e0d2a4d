#!/usr/bin/env bash
# The standard scenarios against `meshplane up` on 1,000 services / 10,000
# endpoints (see docs/benchmarks.md). Each run is bounded in time; together
# they take about 12 minutes on 2 cores. Pass scenario names to run a subset.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
all=(steady-1k steady-10k storm-10k one-class-10k small-config-10k max-20k)
for s in "${@:-${all[@]}}"; do
	case $s in
	steady-1k) "$here/run.sh" steady-1k 1000 --scenario steady --duration 30 --change-interval 5 ;;
	steady-10k) "$here/run.sh" steady-10k 10000 --scenario steady --duration 45 --change-interval 20 ;;
	storm-10k) "$here/run.sh" storm-10k 10000 --scenario reconnect-storm --duration 15 ;;
	churn-10k) "$here/run.sh" churn-10k 10000 --scenario churn --rate 2 --duration 30 ;;
	sotw-10k) "$here/run.sh" sotw-10k 10000 --api sotw --scenario steady --duration 30 --change-interval 8 ;;
	# meshplane itself may hold at most 20,000 files: 20k proxies share 10k connections (2 streams each),
	# spread over 2 loadtest worker processes.
	max-20k) "$here/run.sh" max-20k 20000 --streams-per-conn 2 --workers 2 --scenario steady --duration 40 --change-interval 20 ;;
	one-class-10k) "$here/run.sh" one-class-10k 10000 --workloads 1 --scenario steady --duration 20 --change-interval 10 ;;
	small-config-10k) SERVICES=100 PODS=2 "$here/run.sh" small-config-10k 10000 --workloads 1 --scenario steady --duration 10 --change-interval 5 ;;
	*) echo "unknown scenario $s (known: ${all[*]} churn-10k sotw-10k)" >&2; exit 2 ;;
	esac
done
