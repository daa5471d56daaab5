//! The context every request is handled in: a fresh id (returned as `X-Request-Id` and
//! `RequestId`), the method and the route, which every line logged while it is handled carries
//! ([`telemetry::request`]).
//!
//! The gateway's own outcome line (`embed-url request`) carries what an operator needs beyond
//! that: tenant, outcome, protocol and elapsed time. `tracing-actix-web`'s span also recorded the
//! client address, host, scheme and user agent; building those parsed the connection info and
//! allocated on every request.

use std::future::Future;

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::Error;

use crate::telemetry::request::{self, RequestFields};

/// Middleware (`App::wrap_fn`): handles `req` in a fresh request context.
pub fn in_request_context<S, B>(
    req: ServiceRequest,
    service: &S,
) -> impl Future<Output = Result<ServiceResponse<B>, Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    let fields = RequestFields {
        id: new_request_id(),
        method: req.method().as_str().to_owned(),
        route: req.match_pattern().unwrap_or_else(|| "default".to_owned()),
    };
    request::scope(fields, service.call(req))
}

/// The id of the request being handled: its context's (so every log line of the request carries
/// it), or a fresh one where no context was set.
pub(super) fn request_id() -> String {
    request::id().unwrap_or_else(new_request_id)
}

fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
