//! `offramp train`: joint training of every exit of a multi-exit network
//! (BranchyNet: the loss is a weighted sum of the exits' cross-entropies).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use offramp_common::data::{Dataset, Subset};
use offramp_common::model::arch::{init_weights, Arch};
use offramp_common::rng::SplitMix64;
use offramp_common::{Bundle, Executor};

/// Train a multi-exit network and save it as a bundle.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Architecture to train.
    #[arg(long, value_enum, default_value = "b-lenet")]
    pub arch: Arch,
    /// Training data: an MNIST directory (IDX files, gz or raw), e.g.
    /// ../shared/data/mnist; for an encoder (`--init` a text bundle) a file
    /// of `<label> <sentence>` lines, e.g. ../shared/data/text/stsa.binary.train.
    #[arg(long, env = "OFFRAMP_DATA")]
    pub data: PathBuf,
    /// Encoders: a separate validation file (e.g. stsa.binary.dev); without
    /// it the last --val-size lines of --data are held out.
    #[arg(long)]
    pub val_data: Option<PathBuf>,
    /// Encoders: what to train (default finetune): `finetune` backbone +
    /// final exit, `exits` the other exit heads on a frozen backbone
    /// (DeeBERT's second stage), `joint` everything with weighted exit losses.
    #[arg(long, value_enum)]
    pub stage: Option<crate::train_encoder::Stage>,
    /// Encoders: also train the embedding tables (frozen by default).
    #[arg(long)]
    pub train_embeddings: bool,
    /// Output bundle directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Model id written into the manifest (default: the output folder's name).
    #[arg(long)]
    pub model_id: Option<String>,
    #[arg(long, default_value_t = 6)]
    pub epochs: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW); decays along a cosine to 5% of it.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Loss weight of each exit, comma-separated, in exit order (default: all 1).
    #[arg(long, value_delimiter = ',')]
    pub exit_weights: Vec<f64>,
    /// Training digits held out at the end of the training files as the
    /// validation split (never trained on).
    #[arg(long, default_value_t = 5000)]
    pub val_size: usize,
    /// Start from the weights of this bundle (same architecture) instead of a
    /// seeded initialisation: continue or fine-tune a model. A text-encoder
    /// bundle (from `offramp import hf`) is fine-tuned on --data sentences
    /// (--arch is then ignored).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Stop after this many optimizer steps (smoke runs and tests).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Train on the first N training digits only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Random translation of training digits by up to this many pixels in
    /// each direction (data augmentation; 0 turns it off).
    #[arg(long, default_value_t = 2)]
    pub augment_shift: usize,
    /// Compute threads for candle (sets RAYON_NUM_THREADS when not set). One is
    /// the fastest on small models: measured 0.14 s of CPU per batch-64 step
    /// single-threaded vs 0.2 s wall with two threads, and far worse when the
    /// machine is busy (spinning worker threads).
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub threads: usize,
    /// No progress bar (for logs and tests).
    #[arg(long)]
    pub quiet: bool,
}

/// What a training run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainReport {
    pub steps: usize,
    /// Mean loss over the first and the last 10% of steps.
    pub first_loss: f64,
    pub last_loss: f64,
    pub val_exit_accuracy: Vec<f64>,
    pub seconds: f64,
}

pub fn run(args: &TrainArgs) -> Result<TrainReport> {
    train(args).map(|(report, _)| report)
}

/// Trains and saves; returns the report and the trained bundle as held in memory.
// Long on purpose: one training loop (epochs, batches, exit losses,
// validation) whose state is the optimizer's and the report's.
pub fn train(args: &TrainArgs) -> Result<(TrainReport, Bundle)> {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    }
    if let Some(init) = args.init.as_deref().filter(|dir| takes_text(dir)) {
        return crate::train_encoder::train(args, init);
    }
    if args.stage.is_some() || args.val_data.is_some() || args.train_embeddings {
        bail!("--stage, --val-data and --train-embeddings are for text encoders (--init an imported bundle)");
    }
    let mut train = Dataset::mnist(&args.data, Subset::Train, args.val_size)
        .with_context(|| format!("reading the training split from {}", args.data.display()))?;
    let val = Dataset::mnist(&args.data, Subset::Val, args.val_size)?;
    if let Some(limit) = args.limit {
        train.truncate(limit);
    }
    if args.batch_size == 0 || args.epochs == 0 {
        bail!("--batch-size and --epochs must be positive");
    }
    let model_id = args.model_id.clone().unwrap_or_else(|| {
        args.out.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
    });
    let manifest = args.arch.manifest(&model_id);
    let num_exits = manifest.exits.len();
    let weights = if args.exit_weights.is_empty() { vec![1.0; num_exits] } else { args.exit_weights.clone() };
    if weights.len() != num_exits {
        bail!("--exit-weights has {} values, the {:?} model has {num_exits} exits", weights.len(), args.arch);
    }

    let init = match &args.init {
        None => init_weights(&manifest, args.seed)?,
        Some(dir) => {
            let from = Bundle::load(dir).with_context(|| format!("loading --init {}", dir.display()))?;
            if from.manifest().blocks != manifest.blocks || from.manifest().exits != manifest.exits {
                bail!("--init {} is not a {:?} model", dir.display(), args.arch);
            }
            from.tensors().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        }
    };
    let mut names: Vec<&String> = init.keys().collect();
    names.sort();
    let mut vars = Vec::new();
    let mut tensors = std::collections::HashMap::new();
    for name in names {
        let var = Var::from_tensor(&init[name])?;
        tensors.insert(name.clone(), var.as_tensor().clone());
        vars.push(var);
    }
    let mut model = Bundle::from_parts(manifest.clone(), tensors)?;
    model.use_unfold_conv(true);
    let exec = Executor::new(Arc::new(model));
    let n_blocks = exec.bundle().num_blocks();
    let mut opt =
        AdamW::new(vars.clone(), ParamsAdamW { lr: args.lr, weight_decay: args.weight_decay, ..Default::default() })?;

    let steps_per_epoch = train.len().div_ceil(args.batch_size);
    let total_steps = args.max_steps.unwrap_or(usize::MAX).min(steps_per_epoch * args.epochs);
    let bar = progress(args.quiet, total_steps);
    tracing::info!(
        arch = ?args.arch, train = train.len(), val = val.len(), epochs = args.epochs,
        batch = args.batch_size, lr = args.lr, seed = args.seed, "training"
    );

    let mut rng = SplitMix64::new(args.seed ^ 0x5eed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut losses = Vec::with_capacity(total_steps);
    let started = Instant::now();
    let mut step = 0;
    let mut val_acc = vec![];
    'epochs: for epoch in 0..args.epochs {
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, args.epochs));
        rng.shuffle(&mut order);
        let epoch_start = Instant::now();
        let mut seen = 0usize;
        for chunk in order.chunks(args.batch_size) {
            if step >= total_steps {
                break 'epochs;
            }
            let lr_now = cosine_lr(args.lr, step, total_steps);
            opt.set_learning_rate(lr_now);
            let (x, y) = if args.augment_shift > 0 {
                shifted_batch(&train, chunk, args.augment_shift, &mut rng)?
            } else {
                batch(&train, chunk)?
            };
            let outs = exec.forward_exits(&x, 0..n_blocks)?;
            let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu)?;
            for ((_, logits), w) in outs.iter().zip(&weights) {
                let l = candle_nn::loss::cross_entropy(logits, &y)?;
                loss = (loss + (l * *w)?)?;
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
            if step % 10 == 0 {
                let recent = &losses[losses.len().saturating_sub(50)..];
                let rate = seen as f64 / epoch_start.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "loss {:.4} {:.0} samples/s",
                    recent.iter().sum::<f64>() / recent.len() as f64,
                    rate
                ));
            }
        }
        val_acc = exit_accuracy(&exec, &val, 1000)?;
        let line = format!(
            "epoch {}/{}: loss {:.4}, val accuracy by exit {}",
            epoch + 1,
            args.epochs,
            losses[losses.len().saturating_sub(steps_per_epoch)..].iter().sum::<f64>()
                / steps_per_epoch.min(losses.len()).max(1) as f64,
            val_acc.iter().map(|a| format!("{:.2}%", a * 100.0)).collect::<Vec<_>>().join(" / ")
        );
        bar.println(&line);
        if bar.is_hidden() {
            tracing::info!("{line}");
        }
    }
    bar.finish_and_clear();

    let trained: std::collections::HashMap<String, Tensor> =
        exec.bundle().tensors().iter().map(|(k, v)| (k.clone(), v.detach())).collect();
    let bundle = Bundle::from_parts(manifest, trained)?;
    bundle.save(&args.out)?;
    let tenth = (losses.len() / 10).max(1);
    let report = TrainReport {
        steps: step,
        first_loss: losses[..tenth.min(losses.len())].iter().sum::<f64>() / tenth.min(losses.len()).max(1) as f64,
        last_loss: losses[losses.len() - tenth.min(losses.len())..].iter().sum::<f64>()
            / tenth.min(losses.len()).max(1) as f64,
        val_exit_accuracy: val_acc,
        seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!(out = %args.out.display(), steps = step, seconds = report.seconds, "saved bundle");
    Ok((report, bundle))
}

/// Whether the bundle in `dir` takes text (its manifest's input is token ids).
fn takes_text(dir: &std::path::Path) -> bool {
    std::fs::read_to_string(dir.join(offramp_common::model::manifest::MANIFEST_FILE))
        .ok()
        .and_then(|t| serde_json::from_str::<offramp_common::model::Manifest>(&t).ok())
        .is_some_and(|m| m.input.is_tokens())
}

/// The training progress bar (hidden with `quiet`).
pub(crate) fn progress(quiet: bool, total_steps: usize) -> indicatif::ProgressBar {
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(total_steps as u64) };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} steps, ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    bar
}

pub(crate) fn cosine_lr(peak: f64, step: usize, total: usize) -> f64 {
    let floor = 0.05 * peak;
    let t = step as f64 / total.max(1) as f64;
    floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Gathers a batch of images and labels.
pub fn batch(data: &Dataset, idx: &[usize]) -> Result<(Tensor, Tensor)> {
    let per = data.image_len();
    let mut pixels = Vec::with_capacity(idx.len() * per);
    for &i in idx {
        pixels.extend_from_slice(data.image(i));
    }
    let mut dims = vec![idx.len()];
    dims.extend_from_slice(&data.shape);
    let x = Tensor::from_vec(pixels, dims, &Device::Cpu)?;
    let labels: Vec<u32> = idx.iter().map(|&i| data.labels[i] as u32).collect();
    let y = Tensor::from_vec(labels, idx.len(), &Device::Cpu)?;
    Ok((x, y))
}

/// A batch whose images are each translated by a random offset in
/// `[-max, max]` pixels along both axes (zero fill).
fn shifted_batch(data: &Dataset, idx: &[usize], max: usize, rng: &mut SplitMix64) -> Result<(Tensor, Tensor)> {
    let [c, h, w] = data.shape[..] else { bail!("shifting needs [C, H, W] images, not {:?}", data.shape) };
    let mut pixels = vec![0f32; idx.len() * c * h * w];
    let span = 2 * max + 1;
    for (n, &i) in idx.iter().enumerate() {
        let (dy, dx) = (rng.below(span) as isize - max as isize, rng.below(span) as isize - max as isize);
        let src = data.image(i);
        let dst = &mut pixels[n * c * h * w..(n + 1) * c * h * w];
        for ch in 0..c {
            for y in 0..h as isize {
                let sy = y - dy;
                if sy < 0 || sy >= h as isize {
                    continue;
                }
                for x in 0..w as isize {
                    let sx = x - dx;
                    if sx >= 0 && sx < w as isize {
                        dst[ch * h * w + (y as usize) * w + x as usize] =
                            src[ch * h * w + (sy as usize) * w + sx as usize];
                    }
                }
            }
        }
    }
    let x = Tensor::from_vec(pixels, (idx.len(), c, h, w), &Device::Cpu)?;
    let labels: Vec<u32> = idx.iter().map(|&i| data.labels[i] as u32).collect();
    Ok((x, Tensor::from_vec(labels, idx.len(), &Device::Cpu)?))
}

/// Accuracy of every exit (every sample forced through it) on the first
/// `limit` samples.
fn exit_accuracy(exec: &Executor, data: &Dataset, limit: usize) -> Result<Vec<f64>> {
    let n = data.len().min(limit);
    let mut correct = vec![0usize; exec.bundle().num_exits()];
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(256) {
        let (x, y) = batch(data, chunk)?;
        let y = y.to_vec1::<u32>()?;
        for (e, logits) in exec.forward_exits(x.detach(), 0..exec.bundle().num_blocks())? {
            let pred = logits.detach().argmax(1)?.to_vec1::<u32>()?;
            correct[e] += pred.iter().zip(&y).filter(|(p, l)| p == l).count();
        }
    }
    Ok(correct.iter().map(|&c| c as f64 / n.max(1) as f64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use offramp_common::data::write_idx;

    #[test]
    fn a_few_steps_lower_the_loss_and_the_bundle_reloads_identically() {
        // Training files made from the bundled sample: no dependency on ../shared.
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let sample = Dataset::mnist(&repo.join("models/mnist-sample"), Subset::Sample, 0).unwrap();
        let dir = std::env::temp_dir().join(format!("offramp-train-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pixels: Vec<u8> = sample.images.iter().map(|&p| (p * 255.0).round() as u8).collect();
        write_idx(&dir.join("data"), "train", 28, 28, &pixels, &sample.labels).unwrap();
        let args = TrainArgs {
            arch: Arch::Tiny,
            data: dir.join("data"),
            out: dir.join("model"),
            model_id: None,
            epochs: 2,
            seed: 3,
            batch_size: 32,
            lr: 3e-3,
            weight_decay: 1e-4,
            exit_weights: vec![],
            val_size: 200,
            augment_shift: 1,
            threads: 1,
            init: None,
            max_steps: Some(40),
            limit: None,
            quiet: true,
            val_data: None,
            stage: None,
            train_embeddings: false,
        };
        let (report, trained) = train(&args).unwrap();
        assert_eq!(report.steps, 40);
        assert!(report.last_loss < report.first_loss * 0.8, "loss falls: {report:?}");
        let reloaded = Bundle::load(&args.out).unwrap();
        let x = Executor::new(Arc::new(trained.clone())).batch_at(0, &sample.images[..16 * 784], 16).unwrap();
        let a = Executor::new(Arc::new(trained)).forward_exits(&x, 0..4).unwrap();
        let b = Executor::new(Arc::new(reloaded)).forward_exits(&x, 0..4).unwrap();
        for ((ea, la), (eb, lb)) in a.iter().zip(&b) {
            assert_eq!(ea, eb);
            assert_eq!(la.to_vec2::<f32>().unwrap(), lb.to_vec2::<f32>().unwrap(), "identical outputs after reload");
        }
        // The same seed gives the same model.
        let again = TrainArgs { out: dir.join("model2"), ..args };
        let (report2, _) = train(&again).unwrap();
        assert_eq!(report.last_loss, report2.last_loss, "training is deterministic for a seed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
