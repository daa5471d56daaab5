//! The upstream budget of one AWS account and region: a token bucket whose rate adapts to
//! QuickSight's throttling (AIMD), shared between tenants by weight, with a reserve for misses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::Priority;
use crate::clock::Clock;
use crate::config::UpstreamSettings;
use crate::metrics::Metrics;
use crate::tenant::{TenantId, Tenants};

#[derive(Clone)]
struct BucketState {
    rate: f64,
    tokens: f64,
    /// Per-tenant fair-share buckets.
    shares: Vec<f64>,
    /// Each tenant's fraction of the budget (weights normalised; a reload may change them:
    /// [`Budgets::set_weights`]).
    weights: Vec<f64>,
    /// Clock readings (ms).
    last: u64,
    last_cut: Option<u64>,
    /// The parts the budget is divided into ([`Parts`]) at the last refill: this replica's
    /// bucket runs at `rate / parts` and holds at most `burst / parts`.
    parts: f64,
}

/// A copy of a [`Budget`]'s bucket to plan calls on (see [`Budget::plan`]); time stands still
/// in it.
pub struct Tentative(BucketState);

/// How many parts a budget is divided into right now, one per replica spending it on its own:
/// 1 on a single node and in a fleet that shares it through Redis (the fleet-wide bucket there
/// is the budget); the live replicas this one last saw while it does not share (each then keeps
/// to its part).
pub type Parts = Arc<dyn Fn() -> usize + Send + Sync>;

/// The upstream budget of one AWS account and region.
pub struct Budget {
    account: String,
    region: String,
    max_rate: f64,
    burst: f64,
    settings: UpstreamSettings,
    state: Mutex<BucketState>,
    parts: Parts,
    metrics: Arc<Metrics>,
    clock: Clock,
}

impl Budget {
    fn new(
        account: &str,
        region: &str,
        settings: &UpstreamSettings,
        weights: Vec<f64>,
        parts: Parts,
        metrics: Arc<Metrics>,
        clock: Clock,
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
                weights,
                last: clock.now_ms(),
                last_cut: None,
                parts: 1.0,
            }),
            parts,
            settings: settings.clone(),
            metrics,
            clock,
        }
    }

    fn refill(&self, s: &mut BucketState, now: u64) {
        let dt = now.saturating_sub(s.last) as f64 / 1000.0;
        s.last = s.last.max(now);
        // Recovery starts one calm second after the last cut.
        let calm_secs = match s.last_cut {
            None => dt,
            Some(c) => dt.min(now.saturating_sub(c + 1000) as f64 / 1000.0),
        };
        if calm_secs > 0.0 && s.rate < self.max_rate {
            s.rate = (s.rate + self.settings.recovery_per_sec * calm_secs).min(self.max_rate);
            self.metrics
                .budget_rate
                .with_label_values(&[&self.account, &self.region])
                .set(s.rate);
        }
        s.parts = (self.parts)().max(1) as f64;
        let rate = s.rate / s.parts;
        s.tokens = (s.tokens + rate * dt).min(self.cap(s.parts, 1.0));
        let parts = s.parts;
        let BucketState {
            shares, weights, ..
        } = s;
        for (share, w) in shares.iter_mut().zip(weights.iter()) {
            *share = (*share + rate * w * dt).min(self.cap(parts, *w));
        }
    }

    /// The most a bucket divided into `parts` holds for a fraction `w` of the budget (1: the
    /// whole bucket, a tenant's weight: its fair share), at least one call.
    fn cap(&self, parts: f64, w: f64) -> f64 {
        (self.burst * w / parts).max(1.0)
    }

    /// Takes one call from the budget.
    ///
    /// # Errors
    /// How long until a call would be allowed for this tenant and priority.
    pub fn try_acquire(&self, tenant: TenantId, priority: Priority) -> Result<(), Duration> {
        let now = self.clock.now_ms();
        let mut s = self.state.lock();
        self.refill(&mut s, now);
        self.take(&mut s, tenant, priority)
    }

    /// Takes one call for `tenant` at `priority` from a refilled bucket, or says how long until
    /// one would be allowed.
    fn take(
        &self,
        s: &mut BucketState,
        tenant: TenantId,
        priority: Priority,
    ) -> Result<(), Duration> {
        let within_share = Self::within_share(s, tenant);
        let floor = self.floor_for(within_share, priority) / s.parts;
        if s.tokens >= 1.0 + floor {
            s.tokens -= 1.0;
            if let Some(t) = s.shares.get_mut(tenant) {
                *t = (*t - 1.0).max(0.0);
            }
            return Ok(());
        }
        let rate = s.rate / s.parts;
        let missing = 1.0 + floor - s.tokens;
        let global_wait = missing / rate;
        let share_wait = s
            .shares
            .get(tenant)
            .zip(s.weights.get(tenant))
            .map_or(global_wait, |(t, w)| (1.0 - t).max(0.0) / (rate * w));
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
        s.tokens = (s.tokens + 1.0).min(self.cap(s.parts, 1.0));
        let parts = s.parts;
        let w = s.weights.get(tenant).copied().unwrap_or(0.0);
        if let Some(t) = s.shares.get_mut(tenant) {
            *t = (*t + 1.0).min(self.cap(parts, w));
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

    /// The bucket as it stands now, to plan calls on without taking them (see
    /// [`Budget::plan`]).
    pub fn tentative(&self) -> Tentative {
        let mut s = self.state.lock();
        self.refill(&mut s, self.clock.now_ms());
        Tentative(s.clone())
    }

    /// Up to `n` calls for `tenant` at `priority` from `plan`, spent one after another exactly
    /// as [`Budget::try_acquire`] would spend them from the bucket `plan` was taken of; returns
    /// how many it grants. Calls planned earlier on the same `plan`, for any tenant, count
    /// against the bucket, and a tenant's own against its share: a tenant within its share
    /// that crosses it partway meets the higher floor from there on, as it would for real.
    pub fn plan(
        &self,
        plan: &mut Tentative,
        tenant: TenantId,
        priority: Priority,
        n: usize,
    ) -> usize {
        (0..n)
            .take_while(|_| self.take(&mut plan.0, tenant, priority).is_ok())
            .count()
    }

    fn within_share(s: &BucketState, tenant: TenantId) -> bool {
        s.shares.get(tenant).is_some_and(|t| *t >= 1.0)
    }

    /// Tokens that must stay in the bucket for a request to go: prefetch leaves the miss
    /// reserve alone; a tenant over its fair share may only use an uncontended budget.
    fn floor_for(&self, within_share: bool, priority: Priority) -> f64 {
        if within_share {
            self.floor(priority)
        } else {
            self.floor(priority).max(0.5 * self.burst)
        }
    }

    pub fn burst(&self) -> u32 {
        self.burst as u32
    }

    /// `tenant`'s fraction of the budget under contention (its weight, normalised).
    pub fn weight(&self, tenant: TenantId) -> f64 {
        self.state
            .lock()
            .weights
            .get(tenant)
            .copied()
            .unwrap_or(0.0)
    }

    /// Divides the budget by `weights` from now on (one per tenant, a tenant added last); each
    /// tenant's share keeps what it holds, up to its new cap, and an added tenant's starts full.
    fn set_weights(&self, weights: &[f64]) {
        let mut s = self.state.lock();
        self.refill(&mut s, self.clock.now_ms());
        let parts = s.parts;
        s.weights = weights.to_vec();
        let BucketState {
            shares, weights, ..
        } = &mut *s;
        let known = shares.len();
        shares.extend(
            weights[known.min(weights.len())..]
                .iter()
                .map(|w| self.cap(parts, *w)),
        );
        for (share, w) in shares.iter_mut().zip(weights.iter()) {
            *share = share.min(self.cap(parts, *w));
        }
    }

    /// QuickSight answered ThrottlingException: cut the rate (at most once a second) and drain.
    pub fn on_throttle(&self) {
        let now = self.clock.now_ms();
        let mut s = self.state.lock();
        self.refill(&mut s, now);
        self.metrics.throttle_events.inc();
        if s.last_cut.is_some_and(|c| now.saturating_sub(c) < 1000) {
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
        self.refill(&mut s, self.clock.now_ms());
        s.tokens
    }

    /// The fraction of the budget this replica may spend on its own now (see [`Parts`]).
    pub fn share(&self) -> f64 {
        1.0 / (self.parts)().max(1) as f64
    }
}

/// Budgets per (account, region), created on first use.
pub struct Budgets {
    /// Each tenant's normalised weight, for budgets created from now on.
    weights: Mutex<Vec<f64>>,
    /// By region, then account: looked up with borrowed names (a prefetch and a miss each ask).
    map: Mutex<HashMap<String, HashMap<String, Arc<Budget>>>>,
    parts: Parts,
    metrics: Arc<Metrics>,
    clock: Clock,
}

impl Budgets {
    /// Each budget divided into `parts` (see [`Parts`]).
    pub fn new(tenants: &Tenants, parts: Parts, metrics: Arc<Metrics>, clock: Clock) -> Self {
        Budgets {
            weights: Mutex::new(Self::weights_of(tenants)),
            map: Mutex::new(HashMap::new()),
            parts,
            metrics,
            clock,
        }
    }

    /// Each tenant's `upstream_weight` over the sum of all of them (0 for a tenant a reload
    /// removed).
    fn weights_of(tenants: &Tenants) -> Vec<f64> {
        let weight = |t: &crate::tenant::Tenant| {
            if t.present() {
                t.quotas().upstream_weight
            } else {
                0.0
            }
        };
        let total: f64 = tenants.all().map(weight).sum();
        tenants
            .all()
            .map(|t| if total > 0.0 { weight(t) / total } else { 0.0 })
            .collect()
    }

    /// Divides every budget, and those created from now on, by the tenants' weights now (after
    /// a reload changed one, or added or removed a tenant).
    pub fn set_weights(&self, tenants: &Tenants) {
        let weights = Self::weights_of(tenants);
        *self.weights.lock() = weights.clone();
        for b in self.all() {
            b.set_weights(&weights);
        }
    }

    /// The budget of `account` in the upstream's region, created on first use with the
    /// upstream's rate, burst and AIMD settings.
    pub fn get(&self, account: &str, upstream: &UpstreamSettings) -> Arc<Budget> {
        let mut map = self.map.lock();
        if let Some(b) = map.get(&upstream.region).and_then(|r| r.get(account)) {
            return b.clone();
        }
        let b = Arc::new(Budget::new(
            account,
            &upstream.region,
            upstream,
            self.weights.lock().clone(),
            self.parts.clone(),
            self.metrics.clone(),
            self.clock.clone(),
        ));
        map.entry(upstream.region.clone())
            .or_default()
            .insert(account.to_string(), b.clone());
        b
    }

    /// Every budget, for the admin state view.
    pub fn all(&self) -> Vec<Arc<Budget>> {
        self.map
            .lock()
            .values()
            .flat_map(|r| r.values().cloned())
            .collect()
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

    fn budget(weights: Vec<f64>) -> (Budget, Clock) {
        budget_in_parts(weights, Arc::new(|| 1))
    }

    fn budget_in_parts(weights: Vec<f64>, parts: Parts) -> (Budget, Clock) {
        let settings = UpstreamSettings {
            rate_per_sec: 10.0,
            burst: 10,
            ..UpstreamSettings::default()
        };
        let clock = Clock::manual();
        let b = Budget::new(
            "111122223333",
            "us-east-1",
            &settings,
            weights,
            parts,
            Arc::new(Metrics::new()),
            clock.clone(),
        );
        (b, clock)
    }

    /// A replica that stops sharing the budget through Redis keeps to its part of it (a third,
    /// of three live replicas): three such replicas together stay within the account's budget,
    /// where each used to spend all of it. Sharing again, it may spend the whole bucket, which
    /// Redis's fleet-wide bucket then bounds.
    #[test]
    fn a_replica_that_stops_sharing_spends_its_part_of_the_budget() {
        let replicas = Arc::new(std::sync::atomic::AtomicUsize::new(1));
        let parts = replicas.clone();
        let (b, clock) = budget_in_parts(
            vec![1.0],
            Arc::new(move || parts.load(std::sync::atomic::Ordering::Relaxed)),
        );
        let drain = |priority| {
            let mut granted = 0;
            while b.try_acquire(0, priority).is_ok() {
                granted += 1;
            }
            granted
        };
        replicas.store(3, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(drain(Priority::Miss), 3, "a third of the burst of 10");
        // Ten seconds at a third of 10 calls/s, the bucket never holding more than its part.
        let mut granted = 0;
        for _ in 0..100 {
            clock.advance(100);
            granted += drain(Priority::Miss);
        }
        assert!((32..=34).contains(&granted), "{granted} calls in 10 s");
        assert!((b.share() - 1.0 / 3.0).abs() < 1e-9);
        // Prefetch still leaves its part of the miss reserve.
        clock.advance(10_000);
        assert_eq!(drain(Priority::Prefetch), 2);
        assert_eq!(drain(Priority::Miss), 1);

        replicas.store(1, std::sync::atomic::Ordering::Relaxed);
        clock.advance(10_000);
        assert_eq!(drain(Priority::Miss), 10, "the whole bucket again");
        assert_eq!(b.share(), 1.0);
    }

    #[test]
    fn the_budget_allows_its_burst_then_its_rate() {
        let (b, clock) = budget(vec![1.0]);
        for _ in 0..10 {
            assert!(b.try_acquire(0, Priority::Miss).is_ok());
        }
        let wait = b.try_acquire(0, Priority::Miss).unwrap_err();
        assert!(wait <= Duration::from_millis(101), "{wait:?}");
        clock.advance(100);
        assert!(b.try_acquire(0, Priority::Miss).is_ok());
    }

    #[test]
    fn prefetch_leaves_the_miss_reserve_alone() {
        let (b, _) = budget(vec![1.0]);
        let mut prefetched = 0;
        while b.try_acquire(0, Priority::Prefetch).is_ok() {
            prefetched += 1;
        }
        assert_eq!(prefetched, 7, "30% of a burst of 10 stays for misses");
        for _ in 0..3 {
            assert!(b.try_acquire(0, Priority::Miss).is_ok());
        }
    }

    #[test]
    fn surplus_stocking_uses_only_idle_budget() {
        let (b, _) = budget(vec![1.0]);
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

    /// What `plan` grants, for each priority, is what `try_acquire` then grants for real.
    #[test]
    fn a_plan_grants_the_calls_try_acquire_grants() {
        for priority in [Priority::Miss, Priority::Prefetch, Priority::Surplus] {
            let (b, clock) = budget(vec![1.0]);
            clock.advance(1_000);
            b.try_acquire(0, Priority::Miss).unwrap();
            let planned = b.plan(&mut b.tentative(), 0, priority, 100);
            let mut granted = 0;
            while b.try_acquire(0, priority).is_ok() {
                granted += 1;
            }
            assert_eq!(planned, granted, "{priority:?}");
        }
    }

    #[test]
    fn a_plan_leaves_out_what_a_tenant_over_its_share_may_not_take() {
        let (b, _) = budget(vec![0.5, 0.5]);
        // Tenant 0 spends its half of the burst of 10; 5 calls are left.
        for _ in 0..5 {
            b.try_acquire(0, Priority::Miss).unwrap();
        }
        assert_eq!(
            b.plan(&mut b.tentative(), 0, Priority::Prefetch, 10),
            0,
            "over its share"
        );
        assert!(b.try_acquire(0, Priority::Prefetch).is_err());
        assert_eq!(
            b.plan(&mut b.tentative(), 1, Priority::Prefetch, 10),
            2,
            "5 less the reserve of 3"
        );
        assert!(b.try_acquire(1, Priority::Prefetch).is_ok());
        assert!(b.try_acquire(1, Priority::Prefetch).is_ok());
        assert!(b.try_acquire(1, Priority::Prefetch).is_err());
    }

    /// A tenant within its share when a tick's claims are planned may cross it partway: from
    /// there on it meets the floor of a tenant over its share (half the burst), so the plan
    /// grants fewer calls than the bucket's tokens above the prefetch reserve, and exactly the
    /// calls `try_acquire` grants. Calls planned for another tenant first count against the
    /// bucket, not against this tenant's share.
    #[test]
    fn a_plan_follows_a_tenant_across_its_share() {
        let (b, _) = budget(vec![0.3, 0.7]);
        // Tenant 0's share is 3 of the burst of 10: one call leaves it 2, with 9 in the bucket.
        b.try_acquire(0, Priority::Miss).unwrap();
        let mut plan = b.tentative();
        assert_eq!(b.plan(&mut plan, 1, Priority::Prefetch, 1), 1, "tenant 1's");
        // 8 left: two calls within tenant 0's share (leaving 7, then 6), then one over it, which
        // must leave 5.
        assert_eq!(b.plan(&mut plan, 0, Priority::Prefetch, 10), 3);
        b.try_acquire(1, Priority::Prefetch).unwrap();
        let mut granted = 0;
        while b.try_acquire(0, Priority::Prefetch).is_ok() {
            granted += 1;
        }
        assert_eq!(granted, 3);
    }

    #[test]
    fn throttling_halves_the_rate_and_calm_restores_it() {
        let (b, clock) = budget(vec![1.0]);
        b.on_throttle();
        assert_eq!(b.rate(), 5.0);
        b.on_throttle(); // within a second of the last cut: no second cut
        assert_eq!(b.rate(), 5.0);
        clock.advance(1000);
        b.tokens();
        clock.advance(4000);
        b.tokens();
        assert!(
            b.rate() > 6.9 && b.rate() <= 7.0,
            "recovers 0.5/s: {}",
            b.rate()
        );
        clock.advance(60000);
        b.tokens();
        assert_eq!(b.rate(), 10.0);
    }

    /// A reload that changes the tenants' weights divides a contended budget by the new ones
    /// from then on.
    #[test]
    fn changed_weights_divide_the_contended_budget_from_then_on() {
        let (b, clock) = budget(vec![0.5, 0.5]);
        // Both tenants ask every 10 ms for ten seconds, the order alternating.
        let hammer = |b: &Budget| {
            let mut got = [0u32; 2];
            for step in 0..1000 {
                for t in [step % 2, 1 - step % 2] {
                    if b.try_acquire(t, Priority::Miss).is_ok() {
                        got[t] += 1;
                    }
                }
                clock.advance(10);
            }
            got
        };
        let even = hammer(&b);
        b.set_weights(&[0.9, 0.1]);
        assert_eq!(b.weight(0), 0.9);
        let uneven = hammer(&b);
        assert!(even[0].abs_diff(even[1]) <= 5, "{even:?}");
        assert!(
            (85..=95).contains(&uneven[0]) && (5..=15).contains(&uneven[1]),
            "nine tenths and one tenth of the 100 calls the ten seconds allow: {uneven:?}"
        );
    }

    #[test]
    fn a_tenant_over_its_share_cannot_starve_another_under_contention() {
        let (b, clock) = budget(vec![0.5, 0.5]);
        // Tenant 0 hammers the budget for ten seconds; tenant 1 asks once every 200 ms.
        let mut got = [0u32; 2];
        for step in 0..1000 {
            if b.try_acquire(0, Priority::Miss).is_ok() {
                got[0] += 1;
            }
            if step % 20 == 0 && b.try_acquire(1, Priority::Miss).is_ok() {
                got[1] += 1;
            }
            clock.advance(10);
        }
        assert_eq!(got[1], 50, "every request of the light tenant got through");
        assert!(got[0] >= 40, "the heavy tenant used the rest: {}", got[0]);
        assert!(got[0] + got[1] <= 10 + 100 + 1, "the budget held: {got:?}");
    }

    #[test]
    fn each_account_and_region_has_one_budget_of_its_own() {
        let budgets = Budgets {
            weights: Mutex::new(vec![1.0]),
            map: Mutex::new(HashMap::new()),
            parts: Arc::new(|| 1),
            metrics: Arc::new(Metrics::new()),
            clock: Clock::manual(),
        };
        let region = |r: &str| UpstreamSettings {
            region: r.into(),
            ..UpstreamSettings::default()
        };
        let a = budgets.get("111122223333", &region("us-east-1"));
        assert!(Arc::ptr_eq(
            &a,
            &budgets.get("111122223333", &region("us-east-1"))
        ));
        let other_region = budgets.get("111122223333", &region("eu-west-1"));
        let other_account = budgets.get("444455556666", &region("us-east-1"));
        assert!(!Arc::ptr_eq(&a, &other_region) && !Arc::ptr_eq(&a, &other_account));
        assert_eq!(
            (other_region.account(), other_region.region()),
            ("111122223333", "eu-west-1")
        );
        // A call spent in one leaves the others' tokens alone.
        let before = other_account.tokens();
        assert!(a.try_acquire(0, Priority::Miss).is_ok());
        assert_eq!(other_account.tokens(), before);
        let mut all: Vec<_> = budgets
            .all()
            .iter()
            .map(|b| (b.account().to_string(), b.region().to_string()))
            .collect();
        all.sort();
        assert_eq!(
            all,
            [
                ("111122223333".into(), "eu-west-1".into()),
                ("111122223333".into(), "us-east-1".into()),
                ("444455556666".into(), "us-east-1".into())
            ]
        );
    }
}
