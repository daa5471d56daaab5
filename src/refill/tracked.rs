//! One tracked key: what to fetch for it, how often it is asked for, its backoff, and the callers
//! waiting on a prefetch in flight.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::model::EmbedRequest;
use crate::pool::PoolKey;
use crate::tenant::TenantId;
use crate::upstream::Fetched;

#[derive(Debug)]
pub(super) struct DemandState {
    /// Σ e^(−(now − tᵢ)/τ) over arrivals, as of `last_ms`.
    pub(super) decayed: f64,
    pub(super) last_ms: u64,
    pub(super) first_ms: u64,
    /// The arrival that started the key's current run of requests: its first, or its first after
    /// more than a usable life of silence (none for a key only hinted or pinned).
    pub(super) first_arrival_ms: Option<u64>,
    pub(super) hinted_until_ms: u64,
    /// This key holds one of its tenant's `max_hints` slots (released when the hint expires or
    /// the key is forgotten).
    pub(super) hint_counted: bool,
    pub(super) warm_depth: usize,
    /// A session prediction (see `sessions`): (until, probability, why). Cleared by the next
    /// request for the key, which is what it predicted.
    pub(super) predicted: Option<(u64, f64, super::Reason)>,
    /// The fleet's shared pool has held a URL for the key since its current hint or
    /// prediction began (see [`Tracked::settle_pin`]).
    pub(super) stocked_while_pinned: bool,
    /// The planner's last decision, for `/state`.
    pub(super) planned: Option<Planned>,
    /// Requests counted since `first_arrival_ms` (saturating).
    pub(super) arrivals: u32,
    /// The key's longer memory, across runs: Σ e^(−(now − tᵢ)/τₕ) over its requests after the
    /// first it was tracked with (τₕ: [`HISTORY_HALF_LIFE_SECS`]), as of `last_ms`, and that
    /// first request's instant.
    pub(super) history: f64,
    pub(super) history_since_ms: Option<u64>,
}

impl DemandState {
    /// A hint or a session prediction announces a request for the key that has not come yet.
    fn announced(&self, now_ms: u64) -> bool {
        self.hinted_until_ms > now_ms || self.predicted.is_some_and(|(until, _, _)| until > now_ms)
    }

    /// The announced request came (here, or to another replica of the fleet): the hint and the
    /// prediction end. True when the key held a hint slot, now to be released.
    fn end_announcement(&mut self, now_ms: u64) -> bool {
        self.predicted = None;
        self.hinted_until_ms = self.hinted_until_ms.min(now_ms);
        self.stocked_while_pinned = false;
        std::mem::take(&mut self.hint_counted)
    }
}

/// Half-life of a key's longer memory of its requests (see [`Shown::history`]): long enough to
/// tell a key asked every two minutes from one asked every ten, whose short-term estimate
/// swings between both after each request; a key idle for `refill.idle_forget_secs` is
/// forgotten with it.
pub const HISTORY_HALF_LIFE_SECS: f64 = 600.0;
const HISTORY_TAU_SECS: f64 = HISTORY_HALF_LIFE_SECS / std::f64::consts::LN_2;

/// Requests counted over an exposure: the evidence for a key's rate.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Evidence {
    /// Requests counted (decayed with age).
    pub requests: f64,
    /// The time they were counted over (decayed alike), seconds.
    pub exposure_secs: f64,
}

impl Evidence {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        if self.exposure_secs > 0.0 {
            self.requests / self.exposure_secs
        } else {
            0.0
        }
    }

    /// The probability of a request within `life_secs` for a Poisson key whose rate is known
    /// only by this evidence: the posterior predictive under the prior 1/λ, 1 − (E/(E + life))^k
    /// for k requests over E seconds. With much evidence it tends to 1 − e^(−rate·life); with
    /// little it is lower, as it should be: a second request 60 s after the first reads as a
    /// rate (one per 32 s, the exposure decayed with the 30 s half-life) that makes a third
    /// within four minutes all but certain, while a key asked that way may as well be one asked
    /// every five minutes whose second request came early; this says 0.88.
    pub fn probability(&self, life_secs: f64) -> f64 {
        if self.requests <= 0.0 || self.exposure_secs <= 0.0 || life_secs <= 0.0 {
            return 0.0;
        }
        1.0 - (self.exposure_secs / (self.exposure_secs + life_secs)).powf(self.requests)
    }

    fn scaled(self, by: f64) -> Evidence {
        Evidence {
            requests: self.requests * by,
            ..self
        }
    }
}

/// What a key's own requests show (see [`Tracked::shown`]).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Shown {
    /// Over the demand half-life (`refill.demand_half_life_secs`), within the key's current run:
    /// quick to see a key speed up; its rate is the demonstrated rate.
    pub recent: Evidence,
    /// Over [`HISTORY_HALF_LIFE_SECS`], across runs: enough requests to judge a slow key.
    pub history: Evidence,
}

impl Shown {
    /// The demonstrated rate, requests per second.
    pub fn rate(&self) -> f64 {
        self.recent.rate()
    }

    /// The probability of a request within `life_secs` by the stronger of the two memories.
    pub fn probability(&self, life_secs: f64) -> f64 {
        self.recent
            .probability(life_secs)
            .max(self.history.probability(life_secs))
    }

    /// The same evidence with `by` times the requests: in a fleet, what the fleet's requests
    /// show when this replica saw `1 / by` of them.
    pub fn scaled(self, by: f64) -> Shown {
        Shown {
            recent: self.recent.scaled(by),
            history: self.history.scaled(by),
        }
    }
}

/// What one request told about its key (see [`Tracked::record`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Recorded {
    /// The request released a hint slot its tenant held.
    pub released_hint: bool,
    /// The request's place in the key's current run: 1 for its first request (also the first
    /// after more than a usable life of silence), 2 for the next, which came within a usable
    /// life of it, and so on (saturating).
    pub arrivals: u32,
}

/// The planner's last decision for a key, as `/state` shows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Planned {
    /// Probability that the key is asked for within a URL's usable life.
    pub probability: f64,
    /// The depth it needs now (Little's law, hints, warm keys).
    pub target: usize,
    /// The stock it may reach with idle budget.
    pub stock: usize,
    pub reason: super::Reason,
    pub at_ms: u64,
}

/// A key's prefetches in flight on this replica, and how many of those that ended did so by
/// sending their URL to the shared pool (its landings), in one atomic word: a prefetch that
/// lands leaves the first count and joins the second at once, so a sync reads both as of one
/// instant (see [`InFlight::report`]).
#[derive(Debug, Default)]
pub struct InFlight(AtomicU64);

/// The low half of [`InFlight`]'s word counts prefetches in flight, the high half landings.
const IN_FLIGHT_BITS: u32 = 32;

impl InFlight {
    /// How many prefetches are in flight.
    pub fn get(&self) -> usize {
        (self.0.load(Ordering::SeqCst) & u64::from(u32::MAX)) as usize
    }

    /// A prefetch started.
    pub fn start(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// A prefetch ended without sending a URL to the shared pool (it failed, a waiter took its
    /// URL, or the URL stayed with this replica).
    pub fn end(&self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }

    /// A prefetch ended by sending its URL to the shared pool (whatever the answer: a put whose
    /// outcome is unknown may have been counted there).
    pub fn end_in_shared_pool(&self) {
        // Adding 2^32 − 1 is adding 2^32 (one more landing in the high half, wrapping) and
        // taking 1 (one fewer in flight in the low half, which counts this prefetch).
        self.0
            .fetch_add((1 << IN_FLIGHT_BITS) - 1, Ordering::SeqCst);
    }

    /// Prefetches in flight and landings so far (wrapping at 2^32), as of one instant: what a
    /// sync reports, so the shared pool can tell the landings it has already counted from the
    /// ones still to come (`cluster::scripts::SYNC`).
    pub fn report(&self) -> (usize, u32) {
        let word = self.0.load(Ordering::SeqCst);
        (
            (word & u64::from(u32::MAX)) as usize,
            (word >> IN_FLIGHT_BITS) as u32,
        )
    }
}

/// What storing a prefetch's URL did: whether it is pooled, and whether it was sent to the shared
/// pool (where this replica's landing is counted, see [`InFlight`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Landed {
    pub pooled: bool,
    pub shared: bool,
}

/// One tracked key: what to fetch for it, how much it is asked for, and who waits on it.
pub struct Tracked {
    pub key: PoolKey,
    pub tenant: TenantId,
    pub request: EmbedRequest,
    /// What the request opens, as the session learner names it (see `sessions::object_of`):
    /// computed once here, not on every request the learner sees.
    pub(super) object: Arc<str>,
    pub(super) state: Mutex<DemandState>,
    pub in_flight: InFlight,
    waiters: Mutex<VecDeque<oneshot::Sender<Fetched>>>,
    /// (consecutive prefetch failures, no prefetch before this instant in ms)
    backoff: Mutex<(u32, u64)>,
}

impl Tracked {
    pub(super) fn new(key: PoolKey, tenant: TenantId, request: EmbedRequest, now_ms: u64) -> Self {
        Tracked {
            key,
            tenant,
            object: super::sessions::object_of(&request),
            request,
            state: Mutex::new(DemandState {
                decayed: 0.0,
                last_ms: now_ms,
                first_ms: now_ms,
                first_arrival_ms: None,
                hinted_until_ms: 0,
                hint_counted: false,
                warm_depth: 0,
                predicted: None,
                stocked_while_pinned: false,
                planned: None,
                arrivals: 0,
                history: 0.0,
                history_since_ms: None,
            }),
            in_flight: InFlight::default(),
            waiters: Mutex::new(VecDeque::new()),
            backoff: Mutex::new((0, 0)),
        }
    }

    /// Counts one request. A hint or a session prediction announced one request: this is it, so
    /// both end here (the key keeps what its own rate earns). Says which request of the key's
    /// current run it was (its tenant's recurrence counts the first few, see `Demand::record`),
    /// and whether it released a hint slot.
    ///
    /// A request after more than `life_ms` of silence is a first request again: the key's
    /// earlier requests say nothing about whether this one starts a stream (a portal user's view
    /// of yesterday's dashboard is no more a stream than their first view was), and counted as a
    /// second arrival it read as a demonstrated rate of one per τ, enough to stock a URL that
    /// then expired unused.
    pub(super) fn record(&self, now_ms: u64, tau_secs: f64, life_ms: u64) -> Recorded {
        let mut s = self.state.lock();
        let silent = s.first_arrival_ms.is_some() && now_ms.saturating_sub(s.last_ms) > life_ms;
        if silent {
            // What is left of the earlier run's weight (under e^(-life/τ)) goes with it.
            s.decayed = 0.0;
            s.first_arrival_ms = None;
            s.arrivals = 0;
        }
        let dt = now_ms.saturating_sub(s.last_ms) as f64 / 1000.0;
        s.decayed = s.decayed * (-dt / tau_secs).exp() + 1.0;
        if s.history_since_ms.is_some() {
            s.history = s.history * (-dt / HISTORY_TAU_SECS).exp() + 1.0;
        } else {
            s.history_since_ms = Some(now_ms);
        }
        s.last_ms = now_ms;
        s.first_arrival_ms.get_or_insert(now_ms);
        s.arrivals = s.arrivals.saturating_add(1);
        Recorded {
            released_hint: s.end_announcement(now_ms),
            arrivals: s.arrivals,
        }
    }

    /// In a fleet, ends the key's hint and session prediction once the one URL they stocked
    /// has left the shared pool, as this replica's own request for the key would: a URL leaves
    /// it only when a request takes it (or it expires, long after a prediction has ended), and
    /// behind a load balancer that request mostly reaches another replica. Without this the
    /// replica that pinned the key would stock it again for a request already served, and that
    /// URL would expire unused. `fleet_stock`: the shared pool's URLs for the key plus the
    /// fleet's prefetches in flight, as this tick's sync read them. Returns true when the key
    /// held a hint slot, now released.
    pub(super) fn settle_pin(&self, fleet_stock: usize, now_ms: u64) -> bool {
        let mut s = self.state.lock();
        if !s.announced(now_ms) {
            s.stocked_while_pinned = false;
            return false;
        }
        if fleet_stock > 0 {
            s.stocked_while_pinned = true;
            return false;
        }
        s.stocked_while_pinned && s.end_announcement(now_ms)
    }

    /// A prefetch for the key has just been pooled: if the key is hinted or predicted, its
    /// stock is there (see [`Tracked::settle_pin`]; a request may take it before the next sync
    /// sees it).
    pub fn stocked(&self, now_ms: u64) {
        let mut s = self.state.lock();
        if s.announced(now_ms) {
            s.stocked_while_pinned = true;
        }
    }

    /// Records the planner's decision for `/state`.
    pub fn note(&self, planned: Planned) {
        self.state.lock().planned = Some(planned);
    }

    /// The planner's last decision, if it has looked at the key.
    pub fn planned(&self) -> Option<Planned> {
        self.state.lock().planned
    }

    /// The active session prediction: (probability, why).
    pub fn predicted(&self, now_ms: u64) -> Option<(f64, super::Reason)> {
        match self.state.lock().predicted {
            Some((until, p, why)) if until > now_ms => Some((p, why)),
            _ => None,
        }
    }

    /// The requests of the key's current run so far and when the last came (`(0, 0)` for a
    /// key never asked for).
    pub fn run(&self) -> (u32, u64) {
        let s = self.state.lock();
        (s.arrivals, s.last_ms)
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

    /// What the key's requests after the one that started its current run show (see
    /// [`Tracked::record`]), over the demand half-life and over its longer memory. That first
    /// request is why the key is observed at all, so counting it reads a single request as a
    /// rate of 1/s for a while; stocking on that would waste budget on one-off keys. A key silent
    /// for more than `life_ms` shows nothing: a URL stocked for it when its last request came
    /// would have expired unused by now.
    pub fn shown(&self, now_ms: u64, tau_secs: f64, life_ms: u64) -> Shown {
        let s = self.state.lock();
        let Some(first) = s.first_arrival_ms else {
            return Shown::default();
        };
        if now_ms.saturating_sub(s.last_ms) > life_ms {
            return Shown::default();
        }
        let since_last = now_ms.saturating_sub(s.last_ms) as f64 / 1000.0;
        let since = |ms: u64| (now_ms.saturating_sub(ms) as f64 / 1000.0).max(1.0);
        // Counted over the run, since its first request (decayed alike): two requests a second
        // apart after a long silence show a second's exposure, not the silence's.
        let decayed = s.decayed * (-since_last / tau_secs).exp();
        let trigger = (-(now_ms.saturating_sub(first) as f64 / 1000.0) / tau_secs).exp();
        let recent = Evidence {
            requests: (decayed - trigger).max(0.0),
            exposure_secs: tau_secs * (1.0 - (-since(first) / tau_secs).exp()),
        };
        let history = match s.history_since_ms {
            Some(since_ms) => Evidence {
                requests: s.history * (-since_last / HISTORY_TAU_SECS).exp(),
                exposure_secs: HISTORY_TAU_SECS
                    * (1.0 - (-since(since_ms) / HISTORY_TAU_SECS).exp()),
            },
            None => Evidence::default(),
        };
        Shown { recent, history }
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
    /// `lost` receives the URL if the claim is dropped after the URL was delivered to it and no
    /// other waiter takes it (see [`Joined`]).
    pub fn try_join<L: FnOnce(Fetched)>(&self, lost: L) -> Option<Joined<'_, L>> {
        let mut waiters = self.waiters.lock();
        waiters.retain(|w| !w.is_closed());
        if waiters.len() >= self.in_flight.get() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        waiters.push_back(tx);
        Some(Joined {
            rx: Some(rx),
            tracked: self,
            lost: Some(lost),
        })
    }

    /// A fetch counted in flight for the key ended with no URL to land (it failed, was
    /// throttled, or came back too late to hand out): it leaves the count, and the waiters no
    /// fetch in flight can serve any more are released.
    pub fn ended_without_url(&self) {
        self.in_flight.end();
        self.release_unserved_waiters();
    }

    /// After a prefetch failed: release the waiters no prefetch in flight can serve any more, so
    /// they fetch for themselves now instead of waiting out their join timeout.
    fn release_unserved_waiters(&self) {
        let in_flight = self.in_flight.get();
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
    /// A oneshot sender delivers at most once, and a waiter that gives up, or is dropped,
    /// reclaims anything sent to it (see [`Joined`]), so the URL ends in exactly one place: a
    /// waiter, the pool, or the waste counter.
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

    /// A prefetch's URL landing: handed to one live waiter, else to `store` (the pool). The
    /// prefetch counts as in flight until its URL is where a request can find it, so a request
    /// arriving meanwhile joins it (and is released to take the URL from the pool once it is
    /// stored) instead of missing and calling QuickSight. Returns what `store` returned; false
    /// when a waiter took the URL.
    ///
    /// A hinted or predicted key counts as stocked ([`Tracked::stocked`]) before `store` runs:
    /// in a fleet the URL is in the shared pool, and may be taken by another replica, from the
    /// moment the put runs in Redis, and a sync of this replica's may find the key empty before
    /// the put's answer is back. Marked only afterwards, that sync would keep the pin and stock
    /// the key again for a request already served. (A URL the store wastes instead, expired or
    /// over the tenant's bound, then ends the pin at the next sync too: its request misses.)
    pub async fn land<F: Future<Output = Landed>>(
        &self,
        fetched: Fetched,
        now_ms: u64,
        store: impl FnOnce(Fetched) -> F,
    ) -> bool {
        let landed = match self.deliver(fetched) {
            Some(f) => {
                self.stocked(now_ms);
                store(f).await
            }
            None => Landed::default(),
        };
        if landed.shared {
            self.in_flight.end_in_shared_pool();
        } else {
            self.in_flight.end();
        }
        self.release_unserved_waiters();
        landed.pooled
    }

    /// Whether a hint, a warm pin or a session prediction keeps this key alive regardless of
    /// its request rate.
    pub fn pinned(&self, now_ms: u64) -> bool {
        let s = self.state.lock();
        s.warm_depth > 0 || s.announced(now_ms)
    }
}

/// A request's claim on the URL of a prefetch in flight ([`Tracked::try_join`]). The URL
/// delivered to it ends in exactly one place however the request ends: received
/// ([`Joined::wait_until`]), also in the instant its deadline passes ([`Joined::give_up`]);
/// or, when the request is dropped while it waits, to another waiter or else to `lost` (the
/// gateway lands it for the key). A request is dropped mid-wait when its client closes or
/// resets the connection (actix-web then drops the handler): without this, a URL delivered in
/// the instant before would go with it, neither handed out nor counted.
pub struct Joined<'a, L: FnOnce(Fetched)> {
    rx: Option<oneshot::Receiver<Fetched>>,
    tracked: &'a Tracked,
    lost: Option<L>,
}

impl<L: FnOnce(Fetched)> Joined<'_, L> {
    /// The prefetch's URL, or `None` when `until` passed first or the prefetch failed.
    pub async fn wait_until(&mut self, until: tokio::time::Instant) -> Option<Fetched> {
        let rx = self.rx.as_mut()?;
        match tokio::time::timeout_at(until, rx).await {
            Ok(Ok(f)) => {
                self.rx = None;
                Some(f)
            }
            _ => None,
        }
    }

    /// Stops waiting (the caller's deadline passed): closes the claim and returns the URL
    /// delivered in the instant before, if one was. The caller waited for it: it is the caller's
    /// to hand out (or to count, if it is no longer fresh).
    #[must_use = "a URL delivered to this claim must be handed out or counted"]
    pub fn give_up(mut self) -> Option<Fetched> {
        let mut rx = self.rx.take()?;
        rx.close();
        rx.try_recv().ok()
    }

    fn reclaim(&mut self) -> Option<Fetched> {
        let mut rx = self.rx.take()?;
        rx.close();
        rx.try_recv().ok().and_then(|f| self.tracked.deliver(f))
    }
}

#[cfg(test)]
impl<L: FnOnce(Fetched)> Joined<'_, L> {
    fn try_recv(&mut self) -> Result<Fetched, oneshot::error::TryRecvError> {
        self.rx.as_mut().expect("still waiting").try_recv()
    }
}

impl<L: FnOnce(Fetched)> Drop for Joined<'_, L> {
    fn drop(&mut self) {
        if let Some(f) = self.reclaim() {
            if let Some(lost) = self.lost.take() {
                lost(f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DashboardEmbedRequest, IdentityType};

    /// A claim whose URL, if lost, is a failure of the test.
    fn keep(f: Fetched) {
        panic!("{} was lost", f.url)
    }

    fn tracked() -> Tracked {
        let req = EmbedRequest::Dashboard(DashboardEmbedRequest::new(
            "111122223333",
            "d",
            IdentityType::Anonymous,
        ));
        let key = crate::pool::pool_key("t", "us-east-1", &req);
        Tracked::new(key, 0, req, 0)
    }

    #[test]
    fn a_waiter_on_a_failed_prefetch_is_released_at_once() {
        let t = tracked();
        t.in_flight.start();
        let mut rx = t.try_join(keep).expect("one prefetch in flight to claim");
        assert!(t.try_join(keep).is_none(), "only one waiter per prefetch");
        t.ended_without_url(); // the prefetch failed
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }

    fn fetched(url: &str) -> Fetched {
        Fetched {
            url: url.to_owned(),
            sent_at_ms: 0,
            anonymous_user_arn: None,
            fetched_for: crate::metrics::Fetch::Prefetch,
        }
    }

    /// A request arriving while a prefetch's URL is being stored joins the prefetch, and is
    /// released once the URL is stored, to take it from the pool; it does not miss.
    #[tokio::test]
    async fn a_request_arriving_while_a_prefetch_is_stored_waits_for_it_instead_of_missing() {
        let t = tracked();
        t.in_flight.start();
        let mut arrived = None;
        let stored = t
            .land(fetched("u"), 0, |f| {
                assert_eq!(f.url, "u", "nobody waited: the URL goes to the pool");
                arrived = t.try_join(keep);
                async {
                    Landed {
                        pooled: true,
                        shared: false,
                    }
                }
            })
            .await;
        assert!(stored);
        let mut rx = arrived.expect("the prefetch still counted as in flight while stored");
        assert!(
            matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Closed)),
            "released once stored, to take the URL from the pool"
        );
        assert_eq!(t.in_flight.get(), 0);
        assert!(t.try_join(keep).is_none(), "nothing left in flight to join");
    }

    /// A waiter gets the landing URL and nothing is stored.
    #[tokio::test]
    async fn a_landing_url_goes_to_its_waiter_not_the_pool() {
        let t = tracked();
        t.in_flight.start();
        let mut rx = t.try_join(keep).unwrap();
        let stored = t
            .land(fetched("u"), 0, |_| async {
                panic!("a URL with a waiter is not stored")
            })
            .await;
        assert!(!stored);
        assert_eq!(rx.try_recv().unwrap().url, "u");
        assert_eq!(t.in_flight.get(), 0);
    }

    /// A claim whose URL, if lost, fails the test.
    type Kept<'a> = Joined<'a, fn(Fetched)>;

    /// Two prefetches in flight for `t`, a waiter on each, and the URL `url` delivered to the
    /// first.
    fn two_waiters_the_first_with<'a>(t: &'a Tracked, url: &str) -> (Kept<'a>, Kept<'a>) {
        t.in_flight.start();
        t.in_flight.start();
        let first = t.try_join(keep as fn(Fetched)).unwrap();
        let second = t.try_join(keep as fn(Fetched)).unwrap();
        assert!(t.deliver(fetched(url)).is_none(), "delivered to the first");
        (first, second)
    }

    /// A request dropped while it waits (its client reset the connection) after the URL was
    /// delivered to it passes the URL on: to the next waiter, else to `lost`, where the gateway
    /// lands it for the key. Nothing is lost unseen, and nothing is passed on twice.
    #[test]
    fn a_claim_dropped_after_its_url_was_delivered_passes_the_url_on() {
        let t = tracked();
        let (first, mut second) = two_waiters_the_first_with(&t, "u");
        drop(first);
        assert_eq!(second.try_recv().unwrap().url, "u", "passed to the next");

        let lost = std::cell::RefCell::new(vec![]);
        let only = t
            .try_join(|f: Fetched| lost.borrow_mut().push(f.url))
            .unwrap();
        assert!(t.deliver(fetched("v")).is_none());
        drop(only);
        assert_eq!(*lost.borrow(), ["v"], "nobody else waits: handed to lost");

        // Dropped before anything was delivered: nothing to pass on, and the next URL is the
        // caller's to pool.
        let before = t.try_join(keep).unwrap();
        drop(before);
        assert_eq!(t.deliver(fetched("w")).map(|f| f.url).as_deref(), Some("w"));
    }

    /// A request whose deadline passes in the instant a URL is delivered to it keeps that URL
    /// (it is the one that waited), and a claim given up before anything came takes nothing
    /// from the next URL, which goes to the next waiter.
    #[test]
    fn a_claim_given_up_keeps_the_url_delivered_in_the_instant_before() {
        let t = tracked();
        let (first, mut second) = two_waiters_the_first_with(&t, "u");
        assert_eq!(first.give_up().map(|f| f.url).as_deref(), Some("u"));
        assert!(
            matches!(second.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "not passed on: the first kept it"
        );

        let early = t.try_join(keep).unwrap();
        assert!(early.give_up().is_none(), "nothing delivered yet");
        assert!(t.deliver(fetched("v")).is_none());
        assert_eq!(
            second.try_recv().unwrap().url,
            "v",
            "the next URL to the next waiter"
        );
    }

    /// A landing leaves the prefetches in flight and joins the landings in one step, and the
    /// landings wrap without touching the count in flight.
    #[test]
    fn a_landing_moves_from_in_flight_to_landed_at_once() {
        let f = InFlight::default();
        for _ in 0..3 {
            f.start();
        }
        f.end_in_shared_pool();
        f.end();
        assert_eq!(f.report(), (1, 1));
        assert_eq!(f.get(), 1);
        let f = InFlight(AtomicU64::new((u64::from(u32::MAX) << IN_FLIGHT_BITS) | 2));
        f.end_in_shared_pool();
        assert_eq!(
            f.report(),
            (1, 0),
            "the landings wrapped, one still in flight"
        );
    }

    #[test]
    fn a_failing_key_backs_off_exponentially_up_to_a_minute() {
        let t = tracked();
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
}
