//! The pool's shared state and the moves a connection makes through it.
//!
//! # The napkin drawing
//!
//! ```text
//!                 create task (one per connect, bounded by create_timeout)
//!                         |
//!                         v
//!   waiters (FIFO) <--- place() ---> idle (deque, LIFO or FIFO)
//!        |                                  |
//!        +------> in use (Pooled guard) <---+   get(): idle first, else queue
//!                      |
//!                      +--- drop ---> give_back(): broken/expired/drained? close : place()
//! ```
//!
//! Everything that changes counts happens under one `Mutex<State>`: `idle`, `in_use`,
//! `creating` and the waiter queue. Size is `idle + in_use + creating` and never exceeds
//! `max_size`, because a create is only started after `creating` was raised under the lock
//! (the "approval" is the count itself). No manager or hook code ever runs under the lock, so
//! a panic there cannot poison it, and no lock is held across an `.await`.
//!
//! **Fairness.** A caller takes an idle connection only when nobody is queued; otherwise it
//! queues at the back. Every connection that becomes available, returned or freshly created,
//! goes to the oldest waiter still waiting (`place`). A caller whose connection failed its
//! check re-queues at the front, since it was already first in line.
//!
//! **Checks at checkout.** Each connection remembers how it reaches its next caller (`Via`):
//! straight from its connect (nothing to check), straight from the borrower who just returned
//! it (the manager's `needs_check_on_handover`), or from idle (`needs_check`, then the
//! validation policy).
//!
//! **Stretching.** While callers wait, the pool starts as many connects as waiters outnumber
//! connects already in flight, within `max_size` and `max_connecting` (`plan_creates`). It
//! also tops up to `min_size`. After a failed connect nothing starts until a backoff delay has
//! passed (`Reconnect`), and while the backend is known down only one connect runs at a time.
//!
//! **Cancellation.** A waiter that gives up marks its slot cancelled and leaves it in the queue
//! to be skipped (the queue is compacted when dead slots pile up). If a connection had already
//! been handed to it, the connection goes straight to the next waiter or back to idle. A
//! connect started for a caller who left still completes and serves someone else.
//!
//! **Distrust.** Each connection records the pool's generation when it was made or last
//! checked. A "server gone" error raises the generation, so every older connection is checked
//! before it is handed out again. `drain()` raises a second counter that retires connections
//! instead.

use crate::clock::{Moment, Tick};
use crate::config::{PoolConfig, Reuse, Validation};
use crate::error::{Phase, PoolError, TimeoutError, panic_message};
use crate::manager::{ErrorClass, Manager, Metrics, Removal};
use crate::rng::Rng;
use crate::runtime::{BoxFuture, Elapsed, Runtime, with_timeout};
use crate::stats::{Statistics, Status, WaitRecorder};
use crate::waiter::{Cancelled, Waiter};
use crate::{HookError, Hooks};
use event_listener::Event;
use futures::FutureExt;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, Location, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// What a waiting caller is handed: a connection or an error.
pub(crate) type Handout<M> = Result<Boxed<M>, PoolError<<M as Manager>::Error>>;

/// A connection with its bookkeeping, boxed once when it is created so that a checkout moves
/// one pointer around instead of the whole record.
pub(crate) type Boxed<M> = Box<Entry<<M as Manager>::Connection>>;

/// A connection with the pool's bookkeeping.
pub(crate) struct Entry<C> {
    pub(crate) conn: C,
    pub(crate) id: u64,
    pub(crate) created: Instant,
    /// When the connection was last returned (coarse), or created if it never was.
    pub(crate) last_used: Tick,
    /// Returned at least once: `last_used` is a return, not the creation.
    pub(crate) returned: bool,
    pub(crate) uses: u64,
    pub(crate) expires: Option<Tick>,
    /// The pool generation when this connection was made or last checked.
    pub(crate) generation: u64,
    /// The drain generation when this connection's connect started.
    pub(crate) drain_generation: u64,
    /// The manager asked for a check before reuse.
    pub(crate) dirty: bool,
    /// How the connection reaches the caller about to use it.
    pub(crate) via: Via,
    /// What the borrower said of the connection.
    pub(crate) mark: Mark,
    /// The borrower's slot in the leak detector.
    pub(crate) lease: Option<usize>,
}

/// How a connection reaches the caller about to use it, which decides what is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// From the idle connections, or in use (the state between checkout and return).
    Idle,
    /// Straight from its connect: needs no check.
    Created,
    /// Straight from the borrower who just gave it back, without sitting idle:
    /// [`Manager::needs_check_on_handover`] is asked instead of `needs_check`.
    Returned,
}

impl<C> Entry<C> {
    pub(crate) fn metrics(&self) -> Metrics {
        Metrics {
            id: self.id,
            created: self.created,
            last_used: if self.returned {
                self.last_used.to_instant().max(self.created)
            } else {
                self.created
            },
            times_used: self.uses,
        }
    }

    fn expired(&self, now: Tick) -> bool {
        self.expires.is_some_and(|at| now >= at)
    }
}

/// Sets a caller's deadline from its timeout the first time one is needed, and returns it.
pub(crate) fn start_deadline(
    deadline: &mut Option<Moment>,
    timeout: Option<Duration>,
    now: Moment,
) -> Option<Moment> {
    if deadline.is_none() {
        *deadline = timeout.and_then(|t| now.checked_add(t));
    }
    *deadline
}

/// Backoff between failed connects.
#[derive(Debug, Default)]
struct Reconnect {
    failures: u32,
    /// A retry timer is running; no connect starts before it fires.
    pending: bool,
}

pub(crate) struct State<M: Manager> {
    idle: VecDeque<Boxed<M>>,
    in_use: usize,
    creating: usize,
    /// Connections taken out of the pool and not dropped yet: they still exist, so their
    /// slots stay taken until they are gone (dropping runs outside the lock).
    closing: usize,
    waiters: VecDeque<Arc<Waiter<M>>>,
    /// Waiters still waiting (the queue may also hold cancelled ones).
    waiting: usize,
    min_size: usize,
    max_size: usize,
    closed: bool,
    suspended: bool,
    reconnect: Reconnect,
    /// The last connect failed and none succeeded since.
    down: bool,
    /// The last connect error was permanent (authentication, configuration).
    permanent: bool,
    last_error: Option<Arc<PoolError<M::Error>>>,
    stats: Statistics,
    rng: Rng,
    /// The deadline of the last "pool-timed" caller queued at the back. One task for the
    /// whole pool times waiting callers out instead of a timer per caller: callers queue in
    /// arrival order and most use the same timeout, so the deadlines of pool-timed callers
    /// rise along the queue and the task only looks at its front. A caller whose deadline
    /// would break that order arms a timer of its own instead.
    last_pool_deadline: Option<Moment>,
    /// The deadline task is running.
    deadline_task: bool,
    /// When that task next wakes up; an earlier deadline must wake it sooner.
    deadline_wakes_at: Option<Moment>,
}

impl<M: Manager> State<M> {
    fn exists(&self) -> usize {
        self.idle.len() + self.in_use
    }

    fn size(&self) -> usize {
        self.exists() + self.creating
    }

    /// Slots taken: [`size`](State::size) plus connections still being closed, which exist
    /// until they are dropped. New connects are planned against this.
    fn occupied(&self) -> usize {
        self.size() + self.closing
    }

    fn pop_idle(&mut self, reuse: Reuse) -> Option<Boxed<M>> {
        match reuse {
            Reuse::Lifo => self.idle.pop_back(),
            Reuse::Fifo => self.idle.pop_front(),
        }
    }

    /// Checks out an idle connection for a caller that may take one now.
    fn checkout_idle(&mut self, reuse: Reuse) -> Option<Boxed<M>> {
        if self.suspended {
            return None;
        }
        let entry = self.pop_idle(reuse)?;
        self.in_use += 1;
        self.stats.gets_direct += 1;
        Some(entry)
    }

    /// The timeout a waiting caller gets: in the create phase while connects are under way
    /// or pending, with the last connect error when there is one to tell.
    fn wait_timeout(&self, after: Duration) -> PoolError<M::Error> {
        let connecting = self.creating > 0 || self.reconnect.pending;
        let phase = if connecting {
            Phase::Create
        } else {
            Phase::Wait
        };
        let last_error = if connecting || self.down {
            self.last_error.clone()
        } else {
            None
        };
        PoolError::Timeout(TimeoutError {
            phase,
            after,
            last_error,
        })
    }

    /// Hands `entry` to the oldest waiter, or puts it with the idle connections.
    fn place(&mut self, mut entry: Boxed<M>, after: &mut After<M>) {
        if !self.suspended {
            while let Some(waiter) = self.waiters.pop_front() {
                match waiter.offer(entry) {
                    Ok(waker) => {
                        self.waiting -= 1;
                        self.in_use += 1;
                        after.wake(waker);
                        return;
                    }
                    Err(back) => entry = back,
                }
            }
        }
        // Whatever brought it here, it now sits idle.
        entry.via = Via::Idle;
        self.idle.push_back(entry);
    }

    /// How many connects to start now, already counted in `creating`.
    fn plan_creates(&mut self, config: &PoolConfig) -> usize {
        if self.closed || self.suspended || self.reconnect.pending {
            return 0;
        }
        let size = self.occupied();
        let mut want = self
            .waiting
            .saturating_sub(self.creating)
            .max(self.min_size.saturating_sub(size));
        let mut in_flight_limit = config.max_connecting;
        if self.down {
            // One probe at a time while the backend is known down.
            in_flight_limit = 1;
            if config.fail_fast {
                // Callers are turned away at once, so nobody waits: keep probing anyway.
                want = want.max(1);
            }
        }
        let n = want
            .min(self.max_size.saturating_sub(size))
            .min(in_flight_limit.saturating_sub(self.creating));
        self.creating += n;
        n
    }

    /// Whether the pool's deadline task can time out a caller queued at the back with this
    /// deadline (it keeps the pool-timed deadlines in queue order); otherwise the caller arms
    /// a timer of its own. Called before the caller is counted in `waiting`.
    fn watch_deadline(&mut self, at: Moment) -> bool {
        if self.waiting == 0 {
            // Nobody waits: no order to keep.
            self.last_pool_deadline = None;
        }
        if self.last_pool_deadline.is_some_and(|last| at < last) {
            return false;
        }
        self.last_pool_deadline = Some(at);
        true
    }

    /// Drops cancelled waiters from the queue once they outnumber live ones.
    fn compact_waiters(&mut self) {
        if self.waiters.len() > 2 * self.waiting + 32 {
            self.waiters.retain(|w| w.is_waiting());
        }
    }

    fn next_retry_delay(&mut self, config: &PoolConfig) -> Duration {
        self.reconnect.failures = self.reconnect.failures.saturating_add(1);
        self.reconnect.pending = true;
        let exp = (self.reconnect.failures - 1).min(20);
        let base = config
            .reconnect_interval
            .saturating_mul(1 << exp)
            .min(config.reconnect_max);
        // "Equal jitter": half fixed, half random, so retries from many pools spread out.
        base.mul_f64(0.5 + 0.5 * self.rng.unit())
    }

    fn status(&self) -> Status {
        Status {
            size: self.size(),
            idle: self.idle.len(),
            in_use: self.in_use,
            creating: self.creating,
            waiting: self.waiting,
            min_size: self.min_size,
            max_size: self.max_size,
        }
    }
}

/// The pool lock, held. Releasing it publishes whether callers are queued.
struct Locked<'a, M: Manager> {
    state: MutexGuard<'a, State<M>>,
    queued: &'a AtomicBool,
}

impl<M: Manager> std::ops::Deref for Locked<'_, M> {
    type Target = State<M>;

    fn deref(&self) -> &State<M> {
        &self.state
    }
}

impl<M: Manager> std::ops::DerefMut for Locked<'_, M> {
    fn deref_mut(&mut self) -> &mut State<M> {
        &mut self.state
    }
}

impl<M: Manager> Drop for Locked<'_, M> {
    fn drop(&mut self) {
        let queued = self.state.waiting > 0;
        if self.queued.load(Ordering::Relaxed) != queued {
            self.queued.store(queued, Ordering::Relaxed);
        }
    }
}

/// Work decided under the lock and carried out after it is released.
pub(crate) struct After<M: Manager> {
    wake_one: Option<Waker>,
    wake_more: Vec<Waker>,
    discard: Vec<(Boxed<M>, Removal)>,
    creates: usize,
    retry_in: Option<Duration>,
}

impl<M: Manager> Default for After<M> {
    fn default() -> Self {
        After {
            wake_one: None,
            wake_more: Vec::new(),
            discard: Vec::new(),
            creates: 0,
            retry_in: None,
        }
    }
}

impl<M: Manager> After<M> {
    fn wake(&mut self, waker: Option<Waker>) {
        if let Some(waker) = waker {
            match self.wake_one {
                None => self.wake_one = Some(waker),
                Some(_) => self.wake_more.push(waker),
            }
        }
    }

    /// Plans the connects to start once the lock is released. With connections to discard,
    /// [`run`](After::run) plans after dropping them instead, when their slots are free.
    fn plan_creates(&mut self, state: &mut State<M>, config: &PoolConfig) {
        if self.discard.is_empty() {
            self.creates = state.plan_creates(config);
        }
    }

    fn discard(&mut self, entry: Boxed<M>, reason: Removal, state: &mut State<M>) {
        state.stats.closed.add(reason);
        state.closing += 1;
        self.discard.push((entry, reason));
    }

    fn run(self, shared: &Arc<Shared<M>>) {
        if let Some(waker) = self.wake_one {
            waker.wake();
        }
        for waker in self.wake_more {
            waker.wake();
        }
        let mut creates = self.creates;
        if !self.discard.is_empty() {
            let closed = self.discard.len();
            for (entry, reason) in self.discard {
                shared.dispose(entry.conn, reason);
            }
            // Only now are their slots free: never more than max_size connections exist or
            // are being opened, not even for the moment a discarded one takes to drop.
            let mut st = shared.lock();
            st.closing -= closed;
            creates += st.plan_creates(&shared.config);
        }
        if creates > 0 {
            shared.spawn_creates(creates);
        }
        if let Some(delay) = self.retry_in {
            shared.spawn_retry(delay);
        }
    }
}

/// Whether a connection the caller marked should be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    Keep,
    Broken,
    ServerGone,
}

pub(crate) struct Leases {
    slots: Vec<Option<Lease>>,
    free: Vec<usize>,
}

struct Lease {
    taken: Instant,
    location: &'static Location<'static>,
    reported: bool,
}

pub(crate) struct Shared<M: Manager> {
    pub(crate) manager: M,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) config: PoolConfig,
    pub(crate) hooks: Hooks<M>,
    state: Mutex<State<M>>,
    /// Whether callers are queued, as of the last time the lock was released: a hint that
    /// lets a caller skip the fast path (and one lock round trip) when it would queue anyway.
    queued: AtomicBool,
    /// Raised by a "server gone" error: older connections are checked before reuse.
    generation: AtomicU64,
    /// Raised by `drain()`: older connections are retired.
    drain_generation: AtomicU64,
    next_id: AtomicU64,
    checks: AtomicU64,
    /// How long served callers waited.
    pub(crate) waits: WaitRecorder,
    /// Open `Pool` handles; the pool closes when the last one is dropped.
    pub(crate) handles: AtomicUsize,
    /// Notified when the pool closes: background tasks stop.
    closed_event: Event,
    /// Notified whenever a connect finishes.
    created_event: Event,
    /// Notified when a deadline earlier than the deadline task's next wake-up is queued.
    deadline_event: Event,
    leases: Option<Mutex<Leases>>,
}

/// What `try_acquire` found.
pub(crate) enum Acquired<M: Manager> {
    Ready(Boxed<M>),
    /// Queued.
    Queued(Arc<Waiter<M>>),
}

/// What the synchronous part of preparing a connection decided.
pub(crate) enum Prepared<M: Manager> {
    /// Hand it out.
    Ready(Boxed<M>),
    /// Check it first.
    Check(Boxed<M>),
    /// It was discarded; try another.
    Retry,
}

/// Why preparing a connection for a caller did not work out.
pub(crate) enum Unprepared<E> {
    /// The connection was discarded; try another one.
    Retry,
    /// Give this error to the caller.
    Fail(PoolError<E>),
}

enum RecycleFailure<E> {
    Check(E),
    Hook(HookError<E>),
    Panicked(&'static str, Arc<str>),
}

impl<M: Manager> Shared<M> {
    pub(crate) fn new(
        manager: M,
        runtime: Arc<dyn Runtime>,
        config: PoolConfig,
        hooks: Hooks<M>,
    ) -> Self {
        let leases = config.leak_threshold.map(|_| {
            Mutex::new(Leases {
                slots: Vec::new(),
                free: Vec::new(),
            })
        });
        Shared {
            state: Mutex::new(State {
                idle: VecDeque::with_capacity(config.max_size),
                in_use: 0,
                creating: 0,
                closing: 0,
                waiters: VecDeque::new(),
                waiting: 0,
                min_size: config.min_size,
                max_size: config.max_size,
                closed: false,
                suspended: false,
                reconnect: Reconnect::default(),
                down: false,
                permanent: false,
                last_error: None,
                stats: Statistics::default(),
                rng: Rng::new(),
                last_pool_deadline: None,
                deadline_task: false,
                deadline_wakes_at: None,
            }),
            queued: AtomicBool::new(false),
            manager,
            runtime,
            config,
            hooks,
            generation: AtomicU64::new(0),
            drain_generation: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            waits: WaitRecorder::default(),
            handles: AtomicUsize::new(1),
            closed_event: Event::new(),
            created_event: Event::new(),
            deadline_event: Event::new(),
            leases,
        }
    }

    fn lock(&self) -> Locked<'_, M> {
        // No user code runs under this lock, so it cannot be poisoned by a panic of ours
        // short of a bug; recover rather than spread one.
        Locked {
            state: self.state.lock().unwrap_or_else(|e| e.into_inner()),
            queued: &self.queued,
        }
    }

    fn bump_generation(&self, state: &mut State<M>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        state.stats.revalidations += 1;
    }

    // ---- checkout -------------------------------------------------------------------------

    /// The fast path of a checkout: an idle connection, if one is ready and nobody is queued.
    pub(crate) fn take_idle(&self) -> Option<Boxed<M>> {
        if self.queued.load(Ordering::Relaxed) {
            return None;
        }
        let mut st = self.lock();
        if st.closed || st.waiting > 0 {
            return None;
        }
        st.checkout_idle(self.config.reuse)
    }

    /// Takes an idle connection if nobody is queued (or `front`: this caller was first in
    /// line already), otherwise queues the caller and starts connects as needed.
    /// `deadline` is set from `timeout` here if the caller queues and has none yet: the clock
    /// is only read for callers that wait.
    pub(crate) fn try_acquire(
        self: &Arc<Self>,
        front: bool,
        timeout: Option<Duration>,
        deadline: &mut Option<Moment>,
    ) -> Result<Acquired<M>, PoolError<M::Error>> {
        // Read the clock and allocate the slot before taking the lock, to keep the time it is
        // held short: a caller here most likely queues.
        let now = Moment::now();
        let deadline = start_deadline(deadline, timeout, now).zip(timeout);
        let waiter = Arc::new(Waiter::new(now, deadline));
        let queued = Arc::clone(&waiter);
        let mut st = self.lock();
        if st.closed {
            return Err(PoolError::Closed);
        }
        if front || st.waiting == 0 {
            if let Some(entry) = st.checkout_idle(self.config.reuse) {
                return Ok(Acquired::Ready(entry));
            }
        }
        if self.config.fail_fast {
            if st.suspended {
                return Err(PoolError::Suspended);
            }
            if st.down {
                if let Some(last) = &st.last_error {
                    return Err(PoolError::Unavailable(Arc::clone(last)));
                }
            }
        }
        if st.permanent && st.reconnect.pending {
            // A wrong password will not fix itself: answer at once until the next probe.
            if let Some(last) = &st.last_error {
                return Err((**last).clone());
            }
        }
        if let Some(max_waiting) = self.config.max_waiting {
            if st.waiting >= max_waiting && !front {
                st.stats.gets_rejected_busy += 1;
                return Err(PoolError::Busy { max_waiting });
            }
        }
        // A caller queued again at the front (its connection failed a check) keeps a timer
        // of its own: its deadline may be earlier than those behind it, or later.
        let pool_timed = match deadline {
            Some((at, after)) if !front && !after.is_zero() => st.watch_deadline(at),
            _ => false,
        };
        if pool_timed {
            waiter.set_pool_timed();
        }
        if front {
            st.waiters.push_front(queued);
        } else {
            st.waiters.push_back(queued);
        }
        st.waiting += 1;
        let start_deadline_task = pool_timed && !st.deadline_task;
        st.deadline_task |= pool_timed;
        let wake_deadline_task = pool_timed
            && !start_deadline_task
            && deadline.is_some_and(|(at, _)| st.deadline_wakes_at.is_none_or(|w| at < w));
        let creates = st.plan_creates(&self.config);
        drop(st);
        if creates > 0 {
            self.spawn_creates(creates);
        }
        if start_deadline_task {
            self.spawn_deadline_task();
        } else if wake_deadline_task {
            self.deadline_event.notify(1);
        }
        Ok(Acquired::Queued(waiter))
    }

    fn spawn_deadline_task(self: &Arc<Self>) {
        if !self.spawn_background(
            Box::pin(deadline_task(Arc::downgrade(self))),
            "the deadline task",
        ) {
            // Without the task nobody would time these callers out: fail them now rather
            // than let them wait for ever.
            self.expire_waiters(true);
        }
    }

    /// Times out every caller whose deadline has passed; returns the next deadline, or
    /// `None` (and the task ends) when no caller waits with one.
    /// `all`: time out every pool-timed caller now (the task could not be started).
    fn expire_waiters(self: &Arc<Self>, all: bool) -> Option<Moment> {
        let now = Moment::now();
        let mut after = After::default();
        let mut st = self.lock();
        if st.closed {
            st.deadline_task = false;
            return None;
        }
        // Pool-timed deadlines rise along the queue: stop at the first one still ahead.
        let mut next = None;
        let mut expired = Vec::new();
        for waiter in &st.waiters {
            let Some((at, after)) = waiter.pool_deadline() else {
                continue;
            };
            // Only waiting callers count: the order is kept among them alone.
            if !waiter.is_waiting() {
                continue;
            }
            if at > now && !all {
                next = Some(at);
                break;
            }
            expired.push((Arc::clone(waiter), after));
        }
        for (waiter, waited) in expired {
            let timeout = st.wait_timeout(waited);
            if let Ok(waker) = waiter.fail(timeout) {
                st.waiting -= 1;
                st.stats.gets_timed_out += 1;
                after.wake(waker);
            }
        }
        st.compact_waiters();
        st.deadline_wakes_at = next;
        if next.is_none() {
            st.deadline_task = false;
        }
        drop(st);
        after.run(self);
        next
    }

    /// The caller stops waiting: at its deadline (`keep_served`: a connection that arrived
    /// meanwhile is kept) or because its future was dropped (it is passed on).
    fn cancel_waiter(
        self: &Arc<Self>,
        waiter: &Waiter<M>,
        keep_served: bool,
        timed_out: bool,
    ) -> Result<Option<Boxed<M>>, PoolError<M::Error>> {
        let mut after = After::default();
        let mut st = self.lock();
        let outcome = match waiter.cancel() {
            Cancelled::WasWaiting => {
                st.waiting -= 1;
                if timed_out {
                    st.stats.gets_timed_out += 1;
                } else {
                    st.stats.gets_cancelled += 1;
                }
                st.compact_waiters();
                Err(st.wait_timeout(Duration::ZERO))
            }
            Cancelled::Served(entry) if keep_served => Ok(Some(entry)),
            Cancelled::Served(mut entry) => {
                st.in_use -= 1;
                st.stats.gets_cancelled += 1;
                // It waited in the slot for as long as the caller took to go: not a hand-over.
                if entry.via == Via::Returned {
                    entry.via = Via::Idle;
                }
                // Not a use, so the connection keeps its idle time.
                st.place(entry, &mut after);
                Ok(None)
            }
            Cancelled::Failed(err) => Err(err),
            Cancelled::Nothing => Ok(None),
        };
        drop(st);
        after.run(self);
        outcome
    }

    /// Makes a connection ready for a caller: cheap checks, then (when due) the recycle
    /// hooks and `Manager::check`, bounded by the recycle timeout and the caller's deadline.
    /// The part of preparing a connection that needs no await: the cheap checks, and whether
    /// the slow part ([`check_entry`](Shared::check_entry)) is due. Kept apart so that the
    /// `get()` future stays small: the check's own futures are boxed, and only when a check
    /// really runs.
    pub(crate) fn prepare(self: &Arc<Self>, mut entry: Boxed<M>) -> Prepared<M> {
        let via = std::mem::replace(&mut entry.via, Via::Idle);
        if via == Via::Created {
            entry.uses += 1;
            return Prepared::Ready(entry);
        }
        // Read the clock only if a lifetime or the idle threshold needs it, and once.
        let mut read = None;
        let mut now = || *read.get_or_insert_with(Tick::now);
        let manager = &self.manager;
        let broken = catch_unwind(AssertUnwindSafe(|| {
            if manager.is_broken(&mut entry.conn) {
                Some(manager.is_server_gone(&mut entry.conn))
            } else {
                entry.dirty |= if via == Via::Returned {
                    manager.needs_check_on_handover(&mut entry.conn)
                } else {
                    manager.needs_check(&mut entry.conn)
                };
                None
            }
        }))
        .unwrap_or(Some(false));
        if let Some(server_gone) = broken {
            self.discard_in_use(entry, Removal::Broken, server_gone);
            return Prepared::Retry;
        }
        if entry.expires.is_some() && entry.expired(now()) {
            self.discard_in_use(entry, Removal::Lifetime, false);
            return Prepared::Retry;
        }
        if entry.drain_generation < self.drain_generation.load(Ordering::Acquire) {
            self.discard_in_use(entry, Removal::Retired, false);
            return Prepared::Retry;
        }
        let generation = self.generation.load(Ordering::Acquire);
        let due = entry.dirty
            || entry.generation < generation
            || self.hooks.pre_recycle.is_some()
            || self.hooks.post_recycle.is_some()
            || match self.config.validation {
                Validation::Always => true,
                Validation::IdleLongerThan(t) => now().since(entry.last_used) > t,
                Validation::Never => false,
            };
        if !due {
            entry.uses += 1;
            return Prepared::Ready(entry);
        }
        Prepared::Check(entry)
    }

    /// Runs the recycle hooks and `Manager::check` on a connection before it is handed out,
    /// bounded by the recycle timeout and the caller's deadline.
    pub(crate) async fn check_entry(
        self: &Arc<Self>,
        entry: Boxed<M>,
        now: Moment,
        deadline: Option<Moment>,
        wait_timeout: Option<Duration>,
    ) -> Result<Boxed<M>, Unprepared<M::Error>> {
        let manager = &self.manager;
        let generation = self.generation.load(Ordering::Acquire);
        // The check borrows the connection across awaits: if the caller is cancelled half-way
        // the connection's state is unknown, so the guard discards it.
        let mut guard = Checking {
            shared: self,
            entry: Some(entry),
        };
        let remaining = deadline.map(|d| d.saturating_duration_since(now));
        let (limit, caller_bound) = match (self.config.recycle_timeout, remaining) {
            (Some(r), Some(rem)) if rem < r => (Some(rem), true),
            (Some(r), _) => (Some(r), false),
            (None, rem) => (rem, rem.is_some()),
        };
        let entry_ref = guard.entry.as_mut().expect("entry present until taken");
        let result = with_timeout(&*self.runtime, limit, self.recycle(entry_ref)).await;
        let mut entry = guard.entry.take().expect("entry present until taken");
        match result {
            Ok(Ok(())) => {
                entry.generation = generation;
                entry.dirty = false;
                entry.uses += 1;
                Ok(entry)
            }
            Ok(Err(RecycleFailure::Check(err))) => {
                let class = catch_unwind(AssertUnwindSafe(|| manager.classify(&err)))
                    .unwrap_or(ErrorClass::Transient);
                tracing::debug!(error = %err, "connection failed its check; discarded");
                self.discard_in_use(entry, Removal::FailedCheck, class == ErrorClass::ServerGone);
                Err(Unprepared::Retry)
            }
            Ok(Err(RecycleFailure::Hook(err))) => {
                tracing::debug!(error = %err, "recycle hook failed; connection discarded");
                self.discard_in_use(entry, Removal::Error, false);
                Err(Unprepared::Retry)
            }
            Ok(Err(RecycleFailure::Panicked(what, message))) => {
                self.discard_in_use(entry, Removal::Error, false);
                Err(Unprepared::Fail(PoolError::Panicked {
                    phase: Phase::Recycle,
                    what,
                    message,
                }))
            }
            Err(Elapsed) => {
                self.discard_in_use(entry, Removal::FailedCheck, false);
                if caller_bound {
                    Err(Unprepared::Fail(PoolError::Timeout(TimeoutError {
                        phase: Phase::Recycle,
                        after: wait_timeout.unwrap_or_default(),
                        last_error: None,
                    })))
                } else {
                    Err(Unprepared::Retry)
                }
            }
        }
    }

    async fn recycle(
        &self,
        entry: &mut Entry<M::Connection>,
    ) -> Result<(), RecycleFailure<M::Error>> {
        let metrics = entry.metrics();
        if let Some(hook) = &self.hooks.pre_recycle {
            run_hook::<M>(hook, &mut entry.conn, &metrics, "pre_recycle hook").await?;
        }
        self.checks.fetch_add(1, Ordering::Relaxed);
        match AssertUnwindSafe(self.manager.check(&mut entry.conn, &metrics))
            .catch_unwind()
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(RecycleFailure::Check(err)),
            Err(panic) => {
                return Err(RecycleFailure::Panicked(
                    "Manager::check",
                    panic_message(&*panic),
                ));
            }
        }
        if let Some(hook) = &self.hooks.post_recycle {
            run_hook::<M>(hook, &mut entry.conn, &metrics, "post_recycle hook").await?;
        }
        Ok(())
    }

    /// Closes a connection that was counted as in use.
    fn discard_in_use(self: &Arc<Self>, entry: Boxed<M>, reason: Removal, gone: bool) {
        let mut after = After::default();
        let mut st = self.lock();
        st.in_use -= 1;
        if gone {
            self.bump_generation(&mut st);
        }
        after.discard(entry, reason, &mut st);
        after.plan_creates(&mut st, &self.config);
        drop(st);
        after.run(self);
    }

    // ---- return ---------------------------------------------------------------------------

    /// A guard gave its connection back.
    pub(crate) fn give_back(self: &Arc<Self>, mut entry: Boxed<M>) {
        let manager = &self.manager;
        let broken = match entry.mark {
            Mark::Broken => Some(false),
            Mark::ServerGone => Some(true),
            // `needs_check` is asked at checkout only: whatever it would see now, it still sees
            // then, and a manager's answer may cost a system call.
            Mark::Keep => catch_unwind(AssertUnwindSafe(|| {
                manager
                    .is_broken(&mut entry.conn)
                    .then(|| manager.is_server_gone(&mut entry.conn))
            }))
            .unwrap_or(Some(false)),
        };
        let now = Tick::now();
        entry.last_used = now;
        entry.returned = true;
        let mut after = After::default();
        let mut st = self.lock();
        st.in_use -= 1;
        let reason = if broken.is_some() {
            Some(Removal::Broken)
        } else if st.closed {
            Some(Removal::Closed)
        } else if entry.expired(now) {
            Some(Removal::Lifetime)
        } else if entry.drain_generation < self.drain_generation.load(Ordering::Acquire)
            || st.exists() >= st.max_size
        {
            Some(Removal::Retired)
        } else {
            None
        };
        match reason {
            None => {
                entry.via = Via::Returned;
                st.place(entry, &mut after);
            }
            Some(reason) => {
                if broken == Some(true) {
                    self.bump_generation(&mut st);
                }
                after.discard(entry, reason, &mut st);
                after.plan_creates(&mut st, &self.config);
            }
        }
        drop(st);
        after.run(self);
    }

    /// A guard's connection leaves the pool for good.
    pub(crate) fn detach(self: &Arc<Self>, conn: &mut M::Connection) {
        let mut st = self.lock();
        st.in_use -= 1;
        st.stats.closed.add(Removal::Detached);
        let creates = st.plan_creates(&self.config);
        drop(st);
        let manager = &self.manager;
        let _ = catch_unwind(AssertUnwindSafe(|| {
            manager.removed(conn, Removal::Detached)
        }));
        self.spawn_creates(creates);
    }

    /// Tells the manager and drops the connection, containing any panic.
    fn dispose(&self, mut conn: M::Connection, reason: Removal) {
        tracing::debug!(?reason, "closing connection");
        let manager = &self.manager;
        let _ = catch_unwind(AssertUnwindSafe(move || {
            manager.removed(&mut conn, reason);
            drop(conn);
        }));
    }

    // ---- creating -------------------------------------------------------------------------

    pub(crate) fn spawn_creates(self: &Arc<Self>, n: usize) {
        for started in 0..n {
            if !self.spawn_background(Box::pin(create_task(Arc::clone(self))), "a connect task") {
                let delay = {
                    let mut st = self.lock();
                    st.creating -= n - started;
                    (!st.reconnect.pending).then(|| st.next_retry_delay(&self.config))
                };
                // Retrying needs the runtime too; if it still refuses, waiters time out.
                if let Some(delay) = delay {
                    self.spawn_retry(delay);
                }
                return;
            }
        }
    }

    fn spawn_retry(self: &Arc<Self>, delay: Duration) {
        let task = Box::pin(retry_task(Arc::downgrade(self), delay));
        if !self.spawn_background(task, "a reconnect timer") {
            self.lock().reconnect.pending = false;
        }
    }

    /// Hands `task` to the runtime; `false` (logged, naming `what`) if the runtime refused it
    /// by panicking.
    fn spawn_background(&self, task: BoxFuture<'static, ()>, what: &str) -> bool {
        let runtime = &self.runtime;
        let spawned = catch_unwind(AssertUnwindSafe(|| runtime.spawn(task))).is_ok();
        if !spawned {
            tracing::error!("the runtime refused to spawn {what}");
        }
        spawned
    }

    /// One connect: `Manager::create` then the `post_create` hook, within the create timeout.
    async fn open(&self, id: u64) -> Result<M::Connection, PoolError<M::Error>> {
        let attempt = async {
            let mut conn = match AssertUnwindSafe(self.manager.create()).catch_unwind().await {
                Ok(Ok(conn)) => conn,
                Ok(Err(err)) => return Err(PoolError::Backend(Arc::new(err))),
                Err(panic) => {
                    return Err(PoolError::Panicked {
                        phase: Phase::Create,
                        what: "Manager::create",
                        message: panic_message(&*panic),
                    });
                }
            };
            if let Some(hook) = &self.hooks.post_create {
                let now = Instant::now();
                let metrics = Metrics {
                    id,
                    created: now,
                    last_used: now,
                    times_used: 0,
                };
                let outcome = run_hook::<M>(hook, &mut conn, &metrics, "post_create hook").await;
                if let Err(failure) = outcome {
                    self.dispose(conn, Removal::Error);
                    return Err(match failure {
                        RecycleFailure::Hook(err) => PoolError::Hook(Arc::new(err)),
                        RecycleFailure::Panicked(what, message) => PoolError::Panicked {
                            phase: Phase::Create,
                            what,
                            message,
                        },
                        RecycleFailure::Check(err) => PoolError::Backend(Arc::new(err)),
                    });
                }
            }
            Ok(conn)
        };
        match with_timeout(&*self.runtime, self.config.create_timeout, attempt).await {
            Ok(result) => result,
            Err(Elapsed) => Err(PoolError::Timeout(TimeoutError {
                phase: Phase::Create,
                after: self.config.create_timeout.unwrap_or_default(),
                last_error: None,
            })),
        }
    }

    /// Records the outcome of a connect and hands its connection on.
    fn finish_create(
        self: &Arc<Self>,
        outcome: Option<Result<M::Connection, PoolError<M::Error>>>,
        id: u64,
        generation: u64,
        drain_generation: u64,
    ) {
        let now = Tick::now();
        let mut after = After::default();
        let mut st = self.lock();
        st.creating -= 1;
        match outcome {
            None => {}
            Some(Ok(conn)) => {
                st.stats.created += 1;
                st.reconnect = Reconnect::default();
                st.down = false;
                st.permanent = false;
                let expires = self.config.max_lifetime.and_then(|lifetime| {
                    let early = lifetime.mul_f64(self.config.lifetime_jitter * st.rng.unit());
                    now.checked_add(lifetime - early)
                });
                let entry = Box::new(Entry {
                    conn,
                    id,
                    created: Instant::now(),
                    last_used: now,
                    returned: false,
                    uses: 0,
                    expires,
                    generation,
                    drain_generation,
                    dirty: false,
                    via: Via::Created,
                    mark: Mark::Keep,
                    lease: None,
                });
                tracing::debug!(id, "connection created");
                if st.closed {
                    after.discard(entry, Removal::Closed, &mut st);
                } else if st.exists() >= st.max_size {
                    after.discard(entry, Removal::Retired, &mut st);
                } else {
                    st.place(entry, &mut after);
                }
            }
            Some(Err(err)) => {
                st.stats.create_errors += 1;
                let class = match &err {
                    PoolError::Backend(e) => {
                        catch_unwind(AssertUnwindSafe(|| self.manager.classify(e)))
                            .unwrap_or(ErrorClass::Transient)
                    }
                    _ => ErrorClass::Transient,
                };
                tracing::warn!(error = %DisplayError(&err), ?class, "connect failed");
                let backend_down = matches!(err, PoolError::Backend(_) | PoolError::Timeout(_));
                st.down |= backend_down;
                st.permanent = class == ErrorClass::Permanent;
                match (&err, class) {
                    (_, ErrorClass::Permanent) => {
                        // Every waiter would fail the same way: tell them all now.
                        for waiter in std::mem::take(&mut st.waiters) {
                            if let Ok(waker) = waiter.fail(err.clone()) {
                                after.wake(waker);
                            }
                        }
                        st.waiting = 0;
                    }
                    (_, ErrorClass::ServerGone) | (_, ErrorClass::Transient)
                        if backend_down && self.config.fail_fast =>
                    {
                        if class == ErrorClass::ServerGone {
                            self.bump_generation(&mut st);
                        }
                        // Fail fast: nobody waits on a backend known to be down.
                        let unavailable = PoolError::Unavailable(Arc::new(err.clone()));
                        for waiter in std::mem::take(&mut st.waiters) {
                            if let Ok(waker) = waiter.fail(unavailable.clone()) {
                                after.wake(waker);
                            }
                        }
                        st.waiting = 0;
                    }
                    (_, ErrorClass::ServerGone) => self.bump_generation(&mut st),
                    (PoolError::Hook(_) | PoolError::Panicked { .. }, _) => {
                        // Not a connectivity problem: the oldest waiter gets this one.
                        while let Some(waiter) = st.waiters.pop_front() {
                            if let Ok(waker) = waiter.fail(err.clone()) {
                                st.waiting -= 1;
                                after.wake(waker);
                                break;
                            }
                        }
                    }
                    _ => {}
                }
                st.last_error = Some(Arc::new(err));
                if !st.reconnect.pending {
                    after.retry_in = Some(st.next_retry_delay(&self.config));
                }
            }
        }
        after.plan_creates(&mut st, &self.config);
        drop(st);
        self.created_event.notify(usize::MAX);
        after.run(self);
    }

    fn end_retry(self: &Arc<Self>) {
        let mut after = After::default();
        let mut st = self.lock();
        st.reconnect.pending = false;
        after.plan_creates(&mut st, &self.config);
        drop(st);
        after.run(self);
    }

    // ---- control --------------------------------------------------------------------------

    pub(crate) fn close(self: &Arc<Self>) {
        let mut after = After::default();
        let mut st = self.lock();
        if st.closed {
            return;
        }
        st.closed = true;
        for entry in std::mem::take(&mut st.idle) {
            after.discard(entry, Removal::Closed, &mut st);
        }
        for waiter in std::mem::take(&mut st.waiters) {
            if let Ok(waker) = waiter.fail(PoolError::Closed) {
                after.wake(waker);
            }
        }
        st.waiting = 0;
        drop(st);
        tracing::debug!("pool closed");
        self.closed_event.notify(usize::MAX);
        self.created_event.notify(usize::MAX);
        after.run(self);
    }

    pub(crate) fn has_waiters(&self) -> bool {
        self.queued.load(Ordering::Relaxed)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub(crate) fn status(&self) -> Status {
        self.lock().status()
    }

    pub(crate) fn statistics(&self) -> Statistics {
        let mut stats = self.lock().stats.clone();
        stats.checks = self.checks.load(Ordering::Relaxed);
        stats.wait_times = self.waits.snapshot();
        stats.gets_waited = stats.wait_times.count();
        stats
    }

    pub(crate) fn last_error(&self) -> Option<PoolError<M::Error>> {
        self.lock().last_error.as_deref().cloned()
    }

    pub(crate) fn resize(self: &Arc<Self>, min_size: usize, max_size: usize) {
        let mut after = After::default();
        let mut st = self.lock();
        st.min_size = min_size;
        st.max_size = max_size;
        while st.exists() > max_size {
            // Shed the least recently used first; busy ones retire when they come back.
            let Some(entry) = st.idle.pop_front() else {
                break;
            };
            after.discard(entry, Removal::Retired, &mut st);
        }
        after.plan_creates(&mut st, &self.config);
        drop(st);
        after.run(self);
    }

    pub(crate) fn retain(
        self: &Arc<Self>,
        mut keep: impl FnMut(&M::Connection, &Metrics) -> bool,
    ) -> usize {
        // Take the idle connections out (counted as in use) so that the predicate runs
        // without the lock.
        let taken: Vec<_> = {
            let mut st = self.lock();
            let taken: Vec<_> = st.idle.drain(..).collect();
            st.in_use += taken.len();
            taken
        };
        let verdicts: Vec<bool> = taken
            .iter()
            .map(|e| {
                catch_unwind(AssertUnwindSafe(|| keep(&e.conn, &e.metrics()))).unwrap_or(false)
            })
            .collect();
        let mut after = After::default();
        let mut st = self.lock();
        let mut removed = 0;
        for (entry, kept) in taken.into_iter().zip(verdicts) {
            st.in_use -= 1;
            if kept && !st.closed {
                st.place(entry, &mut after);
            } else {
                removed += 1;
                after.discard(entry, Removal::Retired, &mut st);
            }
        }
        after.plan_creates(&mut st, &self.config);
        drop(st);
        after.run(self);
        removed
    }

    pub(crate) fn drain(self: &Arc<Self>) {
        self.drain_generation.fetch_add(1, Ordering::AcqRel);
        let mut after = After::default();
        let mut st = self.lock();
        for entry in std::mem::take(&mut st.idle) {
            after.discard(entry, Removal::Retired, &mut st);
        }
        after.plan_creates(&mut st, &self.config);
        drop(st);
        after.run(self);
    }

    pub(crate) fn revalidate(&self) {
        let mut st = self.lock();
        self.bump_generation(&mut st);
    }

    pub(crate) fn set_suspended(self: &Arc<Self>, suspended: bool) {
        let mut after = After::default();
        let mut st = self.lock();
        st.suspended = suspended;
        if !suspended {
            while st.waiting > 0 {
                let Some(entry) = st.pop_idle(self.config.reuse) else {
                    break;
                };
                st.place(entry, &mut after);
            }
            after.plan_creates(&mut st, &self.config);
        }
        drop(st);
        after.run(self);
    }

    pub(crate) fn is_suspended(&self) -> bool {
        self.lock().suspended
    }

    /// Waits until at least `target` connections exist. Fails with the first connect error
    /// that happens meanwhile.
    pub(crate) async fn warm_up(
        self: &Arc<Self>,
        target: usize,
    ) -> Result<(), PoolError<M::Error>> {
        let errors_before = self.lock().stats.create_errors;
        let started = Instant::now();
        let limit = self.config.wait_timeout;
        loop {
            let listener = self.created_event.listen();
            let creates = {
                let mut st = self.lock();
                if st.closed {
                    return Err(PoolError::Closed);
                }
                let target = target.min(st.max_size);
                if st.exists() >= target {
                    return Ok(());
                }
                if st.stats.create_errors > errors_before {
                    if let Some(last) = &st.last_error {
                        return Err((**last).clone());
                    }
                }
                let mut n = st.plan_creates(&self.config);
                if !st.reconnect.pending && !st.suspended {
                    let size = st.occupied();
                    let extra = target
                        .saturating_sub(size)
                        .min(self.config.max_connecting.saturating_sub(st.creating));
                    st.creating += extra;
                    n += extra;
                }
                n
            };
            self.spawn_creates(creates);
            let remaining = limit.map(|l| l.saturating_sub(started.elapsed()));
            if with_timeout(&*self.runtime, remaining, listener)
                .await
                .is_err()
            {
                let last = self.lock().last_error.clone();
                return Err(PoolError::Timeout(TimeoutError {
                    phase: Phase::Create,
                    after: limit.unwrap_or_default(),
                    last_error: last,
                }));
            }
        }
    }

    // ---- background -----------------------------------------------------------------------

    /// One maintenance pass: idle timeout, lifetime, drained leftovers, keepalive checks,
    /// top-up to `min_size`, leak reports.
    pub(crate) async fn maintain(self: &Arc<Self>) {
        let now = Tick::now();
        let mut after = After::default();
        let mut to_check = Vec::new();
        {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            let drain_generation = self.drain_generation.load(Ordering::Acquire);
            let idle = std::mem::take(&mut st.idle);
            for entry in idle {
                if entry.expired(now) {
                    after.discard(entry, Removal::Lifetime, &mut st);
                } else if entry.drain_generation < drain_generation {
                    after.discard(entry, Removal::Retired, &mut st);
                } else {
                    st.idle.push_back(entry);
                }
            }
            if let Some(idle_timeout) = self.config.idle_timeout {
                // Idle connections are kept in return order, so the front idled longest.
                while st.exists() > st.min_size
                    && st
                        .idle
                        .front()
                        .is_some_and(|e| now.since(e.last_used) >= idle_timeout)
                {
                    let entry = st.idle.pop_front().expect("front exists");
                    after.discard(entry, Removal::Idle, &mut st);
                }
            }
            if let Some(keepalive) = self.config.keepalive_interval {
                let mut kept = VecDeque::with_capacity(st.idle.len());
                while let Some(entry) = st.idle.pop_front() {
                    if now.since(entry.last_used) >= keepalive {
                        to_check.push(entry);
                    } else {
                        kept.push_back(entry);
                    }
                }
                st.idle = kept;
                st.in_use += to_check.len();
            }
            after.plan_creates(&mut st, &self.config);
        }
        after.run(self);

        for mut entry in to_check {
            let outcome = {
                let mut guard = Checking {
                    shared: self,
                    entry: Some(entry),
                };
                let entry_ref = guard.entry.as_mut().expect("entry present until taken");
                let generation = self.generation.load(Ordering::Acquire);
                let result = with_timeout(
                    &*self.runtime,
                    self.config.recycle_timeout,
                    self.recycle(entry_ref),
                )
                .await;
                entry = guard.entry.take().expect("entry present until taken");
                entry.generation = generation;
                result
            };
            match outcome {
                Ok(Ok(())) => {
                    let mut after = After::default();
                    let mut st = self.lock();
                    st.in_use -= 1;
                    if st.closed {
                        after.discard(entry, Removal::Closed, &mut st);
                    } else {
                        // Keep its idle time: a keepalive is not a use.
                        st.place(entry, &mut after);
                    }
                    drop(st);
                    after.run(self);
                }
                Ok(Err(RecycleFailure::Check(err))) => {
                    let class = catch_unwind(AssertUnwindSafe(|| self.manager.classify(&err)))
                        .unwrap_or(ErrorClass::Transient);
                    self.discard_in_use(
                        entry,
                        Removal::FailedCheck,
                        class == ErrorClass::ServerGone,
                    );
                }
                Ok(Err(_)) => self.discard_in_use(entry, Removal::Error, false),
                Err(Elapsed) => self.discard_in_use(entry, Removal::FailedCheck, false),
            }
        }

        self.report_leaks(Instant::now());
    }

    fn report_leaks(&self, now: Instant) {
        let (Some(leases), Some(threshold)) = (&self.leases, self.config.leak_threshold) else {
            return;
        };
        let mut reported = 0;
        {
            let mut leases = leases.lock().unwrap_or_else(|e| e.into_inner());
            for lease in leases.slots.iter_mut().flatten() {
                let held = now.saturating_duration_since(lease.taken);
                if !lease.reported && held >= threshold {
                    lease.reported = true;
                    reported += 1;
                    tracing::warn!(
                        held_for = ?held,
                        taken_at = %lease.location,
                        "connection held longer than the leak threshold"
                    );
                }
            }
        }
        if reported > 0 {
            self.lock().stats.leaks_reported += reported;
        }
    }

    pub(crate) fn take_lease(&self, location: &'static Location<'static>) -> Option<usize> {
        let leases = self.leases.as_ref()?;
        let mut leases = leases.lock().unwrap_or_else(|e| e.into_inner());
        let lease = Lease {
            taken: Instant::now(),
            location,
            reported: false,
        };
        Some(match leases.free.pop() {
            Some(i) => {
                leases.slots[i] = Some(lease);
                i
            }
            None => {
                leases.slots.push(Some(lease));
                leases.slots.len() - 1
            }
        })
    }

    pub(crate) fn end_lease(&self, index: usize) {
        if let Some(leases) = &self.leases {
            let mut leases = leases.lock().unwrap_or_else(|e| e.into_inner());
            leases.slots[index] = None;
            leases.free.push(index);
        }
    }

    pub(crate) fn closed_listener(&self) -> event_listener::EventListener {
        self.closed_event.listen()
    }
}

impl<M: Manager> Drop for Shared<M> {
    fn drop(&mut self) {
        // Last reference gone: stop background timers that only hold a weak one.
        self.closed_event.notify(usize::MAX);
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let idle = std::mem::take(&mut state.idle);
        for entry in idle {
            self.dispose(entry.conn, Removal::Closed);
        }
    }
}

/// Discards the connection if a check is abandoned half-way.
struct Checking<'a, M: Manager> {
    shared: &'a Arc<Shared<M>>,
    entry: Option<Boxed<M>>,
}

impl<M: Manager> Drop for Checking<'_, M> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.shared.discard_in_use(entry, Removal::Broken, false);
        }
    }
}

async fn run_hook<M: Manager>(
    hook: &crate::pool::HookFn<M>,
    conn: &mut M::Connection,
    metrics: &Metrics,
    what: &'static str,
) -> Result<(), RecycleFailure<M::Error>> {
    // Calling the hook happens inside the caught future, so a panic while building its
    // future is contained as well as one while running it.
    match AssertUnwindSafe(async { hook(conn, metrics).await })
        .catch_unwind()
        .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(RecycleFailure::Hook(err)),
        Err(panic) => Err(RecycleFailure::Panicked(what, panic_message(&*panic))),
    }
}

/// A connect, run as a task of its own so a caller that stops waiting does not abort it.
async fn create_task<M: Manager>(shared: Arc<Shared<M>>) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let generation = shared.generation.load(Ordering::Acquire);
    let drain_generation = shared.drain_generation.load(Ordering::Acquire);
    let closed = shared.closed_listener();
    let outcome = if shared.is_closed() {
        None
    } else {
        let open = std::pin::pin!(shared.open(id));
        match futures::future::select(open, closed).await {
            futures::future::Either::Left((result, _)) => Some(result),
            futures::future::Either::Right(_) => None,
        }
    };
    shared.finish_create(outcome, id, generation, drain_generation);
}

/// Waits out a reconnect delay, then lets connects start again.
async fn retry_task<M: Manager>(weak: Weak<Shared<M>>, delay: Duration) {
    let Some((sleep, closed)) = weak
        .upgrade()
        .map(|shared| (shared.runtime.sleep(delay), shared.closed_listener()))
    else {
        return;
    };
    if let futures::future::Either::Right(_) = futures::future::select(sleep, closed).await {
        return;
    }
    if let Some(shared) = weak.upgrade() {
        shared.end_retry();
    }
}

/// Times out waiting callers at their deadlines, one timer for the whole pool; ends when no
/// caller waits with a deadline (the next one starts it again) or the pool closes.
async fn deadline_task<M: Manager>(weak: Weak<Shared<M>>) {
    loop {
        // Listen before looking, so an earlier deadline queued meanwhile is not missed.
        let Some((sleep, closed, earlier)) = weak.upgrade().and_then(|shared| {
            let closed = shared.closed_listener();
            let earlier = shared.deadline_event.listen();
            shared.expire_waiters(false).map(|next| {
                let wait = next.saturating_duration_since(Moment::now());
                (shared.runtime.sleep(wait), closed, earlier)
            })
        }) else {
            return;
        };
        let woken = futures::future::select(sleep, earlier);
        // Closing fails every waiting caller itself: nothing left to time out.
        if let futures::future::Either::Right(_) = futures::future::select(woken, closed).await {
            return;
        }
    }
}

/// Runs a maintenance pass every `maintenance_interval` until the pool closes or is dropped.
pub(crate) async fn maintenance_task<M: Manager>(weak: Weak<Shared<M>>) {
    loop {
        let Some((sleep, closed)) = weak.upgrade().and_then(|shared| {
            let closed = shared.closed_listener();
            (!shared.is_closed()).then(|| {
                (
                    shared.runtime.sleep(shared.config.maintenance_interval),
                    closed,
                )
            })
        }) else {
            return;
        };
        if let futures::future::Either::Right(_) = futures::future::select(sleep, closed).await {
            return;
        }
        let Some(shared) = weak.upgrade() else {
            return;
        };
        shared.maintain().await;
    }
}

/// The waiting part of `get()`: resolves when the pool hands this caller a connection or an
/// error, or at the caller's deadline. Dropping it cancels the wait without losing anything.
///
/// The caller's deadline, its timeout and who times it out live in its waiter: every byte
/// here is paid once per waiting caller.
pub(crate) struct WaitFor<'a, M: Manager> {
    shared: &'a Arc<Shared<M>>,
    waiter: Option<Arc<Waiter<M>>>,
    /// The caller's own timer, when the pool's deadline task does not time it out.
    timer: Option<BoxFuture<'static, ()>>,
}

impl<'a, M: Manager> WaitFor<'a, M> {
    /// Waits in `waiter`, queued by [`Shared::try_acquire`].
    pub(crate) fn new(shared: &'a Arc<Shared<M>>, waiter: Arc<Waiter<M>>) -> Self {
        WaitFor {
            shared,
            waiter: Some(waiter),
            timer: None,
        }
    }

    fn time_out(&mut self) -> Poll<Handout<M>> {
        let waiter = self.waiter.take().expect("waiting");
        Poll::Ready(match self.shared.cancel_waiter(&waiter, true, true) {
            Ok(Some(entry)) => {
                self.shared.waits.record(waiter.enqueued.elapsed());
                Ok(entry)
            }
            Ok(None) => Err(PoolError::Closed),
            Err(PoolError::Timeout(mut timeout)) => {
                timeout.after = waiter.deadline().map_or(Duration::ZERO, |(_, after)| after);
                Err(PoolError::Timeout(timeout))
            }
            Err(err) => Err(err),
        })
    }
}

impl<M: Manager> Future for WaitFor<'_, M> {
    type Output = Handout<M>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let waiter = this
            .waiter
            .as_ref()
            .expect("WaitFor polled after completion");
        if let Poll::Ready(result) = waiter.poll_take(cx) {
            if result.is_ok() {
                this.shared.waits.record(waiter.enqueued.elapsed());
            }
            this.waiter = None;
            return Poll::Ready(result);
        }
        // The pool's deadline task times this caller out: no clock to read here.
        if waiter.is_pool_timed() {
            return Poll::Pending;
        }
        if let Some((deadline, _)) = waiter.deadline() {
            if this.timer.is_none() {
                let now = Moment::now();
                if now >= deadline {
                    return this.time_out();
                }
                this.timer = Some(this.shared.runtime.sleep(deadline - now));
            }
            if let Some(timer) = &mut this.timer {
                if timer.as_mut().poll(cx).is_ready() {
                    return this.time_out();
                }
            }
        }
        Poll::Pending
    }
}

impl<M: Manager> Drop for WaitFor<'_, M> {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            let _ = self.shared.cancel_waiter(&waiter, false, false);
        }
    }
}

struct DisplayError<'a, E>(&'a PoolError<E>);

impl<E: std::error::Error> std::fmt::Display for DisplayError<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.0, f)
    }
}
