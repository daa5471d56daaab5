//! Demand tracking and the refill planner's arithmetic (the task that runs it is
//! `gateway::refiller`, which owns the fetch path).
//!
//! - [`demand`]: per-key rate estimates, hints and warm keys, bounded per tenant.
//! - [`tracked`]: one tracked key, its backoff and the callers waiting on its prefetch.
//! - [`planner`]: how many prefetches a key needs now (single node, or a replica's fleet share).
//! - [`sessions`]: what registered users open next and which users are about to come back.
//!
//! Per pool key we keep a decaying estimate of the request rate λ. By Little's law the pool must
//! hold about λ × (refill lead time + safety) URLs to absorb arrivals while a refill is in flight;
//! a URL only lives `300 s − min_remaining`, so holding more than λ × that lifetime is waste. A key
//! is worth pre-fetching only if a request is likely (≥ `min_probability`) to arrive within a URL's
//! usable life: for Poisson arrivals whose rate is known from k requests over E seconds,
//! P = 1 − (E / (E + life))^k (see [`Shown`]), which tends to 1 − e^(−λ·life) as the evidence
//! grows. Hinted and warm keys are kept at least one (or their configured depth) deep regardless.
//! Keys idle for long are forgotten (bounded).
//!
//! A prefetch in flight can be claimed by a caller that missed: its URL then goes to exactly that
//! one waiter instead of the pool (see [`Tracked::deliver`]).

mod demand;
mod planner;
mod sessions;
mod tracked;

use crate::metrics::Fetch;

pub use demand::{Demand, Learned, LearnedKinds, Source};
pub use planner::{KeyView, Planner, Report, Want};
pub use sessions::{Predicted, Seen, Sessions};
pub use tracked::{
    Evidence, InFlight, Joined, Landed, Planned, Shown, Tracked, HISTORY_HALF_LIFE_SECS,
};

/// Evidence still to settle: each event adds one, decaying as e^(-age / tau) after it, so the
/// value is the share of the events' outcomes that has not had time to show yet. The session
/// learner's follower counts and the demand tracker's recurrence counts each keep one, and count
/// `events − pending` as their settled evidence.
#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    value: f64,
    as_of_ms: u64,
}

impl Pending {
    fn at(&self, now_ms: u64, tau_secs: f64) -> f64 {
        let age_secs = now_ms.saturating_sub(self.as_of_ms) as f64 / 1000.0;
        self.value * (-age_secs / tau_secs.max(0.001)).exp()
    }

    /// Adds an event at `at_ms`. An event older than the last one (a view another replica saw,
    /// learned a tick later) adds what it would have decayed to by then, so the order in which
    /// events are added does not change the value.
    fn add(&mut self, at_ms: u64, tau_secs: f64) {
        if at_ms >= self.as_of_ms {
            self.value = self.at(at_ms, tau_secs) + 1.0;
            self.as_of_ms = at_ms;
        } else {
            self.value += Pending {
                value: 1.0,
                as_of_ms: at_ms,
            }
            .at(self.as_of_ms, tau_secs);
        }
    }

    fn halve(&mut self) {
        self.value /= 2.0;
    }
}

/// Why a key is pre-fetched (the `reason` label of fetched URLs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its own request rate.
    Prefetch,
    /// Asked for once: one URL for the next request, which its kind's keys usually get (see
    /// `Demand::target`).
    First,
    Hint,
    Warm,
    /// A session prediction: it usually follows what its user just opened.
    Follower,
    /// A session prediction: its user is likely to come back and start here.
    Returning,
}

impl Reason {
    /// The `reason` label its fetches count under.
    pub fn fetch(self) -> Fetch {
        match self {
            Reason::Prefetch => Fetch::Prefetch,
            Reason::First => Fetch::First,
            Reason::Hint => Fetch::Hint,
            Reason::Warm => Fetch::Warm,
            Reason::Follower => Fetch::Follower,
            Reason::Returning => Fetch::Returning,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.fetch().as_str()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::Pending;
    use proptest::prelude::*;

    /// What a decaying count reads at 61 s after the events `at` (ms) were added as they came
    /// and after they were added in time order: (as they came, in order).
    pub(in crate::refill) fn as_they_came_and_in_order<T: Default>(
        mut at: Vec<u64>,
        add: impl Fn(&mut T, u64),
        read: impl Fn(&T, u64) -> f64,
    ) -> (f64, f64) {
        let read_at = 61_000;
        let mut arrived = T::default();
        at.iter().for_each(|&t| add(&mut arrived, t));
        at.sort_unstable();
        let mut in_order = T::default();
        at.iter().for_each(|&t| add(&mut in_order, t));
        (read(&arrived, read_at), read(&in_order, read_at))
    }

    proptest! {
        /// Views from other replicas arrive a tick after later ones were learned: the evidence
        /// still pending must not depend on the order events are added in.
        #[test]
        fn pending_evidence_does_not_depend_on_the_order_events_arrive_in(
            at in proptest::collection::vec(1_000u64..60_000, 1..40),
            tau in 1.0f64..60.0,
        ) {
            let (a, b) = as_they_came_and_in_order(
                at,
                |p: &mut Pending, t| p.add(t, tau),
                |p, now| p.at(now, tau),
            );
            prop_assert!((a - b).abs() <= 1e-9 * b.max(1.0), "{} against {}", a, b);
        }
    }
}
