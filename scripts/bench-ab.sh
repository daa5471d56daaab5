#!/usr/bin/env bash
# Two builds of the gateway side by side in one run: `scripts/bench-ab.sh BUILD_A BUILD_B`.
#
# Both gateways run at once on one simulator, each with its pool filled through warm keys
# (KEYS x DEPTH URLs; the simulator then holds every call, so only pool hits are measured), and
# are measured in alternating rounds of the same wrk load (1 thread, 64 connections, DURATION):
# A, B, A, B, ... The machine's drift over the run touches both alike, so the paired figures
# compare the builds where separate runs of `scripts/bench-gateway.sh` cannot (on a noisy
# machine, bare actix-web itself moves by a third between runs). PATH_KIND=reject measures the
# 429 path instead (a tenant over its limit). Prints each round's requests/s and the server's CPU
# per request (`/proc/<pid>/stat`), then the medians and the median of B - A over the rounds.
# Knobs: ROUNDS (default 6), KEYS (300), DEPTH (1000, at most 1000), DURATION (2s), PATH_KIND,
# TLS_B (1: gateway B serves HTTPS, `[tls]` with a self-signed certificate openssl makes, and
# wrk reaches it over HTTPS on connections it keeps open: with the same build twice, what TLS
# costs a request).
# Before each round of hits a pool that round could drain is topped up (the simulator answers
# again until it is full); a round that meets anything but pool hits stops the run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: scripts/bench-ab.sh BUILD_A BUILD_B" >&2; exit 2; }
A=$(realpath "$1"); B=$(realpath "$2")
ROUNDS=${ROUNDS:-6}
KEYS=${KEYS:-300}
DEPTH=${DEPTH:-1000}
DURATION=${DURATION:-2s}
CONNECTIONS=64
PATH_KIND=${PATH_KIND:-hit}
command -v wrk >/dev/null || { echo "bench-ab: wrk is required (apt-get install wrk)" >&2; exit 1; }
BENCH_BUILT=1 BENCH_BIN=$A source scripts/bench-lib.sh

start_sim sim
declare -A pid port admin
declare -A scheme=([A]=http [B]=http)
for who in A B; do
  build=${!who}
  port[$who]=$(free_port); admin[$who]=$(free_port)
  lib config gateway "$build" "$work/$who.toml" "$sim_url" "${port[$who]}" "${admin[$who]}" "$KEYS" "$DEPTH"
  if [ "$who" = B ] && [ -n "${TLS_B:-}" ]; then
    command -v openssl >/dev/null || { echo "bench-ab: TLS_B needs openssl (apt-get install openssl)" >&2; exit 1; }
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
      -addext subjectAltName=IP:127.0.0.1 -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
    scheme[B]=https
  fi
  tls=()
  [ "${scheme[$who]}" = https ] && tls=(EMBEDGATE_TLS__CERT_FILE="$work/tls.crt" EMBEDGATE_TLS__KEY_FILE="$work/tls.key")
  env -u EMBEDGATE_LOG -u RUST_LOG "${tls[@]}" "$build" serve --config "$work/$who.toml" 2>"$work/$who.err" &
  pid[$who]=$!; pids+=("${pid[$who]}")
done
for who in A B; do
  urls=$(pooled "${admin[$who]}" "${pid[$who]}" $((KEYS * DEPTH)) "$work/$who.err")
  echo "gateway $who (${!who}): $urls URLs pooled"
done
sim_hangs 1.0

hit_script "$KEYS" "$work/hit.lua"
script=$work/hit.lua
if [ "$PATH_KIND" = reject ]; then
  sed 's/bench-key/abuser-key/' "$work/hit.lua" >"$work/reject.lua"
  script=$work/reject.lua
fi
for who in A B; do wrk -t1 -c"$CONNECTIONS" -d1s -s "$script" "${scheme[$who]}://127.0.0.1:${port[$who]}" >/dev/null; done

# pool_urls WHO: the URLs in WHO's pool.
pool_urls() { admin_json "${admin[$1]}" /state 'j["pool"]["urls"]'; }
# fill WHO: refills WHO's pool (see `refilled`).
fill() { refilled "${admin[$1]}" "${pid[$1]}" "$work/$1.err" >/dev/null; }
declare -A need=([A]=$((KEYS * DEPTH / 2)) [B]=$((KEYS * DEPTH / 2)))
: >"$work/rounds"
for r in $(seq "$ROUNDS"); do
  for who in A B; do
    if [ "$PATH_KIND" = hit ]; then
      topped_up "$(pool_urls "$who")" "${need[$who]}" "gateway $who's pool" fill "$who"
    fi
    round "$who.$r" "${pid[$who]}" "$script" "${port[$who]}" "${scheme[$who]}"
    if [ "$PATH_KIND" = hit ]; then
      only_hits "$work/$who.$r" "$(pool_urls "$who")" "round $r of $who"
      need[$who]=$(next_need "$work/$who.$r")
    fi
    read -r rps _ <<<"$(lib wrk "$work/$who.$r")"
    n=$(sed -n 's/ *\([0-9]*\) requests in.*/\1/p' "$work/$who.$r")
    echo "$r $who $rps $n $(cat "$work/$who.$r.cpu") $(getconf CLK_TCK)" >>"$work/rounds"
  done
done

python3 - "$work/rounds" "$PATH_KIND" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
by = {}
for r, who, rps, n, ticks, hz in rows:
    rps, n, ticks, hz = float(rps), int(n), int(ticks), int(hz)
    us = ticks / hz / n * 1e6
    by.setdefault(who, []).append((int(r), rps, us))
    print(f"round {r} {who}: {rps:>9,.0f} requests/s  {us:6.2f} µs CPU a request")
med = lambda xs: statistics.median(xs)
for who in ("A", "B"):
    print(f"{who}: median {med([x[1] for x in by[who]]):,.0f} requests/s, {med([x[2] for x in by[who]]):.2f} µs CPU a request")
pairs = list(zip(by["A"], by["B"]))
d_us = med([b[2] - a[2] for a, b in pairs])
d_rps = med([b[1] / a[1] for a, b in pairs])
print(f"B against A ({sys.argv[2]} path, {len(pairs)} paired rounds): CPU a request {d_us:+.2f} µs "
      f"(median of the rounds' differences), requests/s x{d_rps:.3f} (median of the rounds' ratios)")
PY
