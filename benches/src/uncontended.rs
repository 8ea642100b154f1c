//! Uncontended cost: one task on a Tokio current-thread runtime doing get + drop in a tight
//! loop, for every pool, with and without timeouts.

use crate::Settings;
use crate::harness::uncontended;
use crate::pools::{
    BB8, Check, DEADPOOL, DEADPOOL_NO_TIMEOUTS, FLOOR, MOBC, MOMO, MOMO_NO_TIMEOUTS, Variant,
};
use crate::stats::{Series, Target, median};
use std::time::Instant;

/// Pool size for the uncontended runs.
const SIZE: usize = 4;
/// momopool's uncontended target, ns per get + drop.
const MOMO_NS: f64 = 50.0;
/// What configured timeouts may add, ns.
const TIMEOUT_NS: f64 = 10.0;

/// momopool with its default timeouts and `Validation::Never`.
const MOMO_NEVER: Variant = Variant::Momo {
    timeouts: true,
    check: Check::Never,
};
/// momopool with no timeouts and `Validation::Never`.
const MOMO_NO_TIMEOUTS_NEVER: Variant = Variant::Momo {
    timeouts: false,
    check: Check::Never,
};
/// momopool with its default timeouts and `Validation::Always`.
const MOMO_ALWAYS: Variant = Variant::Momo {
    timeouts: true,
    check: Check::Always,
};

/// What each variant is configured with, for the table.
fn describe(variant: Variant) -> (&'static str, &'static str) {
    match variant {
        Variant::Momo { timeouts, check } => (
            if timeouts {
                "wait 30 s, create 10 s, recycle 5 s (defaults)"
            } else {
                "all `None`"
            },
            match check {
                Check::Default => "default: check if idle > 500 ms (never due here)",
                Check::Never => "`Validation::Never`",
                Check::Always => "`Validation::Always` (no-op check every checkout)",
            },
        ),
        Variant::Deadpool { timeouts: true } => (
            "`Timeouts` wait 30 s, create 10 s, recycle 5 s (Tokio)",
            "no-op `recycle` every checkout",
        ),
        Variant::Deadpool { timeouts: false } => {
            ("none (no runtime)", "no-op `recycle` every checkout")
        }
        Variant::Bb8 { test_on_check_out } => (
            "`connection_timeout` 30 s (always on)",
            if test_on_check_out {
                "no-op `is_valid` every checkout (default)"
            } else {
                "`test_on_check_out(false)`"
            },
        ),
        Variant::Mobc { get_timeout } => (
            if get_timeout {
                "`get_timeout` 30 s (default)"
            } else {
                "`get_timeout(None)`"
            },
            "no-op `check` every checkout (default)",
        ),
        Variant::Floor => ("none", "none"),
    }
}

/// How long one `Instant::now()` takes here, ns (the pools read the clock on checkout).
fn clock_cost() -> f64 {
    let n = 2_000_000;
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(Instant::now());
    }
    started.elapsed().as_secs_f64() * 1e9 / n as f64
}

/// Runs the section: prints its table, returns its targets.
pub(crate) fn section(settings: &Settings) -> Vec<Target> {
    let variants = [
        MOMO,
        MOMO_NO_TIMEOUTS,
        MOMO_NEVER,
        MOMO_NO_TIMEOUTS_NEVER,
        MOMO_ALWAYS,
        DEADPOOL,
        DEADPOOL_NO_TIMEOUTS,
        BB8,
        Variant::Bb8 {
            test_on_check_out: false,
        },
        MOBC,
        Variant::Mobc { get_timeout: false },
        FLOOR,
    ];
    let mut series: Vec<Series<f64>> = variants.iter().map(|_| Series::default()).collect();
    let mut clock = Vec::new();
    for run in 0..settings.runs {
        clock.push(clock_cost());
        for (variant, s) in variants.iter().zip(series.iter_mut()) {
            if s.hung {
                continue;
            }
            eprintln!(
                "  run {}/{}: uncontended {}",
                run + 1,
                settings.runs,
                variant.label()
            );
            s.push(uncontended(*variant, SIZE, settings.uncontended_time));
        }
    }
    println!("| pool | timeouts | checkout check | ns per get + drop (median) | failures |");
    println!("|---|---|---|---:|---|");
    for (variant, s) in variants.iter().zip(&series) {
        let (timeouts, check) = describe(*variant);
        println!(
            "| {} | {timeouts} | {check} | {:.1} | {} |",
            variant.label(),
            s.value(),
            s.note()
        );
    }
    println!();
    println!(
        "For scale: one `Instant::now()` costs {:.1} ns on this machine (median of {} loops).",
        median(&clock),
        clock.len()
    );
    println!();

    let value = |v: Variant| {
        variants
            .iter()
            .position(|x| *x == v)
            .map(|i| series[i].value())
            .unwrap_or(f64::NAN)
    };
    let mut targets = Vec::new();
    for v in [MOMO, MOMO_NO_TIMEOUTS, MOMO_NEVER, MOMO_NO_TIMEOUTS_NEVER] {
        let ns = value(v);
        targets.push(Target::new(
            format!("uncontended ≤ {MOMO_NS} ns"),
            v.label(),
            format!("{ns:.1} ns"),
            (!ns.is_nan()).then_some(ns <= MOMO_NS),
        ));
    }
    for (with, without) in [
        (MOMO, MOMO_NO_TIMEOUTS),
        (MOMO_NEVER, MOMO_NO_TIMEOUTS_NEVER),
    ] {
        let added = value(with) - value(without);
        targets.push(Target::new(
            format!("timeouts add ≤ {TIMEOUT_NS} ns"),
            format!("{} − {}", with.label(), without.label()),
            format!("{added:+.1} ns"),
            (!added.is_nan()).then_some(added <= TIMEOUT_NS),
        ));
    }
    targets
}
