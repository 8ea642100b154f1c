//! [smol](https://docs.rs/smol) support for momopool: the [`Smol`] runtime and the sockets
//! `momopool-pg` connects through.
//!
//! # Examples
//!
//! ```
//! use momopool::Runtime;
//! use momopool_smol::Smol;
//! use std::time::Duration;
//!
//! smol::block_on(async {
//!     let (tx, rx) = smol::channel::bounded(1);
//!     Smol.spawn(Box::pin(async move {
//!         let _ = tx.send(42).await;
//!     }));
//!     Smol.sleep(Duration::from_millis(1)).await;
//!     assert_eq!(rx.recv().await.unwrap(), 42);
//! });
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

use momopool::{BoxFuture, Runtime};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A momopool [`Runtime`] on smol's global executor.
///
/// Tasks are spawned with `smol::spawn(..).detach()`, so they run to completion on their own
/// (dropping a smol `Task` without `detach` would cancel it). Timers are `smol::Timer`s. It
/// works from any thread.
///
/// # Examples
///
/// ```
/// use momopool::Pool;
/// use momopool_smol::Smol;
///
/// # use momopool::Manager;
/// # #[derive(Debug)] struct Numbers;
/// # impl Manager for Numbers {
/// #     type Connection = u64;
/// #     type Error = std::io::Error;
/// #     async fn create(&self) -> Result<u64, std::io::Error> { Ok(7) }
/// # }
/// let pool = Pool::builder(Numbers).runtime(Smol).build().unwrap();
/// smol::block_on(async {
///     let conn = pool.get().await.unwrap();
///     assert_eq!(*conn, 7);
/// });
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Smol;

impl Smol {
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
    /// smol::block_on(async {
    ///     let listener = smol::net::TcpListener::bind("127.0.0.1:0").await?;
    ///     let stream = momopool_smol::Smol.connect_tcp(listener.local_addr()?).await?;
    ///     assert!(stream.nodelay()?);
    ///     let (_server_side, peer) = listener.accept().await?;
    ///     assert_eq!(peer, stream.local_addr()?);
    ///     Ok::<_, std::io::Error>(())
    /// })
    /// .unwrap();
    /// ```
    pub async fn connect_tcp(&self, addr: SocketAddr) -> io::Result<smol::net::TcpStream> {
        let stream = smol::net::TcpStream::connect(addr).await?;
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
    /// let path = std::env::temp_dir().join(format!("momopool-smol-{}.sock", std::process::id()));
    /// # let _ = std::fs::remove_file(&path);
    /// smol::block_on(async {
    ///     let listener = smol::net::unix::UnixListener::bind(&path)?;
    ///     let _stream = momopool_smol::Smol.connect_unix(&path).await?;
    ///     let _server_side = listener.accept().await?;
    ///     Ok::<_, std::io::Error>(())
    /// })
    /// .unwrap();
    /// std::fs::remove_file(&path).unwrap();
    /// ```
    pub async fn connect_unix(&self, path: &Path) -> io::Result<smol::net::unix::UnixStream> {
        smol::net::unix::UnixStream::connect(path).await
    }
}

impl Runtime for Smol {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        smol::spawn(task).detach();
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            smol::Timer::after(duration).await;
        })
    }
}
