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

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, Error, Layout, Result, Shape, Tensor};
use pulp::bytemuck;
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

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

/// Tallest register tiles (pixels or batch rows): 12 rows of one vector, 8
/// of two (fewer where the register file is smaller).
const MR_CAP_1: usize = 12;
const MR_CAP_2: usize = 8;

/// Instruction set a kernel runs with; the tokens prove the CPU has it.
#[derive(Clone, Copy)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512(pulp::x86::V4),
    #[cfg(target_arch = "x86_64")]
    Avx2(pulp::x86::V3),
    #[cfg(target_arch = "aarch64")]
    Neon(pulp::aarch64::Neon),
    Scalar,
}

impl fmt::Debug for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Isa {
    /// Every instruction set this CPU offers, widest first (the scalar
    /// fallback last).
    fn available() -> Vec<Isa> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(s) = pulp::x86::V4::try_new() {
                v.push(Isa::Avx512(s));
            }
            if let Some(s) = pulp::x86::V3::try_new() {
                v.push(Isa::Avx2(s));
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if let Some(s) = pulp::aarch64::Neon::try_new() {
                v.push(Isa::Neon(s));
            }
        }
        v.push(Isa::Scalar);
        v
    }

    /// The instruction set for a layer with `n` output channels: the one
    /// that pads `n` to whole vectors least, the widest on ties.
    fn for_outputs(n: usize) -> Isa {
        let all = Self::available();
        let simd: Vec<Isa> = all.iter().copied().filter(|i| i.lanes() > 1).collect();
        let pick = simd.iter().copied().min_by_key(|i| n.next_multiple_of(i.lanes()));
        pick.unwrap_or(Isa::Scalar)
    }

    fn lanes(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => 16,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => 8,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(_) => 4,
            Isa::Scalar => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => "avx512",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => "avx2",
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(_) => "neon",
            Isa::Scalar => "scalar",
        }
    }

    /// Runs `op` compiled for this instruction set.
    #[inline(always)]
    fn run<Op: WithSimd>(self, op: Op) -> Op::Output {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(s) => Simd::vectorize(s, op),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(s) => Simd::vectorize(s, op),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon(s) => Simd::vectorize(s, op),
            Isa::Scalar => Simd::vectorize(pulp::Scalar, op),
        }
    }
}

/// Weights packed as `Wᵀ[k][o]`, `o` zero-padded to `opad` (whole vectors).
struct Packed {
    isa: Isa,
    /// Output channels / features.
    n: usize,
    opad: usize,
    /// `k × opad`.
    wt: Vec<f32>,
    /// Bias, zero-padded to `opad`.
    bias: Vec<f32>,
}

impl Packed {
    /// `w` is `[n, k]` row-major.
    fn new(isa: Isa, w: &[f32], bias: &[f32], n: usize, k: usize) -> Self {
        let opad = n.next_multiple_of(isa.lanes());
        let mut wt = vec![0f32; k * opad];
        for o in 0..n {
            for (kk, &v) in w[o * k..(o + 1) * k].iter().enumerate() {
                wt[kk * opad + o] = v;
            }
        }
        let mut b = vec![0f32; opad];
        b[..n].copy_from_slice(bias);
        Self { isa, n, opad, wt, bias: b }
    }
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Thread-local scratch, grown on first use and reused.
#[derive(Default)]
struct Scratch {
    /// Per input geometry: the zero-padded input of one sample and the tap offsets.
    padded: Vec<Padded>,
    /// Tile results: `[pixel][opad]` (conv) or `[row][opad]` (linear).
    c: Vec<f32>,
    /// Pooled conv outputs, `[pooled pixel][opad]`.
    p: Vec<f32>,
}

/// A zero-padded input buffer for one geometry: its borders stay zero, so a
/// call only copies the interior.
struct Padded {
    /// `(channels, height, width, kernel, padding)`.
    key: (usize, usize, usize, usize, usize),
    xp: Vec<f32>,
    /// Offset in `xp` of each tap (channel, kernel row, kernel column), in
    /// packing order.
    koff: Vec<usize>,
}

impl Padded {
    /// The buffer for this geometry in `list`, made on first use.
    fn find<'a>(list: &'a mut Vec<Padded>, g: &ConvGeom, k: usize, p: usize) -> &'a mut Padded {
        let key = (g.c, g.h, g.w, k, p);
        let i = match list.iter().position(|e| e.key == key) {
            Some(i) => i,
            None => {
                let mut koff = Vec::with_capacity(g.c * k * k);
                for ci in 0..g.c {
                    for kh in 0..k {
                        for kw in 0..k {
                            koff.push(ci * g.hp * g.wp + kh * g.wp + kw);
                        }
                    }
                }
                let xp = if p > 0 { vec![0f32; g.c * g.hp * g.wp] } else { Vec::new() };
                list.push(Padded { key, xp, koff });
                list.len() - 1
            }
        };
        &mut list[i]
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Fused `conv2d (stride, zero padding) + bias + optional ReLU + optional
/// non-overlapping max-pool (floor)`, NCHW f32 in and out.
pub struct Conv2dKernel {
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    relu: bool,
    pool: Option<usize>,
    packed: Packed,
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
struct ConvGeom {
    c: usize,
    h: usize,
    w: usize,
    hp: usize,
    wp: usize,
    /// Pool size (1: none) and pooled output size.
    pool: usize,
    ph: usize,
    pw: usize,
    /// Conv outputs the pool reads: `ph · pool` × `pw · pool`.
    uh: usize,
    uw: usize,
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

    fn with_isa(
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

/// Fused `x · Wᵀ + bias`, optional ReLU, on `[B, in]` f32.
pub struct LinearKernel {
    in_features: usize,
    relu: bool,
    /// `0..in_features`: the micro-kernel's per-`k` offsets.
    koff: Vec<usize>,
    packed: Packed,
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

    fn with_isa(isa: Isa, weight: &Tensor, bias: &Tensor, relu: bool) -> Result<Self> {
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

    fn run_chunk(&self, x: &[f32], out: &mut [f32]) {
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

fn f32_input<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(x) = storage else {
        return Err(Error::Msg(format!("{what} kernel: f32 input only")));
    };
    let (start, end) =
        layout.contiguous_offsets().ok_or_else(|| Error::Msg(format!("{what} kernel: input must be contiguous")))?;
    Ok(&x[start..end])
}

/// Rows (samples) per parallel task, or `None` to stay on this thread.
fn chunk_rows(batch: usize, macs: usize) -> Option<usize> {
    if batch < 2 || macs < PARALLEL_MIN_MACS {
        return None;
    }
    let threads = rayon::current_num_threads();
    if threads < 2 {
        return None;
    }
    // A few tasks per thread, so a thread slowed by other work is not the tail.
    Some(batch.div_ceil(threads * 4).max(1))
}

/// Splits `len` into at most `mr_max`-long pieces of near-equal length:
/// `(start, length)`.
fn segments(len: usize, mr_max: usize) -> impl Iterator<Item = (usize, usize)> {
    let n = len.div_ceil(mr_max);
    let (base, rem) = (len / n, len % n);
    (0..n).map(move |i| (i * base + i.min(rem), base + usize::from(i < rem)))
}

/// Tallest tile whose accumulators, `NV` weight vectors and a broadcast fit
/// the register file.
fn mr_max<S: Simd>(nv: usize) -> usize {
    let cap = if nv == 1 { MR_CAP_1 } else { MR_CAP_2 };
    ((S::REGISTER_COUNT - nv - 2) / nv).min(cap)
}

/// Operands of the micro-kernel: `A(i, k) = a[koff[k] + a0 + i·ams]` is
/// broadcast, `B(k, ·) = b[k·brs + b0 ..]` is loaded as vectors.
struct Gemm<'a> {
    a: &'a [f32],
    koff: &'a [usize],
    ams: usize,
    b: &'a [f32],
    brs: usize,
}

#[inline(always)]
fn load<S: Simd>(s: &[f32]) -> S::f32s {
    bytemuck::pod_read_unaligned(bytemuck::cast_slice(&s[..S::F32_LANES]))
}

#[inline(always)]
fn store<S: Simd>(d: &mut [f32], v: S::f32s) {
    bytemuck::cast_slice_mut::<f32, u8>(&mut d[..S::F32_LANES]).copy_from_slice(bytemuck::bytes_of(&v));
}

/// `c[c0 + i·crs + j] = Σₖ A(i, k)·B(k, b0 + j)` for `i < MR`, `j < NV·lanes`.
#[inline(always)]
fn tile<S: Simd, const MR: usize, const NV: usize>(
    simd: S,
    g: &Gemm<'_>,
    a0: usize,
    b0: usize,
    c: &mut [f32],
    c0: usize,
    crs: usize,
) {
    let lanes = S::F32_LANES;
    let width = NV * lanes;
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; NV]; MR];
    let rows = g.b.chunks_exact(g.brs).zip(g.koff);
    if g.ams == 1 {
        for (brow, &off) in rows {
            let brow = &brow[b0..b0 + width];
            let mut bv = [zero; NV];
            for (j, v) in bv.iter_mut().enumerate() {
                *v = load::<S>(&brow[j * lanes..]);
            }
            let arow: &[f32; MR] = g.a[off + a0..off + a0 + MR].try_into().expect("MR values");
            for i in 0..MR {
                let ai = simd.splat_f32s(arow[i]);
                for j in 0..NV {
                    acc[i][j] = simd.mul_add_e_f32s(ai, bv[j], acc[i][j]);
                }
            }
        }
    } else {
        let span = (MR - 1) * g.ams + 1;
        for (brow, &off) in rows {
            let brow = &brow[b0..b0 + width];
            let mut bv = [zero; NV];
            for (j, v) in bv.iter_mut().enumerate() {
                *v = load::<S>(&brow[j * lanes..]);
            }
            let arow = &g.a[off + a0..off + a0 + span];
            for i in 0..MR {
                let ai = simd.splat_f32s(arow[i * g.ams]);
                for j in 0..NV {
                    acc[i][j] = simd.mul_add_e_f32s(ai, bv[j], acc[i][j]);
                }
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        let dst = &mut c[c0 + i * crs..c0 + i * crs + width];
        for (j, v) in row.iter().enumerate() {
            store::<S>(&mut dst[j * lanes..], *v);
        }
    }
}

/// [`tile`] for a single row (`MR` = 1: a batch-1 linear layer). One row has
/// only `NV` accumulators, too few to hide the FMA latency, so four sets
/// take every fourth `k` and are summed at the end.
#[inline(always)]
fn tile_row<S: Simd, const NV: usize>(simd: S, g: &Gemm<'_>, a0: usize, b0: usize, c: &mut [f32], c0: usize) {
    let lanes = S::F32_LANES;
    let width = NV * lanes;
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; NV]; 4];
    let b = &g.b[..g.koff.len() * g.brs];
    let quads = g.koff.len() / 4;
    for (bq, kq) in b.chunks_exact(4 * g.brs).zip(g.koff.chunks_exact(4)) {
        for u in 0..4 {
            let brow = &bq[u * g.brs + b0..u * g.brs + b0 + width];
            let ai = simd.splat_f32s(g.a[kq[u] + a0]);
            for j in 0..NV {
                acc[u][j] = simd.mul_add_e_f32s(ai, load::<S>(&brow[j * lanes..]), acc[u][j]);
            }
        }
    }
    let tail = b[quads * 4 * g.brs..].chunks_exact(g.brs).zip(&g.koff[quads * 4..]);
    for (brow, &off) in tail {
        let brow = &brow[b0..b0 + width];
        let ai = simd.splat_f32s(g.a[off + a0]);
        for j in 0..NV {
            acc[0][j] = simd.mul_add_e_f32s(ai, load::<S>(&brow[j * lanes..]), acc[0][j]);
        }
    }
    let dst = &mut c[c0..c0 + width];
    for j in 0..NV {
        let v = simd.add_f32s(simd.add_f32s(acc[0][j], acc[1][j]), simd.add_f32s(acc[2][j], acc[3][j]));
        store::<S>(&mut dst[j * lanes..], v);
    }
}

/// [`tile`] one vector wide, with a run-time height `mr` (1..=12).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_1<S: Simd>(simd: S, mr: usize, g: &Gemm<'_>, a0: usize, b0: usize, c: &mut [f32], c0: usize, crs: usize) {
    match mr {
        1 => tile_row::<S, 1>(simd, g, a0, b0, c, c0),
        2 => tile::<S, 2, 1>(simd, g, a0, b0, c, c0, crs),
        3 => tile::<S, 3, 1>(simd, g, a0, b0, c, c0, crs),
        4 => tile::<S, 4, 1>(simd, g, a0, b0, c, c0, crs),
        5 => tile::<S, 5, 1>(simd, g, a0, b0, c, c0, crs),
        6 => tile::<S, 6, 1>(simd, g, a0, b0, c, c0, crs),
        7 => tile::<S, 7, 1>(simd, g, a0, b0, c, c0, crs),
        8 => tile::<S, 8, 1>(simd, g, a0, b0, c, c0, crs),
        9 => tile::<S, 9, 1>(simd, g, a0, b0, c, c0, crs),
        10 => tile::<S, 10, 1>(simd, g, a0, b0, c, c0, crs),
        11 => tile::<S, 11, 1>(simd, g, a0, b0, c, c0, crs),
        12 => tile::<S, 12, 1>(simd, g, a0, b0, c, c0, crs),
        _ => unreachable!("tile height {mr} outside 1..={MR_CAP_1}"),
    }
}

/// [`tile`] two vectors wide, with a run-time height `mr` (1..=8).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_2<S: Simd>(simd: S, mr: usize, g: &Gemm<'_>, a0: usize, b0: usize, c: &mut [f32], c0: usize, crs: usize) {
    match mr {
        1 => tile_row::<S, 2>(simd, g, a0, b0, c, c0),
        2 => tile::<S, 2, 2>(simd, g, a0, b0, c, c0, crs),
        3 => tile::<S, 3, 2>(simd, g, a0, b0, c, c0, crs),
        4 => tile::<S, 4, 2>(simd, g, a0, b0, c, c0, crs),
        5 => tile::<S, 5, 2>(simd, g, a0, b0, c, c0, crs),
        6 => tile::<S, 6, 2>(simd, g, a0, b0, c, c0, crs),
        7 => tile::<S, 7, 2>(simd, g, a0, b0, c, c0, crs),
        8 => tile::<S, 8, 2>(simd, g, a0, b0, c, c0, crs),
        _ => unreachable!("tile height {mr} outside 1..={MR_CAP_2}"),
    }
}

/// One column block of the product, `nv` vectors wide from column `b0`, over
/// rows `[m0, m0 + len)` (A offset `a0`, C offset `c0`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile_any<S: Simd>(
    simd: S,
    nv: usize,
    len: usize,
    g: &Gemm<'_>,
    a0: usize,
    b0: usize,
    c: &mut [f32],
    c0: usize,
    crs: usize,
) {
    if nv == 2 {
        tile_2(simd, len, g, a0, b0, c, c0, crs);
    } else {
        tile_1(simd, len, g, a0, b0, c, c0, crs);
    }
}

/// Column blocks of `opad`: `(first vector, vectors)`, two vectors wide where possible.
fn column_blocks(vectors: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..vectors).step_by(2).map(move |j| (j, (vectors - j).min(2)))
}

struct ConvJob<'a> {
    op: &'a Conv2dKernel,
    g: &'a ConvGeom,
    x: &'a [f32],
    out: &'a mut [f32],
    sc: &'a mut Scratch,
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
fn conv_sample<S: Simd>(simd: S, op: &Conv2dKernel, g: &ConvGeom, x: &[f32], out: &mut [f32], sc: &mut Scratch) {
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
fn copy<S: Simd>(simd: S, dst: &mut [f32], src: &[f32]) {
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
fn pool_bias_relu<S: Simd, const P: usize>(
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

struct LinearJob<'a> {
    op: &'a LinearKernel,
    x: &'a [f32],
    out: &'a mut [f32],
    sc: &'a mut Scratch,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::{Device, Tensor};

    use super::super::arch::{init_weights, Arch, SplitMix64};
    use super::super::manifest::LayerSpec;
    use super::super::{Bundle, Executor, Layer};
    use super::*;

    fn rand(shape: &[usize], rng: &mut SplitMix64) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Weights `[o, fan_in...]` uniform in ±sqrt(6 / fan_in), as trained models start.
    fn weights(shape: &[usize], rng: &mut SplitMix64) -> Tensor {
        let fan_in: usize = shape[1..].iter().product();
        (rand(shape, rng) * (6.0 / fan_in as f64).sqrt()).unwrap()
    }

    /// Max of |a − b| / max(1, |b|): absolute for small values, relative for large.
    fn diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        a.iter().zip(&b).map(|(x, y)| (x - y).abs() / y.abs().max(1.0)).fold(0.0, f32::max)
    }

    const TOL: f32 = 1e-5;

    #[test]
    fn kernels_parse() {
        assert_eq!("candle".parse::<Kernels>().unwrap(), Kernels::Candle);
        assert_eq!("FAST".parse::<Kernels>().unwrap(), Kernels::Fast);
        assert!("cuda".parse::<Kernels>().is_err());
    }

    #[test]
    fn segments_split_rows_exactly() {
        for len in 1..40 {
            for mr in 1..=8 {
                let s: Vec<_> = segments(len, mr).collect();
                assert_eq!(s.iter().map(|&(_, l)| l).sum::<usize>(), len);
                assert!(s.iter().all(|&(_, l)| (1..=mr).contains(&l)), "{len} {mr} {s:?}");
                assert!(s.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
            }
        }
        assert_eq!(segments(14, 8).collect::<Vec<_>>(), vec![(0, 7), (7, 7)]);
    }

    /// Every instruction set this CPU has, on convolutions of every stride,
    /// padding and pool kind, with channel counts that do and do not fill
    /// whole vectors, maps whose pooling floors, and batches 1, 3 and 32.
    #[test]
    fn fast_conv_matches_candle_on_odd_shapes() {
        let mut rng = SplitMix64::new(11);
        let mut worst = 0f32;
        // (c_in, c_out, kernel, stride, padding, pool, relu, h, w)
        let cases = [
            (1, 8, 5, 1, 2, Some(2), true, 28, 28),
            (8, 32, 5, 1, 2, Some(2), true, 14, 14),
            (32, 64, 3, 1, 1, Some(2), true, 7, 7),
            (8, 16, 3, 1, 1, Some(2), true, 14, 14),
            (3, 5, 3, 2, 1, None, false, 9, 11),
            (2, 10, 2, 2, 0, Some(2), true, 13, 10),
            (4, 17, 3, 1, 0, Some(3), false, 12, 17),
            (1, 1, 1, 1, 0, None, true, 5, 3),
            (5, 33, 4, 3, 2, Some(2), true, 15, 9),
            (6, 24, 5, 1, 2, Some(2), false, 9, 9),
            (3, 4, 3, 1, 0, None, true, 6, 3),
            (2, 3, 3, 2, 1, None, false, 4, 1),
            (4, 20, 3, 1, 1, Some(2), true, 3, 40),
        ];
        for isa in Isa::available() {
            for &(c, o, k, s, p, pool, relu, h, w) in &cases {
                let spec =
                    LayerSpec::Conv2d { in_channels: c, out_channels: o, kernel: k, stride: s, padding: p, relu, pool };
                let (wt, b) = (weights(&[o, c, k, k], &mut rng), rand(&[o], &mut rng));
                let mut layer = Layer::new(&spec, |n| if n == "weight" { wt.clone() } else { b.clone() }).unwrap();
                layer.set_kernels(Kernels::Candle).unwrap();
                let fast = Conv2dKernel::with_isa(isa, &wt, &b, s, p, relu, pool).unwrap();
                for batch in [1, 3, 32] {
                    let x = rand(&[batch, c, h, w], &mut rng);
                    let want = layer.forward(&x).unwrap();
                    let got = fast.forward(&x).unwrap();
                    let d = diff(&got, &want);
                    assert!(d <= TOL, "{isa:?} conv {c}->{o} k{k} s{s} p{p} pool {pool:?} {h}x{w} batch {batch}: {d}");
                    worst = worst.max(d);
                }
            }
        }
        eprintln!("conv: worst difference {worst:e}");
    }

    #[test]
    fn fast_linear_matches_candle_on_odd_shapes() {
        let mut rng = SplitMix64::new(12);
        let mut worst = 0f32;
        for isa in Isa::available() {
            for &(i, o, relu) in &[(576, 128, true), (128, 10, false), (784, 10, false), (7, 3, true), (33, 17, false)]
            {
                let spec = LayerSpec::Linear { in_features: i, out_features: o, relu };
                let (wt, b) = (weights(&[o, i], &mut rng), rand(&[o], &mut rng));
                let mut layer = Layer::new(&spec, |n| if n == "weight" { wt.clone() } else { b.clone() }).unwrap();
                layer.set_kernels(Kernels::Candle).unwrap();
                let fast = LinearKernel::with_isa(isa, &wt, &b, relu).unwrap();
                for batch in [1, 3, 9, 32] {
                    let x = rand(&[batch, i], &mut rng);
                    let d = diff(&fast.forward(&x).unwrap(), &layer.forward(&x).unwrap());
                    assert!(d <= TOL, "{isa:?} linear {i}->{o} batch {batch}: {d}");
                    worst = worst.max(d);
                }
            }
        }
        eprintln!("linear: worst difference {worst:e}");
    }

    /// The default (fast) bundle against a candle-kernels copy, block by block
    /// and exit by exit on real activations, and end to end.
    #[test]
    fn fast_path_matches_candle_on_every_block_and_exit() {
        let mut worst = 0f32;
        for arch in [Arch::BLenet, Arch::Tiny, Arch::WideMlp] {
            let m = arch.manifest("m");
            let mut fast = Bundle::from_parts(m.clone(), init_weights(&m, 5).unwrap()).unwrap();
            fast.use_kernels(Kernels::Fast).unwrap();
            let mut plain = fast.clone();
            plain.use_kernels(Kernels::Candle).unwrap();
            let n = fast.num_blocks();
            for b in 0..n {
                let wide = matches!(m.blocks[b].layer,
                    LayerSpec::Linear { in_features, out_features, .. } if !LinearKernel::suits(out_features, in_features));
                if wide {
                    // Wide layers keep candle's blocked gemm even with fast kernels.
                    assert_eq!(fast.layer(b).unwrap().kernels(), Kernels::Candle);
                } else if !matches!(m.blocks[b].layer, LayerSpec::Flatten) {
                    assert_eq!(fast.layer(b).unwrap().kernels(), Kernels::Fast);
                    assert_eq!(plain.layer(b).unwrap().kernels(), Kernels::Candle);
                }
            }
            let mut rng = SplitMix64::new(3);
            for batch in [1, 3, 32] {
                let v: Vec<f32> = (0..batch * 784).map(|_| rng.next_f32()).collect();
                let input = Tensor::from_vec(v, (batch, 1, 28, 28), &Device::Cpu).unwrap();
                let mut x = input.clone();
                for b in 0..n {
                    let want = plain.layer(b).unwrap().forward(&x).unwrap();
                    let got = fast.layer(b).unwrap().forward(&x).unwrap();
                    let d = diff(&got, &want);
                    assert!(d <= TOL, "{arch:?} block {b} batch {batch}: {d}");
                    worst = worst.max(d);
                    x = want;
                    if let Some(e) = fast.exit_after(b) {
                        let want = super::super::layer_forward_all(plain.exit_layers(e).unwrap(), &x).unwrap();
                        let got = super::super::layer_forward_all(fast.exit_layers(e).unwrap(), &x).unwrap();
                        let d = diff(&got, &want);
                        assert!(d <= TOL, "{arch:?} exit {e} batch {batch}: {d}");
                        worst = worst.max(d);
                    }
                }
                let want = Executor::new(Arc::new(plain.clone())).forward_exits(&input, 0..n).unwrap();
                let got = Executor::new(Arc::new(fast.clone())).forward_exits(&input, 0..n).unwrap();
                for ((e, a), (_, b)) in got.iter().zip(&want) {
                    let d = diff(a, b);
                    assert!(d <= TOL, "{arch:?} end to end, exit {e}, batch {batch}: {d}");
                    worst = worst.max(d);
                }
            }
        }
        eprintln!("blocks and exits: worst difference {worst:e}");
    }

    /// Weights that track gradients (training) run candle's differentiable ops.
    #[test]
    fn trainable_weights_keep_the_differentiable_path() {
        let spec = LayerSpec::Linear { in_features: 4, out_features: 2, relu: false };
        let w = candle_core::Var::new(&[[1f32, 2., 3., 4.], [0., 1., 0., 1.]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.5f32, -0.5], &Device::Cpu).unwrap();
        let layer = Layer::new(&spec, |n| if n == "weight" { w.as_tensor().clone() } else { b.clone() }).unwrap();
        assert_eq!(layer.kernels(), Kernels::Candle);
        let x = Tensor::new(&[[1f32, 1., 1., 1.]], &Device::Cpu).unwrap();
        let grads = layer.forward(&x).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(w.as_tensor()).is_some());
    }
}
