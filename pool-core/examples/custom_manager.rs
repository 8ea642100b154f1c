//! A [`Manager`] for a backend that is not PostgreSQL: a tiny line protocol over TCP.
//!
//! ```sh
//! cargo run -p momopool --example custom_manager
//! ```
//!
//! The example starts its own service on `127.0.0.1` (a free port) in a plain thread. The
//! service answers one line with one line:
//!
//! | request    | reply                                    |
//! |------------|------------------------------------------|
//! | `PING`     | `PONG`                                   |
//! | `ECHO x`   | `x`                                      |
//! | `QUIT`     | `BYE`, then it closes the connection     |
//! | other      | `ERR unknown command`                    |
//!
//! The manager implements the whole [`Manager`] trait (`needs_check` and `is_server_gone` keep
//! their defaults: this service keeps no session state, and `classify` already reports a
//! hang-up as `ServerGone`); the pool runs on Tokio through `momopool-tokio`. The program
//! prints what the pool and the manager do, and exits 0.

use momopool::{ErrorClass, Manager, Metrics, Pool, PoolError, Removal, Validation};
use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

// ---- The manager part: a connection type and the whole Manager trait. ----

/// One connection to the line service; `broken` is set when a call fails on the socket.
struct LineConn {
    id: u32,
    stream: BufReader<TcpStream>,
    broken: bool,
}

impl LineConn {
    async fn call(&mut self, request: &str) -> io::Result<String> {
        let (line, mut reply) = (format!("{request}\n"), String::new());
        let outcome = async {
            self.stream.write_all(line.as_bytes()).await?;
            match self.stream.read_line(&mut reply).await? {
                0 => Err(io::ErrorKind::UnexpectedEof.into()), // the service hung up
                _ => Ok(reply.trim_end().to_string()),
            }
        };
        let outcome = outcome.await;
        self.broken |= outcome.is_err();
        outcome
    }
}

/// Opens connections to the service at this address, numbering them.
struct LineManager(SocketAddr, AtomicU32);

impl Manager for LineManager {
    type Connection = LineConn;
    type Error = io::Error;

    async fn create(&self) -> io::Result<LineConn> {
        let stream = BufReader::new(TcpStream::connect(self.0).await?);
        let id = self.1.fetch_add(1, Ordering::Relaxed);
        println!("    [manager] create: #{id} opened");
        let broken = false;
        Ok(LineConn { id, stream, broken })
    }

    async fn check(&self, conn: &mut LineConn, metrics: &Metrics) -> io::Result<()> {
        let reply = conn.call("PING").await?;
        let (id, used) = (conn.id, metrics.times_used());
        println!("    [manager] check: #{id} (used {used}x) PING -> {reply}");
        match reply.as_str() {
            "PONG" => Ok(()),
            _ => Err(io::Error::other(format!("PING answered {reply:?}"))),
        }
    }

    fn is_broken(&self, conn: &mut LineConn) -> bool {
        conn.broken
    }

    fn classify(&self, error: &io::Error) -> ErrorClass {
        match error.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => ErrorClass::ServerGone,
            io::ErrorKind::PermissionDenied => ErrorClass::Permanent,
            _ => ErrorClass::Transient, // refused, timed out: retried with backoff
        }
    }

    fn removed(&self, conn: &mut LineConn, reason: Removal) {
        println!("    [manager] removed: #{} ({reason:?})", conn.id);
    }
}

// ---- The service, and the demonstration. ----

/// Starts the line service on a free loopback port, in a plain thread.
fn start_service() -> io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve_client(stream));
        }
    });
    Ok(addr)
}

fn serve_client(stream: std::net::TcpStream) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    for line in io::BufReader::new(stream).lines() {
        let line = line?;
        let reply = match line.as_str() {
            "PING" => "PONG",
            "QUIT" => {
                writer.write_all(b"BYE\n")?;
                return Ok(());
            }
            other => other.strip_prefix("ECHO ").unwrap_or("ERR unknown command"),
        };
        writer.write_all(format!("{reply}\n").as_bytes())?;
    }
    Ok(())
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let addr = start_service()?;
    println!("line service listening on {addr}");

    let manager = LineManager(addr, AtomicU32::new(1));
    let pool = Pool::builder(manager)
        .min_size(1)
        .max_size(3)
        // Check every connection before it is handed out again, to show `check` at work.
        .validation(Validation::Always)
        .runtime(momopool_tokio::Tokio::current())
        .build_eager()
        .await?;
    println!("pool ready: {:?}", pool.status());

    println!("\n1. one connection, one call");
    {
        let mut conn = pool.get().await?;
        println!("    ECHO hello -> {}", conn.call("ECHO hello").await?);
    }

    println!("\n2. three callers at once: the pool stretches to max_size");
    let (a, b, c) = futures::try_join!(pool.get(), pool.get(), pool.get())?;
    println!(
        "    holding #{}, #{}, #{}: {:?}",
        a.id,
        b.id,
        c.id,
        pool.status()
    );
    let fourth = pool
        .get_timeout(std::time::Duration::from_millis(100))
        .await;
    match fourth {
        Err(PoolError::Timeout(err)) => println!("    a fourth caller times out: {err}"),
        Err(err) => println!("    a fourth caller fails: {err}"),
        Ok(_) => println!("    a fourth caller got a connection beyond max_size?"),
    }
    drop((a, b, c));
    println!("    returned: {:?}", pool.status());

    println!("\n3. the service hangs up on a connection");
    {
        let mut conn = pool.get().await?;
        println!("    QUIT -> {}", conn.call("QUIT").await?);
        let after = conn.call("PING").await;
        match after {
            Ok(reply) => println!("    PING afterwards -> {reply}"),
            Err(err) => println!("    PING afterwards fails: {err} (the connection is now broken)"),
        }
        // Dropping the guard hands it back; `is_broken` says true, so it is removed.
    }
    let mut conn = pool.get().await?;
    let reply = conn.call("ECHO ok").await?;
    println!("    the next caller gets #{}: ECHO ok -> {reply}", conn.id);
    drop(conn);

    let stats = pool.statistics();
    println!("\n4. statistics");
    println!(
        "    created {}, checks {}, closed as broken {}, gets served at once {}, after waiting {}",
        stats.created,
        stats.checks,
        stats.closed.get(Removal::Broken),
        stats.gets_direct,
        stats.gets_waited,
    );

    println!("\n5. close");
    pool.close();
    println!("    closed: {:?}", pool.status());
    Ok(())
}
