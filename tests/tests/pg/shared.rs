//! Shared mode: single statements pipelined on a few connections.

use crate::{EPSILON, unique};
use momopool_pg::{CallOptions, Error, PgPool, SharedMode};
use momopool_tests::{Rt, pg};
use std::collections::HashSet;
use std::time::{Duration, Instant};

async fn shared_pool(rt: &Rt, app: &str, mode: SharedMode) -> PgPool {
    PgPool::builder(pg::shared().config(app))
        .shared_runtime(rt.pg_runtime())
        .min_size(0)
        .max_size(8)
        .shared(mode)
        .build()
        .unwrap()
}

/// 32 concurrent callers on two lanes run on two backends.
pub(crate) async fn shared_mode_pipelines_on_few_connections(rt: Rt) {
    let app = unique(&rt, "shared_pipeline");
    let pool = shared_pool(
        &rt,
        &app,
        SharedMode {
            connections: 2,
            max_in_flight: 32,
            stall_after: Duration::from_secs(5),
        },
    )
    .await;
    // Warm both lanes' connections so the burst does not race their connects.
    for _ in 0..3 {
        let pids = futures::future::try_join_all(
            (0..32).map(|_| pool.query_one("SELECT pg_backend_pid()", &[])),
        )
        .await
        .unwrap();
        let distinct: HashSet<i32> = pids.iter().map(|r| r.get(0)).collect();
        assert!(
            distinct.len() <= 2,
            "[{}] 32 callers on two lanes used {} backends",
            rt.name(),
            distinct.len()
        );
    }
    // An exclusive call still works beside the lanes, on a connection of its own.
    let own = pool
        .with(CallOptions::new().exclusive())
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap();
    assert_ne!(own.get::<_, i32>(0), 0);
    let status = pool.inner().status();
    assert_eq!(status.size, status.idle + status.in_use + status.creating);
    assert!(
        status.in_use <= 2,
        "idle lanes keep at most their own connections"
    );
    // Exclusive callers can still have every connection: idle lanes give theirs back.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(
            rt.timeout(Duration::from_secs(5), pool.get())
                .await
                .expect("no exclusive caller starves behind idle lanes")
                .unwrap(),
        );
    }
    drop(held);
}

/// A slow statement on a lane does not hold up callers that arrive after it.
pub(crate) async fn shared_mode_slow_statement_does_not_stall_new_callers(rt: Rt) {
    let pool = shared_pool(
        &rt,
        &unique(&rt, "shared_stall"),
        SharedMode {
            connections: 1,
            max_in_flight: 32,
            stall_after: Duration::from_millis(20),
        },
    )
    .await;
    let slow = {
        let pool = pool.clone();
        rt.spawn(async move { pool.execute("SELECT pg_sleep(1)", &[]).await.map(drop) })
    };
    rt.sleep(Duration::from_millis(100)).await;
    for _ in 0..10 {
        let started = Instant::now();
        pool.execute("SELECT 1", &[]).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "[{}] a fast query waited {:?} behind a slow one",
            rt.name(),
            started.elapsed()
        );
    }
    slow.await.unwrap();
}

/// Deadlines in shared mode: the running statement is cancelled; one queued behind another
/// was sent and may still run, so its outcome is unknown.
pub(crate) async fn shared_mode_deadlines(rt: Rt) {
    let pool = shared_pool(
        &rt,
        &unique(&rt, "shared_deadline"),
        SharedMode {
            connections: 1,
            max_in_flight: 32,
            stall_after: Duration::from_secs(5),
        },
    )
    .await;
    let started = Instant::now();
    let err = pool
        .with(CallOptions::new().timeout(Duration::from_millis(300)))
        .execute("SELECT pg_sleep(10)", &[])
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::StatementTimeout { .. }), "{err:?}");
    assert!(took < Duration::from_millis(300) + EPSILON, "took {took:?}");

    let slow = {
        let pool = pool.clone();
        rt.spawn(async move { pool.execute("SELECT pg_sleep(0.6)", &[]).await.map(drop) })
    };
    rt.sleep(Duration::from_millis(100)).await;
    let err = pool
        .with(CallOptions::new().timeout(Duration::from_millis(200)))
        .execute("SELECT 1", &[])
        .await
        .unwrap_err();
    assert!(
        err.is_outcome_unknown(),
        "queued behind a slow statement: {err:?}"
    );
    slow.await.unwrap();
    let one: i32 = pool.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// Statements that change session state never run on a shared connection: a `SET` does not
/// queue behind a lane's slow statement.
pub(crate) async fn shared_mode_keeps_session_changes_exclusive(rt: Rt) {
    let pool = shared_pool(
        &rt,
        &unique(&rt, "shared_session"),
        SharedMode {
            connections: 1,
            max_in_flight: 32,
            stall_after: Duration::from_secs(5),
        },
    )
    .await;
    let slow = {
        let pool = pool.clone();
        rt.spawn(async move { pool.execute("SELECT pg_sleep(0.6)", &[]).await.map(drop) })
    };
    rt.sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    pool.execute("SET application_name = 'elsewhere'", &[])
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "[{}] the SET waited {:?}: it was pipelined behind the lane",
        rt.name(),
        started.elapsed()
    );
    slow.await.unwrap();
}
