//! `offramp bench`: measured speed, printed as medians and percentiles.
//!
//! - `blocks`: per-block forward time at batch 1 and 32, and the executor's
//!   overhead over bare layer calls for the same blocks and exits; then plain
//!   candle against the project's fused kernels (`OFFRAMP_KERNELS`) per
//!   block, per exit head, for each side of split K and the full network
//!   (`deploy/bench/onnx_compare.py` times ONNX Runtime on the same pieces);
//! - `offload`: the offload path on loopback (edge → gRPC → cloud → edge) and
//!   its transport overhead = end-to-end latency − edge compute − cloud compute.
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
use offramp_common::policy::Rule;
use offramp_common::stats::Summary;
use offramp_common::{Bundle, Executor, Policy};

use crate::demo::locate;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchWhat {
    /// Per-block forward time and the executor's overhead over bare candle.
    Blocks(BlocksArgs),
    /// Transport overhead of the offload path on loopback.
    Offload(OffloadArgs),
    /// gRPC against QUIC through the link emulator (delay, loss).
    Transport(crate::bench_transport::TransportArgs),
}

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
    /// Also write the JSON report to this file (for `deploy/bench/onnx_compare.py --rust-json`).
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct OffloadArgs {
    #[command(flatten)]
    pub inputs: crate::inputs::OffloadInputs,
    /// Requests (sequential, one in flight: latency, not throughput).
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
    #[arg(long)]
    pub json: bool,
}

fn time_us(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<Summary> {
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

pub fn blocks(args: &BlocksArgs) -> Result<serde_json::Value> {
    let bundle = Bundle::load(locate(&args.model))?;
    let n = bundle.num_blocks();
    let exec = Executor::new(Arc::new(bundle.clone()));
    let mut report = serde_json::Map::new();
    println!("kernels: {} (OFFRAMP_KERNELS), rayon threads: {}", Kernels::from_env(), rayon_threads());
    for batch in [1usize, 32] {
        println!("batch {batch}:");
        let input = Tensor::rand(0f32, 1f32, (batch, 1, 28, 28), &Device::Cpu)?;
        // Per block (and per exit head), on real activations.
        let mut x = input.clone();
        let mut per_block = Vec::new();
        for b in 0..n {
            let layer = bundle.layer(b).context("block not held")?;
            let s = time_us(args.iters, || {
                layer.forward(&x)?;
                Ok(())
            })?;
            println!("  {}", line(&format!("block {b} ({})", bundle.manifest().blocks[b].name), &s));
            per_block.push(serde_json::json!({"block": b, "name": bundle.manifest().blocks[b].name, "us": s}));
            x = layer.forward(&x)?;
            if let Some(e) = bundle.exit_after(b) {
                let head = bundle.exit_layers(e).context("exit not held")?;
                let s = time_us(args.iters, || {
                    layer_forward_all(head, &x)?;
                    Ok(())
                })?;
                println!("  {}", line(&format!("exit {e} ({})", bundle.manifest().exits[e].name), &s));
                per_block.push(serde_json::json!({"exit": e, "us": s}));
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
        println!("  {}", line("bare layer calls, all", &bare));
        println!("  {}", line("executor, all blocks", &executor));
        println!("  executor overhead over bare layer calls: {:+.1}% (p50)", overhead * 100.0);
        report.insert(
            format!("batch_{batch}"),
            serde_json::json!({"per_block": per_block, "bare": bare, "executor": executor, "overhead": overhead}),
        );
    }
    report.insert("compare".into(), compare(&bundle, args)?);
    let report = serde_json::Value::Object(report);
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
/// softmax, the same pieces `deploy/bench/onnx_compare.py` times. Batch 1:
/// p50 latency; batch 32: p50 and throughput (32 / p50).
fn compare(bundle: &Bundle, args: &BlocksArgs) -> Result<serde_json::Value> {
    let n = bundle.num_blocks();
    let k = args.split;
    anyhow::ensure!(k <= n, "--split {k} is past the last block ({n})");
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

    println!("plain candle vs fast kernels, same weights and inputs (p50; speed-up = candle / fast):");
    println!(
        "  {:<20} {:>10} {:>10} {:>8}   {:>12} {:>12} {:>8}",
        "", "b1 candle", "b1 fast", "", "b32 candle/s", "b32 fast/s", ""
    );
    let mut rows = Vec::new();
    for (name, part, at) in &parts {
        let mut row = serde_json::Map::new();
        row.insert("name".into(), name.clone().into());
        let mut cells = Vec::new();
        for batch in [1usize, 32] {
            let input = Tensor::rand(0f32, 1f32, (batch, 1, 28, 28), &Device::Cpu)?;
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
            let mut cell = serde_json::Map::new();
            cell.insert("candle_us".into(), c.p50.into());
            cell.insert("offramp_us".into(), f.p50.into());
            if batch > 1 {
                cell.insert("candle_samples_per_s".into(), (batch as f64 / c.p50 * 1e6).into());
                cell.insert("offramp_samples_per_s".into(), (batch as f64 / f.p50 * 1e6).into());
            }
            row.insert(format!("batch_{batch}"), cell.into());
            cells.push((c.p50, f.p50, batch as f64));
        }
        let [(c1, f1, _), (c32, f32_, b32)] = cells[..] else { unreachable!("two batch sizes") };
        println!(
            "  {name:<20} {c1:>8.1}µs {f1:>8.1}µs {:>7.1}x   {:>12.0} {:>12.0} {:>7.1}x",
            c1 / f1,
            b32 / c32 * 1e6,
            b32 / f32_ * 1e6,
            c32 / f32_
        );
        rows.push(serde_json::Value::Object(row));
    }
    Ok(serde_json::Value::Array(rows))
}

pub async fn offload(args: &OffloadArgs) -> Result<serde_json::Value> {
    let (model, bundle, data) = args.inputs.load(args.requests.max(1))?;
    let cloud = offramp_cloud::CloudHandle::start(offramp_cloud::Config::for_model(&model)).await?;
    // Force every input through the cloud: exits before K never fire.
    let dir = std::env::temp_dir().join(format!("offramp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let policy_path = dir.join("never.toml");
    std::fs::write(&policy_path, Policy::uniform(Rule::Never, bundle.num_exits()).to_toml())?;
    let mut cfg = offramp_edge::EdgeConfig::new(&model, args.inputs.split, vec![cloud.url()]);
    cfg.policy = Some(policy_path);
    let edge = offramp_edge::Edge::start(cfg).await?;
    let (mut total, mut overhead, mut edge_us, mut cloud_us) = (vec![], vec![], vec![], vec![]);
    for _ in 0..2 {
        // warm-up pass then measured pass
        total.clear();
        overhead.clear();
        edge_us.clear();
        cloud_us.clear();
        for i in 0..data.len() {
            let a = edge.classify(None, data.image(i).to_vec()).await;
            anyhow::ensure!(a.tier == offramp_edge::Tier::Cloud, "input {i} was not offloaded: {:?}", a.error);
            total.push(a.latency_us as f64);
            edge_us.push(a.edge_us as f64);
            cloud_us.push(a.cloud_compute_us as f64);
            overhead.push(a.latency_us.saturating_sub(a.edge_us + a.cloud_compute_us) as f64);
        }
    }
    // Baseline: a bare gRPC round trip (the handshake RPC: no tensor, no
    // compute thread) on a connection of its own.
    let probe = offramp_edge::transport::Transport::grpc(
        &cloud.url(),
        &offramp_edge::transport::ConnectConfig::default(),
        &offramp_edge::transport::Credentials::default(),
    )
    .map_err(anyhow::Error::msg)?;
    let mut rtt = Vec::with_capacity(data.len());
    for i in 0..data.len() + 100 {
        let t = Instant::now();
        probe.model_info(std::time::Duration::from_secs(5)).await?;
        if i >= 100 {
            rtt.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let rtt = Summary::of(&rtt);
    let (t, o, e, c) = (Summary::of(&total), Summary::of(&overhead), Summary::of(&edge_us), Summary::of(&cloud_us));
    println!("offload path on loopback, split K = {}, {} sequential requests:", args.inputs.split, data.len());
    println!("  {}", line("end to end", &t));
    println!("  {}", line("edge compute", &e));
    println!("  {}", line("cloud compute", &c));
    println!("  {}", line("transport overhead", &o));
    println!("  {}", line("bare gRPC round trip", &rtt));
    drop(edge);
    cloud.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(
        serde_json::json!({"split": args.inputs.split, "requests": data.len(), "end_to_end_us": t, "edge_us": e, "cloud_compute_us": c, "overhead_us": o}),
    )
}
