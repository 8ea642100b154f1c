//! `pool-bench`: checkout benchmarks of momopool against deadpool, bb8 and mobc.
//!
//! Every pool gets a no-op manager (connections are made instantly, checks succeed at once), so
//! the numbers are the pools' own overhead. Pools are measured in the same process, interleaved
//! (each pool once, then again), and each figure is a median over the runs. Results are printed
//! as Markdown tables on stdout; progress goes to stderr.
//!
//! ```text
//! cargo run --release -p momopool-benches --bin pool-bench -- [--quick] [--only SECTION[,SECTION...]]
//! ```
//!
//! Sections: `uncontended`, `throughput` (Tokio), `smol`, `scaling`, `memory`. The smol section
//! runs in a child process with `SMOL_THREADS=2` unless that is already set; each memory
//! measurement runs in a fresh child process.

// Shared with pg-bench, which uses parts of it this binary does not.
#[allow(dead_code)]
mod cpu;
mod floor;
mod harness;
mod isolate;
mod memory;
mod pools;
mod scaling;
mod stats;
mod throughput;
mod uncontended;

use stats::Target;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// How much to measure.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `--quick` was given.
    pub(crate) quick: bool,
    /// Repetitions of each configuration (the median is reported).
    pub(crate) runs: usize,
    /// Checkouts per throughput run.
    pub(crate) ops: usize,
    /// Target duration of one uncontended timed loop.
    pub(crate) uncontended_time: Duration,
    /// Checkouts per run of the 25 000-waiter check.
    pub(crate) waiter_ops: usize,
    /// Repetitions of each memory measurement.
    pub(crate) memory_runs: usize,
}

impl Settings {
    /// The default settings, or the `--quick` ones.
    fn new(quick: bool) -> Self {
        if quick {
            Settings {
                quick,
                runs: 3,
                ops: 50_000,
                uncontended_time: Duration::from_millis(40),
                waiter_ops: 100_000,
                memory_runs: 1,
            }
        } else {
            Settings {
                quick,
                runs: 5,
                ops: 200_000,
                uncontended_time: Duration::from_millis(150),
                waiter_ops: 500_000,
                memory_runs: 3,
            }
        }
    }
}

/// The sections, in the order they run.
const SECTIONS: [&str; 5] = ["uncontended", "throughput", "smol", "scaling", "memory"];

/// The command line.
const USAGE: &str =
    "usage: pool-bench [--quick] [--only uncontended|throughput|smol|scaling|memory[,...]]";

/// Parses the command line and runs the chosen sections (or a child-process role).
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--memory-child") {
        let probe = args.get(1).map(String::as_str).unwrap_or("");
        let n = args
            .get(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(memory::WAITERS);
        return match memory::child(probe, n) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("memory child: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut quick = false;
    let mut smol_child = false;
    let mut only: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--smol-child" => smol_child = true,
            "--only" => match it.next() {
                Some(list) => only.extend(list.split(',').map(str::to_owned)),
                None => {
                    eprintln!("{USAGE}");
                    return ExitCode::FAILURE;
                }
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other}\n{USAGE}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(bad) = only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
        eprintln!("unknown section {bad}\n{USAGE}");
        return ExitCode::FAILURE;
    }
    let settings = Settings::new(quick);
    if smol_child {
        for target in smol_section(&settings) {
            println!("{}", target.to_line());
        }
        return ExitCode::SUCCESS;
    }
    let wanted = |s: &str| only.is_empty() || only.iter().any(|o| o == s);

    let started = Instant::now();
    let cpu_before = cpu::Sample::now(None);
    header(&settings);
    let mut targets = Vec::new();
    if wanted("uncontended") {
        println!("## 1. Uncontended: one task, get + drop in a tight loop");
        println!();
        println!(
            "Tokio current-thread runtime, pool of 4 warmed connections, one task; the loop \
             count is calibrated to about {} ms per run; median of {} interleaved runs.",
            settings.uncontended_time.as_millis(),
            settings.runs
        );
        println!();
        targets.extend(uncontended::section(&settings));
    }
    if wanted("throughput") {
        println!(
            "## 2. Throughput on Tokio ({} worker threads)",
            throughput::WORKERS
        );
        println!();
        throughput_intro(&settings);
        println!(
            "Configured timeouts: momopool defaults (wait 30 s, create 10 s, recycle 5 s); deadpool \
             `Timeouts` of the same values on `Runtime::Tokio1`; bb8 defaults (`connection_timeout` \
             30 s, `test_on_check_out`); mobc defaults (`get_timeout` 30 s, health check on \
             checkout), `max_idle` = P."
        );
        println!();
        targets.extend(throughput::grid(&settings, pools::Rt::Tokio));
    }
    if wanted("smol") {
        println!("## 3. Throughput on smol");
        println!();
        targets.extend(smol_from_child(&settings));
    }
    if wanted("scaling") {
        println!("## 4. Scaling (momopool)");
        println!();
        targets.extend(scaling::section(&settings));
    }
    if wanted("memory") {
        println!("## 5. Memory per waiter (momopool)");
        println!();
        println!(
            "A pool of one connection, held by the measuring task; {} tasks are spawned on a \
             Tokio runtime ({} workers) and each calls `get()` and blocks. Once \
             `status().waiting` equals the task count, resident memory (`/proc/self/statm`) is \
             read again; the growth divided by the task count is the cost per waiter, the task \
             itself included. The baselines spawn the same number of tasks that wait on \
             something that never fires. No custom allocator is used, so heap growth is not \
             measured separately.",
            memory::WAITERS,
            throughput::WORKERS
        );
        println!();
        targets.extend(memory::section(&settings));
    }
    stats::print_summary(&targets);
    let wall = started.elapsed().as_secs_f64();
    println!("Total benchmark time: {wall:.0} s.");
    if let (Some(before), Some(after)) = (cpu_before, cpu::Sample::now(None)) {
        let usage = before.until(after);
        let (own, others) = (usage.own, usage.others + usage.kernel + usage.steal);
        let available = usage.wall * cpu::cores() as f64;
        println!();
        println!(
            "CPU time meanwhile: this benchmark {own:.0} s; everything else on the machine \
             {others:.0} s ({:.0} % of the {:.0} core-seconds available). Other load on this \
             2-core machine slows the pools it overlaps with.",
            100.0 * others / available.max(1e-9),
            available
        );
    }
    ExitCode::SUCCESS
}

/// The machine and the settings.
fn header(settings: &Settings) {
    let cpu = cpu::cpu_name();
    let cores = cpu::cores();
    println!("# momopool checkout benchmark");
    println!();
    println!(
        "Machine: {cores} cores available, CPU \"{cpu}\". Mode: {} ({} runs per configuration, \
         median reported). No-op managers: every pool creates a small struct instantly and its \
         check/recycle succeeds at once.",
        if settings.quick { "--quick" } else { "default" },
        settings.runs
    );
    println!();
}

/// What the throughput tables show.
fn throughput_intro(settings: &Settings) {
    println!(
        "T tasks share a pool of P connections (warmed to P idle). Each task loops: get, hold \
         the connection across one `yield_now().await`, drop; {} checkouts per run in total, \
         split evenly over the tasks. ops/s is checkouts divided by the wall time from the first \
         spawn to the last task's end (median of {} interleaved runs). Latency is the time from \
         calling `get` to holding the connection, recorded per checkout into a pre-allocated \
         vector per task; p50 and p99.9 are medians over the runs, max is the worst single \
         checkout over all runs. p99.9 ≤ 3× p50 is only a target where T > P (contention).",
        settings.ops, settings.runs
    );
    println!();
}

/// The smol grid, run in this process: prints its tables and returns its targets.
fn smol_section(settings: &Settings) -> Vec<Target> {
    println!(
        "`smol::block_on` on the main thread, worker tasks spawned on smol's global executor \
         with `SMOL_THREADS={}` (momopool's `Smol` runtime spawns there too). bb8 and mobc need \
         Tokio and are not run here. deadpool runs without a runtime and so without timeouts; \
         momopool is shown with its default timeouts and with none.",
        std::env::var("SMOL_THREADS").unwrap_or_else(|_| "unset".to_owned())
    );
    println!();
    throughput_intro(settings);
    throughput::grid(settings, pools::Rt::Smol)
}

/// Runs the smol grid with `SMOL_THREADS=2`: in this process if already set, otherwise in a
/// child process of this binary (the variable is read when smol's executor starts).
fn smol_from_child(settings: &Settings) -> Vec<Target> {
    let threads = throughput::WORKERS.to_string();
    if std::env::var("SMOL_THREADS").ok().as_deref() == Some(threads.as_str()) {
        return smol_section(settings);
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            println!("smol section not run: {e}");
            println!();
            return Vec::new();
        }
    };
    let mut cmd = Command::new(exe);
    cmd.arg("--smol-child")
        .env("SMOL_THREADS", &threads)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if settings.quick {
        cmd.arg("--quick");
    }
    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) => {
            println!("smol section not run: {e}");
            println!();
            return Vec::new();
        }
    };
    let mut targets = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        match Target::from_line(line) {
            Some(target) => targets.push(target),
            None => println!("{line}"),
        }
    }
    if !output.status.success() {
        println!("The smol child process ended with {}.", output.status);
        println!();
    }
    targets
}
