//! Fused convolution + bias + ReLU + max-pool.

use std::fmt;

use super::dispatch::{chunk_rows, mr_max, segments, Isa};
use super::gemm::{column_blocks, load, store, tile_any, Gemm};
use super::linear::f32_input;
use super::packing::{to_vec, Packed, Padded, Scratch, SCRATCH};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// Fused `conv2d (stride, zero padding) + bias + optional ReLU + optional
/// non-overlapping max-pool (floor)`, NCHW f32 in and out.
pub struct Conv2dKernel {
    pub(super) c_in: usize,
    pub(super) c_out: usize,
    pub(super) kernel: usize,
    pub(super) stride: usize,
    pub(super) padding: usize,
    pub(super) relu: bool,
    pub(super) pool: Option<usize>,
    pub(super) packed: Packed,
}

impl fmt::Debug for Conv2dKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conv2dKernel")
            .field("c_in", &self.c_in)
            .field("c_out", &self.c_out)
            .field("kernel", &self.kernel)
            .field("stride", &self.stride)
            .field("padding", &self.padding)
            .field("relu", &self.relu)
            .field("pool", &self.pool)
            .field("isa", &self.packed.isa)
            .finish()
    }
}

/// Shapes of one call.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConvGeom {
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) hp: usize,
    pub(super) wp: usize,
    /// Pool size (1: none) and pooled output size.
    pub(super) pool: usize,
    pub(super) ph: usize,
    pub(super) pw: usize,
    /// Conv outputs the pool reads: `ph · pool` × `pw · pool`.
    pub(super) uh: usize,
    pub(super) uw: usize,
}

impl Conv2dKernel {
    /// `weight` `[O, C, K, K]`, `bias` `[O]` (any shape with `O` elements).
    pub fn new(
        weight: &Tensor,
        bias: &Tensor,
        stride: usize,
        padding: usize,
        relu: bool,
        pool: Option<usize>,
    ) -> Result<Self> {
        let (o, _, _, _) = weight.dims4()?;
        Self::with_isa(Isa::for_outputs(o), weight, bias, stride, padding, relu, pool)
    }

    pub(super) fn with_isa(
        isa: Isa,
        weight: &Tensor,
        bias: &Tensor,
        stride: usize,
        padding: usize,
        relu: bool,
        pool: Option<usize>,
    ) -> Result<Self> {
        let (o, c, k, k2) = weight.dims4()?;
        if k != k2 || k == 0 || stride == 0 || pool == Some(0) {
            candle_core::bail!("conv2d kernel: need a square kernel and positive stride/pool, got {k}x{k2}");
        }
        let bias = to_vec(bias)?;
        if bias.len() != o {
            candle_core::bail!("conv2d kernel: {} bias values for {o} output channels", bias.len());
        }
        let packed = Packed::new(isa, &to_vec(weight)?, &bias, o, c * k * k);
        Ok(Self { c_in: c, c_out: o, kernel: k, stride, padding, relu, pool, packed })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }

    fn geometry(&self, c: usize, h: usize, w: usize) -> Result<ConvGeom> {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let (hp, wp) = (h + 2 * p, w + 2 * p);
        if c != self.c_in || hp < k || wp < k {
            candle_core::bail!(
                "conv2d kernel: input [{c}, {h}, {w}] does not fit {} channels, kernel {k}, padding {p}",
                self.c_in
            );
        }
        let (oh, ow) = ((hp - k) / s + 1, (wp - k) / s + 1);
        let pool = self.pool.unwrap_or(1);
        let (ph, pw) = (oh / pool, ow / pool);
        if ph == 0 || pw == 0 {
            candle_core::bail!("conv2d kernel: max-pool {pool} leaves nothing of a {oh}x{ow} map");
        }
        Ok(ConvGeom { c, h, w, hp, wp, pool, ph, pw, uh: ph * pool, uw: pw * pool })
    }

    /// Runs samples `x` (`n × C·H·W`) into `out` (`n × O·PH·PW`) on this thread.
    fn run_chunk(&self, g: &ConvGeom, x: &[f32], out: &mut [f32]) {
        SCRATCH.with(|sc| {
            let sc = &mut *sc.borrow_mut();
            self.packed.isa.run(ConvJob { op: self, g, x, out, sc });
        });
    }
}

impl CustomOp1 for Conv2dKernel {
    fn name(&self) -> &'static str {
        "offramp-conv2d-bias-relu-pool"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_input(storage, layout, "conv2d")?;
        let (b, c, h, w) = layout.shape().dims4()?;
        let g = self.geometry(c, h, w)?;
        let (in_len, out_len) = (c * h * w, self.c_out * g.ph * g.pw);
        let mut out = vec![0f32; b * out_len];
        let macs = b * g.uh * g.uw * self.c_out * c * self.kernel * self.kernel;
        match chunk_rows(b, macs) {
            Some(rows) => out
                .par_chunks_mut(rows * out_len)
                .zip(x.par_chunks(rows * in_len))
                .for_each(|(out, x)| self.run_chunk(&g, x, out)),
            None => self.run_chunk(&g, x, &mut out),
        }
        Ok((CpuStorage::F32(out), Shape::from((b, self.c_out, g.ph, g.pw))))
    }
}

pub(super) struct ConvJob<'a> {
    pub(super) op: &'a Conv2dKernel,
    pub(super) g: &'a ConvGeom,
    pub(super) x: &'a [f32],
    pub(super) out: &'a mut [f32],
    pub(super) sc: &'a mut Scratch,
}

impl WithSimd for ConvJob<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let ConvJob { op, g, x, out, sc } = self;
        let (in_len, out_len) = (g.c * g.h * g.w, op.c_out * g.ph * g.pw);
        for (x, out) in x.chunks_exact(in_len).zip(out.chunks_exact_mut(out_len)) {
            conv_sample(simd, op, g, x, out, sc);
        }
    }
}

#[inline(always)]
pub(super) fn conv_sample<S: Simd>(
    simd: S,
    op: &Conv2dKernel,
    g: &ConvGeom,
    x: &[f32],
    out: &mut [f32],
    sc: &mut Scratch,
) {
    let (k, s, p) = (op.kernel, op.stride, op.padding);
    let Packed { opad, ref wt, ref bias, n: c_out, .. } = op.packed;
    let lanes = S::F32_LANES;
    let Scratch { padded, c, p: pooled } = sc;

    // Zero-padded input (the input itself when there is no padding).
    let plan = Padded::find(padded, g, k, p);
    let a: &[f32] = if p == 0 {
        x
    } else {
        for (ci, plane) in x.chunks_exact(g.h * g.w).enumerate() {
            for (r, row) in plane.chunks_exact(g.w).enumerate() {
                let at = ci * g.hp * g.wp + (r + p) * g.wp + p;
                copy::<S>(simd, &mut plan.xp[at..at + g.w], row);
            }
        }
        &plan.xp
    };
    let gemm = Gemm { a, koff: &plan.koff, ams: s, b: wt, brs: opad };

    // Conv outputs (no bias yet), C[pixel][o], for the pixels the pool reads
    // (a flooring pool drops the last rows and columns).
    c.resize(g.uh * g.uw * opad, 0.0);
    for (v0, nv) in column_blocks(opad / lanes) {
        let b0 = v0 * lanes;
        for y in 0..g.uh {
            for (x0, len) in segments(g.uw, mr_max::<S>(nv)) {
                let a0 = y * s * g.wp + x0 * s;
                let c0 = (y * g.uw + x0) * opad + b0;
                tile_any(simd, nv, len, &gemm, a0, b0, c, c0, opad);
            }
        }
    }

    // Max-pool, then bias and ReLU (both commute with max), vectorised over
    // channels into P[pooled pixel][opad] ...
    let plane = g.ph * g.pw;
    pooled.resize(plane * opad, 0.0);
    match g.pool {
        1 => pool_bias_relu::<S, 1>(simd, g, 1, opad, c, bias, op.relu, pooled),
        2 => pool_bias_relu::<S, 2>(simd, g, 2, opad, c, bias, op.relu, pooled),
        q => pool_bias_relu::<S, 0>(simd, g, q, opad, c, bias, op.relu, pooled),
    }
    // ... then transposed into NCHW.
    for (o, dst) in out.chunks_exact_mut(plane).take(c_out).enumerate() {
        for (d, src) in dst.iter_mut().zip(pooled.chunks_exact(opad)) {
            *d = src[o];
        }
    }
}

/// `dst = src` (equal lengths), whole vectors then a masked tail: rows here
/// are a few dozen floats, too short to repay a call to `memcpy`.
#[inline(always)]
pub(super) fn copy<S: Simd>(simd: S, dst: &mut [f32], src: &[f32]) {
    let lanes = S::F32_LANES;
    let (dv, dt) = dst.split_at_mut(dst.len() / lanes * lanes);
    let (sv, st) = src.split_at(dv.len());
    for (d, s) in dv.chunks_exact_mut(lanes).zip(sv.chunks_exact(lanes)) {
        store::<S>(d, load::<S>(s));
    }
    if !dt.is_empty() {
        simd.partial_store_f32s(dt, simd.partial_load_f32s(st));
    }
}

/// `pooled[pixel][o] = relu(max over the pool window of c[·][o] + bias[o])`;
/// the window is `P` × `P` (`P` = 0: `pool` × `pool`, known at run time only).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn pool_bias_relu<S: Simd, const P: usize>(
    simd: S,
    g: &ConvGeom,
    pool: usize,
    opad: usize,
    c: &[f32],
    bias: &[f32],
    relu: bool,
    pooled: &mut [f32],
) {
    let p = if P > 0 { P } else { pool };
    let lanes = S::F32_LANES;
    let zero = simd.splat_f32s(0.0);
    for py in 0..g.ph {
        for px in 0..g.pw {
            let dst = &mut pooled[(py * g.pw + px) * opad..][..opad];
            let top_left = (py * p * g.uw + px * p) * opad;
            for o0 in (0..opad).step_by(lanes) {
                let mut m = load::<S>(&c[top_left + o0..]);
                for dy in 0..p {
                    for dx in 0..p {
                        if dy + dx > 0 {
                            m = simd.max_f32s(m, load::<S>(&c[top_left + (dy * g.uw + dx) * opad + o0..]));
                        }
                    }
                }
                let mut y = simd.add_f32s(m, load::<S>(&bias[o0..]));
                if relu {
                    y = simd.max_f32s(y, zero);
                }
                store::<S>(&mut dst[o0..], y);
            }
        }
    }
}
