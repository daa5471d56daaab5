//! The request a line is logged for: its id, method and route, held for the task that handles
//! it (a `tokio` task-local), so every line logged while a request is handled carries them.
//!
//! A `tracing` span did this until 2026-12-04. The subscriber's registry stored each request's
//! span (a slab slot, its fields formatted into a string, the level filter's bookkeeping on every
//! enter and exit), which cost a pool hit about 0.8 µs of CPU, about 7 % of it; a task-local
//! costs a swap of one pointer each time the request's future is polled.

use std::borrow::Cow;
use std::future::Future;

use tracing_subscriber::fmt::format::Writer;

use crate::wire::json::push_json_str;

/// What every line logged while a request is handled says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFields {
    /// Returned as `X-Request-Id` and `RequestId`.
    pub id: String,
    pub method: Cow<'static, str>,
    /// The route's pattern (`/v1/embed-url/dashboard`), or `default` for no route.
    pub route: Cow<'static, str>,
}

tokio::task_local! {
    static REQUEST: RequestFields;
}

/// Runs `handling` with `fields` as the request its lines are logged for.
pub fn scope<F: Future>(fields: RequestFields, handling: F) -> impl Future<Output = F::Output> {
    REQUEST.scope(fields, handling)
}

/// The id of the request being handled by this task, if any.
pub fn id() -> Option<String> {
    REQUEST.try_with(|r| r.id.clone()).ok()
}

/// Appends `,"span":{"request_id":…,"method":…,"route":…,"name":"request"}` for the request
/// being handled, as `tracing-subscriber`'s JSON format writes a `request` span with those
/// fields. False (nothing appended) outside a request.
pub(super) fn push_json(line: &mut String) -> bool {
    REQUEST
        .try_with(|r| {
            line.push_str(",\"span\":{\"request_id\":");
            push_json_str(line, &r.id);
            line.push_str(",\"method\":");
            push_json_str(line, &r.method);
            line.push_str(",\"route\":");
            push_json_str(line, &r.route);
            line.push_str(",\"name\":\"request\"}");
        })
        .is_ok()
}

/// Writes `request{request_id=… method=… route=…}: ` for the request being handled, as
/// `tracing-subscriber`'s human-readable format writes a span; nothing outside a request.
pub(super) fn write_prefix(writer: &mut Writer<'_>) -> std::fmt::Result {
    REQUEST
        .try_with(|r| {
            let (bold, plain) = if writer.has_ansi_escapes() {
                ("\x1b[1m", "\x1b[0m")
            } else {
                ("", "")
            };
            write!(
                writer,
                "{bold}request{{{plain}request_id={} method={} route={:?}{bold}}}{plain}: ",
                r.id, r.method, r.route
            )
        })
        .unwrap_or(Ok(()))
}
