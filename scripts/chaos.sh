#!/usr/bin/env bash
# The chaos run: at least a million hand-outs (EMBEDGATE_CHAOS_HANDOUTS, default 1,000,000) over
# three replicas while Redis is killed, rolled back to a snapshot, paused and flushed on a
# schedule; every URL opened at the simulator. Writes bench-results/chaos.{json,md} and fails on
# any URL handed out twice or opened late. Release build (the first one takes several minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --release --test api -- --ignored --nocapture --test-threads 1 soak_chaos
cat bench-results/chaos.md
