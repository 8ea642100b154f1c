//! Reconnects, restarts and bad input against a real server.

use crate::{pool_for, unique};
use momopool::Removal;
use momopool_pg::throwaway::StopMode;
use momopool_pg::{Connection, Error, PgConfig, PgPool};
use momopool_tests::{Rt, pg};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// B2: a fast restart of the cluster under a query loop; the pool recovers by itself.
#[allow(clippy::await_holding_lock)]
pub(crate) async fn b2_fast_restart_under_query_loop(rt: Rt) {
    let server = pg::destructive();
    let cluster = server.cluster().expect("the destructive server is ours");
    let app = unique(&rt, "b2");
    let pool = pool_for(&rt, server.config(&app), |b| {
        b.min_size(2)
            .max_size(4)
            .reconnect_interval(Duration::from_millis(50))
            .reconnect_max(Duration::from_millis(500))
    })
    .await;
    pool.inner().warm_up().await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let rt2 = rt.clone();
            rt.spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    match pool
                        .with(momopool_pg::CallOptions::new().timeout(Duration::from_secs(5)))
                        .execute("SELECT 1", &[])
                        .await
                    {
                        Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(_) => failed.fetch_add(1, Ordering::SeqCst),
                    };
                    rt2.sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    rt.sleep(Duration::from_millis(300)).await;

    // pg_ctl blocks this thread while the server restarts; on the multi-threaded runtimes
    // the query loop keeps running meanwhile.
    cluster.restart(StopMode::Fast).expect("restart");
    let failed_at_restart = failed.load(Ordering::SeqCst);

    // The first call after the server is back succeeds: no stale connection handed out.
    let row = pool.query_one("SELECT 1", &[]).await;
    assert!(
        row.is_ok(),
        "[{}] first call after restart: {:?}",
        rt.name(),
        row.err()
    );
    rt.sleep(Duration::from_millis(500)).await;
    let ok_before = ok.load(Ordering::SeqCst);
    let failed_before = failed.load(Ordering::SeqCst);
    rt.sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await;
    }
    assert!(
        ok.load(Ordering::SeqCst) > ok_before,
        "queries keep succeeding"
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        failed_before,
        "[{}] no errors once the server is back ({failed_at_restart} around the restart)",
        rt.name()
    );
    rt.wait_until(Duration::from_secs(5), "refilled to min_size", || {
        pool.inner().status().size >= 2
    })
    .await;
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
