//! Choosing the next token from logits, the same way on either side.
//!
//! Sampling takes its random number from the caller: the edge draws one
//! uniform number per position from its seeded generator and sends it with
//! the step, so a sampled token is the same whichever tier (or replica)
//! computed the logits, and a run with a fixed seed repeats exactly.

use serde::{Deserialize, Serialize};

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
