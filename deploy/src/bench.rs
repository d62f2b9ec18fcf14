//! `offramp bench`: measured speed, printed as medians and percentiles.
//!
//! - `blocks`: per-block forward time at batch 1 and 32, and the executor's
//!   overhead over bare candle calls for the same blocks and exits;
//! - `offload`: the offload path on loopback (edge → gRPC → cloud → edge) and
//!   its transport overhead = end-to-end latency − edge compute − cloud compute.
//!
//! Build with `--release`. Numbers from one run on a shared machine are noisy;
//! compare ratios measured in the same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use offramp_common::data::{Dataset, Subset};
use offramp_common::model::layer_forward_all;
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
}

#[derive(Debug, Clone, clap::Args)]
pub struct BlocksArgs {
    #[arg(long, default_value = "models/b-lenet-mnist")]
    pub model: PathBuf,
    /// Timed iterations per measurement.
    #[arg(long, default_value_t = 300)]
    pub iters: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct OffloadArgs {
    #[arg(long, default_value = "models/b-lenet-mnist")]
    pub model: PathBuf,
    #[arg(long, default_value = "models/mnist-sample")]
    pub data: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub split: usize,
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
        // Bare candle: the same blocks, exit heads and softmax, no bookkeeping.
        let bare = time_us(args.iters, || {
            let mut x = input.clone();
            for b in 0..n {
                x = bundle.layer(b).context("block")?.forward(&x)?;
                if let Some(e) = bundle.exit_after(b) {
                    let logits = layer_forward_all(bundle.exit_layers(e).context("exit")?, &x)?;
                    candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
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
        println!("  {}", line("bare candle, all blocks", &bare));
        println!("  {}", line("executor, all blocks", &executor));
        println!("  executor overhead over bare candle: {:+.1}% (p50)", overhead * 100.0);
        report.insert(
            format!("batch_{batch}"),
            serde_json::json!({"per_block": per_block, "bare": bare, "executor": executor, "overhead": overhead}),
        );
    }
    Ok(serde_json::Value::Object(report))
}

pub async fn offload(args: &OffloadArgs) -> Result<serde_json::Value> {
    let model = locate(&args.model);
    let bundle = Bundle::load(&model)?;
    let mut data = Dataset::mnist(&locate(&args.data), Subset::Sample, 0)?;
    data.truncate(args.requests.max(1));
    let cloud = offramp_cloud::CloudHandle::start(offramp_cloud::Config::for_model(&model)).await?;
    // Force every input through the cloud: exits before K never fire.
    let dir = std::env::temp_dir().join(format!("offramp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let policy_path = dir.join("never.toml");
    std::fs::write(&policy_path, Policy::uniform(Rule::Never, bundle.num_exits()).to_toml())?;
    let mut cfg = offramp_edge::EdgeConfig::new(&model, args.split, vec![cloud.url()]);
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
    let (t, o, e, c) = (Summary::of(&total), Summary::of(&overhead), Summary::of(&edge_us), Summary::of(&cloud_us));
    println!("offload path on loopback, split K = {}, {} sequential requests:", args.split, data.len());
    println!("  {}", line("end to end", &t));
    println!("  {}", line("edge compute", &e));
    println!("  {}", line("cloud compute", &c));
    println!("  {}", line("transport overhead", &o));
    drop(edge);
    cloud.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(
        serde_json::json!({"split": args.split, "requests": data.len(), "end_to_end_us": t, "edge_us": e, "cloud_compute_us": c, "overhead_us": o}),
    )
}
