//! Offramp's shared core.
//!
//! The same code runs a block whether it sits on the device or in the cloud:
//!
//! - [`model`]: the bundle format (manifest + safetensors), validation,
//!   fingerprints, splitting, and the candle [`model::Executor`] that runs any
//!   range of blocks with their exits and early-exits per sample.
//! - [`policy`]: exit policies (max-probability, entropy, margin, patience).
//! - [`codec`]: the hidden-state wire codec (f32, f16, bf16, int8).
//! - [`data`]: datasets (MNIST IDX).
//! - [`decoder`]: generative decoders (llama GGUF) split between edge and
//!   cloud, with KV caches per session.
//! - [`kind`]: the one boundary between the split and the model kinds
//!   ([`kind::SplitModel`], [`kind::AnyBundle::open`]).
//!
//! It re-exports [`offramp_base`]'s `config`, `net`, `paths`, `rng`, `stats`, `telemetry`, `threads` and
//! `units`, which carry no model code.

pub mod codec;
pub mod data;
pub mod decoder;
pub mod kind;
pub mod model;
pub mod policy;

pub use offramp_base::{config, net, paths, rng, stats, telemetry, threads, units};

pub use kind::{AnyBundle, ModelKind, SplitModel};
pub use model::{Bundle, Executor, ModelError};
pub use policy::Policy;
