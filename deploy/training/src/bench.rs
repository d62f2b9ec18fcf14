//! `offramp bench blocks`: measured compute speed, printed as medians and
//! percentiles: per-block forward time at batch 1 and 32, and the executor's
//!   overhead over bare layer calls for the same blocks and exits; then plain
//!   candle against the project's fused kernels (`OFFRAMP_KERNELS`) per
//!   block, per exit head, for each side of split K and the full network
//!   (`deploy/scripts/onnx_compare.py` times ONNX Runtime on the same pieces).
//!
//! Build with `--release`. Numbers from one run on a shared machine are noisy;
//! compare ratios measured in the same run.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use offramp_common::model::{layer_forward_all, Kernels};
use offramp_common::stats::Summary;
use offramp_common::{paths, Bundle, Executor, Policy};
use serde::Serialize;

#[derive(Debug, Clone, clap::Args)]
pub struct BlocksArgs {
    #[arg(long, default_value = "models/b-lenet-mnist")]
    pub model: PathBuf,
    /// Timed iterations per measurement.
    #[arg(long, default_value_t = 300)]
    pub iters: usize,
    /// Split point of the edge / cloud rows in the kernel comparison.
    #[arg(long, default_value_t = 1)]
    pub split: usize,
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file (for `deploy/scripts/onnx_compare.py --rust-json`).
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// `iters` timed calls of `f` (after a tenth as many warm-up calls), in µs.
pub(crate) fn time_us(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<Summary> {
    for _ in 0..iters.div_ceil(10).max(3) {
        f()?;
    }
    let mut v = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(Summary::of(&v))
}

fn line(name: &str, s: &Summary) -> String {
    format!("{name:<28} p50 {:>9.1} µs  p90 {:>9.1}  p99 {:>9.1}  mean {:>9.1}", s.p50, s.p90, s.p99, s.mean)
}

/// One block's or exit head's forward time.
#[derive(Debug, Clone, Serialize)]
pub struct PieceTiming {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<usize>,
    pub name: String,
    pub us: Summary,
}

/// Per-piece times at one batch size, and the executor against bare calls.
#[derive(Debug, Clone, Serialize)]
pub struct BatchTimings {
    pub batch: usize,
    pub per_block: Vec<PieceTiming>,
    pub bare: Summary,
    pub executor: Summary,
    /// executor p50 / bare p50 − 1.
    pub overhead: f64,
}

/// One piece, plain candle against the fused kernels, at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCell {
    pub candle_us: f64,
    pub offramp_us: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candle_samples_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offramp_samples_per_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelRow {
    pub name: String,
    pub batch_1: KernelCell,
    pub batch_32: KernelCell,
}

/// What `bench blocks` measured (the JSON `deploy/scripts/onnx_compare.py
/// --rust-json` reads).
#[derive(Debug, Clone, Serialize)]
pub struct BlocksReport {
    pub kernels: String,
    pub rayon_threads: usize,
    pub input_shape: Vec<usize>,
    pub split: usize,
    pub batch_1: BatchTimings,
    pub batch_32: BatchTimings,
    pub compare: Vec<KernelRow>,
}

impl BlocksReport {
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = format!("kernels: {} (OFFRAMP_KERNELS), rayon threads: {}\n", self.kernels, self.rayon_threads);
        for b in [&self.batch_1, &self.batch_32] {
            let _ = writeln!(s, "batch {}:", b.batch);
            for p in &b.per_block {
                let _ = writeln!(s, "  {}", line(&p.name, &p.us));
            }
            let _ = writeln!(s, "  {}", line("bare layer calls, all", &b.bare));
            let _ = writeln!(s, "  {}", line("executor, all blocks", &b.executor));
            let _ = writeln!(s, "  executor overhead over bare layer calls: {:+.1}% (p50)", b.overhead * 100.0);
        }
        let _ = writeln!(s, "plain candle vs fast kernels, same weights and inputs (p50; speed-up = candle / fast):");
        let _ = writeln!(
            s,
            "  {:<20} {:>10} {:>10} {:>8}   {:>12} {:>12} {:>8}",
            "", "b1 candle", "b1 fast", "", "b32 candle/s", "b32 fast/s", ""
        );
        for r in &self.compare {
            let (c1, f1) = (r.batch_1.candle_us, r.batch_1.offramp_us);
            let (c32, f32_) = (r.batch_32.candle_us, r.batch_32.offramp_us);
            let _ = writeln!(
                s,
                "  {:<20} {c1:>8.1}µs {f1:>8.1}µs {:>7.1}x   {:>12.0} {:>12.0} {:>7.1}x",
                r.name,
                c1 / f1,
                r.batch_32.candle_samples_per_s.unwrap_or_default(),
                r.batch_32.offramp_samples_per_s.unwrap_or_default(),
                c32 / f32_
            );
        }
        s
    }
}

/// A random batch of `batch` inputs of the bundle's input shape.
fn random_input(bundle: &Bundle, batch: usize) -> Result<Tensor> {
    let mut shape = vec![batch];
    shape.extend_from_slice(&bundle.manifest().input.shape);
    Ok(Tensor::rand(0f32, 1f32, shape, &Device::Cpu)?)
}

pub fn blocks(args: &BlocksArgs) -> Result<BlocksReport> {
    let bundle = Bundle::load(paths::find(&args.model)?)?;
    let n = bundle.num_blocks();
    anyhow::ensure!(args.split <= n, "--split {} is past the last block ({n})", args.split);
    let exec = Executor::new(Arc::new(bundle.clone()));
    let mut timings = Vec::new();
    for batch in [1usize, 32] {
        eprintln!("measuring batch {batch} ...");
        let input = random_input(&bundle, batch)?;
        // Per block (and per exit head), on real activations.
        let mut x = input.clone();
        let mut per_block = Vec::new();
        for b in 0..n {
            let layer = bundle.layer(b).context("block not held")?;
            let s = time_us(args.iters, || {
                layer.forward(&x)?;
                Ok(())
            })?;
            let name = format!("block {b} ({})", bundle.manifest().blocks[b].name);
            per_block.push(PieceTiming { block: Some(b), exit: None, name, us: s });
            x = layer.forward(&x)?;
            if let Some(e) = bundle.exit_after(b) {
                let head = bundle.exit_layers(e).context("exit not held")?;
                let s = time_us(args.iters, || {
                    layer_forward_all(head, &x)?;
                    Ok(())
                })?;
                let name = format!("exit {e} ({})", bundle.manifest().exits[e].name);
                per_block.push(PieceTiming { block: None, exit: Some(e), name, us: s });
            }
        }
        // Bare layer calls: the same blocks and exit heads, the logits to the
        // host and their softmax (the work any caller needs to decide), no
        // bookkeeping.
        let bare = time_us(args.iters, || {
            let mut x = input.clone();
            for b in 0..n {
                x = bundle.layer(b).context("block")?.forward(&x)?;
                if let Some(e) = bundle.exit_after(b) {
                    let logits = layer_forward_all(bundle.exit_layers(e).context("exit")?, &x)?;
                    let mut p = logits.to_vec2::<f32>()?;
                    p.iter_mut().for_each(|r| offramp_common::model::softmax_in_place(r));
                }
            }
            Ok(())
        })?;
        let never = Policy::never(bundle.num_exits());
        let executor = time_us(args.iters, || {
            exec.run(&input, 0..n, &never, vec![vec![]; batch])?;
            Ok(())
        })?;
        let overhead = executor.p50 / bare.p50 - 1.0;
        timings.push(BatchTimings { batch, per_block, bare, executor, overhead });
    }
    eprintln!("measuring plain candle against the fused kernels ...");
    let compare = compare(&bundle, args)?;
    let [batch_1, batch_32]: [BatchTimings; 2] = timings.try_into().map_err(|_| anyhow::anyhow!("two batch sizes"))?;
    let report = BlocksReport {
        kernels: Kernels::from_env().to_string(),
        rayon_threads: rayon_threads(),
        input_shape: bundle.manifest().input.shape.clone(),
        split: args.split,
        batch_1,
        batch_32,
        compare,
    };
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Plain candle against the fused kernels on the same weights and inputs:
/// each block and exit head on real activations, the edge side of split K
/// (blocks `[0, K)` and their exits), the cloud side (`[K, N)` and theirs)
/// and the full network (every block and exit head): logits only, no
/// softmax, the same pieces `deploy/scripts/onnx_compare.py` times. Batch 1:
/// p50 latency; batch 32: p50 and throughput (32 / p50).
fn compare(bundle: &Bundle, args: &BlocksArgs) -> Result<Vec<KernelRow>> {
    let n = bundle.num_blocks();
    let k = args.split;
    let mut plain = bundle.clone();
    plain.use_kernels(Kernels::Candle)?;
    let plain_exec = Executor::new(Arc::new(plain.clone()));
    let mut fast = bundle.clone();
    fast.use_kernels(Kernels::Fast)?;
    // Blocks `range` and, with `exits`, the exit heads after them.
    fn piece(b: &Bundle, range: Range<usize>, exits: bool, x: &Tensor) -> Result<()> {
        let mut x = x.clone();
        for i in range {
            x = b.layer(i).context("block not held")?.forward(&x)?;
            if let Some(e) = b.exit_after(i).filter(|_| exits) {
                layer_forward_all(b.exit_layers(e).context("exit not held")?, &x)?;
            }
        }
        Ok(())
    }
    // What to run: blocks (with their exit heads or not), or one exit head.
    enum Part {
        Blocks(Range<usize>, bool),
        Exit(usize),
    }
    // (name, part, the block whose input it takes)
    let mut parts = Vec::new();
    for b in 0..n {
        parts.push((format!("block {b} ({})", bundle.manifest().blocks[b].name), Part::Blocks(b..b + 1, false), b));
        if let Some(e) = bundle.exit_after(b) {
            parts.push((format!("exit {e} ({})", bundle.manifest().exits[e].name), Part::Exit(e), b + 1));
        }
    }
    parts.push((format!("edge K={k}"), Part::Blocks(0..k, true), 0));
    parts.push((format!("cloud K={k}"), Part::Blocks(k..n, true), k));
    parts.push(("full".into(), Part::Blocks(0..n, true), 0));

    let mut rows = Vec::new();
    for (name, part, at) in &parts {
        let mut cells = Vec::new();
        for batch in [1usize, 32] {
            let input = random_input(bundle, batch)?;
            // The activation entering the part, computed with plain candle.
            let x = plain_exec.forward_blocks(&input, 0..*at)?;
            let iters = if batch == 1 { args.iters } else { (args.iters / 10).max(20) };
            let time = |b: &Bundle| {
                time_us(iters, || match part {
                    Part::Blocks(r, exits) => piece(b, r.clone(), *exits, &x),
                    Part::Exit(e) => {
                        layer_forward_all(b.exit_layers(*e).context("exit not held")?, &x)?;
                        Ok(())
                    }
                })
            };
            let (c, f) = (time(&plain)?, time(&fast)?);
            let per_s = |us: f64| (batch > 1).then(|| batch as f64 / us * 1e6);
            cells.push(KernelCell {
                candle_us: c.p50,
                offramp_us: f.p50,
                candle_samples_per_s: per_s(c.p50),
                offramp_samples_per_s: per_s(f.p50),
            });
        }
        let [batch_1, batch_32]: [KernelCell; 2] = cells.try_into().map_err(|_| anyhow::anyhow!("two batch sizes"))?;
        rows.push(KernelRow { name: name.clone(), batch_1, batch_32 });
    }
    Ok(rows)
}
