#!/usr/bin/env python3
"""The benchmark scripts' one Python helper: gateway configs, wrk output, signed simulator
requests.

Configs start from the settings `embedgate dev` runs with (`embedgate dev --print-config`): the
crate's own defaults, the simulator's test credentials, region and account. Nothing here repeats
them.

  benchlib.py config gateway BIN OUT SIM_URL PORT ADMIN_PORT KEYS DEPTH
  benchlib.py config scenario BIN OUT SIM_URL PORT ADMIN_PORT TENANTS BUDGET
  benchlib.py wrk FILE...            the median-rps run of wrk outputs: "rps p50 p99 p999 non2xx"
  benchlib.py wrk-json FILE RATE CONNS   one wrk output as JSON (latency at load)
  benchlib.py sign BIN ENDPOINT PATH     a wrk Lua script replaying one SigV4-signed GET
"""
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib


def dev_settings(binary):
    """The settings `embedgate dev` runs with, as a dict."""
    out = subprocess.run([binary, "dev", "--print-config", "--api-key", "unused"],
                         check=True, capture_output=True, text=True).stdout
    return tomllib.loads(out)


def sha256(key):
    return hashlib.sha256(key.encode()).hexdigest()


def tenant(base, tenant_id, **quota):
    """The dev demo tenant, renamed, with API key `<id>-key` and the given quota overrides."""
    t = copy.deepcopy(base)
    t.update(id=tenant_id, api_key_sha256=[sha256(f"{tenant_id}-key")], **quota)
    t["policy"]["session_tags"] = {}
    return t


def gateway_config(binary, sim, port, admin, keys, depth):
    """One tenant `bench` with KEYS warm keys DEPTH deep, and `abuser` allowed one request per
    1,000 s. (At 1/s, one request a second was admitted, missed the pool and waited on the
    simulator, which holds every call during the measurement: a ~0.9 s tail in the 429 figures
    that was the benchmark's own.)"""
    s = dev_settings(binary)
    demo = s["tenants"][0]
    account = demo["default_account"]
    s.update(listen=f"127.0.0.1:{port}", admin_listen=f"127.0.0.1:{admin}")
    s["upstream"].update(endpoint_url=sim, rate_per_sec=100000.0, burst=10000, max_concurrency=256,
                         timeout_ms=1000)
    s["pool"].update(max_urls_per_key=depth, max_urls=5_000_000)
    s["refill"].update(concurrency=64)
    bench = tenant(demo, "bench", rate_per_sec=1e9, burst=1_000_000_000, max_pooled_urls=5_000_000)
    bench["warm"] = [{"Operation": "GetDashboardEmbedUrl", "Depth": depth, "DashboardId": f"d-{i:04d}",
                      "IdentityType": "QUICKSIGHT",
                      "UserArn": f"arn:aws:quicksight:us-east-1:{account}:user/default/user-{i:04d}"}
                     for i in range(keys)]
    s["tenants"] = [bench, tenant(demo, "abuser", rate_per_sec=0.001, burst=1)]
    return s


def scenario_config(binary, sim, port, admin, tenants, budget):
    """TENANTS tenants `tenant-<n>`, unthrottled inbound, an upstream budget of BUDGET/s."""
    s = dev_settings(binary)
    demo = s["tenants"][0]
    s.update(listen=f"127.0.0.1:{port}", admin_listen=f"127.0.0.1:{admin}")
    s["upstream"].update(endpoint_url=sim, rate_per_sec=budget, burst=max(1, int(budget // 10)))
    s["tenants"] = [tenant(demo, f"tenant-{t}", rate_per_sec=100000.0, burst=100000)
                    for t in range(tenants)]
    return s


def apply_overrides(settings, spec):
    """Sets `section.key=value` pairs (space-separated; a value is read as JSON, else taken as a
    string) on the settings, e.g. `refill.predict_min_probability=0.3 refill.sessions=false`.
    A section or key the settings do not have is refused: a typo must not measure the defaults."""
    for pair in spec.split():
        path, sep, raw = pair.partition("=")
        if not sep:
            sys.exit(f"GATEWAY_SET: {pair!r} is not section.key=value")
        *sections, key = path.split(".")
        table = settings
        for name in sections:
            if not isinstance(table.get(name), dict):
                sys.exit(f"GATEWAY_SET: no settings section {name!r} in {path!r}")
            table = table[name]
        if key not in table:
            sys.exit(f"GATEWAY_SET: no setting {path!r}")
        try:
            table[key] = json.loads(raw)
        except json.JSONDecodeError:
            table[key] = raw


def to_toml(value, path=()):
    """TOML for a settings dict (scalars, lists of scalars, tables, arrays of tables)."""
    def scalar(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise TypeError(f"{'.'.join(path)}: {v!r}")

    def is_tables(v):
        return isinstance(v, list) and v and all(isinstance(x, dict) for x in v)

    lines = [f"{json.dumps(k)} = {scalar(v)}" for k, v in value.items()
             if not isinstance(v, dict) and not is_tables(v)]
    for k, v in value.items():
        name = ".".join(json.dumps(p) for p in (*path, k))
        if isinstance(v, dict):
            lines += ["", f"[{name}]", to_toml(v, (*path, k))]
        elif is_tables(v):
            for item in v:
                lines += ["", f"[[{name}]]", to_toml(item, (*path, k))]
    return "\n".join(lines)


UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(text):
    """rps, p50, p99, p99.9 (ms; p99.9 from the Lua `done` hook) and non-2xx of one wrk run."""
    def lat(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        return float(m.group(1)) * UNIT[m.group(2)] if m else float("nan")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    p999 = re.search(r"^p99.9 ([\d.]+) ms", text, re.M)
    return {"rps": rps, "p50_ms": lat(50), "p99_ms": lat(99),
            "p999_ms": float(p999.group(1)) if p999 else float("nan"),
            "non_2xx": int(bad.group(1)) if bad else 0}


def sign(binary, endpoint, path):
    """A wrk script replaying one GET signed with the simulator's test credentials (a SigV4
    signature stays valid for its 15-minute window, as on AWS)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    up = dev_settings(binary)["upstream"]
    req = AWSRequest(method="GET", url=endpoint + path)
    SigV4Auth(Credentials(up["access_key_id"], up["secret_access_key"]), "quicksight",
              up["region"]).add_auth(req)
    out = ['wrk.method = "GET"', f'wrk.path = "{path}"']
    out += [f'wrk.headers["{k}"] = "{v}"' for k, v in req.headers.items()]
    return "\n".join(out)


def main(argv):
    cmd, *rest = argv
    if cmd == "config":
        kind, binary, out, sim, port, admin, a, b, *redis = rest
        if kind == "gateway":
            s = gateway_config(binary, sim, port, admin, int(a), int(b))
        else:
            s = scenario_config(binary, sim, port, admin, int(a), float(b))
        if redis:
            # Cluster mode on one Redis. The timeout is generous so that a busy benchmark
            # machine measures the shared path rather than degraded mode.
            s["redis"].update(url=redis[0], timeout_ms=1000)
        apply_overrides(s, os.environ.get("GATEWAY_SET", ""))
        open(out, "w").write(to_toml(s) + "\n")
    elif cmd == "wrk":
        runs = sorted((parse_wrk(open(f).read()) for f in rest), key=lambda r: r["rps"])
        r = runs[(len(runs) - 1) // 2]
        print(r["rps"], r["p50_ms"], r["p99_ms"], r["p999_ms"], r["non_2xx"])
    elif cmd == "wrk-json":
        f, rate, conns = rest
        r = parse_wrk(open(f).read())
        print(json.dumps({"target_rps": float(rate), "connections": int(conns),
                          "achieved_rps": r["rps"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                          "p999_ms": r["p999_ms"], "non_2xx": r["non_2xx"]}))
    elif cmd == "sign":
        print(sign(*rest))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
