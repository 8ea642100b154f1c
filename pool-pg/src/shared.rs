//! Shared mode: several callers pipeline single statements on one connection.
//!
//! tokio-postgres sends a request without waiting for the previous one's answer, so one
//! connection can serve many callers at once, one round trip apart instead of one round trip
//! each. In shared mode the pool's single-statement calls (`execute` and its variants,
//! `callproc`) go through a few *lanes*. A lane borrows a connection from the pool while it
//! has work and gives it back once idle, so exclusive checkouts (`get()`, transactions,
//! cursors) keep working beside it.
//!
//! For each call the least-loaded lane is chosen among those with fewer than
//! `max_in_flight` requests and whose oldest request started less than `stall_after` ago:
//! a slow statement delays only the few requests already queued behind it, never new ones.
//! While a lane is still opening its connection, callers wait for it rather than each
//! borrowing a connection of their own. When no lane qualifies the call takes the exclusive
//! path (it queues in the pool as usual), which is also where statements that could change
//! session state always go. An idle lane keeps its connection unless callers are waiting in
//! the pool, or the connection needs a check (it is then returned, and checked there).
//!
//! The trade-off, stated plainly: a caller pipelined behind a slow statement waits for it.
//! `stall_after` bounds how many callers can end up there, not how long they wait. Callers
//! that cannot accept that use the exclusive mode
//! ([`CallOptions::exclusive`](crate::CallOptions::exclusive)).
//!
//! Retry rules are the same as in exclusive mode. A deadline frees the caller on time; a
//! cancel request is sent only when the timed-out statement is the one the server is running
//! (the oldest on its lane), because a cancel hits whatever runs, and the lane stops taking
//! work so its connection is checked before reuse. A statement that timed out while queued
//! behind another has already been sent and may still run: the caller gets
//! [`Error::OutcomeUnknown`] unless it was marked idempotent.

use crate::connection::{Connection, Failure};
use crate::error::Error;
use crate::manager::PgManager;
use crate::pool::{Done, Work};
use momopool::{Pool, Pooled};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Settings of the shared mode; see [`PgPoolBuilder::shared`](crate::PgPoolBuilder::shared).
///
/// # Examples
///
/// ```
/// use momopool_pg::SharedMode;
/// use std::time::Duration;
///
/// let mode = SharedMode { connections: 8, ..SharedMode::default() };
/// assert_eq!(mode.max_in_flight, 32);
/// assert_eq!(mode.stall_after, Duration::from_millis(20));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedMode {
    /// How many pool connections the lanes may hold at once.
    pub connections: usize,
    /// The most requests in flight on one connection.
    pub max_in_flight: usize,
    /// A lane whose oldest request has run this long takes no new requests.
    pub stall_after: Duration,
}

impl Default for SharedMode {
    fn default() -> Self {
        SharedMode {
            connections: 4,
            max_in_flight: 32,
            stall_after: Duration::from_millis(20),
        }
    }
}

/// Takes the lane's connection off it and lets go of it once the lane's lock is released: the
/// last handle dropped returns the connection to the pool, which takes the pool's lock and
/// checks it before anyone uses it again.
fn hand_back(mut lane: MutexGuard<'_, LaneState>) {
    let conn = lane.conn.take();
    drop(lane);
    drop(conn);
}

#[derive(Default)]
struct LaneState {
    conn: Option<Arc<Pooled<PgManager>>>,
    opening: bool,
    /// Requests in flight, oldest first: (ticket, started).
    queue: VecDeque<(u64, Instant)>,
    /// Stop taking work: the connection is returned once the queue drains.
    retiring: bool,
}

pub(crate) struct Lanes {
    mode: SharedMode,
    lanes: Vec<Mutex<LaneState>>,
    next_ticket: AtomicU64,
    /// Notified when a lane finishes opening (or fails to).
    opened: event_listener::Event,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes").field("mode", &self.mode).finish()
    }
}

/// A request's place on a lane; leaving it (by drop) updates the lane.
struct Ticket<'a> {
    lanes: &'a Lanes,
    lane: usize,
    id: u64,
    conn: Arc<Pooled<PgManager>>,
}

impl Ticket<'_> {
    fn is_oldest(&self) -> bool {
        self.lanes
            .lane(self.lane)
            .queue
            .front()
            .is_some_and(|(id, _)| *id == self.id)
    }

    fn retire_lane(&self) {
        self.lanes.lane(self.lane).retiring = true;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut lane = self.lanes.lane(self.lane);
        lane.queue.retain(|(id, _)| *id != self.id);
        let unusable = self.conn.is_closed() || lane.retiring;
        let give_back =
            lane.queue.is_empty() && (unusable || Pooled::pool(&self.conn).status().waiting > 0);
        if give_back {
            lane.retiring = false;
            hand_back(lane);
        } else if unusable
            && lane
                .conn
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, &self.conn))
        {
            // Stop new work; the last request out returns it.
            lane.retiring = true;
        }
    }
}

enum Pick<'a> {
    Ready(Ticket<'a>),
    Open(usize),
    Wait(event_listener::EventListener),
    Exclusive,
}

impl Lanes {
    pub(crate) fn new(mode: SharedMode) -> Self {
        Lanes {
            mode,
            lanes: (0..mode.connections.max(1))
                .map(|_| Mutex::new(LaneState::default()))
                .collect(),
            next_ticket: AtomicU64::new(0),
            opened: event_listener::Event::new(),
        }
    }

    fn lane(&self, i: usize) -> MutexGuard<'_, LaneState> {
        self.lanes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pick(&self) -> Pick<'_> {
        // Listen first, so a lane that finishes opening during the scan is not missed.
        let listener = self.opened.listen();
        // A pass ends without a pick only when it took a connection off a lane, so this ends.
        loop {
            let now = Instant::now();
            let mut best: Option<(usize, usize)> = None;
            let mut idle_lane = None;
            let mut opening = false;
            for i in 0..self.lanes.len() {
                let mut lane = self.lane(i);
                if lane.opening {
                    opening = true;
                    continue;
                }
                let closed = lane.conn.as_ref().is_some_and(|c| c.is_closed());
                if closed && lane.queue.is_empty() {
                    hand_back(lane);
                    lane = self.lane(i);
                }
                match &lane.conn {
                    Some(_) if !lane.retiring && !closed => {
                        let load = lane.queue.len();
                        let stalled = lane
                            .queue
                            .front()
                            .is_some_and(|(_, t)| now.duration_since(*t) >= self.mode.stall_after);
                        if load < self.mode.max_in_flight
                            && !stalled
                            && best.is_none_or(|(_, l)| load < l)
                        {
                            best = Some((i, load));
                        }
                    }
                    None if !lane.opening && idle_lane.is_none() => idle_lane = Some(i),
                    _ => {}
                }
            }
            // Prefer a connection already held, unless it has work queued and another lane
            // could open one.
            return match (best, idle_lane) {
                (Some((i, 0)), _) | (Some((i, _)), None) => match self.enqueue(i, now) {
                    Some(pick) => pick,
                    None => continue,
                },
                (Some(_), Some(i)) | (None, Some(i)) => {
                    self.lane(i).opening = true;
                    Pick::Open(i)
                }
                (None, None) if opening => Pick::Wait(listener),
                (None, None) => Pick::Exclusive,
            };
        }
    }

    /// A ticket on lane `i`. `None` when its connection, with nothing asked of it, holds input
    /// nobody asked for (perhaps the server's goodbye, see `PgManager::needs_check`): it is
    /// handed back to the pool, which checks it before anyone uses it again. Only the chosen
    /// lane is peeked at: one system call per pick, not one per lane.
    fn enqueue(&self, i: usize, now: Instant) -> Option<Pick<'_>> {
        let mut lane = self.lane(i);
        let Some(conn) = &lane.conn else {
            return Some(Pick::Exclusive);
        };
        if lane.queue.is_empty() && conn.input_pending() {
            hand_back(lane);
            return None;
        }
        let conn = Arc::clone(conn);
        let id = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        lane.queue.push_back((id, now));
        Some(Pick::Ready(Ticket {
            lanes: self,
            lane: i,
            id,
            conn,
        }))
    }

    /// Gives idle lanes' connections back to the pool, when an exclusive caller is about to
    /// find it empty.
    pub(crate) fn release_idle(&self, pool: &Pool<PgManager>) {
        if pool.status().idle > 0 {
            return;
        }
        for i in 0..self.lanes.len() {
            let lane = self.lane(i);
            if lane.queue.is_empty() && !lane.opening {
                hand_back(lane);
            }
        }
    }

    /// Gives lane `i` a connection from the pool and a ticket on it.
    async fn open(&self, i: usize, pool: &Pool<PgManager>) -> Result<Ticket<'_>, Error> {
        struct Opening<'a>(&'a Lanes, usize);
        impl Drop for Opening<'_> {
            fn drop(&mut self) {
                self.0.lane(self.1).opening = false;
                self.0.opened.notify(usize::MAX);
            }
        }
        let _opening = Opening(self, i);
        let conn = Arc::new(pool.get().await?);
        let mut lane = self.lane(i);
        let id = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        lane.queue.push_back((id, Instant::now()));
        lane.conn = Some(Arc::clone(&conn));
        Ok(Ticket {
            lanes: self,
            lane: i,
            id,
            conn,
        })
    }

    /// Runs one statement in shared mode. `None` means: take the exclusive path instead (no
    /// lane can take it now).
    pub(crate) async fn perform(
        &self,
        pool: &Pool<PgManager>,
        work: &Work<'_>,
        deadline: Option<(Duration, Instant)>,
    ) -> Option<Result<Done, Failure>> {
        let ticket = loop {
            match self.pick() {
                Pick::Ready(ticket) => break ticket,
                Pick::Open(i) => match self.open(i, pool).await {
                    Ok(ticket) => break ticket,
                    Err(error) => return Some(Err(Failure { error, sent: false })),
                },
                Pick::Wait(opened) => {
                    // Bounded by the pool's own wait: an opening lane either gets its
                    // connection or fails within it.
                    opened.await;
                }
                Pick::Exclusive => return None,
            }
        };
        let conn: &Connection = &ticket.conn;
        let outcome = match deadline {
            None => conn.perform(work).await,
            Some((limit, started)) => {
                let remaining = limit.saturating_sub(started.elapsed());
                let sleep = pool.runtime().sleep(remaining);
                let perform = Box::pin(conn.perform(work));
                match futures::future::select(perform, sleep).await {
                    futures::future::Either::Left((outcome, _)) => outcome,
                    futures::future::Either::Right(_) => {
                        let running = ticket.is_oldest();
                        ticket.retire_lane();
                        let error = Error::StatementTimeout { after: limit };
                        if running {
                            conn.cancel_in_background();
                            conn.mark_broken();
                            Err(Failure { error, sent: false })
                        } else {
                            // Queued behind another statement: it was sent and may still run.
                            Err(Failure { error, sent: true })
                        }
                    }
                }
            }
        };
        Some(outcome)
    }
}
