#!/usr/bin/env bash
# Pool efficiency on realistic scenarios, next to the same traffic sent straight to QuickSight.
#
# SHAPE picks the scenario (default zipf):
#   zipf      TENANTS tenants share KEYS keys (GetDashboardEmbedUrl for one user each) with
#             Zipf(ZIPF_S) popularity. Poisson arrivals: BASE_RATE/s for BASE_SECS, a burst at
#             BURST_RATE/s for BURST_SECS, then BASE_RATE/s for TAIL_SECS.
#   cold      zipf over many rarely repeated keys (KEYS=20000, ZIPF_S=0.5 unless set; at most 1,000,000).
#   tight     zipf with a budget below demand (BUDGET=40 unless set).
#   storm     a login storm with sessions (examples/load.rs, `Sessions`): TENANTS tenants (10)
#             with USERS users (40) and DASHBOARDS dashboards (20) each. "Yesterday" (YESTERDAY_SECS,
#             60) every user logs in once; after a quiet night (NIGHT_SECS, 250: longer than a
#             URL's usable life) RETURN (0.85) of them come back "today" (TODAY_SECS, 150), STORM_SHARE
#             (0.7) of those in a storm of STORM_SECS (30) starting STORM_AT (30) s into the day, with
#             NEW_USERS (0.1) new users. Sessions open VIEWS (3) dashboards on average, THINK (15) s
#             apart, along the tenant's usual paths with probability FOLLOW (0.8); public dashboards
#             are viewed anonymously at ANON_RATE/s (3); HINT_TENANTS (0.3) of the tenants hint each
#             login's landing dashboard 2 s ahead.
# REPLICAS (1): with more, a fleet of that many gateways sharing one Redis (cluster mode; needs
# redis-server, which scripts/setup.sh installs), and the load goes to them in turn, as a load
# balancer without affinity spreads a portal's requests. Its figures are the fleet's: metrics
# summed over the replicas, the URLs left at the end counted in the shared pool.
# The simulator answers with log-normal latency (median LATENCY_MS, p99 LATENCY_P99_MS) and
# throttles the account above BUDGET calls/s; the gateway's upstream budget is BUDGET too. Run 1:
# through the gateway. Run 2 (skipped with DIRECT=0): a fresh simulator called directly with the
# AWS SDK and its default retries (what a portal without embedgate gets).
# CLIENT_TIMEOUT_MS (unset: none): an impatient portal; each view's call to the gateway is given up
# after that long and sent again, at most CLIENT_RETRIES (1) times (a view's latency runs from its
# first send; one that runs out of tries is a `client_timeout` error).
# GATEWAY_SET: gateway settings to change, space-separated section.key=value (value read as JSON),
# e.g. GATEWAY_SET='refill.predict_min_probability=0.7'; TAG names such a run's files.
# Writes bench-results/scenario-<shape>.md and .json (scenario-<shape>-<N>replicas.* for a fleet,
# scenario-<shape>[-<N>replicas]-<TAG>.* with a TAG).
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPE=${SHAPE:-zipf}
case "$SHAPE" in
  cold) KEYS=${KEYS:-20000}; ZIPF_S=${ZIPF_S:-0.5} ;;
  tight) BUDGET=${BUDGET:-40} ;;
  zipf|storm) ;;
  *) echo "SHAPE: one of zipf, cold, tight, storm" >&2; exit 2 ;;
esac
SEED=${SEED:-42}
TENANTS=${TENANTS:-$([ "$SHAPE" = storm ] && echo 10 || echo 20)}
KEYS=${KEYS:-400}
ZIPF_S=${ZIPF_S:-1.0}
BUDGET=${BUDGET:-100}
BASE_RATE=${BASE_RATE:-70}
BURST_RATE=${BURST_RATE:-150}
BASE_SECS=${BASE_SECS:-60}
BURST_SECS=${BURST_SECS:-10}
TAIL_SECS=${TAIL_SECS:-30}
LATENCY_MS=${LATENCY_MS:-150}
LATENCY_P99_MS=${LATENCY_P99_MS:-800}
USERS=${USERS:-40}; DASHBOARDS=${DASHBOARDS:-20}
YESTERDAY_SECS=${YESTERDAY_SECS:-60}; NIGHT_SECS=${NIGHT_SECS:-250}; TODAY_SECS=${TODAY_SECS:-150}
STORM_AT=${STORM_AT:-30}; STORM_SECS=${STORM_SECS:-30}; STORM_SHARE=${STORM_SHARE:-0.7}
RETURN=${RETURN:-0.85}; NEW_USERS=${NEW_USERS:-0.1}; VIEWS=${VIEWS:-3}; THINK=${THINK:-15}
FOLLOW=${FOLLOW:-0.8}; ANON_RATE=${ANON_RATE:-3}; HINT_TENANTS=${HINT_TENANTS:-0.3}
DIRECT=${DIRECT:-1}
REPLICAS=${REPLICAS:-1}
[ "$REPLICAS" -gt 1 ] && ! command -v redis-server >/dev/null &&
  { echo "bench-scenario: REPLICAS=$REPLICAS needs redis-server (scripts/setup.sh installs it)" >&2; exit 1; }
source scripts/bench-lib.sh

if [ "$SHAPE" = storm ]; then
cat >"$work/scenario.json" <<JSON
{"shape": "sessions", "seed": $SEED, "tenants": $TENANTS, "users_per_tenant": $USERS,
 "dashboards_per_tenant": $DASHBOARDS, "yesterday_secs": $YESTERDAY_SECS, "night_secs": $NIGHT_SECS,
 "today_secs": $TODAY_SECS, "storm_at_secs": $STORM_AT, "storm_secs": $STORM_SECS,
 "return_fraction": $RETURN, "storm_share": $STORM_SHARE, "new_user_fraction": $NEW_USERS,
 "views_mean": $VIEWS, "think_secs": $THINK, "follow": $FOLLOW, "same_landing": 0.9,
 "anonymous_rate": $ANON_RATE, "public_dashboards": 5, "zipf_s": $ZIPF_S,
 "hint_tenants": $HINT_TENANTS, "hint_lead_secs": 2.0}
JSON
phase_names='["yesterday and night", "today before the storm", "storm", "after the storm"]'
else
cat >"$work/scenario.json" <<JSON
{"shape": "zipf", "seed": $SEED, "tenants": $TENANTS, "keys": $KEYS, "zipf_s": $ZIPF_S,
 "phases": [[$BASE_RATE, $BASE_SECS], [$BURST_RATE, $BURST_SECS], [$BASE_RATE, $TAIL_SECS]], "burst_phase": 1}
JSON
phase_names='["base", "burst", "base"]'
fi
sim_flags=(--latency-ms "$LATENCY_MS" --latency-p99-ms "$LATENCY_P99_MS" --throttle-rps "$BUDGET")

# Through the gateway.
start_sim sim-gw "${sim_flags[@]}"
redis=()
if [ "$REPLICAS" -gt 1 ]; then
  rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.out" 2>&1 &
  redis_pid=$!; pids+=("$redis_pid"); wait_for "$work/redis.out" "Ready to accept connections"
  redis=("redis://127.0.0.1:$rport")
fi
urls=(); admins=(); gw_pids=()
for r in $(seq "$REPLICAS"); do
  gw_port=$(free_port); admin_port=$(free_port)
  lib config scenario "$bin" "$work/gateway-$r.toml" "$sim_url" "$gw_port" "$admin_port" "$TENANTS" "$BUDGET" "${redis[@]}"
  start_gateway "$work/gateway-$r.toml"
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$gw_port/readyz" >/dev/null && break; sleep 0.1; done
  urls+=("http://127.0.0.1:$gw_port"); admins+=("$admin_port"); gw_pids+=("$gw_pid")
done
echo "scenario $SHAPE through $REPLICAS gateway(s)..."
admin_urls=(); for a in "${admins[@]}"; do admin_urls+=("http://127.0.0.1:$a"); done
$examples/load scenario gateway "$(IFS=,; echo "${urls[*]}")" "$work/scenario.json" "$(IFS=,; echo "${admin_urls[*]}")" >"$work/gateway.json"
for a in "${admins[@]}"; do curl -s "http://127.0.0.1:$a/metrics"; done >"$work/gateway.metrics"
# In a fleet the URLs left at the end are in the shared pool: every tenant's count keys.
POOL_LEFT=
if [ "$REPLICAS" -gt 1 ]; then
  POOL_LEFT=0
  for k in $(redis-cli -p "$rport" --scan --pattern 'embedgate:{t:*}:n3:*'); do
    POOL_LEFT=$((POOL_LEFT + $(redis-cli -p "$rport" ZCARD "$k")))
  done
fi
curl -s "$sim_url/_sim/ledger" >"$work/gateway.ledger"
for p in "${gw_pids[@]}"; do stop "$p"; done
stop "$sim_pid"

# Straight to the simulator.
if [ "$DIRECT" = 1 ]; then
  start_sim sim-direct "${sim_flags[@]}"
  echo "scenario $SHAPE straight to the simulator..."
  $examples/load scenario direct "$sim_url" "$work/scenario.json" >"$work/direct.json"
  curl -s "$sim_url/_sim/ledger" >"$work/direct.ledger"
  stop "$sim_pid"
else
  echo '{"skipped": true}' >"$work/direct.json"; echo '{}' >"$work/direct.ledger"
fi

mkdir -p bench-results
NAME=$SHAPE; [ "$REPLICAS" -gt 1 ] && NAME="$SHAPE-${REPLICAS}replicas"
[ -n "${TAG:-}" ] && NAME="$NAME-$TAG"
GATEWAY_SET=${GATEWAY_SET:-}
export SHAPE NAME GATEWAY_SET PHASE_NAMES="$phase_names" POOL_LEFT REPLICAS SEED TENANTS KEYS ZIPF_S BUDGET BASE_RATE BURST_RATE BASE_SECS BURST_SECS TAIL_SECS LATENCY_MS LATENCY_P99_MS \
  USERS DASHBOARDS YESTERDAY_SECS NIGHT_SECS TODAY_SECS STORM_AT STORM_SECS STORM_SHARE RETURN NEW_USERS VIEWS THINK FOLLOW ANON_RATE HINT_TENANTS
# The raw outputs are kept (bench-results/raw-<shape>/) whatever the report step does.
mkdir -p "bench-results/raw-$NAME"
cp "$work"/gateway.json "$work"/gateway.metrics "$work"/gateway.ledger "$work"/direct.json "$work"/direct.ledger "bench-results/raw-$NAME/"
python3 - "$work" <<'PY'
import json, os, re, sys
w = sys.argv[1]
e = os.environ
def series(text, name):
    """Each sample of metric `name` in a scrape: (its labels, its value)."""
    for line in text.splitlines():
        m = re.match(rf'^{name}(?:{{(.*)}})? ([0-9.eE+-]+|NaN)$', line)
        if m:
            yield dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")), float(m.group(2))
def metric_sum(text, name, **labels):
    return sum(v for have, v in series(text, name) if all(have.get(k) == x for k, x in labels.items()))
g = json.load(open(f"{w}/gateway.json")); d = json.load(open(f"{w}/direct.json"))
gl = json.load(open(f"{w}/gateway.ledger")); dl = json.load(open(f"{w}/direct.ledger"))
m = open(f"{w}/gateway.metrics").read()
shape = e["SHAPE"]
names = json.loads(e["PHASE_NAMES"])
hits = metric_sum(m, "embedgate_requests_total", outcome="hit")
misses = metric_sum(m, "embedgate_requests_total", outcome="miss")
fetched = metric_sum(m, "embedgate_urls_fetched_total")
by_reason = {r: metric_sum(m, "embedgate_urls_fetched_total", reason=r)
             for r in ["miss", "prefetch", "first", "hint", "warm", "follower", "returning"]}
expired = metric_sum(m, "embedgate_urls_wasted_total")
wasted_by_reason = {r: metric_sum(m, "embedgate_urls_wasted_total", fetched_for=r) for r in by_reason}
left = float(e["POOL_LEFT"]) if e.get("POOL_LEFT") else metric_sum(m, "embedgate_pool_urls")
# A fleet's Redis errors by operation (each one may have sent its replica to degraded mode, with
# its pool and limits local until Redis answers again): what to look at first in an odd run.
redis_errors = {}
for have, v in series(m, "embedgate_redis_errors_total"):
    op = have.get("op", "?")
    redis_errors[op] = redis_errors.get(op, 0.0) + v
throttled_names = ("ThrottlingException", "upstream_throttled")
def throttling(errs): return sum(v for k, v in errs.items() if k in throttled_names)
knobs = (["GATEWAY_SET"] if e["GATEWAY_SET"] else []) + ["REPLICAS", "SEED", "TENANTS", "BUDGET", "LATENCY_MS", "LATENCY_P99_MS"] + (
    ["USERS", "DASHBOARDS", "YESTERDAY_SECS", "NIGHT_SECS", "TODAY_SECS", "STORM_AT", "STORM_SECS",
     "STORM_SHARE", "RETURN", "NEW_USERS", "VIEWS", "THINK", "FOLLOW", "ANON_RATE", "HINT_TENANTS"]
    if shape == "storm" else
    ["KEYS", "ZIPF_S", "BASE_RATE", "BURST_RATE", "BASE_SECS", "BURST_SECS", "TAIL_SECS"])
G = {**g, "hit_ratio": hits / max(1, hits + misses), "urls_fetched": fetched, "fetched_by_reason": by_reason,
     "urls_expired_unused": expired, "wasted_by_reason": wasted_by_reason, "urls_left_in_pool": left, "waste_ratio_expired": expired / max(1, fetched),
     "waste_ratio_incl_leftover": (expired + left) / max(1, fetched), "redis_errors": redis_errors,
     "upstream_calls": gl["calls"], "upstream_throttled": gl["throttled"],
     "upstream_calls_per_url": gl["calls"] / max(1, g["ok"]), "throttling_errors_to_callers": throttling(g["errors"])}
D = None
if not d.get("skipped"):
    D = {**d, "upstream_calls": dl["calls"], "upstream_throttled": dl["throttled"],
         "upstream_calls_per_url": dl["calls"] / max(1, d["ok"]), "throttling_errors_to_callers": throttling(d["errors"])}
r = {"shape": shape, "scenario": {k.lower(): e[k] for k in knobs}, "phase_names": names, "gateway": G, "direct": D}
os.makedirs("bench-results", exist_ok=True)
json.dump(r, open(f"bench-results/scenario-{e['NAME']}.json", "w"), indent=2)
errs = lambda x: ", ".join(f"{k} {v}" for k, v in x.items()) or "none"
pct = lambda p: f"{p['from_pool'] / max(1, p['requests']):.1%}"
def fleet(p):
    # Upstream calls per URL handed out and a second, URLs fetched, URLs that expired unused,
    # within the phase (read from the gateways' metrics as it started and ended).
    if "upstream_calls" not in p:
        return "— | — | — | — |"
    rate = f"{p['upstream_calls'] / p['secs']:.1f}" if p.get("secs") else "—"
    return f"{p['upstream_calls'] / max(1, p['ok']):.2f} | {rate} | {p['urls_fetched']:.0f} | {p['urls_expired']:.0f} |"
rows = "\n".join(
    f"| {names[i] if i < len(names) else i} | {p['requests']} | {pct(p)} | {p['p50_ms']:.1f} / {p['p99_ms']:.1f} ms | {errs(p['errors'])} | {fleet(p)}"
    + (f" {D['phases'][i]['p50_ms']:.1f} / {D['phases'][i]['p99_ms']:.1f} ms | {errs(D['phases'][i]['errors'])} |" if D and i < len(D['phases']) else " — | — |")
    for i, p in enumerate(G["phases"]))
kinds = G.get("by_kind", {})
fore_pool = sum(k["from_pool"] for k in kinds.values() if k["foreseeable"])
kind_rows = "\n".join(
    f"| {name} | {k['requests']} | {k['from_pool'] / max(1, k['requests']):.1%} | {'yes' if k['foreseeable'] else 'no'} |"
    + "".join(f" {p['by_kind'].get(name, {}).get('from_pool', 0) / max(1, p['by_kind'].get(name, {}).get('requests', 0)):.1%} of {p['by_kind'].get(name, {}).get('requests', 0)} |" for p in G["phases"])
    for name, k in kinds.items())
kind_table = "" if len(kinds) < 2 else f"""
By how each view came to be (the generator knows; the gateway does not). A view is foreseeable when
the evidence before it names it: the user's own earlier days, the tenant's usual paths, a hint, a
stream of requests. {G['foreseeable']} of {G['requests']} views (**{G['foreseeable'] / max(1, G['requests']):.1%}**) were: the most any
planner serves from the pool without stocking every dashboard for every user. It served
**{fore_pool / max(1, G['foreseeable']):.1%}** of those from the pool.

| kind | views | from the pool | foreseeable | {" | ".join(names[i] if i < len(names) else str(i) for i in range(len(G["phases"])))} |
| --- | --- | --- | --- |{" --- |" * len(G["phases"])}
{kind_rows}
"""
md = f"""## Pool efficiency: `{shape}`

Knobs: {", ".join(f"{k.lower()}={e[k]}" for k in knobs)}.

| | through embedgate | straight to QuickSight (SDK, default retries) |
| --- | --- | --- |
| requests / served | {G['requests']} / {G['ok']} | {f"{D['requests']} / {D['ok']}" if D else "skipped"} |
| served from the pool | **{G['hit_ratio']:.1%}** | — |
| URLs fetched, by reason | {G['urls_fetched']:.0f}: {", ".join(f"{k} {v:.0f}" for k, v in by_reason.items() if v)} | — |
| waste by what it was fetched for (wasted / fetched) | {", ".join(f"{k} {wasted_by_reason[k]:.0f} / {v:.0f} ({wasted_by_reason[k] / v:.0%})" for k, v in by_reason.items() if v)} | — |
| waste: expired unused / fetched | **{G['waste_ratio_expired']:.1%}** ({G['urls_expired_unused']:.0f} of {G['urls_fetched']:.0f}); {G['waste_ratio_incl_leftover']:.1%} counting the {G['urls_left_in_pool']:.0f} still pooled at the end | — |
| upstream calls per URL handed out | **{G['upstream_calls_per_url']:.2f}** | {f"{D['upstream_calls_per_url']:.2f}" if D else "—"} |
| upstream ThrottlingExceptions | {G['upstream_throttled']} | {D['upstream_throttled'] if D else "—"} |
| latency p50 / p99 / p99.9 | {G['p50_ms']:.1f} / {G['p99_ms']:.1f} / {G['p999_ms']:.1f} ms | {f"{D['p50_ms']:.1f} / {D['p99_ms']:.1f} / {D['p999_ms']:.1f} ms" if D else "—"} |
| errors (all phases) | {errs(G['errors'])} | {errs(D['errors']) if D else "—"} |
| hints sent (not counted as views) | {G['hints_sent']} ({G['hints_failed']} not taken) | — |
{f"| calls given up by the client after {G['client_timeout_ms']} ms and sent again | {G['client_resent']} | — |" + chr(10) if 'client_timeout_ms' in G else ""}{f"| Redis errors by operation (all replicas) | {', '.join(f'{k} {v:.0f}' for k, v in sorted(redis_errors.items()) if v) or 'none'} | — |" + chr(10) if int(e["REPLICAS"]) > 1 else ""}
By phase (through embedgate: requests, from the pool, p50 / p99, errors, then within the phase:
upstream calls per URL handed out, upstream calls a second against the budget of {e['BUDGET']}/s (a
burst that drains the stock while calls run well below the budget: the gateway was short of CPU
or of upstream concurrency), URLs fetched, URLs that expired unused (fetched in it or before);
straight: p50 / p99, errors):

| phase | requests | from the pool | p50 / p99 | errors | calls per URL | calls/s | fetched | expired | direct p50 / p99 | direct errors |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rows}
{kind_table}
{G['distinct_keys']} distinct keys were asked for.
"""
open(f"bench-results/scenario-{e['NAME']}.md", "w").write(md)
print(md)
PY
