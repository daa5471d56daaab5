#!/usr/bin/env bash
# The chaos runs: a million requests each (EMBEDGATE_CHAOS_HANDOUTS, default 1,000,000) over
# three replicas, one in ten given up by its client after up to 49 ms, every URL received opened
# at the simulator. On one Redis: killed, rolled back to a
# snapshot, paused and flushed on a schedule. On a Redis Cluster with a replica per primary: the
# tenant's primary crashes and comes back, goes silent and comes back, and the tenant's slot
# moves to another primary. On a primary and a replica under a Sentinel: the primary crashes and
# comes back, goes silent and comes back, and an operator fails it over. Writes
# bench-results/chaos.{json,md}, chaos-cluster.{json,md} and chaos-sentinel.{json,md} and fails on
# any URL handed out twice or opened late. Release build (the first one takes several minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --release --test api -- --ignored --nocapture --test-threads 1 soak_chaos
cat bench-results/chaos.md bench-results/chaos-cluster.md bench-results/chaos-sentinel.md
