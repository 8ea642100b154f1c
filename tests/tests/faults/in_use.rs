//! B3 and C. Connections that die or hang: idle and half-open, or in the middle of a
//! statement.

use crate::{
    EPSILON, active_pids, admin_for, builder, finish, proxy_to, unique, via, wait_for_active,
    watch, within,
};
use momopool::{Removal, Validation};
use momopool_pg::throwaway::{Cluster, StopMode};
use momopool_pg::{CallOptions, Error, PgPool};
use momopool_tests::proxy::Kill;
use momopool_tests::{Rt, pg};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Terminates backend `pid` from `admin`.
async fn terminate(rt: &Rt, admin: &PgPool, pid: i32) {
    let done: bool = within(
        rt,
        Duration::from_secs(5),
        "pg_terminate_backend",
        admin.query_one("SELECT pg_terminate_backend($1)", &[&pid]),
    )
    .await
    .unwrap()
    .get(0);
    assert!(done, "[{}] backend {pid} was there to terminate", rt.name());
}

/// Rows in `table`, counted from `admin`.
async fn rows_in(rt: &Rt, admin: &PgPool, table: &str) -> i64 {
    within(
        rt,
        Duration::from_secs(5),
        "counting rows",
        admin.query_one(&format!("SELECT count(*) FROM {table}"), &[]),
    )
    .await
    .unwrap()
    .get(0)
}

/// Sends SIGCONT to a stopped backend when dropped, so a failing test leaves none stopped.
struct Stopped<'a> {
    cluster: &'a Cluster,
    pid: u32,
}

impl<'a> Stopped<'a> {
    fn stop(cluster: &'a Cluster, pid: i32) -> Self {
        let pid = u32::try_from(pid).expect("a backend pid is positive");
        cluster.signal(pid, "STOP").expect("SIGSTOP the backend");
        Stopped { cluster, pid }
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let _ = self.cluster.signal(self.pid, "CONT");
    }
}

/// Whether `err` is the error of a statement deadline (as such, or as an unknown outcome).
fn is_deadline(err: &Error) -> bool {
    match err {
        Error::StatementTimeout { .. } => true,
        Error::OutcomeUnknown(inner) => matches!(**inner, Error::StatementTimeout { .. }),
        _ => false,
    }
}

/// B3's recycle timeout: how long a check or a ping waits for a silently dead connection.
const B3_RECYCLE_TIMEOUT: Duration = Duration::from_millis(200);

/// B3's pool: `size` connections, opened at once, checked per `validation`.
async fn b3_pool(
    rt: &Rt,
    config: momopool_pg::PgConfig,
    size: usize,
    validation: Validation,
) -> PgPool {
    builder(rt, config)
        .min_size(size)
        .max_size(size)
        .configure(move |b| {
            b.validation(validation)
                .recycle_timeout(B3_RECYCLE_TIMEOUT)
                .create_timeout(Duration::from_secs(2))
                .wait_timeout(Duration::from_secs(3))
        })
        .build_eager()
        .await
        .unwrap()
}

/// B3: every idle connection goes silently dead (half-open: blackholed by the proxy, while
/// new connections pass). With validation on every checkout and a 200 ms recycle timeout,
/// each check times out, the connection is discarded and a fresh one is made.
pub(crate) async fn b3_silently_dead_idle_connections(rt: Rt) {
    let server = pg::shared();
    let proxy = proxy_to(server);
    let app = unique(&rt, "b3");
    let pool = b3_pool(&rt, via(server, &proxy, &app), 2, Validation::Always).await;
    let admin = admin_for(&rt, server, &app).await;
    let old: Vec<i32> = {
        let a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();
        vec![a.backend_pid(), b.backend_pid()]
    };
    let seen = watch(&rt, &pool);

    proxy.blackhole();
    proxy.pass(); // new connections pass; the two existing ones stay dead
    let started = Instant::now();
    let conn = within(&rt, Duration::from_secs(5), "get()", pool.get())
        .await
        .unwrap_or_else(|e| panic!("[{}] get() after the idle connections died: {e}", rt.name()));
    let took = started.elapsed();
    assert!(
        !old.contains(&conn.backend_pid()),
        "[{}] a fresh connection",
        rt.name()
    );
    drop(conn);
    assert!(
        took >= B3_RECYCLE_TIMEOUT && took < 2 * B3_RECYCLE_TIMEOUT + EPSILON,
        "[{}] get() took {took:?}",
        rt.name()
    );
    let failed = pool.inner().statistics().closed.get(Removal::FailedCheck);
    assert!(
        (1..=2).contains(&failed),
        "[{}] {failed} connections failed their check",
        rt.name()
    );
    let one: i32 = pool.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    finish(&rt, &pool, &admin, &app, seen).await;
}

/// B3 through `get_pinged`: with no check at checkout, the held connection's ping finds it
/// silently dead (half-open), gives up within the recycle timeout, and a fresh connection is
/// pinged and handed out instead.
pub(crate) async fn b3_get_pinged_skips_a_silently_dead_connection(rt: Rt) {
    let server = pg::shared();
    let proxy = proxy_to(server);
    let app = unique(&rt, "b3_pinged");
    let pool = b3_pool(&rt, via(server, &proxy, &app), 1, Validation::Never).await;
    let admin = admin_for(&rt, server, &app).await;
    let old = pool.get().await.unwrap().backend_pid();
    let seen = watch(&rt, &pool);

    proxy.blackhole();
    proxy.pass(); // new connections pass; the existing one stays dead
    let started = Instant::now();
    let conn = within(
        &rt,
        Duration::from_secs(5),
        "get_pinged()",
        pool.get_pinged(),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "[{}] get_pinged() after the connection died: {e}",
            rt.name()
        )
    });
    let took = started.elapsed();
    assert_ne!(
        conn.backend_pid(),
        old,
        "[{}] a fresh connection",
        rt.name()
    );
    drop(conn);
    assert!(
        took >= B3_RECYCLE_TIMEOUT && took < 2 * B3_RECYCLE_TIMEOUT + EPSILON,
        "[{}] get_pinged() took {took:?}",
        rt.name()
    );
    assert_eq!(
        pool.inner().statistics().closed.get(Removal::Broken),
        1,
        "[{}] the dead connection was discarded",
        rt.name()
    );
    finish(&rt, &pool, &admin, &app, seen).await;
}

/// C1: the backend is terminated in the middle of a statement. The caller gets the 57P01
/// as an unknown outcome (it was not replayed: a replay would sleep 5 s more), the connection
/// is discarded and the next call runs on a new backend.
pub(crate) async fn c1_backend_terminated_mid_statement(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "c1");
    let pool = builder(&rt, server.config(&app))
        .min_size(1)
        .max_size(2)
        .configure(|b| b.wait_timeout(Duration::from_secs(5)))
        .build_eager()
        .await
        .unwrap();
    let admin = admin_for(&rt, server, &app).await;
    let seen = watch(&rt, &pool);
    let sleeper = {
        let pool = pool.clone();
        rt.spawn(async move { pool.execute("SELECT pg_sleep(5)", &[]).await.map(drop) })
    };
    let pid = wait_for_active(&rt, &admin, &app, "SELECT pg_sleep(5)", &[]).await;
    terminate(&rt, &admin, pid).await;
    let terminated = Instant::now();
    let err = within(
        &rt,
        Duration::from_secs(3),
        "the terminated statement",
        sleeper,
    )
    .await
    .expect_err("the statement's backend was terminated");
    assert!(
        terminated.elapsed() < Duration::from_secs(1),
        "[{}] the error came {:?} after the termination",
        rt.name(),
        terminated.elapsed()
    );
    let Error::OutcomeUnknown(inner) = &err else {
        panic!("[{}] expected an unknown outcome, got {err:?}", rt.name());
    };
    assert_eq!(
        inner.code().map(|c| c.code()),
        Some("57P01"),
        "[{}] {err}",
        rt.name()
    );
    assert!(inner.is_connection_lost(), "[{}] {inner:?}", rt.name());
    rt.wait_until(
        Duration::from_secs(2),
        "the connection is discarded",
        || pool.inner().statistics().closed.get(Removal::Broken) >= 1,
    )
    .await;
    let now: i32 = pool
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(now, pid, "[{}] a new backend", rt.name());
    finish(&rt, &pool, &admin, &app, seen).await;
}

/// C2: the connection is reset (RST) in the middle of a non-idempotent INSERT. The caller
/// gets an unknown outcome at once; the INSERT is never replayed (the server holds at most
/// the one row the interrupted statement may have committed); the pool heals.
pub(crate) async fn c2_abrupt_loss_mid_statement(rt: Rt) {
    let server = pg::shared();
    let proxy = proxy_to(server);
    let table = unique(&rt, "c2");
    let app = table.clone();
    let admin = admin_for(&rt, server, &app).await;
    pg::fresh_table(&admin, &table, "x int").await;
    let pool = builder(&rt, via(server, &proxy, &app))
        .min_size(1)
        .max_size(2)
        .configure(|b| b.wait_timeout(Duration::from_secs(5)))
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
    proxy.kill_all(Kill::Rst);
    let killed = Instant::now();
    let err = within(&rt, Duration::from_secs(3), "the reset statement", inserter)
        .await
        .expect_err("the connection was reset mid-statement");
    assert!(
        killed.elapsed() < Duration::from_millis(500),
        "[{}] the error came {:?} after the reset",
        rt.name(),
        killed.elapsed()
    );
    let Error::OutcomeUnknown(inner) = &err else {
        panic!("[{}] expected an unknown outcome, got {err:?}", rt.name());
    };
    assert!(inner.is_connection_lost(), "[{}] {inner:?}", rt.name());

    // The interrupted backend finishes its sleep, commits and finds its client gone.
    let started = Instant::now();
    loop {
        let pids = active_pids(&rt, &admin, &app, &insert).await;
        assert!(
            pids.iter().all(|p| *p == pid),
            "[{}] the INSERT was replayed: {pids:?}",
            rt.name()
        );
        if pids.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "still running");
        rt.sleep(Duration::from_millis(20)).await;
    }
    let n = rows_in(&rt, &admin, &table).await;
    assert!(n <= 1, "[{}] {n} rows: the INSERT ran twice", rt.name());
    rt.sleep(Duration::from_millis(300)).await;
    assert_eq!(rows_in(&rt, &admin, &table).await, n, "[{}]", rt.name());

    let one: i32 = pool.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the pool heals");
    finish(&rt, &pool, &admin, &app, seen).await;
    pg::drop_table(&admin, &table).await;
}

/// C3: the server's reply to COMMIT is lost. The transaction closure runs once, its caller
/// gets an unknown outcome (or the statement deadline) by the deadline, and the server holds
/// exactly the one row it committed.
pub(crate) async fn c3_lost_commit_reply(rt: Rt) {
    let server = pg::shared();
    let proxy = proxy_to(server);
    let table = unique(&rt, "c3");
    let app = table.clone();
    let admin = admin_for(&rt, server, &app).await;
    pg::fresh_table(&admin, &table, "x int").await;
    let pool = builder(&rt, via(server, &proxy, &app))
        .min_size(1)
        .max_size(2)
        .configure(|b| b.wait_timeout(Duration::from_secs(5)))
        .build_eager()
        .await
        .unwrap();
    let seen = watch(&rt, &pool);
    proxy.swallow_reply_after(b"COMMIT");
    let runs = Arc::new(AtomicUsize::new(0));
    let insert = format!("INSERT INTO {table} VALUES (1)");
    let deadline = Duration::from_secs(1);
    let started = Instant::now();
    let outcome = within(
        &rt,
        Duration::from_secs(5),
        "the transaction",
        pool.with(CallOptions::new().timeout(deadline))
            .transaction_with(|tx| {
                runs.fetch_add(1, Ordering::SeqCst);
                let insert = insert.clone();
                Box::pin(async move { tx.execute(&insert, &[]).await.map(drop) })
            }),
    )
    .await;
    let took = started.elapsed();
    let err = outcome.expect_err("the COMMIT's reply never came");
    assert!(
        err.is_outcome_unknown(),
        "[{}] expected an unknown outcome, got {err:?}",
        rt.name()
    );
    assert!(
        took >= deadline && took < deadline + EPSILON,
        "[{}] the transaction failed after {took:?}",
        rt.name()
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "[{}] the closure is not re-run",
        rt.name()
    );
    assert_eq!(
        rows_in(&rt, &admin, &table).await,
        1,
        "[{}] the server committed the row once",
        rt.name()
    );

    proxy.pass();
    finish(&rt, &pool, &admin, &app, seen).await;
    pg::drop_table(&admin, &table).await;
}

// The destructive cluster's lock is held for the whole test on purpose: it serializes the
// test threads (each runs its body inside its own `block_on`), not tasks of one runtime.
/// C4: an idempotent read in flight during a fast restart succeeds, replayed on a fresh
/// connection, within its deadline; a read that fails twice in a row gets the second error,
/// with no third attempt.
#[allow(clippy::await_holding_lock)]
pub(crate) async fn c4_idempotent_read_across_a_restart(rt: Rt) {
    let server = pg::destructive();
    let cluster = server.cluster().expect("the destructive server is ours");
    let app = unique(&rt, "c4");
    let pool = builder(&rt, server.config(&app))
        .min_size(1)
        .max_size(1)
        .configure(|b| {
            b.wait_timeout(Duration::from_secs(10))
                .reconnect_interval(Duration::from_millis(50))
                .reconnect_max(Duration::from_millis(200))
        })
        .build_eager()
        .await
        .unwrap();
    let admin = admin_for(&rt, &server, &app).await;
    let seen = watch(&rt, &pool);
    let deadline = Duration::from_secs(8);
    let read = |sql: &'static str| {
        let pool = pool.clone();
        rt.spawn(async move {
            let started = Instant::now();
            let outcome = pool
                .with(CallOptions::new().timeout(deadline).idempotent())
                .query_one(sql, &[])
                .await
                .map(|row| row.get::<_, i32>(0));
            (outcome, started.elapsed())
        })
    };

    // One failure: replayed once, on a backend of the restarted server.
    let sql = "SELECT pg_backend_pid() FROM pg_sleep(0.5)";
    let reader = read(sql);
    let first = wait_for_active(&rt, &admin, &app, sql, &[]).await;
    // pg_ctl blocks this thread while the server restarts; on the multi-threaded runtimes
    // the pool keeps running meanwhile.
    cluster.restart(StopMode::Fast).expect("restart");
    let (outcome, took) = within(&rt, deadline + EPSILON, "the replayed read", reader).await;
    let pid = outcome.unwrap_or_else(|e| {
        panic!(
            "[{}] the idempotent read failed across the restart: {e:?}",
            rt.name()
        )
    });
    assert_ne!(pid, first, "[{}] replayed on a new backend", rt.name());
    assert!(took < deadline, "[{}] took {took:?}", rt.name());

    // Two failures in a row: the second is returned.
    let sql = "SELECT pg_backend_pid() FROM pg_sleep(1)";
    let reader = read(sql);
    let a = wait_for_active(&rt, &admin, &app, sql, &[]).await;
    terminate(&rt, &admin, a).await;
    let b = wait_for_active(&rt, &admin, &app, sql, &[a]).await;
    terminate(&rt, &admin, b).await;
    let terminated = Instant::now();
    let (outcome, _) = within(&rt, Duration::from_secs(3), "the twice-failed read", reader).await;
    let err = outcome.expect_err("the replay failed too");
    assert!(
        terminated.elapsed() < Duration::from_millis(500),
        "[{}] the error came {:?} after the second termination",
        rt.name(),
        terminated.elapsed()
    );
    assert!(err.is_outcome_unknown(), "[{}] {err:?}", rt.name());
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("57P01"),
        "[{}] {err}",
        rt.name()
    );
    rt.sleep(Duration::from_millis(300)).await;
    let third: Vec<i32> = active_pids(&rt, &admin, &app, sql)
        .await
        .into_iter()
        .filter(|p| *p != a && *p != b)
        .collect();
    assert!(
        third.is_empty(),
        "[{}] a third attempt: {third:?}",
        rt.name()
    );
    finish(&rt, &pool, &admin, &app, seen).await;
}

/// C5: the backend hangs mid-statement (SIGSTOP). A 300 ms statement deadline frees the
/// caller on time, the connection is discarded and the slot freed while the backend is still
/// stopped.
#[allow(clippy::await_holding_lock)]
pub(crate) async fn c5_backend_stopped_mid_statement(rt: Rt) {
    let server = pg::destructive();
    let cluster = server.cluster().expect("the destructive server is ours");
    let app = unique(&rt, "c5");
    let pool = builder(&rt, server.config(&app))
        .min_size(1)
        .max_size(1)
        .configure(|b| b.wait_timeout(Duration::from_secs(5)))
        .build_eager()
        .await
        .unwrap();
    let admin = admin_for(&rt, &server, &app).await;
    let seen = watch(&rt, &pool);
    let sql = "SELECT pg_backend_pid()";
    // Also prepares (and caches) the statement, so the hang is in its execution.
    let pid: i32 = pool.query_one(sql, &[]).await.unwrap().get(0);

    let stopped = Stopped::stop(cluster, pid);
    let deadline = Duration::from_millis(300);
    let started = Instant::now();
    let outcome = within(
        &rt,
        Duration::from_secs(3),
        "the hung statement",
        pool.with(CallOptions::new().timeout(deadline))
            .query_one(sql, &[]),
    )
    .await;
    let took = started.elapsed();
    let err = outcome.expect_err("the backend is stopped");
    assert!(is_deadline(&err), "[{}] {err:?}", rt.name());
    assert!(
        took >= deadline && took < deadline + EPSILON,
        "[{}] the deadline freed the caller after {took:?}",
        rt.name()
    );
    rt.wait_until(Duration::from_millis(500), "the slot is freed", || {
        let s = pool.inner().status();
        s.in_use == 0 && pool.inner().statistics().closed.get(Removal::Broken) == 1
    })
    .await;
    let now: i32 = within(
        &rt,
        Duration::from_secs(3),
        "a call while the old backend is stopped",
        pool.query_one(sql, &[]),
    )
    .await
    .unwrap()
    .get(0);
    assert_ne!(now, pid, "[{}] a new backend", rt.name());

    drop(stopped);
    finish(&rt, &pool, &admin, &app, seen).await;
}

/// C5 through the proxy: the connection goes silent (blackholed) after the statement was
/// sent. The deadline frees the caller on time and the connection is discarded; once the
/// fault is gone, nothing of it is left on the server.
pub(crate) async fn c5_blackholed_mid_statement(rt: Rt) {
    let server = pg::shared();
    let proxy = proxy_to(server);
    let app = unique(&rt, "c5_blackhole");
    let pool = builder(&rt, via(server, &proxy, &app))
        .min_size(1)
        .max_size(1)
        .configure(|b| b.wait_timeout(Duration::from_secs(5)))
        .build_eager()
        .await
        .unwrap();
    let admin = admin_for(&rt, server, &app).await;
    let seen = watch(&rt, &pool);
    let sql = "SELECT 1 FROM pg_sleep(10)";
    let deadline = Duration::from_millis(300);
    let started = Instant::now();
    let hung = {
        let pool = pool.clone();
        rt.spawn(async move {
            let outcome = pool
                .with(CallOptions::new().timeout(deadline))
                .execute(sql, &[])
                .await;
            (outcome.map(drop), started.elapsed())
        })
    };
    wait_for_active(&rt, &admin, &app, sql, &[]).await;
    proxy.blackhole();
    proxy.pass(); // new connections (the cancel request, the replacement) pass
    let (outcome, took) = within(&rt, Duration::from_secs(3), "the hung statement", hung).await;
    let err = outcome.expect_err("the reply was blackholed");
    assert!(is_deadline(&err), "[{}] {err:?}", rt.name());
    assert!(
        took >= deadline && took < deadline + EPSILON,
        "[{}] the deadline freed the caller after {took:?}",
        rt.name()
    );
    rt.wait_until(Duration::from_millis(500), "the slot is freed", || {
        pool.inner().status().in_use == 0
    })
    .await;
    // The cancel request reached the server: the sleep stops.
    let started = Instant::now();
    while !active_pids(&rt, &admin, &app, sql).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "[{}] the statement still runs on the server",
            rt.name()
        );
        rt.sleep(Duration::from_millis(20)).await;
    }
    finish(&rt, &pool, &admin, &app, seen).await;
}
