//! Offramp's base: what every crate needs and none of it is model code.
//!
//! - [`config`]: config files that mirror the flags.
//! - [`units`]: parsers for durations, rates, byte sizes and ratios.
//! - [`stats`]: percentiles and summaries for reports and benchmarks.
//! - [`rng`]: the seeded [`rng::SplitMix64`] PRNG.
//! - [`telemetry`]: logging set-up shared by every binary.
//! - [`paths`]: finding `models/...` from wherever a binary runs.
//! - [`net`]: accepted sockets without Nagle, and the shutdown signal.
//! - [`echo`]: bounded echoes of what a peer sent, for error messages.
//! - [`threads`]: I/O and compute thread counts, chosen at start.
//!
//! It depends on nothing heavy, so the link emulator's binary does not link
//! candle.

pub mod config;
pub mod echo;
pub mod net;
pub mod paths;
pub mod rng;
pub mod stats;
pub mod telemetry;
pub mod threads;
pub mod units;
