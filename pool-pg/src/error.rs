//! [`Error`]: everything that can go wrong talking to PostgreSQL through the pool.

use momopool::{ErrorClass, PoolError};
use std::fmt;
use std::time::Duration;
use tokio_postgres::error::{DbError, Severity, SqlState};

/// An error from `momopool-pg`.
///
/// SQL errors keep their SQLSTATE ([`Error::code`]); connection losses say whether the
/// statement may have run ([`Error::is_outcome_unknown`]); pool errors keep the phase and the
/// last connect error. A password never appears in any of them.
///
/// # Examples
///
/// ```
/// use momopool_pg::Error;
///
/// fn explain(err: &Error) -> &'static str {
///     if err.is_outcome_unknown() {
///         "the statement may or may not have run"
///     } else if err.code().is_some() {
///         "the server rejected the statement"
///     } else {
///         "something else"
///     }
/// }
/// # assert_eq!(explain(&Error::Config("x".into())), "something else");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration (a DSN, an environment variable, an option) is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// No connection could be opened to any configured host.
    #[error("could not connect to {target}: {source}")]
    Connect {
        /// The host (and port or socket) tried last.
        target: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// A connect took longer than its limit (TCP, TLS, startup and authentication included):
    /// inside [`Error::Connect`], one host did not answer within its per-host connect timeout
    /// (or its share of the pool's create timeout); on its own, a standalone connect's
    /// overall limit passed, or the pool's create timeout for the connection of
    /// [`PgPool::listen`](crate::PgPool::listen).
    #[error("connect timed out after {after:?}")]
    ConnectTimeout {
        /// The limit that passed.
        after: Duration,
    },
    /// Opening a socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// PostgreSQL or the protocol reported an error; SQL errors carry their SQLSTATE.
    #[error("{}", DisplayPg(.0))]
    Postgres(#[source] tokio_postgres::Error),
    /// The connection was lost after the statement was sent: it may or may not have run. It
    /// is never replayed automatically (unless the call was marked idempotent).
    #[error("outcome unknown, the connection was lost after the statement was sent: {0}")]
    OutcomeUnknown(#[source] Box<Error>),
    /// The statement's deadline passed. A cancel request was sent to the server and the
    /// connection was discarded. The statement had been sent, so its outcome is unknown
    /// ([`Error::is_outcome_unknown`] says so).
    #[error("statement timed out after {after:?} (cancel request sent)")]
    StatementTimeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// A transaction's deadline passed before its `COMMIT` was sent. A cancel request was
    /// sent to the server and the connection was discarded, which rolls the transaction
    /// back: nothing was committed, so, unlike [`Error::StatementTimeout`], the outcome is
    /// known.
    #[error(
        "transaction timed out after {after:?} before COMMIT, rolled back (cancel request sent)"
    )]
    TransactionTimeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// A statement's cached prepared statement went stale inside a transaction: its plan
    /// (SQLSTATE 0A000 after a schema change) or the statement itself (26000, dropped by a
    /// `DISCARD ALL` or `DEALLOCATE` the connection did not see). The error aborted the
    /// transaction; outside a transaction the statement is prepared again and retried instead.
    #[error("cached statement went stale inside a transaction: {0}")]
    PlanInvalidated(#[source] tokio_postgres::Error),
    /// Text that cannot be turned into SQL (a NUL byte, a missing parameter, an empty name).
    #[error("invalid SQL input: {0}")]
    InvalidInput(String),
    /// The server does not accept writes but the configuration asked for
    /// `target_session_attrs=read-write`.
    #[error("server {target} is read-only but read-write was required")]
    ReadOnly {
        /// The host that was read-only.
        target: String,
    },
    /// The pool could not provide a connection (timeout, closed, busy, ...).
    #[error("{0}")]
    Pool(#[source] PoolError<Error>),
}

struct DisplayPg<'a>(&'a tokio_postgres::Error);

impl fmt::Display for DisplayPg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_db_error() {
            Some(db) => {
                write!(
                    f,
                    "database error {} [{}]: {}",
                    db.severity(),
                    db.code().code(),
                    db.message()
                )?;
                if let Some(detail) = db.detail() {
                    write!(f, " (detail: {detail})")?;
                }
                Ok(())
            }
            None => fmt::Display::fmt(self.0, f),
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::Postgres(e)
    }
}

impl From<PoolError<Error>> for Error {
    fn from(e: PoolError<Error>) -> Self {
        Error::Pool(e)
    }
}

impl Error {
    /// The SQLSTATE of the server error behind this one, if any (looking through pool and
    /// connect errors).
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool_pg::Error;
    /// assert!(Error::Config("bad".into()).code().is_none());
    /// ```
    pub fn code(&self) -> Option<&SqlState> {
        self.db_error().map(DbError::code)
    }

    /// The server's error report behind this one, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool_pg::Error;
    /// assert!(Error::Config("bad".into()).db_error().is_none());
    /// ```
    pub fn db_error(&self) -> Option<&DbError> {
        match self {
            Error::Postgres(e) | Error::PlanInvalidated(e) => e.as_db_error(),
            Error::Connect { source, .. } | Error::OutcomeUnknown(source) => source.db_error(),
            Error::Pool(p) => p.backend().and_then(Error::db_error),
            _ => None,
        }
    }

    /// Whether the statement may or may not have run: an [`Error::OutcomeUnknown`], or an
    /// [`Error::StatementTimeout`] (the statement had been sent; the cancel request may have
    /// come too late, a `COMMIT` may have gone through).
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool_pg::Error;
    /// assert!(!Error::Config("bad".into()).is_outcome_unknown());
    /// ```
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(
            self,
            Error::OutcomeUnknown(_) | Error::StatementTimeout { .. }
        )
    }

    /// Whether this error means the connection is gone (the server terminated it, shut
    /// down, restarted, or the network dropped it), as opposed to an error in the statement.
    ///
    /// "Gone" means SQLSTATE 57P01, 57P02, 57P03 or class 08, a FATAL or PANIC report, an
    /// I/O error, or a closed connection; inside [`Error::OutcomeUnknown`] or
    /// [`Error::Connect`], the error they carry.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool_pg::Error;
    /// assert!(!Error::Config("bad".into()).is_connection_lost());
    /// ```
    pub fn is_connection_lost(&self) -> bool {
        match self {
            Error::Postgres(e) => pg_connection_lost(e),
            Error::Io(_) => true,
            Error::OutcomeUnknown(source) | Error::Connect { source, .. } => {
                source.is_connection_lost()
            }
            _ => false,
        }
    }

    /// Whether this is a timeout: a statement or transaction deadline (also inside
    /// [`Error::OutcomeUnknown`]), a connect timeout (also the last host's, inside
    /// [`Error::Connect`]) or the pool's.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool_pg::Error;
    /// let err = Error::StatementTimeout { after: std::time::Duration::from_secs(1) };
    /// assert!(err.is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::StatementTimeout { .. }
            | Error::TransactionTimeout { .. }
            | Error::ConnectTimeout { .. } => true,
            Error::Connect { source, .. } | Error::OutcomeUnknown(source) => source.is_timeout(),
            Error::Pool(p) => p.is_timeout(),
            _ => false,
        }
    }

    /// How the pool should react to this error when it comes from a connect or a check.
    pub(crate) fn class(&self) -> ErrorClass {
        if let Some(code) = self.code() {
            let c = code.code();
            // Wrong password, not allowed by pg_hba, unknown database: fixing them takes a
            // configuration change, not a retry.
            if c.starts_with("28") || c == "3D000" {
                return ErrorClass::Permanent;
            }
            // Too many connections and other resource shortages arrive as FATAL, but the
            // server is there: worth a later retry, no reason to distrust other connections.
            if c.starts_with("53") {
                return ErrorClass::Transient;
            }
        }
        match self {
            Error::Config(_) | Error::InvalidInput(_) => ErrorClass::Permanent,
            _ if self.is_connection_lost() => ErrorClass::ServerGone,
            _ => ErrorClass::Transient,
        }
    }
}

/// `error` marked as having an unknown outcome, unless it is marked so already.
pub(crate) fn outcome_unknown(error: Error) -> Error {
    match error {
        Error::OutcomeUnknown(_) => error,
        other => Error::OutcomeUnknown(Box::new(other)),
    }
}

/// Whether `e` is the server's goodbye: an error report of FATAL or PANIC severity, after
/// which the server ends the session (a shutdown, a terminated backend, an idle timeout).
pub(crate) fn is_goodbye(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        matches!(
            db.parsed_severity(),
            Some(Severity::Fatal) | Some(Severity::Panic)
        )
    })
}

/// Whether a tokio-postgres error means the connection is gone.
pub(crate) fn pg_connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        return matches!(code, "57P01" | "57P02" | "57P03")
            || code.starts_with("08")
            || matches!(
                db.parsed_severity(),
                Some(Severity::Fatal) | Some(Severity::Panic)
            );
    }
    // Not a server report: an I/O error on the socket, or a protocol error. Either way the
    // connection cannot be trusted any more.
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}
