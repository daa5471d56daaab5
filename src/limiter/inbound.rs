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

impl InboundLimiter {
    /// Per-tenant limits from the table, and the shared limit for requests without a valid key
    /// (`unauthenticated` = (rate per second, burst)).
    pub fn new(tenants: &Tenants, unauthenticated: (f64, u32), clock: &Clock) -> Self {
        let mut limiters = Vec::new();
        let mut policies = Vec::new();
        for t in tenants.all() {
            limiters.push(gcra(t.rate_per_sec, t.burst, clock));
            let window = (f64::from(t.burst) / t.rate_per_sec).ceil().max(1.0) as u64;
            policies.push((t.burst, window));
        }
        InboundLimiter {
            limiters,
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
