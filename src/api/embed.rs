//! The three embed-URL endpoints: authenticate, count against the tenant's limit, read and
//! parse the body, admit, serve, and answer with the URL and the rate-limit headers.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::auth::{
    authenticate, closing_if_refused, discard_body, key_not_valid, limit_unauthenticated,
    read_body, BodyLimits, Canned,
};
use super::context::request_id;
use super::problem::{refusal, serve_failure};
use crate::gateway::{Failed, Gate, Gateway, ServeError, Served};
use crate::limiter::Inbound;
use crate::metrics::{Outcome, Protocol};
use crate::model::Operation;
use crate::telemetry::bursts;
use crate::tenant::Tenant;
use crate::wire::json;

pub(super) async fn dashboard(
    req: HttpRequest,
    body: web::Payload,
    gw: web::Data<Gateway>,
    canned: web::Data<Canned>,
) -> HttpResponse {
    embed(req, body, gw, &canned, Operation::GetDashboardEmbedUrl).await
}

pub(super) async fn anonymous(
    req: HttpRequest,
    body: web::Payload,
    gw: web::Data<Gateway>,
    canned: web::Data<Canned>,
) -> HttpResponse {
    embed(
        req,
        body,
        gw,
        &canned,
        Operation::GenerateEmbedUrlForAnonymousUser,
    )
    .await
}

pub(super) async fn registered(
    req: HttpRequest,
    body: web::Payload,
    gw: web::Data<Gateway>,
    canned: web::Data<Canned>,
) -> HttpResponse {
    embed(
        req,
        body,
        gw,
        &canned,
        Operation::GenerateEmbedUrlForRegisteredUser,
    )
    .await
}

/// One embed-URL request being handled, whose outcome is recorded exactly once: by
/// [`Watch::observe`], or as `cancelled` when the handler is dropped before that (`error` if it
/// is dropped by its own panic). actix-web drops a handler whose client resets the connection,
/// and one still running when the gateway stops; without this, a client that gives up on a slow
/// miss would leave neither a line nor a count, and the metrics would miss requests exactly when
/// answers are slow.
pub(super) struct Watch<'a> {
    gw: &'a Gateway,
    protocol: Protocol,
    started: Instant,
    tenant: Cell<Option<&'a Tenant>>,
    observed: Cell<bool>,
}

impl<'a> Watch<'a> {
    pub(super) fn new(gw: &'a Gateway, protocol: Protocol) -> Self {
        Watch {
            gw,
            protocol,
            started: Instant::now(),
            tenant: Cell::new(None),
            observed: Cell::new(false),
        }
    }

    /// The tenant the request was authenticated to.
    pub(super) fn tenant(&self, tenant: &'a Tenant) {
        self.tenant.set(Some(tenant));
    }

    /// Records the request's outcome: its `embed-url request` line (never the URL) and its
    /// metrics. A throttled request's line is written at `info` only when it is the first of its
    /// sender's burst, else at `debug`, and counted into the report [`report_throttled`] writes
    /// (see `telemetry::bursts`).
    pub(super) fn observe(&self, outcome: Outcome) {
        self.observed.set(true);
        let (gw, protocol, tenant) = (self.gw, self.protocol, self.tenant.get());
        let seconds = self.started.elapsed().as_secs_f64();
        macro_rules! outcome_line {
            ($level:ident) => {
                tracing::$level!(
                    tenant = tenant.map_or("-", |t| t.id.as_str()),
                    outcome = outcome.as_str(),
                    protocol = protocol.as_str(),
                    elapsed_ms = seconds * 1000.0,
                    "embed-url request"
                )
            };
        }
        let in_full = outcome != Outcome::Throttled || {
            let slot = Gateway::throttled_slot(tenant);
            gw.throttled_lines().note(slot, gw.clock().now_ms()) == bursts::Line::First
        };
        if in_full {
            outcome_line!(info);
        } else {
            outcome_line!(debug);
        }
        gw.metrics().request(
            protocol,
            tenant.map(|t| (t.index, t.id.as_str())),
            outcome,
            seconds,
        );
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if !self.observed.get() {
            // A handler that panicked failed; it was not cancelled.
            self.observe(if std::thread::panicking() {
                Outcome::Error
            } else {
                Outcome::Cancelled
            });
        }
    }
}

/// Writes, every second until `shutdown` resolves, one `embed-url requests throttled` line for
/// each tenant (or `-`, clients without a valid key) whose throttled requests were counted
/// instead of logged and whose last line is [`crate::gateway::THROTTLED_REPORT_MS`] old; at
/// shutdown, every count left.
pub async fn report_throttled(gw: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    let report = |all| {
        for r in gw.throttled_lines().due(gw.clock().now_ms(), all) {
            let tenant = gw.throttled_source(r.source).map_or("-", |t| t.id.as_str());
            tracing::info!(
                tenant,
                outcome = Outcome::Throttled.as_str(),
                count = r.count,
                over_secs = r.over_ms as f64 / 1000.0,
                "embed-url requests throttled"
            );
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => report(false),
        }
    }
    report(true);
}

/// `at_ms` (Unix milliseconds) as RFC 3339 (`2026-12-04T19:05:00.123Z`), written into `buf`;
/// empty if it is out of range.
fn rfc3339(at_ms: u64, buf: &mut [u8; 40]) -> &str {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
    else {
        return "";
    };
    let mut out = &mut buf[..];
    // The longest RFC 3339 text `time` writes (nanoseconds, four-digit year) is 30 bytes. What
    // was written is read from the space left: `format_into`'s count of bytes falls short when
    // it writes the fraction of a second.
    if at
        .format_into(&mut out, &time::format_description::well_known::Rfc3339)
        .is_err()
    {
        return "";
    }
    let len = 40 - out.len();
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

/// The answer to an embed-URL request: `EmbedUrl`, `ExpiresAt`, `Source`, `RequestId` and, for
/// an anonymous user, `AnonymousUserArn`.
fn answer(served: &Served, expires_at: &str, request_id: &str) -> Vec<u8> {
    json::Object::with_capacity(served.url.len() + 192)
        .str("EmbedUrl", &served.url)
        .str("ExpiresAt", expires_at)
        .str("Source", served.source.as_str())
        .str("RequestId", request_id)
        .opt_str("AnonymousUserArn", served.anonymous_user_arn.as_deref())
        .finish()
}

async fn embed(
    req: HttpRequest,
    body: web::Payload,
    gw: web::Data<Gateway>,
    canned: &Canned,
    op: Operation,
) -> HttpResponse {
    let watch = Watch::new(&gw, Protocol::Native);
    let request_id = request_id();
    let tenant = match authenticate(&gw, &req) {
        Ok(t) => t,
        Err(p) => {
            let p = limit_unauthenticated(&gw, p);
            let outcome = if p.status == StatusCode::TOO_MANY_REQUESTS {
                Outcome::Throttled
            } else {
                Outcome::Unauthenticated
            };
            watch.observe(outcome);
            discard_body(&req, body, BodyLimits::of(&gw)).await;
            return closing_if_refused(&req, p.response(&request_id));
        }
    };
    watch.tenant(tenant);
    // The limit comes before the body is read or checked wherever it can be decided locally:
    // every authenticated request counts, so a tenant cannot make the gateway parse and validate
    // for free. In a fleet the count travels with the pool take, in one Redis round trip, and a
    // tenant known to be over its limit is refused here without one. Nothing else is touched
    // before the request is admitted.
    let throttled = |retry_after| {
        watch.observe(Outcome::Throttled);
        gw.metrics()
            .inbound_rejected(Some((tenant.index, tenant.id.as_str())));
        canned.limited(tenant, retry_after, &request_id)
    };
    let gate = gw.gate(tenant);
    if let Gate::Limited { retry_after } = gate {
        discard_body(&req, body, BodyLimits::of(&gw)).await;
        return throttled(retry_after);
    }
    let admitted = match read_body(&req, body, BodyLimits::of(&gw)).await {
        Err(p) => Err(p),
        Ok(bytes) => gw.admit_body(tenant, op, &bytes).map_err(refusal),
    };
    let request = match admitted {
        Ok(r) => r,
        // Removed by a reload between authenticating this request and admitting it (its rules
        // now allow nothing): the answer any later request with its key gets.
        Err(_) if !tenant.present() => {
            watch.observe(Outcome::Unauthenticated);
            return key_not_valid().response(&request_id);
        }
        Err(p) => {
            if gate == Gate::WithTake {
                if let Inbound::Limited { retry_after } = gw.check_inbound(tenant).await {
                    return throttled(retry_after);
                }
            }
            let outcome = if p.status == StatusCode::FORBIDDEN {
                Outcome::Denied
            } else {
                Outcome::Invalid
            };
            watch.observe(outcome);
            return p.response(&request_id);
        }
    };
    match gw.serve(tenant, &request, gate).await {
        Ok(served) => {
            watch.observe(served.source.outcome());
            let mut stamp = [0u8; 40];
            let expires = rfc3339(served.expires_at_ms, &mut stamp);
            let mut resp = HttpResponse::Ok();
            resp.insert_header(super::problem::NO_STORE)
                .insert_header((super::REQUEST_ID, request_id.as_str()));
            for pair in canned.rate_limit_headers(tenant, served.remaining) {
                resp.insert_header(pair);
            }
            resp.insert_header(super::problem::JSON)
                .body(answer(&served, expires, &request_id))
        }
        Err(Failed {
            error: ServeError::Limited { retry_after },
            ..
        }) => throttled(retry_after),
        Err(e) => {
            watch.observe(Outcome::Error);
            serve_failure(e).response(&request_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn an_expiry_reads_as_time_writes_it(at_ms in 0u64..=253_402_300_799_999) {
            let mut buf = [0u8; 40];
            let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
                .unwrap();
            prop_assert_eq!(
                rfc3339(at_ms, &mut buf),
                at.format(&time::format_description::well_known::Rfc3339).unwrap()
            );
        }
    }

    #[test]
    fn an_expiry_out_of_range_is_empty() {
        assert_eq!(rfc3339(u64::MAX, &mut [0u8; 40]), "");
    }
}
