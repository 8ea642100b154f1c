//! Public API corners the other files leave out: a connection detached from the pool (G7),
//! the DSN-only constructors, and passwords kept out of every log line.

use crate::{pool_for, unique};
use momopool::{Pooled, Removal};
use momopool_pg::{Connection, Error, PgConfig, PgPool};
use momopool_tests::{Rt, pg};
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// Runs `fut`, failing the test as a hang if it takes longer than `limit`.
async fn within<F: std::future::Future>(rt: &Rt, limit: Duration, what: &str, fut: F) -> F::Output {
    match rt.timeout(limit, fut).await {
        Some(out) => out,
        None => panic!("[{}] {what}: still running after {limit:?}", rt.name()),
    }
}

/// How many backends the server runs for `app`.
async fn backends(admin: &PgPool, app: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap_or_else(|e| panic!("counting backends: {e}"))
        .get(0)
}

async fn backend_pid(conn: &mut Connection) -> i32 {
    conn.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap_or_else(|e| panic!("pg_backend_pid(): {e}"))
        .get(0)
}

/// G7: `Pooled::detach` takes a connection out of the pool for good. The pool's size drops by
/// one at once (and the removal is counted as a detach); the detached connection keeps its
/// session and runs statements; the pool opens new connections up to `max_size` beside it
/// (and no further); the detached connection's death on the server, and its drop, leave the
/// pool's status, statistics and connections untouched.
pub(crate) async fn g7_detached_connection_leaves_the_pool(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "g7_detach");
    let pool = pool_for(&rt, server.config(&app), |b| b.min_size(0).max_size(2)).await;
    let admin = pool_for(&rt, server.config(&format!("{app}_admin")), |b| {
        b.max_size(1)
    })
    .await;

    let mut first = pool.get().await.unwrap();
    let mut second = pool.get().await.unwrap();
    let status = pool.inner().status();
    assert_eq!(
        (status.size, status.in_use),
        (2, 2),
        "[{}] {status:?}",
        rt.name()
    );
    let detached_before = pool.inner().statistics().closed.get(Removal::Detached);
    let pid = backend_pid(&mut first).await;
    let other_pid = backend_pid(&mut second).await;

    let mut detached: Connection = Pooled::detach(first);
    let status = pool.inner().status();
    assert_eq!(
        (status.size, status.in_use, status.idle),
        (1, 1, 0),
        "[{}] the size drops by one on detach: {status:?}",
        rt.name()
    );
    momopool_tests::assert_accounting(pool.inner());
    assert_eq!(
        pool.inner().statistics().closed.get(Removal::Detached),
        detached_before + 1,
        "[{}] the detach is counted",
        rt.name()
    );

    // The detached connection still works, on the same backend and session.
    assert_eq!(backend_pid(&mut detached).await, pid, "[{}]", rt.name());
    detached
        .batch_execute("CREATE TEMP TABLE g7_detached (x int); INSERT INTO g7_detached VALUES (7)")
        .await
        .unwrap();
    let seven: i32 = detached
        .query_one("SELECT x FROM g7_detached", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seven, 7);

    // The pool makes a new connection in its place, up to max_size and no further.
    let mut third = within(
        &rt,
        Duration::from_secs(5),
        "a get() after the detach",
        pool.inner().get_timeout(Duration::from_secs(3)),
    )
    .await
    .unwrap_or_else(|e| panic!("[{}] a new connection after the detach: {e}", rt.name()));
    let third_pid = backend_pid(&mut third).await;
    assert!(
        third_pid != pid && third_pid != other_pid,
        "[{}] a new backend",
        rt.name()
    );
    let status = pool.inner().status();
    assert_eq!(
        (status.size, status.in_use),
        (2, 2),
        "[{}] {status:?}",
        rt.name()
    );
    let over = pool
        .inner()
        .get_timeout(Duration::from_millis(200))
        .await
        .map(drop);
    assert!(
        over.as_ref().is_err_and(|e| e.is_timeout()),
        "[{}] max_size still holds beside a detached connection: {over:?}",
        rt.name()
    );
    assert_eq!(
        backends(&admin, &app).await,
        3,
        "[{}] two pooled backends and the detached one",
        rt.name()
    );
    drop(second);
    drop(third);
    rt.wait_until(Duration::from_secs(5), "both connections back", || {
        pool.inner().status().idle == 2
    })
    .await;

    // The detached connection dies (terminated by the server), then is dropped: the pool does
    // not notice.
    let before = pool.inner().status();
    let stats_before = pool.inner().statistics();
    pg::terminate(&admin, pid).await;
    let err = within(
        &rt,
        Duration::from_secs(5),
        "a statement on the terminated connection",
        detached.query_one("SELECT 1", &[]),
    )
    .await
    .expect_err("its backend was terminated");
    assert!(err.is_connection_lost(), "[{}] {err:?}", rt.name());
    drop(detached);
    rt.sleep(Duration::from_millis(200)).await;
    let after = pool.inner().status();
    let stats_after = pool.inner().statistics();
    assert_eq!(after, before, "[{}] the pool's status moved", rt.name());
    assert_eq!(
        (stats_after.closed.total(), stats_after.created),
        (stats_before.closed.total(), stats_before.created),
        "[{}] the pool counted the detached connection's death",
        rt.name()
    );
    // Both pooled connections still work, at once.
    let (a, b) = futures::future::join(
        pool.query_one("SELECT pg_backend_pid(), pg_sleep(0.05)::text", &[]),
        pool.query_one("SELECT pg_backend_pid(), pg_sleep(0.05)::text", &[]),
    )
    .await;
    let pids = [
        a.unwrap_or_else(|e| panic!("[{}] {e}", rt.name()))
            .get::<_, i32>(0),
        b.unwrap_or_else(|e| panic!("[{}] {e}", rt.name()))
            .get::<_, i32>(0),
    ];
    assert!(!pids.contains(&pid), "[{}] {pids:?}", rt.name());
    assert_eq!(pool.inner().statistics().created, stats_before.created);

    // A connection detached and dropped at once: the size stays one lower; nothing reopens
    // (min_size is 0), nothing else closes.
    let closed_before = pool.inner().statistics().closed.total();
    let conn = pool.get().await.unwrap();
    drop(Pooled::detach(conn));
    rt.sleep(Duration::from_millis(100)).await;
    let status = pool.inner().status();
    assert_eq!(
        (status.size, status.idle, status.in_use),
        (1, 1, 0),
        "[{}] {status:?}",
        rt.name()
    );
    assert_eq!(pool.inner().statistics().closed.total(), closed_before + 1);

    // The end-of-scenario invariants: the server runs as many backends as the pool holds, a
    // final get() works.
    let started = Instant::now();
    while backends(&admin, &app).await != pool.inner().status().size as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "[{}] the server's backends never matched {:?}",
            rt.name(),
            pool.inner().status()
        );
        rt.sleep(Duration::from_millis(20)).await;
    }
    let one: i32 = pool.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    momopool_tests::assert_accounting(pool.inner());
    pool.close();
    admin.close();
}

/// The shared server's DSN in key=value form, reporting `app`.
fn key_value_dsn(url: &str, app: &str) -> String {
    let parsed = tokio_postgres::Config::from_str(url).expect("the server URL parses");
    let mut dsn = String::new();
    if let Some(host) = parsed.get_hosts().first() {
        match host {
            tokio_postgres::config::Host::Tcp(name) => write!(dsn, "host='{name}' ").unwrap(),
            tokio_postgres::config::Host::Unix(path) => {
                write!(dsn, "host='{}' ", path.display()).unwrap()
            }
        }
    }
    if let Some(port) = parsed.get_ports().first() {
        write!(dsn, "port={port} ").unwrap();
    }
    if let Some(user) = parsed.get_user() {
        write!(dsn, "user='{user}' ").unwrap();
    }
    if let Some(password) = parsed.get_password() {
        let password = String::from_utf8_lossy(password).replace('\'', "\\'");
        write!(dsn, "password='{password}' ").unwrap();
    }
    if let Some(dbname) = parsed.get_dbname() {
        write!(dsn, "dbname='{dbname}' ").unwrap();
    }
    write!(dsn, "application_name='{app}'").unwrap();
    dsn
}

/// The shared server's URL with `application_name` set to `app`.
fn url_dsn(url: &str, app: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={app}")
}

/// `Connection::connect(dsn)` and `PgPool::connect(dsn)`, the forms without a runtime: they
/// take [`momopool_pg::default_runtime`] (Tokio inside a Tokio runtime, otherwise smol, the
/// feature this crate enables before async-std; on the async-std leg they therefore run on
/// smol's executor). A URL and a key=value DSN both connect (with their `application_name`
/// honoured) and run statements; a malformed DSN is a typed [`Error::Config`], at once, from
/// both, never a panic.
pub(crate) async fn dsn_only_constructors_connect(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "dsn_only");
    assert!(momopool_pg::default_runtime().is_ok(), "[{}]", rt.name());
    for (form, dsn) in [
        ("URL", url_dsn(server.url(), &app)),
        ("key=value", key_value_dsn(server.url(), &app)),
    ] {
        let mut conn = within(&rt, Duration::from_secs(10), "Connection::connect", async {
            Connection::connect(&dsn).await
        })
        .await
        .unwrap_or_else(|e| panic!("[{}] Connection::connect, {form} form: {e}", rt.name()));
        let row = conn
            .query_one(
                "SELECT current_setting('application_name'), 40 + $1::int",
                &[&2i32],
            )
            .await
            .unwrap_or_else(|e| panic!("[{}] {form}: {e}", rt.name()));
        assert_eq!(row.get::<_, String>(0), app, "[{}] {form}", rt.name());
        assert_eq!(row.get::<_, i32>(1), 42);
        drop(conn);

        let pool = within(&rt, Duration::from_secs(10), "PgPool::connect", async {
            PgPool::connect(&dsn).await
        })
        .await
        .unwrap_or_else(|e| panic!("[{}] PgPool::connect, {form} form: {e}", rt.name()));
        assert!(
            pool.inner().status().size >= 1,
            "[{}] PgPool::connect builds eagerly: {:?}",
            rt.name(),
            pool.inner().status()
        );
        let rows = pool
            .execute(
                "SELECT current_setting('application_name') FROM generate_series(1, 3)",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("[{}] pool, {form}: {e}", rt.name()));
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].get::<_, String>(0), app, "[{}] {form}", rt.name());
        momopool_tests::assert_accounting(pool.inner());
        pool.close();
    }

    for bad in [
        "postgresql://u:pw@127.0.0.1:notaport/db",
        "host=127.0.0.1 port=notaport",
        "host=127.0.0.1 no_such_option=1",
        "host='127.0.0.1",
        "postgresql://[::1",
    ] {
        let started = Instant::now();
        let refused = [
            (
                "Connection::connect",
                Connection::connect(bad).await.map(drop),
            ),
            ("PgPool::connect", PgPool::connect(bad).await.map(drop)),
        ];
        for (how, outcome) in refused {
            let err = outcome.expect_err("a malformed DSN");
            assert!(
                matches!(err, Error::Config(_)),
                "[{}] {how}({bad:?}): {err:?}",
                rt.name()
            );
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "[{}] {bad:?}: a malformed DSN fails before any network: {:?}",
            rt.name(),
            started.elapsed()
        );
    }
}

/// Everything logged through `tracing` in this process, from any thread.
static CAPTURED: Mutex<String> = Mutex::new(String::new());

/// A subscriber that keeps every event and every span field as text, at every level.
struct Capture;

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
}

impl Capture {
    fn keep(metadata: &tracing::Metadata<'_>, fields: impl FnOnce(&mut Fields<'_>)) {
        let mut line = format!("{} {}:", metadata.level(), metadata.target());
        fields(&mut Fields(&mut line));
        line.push('\n');
        CAPTURED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_str(&line);
    }
}

impl tracing::Subscriber for Capture {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::always()
    }

    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Capture::keep(span.metadata(), |f| span.record(f));
        tracing::span::Id::from_u64(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut line = String::from("span record:");
        values.record(&mut Fields(&mut line));
        line.push('\n');
        CAPTURED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_str(&line);
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        Capture::keep(event.metadata(), |f| event.record(f));
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// Installs [`Capture`] as the process's global subscriber, once: events logged by tasks on
/// any runtime thread reach it (a thread-local default would miss the multi-threaded
/// runtimes' workers).
fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing::dispatcher::set_global_default(tracing::Dispatch::new(Capture))
            .expect("no other global tracing subscriber in this test binary");
    });
}

/// A password is never logged. With a distinctive password set: a pool that connects (the
/// superuser is trusted, so the password is sent along unused) and whose connection is
/// later terminated; a pool whose connects fail (an unknown database, named for this test, so
/// its log lines can be found); a wrong password for the SCRAM role through a standalone
/// connect, a lazy pool and an eager build; malformed DSNs holding the password. Every log
/// line the process captured, and the `Debug` and `Display` of the configurations and
/// errors, are free of it; the captured text holds this test's connect failures (so the
/// capture really saw the library's events).
///
/// It runs on a cluster of the tests' own (the destructive one, whose lock it holds): it
/// needs the role that must give a password, and the superuser trusted over TCP, which a
/// server named by `DATABASE_URL` need not offer.
#[allow(clippy::await_holding_lock)]
pub(crate) async fn password_never_appears_in_logs(rt: Rt) {
    capture_logs();
    let server = pg::destructive();
    let app = unique(&rt, "password_logs");
    let secret = format!("Sentinel-Pw-{}-93f1c2", rt.name());
    let missing_db = format!("momopool_logcheck_{}", rt.name().replace('-', "_"));
    let admin = pool_for(&rt, server.config(&format!("{app}_admin")), |b| {
        b.max_size(1)
    })
    .await;
    let mut shown = Vec::new();

    // Connects, with the password set (and unused: trust).
    let config = server.config(&app).password(&secret);
    shown.push(format!("{config:?}"));
    let pool = pool_for(&rt, config, |b| b.min_size(2).max_size(2)).await;
    pool.inner().warm_up().await.unwrap();
    let pid: i32 = pool
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let err = pool
        .execute("SELECT no_such_column", &[])
        .await
        .unwrap_err();
    shown.extend(both_ways(&err));
    admin
        .execute("SELECT pg_terminate_backend($1, 5000)", &[&pid])
        .await
        .unwrap();
    for _ in 0..3 {
        pool.query_one("SELECT 1", &[]).await.unwrap();
    }
    pool.close();

    // Fails to connect, with the password set: an unknown database.
    let parsed = tokio_postgres::Config::from_str(server.url()).expect("the server URL parses");
    let port = parsed.get_ports().first().copied().unwrap_or(5432);
    let user = parsed.get_user().unwrap_or("postgres");
    let failing = PgConfig::from_dsn(&format!(
        "postgresql://{user}@127.0.0.1:{port}/{missing_db}?application_name={app}"
    ))
    .unwrap()
    .password(&secret);
    let eager = PgPool::builder(failing.clone())
        .shared_runtime(rt.pg_runtime())
        .build_eager()
        .await
        .map(drop)
        .expect_err("the database does not exist");
    assert_eq!(eager.code().map(|c| c.code()), Some("3D000"), "{eager}");
    shown.extend(both_ways(&eager));
    let err = first_call_error(&rt, failing).await;
    shown.extend(both_ways(&err));

    // The wrong password for the role that must give one (SCRAM over TCP).
    let wrong = format!(
        "postgresql://{}:{secret}@127.0.0.1:{port}/postgres?application_name={app}",
        pg::PASSWORD_USER
    );
    let wrong_config = PgConfig::from_dsn(&wrong).unwrap();
    shown.push(format!("{wrong_config:?}"));
    let err = Connection::connect_with(wrong_config.clone(), rt.pg_runtime())
        .await
        .map(drop)
        .expect_err("a wrong password");
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
    shown.extend(both_ways(&err));
    let err = first_call_error(&rt, wrong_config).await;
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
    shown.extend(both_ways(&err));

    // Malformed DSNs that hold the password.
    for bad in [
        format!("postgresql://u:{secret}@127.0.0.1:notaport/db"),
        format!("host=127.0.0.1 password={secret} port=notaport"),
        format!("host=127.0.0.1 password='{secret}"),
        format!("password={secret} no_such_option=1"),
    ] {
        let err = PgConfig::from_dsn(&bad).map(drop).expect_err("malformed");
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        shown.extend(both_ways(&err));
    }
    // An application logs what it was given to show.
    for text in &shown {
        tracing::error!(shown = %text, "what a careless application logs");
    }
    admin.close();
    // Let the pools' background tasks (connects, closes) log what they log.
    rt.sleep(Duration::from_millis(300)).await;

    for text in &shown {
        assert!(
            !text.contains(&secret),
            "[{}] a Debug or Display shows the password: {text}",
            rt.name()
        );
    }
    let captured = CAPTURED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(!captured.is_empty(), "[{}] nothing was captured", rt.name());
    assert!(
        captured.contains("connect failed") && captured.contains(&missing_db),
        "[{}] the capture missed the pool's connect failures:\n{captured}",
        rt.name()
    );
    let leaks: Vec<&str> = captured.lines().filter(|l| l.contains(&secret)).collect();
    assert!(
        leaks.is_empty(),
        "[{}] the password appears in log lines: {leaks:#?}",
        rt.name()
    );
}

/// The error the first call through a lazy pool on `config` gets.
async fn first_call_error(rt: &Rt, config: PgConfig) -> momopool_pg::Error {
    let lazy = PgPool::builder(config)
        .shared_runtime(rt.pg_runtime())
        .min_size(0)
        .build()
        .unwrap();
    let err = lazy.execute("SELECT 1", &[]).await.unwrap_err();
    lazy.close();
    err
}

/// How `err` shows: its `Debug` and its `Display`.
fn both_ways(err: &momopool_pg::Error) -> [String; 2] {
    [format!("{err:?}"), err.to_string()]
}
