//! [async-std](https://docs.rs/async-std) support for momopool: the [`AsyncStd`] runtime and
//! the sockets `momopool-pg` connects through.
//!
//! async-std is deprecated upstream in favour of [smol](https://docs.rs/smol); new projects
//! should prefer `momopool-smol`. This crate stays for programs already built on async-std.
//!
//! # Examples
//!
//! ```
//! use momopool::Runtime;
//! use momopool_async_std::AsyncStd;
//! use std::time::Duration;
//!
//! async_std::task::block_on(async {
//!     let (tx, rx) = futures_channel();
//!     AsyncStd.spawn(Box::pin(async move {
//!         let _ = tx.send(42);
//!     }));
//!     AsyncStd.sleep(Duration::from_millis(1)).await;
//!     assert_eq!(rx.recv().unwrap(), 42);
//! });
//! # fn futures_channel() -> (std::sync::mpsc::Sender<i32>, std::sync::mpsc::Receiver<i32>) {
//! #     std::sync::mpsc::channel()
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

use momopool::{BoxFuture, Runtime};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A momopool [`Runtime`] on async-std's global executor.
///
/// Spawned tasks are detached: async-std keeps running a task whose `JoinHandle` is dropped.
/// It works from any thread, inside or outside an async-std `block_on`.
///
/// # Examples
///
/// ```
/// use momopool::Pool;
/// use momopool_async_std::AsyncStd;
///
/// # use momopool::Manager;
/// # #[derive(Debug)] struct Numbers;
/// # impl Manager for Numbers {
/// #     type Connection = u64;
/// #     type Error = std::io::Error;
/// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
/// # }
/// let pool = Pool::builder(Numbers).runtime(AsyncStd).build().unwrap();
/// async_std::task::block_on(async {
///     let conn = pool.get().await.unwrap();
///     assert_eq!(*conn, 7);
/// });
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct AsyncStd;

impl AsyncStd {
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
    /// async_std::task::block_on(async {
    ///     let listener = async_std::net::TcpListener::bind("127.0.0.1:0").await?;
    ///     let addr = listener.local_addr()?;
    ///     let stream = momopool_async_std::AsyncStd.connect_tcp(addr).await?;
    ///     assert!(stream.nodelay()?);
    ///     let (_server_side, peer) = listener.accept().await?;
    ///     assert_eq!(peer, stream.local_addr()?);
    ///     Ok::<_, std::io::Error>(())
    /// })
    /// .unwrap();
    /// ```
    pub async fn connect_tcp(&self, addr: SocketAddr) -> io::Result<async_std::net::TcpStream> {
        let stream = async_std::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
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
    /// let dir = std::env::temp_dir();
    /// let path = dir.join(format!("momopool-async-std-{}.sock", std::process::id()));
    /// # let _ = std::fs::remove_file(&path);
    /// async_std::task::block_on(async {
    ///     let listener = async_std::os::unix::net::UnixListener::bind(&path).await?;
    ///     let _stream = momopool_async_std::AsyncStd.connect_unix(&path).await?;
    ///     let _server_side = listener.accept().await?;
    ///     Ok::<_, std::io::Error>(())
    /// })
    /// .unwrap();
    /// std::fs::remove_file(&path).unwrap();
    /// ```
    pub async fn connect_unix(
        &self,
        path: &Path,
    ) -> io::Result<async_std::os::unix::net::UnixStream> {
        async_std::os::unix::net::UnixStream::connect(path).await
    }
}

impl Runtime for AsyncStd {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        drop(async_std::task::spawn(task));
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async_std::task::sleep(duration))
    }
}
