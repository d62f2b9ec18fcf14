//! The register-tiled micro-kernel shared by convolution and linear layers.

use super::dispatch::{MR_CAP_1, MR_CAP_2};
use pulp::bytemuck;
use pulp::Simd;

/// Operands of the micro-kernel: `A(i, k) = a[koff[k] + a0 + i·ams]` is
/// broadcast, `B(k, ·) = b[k·brs + b0 ..]` is loaded as vectors.
pub(super) struct Gemm<'a> {
    pub(super) a: &'a [f32],
    pub(super) koff: &'a [usize],
    pub(super) ams: usize,
    pub(super) b: &'a [f32],
    pub(super) brs: usize,
}

#[inline(always)]
pub(super) fn load<S: Simd>(s: &[f32]) -> S::f32s {
    bytemuck::pod_read_unaligned(bytemuck::cast_slice(&s[..S::F32_LANES]))
}

#[inline(always)]
pub(super) fn store<S: Simd>(d: &mut [f32], v: S::f32s) {
    bytemuck::cast_slice_mut::<f32, u8>(&mut d[..S::F32_LANES]).copy_from_slice(bytemuck::bytes_of(&v));
}

/// `c[c0 + i·crs + j] = Σₖ A(i, k)·B(k, b0 + j)` for `i < MR`, `j < NV·lanes`.
#[inline(always)]
pub(super) fn tile<S: Simd, const MR: usize, const NV: usize>(
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
pub(super) fn tile_row<S: Simd, const NV: usize>(
    simd: S,
    g: &Gemm<'_>,
    a0: usize,
    b0: usize,
    c: &mut [f32],
    c0: usize,
) {
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
pub(super) fn tile_1<S: Simd>(
    simd: S,
    mr: usize,
    g: &Gemm<'_>,
    a0: usize,
    b0: usize,
    c: &mut [f32],
    c0: usize,
    crs: usize,
) {
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
pub(super) fn tile_2<S: Simd>(
    simd: S,
    mr: usize,
    g: &Gemm<'_>,
    a0: usize,
    b0: usize,
    c: &mut [f32],
    c0: usize,
    crs: usize,
) {
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
pub(super) fn tile_any<S: Simd>(
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
pub(super) fn column_blocks(vectors: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..vectors).step_by(2).map(move |j| (j, (vectors - j).min(2)))
}
