//! Multi-exit models: the bundle format, its validation and fingerprints, and
//! the executor shared by edge and cloud.

pub mod arch;
mod bundle;
pub mod encoder;
mod error;
mod executor;
mod kernels;
mod layer;
pub mod manifest;
pub mod onnx;
mod tokenizer;

pub(crate) use bundle::hex;
pub use bundle::{Bundle, SplitSide};
pub use error::ModelError;
pub use executor::{argmax, softmax_in_place, Batch, Executor, ExitResult, Observation, Overflow, RunOutput};
pub use kernels::Kernels;
pub use layer::{forward_all as layer_forward_all, Layer};
pub use manifest::{
    BlockRange, BlockSpec, ExitSpec, InputSpec, LayerShapeError, LayerSpec, Manifest, PoolMode, TokenizerSpec,
};
pub use tokenizer::{TextEncoder, TokenizeError, TokenizerError};

#[cfg(test)]
mod encoder_tests;
#[cfg(test)]
mod tests;
