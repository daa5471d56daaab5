//! Reloading the tenant table while the gateway runs (`embedgate serve` does when its config
//! files change, and on `SIGHUP`): tenants added and removed, and for each tenant its API keys,
//! access key ids, rules (policy, default account), inbound limit (`rate_per_sec`, `burst`),
//! quotas (`upstream_weight`, `max_…`) and warm keys.
//!
//! A tenant is known by its id: an id the gateway has not run with is added, one the new table
//! does not list is removed, the order does not matter. Everything outside the tenant table was
//! built into the running gateway at start (listeners, Redis, upstreams and their budgets, pool
//! and planner bounds), so a reload that changes any of it is refused whole, naming the
//! settings, and nothing changes: a restart applies them. So is an invalid one, and one under
//! whose rules a tenant's own warm key would be refused (as at start). The master key is read
//! once, at start.
//!
//! # Guarantees
//! - From the first request that reads the new table on, it is authenticated by the new keys
//!   and admitted under the new rules, also where the same bytes were admitted a moment before:
//!   what `recent` remembers is found only under the rules it was admitted under.
//! - A key tracked for its demand that its tenant's new rules refuse is forgotten at the
//!   refiller's next tick (`Gateway::forget_refused`), so QuickSight is not asked for it again;
//!   a prefetch already in flight for it finishes, and its URL, like any URL already pooled for
//!   the key, is never handed out (every request is admitted first) and expires as waste.
//! - A request admitted before the reload completes under the rules it was admitted with.
//! - A changed limit counts from the tenant's next request, carrying on from what the old one
//!   counted (`InboundLimiter::set`; in a fleet Redis holds one state per tenant and each
//!   request carries its replica's limit, see `cluster::scripts::LIMIT_LIB`): a lowered limit
//!   gives no fresh burst, and replicas that disagree while a fleet reloads admit no more than
//!   the higher limit. Its `RateLimit-Policy` and 429 document follow.
//! - A changed quota bounds what the tenant adds from then on; nothing held beyond a lowered
//!   one is dropped (see `Pool::set_cap`, `Demand::set_caps`). A changed weight divides every
//!   upstream budget anew.
//! - The warm keys listed replace the tenant's (see `Demand::set_warm`).
//! - A tenant added has its limiter and bounds before its keys are put in force, so its first
//!   request finds every per-tenant table ready (the others make its entries on first use:
//!   `PerTenant`). A tenant removed keeps its index: its keys stop authenticating from the next
//!   request, its rules allow nothing (so its tracked keys are forgotten as above and its
//!   predictions refused), its warm keys are unpinned, what the session learner knew of its
//!   users is forgotten and nothing more is learned of them (`Sessions::forget_tenant`), and
//!   its weight no longer divides the budgets; what is pooled for it expires as waste. Listed
//!   again, it is the same tenant, at its old index, under the new settings.
//! - The table in force is known by its digest (`config::table_digest`, shown in `/state` and
//!   `embedgate_tenant_table_info`), replaced by each reload applied, so replicas of a fleet on
//!   different tables can be told apart.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use super::Gateway;
use crate::config::Settings;
use crate::credentials::AccessKeys;
use crate::refill::Tracked;
use crate::tenant::TenantId;

/// What a reload put in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The digest of the tenant table now in force (`config::table_digest`).
    pub digest: String,
    /// The tenants whose rules changed.
    pub rules_changed: Vec<String>,
    /// The tenants whose API keys changed.
    pub keys_changed: Vec<String>,
    /// The tenants whose inbound limit changed.
    pub limits_changed: Vec<String>,
    /// The tenants whose quotas (`upstream_weight`, `max_…`) changed.
    pub quotas_changed: Vec<String>,
    /// The tenants whose warm keys changed (added, removed, or another depth).
    pub warm_changed: Vec<String>,
    /// The tenants the new table adds, and those it no longer lists.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// API keys and access key ids now in force, over every tenant.
    pub api_keys: usize,
    pub access_keys: usize,
}

impl Gateway {
    /// Puts the tenants' keys, rules, limits, quotas and warm keys of `new` in force, if nothing
    /// else differs from the running settings and `new` is valid (see the module's
    /// documentation).
    ///
    /// # Errors
    /// Why nothing was changed: the settings that need a restart, the invalid key, or the warm
    /// key the new rules refuse.
    pub fn reload(&self, new: Settings) -> Result<Reloaded, String> {
        self.counted(self.try_reload(new))
    }

    /// [`Gateway::reload`] from the settings files `paths` (and the `EMBEDGATE_…` variables),
    /// read as at start; what `embedgate serve` runs when they change and on `SIGHUP`. Logs
    /// what it did.
    pub fn reload_files(&self, paths: &[PathBuf]) -> Result<Reloaded, String> {
        let result = self.counted(
            crate::config::loader::load_files(paths, "EMBEDGATE_")
                .map_err(|e| format!("{e:#}"))
                .and_then(|new| self.try_reload(new)),
        );
        match &result {
            Ok(r) => tracing::info!(
                rules_changed = %r.rules_changed.join(","),
                keys_changed = %r.keys_changed.join(","),
                limits_changed = %r.limits_changed.join(","),
                quotas_changed = %r.quotas_changed.join(","),
                warm_changed = %r.warm_changed.join(","),
                added = %r.added.join(","),
                removed = %r.removed.join(","),
                digest = %r.digest,
                api_keys = r.api_keys,
                access_keys = r.access_keys,
                "tenant table reloaded"
            ),
            Err(e) => tracing::warn!(error = %e, "tenant table not reloaded: nothing changed"),
        }
        result
    }

    /// Counts a reload's outcome in the metrics.
    fn counted(&self, result: Result<Reloaded, String>) -> Result<Reloaded, String> {
        self.metrics
            .reload_successful
            .set(i64::from(result.is_ok()));
        match &result {
            Ok(_) => self.metrics.reloads_applied.inc(),
            Err(_) => self.metrics.reloads_refused.inc(),
        }
        result
    }

    fn try_reload(&self, new: Settings) -> Result<Reloaded, String> {
        // One at a time: each puts a whole table in force, never keys of one and rules of another.
        let mut in_force = self.reloading.lock();
        let differ = needs_restart(&self.settings, &new);
        if !differ.is_empty() {
            return Err(format!(
                "changes that need a restart: {}",
                differ.join(", ")
            ));
        }
        new.validate()
            .map_err(|e| format!("invalid configuration: {e}"))?;
        let rules = self.tenants.rules_for(&new.tenants);
        let warm = self
            .warm_keys(&new.tenants, &rules)
            .map_err(|e| format!("a warm key its tenant's new rules refuse: {e}"))?;
        let slots = self.tenants.slots_for(&new.tenants);
        // An added tenant has its limiter and bounds before any key can reach it; the other
        // per-tenant tables make its entries as it first uses them.
        for (&index, t) in slots.iter().zip(&new.tenants) {
            if index >= self.tenants.len() {
                self.tenants.add(index, t);
                self.metrics.add_tenant(index, &t.id);
                self.put_limit_in_force(index);
                self.put_quotas_in_force(index);
            }
        }
        let changed = self.tenants.put_in_force(&new.tenants, &slots, rules);
        for &t in &changed.limits {
            self.put_limit_in_force(t);
        }
        for &t in &changed.quotas {
            self.put_quotas_in_force(t);
        }
        for &t in &changed.removed {
            self.sessions.forget_tenant(t);
            self.metrics.tenant_removed(&self.tenants.get(t).id);
        }
        for &t in &changed.added {
            self.sessions.serve_tenant(t);
            self.metrics.tenant_listed(&self.tenants.get(t).id);
        }
        if !changed.quotas.is_empty() || !changed.removed.is_empty() {
            self.budgets.set_weights(&self.tenants);
        }
        let access_keys = AccessKeys::new(&new.tenants, &slots, self.settings.master_key.as_ref());
        let counts = (
            new.tenants.iter().map(|t| t.api_key_sha256.len()).sum(),
            access_keys.len(),
        );
        self.access_keys.store(Arc::new(access_keys));
        let warm: Vec<_> = warm
            .into_iter()
            .map(|(at, request, depth)| (slots[at], request, depth))
            .collect();
        let warm_changed = self.set_warm_keys(&warm);
        let ids = |list: &[usize]| {
            list.iter()
                .map(|&t| self.tenants.get(t).id.clone())
                .collect()
        };
        *in_force = crate::config::table_digest(&new.tenants);
        self.metrics.tenant_table_in_force(&in_force);
        Ok(Reloaded {
            digest: in_force.clone(),
            rules_changed: ids(&changed.rules),
            keys_changed: ids(&changed.keys),
            limits_changed: ids(&changed.limits),
            quotas_changed: ids(&changed.quotas),
            warm_changed: ids(&warm_changed),
            added: ids(&changed.added),
            removed: ids(&changed.removed),
            api_keys: counts.0,
            access_keys: counts.1,
        })
    }
}

impl Gateway {
    /// Puts tenant `t`'s inbound limit in force in the limiters.
    fn put_limit_in_force(&self, t: TenantId) {
        self.limits
            .limit_changed(&self.inbound, self.tenants.get(t));
    }

    /// Puts tenant `t`'s bounds in force in the pool and the demand table.
    fn put_quotas_in_force(&self, t: TenantId) {
        let q = self.tenants.get(t).quotas();
        self.pool.set_cap(t, q.max_pooled_urls);
        self.demand.set_caps(t, q.max_hints, q.max_tracked_keys);
    }

    /// `tracked` less the keys whose tenant's rules changed since the last call and now refuse
    /// their request, which are forgotten (see the module's documentation). Called by the
    /// refiller each tick, before it plans.
    pub(super) fn forget_refused(&self, tracked: Vec<Arc<Tracked>>) -> Vec<Arc<Tracked>> {
        let changed: Vec<bool> = {
            let mut seen = self.rules_seen.lock();
            // A tenant added since the last call has been seen at no generation.
            seen.resize(self.tenants.len(), 0);
            self.tenants
                .all()
                .zip(seen.iter_mut())
                .map(|(t, seen)| {
                    let now = t.rules().generation;
                    std::mem::replace(seen, now) != now
                })
                .collect()
        };
        if !changed.contains(&true) {
            return tracked;
        }
        tracked
            .into_iter()
            .filter(|t| {
                if !changed[t.tenant] {
                    return true;
                }
                let rules = self.tenants.get(t.tenant).rules();
                let upstream = self.upstreams.of(&t.request);
                let allowed = Self::allowed_under(&rules, &t.request, upstream, "Region").is_ok();
                if !allowed {
                    self.demand.forget(&t.key);
                }
                allowed
            })
            .collect()
    }
}

/// The settings `new` changes that only a restart applies: paths such as `listen`,
/// `upstream.rate_per_sec` (never values: some are secrets). Every setting of the tenants may
/// change (a tenant is known by its id: a new id is added, an id no longer listed removed).
fn needs_restart(running: &Settings, new: &Settings) -> Vec<String> {
    let fixed = |s: &Settings| {
        let mut v = serde_json::to_value(s).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("tenants");
        }
        v
    };
    let mut differ = Vec::new();
    paths_that_differ("", &fixed(running), &fixed(new), &mut differ);
    differ
}

/// Appends the paths at which `a` and `b` differ, down to the members that do.
fn paths_that_differ(at: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut names: Vec<&String> = x.keys().chain(y.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let path = if at.is_empty() {
                    name.clone()
                } else {
                    format!("{at}.{name}")
                };
                let none = Value::Null;
                paths_that_differ(
                    &path,
                    x.get(name).unwrap_or(&none),
                    y.get(name).unwrap_or(&none),
                    out,
                );
            }
        }
        // A list of tables (tenants, upstreams) is named per entry; a list of values whole.
        (Value::Array(x), Value::Array(y))
            if x.len() == y.len() && x.iter().all(Value::is_object) =>
        {
            for (i, (a, b)) in x.iter().zip(y).enumerate() {
                paths_that_differ(&format!("{at}[{i}]"), a, b, out);
            }
        }
        _ if a != b => out.push(at.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        crate::dev::settings(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            "http://127.0.0.1:1",
            "k",
        )
    }

    #[test]
    fn any_tenant_setting_may_change_and_every_other_change_is_named_by_its_path() {
        let running = settings();
        let mut new = running.clone();
        new.tenants[0].api_key_sha256 = vec!["00".repeat(32)];
        new.tenants[0].access_key_ids = vec!["EGAAAAAAAAAAAAAAAAAA".into()];
        new.tenants[0].default_account = Some("999999999999".into());
        new.tenants[0].policy.dashboards = vec!["sales-*".into()];
        new.tenants[0].rate_per_sec = 1.0;
        new.tenants[0].burst = 1;
        new.tenants[0].upstream_weight = 3.0;
        new.tenants[0].max_pooled_urls = 1;
        new.tenants[0].max_hints = 2;
        new.tenants[0].max_tracked_keys = 3;
        new.tenants[0].warm = vec![serde_json::json!({"DashboardId": "d"})];
        assert!(needs_restart(&running, &new).is_empty());
        new.pool.max_urls = 1;
        new.pool.min_remaining_secs = 90;
        new.upstream.secret_access_key = Some(crate::config::Secret::new("other"));
        assert_eq!(
            needs_restart(&running, &new),
            [
                "pool.max_urls",
                "pool.min_remaining_secs",
                "upstream.secret_access_key",
            ],
            "paths, never values"
        );
        let mut other = running.clone();
        other.tenants[0].id = "other".into();
        other.tenants.push(running.tenants[0].clone());
        assert!(
            needs_restart(&running, &other).is_empty(),
            "tenants added, renamed"
        );
        other.listen = "127.0.0.1:1".parse().unwrap();
        assert_eq!(needs_restart(&running, &other), ["listen"]);
    }
}
