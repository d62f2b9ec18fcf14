//! `offramp train --init <encoder bundle>`: fine-tuning a text encoder with
//! exits, in DeeBERT's two stages or jointly.
//!
//! - `finetune`: backbone and final exit on the task (the other exits are
//!   left as they are);
//! - `exits`: the backbone frozen, every other exit head trained on its
//!   layer's states (DeeBERT's second stage: the final exit's accuracy is
//!   exactly the fine-tuned model's);
//! - `joint`: backbone and every exit at once, the loss a weighted sum of the
//!   exits' cross-entropies (by default exit i weighs i + 1, as PABEE's
//!   weighted average).
//!
//! The embedding tables stay frozen unless `--train-embeddings` (11.7 M of
//! MiniLM's 22.7 M weights; their gradients dominate the step time and a
//! few thousand sentences do not move them usefully).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use offramp_common::data::{Dataset, Subset};
use offramp_common::rng::SplitMix64;
use offramp_common::{Bundle, Executor};

use crate::train::{cosine_lr, TrainArgs, TrainReport};

/// Which parameters a stage trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Backbone + final exit.
    Finetune,
    /// Non-final exit heads, backbone frozen.
    Exits,
    /// Everything, with a weighted sum of every exit's loss.
    Joint,
}

fn trainable(name: &str, stage: Stage, final_exit: usize, embeddings: bool) -> bool {
    let is_exit = name.starts_with("exits.");
    let is_final = name.starts_with(&format!("exits.{final_exit}."));
    let is_embedding = name.starts_with("blocks.0.") && !name.contains(".ln.");
    match stage {
        Stage::Finetune => (!is_exit || is_final) && (embeddings || !is_embedding),
        Stage::Exits => is_exit && !is_final,
        Stage::Joint => embeddings || !is_embedding,
    }
}

/// Fine-tunes the encoder bundle `init` on the text file `args.data`.
// Long on purpose: one training loop (stages, batches, evaluation,
// checkpoints) whose state is the optimizer's and the report's.
pub fn train(args: &TrainArgs, init: &Path) -> Result<(TrainReport, Bundle)> {
    let from = Bundle::load(init).with_context(|| format!("loading --init {}", init.display()))?;
    let encoder = from.text_encoder().cloned().context("the --init bundle has no tokenizer")?;
    let stage = args.stage.unwrap_or(Stage::Finetune);
    let classes = from.num_classes();
    let (train_subset, val_from_train) = match &args.val_data {
        Some(_) => (Subset::All, false),
        None => (Subset::Train, true),
    };
    let mut train = Dataset::text(&args.data, train_subset, args.val_size, &encoder, classes)
        .with_context(|| format!("reading training sentences from {}", args.data.display()))?;
    let val = match &args.val_data {
        Some(path) => Dataset::text(path, Subset::All, 0, &encoder, classes),
        None => Dataset::text(&args.data, Subset::Val, args.val_size, &encoder, classes),
    }
    .context("reading the validation sentences")?;
    if let Some(limit) = args.limit {
        train.truncate(limit);
    }
    if args.batch_size == 0 || args.epochs == 0 {
        bail!("--batch-size and --epochs must be positive");
    }
    let manifest = from.manifest().clone();
    let num_exits = manifest.exits.len();
    let final_exit = num_exits - 1;
    let weights: Vec<f64> = match (stage, args.exit_weights.is_empty()) {
        (_, false) if args.exit_weights.len() != num_exits => {
            bail!("--exit-weights has {} values, the model has {num_exits} exits", args.exit_weights.len())
        }
        (_, false) => args.exit_weights.clone(),
        (Stage::Finetune, true) => (0..num_exits).map(|e| if e == final_exit { 1.0 } else { 0.0 }).collect(),
        (Stage::Exits, true) => (0..num_exits).map(|e| if e == final_exit { 0.0 } else { 1.0 }).collect(),
        (Stage::Joint, true) => {
            let total: f64 = (1..=num_exits).map(|i| i as f64).sum();
            (1..=num_exits).map(|i| i as f64 / total * num_exits as f64).collect()
        }
    };

    let mut vars = Vec::new();
    let mut tensors = HashMap::new();
    let mut trained_count = 0usize;
    for (name, t) in from.tensors() {
        if trainable(name, stage, final_exit, args.train_embeddings) {
            let var = Var::from_tensor(t)?;
            tensors.insert(name.clone(), var.as_tensor().clone());
            trained_count += t.elem_count();
            vars.push(var);
        } else {
            tensors.insert(name.clone(), t.clone());
        }
    }
    let model = Bundle::from_parts(manifest.clone(), tensors)?;
    let exec = Executor::new(Arc::new(model));
    let n_blocks = exec.bundle().num_blocks();
    // The exits stage needs the blocks up to the deepest non-final exit only.
    let blocks = match stage {
        Stage::Exits => 0..manifest.exits[num_exits.saturating_sub(2)].after_block + 1,
        _ => 0..n_blocks,
    };
    let mut opt = AdamW::new(vars, ParamsAdamW { lr: args.lr, weight_decay: args.weight_decay, ..Default::default() })?;

    let steps_per_epoch = train.len().div_ceil(args.batch_size);
    let total_steps = args.max_steps.unwrap_or(usize::MAX).min(steps_per_epoch * args.epochs);
    let bar = crate::train::progress(args.quiet, total_steps);
    tracing::info!(
        model = exec.bundle().model_id(),
        ?stage,
        train = train.len(),
        val = val.len(),
        epochs = args.epochs,
        batch = args.batch_size,
        lr = args.lr,
        trained_weights = trained_count,
        seed = args.seed,
        "fine-tuning"
    );
    let mut rng = SplitMix64::new(args.seed ^ 0x5eed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut losses = Vec::with_capacity(total_steps);
    let started = Instant::now();
    let mut step = 0;
    let mut last_log = Instant::now();
    let mut val_acc = vec![];
    'epochs: for epoch in 0..args.epochs {
        bar.set_prefix(format!("{stage:?} epoch {}/{}", epoch + 1, args.epochs));
        let batches = length_buckets(&train, &mut order, args.batch_size, &mut rng);
        let epoch_start = Instant::now();
        let mut seen = 0usize;
        for chunk in batches.iter().map(Vec::as_slice) {
            if step >= total_steps {
                break 'epochs;
            }
            opt.set_learning_rate(warmup_cosine(args.lr, step, total_steps));
            let rows: Vec<&[f32]> = chunk.iter().map(|&i| train.image(i)).collect();
            let x = exec.batch_of(0, &rows)?;
            let labels: Vec<u32> = chunk.iter().map(|&i| train.labels[i] as u32).collect();
            let y = Tensor::from_vec(labels, chunk.len(), &Device::Cpu)?;
            let outs = exec.forward_exits(x, blocks.clone())?;
            let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu)?;
            for (e, logits) in &outs {
                if weights[*e] != 0.0 {
                    loss = (loss + (candle_nn::loss::cross_entropy(logits, &y)? * weights[*e])?)?;
                }
            }
            opt.backward_step(&loss)?;
            let l = loss.to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                bail!("loss became {l} at step {step}: lower --lr");
            }
            losses.push(l);
            step += 1;
            seen += chunk.len();
            bar.inc(1);
            if step % 5 == 0 {
                let recent = &losses[losses.len().saturating_sub(50)..];
                let message = format!(
                    "loss {:.4} {:.1} sentences/s",
                    recent.iter().sum::<f64>() / recent.len() as f64,
                    seen as f64 / epoch_start.elapsed().as_secs_f64()
                );
                // No terminal (a log file, a CI job): a line a minute instead of the bar.
                if bar.is_hidden() && !args.quiet && last_log.elapsed().as_secs() >= 60 {
                    tracing::info!("step {step}/{total_steps}: {message}");
                    last_log = Instant::now();
                }
                bar.set_message(message);
            }
        }
        val_acc = exit_accuracy(&exec, &val)?;
        let line = format!(
            "{stage:?} epoch {}/{}: loss {:.4}, {} accuracy by exit {}",
            epoch + 1,
            args.epochs,
            losses[losses.len().saturating_sub(steps_per_epoch)..].iter().sum::<f64>()
                / steps_per_epoch.min(losses.len()).max(1) as f64,
            if val_from_train { "validation" } else { "--val-data" },
            val_acc.iter().map(|a| format!("{:.2}%", a * 100.0)).collect::<Vec<_>>().join(" / ")
        );
        bar.println(&line);
        if bar.is_hidden() {
            tracing::info!("{line}");
        }
    }
    bar.finish_and_clear();
    if val_acc.is_empty() {
        // Stopped by --max-steps inside the first epoch.
        val_acc = exit_accuracy(&exec, &val)?;
    }

    let trained: HashMap<String, Tensor> =
        exec.bundle().tensors().iter().map(|(k, v)| (k.clone(), v.detach())).collect();
    let bundle = Bundle::from_parts(manifest, trained)?.with_tokenizer(encoder.json().to_vec())?;
    bundle.save(&args.out)?;
    let tenth = (losses.len() / 10).max(1).min(losses.len().max(1));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let report = TrainReport {
        steps: step,
        first_loss: mean(&losses[..tenth.min(losses.len())]),
        last_loss: mean(&losses[losses.len().saturating_sub(tenth)..]),
        val_exit_accuracy: val_acc,
        seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!(out = %args.out.display(), steps = step, seconds = report.seconds, "saved bundle");
    Ok((report, bundle))
}

/// One epoch's batches: shuffled, then sorted by length within windows of
/// 50 batches so that a batch pads little, then the batches shuffled (the
/// usual length bucketing; it halves the padded tokens on SST-2).
fn length_buckets(data: &Dataset, order: &mut [usize], batch: usize, rng: &mut SplitMix64) -> Vec<Vec<usize>> {
    rng.shuffle(order);
    for window in order.chunks_mut(batch * 50) {
        window.sort_by_key(|&i| data.image(i).len());
    }
    let mut batches: Vec<Vec<usize>> = order.chunks(batch).map(<[usize]>::to_vec).collect();
    rng.shuffle(&mut batches);
    batches
}

/// Linear warm-up over the first 6% of steps, then the cosine decay.
fn warmup_cosine(peak: f64, step: usize, total: usize) -> f64 {
    let warmup = (total * 6 / 100).max(1);
    if step < warmup {
        peak * (step + 1) as f64 / warmup as f64
    } else {
        cosine_lr(peak, step - warmup, total - warmup)
    }
}

/// Accuracy of every exit (every sample forced through it).
fn exit_accuracy(exec: &Executor, data: &Dataset) -> Result<Vec<f64>> {
    let mut correct = vec![0usize; exec.bundle().num_exits()];
    let n = data.len();
    for start in (0..n).step_by(64) {
        let end = (start + 64).min(n);
        let x = exec.batch_of(0, &data.rows(start..end))?;
        let x = offramp_common::model::Batch { x: x.x.detach(), mask: x.mask };
        for (e, logits) in exec.forward_exits(x, 0..exec.bundle().num_blocks())? {
            let pred = logits.detach().argmax(1)?.to_vec1::<u32>()?;
            correct[e] += pred.iter().zip(&data.labels[start..end]).filter(|(p, &l)| **p == l as u32).count();
        }
    }
    Ok(correct.iter().map(|&c| c as f64 / n.max(1) as f64).collect())
}
