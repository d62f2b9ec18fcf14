//! Row-wise fused ops of a transformer layer: the attention softmax (scale,
//! key padding and softmax in one pass) and residual add + LayerNorm.
//!
//! Why: candle-nn's CPU softmax and LayerNorm always split their rows over
//! rayon's pool, even for one 16-token sentence: the caller hands the work
//! to a pool thread and sleeps on a latch, twice per op. On
//! all-MiniLM-L6-v2 at batch 1 (one thread) the futex wake-ups and context
//! switches were ~20% of the encoder's time, and the scale, mask add and
//! residual add before them are three more passes with an output tensor
//! each.
//!
//! How: one pass per row, in plain loops that `pulp`'s run-time dispatch
//! compiles for AVX-512 / AVX2 / NEON (`exp` is a range reduction to
//! `[-ln2/2, ln2/2]` and a degree-6 polynomial, within ~1 ulp, so it
//! vectorises). Padded keys are skipped, not masked with a large negative
//! number: their probability is exactly 0 as before. Batch 1 runs on the
//! caller's thread; a batch of several samples whose op is large enough
//! (≥ [`PARALLEL_MIN_ELEMS`]) is split over rayon's pool by rows, as the
//! cloud's batches are.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use super::dispatch::Isa;
use super::linear::f32_input;

/// Elements an op must touch before a multi-sample batch is split over
/// threads (≈ 50 µs of work).
pub const PARALLEL_MIN_ELEMS: usize = 1 << 17;

/// Rows per parallel task, or `None` to stay on this thread.
fn parallel_rows(batch: usize, rows: usize, cols: usize) -> Option<usize> {
    let threads = rayon::current_num_threads();
    (batch > 1 && threads > 1 && rows * cols >= PARALLEL_MIN_ELEMS).then(|| rows.div_ceil(threads * 4).max(1))
}

/// `softmax(scale · scores)` over the last axis of `[B, heads, T, T]`
/// attention scores, with keys at or after sample `b`'s length getting
/// probability 0 (`lengths: None`: every key is real).
#[derive(Debug)]
pub struct MaskedSoftmax<'a> {
    pub scale: f32,
    pub lengths: Option<&'a [usize]>,
}

impl MaskedSoftmax<'_> {
    pub fn forward(&self, scores: &Tensor) -> Result<Tensor> {
        scores.contiguous()?.apply_op1_no_bwd(self)
    }
}

impl CustomOp1 for MaskedSoftmax<'_> {
    fn name(&self) -> &'static str {
        "offramp-masked-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_input(storage, layout, "masked-softmax")?;
        let (b, heads, tq, tk) = layout.shape().dims4()?;
        if let Some(l) = self.lengths {
            if l.len() != b || l.iter().any(|&n| n == 0 || n > tk) {
                candle_core::bail!("masked-softmax kernel: lengths {l:?} for a batch of {b} with {tk} keys");
            }
        }
        let per_sample = heads * tq;
        let mut out = vec![0f32; x.len()];
        let isa = Isa::available()[0];
        let job = |first_row: usize, x: &[f32], out: &mut [f32]| {
            isa.run(SoftmaxJob { x, out, cols: tk, first_row, per_sample, lengths: self.lengths, scale: self.scale })
        };
        match parallel_rows(b, b * per_sample, tk) {
            Some(rows) => out
                .par_chunks_mut(rows * tk)
                .zip(x.par_chunks(rows * tk))
                .enumerate()
                .for_each(|(i, (out, x))| job(i * rows, x, out)),
            None => job(0, x, &mut out),
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

struct SoftmaxJob<'a> {
    x: &'a [f32],
    out: &'a mut [f32],
    cols: usize,
    /// Global index of the first row of `x` (rows of one sample are
    /// `per_sample` consecutive rows).
    first_row: usize,
    per_sample: usize,
    lengths: Option<&'a [usize]>,
    scale: f32,
}

impl WithSimd for SoftmaxJob<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let SoftmaxJob { x, out, cols, first_row, per_sample, lengths, scale } = self;
        for (r, (xs, ys)) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)).enumerate() {
            let keys = lengths.map_or(cols, |l| l[(first_row + r) / per_sample]);
            let (xs, ys) = (&xs[..keys], &mut ys[..keys]);
            let max = xs.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * scale;
            let mut sum = 0.0;
            for (y, &v) in ys.iter_mut().zip(xs) {
                *y = exp(v * scale - max);
                sum += *y;
            }
            let inv = 1.0 / sum;
            ys.iter_mut().for_each(|y| *y *= inv);
        }
    }
}

/// `LayerNorm(x + dense_bias + residual)` over the last axis, with the
/// norm's `weight` and `bias`: a post-LN transformer's dense output bias,
/// residual connection and LayerNorm in one pass.
#[derive(Debug)]
pub struct AddLayerNorm {
    dense_bias: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl AddLayerNorm {
    pub fn new(dense_bias: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Self> {
        let v = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let (dense_bias, weight, bias) = (v(dense_bias)?, v(weight)?, v(bias)?);
        if weight.len() != bias.len() || dense_bias.len() != bias.len() {
            candle_core::bail!(
                "add-layer-norm kernel: {} dense biases, {} weights and {} biases",
                dense_bias.len(),
                weight.len(),
                bias.len()
            );
        }
        Ok(Self { dense_bias, weight, bias, eps: eps as f32 })
    }

    /// `x` and `residual` of the same shape, rows of `weight.len()`.
    pub fn forward(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op2_no_bwd(&residual.contiguous()?, self)
    }
}

impl CustomOp2 for AddLayerNorm {
    fn name(&self) -> &'static str {
        "offramp-add-layer-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, r) = (f32_input(s1, l1, "add-layer-norm")?, f32_input(s2, l2, "add-layer-norm")?);
        let h = self.weight.len();
        if l1.shape() != l2.shape() || l1.shape().dims().last() != Some(&h) {
            candle_core::bail!(
                "add-layer-norm kernel: shapes {:?} and {:?}, rows of {h} expected",
                l1.shape().dims(),
                l2.shape().dims()
            );
        }
        let mut out = vec![0f32; x.len()];
        let isa = Isa::available()[0];
        let job = |x: &[f32], r: &[f32], out: &mut [f32]| isa.run(LayerNormJob { op: self, x, r, out });
        let batch = l1.shape().dims().first().copied().unwrap_or(1);
        match parallel_rows(batch, x.len() / h, h) {
            Some(rows) => out
                .par_chunks_mut(rows * h)
                .zip(x.par_chunks(rows * h).zip(r.par_chunks(rows * h)))
                .for_each(|(out, (x, r))| job(x, r, out)),
            None => job(x, r, &mut out),
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct LayerNormJob<'a> {
    op: &'a AddLayerNorm,
    x: &'a [f32],
    r: &'a [f32],
    out: &'a mut [f32],
}

impl WithSimd for LayerNormJob<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let LayerNormJob { op, x, r, out } = self;
        let h = op.weight.len();
        let inv_h = 1.0 / h as f32;
        for ((xs, rs), ys) in x.chunks_exact(h).zip(r.chunks_exact(h)).zip(out.chunks_exact_mut(h)) {
            let mut sum = 0.0;
            for (((y, &a), &b), &c) in ys.iter_mut().zip(xs).zip(rs).zip(&op.dense_bias) {
                *y = a + b + c;
                sum += *y;
            }
            let mean = sum * inv_h;
            let var = ys.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() * inv_h;
            let inv_std = 1.0 / (var + op.eps).sqrt();
            for ((y, &w), &b) in ys.iter_mut().zip(&op.weight).zip(&op.bias) {
                *y = (*y - mean) * inv_std * w + b;
            }
        }
    }
}

/// `eˣ` for f32: `x = n·ln2 + r` with `|r| ≤ ln2/2`, a degree-6 Taylor
/// polynomial for `eʳ` (error below 2e-7 relative), and `2ⁿ` built in the
/// exponent bits. Inputs are clamped to the normal range (below it the
/// result is ~1e-38 instead of a denormal or 0, which a softmax cannot tell
/// apart from 0 after normalising).
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}
