//! `offramp eval`: how accurate and how cheap is a multi-exit model?
//!
//! - Every exit's accuracy when every sample is forced through it (one
//!   batched pass without early exit).
//! - With a policy (the bundle's own `policy.toml` unless `--policy` or
//!   `--no-policy`): accuracy on the real early-exit path
//!   ([`Executor::run`]), how many samples left at each exit, and the mean
//!   compute per sample relative to the plain network (multiply-adds from the
//!   manifest: a sample leaving at exit `e` costs [`Bundle::macs_to_exit`],
//!   divided by [`Bundle::full_macs`]).
//! - Wall time per sample at batch 1 with the policy and with the plain
//!   network (`Policy::never`), timed alternately sample by sample.
//! - `--sweep`: accuracy versus relative compute over a range of thresholds
//!   (the same threshold at every non-final exit), as `sweep.csv` and
//!   `sweep.svg`, simulated on cached probabilities (see [`Cache`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::simulate::{exit_probabilities, run_policy, scores, ConfidenceRule, ExitProbabilities};
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use offramp_common::data::{Dataset, Subset};
use offramp_common::{Bundle, Executor, Policy};
use serde::Serialize;

use offramp_plot::{Legend, Plot, Series};

/// Evaluate a model: per-exit accuracy, a policy's accuracy, exit shares,
/// compute and wall time; or sweep thresholds (`--sweep`).
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Model bundle directory (manifest.json + weights).
    #[arg(long, env = "OFFRAMP_MODEL")]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Exit policy file (default: the bundle's own policy.toml, if any).
    #[arg(long, env = "OFFRAMP_POLICY", conflicts_with = "no_policy")]
    pub policy: Option<PathBuf>,
    /// Ignore the bundle's policy.toml: evaluate the plain network only.
    #[arg(long)]
    pub no_policy: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Batch size of the accuracy passes.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Time at most this many samples at batch 1 (default: all; 0: no timing).
    #[arg(long)]
    pub timing_samples: Option<usize>,
    /// Sweep thresholds instead: accuracy versus relative compute as
    /// sweep.csv and sweep.svg.
    #[arg(long)]
    pub sweep: bool,
    /// Directory for sweep.csv and sweep.svg (created if missing).
    #[arg(long, default_value = ".", requires = "sweep")]
    pub sweep_out: PathBuf,
    /// Rule whose threshold the sweep varies.
    #[arg(long, value_enum, default_value = "max-prob")]
    pub rule: ConfidenceRule,
}

/// Loads a whole (unsplit) model bundle with a clear error.
pub fn load_model(dir: &Path) -> Result<Bundle> {
    if !dir.join("manifest.json").is_file() {
        if !dir.is_dir() {
            bail!("model directory {} does not exist", dir.display());
        }
        bail!("{} is not a model bundle: it has no manifest.json", dir.display());
    }
    let bundle = Bundle::load(dir).with_context(|| format!("loading the model bundle in {}", dir.display()))?;
    let n = bundle.num_blocks();
    if bundle.held() != (0..n) {
        bail!(
            "{} holds only blocks {}..{} of {n} (one side of a split model); evaluation needs the whole model",
            dir.display(),
            bundle.held().start,
            bundle.held().end
        );
    }
    Ok(bundle)
}

/// The command-line name of a subset (`val`, `test`, ...).
pub fn subset_name(subset: Subset) -> String {
    subset.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_else(|| format!("{subset:?}"))
}

/// Which data a command reads: shared by `eval`, `calibrate` and `codec-eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// MNIST directory (IDX files, gz or raw), e.g. ../shared/data/mnist; for
    /// a text model a file of `<label> <sentence>` lines, e.g.
    /// ../shared/data/text/stsa.binary.dev (with `--subset all`).
    #[arg(long, env = "OFFRAMP_DATA")]
    pub data: PathBuf,
    /// Which part of the dataset to read (text files: `train` all but the
    /// last --val-size lines, `val` those, `all` every line).
    #[arg(long, env = "OFFRAMP_SUBSET", value_enum, default_value = "val")]
    pub subset: Subset,
    /// Training digits held out at the end of the training files as the
    /// validation split (must match training).
    #[arg(long, env = "OFFRAMP_VAL_SIZE", default_value_t = 5000)]
    pub val_size: usize,
    /// Use the first N samples only.
    #[arg(long, env = "OFFRAMP_LIMIT")]
    pub limit: Option<usize>,
}

impl DataArgs {
    /// Reads the subset, keeps the first `limit` samples and checks the
    /// images fit the model's input.
    pub fn load(&self, bundle: &Bundle) -> Result<Dataset> {
        let (dir, subset) = (&self.data, self.subset);
        let mut data = Dataset::for_bundle(dir, subset, self.val_size, bundle)
            .with_context(|| format!("reading the {} split from {}", subset_name(subset), dir.display()))?;
        if let Some(limit) = self.limit {
            if limit == 0 {
                bail!("--limit must be positive");
            }
            data.truncate(limit);
        }
        if data.is_empty() {
            bail!("the {} split of {} holds no samples", subset_name(subset), dir.display());
        }
        let expected = &bundle.manifest().input.shape;
        if !data.is_ragged() && data.shape[..] != expected[..] {
            bail!(
                "images in {} have shape {:?}, model {} expects {:?}",
                dir.display(),
                data.shape,
                bundle.model_id(),
                expected
            );
        }
        Ok(data)
    }
}

/// The policy to evaluate: `--policy FILE`, else the bundle's own
/// `policy.toml` unless `no_policy`. Returns it with where it came from.
pub fn load_policy(file: Option<&Path>, no_policy: bool, bundle: &Bundle) -> Result<Option<(Policy, PathBuf)>> {
    let path = match file {
        Some(p) => p.to_path_buf(),
        None if no_policy => return Ok(None),
        None => match bundle.policy_path() {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    let policy = Policy::load(&path, bundle.num_exits())
        .with_context(|| format!("loading the exit policy for model {}", bundle.model_id()))?;
    Ok(Some((policy, path)))
}

/// Per exit and sample, what a threshold search needs: the rule's statistic,
/// whether the exit's prediction is right, and what leaving there costs.
///
/// Simulating a threshold vector on it is equivalent to running the policy
/// with those thresholds: exits are evaluated in order, a sample leaves at the
/// first exit whose rule fires, and the final exit always answers
/// (`cache_simulation_matches_executor` checks this against
/// [`Executor::run`]).
#[derive(Debug, Clone)]
pub struct Cache {
    pub rule: ConfidenceRule,
    /// `scores[exit][sample]`: the rule's statistic.
    pub scores: Vec<Vec<f32>>,
    /// `correct[exit][sample]`: the exit's prediction equals the label.
    pub correct: Vec<Vec<bool>>,
    /// Multiply-adds for a sample that leaves at each exit.
    pub macs: Vec<u64>,
    /// Multiply-adds of the plain network.
    pub full_macs: u64,
}

impl Cache {
    pub fn new(probs: &ExitProbabilities, labels: &[u8], bundle: &Bundle, rule: ConfidenceRule) -> Self {
        let correct = (0..probs.num_exits())
            .map(|e| (0..probs.len()).map(|i| probs.prediction(e, i) == labels[i] as usize).collect())
            .collect();
        Self {
            rule,
            scores: scores(rule, probs),
            correct,
            macs: (0..bundle.num_exits()).map(|e| bundle.macs_to_exit(e)).collect(),
            full_macs: bundle.full_macs(),
        }
    }

    pub fn len(&self) -> usize {
        self.scores.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn num_exits(&self) -> usize {
        self.scores.len()
    }

    /// Relative compute of a sample leaving at exit `e`.
    pub fn relative_macs(&self, e: usize) -> f64 {
        self.macs[e] as f64 / self.full_macs as f64
    }

    /// Number of samples exit `e` gets right when all are forced through it.
    pub fn forced_correct(&self, e: usize) -> usize {
        self.correct[e].iter().filter(|&&c| c).count()
    }

    /// The exit sample `i` takes with `thresholds` (one per non-final exit;
    /// `None`: that exit never answers).
    pub fn exit_of(&self, i: usize, thresholds: &[Option<f32>]) -> usize {
        let last = self.num_exits() - 1;
        (0..last)
            .find(|&e| thresholds.get(e).copied().flatten().is_some_and(|t| self.rule.fires(self.scores[e][i], t)))
            .unwrap_or(last)
    }

    /// Accuracy, exit counts and compute with `thresholds`.
    pub fn outcome(&self, thresholds: &[Option<f32>]) -> Outcome {
        let taken: Vec<(usize, bool)> = (0..self.len())
            .map(|i| {
                let e = self.exit_of(i, thresholds);
                (e, self.correct[e][i])
            })
            .collect();
        Outcome::of(&taken, &self.macs, self.full_macs)
    }
}

/// What a policy did on a dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub accuracy: f64,
    /// Samples that left at each exit, in exit order.
    pub exit_counts: Vec<usize>,
    /// Accuracy among the samples that left at each exit (`None`: none did).
    pub taken_accuracy: Vec<Option<f64>>,
    /// Mean multiply-adds per sample over those of the plain network.
    pub relative_compute: f64,
}

impl Outcome {
    /// From `(exit taken, answer right)` per sample and each exit's cost.
    pub fn of(taken: &[(usize, bool)], macs: &[u64], full_macs: u64) -> Self {
        let k = macs.len();
        let (mut counts, mut right) = (vec![0usize; k], vec![0usize; k]);
        let mut total_macs = 0u128;
        for &(e, ok) in taken {
            counts[e] += 1;
            right[e] += usize::from(ok);
            total_macs += u128::from(macs[e]);
        }
        let n = taken.len().max(1) as f64;
        Outcome {
            accuracy: right.iter().sum::<usize>() as f64 / n,
            taken_accuracy: counts.iter().zip(&right).map(|(&c, &r)| (c > 0).then(|| r as f64 / c as f64)).collect(),
            exit_counts: counts,
            relative_compute: total_macs as f64 / n / full_macs.max(1) as f64,
        }
    }
}

/// `offramp eval` (without `--sweep`) as one object.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model_id: String,
    pub subset: String,
    pub n: usize,
    /// Where the policy came from; `None`: no policy, the plain network.
    pub policy: Option<String>,
    pub exit_names: Vec<String>,
    /// Each exit's accuracy with every sample forced through it (the last:
    /// the full network's).
    pub exit_accuracy: Vec<f64>,
    /// Relative compute of a sample leaving at each exit.
    pub exit_relative_compute: Vec<f64>,
    /// Accuracy with the policy (real early-exit path).
    pub accuracy: f64,
    pub exit_counts: Vec<usize>,
    pub taken_accuracy: Vec<Option<f64>>,
    pub relative_compute: f64,
    pub full_macs: u64,
    /// Samples timed at batch 1 (0: timing skipped).
    pub timing_samples: usize,
    pub us_per_sample_policy: Option<f64>,
    pub us_per_sample_full: Option<f64>,
    /// `us_per_sample_full / us_per_sample_policy`.
    pub speedup: Option<f64>,
}

/// One threshold of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepPoint {
    pub threshold: f32,
    pub accuracy: f64,
    pub relative_compute: f64,
    /// Share of samples leaving at each exit.
    pub exit_shares: Vec<f64>,
}

/// `offramp eval --sweep` as one object.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub model_id: String,
    pub subset: String,
    pub n: usize,
    pub rule: ConfidenceRule,
    pub exit_names: Vec<String>,
    pub exit_accuracy: Vec<f64>,
    pub exit_relative_compute: Vec<f64>,
    /// The policy's point (simulated), when one was given.
    pub policy: Option<String>,
    pub policy_point: Option<Outcome>,
    pub points: Vec<SweepPoint>,
    pub csv: PathBuf,
    pub svg: PathBuf,
}

/// Runs `offramp eval` and prints its report.
/// What `offramp eval` measured: one policy's evaluation, or a sweep.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum EvalOutput {
    Eval {
        #[serde(flatten)]
        report: EvalReport,
        /// The rendered table (it names the bundle's blocks and exits).
        #[serde(skip)]
        table: String,
    },
    Sweep(SweepReport),
}

impl EvalOutput {
    pub fn render(&self) -> String {
        match self {
            EvalOutput::Eval { table, .. } => table.clone(),
            EvalOutput::Sweep(r) => sweep_table(r),
        }
    }
}

pub fn run(args: &EvalArgs) -> Result<EvalOutput> {
    if args.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let bundle = load_model(&args.model)?;
    let data = args.data.load(&bundle)?;
    let policy = load_policy(args.policy.as_deref(), args.no_policy, &bundle)?;
    let exec = Executor::new(Arc::new(bundle));
    tracing::info!(
        model = exec.bundle().model_id(), subset = subset_name(args.data.subset), n = data.len(),
        policy = ?policy.as_ref().map(|p| p.1.display().to_string()), sweep = args.sweep, "evaluating"
    );
    if args.sweep {
        return Ok(EvalOutput::Sweep(sweep(&exec, &data, args, policy.as_ref())?));
    }
    let timing = args.timing_samples.unwrap_or(data.len()).min(data.len());
    let report = evaluate(&exec, &data, subset_name(args.data.subset), policy.as_ref(), args.batch_size, timing)?;
    let table = table(&report, exec.bundle());
    Ok(EvalOutput::Eval { report, table })
}

/// Forced-exit accuracies, the policy's outcome on the real early-exit path,
/// and (when `timing > 0`) batch-1 wall time over the first `timing` samples.
pub fn evaluate(
    exec: &Executor,
    data: &Dataset,
    subset: String,
    policy: Option<&(Policy, PathBuf)>,
    batch_size: usize,
    timing: usize,
) -> Result<EvalReport> {
    let bundle = exec.bundle();
    let probs = exit_probabilities(exec, data, batch_size).context("running every exit over the dataset")?;
    let never = Policy::never(bundle.num_exits());
    let active = policy.map_or(&never, |p| &p.0);
    let answers = run_policy(exec, data, active, batch_size).context("running the early-exit path")?;
    let taken: Vec<(usize, bool)> =
        answers.iter().zip(&data.labels).map(|(a, &l)| (a.exit, a.prediction == l as usize)).collect();
    let macs: Vec<u64> = (0..bundle.num_exits()).map(|e| bundle.macs_to_exit(e)).collect();
    let outcome = Outcome::of(&taken, &macs, bundle.full_macs());

    let (us_policy, us_full) = if timing > 0 {
        let (p, f) = time_batch1(exec, data, policy.map(|p| &p.0), timing)?;
        (Some(p), Some(f))
    } else {
        (None, None)
    };
    Ok(EvalReport {
        model_id: bundle.model_id().to_string(),
        subset,
        n: data.len(),
        policy: policy.map(|p| p.1.display().to_string()),
        exit_names: bundle.manifest().exits.iter().map(|e| e.name.clone()).collect(),
        exit_accuracy: probs.exit_accuracy(&data.labels),
        exit_relative_compute: macs.iter().map(|&m| m as f64 / bundle.full_macs() as f64).collect(),
        accuracy: outcome.accuracy,
        exit_counts: outcome.exit_counts,
        taken_accuracy: outcome.taken_accuracy,
        relative_compute: outcome.relative_compute,
        full_macs: bundle.full_macs(),
        timing_samples: timing,
        us_per_sample_policy: us_policy,
        us_per_sample_full: us_full,
        speedup: us_policy.zip(us_full).map(|(p, f)| f / p),
    })
}

/// Mean microseconds per sample of [`Executor::run`] at batch 1 with `policy`
/// and with `Policy::never` (the plain network), over the first `count`
/// samples. The two alternate sample by sample (and swap order every sample)
/// so drift hits both alike. Without a policy only the plain network is
/// timed and both means are the same.
fn time_batch1(exec: &Executor, data: &Dataset, policy: Option<&Policy>, count: usize) -> Result<(f64, f64)> {
    let bundle = exec.bundle();
    let range = 0..bundle.num_blocks();
    let never = Policy::never(bundle.num_exits());
    let inputs = (0..count).map(|i| exec.batch_of(0, &[data.image(i)])).collect::<Result<Vec<_>, _>>()?;
    let time = |x: &offramp_common::model::Batch, p: &Policy| -> Result<f64> {
        let started = Instant::now();
        let out = exec.run(x, range.clone(), p, vec![Vec::new()])?;
        let elapsed = started.elapsed().as_secs_f64();
        std::hint::black_box(out);
        Ok(elapsed)
    };
    // Warm-up (allocator, caches, lazily initialised kernels).
    for x in inputs.iter().take(16) {
        time(x, &never)?;
        if let Some(p) = policy {
            time(x, p)?;
        }
    }
    let (mut t_policy, mut t_full) = (0.0, 0.0);
    for (i, x) in inputs.iter().enumerate() {
        match policy {
            None => t_full += time(x, &never)?,
            Some(p) if i % 2 == 0 => {
                t_policy += time(x, p)?;
                t_full += time(x, &never)?;
            }
            Some(p) => {
                t_full += time(x, &never)?;
                t_policy += time(x, p)?;
            }
        }
    }
    if policy.is_none() {
        t_policy = t_full;
    }
    let per = |t: f64| t * 1e6 / count as f64;
    Ok((per(t_policy), per(t_full)))
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

/// The readable form of an [`EvalReport`].
pub fn table(r: &EvalReport, bundle: &Bundle) -> String {
    let mut s = String::new();
    let policy = r.policy.as_deref().unwrap_or("none (plain network)");
    let _ = writeln!(s, "model {}, subset {} (n={}), policy: {policy}", r.model_id, r.subset, r.n);
    let _ = writeln!(
        s,
        "{:>4}  {:<12} {:<14} {:>8}  {:>10}  {:>7} {:>7}  {:>9}",
        "exit", "name", "after block", "compute", "forced acc", "taken", "share", "taken acc"
    );
    for e in 0..r.exit_names.len() {
        let b = bundle.manifest().exits[e].after_block;
        let _ = writeln!(
            s,
            "{:>4}  {:<12} {:<14} {:>8.3}  {:>10}  {:>7} {:>7}  {:>9}",
            e,
            r.exit_names[e],
            format!("{b} ({})", bundle.manifest().blocks[b].name),
            r.exit_relative_compute[e],
            pct(r.exit_accuracy[e]),
            r.exit_counts[e],
            format!("{:.1}%", r.exit_counts[e] as f64 * 100.0 / r.n.max(1) as f64),
            r.taken_accuracy[e].map_or("-".into(), pct),
        );
    }
    let full = r.exit_accuracy.last().copied().unwrap_or(0.0);
    let _ = writeln!(
        s,
        "policy: accuracy {} (final exit forced {}, {:+.2} pp), relative compute {:.3} of {} multiply-adds",
        pct(r.accuracy),
        pct(full),
        (r.accuracy - full) * 100.0,
        r.relative_compute,
        r.full_macs
    );
    match (r.us_per_sample_policy, r.us_per_sample_full, r.speedup) {
        (Some(p), Some(f), Some(x)) => {
            let _ = writeln!(
                s,
                "wall time per sample at batch 1 ({} samples): policy {p:.1} us, full network {f:.1} us, speedup {x:.2}x",
                r.timing_samples
            );
        }
        _ => {
            let _ = writeln!(s, "wall time: not measured (--timing-samples 0)");
        }
    }
    s
}

/// Thresholds a sweep tries: a 0.01 grid over [0, 1] plus the percentiles of
/// the non-final exits' statistics (where the curve bends), deduplicated.
pub fn sweep_thresholds(cache: &Cache) -> Vec<f32> {
    let mut t: Vec<f32> = (0..=100).map(|k| k as f32 / 100.0).collect();
    let mut pooled: Vec<f32> = cache.scores[..cache.num_exits() - 1]
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite() && (0.0..=1.0).contains(v))
        .collect();
    pooled.sort_by(f32::total_cmp);
    if !pooled.is_empty() {
        for k in 0..=200 {
            t.push(pooled[(k * (pooled.len() - 1)) / 200]);
        }
    }
    t.sort_by(f32::total_cmp);
    t.dedup();
    t
}

/// One sweep point per threshold, simulated on the cache.
pub fn sweep_points(cache: &Cache, thresholds: &[f32]) -> Vec<SweepPoint> {
    let n = cache.len().max(1) as f64;
    thresholds
        .iter()
        .map(|&t| {
            let o = cache.outcome(&vec![Some(t); cache.num_exits() - 1]);
            SweepPoint {
                threshold: t,
                accuracy: o.accuracy,
                relative_compute: o.relative_compute,
                exit_shares: o.exit_counts.iter().map(|&c| c as f64 / n).collect(),
            }
        })
        .collect()
}

/// `offramp eval --sweep`: one pass over the data, then every threshold
/// simulated on the cached probabilities; writes `sweep.csv` and `sweep.svg`.
pub fn sweep(
    exec: &Executor,
    data: &Dataset,
    args: &EvalArgs,
    policy: Option<&(Policy, PathBuf)>,
) -> Result<SweepReport> {
    let bundle = exec.bundle();
    let probs = exit_probabilities(exec, data, args.batch_size).context("running every exit over the dataset")?;
    let cache = Cache::new(&probs, &data.labels, bundle, args.rule);
    let points = sweep_points(&cache, &sweep_thresholds(&cache));
    let policy_point = policy.map(|(p, _)| {
        let taken: Vec<(usize, bool)> = crate::simulate::simulate(p, &probs)
            .into_iter()
            .enumerate()
            .map(|(i, e)| (e, cache.correct[e][i]))
            .collect();
        Outcome::of(&taken, &cache.macs, cache.full_macs)
    });
    let exit_names: Vec<String> = bundle.manifest().exits.iter().map(|e| e.name.clone()).collect();
    let report = SweepReport {
        model_id: bundle.model_id().to_string(),
        subset: subset_name(args.data.subset),
        n: data.len(),
        rule: args.rule,
        exit_accuracy: probs.exit_accuracy(&data.labels),
        exit_relative_compute: (0..cache.num_exits()).map(|e| cache.relative_macs(e)).collect(),
        exit_names,
        policy: policy.map(|p| p.1.display().to_string()),
        policy_point,
        points,
        csv: args.sweep_out.join("sweep.csv"),
        svg: args.sweep_out.join("sweep.svg"),
    };
    std::fs::create_dir_all(&args.sweep_out)
        .with_context(|| format!("creating the sweep output directory {}", args.sweep_out.display()))?;
    std::fs::write(&report.csv, sweep_csv(&report)).with_context(|| format!("writing {}", report.csv.display()))?;
    sweep_plot(&report).save(&report.svg).with_context(|| format!("writing {}", report.svg.display()))?;
    Ok(report)
}

/// `threshold,accuracy,relative_compute,share_<exit>...`, one row per point.
pub fn sweep_csv(r: &SweepReport) -> String {
    let mut s = String::from("threshold,accuracy,relative_compute");
    for name in &r.exit_names {
        let _ = write!(s, ",share_{}", name.replace([',', '"', '\n'], "_"));
    }
    s.push('\n');
    for p in &r.points {
        let _ = write!(s, "{},{:.6},{:.6}", p.threshold, p.accuracy, p.relative_compute);
        for share in &p.exit_shares {
            let _ = write!(s, ",{share:.6}");
        }
        s.push('\n');
    }
    s
}

/// Accuracy (%) against relative compute: the sweep curve, each exit forced,
/// and the policy's point.
pub fn sweep_plot(r: &SweepReport) -> Plot {
    let mut pts: Vec<(f64, f64)> = r.points.iter().map(|p| (p.relative_compute, p.accuracy * 100.0)).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let forced: Vec<(f64, f64)> =
        r.exit_relative_compute.iter().zip(&r.exit_accuracy).map(|(&c, &a)| (c, a * 100.0)).collect();
    let mut plot = Plot::new(
        format!("{}: accuracy vs compute ({} threshold sweep, {}, n={})", r.model_id, r.rule.name(), r.subset, r.n),
        "mean multiply-adds per sample / plain network",
        "accuracy (%)",
    )
    .series(Series::line_points(format!("{} threshold at every exit", r.rule.name()), pts))
    .marks_name("marked: exits forced, policy")
    .legend(Legend::BottomRight);
    for (e, &(c, a)) in forced.iter().enumerate() {
        plot = plot.mark(format!("exit {e} ({}) forced", r.exit_names[e]), c, a);
    }
    if let Some(o) = &r.policy_point {
        plot = plot.mark("policy", o.relative_compute, o.accuracy * 100.0);
    }
    plot
}

/// The readable form of a [`SweepReport`]: about 20 of its points.
pub fn sweep_table(r: &SweepReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "model {}, subset {} (n={}), {} threshold at every non-final exit, {} thresholds",
        r.model_id,
        r.subset,
        r.n,
        r.rule.name(),
        r.points.len()
    );
    let _ = write!(s, "{:>10}  {:>8}  {:>8}", "threshold", "accuracy", "compute");
    for name in &r.exit_names {
        let _ = write!(s, "  {:>10}", format!("{name} %"));
    }
    s.push('\n');
    let step = r.points.len().div_ceil(20).max(1);
    for (k, p) in r.points.iter().enumerate() {
        if k % step != 0 && k + 1 != r.points.len() {
            continue;
        }
        let _ = write!(s, "{:>10.4}  {:>8}  {:>8.3}", p.threshold, pct(p.accuracy), p.relative_compute);
        for share in &p.exit_shares {
            let _ = write!(s, "  {:>10.1}", share * 100.0);
        }
        s.push('\n');
    }
    for (e, name) in r.exit_names.iter().enumerate() {
        let _ = writeln!(
            s,
            "exit {e} ({name}) forced: accuracy {}, compute {:.3}",
            pct(r.exit_accuracy[e]),
            r.exit_relative_compute[e]
        );
    }
    if let (Some(src), Some(o)) = (&r.policy, &r.policy_point) {
        let _ = writeln!(s, "policy {src}: accuracy {}, compute {:.3}", pct(o.accuracy), o.relative_compute);
    }
    let _ = writeln!(s, "wrote {} and {}", r.csv.display(), r.svg.display());
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use offramp_common::model::arch::{init_weights, Arch};
    use offramp_common::policy::Rule;
    use offramp_common::rng::SplitMix64;

    /// A seeded tiny 3-exit model.
    pub(crate) fn tiny(seed: u64) -> Executor {
        let manifest = Arch::Tiny.manifest("t");
        let weights = init_weights(&manifest, seed).unwrap();
        Executor::new(Arc::new(Bundle::from_parts(manifest, weights).unwrap()))
    }

    /// Synthetic digits: random pixels with a class-dependent bright band, so
    /// exits disagree in confidence.
    pub(crate) fn digits(n: usize, seed: u64) -> Dataset {
        let mut rng = SplitMix64::new(seed);
        let mut images = Vec::with_capacity(n * 784);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let label = rng.below(10);
            for p in 0..784 {
                let band = (p / 28) / 3 == label;
                images.push(if band { 0.6 + 0.4 * rng.next_f32() } else { 0.3 * rng.next_f32() });
            }
            labels.push(label as u8);
        }
        Dataset { images, labels, shape: vec![1, 28, 28], offset: 0, offsets: None, texts: vec![] }
    }

    #[test]
    fn cache_simulation_matches_executor() {
        let exec = tiny(3);
        let data = digits(96, 11);
        let probs = exit_probabilities(&exec, &data, 40).unwrap();
        for rule in [ConfidenceRule::MaxProb, ConfidenceRule::Entropy, ConfidenceRule::Margin] {
            let cache = Cache::new(&probs, &data.labels, exec.bundle(), rule);
            // Thresholds halfway between neighbouring statistics (no ties),
            // spread so that every exit gets some samples.
            let mut pooled: Vec<f32> = cache.scores[..2].iter().flatten().copied().collect();
            pooled.sort_by(f32::total_cmp);
            let mid = |q: usize| {
                let k = q * (pooled.len() - 2) / 100;
                (pooled[k] + pooled[k + 1]) / 2.0
            };
            let mut spread = false;
            for thresholds in [[mid(20), mid(60)], [mid(50), mid(50)], [mid(80), mid(10)], [mid(0), mid(99)]] {
                let policy =
                    Policy::from_rules(vec![rule.rule(thresholds[0]), rule.rule(thresholds[1]), Rule::Never]).unwrap();
                let real = run_policy(&exec, &data, &policy, 32).unwrap();
                let sim = cache.outcome(&thresholds.map(Some));
                let taken: Vec<(usize, bool)> =
                    real.iter().zip(&data.labels).map(|(a, &l)| (a.exit, a.prediction == l as usize)).collect();
                for (i, a) in real.iter().enumerate() {
                    assert_eq!(a.exit, cache.exit_of(i, &thresholds.map(Some)), "{rule:?} {thresholds:?} sample {i}");
                }
                assert_eq!(Outcome::of(&taken, &cache.macs, cache.full_macs), sim);
                // The general policy simulation agrees too.
                let general = crate::simulate::simulate(&policy, &probs);
                assert_eq!(general, real.iter().map(|a| a.exit).collect::<Vec<_>>());
                spread |= sim.exit_counts.iter().all(|&c| c > 0);
            }
            assert!(spread, "{rule:?}: no threshold pair used every exit");
        }
    }

    #[test]
    fn evaluate_reports_policy_counts_and_compute() {
        let exec = tiny(5);
        let data = digits(50, 2);
        let always = Policy::uniform(Rule::Always, 3);
        let r = evaluate(&exec, &data, "t".into(), Some(&(always, "x".into())), 16, 4).unwrap();
        assert_eq!(r.exit_counts, vec![50, 0, 0]);
        assert_eq!(r.taken_accuracy[1], None);
        assert_eq!(r.accuracy, r.exit_accuracy[0]);
        let b = exec.bundle();
        assert!((r.relative_compute - b.macs_to_exit(0) as f64 / b.full_macs() as f64).abs() < 1e-12);
        assert!(r.us_per_sample_policy.unwrap() > 0.0 && r.speedup.is_some());
        let plain = evaluate(&exec, &data, "t".into(), None, 16, 0).unwrap();
        assert_eq!(plain.exit_counts, vec![0, 0, 50]);
        assert_eq!(plain.accuracy, plain.exit_accuracy[2]);
        assert!(plain.relative_compute > 1.0, "the plain path still evaluates the early heads");
        assert_eq!(plain.speedup, None);
        let json = serde_json::to_value(&plain).unwrap();
        for key in ["n", "accuracy", "exit_counts", "exit_accuracy", "taken_accuracy", "relative_compute", "speedup"] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert!(table(&plain, b).contains("plain network"));
    }

    #[test]
    fn sweep_writes_csv_and_svg() {
        let exec = tiny(9);
        let data = digits(64, 4);
        let dir = std::env::temp_dir().join(format!("offramp-sweep-{}", std::process::id()));
        let args = EvalArgs {
            model: "unused".into(),
            data: DataArgs { data: "unused".into(), subset: Subset::Val, val_size: 0, limit: None },
            policy: None,
            no_policy: false,
            json: false,
            batch_size: 32,
            timing_samples: None,
            sweep: true,
            sweep_out: dir.clone(),
            rule: ConfidenceRule::MaxProb,
        };
        let policy = (Policy::uniform(Rule::MaxProb { threshold: 0.15 }, 3), PathBuf::from("p.toml"));
        let r = sweep(&exec, &data, &args, Some(&policy)).unwrap();
        let csv = std::fs::read_to_string(dir.join("sweep.csv")).unwrap();
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some("threshold,accuracy,relative_compute,share_early,share_middle,share_final"));
        assert_eq!(lines.count(), r.points.len());
        // Threshold 0 sends everything out of the first exit, 1.0 (nearly) nothing.
        assert_eq!(r.points[0].exit_shares[0], 1.0);
        let svg = std::fs::read_to_string(dir.join("sweep.svg")).unwrap();
        offramp_plot::check_well_formed(&svg).unwrap();
        assert!(svg.contains("exit 2 (final) forced") && svg.contains(">policy</text>"));
        assert!(sweep_table(&r).contains("wrote"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn clear_errors_for_bad_inputs() {
        let missing = std::env::temp_dir().join("offramp-no-such-model-dir");
        let e = load_model(&missing).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let dir = std::env::temp_dir().join(format!("offramp-eval-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = load_model(&dir).unwrap_err().to_string();
        assert!(e.contains("no manifest.json"), "{e}");
        // A split bundle, a bad policy, a missing subset.
        let exec = tiny(1);
        let (edge, _) = exec.bundle().split(2).unwrap();
        edge.save(dir.join("edge")).unwrap();
        let e = load_model(&dir.join("edge")).unwrap_err().to_string();
        assert!(e.contains("split model"), "{e}");
        exec.bundle().save(dir.join("whole")).unwrap();
        let bundle = load_model(&dir.join("whole")).unwrap();
        std::fs::write(dir.join("bad.toml"), "[[exit]]\nindex = 7\nrule = \"never\"\n").unwrap();
        let e = format!("{:#}", load_policy(Some(&dir.join("bad.toml")), false, &bundle).unwrap_err());
        assert!(e.contains("exit 7"), "{e}");
        assert!(load_policy(None, false, &bundle).unwrap().is_none());
        let e = format!(
            "{:#}",
            DataArgs { data: dir.clone(), subset: Subset::Test, val_size: 0, limit: None }.load(&bundle).unwrap_err()
        );
        assert!(e.contains("test split") && e.contains("t10k"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
