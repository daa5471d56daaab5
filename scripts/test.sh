#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust unit and integration tests, the Python test that
# checks the simulator with boto3, and the drop-in test (boto3 and the JavaScript SDK v3 against
# the gateway's QuickSight-compatible listener). Installs missing tools first (scripts/setup.sh).
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
echo "== drop-in mode: boto3 and the JavaScript SDK v3 against the compatible listener"
EMBEDGATE_BIN="$PWD/target/debug/embedgate" python3 tests/python/test_compat_boto3.py
echo "== OpenAPI: openapi-spec-validator and Schemathesis against a live gateway"
EMBEDGATE_BIN="$PWD/target/debug/embedgate" python3 tests/python/test_openapi.py
echo "== deploy: hadolint, the container's file tree, compose, yamllint, kubernetes-validate"
EMBEDGATE_BIN="$PWD/target/debug/embedgate" python3 tests/python/test_deploy.py
echo "== demo portal in Chromium: the embedding SDK loads a pooled URL once per view"
EMBEDGATE_BIN="$PWD/target/debug/embedgate" python3 tests/python/test_demo_browser.py
