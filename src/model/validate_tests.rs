//! The constraints QuickSight enforces, one test per rule.

use super::*;

fn dash(identity: IdentityType) -> DashboardEmbedRequest {
    DashboardEmbedRequest::new("111122223333", "sales-2024", identity)
}

#[test]
fn quicksight_identity_requires_a_user_arn_of_the_same_account() {
    let mut r = dash(IdentityType::Quicksight);
    assert_eq!(
        EmbedRequest::Dashboard(r.clone())
            .validate()
            .unwrap_err()
            .field,
        "UserArn"
    );
    r.user_arn = Some("arn:aws:quicksight:us-east-1:999999999999:user/default/alice".into());
    let err = EmbedRequest::Dashboard(r.clone()).validate().unwrap_err();
    assert_eq!(err.rule, "must belong to AwsAccountId");
    r.user_arn = Some("arn:aws:quicksight:us-east-1:111122223333:user/default/alice".into());
    assert_eq!(EmbedRequest::Dashboard(r).validate(), Ok(()));
}

#[test]
fn lifetime_outside_15_to_600_is_its_own_error() {
    for (m, ok) in [(14, false), (15, true), (600, true), (601, false)] {
        let mut r = dash(IdentityType::Iam);
        r.session_lifetime_in_minutes = Some(m);
        let res = EmbedRequest::Dashboard(r).validate();
        assert_eq!(res.is_ok(), ok, "{m}");
        if let Err(v) = res {
            assert_eq!(v.kind, ViolationKind::SessionLifetime);
        }
    }
}

#[test]
fn additional_dashboards_only_with_anonymous_and_at_most_twenty() {
    let mut r = dash(IdentityType::Iam);
    r.additional_dashboard_ids = Some(vec!["a".into()]);
    assert_eq!(
        EmbedRequest::Dashboard(r.clone())
            .validate()
            .unwrap_err()
            .field,
        "AdditionalDashboardIds"
    );
    r.identity_type = IdentityType::Anonymous;
    assert!(EmbedRequest::Dashboard(r.clone()).validate().is_ok());
    r.additional_dashboard_ids = Some((0..21).map(|i| format!("d{i}")).collect());
    assert!(EmbedRequest::Dashboard(r).validate().is_err());
}

#[test]
fn dashboard_ids_are_ascii_word_characters_only() {
    for (id, ok) in [
        ("sales_2024-x", true),
        ("", false),
        ("a/b", false),
        ("é", false),
        ("a b", false),
    ] {
        let mut r = dash(IdentityType::Iam);
        r.dashboard_id = id.into();
        assert_eq!(EmbedRequest::Dashboard(r).validate().is_ok(), ok, "{id:?}");
    }
    let mut r = dash(IdentityType::Iam);
    r.dashboard_id = "x".repeat(513);
    assert!(EmbedRequest::Dashboard(r).validate().is_err());
}

#[test]
fn anonymous_request_must_authorize_its_initial_dashboard() {
    let body = serde_json::json!({
        "AwsAccountId": "111122223333",
        "Namespace": "default",
        "AuthorizedResourceArns": ["arn:aws:quicksight:us-east-1:111122223333:dashboard/other"],
        "ExperienceConfiguration": {"Dashboard": {"InitialDashboardId": "sales-2024"}}
    });
    let mut r: AnonymousEmbedRequest = serde_json::from_value(body).unwrap();
    let err = EmbedRequest::Anonymous(r.clone()).validate().unwrap_err();
    assert_eq!(err.field, "AuthorizedResourceArns");
    r.authorized_resource_arns
        .push("arn:aws:quicksight:us-east-1:111122223333:dashboard/sales-2024".into());
    assert!(EmbedRequest::Anonymous(r).validate().is_ok());
}

#[test]
fn experience_configuration_needs_exactly_one_member() {
    let r = RegisteredEmbedRequest {
        aws_account_id: "111122223333".into(),
        session_lifetime_in_minutes: None,
        user_arn: "arn:aws:quicksight:us-east-1:111122223333:user/default/alice".into(),
        experience_configuration: RegisteredExperience::default(),
        allowed_domains: None,
        region: None,
    };
    assert_eq!(
        EmbedRequest::Registered(r).validate().unwrap_err().field,
        "ExperienceConfiguration"
    );
}

#[test]
fn allowed_domains_must_be_https_or_localhost_and_at_most_three() {
    for (d, ok) in [
        ("https://app.example.com", true),
        ("https://*.example.com", true),
        ("http://localhost:3000", true),
        ("http://app.example.com", false),
        ("app.example.com", false),
    ] {
        assert_eq!(
            check_allowed_domains(Some(&[d.to_string()])).is_ok(),
            ok,
            "{d}"
        );
    }
    let four: Vec<String> = (0..4)
        .map(|i| format!("https://a{i}.example.com"))
        .collect();
    assert!(check_allowed_domains(Some(&four)).is_err());
}

#[test]
fn session_tag_keys_must_be_unique() {
    let tag = |k: &str, v: &str| SessionTag {
        key: k.into(),
        value: v.into(),
    };
    assert!(check_session_tags(&[tag("tenant", "a"), tag("region", "eu")]).is_ok());
    let err = check_session_tags(&[
        tag("tenant", "a"),
        tag("x", "1"),
        tag("tenant", "row-secret"),
    ])
    .unwrap_err();
    assert_eq!(err.field, "SessionTags[2].Key");
    assert!(
        !err.rule.contains("row-secret"),
        "the value is sensitive: {}",
        err.rule
    );
}

#[test]
fn authorized_arns_are_checked_in_full() {
    let acct = "111122223333";
    let ok = |arn: &str| check_resource_arn(0, arn, acct).is_ok();
    assert!(ok(
        "arn:aws:quicksight:us-east-1:111122223333:dashboard/sales"
    ));
    assert!(ok("arn:aws:quicksight:us-east-1:111122223333:topic/t1"));
    assert!(ok("arn:aws:quicksight:us-east-1:111122223333:theme/dark"));
    assert!(!ok(
        "arn:aws:quicksight:us-east-1:999999999999:dashboard/sales"
    ));
    assert!(!ok(
        "arn:aws:quicksight:us-east-1:111122223333:analysis/sales"
    ));
    assert!(!ok(
        "arn:aws:quicksight:us-east-1:111122223333:dashboard/a b"
    ));
    assert!(!ok(
        "arn:aws:quicksight:us-east-1:111122223333:dashboard/a/b"
    ));
    assert!(!ok("arn:aws:s3:::bucket"));
}

#[test]
fn an_explicit_namespace_must_be_the_user_arns() {
    let mut r = dash(IdentityType::Quicksight);
    r.user_arn = Some("arn:aws:quicksight:us-east-1:111122223333:user/acme/alice".into());
    let err = EmbedRequest::Dashboard(r.clone()).validate().unwrap_err();
    assert_eq!(err.field, "Namespace", "omitted means default, not acme");
    r.namespace = Some("acme".into());
    assert_eq!(EmbedRequest::Dashboard(r.clone()).validate(), Ok(()));
    r.namespace = Some("other".into());
    assert_eq!(
        EmbedRequest::Dashboard(r).validate().unwrap_err().field,
        "Namespace"
    );
}
