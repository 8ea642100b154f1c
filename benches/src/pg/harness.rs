//! Running one measurement in isolation: a fresh Tokio runtime with 2 workers on an OS thread
//! of its own, and a watchdog so that a pool or client that never answers cannot stop the
//! benchmark. (`Outcome` and `RUN_LIMIT` have the shape `stats.rs`, shared with pool-bench,
//! expects.)

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

/// How long one run may take before it counts as hung: connecting, warming up, measuring and
/// closing included.
pub(crate) const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Worker threads of every run's Tokio runtime.
pub(crate) const WORKERS: usize = 2;

/// How a run ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome<T> {
    /// It finished with this result.
    Done(T),
    /// A query failed (the error, as text), or the pool or clients could not be set up.
    Failed(String),
    /// It did not finish within [`RUN_LIMIT`].
    Hung,
}

/// Runs the future made by `make` on a fresh multi-thread Tokio runtime ([`WORKERS`]
/// workers, I/O and timers enabled) in a thread of its own, giving up after [`RUN_LIMIT`].
/// The runtime is shut down afterwards, which drops every task still running and closes
/// their sockets.
pub(crate) fn on_tokio<T, F, Fut>(make: F) -> Outcome<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, String>>,
{
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("pg-bench-run".to_owned())
        .spawn(move || {
            let result = (|| {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(WORKERS)
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot build a Tokio runtime: {e}"))?;
                let result =
                    rt.block_on(async move { tokio::time::timeout(RUN_LIMIT, make()).await });
                rt.shutdown_timeout(Duration::from_secs(2));
                match result {
                    Ok(inner) => inner.map(Some),
                    Err(_) => Ok(None),
                }
            })();
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Outcome::Failed(format!("cannot start a thread: {e}"));
    }
    // Grace beyond the run's own limit: a runtime whose workers never yield.
    match rx.recv_timeout(RUN_LIMIT + Duration::from_secs(15)) {
        Ok(Ok(Some(value))) => Outcome::Done(value),
        Ok(Ok(None)) | Err(mpsc::RecvTimeoutError::Timeout) => Outcome::Hung,
        Ok(Err(message)) => Outcome::Failed(message),
        Err(mpsc::RecvTimeoutError::Disconnected) => Outcome::Failed("the run panicked".to_owned()),
    }
}
