//! `offramp drift`: the drift scenario of the accuracy-budget controller.
//!
//! A stream of validation digits that is clean for `--clean` inputs and then
//! drifts (`--drift noise|blur|rotate`, generated deterministically from the
//! validation split, each repetition of a digit transformed with its own
//! seed) goes through a real cloud on loopback twice: once to an edge with
//! the calibrated static policy, once to an edge with `--accuracy-budget`.
//! Every answer is scored against its label; the full model's own accuracy
//! on the same inputs is the reference, so a window's *loss* is the full
//! model's accuracy minus the edge's, in the window. Writes `drift.csv` (one
//! row per window) and `drift.svg` (loss and exit rate over the stream).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use offramp_common::data::{Dataset, Subset};
use offramp_common::rng::SplitMix64;
use offramp_common::{paths, Bundle, Executor, Policy};
use offramp_edge::adapt::BudgetConfig;
use offramp_edge::transport::TransportKind;
use offramp_edge::{Answer, Edge, Tier};
use offramp_plot::{Plot, Series};
use serde::Serialize;

use crate::harness::{cloud_config, Topology};

/// How the inputs change after the clean part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Drift {
    /// Gaussian pixel noise of standard deviation `--strength` (clamped to [0, 1]).
    Noise,
    /// A box blur of radius `--strength` pixels (rounded, at least 1).
    Blur,
    /// A rotation by `--strength` degrees, alternating in sign.
    Rotate,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DriftArgs {
    /// The whole model (the edge gets blocks 0..K, the cloud K..N).
    #[arg(long, default_value = "models/b-lenet-mnist")]
    pub model: PathBuf,
    /// MNIST directory (train-*-ubyte.gz); the stream comes from its
    /// validation split (the last --val-size digits, never trained on).
    #[arg(long, env = "OFFRAMP_MNIST")]
    pub data: PathBuf,
    #[arg(long, default_value_t = 5000)]
    pub val_size: usize,
    /// Split point K [default: the first K with an edge exit before it].
    #[arg(long)]
    pub split: Option<usize>,
    /// The controller's accuracy budget.
    #[arg(long, default_value = "1%", value_parser = offramp_common::units::parse_ratio)]
    pub budget: f64,
    /// Fraction of edge-answered inputs sent as shadow requests.
    #[arg(long, default_value = "10%", value_parser = offramp_common::units::parse_ratio)]
    pub shadow: f64,
    /// Static policy to compare with [default: the bundle's policy.toml].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "noise")]
    pub drift: Drift,
    /// Strength of the drift (see --drift).
    #[arg(long, default_value_t = 0.4)]
    pub strength: f32,
    /// Clean inputs before the drift starts.
    #[arg(long, default_value_t = 3000)]
    pub clean: usize,
    /// Drifted inputs after it.
    #[arg(long, default_value_t = 12000)]
    pub drifted: usize,
    /// Inputs per reporting window.
    #[arg(long, default_value_t = 500)]
    pub window: usize,
    /// Time between inputs (a device's input rate; shadows use the gaps).
    #[arg(long, default_value = "1ms", value_parser = offramp_common::units::parse_duration)]
    pub interval: Duration,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Directory for drift.csv and drift.svg.
    #[arg(long, default_value = "target/drift")]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// One reporting window.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    pub drifted: bool,
    pub full_accuracy: f64,
    pub static_accuracy: f64,
    pub static_loss: f64,
    pub static_exit_rate: f64,
    pub adaptive_accuracy: f64,
    pub adaptive_loss: f64,
    pub adaptive_exit_rate: f64,
    /// The adaptive edge's threshold of its first exit, mean over the window.
    pub adaptive_threshold: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    pub model: String,
    pub split: usize,
    pub drift: Drift,
    pub strength: f32,
    pub budget: f64,
    pub shadow: f64,
    pub clean: usize,
    pub drifted: usize,
    pub windows: Vec<Window>,
    /// Drifted inputs until the adaptive edge's loss stayed within the
    /// budget in every later window (`None`: it never did).
    pub adapted_after: Option<usize>,
    /// Drifted windows in which the static policy broke the budget.
    pub static_violations: usize,
    pub drifted_windows: usize,
    /// Shadow requests the adaptive edge sent and dropped.
    pub shadows_sent: u64,
    pub shadows_dropped: u64,
    pub csv: PathBuf,
    pub plot: PathBuf,
}

impl DriftReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "drift scenario: model {} at K = {}, {} clean then {} inputs with {:?} (strength {}), budget {:.1}%, \
             shadow {:.0}%\n\n",
            self.model,
            self.split,
            self.clean,
            self.drifted,
            self.drift,
            self.strength,
            self.budget * 100.0,
            self.shadow * 100.0
        );
        s += "  inputs         phase    full acc  static acc  loss   exit  | adaptive acc  loss   exit  threshold\n";
        for w in &self.windows {
            s += &format!(
                "  {:>5}..{:<6}  {:<7}  {:>7.2}%  {:>9.2}%  {:>5.2}  {:>4.0}% | {:>11.2}%  {:>5.2}  {:>4.0}%  {:>8.3}\n",
                w.start,
                w.end,
                if w.drifted { "drifted" } else { "clean" },
                w.full_accuracy * 100.0,
                w.static_accuracy * 100.0,
                w.static_loss * 100.0,
                w.static_exit_rate * 100.0,
                w.adaptive_accuracy * 100.0,
                w.adaptive_loss * 100.0,
                w.adaptive_exit_rate * 100.0,
                w.adaptive_threshold
            );
        }
        s += &format!(
            "\n  static policy over budget in {} of {} drifted windows\n",
            self.static_violations, self.drifted_windows
        );
        match self.adapted_after {
            Some(n) => s += &format!("  adaptive: within budget in every window from {n} drifted inputs on\n"),
            None => s += "  adaptive: the last drifted window is over budget (not adapted)\n",
        }
        s += &format!(
            "  shadow requests: {} sent, {} dropped\n  wrote {} and {}\n",
            self.shadows_sent,
            self.shadows_dropped,
            self.csv.display(),
            self.plot.display()
        );
        s
    }
}

/// Image side of MNIST digits.
const SIDE: usize = 28;

/// `image` transformed by `drift` with `seed` (deterministic).
pub fn transform(image: &[f32], drift: Drift, strength: f32, seed: u64) -> Vec<f32> {
    match drift {
        Drift::Noise => {
            let mut rng = SplitMix64::new(seed);
            image
                .iter()
                .map(|&p| {
                    // Box-Muller.
                    let (u, v) = (rng.next_f32().max(1e-7), rng.next_f32());
                    let g = (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos();
                    (p + strength * g).clamp(0.0, 1.0)
                })
                .collect()
        }
        Drift::Blur => {
            let r = (strength.round() as isize).max(1);
            let mut out = vec![0.0; image.len()];
            for y in 0..SIDE as isize {
                for x in 0..SIDE as isize {
                    let (mut sum, mut n) = (0.0, 0.0);
                    for dy in -r..=r {
                        for dx in -r..=r {
                            let (yy, xx) = (y + dy, x + dx);
                            if (0..SIDE as isize).contains(&yy) && (0..SIDE as isize).contains(&xx) {
                                sum += image[yy as usize * SIDE + xx as usize];
                                n += 1.0;
                            }
                        }
                    }
                    out[y as usize * SIDE + x as usize] = sum / n;
                }
            }
            out
        }
        Drift::Rotate => {
            let sign = if seed.is_multiple_of(2) { 1.0 } else { -1.0 };
            let (s, c) = (sign * strength.to_radians()).sin_cos();
            let mid = (SIDE as f32 - 1.0) / 2.0;
            let mut out = vec![0.0; image.len()];
            for y in 0..SIDE {
                for x in 0..SIDE {
                    // Where this output pixel comes from (inverse rotation).
                    let (fx, fy) = (x as f32 - mid, y as f32 - mid);
                    let (sx, sy) = (c * fx + s * fy + mid, -s * fx + c * fy + mid);
                    let (ix, iy) = (sx.round(), sy.round());
                    if ix >= 0.0 && iy >= 0.0 && (ix as usize) < SIDE && (iy as usize) < SIDE {
                        out[y * SIDE + x] = image[iy as usize * SIDE + ix as usize];
                    }
                }
            }
            out
        }
    }
}

/// The stream: `clean` validation digits in order (cycling), then `drifted`
/// more, transformed.
fn stream(val: &Dataset, args: &DriftArgs) -> Dataset {
    let n = args.clean + args.drifted;
    let mut d = Dataset {
        images: Vec::with_capacity(n * val.image_len()),
        labels: Vec::with_capacity(n),
        shape: val.shape.clone(),
        offset: 0,
        offsets: None,
        texts: vec![],
    };
    for i in 0..n {
        let image = val.image(i % val.len());
        if i < args.clean {
            d.images.extend_from_slice(image);
        } else {
            d.images.extend(transform(image, args.drift, args.strength, args.seed.wrapping_mul(1 << 32) ^ i as u64));
        }
        d.labels.push(val.labels[i % val.len()]);
    }
    d
}

/// The full model's predictions (no early exit), in batches.
fn full_predictions(bundle: &Bundle, data: &Dataset) -> Result<Vec<u32>> {
    let exec = Executor::new(Arc::new(bundle.clone()));
    let never = Policy::never(bundle.num_exits());
    let mut out = Vec::with_capacity(data.len());
    for start in (0..data.len()).step_by(256) {
        let end = (start + 256).min(data.len());
        let x = exec.batch_at(0, &data.images[start * data.image_len()..end * data.image_len()], end - start)?;
        let r = exec.run(&x, 0..bundle.num_blocks(), &never, vec![vec![]; end - start])?;
        out.extend(r.exited.iter().map(|e| e.as_ref().map_or(u32::MAX, |e| e.prediction as u32)));
    }
    Ok(out)
}

/// Sends the stream through `edge` one input at a time, `interval` apart.
async fn answers(edge: Arc<Edge>, data: &Dataset, interval: Duration, label: &str) -> Vec<Answer> {
    let mut out = Vec::with_capacity(data.len());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let step = (data.len() / 10).max(1);
    for i in 0..data.len() {
        tick.tick().await;
        out.push(edge.classify(Some(i as u64), data.image(i).to_vec()).await);
        if (i + 1) % step == 0 {
            eprintln!("  {label}: {} of {} inputs", i + 1, data.len());
        }
    }
    out
}

pub async fn run(args: DriftArgs) -> Result<DriftReport> {
    if args.window == 0 || args.drifted < args.window {
        bail!("--window must be positive and at most --drifted ({} < {})", args.drifted, args.window);
    }
    let model_dir = paths::find(&args.model)?;
    let bundle = Bundle::load(&model_dir).with_context(|| format!("loading {}", model_dir.display()))?;
    if bundle.takes_tokens() {
        bail!("the drift scenario transforms images; model {} takes text", bundle.model_id());
    }
    let split = args.split.unwrap_or_else(|| crate::inputs::split_for_bundle(&bundle));
    let val = Dataset::mnist(&args.data, Subset::Val, args.val_size)
        .with_context(|| format!("reading MNIST from {}", args.data.display()))?;
    let data = stream(&val, &args);
    eprintln!(
        "offramp drift: {} inputs ({} clean, {} drifted by {:?})",
        data.len(),
        args.clean,
        args.drifted,
        args.drift
    );
    let full = full_predictions(&bundle, &data)?;
    let (policy, _) = Policy::for_bundle(args.policy.as_deref(), &bundle)?;
    let mut budget = BudgetConfig::new(args.budget);
    budget.shadow = args.shadow;
    budget.validate()?;

    let (edge_b, cloud_b) = bundle.split(split)?;
    let topology = Topology::start(cloud_config(cloud_b, Some(&policy)), false, None).await?;
    let mut cfg = topology.edge_config(edge_b, split, TransportKind::GrpcStream)?;
    cfg.policy = Some(policy);
    let fixed = answers(topology.edge(cfg.clone()).await?, &data, args.interval, "static").await;
    cfg.accuracy_budget = Some(budget);
    let adaptive_edge = topology.edge(cfg).await?;
    let adaptive = answers(adaptive_edge.clone(), &data, args.interval, "adaptive").await;
    let snapshot = adaptive_edge.controller().expect("the adaptive edge has a controller").snapshot();
    topology.stop().await?;

    let score = |a: &[Answer], r: std::ops::Range<usize>| {
        let n = r.len() as f64;
        let right = r.clone().filter(|&i| a[i].prediction == Some(data.labels[i] as u32)).count() as f64;
        let edge = r.filter(|&i| a[i].tier == Tier::Edge).count() as f64;
        (right / n, edge / n)
    };
    let mut windows = Vec::new();
    for start in (0..data.len()).step_by(args.window) {
        let end = (start + args.window).min(data.len());
        let full_acc = (start..end).filter(|&i| full[i] == data.labels[i] as u32).count() as f64 / (end - start) as f64;
        let (sa, se) = score(&fixed, start..end);
        let (aa, ae) = score(&adaptive, start..end);
        let t: Vec<f64> = adaptive[start..end].iter().filter_map(|a| a.thresholds.first().map(|&t| t as f64)).collect();
        windows.push(Window {
            start,
            end,
            drifted: start >= args.clean,
            full_accuracy: full_acc,
            static_accuracy: sa,
            static_loss: full_acc - sa,
            static_exit_rate: se,
            adaptive_accuracy: aa,
            adaptive_loss: full_acc - aa,
            adaptive_exit_rate: ae,
            adaptive_threshold: if t.is_empty() { f64::NAN } else { t.iter().sum::<f64>() / t.len() as f64 },
        });
    }
    let drifted: Vec<&Window> = windows.iter().filter(|w| w.drifted).collect();
    let over = |loss: f64| loss > args.budget + 1e-12;
    // Adapted: from the first drifted window after which no window is over.
    let last_over = drifted.iter().rposition(|w| over(w.adaptive_loss));
    let adapted_after = match last_over {
        None => Some(0),
        Some(i) if i + 1 < drifted.len() => Some(drifted[i + 1].start - args.clean),
        Some(_) => None,
    };
    let report = DriftReport {
        model: bundle.model_id().to_string(),
        split,
        drift: args.drift,
        strength: args.strength,
        budget: args.budget,
        shadow: args.shadow,
        clean: args.clean,
        drifted: args.drifted,
        static_violations: drifted.iter().filter(|w| over(w.static_loss)).count(),
        drifted_windows: drifted.len(),
        adapted_after,
        shadows_sent: snapshot.shadows_sent,
        shadows_dropped: snapshot.shadows_dropped,
        csv: args.out.join("drift.csv"),
        plot: args.out.join("drift.svg"),
        windows,
    };
    write_outputs(&report)?;
    Ok(report)
}

fn write_outputs(r: &DriftReport) -> Result<()> {
    std::fs::create_dir_all(r.csv.parent().unwrap_or(std::path::Path::new(".")))?;
    let mut w = csv::Writer::from_path(&r.csv)?;
    for row in &r.windows {
        w.serialize(row)?;
    }
    w.flush()?;
    let mid = |w: &Window| (w.start + w.end) as f64 / 2.0;
    let points = |f: &dyn Fn(&Window) -> f64| r.windows.iter().map(|w| (mid(w), f(w))).collect::<Vec<_>>();
    let end = r.windows.last().map_or(1.0, |w| w.end as f64);
    let plot = Plot::new(
        format!("{:?} drift after {} inputs: accuracy loss against the full model", r.drift, r.clean),
        "input",
        "percent",
    )
    .series(Series::line_points("static policy: loss (pt)", points(&|w| w.static_loss * 100.0)))
    .series(Series::line_points("adaptive: loss (pt)", points(&|w| w.adaptive_loss * 100.0)))
    .series(Series::line(
        format!("budget {:.1} pt", r.budget * 100.0),
        vec![(0.0, r.budget * 100.0), (end, r.budget * 100.0)],
    ))
    .series(Series::line_points("static: exit rate / 10 (%)", points(&|w| w.static_exit_rate * 10.0)))
    .series(Series::line_points("adaptive: exit rate / 10 (%)", points(&|w| w.adaptive_exit_rate * 10.0)))
    .mark("drift starts", r.clean as f64, 0.0);
    plot.save(&r.plot)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transforms_are_deterministic_and_change_the_image() {
        // A bar four pixels wide down the middle: blur, noise and rotation
        // all move its edges.
        let img: Vec<f32> = (0..784).map(|i| if (12..16).contains(&(i % 28)) { 1.0 } else { 0.0 }).collect();
        for d in [Drift::Noise, Drift::Blur, Drift::Rotate] {
            let a = transform(&img, d, if d == Drift::Rotate { 30.0 } else { 0.4 }, 5);
            assert_eq!(a, transform(&img, d, if d == Drift::Rotate { 30.0 } else { 0.4 }, 5), "{d:?}");
            assert_eq!(a.len(), 784);
            assert!(a.iter().all(|v| (0.0..=1.0).contains(v)), "{d:?}");
            assert!(a.iter().zip(&img).any(|(x, y)| (x - y).abs() > 0.05), "{d:?} changed nothing");
        }
        assert_ne!(transform(&img, Drift::Noise, 0.4, 1), transform(&img, Drift::Noise, 0.4, 2));
    }
}
