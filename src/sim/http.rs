//! The simulator's HTTP surface: QuickSight's restJson1 wire format for the three embed-URL
//! operations, embed-URL redemption pages, and the `/_sim` control endpoints.
//!
//! Routing is done on the raw path: it is split on `/` first and each segment percent-decoded
//! afterwards, as QuickSight does (SDKs encode `/` inside a label as `%2F`).

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::json;

use super::{ledger::Redemption, registry::Edition, Simulator};
use crate::model::arn::{Arn, UserArn};
use crate::model::parse::Unknown;
use crate::model::{EmbedRequest, IdentityType, Operation};
use crate::wire::{decode, parse_call, route, success_body, AwsError};

/// A redeemed URL's page: a stand-in dashboard that tells the embedding SDK in the parent page
/// that it loaded, as QuickSight's frame does.
const FRAME_PAGE: &str = include_str!("pages/frame.html");
/// The embedding SDK's control frame (`/embed/<session>/embedControl`).
const CONTROL_PAGE: &str = include_str!("pages/control.html");

/// Largest request body the simulator reads (QuickSight bodies here are a few KiB).
const MAX_BODY: usize = 256 * 1024;

pub(crate) fn server(
    sim: Arc<Simulator>,
    listener: TcpListener,
    tls: Option<(TcpListener, rustls::ServerConfig)>,
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
    if let Some((l, config)) = tls {
        server = server.listen_rustls_0_23(l, config)?;
    }
    if let Some(w) = workers {
        server = server.workers(w.max(1));
    }
    Ok(server.run())
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
        ("GET", [""]) => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(
                "<!doctype html><html><head><title>embedgate QuickSight simulator</title></head><body>\
                 <h1>embedgate's QuickSight simulator</h1><p>Its embed pages open here. If you just \
                 accepted this address's certificate, go back to the demo portal and reload it.</p>\
                 </body></html>",
            ),
        ("GET", ["embed", _, "embedControl"]) => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(CONTROL_PAGE),
        ("GET", ["embed" | "embedding", ..]) => redeem(&sim, &req),
        ("POST", [""]) => super::sts::handle(&sim, &req, &body),
        _ => match route(method, raw_path) {
            Some(call) => {
                let query = req.uri().query().unwrap_or_default();
                let op = call.operation;
                api_call(&sim, &req, &body, op, || {
                    parse_call(call, query, &body, Unknown::Ignore)
                })
                .await
            }
            None => AwsError::new(404, "UnknownOperationException", "Unknown operation")
                .response(&new_request_id()),
        },
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
        let incoming = crate::sigv4::Incoming {
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
                return AwsError::from_auth(&e).response(&request_id);
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
        let mut e = AwsError::throttling("Rate exceeded");
        e.retry_after_ms = sim.knobs().retry_after_ms;
        return e.response(&request_id);
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
        .response(&request_id);
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
        .response(&request_id);
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
            return e.response(&request_id);
        }
    };

    let minutes = match &request {
        EmbedRequest::Dashboard(r) => r.session_lifetime_in_minutes,
        EmbedRequest::Anonymous(r) => r.session_lifetime_in_minutes,
        EmbedRequest::Registered(r) => r.session_lifetime_in_minutes,
    }
    .unwrap_or(600);
    let viewer = match request.user_arn().and_then(UserArn::parse) {
        Some(u) => u.user_name.to_string(),
        None if request.identity_type() == IdentityType::Iam => "IAM caller".to_string(),
        None => "anonymous".to_string(),
    };
    let issued = sim.issue(
        op,
        &request.experience(),
        &viewer,
        minutes,
        request.aws_account_id(),
        &region,
    );
    if !latency.is_zero() && knobs.latency_after_mint {
        tokio::time::sleep(latency).await;
    }
    let anonymous_user_arn = match &request {
        EmbedRequest::Anonymous(r) => Some(format!(
            "arn:aws:quicksight:{}:{}:user/{}/{}",
            region,
            r.aws_account_id,
            r.namespace,
            uuid::Uuid::new_v4().simple()
        )),
        _ => None,
    };
    HttpResponse::Ok()
        .insert_header(("x-amzn-RequestId", request_id.as_str()))
        .content_type("application/json")
        .body(success_body(
            &issued.url,
            &request_id,
            anonymous_user_arn.as_deref(),
        ))
}

/// Resource checks that need the registry: account, edition, pricing plan, namespace, user,
/// dashboards.
fn check_registry(sim: &Simulator, req: &HttpRequest, r: &EmbedRequest) -> Result<(), AwsError> {
    let account_id = r.aws_account_id();
    if let Some(key) = access_key_of(req) {
        if !sim.key_may_call(&key, account_id) {
            return Err(AwsError::access_denied(
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
        (Redemption::Ok | Redemption::Double, Some(page)) => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .insert_header(("Cache-Control", "no-store"))
            .body(
                FRAME_PAGE
                    .replace("{{TITLE}}", &html_escape(&page.title))
                    .replace("{{VIEWER}}", &html_escape(&page.viewer))
                    .replace("{{MINUTES}}", &page.session_minutes.to_string())
                    .replace("{{VALIDITY}}", &page.validity_left_secs.to_string()),
            ),
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
