//! Runs a range of blocks on a batch, evaluating the exits in range and letting
//! each sample leave at the first exit whose policy fires.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::bundle::Bundle;
use super::error::ModelError;
use super::layer::forward_all;
use crate::policy::Policy;

/// What one exit said about one sample (the input of patience policies, and
/// what crosses the split as the edge's exit history).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub exit: usize,
    pub prediction: usize,
    /// Top-1 probability.
    pub confidence: f32,
}

/// The answer for a sample that left at an exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitResult {
    pub exit: usize,
    pub prediction: usize,
    pub confidence: f32,
    pub probabilities: Vec<f32>,
}

/// Result of [`Executor::run`] on a batch.
#[derive(Debug)]
pub struct RunOutput {
    /// Per input sample: its answer if it left at an exit in range.
    pub exited: Vec<Option<ExitResult>>,
    /// Input indices of the samples that did not exit, in order.
    pub remaining: Vec<usize>,
    /// Hidden states at `range.end` of the remaining samples, batched in the
    /// order of `remaining`; `None` when every sample exited.
    pub hidden: Option<Tensor>,
    /// Per input sample: what every exit evaluated so far said (including the
    /// histories passed in).
    pub histories: Vec<Vec<Observation>>,
}

impl RunOutput {
    /// Hidden state of remaining sample `i` (index into `remaining`) as a flat vector.
    pub fn hidden_row(&self, i: usize) -> Result<Vec<f32>, ModelError> {
        let hidden = self.hidden.as_ref().expect("remaining samples have hidden states");
        Ok(hidden.get(i)?.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// The multi-exit executor shared by edge and cloud. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Executor {
    bundle: Arc<Bundle>,
}

impl Executor {
    pub fn new(bundle: Arc<Bundle>) -> Self {
        Self { bundle }
    }

    pub fn bundle(&self) -> &Arc<Bundle> {
        &self.bundle
    }

    /// Makes a batch tensor from flat rows, checking the shape expected at block `k`.
    pub fn batch_at(&self, k: usize, rows: &[f32], batch: usize) -> Result<Tensor, ModelError> {
        let mut dims = vec![batch];
        dims.extend_from_slice(self.bundle.shape_at(k)?);
        let need: usize = dims.iter().product();
        if rows.len() != need {
            return Err(ModelError::InputShape { block: k, expected: dims[1..].to_vec(), got: vec![rows.len()] });
        }
        Ok(Tensor::from_slice(rows, dims, &Device::Cpu)?)
    }

    /// Runs blocks `range` on `input` (`[B, shape at range.start]`), evaluating
    /// every exit attached after a block in range. A sample leaves the batch at
    /// the first exit whose policy fires (the final exit always fires) and no
    /// more compute is spent on it. `histories` carries what earlier exits said
    /// (empty vectors when starting at block 0).
    pub fn run(
        &self,
        input: &Tensor,
        range: Range<usize>,
        policy: &Policy,
        mut histories: Vec<Vec<Observation>>,
    ) -> Result<RunOutput, ModelError> {
        let bundle = &*self.bundle;
        bundle.check_held(&range)?;
        let batch = input.dim(0)?;
        self.check_input(input, range.start)?;
        if histories.len() != batch {
            return Err(ModelError::HistoryLength { histories: histories.len(), batch });
        }
        let final_exit = bundle.final_exit();
        let mut exited: Vec<Option<ExitResult>> = vec![None; batch];
        let mut remaining: Vec<usize> = (0..batch).collect();
        let mut x = input.clone();
        for b in range {
            if remaining.is_empty() {
                break;
            }
            x = bundle.block(b).forward(&x)?;
            let Some(e) = bundle.exit_after(b) else { continue };
            let logits = forward_all(bundle.exit_head(e), &x)?;
            // Softmax on the host: the logits come to the CPU anyway for the
            // decisions, and one pass here is cheaper than another tensor op.
            let mut probs = logits.to_vec2::<f32>()?;
            probs.iter_mut().for_each(|row| softmax_in_place(row));
            let mut keep = Vec::with_capacity(remaining.len());
            for (row, p) in probs.into_iter().enumerate() {
                let sample = remaining[row];
                let (prediction, confidence) = argmax(&p);
                let history = &mut histories[sample];
                history.push(Observation { exit: e, prediction, confidence });
                if e == final_exit || policy.should_exit(e, &p, history) {
                    exited[sample] = Some(ExitResult { exit: e, prediction, confidence, probabilities: p });
                } else {
                    keep.push(row as u32);
                }
            }
            if keep.len() < remaining.len() {
                if !keep.is_empty() {
                    let index = Tensor::new(keep.as_slice(), x.device())?;
                    x = x.index_select(&index, 0)?;
                }
                remaining = keep.iter().map(|&r| remaining[r as usize]).collect();
            }
        }
        let hidden = (!remaining.is_empty()).then_some(x);
        Ok(RunOutput { exited, remaining, hidden, histories })
    }

    /// Runs blocks `range` without early exit and returns the logits of every
    /// exit in range (`(exit index, [B, classes])`), for evaluation and training.
    pub fn forward_exits(&self, input: &Tensor, range: Range<usize>) -> Result<Vec<(usize, Tensor)>, ModelError> {
        let bundle = &*self.bundle;
        bundle.check_held(&range)?;
        self.check_input(input, range.start)?;
        let mut out = Vec::new();
        let mut x = input.clone();
        for b in range {
            x = bundle.block(b).forward(&x)?;
            if let Some(e) = bundle.exit_after(b) {
                out.push((e, forward_all(bundle.exit_head(e), &x)?));
            }
        }
        Ok(out)
    }

    /// Runs blocks `range` only (no exits) and returns the hidden state.
    pub fn forward_blocks(&self, input: &Tensor, range: Range<usize>) -> Result<Tensor, ModelError> {
        let bundle = &*self.bundle;
        bundle.check_held(&range)?;
        self.check_input(input, range.start)?;
        let mut x = input.clone();
        for b in range {
            x = bundle.block(b).forward(&x)?;
        }
        Ok(x)
    }

    fn check_input(&self, input: &Tensor, k: usize) -> Result<(), ModelError> {
        let expected = self.bundle.shape_at(k)?;
        let dims = input.dims();
        if dims.len() != expected.len() + 1 || &dims[1..] != expected {
            return Err(ModelError::InputShape { block: k, expected: expected.to_vec(), got: dims.to_vec() });
        }
        Ok(())
    }
}

/// Numerically stable softmax of one row, in place.
pub fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Index and value of the largest element (first on ties).
pub fn argmax(p: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &v) in p.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best
}
