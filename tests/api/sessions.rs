//! Session predictions end to end: what a tenant's users usually open next is in the pool before
//! they ask, for the right user, counted by reason and explained in `/state`; a tenant's habits
//! never stock anything for another tenant.

use crate::helpers::*;

/// Eight users of `tenant` open sales-2024 then finance; one of them also opens ops-overview.
async fn teach(app: &TestApp, tenant: &str) {
    for i in 0..8 {
        let user = format!("user-{i:04}");
        for d in ["sales-2024", "finance"] {
            let body = app.embed_json(tenant, "dashboard", &dash(d, &user)).await;
            assert!(body["EmbedUrl"].is_string(), "{body}");
        }
        if i == 0 {
            app.embed_json(tenant, "dashboard", &dash("ops-overview", &user))
                .await;
        }
    }
}

#[tokio::test]
async fn a_users_usual_next_dashboard_is_pooled_for_them_before_they_open_it() {
    let app = spawn_app(|_| {}).await;
    teach(&app, "alpha").await;
    let newcomer = "user-0100";
    app.embed_json("alpha", "dashboard", &dash("sales-2024", newcomer))
        .await;
    let gw = app.app.gateway.clone();
    let next = app.key_of(0, &dash("finance", newcomer));
    assert!(
        app.eventually(10, || gw.pool().len(&next) >= 1).await,
        "finance follows sales-2024 for 8 users in 8: stocked for the newcomer"
    );
    // Explained: /state lists the key with its probability and reason.
    let entry = app.planned(&next).await;
    assert_eq!(entry["reason"], "follower", "{entry}");
    assert_eq!(entry["tenant"], "alpha");
    assert!(entry["probability"].as_f64().unwrap() >= 0.8, "{entry}");
    // Rarely followed: ops-overview (1 in 9) is not stocked.
    let rare = app.key_of(0, &dash("ops-overview", newcomer));
    assert_eq!(gw.pool().len(&rare), 0);

    let body = app
        .embed_json("alpha", "dashboard", &dash("finance", newcomer))
        .await;
    assert_eq!(body["Source"], "pool", "{body}");
    // The URL opens finance for the newcomer, not for the user the habit was learned from.
    let page = get_text(&app.http, body["EmbedUrl"].as_str().unwrap()).await;
    assert!(
        page.contains(newcomer) && page.contains("finance"),
        "{page}"
    );
    assert!(!page.contains("user-0000"));
    let fetched = metric(
        &app.metrics().await,
        r#"embedgate_urls_fetched_total{reason="follower"}"#,
    );
    assert!(fetched >= 1.0, "{fetched}");
    app.stop().await;
}

#[tokio::test]
async fn one_tenants_habits_stock_nothing_for_another() {
    let app = spawn_app(|_| {}).await;
    teach(&app, "alpha").await;
    // beta's user opens the same dashboard: beta has learned nothing, so nothing follows.
    app.embed_json("beta", "dashboard", &dash("sales-2024", "user-0200"))
        .await;
    let gw = app.app.gateway.clone();
    let beta_next = app.key_of(1, &dash("finance", "user-0200"));
    // A control in alpha, asked at the same time, shows the planner has run meanwhile.
    app.embed_json("alpha", "dashboard", &dash("sales-2024", "user-0201"))
        .await;
    let alpha_next = app.key_of(0, &dash("finance", "user-0201"));
    assert!(app.eventually(10, || gw.pool().len(&alpha_next) >= 1).await);
    assert_eq!(gw.pool().len(&beta_next), 0);
    assert_eq!(gw.tracked_by(1), 1, "beta tracks only its own request");
    app.stop().await;
}

#[tokio::test]
async fn sessions_off_predicts_nothing() {
    let app = spawn_app(|s| s.refill.sessions = false).await;
    teach(&app, "alpha").await;
    app.embed_json("alpha", "dashboard", &dash("sales-2024", "user-0100"))
        .await;
    // Give the planner a second of ticks.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let next = app.key_of(0, &dash("finance", "user-0100"));
    assert_eq!(app.app.gateway.pool().len(&next), 0);
    let m = app.metrics().await;
    assert_eq!(
        metric(&m, r#"embedgate_urls_fetched_total{reason="follower"}"#),
        0.0
    );
    app.stop().await;
}

/// Behind a load balancer a user's views land on any replica. Each replica of a fleet learns
/// the tenant's paths from the views every replica saw, so the replica that sees a newcomer open
/// sales-2024 stocks finance for them, though every finance view so far went to another
/// replica, and the newcomer's finance, asked of that other replica, comes from the shared pool
/// (and is not stocked again once it is taken).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_learns_paths_from_the_views_every_replica_saw() {
    use std::time::Duration;
    let redis = crate::redis_server::RedisServer::start();
    let fleet = spawn_fleet(2, |s| {
        s.redis.url = Some(redis.url());
        // Not a degraded-mode test: a busy machine must not send a replica to its own state.
        s.redis.timeout_ms = 2_000;
    })
    .await;
    fleet.all_ready(Duration::from_secs(20)).await;
    for i in 0..8 {
        let user = format!("user-{i:04}");
        for (replica, dashboard) in [(0, "sales-2024"), (1, "finance")] {
            let o = fleet.embed(replica, "alpha", &dash(dashboard, &user)).await;
            assert_eq!(o.status, 200, "{}", o.body);
        }
    }
    // Every view is shared once replica 1 has sent two batches since (its planner drains the
    // views it saw, then sends them) and replica 0 has read twice after that.
    for i in [1, 0] {
        redis_calls(&fleet, i, "views", 2).await;
    }
    // On a slow machine the loop above takes long enough for replica 0 to read some users'
    // finance views before it sees later users' sales-2024, and rightly stock finance for them:
    // the newcomer's prediction is counted from what replica 0 fetched once that has settled
    // (two counts a few syncs apart that agree).
    let follower = r#"embedgate_urls_fetched_total{reason="follower"}"#;
    let mut before = fleet.metric(0, follower).await;
    loop {
        redis_calls(&fleet, 0, "sync", 3).await;
        let now = fleet.metric(0, follower).await;
        if now == before {
            break;
        }
        before = now;
    }
    let newcomer = "user-0100";
    let o = fleet.embed(0, "alpha", &dash("sales-2024", newcomer)).await;
    assert_eq!(o.status, 200, "{}", o.body);
    let stocked = fleet.metric_reaches(0, follower, before + 1.0).await;
    assert!(stocked, "replica 0 stocked the newcomer's finance");
    // Counted as its call starts: the URL reaches the shared pool an upstream answer and a put
    // later, which a busy machine can delay. (Not a count of puts: replica 0 may also stock
    // other keys meanwhile, such as the newcomer's sales-2024, asked once.)
    let finance = key_of(&fleet.replicas[0], 0, &dash("finance", newcomer));
    assert!(
        redis.shared_stock_reaches("alpha", Some(&finance), 1).await,
        "replica 0 put the newcomer's finance into the shared pool"
    );
    let o = fleet.embed(1, "alpha", &dash("finance", newcomer)).await;
    assert_eq!(o.status, 200, "{}", o.body);
    assert_eq!(o.body["Source"], "pool", "{}", o.body);
    assert!(
        o.body["EmbedUrl"].as_str().unwrap().contains("finance"),
        "{}",
        o.body
    );
    // The request the prediction announced was served (by replica 1): replica 0, which made the
    // prediction, does not stock the key again for it once its syncs see the URL gone.
    redis_calls(&fleet, 0, "sync", 5).await;
    assert_eq!(
        fleet.metric(0, follower).await,
        before + 1.0,
        "one URL for one predicted request"
    );
    assert_eq!(fleet.metric_sum("embedgate_redis_degraded").await, 0.0);
    fleet.stop().await;
}

/// A view shared through Redis is evidence, never a licence: during a rolling change of a
/// tenant's policy (or from anything else able to write the stream) a replica learns views of a
/// dashboard its own policy for the tenant refuses. It predicts nothing of it: the followers it
/// is allowed to stock still come, the refused one is never fetched or pooled for anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_view_shared_by_another_replica_never_stocks_what_this_ones_policy_refuses() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    let redis = crate::redis_server::RedisServer::start();
    let started = AtomicUsize::new(0);
    let fleet = spawn_fleet(2, |s| {
        s.redis.url = Some(redis.url());
        s.redis.timeout_ms = 2_000;
        // Replica 1 has alpha's narrowed policy: finance is no longer alpha's.
        if started.fetch_add(1, Ordering::SeqCst) == 1 {
            s.tenants[0].policy.dashboards = vec!["sales-2024".into(), "ops-overview".into()];
        }
    })
    .await;
    fleet.all_ready(Duration::from_secs(20)).await;
    // Replica 0 (the old policy) sees alpha's users go sales-2024 → finance and
    // ops-overview → sales-2024.
    for i in 0..8 {
        for (user, path) in [
            (format!("user-{i:04}"), ["sales-2024", "finance"]),
            (
                format!("user-{:04}", 50 + i),
                ["ops-overview", "sales-2024"],
            ),
        ] {
            for d in path {
                let o = fleet.embed(0, "alpha", &dash(d, &user)).await;
                assert_eq!(o.status, 200, "{}", o.body);
            }
        }
    }
    for i in [0, 1] {
        redis_calls(&fleet, i, "views", 2).await;
    }
    // On replica 1 a newcomer lands on sales-2024 (finance would follow), another on
    // ops-overview (sales-2024 follows, and replica 1's policy allows it).
    let (refused, allowed) = ("user-0100", "user-0101");
    for (user, d) in [(refused, "sales-2024"), (allowed, "ops-overview")] {
        let o = fleet.embed(1, "alpha", &dash(d, user)).await;
        assert_eq!(o.status, 200, "{}", o.body);
    }
    let follower = r#"embedgate_urls_fetched_total{reason="follower"}"#;
    let stocked = fleet.metric_reaches(1, follower, 1.0).await;
    assert!(
        stocked,
        "replica 1 learned the shared paths and stocks what it may"
    );
    // Counted as its call starts; pooled a put later (waited for by its key: replica 1 may put
    // other keys meanwhile).
    let next = key_of(&fleet.replicas[1], 0, &dash("sales-2024", allowed));
    assert!(
        redis.shared_stock_reaches("alpha", Some(&next), 1).await,
        "replica 1 put the follower into the shared pool"
    );
    let o = fleet.embed(1, "alpha", &dash("sales-2024", allowed)).await;
    assert_eq!(o.body["Source"], "pool", "{}", o.body);
    // A few more planner passes: still only that one follower fetched, and the newcomer's
    // finance, asked of the replica that still allows it, was in no pool.
    redis_calls(&fleet, 1, "sync", 5).await;
    assert_eq!(fleet.metric(1, follower).await, 1.0);
    let o = fleet.embed(1, "alpha", &dash("finance", refused)).await;
    assert_eq!(
        o.status, 403,
        "replica 1 refuses finance to alpha: {}",
        o.body
    );
    let o = fleet.embed(0, "alpha", &dash("finance", refused)).await;
    assert_eq!(o.status, 200, "{}", o.body);
    assert_ne!(o.body["Source"], "pool", "{}", o.body);
    assert_eq!(fleet.metric_sum("embedgate_redis_degraded").await, 0.0);
    fleet.stop().await;
}

/// Waits until replica `i` has made `n` more Redis calls of `op` (each planner tick makes one
/// `views` and one `sync` call): what it had to send by now is sent, and read back.
async fn redis_calls(fleet: &TestFleet, i: usize, op: &str, n: u32) {
    let sample = format!("embedgate_redis_duration_seconds_count{{op=\"{op}\"}}");
    let before = fleet.metric(i, &sample).await;
    let done = fleet
        .metric_reaches(i, &sample, before + f64::from(n))
        .await;
    assert!(done, "replica {i} makes a {op} call every tick");
}

/// Views a replica saw while Redis was down still teach the fleet: it keeps them (for as long
/// as the learner can pair them) and sends them once Redis answers, so the other replica,
/// which saw none of them, stocks the learned follower for a newcomer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn views_seen_while_redis_was_down_reach_the_fleet_when_it_returns() {
    use std::time::Duration;
    let mut redis = crate::redis_server::RedisServer::start();
    let fleet = spawn_fleet(2, |s| {
        s.redis.url = Some(redis.url());
        s.redis.timeout_ms = 2_000;
    })
    .await;
    fleet.all_ready(Duration::from_secs(20)).await;
    redis.kill();
    for i in 0..8 {
        let user = format!("user-{i:04}");
        for d in ["sales-2024", "finance"] {
            let o = fleet.embed(1, "alpha", &dash(d, &user)).await;
            assert_eq!(o.status, 200, "{}", o.body);
        }
    }
    assert_eq!(fleet.readiness(1).await, "degraded");
    // Replica 1's learner has taken the views in (its planner drained them) before Redis is back.
    let learned = eventually(Duration::from_secs(20), || async {
        fleet.replicas[1].gateway.session_stats().1 >= 8
    })
    .await;
    assert!(learned, "replica 1 learned its users' views while degraded");
    assert_eq!(fleet.readiness(1).await, "degraded", "still without Redis");
    redis.restart();
    fleet.all_ready(Duration::from_secs(20)).await;
    for i in [1, 0] {
        redis_calls(&fleet, i, "views", 2).await;
    }
    let o = fleet
        .embed(0, "alpha", &dash("sales-2024", "user-0100"))
        .await;
    assert_eq!(o.status, 200, "{}", o.body);
    let follower = r#"embedgate_urls_fetched_total{reason="follower"}"#;
    let stocked = fleet.metric_reaches(0, follower, 1.0).await;
    assert!(
        stocked,
        "replica 0 learned the path from views sent after the outage"
    );
    fleet.stop().await;
}
