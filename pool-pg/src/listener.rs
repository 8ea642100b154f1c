//! [`Listener`]: `LISTEN` on a dedicated connection, its notifications as a [`Stream`], and
//! the connection's end reported rather than hidden.
//!
//! Its state, on a napkin: the notifications the connection's driver task forwards, and a
//! keepalive that either sleeps until the listener has been quiet for a while or waits for
//! the answer to a ping. A ping catches what the driver cannot: a connection gone silently
//! dead (the network cut, the server's host gone), which would otherwise look like a quiet
//! channel for ever.

use crate::connection::Connection;
use crate::error::Error;
use futures::Stream;
use futures::channel::mpsc::UnboundedReceiver;
use futures::future::BoxFuture;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio_postgres::Notification;

/// How long a listener may stay quiet before it pings the server, unless told otherwise
/// ([`Listener::keepalive`]).
const QUIET_BEFORE_PING: Duration = Duration::from_secs(30);

/// Notifications from `LISTEN`, on a dedicated connection; see
/// [`PgPool::listen`](crate::PgPool::listen).
///
/// The stream yields `Ok` for each notification. When the connection is lost, it yields
/// the error once (one for which [`Error::is_connection_lost`] is true), then ends:
/// notifications sent meanwhile are lost to it, so a caller that must not miss any
/// listens again and catches up from the data. A connection gone silently dead is found by
/// the keepalive ([`Listener::keepalive`]) while the stream is polled.
///
/// # Examples
///
/// ```no_run
/// # async fn f(pool: &momopool_pg::PgPool) -> Result<(), momopool_pg::Error> {
/// use futures::TryStreamExt;
///
/// let mut listener = pool.listen("jobs").await?;
/// listener.listen("alerts").await?;
/// while let Some(note) = listener.try_next().await? {
///     println!("{}: {}", note.channel(), note.payload());
/// }
/// # Ok(()) }
/// ```
pub struct Listener {
    conn: Arc<Connection>,
    notifications: UnboundedReceiver<Result<Notification, Error>>,
    keepalive: Keepalive,
    /// The stream has yielded its error or its end.
    ended: bool,
}

/// Pings the server when the listener has heard nothing for `quiet`.
struct Keepalive {
    /// `None`: never ping.
    quiet: Option<Duration>,
    /// How long a ping may wait for its answer (`None`: as long as `quiet`).
    answer_within: Option<Duration>,
    /// When the server was last heard from: a notification or a ping's answer.
    heard: Instant,
    /// In a mutex only so that the listener is `Sync`, which its futures are not. It is only
    /// ever reached through `&mut`, with `get_mut`, which takes no lock.
    state: Mutex<KeepaliveState>,
}

/// The shortest quiet time [`Listener::keepalive`] accepts.
const MIN_QUIET: Duration = Duration::from_millis(10);

enum KeepaliveState {
    /// Not yet started, or turned off.
    Off,
    /// Sleeping until the listener may have been quiet long enough.
    Sleeping(BoxFuture<'static, ()>),
    /// A ping waiting for its answer.
    Pinging(BoxFuture<'static, Result<(), Error>>),
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("conn", &self.conn)
            .field("keepalive", &self.keepalive.quiet)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// A listener on `conn`, whose driver forwards to `notifications`; a ping may wait
    /// `answer_within` for its answer.
    pub(crate) fn new(
        conn: Connection,
        notifications: UnboundedReceiver<Result<Notification, Error>>,
        answer_within: Option<Duration>,
    ) -> Self {
        Listener {
            conn: Arc::new(conn),
            notifications,
            keepalive: Keepalive {
                quiet: Some(QUIET_BEFORE_PING),
                answer_within,
                heard: Instant::now(),
                state: Mutex::new(KeepaliveState::Off),
            },
            ended: false,
        }
    }

    /// Also listens on `channel`.
    ///
    /// # Errors
    ///
    /// The `LISTEN` error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe; the channel may or may not be listened to.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(listener: &mut momopool_pg::Listener) -> Result<(), momopool_pg::Error> {
    /// listener.listen("other_channel").await?;
    /// # Ok(()) }
    /// ```
    pub async fn listen(&mut self, channel: &str) -> Result<(), Error> {
        self.conn.listen_command("LISTEN", channel).await
    }

    /// Stops listening on `channel`.
    ///
    /// # Errors
    ///
    /// The `UNLISTEN` error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe; the channel may or may not still be listened to.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(listener: &mut momopool_pg::Listener) -> Result<(), momopool_pg::Error> {
    /// listener.unlisten("jobs").await?;
    /// # Ok(()) }
    /// ```
    pub async fn unlisten(&mut self, channel: &str) -> Result<(), Error> {
        self.conn.listen_command("UNLISTEN", channel).await
    }

    /// Pings the server whenever the listener has heard nothing from it for `quiet` (30 s
    /// unless set; at least 10 ms), while the stream is polled; `None` turns the pings off.
    /// A ping unanswered within the pool's recycle timeout (or within `quiet`, if the pool
    /// has none) ends the stream with an error: the connection went silently dead, and the
    /// notifications with it. A ping already on its way is waited for.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(listener: &mut momopool_pg::Listener) {
    /// listener.keepalive(Some(std::time::Duration::from_secs(10)));
    /// # }
    /// ```
    pub fn keepalive(&mut self, quiet: Option<Duration>) {
        self.keepalive.quiet = quiet.map(|quiet| quiet.max(MIN_QUIET));
        let state = self
            .keepalive
            .state
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        // A ping in flight is left to finish: dropped, it would mark the connection broken.
        if matches!(state, KeepaliveState::Sleeping(_)) {
            *state = KeepaliveState::Off;
        }
    }

    /// The backend serving this listener.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(listener: &momopool_pg::Listener) {
    /// println!("listening on backend {}", listener.backend_pid());
    /// # }
    /// ```
    pub fn backend_pid(&self) -> i32 {
        self.conn.backend_pid()
    }

    /// Drives the keepalive: `Pending` while all is well, the ping's error once it failed.
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        let Keepalive {
            quiet,
            answer_within,
            heard,
            state,
        } = &mut self.keepalive;
        let state = state.get_mut().unwrap_or_else(PoisonError::into_inner);
        loop {
            match state {
                KeepaliveState::Off => {
                    let Some(quiet) = *quiet else {
                        return Poll::Pending;
                    };
                    *state = KeepaliveState::Sleeping(self.conn.runtime().sleep(quiet));
                }
                KeepaliveState::Sleeping(sleep) => {
                    let Some(quiet) = *quiet else {
                        *state = KeepaliveState::Off;
                        return Poll::Pending;
                    };
                    ready!(sleep.as_mut().poll(cx));
                    let silent = heard.elapsed();
                    *state = if silent < quiet {
                        KeepaliveState::Sleeping(self.conn.runtime().sleep(quiet - silent))
                    } else {
                        let within = answer_within.unwrap_or(quiet);
                        KeepaliveState::Pinging(ping(&self.conn, within))
                    };
                }
                KeepaliveState::Pinging(answer) => {
                    let answered = ready!(answer.as_mut().poll(cx));
                    *state = KeepaliveState::Off;
                    match answered {
                        Ok(()) => *heard = Instant::now(),
                        Err(err) => return Poll::Ready(err),
                    }
                }
            }
        }
    }
}

/// A ping of `conn`'s server, as a future of its own.
fn ping(conn: &Arc<Connection>, within: Duration) -> BoxFuture<'static, Result<(), Error>> {
    let conn = Arc::clone(conn);
    Box::pin(async move { conn.ping(Some(within)).await })
}

/// A listener can be shared and sent, and so can its `listen` futures: it is used from
/// spawned tasks.
const _: () = {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    #[allow(dead_code)]
    fn check(listener: &mut Listener) {
        send_sync(&*listener);
        send(&listener.listen("channel"));
    }
};

impl Stream for Listener {
    type Item = Result<Notification, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.notifications).poll_next(cx) {
            Poll::Ready(Some(Ok(note))) => {
                this.keepalive.heard = Instant::now();
                return Poll::Ready(Some(Ok(note)));
            }
            Poll::Ready(Some(Err(err))) => {
                this.ended = true;
                return Poll::Ready(Some(Err(err)));
            }
            Poll::Ready(None) => {
                // The driver reports how the connection ended before it lets go; this is
                // only reached if that report was already taken.
                this.ended = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        let err = ready!(this.poll_keepalive(cx));
        this.conn.mark_broken();
        this.ended = true;
        Poll::Ready(Some(Err(err)))
    }
}
