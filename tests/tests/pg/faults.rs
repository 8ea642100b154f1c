//! Reconnects, restarts and bad input against a real server.

use crate::{pool_for, unique};
use momopool::Removal;
use momopool_pg::throwaway::StopMode;
use momopool_pg::{Connection, Error, PgConfig, PgPool};
use momopool_tests::{Rt, pg};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn backend_pids(admin: &PgPool, app: &str) -> Vec<i32> {
    admin
        .execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Samples a pool's status every few milliseconds in a task of its own, checking at every
/// sample that it adds up (`size = idle + in_use + creating`) and stays within `max_size`: the
/// first invariant of `shared/faults.md`, for the scenarios of this file.
struct Sampler {
    stop: Arc<AtomicBool>,
    violation: Arc<Mutex<Option<String>>>,
    task: momopool_tests::Task<()>,
}

fn sample(rt: &Rt, pool: &PgPool) -> Sampler {
    let stop = Arc::new(AtomicBool::new(false));
    let violation = Arc::new(Mutex::new(None));
    let task = {
        let (stop, violation, pool, rt2) =
            (stop.clone(), violation.clone(), pool.clone(), rt.clone());
        rt.spawn(async move {
            loop {
                let s = pool.inner().status();
                let adds_up = s.size == s.idle + s.in_use + s.creating;
                if !adds_up || s.size > s.max_size {
                    violation.lock().unwrap().get_or_insert(format!("{s:?}"));
                }
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                rt2.sleep(Duration::from_millis(2)).await;
            }
        })
    };
    Sampler {
        stop,
        violation,
        task,
    }
}

/// The invariants every scenario of `shared/faults.md` ends on, once its fault is gone: every
/// sampled status added up within `max_size`; nobody is left waiting or holding a connection;
/// a final `get()` succeeds; the server's backends for `app` match the pool's size (after a
/// short settle).
async fn end_of_scenario(rt: &Rt, pool: &PgPool, admin: &PgPool, app: &str, sampler: Sampler) {
    sampler.stop.store(true, Ordering::SeqCst);
    if rt
        .timeout(Duration::from_secs(5), sampler.task)
        .await
        .is_none()
    {
        panic!("[{}] the status sampler did not stop", rt.name());
    }
    if let Some(bad) = sampler.violation.lock().unwrap().take() {
        panic!(
            "[{}] a status sample did not add up or exceeded max_size: {bad}",
            rt.name()
        );
    }
    momopool_tests::assert_accounting(pool.inner());
    rt.wait_until(Duration::from_secs(5), "no caller left in the pool", || {
        let s = pool.inner().status();
        s.in_use == 0 && s.waiting == 0
    })
    .await;
    let conn = rt
        .timeout(
            Duration::from_secs(5),
            pool.inner().get_timeout(Duration::from_secs(3)),
        )
        .await
        .unwrap_or_else(|| panic!("[{}] the final get() hung", rt.name()))
        .unwrap_or_else(|e| panic!("[{}] final get() failed: {e}", rt.name()));
    drop(conn);
    momopool_tests::assert_accounting(pool.inner());
    let started = Instant::now();
    loop {
        let status = pool.inner().status();
        let n = backend_pids(admin, app).await.len();
        if status.creating == 0 && n == status.size && pool.inner().status() == status {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "[{}] the server runs {n} backends for {app}, the pool has {status:?}",
            rt.name()
        );
        rt.sleep(Duration::from_millis(20)).await;
    }
}

/// B1: every idle connection is terminated by the server; four queries after that all
/// succeed on new backends, and the pool counts the lost connections.
pub(crate) async fn b1_terminated_backends_are_replaced_without_errors(rt: Rt) {
    let server = pg::shared();
    let app = unique(&rt, "b1");
    let pool = pool_for(&rt, server.config(&app), |b| b.min_size(4).max_size(4)).await;
    pool.inner().warm_up().await.unwrap();
    let admin = pool_for(&rt, server.config(&format!("{app}_admin")), |b| {
        b.max_size(1)
    })
    .await;
    let sampler = sample(&rt, &pool);
    let before = backend_pids(&admin, &app).await;
    assert_eq!(before.len(), 4);

    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    for _ in 0..250 {
        if backend_pids(&admin, &app)
            .await
            .iter()
            .all(|p| !before.contains(p))
        {
            break;
        }
        rt.sleep(Duration::from_millis(20)).await;
    }

    let results =
        futures::future::join_all((0..4).map(|_| pool.query_one("SELECT pg_backend_pid()", &[])))
            .await;
    let mut pids = Vec::new();
    for result in results {
        let row = result.unwrap_or_else(|e| panic!("[{}] a caller saw an error: {e}", rt.name()));
        pids.push(row.get::<_, i32>(0));
    }
    assert!(
        pids.iter().all(|p| !before.contains(p)),
        "new backends only"
    );
    let stats = pool.inner().statistics();
    let lost = stats.closed.get(Removal::Broken) + stats.closed.get(Removal::FailedCheck);
    assert!(
        lost >= 4,
        "[{}] the pool counts the lost connections: {stats:?}",
        rt.name()
    );
    end_of_scenario(&rt, &pool, &admin, &app, sampler).await;
}

// The destructive cluster's lock is held for the whole test on purpose: it serializes the
// test threads (each runs its body inside its own `block_on`), not tasks of one runtime.
/// Wrong password, pg_hba reject, unknown database, nothing listening, malformed DSN: each a
/// typed error, each fast, and the pool does not storm the server.
#[allow(clippy::await_holding_lock)]
pub(crate) async fn bad_inputs_give_typed_errors_fast(rt: Rt) {
    let server = pg::destructive();
    let cluster = server.cluster().expect("the destructive server is ours");
    let runtime = rt.pg_runtime();
    let connect = |url: String| {
        let runtime = runtime.clone();
        async move {
            let started = Instant::now();
            let result = Connection::connect_with(PgConfig::from_dsn(&url)?, runtime).await;
            assert!(started.elapsed() < Duration::from_secs(2), "fast");
            result
        }
    };

    let wrong_password = cluster.url_for(pg::PASSWORD_USER, Some("wrong"), "postgres");
    let err = connect(wrong_password.clone()).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the password never shows: {err}"
    );
    let right = cluster.url_for(pg::PASSWORD_USER, Some(pg::PASSWORD), "postgres");
    connect(right).await.expect("the right password works");

    let rejected = cluster.url_for("momopool_rejected", None, "postgres");
    let err = connect(rejected).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("28000"), "{err}");

    let unknown_db = cluster.url_for("postgres", None, "no_such_database");
    let err = connect(unknown_db).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("3D000"), "{err}");

    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = connect(format!("postgresql://postgres@127.0.0.1:{port}/postgres"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.is_connection_lost());

    let err = PgConfig::from_dsn("postgresql://u:pw@host:notaport/db").unwrap_err();
    assert!(matches!(err, Error::Config(_)));

    // A pool with a wrong password: every caller fails fast with 28P01, no reconnect storm.
    let pool = PgPool::builder(PgConfig::from_dsn(&wrong_password).unwrap())
        .shared_runtime(rt.pg_runtime())
        .min_size(0)
        .build()
        .unwrap();
    let started = Instant::now();
    let results = futures::future::join_all((0..5).map(|_| pool.execute("SELECT 1", &[]))).await;
    for result in results {
        let err = result.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "well before the 30 s wait timeout"
    );
    for _ in 0..20 {
        assert!(pool.execute("SELECT 1", &[]).await.is_err());
    }
    let attempts = pool.inner().statistics().create_errors;
    assert!(
        attempts <= 5,
        "[{}] {attempts} connects for 25 calls",
        rt.name()
    );

    // Eager build: fails with the connect error.
    let eager = PgPool::builder(PgConfig::from_dsn(&wrong_password).unwrap())
        .shared_runtime(rt.pg_runtime())
        .build_eager()
        .await;
    assert_eq!(eager.unwrap_err().code().map(|c| c.code()), Some("28P01"));
}

/// B2: a fast restart of the cluster under eight tasks querying every 10 ms (max 4
/// connections). Errors only for the statements in flight at the restart: each connection
/// carries at most one statement, so at most `max_size` (4) callers fail, and each with an
/// error saying the connection was lost (callers waiting for a connection meanwhile keep
/// waiting, within their 30 s deadline, rather than fail). The first call once the server is
/// back succeeds (no stale connection handed out), no error after that, the pool refills to
/// `min_size`, and the end-of-scenario invariants hold.
///
/// `pg_ctl restart` runs in a child process polled from the runtime, so the query loop runs
/// during the restart on every runtime (a blocking wait would freeze a current-thread runtime,
/// and nothing would be in flight when the server went down).
#[allow(clippy::await_holding_lock)]
pub(crate) async fn b2_fast_restart_under_query_loop(rt: Rt) {
    const MAX_SIZE: usize = 4;
    let server = pg::destructive();
    let cluster = server.cluster().expect("the destructive server is ours");
    let app = unique(&rt, "b2");
    let pool = pool_for(&rt, server.config(&app), |b| {
        b.min_size(2)
            .max_size(MAX_SIZE)
            .wait_timeout(Duration::from_secs(30))
            .reconnect_interval(Duration::from_millis(50))
            .reconnect_max(Duration::from_millis(500))
    })
    .await;
    pool.inner().warm_up().await.unwrap();
    let sampler = sample(&rt, &pool);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            let (stop, ok, errors) = (stop.clone(), ok.clone(), errors.clone());
            let rt2 = rt.clone();
            rt.spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match pool
                        .with(momopool_pg::CallOptions::new().timeout(Duration::from_secs(30)))
                        .execute("SELECT 1", &[])
                        .await
                    {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            let lost = e.is_connection_lost();
                            errors.lock().unwrap().push(format!("lost={lost}: {e:?}"));
                        }
                    }
                    rt2.sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    rt.sleep(Duration::from_millis(300)).await;
    assert!(
        ok.load(Ordering::SeqCst) > 0,
        "[{}] the loop runs",
        rt.name()
    );

    let mut pg_ctl = cluster
        .restart_in_background(StopMode::Fast)
        .expect("start pg_ctl restart");
    let started = Instant::now();
    loop {
        match pg_ctl.try_wait().expect("poll pg_ctl") {
            Some(exit) => {
                assert!(exit.success(), "pg_ctl restart failed: {exit}");
                break;
            }
            None => {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "pg_ctl restart still running after 60 s"
                );
                rt.sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let restart_took = started.elapsed();

    // The first call after the server is back succeeds: no stale connection handed out.
    let row = pool.query_one("SELECT 1", &[]).await;
    assert!(
        row.is_ok(),
        "[{}] first call after restart: {:?}",
        rt.name(),
        row.err()
    );
    let failed_when_back = errors.lock().unwrap().len();
    rt.sleep(Duration::from_millis(500)).await;
    let ok_before = ok.load(Ordering::SeqCst);
    rt.sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await;
    }
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    assert!(
        ok.load(Ordering::SeqCst) > ok_before,
        "[{}] queries keep succeeding",
        rt.name()
    );
    assert_eq!(
        errors.len(),
        failed_when_back,
        "[{}] errors once the server was back: {errors:#?}",
        rt.name()
    );
    assert!(
        errors.len() <= MAX_SIZE,
        "[{}] {} callers failed across a {restart_took:?} restart, more than the {MAX_SIZE} \
         statements that can be in flight at once: {errors:#?}",
        rt.name(),
        errors.len()
    );
    assert!(
        errors.iter().all(|e| e.starts_with("lost=true")),
        "[{}] every error says the connection was lost: {errors:#?}",
        rt.name()
    );
    let stats = pool.inner().statistics();
    let lost = stats.closed.get(Removal::Broken) + stats.closed.get(Removal::FailedCheck);
    assert!(
        lost >= 2,
        "[{}] the restart closed the pool's connections: {stats:?}",
        rt.name()
    );
    rt.wait_until(Duration::from_secs(5), "refilled to min_size", || {
        pool.inner().status().size >= 2
    })
    .await;
    let admin = pool_for(&rt, server.config(&format!("{app}_admin")), |b| {
        b.max_size(1)
    })
    .await;
    end_of_scenario(&rt, &pool, &admin, &app, sampler).await;
}

/// Several hosts are tried in order; `target_session_attrs=read-write` skips a read-only one.
#[allow(clippy::await_holding_lock)]
pub(crate) async fn multi_host_tries_hosts_in_order(rt: Rt) {
    let writable = pg::destructive();
    let writable_port = writable.cluster().expect("ours").port();
    let read_only_port = pg::read_only().cluster().expect("ours").port();
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let connect = |dsn: String| {
        let runtime = rt.pg_runtime();
        async move { Connection::connect_with(PgConfig::from_dsn(&dsn)?, runtime).await }
    };
    let server_port = |mut conn: Connection| async move {
        conn.query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get::<_, i32>(0) as u16
    };

    // Nothing listens on the first host: the second answers.
    let conn = connect(format!(
        "host=127.0.0.1,127.0.0.1 port={closed_port},{read_only_port} user=postgres dbname=postgres"
    ))
    .await
    .unwrap();
    assert_eq!(server_port(conn).await, read_only_port);

    // Any session: the first host that answers, read-only or not.
    let conn = connect(format!(
        "host=127.0.0.1,127.0.0.1 port={read_only_port},{writable_port} user=postgres dbname=postgres"
    ))
    .await
    .unwrap();
    assert_eq!(server_port(conn).await, read_only_port);

    // read-write: the read-only server is skipped.
    let dsn = format!(
        "host=127.0.0.1,127.0.0.1 port={read_only_port},{writable_port} user=postgres \
         dbname=postgres target_session_attrs=read-write"
    );
    let conn = connect(dsn.clone()).await.unwrap();
    assert_eq!(server_port(conn).await, writable_port);

    // Only read-only servers: a typed error naming the host.
    let err = connect(format!(
        "host=127.0.0.1 port={read_only_port} user=postgres dbname=postgres \
         target_session_attrs=read-write"
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");

    // The pool follows the same rules.
    let pool = PgPool::builder(PgConfig::from_dsn(&dsn).unwrap())
        .shared_runtime(rt.pg_runtime())
        .build_eager()
        .await
        .unwrap();
    let port: i32 = pool
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port as u16, writable_port);
    drop(writable);
}

/// Regression: a connection discarded while its request was still in flight (its server
/// silent behind a blackhole) must really close. Its driver used to wait for the answer for
/// ever, keeping the task, the socket and the server session alive.
pub(crate) async fn discarded_connection_with_request_in_flight_closes(rt: Rt) {
    use momopool_tests::proxy::FaultProxy;
    let server = pg::shared();
    let app = unique(&rt, "discard_in_flight");
    let upstream = server.config(&app);
    let port = upstream.ports().first().copied().unwrap_or(5432);
    let proxy = FaultProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    let dsn = format!(
        "postgresql://postgres@127.0.0.1:{}/postgres?application_name={app}",
        proxy.port()
    );
    let pool = pool_for(&rt, PgConfig::from_dsn(&dsn).unwrap(), |b| b.max_size(2)).await;
    let admin = pool_for(&rt, server.config(&format!("{app}_admin")), |b| {
        b.max_size(1)
    })
    .await;
    let pid: i32 = pool
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    proxy.blackhole();
    let err = pool
        .with(momopool_pg::CallOptions::new().timeout(Duration::from_millis(300)))
        .execute("SELECT 1", &[])
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    proxy.pass();

    let mut gone = false;
    for _ in 0..150 {
        let alive: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if alive == 0 {
            gone = true;
            break;
        }
        rt.sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gone,
        "[{}] the discarded connection's server session ended",
        rt.name()
    );
    let one: i32 = pool.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}
