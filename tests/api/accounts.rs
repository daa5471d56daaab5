//! Many accounts and regions behind one gateway, each upstream reached through an IAM role the
//! gateway assumes at the simulator's STS: routing, isolation between tenants and upstreams,
//! credential refresh, and roles that cannot be assumed.

use std::time::{Duration, Instant};

use aws_config::sts::AssumeRoleProvider;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_quicksight::types::EmbeddingIdentityType;
use serde_json::{json, Value};

use embedgate::clock::Clock;
use embedgate::config::{Secret, Settings, UpstreamSettings};
use embedgate::sim::{self, AccountSettings, RoleSettings, SimServer, SimSettings};

use crate::helpers::*;

const US: &str = sim::DEFAULT_ACCOUNT_ID;
const EU: &str = "222233334444";

/// The simulator for these tests: us-east-1 and eu-west-1, an EU account, and roles: `embed-us`
/// (trusts the test key), `embed-eu` (wants an external id), `locked` (trusts another key).
fn two_region_sim() -> SimSettings {
    let mut s = sim_settings();
    s.regions = vec!["eu-west-1".into()];
    let mut eu = s.accounts[0].clone();
    eu.id = EU.into();
    eu.dashboards = vec!["eu-sales".into()];
    s.accounts.push(AccountSettings { ..eu });
    s.roles = vec![
        role(&format!("arn:aws:iam::{US}:role/embed-us"), None, vec![]),
        role(
            &format!("arn:aws:iam::{EU}:role/embed-eu"),
            Some("eu-external-id"),
            vec![],
        ),
        role(
            &format!("arn:aws:iam::{EU}:role/locked"),
            None,
            vec!["AKIDSOMEONEELSE0001".into()],
        ),
    ];
    s
}

fn role(arn: &str, external_id: Option<&str>, trusted_keys: Vec<String>) -> RoleSettings {
    RoleSettings {
        arn: arn.into(),
        external_id: external_id.map(String::from),
        trusted_keys,
    }
}

/// One upstream through `role_arn`, with the simulator's test key as the source identity.
fn upstream(
    s: &Settings,
    id: &str,
    account: &str,
    region: &str,
    role_arn: &str,
) -> UpstreamSettings {
    UpstreamSettings {
        id: id.into(),
        account: Some(account.into()),
        region: region.into(),
        role_arn: Some(role_arn.into()),
        endpoint_url: s.upstream.endpoint_url.clone(),
        access_key_id: Some(sim::DEFAULT_ACCESS_KEY_ID.into()),
        secret_access_key: Some(Secret::new(sim::DEFAULT_SECRET_ACCESS_KEY)),
        rate_per_sec: 1000.0,
        burst: 100,
        ..UpstreamSettings::default()
    }
}

/// `us` (us-east-1) and `eu` (eu-west-1, with its external id), `duration_secs` each; `alpha`
/// may use both accounts, `beta` only the US one.
fn two_upstreams(s: &mut Settings, duration_secs: Option<u64>) {
    let mut us = upstream(
        s,
        "us",
        US,
        "us-east-1",
        &format!("arn:aws:iam::{US}:role/embed-us"),
    );
    let mut eu = upstream(
        s,
        "eu",
        EU,
        "eu-west-1",
        &format!("arn:aws:iam::{EU}:role/embed-eu"),
    );
    eu.external_id = Some("eu-external-id".into());
    us.duration_secs = duration_secs;
    eu.duration_secs = duration_secs;
    s.upstreams = vec![us, eu];
    s.upstream = UpstreamSettings::default();
    s.tenants[0].policy.accounts = vec![US.into(), EU.into()];
    s.tenants[0].policy.user_arns = vec!["arn:aws:quicksight:*:*:user/default/*".into()];
    s.tenants[1].policy.accounts = vec![US.into()];
}

fn eu_dash(user: &str) -> Value {
    json!({
        "AwsAccountId": EU,
        "DashboardId": "eu-sales",
        "IdentityType": "QUICKSIGHT",
        "UserArn": format!("arn:aws:quicksight:eu-west-1:{EU}:user/default/{user}"),
    })
}

#[tokio::test]
async fn two_accounts_in_two_regions_each_through_its_assumed_role() {
    // No prefetching: every URL below is fetched for its request, so the counts are exact.
    let app = spawn_app_on(two_region_sim(), Clock::System, |s| {
        two_upstreams(s, None);
        s.refill.enabled = false;
    })
    .await;

    let us = app
        .embed_json("alpha", "dashboard", &dash("sales-2024", "alice"))
        .await;
    let url = us["EmbedUrl"].as_str().expect("a URL for the US account");
    assert!(url.ends_with("region=us-east-1"), "{url}");
    let eu = app
        .embed_json("alpha", "dashboard", &eu_dash("alice"))
        .await;
    let url = eu["EmbedUrl"].as_str().expect("a URL for the EU account");
    assert!(url.ends_with("region=eu-west-1"), "{url}");
    // Naming the region the account is served in is the same request.
    let mut explicit = eu_dash("bob");
    explicit["Region"] = json!("eu-west-1");
    let r = app.embed("alpha", "dashboard", &explicit).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let ledger = app.sim.sim.ledger();
    assert_eq!(ledger.issued_by_scope[&format!("{US}/us-east-1")], 1);
    assert_eq!(ledger.issued_by_scope[&format!("{EU}/eu-west-1")], 2);
    assert!(ledger.roles_assumed >= 2, "each upstream assumed its role");
    assert_eq!(ledger.unauthenticated, 0);
    let st = app.state(20).await;
    let ups = st["upstreams"].as_array().unwrap();
    assert_eq!(ups.len(), 2);
    assert!(ups
        .iter()
        .all(|u| u["credentials"] == "assumed_role" && u["role_error"].is_null()));
    app.stop().await;
}

#[tokio::test]
async fn a_tenant_reaches_only_the_accounts_regions_and_upstreams_its_policy_names() {
    let app = spawn_app_on(two_region_sim(), Clock::System, |s| {
        two_upstreams(s, None);
        // The US account is served in eu-west-1 too, by an upstream gamma may not use.
        let us_in_eu = upstream(
            s,
            "us-in-eu",
            US,
            "eu-west-1",
            &format!("arn:aws:iam::{US}:role/embed-us"),
        );
        s.upstreams.push(us_in_eu);
        let mut only_us = s.tenants[0].clone();
        only_us.id = "gamma".into();
        only_us.api_key_sha256 = vec![hex::encode(embedgate::tenant::hash_key("gamma-key"))];
        only_us.policy.accounts = vec![US.into()];
        only_us.policy.upstreams = vec!["us".into()];
        s.tenants.push(only_us);
    })
    .await;
    let calls_before = app.sim.sim.ledger().calls;
    // beta may use the US account only.
    let p = app.embed_json("beta", "dashboard", &eu_dash("alice")).await;
    assert_eq!(
        (p["status"].as_u64(), p["field"].as_str()),
        (Some(403), Some("AwsAccountId")),
        "{p}"
    );
    // gamma may use the US account through the `us` upstream only, not in eu-west-1.
    let mut us_in_eu = dash("sales-2024", "alice");
    us_in_eu["Region"] = json!("eu-west-1");
    let p = app.embed_json("gamma", "dashboard", &us_in_eu).await;
    assert_eq!(
        (
            p["status"].as_u64(),
            p["code"].as_str(),
            p["field"].as_str()
        ),
        (Some(403), Some("forbidden_by_policy"), Some("Region")),
        "{p}"
    );
    assert!(
        p["detail"].as_str().unwrap().contains("upstream us-in-eu"),
        "{p}"
    );
    // An account no upstream serves, and a region the account is not served in: 400s.
    let mut nowhere = dash("sales-2024", "alice");
    nowhere["AwsAccountId"] = json!("999988887777");
    nowhere["UserArn"] = json!("arn:aws:quicksight:us-east-1:999988887777:user/default/alice");
    let p = app.embed_json("alpha", "dashboard", &nowhere).await;
    assert_eq!(
        (p["status"].as_u64(), p["field"].as_str()),
        (Some(400), Some("AwsAccountId")),
        "{p}"
    );
    let mut elsewhere = dash("sales-2024", "alice");
    elsewhere["Region"] = json!("ap-south-1");
    let p = app.embed_json("alpha", "dashboard", &elsewhere).await;
    assert_eq!(
        (p["status"].as_u64(), p["field"].as_str()),
        (Some(400), Some("Region")),
        "{p}"
    );
    // A dashboard ARN of the other region cannot ride along. (User ARNs name the identity
    // region, which may differ from the dashboards' region, as in QuickSight.)
    let cross = json!({
        "AwsAccountId": EU,
        "Namespace": "default",
        "AuthorizedResourceArns": [format!("arn:aws:quicksight:us-east-1:{EU}:dashboard/eu-sales")],
        "ExperienceConfiguration": {"Dashboard": {"InitialDashboardId": "eu-sales"}},
        "SessionTags": [{"Key": "tenant", "Value": "alpha"}],
    });
    let p = app.embed_json("alpha", "anonymous-user", &cross).await;
    assert_eq!(
        (p["status"].as_u64(), p["field"].as_str()),
        (Some(400), Some("AuthorizedResourceArns[0]")),
        "{p}"
    );
    assert_eq!(
        app.sim.sim.ledger().calls,
        calls_before,
        "QuickSight was never called"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assumed_credentials_are_refreshed_before_they_expire() {
    // Credentials for 12 s, a run of 30 s with a QuickSight call every 250 ms (no pool: every
    // request is a miss), so the gateway goes through at least two refreshes.
    let app = spawn_app_on(two_region_sim(), Clock::System, |s| {
        two_upstreams(s, Some(12));
        s.refill.enabled = false;
    })
    .await;
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(30) {
        for body in [dash("sales-2024", "alice"), eu_dash("alice")] {
            let r = app.embed("alpha", "dashboard", &body).await;
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
            served += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ledger = app.sim.sim.ledger();
    assert_eq!(ledger.issued_total, served);
    assert_eq!(
        ledger.unauthenticated, 0,
        "no call went out with expired credentials"
    );
    assert!(
        ledger.roles_assumed >= 6,
        "each upstream refreshed: {}",
        ledger.roles_assumed
    );
    app.stop().await;
}

#[tokio::test]
async fn the_simulator_checks_temporary_credentials_token_account_and_expiry() {
    let sim = SimServer::start(two_region_sim()).unwrap();
    let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("eu-west-1"))
        .endpoint_url(&sim.endpoint)
        .credentials_provider(aws_credential_types::Credentials::new(
            sim::DEFAULT_ACCESS_KEY_ID,
            sim::DEFAULT_SECRET_ACCESS_KEY,
            None,
            None,
            "test",
        ))
        .load()
        .await;
    let assume = |arn: &str, external: Option<&str>, secs: u64| {
        let mut b = AssumeRoleProvider::builder(arn)
            .session_name("t")
            .session_length(Duration::from_secs(secs))
            .configure(&base);
        if let Some(e) = external {
            b = b.external_id(e);
        }
        b
    };
    let eu_role = format!("arn:aws:iam::{EU}:role/embed-eu");
    for (arn, external) in [
        (eu_role.clone(), None),
        (eu_role.clone(), Some("wrong")),
        (format!("arn:aws:iam::{EU}:role/locked"), None),
        (format!("arn:aws:iam::{EU}:role/nonexistent"), None),
    ] {
        let err = assume(&arn, external, 900)
            .build()
            .await
            .provide_credentials()
            .await
            .unwrap_err();
        assert!(
            format!("{err:?}").contains("AccessDenied"),
            "{arn} {external:?}: {err:?}"
        );
    }
    let creds = assume(&eu_role, Some("eu-external-id"), 3)
        .build()
        .await
        .provide_credentials()
        .await
        .expect("the trusted caller with the external id gets credentials");
    assert!(creds.session_token().is_some() && creds.expiry().is_some());
    let client = |token: Option<String>| {
        let conf = aws_sdk_quicksight::Config::builder()
            .behavior_version(aws_sdk_quicksight::config::BehaviorVersion::latest())
            .region(aws_sdk_quicksight::config::Region::new("eu-west-1"))
            .endpoint_url(&sim.endpoint)
            .credentials_provider(aws_credential_types::Credentials::new(
                creds.access_key_id(),
                creds.secret_access_key(),
                token,
                None,
                "assumed",
            ))
            .retry_config(aws_smithy_types::retry::RetryConfig::disabled())
            .build();
        aws_sdk_quicksight::Client::from_conf(conf)
    };
    let call = |c: aws_sdk_quicksight::Client, account: &str| {
        let account = account.to_string();
        async move {
            c.get_dashboard_embed_url()
                .aws_account_id(account)
                .dashboard_id("eu-sales")
                .identity_type(EmbeddingIdentityType::Iam)
                .send()
                .await
        }
    };
    let code = |r: Result<_, aws_sdk_quicksight::error::SdkError<_, _>>| {
        let e = r.map(|_: aws_sdk_quicksight::operation::get_dashboard_embed_url::GetDashboardEmbedUrlOutput| ()).unwrap_err();
        aws_sdk_quicksight::error::ProvideErrorMetadata::code(&e.into_service_error())
            .map(String::from)
    };
    let token = creds.session_token().map(String::from);
    assert!(
        call(client(token.clone()), EU).await.is_ok(),
        "the role's own account"
    );
    assert_eq!(
        code(call(client(token.clone()), US).await).as_deref(),
        Some("AccessDeniedException")
    );
    assert_eq!(
        code(call(client(None), EU).await).as_deref(),
        Some("UnrecognizedClientException")
    );
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    assert_eq!(
        code(call(client(token), EU).await).as_deref(),
        Some("ExpiredTokenException")
    );
    sim.stop().await;
}

#[tokio::test]
async fn roles_that_cannot_be_assumed_fail_naming_their_upstream_while_the_others_serve() {
    let app = spawn_app_on(two_region_sim(), Clock::System, |s| {
        two_upstreams(s, None);
        // The EU upstream with a wrong external id, and a third one whose role does not trust
        // the gateway's key.
        s.upstreams[1].external_id = Some("not-it".into());
        let mut locked = s.upstreams[1].clone();
        locked.id = "locked".into();
        locked.account = Some("777788889999".into());
        locked.region = "us-east-1".into();
        locked.role_arn = Some(format!("arn:aws:iam::{EU}:role/locked"));
        locked.external_id = None;
        s.upstreams.push(locked);
        s.tenants[0].policy.accounts.push("777788889999".into());
    })
    .await;
    let st = app.state(20).await;
    let errors: Vec<(String, Option<String>)> = st["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["id"].as_str().unwrap().to_string(),
                u["role_error"].as_str().map(String::from),
            )
        })
        .collect();
    assert!(errors[0].1.is_none(), "us: {errors:?}");
    for (id, error) in &errors[1..] {
        let e = error.as_deref().unwrap_or_default();
        assert!(e.contains("AccessDenied"), "{id}: {e}");
    }
    // The broken upstreams' misses fail fast with their id; the working one serves.
    for (body, id) in [
        (eu_dash("alice"), "eu"),
        (
            {
                let mut b = dash("sales-2024", "alice");
                b["AwsAccountId"] = json!("777788889999");
                b["UserArn"] =
                    json!("arn:aws:quicksight:us-east-1:777788889999:user/default/alice");
                b
            },
            "locked",
        ),
    ] {
        let started = Instant::now();
        let p = app.embed_json("alpha", "dashboard", &body).await;
        assert_eq!(
            (p["code"].as_str(), p["upstreamId"].as_str()),
            (Some("upstream_unavailable"), Some(id)),
            "{p}"
        );
        assert!(
            started.elapsed()
                < Duration::from_millis(app.app.gateway.settings().api.miss_timeout_ms)
        );
    }
    let us = app
        .embed("alpha", "dashboard", &dash("sales-2024", "alice"))
        .await;
    assert_eq!(us.status(), 200);
    assert!(app.sim.sim.ledger().assume_role_refused >= 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstreams_throttling_leaves_the_others_pool_hits_alone() {
    let app = spawn_app_on(two_region_sim(), Clock::System, |s| {
        two_upstreams(s, None);
        s.tenants[0].warm = vec![warm(dash("sales-2024", "alice"), 20)];
    })
    .await;
    let key = app.key_of(0, &dash("sales-2024", "alice"));
    let gw = app.app.gateway.clone();
    assert!(
        app.eventually(10, || gw.pool().len(&key) >= 20).await,
        "the US key is stocked"
    );
    // US hit latency with both upstreams healthy, for the report (not asserted: load-dependent).
    let mut calm_ms = vec![];
    for _ in 0..50 {
        let started = Instant::now();
        app.embed_json("alpha", "dashboard", &dash("sales-2024", "alice"))
            .await;
        calm_ms.push(started.elapsed().as_secs_f64() * 1e3);
        app.embed_json("alpha", "dashboard", &eu_dash("alice"))
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The EU account is throttled hard at QuickSight from now on.
    app.sim
        .sim
        .update_knobs(&json!({"throttle_rps": 1, "throttle_burst": 1, "fault_accounts": [EU]}))
        .unwrap();
    let mut us_sources = vec![];
    let mut eu_codes = vec![];
    let mut throttled_ms = vec![];
    for i in 0..100 {
        let started = Instant::now();
        let us = app
            .embed_json("alpha", "dashboard", &dash("sales-2024", "alice"))
            .await;
        throttled_ms.push(started.elapsed().as_secs_f64() * 1e3);
        us_sources.push(us["Source"].as_str().unwrap_or("error").to_string());
        // A new EU key each time: a miss, straight into the throttle.
        let eu = app
            .embed_json("alpha", "dashboard", &eu_dash(&format!("user-{i:04}")))
            .await;
        eu_codes.push(eu["code"].as_str().unwrap_or("ok").to_string());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    eprintln!(
        "US pool-hit latency, median: {:.2} ms with both upstreams healthy, {:.2} ms while EU is throttled",
        median(&mut calm_ms),
        median(&mut throttled_ms)
    );
    let from_pool = us_sources.iter().filter(|s| *s == "pool").count();
    assert_eq!(
        from_pool, 100,
        "every US request was a pool hit: {us_sources:?}"
    );
    assert!(
        eu_codes.iter().any(|c| c.starts_with("upstream_")),
        "the EU upstream was throttled: {eu_codes:?}"
    );
    let m = app.metrics().await;
    assert!(metric(&m, "embedgate_upstream_calls_total{operation=\"GetDashboardEmbedUrl\",result=\"throttled\",upstream=\"eu\"}") >= 1.0);
    assert_eq!(metric(&m, "embedgate_upstream_calls_total{operation=\"GetDashboardEmbedUrl\",result=\"throttled\",upstream=\"us\"}"), 0.0);
    assert_eq!(
        metric(
            &m,
            &format!("embedgate_upstream_budget_rate{{account=\"{US}\",region=\"us-east-1\"}}")
        ),
        1000.0,
        "the US budget never adapted down"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_upstream_holds_only_its_own_slots() {
    let app = std::sync::Arc::new(
        spawn_app_on(two_region_sim(), Clock::System, |s| {
            two_upstreams(s, None);
            s.upstreams[1].max_concurrency = 8;
            s.refill.enabled = false;
        })
        .await,
    );
    // Establish both upstreams' credentials, then make every EU call hang.
    for body in [dash("sales-2024", "alice"), eu_dash("alice")] {
        assert_eq!(app.embed("alpha", "dashboard", &body).await.status(), 200);
    }
    app.sim
        .sim
        .update_knobs(&json!({"hang_rate": 1.0, "hang_ms": 20_000, "fault_accounts": [EU]}))
        .unwrap();
    // More EU callers than there are slots anywhere, all stuck at QuickSight or waiting...
    let stuck: Vec<_> = (0..80)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                app.embed_json("alpha", "dashboard", &eu_dash(&format!("user-{i:04}")))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...while US misses (a new key each) go straight through.
    for i in 0..20 {
        let body = dash("sales-2024", &format!("user-{:04}", 100 + i));
        let r = app.embed_json("alpha", "dashboard", &body).await;
        assert_eq!(r["Source"], "upstream", "US miss {i} while EU hangs: {r}");
    }
    for s in stuck {
        let p = s.await.unwrap();
        assert_eq!(p["upstreamId"], "eu", "{p}");
    }
    std::sync::Arc::try_unwrap(app).ok().unwrap().stop().await;
}
