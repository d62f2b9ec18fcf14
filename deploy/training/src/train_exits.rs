//! `offramp train-exits`: trains a small adapter per decoder exit by
//! self-distillation, label-free.
//!
//! The whole model answers prompts (TREC training questions, in its chat
//! template) greedily; at every generated position the states at each exit's
//! layer and the whole model's next-token distribution (its top
//! `--teacher-top` probabilities) are kept. Each exit then learns a low-rank
//! residual map `h + (h·A)·B` (B starts at zero, so training starts from the
//! bare exit) that minimises the cross-entropy of the exit's distribution —
//! final norm and the tied LM head, both frozen — against the whole
//! model's. The adapters go into the bundle (`adapters.safetensors`); the
//! quantized weights are untouched. Re-run `offramp calibrate-decoder`
//! afterwards: the thresholds depend on the adapters.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use offramp_common::decoder::model::rows;
use offramp_common::decoder::{ChatMessage, DecoderBundle, KvCache, SessionStep};
use offramp_common::rng::SplitMix64;

use crate::calibrate_decoder::prompts;

#[derive(Debug, Clone, clap::Args)]
pub struct TrainExitsArgs {
    /// Whole-model decoder bundle with exits (`offramp import gguf --exits`).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value = "../shared/data/text/TREC.train.all")]
    pub prompts_file: PathBuf,
    /// Questions to generate training text from (taken after the first
    /// `--skip`, clear of the calibration and benchmark prompts).
    #[arg(long, default_value_t = 64)]
    pub prompts: usize,
    #[arg(long, default_value_t = 200)]
    pub skip: usize,
    /// Tokens generated per prompt.
    #[arg(long, default_value_t = 64)]
    pub tokens: usize,
    /// Share of positions held out to report agreement on.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Adapter rank.
    #[arg(long, default_value_t = 64)]
    pub rank: usize,
    #[arg(long, default_value_t = 6)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Teacher probabilities kept per position.
    #[arg(long, default_value_t = 32)]
    pub teacher_top: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExitTraining {
    pub layer: usize,
    /// Top-1 agreement with the whole model on held-out positions.
    pub agreement_before: f64,
    pub agreement_after: f64,
    pub train_agreement_after: f64,
    pub final_loss: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainExitsReport {
    pub model_id: String,
    pub positions: usize,
    pub val_positions: usize,
    pub rank: usize,
    pub epochs: usize,
    pub exits: Vec<ExitTraining>,
}

impl TrainExitsReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "{}: adapters of rank {} trained {} epochs on {} self-generated positions; top-1 agreement with the whole \
             model on {} held-out positions:\n exit  before   after  (train)  loss\n",
            self.model_id, self.rank, self.epochs, self.positions, self.val_positions
        );
        for e in &self.exits {
            s.push_str(&format!(
                "{:>5}  {:>5.1}%  {:>5.1}%  ({:>5.1}%)  {:.3}\n",
                e.layer,
                e.agreement_before * 100.0,
                e.agreement_after * 100.0,
                e.train_agreement_after * 100.0,
                e.final_loss
            ));
        }
        s.push_str("adapters written to adapters.safetensors; run `offramp calibrate-decoder` for new thresholds\n");
        s
    }
}

/// Teacher data: per exit, the states (row-major); per position, the top
/// ids and probabilities.
struct Data {
    states: Vec<Vec<f32>>,
    top_ids: Vec<Vec<u32>>,
    top_p: Vec<Vec<f32>>,
}

// Long on purpose: generate targets, train each exit, calibrate, write:
// one pipeline over the same model and data.
pub fn run(args: &TrainExitsArgs) -> Result<TrainExitsReport> {
    anyhow::ensure!(
        args.rank >= 1 && args.epochs >= 1 && args.batch >= 1,
        "--rank, --epochs and --batch must be at least 1"
    );
    anyhow::ensure!((0.0..1.0).contains(&args.val_fraction), "--val-fraction must be in [0, 1)");
    let mut bundle = DecoderBundle::open(&args.model).with_context(|| format!("opening {}", args.model.display()))?;
    let n = bundle.num_layers();
    anyhow::ensure!(bundle.holds() == (0..n), "training needs the whole model");
    let exits: Vec<usize> = bundle.manifest().exits.iter().map(|e| e.layer).collect();
    anyhow::ensure!(!exits.is_empty(), "{} has no exits (import it with --exits)", args.model.display());
    let model = bundle.model()?;
    let h = model.config().hidden;
    let tok = bundle.tokenizer().clone();
    // 1. Teacher data from the whole model's own greedy text.
    let mut data = Data { states: vec![Vec::new(); exits.len()], top_ids: Vec::new(), top_p: Vec::new() };
    for (i, q) in prompts(&args.prompts_file, args.skip, args.prompts)?.iter().enumerate() {
        let ids = tok.encode_chat(&[ChatMessage { role: "user".into(), content: q.clone() }])?;
        let mut cache = KvCache::new(model.config(), model.holds());
        let mut x = model.embed(&ids)?;
        let mut pos = 0;
        for _ in 0..args.tokens {
            let t = x.dim(0)?;
            let mut steps = [SessionStep { cache: &mut cache, x, pos }];
            let taps = model.run(model.holds(), &mut steps, &exits)?;
            let [s] = steps;
            for (e, tap) in taps[0].iter().enumerate() {
                data.states[e].extend(tap.narrow(0, t - 1, 1)?.flatten_all()?.to_vec1::<f32>()?);
            }
            let logits = rows(&model.logits(&s.x.narrow(0, t - 1, 1)?)?)?.remove(0);
            let (ids_top, p_top) = top_k_probs(&logits, args.teacher_top);
            let next = ids_top[0];
            data.top_ids.push(ids_top);
            data.top_p.push(p_top);
            pos += t;
            x = model.embed(&[next])?;
        }
        tracing::info!(prompt = i + 1, of = args.prompts, positions = data.top_ids.len(), "teacher data");
    }
    let positions = data.top_ids.len();
    let mut order: Vec<usize> = (0..positions).collect();
    SplitMix64::new(args.seed).shuffle(&mut order);
    let n_val = ((positions as f64) * args.val_fraction).round() as usize;
    let (val, train) = order.split_at(n_val);
    // 2. The frozen head, dequantized once for training.
    let dev = Device::Cpu;
    let (norm, head) = frozen_head(&bundle)?;
    let eps = model.config().rms_eps as f64;
    let mut report = Vec::new();
    let mut trained = Vec::new();
    for (e, &layer) in exits.iter().enumerate() {
        let states = Tensor::from_slice(&data.states[e], (positions, h), &dev)?;
        let agreement = |a: Option<(&Tensor, &Tensor)>, idx: &[usize]| -> Result<f64> {
            let mut agree = 0usize;
            for chunk in idx.chunks(args.batch) {
                let x = states.index_select(
                    &Tensor::from_vec(chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(), chunk.len(), &dev)?,
                    0,
                )?;
                let x = match a {
                    Some((a, b)) => (&x + x.matmul(a)?.matmul(b)?)?,
                    None => x,
                };
                let pred = exit_logits(&x, &norm, &head, eps)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
                agree += chunk.iter().zip(pred).filter(|(&i, p)| data.top_ids[i][0] == *p).count();
            }
            Ok(agree as f64 / idx.len().max(1) as f64)
        };
        let before = agreement(None, val)?;
        let a = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (h, args.rank), &dev)? / (h as f64).sqrt())?)?;
        let b = Var::zeros((args.rank, h), DType::F32, &dev)?;
        let mut opt = AdamW::new(
            vec![a.clone(), b.clone()],
            ParamsAdamW { lr: args.lr, weight_decay: 0.0, ..Default::default() },
        )?;
        let mut rng = SplitMix64::new(args.seed + layer as u64);
        let mut last_loss = 0.0;
        for epoch in 0..args.epochs {
            let mut idx = train.to_vec();
            rng.shuffle(&mut idx);
            let (mut sum, mut count) = (0.0, 0);
            for chunk in idx.chunks(args.batch) {
                let sel = Tensor::from_vec(chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(), chunk.len(), &dev)?;
                let x = states.index_select(&sel, 0)?;
                let x = (&x + x.matmul(a.as_tensor())?.matmul(b.as_tensor())?)?;
                let logp = candle_nn::ops::log_softmax(&exit_logits(&x, &norm, &head, eps)?, D::Minus1)?;
                // Cross-entropy against the teacher's top-k, renormalised.
                let k = args.teacher_top;
                let ids: Vec<u32> = chunk.iter().flat_map(|&i| data.top_ids[i].iter().copied()).collect();
                let p: Vec<f32> = chunk
                    .iter()
                    .flat_map(|&i| {
                        let z: f32 = data.top_p[i].iter().sum();
                        data.top_p[i].iter().map(move |v| v / z)
                    })
                    .collect();
                let ids = Tensor::from_vec(ids, (chunk.len(), k), &dev)?;
                let p = Tensor::from_vec(p, (chunk.len(), k), &dev)?;
                let loss = (logp.gather(&ids, D::Minus1)? * p)?.sum(D::Minus1)?.mean_all()?.neg()?;
                opt.backward_step(&loss)?;
                sum += loss.to_scalar::<f32>()? as f64;
                count += 1;
            }
            last_loss = sum / count.max(1) as f64;
            tracing::info!(exit = layer, epoch = epoch + 1, loss = last_loss, "training");
        }
        let (at, bt) = (a.as_tensor().clone(), b.as_tensor().clone());
        let after = agreement(Some((&at, &bt)), val)?;
        let train_after = agreement(Some((&at, &bt)), &train[..train.len().min(2048)])?;
        report.push(ExitTraining {
            layer,
            agreement_before: before,
            agreement_after: after,
            train_agreement_after: train_after,
            final_loss: last_loss,
        });
        trained.push((layer, at, bt));
    }
    bundle.save_adapters(&trained)?;
    Ok(TrainExitsReport {
        model_id: bundle.model_id().to_string(),
        positions: train.len(),
        val_positions: val.len(),
        rank: args.rank,
        epochs: args.epochs,
        exits: report,
    })
}

fn exit_logits(x: &Tensor, norm: &Tensor, head: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(norm)?;
    Ok(xn.matmul(&head.t()?)?)
}

/// The top `k` token ids and probabilities of a logits row.
fn top_k_probs(logits: &[f32], k: usize) -> (Vec<u32>, Vec<f32>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = logits.iter().map(|v| (v - max).exp()).sum();
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(idx.len());
    idx.select_nth_unstable_by(k - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    idx.truncate(k);
    idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    let p = idx.iter().map(|&i| (logits[i as usize] - max).exp() / z).collect();
    (idx, p)
}

/// The frozen final norm and LM head (`output.weight`, or the tied
/// embeddings), dequantized, from one read of the GGUF file.
fn frozen_head(bundle: &DecoderBundle) -> Result<(Tensor, Tensor)> {
    let path = bundle.weights_path();
    let mut f = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let c = candle_core::quantized::gguf_file::Content::read(&mut f)?;
    let mut read =
        |name: &str| -> Result<Tensor> { Ok(c.tensor(&mut f, name, &Device::Cpu)?.dequantize(&Device::Cpu)?) };
    let head = if c.tensor_infos.contains_key("output.weight") { "output.weight" } else { "token_embd.weight" };
    Ok((read("output_norm.weight")?, read(head)?))
}
