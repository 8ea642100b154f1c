//! `pg-bench`: `SELECT 1` throughput and latency through momopool-pg (exclusive and shared
//! mode) against deadpool-postgres, bb8-postgres and raw tokio-postgres clients (round-robin,
//! no pool), all in the same run on a throwaway PostgreSQL cluster; then pgbench with the same
//! client counts, as the server's ceiling on this machine; then the client's instructions per
//! statement, counted by callgrind.
//!
//! Configurations are measured interleaved (each once, then again) and each figure is a median
//! over the runs. A run during which other processes used more than a few per cent of the
//! machine is thrown away and repeated. Results are printed as Markdown on stdout; progress
//! goes to stderr.
//!
//! ```text
//! cargo run --release -p momopool-benches --bin pg-bench -- [--quick] [--unix] [--only pools|pgbench|instructions[,...]]
//! ```

mod clients;
// Shared with pool-bench (`src/cpu.rs`, `src/isolate.rs`).
#[path = "../cpu.rs"]
mod cpu;
mod harness;
mod instructions;
#[path = "../isolate.rs"]
mod isolate;
mod pgbench;
mod run;
// Shared with pool-bench (`src/stats.rs`), which uses parts pg-bench does not.
#[allow(dead_code)]
#[path = "../stats.rs"]
mod stats;

use clients::{MOMO_SHARED, Variant};
use harness::WORKERS;
use momopool_pg::throwaway::Cluster;
use pgbench::{Pgbench, PgbenchRun, Script};
use run::{Measured, Plan};
use stats::{Series, Target, fmt_ns, fmt_rate, fmt_rate_range, fmt_ratio};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pool sizes (connections) of the grid, and pgbench's client counts.
const SIZES: [usize; 2] = [8, 16];
/// Task counts of the grid.
const TASKS: [usize; 3] = [8, 64, 256];
/// The server's `max_connections`: far above the 16 connections a run opens, so that
/// backends of the previous run still exiting never make a connect fail.
const MAX_CONNECTIONS: &str = "300";
/// A run in which other processes used more than this share of the machine is repeated.
const MAX_OTHER_LOAD: f64 = 0.05;
/// How many times at most a run is repeated because of other load (each time once the
/// machine is quiet again, or after [`QUIET_WAIT`]).
const LOAD_RETRIES: usize = 3;
/// How long to wait at the start for the machine to become quiet.
const QUIET_WAIT: Duration = Duration::from_secs(300);

/// momopool-pg exclusive mode's throughput target relative to deadpool-postgres.
const EXCLUSIVE_VS_DEADPOOL: f64 = 1.0;
/// Shared mode's throughput target relative to the raw clients.
const SHARED_VS_RAW: f64 = 0.9;
/// Shared mode's throughput target relative to deadpool-postgres at T = 256.
const SHARED_VS_DEADPOOL: f64 = 2.0;

/// How undisturbed the runs were.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    /// Runs thrown away and repeated because other processes used the machine meanwhile.
    repeated: usize,
    /// Kept runs that still had such load (the retries ran out).
    loaded: usize,
    /// CPU-seconds other processes used during the measured part of the kept runs.
    others: f64,
    /// Core-seconds available during the measured part of the kept runs.
    capacity: f64,
}

impl Tally {
    /// Adds the runs of one configuration.
    fn add_runs(&mut self, m: &Measured) {
        self.repeated += m.repeated;
        self.loaded += m.loaded;
        for r in &m.series.done {
            self.add_usage(&r.cpu);
        }
    }

    /// Adds one kept run's CPU usage.
    fn add_usage(&mut self, usage: &cpu::Usage) {
        self.others += usage.others;
        self.capacity += usage.wall * cpu::cores() as f64;
    }

    /// Adds another tally.
    fn add(&mut self, other: Tally) {
        self.repeated += other.repeated;
        self.loaded += other.loaded;
        self.others += other.others;
        self.capacity += other.capacity;
    }
}

/// How much to measure.
#[derive(Debug, Clone)]
struct Settings {
    /// `--quick` was given.
    quick: bool,
    /// Repetitions of each pool configuration (the median is reported).
    runs: usize,
    /// Untimed loop before each measurement.
    warm: Duration,
    /// The measured loop.
    measure: Duration,
    /// Repetitions of each pgbench configuration.
    pgbench_runs: usize,
    /// pgbench's `-T`.
    pgbench_secs: u64,
    /// Connect over the unix socket instead of TCP.
    unix: bool,
    /// Extra shared-mode variants with these `max_in_flight` values.
    in_flight: Vec<usize>,
    /// Pool sizes (and pgbench client counts) to run.
    sizes: Vec<usize>,
    /// Task counts to run.
    tasks: Vec<usize>,
    /// Only the variants with these keys (`Variant::key`), when given.
    keep: Option<Vec<String>>,
    /// `--sizes` was given (the instruction counts then use those sizes, not P = 8 only).
    sizes_given: bool,
    /// `--tasks` was given (the instruction counts then use those, not T = 8 and 64).
    tasks_given: bool,
    /// Statements of the shorter counted run (the longer one runs twice as many).
    statements: usize,
}

impl Settings {
    /// The default settings, or the `--quick` ones.
    fn new(quick: bool) -> Self {
        if quick {
            Settings {
                quick,
                runs: 3,
                warm: Duration::from_millis(100),
                measure: Duration::from_millis(500),
                pgbench_runs: 1,
                pgbench_secs: 2,
                unix: false,
                in_flight: Vec::new(),
                sizes: SIZES.to_vec(),
                tasks: TASKS.to_vec(),
                keep: None,
                sizes_given: false,
                tasks_given: false,
                statements: 5_000,
            }
        } else {
            Settings {
                quick,
                runs: 5,
                warm: Duration::from_millis(300),
                measure: Duration::from_secs(2),
                pgbench_runs: 3,
                pgbench_secs: 5,
                unix: false,
                in_flight: Vec::new(),
                sizes: SIZES.to_vec(),
                tasks: TASKS.to_vec(),
                keep: None,
                sizes_given: false,
                tasks_given: false,
                statements: 20_000,
            }
        }
    }
}

/// The sections, in the order they run; the last runs only when asked for by name.
const SECTIONS: [&str; 4] = ["pools", "pgbench", "instructions", "diagnose"];

/// The command line.
const USAGE: &str = "usage: pg-bench [--quick] [--unix] \
                     [--only pools|pgbench|instructions|diagnose[,...]] \
                     [--runs N] [--secs S] [--sizes P[,P...]] [--tasks T[,T...]] \
                     [--variants KEY[,KEY...]] [--in-flight N[,N...]] [--statements N]";

/// Parses the command line, starts the cluster and runs the chosen sections.
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(instructions::CHILD_FLAG) {
        return instructions::child(&args[1..], &counted_variants());
    }
    let quick = args.iter().any(|a| a == "--quick");
    let mut settings = Settings::new(quick);
    let mut only: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next().cloned().ok_or_else(|| {
                eprintln!("{arg} needs a value\n{USAGE}");
                ExitCode::FAILURE
            })
        };
        match arg.as_str() {
            "--quick" => {}
            "--unix" => settings.unix = true,
            "--only" => match value() {
                Ok(list) => only.extend(list.split(',').map(str::to_owned)),
                Err(code) => return code,
            },
            "--runs" => match value().map(|v| v.parse()) {
                Ok(Ok(n)) if n > 0 => settings.runs = n,
                _ => return usage_error(arg),
            },
            "--secs" => match value().map(|v| v.parse::<f64>()) {
                Ok(Ok(s)) if s > 0.0 && s < 30.0 => settings.measure = Duration::from_secs_f64(s),
                _ => return usage_error(arg),
            },
            "--in-flight" | "--sizes" | "--tasks" => match value().map(|v| {
                v.split(',')
                    .map(str::parse)
                    .collect::<Result<Vec<usize>, _>>()
            }) {
                Ok(Ok(list)) if list.iter().all(|&n| n > 0) && !list.is_empty() => {
                    match arg.as_str() {
                        "--in-flight" => settings.in_flight = list,
                        "--sizes" => {
                            settings.sizes = list;
                            settings.sizes_given = true;
                        }
                        _ => {
                            settings.tasks = list;
                            settings.tasks_given = true;
                        }
                    }
                }
                _ => return usage_error(arg),
            },
            "--statements" => match value().map(|v| v.parse()) {
                Ok(Ok(n)) if n > 0 => settings.statements = n,
                _ => return usage_error(arg),
            },
            "--variants" => match value() {
                Ok(list) => settings.keep = Some(list.split(',').map(str::to_owned).collect()),
                Err(code) => return code,
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
    let wanted = |s: &str| (only.is_empty() && s != "diagnose") || only.iter().any(|o| o == s);

    eprintln!("starting a throwaway PostgreSQL cluster");
    let cluster = match Cluster::builder()
        .setting("max_connections", MAX_CONNECTIONS)
        .start()
    {
        Ok(cluster) => cluster,
        Err(e) => {
            eprintln!("cannot start PostgreSQL: {e}");
            return ExitCode::FAILURE;
        }
    };
    let postmaster = cluster.postmaster_pid();
    let host = if settings.unix {
        cluster.socket_dir().to_string_lossy().into_owned()
    } else {
        cluster.host().to_owned()
    };
    let dsn: Arc<str> = format!(
        "host={host} port={} user={} dbname=postgres",
        cluster.port(),
        cluster.superuser()
    )
    .into();

    let waited = wait_for_quiet(postmaster);
    let started = Instant::now();
    let before = cpu::Sample::now(postmaster);
    header(&settings, &cluster, waited);
    let plan = Plan {
        dsn,
        postmaster,
        warm: settings.warm,
        measure: settings.measure,
        max_other_load: MAX_OTHER_LOAD,
        load_retries: LOAD_RETRIES,
    };
    let mut targets = Vec::new();
    let mut tally = Tally::default();
    if wanted("pools") {
        let (t, section) = pools_section(&settings, &plan);
        targets.extend(t);
        tally.add(section);
    }
    if wanted("pgbench") {
        tally.add(pgbench_section(&settings, &cluster, &host, postmaster));
    }
    if wanted("instructions") {
        instructions_section(&settings, &plan.dsn);
    }
    if wanted("diagnose") {
        tally.add(diagnose_section(&settings, &plan));
    }
    stats::print_summary(&targets);
    let wall = started.elapsed().as_secs_f64();
    println!("Total benchmark time: {wall:.0} s.");
    println!();
    if let (Some(before), Some(after)) = (before, cpu::Sample::now(postmaster)) {
        let usage = before.until(after);
        println!(
            "CPU time meanwhile (waits for quiet included): this benchmark (pgbench included) \
             {:.0} s, the PostgreSQL server {:.0} s, kernel threads {:.0} s, every other process \
             {:.0} s, of the {:.0} core-seconds available; stolen by the hypervisor {:.1} s.",
            usage.own,
            usage.server,
            usage.kernel,
            usage.others,
            usage.wall * cpu::cores() as f64,
            usage.steal,
        );
        println!();
    }
    println!(
        "During the measured part of the runs reported above, other processes used {:.1} \
         CPU-seconds, {:.2} % of the {:.0} core-seconds available. {} runs were thrown away and \
         repeated because other processes used more than {:.0} % of the machine during them; \
         {} runs kept such load after {LOAD_RETRIES} repetitions.",
        tally.others,
        100.0 * tally.others / tally.capacity.max(1e-9),
        tally.capacity,
        tally.repeated,
        MAX_OTHER_LOAD * 100.0,
        tally.loaded,
    );
    drop(cluster);
    ExitCode::SUCCESS
}

/// Reports a bad option value.
fn usage_error(arg: &str) -> ExitCode {
    eprintln!("bad value for {arg}\n{USAGE}");
    ExitCode::FAILURE
}

/// Waits (up to [`QUIET_WAIT`]) until other processes use at most [`MAX_OTHER_LOAD`] of the
/// machine over two seconds; returns how long that took, or `None` if it never happened.
pub(crate) fn wait_for_quiet(postmaster: Option<u32>) -> Option<Duration> {
    let started = Instant::now();
    loop {
        let before = cpu::Sample::now(postmaster)?;
        std::thread::sleep(Duration::from_secs(2));
        let share = before.until(cpu::Sample::now(postmaster)?).others_share();
        if share <= MAX_OTHER_LOAD {
            return Some(started.elapsed());
        }
        if started.elapsed() >= QUIET_WAIT {
            eprintln!("the machine did not become quiet; measuring anyway");
            return None;
        }
        eprintln!(
            "other processes use {:.0} % of the machine; waiting",
            share * 100.0
        );
    }
}

/// The machine, the server and the settings.
fn header(settings: &Settings, cluster: &Cluster, waited: Option<Duration>) {
    let cpu_name = cpu::cpu_name();
    let version = cluster
        .psql("SHOW server_version")
        .unwrap_or_else(|e| format!("unknown ({e})"));
    println!("# momopool-pg SELECT 1 benchmark");
    println!();
    println!(
        "Machine: {} cores available, CPU \"{cpu_name}\"; client and server share them. \
         Mode: {} ({} runs per pool configuration, {} s measured after {} ms of warm-up; \
         pgbench {} × {} s; medians reported).",
        cpu::cores(),
        if settings.quick { "--quick" } else { "default" },
        settings.runs,
        settings.measure.as_secs_f64(),
        settings.warm.as_millis(),
        settings.pgbench_runs,
        settings.pgbench_secs,
    );
    println!();
    println!(
        "Server: PostgreSQL {version}, a throwaway cluster (`momopool_pg::throwaway`: fsync, \
         synchronous_commit and full_page_writes off, shared_buffers 32MB, max_connections \
         {MAX_CONNECTIONS}), reached over {} as the `postgres` role (trust).",
        if settings.unix {
            "its unix socket"
        } else {
            "TCP on 127.0.0.1"
        }
    );
    println!();
    match waited {
        Some(w) if w > Duration::from_secs(3) => println!(
            "The benchmark waited {:.0} s for other processes to quieten down before starting.",
            w.as_secs_f64()
        ),
        Some(_) => {}
        None => println!(
            "Other processes kept using more than {:.0} % of the machine for {} s before the \
             start; measured anyway.",
            MAX_OTHER_LOAD * 100.0,
            QUIET_WAIT.as_secs()
        ),
    }
    if waited.is_none_or(|w| w > Duration::from_secs(3)) {
        println!();
    }
}

/// The pools momopool-pg is compared with, and the raw clients.
const PEERS: [Variant; 4] = [
    Variant::Deadpool,
    Variant::Bb8 {
        test_on_check_out: true,
    },
    Variant::Bb8 {
        test_on_check_out: false,
    },
    Variant::Raw,
];

/// The variants of the grid, in the order they run.
fn variants(settings: &Settings) -> Vec<Variant> {
    let mut list = vec![Variant::Momo, MOMO_SHARED];
    list.extend(
        settings
            .in_flight
            .iter()
            .map(|&max_in_flight| Variant::MomoShared { max_in_flight }),
    );
    list.extend(PEERS);
    keep(settings, list)
}

/// The variants `--variants` keeps (all without it).
fn keep(settings: &Settings, list: Vec<Variant>) -> Vec<Variant> {
    match &settings.keep {
        Some(keys) => list
            .into_iter()
            .filter(|v| keys.contains(&v.key()))
            .collect(),
        None => list,
    }
}

/// Section 1: every variant at every (P, T). Returns the targets and how undisturbed the runs
/// were.
fn pools_section(settings: &Settings, plan: &Plan) -> (Vec<Target>, Tally) {
    println!("## 1. SELECT 1 through each pool, and through raw clients");
    println!();
    println!(
        "A Tokio multi-thread runtime with {WORKERS} workers (fresh for every run) on this \
         {}-core machine, which the PostgreSQL server shares. Each pool is built with P \
         connections and warmed: all P are open and have run `SELECT 1` once, so the \
         statement is prepared on each. Then T tasks loop: one `SELECT 1`, checkout included \
         (momopool-pg: `PgPool::execute`; deadpool-postgres: `get`, `prepare_cached`, \
         `query`; bb8-postgres: `get`, `query` with the statement its manager prepared when \
         connecting; raw: `query` on the next of P `tokio_postgres::Client`s, round-robin, \
         each with the statement prepared once), untimed for {} ms, then for {} s with every \
         query's latency recorded. qps = queries ÷ wall time of the measured loop; p50, p99.9 \
         and the CPU columns are medians over {} interleaved runs; max is the single slowest \
         query of all runs; \"fewest ÷ mean\" is the task with the fewest queries relative to \
         the mean per task (1.00 = perfectly even).",
        cpu::cores(),
        settings.warm.as_millis(),
        settings.measure.as_secs_f64(),
        settings.runs
    );
    println!();
    println!(
        "Settings: momopool-pg with its defaults (statement cache 256, `Recycling::Verified`, \
         validation only of connections idle over 500 ms, wait timeout 30 s), `min_size` = \
         `max_size` = P; shared mode `SharedMode {{ connections: P, max_in_flight: 32, \
         stall_after: 20 ms }}` (the defaults but for `connections`){}. deadpool-postgres 0.14 \
         `RecyclingMethod::Fast` (its default), `max_size` P, wait 30 s, create 10 s, recycle \
         5 s on `Runtime::Tokio1`. bb8-postgres 0.9, `max_size` = `min_idle` = P, \
         `connection_timeout` 30 s, with its default `test_on_check_out` (an empty query \
         before every checkout) and without it.",
        if settings.in_flight.is_empty() {
            String::new()
        } else {
            format!(
                ", and the same with `max_in_flight` {}",
                settings
                    .in_flight
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    println!();
    let variants = variants(settings);
    let mut targets = Vec::new();
    let mut rows = Vec::new();
    let mut tally = Tally::default();
    for &size in &settings.sizes {
        for &tasks in &settings.tasks {
            let configs: Vec<_> = variants.iter().map(|&v| (v, size, tasks)).collect();
            let measured = run::interleaved(&configs, settings.runs, plan);
            measured.iter().for_each(|m| tally.add_runs(m));
            let rate_of = |v: Variant| {
                variants
                    .iter()
                    .position(|x| *x == v)
                    .map_or(f64::NAN, |i| measured[i].stats().rate())
            };
            let deadpool = rate_of(Variant::Deadpool);
            for (variant, m) in variants.iter().zip(&measured) {
                rows.push(row(*variant, size, tasks, m, deadpool));
            }
            targets.extend(grid_targets(&variants, &measured, size, tasks));
        }
    }
    print_table(&rows);
    (targets, tally)
}

/// The pool table: its header, then `rows`.
fn print_table(rows: &[String]) {
    println!(
        "| P | T | pool | qps (median) | qps (slowest–fastest run) | × deadpool-postgres | p50 | \
         p99.9 | max (worst run) | fewest ÷ mean | client CPU per query | server CPU per query | \
         failures |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for row in rows {
        println!("{row}");
    }
    println!();
}

/// One table row.
fn row(variant: Variant, size: usize, tasks: usize, m: &Measured, deadpool: f64) -> String {
    let s = m.stats();
    let ratio = s.rate() / deadpool;
    format!(
        "| {size} | {tasks} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        variant.label(),
        fmt_rate(s.rate()),
        fmt_rate_range(s.rate_range()),
        fmt_ratio(ratio),
        fmt_ns(s.p50()),
        fmt_ns(s.p999()),
        fmt_ns(s.worst()),
        fmt_ratio(m.median_of(|r| r.fairness)),
        fmt_ns(m.median_of(run::PgRun::client_ns)),
        fmt_ns(m.median_of(run::PgRun::server_ns)),
        notes(m),
    )
}

/// The failures cell: failed runs, and any checks momopool ran during measured loops (each
/// one an extra round trip before a checkout).
fn notes(m: &Measured) -> String {
    let checks: u64 = m.series.done.iter().filter_map(|r| r.checks).sum();
    let mut note = m.stats().note();
    if checks > 0 {
        if !note.is_empty() {
            note.push_str("; ");
        }
        note.push_str(&format!("{checks} checks in all runs"));
    }
    note
}

/// The targets at one (P, T).
fn grid_targets(
    variants: &[Variant],
    measured: &[Measured],
    size: usize,
    tasks: usize,
) -> Vec<Target> {
    let find = |v: Variant| {
        variants
            .iter()
            .position(|x| *x == v)
            .map(|i| measured[i].stats())
    };
    let (Some(momo), Some(shared), Some(deadpool), Some(raw)) = (
        find(Variant::Momo),
        find(MOMO_SHARED),
        find(Variant::Deadpool),
        find(Variant::Raw),
    ) else {
        return Vec::new();
    };
    let case = |label: &str| format!("{label}, P={size} T={tasks}");
    let measured_ok = |a: &Series<stats::RunStats>, b: &Series<stats::RunStats>| {
        !a.done.is_empty() && !b.done.is_empty()
    };
    // "a is at least `min` times b", measured as a ratio of rates.
    let times = |target: &str,
                 mode: &str,
                 a: &Series<stats::RunStats>,
                 b: &Series<stats::RunStats>,
                 min: f64| {
        let ratio = a.rate() / b.rate();
        Target::new(
            target,
            case(mode),
            format!(
                "{} / {} = {ratio:.2}×",
                fmt_rate(a.rate()),
                fmt_rate(b.rate())
            ),
            measured_ok(a, b).then_some(ratio >= min),
        )
    };
    let mut targets = vec![times(
        "exclusive mode qps ≥ deadpool-postgres",
        "momopool-pg (exclusive)",
        &momo,
        &deadpool,
        EXCLUSIVE_VS_DEADPOOL,
    )];
    let ratio = shared.rate() / raw.rate();
    targets.push(Target::new(
        "shared mode qps ≥ 90 % of the raw clients",
        case("momopool-pg (shared)"),
        format!(
            "{} / {} = {:.0} %",
            fmt_rate(shared.rate()),
            fmt_rate(raw.rate()),
            ratio * 100.0
        ),
        measured_ok(&shared, &raw).then_some(ratio >= SHARED_VS_RAW),
    ));
    if tasks == 256 {
        targets.push(times(
            "shared mode qps ≥ 2× deadpool-postgres at T = 256",
            "momopool-pg (shared)",
            &shared,
            &deadpool,
            SHARED_VS_DEADPOOL,
        ));
    }
    for (mode, series) in [(Variant::Momo, &momo), (MOMO_SHARED, &shared)] {
        let peers: Vec<(String, f64)> = variants
            .iter()
            .zip(measured)
            .filter(|(v, m)| !v.is_momo() && !m.series.done.is_empty())
            .map(|(v, m)| (v.label(), m.stats().p999()))
            .collect();
        let lowest = peers.iter().min_by(|a, b| a.1.total_cmp(&b.1));
        let Some((peer, lowest)) = lowest else {
            continue;
        };
        let all_ran = peers.len() == variants.iter().filter(|v| !v.is_momo()).count();
        targets.push(Target::new(
            "p99.9 ≤ every peer's",
            case(&mode.label()),
            format!(
                "{} vs lowest {} ({peer})",
                fmt_ns(series.p999()),
                fmt_ns(*lowest)
            ),
            (all_ran && !series.done.is_empty()).then_some(series.p999() <= *lowest),
        ));
    }
    targets
}

/// The diagnostic section: which layer of momopool-pg costs what, at P = 8. Returns how
/// undisturbed the runs were.
fn diagnose_section(settings: &Settings, plan: &Plan) -> Tally {
    println!("## Diagnostics: momopool-pg's layers");
    println!();
    println!(
        "As section 1, at P = 8 only, with momopool-pg called three ways: `PgPool::execute` \
         (as in section 1), `PgPool::get` then `Connection::query` (no retry loop around the \
         call), and momopool's generic `momopool::Pool` (default settings, `min_size` = \
         `max_size` = 8) over bare tokio-postgres clients with the statement prepared when \
         connecting (the pool core without momopool-pg's connection layer), and the same with \
         its manager peeking at the socket (a non-blocking `recv(MSG_PEEK)`) in `needs_check`, \
         on every checkout from idle (not on a hand-over), as momopool-pg's manager does; at T = 8 also \
         without any pool, each task using one connection of its own (a standalone \
         momopool-pg `Connection`, or a bare tokio-postgres client, behind an uncontended async \
         mutex): the connection layer alone; deadpool-postgres and the raw clients for \
         reference."
    );
    println!();
    let variants = keep(
        settings,
        vec![
            Variant::Momo,
            Variant::MomoGet,
            Variant::MomoCore,
            Variant::MomoCorePeek,
            Variant::MomoConn,
            Variant::BarePinned,
            Variant::Deadpool,
            Variant::Raw,
        ],
    );
    let mut rows = Vec::new();
    let mut tally = Tally::default();
    for &tasks in &settings.tasks {
        // One connection per task only fits while T ≤ P.
        let variants: Vec<Variant> = variants
            .iter()
            .copied()
            .filter(|v| tasks <= 8 || !matches!(v, Variant::MomoConn | Variant::BarePinned))
            .collect();
        let configs: Vec<_> = variants.iter().map(|&v| (v, 8, tasks)).collect();
        let measured = run::interleaved(&configs, settings.runs, plan);
        measured.iter().for_each(|m| tally.add_runs(m));
        let deadpool = variants
            .iter()
            .position(|v| *v == Variant::Deadpool)
            .map_or(f64::NAN, |i| measured[i].stats().rate());
        for (variant, m) in variants.iter().zip(&measured) {
            rows.push(row(*variant, 8, tasks, m, deadpool));
        }
    }
    print_table(&rows);
    tally
}

/// The variants the instruction counts cover, and the ones a counted child can be asked for.
fn counted_variants() -> Vec<Variant> {
    let mut list = vec![Variant::Momo, MOMO_SHARED];
    list.extend(PEERS);
    list
}

/// Section 3: the client's instructions per statement, counted by callgrind.
fn instructions_section(settings: &Settings, dsn: &str) {
    println!("## 3. Client instructions per statement (callgrind)");
    println!();
    let version = match instructions::valgrind() {
        Ok(version) => version,
        Err(e) => {
            println!("Not counted: {e}.");
            println!();
            return;
        }
    };
    let n = settings.statements;
    let sizes = if settings.sizes_given {
        settings.sizes.clone()
    } else {
        vec![8]
    };
    let tasks = if settings.tasks_given {
        settings.tasks.clone()
    } else {
        vec![8, 64]
    };
    println!(
        "Each pool (or the raw clients) in a child process of this benchmark under \
         `valgrind --tool=callgrind` ({version}): built and warmed as in section 1, then T \
         tasks share a fixed number of `SELECT 1` on a current-thread Tokio runtime. Each \
         child runs twice, with {n} and with {} statements; the difference in the \
         instructions the process executed, divided by {n}, is one statement's cost \
         (set-up and connects cancel out). It counts all the client does per statement (the \
         pool, the connection driver, tokio-postgres, the runtime, the system-call wrappers), \
         not the kernel or the server, and it does not move with the machine's load. Two \
         counts of the same build differ by under 1 % for the other pools and the raw \
         clients, and by up to 5 % for momopool-pg's modes, whose figures move with how \
         many requests happen to share a read or a write.",
        2 * n
    );
    println!();
    let scratch = std::env::temp_dir().join(format!("momopool-pg-count-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        println!("Not counted: cannot create {}: {e}.", scratch.display());
        println!();
        return;
    }
    let variants = keep(settings, counted_variants());
    println!(
        "| P | T | pool | instructions per statement | × raw tokio-postgres | × deadpool-postgres |"
    );
    println!("|---:|---:|---|---:|---:|---:|");
    for &size in &sizes {
        for &t in &tasks {
            let per_statement: Vec<Result<f64, String>> = variants
                .iter()
                .map(|&variant| {
                    eprintln!("  counting {} at P = {size}, T = {t}", variant.label());
                    let short = instructions::count(variant, size, t, n, dsn, &scratch)?;
                    let long = instructions::count(variant, size, t, 2 * n, dsn, &scratch)?;
                    Ok(long.saturating_sub(short) as f64 / n as f64)
                })
                .collect();
            let of = |wanted: Variant| {
                variants
                    .iter()
                    .zip(&per_statement)
                    .find(|(v, _)| **v == wanted)
                    .and_then(|(_, r)| r.as_ref().ok().copied())
            };
            let (raw, deadpool) = (of(Variant::Raw), of(Variant::Deadpool));
            for (variant, counted) in variants.iter().zip(&per_statement) {
                let ratio = |base: Option<f64>, x: f64| {
                    base.map_or("–".to_owned(), |b| format!("{:.2}", x / b))
                };
                match counted {
                    Ok(x) => println!(
                        "| {size} | {t} | {} | {x:.0} | {} | {} |",
                        variant.label(),
                        ratio(raw, *x),
                        ratio(deadpool, *x)
                    ),
                    Err(e) => println!("| {size} | {t} | {} | failed: {e} | | |", variant.label()),
                }
            }
        }
    }
    println!();
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Section 2: pgbench. Returns how undisturbed the runs were.
fn pgbench_section(
    settings: &Settings,
    cluster: &Cluster,
    host: &str,
    postmaster: Option<u32>,
) -> Tally {
    println!("## 2. pgbench: the server's ceiling");
    println!();
    let dir = std::env::temp_dir().join(format!("momopool-pg-bench-{}", std::process::id()));
    let bench = momopool_pg::throwaway::find_bindir()
        .map_err(|e| e.to_string())
        .and_then(|bindir| {
            Pgbench::new(
                &bindir,
                host.to_owned(),
                cluster.port(),
                dir.clone(),
                postmaster,
            )
        })
        .and_then(|b| b.init().map(|()| b));
    let bench = match bench {
        Ok(bench) => bench,
        Err(e) => {
            println!("pgbench not run: {e}");
            println!();
            let _ = std::fs::remove_dir_all(&dir);
            return Tally::default();
        }
    };
    println!(
        "pgbench (C, libpq) from the server's binaries, `pgbench -n -M prepared -j 2 -c P -T {}` \
         for P ∈ {{8, 16}}, after `pgbench -i -s 1`; each of its P clients holds a connection \
         of its own, so it has no pool and no tasks: it shows what the server and loopback \
         manage on this machine with P busy connections. Scripts: the built-in select-only \
         (`-S`: one primary-key lookup), `SELECT 1;`, and `SELECT 1;` {} times between \
         `\\startpipeline` and `\\endpipeline` (qps counts statements). Medians of {} \
         interleaved runs; latency is pgbench's own average per script run.",
        settings.pgbench_secs,
        pgbench::PIPELINE_DEPTH,
        settings.pgbench_runs
    );
    println!();
    let scripts = [Script::SelectOnly, Script::Select1, Script::Pipelined];
    let mut tally = Tally::default();
    let mut rows = Vec::new();
    for &clients in &settings.sizes {
        let mut series: Vec<Series<PgbenchRun>> =
            scripts.iter().map(|_| Series::default()).collect();
        for run in 0..settings.pgbench_runs {
            for (script, s) in scripts.iter().zip(series.iter_mut()) {
                if s.hung {
                    continue;
                }
                let mut attempt = 0;
                let outcome = loop {
                    eprintln!(
                        "  run {}/{}: pgbench -c {clients} {}{}",
                        run + 1,
                        settings.pgbench_runs,
                        script.label(),
                        if attempt > 0 { " (again)" } else { "" }
                    );
                    let outcome = bench.run(*script, clients, settings.pgbench_secs);
                    let share = match &outcome {
                        harness::Outcome::Done(r) => r.cpu.others_share(),
                        _ => 0.0,
                    };
                    if share <= MAX_OTHER_LOAD {
                        break outcome;
                    }
                    if attempt >= LOAD_RETRIES {
                        tally.loaded += 1;
                        break outcome;
                    }
                    eprintln!(
                        "  other processes used {:.0} % of the machine; repeating the run once \
                         it is quiet",
                        share * 100.0
                    );
                    attempt += 1;
                    tally.repeated += 1;
                    wait_for_quiet(postmaster);
                };
                if let harness::Outcome::Done(r) = &outcome {
                    tally.add_usage(&r.cpu);
                }
                s.push(outcome);
            }
        }
        for (script, s) in scripts.iter().zip(&series) {
            let qps: Vec<f64> = s.done.iter().map(|r| r.qps).collect();
            let per_query = |f: fn(&PgbenchRun) -> f64| {
                pgbench::median_of(s, |r| f(r) * 1e9 / r.statements.max(1.0))
            };
            rows.push(format!(
                "| {clients} | {} | {} | {} | {} | {} | {} | {} |",
                script.label(),
                fmt_rate(stats::median(&qps)),
                fmt_rate_range(stats::min_max(qps.iter().copied())),
                fmt_ns(pgbench::median_of(s, |r| r.latency_ms * 1e6)),
                fmt_ns(per_query(|r| r.cpu.own)),
                fmt_ns(per_query(|r| r.cpu.server)),
                s.note(),
            ));
        }
    }
    println!(
        "| clients (-c) | script | qps (median) | qps (slowest–fastest run) | latency average | \
         client CPU per query | server CPU per query | failures |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---|");
    for row in rows {
        println!("{row}");
    }
    println!();
    let _ = std::fs::remove_dir_all(&dir);
    tally
}
