#!/usr/bin/env python3
"""Where a request's CPU goes, by stage: reads `perf script -F comm,ip,sym --inline` of a gateway
profiled under one kind of load (see scripts/profile-hit.sh) and prints each stage's share of the
gateway's samples and, given the CPU a request costs, its microseconds a request.

A sample of a thread other than actix-web's workers goes to the background threads (the
refiller's work on demand and the pool, the log writer's batches: not a request's). A worker's
sample goes to the first stage, in the order below, that a frame of its stack names (so an
allocation or a histogram update inside the pool's take counts as the take, and the handler's
own code is what no more specific stage claims); one with none goes to the kernel when its
innermost frame is the kernel's, and otherwise to actix-web, tokio and the allocator outside
the handler.

Usage: profile-stages.py CPU_US_PER_REQUEST < perf-script-output
"""
import sys

# (stage, substrings of a frame's symbol). A frame perf names as inlined carries only its
# function's own name, so distinctive names are listed bare as well.
STAGES = [
    ("pool take (the key's lookup, the slot's lock, the stale check)",
     ["embedgate::pool::Pool::take", "embedgate::gateway::Gateway::take"]),
    ("answer body (JSON with the URL, the expiry, the request id)",
     ["embedgate::api::embed::answer", "embedgate::wire::json", "embedgate::api::embed::rfc3339"]),
    ("the request's log line (`embed-url request`)",
     ["tracing_subscriber::", "embedgate::telemetry::JsonLines", "embedgate::telemetry::batch",
      "embedgate::telemetry::bursts"]),
    ("request metrics",
     ["embedgate::metrics::", "prometheus::", "embedgate::api::embed::Watch"]),
    ("demand and session recording",
     ["embedgate::refill::demand::", "embedgate::refill::sessions::", "embedgate::refill::tracked::"]),
    ("API key (and client certificate)",
     ["embedgate::api::auth::authenticate", "embedgate::tenant::Tenants::authenticate", "sha2::",
      "authenticate"]),
    ("body read (or drained)",
     ["embedgate::api::auth::read_body", "embedgate::api::auth::read_bounded",
      "embedgate::api::auth::discard_body", "read_bounded", "discard_body", "read_body"]),
    ("admission (the remembered body, or parse, validation, policy, pool key)",
     ["embedgate::gateway::Gateway::admit_body", "embedgate::gateway::recent::", "embedgate::model::",
      "embedgate::policy::", "embedgate::pool::key::", "admit_body"]),
    ("tenant limit",
     ["embedgate::gateway::Gateway::gate", "embedgate::limiter::", "governor::", "check_inbound"]),
    ("RateLimit headers, the 429 answer",
     ["rate_limit_headers", "embedgate::api::auth::Canned", "embedgate::api::auth::seconds"]),
    ("request id and context",
     ["embedgate::api::context::", "embedgate::telemetry::request::", "uuid::", "in_request_context"]),
    ("the handler's own (building and dropping the response, its futures)",
     ["embedgate::api::embed::embed", "embedgate::gateway::Gateway::serve", "embedgate::api::embed::"]),
]
BACKGROUND = "background threads (refiller, planner, session learner, log writer)"
KERNEL = "kernel outside the handler (socket I/O, epoll, scheduling)"
FRAMEWORK = "actix-web, tokio and the allocator outside the handler"
ORDER = [s for s, _ in STAGES] + [BACKGROUND, KERNEL, FRAMEWORK]


def path_of(sym):
    """A frame's function without its generic arguments, which can name any type (a handler's
    future names every extractor it takes): `<a::B as c::D>::e` as `a::B as c::D>::e`,
    `scope_inner<a::B, ...>` as `scope_inner`."""
    return sym.lstrip("<").split("<", 1)[0]


def stage_of(comm, frames):
    """The stage of one sample: `frames` innermost first, as (ip, symbol)."""
    if not comm.startswith("actix-server"):
        return BACKGROUND
    paths = [path_of(sym) for _, sym in frames]
    for stage, patterns in STAGES:
        if any(p in path for path in paths for p in patterns):
            return stage
    if frames and frames[0][0] >= 0xFFFF000000000000:
        return KERNEL
    return FRAMEWORK


def samples(lines):
    """(comm, frames) for each sample of `perf script -F comm,ip,sym` output."""
    comm, frames = None, []
    for line in lines:
        if not line.strip():
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
        elif not line[0].isspace():
            comm, frames = line.split("  ")[0].strip(), []
        else:
            ip, _, sym = line.strip().partition(" ")
            try:
                frames.append((int(ip, 16), sym))
            except ValueError:
                pass
    if comm is not None:
        yield comm, frames


def main():
    cpu_us = float(sys.argv[1])
    counts = dict.fromkeys(ORDER, 0)
    total = 0
    for comm, frames in samples(sys.stdin):
        counts[stage_of(comm, frames)] += 1
        total += 1
    if total == 0:
        sys.exit("profile-stages: no samples in the input")
    handler = sum(counts[s] for s, _ in STAGES)
    print(f"| stage ({total} samples, {cpu_us:.2f} µs of gateway CPU a request) | share | µs a request |")
    print("| --- | --- | --- |")
    for stage in ORDER:
        if stage == BACKGROUND:
            print(f"| **the handler, in all** | **{handler / total:.1%}** | **{handler / total * cpu_us:.2f}** |")
        print(f"| {stage} | {counts[stage] / total:.1%} | {counts[stage] / total * cpu_us:.2f} |")


if __name__ == "__main__":
    main()
