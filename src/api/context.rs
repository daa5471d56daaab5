//! The context every request is handled in: a fresh id (returned as `X-Request-Id` and
//! `RequestId`), the method and the route, which every line logged while it is handled carries
//! ([`telemetry::request`]).
//!
//! The gateway's own outcome line (`embed-url request`) carries what an operator needs beyond
//! that: tenant, outcome, protocol and elapsed time. `tracing-actix-web`'s span also recorded the
//! client address, host, scheme and user agent; building those parsed the connection info and
//! allocated on every request.

use std::borrow::Cow;
use std::future::Future;

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::Error;

use crate::telemetry::request::{self, RequestFields, RequestId};

/// Middleware (`App::wrap_fn`): handles `req` in a fresh request context. `fixed` are the
/// listener's routes without parameters, each its own pattern: a request for one of them is
/// named by its path, without asking the router a second time (and allocating); any other by
/// the router.
pub fn in_request_context<S, B>(
    req: ServiceRequest,
    service: &S,
    fixed: &[&'static str],
) -> impl Future<Output = Result<ServiceResponse<B>, Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    let fields = RequestFields {
        id: RequestId::new(),
        method: method_name(req.method()),
        route: route_of(&req, fixed),
    };
    request::scope(fields, service.call(req))
}

/// The pattern of the route `req` matches, as the router names it, or `default` for none.
fn route_of(req: &ServiceRequest, fixed: &[&'static str]) -> Cow<'static, str> {
    match fixed.iter().find(|r| **r == req.path()) {
        Some(r) => Cow::Borrowed(*r),
        None => Cow::Owned(req.match_pattern().unwrap_or_else(|| "default".to_owned())),
    }
}

/// The method's name, without an allocation for the standard ones.
fn method_name(method: &Method) -> Cow<'static, str> {
    const STANDARD: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::PATCH, "PATCH"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    match STANDARD.iter().find(|(m, _)| m == method) {
        Some((_, name)) => Cow::Borrowed(name),
        None => Cow::Owned(method.as_str().to_owned()),
    }
}

/// The id of the request being handled: its context's (so every log line of the request carries
/// it), or a fresh one where no context was set.
pub(super) fn request_id() -> RequestId {
    request::id().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test, App};
    use std::sync::{Arc, Mutex};

    #[actix_web::test]
    async fn a_request_is_named_by_the_route_the_router_matches() {
        let seen = Arc::new(Mutex::new(vec![]));
        let record = seen.clone();
        let app = test::init_service(
            App::new()
                .wrap_fn(move |req, srv| {
                    record.lock().unwrap().push((
                        route_of(&req, &super::super::NATIVE_ROUTES),
                        req.match_pattern().unwrap_or_else(|| "default".to_owned()),
                        method_name(req.method()),
                    ));
                    srv.call(req)
                })
                .configure(super::super::routes),
        )
        .await;
        let paths = super::super::NATIVE_ROUTES.iter().copied().chain([
            "/",
            "/nope",
            "/v1/embed-url/dashboard/",
            "/V1/HINTS",
            "/v1/embed-url",
        ]);
        for path in paths {
            for method in ["POST", "GET", "PROPFIND"] {
                let req = test::TestRequest::default()
                    .method(Method::from_bytes(method.as_bytes()).unwrap())
                    .uri(path)
                    .to_request();
                let _ = test::call_service(&app, req).await;
            }
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 36);
        for (ours, router, method) in seen.iter() {
            assert_eq!(ours, router);
            assert!(["POST", "GET", "PROPFIND"].contains(&method.as_ref()));
        }
        assert!(
            seen.iter().any(|(r, _, _)| r == "default"),
            "some paths match no route"
        );
        assert!(
            matches!(seen[0].0, Cow::Borrowed(_)),
            "a fixed route costs no allocation"
        );
    }
}
