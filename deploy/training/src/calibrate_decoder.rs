//! `offramp calibrate-decoder`: thresholds for a decoder's exits, from text
//! the model generates itself (label-free).
//!
//! Prompts (questions from `../shared/data/text/TREC.train.all`, in the
//! model's chat template) are answered greedily by the whole model; at every
//! generated position each exit's top-1 token and probability are compared
//! with the whole model's choice. An exit's threshold is the lowest top-1
//! probability at which emitting the exit's token where it is that
//! confident keeps the share of tokens equal to the whole model's at or
//! above the target. The first `--prompts` questions calibrate; the next
//! `--prompts` (also from the training file: the test set is held back)
//! report what the threshold gives on prompts it never saw.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use offramp_common::data::read_labelled_lines;
use offramp_common::decoder::model::{rows, top1};
use offramp_common::decoder::{ChatMessage, DecoderBundle, DecoderModel, KvCache, SessionStep};

#[derive(Debug, Clone, clap::Args)]
pub struct CalibrateDecoderArgs {
    /// Whole-model decoder bundle; its `decoder.json` gets the thresholds.
    #[arg(long)]
    pub model: PathBuf,
    /// Question file (one `label text` per line).
    #[arg(long, default_value = "../shared/data/text/TREC.train.all")]
    pub prompts_file: PathBuf,
    /// Prompts to calibrate on (the same number after them validate).
    #[arg(long, default_value_t = 24)]
    pub prompts: usize,
    /// Tokens generated per prompt.
    #[arg(long, default_value_t = 48)]
    pub tokens: usize,
    /// Share of tokens that must equal the whole model's choice.
    #[arg(long, default_value_t = 0.95)]
    pub target: f64,
    /// Print the report without writing the thresholds.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

/// One position: per exit, (top-1 probability, agrees with the whole model).
type Observation = Vec<(f32, bool)>;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExitCalibration {
    pub layer: usize,
    /// Top-1 agreement with the whole model at every position (threshold 0).
    pub agreement_all: f64,
    pub threshold: f32,
    /// On the calibration prompts: share of tokens the exit would emit, and
    /// the share of all tokens equal to the whole model's.
    pub exit_rate: f64,
    pub agreement: f64,
    /// The same on the validation prompts.
    pub val_exit_rate: f64,
    pub val_agreement: f64,
    pub val_agreement_all: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CalibrateDecoderReport {
    pub model_id: String,
    pub target: f64,
    pub prompts: usize,
    pub positions: usize,
    pub val_positions: usize,
    pub exits: Vec<ExitCalibration>,
    pub written: bool,
}

impl CalibrateDecoderReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "{}: target agreement {:.1}%, {} prompts x {} positions (calibration), {} positions (validation)\n\
             exit  top-1 agreement  threshold  exit rate  agreement | val: exit rate  agreement  top-1 agreement\n",
            self.model_id,
            self.target * 100.0,
            self.prompts,
            self.positions / self.prompts.max(1),
            self.val_positions
        );
        for e in &self.exits {
            s.push_str(&format!(
                "{:>4}  {:>14.1}%  {:>9.3}  {:>8.1}%  {:>8.1}% | {:>14.1}%  {:>8.1}%  {:>14.1}%\n",
                e.layer,
                e.agreement_all * 100.0,
                e.threshold,
                e.exit_rate * 100.0,
                e.agreement * 100.0,
                e.val_exit_rate * 100.0,
                e.val_agreement * 100.0,
                e.val_agreement_all * 100.0
            ));
        }
        s.push_str(if self.written { "thresholds written to decoder.json\n" } else { "(dry run: nothing written)\n" });
        s
    }
}

/// Greedy generation by the whole model, observing every exit at every
/// generated position.
pub fn observe(model: &DecoderModel, exits: &[usize], prompt: &[u32], tokens: usize) -> Result<Vec<Observation>> {
    let mut cache = KvCache::new(model.config(), model.holds());
    let mut out = Vec::with_capacity(tokens);
    let mut x = model.embed(prompt)?;
    let mut pos = 0;
    for _ in 0..tokens {
        let t = x.dim(0)?;
        let mut steps = [SessionStep { cache: &mut cache, x, pos }];
        let taps = model.run(model.holds(), &mut steps, exits)?;
        let [s] = steps;
        let last = |v: &offramp_common::decoder::Tensor| v.narrow(0, t - 1, 1);
        let mut states = taps[0].iter().map(last).collect::<Result<Vec<_>, _>>()?;
        states.push(last(&s.x)?);
        let full = top1(&rows(&model.logits(&states[exits.len()])?)?[0]).0;
        let mut o = Vec::with_capacity(exits.len());
        for (e, state) in exits.iter().zip(&states) {
            let (tok, p) = top1(&rows(&model.exit_logits(*e, state)?)?[0]);
            o.push((p, tok == full));
        }
        out.push(o);
        pos += t;
        x = model.embed(&[full])?;
    }
    Ok(out)
}

/// The lowest threshold keeping the share of agreeing tokens ≥ `target`,
/// and its (exit rate, agreement) on `obs` for exit `e`.
fn choose(obs: &[Observation], e: usize, target: f64) -> (f32, f64, f64) {
    let mut v: Vec<(f32, bool)> = obs.iter().map(|o| o[e]).collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0));
    let n = v.len().max(1) as f64;
    let (mut best, mut disagree) = ((1.0f32, 0usize), 0usize);
    for (i, &(p, agree)) in v.iter().enumerate() {
        if !agree {
            disagree += 1;
        }
        // Accepting every position with probability ≥ p (ties included).
        if v.get(i + 1).is_some_and(|next| next.0 == p) {
            continue;
        }
        if 1.0 - disagree as f64 / n >= target {
            best = (p, i + 1);
        }
    }
    let (t, _) = best;
    let (rate, agreement) = apply(obs, e, t);
    (t, rate, agreement)
}

fn apply(obs: &[Observation], e: usize, t: f32) -> (f64, f64) {
    let n = obs.len().max(1) as f64;
    let taken = obs.iter().filter(|o| o[e].0 >= t).count();
    let wrong = obs.iter().filter(|o| o[e].0 >= t && !o[e].1).count();
    (taken as f64 / n, 1.0 - wrong as f64 / n)
}

pub fn prompts(file: &Path, skip: usize, n: usize) -> Result<Vec<String>> {
    let lines = read_labelled_lines(file, 6).with_context(|| format!("reading {}", file.display()))?;
    anyhow::ensure!(lines.len() >= skip + n, "{} has {} prompts; {} needed", file.display(), lines.len(), skip + n);
    Ok(lines.into_iter().skip(skip).take(n).map(|(_, t)| t).collect())
}

pub fn run(args: &CalibrateDecoderArgs) -> Result<CalibrateDecoderReport> {
    anyhow::ensure!((0.0..=1.0).contains(&args.target), "--target {}: a share in [0, 1]", args.target);
    anyhow::ensure!(args.prompts > 0 && args.tokens > 0, "--prompts and --tokens must be at least 1");
    let mut bundle = DecoderBundle::open(&args.model).with_context(|| format!("opening {}", args.model.display()))?;
    let n = bundle.num_layers();
    anyhow::ensure!(
        bundle.holds() == (0..n),
        "calibration needs the whole model; {} holds layers {:?}",
        args.model.display(),
        bundle.holds()
    );
    let exits: Vec<usize> = bundle.manifest().exits.iter().map(|e| e.layer).collect();
    anyhow::ensure!(!exits.is_empty(), "{} has no exits (import it with --exits)", args.model.display());
    let model = bundle.model()?;
    let tok = bundle.tokenizer().clone();
    let all = prompts(&args.prompts_file, 0, 2 * args.prompts)?;
    let mut cal = Vec::new();
    let mut val = Vec::new();
    for (i, p) in all.iter().enumerate() {
        let ids = tok.encode_chat(&[ChatMessage { role: "user".into(), content: p.clone() }])?;
        let obs = observe(&model, &exits, &ids, args.tokens)?;
        if i < args.prompts {
            cal.extend(obs)
        } else {
            val.extend(obs)
        }
        tracing::info!(prompt = i + 1, of = all.len(), "observed");
    }
    let mut report = Vec::new();
    let mut points = bundle.manifest().exits.clone();
    for (e, layer) in exits.iter().enumerate() {
        let (threshold, exit_rate, agreement) = choose(&cal, e, args.target);
        let (val_exit_rate, val_agreement) = apply(&val, e, threshold);
        let all_agree = |o: &[Observation]| o.iter().filter(|x| x[e].1).count() as f64 / o.len().max(1) as f64;
        report.push(ExitCalibration {
            layer: *layer,
            agreement_all: all_agree(&cal),
            threshold,
            exit_rate,
            agreement,
            val_exit_rate,
            val_agreement,
            val_agreement_all: all_agree(&val),
        });
        points[e].threshold = Some(threshold);
        points[e].calibration = format!(
            "target agreement {:.3}; {} TREC-train prompts x {} greedy tokens: exit rate {:.3}, agreement {:.3}; \
             next {} prompts: exit rate {:.3}, agreement {:.3}",
            args.target, args.prompts, args.tokens, exit_rate, agreement, args.prompts, val_exit_rate, val_agreement
        );
    }
    if !args.dry_run {
        bundle.save_exits(points)?;
    }
    Ok(CalibrateDecoderReport {
        model_id: bundle.model_id().to_string(),
        target: args.target,
        prompts: args.prompts,
        positions: cal.len(),
        val_positions: val.len(),
        exits: report,
        written: !args.dry_run,
    })
}
