//! `offramp split`: cut a bundle at K into an edge bundle (blocks `[0, K)`) and
//! a cloud bundle (`[K, N)`), so a device does not carry the deep weights.

use std::path::PathBuf;

use anyhow::{Context, Result};
use offramp_common::model::SplitSide;
use offramp_common::Bundle;

#[derive(Debug, Clone, clap::Args)]
pub struct SplitArgs {
    /// Whole-model bundle.
    #[arg(long)]
    pub model: PathBuf,
    /// Split point K.
    #[arg(long = "at")]
    pub at: usize,
    #[arg(long)]
    pub edge_out: PathBuf,
    #[arg(long)]
    pub cloud_out: PathBuf,
}

pub fn run(args: &SplitArgs) -> Result<()> {
    let bundle = Bundle::load(&args.model).with_context(|| format!("loading {}", args.model.display()))?;
    let (edge, cloud) = bundle.split(args.at)?;
    edge.save(&args.edge_out).with_context(|| format!("writing {}", args.edge_out.display()))?;
    cloud.save(&args.cloud_out).with_context(|| format!("writing {}", args.cloud_out.display()))?;
    if let Some(policy) = bundle.policy_path() {
        for dir in [&args.edge_out, &args.cloud_out] {
            std::fs::copy(&policy, dir.join("policy.toml"))
                .with_context(|| format!("copying the policy into {}", dir.display()))?;
        }
    }
    let size = |dir: &PathBuf| std::fs::metadata(dir.join(&bundle.manifest().weights)).map(|m| m.len()).unwrap_or(0);
    let k = args.at;
    println!(
        "edge  {} : blocks 0..{k}, {} weight bytes, edge fingerprint {}",
        args.edge_out.display(),
        size(&args.edge_out),
        bundle.fingerprint(SplitSide::Edge, k).unwrap_or_default()
    );
    println!(
        "cloud {} : blocks {k}..{}, {} weight bytes, cloud fingerprint {}",
        args.cloud_out.display(),
        bundle.num_blocks(),
        size(&args.cloud_out),
        bundle.fingerprint(SplitSide::Cloud, k).unwrap_or_default()
    );
    Ok(())
}
