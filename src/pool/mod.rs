//! The URL pool: pre-fetched embed URLs per key, each handed out at most once while fresh.
//!
//! Owns: storing URLs, atomic take, expiry and waste accounting, bounds (keys, URLs per key, per
//! tenant, in total). Does not own: deciding what to fetch (see `refill`) or fetching it.
//!
//! # Guarantees
//! - **Exactly once.** A URL enters the pool once (by `put`) and leaves it once: by `take`, which
//!   removes it under the key's lock before returning it, or by a purge/eviction, which removes it
//!   under the same lock and counts it as waste. No path copies a URL out without removing it.
//! - **Never stale.** A URL is dated from when its upstream request was *sent*; `take` returns only
//!   URLs with at least `min_remaining` of their 300 s left, and drops older ones as waste.

pub mod key;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

pub use key::{pool_key, PoolKey};

use crate::clock::Clock;
use crate::config::PoolSettings;
use crate::metrics::{Fetch, Metrics, Tally, Waste};
use crate::model::URL_VALIDITY_SECS;
use crate::tenant::{PerTenant, TenantId};

const VALIDITY_MS: u64 = URL_VALIDITY_SECS * 1000;

/// One pooled URL. The URL is a bearer credential: never log it.
#[derive(Clone, PartialEq, Eq)]
pub struct PooledUrl {
    pub url: String,
    /// When the upstream request that produced it was sent (ms since the epoch).
    pub issued_at_ms: u64,
    /// GenerateEmbedUrlForAnonymousUser's `AnonymousUserArn`, handed out with the URL.
    pub anonymous_user_arn: Option<String>,
    /// Why it was fetched: a URL never handed out is counted as waste under this reason.
    pub fetched_for: Fetch,
}

impl PooledUrl {
    /// The form a shared store keeps: the URL, then the anonymous user's ARN after a space
    /// (neither contains one).
    pub fn encode(&self) -> String {
        match &self.anonymous_user_arn {
            Some(arn) => format!("{} {arn}", self.url),
            None => self.url.clone(),
        }
    }

    /// The inverse of [`PooledUrl::encode`].
    pub fn decode(stored: String, issued_at_ms: u64, fetched_for: Fetch) -> PooledUrl {
        match stored.split_once(' ') {
            Some((url, arn)) => PooledUrl {
                url: url.to_string(),
                issued_at_ms,
                anonymous_user_arn: Some(arn.to_string()),
                fetched_for,
            },
            None => PooledUrl {
                url: stored,
                issued_at_ms,
                anonymous_user_arn: None,
                fetched_for,
            },
        }
    }

    pub fn expires_at_ms(&self) -> u64 {
        self.issued_at_ms + VALIDITY_MS
    }
    fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.expires_at_ms().saturating_sub(now_ms)
    }
}

/// The freshness rule both stores apply (this one and the shared one in Redis): a URL issued
/// before this instant has less than `min_remaining_ms` of its validity left at `now_ms`.
pub fn issued_cutoff(now_ms: u64, min_remaining_ms: u64) -> u64 {
    (now_ms + min_remaining_ms).saturating_sub(VALIDITY_MS)
}

impl std::fmt::Debug for PooledUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledUrl")
            .field("url", &"***")
            .field("issued_at_ms", &self.issued_at_ms)
            .field("fetched_for", &self.fetched_for)
            .finish()
    }
}

/// Why `put` did not keep a URL (the URL is then waste, counted by the pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Already below `min_remaining`.
    Stale,
    /// A bound (per key, per tenant, total) is reached.
    Full,
}

struct Slot {
    tenant: TenantId,
    inner: Mutex<SlotInner>,
}

#[derive(Default)]
struct SlotInner {
    /// Sorted by `issued_at_ms`, oldest (least remaining validity) first.
    urls: VecDeque<PooledUrl>,
    /// Set when moka evicts the slot: later puts must not land in a detached slot.
    evicted: bool,
}

struct Counts {
    total: AtomicUsize,
    per_tenant: PerTenant<AtomicUsize>,
}

impl Counts {
    fn sub(&self, tenant: TenantId, n: usize) {
        self.total.fetch_sub(n, Ordering::Relaxed);
        if let Some(c) = self.per_tenant.get(tenant) {
            c.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// The local (in-process) pool.
pub struct Pool {
    slots: moka::sync::Cache<PoolKey, Arc<Slot>>,
    clock: Clock,
    min_remaining_ms: u64,
    max_urls: usize,
    max_per_key: usize,
    /// Each tenant's `max_pooled_urls` (a reload may change it: [`Pool::set_cap`]).
    tenant_caps: PerTenant<AtomicUsize>,
    counts: Arc<Counts>,
    metrics: Arc<Metrics>,
}

impl Pool {
    /// `tenant_caps[i]` bounds the URLs pooled for tenant `i`.
    pub fn new(
        settings: &PoolSettings,
        tenant_caps: Vec<usize>,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Self {
        let counts = Arc::new(Counts {
            total: AtomicUsize::new(0),
            per_tenant: PerTenant::new(tenant_caps.iter().map(|_| AtomicUsize::new(0))),
        });
        let listener_counts = counts.clone();
        let listener_metrics = metrics.clone();
        let slots = moka::sync::Cache::builder()
            .max_capacity(settings.max_keys)
            // URLs die within 300 s, so a key idle for ten minutes holds nothing worth keeping.
            .time_to_idle(Duration::from_secs(600))
            .eviction_listener(move |_key, slot: Arc<Slot>, cause| {
                if cause == moka::notification::RemovalCause::Replaced {
                    return;
                }
                let mut inner = slot.inner.lock();
                inner.evicted = true;
                let evicted: Tally = inner.urls.drain(..).map(|u| u.fetched_for).collect();
                drop(inner);
                let n = evicted.total() as usize;
                if n > 0 {
                    listener_counts.sub(slot.tenant, n);
                    listener_metrics.wasted_tally(Waste::Evicted, &evicted);
                }
            })
            .build();
        Pool {
            slots,
            clock,
            min_remaining_ms: settings.min_remaining_secs * 1000,
            max_urls: settings.max_urls,
            max_per_key: settings.max_urls_per_key,
            tenant_caps: PerTenant::new(tenant_caps.into_iter().map(AtomicUsize::new)),
            counts,
            metrics,
        }
    }

    /// Bounds the URLs pooled for `tenant` at `cap` from now on. URLs already pooled beyond a
    /// lowered cap stay and are handed out; no URL is added for the tenant until it is below.
    /// A tenant a reload added has no URL pooled and no cap until this sets one.
    pub fn set_cap(&self, tenant: TenantId, cap: usize) {
        self.tenant_caps
            .grow_to(tenant, |_| AtomicUsize::new(cap))
            .store(cap, Ordering::Relaxed);
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Removes and returns the URL for `key` with the least remaining validity that still has at
    /// least `min_remaining` left. Stale URLs met on the way are dropped and counted as waste.
    ///
    /// # Concurrency
    /// Remove-and-return happens under the key's lock: two concurrent takes never see the same URL.
    pub fn take(&self, key: &PoolKey) -> Option<PooledUrl> {
        let slot = self.slots.get(key)?;
        let now = self.clock.now_ms();
        let mut inner = slot.inner.lock();
        let stale = self.drop_stale(&mut inner, now);
        let taken = inner.urls.pop_front();
        drop(inner);
        let n = stale.total() as usize + usize::from(taken.is_some());
        if n > 0 {
            self.counts.sub(slot.tenant, n);
        }
        self.metrics.wasted_tally(Waste::Expired, &stale);
        if let Some(u) = &taken {
            self.metrics
                .remaining_validity
                .observe(u.remaining_ms(now) as f64 / 1000.0);
        }
        taken
    }

    /// Drops URLs below `min_remaining` from the front (oldest first) of a locked slot; returns
    /// them counted by reason. The caller accounts for them.
    fn drop_stale(&self, inner: &mut SlotInner, now: u64) -> Tally {
        let mut stale = Tally::default();
        let cutoff = issued_cutoff(now, self.min_remaining_ms);
        while inner.urls.front().is_some_and(|u| u.issued_at_ms < cutoff) {
            if let Some(u) = inner.urls.pop_front() {
                stale.add(u.fetched_for, 1);
            }
        }
        stale
    }

    /// Adds a freshly fetched URL for `key`.
    ///
    /// # Errors
    /// The URL was not kept (stale already, or a bound is reached); it is counted as waste.
    pub fn put(&self, key: &PoolKey, tenant: TenantId, url: PooledUrl) -> Result<(), Refused> {
        let fetched_for = url.fetched_for;
        if url.issued_at_ms < issued_cutoff(self.clock.now_ms(), self.min_remaining_ms) {
            self.metrics.wasted(Waste::Expired, fetched_for, 1);
            return Err(Refused::Stale);
        }
        let tenant_count = self.counts.per_tenant.at(tenant);
        let over_tenant = self
            .tenant_caps
            .get(tenant)
            .is_some_and(|cap| tenant_count.load(Ordering::Relaxed) >= cap.load(Ordering::Relaxed));
        if over_tenant || self.counts.total.load(Ordering::Relaxed) >= self.max_urls {
            self.metrics.wasted(Waste::Overflow, fetched_for, 1);
            return Err(Refused::Full);
        }
        for _ in 0..2 {
            let slot = self.slots.get_with(key.clone(), || {
                Arc::new(Slot {
                    tenant,
                    inner: Mutex::new(SlotInner::default()),
                })
            });
            let mut inner = slot.inner.lock();
            if inner.evicted {
                // Evicted between lookup and lock: try once more with a fresh slot.
                drop(inner);
                self.slots.invalidate(key);
                continue;
            }
            if inner.urls.len() >= self.max_per_key {
                drop(inner);
                self.metrics.wasted(Waste::Overflow, fetched_for, 1);
                return Err(Refused::Full);
            }
            let pos = inner
                .urls
                .partition_point(|u| u.issued_at_ms <= url.issued_at_ms);
            inner.urls.insert(pos, url);
            drop(inner);
            self.counts.total.fetch_add(1, Ordering::Relaxed);
            tenant_count.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.metrics.wasted(Waste::Overflow, fetched_for, 1);
        Err(Refused::Full)
    }

    /// URLs currently held for `key` (fresh or not yet purged).
    pub fn len(&self, key: &PoolKey) -> usize {
        self.slots.get(key).map_or(0, |s| s.inner.lock().urls.len())
    }

    /// URLs held in total.
    pub fn total(&self) -> usize {
        self.counts.total.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// Drops every URL below `min_remaining`, counting it as waste, and refreshes the gauges.
    pub fn purge(&self) {
        let now = self.clock.now_ms();
        let mut stale_total = Tally::default();
        for (_, slot) in self.slots.iter() {
            let stale = self.drop_stale(&mut slot.inner.lock(), now);
            let n = stale.total();
            if n > 0 {
                self.counts.sub(slot.tenant, n as usize);
                stale_total += &stale;
            }
        }
        self.metrics.wasted_tally(Waste::Expired, &stale_total);
        self.slots.run_pending_tasks();
        self.metrics.pool_urls.set(self.total() as i64);
        self.metrics.pool_keys.set(self.slots.entry_count() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_store_keeps_the_anonymous_user_arn_with_its_url() {
        for arn in [
            None,
            Some("arn:aws:quicksight:us-east-1:111122223333:user/default/x1"),
        ] {
            let u = PooledUrl {
                url: "https://qs.example/embed/a/dashboards/d?code=c".into(),
                issued_at_ms: 42,
                anonymous_user_arn: arn.map(String::from),
                fetched_for: Fetch::Hint,
            };
            assert!(
                PooledUrl::decode(u.encode(), 42, Fetch::Hint) == u,
                "{arn:?}"
            );
        }
    }

    fn pool(clock: Clock) -> (Pool, Arc<Metrics>) {
        let m = Arc::new(Metrics::new());
        let settings = PoolSettings {
            max_urls_per_key: 4,
            ..PoolSettings::default()
        };
        (Pool::new(&settings, vec![3, 100], clock, m.clone()), m)
    }

    fn key(s: &str) -> PoolKey {
        PoolKey(Arc::from(s))
    }

    fn url(n: u64, at: u64) -> PooledUrl {
        PooledUrl {
            url: format!("https://sim/embed/{n}"),
            issued_at_ms: at,
            anonymous_user_arn: None,
            fetched_for: Fetch::Prefetch,
        }
    }

    fn wasted(m: &Metrics, why: Waste, fetched_for: Fetch) -> u64 {
        m.wasted
            .with_label_values(&[why.as_str(), fetched_for.as_str()])
            .get()
    }

    #[test]
    fn take_returns_the_url_with_least_remaining_validity_first() {
        let clock = Clock::manual();
        let now = clock.now_ms();
        let (p, _) = pool(clock);
        p.put(&key("k"), 1, url(2, now)).unwrap();
        p.put(&key("k"), 1, url(1, now - 10_000)).unwrap();
        assert_eq!(p.take(&key("k")).unwrap().url, "https://sim/embed/1");
        assert_eq!(p.take(&key("k")).unwrap().url, "https://sim/embed/2");
        assert!(p.take(&key("k")).is_none());
    }

    #[test]
    fn a_url_below_min_remaining_is_never_handed_out_and_counts_as_waste() {
        let clock = Clock::manual();
        let now = clock.now_ms();
        let (p, m) = pool(clock.clone());
        p.put(&key("k"), 1, url(1, now)).unwrap();
        // 240 s later exactly 60 s remain: still allowed.
        clock.advance(240_000);
        p.put(&key("k"), 1, url(2, clock.now_ms())).unwrap();
        clock.advance(1);
        // URL 1 now has 59.999 s left: dropped as waste; URL 2 is handed out instead.
        assert_eq!(p.take(&key("k")).unwrap().url, "https://sim/embed/2");
        assert_eq!(wasted(&m, Waste::Expired, Fetch::Prefetch), 1);
        assert_eq!(p.total(), 0);
    }

    /// Waste is counted under the reason each URL was fetched for, so an operator can see
    /// which of the planner's reasons stocks URLs nobody asks for.
    #[test]
    fn purge_drops_stale_urls_and_put_refuses_stale_ones_counted_by_why_they_were_fetched() {
        let clock = Clock::manual();
        let now = clock.now_ms();
        let (p, m) = pool(clock.clone());
        let fetched_for = |n, f| PooledUrl {
            fetched_for: f,
            ..url(n, now)
        };
        p.put(&key("a"), 1, fetched_for(1, Fetch::Follower))
            .unwrap();
        p.put(&key("a"), 1, fetched_for(2, Fetch::Follower))
            .unwrap();
        p.put(&key("b"), 1, fetched_for(3, Fetch::Hint)).unwrap();
        clock.advance(241_000);
        p.purge();
        assert_eq!(p.total(), 0);
        assert_eq!(
            p.put(&key("a"), 1, fetched_for(4, Fetch::Returning)),
            Err(Refused::Stale)
        );
        let counted: Vec<(Fetch, u64)> = Fetch::ALL
            .into_iter()
            .map(|f| (f, wasted(&m, Waste::Expired, f)))
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(
            counted,
            [
                (Fetch::Hint, 1),
                (Fetch::Follower, 2),
                (Fetch::Returning, 1)
            ]
        );
    }

    #[test]
    fn bounds_per_key_and_per_tenant_hold() {
        let clock = Clock::manual();
        let now = clock.now_ms();
        let (p, _) = pool(clock);
        for i in 0..4 {
            p.put(&key("k"), 1, url(i, now)).unwrap();
        }
        assert_eq!(p.put(&key("k"), 1, url(9, now)), Err(Refused::Full));
        for i in 0..3 {
            p.put(&key(&format!("t0-{i}")), 0, url(i, now)).unwrap();
        }
        assert_eq!(
            p.put(&key("t0-x"), 0, url(9, now)),
            Err(Refused::Full),
            "tenant 0 is capped at 3"
        );
    }

    /// A reloaded `max_pooled_urls` bounds the tenant's next puts; what it pooled beyond a
    /// lowered cap is still handed out, and puts wait until the tenant is below it.
    #[test]
    fn a_changed_tenant_cap_bounds_the_next_puts() {
        let clock = Clock::manual();
        let now = clock.now_ms();
        let (p, _) = pool(clock);
        let put = |i: u64| p.put(&key(&format!("t0-{i}")), 0, url(i, now));
        for i in 0..3 {
            put(i).unwrap();
        }
        assert_eq!(put(3), Err(Refused::Full));
        p.set_cap(0, 5);
        assert_eq!(
            [put(3), put(4), put(5)],
            [Ok(()), Ok(()), Err(Refused::Full)]
        );
        p.set_cap(0, 2);
        assert_eq!(put(6), Err(Refused::Full));
        for i in 0..3 {
            assert!(p.take(&key(&format!("t0-{i}"))).is_some(), "pooled before");
        }
        assert_eq!(put(6), Err(Refused::Full), "two left, at the cap");
        assert!(p.take(&key("t0-3")).is_some());
        assert_eq!(put(6), Ok(()));
        assert_eq!(
            p.put(&key("t1"), 1, url(7, now)),
            Ok(()),
            "tenant 1 unchanged"
        );
    }

    #[test]
    fn concurrent_takes_never_return_the_same_url_twice() {
        let clock = Clock::manual();
        let now = clock.now_ms();
        let m = Arc::new(Metrics::new());
        let settings = PoolSettings {
            max_urls_per_key: 100_000,
            ..PoolSettings::default()
        };
        let p = Arc::new(Pool::new(&settings, vec![usize::MAX], clock, m));
        for i in 0..20_000 {
            p.put(&key("hot"), 0, url(i, now)).unwrap();
        }
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let mut got = vec![];
                    while let Some(u) = p.take(&key("hot")) {
                        got.push(u.url);
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<String> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(all.len(), 20_000);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 20_000, "every URL handed out exactly once");
    }
}
