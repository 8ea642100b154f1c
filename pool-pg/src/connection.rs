//! [`Connection`]: one PostgreSQL connection, pooled or standalone.
//!
//! A connection is a tokio-postgres `Client` plus the task that drives its socket, spawned on
//! the runtime (never on Tokio directly). The driver records how the connection ended, so the
//! pool can tell a closed connection, and one that died because the server went away, without
//! a round trip. Statement methods record whether a failure happened before anything reached
//! the server: that is what makes retrying safe.

use crate::config::{PgConfig, Recycling, Target};
use crate::error::{Error, is_goodbye, outcome_unknown, pg_connection_lost};
use crate::runtime::{PgRuntime, Probe, Socket, Written};
use crate::sql;
use crate::stream::{CopyInSink, CopyOutStream, RowStream};
use futures::{Stream, StreamExt};
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification, Row, Statement};

/// What the driver task knows about the connection's end.
#[derive(Debug, Default)]
pub(crate) struct Driver {
    closed: AtomicBool,
    server_gone: AtomicBool,
    /// Where a [`Listener`](crate::Listener)'s notifications go, and then how its connection
    /// ended.
    notifications: Mutex<Option<NotificationSender>>,
}

/// The driver's side of a [`Listener`](crate::Listener)'s stream.
pub(crate) type NotificationSender =
    futures::channel::mpsc::UnboundedSender<Result<Notification, Error>>;

/// Drives a connection's socket on the runtime until the client is dropped or the server
/// goes away, forwarding notifications and recording how it ended.
///
/// When our [`Connection`] is dropped (its `stop` sender with it), the driver gets a grace
/// period to close politely, then ends regardless: a connection discarded with a request
/// still in flight (its server silent, or the network cut) would otherwise wait for an
/// answer for ever, keeping its task, its socket and its server session alive.
fn spawn_driver<T>(
    runtime: &Arc<dyn PgRuntime>,
    connection: tokio_postgres::Connection<Socket, T>,
) -> (Arc<Driver>, futures::channel::oneshot::Sender<()>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let driver = Arc::new(Driver::default());
    let state = Arc::clone(&driver);
    let (stop, stopped) = futures::channel::oneshot::channel::<()>();
    let timer = Arc::clone(runtime);
    runtime.spawn(Box::pin(async move {
        let mut connection = connection;
        let drive = async {
            loop {
                match poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        let sender = state
                            .notifications
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        if let Some(sender) = &*sender {
                            let _ = sender.unbounded_send(Ok(n));
                        }
                    }
                    Some(Ok(AsyncMessage::Notice(notice))) => {
                        tracing::debug!(
                            code = notice.code().code(),
                            message = notice.message(),
                            "server notice"
                        );
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => {
                        if pg_connection_lost(&err) {
                            state.server_gone.store(true, Ordering::SeqCst);
                        }
                        tracing::debug!(error = %err, "connection ended with an error");
                        return Error::Postgres(err);
                    }
                    None => {
                        return Error::Io(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the connection was closed",
                        ));
                    }
                }
            }
        };
        let abandoned = async {
            let _ = stopped.await;
            timer.sleep(DRIVER_GRACE).await;
        };
        let ended = match futures::future::select(pin!(drive), pin!(abandoned)).await {
            futures::future::Either::Left((error, _)) => Some(error),
            futures::future::Either::Right(_) => None,
        };
        state.closed.store(true, Ordering::SeqCst);
        // Ends any LISTEN stream, telling it why (unless our side closed the connection),
        // before the requests still waiting fail with tokio-postgres's plainer "closed".
        let listener = state
            .notifications
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let (Some(listener), Some(error)) = (listener, ended) {
            let _ = listener.unbounded_send(Err(error));
        }
        drop(connection);
    }));
    (driver, stop)
}

/// How long a dropped connection's driver may take to close politely.
const DRIVER_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The rustls connector for one target (the host name is checked against the certificate).
#[cfg(feature = "tls-rustls")]
fn tls_connector(
    tls: &Arc<rustls::ClientConfig>,
    target: &Target,
) -> Result<
    <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<Socket>>::TlsConnect,
    Error,
>{
    use tokio_postgres::tls::MakeTlsConnect;
    let name = match target {
        // With `hostaddr`, the certificate is checked for the host name given beside it, as
        // libpq does; without a name, for the address.
        Target::Addr(addr, name) => name.clone().unwrap_or_else(|| addr.to_string()),
        Target::Name(name) => name.clone(),
        Target::Unix(_) => "localhost".to_string(),
    };
    let mut make = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
    match <_ as MakeTlsConnect<Socket>>::make_tls_connect(&mut make, &name) {
        Ok(connector) => Ok(connector),
        Err(never) => match never {},
    }
}

/// A connection that had an answer less than this long ago is handed out without a peek at its
/// socket (see `PgManager::needs_check`).
///
/// A peek is a system call on every checkout, and it costs throughput and tail latency where
/// callers take turns on idle connections. What it would catch within this time: the server's
/// goodbye that arrived unseen in the last moment. For a prepared statement (the default), a
/// goodbye with a message (the FATAL of a shutdown or a terminated backend) is caught anyway,
/// as the statement's first answer, and a reset fails the write: both count as not sent. A
/// silent close (a killed backend, a crash restart) in that moment, or a goodbye that reaches
/// a `batch_execute` after its request left, leaves the outcome unknown, as it does for every
/// statement already in flight then. With unnamed statements the peek is made regardless of this time.
pub(crate) const PEEK_AFTER_IDLE: Duration = Duration::from_millis(1);

/// Whether a statement's first answer is its bind's acknowledgement, before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// It is: an error before the stream of rows means the statement did not run.
    BindFirst,
    /// Not known: only a failure with nothing written counts as not sent.
    InOrder,
}

/// Whether the rows of a statement are kept or only counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Keep {
    Rows,
    Count,
}

/// A statement failure, and whether anything had been sent when it happened.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) sent: bool,
}

impl Failure {
    fn unsent(error: impl Into<Error>) -> Self {
        Failure {
            error: error.into(),
            sent: false,
        }
    }

    fn sent(error: impl Into<Error>) -> Self {
        Failure {
            error: error.into(),
            sent: true,
        }
    }
}

/// How a transaction closure's attempt failed, as far as its `COMMIT` is concerned.
#[derive(Debug)]
pub(crate) enum TxFailure {
    /// `BEGIN` failed: the closure never ran.
    NotStarted(Error),
    /// The closure ran and the transaction's `COMMIT` did not go through: the closure's own
    /// error, a `COMMIT` the server refused, or a connection lost before the `COMMIT` was
    /// written. Nothing was committed, unless the closure ended the transaction itself
    /// before failing with an error of its own (which then comes back as it is).
    NotCommitted(Error),
    /// The connection was lost with the `COMMIT` in flight, or after the closure ended the
    /// transaction itself: it may have committed.
    MayHaveCommitted(Error),
}

impl From<(tokio_postgres::Error, bool)> for Failure {
    /// A failed request and whether it was sent.
    fn from((error, sent): (tokio_postgres::Error, bool)) -> Self {
        Failure {
            error: error.into(),
            sent,
        }
    }
}

/// Marks the connection broken when dropped before [`done`](InFlight::done): a request
/// abandoned half-way (its caller cancelled) leaves its answer streaming in, and whoever used
/// the connection next would wait behind someone else's results.
struct InFlight<'a> {
    broken: &'a AtomicBool,
    done: bool,
}

impl<'a> InFlight<'a> {
    fn new(broken: &'a AtomicBool) -> Self {
        InFlight {
            broken,
            done: false,
        }
    }

    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.broken.store(true, Ordering::Relaxed);
        }
    }
}

/// Awaits `request`, marking the connection broken (through `broken`, its `&AtomicBool`) if
/// the awaiting future is dropped half-way. A macro rather than an `async fn`: a request's
/// future is large, and each `async fn` it passes through copies it once more (three copies
/// per statement with two such layers).
macro_rules! tracked {
    ($broken:expr, $request:expr) => {{
        let in_flight = InFlight::new($broken);
        let out = $request.await;
        in_flight.done();
        out
    }};
}

/// A bounded cache of prepared statements, least recently used out first.
///
/// Looked up before every statement, so keyed with foldhash rather than the standard
/// library's SipHash: about a hundred instructions less a lookup for a short statement. Its
/// seed is still random per process, and the cache is bounded in any case.
#[derive(Debug, Default)]
struct StatementCache {
    capacity: usize,
    tick: u64,
    entries: HashMap<String, Cached, foldhash::fast::RandomState>,
}

/// A prepared statement, and what is known of its SQL text.
#[derive(Debug)]
struct Cached {
    stmt: Statement,
    traits: Traits,
    /// The cache's tick when it was last used.
    used: u64,
}

/// What a statement's SQL text says it may do, worked out once per statement and connection
/// rather than before every use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Traits {
    /// What it leaves that the connection must be checked for before reuse
    /// ([`Connection::dirties`]).
    pub(crate) dirties: u8,
    /// It may drop the session's prepared statements ([`sql::may_drop_statements`]).
    pub(crate) drops_statements: bool,
}

impl StatementCache {
    /// The statement prepared for `sql`, and what it may do.
    fn get(&mut self, sql: &str) -> Option<(Statement, Traits)> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(sql).map(|cached| {
            cached.used = tick;
            (cached.stmt.clone(), cached.traits)
        })
    }

    fn insert(&mut self, sql: &str, stmt: Statement, traits: Traits) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            // Dropping the Statement makes tokio-postgres close it on the server.
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, cached)| cached.used)
                .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.tick += 1;
        let cached = Cached {
            stmt,
            traits,
            used: self.tick,
        };
        self.entries.insert(sql.to_string(), cached);
    }

    fn remove(&mut self, sql: &str) {
        self.entries.remove(sql);
    }

    /// Forgets every statement, after the server may have dropped them all (`DISCARD ALL`,
    /// `DEALLOCATE ALL`). tokio-postgres closes each on the server as it is dropped, which is
    /// no error for a statement the server no longer has.
    fn clear(&mut self) {
        self.entries.clear();
    }
}

/// One PostgreSQL connection: what the pool hands out (behind a
/// [`momopool::Pooled`] guard) and what [`Connection::connect`] opens on its own.
///
/// Statements are prepared once per connection and cached. Errors that show the connection
/// is gone mark it, so the pool discards it on return, and (for server restarts) checks every
/// older connection before reuse.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "rt-smol")]
/// # smol::block_on(async {
/// let mut conn = momopool_pg::Connection::connect("postgresql://app@127.0.0.1/shop").await?;
/// let row = conn.query_one("SELECT $1::int + 1", &[&41]).await?;
/// assert_eq!(row.get::<_, i32>(0), 42);
/// # Ok::<_, momopool_pg::Error>(()) });
/// ```
pub struct Connection {
    client: Client,
    driver: Arc<Driver>,
    cache: Mutex<StatementCache>,
    backend_pid: i32,
    /// What the next borrower must not see: bits [`MAY_BE_IN_TRANSACTION`] (roll back before
    /// reuse) and [`NEEDS_RESET`] (run [`Recycling::Clean`] before reuse).
    dirty: AtomicU8,
    /// A statement failed in a way that shows the connection is unusable.
    broken: AtomicBool,
    /// What the current transaction did may be committed: its `COMMIT`, or a statement
    /// that may end it, was sent. Cleared before each `BEGIN` the connection sends itself.
    past_commit: AtomicBool,
    /// The raw client was handed out ([`Connection::client`]): the pool discards the
    /// connection when it comes back.
    raw_client: bool,
    /// A `ROLLBACK` was queued when the connection went back to the pool
    /// ([`Connection::end_transaction_now`]): the check need not send another.
    rollback_queued: bool,
    target: (Target, u16),
    probe: Option<Probe>,
    /// Bytes written to the socket so far: a failed request that wrote none never ran.
    written: Written,
    /// When the connection was opened, and when it last had an answer (nanoseconds after
    /// that): a connection that answered within [`PEEK_AFTER_IDLE`] is not peeked at.
    opened: Instant,
    answered: AtomicU64,
    runtime: Arc<dyn PgRuntime>,
    config: Arc<PgConfig>,
    /// Dropped with the connection: tells the driver to finish.
    _stop: futures::channel::oneshot::Sender<()>,
}

/// [`Connection::dirty`]: a transaction may be open (a `ROLLBACK` goes first at reuse).
const MAY_BE_IN_TRANSACTION: u8 = 1;
/// [`Connection::dirty`]: the connection ran something since its last [`Recycling::Clean`]
/// reset, which must run before reuse.
const NEEDS_RESET: u8 = 2;

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("backend_pid", &self.backend_pid)
            .field("target", &self.target.0.describe(self.target.1))
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens a standalone connection on the runtime picked by the enabled features (see
    /// [`default_runtime`](crate::default_runtime)). Each host is bounded by the configuration's
    /// connect timeout, as with libpq; without one the connect takes at most 10 s in all,
    /// shared between the hosts (see [`PgConfig::connect_timeout`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid DSN; [`Error::Connect`] (carrying the cause of the last
    /// host's failure: refused, wrong password with SQLSTATE 28P01, unknown database 3D000,
    /// [`Error::ConnectTimeout`] for a host that did not answer in time, ...) when no host
    /// accepts; [`Error::ConnectTimeout`] when the 10 s default passes.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future abandons the connect.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::Connection;
    ///
    /// let mut conn = Connection::connect("postgresql://app@127.0.0.1/shop").await?;
    /// let orders: i64 = conn.query_one("SELECT count(*) FROM orders", &[]).await?.get(0);
    /// # Ok(()) }
    /// ```
    pub async fn connect(dsn: &str) -> Result<Connection, Error> {
        let config = PgConfig::from_dsn(dsn)?;
        Self::connect_with(config, crate::default_runtime()?).await
    }

    /// Opens a standalone connection with this configuration on this runtime.
    ///
    /// # Errors
    ///
    /// As for [`connect`](Connection::connect).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future abandons the connect.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[cfg(feature = "rt-smol")]
    /// # smol::block_on(async {
    /// use momopool_pg::{Connection, PgConfig};
    /// use std::sync::Arc;
    ///
    /// let config = PgConfig::from_dsn("host=127.0.0.1 user=app")?;
    /// let conn = Connection::connect_with(config, Arc::new(momopool_smol::Smol)).await?;
    /// # drop(conn);
    /// # Ok::<_, momopool_pg::Error>(()) });
    /// ```
    pub async fn connect_with(
        config: PgConfig,
        runtime: Arc<dyn PgRuntime>,
    ) -> Result<Connection, Error> {
        let timeout = config.standalone_limit();
        let deadline = timeout.and_then(|limit| Instant::now().checked_add(limit));
        let config = Arc::new(config);
        // Boxed: a connect's future is large, and the timeout would hold it on the stack.
        let open = Box::pin(Connection::open(
            Arc::clone(&config),
            Arc::clone(&runtime),
            deadline,
        ));
        momopool::with_timeout(&*runtime, timeout, open)
            .await
            .unwrap_or_else(|momopool::Elapsed| {
                Err(Error::ConnectTimeout {
                    after: timeout.unwrap_or_default(),
                })
            })
    }

    /// Opens a connection: each configured host in order, until one accepts (and is
    /// writable, when `target_session_attrs=read-write`); then the session statements.
    ///
    /// Each host gets the configured per-host connect timeout. Without one, when the whole
    /// attempt must end by `deadline`, each host but the last gets an equal share of the time
    /// left, so that a host that accepts and then says nothing leaves time for the next.
    pub(crate) async fn open(
        config: Arc<PgConfig>,
        runtime: Arc<dyn PgRuntime>,
        deadline: Option<Instant>,
    ) -> Result<Connection, Error> {
        let targets = config.targets();
        let per_host = config.per_host_timeout();
        let mut last = None;
        for (i, (target, port)) in targets.iter().enumerate() {
            let hosts_left = targets.len() - i;
            // Each host but the last gets at most a fair share of what is left of the overall
            // deadline, even with a longer per-host timeout: a silent host must leave the
            // others their turn.
            let share = deadline.filter(|_| hosts_left > 1).map(|deadline| {
                let hosts = u32::try_from(hosts_left).unwrap_or(u32::MAX);
                deadline.saturating_duration_since(Instant::now()) / hosts
            });
            let limit = match (per_host, share) {
                (Some(per_host), Some(share)) => Some(per_host.min(share)),
                (per_host, share) => per_host.or(share),
            };
            let attempt = Box::pin(Self::open_one(&config, &runtime, target, *port));
            let outcome = momopool::with_timeout(&*runtime, limit, attempt)
                .await
                .unwrap_or_else(|momopool::Elapsed| {
                    Err(Error::ConnectTimeout {
                        after: limit.unwrap_or_default(),
                    })
                });
            match outcome {
                Ok(conn) => return Ok(conn),
                Err(err) => {
                    // A wrong password is just as wrong on the next host: stop here.
                    let permanent = err.class() == momopool::ErrorClass::Permanent;
                    last = Some(Error::Connect {
                        target: target.describe(*port),
                        source: Box::new(err),
                    });
                    if permanent {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Config("no host to connect to".into())))
    }

    async fn open_one(
        config: &Arc<PgConfig>,
        runtime: &Arc<dyn PgRuntime>,
        target: &Target,
        port: u16,
    ) -> Result<Connection, Error> {
        if config.pg.get_ssl_mode() == tokio_postgres::config::SslMode::Require
            && !config.tls_configured()
        {
            return Err(Error::Config(
                "sslmode=require needs TLS: enable the tls-rustls feature and configure it with \
                 PgConfig::tls_roots_pem or PgConfig::tls_config"
                    .into(),
            ));
        }
        let mut socket = open_socket(runtime, target, port, &config.pg).await?;
        let probe = socket.take_probe();
        let written = socket.written();
        #[cfg(feature = "tls-rustls")]
        let (client, (driver, stop)) = match &config.tls {
            Some(tls) => {
                let connector = tls_connector(tls, target)?;
                let (client, connection) = config.pg.connect_raw(socket, connector).await?;
                (client, spawn_driver(runtime, connection))
            }
            None => {
                let (client, connection) = config.pg.connect_raw(socket, NoTls).await?;
                (client, spawn_driver(runtime, connection))
            }
        };
        #[cfg(not(feature = "tls-rustls"))]
        let (client, (driver, stop)) = {
            let (client, connection) = config.pg.connect_raw(socket, NoTls).await?;
            (client, spawn_driver(runtime, connection))
        };

        let mut conn = Connection {
            client,
            driver,
            cache: Mutex::new(StatementCache {
                capacity: config.statement_cache,
                ..StatementCache::default()
            }),
            backend_pid: 0,
            dirty: AtomicU8::new(0),
            broken: AtomicBool::new(false),
            past_commit: AtomicBool::new(false),
            raw_client: false,
            rollback_queued: false,
            target: (target.clone(), port),
            probe,
            written,
            opened: Instant::now(),
            answered: AtomicU64::new(0),
            runtime: Arc::clone(runtime),
            config: Arc::clone(config),
            _stop: stop,
        };
        // The simple protocol: no statement is prepared, which matters behind PgBouncer.
        let messages = conn
            .client
            .simple_query("SELECT pg_backend_pid(), current_setting('transaction_read_only')")
            .await?;
        let (pid, read_only) = messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some((
                    row.get(0).unwrap_or("0").parse().unwrap_or(0),
                    row.get(1) == Some("on"),
                )),
                _ => None,
            })
            .unwrap_or((0, false));
        conn.backend_pid = pid;
        if read_only && config.pg.get_target_session_attrs() == TargetSessionAttrs::ReadWrite {
            return Err(Error::ReadOnly {
                target: target.describe(port),
            });
        }
        conn.run_session_statements().await?;
        Ok(conn)
    }

    async fn run_session_statements(&mut self) -> Result<(), Error> {
        for statement in &self.config.session {
            self.client.batch_execute(statement).await?;
        }
        Ok(())
    }

    /// The server process serving this connection (as in `pg_stat_activity.pid`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &momopool_pg::Connection) {
    /// println!("served by backend {}", conn.backend_pid());
    /// # }
    /// ```
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Whether the connection is known to be closed or unusable.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &momopool_pg::Connection) {
    /// assert!(!conn.is_closed());
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
            || self.client.is_closed()
            || self.driver.closed.load(Ordering::SeqCst)
    }

    /// What running `sql` leaves that the next borrower must not see ([`Connection::dirty`]
    /// bits), so the pool checks the connection before reuse: a transaction it may open, and
    /// with [`Recycling::Clean`] any statement at all, since that method promises to reset
    /// the session and a statement can change it in ways its text does not show (a function
    /// that takes an advisory lock or sets a setting).
    fn dirties(&self, sql: &str) -> u8 {
        if sql::may_open_transaction(sql) {
            self.any_use() | MAY_BE_IN_TRANSACTION
        } else {
            self.any_use()
        }
    }

    /// What any use of the connection leaves: with [`Recycling::Clean`], the need for its
    /// reset ([`Connection::dirties`]).
    fn any_use(&self) -> u8 {
        if self.config.recycling == Recycling::Clean {
            NEEDS_RESET
        } else {
            0
        }
    }

    /// Ends the transaction a pooled connection may have been given back in, without waiting:
    /// a `ROLLBACK` is queued ahead of anything sent later and its answer dropped. Its locks and
    /// snapshot then go at once, rather than when the connection is next checked out (which
    /// may be much later when other connections serve the load). The check at the next
    /// checkout still runs the recycling method.
    pub(crate) fn end_transaction_now(&mut self) {
        if self.may_be_in_transaction() && !self.rollback_queued {
            self.queue_rollback();
            self.rollback_queued = true;
        }
    }

    /// Sends a `ROLLBACK` without waiting for its answer: it goes ahead of anything sent
    /// later. tokio-postgres sends a request on the first poll of its future, before it waits
    /// for the answer; dropping the future after that one poll drops only the wait, and the
    /// driver discards the answer. Being synchronous, it can run in a destructor.
    fn queue_rollback(&self) {
        let _ = futures::FutureExt::now_or_never(self.client.batch_execute("ROLLBACK"));
    }

    /// Whether the pool must not hand the connection on: it is closed or broken, or its raw
    /// client was handed out.
    pub(crate) fn must_discard(&self) -> bool {
        self.raw_client || self.is_closed()
    }

    /// Whether the connection must be checked before reuse: it may be in a transaction, or
    /// it needs the [`Recycling::Clean`] reset.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Relaxed) != 0
    }

    /// Whether a transaction may be open on the connection.
    fn may_be_in_transaction(&self) -> bool {
        self.dirty.load(Ordering::Relaxed) & MAY_BE_IN_TRANSACTION != 0
    }

    /// Marks the connection for what running `sql` leaves ([`Connection::dirties`]).
    fn mark_for(&self, sql: &str) {
        self.mark(self.dirties(sql));
    }

    /// Adds `bits` to [`Connection::dirty`].
    fn mark(&self, bits: u8) {
        if bits != 0 {
            self.dirty.fetch_or(bits, Ordering::Relaxed);
        }
    }

    /// Notes that the connection's transaction has ended (committed or rolled back). What
    /// it did to the session stays marked for the [`Recycling::Clean`] reset.
    fn transaction_ended(&self) {
        self.dirty
            .fetch_and(!MAY_BE_IN_TRANSACTION, Ordering::Relaxed);
    }

    /// Whether what the current transaction did may have been committed (see
    /// [`Transaction`]): a deadline or a lost connection after this leaves the outcome
    /// unknown; before it, nothing was committed.
    fn past_commit(&self) -> bool {
        self.past_commit.load(Ordering::Relaxed)
    }

    /// Notes, before `sql` runs in a transaction, whether it may end the transaction.
    fn note_end(&self, sql: &str) {
        if sql::may_end_transaction(sql) {
            self.past_commit.store(true, Ordering::Relaxed);
        }
    }

    /// Sends `BEGIN`, for a transaction of the connection's own.
    async fn begin(&self) -> Result<(), Failure> {
        self.mark(MAY_BE_IN_TRANSACTION);
        self.past_commit.store(false, Ordering::Relaxed);
        self.try_batch("BEGIN").await
    }

    /// Sends the transaction's `COMMIT`. Its failure counts as sent when the `COMMIT` left,
    /// or when a statement of the transaction's own may have ended it before: either way,
    /// what the transaction did may be committed.
    async fn commit(&self) -> Result<(), Failure> {
        let ended = self.past_commit.swap(true, Ordering::Relaxed);
        self.try_batch("COMMIT").await.map_err(|mut failure| {
            failure.sent = failure.sent || ended;
            failure
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, StatementCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the server has sent something (or closed) while no request was outstanding:
    /// on an idle connection that is a goodbye, such as the FATAL of a shutdown. Only
    /// meaningful between statements, and only asked (one system call, a peek) of a
    /// connection that has had no answer for [`PEEK_AFTER_IDLE`] (false before that), or of
    /// any connection with [`PgConfig::unnamed_statements`].
    pub(crate) fn input_pending(&self) -> bool {
        let answered = Duration::from_nanos(self.answered.load(Ordering::Relaxed));
        // Unnamed statements cannot tell a goodbye by their first answer (see
        // `try_statement`), so in that mode every checkout from idle peeks, as before.
        (self.config.unnamed_statements || self.opened.elapsed() >= answered + PEEK_AFTER_IDLE)
            && self.probe.as_ref().is_some_and(Probe::input_pending)
    }

    /// Notes that a statement was just answered (see [`input_pending`](Self::input_pending)).
    fn stamp_answer(&self) {
        let nanos = u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.answered.store(nanos, Ordering::Relaxed);
    }

    pub(crate) fn server_gone(&self) -> bool {
        self.driver.server_gone.load(Ordering::SeqCst)
    }

    /// The tokio-postgres client underneath, for anything not offered here.
    ///
    /// Nothing can tell whether what was done with it is over: a `RowStream` or a `COPY`
    /// stream or sink it returned lives on after the connection goes back to the pool, and
    /// the rest of its answer would hold up the connection's next user. So a pooled
    /// connection whose client was handed out is closed when it goes back, never reused
    /// (a standalone one goes on working). For streaming without that cost, use
    /// [`query_stream`](Connection::query_stream), [`copy_out`](Connection::copy_out) and
    /// [`copy_in`](Connection::copy_in), which keep the connection reusable.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), tokio_postgres::Error> {
    /// conn.client().simple_query("SELECT 1").await?;
    /// # Ok(()) }
    /// ```
    pub fn client(&mut self) -> &Client {
        self.raw_client = true;
        &self.client
    }

    /// Records what a failed statement says about the connection.
    pub(crate) fn note(&self, err: &tokio_postgres::Error) {
        if pg_connection_lost(err) {
            self.broken.store(true, Ordering::Relaxed);
            if !err.is_closed() || self.server_gone() {
                self.driver.server_gone.store(true, Ordering::SeqCst);
            }
        }
    }

    /// The statement prepared for `sql` on this connection, from the cache or prepared now,
    /// and what it may do.
    pub(crate) async fn prepare_cached(&self, sql: &str) -> Result<(Statement, Traits), Failure> {
        if self.is_closed() {
            return Err(Failure::unsent(closed_error(&self.client).await));
        }
        if let Some(cached) = self.cache().get(sql) {
            return Ok(cached);
        }
        // Preparing has no side effects: a failure here leaves nothing half-done, so the
        // statement itself counts as not sent.
        match tracked!(&self.broken, self.client.prepare(sql)) {
            Ok(stmt) => {
                let traits = Traits {
                    dirties: self.dirties(sql),
                    drops_statements: sql::may_drop_statements(sql),
                };
                self.cache().insert(sql, stmt.clone(), traits);
                Ok((stmt, traits))
            }
            Err(err) => {
                self.note(&err);
                Err(Failure::unsent(err))
            }
        }
    }

    /// Runs one statement: a cached prepared statement (prepared again and run once more if
    /// a schema change invalidated its plan, outside a transaction), or an unnamed one in the
    /// no-cache mode. Its rows (when `keep` says so) and the affected-row count.
    /// `in_transaction`: it runs inside a transaction the connection began itself, and
    /// whether it may end that transaction is noted first (see [`Connection::past_commit`]).
    ///
    /// One `async fn` from the caller to tokio-postgres's request, as with `Client::query`: a
    /// request's future is large, and every layer it passes through copies it.
    pub(crate) async fn try_statement(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        in_transaction: bool,
        keep: Keep,
    ) -> Result<(Vec<Row>, u64), Failure> {
        if in_transaction {
            self.note_end(sql);
        }
        if self.config.unnamed_statements {
            self.mark_for(sql);
            if self.is_closed() {
                return Err(Failure::unsent(closed_error(&self.client).await));
            }
            let types = infer_types(params).map_err(Failure::unsent)?;
            let typed = || params.iter().copied().zip(types);
            let outcome = tracked!(
                &self.broken,
                collect(
                    &self.written,
                    || self.client.query_typed_raw(sql, typed()),
                    keep
                )
            );
            // Not `Answer::BindFirst`: `query_typed_raw` may look up an unknown result type
            // with a query of its own after the bind, so an error it returns may come after
            // the statement ran.
            return self.ran(outcome, Answer::InOrder).map_err(Failure::from);
        }
        let (mut stmt, traits) = self.prepare_cached(sql).await?;
        self.mark(traits.dirties);
        let params = || params.iter().map(|p| *p as &dyn ToSql);
        let mut prepared_again = false;
        loop {
            let outcome = tracked!(
                &self.broken,
                collect(
                    &self.written,
                    || self.client.query_raw(&stmt, params()),
                    keep
                )
            );
            if traits.drops_statements {
                self.cache().clear();
            }
            match outcome {
                // At bind, before the statement could run.
                Err((err, Phase::Start)) if !prepared_again && is_stale_statement(&err) => {
                    stmt = self.prepare_again(sql, err, in_transaction).await?;
                    prepared_again = true;
                }
                outcome => return self.ran(outcome, Answer::BindFirst).map_err(Failure::from),
            }
        }
    }

    /// What a statement's outcome (from [`collect`]) says: its rows and count, or its error
    /// and whether the statement may have run.
    ///
    /// A request that failed without one byte written never reached the server (its driver
    /// ended first, say on the server's goodbye). And the server answers in order and
    /// runs a statement only after acknowledging its bind (`BindComplete`, which `query_raw`
    /// waits for before it returns the rows' stream): with [`Answer::BindFirst`], the
    /// server's goodbye in place of that acknowledgement (a FATAL, say of a shutdown the
    /// connection had not yet seen) means it did not run either. Only the goodbye counts: an
    /// ordinary error at bind (a cancel, a timeout during planning) also means nothing ran,
    /// but it is the caller's to see, not a reason to run the statement again. Any other
    /// failure may have come after the statement ran.
    fn ran(
        &self,
        outcome: Result<(Vec<Row>, u64), (tokio_postgres::Error, Phase)>,
        answer: Answer,
    ) -> Result<(Vec<Row>, u64), (tokio_postgres::Error, bool)> {
        match outcome {
            Ok(done) => {
                self.stamp_answer();
                Ok(done)
            }
            Err((err, phase)) => {
                self.note(&err);
                let unsent = match phase {
                    Phase::Unwritten => true,
                    Phase::Start => answer == Answer::BindFirst && is_goodbye(&err),
                    Phase::Rows => false,
                };
                Err((err, !unsent))
            }
        }
    }

    /// After `err` showed the cached statement for `sql` stale: forgets it (every statement,
    /// when the server no longer had it: whatever dropped it likely dropped them all), and
    /// prepares `sql` again for one retry, unless the statement ran in a transaction. Neither
    /// error lets the statement run. In a transaction the error has aborted
    /// the transaction, so a retry could only fail (25P02): the caller gets `err` itself, as
    /// [`Error::PlanInvalidated`]. A transaction the caller opened on their own, which the
    /// connection may not have noticed (`in_transaction` is false then), shows itself the same
    /// way: the server refuses to prepare anything in it.
    async fn prepare_again(
        &self,
        sql: &str,
        err: tokio_postgres::Error,
        in_transaction: bool,
    ) -> Result<Statement, Failure> {
        if err.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME) {
            self.cache().clear();
        } else {
            self.cache().remove(sql);
        }
        if in_transaction {
            return Err(Failure::sent(Error::PlanInvalidated(err)));
        }
        match self.prepare_cached(sql).await {
            Ok((stmt, _)) => Ok(stmt),
            Err(failure) if failure.error.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => {
                Err(Failure::sent(Error::PlanInvalidated(err)))
            }
            Err(failure) => Err(failure),
        }
    }

    /// Runs `sql` with the simple protocol. It fails as not sent when the connection was
    /// closed, or when not one byte was written to its socket meanwhile (the driver read the
    /// server's goodbye first); there is no bind acknowledgement here to tell a goodbye that
    /// arrived after the request left.
    pub(crate) async fn try_batch(&self, sql: &str) -> Result<(), Failure> {
        self.mark_for(sql);
        if self.is_closed() {
            return Err(Failure::unsent(closed_error(&self.client).await));
        }
        let before = self.written.get();
        let outcome = tracked!(&self.broken, self.client.batch_execute(sql));
        if sql::may_drop_statements(sql) {
            self.cache().clear();
        }
        outcome.map_err(|err| {
            self.note(&err);
            Failure {
                error: err.into(),
                sent: self.written.get() != before,
            }
        })
    }

    /// Runs a statement and returns its rows.
    ///
    /// A statement whose cached plan a schema change made stale is prepared again and run
    /// once more, outside a transaction.
    ///
    /// # Errors
    ///
    /// [`Error::Postgres`] with the SQLSTATE for SQL errors; a connection loss marks the
    /// connection so the pool discards it. [`Error::PlanInvalidated`] when the cached plan
    /// went stale inside a transaction the caller opened (`BEGIN`): nothing is retried there.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before the statement's answer has arrived abandons it on the
    /// client side (the server may still run it): the rest of the answer would still come, so
    /// the connection is marked broken, and a pooled one is closed rather than handed on.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// let rows = conn.query("SELECT generate_series(1, $1)", &[&3i32]).await?;
    /// assert_eq!(rows.len(), 3);
    /// # Ok(()) }
    /// ```
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        Self::settle(
            self.try_statement(sql, params, false, Keep::Rows)
                .await
                .map(|(rows, _)| rows),
        )
    }

    /// Runs a statement that returns exactly one row.
    ///
    /// # Errors
    ///
    /// As for [`query`](Connection::query), and [`Error::InvalidInput`] when the statement
    /// returned no row or several.
    ///
    /// # Cancel safety
    ///
    /// As for [`query`](Connection::query).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// let n: i64 = conn.query_one("SELECT count(*) FROM pg_class", &[]).await?.get(0);
    /// # Ok(()) }
    /// ```
    pub async fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error> {
        let rows = self.query(sql, params).await?;
        exactly_one(rows)
    }

    /// Runs a statement that returns at most one row.
    ///
    /// # Errors
    ///
    /// As for [`query`](Connection::query), and [`Error::InvalidInput`] when it returned
    /// several rows.
    ///
    /// # Cancel safety
    ///
    /// As for [`query`](Connection::query).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// let row = conn.query_opt("SELECT 1 WHERE false", &[]).await?;
    /// assert!(row.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        let rows = self.query(sql, params).await?;
        at_most_one(rows)
    }

    /// Runs a statement and returns its rows: Momoko's `execute`, the same as
    /// [`query`](Connection::query) and as [`PgPool::execute`](crate::PgPool::execute).
    ///
    /// # Errors
    ///
    /// As for [`query`](Connection::query).
    ///
    /// # Cancel safety
    ///
    /// As for [`query`](Connection::query).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// let rows = conn.execute("SELECT relname FROM pg_class LIMIT $1", &[&5i64]).await?;
    /// assert!(rows.len() <= 5);
    /// # Ok(()) }
    /// ```
    pub async fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        self.query(sql, params).await
    }

    /// Runs a statement and returns how many rows it affected (as
    /// [`PgPool::execute_count`](crate::PgPool::execute_count)).
    ///
    /// # Errors
    ///
    /// As for [`query`](Connection::query).
    ///
    /// # Cancel safety
    ///
    /// As for [`query`](Connection::query).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// let n = conn
    ///     .execute_count("UPDATE items SET seen = true WHERE id = $1", &[&7i32])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute_count(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        Self::settle(
            self.try_statement(sql, params, false, Keep::Count)
                .await
                .map(|(_, n)| n),
        )
    }

    /// Runs one or more statements separated by semicolons, without parameters (the simple
    /// query protocol).
    ///
    /// # Errors
    ///
    /// As for [`query`](Connection::query).
    ///
    /// # Cancel safety
    ///
    /// As for [`query`](Connection::query).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// conn.batch_execute("CREATE TEMP TABLE t (x int); INSERT INTO t VALUES (1)").await?;
    /// # Ok(()) }
    /// ```
    pub async fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        Self::settle(self.try_batch(sql).await)
    }

    /// Runs a statement and streams its rows as they arrive, where [`query`](Connection::query)
    /// collects them first: for results too large to hold at once. The stream borrows the
    /// connection until dropped.
    ///
    /// # Errors
    ///
    /// As for [`query`](Connection::query), when the statement cannot start; the stream
    /// yields an error (then ends) if one arrives later, [`Error::OutcomeUnknown`] if the
    /// connection is lost: the statement may have done its work.
    ///
    /// # Cancel safety
    ///
    /// The rest of the rows would still be on their way after the future or the stream is
    /// dropped before the end: the connection is then marked broken (a pooled one is closed
    /// rather than reused, a standalone one refuses further statements).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// use futures::TryStreamExt;
    ///
    /// let rows = conn.query_stream("SELECT id FROM jobs WHERE done = $1", &[&false]).await?;
    /// let ids: Vec<i32> = rows.map_ok(|row| row.get::<_, i32>(0)).try_collect().await?;
    /// # Ok(()) }
    /// ```
    pub async fn query_stream(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<RowStream<'_>, Error> {
        if self.is_closed() {
            return Err(closed_error(&self.client).await);
        }
        let started = if self.config.unnamed_statements {
            self.mark_for(sql);
            let typed = params.iter().copied().zip(infer_types(params)?);
            tracked!(&self.broken, self.client.query_typed_raw(sql, typed))
        } else {
            let (stmt, traits) = Self::settle(self.prepare_cached(sql).await)?;
            self.mark(traits.dirties);
            let params = params.iter().copied();
            match tracked!(&self.broken, self.client.query_raw(&stmt, params.clone())) {
                Err(err) if is_stale_statement(&err) => {
                    let stmt = Self::settle(self.prepare_again(sql, err, false).await)?;
                    tracked!(&self.broken, self.client.query_raw(&stmt, params))
                }
                started => started,
            }
        };
        match started {
            Ok(rows) => Ok(RowStream::new(rows, self)),
            Err(err) => {
                self.note(&err);
                Self::settle(Err(Failure::sent(err)))
            }
        }
    }

    /// Runs a `COPY ... TO STDOUT` statement and streams its data as it arrives. The stream
    /// borrows the connection until dropped.
    ///
    /// tokio-postgres prepares a named statement for a `COPY`, even with
    /// [`PgConfig::unnamed_statements`](crate::PgConfig::unnamed_statements): behind
    /// PgBouncer's transaction pooling, run it inside a transaction, which keeps the prepare
    /// and the copy on one server connection.
    ///
    /// # Errors
    ///
    /// As for [`query`](Connection::query), when the statement cannot start; the stream
    /// yields an error (then ends) if one arrives later, [`Error::OutcomeUnknown`] if the
    /// connection is lost: the statement may have done its work.
    ///
    /// # Cancel safety
    ///
    /// As for [`query_stream`](Connection::query_stream): dropped before the end, the
    /// connection is marked broken.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// use futures::TryStreamExt;
    ///
    /// let data = conn.copy_out("COPY (SELECT 1, 'one') TO STDOUT").await?;
    /// let chunks: Vec<_> = data.try_collect().await?;
    /// assert_eq!(chunks.concat(), b"1\tone\n");
    /// # Ok(()) }
    /// ```
    pub async fn copy_out(&mut self, sql: &str) -> Result<CopyOutStream<'_>, Error> {
        if self.is_closed() {
            return Err(closed_error(&self.client).await);
        }
        self.mark_for(sql);
        match tracked!(&self.broken, self.client.copy_out(sql)) {
            Ok(data) => Ok(CopyOutStream::new(data, self)),
            Err(err) => {
                self.note(&err);
                Self::settle(Err(Failure::sent(err)))
            }
        }
    }

    /// Runs a `COPY ... FROM STDIN` statement and returns the sink its data goes to: send
    /// the data, then [`finish`](CopyInSink::finish) it. The sink borrows the connection
    /// until dropped.
    ///
    /// As for [`copy_out`](Connection::copy_out), tokio-postgres prepares a named statement
    /// for the `COPY`, even with unnamed statements configured.
    ///
    /// # Errors
    ///
    /// As for [`query`](Connection::query), when the statement cannot start.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future, or the sink before it is finished, aborts the `COPY` and marks
    /// the connection broken.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// use futures::SinkExt;
    ///
    /// let mut sink = conn.copy_in("COPY jobs (id, name) FROM STDIN").await?;
    /// sink.send(&b"1\tresize images\n2\tsend mail\n"[..]).await?;
    /// assert_eq!(sink.finish().await?, 2);
    /// # Ok(()) }
    /// ```
    pub async fn copy_in<T>(&mut self, sql: &str) -> Result<CopyInSink<'_, T>, Error>
    where
        T: bytes::Buf + Send + 'static,
    {
        if self.is_closed() {
            return Err(closed_error(&self.client).await);
        }
        self.mark_for(sql);
        match tracked!(&self.broken, self.client.copy_in(sql)) {
            Ok(sink) => Ok(CopyInSink::new(sink, self)),
            Err(err) => {
                self.note(&err);
                Self::settle(Err(Failure::sent(err)))
            }
        }
    }

    /// Calls a function and returns its rows, like Momoko's `callproc`: `name` may be
    /// schema-qualified and is quoted as an identifier (so `MyFunc` means exactly that).
    ///
    /// The server infers the argument types from the function. When the name is overloaded
    /// and that leaves several candidates (SQLSTATE 42725, e.g. `generate_series` with two
    /// integers), the call is prepared again with each argument cast to the type of its Rust
    /// value (`i32` as `integer`, `&str` as `text`, ...); inside a transaction, where the
    /// refused statement has aborted the transaction, the error is returned instead, and
    /// [`query`](Connection::query) with explicit casts is the way.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty name or one with a NUL byte; otherwise as for
    /// [`query`](Connection::query).
    ///
    /// # Cancel safety
    ///
    /// As for [`query`](Connection::query).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// let rows = conn.callproc("add_tax", &[&100i32]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn callproc(
        &mut self,
        name: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let sql = callproc_sql(name, args.len())?;
        match self.query(&sql, args).await {
            // Retried only outside a transaction: the refused statement aborted any around it.
            Err(err) if !self.may_be_in_transaction() => match callproc_retyped(name, args, &err) {
                Some(typed) => self.query(&typed, args).await,
                None => Err(err),
            },
            done => done,
        }
    }

    /// Returns `sql` with its parameters inlined as correctly quoted SQL literals, like
    /// Momoko's `mogrify`: for logs and debugging. (Statements run through this crate still
    /// send their parameters separately.)
    ///
    /// The server renders each value (`quote_nullable`) with the type the statement expects,
    /// so arrays, JSON, `bytea` and timestamps come out exactly as PostgreSQL would read
    /// them, with an explicit cast. Costs up to two round trips.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when the number of parameters does not match the placeholders
    /// or a text value holds a NUL byte; otherwise as for [`query`](Connection::query).
    ///
    /// # Cancel safety
    ///
    /// As for [`query`](Connection::query).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// let text = conn.mogrify("SELECT $1::text", &[&"O'Reilly"]).await?;
    /// assert_eq!(text, "SELECT 'O''Reilly'::text");
    /// # Ok(()) }
    /// ```
    pub async fn mogrify(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<String, Error> {
        Self::settle(self.try_mogrify(sql, params).await)
    }

    pub(crate) async fn try_mogrify(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<String, Failure> {
        let wanted = sql::max_placeholder(sql).map_err(|e| Failure::unsent(invalid(e)))?;
        if wanted != params.len() {
            return Err(Failure::unsent(Error::InvalidInput(format!(
                "the statement uses {wanted} parameters but {} were given",
                params.len()
            ))));
        }
        if params.is_empty() {
            return Ok(sql.to_string());
        }
        let (types, rendered) = if self.config.unnamed_statements {
            let types = infer_types(params).map_err(Failure::unsent)?;
            let rendering = render_literals_sql(&types);
            let typed: Vec<(&(dyn ToSql + Sync), Type)> =
                params.iter().copied().zip(types.iter().cloned()).collect();
            let rendered = tracked!(&self.broken, self.client.query_typed(&rendering, &typed));
            (types, rendered)
        } else {
            let (stmt, _) = self.prepare_cached(sql).await?;
            let types: Vec<Type> = stmt.params().to_vec();
            let rendering = render_literals_sql(&types);
            let (render, _) = self.prepare_cached(&rendering).await?;
            let rendered = tracked!(&self.broken, self.client.query(&render, params));
            (types, rendered)
        };
        let row = match rendered {
            Ok(rows) => match rows.into_iter().next() {
                Some(row) => row,
                None => {
                    return Err(Failure::sent(Error::InvalidInput(
                        "rendering the parameters returned no row".into(),
                    )));
                }
            },
            Err(err) => {
                self.note(&err);
                if err.code().map(|c| c.code()) == Some("22021") {
                    return Err(Failure::sent(Error::InvalidInput(
                        "a text parameter holds a NUL byte, which PostgreSQL text cannot".into(),
                    )));
                }
                return Err(Failure::sent(err));
            }
        };
        let literals: Vec<String> = (0..types.len()).map(|i| row.get(i)).collect();
        sql::substitute_placeholders(sql, &literals).map_err(|e| Failure::unsent(invalid(e)))
    }

    /// Streams the rows of `sql` through a server-side cursor, `chunk` rows per round trip,
    /// inside a transaction that ends with the stream (Momoko's named cursors). Memory stays
    /// bounded by one chunk whatever the result size.
    ///
    /// It cannot run inside a transaction the caller began (its `COMMIT` would commit the
    /// caller's work): the stream then yields [`Error::InvalidInput`] and ends, and the
    /// caller's transaction goes on.
    ///
    /// Dropping the stream early rolls the transaction back. The statement is prepared inside
    /// the cursor's transaction, which PgBouncer's transaction pooling allows even in
    /// [unnamed-statement mode](PgConfig::unnamed_statements).
    ///
    /// # Errors
    ///
    /// The stream yields an error (then ends) if a fetch fails.
    ///
    /// # Cancel safety
    ///
    /// Dropping the stream at any point ends the cursor. Between fetches, its transaction is
    /// rolled back, and a pooled connection is rolled back and checked before its next use.
    /// With a fetch in flight the rest of that reply would still arrive: the connection is
    /// marked broken, and a pooled one is closed rather than reused.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// use futures::TryStreamExt;
    ///
    /// let rows = conn.cursor("SELECT generate_series(1, 1000)", &[], 10);
    /// let all: Vec<tokio_postgres::Row> = rows.try_collect().await?;
    /// assert_eq!(all.len(), 1000);
    /// # Ok(()) }
    /// ```
    pub fn cursor<'a>(
        &'a mut self,
        sql: &'a str,
        params: &'a [&'a (dyn ToSql + Sync)],
        chunk: i32,
    ) -> impl Stream<Item = Result<Row, Error>> + Send + 'a {
        // Borrow the fields separately: the transaction holds the client, and the stream
        // still clears the dirty flag once the transaction has ended cleanly.
        let reset = self.any_use();
        let Connection {
            client,
            dirty,
            broken,
            ..
        } = self;
        let (dirty, broken) = (&*dirty, &*broken);
        // Unless a transaction may be open, none is; else the server is asked first.
        let may_be_in_transaction = dirty
            .fetch_or(MAY_BE_IN_TRANSACTION | reset, Ordering::Relaxed)
            & MAY_BE_IN_TRANSACTION
            != 0;
        enum State<'t> {
            Start(&'t mut Client),
            Open(tokio_postgres::Transaction<'t>, tokio_postgres::Portal),
            Done,
        }
        let chunk = chunk.max(1);
        let pages = futures::stream::unfold(
            (State::Start(client), dirty, broken),
            move |(state, dirty, broken)| async move {
                let fail = |err: tokio_postgres::Error, broken: &AtomicBool| {
                    if pg_connection_lost(&err) {
                        broken.store(true, Ordering::Relaxed);
                    }
                    Error::Postgres(err)
                };
                let (tx, portal) = match state {
                    State::Done => return None,
                    State::Start(client) => {
                        let asked = if may_be_in_transaction {
                            in_transaction(client).await
                        } else {
                            Ok(false)
                        };
                        let refusal = match asked {
                            Ok(false) => None,
                            Ok(true) => Some(Error::InvalidInput(
                                "cursor() runs in a transaction of its own and cannot run \
                                 inside one the caller began; there, use DECLARE and FETCH"
                                    .into(),
                            )),
                            Err(err) => Some(fail(err, broken)),
                        };
                        if let Some(err) = refusal {
                            return Some((Err(err), (State::Done, dirty, broken)));
                        }
                        let tx = match client.transaction().await {
                            Ok(tx) => tx,
                            Err(err) => {
                                let err = fail(err, broken);
                                return Some((Err(err), (State::Done, dirty, broken)));
                            }
                        };
                        match tx.bind(sql, params).await {
                            Ok(portal) => (tx, portal),
                            Err(err) => {
                                let err = fail(err, broken);
                                return Some((Err(err), (State::Done, dirty, broken)));
                            }
                        }
                    }
                    State::Open(tx, portal) => (tx, portal),
                };
                match tracked!(broken, tx.query_portal(&portal, chunk)) {
                    Ok(rows) if rows.is_empty() => {
                        drop(portal);
                        match tx.commit().await {
                            Ok(()) => {
                                dirty.fetch_and(!MAY_BE_IN_TRANSACTION, Ordering::Relaxed);
                                None
                            }
                            Err(err) => {
                                let err = fail(err, broken);
                                Some((Err(err), (State::Done, dirty, broken)))
                            }
                        }
                    }
                    Ok(rows) => Some((Ok(rows), (State::Open(tx, portal), dirty, broken))),
                    Err(err) => {
                        let err = fail(err, broken);
                        Some((Err(err), (State::Done, dirty, broken)))
                    }
                }
            },
        );
        pages.flat_map(|page: Result<Vec<Row>, Error>| {
            futures::stream::iter(match page {
                Ok(rows) => rows.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(err) => vec![Err(err)],
            })
        })
    }

    /// Runs `statements` in one transaction (Momoko's `transaction`) and returns the rows of
    /// each; the list form of [`transaction_with`](Connection::transaction_with), as
    /// [`PgPool::transaction`](crate::PgPool::transaction).
    ///
    /// # Errors
    ///
    /// The first failing statement's error (everything is rolled back), or
    /// [`Error::OutcomeUnknown`] when the connection was lost during `COMMIT`. A standalone
    /// connection never retries: the pool's form runs the list again on a fresh connection
    /// when the connection is lost before `COMMIT`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future with a statement in flight marks the connection broken (a pooled
    /// one is closed rather than reused). Nothing was committed, unless the `COMMIT` itself
    /// was in flight: then the outcome is unknown.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// let results = conn
    ///     .transaction(&[
    ///         ("INSERT INTO accounts (id, balance) VALUES ($1, 100)", &[&1i32]),
    ///         ("SELECT balance FROM accounts WHERE id = $1", &[&1i32]),
    ///     ])
    ///     .await?;
    /// assert_eq!(results[1][0].get::<_, i32>(0), 100);
    /// # Ok(()) }
    /// ```
    pub async fn transaction(
        &mut self,
        statements: &[(&str, &[&(dyn ToSql + Sync)])],
    ) -> Result<Vec<Vec<Row>>, Error> {
        Self::settle(self.try_statements(statements).await)
    }

    /// Runs `f` inside a transaction: commits when it returns `Ok`, rolls back when it
    /// returns `Err`, panics, or its future is dropped.
    ///
    /// # Errors
    ///
    /// The closure's error, or the error of a `COMMIT` that failed: nothing was committed
    /// (unless the closure ended the transaction itself, see [`Transaction`]). A connection
    /// lost before the `COMMIT` was sent is such an error too ([`Error::is_connection_lost`]):
    /// the server rolls back a transaction whose connection ends. [`Error::OutcomeUnknown`]
    /// only when the connection was lost with the `COMMIT` in flight, or after the closure
    /// ended the transaction itself: then it may or may not have committed.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future rolls the transaction back. Dropped while the closure waits between
    /// statements, the `ROLLBACK` is sent at once, without waiting for its answer, ahead of
    /// anything the connection runs next. Dropped with a statement in flight, the connection
    /// is marked broken instead (a pooled one is closed rather than reused).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// let id: i32 = conn
    ///     .transaction_with(|tx| {
    ///         Box::pin(async move {
    ///             tx.execute("INSERT INTO log (msg) VALUES ('hi')", &[]).await?;
    ///             Ok(tx.query_one("SELECT lastval()::int", &[]).await?.get(0))
    ///         })
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction_with<T, F>(&mut self, f: F) -> Result<T, Error>
    where
        F: for<'c> FnOnce(&'c mut Transaction<'_>) -> momopool::BoxFuture<'c, Result<T, Error>>,
    {
        self.try_transaction(f)
            .await
            .map_err(|failure| match failure {
                TxFailure::NotStarted(error) | TxFailure::NotCommitted(error) => error,
                TxFailure::MayHaveCommitted(error) => outcome_unknown(error),
            })
    }

    pub(crate) async fn try_transaction<T, F>(&mut self, f: F) -> Result<T, TxFailure>
    where
        F: for<'c> FnOnce(&'c mut Transaction<'_>) -> momopool::BoxFuture<'c, Result<T, Error>>,
    {
        self.begin()
            .await
            .map_err(|failure| TxFailure::NotStarted(failure.error))?;
        // Armed while the caller's closure runs: dropped there, between statements, this
        // future would leave the transaction open on the server, so the guard queues its
        // ROLLBACK ahead of anything the connection runs next. (Everything else this method
        // awaits is a tracked request: dropped half-way, it marks the connection broken.)
        let abandoned = RollBackIfAbandoned { conn: self };
        let outcome = {
            let mut tx = Transaction { conn: self };
            let fut = f(&mut tx);
            futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(fut)).await
        };
        std::mem::forget(abandoned);
        // Until the COMMIT leaves, a lost connection takes the whole transaction with it;
        // unless the closure ended the transaction itself, and ran on outside it.
        let classify = |error: Error, may_have_committed: bool| {
            if error.is_connection_lost() && may_have_committed {
                TxFailure::MayHaveCommitted(error)
            } else {
                TxFailure::NotCommitted(error)
            }
        };
        match outcome {
            Ok(Ok(value)) => {
                self.commit()
                    .await
                    .map_err(|failure| classify(failure.error, failure.sent))?;
                self.transaction_ended();
                Ok(value)
            }
            Ok(Err(error)) => {
                if !self.is_closed() && self.try_batch("ROLLBACK").await.is_ok() {
                    self.transaction_ended();
                }
                Err(classify(error, self.past_commit()))
            }
            Err(panic) => {
                if !self.is_closed() && self.try_batch("ROLLBACK").await.is_ok() {
                    self.transaction_ended();
                }
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Runs statements in one transaction and returns the rows of each.
    pub(crate) async fn try_statements(
        &self,
        statements: &[(&str, &[&(dyn ToSql + Sync)])],
    ) -> Result<Vec<Vec<Row>>, Failure> {
        self.begin().await.map_err(|mut failure| {
            failure.sent = false;
            failure
        })?;
        let mut results = Vec::with_capacity(statements.len());
        for (sql, params) in statements {
            match self.try_statement(sql, params, true, Keep::Rows).await {
                Ok((rows, _)) => results.push(rows),
                Err(mut failure) => {
                    // Nothing was committed: a transaction cut off before COMMIT is rolled
                    // back by the server, so replaying the whole list from BEGIN is safe.
                    // Unless a statement of the list ended the transaction early: what ran
                    // before it stays, and the list must not run again.
                    failure.sent = self.past_commit();
                    if !self.is_closed() && self.try_batch("ROLLBACK").await.is_ok() {
                        self.transaction_ended();
                    }
                    return Err(failure);
                }
            }
        }
        self.commit().await?;
        self.transaction_ended();
        Ok(results)
    }

    /// Makes the connection ready for reuse: roll back if the session state is unknown,
    /// then the configured recycling method.
    pub(crate) async fn recycle(&mut self) -> Result<(), Error> {
        if self.is_closed() {
            return Err(closed_error(&self.client).await);
        }
        let queued = std::mem::take(&mut self.rollback_queued);
        if self.may_be_in_transaction() && !queued {
            self.client.batch_execute("ROLLBACK").await?;
        }
        let recycling = self.config.recycling.clone();
        match recycling {
            Recycling::Fast => {}
            Recycling::Verified => {
                self.client.simple_query("").await?;
            }
            Recycling::Clean => {
                // `DISCARD ALL` in its documented order, minus `DEALLOCATE ALL` and `DISCARD
                // PLANS` (the statement cache stays valid). `RESET ALL` leaves the session
                // authorization and the role (`SET ROLE`) alone; `SET SESSION AUTHORIZATION
                // DEFAULT` resets both to the login's.
                self.client
                    .batch_execute(
                        "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
                         SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES",
                    )
                    .await?;
                self.run_session_statements().await?;
            }
            Recycling::Custom(sql) => {
                let outcome = self.client.batch_execute(&sql).await;
                if sql::may_drop_statements(&sql) {
                    self.cache().clear();
                }
                outcome?;
            }
        }
        self.dirty.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Sends a cancel request for whatever this connection's backend is running, in the
    /// background, over a new socket. The task gives up after [`CANCEL_WITHIN`], so that a
    /// server that never answers cannot keep it (and its socket) for ever.
    pub(crate) fn cancel_in_background(&self) {
        let token = self.client.cancel_token();
        #[cfg(feature = "tls-rustls")]
        let tls = self.config.tls.clone();
        let runtime = Arc::clone(&self.runtime);
        let (target, port) = self.target.clone();
        let cancel = async move {
            let socket = match connect_socket(&runtime, &target, port).await {
                Ok(socket) => socket,
                Err(err) => {
                    tracing::debug!(error = %err, "could not open a socket to cancel");
                    return;
                }
            };
            #[cfg(feature = "tls-rustls")]
            let result = match tls.as_ref().map(|tls| tls_connector(tls, &target)) {
                Some(Ok(connector)) => token.cancel_query_raw(socket, connector).await,
                _ => token.cancel_query_raw(socket, NoTls).await,
            };
            #[cfg(not(feature = "tls-rustls"))]
            let result = token.cancel_query_raw(socket, NoTls).await;
            if let Err(err) = result {
                tracing::debug!(error = %err, "cancel request failed");
            }
        };
        let runtime = Arc::clone(&self.runtime);
        self.runtime.spawn(Box::pin(async move {
            if momopool::with_timeout(&*runtime, Some(CANCEL_WITHIN), cancel)
                .await
                .is_err()
            {
                tracing::debug!("cancel request gave up after {CANCEL_WITHIN:?}");
            }
        }));
    }

    /// Gives the connection up at a call's deadline: a cancel request for what it runs, and
    /// it is not reused. The caller's error: for a transaction of the connection's own not
    /// yet past its `COMMIT`, [`Error::TransactionTimeout`] (nothing was committed), else
    /// [`Error::StatementTimeout`].
    pub(crate) fn timed_out(&self, after: Duration, transaction: bool) -> Error {
        self.cancel_in_background();
        self.mark_broken();
        if transaction && !self.past_commit() {
            Error::TransactionTimeout { after }
        } else {
            Error::StatementTimeout { after }
        }
    }

    pub(crate) fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    /// Sends an empty query and waits for its answer, at most `within`: [`Error::Io`] of
    /// kind `TimedOut` when none came by then (a silently dead connection, perhaps).
    pub(crate) async fn ping(&self, within: Option<Duration>) -> Result<(), Error> {
        match momopool::with_timeout(&*self.runtime, within, self.try_batch("")).await {
            Ok(answer) => answer.map_err(|failure| failure.error),
            Err(momopool::Elapsed) => Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "a ping got no answer within {:?}",
                    within.unwrap_or_default()
                ),
            ))),
        }
    }

    /// The runtime the connection's driver and timers run on.
    pub(crate) fn runtime(&self) -> &Arc<dyn PgRuntime> {
        &self.runtime
    }

    /// Turns a statement method's failure into the error callers see.
    fn settle<T>(outcome: Result<T, Failure>) -> Result<T, Error> {
        outcome.map_err(|failure| {
            if failure.sent && failure.error.is_connection_lost() {
                Error::OutcomeUnknown(Box::new(failure.error))
            } else {
                failure.error
            }
        })
    }

    /// Starts listening on `channel` and forwards its notifications to `sender`.
    pub(crate) async fn listen(
        &mut self,
        channel: &str,
        sender: NotificationSender,
    ) -> Result<(), Error> {
        *self
            .driver
            .notifications
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(sender);
        self.listen_command("LISTEN", channel).await
    }

    /// Runs `command` (`LISTEN` or `UNLISTEN`) on `channel`, quoted as an identifier.
    pub(crate) async fn listen_command(&self, command: &str, channel: &str) -> Result<(), Error> {
        let channel = sql::quote_identifier(channel).map_err(invalid)?;
        Self::settle(self.try_batch(&format!("{command} {channel}")).await)
    }
}

/// A connection inside a transaction, as given to [`Connection::transaction_with`] and
/// [`PgPool::transaction_with`](crate::PgPool::transaction_with): the same statement methods,
/// minus retries (nothing is ever replayed inside a transaction).
///
/// A connection lost mid-statement here does not leave an unknown outcome: the server rolls
/// back a transaction whose connection ends, so nothing the transaction did is kept (effects
/// that ignore transactions, such as `nextval`, excepted). The statement returns the lost
/// connection's error ([`Error::is_connection_lost`]), and so does the transaction, having
/// committed nothing.
///
/// That holds while the transaction is the one the closure was given. A statement that may
/// end it (`COMMIT`, `END`, `ABORT`, `ROLLBACK` but not `ROLLBACK TO`, `PREPARE
/// TRANSACTION`, spotted by its first word) makes what follows run outside it: from then on,
/// a connection lost mid-statement is an [`Error::OutcomeUnknown`], here and for the whole
/// transaction.
///
/// # Examples
///
/// ```no_run
/// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
///
/// conn.transaction_with(|tx: &mut momopool_pg::Transaction<'_>| {
///     Box::pin(async move {
///         tx.execute("UPDATE stock SET count = count - 1 WHERE item = 'tea'", &[]).await?;
///         let row = tx.query_one("SELECT count FROM stock WHERE item = 'tea'", &[]).await?;
///         let left: i32 = row.get(0);
///         if left < 0 {
///             // An error rolls everything back.
///             return Err(momopool_pg::Error::InvalidInput("out of tea".into()));
///         }
///         Ok(())
///     })
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub struct Transaction<'a> {
    conn: &'a Connection,
}

/// Queues a `ROLLBACK` if dropped: the transaction closure it guards was abandoned between
/// statements. Forgotten once the closure's outcome is in.
struct RollBackIfAbandoned<'a> {
    conn: &'a Connection,
}

impl Drop for RollBackIfAbandoned<'_> {
    fn drop(&mut self) {
        self.conn.queue_rollback();
        self.conn.transaction_ended();
    }
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("conn", &self.conn)
            .finish()
    }
}

impl Transaction<'_> {
    /// Turns a statement's failure into the error the closure sees: inside the transaction,
    /// a lost connection takes the statement's effects with it; outside it (the closure
    /// ended it), the outcome is as unknown as on a [`Connection`].
    fn settle<T>(&self, outcome: Result<T, Failure>) -> Result<T, Error> {
        if self.conn.past_commit() {
            Connection::settle(outcome)
        } else {
            outcome.map_err(|failure| failure.error)
        }
    }

    /// Runs a statement and returns its rows.
    ///
    /// # Errors
    ///
    /// As for [`Connection::query`], but a lost connection is not an unknown outcome (see
    /// [`Transaction`]); a cached plan invalidated by a schema change gives
    /// [`Error::PlanInvalidated`].
    ///
    /// # Cancel safety
    ///
    /// Dropping it abandons the statement; the transaction is rolled back.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// let rows = conn
    ///     .transaction_with(|tx| {
    ///         Box::pin(async move {
    ///             tx.execute("LOCK TABLE jobs IN SHARE MODE", &[]).await?;
    ///             tx.query("SELECT id FROM jobs WHERE done = $1", &[&false]).await
    ///         })
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let outcome = self.conn.try_statement(sql, params, true, Keep::Rows).await;
        self.settle(outcome.map(|(rows, _)| rows))
    }

    /// Runs a statement that returns exactly one row.
    ///
    /// # Errors
    ///
    /// As for [`Transaction::query`], and [`Error::InvalidInput`] when the statement did not
    /// return exactly one row.
    ///
    /// # Cancel safety
    ///
    /// As for [`Transaction::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// let id: i32 = conn
    ///     .transaction_with(|tx| {
    ///         Box::pin(async move {
    ///             let sql = "INSERT INTO jobs (name) VALUES ($1) RETURNING id";
    ///             let row = tx.query_one(sql, &[&"resize images"]).await?;
    ///             Ok(row.get(0))
    ///         })
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error> {
        exactly_one(self.query(sql, params).await?)
    }

    /// Runs a statement that returns at most one row.
    ///
    /// # Errors
    ///
    /// As for [`Transaction::query`], and [`Error::InvalidInput`] when it returned several
    /// rows.
    ///
    /// # Cancel safety
    ///
    /// As for [`Transaction::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// let claimed = conn
    ///     .transaction_with(|tx| {
    ///         Box::pin(async move {
    ///             let sql = "SELECT id FROM jobs WHERE NOT done LIMIT 1 FOR UPDATE SKIP LOCKED";
    ///             let Some(row) = tx.query_opt(sql, &[]).await? else {
    ///                 return Ok(None); // nothing to do
    ///             };
    ///             let id: i32 = row.get(0);
    ///             tx.execute("UPDATE jobs SET done = true WHERE id = $1", &[&id]).await?;
    ///             Ok(Some(id))
    ///         })
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        at_most_one(self.query(sql, params).await?)
    }

    /// Runs a statement and returns its rows: the same as [`Transaction::query`], under
    /// Momoko's name.
    ///
    /// # Errors
    ///
    /// As for [`Transaction::query`].
    ///
    /// # Cancel safety
    ///
    /// As for [`Transaction::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// let ids: Vec<i32> = conn
    ///     .transaction_with(|tx| {
    ///         Box::pin(async move {
    ///             let sql = "UPDATE jobs SET taken = true WHERE NOT taken RETURNING id";
    ///             Ok(tx.execute(sql, &[]).await?.iter().map(|row| row.get(0)).collect())
    ///         })
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        self.query(sql, params).await
    }

    /// Runs a statement and returns how many rows it affected.
    ///
    /// # Errors
    ///
    /// As for [`Transaction::query`].
    ///
    /// # Cancel safety
    ///
    /// As for [`Transaction::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// let moved = conn
    ///     .transaction_with(|tx| {
    ///         Box::pin(async move {
    ///             let sql = "INSERT INTO archive SELECT * FROM jobs WHERE done";
    ///             let n = tx.execute_count(sql, &[]).await?;
    ///             tx.execute("DELETE FROM jobs WHERE done", &[]).await?;
    ///             Ok(n)
    ///         })
    ///     })
    ///     .await?;
    /// println!("{moved} jobs archived");
    /// # Ok(()) }
    /// ```
    pub async fn execute_count(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        let outcome = self
            .conn
            .try_statement(sql, params, true, Keep::Count)
            .await;
        self.settle(outcome.map(|(_, n)| n))
    }

    /// Runs statements separated by semicolons, without parameters.
    ///
    /// # Errors
    ///
    /// As for [`Transaction::query`].
    ///
    /// # Cancel safety
    ///
    /// As for [`Transaction::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// conn.transaction_with(|tx| {
    ///     Box::pin(async move {
    ///         let sql = "SET LOCAL lock_timeout = '1s'; TRUNCATE jobs; TRUNCATE archive";
    ///         tx.batch_execute(sql).await
    ///     })
    /// })
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        self.conn.note_end(sql);
        let outcome = self.conn.try_batch(sql).await;
        self.settle(outcome)
    }
}

/// The types parameters are offered, in order, when inferring one: the first a value
/// accepts is used.
const CANDIDATE_TYPES: [Type; 31] = [
    Type::BOOL,
    Type::INT2,
    Type::INT4,
    Type::INT8,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::TEXT,
    Type::BYTEA,
    Type::JSONB,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMP,
    Type::DATE,
    Type::TIME,
    Type::INTERVAL,
    Type::UUID,
    Type::NUMERIC,
    Type::INET,
    Type::OID,
    Type::CHAR,
    Type::BOOL_ARRAY,
    Type::INT2_ARRAY,
    Type::INT4_ARRAY,
    Type::INT8_ARRAY,
    Type::FLOAT4_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::BYTEA_ARRAY,
    Type::JSONB_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::UUID_ARRAY,
    Type::DATE_ARRAY,
];

/// Infers each parameter's PostgreSQL type from its Rust value, for unnamed statements.
fn infer_types(params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Type>, Error> {
    let mut scratch = bytes::BytesMut::new();
    params
        .iter()
        .enumerate()
        .map(|(i, param)| {
            CANDIDATE_TYPES
                .iter()
                .find(|ty| {
                    scratch.clear();
                    param.to_sql_checked(ty, &mut scratch).is_ok()
                })
                .cloned()
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "cannot infer the PostgreSQL type of parameter ${}; unnamed statements \
                         support the common scalar, JSON and array types",
                        i + 1
                    ))
                })
        })
        .collect()
}

/// The `SELECT * FROM name(...)` statement behind `callproc`.
pub(crate) fn callproc_sql(name: &str, args: usize) -> Result<String, Error> {
    let name = sql::quote_qualified_name(name).map_err(invalid)?;
    let placeholders: Vec<String> = (1..=args).map(|i| format!("${i}")).collect();
    Ok(format!("SELECT * FROM {name}({})", placeholders.join(", ")))
}

/// `callproc`'s statement with each argument cast to the type of its Rust value, when `err`
/// says the function's name is overloaded and the untyped arguments matched several
/// (SQLSTATE 42725); `None` otherwise, or when a value's type cannot be told.
pub(crate) fn callproc_retyped(
    name: &str,
    args: &[&(dyn ToSql + Sync)],
    err: &Error,
) -> Option<String> {
    if args.is_empty() || err.code() != Some(&SqlState::AMBIGUOUS_FUNCTION) {
        return None;
    }
    let types = infer_types(args).ok()?;
    let name = sql::quote_qualified_name(name).ok()?;
    let casts: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("${}::{}", i + 1, type_name(ty)))
        .collect();
    Some(format!("SELECT * FROM {name}({})", casts.join(", ")))
}

/// A type's schema-qualified, quoted name, for a cast.
fn type_name(ty: &Type) -> String {
    format!(
        "{}.{}",
        sql::quote_identifier(ty.schema()).unwrap_or_default(),
        sql::quote_identifier(ty.name()).unwrap_or_default()
    )
}

/// A statement that renders each parameter as a literal with an explicit cast.
fn render_literals_sql(types: &[Type]) -> String {
    let columns: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, ty)| {
            let n = i + 1;
            match *ty {
                // Unknown or text-like: a plain quoted literal reads back the same.
                Type::TEXT | Type::UNKNOWN | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                    format!("quote_nullable(${n}::text)")
                }
                _ => {
                    let cast = type_name(ty);
                    format!(
                        "CASE WHEN ${n}::{cast} IS NULL THEN 'NULL' ELSE \
                         quote_literal(${n}::{cast}) || '::' || \
                         pg_catalog.format_type({oid}, NULL) END",
                        oid = ty.oid()
                    )
                }
            }
        })
        .collect();
    format!("SELECT {}", columns.join(", "))
}

/// Where a statement's error came: before its request was written at all, before its rows'
/// stream started (with `query_raw`, before the server acknowledged the bind), or while
/// reading the rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Unwritten,
    Start,
    Rows,
}

/// Awaits the rows' stream that `start` makes, then its rows (kept or only counted), and the
/// affected-row count. `start` is called here, so that its future is made in place; `written`
/// is the connection's socket count, which tells a request that never left.
async fn collect<F, S>(
    written: &Written,
    start: F,
    keep: Keep,
) -> Result<(Vec<Row>, u64), (tokio_postgres::Error, Phase)>
where
    F: FnOnce() -> S,
    S: std::future::Future<Output = Result<tokio_postgres::RowStream, tokio_postgres::Error>>,
{
    let before = written.get();
    let stream = start().await.map_err(|err| {
        let phase = if written.get() == before {
            Phase::Unwritten
        } else {
            Phase::Start
        };
        (err, phase)
    })?;
    futures::pin_mut!(stream);
    let mut rows = Vec::new();
    while let Some(row) = futures::TryStreamExt::try_next(&mut stream)
        .await
        .map_err(|err| (err, Phase::Rows))?
    {
        if keep == Keep::Rows {
            rows.push(row);
        }
    }
    Ok((rows, stream.rows_affected().unwrap_or(0)))
}

/// Whether `err` says a cached prepared statement went stale, which preparing it again cures:
/// its plan ("cached plan must not change result type", after a schema change, the one
/// SQLSTATE 0A000 (feature not supported) error of that kind), or the statement itself, which
/// the server no longer has (26000, after a `DISCARD ALL` or `DEALLOCATE` the connection did
/// not see, say inside a `DO` block). For 0A000 the server function that raised it must be
/// the one that revalidates plans when the error names it (PostgreSQL always does); the
/// message text, which may be translated, is never read. Without a name (a proxy that drops
/// the field), any 0A000 counts: it is prepared again once, and a different error comes back
/// as it was.
fn is_stale_statement(err: &tokio_postgres::Error) -> bool {
    err.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::INVALID_SQL_STATEMENT_NAME
            || (*db.code() == SqlState::FEATURE_NOT_SUPPORTED
                && db
                    .routine()
                    .is_none_or(|routine| routine == "RevalidateCachedQuery"))
    })
}

fn invalid(e: sql::SqlTextError) -> Error {
    Error::InvalidInput(e.to_string())
}

fn exactly_one(rows: Vec<Row>) -> Result<Row, Error> {
    let n = rows.len();
    let mut rows = rows.into_iter();
    match (rows.next(), n) {
        (Some(row), 1) => Ok(row),
        _ => Err(Error::InvalidInput(format!(
            "expected exactly one row, the statement returned {n}"
        ))),
    }
}

fn at_most_one(rows: Vec<Row>) -> Result<Option<Row>, Error> {
    match rows.len() {
        0 => Ok(None),
        1 => Ok(rows.into_iter().next()),
        n => Err(Error::InvalidInput(format!(
            "expected at most one row, the statement returned {n}"
        ))),
    }
}

/// Whether a transaction is open on the connection, asked of the server with a `SAVEPOINT`,
/// which only a transaction accepts (and released at once). For [`Connection::cursor`],
/// whose `BEGIN` inside a transaction the caller began would be a no-op and whose `COMMIT`
/// would then commit the caller's work early. A failed transaction's refusal (25P02) is
/// returned as the error it is.
async fn in_transaction(client: &Client) -> Result<bool, tokio_postgres::Error> {
    match client
        .batch_execute("SAVEPOINT momopool_cursor_probe")
        .await
    {
        Err(err) if err.code() == Some(&SqlState::NO_ACTIVE_SQL_TRANSACTION) => Ok(false),
        Err(err) => Err(err),
        Ok(()) => {
            client
                .batch_execute("RELEASE SAVEPOINT momopool_cursor_probe")
                .await?;
            Ok(true)
        }
    }
}

/// How long a cancel request may take, its connect included ([`Connection::cancel_in_background`]).
const CANCEL_WITHIN: Duration = Duration::from_secs(10);

/// An error saying the connection is closed or unusable, at once and without sending
/// anything: a connection-lost error ([`Error::is_connection_lost`]).
async fn closed_error(client: &Client) -> Error {
    if !client.is_closed() {
        // Marked unusable with its socket still open: an abandoned statement's answer may
        // still be on its way, and anything sent now would wait behind it.
        return Error::Io(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "the connection is unusable: a statement on it was abandoned before its answer \
             arrived, or failed in a way that left it so",
        ));
    }
    // A closed client fails at once without sending anything; this yields tokio-postgres's
    // own "connection closed" error rather than a made-up one.
    match client.simple_query("").await {
        Err(err) => Error::Postgres(err),
        Ok(_) => Error::InvalidInput("connection reported closed".into()),
    }
}

/// Opens a connection's socket to one target: [`connect_socket`], then, for TCP, `pg`'s TCP
/// settings (keepalives, `tcp_user_timeout`), as tokio-postgres's own connect applies them.
async fn open_socket(
    runtime: &Arc<dyn PgRuntime>,
    target: &Target,
    port: u16,
    pg: &tokio_postgres::Config,
) -> Result<Socket, Error> {
    let socket = connect_socket(runtime, target, port).await?;
    if !matches!(target, Target::Unix(_)) && !socket.apply_tcp_settings(pg)? {
        tracing::debug!("the runtime gave no socket descriptor: keepalive settings not applied");
    }
    Ok(socket)
}

/// Opens a socket to one target through the runtime.
async fn connect_socket(
    runtime: &Arc<dyn PgRuntime>,
    target: &Target,
    port: u16,
) -> Result<Socket, Error> {
    match target {
        Target::Unix(dir) => Ok(runtime
            .connect_unix(dir.join(format!(".s.PGSQL.{port}")))
            .await?),
        Target::Addr(addr, _) => Ok(runtime.connect_tcp(SocketAddr::new(*addr, port)).await?),
        Target::Name(name) => {
            let addrs = resolve(name.clone(), port).await?;
            let mut last = None;
            for addr in addrs {
                match runtime.connect_tcp(addr).await {
                    Ok(socket) => return Ok(socket),
                    Err(err) => last = Some(err),
                }
            }
            Err(last
                .unwrap_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "host has no address")
                })
                .into())
        }
    }
}

/// Resolves a host name off the async threads (the system resolver blocks).
async fn resolve(name: String, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(
            (name.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect),
        );
    });
    rx.await
        .unwrap_or_else(|_| Err(std::io::Error::other("name resolution thread failed")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callproc_quotes_the_name() {
        assert_eq!(callproc_sql("f", 0).unwrap(), "SELECT * FROM \"f\"()");
        assert_eq!(
            callproc_sql("public.MyFunc", 2).unwrap(),
            "SELECT * FROM \"public\".\"MyFunc\"($1, $2)"
        );
        assert!(callproc_sql("", 0).is_err());
    }

    /// A scripted server that runs `first` on the connection, then, once cued, says goodbye
    /// (a FATAL 57P01, then the end of the stream), and a standalone connection to it on a
    /// runtime whose tasks run only when polled.
    fn goodbye_on_cue(
        unnamed: bool,
        first: impl FnOnce(&mut std::net::TcpStream) + Send + 'static,
    ) -> (Arc<crate::testing::Stepped>, Connection, Cue) {
        use crate::testing::{Stepped, error_response, scripted_server};
        use std::io::Write;
        let (cue, wait_for_cue) = std::sync::mpsc::channel::<()>();
        let (said, was_said) = std::sync::mpsc::channel::<()>();
        let (addr, server) = scripted_server(move |mut socket| {
            first(&mut socket);
            wait_for_cue.recv().unwrap();
            let fatal = error_response("FATAL", "57P01", "terminating connection");
            socket.write_all(&fatal).unwrap();
            drop(socket);
            said.send(()).unwrap();
        });
        let rt = Arc::new(Stepped::default());
        let dsn = format!("host=127.0.0.1 port={} user=u sslmode=disable", addr.port());
        let config = PgConfig::from_dsn(&dsn)
            .unwrap()
            .unnamed_statements(unnamed);
        let conn = rt
            .run(Connection::connect_with(config, rt.clone()))
            .unwrap();
        let cue = Cue {
            cue,
            was_said,
            server,
        };
        (rt, conn, cue)
    }

    /// The cue for [`goodbye_on_cue`]'s server.
    struct Cue {
        cue: std::sync::mpsc::Sender<()>,
        was_said: std::sync::mpsc::Receiver<()>,
        server: std::thread::JoinHandle<()>,
    }

    impl Cue {
        /// Cues the goodbye, and returns once it has been said and has had time to reach
        /// the connection's socket (its driver is not polled meanwhile).
        fn goodbye(self) {
            self.cue.send(()).unwrap();
            self.was_said.recv().unwrap();
            self.server.join().unwrap();
            // Loopback delivers it meanwhile.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A standalone connection on a scripted server that has said goodbye while the
    /// connection was idle, its driver not polled since.
    fn said_goodbye(unnamed: bool) -> (Arc<crate::testing::Stepped>, Connection) {
        let (rt, conn, cue) = goodbye_on_cue(unnamed, |_| {});
        cue.goodbye();
        (rt, conn)
    }

    /// The server says goodbye while the connection is idle, and its driver reads that before
    /// it would write the next request: the request never left, so the statement counts as
    /// not sent, although the error it gets ("closed") carries no answer to tell by.
    #[test]
    fn a_request_its_driver_never_wrote_is_not_sent() {
        // Unnamed statements: nothing to prepare first, so the request under test is the
        // first one after the goodbye.
        let (rt, conn) = said_goodbye(true);
        let written = conn.written.get();
        let failure = rt
            .run(conn.try_statement("SELECT 1", &[], false, Keep::Rows))
            .unwrap_err();
        assert_eq!(conn.written.get(), written, "the request was never written");
        assert!(failure.error.is_connection_lost(), "{:?}", failure.error);
        assert!(!failure.sent, "counted as sent: {:?}", failure.error);
        // The same for the simple protocol.
        let (rt, conn) = said_goodbye(false);
        let failure = rt.run(conn.try_batch("SELECT 1")).unwrap_err();
        assert!(failure.error.is_connection_lost(), "{:?}", failure.error);
        assert!(!failure.sent, "batch counted as sent: {:?}", failure.error);
    }

    /// The server says goodbye while a transaction's closure runs, unseen until the
    /// `COMMIT`, which the driver then never writes: nothing was committed, and the
    /// transaction says so instead of leaving its outcome unknown.
    #[test]
    fn a_commit_its_driver_never_wrote_committed_nothing() {
        use crate::testing::{message, read_message};
        use std::io::Write;
        let (rt, mut conn, cue) = goodbye_on_cue(false, |socket| {
            let (kind, begin) = read_message(socket);
            assert_eq!((kind, begin.as_slice()), (b'Q', &b"BEGIN\0"[..]));
            let mut answer = message(b'C', b"BEGIN\0");
            answer.extend(message(b'Z', b"T"));
            socket.write_all(&answer).unwrap();
        });
        let failure = rt
            .run(conn.try_transaction(|_| {
                Box::pin(async move {
                    // The driver is not polled while this closure blocks.
                    cue.goodbye();
                    Ok(())
                })
            }))
            .unwrap_err();
        match failure {
            TxFailure::NotCommitted(error) => assert!(error.is_connection_lost(), "{error:?}"),
            other => panic!("expected NotCommitted, got {other:?}"),
        }
    }

    /// A connection answered less than [`PEEK_AFTER_IDLE`] ago is not peeked at, unless it
    /// runs unnamed statements (which cannot tell a goodbye by their first answer); after
    /// that, the peek sees the goodbye either way.
    #[test]
    fn the_peek_waits_for_a_moment_of_idleness_unless_statements_are_unnamed() {
        for unnamed in [false, true] {
            let (_rt, conn) = said_goodbye(unnamed);
            // Asked right after an answer. Should the thread be switched out for longer
            // than the moment in between, the reading proves nothing: try again.
            let within = (0..20).find_map(|_| {
                let stamped = Instant::now();
                conn.stamp_answer();
                let pending = conn.input_pending();
                (stamped.elapsed() < PEEK_AFTER_IDLE / 2).then_some(pending)
            });
            assert_eq!(within, Some(unnamed), "unnamed statements: {unnamed}");
            std::thread::sleep(PEEK_AFTER_IDLE * 2);
            assert!(conn.input_pending(), "unnamed statements: {unnamed}");
        }
    }

    #[test]
    fn at_most_and_exactly_one() {
        assert!(at_most_one(Vec::new()).unwrap().is_none());
        assert!(exactly_one(Vec::new()).is_err());
    }
}
