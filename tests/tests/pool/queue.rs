//! Queueing, stretching, fairness and cancellation.

use crate::{EPSILON, assert_elapsed, pool_with};
use momopool::{Phase, PoolError, Reuse};
use momopool_tests::{Op, Rt, Script, Step, assert_accounting, assert_invariants};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) async fn get_returns_and_reuses(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.max_size(2));
    let first = pool.get().await.unwrap();
    let id = first.id;
    assert_eq!(pool.status().in_use, 1);
    drop(first);
    assert_eq!(pool.status().idle, 1);
    let again = pool.get().await.unwrap();
    assert_eq!(again.id, id, "the idle connection is reused");
    drop(again);
    let stats = pool.statistics();
    assert_eq!(stats.created, 1);
    assert_eq!(stats.gets_direct + stats.gets_waited, 2);
    assert_invariants(&rt, &pool, &script, 2).await;
}

/// Stretch: each concurrent holder beyond the open connections makes the pool open exactly
/// one more, up to max. Shrink: once load drops, connections above min idle out one by one.
pub(crate) async fn stretch_and_shrink_step_by_step(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| {
        b.min_size(1)
            .max_size(4)
            .idle_timeout(Duration::from_millis(150))
            .maintenance_interval(Duration::from_millis(10))
    });
    pool.warm_up().await.unwrap();
    assert_eq!(pool.status().size, 1);

    let mut held = Vec::new();
    for step in 1..=4 {
        held.push(pool.get().await.unwrap());
        let status = pool.status();
        assert_eq!(status.size, step, "stretched to {step}: {status:?}");
        assert_eq!(script.counts.created.load(Ordering::SeqCst), step as u64);
    }
    let fifth = pool.get_timeout(Duration::from_millis(30)).await;
    assert!(fifth.unwrap_err().is_timeout(), "max_size is the limit");
    assert_eq!(pool.status().size, 4);

    // Release one connection at a time, 60 ms apart: each idles out in turn.
    let mut sizes = Vec::new();
    let started = Instant::now();
    for conn in held.drain(..) {
        drop(conn);
        rt.sleep(Duration::from_millis(60)).await;
        sizes.push(pool.status().size);
    }
    rt.wait_until(Duration::from_secs(2), "shrink back to min_size", || {
        pool.status().size == 1
    })
    .await;
    sizes.push(pool.status().size);
    assert!(
        sizes.windows(2).all(|w| w[0] >= w[1]),
        "[{}] size only goes down while shrinking: {sizes:?}",
        rt.name()
    );
    assert!(
        sizes.iter().any(|s| *s > 1 && *s < 4),
        "[{}] shrinking happens step by step, not at once: {sizes:?}",
        rt.name()
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
    let stats = pool.statistics();
    assert_eq!(stats.closed.get(momopool::Removal::Idle), 3);
    assert_eq!(pool.status().size, 1, "never below min_size");
    assert_invariants(&rt, &pool, &script, 4).await;
}

pub(crate) async fn nested_get_with_max_one_times_out(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| {
        b.max_size(1).wait_timeout(Duration::from_millis(100))
    });
    let outer = pool.get().await.unwrap();
    let started = Instant::now();
    let inner = pool.get().await;
    assert_elapsed(&rt, "nested get", started, Duration::from_millis(100));
    match inner {
        Err(PoolError::Timeout(t)) => assert_eq!(t.phase(), Phase::Wait),
        other => panic!("[{}] expected a wait timeout, got {other:?}", rt.name()),
    }
    drop(outer);
    assert_invariants(&rt, &pool, &script, 1).await;
}

/// A small deterministic generator for the fuzz test.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub(crate) async fn d1_cancellation_fuzz(rt: Rt) {
    let slow = Step::Slow(Duration::from_micros(700));
    for gates in 0..8u32 {
        let script = Script::new(rt.runtime());
        let gate = |bit: u32| {
            if gates & (1 << bit) != 0 {
                slow.clone()
            } else {
                Step::Ok
            }
        };
        script.set(Op::Create, gate(0));
        script.set(Op::Check, gate(1));
        for hook in [Op::PostCreate, Op::PreRecycle, Op::PostRecycle] {
            script.set(hook, gate(2));
        }
        let max = 3;
        let pool = script
            .hooks(
                momopool::Pool::builder(script.clone())
                    .shared_runtime(rt.runtime())
                    .min_size(1)
                    .max_size(max)
                    .max_connecting(2)
                    .validation(momopool::Validation::Always),
            )
            .build()
            .unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for task in 0..8u64 {
            let pool = pool.clone();
            let served = Arc::clone(&served);
            let rt2 = rt.clone();
            tasks.push(rt.spawn(async move {
                let mut rng = XorShift(0x9e37_79b9 ^ ((task + 1) * 7919 + gates as u64));
                for _ in 0..60 {
                    // Timeouts from a few nanoseconds up to about 2 ms; some gets are
                    // dropped half-way by the deadline, some by an explicit abort.
                    let limit = Duration::from_nanos(rng.next() % 2_000_000);
                    if rng.next() % 4 == 0 {
                        let mut get = Box::pin(pool.get());
                        let _ = futures::poll!(&mut get);
                        drop(get);
                        continue;
                    }
                    if let Some(Ok(conn)) = rt2.timeout(limit, pool.get()).await {
                        served.fetch_add(1, Ordering::Relaxed);
                        if rng.next() % 2 == 0 {
                            rt2.sleep(Duration::from_micros(rng.next() % 500)).await;
                        }
                        drop(conn);
                    }
                    momopool_tests::assert_accounting(&pool);
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        assert!(script.counts.peak() <= max as i64, "gates {gates:03b}");
        rt.wait_until(
            Duration::from_secs(5),
            "connects and callers settle",
            || {
                let s = pool.status();
                s.creating == 0 && s.in_use == 0 && s.waiting == 0
            },
        )
        .await;
        let status = pool.status();
        assert_eq!(
            status.idle as i64,
            script.counts.alive(),
            "[{}] gates {gates:03b}: every live connection is back in the pool: {status:?}",
            rt.name()
        );
        assert_invariants(&rt, &pool, &script, max).await;
    }
}

/// A waiter dropped right after a connection was handed to it passes that same connection on.
pub(crate) async fn d2_cancelled_at_hand_off(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.max_size(1));
    let holder = pool.get().await.unwrap();
    let id = holder.id;

    let mut second = Box::pin(pool.get());
    assert!(futures::poll!(&mut second).is_pending());
    let mut third = Box::pin(pool.get());
    assert!(futures::poll!(&mut third).is_pending());
    assert_eq!(pool.status().waiting, 2);

    drop(holder); // handed to `second`, which has not run yet
    drop(second); // ...and gives up: the connection must reach `third`
    let conn = third.await.unwrap();
    assert_eq!(conn.id, id, "the same physical connection is passed on");
    drop(conn);

    // Without anyone behind it, the connection goes back to idle.
    let holder = pool.get().await.unwrap();
    let mut lone = Box::pin(pool.get());
    assert!(futures::poll!(&mut lone).is_pending());
    drop(holder);
    drop(lone);
    let status = pool.status();
    assert_eq!((status.idle, status.in_use, status.waiting), (1, 0, 0));
    assert_eq!(script.counts.creates.load(Ordering::SeqCst), 1);
    // `second` was served but gone before it took its connection: it counts as cancelled,
    // like `lone`, not as a get that waited. Those are the first holder (it waited for the
    // connect) and `third`, and the wait-time histogram holds exactly them.
    let stats = pool.statistics();
    assert_eq!(stats.gets_cancelled, 2);
    assert_eq!(stats.gets_waited, 2);
    assert_eq!(stats.wait_times.count(), 2);
    assert_invariants(&rt, &pool, &script, 1).await;
}

/// A caller cancelled while its connect runs: the slot stays accounted, the connect
/// finishes in the background and serves the next caller (or goes idle).
pub(crate) async fn d3_cancelled_during_create(rt: Rt) {
    let script = Script::new(rt.runtime());
    script.set(Op::Create, Step::Slow(Duration::from_millis(200)));
    let pool = pool_with(&rt, &script, |b| b.max_size(2));

    let started = Instant::now();
    let gave_up = rt.timeout(Duration::from_millis(50), pool.get()).await;
    assert!(gave_up.is_none());
    let status = pool.status();
    assert_eq!(
        (status.creating, status.waiting, status.size),
        (1, 0, 1),
        "the connect is still accounted for"
    );

    // A second caller arrives while the first connect is still running: it gets that
    // connection, and no second connect starts for it.
    let conn = pool.get().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(190));
    assert_eq!(script.counts.creates.load(Ordering::SeqCst), 1);
    drop(conn);

    // Cancelled with nobody else waiting: the connection ends up idle.
    let held = pool.get().await.unwrap();
    assert!(
        rt.timeout(Duration::from_millis(50), pool.get())
            .await
            .is_none()
    );
    rt.wait_until(Duration::from_secs(2), "connect lands in idle", || {
        pool.status().idle == 1
    })
    .await;
    drop(held);
    assert_eq!(pool.status().idle, 2);
    assert_eq!(script.counts.creates.load(Ordering::SeqCst), 2);
    assert_invariants(&rt, &pool, &script, 2).await;
}

pub(crate) async fn d5_broken_returns_while_waiters_queue(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.max_size(5));
    let mut holders = Vec::new();
    for _ in 0..5 {
        holders.push(pool.get().await.unwrap());
    }
    let done = Arc::new(AtomicUsize::new(0));
    let mut waiters = Vec::new();
    for _ in 0..10 {
        let pool = pool.clone();
        let done = Arc::clone(&done);
        let rt2 = rt.clone();
        waiters.push(rt.spawn(async move {
            let conn = pool.get().await.expect("every waiter is served");
            rt2.sleep(Duration::from_millis(5)).await;
            drop(conn);
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }
    rt.wait_until(Duration::from_secs(2), "10 waiters queued", || {
        pool.status().waiting == 10
    })
    .await;
    for mut conn in holders {
        conn.broken = true;
        drop(conn);
    }
    for waiter in waiters {
        waiter.await;
    }
    assert_eq!(done.load(Ordering::SeqCst), 10);
    assert_eq!(pool.statistics().closed.get(momopool::Removal::Broken), 5);
    assert!(script.counts.created.load(Ordering::SeqCst) >= 10);
    assert_invariants(&rt, &pool, &script, 5).await;
}

/// A discarded connection keeps its slot until it is gone. On max_size 1 the manager takes
/// 50 ms to let go of a broken connection (its `removed` blocks the returning thread), and a
/// caller arriving meanwhile, on another thread, must not start a connect before that: never
/// more than `max_size` connections exist or are being opened. (On a current-thread runtime
/// the caller cannot run meanwhile; elsewhere it does.)
pub(crate) async fn discarded_connection_keeps_its_slot_until_gone(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.max_size(1));
    let mut held = pool.get().await.unwrap();
    let late = {
        let (pool, rt2) = (pool.clone(), rt.clone());
        rt.spawn(async move {
            rt2.sleep(Duration::from_millis(10)).await;
            pool.get().await.map(|c| c.id)
        })
    };
    script.counts.reset_peaks();
    script.slow_removal(Duration::from_millis(50));
    held.broken = true;
    drop(held);
    script.slow_removal(Duration::ZERO);
    assert_eq!(
        late.await.unwrap(),
        1,
        "[{}] served by the replacement",
        rt.name()
    );
    assert_eq!(pool.statistics().closed.get(momopool::Removal::Broken), 1);
    assert_invariants(&rt, &pool, &script, 1).await;
}

pub(crate) async fn d5_healthy_return_goes_to_oldest_waiter_while_creates_fail(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.max_size(2));
    let holder = pool.get().await.unwrap();
    let id = holder.id;
    script.set(Op::Create, Step::Err);

    let oldest = {
        let pool = pool.clone();
        rt.spawn(async move { pool.get().await.map(|c| (c, Instant::now())) })
    };
    rt.wait_until(Duration::from_secs(2), "first waiter queued", || {
        pool.status().waiting == 1
    })
    .await;
    let younger = {
        let pool = pool.clone();
        rt.spawn(async move {
            pool.get_timeout(Duration::from_millis(300))
                .await
                .map(|c| c.id)
        })
    };
    rt.wait_until(Duration::from_secs(2), "second waiter queued", || {
        pool.status().waiting == 2
    })
    .await;
    let returned_at = Instant::now();
    drop(holder);
    let (got, at) = oldest
        .await
        .expect("the oldest waiter gets the returned connection");
    assert_eq!(got.id, id);
    assert!(at.duration_since(returned_at) < EPSILON);
    let younger = younger.await;
    assert!(younger.unwrap_err().is_timeout(), "creates keep failing");
    drop(got);
    script.set(Op::Create, Step::Ok);
    assert_invariants(&rt, &pool, &script, 2).await;
}

pub(crate) async fn d6_no_over_creation(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.max_size(4));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let pool = pool.clone();
        let rt2 = rt.clone();
        tasks.push(rt.spawn(async move {
            let conn = pool.get().await.unwrap();
            rt2.sleep(Duration::from_millis(100)).await;
            drop(conn);
        }));
    }
    for task in tasks {
        task.await;
    }
    assert_eq!(
        script.counts.creates.load(Ordering::SeqCst),
        4,
        "at most max_size creates"
    );

    // Return to an otherwise empty pool, then one get: served from idle, no extra create.
    let script2 = Script::new(rt.runtime());
    let pool2 = pool_with(&rt, &script2, |b| b.max_size(4));
    let conn = pool2.get().await.unwrap();
    drop(conn);
    let conn = pool2.get().await.unwrap();
    drop(conn);
    assert_eq!(script2.counts.creates.load(Ordering::SeqCst), 1);
    assert_invariants(&rt, &pool2, &script2, 4).await;
}

/// Callers are served in arrival order; one that gives up is skipped without disturbing the
/// others. Caller i holds its connection 100 + 10·i ms, so no two connections come back at
/// the same moment and the order in which the callers run is the order they were served.
pub(crate) async fn d7_fifo_fairness(rt: Rt) {
    let hold = |i: usize| Duration::from_millis(100 + 10 * i as u64);
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.max_size(2));
    let order = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..6usize {
        let pool2 = pool.clone();
        let seen = Arc::clone(&order);
        let rt2 = rt.clone();
        tasks.push(rt.spawn(async move {
            let conn = pool2.get().await.unwrap();
            let at = started.elapsed();
            seen.lock().unwrap().push(i);
            rt2.sleep(hold(i)).await;
            drop(conn);
            at
        }));
        // Let each caller queue before the next arrives. The first two are served at once
        // (the pool has room for them): wait until each has run, or on a multi-thread
        // runtime the second could record itself first.
        rt.wait_until(Duration::from_secs(2), "caller queued or served", || {
            let s = pool.status();
            if i < 2 {
                order.lock().unwrap().len() == i + 1
            } else {
                s.waiting + s.in_use == i + 1
            }
        })
        .await;
        if i == 3 {
            // An impatient caller between 3 and 4: fails at its deadline and is skipped.
            let impatient = Instant::now();
            let err = pool
                .get_timeout(Duration::from_millis(50))
                .await
                .unwrap_err();
            assert!(err.is_timeout());
            assert_elapsed(
                &rt,
                "impatient caller",
                impatient,
                Duration::from_millis(50),
            );
        }
    }
    let mut service = Vec::new();
    for task in tasks {
        service.push(task.await);
    }
    assert_eq!(
        *order.lock().unwrap(),
        vec![0, 1, 2, 3, 4, 5],
        "first come, first served"
    );
    // Two at once, then each when the connection it waits for comes back: 0, 0, 100, 110,
    // 220 and 240 ms.
    let mut expected = vec![Duration::ZERO; 2];
    for i in 2..6 {
        expected.push(expected[i - 2] + hold(i - 2));
    }
    for (i, at) in service.iter().enumerate() {
        let expected = expected[i];
        assert!(
            *at + Duration::from_millis(60) >= expected && *at <= expected + EPSILON,
            "[{}] caller {i} served at {at:?}, expected about {expected:?}",
            rt.name()
        );
    }
    assert_eq!(pool.status().size, 2);
    assert_invariants(&rt, &pool, &script, 2).await;
}

pub(crate) async fn d8_bounded_queue(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.max_size(1).max_waiting(3));
    let holder = pool.get().await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let mut get = Box::pin(pool.get());
        assert!(futures::poll!(&mut get).is_pending());
        waiters.push(get);
    }
    let started = Instant::now();
    match pool.get().await {
        Err(PoolError::Busy { max_waiting }) => assert_eq!(max_waiting, 3),
        other => panic!("[{}] expected Busy, got {other:?}", rt.name()),
    }
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "rejected at once"
    );
    let message = PoolError::<std::io::Error>::Busy { max_waiting: 3 }.to_string();
    assert!(
        message.contains("max_waiting = 3"),
        "the error names the limit: {message}"
    );
    assert_eq!(pool.statistics().gets_rejected_busy, 1);
    drop(holder);
    for waiter in waiters {
        drop(waiter.await.unwrap());
    }
    assert_invariants(&rt, &pool, &script, 1).await;
}

pub(crate) async fn waiters_25000_on_max_3_all_finish(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| {
        b.max_size(3).wait_timeout(Duration::from_secs(60))
    });
    let done = Arc::new(AtomicUsize::new(0));
    let holder = pool.get().await.unwrap();
    let mut tasks = Vec::with_capacity(25_000);
    for _ in 0..25_000 {
        let pool = pool.clone();
        let done = Arc::clone(&done);
        tasks.push(rt.spawn(async move {
            let conn = pool.get().await.expect("every waiter is served");
            futures::future::ready(()).await;
            drop(conn);
            done.fetch_add(1, Ordering::Relaxed);
        }));
    }
    drop(holder);
    for task in tasks {
        task.await;
    }
    assert_eq!(done.load(Ordering::SeqCst), 25_000);
    assert!(script.counts.creates.load(Ordering::SeqCst) <= 3);
    assert_invariants(&rt, &pool, &script, 3).await;
}

pub(crate) async fn d9_timeout_precision(rt: Rt) {
    let script = Script::new(rt.runtime());
    script.set(Op::Create, Step::Never);
    let pool = pool_with(&rt, &script, |b| {
        b.max_size(1)
            .create_timeout(None)
            .wait_timeout(Duration::from_millis(150))
    });

    // The configured wait timeout, while a connect hangs: the create phase.
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert_elapsed(
        &rt,
        "configured timeout",
        started,
        Duration::from_millis(150),
    );
    match &err {
        PoolError::Timeout(t) => {
            assert_eq!(t.phase(), Phase::Create);
            assert_eq!(t.after(), Duration::from_millis(150));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(err.to_string().contains("timed out after 150ms"), "{err}");

    // A per-call override.
    let started = Instant::now();
    let err = pool
        .get_timeout(Duration::from_millis(60))
        .await
        .unwrap_err();
    assert_elapsed(&rt, "per-call timeout", started, Duration::from_millis(60));
    assert!(err.is_timeout());

    // try_get: zero.
    let started = Instant::now();
    let err = pool.try_get().await.unwrap_err();
    assert_elapsed(&rt, "try_get", started, Duration::ZERO);
    assert!(err.is_timeout());

    // The default configuration never waits for ever.
    assert_eq!(
        momopool::PoolConfig::default().wait_timeout,
        Some(Duration::from_secs(30))
    );

    // All connections busy, nothing connecting: the wait phase.
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.max_size(1));
    let held = pool.get().await.unwrap();
    let started = Instant::now();
    match pool.get_timeout(Duration::from_millis(80)).await {
        Err(PoolError::Timeout(t)) => assert_eq!(t.phase(), Phase::Wait),
        other => panic!("expected a wait timeout, got {other:?}"),
    }
    assert_elapsed(&rt, "wait phase", started, Duration::from_millis(80));
    drop(held);

    // A check that outlives the caller's deadline: the recycle phase.
    let script = Script::new(rt.runtime());
    script.set(Op::Check, Step::Never);
    let pool = pool_with(&rt, &script, |b| {
        b.max_size(1)
            .validation(momopool::Validation::Always)
            .recycle_timeout(None)
    });
    drop(pool.get().await.unwrap());
    let started = Instant::now();
    match pool.get_timeout(Duration::from_millis(80)).await {
        Err(PoolError::Timeout(t)) => assert_eq!(t.phase(), Phase::Recycle),
        other => panic!("expected a recycle timeout, got {other:?}"),
    }
    assert_elapsed(&rt, "recycle phase", started, Duration::from_millis(80));
    script.set(Op::Check, Step::Ok);
    assert_invariants(&rt, &pool, &script, 1).await;
}

pub(crate) async fn max_connecting_limits_connects_in_flight(rt: Rt) {
    let script = Script::new(rt.runtime());
    script.set(Op::Create, Step::Slow(Duration::from_millis(30)));
    let pool = pool_with(&rt, &script, |b| b.max_size(10).max_connecting(2));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let pool = pool.clone();
        let rt2 = rt.clone();
        tasks.push(rt.spawn(async move {
            let conn = pool.get().await.unwrap();
            rt2.sleep(Duration::from_millis(100)).await;
            drop(conn);
        }));
    }
    for task in tasks {
        task.await;
    }
    assert!(script.counts.peak_connecting() <= 2, "storm control");
    assert!(script.counts.created.load(Ordering::SeqCst) >= 2);
    assert_invariants(&rt, &pool, &script, 10).await;
}

pub(crate) async fn reuse_order_lifo_and_fifo(rt: Rt) {
    for (reuse, expect_latest) in [(Reuse::Lifo, true), (Reuse::Fifo, false)] {
        let script = Script::new(rt.runtime());
        let pool = pool_with(&rt, &script, |b| b.max_size(2).reuse(reuse));
        let a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();
        let (first_back, last_back) = (a.id, b.id);
        drop(a);
        drop(b);
        let next = pool.get().await.unwrap();
        let expected = if expect_latest { last_back } else { first_back };
        assert_eq!(next.id, expected, "{reuse:?}");
        drop(next);
        assert_accounting(&pool);
    }
}

/// Waiting callers with different deadlines each time out at their own: the pool's deadline
/// task serves callers whose deadlines rise along the queue, the others keep a timer of
/// their own, and a cancelled caller left in the queue hides nobody's deadline.
pub(crate) async fn mixed_deadlines_each_time_out_on_time(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.max_size(1).create_timeout(None));
    let held = pool.get().await.unwrap();

    // A caller with a long deadline queues first, then gives up: its slot stays queued.
    let gave_up = rt
        .timeout(
            Duration::from_millis(30),
            pool.get_timeout(Duration::from_secs(20)),
        )
        .await;
    assert!(
        gave_up.is_none(),
        "nothing to get while the only connection is held"
    );
    assert_eq!(pool.status().waiting, 0);

    let started = Instant::now();
    let timed = |after: Duration| {
        let pool = pool.clone();
        rt.spawn(async move {
            let result = pool.get_timeout(after).await;
            (result.map(drop), started.elapsed())
        })
    };
    // Queue order: 600 ms, 100 ms (earlier than the one before it), 900 ms, 300 ms. Each
    // out-of-order deadline comes more than EPSILON before the one queued ahead of it, so a
    // caller timed out only when the one ahead of it is fails the bound below.
    let deadlines = [600, 100, 900, 300].map(Duration::from_millis);
    let mut waiters = Vec::new();
    for (queued, after) in deadlines.into_iter().enumerate() {
        waiters.push((after, timed(after)));
        rt.wait_until(Duration::from_secs(2), "waiter queued", || {
            pool.status().waiting == queued + 1
        })
        .await;
    }
    for (after, waiter) in waiters {
        let (result, elapsed) = waiter.await;
        match result {
            Err(PoolError::Timeout(t)) => {
                assert_eq!(t.phase(), Phase::Wait);
                assert_eq!(t.after(), after);
            }
            other => panic!("[{}] expected a timeout, got {other:?}", rt.name()),
        }
        assert!(
            elapsed >= after && elapsed <= after + EPSILON,
            "[{}] a {after:?} deadline fired after {elapsed:?}",
            rt.name()
        );
    }
    assert_eq!(pool.status().waiting, 0);
    assert_eq!(pool.statistics().gets_timed_out, 4);
    drop(held);
    assert_invariants(&rt, &pool, &script, 1).await;
}

/// `has_waiters` follows the queue without the pool's lock: true while a caller waits,
/// false again once it is served, and in agreement with `status().waiting`.
pub(crate) async fn has_waiters_follows_the_queue(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.max_size(1));
    let held = pool.get().await.unwrap();
    assert!(!pool.has_waiters(), "[{}] nobody waits yet", rt.name());
    let waiter = {
        let pool = pool.clone();
        rt.spawn(async move { pool.get().await.map(drop) })
    };
    rt.wait_until(Duration::from_secs(2), "the caller queues", || {
        pool.has_waiters()
    })
    .await;
    assert_eq!(pool.status().waiting, 1);
    drop(held);
    waiter.await.unwrap();
    assert!(!pool.has_waiters(), "[{}] the waiter was served", rt.name());
    assert_eq!(pool.status().waiting, 0);
    assert_invariants(&rt, &pool, &script, 1).await;
}
