#!/usr/bin/env python3
"""What the refiller's rate-based stocking rule does for one slow key, in a model.

A key asked for at a steady Poisson rate is judged each tick the way `Demand::target` judges it,
by what its requests show (`Tracked::shown`): the requests after the first of its current run,
counted with half-life `refill.demand_half_life_secs` (a new run after a URL's usable life of
silence), and all its requests after its first, counted with a 600 s half-life across runs. Each
gives the probability of a request within a URL's usable life (240 s with
`pool.min_remaining_secs` 60) as the Poisson rate's posterior predictive, 1 - (E / (E + life))^k
for k requests over an exposure of E seconds; the key is stocked one URL deep (slow keys need no
more) when the larger reaches `refill.min_probability`, and not after a usable life of silence.
`--rule rate` models the rule before (until 2026-12-03): 1 - e^(-rate * life) on the first
count's rate alone. A URL unused for its usable life expires: waste.

For each rate it prints the probability a request really comes within the life, the share of
requests served from stock, URLs fetched and the share of them that expired unused. Once a URL is
stocked for a Poisson key, its chance of use is that true probability whatever the estimate said,
so the bar bounds waste only as far as the rule tells slow keys from fast ones; right after a
request a 30 s half-life's rate reads a slow key as fast, and the posterior predictive does not
take one request's rate at its word.

  scripts/stocking-sim.py [--rule evidence rate] [--half-life 30 120] [--bar 0.9] [--rates ...]

A model (idealised: instant fetches, one key, 0.5 s ticks), not a benchmark of the gateway.
"""

import argparse
import math
import random

LIFE = 240.0
TICK = 0.5
HISTORY_TAU = 600.0 / math.log(2)


def predictive(requests, exposure):
    """P(a request within LIFE) for `requests` over `exposure` seconds (prior 1/rate)."""
    if requests <= 0 or exposure <= 0:
        return 0.0
    return 1.0 - (exposure / (exposure + LIFE)) ** requests


def run(rate, half_life, bar, secs, seed, rule):
    tau = half_life / math.log(2)
    rnd = random.Random(seed)
    t, arrival = 0.0, rnd.expovariate(rate)
    decayed, last, first_ms, run_first = 0.0, 0.0, 0.0, None
    history, since = 0.0, None
    stock, requests, hits, fetched, expired = [], 0, 0, 0, 0
    while t < secs:
        while stock and stock[0] + LIFE <= t:
            stock.pop(0)
            expired += 1
        while arrival <= t:
            requests += 1
            if stock:
                stock.pop(0)
                hits += 1
            if run_first is not None and arrival - last > LIFE:
                decayed, run_first = 0.0, None
            if requests == 1:
                first_ms = arrival
            if since is None:
                since = arrival
            else:
                history = history * math.exp(-(arrival - last) / HISTORY_TAU) + 1.0
            decayed = decayed * math.exp(-(arrival - last) / tau) + 1.0
            last = arrival
            if run_first is None:
                run_first = arrival
            arrival += rnd.expovariate(rate)
        if run_first is not None:
            d = decayed * math.exp(-(t - last) / tau)
            trigger = math.exp(-(t - run_first) / tau)
            if rule == "rate":
                age = max(t - first_ms, 1.0)
                est = d / (tau * (1.0 - math.exp(-age / tau)))
                shown = est * max(d - trigger, 0.0) / d if d > 0 else 0.0
                p = 1.0 - math.exp(-shown * LIFE)
            elif t - last > LIFE:
                p = 0.0
            else:
                recent = predictive(max(d - trigger, 0.0), tau * (1.0 - math.exp(-max(t - run_first, 1.0) / tau)))
                h = history * math.exp(-(t - last) / HISTORY_TAU)
                p = max(recent, predictive(h, HISTORY_TAU * (1.0 - math.exp(-max(t - since, 1.0) / HISTORY_TAU))))
            if p >= bar and not stock:
                stock.append(t)
                fetched += 1
        t += TICK
    return requests, hits, fetched, expired


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rule", nargs="+", default=["evidence", "rate"], choices=["evidence", "rate"])
    p.add_argument("--half-life", type=float, nargs="+", default=[30.0, 120.0])
    p.add_argument("--bar", type=float, default=0.9)
    p.add_argument("--rates", type=float, nargs="+", default=[0.002, 0.004, 0.006, 0.01, 0.02, 0.05])
    p.add_argument("--secs", type=float, default=200_000.0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    print(f"min_probability {a.bar}, usable life {LIFE:.0f} s, {a.secs:.0f} s per rate")
    print("| rate /s | true P(request within life) | rule | half-life | from stock | URLs fetched | expired unused |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for rate in a.rates:
        true = 1.0 - math.exp(-rate * LIFE)
        for rule in a.rule:
            for h in a.half_life:
                n, hits, fetched, expired = run(rate, h, a.bar, a.secs, a.seed, rule)
                print(f"| {rate} | {true:.2f} | {rule} | {h:.0f} s | {hits / max(1, n):.0%} | {fetched} | {expired / max(1, fetched):.0%} |")


if __name__ == "__main__":
    main()
