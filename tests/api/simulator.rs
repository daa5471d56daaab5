//! The simulator against the real Rust SDK: parsed responses, typed errors, SigV4, ledger, knobs.

use std::time::{Duration, Instant};

use aws_sdk_quicksight::error::SdkError;
use aws_sdk_quicksight::operation::generate_embed_url_for_anonymous_user::GenerateEmbedUrlForAnonymousUserError as AnonErr;
use aws_sdk_quicksight::operation::generate_embed_url_for_registered_user::GenerateEmbedUrlForRegisteredUserError as RegErr;
use aws_sdk_quicksight::operation::get_dashboard_embed_url::GetDashboardEmbedUrlError as GetErr;
use aws_sdk_quicksight::types::{
    AnonymousUserDashboardEmbeddingConfiguration, AnonymousUserEmbeddingExperienceConfiguration,
    EmbeddingIdentityType, RegisteredUserDashboardEmbeddingConfiguration,
    RegisteredUserEmbeddingExperienceConfiguration, SessionTag,
};
use aws_sdk_quicksight::Client;
use aws_smithy_types::retry::RetryConfig;
use embedgate::sim::{self, SimServer};
use serde_json::json;

use crate::helpers::*;

fn get(client: &Client, dashboard: &str, identity: EmbeddingIdentityType) -> aws_sdk_quicksight::operation::get_dashboard_embed_url::builders::GetDashboardEmbedUrlFluentBuilder{
    client
        .get_dashboard_embed_url()
        .aws_account_id(ACCOUNT)
        .dashboard_id(dashboard)
        .identity_type(identity)
}

fn registered(client: &Client, user: &str, dashboard: &str) -> aws_sdk_quicksight::operation::generate_embed_url_for_registered_user::builders::GenerateEmbedUrlForRegisteredUserFluentBuilder{
    client
        .generate_embed_url_for_registered_user()
        .aws_account_id(ACCOUNT)
        .user_arn(user_arn(user))
        .experience_configuration(
            RegisteredUserEmbeddingExperienceConfiguration::builder()
                .dashboard(
                    RegisteredUserDashboardEmbeddingConfiguration::builder()
                        .initial_dashboard_id(dashboard)
                        .build()
                        .unwrap(),
                )
                .build(),
        )
}

fn assert_embed_url(url: &str, sim: &SimServer, path_prefix: &str) {
    let parsed = url::Url::parse(url).expect("an absolute URL");
    assert_eq!(parsed.origin().ascii_serialization(), sim.endpoint);
    assert!(parsed.path().starts_with("/embed/"), "{url}");
    assert!(parsed.path().ends_with(path_prefix), "{url}");
    let q: std::collections::HashMap<_, _> = parsed.query_pairs().collect();
    assert_eq!(q["identityprovider"], "quicksight");
    assert_eq!(q["isauthcode"], "true");
    assert!(q["code"].len() >= 200, "code is long and opaque");
}

#[tokio::test]
async fn all_three_operations_answer_the_rust_sdk_with_parsed_responses() {
    let sim = spawn_sim();
    let client = sdk_client(&sim.endpoint);

    let out = get(&client, "sales-2024", EmbeddingIdentityType::Quicksight)
        .user_arn(user_arn("alice"))
        .session_lifetime_in_minutes(60)
        .undo_redo_disabled(true)
        .namespace("default")
        .send()
        .await
        .expect("GetDashboardEmbedUrl succeeds");
    assert_embed_url(out.embed_url().unwrap(), &sim, "/dashboards/sales-2024");
    assert_eq!(out.status(), 200);
    assert!(uuid::Uuid::parse_str(out.request_id().unwrap()).is_ok());

    let out = get(&client, "sales-2024", EmbeddingIdentityType::Anonymous)
        .namespace("default")
        .additional_dashboard_ids("finance")
        .additional_dashboard_ids("ops-overview")
        .send()
        .await
        .expect("anonymous GetDashboardEmbedUrl with additional dashboards succeeds");
    assert_embed_url(out.embed_url().unwrap(), &sim, "/dashboards/sales-2024");

    let out = sdk_anonymous(&client, ACCOUNT, "demo")
        .session_tags(
            SessionTag::builder()
                .key("tenant")
                .value("acme")
                .build()
                .unwrap(),
        )
        .allowed_domains("https://app.example.com")
        .session_lifetime_in_minutes(15)
        .send()
        .await
        .expect("GenerateEmbedUrlForAnonymousUser succeeds");
    assert_embed_url(out.embed_url(), &sim, "/dashboards/demo");
    assert!(out
        .anonymous_user_arn()
        .starts_with("arn:aws:quicksight:us-east-1:111122223333:user/default/"));
    assert_eq!(out.status(), 200);

    let out = registered(&client, "bob", "finance")
        .send()
        .await
        .expect("GenerateEmbedUrlForRegisteredUser succeeds");
    assert_embed_url(out.embed_url(), &sim, "/dashboards/finance");
    assert!(!out.request_id().is_empty());

    let ledger = sim.sim.ledger();
    assert_eq!(ledger.issued["GetDashboardEmbedUrl"], 2);
    assert_eq!(ledger.issued["GenerateEmbedUrlForAnonymousUser"], 1);
    assert_eq!(ledger.issued["GenerateEmbedUrlForRegisteredUser"], 1);
    sim.stop().await;
}

/// Asserts an SDK error is a modelled service error and returns it.
fn service_err<E: std::fmt::Debug, R: std::fmt::Debug>(
    res: Result<impl std::fmt::Debug, SdkError<E, R>>,
) -> E {
    match res {
        Err(SdkError::ServiceError(e)) => e.into_err(),
        other => panic!("expected a service error, got {other:?}"),
    }
}

#[tokio::test]
async fn every_modelled_get_dashboard_embed_url_error_is_a_typed_variant() {
    let sim = spawn_sim();
    let c = sdk_client(&sim.endpoint);
    let iam = |id: &str| get(&c, id, EmbeddingIdentityType::Iam);
    let in_account = |account: &str, identity| {
        c.get_dashboard_embed_url()
            .aws_account_id(account)
            .dashboard_id("sales-2024")
            .identity_type(identity)
    };
    // (the call, a simulator knob to set first, the variant the SDK must decode it to)
    let cases = [
        (iam("nope"), None, "ResourceNotFoundException"),
        (iam("bad.id"), None, "InvalidParameterValueException"),
        (
            iam("sales-2024").user_arn(user_arn("alice")),
            None,
            "InvalidParameterValueException",
        ),
        (
            iam("sales-2024").additional_dashboard_ids("finance"),
            None,
            "InvalidParameterValueException",
        ),
        (
            get(&c, "sales-2024", EmbeddingIdentityType::Quicksight).user_arn(user_arn("mallory")),
            None,
            "QuickSightUserNotFoundException",
        ),
        (
            iam("sales-2024").session_lifetime_in_minutes(601),
            None,
            "SessionLifetimeInMinutesInvalidException",
        ),
        (
            iam("sales-2024").namespace("nowhere"),
            None,
            "ResourceNotFoundException",
        ),
        (
            in_account("444455556666", EmbeddingIdentityType::Iam),
            None,
            "UnsupportedUserEditionException",
        ),
        (
            in_account("777788889999", EmbeddingIdentityType::Anonymous),
            None,
            "UnsupportedPricingPlanException",
        ),
        (
            in_account("777788889999", EmbeddingIdentityType::Iam),
            None,
            "IdentityTypeNotSupportedException",
        ),
        (
            iam("sales-2024"),
            Some(json!({"throttle_next": 1})),
            "ThrottlingException",
        ),
        (
            iam("sales-2024"),
            Some(json!({"fail_next": 1})),
            "InternalFailureException",
        ),
    ];
    for (call, knob, variant) in cases {
        if let Some(k) = knob {
            sim.sim.update_knobs(&k).unwrap();
        }
        let e = service_err(call.send().await);
        // The modelled variant itself, not `Unhandled` carrying the code.
        assert!(
            format!("{e:?}").starts_with(&format!("{variant}(")),
            "{variant}: {e:?}"
        );
    }

    let ledger = sim.sim.ledger();
    assert_eq!(ledger.issued_total, 0, "no error issues a URL");
    assert_eq!(
        (ledger.throttled, ledger.failed, ledger.rejected),
        (1, 1, 10)
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_key_limited_to_other_accounts_gets_access_denied() {
    let mut settings = sim_settings();
    settings.credentials[0].accounts = vec!["999999999999".into()];
    let sim = SimServer::start(settings).unwrap();
    let e = service_err(
        registered(&sdk_client(&sim.endpoint), "alice", "sales-2024")
            .send()
            .await,
    );
    assert!(matches!(e, RegErr::AccessDeniedException(_)), "{e:?}");
    sim.stop().await;
}

#[tokio::test]
async fn generate_operations_report_their_modelled_errors_as_typed_variants() {
    let sim = spawn_sim();
    let c = sdk_client(&sim.endpoint);
    let e = service_err(registered(&c, "nobody", "sales-2024").send().await);
    assert!(
        matches!(e, RegErr::QuickSightUserNotFoundException(_)),
        "{e:?}"
    );
    let e = service_err(registered(&c, "alice", "missing").send().await);
    assert!(matches!(e, RegErr::ResourceNotFoundException(_)), "{e:?}");
    let e = service_err(
        registered(&c, "alice", "sales-2024")
            .session_lifetime_in_minutes(5)
            .send()
            .await,
    );
    assert!(
        matches!(e, RegErr::SessionLifetimeInMinutesInvalidException(_)),
        "{e:?}"
    );
    let e = service_err(
        c.generate_embed_url_for_registered_user()
            .aws_account_id(ACCOUNT)
            .user_arn(user_arn("alice"))
            .experience_configuration(
                RegisteredUserEmbeddingExperienceConfiguration::builder().build(),
            )
            .send()
            .await,
    );
    assert!(
        matches!(e, RegErr::InvalidParameterValueException(_)),
        "empty experience: {e:?}"
    );

    let e = service_err(sdk_anonymous(&c, "777788889999", "sales-2024").send().await);
    assert!(
        matches!(e, AnonErr::UnsupportedPricingPlanException(_)),
        "{e:?}"
    );
    let e = service_err(sdk_anonymous(&c, "444455556666", "sales-2024").send().await);
    assert!(
        matches!(e, AnonErr::UnsupportedUserEditionException(_)),
        "{e:?}"
    );
    let e = service_err(
        sdk_anonymous(&c, ACCOUNT, "sales-2024")
            .authorized_resource_arns("arn:aws:quicksight:us-east-1:111122223333:dashboard/nope")
            .send()
            .await,
    );
    assert!(matches!(e, AnonErr::ResourceNotFoundException(_)), "{e:?}");
    let e = service_err(
        c.generate_embed_url_for_anonymous_user()
            .aws_account_id(ACCOUNT)
            .namespace("default")
            .authorized_resource_arns(dashboard_arn("finance"))
            .experience_configuration(
                AnonymousUserEmbeddingExperienceConfiguration::builder()
                    .dashboard(
                        AnonymousUserDashboardEmbeddingConfiguration::builder()
                            .initial_dashboard_id("sales-2024")
                            .build()
                            .unwrap(),
                    )
                    .build(),
            )
            .send()
            .await,
    );
    assert!(
        matches!(e, AnonErr::InvalidParameterValueException(_)),
        "initial dashboard not authorized: {e:?}"
    );
    let tags: Vec<SessionTag> = (0..51)
        .map(|i| {
            SessionTag::builder()
                .key(format!("k{i}"))
                .value("v")
                .build()
                .unwrap()
        })
        .collect();
    let e = service_err(
        sdk_anonymous(&c, ACCOUNT, "sales-2024")
            .set_session_tags(Some(tags))
            .send()
            .await,
    );
    assert!(
        matches!(e, AnonErr::InvalidParameterValueException(_)),
        "51 tags: {e:?}"
    );
    sim.sim.update_knobs(&json!({"throttle_next": 1})).unwrap();
    let e = service_err(sdk_anonymous(&c, ACCOUNT, "sales-2024").send().await);
    assert!(matches!(e, AnonErr::ThrottlingException(_)), "{e:?}");
    sim.sim.update_knobs(&json!({"fail_next": 1})).unwrap();
    let e = service_err(registered(&c, "alice", "sales-2024").send().await);
    assert!(matches!(e, RegErr::InternalFailureException(_)), "{e:?}");
    sim.stop().await;
}

#[tokio::test]
async fn wrong_secrets_and_unknown_keys_are_refused_as_aws_refuses_them() {
    let sim = spawn_sim();
    let wrong = Sdk {
        secret: "not-the-secret",
        ..Sdk::default()
    }
    .client(&sim.endpoint);
    let e = service_err(
        get(&wrong, "sales-2024", EmbeddingIdentityType::Iam)
            .send()
            .await,
    );
    assert_eq!(
        aws_sdk_quicksight::error::ProvideErrorMetadata::code(&e),
        Some("InvalidSignatureException")
    );
    let unknown = Sdk {
        access_key: "AKIDUNKNOWN",
        secret: "x",
        ..Sdk::default()
    }
    .client(&sim.endpoint);
    let e = service_err(
        get(&unknown, "sales-2024", EmbeddingIdentityType::Iam)
            .send()
            .await,
    );
    assert_eq!(
        aws_sdk_quicksight::error::ProvideErrorMetadata::code(&e),
        Some("UnrecognizedClientException")
    );

    let unsigned = http()
        .get(format!(
            "{}/accounts/{ACCOUNT}/dashboards/sales-2024/embed-url?creds-type=IAM",
            sim.endpoint
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 403);
    assert_eq!(
        unsigned.headers()["x-amzn-errortype"],
        "MissingAuthenticationTokenException"
    );
    assert!(unsigned.headers().contains_key("x-amzn-requestid"));

    let ledger = sim.sim.ledger();
    assert_eq!(
        (ledger.unauthenticated, ledger.calls, ledger.issued_total),
        (3, 0, 0)
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_signature_from_outside_the_clock_skew_window_is_expired() {
    let sim = spawn_sim();
    sim.sim
        .update_knobs(&json!({"clock_offset_secs": 1200}))
        .unwrap();
    let e = service_err(
        get(
            &sdk_client(&sim.endpoint),
            "sales-2024",
            EmbeddingIdentityType::Iam,
        )
        .send()
        .await,
    );
    let meta = aws_sdk_quicksight::error::ProvideErrorMetadata::meta(&e);
    assert_eq!(meta.code(), Some("InvalidSignatureException"));
    assert!(
        meta.message().unwrap().starts_with("Signature expired"),
        "{meta:?}"
    );
    sim.stop().await;
}

async fn issue_url(sim: &SimServer) -> String {
    let out = get(
        &sdk_client(&sim.endpoint),
        "sales-2024",
        EmbeddingIdentityType::Iam,
    )
    .send()
    .await
    .unwrap();
    out.embed_url().unwrap().to_string()
}

#[tokio::test]
async fn a_url_redeems_once_and_a_second_use_is_refused() {
    let sim = spawn_sim();
    let url = issue_url(&sim).await;
    let first = http().get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.text().await.unwrap().contains("dashboard sales-2024"));
    let second = http().get(&url).send().await.unwrap();
    assert_eq!(second.status(), 403);
    assert!(second.text().await.unwrap().contains("already been used"));
    let ledger = sim.sim.ledger();
    assert_eq!(
        (
            ledger.redeemed,
            ledger.double_redemptions,
            ledger.late_redemptions
        ),
        (1, 1, 0)
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_url_opened_after_300_seconds_is_refused_as_late() {
    let sim = spawn_sim();
    let url = issue_url(&sim).await;
    let fresh = issue_url(&sim).await;
    // Move the simulator's clock past the URL's validity (within the signature skew window).
    http()
        .post(format!("{}/_sim/knobs", sim.endpoint))
        .json(&json!({"clock_offset_secs": 301}))
        .send()
        .await
        .unwrap();
    let late = http().get(&url).send().await.unwrap();
    assert_eq!(late.status(), 403);
    assert!(late.text().await.unwrap().contains("expired"));
    // A code that was never issued, and a real code on another URL path, are unknown.
    let forged = url.replace("code=AYABe", "code=AYABf");
    assert_eq!(http().get(&forged).send().await.unwrap().status(), 403);
    let moved = fresh.replace("/dashboards/sales-2024", "/dashboards/finance");
    assert_eq!(http().get(&moved).send().await.unwrap().status(), 403);

    let ledger: sim::LedgerSnapshot = http()
        .get(format!("{}/_sim/ledger", sim.endpoint))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            ledger.redeemed,
            ledger.late_redemptions,
            ledger.unknown_redemptions
        ),
        (0, 1, 2)
    );
    sim.stop().await;
}

#[tokio::test]
async fn the_sdk_retries_throttling_and_honours_x_amz_retry_after() {
    let sim = spawn_sim();
    sim.sim
        .update_knobs(&json!({"throttle_next": 2, "retry_after_ms": 10}))
        .unwrap();
    let client = Sdk {
        retry: RetryConfig::standard(),
        ..Sdk::default()
    }
    .client(&sim.endpoint);
    let out = get(&client, "sales-2024", EmbeddingIdentityType::Iam)
        .send()
        .await;
    assert!(out.is_ok(), "third attempt succeeds: {out:?}");
    let ledger = sim.sim.ledger();
    assert_eq!(
        (ledger.calls, ledger.throttled, ledger.issued_total),
        (3, 2, 1)
    );
    sim.stop().await;
}

#[tokio::test]
async fn calls_above_the_throttle_rate_get_throttling_exceptions() {
    let sim = spawn_sim();
    sim.sim
        .update_knobs(&json!({"throttle_rps": 1, "throttle_burst": 5}))
        .unwrap();
    let client = sdk_client(&sim.endpoint);
    let mut ok = 0;
    let mut throttled = 0;
    for _ in 0..20 {
        match get(&client, "sales-2024", EmbeddingIdentityType::Iam)
            .send()
            .await
        {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(matches!(
                    service_err::<_, _>(Err::<(), _>(e)),
                    GetErr::ThrottlingException(_)
                ));
                throttled += 1;
            }
        }
    }
    // A burst of 5 plus at most a couple of refills while the loop runs.
    assert!((5..=8).contains(&ok), "ok={ok}");
    assert_eq!(ok + throttled, 20);
    // Throttling is per account: another account's call gets past the throttle to its own
    // (pricing-plan) answer.
    let e = service_err(
        sdk_anonymous(&client, "777788889999", "sales-2024")
            .send()
            .await,
    );
    assert!(
        matches!(e, AnonErr::UnsupportedPricingPlanException(_)),
        "{e:?}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn latency_and_hangs_delay_answers_as_configured() {
    let sim = spawn_sim();
    sim.sim.update_knobs(&json!({"latency_ms": 150})).unwrap();
    let client = sdk_client(&sim.endpoint);
    let start = Instant::now();
    get(&client, "sales-2024", EmbeddingIdentityType::Iam)
        .send()
        .await
        .unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "latency is added"
    );

    sim.sim
        .update_knobs(&json!({"latency_ms": 0, "hang_rate": 1.0}))
        .unwrap();
    let impatient = Sdk {
        timeout: Some(Duration::from_millis(300)),
        ..Sdk::default()
    }
    .client(&sim.endpoint);
    let res = get(&impatient, "sales-2024", EmbeddingIdentityType::Iam)
        .send()
        .await;
    assert!(matches!(res, Err(SdkError::TimeoutError(_))), "{res:?}");
    assert_eq!(sim.sim.ledger().hung, 1);
    sim.stop().await;
}

#[tokio::test]
async fn knobs_are_validated_and_changeable_over_http() {
    let sim = spawn_sim();
    let bad = http()
        .post(format!("{}/_sim/knobs", sim.endpoint))
        .json(&json!({"error_rate": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("error_rate"));
    let ok: sim::Knobs = http()
        .post(format!("{}/_sim/knobs", sim.endpoint))
        .json(&json!({"throttle_rps": 7}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok.throttle_rps, Some(7));
    assert_eq!(sim.sim.knobs().throttle_rps, Some(7));
    sim.stop().await;
}
