//! Problem documents (RFC 9457) and the table from every refusal and failure to its HTTP
//! status and stable `code`: the only place the native API chooses a status.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::{Map, Value};

use crate::gateway::{Failed, Refusal, ServeError};
use crate::model::BadInput;
use crate::upstream::{Fault, UpstreamError};

/// An `application/problem+json` error (RFC 9457) with a stable `code` and the offending `field`.
pub struct Problem {
    pub(super) status: StatusCode,
    code: &'static str,
    detail: String,
    pub(super) field: Option<String>,
    headers: Vec<(header::HeaderName, String)>,
    /// Members after the standard ones (`upstreamCode`, `upstreamId`).
    extra: Map<String, Value>,
}

impl Problem {
    pub(super) fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            code,
            detail: detail.into(),
            field: None,
            headers: vec![],
            extra: Map::new(),
        }
    }

    pub(super) fn field(mut self, field: Option<String>) -> Self {
        self.field = field;
        self
    }

    pub(super) fn header(mut self, name: header::HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The document, with `request_id` as its `requestId`.
    pub(super) fn body(&self, request_id: &str) -> Vec<u8> {
        let body = ProblemBody {
            code: self.code,
            detail: &self.detail,
            field: self.field.as_deref(),
            request_id,
            status: self.status.as_u16(),
            title: self.status.canonical_reason().unwrap_or("Error"),
            kind: ProblemType(self.code),
            extra: &self.extra,
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    pub(super) fn response(self, request_id: &str) -> HttpResponse {
        let body = self.body(request_id);
        let mut resp = HttpResponse::build(self.status);
        resp.insert_header(PROBLEM_JSON)
            .insert_header(NO_STORE)
            .insert_header((super::REQUEST_ID, request_id));
        for (k, v) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&v) {
                resp.insert_header((k, v));
            }
        }
        resp.body(body)
    }
}

/// `Content-Type` of a problem document.
pub(super) const PROBLEM_JSON: (header::HeaderName, HeaderValue) = (
    header::CONTENT_TYPE,
    HeaderValue::from_static("application/problem+json"),
);
/// `Content-Type` of an answer.
pub(super) const JSON: (header::HeaderName, HeaderValue) = (
    header::CONTENT_TYPE,
    HeaderValue::from_static("application/json"),
);
/// No answer of the native API may be cached: each carries a one-time URL or a refusal of now.
pub(super) const NO_STORE: (header::HeaderName, HeaderValue) =
    (header::CACHE_CONTROL, HeaderValue::from_static("no-store"));

/// The problem document as sent: serialised straight from borrowed parts, members in
/// alphabetical order (as they always were), extras (`upstreamCode`, `upstreamId`) last.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ProblemBody<'a> {
    code: &'a str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    request_id: &'a str,
    status: u16,
    title: &'a str,
    #[serde(rename = "type")]
    kind: ProblemType<'a>,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
}

/// `urn:embedgate:problem:<code>`, written without an intermediate string.
struct ProblemType<'a>(&'a str);

impl serde::Serialize for ProblemType<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("urn:embedgate:problem:{}", self.0))
    }
}

pub(super) fn bad_input(b: BadInput) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, b.code, b.detail).field(b.field)
}

pub(super) fn refusal(r: Refusal) -> Problem {
    match r {
        Refusal::Invalid(b) => bad_input(b),
        Refusal::Denied { field, rule } => Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden_by_policy",
            format!("{field} {rule}"),
        )
        .field(Some(field)),
    }
}

/// A failure to serve, with the upstream it concerns as `upstreamId`.
pub(super) fn serve_failure(f: Failed) -> Problem {
    let mut p = serve_error(f.error);
    p.extra.insert("upstreamId".into(), f.upstream.into());
    p
}

fn serve_error(e: ServeError) -> Problem {
    match e {
        ServeError::BudgetExhausted { retry_after } => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_budget_exhausted",
            "the QuickSight call budget for this account is exhausted; retry later",
        )
        .header(
            header::RETRY_AFTER,
            (retry_after.as_secs_f64().ceil().max(1.0) as u64).to_string(),
        ),
        ServeError::Limited { retry_after } => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "this tenant is over its inbound rate limit",
        )
        .header(
            header::RETRY_AFTER,
            (retry_after.as_secs_f64().ceil().max(1.0) as u64).to_string(),
        ),
        ServeError::Busy => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_busy",
            "too many QuickSight calls in flight",
        )
        .header(header::RETRY_AFTER, "1".into()),
        ServeError::Upstream(UpstreamError::Throttled) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_throttled",
            "QuickSight is throttling this account",
        )
        .header(header::RETRY_AFTER, "1".into()),
        ServeError::Upstream(UpstreamError::Unavailable(why)) => {
            tracing::warn!(reason = %why, "QuickSight is unavailable");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_unavailable",
                "QuickSight is unavailable; retry later",
            )
            .header(header::RETRY_AFTER, "1".into())
        }
        ServeError::Upstream(UpstreamError::Timeout) => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "QuickSight did not answer in time",
        ),
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
            // QuickSight's message never reaches the tenant: it can name the gateway's IAM
            // principal, role or access key. The log (with this request's id on the span) has it.
            tracing::warn!(upstream_status = status, upstream_code = %code, upstream_message = %message, "QuickSight refused the call");
            if own_identity {
                // The gateway's own identity was refused: the operator's problem, not the
                // caller's, and nothing about it is the caller's to know.
                return Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_refused",
                    "QuickSight refused the gateway's credentials; the operator has been told (see the gateway's log)",
                );
            }
            let (status, our_code) = match status {
                400 => (StatusCode::BAD_REQUEST, "upstream_invalid_parameter"),
                403 => (StatusCode::FORBIDDEN, "upstream_forbidden"),
                404 => (StatusCode::NOT_FOUND, "upstream_not_found"),
                409 => (StatusCode::CONFLICT, "upstream_conflict"),
                _ => (StatusCode::BAD_GATEWAY, "upstream_refused"),
            };
            let mut p = Problem::new(
                status,
                our_code,
                format!("QuickSight refused the request with {code}"),
            );
            p.extra.insert("upstreamCode".into(), code.into());
            p
        }
    }
}
