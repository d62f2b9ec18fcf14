//! Fast CPU kernels for inference: conv2d + bias + ReLU + max-pool fused into
//! one candle custom op, and linear + bias + ReLU as another.
//!
//! Why (profile of candle 0.11 on B-LeNet, one thread): its CPU conv2d builds
//! each im2col tile element by element with scalar index arithmetic (over half
//! the time), repacks the weights and converts the input to NHWC on every
//! call, and allocates and zero-fills fresh buffers per tile; bias, ReLU and
//! pooling are three more passes, each allocating an output. With more than
//! one thread, every matmul wakes gemm's rayon workers, even for a 576 × 128
//! matrix-vector product: ~30 µs of dispatch for ~4 µs of work.
//!
//! How:
//! - Weights are packed once, when the layer is built: `Wᵀ[k][o]`, `k` a
//!   kernel tap (channel, row, column), `o` padded to whole SIMD vectors.
//! - A convolution is an implicit-im2col GEMM, `C[pixel][o] = Σₖ X(pixel, k) ·
//!   Wᵀ[k][o]`: `X(pixel, k)` is read straight from a zero-padded copy of the
//!   input through a table of per-tap offsets; no im2col matrix is built. A
//!   register tile is `MR` consecutive pixels of one output row (broadcast) ×
//!   one or two SIMD vectors of output channels; `MR` (≤ 12 for one vector,
//!   ≤ 8 for two) is chosen so the tiles split each row exactly (a 14-wide row
//!   is two tiles of 7): no work on padding columns. Rows and columns that a
//!   flooring max-pool drops are not computed. One pass then max-pools, adds
//!   the bias and applies ReLU (both commute with max) over channel vectors,
//!   and a transpose writes the NCHW output.
//! - A linear layer is the same micro-kernel with batch rows in place of
//!   pixels; a single row (batch 1) splits `k` over four accumulator sets to
//!   hide the FMA latency.
//! - SIMD through `pulp`'s run-time dispatch: AVX-512, AVX2+FMA, NEON, or a
//!   scalar fallback. Each layer takes the widest vectors that pad its output
//!   channels least (8 channels run on AVX2 where AVX-512 exists). All safe
//!   code: `pulp` proves the CPU features and hides the `unsafe`.
//! - Scratch buffers are thread-local and reused (the zero-padded input and
//!   tap offsets are kept per input geometry, so only the interior is copied):
//!   the only allocation per call is the output tensor.
//! - Threads: batch 1 runs on the caller's thread. A sample's layer is too
//!   small (≤ 1.3 M multiply-adds in B-LeNet, ≈ 25 µs) to repay waking a
//!   worker, and on a 2-core edge device the other core has the network and
//!   the runtime to serve. A batch > 1 whose layer costs ≥
//!   [`PARALLEL_MIN_MACS`] is split over rayon's global pool (samples for a
//!   convolution, rows for a linear layer): the cloud's batches. Set
//!   `RAYON_NUM_THREADS` to cap it.
//!
//! - Size: the micro-kernel streams the whole packed weight matrix per row
//!   tile with no cache blocking over `k` or `o`. That is right for
//!   B-LeNet-sized layers (the largest, 576 × 128, is 0.3 MB) but not for
//!   wide ones: a 784 × 2048 layer took 1.0 ms at batch 1 against candle's
//!   (gemm's, blocked) 0.11 ms. Linear layers with more than
//!   [`LinearKernel::MAX_WEIGHTS`] weights therefore keep candle's matmul
//!   under [`Kernels::Fast`] as well.
//!
//! Inference only: these ops have no backward pass. [`super::Layer`] keeps
//! candle's differentiable ops for weights or inputs that track gradients.
//!
//! Files: [`dispatch`] picks the instruction set and splits work over
//! threads, [`packing`] holds packed weights and scratch buffers, [`gemm`] is
//! the register-tiled micro-kernel, [`conv`] and [`linear`] are the two fused
//! candle custom ops built on it.

mod activation;
mod conv;
mod dispatch;
mod gemm;
mod linear;
mod packing;
mod rows;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

pub use activation::BiasGelu;
pub use conv::Conv2dKernel;
pub use linear::LinearKernel;
pub use rows::{AddLayerNorm, MaskedSoftmax};

/// Which code runs a layer's forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Kernels {
    /// The fused CPU kernels of this module (inference; layers whose weights
    /// or inputs track gradients still run candle's ops).
    #[default]
    Fast,
    /// Plain candle ops throughout (for comparison, and a fallback).
    Candle,
}

impl Kernels {
    /// Environment variable choosing the default: `fast` (default) or `candle`.
    pub const ENV: &'static str = "OFFRAMP_KERNELS";

    /// The default, read once from [`Kernels::ENV`].
    pub fn from_env() -> Kernels {
        static KERNELS: OnceLock<Kernels> = OnceLock::new();
        *KERNELS.get_or_init(|| match std::env::var(Self::ENV) {
            Err(_) => Kernels::Fast,
            Ok(v) => v.parse().unwrap_or_else(|e| {
                tracing::warn!("{}: {e}; using the fast kernels", Self::ENV);
                Kernels::Fast
            }),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernels::Fast => "fast",
            Kernels::Candle => "candle",
        }
    }
}

impl FromStr for Kernels {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "fast" | "offramp" => Ok(Kernels::Fast),
            "candle" | "plain" => Ok(Kernels::Candle),
            other => Err(format!("unknown kernels {other:?} (expected `fast` or `candle`)")),
        }
    }
}

impl fmt::Display for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A batch > 1 is split over threads only when the layer's multiply-adds for
/// the whole batch reach this (≈ 30 µs of work on one core, several times
/// the cost of waking rayon's workers).
pub const PARALLEL_MIN_MACS: usize = 1 << 20;
