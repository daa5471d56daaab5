#!/usr/bin/env bash
# Redis's own time for one shared-pool hit, for one build or two side by side.
#
# For each build: a fresh redis-server, the build's simulator (`embedgate sim`) and gateway
# (`embedgate serve`, the `dev` demo tenant's settings with `redis.url` set) answer 30 requests
# for one key, and `MONITOR` captures the last `hit` function call the gateway sent. Its pool key
# is filled with DEPTH members of a real URL's size, its tenant limit lifted (every call
# admitted), and `redis-benchmark -c 1` sends it CALLS times; Redis's `usec_per_call` of `FCALL`
# (time inside the function, none of the network I/O) is the figure, beside `EVAL "return 1" 0`
# (the floor of any script call). With two builds the rounds alternate, and the report gives each
# build's median and the median of the rounds' differences (B - A).
#
# usage: scripts/bench-redis-call.sh BUILD_A [BUILD_B]   (release builds of embedgate)
# Knobs: ROUNDS (5), CALLS (100000), DEPTH (200000). Needs redis-server, redis-cli and
# redis-benchmark (Debian's redis-server and redis-tools; scripts/setup.sh installs them), curl.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
CALLS=${CALLS:-100000}
DEPTH=${DEPTH:-200000}
[ $# -ge 1 ] || { echo "usage: $0 BUILD_A [BUILD_B]" >&2; exit 2; }
for tool in redis-server redis-cli redis-benchmark curl; do
  command -v "$tool" >/dev/null || { echo "bench-redis-call: $tool is required" >&2; exit 1; }
done
source scripts/bench-lib.sh

# One round for build $1: prints "<hit µs> <floor µs>".
one_round() {
  local bin=$1 rport gw admin sim
  rport=$(free_port); gw=$(free_port); admin=$(free_port); sim=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.out" 2>&1 &
  local redis_pid=$!; pids+=("$redis_pid")
  wait_for "$work/redis.out" "Ready to accept connections"
  "$bin" dev --print-config --api-key k-bench --listen "127.0.0.1:$gw" \
    --admin-listen "127.0.0.1:$admin" --sim-listen "127.0.0.1:$sim" >"$work/gw.toml"
  local key secret
  key=$(sed -n 's/^access_key_id = "\(.*\)"/\1/p' "$work/gw.toml" | head -1)
  secret=$(sed -n 's/^secret_access_key = "\(.*\)"/\1/p' "$work/gw.toml" | head -1)
  "$bin" sim --listen "127.0.0.1:$sim" --access-key-id "$key" --secret-access-key "$secret" >"$work/sim.out" 2>&1 &
  local sim_pid=$!; pids+=("$sim_pid")
  EMBEDGATE_LOG=warn EMBEDGATE_REDIS__URL="redis://127.0.0.1:$rport" "$bin" serve --config "$work/gw.toml" >"$work/gw.out" 2>&1 &
  local gw_pid=$!; pids+=("$gw_pid")
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$gw/readyz" && break; sleep 0.2; done
  redis-cli -p "$rport" MONITOR >"$work/monitor.out" &
  local monitor_pid=$!; pids+=("$monitor_pid")
  local body='{"DashboardId":"sales-2024","IdentityType":"QUICKSIGHT","UserArn":"arn:aws:quicksight:us-east-1:111122223333:user/default/alice"}'
  for _ in $(seq 30); do
    curl -s -o /dev/null -H 'Authorization: Bearer k-bench' -H 'Content-Type: application/json' \
      -d "$body" "http://127.0.0.1:$gw/v1/embed-url/dashboard"
    sleep 0.1
  done
  sleep 0.5
  stop "$monitor_pid"; stop "$gw_pid"; stop "$sim_pid"
  local line
  line=$(grep '_hit"' "$work/monitor.out" | tail -1)
  [ -n "$line" ] || { echo "bench-redis-call: no hit call captured from $bin" >&2; cat "$work/gw.out" >&2; exit 1; }
  python3 - "$line" "$rport" "$CALLS" "$DEPTH" <<'PY'
import re, shlex, subprocess, sys, time
line, port, calls, depth = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
# MONITOR: `<time> [<db> <client>] "FCALL" "<function>" "<numkeys>" keys... args...`
args = shlex.split(line.split('] ', 1)[1])
nkeys = int(args[2])
keys, argv = args[3:3 + nkeys], args[3 + nkeys:]
# The hit's own arguments come last: cutoff, remember, now, interval, burst, max_late.
argv[-3], argv[-2] = '0.000001', '1000000000'
pool = next(k for k in keys if ':p3:' in k)
fill = ("for i = 1, tonumber(ARGV[1]) do redis.call('ZADD', KEYS[1], ARGV[2], "
        "string.format('%016x', i) .. 'p' .. 'https://x.test/embed/' .. string.rep('a', 400) .. i) end")
cli = lambda *a: subprocess.run(['redis-cli', '-p', port, *a], capture_output=True, text=True).stdout
cli('EVAL', fill, '1', pool, depth, str(int(time.time() * 1000)))
def per_call(command, stat):
    cli('CONFIG', 'RESETSTAT')
    subprocess.run(['redis-benchmark', '-p', port, '-c', '1', '-n', calls, '-q', *command],
                   capture_output=True, check=True)
    m = re.search(rf'cmdstat_{stat}:calls=(\d+),usec=\d+,usec_per_call=([\d.]+),'
                  rf'rejected_calls=\d+,failed_calls=(\d+)', cli('INFO', 'commandstats'))
    if m is None or m.group(3) != '0':
        sys.exit(f'bench-redis-call: the {stat} calls failed: {m and m.group(0)}')
    return float(m.group(2))
print(per_call(['FCALL', args[1], str(nkeys), *keys, *argv], 'fcall'),
      per_call(['EVAL', 'return 1', '0'], 'eval'))
PY
  stop "$redis_pid"
}

for i in $(seq "$ROUNDS"); do
  for b in "$@"; do
    one_round "$b" >"$work/round"
    read -r hit floor <"$work/round"
    echo "round $i $b: hit $hit us a call in Redis (EVAL \"return 1\": $floor us)"
    echo "$b $hit" >>"$work/rounds"
  done
done
python3 - "$work/rounds" "$@" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
builds = sys.argv[2:]
by = {b: [float(h) for x, h in rows if x == b] for b in builds}
for b in builds:
    print(f"{b}: median {statistics.median(by[b]):.2f} us a hit in Redis over {len(by[b])} rounds")
if len(builds) == 2:
    diffs = [y - x for x, y in zip(by[builds[0]], by[builds[1]])]
    print(f"B - A: median of the rounds' differences {statistics.median(diffs):+.2f} us "
          f"({', '.join(f'{d:+.2f}' for d in diffs)})")
PY
