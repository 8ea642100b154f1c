//! Tests of the fault-injection proxy against a small std echo server.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use momopool_tests::proxy::{FaultProxy, Kill, ProxyStats};

/// Generous bound for things that should happen "at once".
const SOON: Duration = Duration::from_secs(2);

/// A loopback echo server that records what it receives; stops (and joins its threads) on drop.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    received: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Echo {
    fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (accepted, received, stop) = (accepted.clone(), received.clone(), stop.clone());
            thread::spawn(move || {
                let mut conns = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            let (received, stop) = (received.clone(), stop.clone());
                            conns.push(thread::spawn(move || echo(stream, &received, &stop)));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(2));
                        }
                        Err(e) => panic!("echo accept: {e}"),
                    }
                }
                for conn in conns {
                    conn.join().unwrap();
                }
            })
        };
        Echo {
            addr,
            accepted,
            received,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().unwrap();
        }
    }
}

fn echo(mut stream: TcpStream, received: &Mutex<Vec<u8>>, stop: &AtomicBool) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                received.lock().unwrap().extend_from_slice(&buf[..n]);
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(SOON)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Writes `msg` and reads back exactly as many bytes.
fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    stream.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back).unwrap();
    back
}

/// Asserts that nothing (neither data nor EOF nor an error) arrives for `d`.
fn assert_silent(stream: &mut TcpStream, d: Duration) {
    stream.set_read_timeout(Some(d)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(0) => panic!("expected silence, got EOF"),
        Ok(n) => panic!("expected silence, got {:?}", &buf[..n]),
        Err(e) => panic!("expected silence, got {e}"),
    }
    stream.set_read_timeout(Some(SOON)).unwrap();
}

/// Reads until EOF or an error, returning the bytes read and how it ended.
fn read_to_end(stream: &mut TcpStream) -> (Vec<u8>, Result<(), ErrorKind>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (data, Ok(())),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) => return (data, Err(e.kind())),
        }
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + SOON;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn wait_for_stats(proxy: &FaultProxy, what: &str, cond: impl Fn(&ProxyStats) -> bool) {
    wait_for(what, || cond(&proxy.stats()));
}

#[test]
fn handle_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + std::fmt::Debug>() {}
    assert_send_sync::<FaultProxy>();
    assert_send_sync::<ProxyStats>();
    assert_send_sync::<Kill>();
}

#[test]
fn pass_forwards_both_ways_and_counts() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    assert_eq!(proxy.addr().port(), proxy.port());
    assert!(proxy.addr().ip().is_loopback());

    let mut a = connect(proxy.addr());
    let mut b = connect(proxy.addr());
    assert_eq!(round_trip(&mut a, b"hello"), b"hello");
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut b2 = b.try_clone().unwrap();
        let big = big.clone();
        thread::spawn(move || b2.write_all(&big).unwrap())
    };
    let mut back = vec![0u8; big.len()];
    b.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back, big);

    let total = 5 + big.len() as u64;
    // The counters are bumped just after each write, so they may trail the client a little.
    wait_for_stats(&proxy, "the byte counts", |s| s.bytes_down == total);
    let stats = proxy.stats();
    assert_eq!(stats.opened, 2);
    assert_eq!(stats.active, 2);
    assert_eq!(stats.closed, 0);
    assert_eq!(stats.bytes_up, total);
    assert_eq!(stats.bytes_down, total);
    assert_eq!(stats.connecting, 0);
    assert!(stats.max_connecting >= 1);
    assert_eq!(stats.refused, 0);
    assert_eq!(echo.accepted(), 2);

    // A client half-close reaches the server, whose close comes back as EOF.
    a.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut a), (Vec::new(), Ok(())));
    drop(b);
    wait_for_stats(&proxy, "both connections to close", |s| {
        s.closed == 2 && s.active == 0
    });
}

#[test]
fn refuse_then_pass_listens_on_the_same_port() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let port = proxy.port();
    let mut existing = connect(proxy.addr());
    assert_eq!(round_trip(&mut existing, b"before"), b"before");

    proxy.refuse();
    for _ in 0..3 {
        let err = TcpStream::connect(proxy.addr()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    }
    // Existing connections are not touched.
    assert_eq!(round_trip(&mut existing, b"during"), b"during");

    proxy.pass();
    assert_eq!(proxy.port(), port);
    let mut again = connect(proxy.addr());
    assert_eq!(round_trip(&mut again, b"after"), b"after");
    assert_eq!(round_trip(&mut existing, b"still"), b"still");

    // Refuse twice, and deaf straight after refuse, also work.
    proxy.refuse();
    proxy.refuse();
    assert!(TcpStream::connect(proxy.addr()).is_err());
    proxy.deaf();
    let mut deaf = connect(proxy.addr());
    assert_silent(&mut deaf, Duration::from_millis(50));
    proxy.pass();
    assert_eq!(read_to_end(&mut deaf), (Vec::new(), Ok(())));
    assert_eq!(round_trip(&mut connect(proxy.addr()), b"x"), b"x");
    assert_eq!(proxy.stats().opened, 4);
}

#[test]
fn down_for_refuses_then_passes() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let start = Instant::now();
    proxy.down_for(Duration::from_millis(300));
    let err = TcpStream::connect(proxy.addr()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    let mut stream = loop {
        match TcpStream::connect(proxy.addr()) {
            Ok(stream) => break stream,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
                assert!(start.elapsed() < SOON, "still refused after {SOON:?}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    };
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(290),
        "up after {elapsed:?}"
    );
    assert!(elapsed < Duration::from_millis(600), "up after {elapsed:?}");
    stream.set_read_timeout(Some(SOON)).unwrap();
    assert_eq!(round_trip(&mut stream, b"back"), b"back");

    // A pass() before the time is up ends the outage at once; a later refuse() is not undone.
    proxy.down_for(Duration::from_millis(100));
    proxy.pass();
    drop(connect(proxy.addr()));
    proxy.down_for(Duration::from_millis(50));
    proxy.refuse();
    thread::sleep(Duration::from_millis(150));
    assert!(TcpStream::connect(proxy.addr()).is_err());
}

#[test]
fn deaf_accepts_but_never_answers() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    proxy.deaf();
    let mut stream = connect(proxy.addr());
    stream.write_all(b"hello?").unwrap();
    assert_silent(&mut stream, Duration::from_millis(200));
    let stats = proxy.stats();
    assert_eq!(stats.opened, 1);
    assert_eq!(stats.active, 1);
    assert_eq!(stats.bytes_up, 0);
    assert_eq!(echo.accepted(), 0, "deaf must not connect upstream");

    // pass() closes the deaf connection and forwards new ones.
    proxy.pass();
    assert_eq!(read_to_end(&mut stream), (Vec::new(), Ok(())));
    assert_eq!(round_trip(&mut connect(proxy.addr()), b"hi"), b"hi");
    assert_eq!(echo.accepted(), 1);
}

#[test]
fn delay_adds_latency_without_serialising_chunks() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut stream = connect(proxy.addr());
    let start = Instant::now();
    assert_eq!(round_trip(&mut stream, b"fast"), b"fast");
    let undelayed = start.elapsed();
    assert!(undelayed < Duration::from_millis(100), "{undelayed:?}");

    proxy.delay(Duration::from_millis(100));
    let start = Instant::now();
    assert_eq!(round_trip(&mut stream, b"slow"), b"slow");
    let delayed = start.elapsed();
    // 100 ms each way.
    assert!(delayed >= Duration::from_millis(200), "{delayed:?}");
    assert!(delayed < Duration::from_millis(600), "{delayed:?}");

    // Five messages 10 ms apart: each is 200 ms late, not 200 ms after the previous one.
    let start = Instant::now();
    for i in 0..5u8 {
        stream.write_all(&[b'0' + i]).unwrap();
        thread::sleep(Duration::from_millis(10));
    }
    let mut back = [0u8; 5];
    stream.read_exact(&mut back).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(&back, b"01234");
    assert!(elapsed >= Duration::from_millis(240), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(700), "{elapsed:?}");

    proxy.delay(Duration::ZERO);
    let start = Instant::now();
    assert_eq!(round_trip(&mut stream, b"fast again"), b"fast again");
    assert!(start.elapsed() < Duration::from_millis(100));
}

#[test]
fn blackhole_silences_existing_and_new_connections() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut existing = connect(proxy.addr());
    assert_eq!(round_trip(&mut existing, b"alive"), b"alive");

    proxy.blackhole();
    existing.write_all(b"anyone there?").unwrap();
    assert_silent(&mut existing, Duration::from_millis(300));
    assert_eq!(
        echo.received(),
        b"alive",
        "blackholed bytes reached the server"
    );
    let before = proxy.stats();

    // A new connection is accepted but silent, and never reaches the server.
    let mut new = connect(proxy.addr());
    new.write_all(b"hello").unwrap();
    assert_silent(&mut new, Duration::from_millis(100));
    assert_eq!(echo.accepted(), 1);

    // pass(): new connections work again; blackholed ones stay silent (and open).
    proxy.pass();
    let mut fresh = connect(proxy.addr());
    assert_eq!(round_trip(&mut fresh, b"fresh"), b"fresh");
    existing.write_all(b"still there?").unwrap();
    assert_silent(&mut existing, Duration::from_millis(100));
    assert_silent(&mut new, Duration::from_millis(50));
    wait_for_stats(&proxy, "the byte counts", |s| {
        s.bytes_down == before.bytes_down + 5
    });
    let after = proxy.stats();
    assert_eq!(after.bytes_up - before.bytes_up, 5);
    assert_eq!(after.active, 3);

    // A client closing a blackholed connection also closes the server side.
    drop(existing);
    drop(new);
    wait_for_stats(&proxy, "blackholed connections to close", |s| s.active == 1);
    assert_eq!(round_trip(&mut fresh, b"!"), b"!");
}

#[test]
fn kill_all_fin_gives_eof() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut a = connect(proxy.addr());
    let mut b = connect(proxy.addr());
    assert_eq!(round_trip(&mut a, b"a"), b"a");
    assert_eq!(round_trip(&mut b, b"b"), b"b");
    proxy.kill_all(Kill::Fin);
    assert_eq!(read_to_end(&mut a), (Vec::new(), Ok(())));
    assert_eq!(read_to_end(&mut b), (Vec::new(), Ok(())));
    wait_for_stats(&proxy, "killed connections to close", |s| {
        s.closed == 2 && s.active == 0
    });
    // New connections follow the current mode (pass).
    assert_eq!(round_trip(&mut connect(proxy.addr()), b"new"), b"new");
}

#[test]
fn kill_all_rst_gives_reset() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut a = connect(proxy.addr());
    assert_eq!(round_trip(&mut a, b"a"), b"a");
    proxy.deaf();
    let mut deaf = connect(proxy.addr());
    wait_for_stats(&proxy, "the deaf connection", |s| s.opened == 2);
    proxy.kill_all(Kill::Rst);
    assert_eq!(
        read_to_end(&mut a),
        (Vec::new(), Err(ErrorKind::ConnectionReset))
    );
    assert_eq!(
        read_to_end(&mut deaf),
        (Vec::new(), Err(ErrorKind::ConnectionReset))
    );
    wait_for_stats(&proxy, "killed connections to close", |s| s.active == 0);
    // Still deaf for new connections.
    let mut later = connect(proxy.addr());
    assert_silent(&mut later, Duration::from_millis(50));
}

#[test]
fn cut_after_bytes_resets_new_connections() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut old = connect(proxy.addr());
    assert_eq!(round_trip(&mut old, b"old"), b"old");

    wait_for_stats(&proxy, "the byte counts", |s| s.bytes_down == 3);
    proxy.cut_after_bytes(10);
    let before = proxy.stats();
    let mut cut = connect(proxy.addr());
    // 4 up + 4 down = 8 bytes.
    assert_eq!(round_trip(&mut cut, b"abcd"), b"abcd");
    // Only "ef" fits in the budget; then both sides are reset.
    cut.write_all(b"efgh").unwrap();
    let (data, end) = read_to_end(&mut cut);
    assert!(data.is_empty(), "{data:?}");
    assert_eq!(end, Err(ErrorKind::ConnectionReset));
    wait_for_stats(&proxy, "the cut connection to close", |s| {
        s.closed == before.closed + 1
    });
    let after = proxy.stats();
    assert_eq!(after.bytes_up - before.bytes_up, 6);
    assert_eq!(after.bytes_down - before.bytes_down, 4);
    let received = echo.received();
    assert!(received.starts_with(b"oldabcd"), "{received:?}");
    assert!(b"oldabcdef".starts_with(&received), "{received:?}");

    // The connection opened before the setting is not cut.
    let long = [b'x'; 100];
    assert_eq!(round_trip(&mut old, &long), long);

    // Zero: reset at once. pass() clears the setting.
    proxy.cut_after_bytes(0);
    let mut zero = connect(proxy.addr());
    let _ = zero.write_all(b"hi");
    let (data, end) = read_to_end(&mut zero);
    assert!(data.is_empty());
    assert_eq!(end, Err(ErrorKind::ConnectionReset));
    proxy.pass();
    assert_eq!(round_trip(&mut connect(proxy.addr()), &long), long);
}

#[test]
fn swallow_reply_after_pattern() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let mut existing = connect(proxy.addr());
    proxy.swallow_reply_after(b"COMMIT");

    assert_eq!(round_trip(&mut existing, b"BEGIN;"), b"BEGIN;");
    assert_eq!(round_trip(&mut existing, b"INSERT 1;"), b"INSERT 1;");
    // The pattern split across two reads.
    assert_eq!(round_trip(&mut existing, b"COM"), b"COM");
    existing.write_all(b"MIT;").unwrap();
    wait_for("the server to get the COMMIT", || {
        echo.received().ends_with(b"COMMIT;")
    });
    assert_silent(&mut existing, Duration::from_millis(200));
    // Everything after it is swallowed too; the connection stays open.
    existing.write_all(b"SELECT 1;").unwrap();
    wait_for("the server to get the SELECT", || {
        echo.received().ends_with(b"SELECT 1;")
    });
    assert_silent(&mut existing, Duration::from_millis(100));

    // Other connections are unaffected until they send the pattern themselves.
    let mut other = connect(proxy.addr());
    assert_eq!(round_trip(&mut other, b"hello"), b"hello");
    other.write_all(b"COMMIT").unwrap();
    assert_silent(&mut other, Duration::from_millis(100));

    // After pass(), new connections may COMMIT.
    proxy.pass();
    let mut new = connect(proxy.addr());
    assert_eq!(round_trip(&mut new, b"COMMIT"), b"COMMIT");
}

#[test]
fn upstream_unreachable_resets_the_client() {
    let echo = Echo::start();
    // A port with nothing listening.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = FaultProxy::start(closed).unwrap();
    let mut stream = connect(proxy.addr());
    let (data, end) = read_to_end(&mut stream);
    assert!(data.is_empty());
    assert_eq!(end, Err(ErrorKind::ConnectionReset));
    wait_for_stats(&proxy, "the refused count", |s| {
        s.refused == 1 && s.active == 0
    });

    proxy.set_upstream(echo.addr);
    assert_eq!(round_trip(&mut connect(proxy.addr()), b"ok"), b"ok");
}

#[test]
fn drop_stops_everything() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let addr = proxy.addr();
    let mut forwarded = connect(addr);
    assert_eq!(round_trip(&mut forwarded, b"hi"), b"hi");
    proxy.delay(Duration::from_millis(200));
    forwarded.write_all(b"in flight").unwrap();
    proxy.deaf();
    let mut deaf = connect(addr);
    wait_for_stats(&proxy, "the deaf connection", |s| s.opened == 2);
    #[cfg(target_os = "linux")]
    assert!(proxy_threads(addr.port()) >= 4);

    let start = Instant::now();
    drop(proxy);
    let took = start.elapsed();
    assert!(took < Duration::from_millis(150), "drop took {took:?}");

    for stream in [&mut forwarded, &mut deaf] {
        let (data, end) = read_to_end(stream);
        assert!(data.is_empty(), "{data:?}");
        assert!(
            matches!(end, Ok(()) | Err(ErrorKind::ConnectionReset)),
            "{end:?}"
        );
    }
    let err = TcpStream::connect(addr).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    // A joined thread can linger in /proc for a moment after it has ended.
    #[cfg(target_os = "linux")]
    wait_for("the proxy's threads to disappear", || {
        proxy_threads(addr.port()) == 0
    });
}

/// Threads of this process named after the proxy on `port`.
#[cfg(target_os = "linux")]
fn proxy_threads(port: u16) -> usize {
    let prefix = format!("fp{port}-");
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(&prefix))
        .count()
}

#[test]
fn non_loopback_upstream_is_rejected() {
    for upstream in ["192.0.2.1:5432", "[2001:db8::1]:5432", "0.0.0.0:5432"] {
        let err = FaultProxy::start(upstream.parse().unwrap()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{upstream}");
    }
    assert!(FaultProxy::start("[::1]:5432".parse().unwrap()).is_ok());
}

#[test]
#[should_panic(expected = "not a loopback address")]
fn set_upstream_rejects_non_loopback() {
    let proxy = FaultProxy::start("127.0.0.1:5432".parse().unwrap()).unwrap();
    proxy.set_upstream("192.0.2.1:5432".parse().unwrap());
}

#[test]
fn many_concurrent_connections() {
    let echo = Echo::start();
    let proxy = FaultProxy::start(echo.addr).unwrap();
    let clients: Vec<_> = (0..32u8)
        .map(|i| {
            let addr = proxy.addr();
            thread::spawn(move || {
                let mut stream = connect(addr);
                for j in 0..10u8 {
                    let msg = [i, j, b'.'];
                    assert_eq!(round_trip(&mut stream, &msg), msg);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    wait_for_stats(&proxy, "every connection to close", |s| {
        s.opened == 32 && s.closed == 32 && s.bytes_down == 32 * 30
    });
    assert_eq!(proxy.stats().bytes_up, 32 * 30);
}

#[test]
fn hanging_upstream_connect_is_counted_and_interrupted() {
    // A listener that never accepts, with its queue full: further connects hang (SYN dropped).
    let jammed = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = jammed.local_addr().unwrap();
    let mut fillers = Vec::new();
    while let Ok(filler) = TcpStream::connect_timeout(&upstream, Duration::from_millis(100)) {
        fillers.push(filler);
        assert!(fillers.len() < 10_000, "the listen queue never filled up");
    }
    let proxy = FaultProxy::start(upstream).unwrap();
    let mut client = connect(proxy.addr());
    wait_for_stats(&proxy, "a hanging upstream connect", |s| {
        s.connecting == 1 && s.max_connecting == 1 && s.active == 1
    });
    assert_silent(&mut client, Duration::from_millis(100));
    assert_eq!(proxy.stats().connecting, 1);

    let start = Instant::now();
    drop(proxy);
    let took = start.elapsed();
    assert!(took < Duration::from_millis(150), "drop took {took:?}");
    let (data, end) = read_to_end(&mut client);
    assert!(data.is_empty());
    assert_eq!(end, Err(ErrorKind::ConnectionReset));
    drop(jammed);
}
