# Helpers shared by the benchmark scripts (sourced, not run).
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "timeout waiting for $2 in $1" >&2; cat "$1" >&2; exit 1; }
# BENCH_PROFILE=debug runs the scripts on dev builds (to check a script, not to measure).
profile=${BENCH_PROFILE:-release}
# BENCH_BIN measures another build of the gateway (e.g. an older commit) against this tree's examples.
bin=${BENCH_BIN:-target/$profile/embedgate}
examples=target/$profile/examples

# build: one build of everything the benchmarks run, skipped when bench.sh already built.
build() {
  [ -n "${BENCH_BUILT:-}" ] && return 0
  local flags=(--quiet --bin embedgate --example bare --example load --example memory)
  [ "$profile" = release ] && flags=(--release "${flags[@]}")
  cargo build "${flags[@]}"
}
build

# lib ARGS...: scripts/benchlib.py (configs from `embedgate dev --print-config`, wrk parsing).
lib() { python3 scripts/benchlib.py "$@"; }

# start_sim NAME [sim flags...]: starts a simulator on an ephemeral port; sets sim_pid, sim_url.
start_sim() {
  local name=$1; shift
  "$bin" sim --listen 127.0.0.1:0 "$@" >"$work/$name.out" 2>/dev/null &
  sim_pid=$!; pids+=("$sim_pid")
  wait_for "$work/$name.out" "listening on"
  sim_url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$work/$name.out" | head -1)
}

# start_gateway CONFIG: starts `embedgate serve`; sets gw_pid. It logs at its default level
# (info: a JSON line per request, as it runs unless told otherwise) into CONFIG.err, or at
# GATEWAY_LOG (e.g. `warn`, to measure without the per-request lines); EMBEDGATE_LOG and RUST_LOG
# from the caller's shell are not passed on.
start_gateway() {
  env -u EMBEDGATE_LOG -u RUST_LOG ${GATEWAY_LOG:+EMBEDGATE_LOG="$GATEWAY_LOG"} \
    "$bin" serve --config "$1" 2>"$1.err" &
  gw_pid=$!; pids+=("$gw_pid")
}

# stop PID: stops a process started here and waits for it.
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# admin_json PORT PATH EXPR: evaluates a Python expression over the admin endpoint's JSON (as j).
admin_json() { curl -s "http://127.0.0.1:$1$2" | python3 -c "import json,sys; j=json.load(sys.stdin); print($3)"; }

# pooled ADMIN_PORT PID TARGET ERR_FILE: waits until the gateway (PID, admin on ADMIN_PORT) pools
# TARGET URLs or ten minutes pass, and prints how many it holds; stops the bench, showing
# ERR_FILE, if the gateway exits.
pooled() {
  local urls=0
  for _ in $(seq 2400); do
    kill -0 "$2" 2>/dev/null || { echo "the gateway exited:" >&2; cat "$4" >&2; exit 1; }
    urls=$(admin_json "$1" /state 'j["pool"]["urls"]' 2>/dev/null || echo 0)
    [ "$urls" -ge "$3" ] && break
    sleep 0.25
  done
  echo "$urls"
}

# cpu_ticks PID: the process's user + system CPU time so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# round NAME PID SCRIPT PORT [SCHEME]: one wrk run (CONNECTIONS connections for DURATION, the
# caller's) against PORT over SCHEME (http, or https), its output in $work/NAME, and the CPU
# ticks the server process PID spent during it in $work/NAME.cpu.
round() {
  local t0; t0=$(cpu_ticks "$2")
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$3" "${5:-http}://127.0.0.1:$4" >"$work/$1" 2>&1
  echo $(( $(cpu_ticks "$2") - t0 )) >"$work/$1.cpu"
}

# hit_script KEYS FILE: a wrk script that asks the bench tenant for its KEYS warm keys in turn
# (the keys benchlib.py's gateway config warms) and prints p99.9.
hit_script() {
  cat >"$2" <<LUA
local i = 0
local keys = $1
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer bench-key"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = (i % keys) + 1
  local body = string.format('{"DashboardId":"d-%04d","IdentityType":"QUICKSIGHT","UserArn":"arn:aws:quicksight:us-east-1:111122223333:user/default/user-%04d"}', i - 1, i - 1)
  return wrk.format(nil, "/v1/embed-url/dashboard", nil, body)
end
done = function(summary, latency, requests)
  io.write(string.format("p99.9 %.3f ms\n", latency:percentile(99.9) / 1000))
end
LUA
}

# sim_hangs RATE [SIM_URL]: the share of calls the simulator (default: the last one started)
# holds (1.0: all of them; 0.0: none).
sim_hangs() {
  curl -sf -X POST "${2:-$sim_url}/_sim/knobs" -H 'Content-Type: application/json' \
    -d "{\"hang_rate\": $1, \"hang_ms\": 3600000}" >/dev/null
}

# refilled ADMIN_PORT PID ERR_FILE: lets the simulator (the last one started) answer until the
# gateway (PID, admin on ADMIN_PORT) pools KEYS x DEPTH URLs (see `pooled`), then makes it hold
# every call again, so only pool hits are measured; prints how many URLs the pool holds.
refilled() {
  sim_hangs 0.0
  pooled "$1" "$2" $((KEYS * DEPTH)) "$3"
  sim_hangs 1.0
}

# only_hits FILE URLS WHAT: stops the bench unless the wrk run in FILE met only pool hits (no
# socket errors, timeouts or non-2xx: else the pool ran dry and the run measured the held
# simulator) and left at least KEYS URLs (URLS) in the pool (else some key may have run dry, and
# requests that waited on the held simulator past the end of the run show in no error count,
# only as a lower rate).
only_hits() {
  if grep -q 'Socket errors\|Non-2xx' "$1"; then
    echo "$(basename "$0" .sh): $3 met more than pool hits (the pool ran dry?); raise KEYS or DEPTH:" >&2
    cat "$1" >&2; exit 1
  fi
  [ "$2" -ge "$KEYS" ] && return 0
  echo "$(basename "$0" .sh): $3 left $2 URLs in the pool (the pool ran dry?); raise KEYS or DEPTH" >&2
  exit 1
}

# topped_up HAVE NEED WHAT REFILL...: before a round of hits, runs REFILL when WHAT holds HAVE URLs,
# fewer than the NEED the round may take (a fast machine can drain a pool in one round, and a dry
# pool would measure the held simulator's calls instead of hits).
topped_up() {
  local have=$1 need=$2 what=$3; shift 3
  [ "$have" -ge "$need" ] && return 0
  echo "$what holds $have URLs, fewer than a round may take ($need): refilling"
  "$@"
}

# next_need FILE: how many URLs the next round may take: as many as the wrk run in FILE served
# in DURATION, and half again.
next_need() { python3 -c "print(int($(lib wrk "$1" | cut -d' ' -f1) * ${DURATION%s} * 1.5))"; }
