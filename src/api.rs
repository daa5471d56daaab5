//! The native HTTP API and the admin listener: routes, authentication headers, problem documents
//! and rate-limit headers. The only place HTTP status codes are chosen.
//!
//! Request path: authenticate (bad keys share one global limit) → inbound limiter → read the body
//! (bounded, `application/json` only) → parse strictly → resolve defaults, validate → tenant policy
//! → pool / miss path. A refused request spends a limiter token and changes nothing else (no
//! demand, no pool entry, no upstream call).

// `Problem` is built only on refusal paths, once per refused request; boxing it would only add
// an allocation to them.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use serde_json::json;

use crate::gateway::{parse_request, parse_value, BadInput, Gateway, Refusal, ServeError, Source};
use crate::limiter::Inbound;
use crate::metrics::Outcome;
use crate::model::Operation;
use crate::tenant::Tenant;
use crate::upstream::UpstreamError;

/// Routes of the native API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/embed-url/dashboard", web::post().to(dashboard))
        .route("/v1/embed-url/anonymous-user", web::post().to(anonymous))
        .route("/v1/embed-url/registered-user", web::post().to(registered))
        .route("/v1/hints", web::post().to(hints))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .default_service(web::to(not_found));
}

/// Routes of the admin listener.
pub fn admin_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/state", web::get().to(state))
        .route("/healthz", web::get().to(healthz));
}

/// An `application/problem+json` error (RFC 9457) with a stable `code` and the offending `field`.
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    detail: String,
    field: Option<String>,
    headers: Vec<(header::HeaderName, String)>,
    extra: Option<serde_json::Value>,
}

impl Problem {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            code,
            detail: detail.into(),
            field: None,
            headers: vec![],
            extra: None,
        }
    }

    fn field(mut self, field: Option<String>) -> Self {
        self.field = field;
        self
    }

    fn header(mut self, name: header::HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    fn response(self, request_id: &str) -> HttpResponse {
        let mut body = json!({
            "type": format!("urn:embedgate:problem:{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
            "requestId": request_id,
        });
        if let Some(f) = self.field {
            body["field"] = json!(f);
        }
        if let Some(serde_json::Value::Object(extra)) = self.extra {
            for (k, v) in extra {
                body[k] = v;
            }
        }
        let mut resp = HttpResponse::build(self.status);
        resp.insert_header((header::CONTENT_TYPE, "application/problem+json"))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header(("X-Request-Id", request_id));
        for (k, v) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&v) {
                resp.insert_header((k, v));
            }
        }
        resp.body(body.to_string())
    }
}

fn bad_input(b: BadInput) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, b.code, b.detail).field(b.field)
}

fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The tenant the `Authorization: Bearer` key belongs to.
fn authenticate<'a>(gw: &'a Gateway, req: &HttpRequest) -> Result<&'a Tenant, Problem> {
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
    gw.tenants.authenticate(key).ok_or_else(|| {
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
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
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
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be sent as Content-Type: application/json",
        )
        .field(Some("Content-Type".into())));
    }
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body must not exceed {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "unreadable_body", e.to_string()))?;
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn rate_limit_headers(
    gw: &Gateway,
    tenant: &Tenant,
    remaining: u32,
    reset_secs: u64,
) -> [(header::HeaderName, String); 2] {
    let (quota, window) = gw.inbound.policy(tenant.index);
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

async fn dashboard(req: HttpRequest, body: web::Payload, gw: web::Data<Gateway>) -> HttpResponse {
    embed(req, body, gw, Operation::GetDashboardEmbedUrl).await
}

async fn anonymous(req: HttpRequest, body: web::Payload, gw: web::Data<Gateway>) -> HttpResponse {
    embed(req, body, gw, Operation::GenerateEmbedUrlForAnonymousUser).await
}

async fn registered(req: HttpRequest, body: web::Payload, gw: web::Data<Gateway>) -> HttpResponse {
    embed(req, body, gw, Operation::GenerateEmbedUrlForRegisteredUser).await
}

/// The id of this request: the one `TracingLogger` put on the request span (so every log line of
/// the request carries it), or a fresh one where no logger runs.
fn request_id(req: &HttpRequest) -> String {
    use actix_web::HttpMessage;
    req.extensions()
        .get::<tracing_actix_web::RequestId>()
        .map(ToString::to_string)
        .unwrap_or_else(new_request_id)
}

/// Records one request's outcome in the metrics and the log (never the URL).
fn observe(gw: &Gateway, tenant: &str, outcome: Outcome, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        tenant,
        outcome = outcome.as_str(),
        elapsed_ms = seconds * 1000.0,
        "embed-url request"
    );
    gw.metrics.request(tenant, outcome, seconds);
}

async fn embed(
    req: HttpRequest,
    body: web::Payload,
    gw: web::Data<Gateway>,
    op: Operation,
) -> HttpResponse {
    let started = Instant::now();
    let request_id = request_id(&req);
    let tenant = match authenticate(&gw, &req) {
        Ok(t) => t,
        Err(p) => {
            let p = limit_unauthenticated(&gw, p);
            let outcome = if p.status == StatusCode::TOO_MANY_REQUESTS {
                Outcome::Throttled
            } else {
                Outcome::Unauthenticated
            };
            observe(&gw, "-", outcome, started);
            return p.response(&request_id);
        }
    };
    let tid = tenant.id.as_str();
    // The limit comes before the body is read or checked: every authenticated request counts,
    // so a tenant cannot make the gateway parse and validate for free. Nothing else is touched
    // before the request is admitted.
    let remaining = match gw.check_inbound(tenant).await {
        Inbound::Allowed { remaining } => remaining,
        Inbound::Limited { retry_after } => {
            observe(&gw, tid, Outcome::Throttled, started);
            gw.metrics
                .inbound_rejections
                .with_label_values(&[tid])
                .inc();
            return tenant_limited(&gw, tenant, retry_after).response(&request_id);
        }
    };
    let admitted = match read_body(&req, body, gw.settings.api.max_body_bytes).await {
        Err(p) => Err(p),
        Ok(bytes) => parse_request(op, &bytes)
            .map_err(bad_input)
            .and_then(|r| gw.admit(tenant, r).map_err(refusal)),
    };
    let request = match admitted {
        Ok(r) => r,
        Err(p) => {
            let outcome = if p.status == StatusCode::FORBIDDEN {
                Outcome::Denied
            } else {
                Outcome::Invalid
            };
            observe(&gw, tid, outcome, started);
            return p.response(&request_id);
        }
    };
    match gw.serve(tenant, request).await {
        Ok(served) => {
            let outcome = match served.source {
                Source::Pool => Outcome::Hit,
                Source::Upstream => Outcome::Miss,
            };
            observe(&gw, tid, outcome, started);
            let expires = time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(served.expires_at_ms) * 1_000_000,
            )
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
            let reset = ((f64::from(tenant.burst) - f64::from(remaining)) / tenant.rate_per_sec)
                .ceil() as u64;
            let mut resp = HttpResponse::Ok();
            resp.insert_header((header::CACHE_CONTROL, "no-store"))
                .insert_header(("X-Request-Id", request_id.as_str()));
            for (k, v) in rate_limit_headers(&gw, tenant, remaining, reset) {
                resp.insert_header((k, v));
            }
            resp.json(json!({
                "EmbedUrl": served.url,
                "ExpiresAt": expires,
                "Source": served.source,
                "RequestId": request_id,
            }))
        }
        Err(e) => {
            observe(&gw, tid, Outcome::Error, started);
            serve_error(e).response(&request_id)
        }
    }
}

/// 429 for a tenant over its inbound rate, with `Retry-After` and the RateLimit headers.
fn tenant_limited(gw: &Gateway, tenant: &Tenant, retry_after: std::time::Duration) -> Problem {
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
fn limit_unauthenticated(gw: &Gateway, refused: Problem) -> Problem {
    match gw.check_unauthenticated() {
        None => refused,
        Some(retry_after) => {
            gw.metrics
                .inbound_rejections
                .with_label_values(&["-"])
                .inc();
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

fn refusal(r: Refusal) -> Problem {
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
        ServeError::Upstream(UpstreamError::Rejected {
            status,
            code,
            message,
        }) => {
            // QuickSight's message never reaches the tenant: it can name the gateway's IAM
            // principal, role or access key. The log (with this request's id on the span) has it.
            tracing::warn!(upstream_status = status, upstream_code = %code, upstream_message = %message, "QuickSight refused the call");
            if crate::upstream::is_own_credentials_failure(status, &code) {
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
            p.extra = Some(json!({"upstreamCode": code}));
            p
        }
    }
}

/// `POST /v1/hints`: `{"Requests": [{"Operation": "...", ...body}, ...]}`. All requests are
/// checked first; only if every one is valid and allowed is any hint recorded.
async fn hints(req: HttpRequest, body: web::Payload, gw: web::Data<Gateway>) -> HttpResponse {
    let request_id = request_id(&req);
    let tenant = match authenticate(&gw, &req) {
        Ok(t) => t,
        Err(p) => return limit_unauthenticated(&gw, p).response(&request_id),
    };
    if let Inbound::Limited { retry_after } = gw.check_inbound(tenant).await {
        return tenant_limited(&gw, tenant, retry_after).response(&request_id);
    }
    let bytes = match read_body(&req, body, gw.settings.api.max_body_bytes).await {
        Ok(b) => b,
        Err(p) => return p.response(&request_id),
    };
    let parsed: Result<Vec<_>, Problem> = (|| {
        let doc: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not JSON: {e}"),
            )
        })?;
        let list = doc
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.get("Requests"))
            .and_then(|r| r.as_array())
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_hints",
                    "the body must be {\"Requests\": [...]}",
                )
                .field(Some("Requests".into()))
            })?;
        let max = gw.settings.api.max_hints_per_call;
        if list.is_empty() || list.len() > max {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_hints",
                format!("Requests must list 1-{max} requests"),
            )
            .field(Some("Requests".into())));
        }
        list.iter()
            .enumerate()
            .map(|(i, item)| {
                let at = |f: Option<String>| Some(format!("Requests[{i}]{}", f.map(|f| format!(".{f}")).unwrap_or_default()));
                let mut obj = item.as_object().cloned().ok_or_else(|| {
                    Problem::new(StatusCode::BAD_REQUEST, "invalid_hints", "each request must be a JSON object").field(at(None))
                })?;
                let op = obj
                    .remove("Operation")
                    .and_then(|o| serde_json::from_value::<Operation>(o).ok())
                    .ok_or_else(|| {
                        Problem::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_parameter",
                            "Operation must be GetDashboardEmbedUrl, GenerateEmbedUrlForAnonymousUser or GenerateEmbedUrlForRegisteredUser",
                        )
                        .field(at(Some("Operation".into())))
                    })?;
                let parsed = parse_value(op, serde_json::Value::Object(obj)).map_err(|b| {
                    let field = at(b.field.clone());
                    bad_input(b).field(field)
                })?;
                gw.admit(tenant, parsed).map_err(|r| {
                    let mut p = refusal(r);
                    p.field = at(p.field.take());
                    p
                })
            })
            .collect()
    })();
    let requests = match parsed {
        Ok(r) => r,
        Err(p) => return p.response(&request_id),
    };
    let now = gw.clock.now_ms();
    let mut accepted = 0;
    for r in &requests {
        let key = gw.key_for(tenant, r);
        if gw.demand.hint(&key, tenant.index, r, now) {
            accepted += 1;
        }
    }
    HttpResponse::Accepted()
        .insert_header(("X-Request-Id", request_id.as_str()))
        .json(json!({"Accepted": accepted, "Dropped": requests.len() - accepted, "RequestId": request_id}))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

/// Ready while the process serves. In cluster mode a replica that lost Redis still serves (from
/// its local pool and limits), so it stays in rotation and says `degraded`.
async fn readyz(gw: web::Data<Gateway>) -> HttpResponse {
    let sharing = gw.sharing();
    HttpResponse::Ok().json(json!({
        "status": if sharing.reason.is_some() { "degraded" } else { "ready" },
        "reason": sharing.reason,
        "mode": sharing.mode,
        "pool": {"urls": gw.pool.total()},
    }))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", req.method(), req.path()),
    )
    .response(&new_request_id())
}

async fn metrics(gw: web::Data<Gateway>) -> HttpResponse {
    gw.metrics.pool_urls.set(gw.pool.total() as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(gw.metrics.render())
}

async fn state(gw: web::Data<Gateway>) -> HttpResponse {
    let budgets: Vec<_> = gw
        .budgets
        .all()
        .iter()
        .map(|b| json!({"account": b.account(), "region": b.region(), "rate_per_sec": b.rate(), "tokens": b.tokens()}))
        .collect();
    HttpResponse::Ok().json(json!({
        "mode": gw.sharing().mode,
        "replicas": gw.sharing().replicas,
        "pool": {"urls": gw.pool.total()},
        "demand": {"tracked_keys": gw.demand.len(), "lead_secs": gw.lead_secs()},
        "budgets": budgets,
        "tenants": gw.tenants.all().iter().map(|t| json!({"id": t.id, "rate_per_sec": t.rate_per_sec, "burst": t.burst})).collect::<Vec<_>>(),
    }))
}

/// Shared handle type for handlers.
pub type Shared = Arc<Gateway>;
