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

impl ExitResult {
    /// Whether the confidence and every probability are finite. A finite
    /// input too large for the weights overflows to infinity inside the
    /// network, and the exit then says NaN; such an answer must never leave
    /// the executor's caller (see [`Executor::locate_overflow`]).
    pub fn is_finite(&self) -> bool {
        self.confidence.is_finite() && self.probabilities.iter().all(|p| p.is_finite())
    }
}

/// Where a sample's values first stopped being finite, as
/// [`Executor::locate_overflow`] finds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Overflow {
    /// The input itself was not finite.
    #[error("the input holds a non-finite value at element {index}")]
    Input { index: usize },
    /// Block `block` was the first whose output held a non-finite value.
    #[error(
        "the input overflowed the network at block {block} ({name}): the block's output holds non-finite values \
         (the input is finite but too large for the weights)"
    )]
    Block { block: usize, name: String },
    /// Every block's output was finite, but exit `exit`'s logits were not.
    #[error(
        "the input overflowed the network at exit {exit} ({name}, after block {after_block}): the exit's logits \
         hold non-finite values (the input is finite but too large for the weights)"
    )]
    Exit { exit: usize, name: String, after_block: usize },
    /// Run alone, the sample stayed finite (the batch's kernels may sum in
    /// another order); only the range is known.
    #[error("the input overflowed the network within blocks {start}..{end}: an exit's answer is not finite")]
    Blocks { start: usize, end: usize },
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

    /// Finds where one sample's values first stopped being finite: runs
    /// blocks `range` on `row` (a flat input at `range.start`) alone, checking
    /// every block's output and every exit's logits. For a sample whose
    /// answer was not finite ([`ExitResult::is_finite`]), or whose hidden
    /// state was not, so that the error can name the block; only then, so a
    /// healthy request pays nothing for it.
    pub fn locate_overflow(&self, row: &[f32], range: Range<usize>) -> Result<Overflow, ModelError> {
        if let Some(index) = row.iter().position(|v| !v.is_finite()) {
            return Ok(Overflow::Input { index });
        }
        let bundle = &*self.bundle;
        bundle.check_held(&range)?;
        let mut x = self.batch_at(range.start, row, 1)?;
        let manifest = bundle.manifest();
        for b in range.clone() {
            x = bundle.block(b).forward(&x)?;
            if !all_finite(&x)? {
                return Ok(Overflow::Block { block: b, name: manifest.blocks[b].name.clone() });
            }
            if let Some(e) = bundle.exit_after(b) {
                if !all_finite(&forward_all(bundle.exit_head(e), &x)?)? {
                    return Ok(Overflow::Exit { exit: e, name: manifest.exits[e].name.clone(), after_block: b });
                }
            }
        }
        Ok(Overflow::Blocks { start: range.start, end: range.end })
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

/// Whether every value of `x` is finite.
fn all_finite(x: &Tensor) -> Result<bool, ModelError> {
    Ok(x.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| v.is_finite()))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::arch::{init_weights, Arch};
    use crate::policy::Rule;

    fn tiny(edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>)) -> Executor {
        let m = Arch::Tiny.manifest("tiny");
        let mut w = init_weights(&m, 3).unwrap();
        edit(&mut w);
        Executor::new(Arc::new(Bundle::from_parts(m, w).unwrap()))
    }

    /// Runs blocks 3..4 (fc1 and the final exit) on one hidden state of 392 values.
    fn answer(exec: &Executor, row: &[f32]) -> ExitResult {
        let x = exec.batch_at(3, row, 1).unwrap();
        let out = exec.run(&x, 3..4, &Policy::never(3), vec![vec![]]).unwrap();
        out.exited[0].clone().unwrap()
    }

    #[test]
    fn extreme_but_finite_inputs_are_found_where_they_overflow() {
        let exec = tiny(|_| {});
        // Large values that stay finite through the network: a finite answer.
        let r = answer(&exec, &[1e30; 392]);
        assert!(r.is_finite(), "{r:?}");
        assert_eq!(exec.locate_overflow(&[1e30; 392], 3..4).unwrap(), Overflow::Blocks { start: 3, end: 4 });
        // f32::MAX overflows inside fc1 (block 3): the answer is not finite
        // and the block is named.
        let big = vec![f32::MAX; 392];
        let r = answer(&exec, &big);
        assert!(!r.is_finite(), "{r:?}");
        let o = exec.locate_overflow(&big, 3..4).unwrap();
        assert_eq!(o, Overflow::Block { block: 3, name: "fc1".into() });
        assert!(o.to_string().contains("overflowed the network at block 3 (fc1)"), "{o}");
        // From the start of the network: block 0 (a conv) overflows first.
        let o = exec.locate_overflow(&vec![f32::MAX; 784], 0..4).unwrap();
        assert_eq!(o, Overflow::Block { block: 0, name: "conv1".into() });
        // A non-finite input is named as such.
        let mut nan = vec![0.5; 392];
        nan[7] = f32::NAN;
        assert_eq!(exec.locate_overflow(&nan, 3..4).unwrap(), Overflow::Input { index: 7 });
        // Out-of-range blocks and a wrong length are errors, not answers.
        assert!(exec.locate_overflow(&[0.0; 392], 3..9).is_err());
        assert!(exec.locate_overflow(&[0.0; 10], 3..4).is_err());
    }

    #[test]
    fn an_exit_head_that_overflows_is_named() {
        // Exit 1 ("middle", after block 2) with huge weights: blocks stay
        // finite, the exit's logits do not.
        let exec = tiny(|w| {
            let shape = w["exits.1.0.weight"].dims().to_vec();
            w.insert("exits.1.0.weight".into(), Tensor::full(1e30f32, shape, &Device::Cpu).unwrap());
        });
        let row = vec![1e10; 8 * 7 * 7];
        let x = exec.batch_at(2, &row, 1).unwrap();
        let out = exec.run(&x, 2..4, &Policy::uniform(Rule::Always, 3), vec![vec![]]).unwrap();
        let r = out.exited[0].clone().unwrap();
        assert_eq!(r.exit, 1);
        assert!(!r.is_finite(), "{r:?}");
        let o = exec.locate_overflow(&row, 2..4).unwrap();
        assert_eq!(o, Overflow::Exit { exit: 1, name: "middle".into(), after_block: 2 });
        assert!(o.to_string().contains("at exit 1 (middle, after block 2)"), "{o}");
    }
}
