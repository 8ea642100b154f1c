//! Streams and `COPY` whose connection is lost midway: what the caller is told.

use crate::{pool_for, unique};
use futures::{SinkExt, StreamExt};
use momopool_pg::{Error, PgPool};
use momopool_tests::{Rt, pg};
use std::time::Duration;

/// Rows of 20 kB each, so the first ones reach the client at once; the twentieth sleeps until
/// its backend is terminated.
const SLOW_ROWS: &str = "SELECT g, repeat('x', 20000) FROM generate_series(1, 40) g \
                         WHERE g < 20 OR pg_sleep(30) IS NULL";

/// Waits until the backend `pid` sleeps in `pg_sleep`.
async fn until_sleeping(rt: &Rt, pool: &PgPool, pid: i32) {
    for _ in 0..500 {
        let sleeping: bool = pool
            .query_one(
                "SELECT count(*) = 1 FROM pg_stat_activity \
                 WHERE pid = $1 AND wait_event = 'PgSleep'",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if sleeping {
            return;
        }
        rt.sleep(Duration::from_millis(10)).await;
    }
    panic!("[{}] backend {pid} never reached its pg_sleep", rt.name());
}

/// A `COPY ... FROM STDIN` into `table` on `conn`, started.
async fn copy_into<'c>(
    conn: &'c mut momopool_pg::Connection,
    table: &str,
) -> momopool_pg::CopyInSink<'c, &'static [u8]> {
    conn.copy_in(&format!("COPY {table} FROM STDIN"))
        .await
        .unwrap()
}

/// The first error a stream yields after its first item, within 10 s.
async fn first_error<S, T>(rt: &Rt, stream: &mut S) -> Error
where
    S: futures::Stream<Item = Result<T, Error>> + Unpin,
{
    let reading = async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => {}
                Some(Err(err)) => return err,
                None => panic!("[{}] the stream ended without an error", rt.name()),
            }
        }
    };
    rt.timeout(Duration::from_secs(10), reading)
        .await
        .unwrap_or_else(|| panic!("[{}] the stream never failed", rt.name()))
}

/// A result stream, a `COPY ... TO` and the end of a `COPY ... FROM` whose connection is lost
/// after they were sent leave the outcome unknown, as any statement sent does; a `COPY ...
/// FROM` lost while its data is still being sent writes nothing, and says only that the
/// connection was lost. The pool goes on with fresh connections.
pub(crate) async fn streams_lost_midway_leave_the_outcome_unknown(rt: Rt) {
    let server = pg::shared();
    let table = unique(&rt, "streams_lost");
    let pool = pool_for(&rt, server.config(&table), |b| b).await;
    pg::fresh_table(&pool, &table, "x int").await;
    // A row with x = 0 sleeps in its trigger, so a COPY's end waits there.
    pool.batch_execute(&format!(
        "CREATE OR REPLACE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN IF NEW.x = 0 THEN PERFORM pg_sleep(30); END IF; RETURN NEW; END $$; \
         CREATE TRIGGER {table}_slow BEFORE INSERT ON {table} \
         FOR EACH ROW EXECUTE FUNCTION {table}_slow()"
    ))
    .await
    .unwrap();
    let who = rt.name();

    for case in ["query_stream", "copy_out"] {
        let mut conn = pool.get().await.unwrap();
        let pid = conn.backend_pid();
        let err = if case == "query_stream" {
            let mut rows = conn.query_stream(SLOW_ROWS, &[]).await.unwrap();
            assert!(
                rows.next().await.unwrap().is_ok(),
                "[{who}] {case}: a first row"
            );
            pg::terminate(&pool, pid).await;
            first_error(&rt, &mut rows).await
        } else {
            let sql = format!("COPY ({SLOW_ROWS}) TO STDOUT");
            let mut data = conn.copy_out(&sql).await.unwrap();
            assert!(
                data.next().await.unwrap().is_ok(),
                "[{who}] {case}: a first chunk"
            );
            pg::terminate(&pool, pid).await;
            first_error(&rt, &mut data).await
        };
        assert!(err.is_outcome_unknown(), "[{who}] {case}: {err:?}");
        assert!(err.is_connection_lost(), "[{who}] {case}: {err:?}");
    }

    // The end of the COPY was sent, and the server was writing it when it went.
    let mut conn = pool.get().await.unwrap();
    let pid = conn.backend_pid();
    let mut sink = copy_into(&mut conn, &table).await;
    sink.send(&b"1\n0\n"[..]).await.unwrap();
    let (finished, ()) = futures::join!(sink.finish(), async {
        until_sleeping(&rt, &pool, pid).await;
        pg::terminate(&pool, pid).await;
    });
    let err = finished.unwrap_err();
    assert!(err.is_outcome_unknown(), "[{who}] copy_in finish: {err:?}");
    assert!(err.is_connection_lost(), "[{who}] copy_in finish: {err:?}");
    drop(conn);

    // Lost while the data is still being sent: nothing is written, and the error says so.
    let mut conn = pool.get().await.unwrap();
    let pid = conn.backend_pid();
    let mut sink = copy_into(&mut conn, &table).await;
    sink.send(&b"2\n"[..]).await.unwrap();
    pg::terminate(&pool, pid).await;
    let sending = async {
        loop {
            if let Err(err) = sink.send(&b"3\n"[..]).await {
                return err;
            }
            rt.sleep(Duration::from_millis(20)).await;
        }
    };
    let err = rt
        .timeout(Duration::from_secs(10), sending)
        .await
        .unwrap_or_else(|| panic!("[{who}] the sink never saw the loss"));
    assert!(!err.is_outcome_unknown(), "[{who}] copy_in data: {err:?}");
    assert!(err.is_connection_lost(), "[{who}] copy_in data: {err:?}");
    // Its end is refused the same way.
    let err = sink.finish().await.unwrap_err();
    assert!(
        !err.is_outcome_unknown(),
        "[{who}] copy_in finish after: {err:?}"
    );
    assert!(
        err.is_connection_lost(),
        "[{who}] copy_in finish after: {err:?}"
    );
    drop(conn);

    assert_eq!(
        pg::count_rows(&pool, &table).await,
        0,
        "[{who}] nothing written"
    );
    let one: i32 = pool.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "[{who}] the pool goes on");
    pg::drop_table(&pool, &table).await;
    pool.batch_execute(&format!("DROP FUNCTION {table}_slow()"))
        .await
        .unwrap();
}
