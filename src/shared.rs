//! Local or shared state, chosen once at start-up: where pooled URLs live ([`PoolStore`]), how a
//! tenant's requests and the upstream budget are counted ([`Limits`]), and how the refill
//! planner learns the fleet's demand ([`Coordination`]). Each is `Local` on a single node and
//! `Fleet` in cluster mode; the composition root (`startup`) picks, and the request path and the
//! planner call the same methods either way, never Redis itself.
//!
//! # The degraded-mode rule, once
//! A `Fleet` implementation uses Redis while the fleet is healthy (Redis answers in time and
//! this replica's clock agrees with it) and this replica's own state otherwise. Four
//! consequences, each written here and nowhere else:
//! - URLs fetched while degraded stay in this replica's pool, which `take` drains first, so
//!   nothing pooled locally is ever shared (or handed out twice).
//! - A URL whose shared put has an unknown outcome (timeout, broken connection) is dropped and
//!   counted as waste: it may be in Redis already, and keeping a copy could hand it out twice.
//! - A URL that a shared take or hit popped for nobody (the call timed out, or its request was
//!   dropped with its client, and Redis ran it anyway) is this replica's alone: it lands in this
//!   replica's pool for its key ([`PoolStore::land_orphans_in`]), as on a single node the URL of
//!   a request whose client left goes to the next request for its key.
//! - A limit check Redis cannot answer falls back to this replica's own limiter, at its part of
//!   the fleet-wide limit: `1/N` of each tenant's limit and of each upstream budget, `N` the
//!   live replicas it last saw (see [`Limits::part`]), so that replicas cut off from Redis
//!   together stay within the limits they shared.

use std::sync::Arc;
use std::time::Duration;

pub use crate::cluster::views::{MAX_BATCH_VIEWS, MAX_UNSENT_VIEWS};
pub use crate::cluster::Down;
use crate::cluster::{Fleet, Stored};
use crate::limiter::{Budget, Inbound, InboundLimiter, Parts, Priority};
use crate::metrics::Waste;
use crate::pool::{Pool, PoolKey, PooledUrl};
use crate::refill::{KeyView, Report, Tracked};
use crate::tenant::{Tenant, TenantId, Tenants};

/// The three, chosen together by the composition root.
pub struct Sharing {
    pub store: PoolStore,
    pub limits: Limits,
    pub coordination: Coordination,
}

impl Sharing {
    /// A single node: everything local.
    pub fn local() -> Self {
        Sharing {
            store: PoolStore::Local,
            limits: Limits::Local,
            coordination: Coordination::Local,
        }
    }

    /// A fleet replica sharing through `cluster`.
    pub fn fleet(fleet: Arc<Fleet>) -> Self {
        Sharing {
            store: PoolStore::Fleet(fleet.clone()),
            limits: Limits::Fleet(fleet.clone()),
            coordination: Coordination::Fleet(fleet),
        }
    }
}

/// Where a URL nobody waits for ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    Pooled,
    /// Not pooled: counted as waste for this reason.
    Wasted(Waste),
}

/// What [`PoolStore::put`] did: where the URL ended, and whether it was sent to the shared pool
/// (an unknown outcome counts as sent: it may have arrived).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Put {
    pub placed: Placed,
    pub sent: bool,
}

/// Where pooled URLs live: this replica's pool, or Redis with this replica's pool for what it
/// fetched while degraded.
pub enum PoolStore {
    Local,
    Fleet(Arc<Fleet>),
}

impl PoolStore {
    /// Takes a URL for `key` with at least `min_remaining_ms` left: from this replica's pool
    /// first (everything, on a single node), then from the shared pool while it is usable.
    pub async fn take(
        &self,
        local: &Pool,
        tenant: &Tenant,
        key: &PoolKey,
        now_ms: u64,
        min_remaining_ms: u64,
    ) -> Option<PooledUrl> {
        if let Some(u) = local.take(key) {
            return Some(u);
        }
        match self {
            PoolStore::Local => None,
            PoolStore::Fleet(fleet) => fleet
                .take(tenant, key, now_ms, min_remaining_ms)
                .await
                .ok()
                .flatten(),
        }
    }

    /// The hit path's one Redis round trip in a fleet: counts one request against the tenant's
    /// fleet-wide limit and, if it is admitted, takes a shared URL for `key`. `None` where that
    /// does not apply, and the caller counts ([`Limits::inbound`]) and takes ([`PoolStore::take`])
    /// on its own: on a single node, while degraded, when this replica's own pool holds URLs for
    /// `key` (they go first), or when Redis fails now (which makes the replica degraded).
    pub async fn inbound_take(
        &self,
        local: &Pool,
        tenant: &Tenant,
        key: &PoolKey,
        now_ms: u64,
        min_remaining_ms: u64,
    ) -> Option<(Inbound, Option<PooledUrl>)> {
        let PoolStore::Fleet(fleet) = self else {
            return None;
        };
        if !fleet.healthy() || (!local.is_empty() && local.len(key) > 0) {
            return None;
        }
        fleet
            .inbound_take(tenant, key, now_ms, min_remaining_ms)
            .await
            .ok()
    }

    /// Has a URL that a shared take or hit popped for nobody land in `local`, dated by the
    /// margin a shared URL is handed out with (see `cluster::orphans`). Nothing to do on a
    /// single node, whose takes cannot be left halfway.
    pub fn land_orphans_in(&self, local: &Arc<Pool>) {
        if let PoolStore::Fleet(fleet) = self {
            let local = local.clone();
            fleet.land_orphans_in(Box::new(move |tenant, key, url| {
                // The local pool counts what it cannot keep itself.
                let _ = local.put(key, tenant, url);
            }));
        }
    }

    /// Pools a URL nobody waits for: in the shared pool while it is usable, in this replica's
    /// otherwise (see the module's rule for unknown outcomes). A prefetch's own URL is a
    /// `landing`: the shared pool counts it as this replica's prefetch landed (see
    /// `Fleet::put`).
    #[allow(clippy::too_many_arguments)]
    pub async fn put(
        &self,
        local: &Pool,
        tenant: &Tenant,
        key: &PoolKey,
        url: PooledUrl,
        now_ms: u64,
        min_remaining_ms: u64,
        max_per_key: usize,
        landing: bool,
    ) -> Put {
        let sent = |placed| Put { placed, sent: true };
        if let PoolStore::Fleet(fleet) = self {
            if url.expires_at_ms().saturating_sub(now_ms) < min_remaining_ms {
                return Put {
                    placed: Placed::Wasted(Waste::Expired),
                    sent: false,
                };
            }
            let put = fleet
                .put(
                    tenant,
                    key,
                    &url,
                    now_ms,
                    min_remaining_ms,
                    max_per_key,
                    landing,
                )
                .await;
            match put {
                Ok(Stored::Yes) => return sent(Placed::Pooled),
                Ok(Stored::Full) => return sent(Placed::Wasted(Waste::Overflow)),
                Err(Down::Unknown) => return sent(Placed::Wasted(Waste::Unconfirmed)),
                // Degraded: nothing was sent; the URL stays with this replica.
                Err(Down::NotSent) => {}
            }
        }
        // The local pool counts what it cannot keep itself.
        let _ = local.put(key, tenant.index, url);
        Put {
            placed: Placed::Pooled,
            sent: false,
        }
    }
}

/// How a tenant's requests and the upstream budget are counted: by this replica, or fleet-wide
/// through Redis on top of this replica's own checks.
pub enum Limits {
    Local,
    Fleet(Arc<Fleet>),
}

impl Limits {
    /// How many parts a fleet-wide limit is divided into for this replica's own limiter: 1 on a
    /// single node and in a healthy fleet (where Redis counts fleet-wide and the local limiter
    /// is the whole limit), the live replicas at the last heartbeat while this replica does not
    /// share. A replica that has never reached Redis knows of no other and takes the whole.
    pub fn part(&self) -> usize {
        match self {
            Limits::Local => 1,
            Limits::Fleet(fleet) => part_of(fleet),
        }
    }

    /// [`Limits::part`] as the upstream budgets read it, at each refill.
    pub fn budget_parts(&self) -> Parts {
        match self {
            Limits::Local => Arc::new(|| 1),
            Limits::Fleet(fleet) => {
                let fleet = fleet.clone();
                Arc::new(move || part_of(&fleet))
            }
        }
    }

    /// Counts one request of `tenant`: fleet-wide while Redis is usable, by this replica's
    /// limiter at its part of the limit otherwise.
    pub async fn inbound(&self, local: &InboundLimiter, tenant: &Tenant, now_ms: u64) -> Inbound {
        if let Limits::Fleet(fleet) = self {
            if fleet.healthy() {
                if let Ok(verdict) = fleet.inbound(tenant, now_ms).await {
                    return verdict;
                }
            }
        }
        local.check_part(tenant.index, self.part())
    }

    /// Puts `tenant`'s limit, which a reload changed, in force from its next request on: in
    /// this replica's limiter and, in a fleet, in place of a refusal remembered under the old
    /// limit (Redis reads each request's limit from the request's replica).
    pub fn limit_changed(&self, local: &InboundLimiter, tenant: &Tenant) {
        local.set(tenant.index, tenant.limit());
        if let Limits::Fleet(fleet) = self {
            fleet.forget_over(tenant);
        }
    }

    /// A request's count as far as it is decided before its body is read: `None` in a healthy
    /// fleet, where it is counted together with the pool take (see [`PoolStore::inbound_take`]),
    /// unless the tenant is known to be over its limit; this replica's limiter otherwise.
    pub fn early(&self, local: &InboundLimiter, tenant: &Tenant, now_ms: u64) -> Option<Inbound> {
        if let Limits::Fleet(fleet) = self {
            if fleet.healthy() {
                return fleet.known_over(tenant, now_ms);
            }
        }
        Some(local.check_part(tenant.index, self.part()))
    }

    /// The fleet-wide half of an upstream budget check, after this replica's `try_acquire`
    /// succeeded: gives the local call back when the fleet has no room. On a single node the
    /// local budget is the whole budget, and while degraded this replica's part of it (see
    /// [`Limits::part`]).
    pub async fn budget(
        &self,
        budget: &Budget,
        tenant: &Tenant,
        priority: Priority,
        now_ms: u64,
    ) -> Result<(), Duration> {
        let Limits::Fleet(fleet) = self else {
            return Ok(());
        };
        if !fleet.healthy() {
            return Ok(());
        }
        let reserve = budget.floor(priority);
        let verdict = fleet
            .budget(
                budget.account(),
                budget.region(),
                tenant,
                budget.weight(tenant.index),
                budget.rate(),
                budget.burst(),
                reserve,
                now_ms,
            )
            .await;
        match verdict {
            Ok(Err(wait)) => {
                budget.refund(tenant.index);
                Err(wait)
            }
            Ok(Ok(())) | Err(_) => Ok(()),
        }
    }
}

/// See [`Limits::part`].
fn part_of(fleet: &Fleet) -> usize {
    if fleet.healthy() {
        1
    } else {
        fleet.replicas()
    }
}

/// Whether this replica shares, and if not why: what `/readyz` and `/state` report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// `single`, `fleet` or `degraded`.
    pub mode: &'static str,
    /// Why a fleet replica is not sharing: `redis` or `clock`.
    pub reason: Option<&'static str>,
    /// Live replicas, this one included.
    pub replicas: usize,
}

/// How the refill planner learns the fleet's demand and agrees on who fetches what: not at all
/// on a single node, through Redis in a fleet.
pub enum Coordination {
    Local,
    Fleet(Arc<Fleet>),
}

/// Keys per sync call: bounds how long one script holds Redis.
const SYNC_CHUNK: usize = 256;

impl Coordination {
    /// A fleet replica, sharing now or degraded.
    pub fn is_fleet(&self) -> bool {
        matches!(self, Coordination::Fleet(_))
    }

    /// Whether the planner plans with the fleet's view right now (a healthy fleet replica).
    pub fn shared(&self) -> bool {
        matches!(self, Coordination::Fleet(f) if f.healthy())
    }

    pub fn status(&self) -> Status {
        match self {
            Coordination::Local => Status {
                mode: "single",
                reason: None,
                replicas: 1,
            },
            Coordination::Fleet(f) => Status {
                mode: if f.healthy() { "fleet" } else { "degraded" },
                reason: f.degraded_reason(),
                replicas: f.replicas(),
            },
        }
    }

    /// Publishes this replica's demand for the tracked keys that have any and reads the fleet's
    /// (demand summed over replicas, URLs in the shared pool): one call per tenant and chunk of
    /// keys. A key with no demand here, no pin and nothing in flight is skipped (`None`): this
    /// replica would fetch nothing for it whatever the fleet says. `None` overall when not
    /// sharing, or if Redis failed meanwhile.
    pub async fn sync(
        &self,
        tenants: &Tenants,
        tracked: &[Arc<Tracked>],
        published: &[f64],
        now_ms: u64,
        min_remaining_ms: u64,
        keep_ms: u64,
    ) -> Option<Vec<Option<KeyView>>> {
        use futures::StreamExt;
        let Coordination::Fleet(fleet) = self else {
            return None;
        };
        if !fleet.healthy() {
            return None;
        }
        let mut by_tenant: std::collections::BTreeMap<TenantId, Vec<(usize, Report)>> =
            Default::default();
        for (i, (t, &rate)) in tracked.iter().zip(published).enumerate() {
            let (in_flight, landed) = t.in_flight.report();
            if rate < 1e-3 && in_flight == 0 && !t.pinned(now_ms) {
                continue;
            }
            by_tenant.entry(t.tenant).or_default().push((
                i,
                Report {
                    rate,
                    in_flight,
                    landed,
                },
            ));
        }
        let mut calls = Vec::new();
        for (&tenant, keys) in &by_tenant {
            for chunk in keys.chunks(SYNC_CHUNK) {
                calls.push(sync_chunk(
                    fleet,
                    tenants.get(tenant),
                    chunk,
                    tracked,
                    now_ms,
                    min_remaining_ms,
                    keep_ms,
                ));
            }
        }
        let results: Vec<Result<Vec<(usize, KeyView)>, Down>> = futures::stream::iter(calls)
            .buffer_unordered(16)
            .collect()
            .await;
        let mut views = vec![None; tracked.len()];
        for r in results {
            for (i, v) in r.ok()? {
                views[i] = Some(v);
            }
        }
        Some(views)
    }

    /// Passes this replica's session views (`(key, when)` each, as the learner saw them; at most
    /// `cluster::views::MAX_BATCH_VIEWS`) to the fleet and returns the other replicas' since the
    /// last call, `(tenant, when, request)` each: evidence for the session learner only (see
    /// `cluster::views`). Nothing on a single node; a view of a tenant this replica does not know
    /// is left out.
    ///
    /// # Errors
    /// Redis is not usable: [`Down::NotSent`] when the views certainly were not appended (they
    /// may be sent later), [`Down::Unknown`] when they may have been.
    pub async fn share_views(
        &self,
        tenants: &Tenants,
        views: &[(Arc<Tracked>, u64)],
    ) -> Result<Vec<(TenantId, u64, crate::model::EmbedRequest)>, Down> {
        let Coordination::Fleet(fleet) = self else {
            return Ok(vec![]);
        };
        let batch = if views.is_empty() {
            String::new()
        } else {
            crate::cluster::views::encode(
                views
                    .iter()
                    .take(MAX_BATCH_VIEWS)
                    .map(|(t, at)| (tenants.get(t.tenant).id.as_str(), *at, &t.request)),
            )
        };
        let batches = fleet.exchange_views(&batch).await?;
        if batches.is_empty() {
            return Ok(vec![]);
        }
        let by_id: std::collections::HashMap<&str, TenantId> = tenants
            .present()
            .map(|t| (t.id.as_str(), t.index))
            .collect();
        Ok(batches
            .iter()
            .flat_map(|b| crate::cluster::views::decode(b))
            .filter_map(|(tenant, at, request)| Some((*by_id.get(tenant.as_str())?, at, request)))
            .collect())
    }

    /// Claims prefetches: for each `(tracked key, wanted, limit)`, how many this replica may
    /// start so that the shared pool plus every replica's prefetches in flight stays within the
    /// limit. Replicas planning at the same instant cannot over-fetch together; a claim Redis
    /// cannot answer grants nothing this tick. On a single node everything wanted is granted.
    pub async fn claim(
        &self,
        tenants: &Tenants,
        wants: &[(&Tracked, usize, usize)],
        now_ms: u64,
        keep_ms: u64,
    ) -> Vec<usize> {
        use futures::StreamExt;
        let Coordination::Fleet(fleet) = self else {
            return wants.iter().map(|w| w.1).collect();
        };
        let mut claims = Vec::with_capacity(wants.len());
        for &(t, want, limit) in wants {
            claims.push(fleet.claim(tenants.get(t.tenant), &t.key, want, limit, now_ms, keep_ms));
        }
        let granted: Vec<Result<usize, Down>> =
            futures::stream::iter(claims).buffered(256).collect().await;
        granted.into_iter().map(|g| g.unwrap_or(0)).collect()
    }
}

/// One sync call for some of one tenant's keys (`chunk` indexes `tracked`).
async fn sync_chunk(
    fleet: &Fleet,
    tenant: &Tenant,
    chunk: &[(usize, Report)],
    tracked: &[Arc<Tracked>],
    now_ms: u64,
    min_remaining_ms: u64,
    keep_ms: u64,
) -> Result<Vec<(usize, KeyView)>, Down> {
    let args: Vec<(&PoolKey, Report)> = chunk.iter().map(|(i, r)| (&tracked[*i].key, *r)).collect();
    let views = fleet
        .sync(tenant, &args, now_ms, min_remaining_ms, keep_ms)
        .await?;
    Ok(chunk.iter().map(|(i, _)| *i).zip(views).collect())
}
