//! `offramp split`: cut a bundle at K into an edge bundle (blocks `[0, K)`) and
//! a cloud bundle (`[K, N)`), so a device does not carry the deep weights.

use std::path::PathBuf;

use anyhow::{Context, Result};
use offramp_common::decoder::bundle::DECODER_WEIGHTS;
use offramp_common::decoder::DecoderBundle;
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

/// What `offramp split` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SplitReport {
    pub split: usize,
    pub num_blocks: usize,
    pub edge_dir: PathBuf,
    pub cloud_dir: PathBuf,
    pub edge_weight_bytes: u64,
    pub cloud_weight_bytes: u64,
    pub edge_fingerprint: String,
    pub cloud_fingerprint: String,
}

impl SplitReport {
    pub fn render(&self) -> String {
        let k = self.split;
        format!(
            "edge  {} : blocks 0..{k}, {} weight bytes, edge fingerprint {}\n\
             cloud {} : blocks {k}..{}, {} weight bytes, cloud fingerprint {}\n",
            self.edge_dir.display(),
            self.edge_weight_bytes,
            self.edge_fingerprint,
            self.cloud_dir.display(),
            self.num_blocks,
            self.cloud_weight_bytes,
            self.cloud_fingerprint
        )
    }
}

pub fn run(args: &SplitArgs) -> Result<SplitReport> {
    if offramp_common::AnyBundle::kind_of(&args.model) == Some(offramp_common::ModelKind::Decoder) {
        return split_decoder(args);
    }
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
    Ok(SplitReport {
        split: k,
        num_blocks: bundle.num_blocks(),
        edge_dir: args.edge_out.clone(),
        cloud_dir: args.cloud_out.clone(),
        edge_weight_bytes: size(&args.edge_out),
        cloud_weight_bytes: size(&args.cloud_out),
        edge_fingerprint: bundle.fingerprint(SplitSide::Edge, k).unwrap_or_default(),
        cloud_fingerprint: bundle.fingerprint(SplitSide::Cloud, k).unwrap_or_default(),
    })
}

/// A decoder bundle: the edge side gets the embeddings, layers `0..K` and
/// the final norm + LM head its exits read; the cloud side layers `K..N`
/// and the head. At K = N there is no cloud side.
fn split_decoder(args: &SplitArgs) -> Result<SplitReport> {
    let bundle = DecoderBundle::open(&args.model).with_context(|| format!("opening {}", args.model.display()))?;
    let k = args.at;
    let n = bundle.num_layers();
    bundle.split(k, &args.edge_out, (k < n).then_some(args.cloud_out.as_path()))?;
    let size = |dir: &PathBuf| std::fs::metadata(dir.join(DECODER_WEIGHTS)).map(|m| m.len()).unwrap_or(0);
    Ok(SplitReport {
        split: k,
        num_blocks: n,
        edge_dir: args.edge_out.clone(),
        cloud_dir: args.cloud_out.clone(),
        edge_weight_bytes: size(&args.edge_out),
        cloud_weight_bytes: if k < n { size(&args.cloud_out) } else { 0 },
        edge_fingerprint: bundle.edge_fingerprint(k),
        cloud_fingerprint: if k < n { bundle.cloud_fingerprint(k) } else { String::new() },
    })
}
