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
cargo build --release --quiet --bin embedgate

out=$(mktemp -d)
target/release/embedgate sim --listen 127.0.0.1:0 >"$out/sim.out" 2>/dev/null &
sim=$!
trap 'kill $sim 2>/dev/null || true; rm -rf "$out"' EXIT
for _ in $(seq 50); do grep -q "listening on" "$out/sim.out" 2>/dev/null && break; sleep 0.1; done
endpoint=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$out/sim.out" | head -1)

python3 - "$endpoint" >"$out/req.lua" <<'PY'
import sys
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
endpoint = sys.argv[1]
path = "/accounts/111122223333/dashboards/sales-2024/embed-url?creds-type=ANONYMOUS&namespace=default"
req = AWSRequest(method="GET", url=endpoint + path)
SigV4Auth(Credentials("AKIDEMBEDGATESIM0001", "embedgate-simulator-test-secret"), "quicksight", "us-east-1").add_auth(req)
print('wrk.method = "GET"')
print(f'wrk.path = "{path}"')
for k, v in req.headers.items():
    print(f'wrk.headers["{k}"] = "{v}"')
PY

rates=()
for i in $(seq "$RUNS"); do
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$out/req.lua" "$endpoint" >"$out/wrk.$i" 2>&1
  if grep -q "Non-2xx" "$out/wrk.$i"; then echo "bench-sim: run $i had errors:"; cat "$out/wrk.$i"; exit 1; fi
  r=$(awk '/Requests\/sec/ {print $2}' "$out/wrk.$i")
  rates+=("$r")
  echo "run $i: $r calls/s"
done
median=$(printf '%s\n' "${rates[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
issued=$(curl -s "$endpoint/_sim/ledger" | python3 -c 'import json,sys; print(json.load(sys.stdin)["issued_total"])')
echo "median: $median calls/s over $RUNS runs of $DURATION, $CONNECTIONS connections ($issued URLs issued, all 200)"
