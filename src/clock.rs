//! The gateway's time, in milliseconds since the Unix epoch, injectable so tests control it.
//!
//! The system clock here is *monotonic*: it reads the wall clock once, at first use, and from then
//! on adds the time a monotonic clock (`Instant`) has measured. An NTP step or an operator setting
//! the date therefore cannot move it, so a URL's age (now minus when its request was sent, both
//! read here) is always the real elapsed time and a step back cannot make a URL look fresher.
//! The price: if the wall clock was wrong when the process started, this clock stays as wrong
//! (it still measures ages correctly). Across replicas, `cluster` compares each replica's clock
//! with Redis's and stops sharing when they disagree by more than `redis.max_clock_offset_ms`.
//!
//! Every decision that depends on time reads this clock: URL validity, pool expiry, demand
//! rates, the inbound limiters (governor runs on it, see the `governor::clock::Clock` impl) and
//! the upstream budgets, so a manual clock in a test moves all of them. Two kinds of time do not
//! come from here, by design: *timers* (timeouts, sleeps, the planner's tick), which are tokio's
//! and which tests drive with `tokio::time::pause`; and *latency measurements* (request
//! durations, upstream latency, Redis round trips), which must be real elapsed time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The gateway's clock: the (monotonic) system clock, a manual one tests move by hand, or the
/// system clock shifted by an offset (a replica whose clock is wrong, in tests).
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<AtomicU64>),
    /// The system clock plus this many milliseconds (negative: behind); the offset can be
    /// changed while running, as a clock step would.
    Skewed(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock starting at the current system time.
    pub fn manual() -> Self {
        Clock::Manual(Arc::new(AtomicU64::new(system_us() / 1000)))
    }

    /// The system clock, `offset_ms` ahead (or behind, if negative).
    pub fn skewed(offset_ms: i64) -> Self {
        Clock::Skewed(Arc::new(AtomicI64::new(offset_ms)))
    }

    pub fn now_ms(&self) -> u64 {
        self.now_us() / 1000
    }

    /// Microseconds since the Unix epoch (the limiters' resolution).
    pub fn now_us(&self) -> u64 {
        match self {
            Clock::System => system_us(),
            Clock::Manual(ms) => ms.load(Ordering::SeqCst) * 1000,
            Clock::Skewed(offset) => {
                system_us().saturating_add_signed(offset.load(Ordering::SeqCst) * 1000)
            }
        }
    }

    /// Moves a manual clock forward; the system clock cannot be moved.
    pub fn advance(&self, ms: u64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(ms, Ordering::SeqCst);
        }
    }

    /// Sets a skewed clock's offset (a clock step); other clocks are unchanged.
    pub fn set_skew(&self, offset_ms: i64) {
        if let Clock::Skewed(o) = self {
            o.store(offset_ms, Ordering::SeqCst);
        }
    }
}

/// governor's limiters read the same clock (at microsecond resolution).
impl governor::clock::Clock for Clock {
    type Instant = governor::nanos::Nanos;

    fn now(&self) -> Self::Instant {
        governor::nanos::Nanos::from(self.now_us() * 1000)
    }
}

/// The wall clock at first use plus the monotonic time since, in microseconds.
fn system_us() -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let (at, wall) = ANCHOR.get_or_init(|| (Instant::now(), wall_ms() * 1000));
    wall + at.elapsed().as_micros() as u64
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_starts_at_the_wall_clock_and_never_goes_back() {
        let first = Clock::System.now_ms();
        assert!(first.abs_diff(wall_ms()) < 1_000);
        let mut last = first;
        for _ in 0..10_000 {
            let now = Clock::System.now_ms();
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn a_skewed_clock_is_the_system_clock_shifted_and_can_step() {
        let c = Clock::skewed(30_000);
        assert!(c.now_ms().abs_diff(Clock::System.now_ms() + 30_000) < 100);
        c.set_skew(-120_000);
        assert!(c.now_ms().abs_diff(Clock::System.now_ms() - 120_000) < 100);
    }
}
