//! `offramp experiment` with a decoder bundle: generation cells.
//!
//! A grid of modes (all-cloud, split, early-exit, speculative) × draft
//! lengths (speculative cells) × links (fixed delays, rates, losses, or
//! Mahimahi traces; the same `[[link]]` tables as the classifier's
//! experiments) × encodings, at one split K. Each link gets a real cloud
//! holding the whole model behind the link emulator; each cell generates
//! greedy answers to the same chat prompts
//! ([`crate::generation_bench::run_cells`]).
//!
//! Output in `--out`: `results.csv` (one row per cell: tokens/s, time to
//! first token, p50/p99 inter-token latency, round trips per token,
//! acceptance rate, bytes per token, agreement with the whole model),
//! `results.json`, `tokens-per-s.svg` (against the links' RTT, per mode) and
//! `itl-cdf.svg` (inter-token latency CDF per cell).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use offramp_common::decoder::DecoderBundle;
use offramp_common::{codec, paths, units};
use offramp_edge::generate::Mode;
use serde::Deserialize;

use crate::experiment::LinkSpec;
use crate::generation_bench::{self, Cell, CellPlan, LinkCase};

/// An experiment over a decoder (see deploy/experiments/generation.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationExperiment {
    /// A whole-model decoder bundle (calibrated, for early-exit).
    pub model: PathBuf,
    /// The split point K.
    pub split: usize,
    #[serde(default = "default_modes")]
    pub modes: Vec<String>,
    /// speculative: the most drafts per verification, one cell each.
    #[serde(default = "default_drafts")]
    pub drafts: Vec<usize>,
    /// speculative: adapt the draft length below the most (default true).
    #[serde(default = "yes")]
    pub adapt_draft: bool,
    /// speculative: most verifications in flight (1: stop and wait).
    #[serde(default = "default_pipeline")]
    pub pipeline: usize,
    #[serde(default = "default_encodings")]
    pub encodings: Vec<String>,
    /// Question file (label and question per line); prompts are taken after
    /// the first `skip` (those `offramp calibrate-decoder` uses).
    #[serde(default = "default_prompts_file")]
    pub prompts_file: PathBuf,
    #[serde(default = "default_skip")]
    pub skip: usize,
    #[serde(default = "default_prompts")]
    pub prompts: usize,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Early-exit threshold (default: the bundle's calibrated one).
    #[serde(default)]
    pub threshold: Option<f32>,
    #[serde(default)]
    pub seed: u64,
    #[serde(rename = "link")]
    pub links: Vec<LinkSpec>,
}

fn default_modes() -> Vec<String> {
    ["all-cloud", "split", "early-exit", "speculative"].map(String::from).to_vec()
}
fn default_drafts() -> Vec<usize> {
    vec![4]
}
fn default_pipeline() -> usize {
    8
}
fn yes() -> bool {
    true
}
fn default_encodings() -> Vec<String> {
    vec!["f32".into()]
}
fn default_prompts_file() -> PathBuf {
    "../shared/data/text/TREC.train.all".into()
}
fn default_skip() -> usize {
    48
}
fn default_prompts() -> usize {
    6
}
fn default_max_tokens() -> usize {
    48
}

/// Whether an experiment file names a decoder bundle as its model.
pub fn is_generation(config_text: &str) -> bool {
    #[derive(Deserialize)]
    struct Peek {
        model: Option<PathBuf>,
    }
    toml::from_str::<Peek>(config_text)
        .ok()
        .and_then(|p| p.model)
        .and_then(|m| paths::find(&m).ok())
        .is_some_and(|dir| offramp_common::AnyBundle::kind_of(&dir) == Some(offramp_common::ModelKind::Decoder))
}

pub async fn run(config: &Path, text: &str, out: &Path) -> Result<Vec<Cell>> {
    let cfg: GenerationExperiment = toml::from_str(text).with_context(|| format!("parsing {}", config.display()))?;
    let model = paths::find(&cfg.model)?;
    let bundle = DecoderBundle::open(&model).with_context(|| format!("opening {}", model.display()))?;
    let n = bundle.num_layers();
    if bundle.holds() != (0..n) {
        bail!("{}: the experiment needs a whole-model bundle (its cloud holds every layer)", model.display());
    }
    if cfg.links.is_empty() {
        bail!("the experiment needs at least one [[link]]");
    }
    let modes = cfg
        .modes
        .iter()
        .map(|m| {
            <Mode as clap::ValueEnum>::from_str(m, true)
                .map_err(|_| anyhow::anyhow!("mode {m:?}: one of all-cloud, split, early-exit, speculative, all-edge"))
        })
        .collect::<Result<Vec<_>>>()?;
    if cfg.drafts.is_empty() || cfg.drafts.contains(&0) {
        bail!("drafts: at least one draft length, each at least 1");
    }
    if cfg.pipeline == 0 {
        bail!("pipeline: at least 1");
    }
    let encodings =
        cfg.encodings.iter().map(|e| codec::parse_encoding(e).map_err(anyhow::Error::msg)).collect::<Result<_>>()?;
    let links = cfg
        .links
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let delay = match &l.delay {
                Some(d) => units::parse_duration(d).map_err(|e| anyhow::anyhow!("link {:?}: {e}", l.name))?,
                None => std::time::Duration::ZERO,
            };
            Ok(LinkCase { name: l.name.clone(), rtt: delay * 2, config: l.build(cfg.seed.wrapping_add(i as u64))? })
        })
        .collect::<Result<Vec<_>>>()?;
    let prompts = generation_bench::chat_prompts(&bundle, &paths::find(&cfg.prompts_file)?, cfg.skip, cfg.prompts)?;
    let plan = CellPlan {
        model: model.clone(),
        split: cfg.split,
        modes,
        drafts: cfg.drafts.clone(),
        adapt_draft: cfg.adapt_draft,
        pipeline: cfg.pipeline,
        encodings,
        threshold: cfg.threshold,
        max_tokens: cfg.max_tokens,
    };
    let cells_total = links.len()
        * plan.encodings.len()
        * plan.modes.iter().map(|&m| if m == Mode::Speculative { plan.drafts.len() } else { 1 }).sum::<usize>();
    let bar = indicatif::ProgressBar::new(cells_total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} cells {msg}")
            .expect("valid template"),
    );
    bar.set_prefix("generation");
    let (cells, threshold) = generation_bench::run_cells(&plan, &links, &prompts, |c| {
        bar.set_message(format!("{}: {:.1} tok/s", c.name(), c.tokens_per_s));
        bar.inc(1);
    })
    .await?;
    bar.finish_and_clear();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = csv::Writer::from_path(out.join("results.csv"))?;
    for c in &cells {
        w.serialize(c)?;
    }
    w.flush()?;
    let json = serde_json::json!({
        "model_id": bundle.model_id(),
        "config_file": config.display().to_string(),
        "config": text,
        "prompts": prompts.len(),
        "max_tokens": cfg.max_tokens,
        "early_exit_threshold": threshold,
        "cells": cells,
        "speculative_over_split": generation_bench::ratios_to_split(&cells, "speculative"),
    });
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&json)?)?;
    generation_bench::plots(out, bundle.model_id(), &cells)?;
    Ok(cells)
}

/// One line per cell, after where they were written.
pub fn render(cells: &[Cell], out: &Path) -> String {
    let mut s = format!("{} generation cells written to {}\n", cells.len(), out.display());
    for c in cells {
        s.push_str(&format!(
            "{:<44} {:>7.1} tok/s  TTFT {:>6.0} ms  ITL p50 {:>6.1} p99 {:>7.1} ms  RT/tok {:.2}{}\n",
            c.name(),
            c.tokens_per_s,
            c.ttft_ms_p50,
            c.itl_ms_p50,
            c.itl_ms_p99,
            c.round_trips_per_token,
            c.acceptance_rate.map(|a| format!("  accepted {:.0}%", a * 100.0)).unwrap_or_default()
        ));
    }
    for (rtt, d, r) in generation_bench::ratios_to_split(cells, "speculative") {
        s.push_str(&format!(
            "RTT {rtt:.0} ms: speculative (draft <= {}) {r:.2}x the tokens/s of split\n",
            d.unwrap_or_default()
        ));
    }
    s
}
