//! Metrics end to end: exact counter movements, promtool on a real scrape and on the shipped
//! rules, the shipped dashboard and rules referring only to real metrics, and a real Prometheus
//! server scraping the gateway with the shipped scrape config.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use embedgate::pool::PooledUrl;
use serde_json::{json, Value};

use crate::helpers::*;

fn promtool() -> Command {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    assert!(
        found,
        "promtool is missing: run scripts/setup.sh (Debian package prometheus)"
    );
    Command::new("promtool")
}

/// Runs `promtool` with `args` and asserts that it passes, showing what it printed if not.
fn promtool_passes(args: &[&str]) {
    let out = promtool().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "promtool {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Puts `n` real simulator URLs into the pool for `body` of tenant 0, so hits are deterministic.
async fn fill(app: &TestApp, body: &Value, n: usize) {
    let gw = &app.app.gateway;
    let key = app.key_of(0, body);
    let op = embedgate::model::Operation::GetDashboardEmbedUrl;
    let req = gw
        .admit(
            gw.tenants().get(0),
            embedgate::model::parse_request(op, body.to_string().as_bytes()).unwrap(),
        )
        .unwrap();
    for _ in 0..n {
        let f = gw
            .upstreams()
            .of(&req)
            .fetch(&req, gw.clock())
            .await
            .unwrap();
        gw.pool()
            .put(
                &key,
                0,
                PooledUrl {
                    url: f.url,
                    issued_at_ms: f.sent_at_ms,
                    anonymous_user_arn: None,
                    fetched_for: f.fetched_for,
                },
            )
            .unwrap();
    }
}

/// Mixed traffic with known outcomes; returns the app for scraping.
async fn mixed_traffic() -> TestApp {
    let app = spawn_app(|s| {
        s.refill.enabled = false;
        s.tenants[1].rate_per_sec = 0.001;
        s.tenants[1].burst = 1;
    })
    .await;
    let hot = dash("sales-2024", "alice");
    fill(&app, &hot, 3).await;
    for _ in 0..3 {
        assert_eq!(app.embed("alpha", "dashboard", &hot).await.status(), 200); // hits
    }
    for _ in 0..2 {
        assert_eq!(app.embed("alpha", "dashboard", &hot).await.status(), 200); // misses
    }
    assert_eq!(
        app.embed(
            "alpha",
            "dashboard",
            &json!({"DashboardId": "x", "IdentityType": "IAM"})
        )
        .await
        .status(),
        403
    );
    assert_eq!(
        app.embed(
            "alpha",
            "dashboard",
            &json!({"DashboardId": "a b", "IdentityType": "ANONYMOUS"})
        )
        .await
        .status(),
        400
    );
    assert_eq!(
        app.embed("alpha", "dashboard", &json!({"IdentityType": "ANONYMOUS"}))
            .await
            .status(),
        400
    );
    let anonymous = app
        .http
        .post(format!("{}/v1/embed-url/dashboard", app.base))
        .json(&hot)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(app.embed("beta", "dashboard", &hot).await.status(), 200); // beta: miss
    assert_eq!(app.embed("beta", "dashboard", &hot).await.status(), 429); // beta: throttled
    app.sim.sim.update_knobs(&json!({"fail_next": 1})).unwrap();
    assert_eq!(app.embed("alpha", "dashboard", &hot).await.status(), 503); // upstream error
    app.sim
        .sim
        .update_knobs(&json!({"throttle_next": 1}))
        .unwrap();
    assert_eq!(app.embed("alpha", "dashboard", &hot).await.status(), 503); // upstream throttled
    assert_eq!(
        app.embed("alpha", "dashboard", &dash("no-such", "alice"))
            .await
            .status(),
        404
    ); // rejected
    app
}

#[tokio::test]
async fn counters_move_by_exactly_the_expected_amounts() {
    let app = mixed_traffic().await;
    let m = app.metrics().await;
    let expect = [
        ("embedgate_requests_total{outcome=\"hit\",protocol=\"native\",tenant=\"alpha\"}", 3.0),
        ("embedgate_requests_total{outcome=\"miss\",protocol=\"native\",tenant=\"alpha\"}", 2.0),
        ("embedgate_requests_total{outcome=\"denied\",protocol=\"native\",tenant=\"alpha\"}", 1.0),
        ("embedgate_requests_total{outcome=\"invalid\",protocol=\"native\",tenant=\"alpha\"}", 2.0),
        ("embedgate_requests_total{outcome=\"error\",protocol=\"native\",tenant=\"alpha\"}", 3.0),
        ("embedgate_requests_total{outcome=\"unauthenticated\",protocol=\"native\",tenant=\"-\"}", 1.0),
        ("embedgate_requests_total{outcome=\"miss\",protocol=\"native\",tenant=\"beta\"}", 1.0),
        ("embedgate_requests_total{outcome=\"throttled\",protocol=\"native\",tenant=\"beta\"}", 1.0),
        ("embedgate_inbound_rejections_total{tenant=\"beta\"}", 1.0),
        ("embedgate_urls_fetched_total{reason=\"miss\"}", 3.0),
        // 3 filled by the test + 3 misses = 6 ok; one injected failure, one throttled, one 404.
        ("embedgate_upstream_calls_total{operation=\"GetDashboardEmbedUrl\",result=\"ok\",upstream=\"default\"}", 6.0),
        ("embedgate_upstream_calls_total{operation=\"GetDashboardEmbedUrl\",result=\"error\",upstream=\"default\"}", 1.0),
        ("embedgate_upstream_calls_total{operation=\"GetDashboardEmbedUrl\",result=\"throttled\",upstream=\"default\"}", 1.0),
        ("embedgate_upstream_calls_total{operation=\"GetDashboardEmbedUrl\",result=\"rejected\",upstream=\"default\"}", 1.0),
        ("embedgate_upstream_throttle_events_total", 1.0),
        ("embedgate_handout_remaining_validity_seconds_count", 3.0),
        ("embedgate_request_duration_seconds_count{outcome=\"hit\",protocol=\"native\"}", 3.0),
        ("embedgate_redis_degraded", 0.0),
    ];
    for (sample, value) in expect {
        assert_eq!(metric(&m, sample), value, "{sample}");
    }
    assert_eq!(
        app.sim.sim.ledger().issued_total,
        6,
        "the gateway's count matches the simulator's"
    );
    assert!(
        !m.contains("AYABe") && !m.contains("/embed/"),
        "no URL material in metrics"
    );
    app.stop().await;
}

#[tokio::test]
async fn promtool_accepts_a_real_scrape_and_the_shipped_rules() {
    let app = mixed_traffic().await;
    let scrape = app.metrics().await;
    let mut check = promtool()
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let root = env!("CARGO_MANIFEST_DIR");
    promtool_passes(&[
        "check",
        "rules",
        &format!("{root}/deploy/prometheus/alerts.yml"),
    ]);
    // Every query of the shipped dashboard parses: checked as the recording rules of a group.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/embedgate.json")).unwrap(),
    )
    .unwrap();
    let queries: Vec<Value> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].clone())
        .collect();
    assert!(queries.len() >= 6, "{queries:?}");
    let rules: String = queries
        .iter()
        .enumerate()
        .map(|(i, q)| format!("  - record: dashboard_query_{i}\n    expr: {q}\n"))
        .collect();
    let file = std::env::temp_dir().join(format!(
        "embedgate-dashboard-{}-{}.yml",
        std::process::id(),
        app.app.admin_addr.port()
    ));
    std::fs::write(
        &file,
        format!("groups:\n- name: dashboard\n  rules:\n{rules}"),
    )
    .unwrap();
    promtool_passes(&["check", "rules", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    promtool_passes(&[
        "check",
        "config",
        &format!("{root}/deploy/prometheus/prometheus.yml"),
    ]);
    app.stop().await;
}

/// Metric names (`embedgate_…`) referred to in a text.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("embedgate_") {
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name.clone(), |n, s| {
                n.strip_suffix(s).map(String::from).unwrap_or(n)
            });
        names.insert(base);
    }
    names
}

#[tokio::test]
async fn the_dashboard_and_rules_refer_only_to_metrics_the_gateway_exports() {
    let app = spawn_app(|_| {}).await;
    let scrape = app.metrics().await;
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard =
        std::fs::read_to_string(format!("{root}/deploy/grafana/embedgate.json")).unwrap();
    let parsed: Value = serde_json::from_str(&dashboard).expect("the dashboard is valid JSON");
    assert!(parsed["panels"].as_array().unwrap().len() >= 6);
    let rules = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    for (what, text) in [("dashboard", &dashboard), ("rules", &rules)] {
        for name in referenced(text) {
            assert!(
                exported.contains(&name),
                "{what} refers to {name}, which the gateway does not export"
            );
        }
    }
    for name in &exported {
        assert!(readme.contains(name.as_str()), "README documents {name}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_gateway_and_answers_the_hit_ratio() {
    let found = Command::new("prometheus").arg("--version").output().is_ok();
    assert!(
        found,
        "prometheus is missing: run scripts/setup.sh (Debian package prometheus)"
    );
    let app = mixed_traffic().await;
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = std::env::temp_dir().join(format!(
        "embedgate-prom-{}-{}",
        std::process::id(),
        app.app.admin_addr.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    // The shipped scrape config, pointed at this gateway and scraping every second.
    let config = std::fs::read_to_string(format!("{root}/deploy/prometheus/prometheus.yml"))
        .unwrap()
        .replace("127.0.0.1:9464", &app.app.admin_addr.to_string())
        .replace("15s", "1s");
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    std::fs::copy(
        format!("{root}/deploy/prometheus/alerts.yml"),
        dir.join("alerts.yml"),
    )
    .unwrap();
    let held = free_port(false);
    let port = held.port;
    let mut prom = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The first series `query` returns (its labels and value), once Prometheus has one that is
    // a number (a ratio of rates is NaN until there is a rate to divide by).
    let first_series = |query: &'static str| {
        let app = &app;
        async move {
            let answer = std::cell::RefCell::new(None);
            eventually(Duration::from_secs(30), || async {
                let resp = app
                    .http
                    .get(format!("http://127.0.0.1:{port}/api/v1/query"))
                    .query(&[("query", query)])
                    .send()
                    .await;
                if let Ok(r) = resp {
                    if let Ok(body) = r.json::<Value>().await {
                        let series = &body["data"]["result"][0];
                        let value = series["value"][1].as_str().and_then(|v| v.parse().ok());
                        if let Some(v) = value.filter(|v: &f64| !v.is_nan()) {
                            *answer.borrow_mut() = Some((series["metric"].clone(), v));
                        }
                    }
                }
                answer.borrow().is_some()
            })
            .await;
            answer.into_inner()
        }
    };
    let ratio = first_series("sum(embedgate_requests_total{outcome=\"hit\"}) / sum(embedgate_requests_total{outcome=~\"hit|miss\"})").await;
    // A URL fetched while Prometheus scrapes, so the shipped rule that joins what each reason
    // wasted to what it fetched has a rate to divide by (a miss: handed out, nothing wasted).
    let miss = app
        .embed("alpha", "dashboard", &dash("finance", "alice"))
        .await;
    assert_eq!(miss.status(), 200);
    let by_reason =
        first_series("embedgate:url_waste_ratio_by_reason:rate30m{fetched_for=\"miss\"}").await;
    let _ = prom.kill();
    let _ = prom.wait();
    let _ = std::fs::remove_dir_all(&dir);
    // 3 hits of alpha; 2 misses of alpha and 1 of beta.
    assert_eq!(
        ratio.map(|(_, v)| v),
        Some(0.5),
        "Prometheus answered the hit ratio"
    );
    let (labels, wasted) = by_reason.expect("the shipped rule records a waste ratio per reason");
    assert_eq!(labels["fetched_for"], "miss", "{labels}");
    assert_eq!(wasted, 0.0, "a miss's URL is handed out: {labels}");
    app.stop().await;
}

#[tokio::test]
async fn embedgate_top_shows_the_traffic_of_the_last_interval_per_tenant() {
    let app = spawn_app(|_| {}).await;
    let admin = app.admin.clone();
    let top = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_embedgate"))
            .args(["top", "--admin", &admin, "--once", "--interval-secs", "1.5"])
            .output()
            .unwrap()
    });
    // Traffic while top measures: 12 requests for alpha, a bad key.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..12 {
        let r = app
            .embed(
                "alpha",
                "dashboard",
                &dash("sales-2024", &format!("user-{:04}", i % 3)),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let bad = app
        .http
        .post(format!("{}/v1/embed-url/dashboard", app.base))
        .bearer_auth("not-a-key")
        .json(&dash("sales-2024", "alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let out = top.await.unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{screen}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(screen.contains("mode single"), "{screen}");
    let digest = embedgate::config::table_digest(&app.app.gateway.settings().tenants);
    assert!(
        screen.contains(&format!("tenant table {digest}")),
        "{screen}"
    );
    let row = |name: &str| -> Vec<f64> {
        screen
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("a row for {name}: {screen}"))
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.trim_end_matches("/s").parse().ok())
            .collect()
    };
    let alpha = row("alpha");
    assert!(
        alpha[0] + alpha[1] > 0.0,
        "alpha's hits + misses per second: {screen}"
    );
    assert_eq!(row("beta")[..2], [0.0, 0.0], "{screen}");
    assert!(
        row("default")[0] > 0.0,
        "upstream calls per second: {screen}"
    );
    app.stop().await;
}

/// A key asked for once, in a tenant whose keys of its kind are not known yet, is stocked one deep
/// for its next request, and the operator can tell why: `/state` gives the key the reason `first`
/// and `embedgate_urls_fetched_total` counts the URL under it, apart from streams (`prefetch`).
/// Asks once for alice's `sales-2024` and waits until the planner has stocked one URL for the
/// key's next request; returns the request's body.
async fn stocked_after_a_first_request(app: &TestApp) -> Value {
    let body = dash("sales-2024", "alice");
    let first = app.embed_json("alpha", "dashboard", &body).await;
    assert_eq!(first["Source"], "upstream", "{first}");
    let key = app.key_of(0, &body);
    let gw = app.app.gateway.clone();
    assert!(app.eventually(10, || gw.pool().len(&key) == 1).await);
    body
}

#[tokio::test]
async fn a_url_stocked_after_a_keys_first_request_is_explained_as_first() {
    let app = spawn_app(|s| s.refill.sessions = false).await;
    let body = stocked_after_a_first_request(&app).await;
    let key = app.key_of(0, &body);
    let entry = app.planned(&key).await;
    assert_eq!(entry["reason"], "first", "{entry}");
    let m = app.metrics().await;
    assert_eq!(
        metric(&m, r#"embedgate_urls_fetched_total{reason="first"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"embedgate_urls_fetched_total{reason="prefetch"}"#),
        0.0
    );
    let second = app.embed_json("alpha", "dashboard", &body).await;
    assert_eq!(second["Source"], "pool", "{second}");
    app.stop().await;
}

/// What the planner stocks and nobody asks for is counted as waste under the reason it was
/// stocked for, so an operator can tell which prediction costs URLs: here a key asked for once,
/// stocked for its next request (`first`), that never comes.
#[tokio::test]
async fn a_stocked_url_nobody_asks_for_is_wasted_under_the_reason_it_was_fetched_for() {
    let clock = embedgate::clock::Clock::manual();
    let app = spawn_app_with(clock.clone(), |s| s.refill.sessions = false).await;
    stocked_after_a_first_request(&app).await;
    // Past the URL's usable life: the next purge drops it.
    clock.advance(241_000);
    let wasted = |fetched_for: &str| {
        format!("embedgate_urls_wasted_total{{fetched_for=\"{fetched_for}\",reason=\"expired\"}}")
    };
    let mut m = String::new();
    for _ in 0..100 {
        m = app.metrics().await;
        if metric(&m, &wasted("first")) > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&m, &wasted("first")), 1.0, "{m}");
    for other in ["miss", "prefetch", "hint", "warm", "follower", "returning"] {
        assert_eq!(metric(&m, &wasted(other)), 0.0, "{other}");
    }
    app.stop().await;
}

/// Why a tenant's first views are or are not stocked can be read in `/state`: per tenant and
/// kind, how often its keys asked once (twice, three times) are asked again within a URL's usable
/// life, how many of its own keys that rests on, and whose evidence it is.
#[tokio::test]
async fn state_shows_what_each_tenants_keys_are_judged_by_and_whose_evidence_it_is() {
    let clock = embedgate::clock::Clock::manual();
    let app = spawn_app_with(clock.clone(), |s| s.refill.sessions = false).await;
    // 25 of alpha's users each open sales-2024 once, and none comes back within the life.
    for i in 0..25 {
        let body = dash("sales-2024", &format!("user-{i:04}"));
        let answer = app.embed_json("alpha", "dashboard", &body).await;
        assert!(answer["EmbedUrl"].is_string(), "{answer}");
    }
    clock.advance(241_000);
    let state = app.state(20).await;
    let tenant = |id: &str| {
        state["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {state}"))["recurrence"]
            .clone()
    };
    let alpha = tenant("alpha");
    for kind in ["anonymous", "registered_user"] {
        let steps = alpha[kind].as_array().unwrap();
        let asked: Vec<_> = steps.iter().map(|s| s["asked"].as_u64().unwrap()).collect();
        assert_eq!(asked, [1, 2, 3], "{alpha}");
    }
    let first = &alpha["registered_user"][0];
    assert_eq!(first["source"], "tenant", "{first}");
    let settled = first["settled_keys"].as_f64().unwrap();
    assert!((24.0..=25.0).contains(&settled), "{first}");
    assert!(first["probability"].as_f64().unwrap() < 0.1, "{first}");
    assert_eq!(alpha["anonymous"][0]["source"], "all_tenants", "{alpha}");
    // beta has no keys of its own: judged by every tenant's, and it says so.
    let beta = tenant("beta")["registered_user"][0].clone();
    assert_eq!(beta["source"], "topped_up", "{beta}");
    assert_eq!(beta["settled_keys"], 0.0, "{beta}");
    assert!(beta["probability"].as_f64().unwrap() < 0.15, "{beta}");
    app.stop().await;
}

/// A client that resets its connection while its request waits on QuickSight (actix-web then
/// drops the request's handler) is counted as `cancelled`, with its wait in the latency
/// histogram. Before, the request vanished from the metrics (exactly when misses are slow). The
/// QuickSight call goes on without it, to land its URL for the key
/// (`gateway::a_client_that_resets_and_asks_again_gets_the_url_its_first_request_waited_for`).
#[tokio::test]
async fn a_request_whose_client_resets_the_connection_is_counted_as_cancelled() {
    let app = app_whose_quicksight_holds_every_call(|_| {}).await;
    let body = dash("sales-2024", "alice");
    let m = give_up_native_request_while_quicksight_answers(&app, &body, GiveUp::Reset).await;
    assert_eq!(
        metric(
            &m,
            "embedgate_request_duration_seconds_count{outcome=\"cancelled\",protocol=\"native\"}"
        ),
        1.0
    );
    // The QuickSight call it waited on (held by the simulator) is still in flight.
    assert_eq!(metric(&m, "embedgate_upstream_in_flight"), 1.0);
    assert_eq!(
        metric(
            &m,
            "embedgate_upstream_calls_total{operation=\"GetDashboardEmbedUrl\",result=\"cancelled\",upstream=\"default\"}"
        ),
        0.0
    );
    for outcome in ["miss", "error"] {
        let sample = format!(
            "embedgate_requests_total{{outcome=\"{outcome}\",protocol=\"native\",tenant=\"alpha\"}}"
        );
        assert_eq!(metric(&m, &sample), 0.0, "{sample}");
    }
    app.stop().await;
}

/// The shipped alert for replicas on different tenant tables, run by `promtool test rules` on
/// scraped series: two replicas of one job on different digests for ten minutes fire it for that
/// job; replicas that agree (another job's) never do, nor does a disagreement shorter than that.
#[test]
fn the_shipped_rules_alert_when_replicas_run_different_tenant_tables() {
    let series = |job: &str, instance: &str, digest: &str| {
        (
            format!("embedgate_tenant_table_info{{job=\"{job}\",instance=\"{instance}\",digest=\"{digest}\"}}"),
            "1x30".to_string(),
        )
    };
    shipped_rules_pass(
        "tables",
        &[
            series("portal", "a:9464", "1111222233334444"),
            series("portal", "b:9464", "5555666677778888"),
            series("agreed", "c:9464", "1111222233334444"),
            series("agreed", "d:9464", "1111222233334444"),
        ],
        r#"      - eval_time: 9m
        alertname: EmbedgateReplicasDisagreeOnTenants
      - eval_time: 15m
        alertname: EmbedgateReplicasDisagreeOnTenants
        exp_alerts:
          - exp_labels:
              severity: warning
              job: portal
            exp_annotations:
              summary: "embedgate replicas of portal run 2 different tenant tables"
              description: "Their embedgate_tenant_table_info digests differ: some replica has not picked up a change of the tenant table (or refused it: see EmbedgateConfigNotReloaded), so a tenant's keys, rules and limits depend on the replica its request reaches. /state shows each replica's digest."
"#,
    );
}

/// Runs `promtool test rules` beside a copy of the shipped rules: one test group evaluated every
/// minute, fed `input_series` (each a series and its values in promtool's notation) and checked
/// by `alert_rule_test` (its entries, as YAML); `name` keeps concurrent tests' files apart.
fn shipped_rules_pass(name: &str, input_series: &[(String, String)], alert_rule_test: &str) {
    let series: String = input_series
        .iter()
        .map(|(series, values)| format!("      - series: '{series}'\n        values: '{values}'\n"))
        .collect();
    let test = format!(
        "rule_files: [alerts.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}    alert_rule_test:\n{alert_rule_test}"
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = std::env::temp_dir().join(format!("embedgate-rules-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        format!("{root}/deploy/prometheus/alerts.yml"),
        dir.join("alerts.yml"),
    )
    .unwrap();
    std::fs::write(dir.join("test.yml"), &test).unwrap();
    promtool_passes(&["test", "rules", dir.join("test.yml").to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The key-misuse alert, run by `promtool test rules`: the first refusal of a tenant's key for
/// its client certificate fires it at once (the series starts at 0 for a tenant that lists
/// names); a tenant with none refused never does, and it resolves 10 minutes after the last.
#[test]
fn the_shipped_rules_alert_when_a_tenants_key_comes_from_a_client_it_does_not_list() {
    let series = |tenant: &str, values: &str| {
        (
            format!("embedgate_client_certificate_mismatches_total{{job=\"portal\",instance=\"a:9464\",tenant=\"{tenant}\"}}"),
            values.to_string(),
        )
    };
    shipped_rules_pass(
        "mismatch",
        &[series("acme", "0 0 0 1 1 1x20"), series("globex", "0x25")],
        r#"      - eval_time: 2m
        alertname: EmbedgateTenantKeyUsedFromUnlistedClient
      - eval_time: 4m
        alertname: EmbedgateTenantKeyUsedFromUnlistedClient
        exp_alerts:
          - exp_labels:
              severity: warning
              job: portal
              tenant: acme
            exp_annotations:
              summary: "tenant acme's key was used from a client it does not list"
              description: "A valid API key or access key of the tenant came over a connection whose client certificate is not one of its client_certificate_names, and was refused. The key has reached somewhere it was not given to (another portal, a developer's machine, an attacker): find where, and rotate it."
      - eval_time: 20m
        alertname: EmbedgateTenantKeyUsedFromUnlistedClient
"#,
    );
}

/// The certificate alert, run by `promtool test rules`: a replica whose served certificate
/// expires within 14 days fires it after 10 minutes; one with a month left, and one without
/// TLS (the gauge at 0), never do.
#[test]
fn the_shipped_rules_alert_before_the_served_certificate_expires() {
    let series = |instance: &str, expiry: u64| {
        (
            format!("embedgate_tls_certificate_expiry_timestamp_seconds{{job=\"portal\",instance=\"{instance}\"}}"),
            format!("{expiry}x30"),
        )
    };
    // promtool's clock starts at 0: "expires in 10 days" is a value of 10 days.
    let day = 86_400;
    shipped_rules_pass(
        "certificate",
        &[
            series("a:9464", 10 * day),
            series("b:9464", 30 * day),
            series("c:9464", 0),
        ],
        r#"      - eval_time: 9m
        alertname: EmbedgateTlsCertificateExpiresSoon
      - eval_time: 15m
        alertname: EmbedgateTlsCertificateExpiresSoon
        exp_alerts:
          - exp_labels:
              severity: warning
              job: portal
              instance: a:9464
            exp_annotations:
              summary: "embedgate a:9464's certificate expires in 9d 23h 45m 0s"
              description: "The certificate of its HTTPS listeners (tls.cert_file) has not been renewed, or its renewal has not reached the replica: the log line \"TLS certificate not reloaded\" says why a renewed pair was refused. Clients refuse the certificate once it has expired."
"#,
    );
}
