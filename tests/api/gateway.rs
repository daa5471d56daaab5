//! The gateway end to end: through its HTTP API, against the in-process simulator.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use embedgate::clock::Clock;
use embedgate::metrics::Fetch;
use embedgate::pool::PooledUrl;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_64_clients_with_prefetch_active() {
    const REQUESTS: usize = 6_000;
    let started = std::time::Instant::now();
    let app = spawn_app(|s| {
        s.upstream.rate_per_sec = 5000.0;
        s.upstream.burst = 500;
        s.upstream.max_concurrency = 128;
        s.refill.concurrency = 64;
    })
    .await;
    let keys = [
        ("sales-2024", "alice"),
        ("sales-2024", "bob"),
        ("finance", "alice"),
        ("ops-overview", "carol"),
    ];
    let app = Arc::new(app);
    let results = futures::stream::iter(0..REQUESTS)
        .map(|i| {
            let app = app.clone();
            let (d, u) = keys[i % keys.len()];
            async move {
                let r = app.embed("alpha", "dashboard", &dash(d, u)).await;
                assert_eq!(r.headers()["cache-control"], "no-store");
                let status = r.status();
                let body: Value = r.json().await.unwrap();
                (status, body)
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let mut urls = Vec::new();
    let mut pooled = 0;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
        urls.push(body["EmbedUrl"].as_str().unwrap().to_string());
        pooled += usize::from(body["Source"] == "pool");
    }
    let distinct: HashSet<&String> = urls.iter().collect();
    assert_eq!(
        distinct.len(),
        urls.len(),
        "every URL in a 2xx response is distinct"
    );
    // How much prefetch served depends on the machine's load: a figure, not an assertion.
    eprintln!("{pooled} of {REQUESTS} served from the pool");

    // Redeem every URL at the simulator: no double and no late redemption.
    let http = http();
    let statuses = futures::stream::iter(urls.clone())
        .map(|u| {
            let http = http.clone();
            async move { http.get(&u).send().await.unwrap().status() }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    assert!(statuses.iter().all(|s| *s == 200));
    let ledger = app.sim.sim.ledger();
    assert_eq!(ledger.redeemed, REQUESTS as u64);
    assert_eq!((ledger.double_redemptions, ledger.late_redemptions), (0, 0));
    // Every URL had min_remaining_secs left at hand-out, at most this long ago.
    let since = started.elapsed().as_millis() as u64;
    let promised = app.app.gateway.settings().pool.min_remaining_secs * 1000;
    let least = ledger.min_validity_left_ms.unwrap();
    assert!(
        least + since >= promised,
        "{least} ms left at opening, {since} ms into the run"
    );
    Arc::try_unwrap(app).ok().unwrap().stop().await;
}

#[tokio::test]
async fn a_url_below_min_remaining_is_never_handed_out_and_counts_as_waste() {
    let clock = Clock::manual();
    let app = spawn_app_with(clock.clone(), |s| s.refill.enabled = false).await;
    let gw = &app.app.gateway;
    let tenant = gw.tenants().get(0);
    let req = gw
        .admit(
            tenant,
            embedgate::model::parse_request(
                embedgate::model::Operation::GetDashboardEmbedUrl,
                dash("sales-2024", "alice").to_string().as_bytes(),
            )
            .unwrap(),
        )
        .unwrap();
    let key = gw.key_for(tenant, &req);
    // Two real URLs from the simulator: one issued 241 s ago by our clock, one just now.
    let now = clock.now_ms();
    let mut real = vec![];
    for _ in 0..2 {
        let r = gw.upstreams().of(&req).fetch(&req, &clock).await.unwrap();
        real.push(r.url);
    }
    gw.pool()
        .put(
            &key,
            0,
            PooledUrl {
                url: real[0].clone(),
                issued_at_ms: now,
                anonymous_user_arn: None,
                fetched_for: Fetch::Warm,
            },
        )
        .unwrap();
    clock.advance(1_000);
    gw.pool()
        .put(
            &key,
            0,
            PooledUrl {
                url: real[1].clone(),
                issued_at_ms: now + 1_000,
                anonymous_user_arn: None,
                fetched_for: Fetch::Warm,
            },
        )
        .unwrap();
    clock.advance(240_000 - 1_000 + 1); // first URL: 59.999 s left; second: 60.999 s

    let body: Value = app
        .embed_json("alpha", "dashboard", &dash("sales-2024", "alice"))
        .await;
    assert_eq!(body["Source"], "pool");
    assert_eq!(
        body["EmbedUrl"],
        real[1].as_str(),
        "the stale URL is skipped"
    );
    let body: Value = app
        .embed_json("alpha", "dashboard", &dash("sales-2024", "alice"))
        .await;
    assert_eq!(
        body["Source"], "upstream",
        "the stale URL is never handed out"
    );
    assert_ne!(body["EmbedUrl"], real[0].as_str());
    assert_eq!(
        metric(
            &app.metrics().await,
            "embedgate_urls_wasted_total{fetched_for=\"warm\",reason=\"expired\"}"
        ),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_steady_stream_on_a_hot_key_is_served_from_the_pool() {
    let app = spawn_app(|_| {}).await;
    let mut sources = vec![];
    for _ in 0..300 {
        let body: Value = app
            .embed_json("alpha", "dashboard", &dash("sales-2024", "alice"))
            .await;
        sources.push(body["Source"].as_str().unwrap().to_string());
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let late = &sources[100..];
    let hits = late.iter().filter(|s| *s == "pool").count();
    assert!(
        hits * 100 >= late.len() * 90,
        "after warm-up {hits}/{} from the pool",
        late.len()
    );
    app.stop().await;
}

/// The quick start, tried as a new user: three requests for one dashboard a second apart. The
/// key is a stream by then and is stocked, but for what its requests showed: two requests after
/// the first are no evidence for ten seconds of demand at one a second (`refill.surplus_secs`),
/// and the nine URLs stocked on that expired unused when the user stopped.
#[tokio::test]
async fn a_key_asked_three_times_a_second_apart_is_stocked_for_what_it_showed() {
    let app = spawn_app(|s| s.refill.sessions = false).await;
    let gw = app.app.gateway.clone();
    let body = dash("sales-2024", "alice");
    let key = app.key_of(0, &body);
    for _ in 0..3 {
        app.embed_json("alpha", "dashboard", &body).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        app.eventually(10, || gw.pool().len(&key) >= 1).await,
        "a stream is stocked"
    );
    // Give the planner ten ticks to stock what it wants.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stocked = gw.pool().len(&key);
    assert!(stocked <= 3, "{stocked} URLs stocked on three requests");
    app.stop().await;
}

#[tokio::test]
async fn a_hinted_key_is_served_from_the_pool_on_its_first_request() {
    let app = spawn_app(|_| {}).await;
    let r = app.hint("alpha", &dash("finance", "bob")).await;
    assert_eq!(r.status(), 202);
    let gw = app.app.gateway.clone();
    let key = app.key_of(0, &dash("finance", "bob"));
    assert!(
        app.eventually(10, || gw.pool().len(&key) >= 1).await,
        "the hint was pre-fetched"
    );
    let body: Value = app
        .embed_json("alpha", "dashboard", &dash("finance", "bob"))
        .await;
    assert_eq!(body["Source"], "pool");
    app.stop().await;
}

#[tokio::test]
async fn a_tenant_cannot_reach_outside_its_policy_and_quicksight_is_never_called() {
    let app = spawn_app(|s| {
        s.tenants[0].policy.dashboards = vec!["sales-*".into()];
        s.tenants[0].policy.user_arns =
            vec![format!("arn:aws:quicksight:*:{ACCOUNT}:user/default/a*")];
        s.refill.enabled = false;
    })
    .await;
    let anon = |tags: Value| {
        json!({
            "Namespace": "default",
            "AuthorizedResourceArns": [dashboard_arn("sales-2024")],
            "ExperienceConfiguration": {"Dashboard": {"InitialDashboardId": "sales-2024"}},
            "SessionTags": tags,
        })
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("dashboard", dash("finance", "alice"), "DashboardId"),
        (
            "dashboard",
            json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS", "AdditionalDashboardIds": ["finance"]}),
            "AdditionalDashboardIds[0]",
        ),
        (
            "dashboard",
            json!({"DashboardId": "sales-2024", "IdentityType": "QUICKSIGHT", "UserArn": user_arn("bob")}),
            "UserArn",
        ),
        (
            "dashboard",
            json!({"DashboardId": "sales-2024", "IdentityType": "IAM"}),
            "IdentityType",
        ),
        (
            "dashboard",
            json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS", "Namespace": "acme"}),
            "Namespace",
        ),
        (
            "dashboard",
            json!({"AwsAccountId": "444455556666", "DashboardId": "sales-2024", "IdentityType": "ANONYMOUS"}),
            "AwsAccountId",
        ),
        (
            "anonymous-user",
            anon(json!([{"Key": "tenant", "Value": "beta"}])),
            "SessionTags[0]",
        ),
        (
            "anonymous-user",
            anon(json!([{"Key": "role", "Value": "admin"}])),
            "SessionTags[0]",
        ),
        (
            "registered-user",
            json!({"UserArn": user_arn("alice"), "ExperienceConfiguration": {"QuickSightConsole": {"InitialPath": "/start"}}}),
            "ExperienceConfiguration.QuickSightConsole",
        ),
    ];
    for (kind, body, field) in cases {
        let r = app.embed("alpha", kind, &body).await;
        assert_eq!(r.status(), 403, "{body}");
        let p: Value = r.json().await.unwrap();
        assert_eq!(
            (p["code"].as_str(), p["field"].as_str()),
            (Some("forbidden_by_policy"), Some(field)),
            "{body}"
        );
    }
    assert_eq!(
        app.sim.sim.ledger().calls,
        0,
        "no upstream call for any denied request"
    );
    app.stop().await;
}

#[tokio::test]
async fn two_tenants_asking_for_the_same_key_never_receive_each_others_pooled_urls() {
    let app = spawn_app(|s| {
        s.tenants[0].warm = vec![warm(dash("sales-2024", "alice"), 5)];
    })
    .await;
    let gw = app.app.gateway.clone();
    let alpha_key = app.key_of(0, &dash("sales-2024", "alice"));
    assert_ne!(alpha_key, app.key_of(1, &dash("sales-2024", "alice")));
    assert!(app.eventually(10, || gw.pool().len(&alpha_key) >= 5).await);
    // From now on QuickSight fails every call: nothing can be fetched or restocked for anyone,
    // so the only URLs beta could get are alpha's five, and alpha's stock can only shrink.
    // (With QuickSight answering, beta's own key may be stocked after its first request and
    // serve it from the pool, which says nothing about isolation.)
    app.sim
        .sim
        .update_knobs(&json!({"error_rate": 1.0}))
        .unwrap();
    for _ in 0..5 {
        let r = app
            .embed("beta", "dashboard", &dash("sales-2024", "alice"))
            .await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_ne!(status, 200, "beta never gets alpha's pooled URL: {body}");
    }
    assert_eq!(gw.pool().len(&alpha_key), 5, "alpha's pool is untouched");
    app.stop().await;
}

#[tokio::test]
async fn a_tenant_over_its_rate_gets_429_with_headers_while_another_is_unaffected() {
    let app = spawn_app(|s| {
        s.tenants[0].rate_per_sec = 1.0;
        s.tenants[0].burst = 5;
    })
    .await;
    let mut limited = 0;
    for i in 0..10 {
        let r = app
            .embed("alpha", "dashboard", &dash("sales-2024", "alice"))
            .await;
        if i < 5 {
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["ratelimit-policy"], "\"tenant\";q=5;w=5");
        } else {
            assert_eq!(r.status(), 429);
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&retry));
            assert!(r.headers()["ratelimit"]
                .to_str()
                .unwrap()
                .starts_with("\"tenant\";r=0;t="));
            assert_eq!(r.headers()["ratelimit-policy"], "\"tenant\";q=5;w=5");
            assert_eq!(r.headers()["content-type"], "application/problem+json");
            assert_eq!(r.headers()["cache-control"], "no-store");
            let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
            let p: Value = r.json().await.unwrap();
            assert_eq!(
                p,
                serde_json::json!({
                    "code": "rate_limited",
                    "detail": "this tenant is over its rate of 1 requests/s",
                    "requestId": id,
                    "status": 429,
                    "title": "Too Many Requests",
                    "type": "urn:embedgate:problem:rate_limited",
                })
            );
            limited += 1;
        }
        let other = app
            .embed("beta", "dashboard", &dash("sales-2024", "alice"))
            .await;
        assert_eq!(other.status(), 200, "beta is unaffected");
    }
    assert_eq!(limited, 5);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_upstream_throttling_the_gateway_settles_below_the_throttle_and_recovers() {
    let app = spawn_app(|s| {
        s.upstream.rate_per_sec = 40.0;
        s.upstream.burst = 10;
        s.upstream.min_rate_per_sec = 2.0;
        s.upstream.recovery_per_sec = 1.0;
        s.api.miss_timeout_ms = 1_000;
        s.refill.enabled = false;
    })
    .await;
    app.sim
        .sim
        .update_knobs(&json!({"throttle_rps": 10, "throttle_burst": 10}))
        .unwrap();
    let app = Arc::new(app);
    // Heavy miss load: every request is for a distinct user, so nothing can be pooled.
    let run = |from: usize, n: usize| {
        let app = app.clone();
        async move {
            futures::stream::iter(from..from + n)
                .map(|i| {
                    let app = app.clone();
                    async move {
                        let started = Instant::now();
                        let r = app
                            .embed(
                                "alpha",
                                "dashboard",
                                &dash("sales-2024", &format!("user-{:04}", i % 1000)),
                            )
                            .await;
                        (r.status().as_u16(), started.elapsed())
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<_>>()
                .await
        }
    };
    let first = run(0, 400).await;
    let before = app.sim.sim.ledger();
    let window = Instant::now();
    let second = run(400, 600).await;
    let after = app.sim.sim.ledger();
    let secs = window.elapsed().as_secs_f64();
    let calls = (after.calls - before.calls) as f64;
    let throttled = (after.throttled - before.throttled) as f64;
    assert!(
        calls / secs <= 10.0 * 1.5,
        "upstream call rate settled near the throttle: {:.1}/s",
        calls / secs
    );
    assert!(
        throttled <= calls * 0.25,
        "few calls are throttled once settled: {throttled}/{calls}"
    );
    for (status, elapsed) in first.iter().chain(&second) {
        // 503: budget exhausted or throttled; 504: a call that outlived the miss bound.
        assert!([200, 503, 504].contains(status), "{status}");
        assert!(
            *elapsed < Duration::from_millis(2_500),
            "answered within the miss bound: {elapsed:?}"
        );
    }
    assert!(
        second.iter().any(|(s, _)| *s == 503),
        "callers got 503s rather than hangs"
    );

    app.sim
        .sim
        .update_knobs(&json!({"throttle_rps": null}))
        .unwrap();
    let recovered = eventually(Duration::from_secs(40), || async {
        run(0, 10).await.iter().all(|(s, _)| *s == 200)
    })
    .await;
    assert!(recovered, "service recovers when the throttle lifts");
    Arc::try_unwrap(app).ok().unwrap().stop().await;
}

#[tokio::test]
async fn with_quicksight_hanging_or_failing_pool_hits_continue_and_misses_fail_within_the_bound() {
    let app = spawn_app(|s| {
        s.tenants[0].warm = vec![warm(dash("sales-2024", "alice"), 5)];
        s.api.miss_timeout_ms = 2_500;
        s.upstream.timeout_ms = 2_000;
    })
    .await;
    // The bounds are far apart from what a broken path would take (a hit held behind an upstream
    // call takes the upstream timeout, a miss without a bound the simulator's hour-long hang), so
    // a busy machine's slow answer is no failure.
    let upstream_timeout = Duration::from_millis(2_000);
    let gw = app.app.gateway.clone();
    let key = app.key_of(0, &dash("sales-2024", "alice"));
    assert!(app.eventually(10, || gw.pool().len(&key) >= 5).await);
    app.sim
        .sim
        .update_knobs(&json!({"hang_rate": 1.0}))
        .unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let body: Value = app
            .embed_json("alpha", "dashboard", &dash("sales-2024", "alice"))
            .await;
        assert_eq!(
            body["Source"], "pool",
            "hits are served while QuickSight hangs"
        );
        assert!(
            started.elapsed() < upstream_timeout,
            "a hit waits for no upstream call: {:?}",
            started.elapsed()
        );
    }
    let started = Instant::now();
    let r = app
        .embed("alpha", "dashboard", &dash("finance", "bob"))
        .await;
    assert_eq!(r.status(), 504);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["code"], "upstream_timeout");
    assert!(
        started.elapsed() < upstream_timeout + Duration::from_secs(3),
        "a miss ends at the upstream timeout: {:?}",
        started.elapsed()
    );

    app.sim
        .sim
        .update_knobs(&json!({"hang_rate": 0.0, "error_rate": 1.0}))
        .unwrap();
    let r = app
        .embed("alpha", "dashboard", &dash("finance", "carol"))
        .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["code"], "upstream_unavailable");
    app.stop().await;
}

#[tokio::test]
async fn upstream_permanent_errors_keep_their_meaning() {
    let app = spawn_app(|s| s.refill.enabled = false).await;
    let r = app
        .embed("alpha", "dashboard", &dash("no-such-dashboard", "alice"))
        .await;
    assert_eq!(r.status(), 404);
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        (p["code"].as_str(), p["upstreamCode"].as_str()),
        (
            Some("upstream_not_found"),
            Some("ResourceNotFoundException")
        )
    );
    let r = app
        .embed("alpha", "dashboard", &dash("sales-2024", "nobody"))
        .await;
    assert_eq!(r.status(), 404);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["upstreamCode"], "QuickSightUserNotFoundException");
    app.stop().await;
}

#[tokio::test]
async fn a_408_on_a_timed_out_upstream_connection_is_sent_once_more_and_the_caller_gets_its_url() {
    let app = spawn_app(|s| s.refill.enabled = false).await;
    let sim = &app.sim.sim;
    sim.update_knobs(&json!({"idle_timeout_next": 1})).unwrap();
    let r = app
        .embed("alpha", "dashboard", &dash("sales-2024", "alice"))
        .await;
    assert_eq!(r.status(), 200, "the caller never sees the 408");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["Source"], "upstream");
    assert_eq!(
        sim.knobs().idle_timeout_next,
        0,
        "the first attempt met a 408"
    );
    assert_eq!(
        sim.ledger().issued_total,
        1,
        "the second attempt was served"
    );

    // A front end that keeps answering 408 is unavailable, retryable: not a refusal.
    sim.update_knobs(&json!({"idle_timeout_next": 2})).unwrap();
    let r = app
        .embed("alpha", "dashboard", &dash("sales-2024", "bob"))
        .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["code"], "upstream_unavailable");
    assert_eq!(sim.ledger().issued_total, 1);
    app.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let app = spawn_app(|s| s.refill.enabled = false).await;
    app.sim
        .sim
        .update_knobs(&json!({"latency_ms": 400}))
        .unwrap();
    let http = app.http.clone();
    let url = format!("{}/v1/embed-url/dashboard", app.base);
    let request = tokio::spawn(async move {
        http.post(url)
            .bearer_auth("alpha-key")
            .json(&dash("sales-2024", "alice"))
            .send()
            .await
    });
    let gw = app.app.gateway.clone();
    assert!(
        app.eventually(10, || gw.metrics().upstream_in_flight.get() >= 1.0)
            .await,
        "the request reached QuickSight"
    );
    let TestApp {
        app: gateway, sim, ..
    } = app;
    gateway.stop().await;
    let resp = request
        .await
        .unwrap()
        .expect("the in-flight request was answered");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["Source"], "upstream");
    sim.stop().await;
}

/// A miss whose caller stops waiting at the miss deadline leaves its QuickSight call running:
/// the URL it brings back goes into the pool, and the next request for the key is served from
/// it, with one QuickSight call for both and the URL opened once. Before, the call was dropped
/// with the request and the next request asked QuickSight again.
#[tokio::test]
async fn a_miss_that_outlives_its_deadline_pools_its_url_for_the_next_request() {
    let app = spawn_app(|s| {
        s.refill.enabled = false;
        s.api.miss_timeout_ms = 300;
        s.upstream.timeout_ms = 10_000;
    })
    .await;
    let sim = &app.sim.sim;
    // Far beyond the deadline, so the caller's 504 comes first however busy the machine is.
    sim.update_knobs(&json!({"latency_ms": 3_000})).unwrap();
    let body = dash("sales-2024", "alice");
    let r = app.embed("alpha", "dashboard", &body).await;
    assert_eq!(r.status(), 504);
    let gw = app.app.gateway.clone();
    let key = app.key_of(0, &body);
    assert!(
        app.eventually(10, || gw.pool().len(&key) == 1).await,
        "the call went on, and its URL was pooled"
    );
    let served: Value = app.embed_json("alpha", "dashboard", &body).await;
    assert_eq!(served["Source"], "pool", "{served}");
    assert_eq!(
        sim.ledger().calls,
        1,
        "one QuickSight call for both requests"
    );
    let url = served["EmbedUrl"].as_str().unwrap();
    assert_eq!(http().get(url).send().await.unwrap().status(), 200);
    let ledger = sim.ledger();
    assert_eq!((ledger.redeemed, ledger.double_redemptions), (1, 0));
    let m = app.metrics().await;
    assert_eq!(
        metric_total(&m, "embedgate_urls_fetched_total", "reason=\"miss\""),
        1.0,
        "the call's URL is counted fetched once"
    );
    app.stop().await;
}

/// A client that gives up on a slow miss and asks again at once (a portal's timeout and retry)
/// is answered by the QuickSight call its first request started, which goes on without it: the
/// retry waits for that call instead of starting another, and gets its URL.
#[tokio::test]
async fn a_client_that_resets_and_asks_again_gets_the_url_its_first_request_waited_for() {
    gives_up_and_asks_again(GiveUp::Reset).await;
}

/// The same for a client that closes its connection normally (a FIN, as most HTTP clients do at
/// their timeout). Before, the gateway took that for a half-close, kept the request waiting and
/// wrote its URL to the closed socket: lost, counted as served, and the retry asked QuickSight
/// again.
#[tokio::test]
async fn a_client_that_closes_and_asks_again_gets_the_url_its_first_request_waited_for() {
    gives_up_and_asks_again(GiveUp::Close).await;
}

async fn gives_up_and_asks_again(how: GiveUp) {
    let app = spawn_app(|s| {
        // The key is tracked, but the planner stocks nothing for it, whenever it ticks: no
        // prediction or rate is ever that likely.
        s.refill.min_probability = 1.0;
        s.refill.predict_min_probability = 1.0;
        s.refill.sessions = false;
        s.upstream.timeout_ms = 30_000;
        s.api.miss_timeout_ms = 40_000;
    })
    .await;
    let sim = &app.sim.sim;
    // Long enough for the client to see the call in flight and reset before it is answered.
    sim.update_knobs(&json!({"latency_ms": 5_000})).unwrap();
    let body = dash("sales-2024", "alice");
    let m = give_up_native_request_while_quicksight_answers(&app, &body, how).await;
    assert_eq!(
        metric(&m, "embedgate_upstream_in_flight"),
        1.0,
        "the call outlived its client"
    );
    let served: Value = app.embed_json("alpha", "dashboard", &body).await;
    assert_eq!(served["Source"], "pool", "{served}");
    assert_eq!(sim.ledger().calls, 1, "the retry made no call of its own");
    let url = served["EmbedUrl"].as_str().unwrap();
    assert_eq!(http().get(url).send().await.unwrap().status(), 200);
    let ledger = sim.ledger();
    assert_eq!((ledger.redeemed, ledger.double_redemptions), (1, 0));
    let m = app.metrics().await;
    assert_eq!(metric(&m, "embedgate_upstream_in_flight"), 0.0);
    assert_eq!(
        metric(&m, "embedgate_pool_urls"),
        0.0,
        "nothing left pooled"
    );
    app.stop().await;
}

/// Reads one HTTP/1.1 answer (headers and a `content-length` body) from `stream`: (status, head).
async fn read_answer(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                buf.drain(..end + 4 + len);
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, head);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the gateway closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A body that has not arrived within `api.body_timeout_ms` is not waited for: a request that
/// needs it is answered 408 `body_timeout`, one refused before its body was needed gets its
/// refusal, and either way the connection closes. Otherwise a client trickling bodies (with a
/// key or without one) holds a connection and a handler for as long as it likes, and enough of
/// them take every connection the gateway has.
#[tokio::test]
async fn a_body_that_does_not_arrive_is_not_waited_for() {
    let app = spawn_app(|s| {
        s.api.body_timeout_ms = 300;
        s.refill.enabled = false;
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    for (key, want, code) in [
        (app.keys["alpha"].as_str(), 408, Some("body_timeout")),
        ("not-a-key", 401, None),
    ] {
        // 100 bytes declared, 20 sent, and then nothing.
        let (answer, took) = send_and_stall(
            &addr,
            &format!(
                "POST /v1/embed-url/dashboard HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"DashboardId\": \"sal"
            ),
        )
        .await;
        let status: u16 = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(status, want, "{answer}");
        assert!(
            took >= Duration::from_millis(250),
            "the body was given its time"
        );
        if let Some(code) = code {
            let body = answer.split("\r\n\r\n").nth(1).unwrap();
            let problem: Value = serde_json::from_str(body).unwrap();
            assert_eq!(problem["code"], code, "{answer}");
            assert!(
                problem["detail"]
                    .as_str()
                    .unwrap()
                    .contains("api.body_timeout_ms"),
                "the detail names the setting: {answer}"
            );
        }
    }
    assert_eq!(app.sim.sim.ledger().calls, 0, "nothing went upstream");
    app.stop().await;
}

/// A load balancer or a portal's HTTP client keeps idle connections to the gateway open and
/// sends the next request on one whenever it likes, up to its own idle timeout (60 s for an AWS
/// ALB). A gateway that closes an idle connection sooner (actix-web's default is 5 s) races it:
/// a request sent as the connection closes is lost (a 502 at the ALB; a POST many clients will
/// not resend). The gateway keeps an idle connection `api.keep_alive_secs` (75 s, as nginx), so
/// the client's timeout ends first; set lower, it closes one idle that long.
#[tokio::test]
async fn an_idle_connection_is_kept_longer_than_a_load_balancer_keeps_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn healthz(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> u16 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        read_answer(stream, buf).await.0
    }
    let app = spawn_app(|s| s.refill.enabled = false).await;
    let short = spawn_app(|s| {
        s.refill.enabled = false;
        s.api.keep_alive_secs = 1;
    })
    .await;
    let mut kept = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let mut closed = tokio::net::TcpStream::connect(short.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    assert_eq!(healthz(&mut kept, &mut a).await, 200);
    assert_eq!(healthz(&mut closed, &mut b).await, 200);
    // Idle past actix-web's default of 5 s.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        healthz(&mut kept, &mut a).await,
        200,
        "the idle connection is still served"
    );
    let mut rest = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), closed.read(&mut rest))
        .await
        .expect("the short keep-alive closed the idle connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed, not answered");
    app.stop().await;
    short.stop().await;
}

/// A body that arrives in pieces (a slow client, a proxy that forwards as it reads) is read
/// whole: the gateway answers the request the pieces make, not the first of them.
#[tokio::test]
async fn a_body_sent_in_pieces_is_read_whole() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app(|s| s.refill.enabled = false).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = Vec::new();
    for user in ["alice", "bob"] {
        let body = dash("sales-2024", user).to_string();
        let head = format!(
            "POST /v1/embed-url/dashboard HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            app.keys["alpha"],
            body.len()
        );
        let (a, b) = body.split_at(10);
        let (b, c) = b.split_at(b.len() / 2);
        for piece in [head.as_str(), a, b, c] {
            stream.write_all(piece.as_bytes()).await.unwrap();
            stream.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, head) = read_answer(&mut stream, &mut buf).await;
        assert_eq!(status, 200, "{head}");
    }
    let ledger = app.sim.sim.ledger();
    assert_eq!(ledger.calls, 2, "one call for each whole request");
    app.stop().await;
}

/// A body sent without a declared length (chunked) is held to `api.max_body_bytes` as it
/// arrives: over the bound it is refused with 413 and nothing goes upstream.
#[tokio::test]
async fn a_chunked_body_over_the_bound_is_refused_as_it_arrives() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app(|s| {
        s.api.max_body_bytes = 1024;
        s.refill.enabled = false;
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/embed-url/dashboard HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        app.keys["alpha"]
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // A valid request padded past the bound with spaces, in two chunks of 800 bytes.
    let body = format!("{:<1600}", dash("sales-2024", "alice").to_string());
    for piece in [&body[..800], &body[800..]] {
        let chunk = format!("{:x}\r\n{piece}\r\n", piece.len());
        stream.write_all(chunk.as_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let (status, head) = read_answer(&mut stream, &mut buf).await;
    assert_eq!(status, 413, "{head}");
    assert_eq!(app.sim.sim.ledger().calls, 0, "nothing went upstream");
    app.stop().await;
}

#[tokio::test]
async fn refusals_keep_the_clients_connection_open() {
    // A refused request's body is left unread by the handler (a bad key or a tenant over its
    // limit is refused before the body is parsed); the connection must still serve the client's
    // next request instead of closing, or every 429 would cost a throttled client a reconnect.
    use tokio::io::AsyncWriteExt;
    let app = spawn_app(|s| {
        s.tenants[0].rate_per_sec = 0.001;
        s.tenants[0].burst = 1;
    })
    .await;
    let body = dash("sales-2024", "alice").to_string();
    let request = |key: &str, content_type: &str| {
        format!(
            "POST /v1/embed-url/dashboard HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = Vec::new();
    let alpha = app.keys["alpha"].clone();
    let beta = app.keys["beta"].clone();
    for (key, content_type, want) in [
        (alpha.as_str(), "application/json", 200),
        (alpha.as_str(), "application/json", 429),
        ("not-a-key", "application/json", 401),
        (beta.as_str(), "text/plain", 415),
        (beta.as_str(), "application/json", 200),
    ] {
        stream
            .write_all(request(key, content_type).as_bytes())
            .await
            .unwrap();
        let (status, head) = read_answer(&mut stream, &mut buf).await;
        assert_eq!(status, want, "{head}");
        assert!(!head.contains("connection: close"), "{head}");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_idle_upstream_connection_is_closed_before_the_front_end_would_close_it() {
    // The simulator, like many front ends, closes a keep-alive connection after 5 s idle. A call
    // written on a connection just as the server closes it fails; the gateway must give up an
    // idle connection first and open a new one.
    let sim = spawn_sim();
    let endpoint = Endpoint::start(sim.addr.port()).await;
    let mut settings = gateway_settings(&format!("http://127.0.0.1:{}", endpoint.port));
    settings.upstream.endpoint_url = Some(format!("http://127.0.0.1:{}", endpoint.port));
    let metrics = Arc::new(embedgate::metrics::Metrics::new());
    let upstream = embedgate::upstream::Upstream::new(&settings.upstream, 1, metrics).await;
    let mut body = dash("sales-2024", "alice");
    body["AwsAccountId"] = ACCOUNT.into();
    let req = embedgate::model::parse_request(
        embedgate::model::Operation::GetDashboardEmbedUrl,
        body.to_string().as_bytes(),
    )
    .unwrap();
    upstream.fetch(&req, &Clock::System).await.unwrap();
    upstream.fetch(&req, &Clock::System).await.unwrap();
    // (Usually one connection so far; the second call may open another if the first one was not
    // back in the pool yet.)
    let before = endpoint.accepted();
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    upstream.fetch(&req, &Clock::System).await.unwrap();
    assert_eq!(
        endpoint.accepted(),
        before + 1,
        "after 4.5 s idle (under the server's 5 s) the call went on a new connection"
    );
    sim.stop().await;
}

/// Clients that give up at random moments (a portal's backend at its timeout, closing or
/// resetting the connection: while the request waits for the budget, for a prefetch it joined,
/// for its own QuickSight call, or as the answer is written) leave every URL QuickSight minted in
/// exactly one place: handed out (counted `hit` or `miss`), counted as waste, or still pooled.
/// A URL landed for the key after its request left and also handed to that request would count
/// twice; one thrown away with a request that left would not count at all. Every URL a client
/// did receive is distinct and opens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_url_quicksight_mints_ends_in_one_place_while_clients_give_up_at_random() {
    let keys = [
        ("sales-2024", "alice"),
        ("sales-2024", "bob"),
        ("finance", "alice"),
        ("ops-overview", "carol"),
        ("finance", "carol"),
        ("ops-overview", "bob"),
    ];
    let app = spawn_app(|s| {
        s.upstream.timeout_ms = 20_000;
        s.upstream.max_concurrency = 8; // some misses wait for a slot
        s.refill.concurrency = 4;
        // Prefetches in flight for half the keys, for misses to join.
        s.tenants[0].warm = keys[..3].iter().map(|(d, u)| warm(dash(d, u), 2)).collect();
    })
    .await;
    app.sim
        .sim
        .update_knobs(&json!({"latency_ms": 60.0, "latency_p99_ms": 250.0}))
        .unwrap();
    let addr = app.base.trim_start_matches("http://").to_string();
    let bodies: Vec<Value> = keys.iter().map(|(d, u)| dash(d, u)).collect();
    let (received, given_up) = clients_that_give_up_at_random(&[addr], "alpha-key", &bodies).await;
    assert!(given_up > 100, "clients gave up {given_up} times");
    assert!(received.len() > 100, "{} URLs received", received.len());

    let balance = || async { Balance::of(&app.metrics().await, app.sim.sim.ledger().issued_total) };
    assert_every_url_ends_in_one_place(balance, &received, given_up).await;
    let http = http();
    for url in &received {
        assert_eq!(http.get(url).send().await.unwrap().status(), 200);
    }
    let ledger = app.sim.sim.ledger();
    assert_eq!((ledger.double_redemptions, ledger.late_redemptions), (0, 0));
    app.stop().await;
}
