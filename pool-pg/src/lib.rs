//! PostgreSQL for momopool (in progress). Available now: [`throwaway`], a disposable
//! PostgreSQL cluster for tests and examples.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod throwaway;
