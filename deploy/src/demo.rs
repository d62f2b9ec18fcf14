//! `offramp demo`: a cloud and an edge on loopback with the bundled model,
//! the bundled sample through the split, and what happened.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use offramp_cloud::CloudHandle;
use offramp_common::data::{Dataset, Subset};
use offramp_common::{codec, Bundle};
use offramp_edge::run::{run_dataset, summarize};
use offramp_edge::{Edge, EdgeConfig};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    // The bundled B-LeNet, its 1,000 bundled validation digits and K = 1 by default.
    #[command(flatten)]
    pub inputs: crate::inputs::OffloadInputs,
    /// Inputs in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Hidden-state encoding.
    #[arg(long, default_value = "f32", value_parser = codec::parse_encoding)]
    pub encoding: offramp_proto::Encoding,
    #[arg(long)]
    pub limit: Option<usize>,
    /// Exit policy (default: the bundle's calibrated policy.toml).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Finds a bundled path relative to the working directory or the repository.
pub fn locate(p: &Path) -> PathBuf {
    if p.exists() || p.is_absolute() {
        return p.to_path_buf();
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p);
    if repo.exists() {
        repo
    } else {
        p.to_path_buf()
    }
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let model_dir = locate(&args.inputs.model);
    let data_dir = locate(&args.inputs.data);
    let bundle = Bundle::load(&model_dir).with_context(|| format!("loading the demo model {}", model_dir.display()))?;
    let n = bundle.num_blocks();
    if args.inputs.split > n {
        bail!("--split {} out of range: the model has {n} blocks", args.inputs.split);
    }
    let sample_subset =
        if data_dir.join("sample-images-idx3-ubyte.gz").exists() { Subset::Sample } else { Subset::Val };
    let mut data =
        Dataset::mnist(&data_dir, sample_subset, 5000).with_context(|| format!("reading {}", data_dir.display()))?;
    if let Some(l) = args.limit {
        data.truncate(l);
    }

    // Split the bundle as a deployment would: the device gets blocks 0..K only.
    let work = std::env::temp_dir().join(format!("offramp-demo-{}", std::process::id()));
    let (edge_dir, cloud_dir) = (work.join("edge"), work.join("cloud"));
    let (edge_b, cloud_b) = bundle.split(args.inputs.split)?;
    edge_b.save(&edge_dir)?;
    cloud_b.save(&cloud_dir)?;
    let policy = args.policy.clone().or_else(|| bundle.policy_path());
    if let Some(p) = &policy {
        offramp_common::Policy::load(p, bundle.num_exits())?;
        std::fs::copy(p, edge_dir.join("policy.toml"))?;
        std::fs::copy(p, cloud_dir.join("policy.toml"))?;
    }

    eprintln!(
        "offramp demo: model {} ({} blocks, {} exits), split K = {}",
        bundle.model_id(),
        n,
        bundle.num_exits(),
        args.inputs.split
    );
    let cloud = CloudHandle::start(offramp_cloud::Config::for_model(&cloud_dir)).await?;
    eprintln!("  cloud  grpc listening on {} (blocks {}..{n})", cloud.addr, args.inputs.split);
    let mut cfg = EdgeConfig::new(&edge_dir, args.inputs.split, vec![cloud.url()]);
    cfg.encoding = args.encoding;
    let edge = Arc::new(Edge::start(cfg).await?);
    eprintln!(
        "  edge   blocks 0..{}, policy {}",
        args.inputs.split,
        policy.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none (final exit only)".into())
    );
    eprintln!("  running {} digits, {} in flight ...\n", data.len(), args.concurrency);

    let answers = run_dataset(edge.clone(), &data, args.concurrency, |_| {}).await;
    let summary = summarize(&edge, &answers);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.render());
        let offloaded = summary.tier_counts.get("cloud").copied().unwrap_or(0);
        println!(
            "\n{} of {} digits were answered on the edge at a confident early exit; {} needed the cloud, \
             which received {} bytes each ({}).",
            summary.tier_counts.get("edge").copied().unwrap_or(0),
            summary.n,
            offloaded,
            summary.bytes_up_per_offload.round(),
            codec::encoding_name(args.encoding)
        );
    }
    drop(edge);
    cloud.stop().await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
