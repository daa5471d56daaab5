//! Reloading the tenant table while the gateway runs (`SIGHUP`, `Gateway::reload`): keys, rules,
//! inbound limits, quotas and warm keys change for the next request, whatever was admitted or
//! tracked under the old rules; a reload that would change anything else, or is invalid, changes
//! nothing and says why.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;
use crate::redis_server::RedisServer;
use embedgate::config::{Settings, TenantSettings};
use embedgate::gateway::Reloaded;

/// The running gateway's settings, changed by `change`, as a reloaded file would give them.
fn edited(app: &TestApp, change: impl FnOnce(&mut Settings)) -> Settings {
    let mut s = app.app.gateway.settings().clone();
    change(&mut s);
    s
}

/// Reloads replica `i` of `fleet` with its start settings changed by `change`, which must be
/// applied.
fn reload_replica(fleet: &TestFleet, i: usize, change: impl FnOnce(&mut Settings)) {
    let replica = &fleet.replicas[i];
    let mut s = replica.gateway.settings().clone();
    change(&mut s);
    replica
        .gateway
        .reload(s)
        .expect("a valid reload is applied");
}

/// Reloads every replica of `fleet` with its start settings changed by `change`.
fn reload_every_replica(fleet: &TestFleet, change: impl Fn(&mut Settings)) {
    for i in 0..fleet.replicas.len() {
        reload_replica(fleet, i, &change);
    }
}

/// Reloads `app` with its settings changed by `change`, which must be applied.
fn applied(app: &TestApp, change: impl FnOnce(&mut Settings)) -> Reloaded {
    app.app
        .gateway
        .reload(edited(app, change))
        .expect("a valid reload is applied")
}

/// The status and problem `code`/`field` of `body` sent as `tenant`.
async fn answer(app: &TestApp, tenant: &str, body: &serde_json::Value) -> (u16, String, String) {
    answer_as(app, &app.keys[tenant], body).await
}

/// The status and problem `code`/`field` of `body` sent with API key `key`.
async fn answer_as(app: &TestApp, key: &str, body: &serde_json::Value) -> (u16, String, String) {
    let r = app
        .http
        .post(format!("{}/v1/embed-url/dashboard", app.base))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("gateway answers");
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap();
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (status, text("code"), text("field"))
}

/// What the memo of admitted bodies must not outlive: the exact bytes admitted a moment ago, for
/// a dashboard the new policy leaves out, are refused once the policy is reloaded, with
/// QuickSight never called for them.
#[tokio::test]
async fn a_tightened_policy_refuses_the_very_bytes_it_admitted_before() {
    let app = spawn_app(|s| s.refill.enabled = false).await;
    let sales = dash("sales-2024", "alice");
    for _ in 0..3 {
        assert_eq!(answer(&app, "alpha", &sales).await.0, 200);
    }
    let changed = applied(&app, |s| {
        s.tenants[0].policy.dashboards = vec!["finance*".into()]
    });
    assert_eq!(changed.rules_changed, vec!["alpha".to_string()]);
    let calls = app.sim.sim.ledger().calls;
    assert_eq!(
        answer(&app, "alpha", &sales).await,
        (403, "forbidden_by_policy".into(), "DashboardId".into()),
        "the same bytes, admitted three times before the reload"
    );
    assert_eq!(app.sim.sim.ledger().calls, calls, "QuickSight not called");
    assert_eq!(
        answer(&app, "alpha", &dash("finance", "alice")).await.0,
        200
    );
    assert_eq!(
        answer(&app, "beta", &sales).await.0,
        200,
        "another tenant's rules did not change"
    );
    app.stop().await;
}

/// Rotation and revocation without a restart: a key removed from a tenant no longer
/// authenticates on the next request, a key added does, and the other tenants' keys go on.
#[tokio::test]
async fn a_key_removed_by_a_reload_stops_authenticating_and_a_key_added_starts() {
    let app = spawn_app(|s| s.refill.enabled = false).await;
    let body = dash("sales-2024", "alice");
    assert_eq!(answer(&app, "alpha", &body).await.0, 200);
    let new_key = "alpha-rotated-key";
    applied(&app, |s| {
        s.tenants[0].api_key_sha256 = vec![hex::encode(embedgate::tenant::hash_key(new_key))]
    });
    assert_eq!(
        answer(&app, "alpha", &body).await.0,
        401,
        "the removed key is refused"
    );
    assert_eq!(
        answer_as(&app, new_key, &body).await.0,
        200,
        "the added key authenticates alpha"
    );
    assert_eq!(answer(&app, "beta", &body).await.0, 200);
    app.stop().await;
}

/// A reload that would change something only a restart applies (a process setting), or that is
/// invalid, or whose policy refuses one of the tenant's own warm keys, is refused whole: the
/// answer names what, and the old keys and rules stay in force.
#[tokio::test]
async fn a_reload_that_needs_a_restart_or_is_invalid_changes_nothing_and_names_why() {
    let app = spawn_app(|s| {
        s.refill.enabled = false;
        s.tenants[1].warm = vec![warm(dash("sales-2024", "bob"), 1)];
    })
    .await;
    let tightened = |s: &mut Settings| s.tenants[0].policy.dashboards = vec!["finance*".into()];
    type Change = Box<dyn Fn(&mut Settings)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "upstream.rate_per_sec",
            Box::new(|s| s.upstream.rate_per_sec = 1.0),
        ),
        ("pool.max_urls", Box::new(|s| s.pool.max_urls = 10)),
        (
            "listen",
            Box::new(|s| s.listen = "127.0.0.1:1".parse().unwrap()),
        ),
        ("refill.tick_ms", Box::new(|s| s.refill.tick_ms = 50)),
        (
            "pool.min_remaining_secs",
            Box::new(|s| s.pool.min_remaining_secs = 90),
        ),
        (
            "tenants[1].warm[0]",
            Box::new(|s| s.tenants[1].policy.dashboards = vec!["finance*".into()]),
        ),
        (
            "tenants[0].warm[0].DashboardId",
            Box::new(|s| s.tenants[0].warm = vec![warm(dash("sales-2024", "alice"), 1)]),
        ),
        (
            "tenants[0].policy.experiences",
            Box::new(|s| s.tenants[0].policy.experiences = vec!["Dashbord".into()]),
        ),
        (
            "tenants[0].policy.upstreams: \"defualt\" is not the id of an upstream",
            Box::new(|s| s.tenants[0].policy.upstreams = vec!["defualt".into()]),
        ),
    ];
    let sales = dash("sales-2024", "alice");
    for (needle, change) in cases {
        let err = app
            .app
            .gateway
            .reload(edited(&app, |s| {
                tightened(s);
                change(s);
            }))
            .expect_err(needle);
        assert!(err.contains(needle), "{needle:?} named in {err:?}");
        assert_eq!(
            answer(&app, "alpha", &sales).await.0,
            200,
            "{needle}: the old policy still in force"
        );
    }
    let m = app.metrics().await;
    assert_eq!(
        metric(&m, "embedgate_config_reloads_total{result=\"refused\"}"),
        9.0
    );
    assert_eq!(
        metric(&m, "embedgate_config_reloads_total{result=\"applied\"}"),
        0.0
    );
    assert_eq!(metric(&m, "embedgate_config_last_reload_successful"), 0.0);
    applied(&app, tightened);
    let m = app.metrics().await;
    assert_eq!(metric(&m, "embedgate_config_last_reload_successful"), 1.0);
    app.stop().await;
}

/// A tenant's quotas and warm keys change with a reload: a raised `max_hints` takes hints it
/// dropped before and holds at the new figure, a raised `max_pooled_urls` lets a new warm key be
/// stocked to its depth beside what is pooled, a warm key dropped is no longer kept, and
/// `/state` says the new figures.
#[tokio::test]
async fn a_reload_changes_a_tenants_quotas_and_warm_keys_without_a_restart() {
    let (old, new) = (dash("sales-2024", "alice"), dash("finance", "alice"));
    let app = spawn_app(|s| {
        s.tenants[0].max_hints = 1;
        s.tenants[0].max_pooled_urls = 2;
        s.tenants[0].warm = vec![warm(old.clone(), 2)];
    })
    .await;
    let (old_key, new_key) = (app.key_of(0, &old), app.key_of(0, &new));
    let pooled = |key| app.app.gateway.pool().len(key);
    assert!(
        app.eventually(10, || pooled(&old_key) == 2).await,
        "the warm key is stocked: {}",
        app.state(10).await
    );
    let client = &app;
    let accepted = |dashboard: &'static str| async move {
        let r = client.hint("alpha", &dash(dashboard, "bob")).await;
        r.json::<serde_json::Value>().await.unwrap()["Accepted"].as_u64()
    };
    assert_eq!(accepted("finance-1").await, Some(1));
    assert_eq!(accepted("finance-2").await, Some(0), "over max_hints");

    let changed = applied(&app, |s| {
        s.tenants[0].max_hints = 3;
        s.tenants[0].max_pooled_urls = 10;
        s.tenants[0].upstream_weight = 2.0;
        s.tenants[0].warm = vec![warm(new.clone(), 3)];
    });
    assert_eq!(
        (changed.quotas_changed, changed.warm_changed),
        (vec!["alpha".to_string()], vec!["alpha".to_string()])
    );
    assert_eq!(accepted("finance-2").await, Some(1), "the raised max_hints");
    assert_eq!(accepted("finance-3").await, Some(1));
    assert_eq!(
        accepted("finance-4").await,
        Some(0),
        "held at the new figure"
    );
    assert!(
        app.eventually(10, || pooled(&new_key) == 3).await,
        "the new warm key is stocked beside the 2 URLs pooled before: {}",
        app.state(10).await
    );
    assert_eq!(pooled(&old_key), 2, "what was pooled stays");
    let state = app.state(1000).await;
    let listed = |key: &embedgate::pool::PoolKey| {
        state["demand"]["keys"]
            .as_array()
            .is_some_and(|keys| keys.iter().any(|k| k["key"] == key.as_str()))
    };
    assert!(
        !listed(&old_key),
        "the dropped warm key is no longer kept: {state}"
    );
    assert_eq!(app.planned(&new_key).await["reason"], "warm");
    let alpha = &state["tenants"][0];
    assert_eq!(
        [
            &alpha["max_hints"],
            &alpha["max_pooled_urls"],
            &alpha["upstream_weight"]
        ],
        [&json!(3), &json!(10), &json!(2.0)]
    );
    assert_eq!(
        state["tenants"][1]["max_hints"],
        json!(app.app.gateway.settings().tenants[1].max_hints),
        "beta unchanged"
    );
    app.stop().await;
}

/// Tenants come and go with a reload. One added authenticates with its key from the next
/// request and is served under its own limit, with its warm key stocked; one removed is refused
/// from the next request, and its warm key is no longer kept; listed again, it is the same
/// tenant. The tenant listed throughout goes on untouched, and the file's order does not matter.
#[tokio::test]
async fn a_reload_adds_and_removes_tenants_by_id() {
    let (alice, bob, carol) = (
        dash("sales-2024", "alice"),
        dash("sales-2024", "bob"),
        dash("sales-2024", "carol"),
    );
    let app = spawn_app(|s| s.tenants[1].warm = vec![warm(bob.clone(), 1)]).await;
    let beta_warm = app.key_of(1, &bob);
    assert!(
        app.eventually(10, || app.app.gateway.pool().len(&beta_warm) == 1)
            .await
    );
    assert_eq!(answer(&app, "beta", &alice).await.0, 200);
    let beta = app.app.gateway.settings().tenants[1].clone();
    let gamma = TenantSettings {
        rate_per_sec: 0.001,
        burst: 2,
        warm: vec![warm(carol.clone(), 2)],
        ..tenant("gamma", "gamma-key")
    };
    let mut file = edited(&app, |s| {
        s.tenants.remove(1);
        s.tenants.insert(0, gamma.clone());
    });
    let changed = app.app.gateway.reload(file.clone()).unwrap();
    assert_eq!(
        (changed.added, changed.removed),
        (vec!["gamma".to_string()], vec!["beta".to_string()])
    );
    assert_eq!(answer(&app, "beta", &alice).await.0, 401, "beta removed");
    let mut gamma_answers = vec![];
    for _ in 0..3 {
        gamma_answers.push(answer_as(&app, "gamma-key", &alice).await.0);
    }
    assert_eq!(gamma_answers, [200, 200, 429], "gamma's own burst of 2");
    assert_eq!(answer(&app, "alpha", &alice).await.0, 200);
    let gamma_warm = app.key_of(2, &carol);
    assert!(
        app.eventually(10, || app.app.gateway.pool().len(&gamma_warm) == 2)
            .await,
        "gamma's warm key is stocked: {}",
        app.state(10).await
    );
    let state = app.state(1000).await;
    let ids: Vec<&str> = state["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha", "gamma"]);
    assert!(
        !state["demand"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["key"] == beta_warm.as_str()),
        "beta's warm key is no longer kept: {state}"
    );

    let scrape = app.metrics().await;
    assert!(
        !scrape.contains("tenant=\"beta\"") && scrape.contains("tenant=\"gamma\""),
        "the series a scrape sees are the tenants in force: {scrape}"
    );

    file.tenants.push(beta);
    let changed = app.app.gateway.reload(file).unwrap();
    assert_eq!(changed.added, vec!["beta".to_string()]);
    assert_eq!(answer(&app, "beta", &alice).await.0, 200, "beta is back");
    assert_eq!(app.app.gateway.tenants().get(1).id, "beta", "as itself");
    // Served (hit or miss) to beta: one before its removal, one since.
    let served = |scrape: &str| -> u64 {
        scrape
            .lines()
            .filter(|l| l.starts_with("embedgate_requests_total{") && l.contains("tenant=\"beta\""))
            .filter(|l| l.contains("outcome=\"hit\"") || l.contains("outcome=\"miss\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(
        served(&app.metrics().await),
        2,
        "its series are exported again, its counts carried on"
    );
    app.stop().await;
}

/// Requests keep arriving while reloads add tenants, one new one each time, and remove the one
/// before: each request meets one table or the next, never a tenant whose key authenticates
/// before its limiter and bounds exist (that request would find no limiter and fail). Every
/// answer is 200 (the tenant is in force) or 401 (not yet, or no longer), and the tenant that
/// stays is never disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_during_reloads_that_add_and_remove_tenants_meet_one_table_or_the_next() {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let app = spawn_app(|s| {
        s.refill.enabled = false;
        s.api.unauthenticated_rate_per_sec = 1e6;
        s.api.unauthenticated_burst = 1_000_000;
    })
    .await;
    let latest = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    // Answers received, over all clients: each reload waits for a few, however slow the machine.
    let answered = AtomicUsize::new(0);
    let body = dash("sales-2024", "alice");
    // Each client's answers: (sent by the tenant that stays?, status) → how many.
    let client = |id: usize| {
        let (app, latest, done, answered, body) = (&app, &latest, &done, &answered, &body);
        async move {
            let mut seen = BTreeMap::<(bool, u16), usize>::new();
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                let stays = (n + id) % 4 == 0;
                let key = if stays {
                    app.keys["alpha"].clone()
                } else {
                    // The tenant in force, or the one being added.
                    format!("gamma{}-key", latest.load(Ordering::SeqCst) + n % 2)
                };
                let r = app
                    .http
                    .post(format!("{}/v1/embed-url/dashboard", app.base))
                    .bearer_auth(&key)
                    .json(body)
                    .send()
                    .await
                    .expect("the gateway answers every request");
                *seen.entry((stays, r.status().as_u16())).or_default() += 1;
                answered.fetch_add(1, Ordering::SeqCst);
            }
            seen
        }
    };
    let reloads = async {
        for i in 1..=20 {
            let gamma = tenant(&format!("gamma{i}"), &format!("gamma{i}-key"));
            let changed = applied(&app, |s| s.tenants.push(gamma));
            assert_eq!(changed.added, vec![format!("gamma{i}")]);
            latest.store(i, Ordering::SeqCst);
            let before = answered.load(Ordering::SeqCst);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while answered.load(Ordering::SeqCst) < before + 12 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the clients stalled"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        done.store(true, Ordering::SeqCst);
    };
    let ((), a, b, c, d) = tokio::join!(reloads, client(0), client(1), client(2), client(3));
    let mut seen = BTreeMap::<(bool, u16), usize>::new();
    for (k, n) in [a, b, c, d].into_iter().flatten() {
        *seen.entry(k).or_default() += n;
    }
    assert!(
        seen.keys()
            .all(|&(stays, status)| status == 200 || (!stays && status == 401)),
        "answers (the tenant that stays?, status) → count: {seen:?}"
    );
    assert!(
        seen.get(&(false, 200)).is_some_and(|&n| n >= 20),
        "the tenants added were served: {seen:?}"
    );
    assert_eq!(app.state(0).await["tenants"].as_array().unwrap().len(), 3);
    app.stop().await;
}

/// A key tracked for its demand that the reloaded policy refuses is forgotten, and QuickSight is
/// not asked for it again: before, the refiller went on stocking it for the demand its requests
/// had shown under the old policy.
#[tokio::test]
async fn a_key_the_reloaded_policy_refuses_is_no_longer_prefetched() {
    let app = spawn_app(|s| {
        // Stocking a busy key takes a while: five calls a second, two at a time.
        s.upstream.rate_per_sec = 5.0;
        s.upstream.burst = 10;
        s.refill.concurrency = 2;
    })
    .await;
    let body = dash("sales-2024", "alice");
    let key = app.key_of(0, &body);
    // A busy key: its answers do not matter (most miss and wait on the small budget).
    futures::future::join_all((0..20).map(|_| app.embed("alpha", "dashboard", &body))).await;
    assert!(
        app.eventually(10, || app.app.gateway.pool().len(&key) >= 1)
            .await,
        "the busy key is being stocked: {}",
        app.state(10).await
    );
    applied(&app, |s| {
        s.tenants[0].policy.dashboards = vec!["finance-*".into()]
    });
    let forgotten = eventually(Duration::from_secs(10), || async {
        let state = app.state(1000).await;
        !state["demand"]["keys"]
            .as_array()
            .is_some_and(|keys| keys.iter().any(|k| k["key"] == key.as_str()))
    })
    .await;
    assert!(forgotten, "the refused key is no longer tracked");
    let calls = app.sim.sim.ledger().calls;
    // Long enough for ten more prefetches at the upstream's rate, had stocking gone on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let more = app.sim.sim.ledger().calls - calls;
    assert!(
        more <= 2,
        "{more} calls after the key was forgotten: at most the two prefetches already in flight"
    );
    assert_eq!(
        answer(&app, "alpha", &body).await.0,
        403,
        "and its stock is not handed out"
    );
    app.stop().await;
}

/// End to end: `embedgate serve` rereads its config file when it changes (as the kubelet
/// updates a mounted ConfigMap or Secret) and on `SIGHUP`, logs what it applied, and the key the
/// new file no longer lists is refused; a file it cannot apply is logged and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_config_file_or_sighup_reloads_the_tenant_table() {
    let sim = spawn_sim();
    let dir = std::env::temp_dir().join(format!("embedgate-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    let file = |key: &str, listen: &str| served_config(&sim, listen, "", key);
    let write = |contents: String| replace_file(&path, &contents);
    write(file("first-key", "127.0.0.1:0"));
    let gateway = Served::start(&path);
    let wait_for = |needle: &str| gateway.wait_for(needle);
    let serving = wait_for("embedgate serving");
    let addr = log_field(&serving, "listen")
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| panic!("{serving}"));
    let http = reqwest::Client::new();
    let ask = |key: &'static str| {
        http.post(format!("http://{addr}/v1/embed-url/dashboard"))
            .bearer_auth(key)
            .json(&json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS"}))
            .send()
    };
    let status = |r: reqwest::Result<reqwest::Response>| r.unwrap().status().as_u16();
    assert_eq!(status(ask("first-key").await), 200);
    write(file("second-key", "127.0.0.1:0"));
    let applied = wait_for("tenant table reloaded");
    assert!(applied.contains("acme"), "{applied}");
    // The digest it now runs is the one `check-config` gives the file: how an operator tells
    // that a change has reached a replica.
    let digest = log_field(&applied, "digest")
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| panic!("{applied}"));
    let checked = Command::new(env!("CARGO_BIN_EXE_embedgate"))
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let checked = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.contains(&format!("(tenant table {digest})")),
        "{checked}"
    );
    assert_eq!(status(ask("first-key").await), 401);
    assert_eq!(status(ask("second-key").await), 200);
    // A file the gateway cannot apply without a restart is refused; the keys in force stay.
    write(file("third-key", "127.0.0.1:1"));
    let refused = wait_for("tenant table not reloaded");
    assert!(refused.contains("listen"), "{refused}");
    assert_eq!(status(ask("second-key").await), 200);
    assert_eq!(status(ask("third-key").await), 401);
    // The signal rereads the files whether or not they changed.
    gateway.hup();
    let again = wait_for("tenant table not reloaded");
    assert!(again.contains("listen"), "{again}");
    drop(gateway);
    let _ = std::fs::remove_dir_all(dir);
    sim.stop().await;
}

/// Raising or lowering a tenant's inbound limit needs no restart: the new limit counts from the
/// tenant's next request, carrying on from what the old one counted (raised, the room it adds;
/// lowered, no fresh burst, as a fleet's shared limit counts), its `RateLimit-Policy` and 429
/// document say the new figures, and another tenant's limiter keeps its state.
#[tokio::test]
async fn a_reloaded_limit_counts_from_the_next_request_and_its_answers_say_it() {
    let app = spawn_app(|s| {
        s.refill.enabled = false;
        s.tenants[0].rate_per_sec = 0.001;
        s.tenants[0].burst = 2;
        s.tenants[1].rate_per_sec = 0.001;
        s.tenants[1].burst = 100;
    })
    .await;
    let body = dash("sales-2024", "alice");
    // The statuses of `n` requests of `tenant`, and the last answer's RateLimit headers and
    // problem detail.
    let send = |tenant: &'static str, n: usize| {
        let app = &app;
        let body = &body;
        async move {
            let mut statuses = vec![];
            let mut last = (String::new(), String::new(), String::new());
            for _ in 0..n {
                let r = app.embed(tenant, "dashboard", body).await;
                statuses.push(r.status().as_u16());
                let h = |k: &str| r.headers()[k].to_str().unwrap().to_string();
                let (policy, left) = (h("ratelimit-policy"), h("ratelimit"));
                let v: serde_json::Value = r.json().await.unwrap();
                last = (policy, left, v["detail"].as_str().unwrap_or("").into());
            }
            (statuses, last)
        }
    };
    let (statuses, (policy, _, detail)) = send("alpha", 3).await;
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(policy, "\"tenant\";q=2;w=2000");
    assert_eq!(detail, "this tenant is over its rate of 0.001 requests/s");
    let (_, (_, beta_left, _)) = send("beta", 3).await;
    assert_eq!(beta_left, "\"tenant\";r=97;t=3000");

    let changed = applied(&app, |s| {
        s.tenants[0].rate_per_sec = 0.002;
        s.tenants[0].burst = 5;
    });
    assert_eq!(changed.limits_changed, vec!["alpha".to_string()]);
    assert!(changed.rules_changed.is_empty());
    // Alpha's two requests reach 2,000 s ahead; the new burst spans 2,500 s, one request more.
    let (statuses, (policy, left, detail)) = send("alpha", 3).await;
    assert_eq!(
        statuses,
        [200, 429, 429],
        "the room the new limit adds, not a fresh burst"
    );
    assert_eq!(policy, "\"tenant\";q=5;w=2500");
    assert!(left.starts_with("\"tenant\";r=0;t="), "{left}");
    assert_eq!(detail, "this tenant is over its rate of 0.002 requests/s");
    let (_, (_, beta_left, _)) = send("beta", 1).await;
    assert_eq!(
        beta_left, "\"tenant\";r=96;t=4000",
        "beta's limiter kept its state"
    );
    let state = app.state(0).await;
    assert_eq!(
        (
            state["tenants"][0]["rate_per_sec"].as_f64(),
            state["tenants"][0]["burst"].as_u64()
        ),
        (Some(0.002), Some(5))
    );

    applied(&app, |s| s.tenants[0].burst = 1);
    let (statuses, (policy, _, _)) = send("alpha", 2).await;
    assert_eq!(statuses, [429, 429], "no fresh burst from a lowered limit");
    assert_eq!(policy, "\"tenant\";q=1;w=1000");
    app.stop().await;
}

/// Two replicas on `redis` whose tenant alpha is limited to `rate_per_sec` and `burst`, nothing
/// prefetched, and an upstream budget no request waits on.
async fn alpha_limited_fleet(redis: &RedisServer, rate_per_sec: f64, burst: u32) -> TestFleet {
    spawn_fleet(2, |s| {
        s.redis.url = Some(redis.url());
        s.redis.timeout_ms = 2_000;
        s.refill.enabled = false;
        s.tenants[0].rate_per_sec = rate_per_sec;
        s.tenants[0].burst = burst;
        s.upstream.rate_per_sec = 1000.0;
        s.upstream.burst = 1000;
    })
    .await
}

/// The statuses of alpha's requests sent through `replicas` in turn.
async fn alpha_statuses(fleet: &TestFleet, replicas: impl IntoIterator<Item = usize>) -> Vec<u16> {
    let body = dash("sales-2024", "alice");
    let mut statuses = vec![];
    for i in replicas {
        statuses.push(fleet.embed(i, "alpha", &body).await.status);
    }
    statuses
}

/// In a fleet the limit Redis counts is the one each request carries from its replica, so a
/// limit reloaded on every replica holds fleet-wide from the next request; a replica that had
/// refused the tenant under the old limit does not go on refusing it from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_reloaded_on_every_replica_holds_fleet_wide() {
    let redis = RedisServer::start();
    let fleet = alpha_limited_fleet(&redis, 0.001, 2).await;
    assert_eq!(
        alpha_statuses(&fleet, 0..3).await,
        [200, 200, 429],
        "a burst of two, fleet-wide"
    );
    reload_every_replica(&fleet, |s| s.tenants[0].burst = 6);
    // The replica that refused first (replica 0 took the third request: 2 % 2), then both.
    assert_eq!(
        alpha_statuses(&fleet, 0..6).await,
        [200, 200, 200, 200, 429, 429],
        "four more: six in the fleet's burst, two of them taken"
    );
    fleet.stop().await;
}

/// While a fleet reloads, replicas disagree on a tenant's limit (a ConfigMap reaches each pod in
/// its own time). Redis keeps one state per tenant and counts each request at its replica's
/// limit, so a request through a replica already on a lowered limit must find the tenant's
/// burst used, not start it afresh: before, each one did, and the replica still on the old
/// limit then admitted a whole burst more after it, request after request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_lowered_on_one_replica_first_gives_the_fleet_no_fresh_burst() {
    let redis = RedisServer::start();
    let fleet = alpha_limited_fleet(&redis, 0.001, 4).await;
    assert_eq!(
        alpha_statuses(&fleet, [0; 4]).await,
        [200; 4],
        "the burst of four, used"
    );
    reload_replica(&fleet, 1, |s| s.tenants[0].burst = 2);
    assert_eq!(
        alpha_statuses(&fleet, 0..10).await,
        [429; 10],
        "neither replica admits more than the burst the fleet used"
    );
    reload_every_replica(&fleet, |s| s.tenants[0].burst = 2);
    assert_eq!(
        alpha_statuses(&fleet, 0..4).await,
        [429; 4],
        "nor once both are on the lowered limit"
    );
    fleet.stop().await;
}

/// The same at realistic concurrency: four clients flood a tenant (20/s, burst 40) through both
/// replicas of a fleet in which one replica has reloaded a burst of 8. Whatever the interleaving,
/// the fleet admits no more than the higher limit allows over the flood: its burst plus its
/// rate for the time the flood lasted. (Before, each request through the lowered replica reset
/// the shared state, and a five-second flood got about 3,600 requests admitted against 140.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_through_a_fleet_mid_reload_gets_no_more_than_the_higher_limit_allows() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let redis = RedisServer::start();
    let fleet = alpha_limited_fleet(&redis, 20.0, 40).await;
    reload_replica(&fleet, 1, |s| s.tenants[0].burst = 8);
    let body = dash("sales-2024", "alice");
    let (admitted, sent) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let until = started + Duration::from_secs(2);
    let client = |c: usize| {
        let (fleet, body, admitted, sent) = (&fleet, &body, &admitted, &sent);
        async move {
            let mut i = c;
            while std::time::Instant::now() < until {
                i += 1;
                let status = fleet.embed(i, "alpha", body).await.status;
                sent.fetch_add(1, Ordering::Relaxed);
                if status != 429 {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    tokio::join!(client(0), client(1), client(2), client(3));
    let lasted = started.elapsed().as_secs_f64();
    let (admitted, sent) = (admitted.into_inner(), sent.into_inner());
    let allowed = 40.0 + 20.0 * lasted;
    assert!(
        admitted as f64 <= allowed + 1.0,
        "{admitted} of {sent} requests admitted in {lasted:.2} s, where the higher limit allows {allowed:.0}"
    );
    assert!(
        admitted >= 40 && sent > admitted,
        "the flood used the burst and went past it: {admitted} of {sent}"
    );
    fleet.stop().await;
}

/// In a fleet, a tenant added on every replica shares the fleet's pool and limit as one the
/// replicas started with: its warm key is stocked in Redis, its URLs are handed out by either
/// replica, each once, and its burst holds fleet-wide; removed on every replica, it is refused
/// by each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_added_on_every_replica_shares_the_fleets_pool_and_limit() {
    let redis = RedisServer::start();
    let fleet = spawn_fleet(2, |s| {
        s.redis.url = Some(redis.url());
        s.redis.timeout_ms = 2_000;
    })
    .await;
    let body = dash("sales-2024", "alice");
    let gamma = TenantSettings {
        rate_per_sec: 0.001,
        burst: 4,
        warm: vec![warm(body.clone(), 3)],
        ..tenant("gamma", "gamma-key")
    };
    reload_every_replica(&fleet, |s| s.tenants.push(gamma.clone()));
    assert!(
        redis.shared_stock_reaches("gamma", None, 3).await,
        "gamma's warm key is stocked in Redis"
    );
    let mut answers = vec![];
    for i in 0..5 {
        answers.push(fleet.embed(i, "gamma", &body).await);
    }
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 429],
        "a burst of four, fleet-wide"
    );
    let urls: std::collections::HashSet<&str> = answers[..4]
        .iter()
        .map(|a| a.body["EmbedUrl"].as_str().expect("a URL"))
        .collect();
    assert_eq!(urls.len(), 4, "each URL handed out once");

    reload_every_replica(&fleet, |_| {});
    for i in 0..2 {
        assert_eq!(
            fleet.embed(i, "gamma", &body).await.status,
            401,
            "replica {i}"
        );
    }
    assert_eq!(fleet.embed(0, "alpha", &body).await.status, 200);
    fleet.stop().await;
}

/// Which tenant table a replica runs is shown by its digest, in `/state` and as
/// `embedgate_tenant_table_info{digest}` (one series, the table in force): the same tenants
/// listed in another order keep it, an applied change replaces it, a refused reload leaves it.
#[tokio::test]
async fn the_tenant_table_in_force_is_shown_by_its_digest() {
    let app = spawn_app(|s| s.refill.enabled = false).await;
    let shown = || async {
        let digest = app.state(0).await["tenant_table"]["digest"]
            .as_str()
            .expect("/state shows the digest")
            .to_string();
        let series: Vec<String> = app
            .metrics()
            .await
            .lines()
            .filter(|l| l.starts_with("embedgate_tenant_table_info"))
            .map(String::from)
            .collect();
        assert_eq!(
            series,
            [format!(
                "embedgate_tenant_table_info{{digest=\"{digest}\"}} 1"
            )]
        );
        digest
    };
    let start = shown().await;
    assert_eq!(
        start,
        embedgate::config::table_digest(&app.app.gateway.settings().tenants)
    );
    let reordered = applied(&app, |s| s.tenants.reverse());
    assert_eq!(reordered.digest, start, "the same tenants in another order");
    assert_eq!(shown().await, start);
    let changed = applied(&app, |s| s.tenants[1].rate_per_sec = 7.0);
    assert_ne!(changed.digest, start);
    assert_eq!(shown().await, changed.digest);
    let refused = app.app.gateway.reload(edited(&app, |s| {
        s.tenants[1].rate_per_sec = 8.0;
        s.pool.max_urls = 10;
    }));
    assert!(refused.is_err());
    assert_eq!(
        shown().await,
        changed.digest,
        "a refused reload changes nothing"
    );
    app.stop().await;
}
