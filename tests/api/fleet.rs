//! Cluster mode: several gateway replicas sharing pool, limits and budget through a real Redis
//! (standalone and a three-master Cluster) that the tests start, kill and restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use embedgate::config::Settings;

use crate::helpers::*;
use crate::redis_server::{RedisCluster, RedisSentinel, RedisServer};

/// `total` requests from 96 concurrent clients over three replicas: every answer is a 200 with a
/// distinct URL that opens exactly once. How much of it the shared pool served depends on the
/// machine's load, so it is printed (the soak run reports it), never asserted.
async fn exactly_once_across_three_replicas(total: usize, redis: impl Fn(&mut Settings)) {
    let fleet = hands_out_exactly_once(total, redis).await;
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

/// Three replicas on the Redis `redis` sets, each ready (sharing through it).
async fn three_sharing(redis: impl Fn(&mut Settings)) -> Arc<TestFleet> {
    let fleet = Arc::new(
        spawn_fleet(3, |s| {
            roomy(s);
            redis(s);
            // Not a degraded-mode test: under 96 clients on a busy 2-core machine a Redis call
            // can exceed the default 50 ms, and a replica's spell on its local pool would fail the
            // "no replica fell back" check with nothing wrong.
            s.redis.timeout_ms = 2_000;
        })
        .await,
    );
    for i in 0..3 {
        assert_eq!(fleet.readiness(i).await, "ready");
    }
    fleet
}

/// Three replicas on the Redis `redis` sets hand out `total` URLs to 96 clients exactly once,
/// none of them falling back to local state; the fleet is left running.
async fn hands_out_exactly_once(total: usize, redis: impl Fn(&mut Settings)) -> Arc<TestFleet> {
    let fleet = three_sharing(redis).await;
    let outcomes = fleet.drive(total, 96, &keys()).await;
    assert_exactly_once(&fleet, &outcomes).await;
    let pooled = outcomes
        .iter()
        .filter(|o| o.body["Source"] == "pool")
        .count();
    eprintln!("{total} requests over 3 replicas: {pooled} served from the shared pool");
    assert_eq!(
        fleet.metric_sum("embedgate_redis_degraded").await,
        0.0,
        "no replica fell back to local state"
    );
    // Concurrent takes from three replicas count the tenant's serial up out of order: none may
    // read as Redis going back to an older copy.
    assert_eq!(
        fleet.metric_sum("embedgate_redis_fences_total").await,
        0.0,
        "no replica saw the data set change"
    );
    fleet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_one_redis_hand_out_urls_exactly_once() {
    let redis = RedisServer::start();
    exactly_once_across_three_replicas(6_000, on_redis(redis.url())).await;
}

/// A Redis user confined to the fleet's keys (`~<prefix>*`) and without `@dangerous` but `INFO`,
/// as a hardened or shared Redis is set up: every key the fleet touches lies under its prefix,
/// so the fleet shares through it with nothing refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_user_confined_to_the_prefix_serves_the_whole_fleet() {
    let redis = RedisServer::start();
    let acl = [
        "ACL",
        "SETUSER",
        "fleet",
        "on",
        ">secret",
        "~fleet-b:*",
        "+@all",
        "-@dangerous",
        "+info",
    ];
    assert_eq!(redis.cli(&acl).as_deref(), Some("OK"));
    let url = format!("redis://fleet:secret@127.0.0.1:{}", redis.port);
    let fleet = Arc::new(
        spawn_fleet(3, |s| {
            roomy(s);
            s.redis.url = Some(url.clone());
            s.redis.prefix = "fleet-b:".into();
        })
        .await,
    );
    for i in 0..3 {
        assert_eq!(fleet.readiness(i).await, "ready");
    }
    let outcomes = fleet.drive(1_500, 48, &keys()).await;
    assert_exactly_once(&fleet, &outcomes).await;
    assert_eq!(
        fleet.metric_sum("embedgate_redis_errors_total").await,
        0.0,
        "Redis refused nothing"
    );
    let keys = redis.cli(&["--scan"]).unwrap_or_default();
    assert!(
        !keys.is_empty() && keys.lines().all(|k| k.starts_with("fleet-b:")),
        "every key under the prefix: {keys}"
    );
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

/// RESP3 (`?protocol=resp3`, which some client set-ups and proxies ask for): the scripts'
/// answers and the commands' replies (maps, verbatim strings) read the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_speaking_resp3_hand_out_urls_exactly_once() {
    let redis = RedisServer::start();
    let url = format!("{}?protocol=resp3", redis.url());
    let fleet = hands_out_exactly_once(1_500, on_redis(url)).await;
    let clients = redis.cli(&["CLIENT", "LIST"]).unwrap_or_default();
    assert!(
        clients.lines().any(|c| c.contains("resp=3")),
        "the replicas speak RESP3: {clients}"
    );
    assert!(
        !clients
            .lines()
            .any(|c| c.contains("resp=2") && !c.contains("cmd=client")),
        "no replica speaks RESP2: {clients}"
    );
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

/// Every connection a replica opens to Redis, standalone, a Cluster's node or the primary a
/// Sentinel names, sends each command at once (`TCP_NODELAY`). With Nagle's algorithm, the Redis client's default, a command written
/// while an earlier one on the pipelined connection is unacknowledged waits for that ACK, up to a
/// round trip across a network. (The loopback's round trip is too short to show it, so the
/// option itself is what is checked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_connection_to_redis_sends_each_command_at_once() {
    let redis = RedisServer::start();
    let fleet = hands_out_exactly_once(600, on_redis(redis.url())).await;
    assert_sent_at_once(&[redis.port], "a standalone Redis");
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;

    let cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    let fleet = hands_out_exactly_once(600, move |s| s.redis.cluster_urls = urls.clone()).await;
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    assert_sent_at_once(&ports, "a Redis Cluster's nodes");
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;

    let primary = RedisServer::start();
    let sentinel = RedisSentinel::start(primary.port);
    let on = on_sentinels(vec![sentinel.url()], "mymaster");
    let fleet = hands_out_exactly_once(600, on).await;
    assert_sent_at_once(&[primary.port], "the primary a Sentinel names");
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

/// A Redis that closes idle clients (`timeout`, which some operators set to reap leaked
/// connections): a worker's connection that sat idle through a quiet spell is closed by Redis,
/// and the first requests after it must not fail a Redis call (each failure sends the replica to
/// its local pool and limits until the next heartbeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_redis_closed_while_idle_fail_no_call() {
    let redis = RedisServer::start_with(&["--timeout", "1"]);
    quiet_spell_fails_no_call(on_redis(redis.url())).await;
}

/// The same on a Redis Cluster whose nodes close idle clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_a_redis_cluster_closed_while_idle_fail_no_call() {
    let cluster = RedisCluster::start(3);
    for node in &cluster.nodes {
        assert_eq!(
            node.cli(&["CONFIG", "SET", "timeout", "1"]).as_deref(),
            Some("OK")
        );
    }
    let urls = cluster.urls();
    quiet_spell_fails_no_call(move |s| s.redis.cluster_urls = urls.clone()).await;
}

/// Three replicas on the Redis `redis` sets hand out URLs before and after three seconds without
/// a request, exactly once, and no Redis call fails after the quiet spell.
async fn quiet_spell_fails_no_call(redis: impl Fn(&mut Settings)) {
    let fleet = three_sharing(redis).await;
    let failed = || async {
        let mut n = 0.0;
        for op in embedgate::metrics::REDIS_OPERATIONS {
            n += fleet
                .metric_total("embedgate_redis_errors_total", &format!("op=\"{op}\""))
                .await;
        }
        n
    };
    let mut all = fleet.drive(600, 96, &keys()).await;
    let before = failed().await;
    // Quiet: no requests for three times Redis's idle timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    all.extend(fleet.drive(600, 96, &keys()).await);
    assert_exactly_once(&fleet, &all).await;
    assert_eq!(
        failed().await - before,
        0.0,
        "a Redis call failed after the quiet spell"
    );
    assert_eq!(
        fleet.metric_sum("embedgate_redis_degraded").await,
        0.0,
        "no replica fell back to local state"
    );
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

/// Every TCP connection of this process to one of `ports`, the replicas' and nobody else's (each
/// test's Redis has ports of its own), has `TCP_NODELAY`.
fn assert_sent_at_once(ports: &[u16], what: &str) {
    let mut connections = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: the descriptor is only asked about, by two system calls; one another thread
        // closes meanwhile fails them (or names another socket, which its peer tells apart).
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let Some(peer) = socket.peer_addr().ok().and_then(|a| a.as_socket()) else {
            continue;
        };
        if peer.ip().is_loopback() && ports.contains(&peer.port()) {
            connections += 1;
            assert_eq!(
                socket.tcp_nodelay().ok(),
                Some(true),
                "a connection to {what} ({peer}) waits on Nagle's algorithm"
            );
        }
    }
    // Three replicas: a shared connection each at least, and the workers' own.
    assert!(
        connections >= 3,
        "{connections} connections to {what} found"
    );
}

/// Redis over TLS (`rediss://`, as ElastiCache and MemoryDB with encryption in transit are
/// reached), its certificate trusted through `redis.tls_ca_file`: the fleet shares pool and
/// limits through it and hands out each URL once. A replica that does not trust the
/// certificate (the system's roots do not hold it) does not use that Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_on_redis_over_tls_hands_out_urls_exactly_once_and_trusts_only_its_ca() {
    let (redis, tls_port, cert) = RedisServer::start_tls();
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let over_tls = |s: &mut Settings| {
        s.redis.url = Some(url.clone());
        s.redis.tls_ca_file = Some(cert.clone());
    };
    exactly_once_across_three_replicas(1_500, over_tls).await;
    assert!(
        redis.shared_stock_reaches("alpha", None, 1).await,
        "the replicas pooled through the TLS port"
    );

    let untrusting = spawn_fleet(1, on_redis(url.clone())).await;
    assert_eq!(untrusting.readiness(0).await, "degraded");
    untrusting.stop().await;
}

/// A Redis Cluster over TLS (ElastiCache's cluster mode and MemoryDB with encryption in transit):
/// the seeds' certificate trust carries to the nodes the cluster's map names.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_on_a_redis_cluster_over_tls_hands_out_urls_exactly_once() {
    let (cluster, cert) = RedisCluster::start_tls(3);
    let urls = cluster.urls();
    exactly_once_across_three_replicas(1_500, move |s| {
        s.redis.cluster_urls = urls.clone();
        s.redis.tls_ca_file = Some(cert.clone());
    })
    .await;
    assert!(cluster.keys() > 0, "the replicas wrote to the cluster");
}

/// Redis Sentinel (`redis.sentinel_urls`), each side with its own password, as a self-hosted
/// highly available Redis is set up: the replicas log in to the Sentinel with its password, to
/// the primary it names with the primary's, and share pool and limits through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_on_redis_sentinel_with_passwords_hands_out_urls_exactly_once() {
    let primary = RedisServer::start_with_password("primary-secret");
    let sentinel =
        RedisSentinel::start_with_passwords(primary.port, "primary-secret", "sentinel-secret");
    let on = on_sentinels(vec![sentinel.url()], "redis://:primary-secret@mymaster");
    exactly_once_across_three_replicas(1_500, on).await;
    assert!(
        primary.shared_stock_reaches("alpha", None, 1).await,
        "the replicas pooled in the primary the Sentinel names"
    );
}

/// The primary a Sentinel names (at `host`) reached over TLS (`rediss://` in
/// `redis.sentinel_master`), its certificate, for `host` alone, trusted through
/// `redis.tls_ca_file`; the Sentinel itself in plain TCP.
async fn a_fleet_on_redis_sentinel_reaches_the_primary_over_tls_at(host: &str) {
    let (primary, _, cert) = RedisServer::start_tls_for(host);
    let sentinel = RedisSentinel::start_tls(&primary, host);
    let named = sentinel.primary_addr().map(|a| a.0);
    assert_eq!(
        named.as_deref(),
        Some(host),
        "the Sentinel names the primary"
    );
    let on = on_sentinels(vec![sentinel.url()], "rediss://mymaster");
    exactly_once_across_three_replicas(1_500, move |s| {
        on(s);
        s.redis.tls_ca_file = Some(cert.clone());
    })
    .await;
    assert!(
        primary.shared_stock_reaches("alpha", None, 1).await,
        "the replicas pooled in the primary the Sentinel names, over TLS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_on_redis_sentinel_reaches_the_primary_over_tls() {
    a_fleet_on_redis_sentinel_reaches_the_primary_over_tls_at("127.0.0.1").await;
}

/// Sentinels that announce host names (`announce-hostnames`): the primary's certificate is
/// checked against the name they give.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_on_redis_sentinel_reaches_the_primary_over_tls_by_its_host_name() {
    a_fleet_on_redis_sentinel_reaches_the_primary_over_tls_at("localhost").await;
}

/// A replica whose Sentinels do not answer at start (stopped: they take connections and say
/// nothing) serves from its own pool and joins the primary they name once they answer. (Not a
/// port left free for a Sentinel to take later: another test's server could take it meanwhile.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_started_while_the_sentinels_are_down_serves_and_joins_later() {
    let primary = RedisServer::start();
    let sentinel = RedisSentinel::start(primary.port);
    sentinel.freeze();
    let on = on_sentinels(vec![sentinel.url()], "mymaster");
    let fleet = Arc::new(spawn_fleet(1, on).await);
    assert_eq!(fleet.readiness(0).await, "degraded");
    let first = fleet.embed(0, "alpha", &dash("finance", "alice")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    sentinel.thaw();
    fleet.all_ready(Duration::from_secs(10)).await;
    let next = fleet.drive(200, 8, &keys()).await;
    assert_exactly_once(&fleet, &next).await;
    assert!(
        primary.shared_stock_reaches("alpha", None, 1).await,
        "the replica pooled in the primary the Sentinel names"
    );
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

/// The load-sized run (`scripts/soak.sh`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak: load-sized, run by scripts/soak.sh"]
async fn soak_three_replicas_on_one_redis_hand_out_30000_urls_exactly_once() {
    let redis = RedisServer::start();
    exactly_once_across_three_replicas(30_000, on_redis(redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_master_redis_cluster_hands_out_urls_exactly_once() {
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    exactly_once_across_three_replicas(6_000, move |s| s.redis.cluster_urls = urls.clone()).await;
    // The shared state really lives in the cluster. (All of one tenant's keys share a hash tag,
    // so they sit on one master by design; which one depends on the tag.)
    assert!(cluster.keys() > 0, "the replicas wrote to the cluster");
}

/// Open-loop traffic: each key's requests at fixed intervals (the same schedule every run),
/// spread round-robin over the replicas. Returns the outcomes.
async fn scheduled(
    fleet: &Arc<TestFleet>,
    plan: &[(Value, f64, Duration, Duration)],
) -> Vec<Outcome> {
    let start = tokio::time::Instant::now();
    let mut tasks = vec![];
    let mut n = 0usize;
    for (body, rate, from, until) in plan {
        let gap = Duration::from_secs_f64(1.0 / rate);
        let mut at = *from;
        while at < *until {
            let fleet = fleet.clone();
            let body = body.clone();
            let i = n;
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(start + at).await;
                fleet.embed(i, "alpha", &body).await
            }));
            n += 1;
            at += gap;
        }
    }
    let mut out = vec![];
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// (upstream calls, URLs fetched but not handed out) for one run of the shared scenario.
async fn efficiency_run(replicas: usize, redis: Option<String>) -> (u64, u64) {
    let fleet = Arc::new(
        spawn_fleet(replicas, |s| {
            // A usable life of 15 s, so URLs expire (and waste shows) within the test.
            s.pool.min_remaining_secs = 285;
            s.redis.url = redis.clone();
        })
        .await,
    );
    // Realistic upstream latency: prefetches spend time in flight, where other replicas
    // cannot see them.
    fleet
        .sim
        .sim
        .update_knobs(&serde_json::json!({"latency_ms": 150, "latency_p99_ms": 600}))
        .unwrap();
    let s = Duration::from_secs;
    let plan = [
        (dash("sales-2024", "alice"), 40.0, s(0), s(20)),
        (dash("sales-2024", "bob"), 10.0, s(0), s(20)),
        (dash("finance", "alice"), 3.0, s(0), s(20)),
        // A burst that stops: what it left in the pool expires unused.
        (dash("ops-overview", "carol"), 30.0, s(1), s(4)),
    ];
    let outcomes = scheduled(&fleet, &plan).await;
    let served = outcomes.iter().filter(|o| o.status == 200).count() as u64;
    assert_eq!(served, outcomes.len() as u64, "every request served");
    let ledger = fleet.sim.sim.ledger();
    let pooled = outcomes
        .iter()
        .filter(|o| o.body["Source"] == "pool")
        .count();
    eprintln!("{replicas} replica(s): {served} served, {pooled} from the pool, ready: {}, wasted metric {}", fleet.readiness(0).await, fleet.metric_total("embedgate_urls_wasted_total", "reason=\"expired\"").await);
    let result = (ledger.calls, ledger.issued_total - served);
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
    result
}

/// Pool efficiency of a fleet against one gateway on the same schedule: a benchmark figure
/// (`scripts/soak.sh` prints it), since both sides depend on the machine's load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak: a load-dependent comparison, run by scripts/soak.sh"]
async fn soak_three_replicas_fetch_and_waste_what_one_gateway_does_for_the_same_traffic() {
    let redis = RedisServer::start();
    let (one_calls, one_waste) = efficiency_run(1, None).await;
    let (three_calls, three_waste) = efficiency_run(3, Some(redis.url())).await;
    eprintln!("one gateway: {one_calls} calls, {one_waste} wasted; three replicas: {three_calls} calls, {three_waste} wasted");
}

/// The limit is fleet-wide: across three replicas a tenant never gets more than one limit's
/// worth (GCRA: the burst plus the rate times the elapsed time). A busy machine can only lower
/// what is accepted, so the bound holds under any load; three separate limiters would accept
/// about three times as much.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_limit_holds_across_the_fleet() {
    // AUTH as managed Redis requires it: the password travels in the URL.
    let redis = RedisServer::start_with_password("fleet-secret");
    let anonymous = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "PING"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&anonymous.stdout).contains("NOAUTH"),
        "the server really demands AUTH"
    );
    const RATE: f64 = 100.0;
    const BURST: u32 = 10;
    let fleet = Arc::new(
        spawn_fleet(3, |s| {
            s.redis.url = Some(redis.url());
            // Not about degraded mode: a busy machine must not push a replica onto its own limiter.
            s.redis.timeout_ms = 2_000;
            s.tenants[0].rate_per_sec = RATE;
            s.tenants[0].burst = BURST;
        })
        .await,
    );
    let started = Instant::now();
    let body = dash("sales-2024", "alice");
    let outcomes = fleet
        .drive_for(Duration::from_secs(4), 48, |_| body.clone())
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = outcomes.iter().filter(|o| o.status == 200).count();
    let refused = outcomes.iter().filter(|o| o.status == 429).count();
    assert_eq!(accepted + refused, outcomes.len(), "only 200s and 429s");
    eprintln!(
        "accepted {accepted} in {elapsed:.2} s fleet-wide (limit {RATE}/s, burst {BURST}), {refused} refused"
    );
    assert!(refused > 0, "the tenant really was over its limit");
    let bound = f64::from(BURST) + RATE * elapsed + 1.0;
    assert!(
        accepted as f64 <= bound,
        "accepted {accepted} across 3 replicas; one fleet-wide limit allows at most {bound:.0}"
    );
    assert_eq!(
        fleet.metric_sum("embedgate_redis_degraded").await,
        0.0,
        "no replica fell back to its own limiter"
    );
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_killed_replicas_serve_on_their_own_and_rejoin_when_it_returns() {
    let mut redis = RedisServer::start();
    let fleet = Arc::new(
        spawn_fleet(3, |s| {
            roomy(s);
            s.redis.url = Some(redis.url());
            s.redis.timeout_ms = 50;
            s.api.miss_timeout_ms = 2_000;
        })
        .await,
    );
    // The bound is the guarantee (no request hangs on a dead Redis), with slack for a busy
    // machine; without the Redis timeout a request would wait for the OS's connect timeout.
    let bound = Duration::from_millis(2_000 + 50 + 3_000);
    let k = keys();
    let phase = |n| {
        let fleet = fleet.clone();
        let k = k.clone();
        async move { fleet.drive(n, 32, &k).await }
    };
    let mut outcomes = phase(1_500).await;

    redis.kill();
    let during = phase(1_500).await;
    for i in 0..3 {
        assert_eq!(fleet.readiness(i).await, "degraded", "replica {i}");
    }
    assert_eq!(fleet.metric_sum("embedgate_redis_degraded").await, 3.0);
    let slowest = during.iter().map(|o| o.elapsed).max().unwrap();
    assert!(
        slowest <= bound,
        "answers within the bound while Redis is down: {slowest:?}"
    );
    outcomes.extend(during);

    redis.restart();
    fleet.all_ready(Duration::from_secs(10)).await;
    // Not sampled once: with a 50 ms timeout a busy machine can send a replica back to degraded
    // mode for a heartbeat right after it rejoined, which the gauge then rightly shows. That no
    // replica fails on a connection from before the restart is fleet_scripts::after_a_redis_
    // restart_no_thread_fails_on_its_connection_from_before.
    let gauge_clears = eventually(Duration::from_secs(10), || async {
        fleet.metric_sum("embedgate_redis_degraded").await == 0.0
    })
    .await;
    assert!(gauge_clears, "embedgate_redis_degraded returns to 0");
    outcomes.extend(phase(1_500).await);
    // After rejoining, the shared pool is in use again.
    assert!(
        redis.cli(&["DBSIZE"]).is_some_and(|n| n != "0"),
        "replicas write to Redis again"
    );
    assert_exactly_once(&fleet, &outcomes).await;
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

/// Three replicas that have seen each other, then lost Redis: each keeps to its third of the
/// limits they shared (`Limits::part`).
async fn three_cut_off_from_redis(
    customize: impl Fn(&mut Settings),
) -> (Arc<TestFleet>, RedisServer) {
    let mut redis = RedisServer::start();
    let fleet = Arc::new(
        spawn_fleet(3, |s| {
            s.redis.url = Some(redis.url());
            customize(s);
        })
        .await,
    );
    for i in 0..3 {
        assert!(
            fleet
                .metric_reaches(i, "embedgate_fleet_replicas", 3.0)
                .await,
            "replica {i} counted three live replicas"
        );
    }
    redis.kill();
    for i in 0..3 {
        assert!(
            fleet
                .metric_reaches(i, "embedgate_redis_degraded", 1.0)
                .await,
            "replica {i} serves on its own"
        );
    }
    (fleet, redis)
}

/// A tenant's limit holds across a fleet cut off from Redis: each replica allows a third of
/// the rate and burst. Before, each allowed the whole, so the fleet let a tenant send three
/// times its rate for as long as Redis was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_cut_off_from_redis_keeps_to_each_tenants_limit() {
    const RATE: f64 = 30.0;
    const BURST: u32 = 15;
    let (fleet, _redis) = three_cut_off_from_redis(|s| {
        roomy(s);
        s.redis.timeout_ms = 50;
        s.tenants[0].rate_per_sec = RATE;
        s.tenants[0].burst = BURST;
    })
    .await;
    let started = Instant::now();
    let body = dash("sales-2024", "alice");
    let outcomes = fleet
        .drive_for(Duration::from_secs(3), 16, |_| body.clone())
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = outcomes.iter().filter(|o| o.status != 429).count();
    let refused = outcomes.len() - admitted;
    eprintln!(
        "admitted {admitted} in {elapsed:.2} s over three degraded replicas (limit {RATE}/s, burst {BURST}), {refused} refused"
    );
    assert!(refused > 0, "the tenant really was over its limit");
    // Each replica's part: a burst of 5 and 10/s, from a full burst when the run began (the
    // parts are built at the first request); one request of slack per replica for the
    // limiter's rounding.
    let bound = f64::from(BURST) + RATE * elapsed + 3.0;
    assert!(
        admitted as f64 <= bound,
        "admitted {admitted} across 3 degraded replicas; their parts of one limit allow at most {bound:.0}"
    );
    assert!(
        admitted > BURST as usize,
        "the replicas' parts together still admit more than one burst"
    );
    assert_eq!(fleet.metric_sum("embedgate_redis_degraded").await, 3.0);
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

/// The account's upstream budget holds across a fleet cut off from Redis: each replica calls
/// QuickSight at a third of it. Before, each spent the whole budget, and only QuickSight's
/// throttling held the fleet back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_cut_off_from_redis_keeps_to_the_accounts_budget() {
    const RATE: f64 = 12.0;
    const BURST: u32 = 12;
    let (fleet, _redis) = three_cut_off_from_redis(|s| {
        s.redis.timeout_ms = 50;
        s.upstream.rate_per_sec = RATE;
        s.upstream.burst = BURST;
        s.api.miss_timeout_ms = 500;
    })
    .await;
    let before = fleet.sim.sim.ledger().calls;
    let started = Instant::now();
    // Requests over 1,000 users' keys in turn: each a miss that needs a call.
    let outcomes = fleet
        .drive_for(Duration::from_secs(3), 24, |i| {
            dash("sales-2024", &format!("user-{:04}", i % 1000))
        })
        .await;
    // Calls started in the run have ended (the simulator answers at once).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let calls = fleet.sim.sim.ledger().calls - before;
    let served = outcomes.iter().filter(|o| o.status == 200).count();
    let short = outcomes
        .iter()
        .filter(|o| o.body["code"] == "upstream_budget_exhausted")
        .count();
    eprintln!(
        "{calls} QuickSight calls in {elapsed:.2} s from three degraded replicas (budget {RATE}/s, burst {BURST}); {served} served, {short} refused for the budget"
    );
    assert!(short > 0, "the fleet really was short of budget");
    // Each replica's part: 4 calls of burst (its bucket shrank to that when it lost Redis) and
    // 4/s; one call of slack per replica for rounding.
    let bound = f64::from(BURST) + RATE * elapsed + 3.0;
    assert!(
        calls as f64 <= bound,
        "{calls} calls from 3 degraded replicas; their parts of one budget allow at most {bound:.0}"
    );
    assert!(served > 0, "misses were served within the budget");
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_started_while_redis_is_down_serves_and_joins_later() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let fleet = Arc::new(spawn_fleet(1, on_redis(url)).await);
    assert_eq!(fleet.readiness(0).await, "degraded");
    let first = fleet.embed(0, "alpha", &dash("finance", "alice")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    redis.restart();
    fleet.all_ready(Duration::from_secs(10)).await;
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

/// Redis closes a connection idle longer than its `timeout` (self-hosted set-ups set one; some
/// managed services close idle connections after minutes). A worker's own connection that sat
/// idle while the heartbeat kept the shared one busy is closed under it: its next request must
/// not send the replica into degraded mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_redis_closed_for_idleness_does_not_degrade_the_replica() {
    let redis = RedisServer::start_with(&["--timeout", "1"]);
    let fleet = spawn_fleet(1, |s| {
        s.redis.url = Some(redis.url());
        s.redis.timeout_ms = 2_000;
        s.redis.heartbeat_ms = 200;
    })
    .await;
    let burst = |n: usize| {
        let fleet = &fleet;
        async move {
            futures::stream::iter(0..n)
                .map(|i| async move { fleet.embed(i, "alpha", &dash("finance", "alice")).await })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await
        }
    };
    burst(40).await;
    assert_eq!(fleet.readiness(0).await, "ready");
    // Longer than Redis's idle timeout (checked about every second).
    let received = || {
        redis
            .cli(&["INFO", "stats"])
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap()
    };
    let before = received();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for r in burst(40).await {
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(
        fleet.metric_sum("embedgate_redis_errors_total").await,
        0.0,
        "no Redis call failed"
    );
    // One of them is the `redis-cli` that asks; the others are the replica's, made again.
    let after = received();
    assert!(
        after > before + 1,
        "Redis closed idle connections and the replica opened new ones: {before} -> {after}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shared_pool_keeps_each_tenants_bound() {
    let redis = RedisServer::start();
    let fleet = Arc::new(
        spawn_fleet(2, |s| {
            s.redis.url = Some(redis.url());
            // Not a degraded-mode test: on a busy machine a Redis call slower than the default
            // 50 ms would send a replica to its local pool for a moment, and its fills would not
            // be the fleet's (seen once as alpha at 11).
            s.redis.timeout_ms = 2_000;
            s.tenants[1].max_pooled_urls = 5;
            s.tenants[1].warm = vec![warm(dash("sales-2024", "alice"), 20)];
            s.tenants[0].warm = vec![warm(dash("sales-2024", "alice"), 8)];
        })
        .await,
    );
    let zcards = |tenant: &str| redis.shared_stock(tenant);
    let filled = eventually(Duration::from_secs(10), || {
        std::future::ready(zcards("alpha") >= 8 && zcards("beta") >= 5)
    })
    .await;
    assert!(
        filled,
        "warm keys filled: alpha {} beta {}",
        zcards("alpha"),
        zcards("beta")
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        zcards("beta"),
        5,
        "beta holds its bound of 5 across both replicas"
    );
    assert!(
        zcards("alpha") <= 10,
        "alpha's warm depth 8 is not doubled by two replicas: {}",
        zcards("alpha")
    );
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

/// Redis round trips of operation `op` so far, over the fleet.
async fn round_trips(fleet: &TestFleet, op: &str) -> f64 {
    fleet
        .metric_sum(&format!(
            "embedgate_redis_duration_seconds_count{{op=\"{op}\"}}"
        ))
        .await
}

/// In a fleet, a pool hit costs one Redis round trip: the request's count against its tenant's
/// limit and the take travel in one script, not one call each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_hit_in_a_fleet_is_one_redis_round_trip() {
    let redis = RedisServer::start();
    let body = dash("sales-2024", "alice");
    let fleet = spawn_fleet(1, |s| {
        s.redis.url = Some(redis.url());
        // Not a degraded-mode test: a busy machine must not send the replica to its own pool.
        s.redis.timeout_ms = 2_000;
        s.tenants[0].warm = vec![warm(body.clone(), 40)];
    })
    .await;
    let stocked = redis.shared_stock_reaches("alpha", None, 40).await;
    assert!(stocked, "the warm key was stocked in Redis");
    let ops = ["hit", "take", "inbound"];
    let mut before = vec![];
    for op in ops {
        before.push(round_trips(&fleet, op).await);
    }
    const N: usize = 30;
    for i in 0..N {
        let o = fleet.embed(i, "alpha", &body).await;
        assert_eq!(o.status, 200, "{}", o.body);
        assert_eq!(o.body["Source"], "pool", "request {i} was a pool hit");
    }
    let mut delta = vec![];
    for (op, b) in ops.iter().zip(before) {
        delta.push(round_trips(&fleet, op).await - b);
    }
    assert_eq!(
        delta,
        vec![N as f64, 0.0, 0.0],
        "{N} hits: one `hit` round trip each, no separate take or limit call"
    );
    assert_eq!(fleet.metric_sum("embedgate_redis_degraded").await, 0.0);
    fleet.stop().await;
}

/// Counting with the take moves the count after the body is parsed, never past the limit: a bad
/// request of a tenant over its limit is refused as over its limit, as on a single node, and
/// once the replica has seen the refusal the tenant's next request is refused without asking
/// Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_over_its_limit_in_a_fleet_is_refused_bad_input_or_not() {
    let redis = RedisServer::start();
    const BURST: u32 = 4;
    let fleet = spawn_fleet(1, |s| {
        s.redis.url = Some(redis.url());
        s.redis.timeout_ms = 2_000;
        // One request per 100 s after the burst: nothing refills within the test.
        s.tenants[0].rate_per_sec = 0.01;
        s.tenants[0].burst = BURST;
    })
    .await;
    let body = dash("sales-2024", "alice");
    for i in 0..BURST as usize {
        let o = fleet.embed(i, "alpha", &body).await;
        assert_eq!(o.status, 200, "request {i} is within the burst: {}", o.body);
    }
    let bad = serde_json::json!({"DashboardId": "", "IdentityType": "QUICKSIGHT"});
    let o = fleet.embed(0, "alpha", &bad).await;
    assert_eq!(o.status, 429, "a bad request over the limit: {}", o.body);
    assert_eq!(o.body["code"], "rate_limited");
    let trips = round_trips(&fleet, "hit").await + round_trips(&fleet, "inbound").await;
    for i in 0..5 {
        let o = fleet.embed(i, "alpha", &body).await;
        assert_eq!(o.status, 429, "{}", o.body);
    }
    assert_eq!(
        round_trips(&fleet, "hit").await + round_trips(&fleet, "inbound").await,
        trips,
        "a tenant known to be over its limit is refused without a round trip"
    );
    // Another tenant is not affected.
    let o = fleet.embed(0, "beta", &body).await;
    assert_eq!(o.status, 200, "{}", o.body);
    fleet.stop().await;
}

/// The most prefetches any replica has claimed as in flight for any key of tenant `alpha`, as the
/// shared demand hashes record it (`None` before any is recorded).
fn claimed_in_flight(redis: &RedisServer) -> Option<usize> {
    let keys = redis
        .cli(&["--scan", "--pattern", "embedgate:{t:alpha}:d2:*"])
        .unwrap_or_default();
    keys.lines()
        .filter_map(|k| redis.cli(&["HGETALL", k]))
        .flat_map(|all| {
            all.lines()
                .skip(1)
                .step_by(2)
                .filter_map(|v| v.split(',').nth(2)?.parse::<usize>().ok())
                .collect::<Vec<_>>()
        })
        .max()
}

/// With the simulator answering in 300 ms, samples [`claimed_in_flight`] every 20 ms for three
/// seconds, and checks some prefetch was claimed. Slow answers keep the prefetches in flight
/// across several ticks, long enough to be seen: with answers at once, a prefetch a budget of
/// 2 calls a second let start lasted a few milliseconds, and the samples could miss them all.
async fn claims_with_slow_answers(fleet: &TestFleet, redis: &RedisServer) -> Vec<usize> {
    fleet
        .sim
        .sim
        .update_knobs(&serde_json::json!({"latency_ms": 300}))
        .unwrap();
    let started = Instant::now();
    let mut seen = vec![];
    while started.elapsed() < Duration::from_secs(3) {
        if let Some(n) = claimed_in_flight(redis) {
            seen.push(n);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen.iter().any(|&n| n > 0),
        "prefetches were claimed: {seen:?}"
    );
    seen
}

/// A replica claims in the shared state only the prefetches it can start (its free prefetch
/// slots). A claim counts against the key's fleet-wide limit until the next sync, so claims
/// beyond that held the limit against the prefetches that did run: each tick then started at
/// most `refill.concurrency` prefetches, and the shared pool filled at a fraction of the local
/// pool's speed (640 against 3,900 URLs/s on the benchmark machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_claims_only_the_prefetches_it_can_start() {
    let redis = RedisServer::start();
    const SLOTS: usize = 4;
    let fleet = spawn_fleet(1, |s| {
        s.redis.url = Some(redis.url());
        s.redis.timeout_ms = 2_000;
        s.refill.concurrency = SLOTS;
        // A budget the slots cannot use up (4 calls each 300 ms: about 13 a second): a
        // prefetch the budget refuses once started ends without landing, and the shared pool
        // learns that only at the next sync (its claim counted until then).
        s.upstream.rate_per_sec = 100.0;
        s.upstream.burst = 100;
        s.tenants[0].warm = vec![warm(dash("sales-2024", "alice"), 100)];
    })
    .await;
    let seen = claims_with_slow_answers(&fleet, &redis).await;
    assert!(
        seen.iter().all(|&n| n <= SLOTS),
        "claimed in flight never above the {SLOTS} prefetch slots: {seen:?}"
    );
    fleet.stop().await;
}

/// Nor more than its upstream budget lets it start. A claim the budget then refused stayed in
/// the key's fleet-wide count until the replica's next sync, and while it did the other
/// replicas found the key's limit taken and started none of its needed prefetches: through
/// three replicas, 20 s of surplus stock instead of 10 cost the Zipf scenario's steady phase
/// 5 to 6 points of its pool hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_claims_no_more_prefetches_than_its_budget_allows() {
    let redis = RedisServer::start();
    const BURST: u32 = 4;
    let fleet = spawn_fleet(1, |s| {
        s.redis.url = Some(redis.url());
        s.redis.timeout_ms = 2_000;
        s.upstream.rate_per_sec = 2.0;
        s.upstream.burst = BURST;
        // One tenant, so the whole budget is its share (the share's floor is a unit test's).
        s.tenants.truncate(1);
        s.tenants[0].warm = vec![warm(dash("sales-2024", "alice"), 100)];
    })
    .await;
    // 300 ms answers at 2 calls a second stay within the burst.
    let seen = claims_with_slow_answers(&fleet, &redis).await;
    assert!(
        seen.iter().all(|&n| n <= BURST as usize),
        "claimed in flight never above the budget's burst of {BURST}: {seen:?}"
    );
    fleet.stop().await;
}

/// A Redis that refuses the session views stream (here an ACL without `XADD`) costs the fleet
/// its shared session learning and nothing else: the replica is not sent to degraded mode (which
/// would hold its pool and limits local until the next heartbeat, here a minute away), its
/// requests still go to the shared pool, and it tries the views again only a minute later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_that_refuses_the_views_stream_leaves_the_rest_shared() {
    let redis = RedisServer::start();
    redis.cli(&["ACL", "SETUSER", "default", "-xadd"]);
    let fleet = spawn_fleet(1, |s| {
        s.redis.url = Some(redis.url());
        s.redis.timeout_ms = 2_000;
        s.redis.heartbeat_ms = 60_000;
    })
    .await;
    fleet.all_ready(Duration::from_secs(20)).await;
    // A registered user's view gives the learner a batch to send.
    let o = fleet
        .embed(0, "alpha", &dash("sales-2024", "user-0001"))
        .await;
    assert_eq!(o.status, 200, "{}", o.body);
    let refused = r#"embedgate_redis_errors_total{op="views"}"#;
    let seen = fleet.metric_reaches(0, refused, 1.0).await;
    assert!(seen, "the views call was refused");
    assert_eq!(fleet.metric(0, "embedgate_redis_degraded").await, 0.0);
    assert_eq!(fleet.readiness(0).await, "ready");
    let hits = r#"embedgate_redis_duration_seconds_count{op="hit"}"#;
    let before = fleet.metric(0, hits).await;
    let o = fleet.embed(0, "alpha", &dash("finance", "user-0001")).await;
    assert_eq!(o.status, 200, "{}", o.body);
    assert_eq!(
        fleet.metric(0, hits).await,
        before + 1.0,
        "the request went to Redis"
    );
    assert_eq!(
        fleet.metric(0, refused).await,
        1.0,
        "not retried every tick"
    );
    fleet.stop().await;
}

/// [`gateway::every_url_quicksight_mints_ends_in_one_place_while_clients_give_up_at_random`]
/// through two replicas on one Redis: every URL QuickSight minted is handed out once, counted as
/// waste by one replica (a URL a hit popped for a client already gone among it), or still in
/// the shared pool. The abandoned calls' URLs land there as a prefetch's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_url_minted_for_a_fleet_ends_in_one_place_while_clients_give_up_at_random() {
    let redis = RedisServer::start();
    let bodies = keys();
    let warm_keys: Vec<Value> = bodies[..2].iter().map(|b| warm(b.clone(), 2)).collect();
    let fleet = spawn_fleet(2, |s| {
        on_redis(redis.url())(s);
        s.redis.timeout_ms = 2_000; // not a degraded-mode test
        s.upstream.timeout_ms = 20_000;
        s.upstream.max_concurrency = 8;
        s.refill.concurrency = 4;
        s.tenants[0].warm = warm_keys.clone();
    })
    .await;
    fleet.all_ready(Duration::from_secs(20)).await;
    fleet
        .sim
        .sim
        .update_knobs(&serde_json::json!({"latency_ms": 60.0, "latency_p99_ms": 250.0}))
        .unwrap();
    let addrs: Vec<String> = fleet.replicas.iter().map(|r| r.addr.to_string()).collect();
    let (received, given_up) = clients_that_give_up_at_random(&addrs, "alpha-key", &bodies).await;
    assert!(given_up > 100, "clients gave up {given_up} times");
    assert!(received.len() > 100, "{} URLs received", received.len());

    let in_redis = || {
        let count = "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
                     n = n + redis.call('ZCARD', k) end return n";
        redis
            .cli(&["EVAL", count, "0", "*}:p3:*"])
            .and_then(|n| n.trim().parse::<f64>().ok())
            .expect("Redis counts its pooled URLs")
    };
    let balance = || async {
        Balance {
            minted: fleet.sim.sim.ledger().issued_total as f64,
            handed_out: fleet
                .metric_total("embedgate_requests_total", "outcome=\"hit\"")
                .await
                + fleet
                    .metric_total("embedgate_requests_total", "outcome=\"miss\"")
                    .await,
            wasted: fleet.metric_total("embedgate_urls_wasted_total", "").await,
            pooled: in_redis() + fleet.metric_sum("embedgate_pool_urls").await,
            in_flight: fleet.metric_sum("embedgate_upstream_in_flight").await,
        }
    };
    assert_every_url_ends_in_one_place(balance, &received, given_up).await;
    let statuses = fleet.redeem(&received).await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every URL received opens"
    );
    let ledger = fleet.sim.sim.ledger();
    assert_eq!((ledger.double_redemptions, ledger.late_redemptions), (0, 0));
    fleet.stop().await;
}
