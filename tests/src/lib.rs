//! Shared pieces of momopool's cross-runtime test matrix.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
