//! momopool-pg against a real PostgreSQL, on every runtime.
//!
//! The smol module runs with no Tokio runtime anywhere in the process's test thread, which is
//! what proves the PostgreSQL side needs none.

mod api;
mod coverage;
mod faults;
mod listen;
mod promises;
mod shared;
mod streams;

use api::*;
use coverage::*;
use faults::*;
use listen::*;
use promises::*;
use shared::*;
use streams::*;

use momopool_pg::{PgConfig, PgPool};
use momopool_tests::Rt;
use std::time::Duration;

/// Slack allowed past a deadline on a loaded 2-core machine.
pub(crate) const EPSILON: Duration = Duration::from_millis(250);

/// A pool for one test on the runtime under test, quiet by default.
pub(crate) async fn pool_for(
    rt: &Rt,
    config: PgConfig,
    tune: impl FnOnce(
        momopool::PoolBuilder<momopool_pg::PgManager>,
    ) -> momopool::PoolBuilder<momopool_pg::PgManager>
    + Send
    + 'static,
) -> PgPool {
    PgPool::builder(config)
        .shared_runtime(rt.pg_runtime())
        .min_size(1)
        .max_size(4)
        .configure(|b| tune(b.wait_timeout(Duration::from_secs(10))))
        .build_eager()
        .await
        .unwrap_or_else(|e| panic!("[{}] cannot build the test pool: {e}", rt.name()))
}

/// Drives `fut` until `waiting` fires (its closure has sent its statements and waits), then
/// drops it, as a timeout around it would: no statement is in flight at that moment, however
/// slowly the machine runs.
pub(crate) async fn drop_once_waiting<F>(
    rt: &Rt,
    fut: F,
    waiting: futures::channel::oneshot::Receiver<()>,
) where
    F: std::future::Future,
    F::Output: std::fmt::Debug,
{
    let raced = futures::future::select(Box::pin(fut), waiting);
    match rt.timeout(Duration::from_secs(30), raced).await {
        Some(futures::future::Either::Right((signal, fut))) => {
            signal.expect("the closure reached its wait");
            drop(fut);
        }
        Some(futures::future::Either::Left((outcome, _))) => {
            panic!("[{}] the closure ended: {outcome:?}", rt.name())
        }
        None => panic!("[{}] the closure never reached its wait", rt.name()),
    }
}

/// A name unique to this test and runtime, usable as an identifier.
pub(crate) fn unique(rt: &Rt, test: &str) -> String {
    format!("{test}_{}", rt.name().replace('-', "_"))
}

momopool_tests::matrix!(
    g7_detached_connection_leaves_the_pool,
    dsn_only_constructors_connect,
    password_never_appears_in_logs,
    tutorial_end_to_end,
    cursor_dropped_early_leaves_the_pool_clean,
    cursor_refuses_to_run_inside_the_callers_transaction,
    three_queries_in_parallel_take_the_time_of_one,
    stretching_seen_in_pg_stat_activity,
    mogrify_renders_literals,
    json_and_hstore_round_trip,
    listen_notify_stream,
    listener_reports_a_lost_connection,
    session_statements_run_on_every_connection,
    c8_returned_inside_transaction_is_rolled_back,
    c8_waiter_handed_a_connection_mid_transaction_gets_it_clean,
    clean_recycling_resets_session_state,
    transaction_closure_commits_and_rolls_back,
    abandoned_transaction_closure_is_rolled_back_first,
    panicking_transaction_closure_is_rolled_back,
    cancelled_pool_transaction_leaves_nothing_behind,
    sql_errors_carry_their_sqlstate,
    f1_schema_change_invalidates_cached_plan,
    dropped_statements_are_prepared_again,
    statement_deadline_cancels_on_the_server,
    b1_terminated_backends_are_replaced_without_errors,
    bad_inputs_give_typed_errors_fast,
    b2_fast_restart_under_query_loop,
    multi_host_tries_hosts_in_order,
    tcp_keepalive_settings_reach_the_socket,
    unnamed_statements_leave_nothing_prepared,
    tls_connections_are_encrypted,
    discarded_connection_with_request_in_flight_closes,
    abandoned_statement_is_not_handed_on,
    copy_and_row_streams_round_trip,
    streams_lost_midway_leave_the_outcome_unknown,
    unfinished_streams_and_raw_clients_are_not_handed_on,
    shared_mode_pipelines_on_few_connections,
    shared_mode_opens_a_lane_rather_than_queue_behind_work,
    shared_mode_slow_statement_does_not_stall_new_callers,
    shared_mode_deadlines,
    shared_mode_keeps_session_changes_exclusive,
    shared_mode_busy_lanes_make_room_for_exclusive_callers,
    shared_mode_lane_yields_to_an_exclusive_claim,
    shared_mode_full_lanes_make_callers_wait_for_room,
    shared_mode_wait_for_room_keeps_the_deadline,
    shared_mode_prefers_a_lane_with_nothing_in_flight,
    shared_mode_connection_loss_follows_the_retry_rules,
    pool_wide_statement_timeout_cancels_on_the_server,
    statement_cache_is_bounded_least_recently_used_first,
    checkout_sends_nothing_by_default,
    recycling_methods_send_what_they_say,
    unix_domain_socket,
    idempotent_transaction_is_replayed_once,
    driver_task_ends_with_the_connection,
    server_gone_error_revalidates_idle_connections,
    get_pinged_pings_the_server,
    statement_list_lost_before_commit_runs_again,
    transaction_ended_early_by_its_own_statement,
    transaction_closure_runs_once_when_its_session_ends,
    transaction_deadline_before_commit_committed_nothing,
    standalone_connection_speaks_the_pools_api,
    callproc_resolves_overloaded_names,
    returned_transaction_releases_its_locks_at_once,
    clean_recycling_resets_even_a_quick_reuse,
);
