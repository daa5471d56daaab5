//! Log lines whose number a client decides, bounded: the first of a burst in full, the rest as
//! one count per interval.
//!
//! A request refused because its sender is over a limit (a tenant over its rate, clients without
//! a valid key over theirs) costs the gateway little, and that is the point of refusing it; one
//! log line each (about 350 bytes) would let the sender turn a flood the limiter absorbs into the
//! same flood of writes to the log and the log pipeline behind it. [`Bursts`] keeps, per source
//! (a tenant, or everyone without a valid key), when its current burst began and how many
//! refusals it has had since the last report: the first refusal after a quiet interval is logged
//! in full (with its request id), the others are counted, and [`Bursts::due`] hands out the counts
//! once per interval, which the gateway logs as one line. A burst ends when an interval passes
//! without a refusal; the next refusal is logged in full again. Every refusal is still counted
//! in the metrics, and logged in full at `debug`.
//!
//! Bounded: one slot per source (a tenant's is made when a reload adds it). Lock-free: a
//! refusal is two atomic operations.
//!
//! # Concurrency
//! A refusal racing with [`Bursts::due`] may be counted into the next report instead of the one
//! being taken; none is lost or counted twice (the count is only ever taken by a swap).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::per_tenant::PerTenant;

/// What to do with one refusal's line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// The first of a burst: log it in full.
    First,
    /// Counted: it appears in the next report.
    Counted,
}

/// A report of one source's refusals that were counted, not logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub source: usize,
    pub count: u64,
    /// Milliseconds since the previous line about this source (the burst's first or the last
    /// report).
    pub over_ms: u64,
}

#[derive(Default)]
struct Slot {
    /// When the burst's last line (its first refusal, or a report) was written, in ms; 0: no
    /// burst.
    since_ms: AtomicU64,
    /// Refusals counted since that line.
    count: AtomicU64,
}

/// Per-source bursts of refusals (see the module's documentation).
pub struct Bursts {
    slots: PerTenant<Slot>,
    every_ms: u64,
}

impl Bursts {
    /// `sources` slots to begin with (more are made for sources numbered beyond them); reports
    /// at most once per `every_ms` for each.
    pub fn new(sources: usize, every_ms: u64) -> Self {
        Bursts {
            slots: PerTenant::new((0..sources).map(|_| Slot::default())),
            every_ms: every_ms.max(1),
        }
    }

    /// Notes one refusal from `source` at `now_ms`.
    pub fn note(&self, source: usize, now_ms: u64) -> Line {
        let slot = self.slots.at(source);
        let since = slot.since_ms.load(Ordering::Acquire);
        if since == 0
            && slot
                .since_ms
                .compare_exchange(0, now_ms.max(1), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Line::First;
        }
        slot.count.fetch_add(1, Ordering::AcqRel);
        Line::Counted
    }

    /// The reports due at `now_ms`: every source whose last line is at least an interval old
    /// and which has had refusals since. A source with none since its last line ends its burst.
    /// With `all`, every source with refusals counted reports, due or not (at shutdown).
    pub fn due(&self, now_ms: u64, all: bool) -> Vec<Report> {
        let mut reports = vec![];
        for (source, slot) in self.slots.iter().enumerate() {
            let since = slot.since_ms.load(Ordering::Acquire);
            if since == 0 {
                // No burst; at shutdown, a count left by a refusal that raced its burst's end.
                let count = if all {
                    slot.count.swap(0, Ordering::AcqRel)
                } else {
                    0
                };
                if count > 0 {
                    reports.push(Report {
                        source,
                        count,
                        over_ms: 0,
                    });
                }
                continue;
            }
            if !all && now_ms.saturating_sub(since) < self.every_ms {
                continue;
            }
            if slot.count.load(Ordering::Acquire) == 0 {
                // Quiet for an interval: the burst is over. A refusal between the load and this
                // exchange is counted and reported after the next burst's first line.
                let _ =
                    slot.since_ms
                        .compare_exchange(since, 0, Ordering::AcqRel, Ordering::Acquire);
                continue;
            }
            if slot
                .since_ms
                .compare_exchange(since, now_ms.max(1), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let count = slot.count.swap(0, Ordering::AcqRel);
                if count > 0 {
                    reports.push(Report {
                        source,
                        count,
                        over_ms: now_ms.saturating_sub(since),
                    });
                }
            }
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_flood_is_one_line_then_one_report_per_interval() {
        let b = Bursts::new(2, 10_000);
        let t0 = 1_000_000;
        assert_eq!(b.note(0, t0), Line::First);
        for i in 1..=999 {
            assert_eq!(b.note(0, t0 + i), Line::Counted);
        }
        assert_eq!(b.due(t0 + 9_999, false), vec![], "not an interval yet");
        assert_eq!(
            b.due(t0 + 10_000, false),
            vec![Report {
                source: 0,
                count: 999,
                over_ms: 10_000
            }]
        );
        for i in 0..500 {
            assert_eq!(b.note(0, t0 + 10_001 + i), Line::Counted);
        }
        assert_eq!(b.due(t0 + 15_000, false), vec![]);
        assert_eq!(
            b.due(t0 + 20_500, false),
            vec![Report {
                source: 0,
                count: 500,
                over_ms: 10_500
            }]
        );
        // The flood stops: one quiet interval ends the burst without a line, and the next
        // refusal is logged in full again.
        assert_eq!(b.due(t0 + 31_000, false), vec![]);
        assert_eq!(b.note(0, t0 + 40_000), Line::First);
        assert_eq!(b.note(1, t0 + 40_000), Line::First, "sources are apart");
        assert_eq!(b.note(1, t0 + 40_001), Line::Counted);
        assert_eq!(
            b.due(t0 + 40_002, true),
            vec![Report {
                source: 1,
                count: 1,
                over_ms: 2
            }],
            "at shutdown every count is reported, due or not"
        );
    }

    #[test]
    fn concurrent_refusals_are_each_logged_or_reported_exactly_once() {
        let b = Arc::new(Bursts::new(3, 5));
        let clock = Arc::new(AtomicU64::new(1));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let (b, clock) = (b.clone(), clock.clone());
                std::thread::spawn(move || {
                    let mut first = [0u64; 3];
                    for n in 0..50_000u64 {
                        let source = ((n + i) % 3) as usize;
                        let now = clock.fetch_add(1, Ordering::Relaxed) / 40;
                        if b.note(source, now) == Line::First {
                            first[source] += 1;
                        }
                    }
                    first
                })
            })
            .collect();
        let reporter = {
            let (b, clock) = (b.clone(), clock.clone());
            std::thread::spawn(move || {
                let mut reported = [0u64; 3];
                while clock.load(Ordering::Relaxed) < 200_000 {
                    for r in b.due(clock.load(Ordering::Relaxed) / 40, false) {
                        reported[r.source] += r.count;
                    }
                    std::thread::yield_now();
                }
                reported
            })
        };
        let mut first = [0u64; 3];
        for t in threads {
            for (f, n) in first.iter_mut().zip(t.join().unwrap()) {
                *f += n;
            }
        }
        let mut reported = reporter.join().unwrap();
        for r in b.due(u64::MAX, true) {
            reported[r.source] += r.count;
        }
        // Left counted after the last report only if a quiet interval raced a refusal; the
        // final `due(.., true)` takes it.
        for source in 0..3 {
            assert_eq!(
                first[source] + reported[source],
                (0..4u64)
                    .map(|i| (0..50_000u64)
                        .filter(|n| (n + i) % 3 == source as u64)
                        .count() as u64)
                    .sum::<u64>(),
                "source {source}: every refusal is a full line or in a report"
            );
            assert!(
                first[source] < 1_000,
                "source {source}: {} full lines for 66,667 refusals",
                first[source]
            );
        }
    }
}
