//! Speculative decoding: checking drafts against the full model.
//!
//! The edge drafts tokens with its exit head; the cloud computes the full
//! model's logits at every drafted position in one pass and keeps the
//! longest prefix the full model agrees with (Leviathan et al. 2023; Chen et
//! al. 2023). Greedy: a draft is accepted when it is the full model's argmax,
//! so the output is exactly greedy decoding with the full model. Sampled: a
//! draft `d ~ q` is accepted with probability `min(1, p(d)/q(d))`, and at the
//! first rejection the token is drawn from `max(0, p - q)` normalized; the
//! output is then distributed as sampling from the full model `p`, whatever
//! `q` is, provided the verifier knows `q` exactly. The edge therefore
//! drafts from a [`SparseDist`] (its exit's distribution cut to the top
//! entries and renormalized), which is small enough to send.

use super::model::top1;
use super::sample::{distribution, Truncation};

/// A distribution over a few tokens (the rest have probability 0).
#[derive(Debug, Clone, PartialEq)]
pub struct SparseDist {
    pub tokens: Vec<u32>,
    pub probs: Vec<f32>,
}

/// Entries the edge keeps of its draft distribution.
pub const DRAFT_TOP_K: usize = 32;

impl SparseDist {
    /// `softmax(logits / temperature)` cut to its `k` most likely tokens and
    /// renormalized.
    pub fn top_k(logits: &[f32], temperature: f32, k: usize) -> Self {
        Self::from_probs(&softmax(logits, temperature), k)
    }

    /// The distribution `p` cut to its `k` most likely tokens (and those
    /// with any mass) and renormalized.
    pub fn from_probs(p: &[f32], k: usize) -> Self {
        let k = k.min(p.iter().filter(|&&x| x > 0.0).count()).max(1);
        let mut order: Vec<u32> = (0..p.len() as u32).collect();
        let k = k.clamp(1, p.len());
        order.select_nth_unstable_by(k - 1, |&a, &b| p[b as usize].total_cmp(&p[a as usize]));
        order.truncate(k);
        order.sort_unstable_by(|&a, &b| p[b as usize].total_cmp(&p[a as usize]).then(a.cmp(&b)));
        let total: f32 = order.iter().map(|&t| p[t as usize]).sum();
        let probs = order.iter().map(|&t| p[t as usize] / total).collect();
        Self { tokens: order, probs }
    }

    /// The token `uniform` (in `[0, 1)`) selects by inverse CDF.
    pub fn sample(&self, uniform: f32) -> u32 {
        let mut acc = 0.0;
        for (&t, &q) in self.tokens.iter().zip(&self.probs) {
            acc += q;
            if uniform < acc {
                return t;
            }
        }
        // Rounding left the sum a hair under 1: the last token with mass.
        self.tokens.iter().zip(&self.probs).rev().find(|(_, &q)| q > 0.0).map_or(self.tokens[0], |(&t, _)| t)
    }

    /// The probability of `token` (0 outside the support).
    pub fn prob(&self, token: u32) -> f32 {
        self.tokens.iter().position(|&t| t == token).map_or(0.0, |i| self.probs[i])
    }

    /// Checks the distribution a peer sent: parallel lists, tokens in the
    /// vocabulary and distinct, probabilities non-negative summing to 1.
    pub fn check(&self, vocab: usize) -> Result<(), SparseDistError> {
        if self.tokens.is_empty() || self.tokens.len() != self.probs.len() {
            return Err(SparseDistError::Lengths { tokens: self.tokens.len(), probs: self.probs.len() });
        }
        if let Some(&token) = self.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(SparseDistError::TokenOutsideVocab { token, vocab });
        }
        let mut seen = self.tokens.clone();
        seen.sort_unstable();
        if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
            return Err(SparseDistError::Duplicate { token: w[0] });
        }
        if let Some((index, &value)) = self.probs.iter().enumerate().find(|(_, &q)| !(q.is_finite() && q >= 0.0)) {
            return Err(SparseDistError::Probability { index, value });
        }
        let total: f32 = self.probs.iter().sum();
        if (total - 1.0).abs() > 1e-3 {
            return Err(SparseDistError::Sum(total));
        }
        Ok(())
    }
}

/// Why a draft distribution a peer sent is not one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SparseDistError {
    #[error("the draft distribution needs as many probabilities as tokens, at least one (got {tokens} tokens, {probs} probabilities)")]
    Lengths { tokens: usize, probs: usize },
    #[error("draft distribution token {token} is outside the vocabulary of {vocab}")]
    TokenOutsideVocab { token: u32, vocab: usize },
    #[error("the draft distribution lists a token twice (token {token})")]
    Duplicate { token: u32 },
    #[error("draft probabilities must be finite and non-negative (entry {index} is {value})")]
    Probability { index: usize, value: f32 },
    #[error("draft probabilities sum to {0}, not 1")]
    Sum(f32),
}

/// One draft to check: the token, and for sampled verification the
/// distribution it was drawn from and the two uniform numbers.
#[derive(Debug, Clone)]
pub struct DraftToCheck {
    pub token: u32,
    pub q: Option<SparseDist>,
    pub accept_uniform: f32,
    pub residual_uniform: f32,
}

/// The outcome of checking a run of drafts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Leading drafts accepted.
    pub accepted: usize,
    /// The last draft when all were accepted, else the full model's token
    /// at the first rejected position.
    pub token: u32,
    /// The token's probability under the full model (temperature 1).
    pub probability: f32,
}

/// Checks `drafts[i]` against the full model's logits `rows[i]` (the
/// logits after the position whose input is draft `i - 1`) and stops at the
/// first rejection. `temperature` `None`: greedy (argmax).
///
/// With a truncation (`top_k`, `top_p`, `min_p`) the full model's
/// distribution `p` is the truncated one: accepted drafts and the residual
/// draw then follow sampling from the truncated full model exactly, whatever
/// the draft distribution `q` (a draft outside `p`'s support is rejected).
pub fn verify(rows: &[Vec<f32>], drafts: &[DraftToCheck], temperature: Option<f32>, trunc: &Truncation) -> Verdict {
    assert_eq!(rows.len(), drafts.len(), "one logits row per draft");
    for (i, (row, d)) in rows.iter().zip(drafts).enumerate() {
        match (temperature, &d.q) {
            (Some(t), Some(q)) if t > 0.0 => {
                let p = distribution(row, t, trunc);
                let (pd, qd) = (p[d.token as usize], q.prob(d.token));
                if qd > 0.0 && d.accept_uniform < pd / qd {
                    continue;
                }
                let token = residual(&p, q, d.residual_uniform);
                return Verdict { accepted: i, token, probability: prob_t1(row, token) };
            }
            _ => {
                let (best, p) = top1(row);
                if best != d.token {
                    return Verdict { accepted: i, token: best, probability: p };
                }
            }
        }
    }
    let last = drafts.last().expect("at least one draft");
    let row = rows.last().expect("one row per draft");
    Verdict { accepted: drafts.len(), token: last.token, probability: prob_t1(row, last.token) }
}

/// A draw from `max(0, p - q)` normalized (the residual after a rejection).
fn residual(p: &[f32], q: &SparseDist, uniform: f32) -> u32 {
    let mut r = p.to_vec();
    for (&t, &qt) in q.tokens.iter().zip(&q.probs) {
        r[t as usize] = (r[t as usize] - qt).max(0.0);
    }
    let total: f32 = r.iter().sum();
    if total <= 0.0 {
        // p == q: a rejection cannot happen then except through rounding;
        // draw from p itself.
        return draw(p, uniform);
    }
    let target = uniform.clamp(0.0, 1.0) * total;
    let mut acc = 0.0;
    for (i, &w) in r.iter().enumerate() {
        acc += w;
        if acc > target {
            return i as u32;
        }
    }
    r.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
}

pub(crate) fn draw(p: &[f32], uniform: f32) -> u32 {
    let mut acc = 0.0;
    for (i, &w) in p.iter().enumerate() {
        acc += w;
        if acc > uniform {
            return i as u32;
        }
    }
    (p.len() - 1) as u32
}

/// `softmax(logits / temperature)`.
pub fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f32> = logits.iter().map(|&v| ((v - max) / temperature).exp()).collect();
    let total: f32 = w.iter().sum();
    w.into_iter().map(|v| v / total).collect()
}

pub(crate) fn prob_t1(logits: &[f32], token: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = logits.iter().map(|&v| (v - max).exp()).sum();
    (logits[token as usize] - max).exp() / z
}

/// The uniform numbers of one position: `[draft, accept, residual]`. Drawn
/// from the seed and the position alone, so a seeded run gives the same
/// text however drafts were grouped, pipelined or thrown away.
pub fn position_uniforms(seed: u64, position: usize) -> [f32; 3] {
    let mut rng = offramp_base::rng::SplitMix64::new(
        seed ^ (position as u64).wrapping_mul(0xD1B5_4A32_D192_ED03).rotate_left(17),
    );
    [rng.next_f32(), rng.next_f32(), rng.next_f32()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use offramp_base::rng::SplitMix64;

    fn logits(p: &[f32]) -> Vec<f32> {
        p.iter().map(|v| v.ln()).collect()
    }

    #[test]
    fn greedy_accepts_the_argmax_prefix() {
        let off = Truncation::default();
        let rows = vec![logits(&[0.1, 0.7, 0.2]), logits(&[0.6, 0.3, 0.1]), logits(&[0.2, 0.2, 0.6])];
        let d = |t| DraftToCheck { token: t, q: None, accept_uniform: 0.0, residual_uniform: 0.0 };
        assert_eq!(verify(&rows, &[d(1), d(0), d(2)], None, &off).accepted, 3);
        assert_eq!(verify(&rows, &[d(1), d(0), d(2)], None, &off).token, 2);
        let v = verify(&rows, &[d(1), d(2), d(2)], None, &off);
        assert_eq!((v.accepted, v.token), (1, 0));
        assert!((v.probability - 0.6).abs() < 1e-5);
        let v = verify(&rows, &[d(0), d(0), d(2)], None, &off);
        assert_eq!((v.accepted, v.token), (0, 1));
    }

    #[test]
    fn a_bad_draft_distribution_is_refused_by_name() {
        let d = |tokens: Vec<u32>, probs: Vec<f32>| SparseDist { tokens, probs }.check(4);
        assert_eq!(d(vec![0, 1], vec![1.0]), Err(SparseDistError::Lengths { tokens: 2, probs: 1 }));
        assert_eq!(d(vec![], vec![]), Err(SparseDistError::Lengths { tokens: 0, probs: 0 }));
        assert_eq!(d(vec![0, 4], vec![0.5, 0.5]), Err(SparseDistError::TokenOutsideVocab { token: 4, vocab: 4 }));
        assert_eq!(d(vec![2, 2], vec![0.5, 0.5]), Err(SparseDistError::Duplicate { token: 2 }));
        assert_eq!(d(vec![0, 1], vec![1.5, -0.5]), Err(SparseDistError::Probability { index: 1, value: -0.5 }));
        assert_eq!(d(vec![0, 1], vec![0.5, 0.4]), Err(SparseDistError::Sum(0.9)));
        assert_eq!(d(vec![0, 1], vec![0.5, 0.5]), Ok(()));
        let e = d(vec![0, 1], vec![1.0]).unwrap_err().to_string();
        assert!(e.contains("as many probabilities as tokens"), "{e}");
    }

    /// The law of speculative sampling: whatever q, one verified token is
    /// distributed as p. Chi-square over 4 tokens, 60k trials; the 0.999
    /// quantile of chi-square with 3 degrees of freedom is 16.3.
    #[test]
    fn sampled_verification_gives_the_full_models_distribution() {
        let p = [0.5f32, 0.3, 0.15, 0.05];
        let (counts, accepted) = sample_verified(&p, &Truncation::default(), 60_000);
        chi2_below(&counts, &p, 60_000, 16.3);
        // Acceptance rate is sum_x min(p, q) = 0.05 + 0.15 + 0.1 = 0.3.
        let rate = accepted as f64 / 60_000.0;
        assert!((rate - 0.3).abs() < 0.01, "acceptance {rate}");
    }

    /// The same law for the truncated full model: top-k 3 keeps
    /// [0.5, 0.3, 0.15] renormalized; top-p 0.8 keeps [0.5, 0.3]; min-p 0.5
    /// keeps [0.5, 0.3] (>= 0.25). Token 3 (q's favourite) never comes out.
    #[test]
    fn sampled_verification_follows_the_truncated_distribution() {
        let p = [0.5f32, 0.3, 0.15, 0.05];
        for (t, want, quantile) in [
            (Truncation { top_k: 3, ..Default::default() }, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0], 13.8),
            (Truncation { top_p: 0.8, ..Default::default() }, [0.625, 0.375, 0.0, 0.0], 10.8),
            (Truncation { min_p: 0.5, ..Default::default() }, [0.625, 0.375, 0.0, 0.0], 10.8),
        ] {
            let (counts, _) = sample_verified(&p, &t, 40_000);
            for (i, &w) in want.iter().enumerate() {
                if w == 0.0 {
                    assert_eq!(counts[i], 0, "{t:?}: token {i} is truncated away: {counts:?}");
                }
            }
            chi2_below(&counts, &want, 40_000, quantile);
        }
    }

    /// Verdicts of `trials` single-draft verifications against the model
    /// `p` (truncated by `t`), drafts from a q that favours p's least likely
    /// token: the tokens' counts and the drafts accepted.
    fn sample_verified(p: &[f32; 4], t: &Truncation, trials: usize) -> ([usize; 4], usize) {
        let row = logits(p);
        let q = SparseDist { tokens: vec![3, 2, 0], probs: vec![0.6, 0.3, 0.1] };
        q.check(4).unwrap();
        let mut rng = SplitMix64::new(7);
        let mut counts = [0usize; 4];
        let mut accepted = 0;
        for _ in 0..trials {
            let d = DraftToCheck {
                token: q.sample(rng.next_f32()),
                q: Some(q.clone()),
                accept_uniform: rng.next_f32(),
                residual_uniform: rng.next_f32(),
            };
            let v = verify(std::slice::from_ref(&row), &[d], Some(1.0), t);
            accepted += v.accepted;
            counts[v.token as usize] += 1;
        }
        (counts, accepted)
    }

    /// Chi-square of `counts` against `p` (entries with p = 0 left out) is
    /// below `quantile` (the 0.999 quantile for the degrees of freedom).
    fn chi2_below(counts: &[usize; 4], p: &[f32], trials: usize, quantile: f64) {
        let chi2: f64 = counts
            .iter()
            .zip(p)
            .filter(|(_, &p)| p > 0.0)
            .map(|(&c, &p)| {
                let e = p as f64 * trials as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        assert!(chi2 < quantile, "counts {counts:?} vs p {p:?}: chi2 {chi2}");
    }

    #[test]
    fn top_k_keeps_the_most_likely_and_renormalizes() {
        let q = SparseDist::top_k(&logits(&[0.1, 0.4, 0.3, 0.2]), 1.0, 2);
        assert_eq!(q.tokens, vec![1, 2]);
        assert!((q.probs[0] - 4.0 / 7.0).abs() < 1e-5);
        q.check(4).unwrap();
        assert_eq!(q.sample(0.0), 1);
        assert_eq!(q.sample(0.99), 2);
        assert!(SparseDist { tokens: vec![1, 1], probs: vec![0.5, 0.5] }.check(4).is_err());
        assert!(SparseDist { tokens: vec![9], probs: vec![1.0] }.check(4).is_err());
        assert!(SparseDist { tokens: vec![1], probs: vec![0.5] }.check(4).is_err());
    }

    #[test]
    fn uniforms_depend_on_seed_and_position_only() {
        assert_eq!(position_uniforms(3, 10), position_uniforms(3, 10));
        assert_ne!(position_uniforms(3, 10), position_uniforms(3, 11));
        assert_ne!(position_uniforms(3, 10), position_uniforms(4, 10));
        assert!(position_uniforms(1, 5).iter().all(|u| (0.0..1.0).contains(u)));
    }
}
