//! Generative decoders (llama-architecture GGUF models) split between an edge
//! and a cloud.
//!
//! - [`bundle`]: the decoder bundle (`decoder.json` + a GGUF file + the
//!   tokenizer), importing one from a GGUF file, per-split fingerprints and
//!   cutting it into an edge and a cloud side.
//! - [`model`]: the forward pass over any range of layers, for one session or
//!   many at once (the cloud batches decode steps across sessions), with the
//!   exits (final norm + tied LM head over a shallower layer's state).
//! - [`cache`]: a session's KV cache for the layers one side holds.
//! - [`tokenizer`]: the GGUF's byte-level BPE vocabulary as a `tokenizers`
//!   tokenizer, and the chat template.
//! - [`logits`]: what happens to a row of logits before a token is chosen
//!   (bias, a grammar's mask) and what is reported of it (log-probabilities),
//!   identical on both sides.
//! - [`sample`]: greedy and seeded temperature sampling, identical on both
//!   sides (the edge draws the random number, whoever holds the logits uses it).
//! - [`speculative`]: checking the edge's drafts against the full model
//!   (greedy and speculative sampling).
//!
//! Weights stay quantized as the GGUF stores them (candle's quantized
//! matmul); only the embedding rows a step needs are dequantized.

pub mod bundle;
pub mod cache;
mod config;
mod error;
pub mod logits;
pub mod model;
mod q4;
pub mod sample;
pub mod speculative;
pub mod tiny;
pub mod tokenizer;

pub use bundle::{DecoderBundle, DecoderManifest, ExitPoint, Holds, DECODER_MANIFEST};
pub use cache::KvCache;
/// The tensor type states travel in (candle's).
pub use candle_core::Tensor;
pub use config::DecoderConfig;
pub use error::DecoderError;
pub use model::{DecoderModel, SessionStep};
pub use tokenizer::{ChatMessage, DecoderTokenizer};

#[cfg(test)]
mod tests;
