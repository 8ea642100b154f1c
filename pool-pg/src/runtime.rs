//! [`PgRuntime`]: a momopool [`Runtime`] that can also open the sockets PostgreSQL runs over.
//!
//! tokio-postgres speaks the protocol over any stream with Tokio's I/O traits and needs no
//! Tokio runtime for that. The runtime crates open TCP and Unix sockets in their own way;
//! [`Socket`] wraps either kind of stream (Tokio's or the `futures-io` traits used by smol and
//! async-std) behind Tokio's traits.

use momopool::{BoxFuture, Runtime};
use std::io;
use std::net::SocketAddr;
#[cfg(any(feature = "rt-tokio", feature = "rt-smol", feature = "rt-async-std"))]
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A [`Runtime`] that can also connect sockets, as `momopool-pg` needs.
///
/// Implemented for `momopool_tokio::Tokio`, `momopool_smol::Smol` and
/// `momopool_async_std::AsyncStd` behind the features `rt-tokio`, `rt-smol` and
/// `rt-async-std`. Implement it for your own runtime by opening the socket and wrapping it
/// with [`Socket::from_tokio`] or [`Socket::from_futures`].
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "rt-smol")] {
/// use momopool_pg::PgRuntime;
/// use std::sync::Arc;
///
/// let runtime: Arc<dyn PgRuntime> = Arc::new(momopool_smol::Smol);
/// # drop(runtime); }
/// ```
pub trait PgRuntime: Runtime {
    /// Opens a TCP connection to `addr` (with `TCP_NODELAY` set).
    ///
    /// momopool-pg then applies the configuration's TCP settings (keepalives and
    /// `tcp_user_timeout`) through the descriptor given to [`Socket::with_probe`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// use momopool_pg::{PgRuntime, Tokio};
    /// use std::sync::Arc;
    ///
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let runtime: Arc<dyn PgRuntime> = Arc::new(Tokio::current());
    /// let socket = runtime.connect_tcp(listener.local_addr()?).await?;
    /// # drop(socket);
    /// # Ok(()) }
    /// ```
    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Socket>>;

    /// Opens a Unix domain socket connection to the socket file at `path`.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// use momopool_pg::{PgRuntime, Tokio};
    /// use std::sync::Arc;
    ///
    /// let path = std::env::temp_dir().join(format!("momopool-pg-{}.sock", std::process::id()));
    /// # let _ = std::fs::remove_file(&path);
    /// let listener = tokio::net::UnixListener::bind(&path)?;
    /// let runtime: Arc<dyn PgRuntime> = Arc::new(Tokio::current());
    /// let socket = runtime.connect_unix(path.clone()).await?;
    /// # drop((socket, listener));
    /// std::fs::remove_file(&path)?;
    /// # Ok(()) }
    /// ```
    fn connect_unix(&self, path: PathBuf) -> BoxFuture<'static, io::Result<Socket>>;
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A connected byte stream to a PostgreSQL server, whatever runtime opened it.
///
/// It reads and writes through Tokio's `AsyncRead` and `AsyncWrite`, which is what
/// tokio-postgres speaks over.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use momopool_pg::Socket;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use tokio::net::{TcpListener, TcpStream};
///
/// let listener = TcpListener::bind("127.0.0.1:0").await?;
/// let mut socket = Socket::from_tokio(TcpStream::connect(listener.local_addr()?).await?);
/// let (mut server, _) = listener.accept().await?;
///
/// socket.write_all(b"ping").await?;
/// let mut received = [0; 4];
/// server.read_exact(&mut received).await?;
/// assert_eq!(&received, b"ping");
/// # Ok(()) }
/// ```
pub struct Socket {
    stream: Box<dyn Stream>,
    probe: Option<Probe>,
    /// Bytes written so far (see [`Written`]).
    written: Written,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Socket")
    }
}

impl Socket {
    /// Wraps a stream with Tokio's I/O traits, such as `tokio::net::TcpStream`.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn open() -> std::io::Result<momopool_pg::Socket> {
    /// let stream = tokio::net::TcpStream::connect("127.0.0.1:5432").await?;
    /// Ok(momopool_pg::Socket::from_tokio(stream))
    /// # }
    /// ```
    pub fn from_tokio<S>(stream: S) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Socket {
            stream: Box::new(stream),
            probe: None,
            written: Written::default(),
        }
    }

    /// Wraps a stream with the `futures-io` traits, such as smol's or async-std's
    /// `TcpStream`.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn open() -> std::io::Result<momopool_pg::Socket> {
    /// let stream = smol::net::TcpStream::connect("127.0.0.1:5432").await?;
    /// Ok(momopool_pg::Socket::from_futures(stream))
    /// # }
    /// ```
    pub fn from_futures<S>(stream: S) -> Self
    where
        S: futures_io::AsyncRead + futures_io::AsyncWrite + Send + Unpin + 'static,
    {
        Socket {
            stream: Box::new(FuturesIo(stream)),
            probe: None,
            written: Written::default(),
        }
    }

    /// Lets the pool notice, without a round trip, that the server has spoken while the
    /// connection sat idle: a connection with no request outstanding receives bytes (or an
    /// end of stream) only when the server is saying goodbye (a shutdown or a terminated
    /// backend). `fd` is the socket's descriptor; a duplicate is kept and peeked at, never
    /// read. Without a probe the pool relies on the driver having seen the goodbye, or on the
    /// goodbye coming as the next prepared statement's first answer.
    ///
    /// The descriptor is also how the TCP settings of the configuration (tokio-postgres's
    /// `keepalives`, `keepalives_idle`, `keepalives_interval`, `keepalives_retries` and, on
    /// Linux, `tcp_user_timeout`) reach a TCP socket: without it they are left as the runtime
    /// made them.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn open() -> std::io::Result<momopool_pg::Socket> {
    /// use std::os::fd::AsFd;
    ///
    /// let stream = tokio::net::TcpStream::connect("127.0.0.1:5432").await?;
    /// let fd = stream.as_fd().try_clone_to_owned()?;
    /// Ok(momopool_pg::Socket::from_tokio(stream).with_probe(fd))
    /// # }
    /// ```
    pub fn with_probe(mut self, fd: std::os::fd::OwnedFd) -> Self {
        self.probe = Some(Probe(socket2::Socket::from(fd)));
        self
    }

    pub(crate) fn take_probe(&mut self) -> Option<Probe> {
        self.probe.take()
    }

    /// A handle on the count of bytes written through this socket, kept by the connection.
    pub(crate) fn written(&self) -> Written {
        self.written.clone()
    }

    /// Applies `pg`'s TCP settings (see [`tcp_settings`]) through the probe's descriptor;
    /// `false` when there is none.
    pub(crate) fn apply_tcp_settings(&self, pg: &tokio_postgres::Config) -> io::Result<bool> {
        match &self.probe {
            Some(probe) => tcp_settings(&probe.0, pg).map(|()| true),
            None => Ok(false),
        }
    }
}

/// Applies to a TCP socket what tokio-postgres applies to the sockets it opens itself (its own
/// connect is not used here, the runtime opens the socket): TCP keepalives when `keepalives`
/// is on (the default), with `keepalives_idle` (2 hours by default), `keepalives_interval` and
/// `keepalives_retries`; and `tcp_user_timeout` on Linux.
pub(crate) fn tcp_settings(
    socket: &socket2::Socket,
    pg: &tokio_postgres::Config,
) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if let Some(timeout) = pg.get_tcp_user_timeout() {
        socket.set_tcp_user_timeout(Some(*timeout))?;
    }
    if pg.get_keepalives() {
        #[allow(unused_mut)] // only the platforms below set more than the time
        let mut keepalive = socket2::TcpKeepalive::new().with_time(pg.get_keepalives_idle());
        #[cfg(not(any(
            target_os = "aix",
            target_os = "redox",
            target_os = "solaris",
            target_os = "openbsd"
        )))]
        {
            if let Some(interval) = pg.get_keepalives_interval() {
                keepalive = keepalive.with_interval(interval);
            }
            if let Some(retries) = pg.get_keepalives_retries() {
                keepalive = keepalive.with_retries(retries);
            }
        }
        socket.set_tcp_keepalive(&keepalive)?;
    }
    Ok(())
}

/// How many bytes a connection has written to its socket, readable from outside the driver.
///
/// A request that fails without one more byte having gone out never reached the server: that is
/// how a statement whose driver ended (on the server's goodbye, read first) before writing it
/// counts as not sent. A byte written by anything else meanwhile (a queued `ROLLBACK`) only
/// makes the answer "sent", the cautious one.
#[derive(Clone, Debug, Default)]
pub(crate) struct Written(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Written {
    /// Bytes written so far.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    fn add(&self, n: usize) {
        self.0
            .fetch_add(n as u64, std::sync::atomic::Ordering::Release);
    }
}

/// A duplicate of a connection's socket descriptor, used only to peek.
pub(crate) struct Probe(socket2::Socket);

impl Probe {
    /// Whether input (or an end of stream) is waiting to be read. The duplicate shares the
    /// runtime's non-blocking mode, so this never waits.
    pub(crate) fn input_pending(&self) -> bool {
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match self.0.peek(&mut byte) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
            Err(_) => true,
        }
    }
}

/// Adds a probe when the descriptor could be duplicated (a socket without one still works).
#[cfg(any(feature = "rt-tokio", feature = "rt-smol", feature = "rt-async-std"))]
fn with_fd(socket: Socket, fd: io::Result<std::os::fd::OwnedFd>) -> Socket {
    match fd {
        Ok(fd) => socket.with_probe(fd),
        Err(_) => socket,
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut *self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.written.add(n);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream).poll_shutdown(cx)
    }
}

/// Presents a `futures-io` stream with Tokio's traits.
struct FuturesIo<S>(S);

impl<S: futures_io::AsyncRead + Unpin> AsyncRead for FuturesIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // futures-io reads into initialised memory; Tokio may hand us uninitialised memory,
        // which `initialize_unfilled` zeroes first (without unsafe code).
        let unfilled = buf.initialize_unfilled();
        match Pin::new(&mut self.0).poll_read(cx, unfilled) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: futures_io::AsyncWrite + Unpin> AsyncWrite for FuturesIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

#[cfg(feature = "rt-tokio")]
impl PgRuntime for momopool_tokio::Tokio {
    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Socket>> {
        let runtime = self.clone();
        Box::pin(async move {
            let stream = runtime.connect_tcp(addr).await?;
            let fd = stream.as_fd().try_clone_to_owned();
            Ok(with_fd(Socket::from_tokio(stream), fd))
        })
    }

    fn connect_unix(&self, path: PathBuf) -> BoxFuture<'static, io::Result<Socket>> {
        let runtime = self.clone();
        Box::pin(async move {
            let stream = runtime.connect_unix(&path).await?;
            let fd = stream.as_fd().try_clone_to_owned();
            Ok(with_fd(Socket::from_tokio(stream), fd))
        })
    }
}

#[cfg(feature = "rt-smol")]
impl PgRuntime for momopool_smol::Smol {
    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Socket>> {
        Box::pin(async move {
            let stream = momopool_smol::Smol.connect_tcp(addr).await?;
            let fd = stream.as_fd().try_clone_to_owned();
            Ok(with_fd(Socket::from_futures(stream), fd))
        })
    }

    fn connect_unix(&self, path: PathBuf) -> BoxFuture<'static, io::Result<Socket>> {
        Box::pin(async move {
            let stream = momopool_smol::Smol.connect_unix(&path).await?;
            let fd = stream.as_fd().try_clone_to_owned();
            Ok(with_fd(Socket::from_futures(stream), fd))
        })
    }
}

#[cfg(feature = "rt-async-std")]
impl PgRuntime for momopool_async_std::AsyncStd {
    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Socket>> {
        Box::pin(async move {
            let stream = momopool_async_std::AsyncStd.connect_tcp(addr).await?;
            let fd = stream.as_fd().try_clone_to_owned();
            Ok(with_fd(Socket::from_futures(stream), fd))
        })
    }

    fn connect_unix(&self, path: PathBuf) -> BoxFuture<'static, io::Result<Socket>> {
        Box::pin(async move {
            let stream = momopool_async_std::AsyncStd.connect_unix(&path).await?;
            let fd = stream.as_fd().try_clone_to_owned();
            Ok(with_fd(Socket::from_futures(stream), fd))
        })
    }
}

/// The runtime picked by the enabled features: Tokio when `rt-tokio` is on and the caller runs
/// inside a Tokio runtime, else smol (`rt-smol`), else async-std (`rt-async-std`).
///
/// # Errors
///
/// [`Error::Config`](crate::Error::Config) when no runtime feature fits.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "rt-smol")]
/// assert!(momopool_pg::default_runtime().is_ok());
/// ```
pub fn default_runtime() -> Result<std::sync::Arc<dyn PgRuntime>, crate::Error> {
    #[cfg(feature = "rt-tokio")]
    if let Some(tokio) = momopool_tokio::Tokio::try_current() {
        return Ok(std::sync::Arc::new(tokio));
    }
    #[cfg(feature = "rt-smol")]
    return Ok(std::sync::Arc::new(momopool_smol::Smol));
    #[cfg(all(feature = "rt-async-std", not(feature = "rt-smol")))]
    return Ok(std::sync::Arc::new(momopool_async_std::AsyncStd));
    #[allow(unreachable_code)]
    Err(crate::Error::Config(
        "no runtime: enable one of the features rt-tokio (and call from inside a Tokio \
         runtime), rt-smol or rt-async-std, or pass a runtime explicitly"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::{Probe, tcp_settings};
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    /// The keepalive and user-timeout settings of the configuration reach the socket.
    #[test]
    fn tcp_settings_reach_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let connect = || {
            let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            socket2::Socket::from(stream)
        };
        let secs = Duration::from_secs;

        let socket = connect();
        let mut pg = tokio_postgres::Config::new();
        pg.keepalives_idle(secs(77))
            .keepalives_interval(secs(7))
            .keepalives_retries(3)
            .tcp_user_timeout(secs(9));
        tcp_settings(&socket, &pg).unwrap();
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), secs(77));
        #[cfg(target_os = "linux")]
        {
            assert_eq!(socket.tcp_keepalive_interval().unwrap(), secs(7));
            assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
            assert_eq!(socket.tcp_user_timeout().unwrap(), Some(secs(9)));
        }

        // tokio-postgres's defaults: keepalives on, after 2 hours idle.
        let socket = connect();
        tcp_settings(&socket, &tokio_postgres::Config::new()).unwrap();
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), secs(2 * 60 * 60));

        let socket = connect();
        let mut pg = tokio_postgres::Config::new();
        pg.keepalives(false);
        tcp_settings(&socket, &pg).unwrap();
        assert!(!socket.keepalive().unwrap());
    }

    /// The probe sees unread input and a closed peer without consuming or waiting.
    #[test]
    fn probe_sees_input_and_goodbye_without_reading() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        let probe = Probe(socket2::Socket::from(ours.try_clone().unwrap()));

        assert!(!probe.input_pending(), "nothing sent yet");
        server.write_all(b"E").unwrap();
        let sent = std::time::Instant::now();
        while !probe.input_pending() {
            assert!(sent.elapsed() < std::time::Duration::from_secs(5));
            std::thread::yield_now();
        }
        assert!(probe.input_pending(), "peeking does not consume");

        let (fresh_ours, fresh_server) = {
            let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            (ours, server)
        };
        fresh_ours.set_nonblocking(true).unwrap();
        let probe = Probe(socket2::Socket::from(fresh_ours));
        assert!(!probe.input_pending());
        drop(fresh_server);
        let closed = std::time::Instant::now();
        while !probe.input_pending() {
            assert!(closed.elapsed() < std::time::Duration::from_secs(5));
            std::thread::yield_now();
        }
    }
}
