//! Resident memory per pooled URL and per tracked key, measured in-process with the gateway's own
//! pool and demand tracker (`scripts/bench.sh` runs it; release build).
//!
//! ```text
//! memory [urls] [keys]     defaults: 100000 URLs over 1000 keys; 100000 tracked keys
//! ```
//! The URL strings are allocated before the baseline is taken, so "per URL" is what the pool adds
//! beyond the URL's own bytes. Prints one JSON object.

use std::sync::Arc;

use embedgate::clock::Clock;
use embedgate::config::{PoolSettings, RefillSettings};
use embedgate::metrics::{Fetch, Metrics};
use embedgate::model::{DashboardEmbedRequest, EmbedRequest, IdentityType};
use embedgate::pool::{pool_key, Pool, PooledUrl};
use embedgate::refill::Demand;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn request(i: usize) -> EmbedRequest {
    let mut r = DashboardEmbedRequest::new(
        "111122223333",
        format!("d-{i:06}"),
        IdentityType::Quicksight,
    );
    r.user_arn = Some(format!(
        "arn:aws:quicksight:us-east-1:111122223333:user/default/user-{i:06}"
    ));
    EmbedRequest::Dashboard(r)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let urls = args.first().copied().unwrap_or(100_000);
    let tracked = args.get(1).copied().unwrap_or(100_000);
    let keys = 1_000;
    let clock = Clock::System;
    let now = clock.now_ms();

    // The URLs as the upstream client produces them: one heap string each, shaped like
    // QuickSight's (host, path, a 256-character auth code).
    let code = "A".repeat(256);
    let mut made: Vec<String> = (0..urls)
        .map(|i| format!("https://us-east-1.quicksight.aws.amazon.com/embed/{i:032x}/dashboards/d-{:06}?code={code}&identityprovider=quicksight&isauthcode=true", i % keys))
        .collect();
    let url_bytes: usize = made.iter().map(String::len).sum();
    let pool_keys: Vec<_> = (0..keys)
        .map(|i| pool_key("t", "us-east-1", &request(i)))
        .collect();

    let settings = PoolSettings {
        max_urls_per_key: urls,
        max_urls: urls,
        ..PoolSettings::default()
    };
    let pool = Pool::new(
        &settings,
        vec![usize::MAX],
        clock.clone(),
        Arc::new(Metrics::new()),
    );
    let before_pool = rss_bytes();
    for (i, url) in made.iter_mut().enumerate() {
        // Moved, not copied: the string's bytes were allocated before the baseline, and `made`
        // keeps its own buffer until after the measurement.
        let url = PooledUrl {
            url: std::mem::take(url),
            issued_at_ms: now,
            anonymous_user_arn: None,
            fetched_for: Fetch::Prefetch,
        };
        pool.put(&pool_keys[i % keys], 0, url)
            .expect("room in the pool");
    }
    let after_pool = rss_bytes();
    drop(made);

    let requests: Vec<(embedgate::pool::PoolKey, EmbedRequest)> = (0..tracked)
        .map(|i| {
            let r = request(i);
            (pool_key("t", "us-east-1", &r), r)
        })
        .collect();
    let demand = Demand::new(
        &RefillSettings {
            max_tracked_keys: tracked as u64,
            ..RefillSettings::default()
        },
        vec![(0, tracked)],
    );
    let before_demand = rss_bytes();
    for (k, r) in &requests {
        demand.record(k, 0, r, now);
    }
    let after_demand = rss_bytes();
    // The tracker keeps its own copy of each key and request; the ones built above are the
    // caller's and are not counted.
    let per_url = (after_pool - before_pool) as f64 / urls as f64;
    let per_key = (after_demand - before_demand) as f64 / tracked as f64;
    println!(
        "{}",
        serde_json::json!({
            "pooled_urls": pool.total(),
            "mean_url_bytes": url_bytes as f64 / urls as f64,
            "rss_per_pooled_url_bytes": per_url,
            "tracked_keys": demand.len(),
            "rss_per_tracked_key_bytes": per_key,
        })
    );
}
