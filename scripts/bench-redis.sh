#!/usr/bin/env bash
# Cluster mode against a single node, same machine, same run: how fast warm keys fill the shared
# pool in Redis against the local pool, and how fast pool hits are served from each.
#
# 1. Fill: a gateway with KEYS warm keys DEPTH deep and a simulator answering at once; the time
#    until the pool holds KEYS x DEPTH URLs gives URLs/s. Local first, then with `redis.url` on a
#    fresh redis-server (counted in Redis, through the tenant's count key).
# 2. Hits: both filled gateways run side by side, their simulators holding every call
#    (hang_rate 1) so only hits are measured; wrk (1 thread, CONNECTIONS connections) measures
#    them in RUNS interleaved rounds of DURATION. The ratio is the median of the per-round ratios.
#    Before each round a pool that round could drain is topped up (its simulator answers again
#    until it is full); a round that meets anything but pool hits stops the bench.
#    Redis round trips per hit come from the gateway's own embedgate_redis_duration_seconds.
# PIN=1 runs Redis on CPU 1 and everything else (gateways, simulators, wrk) on CPU 0, as when
# Redis has a host of its own: both pools' hits then get the same CPU, and the shared ones pay
# what the round trip costs the gateway, not Redis's own work. (Unpinned, Redis competes with
# the gateway and wrk for the same two cores.)
# LINK=1 puts Redis in a network namespace of its own behind a veth pair (MTU 1500), as when
# Redis is another host on an Ethernet network, its packets crossing a device between network
# stacks instead of the loopback's shortcut. LINK_DELAY=0.25ms also delays each packet by that
# much each way (netem; a kernel without sch_netem refuses it). Both need root and iproute2's
# `ip` and `tc`.
# Writes bench-results/redis.{md,json} (redis-pinned.{md,json} with PIN=1; -link added with
# LINK=1). Needs wrk and redis-server (scripts/setup.sh installs redis-server; apt-get install
# wrk). Knobs: KEYS, DEPTH, RUNS, DURATION, CONNECTIONS, PIN, LINK, LINK_DELAY, GATEWAY_LOG (the
# gateways' log level; unset: their default, info, a line per request).
set -euo pipefail
cd "$(dirname "$0")/.."
PIN=${PIN:-0}
if [ "$PIN" = 1 ] && [ -z "${BENCH_PINNED:-}" ]; then
  command -v taskset >/dev/null || { echo "bench-redis: PIN=1 needs taskset (util-linux)" >&2; exit 1; }
  [ "$(nproc --all)" -ge 2 ] || { echo "bench-redis: PIN=1 needs two CPUs" >&2; exit 1; }
  exec env BENCH_PINNED=1 taskset -c 0 bash "$0" "$@"
fi
redis_cpu_prefix=(); redis_flags=(); out=redis
[ "$PIN" = 1 ] && { redis_cpu_prefix=(taskset -c 1); out=redis-pinned; }
KEYS=${KEYS:-400}
DEPTH=${DEPTH:-1000}
RUNS=${RUNS:-5}
DURATION=${DURATION:-2s}
CONNECTIONS=${CONNECTIONS:-64}
command -v wrk >/dev/null || { echo "bench-redis: wrk is required (apt-get install wrk)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "bench-redis: redis-server is required (scripts/setup.sh installs it)" >&2; exit 1; }
source scripts/bench-lib.sh
LINK_DELAY=${LINK_DELAY:-}
LINK=${LINK:-0}
[ -n "$LINK_DELAY" ] && LINK=1
redis_host=127.0.0.1
if [ "$LINK" = 1 ]; then
  [ "$(id -u)" = 0 ] && command -v ip >/dev/null && command -v tc >/dev/null ||
    { echo "bench-redis: LINK=1 needs root, ip and tc (iproute2)" >&2; exit 1; }
  # The namespace, its veth pair and the addresses, unique to this run.
  ns=egbench$$; veth=egb$$; subnet=$((($$ % 250) + 1))
  redis_host=10.213.$subnet.2
  ip netns add "$ns"
  # Deleting the namespace deletes its end of the veth pair, and with it the other end.
  trap 'cleanup; ip netns del "$ns" 2>/dev/null || true' EXIT
  ip link add "${veth}h" type veth peer name "${veth}r"
  ip link set "${veth}r" netns "$ns"
  ip addr add "10.213.$subnet.1/30" dev "${veth}h" && ip link set "${veth}h" up
  ip netns exec "$ns" ip addr add "$redis_host/30" dev "${veth}r"
  ip netns exec "$ns" ip link set "${veth}r" up && ip netns exec "$ns" ip link set lo up
  if [ -n "$LINK_DELAY" ]; then
    tc qdisc add dev "${veth}h" root netem delay "$LINK_DELAY"
    ip netns exec "$ns" tc qdisc add dev "${veth}r" root netem delay "$LINK_DELAY"
  fi
  redis_cpu_prefix=(ip netns exec "$ns" "${redis_cpu_prefix[@]}")
  # Reached from outside its namespace, a Redis without a password refuses all but the loopback.
  redis_flags=(--protected-mode no)
  out=$out-link
fi
target=$((KEYS * DEPTH))

rport=$(free_port)
"${redis_cpu_prefix[@]}" redis-server --port "$rport" --bind "$redis_host" --save '' --appendonly no --dir "$work" "${redis_flags[@]}" >"$work/redis.out" 2>&1 &
redis_pid=$!; pids+=("$redis_pid"); wait_for "$work/redis.out" "Ready to accept connections"
rcli() { redis-cli -h "$redis_host" -p "$rport" "$@"; }

# shared_urls: the bench tenant's URLs in the shared pool (its count key, one per epoch).
shared_urls() {
  local n=0 k
  for k in $(rcli --scan --pattern 'embedgate:{t:bench}:n3:*'); do n=$((n + $(rcli ZCARD "$k"))); done
  echo "$n"
}
local_urls() { admin_json "$1" /state 'j["pool"]["urls"]' 2>/dev/null || echo 0; }

# pool_urls MODE: the URLs in MODE's pool.
pool_urls() { if [ "$1" = redis ]; then shared_urls; else local_urls "$local_admin"; fi; }

# fill MODE: lets MODE's simulator answer until MODE's pool holds KEYS x DEPTH URLs, then makes
# it hold every call again (so only hits are measured).
fill() {
  local mode=$1 urls=0 sim gw
  sim=$(eval echo "\$${mode}_sim"); gw=$(eval echo "\$${mode}_pid_gw")
  sim_hangs 0.0 "$sim"
  for _ in $(seq 2400); do
    kill -0 "$gw" 2>/dev/null || { echo "bench-redis: the gateway exited:" >&2; cat "$work/$mode.toml.err" >&2; exit 1; }
    urls=$(pool_urls "$mode")
    [ "$urls" -ge "$target" ] && break
    sleep 0.25
  done
  [ "$urls" -ge "$target" ] || { echo "bench-redis: the $mode pool reached only $urls of $target URLs in 10 minutes" >&2; exit 1; }
  sim_hangs 1.0 "$sim"
}

# filled MODE: starts a simulator and a gateway (MODE local or redis) and times the first fill.
# Sets <MODE>_port, <MODE>_pid_gw, <MODE>_admin, <MODE>_sim, <MODE>_fill_secs.
filled() {
  local mode=$1 port admin started now
  port=$(free_port); admin=$(free_port)
  start_sim "sim-$mode"
  if [ "$mode" = redis ]; then
    lib config gateway "$bin" "$work/$mode.toml" "$sim_url" "$port" "$admin" "$KEYS" "$DEPTH" "redis://$redis_host:$rport"
  else
    lib config gateway "$bin" "$work/$mode.toml" "$sim_url" "$port" "$admin" "$KEYS" "$DEPTH"
  fi
  started=$(date +%s.%N)
  start_gateway "$work/$mode.toml"
  printf -v "${mode}_port" %s "$port"
  printf -v "${mode}_pid_gw" %s "$gw_pid"
  printf -v "${mode}_admin" %s "$admin"
  printf -v "${mode}_sim" %s "$sim_url"
  echo "filling the $mode pool with $target URLs..."
  fill "$mode"
  now=$(date +%s.%N)
  printf -v "${mode}_fill_secs" %s "$(python3 -c "print(round($now - $started, 2))")"
  echo "$mode: $target URLs in $(eval echo "\$${mode}_fill_secs") s (from the gateway's start)"
}
filled local
# used_memory: Redis's used_memory (bytes); member_chars: the length of one pooled member.
used_memory() { rcli INFO memory | awk -F: '/^used_memory:/ { print $2 + 0 }'; }
member_chars() { rcli ZRANGE "$(rcli --scan --pattern 'embedgate:{t:bench}:p3:*' | sed -n 1p)" 0 0 | awk '{ print length($0) }'; }
empty_memory=$(used_memory)
filled redis
# Redis's memory per pooled URL, right after the first fill (nothing taken yet).
redis_bytes_per_url=$(( ($(used_memory) - empty_memory) / $(shared_urls) ))
redis_member_chars=$(member_chars)

hit_script "$KEYS" "$work/hit.lua"
# metric PORT SAMPLE: one sample's value from the admin listener (0 when absent).
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v s="$2" '$1 == s { print $2; f = 1 } END { if (!f) print 0 }'; }
hit_calls() { metric "$redis_admin" 'embedgate_redis_duration_seconds_count{op="hit"}'; }
other_calls() {
  local n=0 op
  for op in take inbound; do n=$(python3 -c "print($n + $(metric "$redis_admin" "embedgate_redis_duration_seconds_count{op=\"$op\"}"))"); done
  echo "$n"
}
requests() { # FILE...: requests wrk completed over the runs
  cat "$@" | awk '/requests in/ { n += $1 } END { print n + 0 }'
}
# cpu PID: CPU seconds the process has used (user + system).
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }
# scripts: "calls usec" of Redis's script and function calls so far (its command statistics).
scripts() { rcli INFO commandstats | awk -F'[=,:]' '/^cmdstat_(evalsha|fcall):/ { c += $3; u += $5 } END { print c + 0, u + 0 }'; }
hits_before=$(hit_calls); others_before=$(other_calls)
gw_cpu=0; redis_cpu=0; script_calls=0; script_usec=0
need_local=$((target / 2)); need_redis=$((target / 2))
for i in $(seq "$RUNS"); do
  topped_up "$(pool_urls local)" "$need_local" "the local pool" fill local
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/hit.lua" "http://127.0.0.1:$local_port" >"$work/local.$i" 2>&1
  only_hits "$work/local.$i" "$(pool_urls local)" "local round $i"
  need_local=$(next_need "$work/local.$i")
  topped_up "$(pool_urls redis)" "$need_redis" "the shared pool" fill redis
  g0=$(cpu "$redis_pid_gw"); r0=$(cpu "$redis_pid"); read -r c0 u0 <<<"$(scripts)"
  wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/hit.lua" "http://127.0.0.1:$redis_port" >"$work/redis.$i" 2>&1
  gw_cpu=$(python3 -c "print($gw_cpu + $(cpu "$redis_pid_gw") - $g0)"); redis_cpu=$(python3 -c "print($redis_cpu + $(cpu "$redis_pid") - $r0)")
  read -r c1 u1 <<<"$(scripts)"; script_calls=$((script_calls + c1 - c0)); script_usec=$((script_usec + u1 - u0))
  only_hits "$work/redis.$i" "$(pool_urls redis)" "shared round $i"
  need_redis=$(next_need "$work/redis.$i")
done
# Redis's own time per script call during the shared runs.
script_usec=$(python3 -c "print(round($script_usec / max(1, $script_calls), 2))")
hits=$(python3 -c "print(int($(hit_calls) - $hits_before))")
others=$(python3 -c "print(int($(other_calls) - $others_before))")
redis_requests=$(requests $(for i in $(seq "$RUNS"); do echo "$work/redis.$i"; done))
degraded=$(metric "$redis_admin" embedgate_redis_degraded)
median() { lib wrk $(for i in $(seq "$RUNS"); do echo "$work/$1.$i"; done); }
read -r local_rps local_p50 local_p99 local_p999 local_bad <<<"$(median local)"
read -r redis_rps redis_p50 redis_p99 redis_p999 redis_bad <<<"$(median redis)"
ratios=$(for i in $(seq "$RUNS"); do lib wrk "$work/redis.$i" | cut -d' ' -f1; lib wrk "$work/local.$i" | cut -d' ' -f1; done | paste -sd' ')

mkdir -p "bench-results/raw-$out"
# The configs, the last megabyte of each gateway's log (at the default level a line per request)
# and wrk's outputs, for a second look.
cp "$work"/*.toml "$work"/local.* "$work"/redis.* "bench-results/raw-$out/" 2>/dev/null || true
for f in "$work"/*.err; do tail -c 1000000 "$f" >"bench-results/raw-$out/$(basename "$f")"; done
export redis_bytes_per_url redis_member_chars out PIN LINK LINK_DELAY gw_cpu redis_cpu script_usec KEYS DEPTH RUNS DURATION CONNECTIONS target local_fill_secs redis_fill_secs hits others redis_requests degraded \
  local_rps local_p50 local_p99 local_p999 local_bad redis_rps redis_p50 redis_p99 redis_p999 redis_bad ratios
python3 - <<'PY'
import json, os, platform
e = os.environ
f = lambda k: float(e[k])
v = [float(x) for x in e["ratios"].split()]
by_round = [round(v[i] / v[i + 1], 3) for i in range(0, len(v), 2)]
path = lambda p: {"rps": f(p + "_rps"), "p50_ms": f(p + "_p50"), "p99_ms": f(p + "_p99"), "p999_ms": f(p + "_p999"),
                  "non_2xx": int(e[p + "_bad"])}
urls = int(e["target"])
r = {
  "fill": {"urls": urls, "local_secs": f("local_fill_secs"), "redis_secs": f("redis_fill_secs"),
           "local_urls_per_sec": round(urls / f("local_fill_secs")), "redis_urls_per_sec": round(urls / f("redis_fill_secs")),
           "redis_slower_by": round(f("redis_fill_secs") / f("local_fill_secs"), 2)},
  "hit_local": path("local"), "hit_redis": path("redis"),
  "hit_ratio_by_round": by_round, "hit_ratio_redis_vs_local": sorted(by_round)[len(by_round) // 2],
  "redis_round_trips": {"requests": int(e["redis_requests"]), "hit": int(e["hits"]), "take_or_inbound": int(e["others"]),
                        "per_request": round((int(e["hits"]) + int(e["others"])) / max(1, int(e["redis_requests"])), 3)},
  "degraded_at_end": f("degraded"),
  "redis_memory": {"bytes_per_pooled_url": int(e["redis_bytes_per_url"]), "member_chars": int(e["redis_member_chars"])},
  "shared_runs_cpu_secs": {"gateway": round(f("gw_cpu"), 2), "redis_server": round(f("redis_cpu"), 2),
                           "redis_usec_per_script_call": float(e["script_usec"] or 0)},
  "settings": {"keys": int(e["KEYS"]), "depth": int(e["DEPTH"]), "runs": int(e["RUNS"]), "duration": e["DURATION"],
               "connections": int(e["CONNECTIONS"]), "pinned": e["PIN"] == "1", "link": e["LINK"] == "1", "link_delay": e["LINK_DELAY"], "cores": os.cpu_count(), "machine": platform.processor() or platform.machine()},
}
json.dump(r, open(f"bench-results/{e['out']}.json", "w"), indent=2)
fl, rt = r["fill"], r["redis_round_trips"]
row = lambda name, x: f"| {name} | {x['rps']:,.0f} | {x['p50_ms']:.2f} ms | {x['p99_ms']:.2f} ms | {x['p999_ms']:.2f} ms | {x['non_2xx']} |"
where = ("Redis on CPU 1; the gateways, simulators and wrk on CPU 0 (`PIN=1`)." if r["settings"]["pinned"]
         else "Redis, the gateways, the simulators and wrk share all cores.")
if r["settings"]["link"]:
    where += " Redis in a network namespace of its own behind a veth pair, MTU 1500 (`LINK=1`)"
    where += f", each packet delayed {r['settings']['link_delay']} each way." if r["settings"]["link_delay"] else "."
md = f"""## Cluster mode against a single node

{where}

Fill of {fl['urls']:,} URLs through {r['settings']['keys']} warm keys (time from the gateway's start): local pool
{fl['local_secs']} s (**{fl['local_urls_per_sec']:,} URLs/s**), shared pool in Redis {fl['redis_secs']} s
(**{fl['redis_urls_per_sec']:,} URLs/s**): the shared fill takes **{fl['redis_slower_by']}x** as long.

Pool hits, wrk 1 thread, {r['settings']['connections']} connections, {r['settings']['runs']} interleaved rounds of {r['settings']['duration']}; median-throughput run of each:

| Pool | requests/s | p50 | p99 | p99.9 | non-2xx |
| --- | --- | --- | --- | --- | --- |
{row("local", r['hit_local'])}
{row("shared (Redis)", r['hit_redis'])}

Shared against local: **{r['hit_ratio_redis_vs_local']:.2f}x** (median of the per-round ratios {', '.join(map(str, by_round))}).
Redis round trips during the shared runs: {rt['hit']:,} `hit` and {rt['take_or_inbound']} `take`/`inbound` for {rt['requests']:,}
requests ({rt['per_request']} per request). Degraded at the end: {int(r['degraded_at_end'])}.
Redis memory after the first fill: {r['redis_memory']['bytes_per_pooled_url']} bytes per pooled URL (`used_memory`; members of
{r['redis_memory']['member_chars']} characters: the URL's 16-character digest, a character for why it was fetched, and the URL).
CPU during the shared runs: gateway {r['shared_runs_cpu_secs']['gateway']} s, redis-server {r['shared_runs_cpu_secs']['redis_server']} s
({r['shared_runs_cpu_secs']['redis_usec_per_script_call']} µs of Redis time per script call).
"""
open(f"bench-results/{e['out']}.md", "w").write(md)
print(md)
PY
