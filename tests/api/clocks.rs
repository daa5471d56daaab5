//! Never stale, whatever the clocks say: replicas whose clocks are 30 s or 120 s off share one
//! Redis, URLs are kept at the edge of their usable life (`min_remaining_secs = 288` leaves 12 s),
//! QuickSight's latency falls after it mints each URL (the worst case for dating from the
//! request), and the client opens every URL as soon as it arrives. The simulator measures, by
//! its own clock, how much validity each had left.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use embedgate::clock::Clock;

use crate::helpers::*;
use crate::helpers::{keys, spawn_fleet_with_clocks, TestFleet};
use crate::redis_server::RedisServer;

const MIN_REMAINING_SECS: u64 = 288;
/// How long the client may take to open a URL after receiving it.
const OPENING_MS: u64 = 5_000;

/// `total` requests at about `rate` per second over the replicas, each URL opened at once;
/// returns (answers that were 200, URLs that opened).
async fn drive_and_open(fleet: &Arc<TestFleet>, total: usize, rate: f64) -> (usize, usize) {
    let k = keys();
    let gap = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let results: Vec<(bool, bool)> = futures::stream::iter(0..total)
        .map(|i| {
            let fleet = fleet.clone();
            let body = k[i % k.len()].clone();
            async move {
                tokio::time::sleep_until(start + gap * i as u32).await;
                let o = fleet.embed(i, "alpha", &body).await;
                match o.body["EmbedUrl"].as_str() {
                    Some(u) if o.status == 200 => {
                        let opened = http().get(u).send().await.unwrap().status() == 200;
                        (true, opened)
                    }
                    _ => {
                        eprintln!("replica {}: {} {}", i % 3, o.status, o.body);
                        (false, false)
                    }
                }
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    (
        results.iter().filter(|r| r.0).count(),
        results.iter().filter(|r| r.1).count(),
    )
}

async fn skewed_fleet_never_hands_out_a_stale_url(offsets_ms: [i64; 3]) {
    let redis = RedisServer::start();
    let clocks = offsets_ms.iter().map(|o| Clock::skewed(*o)).collect();
    let fleet = Arc::new(
        spawn_fleet_with_clocks(clocks, |s| {
            s.redis.url = Some(redis.url());
            s.redis.timeout_ms = 2_000;
            s.redis.heartbeat_ms = 100;
            s.pool.min_remaining_secs = MIN_REMAINING_SECS;
            s.tenants[0].warm = keys().into_iter().map(|k| warm(k, 6)).collect();
        })
        .await,
    );
    fleet
        .sim
        .sim
        .update_knobs(&serde_json::json!({"latency_ms": 100, "latency_after_mint": true}))
        .unwrap();
    // Two usable lives: stocked URLs reach the edge and are purged while requests keep coming.
    let (served, opened) = drive_and_open(&fleet, 720, 30.0).await;
    assert_eq!(served, 720, "every request was answered with a URL");
    assert_eq!(opened, served, "every URL opened, none late or twice");
    let ledger = fleet.sim.sim.ledger();
    assert_eq!((ledger.double_redemptions, ledger.late_redemptions), (0, 0));
    let least = ledger.min_validity_left_ms.unwrap();
    eprintln!(
        "clocks {offsets_ms:?} ms: least validity left at opening {least} ms; by bucket {:?}",
        ledger.validity_left
    );
    assert!(
        least + OPENING_MS >= MIN_REMAINING_SECS * 1000,
        "a URL was handed out with less than min_remaining_secs left: {least} ms at opening"
    );
    // The replicas whose clocks disagree with Redis's stopped sharing, and say why.
    for (i, offset) in offsets_ms.iter().enumerate() {
        let r = fleet.readiness_json(i).await;
        let expected = if offset.unsigned_abs() > 1_000 {
            "clock"
        } else {
            ""
        };
        assert_eq!(
            r["reason"].as_str().unwrap_or(""),
            expected,
            "replica {i} ({offset} ms off): {r}"
        );
    }
    Arc::try_unwrap(fleet).ok().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_30_seconds_off_never_hand_out_a_stale_url() {
    skewed_fleet_never_hands_out_a_stale_url([0, 30_000, -30_000]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_120_seconds_off_never_hand_out_a_stale_url() {
    skewed_fleet_never_hands_out_a_stale_url([120_000, 0, -120_000]).await;
}

/// A replica whose clock steps ten minutes forward between two heartbeats (its wall clock was
/// found ahead, or its machine slept) stops sharing before its next call reaches Redis. Judged
/// by its stepped clock, the shared pool's URLs would all be expired: it would purge the fleet's
/// stock as waste. It serves on from its own pool and QuickSight, and the next heartbeat that
/// finds its clock back within the bound lets it rejoin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_whose_clock_steps_between_heartbeats_stops_sharing_before_its_next_call() {
    let redis = RedisServer::start();
    let body = dash("sales-2024", "alice");
    let stepping = Clock::skewed(0);
    let fleet = spawn_fleet_with_clocks(vec![Clock::System, stepping.clone()], |s| {
        s.redis.url = Some(redis.url());
        s.redis.timeout_ms = 2_000;
        // Long enough that no heartbeat comes between the step and the next request.
        s.redis.heartbeat_ms = 10_000;
        s.tenants[0].warm = vec![warm(body.clone(), 6)];
    })
    .await;
    let stocked = redis.shared_stock_reaches("alpha", None, 6).await;
    assert!(stocked, "the warm key was stocked in Redis");
    stepping.set_skew(600_000);
    let o = fleet.embed(1, "alpha", &body).await;
    assert_eq!(
        o.status, 200,
        "the stepped replica still serves: {}",
        o.body
    );
    let expired = fleet
        .metric_total("embedgate_urls_wasted_total", "reason=\"expired\"")
        .await;
    assert_eq!(
        expired, 0.0,
        "no shared URL was purged by the stepped replica's clock"
    );
    assert_eq!(fleet.readiness_json(1).await["reason"], "clock");
    assert_eq!(fleet.metric(1, "embedgate_redis_degraded").await, 1.0);
    for _ in 0..3 {
        let o = fleet.embed(0, "alpha", &body).await;
        assert_eq!(o.body["Source"], "pool", "{}", o.body);
    }
    // Stepped back: the next heartbeat finds the clock within the bound again.
    stepping.set_skew(0);
    let rejoined = eventually(Duration::from_secs(15), || async {
        fleet.readiness_json(1).await["reason"].is_null()
    })
    .await;
    assert!(rejoined, "{}", fleet.readiness_json(1).await);
    fleet.stop().await;
}
