#!/usr/bin/env bash
# How long writes are refused when the primary changes: runs tests/test_cluster.py RUNS times (5),
# each on a cluster of its own (deploy/cluster.sh) with the checkout mix through gunicorn, and prints
# the median of each figure for the switchover and for the failover (a SIGKILLed postmaster).
#
#   deploy/cluster-timing.sh [RUNS]      (after `make test` or `make cluster-tools` set things up)
#
# refused_seconds         from the first refused request's start to the last refused answer
# promotion_after_act     from the switchover's start or the kill to the new primary seen by Patroni
# served_after_promotion  from then to the first answer that took a write
# refused, answered       requests answered 503, and all requests, during the test's load
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-5}
timings=$(mktemp)
trap 'rm -f "$timings"' EXIT
failed=0
for run in $(seq "$runs"); do
    echo "run $run of $runs" >&2
    FAILOVER_TIMINGS=$timings .venv/bin/pytest -q -p no:cacheprovider tests/test_cluster.py >&2 || ((++failed))
done
echo "runs in which a test failed: $failed of $runs (a failed test's figures are kept too)"
.venv/bin/python - "$timings" <<'EOF'
import json, statistics, sys
lines = [json.loads(line) for line in open(sys.argv[1])]
for test in ("switchover", "failover"):
    runs = [line for line in lines if line["test"] == test]
    figures = {key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "test"}
    print(f"{test} (median of {len(runs)}): {figures}")
    print(f"  refused_seconds per run: {[run['refused_seconds'] for run in runs]}")
EOF
