//! `offramp demo`: a cloud and an edge on loopback with the bundled model,
//! the bundled sample through the split, and what happened.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use offramp_common::{codec, paths, Bundle, Policy};
use offramp_edge::run::{run_dataset, summarize};
use offramp_edge::transport::TransportKind;

use crate::harness::{cloud_config, Topology};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    // The bundled B-LeNet, its 1,000 bundled validation digits and K = 1 by default.
    #[command(flatten)]
    pub inputs: crate::inputs::OffloadInputs,
    /// Inputs in flight at once (at least 1).
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
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
    /// Decoder bundles: the user's message (default: a short question).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Decoder bundles: most tokens to generate.
    #[arg(long, default_value_t = 48)]
    pub max_tokens: usize,
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let model_dir = paths::find(&args.inputs.model)?;
    if offramp_common::AnyBundle::kind_of(&model_dir) == Some(offramp_common::ModelKind::Decoder) {
        return crate::demo_decoder::run(
            &model_dir,
            args.inputs.split,
            args.prompt.as_deref(),
            args.max_tokens,
            args.json,
        )
        .await;
    }
    let bundle = Bundle::load(&model_dir).with_context(|| format!("loading the demo model {}", model_dir.display()))?;
    let n = bundle.num_blocks();
    let split = args.inputs.split_for(&bundle);
    if split > n {
        bail!("--split {split} out of range: the model has {n} blocks");
    }
    let mut data = crate::inputs::sample_data(args.inputs.data.as_deref(), &bundle)?;
    let what = if bundle.takes_tokens() { "sentences" } else { "digits" };
    if let Some(l) = args.limit {
        data.truncate(l);
    }

    // Split the bundle as a deployment would: the device gets blocks 0..K
    // only, the cloud K..N; both run the same policy.
    let (edge_b, cloud_b) = bundle.split(split)?;
    let (policy, path) = Policy::for_bundle(args.policy.as_deref(), &bundle)?;
    let origin = path.map_or_else(|| "none (final exit only)".to_string(), |p| p.display().to_string());

    eprintln!(
        "offramp demo: model {} ({} blocks, {} exits), split K = {}",
        bundle.model_id(),
        n,
        bundle.num_exits(),
        split
    );
    let topology = Topology::start(cloud_config(cloud_b, Some(&policy)), false, None).await?;
    eprintln!("  cloud  grpc listening on {} (blocks {}..{n})", topology.cloud.addr, split);
    let mut cfg = topology.edge_config(edge_b, split, TransportKind::GrpcStream)?;
    cfg.encoding = args.encoding;
    cfg.policy = Some(policy);
    let edge = topology.edge(cfg).await?;
    eprintln!("  edge   blocks 0..{}, policy {origin}", split);
    eprintln!("  running {} {what}, {} in flight ...\n", data.len(), args.concurrency);

    let answers = run_dataset(edge.clone(), &data, args.concurrency, |_| {}).await;
    let summary = summarize(&edge, &answers);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.render());
        let offloaded = summary.tier_counts.get("cloud").copied().unwrap_or(0);
        println!(
            "\n{} of {} {what} were answered on the edge at a confident early exit; {} needed the cloud, \
             which received {} bytes each ({}).",
            summary.tier_counts.get("edge").copied().unwrap_or(0),
            summary.n,
            offloaded,
            summary.bytes_up_per_offload.round(),
            codec::encoding_name(args.encoding)
        );
    }
    drop(edge);
    topology.stop().await?;
    Ok(())
}
