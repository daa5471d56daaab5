//! Who is asking and how much they may: API-key authentication (bad keys share one limit),
//! the tenant's inbound limit with its `RateLimit` headers, and the bounded JSON body.

use std::time::Duration;

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use futures::StreamExt;

use super::problem::Problem;
use crate::gateway::Gateway;
use crate::tenant::Tenant;

/// The tenant the `Authorization: Bearer` key belongs to.
pub(super) fn authenticate<'a>(gw: &'a Gateway, req: &HttpRequest) -> Result<&'a Tenant, Problem> {
    let realm = "Bearer realm=\"embedgate\"";
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            "send the tenant API key as Authorization: Bearer <key>",
        )
        .field(Some("Authorization".into()))
        .header(header::WWW_AUTHENTICATE, realm.into()));
    };
    let key = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or_default();
    gw.tenants().authenticate(key).ok_or_else(|| {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "the API key is not valid",
        )
        .field(Some("Authorization".into()))
        .header(
            header::WWW_AUTHENTICATE,
            format!("{realm}, error=\"invalid_token\""),
        )
    })
}

/// Reads the body, refusing more than `max` bytes and non-JSON content types.
pub(super) async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    max: usize,
) -> Result<web::BytesMut, Problem> {
    // `application/json`, with or without parameters (`; charset=utf-8`); nothing else, and not
    // a missing type either: a body the client did not declare as JSON is not parsed as JSON.
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|ct| ct.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        discard_body(req, payload, max).await;
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be sent as Content-Type: application/json",
        )
        .field(Some("Content-Type".into())));
    }
    read_bounded(req, payload, max).await.map_err(|e| match e {
        BodyError::TooLarge => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body must not exceed {max} bytes"),
        ),
        BodyError::Unreadable(why) => Problem::new(StatusCode::BAD_REQUEST, "unreadable_body", why),
    })
}

/// Reads and drops the body of a request refused before its body was needed (bad key, over
/// its limit, not JSON). actix closes a connection whose request body was left unread, so
/// without this every refusal would cost the client a new connection (and a new TLS handshake
/// behind a terminating proxy) exactly when it is being asked to slow down. Bounded by `max`
/// like any body: a larger one is not read and its connection closes.
pub(super) async fn discard_body(req: &HttpRequest, payload: web::Payload, max: usize) {
    let _ = read_bounded(req, payload, max).await;
}

/// Why a body could not be read.
pub(super) enum BodyError {
    TooLarge,
    Unreadable(String),
}

/// Reads at most `max` bytes of body, refusing a larger declared or actual length.
pub(super) async fn read_bounded(
    req: &HttpRequest,
    mut payload: web::Payload,
    max: usize,
) -> Result<web::BytesMut, BodyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(BodyError::TooLarge);
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub(super) fn rate_limit_headers(
    gw: &Gateway,
    tenant: &Tenant,
    remaining: u32,
    reset_secs: u64,
) -> [(header::HeaderName, String); 2] {
    let (quota, window) = gw.rate_policy(tenant);
    [
        (
            header::HeaderName::from_static("ratelimit-policy"),
            format!("\"tenant\";q={quota};w={window}"),
        ),
        (
            header::HeaderName::from_static("ratelimit"),
            format!("\"tenant\";r={remaining};t={reset_secs}"),
        ),
    ]
}

/// 429 for a tenant over its inbound rate, with `Retry-After` and the RateLimit headers.
pub(super) fn tenant_limited(gw: &Gateway, tenant: &Tenant, retry_after: Duration) -> Problem {
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let mut p = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "this tenant is over its rate of {} requests/s",
            tenant.rate_per_sec
        ),
    )
    .header(header::RETRY_AFTER, secs.to_string());
    for (k, v) in rate_limit_headers(gw, tenant, 0, secs) {
        p = p.header(k, v);
    }
    p
}

/// A request without a valid API key counts against one limit shared by all such requests
/// (`api.unauthenticated_rate_per_sec`): key guessing and floods of bad keys get 429 instead of
/// an answer per try.
pub(super) fn limit_unauthenticated(gw: &Gateway, refused: Problem) -> Problem {
    match gw.check_unauthenticated() {
        None => refused,
        Some(retry_after) => {
            gw.metrics().inbound_rejected(None);
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests without a valid API key",
            )
            .header(
                header::RETRY_AFTER,
                (retry_after.as_secs_f64().ceil().max(1.0) as u64).to_string(),
            )
        }
    }
}
