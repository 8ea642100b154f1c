//! Shared mode: several callers pipeline single statements on one connection.
//!
//! How a call chooses its lane, and the trade-offs, are documented on [`SharedMode`]. Inside,
//! each lane keeps its state behind a lock and publishes a summary of it whenever the lock is
//! released, so that choosing a lane reads every lane's summary but locks only the lane
//! chosen.

use crate::connection::{Connection, Failure};
use crate::error::Error;
use crate::manager::PgManager;
use crate::pool::{Done, Work};
use momopool::{Pool, Pooled};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;

/// Settings of the shared mode; see [`PgPoolBuilder::shared`](crate::PgPoolBuilder::shared).
///
/// tokio-postgres sends a request without waiting for the previous one's answer, so one
/// connection can serve many callers at once, one round trip apart instead of one round trip
/// each. In shared mode the pool's single-statement calls (`execute` and its variants,
/// `callproc`) go through up to `connections` *lanes*. A lane borrows a connection from the pool
/// while it has work and gives it back once idle, so exclusive checkouts (`get()`,
/// transactions, cursors) keep working beside it.
///
/// A lane qualifies for a call when it has fewer than `max_in_flight` requests in flight and
/// its oldest one started less than `stall_after` ago: a slow statement delays only the few
/// requests already queued behind it, never new ones. Among the qualifying lanes a call goes
/// to one with nothing in flight if there is one; else to a lane not yet holding a
/// connection, which then borrows one; else to the less loaded of two lanes drawn for the call
/// (spread evenly over the lanes, call after call).
/// Not simply to the least loaded of all: callers then move in step, a lane that has just
/// answered its batch drawing the whole next batch, and a batch queued on a connection whose
/// server process is descheduled waits as one (on a 2-core machine this doubled the p99.9
/// latency at 64 callers on 8 lanes, against the same connections shared round-robin).
///
/// While a lane is still opening its connection, callers wait for it rather than each
/// borrowing a connection of their own. When every qualifying lane is full and the pool has
/// no connection to spare, a caller waits for room on a lane (within its deadline, and once:
/// a caller who still finds no room goes on to the pool's first-come-first-served queue).
/// Otherwise, when no lane qualifies, the call takes the exclusive path, which is also where
/// statements that could change session state always go: spotted by their first keyword
/// (`SET`, `LISTEN`, `BEGIN`, ...) or by a call of a built-in session-level advisory lock
/// function, `set_config` or `setseed`. A function of the caller's own that changes the
/// session is not spotted: call it with
/// [`CallOptions::exclusive`](crate::CallOptions::exclusive). An idle lane keeps its connection
/// unless callers are waiting in the pool, or the connection needs a check (it is then
/// returned, and checked there). A caller about to wait in the pool for a connection of its
/// own makes room first: idle lanes give theirs back at once, and when all are busy the least
/// loaded one stops taking work and gives its connection back once its requests are
/// answered, so an exclusive caller never waits for busy lanes to run dry by chance. Until
/// that caller has its connection, no lane borrows one: lanes with work to do cannot take back
/// what was given up for it.
///
/// The trade-off, stated plainly: a caller pipelined behind a slow statement waits for it.
/// `stall_after` bounds how many callers can end up there, not how long they wait. Callers
/// that cannot accept that use the exclusive mode
/// ([`CallOptions::exclusive`](crate::CallOptions::exclusive)).
///
/// Retry rules are the same as in exclusive mode. A deadline frees the caller on time; a
/// cancel request is sent only when the timed-out statement is the one the server is running
/// (the oldest on its lane), because a cancel hits whatever runs, and the lane stops taking
/// work so its connection is discarded once its requests are answered. A statement that
/// timed out while queued behind another has already been sent and may still run: the caller
/// gets [`Error::OutcomeUnknown`](crate::Error::OutcomeUnknown), and it is not replayed, even
/// when marked idempotent (its deadline has passed).
///
/// The cancel request travels on a socket of its own, so when the timed-out statement
/// finishes just before the cancel reaches the server, the server cancels the next statement
/// pipelined on that connection, another caller's. That statement took no effect (its
/// implicit transaction is rolled back), so it runs again, once, on another lane or
/// connection, and its caller never hears of it; only its latency shows it. A second such
/// cancel reaches the caller as SQLSTATE 57014 (`query_canceled`).
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

/// Two distinct lanes out of `n` for the `draw`-th call (the same one twice when there is
/// only one). Fibonacci hashing of the call's number: consecutive calls land far apart and,
/// over any run of calls, every lane is drawn about as often as any other. Spread is all that
/// matters here, and this costs a multiplication where a random number generator would cost
/// a hash.
fn two_lanes(draw: u64, n: usize) -> (usize, usize) {
    let r = draw.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // The high and the low half of `r`, each scaled to a range by a multiplication.
    let scale = |half: u64, range: usize| ((half * range as u64) >> 32) as usize;
    let x = scale(r >> 32, n);
    if n < 2 {
        return (x, x);
    }
    let step = 1 + scale(r & 0xFFFF_FFFF, n - 1);
    (x, (x + step) % n)
}

/// The first bit set in `mask` (not 0) from bit `x` on, wrapping round.
fn first_from(mask: u64, x: usize) -> usize {
    let after_x = mask.rotate_right(x as u32).trailing_zeros() as usize;
    (x + after_x) % MASKED
}

/// Whether the pool could hand out a connection without anyone giving one back: one is idle,
/// or it may open another.
fn has_room(pool: &Pool<PgManager>) -> bool {
    let status = pool.status();
    status.idle > 0 || status.size < status.max_size
}

/// Stops a lane taking work: at once if nothing is in flight on it (its connection is handed
/// back), else once the last request in flight is answered (its ticket hands it back).
fn retire(mut lane: LaneGuard<'_>) {
    if lane.queue.is_empty() {
        hand_back(lane);
    } else {
        lane.retiring = true;
    }
}

/// Takes the lane's connection off it and lets go of it once the lane's lock is released: the
/// last handle dropped returns the connection to the pool, which takes the pool's lock and
/// checks it before anyone uses it again.
fn hand_back(mut lane: LaneGuard<'_>) {
    let conn = lane.conn.take();
    drop(lane);
    drop(conn);
}

#[derive(Default)]
struct LaneState {
    conn: Option<Arc<Pooled<PgManager>>>,
    opening: bool,
    /// Requests in flight, oldest first: (ticket, started, in nanoseconds since
    /// [`Lanes::epoch`]).
    queue: VecDeque<(u64, u64)>,
    /// Stop taking work: the connection is returned once the queue drains.
    retiring: bool,
}

/// One lane: its state behind a lock, and a summary of that state which callers read without
/// the lock to choose a lane. The summary is rewritten each time the lock is released (by
/// [`LaneGuard`]'s drop), so it lags the truth by one critical section at most; whatever it
/// says is checked again under the lock before a request is queued.
struct Lane {
    state: Mutex<LaneState>,
    /// [`HELD`], [`OPENING`] and [`RETIRING`].
    flags: AtomicU8,
    /// Requests in flight.
    load: AtomicUsize,
    /// When the oldest request in flight started, in nanoseconds since [`Lanes::epoch`],
    /// plus one; 0 when none is in flight.
    oldest: AtomicU64,
}

/// The lane holds a connection.
const HELD: u8 = 1;
/// The lane is being given a connection.
const OPENING: u8 = 2;
/// The lane takes no new work.
const RETIRING: u8 = 4;

/// How many lanes [`Lanes::empty`] and [`Lanes::unheld`] cover: with more, every call scans.
const MASKED: usize = u64::BITS as usize;

/// A lane's state, locked; releasing it publishes the lane's summary.
struct LaneGuard<'a> {
    lanes: &'a Lanes,
    index: usize,
    state: MutexGuard<'a, LaneState>,
}

impl std::ops::Deref for LaneGuard<'_> {
    type Target = LaneState;

    fn deref(&self) -> &LaneState {
        &self.state
    }
}

impl std::ops::DerefMut for LaneGuard<'_> {
    fn deref_mut(&mut self) -> &mut LaneState {
        &mut self.state
    }
}

impl Drop for LaneGuard<'_> {
    fn drop(&mut self) {
        let state = &self.state;
        let lane = &self.lanes.lanes[self.index];
        let flags = if state.conn.is_some() { HELD } else { 0 }
            | if state.opening { OPENING } else { 0 }
            | if state.retiring { RETIRING } else { 0 };
        let load = state.queue.len();
        let oldest = state
            .queue
            .front()
            .map_or(0, |&(_, started)| started.saturating_add(1));
        // Only written under the lock, so this is what the last release published.
        let was = Marks::of(
            lane.flags.load(Ordering::Relaxed),
            lane.load.load(Ordering::Relaxed),
        );
        lane.flags.store(flags, Ordering::Relaxed);
        lane.load.store(load, Ordering::Relaxed);
        lane.oldest.store(oldest, Ordering::Relaxed);
        let now = Marks::of(flags, load);
        if now != was && self.index < MASKED {
            let bit = 1u64 << self.index;
            for (mask, set) in [
                (&self.lanes.empty, now.empty),
                (&self.lanes.unheld, now.unheld),
            ] {
                if set {
                    mask.fetch_or(bit, Ordering::Relaxed);
                } else {
                    mask.fetch_and(!bit, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Where a lane's summary puts it in [`Lanes::empty`] and [`Lanes::unheld`].
#[derive(Clone, Copy, PartialEq, Eq)]
struct Marks {
    empty: bool,
    unheld: bool,
}

impl Marks {
    fn of(flags: u8, load: usize) -> Self {
        Marks {
            empty: flags == HELD && load == 0,
            unheld: flags & (HELD | OPENING) == 0,
        }
    }
}

/// What a call choosing its lane makes of one lane's summary.
#[derive(Clone, Copy)]
enum Seen {
    /// Being given a connection.
    Opening,
    /// Without a connection, and none on its way: it could borrow one.
    Unheld,
    /// Retiring, or stalled (its oldest request has run `stall_after` or longer).
    Barred,
    /// Full; it could be found stalled in this many nanoseconds.
    Full(u64),
    /// Takes work, with this many requests in flight.
    Taking(usize),
}

pub(crate) struct Lanes {
    mode: SharedMode,
    lanes: Vec<Lane>,
    /// The origin of [`Lane::oldest`].
    epoch: quanta::Instant,
    next_ticket: AtomicU64,
    /// `mode.stall_after` in nanoseconds, as lane ages are compared.
    stall_nanos: u64,
    /// Callers getting a connection of their own from an exhausted pool: while there are
    /// any, no lane borrows one.
    claims: AtomicUsize,
    /// Bit `i` set: lane `i` holds a connection and takes work, with nothing in flight (the
    /// first [`MASKED`] lanes; kept with each lane's summary).
    empty: AtomicU64,
    /// Bit `i` set: lane `i` has no connection and none on its way.
    unheld: AtomicU64,
    /// Notified when a lane finishes opening (or fails to), and when a full lane or one
    /// giving its connection back lets go of a request: what callers waiting for a lane
    /// wait for.
    changed: event_listener::Event,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes").field("mode", &self.mode).finish()
    }
}

/// A request's place on a lane; leaving it (by drop) updates the lane.
struct Ticket<'a> {
    lanes: &'a Lanes,
    pool: &'a Pool<PgManager>,
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
        let was_full = lane.queue.len() >= self.lanes.mode.max_in_flight;
        // Most often the oldest: answers come back in the order requests were sent.
        if let Some(at) = lane.queue.iter().position(|&(id, _)| id == self.id) {
            lane.queue.remove(at);
        }
        let unusable = self.conn.is_closed() || lane.retiring;
        let give_back = lane.queue.is_empty() && (unusable || self.pool.has_waiters());
        if was_full || give_back {
            // A caller waiting for room on a lane may use this one now (or open it anew).
            self.lanes.changed.notify_additional(1);
        }
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

/// A caller's claim on a connection of its own, from [`Lanes::make_room`]; held until the
/// pool has answered it.
pub(crate) struct Claim<'a>(&'a Lanes);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.claims.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Pick<'a> {
    /// Queued on a lane.
    Ready(Ticket<'a>),
    /// Lane `i` is to be given a connection.
    Open(usize),
    /// Wait for a lane to open or to have room, at most this long when given: by then a
    /// full lane could have stalled, and the scan must be made again.
    Wait(event_listener::EventListener, Option<Duration>),
    /// No lane can take the call: it goes to a connection of its own.
    Exclusive,
}

impl Lanes {
    pub(crate) fn new(mode: SharedMode) -> Self {
        Lanes {
            mode,
            lanes: (0..mode.connections.max(1))
                .map(|_| Lane {
                    state: Mutex::new(LaneState::default()),
                    flags: AtomicU8::new(0),
                    load: AtomicUsize::new(0),
                    oldest: AtomicU64::new(0),
                })
                .collect(),
            epoch: quanta::Instant::now(),
            stall_nanos: u64::try_from(mode.stall_after.as_nanos()).unwrap_or(u64::MAX),
            claims: AtomicUsize::new(0),
            empty: AtomicU64::new(0),
            // Every lane starts without a connection.
            unheld: AtomicU64::new(match mode.connections.max(1) {
                n if n >= MASKED => u64::MAX,
                n => (1u64 << n) - 1,
            }),
            next_ticket: AtomicU64::new(0),
            changed: event_listener::Event::new(),
        }
    }

    fn lane(&self, i: usize) -> LaneGuard<'_> {
        LaneGuard {
            lanes: self,
            index: i,
            state: self.lanes[i]
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Lane `i` as its summary shows it `now` (in nanoseconds since [`Lanes::epoch`]).
    /// Runs for every lane a call looks at, so it keeps to integers.
    fn see(&self, i: usize, now: u64) -> Seen {
        let lane = &self.lanes[i];
        let flags = lane.flags.load(Ordering::Relaxed);
        if flags & OPENING != 0 {
            return Seen::Opening;
        }
        if flags & HELD == 0 {
            return Seen::Unheld;
        }
        if flags & RETIRING != 0 {
            return Seen::Barred;
        }
        let load = lane.load.load(Ordering::Relaxed);
        let age = match lane.oldest.load(Ordering::Relaxed) {
            0 => 0,
            oldest => now.saturating_sub(oldest - 1),
        };
        if age >= self.stall_nanos {
            Seen::Barred
        } else if load >= self.mode.max_in_flight {
            Seen::Full(self.stall_nanos - age)
        } else {
            Seen::Taking(load)
        }
    }

    /// The lane that the scan in [`pick`](Lanes::pick) would choose, found without reading
    /// every lane in its two common cases: some lane takes work with nothing in flight (the
    /// first from `x` on in [`Lanes::empty`]), or none does and no lane could borrow a
    /// connection, so the less loaded of the drawn lanes `x` and `y` takes the call. `None`:
    /// the scan decides.
    fn quick_pick(&self, x: usize, y: usize, now: u64, claimed: bool) -> Option<usize> {
        if self.lanes.len() > MASKED {
            return None;
        }
        let empty = self.empty.load(Ordering::Relaxed);
        if empty != 0 {
            return Some(first_from(empty, x));
        }
        if !claimed && self.unheld.load(Ordering::Relaxed) != 0 {
            return None;
        }
        match (self.see(x, now), self.see(y, now)) {
            (Seen::Taking(load_x), Seen::Taking(load_y)) => {
                Some(if load_y < load_x { y } else { x })
            }
            (Seen::Taking(_), _) => Some(x),
            (_, Seen::Taking(_)) => Some(y),
            _ => None,
        }
    }

    /// `at` in nanoseconds since [`Lanes::epoch`]. The lanes read `quanta`'s clock, as the
    /// pool's waiters do: a time-stamp counter read where the CPU has an invariant one, about
    /// half the cost of `Instant::now()` on every call.
    fn since_epoch(&self, at: quanta::Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Where the next call goes. `may_wait_for_room`: whether a caller who finds every lane
    /// full may wait for one to have room (once per call, so that callers arriving meanwhile
    /// cannot keep it waiting for ever: the second time it goes to the pool, whose queue is
    /// first come, first served).
    fn pick<'a>(&'a self, pool: &'a Pool<PgManager>, may_wait_for_room: bool) -> Pick<'a> {
        // Listened to only when the scan says to wait, then the scan is made again, so that a
        // change between the two is not missed.
        let mut listener = None;
        let n = self.lanes.len();
        // This call's ticket, should it be queued; its number also draws two lanes, the
        // better of which takes the call when every lane already has work.
        let id = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let (x, y) = two_lanes(id, n);
        // A pass ends without a pick only when a lane's connection was found closed or with
        // input pending (it is then handed back or retired), or when the lane chosen changed
        // in the meantime, so this ends.
        loop {
            let now = self.since_epoch(quanta::Instant::now());
            // Lanes without a connection stay so while a caller claims one of its own.
            let claimed = self.claims.load(Ordering::Relaxed) != 0;
            if let Some(i) = self.quick_pick(x, y, now, claimed) {
                match self.enqueue(pool, i, id, now) {
                    Some(pick) => return pick,
                    None => continue,
                }
            }
            // A lane able to take work with nothing in flight.
            let mut empty_lane = None;
            // The loads of the two drawn lanes; `usize::MAX` while unseen or unable to take
            // work.
            let (mut load_x, mut load_y) = (usize::MAX, usize::MAX);
            // The first lane able to take work from the first drawn one on.
            let mut next_after_x = None;
            let mut idle_lane = None;
            let mut opening = false;
            // The soonest a full lane could be found stalled, in nanoseconds from now.
            let mut full_until = None;
            // Read without taking any lane's lock: `enqueue` checks the choice under it.
            // From the first drawn lane on, so that the first lane found empty (which ends
            // the scan) is not always the same one.
            for i in (x..n).chain(0..x) {
                match self.see(i, now) {
                    Seen::Opening => opening = true,
                    Seen::Unheld if !claimed => idle_lane = idle_lane.or(Some(i)),
                    Seen::Unheld | Seen::Barred => {}
                    Seen::Full(until) => {
                        full_until = Some(full_until.map_or(until, |u: u64| u.min(until)));
                    }
                    Seen::Taking(0) => {
                        // Nothing else would be chosen over it.
                        empty_lane = Some(i);
                        break;
                    }
                    Seen::Taking(load) => {
                        next_after_x = next_after_x.or(Some(i));
                        if i == x {
                            load_x = load;
                        } else if i == y {
                            load_y = load;
                        }
                    }
                }
            }
            // A held connection with nothing in flight first, then a lane that could open
            // one, then the less loaded of the two drawn lanes (or whichever of them can take
            // work, or else the next one after the first drawn that can: not the least loaded
            // of all, which near saturation would bring back the lock-step).
            let chosen = match (empty_lane, idle_lane, next_after_x) {
                (Some(i), _, _) => Some(i),
                (None, Some(i), _) => {
                    let mut lane = self.lane(i);
                    if lane.conn.is_some() || lane.opening {
                        continue;
                    }
                    lane.opening = true;
                    return Pick::Open(i);
                }
                (None, None, Some(next)) => Some(match (load_x, load_y) {
                    (usize::MAX, usize::MAX) => next,
                    (lx, ly) if ly < lx => y,
                    _ => x,
                }),
                (None, None, None) => None,
            };
            let wait = match chosen {
                Some(i) => match self.enqueue(pool, i, id, now) {
                    Some(pick) => return pick,
                    None => continue,
                },
                None if opening => None,
                // Every lane is full: wait for room rather than take a connection from the
                // pool, unless one is there for the taking (else a lane would have to give
                // its own up, for one statement).
                None if may_wait_for_room && full_until.is_some() && !has_room(pool) => {
                    full_until.map(Duration::from_nanos)
                }
                None => return Pick::Exclusive,
            };
            match listener.take() {
                Some(listener) => return Pick::Wait(listener, wait),
                None => listener = Some(self.changed.listen()),
            }
        }
    }

    /// Ticket `id` on lane `i`, started at `now` (since [`Lanes::epoch`]). `None` when the
    /// lane changed since the scan (it is full now, retiring, or without a connection), when
    /// its connection is closed (it is handed back, or retired if requests are still in
    /// flight), or when its connection, with nothing asked of it, holds input nobody asked for
    /// (perhaps the server's goodbye, see `PgManager::needs_check`): it is handed back to the
    /// pool, which checks it before anyone uses it again. Only the chosen lane is peeked at:
    /// one system call per pick, not one per lane.
    fn enqueue<'a>(
        &'a self,
        pool: &'a Pool<PgManager>,
        i: usize,
        id: u64,
        now: u64,
    ) -> Option<Pick<'a>> {
        let mut lane = self.lane(i);
        let Some(conn) = &lane.conn else {
            // Handed back since the scan.
            return None;
        };
        if lane.retiring || lane.queue.len() >= self.mode.max_in_flight {
            return None;
        }
        if conn.is_closed() {
            retire(lane);
            return None;
        }
        if lane.queue.is_empty() && conn.input_pending() {
            hand_back(lane);
            return None;
        }
        let conn = Arc::clone(conn);
        lane.queue.push_back((id, now));
        Some(Pick::Ready(Ticket {
            lanes: self,
            pool,
            lane: i,
            id,
            conn,
        }))
    }

    /// Makes room for a caller about to ask the pool for a connection of its own, when the
    /// pool has none idle: idle lanes give theirs back at once. When every lane is busy and
    /// the pool cannot open another connection, the least loaded lane stops taking work and
    /// gives its connection back once its requests in flight are answered, so that an
    /// exclusive caller never waits for busy lanes to run dry by chance.
    ///
    /// When the pool cannot open another connection, the caller keeps the returned claim
    /// until the pool has answered it: while any claim is held, no lane borrows a
    /// connection, so a connection given back here reaches the caller even if lanes with
    /// work to do see it first. `None` when the pool has a connection idle or room for
    /// another (it opens one for the caller if need be).
    pub(crate) fn make_room(&self, pool: &Pool<PgManager>) -> Option<Claim<'_>> {
        let status = pool.status();
        if status.idle > 0 {
            return None;
        }
        let exhausted = status.size >= status.max_size;
        let claim = exhausted.then(|| {
            self.claims.fetch_add(1, Ordering::Relaxed);
            Claim(self)
        });
        let mut released = false;
        let mut least: Option<(usize, usize)> = None;
        for i in 0..self.lanes.len() {
            let lane = self.lane(i);
            if lane.opening || lane.conn.is_none() {
                continue;
            }
            if lane.queue.is_empty() {
                hand_back(lane);
                released = true;
            } else if !lane.retiring && least.is_none_or(|(_, l)| lane.queue.len() < l) {
                least = Some((i, lane.queue.len()));
            }
        }
        if !released && exhausted {
            if let Some((i, _)) = least {
                retire(self.lane(i));
            }
        }
        claim
    }

    /// Gives lane `i` a connection from the pool and a ticket on it. `None` when a caller
    /// claimed a connection of its own meanwhile (see [`make_room`](Lanes::make_room)): the
    /// connection goes back to the pool, for that caller, and the call chooses again.
    async fn open<'a>(
        &'a self,
        i: usize,
        pool: &'a Pool<PgManager>,
    ) -> Result<Option<Ticket<'a>>, Error> {
        struct Opening<'a>(&'a Lanes, usize);
        impl Drop for Opening<'_> {
            fn drop(&mut self) {
                self.0.lane(self.1).opening = false;
                self.0.changed.notify(usize::MAX);
            }
        }
        let _opening = Opening(self, i);
        let conn = Arc::new(pool.get().await?);
        if self.claims.load(Ordering::Relaxed) != 0 {
            return Ok(None);
        }
        let mut lane = self.lane(i);
        let id = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        lane.queue
            .push_back((id, self.since_epoch(quanta::Instant::now())));
        lane.conn = Some(Arc::clone(&conn));
        Ok(Some(Ticket {
            lanes: self,
            pool,
            lane: i,
            id,
            conn,
        }))
    }

    /// Runs one statement in shared mode. `None` means: take the exclusive path instead (no
    /// lane can take it now).
    pub(crate) async fn perform(
        &self,
        pool: &Pool<PgManager>,
        work: &Work<'_>,
        deadline: Option<(Duration, Instant)>,
    ) -> Option<Result<Done, Failure>> {
        let outcome = self.perform_once(pool, work, deadline).await;
        match &outcome {
            // Cancelled by a cancel request meant for another caller's statement (see
            // `perform_once`): it took no effect, so it runs again, once, on a lane chosen
            // afresh (or on the exclusive path).
            Some(Err(Failure { error, sent: false }))
                if error.code() == Some(&SqlState::QUERY_CANCELED) =>
            {
                tracing::debug!("a statement hit by another's cancel request runs again");
                self.perform_once(pool, work, deadline).await
            }
            _ => outcome,
        }
    }

    async fn perform_once(
        &self,
        pool: &Pool<PgManager>,
        work: &Work<'_>,
        deadline: Option<(Duration, Instant)>,
    ) -> Option<Result<Done, Failure>> {
        let mut waited_for_room = false;
        let ticket = loop {
            match self.pick(pool, !waited_for_room) {
                Pick::Ready(ticket) => break ticket,
                Pick::Open(i) => match self.open(i, pool).await {
                    Ok(Some(ticket)) => break ticket,
                    Ok(None) => {}
                    Err(error) => return Some(Err(Failure { error, sent: false })),
                },
                Pick::Wait(changed, at_most) => {
                    // An opening lane gets its connection or fails within the pool's own
                    // wait; a full lane lets a request go or stalls within `at_most`. The
                    // caller's deadline bounds both: once it has passed, the exclusive path
                    // fails the call as a wait for a connection would.
                    waited_for_room |= at_most.is_some();
                    let at_most = match deadline {
                        Some((limit, started)) => {
                            let remaining = limit.saturating_sub(started.elapsed());
                            if remaining.is_zero() {
                                return None;
                            }
                            Some(at_most.map_or(remaining, |d| d.min(remaining)))
                        }
                        None => at_most,
                    };
                    match at_most {
                        Some(d) => {
                            let sleep = pool.runtime().sleep(d);
                            futures::future::select(changed, sleep).await;
                        }
                        None => changed.await,
                    }
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
        // A deadline on this lane sent a cancel request for the statement then running, and
        // marked the connection broken. The request travels on a socket of its own: when that
        // statement finished first, the server cancels the next one, possibly this caller's.
        // A cancelled single statement has no effect (its implicit transaction is rolled
        // back), so it counts as not sent.
        let outcome = match outcome {
            Err(Failure { error, sent: true })
                if conn.is_closed() && error.code() == Some(&SqlState::QUERY_CANCELED) =>
            {
                Err(Failure { error, sent: false })
            }
            outcome => outcome,
        };
        Some(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::{first_from, two_lanes};

    #[test]
    fn first_from_wraps_round() {
        assert_eq!(first_from(0b1, 0), 0);
        assert_eq!(first_from(0b1010, 0), 1);
        assert_eq!(first_from(0b1010, 1), 1);
        assert_eq!(first_from(0b1010, 2), 3);
        assert_eq!(first_from(0b1010, 4), 1);
        assert_eq!(first_from(1 << 63, 5), 63);
        assert_eq!(first_from(1 | 1 << 63, 63), 63);
        assert_eq!(first_from(0b11, 63), 0);
    }

    #[test]
    fn two_lanes_are_distinct_in_range_and_spread() {
        assert_eq!(two_lanes(7, 1), (0, 0));
        // From the first call on, and across the counter's wrap.
        for first in [0, u64::MAX - 1000] {
            for n in 2..12 {
                let mut seen = vec![0usize; n];
                let mut pairs = vec![0usize; n * n];
                for draw in (0..400 * n as u64).map(|k| first.wrapping_add(k)) {
                    let (x, y) = two_lanes(draw, n);
                    assert!(x < n && y < n && x != y, "{x}, {y} of {n}");
                    seen[x] += 1;
                    seen[y] += 1;
                    pairs[x * n + y] += 1;
                }
                // Each lane is drawn about 800 times; fewer than 700 would mean the draw
                // favours some lanes.
                assert!(seen.iter().all(|&c| c > 700), "{n} lanes: {seen:?}");
                // Every pair is drawn too (about 400 / (n - 1) times): the second lane is not
                // tied to the first.
                let missing = (0..n * n)
                    .filter(|&p| p / n != p % n && pairs[p] == 0)
                    .count();
                assert_eq!(missing, 0, "{n} lanes: {pairs:?}");
            }
        }
    }
}
