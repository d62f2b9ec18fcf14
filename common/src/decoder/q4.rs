//! Q4_1 matrix × f32 activations, the projection of every SmolLM2 layer.
//!
//! Why by hand: candle 0.11's CPU `QMatMul` has SIMD dot products for Q4_0,
//! Q8_0 and the k-quants but computes Q4_1 × Q8_1 with a scalar loop
//! (`vec_dot_unopt`): SmolLM2-135M decoded at 0.24× llama.cpp's
//! single-thread speed. This is ggml's scheme in safe code through `pulp`:
//! activations are quantized per 32-value block to 8 bits (scale `d`,
//! `s = d · Σq`), each block's dot is `d_w·d_x·Σ q_w·q_x + m_w·s_x` with the
//! integer part on AVX2 (`maddubs` + `madd`), and output rows are split
//! over rayon's pool when the product is large enough to repay it.
//!
//! [`Q80Matrix`] does the same for Q8_0 weights (the tied LM head, 49,152 ×
//! 576): candle's Q8_0 dot is SIMD but its matmul streams the whole matrix
//! once per activation row, so checking 4 drafts cost 4 passes over 28 MB;
//! here every weight row is read once for all activation rows.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::error::DecoderError;

const QK: usize = 32;
/// Multiply-adds below which a product stays on the caller's thread.
const PARALLEL_MIN_MACS: usize = 1 << 20;

/// A `[rows, cols]` Q4_1 matrix, blocks split into scales, minimums and
/// nibbles (value `j` of a block in the low nibble of byte `j`, value
/// `j + 16` in its high nibble, as GGUF stores them).
pub struct Q41Matrix {
    rows: usize,
    cols: usize,
    d: Vec<f32>,
    m: Vec<f32>,
    qs: Vec<[u8; 16]>,
}

/// A quantized matrix's `(rows, cols)` and its blocks' bytes.
type RawBlocks<'a> = (usize, usize, std::borrow::Cow<'a, [u8]>);

/// The raw bytes of a 2-D tensor stored as `dtype`, `block_bytes` per block
/// of [`QK`] values, with its `(rows, cols)`: `None` for another storage
/// type or rows that are not whole blocks; an error when the byte count does
/// not match the shape.
fn raw_blocks(t: &QTensor, dtype: GgmlDType, block_bytes: usize) -> Result<Option<RawBlocks<'_>>, DecoderError> {
    if t.dtype() != dtype {
        return Ok(None);
    }
    let (rows, cols) = t.shape().dims2()?;
    if cols % QK != 0 {
        return Ok(None);
    }
    let data = t.data()?;
    let blocks = rows * cols / QK;
    if data.len() != blocks * block_bytes {
        return Err(DecoderError::Tensor {
            name: format!("{dtype:?}"),
            detail: format!("{} bytes for {blocks} blocks", data.len()),
        });
    }
    Ok(Some((rows, cols, data)))
}

/// A `[rows, cols]` Q8_0 matrix: per block of 32, a scale and 32 signed bytes.
pub struct Q80Matrix {
    rows: usize,
    cols: usize,
    d: Vec<f32>,
    qs: Vec<[i8; 32]>,
}

impl Q80Matrix {
    /// The matrix of a Q8_0 tensor (`None` for other storage types).
    pub fn from_qtensor(t: &QTensor) -> Result<Option<Self>, DecoderError> {
        let Some((rows, cols, data)) = raw_blocks(t, GgmlDType::Q8_0, 34)? else { return Ok(None) };
        let blocks = rows * cols / QK;
        let mut d = Vec::with_capacity(blocks);
        let mut qs = Vec::with_capacity(blocks);
        for b in data.chunks_exact(34) {
            d.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            let mut q = [0i8; 32];
            for (o, &v) in q.iter_mut().zip(&b[2..34]) {
                *o = v as i8;
            }
            qs.push(q);
        }
        Ok(Some(Self { rows, cols, d, qs }))
    }

    /// `x · Wᵀ` for `x` of shape `[t, cols]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, DecoderError> {
        let nb = self.cols / QK;
        project(x, self.rows, self.cols, |q, t, r0, out| {
            let xr = |i: usize| (&q.qs[i * nb..(i + 1) * nb], &q.d[i * nb..(i + 1) * nb]);
            let w = |r: usize| {
                let w0 = (r0 + r) * nb;
                (&self.qs[w0..w0 + nb], &self.d[w0..w0 + nb])
            };
            fill_by_weight(
                out,
                t,
                #[cfg(target_arch = "x86_64")]
                #[inline(always)]
                |simd, r, i| {
                    let ((wq, wd), (xq, xd)) = (w(r), xr(i));
                    dot_q8_avx2(simd, wq, wd, xq, xd)
                },
                |r, i| {
                    let ((wq, wd), (xq, xd)) = (w(r), xr(i));
                    dot_q8_scalar(wq, wd, xq, xd)
                },
            )
        })
    }
}

/// Fills `out[j * t + i]` with the dot of weight row `j` and activation
/// row `i`, weight row by weight row (a weight row, under 1 KB, stays in L1
/// while every activation row reads it): on AVX2 where the CPU has it (the
/// instruction set picked once per call), else the scalar dot.
#[inline(always)]
fn fill_by_weight(
    out: &mut [f32],
    t: usize,
    #[cfg(target_arch = "x86_64")] avx2: impl Fn(pulp::x86::V3, usize, usize) -> f32,
    scalar: impl Fn(usize, usize) -> f32,
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        simd.vectorize(
            #[inline(always)]
            || {
                for (r, o) in out.chunks_exact_mut(t).enumerate() {
                    for (i, v) in o.iter_mut().enumerate() {
                        *v = avx2(simd, r, i);
                    }
                }
            },
        );
        return;
    }
    for (r, o) in out.chunks_exact_mut(t).enumerate() {
        for (i, v) in o.iter_mut().enumerate() {
            *v = scalar(r, i);
        }
    }
}

/// `x · Wᵀ` for a `[rows, cols]` matrix whose `fill(q, t, r0, out)` writes
/// weight rows `r0..` for all `t` quantized activation rows, weight-row
/// major (`out[j * t + i]`): output rows split over rayon's pool when the
/// product is large, then transposed to `[t, rows]`.
fn project(
    x: &Tensor,
    rows: usize,
    cols: usize,
    fill: impl Fn(&Q8Rows, usize, usize, &mut [f32]) + Sync,
) -> Result<Tensor, DecoderError> {
    let (t, w) = x.dims2()?;
    if w != cols {
        return Err(DecoderError::Width { got: w, hidden: cols });
    }
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let q = quantize(&xs, cols / QK);
    let mut by_weight = vec![0f32; t * rows];
    if t * rows * cols >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1 {
        let chunk = rows.div_ceil(rayon::current_num_threads() * 4).max(16);
        by_weight.par_chunks_mut(chunk * t).enumerate().for_each(|(c, o)| fill(&q, t, c * chunk, o));
    } else {
        fill(&q, t, 0, &mut by_weight);
    }
    let out = if t == 1 {
        by_weight
    } else {
        let mut out = vec![0f32; t * rows];
        for (r, row) in by_weight.chunks_exact(t).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                out[i * rows + r] = v;
            }
        }
        out
    };
    Ok(Tensor::from_vec(out, (t, rows), &Device::Cpu)?)
}

fn dot_q8_scalar(wq: &[[i8; 32]], wd: &[f32], xq: &[[i8; 32]], xd: &[f32]) -> f32 {
    let mut sum = 0f32;
    for b in 0..wq.len() {
        let acc: i32 = wq[b].iter().zip(&xq[b]).map(|(&a, &c)| a as i32 * c as i32).sum();
        sum += wd[b] * xd[b] * acc as f32;
    }
    sum
}

/// ggml's Q8_0 · Q8_0 on AVX2: `maddubs` wants an unsigned operand, so the
/// weights' signs move onto the activations (`|w| · sign(w)·x`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn dot_q8_avx2(simd: pulp::x86::V3, wq: &[[i8; 32]], wd: &[f32], xq: &[[i8; 32]], xd: &[f32]) -> f32 {
    use core::arch::x86_64::{__m256, __m256i};
    let ones = simd.avx._mm256_set1_epi16(1);
    let mut acc = simd.avx._mm256_setzero_ps();
    for b in 0..wq.len() {
        let w: __m256i = pulp::cast(wq[b]);
        let x: __m256i = pulp::cast(xq[b]);
        let aw = simd.avx2._mm256_sign_epi8(w, w);
        let sx = simd.avx2._mm256_sign_epi8(x, w);
        let products = simd.avx2._mm256_madd_epi16(simd.avx2._mm256_maddubs_epi16(aw, sx), ones);
        let scale = simd.avx._mm256_set1_ps(wd[b] * xd[b]);
        acc = simd.fma._mm256_fmadd_ps(scale, simd.avx._mm256_cvtepi32_ps(products), acc);
    }
    let lanes: [f32; 8] = pulp::cast::<__m256, [f32; 8]>(acc);
    lanes.iter().sum()
}

/// Activations quantized per block of 32.
struct Q8Rows {
    d: Vec<f32>,
    s: Vec<f32>,
    qs: Vec<[i8; 32]>,
}

impl Q41Matrix {
    /// The matrix of a Q4_1 tensor (`None` for other storage types).
    pub fn from_qtensor(t: &QTensor) -> Result<Option<Self>, DecoderError> {
        let Some((rows, cols, data)) = raw_blocks(t, GgmlDType::Q4_1, 20)? else { return Ok(None) };
        let blocks = rows * cols / QK;
        let mut d = Vec::with_capacity(blocks);
        let mut m = Vec::with_capacity(blocks);
        let mut qs = Vec::with_capacity(blocks);
        for b in data.chunks_exact(20) {
            d.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            m.push(half::f16::from_le_bytes([b[2], b[3]]).to_f32());
            qs.push(b[4..20].try_into().expect("16 bytes"));
        }
        Ok(Some(Self { rows, cols, d, m, qs }))
    }

    /// Output rows `r0..r0 + out.len() / t` for all `t` activation rows
    /// (`out[j * t + i]` = weight row `r0 + j` · activation row `i`), so `t`
    /// rows cost about one pass over the weights, not `t` (what makes a
    /// verify step or a batch of sessions cheap; each dot is the same as
    /// alone, bit for bit).
    fn fill(&self, q: &Q8Rows, t: usize, r0: usize, out: &mut [f32]) {
        let nb = self.cols / QK;
        let x = |i: usize| {
            let x0 = i * nb;
            (&q.qs[x0..x0 + nb], &q.d[x0..x0 + nb], &q.s[x0..x0 + nb])
        };
        let w = |r: usize| {
            let w0 = (r0 + r) * nb;
            (&self.qs[w0..w0 + nb], &self.d[w0..w0 + nb], &self.m[w0..w0 + nb])
        };
        fill_by_weight(
            out,
            t,
            #[cfg(target_arch = "x86_64")]
            #[inline(always)]
            |simd, r, i| {
                let ((wq, wd, wm), (xq, xd, xs)) = (w(r), x(i));
                dot_avx2(simd, wq, wd, wm, xq, xd, xs)
            },
            |r, i| {
                let ((wq, wd, wm), (xq, xd, xs)) = (w(r), x(i));
                dot_scalar(wq, wd, wm, xq, xd, xs)
            },
        )
    }

    /// `x · Wᵀ` for `x` of shape `[t, cols]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, DecoderError> {
        project(x, self.rows, self.cols, |q, t, r0, out| self.fill(q, t, r0, out))
    }
}

fn quantize(xs: &[f32], nb: usize) -> Q8Rows {
    let blocks = xs.len() / QK;
    let mut q = Q8Rows { d: Vec::with_capacity(blocks), s: Vec::with_capacity(blocks), qs: Vec::with_capacity(blocks) };
    debug_assert_eq!(blocks % nb.max(1), 0);
    for block in xs.chunks_exact(QK) {
        // As ggml's Q8_1 (llama.cpp's AVX2 path): round half to even, the
        // scale and the scaled sum stored as f16.
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; 32];
        let mut sum = 0i32;
        for (o, v) in qs.iter_mut().zip(block) {
            *o = (v * inv).round_ties_even() as i8;
            sum += *o as i32;
        }
        q.d.push(half::f16::from_f32(d).to_f32());
        q.s.push(half::f16::from_f32(d * sum as f32).to_f32());
        q.qs.push(qs);
    }
    q
}

fn dot_scalar(wq: &[[u8; 16]], wd: &[f32], wm: &[f32], xq: &[[i8; 32]], xd: &[f32], xs: &[f32]) -> f32 {
    let mut sum = 0f32;
    for b in 0..wq.len() {
        let mut acc = 0i32;
        for j in 0..16 {
            acc += (wq[b][j] & 0x0F) as i32 * xq[b][j] as i32 + (wq[b][j] >> 4) as i32 * xq[b][j + 16] as i32;
        }
        sum += wd[b] * xd[b] * acc as f32 + wm[b] * xs[b];
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn dot_avx2(
    simd: pulp::x86::V3,
    wq: &[[u8; 16]],
    wd: &[f32],
    wm: &[f32],
    xq: &[[i8; 32]],
    xd: &[f32],
    xs: &[f32],
) -> f32 {
    use core::arch::x86_64::{__m128i, __m256, __m256i};
    let mask = simd.sse2._mm_set1_epi8(0x0F);
    let ones = simd.avx._mm256_set1_epi16(1);
    let mut acc = simd.avx._mm256_setzero_ps();
    let mut mins = 0f32;
    for b in 0..wq.len() {
        let packed: __m128i = pulp::cast(wq[b]);
        let lo = simd.sse2._mm_and_si128(packed, mask);
        let hi = simd.sse2._mm_and_si128(simd.sse2._mm_srli_epi16::<4>(packed), mask);
        let w: __m256i = simd.avx._mm256_set_m128i(hi, lo);
        let x: __m256i = pulp::cast(xq[b]);
        let products = simd.avx2._mm256_madd_epi16(simd.avx2._mm256_maddubs_epi16(w, x), ones);
        let scale = simd.avx._mm256_set1_ps(wd[b] * xd[b]);
        acc = simd.fma._mm256_fmadd_ps(scale, simd.avx._mm256_cvtepi32_ps(products), acc);
        mins += wm[b] * xs[b];
    }
    let lanes: [f32; 8] = pulp::cast::<__m256, [f32; 8]>(acc);
    lanes.iter().sum::<f32>() + mins
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn q8_0_rows_equal_candles_and_the_scalar_dot() {
        let (rows, cols) = (40, 128);
        let mut rng = SplitMix64::new(5);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
        let x: Vec<f32> = (0..3 * cols).map(|_| rng.next_f32() * 4.0 - 2.0).collect();
        let qt = QTensor::quantize(&Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap(), GgmlDType::Q8_0).unwrap();
        let m = Q80Matrix::from_qtensor(&qt).unwrap().unwrap();
        let xt = Tensor::from_vec(x.clone(), (3, cols), &Device::Cpu).unwrap();
        let ours = m.forward(&xt).unwrap().to_vec2::<f32>().unwrap();
        let theirs = candle_core::quantized::QMatMul::from_qtensor(qt).unwrap();
        let theirs = candle_core::Module::forward(&theirs, &xt).unwrap().to_vec2::<f32>().unwrap();
        let nb = cols / QK;
        let q = quantize(&x, nb);
        for i in 0..3 {
            for r in 0..rows {
                assert!((ours[i][r] - theirs[i][r]).abs() < 2e-2, "{} vs {}", ours[i][r], theirs[i][r]);
                let s = dot_q8_scalar(
                    &m.qs[r * nb..(r + 1) * nb],
                    &m.d[r * nb..(r + 1) * nb],
                    &q.qs[i * nb..(i + 1) * nb],
                    &q.d[i * nb..(i + 1) * nb],
                );
                assert!((ours[i][r] - s).abs() < 1e-4, "SIMD {} vs scalar {s}", ours[i][r]);
            }
        }
        // One row alone gives the same as in a batch (row-independent).
        let one = m.forward(&xt.narrow(0, 1, 1).unwrap()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(one[0], ours[1]);
    }

    #[test]
    fn the_simd_dot_equals_the_scalar_one_and_the_product_is_close_to_f32() {
        let (rows, cols) = (40, 128);
        let mut rng = SplitMix64::new(3);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
        let x: Vec<f32> = (0..2 * cols).map(|_| rng.next_f32() * 4.0 - 2.0).collect();
        let wt = Tensor::from_vec(w.clone(), (rows, cols), &Device::Cpu).unwrap();
        let qt = QTensor::quantize(&wt, GgmlDType::Q4_1).unwrap();
        let m = Q41Matrix::from_qtensor(&qt).unwrap().unwrap();
        // The weights as quantized: only the activations' 8-bit rounding is
        // left (σ ≈ 0.03 here).
        let w = qt.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let xt = Tensor::from_vec(x.clone(), (2, cols), &Device::Cpu).unwrap();
        let ours = m.forward(&xt).unwrap().to_vec2::<f32>().unwrap();
        // candle's own (scalar) Q4_1 path on the same quantized weights.
        let theirs = candle_core::quantized::QMatMul::from_qtensor(qt).unwrap();
        let theirs = candle_core::Module::forward(&theirs, &xt).unwrap().to_vec2::<f32>().unwrap();
        let nb = cols / QK;
        let q = quantize(&x, nb);
        for i in 0..2 {
            for r in 0..rows {
                assert!((ours[i][r] - theirs[i][r]).abs() < 2e-2, "{} vs {}", ours[i][r], theirs[i][r]);
                let (w0, x0) = (r * nb, i * nb);
                let s = dot_scalar(
                    &m.qs[w0..w0 + nb],
                    &m.d[w0..w0 + nb],
                    &m.m[w0..w0 + nb],
                    &q.qs[x0..x0 + nb],
                    &q.d[x0..x0 + nb],
                    &q.s[x0..x0 + nb],
                );
                assert!((ours[i][r] - s).abs() < 1e-4, "SIMD {} vs scalar {s}", ours[i][r]);
                let exact: f32 = (0..cols).map(|c| w[r * cols + c] * x[i * cols + c]).sum();
                assert!((ours[i][r] - exact).abs() < 0.25, "{} vs f32 {}", ours[i][r], exact);
            }
        }
    }
}
