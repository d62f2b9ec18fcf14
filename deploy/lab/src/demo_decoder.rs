//! `offramp demo --model <decoder bundle>`: the decoder split at K on
//! loopback — a cloud holding layers `K..N`, an edge holding `0..K` — and a
//! short chat answer streamed with each token's tier.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use offramp_cloud::{CloudConfig, CloudHandle};
use offramp_common::decoder::{ChatMessage, DecoderBundle};
use offramp_edge::generate::args::tier_mark;
use offramp_edge::generate::{DecoderEdge, GenOptions, GenerateConfig, Mode};

/// The demo's question when none is given.
pub const DEFAULT_PROMPT: &str = "What is the capital of France? Answer in one sentence.";

pub async fn run(dir: &Path, split: Option<usize>, prompt: Option<&str>, max_tokens: usize, json: bool) -> Result<()> {
    let bundle = DecoderBundle::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let n = bundle.num_layers();
    anyhow::ensure!(
        bundle.holds() == (0..n),
        "the demo splits a whole-model decoder bundle itself; {} holds layers {:?}",
        dir.display(),
        bundle.holds()
    );
    // Default split: just past the deepest calibrated exit below the last
    // layer, so the edge can answer for itself.
    let calibrated: Vec<usize> =
        bundle.manifest().exits.iter().filter(|e| e.threshold.is_some()).map(|e| e.layer).collect();
    let k = split.unwrap_or_else(|| calibrated.last().copied().unwrap_or(n / 2));
    anyhow::ensure!(k < n, "--split {k}: the demo needs a cloud side (K < {n})");
    let mode = if calibrated.iter().any(|&e| e <= k) { Mode::EarlyExit } else { Mode::Split };
    let work = tempdir()?;
    let (edge_dir, cloud_dir) = (work.join("edge"), work.join("cloud"));
    eprintln!("offramp demo: decoder {} ({n} layers), split K = {k}, mode {}", bundle.model_id(), mode.name());
    bundle.split(k, &edge_dir, Some(&cloud_dir))?;
    let cloud = CloudHandle::start(CloudConfig::from_dirs(vec![cloud_dir])).await.context("starting the cloud")?;
    eprintln!("  cloud  grpc listening on {} (layers {k}..{n}, LM head)", cloud.url());
    let mut config = GenerateConfig::new(mode, k, vec![cloud.url()]);
    config.edge_id = "demo-edge".into();
    let edge = DecoderEdge::new(DecoderBundle::open(&edge_dir)?, config)?;
    eprintln!(
        "  edge   embeddings + layers 0..{k}{}",
        edge.threshold().map(|t| format!(", exit threshold {t:.3}")).unwrap_or_default()
    );
    let prompt = prompt.unwrap_or(DEFAULT_PROMPT);
    eprintln!("  user:  {prompt}\n  (tiers: [E]dge exit, [C]loud, [F]allback)\n");
    let ids = edge.tokenizer().encode_chat(&[ChatMessage { role: "user".into(), content: prompt.into() }])?;
    let opts = GenOptions { max_tokens, agreement: mode == Mode::EarlyExit, ..GenOptions::default() };
    let g = edge
        .generate(&ids, &opts, |e| {
            if !json {
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "{}[{}]", e.text, tier_mark(e.tier));
                let _ = out.flush();
            }
        })
        .await?;
    if json {
        println!("{}", serde_json::json!({ "text": g.text, "events": g.events, "summary": g.summary }));
    } else {
        println!("\n");
        print!("{}", g.summary.render());
    }
    drop(edge);
    cloud.stop().await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn tempdir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("offramp-demo-decoder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}
