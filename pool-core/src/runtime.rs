//! The [`Runtime`] trait: how the pool spawns its background tasks and measures time.
//!
//! The pool never names an async runtime. Everything it needs from one is here: running a
//! detached task and sleeping. Runtime crates (`momopool-tokio`, `momopool-smol`,
//! `momopool-async-std`) implement it in a few lines; [`ThreadRuntime`](crate::ThreadRuntime)
//! is a dependency-free fallback for doctests and small tools.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// A boxed, sendable future, as the pool passes them to a [`Runtime`].
///
/// # Examples
///
/// ```
/// use momopool::BoxFuture;
///
/// fn next_after(n: &u64) -> BoxFuture<'_, u64> {
///     Box::pin(async move { *n + 1 })
/// }
///
/// assert_eq!(futures::executor::block_on(next_after(&41)), 42);
/// ```
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the pool needs from an async runtime: spawning detached tasks and sleeping.
///
/// The trait is object-safe because the pool stores its runtime as `Arc<dyn Runtime>`, which
/// keeps `Pool<M>` free of a runtime type parameter. Both methods box their future; the pool
/// calls them only off the hot path (a connect, a caller that really has to wait, a maintenance
/// tick), never on an uncontended checkout.
///
/// # Examples
///
/// A runtime built on plain threads (roughly what [`ThreadRuntime`](crate::ThreadRuntime) does):
///
/// ```
/// use momopool::{BoxFuture, Runtime};
/// use std::time::Duration;
///
/// #[derive(Debug)]
/// struct Threads;
///
/// impl Runtime for Threads {
///     fn spawn(&self, task: BoxFuture<'static, ()>) {
///         std::thread::spawn(move || futures::executor::block_on(task));
///     }
///     fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
///         let (tx, rx) = futures::channel::oneshot::channel::<()>();
///         std::thread::spawn(move || {
///             std::thread::sleep(duration);
///             let _ = tx.send(());
///         });
///         Box::pin(async move {
///             let _ = rx.await;
///         })
///     }
/// }
/// ```
pub trait Runtime: Send + Sync + fmt::Debug + 'static {
    /// Runs `task` to completion in the background, detached from the caller.
    ///
    /// The pool never joins or cancels a spawned task: its background tasks end by themselves
    /// when their work is done or the pool is closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::{Runtime, ThreadRuntime};
    ///
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// ThreadRuntime.spawn(Box::pin(async move {
    ///     tx.send("done").unwrap();
    /// }));
    /// assert_eq!(rx.recv().unwrap(), "done");
    /// ```
    fn spawn(&self, task: BoxFuture<'static, ()>);

    /// Returns a future that completes once `duration` has elapsed.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::{Runtime, ThreadRuntime};
    /// use std::time::{Duration, Instant};
    ///
    /// let runtime: &dyn Runtime = &ThreadRuntime;
    /// let started = Instant::now();
    /// futures::executor::block_on(runtime.sleep(Duration::from_millis(10)));
    /// assert!(started.elapsed() >= Duration::from_millis(10));
    /// ```
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()>;
}

/// Runs `fut` with a deadline on `runtime`'s timer, armed only when the future does not
/// finish on its first poll. `None` as the duration means no limit. When the deadline passes
/// first, `fut` is dropped and the result is [`Elapsed`].
///
/// What the pool itself uses for its create and recycle timeouts; a [`Manager`](crate::Manager)
/// may use it for limits of its own.
///
/// # Examples
///
/// ```
/// use momopool::{Elapsed, ThreadRuntime, with_timeout};
/// use std::time::Duration;
///
/// futures::executor::block_on(async {
///     let quick = with_timeout(&ThreadRuntime, Some(Duration::from_secs(1)), async { 7 });
///     assert_eq!(quick.await, Ok(7));
///     let never = std::future::pending::<()>();
///     let slow = with_timeout(&ThreadRuntime, Some(Duration::from_millis(10)), never);
///     assert_eq!(slow.await, Err(Elapsed));
/// });
/// ```
pub async fn with_timeout<F: Future>(
    runtime: &dyn Runtime,
    limit: Option<Duration>,
    fut: F,
) -> Result<F::Output, Elapsed> {
    let Some(limit) = limit else {
        return Ok(fut.await);
    };
    let mut fut = std::pin::pin!(fut);
    let mut sleep: Option<BoxFuture<'static, ()>> = None;
    std::future::poll_fn(|cx: &mut Context<'_>| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let timer = sleep.get_or_insert_with(|| runtime.sleep(limit));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// The deadline of [`with_timeout`] passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;
