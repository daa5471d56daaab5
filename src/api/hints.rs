//! `POST /v1/hints`: a portal says which URLs it will ask for soon, so their keys are stocked
//! before the first request. All or nothing: one invalid or forbidden entry refuses the call.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::auth::{
    authenticate, closing_if_refused, discard_body, limit_unauthenticated, read_body, BodyLimits,
    Canned,
};
use super::context::request_id;
use super::problem::{bad_input, refusal, Problem};
use crate::gateway::Gateway;
use crate::limiter::Inbound;
use crate::model::parse_tagged;
use crate::model::shape::repeated_member;

/// `POST /v1/hints`: `{"Requests": [{"Operation": "...", ...body}, ...]}`. All requests are
/// checked first; only if every one is valid and allowed is any hint recorded.
pub(super) async fn hints(
    req: HttpRequest,
    body: web::Payload,
    gw: web::Data<Gateway>,
    canned: web::Data<Canned>,
) -> HttpResponse {
    let request_id = request_id();
    let tenant = match authenticate(&gw, &req) {
        Ok(t) => t,
        Err(p) => {
            discard_body(&req, body, BodyLimits::of(&gw)).await;
            return closing_if_refused(&req, limit_unauthenticated(&gw, p).response(&request_id));
        }
    };
    if let Inbound::Limited { retry_after } = gw.check_inbound(tenant).await {
        discard_body(&req, body, BodyLimits::of(&gw)).await;
        return canned.limited(tenant, retry_after, &request_id);
    }
    let bytes = match read_body(&req, body, BodyLimits::of(&gw)).await {
        Ok(b) => b,
        Err(p) => return p.response(&request_id),
    };
    let parsed: Result<Vec<_>, Problem> = (|| {
        if let Ok(Some(member)) = repeated_member(&bytes) {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("{member} is given twice"),
            )
            .field(Some(member)));
        }
        let doc: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not JSON: {e}"),
            )
        })?;
        let list = doc
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.get("Requests"))
            .and_then(|r| r.as_array())
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_hints",
                    "the body must be {\"Requests\": [...]}",
                )
                .field(Some("Requests".into()))
            })?;
        let max = gw.settings().api.max_hints_per_call;
        if list.is_empty() || list.len() > max {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_hints",
                format!("Requests must list 1-{max} requests"),
            )
            .field(Some("Requests".into())));
        }
        list.iter()
            .enumerate()
            .map(|(i, item)| {
                let at = |f: Option<String>| {
                    Some(format!(
                        "Requests[{i}]{}",
                        f.map(|f| format!(".{f}")).unwrap_or_default()
                    ))
                };
                let obj = item.as_object().cloned().ok_or_else(|| {
                    Problem::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_hints",
                        "each request must be a JSON object",
                    )
                    .field(at(None))
                })?;
                let parsed = parse_tagged(obj).map_err(|b| {
                    let field = at(b.field.clone());
                    bad_input(b).field(field)
                })?;
                gw.admit(tenant, parsed).map_err(|r| {
                    let mut p = refusal(r);
                    p.field = at(p.field.take());
                    p
                })
            })
            .collect()
    })();
    let requests = match parsed {
        Ok(r) => r,
        Err(p) => return p.response(&request_id),
    };
    let accepted = gw.hint(tenant, &requests);
    HttpResponse::Accepted()
        .insert_header((super::REQUEST_ID, request_id.as_str()))
        .json(json!({"Accepted": accepted, "Dropped": requests.len() - accepted, "RequestId": request_id.as_str()}))
}
