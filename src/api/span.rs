//! The span every request runs in: its id (so each line logged while it is handled carries it),
//! the method, the route and, at the end, the status.
//!
//! `tracing-actix-web`'s default span also records the client address, host, scheme, user agent
//! and OpenTelemetry fields; building them parses the connection info and allocates on every
//! request whether or not the span is enabled, which cost a measurable share of a pool hit. The
//! gateway's own outcome line (`embed-url request`) carries what an operator needs: tenant,
//! outcome, protocol and elapsed time.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};

/// The gateway's [`RootSpanBuilder`]: `request` span with `request_id`, `method`, `route`,
/// `status`.
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        // The field values are evaluated only when the span is enabled (the level admits `info`).
        tracing::info_span!(
            "request",
            request_id = %request
                .extensions()
                .get::<RequestId>()
                .map(ToString::to_string)
                .unwrap_or_default(),
            method = %request.method(),
            route = request.match_pattern().as_deref().unwrap_or("default"),
            status = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        let status = match outcome {
            Ok(response) => response.status(),
            Err(error) => error.as_response_error().status_code(),
        };
        span.record("status", status.as_u16());
    }
}
