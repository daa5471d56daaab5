#!/usr/bin/env bash
# Simulator throughput: embed-URL calls per second with zero latency, signatures verified.
# Builds the release binary, starts `embedgate sim`, signs one GetDashboardEmbedUrl request with
# botocore (a SigV4 signature stays valid for its 15-minute window, as on AWS) and replays it with
# wrk. Prints the median of RUNS runs. Needs wrk (apt-get install wrk) and boto3 (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
command -v wrk >/dev/null || { echo "bench-sim: wrk is required (apt-get install wrk)" >&2; exit 1; }
scripts/setup.sh
source scripts/bench-lib.sh
start_sim sim
endpoint=$sim_url
path="/accounts/111122223333/dashboards/sales-2024/embed-url?creds-type=ANONYMOUS&namespace=default"
lib sign "$bin" "$endpoint" "$path" >"$work/req.lua"

rates=()
for i in $(seq "$RUNS"); do
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$work/req.lua" "$endpoint" >"$work/wrk.$i" 2>&1
  if grep -q "Non-2xx" "$work/wrk.$i"; then echo "bench-sim: run $i had errors:"; cat "$work/wrk.$i"; exit 1; fi
  read -r r _ <<<"$(lib wrk "$work/wrk.$i")"
  rates+=("$r")
  echo "run $i: $r calls/s"
done
read -r median _ <<<"$(lib wrk "$work"/wrk.*)"
issued=$(curl -s "$endpoint/_sim/ledger" | python3 -c 'import json,sys; print(json.load(sys.stdin)["issued_total"])')
echo "median: $median calls/s over $RUNS runs of $DURATION, $CONNECTIONS connections ($issued URLs issued, all 200)"
