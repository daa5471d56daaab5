#!/usr/bin/env bash
# Hit-path and rejection-path ceiling: the gateway against a bare actix-web endpoint with a body
# of the same size, same load generator (wrk), same settings, in the same run.
#
# The pool is pre-filled through warm keys (KEYS keys x DEPTH URLs) from the simulator, which is
# then stopped, so the measured window contains pool hits only and no upstream work competes for
# the CPU. Writes bench-results/gateway.md and bench-results/gateway.json.
# Needs wrk (apt-get install wrk). Knobs: KEYS, DEPTH, RUNS, DURATION, CONNECTIONS.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-300}
DEPTH=${DEPTH:-1000}
RUNS=${RUNS:-3}
DURATION=${DURATION:-3s}
CONNECTIONS=${CONNECTIONS:-64}
command -v wrk >/dev/null || { echo "bench-gateway: wrk is required (apt-get install wrk)" >&2; exit 1; }
cargo build --release --quiet --bin embedgate --example bare
bin=target/release/embedgate
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "timeout waiting for $2 in $1" >&2; cat "$1" >&2; exit 1; }

"$bin" sim --listen 127.0.0.1:0 >"$work/sim.out" 2>/dev/null &
sim=$!; pids+=("$sim")
wait_for "$work/sim.out" "listening on"
sim_url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$work/sim.out" | head -1)
gw_port=$(free_port); admin_port=$(free_port); bare_port=$(free_port)

python3 - "$work/gateway.toml" "$sim_url" "$gw_port" "$admin_port" "$KEYS" "$DEPTH" <<'PY'
import hashlib, sys
path, sim, gw, admin, keys, depth = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
h = lambda k: hashlib.sha256(k.encode()).hexdigest()
out = [f'listen = "127.0.0.1:{gw}"', f'admin_listen = "127.0.0.1:{admin}"', 'log_level = "warn"',
       '[upstream]', f'endpoint_url = "{sim}"', 'access_key_id = "AKIDEMBEDGATESIM0001"',
       'secret_access_key = "embedgate-simulator-test-secret"', 'rate_per_sec = 100000.0', 'burst = 10000',
       'max_concurrency = 256', 'timeout_ms = 1000',
       '[pool]', f'max_urls_per_key = {depth}', 'max_urls = 5000000',
       '[refill]', 'concurrency = 64',
       '[[tenants]]', 'id = "bench"', f'api_key_sha256 = ["{h("bench-key")}"]', 'default_account = "111122223333"',
       'rate_per_sec = 1000000000.0', 'burst = 1000000000', 'max_pooled_urls = 5000000',
       '[tenants.policy]', 'dashboards = ["*"]', 'namespaces = ["default"]',
       'user_arns = ["arn:aws:quicksight:*:111122223333:user/default/*"]']
for i in range(keys):
    out += ['[[tenants.warm]]', 'Operation = "GetDashboardEmbedUrl"', f'Depth = {depth}', f'DashboardId = "d-{i:04d}"',
            'IdentityType = "QUICKSIGHT"', f'UserArn = "arn:aws:quicksight:us-east-1:111122223333:user/default/user-{i:04d}"']
out += ['[[tenants]]', 'id = "abuser"', f'api_key_sha256 = ["{h("abuser-key")}"]', 'default_account = "111122223333"',
        'rate_per_sec = 1.0', 'burst = 1', '[tenants.policy]', 'dashboards = ["*"]', 'namespaces = ["default"]',
        'user_arns = ["arn:aws:quicksight:*:111122223333:user/default/*"]']
open(path, "w").write("\n".join(out) + "\n")
PY
EMBEDGATE_LOG=warn "$bin" serve --config "$work/gateway.toml" 2>"$work/gw.err" &
gw=$!; pids+=("$gw")
target=$((KEYS * DEPTH))
echo "filling the pool with $target URLs..."
for _ in $(seq 1200); do
  urls=$(curl -s "http://127.0.0.1:$admin_port/state" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pool"]["urls"])' 2>/dev/null || echo 0)
  [ "$urls" -ge "$target" ] && break
  sleep 0.25
done
echo "pool holds $urls URLs; stopping the simulator so only hits are measured"
kill "$sim"; wait "$sim" 2>/dev/null || true

cat >"$work/hit.lua" <<LUA
local i = 0
local keys = $KEYS
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer bench-key"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = (i % keys) + 1
  local body = string.format('{"DashboardId":"d-%04d","IdentityType":"QUICKSIGHT","UserArn":"arn:aws:quicksight:us-east-1:111122223333:user/default/user-%04d"}', i - 1, i - 1)
  return wrk.format(nil, "/v1/embed-url/dashboard", nil, body)
end
LUA
sed 's/bench-key/abuser-key/' "$work/hit.lua" >"$work/reject.lua"
size_of() { curl -s -o /dev/null -w '%{size_download}' -X POST "$1" -H "Authorization: Bearer $2" -H 'Content-Type: application/json' \
  -d '{"DashboardId":"d-0000","IdentityType":"QUICKSIGHT","UserArn":"arn:aws:quicksight:us-east-1:111122223333:user/default/user-0000"}'; }
hit_size=$(size_of "http://127.0.0.1:$gw_port/v1/embed-url/dashboard" bench-key)
size_of "http://127.0.0.1:$gw_port/v1/embed-url/dashboard" abuser-key >/dev/null
reject_size=$(size_of "http://127.0.0.1:$gw_port/v1/embed-url/dashboard" abuser-key)

# run NAME URL SCRIPT: RUNS wrk runs; prints "rps p50 p99 non2xx" of the median-rps run.
run() {
  local name=$1 url=$2 script=$3 i
  for i in $(seq "$RUNS"); do
    wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$script" "$url" >"$work/$name.$i" 2>&1
  done
  for i in $(seq "$RUNS"); do
    python3 - "$work/$name.$i" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
def lat(p):
    m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
    return float(m.group(1)) * unit[m.group(2)] if m else float("nan")
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(rps, lat(50), lat(99), int(m.group(1)) if m else 0)
PY
  done | sort -g | sed -n "$(( (RUNS + 1) / 2 ))p"
}
read -r hit_rps hit_p50 hit_p99 hit_bad <<<"$(run hit "http://127.0.0.1:$gw_port" "$work/hit.lua")"
read -r rej_rps rej_p50 rej_p99 _ <<<"$(run reject "http://127.0.0.1:$gw_port" "$work/reject.lua")"
kill "$gw"; wait "$gw" 2>/dev/null || true

target/release/examples/bare "127.0.0.1:$bare_port" "$hit_size" >"$work/bare.out" &
bare=$!; pids+=("$bare"); wait_for "$work/bare.out" "listening on"
read -r bare_rps bare_p50 bare_p99 _ <<<"$(run bare "http://127.0.0.1:$bare_port" "$work/hit.lua")"
kill "$bare"; wait "$bare" 2>/dev/null || true
target/release/examples/bare "127.0.0.1:$bare_port" "$reject_size" 429 >"$work/bare429.out" &
bare=$!; pids+=("$bare"); wait_for "$work/bare429.out" "listening on"
read -r bare429_rps bare429_p50 bare429_p99 _ <<<"$(run bare429 "http://127.0.0.1:$bare_port" "$work/hit.lua")"

mkdir -p bench-results
python3 - "$hit_rps" "$hit_p50" "$hit_p99" "$hit_bad" "$bare_rps" "$bare_p50" "$bare_p99" "$rej_rps" "$rej_p50" "$rej_p99" "$bare429_rps" "$bare429_p50" "$bare429_p99" "$hit_size" "$reject_size" "$RUNS" "$DURATION" "$CONNECTIONS" <<'PY'
import json, platform, os, sys
a = sys.argv[1:]
f = lambda i: float(a[i])
r = {
  "hit": {"rps": f(0), "p50_ms": f(1), "p99_ms": f(2), "non_2xx": int(a[3]), "body_bytes": int(a[13])},
  "bare_same_body": {"rps": f(4), "p50_ms": f(5), "p99_ms": f(6)},
  "reject_429": {"rps": f(7), "p50_ms": f(8), "p99_ms": f(9), "body_bytes": int(a[14])},
  "bare_429_same_body": {"rps": f(10), "p50_ms": f(11), "p99_ms": f(12)},
  "settings": {"runs": int(a[15]), "duration": a[16], "connections": int(a[17]), "wrk_threads": 1, "cores": os.cpu_count(), "machine": platform.processor() or platform.machine()},
}
r["hit_ratio_vs_bare"] = r["hit"]["rps"] / r["bare_same_body"]["rps"]
r["reject_ratio_vs_bare"] = r["reject_429"]["rps"] / r["bare_429_same_body"]["rps"]
json.dump(r, open("bench-results/gateway.json", "w"), indent=2)
md = f"""# embedgate hit-path ceiling

wrk, 1 thread, {r['settings']['connections']} connections, median of {r['settings']['runs']} runs of {r['settings']['duration']}, {r['settings']['cores']} cores (wrk and server share them).

| Path | requests/s | p50 | p99 | vs bare actix-web |
| --- | --- | --- | --- | --- |
| gateway pool hit ({r['hit']['body_bytes']} B body) | {r['hit']['rps']:,.0f} | {r['hit']['p50_ms']:.2f} ms | {r['hit']['p99_ms']:.2f} ms | **{r['hit_ratio_vs_bare']:.2f}x** |
| bare actix-web, same body | {r['bare_same_body']['rps']:,.0f} | {r['bare_same_body']['p50_ms']:.2f} ms | {r['bare_same_body']['p99_ms']:.2f} ms | 1.00x |
| gateway 429 rejection ({r['reject_429']['body_bytes']} B body) | {r['reject_429']['rps']:,.0f} | {r['reject_429']['p50_ms']:.2f} ms | {r['reject_429']['p99_ms']:.2f} ms | **{r['reject_ratio_vs_bare']:.2f}x** |
| bare actix-web 429, same body | {r['bare_429_same_body']['rps']:,.0f} | {r['bare_429_same_body']['p50_ms']:.2f} ms | {r['bare_429_same_body']['p99_ms']:.2f} ms | 1.00x |

Non-2xx during the hit runs (pool ran dry): {r['hit']['non_2xx']}.
"""
open("bench-results/gateway.md", "w").write(md)
print(md)
PY
