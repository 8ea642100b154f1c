//! Test support: a scripted PostgreSQL server and a runtime whose tasks run only when a test
//! says so, for the moments a real server and executor never hold still for (what a
//! connection's driver reads first, say).

use crate::runtime::{PgRuntime, Socket};
use momopool::{BoxFuture, Runtime};
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A runtime whose spawned tasks are polled only by [`Stepped::run`], after the future it is
/// given, and whose sockets try every read and write at once (as smol's and async-std's do)
/// instead of waiting for a readiness event. Nothing is woken: `run` polls until done.
#[derive(Default)]
pub(crate) struct Stepped {
    tasks: Mutex<Vec<BoxFuture<'static, ()>>>,
}

impl std::fmt::Debug for Stepped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stepped")
    }
}

impl Stepped {
    /// Polls `fut`, then every spawned task, over and over, until `fut` is ready.
    ///
    /// # Panics
    ///
    /// If `fut` is not ready within 5 s.
    pub(crate) fn run<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let started = Instant::now();
        loop {
            if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                return out;
            }
            let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
            tasks.retain_mut(|task| task.as_mut().poll(&mut cx).is_pending());
            self.tasks.lock().unwrap().append(&mut tasks);
            assert!(started.elapsed() < Duration::from_secs(5), "no progress");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Runtime for Stepped {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self.tasks.lock().unwrap().push(task);
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let until = Instant::now() + duration;
        Box::pin(std::future::poll_fn(move |_| {
            if Instant::now() >= until {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }))
    }
}

impl PgRuntime for Stepped {
    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Socket>> {
        Box::pin(async move {
            let stream = TcpStream::connect(addr)?;
            stream.set_nonblocking(true)?;
            let probe = std::os::fd::OwnedFd::from(stream.try_clone()?);
            Ok(Socket::from_tokio(Eager(stream)).with_probe(probe))
        })
    }

    fn connect_unix(&self, _path: PathBuf) -> BoxFuture<'static, io::Result<Socket>> {
        Box::pin(async { Err(io::Error::other("no Unix sockets here")) })
    }
}

/// A non-blocking socket that tries each read and write at once.
struct Eager(TcpStream);

fn attempt<T>(result: io::Result<T>) -> Poll<io::Result<T>> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        other => Poll::Ready(other),
    }
}

impl AsyncRead for Eager {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = std::task::ready!(attempt(self.0.read(buf.initialize_unfilled())))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Eager {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        attempt(self.0.write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.shutdown(std::net::Shutdown::Write))
    }
}

/// One message of the server's side of the protocol: its type byte and body.
pub(crate) fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// An ErrorResponse with the given severity, SQLSTATE and message.
pub(crate) fn error_response(severity: &str, code: &str, text: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', text),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    message(b'E', &body)
}

/// A server for one connection on `127.0.0.1`: it accepts the start-up without a password,
/// answers the connection's first simple query with no rows, then hands the socket to
/// `then`, which runs on a thread of its own.
pub(crate) fn scripted_server(
    then: impl FnOnce(TcpStream) + Send + 'static,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        // The start-up message: its length, then the rest.
        let mut len = [0; 4];
        socket.read_exact(&mut len).unwrap();
        let mut rest = vec![0; u32::from_be_bytes(len) as usize - 4];
        socket.read_exact(&mut rest).unwrap();
        let mut hello = message(b'R', &0u32.to_be_bytes());
        hello.extend(message(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]));
        hello.extend(message(b'Z', b"I"));
        socket.write_all(&hello).unwrap();
        // The connection's first query (its backend pid): no rows.
        assert_eq!(read_message(&mut socket).0, b'Q');
        let mut answer = message(b'C', b"SELECT 0\0");
        answer.extend(message(b'Z', b"I"));
        socket.write_all(&answer).unwrap();
        then(socket);
    });
    (addr, server)
}

/// Reads one message of the client's side of the protocol: its type byte and body.
pub(crate) fn read_message(socket: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0; 5];
    socket.read_exact(&mut head).unwrap();
    let mut body = vec![0; u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4];
    socket.read_exact(&mut body).unwrap();
    (head[0], body)
}
