//! One caller waiting in the pool's queue.
//!
//! A waiter is a small slot shared between the waiting `get()` future and the pool. The pool
//! fills it (a connection, or an error) while holding the pool lock and then wakes the caller;
//! the caller takes the result out. The pool lock is always taken before a slot lock, never
//! the other way round, and the caller's poll only takes the slot lock.

use crate::clock::Moment;
use crate::error::PoolError;
use crate::manager::Manager;
use crate::shared::{Boxed, Handout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

pub(crate) struct Waiter<M: Manager> {
    slot: Mutex<Slot<M>>,
    pub(crate) enqueued: Moment,
    /// The caller's deadline and the timeout it came from.
    deadline: Option<(Moment, Duration)>,
    /// The pool's deadline task times this caller out (set under the pool lock before the
    /// waiter is queued, read under it).
    pool_timed: AtomicBool,
}

enum Slot<M: Manager> {
    Waiting(Option<Waker>),
    Served(Boxed<M>),
    /// Boxed: errors are rare, and the slot's size is paid by every waiting caller.
    Failed(Box<PoolError<M::Error>>),
    /// The caller gave up; the slot stays in the queue until the pool skips or compacts it.
    Cancelled,
    /// The caller took its result.
    Done,
}

/// What cancelling a waiter found in its slot.
pub(crate) enum Cancelled<M: Manager> {
    /// It was still waiting: now it is cancelled.
    WasWaiting,
    /// A connection had already been handed to it.
    Served(Boxed<M>),
    /// An error had already been delivered to it.
    Failed(PoolError<M::Error>),
    /// Nothing to do: already cancelled or finished.
    Nothing,
}

impl<M: Manager> Waiter<M> {
    pub(crate) fn new(enqueued: Moment, deadline: Option<(Moment, Duration)>) -> Self {
        Waiter {
            slot: Mutex::new(Slot::Waiting(None)),
            enqueued,
            deadline,
            pool_timed: AtomicBool::new(false),
        }
    }

    pub(crate) fn set_pool_timed(&self) {
        self.pool_timed.store(true, Ordering::Relaxed);
    }

    /// The caller's deadline and the timeout it came from, if it has one.
    pub(crate) fn deadline(&self) -> Option<(Moment, Duration)> {
        self.deadline
    }

    /// Whether the pool's deadline task times this caller out (else the caller keeps a timer
    /// of its own).
    pub(crate) fn is_pool_timed(&self) -> bool {
        self.pool_timed.load(Ordering::Relaxed)
    }

    /// The deadline (and timeout) if the pool's deadline task watches this caller.
    pub(crate) fn pool_deadline(&self) -> Option<(Moment, Duration)> {
        if self.is_pool_timed() {
            self.deadline
        } else {
            None
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot<M>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by the waiting future.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Handout<M>> {
        let mut slot = self.slot();
        match &mut *slot {
            Slot::Waiting(waker) => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Slot::Served(_) | Slot::Failed(_) => match std::mem::replace(&mut *slot, Slot::Done) {
                Slot::Served(entry) => Poll::Ready(Ok(entry)),
                Slot::Failed(err) => Poll::Ready(Err(*err)),
                _ => unreachable!("matched above"),
            },
            // The pool never polls a waiter it cancelled; answer like a closed pool rather
            // than hang if that ever changes.
            Slot::Cancelled | Slot::Done => Poll::Ready(Err(PoolError::Closed)),
        }
    }

    /// Hands a connection to this waiter if it is still waiting (pool lock held).
    pub(crate) fn offer(&self, entry: Boxed<M>) -> Result<Option<Waker>, Boxed<M>> {
        let mut slot = self.slot();
        match &mut *slot {
            Slot::Waiting(waker) => {
                let waker = waker.take();
                *slot = Slot::Served(entry);
                Ok(waker)
            }
            _ => Err(entry),
        }
    }

    /// Delivers an error if the waiter is still waiting (pool lock held). Returns whether it
    /// was, and the waker to wake.
    pub(crate) fn fail(&self, err: PoolError<M::Error>) -> Result<Option<Waker>, ()> {
        let mut slot = self.slot();
        match &mut *slot {
            Slot::Waiting(waker) => {
                let waker = waker.take();
                *slot = Slot::Failed(Box::new(err));
                Ok(waker)
            }
            _ => Err(()),
        }
    }

    /// The caller gives up (pool lock held).
    pub(crate) fn cancel(&self) -> Cancelled<M> {
        let mut slot = self.slot();
        match std::mem::replace(&mut *slot, Slot::Cancelled) {
            Slot::Waiting(_) => Cancelled::WasWaiting,
            Slot::Served(entry) => {
                *slot = Slot::Done;
                Cancelled::Served(entry)
            }
            Slot::Failed(err) => {
                *slot = Slot::Done;
                Cancelled::Failed(*err)
            }
            other => {
                *slot = other;
                Cancelled::Nothing
            }
        }
    }

    pub(crate) fn is_waiting(&self) -> bool {
        matches!(*self.slot(), Slot::Waiting(_))
    }
}
