//! Momoko's tutorial, step by step, on momopool-pg.
//!
//! ```sh
//! cargo run --example tutorial              # walk through the steps and print what each shows
//! cargo run --example tutorial -- --serve   # run the tutorial's web application instead
//! ```
//!
//! The server: the one named by `DATABASE_URL` when it is set; otherwise a throwaway cluster
//! started from the PostgreSQL server binaries on this machine (`initdb`, `pg_ctl`), which is
//! stopped and deleted when the program ends. With neither, the program says what to install
//! and exits with an error.
//!
//! The steps:
//!
//! 1. a standalone [`Connection`] and `SELECT 1`;
//! 2. a [`PgPool`]; `execute`; three `pg_sleep(0.5)` queries in parallel;
//! 3. `callproc`, `transaction` (a list of statements), `transaction_with` (a closure),
//!    `mogrify`;
//! 4. borrowing one connection (Momoko's `getconn`/`manage`) for a server-side cursor that
//!    streams 1000 integers in chunks of 10;
//! 5. stretching: a burst of slow queries on a pool of 1 to 5 connections, and the pool
//!    shrinking back once they are idle;
//! 6. reconnecting: every connection of the pool is killed from the server side, and the next
//!    queries just work, on new connections.
//!
//! With `--serve`, an HTTP server on `127.0.0.1:8888` (axum on Tokio) runs the same queries
//! through one pool until Ctrl-C. Its routes:
//!
//! | route          | what it runs                                                         |
//! |----------------|----------------------------------------------------------------------|
//! | `/`            | `SELECT 1`                                                           |
//! | `/parallel`    | three `pg_sleep(0.5)` queries at once, and the time they took together |
//! | `/callproc`    | `callproc("momopool_tutorial_squares", 5)`: a set-returning function |
//! | `/transaction` | a transfer between two accounts as one transaction, then the balances |
//! | `/mogrify`     | a statement with its parameters inlined as SQL literals              |
//! | `/cursor`      | 1000 integers through a server-side cursor, 10 per round trip        |
//! | `/status`      | the pool's status and statistics                                     |
//!
//! The tutorial creates a table (`momopool_tutorial_accounts`) and a function
//! (`momopool_tutorial_squares`) in the connected database and drops them at the end.

use futures::TryStreamExt;
use momopool::Removal;
use momopool_pg::throwaway::Cluster;
use momopool_pg::{Connection, PgConfig, PgPool};
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Where the server is: `DATABASE_URL`, or a throwaway cluster removed on drop.
struct Server {
    url: String,
    _cluster: Option<Cluster>,
}

impl Server {
    fn start() -> Result<Server, Error> {
        if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
            println!("using the server named by DATABASE_URL");
            return Ok(Server {
                url,
                _cluster: None,
            });
        }
        println!("DATABASE_URL is not set: starting a throwaway PostgreSQL cluster...");
        let started = Instant::now();
        let cluster = Cluster::start()?;
        println!(
            "cluster up on {}:{} in {:.1?}",
            cluster.host(),
            cluster.port(),
            started.elapsed()
        );
        Ok(Server {
            url: cluster.url(),
            _cluster: Some(cluster),
        })
    }
}

fn main() -> ExitCode {
    let mut serve = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--serve" => serve = true,
            other => {
                eprintln!("unknown argument `{other}`; usage: tutorial [--serve]");
                return ExitCode::from(2);
            }
        }
    }
    let server = match Server::start() {
        Ok(server) => server,
        Err(err) => {
            eprintln!("error: could not start PostgreSQL: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: could not start Tokio: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        if serve {
            web::serve(&server.url).await
        } else {
            tutorial(&server.url).await
        }
    });
    // Let the runtime's tasks (connection drivers) end before the server goes away.
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(server);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The application name of the tutorial's main pool, as seen in `pg_stat_activity`.
const APP: &str = "momopool-tutorial";

async fn tutorial(url: &str) -> Result<(), Error> {
    let started = Instant::now();
    let config = PgConfig::from_dsn(url)?;

    step(1, "a standalone connection");
    let mut conn = Connection::connect(url).await?;
    let one: i32 = conn.query_one("SELECT 1", &[]).await?.get(0);
    println!("SELECT 1 -> {one} (backend pid {})", conn.backend_pid());
    drop(conn);

    step(2, "a pool; execute; three queries in parallel");
    let pool = PgPool::builder(config.clone().application_name(APP))
        .min_size(1)
        .max_size(10)
        .build_eager()
        .await?;
    let rows = pool.execute("SELECT $1::int + 1", &[&41i32]).await?;
    println!("execute: SELECT 41 + 1 -> {}", rows[0].get::<_, i32>(0));
    let sleep = "SELECT $1::int FROM pg_sleep(0.5)";
    let t = Instant::now();
    let (q1, q2, q3) = futures::try_join!(
        pool.execute(sleep, &[&1i32]),
        pool.execute(sleep, &[&2i32]),
        pool.execute(sleep, &[&3i32]),
    )?;
    println!(
        "Q1: {}, Q2: {}, Q3: {} -- three pg_sleep(0.5) took {:.2?} together (1.5 s one after another)",
        q1[0].get::<_, i32>(0),
        q2[0].get::<_, i32>(0),
        q3[0].get::<_, i32>(0),
        t.elapsed()
    );
    println!("pool: {}", describe(&pool));

    step(3, "callproc, transaction, transaction_with, mogrify");
    create_schema(&pool).await?;
    let outcome = stored_procedures_and_transactions(&pool).await;
    drop_schema(&pool).await?;
    outcome?;

    step(
        4,
        "one connection for a server-side cursor (getconn/manage)",
    );
    read_with_cursor(&pool).await?;

    step(
        5,
        "stretching to max_size under load, shrinking back when idle",
    );
    stretch_and_shrink(&config).await?;

    step(6, "reconnecting after every connection was killed");
    reconnect(&pool, &config).await?;

    pool.close();
    println!("\ndone in {:.1?}", started.elapsed());
    Ok(())
}

fn step(n: u32, title: &str) {
    println!("\n== step {n}: {title}");
}

/// One line about the pool's connections.
fn describe(pool: &PgPool) -> String {
    let s = pool.inner().status();
    format!(
        "size {}/{} (min {}): {} idle, {} in use, {} connecting, {} waiting",
        s.size, s.max_size, s.min_size, s.idle, s.in_use, s.creating, s.waiting
    )
}

const SCHEMA: &str = "
    DROP TABLE IF EXISTS momopool_tutorial_accounts;
    CREATE TABLE momopool_tutorial_accounts (
        owner text PRIMARY KEY,
        balance int NOT NULL CHECK (balance >= 0)
    );
    INSERT INTO momopool_tutorial_accounts VALUES ('alice', 100), ('bob', 50);
    CREATE OR REPLACE FUNCTION momopool_tutorial_squares(n int)
        RETURNS TABLE (i int, square int)
        LANGUAGE sql
        AS $$ SELECT g, g * g FROM generate_series(1, n) AS g $$;
";

async fn create_schema(pool: &PgPool) -> Result<(), momopool_pg::Error> {
    pool.batch_execute(SCHEMA).await
}

async fn drop_schema(pool: &PgPool) -> Result<(), momopool_pg::Error> {
    pool.batch_execute(
        "DROP TABLE IF EXISTS momopool_tutorial_accounts;
         DROP FUNCTION IF EXISTS momopool_tutorial_squares(int);",
    )
    .await
}

async fn balances(pool: &PgPool) -> Result<String, momopool_pg::Error> {
    let rows = pool
        .execute(
            "SELECT owner, balance FROM momopool_tutorial_accounts ORDER BY owner",
            &[],
        )
        .await?;
    Ok(format_balances(&rows))
}

fn format_balances(rows: &[momopool_pg::Row]) -> String {
    let parts: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {}", r.get::<_, String>(0), r.get::<_, i32>(1)))
        .collect();
    parts.join(", ")
}

async fn stored_procedures_and_transactions(pool: &PgPool) -> Result<(), Error> {
    let rows = pool.callproc("momopool_tutorial_squares", &[&5i32]).await?;
    let squares: Vec<String> = rows
        .iter()
        .map(|r| format!("{}²={}", r.get::<_, i32>(0), r.get::<_, i32>(1)))
        .collect();
    println!(
        "callproc momopool_tutorial_squares(5) -> {}",
        squares.join(" ")
    );

    println!("balances: {}", balances(pool).await?);
    let results = pool
        .transaction(&[
            (
                "UPDATE momopool_tutorial_accounts SET balance = balance - $1 WHERE owner = $2",
                &[&30i32, &"alice"],
            ),
            (
                "UPDATE momopool_tutorial_accounts SET balance = balance + $1 WHERE owner = $2",
                &[&30i32, &"bob"],
            ),
            (
                "SELECT owner, balance FROM momopool_tutorial_accounts ORDER BY owner",
                &[],
            ),
        ])
        .await?;
    println!(
        "transaction (3 statements): alice pays bob 30 -> {}",
        format_balances(&results[2])
    );

    let total: i32 = pool
        .transaction_with(|tx| {
            Box::pin(async move {
                tx.execute(
                    "UPDATE momopool_tutorial_accounts SET balance = balance - 20 WHERE owner = 'bob'",
                    &[],
                )
                .await?;
                tx.execute(
                    "UPDATE momopool_tutorial_accounts SET balance = balance + 20 WHERE owner = 'alice'",
                    &[],
                )
                .await?;
                let row = tx
                    .query_one(
                        "SELECT sum(balance)::int FROM momopool_tutorial_accounts",
                        &[],
                    )
                    .await?;
                Ok(row.get(0))
            })
        })
        .await?;
    println!(
        "transaction_with (closure): bob pays alice 20 -> {} (total still {total})",
        balances(pool).await?
    );

    let refused = pool
        .transaction_with(|tx| {
            Box::pin(async move {
                tx.execute(
                    "UPDATE momopool_tutorial_accounts SET balance = balance + 1000 WHERE owner = 'alice'",
                    &[],
                )
                .await?;
                tx.execute(
                    "UPDATE momopool_tutorial_accounts SET balance = balance - 1000 WHERE owner = 'bob'",
                    &[],
                )
                .await?;
                Ok(())
            })
        })
        .await;
    match refused {
        Ok(()) => return Err("an overdraft was committed".into()),
        Err(err) => println!(
            "transaction_with, overdraft: refused (SQLSTATE {}) and rolled back -> {}",
            err.code().map_or("?", |c| c.code()),
            balances(pool).await?
        ),
    }

    let text = pool
        .mogrify(
            "SELECT * FROM momopool_tutorial_accounts WHERE owner = $1 AND balance > $2",
            &[&"O'Reilly", &10i32],
        )
        .await?;
    println!("mogrify -> {text}");
    Ok(())
}

async fn read_with_cursor(pool: &PgPool) -> Result<(), Error> {
    let mut conn = pool.get().await?;
    println!(
        "borrowed backend pid {}: {}",
        conn.backend_pid(),
        describe(pool)
    );
    let mut rows = std::pin::pin!(conn.cursor("SELECT generate_series(1, 1000)", &[], 10));
    let (mut count, mut sum) = (0u32, 0i64);
    while let Some(row) = rows.try_next().await? {
        let n: i32 = row.get(0);
        count += 1;
        sum += i64::from(n);
        if count % 200 == 0 {
            println!(
                "  {count:>4} integers so far (the last one {n}), {} fetches of 10",
                count / 10
            );
        }
    }
    println!("cursor done: {count} integers, sum {sum}; the connection goes back to the pool");
    Ok(())
}

async fn stretch_and_shrink(config: &PgConfig) -> Result<(), Error> {
    let pool = PgPool::builder(config.clone().application_name("momopool-tutorial-stretch"))
        .min_size(1)
        .max_size(5)
        .configure(|b| {
            b.idle_timeout(Duration::from_secs(1))
                .maintenance_interval(Duration::from_millis(250))
        })
        .build_eager()
        .await?;
    println!("min 1, max 5, idle_timeout 1 s, maintenance every 250 ms");
    println!("  +0.00s {}", describe(&pool));

    let t = Instant::now();
    let mut last = String::new();
    let mut report = |pool: &PgPool| {
        let now = describe(pool);
        if now != last {
            println!("  {:+.2}s {now}", t.elapsed().as_secs_f64());
            last = now;
        }
    };

    // Ten slow queries at once: five run, five wait, the pool opens connections up to 5.
    let burst = (0..10).map(|_| pool.execute("SELECT pg_sleep(0.4)", &[]));
    let mut burst = std::pin::pin!(futures::future::try_join_all(burst));
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            done = &mut burst => {
                done?;
                break;
            }
            _ = tick.tick() => report(&pool),
        }
    }
    println!("  burst of 10 × pg_sleep(0.4) done in {:.2?}", t.elapsed());

    // Idle connections above min_size are closed after idle_timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.inner().status().size > 1 && Instant::now() < deadline {
        report(&pool);
        tick.tick().await;
    }
    report(&pool);
    let stats = pool.inner().statistics();
    println!(
        "  shrunk back to {}: {} connections opened, {} closed as idle",
        pool.inner().status().size,
        stats.created,
        stats.closed.get(Removal::Idle)
    );
    pool.close();
    Ok(())
}

async fn backend_pids(pool: &PgPool, n: usize) -> Result<BTreeSet<i32>, momopool_pg::Error> {
    let calls =
        (0..n).map(|_| pool.query_one("SELECT pg_backend_pid(), pg_sleep(0.05)::text", &[]));
    let rows = futures::future::try_join_all(calls).await?;
    Ok(rows.iter().map(|r| r.get::<_, i32>(0)).collect())
}

async fn reconnect(pool: &PgPool, config: &PgConfig) -> Result<(), Error> {
    let before = backend_pids(pool, 3).await?;
    println!("the pool's backends: {before:?} ({})", describe(pool));

    let admin = PgPool::builder(config.clone().application_name("momopool-tutorial-admin"))
        .max_size(1)
        .build_eager()
        .await?;
    let killed = admin
        .execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&APP],
        )
        .await?;
    let killed: Vec<i32> = killed.iter().map(|r| r.get(0)).collect();
    println!("terminated from a second pool: {killed:?}");

    let t = Instant::now();
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&APP],
            )
            .await?
            .get(0);
        if left == 0 {
            break;
        }
        if t.elapsed() > Duration::from_secs(10) {
            return Err(
                format!("{left} backends still alive 10 s after pg_terminate_backend").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "all gone after {:.2?}; now querying through the same pool...",
        t.elapsed()
    );

    let t = Instant::now();
    let one: i32 = pool.query_one("SELECT 1", &[]).await?.get(0);
    let after = backend_pids(pool, 3).await?;
    println!(
        "SELECT 1 -> {one}, then 3 parallel queries on backends {after:?}: no error, {:.2?}",
        t.elapsed()
    );
    if !after.is_disjoint(&before) {
        return Err(
            format!("a killed backend answered: before {before:?}, after {after:?}").into(),
        );
    }
    let stats = pool.inner().statistics();
    println!(
        "old backends {before:?} -> new backends {after:?}; the pool closed {} dead connections, \
         opened {} in all, revalidated {} time(s)",
        stats.closed.get(Removal::Broken) + stats.closed.get(Removal::FailedCheck),
        stats.created,
        stats.revalidations
    );
    admin.close();
    Ok(())
}

/// The tutorial's web application (`--serve`).
mod web {
    use super::{Error, balances, create_schema, describe, drop_schema, format_balances};
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use axum::{Router, serve as serve_http};
    use futures::TryStreamExt;
    use momopool_pg::{PgConfig, PgPool};
    use std::time::Instant;

    const ADDR: &str = "127.0.0.1:8888";

    pub(super) async fn serve(url: &str) -> Result<(), Error> {
        let pool =
            PgPool::builder(PgConfig::from_dsn(url)?.application_name("momopool-tutorial-web"))
                .min_size(1)
                .max_size(10)
                .build_eager()
                .await?;
        create_schema(&pool).await?;
        let app = Router::new()
            .route("/", get(select_one))
            .route("/parallel", get(parallel))
            .route("/callproc", get(callproc))
            .route("/transaction", get(transaction))
            .route("/mogrify", get(mogrify))
            .route("/cursor", get(cursor))
            .route("/status", get(status))
            .with_state(pool.clone());
        let listener = tokio::net::TcpListener::bind(ADDR)
            .await
            .map_err(|e| format!("could not listen on {ADDR}: {e}"))?;
        println!(
            "serving on http://{ADDR}/ (routes: / /parallel /callproc /transaction /mogrify /cursor /status); Ctrl-C to stop"
        );
        let served = serve_http(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
                println!("\nCtrl-C: stopping");
            })
            .await;
        let dropped = drop_schema(&pool).await;
        pool.close();
        served?;
        dropped?;
        Ok(())
    }

    /// A failed statement, as a 500 response naming the error.
    struct Failure(momopool_pg::Error);

    impl From<momopool_pg::Error> for Failure {
        fn from(err: momopool_pg::Error) -> Self {
            Failure(err)
        }
    }

    impl IntoResponse for Failure {
        fn into_response(self) -> Response {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("error: {}\n", self.0),
            )
                .into_response()
        }
    }

    type Reply = Result<String, Failure>;

    async fn select_one(State(pool): State<PgPool>) -> Reply {
        let row = pool.query_one("SELECT 1", &[]).await?;
        Ok(format!("Results: {}\n", row.get::<_, i32>(0)))
    }

    async fn parallel(State(pool): State<PgPool>) -> Reply {
        let sql = "SELECT $1::int FROM pg_sleep(0.5)";
        let t = Instant::now();
        let (q1, q2, q3) = futures::try_join!(
            pool.execute(sql, &[&1i32]),
            pool.execute(sql, &[&2i32]),
            pool.execute(sql, &[&3i32]),
        )?;
        Ok(format!(
            "Q1: {}\nQ2: {}\nQ3: {}\nthree pg_sleep(0.5) took {:.2?} together\n",
            q1[0].get::<_, i32>(0),
            q2[0].get::<_, i32>(0),
            q3[0].get::<_, i32>(0),
            t.elapsed()
        ))
    }

    async fn callproc(State(pool): State<PgPool>) -> Reply {
        let rows = pool.callproc("momopool_tutorial_squares", &[&5i32]).await?;
        let mut out = String::from("momopool_tutorial_squares(5):\n");
        for row in rows {
            out.push_str(&format!(
                "{} {}\n",
                row.get::<_, i32>(0),
                row.get::<_, i32>(1)
            ));
        }
        Ok(out)
    }

    async fn transaction(State(pool): State<PgPool>) -> Reply {
        let before = balances(&pool).await?;
        let moved = pool
            .transaction(&[
                (
                    "UPDATE momopool_tutorial_accounts SET balance = balance - $1 WHERE owner = $2",
                    &[&10i32, &"alice"],
                ),
                (
                    "UPDATE momopool_tutorial_accounts SET balance = balance + $1 WHERE owner = $2",
                    &[&10i32, &"bob"],
                ),
                (
                    "SELECT owner, balance FROM momopool_tutorial_accounts ORDER BY owner",
                    &[],
                ),
            ])
            .await;
        match moved {
            Ok(results) => Ok(format!(
                "before: {before}\nalice pays bob 10, in one transaction\nafter: {}\n",
                format_balances(&results[2])
            )),
            // The CHECK (balance >= 0) refuses once alice is out of money: nothing was applied.
            Err(err) if err.code().is_some() => Ok(format!(
                "before: {before}\nalice pays bob 10: refused ({err}), rolled back\nafter: {}\n",
                balances(&pool).await?
            )),
            Err(err) => Err(err.into()),
        }
    }

    async fn mogrify(State(pool): State<PgPool>) -> Reply {
        let text = pool
            .mogrify(
                "SELECT * FROM momopool_tutorial_accounts WHERE owner = $1 AND balance > $2",
                &[&"O'Reilly", &10i32],
            )
            .await?;
        Ok(format!("{text}\n"))
    }

    async fn cursor(State(pool): State<PgPool>) -> Reply {
        let mut conn = pool.get().await?;
        let pid = conn.backend_pid();
        let rows = conn.cursor("SELECT generate_series(1, 1000)", &[], 10);
        let (count, sum) = rows
            .try_fold((0u32, 0i64), |(count, sum), row| async move {
                Ok((count + 1, sum + i64::from(row.get::<_, i32>(0))))
            })
            .await?;
        Ok(format!(
            "{count} integers in chunks of 10 through a server-side cursor on backend {pid}; sum {sum}\n"
        ))
    }

    async fn status(State(pool): State<PgPool>) -> Reply {
        let stats = pool.inner().statistics();
        Ok(format!(
            "{}\ngets: {} served at once, {} after waiting, {} timed out\n\
             connections: {} opened, {} closed\n",
            describe(&pool),
            stats.gets_direct,
            stats.gets_waited,
            stats.gets_timed_out,
            stats.created,
            stats.closed.total()
        ))
    }
}
