//! Offramp's model tooling: train multi-exit networks, evaluate and sweep
//! them, calibrate exit thresholds, measure hidden-state codecs, split
//! bundles, export data samples and benchmark compute.
//!
//! - [`train`]: `offramp train`, all exits jointly.
//! - [`train_exits`]: `offramp train-exits`, a decoder's exit adapters by
//!   self-distillation.
//! - [`eval`]: `offramp eval` (+ `--sweep`), and the `--data` option group.
//! - [`simulate`]: per-exit probabilities for a dataset, and policies
//!   replayed over them without re-running the network.
//! - [`calibrate`]: per-exit thresholds within an accuracy budget.
//! - [`calibrate_decoder`]: decoder exit thresholds for a target agreement
//!   with the whole model, on text the model generates itself.
//! - [`codec_eval`]: bytes, accuracy change and speed of each encoding at K.
//! - [`import_hf`]: `offramp import hf`, a BERT-family checkpoint as a bundle.
//! - [`import_gguf`]: `offramp import gguf`, a llama GGUF as a decoder bundle.
//! - [`import_onnx`]: `offramp inspect onnx` and `offramp import onnx`, an
//!   ONNX graph profiled at its cut points and cut into blocks and exits.
//! - [`split`]: cut a bundle at K.
//! - [`sample`]: a small MNIST sample for demos.
//! - [`bench`]: `offramp bench blocks`, compute speed per block and kernel.
//! - [`bench_decoder`]: `offramp bench decoder`, decode speed against
//!   llama.cpp on the same GGUF.
//! - [`bench_encoder`]: `offramp bench encoder`, a transformer encoder
//!   against ONNX Runtime.
//!
//! Only the `offramp` tool links this crate: the edge and cloud binaries do
//! not carry training code or candle-nn.

pub mod bench;
pub mod bench_decoder;
pub mod bench_encoder;
pub mod calibrate;
pub mod calibrate_decoder;
pub mod codec_eval;
pub mod eval;
pub mod import_gguf;
pub mod import_hf;
pub mod import_onnx;
pub mod sample;
pub mod simulate;
pub mod split;
pub mod train;
pub mod train_encoder;
pub mod train_exits;
