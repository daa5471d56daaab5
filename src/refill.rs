//! Demand tracking and the refill planner.
//!
//! Per pool key we keep a decaying estimate of the request rate λ. By Little's law the pool must
//! hold about λ × (refill lead time + safety) URLs to absorb arrivals while a refill is in flight;
//! a URL only lives `300 s − min_remaining`, so holding more than λ × that lifetime is waste. A key
//! is worth pre-fetching only if a request is likely (≥ `min_probability`) to arrive within a URL's
//! usable life: P = 1 − e^(−λ·life) for Poisson arrivals. Hinted and warm keys are kept at least
//! one (or their configured depth) deep regardless. Keys idle for long are forgotten (bounded).
//!
//! A prefetch in flight can be claimed by a caller that missed: its URL then goes to exactly that
//! one waiter instead of the pool (see [`Tracked::deliver`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::config::RefillSettings;
use crate::metrics::Fetch;
use crate::model::{EmbedRequest, URL_VALIDITY_SECS};
use crate::pool::PoolKey;
use crate::tenant::TenantId;
use crate::upstream::Fetched;

/// What this replica reports for one key at a sync.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// Its demand estimate, requests per second.
    pub rate: f64,
    /// Its prefetches in flight.
    pub in_flight: usize,
}

/// The fleet's view of one key after a sync.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyView {
    /// URLs in the shared pool for the key.
    pub pooled: usize,
    /// Sum of every live replica's demand estimate, requests per second.
    pub fleet_rate: f64,
    /// Replicas that reported demand for the key.
    pub replicas: usize,
    /// Prefetches in flight for the key over the fleet, as each replica last reported.
    pub in_flight: usize,
}

/// Why a key is pre-fetched (the `reason` label of fetched URLs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Prefetch,
    Hint,
    Warm,
}

impl Reason {
    /// The `reason` label its fetches count under.
    pub fn fetch(self) -> Fetch {
        match self {
            Reason::Prefetch => Fetch::Prefetch,
            Reason::Hint => Fetch::Hint,
            Reason::Warm => Fetch::Warm,
        }
    }
}

#[derive(Debug)]
struct DemandState {
    /// Σ e^(−(now − tᵢ)/τ) over arrivals, as of `last_ms`.
    decayed: f64,
    last_ms: u64,
    first_ms: u64,
    /// The arrival that started tracking the key (none for a key only hinted or pinned).
    first_arrival_ms: Option<u64>,
    hinted_until_ms: u64,
    /// This key holds one of its tenant's `max_hints` slots (released when the hint expires or
    /// the key is forgotten).
    hint_counted: bool,
    warm_depth: usize,
}

/// One tracked key: what to fetch for it, how much it is asked for, and who waits on it.
pub struct Tracked {
    pub key: PoolKey,
    pub tenant: TenantId,
    pub request: EmbedRequest,
    state: Mutex<DemandState>,
    pub in_flight: AtomicUsize,
    waiters: Mutex<VecDeque<oneshot::Sender<Fetched>>>,
    /// (consecutive prefetch failures, no prefetch before this instant in ms)
    backoff: Mutex<(u32, u64)>,
}

impl Tracked {
    fn new(key: PoolKey, tenant: TenantId, request: EmbedRequest, now_ms: u64) -> Self {
        Tracked {
            key,
            tenant,
            request,
            state: Mutex::new(DemandState {
                decayed: 0.0,
                last_ms: now_ms,
                first_ms: now_ms,
                first_arrival_ms: None,
                hinted_until_ms: 0,
                hint_counted: false,
                warm_depth: 0,
            }),
            in_flight: AtomicUsize::new(0),
            waiters: Mutex::new(VecDeque::new()),
            backoff: Mutex::new((0, 0)),
        }
    }

    fn record(&self, now_ms: u64, tau_secs: f64) {
        let mut s = self.state.lock();
        let dt = now_ms.saturating_sub(s.last_ms) as f64 / 1000.0;
        s.decayed = s.decayed * (-dt / tau_secs).exp() + 1.0;
        s.last_ms = now_ms;
        s.first_arrival_ms.get_or_insert(now_ms);
    }

    /// Estimated arrivals per second. Bias-corrected for keys younger than τ, and never computed
    /// over less than one second, so a single request does not read as a flood.
    pub fn rate(&self, now_ms: u64, tau_secs: f64) -> f64 {
        let s = self.state.lock();
        let dt = now_ms.saturating_sub(s.last_ms) as f64 / 1000.0;
        let decayed = s.decayed * (-dt / tau_secs).exp();
        let age = (now_ms.saturating_sub(s.first_ms) as f64 / 1000.0).max(1.0);
        decayed / (tau_secs * (1.0 - (-age / tau_secs).exp()))
    }

    /// The rate shown by arrivals *after* the one that started tracking the key. That first
    /// arrival is why the key is observed at all, so counting it reads a single request as a
    /// rate of 1/s for a while; stocking surplus on that would waste budget on one-off keys.
    pub fn demonstrated_rate(&self, now_ms: u64, tau_secs: f64) -> f64 {
        let rate = self.rate(now_ms, tau_secs);
        let s = self.state.lock();
        let Some(first) = s.first_arrival_ms else {
            return 0.0;
        };
        let dt = now_ms.saturating_sub(s.last_ms) as f64 / 1000.0;
        let decayed = s.decayed * (-dt / tau_secs).exp();
        let trigger = (-(now_ms.saturating_sub(first) as f64 / 1000.0) / tau_secs).exp();
        if decayed <= 0.0 {
            return 0.0;
        }
        rate * ((decayed - trigger).max(0.0) / decayed)
    }

    /// Whether prefetching this key is paused after failures.
    pub fn backing_off(&self, now_ms: u64) -> bool {
        self.backoff.lock().1 > now_ms
    }

    /// A prefetch failed for a reason other than throttling (which the budget handles): pause
    /// this key's prefetches, 1 s after the first failure, doubling up to 60 s.
    pub fn prefetch_failed(&self, now_ms: u64) {
        let mut b = self.backoff.lock();
        b.0 = b.0.saturating_add(1);
        let pause = 1000u64.saturating_mul(1 << (b.0 - 1).min(6)).min(60_000);
        b.1 = now_ms + pause;
    }

    pub fn prefetch_succeeded(&self) {
        *self.backoff.lock() = (0, 0);
    }

    /// Claims the URL of a prefetch in flight, if one is not already claimed by another waiter.
    pub fn try_join(&self) -> Option<oneshot::Receiver<Fetched>> {
        let mut waiters = self.waiters.lock();
        waiters.retain(|w| !w.is_closed());
        if waiters.len() >= self.in_flight.load(Ordering::SeqCst) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        waiters.push_back(tx);
        Some(rx)
    }

    /// After a prefetch failed: release the waiters no prefetch in flight can serve any more, so
    /// they fetch for themselves now instead of waiting out their join timeout.
    pub fn release_unserved_waiters(&self) {
        let in_flight = self.in_flight.load(Ordering::SeqCst);
        let mut waiters = self.waiters.lock();
        while waiters.len() > in_flight {
            // Dropping the sender wakes its receiver with an error.
            waiters.pop_back();
        }
    }

    /// Hands a fetched URL to exactly one live waiter; returns it when nobody waits (the caller
    /// then pools it).
    ///
    /// # Guarantees
    /// A oneshot sender delivers at most once, and a waiter that gives up reclaims anything sent
    /// to it (see [`reclaim`]), so the URL ends in exactly one place: a waiter, the pool, or the
    /// waste counter.
    #[must_use = "a URL nobody waits for must be pooled"]
    pub fn deliver(&self, mut fetched: Fetched) -> Option<Fetched> {
        loop {
            let next = self.waiters.lock().pop_front();
            let Some(tx) = next else { break };
            match tx.send(fetched) {
                Ok(()) => return None,
                Err(back) => fetched = back,
            }
        }
        Some(fetched)
    }

    /// Whether a hint or a warm pin keeps this key alive regardless of its request rate.
    pub fn pinned(&self, now_ms: u64) -> bool {
        let s = self.state.lock();
        s.hinted_until_ms > now_ms || s.warm_depth > 0
    }
}

/// A waiter giving up: close its receiver and pass on anything delivered meanwhile (to another
/// waiter, or back to the caller to pool).
#[must_use = "a URL nobody waits for must be pooled"]
pub fn reclaim(mut rx: oneshot::Receiver<Fetched>, tracked: &Tracked) -> Option<Fetched> {
    rx.close();
    rx.try_recv().ok().and_then(|f| tracked.deliver(f))
}

/// Per-tenant counters shared with the cache's eviction listener.
struct Counts {
    /// Keys tracked per tenant (warm keys not included).
    tracked: Vec<AtomicUsize>,
    /// Hint slots held per tenant.
    hints: Vec<AtomicUsize>,
}

impl Counts {
    /// A key leaves: give back its tracked slot and, if it holds one, its hint slot.
    fn forget(&self, t: &Tracked) {
        self.tracked[t.tenant].fetch_sub(1, Ordering::SeqCst);
        let mut s = t.state.lock();
        if std::mem::take(&mut s.hint_counted) {
            self.hints[t.tenant].fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Every tracked key, bounded per tenant and in total, forgetting idle ones; warm keys are
/// pinned for the life of the process.
///
/// # Bounds
/// A tenant tracks at most its `max_tracked_keys` keys: a request for a new key beyond that is
/// served but not tracked (no prefetch, no demand published to the fleet), so one tenant minting
/// keys cannot grow this table, the per-tick planning or the fleet's Redis traffic at the others'
/// expense. A hint beyond the tenant's `max_hints` is dropped and creates nothing.
pub struct Demand {
    keys: moka::sync::Cache<PoolKey, Arc<Tracked>>,
    warm: parking_lot::RwLock<std::collections::HashMap<PoolKey, Arc<Tracked>>>,
    settings: RefillSettings,
    tau_secs: f64,
    counts: Arc<Counts>,
    hint_caps: Vec<usize>,
    tracked_caps: Vec<usize>,
}

impl Demand {
    /// `caps` holds each tenant's (max_hints, max_tracked_keys).
    pub fn new(settings: &RefillSettings, caps: Vec<(usize, usize)>) -> Self {
        let counts = Arc::new(Counts {
            tracked: caps.iter().map(|_| AtomicUsize::new(0)).collect(),
            hints: caps.iter().map(|_| AtomicUsize::new(0)).collect(),
        });
        let listener = counts.clone();
        let keys = moka::sync::Cache::builder()
            .max_capacity(settings.max_tracked_keys)
            .time_to_idle(Duration::from_secs(settings.idle_forget_secs))
            .eviction_listener(move |_key, t: Arc<Tracked>, _cause| listener.forget(&t))
            .build();
        Demand {
            keys,
            warm: Default::default(),
            tau_secs: settings.demand_half_life_secs / std::f64::consts::LN_2,
            settings: settings.clone(),
            counts,
            hint_caps: caps.iter().map(|c| c.0).collect(),
            tracked_caps: caps.iter().map(|c| c.1).collect(),
        }
    }

    fn find(&self, key: &PoolKey) -> Option<Arc<Tracked>> {
        if let Some(t) = self.warm.read().get(key) {
            return Some(t.clone());
        }
        self.keys.get(key)
    }

    /// The tracked entry for `key`, created if the tenant is within its bound.
    fn tracked(
        &self,
        key: &PoolKey,
        tenant: TenantId,
        req: &EmbedRequest,
        now_ms: u64,
    ) -> Option<Arc<Tracked>> {
        if let Some(t) = self.find(key) {
            return Some(t);
        }
        let n = &self.counts.tracked[tenant];
        if n.fetch_add(1, Ordering::SeqCst) >= self.tracked_caps[tenant] {
            n.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let mut created = false;
        let t = self.keys.get_with(key.clone(), || {
            created = true;
            Arc::new(Tracked::new(key.clone(), tenant, req.clone(), now_ms))
        });
        if !created {
            // Another request created it first; it holds the slot.
            n.fetch_sub(1, Ordering::SeqCst);
        }
        Some(t)
    }

    /// Counts one request for `key`; `None` when the key is new and its tenant already tracks
    /// `max_tracked_keys` keys (the request is served, the key is not tracked).
    pub fn record(
        &self,
        key: &PoolKey,
        tenant: TenantId,
        req: &EmbedRequest,
        now_ms: u64,
    ) -> Option<Arc<Tracked>> {
        let t = self.tracked(key, tenant, req, now_ms)?;
        t.record(now_ms, self.tau_secs);
        Some(t)
    }

    /// Announces likely demand for `key` until `hint_ttl` from now. False when the tenant
    /// already has `max_hints` keys hinted or tracks `max_tracked_keys` keys: the hint is
    /// dropped and creates nothing.
    pub fn hint(&self, key: &PoolKey, tenant: TenantId, req: &EmbedRequest, now_ms: u64) -> bool {
        let slots = &self.counts.hints[tenant];
        let t = match self.find(key) {
            Some(t) => t,
            // Refuse before creating anything: a refused hint must not cost a tracked key.
            None if slots.load(Ordering::SeqCst) >= self.hint_caps[tenant] => return false,
            None => match self.tracked(key, tenant, req, now_ms) {
                Some(t) => t,
                None => return false,
            },
        };
        let mut s = t.state.lock();
        if !s.hint_counted {
            if slots.fetch_add(1, Ordering::SeqCst) >= self.hint_caps[tenant] {
                slots.fetch_sub(1, Ordering::SeqCst);
                return false;
            }
            s.hint_counted = true;
        }
        s.hinted_until_ms = now_ms + self.settings.hint_ttl_secs * 1000;
        true
    }

    /// Keeps `key` at least `depth` deep for as long as the process runs (never forgotten or
    /// evicted, and not counted against the tenant's `max_tracked_keys`).
    pub fn pin(
        &self,
        key: &PoolKey,
        tenant: TenantId,
        req: &EmbedRequest,
        depth: usize,
        now_ms: u64,
    ) {
        let t = Arc::new(Tracked::new(key.clone(), tenant, req.clone(), now_ms));
        t.state.lock().warm_depth = depth;
        self.warm.write().insert(key.clone(), t);
        self.keys.invalidate(key);
    }

    /// This replica's estimate of `t`'s request rate, per second.
    pub fn rate(&self, t: &Tracked, now_ms: u64) -> f64 {
        t.rate(now_ms, self.tau_secs)
    }

    /// This replica's estimate of `t`'s demonstrated rate (see [`Tracked::demonstrated_rate`]).
    pub fn demonstrated_rate(&self, t: &Tracked, now_ms: u64) -> f64 {
        t.demonstrated_rate(now_ms, self.tau_secs)
    }

    /// How many URLs `t` should hold now, and why, for requests arriving at `lambda` per second
    /// (this replica's estimate, or the fleet's); `lead_secs` is the measured refill lead time.
    pub fn target(
        &self,
        t: &Tracked,
        lambda: f64,
        now_ms: u64,
        lead_secs: f64,
        min_remaining_secs: u64,
        max_per_key: usize,
    ) -> (usize, Reason) {
        let life = (URL_VALIDITY_SECS.saturating_sub(min_remaining_secs)) as f64 - lead_secs;
        let likely = 1.0 - (-lambda * life.max(0.0)).exp() >= self.settings.min_probability;
        let mut depth = 0usize;
        let mut reason = Reason::Prefetch;
        if likely {
            let needed = (lambda * (lead_secs + self.settings.safety_secs)).ceil();
            let useful = (lambda * life).floor().max(1.0);
            depth = needed.min(useful).max(1.0) as usize;
        }
        let s = t.state.lock();
        if s.hinted_until_ms > now_ms && depth < 1 {
            depth = 1;
            reason = Reason::Hint;
        }
        if s.warm_depth > depth {
            depth = s.warm_depth;
            reason = Reason::Warm;
        }
        (depth.min(max_per_key), reason)
    }

    /// How many URLs `t` may hold when the upstream budget has room to spare: `surplus_secs` of
    /// demand at `lambda`, for keys likely to be asked within a URL's usable life, never more
    /// than that life absorbs. At least the needed depth `needed`.
    pub fn surplus(
        &self,
        lambda: f64,
        needed: usize,
        lead_secs: f64,
        min_remaining_secs: u64,
        max_per_key: usize,
    ) -> usize {
        let life = (URL_VALIDITY_SECS.saturating_sub(min_remaining_secs)) as f64 - lead_secs;
        if life <= 0.0 || 1.0 - (-lambda * life).exp() < self.settings.min_probability {
            return needed;
        }
        let stock = (lambda * self.settings.surplus_secs)
            .min(lambda * life)
            .floor() as usize;
        stock.max(needed).min(max_per_key)
    }

    /// Releases expired hints (so the per-tenant hint bound frees up) and returns every key,
    /// warm keys first.
    pub fn sweep(&self, now_ms: u64) -> Vec<Arc<Tracked>> {
        self.keys.run_pending_tasks();
        let mut all: Vec<Arc<Tracked>> = self.warm.read().values().cloned().collect();
        all.extend(self.keys.iter().map(|(_, v)| v));
        for t in &all {
            let mut s = t.state.lock();
            if s.hint_counted && s.hinted_until_ms <= now_ms {
                s.hint_counted = false;
                self.counts.hints[t.tenant].fetch_sub(1, Ordering::SeqCst);
            }
        }
        all
    }

    pub fn len(&self) -> u64 {
        self.keys.entry_count() + self.warm.read().len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys `tenant` tracks now (warm keys not included).
    pub fn tracked_by(&self, tenant: TenantId) -> usize {
        self.counts.tracked[tenant].load(Ordering::SeqCst)
    }

    /// Hint slots `tenant` holds now.
    pub fn hints_held_by(&self, tenant: TenantId) -> usize {
        self.counts.hints[tenant].load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DashboardEmbedRequest, IdentityType};

    fn req() -> EmbedRequest {
        EmbedRequest::Dashboard(DashboardEmbedRequest::new(
            "111122223333",
            "d",
            IdentityType::Anonymous,
        ))
    }

    fn key() -> PoolKey {
        crate::pool::pool_key("t", "us-east-1", &req())
    }

    /// Records `n` requests `gap_ms` apart; returns the tracked key and the time after the last.
    fn steady(d: &Demand, n: usize, gap_ms: u64) -> (Arc<Tracked>, u64) {
        let mut now = 1_000_000;
        let mut t = None;
        for _ in 0..n {
            t = d.record(&key(), 0, &req(), now);
            now += gap_ms;
        }
        (t.expect("n > 0"), now)
    }

    #[test]
    fn the_rate_estimate_converges_on_a_steady_stream() {
        let d = Demand::new(&RefillSettings::default(), vec![(10, 100)]);
        let (t, now) = steady(&d, 200, 20); // 50 requests per second
        let rate = t.rate(now, d.tau_secs);
        assert!((40.0..60.0).contains(&rate), "{rate}");
    }

    #[test]
    fn depth_follows_littles_law_within_the_usable_life() {
        let d = Demand::new(&RefillSettings::default(), vec![(10, 100)]);
        let (t, now) = steady(&d, 400, 10); // 100 requests per second
        let (depth, reason) = d.target(&t, d.rate(&t, now), now, 0.1, 60, 1000);
        // λ ≈ 100/s × (0.1 s lead + 1 s safety) ≈ 110
        assert!((90..=135).contains(&depth), "{depth}");
        assert_eq!(reason, Reason::Prefetch);
        assert_eq!(
            d.target(&t, d.rate(&t, now), now, 0.1, 60, 16).0,
            16,
            "capped per key"
        );
    }

    #[test]
    fn a_single_request_shows_no_demonstrated_rate_but_a_stream_does() {
        let d = Demand::new(&RefillSettings::default(), vec![(10, 100)]);
        let t = d.record(&key(), 0, &req(), 1_000_000).unwrap();
        assert!(
            d.rate(&t, 1_000_500) > 0.5,
            "the planner's estimate reacts at once"
        );
        assert_eq!(
            d.demonstrated_rate(&t, 1_000_500),
            0.0,
            "one request is no stream"
        );
        let (t, now) = steady(&d, 200, 20); // 50 requests per second
        let shown = d.demonstrated_rate(&t, now);
        assert!((40.0..60.0).contains(&shown), "{shown}");
    }

    #[test]
    fn surplus_stocks_seconds_of_demand_within_the_usable_life() {
        let d = Demand::new(&RefillSettings::default(), vec![(10, 100)]);
        // 10 s of demand at 20/s, above the needed depth of 22.
        assert_eq!(d.surplus(20.0, 22, 0.1, 60, 1000), 200);
        assert_eq!(d.surplus(20.0, 22, 0.1, 60, 64), 64, "capped per key");
        // Never more than the usable life absorbs: with 5 s of life left, 5 s of demand.
        assert_eq!(d.surplus(20.0, 22, 0.0, 295, 1000), 100);
        // A key unlikely to be asked within the life gets no stock beyond what it needs.
        assert_eq!(d.surplus(0.001, 1, 0.1, 60, 1000), 1);
    }

    #[test]
    fn a_waiter_on_a_failed_prefetch_is_released_at_once() {
        let d = Demand::new(&RefillSettings::default(), vec![(1, 100)]);
        let t = d.record(&key(), 0, &req(), 0).unwrap();
        t.in_flight.fetch_add(1, Ordering::SeqCst);
        let mut rx = t.try_join().expect("one prefetch in flight to claim");
        assert!(t.try_join().is_none(), "only one waiter per prefetch");
        t.in_flight.fetch_sub(1, Ordering::SeqCst); // the prefetch failed
        t.release_unserved_waiters();
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }

    #[test]
    fn a_failing_key_backs_off_exponentially_up_to_a_minute() {
        let d = Demand::new(&RefillSettings::default(), vec![(1, 100)]);
        let t = d.record(&key(), 0, &req(), 0).unwrap();
        let mut pauses = vec![];
        for _ in 0..9 {
            t.prefetch_failed(0);
            pauses.push(t.backoff.lock().1);
        }
        assert_eq!(
            pauses,
            [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
        );
        assert!(t.backing_off(59_999) && !t.backing_off(60_000));
        t.prefetch_succeeded();
        assert!(!t.backing_off(0));
    }

    #[test]
    fn a_rarely_requested_key_is_not_prefetched_unless_hinted() {
        let settings = RefillSettings {
            min_probability: 0.9,
            ..RefillSettings::default()
        };
        let d = Demand::new(&settings, vec![(1, 100)]);
        let now = 1_000_000;
        let t = d.record(&key(), 0, &req(), now).unwrap();
        // One request, then an hour of silence: λ ≈ 0.
        let later = now + 3_600_000;
        assert_eq!(d.target(&t, d.rate(&t, later), later, 0.1, 60, 10).0, 0);
        assert!(d.hint(&key(), 0, &req(), later));
        assert_eq!(
            d.target(&t, d.rate(&t, later), later, 0.1, 60, 10),
            (1, Reason::Hint)
        );
        // The tenant may hold one hint at a time; a second key is refused until the first expires.
        let mut other = req();
        other.set_aws_account_id("444455556666".into());
        let k2 = crate::pool::pool_key("t", "us-east-1", &other);
        assert!(!d.hint(&k2, 0, &other, later));
        let expired = later + settings.hint_ttl_secs * 1000 + 1;
        d.sweep(expired);
        assert!(d.hint(&k2, 0, &other, expired));
    }

    fn key_n(i: usize) -> PoolKey {
        crate::pool::pool_key("t", "us-east-1", &request_n(i))
    }

    fn request_n(i: usize) -> EmbedRequest {
        EmbedRequest::Dashboard(DashboardEmbedRequest::new(
            "111122223333",
            format!("d-{i}"),
            IdentityType::Anonymous,
        ))
    }

    #[test]
    fn a_tenant_tracks_at_most_its_bound_of_keys_and_the_others_are_unaffected() {
        let d = Demand::new(&RefillSettings::default(), vec![(10, 5), (10, 5)]);
        let tracked = (0..50)
            .filter(|i| d.record(&key_n(*i), 0, &request_n(*i), 0).is_some())
            .count();
        assert_eq!(tracked, 5);
        assert_eq!(d.tracked_by(0), 5);
        assert!(d.record(&key_n(1000), 1, &request_n(1000), 0).is_some());
        // A key already tracked keeps being counted.
        assert!(d.record(&key_n(0), 0, &request_n(0), 1).is_some());
    }

    #[test]
    fn refused_hints_create_nothing_and_slots_come_back_on_expiry_and_eviction() {
        let settings = RefillSettings {
            hint_ttl_secs: 10,
            ..RefillSettings::default()
        };
        let d = Demand::new(&settings, vec![(3, 100)]);
        for i in 0..3 {
            assert!(d.hint(&key_n(i), 0, &request_n(i), 0));
        }
        assert!(!d.hint(&key_n(3), 0, &request_n(3), 0), "over max_hints");
        d.keys.run_pending_tasks();
        assert_eq!(
            (d.len(), d.hints_held_by(0)),
            (3, 3),
            "the refused hint tracked nothing"
        );
        // Renewing a hinted key takes no new slot.
        assert!(d.hint(&key_n(0), 0, &request_n(0), 5_000));
        assert_eq!(d.hints_held_by(0), 3);
        // Keys 1 and 2 expire at 10 s, key 0 at 15 s.
        d.sweep(12_000);
        assert_eq!(d.hints_held_by(0), 1);
        assert!(d.hint(&key_n(3), 0, &request_n(3), 12_000));
        // A forgotten key gives its slot back too.
        d.keys.invalidate(&key_n(3));
        d.keys.run_pending_tasks();
        assert_eq!(d.hints_held_by(0), 1);
    }

    #[test]
    fn warm_keys_stay_pinned_and_do_not_count_against_the_tenant() {
        let settings = RefillSettings {
            max_tracked_keys: 2,
            ..RefillSettings::default()
        };
        let d = Demand::new(&settings, vec![(10, 1)]);
        d.pin(&key_n(0), 0, &request_n(0), 4, 0);
        for i in 1..100 {
            let _ = d.record(&key_n(i), 0, &request_n(i), 0);
        }
        let all = d.sweep(10_000_000);
        let warm = all
            .iter()
            .find(|t| t.key == key_n(0))
            .expect("still tracked");
        assert!(warm.pinned(10_000_000));
        assert_eq!(d.tracked_by(0), 1);
    }
}
