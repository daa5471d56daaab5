//! The span every request runs in: its id (so each line logged while it is handled carries it),
//! the method and the route.
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

/// The gateway's [`RootSpanBuilder`]: `request` span with `request_id`, `method`, `route`.
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
        )
    }

    /// Records nothing: the span ends here and no line is logged in it after this, so a status
    /// recorded now would never be shown (the `embed-url request` line carries the outcome),
    /// and recording it cost every request a visit of the subscriber.
    fn on_request_end<B: MessageBody>(_span: Span, _outcome: &Result<ServiceResponse<B>, Error>) {}
}
