//! Momoko's API on a real server.

use crate::{EPSILON, drop_once_waiting, pool_for, unique};
use futures::{StreamExt, TryStreamExt};
use momopool::Removal;
use momopool_pg::{Connection, Error, Recycling};
use momopool_tests::{Rt, pg};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

/// Momoko's tutorial, step by step: a connection, a pool, parallel queries, callproc,
/// transaction, mogrify, and a held connection with a server-side cursor.
pub(crate) async fn tutorial_end_to_end(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "tutorial");

    // A standalone connection.
    let mut conn = Connection::connect_with(server.config(&app), rt.pg_runtime())
        .await
        .unwrap();
    let one: i32 = conn.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(conn);

    // A pool: execute.
    let pool = pool_for(&rt, server.config(&app), |b| b).await;
    let rows = pool.execute("SELECT 1", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 1);

    // callproc: a set-returning function of our own, called by name.
    let function = unique(&rt, "Tutorial_Series");
    pool.batch_execute(&format!(
        "CREATE OR REPLACE FUNCTION \"{function}\"(n int) RETURNS SETOF int \
         LANGUAGE sql AS 'SELECT generate_series(1, n)'"
    ))
    .await
    .unwrap();
    let rows = pool.callproc(&function, &[&5i32]).await.unwrap();
    let values: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(values, vec![1, 2, 3, 4, 5]);
    let qualified = format!("public.{function}");
    assert_eq!(pool.callproc(&qualified, &[&2i32]).await.unwrap().len(), 2);
    let err = pool.callproc("", &[]).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)));

    // transaction: a list of statements, atomically.
    let table = unique(&rt, "tutorial_tx");
    pg::fresh_table(&pool, &table, "x int").await;
    let insert = format!("INSERT INTO {table} VALUES ($1)");
    let count = format!("SELECT count(*)::int FROM {table}");
    let results = pool
        .transaction(&[
            (insert.as_str(), &[&1i32]),
            (insert.as_str(), &[&2i32]),
            (count.as_str(), &[]),
        ])
        .await
        .unwrap();
    assert_eq!(results[2][0].get::<_, i32>(0), 2);
    // A failing statement rolls back the whole list.
    let bad = pool
        .transaction(&[(insert.as_str(), &[&3i32]), ("SELECT 1/0", &[])])
        .await
        .unwrap_err();
    assert_eq!(bad.code().map(|c| c.code()), Some("22012"));
    let n: i32 = pool.query_one(&count, &[]).await.unwrap().get(0);
    assert_eq!(n, 2, "the failed transaction left nothing behind");

    // mogrify.
    let text = pool
        .mogrify("SELECT $1::text, $2::int", &[&"it's", &7i32])
        .await
        .unwrap();
    assert_eq!(text, "SELECT 'it''s'::text, '7'::integer::int");

    // getconn + manage: a server-side cursor over 1000 integers, 10 at a time.
    let mut conn = pool.get().await.unwrap();
    let rows: Vec<_> = conn
        .cursor("SELECT generate_series(1, 1000)", &[], 10)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(rows.len(), 1000);
    assert_eq!(rows[999].get::<_, i32>(0), 1000);
    drop(conn);
    let conn = pool.get_pinged().await.unwrap();
    drop(conn);

    pool.batch_execute(&format!("DROP TABLE {table}; DROP FUNCTION \"{function}\""))
        .await
        .unwrap();
    let status = pool.inner().status();
    assert_eq!(status.size, status.idle + status.in_use + status.creating);
}

/// A cursor's stream dropped early. Between fetches, its transaction is rolled back and the
/// connection is checked, then serves the next caller with no cursor left open. With a fetch
/// in flight, the rest of that reply would still be on its way: the connection is closed (as
/// broken) instead of reused, and a new one serves the next caller.
pub(crate) async fn cursor_dropped_early_leaves_the_pool_clean(rt: Rt) {
    let server = pg::shared();
    let pool = pool_for(&rt, server.config(&unique(&rt, "cursor_drop")), |b| {
        b.min_size(1).max_size(1)
    })
    .await;
    let broken = || pool.inner().statistics().closed.get(Removal::Broken);

    // Between fetches.
    let checks = pool.inner().statistics().checks;
    let mut conn = pool.get().await.unwrap();
    let pid = conn.backend_pid();
    {
        let mut rows = std::pin::pin!(conn.cursor("SELECT generate_series(1, 1000)", &[], 10));
        let first = rows.next().await.unwrap().unwrap();
        assert_eq!(first.get::<_, i32>(0), 1);
    }
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    assert_eq!(
        conn.backend_pid(),
        pid,
        "[{}] the connection is reused",
        rt.name()
    );
    let open: i64 = conn
        // Named portals only: the statement asking runs in the unnamed one.
        .query_one("SELECT count(*) FROM pg_cursors WHERE name <> ''", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        open,
        0,
        "[{}] the cursor's transaction was rolled back",
        rt.name()
    );
    assert_eq!(broken(), 0);
    assert!(
        pool.inner().statistics().checks > checks,
        "[{}] the connection was checked before its reuse",
        rt.name()
    );

    // With a fetch in flight: one page takes about a second.
    {
        let query = "SELECT pg_sleep(0.05) FROM generate_series(1, 20)";
        let mut rows = std::pin::pin!(conn.cursor(query, &[], 20));
        let fetched = rt.timeout(Duration::from_millis(100), rows.next()).await;
        assert!(
            fetched.is_none(),
            "[{}] the fetch is still running",
            rt.name()
        );
    }
    drop(conn);
    assert_eq!(broken(), 1, "[{}] the connection is not reused", rt.name());
    let mut conn = pool.get().await.unwrap();
    assert_ne!(conn.backend_pid(), pid, "[{}] a new connection", rt.name());
    let one: i32 = conn.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// A cursor inside a transaction the caller began is refused, and the caller's transaction
/// goes on uncommitted; outside one it works, also after that transaction ended.
pub(crate) async fn cursor_refuses_to_run_inside_the_callers_transaction(rt: Rt) {
    let server = pg::shared();
    let table = unique(&rt, "cursor_in_tx");
    let who = rt.name();
    let pool = pool_for(&rt, server.config(&table), |b| b.max_size(1)).await;
    pool.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (x int)"
    ))
    .await
    .unwrap();
    let mut conn = pool.get().await.unwrap();
    conn.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    let refused: Result<Vec<tokio_postgres::Row>, Error> = conn
        .cursor("SELECT generate_series(1, 5)", &[], 2)
        .try_collect()
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidInput(_))),
        "[{who}] {refused:?}"
    );
    conn.batch_execute(&format!("INSERT INTO {table} VALUES (2); ROLLBACK"))
        .await
        .unwrap();
    let rows: Vec<tokio_postgres::Row> = conn
        .cursor("SELECT generate_series(1, 5)", &[], 2)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("[{who}] outside a transaction: {e}"));
    assert_eq!(rows.len(), 5, "[{who}]");
    drop(conn);
    assert_eq!(
        pg::count_rows(&pool, &table).await,
        0,
        "[{who}] nothing of the caller's transaction was committed"
    );
    pool.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

pub(crate) async fn three_queries_in_parallel_take_the_time_of_one(rt: Rt) {
    let server = pg::shared();
    let pool = pool_for(&rt, server.config(&unique(&rt, "parallel")), |b| {
        b.min_size(3).max_size(3)
    })
    .await;
    pool.inner().warm_up().await.unwrap();
    let started = Instant::now();
    let (a, b, c) = futures::try_join!(
        pool.execute("SELECT pg_sleep(0.3)", &[]),
        pool.execute("SELECT pg_sleep(0.3)", &[]),
        pool.execute("SELECT pg_sleep(0.3)", &[]),
    )
    .unwrap();
    let took = started.elapsed();
    assert_eq!(a.len() + b.len() + c.len(), 3);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(300) + EPSILON,
        "[{}] three parallel 0.3 s queries took {took:?}",
        rt.name()
    );
}

/// On min 1 / max 5, four parallel `pg_sleep(1)` run on four backends at once and take about
/// one second; once idle, the pool shrinks back to one connection.
pub(crate) async fn stretching_seen_in_pg_stat_activity(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "stretch");
    let pool = pool_for(&rt, server.config(&app), |b| {
        b.min_size(1)
            .max_size(5)
            .idle_timeout(Duration::from_millis(400))
            .maintenance_interval(Duration::from_millis(50))
    })
    .await;
    let admin = pool_for(&rt, server.config(&format!("{app}_admin")), |b| {
        b.max_size(1)
    })
    .await;
    let backends = || async {
        admin
            .query_one(
                "SELECT count(*)::int FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap()
            .get::<_, i32>(0)
    };
    assert_eq!(backends().await, 1);

    let started = Instant::now();
    let sleeps =
        futures::future::try_join_all((0..4).map(|_| pool.execute("SELECT pg_sleep(1)", &[])));
    let watch = async {
        rt.sleep(Duration::from_millis(500)).await;
        backends().await
    };
    let (results, during) = futures::join!(sleeps, watch);
    results.unwrap();
    let took = started.elapsed();
    assert_eq!(during, 4, "[{}] four backends during the burst", rt.name());
    assert!(
        took < Duration::from_millis(1000) + EPSILON * 2,
        "[{}] four parallel 1 s sleeps took {took:?}",
        rt.name()
    );

    rt.wait_until(Duration::from_secs(5), "shrink back to one", || {
        pool.inner().status().size == 1
    })
    .await;
    let mut settled = 0;
    for _ in 0..50 {
        settled = backends().await;
        if settled == 1 {
            break;
        }
        rt.sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(settled, 1, "the server agrees: one backend left");
}

pub(crate) async fn mogrify_renders_literals(rt: Rt) {
    let server = pg::shared();
    let pool = pool_for(&rt, server.config(&unique(&rt, "mogrify")), |b| b).await;
    let none: Option<i32> = None;
    let array = vec![1i32, 2, 3];
    let json = serde_json::json!({"a": "it's"});
    let bytes: Vec<u8> = vec![0, 1, 255];
    let text = pool
        .mogrify(
            "SELECT $1::text, $2::text, $3::int, $4::int[], $5::jsonb, $6::bytea, \
             '$1 stays', $7::timestamptz",
            &[
                &"back\\slash",
                &"O'Reilly",
                &none,
                &array,
                &json,
                &bytes,
                &"2024-01-02 03:04:05+00",
            ],
        )
        .await;
    // $7 is declared timestamptz but given as text: tokio-postgres refuses the mismatch.
    let err = text.unwrap_err();
    assert!(matches!(err, Error::Postgres(_)), "{err:?}");

    // Timestamps, to the microsecond, with and without a time zone.
    let when = SystemTime::UNIX_EPOCH + Duration::from_micros(1_704_164_645_123_456);
    let text = pool
        .mogrify("SELECT $1::timestamptz, $2::timestamp", &[&when, &when])
        .await
        .unwrap();
    assert!(
        text.contains("2024-01-02") && text.contains(".123456"),
        "{text}"
    );
    let row = pool.query_one(&text, &[]).await.unwrap();
    assert_eq!(row.get::<_, SystemTime>(0), when, "{text}");
    assert_eq!(row.get::<_, SystemTime>(1), when, "{text}");

    let text = pool
        .mogrify(
            "SELECT $1::text, $2::text, $3::int, $4::int[], $5::jsonb, $6::bytea, '$1 stays'",
            &[&"back\\slash", &"O'Reilly", &none, &array, &json, &bytes],
        )
        .await
        .unwrap();
    assert_eq!(
        text,
        "SELECT E'back\\\\slash'::text, 'O''Reilly'::text, NULL::int, \
         '{1,2,3}'::integer[]::int[], '{\"a\": \"it''s\"}'::jsonb::jsonb, \
         E'\\\\x0001ff'::bytea::bytea, '$1 stays'"
    );
    // What mogrify shows is what the server would have run.
    let rows = pool.execute(&text, &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "back\\slash");
    assert_eq!(rows[0].get::<_, Vec<i32>>(3), array);
    assert_eq!(rows[0].get::<_, Vec<u8>>(5), bytes);

    // A NUL byte cannot be in PostgreSQL text.
    let err = pool
        .mogrify("SELECT $1::text", &[&"a\0b"])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    // Parameter count mismatch.
    let err = pool.mogrify("SELECT $1, $2", &[&1i32]).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
}

pub(crate) async fn json_and_hstore_round_trip(rt: Rt) {
    let server = pg::shared();
    let pool = pool_for(&rt, server.config(&unique(&rt, "types")), |b| b).await;
    let value = serde_json::json!({"name": "momopool", "tags": ["pool", "pg"], "n": 3});
    let row = pool
        .query_one("SELECT $1::jsonb, $1::json", &[&value])
        .await
        .unwrap();
    assert_eq!(row.get::<_, serde_json::Value>(0), value);
    assert_eq!(row.get::<_, serde_json::Value>(1), value);

    pool.batch_execute("CREATE EXTENSION IF NOT EXISTS hstore")
        .await
        .or_else(|e| {
            // Two runtimes may race to create it.
            if e.code().map(|c| c.code()) == Some("23505") {
                Ok(())
            } else {
                Err(e)
            }
        })
        .unwrap();
    // A fresh connection, so the hstore type is known to the statement.
    let mut map = HashMap::new();
    map.insert("a".to_string(), Some("1".to_string()));
    map.insert("b".to_string(), None);
    let row = pool.query_one("SELECT $1::hstore", &[&map]).await.unwrap();
    assert_eq!(row.get::<_, HashMap<String, Option<String>>>(0), map);
}

pub(crate) async fn listen_notify_stream(rt: Rt) {
    use futures::StreamExt;
    let server = pg::shared();
    let pool = pool_for(&rt, server.config(&unique(&rt, "listen")), |b| b).await;
    let channel = unique(&rt, "jobs");
    let mut listener = pool.listen(&channel).await.unwrap();
    for i in 0..3 {
        pool.execute("SELECT pg_notify($1, $2)", &[&channel, &format!("job {i}")])
            .await
            .unwrap();
    }
    for i in 0..3 {
        let note = rt
            .timeout(Duration::from_secs(5), listener.next())
            .await
            .expect("a notification within 5 s")
            .expect("the stream is open")
            .unwrap();
        assert_eq!(note.channel(), channel);
        assert_eq!(note.payload(), format!("job {i}"));
    }
    assert_ne!(listener.backend_pid(), 0);
}

pub(crate) async fn session_statements_run_on_every_connection(rt: Rt) {
    let server = pg::shared();
    let config = server.config(&unique(&rt, "session")).session([
        "SET TIME ZONE 'Asia/Tokyo'",
        "SET search_path TO pg_catalog, public",
    ]);
    let pool = pool_for(&rt, config, |b| b.min_size(2).max_size(2)).await;
    pool.inner().warm_up().await.unwrap();
    let mut a = pool.get().await.unwrap();
    let mut b = pool.get().await.unwrap();
    for conn in [&mut a, &mut b] {
        let tz: String = conn.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
        assert_eq!(tz, "Asia/Tokyo");
        let path: String = conn
            .query_one("SHOW search_path", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(path, "pg_catalog, public");
    }
}

/// C8: a connection returned inside a transaction is rolled back before its next user.
pub(crate) async fn c8_returned_inside_transaction_is_rolled_back(rt: Rt) {
    let server = pg::shared();
    let table = unique(&rt, "c8");
    let pool = pool_for(&rt, server.config(&table), |b| {
        b.max_size(1).validation(momopool::Validation::Never)
    })
    .await;
    pg::fresh_table(&pool, &table, "x int").await;
    let mut conn = pool.get().await.unwrap();
    conn.batch_execute(&format!("BEGIN; INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    drop(conn); // returned mid-transaction

    // Same (only) connection: without a rollback it would see its own uncommitted row.
    let n: i64 = pg::count_rows(&pool, &table).await;
    assert_eq!(n, 0);
    // The same with `BEGIN` as a prepared statement, twice: the second time it comes from
    // the connection's statement cache, and still counts as opening a transaction.
    // Then with a comment before the `BEGIN`, as query tags put it.
    for (round, begin) in ["BEGIN", "BEGIN", "/* job 7 */ BEGIN", "-- tag\nBEGIN"]
        .into_iter()
        .enumerate()
    {
        let mut conn = pool.get().await.unwrap();
        conn.execute(begin, &[]).await.unwrap();
        conn.execute(&format!("INSERT INTO {table} VALUES (1)"), &[])
            .await
            .unwrap();
        drop(conn);
        let n: i64 = pg::count_rows(&pool, &table).await;
        assert_eq!(
            n,
            0,
            "[{}] round {round}: the transaction was left open",
            rt.name()
        );
    }
    // And a failed transaction is not handed out as such either.
    let mut conn = pool.get().await.unwrap();
    conn.batch_execute("BEGIN").await.unwrap();
    assert!(conn.batch_execute("SELECT 1/0").await.is_err());
    drop(conn);
    let one: i32 = pool.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    pg::drop_table(&pool, &table).await;
}

/// C8 with a caller waiting: a connection returned inside a failed transaction goes straight
/// to the waiting caller (it never sits idle, so its socket is not peeked at), and is still
/// rolled back before that caller's statement runs.
pub(crate) async fn c8_waiter_handed_a_connection_mid_transaction_gets_it_clean(rt: Rt) {
    let server = pg::shared();
    let pool = pool_for(&rt, server.config(&unique(&rt, "c8_handover")), |b| {
        b.max_size(1).validation(momopool::Validation::Never)
    })
    .await;
    for round in 0..3 {
        let mut holder = pool.get().await.unwrap();
        holder.batch_execute("BEGIN").await.unwrap();
        assert!(holder.batch_execute("SELECT 1/0").await.is_err());
        let waiter = {
            let pool = pool.clone();
            rt.spawn(async move { pool.query_one("SELECT 1", &[]).await })
        };
        rt.wait_until(Duration::from_secs(5), "caller queued", || {
            pool.inner().status().waiting == 1
        })
        .await;
        drop(holder); // handed straight to the waiting caller
        let row = waiter
            .await
            .unwrap_or_else(|e| panic!("[{}] round {round}: {e:?}", rt.name()));
        assert_eq!(row.get::<_, i32>(0), 1);
    }
    assert_eq!(pool.inner().statistics().created, 1, "the same connection");
}

/// `Recycling::Clean` resets whatever a borrower left in the session: one borrower leaves
/// each item, the next one (on the same backend: the pool's only connection) finds none.
pub(crate) async fn clean_recycling_resets_session_state(rt: Rt) {
    let server = pg::shared();
    let name = unique(&rt, "clean");
    let config = server
        .config(&name)
        .recycling(Recycling::Clean)
        .session(["SET application_name TO 'clean_session'"]);
    let pool = pool_for(&rt, config, |b| {
        b.max_size(1).validation(momopool::Validation::Always)
    })
    .await;
    let role = format!("{name}_role");
    let seq = format!("{name}_seq");
    pool.batch_execute(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role}; \
         DROP SEQUENCE IF EXISTS {seq}; CREATE SEQUENCE {seq}"
    ))
    .await
    .unwrap();

    let mut conn = pool.get().await.unwrap();
    let pid = conn.backend_pid();
    let login: String = conn
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    for statement in [
        "CREATE TEMP TABLE scratch (x int)".to_string(),
        "DECLARE held CURSOR WITH HOLD FOR SELECT 1".to_string(),
        format!("LISTEN {name}"),
        format!("SELECT pg_advisory_lock(hashtext('{name}'))"),
        format!("SELECT nextval('{seq}')"),
        "SET search_path TO nowhere".to_string(),
        format!("SET ROLE {role}"),
    ] {
        conn.batch_execute(&statement).await.unwrap();
    }
    drop(conn);

    let mut conn = pool.get().await.unwrap();
    assert_eq!(conn.backend_pid(), pid, "the same connection, reset");
    let row = conn
        .query_one(
            "SELECT current_setting('search_path'), \
             to_regclass('pg_temp.scratch') IS NULL, \
             (SELECT count(*)::int FROM pg_cursors WHERE name = 'held'), \
             (SELECT count(*)::int FROM pg_listening_channels()), \
             (SELECT count(*)::int FROM pg_locks \
              WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
             current_user::text, session_user::text, current_setting('application_name')",
            &[],
        )
        .await
        .unwrap();
    let who = rt.name();
    assert_eq!(
        row.get::<_, String>(0),
        "\"$user\", public",
        "[{who}] settings"
    );
    assert!(row.get::<_, bool>(1), "[{who}] temporary tables are gone");
    assert_eq!(row.get::<_, i32>(2), 0, "[{who}] cursors are closed");
    assert_eq!(row.get::<_, i32>(3), 0, "[{who}] nothing is listened to");
    assert_eq!(
        row.get::<_, i32>(4),
        0,
        "[{who}] advisory locks are released"
    );
    assert_eq!(row.get::<_, String>(5), login, "[{who}] the role is reset");
    assert_eq!(row.get::<_, String>(6), login, "[{who}] session user");
    assert_eq!(
        row.get::<_, String>(7),
        "clean_session",
        "[{who}] session statements re-applied after the reset"
    );
    let err = conn
        .query_one(&format!("SELECT currval('{seq}')"), &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("55000"),
        "[{who}] sequence state is discarded: {err}"
    );

    // The session authorization too.
    conn.batch_execute(&format!("SET SESSION AUTHORIZATION {role}"))
        .await
        .unwrap();
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    assert_eq!(conn.backend_pid(), pid, "the same connection, reset");
    let row = conn
        .query_one("SELECT current_user::text, session_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), login, "[{who}] current user");
    assert_eq!(
        row.get::<_, String>(1),
        login,
        "[{who}] session authorization"
    );
    drop(conn);
    pool.batch_execute(&format!("DROP ROLE {role}; DROP SEQUENCE {seq}"))
        .await
        .unwrap();
}

pub(crate) async fn transaction_closure_commits_and_rolls_back(rt: Rt) {
    let server = pg::shared();
    let table = unique(&rt, "txclosure");
    let pool = pool_for(&rt, server.config(&table), |b| b).await;
    pg::fresh_table(&pool, &table, "x int").await;
    let insert = format!("INSERT INTO {table} VALUES (1)");
    let value: i64 = pool
        .transaction_with(|tx| {
            let insert = insert.clone();
            let table = table.clone();
            Box::pin(async move {
                tx.execute(&insert, &[]).await?;
                Ok(tx
                    .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                    .await?
                    .get(0))
            })
        })
        .await
        .unwrap();
    assert_eq!(value, 1);
    let err = pool
        .transaction_with(|tx| {
            let insert = insert.clone();
            Box::pin(async move {
                tx.execute(&insert, &[]).await?;
                Err::<(), _>(Error::InvalidInput("changed my mind".into()))
            })
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)));
    let n: i64 = pg::count_rows(&pool, &table).await;
    assert_eq!(n, 1, "the failed closure was rolled back");
    pg::drop_table(&pool, &table).await;
}

pub(crate) async fn sql_errors_carry_their_sqlstate(rt: Rt) {
    let server = pg::shared();
    let pool = pool_for(&rt, server.config(&unique(&rt, "sqlstate")), |b| {
        b.max_size(1)
    })
    .await;
    let err = pool
        .execute("SELECT * FROM no_such_table_anywhere", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"));
    assert!(err.to_string().contains("42P01"), "{err}");
    assert!(!err.is_outcome_unknown() && !err.is_connection_lost());
    // The connection survived the SQL error.
    let stats = pool.inner().statistics();
    assert_eq!(stats.closed.total(), 0, "[{}] {stats:?}", rt.name());
    let one: i32 = pool.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// F1: another session changes the table under a cached statement.
pub(crate) async fn f1_schema_change_invalidates_cached_plan(rt: Rt) {
    let server = pg::shared();
    let table = unique(&rt, "f1");
    let pool = pool_for(&rt, server.config(&table), |b| b.max_size(1)).await;
    let other = pool_for(&rt, server.config(&format!("{table}_other")), |b| {
        b.max_size(1)
    })
    .await;
    pool.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (a int); INSERT INTO {table} VALUES (1)"
    ))
    .await
    .unwrap();
    let select = format!("SELECT * FROM {table}");
    assert_eq!(pool.execute(&select, &[]).await.unwrap()[0].len(), 1);
    other
        .batch_execute(&format!("ALTER TABLE {table} ADD COLUMN b int"))
        .await
        .unwrap();
    // Outside a transaction: re-prepared once, transparently.
    let rows = pool.execute(&select, &[]).await.unwrap();
    assert_eq!(rows[0].len(), 2);

    other
        .batch_execute(&format!("ALTER TABLE {table} ADD COLUMN c int"))
        .await
        .unwrap();
    let select2 = select.clone();
    let err = pool
        .transaction_with(|tx| {
            let select = select2.clone();
            Box::pin(async move { tx.query(&select, &[]).await.map(|_| ()) })
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PlanInvalidated(_)), "{err:?}");
    assert_eq!(pool.execute(&select, &[]).await.unwrap()[0].len(), 3);

    // A held connection inside the caller's own transaction: the error aborted it, so a
    // retry could only fail (25P02). The caller gets the plan error itself, whether the
    // connection saw the transaction start or not (a comment first hides the BEGIN).
    let mut conn = pool.get().await.unwrap();
    for (round, begin) in ["BEGIN", "/* the caller's own */ BEGIN"].iter().enumerate() {
        assert_eq!(conn.query(&select, &[]).await.unwrap()[0].len(), 3 + round);
        conn.batch_execute(begin).await.unwrap();
        other
            .batch_execute(&format!("ALTER TABLE {table} ADD COLUMN d{round} int"))
            .await
            .unwrap();
        let err = match round {
            0 => conn.query(&select, &[]).await.map(drop).unwrap_err(),
            _ => conn.execute(&select, &[]).await.map(drop).unwrap_err(),
        };
        assert!(
            matches!(err, Error::PlanInvalidated(_)),
            "[{}] {begin}: {err:?}",
            rt.name()
        );
        conn.batch_execute("ROLLBACK").await.unwrap();
    }
    assert_eq!(conn.query(&select, &[]).await.unwrap()[0].len(), 5);
    drop(conn);

    // Another 0A000 error is no stale plan: the statement is not run a second time.
    let seq = format!("{table}_seq");
    let function = format!("{table}_unsupported");
    pool.batch_execute(&format!(
        "DROP SEQUENCE IF EXISTS {seq}; CREATE SEQUENCE {seq}; \
         CREATE OR REPLACE FUNCTION {function}() RETURNS int LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM nextval('{seq}'); \
         RAISE EXCEPTION 'not supported' USING ERRCODE = 'feature_not_supported'; END $$"
    ))
    .await
    .unwrap();
    let call = format!("SELECT {function}()");
    let runs = || async {
        other
            .query_one(&format!("SELECT last_value FROM {seq}"), &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let err = pool.execute(&call, &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{err:?}");
    assert_eq!(runs().await, 1, "[{}] query: run once", rt.name());
    let err = pool.execute_count(&call, &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{err:?}");
    assert_eq!(runs().await, 2, "[{}] execute: run once", rt.name());

    pool.batch_execute(&format!(
        "DROP TABLE {table}; DROP FUNCTION {function}; DROP SEQUENCE {seq}"
    ))
    .await
    .unwrap();
}

/// Statements the server dropped are prepared again: after a recycling `DISCARD ALL` at every
/// checkout, after a `DEALLOCATE ALL` on a held connection, and after one the connection
/// could not see (inside a `DO` block). Inside a transaction the caller opened, one it could
/// not see is the caller's error, and the statement works again after the rollback.
pub(crate) async fn dropped_statements_are_prepared_again(rt: Rt) {
    let server = pg::shared();
    let name = unique(&rt, "discard");
    let who = rt.name();
    let config = server
        .config(&name)
        .recycling(Recycling::Custom("DISCARD ALL".into()));
    let pool = pool_for(&rt, config, |b| {
        b.max_size(1).validation(momopool::Validation::Always)
    })
    .await;
    for i in 0..3 {
        let n: i32 = pool
            .query_one("SELECT $1::int + 1", &[&i])
            .await
            .unwrap_or_else(|e| panic!("[{who}] call {i} after DISCARD ALL: {e}"))
            .get(0);
        assert_eq!(n, i + 1, "[{who}]");
    }

    let mut conn = pool.get().await.unwrap();
    let pid = conn.backend_pid();
    let select = "SELECT 2";
    conn.query(select, &[]).await.unwrap();
    conn.batch_execute("DEALLOCATE ALL").await.unwrap();
    conn.query(select, &[])
        .await
        .unwrap_or_else(|e| panic!("[{who}] after DEALLOCATE ALL: {e}"));
    conn.execute("DEALLOCATE ALL", &[]).await.unwrap();
    conn.query(select, &[])
        .await
        .unwrap_or_else(|e| panic!("[{who}] after a prepared DEALLOCATE ALL: {e}"));
    let unseen = "DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$";
    conn.batch_execute(unseen).await.unwrap();
    conn.query(select, &[])
        .await
        .unwrap_or_else(|e| panic!("[{who}] after an unseen DEALLOCATE ALL: {e}"));

    conn.batch_execute(&format!("BEGIN; {unseen}"))
        .await
        .unwrap();
    let err = conn.query(select, &[]).await.unwrap_err();
    assert!(matches!(err, Error::PlanInvalidated(_)), "[{who}] {err:?}");
    assert_eq!(err.code().map(|c| c.code()), Some("26000"), "[{who}] {err}");
    conn.batch_execute("ROLLBACK").await.unwrap();
    conn.query(select, &[])
        .await
        .unwrap_or_else(|e| panic!("[{who}] after the rollback: {e}"));
    // One it sees is forgotten at once, so a transaction goes on.
    conn.batch_execute("BEGIN; DEALLOCATE ALL").await.unwrap();
    conn.query(select, &[])
        .await
        .unwrap_or_else(|e| panic!("[{who}] after DEALLOCATE ALL in a transaction: {e}"));
    conn.batch_execute("COMMIT").await.unwrap();
    assert_eq!(conn.backend_pid(), pid, "[{who}] one connection throughout");
}

pub(crate) async fn statement_deadline_cancels_on_the_server(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "deadline");
    let pool = pool_for(&rt, server.config(&app), |b| b.max_size(2)).await;
    let started = Instant::now();
    let err = pool
        .with(momopool_pg::CallOptions::new().timeout(Duration::from_millis(300)))
        .execute("SELECT pg_sleep(10)", &[])
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::StatementTimeout { .. }), "{err:?}");
    assert!(
        err.is_outcome_unknown(),
        "a timed-out statement may have run"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(300) + EPSILON,
        "[{}] took {took:?}",
        rt.name()
    );
    // The server stops running it.
    let admin = pool_for(&rt, server.config(&format!("{app}_admin")), |b| {
        b.max_size(1)
    })
    .await;
    let mut still_running = 1;
    for _ in 0..100 {
        still_running = admin
            .query_one(
                "SELECT count(*)::int FROM pg_stat_activity \
                 WHERE application_name = $1 AND query LIKE 'SELECT pg_sleep(10)%' \
                 AND state = 'active'",
                &[&app],
            )
            .await
            .unwrap()
            .get::<_, i32>(0);
        if still_running == 0 {
            break;
        }
        rt.sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(still_running, 0, "the cancel request stopped the query");
    let one: i32 = pool.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the pool is fine afterwards");
}

/// Unnamed-statement mode (for PgBouncer's transaction pooling): statements of many parameter
/// types work, and no named prepared statement ever exists on the server.
pub(crate) async fn unnamed_statements_leave_nothing_prepared(rt: Rt) {
    let server = pg::shared();
    let config = server
        .config(&unique(&rt, "unnamed"))
        .unnamed_statements(true);
    let pool = pool_for(&rt, config, |b| b.max_size(1)).await;
    let none: Option<i64> = None;
    let json = serde_json::json!({"k": [1, 2]});
    let row = pool
        .query_one(
            "SELECT $1::int + 1, $2::text, $3::bigint IS NULL, $4::jsonb, $5::int[], $6::bytea, $7::bool",
            &[&41i32, &"x", &none, &json, &vec![1i32, 2], &vec![7u8], &true],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "x");
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, serde_json::Value>(3), json);
    assert_eq!(row.get::<_, Vec<i32>>(4), vec![1, 2]);
    let n = pool
        .execute_count("SELECT generate_series(1, $1)", &[&3i32])
        .await
        .unwrap();
    assert_eq!(n, 3);
    let text = pool.mogrify("SELECT $1::int", &[&5i32]).await.unwrap();
    assert_eq!(text, "SELECT '5'::integer::int");
    pool.transaction(&[("SELECT $1::int", &[&1i32])])
        .await
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let prepared: i64 = conn
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(prepared, 0, "no named statement on the server");
    drop(conn);
    // A type it cannot infer is a clear error, not a panic.
    let mut map = HashMap::new();
    map.insert("a".to_string(), Some("b".to_string()));
    let err = pool
        .execute("SELECT $1::hstore", &[&map])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");

    // The default mode caches named statements, for comparison.
    let cached = pool_for(&rt, server.config(&unique(&rt, "named")), |b| b.max_size(1)).await;
    cached.execute("SELECT $1::int", &[&1i32]).await.unwrap();
    let prepared: i64 = cached
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert!(prepared >= 1);
}

/// TLS with rustls: connections are encrypted (as the server sees them), `sslmode=require`
/// without TLS configured is a clear error, and an untrusted certificate is refused.
pub(crate) async fn tls_connections_are_encrypted(rt: Rt) {
    let server = pg::tls();
    let port = server.cluster().expect("ours").port();
    let dsn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=require");
    let config = momopool_pg::PgConfig::from_dsn(&dsn)
        .unwrap()
        .tls_roots_pem(pg::tls_certificate_pem().as_bytes())
        .unwrap();
    let pool = pool_for(&rt, config, |b| b).await;
    let encrypted: bool = pool
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        encrypted,
        "[{}] the server sees a TLS connection",
        rt.name()
    );

    let err = Connection::connect_with(
        momopool_pg::PgConfig::from_dsn(&dsn).unwrap(),
        rt.pg_runtime(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("tls-rustls"), "{err}");

    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let config = momopool_pg::PgConfig::from_dsn(&dsn)
        .unwrap()
        .tls_roots_pem(stranger.cert.pem().as_bytes())
        .unwrap();
    let started = Instant::now();
    let err = Connection::connect_with(config, rt.pg_runtime())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // With `hostaddr`, the certificate is checked for the host name beside it (as libpq
    // does), not for the address connected to: the certificate names `localhost` and
    // 127.0.0.1, so `localhost` passes and another name fails, at the same address.
    let at = |host: &str| {
        momopool_pg::PgConfig::from_dsn(&format!(
            "host={host} hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres \
             sslmode=require"
        ))
        .unwrap()
        .tls_roots_pem(pg::tls_certificate_pem().as_bytes())
        .unwrap()
    };
    let conn = Connection::connect_with(at("localhost"), rt.pg_runtime())
        .await
        .unwrap_or_else(|e| panic!("[{}] {e:?}", rt.name()));
    drop(conn);
    let err = Connection::connect_with(at("elsewhere.invalid"), rt.pg_runtime())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Connect { .. }),
        "[{}] {err:?}",
        rt.name()
    );
}

/// A connection returned while its statement's answer is still coming is discarded: the
/// next borrower never waits behind someone else's results. Its holder's next statement
/// fails at once, as on a lost connection, rather than wait behind that answer.
pub(crate) async fn abandoned_statement_is_not_handed_on(rt: Rt) {
    let server = pg::shared();
    let pool = pool_for(&rt, server.config(&unique(&rt, "abandoned")), |b| {
        b.max_size(1).validation(momopool::Validation::Never)
    })
    .await;
    let mut conn = pool.get().await.unwrap();
    let abandoned = rt
        .timeout(
            Duration::from_millis(100),
            conn.query("SELECT pg_sleep(2)", &[]),
        )
        .await;
    assert!(abandoned.is_none(), "the statement was still running");
    let started = Instant::now();
    let err = conn.query("SELECT 1", &[]).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "[{}] the holder's next statement waited {:?}",
        rt.name(),
        started.elapsed()
    );
    assert!(
        err.is_connection_lost() && !err.is_outcome_unknown(),
        "[{}] {err:?}",
        rt.name()
    );
    drop(conn);

    let started = Instant::now();
    let one: i32 = pool.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert!(
        started.elapsed() < Duration::from_millis(350),
        "[{}] the next borrower waited {:?} behind the abandoned statement",
        rt.name(),
        started.elapsed()
    );
    let stats = pool.inner().statistics();
    assert_eq!(stats.closed.get(momopool::Removal::Broken), 1, "{stats:?}");
}

/// Runs a transaction closure on `conn` that inserts `x` (then, when `fail`, makes its
/// transaction fail) and waits for ever, and drops it after a moment, as a timeout would.
async fn abandon_transaction(rt: &Rt, conn: &mut Connection, insert: &str, x: i32, fail: bool) {
    let insert = insert.to_string();
    let (waiting, is_waiting) = futures::channel::oneshot::channel();
    let closure = conn.transaction_with(move |tx| {
        Box::pin(async move {
            tx.execute(&insert, &[&x]).await?;
            if fail {
                assert!(tx.batch_execute("SELECT 1/0").await.is_err());
            }
            let _ = waiting.send(());
            futures::future::pending::<Result<(), Error>>().await
        })
    });
    drop_once_waiting(rt, closure, is_waiting).await;
}

/// Whether the session is outside any transaction, as its next statement sees it, and how
/// many rows `x = 1` the connection sees.
async fn after_abandon(conn: &mut Connection, table: &str) -> (Option<String>, i32) {
    let row = conn
        .query_one(
            &format!(
                "SELECT txid_current_if_assigned()::text, \
                 (SELECT count(*)::int FROM {table} WHERE x = 1)"
            ),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// A transaction closure's future dropped while the closure waits between statements (a
/// timeout around `transaction`) leaves its transaction open on the server: the connection's
/// next statement, whichever method sends it, rolls it back first. On a standalone
/// connection and on a held pooled one.
pub(crate) async fn abandoned_transaction_closure_is_rolled_back_first(rt: Rt) {
    use futures::SinkExt;
    let server = pg::shared();
    let table = unique(&rt, "abandoned_tx");
    let pool = pool_for(&rt, server.config(&table), |b| b.max_size(2)).await;
    pg::fresh_table(&pool, &table, "x int").await;
    let insert = format!("INSERT INTO {table} VALUES ($1)");
    let committed = || async {
        let rows = pool
            .execute(&format!("SELECT x FROM {table} ORDER BY x"), &[])
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect::<Vec<i32>>()
    };
    let mut standalone = Connection::connect_with(server.config(&table), rt.pg_runtime())
        .await
        .unwrap();
    let mut held = pool.get().await.unwrap();
    for (kind, conn) in [("standalone", &mut standalone), ("pooled", &mut *held)] {
        let name = format!("[{}] {kind}", rt.name());
        // The next statement runs outside any transaction, and the row is gone.
        abandon_transaction(&rt, conn, &insert, 1, false).await;
        assert_eq!(after_abandon(conn, &table).await, (None, 0), "{name}");
        // A new transaction commits its own work only.
        abandon_transaction(&rt, conn, &insert, 1, false).await;
        let insert2 = insert.clone();
        conn.transaction_with(move |tx| {
            Box::pin(async move { tx.execute(&insert2, &[&2i32]).await })
        })
        .await
        .unwrap();
        assert_eq!(committed().await, vec![2], "{name}");
        pool.batch_execute(&format!("DELETE FROM {table}"))
            .await
            .unwrap();

        // Every statement method: the abandoned transaction failed, so without the
        // ROLLBACK each would be refused (25P02).
        for method in 0..10 {
            abandon_transaction(&rt, conn, &insert, 1, true).await;
            let outcome = match method {
                0 => conn.query("SELECT 1", &[]).await.map(drop),
                1 => conn.execute(&insert, &[&2i32]).await.map(drop),
                2 => conn.batch_execute("SELECT 1").await,
                3 => conn.mogrify("SELECT $1::int", &[&1i32]).await.map(drop),
                4 => conn
                    .cursor("SELECT 1", &[], 10)
                    .try_collect::<Vec<_>>()
                    .await
                    .map(drop),
                5 => conn.transaction_with(|_| Box::pin(async { Ok(()) })).await,
                6 => match conn.query_stream("SELECT 1", &[]).await {
                    Ok(rows) => rows.try_collect::<Vec<_>>().await.map(drop),
                    Err(err) => Err(err),
                },
                7 => match conn.copy_out("COPY (SELECT 1) TO STDOUT").await {
                    Ok(data) => data.try_collect::<Vec<_>>().await.map(drop),
                    Err(err) => Err(err),
                },
                8 => {
                    let copy = format!("COPY {table} (x) FROM STDIN");
                    match conn.copy_in(&copy).await {
                        Ok(mut sink) => match sink.send(&b"2\n"[..]).await {
                            Ok(()) => sink.finish().await.map(drop),
                            Err(err) => Err(err),
                        },
                        Err(err) => Err(err),
                    }
                }
                _ => conn.query_opt("SELECT 1", &[]).await.map(drop),
            };
            outcome.unwrap_or_else(|e| panic!("{name}: method {method}: {e}"));
            assert_eq!(
                after_abandon(conn, &table).await,
                (None, 0),
                "{name}: method {method}"
            );
            pool.batch_execute(&format!("DELETE FROM {table}"))
                .await
                .unwrap();
        }
    }
    drop(held);
    assert!(committed().await.is_empty());
    pg::drop_table(&pool, &table).await;
}

/// A transaction closure that panics: its transaction is rolled back, the panic reaches the
/// caller, and the connection (standalone, or the pool's only one) goes on working.
pub(crate) async fn panicking_transaction_closure_is_rolled_back(rt: Rt) {
    use futures::FutureExt;
    use std::panic::AssertUnwindSafe;
    let server = pg::shared();
    let table = unique(&rt, "panic_tx");
    let pool = pool_for(&rt, server.config(&table), |b| {
        b.max_size(1).validation(momopool::Validation::Never)
    })
    .await;
    pg::fresh_table(&pool, &table, "x int").await;
    let insert = format!("INSERT INTO {table} VALUES (1)");

    let mut conn = Connection::connect_with(server.config(&table), rt.pg_runtime())
        .await
        .unwrap();
    let insert2 = insert.clone();
    let outcome = AssertUnwindSafe(conn.transaction_with::<(), _>(move |tx| {
        Box::pin(async move {
            tx.execute(&insert2, &[]).await?;
            panic!("a closure panicking on purpose");
        })
    }))
    .catch_unwind()
    .await;
    assert!(outcome.is_err(), "the panic reaches the caller");
    assert_eq!(
        after_abandon(&mut conn, &table).await,
        (None, 0),
        "[{}] standalone",
        rt.name()
    );

    let pid: i32 = pool
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let outcome = AssertUnwindSafe(pool.transaction_with::<(), _>(|tx| {
        let insert = insert.clone();
        Box::pin(async move {
            tx.execute(&insert, &[]).await?;
            panic!("a closure panicking on purpose");
        })
    }))
    .catch_unwind()
    .await;
    assert!(outcome.is_err(), "the panic reaches the caller");
    let row = pool
        .query_one(
            &format!(
                "SELECT pg_backend_pid(), txid_current_if_assigned()::text, \
                 (SELECT count(*)::int FROM {table})"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i32>(0),
        pid,
        "[{}] the same connection",
        rt.name()
    );
    assert_eq!(
        row.get::<_, Option<String>>(1),
        None,
        "[{}] pooled",
        rt.name()
    );
    assert_eq!(row.get::<_, i32>(2), 0, "[{}] pooled", rt.name());
    let stats = pool.inner().statistics();
    assert_eq!(stats.closed.total(), 0, "[{}] {stats:?}", rt.name());
    pg::drop_table(&pool, &table).await;
}

/// `PgPool::transaction_with` cancelled while its closure waits: nothing is committed, and
/// the connection's next borrower (here through the pool's own statements, which do not look
/// for an abandoned transaction) is not inside the abandoned transaction.
pub(crate) async fn cancelled_pool_transaction_leaves_nothing_behind(rt: Rt) {
    let server = pg::shared();
    let table = unique(&rt, "cancelled_tx");
    let pool = pool_for(&rt, server.config(&table), |b| {
        b.max_size(1).validation(momopool::Validation::Never)
    })
    .await;
    pg::fresh_table(&pool, &table, "x int").await;
    let pid: i32 = pool
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let insert = format!("INSERT INTO {table} VALUES (1)");
    let state = format!(
        "SELECT pg_backend_pid(), txid_current_if_assigned()::text, \
         (SELECT count(*)::int FROM {table})"
    );
    for round in 0..2 {
        let (waiting, is_waiting) = futures::channel::oneshot::channel();
        let mut waiting = Some(waiting);
        let closure = pool.transaction_with(|tx| {
            let insert = insert.clone();
            let waiting = waiting.take();
            Box::pin(async move {
                tx.execute(&insert, &[]).await?;
                if let Some(waiting) = waiting {
                    let _ = waiting.send(());
                }
                futures::future::pending::<Result<(), Error>>().await
            })
        });
        drop_once_waiting(&rt, closure, is_waiting).await;
        let row = if round == 0 {
            pool.query_one(&state, &[]).await.unwrap()
        } else {
            pool.get()
                .await
                .unwrap()
                .query_one(&state, &[])
                .await
                .unwrap()
        };
        let name = format!("[{}] round {round}", rt.name());
        assert_eq!(row.get::<_, i32>(0), pid, "{name}: the same connection");
        assert_eq!(row.get::<_, Option<String>>(1), None, "{name}");
        assert_eq!(row.get::<_, i32>(2), 0, "{name}: nothing committed");
    }
    pg::drop_table(&pool, &table).await;
}

/// `copy_in`, `copy_out` and `query_stream` run to their end: the data goes round, and the
/// connection is reused.
pub(crate) async fn copy_and_row_streams_round_trip(rt: Rt) {
    use futures::SinkExt;
    let server = pg::shared();
    let table = unique(&rt, "copy_round_trip");
    let pool = pool_for(&rt, server.config(&table), |b| b.max_size(1)).await;
    pg::fresh_table(&pool, &table, "x int, s text").await;
    let mut conn = pool.get().await.unwrap();
    let pid = conn.backend_pid();

    let mut sink = conn
        .copy_in(&format!("COPY {table} (x, s) FROM STDIN"))
        .await
        .unwrap();
    sink.send(&b"1\tone\n2\ttwo\n"[..]).await.unwrap();
    sink.send(&b"3\tthree\n"[..]).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);
    // Closing the sink finishes it too.
    let mut sink = conn
        .copy_in(&format!("COPY {table} (x, s) FROM STDIN"))
        .await
        .unwrap();
    sink.send(&b"4\tfour\n"[..]).await.unwrap();
    sink.close().await.unwrap();
    drop(sink);

    let data: Vec<_> = conn
        .copy_out(&format!(
            "COPY (SELECT * FROM {table} ORDER BY x) TO STDOUT"
        ))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(data.concat(), b"1\tone\n2\ttwo\n3\tthree\n4\tfour\n");

    let rows: Vec<_> = conn
        .query_stream(
            &format!("SELECT s FROM {table} WHERE x > $1 ORDER BY x"),
            &[&2i32],
        )
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let words: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(words, ["three", "four"]);

    // Refused data ends the COPY with the server's error, and the connection goes on.
    let mut sink = conn
        .copy_in(&format!("COPY {table} (x, s) FROM STDIN"))
        .await
        .unwrap();
    sink.send(&b"five\tfive\n"[..]).await.unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22P02"), "{err}");
    // An error after the first rows ends the stream, and the connection goes on too.
    let err = conn
        .query_stream("SELECT 1 / (3 - x) FROM generate_series(1, 5) x", &[])
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22012"), "{err}");

    drop(conn);
    let mut conn = pool.get().await.unwrap();
    assert_eq!(
        conn.backend_pid(),
        pid,
        "[{}] the connection is reused",
        rt.name()
    );
    let n: i64 = conn
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 4);
    drop(conn);
    let stats = pool.inner().statistics();
    assert_eq!(stats.closed.total(), 0, "[{}] {stats:?}", rt.name());
    pg::drop_table(&pool, &table).await;
}

/// A connection given back in the middle of a row stream or a `COPY`, or after its raw
/// client was handed out, is closed rather than reused: its next borrower never waits behind
/// someone else's results.
pub(crate) async fn unfinished_streams_and_raw_clients_are_not_handed_on(rt: Rt) {
    use futures::SinkExt;
    let server = pg::shared();
    let table = unique(&rt, "unfinished_streams");
    let pool = pool_for(&rt, server.config(&table), |b| {
        b.max_size(1).validation(momopool::Validation::Never)
    })
    .await;
    pg::fresh_table(&pool, &table, "x int").await;
    let lots = "COPY (SELECT generate_series(1, 1000000)) TO STDOUT";
    let broken = || pool.inner().statistics().closed.get(Removal::Broken);
    let mut closed = 0;
    for case in ["copy_out", "query_stream", "copy_in", "client"] {
        let mut conn = pool.get().await.unwrap();
        let pid = conn.backend_pid();
        // For the raw client: its stream outlives the connection's return, unread.
        let mut raw = None;
        match case {
            "copy_out" => {
                let mut data = conn.copy_out(lots).await.unwrap();
                assert!(!data.next().await.unwrap().unwrap().is_empty());
            }
            "query_stream" => {
                let mut rows = conn
                    .query_stream("SELECT generate_series(1, 1000000)", &[])
                    .await
                    .unwrap();
                assert_eq!(rows.next().await.unwrap().unwrap().get::<_, i32>(0), 1);
            }
            "copy_in" => {
                let mut sink = conn
                    .copy_in(&format!("COPY {table} FROM STDIN"))
                    .await
                    .unwrap();
                sink.send(&b"1\n"[..]).await.unwrap();
            }
            _ => {
                let data = conn.client().copy_out(lots).await.unwrap();
                let mut data = Box::pin(data);
                assert!(!data.next().await.unwrap().unwrap().is_empty());
                raw = Some(data);
            }
        }
        drop(conn);
        closed += 1;
        let started = Instant::now();
        let next: i32 = pool
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let took = started.elapsed();
        let name = format!("[{}] {case}", rt.name());
        assert_ne!(next, pid, "{name}: a new connection");
        assert!(
            took < Duration::from_secs(2),
            "{name}: the next call took {took:?}"
        );
        assert_eq!(broken(), closed, "{name}");
        drop(raw);
    }
    let n: i64 = pg::count_rows(&pool, &table).await;
    assert_eq!(n, 0, "the unfinished COPY wrote nothing");

    // A standalone connection goes on working after using its raw client.
    let mut conn = Connection::connect_with(server.config(&table), rt.pg_runtime())
        .await
        .unwrap();
    conn.client().simple_query("SELECT 1").await.unwrap();
    let one: i32 = conn.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    pg::drop_table(&pool, &table).await;
}

/// The kernel's keepalive timer on this process's end of `conn`, from `/proc/net/tcp` (or
/// `tcp6`): `None` when the socket runs none, else the time left before the first probe.
/// Waits (up to 5 s) for the acknowledgement of the query it sends, which runs a retransmit
/// timer in its place meanwhile.
async fn keepalive_timer(rt: &Rt, conn: &mut Connection) -> Option<Duration> {
    let row = conn
        .query_one("SELECT inet_client_port(), inet_server_port()", &[])
        .await
        .unwrap();
    let (ours, theirs): (Option<i32>, Option<i32>) = (row.get(0), row.get(1));
    let (Some(ours), Some(theirs)) = (ours, theirs) else {
        panic!("[{}] the test server must be reached over TCP", rt.name());
    };
    let port = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|p| i32::from_str_radix(p, 16).ok())
    };
    let started = Instant::now();
    loop {
        let table = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .collect::<String>();
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when ...
        let timer = table.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let mine = fields.len() > 5
                && port(fields[1]) == Some(ours)
                && port(fields[2]) == Some(theirs);
            let (kind, when) = fields.get(5).filter(|_| mine)?.split_once(':')?;
            Some((
                u8::from_str_radix(kind, 16).ok()?,
                u64::from_str_radix(when, 16).ok()?,
            ))
        });
        match timer {
            // 2: the keepalive timer, in clock ticks (USER_HZ, 100 a second on Linux).
            Some((2, ticks)) => return Some(Duration::from_millis(ticks * 10)),
            Some((0, _)) => return None,
            other => assert!(
                started.elapsed() < Duration::from_secs(5),
                "[{}] no idle socket {ours} -> {theirs} in /proc/net/tcp: {other:?}",
                rt.name()
            ),
        }
        rt.sleep(Duration::from_millis(20)).await;
    }
}

/// tokio-postgres's TCP keepalive settings (`keepalives`, `keepalives_idle`, ...) reach the
/// sockets the runtimes open, which set only `TCP_NODELAY` themselves: the kernel runs a
/// keepalive timer of `keepalives_idle` on the client's socket (2 hours by default, as with
/// tokio-postgres's own connect), and none with `keepalives=0`.
pub(crate) async fn tcp_keepalive_settings_reach_the_socket(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "keepalive");
    let within = |what: &str, timer: Option<Duration>, from: u64, to: u64| {
        let secs = timer.map(|t| t.as_secs());
        assert!(
            secs.is_some_and(|s| (from..=to).contains(&s)),
            "[{}] {what}: keepalive timer {timer:?}, expected {from} to {to} s",
            rt.name()
        );
    };

    // Set through pg_mut, as the README says, on a pool's connection.
    let mut config = server.config(&app);
    config.pg_mut().keepalives_idle(Duration::from_secs(77));
    let pool = pool_for(&rt, config, |b| b).await;
    let mut conn = pool.get().await.unwrap();
    within(
        "keepalives_idle 77 s",
        keepalive_timer(&rt, &mut conn).await,
        60,
        77,
    );
    drop(conn);

    // The default, on a standalone connection.
    let mut conn = Connection::connect_with(server.config(&app), rt.pg_runtime())
        .await
        .unwrap();
    let timer = keepalive_timer(&rt, &mut conn).await;
    within("the default", timer, 2 * 3600 - 120, 2 * 3600);

    // keepalives=0 in the DSN.
    let url = server.url();
    let separator = if url.contains('?') { '&' } else { '?' };
    let dsn = format!("{url}{separator}keepalives=0&application_name={app}");
    let config = momopool_pg::PgConfig::from_dsn(&dsn).unwrap();
    let mut conn = Connection::connect_with(config, rt.pg_runtime())
        .await
        .unwrap();
    let timer = keepalive_timer(&rt, &mut conn).await;
    assert_eq!(timer, None, "[{}] keepalives=0", rt.name());
}
