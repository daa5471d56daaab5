//! The inbound limit: one GCRA limiter (governor) per tenant, and one shared by every request
//! without a valid API key. Time comes from the crate's clock.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use governor::clock::Clock as _;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::Inbound;
use crate::clock::Clock;
use crate::tenant::{Limit, PerTenant, TenantId, Tenants};

type Gcra = RateLimiter<NotKeyed, InMemoryState, Clock, StateInformationMiddleware>;

/// One tenant's limiter, with the limit it was built for.
struct Limiter {
    limit: Limit,
    gcra: Gcra,
}

/// One GCRA limiter per tenant.
pub struct InboundLimiter {
    /// Each tenant's, replaced whole when a reload changes its limit, made when a reload adds
    /// the tenant ([`InboundLimiter::set`]).
    limiters: PerTenant<ArcSwap<Limiter>>,
    /// The limiters of a replica that keeps to its part of each tenant's limit: `(n, one per
    /// tenant at 1/n of its rate and burst)`, built when first needed and again when `n`
    /// changes (see [`InboundLimiter::check_part`]).
    parts: parking_lot::RwLock<Option<(usize, Vec<Gcra>)>>,
    /// One limit shared by every request without a valid API key.
    unauthenticated: Gcra,
    clock: Clock,
}

fn gcra(rate_per_sec: f64, burst: u32, clock: &Clock) -> Gcra {
    let period = Duration::from_secs_f64(1.0 / rate_per_sec);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    RateLimiter::direct_with_clock(quota, clock.clone())
        .with_middleware::<StateInformationMiddleware>()
}

/// One `n`th of `limit` (at least one request of burst).
fn part(limit: Limit, n: usize) -> Limit {
    Limit {
        rate_per_sec: limit.rate_per_sec / n as f64,
        burst: (limit.burst / n as u32).max(1),
    }
}

/// A limiter for one `n`th of `limit`.
fn part_of(limit: Limit, n: usize, clock: &Clock) -> Gcra {
    let part = part(limit, n);
    gcra(part.rate_per_sec, part.burst, clock)
}

/// A limiter for `new` that carries on from `old`, a limiter for `was` being replaced: its
/// theoretical arrival time (how far ahead of now the requests counted so far reach) is kept,
/// and brought within the new limit's full burst when the new burst spans less time. So a
/// tenant that used its burst does not get a fresh one from a changed limit: lowered, it is
/// refused until its requests fall within the new limit; raised, it has the room the new limit
/// adds. This is what Redis does with a fleet's shared limit (`cluster::scripts`), so a reload
/// counts the same on one node and in a fleet.
///
/// `old`'s state is read by counting one request on it, which is never served: `old` is
/// dropped.
fn carried_over(old: &Gcra, was: Limit, new: Limit, clock: &Clock) -> Gcra {
    let interval = 1.0 / was.rate_per_sec;
    let burst = f64::from(was.burst.max(1));
    let ahead_secs = match old.check() {
        Ok(snapshot) => interval * (burst - f64::from(snapshot.remaining_burst_capacity()) - 1.0),
        Err(not_until) => {
            not_until.wait_time_from(clock.now()).as_secs_f64() + interval * (burst - 1.0)
        }
    };
    let fresh = gcra(new.rate_per_sec, new.burst, clock);
    // Whole requests of the new limit that span that time, rounded up (never more room than
    // the kept arrival time gives); a hair under a whole one is that one.
    let counted = (ahead_secs * new.rate_per_sec - 1e-6)
        .ceil()
        .clamp(0.0, f64::from(new.burst.max(1))) as u32;
    if let Some(n) = NonZeroU32::new(counted) {
        // At most the new burst on a fresh limiter: always has the capacity, always allowed.
        let _ = fresh.check_n(n);
    }
    fresh
}

/// A limiter's answer as an [`Inbound`].
fn verdict(
    check: Result<
        governor::middleware::StateSnapshot,
        governor::NotUntil<<Clock as governor::clock::Clock>::Instant>,
    >,
    clock: &Clock,
) -> Inbound {
    match check {
        Ok(snapshot) => Inbound::Allowed {
            remaining: snapshot.remaining_burst_capacity(),
        },
        Err(not_until) => Inbound::Limited {
            retry_after: not_until.wait_time_from(clock.now()),
        },
    }
}

impl InboundLimiter {
    /// Per-tenant limits from the table, and the shared limit for requests without a valid key
    /// (`unauthenticated` = (rate per second, burst)).
    pub fn new(tenants: &Tenants, unauthenticated: (f64, u32), clock: &Clock) -> Self {
        let limiters = PerTenant::new(
            tenants
                .all()
                .map(|t| ArcSwap::from_pointee(Self::limiter(t.limit(), clock))),
        );
        InboundLimiter {
            limiters,
            parts: parking_lot::RwLock::new(None),
            unauthenticated: gcra(unauthenticated.0, unauthenticated.1, clock),
            clock: clock.clone(),
        }
    }

    fn limiter(limit: Limit, clock: &Clock) -> Limiter {
        Limiter {
            limit,
            gcra: gcra(limit.rate_per_sec, limit.burst, clock),
        }
    }

    /// Puts `tenant`'s new `limit` in force (a reload changed it), from its next request on.
    /// Its limiter, and its part when one is kept, carry on from the old limit's state (see
    /// [`carried_over`]): a tenant that used its burst under the old limit does not get a
    /// fresh one.
    /// A tenant a reload added gets its limiter here, before any request of its.
    pub fn set(&self, tenant: TenantId, limit: Limit) {
        let slot = self.limiters.grow_to(tenant, |_| {
            ArcSwap::from_pointee(Self::limiter(limit, &self.clock))
        });
        let old = slot.load_full();
        if old.limit == limit {
            return;
        }
        slot.store(Arc::new(Limiter {
            limit,
            gcra: carried_over(&old.gcra, old.limit, limit, &self.clock),
        }));
        if let Some((n, parts)) = &mut *self.parts.write() {
            if let Some(kept) = parts.get_mut(tenant) {
                let (was, new) = (part(old.limit, *n), part(limit, *n));
                *kept = carried_over(kept, was, new, &self.clock);
            }
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
        verdict(self.limiters[tenant].load().gcra.check(), &self.clock)
    }

    /// Counts one request of `tenant` against one `n`th of its limit (`1/n` of its rate and of
    /// its burst, at least one request): for a fleet replica that does not share the limit
    /// through Redis, one of `n` live replicas, so that the fleet together stays within the
    /// tenant's limit. With `n` of 1 it is [`InboundLimiter::check`].
    pub fn check_part(&self, tenant: TenantId, n: usize) -> Inbound {
        if n <= 1 {
            return self.check(tenant);
        }
        if let Some((built, parts)) = &*self.parts.read() {
            if let Some(part) = parts.get(tenant).filter(|_| *built == n) {
                return verdict(part.check(), &self.clock);
            }
        }
        let mut parts = self.parts.write();
        // Built again when `n` changes, and when a reload added a tenant since; a tenant's part
        // carries on from the one before, if it had one (a fresh burst for every tenant each
        // time the fleet's size changed or a tenant was added would let the fleet past them).
        if parts
            .as_ref()
            .is_none_or(|(built, each)| *built != n || each.len() <= tenant)
        {
            let before = parts.take();
            let each = self
                .limiters
                .iter()
                .enumerate()
                .map(|(t, l)| {
                    let limit = l.load().limit;
                    match before.as_ref().and_then(|(m, old)| Some((*m, old.get(t)?))) {
                        Some((m, old)) => {
                            carried_over(old, part(limit, m), part(limit, n), &self.clock)
                        }
                        None => part_of(limit, n, &self.clock),
                    }
                })
                .collect();
            *parts = Some((n, each));
        }
        let (_, each) = parts.as_ref().expect("built above");
        verdict(each[tenant].check(), &self.clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PolicySettings, TenantSettings};

    fn limiter(rate_per_sec: f64, burst: u32) -> (InboundLimiter, Clock) {
        let tenant = TenantSettings {
            id: "acme".into(),
            api_key_sha256: vec![],
            access_key_ids: vec![],
            client_certificate_names: vec![],
            default_account: None,
            rate_per_sec,
            burst,
            upstream_weight: 1.0,
            max_pooled_urls: 10,
            max_hints: 10,
            max_tracked_keys: 10,
            policy: PolicySettings::default(),
            warm: vec![],
        };
        let clock = Clock::manual();
        let limiter = InboundLimiter::new(&Tenants::new(&[tenant]), (1.0, 1), &clock);
        (limiter, clock)
    }

    fn allowed(limiter: &InboundLimiter, n: usize) -> usize {
        std::iter::from_fn(|| {
            matches!(limiter.check_part(0, n), Inbound::Allowed { .. }).then_some(())
        })
        .count()
    }

    /// One of three replicas that stopped sharing allows a third of the tenant's burst and
    /// rate, so the three together allow what one fleet-wide limit does; with a fleet of one
    /// the part is the whole limit, and the whole limit's state is its own.
    #[test]
    fn a_replicas_part_of_a_tenants_limit_is_its_share_of_rate_and_burst() {
        let (limiter, clock) = limiter(30.0, 30);
        assert_eq!(allowed(&limiter, 3), 10, "a third of the burst");
        let mut later = 0;
        for _ in 0..10 {
            clock.advance(100);
            later += allowed(&limiter, 3);
        }
        assert_eq!(later, 10, "a third of 30/s for a second");
        assert_eq!(allowed(&limiter, 1), 30, "the whole limit is untouched");
        // The fleet grew while this replica was sharing: its part is now a quarter.
        clock.advance(60_000);
        assert_eq!(
            allowed(&limiter, 4),
            7,
            "a quarter of the burst, rounded down"
        );
        // It shrank back to three with that quarter used: the third carries on from it (seven
        // requests at 7.5/s reach 0.93 s ahead, of the 1 s a third's burst spans), where a fresh
        // third would allow ten more at once.
        assert_eq!(allowed(&limiter, 3), 0, "no fresh third of the burst");
        clock.advance(100);
        assert_eq!(allowed(&limiter, 3), 1, "a third of the rate");
    }

    fn limit(rate_per_sec: f64, burst: u32) -> Limit {
        Limit {
            rate_per_sec,
            burst,
        }
    }

    /// A limit a reload changed counts from the next request and carries on from what the
    /// tenant used under the old one, its part too: raised, the tenant has the room the new
    /// limit adds; lowered, no fresh burst. A limit set again unchanged keeps its state.
    #[test]
    fn a_changed_limit_carries_on_from_what_the_old_one_counted_and_its_part_follows() {
        let (limiter, clock) = limiter(30.0, 30);
        assert_eq!(allowed(&limiter, 3), 10);
        assert_eq!(allowed(&limiter, 1), 30);
        limiter.set(0, limit(30.0, 30));
        assert_eq!(
            allowed(&limiter, 1),
            0,
            "an unchanged limit keeps its state"
        );
        // A second's worth of requests counted, against a burst that now spans two.
        limiter.set(0, limit(4.0, 8));
        assert_eq!(allowed(&limiter, 1), 4, "the room the new burst adds");
        assert_eq!(
            allowed(&limiter, 3),
            0,
            "the part had used its second too, and a third of the new burst spans 1.5 s"
        );
        clock.advance(1_000);
        assert_eq!(allowed(&limiter, 1), 4, "the new rate");
        limiter.set(0, limit(1.0, 2));
        assert_eq!(
            allowed(&limiter, 1),
            0,
            "no fresh burst from a lowered limit"
        );
        clock.advance(1_000);
        assert_eq!(allowed(&limiter, 1), 1, "the lowered rate");
    }

    /// Half a burst used is half a second's worth at 10/s, which a burst of 20 leaves 1.5 s of
    /// room beside.
    #[test]
    fn a_part_used_burst_carries_over_as_the_time_it_spans() {
        let (limiter, _) = limiter(10.0, 10);
        for _ in 0..5 {
            limiter.check(0);
        }
        limiter.set(0, limit(10.0, 20));
        assert_eq!(allowed(&limiter, 1), 15);
    }

    /// A tenant a reload adds while the replica keeps to its part gets its own part, and the
    /// others' parts carry on: before, every tenant's was built afresh.
    #[test]
    fn a_tenant_added_while_degraded_leaves_the_others_parts_as_they_were() {
        let (limiter, _) = limiter(30.0, 30);
        assert_eq!(allowed(&limiter, 3), 10);
        limiter.set(1, limit(3.0, 3));
        assert!(matches!(
            limiter.check_part(1, 3),
            Inbound::Allowed { remaining: 0 }
        ));
        assert_eq!(
            allowed(&limiter, 3),
            0,
            "the first tenant's part is still used"
        );
    }

    /// A part is at least one request, however many replicas share a small burst.
    #[test]
    fn a_part_of_a_small_burst_is_one_request() {
        let (limiter, _) = limiter(2.0, 2);
        assert_eq!(allowed(&limiter, 5), 1);
    }
}
