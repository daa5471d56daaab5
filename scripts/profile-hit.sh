#!/usr/bin/env bash
# Where a pool hit's (or a 429's) CPU goes, by stage: `scripts/profile-hit.sh [hit|reject]`.
#
# One gateway on the simulator, its pool filled through warm keys (KEYS x DEPTH URLs; the
# simulator then holds every call, so only pool hits are measured, as in bench-gateway.sh). wrk
# (1 thread, 64 connections) sends SECS seconds of hits (or of a throttled tenant's requests)
# twice: first unprofiled, to read the gateway's CPU per request from /proc/<pid>/stat, then
# under `perf record --call-graph dwarf` (CPU clock, FREQ samples a second), whose samples
# scripts/profile-stages.py sorts into the request's stages. Each stage's figure is its share of
# the gateway's samples times the unprofiled CPU per request. Writes
# bench-results/profile-KIND.md (and keeps perf's data as bench-results/profile-KIND.data).
# Needs wrk and perf (apt-get install wrk linux-perf). Knobs: KEYS (300), DEPTH (1000), SECS
# (4), FREQ (999), GATEWAY_LOG; BENCH_BIN and BENCH_BUILT as for the other bench scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=${1:-hit}
KEYS=${KEYS:-300}
DEPTH=${DEPTH:-1000}
SECS=${SECS:-4}
FREQ=${FREQ:-999}
case "$KIND" in hit | reject) ;; *) echo "usage: scripts/profile-hit.sh [hit|reject]" >&2; exit 2 ;; esac
for tool in wrk perf; do
  command -v "$tool" >/dev/null || { echo "profile-hit: $tool is required (apt-get install wrk linux-perf)" >&2; exit 1; }
done
source scripts/bench-lib.sh
port=$(free_port); admin_port=$(free_port)

start_sim sim
lib config gateway "$bin" "$work/gateway.toml" "$sim_url" "$port" "$admin_port" "$KEYS" "$DEPTH"
start_gateway "$work/gateway.toml"
hit_script "$KEYS" "$work/hit.lua"
if [ "$KIND" = reject ]; then
  # The throttled tenant's burst used up first (while the simulator still answers), so every
  # request of the runs is a 429.
  sed -i 's/bench-key/abuser-key/' "$work/hit.lua"
  for _ in 1 2; do
    curl -s -o /dev/null -w "abuser: %{http_code}\n" --retry 50 --retry-connrefused --retry-delay 1 -X POST "http://127.0.0.1:$port/v1/embed-url/dashboard" \
      -H 'Authorization: Bearer abuser-key' -H 'Content-Type: application/json' \
      -d '{"DashboardId":"d-0000","IdentityType":"QUICKSIGHT","UserArn":"arn:aws:quicksight:us-east-1:111122223333:user/default/user-0000"}' || true
  done
fi

# measured NAME [COMMAND...]: fills the pool, then one round of wrk (bench-lib's `round`, SECS
# seconds) into $work/NAME, COMMAND (if any) running beside it; prints the gateway's CPU per
# request over the round, in microseconds.
CONNECTIONS=64
DURATION=${SECS}s
measured() {
  local name=$1 beside="" served; shift
  refilled "$admin_port" "$gw_pid" "$work/gateway.toml.err" >/dev/null
  if [ $# -gt 0 ]; then "$@" & beside=$!; fi
  round "$name" "$gw_pid" "$work/hit.lua" "$port"
  if [ -n "$beside" ]; then wait "$beside"; fi
  [ "$KIND" = reject ] || only_hits "$work/$name" "$(admin_json "$admin_port" /state 'j["pool"]["urls"]')" "the $name run"
  served=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$work/$name")
  python3 -c "print(round($(cat "$work/$name.cpu") / $(getconf CLK_TCK) * 1e6 / max($served, 1), 2))"
}

cpu_us=$(measured plain)
echo "gateway CPU per request, unprofiled: $cpu_us µs ($(lib wrk "$work/plain" | cut -d' ' -f1) requests/s)"
mkdir -p bench-results
under_perf=$(measured profiled perf record -q -e cpu-clock -F "$FREQ" --call-graph dwarf,16384 -p "$gw_pid" \
  -o bench-results/"profile-$KIND.data" -- sleep "$((SECS > 1 ? SECS - 1 : 1))")
echo "under perf: $under_perf µs"
stop "$gw_pid"; stop "$sim_pid"
echo "sorting the samples into stages (perf script with inlined frames: a minute or two)"
{
  echo "## Where a gateway's $KIND costs its CPU"
  echo
  echo "The gateway \`$bin\` (this tree: $(git rev-parse --short HEAD 2>/dev/null || echo '?')), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs);"
  echo "wrk 1 thread, 64 connections, $SECS s; $(lib wrk "$work/plain" | cut -d' ' -f1) requests/s unprofiled;"
  echo "gateway log level ${GATEWAY_LOG:-info (default)}."
  echo
  perf script -i bench-results/"profile-$KIND.data" -F comm,ip,sym --inline 2>/dev/null |
    python3 scripts/profile-stages.py "$cpu_us"
} >bench-results/"profile-$KIND.md"
cat bench-results/"profile-$KIND.md"
