//! The runtime matrix: one test body, four runtimes.
//!
//! A test is written once as `async fn name(rt: Rt)` and stamped into a module per runtime by
//! [`matrix!`](macro@crate::matrix): `tokio_current_thread`, `tokio_multi_thread`, `async_std` and
//! `smol`. [`Rt`] gives the body everything runtime-specific: the runtime to build pools with
//! (wrapped to count the pool's background tasks), sleeping, spawning and deadlines.

use momopool::{BoxFuture, Runtime};
use momopool_async_std::AsyncStd;
use momopool_pg::{PgRuntime, Socket};
use momopool_smol::Smol;
use momopool_tokio::Tokio;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Every test body must finish within this, or it fails as a hang.
pub const GLOBAL_DEADLINE: Duration = Duration::from_secs(120);

/// Stamps each listed `async fn(Rt)` into a `#[test]` per runtime.
///
/// ```
/// use momopool_tests::Rt;
/// use std::time::Duration;
///
/// async fn sleeps_on_every_runtime(rt: Rt) {
///     rt.sleep(Duration::from_millis(1)).await;
/// }
///
/// momopool_tests::matrix!(sleeps_on_every_runtime);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! matrix {
    ($($test:ident),* $(,)?) => {
        mod tokio_current_thread {
            $( #[test] fn $test() { $crate::matrix::run_tokio_current_thread(super::$test) } )*
        }
        mod tokio_multi_thread {
            $( #[test] fn $test() { $crate::matrix::run_tokio_multi_thread(super::$test) } )*
        }
        mod async_std {
            $( #[test] fn $test() { $crate::matrix::run_async_std(super::$test) } )*
        }
        mod smol {
            $( #[test] fn $test() { $crate::matrix::run_smol(super::$test) } )*
        }
    };
}

/// Counts the tasks a pool spawned that are still running.
#[derive(Debug)]
struct Counted {
    inner: Arc<dyn PgRuntime>,
    live: Arc<AtomicUsize>,
}

struct LiveTask(Arc<AtomicUsize>);

impl Drop for LiveTask {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Runtime for Counted {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.live.fetch_add(1, Ordering::SeqCst);
        let live = LiveTask(Arc::clone(&self.live));
        self.inner.spawn(Box::pin(async move {
            let _live = live;
            task.await;
        }));
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        self.inner.sleep(duration)
    }
}

impl PgRuntime for Counted {
    fn connect_tcp(
        &self,
        addr: std::net::SocketAddr,
    ) -> BoxFuture<'static, std::io::Result<Socket>> {
        self.inner.connect_tcp(addr)
    }

    fn connect_unix(
        &self,
        path: std::path::PathBuf,
    ) -> BoxFuture<'static, std::io::Result<Socket>> {
        self.inner.connect_unix(path)
    }
}

/// What a matrix test body gets: the runtime under test and helpers around it.
#[derive(Clone)]
pub struct Rt {
    name: &'static str,
    raw: Arc<dyn PgRuntime>,
    counted: Arc<Counted>,
    live: Arc<AtomicUsize>,
}

impl fmt::Debug for Rt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rt").field("name", &self.name).finish()
    }
}

impl Rt {
    fn new(name: &'static str, raw: Arc<dyn PgRuntime>) -> Self {
        let live = Arc::new(AtomicUsize::new(0));
        let counted = Arc::new(Counted {
            inner: Arc::clone(&raw),
            live: Arc::clone(&live),
        });
        Rt {
            name,
            raw,
            counted,
            live,
        }
    }

    /// Which runtime this is, e.g. `"smol"`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The runtime to build pools with; it counts the pool's tasks.
    pub fn runtime(&self) -> Arc<dyn Runtime> {
        self.counted.clone()
    }

    /// The same runtime, with sockets, for PostgreSQL pools and connections.
    pub fn pg_runtime(&self) -> Arc<dyn PgRuntime> {
        self.counted.clone()
    }

    /// Tasks spawned through [`Rt::runtime`] that have not finished.
    pub fn live_tasks(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Sleeps on the runtime under test.
    pub async fn sleep(&self, duration: Duration) {
        self.raw.sleep(duration).await;
    }

    /// Runs `fut` as a task of the runtime under test; await the result through the handle.
    pub fn spawn<T, F>(&self, fut: F) -> Task<T>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = futures::channel::oneshot::channel();
        self.raw.spawn(Box::pin(async move {
            let _ = tx.send(fut.await);
        }));
        Task(rx)
    }

    /// `Some(output)` if `fut` finishes within `limit`, `None` otherwise.
    pub async fn timeout<F: Future>(&self, limit: Duration, fut: F) -> Option<F::Output> {
        let sleep = self.raw.sleep(limit);
        let fut = std::pin::pin!(fut);
        match futures::future::select(fut, sleep).await {
            futures::future::Either::Left((out, _)) => Some(out),
            futures::future::Either::Right(_) => None,
        }
    }

    /// Polls `cond` every few milliseconds until it holds; panics with `what` after `limit`.
    pub async fn wait_until(&self, limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        let started = Instant::now();
        while !cond() {
            assert!(
                started.elapsed() < limit,
                "[{}] still waiting after {limit:?} for: {what}",
                self.name
            );
            self.sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A task spawned by [`Rt::spawn`]; resolves to its output, and panics if the task panicked.
#[derive(Debug)]
pub struct Task<T>(futures::channel::oneshot::Receiver<T>);

impl<T> Future for Task<T> {
    type Output = T;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<T> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.expect("a spawned test task panicked"))
    }
}

async fn with_deadline<F: Future<Output = ()>>(rt: Rt, body: F) {
    let name = rt.name;
    // Boxed: `block_on` moves the future by value, and a large test body's future in a debug
    // build would overflow a test thread's stack on some runtimes.
    if rt.timeout(GLOBAL_DEADLINE, Box::pin(body)).await.is_none() {
        panic!("[{name}] test exceeded its global deadline of {GLOBAL_DEADLINE:?}: a hang");
    }
}

/// Runs a test body on a Tokio current-thread runtime.
pub fn run_tokio_current_thread<F, Fut>(test: F)
where
    F: FnOnce(Rt) -> Fut,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let rt = Rt::new("tokio-current-thread", Arc::new(Tokio::current()));
        with_deadline(rt.clone(), test(rt)).await;
    });
}

/// Runs a test body on a Tokio multi-thread runtime with two workers.
pub fn run_tokio_multi_thread<F, Fut>(test: F)
where
    F: FnOnce(Rt) -> Fut,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let rt = Rt::new("tokio-multi-thread", Arc::new(Tokio::current()));
        with_deadline(rt.clone(), test(rt)).await;
    });
}

/// Runs a test body on async-std.
pub fn run_async_std<F, Fut>(test: F)
where
    F: FnOnce(Rt) -> Fut,
    Fut: Future<Output = ()>,
{
    async_std::task::block_on(async {
        let rt = Rt::new("async-std", Arc::new(AsyncStd));
        with_deadline(rt.clone(), test(rt)).await;
    });
}

/// Runs a test body on smol.
pub fn run_smol<F, Fut>(test: F)
where
    F: FnOnce(Rt) -> Fut,
    Fut: Future<Output = ()>,
{
    smol::block_on(async {
        let rt = Rt::new("smol", Arc::new(Smol));
        with_deadline(rt.clone(), test(rt)).await;
    });
}
