//! The simulator's HTTP surface: QuickSight's restJson1 wire format for the three embed-URL
//! operations, embed-URL redemption pages, and the `/_sim` control endpoints.
//!
//! Routing is done on the raw path: it is split on `/` first and each segment percent-decoded
//! afterwards, as QuickSight does (SDKs encode `/` inside a label as `%2F`).

use std::borrow::Cow;
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use percent_encoding::percent_decode_str;
use serde_json::json;

use super::{ledger::Redemption, registry::Edition, Simulator};
use crate::model::arn::{Arn, UserArn};
use crate::model::parse::{parse_strict, Unknown};
use crate::model::{
    AnonymousEmbedRequest, DashboardEmbedRequest, EmbedRequest, IdentityType, Operation,
    RegisteredEmbedRequest, Violation, ViolationKind,
};

/// Largest request body the simulator reads (QuickSight bodies here are a few KiB).
const MAX_BODY: usize = 256 * 1024;

pub(crate) fn server(
    sim: Arc<Simulator>,
    listener: TcpListener,
    workers: Option<usize>,
) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::from(sim);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY))
            .default_service(web::to(dispatch))
    })
    .listen(listener)?
    .shutdown_timeout(5);
    if let Some(w) = workers {
        server = server.workers(w.max(1));
    }
    Ok(server.run())
}

/// A QuickSight error: HTTP status, error code (shape name) and message.
#[derive(Debug)]
pub(crate) struct AwsError {
    status: u16,
    code: &'static str,
    message: String,
    resource_type: Option<&'static str>,
}

impl AwsError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        AwsError {
            status,
            code,
            message: message.into(),
            resource_type: None,
        }
    }

    fn not_found(message: impl Into<String>, resource_type: Option<&'static str>) -> Self {
        AwsError {
            resource_type,
            ..AwsError::new(404, "ResourceNotFoundException", message)
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        AwsError::new(400, "InvalidParameterValueException", message)
    }

    fn from_violation(v: &Violation) -> Self {
        let message = format!(
            "1 validation error detected: Value at '{}' failed to satisfy constraint: Member {}",
            v.field, v.rule
        );
        match v.kind {
            ViolationKind::InvalidParameter => AwsError::invalid(message),
            ViolationKind::SessionLifetime => {
                AwsError::new(400, "SessionLifetimeInMinutesInvalidException", message)
            }
        }
    }

    /// restJson1 encoding both SDKs parse into the modelled exception: the code in
    /// `x-amzn-ErrorType`, `Message` (capital M) and `RequestId` in the body.
    fn response(&self, request_id: &str, retry_after_ms: Option<u64>) -> HttpResponse {
        let status = actix_web::http::StatusCode::from_u16(self.status)
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
        let mut body =
            json!({"Message": self.message, "RequestId": request_id, "__type": self.code});
        if let Some(rt) = self.resource_type {
            body["ResourceType"] = json!(rt);
        }
        let mut resp = HttpResponse::build(status);
        resp.insert_header(("x-amzn-RequestId", request_id))
            .insert_header(("x-amzn-ErrorType", self.code));
        if let Some(ms) = retry_after_ms {
            resp.insert_header(("x-amz-retry-after", ms.to_string()));
        }
        resp.content_type("application/json").body(body.to_string())
    }
}

fn decode(segment: &str) -> Cow<'_, str> {
    percent_decode_str(segment).decode_utf8_lossy()
}

async fn dispatch(req: HttpRequest, body: web::Bytes, sim: web::Data<Simulator>) -> HttpResponse {
    let raw_path = req.uri().path();
    let segments: Vec<&str> = raw_path.trim_start_matches('/').split('/').collect();
    let method = req.method().as_str();
    match (method, segments.as_slice()) {
        ("GET", ["_sim", "ledger"]) => HttpResponse::Ok().json(sim.ledger()),
        ("GET", ["_sim", "knobs"]) => HttpResponse::Ok().json(sim.knobs()),
        ("GET", ["_sim", "inputs"]) => HttpResponse::Ok().json(sim.last_inputs()),
        ("POST", ["_sim", "knobs"]) => post_knobs(&sim, &body),
        ("GET", ["embed" | "embedding", ..]) => redeem(&sim, &req),
        ("POST", [""]) => super::sts::handle(&sim, &req, &body),
        ("GET", ["accounts", account, "dashboards", dashboard, "embed-url"]) => {
            let (account, dashboard) =
                (decode(account).into_owned(), decode(dashboard).into_owned());
            let query = req.uri().query().unwrap_or_default().to_string();
            api_call(
                &sim,
                &req,
                &body,
                Operation::GetDashboardEmbedUrl,
                move || parse_dashboard_query(account, dashboard, &query),
            )
            .await
        }
        ("POST", ["accounts", account, "embed-url", "anonymous-user"]) => {
            let account = decode(account).into_owned();
            api_call(
                &sim,
                &req,
                &body,
                Operation::GenerateEmbedUrlForAnonymousUser,
                || {
                    let mut r: AnonymousEmbedRequest = parse_body(&body)?;
                    r.aws_account_id = account;
                    Ok(EmbedRequest::Anonymous(r))
                },
            )
            .await
        }
        ("POST", ["accounts", account, "embed-url", "registered-user"]) => {
            let account = decode(account).into_owned();
            api_call(
                &sim,
                &req,
                &body,
                Operation::GenerateEmbedUrlForRegisteredUser,
                || {
                    let mut r: RegisteredEmbedRequest = parse_body(&body)?;
                    r.aws_account_id = account;
                    Ok(EmbedRequest::Registered(r))
                },
            )
            .await
        }
        _ => AwsError::new(404, "UnknownOperationException", "Unknown operation")
            .response(&new_request_id(), None),
    }
}

fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn post_knobs(sim: &Simulator, body: &[u8]) -> HttpResponse {
    let patch: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return HttpResponse::BadRequest()
                .json(json!({"error": format!("knobs: invalid JSON: {e}")}))
        }
    };
    match sim.update_knobs(&patch) {
        Ok(k) => HttpResponse::Ok().json(k),
        Err(e) => HttpResponse::BadRequest().json(json!({"error": format!("knobs: {e}")})),
    }
}

/// The common path of every API call: verify the signature, apply the fault knobs, parse and
/// validate, check the registry, issue.
async fn api_call(
    sim: &Simulator,
    req: &HttpRequest,
    body: &[u8],
    op: Operation,
    parse: impl FnOnce() -> Result<EmbedRequest, AwsError>,
) -> HttpResponse {
    if sim.idle_timeout() {
        return HttpResponse::RequestTimeout().force_close().finish();
    }
    let request_id = new_request_id();
    let mut region = sim.settings().region.clone();
    if sim.settings().verify_signatures {
        let headers: Vec<(&str, &str)> = req
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
            .collect();
        let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let incoming = super::sigv4::Incoming {
            method: req.method().as_str(),
            path_and_query,
            headers,
            body,
        };
        match sim.verify("quicksight", &incoming) {
            Ok(v) => region = v.region,
            Err(e) => {
                sim.ledger_mut().unauthenticated();
                tracing::debug!(code = e.code(), "simulator refused a signature");
                return AwsError::new(e.status(), e.code(), e.message())
                    .response(&request_id, None);
            }
        }
    }
    sim.ledger_mut().call();

    let parsed = parse();
    if let Ok(r) = &parsed {
        sim.record_input(r);
    }
    let account = match &parsed {
        Ok(r) => r.aws_account_id().to_string(),
        Err(_) => String::new(),
    };
    if sim.throttle(&account) {
        sim.ledger_mut().throttled();
        return AwsError::new(429, "ThrottlingException", "Rate exceeded")
            .response(&request_id, sim.knobs().retry_after_ms);
    }
    let knobs = sim.knobs();
    if knobs.hang_rate > 0.0
        && knobs.faults_apply_to(&account)
        && rand::random::<f64>() < knobs.hang_rate
    {
        sim.ledger_mut().hung();
        tokio::time::sleep(std::time::Duration::from_millis(knobs.hang_ms)).await;
        return AwsError::new(
            500,
            "InternalFailureException",
            "The request timed out inside QuickSight.",
        )
        .response(&request_id, None);
    }
    let latency = knobs.sample_latency(&mut rand::rng());
    if !latency.is_zero() && !knobs.latency_after_mint {
        tokio::time::sleep(latency).await;
    }
    if sim.inject_failure(&account) {
        sim.ledger_mut().failed();
        return AwsError::new(
            500,
            "InternalFailureException",
            "An internal failure occurred.",
        )
        .response(&request_id, None);
    }

    let outcome = parsed.and_then(|r| {
        r.validate().map_err(|v| AwsError::from_violation(&v))?;
        check_registry(sim, req, &r)?;
        Ok(r)
    });
    let request = match outcome {
        Ok(r) => r,
        Err(e) => {
            sim.ledger_mut().rejected();
            return e.response(&request_id, None);
        }
    };

    let minutes = match &request {
        EmbedRequest::Dashboard(r) => r.session_lifetime_in_minutes,
        EmbedRequest::Anonymous(r) => r.session_lifetime_in_minutes,
        EmbedRequest::Registered(r) => r.session_lifetime_in_minutes,
    }
    .unwrap_or(600);
    let issued = sim.issue(
        op,
        &request.experience(),
        minutes,
        request.aws_account_id(),
        &region,
    );
    if !latency.is_zero() && knobs.latency_after_mint {
        tokio::time::sleep(latency).await;
    }
    let mut body = json!({"EmbedUrl": issued.url, "Status": 200, "RequestId": request_id});
    if let EmbedRequest::Anonymous(r) = &request {
        body["AnonymousUserArn"] = json!(format!(
            "arn:aws:quicksight:{}:{}:user/{}/{}",
            region,
            r.aws_account_id,
            r.namespace,
            uuid::Uuid::new_v4().simple()
        ));
    }
    HttpResponse::Ok()
        .insert_header(("x-amzn-RequestId", request_id.as_str()))
        .content_type("application/json")
        .body(body.to_string())
}

/// Parses a JSON body with the gateway's parser ([`parse_strict`]): a missing required member is
/// an `InvalidParameterValueException` naming it, malformed JSON or a mistyped member a
/// `SerializationException`. Unknown members are ignored, as QuickSight's newer members are to an
/// older server.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AwsError> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    let de = &mut serde_json::Deserializer::from_slice(body);
    parse_strict(&mut *de, Unknown::Ignore).map_err(|b| match (b.code, b.field) {
        ("missing_field", Some(field)) => AwsError::invalid(format!(
            "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
        )),
        (_, _) => AwsError::new(400, "SerializationException", b.detail),
    })
}

/// Builds GetDashboardEmbedUrl's input from its path labels and query string.
fn parse_dashboard_query(
    account: String,
    dashboard: String,
    query: &str,
) -> Result<EmbedRequest, AwsError> {
    // IdentityType is a placeholder until `creds-type` is read; a missing one is refused below.
    let mut r = DashboardEmbedRequest::new(account, dashboard, IdentityType::Iam);
    let mut identity = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v).into_owned();
        let boolean = |member: &str, v: &str| match v {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ => Err(AwsError::invalid(format!("{member} must be true or false"))),
        };
        match k {
            "creds-type" => {
                identity = Some(IdentityType::parse(&v).ok_or_else(|| {
                    AwsError::invalid(format!(
                        "1 validation error detected: Value '{v}' at 'IdentityType' failed to satisfy constraint: Member must satisfy enum value set: [IAM, QUICKSIGHT, ANONYMOUS]"
                    ))
                })?)
            }
            "session-lifetime" => {
                r.session_lifetime_in_minutes = Some(
                    v.parse()
                        .map_err(|_| AwsError::invalid("SessionLifetimeInMinutes must be an integer"))?,
                )
            }
            "undo-redo-disabled" => r.undo_redo_disabled = boolean("UndoRedoDisabled", &v)?,
            "reset-disabled" => r.reset_disabled = boolean("ResetDisabled", &v)?,
            "state-persistence-enabled" => r.state_persistence_enabled = boolean("StatePersistenceEnabled", &v)?,
            "user-arn" => r.user_arn = Some(v),
            "namespace" => r.namespace = Some(v),
            "additional-dashboard-ids" => r.additional_dashboard_ids.get_or_insert_with(Vec::new).push(v),
            _ => {} // unknown query parameters are ignored
        }
    }
    r.identity_type = identity.ok_or_else(|| {
        AwsError::invalid(
            "1 validation error detected: Value null at 'IdentityType' failed to satisfy constraint: Member must not be null",
        )
    })?;
    Ok(EmbedRequest::Dashboard(r))
}

/// Resource checks that need the registry: account, edition, pricing plan, namespace, user,
/// dashboards.
fn check_registry(sim: &Simulator, req: &HttpRequest, r: &EmbedRequest) -> Result<(), AwsError> {
    let account_id = r.aws_account_id();
    if let Some(key) = access_key_of(req) {
        if !sim.key_may_call(&key, account_id) {
            return Err(AwsError::new(
                401,
                "AccessDeniedException",
                format!(
                    "User: arn:aws:iam::{account_id}:user/{key} is not authorized to perform: quicksight:{} on resource: arn:aws:quicksight:{}:{account_id}:*",
                    r.operation(),
                    sim.settings().region
                ),
            ));
        }
    }
    let account = sim.registry().account(account_id).ok_or_else(|| {
        AwsError::not_found(
            format!("Account {account_id} is not signed up with QuickSight with namespace default"),
            Some("ACCOUNT_SETTINGS"),
        )
    })?;
    if account.edition == Edition::Standard {
        return Err(AwsError::new(
            403,
            "UnsupportedUserEditionException",
            format!("Account {account_id} uses QuickSight Standard edition, which does not support embedding"),
        ));
    }
    if account
        .unsupported_identity_types
        .contains(&r.identity_type())
    {
        return Err(AwsError::new(
            403,
            "IdentityTypeNotSupportedException",
            format!(
                "The identity type {} is not supported for embedding in account {account_id}",
                r.identity_type().as_str()
            ),
        ));
    }
    if r.identity_type() == IdentityType::Anonymous && !account.capacity_pricing {
        return Err(AwsError::new(
            403,
            "UnsupportedPricingPlanException",
            "This action requires an active capacity pricing plan for the account.",
        ));
    }
    if let Some(ns) = r.namespace() {
        if !account.has_namespace(ns) {
            return Err(AwsError::not_found(
                format!("Namespace {ns} not found in account {account_id}"),
                Some("NAMESPACE"),
            ));
        }
    }
    let user_missing = |who: &str| {
        AwsError::new(
            404,
            "QuickSightUserNotFoundException",
            format!("The user {who} does not exist."),
        )
    };
    if let Some(arn) = r.user_arn() {
        let user = UserArn::parse(arn)
            .ok_or_else(|| AwsError::invalid("UserArn is not a QuickSight user ARN"))?;
        if !account.has_user(user.namespace, user.user_name) {
            return Err(user_missing(arn));
        }
    } else if r.identity_type() == IdentityType::Iam {
        let key = access_key_of(req);
        if sim
            .settings()
            .unregistered_iam_access_keys
            .iter()
            .any(|k| Some(k.as_str()) == key.as_deref())
        {
            return Err(user_missing(&format!(
                "for access key {}",
                key.unwrap_or_default()
            )));
        }
    }
    let strict = match r {
        EmbedRequest::Registered(_) => sim.settings().strict_registered_dashboards,
        _ => true,
    };
    if strict {
        let mut ids = r.dashboard_ids();
        if let EmbedRequest::Anonymous(a) = r {
            // Only dashboards of this account are ours to vouch for.
            ids = a
                .authorized_resource_arns
                .iter()
                .filter_map(|arn| Arn::parse(arn))
                .filter(|a| a.account == account_id && a.resource_type == "dashboard")
                .map(|a| a.resource)
                .collect();
        }
        if let Some(missing) = ids.into_iter().find(|id| !account.has_dashboard(id)) {
            return Err(AwsError::not_found(
                format!("Dashboard {missing} not found in account {account_id}"),
                None,
            ));
        }
    }
    Ok(())
}

fn access_key_of(req: &HttpRequest) -> Option<String> {
    let auth = req.headers().get("authorization")?.to_str().ok()?;
    let cred = auth.split("Credential=").nth(1)?;
    Some(cred.split('/').next()?.to_string())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `GET /embed/<sid>/...?code=…`: a redemption.
fn redeem(sim: &Simulator, req: &HttpRequest) -> HttpResponse {
    let code = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|p| p.strip_prefix("code="))
        .map(|c| decode(c).into_owned())
        .unwrap_or_default();
    let (outcome, page) = sim.redeem(req.uri().path(), &code);
    match (outcome, page) {
        (Redemption::Ok | Redemption::Double, Some((title, minutes))) => {
            let title = html_escape(&title);
            HttpResponse::Ok()
                .content_type("text/html; charset=utf-8")
                .insert_header(("Cache-Control", "no-store"))
                .body(format!(
                    "<!doctype html><html><head><title>QuickSight {title}</title></head><body>\
                     <h1>Amazon QuickSight (simulated)</h1><p id=\"embedded\">Embedded {title}.</p>\
                     <p>Session lifetime: {minutes} minutes.</p></body></html>"
                ))
        }
        (outcome, _) => {
            let why = match outcome {
                Redemption::Double => "This URL has already been used.",
                Redemption::Late => "This URL expired: embed URLs must be opened within 5 minutes.",
                _ => "The URL or authorization code is not valid.",
            };
            HttpResponse::Forbidden()
                .content_type("text/html; charset=utf-8")
                .insert_header(("Cache-Control", "no-store"))
                .body(format!(
                    "<!doctype html><html><head><title>Embedding failed</title></head><body>\
                     <h1>Embedding failed because of invalid URL or authorization code</h1>\
                     <p id=\"reason\">{why}</p></body></html>"
                ))
        }
    }
}
