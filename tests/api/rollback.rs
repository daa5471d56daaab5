//! Exactly once when Redis comes back with an older data set: a restart from a snapshot taken
//! mid-run, a failover to a replica that had stopped replicating, a flush, eviction under a
//! memory limit, failovers behind a name, a Redis Cluster's own failover and a resharding that
//! moves the tenant's slot. Each test drives three replicas, checks that the old data set really
//! held URLs that were handed out after it was copied (so a gateway that trusted it would hand
//! them out twice), and then opens every URL handed out at the simulator: each opens exactly
//! once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;
use crate::helpers::{assert_exactly_once, keys, roomy, spawn_fleet, Outcome, TestFleet};
use crate::redis_server::{RedisCluster, RedisSentinel, RedisServer};
use embedgate::config::Settings;

/// Every URL in the shared pool of this Redis, whatever its epoch.
fn pooled_urls(redis: &RedisServer) -> HashSet<String> {
    let keys = redis
        .cli(&["--scan", "--pattern", "embedgate:{t:*}:p3:*"])
        .unwrap_or_default();
    keys.lines()
        .flat_map(|k| {
            redis
                .cli(&["ZRANGE", k, "0", "-1"])
                .unwrap_or_default()
                .lines()
                // A member is the URL's 16-hex-digit digest, the character of the reason it was
                // fetched for, then the URL.
                .filter_map(|m| m.get(17..).map(String::from))
                .collect::<Vec<_>>()
        })
        .filter(|u| u.starts_with("http"))
        .collect()
}

fn urls(outcomes: &[Outcome]) -> HashSet<String> {
    outcomes
        .iter()
        .filter_map(|o| o.body["EmbedUrl"].as_str().map(String::from))
        .collect()
}

/// Three replicas on `url`, each tenant key kept 16 deep, so the pool always holds URLs.
async fn fleet_on(url: String) -> Arc<TestFleet> {
    fleet_with(on_redis(url)).await
}

/// Three replicas on the Redis `redis` sets, each tenant key kept 16 deep.
async fn fleet_with(redis: impl Fn(&mut Settings) + Send + Sync + 'static) -> Arc<TestFleet> {
    fleet_of(3, redis).await
}

/// `replicas` replicas on the Redis `redis` sets, each tenant key kept 16 deep.
async fn fleet_of(
    replicas: usize,
    redis: impl Fn(&mut Settings) + Send + Sync + 'static,
) -> Arc<TestFleet> {
    Arc::new(
        spawn_fleet(replicas, move |s| {
            roomy(s);
            redis(s);
            s.tenants[0].warm = keys().into_iter().map(|k| warm(k, 16)).collect();
        })
        .await,
    )
}

/// Waits until `cond` holds, for up to 20 s.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let held = eventually(Duration::from_secs(20), || std::future::ready(cond())).await;
    assert!(held, "timed out waiting: {what}");
}

/// The shared checks: the old data set held URLs handed out after it was copied, every URL
/// opens exactly once, and the replicas noticed the new data set.
async fn assert_no_resurrection(
    fleet: Arc<TestFleet>,
    old_set: &HashSet<String>,
    after_copy: &[Outcome],
    all: &[Outcome],
) {
    let resurrectable = old_set.intersection(&urls(after_copy)).count();
    assert!(
        resurrectable > 0,
        "the old data set held URLs handed out after it was copied ({} pooled then)",
        old_set.len()
    );
    assert_exactly_once(&fleet, all).await;
    assert!(
        fleet.metric_sum("embedgate_redis_fences_total").await >= 1.0,
        "the replicas moved to a new fencing epoch"
    );
    eprintln!(
        "{} URLs handed out; {resurrectable} of them were in the data set Redis came back with",
        all.len()
    );
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_from_a_snapshot_taken_mid_run_hands_nothing_out_twice() {
    let mut redis = RedisServer::start();
    let fleet = fleet_on(redis.url()).await;
    let k = keys();
    let mut all = fleet.drive(1_500, 48, &k).await;
    until("the pool is stocked", || pooled_urls(&redis).len() >= 32).await;
    let snapshot = pooled_urls(&redis);
    assert_eq!(redis.cli(&["SAVE"]).as_deref(), Some("OK"));
    let after = fleet.drive(1_500, 48, &k).await;
    // SIGKILL, then a restart that loads the snapshot: the URLs popped since come back.
    redis.kill();
    redis.restart();
    fleet.all_ready(Duration::from_secs(20)).await;
    all.extend(fleet.drive(1_500, 48, &k).await);
    all.extend(after.clone());
    assert_no_resurrection(fleet, &snapshot, &after, &all).await;
}

/// Drives three replicas on `redis`, makes a copy of the data set once the pool is stocked
/// (`copy`), drives them again, writes the copy back into the same running server (`restore`),
/// drives them once more, and makes the shared checks: the process and its replication id never
/// changed, so only the tenant's serial can tell.
async fn copy_written_back_hands_nothing_out_twice<C>(
    redis: &RedisServer,
    copy: impl AsyncFnOnce() -> C,
    restore: impl AsyncFnOnce(C),
) {
    let fleet = fleet_on(redis.url()).await;
    let k = keys();
    let mut all = fleet.drive(1_500, 48, &k).await;
    until("the pool is stocked", || pooled_urls(redis).len() >= 32).await;
    let data_set = (
        redis.info("server", "run_id"),
        redis.info("replication", "master_replid"),
    );
    let snapshot = pooled_urls(redis);
    let copied = copy().await;
    let after = fleet.drive(1_500, 48, &k).await;
    restore(copied).await;
    let same = (
        redis.info("server", "run_id"),
        redis.info("replication", "master_replid"),
    );
    assert_eq!(same, data_set, "the same process and history");
    all.extend(fleet.drive(1_500, 48, &k).await);
    all.extend(after.clone());
    assert_no_resurrection(fleet, &snapshot, &after, &all).await;
}

/// An older dump loaded into the running process (`DEBUG RELOAD` of the file saved before).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_dump_reloaded_into_the_running_redis_hands_nothing_out_twice() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let cli = |args: &[&str]| assert_eq!(redis.cli(args).as_deref(), Some("OK"));
    copy_written_back_hands_nothing_out_twice(
        &redis,
        async || cli(&["SAVE"]),
        async |()| cli(&["DEBUG", "RELOAD", "NOSAVE"]),
    )
    .await;
}

/// An old backup's keys written back into the live server (`RESTORE … REPLACE`, as a migration
/// tool replaying a dump does).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_old_backup_restored_key_by_key_into_the_running_redis_hands_nothing_out_twice() {
    let redis = RedisServer::start();
    copy_written_back_hands_nothing_out_twice(
        &redis,
        async || redis.backup("embedgate:{t:*").await,
        async |copy| redis.restore(copy).await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flushall_mid_run_hands_nothing_out_twice() {
    let redis = RedisServer::start();
    let fleet = fleet_on(redis.url()).await;
    let k = keys();
    let mut all = fleet.drive(1_500, 48, &k).await;
    until("the pool is stocked", || pooled_urls(&redis).len() >= 32).await;
    assert_eq!(redis.cli(&["FLUSHALL"]).as_deref(), Some("OK"));
    all.extend(fleet.drive(1_500, 48, &k).await);
    assert_exactly_once(&fleet, &all).await;
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_under_a_memory_limit_hands_nothing_out_twice() {
    let redis =
        RedisServer::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"]);
    let fleet = fleet_on(redis.url()).await;
    let k = keys();
    let mut all = fleet.drive(1_000, 48, &k).await;
    // Pressure: 12 MB of other keys into a 4 MB Redis, while the fleet keeps going.
    let pressure =
        "for i = 1, 12000 do redis.call('SET', 'junk:' .. i, string.rep('x', 1000)) end return 1";
    let driving = {
        let fleet = fleet.clone();
        let k = k.clone();
        tokio::spawn(async move { fleet.drive(2_000, 48, &k).await })
    };
    for _ in 0..4 {
        redis.cli(&["EVAL", pressure, "0"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    all.extend(driving.await.unwrap());
    all.extend(fleet.drive(1_000, 48, &k).await);
    let evicted: u64 = redis
        .cli(&["INFO", "stats"])
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(evicted > 0, "Redis really evicted keys");
    assert_exactly_once(&fleet, &all).await;
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_to_a_replica_that_stopped_replicating_hands_nothing_out_twice() {
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let endpoint = Endpoint::start(primary.port).await;
    let fleet = fleet_on(format!("redis://127.0.0.1:{}", endpoint.port)).await;
    let k = keys();
    let mut all = fleet.drive(1_500, 48, &k).await;
    until("the pool is stocked", || pooled_urls(&primary).len() >= 32).await;
    replica.caught_up_with(&primary).await;
    // The replica loses its primary (it keeps its data set, which stops moving)…
    let nowhere = free_port(false);
    replica.cli(&["REPLICAOF", "127.0.0.1", &nowhere.port.to_string()]);
    let stale = pooled_urls(&replica);
    // …while the fleet goes on handing out URLs from the primary…
    let after = fleet.drive(1_500, 48, &k).await;
    // …until the primary dies and the replica is promoted behind the same endpoint.
    primary.kill();
    assert_eq!(
        replica.cli(&["REPLICAOF", "NO", "ONE"]).as_deref(),
        Some("OK")
    );
    endpoint.switch(replica.port);
    fleet.all_ready(Duration::from_secs(20)).await;
    all.extend(fleet.drive(1_500, 48, &k).await);
    all.extend(after.clone());
    assert_no_resurrection(fleet, &stale, &after, &all).await;
    drop(endpoint);
}

/// How an old primary leaves when its failover endpoint moves to the promoted replica.
enum OldPrimary {
    /// It stays up as a replica of the new primary, keeping its clients' connections, on which
    /// every write is refused with READONLY.
    Demoted,
    /// Its host is gone without a word (a crash or a partition: no reset ever comes), so those
    /// connections stay open and silent until the kernel gives up on them, about 15 minutes.
    Silent,
}

/// A fleet behind a failover endpoint (ElastiCache's or MemoryDB's primary endpoint, a name a
/// Sentinel setup moves) goes through a failover whose old primary leaves as `old` says: the
/// fleet follows the name to the new primary and rejoins within seconds (it stayed degraded on
/// the old server until restarted, or for the kernel's 15 minutes), and hands nothing out twice.
async fn a_failover_is_followed_to_the_new_primary(old: OldPrimary) {
    let primary = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let endpoint = Endpoint::start(primary.port).await;
    let fleet = fleet_on(format!("redis://127.0.0.1:{}", endpoint.port)).await;
    let k = keys();
    let mut all = fleet.drive(1_000, 48, &k).await;
    replica.caught_up_with(&primary).await;
    if matches!(old, OldPrimary::Silent) {
        endpoint.blackhole_open_connections();
    }
    assert_eq!(
        replica.cli(&["REPLICAOF", "NO", "ONE"]).as_deref(),
        Some("OK")
    );
    if matches!(old, OldPrimary::Demoted) {
        let new = replica.port.to_string();
        assert_eq!(
            primary.cli(&["REPLICAOF", "127.0.0.1", &new]).as_deref(),
            Some("OK")
        );
    }
    endpoint.retarget(replica.port);
    all.extend(fleet.drive(500, 48, &k).await);
    fleet.all_ready(Duration::from_secs(20)).await;
    all.extend(fleet.drive(1_000, 48, &k).await);
    until("the fleet pools in the new primary", || {
        !pooled_urls(&replica).is_empty()
    })
    .await;
    assert_exactly_once(&fleet, &all).await;
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
    drop(endpoint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_behind_a_name_that_leaves_the_old_primary_up_is_followed_to_the_new_one() {
    a_failover_is_followed_to_the_new_primary(OldPrimary::Demoted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_from_a_primary_that_went_silent_is_followed_to_the_new_one() {
    a_failover_is_followed_to_the_new_primary(OldPrimary::Silent).await;
}

/// Why a Sentinel fails the primary over.
enum SentinelFailover {
    /// The primary crashed.
    Crash,
    /// The primary crashed, and the fleet cannot hear the Sentinel's announcements (its user may
    /// not `SUBSCRIBE`): only a failed heartbeat's lookup finds the promoted replica.
    CrashUnheard,
    /// The primary's host went silent; the first Sentinel listed is a host that takes
    /// connections and never answers (a Sentinel on a hung machine).
    Silence,
    /// An operator's failover (`SENTINEL FAILOVER`, for maintenance): the old primary stays up
    /// as a replica of the new one and refuses every write (`READONLY`).
    Manual,
    /// An operator's failover whose old primary the Sentinel cannot make a replica (as when it
    /// is cut off from the Sentinels but not from the fleet): it stays a primary and takes every
    /// write, so only the Sentinel's announcement tells the fleet to move.
    Stranded,
}

/// A fleet on Redis Sentinel (`redis.sentinel_urls`) goes through a failover and the Sentinel
/// promotes the replica, at another address. The fleet follows the Sentinel's announcement, or
/// asks the Sentinels when its heartbeat fails, to the promoted replica and shares again within
/// seconds (a new epoch there: it is another process), and hands nothing out twice.
async fn a_sentinel_failover_is_followed_to_the_promoted_replica(failure: SentinelFailover) {
    let stranded = matches!(failure, SentinelFailover::Stranded);
    let mut primary = if stranded {
        RedisServer::start_with(&[
            "--rename-command",
            "REPLICAOF",
            "",
            "--rename-command",
            "SLAVEOF",
            "",
        ])
    } else {
        RedisServer::start()
    };
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let sentinel = if matches!(failure, SentinelFailover::CrashUnheard) {
        RedisSentinel::start_unheard(primary.port)
    } else {
        RedisSentinel::start(primary.port)
    };
    // Connections to it are taken by the kernel and never read.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut sentinels = vec![sentinel.url()];
    let silent_sentinel = matches!(failure, SentinelFailover::Silence);
    if silent_sentinel {
        sentinels.insert(0, format!("redis://{}", hung.local_addr().unwrap()));
    }
    let on = on_sentinels(sentinels, "mymaster");
    let fleet = fleet_with(move |s| {
        on(s);
        if silent_sentinel {
            // The default: a lookup may take 0.5 s, as long as the client library waits on the
            // hung Sentinel's answer before giving up on it. Asked one after the other, the
            // Sentinels would never name the primary in time.
            s.redis.timeout_ms = 50;
        }
    })
    .await;
    let k = keys();
    let mut all = fleet.drive(1_000, 48, &k).await;
    until("the fleet pools in the primary", || {
        !pooled_urls(&primary).is_empty()
    })
    .await;
    replica.caught_up_with(&primary).await;
    let fences = fleet.metric_sum("embedgate_redis_fences_total").await;
    match failure {
        SentinelFailover::Crash | SentinelFailover::CrashUnheard => primary.kill(),
        SentinelFailover::Silence => primary.freeze(),
        SentinelFailover::Manual | SentinelFailover::Stranded => {
            assert!(sentinel.fail_over(), "the Sentinel fails over");
        }
    }
    all.extend(fleet.drive(500, 48, &k).await);
    until("the Sentinel promoted the replica", || {
        sentinel.primary_port() == Some(replica.port)
    })
    .await;
    if stranded {
        assert_eq!(
            primary.info("replication", "role").as_deref(),
            Some("master"),
            "the old primary is still a primary"
        );
    }
    fleet.all_ready(Duration::from_secs(20)).await;
    all.extend(fleet.drive(1_000, 48, &k).await);
    let fleet = assert_shares_again_at(fleet, &replica, all).await;
    assert!(
        fleet.metric_sum("embedgate_redis_fences_total").await > fences,
        "the replicas moved to a new fencing epoch on the promoted replica"
    );
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
    drop(hung);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_after_the_primary_crashed_is_followed_to_the_promoted_replica() {
    a_sentinel_failover_is_followed_to_the_promoted_replica(SentinelFailover::Crash).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unheard_sentinel_failover_is_followed_on_a_failed_heartbeat() {
    a_sentinel_failover_is_followed_to_the_promoted_replica(SentinelFailover::CrashUnheard).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_after_the_primary_went_silent_is_followed_past_a_hung_sentinel() {
    a_sentinel_failover_is_followed_to_the_promoted_replica(SentinelFailover::Silence).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_that_leaves_the_old_primary_up_is_followed_to_the_new_one() {
    a_sentinel_failover_is_followed_to_the_promoted_replica(SentinelFailover::Manual).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_whose_old_primary_stays_a_primary_is_followed_on_the_announcement() {
    a_sentinel_failover_is_followed_to_the_promoted_replica(SentinelFailover::Stranded).await;
}

/// How a Redis Cluster primary fails.
enum Failure {
    /// It crashes: its clients' connections are reset.
    Crash,
    /// Its host goes silent (a partition, a hung machine): the connections stay open and
    /// nothing answers on them.
    Silence,
}

/// On a Redis Cluster whose primaries each have a replica, the primary holding the tenant's pool
/// fails and its replica takes over (the cluster's own failover, as ElastiCache's cluster mode
/// and MemoryDB do it): the fleet finds the new primary and rejoins within seconds, and hands
/// nothing out twice (the promoted replica is another process: a new epoch).
///
/// With `heartbeat_elsewhere`, the fleet's heartbeat key lives on another primary, which stays
/// up: the heartbeat goes on succeeding while every call for the tenant fails.
async fn a_cluster_failover_is_followed_to_the_promoted_replica(
    failure: Failure,
    heartbeat_elsewhere: bool,
) {
    let mut cluster = RedisCluster::start_replicated(3);
    let urls = cluster.urls();
    let fleet = fleet_with(move |s| s.redis.cluster_urls = urls.clone()).await;
    let k = keys();
    let mut all = fleet.drive(1_000, 48, &k).await;
    let tenant_key = "embedgate:{t:alpha}:fence";
    let old = cluster
        .primary_of(tenant_key)
        .expect("a primary holds the tenant's slot");
    if heartbeat_elsewhere {
        let heartbeat = cluster.slot_of("embedgate:{replicas}");
        let other = cluster.primaries().into_iter().find(|&n| n != old).unwrap();
        cluster.move_slot(&heartbeat, old, other);
        assert_eq!(cluster.primary_of("embedgate:{replicas}"), Some(other));
    }
    let fences = fleet.metric_sum("embedgate_redis_fences_total").await;
    match failure {
        Failure::Crash => cluster.nodes[old].kill(),
        Failure::Silence => cluster.nodes[old].freeze(),
    }
    all.extend(fleet.drive(500, 48, &k).await);
    until("a replica took over the tenant's slot", || {
        cluster.primary_of(tenant_key).is_some_and(|n| n != old)
    })
    .await;
    fleet.all_ready(Duration::from_secs(20)).await;
    all.extend(fleet.drive(1_000, 48, &k).await);
    let new = cluster.primary_of(tenant_key).unwrap();
    let fleet = assert_shares_again_at(fleet, &cluster.nodes[new], all).await;
    // Once sharing steadily, the fleet has called the promoted replica: a new epoch. (Right
    // after a quick round of requests served locally it may not have yet.)
    assert!(
        fleet.metric_sum("embedgate_redis_fences_total").await > fences,
        "the replicas moved to a new fencing epoch on the promoted replica"
    );
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

/// The checks after a Cluster event: the fleet pools at `node` (the tenant's primary now), every
/// replica shares, and every URL opens exactly once; the fleet is left running.
async fn assert_shares_again_at(
    fleet: Arc<TestFleet>,
    node: &RedisServer,
    mut all: Vec<Outcome>,
) -> Arc<TestFleet> {
    until("the fleet pools in the tenant's new primary", || {
        !pooled_urls(node).is_empty()
    })
    .await;
    all.extend(shares_steadily(&fleet).await);
    assert_exactly_once(&fleet, &all).await;
    fleet
}

/// Requests flow through every replica, in rounds, until all of them have stayed sharing
/// through a whole second of requests, for up to 20 s; returns the outcomes. A connection that
/// fails every call for the tenant's slot sends its replica back to the local pool at its first
/// request after each rejoin, so such a replica never lets a second pass; a busy machine's slow
/// call starts a spell only now and then (a single reading of the replicas' state could meet
/// one, with nothing wrong).
async fn shares_steadily(fleet: &Arc<TestFleet>) -> Vec<Outcome> {
    let k = keys();
    let mut outcomes = vec![];
    let mut steady_since: Option<std::time::Instant> = None;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        outcomes.extend(fleet.drive(60, 12, &k).await);
        if fleet.metric_sum("embedgate_redis_degraded").await == 0.0 {
            let since = *steady_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= Duration::from_secs(1) {
                return outcomes;
            }
        } else {
            steady_since = None;
        }
    }
    panic!("the replicas never stayed sharing through a second of requests in 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_failover_after_a_primary_crashed_is_followed_to_the_promoted_replica() {
    a_cluster_failover_is_followed_to_the_promoted_replica(Failure::Crash, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_failover_after_a_primary_went_silent_is_followed_to_the_promoted_replica() {
    a_cluster_failover_is_followed_to_the_promoted_replica(Failure::Silence, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_failover_of_the_tenants_primary_alone_is_followed_to_the_promoted_replica() {
    a_cluster_failover_is_followed_to_the_promoted_replica(Failure::Crash, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_failover_after_the_tenants_primary_alone_went_silent_is_followed() {
    a_cluster_failover_is_followed_to_the_promoted_replica(Failure::Silence, true).await;
}

/// An online resharding (ElastiCache's, or `redis-cli --cluster reshard`) moves the tenant's slot
/// to another primary while the fleet hands out URLs: calls meet `ASK` and `TRYAGAIN` while the
/// slot's keys are split between the two, the moved keys arrive at a server of another `run_id`
/// (a new epoch: what was pooled is abandoned, never read twice), and the fleet goes on sharing
/// on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resharding_that_moves_the_tenants_slot_mid_run_hands_nothing_out_twice() {
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    let fleet = fleet_with(move |s| s.redis.cluster_urls = urls.clone()).await;
    let k = keys();
    let mut all = fleet.drive(1_000, 48, &k).await;
    let tenant_key = "embedgate:{t:alpha}:fence";
    let from = cluster
        .primary_of(tenant_key)
        .expect("a primary holds the tenant's slot");
    let to = (from + 1) % cluster.nodes.len();
    let slot = cluster.slot_of(tenant_key);
    cluster.start_moving(&slot, from, to);
    all.extend(fleet.drive(300, 48, &k).await);
    // A few keys at a time, with traffic between, so calls meet the slot split every way.
    let mut moved = 0;
    loop {
        let n = cluster.migrate_keys(&slot, from, to, 3);
        moved += n;
        all.extend(fleet.drive(100, 48, &k).await);
        if n == 0 {
            break;
        }
    }
    cluster.finish_moving(&slot, to);
    assert!(moved > 0, "the tenant's keys moved");
    assert_eq!(cluster.primary_of(tenant_key), Some(to), "the slot moved");
    fleet.all_ready(Duration::from_secs(20)).await;
    all.extend(fleet.drive(1_000, 48, &k).await);
    eprintln!(
        "{} URLs handed out across the move of {moved} keys",
        all.len()
    );
    let fleet = assert_shares_again_at(fleet, &cluster.nodes[to], all).await;
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

/// A Redis out of memory that evicts nothing (`noeviction`, the policy when none is set) refuses
/// every pool, limiter and fence script with `OOM`: the replicas serve on their own meanwhile,
/// every answer a 200, and rejoin when its limit is raised, and nothing is handed out twice:
/// `functions` false has the scripts run as scripts (a Redis whose ACL denies FUNCTION), which
/// run until their first write and fail there.
async fn a_full_redis_that_evicts_nothing(functions: bool) {
    let mut args = vec!["--maxmemory-policy", "noeviction"];
    let login = ["--user", "app", "on", ">pw", "~*", "&*", "+@all"];
    args.extend(login);
    if !functions {
        args.push("-function");
    }
    let redis = RedisServer::start_with(&args);
    let fleet = fleet_on(format!("redis://app:pw@127.0.0.1:{}", redis.port)).await;
    let k = keys();
    let mut all = fleet.drive(1_000, 48, &k).await;
    until("the pool is stocked", || pooled_urls(&redis).len() >= 32).await;
    let used: u64 = redis
        .info("memory", "used_memory")
        .and_then(|n| n.parse().ok())
        .expect("INFO memory");
    let limit = (used / 2).to_string();
    assert_eq!(
        redis
            .cli(&["CONFIG", "SET", "maxmemory", &limit])
            .as_deref(),
        Some("OK")
    );
    all.extend(fleet.drive(1_500, 48, &k).await);
    for i in 0..3 {
        assert_eq!(
            fleet.readiness(i).await,
            "degraded",
            "replica {i} met the full Redis"
        );
    }
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "maxmemory", "0"]).as_deref(),
        Some("OK")
    );
    rejoined_exactly_once(fleet, all, 1_000).await;
}

/// Waits until every replica shares again, has them hand out `requests` more URLs, and checks
/// that each of `all` and those opens exactly once.
async fn rejoined_exactly_once(fleet: Arc<TestFleet>, mut all: Vec<Outcome>, requests: usize) {
    fleet.all_ready(Duration::from_secs(20)).await;
    all.extend(fleet.drive(requests, 48, &keys()).await);
    assert_exactly_once(&fleet, &all).await;
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_redis_that_evicts_nothing_is_served_around_and_rejoined() {
    a_full_redis_that_evicts_nothing(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_redis_that_evicts_nothing_is_served_around_and_rejoined_by_scripts() {
    a_full_redis_that_evicts_nothing(false).await;
}

/// A managed Redis pauses its clients' writes for a moment in maintenance and failovers
/// (`CLIENT PAUSE … WRITE`): reads and pings go on while every pool, limiter and fence script
/// waits. The replicas' calls time out and they serve on their own, a call they gave up on may
/// still run when the pause ends (a put lands a URL its replica dropped, a take pops one nobody
/// gets), and nothing is handed out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pause_of_writes_mid_run_hands_nothing_out_twice() {
    let redis = RedisServer::start();
    let fleet = fleet_on(redis.url()).await;
    let k = keys();
    let mut all = fleet.drive(1_000, 48, &k).await;
    until("the pool is stocked", || pooled_urls(&redis).len() >= 32).await;
    // Longer than `redis.timeout_ms` (2 s here), so that calls are given up on and run later.
    let paused = redis.cli(&["CLIENT", "PAUSE", "5000", "WRITE"]);
    assert_eq!(paused.as_deref(), Some("OK"));
    all.extend(fleet.drive(3_000, 48, &k).await);
    assert!(
        fleet.metric_total("embedgate_redis_errors_total", "").await > 0.0,
        "the replicas' calls met the pause"
    );
    rejoined_exactly_once(fleet, all, 1_000).await;
}

/// A put whose answer never comes back (the write ran, the reply was lost) may have pooled its
/// URL in Redis, where a later take finds it: the replica drops such a URL as waste
/// (`unconfirmed`) and never keeps it in its own pool, which would hand it out a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_url_whose_put_went_unanswered_is_never_kept_locally() {
    let redis = RedisServer::start();
    let endpoint = Endpoint::start(redis.port).await;
    let url = format!("redis://127.0.0.1:{}", endpoint.port);
    let fleet = fleet_of(1, on_redis(url)).await;
    let k = keys();
    until("the pool is stocked", || redis.shared_stock("alpha") >= 32).await;
    // Refills under way when the answers stop: QuickSight answers them later, and their puts
    // run in Redis unanswered.
    let sim = &fleet.sim.sim;
    sim.update_knobs(&serde_json::json!({"latency_ms": 500}))
        .unwrap();
    let mut all = fleet.drive(200, 16, &k).await;
    // On a busy machine the refills can all have landed by the time the drive returns, and then
    // no put is left to go unanswered: take a few more URLs until a refill is seen in flight
    // (QuickSight now holds each for a second, well within the 2 s Redis timeout that would make
    // the replica stop putting), and stop the answers then. The stock is counted before they
    // stop, so that a put landing at once counts; if the refills landed, answered, in between,
    // the answers come back and the replica gets another try once it shares again.
    sim.update_knobs(&serde_json::json!({"latency_ms": 1000}))
        .unwrap();
    let mut unanswered = false;
    for _ in 0..10 {
        fleet.all_ready(Duration::from_secs(20)).await;
        all.extend(fleet.drive(8, 8, &k).await);
        let refilling = eventually(Duration::from_millis(500), || async {
            fleet.metric(0, "embedgate_upstream_in_flight").await >= 1.0
        })
        .await;
        if !refilling {
            continue;
        }
        let stocked = redis.shared_stock("alpha");
        endpoint.lose_replies(true);
        unanswered = eventually(Duration::from_secs(3), || {
            std::future::ready(redis.shared_stock("alpha") > stocked)
        })
        .await;
        if unanswered {
            break;
        }
        endpoint.lose_replies(false);
    }
    assert!(unanswered, "unanswered puts pooled URLs in Redis");
    all.extend(fleet.drive(100, 16, &k).await);
    // Each is counted when its call times out (`redis.timeout_ms` after it was sent).
    let counted = eventually(Duration::from_secs(20), || async {
        fleet
            .metric_total("embedgate_urls_wasted_total", "reason=\"unconfirmed\"")
            .await
            > 0.0
    })
    .await;
    assert!(counted, "the unanswered puts were counted as waste");
    endpoint.lose_replies(false);
    sim.update_knobs(&serde_json::json!({"latency_ms": 0}))
        .unwrap();
    // Enough to take every URL pooled here and in Redis, several times over.
    rejoined_exactly_once(fleet, all, 3_000).await;
}

const CANCELLED: &str = "reason=\"cancelled\"";

/// The URLs the shared pool held (`before`) that are neither pooled now nor among `handed` were
/// popped for nobody: each lands in the replica's own pool for its key, and the next requests
/// for the keys are handed them (none counted as waste, none lost). Returns those requests'
/// outcomes, for the exactly-once check.
async fn assert_popped_for_nobody_handed_out_next(
    fleet: &Arc<TestFleet>,
    redis: &RedisServer,
    before: &HashSet<String>,
    handed: &[Outcome],
    cancelled_before: f64,
) -> Vec<Outcome> {
    let handed = urls(handed);
    let popped = || {
        let now = pooled_urls(redis);
        before
            .iter()
            .filter(|u| !now.contains(*u) && !handed.contains(*u))
            .collect::<HashSet<_>>()
    };
    // The calls given up on run together as the pause ends.
    until("calls popped URLs for nobody", || !popped().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.all_ready(Duration::from_secs(20)).await;
    let popped = popped();
    let mut next = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        next.extend(fleet.drive(8, 4, &keys()).await);
        let given = urls(&next);
        let waiting = popped.iter().filter(|u| !given.contains(**u)).count();
        if waiting == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{waiting} of the {} URLs popped for nobody were not handed out next",
            popped.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counted = fleet
        .metric_total("embedgate_urls_wasted_total", CANCELLED)
        .await
        - cancelled_before;
    assert_eq!(counted, 0.0, "no URL popped for nobody is counted as waste");
    next
}

/// One replica whose shared pool is stocked: the Redis, the fleet, the URLs pooled and the URLs
/// counted as `cancelled` waste so far.
async fn one_replica_stocked() -> (RedisServer, Arc<TestFleet>, HashSet<String>, f64) {
    let redis = RedisServer::start();
    let fleet = fleet_of(1, on_redis(redis.url())).await;
    let (before, cancelled) = stocked(&fleet, &redis).await;
    (redis, fleet, before, cancelled)
}

/// Waits until `redis` (the server holding the tenant's keys) pools 60 URLs; returns them and
/// the URLs counted as `cancelled` waste so far.
async fn stocked(fleet: &TestFleet, redis: &RedisServer) -> (HashSet<String>, f64) {
    until("the pool is stocked", || pooled_urls(redis).len() >= 60).await;
    let before = pooled_urls(redis);
    let cancelled = fleet
        .metric_total("embedgate_urls_wasted_total", CANCELLED)
        .await;
    (before, cancelled)
}

/// A take or hit that Redis runs after the replica gave up on it (the command timed out while
/// a managed Redis paused its clients' writes) pops a URL nobody is handed: the replica keeps
/// waiting for the late reply and lands the URL in its own pool, where the next request for its
/// key takes it, instead of losing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_url_popped_by_a_call_given_up_on_goes_to_the_next_request_for_its_key() {
    let (redis, fleet, before, cancelled) = one_replica_stocked().await;
    calls_given_up_on_land_what_they_popped(fleet, &redis, before, cancelled).await;
}

/// The same on a Redis Cluster, whose client gives the reply up at the timeout: the replica
/// reads the call's answer, which Redis keeps under the call's id for a re-send, once the call
/// has run, and lands the URL it popped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_redis_cluster_a_url_popped_by_a_call_given_up_on_goes_to_the_next_request_for_its_key(
) {
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    let fleet = fleet_of(1, move |s| s.redis.cluster_urls = urls.clone()).await;
    let primary = cluster
        .primary_of("embedgate:{t:alpha}:fence")
        .expect("a primary holds the tenant's slot");
    let redis = &cluster.nodes[primary];
    let (before, cancelled) = stocked(&fleet, redis).await;
    calls_given_up_on_land_what_they_popped(fleet, redis, before, cancelled).await;
}

/// Pauses `redis`'s writes past the replicas' timeout while hits are sent: each URL the hits
/// given up on popped when the pause ended goes to a later request for its key, and nothing is
/// handed out twice.
async fn calls_given_up_on_land_what_they_popped(
    fleet: Arc<TestFleet>,
    redis: &RedisServer,
    before: HashSet<String>,
    cancelled: f64,
) {
    // Longer than `redis.timeout_ms` (2 s): the hits in flight are given up on and run later.
    let paused = redis.cli(&["CLIENT", "PAUSE", "3000", "WRITE"]);
    assert_eq!(paused.as_deref(), Some("OK"));
    let handed = fleet.drive(32, 16, &keys()).await;
    assert!(
        fleet.metric_total("embedgate_redis_errors_total", "").await > 0.0,
        "the hits timed out"
    );
    let mut all = handed.clone();
    all.extend(
        assert_popped_for_nobody_handed_out_next(&fleet, redis, &before, &handed, cancelled).await,
    );
    rejoined_exactly_once(fleet, all, 200).await;
}

/// A hit whose client resets the connection while Redis holds the call (actix-web drops the
/// request's handler) pops a URL nobody is handed: it goes to the next request for its key, as
/// on a single node, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_url_popped_for_a_request_whose_client_reset_the_connection_goes_to_the_next_request_for_its_key(
) {
    use tokio::io::AsyncWriteExt;
    let (redis, fleet, before, cancelled) = one_replica_stocked().await;
    // Shorter than `redis.timeout_ms` (2 s): the hit waits, and its request is dropped (its
    // client resets the connection) well before the call could time out.
    let paused = redis.cli(&["CLIENT", "PAUSE", "1500", "WRITE"]);
    assert_eq!(paused.as_deref(), Some("OK"));
    let request = native_request("alpha-key", &keys()[0].to_string());
    let mut stream = tokio::net::TcpStream::connect(fleet.replicas[0].addr)
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stream.set_zero_linger().unwrap();
    drop(stream);
    let dropped = fleet
        .metric_reaches(
            0,
            "embedgate_requests_total{outcome=\"cancelled\",protocol=\"native\",tenant=\"alpha\"}",
            1.0,
        )
        .await;
    assert!(dropped, "the request was dropped while Redis held its hit");
    let next =
        assert_popped_for_nobody_handed_out_next(&fleet, &redis, &before, &[], cancelled).await;
    rejoined_exactly_once(fleet, next, 200).await;
}
