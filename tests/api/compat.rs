//! Drop-in mode with the official Rust SDK (`aws-sdk-quicksight`, unmodified, pointed at the
//! compatible listener): pooled URLs on a warm key, the refusals as the SDK's typed exceptions,
//! throttling retried by the SDK's own retry logic, and every signature AWS would refuse refused
//! before anything upstream is touched. boto3 and the JavaScript SDK are driven by
//! `tests/python/test_compat_boto3.py` and `tests/node/compat.test.mjs`.

use std::time::{Duration, SystemTime};

use aws_sdk_quicksight::error::ProvideErrorMetadata;
use aws_sdk_quicksight::types::EmbeddingIdentityType;
use aws_smithy_types::retry::RetryConfig;
use embedgate::clock::Clock;
use embedgate::config::{Secret, Settings};
use embedgate::credentials::derive_secret;
use serde_json::json;

use crate::helpers::*;

const MASTER: &str = "compat-tests-master-key-0123456789abcdef";
const ALPHA_KEY: &str = "EGALPHA0000000000001";
const BETA_KEY: &str = "EGBETA00000000000001";

fn secret(tenant: &str, key_id: &str) -> String {
    derive_secret(&Secret::new(MASTER), tenant, key_id)
        .expose()
        .to_string()
}

/// Compatible listener on port 0; alpha and beta get one access key each.
fn with_compat(s: &mut Settings) {
    s.compat_listen = Some("127.0.0.1:0".parse().unwrap());
    s.master_key = Some(Secret::new(MASTER));
    s.tenants[0].access_key_ids = vec![ALPHA_KEY.into()];
    s.tenants[1].access_key_ids = vec![BETA_KEY.into()];
}

fn client(
    app: &TestApp,
    key_id: &'static str,
    tenant: &str,
    attempts: u32,
) -> aws_sdk_quicksight::Client {
    let secret: &'static str = Box::leak(secret(tenant, key_id).into_boxed_str());
    Sdk {
        access_key: key_id,
        secret,
        retry: RetryConfig::standard()
            .with_max_attempts(attempts)
            .with_initial_backoff(Duration::from_millis(50)),
        ..Sdk::default()
    }
    .client(app.compat.as_deref().expect("compat listener"))
}

/// The anonymous request alpha keeps warm, as a warm-key entry.
fn anonymous_warm(depth: u32) -> serde_json::Value {
    json!({
        "Operation": "GenerateEmbedUrlForAnonymousUser",
        "Depth": depth,
        "Namespace": "default",
        "AuthorizedResourceArns": [dashboard_arn("sales-2024")],
        "ExperienceConfiguration": {"Dashboard": {"InitialDashboardId": "sales-2024"}},
        "SessionTags": [{"Key": "tenant", "Value": "alpha"}],
    })
}

#[tokio::test]
async fn the_rust_sdk_gets_a_pooled_url_and_typed_refusals_with_no_upstream_call() {
    let app = spawn_app(|s| {
        with_compat(s);
        s.tenants[0].warm = vec![anonymous_warm(2)];
    })
    .await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.app.gateway.pool().total() >= 2
        })
        .await,
        "the warm key is stocked"
    );
    let qs = client(&app, ALPHA_KEY, "alpha", 1);

    let out = sdk_anonymous(&qs, ACCOUNT, "sales-2024")
        .session_tags(tenant_tag("alpha"))
        .send()
        .await
        .expect("a URL through the compatible listener");
    assert_eq!(out.status, 200);
    assert!(!out.request_id.is_empty());
    let arn_prefix = format!("arn:aws:quicksight:us-east-1:{ACCOUNT}:user/default/");
    assert!(
        out.anonymous_user_arn.starts_with(&arn_prefix),
        "the pooled URL's AnonymousUserArn: {:?}",
        out.anonymous_user_arn
    );
    let page = http().get(&out.embed_url).send().await.unwrap();
    assert_eq!(page.status(), 200, "the URL redeems");
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            "embedgate_requests_total{outcome=\"hit\",protocol=\"quicksight\",tenant=\"alpha\"}"
        ),
        1.0,
        "served from the pool"
    );

    // Refusals: each the SDK's typed exception, none reaching QuickSight. The refiller restocks
    // the warm key first; after that nothing calls QuickSight unless a refusal does.
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.app.gateway.pool().total() >= 2
        })
        .await
    );
    let calls_before = app.sim.sim.ledger().calls;
    let iam = qs
        .get_dashboard_embed_url()
        .aws_account_id(ACCOUNT)
        .dashboard_id("sales-2024")
        .identity_type(EmbeddingIdentityType::Iam)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        iam.is_access_denied_exception(),
        "IAM is outside the policy: {iam:?}"
    );
    assert!(
        iam.message().unwrap_or_default().contains("IdentityType"),
        "{iam:?}"
    );

    let foreign = qs
        .get_dashboard_embed_url()
        .aws_account_id("999999999999")
        .dashboard_id("sales-2024")
        .identity_type(EmbeddingIdentityType::Anonymous)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        foreign.is_access_denied_exception(),
        "an account the tenant may not use: {foreign:?}"
    );

    let short = qs
        .get_dashboard_embed_url()
        .aws_account_id(ACCOUNT)
        .dashboard_id("sales-2024")
        .identity_type(EmbeddingIdentityType::Anonymous)
        .session_lifetime_in_minutes(5)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        short.is_session_lifetime_in_minutes_invalid_exception(),
        "{short:?}"
    );
    let bad_domain = qs
        .generate_embed_url_for_registered_user()
        .aws_account_id(ACCOUNT)
        .user_arn(user_arn("ann"))
        .experience_configuration(
            aws_sdk_quicksight::types::RegisteredUserEmbeddingExperienceConfiguration::builder()
                .dashboard(
                    aws_sdk_quicksight::types::RegisteredUserDashboardEmbeddingConfiguration::builder()
                        .initial_dashboard_id("sales-2024")
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .allowed_domains("ftp://nope")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        bad_domain.is_invalid_parameter_value_exception(),
        "{bad_domain:?}"
    );
    assert_eq!(
        app.sim.sim.ledger().calls,
        calls_before,
        "no refusal reached QuickSight"
    );
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            "embedgate_requests_total{outcome=\"denied\",protocol=\"quicksight\",tenant=\"alpha\"}"
        ),
        2.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_tenant_over_its_rate_is_throttled_and_the_sdk_retries_until_it_gets_a_url() {
    let app = spawn_app(|s| {
        with_compat(s);
        s.tenants[1].rate_per_sec = 2.0;
        s.tenants[1].burst = 1;
    })
    .await;
    let qs = client(&app, BETA_KEY, "beta", 6);
    for _ in 0..3 {
        let out = qs
            .get_dashboard_embed_url()
            .aws_account_id(ACCOUNT)
            .dashboard_id("sales-2024")
            .identity_type(EmbeddingIdentityType::Quicksight)
            .user_arn(user_arn("bob"))
            .send()
            .await
            .expect("the SDK's retries get through the tenant limit");
        assert!(out.embed_url.is_some());
    }
    let m = app.metrics().await;
    assert!(
        metric(&m, "embedgate_inbound_rejections_total{tenant=\"beta\"}") >= 1.0,
        "the limit refused some attempts, which the SDK retried:\n{}",
        m.lines()
            .filter(|l| l.contains("beta"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        metric(&m, "embedgate_requests_total{outcome=\"throttled\",protocol=\"quicksight\",tenant=\"beta\"}") >= 1.0
    );
    app.stop().await;
}

/// A body the listener cannot read comes before any signature is checked: such requests count
/// against the limit for requests without valid credentials, with bad signatures, so neither
/// kind floods the gateway unthrottled.
#[tokio::test]
async fn unreadable_bodies_and_bad_signatures_share_the_unauthenticated_limit() {
    let clock = Clock::manual();
    let app = spawn_app_with(clock.clone(), |s| {
        with_compat(s);
        s.api.max_body_bytes = 1024;
        s.api.unauthenticated_rate_per_sec = 0.5;
        s.api.unauthenticated_burst = 3;
    })
    .await;
    let base = app.compat.clone().unwrap();
    let oversized = || async {
        let r = http()
            .post(format!(
                "{base}/accounts/{ACCOUNT}/embed-url/anonymous-user"
            ))
            .header("content-type", "application/json")
            .body(vec![b' '; 2048])
            .send()
            .await
            .unwrap();
        let code = r.headers()["x-amzn-ErrorType"]
            .to_str()
            .unwrap()
            .to_string();
        (r.status().as_u16(), code)
    };
    for _ in 0..3 {
        assert_eq!(
            oversized().await,
            (413, "RequestEntityTooLargeException".into())
        );
    }
    assert_eq!(oversized().await, (429, "ThrottlingException".into()));
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(clock.now_ms());
    let (url, headers) = signed(
        &base,
        ALPHA_KEY,
        "not-the-secret",
        "quicksight",
        "us-east-1",
        now,
    );
    let (status, code, _, _) = send(&url, &headers).await;
    assert_eq!(
        (status, code.as_str()),
        (429, "ThrottlingException"),
        "the bodies used up the limit bad signatures count against"
    );
    clock.advance(2_000);
    assert_eq!(
        oversized().await,
        (413, "RequestEntityTooLargeException".into())
    );
    // A tenant signing correctly is not affected.
    let out = client(&app, ALPHA_KEY, "alpha", 1)
        .get_dashboard_embed_url()
        .aws_account_id(ACCOUNT)
        .dashboard_id("sales-2024")
        .identity_type(EmbeddingIdentityType::Quicksight)
        .user_arn(user_arn("alice"))
        .send()
        .await;
    assert!(out.is_ok(), "{out:?}");
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            "embedgate_requests_total{outcome=\"throttled\",protocol=\"quicksight\",tenant=\"-\"}"
        ),
        2.0
    );
    assert_eq!(
        app.sim.sim.ledger().calls,
        1,
        "only the tenant's request went upstream"
    );
    app.stop().await;
}

/// The compatible listener reads a body before it can check its signature: a body that does not
/// arrive within `api.body_timeout_ms` is not waited for (408 `RequestTimeoutException`, which
/// the SDKs retry as transient), and the connection closes.
#[tokio::test]
async fn a_body_that_does_not_arrive_is_not_waited_for_before_its_signature() {
    let app = spawn_app(|s| {
        with_compat(s);
        s.api.body_timeout_ms = 300;
    })
    .await;
    let addr = app
        .compat
        .clone()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let (answer, _) = send_and_stall(
        &addr,
        &format!(
            "POST /accounts/{ACCOUNT}/embed-url/anonymous-user HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"Namespace\": \"def"
        ),
    )
    .await;
    let answer = answer.to_lowercase();
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
    assert!(
        answer.contains("x-amzn-errortype: requesttimeoutexception"),
        "{answer}"
    );
    assert_eq!(app.sim.sim.ledger().calls, 0);
    app.stop().await;
}

async fn send(url: &str, headers: &[(String, String)]) -> (u16, String, String, String) {
    let mut req = http().get(url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let code = resp
        .headers()
        .get("x-amzn-ErrorType")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let source = resp
        .headers()
        .get("x-embedgate-source")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.text().await.unwrap();
    (status, code, source, body)
}

#[tokio::test]
async fn signatures_aws_would_refuse_are_refused_before_anything_upstream() {
    let clock = Clock::manual();
    let app = spawn_app_with(clock.clone(), |s| {
        with_compat(s);
        // No demand tracking: nothing but these requests may call QuickSight.
        s.tenants[0].max_tracked_keys = 0;
    })
    .await;
    let base = app.compat.clone().unwrap();
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(clock.now_ms());
    let good = secret("alpha", ALPHA_KEY);

    // Through the SDK: a wrong secret, an unknown key id, a region the gateway does not serve.
    let wrong = Sdk {
        access_key: ALPHA_KEY,
        secret: "not-the-derived-secret",
        ..Sdk::default()
    }
    .client(&base);
    let unknown = Sdk {
        access_key: "EGNOSUCHKEY000000001",
        secret: &good,
        ..Sdk::default()
    }
    .client(&base);
    let elsewhere = Sdk {
        access_key: ALPHA_KEY,
        secret: &good,
        region: "eu-central-1",
        ..Sdk::default()
    }
    .client(&base);
    // alpha's key id with the secret derived for beta: a key id belongs to one tenant.
    let other_tenant = secret("beta", ALPHA_KEY);
    let moved = Sdk {
        access_key: ALPHA_KEY,
        secret: &other_tenant,
        ..Sdk::default()
    }
    .client(&base);
    for (what, qs, code) in [
        ("wrong secret", &wrong, "InvalidSignatureException"),
        ("unknown key id", &unknown, "UnrecognizedClientException"),
        ("unserved region", &elsewhere, "InvalidSignatureException"),
        (
            "another tenant's derivation",
            &moved,
            "InvalidSignatureException",
        ),
    ] {
        let err = qs
            .get_dashboard_embed_url()
            .aws_account_id(ACCOUNT)
            .dashboard_id("sales-2024")
            .identity_type(EmbeddingIdentityType::Anonymous)
            .send()
            .await
            .unwrap_err()
            .into_service_error();
        assert_eq!(err.code(), Some(code), "{what}: {err:?}");
    }

    // Signed by hand: expired, not yet valid, for another service; and unsigned.
    let cases = [
        (
            "expired",
            signed(
                &base,
                ALPHA_KEY,
                &good,
                "quicksight",
                "us-east-1",
                now - Duration::from_secs(16 * 60),
            ),
            403,
            "InvalidSignatureException",
            "Signature expired",
        ),
        (
            "from the future",
            signed(
                &base,
                ALPHA_KEY,
                &good,
                "quicksight",
                "us-east-1",
                now + Duration::from_secs(16 * 60),
            ),
            403,
            "InvalidSignatureException",
            "Signature not yet current",
        ),
        (
            "another service",
            signed(&base, ALPHA_KEY, &good, "s3", "us-east-1", now),
            403,
            "InvalidSignatureException",
            "service",
        ),
    ];
    for (what, (url, headers), status, code, says) in cases {
        let (s, c, _, body) = send(&url, &headers).await;
        assert_eq!((s, c.as_str()), (status, code), "{what}: {body}");
        assert!(body.contains(says), "{what}: {body}");
    }
    let (url, _) = signed(&base, ALPHA_KEY, &good, "quicksight", "us-east-1", now);
    let (s, c, _, _) = send(&url, &[]).await;
    assert_eq!(
        (s, c.as_str()),
        (403, "MissingAuthenticationTokenException")
    );
    assert_eq!(
        app.sim.sim.ledger().calls,
        0,
        "no refused request reached QuickSight"
    );
    let m = app.metrics().await;
    assert_eq!(
        metric(&m, "embedgate_requests_total{outcome=\"unauthenticated\",protocol=\"quicksight\",tenant=\"-\"}"),
        8.0
    );

    // A captured request is good within the skew window and refused once it has passed.
    let (url, headers) = signed(&base, ALPHA_KEY, &good, "quicksight", "us-east-1", now);
    let (s, _, source, body) = send(&url, &headers).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(source, "upstream");
    let calls = app.sim.sim.ledger().calls;
    clock.advance(15 * 60 * 1000 + 1_000);
    let (s, c, _, body) = send(&url, &headers).await;
    assert_eq!(
        (s, c.as_str()),
        (403, "InvalidSignatureException"),
        "{body}"
    );
    assert!(body.contains("Signature expired"), "{body}");
    assert_eq!(
        app.sim.sim.ledger().calls,
        calls,
        "the replay reached nothing upstream"
    );
    app.stop().await;
}

/// A drop-in request whose client gives up while the gateway waits on QuickSight, closing its
/// connection normally as an AWS SDK does at its timeout, is counted as `cancelled` under its
/// tenant, as a native one is
/// (`observability::a_request_whose_client_resets_the_connection_is_counted_as_cancelled`).
#[tokio::test]
async fn a_drop_in_request_whose_client_closes_the_connection_is_counted_as_cancelled() {
    let app = app_whose_quicksight_holds_every_call(with_compat).await;
    let base = app.compat.clone().unwrap();
    let (url, headers) = signed(
        &base,
        ALPHA_KEY,
        &secret("alpha", ALPHA_KEY),
        "quicksight",
        "us-east-1",
        SystemTime::now(),
    );
    let target = url.trim_start_matches(&base);
    let host = base.trim_start_matches("http://");
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in &headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let cancelled =
        "embedgate_requests_total{outcome=\"cancelled\",protocol=\"quicksight\",tenant=\"alpha\"}";
    let m = give_up_while_quicksight_answers(&app, host, &request, cancelled, GiveUp::Close).await;
    // Its QuickSight call goes on, as a native request's does.
    assert_eq!(metric(&m, "embedgate_upstream_in_flight"), 1.0);
    app.stop().await;
}

/// Access key ids are reloaded with the tenant table: a key id removed from a tenant is refused
/// at once (as AWS refuses an unknown key), one added signs for it, with the same master key.
#[tokio::test]
async fn an_access_key_removed_by_a_reload_is_refused_and_one_added_signs() {
    let app = spawn_app(|s| {
        with_compat(s);
        s.refill.enabled = false;
    })
    .await;
    const ROTATED: &str = "EGALPHA0000000000002";
    let ask = |key_id: &'static str| {
        let qs = client(&app, key_id, "alpha", 1);
        async move {
            qs.get_dashboard_embed_url()
                .aws_account_id(ACCOUNT)
                .dashboard_id("sales-2024")
                .identity_type(EmbeddingIdentityType::Anonymous)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| {
                    e.into_service_error()
                        .code()
                        .unwrap_or_default()
                        .to_string()
                })
        }
    };
    assert_eq!(ask(ALPHA_KEY).await, Ok(()));
    assert_eq!(
        ask(ROTATED).await,
        Err("UnrecognizedClientException".into())
    );
    let mut s = app.app.gateway.settings().clone();
    s.tenants[0].access_key_ids = vec![ROTATED.into()];
    let reloaded = app.app.gateway.reload(s).expect("a valid reload");
    assert_eq!(reloaded.access_keys, 2);
    assert_eq!(
        ask(ALPHA_KEY).await,
        Err("UnrecognizedClientException".into()),
        "the removed key id"
    );
    assert_eq!(ask(ROTATED).await, Ok(()), "the added key id");
    let state = app.state(0).await;
    assert_eq!(state["tenants"][0]["access_key_ids"], json!([ROTATED]));
    assert_eq!(state["compat"]["access_keys"], 2);
    app.stop().await;
}
