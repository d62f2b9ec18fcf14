//! Instruction-set dispatch and how work is split over threads.

use std::fmt;

use pulp::{Simd, WithSimd};

use super::PARALLEL_MIN_MACS;

/// Tallest register tiles (pixels or batch rows): 12 rows of one vector, 8
/// of two (fewer where the register file is smaller).
pub(super) const MR_CAP_1: usize = 12;
pub(super) const MR_CAP_2: usize = 8;

/// Instruction set a kernel runs with; the tokens prove the CPU has it.
#[derive(Clone, Copy)]
pub(super) enum Isa {
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
    pub(super) fn available() -> Vec<Isa> {
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
    pub(super) fn for_outputs(n: usize) -> Isa {
        let all = Self::available();
        let simd: Vec<Isa> = all.iter().copied().filter(|i| i.lanes() > 1).collect();
        let pick = simd.iter().copied().min_by_key(|i| n.next_multiple_of(i.lanes()));
        pick.unwrap_or(Isa::Scalar)
    }

    pub(super) fn lanes(self) -> usize {
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

    pub(super) fn name(self) -> &'static str {
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
    pub(super) fn run<Op: WithSimd>(self, op: Op) -> Op::Output {
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

/// Rows (samples) per parallel task, or `None` to stay on this thread.
pub(super) fn chunk_rows(batch: usize, macs: usize) -> Option<usize> {
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
pub(super) fn segments(len: usize, mr_max: usize) -> impl Iterator<Item = (usize, usize)> {
    let n = len.div_ceil(mr_max);
    let (base, rem) = (len / n, len % n);
    (0..n).map(move |i| (i * base + i.min(rem), base + usize::from(i < rem)))
}

/// Tallest tile whose accumulators, `NV` weight vectors and a broadcast fit
/// the register file.
pub(super) fn mr_max<S: Simd>(nv: usize) -> usize {
    let cap = if nv == 1 { MR_CAP_1 } else { MR_CAP_2 };
    ((S::REGISTER_COUNT - nv - 2) / nv).min(cap)
}
