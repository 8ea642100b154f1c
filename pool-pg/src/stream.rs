//! Results and `COPY` data streamed through a [`Connection`] without giving up its reuse:
//! [`RowStream`], [`CopyOutStream`] and [`CopyInSink`] wrap tokio-postgres's own and borrow
//! the connection while their request runs. Dropped before its end, the rest of the answer
//! would still be on its way to whoever used the connection next: the connection is then
//! marked broken, and the pool closes it instead of handing it on.

use crate::connection::Connection;
use crate::error::Error;
use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio_postgres::Row;

/// Watches one request: marks the connection broken if dropped before the request ended.
struct Watch<'a> {
    conn: &'a Connection,
    /// Nothing of the request is left to arrive but its final `ReadyForQuery`.
    ended: bool,
    /// The stream has yielded its end or an error: it is not polled again.
    fused: bool,
}

impl<'a> Watch<'a> {
    fn new(conn: &'a Connection) -> Self {
        Watch {
            conn,
            ended: false,
            fused: false,
        }
    }

    /// Polls the watched stream, passing its items on and noting the end of the request; once
    /// it has yielded its end or an error, it is not polled again.
    fn poll_next<S, T>(
        &mut self,
        inner: Pin<&mut S>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<T, Error>>>
    where
        S: Stream<Item = Result<T, tokio_postgres::Error>>,
    {
        if self.fused {
            return Poll::Ready(None);
        }
        let item = ready!(inner.poll_next(cx));
        Poll::Ready(match item {
            Some(Ok(value)) => Some(Ok(value)),
            Some(Err(err)) => {
                self.fused = true;
                Some(Err(self.error(err, true)))
            }
            None => {
                self.fused = true;
                self.ended = true;
                None
            }
        })
    }

    /// The `Debug` output of the wrapper called `name`.
    fn debug(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("conn", self.conn)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }

    /// Records what an error says about the connection, and turns it into the caller's
    /// error. The server's own error report ends the request; anything else leaves it in an
    /// unknown state.
    ///
    /// `may_have_run`: the statement may have done its work already, so a lost connection
    /// leaves its outcome unknown ([`Error::OutcomeUnknown`]), as for any statement sent.
    /// Not so while a `COPY ... FROM STDIN` still sends its data: the server keeps nothing
    /// of a `COPY` whose end never came.
    fn error(&mut self, err: tokio_postgres::Error, may_have_run: bool) -> Error {
        self.conn.note(&err);
        if err.as_db_error().is_some() {
            self.ended = true;
        }
        let error = Error::Postgres(err);
        if may_have_run && error.is_connection_lost() {
            Error::OutcomeUnknown(Box::new(error))
        } else {
            error
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.conn.mark_broken();
        }
    }
}

/// The rows of a statement as they arrive; see [`Connection::query_stream`].
///
/// # Examples
///
/// ```no_run
/// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
/// use futures::TryStreamExt;
///
/// let mut rows = conn.query_stream("SELECT generate_series(1, $1)", &[&3i32]).await?;
/// while let Some(row) = rows.try_next().await? {
///     println!("{}", row.get::<_, i32>(0));
/// }
/// # Ok(()) }
/// ```
pub struct RowStream<'a> {
    inner: Pin<Box<tokio_postgres::RowStream>>,
    watch: Watch<'a>,
}

impl<'a> RowStream<'a> {
    pub(crate) fn new(inner: tokio_postgres::RowStream, conn: &'a Connection) -> Self {
        RowStream {
            inner: Box::pin(inner),
            watch: Watch::new(conn),
        }
    }
}

impl std::fmt::Debug for RowStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.watch.debug("RowStream", f)
    }
}

impl Stream for RowStream<'_> {
    type Item = Result<Row, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.watch.poll_next(this.inner.as_mut(), cx)
    }
}

/// The data of a `COPY ... TO STDOUT`, chunk by chunk; see [`Connection::copy_out`].
///
/// # Examples
///
/// ```no_run
/// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
/// use futures::TryStreamExt;
///
/// let mut data = conn.copy_out("COPY jobs TO STDOUT (FORMAT csv)").await?;
/// while let Some(chunk) = data.try_next().await? {
///     print!("{}", String::from_utf8_lossy(&chunk));
/// }
/// # Ok(()) }
/// ```
pub struct CopyOutStream<'a> {
    inner: Pin<Box<tokio_postgres::CopyOutStream>>,
    watch: Watch<'a>,
}

impl<'a> CopyOutStream<'a> {
    pub(crate) fn new(inner: tokio_postgres::CopyOutStream, conn: &'a Connection) -> Self {
        CopyOutStream {
            inner: Box::pin(inner),
            watch: Watch::new(conn),
        }
    }
}

impl std::fmt::Debug for CopyOutStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.watch.debug("CopyOutStream", f)
    }
}

impl Stream for CopyOutStream<'_> {
    type Item = Result<Bytes, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.watch.poll_next(this.inner.as_mut(), cx)
    }
}

/// Where the data of a `COPY ... FROM STDIN` goes; see [`Connection::copy_in`]. Send it
/// with the [`Sink`] methods, then [`finish`](CopyInSink::finish) it (or
/// [`close`](futures::SinkExt::close) it): dropped before that, the `COPY` is aborted and
/// the connection marked broken.
///
/// # Examples
///
/// ```no_run
/// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
/// use futures::SinkExt;
///
/// let mut sink = conn.copy_in("COPY jobs (name) FROM STDIN").await?;
/// sink.send(bytes::Bytes::from_static(b"resize images\nsend mail\n")).await?;
/// let rows = sink.finish().await?;
/// assert_eq!(rows, 2);
/// # Ok(()) }
/// ```
pub struct CopyInSink<'a, T> {
    inner: Pin<Box<tokio_postgres::CopyInSink<T>>>,
    watch: Watch<'a>,
    /// The end of the `COPY` was sent: the server may have written the data.
    ending: bool,
}

impl<'a, T> CopyInSink<'a, T>
where
    T: Buf + Send + 'static,
{
    pub(crate) fn new(inner: tokio_postgres::CopyInSink<T>, conn: &'a Connection) -> Self {
        CopyInSink {
            inner: Box::pin(inner),
            watch: Watch::new(conn),
            ending: false,
        }
    }

    /// Ends the `COPY` and returns how many rows it wrote.
    ///
    /// # Errors
    ///
    /// The server's error if the data was refused (nothing is written then), or the
    /// connection's loss as [`Error::OutcomeUnknown`]: the `COPY` may have been written.
    /// (Lost while the data is being sent, the connection fails the [`Sink`] methods with a
    /// plain lost-connection error instead: a `COPY` without its end writes nothing.)
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it is done aborts the `COPY` and marks the connection
    /// broken.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(conn: &mut momopool_pg::Connection) -> Result<(), momopool_pg::Error> {
    /// use futures::SinkExt;
    ///
    /// let mut sink = conn.copy_in("COPY jobs (name) FROM STDIN").await?;
    /// sink.send(&b"resize images\n"[..]).await?;
    /// assert_eq!(sink.finish().await?, 1);
    /// # Ok(()) }
    /// ```
    pub async fn finish(mut self) -> Result<u64, Error> {
        futures::future::poll_fn(|cx| self.poll_end(cx)).await
    }

    /// Sends what data is left, then the end of the `COPY`, and waits for the server's answer.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<Result<u64, Error>> {
        if !self.ending {
            // Until the end is on its way, a loss leaves nothing written. Once the data is
            // flushed and the connection has room, `poll_finish` sends the end in this poll.
            let room = match ready!(self.inner.as_mut().poll_flush(cx)) {
                Ok(()) => ready!(self.inner.as_mut().poll_ready(cx)),
                Err(err) => Err(err),
            };
            if let Err(err) = room {
                return Poll::Ready(Err(self.watch.error(err, false)));
            }
            self.ending = true;
        }
        Poll::Ready(match ready!(self.inner.as_mut().poll_finish(cx)) {
            Ok(rows) => {
                self.watch.ended = true;
                Ok(rows)
            }
            Err(err) => Err(self.watch.error(err, true)),
        })
    }
}

impl<T> std::fmt::Debug for CopyInSink<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.watch.debug("CopyInSink", f)
    }
}

impl<T> Sink<T> for CopyInSink<'_, T>
where
    T: Buf + Send + 'static,
{
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        let ready = ready!(this.inner.as_mut().poll_ready(cx));
        Poll::Ready(ready.map_err(|err| this.watch.error(err, this.ending)))
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), Error> {
        let this = self.get_mut();
        this.inner
            .as_mut()
            .start_send(item)
            .map_err(|err| this.watch.error(err, this.ending))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        let flushed = ready!(this.inner.as_mut().poll_flush(cx));
        Poll::Ready(flushed.map_err(|err| this.watch.error(err, this.ending)))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_end(cx).map_ok(|_| ())
    }
}
