//! Tenant policy and the request model, end to end: every escape a valid tenant had (each refused
//! with QuickSight never called), every member of the current model reaching QuickSight intact,
//! and refusals that leak nothing and cost the tenant its rate.

use serde_json::{json, Value};

use crate::helpers::*;
use embedgate::config::{PolicySettings, Settings};
use embedgate::model::Operation;

/// The kitchen-sink requests shared with the boto3 test: every member of every operation.
pub fn kitchen_sink() -> Vec<(String, Operation, Value)> {
    let text = include_str!("../fixtures/kitchen-sink.json");
    let cases: Vec<Value> = serde_json::from_str(text).unwrap();
    cases
        .into_iter()
        .map(|c| {
            let op = serde_json::from_value(c["Operation"].clone()).unwrap();
            (
                c["Name"].as_str().unwrap().to_string(),
                op,
                c["Body"].clone(),
            )
        })
        .collect()
}

pub fn endpoint(op: Operation) -> &'static str {
    match op {
        Operation::GetDashboardEmbedUrl => "dashboard",
        Operation::GenerateEmbedUrlForAnonymousUser => "anonymous-user",
        Operation::GenerateEmbedUrlForRegisteredUser => "registered-user",
    }
}

/// The domains the kitchen sink names in `AllowedDomains`.
const SINK_DOMAINS: [&str; 3] = [
    "https://app.example.com",
    "https://*.example.org",
    "http://localhost:3000",
];

/// A policy that allows everything the kitchen sink asks for: `alpha` every request that names
/// no domain, `beta` (the same policy, listing the kitchen sink's domains) every one that does.
fn permissive(s: &mut Settings) {
    s.refill.enabled = false;
    let p = &mut s.tenants[0].policy;
    p.topics = vec!["*".into()];
    p.themes = vec!["*".into()];
    p.experiences = [
        "Dashboard",
        "DashboardVisual",
        "QuickSightConsole",
        "QSearchBar",
        "GenerativeQnA",
        "QuickChat",
    ]
    .map(String::from)
    .to_vec();
    p.session_tags = [
        ("tenant".to_string(), vec!["alpha".to_string()]),
        ("region".to_string(), vec!["*".to_string()]),
    ]
    .into();
    let mut fenced = p.clone();
    fenced.allowed_domains = SINK_DOMAINS.map(String::from).to_vec();
    s.tenants[1].policy = fenced;
}

/// The tenant of [`permissive`] that may send `body`.
fn sink_tenant(body: &Value) -> &'static str {
    if body.get("AllowedDomains").is_some() {
        "beta"
    } else {
        "alpha"
    }
}

#[tokio::test]
async fn every_member_of_every_operation_reaches_quicksight_intact() {
    let app = spawn_app(permissive).await;
    for (name, op, body) in kitchen_sink() {
        let r = app.embed(sink_tenant(&body), endpoint(op), &body).await;
        let status = r.status();
        let answer: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{name}: {answer}");
        let seen = app.sim.sim.last_inputs().remove(&op).unwrap();
        assert_eq!(
            seen, body,
            "{name}: QuickSight received what the portal sent"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn implicit_defaults_are_sent_explicitly() {
    let app = spawn_app(|s| s.refill.enabled = false).await;
    let r = app
        .embed(
            "alpha",
            "dashboard",
            &json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let seen = app.sim.sim.last_inputs()[&Operation::GetDashboardEmbedUrl].clone();
    assert_eq!(
        (
            &seen["AwsAccountId"],
            &seen["Namespace"],
            &seen["SessionLifetimeInMinutes"]
        ),
        (&json!(ACCOUNT), &json!("default"), &json!(600)),
        "what the policy checked is what QuickSight acts on"
    );
    app.stop().await;
}

/// Sends `body` as `alpha` and checks the refusal: status, code and field, and that QuickSight
/// was not called.
async fn refused(app: &TestApp, kind: &str, body: Value, status: u16, field: &str) -> Value {
    let before = app.sim.sim.ledger().calls;
    let r = app.embed("alpha", kind, &body).await;
    let got = r.status().as_u16();
    let p: Value = r.json().await.unwrap();
    assert_eq!(got, status, "{body} → {p}");
    assert_eq!(p["field"], field, "{body} → {p}");
    assert_eq!(
        app.sim.sim.ledger().calls,
        before,
        "QuickSight is never called for a refused request: {body}"
    );
    p
}

/// A gateway without the refiller whose tenant `alpha` has its policy changed by `change`.
async fn with_policy(change: impl FnOnce(&mut PolicySettings)) -> TestApp {
    spawn_app(|s| {
        s.refill.enabled = false;
        change(&mut s.tenants[0].policy);
    })
    .await
}

fn anon(arns: Value, domains: Option<Value>) -> Value {
    let mut b = json!({
        "Namespace": "default",
        "SessionTags": [{"Key": "tenant", "Value": "alpha"}],
        "AuthorizedResourceArns": arns,
        "ExperienceConfiguration": {"Dashboard": {"InitialDashboardId": "sales-2024"}},
    });
    if let Some(d) = domains {
        b["AllowedDomains"] = d;
    }
    b
}

#[tokio::test]
async fn an_omitted_namespace_is_default_and_a_user_arns_namespace_must_match() {
    let app = with_policy(|p| {
        p.namespaces = vec!["acme".into()];
        p.user_arns = vec![format!("arn:aws:quicksight:*:{ACCOUNT}:user/acme/*")];
    })
    .await;
    // Omitted, the namespace is `default`: outside this tenant's policy.
    refused(
        &app,
        "dashboard",
        json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS"}),
        403,
        "Namespace",
    )
    .await;
    let dave = format!("arn:aws:quicksight:us-east-1:{ACCOUNT}:user/acme/dave");
    // The explicit namespace and the user's must agree; omitted means default.
    refused(
        &app,
        "dashboard",
        json!({"DashboardId": "sales-2024", "IdentityType": "QUICKSIGHT", "UserArn": dave}),
        400,
        "Namespace",
    )
    .await;
    refused(
        &app,
        "dashboard",
        json!({"DashboardId": "sales-2024", "IdentityType": "QUICKSIGHT", "Namespace": "acme", "UserArn": user_arn("alice")}),
        400,
        "Namespace",
    )
    .await;
    let ok = app
        .embed(
            "alpha",
            "dashboard",
            &json!({"DashboardId": "sales-2024", "IdentityType": "QUICKSIGHT", "Namespace": "acme", "UserArn": dave}),
        )
        .await;
    assert_eq!(
        ok.status(),
        200,
        "the same request inside the policy passes"
    );
    app.stop().await;
}

/// The gateway remembers bodies it admitted (so a repeated request is not parsed and checked
/// again), but the same bytes from another tenant are judged by that tenant's policy and
/// defaults, however often the first tenant sent them.
#[tokio::test]
async fn the_same_body_from_another_tenant_is_judged_by_its_own_policy() {
    let app = spawn_app(|s| {
        s.refill.enabled = false;
        s.tenants[1].policy.dashboards = vec!["finance".into()];
        s.tenants[1].policy.accounts = vec![ACCOUNT.into()];
        s.tenants[1].default_account = None;
    })
    .await;
    let body = dash("sales-2024", "alice");
    let mut urls = std::collections::HashSet::new();
    for _ in 0..3 {
        let r = app.embed("alpha", "dashboard", &body).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        urls.insert(v["EmbedUrl"].as_str().unwrap().to_string());
    }
    assert_eq!(urls.len(), 3, "each request its own URL");
    let calls = app.sim.sim.ledger().calls;
    for _ in 0..2 {
        let r = app.embed("beta", "dashboard", &body).await;
        assert_eq!(r.status(), 400, "beta has no default account");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["field"], "AwsAccountId", "{p}");
    }
    let mut with_account = body.clone();
    with_account["AwsAccountId"] = json!(ACCOUNT);
    for _ in 0..2 {
        let r = app.embed("alpha", "dashboard", &with_account).await;
        assert_eq!(r.status(), 200);
        let r = app.embed("beta", "dashboard", &with_account).await;
        assert_eq!(r.status(), 403, "beta may open only finance");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["field"], "DashboardId", "{p}");
    }
    assert_eq!(
        app.sim.sim.ledger().calls,
        calls + 2,
        "only alpha's two requests reached QuickSight"
    );
    // Alpha's two bodies were each worked out once and remembered after; beta's refusals are
    // neither remembered nor counted.
    let m = app.metrics().await;
    assert_eq!(
        metric(&m, r#"embedgate_admission_memo_total{result="miss"}"#),
        2.0
    );
    assert_eq!(
        metric(&m, r#"embedgate_admission_memo_total{result="hit"}"#),
        3.0
    );
    app.stop().await;
}

#[tokio::test]
async fn get_dashboard_embed_url_is_the_dashboard_experience() {
    let app = with_policy(|p| p.experiences = vec!["DashboardVisual".into()]).await;
    let p = refused(
        &app,
        "dashboard",
        json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS"}),
        403,
        "Operation",
    )
    .await;
    assert_eq!(p["code"], "forbidden_by_policy");
    app.stop().await;
}

#[tokio::test]
async fn authorized_resource_arns_are_checked_in_full() {
    let app = spawn_app(|s| s.refill.enabled = false).await;
    let own = dashboard_arn("sales-2024");
    let cases = [
        // Another account's dashboard with an allowed id.
        (
            "arn:aws:quicksight:us-east-1:999999999999:dashboard/sales-2024".to_string(),
            400,
        ),
        // Another region, another partition.
        (
            format!("arn:aws:quicksight:eu-west-1:{ACCOUNT}:dashboard/sales-2024"),
            400,
        ),
        (
            format!("arn:aws-cn:quicksight:us-east-1:{ACCOUNT}:dashboard/sales-2024"),
            400,
        ),
        // Not a QuickSight ARN; a type nothing can authorize; an id QuickSight would refuse.
        ("arn:aws:s3:::bucket/sales-2024".to_string(), 400),
        (
            format!("arn:aws:quicksight:us-east-1:{ACCOUNT}:analysis/a1"),
            400,
        ),
        (
            format!("arn:aws:quicksight:us-east-1:{ACCOUNT}:dashboard/x/../finance"),
            400,
        ),
        // A topic, and a theme, while the policy lists none.
        (
            format!("arn:aws:quicksight:us-east-1:{ACCOUNT}:topic/anything"),
            403,
        ),
        (
            format!("arn:aws:quicksight:us-east-1:{ACCOUNT}:theme/dark"),
            403,
        ),
    ];
    for (arn, status) in cases {
        refused(
            &app,
            "anonymous-user",
            anon(json!([own, arn]), None),
            status,
            "AuthorizedResourceArns[1]",
        )
        .await;
    }
    app.stop().await;
}

/// `AllowedDomains` replaces the account's static allow list for the URL (AWS: "overrides the
/// static domains that are configured in the Manage QuickSight menu ... it allows only the domains
/// that you include"), so a tenant whose policy lists no domains could otherwise move its URLs to
/// any site, one the operator's account-wide list keeps out.
#[tokio::test]
async fn a_tenant_whose_policy_lists_no_domains_cannot_name_one() {
    let app = spawn_app(|s| s.refill.enabled = false).await;
    let own = json!([dashboard_arn("sales-2024")]);
    for domains in [
        json!(["https://evil.example"]),
        json!(["https://*.example.com"]),
        json!(["http://localhost"]),
    ] {
        let p = refused(
            &app,
            "anonymous-user",
            anon(own.clone(), Some(domains.clone())),
            403,
            "AllowedDomains[0]",
        )
        .await;
        assert_eq!(p["code"], "forbidden_by_policy", "{domains} → {p}");
        assert!(
            p["detail"].as_str().unwrap().contains("allowed_domains"),
            "the refusal names the policy setting that would allow it: {p}"
        );
    }
    refused(
        &app,
        "registered-user",
        json!({
            "UserArn": user_arn("alice"),
            "ExperienceConfiguration": {"Dashboard": {"InitialDashboardId": "sales-2024"}},
            "AllowedDomains": ["https://evil.example"],
        }),
        403,
        "AllowedDomains[0]",
    )
    .await;
    // Without the member the URL opens on the account's own list: allowed.
    let r = app.embed("alpha", "anonymous-user", &anon(own, None)).await;
    assert_eq!(r.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn allowed_domains_follow_awss_rules_and_the_tenants_list() {
    // A tenant whose policy lists domains: every entry must be valid by AWS's rules (400) and
    // within the list (403), and a request that names none (or cannot, as GetDashboardEmbedUrl)
    // is refused.
    let app = with_policy(|p| {
        p.allowed_domains = [
            "https://*.alpha.example",
            "https://www.アマゾンドメイン.jp",
            "http://localhost",
            "https://*.amazon.com",
        ]
        .map(String::from)
        .to_vec();
    })
    .await;
    let own = json!([dashboard_arn("sales-2024")]);
    for bad in [
        "http://localhost.evil.example",
        "https://111.222.33.44.55",
        "https://111.222.33.44.55:1234",
        "https://co.uk",
        "https://example.com.*.example-1.co.uk",
    ] {
        refused(
            &app,
            "anonymous-user",
            anon(own.clone(), Some(json!([bad]))),
            400,
            "AllowedDomains[0]",
        )
        .await;
    }
    for good in [
        "https://www.アマゾンドメイン.jp",
        "http://localhost",
        "https://*.sapp.amazon.com",
        "https://portal.alpha.example",
    ] {
        let r = app
            .embed(
                "alpha",
                "anonymous-user",
                &anon(own.clone(), Some(json!([good]))),
            )
            .await;
        assert_eq!(r.status(), 200, "{good}");
    }
    refused(
        &app,
        "anonymous-user",
        anon(
            own.clone(),
            Some(json!([
                "https://portal.alpha.example",
                "https://evil.example"
            ])),
        ),
        403,
        "AllowedDomains[1]",
    )
    .await;
    refused(
        &app,
        "anonymous-user",
        anon(own.clone(), None),
        403,
        "AllowedDomains",
    )
    .await;
    refused(
        &app,
        "dashboard",
        json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS", "Namespace": "default"}),
        403,
        "Operation",
    )
    .await;
    app.stop().await;
}

/// Tag-based row-level security works only for GenerateEmbedUrlForAnonymousUser: an anonymous
/// GetDashboardEmbedUrl session carries no tags at all, so a tenant whose data is separated by
/// the tags its policy requires must not get one.
#[tokio::test]
async fn required_session_tags_cannot_be_escaped_through_anonymous_get_dashboard_embed_url() {
    let app = with_policy(|p| p.required_session_tags = vec!["tenant".into()]).await;
    let p = refused(
        &app,
        "dashboard",
        json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS"}),
        403,
        "IdentityType",
    )
    .await;
    assert!(
        p["detail"].as_str().unwrap().contains("\"tenant\""),
        "the refusal names the tag the policy requires: {p}"
    );
    // The operation that carries the tags, and registered users (whose data is separated by
    // user-based rules, not tags), are unaffected; so is a tenant that requires no tag.
    let tagged = anon(json!([dashboard_arn("sales-2024")]), None);
    assert_eq!(
        app.embed("alpha", "anonymous-user", &tagged).await.status(),
        200
    );
    assert_eq!(
        app.embed("alpha", "dashboard", &dash("sales-2024", "alice"))
            .await
            .status(),
        200
    );
    let anonymous = json!({"DashboardId": "sales-2024", "IdentityType": "ANONYMOUS"});
    assert_eq!(
        app.embed("beta", "dashboard", &anonymous).await.status(),
        200
    );
    app.stop().await;
}

/// QuickSight reads a session tag's value through the dataset's tag rule: split on its
/// `TagMultiValueDelimiter` (each part a value the session may see) and, equal to its
/// `MatchAllValue`, as every value. A pattern with a wildcard bounds the value as the gateway
/// reads it, so `alpha-*` would vouch for `alpha-1,beta` (two values, one another tenant's) and
/// `e*` for a match-all `everywhere`: the gateway must read values as QuickSight does.
#[tokio::test]
async fn a_session_tag_value_is_checked_as_the_datasets_tag_rule_reads_it() {
    use embedgate::config::TagRule;
    let partial = |s: &mut Settings| {
        s.refill.enabled = false;
        s.tenants[0].policy.session_tags = [
            ("tenant".to_string(), vec!["alpha-*".to_string()]),
            (
                "region".to_string(),
                vec!["e*".to_string(), "us".to_string()],
            ),
        ]
        .into();
    };
    // Without the rule a partial wildcard cannot be judged: refused at start, naming the tag and
    // the setting that declares the rule.
    let mut s = gateway_settings("http://127.0.0.1:1");
    partial(&mut s);
    let err = s.validate().unwrap_err();
    assert!(
        err.contains("policy.session_tags.region") && err.contains("session_tag_rules"),
        "{err}"
    );

    let app = spawn_app(|s| {
        partial(s);
        let rule = |delimiter: &str, all: &str| TagRule {
            multi_value_delimiter: delimiter.into(),
            match_all_value: all.into(),
        };
        s.tenants[0].policy.session_tag_rules = [
            ("tenant".to_string(), rule(",", "")),
            ("region".to_string(), rule("|", "everywhere")),
        ]
        .into();
    })
    .await;
    let tagged = |tenant: &str, region: &str| {
        let mut body = anon(json!([dashboard_arn("sales-2024")]), None);
        body["SessionTags"] =
            json!([{"Key": "tenant", "Value": tenant}, {"Key": "region", "Value": region}]);
        body
    };
    for (tenant, region) in [
        ("alpha-1", "eu"),
        ("alpha-1,alpha-2", "eu|us"),
        ("alpha-1", "east"),
    ] {
        let r = app
            .embed("alpha", "anonymous-user", &tagged(tenant, region))
            .await;
        assert_eq!(r.status(), 200, "{tenant} {region}");
    }
    for (tenant, region, field) in [
        ("alpha-1,beta", "eu", "SessionTags[0]"),
        ("beta,alpha-1", "eu", "SessionTags[0]"),
        ("alpha-1", "everywhere", "SessionTags[1]"),
        ("alpha-1", "eu|everywhere", "SessionTags[1]"),
        ("alpha-1", "eu|ap", "SessionTags[1]"),
    ] {
        let p = refused(&app, "anonymous-user", tagged(tenant, region), 403, field).await;
        assert!(
            !p.to_string().contains("beta") && !p.to_string().contains("everywhere"),
            "tag values are sensitive: {p}"
        );
    }
    app.stop().await;

    // A bare `*` allows any value, several and all included: it needs no rule.
    let mut s = gateway_settings("http://127.0.0.1:1");
    s.tenants[0].policy.session_tags = [("region".to_string(), vec!["*".to_string()])].into();
    s.validate().unwrap();
}

#[tokio::test]
async fn a_denied_feature_cannot_be_enabled_anywhere() {
    let app = spawn_app(|s| {
        permissive(s);
        s.tenants[0].policy.denied_features =
            vec!["GenerativeAuthoring".into(), "SharedView".into()];
    })
    .await;
    let console = |q: Value| json!({"UserArn": user_arn("alice"), "ExperienceConfiguration": {"QuickSightConsole": {"InitialPath": "/start", "FeatureConfigurations": {"AmazonQInQuickSight": q}}}});
    refused(
        &app,
        "registered-user",
        console(json!({"GenerativeAuthoring": {"Enabled": true}})),
        403,
        "ExperienceConfiguration.QuickSightConsole.FeatureConfigurations.AmazonQInQuickSight.GenerativeAuthoring",
    )
    .await;
    let mut shared = anon(json!([dashboard_arn("sales-2024")]), None);
    shared["ExperienceConfiguration"]["Dashboard"]["EnabledFeatures"] = json!(["SHARED_VIEW"]);
    refused(
        &app,
        "anonymous-user",
        shared,
        403,
        "ExperienceConfiguration.Dashboard.EnabledFeatures[0]",
    )
    .await;
    // Switching it off, or leaving it out, is fine.
    let r = app
        .embed(
            "alpha",
            "registered-user",
            &console(
                json!({"GenerativeAuthoring": {"Enabled": false}, "DataQnA": {"Enabled": true}}),
            ),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn duplicate_session_tag_keys_are_refused() {
    let app = spawn_app(|s| s.refill.enabled = false).await;
    let mut body = anon(json!([dashboard_arn("sales-2024")]), None);
    body["SessionTags"] =
        json!([{"Key": "tenant", "Value": "alpha"}, {"Key": "tenant", "Value": "beta"}]);
    let p = refused(&app, "anonymous-user", body, 400, "SessionTags[1].Key").await;
    assert!(
        !p.to_string().contains("beta"),
        "tag values are sensitive: {p}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_body_must_be_declared_as_json() {
    let app = spawn_app(|s| s.refill.enabled = false).await;
    let body = dash("sales-2024", "alice").to_string();
    for (ct, status) in [
        (None, 415),
        (Some("text/plain"), 415),
        (Some("application/jsonp"), 415),
        (Some("application/json-patch+json"), 415),
        (Some("application/json; charset=utf-8"), 200),
        (Some("Application/JSON"), 200),
    ] {
        let mut r = app
            .http
            .post(format!("{}/v1/embed-url/dashboard", app.base))
            .bearer_auth(&app.keys["alpha"])
            .body(body.clone());
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), status, "{ct:?}");
        if status == 415 {
            let p: Value = r.json().await.unwrap();
            assert_eq!(p["field"], "Content-Type");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_compressed_body_is_refused_naming_its_encoding_not_read_as_json() {
    // embedgate does not decompress request bodies: a gzipped JSON body read as JSON would be
    // "invalid_json at line 1 column 1", which names nothing the client can fix.
    let app = spawn_app(|s| s.refill.enabled = false).await;
    let body = dash("sales-2024", "alice").to_string();
    // (Content-Encoding, the coding a refusal names)
    for (encoding, refused) in [
        (Some("gzip"), Some("gzip")),
        (Some("br"), Some("br")),
        (Some("identity, gzip"), Some("gzip")),
        (Some(""), None),
        (Some("identity"), None),
        (Some("Identity"), None),
        (None, None),
    ] {
        let mut r = app
            .http
            .post(format!("{}/v1/embed-url/dashboard", app.base))
            .bearer_auth(&app.keys["alpha"])
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(e) = encoding {
            r = r.header("content-encoding", e);
        }
        let r = r.send().await.unwrap();
        assert_eq!(
            r.status(),
            if refused.is_some() { 415 } else { 200 },
            "{encoding:?}"
        );
        if let Some(coding) = refused {
            assert_eq!(r.headers()["accept-encoding"], "identity", "{encoding:?}");
            let p: Value = r.json().await.unwrap();
            assert_eq!(p["code"], "unsupported_media_type", "{p}");
            assert_eq!(p["field"], "Content-Encoding", "{p}");
            let detail = p["detail"].as_str().unwrap();
            assert!(detail.contains(&format!("{coding:?}")), "{detail}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn refused_requests_count_against_the_tenants_rate() {
    let app = spawn_app(|s| {
        s.refill.enabled = false;
        s.tenants[0].rate_per_sec = 0.5;
        s.tenants[0].burst = 3;
    })
    .await;
    for _ in 0..3 {
        let r = app
            .embed("alpha", "dashboard", &json!({"DashboardId": "no way!"}))
            .await;
        assert_eq!(r.status(), 400);
    }
    // The burst is spent on invalid requests: a valid one now waits its turn.
    let r = app
        .embed("alpha", "dashboard", &dash("sales-2024", "alice"))
        .await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // Another tenant is unaffected.
    let r = app
        .embed("beta", "dashboard", &dash("sales-2024", "alice"))
        .await;
    assert_eq!(r.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn requests_without_a_valid_key_share_one_limit() {
    let app = spawn_app(|s| {
        s.refill.enabled = false;
        s.api.unauthenticated_rate_per_sec = 0.5;
        s.api.unauthenticated_burst = 5;
    })
    .await;
    let send = |key: &'static str| {
        app.http
            .post(format!("{}/v1/embed-url/dashboard", app.base))
            .bearer_auth(key)
            .json(&dash("sales-2024", "alice"))
            .send()
    };
    for _ in 0..5 {
        assert_eq!(send("guess").await.unwrap().status(), 401);
    }
    let r = send("another-guess").await.unwrap();
    assert_eq!(r.status(), 429, "guessing keys is rate limited");
    assert!(r.headers().contains_key("retry-after"));
    // A tenant with a valid key is not affected by the flood.
    assert_eq!(send("alpha-key").await.unwrap().status(), 200);
    app.stop().await;
}

/// `text` must carry nothing QuickSight said about the gateway's identity.
fn assert_leaks_nothing(text: &str) {
    for secret in [
        embedgate::sim::DEFAULT_ACCESS_KEY_ID,
        "arn:aws:iam",
        "not authorized",
        "signature",
        "security token",
        "not found in account",
    ] {
        assert!(
            !text.to_lowercase().contains(&secret.to_lowercase()),
            "{secret:?} leaked: {text}"
        );
    }
}

#[tokio::test]
async fn a_refusal_of_the_gateways_own_credentials_is_a_502_that_names_nothing() {
    for (why, customize) in [
        (
            "wrong secret",
            Box::new(|s: &mut Settings| {
                s.upstream.secret_access_key =
                    Some(embedgate::config::Secret::new("not-the-secret"))
            }) as Box<dyn FnOnce(&mut Settings)>,
        ),
        (
            "unknown key",
            Box::new(|s: &mut Settings| s.upstream.access_key_id = Some("AKIDUNKNOWN0000".into())),
        ),
    ] {
        let app = spawn_app(|s| {
            s.refill.enabled = false;
            customize(s);
        })
        .await;
        let r = app
            .embed("alpha", "dashboard", &dash("sales-2024", "alice"))
            .await;
        assert_eq!(r.status(), 502, "{why}: the caller is not to blame");
        let text = r.text().await.unwrap();
        let p: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(p["code"], "upstream_refused", "{why}");
        assert_leaks_nothing(&text);
        app.stop().await;
    }
}

#[tokio::test]
async fn quicksights_access_denied_for_the_gateways_principal_is_a_502() {
    // The simulator refuses this key for the demo account with an AccessDeniedException whose
    // message names the IAM user and access key, as AWS's do.
    let app = with_policy(|p| p.accounts = vec![ACCOUNT.into(), "777788889999".into()]).await;
    app.sim
        .sim
        .restrict_key(embedgate::sim::DEFAULT_ACCESS_KEY_ID, &["777788889999"]);
    let r = app
        .embed("alpha", "dashboard", &dash("sales-2024", "alice"))
        .await;
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert_leaks_nothing(&text);
    app.stop().await;
}

#[tokio::test]
async fn a_callers_fault_keeps_quicksights_code_but_not_its_message() {
    let app = spawn_app(|s| s.refill.enabled = false).await;
    let r = app
        .embed("alpha", "dashboard", &dash("no-such-dashboard", "alice"))
        .await;
    assert_eq!(r.status(), 404);
    let text = r.text().await.unwrap();
    let p: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(p["upstreamCode"], "ResourceNotFoundException");
    assert_leaks_nothing(&text);
    app.stop().await;
}

#[test]
fn one_api_key_on_two_tenants_is_refused_at_start_naming_both() {
    let mut s = gateway_settings("http://127.0.0.1:1");
    s.tenants[1].api_key_sha256 = s.tenants[0].api_key_sha256.clone();
    let err = s.validate().unwrap_err();
    assert!(
        err.contains("\"alpha\"") && err.contains("\"beta\"") && err.contains("api_key_sha256"),
        "{err}"
    );
}

#[test]
fn policy_settings_default_to_nothing_beyond_dashboards_and_visuals() {
    let p = PolicySettings::default();
    assert!(p.topics.is_empty() && p.themes.is_empty() && p.allowed_domains.is_empty());
    assert_eq!(p.experiences, vec!["Dashboard", "DashboardVisual"]);
}

/// The fixture body named `name`.
fn fixture(name: &str) -> Value {
    kitchen_sink()
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, _, b)| b)
        .unwrap()
}

#[tokio::test]
async fn the_simulator_parses_every_member_the_rust_sdk_sends() {
    use aws_sdk_quicksight::types as qs;
    let sim = spawn_sim();
    let client = sdk_client(&sim.endpoint);
    let inputs = || sim.sim.last_inputs();

    client
        .get_dashboard_embed_url()
        .aws_account_id(ACCOUNT)
        .dashboard_id("sales-2024")
        .identity_type(qs::EmbeddingIdentityType::Anonymous)
        .session_lifetime_in_minutes(120)
        .undo_redo_disabled(true)
        .reset_disabled(false)
        .state_persistence_enabled(true)
        .namespace("default")
        .additional_dashboard_ids("finance")
        .additional_dashboard_ids("ops-overview")
        .send()
        .await
        .unwrap();
    assert_eq!(
        inputs()[&Operation::GetDashboardEmbedUrl],
        fixture("GetDashboardEmbedUrl, anonymous with additional dashboards")
    );

    let arn = |t: &str, i: &str| format!("arn:aws:quicksight:us-east-1:{ACCOUNT}:{t}/{i}");
    client
        .generate_embed_url_for_anonymous_user()
        .aws_account_id(ACCOUNT)
        .session_lifetime_in_minutes(60)
        .namespace("default")
        .session_tags(qs::SessionTag::builder().key("tenant").value("alpha").build().unwrap())
        .session_tags(qs::SessionTag::builder().key("region").value("eu").build().unwrap())
        .authorized_resource_arns(arn("dashboard", "sales-2024"))
        .authorized_resource_arns(arn("dashboard", "finance"))
        .authorized_resource_arns(arn("topic", "t-sales"))
        .authorized_resource_arns(arn("theme", "dark"))
        .experience_configuration(
            qs::AnonymousUserEmbeddingExperienceConfiguration::builder()
                .dashboard(
                    qs::AnonymousUserDashboardEmbeddingConfiguration::builder()
                        .initial_dashboard_id("sales-2024")
                        .enabled_features(
                            qs::AnonymousUserDashboardEmbeddingConfigurationEnabledFeature::SharedView,
                        )
                        .disabled_features(
                            qs::AnonymousUserDashboardEmbeddingConfigurationDisabledFeature::SharedView,
                        )
                        .feature_configurations(
                            qs::AnonymousUserDashboardFeatureConfigurations::builder()
                                .shared_view(qs::SharedViewConfigurations::builder().enabled(true).build())
                                .build(),
                        )
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .allowed_domains("https://app.example.com")
        .allowed_domains("https://*.example.org")
        .allowed_domains("http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        inputs()[&Operation::GenerateEmbedUrlForAnonymousUser],
        fixture("GenerateEmbedUrlForAnonymousUser, dashboard")
    );

    let console = qs::RegisteredUserConsoleFeatureConfigurations::builder()
        .state_persistence(
            qs::StatePersistenceConfigurations::builder()
                .enabled(true)
                .build(),
        )
        .shared_view(
            qs::SharedViewConfigurations::builder()
                .enabled(true)
                .build(),
        )
        .amazon_q_in_quick_sight(
            qs::AmazonQInQuickSightConsoleConfigurations::builder()
                .data_qn_a(qs::DataQnAConfigurations::builder().enabled(true).build())
                .generative_authoring(
                    qs::GenerativeAuthoringConfigurations::builder()
                        .enabled(false)
                        .build(),
                )
                .executive_summary(
                    qs::ExecutiveSummaryConfigurations::builder()
                        .enabled(true)
                        .build(),
                )
                .data_stories(
                    qs::DataStoriesConfigurations::builder()
                        .enabled(true)
                        .build(),
                )
                .build(),
        )
        .schedules(
            qs::SchedulesConfigurations::builder()
                .enabled(false)
                .build(),
        )
        .recent_snapshots(
            qs::RecentSnapshotsConfigurations::builder()
                .enabled(true)
                .build(),
        )
        .threshold_alerts(
            qs::ThresholdAlertsConfigurations::builder()
                .enabled(false)
                .build(),
        )
        .dashboard_customization_summary(
            qs::DashboardCustomizationSummaryConfigurations::builder()
                .enabled(true)
                .build(),
        )
        .build();
    client
        .generate_embed_url_for_registered_user()
        .aws_account_id(ACCOUNT)
        .session_lifetime_in_minutes(600)
        .user_arn(user_arn("alice"))
        .experience_configuration(
            qs::RegisteredUserEmbeddingExperienceConfiguration::builder()
                .quick_sight_console(
                    qs::RegisteredUserQuickSightConsoleEmbeddingConfiguration::builder()
                        .initial_path("/dashboards/sales-2024")
                        .feature_configurations(console)
                        .build(),
                )
                .build(),
        )
        .allowed_domains("https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        inputs()[&Operation::GenerateEmbedUrlForRegisteredUser],
        fixture("GenerateEmbedUrlForRegisteredUser, console")
    );

    client
        .generate_embed_url_for_registered_user()
        .aws_account_id(ACCOUNT)
        .session_lifetime_in_minutes(60)
        .user_arn(user_arn("alice"))
        .experience_configuration(
            qs::RegisteredUserEmbeddingExperienceConfiguration::builder()
                .quick_chat(qs::RegisteredUserQuickChatEmbeddingConfiguration::builder().build())
                .build(),
        )
        .allowed_domains("https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        inputs()[&Operation::GenerateEmbedUrlForRegisteredUser],
        fixture("GenerateEmbedUrlForRegisteredUser, Quick chat")
    );
    sim.stop().await;
}
