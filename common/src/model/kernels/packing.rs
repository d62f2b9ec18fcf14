//! Weights packed once per layer, and thread-local scratch buffers.

use std::cell::RefCell;

use super::conv::ConvGeom;
use super::dispatch::Isa;
use candle_core::{Result, Tensor};

/// Weights packed as `Wᵀ[k][o]`, `o` zero-padded to `opad` (whole vectors).
pub(super) struct Packed {
    pub(super) isa: Isa,
    /// Output channels / features.
    pub(super) n: usize,
    pub(super) opad: usize,
    /// `k × opad`.
    pub(super) wt: Vec<f32>,
    /// Bias, zero-padded to `opad`.
    pub(super) bias: Vec<f32>,
}

impl Packed {
    /// `w` is `[n, k]` row-major.
    pub(super) fn new(isa: Isa, w: &[f32], bias: &[f32], n: usize, k: usize) -> Self {
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

pub(super) fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Thread-local scratch, grown on first use and reused.
#[derive(Default)]
pub(super) struct Scratch {
    /// Per input geometry: the zero-padded input of one sample and the tap offsets.
    pub(super) padded: Vec<Padded>,
    /// Tile results: `[pixel][opad]` (conv) or `[row][opad]` (linear).
    pub(super) c: Vec<f32>,
    /// Pooled conv outputs, `[pooled pixel][opad]`.
    pub(super) p: Vec<f32>,
}

/// A zero-padded input buffer for one geometry: its borders stay zero, so a
/// call only copies the interior.
pub(super) struct Padded {
    /// `(channels, height, width, kernel, padding)`.
    pub(super) key: (usize, usize, usize, usize, usize),
    pub(super) xp: Vec<f32>,
    /// Offset in `xp` of each tap (channel, kernel row, kernel column), in
    /// packing order.
    pub(super) koff: Vec<usize>,
}

impl Padded {
    /// The buffer for this geometry in `list`, made on first use.
    pub(super) fn find<'a>(list: &'a mut Vec<Padded>, g: &ConvGeom, k: usize, p: usize) -> &'a mut Padded {
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
    /// Per-thread scratch, reused by every call on the thread.
    pub(super) static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}
