//! C2's other forms (a backend killed, a connection cut after N bytes), G1 through the proxy,
//! and F2 (statements never cross connections; the no-cache mode does everything).

use crate::{
    EPSILON, Watch, admin_for, assert_backends_match, builder, finish, proxy_to, unique, via,
    wait_for_active, watch, within,
};
use futures::{StreamExt, TryStreamExt};
use momopool::{Removal, Validation};
use momopool_pg::{CallOptions, PgPool, Recycling, SharedMode};
use momopool_tests::proxy::{FaultProxy, Kill};
use momopool_tests::{Rt, pg};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// [`finish`]'s invariants for a pool with one shared-mode lane, which keeps its connection
/// (where `finish` expects every connection back in the pool).
async fn finish_with_one_lane(rt: &Rt, pool: &PgPool, admin: &PgPool, app: &str, seen: Watch) {
    seen.stop(rt).await;
    momopool_tests::assert_accounting(pool.inner());
    let status = pool.inner().status();
    assert_eq!(status.waiting, 0);
    assert!(status.in_use <= 1, "only the lane holds a connection");
    let row = pool
        .with(CallOptions::new().exclusive())
        .query_one("SELECT 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_backends_match(rt, pool, admin, app).await;
}

/// C2: `kill -9` of the backend running a statement. The server restarts every backend
/// (crash recovery answers 57P03 for a moment); the caller gets an unknown outcome, the
/// statement is not replayed, and the pool heals once recovery is over.
// The destructive cluster's lock is held for the whole test on purpose: it serializes the
// test threads (each runs its body inside its own `block_on`).
#[allow(clippy::await_holding_lock)]
pub(crate) async fn c2_backend_killed_mid_statement(rt: Rt) {
    let server = pg::destructive();
    let cluster = server.cluster().expect("the destructive server is ours");
    let table = unique(&rt, "c2_kill");
    let app = table.clone();
    let admin = admin_for(&rt, &server, &app).await;
    admin
        .batch_execute(&format!(
            // Throwaway clusters commit asynchronously; the table must survive the crash.
            "SET synchronous_commit = on; DROP TABLE IF EXISTS {table}; \
             CREATE TABLE {table} (x int)"
        ))
        .await
        .unwrap();
    let pool = builder(&rt, server.config(&app))
        .min_size(1)
        .max_size(2)
        .configure(|b| {
            b.wait_timeout(Duration::from_secs(10))
                .reconnect_interval(Duration::from_millis(50))
                .reconnect_max(Duration::from_millis(500))
        })
        .build_eager()
        .await
        .unwrap();
    let seen = watch(&rt, &pool);
    let insert = format!("INSERT INTO {table} SELECT 1 FROM pg_sleep(0.5)");
    let inserter = {
        let (pool, insert) = (pool.clone(), insert.clone());
        rt.spawn(async move { pool.execute_count(&insert, &[]).await })
    };
    let pid = wait_for_active(&rt, &admin, &app, &insert, &[]).await;
    cluster.signal(pid as u32, "KILL").unwrap();
    let err = within(
        &rt,
        Duration::from_secs(5),
        "the killed statement",
        inserter,
    )
    .await
    .expect_err("the backend was killed mid-statement");
    assert!(
        err.is_outcome_unknown(),
        "[{}] expected an unknown outcome, got {err:?}",
        rt.name()
    );

    // Crash recovery: the pool gets back on its own; the INSERT never ran twice (it was
    // rolled back with the crash).
    let started = Instant::now();
    let one: i32 = pool
        .query_one("SELECT 1", &[])
        .await
        .unwrap_or_else(|e| panic!("[{}] after recovery: {e}", rt.name()))
        .get(0);
    assert_eq!(one, 1);
    assert!(started.elapsed() < Duration::from_secs(10));
    let admin = admin_for(&rt, &server, &app).await;
    assert_eq!(
        pg::count_rows(&admin, &table).await,
        0,
        "[{}] the killed INSERT left nothing",
        rt.name()
    );
    finish(&rt, &pool, &admin, &app, seen).await;
    pg::drop_table(&admin, &table).await;
}

/// Five rounds of: a statement, then the far end closes its connection (here the network: a
/// FIN from the proxy) just after the answer, then the next statement at once. Each second
/// statement must succeed, on a new connection.
async fn closed_after_each_answer(rt: &Rt, pool: &PgPool, proxy: &FaultProxy) {
    for round in 0..5 {
        pool.query_one("SELECT 1", &[]).await.unwrap();
        proxy.kill_all(Kill::Fin);
        // Long enough for the FIN to arrive over loopback, and past the millisecond after an
        // answer within which the pool does not peek (a silent close that soon would leave
        // the statement's outcome unknown). Blocking the thread keeps a current-thread
        // runtime's driver tasks from noticing meanwhile.
        std::thread::sleep(Duration::from_millis(2));
        let row = pool
            .query_one("SELECT 1", &[])
            .await
            .unwrap_or_else(|e| panic!("[{}] round {round}: {e:?}", rt.name()));
        assert_eq!(row.get::<_, i32>(0), 1);
    }
    assert!(
        pool.inner().statistics().created >= 6,
        "[{}] every closed connection was replaced",
        rt.name()
    );
}

/// B1 at its sharpest for a silent close: the far end closes an idle connection (a FIN, no
/// goodbye message) 2 ms after it answered, and the next caller comes at once. The pool must
/// see the end of file before handing the connection
/// out, although the connection's driver task has not run yet to notice it: the socket peek
/// at checkout catches it, the connection is checked and replaced, and the statement runs on
/// a new connection with no error. Without the peek the statement is sent on the dead socket
/// and fails with its outcome unknown: on the current-thread runtime always; on
/// multi-threaded executors only when the driver, on another thread, has not noticed first.
pub(crate) async fn b1_idle_connection_closed_just_after_answering(rt: Rt) {
    let t = one_connection_through_proxy(&rt, "b1_fin", Validation::default()).await;
    closed_after_each_answer(&rt, &t.pool, &t.proxy).await;
    finish(&rt, &t.pool, &t.admin, &t.app, t.seen).await;
}

/// A one-connection pool on the shared server through a proxy of its own, validating as
/// `validation` says, with the pool that looks at the server beside it and a watch on its
/// status.
struct ThroughProxy {
    proxy: FaultProxy,
    app: String,
    admin: PgPool,
    pool: PgPool,
    seen: Watch,
}

async fn one_connection_through_proxy(rt: &Rt, test: &str, validation: Validation) -> ThroughProxy {
    let server = pg::shared();
    let proxy = proxy_to(server);
    let app = unique(rt, test);
    let admin = admin_for(rt, server, &app).await;
    let pool = builder(rt, via(server, &proxy, &app))
        .min_size(1)
        .max_size(1)
        .configure(move |b| b.validation(validation))
        .build_eager()
        .await
        .unwrap();
    let seen = watch(rt, &pool);
    ThroughProxy {
        proxy,
        app,
        admin,
        pool,
        seen,
    }
}

/// B1 in shared mode: the same FIN just after an answer, on the connection a shared-mode lane
/// holds. The lane's connection is peeked at before a statement is queued on it with nothing
/// else in flight, so the statement goes to a new connection instead of the dead one.
pub(crate) async fn b1_idle_shared_lane_closed_just_after_answering(rt: Rt) {
    let server = pg::shared();
    let proxy = proxy_to(server);
    let app = unique(&rt, "b1_lane_fin");
    let admin = admin_for(&rt, server, &app).await;
    let pool = builder(&rt, via(server, &proxy, &app))
        .min_size(1)
        .max_size(2)
        .shared(SharedMode {
            connections: 1,
            max_in_flight: 8,
            stall_after: Duration::from_secs(5),
        })
        .build_eager()
        .await
        .unwrap();
    let seen = watch(&rt, &pool);
    closed_after_each_answer(&rt, &pool, &proxy).await;
    finish_with_one_lane(&rt, &pool, &admin, &app, seen).await;
}

/// B1 with the goodbye late: the server terminates an idle connection (a FATAL 57P01, then
/// the end of the stream), and the next statement leaves before those words arrive (held 1 s
/// in the network), so nothing at checkout can see them. They come as the statement's first
/// answer, in place of the acknowledgement of its bind: the statement did not run, and is
/// retried on a new connection with no error for the caller. Without that reading, the
/// caller would be told its outcome is unknown.
pub(crate) async fn b1_goodbye_arrives_as_the_first_answer(rt: Rt) {
    let ThroughProxy {
        proxy,
        app,
        admin,
        pool,
        seen,
    } = one_connection_through_proxy(&rt, "b1_late_goodbye", Validation::Never).await;
    let pid: i32 = pool
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // Long enough that even a slow start of the call below sends it first.
    proxy.delay(Duration::from_secs(1));
    // Waits until the backend has exited: its FATAL is then on its way, through the proxy.
    let terminated: bool = admin
        .query_one("SELECT pg_terminate_backend($1, 5000)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    let closed = || {
        let closed = pool.inner().statistics().closed;
        (
            closed.get(Removal::Broken),
            closed.get(Removal::FailedCheck),
        )
    };
    let (broken_before, failed_checks_before) = closed();
    let call = {
        let pool = pool.clone();
        rt.spawn(async move { pool.query_one("SELECT pg_backend_pid()", &[]).await })
    };
    // The statement has left by now (a 1 s delay starts on each chunk as the proxy reads
    // it); new connections need not wait.
    rt.sleep(Duration::from_millis(100)).await;
    proxy.delay(Duration::ZERO);
    let new_pid: i32 = within(&rt, Duration::from_secs(10), "the statement", call)
        .await
        .unwrap_or_else(|e| panic!("[{}] the caller heard of the goodbye: {e:?}", rt.name()))
        .get(0);
    assert_ne!(new_pid, pid, "[{}] it ran on a new connection", rt.name());
    assert_eq!(
        closed(),
        (broken_before + 1, failed_checks_before),
        "[{}] the statement, not a check, found the connection dead",
        rt.name()
    );
    finish(&rt, &pool, &admin, &app, seen).await;
}

/// How many times statements took a value from `sequence` (sequences are not transactional:
/// a statement that ran, even one rolled back with its lost connection, leaves its mark).
async fn times_run(admin: &PgPool, sequence: &str) -> i64 {
    admin
        .query_one(
            &format!("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("reading {sequence}: {e}"))
        .get(0)
}

/// C2: the network cuts a connection after N bytes (a reset both ways), twice:
///
/// 1. inside the request: the statement (a 20 kB parameter) never fully reached the server,
///    so it provably never ran (its sequence was never called, no row). The client cannot
///    know how much of what it wrote was delivered, so an unknown outcome is the honest
///    answer; a plain connection-lost error is acceptable only because the server shows the
///    statement never ran.
/// 2. inside the reply: the whole request reached the server (the statement took its
///    sequence value) and the connection died while the answer (20 kB) came back: the error
///    must be "outcome unknown", and the statement is not replayed (the sequence was called
///    exactly once).
///
/// Then the pool heals on new connections.
pub(crate) async fn c2_connection_cut_after_n_bytes(rt: Rt) {
    let server = pg::shared();
    let proxy = proxy_to(server);
    let table = unique(&rt, "c2_cut");
    let app = table.clone();
    let admin = admin_for(&rt, server, &app).await;
    pg::fresh_table(&admin, &table, "x bigint, filler text").await;
    let sequence = format!("{table}_seq");
    admin
        .batch_execute(&format!(
            "DROP SEQUENCE IF EXISTS {sequence}; CREATE SEQUENCE {sequence}"
        ))
        .await
        .unwrap();

    // Learn how many bytes a connection's start-up takes, then cut new connections a little
    // after that: 2 000 bytes into their first statements.
    let probe = builder(&rt, via(server, &proxy, &app))
        .min_size(1)
        .max_size(1)
        .build_eager()
        .await
        .unwrap();
    let stats = proxy.stats();
    let startup = stats.bytes_up + stats.bytes_down;
    drop(probe);
    proxy.cut_after_bytes(startup + 2_000);
    let cut_pool = |app: &str| {
        builder(&rt, via(server, &proxy, app))
            .min_size(1)
            .max_size(2)
            .configure(|b| b.wait_timeout(Duration::from_secs(5)))
            .build_eager()
    };

    // 1. Cut inside the request.
    let pool = cut_pool(&app).await.unwrap();
    let seen = watch(&rt, &pool);
    let filler = "x".repeat(20_000);
    let insert = format!("INSERT INTO {table} VALUES (nextval('{sequence}'), $1)");
    let started = Instant::now();
    let err = within(
        &rt,
        Duration::from_secs(3),
        "the statement cut in its request",
        pool.execute_count(&insert, &[&filler]),
    )
    .await
    .expect_err("the connection was cut mid-request");
    assert!(started.elapsed() < Duration::from_secs(1) + EPSILON);
    assert!(
        err.is_connection_lost(),
        "[{}] expected a lost connection, got {err:?}",
        rt.name()
    );
    // Long enough for a replay, had there been one, to have reached the server.
    rt.sleep(Duration::from_millis(300)).await;
    assert_eq!(
        times_run(&admin, &sequence).await,
        0,
        "[{}] the request was cut before it was whole, yet the statement ran ({err:?})",
        rt.name()
    );
    assert_eq!(pg::count_rows(&admin, &table).await, 0, "[{}]", rt.name());

    // 2. Cut inside the reply: a request of a few hundred bytes, an answer of 20 kB.
    // A pool of its own, with an application_name of its own for `finish`.
    let app2 = format!("{app}_reply");
    let pool2 = cut_pool(&app2).await.unwrap();
    let seen2 = watch(&rt, &pool2);
    let returning = format!(
        "INSERT INTO {table} VALUES (nextval('{sequence}'), repeat('y', 20000)) \
         RETURNING filler"
    );
    let err = within(
        &rt,
        Duration::from_secs(3),
        "the statement cut in its reply",
        pool2.execute(&returning, &[]),
    )
    .await
    .expect_err("the connection was cut mid-reply");
    rt.sleep(Duration::from_millis(300)).await;
    assert_eq!(
        times_run(&admin, &sequence).await,
        1,
        "[{}] the statement reached the server once and was never replayed ({err:?})",
        rt.name()
    );
    assert!(
        err.is_outcome_unknown(),
        "[{}] the request had been sent whole: expected an unknown outcome, got {err:?}",
        rt.name()
    );
    assert!(err.is_connection_lost(), "[{}] {err:?}", rt.name());
    // The server may have committed it or rolled it back with the lost connection.
    assert!(
        pg::count_rows(&admin, &table).await <= 1,
        "[{}] replayed",
        rt.name()
    );

    proxy.pass();
    pool.execute_count(&insert, &[&"healed"]).await.unwrap();
    pool2.execute_count(&insert, &[&"healed"]).await.unwrap();
    finish(&rt, &pool, &admin, &app, seen).await;
    finish(&rt, &pool2, &admin, &app2, seen2).await;
    admin
        .batch_execute(&format!("DROP SEQUENCE {sequence}"))
        .await
        .unwrap();
    pg::drop_table(&admin, &table).await;
}

/// G1: the server refuses connections for 3 s under 200 callers on max 20. Connect attempts
/// back off (one probe at a time), connects in flight never exceed `max_connecting`, and
/// after recovery every caller is served without a 20-wide burst of connects.
pub(crate) async fn g1_reconnect_backoff_after_outage(rt: Rt) {
    let server = pg::shared();
    let proxy = proxy_to(server);
    let app = unique(&rt, "g1");
    let admin = admin_for(&rt, server, &app).await;
    let pool = builder(&rt, via(server, &proxy, &app))
        .min_size(2)
        .max_size(20)
        .configure(|b| {
            b.max_connecting(4)
                .wait_timeout(Duration::from_secs(10))
                .reconnect_interval(Duration::from_millis(100))
                .reconnect_max(Duration::from_secs(1))
        })
        .build_eager()
        .await
        .unwrap();
    let seen = watch(&rt, &pool);
    let errors_before = pool.inner().statistics().create_errors;

    proxy.refuse();
    proxy.kill_all(Kill::Fin);
    let outage = Instant::now();
    let served = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..200)
        .map(|_| {
            let (pool, served) = (pool.clone(), served.clone());
            rt.spawn(async move {
                let result = pool.query_one("SELECT 1", &[]).await;
                if result.is_ok() {
                    served.fetch_add(1, Ordering::SeqCst);
                }
                result.map(drop)
            })
        })
        .collect();
    rt.sleep(Duration::from_secs(3).saturating_sub(outage.elapsed()))
        .await;
    let attempts = pool.inner().statistics().create_errors - errors_before;
    assert!(
        (2..=15).contains(&attempts),
        "[{}] {attempts} connect attempts in a 3 s outage: backoff",
        rt.name()
    );
    let before = proxy.stats();
    proxy.pass();
    for caller in callers {
        within(
            &rt,
            Duration::from_secs(10),
            "a caller after recovery",
            caller,
        )
        .await
        .unwrap_or_else(|e| panic!("[{}] a caller failed: {e}", rt.name()));
    }
    assert_eq!(served.load(Ordering::SeqCst), 200);
    let after = proxy.stats();
    assert!(
        after.max_connecting <= 4,
        "[{}] {} connects in flight at once",
        rt.name(),
        after.max_connecting
    );
    let opened = after.opened - before.opened;
    assert!(opened <= 20, "[{}] {opened} connections opened", rt.name());
    finish(&rt, &pool, &admin, &app, seen).await;
}

/// F2: prepared statements belong to their connection. A statement cached on a connection
/// that died is never sent on its replacement; Clean recycling keeps the cache valid; and the
/// no-cache (unnamed statement) mode runs every kind of call without leaving a named
/// statement behind.
pub(crate) async fn f2_statements_never_cross_connections(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "f2");
    let admin = admin_for(&rt, server, &app).await;

    let pool = builder(&rt, server.config(&app))
        .min_size(1)
        .max_size(1)
        .build_eager()
        .await
        .unwrap();
    let seen = watch(&rt, &pool);
    let statement = "SELECT $1::int + 1";
    let old: i32 = pool
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        pool.query_one(statement, &[&1i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&old])
        .await
        .unwrap();
    rt.sleep(Duration::from_millis(200)).await;
    // A fresh connection: the cached statement of the dead one must not be reused.
    assert_eq!(
        pool.query_one(statement, &[&2i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        3
    );
    let new: i32 = pool
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(new, old);
    finish(&rt, &pool, &admin, &app, seen).await;

    // Clean recycling resets the session but keeps prepared statements, and the cache with
    // them: the cached statement still works after every reset.
    // Each pool reports an application_name of its own, for the end-of-scenario check of
    // the server's backends.
    let clean_app = format!("{app}_clean");
    let clean = builder(&rt, server.config(&clean_app).recycling(Recycling::Clean))
        .min_size(1)
        .max_size(1)
        .configure(|b| b.validation(Validation::Always))
        .build_eager()
        .await
        .unwrap();
    let clean_seen = watch(&rt, &clean);
    for i in 0..3 {
        assert_eq!(
            clean
                .query_one(statement, &[&i])
                .await
                .unwrap()
                .get::<_, i32>(0),
            i + 1
        );
    }
    finish(&rt, &clean, &admin, &clean_app, clean_seen).await;

    // The no-cache mode through every kind of call.
    let table = unique(&rt, "f2_nocache");
    let unnamed_app = format!("{app}_unnamed");
    let unnamed = builder(&rt, server.config(&unnamed_app).unnamed_statements(true))
        .min_size(1)
        .max_size(1)
        .build_eager()
        .await
        .unwrap();
    let unnamed_seen = watch(&rt, &unnamed);
    pg::fresh_table(&unnamed, &table, "x int").await;
    let insert = format!("INSERT INTO {table} VALUES ($1)");
    assert_eq!(unnamed.execute_count(&insert, &[&1i32]).await.unwrap(), 1);
    assert!(
        unnamed
            .query_opt("SELECT 1 WHERE false", &[])
            .await
            .unwrap()
            .is_none()
    );
    unnamed
        .transaction(&[(insert.as_str(), &[&2i32]), (insert.as_str(), &[&3i32])])
        .await
        .unwrap();
    let insert2 = insert.clone();
    unnamed
        .transaction_with(move |tx| {
            let insert = insert2.clone();
            Box::pin(async move { tx.execute(&insert, &[&4i32]).await.map(drop) })
        })
        .await
        .unwrap();
    let rendered = unnamed.mogrify(&insert, &[&5i32]).await.unwrap();
    assert!(rendered.contains("'5'::integer"), "{rendered}");
    let rows = unnamed
        .callproc("generate_series", &[&1i32, &3i32])
        .await
        .map(|r| r.len());
    // Overloaded: the arguments are cast to the Rust values' types when the name is ambiguous.
    assert_eq!(rows.unwrap_or_else(|e| panic!("[{}] {e:?}", rt.name())), 3);
    let mut conn = unnamed.get().await.unwrap();
    let all: Vec<_> = conn
        .cursor(&format!("SELECT x FROM {table} ORDER BY x"), &[], 2)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    // Rows keep their statement (for the column descriptions); it closes with the last one.
    drop(all);
    drop(conn);
    let mut listener = unnamed.listen(&table).await.unwrap();
    unnamed
        .execute("SELECT pg_notify($1, 'f2')", &[&table])
        .await
        .unwrap();
    let note = rt.timeout(Duration::from_secs(5), listener.next()).await;
    assert_eq!(
        note.flatten()
            .map(|n| n.unwrap().payload().to_string())
            .as_deref(),
        Some("f2")
    );
    let prepared: Vec<String> = unnamed
        .execute("SELECT statement FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        prepared.is_empty(),
        "[{}] named statements left behind: {prepared:?}",
        rt.name()
    );
    drop(listener);
    finish(&rt, &unnamed, &admin, &unnamed_app, unnamed_seen).await;
    pg::drop_table(&admin, &table).await;
}

/// B2 with `pg_ctl restart -m immediate`: the server stops without a clean shutdown and runs
/// crash recovery when it starts again. Under a query loop, errors are confined to the
/// restart; the first call once the server is back succeeds.
#[allow(clippy::await_holding_lock)]
pub(crate) async fn b2_immediate_restart_under_query_loop(rt: Rt) {
    use momopool_pg::CallOptions;
    use momopool_pg::throwaway::StopMode;
    use std::sync::atomic::AtomicBool;
    let server = pg::destructive();
    let cluster = server.cluster().expect("the destructive server is ours");
    let app = unique(&rt, "b2_immediate");
    let pool = builder(&rt, server.config(&app))
        .min_size(2)
        .max_size(4)
        .configure(|b| {
            b.reconnect_interval(Duration::from_millis(50))
                .reconnect_max(Duration::from_millis(500))
        })
        .build_eager()
        .await
        .unwrap();
    let seen = watch(&rt, &pool);
    let stop = Arc::new(AtomicBool::new(false));
    let failed_after = Arc::new(AtomicUsize::new(0));
    let back = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (pool, stop, failed_after, back) = (
                pool.clone(),
                stop.clone(),
                failed_after.clone(),
                back.clone(),
            );
            let rt2 = rt.clone();
            rt.spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let calls = pool.with(CallOptions::new().timeout(Duration::from_secs(5)));
                    let result = calls.query_one("SELECT 1", &[]).await;
                    // Errors are expected while the server restarts, not once it is back
                    // (allowing the statements already in flight at that moment).
                    if result.is_err() && back.load(Ordering::SeqCst) {
                        failed_after.fetch_add(1, Ordering::SeqCst);
                    }
                    rt2.sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    rt.sleep(Duration::from_millis(200)).await;
    let mut child = cluster.restart_in_background(StopMode::Immediate).unwrap();
    while child.try_wait().unwrap().is_none() {
        rt.sleep(Duration::from_millis(20)).await;
    }
    // The first call after the server is back succeeds: no stale connection handed out.
    let first = pool.query_one("SELECT 1", &[]).await;
    assert!(
        first.is_ok(),
        "[{}] first call after restart: {:?}",
        rt.name(),
        first.err()
    );
    rt.sleep(Duration::from_millis(200)).await;
    back.store(true, Ordering::SeqCst);
    rt.sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::SeqCst);
    for task in loops {
        task.await;
    }
    assert_eq!(
        failed_after.load(Ordering::SeqCst),
        0,
        "[{}] no errors once the server is back",
        rt.name()
    );
    let status = pool.inner().status();
    assert!(status.size >= 2 && status.size <= 4, "{status:?}");
    let admin = admin_for(&rt, &server, &app).await;
    finish(&rt, &pool, &admin, &app, seen).await;
}

/// The server closes sessions idle longer than `idle_session_timeout` (FATAL 57P05). The pool
/// notices on its own and no caller sees an error.
pub(crate) async fn idle_session_timeout_closes_idle_connections(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "idle_session");
    let config = server
        .config(&app)
        .session(["SET idle_session_timeout = '200ms'"]);
    let pool = builder(&rt, config)
        .min_size(2)
        .max_size(4)
        .configure(|b| b.validation(Validation::Never))
        .build_eager()
        .await
        .unwrap();
    pool.inner().warm_up().await.unwrap();
    let before: Vec<i32> = pool
        .execute("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Longer than the server's idle timeout: every idle session is closed by the server.
    rt.sleep(Duration::from_millis(700)).await;
    let results =
        futures::future::join_all((0..4).map(|_| pool.query_one("SELECT pg_backend_pid()", &[])))
            .await;
    for result in results {
        let row = result.unwrap_or_else(|e| panic!("[{}] a caller saw: {e}", rt.name()));
        assert!(
            !before.contains(&row.get::<_, i32>(0)),
            "a closed session was reused"
        );
    }
    let closed = pool
        .inner()
        .statistics()
        .closed
        .get(momopool::Removal::Broken);
    assert!(
        closed >= 2,
        "[{}] {closed} closed sessions noticed",
        rt.name()
    );
}

/// C5 with a lock: another session holds a row lock, so the statement waits on the server.
/// With a 300 ms deadline the caller is freed on time, the cancel request ends the waiting
/// statement on the server, and the slot is freed.
pub(crate) async fn c5_blocked_by_a_lock(rt: Rt) {
    let server = pg::shared();
    let table = unique(&rt, "c5_lock");
    let app = table.clone();
    let admin = admin_for(&rt, server, &app).await;
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY, n int); \
             INSERT INTO {table} VALUES (1, 0)"
        ))
        .await
        .unwrap();
    let pool = builder(&rt, server.config(&app))
        .min_size(1)
        .max_size(2)
        .build_eager()
        .await
        .unwrap();
    let seen = watch(&rt, &pool);

    // The other session takes the lock and keeps it.
    let mut holder = momopool_pg::Connection::connect_with(
        server.config(&format!("{app}_holder")),
        rt.pg_runtime(),
    )
    .await
    .unwrap();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT * FROM {table} WHERE id = 1 FOR UPDATE"
        ))
        .await
        .unwrap();

    let update = format!("UPDATE {table} SET n = n + 1 WHERE id = 1");
    let started = Instant::now();
    let err = pool
        .with(momopool_pg::CallOptions::new().timeout(Duration::from_millis(300)))
        .execute_count(&update, &[])
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(err.is_timeout() && err.is_outcome_unknown(), "{err:?}");
    assert!(
        took >= Duration::from_millis(300) && took <= Duration::from_millis(300) + EPSILON,
        "[{}] took {took:?}",
        rt.name()
    );
    // The cancel request (sent in the background once the caller is freed) ends the waiting
    // UPDATE: the server stops running it, and once the lock is released it does not run
    // after all.
    let cancelled = Instant::now();
    loop {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND query LIKE 'UPDATE%' AND state = 'active'",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 0 {
            break;
        }
        assert!(
            cancelled.elapsed() < Duration::from_secs(3),
            "[{}] the UPDATE still waits: no cancel arrived",
            rt.name()
        );
        rt.sleep(Duration::from_millis(10)).await;
    }
    holder.batch_execute("ROLLBACK").await.unwrap();
    drop(holder);
    rt.sleep(Duration::from_millis(300)).await;
    let n: i32 = admin
        .query_one(&format!("SELECT n FROM {table} WHERE id = 1"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "[{}] the cancelled UPDATE ran", rt.name());
    let status = pool.inner().status();
    assert_eq!(status.in_use, 0, "the slot is freed: {status:?}");
    finish(&rt, &pool, &admin, &app, seen).await;
    pg::drop_table(&admin, &table).await;
}

/// C5 in shared mode: a deadline's cancel request travels on a socket of its own, and here
/// (200 ms of latency each way) it reaches the server after the timed-out statement finished,
/// while the next statement pipelined on that connection, another caller's, runs. The server
/// cancels that one; it took no effect, so it runs again and its caller never hears of it.
pub(crate) async fn c5_shared_mode_late_cancel_hits_the_next_statement(rt: Rt) {
    let server = pg::shared();
    let proxy = proxy_to(server);
    let app = unique(&rt, "c5_late_cancel");
    let pool = builder(&rt, via(server, &proxy, &app))
        .min_size(1)
        .max_size(1)
        .shared(SharedMode {
            connections: 1,
            max_in_flight: 8,
            stall_after: Duration::from_secs(5),
        })
        .configure(|b| b.wait_timeout(Duration::from_secs(20)))
        .build_eager()
        .await
        .unwrap();
    // One statement for both calls, prepared now on the lane's connection (the one of the
    // pool), so that each call is a single round trip.
    let sleep = "SELECT $1::int FROM pg_sleep($2::float8)";
    pool.query_one(sleep, &[&0i32, &0.0f64]).await.unwrap();
    let admin = admin_for(&rt, server, &app).await;
    let seen = watch(&rt, &pool);
    proxy.delay(Duration::from_millis(200));

    // A reaches the server at 0.2 s and ends at 0.4 s; its answer would come at 0.6 s, but its
    // deadline is 0.3 s: the cancel leaves then and arrives at about 0.5 s, when B runs.
    let timed = {
        let pool = pool.clone();
        rt.spawn(async move {
            pool.with(CallOptions::new().timeout(Duration::from_millis(300)))
                .query_one(sleep, &[&1i32, &0.2f64])
                .await
                .map(drop)
        })
    };
    rt.sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    let next = pool.query_one(sleep, &[&2i32, &1.0f64]).await;
    let took = started.elapsed();
    let err = within(&rt, Duration::from_secs(5), "the timed-out call", timed)
        .await
        .expect_err("the first call's deadline passed");
    assert!(err.is_timeout(), "[{}] {err:?}", rt.name());
    let two: i32 = next
        .unwrap_or_else(|e| panic!("[{}] the next caller heard of it: {e:?}", rt.name()))
        .get(0);
    assert_eq!(two, 2);
    // It ran twice: cancelled, then again on a fresh connection.
    assert!(
        took > Duration::from_millis(1400),
        "[{}] the next statement took {took:?}: was it cancelled at all?",
        rt.name()
    );
    proxy.delay(Duration::ZERO);
    finish_with_one_lane(&rt, &pool, &admin, &app, seen).await;
}
