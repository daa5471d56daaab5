//! Limiters: the inbound limit per tenant, and the upstream budget per AWS account and region.
//!
//! - **Inbound** is GCRA (governor), one limiter per tenant with its own rate and burst. A
//!   rejection carries the wait until the next request would be allowed.
//! - **Upstream budget** is a token bucket whose rate adapts: a ThrottlingException cuts it
//!   (multiplicatively, at most once a second), calm seconds restore it (additively). Tenants share
//!   a contended budget by weight, and callers waiting on a miss go before prefetch. governor's
//!   quotas are fixed at construction, so this bucket is our own: a few lines of arithmetic
//!   under one lock per account.
//! - A fleet replica cut off from Redis runs both at its part of the fleet-wide limit, `1/N`
//!   for `N` live replicas (see `shared::Limits::part`), so that the fleet stays within it.

mod budget;
mod inbound;

use std::time::Duration;

pub use budget::{Budget, Budgets, Parts, Tentative};
pub use inbound::InboundLimiter;

/// The outcome of an inbound check, with what the IETF RateLimit headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    Allowed { remaining: u32 },
    Limited { retry_after: Duration },
}

/// Who asks for an upstream call: a caller waiting on a miss goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Miss,
    Prefetch,
    /// Stocking beyond the needed depth: only budget that is idle (over half the burst unused).
    Surplus,
}
