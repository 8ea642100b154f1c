//! Shared pieces of momopool's cross-runtime test matrix: the runtime matrix itself, a
//! scripted in-memory manager, and the invariants every scenario ends on.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod matrix;
pub mod pg;
pub mod proxy;
pub mod script;

pub use matrix::{Rt, Task};
pub use script::{Conn, Op, Script, ScriptError, Step};

use momopool::{Manager, Pool};
use std::time::Duration;

/// Checks the accounting every scenario ends on: `size = idle + in_use + creating` and
/// `size <= max_size`.
pub fn assert_accounting<M: Manager>(pool: &Pool<M>) {
    let s = pool.status();
    assert_eq!(
        s.size,
        s.idle + s.in_use + s.creating,
        "size must equal idle + in use + creating: {s:?}"
    );
    assert!(
        s.size <= s.max_size,
        "more connections than max_size: {s:?}"
    );
}

/// The invariants of `../shared/faults.md` for a scripted pool: accounting adds up, never
/// more than `max_size` connections existed or were being created, nobody is left waiting or
/// holding a connection, and a final `get()` succeeds once the fault is gone.
pub async fn assert_invariants(rt: &Rt, pool: &Pool<Script>, script: &Script, max_size: usize) {
    assert_accounting(pool);
    assert!(
        script.counts.peak() <= max_size as i64,
        "[{}] {} connections existed or were being created at once; max_size is {max_size}",
        rt.name(),
        script.counts.peak()
    );
    rt.wait_until(Duration::from_secs(5), "no caller left in the pool", || {
        let s = pool.status();
        s.in_use == 0 && s.waiting == 0
    })
    .await;
    let conn = pool
        .get_timeout(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("[{}] final get() failed: {e}", rt.name()));
    drop(conn);
    assert_accounting(pool);
}
