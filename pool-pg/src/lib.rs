#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod config;
mod connection;
mod error;
mod listener;
mod manager;
mod pool;
mod runtime;
mod shared;
mod sql;
mod stream;
#[cfg(test)]
mod testing;
pub mod throwaway;

pub use config::{PgConfig, Recycling};
pub use connection::{Connection, Transaction};
pub use error::Error;
pub use listener::Listener;
pub use manager::PgManager;
pub use pool::{CallOptions, Calls, Params, PgPool, PgPoolBuilder};
pub use runtime::{PgRuntime, Socket, default_runtime};
pub use shared::SharedMode;
pub use stream::{CopyInSink, CopyOutStream, RowStream};

/// The tokio-postgres crate this one is built on, re-exported so that rows, types and
/// parameters come from the same version: statements take `&(dyn ToSql + Sync)` parameters
/// and return `Row`s, and those are tokio-postgres's own types.
pub use tokio_postgres;
pub use tokio_postgres::{Notification, Row, types::ToSql};

#[cfg(feature = "rt-async-std")]
pub use momopool_async_std::AsyncStd;
#[cfg(feature = "rt-smol")]
pub use momopool_smol::Smol;
#[cfg(feature = "rt-tokio")]
pub use momopool_tokio::Tokio;
