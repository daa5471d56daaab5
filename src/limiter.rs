//! Limiters: the inbound limit per tenant, and the upstream budget per AWS account and region.
//!
//! - **Inbound** is GCRA (governor), one limiter per tenant with its own rate and burst. A
//!   rejection carries the wait until the next request would be allowed.
//! - **Upstream budget** is a token bucket whose rate adapts: a ThrottlingException cuts it
//!   (multiplicatively, at most once a second), calm seconds restore it (additively). Tenants share
//!   a contended budget by weight, and callers waiting on a miss go before prefetch. governor's
//!   quotas are fixed at construction, so this bucket is our own: a few lines of arithmetic
//!   under one lock per account.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::UpstreamSettings;
use crate::metrics::Metrics;
use crate::tenant::{TenantId, Tenants};

type Gcra = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// The outcome of an inbound check, with what the IETF RateLimit headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    Allowed { remaining: u32 },
    Limited { retry_after: Duration },
}

/// One GCRA limiter per tenant.
pub struct InboundLimiter {
    limiters: Vec<Gcra>,
    /// One limit shared by every request without a valid API key.
    unauthenticated: Gcra,
    clock: DefaultClock,
    /// (quota, window seconds) per tenant, for `RateLimit-Policy`.
    policies: Vec<(u32, u64)>,
}

fn gcra(rate_per_sec: f64, burst: u32) -> Gcra {
    let period = Duration::from_secs_f64(1.0 / rate_per_sec);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>()
}

impl InboundLimiter {
    /// Per-tenant limits from the table, and the shared limit for requests without a valid key
    /// (`unauthenticated` = (rate per second, burst)).
    pub fn new(tenants: &Tenants, unauthenticated: (f64, u32)) -> Self {
        let mut limiters = Vec::new();
        let mut policies = Vec::new();
        for t in tenants.all() {
            limiters.push(gcra(t.rate_per_sec, t.burst));
            let window = (f64::from(t.burst) / t.rate_per_sec).ceil().max(1.0) as u64;
            policies.push((t.burst, window));
        }
        InboundLimiter {
            limiters,
            unauthenticated: gcra(unauthenticated.0, unauthenticated.1),
            clock: DefaultClock::default(),
            policies,
        }
    }

    /// Counts one request without a valid API key; `Some(wait)` when over the shared limit.
    pub fn check_unauthenticated(&self) -> Option<Duration> {
        self.unauthenticated
            .check()
            .err()
            .map(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Counts one request of `tenant` against its limit.
    pub fn check(&self, tenant: TenantId) -> Inbound {
        match self.limiters[tenant].check() {
            Ok(snapshot) => Inbound::Allowed {
                remaining: snapshot.remaining_burst_capacity(),
            },
            Err(not_until) => Inbound::Limited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    /// `(quota, window seconds)` of the tenant's policy.
    pub fn policy(&self, tenant: TenantId) -> (u32, u64) {
        self.policies[tenant]
    }
}

/// Who asks for an upstream call: a caller waiting on a miss goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Miss,
    Prefetch,
    /// Stocking beyond the needed depth: only budget that is idle (over half the burst unused).
    Surplus,
}

struct BucketState {
    rate: f64,
    tokens: f64,
    /// Per-tenant fair-share buckets.
    shares: Vec<f64>,
    last: Instant,
    last_cut: Option<Instant>,
}

/// The upstream budget of one AWS account and region.
pub struct Budget {
    account: String,
    region: String,
    max_rate: f64,
    burst: f64,
    settings: UpstreamSettings,
    /// Each tenant's fraction of the budget (weights normalised).
    weights: Vec<f64>,
    state: Mutex<BucketState>,
    metrics: Arc<Metrics>,
}

impl Budget {
    fn new(
        account: &str,
        region: &str,
        settings: &UpstreamSettings,
        weights: Vec<f64>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let burst = f64::from(settings.burst);
        metrics
            .budget_rate
            .with_label_values(&[account, region])
            .set(settings.rate_per_sec);
        Budget {
            account: account.into(),
            region: region.into(),
            max_rate: settings.rate_per_sec,
            burst,
            state: Mutex::new(BucketState {
                rate: settings.rate_per_sec,
                tokens: burst,
                shares: weights.iter().map(|w| (burst * w).max(1.0)).collect(),
                last: Instant::now(),
                last_cut: None,
            }),
            weights,
            settings: settings.clone(),
            metrics,
        }
    }

    fn refill(&self, s: &mut BucketState, now: Instant) {
        let dt = now.saturating_duration_since(s.last).as_secs_f64();
        s.last = now;
        // Recovery starts one calm second after the last cut.
        let calm_secs = match s.last_cut {
            None => dt,
            Some(c) => {
                let calm_since = c + Duration::from_secs(1);
                dt.min(now.saturating_duration_since(calm_since).as_secs_f64())
            }
        };
        if calm_secs > 0.0 && s.rate < self.max_rate {
            s.rate = (s.rate + self.settings.recovery_per_sec * calm_secs).min(self.max_rate);
            self.metrics
                .budget_rate
                .with_label_values(&[&self.account, &self.region])
                .set(s.rate);
        }
        s.tokens = (s.tokens + s.rate * dt).min(self.burst);
        for (share, w) in s.shares.iter_mut().zip(&self.weights) {
            *share = (*share + s.rate * w * dt).min((self.burst * w).max(1.0));
        }
    }

    /// Takes one call from the budget.
    ///
    /// # Errors
    /// How long until a call would be allowed for this tenant and priority.
    pub fn try_acquire(&self, tenant: TenantId, priority: Priority) -> Result<(), Duration> {
        let now = Instant::now();
        let mut s = self.state.lock();
        self.refill(&mut s, now);
        let within_share = s.shares.get(tenant).is_some_and(|t| *t >= 1.0);
        // Tokens that must stay in the bucket for this request to go: prefetch leaves the miss
        // reserve alone; a tenant over its fair share may only use an uncontended budget.
        let mut floor = self.floor(priority);
        if !within_share {
            floor = f64::max(floor, 0.5 * self.burst);
        }
        if s.tokens >= 1.0 + floor {
            s.tokens -= 1.0;
            if let Some(t) = s.shares.get_mut(tenant) {
                *t = (*t - 1.0).max(0.0);
            }
            return Ok(());
        }
        let missing = 1.0 + floor - s.tokens;
        let global_wait = missing / s.rate;
        let share_wait = s
            .shares
            .get(tenant)
            .zip(self.weights.get(tenant))
            .map_or(global_wait, |(t, w)| (1.0 - t).max(0.0) / (s.rate * w));
        let wait = if within_share {
            global_wait
        } else {
            global_wait.min(share_wait)
        };
        Err(Duration::from_secs_f64(wait.clamp(0.001, 60.0)))
    }

    /// Gives back a call taken by [`Budget::try_acquire`] that was not made after all (the
    /// fleet-wide budget refused it).
    pub fn refund(&self, tenant: TenantId) {
        let mut s = self.state.lock();
        s.tokens = (s.tokens + 1.0).min(self.burst);
        if let Some((t, w)) = s.shares.get_mut(tenant).zip(self.weights.get(tenant)) {
            *t = (*t + 1.0).min((self.burst * w).max(1.0));
        }
    }

    /// Calls of the burst that a request of `priority` must leave in the bucket: prefetch leaves
    /// the miss reserve, surplus stocking at least half the burst.
    pub fn floor(&self, priority: Priority) -> f64 {
        match priority {
            Priority::Miss => 0.0,
            Priority::Prefetch => self.settings.miss_reserve * self.burst,
            Priority::Surplus => self.settings.miss_reserve.max(0.5) * self.burst,
        }
    }

    pub fn burst(&self) -> u32 {
        self.burst as u32
    }

    /// `tenant`'s fraction of the budget under contention (its weight, normalised).
    pub fn weight(&self, tenant: TenantId) -> f64 {
        self.weights.get(tenant).copied().unwrap_or(0.0)
    }

    /// QuickSight answered ThrottlingException: cut the rate (at most once a second) and drain.
    pub fn on_throttle(&self) {
        let now = Instant::now();
        let mut s = self.state.lock();
        self.refill(&mut s, now);
        self.metrics.throttle_events.inc();
        if s.last_cut
            .is_some_and(|c| now.saturating_duration_since(c) < Duration::from_secs(1))
        {
            return;
        }
        s.rate = (s.rate * self.settings.throttle_backoff).max(self.settings.min_rate_per_sec);
        s.tokens = s.tokens.min(0.0);
        s.last_cut = Some(now);
        self.metrics
            .budget_rate
            .with_label_values(&[&self.account, &self.region])
            .set(s.rate);
    }

    /// Current rate, calls per second.
    pub fn rate(&self) -> f64 {
        self.state.lock().rate
    }

    /// Current tokens (for the admin state view).
    pub fn tokens(&self) -> f64 {
        let mut s = self.state.lock();
        self.refill(&mut s, Instant::now());
        s.tokens
    }
}

/// Budgets per (account, region), created on first use.
pub struct Budgets {
    settings: UpstreamSettings,
    weights: Vec<f64>,
    map: Mutex<HashMap<(String, String), Arc<Budget>>>,
    metrics: Arc<Metrics>,
}

impl Budgets {
    pub fn new(settings: &UpstreamSettings, tenants: &Tenants, metrics: Arc<Metrics>) -> Self {
        let total: f64 = tenants.all().iter().map(|t| t.upstream_weight).sum();
        let weights = tenants
            .all()
            .iter()
            .map(|t| {
                if total > 0.0 {
                    t.upstream_weight / total
                } else {
                    0.0
                }
            })
            .collect();
        Budgets {
            settings: settings.clone(),
            weights,
            map: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    pub fn get(&self, account: &str, region: &str) -> Arc<Budget> {
        let mut map = self.map.lock();
        map.entry((account.to_string(), region.to_string()))
            .or_insert_with(|| {
                Arc::new(Budget::new(
                    account,
                    region,
                    &self.settings,
                    self.weights.clone(),
                    self.metrics.clone(),
                ))
            })
            .clone()
    }

    /// Every budget, for the admin state view.
    pub fn all(&self) -> Vec<Arc<Budget>> {
        self.map.lock().values().cloned().collect()
    }
}

impl Budget {
    pub fn account(&self) -> &str {
        &self.account
    }
    pub fn region(&self) -> &str {
        &self.region
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(weights: Vec<f64>) -> Budget {
        let settings = UpstreamSettings {
            rate_per_sec: 10.0,
            burst: 10,
            ..UpstreamSettings::default()
        };
        Budget::new(
            "111122223333",
            "us-east-1",
            &settings,
            weights,
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_its_burst_then_its_rate() {
        let b = budget(vec![1.0]);
        for _ in 0..10 {
            assert!(b.try_acquire(0, Priority::Miss).is_ok());
        }
        let wait = b.try_acquire(0, Priority::Miss).unwrap_err();
        assert!(wait <= Duration::from_millis(101), "{wait:?}");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.try_acquire(0, Priority::Miss).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn prefetch_leaves_the_miss_reserve_alone() {
        let b = budget(vec![1.0]);
        let mut prefetched = 0;
        while b.try_acquire(0, Priority::Prefetch).is_ok() {
            prefetched += 1;
        }
        assert_eq!(prefetched, 7, "30% of a burst of 10 stays for misses");
        for _ in 0..3 {
            assert!(b.try_acquire(0, Priority::Miss).is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn surplus_stocking_uses_only_idle_budget() {
        let b = budget(vec![1.0]);
        let mut stocked = 0;
        while b.try_acquire(0, Priority::Surplus).is_ok() {
            stocked += 1;
        }
        assert_eq!(stocked, 5, "surplus leaves half the burst of 10");
        assert!(
            b.try_acquire(0, Priority::Prefetch).is_ok(),
            "needed depth still has room"
        );
        assert!(b.try_acquire(0, Priority::Prefetch).is_ok());
        assert!(b.try_acquire(0, Priority::Surplus).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_halves_the_rate_and_calm_restores_it() {
        let b = budget(vec![1.0]);
        b.on_throttle();
        assert_eq!(b.rate(), 5.0);
        b.on_throttle(); // within a second of the last cut: no second cut
        assert_eq!(b.rate(), 5.0);
        tokio::time::advance(Duration::from_secs(1)).await;
        b.tokens();
        tokio::time::advance(Duration::from_secs(4)).await;
        b.tokens();
        assert!(
            b.rate() > 6.9 && b.rate() <= 7.0,
            "recovers 0.5/s: {}",
            b.rate()
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        b.tokens();
        assert_eq!(b.rate(), 10.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_over_its_share_cannot_starve_another_under_contention() {
        let b = budget(vec![0.5, 0.5]);
        // Tenant 0 hammers the budget for ten seconds; tenant 1 asks once every 200 ms.
        let mut got = [0u32; 2];
        for step in 0..1000 {
            if b.try_acquire(0, Priority::Miss).is_ok() {
                got[0] += 1;
            }
            if step % 20 == 0 && b.try_acquire(1, Priority::Miss).is_ok() {
                got[1] += 1;
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert_eq!(got[1], 50, "every request of the light tenant got through");
        assert!(got[0] >= 40, "the heavy tenant used the rest: {}", got[0]);
        assert!(got[0] + got[1] <= 10 + 100 + 1, "the budget held: {got:?}");
    }
}
