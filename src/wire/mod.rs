//! QuickSight's wire format for the three embed-URL operations (restJson1): which request line is
//! which operation, how its path labels, query string and body become an [`EmbedRequest`], and
//! how success and errors are encoded so the AWS SDKs parse them as they parse QuickSight's.
//!
//! Two servers speak it: the simulator (standing in for QuickSight) and the gateway's
//! QuickSight-compatible listener (drop-in mode). Both parse with the crate's one strict parser
//! ([`crate::model::parse`]); they differ only in what they do with members they do not know.

mod error;
pub mod json;

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use crate::model::parse::{parse_strict, Unknown};
use crate::model::shape::objects_in_place;
use crate::model::{DashboardEmbedRequest, EmbedRequest, IdentityType, Operation};
pub use error::AwsError;

/// One embed-URL call as its request line names it: the operation and its path labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub operation: Operation,
    pub account: String,
    /// GetDashboardEmbedUrl's `DashboardId` label.
    pub dashboard: Option<String>,
}

/// Percent-decodes one path segment or query value.
pub fn decode(segment: &str) -> Cow<'_, str> {
    percent_decode_str(segment).decode_utf8_lossy()
}

/// The embed-URL operation `method` and the raw (still percent-encoded) `path` name, if any.
///
/// The path is split on `/` first and each segment decoded afterwards, as QuickSight does (SDKs
/// encode a `/` inside a label as `%2F`).
pub fn route(method: &str, raw_path: &str) -> Option<Call> {
    let segments: Vec<&str> = raw_path.trim_start_matches('/').split('/').collect();
    let call = |operation, account: &str, dashboard: Option<&str>| Call {
        operation,
        account: decode(account).into_owned(),
        dashboard: dashboard.map(|d| decode(d).into_owned()),
    };
    match (method, segments.as_slice()) {
        ("GET", ["accounts", account, "dashboards", dashboard, "embed-url"]) => Some(call(
            Operation::GetDashboardEmbedUrl,
            account,
            Some(dashboard),
        )),
        ("POST", ["accounts", account, "embed-url", "anonymous-user"]) => Some(call(
            Operation::GenerateEmbedUrlForAnonymousUser,
            account,
            None,
        )),
        ("POST", ["accounts", account, "embed-url", "registered-user"]) => Some(call(
            Operation::GenerateEmbedUrlForRegisteredUser,
            account,
            None,
        )),
        _ => None,
    }
}

/// Builds the request of `call` from its query string and body.
///
/// With [`Unknown::Refuse`] (the gateway) a body or query member the operation does not have is
/// refused naming it, and so are the native API's `AwsAccountId` and `Region` body members (on
/// this wire the account is a path label and the region is the one the request is signed for).
/// With [`Unknown::Ignore`] (the simulator) they are ignored, as QuickSight ignores members newer
/// than itself.
///
/// # Errors
/// The error QuickSight answers for the problem: a missing member is an
/// `InvalidParameterValueException` naming it, malformed JSON or a mistyped member a
/// `SerializationException`.
pub fn parse_call(
    call: Call,
    query: &str,
    body: &[u8],
    unknown: Unknown,
) -> Result<EmbedRequest, AwsError> {
    let mut req = match call.operation {
        Operation::GetDashboardEmbedUrl => {
            if unknown == Unknown::Refuse && !body.is_empty() {
                return Err(AwsError::invalid(
                    "GetDashboardEmbedUrl takes no body: its members are in the path and query",
                ));
            }
            parse_dashboard_query(
                call.account.clone(),
                call.dashboard.clone().unwrap_or_default(),
                query,
                unknown,
            )?
        }
        Operation::GenerateEmbedUrlForAnonymousUser => {
            EmbedRequest::Anonymous(parse_body(body, unknown)?)
        }
        Operation::GenerateEmbedUrlForRegisteredUser => {
            EmbedRequest::Registered(parse_body(body, unknown)?)
        }
    };
    if unknown == Unknown::Refuse {
        if !req.aws_account_id().is_empty() && call.operation != Operation::GetDashboardEmbedUrl {
            return Err(not_a_member("AwsAccountId"));
        }
        if req.region().is_some() {
            return Err(not_a_member("Region"));
        }
    }
    req.set_aws_account_id(call.account);
    req.clear_region();
    Ok(req)
}

fn not_a_member(field: &str) -> AwsError {
    AwsError::invalid(format!(
        "1 validation error detected: '{field}' is not a member of this operation's body"
    ))
}

/// Parses a JSON body with the crate's strict parser.
fn parse_body<T: serde::de::DeserializeOwned + serde::Serialize>(
    body: &[u8],
    unknown: Unknown,
) -> Result<T, AwsError> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    let de = &mut serde_json::Deserializer::from_slice(body);
    let input = || serde_json::from_slice(body).ok();
    let parsed = parse_strict(&mut *de, unknown, input).map_err(AwsError::from_bad_input)?;
    de.end().map_err(|e| {
        AwsError::serialization(format!("trailing data after the JSON object: {e}"))
    })?;
    objects_in_place(body, &parsed).map_err(AwsError::from_bad_input)?;
    Ok(parsed)
}

/// Builds GetDashboardEmbedUrl's input from its path labels and query string.
fn parse_dashboard_query(
    account: String,
    dashboard: String,
    query: &str,
    unknown: Unknown,
) -> Result<EmbedRequest, AwsError> {
    // IdentityType is a placeholder until `creds-type` is read; a missing one is refused below.
    let mut r = DashboardEmbedRequest::new(account, dashboard, IdentityType::Iam);
    let mut identity = None;
    let mut seen: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        // A member given twice is refused, as in a body: which one counts would be a guess (the
        // signature covers both). Only `additional-dashboard-ids` is a list.
        if k != "additional-dashboard-ids" {
            if seen.contains(&k) {
                return Err(AwsError::invalid(format!(
                    "1 validation error detected: query parameter '{}' is given more than once",
                    decode(k)
                )));
            }
            seen.push(k);
        }
        let v = decode(v).into_owned();
        let boolean = |member: &str, v: &str| match v {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ => Err(AwsError::invalid(format!("{member} must be true or false"))),
        };
        match k {
            "creds-type" => {
                identity = Some(IdentityType::parse(&v).ok_or_else(|| {
                    AwsError::invalid(format!(
                        "1 validation error detected: Value '{v}' at 'IdentityType' failed to satisfy constraint: Member must satisfy enum value set: [IAM, QUICKSIGHT, ANONYMOUS]"
                    ))
                })?)
            }
            "session-lifetime" => {
                r.session_lifetime_in_minutes = Some(v.parse().map_err(|_| {
                    AwsError::invalid("SessionLifetimeInMinutes must be an integer")
                })?)
            }
            "undo-redo-disabled" => r.undo_redo_disabled = boolean("UndoRedoDisabled", &v)?,
            "reset-disabled" => r.reset_disabled = boolean("ResetDisabled", &v)?,
            "state-persistence-enabled" => {
                r.state_persistence_enabled = boolean("StatePersistenceEnabled", &v)?
            }
            "user-arn" => r.user_arn = Some(v),
            "namespace" => r.namespace = Some(v),
            "additional-dashboard-ids" => r
                .additional_dashboard_ids
                .get_or_insert_with(Vec::new)
                .push(v),
            other if unknown == Unknown::Refuse => {
                return Err(AwsError::invalid(format!(
                    "1 validation error detected: '{}' is not a query parameter of GetDashboardEmbedUrl",
                    decode(other)
                )))
            }
            _ => {} // unknown query parameters are ignored
        }
    }
    r.identity_type = identity.ok_or_else(|| {
        AwsError::invalid(
            "1 validation error detected: Value null at 'IdentityType' failed to satisfy constraint: Member must not be null",
        )
    })?;
    Ok(EmbedRequest::Dashboard(r))
}

/// The body of a successful call, as QuickSight sends it.
pub fn success_body(url: &str, request_id: &str, anonymous_user_arn: Option<&str>) -> Vec<u8> {
    json::Object::with_capacity(url.len() + 160)
        .str("EmbedUrl", url)
        .num("Status", 200)
        .str("RequestId", request_id)
        .opt_str("AnonymousUserArn", anonymous_user_arn)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_name_the_operation_and_decode_labels_after_splitting() {
        let c = route("GET", "/accounts/111122223333/dashboards/a%2Fb/embed-url").unwrap();
        assert_eq!(c.operation, Operation::GetDashboardEmbedUrl);
        assert_eq!(c.dashboard.as_deref(), Some("a/b"));
        assert_eq!(
            route("POST", "/accounts/1/embed-url/anonymous-user")
                .unwrap()
                .operation,
            Operation::GenerateEmbedUrlForAnonymousUser
        );
        assert!(route("GET", "/accounts/1/embed-url/anonymous-user").is_none());
        assert!(route("POST", "/accounts/1/dashboards").is_none());
    }

    #[test]
    fn a_structure_sent_as_an_array_is_refused_as_quicksight_refuses_it() {
        let call = || route("POST", "/accounts/111122223333/embed-url/registered-user").unwrap();
        let body = br#"{"UserArn":"arn:aws:quicksight:us-east-1:111122223333:user/default/a","ExperienceConfiguration":{"QuickChat":[]}}"#;
        for unknown in [Unknown::Refuse, Unknown::Ignore] {
            let e = parse_call(call(), "", body, unknown).unwrap_err();
            assert_eq!(e.code, "SerializationException", "{unknown:?}");
            assert!(e.message.contains("QuickChat"), "{}", e.message);
        }
        let whole = br#"["arn:aws:quicksight:us-east-1:111122223333:user/default/a"]"#;
        let e = parse_call(call(), "", whole, Unknown::Ignore).unwrap_err();
        assert_eq!(e.code, "SerializationException");
        let fine = br#"{"UserArn":"arn:aws:quicksight:us-east-1:111122223333:user/default/a","ExperienceConfiguration":{"QuickChat":{}},"AllowedDomains":["https://a.example"]}"#;
        assert!(parse_call(call(), "", fine, Unknown::Refuse).is_ok());
    }

    #[test]
    fn the_gateway_refuses_members_it_does_not_know_and_the_simulator_ignores_them() {
        let call = || route("POST", "/accounts/111122223333/embed-url/registered-user").unwrap();
        let body = br#"{"UserArn":"arn:aws:quicksight:us-east-1:111122223333:user/default/a","ExperienceConfiguration":{"Dashboard":{"InitialDashboardId":"d"}},"Shiny":true}"#;
        let e = parse_call(call(), "", body, Unknown::Refuse).unwrap_err();
        assert_eq!(e.code, "InvalidParameterValueException");
        assert!(e.message.contains("Shiny"), "{}", e.message);
        let r = parse_call(call(), "", body, Unknown::Ignore).unwrap();
        assert_eq!(r.aws_account_id(), "111122223333");

        let e = parse_call(
            call(),
            "",
            br#"{"AwsAccountId":"999999999999","UserArn":"u","ExperienceConfiguration":{"Dashboard":{"InitialDashboardId":"d"}}}"#,
            Unknown::Refuse,
        )
        .unwrap_err();
        assert!(e.message.contains("AwsAccountId"), "{}", e.message);
        let e = parse_call(
            call(),
            "",
            br#"{"Region":"eu-west-1","UserArn":"u","ExperienceConfiguration":{"Dashboard":{"InitialDashboardId":"d"}}}"#,
            Unknown::Refuse,
        )
        .unwrap_err();
        assert!(e.message.contains("Region"), "{}", e.message);

        let dash = || route("GET", "/accounts/111122223333/dashboards/d/embed-url").unwrap();
        let e = parse_call(dash(), "creds-type=IAM&colour=red", b"", Unknown::Refuse).unwrap_err();
        assert!(e.message.contains("colour"), "{}", e.message);
        assert!(parse_call(dash(), "creds-type=IAM&colour=red", b"", Unknown::Ignore).is_ok());
    }

    #[test]
    fn a_query_parameter_given_twice_is_refused_and_a_list_may_repeat() {
        let dash = || route("GET", "/accounts/111122223333/dashboards/d/embed-url").unwrap();
        let arn = |u: &str| {
            format!("arn%3Aaws%3Aquicksight%3Aus-east-1%3A111122223333%3Auser%2Fdefault%2F{u}")
        };
        for query in [
            format!(
                "creds-type=QUICKSIGHT&user-arn={}&user-arn={}",
                arn("a"),
                arn("b")
            ),
            "creds-type=IAM&creds-type=ANONYMOUS".to_string(),
            "creds-type=IAM&session-lifetime=60&session-lifetime=600".to_string(),
        ] {
            for unknown in [Unknown::Refuse, Unknown::Ignore] {
                let e = parse_call(dash(), &query, b"", unknown).unwrap_err();
                assert_eq!(e.code, "InvalidParameterValueException", "{query}");
                assert!(
                    e.message.contains("more than once"),
                    "{query}: {}",
                    e.message
                );
            }
        }
        let r = parse_call(
            dash(),
            "creds-type=IAM&additional-dashboard-ids=b&additional-dashboard-ids=c",
            b"",
            Unknown::Refuse,
        )
        .unwrap();
        let EmbedRequest::Dashboard(d) = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            d.additional_dashboard_ids,
            Some(vec!["b".into(), "c".into()])
        );
    }

    #[test]
    fn malformed_bodies_are_serialization_errors_and_missing_members_are_named() {
        let call = || route("POST", "/accounts/1/embed-url/anonymous-user").unwrap();
        let e = parse_call(call(), "", b"{nope", Unknown::Refuse).unwrap_err();
        assert_eq!((e.status, e.code), (400, "SerializationException"));
        let e = parse_call(call(), "", b"{}", Unknown::Refuse).unwrap_err();
        assert_eq!(e.code, "InvalidParameterValueException");
        assert!(e.message.contains("Value null at '"), "{}", e.message);
        let e = parse_call(
            route("GET", "/accounts/1/dashboards/d/embed-url").unwrap(),
            "",
            b"",
            Unknown::Refuse,
        )
        .unwrap_err();
        assert!(e.message.contains("IdentityType"), "{}", e.message);
    }
}
