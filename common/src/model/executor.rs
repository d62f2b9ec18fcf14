//! Runs a range of blocks on a batch, evaluating the exits in range and letting
//! each sample leave at the first exit whose policy fires.

use std::ops::Range;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::bundle::Bundle;
use super::encoder::SeqMask;
use super::error::ModelError;
use super::layer::forward_all_masked;
use crate::policy::Policy;

/// A batch entering a block: the tensor (`[B, shape at that block]`) and,
/// for token sequences padded to a common length, which tokens are real.
#[derive(Debug, Clone)]
pub struct Batch {
    pub x: Tensor,
    /// `None`: every token of every sample is real (or not a sequence).
    pub mask: Option<SeqMask>,
}

impl From<Tensor> for Batch {
    fn from(x: Tensor) -> Self {
        Self { x, mask: None }
    }
}

impl From<&Tensor> for Batch {
    fn from(x: &Tensor) -> Self {
        Self { x: x.clone(), mask: None }
    }
}

impl From<&Batch> for Batch {
    fn from(b: &Batch) -> Self {
        b.clone()
    }
}

impl Batch {
    /// Real tokens of sample `i` (the padded length when unmasked); `None`
    /// for inputs that are not sequences.
    fn length(&self, i: usize, sequence: bool) -> Option<usize> {
        sequence.then(|| self.mask.as_ref().map_or(self.x.dims().get(1).copied().unwrap_or(0), |m| m.lengths()[i]))
    }

    /// Keeps samples `rows` of the batch, in that order.
    fn select(&self, rows: &[u32]) -> Result<Self, ModelError> {
        let index = Tensor::new(rows, self.x.device())?;
        let mask = match &self.mask {
            Some(m) => {
                let rows: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
                Some(m.select(&rows, self.x.device())?)
            }
            None => None,
        };
        Ok(Self { x: self.x.index_select(&index, 0)?, mask })
    }
}

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
    /// The answer of a sample whose state stopped being finite inside the
    /// network: NaN confidence, no probabilities ([`ExitResult::is_finite`]
    /// is false).
    pub fn overflowed(exit: usize) -> Self {
        Self { exit, prediction: 0, confidence: f32::NAN, probabilities: vec![] }
    }

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
    /// order of `remaining`; `None` when every sample exited. For token
    /// sequences the batch is padded; `hidden_lengths` says how far each
    /// sample's real tokens go.
    pub hidden: Option<Tensor>,
    /// For token sequences: the real tokens of each remaining sample.
    pub hidden_lengths: Option<Vec<usize>>,
    /// Per input sample: what every exit evaluated so far said (including the
    /// histories passed in).
    pub histories: Vec<Vec<Observation>>,
}

impl RunOutput {
    /// Hidden state of remaining sample `i` (index into `remaining`) as a
    /// flat vector with its shape: for a token sequence, its real tokens
    /// only (`[tokens, hidden]`), which is what crosses a split.
    pub fn hidden_row(&self, i: usize) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let hidden = self.hidden.as_ref().expect("remaining samples have hidden states");
        let mut row = hidden.get(i)?;
        if let Some(len) = self.hidden_lengths.as_ref().map(|l| l[i]) {
            row = row.narrow(0, 0, len)?;
        }
        let shape = row.dims().to_vec();
        Ok((row.flatten_all()?.to_vec1::<f32>()?, shape))
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

    /// Makes a batch tensor from flat rows, checking the shape expected at
    /// block `k` (every sample of full length; see [`Executor::batch_of`]
    /// for token sequences of different lengths).
    pub fn batch_at(&self, k: usize, rows: &[f32], batch: usize) -> Result<Tensor, ModelError> {
        let mut dims = vec![batch];
        dims.extend_from_slice(self.bundle.shape_at(k)?);
        let need: usize = dims.iter().product();
        if rows.len() != need {
            return Err(ModelError::InputShape { block: k, expected: dims[1..].to_vec(), got: vec![rows.len()] });
        }
        let x = Tensor::from_slice(rows, dims, &Device::Cpu)?;
        if k == 0 {
            self.check_token_ids(rows)?;
        }
        Ok(x)
    }

    /// Makes a batch from samples at block `k`, each a flat row. For a
    /// token-sequence model a row holds any whole number of tokens (1 up to
    /// the model's maximum): rows are padded with zeros to the longest and
    /// the batch carries their lengths. Otherwise every row has the full
    /// shape. Token ids (at block 0) must be integers below the vocabulary
    /// size.
    pub fn batch_of(&self, k: usize, rows: &[&[f32]]) -> Result<Batch, ModelError> {
        let shape = self.bundle.shape_at(k)?;
        if !self.bundle.is_sequence_at(k) {
            let flat: Vec<f32> = rows.concat();
            return Ok(self.batch_at(k, &flat, rows.len())?.into());
        }
        let per_token: usize = shape[1..].iter().product();
        let max = shape[0];
        let mut lengths = Vec::with_capacity(rows.len());
        for row in rows {
            let tokens = row.len() / per_token;
            if row.len() % per_token != 0 || tokens == 0 || tokens > max {
                return Err(ModelError::SequenceShape {
                    block: k,
                    max_tokens: max,
                    per_token: shape[1..].to_vec(),
                    got: row.len(),
                });
            }
            if k == 0 {
                self.check_token_ids(row)?;
            }
            lengths.push(tokens);
        }
        let t = lengths.iter().copied().max().unwrap_or(1);
        let mut padded = Vec::with_capacity(rows.len() * t * per_token);
        for row in rows {
            padded.extend_from_slice(row);
            padded.resize(padded.len() + t * per_token - row.len(), 0.0);
        }
        let mut dims = vec![rows.len(), t];
        dims.extend_from_slice(&shape[1..]);
        let x = Tensor::from_vec(padded, dims, &Device::Cpu)?;
        let mask = SeqMask::new(lengths, t, &Device::Cpu)?;
        Ok(Batch { x, mask: Some(mask) })
    }

    /// Token ids must be integers in `[0, vocabulary)` (for token-input
    /// models; others accept any input here).
    fn check_token_ids(&self, row: &[f32]) -> Result<(), ModelError> {
        let Some(vocab) = self.bundle.vocab_size() else { return Ok(()) };
        match row.iter().position(|&v| !(v >= 0.0 && v.fract() == 0.0 && (v as usize) < vocab)) {
            Some(index) => Err(ModelError::TokenId { index, value: row[index], vocab }),
            None => Ok(()),
        }
    }

    /// Runs blocks `range` on `input` (`[B, shape at range.start]`), evaluating
    /// every exit attached after a block in range. A sample leaves the batch at
    /// the first exit whose policy fires (the final exit always fires) and no
    /// more compute is spent on it. `histories` carries what earlier exits said
    /// (empty vectors when starting at block 0).
    pub fn run(
        &self,
        input: impl Into<Batch>,
        range: Range<usize>,
        policy: &Policy,
        mut histories: Vec<Vec<Observation>>,
    ) -> Result<RunOutput, ModelError> {
        let bundle = &*self.bundle;
        bundle.check_held(&range)?;
        let input: Batch = input.into();
        let batch = input.x.dim(0)?;
        self.check_input(&input, range.start)?;
        let sequence_end = bundle.is_sequence_at(range.end);
        if histories.len() != batch {
            return Err(ModelError::HistoryLength { histories: histories.len(), batch });
        }
        let final_exit = bundle.final_exit();
        let mut exited: Vec<Option<ExitResult>> = vec![None; batch];
        let mut remaining: Vec<usize> = (0..batch).collect();
        let mut x = input;
        for b in range {
            if remaining.is_empty() {
                break;
            }
            x.x = bundle.block(b).forward_masked(&x.x, x.mask.as_ref())?;
            // A sample whose state stopped being finite leaves now, with a
            // non-finite answer its caller turns into an overflow error
            // ([`Executor::locate_overflow`]). Checked after every block, not
            // only at the answer: a later ReLU turns NaN into 0 (`max(NaN,
            // 0)`), and the answer would be finite but garbage, and depend on
            // which kernel (batch size) ran. One reduction per block; the
            // rows are looked at only when it is not finite.
            if !x.x.sum_all()?.to_scalar::<f32>()?.is_finite() {
                let rows = x.x.flatten_from(1)?.to_vec2::<f32>()?;
                let mut keep = Vec::with_capacity(remaining.len());
                for (row, values) in rows.iter().enumerate() {
                    if values.iter().all(|v| v.is_finite()) {
                        keep.push(row as u32);
                    } else {
                        exited[remaining[row]] = Some(ExitResult::overflowed(final_exit));
                    }
                }
                if keep.len() < remaining.len() {
                    if !keep.is_empty() {
                        x = x.select(&keep)?;
                    }
                    remaining = keep.iter().map(|&r| remaining[r as usize]).collect();
                }
                if remaining.is_empty() {
                    break;
                }
            }
            let Some(e) = bundle.exit_after(b) else { continue };
            let logits = forward_all_masked(bundle.exit_head(e), &x.x, x.mask.as_ref())?;
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
                    x = x.select(&keep)?;
                }
                remaining = keep.iter().map(|&r| remaining[r as usize]).collect();
            }
        }
        let hidden_lengths = (!remaining.is_empty() && sequence_end)
            .then(|| (0..remaining.len()).map(|i| x.length(i, true).unwrap_or(0)).collect());
        let hidden = (!remaining.is_empty()).then_some(x.x);
        Ok(RunOutput { exited, remaining, hidden, hidden_lengths, histories })
    }

    /// Runs blocks `range` without early exit and returns the logits of every
    /// exit in range (`(exit index, [B, classes])`), for evaluation and training.
    pub fn forward_exits(
        &self,
        input: impl Into<Batch>,
        range: Range<usize>,
    ) -> Result<Vec<(usize, Tensor)>, ModelError> {
        let bundle = &*self.bundle;
        bundle.check_held(&range)?;
        let input: Batch = input.into();
        self.check_input(&input, range.start)?;
        let mut out = Vec::new();
        let (mut x, mask) = (input.x, input.mask);
        for b in range {
            x = bundle.block(b).forward_masked(&x, mask.as_ref())?;
            if let Some(e) = bundle.exit_after(b) {
                out.push((e, forward_all_masked(bundle.exit_head(e), &x, mask.as_ref())?));
            }
        }
        Ok(out)
    }

    /// Runs blocks `range` only (no exits) and returns the hidden state
    /// (padded as the input was).
    pub fn forward_blocks(&self, input: impl Into<Batch>, range: Range<usize>) -> Result<Tensor, ModelError> {
        let bundle = &*self.bundle;
        bundle.check_held(&range)?;
        let input: Batch = input.into();
        self.check_input(&input, range.start)?;
        let (mut x, mask) = (input.x, input.mask);
        for b in range {
            x = bundle.block(b).forward_masked(&x, mask.as_ref())?;
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
        let mut x = self.batch_of(range.start, &[row])?.x;
        let manifest = bundle.manifest();
        for b in range.clone() {
            x = bundle.block(b).forward(&x)?;
            if !all_finite(&x)? {
                return Ok(Overflow::Block { block: b, name: manifest.blocks[b].name.clone() });
            }
            if let Some(e) = bundle.exit_after(b) {
                if !all_finite(&forward_all_masked(bundle.exit_head(e), &x, None)?)? {
                    return Ok(Overflow::Exit { exit: e, name: manifest.exits[e].name.clone(), after_block: b });
                }
            }
        }
        Ok(Overflow::Blocks { start: range.start, end: range.end })
    }

    fn check_input(&self, input: &Batch, k: usize) -> Result<(), ModelError> {
        let expected = self.bundle.shape_at(k)?;
        let dims = input.x.dims();
        let fits = dims.len() == expected.len() + 1
            && if self.bundle.is_sequence_at(k) {
                (1..=expected[0]).contains(&dims[1]) && dims[2..] == expected[1..]
            } else {
                &dims[1..] == expected
            };
        if !fits {
            return Err(ModelError::InputShape { block: k, expected: expected.to_vec(), got: dims.to_vec() });
        }
        if let Some(mask) = &input.mask {
            if mask.lengths().len() != dims[0] || mask.padded_len() != dims[1] {
                return Err(ModelError::InputShape { block: k, expected: expected.to_vec(), got: dims.to_vec() });
            }
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
    fn an_overflow_is_caught_where_it_happens_whatever_the_batch() {
        // f32::MAX pixels overflow in conv1; a later ReLU (`max(NaN, 0)`)
        // would turn the NaN into zeros and a finite, garbage answer, on one
        // kernel and not another. Alone or beside a healthy input, the row
        // that overflowed answers non-finite and the other is unaffected.
        let exec = tiny(|_| {});
        let big = vec![f32::MAX; 784];
        let fine = vec![0.5; 784];
        let alone = exec.run(exec.batch_at(0, &big, 1).unwrap(), 0..4, &Policy::never(3), vec![vec![]]).unwrap();
        assert!(!alone.exited[0].as_ref().unwrap().is_finite(), "{:?}", alone.exited[0]);
        let both = [big.clone(), fine.clone()].concat();
        for batch in [both, [fine.clone(), big].concat()] {
            let out = exec.run(exec.batch_at(0, &batch, 2).unwrap(), 0..4, &Policy::never(3), vec![vec![]; 2]).unwrap();
            let finite: Vec<bool> = out.exited.iter().map(|r| r.as_ref().unwrap().is_finite()).collect();
            assert_eq!(finite.iter().filter(|f| !**f).count(), 1, "{:?}", out.exited);
        }
        let healthy = exec.run(exec.batch_at(0, &fine, 1).unwrap(), 0..4, &Policy::never(3), vec![vec![]]).unwrap();
        let paired = exec
            .run(
                exec.batch_at(0, &[vec![f32::MAX; 784], fine].concat(), 2).unwrap(),
                0..4,
                &Policy::never(3),
                vec![vec![]; 2],
            )
            .unwrap();
        let (a, b) = (healthy.exited[0].as_ref().unwrap(), paired.exited[1].as_ref().unwrap());
        assert_eq!((a.exit, a.prediction), (b.exit, b.prediction));
        assert!((a.confidence - b.confidence).abs() < 1e-5);
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
