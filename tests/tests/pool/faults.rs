//! Misbehaving managers and hooks: errors, panics, hangs, outages.

use crate::{EPSILON, assert_elapsed, pool_with};
use momopool::{ErrorClass, Phase, Pool, PoolError, Pooled, Removal, Validation};
use momopool_tests::{Op, Rt, Script, Step, assert_invariants};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A1 with a scripted backend: eager builds fail with the connect error; lazy gets time out
/// carrying it; connect attempts back off instead of spinning.
pub(crate) async fn a1_backend_down_at_start(rt: Rt) {
    let script = Script::new(rt.runtime());
    script.set(Op::Create, Step::Err);

    let started = Instant::now();
    let eager = Pool::builder(script.clone())
        .shared_runtime(rt.runtime())
        .min_size(2)
        .create_timeout(Duration::from_millis(500))
        .build_eager()
        .await;
    match eager {
        Err(PoolError::Backend(e)) => assert!(e.message.contains("Create")),
        other => panic!("[{}] expected the connect error, got {other:?}", rt.name()),
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "fails within the create timeout"
    );

    let script = Script::new(rt.runtime());
    script.set(Op::Create, Step::Err);
    let pool = pool_with(&rt, &script, |b| {
        b.reconnect_interval(Duration::from_millis(50))
            .reconnect_max(Duration::from_secs(1))
    });
    let started = Instant::now();
    let err = pool.get_timeout(Duration::from_secs(1)).await.unwrap_err();
    assert_elapsed(&rt, "lazy get", started, Duration::from_secs(1));
    match &err {
        PoolError::Timeout(t) => {
            assert_eq!(t.phase(), Phase::Create);
            let last = t
                .last_error()
                .expect("the timeout carries the last connect error");
            assert!(last.to_string().contains("scripted Create"), "{last}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(err.to_string().contains("last error"), "{err}");
    assert!(err.backend().is_some());
    // 50, 100, 200, 400 ms (halved at most by jitter): a handful of attempts, not a spin.
    let attempts = script.counts.creates.load(Ordering::SeqCst);
    assert!(
        (3..=10).contains(&attempts),
        "[{}] {attempts} connect attempts in 1 s",
        rt.name()
    );
    script.set(Op::Create, Step::Ok);
    assert_invariants(&rt, &pool, &script, 4).await;
}

/// A6 with a scripted backend: a permanent error (wrong password) reaches every waiting
/// caller at once, and new callers during the backoff get it without another connect.
pub(crate) async fn a6_permanent_error_fails_fast(rt: Rt) {
    let script = Script::new(rt.runtime());
    script.set(Op::Create, Step::ErrClass(ErrorClass::Permanent));
    let pool = pool_with(&rt, &script, |b| {
        b.reconnect_interval(Duration::from_millis(200))
            .reconnect_max(Duration::from_secs(2))
    });
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            rt.spawn(async move {
                let started = Instant::now();
                (
                    pool.get_timeout(Duration::from_secs(5)).await.map(drop),
                    started.elapsed(),
                )
            })
        })
        .collect();
    for waiter in waiters {
        let (result, took) = waiter.await;
        let err = result.unwrap_err();
        assert!(matches!(err, PoolError::Backend(_)), "{err:?}");
        assert!(
            took < Duration::from_millis(150),
            "[{}] took {took:?}",
            rt.name()
        );
    }
    let started = Instant::now();
    assert!(matches!(pool.get().await, Err(PoolError::Backend(_))));
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "answered without a new connect"
    );
    // One connect per caller before the first answer, then none while backing off.
    let attempts = script.counts.creates.load(Ordering::SeqCst);
    assert!(
        attempts <= 3,
        "[{}] {attempts} connects for 3 callers",
        rt.name()
    );
    for _ in 0..20 {
        assert!(matches!(pool.get().await, Err(PoolError::Backend(_))));
    }
    assert_eq!(
        script.counts.creates.load(Ordering::SeqCst),
        attempts,
        "no reconnect storm while callers keep asking"
    );
    script.set(Op::Create, Step::Ok);
    rt.sleep(Duration::from_millis(450)).await;
    assert_invariants(&rt, &pool, &script, 4).await;
}

/// D4: a check or recycle hook that never returns is cut off by the recycle timeout; the
/// connection is discarded and the caller served with another.
pub(crate) async fn d4_check_or_hook_that_never_returns(rt: Rt) {
    for op in [Op::Check, Op::PreRecycle, Op::PostRecycle] {
        let script = Script::new(rt.runtime());
        let pool = script
            .hooks(
                Pool::builder(script.clone())
                    .shared_runtime(rt.runtime())
                    .min_size(0)
                    .max_size(2)
                    .validation(Validation::Always)
                    .recycle_timeout(Duration::from_millis(100)),
            )
            .build()
            .unwrap();
        let first = pool.get().await.unwrap();
        let first_id = first.id;
        drop(first);
        script.queue(op, [Step::Never]);
        let started = Instant::now();
        let conn = pool.get().await.unwrap();
        assert_elapsed(
            &rt,
            &format!("{op:?} that hangs"),
            started,
            Duration::from_millis(100),
        );
        assert_ne!(
            conn.id, first_id,
            "{op:?}: the stuck connection was discarded"
        );
        drop(conn);
        assert_eq!(
            pool.statistics().closed.get(Removal::FailedCheck),
            1,
            "{op:?}"
        );
        assert_invariants(&rt, &pool, &script, 2).await;
    }
}

pub(crate) async fn e1_errors(rt: Rt) {
    // post_create fails for one connection: that caller gets the hook error.
    let script = Script::new(rt.runtime());
    script.queue(Op::PostCreate, [Step::Err]);
    let pool = script
        .hooks(
            Pool::builder(script.clone())
                .shared_runtime(rt.runtime())
                .min_size(0)
                .max_size(2),
        )
        .build()
        .unwrap();
    match pool.get().await {
        Err(PoolError::Hook(e)) => assert!(e.to_string().contains("PostCreate"), "{e}"),
        other => panic!("[{}] expected the hook error, got {other:?}", rt.name()),
    }
    assert_eq!(pool.status().size, 0, "the connection was discarded");
    assert_eq!(script.counts.removed(Removal::Error), 1);
    let conn = pool.get().await.unwrap();
    assert_eq!(pool.status().size, 1);
    drop(conn);
    assert_invariants(&rt, &pool, &script, 2).await;

    // Every third create fails with a permanent error: exactly those callers get it.
    let script = Script::new(rt.runtime());
    script.queue(
        Op::Create,
        [
            Step::Ok,
            Step::Ok,
            Step::ErrClass(ErrorClass::Permanent),
            Step::Ok,
        ],
    );
    let pool = pool_with(&rt, &script, |b| {
        b.max_size(4).reconnect_interval(Duration::from_millis(10))
    });
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    assert!(matches!(pool.get().await, Err(PoolError::Backend(_))));
    assert_eq!(
        pool.status().size,
        2,
        "accounting stays exact after the failure"
    );
    rt.sleep(Duration::from_millis(40)).await;
    let c = pool.get().await.unwrap();
    assert_eq!(pool.status().size, 3);
    drop((a, b, c));

    // A transient create error is retried: the caller never sees it.
    let script = Script::new(rt.runtime());
    script.queue(Op::Create, [Step::Err]);
    let pool = pool_with(&rt, &script, |b| {
        b.reconnect_interval(Duration::from_millis(10))
    });
    let conn = pool.get().await.expect("retried after the transient error");
    drop(conn);
    assert_eq!(pool.statistics().create_errors, 1);

    // A recycle hook fails: that connection is discarded and the caller gets another.
    for op in [Op::PreRecycle, Op::PostRecycle] {
        let script = Script::new(rt.runtime());
        let pool = script
            .hooks(
                Pool::builder(script.clone())
                    .shared_runtime(rt.runtime())
                    .min_size(0),
            )
            .build()
            .unwrap();
        let first = pool.get().await.unwrap();
        let first_id = first.id;
        drop(first);
        script.queue(op, [Step::Err]);
        let conn = pool.get().await.unwrap();
        assert_ne!(conn.id, first_id, "{op:?}");
        drop(conn);
        assert_eq!(pool.statistics().closed.get(Removal::Error), 1, "{op:?}");
        assert_invariants(&rt, &pool, &script, 10).await;
    }
}

/// E2: panics in create, in a hook and in check reach only the caller involved, as
/// `PoolError::Panicked`; the connection is never reused; the pool stays fully usable.
pub(crate) async fn e2_panics(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = script
        .hooks(
            Pool::builder(script.clone())
                .shared_runtime(rt.runtime())
                .min_size(0)
                .max_size(3)
                .validation(Validation::Always)
                .reconnect_interval(Duration::from_millis(5)),
        )
        .build()
        .unwrap();

    script.queue(Op::Create, [Step::Panic]);
    match pool.get().await {
        Err(PoolError::Panicked {
            phase,
            what,
            message,
        }) => {
            assert_eq!(phase, Phase::Create);
            assert_eq!(what, "Manager::create");
            assert!(message.contains("panicked"), "{message}");
        }
        other => panic!("[{}] expected a create panic, got {other:?}", rt.name()),
    }

    script.queue(Op::PostCreate, [Step::Panic]);
    rt.sleep(Duration::from_millis(20)).await;
    match pool.get().await {
        Err(PoolError::Panicked { what, .. }) => assert_eq!(what, "post_create hook"),
        other => panic!("[{}] expected a hook panic, got {other:?}", rt.name()),
    }

    rt.sleep(Duration::from_millis(20)).await;
    let conn = pool.get().await.unwrap();
    let id = conn.id;
    drop(conn);
    script.queue(Op::Check, [Step::Panic]);
    match pool.get().await {
        Err(PoolError::Panicked { phase, what, .. }) => {
            assert_eq!(phase, Phase::Recycle);
            assert_eq!(what, "Manager::check");
        }
        other => panic!("[{}] expected a check panic, got {other:?}", rt.name()),
    }
    let next = pool.get().await.unwrap();
    assert_ne!(
        next.id, id,
        "the connection whose check panicked is never reused"
    );
    drop(next);

    // Still fully usable, from many callers at once.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let pool = pool.clone();
            rt.spawn(async move { pool.get().await.map(drop) })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_invariants(&rt, &pool, &script, 3).await;
}

pub(crate) async fn e3_check_fails_for_every_connection(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| {
        b.min_size(3).max_size(3).validation(Validation::Always)
    });
    pool.warm_up().await.unwrap();
    script.set(Op::Check, Step::Err);
    let conn = pool.get().await.unwrap();
    assert!(
        conn.id >= 3,
        "a fresh connection, not one that failed its check"
    );
    drop(conn);
    let stats = pool.statistics();
    // Each of the three failed; background top-ups to min_size may fail theirs too.
    assert!(stats.closed.get(Removal::FailedCheck) >= 3);
    assert_eq!(
        script.counts.removed(Removal::FailedCheck) as u64,
        stats.closed.get(Removal::FailedCheck)
    );
    script.set(Op::Check, Step::Ok);
    assert_invariants(&rt, &pool, &script, 3).await;
}

/// G1 with a scripted backend: during an outage one probe at a time, backing off; after
/// recovery the pool grows to demand within `max_connecting`.
pub(crate) async fn g1_reconnect_backoff_after_outage(rt: Rt) {
    let script = Script::new(rt.runtime());
    script.set(Op::Create, Step::SlowErr(Duration::from_millis(2)));
    let pool = pool_with(&rt, &script, |b| {
        b.max_size(20)
            .max_connecting(4)
            .reconnect_interval(Duration::from_millis(20))
            .reconnect_max(Duration::from_millis(400))
    });
    let done = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let pool = pool.clone();
            let done = Arc::clone(&done);
            let rt2 = rt.clone();
            rt.spawn(async move {
                let conn = pool.get_timeout(Duration::from_secs(10)).await.unwrap();
                rt2.sleep(Duration::from_millis(5)).await;
                drop(conn);
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    // Before the first failure the pool cannot know: it starts max_connecting connects.
    rt.wait_until(Duration::from_secs(2), "first connects failed", || {
        pool.statistics().create_errors >= 1
    })
    .await;
    rt.sleep(Duration::from_millis(10)).await;
    script.counts.reset_peaks();
    let before = script.counts.creates.load(Ordering::SeqCst);
    rt.sleep(Duration::from_millis(600)).await;
    let attempts = script.counts.creates.load(Ordering::SeqCst) - before;
    assert!(
        attempts <= 10,
        "[{}] {attempts} attempts in 600 ms: backoff",
        rt.name()
    );
    assert!(
        script.counts.peak_connecting() <= 1,
        "one probe at a time while down"
    );
    script.counts.reset_peaks();
    script.set(Op::Create, Step::Slow(Duration::from_millis(2)));
    for task in tasks {
        task.await;
    }
    assert_eq!(done.load(Ordering::SeqCst), 200);
    assert!(
        script.counts.peak_connecting() <= 4,
        "within max_connecting after recovery"
    );
    assert_invariants(&rt, &pool, &script, 20).await;
}

/// After a connection dies of "server gone", every older connection is checked before it is
/// handed out again, even though the validation policy alone would not check it.
pub(crate) async fn revalidation_after_server_gone(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| {
        b.min_size(3)
            .max_size(3)
            .validation(Validation::IdleLongerThan(Duration::from_secs(60)))
    });
    pool.warm_up().await.unwrap();
    script.kill_existing(); // the server restarts under three idle connections

    let mut victim = pool.get().await.unwrap();
    Pooled::mark_server_gone(&mut victim);
    drop(victim);
    assert_eq!(pool.statistics().revalidations, 1);

    // Hold all three slots: every one must be a connection made after the restart, so
    // both older idle connections were checked (and failed) rather than handed out.
    let held = [
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
    ];
    assert!(
        held.iter().all(|c| c.id >= 3),
        "no connection from before the restart is handed out"
    );
    drop(held);
    assert!(script.counts.checks.load(Ordering::SeqCst) >= 2);
    assert_eq!(pool.statistics().closed.get(Removal::FailedCheck), 2);
    assert_invariants(&rt, &pool, &script, 3).await;
}

pub(crate) async fn fail_fast_while_backend_down(rt: Rt) {
    let script = Script::new(rt.runtime());
    script.set(Op::Create, Step::Err);
    let pool = pool_with(&rt, &script, |b| {
        b.fail_fast(true)
            .reconnect_interval(Duration::from_millis(20))
            .reconnect_max(Duration::from_millis(50))
    });
    let started = Instant::now();
    match pool.get().await {
        Err(PoolError::Unavailable(last)) => assert!(last.to_string().contains("Create")),
        other => panic!("[{}] expected Unavailable, got {other:?}", rt.name()),
    }
    assert!(started.elapsed() < EPSILON);
    let started = Instant::now();
    assert!(matches!(pool.get().await, Err(PoolError::Unavailable(_))));
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "at once while known down"
    );

    // The probe keeps trying without any caller.
    let before = script.counts.creates.load(Ordering::SeqCst);
    rt.sleep(Duration::from_millis(200)).await;
    assert!(
        script.counts.creates.load(Ordering::SeqCst) > before,
        "a probe keeps trying"
    );
    assert!(script.counts.peak_connecting() <= 1);

    script.set(Op::Create, Step::Ok);
    rt.wait_until(Duration::from_secs(2), "the probe reconnects", || {
        pool.status().idle == 1
    })
    .await;
    drop(pool.get().await.unwrap());
    assert_invariants(&rt, &pool, &script, 4).await;
}
