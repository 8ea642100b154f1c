//! Scaling checks for momopool: uncontended cost with 4 versus 1024 idle connections, and
//! contended cost with 25 000 waiting tasks.

use crate::Settings;
use crate::harness::uncontended;
use crate::pools::{DEADPOOL, FLOOR, MOMO, MOMO_NO_TIMEOUTS};
use crate::stats::{Series, Target, fmt_ns, fmt_rate};
use crate::throughput::{Throughput, interleaved};

/// Allowed drift, as a fraction.
const FLAT: f64 = 0.10;
/// Pool sizes compared uncontended.
const SMALL: usize = 4;
/// The large pool.
const LARGE: usize = 1024;
/// Pool size for the waiters check.
const WAITER_POOL: usize = 3;
/// Task count of the contended baseline.
const FEW: usize = 16;
/// Task count of the waiters check.
pub(crate) const MANY: usize = 25_000;

/// Runs the section: prints its tables, returns its targets.
pub(crate) fn section(settings: &Settings) -> Vec<Target> {
    let mut targets = Vec::new();

    println!("### Uncontended, {SMALL} versus {LARGE} idle connections (momopool defaults)");
    println!();
    let mut small = Series::<f64>::default();
    let mut large = Series::<f64>::default();
    for run in 0..settings.runs {
        eprintln!(
            "  run {}/{}: momopool uncontended P={SMALL}, P={LARGE}",
            run + 1,
            settings.runs
        );
        if !small.hung {
            small.push(uncontended(MOMO, SMALL, settings.uncontended_time));
        }
        if !large.hung {
            large.push(uncontended(MOMO, LARGE, settings.uncontended_time));
        }
    }
    let change = large.value() / small.value() - 1.0;
    println!("| P (idle, warmed with `warm_up`) | ns per get + drop (median) | failures |");
    println!("|---:|---:|---|");
    println!("| {SMALL} | {:.1} | {} |", small.value(), small.note());
    println!("| {LARGE} | {:.1} | {} |", large.value(), large.note());
    println!();
    println!(
        "Change from P = {SMALL} to P = {LARGE}: {:+.1} %.",
        change * 100.0
    );
    println!();
    targets.push(Target::new(
        "cost flat within ±10 % from P = 4 to P = 1024",
        "momopool, uncontended",
        format!("{:+.1} %", change * 100.0),
        (!change.is_nan()).then_some(change.abs() <= FLAT),
    ));

    println!(
        "### {MANY} waiters on P = {WAITER_POOL} (Tokio, {} workers, {} checkouts per run)",
        crate::throughput::WORKERS,
        settings.waiter_ops
    );
    println!();
    println!(
        "Each task loops get, yield once, drop. T = {FEW} on the same pool is the baseline; \
         momopool without timeouts, deadpool (with timeouts) and the floor (a minimal fair \
         hand-off, see section 2) are shown for reference, to separate the runtime's own cost \
         of {MANY} tasks from the pool's."
    );
    println!();
    println!(
        "| T | pool | run time | ops/s | ns per checkout (wall) | p50 | p99.9 | max (worst run) | failures |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---|");
    let variants = [MOMO, MOMO_NO_TIMEOUTS, DEADPOOL, FLOOR];
    // Wall ns per checkout and checkouts per second, by task count, in `variants` order.
    let mut per_op: Vec<Vec<f64>> = Vec::new();
    let mut rates: Vec<Vec<f64>> = Vec::new();
    let counts = [FEW, MANY];
    // Both task counts interleaved too, so that a slow spell of the machine hits both alike.
    let configs: Vec<_> = counts
        .iter()
        .flat_map(|&tasks| {
            variants.iter().map(move |v| {
                (
                    *v,
                    Throughput {
                        tasks,
                        ops: settings.waiter_ops,
                        rt: crate::pools::Rt::Tokio,
                    },
                )
            })
        })
        .collect();
    let all = interleaved(&configs, WAITER_POOL, settings.runs);
    for (row, series) in all.chunks(variants.len()).enumerate() {
        let tasks = counts[row];
        per_op.push(series.iter().map(|s| 1e9 / s.rate()).collect());
        rates.push(series.iter().map(|s| s.rate()).collect());
        for (variant, s) in variants.iter().zip(series) {
            println!(
                "| {tasks} | {} | {} | {} | {:.0} | {} | {} | {} | {} |",
                variant.label(),
                fmt_ns(s.elapsed() * 1e9),
                fmt_rate(s.rate()),
                1e9 / s.rate(),
                fmt_ns(s.p50()),
                fmt_ns(s.p999()),
                fmt_ns(s.worst()),
                s.note()
            );
            if *variant == MOMO && tasks == MANY {
                let case = format!("momopool, T={MANY} P={WAITER_POOL}");
                let tail = s.p999() / s.p50();
                targets.push(Target::new(
                    "under contention p99.9 ≤ 3× p50",
                    case.clone(),
                    format!("{} / {} = {tail:.1}×", fmt_ns(s.p999()), fmt_ns(s.p50())),
                    (!s.done.is_empty()).then_some(tail <= 3.0),
                ));
                targets.push(Target::new(
                    "worst checkout ≤ 20 ms in every run",
                    case,
                    fmt_ns(s.worst()),
                    (!s.done.is_empty() && s.problems.is_empty()).then_some(s.worst() <= 20e6),
                ));
            }
        }
    }
    println!();
    for (i, variant) in variants.iter().enumerate() {
        let change = per_op[1][i] / per_op[0][i] - 1.0;
        println!(
            "- {}: wall time per checkout changes by {:+.1} % from T = {FEW} to T = {MANY}.",
            variant.label(),
            change * 100.0
        );
    }
    let mut added = Vec::new();
    for (row, tasks) in counts.iter().enumerate() {
        let extra = per_op[row][0] - per_op[row][1];
        added.push((*tasks, extra));
        println!(
            "- Timeouts under contention: at T = {tasks}, momopool with its default timeouts \
             spends {extra:+.0} ns more wall time per checkout than with none."
        );
    }
    let expected_wait = MANY as f64 / rates[1][0];
    println!(
        "- By Little's law, once all {MANY} tasks are queued a first-come-first-served pool \
         makes each checkout wait about T ÷ throughput ≈ {} at momopool's measured rate, so \
         a 20 ms ceiling cannot hold here for any fair pool at this throughput.",
        fmt_ns(expected_wait * 1e9)
    );
    println!();
    let change = per_op[1][0] / per_op[0][0] - 1.0;
    targets.push(Target::new(
        "cost flat within ±10 % with 25 000 waiters",
        format!("momopool, ns per checkout, T={MANY} vs T={FEW}, P={WAITER_POOL}"),
        format!("{:+.1} %", change * 100.0),
        (!change.is_nan()).then_some(change.abs() <= FLAT),
    ));
    for (tasks, extra) in added {
        targets.push(Target::new(
            "timeouts add ≤ 10 ns (here under contention, wall time per checkout)",
            format!("momopool − momopool (no timeouts), T={tasks} P={WAITER_POOL}"),
            format!("{extra:+.0} ns"),
            (!extra.is_nan()).then_some(extra <= 10.0),
        ));
    }
    targets
}
