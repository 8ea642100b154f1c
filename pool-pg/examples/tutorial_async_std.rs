//! The tutorial's steps 1, 2 and 4 on async-std instead of Tokio: the same momopool-pg code,
//! with the runtime picked by a feature and passed to the pool.
//!
//! ```sh
//! cargo run -p momopool-pg --example tutorial_async_std --features rt-async-std
//! ```
//!
//! `rt-async-std` makes momopool-pg open its sockets and spawn its connection drivers on
//! async-std (`momopool_pg::AsyncStd`); no Tokio runtime is started. As in `tutorial`, the server is
//! the one named by `DATABASE_URL`, or else a throwaway cluster from the local PostgreSQL
//! server binaries, removed at the end.
//!
//! async-std is deprecated upstream in favour of smol; this example is for code bases that still
//! run on it.

use futures::TryStreamExt;
use momopool_pg::throwaway::Cluster;
use momopool_pg::{AsyncStd, Connection, PgConfig, PgPool, PgRuntime};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    // `DATABASE_URL`, or a throwaway cluster that is removed when `_cluster` is dropped.
    let (url, _cluster) = match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => (url, None),
        None => match Cluster::start() {
            Ok(cluster) => (cluster.url(), Some(cluster)),
            Err(err) => {
                eprintln!("error: could not start PostgreSQL: {err}");
                return ExitCode::FAILURE;
            }
        },
    };
    match async_std::task::block_on(run(&url)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str) -> Result<(), Error> {
    let runtime: Arc<dyn PgRuntime> = Arc::new(AsyncStd);
    let config = PgConfig::from_dsn(url)?.application_name("momopool-tutorial-async-std");

    println!("== step 1: a standalone connection on async-std");
    let mut conn = Connection::connect_with(config.clone(), Arc::clone(&runtime)).await?;
    let one: i32 = conn.query_one("SELECT 1", &[]).await?.get(0);
    println!("SELECT 1 -> {one} (backend pid {})", conn.backend_pid());
    drop(conn);

    println!("\n== step 2: a pool; three queries in parallel");
    let pool = PgPool::builder(config)
        .shared_runtime(runtime)
        .min_size(1)
        .max_size(3)
        .build_eager()
        .await?;
    let sleep = "SELECT $1::int FROM pg_sleep(0.5)";
    let t = Instant::now();
    let (q1, q2, q3) = futures::try_join!(
        pool.execute(sleep, &[&1i32]),
        pool.execute(sleep, &[&2i32]),
        pool.execute(sleep, &[&3i32]),
    )?;
    println!(
        "Q1: {}, Q2: {}, Q3: {} -- three pg_sleep(0.5) took {:.2?} together",
        q1[0].get::<_, i32>(0),
        q2[0].get::<_, i32>(0),
        q3[0].get::<_, i32>(0),
        t.elapsed()
    );

    println!("\n== step 4: one connection for a server-side cursor");
    let mut conn = pool.get().await?;
    let rows = conn.cursor("SELECT generate_series(1, 1000)", &[], 10);
    let (count, sum) = rows
        .try_fold((0u32, 0i64), |(count, sum), row| async move {
            Ok((count + 1, sum + i64::from(row.get::<_, i32>(0))))
        })
        .await?;
    println!("{count} integers in chunks of 10, sum {sum}");
    drop(conn);

    let status = pool.inner().status();
    println!("\npool: {} connections, {} idle", status.size, status.idle);
    pool.close();
    Ok(())
}
