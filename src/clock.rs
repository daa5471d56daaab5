//! The gateway's time, in milliseconds since the Unix epoch, injectable so tests control it.
//!
//! The system clock here is *monotonic*: it reads the wall clock once, at first use, and from then
//! on adds the time a monotonic clock (`Instant`) has measured. An NTP step or an operator setting
//! the date therefore cannot move it, so a URL's age (now minus when its request was sent, both
//! read here) is always the real elapsed time and a step back cannot make a URL look fresher.
//! The price: if the wall clock was wrong when the process started, this clock stays as wrong
//! (it still measures ages correctly). Across replicas, `fleet` compares each replica's clock
//! with Redis's and stops sharing when they disagree by more than `redis.max_clock_offset_ms`.

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
        Clock::Manual(Arc::new(AtomicU64::new(system_ms())))
    }

    /// The system clock, `offset_ms` ahead (or behind, if negative).
    pub fn skewed(offset_ms: i64) -> Self {
        Clock::Skewed(Arc::new(AtomicI64::new(offset_ms)))
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => system_ms(),
            Clock::Manual(ms) => ms.load(Ordering::SeqCst),
            Clock::Skewed(offset) => {
                system_ms().saturating_add_signed(offset.load(Ordering::SeqCst))
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

/// The wall clock at first use plus the monotonic time since.
fn system_ms() -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let (at, wall) = ANCHOR.get_or_init(|| (Instant::now(), wall_ms()));
    wall + at.elapsed().as_millis() as u64
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
