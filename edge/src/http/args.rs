//! The flags of `offramp-edge serve --http-listen` beyond the edge's own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use offramp_common::decoder::DecoderBundle;
use offramp_common::{paths, units};
use offramp_transport::tls::ClientTls;
use offramp_transport::token::Secret;

use super::HttpDefaults;
use crate::config::EdgeArgs;
use crate::generate::args::SpeculativeArgs;
use crate::generate::{DecoderEdge, GenerateConfig, Mode};
use crate::transport::{ConnectConfig, Credentials};

#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Serve the OpenAI-compatible HTTP API (/v1/chat/completions,
    /// /v1/completions, /v1/models) for a decoder bundle on this address
    /// (loopback by default) instead of the Classify API.
    #[arg(long, env = "OFFRAMP_HTTP_LISTEN", num_args = 0..=1, default_missing_value = "127.0.0.1:8080")]
    pub http_listen: Option<SocketAddr>,
    /// HTTP API: generation mode unless a request names another (`mode`).
    #[arg(long, value_enum, default_value = "split")]
    pub mode: Mode,
    #[command(flatten)]
    pub speculative: SpeculativeArgs,
    /// HTTP API: early-exit threshold (default: the bundle's calibrated one).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// HTTP API: tokens per request when it gives no max_tokens.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// HTTP API: temperature when a request gives none (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// HTTP API: generations at once (more requests wait their turn).
    #[arg(long, default_value_t = 4)]
    pub http_concurrency: usize,
    /// HTTP API: file holding the API key requests must send
    /// (`Authorization: Bearer KEY`); without it the API trusts whoever can
    /// reach its address.
    #[arg(long, env = "OFFRAMP_HTTP_TOKEN_FILE")]
    pub http_token_file: Option<PathBuf>,
    /// How often a lost cloud is tried again.
    #[arg(long, value_parser = units::parse_duration, default_value = "500ms")]
    pub retry_every: Duration,
}

impl HttpArgs {
    /// The decoder edge and the API's defaults from the edge's flags and these.
    pub fn edge(&self, edge: EdgeArgs) -> Result<(DecoderEdge, HttpDefaults)> {
        let args = edge.with_file()?;
        let model = args.model.as_deref().context("--http-listen needs --model DIR: a decoder bundle")?;
        let dir = paths::find(model)?;
        if !dir.join(offramp_common::decoder::DECODER_MANIFEST).is_file() {
            anyhow::bail!(
                "--http-listen serves a decoder bundle; {} is not one (no {}); a classifier is served with --listen",
                dir.display(),
                offramp_common::decoder::DECODER_MANIFEST
            );
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            anyhow::bail!("--temperature {}: must be 0 (greedy) or positive", self.temperature);
        }
        if self.max_tokens == 0 || self.http_concurrency == 0 {
            anyhow::bail!("--max-tokens and --http-concurrency must be at least 1");
        }
        let bundle = DecoderBundle::open(&dir).with_context(|| format!("opening decoder bundle {}", dir.display()))?;
        let split = args.split.unwrap_or(bundle.holds().end);
        let mut config = GenerateConfig::new(self.mode, split, args.clouds.clone());
        if let Some(e) = args.encoding {
            config.encoding = e;
        }
        if let Some(d) = args.deadline {
            config.deadline = d;
        }
        config.retry_every = self.retry_every;
        config.threshold = self.threshold;
        if let Some(id) = &args.edge_id {
            config.edge_id = id.clone();
        }
        self.speculative.apply(&mut config);
        let mut connect = ConnectConfig::default();
        if let Some(t) = args.connect_timeout {
            connect.connect_timeout = t;
        }
        config.connect = connect;
        config.credentials = Credentials {
            tls: ClientTls::load(&args.tls)?,
            token: args.token_file.as_deref().map(Secret::from_file).transpose()?,
        };
        let defaults = HttpDefaults {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            concurrency: self.http_concurrency,
            token: self.http_token_file.as_deref().map(Secret::from_file).transpose()?,
        };
        Ok((DecoderEdge::new(bundle, config)?, defaults))
    }
}
