//! The admin listener's views: Prometheus metrics and the pool, demand, budget and tenant state.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::gateway::Gateway;

pub(super) async fn metrics(gw: web::Data<Gateway>) -> HttpResponse {
    gw.metrics().pool_urls.set(gw.pool().total() as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(gw.metrics().render())
}

pub(super) async fn state(gw: web::Data<Gateway>) -> HttpResponse {
    let budgets: Vec<_> = gw
        .budgets()
        .iter()
        .map(|b| json!({"account": b.account(), "region": b.region(), "rate_per_sec": b.rate(), "tokens": b.tokens()}))
        .collect();
    HttpResponse::Ok().json(json!({
        "mode": gw.sharing().mode,
        "replicas": gw.sharing().replicas,
        "pool": {"urls": gw.pool().total()},
        "demand": {"tracked_keys": gw.tracked_keys(), "lead_secs": gw.lead_secs()},
        "budgets": budgets,
        "upstreams": gw.upstreams().all().iter().map(|u| json!({
            "id": u.id(),
            "account": u.account(),
            "region": u.region(),
            "credentials": match (&u.settings().role_arn, &u.settings().access_key_id) {
                (Some(_), _) => "assumed_role",
                (None, Some(_)) => "static",
                (None, None) => "default_chain",
            },
            "role_arn": u.settings().role_arn,
            "role_error": u.role_error(),
        })).collect::<Vec<_>>(),
        "tenants": gw.tenants().all().iter().map(|t| json!({
            "id": t.id,
            "rate_per_sec": t.rate_per_sec,
            "burst": t.burst,
            // Key ids are not secret (their secrets are derived, never shown).
            "access_key_ids": gw.settings().tenants[t.index].access_key_ids,
        })).collect::<Vec<_>>(),
        "compat": {
            "listen": gw.settings().compat_listen,
            "regions": gw.upstreams().regions(),
            "access_keys": gw.access_keys().len(),
        },
    }))
}
