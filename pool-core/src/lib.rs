#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod clock;
mod config;
mod error;
mod manager;
mod pool;
mod rng;
mod runtime;
mod shared;
mod stats;
mod thread_runtime;
mod waiter;

pub use config::{PoolConfig, Reuse, Validation};
pub use error::{BuildError, HookError, Phase, PoolError, TimeoutError};
pub use manager::{ErrorClass, Manager, Metrics, Removal};
pub use pool::{Pool, PoolBuilder, Pooled};
pub use runtime::{BoxFuture, Elapsed, Runtime, with_timeout};
pub use stats::{ClosedCounts, Statistics, Status, WaitHistogram};
pub use thread_runtime::ThreadRuntime;

pub(crate) use pool::Hooks;
