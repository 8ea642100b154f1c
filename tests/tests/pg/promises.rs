//! Settings and promises that need a server to observe: the pool-wide statement deadline, the
//! statement cache's bound, what each recycling method sends, Unix-domain sockets, replay of
//! an idempotent transaction, the driver task's end, and revalidation after a server-gone
//! error.

use crate::{EPSILON, drop_once_waiting, pool_for, unique};
use futures::TryStreamExt;
use momopool::Validation;
use momopool_pg::{CallOptions, Connection, Error, PgConfig, PgPool, Recycling};
use momopool_tests::{Rt, pg};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The last statement the backend of the connection named `app` received, read from another
/// connection: `pg_stat_activity.query` keeps it while the backend is idle.
async fn last_statement(admin: &PgPool, app: &str) -> String {
    admin
        .query_one(
            "SELECT query FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0)
}

async fn admin_pool(rt: &Rt, app: &str) -> PgPool {
    let server = pg::shared();
    pool_for(rt, server.config(&format!("{app}_admin")), |b| {
        b.max_size(1)
    })
    .await
}

/// `PgConfig::statement_timeout` applies to every call through the pool, with no per-call
/// option: the caller is freed at the deadline and the server stops the statement.
pub(crate) async fn pool_wide_statement_timeout_cancels_on_the_server(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "pool_deadline");
    let config = server
        .config(&app)
        .statement_timeout(Duration::from_millis(300));
    let pool = pool_for(&rt, config, |b| b.max_size(2)).await;
    let started = Instant::now();
    let err = pool.execute("SELECT pg_sleep(10)", &[]).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::StatementTimeout { .. }), "{err:?}");
    assert!(
        took < Duration::from_millis(300) + EPSILON,
        "[{}] took {took:?}",
        rt.name()
    );
    let admin = admin_pool(&rt, &app).await;
    let mut running = 1;
    for _ in 0..100 {
        running = admin
            .query_one(
                "SELECT count(*)::int FROM pg_stat_activity \
                 WHERE application_name = $1 AND state = 'active'",
                &[&app],
            )
            .await
            .unwrap()
            .get::<_, i32>(0);
        if running == 0 {
            break;
        }
        rt.sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(running, 0, "the cancel request stopped the statement");
    // A per-call timeout overrides the pool-wide one.
    let slept = pool
        .with(CallOptions::new().timeout(Duration::from_secs(5)))
        .execute("SELECT pg_sleep(0.5)", &[])
        .await;
    assert!(slept.is_ok(), "{slept:?}");
}

/// The statement cache holds at most its capacity and closes the least recently used
/// statement first.
pub(crate) async fn statement_cache_is_bounded_least_recently_used_first(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "stmt_cache");
    let config = server.config(&app).statement_cache(3);
    let pool = pool_for(&rt, config, |b| b.min_size(1).max_size(1)).await;
    let mut conn = pool.get().await.unwrap();
    for sql in [
        "SELECT 1 AS a",
        "SELECT 2 AS b",
        "SELECT 1 AS a",
        "SELECT 3 AS c",
    ] {
        conn.query(sql, &[]).await.unwrap();
    }
    // Cached now: a, b, c, with b the least recently used. Listing the server's prepared
    // statements needs a fourth: b is closed to make room (first-in-first-out would close a).
    let list = "SELECT statement FROM pg_prepared_statements";
    conn.query(list, &[]).await.unwrap();
    // Asked again (a cache hit), after the close of b has reached the server.
    let mut names: Vec<String> = conn
        .query(list, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["SELECT 1 AS a", "SELECT 3 AS c", list],
        "[{}] prepared on the server",
        rt.name()
    );
}

/// By default a checkout sends nothing to the server: no check for a connection idle under
/// the validation threshold (the `Verified` round trip comes only after it). The threshold is
/// 2 s here instead of the default 500 ms, the same rule with room for a slow machine.
pub(crate) async fn checkout_sends_nothing_by_default(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "no_round_trip");
    let pool = pool_for(&rt, server.config(&app), |b| {
        b.min_size(1)
            .max_size(1)
            .validation(Validation::IdleLongerThan(Duration::from_secs(2)))
    })
    .await;
    let admin = admin_pool(&rt, &app).await;
    pool.execute("SELECT 'marker'", &[]).await.unwrap();
    let checks = pool.inner().statistics().checks;
    for _ in 0..20 {
        drop(pool.get().await.unwrap());
    }
    assert_eq!(pool.inner().statistics().checks, checks, "no check was due");
    assert_eq!(last_statement(&admin, &app).await, "SELECT 'marker'");
    // Past the threshold the connection is verified with an empty query.
    rt.sleep(Duration::from_millis(2200)).await;
    drop(pool.get().await.unwrap());
    assert_eq!(pool.inner().statistics().checks, checks + 1);
    assert_eq!(last_statement(&admin, &app).await, "");
}

/// What each recycling method sends when the pool checks a connection (here on every
/// checkout): `Fast` nothing, `Verified` an empty query, `Custom` its SQL; and a connection
/// returned inside a transaction is rolled back whatever the method.
pub(crate) async fn recycling_methods_send_what_they_say(rt: Rt) {
    let server = pg::shared();
    let table = unique(&rt, "recycling");
    let methods = [
        (Recycling::Fast, "SELECT 'marker'"),
        (Recycling::Verified, ""),
        (
            Recycling::Custom("SELECT 'custom recycling'".into()),
            "SELECT 'custom recycling'",
        ),
    ];
    let setup = admin_pool(&rt, &table).await;
    pg::fresh_table(&setup, &table, "x int").await;
    for (i, (recycling, expected)) in methods.into_iter().enumerate() {
        let app = format!("{table}_{i}");
        let config = server.config(&app).recycling(recycling.clone());
        let pool = pool_for(&rt, config, |b| {
            b.min_size(1).max_size(1).validation(Validation::Always)
        })
        .await;
        pool.execute("SELECT 'marker'", &[]).await.unwrap();
        drop(pool.get().await.unwrap());
        assert_eq!(
            last_statement(&setup, &app).await,
            expected,
            "[{}] {recycling:?}",
            rt.name()
        );
        // Returned inside a transaction: rolled back first.
        let mut conn = pool.get().await.unwrap();
        conn.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
            .await
            .unwrap();
        drop(conn);
        let n: i64 = pg::count_rows(&pool, &table).await;
        assert_eq!(n, 0, "[{}] {recycling:?}: rolled back", rt.name());
    }
}

/// A pool and a standalone connection over the server's Unix-domain socket.
pub(crate) async fn unix_domain_socket(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "unix");
    let admin = admin_pool(&rt, &app).await;
    // Ask the server where its socket is, so this works on any local server.
    let dirs: String = admin
        .query_one("SHOW unix_socket_directories", &[])
        .await
        .unwrap()
        .get(0);
    let dir = dirs.split(',').next().unwrap_or_default().trim().to_owned();
    assert!(
        dir.starts_with('/'),
        "the test server has no socket directory this test can use: {dirs:?}"
    );
    let port: String = admin.query_one("SHOW port", &[]).await.unwrap().get(0);
    let url: tokio_postgres::Config = server.url().parse().unwrap();
    let user = url.get_user().unwrap_or("postgres");
    let dbname = url.get_dbname().unwrap_or("postgres");
    let dsn = format!("host={dir} port={port} user={user} dbname={dbname} application_name={app}");
    let mut config = PgConfig::from_dsn(&dsn).unwrap();
    if let Some(password) = url.get_password() {
        config = config.password(password);
    }

    let mut conn = Connection::connect_with(config.clone(), rt.pg_runtime())
        .await
        .unwrap();
    // A Unix-socket client has no address.
    let addr: Option<String> = conn
        .query_one("SELECT inet_client_addr()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(addr, None, "connected over the Unix-domain socket");
    drop(conn);

    let pool = pool_for(&rt, config, |b| b.max_size(2)).await;
    let (a, b) = futures::join!(
        pool.query_one("SELECT inet_client_addr()::text", &[]),
        pool.query_one("SELECT 2", &[]),
    );
    assert_eq!(a.unwrap().get::<_, Option<String>>(0), None);
    assert_eq!(b.unwrap().get::<_, i32>(0), 2);
}

/// A transaction closure marked idempotent is replayed once on a fresh connection when its
/// connection is lost mid-way; unmarked, it is not, and the caller hears of the lost
/// connection, which committed nothing (not of an unknown outcome).
pub(crate) async fn idempotent_transaction_is_replayed_once(rt: Rt) {
    let server = pg::shared();
    let table = unique(&rt, "idem_tx");
    let pool = pool_for(&rt, server.config(&table), |b| b.max_size(2)).await;
    pg::fresh_table(&pool, &table, "x int").await;
    for idempotent in [false, true] {
        let attempts = Arc::new(AtomicUsize::new(0));
        let options = if idempotent {
            CallOptions::new().idempotent()
        } else {
            CallOptions::new()
        };
        let insert = format!("INSERT INTO {table} VALUES (1)");
        let result = pool
            .with(options)
            .transaction_with(|tx| {
                let attempt = attempts.fetch_add(1, Ordering::SeqCst);
                let insert = insert.clone();
                Box::pin(async move {
                    tx.execute(&insert, &[]).await?;
                    if attempt == 0 {
                        // The server ends this session mid-transaction.
                        tx.execute("SELECT pg_terminate_backend(pg_backend_pid())", &[])
                            .await?;
                    }
                    Ok(())
                })
            })
            .await;
        let n: i64 = pg::count_rows(&pool, &table).await;
        if idempotent {
            assert!(result.is_ok(), "[{}] {result:?}", rt.name());
            assert_eq!(attempts.load(Ordering::SeqCst), 2);
            assert_eq!(n, 1, "the replay committed once");
        } else {
            let err = result.unwrap_err();
            assert!(
                err.is_connection_lost() && !err.is_outcome_unknown(),
                "[{}] {err:?}",
                rt.name()
            );
            assert_eq!(attempts.load(Ordering::SeqCst), 1, "not replayed");
            assert_eq!(n, 0, "the lost transaction did not commit");
        }
    }
}

/// The task driving a standalone connection ends when the connection is dropped.
pub(crate) async fn driver_task_ends_with_the_connection(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "driver_task");
    let mut conn = Connection::connect_with(server.config(&app), rt.pg_runtime())
        .await
        .unwrap();
    conn.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(rt.live_tasks(), 1, "one task drives the connection");
    drop(conn);
    rt.wait_until(Duration::from_secs(5), "the driver task ends", || {
        rt.live_tasks() == 0
    })
    .await;
    let admin = admin_pool(&rt, &app).await;
    let mut left = 1;
    for _ in 0..100 {
        left = admin
            .query_one(
                "SELECT count(*)::int FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap()
            .get::<_, i32>(0);
        if left == 0 {
            break;
        }
        rt.sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left, 0, "the server session ended too");
}

/// After a statement fails because the server went away, the pool checks its other idle
/// connections before handing them out, even those idle for less than the validation
/// threshold.
pub(crate) async fn server_gone_error_revalidates_idle_connections(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "revalidate");
    let pool = pool_for(&rt, server.config(&app), |b| {
        b.min_size(3).max_size(3).validation(Validation::Never)
    })
    .await;
    pool.inner().warm_up().await.unwrap();
    let revalidations = pool.inner().statistics().revalidations;
    let checks = pool.inner().statistics().checks;
    let mut victim = pool.get().await.unwrap();
    let err = victim
        .query("SELECT pg_terminate_backend(pg_backend_pid())", &[])
        .await
        .unwrap_err();
    assert!(err.is_connection_lost(), "[{}] {err:?}", rt.name());
    drop(victim);
    assert_eq!(
        pool.inner().statistics().revalidations,
        revalidations + 1,
        "a server-gone error revalidates the pool"
    );
    // The two other connections were idle for milliseconds and validation is off: each is
    // checked anyway. The third is the replacement of the victim, new and not checked.
    let mut a = pool.get().await.unwrap();
    let mut b = pool.get().await.unwrap();
    let mut c = pool.get().await.unwrap();
    assert_eq!(
        pool.inner().statistics().checks,
        checks + 2,
        "[{}]",
        rt.name()
    );
    let (x, y, z) = futures::join!(
        a.query_one("SELECT 1", &[]),
        b.query_one("SELECT 2", &[]),
        c.query_one("SELECT 3", &[]),
    );
    let sum =
        x.unwrap().get::<_, i32>(0) + y.unwrap().get::<_, i32>(0) + z.unwrap().get::<_, i32>(0);
    assert_eq!(sum, 6);
}

/// `get_pinged` sends an empty query before handing the connection out, even when no check
/// is due; `get` does not.
pub(crate) async fn get_pinged_pings_the_server(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "pinged");
    let pool = pool_for(&rt, server.config(&app), |b| {
        b.min_size(1).max_size(1).validation(Validation::Never)
    })
    .await;
    let admin = admin_pool(&rt, &app).await;
    pool.execute("SELECT 'marker'", &[]).await.unwrap();
    drop(pool.get().await.unwrap());
    assert_eq!(last_statement(&admin, &app).await, "SELECT 'marker'");
    drop(pool.get_pinged().await.unwrap());
    assert_eq!(last_statement(&admin, &app).await, "", "[{}]", rt.name());
}

/// A statement-list transaction whose connection is lost before `COMMIT` runs again from
/// `BEGIN` on a fresh connection: nothing had been committed, and the caller sees no error.
pub(crate) async fn statement_list_lost_before_commit_runs_again(rt: Rt) {
    let server = pg::shared();
    let table = unique(&rt, "list_replay");
    let pool = pool_for(&rt, server.config(&table), |b| b.max_size(2)).await;
    pool.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (x int); \
         DROP SEQUENCE IF EXISTS {table}_runs; CREATE SEQUENCE {table}_runs"
    ))
    .await
    .unwrap();
    // A sequence ignores transactions: the first run ends its own session, the second not.
    let insert = format!("INSERT INTO {table} VALUES (1)");
    let first_run_dies = format!(
        "SELECT CASE WHEN nextval('{table}_runs') = 1 \
         THEN pg_terminate_backend(pg_backend_pid()) END"
    );
    let count = format!("SELECT count(*) FROM {table}");
    let results = pool
        .transaction(&[(&insert, &[]), (&first_run_dies, &[]), (&count, &[])])
        .await
        .unwrap_or_else(|e| panic!("[{}] {e:?}", rt.name()));
    assert_eq!(
        results[2][0].get::<_, i64>(0),
        1,
        "the second run saw one row"
    );
    let n: i64 = pool.query_one(&count, &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "committed once");
    let runs: i64 = pool
        .query_one(&format!("SELECT last_value FROM {table}_runs"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 2, "ran twice");
}

/// A transaction closure whose session the server ended while the closure was busy (here by
/// `idle_in_transaction_session_timeout`) committed nothing: the caller gets the lost
/// connection's error, not an unknown outcome, and the closure, not marked idempotent, does
/// not run again, although its `COMMIT` never left.
pub(crate) async fn transaction_closure_runs_once_when_its_session_ends(rt: Rt) {
    let server = pg::shared();
    let table = unique(&rt, "closure_once");
    let pool = pool_for(&rt, server.config(&table), |b| b.max_size(2)).await;
    pg::fresh_table(&pool, &table, "x int").await;
    let runtime = rt.pg_runtime();
    let runs = AtomicUsize::new(0);
    let insert = format!("INSERT INTO {table} VALUES (1)");
    let err = pool
        .transaction_with(|tx| {
            runs.fetch_add(1, Ordering::SeqCst);
            let insert = insert.clone();
            let busy = runtime.sleep(Duration::from_millis(500));
            Box::pin(async move {
                tx.execute(&insert, &[]).await?;
                tx.execute("SET LOCAL idle_in_transaction_session_timeout = 50", &[])
                    .await?;
                // The server ends the session meanwhile.
                busy.await;
                Ok(())
            })
        })
        .await
        .expect_err("the session ended before COMMIT");
    assert!(
        err.is_connection_lost() && !err.is_outcome_unknown(),
        "[{}] {err:?}",
        rt.name()
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "[{}] run again", rt.name());
    let n: i64 = pg::count_rows(&pool, &table).await;
    assert_eq!(n, 0, "[{}] nothing was committed", rt.name());
    pg::drop_table(&pool, &table).await;
}

/// A transaction that reaches its deadline before its `COMMIT` was sent committed nothing:
/// in both forms the caller gets `Error::TransactionTimeout` on time, a timeout whose outcome
/// is known. A timeout the closure returns from a call of its own is passed on as it is.
pub(crate) async fn transaction_deadline_before_commit_committed_nothing(rt: Rt) {
    let server = pg::shared();
    let table = unique(&rt, "tx_deadline");
    let pool = pool_for(&rt, server.config(&table), |b| b.max_size(2)).await;
    pg::fresh_table(&pool, &table, "x int").await;
    let insert = format!("INSERT INTO {table} VALUES (1)");
    let slow = "SELECT pg_sleep(5)";
    // Long enough for a connect: each form discards the connection it had.
    let deadline = Duration::from_secs(1);
    let calls = pool.with(CallOptions::new().timeout(deadline));
    for form in ["closure", "list"] {
        let started = Instant::now();
        let outcome = if form == "closure" {
            calls
                .transaction_with(|tx| {
                    let insert = insert.clone();
                    Box::pin(async move {
                        tx.execute(&insert, &[]).await?;
                        tx.execute(slow, &[]).await?;
                        Ok(())
                    })
                })
                .await
        } else {
            calls
                .transaction(&[(insert.as_str(), &[]), (slow, &[])])
                .await
                .map(drop)
        };
        let took = started.elapsed();
        let err = outcome.expect_err("the deadline passed");
        assert!(
            matches!(err, Error::TransactionTimeout { after } if after == deadline)
                && err.is_timeout()
                && !err.is_outcome_unknown(),
            "[{}] {form}: {err:?}",
            rt.name()
        );
        assert!(
            took < deadline + EPSILON,
            "[{}] {form}: {took:?}",
            rt.name()
        );
    }

    let inner = pool.clone();
    let err = pool
        .transaction_with(|tx| {
            let (insert, inner) = (insert.clone(), inner.clone());
            Box::pin(async move {
                tx.execute(&insert, &[]).await?;
                let quick = CallOptions::new().timeout(Duration::from_millis(300));
                inner.with(quick).execute(slow, &[]).await?;
                Ok(())
            })
        })
        .await
        .expect_err("the closure's own call timed out");
    assert!(
        matches!(err, Error::StatementTimeout { .. }) && err.is_outcome_unknown(),
        "[{}] a call of the closure's own: {err:?}",
        rt.name()
    );
    assert_eq!(
        pg::count_rows(&pool, &table).await,
        0,
        "[{}] nothing was committed",
        rt.name()
    );
    pg::drop_table(&pool, &table).await;
}

/// A transaction that a statement of its own ended early (a `COMMIT` inside the closure, or in
/// the list) ran on outside it: a connection lost after that leaves the outcome unknown, and
/// the statement list is not run again from `BEGIN`, which would repeat what was committed.
pub(crate) async fn transaction_ended_early_by_its_own_statement(rt: Rt) {
    let server = pg::shared();
    let table = unique(&rt, "ended_early");
    let pool = pool_for(&rt, server.config(&table), |b| b.max_size(2)).await;
    pg::fresh_table(&pool, &table, "x int").await;
    let insert = format!("INSERT INTO {table} VALUES (1)");
    let die = "SELECT pg_terminate_backend(pg_backend_pid())";

    let err = pool
        .transaction_with(|tx| {
            let insert = insert.clone();
            Box::pin(async move {
                tx.execute(&insert, &[]).await?;
                // By the simple protocol here; the list below sends its own by the extended.
                tx.batch_execute("COMMIT").await?;
                tx.execute(die, &[]).await?;
                Ok(())
            })
        })
        .await
        .expect_err("the connection was lost");
    assert!(err.is_outcome_unknown(), "[{}] closure: {err:?}", rt.name());
    let n = pg::count_rows(&pool, &table).await;
    assert_eq!(
        n,
        1,
        "[{}] the closure's own COMMIT went through",
        rt.name()
    );

    let err = pool
        .transaction(&[(&insert, &[]), ("COMMIT", &[]), (die, &[])])
        .await
        .expect_err("the connection was lost");
    assert!(err.is_outcome_unknown(), "[{}] list: {err:?}", rt.name());
    let n = pg::count_rows(&pool, &table).await;
    assert_eq!(n, 2, "[{}] the list ran once", rt.name());
    pg::drop_table(&pool, &table).await;
}

/// A standalone connection answers to the pool's names with the pool's meanings: `execute`
/// returns rows, `execute_count` a count, `transaction` takes a list (all or nothing) and
/// `transaction_with` a closure.
pub(crate) async fn standalone_connection_speaks_the_pools_api(rt: Rt) {
    let server = pg::shared();
    let table = unique(&rt, "standalone_api");
    let mut conn = Connection::connect_with(server.config(&table), rt.pg_runtime())
        .await
        .unwrap();
    conn.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (x int)"
    ))
    .await
    .unwrap();
    let rows = conn
        .execute("SELECT 1 UNION ALL SELECT 2", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    // The one-row forms say how many rows came when that is not what they expect.
    let err = conn
        .query_one("SELECT 1 UNION ALL SELECT 2", &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    let err = conn
        .query_one("SELECT 1 WHERE false", &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    let err = conn
        .query_opt("SELECT 1 UNION ALL SELECT 2", &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(
        conn.query_opt("SELECT 1 WHERE false", &[])
            .await
            .unwrap()
            .is_none()
    );
    let insert = format!("INSERT INTO {table} VALUES ($1)");
    let count = format!("SELECT count(*) FROM {table}");
    let results = conn
        .transaction(&[(&insert, &[&1i32]), (&insert, &[&2i32]), (&count, &[])])
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[2][0].get::<_, i64>(0), 2);
    // A failing statement rolls the whole list back.
    let err = conn
        .transaction(&[(&insert, &[&3i32]), ("SELECT 1/0", &[])])
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22012"), "{err:?}");
    let n: i64 = conn.query_one(&count, &[]).await.unwrap().get(0);
    assert_eq!(n, 2, "the failed list left nothing behind");
    let updated = conn
        .execute_count(&format!("UPDATE {table} SET x = x + 10"), &[])
        .await
        .unwrap();
    assert_eq!(updated, 2);
    let moved = conn
        .transaction_with(|tx| {
            let sql = format!("DELETE FROM {table} WHERE x > 11");
            Box::pin(async move { tx.execute_count(&sql, &[]).await })
        })
        .await
        .unwrap();
    assert_eq!(moved, 1);
    let n: i64 = conn.query_one(&count, &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
}

/// `callproc` on an overloaded name that untyped arguments leave ambiguous
/// (`generate_series(integer, integer)` or `(bigint, bigint)`, ...): the arguments are cast to
/// their Rust values' types, on the pool and on a standalone connection. Inside a
/// transaction the server's error is returned, and the transaction is not touched.
pub(crate) async fn callproc_resolves_overloaded_names(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "callproc_overloaded");
    let pool = pool_for(&rt, server.config(&app), |b| b.max_size(2)).await;
    let rows = pool
        .callproc("generate_series", &[&1i32, &3i32])
        .await
        .unwrap_or_else(|e| panic!("[{}] {e:?}", rt.name()));
    let values: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(values, [1, 2, 3]);
    let rows = pool
        .callproc("pg_catalog.generate_series", &[&1i64, &2i64])
        .await
        .unwrap();
    assert_eq!(rows[1].get::<_, i64>(0), 2);

    let mut conn = Connection::connect_with(server.config(&app), rt.pg_runtime())
        .await
        .unwrap();
    let rows = conn
        .callproc("generate_series", &[&5i32, &6i32])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    // A function that is not overloaded still gets its types from the server.
    let rows = conn.callproc("upper", &[&"momo"]).await.unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "MOMO");
    conn.batch_execute("BEGIN").await.unwrap();
    let err = conn
        .callproc("generate_series", &[&1i32, &2i32])
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42725"), "{err:?}");
    conn.batch_execute("ROLLBACK").await.unwrap();

    // The second, retyped attempt runs within what is left of the call's deadline. Here the
    // first waits 300 ms for the only connection and is refused; the second takes 400 ms.
    let slow = format!("{app}_slow");
    pool.batch_execute(&format!(
        "CREATE OR REPLACE FUNCTION {slow}(x integer) RETURNS int LANGUAGE sql \
         AS 'SELECT x FROM pg_sleep(0.4)'; \
         CREATE OR REPLACE FUNCTION {slow}(x bigint) RETURNS int LANGUAGE sql \
         AS 'SELECT 0 FROM pg_sleep(0.4)'"
    ))
    .await
    .unwrap();
    let one = pool_for(&rt, server.config(&app), |b| b.max_size(1)).await;
    for (limit, in_time) in [
        (Duration::from_millis(500), false),
        (Duration::from_secs(5), true),
    ] {
        let held = one.get().await.unwrap();
        let calls = one.with(CallOptions::new().timeout(limit));
        let started = Instant::now();
        let (called, ()) = futures::join!(calls.callproc(&slow, &[&7i32]), async {
            rt.sleep(Duration::from_millis(300)).await;
            drop(held);
        });
        let took = started.elapsed();
        if in_time {
            let rows = called.unwrap_or_else(|e| panic!("[{}] {e:?}", rt.name()));
            assert_eq!(
                rows[0].get::<_, i32>(0),
                7,
                "[{}] the integer one",
                rt.name()
            );
        } else {
            let err = called.expect_err("the call's deadline passes in its second attempt");
            assert!(err.is_timeout(), "[{}] {err:?}", rt.name());
            assert!(took <= limit + EPSILON, "[{}] took {took:?}", rt.name());
        }
    }
    pool.batch_execute(&format!(
        "DROP FUNCTION {slow}(integer); DROP FUNCTION {slow}(bigint)"
    ))
    .await
    .unwrap();
}

/// A connection given back inside a transaction (left open by its borrower, or by a
/// transaction closure dropped half-way) ends it at once: its row locks do not wait for the
/// connection's next checkout, which may never come while other connections serve the load.
pub(crate) async fn returned_transaction_releases_its_locks_at_once(rt: Rt) {
    let server = pg::shared();
    let table = unique(&rt, "locks_released");
    let pool = pool_for(&rt, server.config(&table), |b| {
        b.min_size(1).max_size(2).validation(Validation::Never)
    })
    .await;
    let admin = admin_pool(&rt, &table).await;
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY, x int); \
             INSERT INTO {table} VALUES (1, 0)"
        ))
        .await
        .unwrap();
    let update = format!("UPDATE {table} SET x = x + 1 WHERE id = 1");
    // Another session updates the row, giving up after 3 s of waiting for its lock.
    let update_elsewhere = || async {
        let mut other = admin.get().await.unwrap();
        let result = other
            .batch_execute(&format!(
                "SET lock_timeout = '3s'; {update}; RESET lock_timeout"
            ))
            .await;
        drop(other);
        result
    };

    // Left open by the borrower.
    let mut conn = pool.get().await.unwrap();
    conn.batch_execute(&format!("BEGIN; {update}"))
        .await
        .unwrap();
    drop(conn);
    let started = Instant::now();
    let result = update_elsewhere().await;
    assert!(
        result.is_ok(),
        "[{}] the lock was still held after {:?}: {result:?}",
        rt.name(),
        started.elapsed()
    );

    // Left open by a transaction closure whose future was dropped while it waited.
    let (updated, is_updated) = futures::channel::oneshot::channel::<()>();
    let mut updated = Some(updated);
    let closure = pool.transaction_with(|tx| {
        let update = update.clone();
        let updated = updated.take();
        Box::pin(async move {
            tx.execute(&update, &[]).await?;
            if let Some(updated) = updated {
                let _ = updated.send(());
            }
            futures::future::pending::<()>().await;
            Ok(())
        })
    });
    drop_once_waiting(&rt, closure, is_updated).await;
    let result = update_elsewhere().await;
    assert!(result.is_ok(), "[{}] {result:?}", rt.name());
    // Both transactions were rolled back; only the other session's updates stayed.
    let x: i32 = admin
        .query_one(&format!("SELECT x FROM {table} WHERE id = 1"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 2);
}

/// With `Recycling::Clean`, a statement that changes the session (here `SET`) makes the pool
/// reset the connection before its next borrower, even one that comes at once (well within
/// the validation threshold).
pub(crate) async fn clean_recycling_resets_even_a_quick_reuse(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "clean_quick");
    let config = server.config(&app).recycling(Recycling::Clean);
    let pool = pool_for(&rt, config, |b| b.min_size(1).max_size(1)).await;
    let mut conn = pool.get().await.unwrap();
    let default: String = conn
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    conn.execute("SET search_path TO pg_catalog", &[])
        .await
        .unwrap();
    conn.batch_execute("SET statement_timeout = '7s'")
        .await
        .unwrap();
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    let path: String = conn
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(path, default, "[{}]", rt.name());
    let timeout: String = conn
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(timeout, "0", "[{}]", rt.name());
    drop(conn);

    // Changes the statement's text does not show: a function of the caller's own that takes
    // a session-level advisory lock, and a setting changed by `set_config` inside a query.
    let lock = format!("{app}_lock");
    pool.batch_execute(&format!(
        "CREATE OR REPLACE FUNCTION {lock}() RETURNS void LANGUAGE sql \
         AS $$ SELECT pg_advisory_lock(hashtext('{lock}')) $$"
    ))
    .await
    .unwrap();
    pool.execute(&format!("SELECT {lock}()"), &[])
        .await
        .unwrap();
    let locks: i32 = pool
        .query_one(
            "SELECT count(*)::int FROM pg_locks \
             WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(locks, 0, "[{}] the lock is released", rt.name());
    pool.execute(
        "SELECT set_config('application_name', 'changed', false)",
        &[],
    )
    .await
    .unwrap();
    let setting: String = pool
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting, app, "[{}] the setting is reset", rt.name());
    pool.batch_execute(&format!("DROP FUNCTION {lock}()"))
        .await
        .unwrap();

    // A setting changed for the session inside a transaction outlives its COMMIT: reset too.
    pool.transaction_with(|tx| {
        Box::pin(async move {
            tx.batch_execute("SET search_path TO pg_catalog").await?;
            Ok(())
        })
    })
    .await
    .unwrap();
    let path: String = pool
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(path, default, "[{}] reset after a transaction", rt.name());

    // A `COPY` runs a query too: a setting it changes is reset as well.
    let mut conn = pool.get().await.unwrap();
    let copied: Vec<_> = conn
        .copy_out("COPY (SELECT set_config('application_name', 'copied', false)) TO STDOUT")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(copied.concat(), b"copied\n", "[{}]", rt.name());
    drop(conn);
    let setting: String = pool
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting, app, "[{}] reset after a COPY", rt.name());

    // So does a cursor's query, in the transaction the cursor runs in.
    let mut conn = pool.get().await.unwrap();
    let rows: Vec<_> = conn
        .cursor(
            "SELECT set_config('application_name', 'cursored', false)",
            &[],
            10,
        )
        .try_collect()
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "[{}]", rt.name());
    drop(conn);
    let setting: String = pool
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting, app, "[{}] reset after a cursor", rt.name());

    // Nothing that could open a transaction ran: the reset goes out alone, with no ROLLBACK
    // queued ahead of it (which would only earn a warning), and a held connection still
    // retries an overloaded `callproc` with typed arguments.
    let admin = admin_pool(&rt, &app).await;
    pool.execute("SELECT 'plain'", &[]).await.unwrap();
    rt.sleep(Duration::from_millis(300)).await;
    assert_eq!(
        last_statement(&admin, &app).await,
        "SELECT 'plain'",
        "[{}]",
        rt.name()
    );
    let mut conn = pool.get().await.unwrap();
    let rows = conn
        .callproc("generate_series", &[&1i32, &2i32])
        .await
        .unwrap_or_else(|e| panic!("[{}] {e:?}", rt.name()));
    assert_eq!(rows.len(), 2, "[{}]", rt.name());
}
