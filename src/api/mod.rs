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

mod admin;
mod auth;
mod compat;
mod context;
mod embed;
mod forwarded;
mod hints;
mod problem;

use std::sync::Arc;

use actix_web::http::header::HeaderName;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::gateway::Gateway;
pub use auth::Canned;
pub use context::in_request_context;
pub use embed::report_throttled;
use problem::Problem;

/// The header every answer of the native API carries its request's id in.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Routes of the native API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(DASHBOARD, web::post().to(embed::dashboard))
        .route(ANONYMOUS, web::post().to(embed::anonymous))
        .route(REGISTERED, web::post().to(embed::registered))
        .route(HINTS, web::post().to(hints::hints))
        // Every GET route answers HEAD too (RFC 9110; actix sends the headers without the body).
        .route(HEALTHZ, web::get().to(healthz))
        .route(HEALTHZ, web::head().to(healthz))
        .route(READYZ, web::get().to(readyz))
        .route(READYZ, web::head().to(readyz))
        .route(OPENAPI_JSON, web::get().to(openapi))
        .route(OPENAPI_JSON, web::head().to(openapi))
        .default_service(web::to(not_found));
}

const DASHBOARD: &str = "/v1/embed-url/dashboard";
const ANONYMOUS: &str = "/v1/embed-url/anonymous-user";
const REGISTERED: &str = "/v1/embed-url/registered-user";
const HINTS: &str = "/v1/hints";
const HEALTHZ: &str = "/healthz";
const READYZ: &str = "/readyz";
const OPENAPI_JSON: &str = "/openapi.json";

/// The native listener's routes ([`routes`]): fixed paths, so a request's route is its path when
/// the path is one of them, which its context reads without asking the router
/// ([`in_request_context`]).
pub const NATIVE_ROUTES: [&str; 7] = [
    DASHBOARD,
    ANONYMOUS,
    REGISTERED,
    HINTS,
    HEALTHZ,
    READYZ,
    OPENAPI_JSON,
];

/// Routes of the QuickSight-compatible listener.
pub fn compat_routes(cfg: &mut web::ServiceConfig) {
    compat::routes(cfg);
}

/// Routes of the admin listener.
pub fn admin_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(admin::metrics))
        .route("/metrics", web::head().to(admin::metrics))
        .route("/state", web::get().to(admin::state))
        .route("/state", web::head().to(admin::state))
        .route("/healthz", web::get().to(healthz))
        .route("/healthz", web::head().to(healthz))
        // Also here for probes that cannot reach the API listener: with client certificates
        // required (`tls.client_ca_file`) the kubelet's, which presents none.
        .route("/readyz", web::get().to(readyz))
        .route("/readyz", web::head().to(readyz))
        .default_service(web::to(admin_not_found));
}

/// The OpenAPI 3.1 document of the native and admin APIs (`docs/openapi.json`).
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// Live while every task of the gateway runs; once one has stopped (see [`crate::tasks`]) the
/// process is shutting down, and a liveness probe should see it.
async fn healthz(gw: web::Data<Gateway>) -> HttpResponse {
    match gw.health().failure() {
        None => HttpResponse::Ok().content_type("text/plain").body("ok"),
        Some(f) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("failed: {f}")),
    }
}

/// Ready while the process serves. In cluster mode a replica that lost Redis still serves (from
/// its local pool and limits), so it stays in rotation and says `degraded`.
async fn readyz(gw: web::Data<Gateway>) -> HttpResponse {
    let sharing = gw.sharing();
    HttpResponse::Ok().json(json!({
        "status": if sharing.reason.is_some() { "degraded" } else { "ready" },
        "reason": sharing.reason,
        "mode": sharing.mode,
        "pool": {"urls": gw.pool().total()},
    }))
}

/// No route on the native listener: see [`no_route`].
async fn not_found(req: HttpRequest) -> HttpResponse {
    let allowed = match req.path() {
        DASHBOARD | ANONYMOUS | REGISTERED | HINTS => Some("POST"),
        HEALTHZ | READYZ | OPENAPI_JSON => Some("GET, HEAD"),
        _ => None,
    };
    no_route(&req, allowed)
}

/// No route on the admin listener: see [`no_route`].
async fn admin_not_found(req: HttpRequest) -> HttpResponse {
    let allowed = match req.path() {
        "/metrics" | "/state" | "/healthz" | "/readyz" => Some("GET, HEAD"),
        _ => None,
    };
    no_route(&req, allowed)
}

/// `405` with `Allow` for a path asked with a method it does not take (`allowed`), else `404`,
/// both as problems naming the method and path.
fn no_route(req: &HttpRequest, allowed: Option<&str>) -> HttpResponse {
    match allowed {
        Some(allow) => Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} takes {allow}, not {}", req.path(), req.method()),
        )
        .header(actix_web::http::header::ALLOW, allow.into()),
        None => Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for {} {}", req.method(), req.path()),
        ),
    }
    .response(&context::request_id())
}

/// Shared handle type for handlers.
pub type Shared = Arc<Gateway>;
