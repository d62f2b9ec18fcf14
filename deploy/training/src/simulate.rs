//! Evaluation helpers shared by the operator's tool and experiments: every
//! exit's probabilities for a dataset (one forward pass, cached), a simulation
//! of an exit policy on those cached probabilities, and the real early-exit
//! path over a dataset.
//!
//! The simulation makes the same decisions as [`Executor::run`]: exits are
//! evaluated in order, a sample leaves at the first exit whose rule fires on
//! its probabilities (and history), and the final exit always answers.

use offramp_common::data::Dataset;
use offramp_common::model::{argmax, Executor, ExitResult, ModelError, Observation};
use offramp_common::policy::{margin, max_prob, normalized_entropy, Policy, Rule};

/// Every exit's class probabilities for every sample of a dataset.
#[derive(Debug, Clone)]
pub struct ExitProbabilities {
    n: usize,
    num_classes: usize,
    /// Per exit: `n * num_classes` probabilities, sample-major.
    probs: Vec<Vec<f32>>,
}

impl ExitProbabilities {
    /// Builds from per-exit flat probability rows (`n * num_classes` each).
    pub fn from_rows(probs: Vec<Vec<f32>>, num_classes: usize) -> Self {
        let n = probs.first().map_or(0, |p| p.len() / num_classes.max(1));
        assert!(probs.iter().all(|p| p.len() == n * num_classes), "every exit needs n * classes probabilities");
        Self { n, num_classes, probs }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn num_exits(&self) -> usize {
        self.probs.len()
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Probabilities of sample `i` at exit `exit`.
    pub fn get(&self, exit: usize, i: usize) -> &[f32] {
        &self.probs[exit][i * self.num_classes..(i + 1) * self.num_classes]
    }

    /// Predicted class of sample `i` at exit `exit`.
    pub fn prediction(&self, exit: usize, i: usize) -> usize {
        argmax(self.get(exit, i)).0
    }

    /// Accuracy of each exit when every sample is forced through it.
    pub fn exit_accuracy(&self, labels: &[u8]) -> Vec<f64> {
        (0..self.num_exits())
            .map(|e| {
                let correct = (0..self.n).filter(|&i| self.prediction(e, i) == labels[i] as usize).count();
                correct as f64 / self.n.max(1) as f64
            })
            .collect()
    }
}

/// Runs the whole model once without early exit over `data` in batches of
/// `batch_size` and keeps every exit's probabilities (softmax, as
/// [`Executor::run`] computes them).
pub fn exit_probabilities(exec: &Executor, data: &Dataset, batch_size: usize) -> Result<ExitProbabilities, ModelError> {
    let bundle = exec.bundle();
    let n = data.len();
    let mut probs = vec![Vec::with_capacity(n * bundle.num_classes()); bundle.num_exits()];
    for start in (0..n).step_by(batch_size.max(1)) {
        let end = (start + batch_size.max(1)).min(n);
        let x = exec.batch_of(0, &data.rows(start..end))?;
        for (e, logits) in exec.forward_exits(x, 0..bundle.num_blocks())? {
            let p = candle_nn::ops::softmax_last_dim(&logits)?;
            probs[e].extend(p.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    Ok(ExitProbabilities { n, num_classes: bundle.num_classes(), probs })
}

/// Runs the real early-exit path ([`Executor::run`] over every block) on
/// `data` in batches of `batch_size`: the answer for every sample.
pub fn run_policy(
    exec: &Executor,
    data: &Dataset,
    policy: &Policy,
    batch_size: usize,
) -> Result<Vec<ExitResult>, ModelError> {
    let bundle = exec.bundle();
    let n = data.len();
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(batch_size.max(1)) {
        let end = (start + batch_size.max(1)).min(n);
        let x = exec.batch_of(0, &data.rows(start..end))?;
        let run = exec.run(x, 0..bundle.num_blocks(), policy, vec![Vec::new(); end - start])?;
        out.extend(run.exited.into_iter().map(|r| r.expect("the final exit always answers")));
    }
    Ok(out)
}

/// The exit each sample takes under `policy`, decided on cached
/// probabilities exactly as [`Executor::run`] decides (histories included, so
/// patience rules work too).
pub fn simulate(policy: &Policy, probs: &ExitProbabilities) -> Vec<usize> {
    let last = probs.num_exits().saturating_sub(1);
    (0..probs.len())
        .map(|i| {
            let mut history = Vec::with_capacity(probs.num_exits());
            for e in 0..probs.num_exits() {
                let p = probs.get(e, i);
                let (prediction, confidence) = argmax(p);
                history.push(Observation { exit: e, prediction, confidence });
                if e == last || policy.should_exit(e, p, &history) {
                    return e;
                }
            }
            last
        })
        .collect()
}

/// The threshold rules a sweep or a calibration searches over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfidenceRule {
    /// Top-1 probability ≥ threshold.
    #[default]
    MaxProb,
    /// Normalised entropy ≤ threshold.
    Entropy,
    /// Top-1 minus top-2 probability ≥ threshold.
    Margin,
}

impl ConfidenceRule {
    /// The policy rule with this threshold.
    pub fn rule(self, threshold: f32) -> Rule {
        match self {
            ConfidenceRule::MaxProb => Rule::MaxProb { threshold },
            ConfidenceRule::Entropy => Rule::Entropy { threshold },
            ConfidenceRule::Margin => Rule::Margin { threshold },
        }
    }

    /// Name as written on the command line and in policy files.
    pub fn name(self) -> &'static str {
        match self {
            ConfidenceRule::MaxProb => "max-prob",
            ConfidenceRule::Entropy => "entropy",
            ConfidenceRule::Margin => "margin",
        }
    }

    /// The statistic the rule compares with its threshold, computed exactly
    /// as [`Rule::fires`] computes it.
    pub fn score(self, p: &[f32]) -> f32 {
        match self {
            ConfidenceRule::MaxProb => max_prob(p),
            ConfidenceRule::Entropy => normalized_entropy(p),
            ConfidenceRule::Margin => margin(p),
        }
    }

    /// Whether the rule with `threshold` fires on a sample whose statistic is
    /// `score` (equal to `self.rule(threshold).fires(p, _)`).
    pub fn fires(self, score: f32, threshold: f32) -> bool {
        match self {
            ConfidenceRule::MaxProb | ConfidenceRule::Margin => score >= threshold,
            ConfidenceRule::Entropy => score <= threshold,
        }
    }

    /// Whether larger statistics mean more confidence.
    pub fn higher_is_confident(self) -> bool {
        !matches!(self, ConfidenceRule::Entropy)
    }
}

/// Per exit and sample: the rule's statistic (`scores[exit][sample]`).
pub fn scores(rule: ConfidenceRule, probs: &ExitProbabilities) -> Vec<Vec<f32>> {
    (0..probs.num_exits()).map(|e| (0..probs.len()).map(|i| rule.score(probs.get(e, i))).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use offramp_common::rng::SplitMix64;

    fn random_dist(rng: &mut SplitMix64, k: usize, sharp: f32) -> Vec<f32> {
        let logits: Vec<f32> = (0..k).map(|_| rng.next_f32() * sharp).collect();
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = logits.iter().map(|l| (l - m).exp()).collect();
        let s: f32 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }

    #[test]
    fn scores_fire_like_rules() {
        let mut rng = SplitMix64::new(7);
        for rule in [ConfidenceRule::MaxProb, ConfidenceRule::Entropy, ConfidenceRule::Margin] {
            for _ in 0..200 {
                let p = random_dist(&mut rng, 10, 8.0);
                let s = rule.score(&p);
                // At the statistic itself, just around it, and at random thresholds.
                for t in [s, s + 1e-4, s - 1e-4, rng.next_f32()] {
                    let t = t.clamp(0.0, 1.0);
                    assert_eq!(rule.fires(s, t), rule.rule(t).fires(&p, &[]), "{rule:?} p={p:?} t={t}");
                }
            }
        }
    }

    #[test]
    fn simulate_takes_first_firing_exit() {
        // 3 samples, 3 exits, 2 classes.
        let probs = ExitProbabilities::from_rows(
            vec![vec![0.95, 0.05, 0.6, 0.4, 0.5, 0.5], vec![0.5, 0.5, 0.9, 0.1, 0.7, 0.3], vec![0.5; 6]],
            2,
        );
        let policy = Policy::uniform(Rule::MaxProb { threshold: 0.9 }, 3);
        assert_eq!(simulate(&policy, &probs), vec![0, 1, 2]);
        assert_eq!(simulate(&Policy::never(3), &probs), vec![2, 2, 2]);
        assert_eq!(probs.exit_accuracy(&[0, 0, 1]), vec![2.0 / 3.0; 3]);
    }
}
