//! Memory per waiting caller: N tasks blocked in `get()` on a pool whose only connection is
//! held, measured as resident memory growth in a fresh child process per measurement.

use crate::Settings;
use crate::pools::Noop;
use crate::stats::{Target, median};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Waiting tasks per measurement.
pub(crate) const WAITERS: usize = 25_000;
/// The target, bytes per waiter.
const LIMIT: f64 = 256.0;

/// What a child process measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// momopool with its defaults (a waiter arms a 30 s wait timer).
    Momo,
    /// momopool with `wait_timeout(None)` (and no other timeouts).
    MomoNoTimeouts,
    /// deadpool with timeouts, for reference.
    Deadpool,
    /// Tasks that await a `tokio::sync::Notify` that is never notified.
    Notify,
    /// Tasks that await `std::future::pending()`.
    Pending,
}

/// Every probe, in table order.
const PROBES: [Probe; 5] = [
    Probe::Momo,
    Probe::MomoNoTimeouts,
    Probe::Deadpool,
    Probe::Notify,
    Probe::Pending,
];

impl Probe {
    /// The name passed to the child process.
    fn name(self) -> &'static str {
        match self {
            Probe::Momo => "momopool",
            Probe::MomoNoTimeouts => "momopool-no-timeouts",
            Probe::Deadpool => "deadpool",
            Probe::Notify => "notify",
            Probe::Pending => "pending",
        }
    }

    /// A description for the table.
    fn describe(self) -> &'static str {
        match self {
            Probe::Momo => {
                "momopool, defaults (30 s wait timeout, watched by the pool's deadline task)"
            }
            Probe::MomoNoTimeouts => "momopool, no timeouts",
            Probe::Deadpool => "deadpool with timeouts (reference)",
            Probe::Notify => {
                "baseline: task awaiting a never-notified `tokio::sync::Notify` (a channel that never fires)"
            }
            Probe::Pending => "bare task awaiting `std::future::pending()`",
        }
    }

    /// The probe with this name.
    fn parse(name: &str) -> Option<Self> {
        PROBES.into_iter().find(|p| p.name() == name)
    }
}

/// Resident set size of this process, bytes: `/proc/self/statm` times the page size.
fn rss() -> Result<u64, String> {
    let statm = std::fs::read_to_string("/proc/self/statm").map_err(|e| e.to_string())?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("unexpected /proc/self/statm")?;
    Ok(pages * page_size()?)
}

/// The page size, from the auxiliary vector (`AT_PAGESZ`).
fn page_size() -> Result<u64, String> {
    /// The auxiliary vector key of the page size.
    const AT_PAGESZ: u64 = 6;
    let auxv = std::fs::read("/proc/self/auxv").map_err(|e| e.to_string())?;
    let words: Vec<u64> = auxv
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    words
        .chunks_exact(2)
        .find(|pair| pair[0] == AT_PAGESZ)
        .map(|pair| pair[1])
        .ok_or_else(|| "no AT_PAGESZ in /proc/self/auxv".to_owned())
}

/// Waits until `ready()` holds, polling; fails after 20 s.
async fn until(mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > Duration::from_secs(20) {
            return Err("the waiters did not all queue within 20 s".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let the last tasks finish their first poll.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

/// The child process: spawns `n` waiters of `probe` and prints
/// `before=<bytes> after=<bytes> future=<bytes>`, `future` being the size of one spawned task's
/// future.
pub(crate) fn child(probe: &str, n: usize) -> Result<(), String> {
    let probe = Probe::parse(probe).ok_or_else(|| format!("unknown probe {probe}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(crate::throughput::WORKERS)
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    let line = rt.block_on(async move {
        match probe {
            Probe::Momo | Probe::MomoNoTimeouts => {
                let mut builder = momopool::Pool::builder(Noop::default())
                    .min_size(1)
                    .max_size(1);
                if probe == Probe::MomoNoTimeouts {
                    builder = builder
                        .wait_timeout(None)
                        .create_timeout(None)
                        .recycle_timeout(None);
                }
                let pool = builder
                    .runtime(momopool_tokio::Tokio::current())
                    .build()
                    .map_err(|e| e.to_string())?;
                pool.warm_up().await.map_err(|e| e.to_string())?;
                let held = pool.get().await.map_err(|e| e.to_string())?;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let before = rss()?;
                let mut future = 0;
                for _ in 0..n {
                    let pool = pool.clone();
                    let task = async move {
                        let _conn = pool.get().await;
                    };
                    future = std::mem::size_of_val(&task);
                    drop(tokio::spawn(task));
                }
                until(|| pool.status().waiting == n).await?;
                let after = rss()?;
                drop(held);
                Ok::<_, String>(format!("before={before} after={after} future={future}"))
            }
            Probe::Deadpool => {
                let pool = deadpool::managed::Pool::<Noop>::builder(Noop::default())
                    .max_size(1)
                    .runtime(deadpool::Runtime::Tokio1)
                    .wait_timeout(Some(Duration::from_secs(30)))
                    .create_timeout(Some(Duration::from_secs(10)))
                    .recycle_timeout(Some(Duration::from_secs(5)))
                    .build()
                    .map_err(|e| e.to_string())?;
                let held = pool.get().await.map_err(|e| format!("{e:?}"))?;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let before = rss()?;
                let mut future = 0;
                for _ in 0..n {
                    let pool = pool.clone();
                    let task = async move {
                        let _conn = pool.get().await;
                    };
                    future = std::mem::size_of_val(&task);
                    drop(tokio::spawn(task));
                }
                until(|| pool.status().waiting == n).await?;
                let after = rss()?;
                drop(held);
                Ok(format!("before={before} after={after} future={future}"))
            }
            Probe::Notify | Probe::Pending => {
                let notify = Arc::new(tokio::sync::Notify::new());
                let parked = Arc::new(AtomicUsize::new(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
                let before = rss()?;
                let mut future = 0;
                for _ in 0..n {
                    let parked = Arc::clone(&parked);
                    if probe == Probe::Notify {
                        let notify = Arc::clone(&notify);
                        let task = async move {
                            let notified = notify.notified();
                            let mut notified = std::pin::pin!(notified);
                            notified.as_mut().enable();
                            parked.fetch_add(1, Ordering::Relaxed);
                            notified.await;
                        };
                        future = std::mem::size_of_val(&task);
                        drop(tokio::spawn(task));
                    } else {
                        let task = async move {
                            parked.fetch_add(1, Ordering::Relaxed);
                            std::future::pending::<()>().await;
                        };
                        future = std::mem::size_of_val(&task);
                        drop(tokio::spawn(task));
                    }
                }
                until(|| parked.load(Ordering::Relaxed) == n).await?;
                let after = rss()?;
                Ok(format!("before={before} after={after} future={future}"))
            }
        }
    })?;
    println!("{line}");
    // Exit without unwinding 25 000 tasks; the measurement is done.
    std::process::exit(0);
}

/// One child measurement: (bytes per waiter, future size).
fn measure(probe: Probe, n: usize) -> Result<(f64, u64), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(["--memory-child", probe.name(), &n.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(_) => break,
            None if started.elapsed() > crate::isolate::RUN_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("hung: the child did not finish within 60 s".to_owned());
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |key: &str| -> Result<u64, String> {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .ok_or_else(|| format!("child printed no {key}: {text:?} ({})", output.status))
    };
    let before = field("before")?;
    let after = field("after")?;
    Ok(((after as f64 - before as f64) / n as f64, field("future")?))
}

/// Runs the section: prints its table, returns its targets.
pub(crate) fn section(settings: &Settings) -> Vec<Target> {
    let n = WAITERS;
    let mut per_waiter: Vec<Vec<f64>> = PROBES.iter().map(|_| Vec::new()).collect();
    let mut sizes = vec![0u64; PROBES.len()];
    let mut problems: Vec<String> = PROBES.iter().map(|_| String::new()).collect();
    for run in 0..settings.memory_runs {
        for (i, probe) in PROBES.iter().enumerate() {
            eprintln!(
                "  run {}/{}: memory {}",
                run + 1,
                settings.memory_runs,
                probe.name()
            );
            match measure(*probe, n) {
                Ok((bytes, size)) => {
                    per_waiter[i].push(bytes);
                    sizes[i] = size;
                }
                Err(e) => problems[i] = e,
            }
        }
    }
    let values: Vec<f64> = per_waiter.iter().map(|v| median(v)).collect();
    println!(
        "| waiters ({n} tasks, each in a fresh process) | RSS growth per waiter (median of {}) | size of the spawned future | failures |",
        settings.memory_runs
    );
    println!("|---|---:|---:|---|");
    for (i, probe) in PROBES.iter().enumerate() {
        println!(
            "| {} | {:.0} B | {} B | {} |",
            probe.describe(),
            values[i],
            sizes[i],
            problems[i]
        );
    }
    println!();
    let baseline = values[PROBES.iter().position(|p| *p == Probe::Notify).unwrap_or(0)];
    let mut targets = Vec::new();
    for probe in [Probe::Momo, Probe::MomoNoTimeouts] {
        let i = PROBES.iter().position(|p| *p == probe).unwrap_or(0);
        let own = values[i] - baseline;
        println!(
            "{}: {:.0} B per waiter including the task, {own:.0} B above the Notify baseline.",
            probe.describe(),
            values[i]
        );
        targets.push(Target::new(
            format!("memory per waiter ≤ {LIMIT} B (task included)"),
            probe.describe(),
            format!("{:.0} B", values[i]),
            (!values[i].is_nan()).then_some(values[i] <= LIMIT),
        ));
        targets.push(Target::new(
            format!("memory per waiter ≤ {LIMIT} B (pool's own: minus the Notify baseline)"),
            probe.describe(),
            format!("{own:.0} B"),
            (!own.is_nan()).then_some(own <= LIMIT),
        ));
    }
    println!();
    targets
}
