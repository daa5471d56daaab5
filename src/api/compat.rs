//! The QuickSight-compatible listener (drop-in mode): QuickSight's own paths, query and body
//! members for the three embed-URL operations, signed with a tenant's SigV4 access key, answered
//! in QuickSight's wire format. A portal that calls QuickSight with an AWS SDK moves here by
//! changing its endpoint URL and credentials.
//!
//! A second front door to the same gateway: the request is admitted and served by
//! [`Gateway::admit`] and [`Gateway::serve`] exactly as a native one (pool, limits, budget,
//! metrics with `protocol="quicksight"`, logs). Order: route → read the bounded body → verify the
//! signature (failures share the unauthenticated limit) → tenant limit → parse strictly → admit
//! → serve. Nothing but the limiter is touched before a request is admitted.

use std::time::{Duration, SystemTime};

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::{
    certificate_refused_detail, client_certificate, closing_if_refused, presented_names,
    read_bounded, BodyError, BodyLimits,
};
use super::context::request_id;
use super::embed::Watch;
use crate::gateway::{Failed, Gate, Gateway, Refusal, ServeError};
use crate::limiter::Inbound;
use crate::metrics::{Outcome, Protocol};
use crate::model::parse::Unknown;
use crate::sigv4::{AuthError, Incoming, KeyInfo, Verifier};
use crate::tenant::Tenant;
use crate::upstream::{Fault, UpstreamError};
use crate::wire::{self, AwsError};

/// How far a signature's time may be from the gateway's clock, as AWS allows.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// The errors the three operations model; an upstream refusal with another code is reported as
/// `InternalFailureException` (an SDK could not parse it into a typed exception).
const MODELLED: [&str; 10] = [
    "AccessDeniedException",
    "InvalidParameterValueException",
    "ResourceNotFoundException",
    "QuickSightUserNotFoundException",
    "SessionLifetimeInMinutesInvalidException",
    "UnsupportedUserEditionException",
    "UnsupportedPricingPlanException",
    "IdentityTypeNotSupportedException",
    "ThrottlingException",
    "InternalFailureException",
];

/// Counts a request without valid credentials against the limit for such requests: the
/// `ThrottlingException` to answer when it is over.
fn limit_unauthenticated(gw: &Gateway) -> Option<AwsError> {
    let wait = gw.check_unauthenticated()?;
    gw.metrics().inbound_rejected(None);
    Some(
        AwsError::throttling("Rate exceeded: too many requests without valid credentials")
            .retry_after_ms(wait.as_millis().max(1) as u64),
    )
}

/// Every path of the compatible listener.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.default_service(web::to(handle));
}

async fn handle(req: HttpRequest, payload: web::Payload, gw: web::Data<Gateway>) -> HttpResponse {
    let request_id = request_id();
    let Some(call) = wire::route(req.method().as_str(), req.uri().path()) else {
        return AwsError::new(
            404,
            "UnknownOperationException",
            "embedgate serves GetDashboardEmbedUrl, GenerateEmbedUrlForAnonymousUser and GenerateEmbedUrlForRegisteredUser only",
        )
        .response(&request_id);
    };
    let watch = Watch::new(&gw, Protocol::Quicksight);
    let limits = BodyLimits::of(&gw);
    let body = match read_bounded(&req, payload, limits).await {
        Ok(b) => b,
        Err(e) => {
            // Not signed for yet: an unauthenticated request, counted as one, so a flood of
            // unreadable bodies is throttled like a flood of bad signatures.
            if let Some(throttled) = limit_unauthenticated(&gw) {
                watch.observe(Outcome::Throttled);
                return throttled.response(&request_id);
            }
            let e = match e {
                BodyError::TooLarge => {
                    AwsError::new(413, "RequestEntityTooLargeException", e.message(limits))
                }
                BodyError::Unreadable(why) => AwsError::serialization(why),
                // The code AWS front ends answer a body that never came with, which the SDKs
                // retry as transient.
                BodyError::TimedOut => {
                    AwsError::new(408, "RequestTimeoutException", e.message(limits))
                }
            };
            watch.observe(Outcome::Invalid);
            return e.response(&request_id);
        }
    };
    let (tenant, region) = match verify(&gw, &req, &body) {
        Ok(v) => v,
        Err(e) => {
            let (outcome, e) = match limit_unauthenticated(&gw) {
                None => (Outcome::Unauthenticated, e),
                Some(throttled) => (Outcome::Throttled, throttled),
            };
            tracing::debug!(code = e.code, "compatible listener refused a signature");
            watch.observe(outcome);
            return closing_if_refused(&req, e.response(&request_id));
        }
    };
    watch.tenant(tenant);
    let outcome = |o| watch.observe(o);
    let throttled = |retry_after: Duration| {
        outcome(Outcome::Throttled);
        gw.metrics()
            .inbound_rejected(Some((tenant.index, tenant.id.as_str())));
        AwsError::throttling(format!(
            "Rate exceeded: this tenant is over its rate of {} requests/s",
            tenant.limit().rate_per_sec
        ))
        .retry_after_ms(retry_after.as_millis().max(1) as u64)
        .response(&request_id)
    };
    // As on the native API: counted before parsing where that is decided locally, with the pool
    // take (one Redis round trip) in a fleet; every authenticated request counts.
    let gate = gw.gate(tenant);
    if let Gate::Limited { retry_after } = gate {
        return throttled(retry_after);
    }
    let query = req.uri().query().unwrap_or_default();
    let admitted = wire::parse_call(call, query, &body, Unknown::Refuse).and_then(|mut r| {
        // The region the caller signed for is the region it asked for, as with QuickSight.
        r.set_region(region);
        gw.admit(tenant, r).map_err(refusal)
    });
    let request = match admitted {
        Ok(r) => r,
        // As on the native API: removed by a reload since its signature was verified.
        Err(_) if !tenant.present() => {
            outcome(Outcome::Unauthenticated);
            return AwsError::from_auth(&AuthError::UnknownAccessKey).response(&request_id);
        }
        Err(e) => {
            if gate == Gate::WithTake {
                if let Inbound::Limited { retry_after } = gw.check_inbound(tenant).await {
                    return throttled(retry_after);
                }
            }
            outcome(if e.code == "AccessDeniedException" {
                Outcome::Denied
            } else {
                Outcome::Invalid
            });
            return e.response(&request_id);
        }
    };
    match gw.serve(tenant, &gw.keyed(tenant, request), gate).await {
        Ok(served) => {
            let source = served.source.as_str();
            outcome(served.source.outcome());
            HttpResponse::Ok()
                .insert_header(("x-amzn-RequestId", request_id.as_str()))
                .insert_header(("x-embedgate-source", source))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .content_type("application/json")
                .body(wire::success_body(
                    &served.url,
                    &request_id,
                    served.anonymous_user_arn.as_deref(),
                ))
        }
        Err(Failed {
            error: ServeError::Limited { retry_after },
            ..
        }) => throttled(retry_after),
        Err(f) => {
            outcome(Outcome::Error);
            serve_failure(f).response(&request_id)
        }
    }
}

/// The tenant whose access key signed the request, and the region it signed for, if the
/// connection's client certificate is still accepted and is one the tenant accepts
/// (`client_certificate_names`).
fn verify<'a>(
    gw: &'a Gateway,
    req: &HttpRequest,
    body: &[u8],
) -> Result<(&'a Tenant, String), AwsError> {
    let cert = client_certificate(req).map_err(|reason| {
        AwsError::new(
            403,
            "AccessDeniedException",
            certificate_refused_detail(reason),
        )
    })?;
    let (tenant, region) = verify_signature(gw, req, body).map_err(|e| AwsError::from_auth(&e))?;
    if !tenant.accepts_client(|| presented_names(gw, req, cert)) {
        gw.metrics().client_certificate_mismatch(&tenant.id);
        return Err(AwsError::new(
            403,
            "AccessDeniedException",
            "this access key is accepted only from a client whose certificate names one of its tenant's client_certificate_names",
        ));
    }
    Ok((tenant, region))
}

fn verify_signature<'a>(
    gw: &'a Gateway,
    req: &HttpRequest,
    body: &[u8],
) -> Result<(&'a Tenant, String), AuthError> {
    let keys = gw.access_keys();
    let lookup = |id: &str| {
        keys.get(id).map(|(_, secret)| KeyInfo {
            secret: secret.expose().to_string(),
            session: None,
        })
    };
    let regions = gw.upstreams().regions();
    let headers: Vec<(&str, &str)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let incoming = Incoming {
        method: req.method().as_str(),
        path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        headers,
        body,
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(gw.clock().now_ms());
    let verified = Verifier {
        lookup: &lookup,
        regions,
        service: "quicksight",
        max_skew: MAX_SKEW,
    }
    .verify(&incoming, now)?;
    let (tenant, _) = keys
        .get(&verified.access_key)
        .ok_or(AuthError::UnknownAccessKey)?;
    Ok((gw.tenants().get(tenant), verified.region))
}

/// A request the gateway will not send, as QuickSight would refuse it.
fn refusal(r: Refusal) -> AwsError {
    match r {
        Refusal::Invalid(b) => match b.code {
            "invalid_session_lifetime" => AwsError::new(
                400,
                "SessionLifetimeInMinutesInvalidException",
                b.detail,
            ),
            _ => match (b.code, b.field) {
                ("missing_field", Some(field)) => AwsError::invalid(format!(
                    "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
                )),
                _ => AwsError::invalid(b.detail),
            },
        },
        Refusal::Denied { field, rule } => {
            AwsError::access_denied(format!("Denied by this tenant's embedgate policy: {field} {rule}"))
        }
    }
}

/// A failure to serve, in QuickSight's terms, with the gateway's sanitised message: QuickSight's
/// own message can name the gateway's principal, so it goes to the log only.
fn serve_failure(f: Failed) -> AwsError {
    let upstream = f.upstream;
    match f.error {
        ServeError::BudgetExhausted { retry_after } => AwsError::throttling(format!(
            "Rate exceeded: the QuickSight call budget of upstream {upstream} is exhausted"
        ))
        .retry_after_ms(retry_after.as_millis().max(1) as u64),
        ServeError::Limited { retry_after } => {
            AwsError::throttling("Rate exceeded: this tenant is over its rate limit")
                .retry_after_ms(retry_after.as_millis().max(1) as u64)
        }
        ServeError::Busy => AwsError::throttling(format!(
            "Rate exceeded: too many QuickSight calls in flight on upstream {upstream}"
        ))
        .retry_after_ms(1000),
        ServeError::Upstream(UpstreamError::Throttled) => AwsError::throttling(format!(
            "Rate exceeded: QuickSight is throttling upstream {upstream}"
        ))
        .retry_after_ms(1000),
        ServeError::Upstream(UpstreamError::Unavailable(why)) => {
            tracing::warn!(reason = %why, upstream, "QuickSight is unavailable");
            AwsError::internal(format!(
                "QuickSight (upstream {upstream}) is unavailable; retry later"
            ))
        }
        ServeError::Upstream(UpstreamError::Timeout) => AwsError::internal(format!(
            "QuickSight (upstream {upstream}) did not answer in time"
        )),
        ServeError::Upstream(e @ UpstreamError::Rejected { .. }) => {
            let own_identity = e.fault() == Fault::Gateway;
            let UpstreamError::Rejected {
                status,
                code,
                message,
            } = e
            else {
                unreachable!("matched as Rejected")
            };
            tracing::warn!(upstream_status = status, upstream_code = %code, upstream_message = %message, upstream, "QuickSight refused the call");
            match MODELLED.iter().find(|m| **m == code) {
                Some(modelled) if !own_identity => AwsError::new(
                    status,
                    modelled,
                    format!("QuickSight refused the request with {code}"),
                ),
                _ => AwsError::internal(format!(
                    "QuickSight refused the gateway's request (upstream {upstream}); the operator has been told (see the gateway's log)"
                )),
            }
        }
    }
}
