#!/usr/bin/env bash
# Load-sized runs that are not part of the test suite: the 30,000-request exactly-once run over
# three replicas (prints how much the shared pool served) and the fleet-vs-one-gateway pool
# efficiency comparison (prints upstream calls and waste of each). Both still assert exactly
# once; the figures they print depend on the machine's load and belong in a benchmark report.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --test api -- --ignored --nocapture --test-threads 1 soak_ 2>&1 | tee soak.log
