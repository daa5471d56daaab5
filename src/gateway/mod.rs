//! The gateway's request path, below HTTP: admit a tenant's parsed request (defaults, validation,
//! policy), then serve it: one embed URL from the pool when possible, otherwise through the
//! bounded miss path. [`refiller`] is the task that keeps the pool ahead of demand.
//!
//! Owns the order of the hot path and the miss path's bounds. HTTP concerns (status codes,
//! headers, problem documents) live in `api`; the wiring lives in `startup`.

mod call;
mod recent;
mod refiller;
mod reload;

pub use reload::Reloaded;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::Clock;
use crate::config::{Settings, TenantSettings};
use crate::credentials::AccessKeys;
use crate::limiter::{Budget, Budgets, Inbound, InboundLimiter, Priority};
use crate::metrics::{Metrics, Waste};
use crate::model::{parse_request, BadInput, EmbedRequest, Operation, URL_VALIDITY_SECS};
use crate::pool::{pool_key, Pool, PoolKey, PooledUrl};
use crate::refill::{Demand, Landed, Seen, Sessions, Tracked};
use crate::shared::{Coordination, Limits, Placed, PoolStore, Sharing, Status};
use crate::tasks::Health;
use crate::telemetry::bursts::Bursts;
use crate::tenant::{Rules, Tenant, TenantId, Tenants};
use crate::upstream::{Fetched, Upstream, UpstreamError, Upstreams};

/// How often a burst of throttled requests from one tenant (or from clients without a valid key)
/// is reported as one line, after its first request's line: 10 s.
pub const THROTTLED_REPORT_MS: u64 = 10_000;

/// Where a handed-out URL came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Pre-fetched: taken from the pool, or from a prefetch that was in flight.
    Pool,
    /// Fetched from QuickSight for this request.
    Upstream,
}

impl Source {
    /// The name the API gives it (`Source` in an answer, `x-embedgate-source` in compat).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Pool => "pool",
            Source::Upstream => "upstream",
        }
    }

    /// How a request it answered counts in `embedgate_requests_total`.
    pub fn outcome(self) -> crate::metrics::Outcome {
        match self {
            Source::Pool => crate::metrics::Outcome::Hit,
            Source::Upstream => crate::metrics::Outcome::Miss,
        }
    }
}

/// A URL handed out. The URL is a bearer credential: never log it.
pub struct Served {
    pub url: String,
    pub expires_at_ms: u64,
    pub source: Source,
    /// GenerateEmbedUrlForAnonymousUser's `AnonymousUserArn`, when QuickSight sent one.
    pub anonymous_user_arn: Option<String>,
    /// Requests left in the tenant's burst after this one (the `RateLimit` header).
    pub remaining: u32,
}

impl Served {
    /// A pooled URL, handed out. `remaining` is left for [`Gateway::serve`] to fill in.
    fn pooled(u: PooledUrl) -> Served {
        Served {
            expires_at_ms: u.expires_at_ms(),
            url: u.url,
            source: Source::Pool,
            anonymous_user_arn: u.anonymous_user_arn,
            remaining: 0,
        }
    }
}

/// A request's standing against its tenant's inbound limit, as far as it is known before the
/// body is read ([`Gateway::gate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Counted: `remaining` requests are left in the burst.
    Counted { remaining: u32 },
    /// Over the limit: refuse, retry after `retry_after`.
    Limited { retry_after: Duration },
    /// Counted by [`Gateway::serve`] together with the pool take, in one Redis round trip (a
    /// fleet replica that shares its state). A request refused before it is served (bad input,
    /// denied by policy) is counted with [`Gateway::check_inbound`] instead, so every
    /// authenticated request counts either way.
    WithTake,
}

/// Why no URL could be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// The upstream budget for this account has no room within the miss timeout.
    #[error("the QuickSight budget for this account is exhausted")]
    BudgetExhausted { retry_after: Duration },
    /// The tenant is over its inbound limit (counted with the take, see [`Gate::WithTake`]).
    #[error("this tenant is over its inbound rate limit")]
    Limited { retry_after: Duration },
    /// Every upstream slot is busy within the miss timeout.
    #[error("too many QuickSight calls in flight")]
    Busy,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// Why no URL could be handed out, and the upstream that could not provide it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The upstream's id (`upstreamId` in the problem document).
    pub upstream: String,
    pub error: ServeError,
}

/// Why a request is refused before anything is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Invalid(BadInput),
    Denied { field: String, rule: String },
}

/// A request admitted for a tenant (see [`Gateway::admit`]), with the pool key it maps to.
#[derive(Debug)]
pub struct Admitted {
    pub request: EmbedRequest,
    pub key: PoolKey,
}

/// The gateway's shared state, built once by `startup`.
pub struct Gateway {
    settings: Settings,
    tenants: Tenants,
    /// Tenants' SigV4 access keys (the compatible listener).
    access_keys: arc_swap::ArcSwap<AccessKeys>,
    pool: Arc<Pool>,
    inbound: InboundLimiter,
    budgets: Budgets,
    upstreams: Upstreams,
    demand: Demand,
    /// Registered users' sessions: followers and returning users (see `refill::sessions`).
    sessions: Sessions,
    /// Where pooled URLs live, how limits count, how demand is coordinated: local, or shared
    /// with other replicas (chosen by `startup`; see `shared`).
    store: PoolStore,
    limits: Limits,
    coordination: Coordination,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// EWMA of upstream latency in seconds (the refill lead time), as f64 bits.
    lead_secs: std::sync::atomic::AtomicU64,
    /// Native API bodies admitted recently (see `recent`).
    recent: recent::Recent,
    /// Requests refused for being over a limit, per tenant and (last) for clients without a
    /// valid key: which are logged in full and which counted (see `telemetry::bursts`).
    throttled_lines: Bursts,
    /// A fleet replica's session views not yet sent to the fleet (oldest first; see
    /// `cluster::views::MAX_UNSENT_VIEWS`).
    views_unsent: parking_lot::Mutex<std::collections::VecDeque<(Arc<Tracked>, u64)>>,
    /// Whether every task the gateway runs still runs (see `tasks`).
    health: Arc<Health>,
    /// Each tenant's rules' generation as the refiller last saw it (see `reload`).
    rules_seen: parking_lot::Mutex<Vec<u64>>,
    /// The digest of the tenant table in force (`config::table_digest`), held by a reload
    /// while it runs.
    reloading: parking_lot::Mutex<String>,
}

impl Gateway {
    pub fn new(
        settings: Settings,
        upstreams: Upstreams,
        clock: Clock,
        metrics: Arc<Metrics>,
        sharing: Sharing,
    ) -> Self {
        let tenants = Tenants::new(&settings.tenants);
        let caps = tenants.all().map(|t| t.quotas().max_pooled_urls).collect();
        let demand_caps = tenants
            .all()
            .map(|t| (t.quotas().max_hints, t.quotas().max_tracked_keys))
            .collect();
        let ids: Vec<&str> = tenants.all().map(|t| t.id.as_str()).collect();
        let upstream_ids: Vec<&str> = upstreams.all().iter().map(Upstream::id).collect();
        metrics.init_labels(&ids, &upstream_ids);
        let budgets = Budgets::new(
            &tenants,
            sharing.limits.budget_parts(),
            metrics.clone(),
            clock.clone(),
        );
        for u in upstreams.all() {
            match u.account() {
                Some(account) => drop(budgets.get(account, u.settings())),
                None => {
                    for account in tenants.all().flat_map(|t| t.rules().accounts().to_vec()) {
                        budgets.get(&account, u.settings());
                    }
                }
            }
        }
        let pool = Arc::new(Pool::new(
            &settings.pool,
            caps,
            clock.clone(),
            metrics.clone(),
        ));
        sharing.store.land_orphans_in(&pool);
        let digest = crate::config::table_digest(&settings.tenants);
        metrics.tenant_table_in_force(&digest);
        Gateway {
            health: Arc::default(),
            reloading: parking_lot::Mutex::new(digest),
            rules_seen: parking_lot::Mutex::new(
                tenants.all().map(|t| t.rules().generation).collect(),
            ),
            recent: recent::Recent::new(),
            throttled_lines: Bursts::new(tenants.len() + 1, THROTTLED_REPORT_MS),
            views_unsent: parking_lot::Mutex::default(),
            pool,
            inbound: InboundLimiter::new(
                &tenants,
                (
                    settings.api.unauthenticated_rate_per_sec,
                    settings.api.unauthenticated_burst,
                ),
                &clock,
            ),
            budgets,
            demand: Demand::new(&settings.refill, demand_caps)
                .with_min_remaining(settings.pool.min_remaining_secs),
            sessions: Sessions::new(
                settings.tenants.len(),
                settings.pool.min_remaining_secs,
                settings.refill.predict_min_probability,
                settings.refill.max_session_users,
                settings.refill.demand_half_life_secs,
            ),
            lead_secs: std::sync::atomic::AtomicU64::new(0.1f64.to_bits()),
            access_keys: arc_swap::ArcSwap::from_pointee(AccessKeys::new(
                &settings.tenants,
                &(0..settings.tenants.len()).collect::<Vec<_>>(),
                settings.master_key.as_ref(),
            )),
            tenants,
            upstreams,
            store: sharing.store,
            limits: sharing.limits,
            coordination: sharing.coordination,
            metrics,
            clock,
            settings,
        }
    }

    /// The settings the gateway started with. Its tenants' keys, rules, limits, quotas and warm
    /// keys are those at start: a reload puts others in force ([`Gateway::tenants`],
    /// [`Gateway::access_keys`]; warm keys are kept by the demand table).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The digest of the tenant table in force (`config::table_digest`): the start settings'
    /// until a reload is applied.
    pub fn tenant_table_digest(&self) -> String {
        self.reloading.lock().clone()
    }

    /// The tenant table: authentication and quotas.
    pub fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    /// Tenants' SigV4 access keys, with their derived secrets.
    pub fn access_keys(&self) -> arc_swap::Guard<Arc<AccessKeys>> {
        self.access_keys.load()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Which throttled requests are logged in full and which counted into a report: one slot for
    /// clients without a valid key, then one per tenant ([`Gateway::throttled_slot`]).
    pub fn throttled_lines(&self) -> &Bursts {
        &self.throttled_lines
    }

    /// The slot of [`Gateway::throttled_lines`] for `tenant`'s requests (`None`: clients
    /// without a valid key); [`Gateway::throttled_source`] reads a slot back.
    pub fn throttled_slot(tenant: Option<&Tenant>) -> usize {
        tenant.map_or(0, |t| t.index + 1)
    }

    /// The tenant of a slot of [`Gateway::throttled_lines`] (`None`: clients without a valid
    /// key).
    pub fn throttled_source(&self, slot: usize) -> Option<&Tenant> {
        slot.checked_sub(1).map(|t| self.tenants.get(t))
    }

    /// This replica's local pool (in a fleet, URLs live in Redis and this holds none).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The QuickSight upstreams (clients per account and region).
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// The upstream budget an admitted request's calls count against.
    fn budget_for(&self, req: &EmbedRequest) -> Arc<Budget> {
        self.budgets
            .get(req.aws_account_id(), self.upstreams.of(req).settings())
    }

    /// Every upstream budget in use, per account and region.
    pub fn budgets(&self) -> Vec<Arc<Budget>> {
        self.budgets.all()
    }

    /// Keys whose demand this replica tracks, all tenants.
    pub fn tracked_keys(&self) -> u64 {
        self.demand.len()
    }

    /// What `tenant`'s keys are judged by now (see [`Demand::learned`]).
    pub fn learned(&self, tenant: TenantId) -> crate::refill::LearnedKinds {
        self.demand.learned(tenant, self.clock.now_ms())
    }

    /// The `limit` tracked keys the planner last found most likely to be asked for, with its
    /// decision for each (keys it has not looked at yet are left out).
    pub fn planned_keys(&self, limit: usize) -> Vec<(Arc<Tracked>, crate::refill::Planned)> {
        let mut all: Vec<_> = self
            .demand
            .all()
            .into_iter()
            .filter_map(|t| t.planned().map(|p| (t, p)))
            .collect();
        all.sort_by(|a, b| b.1.probability.total_cmp(&a.1.probability));
        all.truncate(limit);
        all
    }

    /// Session events dropped because the learner's queue was full, and users it knows now.
    pub fn session_stats(&self) -> (u64, usize) {
        let users = (0..self.tenants.len())
            .map(|i| self.sessions.users(i))
            .sum();
        (self.sessions.dropped(), users)
    }

    /// Whether every task of the gateway still runs: what `/healthz` answers from.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Keys whose demand this replica tracks for `tenant`.
    pub fn tracked_by(&self, tenant: TenantId) -> usize {
        self.demand.tracked_by(tenant)
    }

    /// Records admitted requests as hints: their keys are kept stocked for a while. Returns how
    /// many were taken (the rest are over the tenant's `max_hints`).
    pub fn hint(&self, tenant: &Tenant, requests: &[EmbedRequest]) -> usize {
        let now = self.clock.now_ms();
        requests
            .iter()
            .filter(|r| {
                let key = self.key_for(tenant, r);
                let taken = self.demand.hint(&key, tenant.index, r, now);
                if taken && self.sessions_on() {
                    if let Some(t) = self.demand.find(&key) {
                        self.sessions.observe(&t, now, Seen::Hint);
                    }
                }
                taken
            })
            .count()
    }

    /// Whether session learning and prediction run.
    fn sessions_on(&self) -> bool {
        self.settings.refill.enabled && self.settings.refill.sessions
    }

    /// Each tenant's rules in force.
    pub fn rules_in_force(&self) -> Vec<Arc<Rules>> {
        self.tenants.all().map(|t| t.rules_full()).collect()
    }

    /// Every tenant's configured warm keys in `tenants` (tenant, request, depth), each checked
    /// like a request under the tenant's `rules` (those in force, or a reload's).
    ///
    /// # Errors
    /// The first entry that is not a valid request its tenant's rules admit, named by its path
    /// (`tenants[0].warm[1].DashboardId: …`).
    pub fn warm_keys(
        &self,
        tenants: &[TenantSettings],
        rules: &[Arc<Rules>],
    ) -> Result<Vec<(TenantId, EmbedRequest, usize)>, String> {
        let mut keys = Vec::new();
        for (i, t) in tenants.iter().enumerate() {
            for (j, entry) in t.warm.iter().enumerate() {
                let at = format!("tenants[{i}].warm[{j}]");
                let mut obj = entry
                    .as_object()
                    .cloned()
                    .ok_or_else(|| format!("{at}: must be a table"))?;
                let depth = match obj.remove("Depth") {
                    None => 1,
                    Some(d) => d
                        .as_u64()
                        .filter(|d| (1..=1000).contains(d))
                        .ok_or_else(|| format!("{at}.Depth: must be an integer from 1 to 1000"))?
                        as usize,
                };
                let req = crate::model::parse_tagged(obj)
                    .map_err(|b| format!("{at}.{}: {}", b.field.unwrap_or_default(), b.detail))?;
                let req = self.admit_under(&rules[i], req).map_err(|r| {
                    let (field, why) = match r {
                        Refusal::Invalid(b) => (b.field.unwrap_or_default(), b.detail),
                        Refusal::Denied { field, rule } => (field, rule),
                    };
                    format!("{at}.{field}: {why}")
                })?;
                keys.push((i, req, depth));
            }
        }
        Ok(keys)
    }

    /// Makes `warm` ((tenant index, request, depth), from [`Gateway::warm_keys`]) every
    /// tenant's warm keys: each kept stocked at least its depth deep while it is configured
    /// (see [`Demand::set_warm`]); a tenant with none listed has none. Returns the tenants whose
    /// warm keys changed.
    pub fn set_warm_keys(&self, warm: &[(TenantId, EmbedRequest, usize)]) -> Vec<TenantId> {
        let now = self.clock.now_ms();
        self.tenants
            .all()
            .filter(|tenant| {
                let keys: Vec<_> = warm
                    .iter()
                    .filter(|(t, ..)| *t == tenant.index)
                    .map(|(_, req, depth)| (self.key_for(tenant, req), req, *depth))
                    .collect();
                self.demand.set_warm(tenant.index, &keys, now)
            })
            .map(|t| t.index)
            .collect()
    }

    fn min_remaining_ms(&self) -> u64 {
        self.settings.pool.min_remaining_secs * 1000
    }

    /// Whether this replica shares its state with a fleet right now, and if not why.
    pub fn sharing(&self) -> Status {
        self.coordination.status()
    }

    /// Where a request of `tenant` stands against its limit before its body is read: counted
    /// now (on a single node, or a fleet replica that is degraded), refused now (a tenant known
    /// to be over its limit), or to be counted with the pool take ([`Gate::WithTake`]).
    pub fn gate(&self, tenant: &Tenant) -> Gate {
        let verdict = self
            .limits
            .early(&self.inbound, tenant, self.clock.now_ms());
        match verdict {
            None => Gate::WithTake,
            Some(Inbound::Allowed { remaining }) => Gate::Counted { remaining },
            Some(Inbound::Limited { retry_after }) => Gate::Limited { retry_after },
        }
    }

    /// Counts one request of `tenant` against its limit (fleet-wide when shared).
    pub async fn check_inbound(&self, tenant: &Tenant) -> Inbound {
        self.limits
            .inbound(&self.inbound, tenant, self.clock.now_ms())
            .await
    }

    /// Counts one request without a valid API key against the shared limit for such requests
    /// (this replica's; bad keys need no fleet-wide precision). `Some(wait)` when over it.
    pub fn check_unauthenticated(&self) -> Option<Duration> {
        self.inbound.check_unauthenticated()
    }

    /// Counts the request as `gate` says and, if it is admitted, takes a pooled URL for `key`:
    /// `Err(retry_after)` when the tenant is over its limit.
    async fn count_and_take(
        &self,
        tenant: &Tenant,
        key: &PoolKey,
        gate: Gate,
    ) -> Result<(u32, Option<PooledUrl>), Duration> {
        let verdict = match gate {
            Gate::Counted { remaining } => Inbound::Allowed { remaining },
            Gate::Limited { retry_after } => Inbound::Limited { retry_after },
            Gate::WithTake => {
                let both = self
                    .store
                    .inbound_take(
                        &self.pool,
                        tenant,
                        key,
                        self.clock.now_ms(),
                        self.min_remaining_ms(),
                    )
                    .await;
                match both {
                    Some((Inbound::Allowed { remaining }, taken)) => return Ok((remaining, taken)),
                    Some((Inbound::Limited { retry_after }, _)) => return Err(retry_after),
                    None => self.check_inbound(tenant).await,
                }
            }
        };
        match verdict {
            Inbound::Allowed { remaining } => Ok((remaining, self.take(tenant, key).await)),
            Inbound::Limited { retry_after } => Err(retry_after),
        }
    }

    /// Takes a pooled URL for `key` with `min_remaining` left (see `PoolStore::take`).
    async fn take(&self, tenant: &Tenant, key: &PoolKey) -> Option<PooledUrl> {
        self.store
            .take(
                &self.pool,
                tenant,
                key,
                self.clock.now_ms(),
                self.min_remaining_ms(),
            )
            .await
    }

    /// Pools a fetched URL that nobody waits for (see `PoolStore::put`; a prefetch's own URL is
    /// a `landing`); not pooled when it was wasted instead (counted).
    async fn store(&self, tenant: TenantId, key: &PoolKey, f: Fetched, landing: bool) -> Landed {
        let fetched_for = f.fetched_for;
        let url = PooledUrl {
            url: f.url,
            issued_at_ms: f.sent_at_ms,
            anonymous_user_arn: f.anonymous_user_arn,
            fetched_for,
        };
        let placed = self
            .store
            .put(
                &self.pool,
                self.tenants.get(tenant),
                key,
                url,
                self.clock.now_ms(),
                self.min_remaining_ms(),
                self.settings.pool.max_urls_per_key,
                landing,
            )
            .await;
        let pooled = match placed.placed {
            Placed::Pooled => true,
            Placed::Wasted(why) => {
                self.metrics.wasted(why, fetched_for, 1);
                false
            }
        };
        Landed {
            pooled,
            shared: placed.sent,
        }
    }

    /// The fleet-wide half of an upstream budget check (see `Limits::budget`).
    async fn fleet_budget(
        &self,
        budget: &Budget,
        tenant: TenantId,
        priority: Priority,
    ) -> Result<(), Duration> {
        self.limits
            .budget(
                budget,
                self.tenants.get(tenant),
                priority,
                self.clock.now_ms(),
            )
            .await
    }

    /// Completes, validates and authorizes a parsed request for `tenant`: nothing is touched
    /// unless this succeeds.
    ///
    /// # Errors
    /// The invalid or forbidden member.
    pub fn admit(&self, tenant: &Tenant, req: EmbedRequest) -> Result<EmbedRequest, Refusal> {
        self.admit_under(&tenant.rules(), req)
    }

    /// [`Gateway::admit`] under the given rules (a tenant's now, or a reload's before they are
    /// in force).
    pub(crate) fn admit_under(
        &self,
        rules: &Rules,
        mut req: EmbedRequest,
    ) -> Result<EmbedRequest, Refusal> {
        if req.aws_account_id().is_empty() {
            match &rules.default_account {
                Some(a) => req.set_aws_account_id(a.clone()),
                None => {
                    return Err(Refusal::Invalid(BadInput {
                        code: "missing_field",
                        field: Some("AwsAccountId".into()),
                        detail: "AwsAccountId is required: this tenant has no default account"
                            .into(),
                    }))
                }
            }
        }
        // Check what QuickSight will act on: its implicit defaults made explicit first.
        req.resolve_defaults();
        let invalid = |v: crate::model::Violation| {
            Refusal::Invalid(BadInput {
                code: match v.kind {
                    crate::model::ViolationKind::SessionLifetime => "invalid_session_lifetime",
                    crate::model::ViolationKind::InvalidParameter => "invalid_parameter",
                },
                detail: format!("{} {}", v.field, v.rule),
                field: Some(v.field),
            })
        };
        req.validate().map_err(invalid)?;
        // Route to an upstream (the account, and the Region member when the account is served
        // in several), then make its region explicit: the pool key, the budget and every later
        // fetch of this request follow it.
        let upstream = self
            .upstreams
            .route(req.aws_account_id(), req.region())
            .map_err(|u| {
                Refusal::Invalid(BadInput {
                    code: "invalid_parameter",
                    field: Some(u.field.into()),
                    detail: u.detail,
                })
            })?;
        let region_field = if req.region().is_some() {
            "Region"
        } else {
            "AwsAccountId"
        };
        req.set_region(upstream.region().to_string());
        req.check_region(upstream.region()).map_err(invalid)?;
        Self::allowed_under(rules, &req, upstream, region_field)?;
        Ok(req)
    }

    /// The policy's part of admission: whether `rules` allow a resolved, validated request,
    /// and the `upstream` it routes to (refused naming `region_field`).
    ///
    /// # Errors
    /// The member the rules do not allow.
    fn allowed_under(
        rules: &Rules,
        req: &EmbedRequest,
        upstream: &Upstream,
        region_field: &str,
    ) -> Result<(), Refusal> {
        rules.authorize(req).map_err(|d| Refusal::Denied {
            field: d.field,
            rule: d.rule,
        })?;
        if !rules.may_use_upstream(upstream.id()) {
            return Err(Refusal::Denied {
                field: region_field.into(),
                rule: format!(
                    "routes to upstream {}, which this tenant's policy does not list",
                    upstream.id()
                ),
            });
        }
        Ok(())
    }

    /// Parses a native API body as `op` and admits it for `tenant` (see [`Gateway::admit`]),
    /// with its pool key. The same bytes admitted again for the same tenant and operation give
    /// the same answer, remembered (see `recent`) rather than worked out again.
    ///
    /// # Errors
    /// The invalid or forbidden member.
    pub fn admit_body(
        &self,
        tenant: &Tenant,
        op: Operation,
        body: &[u8],
    ) -> Result<Arc<Admitted>, Refusal> {
        // One read of the rules: what is remembered is what they admitted.
        let rules = tenant.rules();
        if let Some(known) = self.recent.get(tenant.index, rules.generation, op, body) {
            self.metrics.memo_hits.inc();
            return Ok(known);
        }
        let request = parse_request(op, body).map_err(Refusal::Invalid)?;
        let admitted = Arc::new(self.keyed(tenant, self.admit_under(&rules, request)?));
        self.recent
            .put(tenant.index, rules.generation, op, body, admitted.clone());
        self.metrics.memo_misses.inc();
        Ok(admitted)
    }

    /// An admitted request with its pool key.
    pub fn keyed(&self, tenant: &Tenant, request: EmbedRequest) -> Admitted {
        Admitted {
            key: self.key_for(tenant, &request),
            request,
        }
    }

    pub fn key_for(&self, tenant: &Tenant, req: &EmbedRequest) -> PoolKey {
        pool_key(
            &tenant.id,
            req.region()
                .unwrap_or_else(|| self.upstreams.of(req).region()),
            req,
        )
    }

    /// Hands out one URL for an admitted request, counted against the tenant's limit as `gate`
    /// says: from the pool, else through the miss path.
    ///
    /// # Errors
    /// The tenant is over its limit ([`ServeError::Limited`], only with [`Gate::WithTake`]), or
    /// no URL within the miss timeout; see [`ServeError`].
    pub async fn serve(
        self: &Arc<Self>,
        tenant: &Tenant,
        admitted: &Admitted,
        gate: Gate,
    ) -> Result<Served, Failed> {
        let Admitted { request: req, key } = admitted;
        // Counted (and, in a fleet, taken in the same round trip) before anything is learned
        // from the request: a refused request changes no demand estimate.
        let (remaining, taken) =
            self.count_and_take(tenant, key, gate)
                .await
                .map_err(|retry_after| Failed {
                    upstream: self.upstreams.of(req).id().to_string(),
                    error: ServeError::Limited { retry_after },
                })?;
        let now = self.clock.now_ms();
        let tracked = if self.settings.refill.enabled {
            self.demand.record(key, tenant.index, req, now)
        } else {
            None
        };
        if let Some(t) = &tracked {
            if self.settings.refill.sessions {
                self.sessions.observe(t, now, Seen::View);
            }
        }
        if let Some(u) = taken {
            return Ok(Served {
                remaining,
                ..Served::pooled(u)
            });
        }
        let deadline = Instant::now() + Duration::from_millis(self.settings.api.miss_timeout_ms);
        self.miss(tenant, admitted, tracked.as_ref(), deadline)
            .await
            .map(|served| Served {
                remaining,
                ..served
            })
            .map_err(|error| Failed {
                upstream: self.upstreams.of(req).id().to_string(),
                error,
            })
    }

    async fn miss(
        self: &Arc<Self>,
        tenant: &Tenant,
        admitted: &Admitted,
        tracked: Option<&Arc<Tracked>>,
        deadline: Instant,
    ) -> Result<Served, ServeError> {
        let req = &admitted.request;
        // 1. Claim a prefetch already in flight for this key, if an unclaimed one exists.
        if let Some(t) = tracked {
            // Dropped while it waits (its client closed or reset the connection), this request
            // passes a URL delivered to it meanwhile to the next waiter, or lands it for the key.
            let lost = {
                let (gw, t) = (self.clone(), t.clone());
                move |f: Fetched| gw.abandoned(t, f)
            };
            if let Some(mut joined) = t.try_join(lost) {
                let timeout = self.upstreams.of(req).settings().timeout_ms;
                let until = deadline.min(Instant::now() + Duration::from_millis(timeout));
                let got = joined.wait_until(until).await;
                // A URL delivered in the instant `until` passed is this request's: it waited.
                match got.or_else(|| joined.give_up()) {
                    Some(f) if self.fresh(&f) => return Ok(self.served(f, Source::Pool)),
                    Some(f) => self.metrics.wasted(Waste::Expired, f.fetched_for, 1),
                    None => {}
                }
                // The prefetch may have landed in the pool while we waited.
                if let Some(u) = self.take(tenant, &t.key).await {
                    return Ok(Served::pooled(u));
                }
            }
        }
        // 2. Fetch now, within the account's budget and the concurrency bound.
        let upstream = self.upstreams.of(req);
        let budget = self.budget_for(req);
        // Waiting for the budget is worth it only if a typical upstream call still fits after the
        // wait; otherwise the caller is better served by an immediate 503 and Retry-After.
        let call_time = Duration::from_secs_f64(
            (3.0 * f64::from_bits(self.lead_secs.load(Ordering::Relaxed))).max(0.05),
        );
        loop {
            let verdict = match budget.try_acquire(tenant.index, Priority::Miss) {
                Ok(()) => {
                    self.fleet_budget(&budget, tenant.index, Priority::Miss)
                        .await
                }
                Err(wait) => Err(wait),
            };
            match verdict {
                Ok(()) => break,
                Err(wait) if Instant::now() + wait + call_time < deadline => {
                    tokio::time::sleep(wait).await
                }
                Err(wait) => return Err(ServeError::BudgetExhausted { retry_after: wait }),
            }
        }
        let Some(slot) = upstream.slot(deadline).await else {
            return Err(ServeError::Busy);
        };
        // The call is a task of its own: a request that stops waiting (its client gone, or the
        // deadline passed) leaves it to land its URL for the key (see `call`).
        let mut call = self.call(tenant.index, &admitted.key, req, tracked, slot);
        match call.wait_until(deadline).await {
            Some(Ok(f)) if self.fresh(&f) => Ok(self.served(f, Source::Upstream)),
            Some(Ok(f)) => {
                // Settings keep the miss timeout below the usable life, so only a call that
                // outlived it lands here; its URL would be handed out with too little left.
                self.metrics.wasted(Waste::Expired, f.fetched_for, 1);
                Err(UpstreamError::Timeout.into())
            }
            // A throttle has slowed the budget already, in the call's task.
            Some(Err(e)) => Err(e.into()),
            None => Err(UpstreamError::Timeout.into()),
        }
    }

    /// Whether a fetched URL still has `min_remaining` left: the same rule as the pool's, on
    /// every hand-out path.
    fn fresh(&self, f: &Fetched) -> bool {
        f.sent_at_ms + URL_VALIDITY_SECS * 1000 >= self.clock.now_ms() + self.min_remaining_ms()
    }

    fn served(&self, f: Fetched, source: Source) -> Served {
        Served {
            expires_at_ms: f.sent_at_ms + URL_VALIDITY_SECS * 1000,
            url: f.url,
            source,
            anonymous_user_arn: f.anonymous_user_arn,
            remaining: 0,
        }
    }

    /// One upstream call, feeding the measured lead time.
    async fn fetch(&self, req: &EmbedRequest) -> Result<Fetched, UpstreamError> {
        let started = Instant::now();
        let r = self.upstreams.of(req).fetch(req, &self.clock).await;
        if r.is_ok() {
            let sample = started.elapsed().as_secs_f64();
            let old = f64::from_bits(self.lead_secs.load(Ordering::Relaxed));
            self.lead_secs
                .store((old * 0.9 + sample * 0.1).to_bits(), Ordering::Relaxed);
        }
        r
    }
}
