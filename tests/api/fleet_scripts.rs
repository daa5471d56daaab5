//! The cluster-mode Lua scripts on their own, against a real `redis-server`, through `Fleet` with
//! a clock the test moves: the tenant's count cannot drift, a retried put counts once, and the
//! fence moves to a new epoch when the data set changes under it. (The clock offset check runs
//! only in heartbeats, which these tests call only before moving the clock.)

use std::sync::Arc;
use std::time::Duration;

use embedgate::clock::Clock;
use embedgate::cluster::{Down, Fleet, Stored};
use embedgate::config::RedisSettings;
use embedgate::limiter::Inbound;
use embedgate::metrics::{Fetch, Metrics};
use embedgate::pool::{pool_key, PoolKey, PooledUrl};
use embedgate::tenant::{Tenant, Tenants};

use crate::helpers::*;
use crate::redis_server::{RedisCluster, RedisServer};

const MIN_REMAINING_MS: u64 = 60_000;

/// A Redis user `scripts` (password `pw`) whose ACL refuses `FUNCTION`, as Redis 6 has none: the
/// pool scripts reach it as scripts.
const NO_FUNCTIONS: [&str; 8] = [
    "--user",
    "scripts",
    "on",
    ">pw",
    "~*",
    "&*",
    "+@all",
    "-function",
];

async fn fleet(redis: &RedisServer, clock: &Clock) -> (Arc<Fleet>, Tenants, Arc<Metrics>) {
    fleet_with(redis, clock, |_| {}).await
}

/// [`fleet`] with the one tenant `t` (3 pooled URLs at most) customised.
async fn fleet_with(
    redis: &RedisServer,
    clock: &Clock,
    customize: impl FnOnce(&mut embedgate::config::TenantSettings),
) -> (Arc<Fleet>, Tenants, Arc<Metrics>) {
    let settings = RedisSettings {
        url: Some(redis.url()),
        ..RedisSettings::default()
    };
    fleet_on(settings, clock, customize).await
}

/// [`fleet`] on a Redis Cluster, whose connection sends a command again after a broken one.
async fn fleet_on_cluster(
    cluster: &RedisCluster,
    clock: &Clock,
) -> (Arc<Fleet>, Tenants, Arc<Metrics>) {
    let settings = RedisSettings {
        cluster_urls: cluster.urls(),
        ..RedisSettings::default()
    };
    fleet_on(settings, clock, |_| {}).await
}

/// [`fleet`] on the Redis at `url` (another user's login, say).
async fn fleet_at(url: String, clock: &Clock) -> (Arc<Fleet>, Tenants, Arc<Metrics>) {
    let settings = RedisSettings {
        url: Some(url),
        ..RedisSettings::default()
    };
    fleet_on(settings, clock, |_| {}).await
}

/// [`fleet_with`] on the Redis that `target` names.
async fn fleet_on(
    target: RedisSettings,
    clock: &Clock,
    customize: impl FnOnce(&mut embedgate::config::TenantSettings),
) -> (Arc<Fleet>, Tenants, Arc<Metrics>) {
    let settings = RedisSettings {
        timeout_ms: 2_000,
        ..target
    };
    let metrics = Arc::new(Metrics::new());
    let mut t = tenant("t", "t-key");
    t.max_pooled_urls = 3;
    customize(&mut t);
    let tenants = Tenants::new(&[t]);
    let fleet = Fleet::connect(&settings, 1, clock.clone(), metrics.clone())
        .await
        .unwrap();
    (fleet, tenants, metrics)
}

fn key(i: usize) -> PoolKey {
    let body = dash(&format!("d-{i:04}"), "alice");
    let req = embedgate::model::parse_request(
        embedgate::model::Operation::GetDashboardEmbedUrl,
        body.to_string().as_bytes(),
    )
    .unwrap();
    pool_key("t", "us-east-1", &req)
}

fn url(i: usize, issued_at_ms: u64) -> PooledUrl {
    PooledUrl {
        url: format!("https://example.test/embed/{i:032x}/dashboards/d?code=c{i}"),
        issued_at_ms,
        anonymous_user_arn: None,
        fetched_for: Fetch::Prefetch,
    }
}

async fn put(f: &Fleet, tenants: &Tenants, k: &PoolKey, u: &PooledUrl, now: u64) -> Stored {
    f.put(tenants.get(0), k, u, now, MIN_REMAINING_MS, 10, false)
        .await
        .unwrap()
}

/// One fleet take of a URL for `k` at `now`; Redis must answer.
async fn take(f: &Fleet, t: &Tenant, k: &PoolKey, now: u64) -> Option<PooledUrl> {
    f.take(t, k, now, MIN_REMAINING_MS).await.unwrap()
}

/// One fleet hit (inbound limit and take in one call) on `k` at `now`, sent once under `id`.
async fn hit(
    f: &Fleet,
    t: &Tenant,
    k: &PoolKey,
    now: u64,
    id: &str,
) -> (Inbound, Option<PooledUrl>) {
    f.inbound_take_once(t, k, now, MIN_REMAINING_MS, id)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_tenant_count_follows_its_urls_out_by_time_whatever_happens_to_their_keys() {
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let (f, tenants, metrics) = fleet(&redis, &clock).await;
    let now = clock.now_ms();
    let reasons = [Fetch::Follower, Fetch::Returning, Fetch::First];
    for (i, fetched_for) in reasons.into_iter().enumerate() {
        let u = PooledUrl {
            fetched_for,
            ..url(i, now)
        };
        assert_eq!(put(&f, &tenants, &key(i), &u, now).await, Stored::Yes);
    }
    assert_eq!(
        put(&f, &tenants, &key(3), &url(3, now), now).await,
        Stored::Full,
        "the tenant's bound of 3 holds across keys"
    );
    // One key disappears with its URL inside (as a key does when Redis expires or evicts it).
    let pool_keys = redis
        .cli(&["--scan", "--pattern", "embedgate:{t:t}:p3:*"])
        .unwrap();
    let first = pool_keys.lines().next().unwrap();
    redis.cli(&["DEL", first]);
    // Nothing touches the other keys; once their URLs are past their usable life the tenant
    // has room again. (A counter that only a take or a purge decrements never gets there.)
    clock.advance(300_000 - MIN_REMAINING_MS + 1);
    let later = clock.now_ms();
    assert_eq!(
        put(&f, &tenants, &key(4), &url(4, later), later).await,
        Stored::Yes
    );
    // Each of the three expired unused, the one whose key vanished too, and each counts once,
    // under the reason it was fetched for: a later purge of a key that still holds its stale
    // URL adds nothing.
    let expired = || {
        Fetch::ALL.map(|f| {
            metrics
                .wasted
                .with_label_values(&["expired", f.as_str()])
                .get()
        })
    };
    let each_once = Fetch::ALL.map(|f| u64::from(reasons.contains(&f)));
    assert_eq!(expired(), each_once);
    for i in 0..3 {
        let (_, got) = hit(&f, tenants.get(0), &key(i), later, &format!("h{i}")).await;
        assert!(got.is_none(), "a stale URL is never handed out");
    }
    assert_eq!(expired(), each_once);
}

#[tokio::test]
async fn a_put_sent_twice_counts_once_and_its_url_is_taken_once() {
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let (f, tenants, _) = fleet(&redis, &clock).await;
    let now = clock.now_ms();
    let u = url(7, now);
    assert_eq!(put(&f, &tenants, &key(7), &u, now).await, Stored::Yes);
    assert_eq!(put(&f, &tenants, &key(7), &u, now).await, Stored::Yes);
    let t = tenants.get(0);
    let got = take(&f, t, &key(7), now).await;
    assert_eq!(got.map(|g| g.url), Some(u.url));
    assert!(take(&f, t, &key(7), now).await.is_none());
    // The count is empty again: three more fit under the bound of 3.
    for i in 10..13 {
        assert_eq!(
            put(&f, &tenants, &key(i), &url(i, now), now).await,
            Stored::Yes
        );
    }
}

/// A Redis Cluster connection sends a command again when its answer does not come in time, and
/// the first send may have run: a put can run twice, and between the two runs another replica
/// can take its URL and hand it out. The second run must not pool the URL again, or it is
/// handed out twice (a Cluster chaos run handed one URL of its million out twice; this is the
/// one path found that does that).
#[tokio::test]
async fn a_put_sent_again_after_its_url_was_taken_does_not_pool_it_again() {
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let (f, tenants, _) = fleet(&redis, &clock).await;
    let now = clock.now_ms();
    let t = tenants.get(0);
    let u = url(7, now);
    assert_eq!(put(&f, &tenants, &key(7), &u, now).await, Stored::Yes);
    let taken = take(&f, t, &key(7), now).await;
    assert_eq!(taken.map(|g| g.url), Some(u.url.clone()));
    assert_eq!(
        put(&f, &tenants, &key(7), &u, now).await,
        Stored::Yes,
        "the put sent again answers as the first did"
    );
    assert!(
        take(&f, t, &key(7), now).await.is_none(),
        "a URL handed out is never pooled again"
    );
    // Another URL for the same key is pooled as usual.
    assert_eq!(
        put(&f, &tenants, &key(7), &url(8, now), now).await,
        Stored::Yes
    );
    let next = take(&f, t, &key(7), now).await;
    assert_eq!(next.map(|g| g.url), Some(url(8, now).url));
}

/// A put sent in the epoch the replica knows that meets a new one is dropped as of unknown
/// outcome, not sent again in the new epoch (`Fleet::put`). On a Redis Cluster the answer naming
/// the new epoch may be a re-send's, from the server that took the tenant's slot over, while the
/// first send pooled the URL on the old server: pooled in the new epoch as well, the URL would
/// be in two pools, and the old server, resuming with its data, would hand it out again. (A
/// fresh replica's first put, sent in no epoch, ran nowhere and is sent again.)
#[tokio::test]
async fn a_put_that_meets_a_new_epoch_is_dropped_not_pooled_in_it() {
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let (f, tenants, _) = fleet(&redis, &clock).await;
    let now = clock.now_ms();
    let t = tenants.get(0);
    assert_eq!(
        put(&f, &tenants, &key(1), &url(1, now), now).await,
        Stored::Yes,
        "the first put learns the epoch and is stored in it"
    );
    // The tenant's data set is now another server's: its fence names another run_id.
    assert_eq!(
        redis
            .cli(&[
                "SET",
                "embedgate:{t:t}:f2",
                "0123456789abcdef:0123456789abcdef"
            ])
            .as_deref(),
        Some("OK")
    );
    let second = f
        .put(t, &key(2), &url(2, now), now, MIN_REMAINING_MS, 10, false)
        .await;
    assert!(
        matches!(second, Err(Down::Unknown)),
        "a put that met a new epoch is of unknown outcome: {second:?}"
    );
    assert!(
        take(&f, t, &key(2), now).await.is_none(),
        "nothing was pooled in the new epoch"
    );
    assert_eq!(
        put(&f, &tenants, &key(3), &url(3, now), now).await,
        Stored::Yes,
        "the next put, in the epoch now known, is stored"
    );
    let taken = take(&f, t, &key(3), now).await;
    assert_eq!(taken.map(|u| u.url), Some(url(3, now).url));
}

#[tokio::test]
async fn a_restart_from_a_snapshot_moves_the_fence_and_nothing_pooled_before_comes_back() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    restart_from_a_snapshot_hands_nothing_out_again(&mut redis, url).await;
}

/// A server started with `DEBUG` allowed (`DEBUG RELOAD` loads its dump file into the running
/// process), with `extra` arguments.
fn debuggable(extra: &[&str]) -> RedisServer {
    RedisServer::start_with(&[&["--enable-debug-command", "yes"][..], extra].concat())
}

/// An older dump loaded into the process that handed the URL out (`DEBUG RELOAD` of the file
/// saved before the take): the same `run_id` and replication id, but the tenant's serial went
/// back with the data. (Before the serial, the URL was handed out again.)
#[tokio::test]
async fn an_older_dump_loaded_into_the_same_process_hands_nothing_out_again() {
    let redis = debuggable(&[]);
    older_dump_hands_nothing_out_again(&redis, redis.url()).await;
}

/// The same with the scripts in their script form.
#[tokio::test]
async fn where_redis_refuses_functions_an_older_dump_hands_nothing_out_again() {
    let redis = debuggable(&NO_FUNCTIONS);
    let at = format!("redis://scripts:pw@127.0.0.1:{}", redis.port);
    older_dump_hands_nothing_out_again(&redis, at).await;
}

async fn older_dump_hands_nothing_out_again(redis: &RedisServer, at: String) {
    let clock = Clock::manual();
    let (f, tenants, metrics) = fleet_at(at, &clock).await;
    let now = clock.now_ms();
    let t = tenants.get(0);
    let first = saved_then_taken(redis, &f, &tenants, now).await;
    assert_eq!(
        redis.cli(&["DEBUG", "RELOAD", "NOSAVE"]).as_deref(),
        Some("OK")
    );
    assert_eq!(
        redis
            .cli(&["ZCARD", &redis_key_like(redis, ":p3:")])
            .as_deref(),
        Some("2"),
        "the dump brought the URL back"
    );
    let again = take(&f, t, &key(1), now).await;
    assert!(
        again.is_none(),
        "nothing pooled before the reload is handed out again: {again:?} (first {})",
        first.url
    );
    assert_eq!(metrics.redis_fences.get(), 1);
}

/// Pools two URLs for `key(1)`, saves the dump, then takes the first: the URL the dump still
/// holds and must never be handed out again.
async fn saved_then_taken(
    redis: &RedisServer,
    f: &Fleet,
    tenants: &Tenants,
    now: u64,
) -> PooledUrl {
    for i in 1..=2 {
        let u = url(i, now + i as u64);
        assert_eq!(put(f, tenants, &key(1), &u, now).await, Stored::Yes);
    }
    assert_eq!(redis.cli(&["SAVE"]).as_deref(), Some("OK"));
    take(f, tenants.get(0), &key(1), now)
        .await
        .expect("a URL after the save")
}

/// A replica started after an older dump was loaded into the running server (the one that
/// handed the URL out is gone): no replica has seen the serial the dump is behind, so only the
/// server can tell. `DEBUG RELOAD` loads the functions afresh from the dump, and a library that
/// has not seen a tenant's fence yet does not trust it. (Before, the URL was handed out again.)
#[tokio::test]
async fn a_replica_started_after_an_older_dump_was_loaded_hands_nothing_out_again() {
    let redis = debuggable(&[]);
    a_new_replica_after_a_copy_written_back_hands_nothing_out_again(
        &redis,
        async || (),
        async |()| {
            let reloaded = redis.cli(&["DEBUG", "RELOAD", "NOSAVE"]);
            assert_eq!(reloaded.as_deref(), Some("OK"));
        },
    )
    .await;
}

/// The same with an old backup's keys restored (`RESTORE … REPLACE`): the library lives on,
/// and remembers the serial it last saw.
#[tokio::test]
async fn a_replica_started_after_an_old_backup_was_restored_hands_nothing_out_again() {
    let redis = RedisServer::start();
    a_new_replica_after_a_copy_written_back_hands_nothing_out_again(
        &redis,
        async || redis.backup("embedgate:*").await,
        async |copy| redis.restore(copy).await,
    )
    .await;
}

/// A replica that starts (a rolling deploy, a restart) loads the library only if Redis lacks
/// it: replacing it would wipe the library's memory of the serials, and the library would then
/// start a new epoch and abandon the fleet's shared pool at every start.
#[tokio::test]
async fn a_replica_starting_keeps_the_shared_pool() {
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let now = clock.now_ms();
    let (a, tenants, a_metrics) = fleet(&redis, &clock).await;
    for i in 1..=2 {
        let u = url(i, now + i as u64);
        assert_eq!(put(&a, &tenants, &key(1), &u, now).await, Stored::Yes);
    }
    let first = take(&a, tenants.get(0), &key(1), now).await;
    let (b, tenants, b_metrics) = fleet(&redis, &clock).await;
    let fcalled = fcalls(&redis);
    let second = take(&b, tenants.get(0), &key(1), now).await;
    assert!(fcalls(&redis) > fcalled, "the library found loaded is used");
    assert!(first.is_some() && second.is_some(), "{first:?} {second:?}");
    assert_ne!(first, second);
    assert_eq!(calls(&redis, "function|load"), 2, "both replicas asked");
    let fences = (a_metrics.redis_fences.get(), b_metrics.redis_fences.get());
    assert_eq!(fences, (0, 0), "no new epoch");
}

/// A backup made before the tenant's first take, restored key by key under the replica that
/// took since, with the scripts in their script form (no library to remember): the serial was
/// created with the epoch, so the backup holds it and writing it back takes it back. (Before,
/// the serial was created by the first take, the backup had none, the newer one stayed, and the
/// URL was handed out again.)
#[tokio::test]
async fn where_redis_refuses_functions_a_backup_from_before_the_first_take_restored_hands_nothing_out_again(
) {
    let redis = RedisServer::start_with(&NO_FUNCTIONS);
    let at = format!("redis://scripts:pw@127.0.0.1:{}", redis.port);
    let clock = Clock::manual();
    let (f, tenants, metrics) = fleet_at(at, &clock).await;
    let now = clock.now_ms();
    for i in 1..=2 {
        let u = url(i, now + i as u64);
        assert_eq!(put(&f, &tenants, &key(1), &u, now).await, Stored::Yes);
    }
    let copy = redis.backup("embedgate:*").await;
    let first = take(&f, tenants.get(0), &key(1), now).await.unwrap();
    redis.restore(copy).await;
    let back = redis.cli(&["ZCARD", &redis_key_like(&redis, ":p3:")]);
    assert_eq!(
        back.as_deref(),
        Some("2"),
        "the backup brought the URL back"
    );
    let again = take(&f, tenants.get(0), &key(1), now).await;
    assert!(
        again.is_none(),
        "nothing pooled before the backup is handed out again: {again:?} (first {})",
        first.url
    );
    assert_eq!(metrics.redis_fences.get(), 1);
}

/// Pools two URLs and saves a copy (`SAVE`, then `copy`), takes one, writes the copy back
/// (`restore`) and asks a replica started since: the URL taken is pooled again in Redis, and
/// must not be handed out.
async fn a_new_replica_after_a_copy_written_back_hands_nothing_out_again<C>(
    redis: &RedisServer,
    copy: impl AsyncFnOnce() -> C,
    restore: impl AsyncFnOnce(C),
) {
    let clock = Clock::manual();
    let now = clock.now_ms();
    let (first, copied) = {
        let (f, tenants, _) = fleet(redis, &clock).await;
        for i in 1..=2 {
            let u = url(i, now + i as u64);
            assert_eq!(put(&f, &tenants, &key(1), &u, now).await, Stored::Yes);
        }
        assert_eq!(redis.cli(&["SAVE"]).as_deref(), Some("OK"));
        let copied = copy().await;
        let first = take(&f, tenants.get(0), &key(1), now).await;
        (first.expect("a URL after the copy"), copied)
    };
    restore(copied).await;
    let pool = redis_key_like(redis, ":p3:");
    let back = redis.cli(&["ZCARD", &pool]);
    assert_eq!(back.as_deref(), Some("2"), "the copy brought the URL back");
    let (f, tenants, _) = fleet(redis, &clock).await;
    let again = take(&f, tenants.get(0), &key(1), now).await;
    assert!(
        again.is_none(),
        "nothing pooled before the copy is handed out again: {again:?} (first {})",
        first.url
    );
}

/// A dump saved in an epoch this replica has since left (a flush started another) loaded back:
/// the fence names the old epoch again, with the serial it had when the dump was saved, behind
/// the one the replica remembers for it.
#[tokio::test]
async fn a_dump_from_before_a_flush_loaded_back_hands_nothing_out_again() {
    let redis = debuggable(&[]);
    let clock = Clock::manual();
    let (f, tenants, _) = fleet(&redis, &clock).await;
    let now = clock.now_ms();
    let t = tenants.get(0);
    let first = saved_then_taken(&redis, &f, &tenants, now).await;
    assert_eq!(redis.cli(&["FLUSHALL"]).as_deref(), Some("OK"));
    assert!(take(&f, t, &key(1), now).await.is_none(), "a new epoch");
    assert_eq!(
        redis.cli(&["DEBUG", "RELOAD", "NOSAVE"]).as_deref(),
        Some("OK")
    );
    let again = take(&f, t, &key(1), now).await;
    assert!(
        again.is_none(),
        "the epoch left is not taken up again: {again:?} (first {})",
        first.url
    );
}

/// A failover and back: the primary hands out a URL its replica has not heard of being taken;
/// the replica is promoted before any of the tenant's calls reach it, the old primary resyncs
/// from it as its replica (taking the copy in which the URL is still pooled) and is promoted
/// again. Its `run_id` never changed, but its data set is another server's older copy. (Before
/// the fence named the replication id too, the URL was handed out again.)
#[tokio::test]
async fn a_primary_promoted_again_after_resyncing_from_its_replica_hands_nothing_out_again() {
    promoted_back_after_a_full_resync_hands_nothing_out_again(&[], |port| {
        format!("redis://127.0.0.1:{port}")
    })
    .await;
}

/// The same with the scripts in their script form, which read the data set on every call.
#[tokio::test]
async fn where_redis_refuses_functions_a_primary_promoted_back_hands_nothing_out_again() {
    promoted_back_after_a_full_resync_hands_nothing_out_again(&NO_FUNCTIONS, |port| {
        format!("redis://scripts:pw@127.0.0.1:{port}")
    })
    .await;
}

/// A primary sends a replica its copy at once instead of waiting for more replicas to ask
/// (`repl-diskless-sync-delay`, 5 s by default).
const PROMPT_COPIES: [&str; 2] = ["--repl-diskless-sync-delay", "0"];

/// A Redis started (with `extra`) as `primary`'s replica, once it holds the primary's copy.
async fn replica_of(primary: &RedisServer, extra: &[&str]) -> RedisServer {
    let port = primary.port.to_string();
    let replica = RedisServer::start_with(
        &[extra, &PROMPT_COPIES, &["--replicaof", "127.0.0.1", &port]].concat(),
    );
    replica.caught_up_with(primary).await;
    replica
}

async fn promoted_back_after_a_full_resync_hands_nothing_out_again(
    extra: &[&str],
    url_of: impl Fn(u16) -> String,
) {
    let a = RedisServer::start_with(&[extra, &PROMPT_COPIES].concat());
    let b = replica_of(&a, extra).await;
    // The real clock: the copies take a moment, and a manual clock left behind would look
    // stepped back to the fleet, which would stop sharing.
    let clock = Clock::skewed(0);
    let (f, tenants, metrics) = fleet_at(url_of(a.port), &clock).await;
    let now = clock.now_ms();
    let t = tenants.get(0);
    assert_eq!(
        put(&f, &tenants, &key(1), &url(1, now), now).await,
        Stored::Yes
    );
    b.caught_up_with(&a).await;
    // The replica is promoted (the primary went silent for the Sentinels, say)…
    assert_eq!(b.cli(&["REPLICAOF", "NO", "ONE"]).as_deref(), Some("OK"));
    // …while the fleet, still on the primary, hands the URL out.
    let taken = take(&f, t, &key(1), now).await;
    assert_eq!(taken.map(|u| u.url), Some(url(1, now).url));
    // The old primary comes back as the new one's replica and copies its data set in full (it
    // wrote what the new one never had), then is promoted back.
    let new_primary = b.port.to_string();
    assert_eq!(
        a.cli(&["REPLICAOF", "127.0.0.1", &new_primary]).as_deref(),
        Some("OK")
    );
    a.caught_up_with(&b).await;
    assert_eq!(a.cli(&["REPLICAOF", "NO", "ONE"]).as_deref(), Some("OK"));
    assert_eq!(
        a.cli(&["EXISTS", &redis_key_like(&a, ":p3:")]).as_deref(),
        Some("1"),
        "the copy brought the URL back"
    );
    let again = f.take(t, &key(1), now, MIN_REMAINING_MS).await;
    assert!(
        matches!(again, Ok(None)),
        "a URL handed out is never handed out again: {again:?}"
    );
    assert_eq!(metrics.redis_fences.get(), 1, "a new epoch");
}

/// A primary whose replicas have all been gone for `repl-backlog-ttl` frees its backlog and takes
/// a new replication id, with the same data. The functions keep the data set they read first,
/// the scripts read it on every call: replicas of each kind sharing the Redis (one whose ACL
/// refuses `FUNCTION`) must agree on one epoch, not start a new one over each other's at every
/// call, abandoning the tenant's pool each time.
#[tokio::test]
async fn functions_and_scripts_agree_on_the_epoch_when_the_replication_id_moves_alone() {
    let a = RedisServer::start_with(&[&NO_FUNCTIONS[..], &PROMPT_COPIES].concat());
    let b = replica_of(&a, &[]).await;
    let clock = Clock::skewed(0);
    let (functions, tenants, by_functions) = fleet_at(a.url(), &clock).await;
    let scripts_url = format!("redis://scripts:pw@127.0.0.1:{}", a.port);
    let (scripts, _, by_scripts) = fleet_at(scripts_url, &clock).await;
    let t = tenants.get(0);
    let now = clock.now_ms();
    for f in [&functions, &scripts] {
        assert!(f.take(t, &key(1), now, MIN_REMAINING_MS).await.is_ok());
    }
    b.caught_up_with(&a).await;
    let replid = || a.info("replication", "master_replid");
    let before = replid();
    drop(b);
    a.cli(&["CONFIG", "SET", "repl-backlog-ttl", "1"]);
    let moved = eventually(Duration::from_secs(20), || {
        std::future::ready(replid().is_some() && replid() != before)
    })
    .await;
    assert!(moved, "the replication id moved");
    let fences = || by_functions.redis_fences.get() + by_scripts.redis_fences.get();
    let moved_at = fences();
    for round in 0..5 {
        for f in [&scripts, &functions] {
            let taken = f.take(t, &key(1), now, MIN_REMAINING_MS).await;
            assert!(taken.is_ok(), "round {round}: {taken:?}");
        }
    }
    assert!(
        fences() - moved_at <= 2,
        "one new epoch, learned by each kind of replica once: {} epoch changes",
        fences() - moved_at
    );
}

#[tokio::test]
async fn where_redis_refuses_functions_the_scripts_keep_the_fence() {
    // A Redis whose ACL denies FUNCTION (as Redis 6 has none): the pool scripts run as scripts,
    // which read the server's data set on every call, and the fence holds the same way.
    let mut redis = RedisServer::start_with(&NO_FUNCTIONS);
    let url = format!("redis://scripts:pw@127.0.0.1:{}", redis.port);
    restart_from_a_snapshot_hands_nothing_out_again(&mut redis, url).await;
    assert_eq!(fcalls(&redis), 0, "no function was called");
}

#[tokio::test]
async fn a_redis_that_stops_taking_functions_gets_the_scripts_without_degrading() {
    let redis = RedisServer::start_with(&["--user", "app", "on", ">pw", "~*", "&*", "+@all"]);
    let clock = Clock::manual();
    let (f, tenants, _) =
        fleet_at(format!("redis://app:pw@127.0.0.1:{}", redis.port), &clock).await;
    let now = clock.now_ms();
    let t = tenants.get(0);
    let (k, first) = two_pooled_one_hit(&f, &tenants, now).await;
    let before = fcalls(&redis);
    assert!(first.is_some() && before >= 3, "function calls at first");
    // The operator takes FUNCTION and FCALL away (as a Redis 6 promoted under the fleet has
    // neither): the next call is refused unrun, and sent again as a script.
    assert_eq!(
        redis
            .cli(&["ACL", "SETUSER", "app", "-fcall", "-function"])
            .as_deref(),
        Some("OK")
    );
    let (_, second) = hit(&f, t, &k, now, "b2").await;
    assert!(second.is_some() && second != first, "the hit is served");
    assert!(
        f.healthy(),
        "a refused function call is not a Redis failure"
    );
    assert_eq!(fcalls(&redis), before, "the hit ran as a script");
}

/// URLs pooled and handed out after a snapshot (on the Redis at `at`) never come back once
/// Redis restarts from it.
async fn restart_from_a_snapshot_hands_nothing_out_again(redis: &mut RedisServer, at: String) {
    let clock = Clock::manual();
    let (f, tenants, metrics) = fleet_at(at, &clock).await;
    let now = clock.now_ms();
    let t = tenants.get(0);
    assert_eq!(
        put(&f, &tenants, &key(1), &url(1, now), now).await,
        Stored::Yes
    );
    assert_eq!(redis.cli(&["SAVE"]).as_deref(), Some("OK"));
    let taken = take(&f, t, &key(1), now).await;
    assert!(taken.is_some(), "handed out after the snapshot");
    redis.kill();
    redis.restart();
    // The first command after the restart fails on the dropped connection; the heartbeat
    // rejoins.
    let _ = f.take(t, &key(1), now, MIN_REMAINING_MS).await;
    f.heartbeat().await.unwrap();
    assert_eq!(
        redis
            .cli(&["EXISTS", &redis_key_like(redis, ":p3:")])
            .as_deref(),
        Some("1"),
        "the snapshot brought the URL back"
    );
    assert!(
        take(&f, t, &key(1), now).await.is_none(),
        "a URL from before the restart is never handed out again"
    );
    assert_eq!(metrics.redis_fences.get(), 1);
}

/// `FCALL`s the server has run since it started.
fn fcalls(redis: &RedisServer) -> u64 {
    calls(redis, "fcall")
}

/// Calls of `command` (as `INFO commandstats` names it) the server has run since it started.
fn calls(redis: &RedisServer, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    redis
        .cli(&["INFO", "commandstats"])
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()).map(String::from))
        .and_then(|rest| rest.split(',').next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test]
async fn the_pool_scripts_run_as_functions_and_a_lost_library_is_loaded_again() {
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let (f, tenants, metrics) = fleet(&redis, &clock).await;
    let now = clock.now_ms();
    let t = tenants.get(0);
    let (k, first) = two_pooled_one_hit(&f, &tenants, now).await;
    assert!(first.is_some());
    assert!(
        fcalls(&redis) >= 3,
        "the puts and the hit were function calls"
    );
    assert!(
        redis
            .cli(&["FUNCTION", "LIST"])
            .unwrap_or_default()
            .contains("embedgate_"),
        "the library is loaded"
    );
    // The library disappears (FUNCTION FLUSH; the same for a new primary that never had it)
    // under a burst of calls: the library is loaded again once, and nothing degrades. The
    // library loaded again has no memory of the tenant's serial, so it cannot tell this from an
    // older dump loaded (`DEBUG RELOAD` loads the library afresh too): it starts a new epoch,
    // and the URL still pooled is abandoned, never handed out.
    assert_eq!(redis.cli(&["FUNCTION", "FLUSH"]).as_deref(), Some("OK"));
    let loads = calls(&redis, "function|load");
    let ids: Vec<String> = (0..32).map(|i| format!("burst-{i}")).collect();
    let burst = futures::future::join_all(ids.iter().map(|id| hit(&f, t, &k, now, id))).await;
    let second: Vec<_> = burst.into_iter().filter_map(|(_, u)| u).collect();
    assert_eq!(second, vec![], "a new epoch: nothing pooled before");
    assert_eq!(metrics.redis_fences.get(), 1, "the fence moved once");
    assert!(f.healthy(), "a lost library is not a Redis failure");
    assert_eq!(
        calls(&redis, "function|load"),
        loads + 1,
        "loaded again once for the whole burst"
    );
    assert!(redis
        .cli(&["FUNCTION", "LIST"])
        .unwrap_or_default()
        .contains("embedgate_"));
}

/// The first key whose name contains `part`.
fn redis_key_like(redis: &RedisServer, part: &str) -> String {
    redis
        .cli(&["--scan", "--pattern", &format!("embedgate:*{part}*")])
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Pools two URLs for one key and hits it once: the key and the URL the hit got.
async fn two_pooled_one_hit(
    f: &Fleet,
    tenants: &Tenants,
    now: u64,
) -> (PoolKey, Option<PooledUrl>) {
    let k = key(6);
    pool_two(f, tenants, &k, now).await;
    let (_, first) = hit(f, tenants.get(0), &k, now, "a1").await;
    (k, first)
}

/// Pools two URLs for `k`, issued a millisecond apart.
async fn pool_two(f: &Fleet, tenants: &Tenants, k: &PoolKey, now: u64) {
    for i in 0..2 {
        assert_eq!(
            put(f, tenants, k, &url(i, now + i as u64), now).await,
            Stored::Yes
        );
    }
}

/// One replica on a fresh three-primary Redis Cluster, its clock manual: the cluster, the
/// replica, its tenants and the clock's time.
async fn one_on_a_cluster() -> (RedisCluster, Arc<Fleet>, Tenants, u64) {
    let cluster = RedisCluster::start(3);
    let clock = Clock::manual();
    let (f, tenants, _) = fleet_on_cluster(&cluster, &clock).await;
    (cluster, f, tenants, clock.now_ms())
}

/// On a Redis Cluster a replica starting loads the library on every primary, and keeps what the
/// primaries have: one primary without it (a shard added, or `FUNCTION FLUSH`) gets it, the
/// others answer that they have it, and the replica calls the functions, in the same epoch.
#[tokio::test]
async fn on_a_redis_cluster_a_replica_starting_keeps_the_shared_pool() {
    let cluster = RedisCluster::start(3);
    let clock = Clock::manual();
    let now = clock.now_ms();
    let (a, tenants, a_metrics) = fleet_on_cluster(&cluster, &clock).await;
    let k = key(5);
    pool_two(&a, &tenants, &k, now).await;
    let first = take(&a, tenants.get(0), &k, now).await;
    let keys = |n: &RedisServer| n.cli(&["DBSIZE"]).unwrap_or_default().trim().to_string();
    let other = cluster.nodes.iter().find(|n| keys(n) == "0");
    let other = other.expect("a primary without the tenant's keys");
    assert_eq!(other.cli(&["FUNCTION", "FLUSH"]).as_deref(), Some("OK"));
    let (b, tenants, b_metrics) = fleet_on_cluster(&cluster, &clock).await;
    let fcalled: u64 = cluster.nodes.iter().map(fcalls).sum();
    let second = take(&b, tenants.get(0), &k, now).await;
    assert!(first.is_some() && second.is_some(), "{first:?} {second:?}");
    assert_ne!(first, second);
    assert!(cluster.nodes.iter().map(fcalls).sum::<u64>() > fcalled);
    for node in &cluster.nodes {
        let listed = node.cli(&["FUNCTION", "LIST"]).unwrap_or_default();
        assert!(
            listed.contains("embedgate_"),
            "the library is on every primary"
        );
    }
    let fences = (a_metrics.redis_fences.get(), b_metrics.redis_fences.get());
    assert_eq!(fences, (0, 0), "no new epoch");
}

#[tokio::test]
async fn a_take_sent_twice_returns_the_same_url_instead_of_losing_one() {
    let (cluster, f, tenants, now) = one_on_a_cluster().await;
    let t = tenants.get(0);
    let k = key(5);
    pool_two(&f, &tenants, &k, now).await;
    let take = |id: &'static str| f.take_once(t, &k, now, MIN_REMAINING_MS, id);
    let first = take("a1").await.unwrap().map(|u| u.url);
    // The same take again, as a client retry after a lost reply sends it: the same URL, not
    // the next one (which the lost reply would otherwise have cost).
    assert_eq!(take("a1").await.unwrap().map(|u| u.url), first);
    let second = take("b2").await.unwrap().map(|u| u.url);
    assert!(
        second.is_some() && second != first,
        "the next take gets the other URL"
    );
    assert!(
        take("c3").await.unwrap().is_none(),
        "and then the key is empty"
    );
    for node in &cluster.nodes {
        assert!(
            node.cli(&["FUNCTION", "LIST"])
                .unwrap_or_default()
                .contains("embedgate_"),
            "the library is on every primary"
        );
    }
    assert!(
        cluster.nodes.iter().map(fcalls).sum::<u64>() >= 5,
        "the puts and takes were function calls"
    );
}

/// A Redis Cluster keeps a take's answer under its id with all the take removed from the pool:
/// the URL it popped and the reasons of the stale URLs it purged on the way, so that a replica
/// that gave the reply up counts both from it (`cluster::kept`).
#[tokio::test]
async fn a_take_keeps_what_it_removed_under_its_id() {
    let (cluster, f, tenants, now) = one_on_a_cluster().await;
    let t = tenants.get(0);
    let k = key(5);
    // Fresh when pooled; the first is stale by the take, 50 s later.
    let (old, new) = (url(0, now - 200_000), url(1, now));
    for u in [&old, &new] {
        assert_eq!(put(&f, &tenants, &k, u, now).await, Stored::Yes);
    }
    let got = f
        .take_once(t, &k, now + 50_000, MIN_REMAINING_MS, "a1")
        .await;
    assert_eq!(got.unwrap().map(|u| u.url), Some(new.url.clone()));
    let id = format!("embedgate:{{t:{}}}:tk:a1", t.id);
    let kept = cluster
        .nodes
        .iter()
        .filter_map(|n| n.cli(&["GET", &id]))
        .find(|a| a.contains("https://"))
        .expect("the take's answer is kept under its id");
    assert!(
        kept.starts_with("p,") && kept.ends_with(&new.url),
        "the stale URL's reason, then the URL popped: {kept}"
    );
}

#[tokio::test]
async fn an_anonymous_url_keeps_its_anonymous_user_arn_through_redis() {
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let (f, tenants, _) = fleet(&redis, &clock).await;
    let now = clock.now_ms();
    let u = PooledUrl {
        anonymous_user_arn: Some(format!(
            "arn:aws:quicksight:us-east-1:{ACCOUNT}:user/default/anon-1"
        )),
        ..url(9, now)
    };
    assert_eq!(put(&f, &tenants, &key(9), &u, now).await, Stored::Yes);
    let got = f
        .take(tenants.get(0), &key(9), now, MIN_REMAINING_MS)
        .await
        .unwrap()
        .expect("the URL comes back");
    assert!(got == u, "URL, issue time and ARN intact");
}

#[tokio::test]
async fn a_hit_sent_twice_counts_once_and_returns_the_same_url() {
    let (_cluster, f, tenants, now) = one_on_a_cluster().await;
    let t = tenants.get(0);
    let k = key(6);
    pool_two(&f, &tenants, &k, now).await;
    let remaining = |v: Inbound| match v {
        Inbound::Allowed { remaining } => remaining,
        Inbound::Limited { .. } => panic!("within the burst"),
    };
    let (v1, u1) = hit(&f, t, &k, now, "a1").await;
    let first = u1.map(|u| u.url);
    assert!(first.is_some());
    // Sent again, as after a lost reply: the same verdict and URL, nothing counted or popped.
    let (again, u) = hit(&f, t, &k, now, "a1").await;
    assert_eq!((again, u.map(|u| u.url)), (v1, first.clone()));
    let (v2, u2) = hit(&f, t, &k, now, "b2").await;
    assert_eq!(
        remaining(v2),
        remaining(v1) - 1,
        "the re-sent call was not counted again"
    );
    let second = u2.map(|u| u.url);
    assert!(
        second.is_some() && second != first,
        "the next hit gets the other URL"
    );
    let (v3, u3) = hit(&f, t, &k, now, "c3").await;
    assert_eq!(remaining(v3), remaining(v1) - 2);
    assert!(u3.is_none(), "and then the key is empty");
}

#[tokio::test]
async fn a_standalone_hit_keeps_no_answer_behind() {
    // A standalone connection never sends a command twice, so a kept answer would be two
    // commands and a key per hit for nothing.
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let (f, tenants, _) = fleet(&redis, &clock).await;
    let now = clock.now_ms();
    let t = tenants.get(0);
    let (k, first) = two_pooled_one_hit(&f, &tenants, now).await;
    let second = f
        .take_once(t, &k, now, MIN_REMAINING_MS, "b2")
        .await
        .unwrap();
    assert!(first.is_some() && second.is_some() && first != second);
    assert_eq!(
        redis_key_like(&redis, ":tk:"),
        "",
        "no answer kept under a call's id"
    );
}

#[tokio::test]
async fn a_hit_over_the_limit_takes_nothing() {
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let (f, tenants, _) = fleet_with(&redis, &clock, |t| {
        t.rate_per_sec = 1.0;
        t.burst = 2;
        t.max_pooled_urls = 10;
    })
    .await;
    let now = clock.now_ms();
    let t = tenants.get(0);
    for i in 0..4 {
        assert_eq!(
            f.put(t, &key(7), &url(i, now), now, MIN_REMAINING_MS, 10, false)
                .await
                .unwrap(),
            Stored::Yes
        );
    }
    let k = key(7);
    let mut taken = 0;
    let mut refused = 0;
    for _ in 0..4 {
        match f.inbound_take(t, &k, now, MIN_REMAINING_MS).await.unwrap() {
            (Inbound::Allowed { .. }, Some(_)) => taken += 1,
            (Inbound::Limited { retry_after }, None) => {
                assert!(retry_after.as_millis() >= 1);
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((taken, refused), (2, 2), "the burst of 2, then refusals");
    // A second later one more is allowed, and the refused calls left their URLs in the pool.
    clock.advance(1_000);
    let (v, u) = f
        .inbound_take(t, &k, clock.now_ms(), MIN_REMAINING_MS)
        .await
        .unwrap();
    assert!(matches!(v, Inbound::Allowed { .. }) && u.is_some());
    let (v, u) = f
        .inbound_take(t, &k, clock.now_ms(), MIN_REMAINING_MS)
        .await
        .unwrap();
    assert!(matches!(v, Inbound::Limited { .. }) && u.is_none());
    let left = f
        .take(t, &k, clock.now_ms(), MIN_REMAINING_MS)
        .await
        .unwrap();
    assert!(left.is_some(), "the fourth URL is still pooled");
}

#[tokio::test]
async fn a_hit_never_hands_out_a_stale_url_and_counts_the_stale_ones_as_waste() {
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let (f, tenants, metrics) = fleet(&redis, &clock).await;
    let t = tenants.get(0);
    let k = key(8);
    let start = clock.now_ms();
    // Two URLs issued now (one stocked as a session's follower, one for a hint) and one 10 s
    // later, in one key.
    for (i, at, fetched_for) in [
        (0, start, Fetch::Follower),
        (1, start + 1, Fetch::Hint),
        (2, start + 10_000, Fetch::Prefetch),
    ] {
        clock.advance(at - clock.now_ms());
        let u = PooledUrl {
            fetched_for,
            ..url(i, at)
        };
        assert_eq!(put(&f, &tenants, &k, &u, at).await, Stored::Yes);
    }
    // The first two are now past their usable life (the fleet's clock margin included); the
    // third is not.
    let usable = 300_000 - MIN_REMAINING_MS - 2 * 1_000;
    clock.advance(start + usable + 5_000 - clock.now_ms());
    let now = clock.now_ms();
    let (v, got) = f.inbound_take(t, &k, now, MIN_REMAINING_MS).await.unwrap();
    assert!(matches!(v, Inbound::Allowed { .. }));
    assert_eq!(
        got.map(|u| u.url),
        Some(url(2, start + 10_000).url),
        "the fresh URL, never a stale one"
    );
    // Counted as waste under what each was fetched for.
    let text = metrics.render();
    for fetched_for in ["follower", "hint"] {
        let sample = format!(
            "embedgate_urls_wasted_total{{fetched_for=\"{fetched_for}\",reason=\"expired\"}}"
        );
        assert_eq!(metric(&text, &sample), 1.0, "{sample}");
    }
    let sample = "embedgate_urls_wasted_total{fetched_for=\"prefetch\",reason=\"expired\"}";
    assert_eq!(metric(&text, sample), 0.0, "the fresh one was handed out");
    let (_, none) = f.inbound_take(t, &k, now, MIN_REMAINING_MS).await.unwrap();
    assert!(none.is_none(), "and the key is empty");
    // They left the tenant's count too: its bound of 3 has room for 3 again.
    for i in 10..13 {
        assert_eq!(
            put(&f, &tenants, &key(i), &url(i, now), now).await,
            Stored::Yes
        );
    }
}

/// Tenant `t` allowed 100 requests/s with a burst of 5: a late call 2 s behind would look like
/// 200 requests ahead of its rate.
async fn strict_fleet(redis: &RedisServer, clock: &Clock) -> (Arc<Fleet>, Tenants, Arc<Metrics>) {
    fleet_with(redis, clock, |t| {
        t.rate_per_sec = 100.0;
        t.burst = 5;
        t.max_pooled_urls = 10;
    })
    .await
}

#[tokio::test]
async fn a_call_that_reaches_redis_late_is_counted_at_the_latest_clock_not_refused() {
    // Another replica's call, sent 2 s later, ran first (Redis blocked, a stalled client): the
    // late call is one request, not a burst of 200.
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let (f, tenants, _) = strict_fleet(&redis, &clock).await;
    let t = tenants.get(0);
    let k = key(9);
    let late = clock.now_ms();
    let on_time = late + 2_000;
    let allowed = |v: Inbound| matches!(v, Inbound::Allowed { .. });
    let (v, _) = hit(&f, t, &k, on_time, "on-time").await;
    assert!(allowed(v));
    let (v, _) = hit(&f, t, &k, late, "late-hit").await;
    assert!(allowed(v), "a late hit is admitted: {v:?}");
    let v = f.inbound(t, late).await.unwrap();
    assert!(allowed(v), "a late count is admitted: {v:?}");
    // The limit still holds at the latest clock: 3 used of the burst of 5, 2 more, then none.
    for id in ["late-4", "late-5"] {
        let (v, _) = hit(&f, t, &k, late, id).await;
        assert!(allowed(v), "{id}: {v:?}");
    }
    let (v, _) = hit(&f, t, &k, late, "late-6").await;
    assert!(
        !allowed(v),
        "the sixth within the same instant is over the burst"
    );
}

#[tokio::test]
async fn a_late_hit_never_hands_out_a_url_stale_by_the_latest_clock() {
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let (f, tenants, _) = strict_fleet(&redis, &clock).await;
    let t = tenants.get(0);
    let issued = clock.now_ms();
    let k = key(10);
    assert_eq!(
        put(&f, &tenants, &k, &url(0, issued), issued).await,
        Stored::Yes
    );
    // At `late` the URL is still usable; 2 s later it is not (the fleet's clock margin included).
    let usable = 300_000 - MIN_REMAINING_MS - 2 * 1_000;
    let late = issued + usable - 1_000;
    let on_time = late + 2_000;
    let (_, none) = hit(&f, t, &key(11), on_time, "other-key").await;
    assert!(none.is_none());
    let (v, got) = hit(&f, t, &k, late, "late-hit").await;
    assert!(matches!(v, Inbound::Allowed { .. }));
    assert!(
        got.is_none(),
        "the URL is stale by the latest clock: {got:?}"
    );
}

#[tokio::test]
async fn a_budget_call_that_reaches_redis_late_is_not_refused() {
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let (f, tenants, _) = strict_fleet(&redis, &clock).await;
    let t = tenants.get(0);
    let late = clock.now_ms();
    let budget = |now| f.budget("111122223333", "us-east-1", t, 1.0, 100.0, 5, 0.0, now);
    assert_eq!(budget(late + 2_000).await.unwrap(), Ok(()));
    assert_eq!(
        budget(late).await.unwrap(),
        Ok(()),
        "a late call is one call"
    );
    for _ in 0..3 {
        assert_eq!(budget(late).await.unwrap(), Ok(()));
    }
    assert!(
        budget(late).await.unwrap().is_err(),
        "the burst of 5 still holds"
    );
}

/// Each replica cuts its upstream budget's rate on its own ThrottlingExceptions (and recovers on
/// its own), so replicas send one account's shared budget different rates, and a replica that
/// recovered sends a burst that spans less time than a throttled one's. Whatever rate each call
/// carries, one instant's calls get one burst: before, a call at the higher rate found the
/// throttled replica's TAT beyond its burst and reset it, and each replica then had a burst
/// again, exactly after QuickSight had asked the fleet to slow down.
#[tokio::test]
async fn replicas_whose_budgets_were_cut_apart_share_one_burst() {
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let (f, tenants, _) = strict_fleet(&redis, &clock).await;
    let t = tenants.get(0);
    let now = clock.now_ms();
    let budget = |rate| f.budget("111122223333", "us-east-1", t, 1.0, rate, 5, 0.0, now);
    let mut throttled = vec![];
    for _ in 0..5 {
        throttled.push(budget(50.0).await.unwrap().is_ok());
    }
    assert_eq!(throttled, [true; 5], "the cut replica's burst");
    let mut after = vec![];
    for i in 0..10 {
        let rate = if i % 2 == 0 { 100.0 } else { 50.0 };
        after.push(budget(rate).await.unwrap().is_ok());
    }
    assert_eq!(after, [false; 10], "no call at either rate gets more");
}

#[tokio::test]
async fn a_replica_clock_that_was_minutes_ahead_does_not_lock_the_tenant_out() {
    // One call from a replica whose clock had stepped 10 minutes ahead (before its heartbeat
    // caught it): the others must not be refused for 10 minutes.
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let (f, tenants, _) = strict_fleet(&redis, &clock).await;
    let t = tenants.get(0);
    let k = key(12);
    let now = clock.now_ms();
    let ahead = now + 600_000;
    let (v, _) = hit(&f, t, &k, ahead, "ahead").await;
    assert!(matches!(v, Inbound::Allowed { .. }));
    assert!(matches!(
        f.inbound(t, ahead).await.unwrap(),
        Inbound::Allowed { .. }
    ));
    let budget = |now| f.budget("111122223333", "us-east-1", t, 1.0, 100.0, 5, 0.0, now);
    assert_eq!(budget(ahead).await.unwrap(), Ok(()));
    // Back on the true clock a second later, every limiter admits again (at most one burst more
    // than the rate allows, once), and then holds the rate again.
    let later = now + 1_000;
    let (v, _) = hit(&f, t, &k, later, "on-time").await;
    assert!(matches!(v, Inbound::Allowed { .. }), "hit: {v:?}");
    let v = f.inbound(t, later).await.unwrap();
    assert!(matches!(v, Inbound::Allowed { .. }), "count: {v:?}");
    assert_eq!(budget(later).await.unwrap(), Ok(()), "budget");
    let mut admitted = 2;
    for i in 0..10 {
        let id = format!("after-{i}");
        let (v, _) = hit(&f, t, &k, later, &id).await;
        admitted += usize::from(matches!(v, Inbound::Allowed { .. }));
    }
    assert_eq!(admitted, 5, "the burst of 5 holds again");
}

/// Each thread that calls a standalone Redis has its own connection, as each HTTP worker does.
/// A Redis restart breaks them all while the threads sit idle; the rejoin must reopen every one,
/// or each thread's next command fails on its dead connection and sends the replica straight
/// back to degraded mode.
#[test]
fn after_a_redis_restart_no_thread_fails_on_its_connection_from_before() {
    const THREADS: usize = 3;
    let mut redis = RedisServer::start();
    let clock = Clock::System;
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    // The heartbeat runs on a background runtime that is always running, as in the gateway.
    let main = tokio::runtime::Runtime::new().unwrap();
    let (f, tenants, _) = main.block_on(fleet(&redis, &clock));
    let t = tenants.get(0);
    let count = |rt: &tokio::runtime::Runtime| rt.block_on(f.inbound(t, clock.now_ms()));
    let before_restart = std::sync::Barrier::new(THREADS + 1);
    let rejoined = std::sync::Barrier::new(THREADS + 1);
    // Each thread: a count before the restart, one on its own connection (opened in the
    // background meanwhile), and one after the rejoin. Asserted after the threads end, so a
    // failure cannot leave the others waiting at a barrier.
    let verdicts = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    let rt = rt();
                    let first = count(&rt);
                    rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
                    let own = count(&rt);
                    before_restart.wait();
                    rejoined.wait();
                    [first, own, count(&rt)]
                })
            })
            .collect();
        before_restart.wait();
        redis.kill();
        let down = main.block_on(f.heartbeat()).is_err() && !f.healthy();
        redis.restart();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while main.block_on(f.heartbeat()).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let back = f.healthy();
        rejoined.wait();
        let verdicts: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        assert!(down, "the replica saw Redis go");
        assert!(back, "the replica rejoined");
        verdicts
    });
    let allowed = |v: &Result<Inbound, _>| matches!(v, Ok(Inbound::Allowed { .. }));
    for (i, [first, own, after]) in verdicts.iter().enumerate() {
        assert!(
            allowed(first) && allowed(own),
            "thread {i} before: {first:?} {own:?}"
        );
        assert!(allowed(after), "thread {i} after the rejoin: {after:?}");
    }
    assert!(
        f.healthy(),
        "no thread sent the replica back to degraded mode"
    );
}

/// However long a fleet runs, the session views stream holds seconds of batches, not hours: a
/// replica that joins reads that tail (at most `READ_BATCHES` a tick, more than the trim keeps),
/// only other replicas' batches, in the order they were sent, and the stream goes when the fleet
/// does.
#[tokio::test]
async fn the_views_stream_keeps_a_bounded_tail_that_each_replica_reads_in_order() {
    use embedgate::cluster::views::MAX_BATCHES;
    let redis = RedisServer::start();
    let clock = Clock::System;
    let (a, _, _) = fleet(&redis, &clock).await;
    let (b, _, _) = fleet(&redis, &clock).await;
    let sent = 10 * MAX_BATCHES;
    for i in 0..sent {
        let own = a.exchange_views(&format!("batch-{i:05}")).await.unwrap();
        assert!(own.is_empty(), "a replica never reads its own views");
    }
    let stream = "embedgate:{views}";
    let len: usize = redis.cli(&["XLEN", stream]).unwrap().parse().unwrap();
    // `MAXLEN ~` trims whole stream nodes (100 entries by default): about the bound, not exactly.
    assert!(
        (MAX_BATCHES..=MAX_BATCHES + 100).contains(&len),
        "{len} batches kept"
    );
    let ttl: i64 = redis.cli(&["PTTL", stream]).unwrap().parse().unwrap();
    assert!(ttl > 0 && ttl <= 3_600_000, "{ttl}");
    // b joins: the kept tail, oldest first, up to the last sent.
    let mut read = vec![];
    loop {
        let batches = b.exchange_views("").await.unwrap();
        if batches.is_empty() {
            break;
        }
        read.extend(batches);
    }
    let expected: Vec<String> = (sent - len..sent)
        .map(|i| format!("batch-{i:05}"))
        .collect();
    assert_eq!(read, expected);
}

/// One sync of `k` reporting `in_flight` prefetches and `landed` landings so far; the fleet's
/// prefetches in flight for `k` as Redis now counts them.
async fn sync_in_flight(
    f: &Fleet,
    tenants: &Tenants,
    k: &PoolKey,
    in_flight: usize,
    landed: u32,
    now: u64,
) -> usize {
    let own = embedgate::refill::Report {
        rate: 1.0,
        in_flight,
        landed,
    };
    let views = f
        .sync(tenants.get(0), &[(k, own)], now, MIN_REMAINING_MS, 10_000)
        .await
        .unwrap();
    views[0].in_flight
}

/// Prefetch URL `i` landing in the shared pool: a put counted as the replica's landing.
async fn land(f: &Fleet, t: &Tenant, k: &PoolKey, i: usize, now: u64) -> Stored {
    f.put(t, k, &url(i, now), now, MIN_REMAINING_MS, 10, true)
        .await
        .unwrap()
}

/// A replica reads its prefetches in flight, then syncs them; a prefetch that lands in between
/// (its put reaches Redis before the sync does) was still counted in flight by the replica. The
/// sync must not count it again: while it did, the key's fleet-wide limit held one slot too many
/// until the next sync, for every landing that raced a sync (on a busy machine, up to a tick's
/// worth of prefetches), and the other replicas fetched that much less.
#[tokio::test]
async fn a_landing_that_reaches_redis_before_the_sync_counting_it_is_counted_once() {
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let (f, tenants, _) = fleet(&redis, &clock).await;
    let t = tenants.get(0);
    let k = key(1);
    let now = clock.now_ms();
    assert_eq!(sync_in_flight(&f, &tenants, &k, 0, 0, now).await, 0);
    assert_eq!(f.claim(t, &k, 4, 10, now, 10_000).await.unwrap(), 4);
    // Read by the replica: four in flight, none landed. Then two land before the sync arrives.
    for i in 0..2 {
        assert_eq!(land(&f, t, &k, i, now).await, Stored::Yes);
    }
    assert_eq!(
        sync_in_flight(&f, &tenants, &k, 4, 0, now).await,
        2,
        "the two landed are in the pool, not in flight"
    );
    // The limit counts the pool and what is really in flight: 2 + 2 of 6.
    assert_eq!(f.claim(t, &k, 5, 6, now, 10_000).await.unwrap(), 2);
    // The replica has seen them land since, and started the two it was granted; a later
    // landing arrives after the sync, as usual.
    assert_eq!(sync_in_flight(&f, &tenants, &k, 4, 2, now).await, 4);
    land(&f, t, &k, 2, now).await;
    assert_eq!(sync_in_flight(&f, &tenants, &k, 3, 3, now).await, 3);
    // A URL that is not a landing (a waiter's, given back) counts nothing.
    f.put(t, &k, &url(3, now), now, MIN_REMAINING_MS, 10, false)
        .await
        .unwrap();
    assert_eq!(sync_in_flight(&f, &tenants, &k, 3, 3, now).await, 3);
}

/// Landings the shared pool cannot account for (more than the replica has in flight, or fewer
/// than the replica has seen: an entry that expired, a put whose answer was lost) do not make
/// the count wrong for good: the sync starts again from the replica's own.
#[tokio::test]
async fn landings_out_of_step_start_the_count_again_from_the_replica() {
    let redis = RedisServer::start();
    let clock = Clock::manual();
    let (f, tenants, _) = fleet(&redis, &clock).await;
    let t = tenants.get(0);
    let k = key(1);
    let now = clock.now_ms();
    assert_eq!(sync_in_flight(&f, &tenants, &k, 1, 0, now).await, 1);
    for i in 0..3 {
        land(&f, t, &k, i, now).await;
    }
    // Three landed here, but the replica had one in flight: trust the replica.
    assert_eq!(sync_in_flight(&f, &tenants, &k, 2, 0, now).await, 2);
    // The replica has seen 7 land, Redis 0 (its entry was recreated): trust the replica, and
    // from then on the two agree again.
    assert_eq!(sync_in_flight(&f, &tenants, &k, 2, 7, now).await, 2);
    land(&f, t, &k, 4, now).await;
    assert_eq!(sync_in_flight(&f, &tenants, &k, 2, 7, now).await, 1);
    // Landings wrap at 2^32 on both sides.
    assert_eq!(sync_in_flight(&f, &tenants, &k, 1, u32::MAX, now).await, 1);
    land(&f, t, &k, 5, now).await;
    assert_eq!(sync_in_flight(&f, &tenants, &k, 1, u32::MAX, now).await, 0);
}
