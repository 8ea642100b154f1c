//! Error types: [`PoolError`] for pool operations, [`BuildError`] for invalid settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Why a pool operation such as [`Pool::get`](crate::Pool::get) failed.
///
/// Backend errors are shared (`Arc<E>`) because one connect error may reach several callers:
/// the one it is delivered to, later timeouts that carry it as their cause, and
/// [`PoolError::Unavailable`] answers. `Arc<E>` dereferences to `E`, so inspecting it reads as
/// usual.
///
/// # Examples
///
/// ```
/// use momopool::{Phase, PoolError};
///
/// fn describe(err: &PoolError<std::io::Error>) -> String {
///     match err {
///         PoolError::Timeout(t) if t.phase() == Phase::Create => {
///             format!("cannot connect: {err}")
///         }
///         PoolError::Closed => "shutting down".to_string(),
///         other => other.to_string(),
///     }
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum PoolError<E> {
    /// The backend failed: creating or checking a connection for this caller.
    Backend(Arc<E>),
    /// A hook failed while preparing a connection for this caller.
    Hook(Arc<HookError<E>>),
    /// The caller's deadline passed.
    Timeout(TimeoutError<E>),
    /// The pool is closed.
    Closed,
    /// Too many callers are already waiting: the pool's `max_waiting` limit.
    Busy {
        /// The configured limit.
        max_waiting: usize,
    },
    /// The pool is suspended and configured to fail fast.
    Suspended,
    /// The backend is known to be down and the pool is configured to fail fast; a background
    /// probe keeps trying to reconnect.
    Unavailable(Arc<PoolError<E>>),
    /// Manager or hook code panicked while serving this caller. The connection involved was
    /// dropped and the pool stays usable.
    Panicked {
        /// The phase the panic happened in.
        phase: Phase,
        /// Which piece of code panicked, such as `"Manager::create"`.
        what: &'static str,
        /// The panic message.
        message: Arc<str>,
    },
    /// The configuration given to an eager build was invalid.
    Config(BuildError),
}

impl<E> Clone for PoolError<E> {
    fn clone(&self) -> Self {
        match self {
            PoolError::Backend(e) => PoolError::Backend(Arc::clone(e)),
            PoolError::Hook(e) => PoolError::Hook(Arc::clone(e)),
            PoolError::Timeout(t) => PoolError::Timeout(t.clone()),
            PoolError::Closed => PoolError::Closed,
            PoolError::Busy { max_waiting } => PoolError::Busy {
                max_waiting: *max_waiting,
            },
            PoolError::Suspended => PoolError::Suspended,
            PoolError::Unavailable(e) => PoolError::Unavailable(Arc::clone(e)),
            PoolError::Panicked {
                phase,
                what,
                message,
            } => PoolError::Panicked {
                phase: *phase,
                what,
                message: Arc::clone(message),
            },
            PoolError::Config(e) => PoolError::Config(e.clone()),
        }
    }
}

impl<E: fmt::Display> fmt::Display for PoolError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Backend(e) => write!(f, "backend error: {e}"),
            PoolError::Hook(e) => write!(f, "hook failed: {e}"),
            PoolError::Timeout(t) => fmt::Display::fmt(t, f),
            PoolError::Closed => f.write_str("pool is closed"),
            PoolError::Busy { max_waiting } => write!(
                f,
                "too many callers waiting for a connection (max_waiting = {max_waiting})"
            ),
            PoolError::Suspended => f.write_str("pool is suspended"),
            PoolError::Unavailable(e) => write!(f, "backend unavailable: {e}"),
            PoolError::Panicked { what, message, .. } => write!(f, "{what} panicked: {message}"),
            PoolError::Config(e) => write!(f, "invalid pool configuration: {e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for PoolError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PoolError::Backend(e) => Some(&**e),
            PoolError::Hook(e) => Some(&**e),
            PoolError::Timeout(t) => Some(t),
            PoolError::Unavailable(e) => Some(&**e),
            PoolError::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl<E> PoolError<E> {
    /// Whether this is a [`PoolError::Timeout`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, PoolError, ThreadRuntime};
    /// # use std::time::Duration;
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// let pool = Pool::builder(Numbers).max_size(1).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let _held = pool.get().await.unwrap();
    ///     let err = pool.get_timeout(Duration::from_millis(20)).await.unwrap_err();
    ///     assert!(err.is_timeout());
    /// });
    /// assert!(!PoolError::<std::io::Error>::Closed.is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(self, PoolError::Timeout(_))
    }

    /// The backend error behind this one, if any: the error itself for
    /// [`PoolError::Backend`] and hook errors that wrap one, or the last backend error
    /// carried by a timeout or an [`PoolError::Unavailable`].
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::PoolError;
    /// use std::io::{Error, ErrorKind};
    /// use std::sync::Arc;
    ///
    /// let refused = Error::new(ErrorKind::ConnectionRefused, "connection refused");
    /// let err = PoolError::Backend(Arc::new(refused));
    /// assert_eq!(err.backend().map(Error::kind), Some(ErrorKind::ConnectionRefused));
    ///
    /// // Errors that did not come from the backend have none.
    /// assert!(PoolError::<Error>::Closed.backend().is_none());
    /// ```
    ///
    /// A timeout looks through to the connect error that kept the pool from connecting:
    ///
    /// ```
    /// # use momopool::{Manager, Pool, ThreadRuntime};
    /// # use std::time::Duration;
    /// # #[derive(Debug)] struct Down;
    /// # impl Manager for Down {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> {
    /// #         Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"))
    /// #     }
    /// # }
    /// // `Down` is a manager whose `create` always fails with "connection refused".
    /// let pool = Pool::builder(Down).min_size(0).runtime(ThreadRuntime).build().unwrap();
    /// let err = futures::executor::block_on(pool.get_timeout(Duration::from_millis(250)))
    ///     .unwrap_err();
    /// assert!(err.is_timeout());
    /// assert_eq!(err.backend().unwrap().kind(), std::io::ErrorKind::ConnectionRefused);
    /// ```
    pub fn backend(&self) -> Option<&E> {
        match self {
            PoolError::Backend(e) => Some(e),
            PoolError::Hook(h) => match &**h {
                HookError::Backend(e) => Some(e),
                HookError::Message(_) => None,
            },
            PoolError::Timeout(t) => t.last_error().and_then(PoolError::backend),
            PoolError::Unavailable(e) => e.backend(),
            _ => None,
        }
    }
}

/// The phases of getting a connection, as named by timeouts and panics.
///
/// # Examples
///
/// ```
/// use momopool::Phase;
///
/// assert_eq!(Phase::Create.to_string(), "create");
/// assert_ne!(Phase::Wait, Phase::Recycle);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Waiting for a connection to come back while the pool was at its maximum size.
    Wait,
    /// Opening a new connection (including the `post_create` hook).
    Create,
    /// Checking or recycling an idle connection before handing it out.
    Recycle,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Wait => "wait",
            Phase::Create => "create",
            Phase::Recycle => "recycle",
        })
    }
}

/// A deadline passed; says in which [`Phase`] and carries the last backend error, so a down
/// server never shows up as a bare "timed out".
///
/// # Examples
///
/// ```
/// use momopool::{Manager, Phase, Pool, PoolError, ThreadRuntime};
/// use std::time::Duration;
///
/// /// A backend that is down: every connect fails.
/// #[derive(Debug)]
/// struct Down;
///
/// impl Manager for Down {
///     type Connection = u64;
///     type Error = std::io::Error;
///     async fn create(&self) -> Result<u64, std::io::Error> {
///         Err(std::io::Error::other("connection refused"))
///     }
/// }
///
/// let pool = Pool::builder(Down).min_size(0).runtime(ThreadRuntime).build().unwrap();
/// let err = futures::executor::block_on(pool.get_timeout(Duration::from_millis(250)))
///     .unwrap_err();
/// let PoolError::Timeout(timeout) = &err else {
///     panic!("expected a timeout, got {err}");
/// };
/// assert_eq!(timeout.phase(), Phase::Create);
/// assert!(err.to_string().contains("connection refused"));
/// ```
#[derive(Debug)]
pub struct TimeoutError<E> {
    pub(crate) phase: Phase,
    pub(crate) after: Duration,
    pub(crate) last_error: Option<Arc<PoolError<E>>>,
}

impl<E> Clone for TimeoutError<E> {
    fn clone(&self) -> Self {
        TimeoutError {
            phase: self.phase,
            after: self.after,
            last_error: self.last_error.clone(),
        }
    }
}

impl<E> TimeoutError<E> {
    /// What the pool was doing for the caller when time ran out: waiting for a busy
    /// connection, opening a new one, or checking an idle one.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Phase, Pool, PoolError, ThreadRuntime};
    /// # use std::time::Duration;
    /// # #[derive(Debug)] struct Numbers;
    /// # impl Manager for Numbers {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
    /// # }
    /// let pool = Pool::builder(Numbers).max_size(1).runtime(ThreadRuntime).build().unwrap();
    /// futures::executor::block_on(async {
    ///     let _held = pool.get().await.unwrap();
    ///     // The only connection is busy and the pool may not open another one.
    ///     match pool.get_timeout(Duration::from_millis(20)).await {
    ///         Err(PoolError::Timeout(timeout)) => assert_eq!(timeout.phase(), Phase::Wait),
    ///         other => panic!("expected a timeout, got {other:?}"),
    ///     }
    /// });
    /// ```
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The time limit that passed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, PoolError, ThreadRuntime};
    /// # use std::time::Duration;
    /// # #[derive(Debug)] struct Down;
    /// # impl Manager for Down {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> {
    /// #         Err(std::io::Error::other("connection refused"))
    /// #     }
    /// # }
    /// # let pool = Pool::builder(Down).min_size(0).runtime(ThreadRuntime).build().unwrap();
    /// // `Down` is a manager whose `create` always fails, so no connection ever comes.
    /// let limit = Duration::from_millis(50);
    /// match futures::executor::block_on(pool.get_timeout(limit)) {
    ///     Err(PoolError::Timeout(timeout)) => assert_eq!(timeout.after(), limit),
    ///     other => panic!("expected a timeout, got {other:?}"),
    /// }
    /// ```
    pub fn after(&self) -> Duration {
        self.after
    }

    /// The most recent error on the way, such as the connect error that kept the pool from
    /// opening a connection.
    ///
    /// # Examples
    ///
    /// ```
    /// # use momopool::{Manager, Pool, PoolError, ThreadRuntime};
    /// # use std::time::Duration;
    /// # #[derive(Debug)] struct Down;
    /// # impl Manager for Down {
    /// #     type Connection = u64;
    /// #     type Error = std::io::Error;
    /// #     async fn create(&self) -> Result<u64, std::io::Error> {
    /// #         Err(std::io::Error::other("connection refused"))
    /// #     }
    /// # }
    /// # let pool = Pool::builder(Down).min_size(0).runtime(ThreadRuntime).build().unwrap();
    /// // `Down` is a manager whose `create` always fails with "connection refused".
    /// match futures::executor::block_on(pool.get_timeout(Duration::from_millis(250))) {
    ///     Err(PoolError::Timeout(timeout)) => {
    ///         let last = timeout.last_error().expect("the connect error");
    ///         assert!(matches!(last, PoolError::Backend(_)));
    ///         assert_eq!(last.to_string(), "backend error: connection refused");
    ///     }
    ///     other => panic!("expected a timeout, got {other:?}"),
    /// }
    /// ```
    pub fn last_error(&self) -> Option<&PoolError<E>> {
        self.last_error.as_deref()
    }
}

impl<E: fmt::Display> fmt::Display for TimeoutError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let doing = match self.phase {
            Phase::Wait => "waiting for a connection to be returned",
            Phase::Create => "waiting for a new connection",
            Phase::Recycle => "checking a connection",
        };
        write!(f, "timed out after {:?} {doing}", self.after)?;
        if let Some(last) = &self.last_error {
            write!(f, "; last error: {last}")?;
        }
        Ok(())
    }
}

impl<E: std::error::Error + 'static> std::error::Error for TimeoutError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.last_error
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// An error from a pool hook (`post_create`, `pre_recycle`, `post_recycle`).
///
/// # Examples
///
/// ```
/// use momopool::HookError;
///
/// let err: HookError<std::io::Error> = HookError::Message("search_path is not set".into());
/// assert_eq!(err.to_string(), "search_path is not set");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError<E> {
    /// A backend error raised by the hook.
    #[error("{0}")]
    Backend(#[source] E),
    /// A message from the hook itself.
    #[error("{0}")]
    Message(String),
}

/// An invalid pool setting, naming the field.
///
/// # Examples
///
/// ```
/// use momopool::{BuildError, PoolConfig};
///
/// let config = PoolConfig { min_size: 5, max_size: 2, ..PoolConfig::default() };
/// let err = config.validate().unwrap_err();
/// assert_eq!(err.field(), "min_size");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{field}`: {reason}")]
pub struct BuildError {
    pub(crate) field: &'static str,
    pub(crate) reason: String,
}

impl BuildError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        BuildError {
            field,
            reason: reason.into(),
        }
    }

    /// The setting that is wrong.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::PoolConfig;
    ///
    /// let config = PoolConfig { max_connecting: 0, ..PoolConfig::default() };
    /// assert_eq!(config.validate().unwrap_err().field(), "max_connecting");
    /// ```
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why it is wrong.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::PoolConfig;
    ///
    /// let config = PoolConfig { max_size: 0, ..PoolConfig::default() };
    /// let err = config.validate().unwrap_err();
    /// assert_eq!(err.reason(), "must be at least 1");
    /// assert_eq!(err.to_string(), "invalid setting `max_size`: must be at least 1");
    /// ```
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Turns a caught panic payload into its message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> Arc<str> {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        Arc::from(*s)
    } else if let Some(s) = payload.downcast_ref::<String>() {
        Arc::from(s.as_str())
    } else {
        Arc::from("panic with a non-string payload")
    }
}
