#!/usr/bin/env bash
# Hit-path and rejection-path ceiling: the gateway against a bare actix-web endpoint with a body
# of the same size, same load generator (wrk), same settings, in the same run.
#
# The pool is pre-filled through warm keys (KEYS keys x DEPTH URLs) from the simulator, which
# then holds every call until the gateway gives up on it (hang_rate 1), so the measured window
# contains pool hits only and no upstream work competes for the CPU: the refiller's restocking
# waits idle in at most `refill.concurrency` calls, then backs off. (A stopped simulator would
# refuse each connection at once, and the refiller would spin through failed calls.)
# Before each round of hits the pool is topped up if that round could drain it (the simulator
# answers again until the pool is full); a round that meets anything but pool hits stops the bench.
# Each round also reads each server's CPU time, so the report gives CPU per request beside the
# throughput. Writes bench-results/gateway.md and bench-results/gateway.json.
# Then the latency of pool hits at half the measured maximum rate: wrk again, each connection
# pausing PACE_MS after every answer, with as many connections as make half the maximum.
# The gateway runs at its default log level (info: a JSON line per request, into a file in the
# run's scratch directory, about 350 bytes a request); GATEWAY_LOG=warn measures it without them.
# Needs wrk (apt-get install wrk). Knobs: KEYS, DEPTH, RUNS, DURATION (seconds, e.g. 2s), CONNECTIONS,
# LOAD_SECS, GATEWAY_LOG.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-600}
DEPTH=${DEPTH:-1000}
RUNS=${RUNS:-5}
DURATION=${DURATION:-2s}
CONNECTIONS=${CONNECTIONS:-64}
LOAD_SECS=${LOAD_SECS:-10}
PACE_MS=${PACE_MS:-2}
command -v wrk >/dev/null || { echo "bench-gateway: wrk is required (apt-get install wrk)" >&2; exit 1; }
source scripts/bench-lib.sh
gw_port=$(free_port); admin_port=$(free_port); bare_port=$(free_port); bare429_port=$(free_port)

# gateway_config SIM_URL: the gateway's config, KEYS warm keys of DEPTH URLs each.
gateway_config() { lib config gateway "$bin" "$work/gateway.toml" "$1" "$gw_port" "$admin_port" "$KEYS" "$DEPTH"; }

# pool_urls: the URLs in the gateway's pool.
pool_urls() { admin_json "$admin_port" /state 'j["pool"]["urls"]'; }

# filled: lets the simulator answer until the gateway's pool holds KEYS x DEPTH URLs (or ten
# minutes pass), then makes it hold every call again, so only pool hits are measured.
filled() {
  local urls
  urls=$(refilled "$admin_port" "$gw_pid" "$work/gateway.toml.err")
  echo "pool holds $urls URLs; the simulator now holds every call"
}

# filled_gateway: starts a simulator and a gateway and fills the pool.
filled_gateway() {
  start_sim sim
  gateway_config "$sim_url"
  start_gateway "$work/gateway.toml"
  echo "filling the pool with $((KEYS * DEPTH)) URLs..."
  filled
}

filled_gateway

hit_script "$KEYS" "$work/hit.lua"
sed 's/bench-key/abuser-key/' "$work/hit.lua" >"$work/reject.lua"
size_of() { curl -s -o /dev/null -w '%{size_download}' -X POST "$1" -H "Authorization: Bearer $2" -H 'Content-Type: application/json' \
  -d '{"DashboardId":"d-0000","IdentityType":"QUICKSIGHT","UserArn":"arn:aws:quicksight:us-east-1:111122223333:user/default/user-0000"}'; }
hit_size=$(size_of "http://127.0.0.1:$gw_port/v1/embed-url/dashboard" bench-key)
size_of "http://127.0.0.1:$gw_port/v1/embed-url/dashboard" abuser-key >/dev/null
reject_size=$(size_of "http://127.0.0.1:$gw_port/v1/embed-url/dashboard" abuser-key)

# Both bare endpoints run beside the filled gateway (idle servers cost nothing), so the runs can
# interleave: every round measures the gateway's hits, bare hits, the gateway's 429s and bare 429s
# back to back, and the machine's drift over the run touches each path alike.
$examples/bare "127.0.0.1:$bare_port" "$hit_size" >"$work/bare.out" &
bare=$!; pids+=("$bare"); wait_for "$work/bare.out" "listening on"
$examples/bare "127.0.0.1:$bare429_port" "$reject_size" 429 >"$work/bare429.out" &
bare429=$!; pids+=("$bare429"); wait_for "$work/bare429.out" "listening on"
need=$((KEYS * DEPTH / 2))
for i in $(seq "$RUNS"); do
  topped_up "$(pool_urls)" "$need" "the pool" filled
  round "hit.$i" "$gw_pid" "$work/hit.lua" "$gw_port"
  only_hits "$work/hit.$i" "$(pool_urls)" "round $i"
  need=$(next_need "$work/hit.$i")
  round "bare.$i" "$bare" "$work/hit.lua" "$bare_port"
  round "reject.$i" "$gw_pid" "$work/reject.lua" "$gw_port"
  round "bare429.$i" "$bare429" "$work/hit.lua" "$bare429_port"
done
# median NAME: "rps p50 p99 p999 non2xx" of the median-rps run of NAME.
median() { lib wrk $(for i in $(seq "$RUNS"); do echo "$work/$1.$i"; done); }
read -r hit_rps hit_p50 hit_p99 hit_p999 hit_bad <<<"$(median hit)"
read -r rej_rps rej_p50 rej_p99 rej_p999 _ <<<"$(median reject)"
read -r bare_rps bare_p50 bare_p99 bare_p999 _ <<<"$(median bare)"
read -r bare429_rps bare429_p50 bare429_p99 bare429_p999 _ <<<"$(median bare429)"
# Per-run ratios (each against the bare run of its own round), for the report.
hit_ratios=$(for i in $(seq "$RUNS"); do lib wrk "$work/hit.$i" | cut -d' ' -f1; lib wrk "$work/bare.$i" | cut -d' ' -f1; done | paste -sd' ')
rej_ratios=$(for i in $(seq "$RUNS"); do lib wrk "$work/reject.$i" | cut -d' ' -f1; lib wrk "$work/bare429.$i" | cut -d' ' -f1; done | paste -sd' ')
stop "$gw_pid"; stop "$sim_pid"; stop "$bare"; stop "$bare429"

# Latency at load: a fresh, filled gateway; open-loop constant rate at half the measured maximum.
filled_gateway
at_load_rate=$(python3 -c "print(round($hit_rps / 2))")
# Each connection sends one request per (pause + latency): connections = rate x that period.
at_load_conns=$(python3 -c "print(max(1, round($at_load_rate * ($PACE_MS + $hit_p50) / 1000)))")
sed "s/^done = function/delay = function() return $PACE_MS end\ndone = function/" "$work/hit.lua" >"$work/paced.lua"
echo "latency at load: aiming at $at_load_rate requests/s with $at_load_conns paced connections for ${LOAD_SECS}s"
wrk -t1 -c"$at_load_conns" -d"${LOAD_SECS}s" --latency -s "$work/paced.lua" "http://127.0.0.1:$gw_port" >"$work/at_load.txt" 2>&1
only_hits "$work/at_load.txt" "$(pool_urls)" "the run at half the maximum"
lib wrk-json "$work/at_load.txt" "$at_load_rate" "$at_load_conns" >"$work/at_load.json"
stop "$gw_pid"; stop "$sim_pid"

mkdir -p bench-results
export hit_rps hit_p50 hit_p99 hit_p999 hit_bad bare_rps bare_p50 bare_p99 bare_p999 rej_rps rej_p50 rej_p99 rej_p999 \
  bare429_rps bare429_p50 bare429_p99 bare429_p999 hit_ratios rej_ratios hit_size reject_size RUNS DURATION CONNECTIONS LOAD_SECS PACE_MS
export log_level=${GATEWAY_LOG:-info (default)} clk_tck=$(getconf CLK_TCK) work
python3 - "$work/at_load.json" <<'PY'
import json, platform, os, re, sys
e = os.environ
def cpu_us(name):
    """Median over the rounds of the server's CPU time per request served, in microseconds."""
    per = []
    for i in range(1, int(e["RUNS"]) + 1):
        base = os.path.join(e["work"], f"{name}.{i}")
        served = int(re.search(r"(\d+) requests in", open(base).read()).group(1))
        ticks = int(open(base + ".cpu").read())
        per.append(ticks / int(e["clk_tck"]) * 1e6 / max(served, 1))
    return round(sorted(per)[len(per) // 2], 2)
f = lambda k: float(e[k])
path = lambda p: {"rps": f(p + "_rps"), "p50_ms": f(p + "_p50"), "p99_ms": f(p + "_p99"), "p999_ms": f(p + "_p999")}
r = {
  "hit": {**path("hit"), "non_2xx": int(e["hit_bad"]), "body_bytes": int(e["hit_size"])},
  "bare_same_body": path("bare"),
  "reject_429": {**path("rej"), "body_bytes": int(e["reject_size"])},
  "bare_429_same_body": path("bare429"),
  "at_half_max": json.load(open(sys.argv[1])),
  "settings": {"runs": int(e["RUNS"]), "duration": e["DURATION"], "connections": int(e["CONNECTIONS"]), "wrk_threads": 1,
               "at_load_secs": int(e["LOAD_SECS"]), "pace_ms": int(e["PACE_MS"]), "cores": os.cpu_count(), "machine": platform.processor() or platform.machine(),
               "gateway_log_level": e["log_level"]},
}
def rounds(k):
    v = [float(x) for x in e[k].split()]
    return [round(v[i] / v[i + 1], 3) for i in range(0, len(v), 2)]
r["hit_ratios_by_round"] = rounds("hit_ratios")
r["reject_ratios_by_round"] = rounds("rej_ratios")
r["hit_ratio_vs_bare"] = sorted(r["hit_ratios_by_round"])[len(r["hit_ratios_by_round"]) // 2]
r["reject_ratio_vs_bare"] = sorted(r["reject_ratios_by_round"])[len(r["reject_ratios_by_round"]) // 2]
for k, name in (("hit", "hit"), ("bare_same_body", "bare"), ("reject_429", "reject"), ("bare_429_same_body", "bare429")):
    r[k]["cpu_us_per_request"] = cpu_us(name)
json.dump(r, open("bench-results/gateway.json", "w"), indent=2)
row = lambda name, x, ratio: f"| {name} | {x['rps']:,.0f} | {x['p50_ms']:.2f} ms | {x['p99_ms']:.2f} ms | {x['p999_ms']:.2f} ms | {ratio} | {x['cpu_us_per_request']:.2f} µs |"
a = r["at_half_max"]
st = r["settings"]
md = f"""## Hit-path ceiling

wrk, 1 thread, {st['connections']} connections, {st['runs']} interleaved rounds of {st['duration']} per path (gateway hit, bare, gateway 429, bare 429), {st['cores']} cores (wrk and server share them),
the gateway logging at {st['gateway_log_level']}.\nFigures are the median-throughput run of each path; the ratio is the median of the per-round ratios\n(hits: {', '.join(map(str, r['hit_ratios_by_round']))}; 429s: {', '.join(map(str, r['reject_ratios_by_round']))}).

| Path | requests/s | p50 | p99 | p99.9 | vs bare actix-web | server CPU per request |
| --- | --- | --- | --- | --- | --- | --- |
{row(f"gateway pool hit ({r['hit']['body_bytes']} B body)", r['hit'], f"**{r['hit_ratio_vs_bare']:.2f}x**")}
{row("bare actix-web, same body", r['bare_same_body'], "1.00x")}
{row(f"gateway 429 rejection ({r['reject_429']['body_bytes']} B body)", r['reject_429'], f"**{r['reject_ratio_vs_bare']:.2f}x**")}
{row("bare actix-web 429, same body", r['bare_429_same_body'], "1.00x")}

Server CPU per request is the server process's CPU time (`/proc/<pid>/stat`) over a round divided by
the requests it served, the median of the rounds: steadier than the throughput ratios, which
move with how wrk and the server share the cores.

Non-2xx during the hit runs (pool ran dry): {r['hit']['non_2xx']}.

## Latency at load

Pool hits aiming at {a['target_rps']:,.0f} requests/s (half the maximum above) for {st['at_load_secs']} s: wrk with
{a['connections']} connections, each pausing {st['pace_ms']} ms after every answer. Achieved {a['achieved_rps']:,.0f}/s:
p50 {a['p50_ms']:.2f} ms, **p99 {a['p99_ms']:.2f} ms**, p99.9 {a['p999_ms']:.2f} ms, {a['non_2xx']} non-2xx.
"""
open("bench-results/gateway.md", "w").write(md)
print(md)
PY
