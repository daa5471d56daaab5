//! The chaos runs (`scripts/chaos.sh`, not part of the suite): a million requests each over
//! three replicas, on a fixed schedule of faults, each URL opened at the simulator right after
//! its phase. On one Redis: killed and restarted empty, snapshotted and later restarted from the
//! snapshot (a rollback), snapshotted and later made to load the snapshot while it runs (a
//! rollback in the same process), paused past the replicas' timeout, and flushed. On a Redis
//! Cluster with a replica per primary: the tenant's primary crashes (its replica takes over) and
//! comes back as a replica, goes silent and comes back, and the tenant's slot moves to another
//! primary under traffic. On a primary and a replica under a Sentinel: the primary crashes (the
//! Sentinel promotes the replica) and comes back as a replica, goes silent and comes back, and an
//! operator fails it over. One request in ten is given up by its client (its connection
//! closed) after up to 49 ms, as a portal's backend at its timeout. The report (duplicates, late
//! openings, least validity left, answers by code, requests given up, hand-out latency) goes to
//! `bench-results/chaos.{json,md}`, `chaos-cluster.{json,md}` and `chaos-sentinel.{json,md}`; a
//! run fails on any duplicate or late opening.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::helpers::{keys, roomy, spawn_fleet};
use crate::redis_server::{RedisCluster, RedisSentinel, RedisServer};
use embedgate::config::Settings;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One request in this many is given up by its client after 0–49 ms (see
/// `TestFleet::drive_giving_up`): what it would have been handed lands for its key, or is
/// counted as waste, under the same faults.
const GIVE_UP_EVERY: usize = 10;

/// What is done to one Redis before each phase, in turn.
const SCHEDULE: [&str; 8] = [
    "none", "kill", "snapshot", "rollback", "snapshot", "reload", "pause", "flush",
];

/// What is done to a Redis Cluster before each phase, in turn.
const CLUSTER_SCHEDULE: [&str; 6] = ["none", "crash", "rejoin", "silence", "resume", "move"];

/// What is done to a Sentinel set-up before each phase, in turn.
const SENTINEL_SCHEDULE: [&str; 6] = ["none", "crash", "rejoin", "silence", "resume", "failover"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: load-sized, run by scripts/chaos.sh"]
async fn soak_chaos_hands_out_every_url_exactly_once_while_redis_misbehaves() {
    // `DEBUG RELOAD` loads the snapshot into the running process.
    let mut redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let url = redis.url();
    let fault = move |fault: &str| match fault {
        "kill" => {
            redis.forget_snapshot();
            redis.kill();
            redis.restart();
        }
        "snapshot" => assert_eq!(redis.cli(&["SAVE"]).as_deref(), Some("OK")),
        "rollback" => {
            redis.kill();
            redis.restart();
        }
        "reload" => assert_eq!(
            redis.cli(&["DEBUG", "RELOAD", "NOSAVE"]).as_deref(),
            Some("OK")
        ),
        "pause" => {
            redis.cli(&["CLIENT", "PAUSE", "300"]);
        }
        "flush" => {
            redis.cli(&["FLUSHALL"]);
        }
        _ => {}
    };
    chaos(
        "chaos",
        &SCHEDULE,
        move |s| s.redis.url = Some(url.clone()),
        fault,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: load-sized, run by scripts/chaos.sh"]
async fn soak_chaos_on_a_redis_cluster_hands_out_every_url_exactly_once_through_failovers() {
    let mut cluster = RedisCluster::start_replicated(3);
    let urls = cluster.urls();
    let tenant_key = "embedgate:{t:alpha}:fence";
    let primary = |c: &RedisCluster| c.primary_of(tenant_key).expect("the slot has a primary");
    // The node the last crash or silence took down, to bring back in the next phase.
    let mut down = None;
    let fault = move |fault: &str| match fault {
        "crash" => {
            let n = primary(&cluster);
            cluster.nodes[n].kill();
            down = Some(n);
        }
        "silence" => {
            let n = primary(&cluster);
            cluster.nodes[n].freeze();
            down = Some(n);
        }
        // The old primary comes back and, finding its replica promoted, follows it.
        "rejoin" => cluster.nodes[down.take().expect("a node is down")].restart(),
        "resume" => cluster.nodes[down.take().expect("a node is down")].thaw(),
        "move" => {
            let from = primary(&cluster);
            let to = cluster
                .primaries()
                .into_iter()
                .find(|&n| n != from)
                .unwrap();
            cluster.move_slot(&cluster.slot_of(tenant_key), from, to);
        }
        _ => {}
    };
    let seeds = move |s: &mut Settings| s.redis.cluster_urls = urls.clone();
    chaos("chaos-cluster", &CLUSTER_SCHEDULE, seeds, fault).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "chaos: load-sized, run by scripts/chaos.sh"]
async fn soak_chaos_on_redis_sentinel_hands_out_every_url_exactly_once_through_failovers() {
    let first = RedisServer::start();
    let second = RedisServer::start_with(&["--replicaof", "127.0.0.1", &first.port.to_string()]);
    let sentinel = RedisSentinel::start(first.port);
    let url = sentinel.url();
    let mut nodes = [first, second];
    let primary = |nodes: &[RedisServer], s: &RedisSentinel| {
        let port = s.primary_port();
        nodes
            .iter()
            .position(|n| Some(n.port) == port)
            .expect("the Sentinel names one of the servers")
    };
    // The server the last crash or silence took down, to bring back in the next phase.
    let mut down = None;
    let mut refused = 0;
    let fault = move |fault: &str| match fault {
        "crash" => {
            let n = primary(&nodes, &sentinel);
            nodes[n].kill();
            down = Some(n);
        }
        "silence" => {
            let n = primary(&nodes, &sentinel);
            nodes[n].freeze();
            down = Some(n);
        }
        // The old primary comes back and the Sentinel makes it a replica of the new one.
        "rejoin" => nodes[down.take().expect("a server is down")].restart(),
        "resume" => nodes[down.take().expect("a server is down")].thaw(),
        // An operator's failover, which the Sentinel refuses without a replica fit to promote.
        "failover" if !sentinel.fail_over() => {
            refused += 1;
            eprintln!("the Sentinel refused failover {refused}: no replica fit to promote");
        }
        _ => {}
    };
    let sentinels = on_sentinels(vec![url], "mymaster");
    chaos("chaos-sentinel", &SENTINEL_SCHEDULE, sentinels, fault).await;
}

/// Drives the fleet phase after phase, applying `fault` with the schedule's next fault before
/// each, and writes the report as `bench-results/<name>.{json,md}`.
async fn chaos(
    name: &str,
    schedule: &'static [&'static str],
    redis: impl Fn(&mut Settings) + Send + Sync + 'static,
    mut fault: impl FnMut(&str),
) {
    let total = env_usize("EMBEDGATE_CHAOS_HANDOUTS", 1_000_000);
    let phase_size = env_usize("EMBEDGATE_CHAOS_PHASE", 25_000);
    let fleet = Arc::new(
        spawn_fleet(3, move |s| {
            roomy(s);
            redis(s);
            // Production's timeout: a pause or a kill really sends replicas into degraded mode.
            s.redis.timeout_ms = 50;
            s.tenants[0].warm = keys().into_iter().map(|k| warm(k, 16)).collect();
        })
        .await,
    );
    let min_remaining_ms = fleet.replicas[0].gateway.settings().pool.min_remaining_secs * 1000;
    let k = keys();
    let started = Instant::now();
    // Each URL handed out, with where it came from: a duplicate names both hand-outs.
    let mut seen: HashMap<String, String> = HashMap::with_capacity(total);
    let (mut duplicates, mut not_opened, mut done, mut phase) = (0u64, 0u64, 0usize, 0usize);
    let mut given_up = 0u64;
    let mut by_code: BTreeMap<String, u64> = BTreeMap::new();
    let mut latencies_us: Vec<u64> = Vec::with_capacity(total);
    let mut longest_phase = Duration::ZERO;
    while done < total {
        let this = schedule[phase % schedule.len()];
        fault(this);
        let phase_started = Instant::now();
        let outcomes = fleet
            .drive_giving_up(phase_size.min(total - done), 64, &k, GIVE_UP_EVERY)
            .await;
        given_up += outcomes.iter().filter(|o| o.is_none()).count() as u64;
        let mut fresh = vec![];
        for o in outcomes.iter().flatten() {
            latencies_us.push(o.elapsed.as_micros() as u64);
            let code = match o.body["EmbedUrl"].as_str() {
                Some(u) if o.status == 200 => {
                    let from = format!(
                        "phase {} after {this}, replica {}, source {}, request {}, {} ms",
                        phase + 1,
                        o.replica,
                        o.body["Source"],
                        o.body["RequestId"],
                        o.elapsed.as_millis()
                    );
                    match seen.entry(u.to_string()) {
                        Entry::Vacant(v) => {
                            v.insert(from);
                            fresh.push(u.to_string());
                        }
                        Entry::Occupied(first) => {
                            duplicates += 1;
                            eprintln!(
                                "DUPLICATE code {}…: first {}; again {from}",
                                u.split("code=").nth(1).unwrap_or(u).get(..16).unwrap_or(u),
                                first.get()
                            );
                        }
                    }
                    "200".to_string()
                }
                _ => format!(
                    "{} {}",
                    o.status,
                    o.body["code"].as_str().unwrap_or_default()
                ),
            };
            *by_code.entry(code).or_default() += 1;
        }
        let statuses = fleet.redeem(&fresh).await;
        not_opened += statuses.iter().filter(|s| **s != 200).count() as u64;
        longest_phase = longest_phase.max(phase_started.elapsed());
        done += outcomes.len();
        phase += 1;
        eprintln!(
            "phase {phase} after {this}: {done} of {total} requests, {duplicates} duplicates"
        );
    }
    let ledger = fleet.sim.sim.ledger();
    latencies_us.sort_unstable();
    let p = |q: f64| latencies_us[((latencies_us.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    let report = serde_json::json!({
        "requests": done,
        "given_up_by_client": given_up,
        "phases": phase,
        "schedule": schedule,
        "seconds": started.elapsed().as_secs_f64(),
        "duplicates_seen_by_client": duplicates,
        "double_redemptions": ledger.double_redemptions,
        "late_redemptions": ledger.late_redemptions,
        "not_opened": not_opened,
        "min_validity_left_ms": ledger.min_validity_left_ms,
        "longest_phase_ms": longest_phase.as_millis() as u64,
        "answers_by_code": by_code,
        "handout_latency_ms": {"p50": p(0.5), "p99": p(0.99), "max": p(1.0)},
        "fences": fleet.metric_sum("embedgate_redis_fences_total").await,
        "upstream_calls": ledger.calls,
        "urls_wasted_by_reason": {
            "cancelled": fleet.metric_total("embedgate_urls_wasted_total", "reason=\"cancelled\"").await,
            "unconfirmed": fleet.metric_total("embedgate_urls_wasted_total", "reason=\"unconfirmed\"").await,
            "expired": fleet.metric_total("embedgate_urls_wasted_total", "reason=\"expired\"").await,
        },
        "requests_cancelled": fleet.metric_total("embedgate_requests_total", "outcome=\"cancelled\"").await,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{name}.md")),
        format!(
            "# Chaos run ({name})\n\n{done} requests ({given_up} given up by their clients) over 3 \
             replicas in {phase} phases of {phase_size} \
             (faults in turn: {}), {:.0} s.\n\n| figure | value |\n| --- | --- |\n\
             | URLs handed out twice (client) | {duplicates} |\n| double openings (simulator) | {} |\n\
             | late openings | {} |\n| URLs that did not open | {not_opened} |\n\
             | least validity left at opening | {} ms (promised {min_remaining_ms} ms at hand-out; \
             opened within {} ms) |\n| hand-out latency p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |\n\
             | answers by code | {by_code:?} |\n| fencing epochs started | {} |\n\
             | requests counted `cancelled` (their client left first) | {} |\n\
             | URLs wasted: popped for a client gone (`cancelled`), outcome unknown \
             (`unconfirmed`), `expired` | {} / {} / {} |\n",
            schedule.join(", "),
            started.elapsed().as_secs_f64(),
            ledger.double_redemptions,
            ledger.late_redemptions,
            ledger.min_validity_left_ms.unwrap_or(0),
            longest_phase.as_millis(),
            p(0.5),
            p(0.99),
            p(1.0),
            report["fences"],
            report["requests_cancelled"],
            report["urls_wasted_by_reason"]["cancelled"],
            report["urls_wasted_by_reason"]["unconfirmed"],
            report["urls_wasted_by_reason"]["expired"],
        ),
    )
    .unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(
        (
            duplicates,
            ledger.double_redemptions,
            ledger.late_redemptions
        ),
        (0, 0, 0)
    );
    assert_eq!(not_opened, 0);
    assert!(
        ledger.min_validity_left_ms.unwrap_or(u64::MAX) + longest_phase.as_millis() as u64
            >= min_remaining_ms
    );
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}
