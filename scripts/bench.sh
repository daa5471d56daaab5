#!/usr/bin/env bash
# The whole benchmark report in one command: builds release binaries, then runs
#   1. the hit-path and 429-path ceilings against a bare actix-web endpoint, and the latency of
#      hits at half the maximum rate (scripts/bench-gateway.sh; needs wrk),
#   2. the pool-efficiency scenarios against calling QuickSight directly (scripts/bench-scenario.sh,
#      once per shape in SHAPES, default "zipf storm cold tight"),
#   3. cluster mode against a single node: shared-pool fill speed and hit rate against the local
#      pool's, with Redis sharing the cores and with Redis on a core of its own (PIN=1, on two
#      or more cores) (scripts/bench-redis.sh; needs redis-server; REDIS=0 skips it),
#   4. resident memory per pooled URL and per tracked key (examples/memory.rs),
# and writes bench-results/report.md and bench-results/report.json. Each script's knobs (see its
# header) pass through the environment. Micro-benchmarks: cargo bench --bench micro.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "bench: wrk is required (apt-get install wrk)" >&2; exit 1; }
source scripts/bench-lib.sh
export BENCH_BUILT=1
mkdir -p bench-results
bash scripts/bench-gateway.sh
SHAPES=${SHAPES:-zipf storm cold tight}
for shape in $SHAPES; do SHAPE=$shape bash scripts/bench-scenario.sh; done
REDIS=${REDIS:-1}
PINNED=0
if [ "$REDIS" = 1 ]; then
  bash scripts/bench-redis.sh
  if [ "$(nproc --all)" -ge 2 ] && command -v taskset >/dev/null; then PIN=1 bash scripts/bench-redis.sh; PINNED=1; fi
fi
export SHAPES REDIS PINNED
"$examples/memory" >bench-results/memory.json
python3 - <<'PY'
import json, os, platform, subprocess, datetime
shapes = os.environ["SHAPES"].split()
r = {n: json.load(open(f"bench-results/{n}.json")) for n in ["gateway", "memory"]}
r["scenarios"] = {s: json.load(open(f"bench-results/scenario-{s}.json")) for s in shapes}
redis = os.environ["REDIS"] == "1"
pinned = os.environ["PINNED"] == "1"
if redis:
    r["redis"] = json.load(open("bench-results/redis.json"))
if pinned:
    r["redis_pinned"] = json.load(open("bench-results/redis-pinned.json"))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
mem_gib = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))) / 2**20
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
r["machine"] = {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1), "kernel": platform.release(),
                "commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
json.dump(r, open("bench-results/report.json", "w"), indent=2)
m = r["memory"]
md = f"""# embedgate benchmark report

Machine: {cpu}, {os.cpu_count()} cores, {mem_gib:.1f} GiB, Linux {platform.release()}; commit {commit}; {r['machine']['date']}.
Load generators and servers share the cores. Reproduce with `scripts/bench.sh`.

{open("bench-results/gateway.md").read()}
{"".join(open(f"bench-results/scenario-{s}.md").read() for s in shapes)}
{open("bench-results/redis.md").read() if redis else ""}
{open("bench-results/redis-pinned.md").read() if pinned else ""}
## Memory

{m['pooled_urls']:,} pooled URLs over 1,000 keys: **{m['rss_per_pooled_url_bytes']:.0f} bytes** of resident memory per URL beyond
the URL's own {m['mean_url_bytes']:.0f} bytes. {m['tracked_keys']:,} tracked keys: **{m['rss_per_tracked_key_bytes']:.0f} bytes** per key (its request,
demand estimate and cache entry).
"""
open("bench-results/report.md", "w").write(md)
print(md)
PY
