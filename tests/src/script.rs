//! A scripted in-memory [`Manager`] for behaviour tests.
//!
//! Each operation (create, check, and the three hooks) follows a script of [`Step`]s: the
//! next queued step if any, otherwise the operation's default step. A step can succeed, fail
//! (with a chosen [`ErrorClass`]), take a while, never finish, or panic. The manager counts
//! what happened, including the high-water mark of connections alive plus connects in flight,
//! which is what "never more than `max_size`" is checked against.

use momopool::{ErrorClass, HookError, Manager, Metrics, PoolBuilder, Removal, Runtime};
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What one scripted operation does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Succeed at once.
    Ok,
    /// Fail at once with a transient error.
    Err,
    /// Fail at once with an error of this class.
    ErrClass(ErrorClass),
    /// Succeed after this long.
    Slow(Duration),
    /// Fail (transient) after this long.
    SlowErr(Duration),
    /// Never finish.
    Never,
    /// Panic.
    Panic,
}

/// The error a scripted step fails with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    /// Which operation failed, and its sequence number.
    pub message: String,
    /// How the manager classifies it.
    pub class: ErrorClass,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ScriptError {}

/// A connection made by [`Script`].
#[derive(Debug)]
pub struct Conn {
    /// Creation order, starting at 0.
    pub id: u64,
    /// Set to make `is_broken` report it broken.
    pub broken: bool,
    /// Set (with `broken`) to make `is_server_gone` say the server went away.
    pub server_gone: bool,
    /// Set to make `needs_check` (and `needs_check_on_handover`) ask for a check before reuse.
    pub dirty: bool,
    /// The backend epoch this connection was made in; see [`Script::kill_existing`].
    epoch: u64,
    counts: Arc<Counts>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.counts.dropped.fetch_add(1, Ordering::SeqCst);
        self.counts.alive_change(-1);
    }
}

/// What the scripted manager observed.
#[derive(Debug, Default)]
pub struct Counts {
    /// Calls to `create`.
    pub creates: AtomicU64,
    /// Successful creates.
    pub created: AtomicU64,
    /// Calls to `check`.
    pub checks: AtomicU64,
    /// Calls to `needs_check`.
    pub needs_checks: AtomicU64,
    /// Calls to `needs_check_on_handover`.
    pub handover_checks: AtomicU64,
    /// Connections dropped.
    pub dropped: AtomicU64,
    /// `removed` notices, by reason.
    pub removed: Mutex<Vec<Removal>>,
    live: Mutex<Live>,
}

#[derive(Debug, Default)]
struct Live {
    alive: i64,
    connecting: i64,
    peak: i64,
    peak_connecting: i64,
}

impl Counts {
    fn alive_change(&self, delta: i64) {
        let mut live = self.live.lock().unwrap();
        live.alive += delta;
        live.peak = live.peak.max(live.alive + live.connecting);
    }

    fn connecting_change(&self, delta: i64, alive_delta: i64) {
        let mut live = self.live.lock().unwrap();
        live.connecting += delta;
        live.alive += alive_delta;
        live.peak = live.peak.max(live.alive + live.connecting);
        live.peak_connecting = live.peak_connecting.max(live.connecting);
    }

    /// Connections that exist now (made and not yet dropped, detached ones included).
    pub fn alive(&self) -> i64 {
        self.live.lock().unwrap().alive
    }

    /// The most connections that existed or were being created at the same time.
    pub fn peak(&self) -> i64 {
        self.live.lock().unwrap().peak
    }

    /// The most connects in flight at the same time.
    pub fn peak_connecting(&self) -> i64 {
        self.live.lock().unwrap().peak_connecting
    }

    /// Starts the high-water marks afresh from the current counts.
    pub fn reset_peaks(&self) {
        let mut live = self.live.lock().unwrap();
        live.peak = live.alive + live.connecting;
        live.peak_connecting = live.connecting;
    }

    /// Connects in flight now.
    pub fn connecting(&self) -> i64 {
        self.live.lock().unwrap().connecting
    }

    /// How many `removed` notices gave this reason.
    pub fn removed(&self, reason: Removal) -> usize {
        self.removed
            .lock()
            .unwrap()
            .iter()
            .filter(|r| **r == reason)
            .count()
    }
}

/// One operation's script: queued steps first, then the default.
#[derive(Debug)]
struct Plan {
    queued: VecDeque<Step>,
    default: Step,
}

impl Plan {
    fn next(&mut self) -> Step {
        self.queued
            .pop_front()
            .unwrap_or_else(|| self.default.clone())
    }
}

/// The operations a script covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `Manager::create`.
    Create,
    /// `Manager::check`.
    Check,
    /// The `post_create` hook (installed by [`Script::hooks`]).
    PostCreate,
    /// The `pre_recycle` hook.
    PreRecycle,
    /// The `post_recycle` hook.
    PostRecycle,
}

/// A scripted manager. Cheap to clone: clones share the script and the counts.
#[derive(Debug, Clone)]
pub struct Script {
    plans: Arc<Mutex<[Plan; 5]>>,
    runtime: Arc<dyn Runtime>,
    epoch: Arc<AtomicU64>,
    /// How long `Manager::removed` blocks, in ms; see [`Script::slow_removal`].
    removal_ms: Arc<AtomicU64>,
    /// What happened so far.
    pub counts: Arc<Counts>,
}

fn op_index(op: Op) -> usize {
    match op {
        Op::Create => 0,
        Op::Check => 1,
        Op::PostCreate => 2,
        Op::PreRecycle => 3,
        Op::PostRecycle => 4,
    }
}

impl Script {
    /// A manager whose every operation succeeds at once; `runtime` times the slow steps.
    pub fn new(runtime: Arc<dyn Runtime>) -> Self {
        let plan = || Plan {
            queued: VecDeque::new(),
            default: Step::Ok,
        };
        Script {
            plans: Arc::new(Mutex::new([plan(), plan(), plan(), plan(), plan()])),
            runtime,
            epoch: Arc::new(AtomicU64::new(0)),
            removal_ms: Arc::new(AtomicU64::new(0)),
            counts: Arc::new(Counts::default()),
        }
    }

    /// Sets what `op` does from now on when nothing is queued.
    pub fn set(&self, op: Op, step: Step) -> &Self {
        self.plans.lock().unwrap()[op_index(op)].default = step;
        self
    }

    /// Queues steps for the next calls of `op`.
    pub fn queue(&self, op: Op, steps: impl IntoIterator<Item = Step>) -> &Self {
        self.plans.lock().unwrap()[op_index(op)]
            .queued
            .extend(steps);
        self
    }

    /// Makes `Manager::removed` block its thread for `delay` (whole milliseconds) before a
    /// connection is dropped, as a manager that closes a connection synchronously might: the
    /// connection still exists meanwhile.
    pub fn slow_removal(&self, delay: Duration) -> &Self {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.removal_ms.store(ms, Ordering::SeqCst);
        self
    }

    /// Simulates a server restart: every connection made before now fails its next check
    /// with a server-gone error; connections made afterwards are fine.
    pub fn kill_existing(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn next(&self, op: Op) -> Step {
        self.plans.lock().unwrap()[op_index(op)].next()
    }

    async fn perform(&self, op: Op, seq: u64) -> Result<(), ScriptError> {
        let step = self.next(op);
        let err = |class| ScriptError {
            message: format!("scripted {op:?} #{seq} failed"),
            class,
        };
        match step {
            Step::Ok => Ok(()),
            Step::Err => Err(err(ErrorClass::Transient)),
            Step::ErrClass(class) => Err(err(class)),
            Step::Slow(d) => {
                self.runtime.sleep(d).await;
                Ok(())
            }
            Step::SlowErr(d) => {
                self.runtime.sleep(d).await;
                Err(err(ErrorClass::Transient))
            }
            Step::Never => futures::future::pending().await,
            Step::Panic => panic!("scripted {op:?} #{seq} panicked"),
        }
    }

    /// Installs the scripted `post_create`, `pre_recycle` and `post_recycle` hooks.
    pub fn hooks(&self, builder: PoolBuilder<Script>) -> PoolBuilder<Script> {
        let (a, b, c) = (self.clone(), self.clone(), self.clone());
        builder
            .post_create(move |conn, _| {
                let script = a.clone();
                Box::pin(async move {
                    script
                        .perform(Op::PostCreate, conn.id)
                        .await
                        .map_err(HookError::Backend)
                })
            })
            .pre_recycle(move |conn, _| {
                let script = b.clone();
                Box::pin(async move {
                    script
                        .perform(Op::PreRecycle, conn.id)
                        .await
                        .map_err(HookError::Backend)
                })
            })
            .post_recycle(move |conn, _| {
                let script = c.clone();
                Box::pin(async move {
                    script
                        .perform(Op::PostRecycle, conn.id)
                        .await
                        .map_err(HookError::Backend)
                })
            })
    }
}

/// Counts a connect in flight until it finishes or is abandoned.
struct Connecting<'a>(&'a Counts, bool);

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.connecting_change(-1, 0);
        }
    }
}

impl Manager for Script {
    type Connection = Conn;
    type Error = ScriptError;

    async fn create(&self) -> Result<Conn, ScriptError> {
        let seq = self.counts.creates.fetch_add(1, Ordering::SeqCst);
        self.counts.connecting_change(1, 0);
        let mut connecting = Connecting(&self.counts, false);
        self.perform(Op::Create, seq).await?;
        // The connection now exists: move it from "connecting" to "alive" in one step.
        connecting.1 = true;
        self.counts.connecting_change(-1, 1);
        self.counts.created.fetch_add(1, Ordering::SeqCst);
        Ok(Conn {
            id: seq,
            broken: false,
            server_gone: false,
            dirty: false,
            epoch: self.epoch.load(Ordering::SeqCst),
            counts: Arc::clone(&self.counts),
        })
    }

    async fn check(&self, conn: &mut Conn, _metrics: &Metrics) -> Result<(), ScriptError> {
        self.counts.checks.fetch_add(1, Ordering::SeqCst);
        if conn.epoch < self.epoch.load(Ordering::SeqCst) {
            return Err(ScriptError {
                message: format!("connection {} lost its server", conn.id),
                class: ErrorClass::ServerGone,
            });
        }
        self.perform(Op::Check, conn.id).await
    }

    fn is_broken(&self, conn: &mut Conn) -> bool {
        conn.broken
    }

    fn needs_check(&self, conn: &mut Conn) -> bool {
        self.counts.needs_checks.fetch_add(1, Ordering::SeqCst);
        conn.dirty
    }

    fn needs_check_on_handover(&self, conn: &mut Conn) -> bool {
        self.counts.handover_checks.fetch_add(1, Ordering::SeqCst);
        conn.dirty
    }

    fn is_server_gone(&self, conn: &mut Conn) -> bool {
        conn.server_gone
    }

    fn classify(&self, error: &ScriptError) -> ErrorClass {
        error.class
    }

    fn removed(&self, _conn: &mut Conn, reason: Removal) {
        self.counts.removed.lock().unwrap().push(reason);
        let ms = self.removal_ms.load(Ordering::SeqCst);
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
}
