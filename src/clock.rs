//! The gateway's time, in milliseconds since the Unix epoch, injectable so tests control it.
//!
//! The system clock here never goes back and never runs slow: it reads the wall clock once, at
//! first use, and from then on adds the time elapsed since, measured on a clock that no clock
//! step moves and that counts the time a suspended or hibernated machine slept (Linux's
//! `CLOCK_BOOTTIME`; elsewhere the monotonic clock, which may not count sleep). An NTP step back
//! or an operator setting the date back therefore cannot move it, so a URL's age (now minus when
//! its request was sent, both read here) is never less than the real elapsed time. It also looks
//! at the wall clock every [`CHECK_WALL_EVERY_US`] and, if that is ahead, moves forward to it
//! (never back): a wall clock that was behind when the process started and that NTP then set
//! right, or sleep that the elapsed-time clock did not count, ages every URL by the difference,
//! which can only make one look older than it is. Across replicas, `cluster` compares each
//! replica's clock with Redis's and stops sharing when they disagree by more than
//! `redis.max_clock_offset_ms`.
//!
//! Every decision that depends on time reads this clock: URL validity, pool expiry, demand
//! rates, the inbound limiters (governor runs on it, see the `governor::clock::Clock` impl) and
//! the upstream budgets, so a manual clock in a test moves all of them. Two kinds of time do not
//! come from here, by design: *timers* (timeouts, sleeps, the planner's tick), which are tokio's
//! and which tests drive with `tokio::time::pause`; and *latency measurements* (request
//! durations, upstream latency, Redis round trips), which must be real elapsed time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

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

    /// Whether the clock runs by itself at the pace of elapsed time, so that moving otherwise is
    /// a step: not a manual clock, which moves only when a test advances it.
    pub fn counts_elapsed_time(&self) -> bool {
        !matches!(self, Clock::Manual(_))
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

/// How often (in elapsed microseconds) the system clock compares itself with the wall clock.
pub const CHECK_WALL_EVERY_US: u64 = 10_000;

/// A catch-up past this is logged: the machine slept, or its wall clock was set forward.
const LOG_CATCH_UP_US: u64 = 1_000_000;

/// The system clock's state: the wall clock and the elapsed-time clock when it was first read,
/// and how far it has since been moved forward to meet the wall clock.
struct Steady {
    wall_at_start_us: u64,
    elapsed_at_start_us: u64,
    /// Only grows: the clock never goes back.
    caught_up_us: AtomicU64,
    /// The elapsed-time reading at the last look at the wall clock.
    checked_at_us: AtomicU64,
}

impl Steady {
    fn new(wall_us: u64, elapsed_us: u64) -> Self {
        Steady {
            wall_at_start_us: wall_us,
            elapsed_at_start_us: elapsed_us,
            caught_up_us: AtomicU64::new(0),
            checked_at_us: AtomicU64::new(elapsed_us),
        }
    }

    /// The time, given the elapsed-time clock's reading; `wall_us` is read only when it is time
    /// to look at the wall clock again. Returns the time and, when this reading moved the clock
    /// forward to the wall clock, by how much.
    fn read(&self, elapsed_us: u64, wall_us: impl FnOnce() -> u64) -> (u64, u64) {
        let counted = self.wall_at_start_us + elapsed_us.saturating_sub(self.elapsed_at_start_us);
        let mut caught_up = self.caught_up_us.load(Ordering::Relaxed);
        let mut moved = 0;
        let checked = self.checked_at_us.load(Ordering::Relaxed);
        if elapsed_us.saturating_sub(checked) >= CHECK_WALL_EVERY_US {
            self.checked_at_us.store(elapsed_us, Ordering::Relaxed);
            let ahead = wall_us().saturating_sub(counted);
            if ahead > caught_up {
                let before = self.caught_up_us.fetch_max(ahead, Ordering::Relaxed);
                moved = ahead.saturating_sub(before);
                caught_up = before.max(ahead);
            }
        }
        (counted + caught_up, moved)
    }
}

/// The system clock in microseconds (see the module's documentation).
fn system_us() -> u64 {
    static STEADY: OnceLock<Steady> = OnceLock::new();
    let steady = STEADY.get_or_init(|| Steady::new(wall_us(), elapsed_us()));
    let (now, moved) = steady.read(elapsed_us(), wall_us);
    if moved > LOG_CATCH_UP_US {
        tracing::warn!(
            ahead_ms = moved / 1000,
            "the wall clock was found ahead of the gateway's clock (the machine slept, or its clock was set forward): the gateway's clock moved forward to it, so pooled URLs count as that much older"
        );
    }
    now
}

/// Time elapsed since an arbitrary start, in microseconds: `CLOCK_BOOTTIME` where there is one
/// (it counts suspend and no clock step moves it), else the monotonic clock.
#[cfg(target_os = "linux")]
fn elapsed_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1000
}

#[cfg(not(target_os = "linux"))]
fn elapsed_us() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_starts_at_the_wall_clock_and_never_goes_back() {
        let first = Clock::System.now_ms();
        assert!(first.abs_diff(wall_us() / 1000) < 1_000);
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

    const S: u64 = 1_000_000;
    /// 2026-12-04 in microseconds, the wall clock at the clock's start in these tests.
    const START: u64 = 1_796_400_000 * S;

    /// Reads `steady` at `elapsed` (seconds since its start) with the wall clock at `wall`.
    fn at(steady: &Steady, elapsed: u64, wall: i64) -> u64 {
        steady
            .read(7 * S + elapsed * S, || {
                START.saturating_add_signed(wall * S as i64)
            })
            .0
    }

    #[test]
    fn a_wall_clock_set_back_does_not_move_the_clock_back() {
        let steady = Steady::new(START, 7 * S);
        assert_eq!(at(&steady, 10, 10), START + 10 * S);
        // An NTP step back of two minutes: the clock goes on counting elapsed time.
        assert_eq!(at(&steady, 11, 11 - 120), START + 11 * S);
        assert_eq!(at(&steady, 300, 300 - 120), START + 300 * S);
    }

    #[test]
    fn sleep_the_elapsed_time_clock_did_not_count_is_caught_up_from_the_wall_clock() {
        let steady = Steady::new(START, 7 * S);
        assert_eq!(at(&steady, 10, 10), START + 10 * S);
        // Ten minutes asleep that the elapsed-time clock missed: the first reading after it is
        // ten minutes on, so a URL pooled before the sleep is ten minutes older.
        assert_eq!(at(&steady, 11, 611), START + 611 * S);
        // From there it counts elapsed time again, and a later step back does not undo it.
        assert_eq!(at(&steady, 20, 620), START + 620 * S);
        assert_eq!(at(&steady, 30, 30), START + 630 * S);
    }

    #[test]
    fn a_wall_clock_behind_at_start_and_then_set_right_is_followed() {
        // The process started before NTP had set a clock 60 s slow; then NTP set it right.
        let steady = Steady::new(START - 60 * S, 7 * S);
        assert_eq!(at(&steady, 5, 5 - 60), START - 55 * S);
        let (now, moved) = steady.read(7 * S + 6 * S, || START + 6 * S);
        assert_eq!((now, moved), (START + 6 * S, 60 * S));
        assert_eq!(
            steady.read(7 * S + 7 * S, || START + 7 * S),
            (START + 7 * S, 0)
        );
    }

    #[test]
    fn the_wall_clock_is_read_only_every_check_interval() {
        let steady = Steady::new(START, 0);
        let mut reads = 0;
        for us in 0..(5 * CHECK_WALL_EVERY_US) {
            steady.read(us, || {
                reads += 1;
                START + us
            });
        }
        assert_eq!(reads, 4);
    }

    proptest::proptest! {
        /// Whatever the wall clock does, the clock never goes back, never runs behind the
        /// elapsed time, and is never behind the wall clock's last look.
        #[test]
        fn the_clock_never_goes_back_nor_behind_the_wall_clock(
            steps in proptest::collection::vec((0..5 * CHECK_WALL_EVERY_US, -600i64..600), 1..200)
        ) {
            let steady = Steady::new(START, 0);
            let (mut elapsed, mut last) = (0u64, START);
            for (dt, wall_offset_s) in steps {
                elapsed += dt;
                let wall = (START + elapsed).saturating_add_signed(wall_offset_s * S as i64);
                let mut looked = false;
                let (now, _) = steady.read(elapsed, || { looked = true; wall });
                proptest::prop_assert!(now >= last, "went back: {last} -> {now}");
                proptest::prop_assert!(now >= START + elapsed, "behind the elapsed time");
                if looked {
                    proptest::prop_assert!(now >= wall, "behind the wall clock it looked at");
                }
                last = now;
            }
        }
    }
}
