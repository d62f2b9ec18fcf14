//! Choosing the next token from logits, the same way on either side.
//!
//! Sampling takes its random number from the caller: the edge draws one
//! uniform number per position from its seeded generator and sends it with
//! the step, so a sampled token is the same whichever tier (or replica)
//! computed the logits, and a run with a fixed seed repeats exactly.

use serde::{Deserialize, Serialize};

/// Truncation of the sampling distribution (OpenAI's and llama.cpp's
/// `top_k`, `top_p`, `min_p`), applied to `softmax(logits / temperature)`
/// in that order, the survivors renormalized. Each is off at its default
/// (0, 0 or 1, 0), which is also what an older peer sends. The most likely
/// token always survives, so greedy decoding is unchanged by any of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Truncation {
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: u32,
    /// Keep the fewest most likely tokens whose probabilities sum to at
    /// least `top_p` (0 or 1: all).
    pub top_p: f32,
    /// Keep the tokens at least `min_p` times as likely as the most likely
    /// one (0: all).
    pub min_p: f32,
}

/// A truncation setting out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TruncationError {
    #[error("top_p must be in [0, 1] (got {0})")]
    TopP(f32),
    #[error("min_p must be in [0, 1] (got {0})")]
    MinP(f32),
}

impl Truncation {
    /// Whether it keeps every token.
    pub fn is_off(&self) -> bool {
        self.top_k == 0 && (self.top_p <= 0.0 || self.top_p >= 1.0) && self.min_p <= 0.0
    }

    pub fn check(&self) -> Result<(), TruncationError> {
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(TruncationError::TopP(self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(TruncationError::MinP(self.min_p));
        }
        Ok(())
    }

    /// Zeroes the entries of the distribution `p` that do not survive and
    /// renormalizes the rest. Ties are broken by token id, so both sides of
    /// a split keep the same set.
    pub fn apply(&self, p: &mut [f32]) {
        if self.is_off() || p.is_empty() {
            return;
        }
        let mut order: Vec<u32> = (0..p.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| p[b as usize].total_cmp(&p[a as usize]).then(a.cmp(&b)));
        let mut keep = order.len();
        if self.top_k > 0 {
            keep = keep.min(self.top_k as usize);
        }
        if self.top_p > 0.0 && self.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, &t) in order[..keep].iter().enumerate() {
                acc += p[t as usize];
                if acc >= self.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if self.min_p > 0.0 {
            let floor = self.min_p * p[order[0] as usize];
            keep = order[..keep].iter().take_while(|&&t| p[t as usize] >= floor).count().max(1);
        }
        for &t in &order[keep..] {
            p[t as usize] = 0.0;
        }
        let total: f32 = order[..keep].iter().map(|&t| p[t as usize]).sum();
        for &t in &order[..keep] {
            p[t as usize] /= total;
        }
    }
}

/// `softmax(logits / temperature)` truncated by `trunc` and renormalized:
/// the distribution a sampled token is drawn from, on either side.
pub fn distribution(logits: &[f32], temperature: f32, trunc: &Truncation) -> Vec<f32> {
    let mut p = super::speculative::softmax(logits, temperature);
    trunc.apply(&mut p);
    p
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// A token drawn from `softmax(logits / temperature)`.
    Temperature(f32),
}

impl Sampling {
    pub fn from_temperature(t: f32) -> Self {
        if t > 0.0 {
            Self::Temperature(t)
        } else {
            Self::Greedy
        }
    }

    /// [`Self::choose`] from the distribution truncated by `trunc` (greedy
    /// is unchanged by any truncation).
    pub fn choose_within(self, logits: &[f32], uniform: f32, trunc: &Truncation) -> (u32, f32) {
        match self {
            Self::Temperature(t) if !trunc.is_off() => {
                let p = distribution(logits, t, trunc);
                let token = super::speculative::draw(&p, uniform.clamp(0.0, 1.0));
                (token, super::speculative::prob_t1(logits, token))
            }
            _ => self.choose(logits, uniform),
        }
    }

    /// The chosen token and its probability under the full distribution
    /// (temperature 1), given a uniform number in `[0, 1)` (unused when
    /// greedy).
    pub fn choose(self, logits: &[f32], uniform: f32) -> (u32, f32) {
        let (best, p_best) = super::model::top1(logits);
        match self {
            Self::Greedy => (best, p_best),
            Self::Temperature(t) => {
                let max = logits[best as usize];
                let weights: Vec<f32> = logits.iter().map(|&v| ((v - max) / t).exp()).collect();
                let total: f32 = weights.iter().sum();
                let target = uniform.clamp(0.0, 1.0) * total;
                let mut acc = 0.0;
                let mut chosen = best as usize;
                for (i, w) in weights.iter().enumerate() {
                    acc += w;
                    if acc > target {
                        chosen = i;
                        break;
                    }
                }
                let z: f32 = logits.iter().map(|&v| (v - max).exp()).sum();
                (chosen as u32, (logits[chosen] - max).exp() / z)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_what_each_rule_says() {
        let p = [0.05f32, 0.4, 0.3, 0.15, 0.1];
        let kept = |t: Truncation| {
            let mut q = p;
            t.apply(&mut q);
            assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            (0..5).filter(|&i| q[i] > 0.0).collect::<Vec<_>>()
        };
        assert_eq!(kept(Truncation::default()), vec![0, 1, 2, 3, 4]);
        assert_eq!(kept(Truncation { top_k: 2, ..Default::default() }), vec![1, 2]);
        assert_eq!(kept(Truncation { top_p: 0.7, ..Default::default() }), vec![1, 2], "0.4 + 0.3 reach 0.7");
        assert_eq!(kept(Truncation { top_p: 0.71, ..Default::default() }), vec![1, 2, 3]);
        assert_eq!(kept(Truncation { min_p: 0.3, ..Default::default() }), vec![1, 2, 3], "p >= 0.12");
        assert_eq!(kept(Truncation { top_k: 3, top_p: 0.9, min_p: 0.5 }), vec![1, 2]);
        assert_eq!(kept(Truncation { top_p: 1e-6, ..Default::default() }), vec![1], "the most likely survives");
        let mut q = p;
        Truncation { top_k: 2, ..Default::default() }.apply(&mut q);
        assert!((q[1] - 0.4 / 0.7).abs() < 1e-6);
        assert!(Truncation { top_p: 1.5, ..Default::default() }.check().is_err());
        assert!(Truncation { min_p: -0.1, ..Default::default() }.check().is_err());
    }

    #[test]
    fn sampling_within_a_truncation_never_leaves_it_and_greedy_ignores_it() {
        let logits = [0.0f32, 3.0, 2.5, 1.0, -1.0];
        let t = Truncation { top_k: 2, ..Default::default() };
        for i in 0..100 {
            let (tok, _) = Sampling::Temperature(1.5).choose_within(&logits, i as f32 / 100.0, &t);
            assert!(tok == 1 || tok == 2, "{tok}");
        }
        assert_eq!(Sampling::Greedy.choose_within(&logits, 0.3, &t), Sampling::Greedy.choose(&logits, 0.3));
        let off = Truncation::default();
        assert_eq!(
            Sampling::Temperature(0.7).choose_within(&logits, 0.42, &off),
            Sampling::Temperature(0.7).choose(&logits, 0.42)
        );
    }
}
