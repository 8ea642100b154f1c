//! One measurement: T tasks loop `SELECT 1` through one pool (or the raw clients) for a fixed
//! time, after a warm-up; and the interleaved repetitions of a set of configurations.

use crate::clients::{Bench, Variant};
use crate::cpu::{Sample, Usage};
use crate::harness::{Outcome, on_tokio};
use crate::stats::{RunStats, Series};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where and for how long to run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Connection string (`key=value` form) every variant uses.
    pub(crate) dsn: Arc<str>,
    /// The postmaster, for CPU accounting.
    pub(crate) postmaster: Option<u32>,
    /// Untimed loop before the measurement.
    pub(crate) warm: Duration,
    /// The measured loop.
    pub(crate) measure: Duration,
    /// Repeat a run when other processes used more than this share of the machine in it.
    pub(crate) max_other_load: f64,
    /// How many times a run is repeated at most because of other load.
    pub(crate) load_retries: usize,
}

/// One run's results.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PgRun {
    /// Queries, wall time and latencies.
    pub(crate) stats: RunStats,
    /// The task with the fewest queries, as a share of the mean per task.
    pub(crate) fairness: f64,
    /// CPU time during the measured loop.
    pub(crate) cpu: Usage,
    /// momopool's checks (validation round trips) during the measured loop.
    pub(crate) checks: Option<u64>,
}

impl PgRun {
    /// CPU time of this benchmark per query, ns.
    pub(crate) fn client_ns(&self) -> f64 {
        self.cpu.own * 1e9 / self.stats.ops.max(1) as f64
    }

    /// CPU time of the server per query, ns.
    pub(crate) fn server_ns(&self) -> f64 {
        self.cpu.server * 1e9 / self.stats.ops.max(1) as f64
    }
}

/// What a worker task hands back: its latencies (ns) and when it finished.
type Worker = (Vec<u64>, Instant);

/// One run of `variant` with `size` connections and `tasks` tasks, on a fresh runtime.
pub(crate) fn run_once(variant: Variant, size: usize, tasks: usize, plan: &Plan) -> Outcome<PgRun> {
    let plan = plan.clone();
    on_tokio(move || async move {
        let bench = Bench::build(variant, size, &plan.dsn).await?;
        let started = Instant::now();
        let warm_end = started + plan.warm;
        let end = warm_end + plan.measure;
        // Room for about 400 k queries per second, so the vectors rarely grow mid-run.
        let capacity = ((plan.measure.as_secs_f64() * 400_000.0) as usize / tasks).max(1024);
        let mut handles = Vec::with_capacity(tasks);
        for task in 0..tasks {
            let bench = bench.clone();
            handles.push(tokio::spawn(worker(bench, task, warm_end, end, capacity)));
        }
        tokio::time::sleep_until(warm_end.into()).await;
        let before = Sample::now(plan.postmaster);
        let checks_before = bench.momo_checks();
        let mut results: Vec<Worker> = Vec::with_capacity(tasks);
        let mut failure = None;
        for handle in handles {
            match handle.await {
                Ok(Ok(done)) => results.push(done),
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(e) => failure = failure.or(Some(e.to_string())),
            }
        }
        let after = Sample::now(plan.postmaster);
        let checks = bench
            .momo_checks()
            .zip(checks_before)
            .map(|(a, b)| a.saturating_sub(b));
        bench.close();
        drop(bench);
        if let Some(e) = failure {
            return Err(e);
        }
        let finished = results.iter().map(|(_, t)| *t).max().unwrap_or(warm_end);
        let counts: Vec<usize> = results.iter().map(|(l, _)| l.len()).collect();
        let mean = counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64;
        let fewest = counts.iter().copied().min().unwrap_or(0) as f64;
        let mut latencies: Vec<u64> = results.into_iter().flat_map(|(l, _)| l).collect();
        let cpu = match (before, after) {
            (Some(b), Some(a)) => b.until(a),
            _ => Usage::default(),
        };
        Ok(PgRun {
            stats: RunStats::new(&mut latencies, finished.saturating_duration_since(warm_end)),
            fairness: fewest / mean.max(1e-9),
            cpu,
            checks,
        })
    })
}

/// One task: `SELECT 1` until `warm_end` unrecorded, then until `end` with each latency
/// recorded (checkout and query together).
async fn worker(
    bench: Bench,
    task: usize,
    warm_end: Instant,
    end: Instant,
    capacity: usize,
) -> Result<Worker, String> {
    while Instant::now() < warm_end {
        bench.select1(task).await?;
    }
    let mut latencies = Vec::with_capacity(capacity);
    loop {
        let asked = Instant::now();
        if asked >= end {
            break;
        }
        bench.select1(task).await?;
        latencies.push(asked.elapsed().as_nanos() as u64);
    }
    Ok((latencies, Instant::now()))
}

/// The runs of one configuration, with how many were repeated because of other load.
#[derive(Debug, Default)]
pub(crate) struct Measured {
    /// The runs kept.
    pub(crate) series: Series<PgRun>,
    /// Runs thrown away and repeated because other processes used the machine meanwhile.
    pub(crate) repeated: usize,
    /// Kept runs that still had other load (the retries ran out).
    pub(crate) loaded: usize,
}

impl Measured {
    /// The kept runs' core statistics, for the shared medians and formatting.
    pub(crate) fn stats(&self) -> Series<RunStats> {
        Series {
            done: self.series.done.iter().map(|r| r.stats).collect(),
            problems: self.series.problems.clone(),
            hung: self.series.hung,
        }
    }

    /// The median of `f` over the kept runs.
    pub(crate) fn median_of(&self, f: impl Fn(&PgRun) -> f64) -> f64 {
        crate::stats::median(&self.series.done.iter().map(f).collect::<Vec<_>>())
    }
}

/// Runs every configuration `runs` times, interleaved (each once, then again), repeating a
/// run disturbed by other load and skipping a configuration's remaining runs once it hung.
pub(crate) fn interleaved(
    configs: &[(Variant, usize, usize)],
    runs: usize,
    plan: &Plan,
) -> Vec<Measured> {
    let mut measured: Vec<Measured> = configs.iter().map(|_| Measured::default()).collect();
    for run in 0..runs {
        for (&(variant, size, tasks), m) in configs.iter().zip(measured.iter_mut()) {
            if m.series.hung {
                continue;
            }
            let mut attempt = 0;
            let outcome = loop {
                eprintln!(
                    "  run {}/{runs}: {} P={size} T={tasks}{}",
                    run + 1,
                    variant.label(),
                    if attempt > 0 { " (again)" } else { "" }
                );
                let outcome = run_once(variant, size, tasks, plan);
                // Let the server reap the backends of the run before the next one starts.
                std::thread::sleep(Duration::from_millis(50));
                let share = match &outcome {
                    Outcome::Done(r) => r.cpu.others_share(),
                    _ => 0.0,
                };
                if share <= plan.max_other_load {
                    break outcome;
                }
                if attempt >= plan.load_retries {
                    eprintln!(
                        "  other processes used {:.0} % of the machine; keeping the run",
                        share * 100.0
                    );
                    m.loaded += 1;
                    break outcome;
                }
                eprintln!(
                    "  other processes used {:.0} % of the machine; repeating the run once it \
                     is quiet",
                    share * 100.0
                );
                attempt += 1;
                m.repeated += 1;
                crate::wait_for_quiet(plan.postmaster);
            };
            m.series.push(outcome);
            if m.series.hung {
                eprintln!(
                    "  {} hung at P={size} T={tasks}; skipping its other runs",
                    variant.label()
                );
            }
        }
    }
    measured
}
