//! The flags of `offramp-edge serve --http-listen` beyond the edge's own
//! (the decoder's mode, drafting, clouds, transport and deadline are edge
//! flags, [`crate::config::EdgeArgs`], shared with `generate`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use offramp_transport::token::Secret;

use super::HttpDefaults;

#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Serve the OpenAI-compatible HTTP API (/v1/chat/completions,
    /// /v1/completions, /v1/models) for a decoder bundle on this address
    /// (loopback by default) instead of the Classify API.
    #[arg(long, env = "OFFRAMP_HTTP_LISTEN", num_args = 0..=1, default_missing_value = "127.0.0.1:8080")]
    pub http_listen: Option<SocketAddr>,
    /// HTTP API: tokens per request when it gives no max_tokens [default: 256].
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// HTTP API: temperature when a request gives none (0: greedy) [default: 0].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// HTTP API: generations at once (more requests wait their turn) [default: 4].
    #[arg(long)]
    pub http_concurrency: Option<usize>,
    /// HTTP API: file holding the API key requests must send
    /// (`Authorization: Bearer KEY`); without it the API trusts whoever can
    /// reach its address.
    #[arg(long, env = "OFFRAMP_HTTP_TOKEN_FILE")]
    pub http_token_file: Option<PathBuf>,
}

impl HttpArgs {
    /// The flags given (by name) that only the HTTP API uses.
    pub fn given(&self) -> Vec<&'static str> {
        [
            ("max-tokens", self.max_tokens.is_some()),
            ("temperature", self.temperature.is_some()),
            ("http-concurrency", self.http_concurrency.is_some()),
            ("http-token-file", self.http_token_file.is_some()),
        ]
        .into_iter()
        .filter(|&(_, given)| given)
        .map(|(flag, _)| flag)
        .collect()
    }

    /// The API's defaults from these flags, checked.
    pub fn defaults(&self) -> Result<HttpDefaults> {
        let d = HttpDefaults::default();
        let defaults = HttpDefaults {
            max_tokens: self.max_tokens.unwrap_or(d.max_tokens),
            temperature: self.temperature.unwrap_or(d.temperature),
            concurrency: self.http_concurrency.unwrap_or(d.concurrency),
            token: self.http_token_file.as_deref().map(Secret::from_file).transpose()?,
        };
        if !(defaults.temperature >= 0.0 && defaults.temperature.is_finite()) {
            anyhow::bail!("--temperature {}: must be 0 (greedy) or positive", defaults.temperature);
        }
        if defaults.max_tokens == 0 || defaults.concurrency == 0 {
            anyhow::bail!("--max-tokens and --http-concurrency must be at least 1");
        }
        Ok(defaults)
    }
}
