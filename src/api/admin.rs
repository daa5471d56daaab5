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

/// `/state`'s query: how many of the most likely keys to list (default 20, at most 1,000).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StateQuery {
    keys: Option<usize>,
}

pub(super) async fn state(gw: web::Data<Gateway>, q: web::Query<StateQuery>) -> HttpResponse {
    let now = gw.clock().now_ms();
    let keys: Vec<_> = gw
        .planned_keys(q.keys.unwrap_or(20).min(1_000))
        .into_iter()
        .map(|(t, p)| {
            let reason = if p.target == 0 && p.stock == 0 {
                "unlikely"
            } else {
                p.reason.as_str()
            };
            json!({
                // A hash: it carries no request parameter.
                "key": t.key.as_str(),
                "tenant": gw.tenants().get(t.tenant).id,
                "operation": t.request.operation().as_str(),
                "probability": p.probability,
                "target": p.target,
                "stock": p.stock,
                "pooled_here": gw.pool().len(&t.key),
                "in_flight": t.in_flight.get(),
                "reason": reason,
                "planned_ms_ago": now.saturating_sub(p.at_ms),
            })
        })
        .collect();
    let (dropped, users) = gw.session_stats();
    let budgets: Vec<_> = gw
        .budgets()
        .iter()
        .map(|b| json!({"account": b.account(), "region": b.region(), "rate_per_sec": b.rate(), "tokens": b.tokens(), "share": b.share()}))
        .collect();
    let access_keys = gw.access_keys();
    HttpResponse::Ok().json(json!({
        "mode": gw.sharing().mode,
        "replicas": gw.sharing().replicas,
        "pool": {"urls": gw.pool().total()},
        "demand": {"tracked_keys": gw.tracked_keys(), "lead_secs": gw.lead_secs(), "keys": keys},
        "sessions": {"users": users, "events_dropped": dropped},
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
        "tenant_table": {"digest": gw.tenant_table_digest()},
        "tenants": gw.tenants().present().map(|t| json!({
            "id": t.id,
            "rate_per_sec": t.limit().rate_per_sec,
            "burst": t.limit().burst,
            "upstream_weight": t.quotas().upstream_weight,
            "max_pooled_urls": t.quotas().max_pooled_urls,
            "max_hints": t.quotas().max_hints,
            "max_tracked_keys": t.quotas().max_tracked_keys,
            // Key ids are not secret (their secrets are derived, never shown).
            "access_key_ids": access_keys.ids_of(t.index),
            "client_certificate_names": t.client_certificate_names().as_slice(),
            "recurrence": recurrence(&gw.learned(t.index)),
        })).collect::<Vec<_>>(),
        "compat": {
            "listen": gw.settings().compat_listen,
            "regions": gw.upstreams().regions(),
            "access_keys": access_keys.len(),
        },
    }))
}

/// A tenant's learned recurrences: per kind, for a key asked once, twice and three times, the
/// probability that it is asked once more within a URL's usable life, how many of the tenant's
/// own keys that rests on, and whose evidence it is.
fn recurrence(learned: &crate::refill::LearnedKinds) -> serde_json::Value {
    let kind = |steps: &[crate::refill::Learned]| {
        steps
            .iter()
            .enumerate()
            .map(|(i, l)| {
                json!({
                    "asked": i + 1,
                    "probability": l.probability,
                    "settled_keys": l.settled,
                    "source": l.source.as_str(),
                })
            })
            .collect::<Vec<_>>()
    };
    json!({"anonymous": kind(&learned[0]), "registered_user": kind(&learned[1])})
}
