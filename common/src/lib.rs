//! Offramp's shared core.
//!
//! The same code runs a block whether it sits on the device or in the cloud:
//!
//! - [`model`]: the bundle format (manifest + safetensors), validation,
//!   fingerprints, splitting, and the candle [`model::Executor`] that runs any
//!   range of blocks with their exits and early-exits per sample.
//! - [`policy`]: exit policies (max-probability, entropy, margin, patience).
//! - [`codec`]: the hidden-state wire codec (f32, f16, bf16, int8).
//! - [`wire`]: framing of the protocol messages on QUIC streams.
//! - [`data`]: datasets (MNIST IDX).
//! - [`eval`]: per-exit probabilities for a dataset and policy simulation.
//! - [`telemetry`]: tracing set-up shared by the binaries.

pub mod codec;
pub mod data;
pub mod eval;
pub mod model;
pub mod net;
pub mod policy;
pub mod security;
pub mod stats;
pub mod telemetry;
pub mod units;
pub mod wire;

pub use model::{Bundle, Executor, ModelError};
pub use policy::Policy;
