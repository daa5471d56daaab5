#!/usr/bin/env bash
# Pool efficiency on a realistic scenario, next to the same traffic sent straight to QuickSight.
#
# TENANTS tenants share KEYS keys (GetDashboardEmbedUrl for one user each) with Zipf(ZIPF_S)
# popularity. Poisson arrivals: BASE_RATE/s for BASE_SECS, a burst at BURST_RATE/s for
# BURST_SECS, then BASE_RATE/s for TAIL_SECS. The simulator answers with log-normal latency
# (median LATENCY_MS, p99 LATENCY_P99_MS) and throttles the account above BUDGET calls/s; the
# gateway's upstream budget is BUDGET too. Run 1: through the gateway. Run 2: a fresh simulator
# called directly with the AWS SDK and its default retries (what a portal without embedgate gets).
# Writes bench-results/scenario.md and bench-results/scenario.json.
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${SEED:-42}
TENANTS=${TENANTS:-20}
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
source scripts/bench-lib.sh
gw_port=$(free_port); admin_port=$(free_port)

cat >"$work/scenario.json" <<JSON
{"seed": $SEED, "tenants": $TENANTS, "keys": $KEYS, "zipf_s": $ZIPF_S,
 "phases": [[$BASE_RATE, $BASE_SECS], [$BURST_RATE, $BURST_SECS], [$BASE_RATE, $TAIL_SECS]], "burst_phase": 1}
JSON
sim_flags=(--latency-ms "$LATENCY_MS" --latency-p99-ms "$LATENCY_P99_MS" --throttle-rps "$BUDGET")

# Through the gateway.
start_sim sim-gw "${sim_flags[@]}"
lib config scenario "$bin" "$work/gateway.toml" "$sim_url" "$gw_port" "$admin_port" "$TENANTS" "$BUDGET"
start_gateway "$work/gateway.toml"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$gw_port/readyz" >/dev/null && break; sleep 0.1; done
echo "scenario through the gateway..."
$examples/load scenario gateway "http://127.0.0.1:$gw_port" "$work/scenario.json" >"$work/gateway.json"
curl -s "http://127.0.0.1:$admin_port/metrics" >"$work/gateway.metrics"
curl -s "$sim_url/_sim/ledger" >"$work/gateway.ledger"
stop "$gw_pid"; stop "$sim_pid"

# Straight to the simulator.
start_sim sim-direct "${sim_flags[@]}"
echo "scenario straight to the simulator..."
$examples/load scenario direct "$sim_url" "$work/scenario.json" >"$work/direct.json"
curl -s "$sim_url/_sim/ledger" >"$work/direct.ledger"
stop "$sim_pid"

mkdir -p bench-results
export SEED TENANTS KEYS ZIPF_S BUDGET BASE_RATE BURST_RATE BASE_SECS BURST_SECS TAIL_SECS LATENCY_MS LATENCY_P99_MS
python3 - "$work" <<'PY'
import json, os, re, sys
w = sys.argv[1]
e = os.environ
def metric_sum(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf'^{name}(?:{{(.*)}})? ([0-9.eE+-]+|NaN)$', line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total
g = json.load(open(f"{w}/gateway.json")); d = json.load(open(f"{w}/direct.json"))
gl = json.load(open(f"{w}/gateway.ledger")); dl = json.load(open(f"{w}/direct.ledger"))
m = open(f"{w}/gateway.metrics").read()
hits = metric_sum(m, "embedgate_requests_total", outcome="hit")
misses = metric_sum(m, "embedgate_requests_total", outcome="miss")
fetched = metric_sum(m, "embedgate_urls_fetched_total")
expired = metric_sum(m, "embedgate_urls_wasted_total")
left = metric_sum(m, "embedgate_pool_urls")
throttled_names = ("ThrottlingException", "upstream_throttled")
def throttling(errs): return sum(v for k, v in errs.items() if k in throttled_names)
r = {
  "scenario": {k.lower(): e[k] for k in ["SEED", "TENANTS", "KEYS", "ZIPF_S", "BUDGET", "BASE_RATE", "BURST_RATE", "BASE_SECS", "BURST_SECS", "TAIL_SECS", "LATENCY_MS", "LATENCY_P99_MS"]},
  "gateway": {**g, "hit_ratio": hits / max(1, hits + misses), "urls_fetched": fetched, "urls_expired_unused": expired,
              "urls_left_in_pool": left, "waste_ratio_expired": expired / max(1, fetched),
              "waste_ratio_incl_leftover": (expired + left) / max(1, fetched),
              "upstream_calls": gl["calls"], "upstream_throttled": gl["throttled"],
              "upstream_calls_per_url": gl["calls"] / max(1, g["ok"]), "throttling_errors_to_callers": throttling(g["errors"]),
              "burst_throttling_errors": throttling(g["burst_errors"])},
  "direct": {**d, "upstream_calls": dl["calls"], "upstream_throttled": dl["throttled"],
             "upstream_calls_per_url": dl["calls"] / max(1, d["ok"]), "throttling_errors_to_callers": throttling(d["errors"]),
             "burst_throttling_errors": throttling(d["burst_errors"])},
}
json.dump(r, open("bench-results/scenario.json", "w"), indent=2)
s, G, D = r["scenario"], r["gateway"], r["direct"]
errs = lambda x: ", ".join(f"{k} {v}" for k, v in x.items()) or "none"
md = f"""## Pool efficiency (scenario)

{s['tenants']} tenants, {s['keys']} keys with Zipf({s['zipf_s']}) popularity, Poisson arrivals: {s['base_rate']}/s for {s['base_secs']} s,
burst {s['burst_rate']}/s for {s['burst_secs']} s, {s['base_rate']}/s for {s['tail_secs']} s (seed {s['seed']}). Simulator latency log-normal,
median {s['latency_ms']} ms, p99 {s['latency_p99_ms']} ms; it throttles the account above {s['budget']} calls/s, and the gateway's budget is {s['budget']}/s.

| | through embedgate | straight to QuickSight (SDK, default retries) |
| --- | --- | --- |
| requests / served | {G['requests']} / {G['ok']} | {D['requests']} / {D['ok']} |
| served from the pool | **{G['hit_ratio']:.1%}** | — |
| waste: expired unused / fetched | **{G['waste_ratio_expired']:.1%}** ({G['urls_expired_unused']:.0f} of {G['urls_fetched']:.0f}); {G['waste_ratio_incl_leftover']:.1%} counting the {G['urls_left_in_pool']:.0f} still pooled at the end | — |
| upstream calls per URL handed out | **{G['upstream_calls_per_url']:.2f}** | {D['upstream_calls_per_url']:.2f} |
| upstream ThrottlingExceptions | {G['upstream_throttled']} | {D['upstream_throttled']} |
| latency p50 / p99 | {G['p50_ms']:.1f} ms / {G['p99_ms']:.1f} ms | {D['p50_ms']:.1f} ms / {D['p99_ms']:.1f} ms |
| errors (all phases) | {errs(G['errors'])} | {errs(D['errors'])} |
| throttling errors reaching callers in the burst | **{G['burst_throttling_errors']}** | {D['burst_throttling_errors']} |

Served from the pool by phase: {" / ".join(f"{p['from_pool'] / max(1, p['requests']):.1%}" for p in G['phases'])} (base / burst / base).
{G['distinct_keys']} distinct keys were asked for; each one's first request cannot be a pool hit.
"""
open("bench-results/scenario.md", "w").write(md)
print(md)
PY
