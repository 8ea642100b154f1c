//! [`PoolConfig`]: every setting of a pool, with its default and its validation.

use crate::error::BuildError;
use std::time::Duration;

/// Every setting of a pool in one plain struct.
///
/// Build a pool from it with [`PoolBuilder::config`](crate::PoolBuilder::config), or set fields
/// one by one on the builder. With the `serde` feature it can be read from a configuration file
/// (missing fields take their defaults; durations use serde's `{ secs, nanos }` form).
///
/// | field | default | meaning |
/// |---|---|---|
/// | `min_size` | 1 | connections kept open even when idle (Momoko's `size`) |
/// | `max_size` | 10 | the stretch limit: connections that may exist or be opening at once |
/// | `max_connecting` | 4 | connects in flight at once (storm control) |
/// | `max_waiting` | none | callers allowed to queue; beyond it `get()` fails at once with [`PoolError::Busy`](crate::PoolError::Busy) |
/// | `wait_timeout` | 30 s | the whole of a `get()`: waiting, connecting, checking |
/// | `create_timeout` | 10 s | one connect, `post_create` hook included |
/// | `recycle_timeout` | 5 s | one check of an idle connection, recycle hooks included |
/// | `validation` | idle > 500 ms | when to [`check`](crate::Manager::check) a connection before reuse |
/// | `keepalive_interval` | none | check idle connections this idle, in the background |
/// | `idle_timeout` | 10 min | close connections idle this long while above `min_size` (Momoko's `shrink_delay`) |
/// | `max_lifetime` | 30 min | retire connections this old (in use: when returned) |
/// | `lifetime_jitter` | 0.1 | retire up to this fraction of `max_lifetime` early, at random, so connections made together do not expire together |
/// | `maintenance_interval` | 5 s | how often idle, lifetime, keepalive and leak checks run (Momoko's `shrink_period`) |
/// | `reconnect_interval` | 250 ms | first delay after a failed connect; doubles, with jitter, up to `reconnect_max` |
/// | `reconnect_max` | 10 s | longest delay between connect attempts |
/// | `reuse` | LIFO | which idle connection is reused first |
/// | `fail_fast` | false | while the backend is known down (or the pool is suspended), fail `get()` at once instead of waiting |
/// | `leak_threshold` | none | report connections held longer than this, with where they were taken |
///
/// # Examples
///
/// ```
/// use momopool::PoolConfig;
/// use std::time::Duration;
///
/// let config = PoolConfig {
///     min_size: 2,
///     max_size: 20,
///     wait_timeout: Some(Duration::from_secs(5)),
///     ..PoolConfig::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct PoolConfig {
    /// Connections kept open even when idle. The pool fills up to it in the background; await
    /// [`Pool::warm_up`](crate::Pool::warm_up) to wait for it.
    pub min_size: usize,
    /// The most connections that may exist or be opening at the same time.
    pub max_size: usize,
    /// The most connects in flight at the same time.
    pub max_connecting: usize,
    /// The most callers that may wait at once; `None` for no limit.
    pub max_waiting: Option<usize>,
    /// The default deadline of [`Pool::get`](crate::Pool::get); `None` waits for ever.
    pub wait_timeout: Option<Duration>,
    /// The deadline of one connect, including the `post_create` hook; `None` for no limit.
    pub create_timeout: Option<Duration>,
    /// The deadline of one check of an idle connection, including recycle hooks; `None` for
    /// no limit.
    pub recycle_timeout: Option<Duration>,
    /// When to check a connection before handing it out again.
    pub validation: Validation,
    /// Check idle connections that have been idle this long in the background; `None` to
    /// leave idle connections alone.
    pub keepalive_interval: Option<Duration>,
    /// Close connections idle this long while the pool is above `min_size`; `None` to keep
    /// them.
    pub idle_timeout: Option<Duration>,
    /// Retire connections this old; `None` for no limit.
    pub max_lifetime: Option<Duration>,
    /// The fraction (0 to below 1) of `max_lifetime` by which a connection may retire early,
    /// chosen at random per connection.
    pub lifetime_jitter: f64,
    /// How often the background maintenance pass runs.
    pub maintenance_interval: Duration,
    /// The first delay after a failed connect.
    pub reconnect_interval: Duration,
    /// The longest delay between connect attempts.
    pub reconnect_max: Duration,
    /// Which idle connection to reuse first.
    pub reuse: Reuse,
    /// Fail `get()` at once with [`PoolError::Unavailable`](crate::PoolError::Unavailable)
    /// while the backend is known down, and with
    /// [`PoolError::Suspended`](crate::PoolError::Suspended) while the pool is suspended.
    pub fail_fast: bool,
    /// Report (as a `tracing` warning and in the statistics) connections held longer than this.
    pub leak_threshold: Option<Duration>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min_size: 1,
            max_size: 10,
            max_connecting: 4,
            max_waiting: None,
            wait_timeout: Some(Duration::from_secs(30)),
            create_timeout: Some(Duration::from_secs(10)),
            recycle_timeout: Some(Duration::from_secs(5)),
            validation: Validation::default(),
            keepalive_interval: None,
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            lifetime_jitter: 0.1,
            maintenance_interval: Duration::from_secs(5),
            reconnect_interval: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(10),
            reuse: Reuse::Lifo,
            fail_fast: false,
            leak_threshold: None,
        }
    }
}

impl PoolConfig {
    /// Checks every setting, naming the first wrong one.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the field when a size is out of range (`max_size` 0, `min_size`
    /// above `max_size`, `max_connecting` 0) or a duration is zero where that makes no sense.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::PoolConfig;
    ///
    /// let config = PoolConfig { max_size: 0, ..PoolConfig::default() };
    /// assert_eq!(config.validate().unwrap_err().field(), "max_size");
    /// ```
    pub fn validate(&self) -> Result<(), BuildError> {
        check_sizes(self.min_size, self.max_size)?;
        if self.max_connecting == 0 {
            return Err(BuildError::new("max_connecting", "must be at least 1"));
        }
        let nonzero = [
            ("create_timeout", self.create_timeout),
            ("recycle_timeout", self.recycle_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
            ("leak_threshold", self.leak_threshold),
            ("maintenance_interval", Some(self.maintenance_interval)),
            ("reconnect_interval", Some(self.reconnect_interval)),
        ];
        for (field, value) in nonzero {
            if value == Some(Duration::ZERO) {
                return Err(BuildError::new(
                    field,
                    "must be greater than zero (use None for no limit where allowed)",
                ));
            }
        }
        if self.reconnect_max < self.reconnect_interval {
            return Err(BuildError::new(
                "reconnect_max",
                format!(
                    "must be at least reconnect_interval ({:?})",
                    self.reconnect_interval
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.lifetime_jitter) {
            return Err(BuildError::new(
                "lifetime_jitter",
                "must be a fraction from 0 up to (not including) 1",
            ));
        }
        Ok(())
    }
}

pub(crate) fn check_sizes(min_size: usize, max_size: usize) -> Result<(), BuildError> {
    if max_size == 0 {
        return Err(BuildError::new("max_size", "must be at least 1"));
    }
    if min_size > max_size {
        return Err(BuildError::new(
            "min_size",
            format!("must not exceed max_size ({max_size})"),
        ));
    }
    Ok(())
}

/// When the pool checks a connection with [`Manager::check`](crate::Manager::check) before
/// handing it out again.
///
/// Connections the manager marked with [`needs_check`](crate::Manager::needs_check), and
/// every connection older than a "server gone" error, are checked whatever the policy.
///
/// # Examples
///
/// ```
/// use momopool::Validation;
/// use std::time::Duration;
///
/// assert_eq!(Validation::default(), Validation::IdleLongerThan(Duration::from_millis(500)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum Validation {
    /// Check on every checkout of an idle connection: safest, one backend round trip each.
    Always,
    /// Check only connections idle longer than this: a connection used a moment ago is very
    /// likely alive, one idle for minutes may have been cut. Idle time is measured with the
    /// system's coarse clock (see [`Metrics::last_used`](crate::Metrics::last_used)), so a
    /// threshold below its tick (1 to 10 ms) behaves like one tick.
    IdleLongerThan(Duration),
    /// Never check on checkout; rely on [`Manager::is_broken`](crate::Manager::is_broken).
    Never,
}

impl Default for Validation {
    fn default() -> Self {
        Validation::IdleLongerThan(Duration::from_millis(500))
    }
}

/// Which idle connection the pool hands out first.
///
/// # Examples
///
/// ```
/// use momopool::Reuse;
/// assert_eq!(Reuse::default(), Reuse::Lifo);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum Reuse {
    /// The most recently returned first: keeps a few connections warm and lets the rest idle
    /// out when load drops.
    #[default]
    Lifo,
    /// The least recently returned first: spreads use over every connection.
    Fifo,
}
