//! G4: a soak under a seeded random fault schedule, on every runtime.
//!
//! 16 tasks run idempotent reads and (non-idempotent) transaction closures that insert
//! unique keys, all with deadlines, through a fault proxy in front of the tests' own
//! cluster. Every 0.5 to 2 s the schedule injects one fault: added latency, a reset of every
//! connection, a blackhole, a refused listener, a fast restart of the server, or
//! `pg_terminate_backend` of the pool's backends.
//!
//! At the end it reports operations run, errors inside and outside fault windows, keys
//! inserted twice, the longest operation against its deadline and the time to 100 % success
//! once the faults stop, and asserts: no error outside a fault window (a window lasts until
//! the fault is removed plus the statement deadline and detection time), no key twice, every
//! operation ended by its deadline, success again within 2 s.
//!
//! The default run is short (8 s of faults per runtime). For a long run:
//! `MOMOPOOL_SOAK_SECS=600 cargo test -p momopool-tests --test soak -- --nocapture`;
//! `MOMOPOOL_SOAK_SEED=<n>` replays a schedule.

use momopool::Validation;
use momopool_pg::throwaway::StopMode;
use momopool_pg::{CallOptions, PgConfig, PgPool};
use momopool_tests::proxy::{FaultProxy, Kill};
use momopool_tests::{Rt, pg};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every operation's deadline.
const DEADLINE: Duration = Duration::from_secs(2);
/// How long after a fault is removed its effects may still show (dead connections found by
/// deadlines and checks).
const RECOVERY: Duration = Duration::from_millis(2500);
/// Slack past the deadline on a loaded 2-core machine.
const EPSILON: Duration = Duration::from_millis(500);

struct Op {
    started: Instant,
    ended: Instant,
    error: Option<String>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, low_ms: u64, high_ms: u64) -> Duration {
        Duration::from_millis(low_ms + self.next() % (high_ms - low_ms + 1))
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// The destructive cluster's lock is held for the whole test on purpose: it serializes the
// test threads (each runs its body inside its own `block_on`).
#[allow(clippy::await_holding_lock)]
async fn g4_soak_with_random_faults(rt: Rt) {
    let soak = Duration::from_secs(env_u64("MOMOPOOL_SOAK_SECS", 8));
    let seed = env_u64("MOMOPOOL_SOAK_SEED", 0x5eed_2026) ^ rt.name().len() as u64;
    let server = pg::destructive();
    let cluster = server.cluster().expect("the destructive server is ours");
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], cluster.port()))).unwrap();
    let app = format!("soak_{}", rt.name().replace('-', "_"));
    let table = app.clone();

    let admin = PgPool::builder(server.config(&format!("{app}_admin")))
        .shared_runtime(rt.pg_runtime())
        .min_size(0)
        .max_size(2)
        .build()
        .unwrap();
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (key text NOT NULL)"
        ))
        .await
        .unwrap();

    let dsn = format!(
        "postgresql://postgres@127.0.0.1:{}/postgres?application_name={app}",
        proxy.port()
    );
    let pool = PgPool::builder(PgConfig::from_dsn(&dsn).unwrap())
        .shared_runtime(rt.pg_runtime())
        .min_size(2)
        .max_size(8)
        .configure(|b| {
            b.create_timeout(Duration::from_secs(1))
                .recycle_timeout(Duration::from_millis(300))
                .validation(Validation::IdleLongerThan(Duration::from_millis(100)))
                .reconnect_interval(Duration::from_millis(50))
                .reconnect_max(Duration::from_millis(400))
                .wait_timeout(DEADLINE)
        })
        .build_eager()
        .await
        .unwrap();

    let ops = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..16u64)
        .map(|task| {
            let (pool, ops, stop, rt2) = (pool.clone(), ops.clone(), stop.clone(), rt.clone());
            let insert = format!("INSERT INTO {table} (key) VALUES ($1)");
            let count = format!("SELECT count(*) FROM {table}");
            rt.spawn(async move {
                let mut rng = Rng(seed ^ (task + 1).wrapping_mul(0x9e37_79b9));
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let result = if rng.next() % 2 == 0 {
                        let calls = pool.with(CallOptions::new().timeout(DEADLINE).idempotent());
                        rt2.timeout(DEADLINE + EPSILON, calls.query_one(&count, &[]))
                            .await
                            .map(|r| r.map(drop))
                    } else {
                        seq += 1;
                        let key = format!("{task}-{seq}");
                        let insert = insert.clone();
                        let calls = pool.with(CallOptions::new().timeout(DEADLINE));
                        let write = calls.transaction_with(move |tx| {
                            let (insert, key) = (insert.clone(), key.clone());
                            Box::pin(async move { tx.execute(&insert, &[&key]).await.map(drop) })
                        });
                        rt2.timeout(DEADLINE + EPSILON, write).await
                    };
                    let error = match result {
                        None => Some("hung past its deadline".to_string()),
                        Some(Ok(())) => None,
                        Some(Err(e)) => Some(e.to_string()),
                    };
                    let failed = error.is_some();
                    ops.lock().unwrap().push(Op {
                        started,
                        ended: Instant::now(),
                        error,
                    });
                    if failed {
                        rt2.sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();

    // The fault schedule.
    let mut rng = Rng(seed);
    let mut windows: Vec<(Instant, Instant, &'static str)> = Vec::new();
    let soak_started = Instant::now();
    while soak_started.elapsed() < soak {
        rt.sleep(rng.between(500, 2000)).await;
        let began = Instant::now();
        let kind = match rng.next() % 6 {
            0 => {
                proxy.delay(rng.between(10, 80));
                rt.sleep(rng.between(300, 1000)).await;
                proxy.delay(Duration::ZERO);
                "delay"
            }
            1 => {
                proxy.kill_all(Kill::Rst);
                "reset"
            }
            2 => {
                proxy.blackhole();
                rt.sleep(rng.between(300, 1000)).await;
                proxy.pass();
                "blackhole"
            }
            3 => {
                proxy.refuse();
                proxy.kill_all(Kill::Fin);
                rt.sleep(rng.between(300, 1000)).await;
                proxy.pass();
                "refused"
            }
            4 => {
                let mut child = cluster.restart_in_background(StopMode::Fast).unwrap();
                while child.try_wait().unwrap().is_none() {
                    rt.sleep(Duration::from_millis(20)).await;
                }
                "restart"
            }
            _ => {
                let _ = admin
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = $1",
                        &[&app],
                    )
                    .await;
                "terminate"
            }
        };
        windows.push((began, Instant::now(), kind));
    }
    let faults_ended = Instant::now();
    proxy.pass();
    proxy.delay(Duration::ZERO);
    rt.sleep(RECOVERY + Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await;
    }

    // The report.
    let ops = std::mem::take(&mut *ops.lock().unwrap());
    let in_window = |op: &Op| {
        windows
            .iter()
            .any(|(from, to, _)| op.ended >= *from && op.started <= *to + RECOVERY)
    };
    let errors: Vec<&Op> = ops.iter().filter(|op| op.error.is_some()).collect();
    let outside: Vec<&Op> = errors.iter().copied().filter(|op| !in_window(op)).collect();
    let longest = ops
        .iter()
        .map(|op| op.ended.duration_since(op.started))
        .max()
        .unwrap_or_default();
    let recovery = errors
        .iter()
        .filter(|op| op.started >= faults_ended)
        .map(|op| op.started.duration_since(faults_ended))
        .max()
        .unwrap_or_default();
    let twice: i64 = admin
        .query_one(
            &format!(
                "SELECT count(*) FROM (SELECT key FROM {table} GROUP BY key HAVING count(*) > 1) d"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let kinds: Vec<&str> = windows.iter().map(|w| w.2).collect();
    eprintln!(
        "[{}] soak seed {seed:#x}: {} faults {kinds:?}; {} operations, {} errors ({} outside \
         fault windows), {twice} keys inserted twice, longest operation {longest:?} against a \
         {DEADLINE:?} deadline, errors stopped {recovery:?} after the faults did",
        rt.name(),
        windows.len(),
        ops.len(),
        errors.len(),
        outside.len(),
    );
    for op in outside.iter().take(5) {
        eprintln!(
            "  outside a window: {:?} after start: {}",
            op.started.duration_since(soak_started),
            op.error.as_deref().unwrap_or_default()
        );
    }
    assert!(ops.len() > 100, "the soak ran operations");
    assert!(
        outside.is_empty(),
        "[{}] errors outside fault windows",
        rt.name()
    );
    assert_eq!(twice, 0, "no key inserted twice");
    assert!(
        longest <= DEADLINE + EPSILON,
        "every operation ended by its deadline"
    );
    assert!(
        recovery <= Duration::from_secs(2),
        "100 % success within 2 s"
    );

    // The invariants: accounting, a final call, and the server agrees with the pool.
    let status = pool.inner().status();
    assert_eq!(status.size, status.idle + status.in_use + status.creating);
    assert!(status.size <= 8);
    pool.execute("SELECT 1", &[]).await.unwrap();
    let mut agreed = false;
    for _ in 0..100 {
        let backends: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        if backends as usize == pool.inner().status().size {
            agreed = true;
            break;
        }
        rt.sleep(Duration::from_millis(50)).await;
    }
    assert!(
        agreed,
        "[{}] the server's backends match the pool's size",
        rt.name()
    );
    admin
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

momopool_tests::matrix!(g4_soak_with_random_faults);
