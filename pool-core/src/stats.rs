//! What the pool reports about itself: [`Status`] (now) and [`Statistics`] (since it was built).

use crate::manager::Removal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A snapshot of the pool's connections and callers.
///
/// `size` counts connections that exist or are being opened: `idle + in_use + creating`.
/// Connections being checked before they are handed out count as in use.
///
/// # Examples
///
/// ```
/// # use momopool::Status;
/// fn busy(status: &Status) -> bool {
///     status.idle == 0 && status.waiting > 0
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Status {
    /// Connections that exist or are being opened.
    pub size: usize,
    /// Connections ready to be handed out.
    pub idle: usize,
    /// Connections handed out (or being checked before being handed out).
    pub in_use: usize,
    /// Connects in flight.
    pub creating: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
    /// The current minimum size.
    pub min_size: usize,
    /// The current maximum size.
    pub max_size: usize,
}

/// Cumulative counters since the pool was built.
///
/// # Examples
///
/// ```
/// # use momopool::Statistics;
/// fn report(stats: &Statistics) -> String {
///     format!(
///         "{} gets ({} waited), {} timeouts, {} created",
///         stats.gets_direct + stats.gets_waited,
///         stats.gets_waited,
///         stats.gets_timed_out,
///         stats.created,
///     )
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Statistics {
    /// Gets served at once from an idle connection.
    pub gets_direct: u64,
    /// Gets that had to wait, then were served.
    pub gets_waited: u64,
    /// Gets that gave up at their deadline.
    pub gets_timed_out: u64,
    /// Gets whose future was dropped while waiting.
    pub gets_cancelled: u64,
    /// Gets refused at once because `max_waiting` callers were already waiting.
    pub gets_rejected_busy: u64,
    /// How long served waiting gets waited.
    pub wait_times: WaitHistogram,
    /// Connections opened.
    pub created: u64,
    /// Connects that failed (errors, timeouts, panics, `post_create` failures).
    pub create_errors: u64,
    /// Checks run before reuse or in the background.
    pub checks: u64,
    /// Connections closed, by reason.
    pub closed: ClosedCounts,
    /// Times a "server gone" error made the pool distrust every older connection.
    pub revalidations: u64,
    /// Connections reported as held longer than `leak_threshold`.
    pub leaks_reported: u64,
}

/// Connections that left the pool, by [`Removal`] reason.
///
/// # Examples
///
/// ```
/// # use momopool::{ClosedCounts, Removal};
/// let counts = ClosedCounts::default();
/// assert_eq!(counts.get(Removal::Broken), 0);
/// assert_eq!(counts.total(), 0);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClosedCounts {
    counts: [u64; Removal::ALL.len()],
}

impl ClosedCounts {
    /// How many connections left for this reason.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, Pooled, Removal, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// let pool = Pool::builder(Numbers).min_size(0).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let mut conn = pool.get().await.unwrap();
    ///     Pooled::mark_broken(&mut conn);
    /// });
    /// let closed = pool.statistics().closed;
    /// assert_eq!(closed.get(Removal::Broken), 1);
    /// assert_eq!(closed.get(Removal::Idle), 0);
    /// ```
    pub fn get(&self, reason: Removal) -> u64 {
        self.counts[reason.index()]
    }

    /// How many connections left, for any reason.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, Pooled, Removal, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// let pool = Pool::builder(Numbers).min_size(0).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let mut broken = pool.get().await.unwrap();
    ///     Pooled::mark_broken(&mut broken);
    ///     drop(broken);
    ///     let _kept: u64 = Pooled::detach(pool.get().await.unwrap());
    /// });
    /// let closed = pool.statistics().closed;
    /// assert_eq!(closed.get(Removal::Detached), 1);
    /// assert_eq!(closed.total(), 2);
    /// ```
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub(crate) fn add(&mut self, reason: Removal) {
        self.counts[reason.index()] += 1;
    }
}

/// Wait times of served waiting gets, in power-of-two buckets of microseconds.
///
/// Bucket `i` counts waits shorter than `2^i` µs (and at least `2^(i-1)` µs); the last
/// bucket also takes everything longer.
///
/// # Examples
///
/// ```
/// # use momopool::WaitHistogram;
/// let histogram = WaitHistogram::default();
/// assert_eq!(histogram.count(), 0);
/// assert_eq!(histogram.quantile(0.99), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WaitHistogram {
    buckets: [u64; WaitHistogram::BUCKETS],
}

impl WaitHistogram {
    /// Number of buckets: the last one starts at about 4.5 minutes.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::WaitHistogram;
    /// use std::time::Duration;
    ///
    /// assert_eq!(WaitHistogram::default().buckets().len(), WaitHistogram::BUCKETS);
    /// let last_starts_at = WaitHistogram::upper_bound(WaitHistogram::BUCKETS - 2);
    /// assert!(last_starts_at > Duration::from_secs(4 * 60));
    /// ```
    pub const BUCKETS: usize = 30;

    fn bucket(waited: Duration) -> usize {
        let micros = waited.as_micros().min(u64::MAX as u128) as u64;
        let bucket = (u64::BITS - micros.leading_zeros()) as usize;
        bucket.min(Self::BUCKETS - 1)
    }

    /// Counts per bucket.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::WaitHistogram;
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # use std::time::Duration;
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).max_size(1).runtime(ThreadRuntime).build().unwrap();
    /// # futures::executor::block_on(async {
    /// #     pool.warm_up().await.unwrap();
    /// #     let held = pool.get().await.unwrap();
    /// #     let mut waiting = std::pin::pin!(pool.get());
    /// #     assert!(futures::poll!(waiting.as_mut()).is_pending());
    /// #     std::thread::sleep(Duration::from_millis(10));
    /// #     drop(held);
    /// #     drop(waiting.await.unwrap());
    /// # });
    /// // One caller waited about 10 ms for the pool's only connection.
    /// let histogram = pool.statistics().wait_times;
    /// let waits: Vec<(std::time::Duration, u64)> = histogram
    ///     .buckets()
    ///     .iter()
    ///     .enumerate()
    ///     .filter(|&(_, &n)| n > 0)
    ///     .map(|(i, &n)| (WaitHistogram::upper_bound(i), n))
    ///     .collect();
    /// assert_eq!(waits.len(), 1);
    /// assert!(waits[0].0 > Duration::from_millis(10));
    /// ```
    pub fn buckets(&self) -> &[u64; WaitHistogram::BUCKETS] {
        &self.buckets
    }

    /// The upper bound of bucket `i`.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::WaitHistogram;
    /// use std::time::Duration;
    ///
    /// assert_eq!(WaitHistogram::upper_bound(0), Duration::from_micros(1));
    /// assert_eq!(WaitHistogram::upper_bound(10), Duration::from_micros(1024));
    /// ```
    pub fn upper_bound(i: usize) -> Duration {
        Duration::from_micros(1u64 << i.min(63))
    }

    /// Number of recorded waits.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # use std::time::Duration;
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).max_size(1).runtime(ThreadRuntime).build().unwrap();
    /// # futures::executor::block_on(async {
    /// #     pool.warm_up().await.unwrap();
    /// #     let held = pool.get().await.unwrap();
    /// #     let mut waiting = std::pin::pin!(pool.get());
    /// #     assert!(futures::poll!(waiting.as_mut()).is_pending());
    /// #     std::thread::sleep(Duration::from_millis(10));
    /// #     drop(held);
    /// #     drop(waiting.await.unwrap());
    /// # });
    /// // One caller waited about 10 ms for the pool's only connection.
    /// let stats = pool.statistics();
    /// assert_eq!(stats.wait_times.count(), 1);
    /// assert_eq!(stats.wait_times.count(), stats.gets_waited);
    /// ```
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The upper bound of the bucket holding quantile `q` (0 to 1), or `None` when empty.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # use std::time::Duration;
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// let pool = Pool::builder(Numbers).max_size(1).runtime(ThreadRuntime).build().unwrap();
    /// assert_eq!(pool.statistics().wait_times.quantile(0.5), None);
    ///
    /// futures::executor::block_on(async {
    ///     pool.warm_up().await.unwrap(); // the first `get` need not wait for a connect
    ///     let held = pool.get().await.unwrap();
    ///     // A second caller queues for the only connection...
    ///     let mut waiting = std::pin::pin!(pool.get());
    ///     assert!(futures::poll!(waiting.as_mut()).is_pending());
    ///     // ...and gets it about 10 ms later.
    ///     std::thread::sleep(Duration::from_millis(10));
    ///     drop(held);
    ///     drop(waiting.await.unwrap());
    /// });
    ///
    /// let median = pool.statistics().wait_times.quantile(0.5).unwrap();
    /// assert!(median > Duration::from_millis(10)); // the bucket's upper bound
    /// ```
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Self::upper_bound(i));
            }
        }
        Some(Self::upper_bound(Self::BUCKETS - 1))
    }
}

/// Where waiting callers record how long they waited: each caller adds to it itself, after
/// it has its connection, so no clock is read under the pool lock.
#[derive(Debug, Default)]
pub(crate) struct WaitRecorder {
    buckets: [AtomicU64; WaitHistogram::BUCKETS],
}

impl WaitRecorder {
    pub(crate) fn record(&self, waited: Duration) {
        self.buckets[WaitHistogram::bucket(waited)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> WaitHistogram {
        WaitHistogram {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_power_of_two() {
        let recorder = WaitRecorder::default();
        recorder.record(Duration::ZERO);
        recorder.record(Duration::from_micros(3));
        recorder.record(Duration::from_millis(1));
        recorder.record(Duration::from_secs(100_000));
        let h = recorder.snapshot();
        assert_eq!(h.buckets()[0], 1);
        assert_eq!(h.buckets()[2], 1);
        assert_eq!(h.buckets()[10], 1);
        assert_eq!(h.buckets()[WaitHistogram::BUCKETS - 1], 1);
        assert_eq!(h.count(), 4);
        assert_eq!(h.quantile(0.5), Some(Duration::from_micros(4)));
        assert_eq!(h.quantile(0.75), Some(Duration::from_micros(1024)));
    }
}
