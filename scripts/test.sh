#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust unit and integration tests, and the Python tests
# that check the simulator with boto3. Installs missing tools first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
# Builds target/debug/embedgate too (the integration and Python tests run it); a separate
# `cargo build` would compile everything again without the dev-dependency features.
cargo test --all-targets
echo "== python: boto3 against the simulator"
EMBEDGATE_BIN="$PWD/target/debug/embedgate" python3 tests/python/test_sim_boto3.py
