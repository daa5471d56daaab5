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

/// A request's id: a fresh UUID v4, written as its 36 lower-case hyphenated characters, kept
/// inline. Every request has one and most answers carry it twice (`X-Request-Id`, `RequestId`);
/// a `String` cost two allocations a request (the id and the handler's copy).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    text: [u8; ID_LEN],
    len: u8,
}

const ID_LEN: usize = uuid::fmt::Hyphenated::LENGTH;

impl RequestId {
    /// A fresh id.
    pub fn new() -> Self {
        let mut text = [0; ID_LEN];
        uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
        RequestId {
            text,
            len: ID_LEN as u8,
        }
    }

    /// An id given by a test (at most 36 bytes).
    #[cfg(test)]
    pub(crate) fn named(name: &str) -> Self {
        let mut text = [0; ID_LEN];
        text[..name.len()].copy_from_slice(name.as_bytes());
        RequestId {
            text,
            len: name.len() as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ever filled from a `str` (a UUID's ASCII, or a test's name).
        std::str::from_utf8(&self.text[..usize::from(self.len)]).unwrap_or_default()
    }
}

/// A fresh id: an id has no neutral value.
impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// What every line logged while a request is handled says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFields {
    /// Returned as `X-Request-Id` and `RequestId`.
    pub id: RequestId,
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
pub fn id() -> Option<RequestId> {
    REQUEST.try_with(|r| r.id).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_a_fresh_uuid_v4_in_its_usual_text() {
        let a = RequestId::new();
        let parsed = uuid::Uuid::parse_str(&a).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(a.as_str(), parsed.hyphenated().to_string());
        assert_ne!(a, RequestId::new(), "each request has its own");
        assert_eq!(format!("{a}"), a.as_str());
        assert_eq!(format!("{a:?}"), format!("{:?}", a.as_str()));
    }
}
