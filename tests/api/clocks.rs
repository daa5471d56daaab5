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
