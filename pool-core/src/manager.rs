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
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::Manager;
    ///
    /// #[derive(Debug)]
    /// struct Greeter;
    ///
    /// impl Manager for Greeter {
    ///     type Connection = String;
    ///     type Error = std::io::Error;
    ///
    ///     async fn create(&self) -> Result<String, std::io::Error> {
    ///         Ok("hello".to_string()) // a real manager opens a socket here
    ///     }
    /// }
    ///
    /// let conn = futures::executor::block_on(Greeter.create()).unwrap();
    /// assert_eq!(conn, "hello");
    /// ```
    fn create(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;

    /// Checks that an idle connection still works before it is handed out again.
    ///
    /// Called when the pool's [`Validation`](crate::Validation) policy asks for it, when the
    /// connection was marked by [`needs_check`](Manager::needs_check), or when a "server gone"
    /// error made the pool distrust every older connection. An error discards the connection
    /// and the caller is served with another one. The default does nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::{Manager, Metrics, Pool, Removal, ThreadRuntime, Validation};
    /// use std::io::{Error, ErrorKind};
    ///
    /// #[derive(Debug)]
    /// struct Link {
    ///     server_alive: bool,
    /// }
    ///
    /// #[derive(Debug)]
    /// struct Pinged;
    ///
    /// impl Manager for Pinged {
    ///     type Connection = Link;
    ///     type Error = Error;
    ///
    ///     async fn create(&self) -> Result<Link, Error> {
    ///         Ok(Link { server_alive: true })
    ///     }
    ///
    ///     async fn check(&self, conn: &mut Link, _metrics: &Metrics) -> Result<(), Error> {
    ///         // A real check sends a ping and waits for the answer.
    ///         if conn.server_alive {
    ///             Ok(())
    ///         } else {
    ///             Err(Error::new(ErrorKind::BrokenPipe, "ping failed"))
    ///         }
    ///     }
    /// }
    ///
    /// let pool = Pool::builder(Pinged)
    ///     .max_size(1)
    ///     .validation(Validation::Always)
    ///     .runtime(ThreadRuntime)
    ///     .build()
    ///     .unwrap();
    /// futures::executor::block_on(async {
    ///     pool.get().await.unwrap().server_alive = false; // cut off while idle
    ///     // The check finds out, so the caller gets a new connection instead.
    ///     assert!(pool.get().await.unwrap().server_alive);
    /// });
    /// assert_eq!(pool.statistics().closed.get(Removal::FailedCheck), 1);
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::{Manager, Pool, Removal, ThreadRuntime};
    ///
    /// #[derive(Debug)]
    /// struct Link {
    ///     closed: bool,
    /// }
    ///
    /// #[derive(Debug)]
    /// struct Links;
    ///
    /// impl Manager for Links {
    ///     type Connection = Link;
    ///     type Error = std::io::Error;
    ///
    ///     async fn create(&self) -> Result<Link, std::io::Error> {
    ///         Ok(Link { closed: false })
    ///     }
    ///
    ///     fn is_broken(&self, conn: &mut Link) -> bool {
    ///         conn.closed
    ///     }
    /// }
    ///
    /// let pool = Pool::builder(Links).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let mut conn = pool.get().await.unwrap();
    ///     conn.closed = true; // say the peer hung up
    /// });
    /// assert_eq!(pool.statistics().closed.get(Removal::Broken), 1);
    /// ```
    fn is_broken(&self, conn: &mut Self::Connection) -> bool {
        let _ = conn;
        false
    }

    /// Asked before an idle connection is handed out (not when it comes back): `true` means
    /// [`check`](Manager::check) must run before anyone uses it, whatever the validation policy
    /// says: it carries state to clear (an open transaction, for example) or shows signs of
    /// trouble worth a round trip. Must be cheap and must not block. The default says
    /// `false`.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::{Manager, Metrics, Pool, ThreadRuntime, Validation};
    ///
    /// #[derive(Debug)]
    /// struct Session {
    ///     in_transaction: bool,
    /// }
    ///
    /// #[derive(Debug)]
    /// struct Sessions;
    ///
    /// impl Manager for Sessions {
    ///     type Connection = Session;
    ///     type Error = std::io::Error;
    ///
    ///     async fn create(&self) -> Result<Session, std::io::Error> {
    ///         Ok(Session { in_transaction: false })
    ///     }
    ///
    ///     fn needs_check(&self, conn: &mut Session) -> bool {
    ///         conn.in_transaction
    ///     }
    ///
    ///     async fn check(&self, conn: &mut Session, _: &Metrics) -> Result<(), std::io::Error> {
    ///         conn.in_transaction = false; // a real manager sends ROLLBACK
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let pool = Pool::builder(Sessions)
    ///     .max_size(1)
    ///     .validation(Validation::Never)
    ///     .runtime(ThreadRuntime)
    ///     .build()
    ///     .unwrap();
    /// futures::executor::block_on(async {
    ///     pool.get().await.unwrap().in_transaction = true; // returned mid-transaction
    ///     assert!(!pool.get().await.unwrap().in_transaction);
    /// });
    /// assert_eq!(pool.statistics().checks, 1);
    /// ```
    fn needs_check(&self, conn: &mut Self::Connection) -> bool {
        let _ = conn;
        false
    }

    /// Asked instead of [`needs_check`](Manager::needs_check) when the connection goes
    /// straight from the caller who just returned it to a caller who was waiting, without
    /// sitting idle in between. The default asks `needs_check`.
    ///
    /// A manager whose `needs_check` looks for trouble that can only arrive while a
    /// connection sits idle (a socket peek for a server's goodbye, say) can skip that here
    /// and keep the part about state the last borrower left behind. Must be cheap and must
    /// not block.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::{Manager, Metrics, Pool, ThreadRuntime, Validation};
    /// use std::sync::atomic::{AtomicU32, Ordering};
    ///
    /// #[derive(Debug, Default)]
    /// struct Links {
    ///     peeks: AtomicU32,
    /// }
    ///
    /// impl Manager for Links {
    ///     type Connection = u32;
    ///     type Error = std::io::Error;
    ///
    ///     async fn create(&self) -> Result<u32, std::io::Error> {
    ///         Ok(1)
    ///     }
    ///
    ///     fn needs_check(&self, _conn: &mut u32) -> bool {
    ///         self.peeks.fetch_add(1, Ordering::Relaxed); // a real manager asks the socket
    ///         false
    ///     }
    ///
    ///     fn needs_check_on_handover(&self, _conn: &mut u32) -> bool {
    ///         false // it was in use a moment ago: nothing can have arrived unseen
    ///     }
    /// }
    ///
    /// let pool = Pool::builder(Links::default())
    ///     .max_size(1)
    ///     .validation(Validation::Never)
    ///     .runtime(ThreadRuntime)
    ///     .build()
    ///     .unwrap();
    /// let peeks = || pool.manager().peeks.load(Ordering::Relaxed);
    /// futures::executor::block_on(async {
    ///     let held = pool.get().await.unwrap();
    ///     let before = peeks();
    ///     // The second caller queues first, then the holder gives the connection back.
    ///     let (conn, ()) = futures::join!(pool.get(), async move { drop(held) });
    ///     drop(conn.unwrap()); // handed over: no peek, then returned to idle
    ///     assert_eq!(peeks(), before);
    ///     drop(pool.get().await.unwrap()); // from idle: one peek
    ///     assert_eq!(peeks(), before + 1);
    /// });
    /// ```
    fn needs_check_on_handover(&self, conn: &mut Self::Connection) -> bool {
        self.needs_check(conn)
    }

    /// Asked only about a connection that [`is_broken`](Manager::is_broken) found broken:
    /// `true` means it died because the server went away (a restart, a failover), so every
    /// older connection is probably dead too and the pool checks each one before reusing it.
    /// The default says `false`.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::{Manager, Pool, ThreadRuntime};
    ///
    /// #[derive(Debug)]
    /// enum State {
    ///     Open,
    ///     ResetByPeer,
    /// }
    ///
    /// #[derive(Debug)]
    /// struct Links;
    ///
    /// impl Manager for Links {
    ///     type Connection = State;
    ///     type Error = std::io::Error;
    ///
    ///     async fn create(&self) -> Result<State, std::io::Error> {
    ///         Ok(State::Open)
    ///     }
    ///
    ///     fn is_broken(&self, conn: &mut State) -> bool {
    ///         !matches!(conn, State::Open)
    ///     }
    ///
    ///     fn is_server_gone(&self, conn: &mut State) -> bool {
    ///         matches!(conn, State::ResetByPeer)
    ///     }
    /// }
    ///
    /// let pool = Pool::builder(Links).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     *pool.get().await.unwrap() = State::ResetByPeer;
    /// });
    /// // Every older connection is now checked before it is reused.
    /// assert_eq!(pool.statistics().revalidations, 1);
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::{ErrorClass, Manager};
    /// use std::io::{Error, ErrorKind};
    ///
    /// #[derive(Debug)]
    /// struct Remote;
    ///
    /// impl Manager for Remote {
    ///     type Connection = u64;
    ///     type Error = Error;
    ///
    ///     async fn create(&self) -> Result<u64, Error> {
    ///         Ok(1)
    ///     }
    ///
    ///     fn classify(&self, error: &Error) -> ErrorClass {
    ///         match error.kind() {
    ///             ErrorKind::PermissionDenied => ErrorClass::Permanent,
    ///             ErrorKind::ConnectionReset => ErrorClass::ServerGone,
    ///             _ => ErrorClass::Transient,
    ///         }
    ///     }
    /// }
    ///
    /// let denied = Error::from(ErrorKind::PermissionDenied);
    /// assert_eq!(Remote.classify(&denied), ErrorClass::Permanent);
    /// assert_eq!(Remote.classify(&Error::from(ErrorKind::TimedOut)), ErrorClass::Transient);
    /// ```
    fn classify(&self, error: &Self::Error) -> ErrorClass {
        let _ = error;
        ErrorClass::Transient
    }

    /// Told when a connection leaves the pool for good, just before it is dropped (or handed
    /// to the caller, for [`Removal::Detached`]). The default does nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::{Manager, Pool, Removal, ThreadRuntime};
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    ///
    /// #[derive(Debug, Default)]
    /// struct Counted {
    ///     closed: AtomicUsize,
    /// }
    ///
    /// impl Manager for Counted {
    ///     type Connection = u64;
    ///     type Error = std::io::Error;
    ///
    ///     async fn create(&self) -> Result<u64, std::io::Error> {
    ///         Ok(1)
    ///     }
    ///
    ///     fn removed(&self, _conn: &mut u64, reason: Removal) {
    ///         if reason != Removal::Detached {
    ///             self.closed.fetch_add(1, Ordering::Relaxed); // a real manager closes the socket
    ///         }
    ///     }
    /// }
    ///
    /// let pool = Pool::builder(Counted::default()).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(pool.warm_up()).unwrap();
    /// pool.close();
    /// assert_eq!(pool.manager().closed.load(Ordering::Relaxed), 1);
    /// ```
    fn removed(&self, conn: &mut Self::Connection, reason: Removal) {
        let _ = (conn, reason);
    }

    /// Told the pool's settings once, when the pool is built and before any connection is
    /// created. A manager whose [`create`](Manager::create) has steps of its own to bound
    /// learns the create timeout here: momopool-pg shares it between the hosts it tries, so
    /// that a host that never answers leaves time for the next. It runs inside `build`, on
    /// the caller's thread: unlike the other methods, a panic here is not contained. The
    /// default does nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::{Manager, Pool, PoolConfig, ThreadRuntime};
    /// use std::time::Duration;
    ///
    /// #[derive(Debug, Default)]
    /// struct Budgeted {
    ///     create_timeout: Option<Duration>,
    /// }
    ///
    /// impl Manager for Budgeted {
    ///     type Connection = u64;
    ///     type Error = std::io::Error;
    ///
    ///     async fn create(&self) -> Result<u64, std::io::Error> {
    ///         Ok(1) // a real manager divides `self.create_timeout` between its steps
    ///     }
    ///
    ///     fn configured(&mut self, config: &PoolConfig) {
    ///         self.create_timeout = config.create_timeout;
    ///     }
    /// }
    ///
    /// let pool = Pool::builder(Budgeted::default())
    ///     .create_timeout(Duration::from_secs(3))
    ///     .runtime(ThreadRuntime)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(pool.manager().create_timeout, Some(Duration::from_secs(3)));
    /// ```
    fn configured(&mut self, config: &crate::PoolConfig) {
        let _ = config;
    }
}

/// How the pool should treat a backend error; see [`Manager::classify`].
///
/// # Examples
///
/// ```
/// use momopool::{ErrorClass, Manager, Pool, ThreadRuntime};
/// use std::io::{Error, ErrorKind};
///
/// #[derive(Debug)]
/// struct Guarded;
///
/// impl Manager for Guarded {
///     type Connection = u64;
///     type Error = Error;
///
///     async fn create(&self) -> Result<u64, Error> {
///         Err(Error::new(ErrorKind::PermissionDenied, "password authentication failed"))
///     }
///
///     fn classify(&self, error: &Error) -> ErrorClass {
///         match error.kind() {
///             ErrorKind::PermissionDenied => ErrorClass::Permanent,
///             ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => ErrorClass::ServerGone,
///             _ => ErrorClass::Transient,
///         }
///     }
/// }
///
/// // A permanent error reaches the caller at once instead of being retried until the
/// // deadline.
/// let pool = Pool::builder(Guarded).min_size(0).runtime(ThreadRuntime).build().unwrap();
/// let err = futures::executor::block_on(pool.get()).unwrap_err();
/// assert!(!err.is_timeout());
/// assert_eq!(err.backend().unwrap().kind(), ErrorKind::PermissionDenied);
/// ```
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
///
/// # Examples
///
/// ```
/// use momopool::{Manager, Pool, Removal, ThreadRuntime};
/// use std::sync::Mutex;
///
/// /// Remembers why each connection left.
/// #[derive(Debug, Default)]
/// struct Recorded(Mutex<Vec<Removal>>);
///
/// impl Manager for Recorded {
///     type Connection = u64;
///     type Error = std::io::Error;
///
///     async fn create(&self) -> Result<u64, std::io::Error> {
///         Ok(1)
///     }
///
///     fn removed(&self, _conn: &mut u64, reason: Removal) {
///         self.0.lock().unwrap().push(reason);
///     }
/// }
///
/// let pool = Pool::builder(Recorded::default()).runtime(ThreadRuntime).build().unwrap();
/// futures::executor::block_on(pool.warm_up()).unwrap();
/// pool.drain();
/// assert_eq!(*pool.manager().0.lock().unwrap(), [Removal::Retired]);
/// assert_eq!(pool.statistics().closed.get(Removal::Retired), 1);
/// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, Pooled, ThreadRuntime};
    /// # use std::time::{Duration, Instant};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let first = pool.get().await.unwrap();
    ///     let second = pool.get().await.unwrap();
    ///     let (a, b) = (Pooled::metrics(&first).id(), Pooled::metrics(&second).id());
    ///     assert_ne!(a, b);
    /// });
    /// ```
    pub fn id(&self) -> u64 {
        self.id
    }

    /// When the connection was created.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, Pooled, ThreadRuntime};
    /// # use std::time::{Duration, Instant};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).min_size(0).runtime(ThreadRuntime).build().unwrap();
    /// let before = Instant::now();
    /// futures::executor::block_on(async {
    ///     let conn = pool.get().await.unwrap();
    ///     let created = Pooled::metrics(&conn).created();
    ///     assert!(before <= created && created <= Instant::now());
    /// });
    /// ```
    pub fn created(&self) -> Instant {
        self.created
    }

    /// When the connection was last returned to the pool (its creation time if it was never
    /// used).
    ///
    /// Return times are taken from the system's coarse monotonic clock, which is much cheaper
    /// to read on every return: they are exact to within one tick of that clock (1 to 10 ms,
    /// depending on the system).
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, Pooled, ThreadRuntime};
    /// # use std::time::{Duration, Instant};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).min_size(0).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let conn = pool.get().await.unwrap();
    ///     let metrics = Pooled::metrics(&conn);
    ///     assert_eq!(metrics.last_used(), metrics.created()); // never returned yet
    ///     std::thread::sleep(Duration::from_millis(50));
    ///     drop(conn);
    ///
    ///     let again = pool.get().await.unwrap();
    ///     let metrics = Pooled::metrics(&again);
    ///     // To within the coarse clock's tick.
    ///     assert!(metrics.last_used() >= metrics.created() + Duration::from_millis(30));
    /// });
    /// ```
    pub fn last_used(&self) -> Instant {
        self.last_used
    }

    /// How many times the connection has been handed out so far.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, Pooled, ThreadRuntime};
    /// # use std::time::{Duration, Instant};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).max_size(1).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     for round in 1..=3 {
    ///         let conn = pool.get().await.unwrap();
    ///         assert_eq!(Pooled::metrics(&conn).times_used(), round);
    ///     }
    /// });
    /// ```
    pub fn times_used(&self) -> u64 {
        self.times_used
    }

    /// How long the connection has existed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, Pooled, ThreadRuntime};
    /// # use std::time::{Duration, Instant};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let conn = pool.get().await.unwrap();
    ///     std::thread::sleep(Duration::from_millis(10));
    ///     assert!(Pooled::metrics(&conn).age() >= Duration::from_millis(10));
    /// });
    /// ```
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    /// How long since the connection was last returned (to within a tick of the coarse clock,
    /// see [`last_used`](Metrics::last_used)).
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, Pooled, ThreadRuntime};
    /// # use std::time::{Duration, Instant};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).max_size(1).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     drop(pool.get().await.unwrap());
    ///     std::thread::sleep(Duration::from_millis(50));
    ///     // The idle time is measured when asked: it covers the 50 ms in the pool.
    ///     let conn = pool.get().await.unwrap();
    ///     assert!(Pooled::metrics(&conn).idle_for() >= Duration::from_millis(30));
    /// });
    /// ```
    pub fn idle_for(&self) -> Duration {
        self.last_used.elapsed()
    }
}
