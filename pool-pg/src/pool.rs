//! [`PgPool`]: Momoko's Pool for PostgreSQL.
//!
//! See [`PgPool`] for the retry and reconnect rules every call follows.

use crate::config::PgConfig;
use crate::connection::{Connection, Failure, Keep, Transaction, TxFailure};
use crate::error::{Error, outcome_unknown};
use crate::listener::Listener;
use crate::manager::PgManager;
use crate::runtime::PgRuntime;
use crate::shared::{Lanes, SharedMode};
use momopool::{Manager, Pool, PoolBuilder, PoolConfig, Pooled, Runtime};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Statement parameters, as tokio-postgres takes them.
/// # Examples
///
/// ```
/// use momopool_pg::Params;
///
/// let id = 7i32;
/// let name = "widget";
/// let params: Params<'_> = &[&id, &name];
/// assert_eq!(params.len(), 2);
/// ```
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Per-call options: a deadline and whether the call may be replayed.
///
/// # Examples
///
/// ```
/// use momopool_pg::CallOptions;
/// use std::time::Duration;
///
/// let options = CallOptions::new().timeout(Duration::from_millis(300)).idempotent();
/// # drop(options);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallOptions {
    timeout: Option<Duration>,
    idempotent: bool,
    exclusive: bool,
}

impl CallOptions {
    /// No deadline beyond the pool's, not idempotent.
    /// # Examples
    ///
    /// ```
    /// use momopool_pg::CallOptions;
    ///
    /// assert_eq!(CallOptions::new(), CallOptions::default());
    /// assert_ne!(CallOptions::new().idempotent(), CallOptions::new());
    /// ```
    pub fn new() -> Self {
        CallOptions::default()
    }

    /// A deadline for this call, checkout included; overrides the pool's statement timeout.
    /// At the deadline the caller gets [`Error::StatementTimeout`], whose outcome is unknown,
    /// or, for a transaction whose `COMMIT` had not been sent, [`Error::TransactionTimeout`],
    /// which committed nothing.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::CallOptions;
    /// use std::time::Duration;
    ///
    /// let quick = CallOptions::new().timeout(Duration::from_millis(250));
    /// let err = pool.with(quick).execute("SELECT pg_sleep(1)", &[]).await.unwrap_err();
    /// // The statement was sent, so whether it ran is unknown.
    /// assert!(err.is_outcome_unknown());
    /// # Ok(()) }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The statement (or transaction closure) may safely run twice: after a failure with an
    /// unknown outcome it is replayed once on a fresh connection, within the deadline.
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::CallOptions;
    ///
    /// // Reading twice does no harm, so a lost connection may be retried.
    /// let rows = pool
    ///     .with(CallOptions::new().idempotent())
    ///     .execute("SELECT price FROM prices WHERE id = $1", &[&7i32])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Run on a connection of its own even when the pool is in shared mode: never pipelined
    /// behind another caller's statement.
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::CallOptions;
    ///
    /// // A slow report should not hold up statements pipelined behind it in shared mode.
    /// let report = pool
    ///     .with(CallOptions::new().exclusive())
    ///     .execute("SELECT count(*) FROM orders GROUP BY customer_id", &[])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn exclusive(mut self) -> Self {
        self.exclusive = true;
        self
    }
}

/// A PostgreSQL pool with Momoko's API: each call borrows a connection and returns it when
/// done; several calls awaited together run in parallel on distinct connections.
///
/// # Retry and reconnect rules
///
/// - A dead connection is never handed out: the pool checks `is_closed` on every checkout,
///   validates connections idle longer than its threshold, and after a connection dies of a
///   "server gone" error checks every older connection first.
/// - A statement whose connection turned out dead *before the statement could run* (closed
///   at checkout, lost while preparing, lost before the statement's request was written, or,
///   for a prepared statement, answered with the server's goodbye in place of the
///   acknowledgement of its bind) is retried on a fresh connection, up to three times. This
///   is the transparent retry: the caller never sees it.
/// - A failure after the statement was sent (the connection lost mid-statement, a `COMMIT`
///   without a reply) has an unknown outcome. It is returned as
///   [`Error::OutcomeUnknown`] and never replayed, unless the call was marked idempotent with
///   [`CallOptions::idempotent`], which allows one replay on a fresh connection within the
///   deadline. Nothing inside a caller's transaction is ever retried on its own.
/// - A transaction whose connection is lost before its `COMMIT` is sent committed nothing:
///   the server rolls it back. The list form ([`transaction`](PgPool::transaction)) then runs
///   again from `BEGIN`; a closure ([`transaction_with`](PgPool::transaction_with)) returns
///   the lost connection's error, which is not an unknown outcome.
/// - SQL errors are returned at once with their SQLSTATE.
/// - Authentication and unknown-database errors fail every waiting caller at once, without
///   a reconnect storm.
/// - A statement deadline ([`PgConfig::statement_timeout`] or
///   [`CallOptions::timeout`]) frees the caller on time, sends the server a cancel request
///   and discards the connection. A transaction that reaches its deadline before its
///   `COMMIT` was sent gets [`Error::TransactionTimeout`]: nothing was committed.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "rt-smol")]
/// # smol::block_on(async {
/// use momopool_pg::PgPool;
///
/// let pool = PgPool::connect("postgresql://app@127.0.0.1/shop").await?;
/// let rows = pool.execute("SELECT $1::int + 1", &[&41]).await?;
/// assert_eq!(rows[0].get::<_, i32>(0), 42);
///
/// // Three queries at once, on three connections.
/// let (a, b, c) = futures::try_join!(
///     pool.execute("SELECT pg_sleep(0.1)", &[]),
///     pool.execute("SELECT pg_sleep(0.1)", &[]),
///     pool.execute("SELECT pg_sleep(0.1)", &[]),
/// )?;
/// # drop((a, b, c));
/// # Ok::<_, momopool_pg::Error>(()) });
/// ```
#[derive(Clone)]
pub struct PgPool {
    pool: Pool<PgManager>,
    lanes: Option<Arc<Lanes>>,
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool")
            .field("config", self.pool.manager().config())
            .field("status", &self.pool.status())
            .finish()
    }
}

/// Builds a [`PgPool`].
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "rt-smol")] {
/// use momopool_pg::{PgConfig, PgPool};
/// use std::time::Duration;
///
/// let pool = PgPool::builder(PgConfig::from_dsn("host=127.0.0.1 user=app").unwrap())
///     .runtime(momopool_smol::Smol)
///     .min_size(1)
///     .max_size(10)
///     .configure(|b| b.wait_timeout(Duration::from_secs(3)))
///     .build()
///     .unwrap();
/// # drop(pool); }
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct PgPoolBuilder {
    config: PgConfig,
    pool: PoolConfig,
    shared: Option<SharedMode>,
    runtime: Option<Arc<dyn PgRuntime>>,
    #[allow(clippy::type_complexity)]
    configure: Vec<Box<dyn FnOnce(PoolBuilder<PgManager>) -> PoolBuilder<PgManager> + Send>>,
}

impl std::fmt::Debug for PgPoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPoolBuilder")
            .field("config", &self.config)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl PgPoolBuilder {
    /// The runtime to connect and run on; defaults to [`default_runtime`](crate::default_runtime).
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use momopool_pg::{PgConfig, PgPool, Tokio};
    ///
    /// let config = PgConfig::from_dsn("host=127.0.0.1 user=app").unwrap();
    /// let pool = PgPool::builder(config).runtime(Tokio::current()).build().unwrap();
    /// assert!(!pool.inner().is_closed());
    /// # }
    /// ```
    pub fn runtime(mut self, runtime: impl PgRuntime) -> Self {
        self.runtime = Some(Arc::new(runtime));
        self
    }

    /// The runtime, already shared.
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use momopool_pg::{PgConfig, PgPool, PgRuntime, Tokio};
    /// use std::sync::Arc;
    ///
    /// let runtime: Arc<dyn PgRuntime> = Arc::new(Tokio::current());
    /// let primary = PgPool::builder(PgConfig::from_dsn("host=127.0.0.1 port=5432").unwrap())
    ///     .shared_runtime(runtime.clone())
    ///     .build()
    ///     .unwrap();
    /// let replica = PgPool::builder(PgConfig::from_dsn("host=127.0.0.1 port=5433").unwrap())
    ///     .shared_runtime(runtime)
    ///     .build()
    ///     .unwrap();
    /// # drop((primary, replica));
    /// # }
    /// ```
    pub fn shared_runtime(mut self, runtime: Arc<dyn PgRuntime>) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Every pool setting at once (see [`momopool::PoolConfig`]).
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use momopool::PoolConfig;
    /// use momopool_pg::{PgConfig, PgPool};
    /// use std::time::Duration;
    ///
    /// let settings = PoolConfig {
    ///     max_size: 20,
    ///     wait_timeout: Some(Duration::from_secs(5)),
    ///     ..PoolConfig::default()
    /// };
    /// let pool = PgPool::builder(PgConfig::from_dsn("host=127.0.0.1 user=app").unwrap())
    ///     .pool_config(settings.clone())
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(pool.inner().config(), &settings);
    /// # }
    /// ```
    pub fn pool_config(mut self, pool: PoolConfig) -> Self {
        self.pool = pool;
        self
    }

    /// Connections kept open even when idle (Momoko's `size`).
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use momopool_pg::{PgConfig, PgPool};
    ///
    /// let pool = PgPool::builder(PgConfig::from_dsn("host=127.0.0.1 user=app").unwrap())
    ///     .min_size(2)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(pool.inner().status().min_size, 2);
    /// # }
    /// ```
    pub fn min_size(mut self, min_size: usize) -> Self {
        self.pool.min_size = min_size;
        self
    }

    /// The most connections the pool stretches to (Momoko's `max_size`).
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use momopool_pg::{PgConfig, PgPool};
    ///
    /// let pool = PgPool::builder(PgConfig::from_dsn("host=127.0.0.1 user=app").unwrap())
    ///     .max_size(32)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(pool.inner().status().max_size, 32);
    /// # }
    /// ```
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.pool.max_size = max_size;
        self
    }

    /// Shared mode: single-statement calls (`execute` and its variants, `callproc`) pipeline
    /// on a few connections instead of taking one each; see [`SharedMode`] for how and for
    /// the trade-off. Statements that could change session state, transactions, cursors and
    /// [`get`](PgPool::get) always use a connection of their own.
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use momopool_pg::{Error, PgConfig, PgPool, SharedMode};
    ///
    /// let config = PgConfig::from_dsn("host=127.0.0.1 user=app").unwrap();
    /// let pool = PgPool::builder(config.clone())
    ///     .shared(SharedMode { connections: 2, ..SharedMode::default() })
    ///     .build()
    ///     .unwrap();
    /// # drop(pool);
    ///
    /// // Lanes need at least one connection.
    /// let err = PgPool::builder(config)
    ///     .shared(SharedMode { connections: 0, ..SharedMode::default() })
    ///     .build()
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::Config(_)));
    /// # }
    /// ```
    pub fn shared(mut self, mode: SharedMode) -> Self {
        self.shared = Some(mode);
        self
    }

    /// Adjusts the underlying [`momopool::PoolBuilder`]: any setting, and hooks.
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use momopool::HookError;
    /// use momopool_pg::{PgConfig, PgPool};
    /// use std::time::Duration;
    ///
    /// let pool = PgPool::builder(PgConfig::from_dsn("host=127.0.0.1 user=app").unwrap())
    ///     .configure(|builder| {
    ///         builder
    ///             .wait_timeout(Duration::from_secs(3))
    ///             .post_create(|conn, _metrics| {
    ///                 Box::pin(async move {
    ///                     let sql = "SET lock_timeout = '2s'";
    ///                     conn.batch_execute(sql).await.map_err(HookError::Backend)
    ///                 })
    ///             })
    ///     })
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(pool.inner().config().wait_timeout, Some(Duration::from_secs(3)));
    /// # }
    /// ```
    pub fn configure(
        mut self,
        f: impl FnOnce(PoolBuilder<PgManager>) -> PoolBuilder<PgManager> + Send + 'static,
    ) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    fn into_builder(self) -> Result<(PoolBuilder<PgManager>, Option<Arc<Lanes>>), Error> {
        if let Some(mode) = self.shared {
            if mode.connections == 0 || mode.max_in_flight == 0 {
                return Err(Error::Config(
                    "shared mode needs at least one connection and one request in flight".into(),
                ));
            }
        }
        let lanes = self.shared.map(|mode| Arc::new(Lanes::new(mode)));
        let runtime = match self.runtime {
            Some(runtime) => runtime,
            None => crate::default_runtime()?,
        };
        let pool_runtime: Arc<dyn Runtime> = runtime.clone();
        let mut builder = Pool::builder(PgManager::new(self.config, runtime))
            .config(self.pool)
            .shared_runtime(pool_runtime);
        for f in self.configure {
            builder = f(builder);
        }
        Ok((builder, lanes))
    }

    /// Builds the pool without connecting; `min_size` connections open in the background.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid setting or no runtime.
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use momopool_pg::{Error, PgConfig, PgPool};
    ///
    /// let config = PgConfig::from_dsn("host=127.0.0.1 user=app").unwrap();
    /// let pool = PgPool::builder(config.clone()).build().unwrap(); // nothing connects yet
    /// # drop(pool);
    ///
    /// let err = PgPool::builder(config).min_size(5).max_size(2).build().unwrap_err();
    /// assert!(matches!(err, Error::Config(_)));
    /// # }
    /// ```
    pub fn build(self) -> Result<PgPool, Error> {
        let (builder, lanes) = self.into_builder()?;
        let pool = builder.build().map_err(|e| Error::Config(e.to_string()))?;
        Ok(PgPool { pool, lanes })
    }

    /// Builds the pool and waits until `min_size` connections (at least one) are open:
    /// an unreachable server or a wrong password fails here (Momoko's
    /// `raise_connect_errors`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`], or the connect error inside [`Error::Pool`].
    ///
    /// # Cancel safety
    ///
    /// Cancelling drops the half-built pool, which closes it.
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::{PgConfig, PgPool};
    ///
    /// let config = PgConfig::from_dsn("postgresql://app@127.0.0.1/shop")?;
    /// // Fails here, not at the first query, if the server is down or the password wrong.
    /// let pool = PgPool::builder(config).min_size(4).build_eager().await?;
    /// assert!(pool.inner().status().idle >= 4);
    /// # Ok(()) }
    /// ```
    pub async fn build_eager(self) -> Result<PgPool, Error> {
        let (builder, lanes) = self.into_builder()?;
        let pool = builder.build_eager().await.map_err(|e| match e {
            momopool::PoolError::Config(e) => Error::Config(e.to_string()),
            other => Error::Pool(other),
        })?;
        Ok(PgPool { pool, lanes })
    }
}

impl PgPool {
    /// Starts building a pool for this configuration.
    ///
    /// Unless the configuration names an `application_name`, connections report
    /// `momopool`, which makes them easy to find in `pg_stat_activity`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use momopool_pg::{PgConfig, PgPool};
    ///
    /// let pool = PgPool::builder(PgConfig::from_dsn("host=127.0.0.1 user=app").unwrap())
    ///     .max_size(4)
    ///     .build()
    ///     .unwrap();
    /// let config = pool.inner().manager().config();
    /// assert_eq!(config.get_application_name(), Some("momopool"));
    /// # }
    /// ```
    pub fn builder(mut config: PgConfig) -> PgPoolBuilder {
        if config.get_application_name().is_none() {
            config = config.application_name("momopool");
        }
        PgPoolBuilder {
            config,
            pool: PoolConfig::default(),
            shared: None,
            runtime: None,
            configure: Vec::new(),
        }
    }

    /// Connects a pool with default settings to `dsn` on the default runtime, and waits for
    /// its first connection (so a wrong DSN fails here).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid DSN; the connect error inside [`Error::Pool`].
    ///
    /// # Cancel safety
    ///
    /// Cancelling drops the half-built pool, which closes it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::PgPool;
    ///
    /// let pool = match PgPool::connect("postgresql://app@127.0.0.1/shop").await {
    ///     Ok(pool) => pool,
    ///     Err(err) => {
    ///         eprintln!("the database is unreachable: {err}");
    ///         return Err(err);
    ///     }
    /// };
    /// # drop(pool);
    /// # Ok(()) }
    /// ```
    pub async fn connect(dsn: &str) -> Result<PgPool, Error> {
        PgPool::builder(PgConfig::from_dsn(dsn)?)
            .build_eager()
            .await
    }

    /// The generic pool underneath: status, statistics, resize, close, and more.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(pool: &momopool_pg::PgPool) {
    /// let status = pool.inner().status();
    /// println!("{} of {} connections in use", status.in_use, status.size);
    /// # }
    /// ```
    pub fn inner(&self) -> &Pool<PgManager> {
        &self.pool
    }

    /// Closes the pool (see [`momopool::Pool::close`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(pool: &momopool_pg::PgPool) {
    /// pool.close();
    /// # }
    /// ```
    pub fn close(&self) {
        self.pool.close();
    }

    /// Calls with these options.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::CallOptions;
    /// use std::time::Duration;
    ///
    /// let fast = CallOptions::new().timeout(Duration::from_millis(200)).idempotent();
    /// let rows = pool.with(fast).execute("SELECT * FROM prices", &[]).await?;
    /// # Ok(()) }
    /// ```
    pub fn with(&self, options: CallOptions) -> Calls<'_> {
        Calls {
            pool: self,
            options,
        }
    }

    fn calls(&self) -> Calls<'_> {
        self.with(CallOptions::default())
    }

    /// Runs a statement and returns its rows (Momoko's `execute`).
    ///
    /// # Errors
    ///
    /// See the [retry rules](PgPool#retry-and-reconnect-rules); SQL errors carry their SQLSTATE.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future returns the connection; if the statement was in flight, the rest
    /// of its answer would still come, so the connection is closed rather than handed on.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    ///
    /// let ids = vec![1i32, 2, 3];
    /// let rows = pool.execute("SELECT id, name FROM users WHERE id = ANY($1)", &[&ids]).await?;
    /// for row in &rows {
    ///     let (id, name): (i32, &str) = (row.get("id"), row.get("name"));
    ///     println!("{id}: {name}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        self.calls().execute(sql, params).await
    }

    /// Runs a statement that returns exactly one row.
    ///
    /// # Errors
    ///
    /// As for [`execute`](PgPool::execute), and [`Error::InvalidInput`] when it did not return
    /// exactly one row.
    ///
    /// # Cancel safety
    ///
    /// As for [`execute`](PgPool::execute).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// let n: i64 = pool.query_one("SELECT count(*) FROM pg_class", &[]).await?.get(0);
    /// # Ok(()) }
    /// ```
    pub async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        self.calls().query_one(sql, params).await
    }

    /// Runs a statement that returns at most one row.
    ///
    /// # Errors
    ///
    /// As for [`execute`](PgPool::execute), and [`Error::InvalidInput`] when it returned
    /// several rows.
    ///
    /// # Cancel safety
    ///
    /// As for [`execute`](PgPool::execute).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// let row = pool.query_opt("SELECT 1 WHERE false", &[]).await?;
    /// assert!(row.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        self.calls().query_opt(sql, params).await
    }

    /// Runs a statement and returns how many rows it affected.
    ///
    /// # Errors
    ///
    /// As for [`execute`](PgPool::execute).
    ///
    /// # Cancel safety
    ///
    /// As for [`execute`](PgPool::execute).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// let n = pool.execute_count("DELETE FROM sessions WHERE expired", &[]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute_count(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        self.calls().execute_count(sql, params).await
    }

    /// Runs statements separated by semicolons, without parameters.
    ///
    /// # Errors
    ///
    /// As for [`execute`](PgPool::execute).
    ///
    /// # Cancel safety
    ///
    /// As for [`execute`](PgPool::execute).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// pool.batch_execute("CREATE TABLE IF NOT EXISTS t (x int); TRUNCATE t").await?;
    /// # Ok(()) }
    /// ```
    pub async fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        self.calls().batch_execute(sql).await
    }

    /// Calls a function and returns its rows (Momoko's `callproc`); the name is quoted as an
    /// identifier and may be schema-qualified. Argument types are inferred from the function,
    /// or from the Rust values when the name is overloaded and ambiguous (see
    /// [`Connection::callproc`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty name; otherwise as for
    /// [`execute`](PgPool::execute).
    ///
    /// # Cancel safety
    ///
    /// As for [`execute`](PgPool::execute).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// let rows = pool.callproc("add_tax", &[&100i32]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn callproc(&self, name: &str, args: Params<'_>) -> Result<Vec<Row>, Error> {
        self.calls().callproc(name, args).await
    }

    /// Runs a list of statements atomically (Momoko's `transaction`) and returns the rows of
    /// each.
    ///
    /// # Errors
    ///
    /// The first failing statement's error (everything is rolled back), or
    /// [`Error::OutcomeUnknown`] when the connection was lost during `COMMIT`. At a deadline,
    /// [`Error::TransactionTimeout`] if the `COMMIT` had not been sent (nothing was
    /// committed), else [`Error::StatementTimeout`].
    ///
    /// # Retries
    ///
    /// A connection lost before `COMMIT` was sent leaves nothing committed: the server rolls
    /// back a transaction whose session ends. The whole list then runs again from `BEGIN` on
    /// a fresh connection (up to three times), with no error reaching the caller. Effects that
    /// ignore transactions, such as `nextval`, happen once per run. A connection lost during
    /// `COMMIT` is never replayed, nor one lost after a statement of the list that may end the
    /// transaction early (`COMMIT`, `ROLLBACK`, ... see [`Transaction`]): that gives
    /// [`Error::OutcomeUnknown`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future rolls the transaction back.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// let results = pool
    ///     .transaction(&[
    ///         ("INSERT INTO accounts (id, balance) VALUES ($1, 100)", &[&1i32]),
    ///         ("SELECT balance FROM accounts WHERE id = $1", &[&1i32]),
    ///     ])
    ///     .await?;
    /// assert_eq!(results[1][0].get::<_, i32>(0), 100);
    /// # Ok(()) }
    /// ```
    pub async fn transaction(
        &self,
        statements: &[(&str, Params<'_>)],
    ) -> Result<Vec<Vec<Row>>, Error> {
        self.calls().transaction(statements).await
    }

    /// Runs `f` in a transaction on a pooled connection: commits on `Ok`, rolls back on
    /// `Err`, panic or cancellation.
    ///
    /// # Errors
    ///
    /// The closure's error, or the error of a `COMMIT` that failed: nothing was committed
    /// (unless the closure ended the transaction itself, see [`Transaction`]). A connection
    /// lost before the `COMMIT` was sent is such an error too ([`Error::is_connection_lost`]):
    /// the server rolled the transaction back.
    /// [`Error::OutcomeUnknown`] when the connection was lost with the `COMMIT` in flight, or
    /// after the closure ended the transaction itself (see [`Transaction`]). At a deadline,
    /// [`Error::TransactionTimeout`] if neither had happened (nothing was committed), else
    /// [`Error::StatementTimeout`].
    ///
    /// # Retries
    ///
    /// A connection found dead at `BEGIN` is replaced before the closure runs (up to three
    /// times), with no error reaching the caller. Once the closure has run, it is never run
    /// again on its own, whether or not anything was committed: what it did outside the
    /// database may have happened. Marked idempotent ([`CallOptions::idempotent`]), it runs
    /// once more on a fresh connection after a lost connection, within its deadline.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future rolls the transaction back.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// pool.transaction_with(|tx| {
    ///     Box::pin(async move {
    ///         tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1", &[]).await?;
    ///         tx.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 2", &[]).await?;
    ///         Ok(())
    ///     })
    /// })
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction_with<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: for<'c> FnMut(&'c mut Transaction<'_>) -> momopool::BoxFuture<'c, Result<T, Error>>,
    {
        self.calls().transaction_with(f).await
    }

    /// Returns `sql` with its parameters inlined as quoted literals (Momoko's `mogrify`).
    ///
    /// # Errors
    ///
    /// See [`Connection::mogrify`].
    ///
    /// # Cancel safety
    ///
    /// As for [`execute`](PgPool::execute).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// let text = pool.mogrify("SELECT $1::text, $2::int", &[&"it's", &7i32]).await?;
    /// assert_eq!(text, "SELECT 'it''s'::text, '7'::integer::int");
    /// # Ok(()) }
    /// ```
    pub async fn mogrify(&self, sql: &str, params: Params<'_>) -> Result<String, Error> {
        self.calls().mogrify(sql, params).await
    }

    /// Borrows a connection (Momoko's `getconn`/`manage`; dropping the guard is `putconn`),
    /// for work that needs one connection across several statements: server-side cursors,
    /// session settings, explicit transactions.
    ///
    /// # Errors
    ///
    /// [`Error::Pool`]: timeout (naming the phase and the last connect error), closed, busy.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (see [`momopool::Pool::get`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// use futures::TryStreamExt;
    ///
    /// let mut conn = pool.get().await?;
    /// let rows: Vec<_> = conn
    ///     .cursor("SELECT generate_series(1, 1000)", &[], 10)
    ///     .try_collect()
    ///     .await?;
    /// assert_eq!(rows.len(), 1000);
    /// # Ok(()) }
    /// ```
    pub async fn get(&self) -> Result<Pooled<PgManager>, Error> {
        let _claim = self
            .lanes
            .as_ref()
            .and_then(|lanes| lanes.make_room(&self.pool));
        Ok(self.pool.get().await?)
    }

    /// Like [`get`](PgPool::get), then pings the server (an empty query) so the connection
    /// is known to work (Momoko's `getconn(ping=True)`). A connection that fails the ping, or
    /// gives no answer within the pool's recycle timeout (a silently dead one), is discarded
    /// and another one tried, three in all.
    ///
    /// # Errors
    ///
    /// As for [`get`](PgPool::get); and the third failed ping's error: the server's, or an
    /// [`Error::Io`] of kind `TimedOut` for a ping left unanswered.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// let conn = pool.get_pinged().await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_pinged(&self) -> Result<Pooled<PgManager>, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = self.get().await?;
            let Err(error) = conn.ping(self.pool.config().recycle_timeout).await else {
                return Ok(conn);
            };
            Pooled::mark_broken(&mut conn);
            if attempt == 3 {
                return Err(error);
            }
        }
    }

    /// Opens a dedicated connection (outside the pool's count) that listens on `channel` and
    /// yields its notifications as a [`Stream`](futures::Stream). Add channels with
    /// [`Listener::listen`]. If the connection is lost, the stream yields that error, then
    /// ends; a keepalive ping finds a connection gone silently dead ([`Listener::keepalive`],
    /// answered within the pool's recycle timeout). The connect and the `LISTEN` together
    /// are bounded by the pool's create timeout.
    ///
    /// # Errors
    ///
    /// The connect error; [`Error::ConnectTimeout`] when the connect and the `LISTEN` take
    /// longer than the pool's create timeout; or the `LISTEN` error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the half-opened connection is closed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// use futures::TryStreamExt;
    ///
    /// let mut listener = pool.listen("jobs").await?;
    /// pool.execute("SELECT pg_notify('jobs', 'hello')", &[]).await?;
    /// let note = listener.try_next().await?.expect("a notification");
    /// assert_eq!(note.payload(), "hello");
    /// # Ok(()) }
    /// ```
    pub async fn listen(&self, channel: &str) -> Result<Listener, Error> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        // Boxed, as a connect's future is large.
        let open = Box::pin(async {
            let mut conn = self.pool.manager().create().await?;
            conn.listen(channel, tx).await?;
            Ok::<_, Error>(conn)
        });
        let limit = self.pool.config().create_timeout;
        match momopool::with_timeout(&**self.pool.runtime(), limit, open).await {
            Ok(conn) => Ok(Listener::new(conn?, rx, self.pool.config().recycle_timeout)),
            Err(momopool::Elapsed) => Err(Error::ConnectTimeout {
                after: limit.unwrap_or_default(),
            }),
        }
    }
}

/// Calls on a [`PgPool`] with [`CallOptions`]; see [`PgPool::with`].
///
/// # Examples
///
/// ```no_run
/// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
/// use momopool_pg::CallOptions;
/// use std::time::Duration;
///
/// // One set of options for several calls.
/// let reads = pool.with(CallOptions::new().timeout(Duration::from_secs(1)).idempotent());
/// let user = reads.query_one("SELECT name FROM users WHERE id = $1", &[&1i32]).await?;
/// let orders = reads.execute("SELECT * FROM orders WHERE user_id = $1", &[&1i32]).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Calls<'a> {
    pool: &'a PgPool,
    options: CallOptions,
}

/// One unit of work, so that a single loop applies the retry rules to all of them.
pub(crate) enum Work<'a> {
    Rows(&'a str, Params<'a>),
    Count(&'a str, Params<'a>),
    Batch(&'a str),
    Mogrify(&'a str, Params<'a>),
    Statements(&'a [(&'a str, Params<'a>)]),
}

pub(crate) enum Done {
    Rows(Vec<Row>),
    Count(u64),
    Unit,
    Text(String),
    Many(Vec<Vec<Row>>),
}

impl Work<'_> {
    /// Whether this work may be pipelined with other callers' statements.
    fn shareable(&self) -> bool {
        match self {
            Work::Rows(sql, _) | Work::Count(sql, _) => !crate::sql::may_change_session(sql),
            _ => false,
        }
    }
}

impl Connection {
    pub(crate) async fn perform(&self, work: &Work<'_>) -> Result<Done, Failure> {
        match *work {
            Work::Rows(sql, params) => self
                .try_statement(sql, params, false, Keep::Rows)
                .await
                .map(|(rows, _)| Done::Rows(rows)),
            Work::Count(sql, params) => self
                .try_statement(sql, params, false, Keep::Count)
                .await
                .map(|(_, n)| Done::Count(n)),
            Work::Batch(sql) => self.try_batch(sql).await.map(|()| Done::Unit),
            Work::Mogrify(sql, params) => self.try_mogrify(sql, params).await.map(Done::Text),
            Work::Statements(statements) => self.try_statements(statements).await.map(Done::Many),
        }
    }
}

impl Calls<'_> {
    /// The call's statement deadline, if it has one, and the moment it started counting:
    /// now (the clock is read only when there is a deadline).
    fn started_deadline(&self) -> Option<(Duration, Instant)> {
        self.options
            .timeout
            .or(self.pool.pool.manager().config().statement_timeout)
            .map(|limit| (limit, Instant::now()))
    }

    /// Applies the retry rules (see [`PgPool`]) around `work`, in shared mode when the pool
    /// has lanes and the work allows it, else on a connection of its own.
    async fn run(&self, work: Work<'_>) -> Result<Done, Error> {
        self.run_until(work, self.started_deadline()).await
    }

    /// [`run`](Calls::run), with the deadline (its length and start) given.
    async fn run_until(
        &self,
        work: Work<'_>,
        deadline: Option<(Duration, Instant)>,
    ) -> Result<Done, Error> {
        let shared = match &self.pool.lanes {
            Some(lanes) if !self.options.exclusive && work.shareable() => Some(lanes),
            _ => None,
        };
        let mut unsent_retries = 0;
        let mut replayed = false;
        loop {
            let shared_outcome = match shared {
                Some(lanes) => lanes.perform(&self.pool.pool, &work, deadline).await,
                None => None,
            };
            let outcome = match shared_outcome {
                Some(outcome) => outcome,
                None => self.run_exclusive(&work, deadline).await?,
            };
            match outcome {
                Ok(done) => return Ok(done),
                Err(Failure { error, sent }) => {
                    if let Error::StatementTimeout { .. } = error {
                        return Err(if sent {
                            Error::OutcomeUnknown(Box::new(error))
                        } else {
                            error
                        });
                    }
                    if !error.is_connection_lost() {
                        return Err(error);
                    }
                    if !sent && unsent_retries < 3 {
                        unsent_retries += 1;
                        tracing::debug!(error = %error, "connection was dead before sending; retrying");
                        continue;
                    }
                    if sent && self.options.idempotent && !replayed {
                        replayed = true;
                        tracing::debug!(error = %error, "replaying an idempotent call once");
                        continue;
                    }
                    return Err(if sent {
                        Error::OutcomeUnknown(Box::new(error))
                    } else {
                        error
                    });
                }
            }
        }
    }

    /// One attempt on a connection of its own. The outer error ends the call at once (the
    /// pool could not provide a connection, or the deadline passed).
    async fn run_exclusive(
        &self,
        work: &Work<'_>,
        deadline: Option<(Duration, Instant)>,
    ) -> Result<Result<Done, Failure>, Error> {
        let conn = self.get_within(deadline).await?;
        let Some((limit, started)) = deadline else {
            return Ok(conn.perform(work).await);
        };
        let remaining = limit.saturating_sub(started.elapsed());
        let sleep = self.pool.pool.runtime().sleep(remaining);
        let finished = {
            let perform = Box::pin(conn.perform(work));
            match futures::future::select(perform, sleep).await {
                futures::future::Either::Left((outcome, _)) => Some(outcome),
                futures::future::Either::Right(_) => None,
            }
        };
        match finished {
            Some(outcome) => Ok(outcome),
            None => Err(conn.timed_out(limit, matches!(work, Work::Statements(_)))),
        }
    }

    /// A connection of its own, within what is left of `deadline` (the limit and when the
    /// call started) if there is one.
    async fn get_within(
        &self,
        deadline: Option<(Duration, Instant)>,
    ) -> Result<Pooled<PgManager>, Error> {
        let lanes = self.pool.lanes.as_ref();
        let _claim = lanes.and_then(|lanes| lanes.make_room(&self.pool.pool));
        let conn = match deadline {
            None => self.pool.pool.get().await?,
            Some((limit, started)) => {
                let remaining = limit.saturating_sub(started.elapsed());
                let wait = self
                    .pool
                    .pool
                    .config()
                    .wait_timeout
                    .map_or(remaining, |w| w.min(remaining));
                self.pool.pool.get_timeout(wait).await?
            }
        };
        Ok(conn)
    }

    /// See [`PgPool::execute`].
    ///
    /// # Errors
    ///
    /// As for [`PgPool::execute`].
    ///
    /// # Cancel safety
    ///
    /// As for [`PgPool::execute`].
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::CallOptions;
    /// use std::time::Duration;
    ///
    /// let rows = pool
    ///     .with(CallOptions::new().timeout(Duration::from_millis(500)))
    ///     .execute("SELECT id, name FROM users WHERE active", &[])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        match self.run(Work::Rows(sql, params)).await? {
            Done::Rows(rows) => Ok(rows),
            _ => unreachable!("rows work yields rows"),
        }
    }

    /// See [`PgPool::query_one`].
    ///
    /// # Errors
    ///
    /// As for [`PgPool::query_one`].
    ///
    /// # Cancel safety
    ///
    /// As for [`PgPool::execute`].
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::CallOptions;
    ///
    /// let row = pool
    ///     .with(CallOptions::new().idempotent())
    ///     .query_one("SELECT count(*) FROM users", &[])
    ///     .await?;
    /// let users: i64 = row.get(0);
    /// # Ok(()) }
    /// ```
    pub async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        let rows = self.execute(sql, params).await?;
        let n = rows.len();
        if n != 1 {
            return Err(Error::InvalidInput(format!(
                "expected exactly one row, the statement returned {n}"
            )));
        }
        Ok(rows.into_iter().next().expect("one row"))
    }

    /// See [`PgPool::query_opt`].
    ///
    /// # Errors
    ///
    /// As for [`PgPool::query_opt`].
    ///
    /// # Cancel safety
    ///
    /// As for [`PgPool::execute`].
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::CallOptions;
    ///
    /// let found = pool
    ///     .with(CallOptions::new().idempotent())
    ///     .query_opt("SELECT name FROM users WHERE id = $1", &[&42i32])
    ///     .await?;
    /// if found.is_none() {
    ///     println!("no user 42");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        let rows = self.execute(sql, params).await?;
        match rows.len() {
            0 | 1 => Ok(rows.into_iter().next()),
            n => Err(Error::InvalidInput(format!(
                "expected at most one row, the statement returned {n}"
            ))),
        }
    }

    /// See [`PgPool::execute_count`].
    ///
    /// # Errors
    ///
    /// As for [`PgPool::execute`].
    ///
    /// # Cancel safety
    ///
    /// As for [`PgPool::execute`].
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::CallOptions;
    /// use std::time::Duration;
    ///
    /// let updated = pool
    ///     .with(CallOptions::new().timeout(Duration::from_secs(2)))
    ///     .execute_count("UPDATE users SET active = false WHERE last_seen < now() - '1y'", &[])
    ///     .await?;
    /// println!("{updated} users deactivated");
    /// # Ok(()) }
    /// ```
    pub async fn execute_count(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        match self.run(Work::Count(sql, params)).await? {
            Done::Count(n) => Ok(n),
            _ => unreachable!("count work yields a count"),
        }
    }

    /// See [`PgPool::batch_execute`].
    ///
    /// # Errors
    ///
    /// As for [`PgPool::execute`].
    ///
    /// # Cancel safety
    ///
    /// As for [`PgPool::execute`].
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::CallOptions;
    /// use std::time::Duration;
    ///
    /// pool.with(CallOptions::new().timeout(Duration::from_secs(30)))
    ///     .batch_execute("VACUUM ANALYZE users; VACUUM ANALYZE orders")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        match self.run(Work::Batch(sql)).await? {
            Done::Unit => Ok(()),
            _ => unreachable!("batch work yields nothing"),
        }
    }

    /// See [`PgPool::callproc`].
    ///
    /// # Errors
    ///
    /// As for [`PgPool::callproc`].
    ///
    /// # Cancel safety
    ///
    /// As for [`PgPool::execute`].
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::CallOptions;
    ///
    /// let rows = pool
    ///     .with(CallOptions::new().idempotent())
    ///     .callproc("pg_catalog.upper", &[&"momo"])
    ///     .await?;
    /// assert_eq!(rows[0].get::<_, String>(0), "MOMO");
    /// # Ok(()) }
    /// ```
    pub async fn callproc(&self, name: &str, args: Params<'_>) -> Result<Vec<Row>, Error> {
        let sql = crate::connection::callproc_sql(name, args.len())?;
        // One deadline for both attempts.
        let deadline = self.started_deadline();
        let rows = |done| match done {
            Done::Rows(rows) => rows,
            _ => unreachable!("rows work yields rows"),
        };
        let time_left = || deadline.is_none_or(|(limit, started)| started.elapsed() < limit);
        match self.run_until(Work::Rows(&sql, args), deadline).await {
            Err(err) => match crate::connection::callproc_retyped(name, args, &err) {
                Some(typed) if time_left() => self
                    .run_until(Work::Rows(&typed, args), deadline)
                    .await
                    .map(rows),
                _ => Err(err),
            },
            done => done.map(rows),
        }
    }

    /// See [`PgPool::transaction`].
    ///
    /// # Errors
    ///
    /// As for [`PgPool::transaction`].
    ///
    /// # Cancel safety
    ///
    /// As for [`PgPool::transaction`].
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::CallOptions;
    /// use std::time::Duration;
    ///
    /// let results = pool
    ///     .with(CallOptions::new().timeout(Duration::from_secs(1)))
    ///     .transaction(&[
    ///         ("UPDATE stock SET count = count - 1 WHERE item = $1", &[&"tea"]),
    ///         ("INSERT INTO sales (item) VALUES ($1)", &[&"tea"]),
    ///     ])
    ///     .await?;
    /// assert_eq!(results.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn transaction(
        &self,
        statements: &[(&str, Params<'_>)],
    ) -> Result<Vec<Vec<Row>>, Error> {
        match self.run(Work::Statements(statements)).await? {
            Done::Many(results) => Ok(results),
            _ => unreachable!("statements work yields row sets"),
        }
    }

    /// See [`PgPool::mogrify`].
    ///
    /// # Errors
    ///
    /// As for [`PgPool::mogrify`].
    ///
    /// # Cancel safety
    ///
    /// As for [`PgPool::execute`].
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::CallOptions;
    /// use std::time::Duration;
    ///
    /// let text = pool
    ///     .with(CallOptions::new().timeout(Duration::from_millis(100)))
    ///     .mogrify("SELECT $1::text", &[&"it's"])
    ///     .await?;
    /// assert_eq!(text, "SELECT 'it''s'::text");
    /// # Ok(()) }
    /// ```
    pub async fn mogrify(&self, sql: &str, params: Params<'_>) -> Result<String, Error> {
        match self.run(Work::Mogrify(sql, params)).await? {
            Done::Text(text) => Ok(text),
            _ => unreachable!("mogrify work yields text"),
        }
    }

    /// See [`PgPool::transaction_with`].
    ///
    /// # Errors
    ///
    /// As for [`PgPool::transaction_with`].
    ///
    /// # Cancel safety
    ///
    /// As for [`PgPool::transaction_with`].
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::CallOptions;
    ///
    /// // The closure may run twice if the connection is lost: it only reads and writes the
    /// // database, so replaying it is safe.
    /// let balance: i64 = pool
    ///     .with(CallOptions::new().idempotent())
    ///     .transaction_with(|tx| {
    ///         Box::pin(async move {
    ///             tx.execute("UPDATE accounts SET balance = 0 WHERE id = 1", &[]).await?;
    ///             Ok(tx.query_one("SELECT sum(balance) FROM accounts", &[]).await?.get(0))
    ///         })
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction_with<T, F>(&self, mut f: F) -> Result<T, Error>
    where
        F: for<'c> FnMut(&'c mut Transaction<'_>) -> momopool::BoxFuture<'c, Result<T, Error>>,
    {
        let deadline = self.started_deadline();
        let mut unsent_retries = 0;
        let mut replayed = false;
        loop {
            let mut conn = self.get_within(deadline).await?;
            // The attempt's outcome, or the limit that passed first.
            let outcome = {
                let attempt = conn.try_transaction(|tx| f(tx));
                match deadline {
                    None => Ok(attempt.await),
                    Some((limit, started)) => {
                        let remaining = limit.saturating_sub(started.elapsed());
                        let sleep = self.pool.pool.runtime().sleep(remaining);
                        match futures::future::select(Box::pin(attempt), sleep).await {
                            futures::future::Either::Left((outcome, _)) => Ok(outcome),
                            futures::future::Either::Right(_) => Err(limit),
                        }
                    }
                }
            };
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(after) => return Err(conn.timed_out(after, true)),
            };
            let (error, may_have_committed) = match outcome {
                Ok(value) => return Ok(value),
                Err(TxFailure::NotStarted(error)) => {
                    // The closure never ran: a dead connection is the transparent retry.
                    if error.is_connection_lost() && unsent_retries < 3 {
                        unsent_retries += 1;
                        continue;
                    }
                    return Err(error);
                }
                Err(TxFailure::NotCommitted(error)) => (error, false),
                Err(TxFailure::MayHaveCommitted(error)) => (error, true),
            };
            if !error.is_connection_lost() {
                return Err(error);
            }
            drop(conn);
            // The closure ran: only the caller knows whether running it again is safe.
            if self.options.idempotent && !replayed {
                replayed = true;
                continue;
            }
            return Err(if may_have_committed {
                outcome_unknown(error)
            } else {
                error
            });
        }
    }
}
