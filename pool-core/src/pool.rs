//! The public handles: [`Pool`], [`PoolBuilder`] and the checkout guard [`Pooled`].

use crate::clock::Moment;
use crate::config::{PoolConfig, Reuse, Validation, check_sizes};
use crate::error::{BuildError, HookError, PoolError};
use crate::manager::{Manager, Metrics};
use crate::runtime::{BoxFuture, Runtime};
use crate::shared::{
    Acquired, Boxed, Entry, Mark, Prepared, Shared, Unprepared, WaitFor, maintenance_task,
    start_deadline,
};
use crate::stats::{Statistics, Status};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A hook run on a connection: `post_create`, `pre_recycle` or `post_recycle`.
pub(crate) type HookFn<M> = Box<
    dyn for<'a> Fn(
            &'a mut <M as Manager>::Connection,
            &'a Metrics,
        ) -> BoxFuture<'a, Result<(), HookError<<M as Manager>::Error>>>
        + Send
        + Sync,
>;

pub(crate) struct Hooks<M: Manager> {
    pub(crate) post_create: Option<HookFn<M>>,
    pub(crate) pre_recycle: Option<HookFn<M>>,
    pub(crate) post_recycle: Option<HookFn<M>>,
}

/// A pool of connections made by a [`Manager`].
///
/// Cloning a `Pool` is cheap and gives another handle to the same pool. The pool closes when
/// [`close`](Pool::close) is called or the last handle is dropped.
///
/// # How a connection moves
///
/// A connection is *creating* while its connect runs in a background task, then *idle* in the
/// pool or *in use* by a caller who holds its [`Pooled`] guard. Dropping the guard returns it:
/// to the oldest *waiting* caller if there is one, otherwise to idle. Connections found broken,
/// too old, or idle too long above `min_size` are closed; the pool opens new ones to keep
/// `min_size` and, while callers wait, up to `max_size`.
///
/// # Examples
///
/// ```
/// use momopool::{Manager, Pool, ThreadRuntime};
///
/// #[derive(Debug)]
/// struct Numbers;
///
/// impl Manager for Numbers {
///     type Connection = u64;
///     type Error = std::io::Error;
///     async fn create(&self) -> Result<u64, std::io::Error> {
///         Ok(42)
///     }
/// }
///
/// let pool = Pool::builder(Numbers)
///     .max_size(4)
///     .runtime(ThreadRuntime)
///     .build()
///     .unwrap();
/// futures::executor::block_on(async {
///     let conn = pool.get().await.unwrap();
///     assert_eq!(*conn, 42);
/// });
/// ```
pub struct Pool<M: Manager> {
    shared: Arc<Shared<M>>,
}

impl<M: Manager> Clone for Pool<M> {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        Pool {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M: Manager> Drop for Pool<M> {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.close();
        }
    }
}

impl<M: Manager> fmt::Debug for Pool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("status", &self.status())
            .field("runtime", &self.shared.runtime)
            .finish_non_exhaustive()
    }
}

impl<M: Manager> Pool<M> {
    /// Starts building a pool around `manager`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(1) }
    /// # }
    /// let pool = Pool::builder(Numbers)
    ///     .min_size(0)
    ///     .max_size(8)
    ///     .runtime(ThreadRuntime)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(pool.status().max_size, 8);
    /// ```
    pub fn builder(manager: M) -> PoolBuilder<M> {
        PoolBuilder {
            manager,
            config: PoolConfig::default(),
            runtime: None,
            hooks: Hooks {
                post_create: None,
                pre_recycle: None,
                post_recycle: None,
            },
        }
    }

    /// Gets a connection, waiting up to the configured `wait_timeout`.
    ///
    /// An idle connection is handed out at once when nobody is waiting. Otherwise the caller
    /// queues behind earlier callers (first come, first served) while the pool opens new
    /// connections if it may. The timeout covers the whole call: waiting, connecting and
    /// checking.
    ///
    /// # Errors
    ///
    /// [`PoolError::Timeout`] at the deadline, naming the phase and carrying the last
    /// backend error; [`PoolError::Closed`]; [`PoolError::Busy`] when `max_waiting` callers
    /// already wait; a connect error the pool knows is permanent; [`PoolError::Hook`] when the
    /// `post_create` hook failed for the connection meant for this caller;
    /// [`PoolError::Panicked`]; and, in fail-fast mode, [`PoolError::Unavailable`] or
    /// [`PoolError::Suspended`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future at any point leaks nothing. A waiting caller leaves
    /// the queue; a connection already handed to it goes to the next caller or back to idle;
    /// a connect started for it completes in the background and serves someone else; a
    /// connection being checked for it is closed, since the check was cut short.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let mut conn = pool.get().await?;
    ///     *conn += 1; // DerefMut to the connection
    ///     assert_eq!(*conn, 8);
    ///     Ok::<_, momopool::PoolError<std::io::Error>>(())
    /// })
    /// .unwrap();
    /// ```
    #[track_caller]
    pub fn get(&self) -> impl Future<Output = Result<Pooled<M>, PoolError<M::Error>>> + Send + '_ {
        let location = Location::caller();
        self.acquire(self.shared.config.wait_timeout, location)
    }

    /// Like [`get`](Pool::get), with this deadline instead of the configured one.
    ///
    /// # Errors
    ///
    /// As for [`get`](Pool::get).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`get`](Pool::get).
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
    /// futures::executor::block_on(async {
    ///     let held = pool.get().await.unwrap();
    ///     let second = pool.get_timeout(Duration::from_millis(50)).await;
    ///     assert!(second.unwrap_err().is_timeout());
    ///     drop(held);
    /// });
    /// ```
    #[track_caller]
    pub fn get_timeout(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Pooled<M>, PoolError<M::Error>>> + Send + '_ {
        let location = Location::caller();
        self.acquire(Some(timeout), location)
    }

    /// Gets a connection only if one is ready now: never waits.
    ///
    /// If none is idle and the pool has room, a connect still starts in the background, so a
    /// later call may succeed.
    ///
    /// # Errors
    ///
    /// [`PoolError::Timeout`] (after zero) when no connection is ready; otherwise as for
    /// [`get`](Pool::get).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`get`](Pool::get).
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).max_size(1).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let held = pool.get().await.unwrap();
    ///     assert!(pool.try_get().await.is_err());
    ///     drop(held);
    ///     assert!(pool.try_get().await.is_ok());
    /// });
    /// ```
    #[track_caller]
    pub fn try_get(
        &self,
    ) -> impl Future<Output = Result<Pooled<M>, PoolError<M::Error>>> + Send + '_ {
        let location = Location::caller();
        self.acquire(Some(Duration::ZERO), location)
    }

    async fn acquire(
        &self,
        timeout: Option<Duration>,
        location: &'static Location<'static>,
    ) -> Result<Pooled<M>, PoolError<M::Error>> {
        let shared = &self.shared;
        // Most checkouts neither wait nor check, so the deadline is set (and the clock read)
        // only when the caller queues or a check runs.
        let mut deadline = None;
        let mut front = false;
        loop {
            // The fast path: an idle connection and nobody queued.
            let ready = if front { None } else { shared.take_idle() };
            let entry = match ready {
                Some(entry) => entry,
                None => {
                    // Bound first: a temporary in the match would stay alive (and take room
                    // in this future) across the await below.
                    let acquired = shared.try_acquire(front, timeout, &mut deadline)?;
                    match acquired {
                        Acquired::Ready(entry) => entry,
                        Acquired::Queued(waiter) => WaitFor::new(shared, waiter).await?,
                    }
                }
            };
            let prepared = shared.prepare(entry);
            match prepared {
                Prepared::Ready(entry) => {
                    return Ok(Pooled::new(Arc::clone(shared), entry, location));
                }
                Prepared::Retry => front = true,
                // Boxed: the check's futures are large and rarely needed, and inlining them
                // would make every `get()` future (and every checkout) pay for their size.
                Prepared::Check(entry) => {
                    let now = Moment::now();
                    let deadline = start_deadline(&mut deadline, timeout, now);
                    let checked = Box::pin(shared.check_entry(entry, now, deadline, timeout)).await;
                    match checked {
                        Ok(entry) => return Ok(Pooled::new(Arc::clone(shared), entry, location)),
                        Err(Unprepared::Retry) => front = true,
                        Err(Unprepared::Fail(err)) => return Err(err),
                    }
                }
            }
        }
    }

    /// Waits until `min_size` connections are open.
    ///
    /// # Errors
    ///
    /// The first connect error that happens meanwhile, [`PoolError::Timeout`] after the wait
    /// timeout, or [`PoolError::Closed`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: connects already started go on in the background.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// let pool = Pool::builder(Numbers).min_size(3).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(pool.warm_up()).unwrap();
    /// assert_eq!(pool.status().idle, 3);
    /// ```
    pub async fn warm_up(&self) -> Result<(), PoolError<M::Error>> {
        let min = self.status().min_size;
        self.shared.warm_up(min).await
    }

    /// Connections and callers right now.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).min_size(0).runtime(ThreadRuntime).build().unwrap();
    /// let status = pool.status();
    /// assert_eq!(status.size, status.idle + status.in_use + status.creating);
    /// ```
    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// Cumulative counters since the pool was built.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async { drop(pool.get().await.unwrap()) });
    /// let stats = pool.statistics();
    /// assert_eq!(stats.gets_direct + stats.gets_waited, 1);
    /// ```
    pub fn statistics(&self) -> Statistics {
        self.shared.statistics()
    }

    /// The most recent connect error, if any (cleared by nothing: compare statistics to see
    /// whether it is recent).
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).min_size(0).runtime(ThreadRuntime).build().unwrap();
    /// assert!(pool.last_error().is_none());
    /// ```
    pub fn last_error(&self) -> Option<PoolError<M::Error>> {
        self.shared.last_error()
    }

    /// The manager this pool was built with.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).runtime(ThreadRuntime).build().unwrap();
    /// let _manager: &Numbers = pool.manager();
    /// ```
    pub fn manager(&self) -> &M {
        &self.shared.manager
    }

    /// The settings this pool was built with (sizes as built; see [`status`](Pool::status)
    /// for the current ones after [`resize`](Pool::resize)).
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).max_size(3).runtime(ThreadRuntime).build().unwrap();
    /// assert_eq!(pool.config().max_size, 3);
    /// ```
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// The runtime this pool spawns its tasks on.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, Runtime, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).runtime(ThreadRuntime).build().unwrap();
    /// let runtime = pool.runtime();
    /// futures::executor::block_on(runtime.sleep(std::time::Duration::from_millis(1)));
    /// ```
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.shared.runtime
    }

    /// Closes the pool.
    ///
    /// Waiting callers get [`PoolError::Closed`] at once, idle connections are closed now,
    /// connections in use are closed when they are returned, connects in flight are
    /// abandoned, and background tasks end. Later calls to `get()` fail with
    /// [`PoolError::Closed`]. It does not wait for anything, so it cannot hang.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, PoolError, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).runtime(ThreadRuntime).build().unwrap();
    /// pool.close();
    /// assert!(pool.is_closed());
    /// let err = futures::executor::block_on(pool.get()).unwrap_err();
    /// assert!(matches!(err, PoolError::Closed));
    /// ```
    pub fn close(&self) {
        self.shared.close();
    }

    /// Whether [`close`](Pool::close) was called.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).runtime(ThreadRuntime).build().unwrap();
    /// assert!(!pool.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Whether callers are waiting for a connection, read without taking the pool's lock: it
    /// is what the pool published when its lock was last released, so it may lag by a
    /// moment. [`status`](Pool::status)`().waiting` is exact, and takes the lock.
    ///
    /// Meant for code that polls often and can act a moment late, such as a layer above the
    /// pool deciding whether to give a connection back.
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
    /// let held = futures::executor::block_on(pool.get()).unwrap();
    /// assert!(!pool.has_waiters());
    /// let waiter = {
    ///     let pool = pool.clone();
    ///     std::thread::spawn(move || futures::executor::block_on(pool.get()).map(drop))
    /// };
    /// while !pool.has_waiters() {
    ///     std::thread::sleep(Duration::from_millis(1));
    /// }
    /// drop(held);
    /// waiter.join().unwrap().unwrap();
    /// assert!(!pool.has_waiters());
    /// ```
    pub fn has_waiters(&self) -> bool {
        self.shared.has_waiters()
    }

    /// Changes the minimum and maximum size.
    ///
    /// Shrinking closes idle connections above the new maximum at once; connections in use
    /// above it are closed when returned. Growing lets waiting callers get new connections and
    /// tops up to the new minimum.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] when `max_size` is 0 or `min_size` exceeds it; nothing changes then.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).runtime(ThreadRuntime).build().unwrap();
    /// pool.resize(2, 20).unwrap();
    /// assert_eq!(pool.status().max_size, 20);
    /// assert!(pool.resize(5, 1).is_err());
    /// ```
    pub fn resize(&self, min_size: usize, max_size: usize) -> Result<(), BuildError> {
        check_sizes(min_size, max_size)?;
        self.shared.resize(min_size, max_size);
        Ok(())
    }

    /// Closes every idle connection for which `keep` returns `false` (or panics), and returns
    /// how many were closed. Connections in use are not looked at.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).min_size(2).runtime(ThreadRuntime).build().unwrap();
    /// # futures::executor::block_on(pool.warm_up()).unwrap();
    /// let closed = pool.retain(|_conn, metrics| metrics.times_used() > 0);
    /// assert_eq!(closed, 2);
    /// ```
    pub fn retain(&self, keep: impl FnMut(&M::Connection, &crate::Metrics) -> bool) -> usize {
        self.shared.retain(keep)
    }

    /// Replaces every connection: idle ones are closed now, ones in use when they come back,
    /// and the pool opens fresh ones as needed (for example after rotating credentials).
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, Removal, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).min_size(1).runtime(ThreadRuntime).build().unwrap();
    /// # futures::executor::block_on(pool.warm_up()).unwrap();
    /// pool.drain();
    /// assert_eq!(pool.statistics().closed.get(Removal::Retired), 1);
    /// ```
    pub fn drain(&self) {
        self.shared.drain();
    }

    /// Makes the pool check every existing connection before handing it out again, as it
    /// does by itself after a "server gone" error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).runtime(ThreadRuntime).build().unwrap();
    /// # futures::executor::block_on(pool.warm_up()).unwrap();
    /// pool.revalidate();
    /// futures::executor::block_on(async { drop(pool.get().await.unwrap()) });
    /// assert_eq!(pool.statistics().checks, 1);
    /// ```
    pub fn revalidate(&self) {
        self.shared.revalidate();
    }

    /// Stops handing out connections: new callers wait (or, with `fail_fast`, fail with
    /// [`PoolError::Suspended`]); idle connections stay open; returned ones go back to idle.
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
    /// # let pool = Pool::builder(Numbers).runtime(ThreadRuntime).build().unwrap();
    /// pool.suspend();
    /// assert!(futures::executor::block_on(pool.get_timeout(Duration::from_millis(20))).is_err());
    /// pool.resume();
    /// assert!(futures::executor::block_on(pool.get()).is_ok());
    /// ```
    pub fn suspend(&self) {
        self.shared.set_suspended(true);
    }

    /// Ends a [`suspend`](Pool::suspend): waiting callers are served in order.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// let pool = Pool::builder(Numbers).runtime(ThreadRuntime).build().unwrap();
    /// pool.suspend();
    /// futures::executor::block_on(async {
    ///     let mut waiting = std::pin::pin!(pool.get());
    ///     assert!(futures::poll!(waiting.as_mut()).is_pending()); // queued while suspended
    ///     pool.resume();
    ///     assert_eq!(*waiting.await.unwrap(), 7);
    /// });
    /// assert!(!pool.is_suspended());
    /// ```
    pub fn resume(&self) {
        self.shared.set_suspended(false);
    }

    /// Whether the pool is suspended.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).runtime(ThreadRuntime).build().unwrap();
    /// assert!(!pool.is_suspended());
    /// ```
    pub fn is_suspended(&self) -> bool {
        self.shared.is_suspended()
    }
}

/// Builds a [`Pool`]; see [`Pool::builder`].
///
/// Every setting of [`PoolConfig`] has a setter of the same name. A runtime is required.
///
/// # Examples
///
/// ```
/// use momopool::{Manager, Pool, ThreadRuntime, Validation};
/// use std::time::Duration;
///
/// # #[derive(Debug)] struct Numbers;
/// # impl Manager for Numbers {
/// #     type Connection = u64;
/// #     type Error = std::io::Error;
/// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
/// # }
/// let pool = Pool::builder(Numbers)
///     .min_size(1)
///     .max_size(16)
///     .wait_timeout(Duration::from_secs(2))
///     .validation(Validation::Always)
///     .post_create(|conn, _metrics| {
///         Box::pin(async move {
///             *conn *= 2; // e.g. run session statements
///             Ok(())
///         })
///     })
///     .runtime(ThreadRuntime)
///     .build()
///     .unwrap();
/// # drop(pool);
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder<M: Manager> {
    manager: M,
    config: PoolConfig,
    runtime: Option<Arc<dyn Runtime>>,
    hooks: Hooks<M>,
}

impl<M: Manager> fmt::Debug for PoolBuilder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("config", &self.config)
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.config.$name = value;
                self
            }
        )*
    };
}

macro_rules! optional_setters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: impl Into<Option<Duration>>) -> Self {
                self.config.$name = value.into();
                self
            }
        )*
    };
}

/// The hook setters share one signature: an async closure over the connection and its
/// metrics, written `|conn, metrics| Box::pin(async move { ... })`.
macro_rules! hook_setters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name<F>(mut self, hook: F) -> Self
            where
                F: for<'a> Fn(
                        &'a mut M::Connection,
                        &'a Metrics,
                    ) -> BoxFuture<'a, Result<(), HookError<M::Error>>>
                    + Send
                    + Sync
                    + 'static,
            {
                self.hooks.$name = Some(Box::new(hook));
                self
            }
        )*
    };
}

impl<M: Manager> PoolBuilder<M> {
    /// Replaces every setting with `config` (hooks and runtime are kept).
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, PoolConfig, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # use std::time::Duration;
    /// let config = PoolConfig {
    ///     max_size: 4,
    ///     wait_timeout: Some(Duration::from_secs(1)),
    ///     ..PoolConfig::default()
    /// };
    /// let pool = Pool::builder(Numbers)
    ///     .config(config.clone())
    ///     .runtime(ThreadRuntime)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(pool.config(), &config);
    /// ```
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.config = config;
        self
    }

    /// The runtime to spawn background tasks on and to sleep with. Required.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// let pool = Pool::builder(Numbers).runtime(ThreadRuntime).build();
    /// assert!(pool.is_ok());
    ///
    /// // Without a runtime the pool cannot be built.
    /// let err = Pool::builder(Numbers).build().unwrap_err();
    /// assert_eq!(err.field(), "runtime");
    /// ```
    pub fn runtime(mut self, runtime: impl Runtime) -> Self {
        self.runtime = Some(Arc::new(runtime));
        self
    }

    /// The runtime, already shared.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, Runtime, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// use std::sync::Arc;
    ///
    /// let runtime: Arc<dyn Runtime> = Arc::new(ThreadRuntime);
    /// let a = Pool::builder(Numbers).shared_runtime(runtime.clone()).build().unwrap();
    /// let b = Pool::builder(Numbers).shared_runtime(runtime.clone()).build().unwrap();
    /// assert!(Arc::ptr_eq(a.runtime(), b.runtime()));
    /// ```
    pub fn shared_runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    setters! {
        /// Connections kept open even when idle (Momoko's `size`).
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// let pool = Pool::builder(Numbers).min_size(3).runtime(ThreadRuntime).build().unwrap();
        /// futures::executor::block_on(pool.warm_up()).unwrap();
        /// assert_eq!(pool.status().idle, 3);
        /// ```
        min_size: usize,
        /// The stretch limit: connections that may exist or be opening at once.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// # use std::time::Duration;
        /// let pool = Pool::builder(Numbers).max_size(2).runtime(ThreadRuntime).build().unwrap();
        /// futures::executor::block_on(async {
        ///     let _a = pool.get().await.unwrap();
        ///     let _b = pool.get().await.unwrap();
        ///     // A third caller has to wait: the pool does not stretch beyond two.
        ///     let err = pool.get_timeout(Duration::from_millis(20)).await.unwrap_err();
        ///     assert!(err.is_timeout());
        /// });
        /// ```
        max_size: usize,
        /// Connects in flight at once.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// let pool = Pool::builder(Numbers)
        ///     .max_connecting(2)
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// assert_eq!(pool.config().max_connecting, 2);
        ///
        /// // At least one connect must be allowed.
        /// let err = Pool::builder(Numbers).max_connecting(0).runtime(ThreadRuntime).build();
        /// assert_eq!(err.unwrap_err().field(), "max_connecting");
        /// ```
        max_connecting: usize,
        /// When to check connections before reuse.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime, Validation};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// let pool = Pool::builder(Numbers)
        ///     .validation(Validation::Always)
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// futures::executor::block_on(async {
        ///     pool.warm_up().await.unwrap();
        ///     drop(pool.get().await.unwrap());
        ///     drop(pool.get().await.unwrap());
        /// });
        /// // Both checkouts reused the idle connection, and checked it first.
        /// assert_eq!(pool.statistics().checks, 2);
        /// ```
        validation: Validation,
        /// The fraction of `max_lifetime` by which a connection may retire early.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// let pool = Pool::builder(Numbers)
        ///     .lifetime_jitter(0.25)
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// assert_eq!(pool.config().lifetime_jitter, 0.25);
        ///
        /// // A connection cannot retire a whole lifetime early.
        /// let err = Pool::builder(Numbers).lifetime_jitter(1.0).runtime(ThreadRuntime).build();
        /// assert_eq!(err.unwrap_err().field(), "lifetime_jitter");
        /// ```
        lifetime_jitter: f64,
        /// How often the maintenance pass runs.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// # use std::time::Duration;
        /// let pool = Pool::builder(Numbers)
        ///     .maintenance_interval(Duration::from_secs(1))
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// assert_eq!(pool.config().maintenance_interval, Duration::from_secs(1));
        /// ```
        maintenance_interval: Duration,
        /// The first delay after a failed connect.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// # use std::time::Duration;
        /// let pool = Pool::builder(Numbers)
        ///     .reconnect_interval(Duration::from_millis(100))
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// assert_eq!(pool.config().reconnect_interval, Duration::from_millis(100));
        /// ```
        reconnect_interval: Duration,
        /// The longest delay between connect attempts.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// # use std::time::Duration;
        /// let pool = Pool::builder(Numbers)
        ///     .reconnect_max(Duration::from_secs(2))
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// assert_eq!(pool.config().reconnect_max, Duration::from_secs(2));
        ///
        /// // The longest delay cannot be shorter than the first one.
        /// let err = Pool::builder(Numbers)
        ///     .reconnect_interval(Duration::from_secs(1))
        ///     .reconnect_max(Duration::from_millis(500))
        ///     .runtime(ThreadRuntime)
        ///     .build();
        /// assert_eq!(err.unwrap_err().field(), "reconnect_max");
        /// ```
        reconnect_max: Duration,
        /// Which idle connection to reuse first.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, Pooled, Reuse, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// let pool = Pool::builder(Numbers)
        ///     .reuse(Reuse::Fifo)
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// futures::executor::block_on(async {
        ///     let first = pool.get().await.unwrap();
        ///     let second = pool.get().await.unwrap();
        ///     let first_id = Pooled::metrics(&first).id();
        ///     drop(first);
        ///     drop(second);
        ///     // First in, first out: the connection returned first is handed out first.
        ///     let next = pool.get().await.unwrap();
        ///     assert_eq!(Pooled::metrics(&next).id(), first_id);
        /// });
        /// ```
        reuse: Reuse,
        /// Fail at once while the backend is known down or the pool is suspended.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, PoolError, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// let pool = Pool::builder(Numbers)
        ///     .fail_fast(true)
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// pool.suspend();
        /// let err = futures::executor::block_on(pool.get()).unwrap_err();
        /// assert!(matches!(err, PoolError::Suspended));
        /// ```
        fail_fast: bool,
    }

    optional_setters! {
        /// The default deadline of `get()`.
        ///
        /// Takes a `Duration`, or `None` for no limit.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// # use std::time::Duration;
        /// let pool = Pool::builder(Numbers)
        ///     .max_size(1)
        ///     .wait_timeout(Duration::from_millis(20))
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// futures::executor::block_on(async {
        ///     // An explicit deadline for this one, so it may wait for the connect.
        ///     let _held = pool.get_timeout(Duration::from_secs(5)).await.unwrap();
        ///     // The pool's own deadline for this one: the only connection is taken.
        ///     assert!(pool.get().await.unwrap_err().is_timeout());
        /// });
        ///
        /// // `None`: `get()` waits as long as it takes.
        /// let patient = Pool::builder(Numbers)
        ///     .wait_timeout(None)
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// assert_eq!(patient.config().wait_timeout, None);
        /// ```
        wait_timeout,
        /// The deadline of one connect, `post_create` hook included.
        ///
        /// Takes a `Duration`, or `None` for no limit.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// # use std::time::Duration;
        /// let pool = Pool::builder(Numbers)
        ///     .create_timeout(Duration::from_secs(3))
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// assert_eq!(pool.config().create_timeout, Some(Duration::from_secs(3)));
        /// ```
        create_timeout,
        /// The deadline of one check, recycle hooks included.
        ///
        /// Takes a `Duration`, or `None` for no limit.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// # use std::time::Duration;
        /// let pool = Pool::builder(Numbers)
        ///     .recycle_timeout(Duration::from_millis(500))
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// assert_eq!(pool.config().recycle_timeout, Some(Duration::from_millis(500)));
        /// ```
        recycle_timeout,
        /// Check idle connections this idle in the background.
        ///
        /// Takes a `Duration`, or `None` for no limit.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// # use std::time::Duration;
        /// let pool = Pool::builder(Numbers)
        ///     .keepalive_interval(Duration::from_secs(60))
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// assert_eq!(pool.config().keepalive_interval, Some(Duration::from_secs(60)));
        /// ```
        keepalive_interval,
        /// Close connections idle this long while above `min_size`.
        ///
        /// Takes a `Duration`, or `None` for no limit.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// # use std::time::Duration;
        /// let pool = Pool::builder(Numbers)
        ///     .idle_timeout(Duration::from_secs(120))
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// assert_eq!(pool.config().idle_timeout, Some(Duration::from_secs(120)));
        ///
        /// // `None` keeps idle connections open.
        /// let keeping = Pool::builder(Numbers)
        ///     .idle_timeout(None)
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// assert_eq!(keeping.config().idle_timeout, None);
        /// ```
        idle_timeout,
        /// Retire connections this old.
        ///
        /// Takes a `Duration`, or `None` for no limit.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// # use std::time::Duration;
        /// let pool = Pool::builder(Numbers)
        ///     .max_lifetime(Duration::from_secs(3600))
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// assert_eq!(pool.config().max_lifetime, Some(Duration::from_secs(3600)));
        ///
        /// // A zero lifetime makes no sense; `None` is the way to say "no limit".
        /// let err = Pool::builder(Numbers)
        ///     .max_lifetime(Duration::ZERO)
        ///     .runtime(ThreadRuntime)
        ///     .build();
        /// assert_eq!(err.unwrap_err().field(), "max_lifetime");
        /// ```
        max_lifetime,
        /// Report connections held longer than this.
        ///
        /// Takes a `Duration`, or `None` for no limit.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// # use std::time::Duration;
        /// let pool = Pool::builder(Numbers)
        ///     .leak_threshold(Duration::from_secs(30))
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// assert_eq!(pool.config().leak_threshold, Some(Duration::from_secs(30)));
        /// ```
        leak_threshold,
    }

    /// The most callers that may wait at once; `None` for no limit.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, PoolError, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// let pool = Pool::builder(Numbers)
    ///     .max_size(1)
    ///     .max_waiting(0)
    ///     .runtime(ThreadRuntime)
    ///     .build()
    ///     .unwrap();
    /// futures::executor::block_on(async {
    ///     pool.warm_up().await.unwrap(); // so that the first caller need not wait either
    ///     let _held = pool.get().await.unwrap();
    ///     // Nobody may wait, so a second caller is turned away at once.
    ///     let err = pool.get().await.unwrap_err();
    ///     assert!(matches!(err, PoolError::Busy { max_waiting: 0 }));
    /// });
    /// ```
    pub fn max_waiting(mut self, value: impl Into<Option<usize>>) -> Self {
        self.config.max_waiting = value.into();
        self
    }

    hook_setters! {
        /// Runs on every new connection before it is first handed out (Momoko's
        /// `setsession`). An error discards the connection and reaches the caller it was meant
        /// for.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// let pool = Pool::builder(Numbers)
        ///     .post_create(|conn, _metrics| {
        ///         Box::pin(async move {
        ///             *conn += 100; // e.g. set the session's time zone
        ///             Ok(())
        ///         })
        ///     })
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// let conn = futures::executor::block_on(pool.get()).unwrap();
        /// assert_eq!(*conn, 107);
        /// ```
        post_create,
        /// Runs before [`Manager::check`] each time an idle connection is reused. Setting it
        /// makes every reuse go through the check. An error discards the connection and the
        /// caller gets another one.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// use std::sync::Arc;
        /// use std::sync::atomic::{AtomicUsize, Ordering};
        ///
        /// let reuses = Arc::new(AtomicUsize::new(0));
        /// let counter = Arc::clone(&reuses);
        /// let pool = Pool::builder(Numbers)
        ///     .min_size(0) // no connection before the first `get`
        ///     .pre_recycle(move |_conn, _metrics| {
        ///         counter.fetch_add(1, Ordering::Relaxed);
        ///         Box::pin(async { Ok(()) })
        ///     })
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// futures::executor::block_on(async {
        ///     drop(pool.get().await.unwrap()); // a new connection: no recycling
        ///     drop(pool.get().await.unwrap()); // reused: the hook runs
        /// });
        /// assert_eq!(reuses.load(Ordering::Relaxed), 1);
        /// ```
        pre_recycle,
        /// Runs after a successful [`Manager::check`] each time an idle connection is reused.
        /// Setting it makes every reuse go through the check. An error discards the connection
        /// and the caller gets another one.
        ///
        /// # Examples
        ///
        /// ```
        /// # use momopool::{HookError, Manager, Pool, ThreadRuntime};
        /// # #[derive(Debug)] struct Numbers;
        /// # impl Manager for Numbers {
        /// #     type Connection = u64;
        /// #     type Error = std::io::Error;
        /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
        /// # }
        /// let pool = Pool::builder(Numbers)
        ///     .min_size(0) // no connection before the first `get`
        ///     .max_size(1)
        ///     .post_recycle(|conn, metrics| {
        ///         let uses = metrics.times_used();
        ///         Box::pin(async move {
        ///             if uses >= 2 {
        ///                 // Refuse the connection on its second reuse: it is discarded.
        ///                 return Err(HookError::Message("used enough".into()));
        ///             }
        ///             *conn += 1;
        ///             Ok(())
        ///         })
        ///     })
        ///     .runtime(ThreadRuntime)
        ///     .build()
        ///     .unwrap();
        /// futures::executor::block_on(async {
        ///     assert_eq!(*pool.get().await.unwrap(), 7); // new
        ///     assert_eq!(*pool.get().await.unwrap(), 8); // reused once
        ///     assert_eq!(*pool.get().await.unwrap(), 7); // replaced by a new one
        /// });
        /// assert_eq!(pool.statistics().created, 2);
        /// ```
        post_recycle,
    }

    /// Builds the pool without connecting: it never fails for an unreachable backend. The pool
    /// opens `min_size` connections in the background.
    ///
    /// The first pool built in a process also calibrates the clock that times waiting callers
    /// (against the OS clock; well under a millisecond on common machines), so that no caller
    /// pays for it later.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the first invalid setting, or `runtime` when none was given.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// let pool = Pool::builder(Numbers).min_size(2).runtime(ThreadRuntime).build().unwrap();
    /// // Connections open in the background; `warm_up` waits for them.
    /// futures::executor::block_on(pool.warm_up()).unwrap();
    /// assert_eq!(pool.status().idle, 2);
    ///
    /// let err = Pool::builder(Numbers).min_size(5).max_size(2).runtime(ThreadRuntime).build();
    /// assert_eq!(err.unwrap_err().field(), "min_size");
    /// ```
    pub fn build(self) -> Result<Pool<M>, BuildError> {
        self.config.validate()?;
        let runtime = self
            .runtime
            .ok_or_else(|| BuildError::new("runtime", "no runtime was given"))?;
        crate::clock::calibrate();
        let mut manager = self.manager;
        manager.configured(&self.config);
        let shared = Arc::new(Shared::new(manager, runtime, self.config, self.hooks));
        shared
            .runtime
            .spawn(Box::pin(maintenance_task(Arc::downgrade(&shared))));
        shared.resize(shared.config.min_size, shared.config.max_size);
        Ok(Pool { shared })
    }

    /// Builds the pool and waits until it holds `min_size` connections (at least one, to
    /// prove the backend is reachable), like Momoko's `raise_connect_errors`.
    ///
    /// # Errors
    ///
    /// [`PoolError::Config`] for an invalid setting, or the first connect error, or a
    /// timeout after the wait timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancelling drops the half-built pool, which closes it.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// let pool = futures::executor::block_on(
    ///     Pool::builder(Numbers).min_size(2).runtime(ThreadRuntime).build_eager(),
    /// )
    /// .unwrap();
    /// assert_eq!(pool.status().idle, 2); // no waiting needed
    /// ```
    ///
    /// An unreachable backend fails the build:
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # #[derive(Debug)] struct Down;
    /// # impl Manager for Down {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> {
    /// #         Err(std::io::Error::other("connection refused"))
    /// #     }
    /// # }
    /// // `Down` is a manager whose `create` always fails.
    /// let built = futures::executor::block_on(
    ///     Pool::builder(Down).runtime(ThreadRuntime).build_eager(),
    /// );
    /// let err = built.unwrap_err();
    /// assert_eq!(err.backend().unwrap().to_string(), "connection refused");
    /// ```
    pub async fn build_eager(self) -> Result<Pool<M>, PoolError<M::Error>> {
        let pool = self.build().map_err(PoolError::Config)?;
        let target = pool.status().min_size.max(1);
        pool.shared.warm_up(target).await?;
        Ok(pool)
    }
}

/// A connection checked out of a [`Pool`]. Dereferences to the connection; dropping it
/// returns the connection at once, synchronously, with no task spawned.
///
/// # Examples
///
/// ```
/// # use momopool::{Manager, Pool, Pooled, ThreadRuntime};
/// # #[derive(Debug)] struct Numbers;
/// # impl Manager for Numbers {
/// #     type Connection = u64;
/// #     type Error = std::io::Error;
/// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
/// # }
/// # let pool = Pool::builder(Numbers).min_size(0).runtime(ThreadRuntime).build().unwrap();
/// futures::executor::block_on(async {
///     let conn = pool.get().await.unwrap();
///     assert_eq!(Pooled::metrics(&conn).times_used(), 1);
///     drop(conn); // back in the pool
///     assert_eq!(pool.status().idle, 1);
/// });
/// ```
#[must_use = "dropping a Pooled returns its connection to the pool at once"]
pub struct Pooled<M: Manager> {
    // Two pointers: everything else a checkout carries lives in the boxed entry, so handing
    // a guard around moves 16 bytes.
    entry: Option<Boxed<M>>,
    shared: Arc<Shared<M>>,
}

impl<M: Manager> Pooled<M> {
    fn new(
        shared: Arc<Shared<M>>,
        mut entry: Boxed<M>,
        location: &'static Location<'static>,
    ) -> Self {
        // `mark` is `Keep` here: a guard whose connection was marked discards it on return.
        entry.lease = shared.take_lease(location);
        Pooled {
            entry: Some(entry),
            shared,
        }
    }

    fn entry_mut(this: &mut Self) -> &mut Entry<M::Connection> {
        this.entry
            .as_mut()
            .expect("a Pooled holds its entry until dropped")
    }

    fn entry(this: &Self) -> &Entry<M::Connection> {
        this.entry
            .as_ref()
            .expect("a Pooled holds its entry until dropped")
    }

    /// What the pool knows about this connection.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, Pooled, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let conn = pool.get().await.unwrap();
    ///     let metrics = Pooled::metrics(&conn);
    ///     assert_eq!(metrics.times_used(), 1);
    ///     assert!(metrics.age() < std::time::Duration::from_secs(60));
    /// });
    /// ```
    pub fn metrics(this: &Self) -> Metrics {
        Self::entry(this).metrics()
    }

    /// Takes the connection out of the pool for good. The pool's size drops by one, so it may
    /// open another; the detached connection's fate no longer concerns the pool.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, Pooled, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).min_size(0).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let conn: u64 = Pooled::detach(pool.get().await.unwrap());
    ///     assert_eq!(conn, 7);
    ///     assert_eq!(pool.status().size, 0);
    /// });
    /// ```
    pub fn detach(mut this: Self) -> M::Connection {
        let mut entry = this
            .entry
            .take()
            .expect("a Pooled holds its entry until dropped");
        if let Some(lease) = entry.lease.take() {
            this.shared.end_lease(lease);
        }
        this.shared.detach(&mut entry.conn);
        entry.conn
    }

    /// Marks the connection broken: it is closed instead of reused when this guard drops.
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
    /// # let pool = Pool::builder(Numbers).min_size(0).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let mut conn = pool.get().await.unwrap();
    ///     Pooled::mark_broken(&mut conn);
    /// });
    /// assert_eq!(pool.statistics().closed.get(Removal::Broken), 1);
    /// ```
    pub fn mark_broken(this: &mut Self) {
        let entry = Self::entry_mut(this);
        if entry.mark == Mark::Keep {
            entry.mark = Mark::Broken;
        }
    }

    /// Marks the connection as lost because the server went away: it is closed when this
    /// guard drops, and every older connection is checked before it is reused.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, Pooled, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).min_size(0).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let mut conn = pool.get().await.unwrap();
    ///     Pooled::mark_server_gone(&mut conn);
    /// });
    /// assert_eq!(pool.statistics().revalidations, 1);
    /// ```
    pub fn mark_server_gone(this: &mut Self) {
        Self::entry_mut(this).mark = Mark::ServerGone;
    }

    /// A handle to the pool this connection came from.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, Pooled, ThreadRuntime};
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// # let pool = Pool::builder(Numbers).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let conn = pool.get().await.unwrap();
    ///     assert_eq!(Pooled::pool(&conn).status().in_use, 1);
    /// });
    /// ```
    pub fn pool(this: &Self) -> Pool<M> {
        this.shared.handles.fetch_add(1, Ordering::Relaxed);
        Pool {
            shared: Arc::clone(&this.shared),
        }
    }
}

impl<M: Manager> Deref for Pooled<M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &Self::entry(self).conn
    }
}

impl<M: Manager> DerefMut for Pooled<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self
            .entry
            .as_mut()
            .expect("a Pooled holds its entry until dropped")
            .conn
    }
}

impl<M: Manager> AsRef<M::Connection> for Pooled<M> {
    fn as_ref(&self) -> &M::Connection {
        self
    }
}

impl<M: Manager> AsMut<M::Connection> for Pooled<M> {
    fn as_mut(&mut self) -> &mut M::Connection {
        self
    }
}

impl<M: Manager> Drop for Pooled<M> {
    fn drop(&mut self) {
        if let Some(mut entry) = self.entry.take() {
            if let Some(lease) = entry.lease.take() {
                self.shared.end_lease(lease);
            }
            self.shared.give_back(entry);
        }
    }
}

impl<M: Manager> fmt::Debug for Pooled<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Pooled");
        if let Some(entry) = &self.entry {
            s.field("metrics", &entry.metrics());
        }
        s.finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Numbers;

    impl Manager for Numbers {
        type Connection = [u64; 16];
        type Error = std::io::Error;

        async fn create(&self) -> Result<[u64; 16], std::io::Error> {
            Ok([7; 16])
        }
    }

    #[test]
    fn a_guard_is_two_pointers_whatever_the_connection() {
        // Handing a guard around moves 16 bytes: the connection and its bookkeeping are boxed.
        assert_eq!(
            std::mem::size_of::<Pooled<Numbers>>(),
            2 * std::mem::size_of::<usize>()
        );
    }
}
