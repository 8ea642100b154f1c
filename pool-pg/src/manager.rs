//! [`PgManager`]: the momopool [`Manager`] for PostgreSQL.

use crate::config::PgConfig;
use crate::connection::Connection;
use crate::error::Error;
use crate::runtime::PgRuntime;
use momopool::{ErrorClass, Manager, Metrics};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Creates, checks and inspects PostgreSQL connections for a [`momopool::Pool`].
///
/// Most users build a [`PgPool`](crate::PgPool), which wraps one. Use it directly to put
/// PostgreSQL connections in a plain `momopool::Pool` with settings of your own.
///
/// - **create** tries each configured host in order, honours
///   `target_session_attrs=read-write`, and runs the session statements. Each host gets the
///   configured [connect timeout](crate::PgConfig::connect_timeout); without one, each host
///   but the last gets an equal share of what is left of the pool's create timeout (learnt
///   through [`Manager::configured`]), so a host that never answers leaves time for the next;
/// - **check** rolls back a connection returned in an unknown state, then applies the
///   [`Recycling`](crate::Recycling) method;
/// - **is_broken** is true for a closed connection, one a statement found dead or one
///   abandoned in the middle of a request, and one whose raw client was handed out
///   ([`Connection::client`](crate::Connection::client)): it is closed, not reused;
/// - **needs_check** is true for a connection in an unknown session state, or whose socket
///   holds input nobody asked for (perhaps the FATAL of a server shutdown, still unread),
///   found by a non-blocking peek: then the check runs before reuse. The peek is made once
///   a connection has had no answer for a millisecond (always, with unnamed statements). A
///   goodbye message that arrives sooner, or unseen, comes as the next prepared statement's
///   first answer, in place of the acknowledgement of its bind: the statement did not run,
///   and is retried. A silent close (a killed backend) in that millisecond, or a goodbye
///   that reaches a `batch_execute` after its request left, leaves the outcome unknown, as
///   it does for a statement already in flight. A connection handed
///   straight from the caller who returned it to a waiting one never sat idle, so it is not
///   peeked at (**needs_check_on_handover**); its session state still counts;
/// - **classify** makes authentication and unknown-database errors permanent (SQLSTATE class
///   28, 3D000) and connection losses "server gone".
///
/// # Examples
///
/// ```no_run
/// # #[cfg(feature = "rt-smol")] {
/// use momopool::Pool;
/// use momopool_pg::{PgConfig, PgManager};
/// use std::sync::Arc;
///
/// let config = PgConfig::from_dsn("host=127.0.0.1 user=app").unwrap();
/// let runtime = Arc::new(momopool_smol::Smol);
/// let pool = Pool::builder(PgManager::new(config, runtime.clone()))
///     .runtime(momopool_smol::Smol)
///     .max_size(8)
///     .build()
///     .unwrap();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgManager {
    config: Arc<PgConfig>,
    runtime: Arc<dyn PgRuntime>,
    create_timeout: Option<Duration>,
}

impl PgManager {
    /// A manager for this configuration, opening sockets and driving connections on
    /// `runtime`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use momopool_pg::{PgConfig, PgManager, Tokio};
    /// use std::sync::Arc;
    ///
    /// let config = PgConfig::from_dsn("host=127.0.0.1 user=app").unwrap();
    /// let manager = PgManager::new(config, Arc::new(Tokio::current()));
    /// assert_eq!(manager.config().user(), Some("app"));
    /// # }
    /// ```
    pub fn new(config: PgConfig, runtime: Arc<dyn PgRuntime>) -> Self {
        PgManager {
            config: Arc::new(config),
            runtime,
            create_timeout: None,
        }
    }

    /// The configuration connections are made with.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "rt-smol")] {
    /// # use momopool_pg::{PgConfig, PgManager};
    /// let manager = PgManager::new(PgConfig::default(), std::sync::Arc::new(momopool_smol::Smol));
    /// assert!(manager.config().user().is_some());
    /// # }
    /// ```
    pub fn config(&self) -> &PgConfig {
        &self.config
    }

    /// The runtime connections are driven on.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "rt-smol")] {
    /// # use momopool_pg::{PgConfig, PgManager};
    /// let manager = PgManager::new(PgConfig::default(), std::sync::Arc::new(momopool_smol::Smol));
    /// let _runtime = manager.runtime();
    /// # }
    /// ```
    pub fn runtime(&self) -> &Arc<dyn PgRuntime> {
        &self.runtime
    }
}

impl Manager for PgManager {
    type Connection = Connection;
    type Error = Error;

    async fn create(&self) -> Result<Connection, Error> {
        let deadline = self
            .create_timeout
            .and_then(|limit| Instant::now().checked_add(limit));
        Connection::open(
            Arc::clone(&self.config),
            Arc::clone(&self.runtime),
            deadline,
        )
        .await
    }

    fn configured(&mut self, config: &momopool::PoolConfig) {
        self.create_timeout = config.create_timeout;
    }

    async fn check(&self, conn: &mut Connection, _metrics: &Metrics) -> Result<(), Error> {
        conn.recycle().await
    }

    fn is_broken(&self, conn: &mut Connection) -> bool {
        if conn.must_discard() {
            return true;
        }
        // Asked as the connection goes back (and again at checkout): a transaction left open
        // ends now, not when the connection next serves someone.
        conn.end_transaction_now();
        false
    }

    fn needs_check(&self, conn: &mut Connection) -> bool {
        // Between statements nothing is outstanding, so input waiting on the socket is either
        // the tail of a failed statement (its ReadyForQuery) or the server's goodbye (the
        // FATAL of a shutdown): a check tells which, for one round trip. A connection answered
        // a moment ago is not peeked at (see `PEEK_AFTER_IDLE`): a goodbye that arrived
        // since then is still caught as a prepared statement's first answer.
        conn.is_dirty() || conn.input_pending()
    }

    fn needs_check_on_handover(&self, conn: &mut Connection) -> bool {
        // Straight from the caller who just had an answer on it to one who was waiting: no
        // peek, since nothing had time to arrive unseen that would not also slip past a peek
        // made now. Its session state still counts.
        conn.is_dirty()
    }

    fn is_server_gone(&self, conn: &mut Connection) -> bool {
        conn.server_gone()
    }

    fn classify(&self, error: &Error) -> ErrorClass {
        error.class()
    }
}
