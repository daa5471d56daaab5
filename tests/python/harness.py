"""Starting `embedgate sim` and `embedgate serve` for the Python tests, on ephemeral ports.

The binary comes from $EMBEDGATE_BIN (default target/debug/embedgate).
"""

import json
import os
import subprocess
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("EMBEDGATE_BIN", os.path.join(ROOT, "target", "debug", "embedgate"))
ACCOUNT = "111122223333"
SIM_KEY_ID = "AKIDEMBEDGATESIM0001"
SIM_SECRET = "embedgate-simulator-test-secret"


def user_arn(name):
    return f"arn:aws:quicksight:us-east-1:{ACCOUNT}:user/default/{name}"


def start_sim():
    """`embedgate sim` on an ephemeral port: (process, endpoint)."""
    proc = subprocess.Popen(
        [BIN, "sim", "--listen", "127.0.0.1:0", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    first = proc.stdout.readline()
    if "listening on " not in first:
        proc.kill()
        raise RuntimeError(f"simulator did not start: {first!r}")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, first.split("listening on ")[1].strip()


def upstream_table(sim_endpoint, rate=1000.0):
    """The `[upstream]` table for a gateway in front of the simulator."""
    return f"""
[upstream]
endpoint_url = "{sim_endpoint}"
region = "us-east-1"
access_key_id = "{SIM_KEY_ID}"
secret_access_key = "{SIM_SECRET}"
rate_per_sec = {rate}
burst = 100
"""


def start_gateway(config_path, env=None, binary=BIN):
    """`embedgate serve --config config_path` (listeners on port 0 in the config): (process,
    fields of its "embedgate serving" log line: listen, admin, compat)."""
    proc = subprocess.Popen(
        [binary, "serve", "--config", config_path],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        fields = event.get("fields", event)
        if fields.get("message") == "embedgate serving":
            # Keep draining the log: a full pipe would block the gateway.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, fields
    proc.wait(timeout=10)
    raise RuntimeError("the gateway did not start")


def stop(*procs):
    # Longer than the gateway's graceful shutdown (10 s for requests still in flight, e.g. a miss
    # Schemathesis left waiting on the simulator): waiting exactly as long failed on a busy machine.
    for p in procs:
        p.terminate()
        p.wait(timeout=30)


def get_json(url):
    with urllib.request.urlopen(url) as resp:
        return json.load(resp)


def metric(admin, sample):
    """The value of one sample line of the gateway's /metrics, 0 when absent."""
    with urllib.request.urlopen(f"{admin}/metrics") as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
    return 0.0


def wait_for(cond, what, secs=30):
    until = time.time() + secs
    while time.time() < until:
        if cond():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")
