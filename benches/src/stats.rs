//! Latency summaries, medians, formatting and the list of targets with their verdicts.

use crate::isolate::{Outcome, RUN_LIMIT};
use std::time::Duration;

/// One throughput run, summarised.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunStats {
    /// Checkouts completed.
    pub(crate) ops: usize,
    /// Wall time from the first task spawned to the last task done.
    pub(crate) elapsed: Duration,
    /// Median checkout latency, ns.
    pub(crate) p50: u64,
    /// 99.9th percentile checkout latency, ns.
    pub(crate) p999: u64,
    /// Longest checkout, ns.
    pub(crate) max: u64,
}

impl RunStats {
    /// Summarises the latencies (ns) of one run, sorting them in place.
    pub(crate) fn new(latencies: &mut [u64], elapsed: Duration) -> Self {
        latencies.sort_unstable();
        RunStats {
            ops: latencies.len(),
            elapsed,
            p50: quantile(latencies, 0.5),
            p999: quantile(latencies, 0.999),
            max: latencies.last().copied().unwrap_or(0),
        }
    }

    /// Checkouts per second.
    pub(crate) fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-12)
    }
}

/// The nearest-rank quantile of sorted values.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The median of some values (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// The runs of one configuration, and how the failed ones failed.
#[derive(Debug, Clone)]
pub(crate) struct Series<T> {
    /// Results of the runs that finished.
    pub(crate) done: Vec<T>,
    /// Why the others did not ("hung" or the error).
    pub(crate) problems: Vec<String>,
    /// A run hung: the remaining repetitions of this configuration are skipped.
    pub(crate) hung: bool,
}

impl<T> Default for Series<T> {
    fn default() -> Self {
        Series {
            done: Vec::new(),
            problems: Vec::new(),
            hung: false,
        }
    }
}

impl<T> Series<T> {
    /// Records one run's outcome.
    pub(crate) fn push(&mut self, outcome: Outcome<T>) {
        match outcome {
            Outcome::Done(value) => self.done.push(value),
            Outcome::Failed(message) => self.problems.push(message),
            Outcome::Hung => {
                self.hung = true;
                self.problems
                    .push(format!("hung: no result within {} s", RUN_LIMIT.as_secs()));
            }
        }
    }

    /// A note on failed runs for a table cell, empty when all finished.
    pub(crate) fn note(&self) -> String {
        if self.problems.is_empty() {
            return String::new();
        }
        let mut first = self.problems[0].clone();
        first.truncate(80);
        format!(
            "{} of {} runs failed ({first})",
            self.problems.len(),
            self.problems.len() + self.done.len()
        )
    }
}

impl Series<RunStats> {
    /// Median checkouts per second.
    pub(crate) fn rate(&self) -> f64 {
        median(&self.done.iter().map(RunStats::rate).collect::<Vec<_>>())
    }

    /// The slowest and fastest run, checkouts per second.
    pub(crate) fn rate_range(&self) -> (f64, f64) {
        min_max(self.done.iter().map(RunStats::rate))
    }

    /// Median of the runs' median latencies.
    pub(crate) fn p50(&self) -> f64 {
        median(&self.done.iter().map(|r| r.p50 as f64).collect::<Vec<_>>())
    }

    /// Median of the runs' p99.9 latencies.
    pub(crate) fn p999(&self) -> f64 {
        median(&self.done.iter().map(|r| r.p999 as f64).collect::<Vec<_>>())
    }

    /// The longest checkout over all runs (NaN when none finished).
    pub(crate) fn worst(&self) -> f64 {
        self.done
            .iter()
            .map(|r| r.max)
            .max()
            .map_or(f64::NAN, |ns| ns as f64)
    }

    /// Median wall time per run.
    pub(crate) fn elapsed(&self) -> f64 {
        median(
            &self
                .done
                .iter()
                .map(|r| r.elapsed.as_secs_f64())
                .collect::<Vec<_>>(),
        )
    }
}

impl Series<f64> {
    /// The median value.
    pub(crate) fn value(&self) -> f64 {
        median(&self.done)
    }
}

/// Nanoseconds, in a readable unit.
pub(crate) fn fmt_ns(ns: f64) -> String {
    if ns.is_nan() {
        "–".to_owned()
    } else if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1_000_000_000.0 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// A rate in operations per second, in a readable unit.
pub(crate) fn fmt_rate(rate: f64) -> String {
    if rate.is_nan() {
        "–".to_owned()
    } else if rate >= 1e6 {
        format!("{:.2} M/s", rate / 1e6)
    } else {
        format!("{:.0} k/s", rate / 1e3)
    }
}

/// The smallest and largest of `values`; both NaN when there are none.
pub(crate) fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo.is_finite() {
        (lo, hi)
    } else {
        (f64::NAN, f64::NAN)
    }
}

/// The slowest and fastest run's rates, "slowest–fastest"; "–" with no runs.
pub(crate) fn fmt_rate_range((lo, hi): (f64, f64)) -> String {
    if lo.is_nan() {
        "–".to_owned()
    } else {
        format!("{}–{}", fmt_rate(lo), fmt_rate(hi))
    }
}

/// A ratio with two decimals; "–" when it could not be measured.
pub(crate) fn fmt_ratio(value: f64) -> String {
    if value.is_nan() {
        "–".to_owned()
    } else {
        format!("{value:.2}")
    }
}

/// PASS or MISS.
pub(crate) fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

/// One target, what was measured against it and whether it was met.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The target, in words.
    pub(crate) target: String,
    /// Where it was measured.
    pub(crate) case: String,
    /// The measured value, formatted.
    pub(crate) measured: String,
    /// Met or not; `None` when there was nothing to measure (the run failed).
    pub(crate) pass: Option<bool>,
}

impl Target {
    /// A target row.
    pub(crate) fn new(
        target: impl Into<String>,
        case: impl Into<String>,
        measured: impl Into<String>,
        pass: Option<bool>,
    ) -> Self {
        Target {
            target: target.into(),
            case: case.into(),
            measured: measured.into(),
            pass,
        }
    }

    /// The verdict cell.
    pub(crate) fn verdict(&self) -> &'static str {
        match self.pass {
            Some(pass) => verdict(pass),
            None => "n/a",
        }
    }

    /// One tab-separated line, so a child process can hand its targets to the parent.
    pub(crate) fn to_line(&self) -> String {
        let pass = match self.pass {
            Some(true) => "1",
            Some(false) => "0",
            None => "-",
        };
        format!(
            "TARGET\t{}\t{}\t{}\t{pass}",
            self.target, self.case, self.measured
        )
    }

    /// Parses a line made by [`Target::to_line`].
    pub(crate) fn from_line(line: &str) -> Option<Self> {
        let mut parts = line.strip_prefix("TARGET\t")?.split('\t');
        let target = parts.next()?;
        let case = parts.next()?;
        let measured = parts.next()?;
        let pass = match parts.next()? {
            "1" => Some(true),
            "0" => Some(false),
            _ => None,
        };
        Some(Target::new(target, case, measured, pass))
    }
}

/// Prints the verdict table and the count of each verdict.
pub(crate) fn print_summary(targets: &[Target]) {
    if targets.is_empty() {
        return;
    }
    println!("## Targets");
    println!();
    println!("| target | measured where | measured | verdict |");
    println!("|---|---|---:|---|");
    for t in targets {
        println!(
            "| {} | {} | {} | {} |",
            t.target,
            t.case,
            t.measured,
            t.verdict()
        );
    }
    let pass = targets.iter().filter(|t| t.pass == Some(true)).count();
    let miss = targets.iter().filter(|t| t.pass == Some(false)).count();
    let na = targets.len() - pass - miss;
    println!();
    println!("{pass} PASS, {miss} MISS, {na} not measured.");
    println!();
}
