#!/usr/bin/env python3
"""What the refiller's rate-based stocking rule does for one slow key, in a model.

A key asked for at a steady Poisson rate is judged each tick the way `Demand::target` judges it:
the rate shown by its current run of requests (`Tracked::demonstrated_rate`: a decayed count with
half-life `refill.demand_half_life_secs`, the run's first request left out, a new run after a
URL's usable life of silence) gives the probability of a request within a URL's usable life
(240 s with `pool.min_remaining_secs` 60), and at `refill.min_probability` or above one URL is
kept in stock (slow keys need no more). A URL unused for its usable life expires: waste.

For each rate it prints the probability a request really comes within the life, the share of
requests served from stock, URLs fetched and the share of them that expired unused. The point:
once a URL is stocked for a Poisson key, its chance of use is that true probability whatever the
estimate said, so the bar bounds waste only as far as the estimate is right; right after a
request a 30 s half-life reads a slow key as fast.

  scripts/stocking-sim.py [--half-life 30 120] [--bar 0.9] [--rates 0.002 0.004 0.01 0.05]

A model (idealised: instant fetches, one key, 0.5 s ticks), not a benchmark of the gateway.
"""

import argparse
import math
import random

LIFE = 240.0
TICK = 0.5


def run(rate, half_life, bar, secs, seed):
    tau = half_life / math.log(2)
    rnd = random.Random(seed)
    t, arrival = 0.0, rnd.expovariate(rate)
    decayed, last, first_ms, run_first = 0.0, 0.0, 0.0, None
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
            decayed = decayed * math.exp(-(arrival - last) / tau) + 1.0
            last = arrival
            if run_first is None:
                run_first = arrival
            arrival += rnd.expovariate(rate)
        if run_first is not None:
            d = decayed * math.exp(-(t - last) / tau)
            age = max(t - first_ms, 1.0)
            est = d / (tau * (1.0 - math.exp(-age / tau)))
            trigger = math.exp(-(t - run_first) / tau)
            shown = est * max(d - trigger, 0.0) / d if d > 0 else 0.0
            if 1.0 - math.exp(-shown * LIFE) >= bar and not stock:
                stock.append(t)
                fetched += 1
        t += TICK
    return requests, hits, fetched, expired


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--half-life", type=float, nargs="+", default=[30.0, 120.0])
    p.add_argument("--bar", type=float, default=0.9)
    p.add_argument("--rates", type=float, nargs="+", default=[0.002, 0.004, 0.006, 0.01, 0.02, 0.05])
    p.add_argument("--secs", type=float, default=200_000.0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    print(f"min_probability {a.bar}, usable life {LIFE:.0f} s, {a.secs:.0f} s per rate")
    print("| rate /s | true P(request within life) | half-life | from stock | URLs fetched | expired unused |")
    print("| --- | --- | --- | --- | --- | --- |")
    for rate in a.rates:
        true = 1.0 - math.exp(-rate * LIFE)
        for h in a.half_life:
            n, hits, fetched, expired = run(rate, h, a.bar, a.secs, a.seed)
            print(f"| {rate} | {true:.2f} | {h:.0f} s | {hits / max(1, n):.0%} | {fetched} | {expired / max(1, fetched):.0%} |")


if __name__ == "__main__":
    main()
