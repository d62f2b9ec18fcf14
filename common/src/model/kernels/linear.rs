//! Fused linear + bias + optional ReLU.

use std::fmt;

use super::dispatch::{chunk_rows, mr_max, segments, Isa, MR_CAP_2};
use super::gemm::{column_blocks, tile_any, Gemm};
use super::packing::{to_vec, Packed, Scratch, SCRATCH};
use candle_core::{CpuStorage, CustomOp1, Error, Layout, Result, Shape, Tensor};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// Fused `x · Wᵀ + bias`, optional ReLU, on `[B, in]` f32.
pub struct LinearKernel {
    pub(super) in_features: usize,
    pub(super) relu: bool,
    /// `0..in_features`: the micro-kernel's per-`k` offsets.
    pub(super) koff: Vec<usize>,
    pub(super) packed: Packed,
}

impl fmt::Debug for LinearKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinearKernel")
            .field("in_features", &self.in_features)
            .field("out_features", &self.packed.n)
            .field("relu", &self.relu)
            .field("isa", &self.packed.isa)
            .finish()
    }
}

impl LinearKernel {
    /// The largest weight matrix (elements; 1 MiB of f32, about an L2 cache)
    /// the fused kernel is used for; larger layers run candle's blocked gemm.
    pub const MAX_WEIGHTS: usize = 1 << 18;

    /// Whether the fused kernel suits an `out × in` layer.
    pub fn suits(out_features: usize, in_features: usize) -> bool {
        out_features * in_features <= Self::MAX_WEIGHTS
    }

    /// `weight` `[out, in]`, `bias` `[out]`.
    pub fn new(weight: &Tensor, bias: &Tensor, relu: bool) -> Result<Self> {
        let (o, _) = weight.dims2()?;
        Self::with_isa(Isa::for_outputs(o), weight, bias, relu)
    }

    pub(super) fn with_isa(isa: Isa, weight: &Tensor, bias: &Tensor, relu: bool) -> Result<Self> {
        let (o, i) = weight.dims2()?;
        let bias = to_vec(bias)?;
        if bias.len() != o {
            candle_core::bail!("linear kernel: {} bias values for {o} outputs", bias.len());
        }
        let packed = Packed::new(isa, &to_vec(weight)?, &bias, o, i);
        Ok(Self { in_features: i, relu, koff: (0..i).collect(), packed })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }

    pub(super) fn run_chunk(&self, x: &[f32], out: &mut [f32]) {
        SCRATCH.with(|sc| {
            let sc = &mut *sc.borrow_mut();
            self.packed.isa.run(LinearJob { op: self, x, out, sc });
        });
    }
}

impl CustomOp1 for LinearKernel {
    fn name(&self) -> &'static str {
        "offramp-linear-bias-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_input(storage, layout, "linear")?;
        let (b, i) = layout.shape().dims2()?;
        if i != self.in_features {
            candle_core::bail!("linear kernel: input has {i} features, the layer takes {}", self.in_features);
        }
        let n = self.packed.n;
        let mut out = vec![0f32; b * n];
        match chunk_rows(b, b * i * n) {
            Some(rows) => {
                // Whole register tiles per task.
                let rows = rows.next_multiple_of(MR_CAP_2);
                out.par_chunks_mut(rows * n).zip(x.par_chunks(rows * i)).for_each(|(out, x)| self.run_chunk(x, out))
            }
            None => self.run_chunk(x, &mut out),
        }
        Ok((CpuStorage::F32(out), Shape::from((b, n))))
    }
}

pub(super) fn f32_input<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(x) = storage else {
        return Err(Error::Msg(format!("{what} kernel: f32 input only")));
    };
    let (start, end) =
        layout.contiguous_offsets().ok_or_else(|| Error::Msg(format!("{what} kernel: input must be contiguous")))?;
    Ok(&x[start..end])
}

pub(super) struct LinearJob<'a> {
    pub(super) op: &'a LinearKernel,
    pub(super) x: &'a [f32],
    pub(super) out: &'a mut [f32],
    pub(super) sc: &'a mut Scratch,
}

impl WithSimd for LinearJob<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let LinearJob { op, x, out, sc } = self;
        let i = op.in_features;
        let Packed { opad, ref wt, ref bias, n, .. } = op.packed;
        let lanes = S::F32_LANES;
        let rows = x.len() / i;
        let gemm = Gemm { a: x, koff: &op.koff, ams: i, b: wt, brs: opad };
        let c = &mut sc.c;
        c.resize(rows * opad, 0.0);
        for (v0, nv) in column_blocks(opad / lanes) {
            let b0 = v0 * lanes;
            for (r0, len) in segments(rows, mr_max::<S>(nv)) {
                tile_any(simd, nv, len, &gemm, r0 * i, b0, c, r0 * opad + b0, opad);
            }
        }
        for (row, dst) in c.chunks_exact(opad).zip(out.chunks_exact_mut(n)) {
            for ((d, &v), &b) in dst.iter_mut().zip(row).zip(bias.iter()) {
                let y = v + b;
                *d = if op.relu { y.max(0.0) } else { y };
            }
        }
    }
}
