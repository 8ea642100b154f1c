//! Running one measurement in isolation, shared by `pool-bench` and `pg-bench`: an OS thread
//! of its own, and a watchdog so that a pool or client that never answers cannot stop the
//! benchmark.

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

/// How long one run may take before it counts as hung (setting up, measuring and closing
/// included).
pub(crate) const RUN_LIMIT: Duration = Duration::from_secs(60);

/// How a run ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome<T> {
    /// It finished with this result.
    Done(T),
    /// A checkout or query failed (the error, as text), or the pool could not be set up.
    Failed(String),
    /// It did not finish within [`RUN_LIMIT`].
    Hung,
}

/// Runs `body` on a new thread; `Ok(None)` from it, or no answer within [`RUN_LIMIT`] plus a
/// grace period (a runtime whose workers never yield), means hung.
pub(crate) fn isolated<T, B>(body: B) -> Outcome<T>
where
    T: Send + 'static,
    B: FnOnce() -> Result<Option<T>, String> + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("bench-run".to_owned())
        .spawn(move || {
            let _ = tx.send(body());
        });
    if let Err(e) = spawned {
        return Outcome::Failed(format!("cannot start a thread: {e}"));
    }
    match rx.recv_timeout(RUN_LIMIT + Duration::from_secs(15)) {
        Ok(Ok(Some(value))) => Outcome::Done(value),
        Ok(Ok(None)) | Err(mpsc::RecvTimeoutError::Timeout) => Outcome::Hung,
        Ok(Err(message)) => Outcome::Failed(message),
        Err(mpsc::RecvTimeoutError::Disconnected) => Outcome::Failed("the run panicked".to_owned()),
    }
}

/// For [`isolated`]: builds a Tokio runtime from `builder`, runs the future made by `make` on
/// it for at most [`RUN_LIMIT`] (`Ok(None)` when cut off), then shuts the runtime down, which
/// drops every task still running and closes their sockets.
pub(crate) fn on_tokio_runtime<T, F, Fut>(
    builder: &mut tokio::runtime::Builder,
    make: F,
) -> Result<Option<T>, String>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let rt = builder
        .build()
        .map_err(|e| format!("cannot build a Tokio runtime: {e}"))?;
    let result = rt.block_on(async move { tokio::time::timeout(RUN_LIMIT, make()).await });
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(inner) => inner.map(Some),
        Err(_) => Ok(None),
    }
}
