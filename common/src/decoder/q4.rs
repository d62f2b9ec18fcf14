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

/// Activations quantized per block of 32.
struct Q8Rows {
    d: Vec<f32>,
    s: Vec<f32>,
    qs: Vec<[i8; 32]>,
}

impl Q41Matrix {
    /// The matrix of a Q4_1 tensor (`None` for other storage types).
    pub fn from_qtensor(t: &QTensor) -> Result<Option<Self>, DecoderError> {
        if t.dtype() != GgmlDType::Q4_1 {
            return Ok(None);
        }
        let (rows, cols) = t.shape().dims2()?;
        if cols % QK != 0 {
            return Ok(None);
        }
        let data = t.data()?;
        let blocks = rows * cols / QK;
        if data.len() != blocks * 20 {
            return Err(DecoderError::Tensor {
                name: "Q4_1".into(),
                detail: format!("{} bytes for {blocks} blocks", data.len()),
            });
        }
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

    /// `out[j]` = output row `r0 + j` for activation row `i` (the CPU's
    /// instruction set picked once per call, not per row).
    fn fill(&self, q: &Q8Rows, i: usize, r0: usize, out: &mut [f32]) {
        let nb = self.cols / QK;
        let x0 = i * nb;
        let (xq, xd, xs) = (&q.qs[x0..x0 + nb], &q.d[x0..x0 + nb], &q.s[x0..x0 + nb]);
        let w = |r: usize| {
            let w0 = (r0 + r) * nb;
            (&self.qs[w0..w0 + nb], &self.d[w0..w0 + nb], &self.m[w0..w0 + nb])
        };
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            simd.vectorize(
                #[inline(always)]
                || {
                    for (r, v) in out.iter_mut().enumerate() {
                        let (wq, wd, wm) = w(r);
                        *v = dot_avx2(simd, wq, wd, wm, xq, xd, xs);
                    }
                },
            );
            return;
        }
        for (r, v) in out.iter_mut().enumerate() {
            let (wq, wd, wm) = w(r);
            *v = dot_scalar(wq, wd, wm, xq, xd, xs);
        }
    }

    /// `x · Wᵀ` for `x` of shape `[t, cols]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, DecoderError> {
        let (t, cols) = x.dims2()?;
        if cols != self.cols {
            return Err(DecoderError::Width { got: cols, hidden: self.cols });
        }
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let nb = cols / QK;
        let q = quantize(&xs, nb);
        let mut out = vec![0f32; t * self.rows];
        let macs = t * self.rows * cols;
        if macs >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1 {
            let chunk = self.rows.div_ceil(rayon::current_num_threads() * 4).max(16);
            for (i, out_row) in out.chunks_mut(self.rows).enumerate() {
                out_row.par_chunks_mut(chunk).enumerate().for_each(|(c, o)| self.fill(&q, i, c * chunk, o));
            }
        } else {
            for (i, out_row) in out.chunks_mut(self.rows).enumerate() {
                self.fill(&q, i, 0, out_row);
            }
        }
        Ok(Tensor::from_vec(out, (t, self.rows), &Device::Cpu)?)
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
