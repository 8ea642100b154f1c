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

/// A pool of exactly `lanes` connections, all open, which its lanes can hold entirely; the
/// stall guard is out of the way (`stall_after` 5 s).
async fn pool_owned_by_lanes(rt: &Rt, app: &str, lanes: usize, max_in_flight: usize) -> PgPool {
    PgPool::builder(pg::shared().config(app))
        .shared_runtime(rt.pg_runtime())
        .min_size(lanes)
        .max_size(lanes)
        .shared(SharedMode {
            connections: lanes,
            max_in_flight,
            stall_after: Duration::from_secs(5),
        })
        .build_eager()
        .await
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

/// A call that finds every lane holding a connection busy goes to a lane not yet holding
/// one, which borrows a connection, rather than queue behind work (the stall guard is out
/// of the way here).
pub(crate) async fn shared_mode_opens_a_lane_rather_than_queue_behind_work(rt: Rt) {
    let pool = shared_pool(
        &rt,
        &unique(&rt, "shared_open"),
        SharedMode {
            connections: 2,
            max_in_flight: 32,
            stall_after: Duration::from_secs(5),
        },
    )
    .await;
    let slow = {
        let pool = pool.clone();
        rt.spawn(async move { pool.execute("SELECT pg_sleep(1.5)", &[]).await.map(drop) })
    };
    // Until the slow statement's lane holds its connection.
    let started = Instant::now();
    while pool.inner().status().size == 0 && started.elapsed() < Duration::from_secs(5) {
        rt.sleep(Duration::from_millis(10)).await;
    }
    rt.sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    pool.execute("SELECT 1", &[]).await.unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "[{}] the call waited {took:?} behind the slow statement",
        rt.name()
    );
    assert_eq!(
        pool.inner().status().size,
        2,
        "[{}] a second lane",
        rt.name()
    );
    slow.await.unwrap();
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
        err.is_outcome_unknown() && err.is_timeout() && !err.is_connection_lost(),
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

/// A connection given back for an exclusive caller reaches that caller, even when a lane
/// asked the pool first: the lane, which would keep it for as long as it has work, gives it
/// back and the shared call goes elsewhere.
pub(crate) async fn shared_mode_lane_yields_to_an_exclusive_claim(rt: Rt) {
    let pool = pool_owned_by_lanes(&rt, &unique(&rt, "shared_claim"), 1, 32).await;
    // The only connection, held exclusively: the lane has none.
    let held = pool.get().await.unwrap();
    // A shared call: its lane asks the pool for a connection and queues first.
    let shared = {
        let pool = pool.clone();
        rt.spawn(async move {
            let row = pool.query_one("SELECT 7 FROM pg_sleep(3)", &[]).await?;
            Ok::<i32, Error>(row.get(0))
        })
    };
    rt.sleep(Duration::from_millis(150)).await;
    assert_eq!(
        pool.inner().status().waiting,
        1,
        "[{}] the lane queued",
        rt.name()
    );
    // An exclusive caller queues second.
    let exclusive = {
        let pool = pool.clone();
        rt.spawn(async move {
            let mut conn = pool.get().await?;
            let got_at = Instant::now();
            let one: i32 = conn.query_one("SELECT 1", &[]).await?.get(0);
            Ok::<_, Error>((got_at, one))
        })
    };
    rt.sleep(Duration::from_millis(150)).await;
    assert_eq!(
        pool.inner().status().waiting,
        2,
        "[{}] the caller queued",
        rt.name()
    );
    let released = Instant::now();
    drop(held);
    let (got_at, one) = rt
        .timeout(Duration::from_secs(10), exclusive)
        .await
        .expect("the exclusive caller got a connection")
        .unwrap();
    assert_eq!(one, 1);
    // Had the lane kept the connection, the caller would have waited for its 3 s statement.
    assert!(
        got_at - released < Duration::from_millis(1500),
        "[{}] the exclusive caller waited {:?} behind the lane",
        rt.name(),
        got_at - released
    );
    let seven = rt
        .timeout(Duration::from_secs(10), shared)
        .await
        .expect("the shared call finished")
        .unwrap();
    assert_eq!(seven, 7, "[{}] the shared call ran elsewhere", rt.name());
    let status = pool.inner().status();
    assert_eq!(status.size, status.idle + status.in_use + status.creating);
    assert_eq!(status.waiting, 0);
}

/// Lanes that never run dry still make room for an exclusive caller: with every connection
/// held by a busy lane, `get()` (and a call that cannot be shared) gets one within a few
/// statements' time, not whenever a lane happens to empty.
pub(crate) async fn shared_mode_busy_lanes_make_room_for_exclusive_callers(rt: Rt) {
    let pool = pool_owned_by_lanes(&rt, &unique(&rt, "shared_room"), 2, 32).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy: Vec<_> = (0..24)
        .map(|_| {
            let pool = pool.clone();
            let stop = stop.clone();
            rt.spawn(async move {
                let mut done = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    pool.execute("SELECT 1", &[]).await.unwrap();
                    done += 1;
                }
                done
            })
        })
        .collect();
    // Let both lanes take their connections and fill up.
    rt.sleep(Duration::from_millis(200)).await;
    for round in 0..3 {
        let status = pool.inner().status();
        assert_eq!(
            status.idle,
            0,
            "[{}] the lanes hold both connections",
            rt.name()
        );
        let started = Instant::now();
        let mut conn = rt
            .timeout(Duration::from_secs(2), pool.get())
            .await
            .unwrap_or_else(|| {
                panic!(
                    "[{}] round {round}: get() starved behind busy lanes",
                    rt.name()
                )
            })
            .unwrap();
        let row = conn.query_one("SELECT 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
        drop(conn);
        let own = rt
            .timeout(
                Duration::from_secs(2),
                pool.execute("SET application_name = 'room'", &[]),
            )
            .await
            .unwrap_or_else(|| {
                panic!(
                    "[{}] round {round}: a session change starved behind busy lanes (got a \
                     connection for get() after {:?})",
                    rt.name(),
                    started.elapsed()
                )
            });
        own.unwrap();
        rt.sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in busy {
        assert!(task.await > 0, "every busy caller made progress");
    }
    let status = pool.inner().status();
    assert_eq!(status.size, status.idle + status.in_use + status.creating);
    assert_eq!(status.waiting, 0);
}

/// When every lane is full and the pool has no connection to spare, callers wait for room on
/// a lane instead of making a lane give its connection up for one statement each.
pub(crate) async fn shared_mode_full_lanes_make_callers_wait_for_room(rt: Rt) {
    let pool = pool_owned_by_lanes(&rt, &unique(&rt, "shared_full"), 1, 2).await;
    let before = pool.inner().statistics();
    for _ in 0..3 {
        let pids = futures::future::try_join_all(
            (0..12).map(|_| pool.query_one("SELECT pg_backend_pid() FROM pg_sleep(0.02)", &[])),
        )
        .await
        .unwrap();
        let distinct: HashSet<i32> = pids.iter().map(|r| r.get(0)).collect();
        assert_eq!(distinct.len(), 1, "[{}] one connection in all", rt.name());
    }
    let after = pool.inner().statistics();
    let checkouts =
        (after.gets_direct + after.gets_waited) - (before.gets_direct + before.gets_waited);
    assert!(
        checkouts <= 3,
        "[{}] 36 calls on a full lane took {checkouts} checkouts from the pool: the lane kept \
         giving its connection up",
        rt.name()
    );
    assert_eq!(after.created, before.created, "no connection was opened");
}

/// A caller waiting for room on a full lane keeps its deadline, and its statement was never
/// sent: the error is a timeout, not an unknown outcome.
pub(crate) async fn shared_mode_wait_for_room_keeps_the_deadline(rt: Rt) {
    let pool = pool_owned_by_lanes(&rt, &unique(&rt, "shared_room_deadline"), 1, 1).await;
    let slow = {
        let pool = pool.clone();
        rt.spawn(async move { pool.execute("SELECT pg_sleep(1)", &[]).await.map(drop) })
    };
    rt.sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let err = pool
        .with(CallOptions::new().timeout(Duration::from_millis(200)))
        .execute("SELECT 1", &[])
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(err.is_timeout(), "[{}] {err:?}", rt.name());
    assert!(
        !err.is_outcome_unknown(),
        "[{}] never sent, yet: {err:?}",
        rt.name()
    );
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(200) + EPSILON,
        "[{}] took {took:?}",
        rt.name()
    );
    slow.await.unwrap();
    let one: i32 = pool.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// A lane with nothing in flight takes the next call before any busy one: a caller is not
/// pipelined behind a slow statement while another connection sits unused (here the stall
/// guard is out of the way: `stall_after` is long).
pub(crate) async fn shared_mode_prefers_a_lane_with_nothing_in_flight(rt: Rt) {
    let pool = shared_pool(
        &rt,
        &unique(&rt, "shared_free_lane"),
        SharedMode {
            connections: 4,
            max_in_flight: 32,
            stall_after: Duration::from_secs(5),
        },
    )
    .await;
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            rt.spawn(async move { pool.execute("SELECT pg_sleep(1)", &[]).await.map(drop) })
        })
        .collect();
    rt.sleep(Duration::from_millis(200)).await;
    for _ in 0..10 {
        let started = Instant::now();
        pool.execute("SELECT 1", &[]).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "[{}] a fast query waited {:?}: it was queued behind a slow one",
            rt.name(),
            started.elapsed()
        );
    }
    for task in slow {
        task.await.unwrap();
    }
}

/// The backend of the first connection running `query`, a statement that calls `pg_sleep`,
/// polled from `admin`: once it sleeps, past its bind (before that, a terminated backend did
/// not run it, and the pool rightly retries it).
async fn active_backend(rt: &Rt, admin: &PgPool, app: &str, query: &str) -> i32 {
    for _ in 0..250 {
        let row = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
                 AND state = 'active' AND query = $2 AND wait_event = 'PgSleep'",
                &[&app, &query],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            return row.get(0);
        }
        rt.sleep(Duration::from_millis(20)).await;
    }
    panic!("[{}] {query:?} never showed as running", rt.name());
}

/// The retry rules hold in shared mode when a lane's connection dies: a statement cut off
/// mid-way has an unknown outcome (unless idempotent: then it is replayed once), and one
/// sent after the connection died is retried on a fresh one with no error.
pub(crate) async fn shared_mode_connection_loss_follows_the_retry_rules(rt: Rt) {
    let app = unique(&rt, "shared_loss");
    let pool = pool_owned_by_lanes(&rt, &app, 1, 8).await;
    let admin = PgPool::builder(pg::shared().config(&format!("{app}_admin")))
        .shared_runtime(rt.pg_runtime())
        .max_size(1)
        .build()
        .unwrap();
    let terminate = |pid: i32| {
        let admin = admin.clone();
        async move {
            admin
                .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .unwrap();
        }
    };

    // Cut off mid-statement: outcome unknown, with the server's reason.
    let sleeper = {
        let pool = pool.clone();
        rt.spawn(async move { pool.execute("SELECT pg_sleep(5)", &[]).await.map(drop) })
    };
    let pid = active_backend(&rt, &admin, &app, "SELECT pg_sleep(5)").await;
    terminate(pid).await;
    let err = sleeper.await.unwrap_err();
    let Error::OutcomeUnknown(inner) = &err else {
        panic!("[{}] expected an unknown outcome, got {err:?}", rt.name());
    };
    assert_eq!(inner.code().map(|c| c.code()), Some("57P01"), "{err}");

    // The lane takes a new connection: parallel calls succeed.
    let pids = futures::future::try_join_all(
        (0..4).map(|_| pool.query_one("SELECT pg_backend_pid()", &[])),
    )
    .await
    .unwrap_or_else(|e| panic!("[{}] after the loss: {e:?}", rt.name()));
    let lane_pid: i32 = pids[0].get(0);
    assert_ne!(lane_pid, pid);

    // The lane's idle connection dies: the next calls go to a fresh one, with no error.
    terminate(lane_pid).await;
    for _ in 0..250 {
        let gone = admin
            .query_opt(
                "SELECT 1 FROM pg_stat_activity WHERE pid = $1",
                &[&lane_pid],
            )
            .await
            .unwrap()
            .is_none();
        if gone {
            break;
        }
        rt.sleep(Duration::from_millis(20)).await;
    }
    let pids = futures::future::try_join_all(
        (0..4).map(|_| pool.query_one("SELECT pg_backend_pid()", &[])),
    )
    .await
    .unwrap_or_else(|e| panic!("[{}] a dead idle lane reached a caller: {e:?}", rt.name()));
    let next_pid: i32 = pids[0].get(0);
    assert_ne!(next_pid, lane_pid);

    // Marked idempotent, a statement cut off mid-way is replayed once.
    let replayed = {
        let pool = pool.clone();
        rt.spawn(async move {
            pool.with(CallOptions::new().idempotent())
                .query_one("SELECT 7 FROM pg_sleep(1)", &[])
                .await
                .map(|row| row.get::<_, i32>(0))
        })
    };
    let pid = active_backend(&rt, &admin, &app, "SELECT 7 FROM pg_sleep(1)").await;
    terminate(pid).await;
    let seven = replayed
        .await
        .unwrap_or_else(|e| panic!("[{}] not replayed: {e:?}", rt.name()));
    assert_eq!(seven, 7);
    let status = pool.inner().status();
    assert_eq!(status.size, status.idle + status.in_use + status.creating);
}
