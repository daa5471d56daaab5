//! The gateway's request path, below HTTP: turn a tenant's validated request into one embed URL,
//! from the pool when possible, otherwise through the bounded miss path; and the refiller task
//! that keeps the pool ahead of demand.
//!
//! Owns the order of the hot path and the miss path's bounds. HTTP concerns (status codes,
//! headers, problem documents) live in `api`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::config::Settings;
use crate::limiter::{Budget, Budgets, Inbound, InboundLimiter, Priority};
use crate::metrics::{Fetch, Metrics, Waste};
use crate::model::{EmbedRequest, Operation, URL_VALIDITY_SECS};
use crate::pool::{pool_key, Pool, PoolKey, PooledUrl};
use crate::refill::{reclaim, Demand, KeyView, Reason, Tracked};
use crate::shared::{Coordination, Limits, Placed, PoolStore, Sharing, Status};
use crate::tenant::{Tenant, TenantId, Tenants};
use crate::upstream::{Fetched, Upstream, UpstreamError};

/// Where a handed-out URL came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Source {
    /// Pre-fetched: taken from the pool, or from a prefetch that was in flight.
    #[serde(rename = "pool")]
    Pool,
    /// Fetched from QuickSight for this request.
    #[serde(rename = "upstream")]
    Upstream,
}

/// A URL handed out. The URL is a bearer credential: never log it.
pub struct Served {
    pub url: String,
    pub expires_at_ms: u64,
    pub source: Source,
}

/// What the planner starts for one key this tick.
struct Want {
    /// Prefetches up to the needed depth (Little's law, hints, warm).
    needed: usize,
    /// Prefetches beyond it, up to the surplus stock, with idle budget only.
    extra: usize,
    reason: Reason,
    /// In a fleet: the stock the shared pool plus all prefetches in flight may reach.
    fleet_limit: Option<usize>,
}

/// Why no URL could be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// The upstream budget for this account has no room within the miss timeout.
    #[error("the QuickSight budget for this account is exhausted")]
    BudgetExhausted { retry_after: Duration },
    /// Every upstream slot is busy within the miss timeout.
    #[error("too many QuickSight calls in flight")]
    Busy,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// A request body that is not a valid request: which member, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadInput {
    pub code: &'static str,
    pub field: Option<String>,
    pub detail: String,
}

/// Parses a native API body (QuickSight's member names) strictly: unknown members, wrong types
/// and missing required members are refused, naming the member.
///
/// # Errors
/// The first problem found.
pub fn parse_strict<
    'de,
    T: DeserializeOwned,
    D: serde::Deserializer<'de, Error = serde_json::Error>,
>(
    de: D,
) -> Result<T, BadInput> {
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(member_path(&path));
    let ignoring = serde_ignored::Deserializer::new(de, &mut record);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(ignoring);
    match parsed {
        Ok(v) => match unknown.into_iter().next() {
            Some(field) => Err(BadInput {
                code: "unknown_field",
                detail: format!("{field} is not a member of this request"),
                field: Some(field),
            }),
            None => Ok(v),
        },
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let syntax =
                !matches!(inner.classify(), serde_json::error::Category::Data) || path == ".";
            let text = inner.to_string();
            if syntax && !text.starts_with("missing field") {
                Err(BadInput {
                    code: "invalid_json",
                    detail: format!("the body is not a JSON object of this request: {text}"),
                    field: None,
                })
            } else if let Some(rest) = text.strip_prefix("missing field `") {
                let member = rest.split('`').next().unwrap_or_default();
                let field = if path == "." {
                    member.to_string()
                } else {
                    format!("{path}.{member}")
                };
                Err(BadInput {
                    code: "missing_field",
                    detail: format!("{field} is required"),
                    field: Some(field),
                })
            } else {
                let detail = format!("{path}: {}", text.split(" at line").next().unwrap_or(&text));
                Err(BadInput {
                    code: "invalid_type",
                    detail,
                    field: Some(path),
                })
            }
        }
    }
}

/// `A.B[2].C`: a member path as the API documents it (Option and newtype layers left out).
fn member_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", member_path(parent)),
        Path::Map { parent, key } => {
            let p = member_path(parent);
            if p.is_empty() {
                key.to_string()
            } else {
                format!("{p}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => member_path(parent),
    }
}

/// Parses a body for `op` from JSON bytes.
///
/// # Errors
/// See [`parse_strict`].
pub fn parse_request(op: Operation, body: &[u8]) -> Result<EmbedRequest, BadInput> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let req = match op {
        Operation::GetDashboardEmbedUrl => EmbedRequest::Dashboard(parse_strict(&mut *de)?),
        Operation::GenerateEmbedUrlForAnonymousUser => {
            EmbedRequest::Anonymous(parse_strict(&mut *de)?)
        }
        Operation::GenerateEmbedUrlForRegisteredUser => {
            EmbedRequest::Registered(parse_strict(&mut *de)?)
        }
    };
    de.end().map_err(|e| BadInput {
        code: "invalid_json",
        detail: format!("trailing data after the JSON object: {e}"),
        field: None,
    })?;
    Ok(req)
}

/// Parses a request for `op` from a JSON value (hints, warm keys).
///
/// # Errors
/// See [`parse_strict`].
pub fn parse_value(op: Operation, value: serde_json::Value) -> Result<EmbedRequest, BadInput> {
    Ok(match op {
        Operation::GetDashboardEmbedUrl => EmbedRequest::Dashboard(parse_strict(value)?),
        Operation::GenerateEmbedUrlForAnonymousUser => {
            EmbedRequest::Anonymous(parse_strict(value)?)
        }
        Operation::GenerateEmbedUrlForRegisteredUser => {
            EmbedRequest::Registered(parse_strict(value)?)
        }
    })
}

/// Why a request is refused before anything is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Invalid(BadInput),
    Denied { field: String, rule: String },
}

/// The gateway's shared state, built once by `startup`.
pub struct Gateway {
    pub settings: Settings,
    pub tenants: Tenants,
    pub pool: Pool,
    pub inbound: InboundLimiter,
    pub budgets: Budgets,
    pub upstream: Upstream,
    pub demand: Demand,
    /// Where pooled URLs live, how limits count, how demand is coordinated: local, or shared
    /// with other replicas (chosen by `startup`; see `shared`).
    store: PoolStore,
    limits: Limits,
    coordination: Coordination,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    upstream_slots: Semaphore,
    prefetch_slots: Arc<Semaphore>,
    /// EWMA of upstream latency in seconds (the refill lead time), as f64 bits.
    lead_secs: std::sync::atomic::AtomicU64,
}

impl Gateway {
    pub fn new(
        settings: Settings,
        upstream: Upstream,
        clock: Clock,
        metrics: Arc<Metrics>,
        sharing: Sharing,
    ) -> Self {
        let tenants = Tenants::new(&settings.tenants);
        let caps = tenants.all().iter().map(|t| t.max_pooled_urls).collect();
        let demand_caps = tenants
            .all()
            .iter()
            .map(|t| (t.max_hints, t.max_tracked_keys))
            .collect();
        let ids: Vec<&str> = tenants.all().iter().map(|t| t.id.as_str()).collect();
        metrics.init_labels(&ids);
        let budgets = Budgets::new(&settings.upstream, &tenants, metrics.clone(), clock.clone());
        for account in tenants.all().iter().flat_map(|t| t.accounts()) {
            budgets.get(account, upstream.region());
        }
        Gateway {
            pool: Pool::new(&settings.pool, caps, clock.clone(), metrics.clone()),
            inbound: InboundLimiter::new(
                &tenants,
                (
                    settings.api.unauthenticated_rate_per_sec,
                    settings.api.unauthenticated_burst,
                ),
                &clock,
            ),
            budgets,
            demand: Demand::new(&settings.refill, demand_caps),
            upstream_slots: Semaphore::new(settings.upstream.max_concurrency),
            prefetch_slots: Arc::new(Semaphore::new(settings.refill.concurrency)),
            lead_secs: std::sync::atomic::AtomicU64::new(0.1f64.to_bits()),
            tenants,
            upstream,
            store: sharing.store,
            limits: sharing.limits,
            coordination: sharing.coordination,
            metrics,
            clock,
            settings,
        }
    }

    fn min_remaining_ms(&self) -> u64 {
        self.settings.pool.min_remaining_secs * 1000
    }

    /// Whether this replica shares its state with a fleet right now, and if not why.
    pub fn sharing(&self) -> Status {
        self.coordination.status()
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

    /// Pools a fetched URL that nobody waits for (see `PoolStore::put`).
    async fn store(&self, tenant: TenantId, key: &PoolKey, f: Fetched) {
        let url = PooledUrl {
            url: f.url,
            issued_at_ms: f.sent_at_ms,
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
            )
            .await;
        if let Placed::Wasted(why) = placed {
            self.metrics.wasted(why, 1);
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
    pub fn admit(&self, tenant: &Tenant, mut req: EmbedRequest) -> Result<EmbedRequest, Refusal> {
        if req.aws_account_id().is_empty() {
            match &tenant.default_account {
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
        req.check_region(self.upstream.region()).map_err(invalid)?;
        tenant.authorize(&req).map_err(|d| Refusal::Denied {
            field: d.field,
            rule: d.rule,
        })?;
        Ok(req)
    }

    pub fn key_for(&self, tenant: &Tenant, req: &EmbedRequest) -> PoolKey {
        pool_key(&tenant.id, self.upstream.region(), req)
    }

    /// Hands out one URL for an admitted request: from the pool, else through the miss path.
    ///
    /// # Errors
    /// No URL within the miss timeout; see [`ServeError`].
    pub async fn serve(&self, tenant: &Tenant, req: EmbedRequest) -> Result<Served, ServeError> {
        let key = self.key_for(tenant, &req);
        let now = self.clock.now_ms();
        let tracked = if self.settings.refill.enabled {
            self.demand.record(&key, tenant.index, &req, now)
        } else {
            None
        };
        if let Some(u) = self.take(tenant, &key).await {
            return Ok(Served {
                expires_at_ms: u.expires_at_ms(),
                url: u.url,
                source: Source::Pool,
            });
        }
        let deadline = Instant::now() + Duration::from_millis(self.settings.api.miss_timeout_ms);
        self.miss(tenant, &req, tracked.as_deref(), deadline).await
    }

    async fn miss(
        &self,
        tenant: &Tenant,
        req: &EmbedRequest,
        tracked: Option<&Tracked>,
        deadline: Instant,
    ) -> Result<Served, ServeError> {
        // 1. Claim a prefetch already in flight for this key, if an unclaimed one exists.
        if let Some(t) = tracked {
            if let Some(mut rx) = t.try_join() {
                let until = deadline
                    .min(Instant::now() + Duration::from_millis(self.settings.upstream.timeout_ms));
                match tokio::time::timeout_at(until, &mut rx).await {
                    Ok(Ok(f)) if self.fresh(&f) => return Ok(self.served(f, Source::Pool)),
                    Ok(Ok(_)) => self.metrics.wasted(Waste::Expired, 1),
                    _ => {
                        if let Some(f) = reclaim(rx, t) {
                            self.store(t.tenant, &t.key, f).await;
                        }
                    }
                }
                // The prefetch may have landed in the pool while we waited.
                if let Some(u) = self.take(tenant, &t.key).await {
                    return Ok(Served {
                        expires_at_ms: u.expires_at_ms(),
                        url: u.url,
                        source: Source::Pool,
                    });
                }
            }
        }
        // 2. Fetch now, within the account's budget and the concurrency bound.
        let budget = self
            .budgets
            .get(req.aws_account_id(), self.upstream.region());
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
        let _permit = match tokio::time::timeout_at(deadline, self.upstream_slots.acquire()).await {
            Ok(Ok(p)) => p,
            _ => return Err(ServeError::Busy),
        };
        let fetched = match tokio::time::timeout_at(deadline, self.fetch(req)).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout),
        };
        match fetched {
            Ok(f) if self.fresh(&f) => {
                self.metrics.fetched(Fetch::Miss);
                Ok(self.served(f, Source::Upstream))
            }
            Ok(_) => {
                // Settings keep the miss timeout below the usable life, so only a call that
                // outlived it lands here; its URL would be handed out with too little left.
                self.metrics.fetched(Fetch::Miss);
                self.metrics.wasted(Waste::Expired, 1);
                Err(UpstreamError::Timeout.into())
            }
            Err(UpstreamError::Throttled) => {
                budget.on_throttle();
                Err(UpstreamError::Throttled.into())
            }
            Err(e) => Err(e.into()),
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
        }
    }

    /// One upstream call, feeding the measured lead time.
    async fn fetch(&self, req: &EmbedRequest) -> Result<Fetched, UpstreamError> {
        let started = Instant::now();
        let r = self.upstream.fetch(req, &self.clock).await;
        if r.is_ok() {
            let sample = started.elapsed().as_secs_f64();
            let old = f64::from_bits(self.lead_secs.load(Ordering::Relaxed));
            self.lead_secs
                .store((old * 0.9 + sample * 0.1).to_bits(), Ordering::Relaxed);
        }
        r
    }

    /// Measured refill lead time: upstream latency plus one planner tick.
    pub fn lead_secs(&self) -> f64 {
        f64::from_bits(self.lead_secs.load(Ordering::Relaxed))
            + self.settings.refill.tick_ms as f64 / 1000.0
    }

    /// How many URLs `t` should hold now, and why, for `lambda` requests per second.
    fn target(&self, t: &Tracked, lambda: f64) -> (usize, Reason) {
        self.demand.target(
            t,
            lambda,
            self.clock.now_ms(),
            self.lead_secs(),
            self.settings.pool.min_remaining_secs,
            self.settings.pool.max_urls_per_key,
        )
    }

    /// The surplus depth for `needed` at `lambda` requests per second (see `Demand::surplus`).
    fn surplus(&self, lambda: f64, needed: usize) -> usize {
        self.demand.surplus(
            lambda,
            needed,
            self.lead_secs(),
            self.settings.pool.min_remaining_secs,
            self.settings.pool.max_urls_per_key,
        )
    }

    /// What this replica should start for `t` now: (needed, surplus, reason). Single node: the
    /// target and surplus depth against the local pool. Fleet: this replica's part of the
    /// fleet's deficits, i.e. the targets for the summed demand minus the shared pool and every
    /// replica's prefetches in flight, times this replica's fraction of the demand, rounded at
    /// random, so that over the fleet the expected number of fetches is the deficit itself: no
    /// N-fold over-fetching, and no key starved by rounding down on every replica. Prefetches in
    /// flight count against the needed part first.
    /// `own` is this replica's rate estimate, `shown` its demonstrated rate, which alone sizes
    /// the surplus stock.
    fn want(&self, t: &Tracked, own: f64, shown: f64, fleet: Option<(f64, KeyView)>) -> Want {
        let in_flight = t.in_flight.load(Ordering::SeqCst);
        match fleet {
            None => {
                let (target, reason) = self.target(t, own);
                let stock = self.surplus(shown, target);
                let have = self.pool.len(&t.key) + in_flight;
                Want {
                    needed: target.saturating_sub(have),
                    extra: stock.saturating_sub(have.max(target)),
                    reason,
                    fleet_limit: None,
                }
            }
            Some((published, view)) => {
                let fleet_rate = view.fleet_rate.max(published);
                let (target, reason) = self.target(t, fleet_rate);
                // The fleet's demonstrated rate, assuming other replicas show the same fraction.
                let fleet_shown = if published > 0.0 {
                    fleet_rate * (shown / published).min(1.0)
                } else {
                    0.0
                };
                let stock = self.surplus(fleet_shown, target);
                let share = if fleet_rate > 0.0 {
                    published / fleet_rate
                } else {
                    1.0 / view.replicas.max(1) as f64
                };
                let part = |deficit: usize| {
                    let exact = deficit as f64 * share;
                    let n = exact.floor();
                    (n + f64::from(u8::from(rand::random::<f64>() < exact - n))) as usize
                };
                // This replica's own prefetches are in the fleet's count as of the sync.
                let have = view.pooled + view.in_flight;
                Want {
                    needed: part(target.saturating_sub(have)),
                    extra: part(stock.saturating_sub(have.max(target))),
                    reason,
                    fleet_limit: Some(stock),
                }
            }
        }
    }

    /// One planner pass: purge, then start prefetches for every key below its target depth, as
    /// far as the prefetch concurrency and the upstream budgets allow, then stock surplus with
    /// idle budget. In cluster mode the targets and the pool level are the fleet's, and this
    /// replica fetches its share.
    pub async fn plan(self: &Arc<Self>) {
        let now = self.clock.now_ms();
        self.pool.purge();
        let tracked = self.demand.sweep(now);
        self.metrics.tracked_keys.set(tracked.len() as i64);
        let own: Vec<f64> = tracked.iter().map(|t| self.demand.rate(t, now)).collect();
        let shown: Vec<f64> = tracked
            .iter()
            .map(|t| self.demand.demonstrated_rate(t, now))
            .collect();
        let views = match self.coordination.shared() {
            false => None,
            true => {
                // A pinned (hinted or warm) key with no traffic still needs someone to fill it:
                // a token rate makes every pinning replica take a share.
                let published: Vec<f64> = tracked
                    .iter()
                    .zip(&own)
                    .map(|(t, r)| r + if t.pinned(now) { 1e-3 } else { 0.0 })
                    .collect();
                self.coordination
                    .sync(
                        &self.tenants,
                        &tracked,
                        &published,
                        now,
                        self.min_remaining_ms(),
                        self.fleet_keep_ms(),
                    )
                    .await
                    .map(|v| (published, v))
            }
        };
        let mut wants: Vec<(Arc<Tracked>, Want)> = tracked
            .into_iter()
            .enumerate()
            .filter(|(_, t)| !t.backing_off(now))
            .map(|(i, t)| {
                let fleet = views.as_ref().and_then(|(p, v)| Some((p[i], v[i]?)));
                let w = self.want(&t, own[i], shown[i], fleet);
                (t, w)
            })
            .filter(|(_, w)| w.needed + w.extra > 0)
            .collect();
        if views.is_some() {
            self.claim_fleet(&mut wants, now).await;
        }
        let mut surplus = vec![];
        for (t, w) in wants {
            if !self.start_prefetches(&t, w.needed, Priority::Prefetch, w.reason) {
                return;
            }
            if w.extra > 0 {
                surplus.push((t, w.extra, w.reason));
            }
        }
        // Surplus only after every key's needed depth had its chance at the budget.
        for (t, extra, reason) in surplus {
            if !self.start_prefetches(&t, extra, Priority::Surplus, reason) {
                return;
            }
        }
    }

    /// Turns each replica's share into a claim the fleet agrees to (see
    /// `Coordination::claim`); a key whose claim fails starts nothing this tick.
    async fn claim_fleet(&self, wants: &mut [(Arc<Tracked>, Want)], now: u64) {
        let asks: Vec<(&Tracked, usize, usize)> = wants
            .iter()
            .map(|(t, w)| (&**t, w.needed + w.extra, w.fleet_limit.unwrap_or(0)))
            .collect();
        let granted = self
            .coordination
            .claim(&self.tenants, &asks, now, self.fleet_keep_ms())
            .await;
        for ((_, w), g) in wants.iter_mut().zip(granted) {
            let needed = w.needed.min(g);
            w.extra = g - needed;
            w.needed = needed;
        }
    }

    /// How long a replica's demand entry counts without being refreshed.
    fn fleet_keep_ms(&self) -> u64 {
        (5 * self.settings.refill.tick_ms).max(2_000)
    }

    /// Starts up to `n` prefetches for `t`, as far as the local budget allows; false when the
    /// prefetch concurrency is used up (nothing more can start this tick).
    fn start_prefetches(
        self: &Arc<Self>,
        t: &Arc<Tracked>,
        n: usize,
        priority: Priority,
        reason: Reason,
    ) -> bool {
        if n == 0 {
            return true;
        }
        let budget = self
            .budgets
            .get(t.request.aws_account_id(), self.upstream.region());
        for _ in 0..n {
            let Ok(permit) = self.prefetch_slots.clone().try_acquire_owned() else {
                return false;
            };
            if budget.try_acquire(t.tenant, priority).is_err() {
                break;
            }
            t.in_flight.fetch_add(1, Ordering::SeqCst);
            let gw = self.clone();
            let t = t.clone();
            let budget = budget.clone();
            tokio::spawn(async move {
                gw.prefetch(&t, &budget, priority, reason).await;
                drop(permit);
            });
        }
        true
    }

    /// One prefetch started by the planner (its call already taken from the local budget). On a
    /// single node it keeps topping the key up while it is below its target (and then its surplus
    /// stock), so prefetch throughput is bounded by upstream latency and the budget, not by the
    /// planner's tick; in a fleet the planner sizes each replica's share every tick instead.
    async fn prefetch(
        &self,
        t: &Tracked,
        budget: &Budget,
        mut priority: Priority,
        mut reason: Reason,
    ) {
        loop {
            if self.fleet_budget(budget, t.tenant, priority).await.is_err() {
                t.in_flight.fetch_sub(1, Ordering::SeqCst);
                t.release_unserved_waiters();
                return;
            }
            self.metrics.fetched(reason.fetch());
            let result = self.fetch(&t.request).await;
            t.in_flight.fetch_sub(1, Ordering::SeqCst);
            match result {
                Ok(f) => {
                    t.prefetch_succeeded();
                    if let Some(f) = t.deliver(f) {
                        self.store(t.tenant, &t.key, f).await;
                    }
                }
                Err(UpstreamError::Throttled) => {
                    t.release_unserved_waiters();
                    budget.on_throttle();
                    return;
                }
                Err(e) => {
                    t.release_unserved_waiters();
                    t.prefetch_failed(self.clock.now_ms());
                    tracing::warn!(key = %t.key, tenant = %self.tenants.get(t.tenant).id, error = %e, "prefetch failed; backing off");
                    return;
                }
            }
            if self.coordination.shared() {
                return;
            }
            // Below the needed depth: top up at Prefetch priority. Between it and the surplus
            // stock: keep stocking at Surplus priority, taking idle budget as it accrues rather
            // than once per tick (a small bucket would otherwise cap stocking at a few calls a
            // tick).
            let now = self.clock.now_ms();
            let (target, next) = self.target(t, self.demand.rate(t, now));
            let have = self.pool.len(&t.key) + t.in_flight.load(Ordering::SeqCst);
            let (limit, next_priority) = if have < target {
                (target, Priority::Prefetch)
            } else {
                let shown = self.demand.demonstrated_rate(t, now);
                (self.surplus(shown, target), Priority::Surplus)
            };
            if have >= limit || budget.try_acquire(t.tenant, next_priority).is_err() {
                return;
            }
            t.in_flight.fetch_add(1, Ordering::SeqCst);
            priority = next_priority;
            reason = next;
        }
    }

    /// Runs the planner every `refill.tick_ms` until `shutdown` resolves.
    pub async fn run_refiller(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.settings.refill.tick_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {
                    if self.settings.refill.enabled {
                        self.plan().await;
                    } else {
                        // Nothing is prefetched, but expired hints still give their slots back.
                        self.pool.purge();
                        self.demand.sweep(self.clock.now_ms());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parsing_names_unknown_missing_and_mistyped_members() {
        let op = Operation::GetDashboardEmbedUrl;
        let e = parse_request(
            op,
            br#"{"DashboardId":"d","IdentityType":"IAM","Colour":1}"#,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("unknown_field", Some("Colour"))
        );
        let e = parse_request(op, br#"{"IdentityType":"IAM"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("missing_field", Some("DashboardId"))
        );
        let e = parse_request(
            op,
            br#"{"DashboardId":"d","IdentityType":"IAM","SessionLifetimeInMinutes":"60"}"#,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid_type", Some("SessionLifetimeInMinutes"))
        );
        let e = parse_request(op, br#"{"DashboardId":"d","IdentityType":"ROOT"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("IdentityType"));
        let e = parse_request(op, b"{not json").unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = parse_request(
            Operation::GenerateEmbedUrlForRegisteredUser,
            br#"{"UserArn":"a","ExperienceConfiguration":{"Dashboard":{"InitialDashboardId":"d","Nope":true}}}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("ExperienceConfiguration.Dashboard.Nope")
        );
    }
}
