//! Fault-injection scenarios against a real PostgreSQL, on every runtime.
//!
//! Most scenarios put the in-process [`FaultProxy`] between the pool and the server and switch
//! faults on and off while the pool runs; the server-side ones (a stopped postmaster, a
//! restart, a stopped backend, a role's connection limit) use the destructive cluster. The
//! scenarios are those of `shared/faults.md`, named after their letter and number, and each
//! ends on the invariants listed there (see [`finish`]).

mod in_use;
mod listen;
mod more;
mod opening;
mod waiting;

/// Every scenario, under one path for the wrappers [`matrix`] stamps out.
use in_use::*;
use listen::*;
use more::*;
use opening::*;
use waiting::*;

use momopool_pg::{PgConfig, PgPool, PgPoolBuilder};
use momopool_tests::proxy::FaultProxy;
use momopool_tests::{Rt, Task, pg};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Slack allowed past a deadline on a loaded 2-core machine.
pub(crate) const EPSILON: Duration = Duration::from_millis(250);

/// How long the server's view of the pool may take to catch up with the pool's own.
const SETTLE: Duration = Duration::from_secs(3);

/// A name unique to this test and runtime, usable as an identifier.
pub(crate) fn unique(rt: &Rt, test: &str) -> String {
    format!("{test}_{}", rt.name().replace('-', "_"))
}

/// The loopback address a test server listens on.
///
/// # Panics
///
/// If the server's URL has no port or names a host other than this machine's loopback: the
/// proxy only forwards to `127.0.0.1`.
pub(crate) fn upstream(server: &pg::Server) -> SocketAddr {
    let config = tokio_postgres::Config::from_str(server.url()).expect("the server URL parses");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A fault proxy in front of `server`, passing traffic until told otherwise.
pub(crate) fn proxy_to(server: &pg::Server) -> FaultProxy {
    FaultProxy::start(upstream(server)).expect("start the fault proxy")
}

/// A configuration for `server` through `proxy`, reporting `app` as its `application_name`.
pub(crate) fn via(server: &pg::Server, proxy: &FaultProxy, app: &str) -> PgConfig {
    let direct = tokio_postgres::Config::from_str(server.url()).expect("the server URL parses");
    let user = direct.get_user().unwrap_or("postgres");
    let dbname = direct.get_dbname().unwrap_or("postgres");
    let mut config = PgConfig::from_dsn(&format!(
        "host=127.0.0.1 port={} user='{user}' dbname='{dbname}'",
        proxy.port()
    ))
    .expect("the proxy DSN parses")
    .application_name(app);
    if let Some(password) = direct.get_password() {
        config = config.password(password);
    }
    config
}

/// A pool builder on the runtime under test.
pub(crate) fn builder(rt: &Rt, config: PgConfig) -> PgPoolBuilder {
    PgPool::builder(config).shared_runtime(rt.pg_runtime())
}

/// A one-connection pool straight to `server` (never through a proxy), to look at what the
/// server sees.
pub(crate) async fn admin_for(rt: &Rt, server: &pg::Server, app: &str) -> PgPool {
    builder(rt, server.config(&format!("{app}_admin")))
        .min_size(1)
        .max_size(1)
        .configure(|b| {
            b.wait_timeout(Duration::from_secs(10))
                .reconnect_interval(Duration::from_millis(50))
                .reconnect_max(Duration::from_millis(200))
        })
        .build_eager()
        .await
        .unwrap_or_else(|e| panic!("[{}] cannot build the admin pool: {e}", rt.name()))
}

/// Runs `fut`, failing the test as a hang if it takes longer than `limit`.
pub(crate) async fn within<F: Future>(rt: &Rt, limit: Duration, what: &str, fut: F) -> F::Output {
    match rt.timeout(limit, fut).await {
        Some(out) => out,
        None => panic!("[{}] {what}: still running after {limit:?}", rt.name()),
    }
}

/// How many backends the server runs for `app`.
pub(crate) async fn backends(rt: &Rt, admin: &PgPool, app: &str) -> usize {
    let row = within(
        rt,
        Duration::from_secs(10),
        "counting backends",
        admin.query_one(
            "SELECT count(*)::int FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("[{}] counting backends: {e}", rt.name()));
    usize::try_from(row.get::<_, i32>(0)).expect("a count is not negative")
}

/// Backend pids running a statement that starts with `prefix` for `app`. A statement that
/// calls `pg_sleep` counts once it sleeps: `pg_stat_activity` shows it active from its bind
/// on, and a backend terminated before it acknowledged the bind did not run the statement
/// (the pool rightly retries that, where these tests want it cut off mid-way).
pub(crate) async fn active_pids(rt: &Rt, admin: &PgPool, app: &str, prefix: &str) -> Vec<i32> {
    let pattern = format!("{prefix}%");
    within(
        rt,
        Duration::from_secs(10),
        "listing active backends",
        admin.execute(
            "SELECT pid FROM pg_stat_activity \
             WHERE application_name = $1 AND state = 'active' AND query LIKE $2 \
               AND (query NOT LIKE '%pg_sleep%' OR wait_event = 'PgSleep') ORDER BY pid",
            &[&app, &pattern],
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("[{}] listing active backends: {e}", rt.name()))
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Waits (up to 5 s) until exactly one backend of `app` runs a statement starting with
/// `prefix` and is not in `except`; returns its pid.
pub(crate) async fn wait_for_active(
    rt: &Rt,
    admin: &PgPool,
    app: &str,
    prefix: &str,
    except: &[i32],
) -> i32 {
    let started = Instant::now();
    loop {
        let pids: Vec<i32> = active_pids(rt, admin, app, prefix)
            .await
            .into_iter()
            .filter(|p| !except.contains(p))
            .collect();
        if let [pid] = pids[..] {
            return pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "[{}] no single backend of {app} ran `{prefix}...` within 5 s: {pids:?}",
            rt.name()
        );
        rt.sleep(Duration::from_millis(10)).await;
    }
}

/// What a [`Watch`] saw.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// The largest `size` sampled.
    pub(crate) size: usize,
    /// The largest `creating` sampled.
    pub(crate) creating: usize,
    /// The first sample that did not add up, if any.
    pub(crate) violation: Option<String>,
}

/// Samples a pool's status every few milliseconds in a task of its own, checking at every
/// sample that it adds up and stays within `max_size` (or a fixed limit).
pub(crate) struct Watch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    task: Task<()>,
}

pub(crate) fn watch(rt: &Rt, pool: &PgPool) -> Watch {
    watch_within(rt, pool, None)
}

/// Like [`watch`], checking the size against `limit` instead of the pool's current
/// `max_size` (which a resize may lower below the connections still in use).
pub(crate) fn watch_within(rt: &Rt, pool: &PgPool, limit: Option<usize>) -> Watch {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let task = {
        let (stop, seen, pool, rt2) = (stop.clone(), seen.clone(), pool.clone(), rt.clone());
        rt.spawn(async move {
            loop {
                let s = pool.inner().status();
                {
                    let mut seen = seen.lock().unwrap();
                    seen.size = seen.size.max(s.size);
                    seen.creating = seen.creating.max(s.creating);
                    let adds_up = s.size == s.idle + s.in_use + s.creating;
                    let limit = limit.unwrap_or(s.max_size);
                    if seen.violation.is_none() && (!adds_up || s.size > limit) {
                        seen.violation = Some(format!("{s:?}"));
                    }
                }
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                rt2.sleep(Duration::from_millis(2)).await;
            }
        })
    };
    Watch { stop, seen, task }
}

impl Watch {
    /// Stops sampling; returns what was seen, failing the test if a sample did not add up.
    pub(crate) async fn stop(self, rt: &Rt) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        within(
            rt,
            Duration::from_secs(5),
            "stopping the status watch",
            self.task,
        )
        .await;
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        assert!(
            seen.violation.is_none(),
            "[{}] a status sample did not add up or exceeded the size limit: {}",
            rt.name(),
            seen.violation.as_deref().unwrap_or_default()
        );
        seen
    }
}

/// Waits (up to [`SETTLE`]) until the server runs as many backends for `app` as the pool has
/// connections, with no connect in flight.
pub(crate) async fn assert_backends_match(rt: &Rt, pool: &PgPool, admin: &PgPool, app: &str) {
    let started = Instant::now();
    loop {
        let status = pool.inner().status();
        let n = backends(rt, admin, app).await;
        if status.creating == 0 && n == status.size && pool.inner().status() == status {
            return;
        }
        assert!(
            started.elapsed() < SETTLE,
            "[{}] the server runs {n} backends for {app}, the pool has {status:?}",
            rt.name()
        );
        rt.sleep(Duration::from_millis(20)).await;
    }
}

/// The invariants every scenario ends on, once its fault is gone: every sample of the status
/// added up within `max_size`; nobody is left waiting or holding a connection; a final `get()`
/// succeeds; the server's backends for `app` match the pool's size.
pub(crate) async fn finish(rt: &Rt, pool: &PgPool, admin: &PgPool, app: &str, watch: Watch) {
    watch.stop(rt).await;
    momopool_tests::assert_accounting(pool.inner());
    rt.wait_until(Duration::from_secs(5), "no caller left in the pool", || {
        let s = pool.inner().status();
        s.in_use == 0 && s.waiting == 0
    })
    .await;
    let conn = within(
        rt,
        Duration::from_secs(5),
        "the final get()",
        pool.inner().get_timeout(Duration::from_secs(3)),
    )
    .await
    .unwrap_or_else(|e| panic!("[{}] final get() failed: {e}", rt.name()));
    drop(conn);
    momopool_tests::assert_accounting(pool.inner());
    assert_backends_match(rt, pool, admin, app).await;
}

momopool_tests::matrix!(
    a1_db_down_at_start,
    a2_db_comes_back_while_callers_wait,
    a3_server_accepts_but_never_answers,
    a3_postmaster_stopped_accepts_but_never_answers,
    a3_deaf_first_host_fails_over_to_the_next,
    a3_listen_on_a_deaf_server_times_out,
    c5_shared_mode_late_cancel_hits_the_next_statement,
    a4_slow_connects_under_a_burst,
    a5_too_many_connections,
    a6_rejected_by_pg_hba_or_unknown_database,
    b2_immediate_restart_under_query_loop,
    b3_silently_dead_idle_connections,
    b3_get_pinged_skips_a_silently_dead_connection,
    b3_listener_keepalive_finds_a_silently_dead_connection,
    b1_idle_connection_closed_just_after_answering,
    b1_idle_shared_lane_closed_just_after_answering,
    b1_goodbye_arrives_as_the_first_answer,
    c1_backend_terminated_mid_statement,
    c2_abrupt_loss_mid_statement,
    c2_backend_killed_mid_statement,
    c2_connection_cut_after_n_bytes,
    c3_lost_commit_reply,
    c4_idempotent_read_across_a_restart,
    c5_backend_stopped_mid_statement,
    c5_blocked_by_a_lock,
    c5_blackholed_mid_statement,
    d7_fifo_fairness,
    f2_statements_never_cross_connections,
    g1_reconnect_backoff_after_outage,
    idle_session_timeout_closes_idle_connections,
    g2_reconnects_do_not_stretch_and_resize_under_load,
);
