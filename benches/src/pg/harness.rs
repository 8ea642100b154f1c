//! Running one measurement in isolation: a fresh Tokio runtime with 2 workers on an OS thread
//! of its own, and a watchdog so that a pool or client that never answers cannot stop the
//! benchmark (see `src/isolate.rs`, shared with pool-bench).

use crate::isolate::{isolated, on_tokio_runtime};
use std::future::Future;

pub(crate) use crate::isolate::Outcome;

/// Worker threads of every run's Tokio runtime.
pub(crate) const WORKERS: usize = 2;

/// Runs the future made by `make` on a fresh multi-thread Tokio runtime ([`WORKERS`]
/// workers, I/O and timers enabled) in a thread of its own, giving up after
/// [`RUN_LIMIT`](crate::isolate::RUN_LIMIT). The runtime is shut down afterwards, which drops
/// every task still running and closes their sockets.
pub(crate) fn on_tokio<T, F, Fut>(make: F) -> Outcome<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, String>>,
{
    isolated(move || {
        on_tokio_runtime(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKERS)
                .enable_all(),
            make,
        )
    })
}
