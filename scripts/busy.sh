#!/usr/bin/env bash
# Runs a command on a busy machine: `scripts/busy.sh [COMMAND...]` (default: scripts/test.sh)
# beside HOGS processes (default 1) that each keep a core busy, as CI meets a machine shared
# with other jobs. The suite must pass like that every time: a test whose wait or assertion
# holds only on a quiet machine fails here first. Exits with the command's status.
set -uo pipefail
cd "$(dirname "$0")/.."
HOGS=${HOGS:-1}
[ $# -gt 0 ] || set -- scripts/test.sh
hogs=()
for _ in $(seq "$HOGS"); do
  sh -c 'while :; do :; done' &
  hogs+=("$!")
done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
echo "busy: $HOGS core(s) kept busy while $* runs" >&2
"$@"
