//! Running one measurement in isolation: its own runtime, its own OS thread, and a watchdog so
//! that a pool that never hands out a connection cannot stop the benchmark.

use crate::isolate::{RUN_LIMIT, isolated, on_tokio_runtime};
use crate::pools::{BenchPool, Job, Rt, Variant, warm, with_pool};
use std::future::Future;
use std::time::{Duration, Instant};

pub(crate) use crate::isolate::Outcome;

/// Which Tokio scheduler a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sched {
    /// `new_multi_thread` with this many workers.
    Multi(usize),
    /// `new_current_thread`: the measuring task and the pool share one thread.
    Current,
}

/// Runs the future made by `make` on a fresh Tokio runtime in a thread of its own, giving up
/// after [`RUN_LIMIT`]. The runtime is shut down afterwards, hung tasks included.
pub(crate) fn on_tokio<T, F, Fut>(sched: Sched, make: F) -> Outcome<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, String>>,
{
    isolated(move || {
        let mut builder = match sched {
            Sched::Multi(workers) => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(workers);
                b
            }
            Sched::Current => tokio::runtime::Builder::new_current_thread(),
        };
        on_tokio_runtime(builder.enable_time(), make)
    })
}

/// Runs the future made by `make` with `smol::block_on` (tasks it spawns go to smol's global
/// executor), giving up after [`RUN_LIMIT`]; dropping the unfinished future cancels its tasks.
pub(crate) fn on_smol<T, F, Fut>(make: F) -> Outcome<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, String>>,
{
    isolated(move || {
        smol::block_on(async move {
            let run = async { Some(make().await) };
            let limit = async {
                smol::Timer::after(RUN_LIMIT).await;
                None
            };
            match smol::future::or(run, limit).await {
                Some(result) => result.map(Some),
                None => Ok(None),
            }
        })
    })
}

/// Sleeps on whichever runtime is running.
pub(crate) async fn sleep(rt: Rt, duration: Duration) {
    match rt {
        Rt::Tokio => tokio::time::sleep(duration).await,
        Rt::Smol => {
            smol::Timer::after(duration).await;
        }
    }
}

/// Uncontended cost: one task doing get + drop in a tight loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Uncontended {
    /// Roughly how long the timed loop should take; the iteration count is calibrated to it.
    pub(crate) target: Duration,
}

impl Job for Uncontended {
    type Out = Result<f64, String>;

    async fn run<P: BenchPool>(self, pool: P, size: usize) -> Self::Out {
        warm(&pool, size).await?;
        sleep(Rt::Tokio, Duration::from_millis(20)).await;
        // Calibrate: a first batch estimates the cost, and also warms caches.
        let probe = 20_000;
        let started = Instant::now();
        get_drop_loop(&pool, probe).await?;
        let per_op = started.elapsed().as_secs_f64() / probe as f64;
        let iters =
            ((self.target.as_secs_f64() / per_op.max(1e-9)) as usize).clamp(probe, 20_000_000);
        let started = Instant::now();
        get_drop_loop(&pool, iters).await?;
        Ok(started.elapsed().as_secs_f64() * 1e9 / iters as f64)
    }
}

/// `iters` times: get, touch the connection, drop.
async fn get_drop_loop<P: BenchPool>(pool: &P, iters: usize) -> Result<(), String> {
    for _ in 0..iters {
        let guard = pool.checkout().await?;
        std::hint::black_box(guard.id);
        drop(guard);
    }
    Ok(())
}

/// Measures uncontended ns per get + drop of `variant` with `size` connections, on a Tokio
/// current-thread runtime.
pub(crate) fn uncontended(variant: Variant, size: usize, target: Duration) -> Outcome<f64> {
    on_tokio(Sched::Current, move || async move {
        with_pool(variant, size, Rt::Tokio, Uncontended { target }).await?
    })
}
