//! Who is asking and how much they may: API-key authentication (bad keys share one limit),
//! the tenant's inbound limit with its `RateLimit` headers, and the bounded JSON body.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use arc_swap::{ArcSwap, Guard};
use futures::StreamExt;

use super::problem::Problem;
use crate::gateway::Gateway;
use crate::tenant::{Limit, PerTenant, Tenant};
use crate::tls::ClientCertificate;

/// The tenant the `Authorization: Bearer` key belongs to, if the connection's client
/// certificate is still accepted and is one the tenant accepts (`client_certificate_names`).
pub(super) fn authenticate<'a>(gw: &'a Gateway, req: &HttpRequest) -> Result<&'a Tenant, Problem> {
    let cert = client_certificate(req).map_err(certificate_refused)?;
    let realm = "Bearer realm=\"embedgate\"";
    let mut sent = req.headers().get_all(header::AUTHORIZATION);
    let Some(value) = sent.next() else {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            "send the tenant API key as Authorization: Bearer <key>",
        )
        .field(Some("Authorization".into()))
        .header(header::WWW_AUTHENTICATE, realm.into()));
    };
    if sent.next().is_some() {
        // Which of several keys counts would be a guess (a proxy may read another one).
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "send one Authorization header, not several",
        )
        .field(Some("Authorization".into()))
        .header(
            header::WWW_AUTHENTICATE,
            format!("{realm}, error=\"invalid_request\""),
        ));
    }
    let key = value
        .to_str()
        .ok()
        // The scheme's name is case-insensitive (RFC 9110 §11.1).
        .and_then(|v| {
            v.get(..7)
                .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
                .map(|_| &v[7..])
        })
        .map(str::trim)
        .unwrap_or_default();
    let tenant = gw.tenants().authenticate(key).ok_or_else(key_not_valid)?;
    if !tenant.accepts_client(|| presented_names(gw, req, cert)) {
        gw.metrics().client_certificate_mismatch(&tenant.id);
        return Err(client_not_accepted());
    }
    Ok(tenant)
}

/// The names of the client certificate `req` came with: the connection's own `cert`
/// (`tls.client_ca_file`), or the one a trusted proxy in front of the gateway verified and
/// forwarded (`api.client_cert_header`); `None` without either.
pub(super) fn presented_names<'r>(
    gw: &Gateway,
    req: &HttpRequest,
    cert: Option<&'r ClientCertificate>,
) -> Option<Cow<'r, [String]>> {
    match cert {
        Some(cert) => Some(Cow::Borrowed(cert.names())),
        None => super::forwarded::names(&gw.settings().api, req).map(Cow::Owned),
    }
}

/// The connection's client certificate, if it presented one (`tls.client_ca_file`), while it
/// is accepted; else why it no longer is (revoked or its authority removed by a reload,
/// expired: see `ClientCertificate::check`).
pub(super) fn client_certificate(
    req: &HttpRequest,
) -> Result<Option<&ClientCertificate>, &'static str> {
    match req.conn_data::<ClientCertificate>() {
        Some(cert) => cert.check().map(|()| Some(cert)),
        None => Ok(None),
    }
}

/// `resp`, closing its connection when the connection's client certificate was refused: every
/// request on it would be, and a new connection with that certificate is refused in its
/// handshake.
pub(super) fn closing_if_refused(req: &HttpRequest, mut resp: HttpResponse) -> HttpResponse {
    if req
        .conn_data::<ClientCertificate>()
        .is_some_and(ClientCertificate::refused)
    {
        resp.head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    resp
}

/// The detail of a refusal of a connection's client certificate, for either listener.
pub(super) fn certificate_refused_detail(reason: &str) -> String {
    format!("the client certificate of this connection is no longer accepted ({reason}): it is closed; connect again with a certificate the gateway accepts")
}

/// A connection whose client certificate is no longer accepted.
fn certificate_refused(reason: &'static str) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "client_certificate_refused",
        certificate_refused_detail(reason),
    )
}

/// A key no tenant in force has.
pub(super) fn key_not_valid() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
        "the API key is not valid",
    )
    .field(Some("Authorization".into()))
    .header(
        header::WWW_AUTHENTICATE,
        "Bearer realm=\"embedgate\", error=\"invalid_token\"".into(),
    )
}

/// A valid key over a connection whose client certificate its tenant does not list.
fn client_not_accepted() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "client_certificate_not_allowed",
        "this API key is accepted only from a client whose certificate names one of its tenant's client_certificate_names",
    )
}

/// Reads the body, refusing more than `max` bytes and non-JSON content types.
pub(super) async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limits: BodyLimits,
) -> Result<web::Bytes, Problem> {
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
        discard_body(req, payload, limits).await;
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be sent as Content-Type: application/json",
        )
        .field(Some("Content-Type".into())));
    }
    // No content coding but `identity`: request bodies are not decompressed (a gzipped body
    // read as JSON would fail at its first byte, naming nothing the client can fix). RFC 7694:
    // 415, with the codings accepted in `Accept-Encoding`.
    let encoding = req
        .headers()
        .get_all(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?"))
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
    if let Some(coding) = encoding {
        let detail = format!(
            "request bodies are not decompressed: send the body without a Content-Encoding, not {:?}",
            crate::model::excerpt(coding)
        );
        discard_body(req, payload, limits).await;
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            detail,
        )
        .field(Some("Content-Encoding".into()))
        .header(header::ACCEPT_ENCODING, "identity".into()));
    }
    read_bounded(req, payload, limits).await.map_err(|e| {
        let (status, code) = match e {
            BodyError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            BodyError::Unreadable(_) => (StatusCode::BAD_REQUEST, "unreadable_body"),
            BodyError::TimedOut => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
        };
        Problem::new(status, code, e.message(limits))
    })
}

/// Reads and drops the body of a request refused before its body was needed (bad key, over
/// its limit, not JSON). actix closes a connection whose request body was left unread, so
/// without this every refusal would cost the client a new connection (and a new TLS handshake
/// behind a terminating proxy) exactly when it is being asked to slow down. Bounded like any
/// body, in size and in time: a larger one, or one not all there by `api.body_timeout_ms`, is
/// left unread and its connection closes.
pub(super) async fn discard_body(req: &HttpRequest, payload: web::Payload, limits: BodyLimits) {
    let _ = read_bounded(req, payload, limits).await;
}

/// How large a request's body may be and how long it may take to arrive (`api.max_body_bytes`,
/// `api.body_timeout_ms`).
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyLimits {
    pub max: usize,
    pub timeout: Duration,
}

impl BodyLimits {
    pub(super) fn of(gw: &Gateway) -> Self {
        let api = &gw.settings().api;
        BodyLimits {
            max: api.max_body_bytes,
            timeout: Duration::from_millis(api.body_timeout_ms),
        }
    }
}

/// Why a body could not be read.
pub(super) enum BodyError {
    TooLarge,
    Unreadable(String),
    /// Not all there within the timeout. The rest is left unread, so actix closes the
    /// connection after the answer: a client trickling a body cannot hold it open.
    TimedOut,
}

impl BodyError {
    /// What the client is told, naming the bound it crossed: both listeners answer with it.
    pub(super) fn message(self, limits: BodyLimits) -> String {
        match self {
            BodyError::TooLarge => format!("the body must not exceed {} bytes", limits.max),
            BodyError::Unreadable(why) => why,
            BodyError::TimedOut => format!(
                "the body did not arrive within {} ms (api.body_timeout_ms)",
                limits.timeout.as_millis()
            ),
        }
    }
}

/// Reads at most `limits.max` bytes of body, refusing a larger declared or actual length, and
/// waits at most `limits.timeout` for all of it.
pub(super) async fn read_bounded(
    req: &HttpRequest,
    mut payload: web::Payload,
    limits: BodyLimits,
) -> Result<web::Bytes, BodyError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limits.max) {
        return Err(BodyError::TooLarge);
    }
    let read = async {
        // A body that arrives in one chunk (a request's usual few hundred bytes) is that chunk,
        // not a copy of it.
        let mut first: Option<web::Bytes> = None;
        let mut joined = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| BodyError::Unreadable(e.to_string()))?;
            let read = first.as_ref().map_or(0, web::Bytes::len) + joined.len();
            if read + chunk.len() > limits.max {
                return Err(BodyError::TooLarge);
            }
            if read == 0 && first.is_none() {
                first = Some(chunk);
            } else {
                if let Some(f) = first.take() {
                    joined.extend_from_slice(&f);
                }
                joined.extend_from_slice(&chunk);
            }
        }
        Ok(first.unwrap_or_else(|| joined.freeze()))
    };
    tokio::time::timeout(limits.timeout, read)
        .await
        .unwrap_or(Err(BodyError::TimedOut))
}

/// The parts of a tenant's answers that change only with its inbound limit, built once per limit
/// and shared by the workers: its `RateLimit-Policy` header and its 429's problem document
/// around the request id. A flood over a tenant's limit is the case that must cost least, and
/// building the document and headers again for every refused request was most of the 429
/// handler's own work. A reload that changes the limit is met by the next answer, which builds
/// the parts again.
pub struct Canned {
    tenants: PerTenant<ArcSwap<CannedTenant>>,
}

struct CannedTenant {
    /// The limit the parts say.
    limit: Limit,
    policy: HeaderValue,
    /// The 429 document before and after its request id (a JSON string, quotes included).
    limited: (Vec<u8>, Vec<u8>),
}

/// The request id the canned documents are built with and split at: it serialises as
/// `"\u0001"`, which nothing else in a document contains.
const MARK: &str = "\u{1}";

impl CannedTenant {
    fn new(limit: Limit) -> CannedTenant {
        let policy = HeaderValue::try_from(format!(
            "\"tenant\";q={};w={}",
            limit.burst,
            limit.window_secs()
        ))
        .expect("digits and ASCII");
        let doc = tenant_limited(limit).body(MARK);
        let mark = serde_json::to_vec(MARK).expect("a string serialises");
        let at = doc
            .windows(mark.len())
            .position(|w| w == mark.as_slice())
            .expect("the document carries its request id");
        CannedTenant {
            limit,
            policy,
            limited: (doc[..at].to_vec(), doc[at + mark.len()..].to_vec()),
        }
    }
}

impl Canned {
    pub fn new(gw: &Gateway) -> Canned {
        let tenants = PerTenant::new(
            gw.tenants()
                .all()
                .map(|t| ArcSwap::from_pointee(CannedTenant::new(t.limit()))),
        );
        Canned { tenants }
    }

    /// `tenant`'s parts for its limit now.
    fn of(&self, tenant: &Tenant) -> Guard<Arc<CannedTenant>> {
        let limit = tenant.limit();
        // A tenant a reload added has its parts made on its first answer.
        let slot = self.tenants.grow_to(tenant.index, |_| {
            ArcSwap::from_pointee(CannedTenant::new(limit))
        });
        let canned = slot.load();
        if canned.limit == limit {
            return canned;
        }
        // Every use compares, so parts stored by a thread that read an older limit are built
        // again by the next.
        slot.store(Arc::new(CannedTenant::new(limit)));
        slot.load()
    }

    /// `RateLimit-Policy` and `RateLimit` for `tenant` with `remaining` requests left, the
    /// window full again once the rest of the burst has come back at the tenant's rate.
    pub(super) fn rate_limit_headers(
        &self,
        tenant: &Tenant,
        remaining: u32,
    ) -> [(header::HeaderName, HeaderValue); 2] {
        let canned = self.of(tenant);
        let Limit {
            rate_per_sec,
            burst,
        } = canned.limit;
        let reset_secs = ((f64::from(burst) - f64::from(remaining)) / rate_per_sec).ceil() as u64;
        let left = match remaining {
            0 => seconds(reset_secs).1,
            _ => rate_limit(remaining, reset_secs),
        };
        [(RATELIMIT_POLICY, canned.policy.clone()), (RATELIMIT, left)]
    }

    /// 429 for a tenant over its inbound rate (`tenant_limited`'s document), with `Retry-After`
    /// and the RateLimit headers.
    pub(super) fn limited(
        &self,
        tenant: &Tenant,
        retry_after: Duration,
        request_id: &str,
    ) -> HttpResponse {
        let secs = retry_secs(retry_after);
        let canned = self.of(tenant);
        let (head, tail) = &canned.limited;
        let mut body = Vec::with_capacity(head.len() + request_id.len() + 2 + tail.len());
        body.extend_from_slice(head);
        serde_json::to_writer(&mut body, request_id).expect("a string serialises");
        body.extend_from_slice(tail);
        let (retry, left) = seconds(secs);
        let mut resp = HttpResponse::build(StatusCode::TOO_MANY_REQUESTS);
        resp.insert_header(super::problem::PROBLEM_JSON)
            .insert_header(super::problem::NO_STORE)
            .insert_header((header::RETRY_AFTER, retry))
            .insert_header((RATELIMIT_POLICY, canned.policy.clone()))
            .insert_header((RATELIMIT, left));
        if let Ok(id) = HeaderValue::from_str(request_id) {
            resp.insert_header((super::REQUEST_ID, id));
        }
        resp.body(body)
    }
}

const RATELIMIT_POLICY: header::HeaderName = header::HeaderName::from_static("ratelimit-policy");
const RATELIMIT: header::HeaderName = header::HeaderName::from_static("ratelimit");

/// Whole seconds to wait, at least one: `Retry-After`'s value.
fn retry_secs(retry_after: Duration) -> u64 {
    retry_after.as_secs_f64().ceil().max(1.0) as u64
}

/// `Retry-After: secs` and `RateLimit: "tenant";r=0;t=secs`. A flood over a limit asks for the
/// same few values over and over: each worker thread keeps the last pair it built.
fn seconds(secs: u64) -> (HeaderValue, HeaderValue) {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u64, HeaderValue, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((s, retry, left)) if *s == secs => (retry.clone(), left.clone()),
        _ => {
            let (retry, left) = build_seconds(secs);
            *last = Some((secs, retry.clone(), left.clone()));
            (retry, left)
        }
    })
}

fn build_seconds(secs: u64) -> (HeaderValue, HeaderValue) {
    (HeaderValue::from(secs), rate_limit(0, secs))
}

/// `RateLimit: "tenant";r=<remaining>;t=<reset_secs>`, written on the stack and copied once
/// into the header (a `format!` then a `HeaderValue` from its `String` cost two allocations).
fn rate_limit(remaining: u32, reset_secs: u64) -> HeaderValue {
    use std::io::Write as _;
    // 14 bytes of text, at most 10 digits for a u32 and 20 for a u64.
    let mut buf = [0u8; 48];
    let mut out = &mut buf[..];
    write!(out, "\"tenant\";r={remaining};t={reset_secs}").expect("fits in 48 bytes");
    let len = 48 - out.len();
    HeaderValue::from_bytes(&buf[..len]).expect("digits and ASCII")
}

/// The problem document of a tenant over its inbound rate (headers apart: [`Canned::limited`]).
fn tenant_limited(limit: Limit) -> Problem {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "this tenant is over its rate of {} requests/s",
            limit.rate_per_sec
        ),
    )
}

/// A request without a valid API key counts against one limit shared by all such requests
/// (`api.unauthenticated_rate_per_sec`): key guessing and floods of bad keys get 429 instead of
/// an answer per try.
pub(super) fn limit_unauthenticated(gw: &Gateway, refused: Problem) -> Problem {
    match gw.check_unauthenticated() {
        None => refused,
        Some(retry_after) => {
            gw.metrics().inbound_rejected(None);
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests without a valid API key",
            )
            .header(header::RETRY_AFTER, retry_secs(retry_after).to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_headers_read_the_same_whether_built_or_kept() {
        for secs in [0, 1, 1, 59, 60, 60, 61, 3_600, 1] {
            let (retry, left) = seconds(secs);
            assert_eq!(retry.to_str().unwrap(), secs.to_string());
            assert_eq!(left.to_str().unwrap(), format!("\"tenant\";r=0;t={secs}"));
        }
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_millis(1_001)), 2);
    }

    #[test]
    fn the_rate_limit_header_holds_any_count_and_reset() {
        for (remaining, reset) in [(1, 0), (7, 60), (u32::MAX, u64::MAX)] {
            assert_eq!(
                rate_limit(remaining, reset).to_str().unwrap(),
                format!("\"tenant\";r={remaining};t={reset}")
            );
        }
    }
}
