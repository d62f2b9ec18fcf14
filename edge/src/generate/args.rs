//! `offramp-edge generate`: flags, and the command itself.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use offramp_common::decoder::sample::Sampling;
use offramp_common::decoder::{ChatMessage, DecoderBundle};
use offramp_common::{codec, paths, units};
use offramp_proto as pb;
use offramp_transport::tls::{ClientTls, ClientTlsArgs};
use offramp_transport::token::Secret;

use super::{DecoderEdge, GenOptions, GenerateConfig, Mode, Tier, TokenEvent};
use crate::transport::{ConnectConfig, Credentials};

/// Generate text with a decoder split between this device and a cloud.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Decoder bundle: the whole model (`offramp import gguf`) or the edge
    /// side of a split (`offramp split`).
    #[arg(long, env = "OFFRAMP_MODEL")]
    pub model: PathBuf,
    /// Split point K: layers [0, K) run here, [K, N) in the cloud. Default:
    /// the layers the bundle holds.
    #[arg(long, env = "OFFRAMP_SPLIT")]
    pub split: Option<usize>,
    /// Cloud endpoint URL; repeat (or comma-separate) for replicas: a session
    /// sticks to one and moves to another when it is lost.
    #[arg(long = "cloud", env = "OFFRAMP_CLOUD", value_delimiter = ',')]
    pub clouds: Vec<String>,
    /// split: every token from the cloud; early-exit: the edge's exit
    /// answers when confident; speculative: the edge drafts, the cloud
    /// verifies several drafts per round trip (same output as split);
    /// all-cloud (K = 0); all-edge (K = N).
    #[arg(long, value_enum, default_value = "split")]
    pub mode: Mode,
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
    /// Seed of the sampler (a fixed seed repeats a sampled generation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// early-exit: top-1 probability above which the exit answers (default:
    /// the bundle's calibrated threshold).
    #[arg(long)]
    pub threshold: Option<f32>,
    #[command(flatten)]
    pub speculative: SpeculativeArgs,
    /// Encoding of the layer-K states on the wire: f32, f16, bf16, int8
    /// (only f32 keeps the output exactly the whole model's).
    #[arg(long, value_parser = codec::parse_encoding, default_value = "f32")]
    pub encoding: pb::Encoding,
    /// How long a token waits for the cloud before the edge answers itself.
    #[arg(long, value_parser = units::parse_duration, default_value = "2s")]
    pub deadline: Duration,
    /// How often a lost cloud is tried again.
    #[arg(long, value_parser = units::parse_duration, default_value = "500ms")]
    pub retry_every: Duration,
    /// Measure agreement with the whole model (the cloud is asked for its
    /// token where the edge answered; nothing waits for it).
    #[arg(long)]
    pub agreement: bool,
    /// Keep generating past end-of-turn tokens (for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// One JSON record per token, then a summary record.
    #[arg(long)]
    pub json: bool,
    /// File holding this edge's bearer token for the cloud.
    #[arg(long, env = "OFFRAMP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Name of this edge in its sessions.
    #[arg(long, env = "OFFRAMP_EDGE_ID", default_value = "edge")]
    pub edge_id: String,
}

/// Flags of `--mode speculative` (shared by `generate` and `serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct SpeculativeArgs {
    /// speculative: most tokens drafted ahead of the last verified one
    /// (adapting below it to the measured acceptance rate and round trip).
    #[arg(long, default_value_t = 6)]
    pub draft: usize,
    /// speculative: send blocks of exactly --draft drafts (no adaptation).
    #[arg(long)]
    pub fixed_draft: bool,
    /// speculative: most verifications in flight; the edge drafts on while
    /// they are (1: send a block and wait for its answer).
    #[arg(long, default_value_t = 8)]
    pub pipeline: usize,
}

impl SpeculativeArgs {
    pub fn apply(&self, config: &mut GenerateConfig) {
        config.draft = self.draft;
        config.adapt_draft = !self.fixed_draft;
        config.pipeline = self.pipeline;
    }
}

impl GenerateArgs {
    /// The edge these flags describe (the bundle is loaded here).
    pub fn edge(&self) -> Result<DecoderEdge> {
        let dir = paths::find(&self.model)?;
        let bundle = DecoderBundle::open(&dir).with_context(|| format!("opening decoder bundle {}", dir.display()))?;
        let split = self.split.unwrap_or(bundle.holds().end);
        let mut config = GenerateConfig::new(self.mode, split, self.clouds.clone());
        config.encoding = self.encoding;
        config.deadline = self.deadline;
        config.retry_every = self.retry_every;
        config.threshold = self.threshold;
        config.edge_id = self.edge_id.clone();
        self.speculative.apply(&mut config);
        config.connect = ConnectConfig::default();
        config.credentials = Credentials {
            tls: ClientTls::load(&self.tls)?,
            token: self.token_file.as_deref().map(Secret::from_file).transpose()?,
        };
        Ok(DecoderEdge::new(bundle, config)?)
    }

    pub fn options(&self) -> Result<GenOptions> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            anyhow::bail!("--temperature {}: must be 0 (greedy) or positive", self.temperature);
        }
        if self.max_tokens == 0 {
            anyhow::bail!("--max-tokens must be at least 1");
        }
        Ok(GenOptions {
            max_tokens: self.max_tokens,
            sampling: Sampling::from_temperature(self.temperature),
            seed: self.seed,
            agreement: self.agreement,
            ignore_eos: self.ignore_eos,
            ..GenOptions::default()
        })
    }
}

/// Runs `offramp-edge generate`.
pub async fn run(args: GenerateArgs) -> Result<()> {
    if args.prompt.is_none() && !args.chat {
        anyhow::bail!("give a prompt (--prompt TEXT), or --chat for a conversation");
    }
    let opts = args.options()?;
    let edge = args.edge()?;
    let tok = edge.tokenizer().clone();
    let json = args.json;
    let print = move |e: &TokenEvent| {
        let mut out = std::io::stdout().lock();
        if json {
            let _ = serde_json::to_writer(&mut out, e);
            let _ = out.write_all(b"\n");
        } else {
            let _ = out.write_all(e.text.as_bytes());
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
                args.mode.name()
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
    }
}
