//! The pools and clients under test, one `SELECT 1` interface over all of them.
//!
//! Every variant prepares the statement where it can: momopool-pg through its per-connection
//! statement cache (on by default), deadpool-postgres with `prepare_cached`, bb8-postgres
//! through a thin manager that prepares it once per connection when connecting, and the raw
//! clients once per client.

use bb8_postgres::PostgresConnectionManager;
use bb8_postgres::bb8::{self, ManageConnection};
use momopool_pg::{PgConfig, PgPool, SharedMode};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_postgres::{Client, NoTls, Row, Statement};

/// The statement every variant runs.
pub(crate) const SQL: &str = "SELECT 1";

/// Wait timeout given to the pools that have one (momopool-pg's default).
const WAIT: Duration = Duration::from_secs(30);
/// Create timeout given to deadpool-postgres (momopool-pg's default).
const CREATE: Duration = Duration::from_secs(10);
/// Recycle timeout given to deadpool-postgres (momopool-pg's default).
const RECYCLE: Duration = Duration::from_secs(5);

/// One configuration under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    /// momopool-pg, `PgPool::execute`: each call checks a connection out for itself.
    Momo,
    /// momopool-pg in shared mode: `SharedMode { connections: P, max_in_flight, .. }`.
    MomoShared {
        /// `SharedMode::max_in_flight`.
        max_in_flight: usize,
    },
    /// deadpool-postgres: get, `prepare_cached`, query.
    Deadpool,
    /// bb8-postgres: get, query with the statement prepared when the connection was made.
    Bb8 {
        /// `test_on_check_out`, bb8's default: an empty query before every checkout.
        test_on_check_out: bool,
    },
    /// P tokio-postgres clients, no pool: each query goes to the next client, round-robin.
    Raw,
    /// Diagnostic: momopool-pg exclusive, but `PgPool::get` then `Connection::query` instead
    /// of `PgPool::execute` (no retry loop around the call).
    MomoGet,
    /// Diagnostic: momopool's generic pool (`momopool::Pool`, default settings) over bare
    /// tokio-postgres clients, as deadpool-postgres and bb8-postgres use them: the pool core
    /// without momopool-pg's connection layer.
    MomoCore,
    /// Diagnostic: as `MomoCore`, with the manager peeking at the socket in `needs_check` (on
    /// every checkout from idle, not on a hand-over), as momopool-pg's manager does.
    MomoCorePeek,
    /// Diagnostic, for T ≤ P: no pool; task i always uses standalone momopool-pg
    /// `Connection` i (behind an uncontended async mutex): the connection layer alone.
    MomoConn,
    /// Diagnostic, for T ≤ P: the same with bare tokio-postgres clients.
    BarePinned,
}

/// momopool-pg's shared mode with its default `max_in_flight`.
pub(crate) const MOMO_SHARED: Variant = Variant::MomoShared {
    max_in_flight: DEFAULT_IN_FLIGHT,
};

/// `SharedMode::default().max_in_flight`, spelled out for the labels.
const DEFAULT_IN_FLIGHT: usize = 32;

impl Variant {
    /// A short name for tables.
    pub(crate) fn label(self) -> String {
        match self {
            Variant::Momo => "momopool-pg (exclusive)".to_owned(),
            Variant::MomoShared { max_in_flight } if max_in_flight == DEFAULT_IN_FLIGHT => {
                "momopool-pg (shared)".to_owned()
            }
            Variant::MomoShared { max_in_flight } => {
                format!("momopool-pg (shared, max_in_flight {max_in_flight})")
            }
            Variant::Deadpool => "deadpool-postgres".to_owned(),
            Variant::Bb8 {
                test_on_check_out: true,
            } => "bb8-postgres".to_owned(),
            Variant::Bb8 {
                test_on_check_out: false,
            } => "bb8-postgres (test_on_check_out off)".to_owned(),
            Variant::Raw => "raw tokio-postgres".to_owned(),
            Variant::MomoGet => "momopool-pg (exclusive, get + query)".to_owned(),
            Variant::MomoCore => "momopool::Pool over bare tokio-postgres clients".to_owned(),
            Variant::MomoCorePeek => {
                "momopool::Pool over bare clients, peeking like momopool-pg".to_owned()
            }
            Variant::MomoConn => "momopool-pg Connection, one per task, no pool".to_owned(),
            Variant::BarePinned => "tokio-postgres client, one per task, no pool".to_owned(),
        }
    }

    /// A short name for the command line (`--variants`).
    pub(crate) fn key(self) -> String {
        match self {
            Variant::Momo => "momo".to_owned(),
            Variant::MomoShared { max_in_flight } if max_in_flight == DEFAULT_IN_FLIGHT => {
                "shared".to_owned()
            }
            Variant::MomoShared { max_in_flight } => format!("shared{max_in_flight}"),
            Variant::Deadpool => "deadpool".to_owned(),
            Variant::Bb8 {
                test_on_check_out: true,
            } => "bb8".to_owned(),
            Variant::Bb8 {
                test_on_check_out: false,
            } => "bb8-nocheck".to_owned(),
            Variant::Raw => "raw".to_owned(),
            Variant::MomoGet => "momo-get".to_owned(),
            Variant::MomoCore => "momo-core".to_owned(),
            Variant::MomoCorePeek => "momo-core-peek".to_owned(),
            Variant::MomoConn => "momo-conn".to_owned(),
            Variant::BarePinned => "bare-pinned".to_owned(),
        }
    }

    /// Whether this is one of momopool-pg's modes.
    pub(crate) fn is_momo(self) -> bool {
        matches!(
            self,
            Variant::Momo
                | Variant::MomoShared { .. }
                | Variant::MomoGet
                | Variant::MomoCore
                | Variant::MomoCorePeek
                | Variant::MomoConn
        )
    }
}

/// A bb8 manager that prepares [`SQL`] once on every new connection (bb8-postgres hands out
/// bare clients, with no statement cache).
#[derive(Debug)]
pub(crate) struct Prepared(PostgresConnectionManager<NoTls>);

/// A bare client and its prepared [`SQL`].
pub(crate) struct PreparedClient {
    /// The client.
    client: Client,
    /// [`SQL`], prepared on this connection.
    select1: Statement,
    /// A duplicate of the socket to peek at ([`BareManager`] with `peek` only).
    probe: Option<std::net::TcpStream>,
}

impl PreparedClient {
    /// Runs the prepared [`SQL`].
    async fn select1(&self) -> Result<Vec<Row>, String> {
        self.client
            .query(&self.select1, &[])
            .await
            .map_err(|e| e.to_string())
    }
}

impl ManageConnection for Prepared {
    type Connection = PreparedClient;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<PreparedClient, tokio_postgres::Error> {
        let client = self.0.connect().await?;
        let select1 = client.prepare(SQL).await?;
        Ok(PreparedClient {
            client,
            select1,
            probe: None,
        })
    }

    async fn is_valid(&self, conn: &mut PreparedClient) -> Result<(), tokio_postgres::Error> {
        self.0.is_valid(&mut conn.client).await
    }

    fn has_broken(&self, conn: &mut PreparedClient) -> bool {
        self.0.has_broken(&mut conn.client)
    }
}

/// A momopool manager for bare tokio-postgres clients: connects with tokio-postgres's own
/// `connect` (its connection future spawned on Tokio, as deadpool-postgres and bb8-postgres
/// do), prepares [`SQL`] once, and checks with an empty query when the pool asks.
///
/// With `peek` it opens the TCP socket itself and keeps a duplicate of it, and its
/// `needs_check` peeks at that duplicate without blocking (one `recv(MSG_PEEK)`), as
/// momopool-pg's manager does on every checkout from idle: that cost alone. A connection
/// handed straight from one caller to a waiting one is not peeked at, as in momopool-pg.
#[derive(Debug)]
pub(crate) struct BareManager {
    /// Where to connect.
    config: tokio_postgres::Config,
    /// Keep a duplicate of the socket and peek at it in `needs_check` (TCP only).
    peek: bool,
}

impl momopool::Manager for BareManager {
    type Connection = PreparedClient;
    /// tokio-postgres's errors, or the socket's, as I/O errors.
    type Error = std::io::Error;

    async fn create(&self) -> Result<PreparedClient, std::io::Error> {
        let (client, probe) = match self.tcp_target().filter(|_| self.peek) {
            Some((host, port)) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                stream.set_nodelay(true)?;
                let probe = std::os::fd::AsFd::as_fd(&stream)
                    .try_clone_to_owned()
                    .map(std::net::TcpStream::from)?;
                let (client, connection) = self
                    .config
                    .connect_raw(stream, NoTls)
                    .await
                    .map_err(std::io::Error::other)?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                (client, Some(probe))
            }
            None => {
                let (client, connection) = self
                    .config
                    .connect(NoTls)
                    .await
                    .map_err(std::io::Error::other)?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                (client, None)
            }
        };
        let select1 = client.prepare(SQL).await.map_err(std::io::Error::other)?;
        Ok(PreparedClient {
            client,
            select1,
            probe,
        })
    }

    async fn check(
        &self,
        conn: &mut PreparedClient,
        _metrics: &momopool::Metrics,
    ) -> Result<(), std::io::Error> {
        conn.client
            .simple_query("")
            .await
            .map(drop)
            .map_err(std::io::Error::other)
    }

    fn is_broken(&self, conn: &mut PreparedClient) -> bool {
        conn.client.is_closed()
    }

    fn needs_check(&self, conn: &mut PreparedClient) -> bool {
        // The duplicate shares the socket's non-blocking mode: this never waits.
        conn.probe.as_ref().is_some_and(|probe| {
            !matches!(probe.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
    }

    fn needs_check_on_handover(&self, _conn: &mut PreparedClient) -> bool {
        false
    }
}

impl BareManager {
    /// The first host and port, when the host is a TCP one.
    fn tcp_target(&self) -> Option<(String, u16)> {
        match self.config.get_hosts().first()? {
            tokio_postgres::config::Host::Tcp(host) => Some((
                host.clone(),
                *self.config.get_ports().first().unwrap_or(&5432),
            )),
            _ => None,
        }
    }
}

/// The raw clients: P connections, each with [`SQL`] prepared, taken in turn.
pub(crate) struct Raw {
    /// The clients and their prepared statements.
    clients: Vec<(Client, Statement)>,
    /// The next client to use (modulo the count).
    next: AtomicUsize,
}

/// A pool (or the raw clients), ready for tasks to share.
#[derive(Clone)]
pub(crate) enum Bench {
    /// momopool-pg, in either mode.
    Momo(PgPool),
    /// deadpool-postgres.
    Deadpool(deadpool_postgres::Pool),
    /// bb8-postgres.
    Bb8(bb8::Pool<Prepared>),
    /// Raw tokio-postgres clients.
    Raw(Arc<Raw>),
    /// momopool-pg exclusive, through `get` and `Connection::query`.
    MomoGet(PgPool),
    /// momopool's generic pool over bare clients.
    MomoCore(momopool::Pool<BareManager>),
    /// Standalone momopool-pg connections, one per task.
    MomoConn(Arc<Vec<tokio::sync::Mutex<momopool_pg::Connection>>>),
    /// Bare clients, one per task.
    BarePinned(Arc<Vec<tokio::sync::Mutex<PreparedClient>>>),
}

impl Bench {
    /// Builds `variant` with `size` connections to `dsn` and warms it: every connection is
    /// open and has run [`SQL`] once (so the statement is prepared on it) before this
    /// returns. Must be called inside the Tokio runtime.
    pub(crate) async fn build(variant: Variant, size: usize, dsn: &str) -> Result<Bench, String> {
        let bench = match variant {
            Variant::Momo | Variant::MomoShared { .. } | Variant::MomoGet => {
                let config = PgConfig::from_dsn(dsn).map_err(|e| e.to_string())?;
                let mut builder = PgPool::builder(config)
                    .runtime(momopool_pg::Tokio::current())
                    .min_size(size)
                    .max_size(size);
                if let Variant::MomoShared { max_in_flight } = variant {
                    builder = builder.shared(SharedMode {
                        connections: size,
                        max_in_flight,
                        ..SharedMode::default()
                    });
                }
                let pool = builder.build_eager().await.map_err(|e| e.to_string())?;
                if variant == Variant::MomoGet {
                    Bench::MomoGet(pool)
                } else {
                    Bench::Momo(pool)
                }
            }
            Variant::MomoCore | Variant::MomoCorePeek => {
                let config = tokio_postgres::Config::from_str(dsn).map_err(|e| e.to_string())?;
                let manager = BareManager {
                    config,
                    peek: variant == Variant::MomoCorePeek,
                };
                let pool = momopool::Pool::builder(manager)
                    .runtime(momopool_pg::Tokio::current())
                    .min_size(size)
                    .max_size(size)
                    .build_eager()
                    .await
                    .map_err(|e| e.to_string())?;
                Bench::MomoCore(pool)
            }
            Variant::Deadpool => {
                let config = tokio_postgres::Config::from_str(dsn).map_err(|e| e.to_string())?;
                let manager = deadpool_postgres::Manager::from_config(
                    config,
                    NoTls,
                    deadpool_postgres::ManagerConfig {
                        recycling_method: deadpool_postgres::RecyclingMethod::Fast,
                    },
                );
                let pool = deadpool_postgres::Pool::builder(manager)
                    .max_size(size)
                    .runtime(deadpool_postgres::Runtime::Tokio1)
                    .wait_timeout(Some(WAIT))
                    .create_timeout(Some(CREATE))
                    .recycle_timeout(Some(RECYCLE))
                    .build()
                    .map_err(|e| e.to_string())?;
                Bench::Deadpool(pool)
            }
            Variant::Bb8 { test_on_check_out } => {
                let config = tokio_postgres::Config::from_str(dsn).map_err(|e| e.to_string())?;
                let max = u32::try_from(size).map_err(|e| e.to_string())?;
                let pool = bb8::Pool::builder()
                    .max_size(max)
                    .min_idle(Some(max))
                    .connection_timeout(WAIT)
                    .test_on_check_out(test_on_check_out)
                    .build(Prepared(PostgresConnectionManager::new(config, NoTls)))
                    .await
                    .map_err(|e| e.to_string())?;
                Bench::Bb8(pool)
            }
            Variant::MomoConn => {
                let config = PgConfig::from_dsn(dsn).map_err(|e| e.to_string())?;
                let runtime: Arc<dyn momopool_pg::PgRuntime> =
                    Arc::new(momopool_pg::Tokio::current());
                let mut conns = Vec::with_capacity(size);
                for _ in 0..size {
                    let conn =
                        momopool_pg::Connection::connect_with(config.clone(), runtime.clone())
                            .await
                            .map_err(|e| e.to_string())?;
                    conns.push(tokio::sync::Mutex::new(conn));
                }
                Bench::MomoConn(Arc::new(conns))
            }
            Variant::BarePinned => {
                let config = tokio_postgres::Config::from_str(dsn).map_err(|e| e.to_string())?;
                let manager = BareManager {
                    config,
                    peek: false,
                };
                let mut clients = Vec::with_capacity(size);
                for _ in 0..size {
                    let client = momopool::Manager::create(&manager)
                        .await
                        .map_err(|e| e.to_string())?;
                    clients.push(tokio::sync::Mutex::new(client));
                }
                Bench::BarePinned(Arc::new(clients))
            }
            Variant::Raw => {
                let mut clients = Vec::with_capacity(size);
                for _ in 0..size {
                    let (client, connection) = tokio_postgres::connect(dsn, NoTls)
                        .await
                        .map_err(|e| e.to_string())?;
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    let select1 = client.prepare(SQL).await.map_err(|e| e.to_string())?;
                    clients.push((client, select1));
                }
                Bench::Raw(Arc::new(Raw {
                    clients,
                    next: AtomicUsize::new(0),
                }))
            }
        };
        bench.warm(size).await?;
        Ok(bench)
    }

    /// Checks out `size` connections at once and runs [`SQL`] on each, so that every pool
    /// starts with `size` open connections that have the statement prepared.
    async fn warm(&self, size: usize) -> Result<(), String> {
        match self {
            Bench::Momo(pool) | Bench::MomoGet(pool) => {
                let mut held = Vec::with_capacity(size);
                for _ in 0..size {
                    held.push(pool.get().await.map_err(|e| e.to_string())?);
                }
                for conn in &mut held {
                    check(conn.query(SQL, &[]).await.map_err(|e| e.to_string())?)?;
                }
            }
            Bench::Deadpool(pool) => {
                let mut held = Vec::with_capacity(size);
                for _ in 0..size {
                    held.push(pool.get().await.map_err(|e| e.to_string())?);
                }
                for client in &held {
                    let stmt = client
                        .prepare_cached(SQL)
                        .await
                        .map_err(|e| e.to_string())?;
                    check(client.query(&stmt, &[]).await.map_err(|e| e.to_string())?)?;
                }
            }
            Bench::MomoCore(pool) => {
                let mut held = Vec::with_capacity(size);
                for _ in 0..size {
                    held.push(pool.get().await.map_err(|e| e.to_string())?);
                }
                for conn in &held {
                    check(conn.select1().await?)?;
                }
            }
            Bench::Bb8(pool) => {
                let mut held = Vec::with_capacity(size);
                for _ in 0..size {
                    held.push(pool.get().await.map_err(|e| format!("{e:?}"))?);
                }
                for conn in &held {
                    check(conn.select1().await?)?;
                }
            }
            Bench::MomoConn(conns) => {
                for conn in conns.iter() {
                    check(
                        conn.lock()
                            .await
                            .query(SQL, &[])
                            .await
                            .map_err(|e| e.to_string())?,
                    )?;
                }
            }
            Bench::BarePinned(clients) => {
                for client in clients.iter() {
                    check(client.lock().await.select1().await?)?;
                }
            }
            Bench::Raw(raw) => {
                for (client, stmt) in &raw.clients {
                    check(client.query(stmt, &[]).await.map_err(|e| e.to_string())?)?;
                }
            }
        }
        Ok(())
    }

    /// One checkout (where there is a pool) and one `SELECT 1`; the connection is returned
    /// before this ends. `task` is the caller's number (0 to T − 1), for the variants that
    /// give each task a connection of its own.
    pub(crate) async fn select1(&self, task: usize) -> Result<(), String> {
        let rows = match self {
            Bench::Momo(pool) => pool.execute(SQL, &[]).await.map_err(|e| e.to_string())?,
            Bench::Deadpool(pool) => {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                let stmt = client
                    .prepare_cached(SQL)
                    .await
                    .map_err(|e| e.to_string())?;
                client.query(&stmt, &[]).await.map_err(|e| e.to_string())?
            }
            Bench::Bb8(pool) => {
                let conn = pool.get().await.map_err(|e| format!("{e:?}"))?;
                conn.select1().await?
            }
            Bench::MomoGet(pool) => {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                conn.query(SQL, &[]).await.map_err(|e| e.to_string())?
            }
            Bench::MomoCore(pool) => {
                let conn = pool.get().await.map_err(|e| e.to_string())?;
                conn.select1().await?
            }
            Bench::MomoConn(conns) => {
                let mut conn = conns[task % conns.len()].lock().await;
                conn.query(SQL, &[]).await.map_err(|e| e.to_string())?
            }
            Bench::BarePinned(clients) => {
                clients[task % clients.len()].lock().await.select1().await?
            }
            Bench::Raw(raw) => {
                let i = raw.next.fetch_add(1, Ordering::Relaxed) % raw.clients.len();
                let (client, stmt) = &raw.clients[i];
                client.query(stmt, &[]).await.map_err(|e| e.to_string())?
            }
        };
        check(rows)
    }

    /// Checks (validation round trips) momopool has run so far, for its variants.
    pub(crate) fn momo_checks(&self) -> Option<u64> {
        match self {
            Bench::Momo(pool) | Bench::MomoGet(pool) => Some(pool.inner().statistics().checks),
            Bench::MomoCore(pool) => Some(pool.statistics().checks),
            _ => None,
        }
    }

    /// Closes the pool (the raw clients close when dropped).
    pub(crate) fn close(&self) {
        match self {
            Bench::Momo(pool) | Bench::MomoGet(pool) => pool.close(),
            Bench::MomoCore(pool) => pool.close(),
            _ => {}
        }
    }
}

/// `SELECT 1` must have returned one row holding 1.
fn check(rows: Vec<Row>) -> Result<(), String> {
    match rows.as_slice() {
        [row] if row.try_get::<_, i32>(0).ok() == Some(1) => Ok(()),
        _ => Err(format!("SELECT 1 returned {} rows", rows.len())),
    }
}
