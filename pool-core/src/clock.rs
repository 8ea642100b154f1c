//! The cheap clock behind a connection's bookkeeping.
//!
//! Every checkout and every return stamps the connection (when it was last used, whether its
//! lifetime is over, whether it idled long enough to need a check). Reading
//! [`std::time::Instant`] costs about 20–25 ns on common Linux machines, which is half of what
//! a whole uncontended checkout should cost. Those stamps only need millisecond-ish precision,
//! so they use the operating system's coarse monotonic clock instead (`CLOCK_MONOTONIC_COARSE`
//! on Linux: a few ns, resolution one scheduler tick, 1–10 ms).
//!
//! Deadlines of waiting callers and their wait times need microseconds, not ticks: they use
//! [`Moment`], a precise clock that is cheaper to read than `Instant`. Everything a user sees
//! as an `Instant` is a `std::time::Instant`; [`Tick::to_instant`] converts when a stamp leaves
//! the pool.

use std::time::{Duration, Instant};

/// A reading of the precise clock that times waiting callers (their deadlines, and how long
/// they waited): `quanta`'s clock. Where the CPU has an invariant time-stamp counter (x86-64)
/// it reads that counter, calibrated once per process against the OS monotonic clock: about
/// 10 ns a read on the machines in BENCHMARKS.md against 23 ns for `Instant::now()`, and a
/// caller that queues reads it twice. Elsewhere it reads the OS monotonic clock.
pub(crate) type Moment = quanta::Instant;

/// Calibrates the precise clock now, if this process has not yet: the first reading does it
/// (well under a millisecond here, up to 200 ms by quanta's own account), and it should not be
/// a waiting caller that pays for it. Called when a pool is built.
pub(crate) fn calibrate() {
    let _ = Moment::now();
}

/// A reading of the coarse monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tick(coarsetime::Instant);

impl Tick {
    /// Now, to within one tick of the coarse clock.
    pub(crate) fn now() -> Tick {
        // Not `coarsetime::Instant::now()`: that also stores the reading in a global, a write
        // every thread would contend on.
        Tick(coarsetime::Instant::now_without_cache_update())
    }

    /// How long after `earlier` this is; zero if `earlier` is later.
    pub(crate) fn since(self, earlier: Tick) -> Duration {
        (self.0 - earlier.0).into()
    }

    /// This plus `d`, or `None` if that is beyond what the clock can represent.
    pub(crate) fn checked_add(self, d: Duration) -> Option<Tick> {
        self.0.checked_add(d.into()).map(Tick)
    }

    /// The same moment as a `std::time::Instant`, to within one tick.
    pub(crate) fn to_instant(self) -> Instant {
        let now = Instant::now();
        let ago = Tick::now().since(self);
        now.checked_sub(ago).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_forward_and_converts() {
        let start = Tick::now();
        std::thread::sleep(Duration::from_millis(30));
        let later = Tick::now();
        assert!(later > start);
        let waited = later.since(start);
        assert!(waited >= Duration::from_millis(15), "{waited:?}");
        assert_eq!(start.since(later), Duration::ZERO);
        assert!(start.to_instant().elapsed() >= Duration::from_millis(15));
        assert!(start.checked_add(Duration::from_secs(1)).unwrap() > later);
        assert!(start.checked_add(Duration::MAX).is_none());
    }

    #[test]
    fn precise_clock_agrees_with_instant() {
        calibrate();
        let (moment, instant) = (Moment::now(), Instant::now());
        std::thread::sleep(Duration::from_millis(50));
        let (by_moment, by_instant) = (moment.elapsed(), instant.elapsed());
        let apart = by_moment.abs_diff(by_instant);
        assert!(
            apart < Duration::from_millis(2),
            "{by_moment:?} vs {by_instant:?}"
        );
        assert!(Moment::now() >= moment);
    }
}
