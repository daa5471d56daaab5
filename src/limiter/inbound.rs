//! The inbound limit: one GCRA limiter (governor) per tenant, and one shared by every request
//! without a valid API key. Time comes from the crate's clock.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock as _;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::Inbound;
use crate::clock::Clock;
use crate::tenant::{TenantId, Tenants};

type Gcra = RateLimiter<NotKeyed, InMemoryState, Clock, StateInformationMiddleware>;

/// One GCRA limiter per tenant.
pub struct InboundLimiter {
    limiters: Vec<Gcra>,
    /// Each tenant's (rate per second, burst).
    limits: Vec<(f64, u32)>,
    /// The limiters of a replica that keeps to its part of each tenant's limit: `(n, one per
    /// tenant at 1/n of its rate and burst)`, built when first needed and again when `n`
    /// changes (see [`InboundLimiter::check_part`]).
    parts: parking_lot::RwLock<Option<(usize, Vec<Gcra>)>>,
    /// One limit shared by every request without a valid API key.
    unauthenticated: Gcra,
    clock: Clock,
    /// (quota, window seconds) per tenant, for `RateLimit-Policy`.
    policies: Vec<(u32, u64)>,
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
        let mut limiters = Vec::new();
        let mut policies = Vec::new();
        let mut limits = Vec::new();
        for t in tenants.all() {
            limiters.push(gcra(t.rate_per_sec, t.burst, clock));
            limits.push((t.rate_per_sec, t.burst));
            let window = (f64::from(t.burst) / t.rate_per_sec).ceil().max(1.0) as u64;
            policies.push((t.burst, window));
        }
        InboundLimiter {
            limiters,
            limits,
            parts: parking_lot::RwLock::new(None),
            unauthenticated: gcra(unauthenticated.0, unauthenticated.1, clock),
            clock: clock.clone(),
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
        verdict(self.limiters[tenant].check(), &self.clock)
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
            if *built == n {
                return verdict(parts[tenant].check(), &self.clock);
            }
        }
        let mut parts = self.parts.write();
        if parts.as_ref().is_none_or(|(built, _)| *built != n) {
            let each = self
                .limits
                .iter()
                .map(|&(rate, burst)| gcra(rate / n as f64, burst / n as u32, &self.clock))
                .collect();
            *parts = Some((n, each));
        }
        let (_, each) = parts.as_ref().expect("built above");
        verdict(each[tenant].check(), &self.clock)
    }

    /// `(quota, window seconds)` of the tenant's policy.
    pub fn policy(&self, tenant: TenantId) -> (u32, u64) {
        self.policies[tenant]
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
    }

    /// A part is at least one request, however many replicas share a small burst.
    #[test]
    fn a_part_of_a_small_burst_is_one_request() {
        let (limiter, _) = limiter(2.0, 2);
        assert_eq!(allowed(&limiter, 5), 1);
    }
}
