//! [Tokio](https://tokio.rs) support for momopool: the [`Tokio`] runtime and the sockets
//! `momopool-pg` connects through.
//!
//! # Examples
//!
//! ```
//! use momopool::Runtime;
//! use momopool_tokio::Tokio;
//! use std::time::Duration;
//!
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! rt.block_on(async {
//!     let runtime = Tokio::current();
//!     let (tx, rx) = std::sync::mpsc::channel();
//!     runtime.spawn(Box::pin(async move {
//!         tx.send(42).unwrap();
//!     }));
//!     // The spawned task runs while this one sleeps.
//!     runtime.sleep(Duration::from_millis(1)).await;
//!     assert_eq!(rx.try_recv().unwrap(), 42);
//! });
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

use momopool::{BoxFuture, Runtime};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::runtime::Handle;

/// A momopool [`Runtime`] on a Tokio runtime.
///
/// It holds a handle to the Tokio runtime it was made on, so the pool can spawn onto it from
/// any thread (a connection guard dropped outside the runtime, for example). Spawned tasks are
/// detached: their `JoinHandle` is dropped at once, which in Tokio lets the task run on.
/// The runtime must have its time driver enabled (`enable_time` or `enable_all`), and its I/O
/// driver for sockets.
///
/// # Examples
///
/// ```
/// use momopool::Pool;
/// use momopool_tokio::Tokio;
///
/// # use momopool::Manager;
/// # #[derive(Debug)] struct Numbers;
/// # impl Manager for Numbers {
/// #     type Connection = u64;
/// #     type Error = std::io::Error;
/// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
/// # }
/// #[tokio::main(flavor = "current_thread")]
/// async fn main() {
///     let pool = Pool::builder(Numbers).runtime(Tokio::current()).build().unwrap();
///     let conn = pool.get().await.unwrap();
///     assert_eq!(*conn, 7);
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Tokio {
    handle: Handle,
}

impl Tokio {
    /// The Tokio runtime the caller is running on.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime; use [`Tokio::try_current`] to get an `Option` instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::Runtime;
    /// use std::time::Duration;
    ///
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// rt.block_on(async {
    ///     let runtime = momopool_tokio::Tokio::current();
    ///     runtime.sleep(Duration::from_millis(1)).await;
    /// });
    /// ```
    pub fn current() -> Self {
        Tokio {
            handle: Handle::current(),
        }
    }

    /// The Tokio runtime the caller is running on, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(momopool_tokio::Tokio::try_current().is_none());
    /// ```
    pub fn try_current() -> Option<Self> {
        Handle::try_current().ok().map(|handle| Tokio { handle })
    }

    /// A runtime handle obtained elsewhere.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool::Runtime;
    /// use std::time::Duration;
    ///
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// // Made outside the runtime, for example to build a pool before entering it.
    /// let runtime = momopool_tokio::Tokio::from_handle(rt.handle().clone());
    /// rt.block_on(runtime.sleep(Duration::from_millis(1)));
    /// ```
    pub fn from_handle(handle: Handle) -> Self {
        Tokio { handle }
    }

    /// Opens a TCP connection with `TCP_NODELAY` set.
    ///
    /// # Errors
    ///
    /// The connect error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future abandons the connect.
    ///
    /// # Examples
    ///
    /// ```
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// rt.block_on(async {
    ///     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    ///     let stream = momopool_tokio::Tokio::current()
    ///         .connect_tcp(listener.local_addr()?)
    ///         .await?;
    ///     assert!(stream.nodelay()?);
    ///     let (_server_side, peer) = listener.accept().await?;
    ///     assert_eq!(peer, stream.local_addr()?);
    ///     Ok::<_, std::io::Error>(())
    /// })
    /// .unwrap();
    /// ```
    pub async fn connect_tcp(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        // Connect on the runtime itself, so the caller may poll from anywhere.
        let connect = self.handle.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(stream)
        });
        connect.await.map_err(io::Error::other)?
    }

    /// Opens a Unix domain socket connection.
    ///
    /// # Errors
    ///
    /// The connect error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future abandons the connect.
    ///
    /// # Examples
    ///
    /// ```
    /// let path = std::env::temp_dir().join(format!("momopool-tokio-{}.sock", std::process::id()));
    /// # let _ = std::fs::remove_file(&path);
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// rt.block_on(async {
    ///     let listener = tokio::net::UnixListener::bind(&path)?;
    ///     let _stream = momopool_tokio::Tokio::current().connect_unix(&path).await?;
    ///     let _server_side = listener.accept().await?;
    ///     Ok::<_, std::io::Error>(())
    /// })
    /// .unwrap();
    /// std::fs::remove_file(&path).unwrap();
    /// ```
    pub async fn connect_unix(&self, path: &Path) -> io::Result<tokio::net::UnixStream> {
        let path = path.to_path_buf();
        let connect = self
            .handle
            .spawn(async move { tokio::net::UnixStream::connect(path).await });
        connect.await.map_err(io::Error::other)?
    }
}

impl Runtime for Tokio {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        drop(self.handle.spawn(task));
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let _enter = self.handle.enter();
        Box::pin(tokio::time::sleep(duration))
    }
}
