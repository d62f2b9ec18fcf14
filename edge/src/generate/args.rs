//! `offramp-edge generate`: flags, and the command itself.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use offramp_common::decoder::sample::{Sampling, Truncation};
use offramp_common::decoder::ChatMessage;

use super::{DecoderEdge, GenOptions, Tier, TokenEvent};
use crate::config::{ConfigError, EdgeArgs, Loaded};

/// Generate text with a decoder split between this device and a cloud: the
/// edge's flags (model, split, clouds, transport, deadline, decoder mode
/// and drafting, ...) and what to generate.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub edge: EdgeArgs,
    /// The prompt (with --chat: the user's message).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Format the prompt with the model's chat template; without --prompt,
    /// a conversation on the terminal (one user turn per line).
    #[arg(long)]
    pub chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// With --temperature: keep the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    /// With --temperature: keep the fewest most likely tokens whose mass
    /// reaches P (0 or 1: all).
    #[arg(long, default_value_t = 0.0)]
    pub top_p: f32,
    /// With --temperature: keep the tokens at least P times as likely as the
    /// most likely one (0: all).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Text that ends the generation where it first appears (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Seed of the sampler (a fixed seed repeats a sampled generation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Measure agreement with the whole model (the cloud is asked for its
    /// token where the edge answered; nothing waits for it).
    #[arg(long)]
    pub agreement: bool,
    /// Keep generating past end-of-turn tokens (for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// The output must be JSON valid against the JSON schema in this file
    /// (constrained decoding, exact in every mode).
    #[arg(long, value_name = "FILE", conflicts_with = "json_object")]
    pub json_schema: Option<std::path::PathBuf>,
    /// The output must be a JSON object.
    #[arg(long)]
    pub json_object: bool,
    /// Print each token's log-probability with this many alternatives
    /// (with --json: in the token records).
    #[arg(long, value_name = "N")]
    pub logprobs: Option<usize>,
    /// One JSON record per token, then a summary record.
    #[arg(long)]
    pub json: bool,
}

impl GenerateArgs {
    /// The edge these flags describe (the bundle is loaded here; a
    /// classifier bundle, or a flag that only a classifier uses, is refused
    /// by name), and where its metrics go.
    pub fn edge(&self) -> Result<(DecoderEdge, Option<std::net::SocketAddr>)> {
        decoder_edge(
            self.edge.clone(),
            "`offramp-edge generate` runs a decoder; classify with `offramp-edge run` or serve",
        )
    }

    pub fn options(&self) -> Result<GenOptions> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            anyhow::bail!("--temperature {}: must be 0 (greedy) or positive", self.temperature);
        }
        if self.max_tokens == 0 {
            anyhow::bail!("--max-tokens must be at least 1");
        }
        let truncation = Truncation { top_k: self.top_k, top_p: self.top_p, min_p: self.min_p };
        truncation.check().map_err(|e| anyhow::anyhow!("--{e}").context("sampling"))?;
        if !truncation.is_off() && self.temperature == 0.0 {
            anyhow::bail!("--top-k, --top-p and --min-p shape sampling: give a --temperature above 0 too");
        }
        let constraint = match (&self.json_schema, self.json_object) {
            (Some(path), _) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("--json-schema {}", path.display()))?;
                let schema = serde_json::from_str(&text)
                    .with_context(|| format!("--json-schema {}: not JSON", path.display()))?;
                Some(super::grammar::Constraint::JsonSchema(schema))
            }
            (None, true) => Some(super::grammar::Constraint::JsonObject),
            (None, false) => None,
        };
        Ok(GenOptions {
            max_tokens: self.max_tokens,
            sampling: Sampling::from_temperature(self.temperature),
            truncation,
            stop: self.stop.clone(),
            seed: self.seed,
            agreement: self.agreement,
            ignore_eos: self.ignore_eos,
            logprobs: self.logprobs,
            constraint,
            ..GenOptions::default()
        })
    }
}

/// A decoder's edge from the edge flags (`hint` says what to do with a
/// classifier bundle instead), and its metrics address.
pub fn decoder_edge(args: EdgeArgs, hint: &'static str) -> Result<(DecoderEdge, Option<std::net::SocketAddr>)> {
    match crate::config::load(args)? {
        Loaded::Decoder(d) => {
            let d = *d;
            let dir = d.bundle.dir().to_path_buf();
            let edge = DecoderEdge::new(d.bundle, d.generate)
                .with_context(|| format!("starting the decoder edge for {}", dir.display()))?;
            Ok((edge, d.metrics_listen))
        }
        Loaded::Classifier(c) => Err(ConfigError::WrongKind {
            model: c.bundle.model_id().to_string(),
            kind: offramp_common::ModelKind::Classifier,
            hint,
        }
        .into()),
    }
}

/// Runs `offramp-edge generate`.
pub async fn run(args: GenerateArgs) -> Result<()> {
    if args.prompt.is_none() && !args.chat {
        anyhow::bail!("give a prompt (--prompt TEXT), or --chat for a conversation");
    }
    let opts = args.options()?;
    let (edge, metrics) = args.edge()?;
    crate::metrics::serve(metrics)?;
    edge.connect().await?;
    let tok = edge.tokenizer().clone();
    let json = args.json;
    let print = move |e: &TokenEvent| {
        let mut out = std::io::stdout().lock();
        if json {
            let _ = serde_json::to_writer(&mut out, e);
            let _ = out.write_all(b"\n");
        } else {
            let _ = out.write_all(e.text.as_bytes());
            if let Some(l) = &e.logprobs {
                // Beside the text, on stderr: the token's log-probability
                // and the alternatives.
                let top: Vec<String> = l.top.iter().map(|(t, lp)| format!("{t}:{lp:.3}")).collect();
                eprintln!("\t[token {} logprob {:.3}; top {}]", e.token, l.logprob, top.join(" "));
            }
        }
        let _ = out.flush();
    };
    let finish = |summary: &super::Summary| {
        if json {
            println!("{}", serde_json::json!({ "summary": summary }));
        } else {
            println!();
            eprint!("{}", summary.render());
        }
    };
    match (&args.prompt, args.chat) {
        (Some(prompt), chat) => {
            let ids = if chat {
                tok.encode_chat(&[ChatMessage { role: "user".into(), content: prompt.clone() }])?
            } else {
                tok.encode(prompt)?
            };
            let g = edge.generate(&ids, &opts, print).await?;
            finish(&g.summary);
        }
        (None, _) => {
            let mut history: Vec<ChatMessage> = Vec::new();
            let stdin = std::io::stdin();
            eprintln!(
                "chat with {} (split {}, mode {}); an empty line ends",
                edge.bundle().model_id(),
                edge.split(),
                edge.mode().name()
            );
            loop {
                eprint!("> ");
                let mut line = String::new();
                if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
                    break;
                }
                history.push(ChatMessage { role: "user".into(), content: line.trim().to_string() });
                let ids = tok.encode_chat(&history)?;
                let g = edge.generate(&ids, &opts, &print).await?;
                let reply: Vec<u32> = g.tokens.iter().copied().filter(|&t| !tok.is_stop(t)).collect();
                history.push(ChatMessage { role: "assistant".into(), content: tok.decode(&reply)? });
                finish(&g.summary);
            }
        }
    }
    Ok(())
}

/// A short tier label for terminal output (`E`, `C`, `F`).
pub fn tier_mark(t: Tier) -> &'static str {
    match t {
        Tier::Edge => "E",
        Tier::Cloud => "C",
        Tier::Fallback => "F",
        Tier::Error => "!",
    }
}
