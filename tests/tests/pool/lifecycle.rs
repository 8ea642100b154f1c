//! Lifetimes, close, drain, suspend, detach, resize and the background maintenance pass.

use crate::{EPSILON, pool_with};
use momopool::{Pool, PoolError, Pooled, Removal, Validation};
use momopool_tests::{Op, Rt, Script, Step, assert_accounting, assert_invariants};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// B5: connections made together expire spread out by jitter; one in use when it expires
/// retires when returned; callers see no error.
pub(crate) async fn b5_lifetime_expiry(rt: Rt) {
    let script = Script::new(rt.runtime());
    let lifetime = Duration::from_millis(400);
    let pool = pool_with(&rt, &script, |b| {
        b.min_size(20)
            .max_size(20)
            .max_connecting(20)
            .max_lifetime(lifetime)
            .lifetime_jitter(0.5)
            .maintenance_interval(Duration::from_millis(10))
    });
    pool.warm_up().await.unwrap();

    // Record when replacement connects start, under steady load.
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            let stop = Arc::clone(&stop);
            let errors = Arc::clone(&errors);
            let rt2 = rt.clone();
            rt.spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match pool.get().await {
                        Ok(conn) => {
                            rt2.sleep(Duration::from_millis(2)).await;
                            drop(conn);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_millis(900) {
        samples.push((
            started.elapsed(),
            script.counts.creates.load(Ordering::SeqCst),
        ));
        rt.sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await;
    }
    assert_eq!(errors.load(Ordering::SeqCst), 0, "no caller error");
    let replaced = script.counts.creates.load(Ordering::SeqCst) - 20;
    assert!(
        replaced >= 20,
        "every connection expired at least once: {replaced}"
    );
    // With jitter 0.5 the 20 first expiries spread over 200 ms; at most a few per 50 ms.
    let worst = samples
        .iter()
        .map(|(t, n)| {
            let later = samples
                .iter()
                .find(|(u, _)| *u >= *t + Duration::from_millis(50))
                .map_or(*n, |(_, m)| *m);
            later - n
        })
        .max()
        .unwrap();
    assert!(
        worst <= 14,
        "[{}] {worst} reconnects within 50 ms: not spread",
        rt.name()
    );
    assert!(pool.statistics().closed.get(Removal::Lifetime) >= 20);

    // In use when it expires: retires on return.
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| {
        b.max_lifetime(Duration::from_millis(50))
            .lifetime_jitter(0.0)
    });
    let conn = pool.get().await.unwrap();
    let id = conn.id;
    rt.sleep(Duration::from_millis(80)).await;
    drop(conn);
    assert_eq!(pool.statistics().closed.get(Removal::Lifetime), 1);
    let next = pool.get().await.unwrap();
    assert_ne!(next.id, id);
    drop(next);
    assert_invariants(&rt, &pool, &script, 4).await;
}

pub(crate) async fn g3_close_with_borrowers_and_waiters(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| {
        b.max_size(1)
            .maintenance_interval(Duration::from_millis(20))
    });
    let holder = pool.get().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        rt.spawn(async move {
            let result = pool.get_timeout(Duration::from_secs(10)).await.map(drop);
            (result, Instant::now())
        })
    };
    rt.wait_until(Duration::from_secs(2), "waiter queued", || {
        pool.status().waiting == 1
    })
    .await;
    let closed_at = Instant::now();
    pool.close();
    let (result, at) = waiter.await;
    assert!(matches!(result, Err(PoolError::Closed)), "{result:?}");
    assert!(
        at.duration_since(closed_at) < EPSILON,
        "the waiter learns at once"
    );

    assert_eq!(pool.status().in_use, 1, "the borrower keeps its connection");
    drop(holder);
    assert_eq!(
        script.counts.removed(Removal::Closed),
        1,
        "closed on return"
    );
    assert_eq!(pool.status().size, 0);
    assert!(matches!(pool.get().await, Err(PoolError::Closed)));
    rt.wait_until(Duration::from_secs(2), "background tasks end", || {
        rt.live_tasks() == 0
    })
    .await;

    // A connect that never finishes does not keep close() or its task alive.
    let script = Script::new(rt.runtime());
    script.set(Op::Create, Step::Never);
    let pool = pool_with(&rt, &script, |b| b.create_timeout(None));
    let stuck = rt.timeout(Duration::from_millis(30), pool.get()).await;
    assert!(stuck.is_none());
    assert_eq!(pool.status().creating, 1);
    let started = Instant::now();
    pool.close();
    assert!(
        started.elapsed() < Duration::from_millis(10),
        "close() does not wait"
    );
    rt.wait_until(
        Duration::from_secs(2),
        "the stuck connect is abandoned",
        || rt.live_tasks() == 0,
    )
    .await;
    assert_eq!(pool.status().size, 0);
}

pub(crate) async fn drain_replaces_every_connection(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.min_size(2).max_size(3));
    pool.warm_up().await.unwrap();
    let held = pool.get().await.unwrap();
    let held_id = held.id;
    pool.drain();
    assert_eq!(
        pool.statistics().closed.get(Removal::Retired),
        1,
        "the idle one at once"
    );
    drop(held);
    assert_eq!(
        pool.statistics().closed.get(Removal::Retired),
        2,
        "the busy one on return"
    );
    rt.wait_until(Duration::from_secs(2), "refilled to min_size", || {
        pool.status().idle == 2
    })
    .await;
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    assert!(a.id >= 2 && b.id >= 2 && a.id != held_id && b.id != held_id);
    drop((a, b));
    assert_invariants(&rt, &pool, &script, 3).await;
}

pub(crate) async fn g6_suspend_resume(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.min_size(1));
    pool.warm_up().await.unwrap();
    pool.suspend();
    assert!(pool.is_suspended());
    let err = pool
        .get_timeout(Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "new borrowers wait while suspended");
    assert_eq!(pool.status().idle, 1, "idle connections are kept");
    let waiter = {
        let pool = pool.clone();
        rt.spawn(async move { pool.get().await.map(|c| (c.id, Instant::now())) })
    };
    rt.wait_until(Duration::from_secs(2), "waiter queued", || {
        pool.status().waiting == 1
    })
    .await;
    rt.sleep(Duration::from_millis(30)).await;
    assert_eq!(pool.status().waiting, 1, "still held back");
    let resumed = Instant::now();
    pool.resume();
    let (id, at) = waiter.await.unwrap();
    assert_eq!(id, 0, "served with the idle connection");
    assert!(at.duration_since(resumed) < EPSILON);
    assert_eq!(script.counts.creates.load(Ordering::SeqCst), 1);

    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.fail_fast(true));
    pool.suspend();
    assert!(matches!(pool.get().await, Err(PoolError::Suspended)));
    pool.resume();
    drop(pool.get().await.unwrap());
    assert_invariants(&rt, &pool, &script, 4).await;
}

pub(crate) async fn g7_detach(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.max_size(2));
    let conn = Pooled::detach(pool.get().await.unwrap());
    assert_eq!(pool.status().size, 0, "size drops on detach");
    assert_eq!(script.counts.removed(Removal::Detached), 1);
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    assert_eq!(pool.status().size, 2, "new connections up to max");
    drop(conn); // the detached connection dies: none of the pool's business
    let status = pool.status();
    assert_eq!((status.size, status.in_use), (2, 2));
    drop((a, b));
    assert_accounting(&pool);
    assert_eq!(pool.statistics().closed.get(Removal::Detached), 1);
}

pub(crate) async fn resize_down_and_up_under_load(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.max_size(8));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let pool = pool.clone();
            let stop = Arc::clone(&stop);
            let errors = Arc::clone(&errors);
            let rt2 = rt.clone();
            rt.spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match pool.get().await {
                        Ok(conn) => {
                            rt2.sleep(Duration::from_millis(2)).await;
                            drop(conn);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    rt.wait_until(Duration::from_secs(2), "stretched to 8", || {
        pool.status().size == 8
    })
    .await;

    pool.resize(0, 2).unwrap();
    rt.wait_until(Duration::from_secs(2), "shrunk to 2", || {
        pool.status().size <= 2
    })
    .await;
    let sizes = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..40 {
        let s = pool.status();
        sizes.lock().unwrap().push(s.size);
        assert_accounting(&pool);
        rt.sleep(Duration::from_millis(2)).await;
    }
    assert!(
        sizes.lock().unwrap().iter().all(|s| *s <= 2),
        "[{}] never above the new max: {:?}",
        rt.name(),
        sizes.lock().unwrap()
    );

    pool.resize(1, 6).unwrap();
    rt.wait_until(Duration::from_secs(2), "grown to 6", || {
        pool.status().size == 6
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await;
    }
    assert_eq!(errors.load(Ordering::SeqCst), 0);
    assert_eq!(pool.resize(3, 2).unwrap_err().field(), "min_size");
    assert_invariants(&rt, &pool, &script, 8).await;
}

pub(crate) async fn warm_up_and_eager_build(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = Pool::builder(script.clone())
        .shared_runtime(rt.runtime())
        .min_size(3)
        .max_size(5)
        .build_eager()
        .await
        .unwrap();
    let status = pool.status();
    assert_eq!((status.idle, status.size), (3, 3));

    // Lazy build: fills min_size in the background without anyone asking.
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.min_size(2));
    rt.wait_until(Duration::from_secs(2), "background fill", || {
        pool.status().idle == 2
    })
    .await;

    // A lazy build never fails for an unreachable backend.
    let script = Script::new(rt.runtime());
    script.set(Op::Create, Step::Err);
    let pool = pool_with(&rt, &script, |b| b.min_size(2));
    assert!(
        pool.warm_up().await.is_err(),
        "warm_up reports the connect error"
    );
    script.set(Op::Create, Step::Ok);
    assert_invariants(&rt, &pool, &script, 4).await;

    // Invalid settings are errors naming the field, never panics.
    let invalid = Pool::builder(Script::new(rt.runtime()))
        .shared_runtime(rt.runtime())
        .max_size(0)
        .build();
    assert_eq!(invalid.unwrap_err().field(), "max_size");
    let no_runtime = Pool::builder(Script::new(rt.runtime())).build();
    assert_eq!(no_runtime.unwrap_err().field(), "runtime");
    let zero = Pool::builder(Script::new(rt.runtime()))
        .shared_runtime(rt.runtime())
        .reconnect_interval(Duration::ZERO)
        .build_eager()
        .await;
    assert!(matches!(zero, Err(PoolError::Config(e)) if e.field() == "reconnect_interval"));
}

pub(crate) async fn keepalive_checks_idle_connections(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| {
        b.min_size(2)
            .keepalive_interval(Duration::from_millis(40))
            .maintenance_interval(Duration::from_millis(10))
    });
    pool.warm_up().await.unwrap();
    rt.wait_until(Duration::from_secs(2), "keepalive checks run", || {
        script.counts.checks.load(Ordering::SeqCst) >= 2
    })
    .await;
    // A failing keepalive check replaces the connection in the background.
    script.queue(Op::Check, [Step::Err]);
    rt.wait_until(Duration::from_secs(2), "failed keepalive replaced", || {
        pool.statistics().closed.get(Removal::FailedCheck) == 1 && pool.status().idle == 2
    })
    .await;
    assert!(script.counts.created.load(Ordering::SeqCst) >= 3);
    assert_invariants(&rt, &pool, &script, 4).await;
}

pub(crate) async fn leak_detection_reports_held_connections(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| {
        b.leak_threshold(Duration::from_millis(40))
            .maintenance_interval(Duration::from_millis(10))
    });
    let quick = pool.get().await.unwrap();
    drop(quick);
    let held = pool.get().await.unwrap();
    rt.wait_until(Duration::from_secs(2), "leak reported", || {
        pool.statistics().leaks_reported == 1
    })
    .await;
    rt.sleep(Duration::from_millis(50)).await;
    assert_eq!(pool.statistics().leaks_reported, 1, "reported once");
    drop(held);
    assert_invariants(&rt, &pool, &script, 4).await;
}

/// A connection handed straight from the caller returning it to a waiting one is asked about
/// with `needs_check_on_handover`; one that sat idle (or waited in the slot of a caller who
/// left) with `needs_check`. A dirty one is checked either way.
pub(crate) async fn handed_over_connections_are_asked_on_handover(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| {
        b.max_size(1).validation(Validation::Never)
    });
    let asked = |script: &Script| {
        (
            script.counts.needs_checks.load(Ordering::SeqCst),
            script.counts.handover_checks.load(Ordering::SeqCst),
        )
    };
    drop(pool.get().await.unwrap()); // created: no question at all
    assert_eq!(asked(&script), (0, 0));

    let mut holder = pool.get().await.unwrap(); // from idle
    assert_eq!(asked(&script), (1, 0));
    holder.dirty = true;
    let waiter = {
        let pool = pool.clone();
        rt.spawn(async move { pool.get().await })
    };
    rt.wait_until(Duration::from_secs(2), "waiter queued", || {
        pool.status().waiting == 1
    })
    .await;
    drop(holder);
    let mut conn = waiter.await.expect("handed over");
    assert_eq!(asked(&script), (1, 1), "asked on hand-over, not as idle");
    assert_eq!(
        script.counts.checks.load(Ordering::SeqCst),
        1,
        "a dirty connection is checked when handed over too"
    );
    conn.dirty = false;
    drop(conn);

    // Served to a caller who then left: it sat in that caller's slot for as long as the
    // caller took to go, so the next waiter's question is `needs_check`.
    let holder = pool.get().await.unwrap();
    assert_eq!(asked(&script), (2, 1));
    let mut leaver = Box::pin(pool.get());
    assert!(futures::poll!(leaver.as_mut()).is_pending());
    let next = {
        let pool = pool.clone();
        rt.spawn(async move { pool.get().await })
    };
    rt.wait_until(Duration::from_secs(2), "two waiters queued", || {
        pool.status().waiting == 2
    })
    .await;
    drop(holder); // served to the leaver
    drop(leaver); // passed on to the next waiter
    drop(next.await.expect("passed on"));
    assert_eq!(asked(&script), (3, 1));
    assert_invariants(&rt, &pool, &script, 1).await;
}

pub(crate) async fn retain_closes_rejected_idle_connections(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.min_size(3).max_size(3));
    pool.warm_up().await.unwrap();
    let closed = pool.retain(|conn, _| conn.id % 2 == 0);
    assert_eq!(closed, 1);
    assert_eq!(pool.statistics().closed.get(Removal::Retired), 1);
    // A panicking predicate closes the connection rather than poisoning anything.
    let closed = pool.retain(|conn, _| {
        if conn.id == 0 {
            panic!("predicate bug")
        } else {
            true
        }
    });
    assert_eq!(closed, 1);
    assert_invariants(&rt, &pool, &script, 3).await;
}

pub(crate) async fn dirty_connections_are_checked_before_reuse(rt: Rt) {
    let script = Script::new(rt.runtime());
    let pool = pool_with(&rt, &script, |b| b.validation(Validation::Never));
    let mut conn = pool.get().await.unwrap();
    conn.dirty = true;
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    assert_eq!(
        script.counts.checks.load(Ordering::SeqCst),
        1,
        "checked despite Never"
    );
    conn.dirty = false;
    drop(conn);
    drop(pool.get().await.unwrap());
    assert_eq!(
        script.counts.checks.load(Ordering::SeqCst),
        1,
        "clean: no check"
    );
    // `needs_check` is asked when an idle connection is handed out, not when it comes back.
    let asked = script.counts.needs_checks.load(Ordering::SeqCst);
    drop(pool.get().await.unwrap());
    assert_eq!(script.counts.needs_checks.load(Ordering::SeqCst), asked + 1);
    assert_invariants(&rt, &pool, &script, 4).await;
}
