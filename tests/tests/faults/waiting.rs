//! D7 and G2 on PostgreSQL: the order waiters are served in, and how the pool stretches,
//! reconnects and shrinks.

use crate::{EPSILON, admin_for, backends, builder, finish, unique, watch, watch_within, within};
use momopool::{Phase, PoolError};
use momopool_pg::Error;
use momopool_tests::{Rt, pg};
use std::time::{Duration, Instant};

/// D7: on max 2, six callers queue in order for a 0.2 s statement each: they start in pairs at
/// about 0, 0.2 and 0.4 s, in their arrival order. A waiter with a 0.1 s deadline queued among
/// them fails by it and is skipped; the pool stays at 2 connections.
pub(crate) async fn d7_fifo_fairness(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "d7");
    let pool = builder(&rt, server.config(&app))
        .min_size(2)
        .max_size(2)
        .configure(|b| b.wait_timeout(Duration::from_secs(10)))
        .build_eager()
        .await
        .unwrap();
    let admin = admin_for(&rt, server, &app).await;
    let seen = watch(&rt, &pool);
    let stagger = Duration::from_millis(10);
    let started = Instant::now();
    let caller = || {
        let pool = pool.clone();
        rt.spawn(async move {
            let mut conn = pool.get().await?;
            let at = started.elapsed();
            conn.batch_execute("SELECT pg_sleep(0.2)").await?;
            Ok::<_, Error>(at)
        })
    };
    let mut callers = Vec::new();
    for _ in 0..4 {
        callers.push(caller());
        rt.sleep(stagger).await;
    }
    // A plain 100 ms sleep beside the impatient waiter: how late this runtime's own timer
    // fires at that moment (the load of the machine), which no pool can do better than.
    let reference = {
        let rt2 = rt.clone();
        rt.spawn(async move {
            let at = Instant::now();
            rt2.sleep(Duration::from_millis(100)).await;
            at.elapsed()
        })
    };
    let impatient = {
        let pool = pool.clone();
        rt.spawn(async move {
            let at = Instant::now();
            let outcome = pool.inner().get_timeout(Duration::from_millis(100)).await;
            (outcome.map(drop), at.elapsed())
        })
    };
    rt.sleep(stagger).await;
    for _ in 0..2 {
        callers.push(caller());
        rt.sleep(stagger).await;
    }

    let (outcome, took) = within(
        &rt,
        Duration::from_secs(2),
        "the impatient waiter",
        impatient,
    )
    .await;
    let err = outcome.expect_err("both connections are busy for 0.2 s");
    // faults.md D7: the waiter fails in [0.1, 0.15] s. The 50 ms of the spec are the pool's
    // own slack; on a loaded machine the extra allowed is how late the runtime's plain timer
    // was at the same moment, plus one task wake-up more than the reference needs (the
    // pool's timer wakes the waiter), not the crate's 250 ms EPSILON (which allowed 0.4 s).
    const HOP: Duration = Duration::from_millis(25);
    let lateness = within(
        &rt,
        Duration::from_secs(2),
        "the reference sleep",
        reference,
    )
    .await
    .saturating_sub(Duration::from_millis(100));
    assert!(
        took >= Duration::from_millis(100) && took <= Duration::from_millis(150) + lateness + HOP,
        "[{}] the impatient waiter failed after {took:?}; expected [100 ms, 150 ms] (+ {lateness:?}, \
         how late a plain 100 ms sleep was at the same moment)",
        rt.name()
    );
    let PoolError::Timeout(timeout) = &err else {
        panic!("[{}] expected a timeout, got {err:?}", rt.name());
    };
    assert_eq!(timeout.phase(), Phase::Wait, "[{}] {err}", rt.name());

    let mut starts = Vec::new();
    for caller in callers {
        let at = within(&rt, Duration::from_secs(5), "a queued caller", caller)
            .await
            .unwrap_or_else(|e| panic!("[{}] a queued caller failed: {e}", rt.name()));
        starts.push(at);
    }
    for (i, at) in starts.iter().enumerate() {
        let round = Duration::from_millis(200) * (i as u32 / 2);
        let due = round + stagger * (i as u32 + 1);
        assert!(
            *at + Duration::from_millis(1) >= round && *at < due + EPSILON,
            "[{}] caller {i} started at {at:?}, expected about {round:?}: {starts:?}",
            rt.name()
        );
    }
    for pair in 0..2 {
        let this = starts[2 * pair].max(starts[2 * pair + 1]);
        let next = starts[2 * pair + 2].min(starts[2 * pair + 3]);
        assert!(
            this < next,
            "[{}] served out of order: {starts:?}",
            rt.name()
        );
    }
    let status = pool.inner().status();
    assert_eq!(status.size, 2, "[{}] {status:?}", rt.name());
    assert_eq!(pool.inner().statistics().created, 2, "[{}]", rt.name());
    let seen_size = {
        let s = seen.stop(&rt).await;
        s.size
    };
    assert!(seen_size <= 2, "[{}] {seen_size} connections", rt.name());
    let seen = watch(&rt, &pool);
    finish(&rt, &pool, &admin, &app, seen).await;
}

/// G2, beyond `stretching_seen_in_pg_stat_activity`: replacing a dead connection does not
/// stretch the pool; shrinking the pool under load never makes it create, and it settles
/// within the new maximum; once idle it shrinks back to `min_size`.
pub(crate) async fn g2_reconnects_do_not_stretch_and_resize_under_load(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "g2");
    let pool = builder(&rt, server.config(&app))
        .min_size(1)
        .max_size(5)
        .configure(|b| {
            b.wait_timeout(Duration::from_secs(5))
                .idle_timeout(Duration::from_millis(300))
                .maintenance_interval(Duration::from_millis(50))
                .reconnect_interval(Duration::from_millis(50))
                .reconnect_max(Duration::from_millis(200))
        })
        .build_eager()
        .await
        .unwrap();
    let admin = admin_for(&rt, server, &app).await;

    // A dead connection is replaced by one, not more.
    let seen = watch(&rt, &pool);
    let pid: i32 = pool
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    within(
        &rt,
        Duration::from_secs(5),
        "pg_terminate_backend",
        admin.execute("SELECT pg_terminate_backend($1)", &[&pid]),
    )
    .await
    .unwrap();
    let started = Instant::now();
    while backends(&rt, &admin, &app).await != 0 {
        assert!(started.elapsed() < Duration::from_secs(3), "terminated");
        rt.sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..4 {
        let now: i32 = within(
            &rt,
            Duration::from_secs(5),
            "a query after the termination",
            pool.query_one("SELECT pg_backend_pid()", &[]),
        )
        .await
        .unwrap_or_else(|e| panic!("[{}] a caller saw an error: {e}", rt.name()))
        .get(0);
        assert_ne!(now, pid, "[{}] a new backend", rt.name());
    }
    rt.sleep(Duration::from_millis(200)).await;
    let s = seen.stop(&rt).await;
    assert_eq!(
        s.size,
        1,
        "[{}] the replacement stretched the pool",
        rt.name()
    );
    assert_eq!(pool.inner().statistics().created, 2, "[{}]", rt.name());
    assert_eq!(backends(&rt, &admin, &app).await, 1, "[{}]", rt.name());

    // Shrinking under load: four busy connections, max lowered to 2, two more callers. The
    // busy connections retire as they come back, so only the old maximum bounds the size.
    let seen = watch_within(&rt, &pool, Some(5));
    let sleeper = |sql: &'static str| {
        let pool = pool.clone();
        rt.spawn(async move { pool.execute(sql, &[]).await.map(drop) })
    };
    let mut busy: Vec<_> = (0..4).map(|_| sleeper("SELECT pg_sleep(0.4)")).collect();
    rt.wait_until(Duration::from_secs(3), "four connections busy", || {
        pool.inner().status().in_use == 4
    })
    .await;
    let created = pool.inner().statistics().created;
    pool.inner().resize(1, 2).unwrap();
    busy.push(sleeper("SELECT pg_sleep(0.1)"));
    busy.push(sleeper("SELECT pg_sleep(0.1)"));
    for task in busy {
        within(&rt, Duration::from_secs(5), "a caller under resize", task)
            .await
            .unwrap_or_else(|e| panic!("[{}] a caller failed: {e}", rt.name()));
    }
    assert_eq!(
        pool.inner().statistics().created,
        created,
        "[{}] connects after the maximum was lowered",
        rt.name()
    );
    let status = pool.inner().status();
    assert!(
        status.size <= 2 && status.max_size == 2,
        "[{}] {status:?}",
        rt.name()
    );
    let s = seen.stop(&rt).await;
    assert!(s.size <= 4, "[{}] {} connections", rt.name(), s.size);

    // Idle: back to min_size.
    let seen = watch(&rt, &pool);
    rt.wait_until(Duration::from_secs(3), "shrink back to one", || {
        pool.inner().status().size == 1
    })
    .await;
    finish(&rt, &pool, &admin, &app, seen).await;
}
