//! The [`Manager`] trait: how the pool creates, checks and discards backend connections.

use std::future::Future;
use std::time::{Duration, Instant};

/// Creates, health-checks and inspects the connections of one backend.
///
/// A pool owns one manager. Implement it for your backend and the pool brings queueing,
/// stretching, shrinking, reconnecting and timeouts. Methods return `impl Future + Send`, so an
/// implementation writes plain `async fn`s and no future is boxed.
///
/// Only [`create`](Manager::create) is required. The pool never holds one of its locks while it
/// runs manager code, and it contains a panic in any of these methods: the connection involved
/// is dropped and never reused, the slot is freed.
///
/// # Examples
///
/// ```
/// use momopool::{Manager, Metrics};
///
/// /// Hands out numbered fake connections.
/// #[derive(Debug, Default)]
/// struct Counter(std::sync::atomic::AtomicU32);
///
/// impl Manager for Counter {
///     type Connection = u32;
///     type Error = std::io::Error;
///
///     async fn create(&self) -> Result<u32, std::io::Error> {
///         Ok(self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
///     }
///
///     async fn check(&self, _conn: &mut u32, _metrics: &Metrics) -> Result<(), std::io::Error> {
///         Ok(())
///     }
/// }
/// ```
pub trait Manager: Send + Sync + 'static {
    /// The backend connection the pool hands out.
    type Connection: Send + 'static;
    /// What creating or checking a connection can fail with.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Opens a new connection.
    ///
    /// The pool bounds it with the create timeout and runs it in a task of its own, so a caller
    /// that stops waiting does not abort a connect half-way.
    fn create(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;

    /// Checks that an idle connection still works before it is handed out again.
    ///
    /// Called when the pool's [`Validation`](crate::Validation) policy asks for it, when the
    /// connection was marked by [`needs_check`](Manager::needs_check), or when a "server gone"
    /// error made the pool distrust every older connection. An error discards the connection
    /// and the caller is served with another one. The default does nothing.
    fn check(
        &self,
        conn: &mut Self::Connection,
        metrics: &Metrics,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = (conn, metrics);
        async { Ok(()) }
    }

    /// A cheap, synchronous look at a connection, when it comes back to the pool and before it
    /// is handed out again: `true` discards it. The default says `false`.
    fn is_broken(&self, conn: &mut Self::Connection) -> bool {
        let _ = conn;
        false
    }

    /// Asked when a connection comes back and again before it is handed out: `true` means
    /// [`check`](Manager::check) must run before anyone uses it, whatever the validation policy
    /// says: it carries state to clear (an open transaction, for example) or shows signs of
    /// trouble worth a round trip. Must be cheap and must not block. The default says
    /// `false`.
    fn needs_check(&self, conn: &mut Self::Connection) -> bool {
        let _ = conn;
        false
    }

    /// Asked only about a connection that [`is_broken`](Manager::is_broken) found broken:
    /// `true` means it died because the server went away (a restart, a failover), so every
    /// older connection is probably dead too and the pool checks each one before reusing it.
    /// The default says `false`.
    fn is_server_gone(&self, conn: &mut Self::Connection) -> bool {
        let _ = conn;
        false
    }

    /// Sorts an error from [`create`](Manager::create) or [`check`](Manager::check).
    ///
    /// The pool retries transient connect errors with backoff while callers wait, fails every
    /// waiting caller at once on a permanent one (a wrong password will not fix itself), and
    /// after a server-gone error checks every older connection before reuse. The default says
    /// [`ErrorClass::Transient`].
    fn classify(&self, error: &Self::Error) -> ErrorClass {
        let _ = error;
        ErrorClass::Transient
    }

    /// Told when a connection leaves the pool for good, just before it is dropped (or handed
    /// to the caller, for [`Removal::Detached`]). The default does nothing.
    fn removed(&self, conn: &mut Self::Connection, reason: Removal) {
        let _ = (conn, reason);
    }
}

/// How the pool should treat a backend error; see [`Manager::classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// May succeed if tried again later: refused or reset connections, timeouts, overload.
    Transient,
    /// The server went away: other connections made before it are probably dead too.
    ServerGone,
    /// Will fail the same way until someone changes the configuration: authentication
    /// failures, an unknown database. Waiting callers get the error at once.
    Permanent,
}

/// Why a connection left the pool; passed to [`Manager::removed`] and counted in
/// [`Statistics::closed`](crate::Statistics::closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Removal {
    /// [`Manager::is_broken`] said so, or the caller marked it broken.
    Broken,
    /// It reached its maximum lifetime.
    Lifetime,
    /// It sat idle longer than the idle timeout while the pool was above its minimum size.
    Idle,
    /// [`Manager::check`] failed or timed out.
    FailedCheck,
    /// A hook failed or some manager code panicked while it was being prepared.
    Error,
    /// Replaced by [`Pool::drain`](crate::Pool::drain), shed by
    /// [`Pool::resize`](crate::Pool::resize) or rejected by [`Pool::retain`](crate::Pool::retain).
    Retired,
    /// The pool was closed.
    Closed,
    /// Taken out of the pool by [`Pooled::detach`](crate::Pooled::detach).
    Detached,
}

impl Removal {
    pub(crate) const ALL: [Removal; 8] = [
        Removal::Broken,
        Removal::Lifetime,
        Removal::Idle,
        Removal::FailedCheck,
        Removal::Error,
        Removal::Retired,
        Removal::Closed,
        Removal::Detached,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// What the pool knows about one connection's life, given to [`Manager::check`] and hooks.
///
/// # Examples
///
/// ```
/// # use momopool::Metrics;
/// fn worth_a_ping(metrics: &Metrics) -> bool {
///     metrics.idle_for() > std::time::Duration::from_secs(1) || metrics.times_used() == 0
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metrics {
    pub(crate) id: u64,
    pub(crate) created: Instant,
    pub(crate) last_used: Instant,
    pub(crate) times_used: u64,
}

impl Metrics {
    /// A number unique to this connection within its pool, in creation order.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// When the connection was created.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// When the connection was last returned to the pool (its creation time if it was never
    /// used).
    pub fn last_used(&self) -> Instant {
        self.last_used
    }

    /// How many times the connection has been handed out so far.
    pub fn times_used(&self) -> u64 {
        self.times_used
    }

    /// How long the connection has existed.
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    /// How long since the connection was last returned.
    pub fn idle_for(&self) -> Duration {
        self.last_used.elapsed()
    }
}
