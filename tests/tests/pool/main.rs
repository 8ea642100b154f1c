//! Behaviour of the generic pool with a scripted manager, on every runtime.
//!
//! Scenario tests are named after `../shared/faults.md` (`d1_...`, `e2_...`); the others
//! after the behaviour they pin. Each is an `async fn(Rt)` stamped onto four runtimes by
//! `matrix!` at the bottom of this file.

mod faults;
mod lifecycle;
mod queue;

use faults::*;
use lifecycle::*;
use queue::*;

use momopool::{Pool, PoolBuilder};
use momopool_tests::{Rt, Script};
use std::time::{Duration, Instant};

/// Slack allowed past a deadline on a loaded 2-core machine.
pub(crate) const EPSILON: Duration = Duration::from_millis(150);

/// A pool on the runtime under test with quiet defaults (no background fill, no
/// validation), adjusted by `tune`.
pub(crate) fn pool_with(
    rt: &Rt,
    script: &Script,
    tune: impl FnOnce(PoolBuilder<Script>) -> PoolBuilder<Script>,
) -> Pool<Script> {
    let builder = Pool::builder(script.clone())
        .shared_runtime(rt.runtime())
        .min_size(0)
        .max_size(4)
        .validation(momopool::Validation::Never)
        .reconnect_interval(Duration::from_millis(20))
        .reconnect_max(Duration::from_millis(200))
        .wait_timeout(Duration::from_secs(10));
    tune(builder).build().expect("valid test pool")
}

/// Asserts that `elapsed` lies in `[at_least, at_least + EPSILON]`.
pub(crate) fn assert_elapsed(rt: &Rt, what: &str, started: Instant, at_least: Duration) {
    let elapsed = started.elapsed();
    assert!(
        elapsed >= at_least && elapsed <= at_least + EPSILON,
        "[{}] {what}: took {elapsed:?}, expected {at_least:?} to {:?}",
        rt.name(),
        at_least + EPSILON
    );
}

momopool_tests::matrix!(
    // queueing, fairness, cancellation
    get_returns_and_reuses,
    stretch_and_shrink_step_by_step,
    nested_get_with_max_one_times_out,
    has_waiters_follows_the_queue,
    d1_cancellation_fuzz,
    d2_cancelled_at_hand_off,
    d3_cancelled_during_create,
    d5_broken_returns_while_waiters_queue,
    discarded_connection_keeps_its_slot_until_gone,
    d5_healthy_return_goes_to_oldest_waiter_while_creates_fail,
    d6_no_over_creation,
    d7_fifo_fairness,
    d8_bounded_queue,
    waiters_25000_on_max_3_all_finish,
    d9_timeout_precision,
    mixed_deadlines_each_time_out_on_time,
    max_connecting_limits_connects_in_flight,
    reuse_order_lifo_and_fifo,
    // faults in the manager and hooks
    a1_backend_down_at_start,
    a6_permanent_error_fails_fast,
    d4_check_or_hook_that_never_returns,
    e1_errors,
    e2_panics,
    e3_check_fails_for_every_connection,
    g1_reconnect_backoff_after_outage,
    revalidation_after_server_gone,
    fail_fast_while_backend_down,
    // lifecycle and control
    b5_lifetime_expiry,
    g3_close_with_borrowers_and_waiters,
    drain_replaces_every_connection,
    g6_suspend_resume,
    g7_detach,
    resize_down_and_up_under_load,
    warm_up_and_eager_build,
    keepalive_checks_idle_connections,
    leak_detection_reports_held_connections,
    retain_closes_rejected_idle_connections,
    dirty_connections_are_checked_before_reuse,
    handed_over_connections_are_asked_on_handover,
);
