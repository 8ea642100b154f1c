//! The floor: the least a fair pool can do, run as a reference point.
//!
//! One mutex guards the idle connections and a first-come-first-served queue of waiting
//! callers; a returned connection goes straight to the oldest waiter, who is woken. Nothing
//! else: no timeouts, no statistics, no health checks, no size accounting, and it is not cancel
//! safe (a caller dropped while queued loses the connection handed to it). It is not a pool to
//! use. Under contention every fair pool pays for the same wake-up per checkout; this one pays
//! for little more, so its figures show what the runtime itself allows, and the distance from
//! it to momopool is what momopool's guarantees cost.

use crate::pools::{BenchPool, Conn};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};

/// Where one queued caller receives its connection.
#[derive(Default)]
struct Slot {
    conn: Option<Conn>,
    waker: Option<Waker>,
}

/// What the pool's mutex guards.
#[derive(Default)]
struct Inner {
    idle: Vec<Conn>,
    queue: VecDeque<Arc<Mutex<Slot>>>,
}

/// A handle to the floor pool.
#[derive(Clone, Default)]
pub(crate) struct Floor {
    inner: Arc<Mutex<Inner>>,
}

impl Floor {
    /// A pool of `size` connections, all idle.
    pub(crate) fn new(size: usize) -> Self {
        let idle = (0..size as u64).map(|id| Conn { id }).collect();
        Floor {
            inner: Arc::new(Mutex::new(Inner {
                idle,
                queue: VecDeque::new(),
            })),
        }
    }

    fn give_back(&self, conn: Conn) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match inner.queue.pop_front() {
            Some(slot) => {
                drop(inner);
                let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
                slot.conn = Some(conn);
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            }
            None => inner.idle.push(conn),
        }
    }
}

/// A connection checked out of the floor pool; returned when dropped.
pub(crate) struct FloorGuard<'a> {
    pool: &'a Floor,
    conn: Option<Conn>,
}

impl Deref for FloorGuard<'_> {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl Drop for FloorGuard<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn);
        }
    }
}

impl BenchPool for Floor {
    type Guard<'a> = FloorGuard<'a>;

    async fn checkout(&self) -> Result<FloorGuard<'_>, String> {
        let slot = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if inner.queue.is_empty() {
                if let Some(conn) = inner.idle.pop() {
                    return Ok(FloorGuard {
                        pool: self,
                        conn: Some(conn),
                    });
                }
            }
            let slot = Arc::new(Mutex::new(Slot::default()));
            inner.queue.push_back(Arc::clone(&slot));
            slot
        };
        let conn = poll_fn(|cx| {
            let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
            match slot.conn.take() {
                Some(conn) => Poll::Ready(conn),
                None => {
                    slot.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        Ok(FloorGuard {
            pool: self,
            conn: Some(conn),
        })
    }
}
