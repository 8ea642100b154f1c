//! The pools under test: a no-op manager for each, one checkout interface over all of them,
//! and the configurations ("variants") the benchmark builds.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The "connection" every no-op manager hands out: a small struct, made instantly.
#[derive(Debug)]
pub(crate) struct Conn {
    /// A number unique within one manager, so the struct is not zero-sized.
    pub(crate) id: u64,
}

/// The error type of the no-op managers. It never occurs.
#[derive(Debug)]
pub(crate) struct NoopError;

impl fmt::Display for NoopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no-op manager error")
    }
}

impl std::error::Error for NoopError {}

/// A manager for every pool: `create` returns a [`Conn`] at once; checks and recycling do
/// nothing and succeed.
#[derive(Debug, Default)]
pub(crate) struct Noop {
    next: AtomicU64,
}

impl Noop {
    /// A new connection.
    fn make(&self) -> Conn {
        Conn {
            id: self.next.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl momopool::Manager for Noop {
    type Connection = Conn;
    type Error = NoopError;

    async fn create(&self) -> Result<Conn, NoopError> {
        Ok(self.make())
    }

    async fn check(&self, _conn: &mut Conn, _metrics: &momopool::Metrics) -> Result<(), NoopError> {
        Ok(())
    }
}

impl deadpool::managed::Manager for Noop {
    type Type = Conn;
    type Error = NoopError;

    async fn create(&self) -> Result<Conn, NoopError> {
        Ok(self.make())
    }

    async fn recycle(
        &self,
        _conn: &mut Conn,
        _metrics: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<NoopError> {
        Ok(())
    }
}

impl bb8::ManageConnection for Noop {
    type Connection = Conn;
    type Error = NoopError;

    async fn connect(&self) -> Result<Conn, NoopError> {
        Ok(self.make())
    }

    async fn is_valid(&self, _conn: &mut Conn) -> Result<(), NoopError> {
        Ok(())
    }

    fn has_broken(&self, _conn: &mut Conn) -> bool {
        false
    }
}

#[mobc::async_trait]
impl mobc::Manager for Noop {
    type Connection = Conn;
    type Error = NoopError;

    async fn connect(&self) -> Result<Conn, NoopError> {
        Ok(self.make())
    }

    async fn check(&self, conn: Conn) -> Result<Conn, NoopError> {
        Ok(conn)
    }
}

/// What the benchmark needs from a pool: a cloneable handle and a checkout whose guard returns
/// the connection when dropped.
pub(crate) trait BenchPool: Clone + Send + Sync + 'static {
    /// The checkout guard; it dereferences to the connection.
    type Guard<'a>: Send + std::ops::Deref<Target = Conn>
    where
        Self: 'a;

    /// Checks a connection out, with the pool's configured timeouts; the error as text.
    fn checkout(&self) -> impl Future<Output = Result<Self::Guard<'_>, String>> + Send;

    /// Extra preparation after the generic warm-up (momopool: wait for `min_size`).
    fn prepare(&self) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }
}

impl BenchPool for momopool::Pool<Noop> {
    type Guard<'a> = momopool::Pooled<Noop>;

    async fn checkout(&self) -> Result<Self::Guard<'_>, String> {
        self.get().await.map_err(|e| e.to_string())
    }

    async fn prepare(&self) -> Result<(), String> {
        self.warm_up().await.map_err(|e| e.to_string())
    }
}

impl BenchPool for deadpool::managed::Pool<Noop> {
    type Guard<'a> = deadpool::managed::Object<Noop>;

    async fn checkout(&self) -> Result<Self::Guard<'_>, String> {
        self.get().await.map_err(|e| format!("{e:?}"))
    }
}

impl BenchPool for bb8::Pool<Noop> {
    type Guard<'a> = bb8::PooledConnection<'a, Noop>;

    async fn checkout(&self) -> Result<Self::Guard<'_>, String> {
        self.get().await.map_err(|e| format!("{e:?}"))
    }
}

impl BenchPool for mobc::Pool<Noop> {
    type Guard<'a> = mobc::Connection<Noop>;

    async fn checkout(&self) -> Result<Self::Guard<'_>, String> {
        self.get().await.map_err(|e| match e {
            mobc::Error::Inner(inner) => inner.to_string(),
            mobc::Error::Timeout => "timed out".to_owned(),
            mobc::Error::BadConn => "bad connection".to_owned(),
            mobc::Error::PoolClosed => "pool closed".to_owned(),
        })
    }
}

/// The async runtime a pool is built on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rt {
    /// Tokio; pools that need a runtime get the current one.
    Tokio,
    /// smol's global executor; only momopool and deadpool (without timeouts) run here.
    Smol,
}

/// momopool's checkout validation policy in a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// The default: check connections idle longer than 500 ms (reads the clock each checkout).
    Default,
    /// `Validation::Never`.
    Never,
    /// `Validation::Always`: `Manager::check` on every checkout, as deadpool, bb8 and mobc do.
    Always,
}

/// One pool configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    /// momopool; `timeouts: false` sets wait, create and recycle timeouts to `None`.
    Momo {
        /// Keep the default timeouts (30 s wait, 10 s create, 5 s recycle).
        timeouts: bool,
        /// The validation policy.
        check: Check,
    },
    /// deadpool's managed pool; with timeouts 30 s wait, 10 s create, 5 s recycle on Tokio.
    Deadpool {
        /// Configure `Timeouts` (needs the Tokio runtime).
        timeouts: bool,
    },
    /// bb8, whose `connection_timeout` (30 s by default) always applies.
    Bb8 {
        /// `test_on_check_out` (on by default): run `is_valid` on every checkout.
        test_on_check_out: bool,
    },
    /// mobc (Tokio only).
    Mobc {
        /// Keep the default 30 s `get_timeout` (else `None`).
        get_timeout: bool,
    },
    /// The reference floor ([`crate::floor`]): a minimal fair hand-off, no timeouts.
    Floor,
}

/// momopool with its defaults.
pub(crate) const MOMO: Variant = Variant::Momo {
    timeouts: true,
    check: Check::Default,
};
/// momopool with no timeouts.
pub(crate) const MOMO_NO_TIMEOUTS: Variant = Variant::Momo {
    timeouts: false,
    check: Check::Default,
};
/// deadpool with timeouts (Tokio).
pub(crate) const DEADPOOL: Variant = Variant::Deadpool { timeouts: true };
/// deadpool without timeouts (no runtime needed).
pub(crate) const DEADPOOL_NO_TIMEOUTS: Variant = Variant::Deadpool { timeouts: false };
/// bb8 with its defaults.
pub(crate) const BB8: Variant = Variant::Bb8 {
    test_on_check_out: true,
};
/// mobc with its defaults.
pub(crate) const MOBC: Variant = Variant::Mobc { get_timeout: true };
/// The reference floor.
pub(crate) const FLOOR: Variant = Variant::Floor;

impl Variant {
    /// A short name for tables.
    pub(crate) fn label(self) -> String {
        match self {
            Variant::Momo { timeouts, check } => {
                let mut parts = Vec::new();
                if !timeouts {
                    parts.push("no timeouts");
                }
                match check {
                    Check::Default => {}
                    Check::Never => parts.push("Validation::Never"),
                    Check::Always => parts.push("Validation::Always"),
                }
                if parts.is_empty() {
                    "momopool".to_owned()
                } else {
                    format!("momopool ({})", parts.join(", "))
                }
            }
            Variant::Deadpool { timeouts: true } => "deadpool".to_owned(),
            Variant::Deadpool { timeouts: false } => "deadpool (no timeouts)".to_owned(),
            Variant::Bb8 {
                test_on_check_out: true,
            } => "bb8".to_owned(),
            Variant::Bb8 {
                test_on_check_out: false,
            } => "bb8 (test_on_check_out off)".to_owned(),
            Variant::Mobc { get_timeout: true } => "mobc".to_owned(),
            Variant::Mobc { get_timeout: false } => "mobc (no get_timeout)".to_owned(),
            Variant::Floor => "floor (reference, not a pool)".to_owned(),
        }
    }
}

/// Something to do with a freshly built pool, whatever its type.
pub(crate) trait Job {
    /// The result.
    type Out;

    /// Runs the job on `pool`, whose maximum size is `size`.
    fn run<P: BenchPool>(self, pool: P, size: usize) -> impl Future<Output = Self::Out>;
}

/// The wait timeout given to other pools with timeouts (momopool's default).
const WAIT: Duration = Duration::from_secs(30);
/// The create timeout given to deadpool with timeouts (momopool's default).
const CREATE: Duration = Duration::from_secs(10);
/// The recycle timeout given to deadpool with timeouts (momopool's default).
const RECYCLE: Duration = Duration::from_secs(5);

/// Builds `variant` with `size` connections at most (and `min_size` = `size` where the pool
/// has such a setting), on `rt`, and runs `job` with it. Must be called inside the runtime.
pub(crate) async fn with_pool<J: Job>(
    variant: Variant,
    size: usize,
    rt: Rt,
    job: J,
) -> Result<J::Out, String> {
    match variant {
        Variant::Momo { timeouts, check } => {
            let mut builder = momopool::Pool::builder(Noop::default())
                .min_size(size)
                .max_size(size);
            if !timeouts {
                builder = builder
                    .wait_timeout(None)
                    .create_timeout(None)
                    .recycle_timeout(None);
            }
            builder = match check {
                Check::Default => builder,
                Check::Never => builder.validation(momopool::Validation::Never),
                Check::Always => builder.validation(momopool::Validation::Always),
            };
            builder = match rt {
                Rt::Tokio => builder.runtime(momopool_tokio::Tokio::current()),
                Rt::Smol => builder.runtime(momopool_smol::Smol),
            };
            let pool = builder.build().map_err(|e| e.to_string())?;
            Ok(job.run(pool, size).await)
        }
        Variant::Deadpool { timeouts } => {
            let mut builder =
                deadpool::managed::Pool::<Noop>::builder(Noop::default()).max_size(size);
            if timeouts {
                if rt != Rt::Tokio {
                    return Err("deadpool timeouts need the Tokio runtime here".to_owned());
                }
                builder = builder
                    .runtime(deadpool::Runtime::Tokio1)
                    .wait_timeout(Some(WAIT))
                    .create_timeout(Some(CREATE))
                    .recycle_timeout(Some(RECYCLE));
            }
            let pool = builder.build().map_err(|e| e.to_string())?;
            Ok(job.run(pool, size).await)
        }
        Variant::Bb8 { test_on_check_out } => {
            if rt != Rt::Tokio {
                return Err("bb8 runs on Tokio only".to_owned());
            }
            let max = u32::try_from(size).map_err(|e| e.to_string())?;
            let pool = bb8::Pool::builder()
                .max_size(max)
                .min_idle(Some(max))
                .test_on_check_out(test_on_check_out)
                .build(Noop::default())
                .await
                .map_err(|e| e.to_string())?;
            Ok(job.run(pool, size).await)
        }
        Variant::Mobc { get_timeout } => {
            if rt != Rt::Tokio {
                return Err("mobc runs on Tokio only".to_owned());
            }
            let max = size as u64;
            let pool = mobc::Pool::builder()
                .max_open(max)
                .max_idle(max)
                .get_timeout(get_timeout.then_some(WAIT))
                .build(Noop::default());
            Ok(job.run(pool, size).await)
        }
        Variant::Floor => Ok(job.run(crate::floor::Floor::new(size), size).await),
    }
}

/// Checks out `size` connections at once and returns them, so that every pool starts a run
/// with `size` idle connections; then waits for momopool's `min_size`.
pub(crate) async fn warm<P: BenchPool>(pool: &P, size: usize) -> Result<(), String> {
    pool.prepare().await?;
    let mut held = Vec::with_capacity(size);
    for _ in 0..size {
        held.push(pool.checkout().await?);
    }
    drop(held);
    Ok(())
}
