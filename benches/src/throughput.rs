//! Contended throughput: T tasks share a pool of P connections; each task loops get, hold the
//! connection across one yield, drop. Also used by the scaling section (25 000 waiters).

use crate::Settings;
use crate::harness::{Outcome, Sched, on_smol, on_tokio, sleep};
use crate::pools::{
    BB8, BenchPool, DEADPOOL, DEADPOOL_NO_TIMEOUTS, FLOOR, Job, MOBC, MOMO, MOMO_NO_TIMEOUTS, Rt,
    Variant, warm, with_pool,
};
use crate::stats::{RunStats, Series, Target, fmt_ns, fmt_rate, fmt_rate_range, fmt_ratio};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// Task counts of the grid.
pub(crate) const TASKS: [usize; 4] = [1, 16, 64, 256];
/// Pool sizes of the grid.
pub(crate) const SIZES: [usize; 2] = [4, 16];
/// Worker threads of the Tokio runtime, and smol's `SMOL_THREADS`.
pub(crate) const WORKERS: usize = 2;

/// Worst checkout latency allowed per run, ns.
const MAX_LATENCY_NS: f64 = 20e6;
/// p99.9 may be at most this multiple of p50 under contention.
const TAIL_RATIO: f64 = 3.0;
/// momopool's throughput target relative to deadpool.
const SPEEDUP: f64 = 1.5;

/// One throughput run: `tasks` tasks share `ops` checkouts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Throughput {
    /// Concurrent tasks.
    pub(crate) tasks: usize,
    /// Checkouts in total.
    pub(crate) ops: usize,
    /// The runtime the tasks are spawned on.
    pub(crate) rt: Rt,
}

/// A spawned worker, awaited: its latencies and when it finished.
type Joined = Pin<Box<dyn Future<Output = Result<(Vec<u64>, Instant), String>> + Send>>;

impl Job for Throughput {
    type Out = Result<RunStats, String>;

    async fn run<P: BenchPool>(self, pool: P, size: usize) -> Self::Out {
        warm(&pool, size).await?;
        sleep(self.rt, Duration::from_millis(20)).await;
        let base = self.ops / self.tasks;
        let extra = self.ops % self.tasks;
        let started = Instant::now();
        let mut joins: Vec<Joined> = Vec::with_capacity(self.tasks);
        for i in 0..self.tasks {
            let n = base + usize::from(i < extra);
            let pool = pool.clone();
            joins.push(match self.rt {
                Rt::Tokio => {
                    let handle = tokio::spawn(worker(pool, n, tokio::task::yield_now));
                    Box::pin(async move { handle.await.map_err(|e| e.to_string())? })
                }
                Rt::Smol => Box::pin(smol::spawn(worker(pool, n, smol::future::yield_now))),
            });
        }
        let mut latencies = Vec::with_capacity(self.ops);
        let mut finished = started;
        for join in joins {
            let (lat, done) = join.await?;
            latencies.extend_from_slice(&lat);
            finished = finished.max(done);
        }
        Ok(RunStats::new(&mut latencies, finished - started))
    }
}

/// One task's loop: `n` times get (timed), hold across one yield, drop.
async fn worker<P, Y, YF>(pool: P, n: usize, yield_now: Y) -> Result<(Vec<u64>, Instant), String>
where
    P: BenchPool,
    Y: Fn() -> YF,
    YF: Future<Output = ()>,
{
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let asked = Instant::now();
        let guard = pool.checkout().await?;
        latencies.push(asked.elapsed().as_nanos() as u64);
        std::hint::black_box(guard.id);
        yield_now().await;
        drop(guard);
    }
    Ok((latencies, Instant::now()))
}

/// One throughput run of `variant` in isolation (fresh runtime, watchdog).
pub(crate) fn run_once(variant: Variant, size: usize, job: Throughput) -> Outcome<RunStats> {
    match job.rt {
        Rt::Tokio => on_tokio(Sched::Multi(WORKERS), move || async move {
            with_pool(variant, size, Rt::Tokio, job).await?
        }),
        Rt::Smol => on_smol(move || async move { with_pool(variant, size, Rt::Smol, job).await? }),
    }
}

/// Runs every configuration `runs` times, interleaved (each once, then again), skipping a
/// configuration's remaining runs once it hung.
pub(crate) fn interleaved(
    configs: &[(Variant, Throughput)],
    size: usize,
    runs: usize,
) -> Vec<Series<RunStats>> {
    let mut series: Vec<Series<RunStats>> = configs.iter().map(|_| Series::default()).collect();
    for run in 0..runs {
        for ((variant, job), s) in configs.iter().zip(series.iter_mut()) {
            let job = *job;
            if s.hung {
                continue;
            }
            eprintln!(
                "  run {}/{runs}: {} T={} P={size} ({:?})",
                run + 1,
                variant.label(),
                job.tasks,
                job.rt
            );
            s.push(run_once(*variant, size, job));
            if s.hung {
                eprintln!(
                    "  {} hung at T={} P={size}; skipping its other runs",
                    variant.label(),
                    job.tasks
                );
            }
        }
    }
    series
}

/// The throughput grid on one runtime: prints its table, returns its targets.
pub(crate) fn grid(settings: &Settings, rt: Rt) -> Vec<Target> {
    let (variants, reference, compared): (Vec<Variant>, Variant, Vec<Variant>) = match rt {
        Rt::Tokio => (vec![MOMO, DEADPOOL, BB8, MOBC, FLOOR], DEADPOOL, vec![MOMO]),
        Rt::Smol => (
            vec![MOMO, MOMO_NO_TIMEOUTS, DEADPOOL_NO_TIMEOUTS, FLOOR],
            DEADPOOL_NO_TIMEOUTS,
            vec![MOMO, MOMO_NO_TIMEOUTS],
        ),
    };
    let name = match rt {
        Rt::Tokio => "Tokio",
        Rt::Smol => "smol",
    };
    let mut targets = Vec::new();
    let mut rows = Vec::new();
    for &size in &SIZES {
        for &tasks in &TASKS {
            let job = Throughput {
                tasks,
                ops: settings.ops,
                rt,
            };
            let configs: Vec<_> = variants.iter().map(|v| (*v, job)).collect();
            let series = interleaved(&configs, size, settings.runs);
            let reference_rate = variants
                .iter()
                .position(|v| *v == reference)
                .map(|i| series[i].rate())
                .unwrap_or(f64::NAN);
            for (variant, s) in variants.iter().zip(&series) {
                let ratio = s.rate() / reference_rate;
                let tail = s.p999() / s.p50();
                rows.push(format!(
                    "| {tasks} | {size} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    variant.label(),
                    fmt_rate(s.rate()),
                    fmt_rate_range(s.rate_range()),
                    fmt_ratio(ratio),
                    fmt_ns(s.p50()),
                    fmt_ns(s.p999()),
                    if s.done.is_empty() {
                        "–".to_owned()
                    } else {
                        format!("{tail:.1}")
                    },
                    fmt_ns(s.worst()),
                    s.note(),
                ));
                if !compared.contains(variant) {
                    continue;
                }
                let case = format!("{name}, {}, T={tasks} P={size}", variant.label());
                let measured = !s.done.is_empty() && !reference_rate.is_nan();
                targets.push(Target::new(
                    format!("throughput ≥ {SPEEDUP}× {}", reference.label()),
                    case.clone(),
                    format!("{ratio:.2}×"),
                    measured.then_some(ratio >= SPEEDUP),
                ));
                if tasks > size {
                    targets.push(Target::new(
                        format!("under contention p99.9 ≤ {TAIL_RATIO}× p50"),
                        case.clone(),
                        format!("{} / {} = {tail:.1}×", fmt_ns(s.p999()), fmt_ns(s.p50())),
                        (!s.done.is_empty()).then_some(tail <= TAIL_RATIO),
                    ));
                }
                targets.push(Target::new(
                    "worst checkout ≤ 20 ms in every run",
                    case,
                    fmt_ns(s.worst()),
                    (!s.done.is_empty() && s.problems.is_empty())
                        .then_some(s.worst() <= MAX_LATENCY_NS),
                ));
            }
        }
    }
    println!(
        "| T | P | pool | ops/s (median) | ops/s (slowest–fastest run) | × {} | p50 | p99.9 | p99.9/p50 | max (worst run) | failures |",
        reference.label()
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for row in rows {
        println!("{row}");
    }
    println!();
    targets
}
