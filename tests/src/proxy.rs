//! An in-process TCP fault-injection proxy for the fault scenarios.
//!
//! [`FaultProxy`] listens on `127.0.0.1` (an ephemeral port) and forwards every connection it
//! accepts to an upstream address on the loopback interface, typically the throwaway PostgreSQL
//! cluster the tests start. Between the two it can inject the network faults the scenarios need:
//! refused or unanswered connects, latency, silently dead (half-open) connections, graceful or
//! abortive closes, truncated streams and lost replies.
//!
//! It is built on plain std threads, so it serves any async runtime: one accept thread per proxy
//! and two forwarding threads per forwarded connection (one per direction), or one thread for a
//! connection that is only held open. Every blocking call is bounded by a short timeout so the
//! threads notice mode changes and shutdown promptly; nothing spins. Dropping the proxy resets
//! every connection and joins every thread before `drop` returns.
//!
//! # Modes for new connections
//!
//! | call | what a new connection attempt sees |
//! | --- | --- |
//! | [`pass`](FaultProxy::pass) | forwarded to the upstream (and every fault is cleared) |
//! | [`refuse`](FaultProxy::refuse) | `ECONNREFUSED`: the proxy stops listening, keeping the port reserved |
//! | [`deaf`](FaultProxy::deaf) | the connect succeeds, then nothing is ever answered |
//! | [`down_for`](FaultProxy::down_for) | refused until the given time has passed, then forwarded |
//!
//! # Faults on traffic
//!
//! [`delay`](FaultProxy::delay), [`blackhole`](FaultProxy::blackhole),
//! [`swallow_reply_after`](FaultProxy::swallow_reply_after) and
//! [`kill_all`](FaultProxy::kill_all) act on the connections that exist when they are called (and
//! the first three also on later ones); [`cut_after_bytes`](FaultProxy::cut_after_bytes) acts on
//! the connections opened after it is called.
//!
//! Blackholed and swallowing connections are *sticky*: [`pass`](FaultProxy::pass) stops
//! blackholing and swallowing for connections opened afterwards, but a connection that was
//! blackholed stays silent for the rest of its life, and so does the server-to-client direction
//! of a connection whose reply was swallowed. Close them with [`kill_all`](FaultProxy::kill_all)
//! (or let the client close them).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use momopool_tests::proxy::{FaultProxy, Kill};
//!
//! # fn main() -> std::io::Result<()> {
//! let upstream = "127.0.0.1:5432".parse().unwrap();
//! let proxy = FaultProxy::start(upstream)?;
//! // Point the pool at `proxy.addr()`, then:
//! proxy.down_for(Duration::from_millis(300)); // the database is "down" for 300 ms
//! proxy.kill_all(Kill::Rst); // every open connection is reset
//! let stats = proxy.stats();
//! assert_eq!(stats.active, 0);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

/// How often the accept thread polls its non-blocking listener.
const ACCEPT_POLL: Duration = Duration::from_millis(5);
/// Read and write timeout of the forwarding threads: how quickly they notice a mode change.
const IO_POLL: Duration = Duration::from_millis(20);
/// Upper bound on one upstream connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between two checks of an upstream connect in progress.
const CONNECT_POLL_MAX: Duration = Duration::from_millis(5);
/// Size of the read buffer of one direction of one connection.
const BUF_SIZE: usize = 16 * 1024;
/// Most bytes one direction holds back while a delay is in force; past it the proxy stops reading
/// (the sender sees back-pressure) until the oldest chunk is due.
const MAX_QUEUED: usize = 256 * 1024;
/// Stack size of the proxy's threads (their buffers live on the heap).
const STACK_SIZE: usize = 256 * 1024;
/// Listen backlog.
const BACKLOG: i32 = 1024;

/// How [`FaultProxy::kill_all`] closes the connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// Graceful close: both sockets of every connection are shut down both ways, so the client
    /// and the server each read end-of-file.
    Fin,
    /// Abortive close: `SO_LINGER` is set to zero and the sockets are closed, so the client and
    /// the server each get a TCP reset (`ConnectionReset`).
    Rst,
}

/// Counters of a [`FaultProxy`], as returned by [`FaultProxy::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted so far (forwarded, deaf and blackholed alike).
    pub opened: u64,
    /// Accepted client connections that have ended (both sockets closed).
    pub closed: u64,
    /// Accepted client connections still open: `opened - closed`.
    pub active: u64,
    /// Bytes delivered from clients to the upstream.
    pub bytes_up: u64,
    /// Bytes delivered from the upstream to clients.
    pub bytes_down: u64,
    /// Upstream connects in flight right now.
    pub connecting: u64,
    /// The highest value `connecting` has reached.
    pub max_connecting: u64,
    /// Accepted connections the proxy reset because the upstream connect failed or timed out.
    ///
    /// Attempts refused while [`FaultProxy::refuse`] is in force never reach the proxy (the
    /// kernel refuses them) and are not counted.
    pub refused: u64,
}

/// What the listening side does with new connection attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Refuse,
    Deaf,
}

/// The proxy's listening socket.
enum Listener {
    /// Listening (non-blocking); the accept thread polls it.
    Listening(Socket),
    /// Bound to the proxy's port but not listening: connection attempts are refused by the
    /// kernel, and the port stays ours for the next `listen`.
    Reserved(Socket),
    /// No socket (after drop, or if re-binding the port failed: retried by the accept thread).
    Unbound,
}

/// The listening side, under one lock so mode changes and accepts never interleave.
struct Front {
    mode: Mode,
    listener: Listener,
    /// When set, the accept thread resumes forwarding at that instant (see `down_for`).
    auto_pass_at: Option<Instant>,
}

/// What a connection does with its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Connected upstream and forwarded.
    Forward,
    /// Accepted in deaf mode: held open and never answered; closed by `pass()`.
    Deaf,
    /// Accepted while blackholing: held open and never answered, for good.
    Silent,
}

/// Registered connections and the traffic settings that apply to new ones.
struct Conns {
    map: HashMap<u64, Arc<Conn>>,
    next_id: u64,
    blackhole: bool,
    cut: Option<u64>,
}

/// Monotonic counters (see [`ProxyStats`]).
#[derive(Default)]
struct Counters {
    opened: AtomicU64,
    closed: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    connecting: AtomicU64,
    max_connecting: AtomicU64,
    refused: AtomicU64,
}

/// State shared by the handle and every thread of one proxy.
struct Shared {
    addr: SocketAddr,
    shutdown: AtomicBool,
    front: Mutex<Front>,
    conns: Mutex<Conns>,
    upstream: Mutex<SocketAddr>,
    delay_nanos: AtomicU64,
    swallow: Mutex<Option<Arc<[u8]>>>,
    /// Bumped on every change of `swallow`, so forwarding threads reload it cheaply.
    swallow_gen: AtomicU64,
    /// Connection threads not joined yet.
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Counters,
}

/// `Conn::killed` values.
const ALIVE: u8 = 0;
const KILLED_FIN: u8 = 1;
const KILLED_RST: u8 = 2;

/// One accepted client connection.
struct Conn {
    kind: Kind,
    client: TcpStream,
    /// Set once the upstream connect succeeded.
    server: OnceLock<TcpStream>,
    /// `ALIVE`, `KILLED_FIN` or `KILLED_RST`; set once.
    killed: AtomicU8,
    /// Sticky: nothing is delivered in either direction any more.
    blackholed: AtomicBool,
    /// Sticky: nothing is delivered from the server to the client any more.
    swallowing: AtomicBool,
    /// Bytes (both directions together) left before the connection is reset, if cut.
    budget: Option<AtomicU64>,
    /// Held around each write, one per direction (`Dir::index`), so that once `blackhole()`
    /// returns no further byte is delivered.
    gates: [Mutex<()>; 2],
}

/// Direction of a forwarding thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::Up => 0,
            Dir::Down => 1,
        }
    }
}

/// A chunk held back by a delay.
struct Chunk {
    due: Instant,
    data: Vec<u8>,
    /// Delivering this chunk starts swallowing the server's replies.
    swallow_trigger: bool,
}

/// An in-process TCP proxy that injects network faults between a client and a loopback upstream.
///
/// Start one with [`FaultProxy::start`], point the client at [`FaultProxy::addr`], and switch
/// faults on and off while the client runs. The handle is `Send + Sync`: share it by reference
/// or in an `Arc`. Dropping it stops the proxy: the listening socket is closed, every connection
/// is reset (client and server sides), and every thread of the proxy has ended when `drop`
/// returns (normally within a few tens of milliseconds).
///
/// See the [module documentation](self) for an overview of the modes and faults.
pub struct FaultProxy {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = lock(&self.shared.front).mode;
        f.debug_struct("FaultProxy")
            .field("addr", &self.shared.addr)
            .field("upstream", &*lock(&self.shared.upstream))
            .field("mode", &mode)
            .field("stats", &self.stats())
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy listening on `127.0.0.1` (an ephemeral port) that forwards to `upstream`.
    ///
    /// The proxy starts in [`pass`](Self::pass) mode.
    ///
    /// # Errors
    ///
    /// An [`io::ErrorKind::InvalidInput`] error if `upstream` is not a loopback address (the proxy
    /// only ever talks to this machine), or the error of binding the listening socket or
    /// spawning the accept thread.
    pub fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        check_loopback(upstream)?;
        let socket = bound_socket(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))?;
        start_listening(&socket)?;
        let addr = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("listening socket has no IP address"))?;
        let shared = Arc::new(Shared {
            addr,
            shutdown: AtomicBool::new(false),
            front: Mutex::new(Front {
                mode: Mode::Pass,
                listener: Listener::Listening(socket),
                auto_pass_at: None,
            }),
            conns: Mutex::new(Conns {
                map: HashMap::new(),
                next_id: 0,
                blackhole: false,
                cut: None,
            }),
            upstream: Mutex::new(upstream),
            delay_nanos: AtomicU64::new(0),
            swallow: Mutex::new(None),
            swallow_gen: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
            stats: Counters::default(),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("fp{}-accept", addr.port()))
                .stack_size(STACK_SIZE)
                .spawn(move || accept_loop(&shared))?
        };
        Ok(FaultProxy {
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address clients connect to (`127.0.0.1` and [`port`](Self::port)).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The port the proxy listens on; it stays the same for the proxy's whole life, across
    /// [`refuse`](Self::refuse) and [`pass`](Self::pass).
    pub fn port(&self) -> u16 {
        self.shared.addr.port()
    }

    /// Sends connections accepted from now on to `upstream`; existing connections keep theirs.
    ///
    /// # Panics
    ///
    /// If `upstream` is not a loopback address.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        if let Err(e) = check_loopback(upstream) {
            panic!("FaultProxy::set_upstream: {e}");
        }
        *lock(&self.shared.upstream) = upstream;
    }

    /// Back to normal: new connections are accepted and forwarded, and every fault setting is
    /// cleared (refuse, deaf, a pending [`down_for`](Self::down_for), blackhole, delay, cut and
    /// swallow).
    ///
    /// Connections accepted in [`deaf`](Self::deaf) mode are closed (FIN). Connections already
    /// blackholed stay silent, and connections already swallowing replies keep swallowing:
    /// only connections opened from now on pass. Chunks already held back by a delay are
    /// delivered at the time they were due.
    pub fn pass(&self) {
        self.shared.resume_listening(&mut lock(&self.shared.front));
        {
            let mut conns = lock(&self.shared.conns);
            conns.blackhole = false;
            conns.cut = None;
        }
        self.shared.delay_nanos.store(0, Ordering::SeqCst);
        self.shared.set_swallow(None);
    }

    /// Refuses new connection attempts with `ECONNREFUSED`.
    ///
    /// The proxy stops listening but keeps its port bound (not listening), so connects are
    /// refused by the kernel at once and [`pass`](Self::pass) or [`deaf`](Self::deaf) listen on
    /// the same port again. Clients whose connect had already completed when this is called are
    /// handled as before; existing connections are not touched. (Should re-binding the port
    /// ever fail, the accept thread retries every few milliseconds; connects are refused
    /// meanwhile all the same.)
    pub fn refuse(&self) {
        let mut front = lock(&self.shared.front);
        front.auto_pass_at = None;
        self.shared.stop_listening(&mut front);
    }

    /// Accepts new connections but never answers them: the client's connect succeeds, nothing
    /// is connected upstream, whatever the client sends is read and discarded, and nothing is
    /// ever sent back.
    ///
    /// Such connections stay open until the client closes them, [`pass`](Self::pass) (which
    /// closes them gracefully), [`kill_all`](Self::kill_all) or the drop of the proxy; switching
    /// to another mode leaves them as they are. Existing forwarded connections are not touched.
    pub fn deaf(&self) {
        let mut front = lock(&self.shared.front);
        front.auto_pass_at = None;
        front.mode = Mode::Deaf;
        self.shared.ensure_listening(&mut front);
    }

    /// Refuses new connections now (like [`refuse`](Self::refuse)) and resumes forwarding them
    /// `d` later (within a few milliseconds).
    ///
    /// Resuming affects the listening side only, as the listening part of
    /// [`pass`](Self::pass) does (deaf connections are closed): traffic faults set in between
    /// (delay, blackhole, cut, swallow) stay in force. Calling [`pass`](Self::pass),
    /// [`refuse`](Self::refuse), [`deaf`](Self::deaf) or `down_for` again before then cancels the
    /// pending resume.
    pub fn down_for(&self, d: Duration) {
        let mut front = lock(&self.shared.front);
        self.shared.stop_listening(&mut front);
        front.auto_pass_at = Some(Instant::now() + d);
    }

    /// Adds `d` of latency to every chunk forwarded, in both directions, on existing and new
    /// connections; `Duration::ZERO` removes it.
    ///
    /// This is latency, not a bandwidth limit: a chunk read at `t` is delivered at `t + d`
    /// while the proxy keeps reading, so back-to-back messages each arrive about `d` late, not
    /// `d` after one another. An echo round trip through the proxy therefore takes at least
    /// `2 d`. Order is always kept.
    pub fn delay(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.shared.delay_nanos.store(nanos, Ordering::SeqCst);
    }

    /// Stops forwarding in both directions on every existing connection and on new ones, while
    /// keeping every socket open: the peers see a silent, half-open connection (no data, no
    /// FIN, no reset), as if the network dropped every packet.
    ///
    /// Data the proxy reads from a blackholed connection is discarded, including chunks held
    /// back by a delay; once this returns, not one more byte is delivered on the connections it
    /// blackholed. New connections are accepted but never connected upstream. A blackholed
    /// connection stays blackholed for good, even after [`pass`](Self::pass); it ends when the
    /// client closes it (the proxy then closes the server side too, so no server session is
    /// left behind), with [`kill_all`](Self::kill_all), or when the proxy is dropped. If the
    /// server closes its side, the client is not told.
    pub fn blackhole(&self) {
        let victims: Vec<Arc<Conn>> = {
            let mut conns = lock(&self.shared.conns);
            conns.blackhole = true;
            conns.map.values().cloned().collect()
        };
        for conn in &victims {
            conn.blackholed.store(true, Ordering::SeqCst);
        }
        // Wait for writes already in progress, so nothing is delivered after we return.
        for conn in &victims {
            for gate in &conn.gates {
                drop(lock(gate));
            }
        }
    }

    /// Closes every current connection, deaf and blackholed ones included: [`Kill::Fin`] shuts
    /// both sockets down both ways (the peers read end-of-file), [`Kill::Rst`] closes them with
    /// `SO_LINGER` 0 (the peers get a reset). Connections whose upstream connect is still in
    /// flight are closed too.
    ///
    /// The FINs are sent before this returns; the resets follow within milliseconds, when the
    /// forwarding threads (woken at once) close their sockets. New connections still follow the
    /// current mode.
    pub fn kill_all(&self, how: Kill) {
        for conn in self.shared.snapshot() {
            conn.kill(how);
        }
    }

    /// Every connection accepted from now on is reset (RST to both sides) once `n` bytes have
    /// been delivered through it, counting both directions together. A chunk that would cross
    /// the limit is truncated, so exactly `n` bytes are delivered; with `n == 0` new connections
    /// are reset as soon as they are accepted, before any upstream connect.
    ///
    /// Existing connections are not affected; [`pass`](Self::pass) clears the setting.
    pub fn cut_after_bytes(&self, n: u64) {
        lock(&self.shared.conns).cut = Some(n);
    }

    /// On every connection, existing and new: as soon as the client sends bytes containing
    /// `pattern` (also when it is split across reads), that chunk is still forwarded to the
    /// server, but from then on every byte from the server to the client is dropped. The
    /// connection stays open: the client waits for a reply that never comes, while the server
    /// has received (and executed) the request.
    ///
    /// Only bytes the client sends after this call are searched. A connection that started
    /// swallowing keeps doing so for good (a server FIN or reset is not passed on either);
    /// [`pass`](Self::pass) clears the pattern for the others. An empty pattern matches the
    /// first chunk the client sends.
    pub fn swallow_reply_after(&self, pattern: &[u8]) {
        self.shared.set_swallow(Some(Arc::from(pattern)));
    }

    /// A snapshot of the proxy's counters.
    ///
    /// Byte counters are bumped just after each write to the destination socket, so right after
    /// a client has read a reply they may trail it by a moment; poll until they settle.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.stats;
        let closed = c.closed.load(Ordering::SeqCst);
        let opened = c.opened.load(Ordering::SeqCst);
        ProxyStats {
            opened,
            closed,
            active: opened.saturating_sub(closed),
            bytes_up: c.bytes_up.load(Ordering::SeqCst),
            bytes_down: c.bytes_down.load(Ordering::SeqCst),
            connecting: c.connecting.load(Ordering::SeqCst),
            max_connecting: c.max_connecting.load(Ordering::SeqCst),
            refused: c.refused.load(Ordering::SeqCst),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.shutdown.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        {
            let mut front = lock(&shared.front);
            front.listener = Listener::Unbound;
            front.auto_pass_at = None;
        }
        for conn in shared.snapshot() {
            conn.kill(Kill::Rst);
        }
        let threads = std::mem::take(&mut *lock(&shared.threads));
        for handle in threads {
            let _ = handle.join();
        }
    }
}

/// Locks `m`, ignoring poisoning (every critical section leaves the state consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn check_loopback(addr: SocketAddr) -> io::Result<()> {
    let loopback = match addr.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    if loopback {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fault proxy upstream {addr} is not a loopback address"),
        ))
    }
}

/// A TCP socket bound to `addr` (not listening yet).
fn bound_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Lets the port be bound again while connections accepted on it (or their TIME_WAIT
    // remains) exist. On Windows the option means something else, so it is left alone there.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(addr))?;
    Ok(socket)
}

fn start_listening(socket: &Socket) -> io::Result<()> {
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

impl Shared {
    fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    fn snapshot(&self) -> Vec<Arc<Conn>> {
        lock(&self.conns).map.values().cloned().collect()
    }

    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::SeqCst))
    }

    fn set_swallow(&self, pattern: Option<Arc<[u8]>>) {
        let mut swallow = lock(&self.swallow);
        *swallow = pattern;
        self.swallow_gen.fetch_add(1, Ordering::SeqCst);
    }

    fn count(&self, dir: Dir, n: usize) {
        let counter = match dir {
            Dir::Up => &self.stats.bytes_up,
            Dir::Down => &self.stats.bytes_down,
        };
        counter.fetch_add(n as u64, Ordering::SeqCst);
    }

    /// Switches to `Refuse`: connections already completed are handled under the old mode, then
    /// the listening socket is replaced by a bound, non-listening one on the same port.
    fn stop_listening(self: &Arc<Self>, front: &mut Front) {
        if let Listener::Listening(listener) = &front.listener {
            self.accept_pending(listener, front.mode);
        }
        front.mode = Mode::Refuse;
        if matches!(front.listener, Listener::Listening(_)) {
            front.listener = Listener::Unbound; // closes the listening socket
        }
        self.ensure_bound(front);
    }

    /// Switches to `Pass`, listening again, and closes the deaf connections.
    fn resume_listening(&self, front: &mut Front) {
        front.auto_pass_at = None;
        front.mode = Mode::Pass;
        self.ensure_listening(front);
        let deaf: Vec<Arc<Conn>> = lock(&self.conns)
            .map
            .values()
            .filter(|c| c.kind == Kind::Deaf)
            .cloned()
            .collect();
        for conn in deaf {
            conn.kill(Kill::Fin);
        }
    }

    /// Makes the listener listen (for `Pass` and `Deaf`).
    fn ensure_listening(&self, front: &mut Front) {
        front.listener = match std::mem::replace(&mut front.listener, Listener::Unbound) {
            Listener::Listening(socket) => Listener::Listening(socket),
            Listener::Reserved(socket) => match start_listening(&socket) {
                Ok(()) => Listener::Listening(socket),
                Err(_) => Listener::Unbound,
            },
            Listener::Unbound => Listener::Unbound,
        };
        self.ensure_bound(front);
    }

    /// If the port is not bound (re-binding failed earlier), tries again, as the mode requires.
    fn ensure_bound(&self, front: &mut Front) {
        if !matches!(front.listener, Listener::Unbound) || self.is_shutdown() {
            return;
        }
        let Ok(socket) = bound_socket(self.addr) else {
            return;
        };
        front.listener = if front.mode == Mode::Refuse {
            Listener::Reserved(socket)
        } else {
            match start_listening(&socket) {
                Ok(()) => Listener::Listening(socket),
                Err(_) => Listener::Unbound,
            }
        };
    }

    /// Accepts every connection waiting on `listener` and hands each to `mode`.
    fn accept_pending(self: &Arc<Self>, listener: &Socket, mode: Mode) {
        loop {
            match listener.accept() {
                Ok((socket, _)) => self.admit(TcpStream::from(socket), mode),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                // Out of descriptors or similar: try again at the next poll.
                Err(_) => return,
            }
        }
    }

    /// Registers an accepted client and starts its thread.
    fn admit(self: &Arc<Self>, client: TcpStream, mode: Mode) {
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let (id, conn) = {
            let mut conns = lock(&self.conns);
            self.stats.opened.fetch_add(1, Ordering::SeqCst);
            let kind = if mode == Mode::Deaf {
                Kind::Deaf
            } else if conns.blackhole {
                Kind::Silent
            } else {
                Kind::Forward
            };
            if kind == Kind::Forward && conns.cut == Some(0) {
                drop(conns);
                let _ = SockRef::from(&client).set_linger(Some(Duration::ZERO));
                drop(client);
                self.stats.closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            let conn = Arc::new(Conn {
                kind,
                client,
                server: OnceLock::new(),
                killed: AtomicU8::new(ALIVE),
                blackholed: AtomicBool::new(kind == Kind::Silent),
                swallowing: AtomicBool::new(false),
                budget: if kind == Kind::Forward {
                    conns.cut.map(AtomicU64::new)
                } else {
                    None
                },
                gates: [Mutex::new(()), Mutex::new(())],
            });
            let id = conns.next_id;
            conns.next_id += 1;
            conns.map.insert(id, Arc::clone(&conn));
            (id, conn)
        };
        let spawned = {
            let conn = Arc::clone(&conn);
            let shared = Arc::clone(self);
            thread::Builder::new()
                .name(format!("fp{}-conn", self.addr.port()))
                .stack_size(STACK_SIZE)
                .spawn(move || {
                    run_conn(&shared, &conn);
                    shared.deregister(id);
                })
        };
        match spawned {
            Ok(handle) => lock(&self.threads).push(handle),
            Err(_) => {
                conn.kill(Kill::Rst);
                conn.finalize();
                self.deregister(id);
            }
        }
    }

    fn deregister(&self, id: u64) {
        if lock(&self.conns).map.remove(&id).is_some() {
            self.stats.closed.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Joins the connection threads that have finished.
    fn reap(&self) {
        let finished: Vec<JoinHandle<()>> = {
            let mut threads = lock(&self.threads);
            let (finished, running) = std::mem::take(&mut *threads)
                .into_iter()
                .partition(|h| h.is_finished());
            *threads = running;
            finished
        };
        for handle in finished {
            let _ = handle.join();
        }
    }
}

fn accept_loop(shared: &Arc<Shared>) {
    while !shared.is_shutdown() {
        {
            let mut front = lock(&shared.front);
            if front.auto_pass_at.is_some_and(|at| Instant::now() >= at) {
                shared.resume_listening(&mut front);
            }
            shared.ensure_bound(&mut front);
            if let Listener::Listening(listener) = &front.listener {
                shared.accept_pending(listener, front.mode);
            }
        }
        shared.reap();
        thread::sleep(ACCEPT_POLL);
    }
}

impl Conn {
    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst) != ALIVE
    }

    /// Whether nothing may be delivered in `dir` any more.
    fn silenced(&self, dir: Dir) -> bool {
        self.blackholed.load(Ordering::SeqCst)
            || (dir == Dir::Down && self.swallowing.load(Ordering::SeqCst))
    }

    fn sockets(&self) -> impl Iterator<Item = &TcpStream> {
        std::iter::once(&self.client).chain(self.server.get())
    }

    /// Closes the connection `how`; the first kill wins. The forwarding threads are woken at
    /// once (a shut-down socket reads end-of-file) and close the sockets when they exit.
    fn kill(&self, how: Kill) {
        let value = match how {
            Kill::Fin => KILLED_FIN,
            Kill::Rst => KILLED_RST,
        };
        if self
            .killed
            .compare_exchange(ALIVE, value, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        for socket in self.sockets() {
            match how {
                Kill::Fin => {
                    let _ = socket.shutdown(Shutdown::Both);
                }
                Kill::Rst => {
                    let _ = SockRef::from(socket).set_linger(Some(Duration::ZERO));
                    // Wakes a blocked reader without sending anything to the peer.
                    let _ = socket.shutdown(Shutdown::Read);
                }
            }
        }
    }

    /// Applies the kill to every socket again (the server socket may have been set after the
    /// kill), just before the sockets are closed.
    fn finalize(&self) {
        match self.killed.load(Ordering::SeqCst) {
            KILLED_FIN => {
                for socket in self.sockets() {
                    let _ = socket.shutdown(Shutdown::Both);
                }
            }
            KILLED_RST => {
                for socket in self.sockets() {
                    let _ = SockRef::from(socket).set_linger(Some(Duration::ZERO));
                }
            }
            _ => {}
        }
    }
}

/// The body of a connection thread.
fn run_conn(shared: &Arc<Shared>, conn: &Arc<Conn>) {
    match conn.kind {
        Kind::Deaf | Kind::Silent => hold(shared, conn),
        Kind::Forward => forward(shared, conn),
    }
    conn.finalize();
}

/// Reads and discards whatever the client sends until it closes, or the connection is killed.
fn hold(shared: &Shared, conn: &Conn) {
    let mut buf = vec![0u8; 4096];
    let _ = conn.client.set_read_timeout(Some(IO_POLL));
    while !conn.is_killed() && !shared.is_shutdown() {
        match (&conn.client).read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

/// Connects upstream, then forwards both directions (this thread up, a second one down).
fn forward(shared: &Arc<Shared>, conn: &Arc<Conn>) {
    let upstream = *lock(&shared.upstream);
    let stats = &shared.stats;
    let now = stats.connecting.fetch_add(1, Ordering::SeqCst) + 1;
    stats.max_connecting.fetch_max(now, Ordering::SeqCst);
    let connected = connect_upstream(upstream, shared, conn);
    stats.connecting.fetch_sub(1, Ordering::SeqCst);
    let server = match connected {
        Ok(server) => server,
        Err(_) => {
            if !conn.is_killed() && !shared.is_shutdown() {
                stats.refused.fetch_add(1, Ordering::SeqCst);
            }
            conn.kill(Kill::Rst);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    if conn.server.set(server).is_err() || conn.is_killed() {
        return;
    }
    let down = {
        let shared = Arc::clone(shared);
        let conn = Arc::clone(conn);
        thread::Builder::new()
            .name(format!("fp{}-down", shared.addr.port()))
            .stack_size(STACK_SIZE)
            .spawn(move || pump(&shared, &conn, Dir::Down))
    };
    match down {
        Ok(down) => {
            pump(shared, conn, Dir::Up);
            let _ = down.join();
        }
        Err(_) => conn.kill(Kill::Rst),
    }
}

/// `EINPROGRESS` where its value is known: a non-blocking connect that has started.
#[cfg(any(target_os = "linux", target_os = "android"))]
const EINPROGRESS: Option<i32> = Some(115);
#[cfg(any(
    target_vendor = "apple",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
))]
const EINPROGRESS: Option<i32> = Some(36);
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_vendor = "apple",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
)))]
const EINPROGRESS: Option<i32> = None;

/// Connects to `upstream` within `CONNECT_TIMEOUT`, giving up early if the connection is killed
/// or the proxy shuts down (so dropping the proxy never waits for a hanging connect).
fn connect_upstream(upstream: SocketAddr, shared: &Shared, conn: &Conn) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(upstream),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    match socket.connect(&SockAddr::from(upstream)) {
        Ok(()) => {}
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock
                || (e.raw_os_error().is_some() && e.raw_os_error() == EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut pause = Duration::from_micros(50);
    loop {
        if let Some(e) = socket.take_error()? {
            return Err(e);
        }
        match socket.peer_addr() {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
            Err(e) => return Err(e),
        }
        if conn.is_killed() || shared.is_shutdown() {
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {upstream} timed out"),
            ));
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(CONNECT_POLL_MAX);
    }
    socket.set_nonblocking(false)?;
    Ok(TcpStream::from(socket))
}

/// Finds a pattern in the client's byte stream, across read boundaries.
#[derive(Default)]
struct Matcher {
    generation: Option<u64>,
    pattern: Option<Arc<[u8]>>,
    /// The last `pattern.len() - 1` bytes seen.
    tail: Vec<u8>,
}

impl Matcher {
    /// Feeds the next chunk; true if the pattern ends inside it.
    fn feed(&mut self, shared: &Shared, data: &[u8]) -> bool {
        let generation = shared.swallow_gen.load(Ordering::SeqCst);
        if self.generation != Some(generation) {
            self.generation = Some(generation);
            self.pattern = lock(&shared.swallow).clone();
            self.tail.clear();
        }
        let Some(pattern) = &self.pattern else {
            return false;
        };
        if pattern.is_empty() {
            return true;
        }
        let keep = pattern.len() - 1;
        let found = contains(data, pattern) || {
            // Occurrences that start in the tail end within the first `keep` bytes of `data`.
            let mut seam = self.tail.clone();
            seam.extend_from_slice(&data[..data.len().min(keep)]);
            contains(&seam, pattern)
        };
        if data.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - keep..]);
        } else {
            self.tail.extend_from_slice(data);
            let excess = self.tail.len().saturating_sub(keep);
            self.tail.drain(..excess);
        }
        found
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether a forwarding thread goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

/// Forwards one direction of a connection until end-of-file, an error or a kill.
fn pump(shared: &Shared, conn: &Conn, dir: Dir) {
    let Some(server) = conn.server.get() else {
        return;
    };
    let (src, dst) = match dir {
        Dir::Up => (&conn.client, server),
        Dir::Down => (server, &conn.client),
    };
    let _ = dst.set_write_timeout(Some(IO_POLL));
    let mut read_timeout = None;
    let mut buf = vec![0u8; BUF_SIZE];
    let mut queue: VecDeque<Chunk> = VecDeque::new();
    let mut queued = 0usize;
    let mut matcher = Matcher::default();
    let mut src_open = true;
    loop {
        if conn.is_killed() || shared.is_shutdown() {
            return;
        }
        if conn.silenced(dir) && !queue.is_empty() {
            queue.clear();
            queued = 0;
        }
        let now = Instant::now();
        while queue.front().is_some_and(|c| c.due <= now) {
            let Some(chunk) = queue.pop_front() else {
                break;
            };
            queued -= chunk.data.len();
            if deliver(shared, conn, dir, dst, &chunk.data, chunk.swallow_trigger) == Flow::Stop {
                return;
            }
        }
        if !src_open && queue.is_empty() {
            end_of_stream(conn, dir, dst);
            return;
        }
        let wait = match queue.front() {
            Some(c) => c
                .due
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), IO_POLL),
            None => IO_POLL,
        };
        if !src_open || queued >= MAX_QUEUED {
            thread::sleep(wait);
            continue;
        }
        if read_timeout != Some(wait) {
            let _ = src.set_read_timeout(Some(wait));
            read_timeout = Some(wait);
        }
        let n = match (&*src).read(&mut buf) {
            Ok(0) => {
                src_open = false;
                continue;
            }
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(_) => {
                // Reset by the peer (or a local error). A silenced server side is not passed on.
                if !(dir == Dir::Down && conn.silenced(dir)) {
                    conn.kill(Kill::Rst);
                }
                return;
            }
        };
        if conn.silenced(dir) {
            continue;
        }
        let data = &buf[..n];
        let trigger =
            dir == Dir::Up && !conn.swallowing.load(Ordering::SeqCst) && matcher.feed(shared, data);
        let delay = shared.delay();
        if delay.is_zero() && queue.is_empty() {
            if deliver(shared, conn, dir, dst, data, trigger) == Flow::Stop {
                return;
            }
        } else {
            let mut due = Instant::now() + delay;
            if let Some(last) = queue.back() {
                due = due.max(last.due);
            }
            queued += n;
            queue.push_back(Chunk {
                due,
                data: data.to_vec(),
                swallow_trigger: trigger,
            });
        }
    }
}

/// The source of `dir` has ended and everything before it was delivered.
fn end_of_stream(conn: &Conn, dir: Dir, dst: &TcpStream) {
    if conn.is_killed() {
        return;
    }
    if conn.blackholed.load(Ordering::SeqCst) {
        if dir == Dir::Up {
            // The client hung up on a dead connection: hang up on the server as well.
            conn.kill(Kill::Fin);
        }
        // The server hung up: a blackholed client is not told.
        return;
    }
    if dir == Dir::Down && conn.silenced(dir) {
        return;
    }
    let _ = dst.shutdown(Shutdown::Write);
}

/// Delivers one chunk read from the source of `dir`, applying swallow, blackhole and cut.
fn deliver(
    shared: &Shared,
    conn: &Conn,
    dir: Dir,
    dst: &TcpStream,
    data: &[u8],
    swallow_trigger: bool,
) -> Flow {
    if swallow_trigger {
        conn.swallowing.store(true, Ordering::SeqCst);
    }
    if conn.silenced(dir) {
        return Flow::Go;
    }
    let (data, cut) = match &conn.budget {
        None => (data, false),
        Some(budget) => {
            let want = data.len() as u64;
            let mut left = budget.load(Ordering::SeqCst);
            let take = loop {
                let take = left.min(want);
                match budget.compare_exchange_weak(
                    left,
                    left - take,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => break take,
                    Err(actual) => left = actual,
                }
            };
            // `take <= data.len()`, so the conversion cannot truncate. The budget is spent when
            // this chunk took all that was left (possibly nothing).
            (&data[..take as usize], take == left)
        }
    };
    let mut rest = data;
    while !rest.is_empty() {
        if conn.is_killed() || shared.is_shutdown() {
            return Flow::Stop;
        }
        let written = {
            let _gate = lock(&conn.gates[dir.index()]);
            if conn.silenced(dir) {
                return Flow::Go;
            }
            (&*dst).write(rest)
        };
        match written {
            Ok(0) => {
                conn.kill(Kill::Rst);
                return Flow::Stop;
            }
            Ok(n) => {
                shared.count(dir, n);
                rest = &rest[n..];
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => {
                // The destination is gone.
                conn.kill(Kill::Rst);
                return Flow::Stop;
            }
        }
    }
    if cut {
        conn.kill(Kill::Rst);
        return Flow::Stop;
    }
    Flow::Go
}
