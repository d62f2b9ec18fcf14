//! Generation with a decoder split between this device and a cloud.
//!
//! The edge embeds tokens and runs layers `0..K` with its own KV cache; the
//! layer-K states of every position go to the cloud's session
//! ([`link::CloudSession`]), which runs layers `K..N` with its cache. Modes,
//! one code path:
//!
//! - `split`: every token is the cloud's answer (the output equals the whole
//!   model's).
//! - `early-exit`: the edge emits its exit's token when the exit is
//!   confident; the states still go to the cloud, without waiting, so the
//!   cloud's cache has no holes and later offloads are exact.
//! - `speculative`: the edge drafts a few tokens with its exit and the
//!   cloud verifies them in one pass, keeping the prefix the whole model
//!   agrees with (greedy: exactly its tokens; sampled: its distribution).
//!   While a verification is in flight the edge drafts on as if all were
//!   accepted ([`speculative`]).
//! - `all-cloud` (K = 0) and `all-edge` (K = N).
//!
//! When the cloud is slow or gone the edge answers with its deepest exit
//! (tier `fallback`, with the reason) and keeps every layer-K state; when a
//! cloud is reachable again (the same replica or another `--cloud`) it opens
//! a new session and replays those states, so the session continues exactly
//! where it was.

pub mod args;
mod choose;
mod emit;
pub mod grammar;
pub mod link;
mod local;
mod speculative;
mod stepwise;
mod stop;

use std::sync::Arc;
use std::time::Duration;

use offramp_common::decoder::logits::LogitBias;
use offramp_common::decoder::model::{last_row, rows};
use offramp_common::decoder::sample::{Sampling, Truncation};
use offramp_common::decoder::{
    DecoderBundle, DecoderError, DecoderModel, DecoderTokenizer, KvCache, SessionStep, Tensor,
};
use offramp_proto as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::breaker::BreakerConfig;
use crate::link::handshake::{decoder_handshake, SessionSpec};
use crate::link::session::StepReply;
use crate::link::{Endpoints, LinkError};
use crate::transport::{ConnectConfig, Credentials, Transport, TransportError, TransportKind};
use link::{CloudLink, LinkTiming};

/// How a session uses the cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Every token from the cloud (layer-K state of each token crosses).
    Split,
    /// The edge's exit answers when confident; the cloud otherwise.
    EarlyExit,
    /// K = 0: the edge only embeds tokens.
    AllCloud,
    /// K = N: no cloud.
    AllEdge,
    /// The edge drafts with its exit, the cloud verifies several drafts per
    /// round trip (output identical to `split`).
    Speculative,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Split => "split",
            Mode::EarlyExit => "early-exit",
            Mode::AllCloud => "all-cloud",
            Mode::AllEdge => "all-edge",
            Mode::Speculative => "speculative",
        }
    }
}

/// Who produced a token: the edge's one tier type (a generation never
/// answers `Tier::Error`; it fails with a [`GenerateError`] instead).
pub use crate::runtime::Tier;

/// Why generation could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The request is wrong for this edge (empty prompt, too long, a mode
    /// or setting that does not run here): the caller's to fix.
    #[error("{0}")]
    BadRequest(String),
    #[error("prompt ({prompt} tokens) + max tokens {max_tokens} exceed the model's context of {context}")]
    ContextExceeded { prompt: usize, max_tokens: usize, context: usize },
    /// The edge's settings do not fit its bundle.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The cloud refused this edge for good (another model, a fingerprint
    /// mismatch, bad credentials).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The edge's own compute failed (the model, the tokenizer): not the
    /// caller's fault.
    #[error("the edge's compute failed: {0}")]
    Compute(#[from] DecoderError),
    #[error("the edge's compute task failed: {0}")]
    Join(String),
    /// Constrained decoding: a schema the engine cannot take (the
    /// caller's), or the engine failing.
    #[error(transparent)]
    Grammar(#[from] grammar::GrammarError),
}

impl GenerateError {
    /// Whether the request itself was wrong (HTTP 400), rather than the
    /// edge or its link failing.
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            GenerateError::BadRequest(_)
                | GenerateError::ContextExceeded { .. }
                | GenerateError::Grammar(grammar::GrammarError::Schema(_))
        )
    }
}

/// Settings of a decoder edge.
#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub mode: Mode,
    /// Split point for `split` and `early-exit` (ignored by the baselines).
    pub split: usize,
    pub clouds: Vec<String>,
    pub transport: TransportKind,
    pub connect: ConnectConfig,
    pub credentials: Credentials,
    pub encoding: pb::Encoding,
    /// How long one token waits for the cloud before the edge answers.
    pub deadline: Duration,
    /// How often a lost cloud is tried again.
    pub retry_every: Duration,
    /// Early-exit threshold (top-1 probability at the exit); default: the
    /// bundle's calibrated one.
    pub threshold: Option<f32>,
    pub edge_id: String,
    /// speculative: most drafts per verification, and most drafted ahead
    /// of the last verified token.
    pub draft: usize,
    /// speculative: adapt the draft length to the measured acceptance rate
    /// and round trip (else always `draft`).
    pub adapt_draft: bool,
    /// speculative: most verifications in flight at once (1: wait for each
    /// before drafting on).
    pub pipeline: usize,
}

impl GenerateConfig {
    pub fn new(mode: Mode, split: usize, clouds: Vec<String>) -> Self {
        Self {
            mode,
            split,
            clouds,
            transport: TransportKind::default(),
            connect: ConnectConfig::default(),
            credentials: Credentials::default(),
            encoding: pb::Encoding::F32,
            deadline: crate::config::defaults::TOKEN_DEADLINE,
            retry_every: crate::config::defaults::RETRY_EVERY,
            threshold: None,
            edge_id: crate::config::defaults::EDGE_ID.into(),
            draft: crate::config::defaults::DRAFT,
            adapt_draft: true,
            pipeline: crate::config::defaults::PIPELINE,
        }
    }
}

/// Per generation.
#[derive(Debug, Clone)]
pub struct GenOptions {
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// `top_k` / `top_p` / `min_p` of a sampled generation (off by default).
    pub truncation: Truncation,
    pub seed: u64,
    /// Also ask the cloud for its token where the edge answered, to measure
    /// agreement with the whole model (costs no waiting).
    pub agreement: bool,
    /// Keep going past end-of-turn tokens (benchmarks).
    pub ignore_eos: bool,
    /// This generation's mode instead of the edge's (one that runs at the
    /// edge's split: split, early-exit or speculative).
    pub mode: Option<Mode>,
    /// speculative: most drafts per verification instead of the edge's.
    pub draft: Option<usize>,
    /// How long a token waits for the cloud, instead of the edge's.
    pub deadline: Option<Duration>,
    /// Text that ends the generation where it first appears (not shown).
    pub stop: Vec<String>,
    /// Added to the logits before every choice, on both sides.
    pub logit_bias: LogitBias,
    /// Report each token's log-probability with this many alternatives.
    pub logprobs: Option<usize>,
    /// What the output must follow (a JSON schema, any JSON object).
    pub constraint: Option<grammar::Constraint>,
}

impl Default for GenOptions {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            sampling: Sampling::Greedy,
            truncation: Truncation::default(),
            seed: 0,
            agreement: false,
            ignore_eos: false,
            mode: None,
            draft: None,
            deadline: None,
            stop: Vec::new(),
            logit_bias: LogitBias::default(),
            logprobs: None,
            constraint: None,
        }
    }
}

/// One generated token, as it is emitted.
#[derive(Debug, Clone, Serialize)]
pub struct TokenEvent {
    pub index: usize,
    pub position: usize,
    pub token: u32,
    pub text: String,
    pub tier: Tier,
    /// The exit layer that answered (edge and fallback tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<usize>,
    /// Probability of the token (the exit's, or the whole model's).
    pub probability: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub latency_us: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Cloud tokens: how many sessions' steps shared the forward pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_batch: Option<u32>,
    /// The token's log-probability and the most likely alternatives, from
    /// the model that chose it (the whole model for cloud and verified
    /// tokens, the exit for edge and fallback ones), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Logprobs>,
}

/// A token's log-probability (natural log, temperature 1, before bias,
/// mask and truncation) and the most likely tokens at its position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Logprobs {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

impl From<pb::TokenLogprobs> for Logprobs {
    fn from(l: pb::TokenLogprobs) -> Self {
        Self { logprob: l.logprob, top: l.top_tokens.into_iter().zip(l.top_logprobs).collect() }
    }
}

/// What a generation did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub mode: String,
    pub split: usize,
    pub encoding: String,
    pub prompt_tokens: usize,
    pub tokens: usize,
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
    /// Decode speed after the first token.
    pub decode_tokens_per_s: f64,
    pub time_to_first_token_ms: f64,
    pub edge_tokens: usize,
    pub cloud_tokens: usize,
    pub fallback_tokens: usize,
    /// Waits for a cloud answer per token.
    pub round_trips_per_token: f64,
    pub bytes_up_per_token: f64,
    pub bytes_down_per_token: f64,
    pub sessions_opened: usize,
    /// Positions re-sent to rebuild a cloud cache after a reconnect.
    pub replayed_positions: usize,
    /// Of the tokens the edge emitted itself, the share the whole model
    /// (the cloud) would have chosen too (`--agreement`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_agreement: Option<f64>,
    /// Of all tokens, the share equal to the whole model's choice at that
    /// position (cloud tokens agree by definition).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
    /// speculative: drafts the cloud checked, and the share it accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drafts_verified: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acceptance_rate: Option<f64>,
    /// speculative: mean drafts per verification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_draft_length: Option<f64>,
    /// speculative: drafts thrown away: those after a rejected one in its
    /// block, and those drafted ahead on a verification that then rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drafts_discarded: Option<usize>,
}

impl Summary {
    pub fn render(&self) -> String {
        let mut s = format!(
            "{} tokens in {:.2}s: {:.1} tokens/s ({:.1} after the first), first token {:.0} ms\n\
             tiers: {} edge, {} cloud, {} fallback; {:.2} round trips/token; {:.0} B up, {:.0} B down per token ({}, K={})\n",
            self.tokens,
            self.elapsed_s,
            self.tokens_per_s,
            self.decode_tokens_per_s,
            self.time_to_first_token_ms,
            self.edge_tokens,
            self.cloud_tokens,
            self.fallback_tokens,
            self.round_trips_per_token,
            self.bytes_up_per_token,
            self.bytes_down_per_token,
            self.encoding,
            self.split
        );
        if self.sessions_opened > 1 || self.replayed_positions > 0 {
            s.push_str(&format!(
                "cloud sessions opened: {}, positions replayed: {}\n",
                self.sessions_opened, self.replayed_positions
            ));
        }
        if let (Some(v), Some(a), Some(m), Some(d)) =
            (self.drafts_verified, self.acceptance_rate, self.mean_draft_length, self.drafts_discarded)
        {
            s.push_str(&format!(
                "speculative: {v} drafts verified, {:.1}% accepted, {m:.2} per verification, {d} thrown away\n",
                a * 100.0
            ));
        }
        if let (Some(a), Some(e)) = (self.agreement, self.edge_agreement) {
            s.push_str(&format!(
                "agreement with the whole model: {:.1}% of tokens ({:.1}% of edge tokens)\n",
                a * 100.0,
                e * 100.0
            ));
        }
        s
    }
}

/// A generation's output.
#[derive(Debug, Clone)]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub text: String,
    pub events: Vec<TokenEvent>,
    pub summary: Summary,
    pub finish: Finish,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The model's end-of-turn token, or a stop sequence.
    Stop,
    /// The most tokens asked for.
    Length,
}

/// A device holding the edge side of a decoder.
pub struct DecoderEdge {
    bundle: DecoderBundle,
    model: Arc<DecoderModel>,
    config: GenerateConfig,
    split: usize,
    /// The deepest exit at or before the split, and its threshold.
    exit: Option<usize>,
    threshold: Option<f32>,
    endpoints: Arc<Endpoints>,
    /// The grammar engine's view of the vocabulary, built on first use.
    grammars: std::sync::OnceLock<Result<Arc<grammar::Grammars>, String>>,
}

impl std::fmt::Debug for DecoderEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderEdge").field("model", &self.bundle.model_id()).field("split", &self.split).finish()
    }
}

impl DecoderEdge {
    /// Loads the edge side and checks the settings against it.
    pub fn new(bundle: DecoderBundle, config: GenerateConfig) -> Result<Self, GenerateError> {
        let n = bundle.num_layers();
        let split = match config.mode {
            Mode::AllCloud => 0,
            Mode::AllEdge => n,
            Mode::Split | Mode::EarlyExit | Mode::Speculative => config.split,
        };
        if split > n {
            return Err(GenerateError::Config(format!(
                "--split {split}: {} has {n} layers (K in 0..={n})",
                bundle.model_id()
            )));
        }
        if !bundle.serves_edge(split) {
            let h = bundle.holds();
            return Err(GenerateError::Config(format!(
                "{} holds layers {}..{}{}; split {split} needs the embeddings and layers 0..{split}{}",
                bundle.dir().display(),
                h.start,
                h.end,
                if bundle.manifest().holds.embeddings { "" } else { " without the embeddings" },
                if split == n { " and the LM head" } else { "" }
            )));
        }
        let exit = bundle.exits_within(split).last().map(|e| e.layer);
        let threshold = config.threshold.or_else(|| {
            exit.and_then(|l| bundle.manifest().exits.iter().find(|e| e.layer == l).and_then(|e| e.threshold))
        });
        if config.mode == Mode::EarlyExit {
            let Some(layer) = exit else {
                return Err(GenerateError::Config(format!(
                    "early-exit needs an exit at or before layer {split}; {} has exits after layers {:?}",
                    bundle.model_id(),
                    bundle.manifest().exits.iter().map(|e| e.layer).collect::<Vec<_>>()
                )));
            };
            if threshold.is_none() {
                return Err(GenerateError::Config(format!(
                    "early-exit needs a threshold for the exit after layer {layer}: pass --threshold, or calibrate the bundle \
                     (`offramp calibrate-decoder`)"
                )));
            }
        }
        if config.mode == Mode::Speculative {
            if split >= n {
                return Err(GenerateError::Config(format!(
                    "speculative needs layers after the split to verify with: --split {split} of {n} layers"
                )));
            }
            if config.draft == 0 {
                return Err(GenerateError::Config("--draft must be at least 1".into()));
            }
            if config.pipeline == 0 {
                return Err(GenerateError::Config("--pipeline must be at least 1".into()));
            }
        }
        if config.mode != Mode::AllEdge && config.clouds.is_empty() {
            return Err(GenerateError::Config(format!("mode {} needs a cloud: pass --cloud URL", config.mode.name())));
        }
        if let Some(t) = threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(GenerateError::Config(format!("--threshold {t}: a top-1 probability is in [0, 1]")));
            }
        }
        let endpoints = config
            .clouds
            .iter()
            .map(|url| Ok((url.clone(), Transport::new(config.transport, url, &config.connect, &config.credentials)?)))
            .collect::<Result<Vec<_>, TransportError>>()?;
        // Sessions retry on the link's own timing (`retry_every`), not on
        // the endpoints' breakers (see [`link`]).
        let endpoints = Arc::new(Endpoints::new(endpoints, BreakerConfig::default()));
        let model = Arc::new(bundle.model()?);
        Ok(Self { bundle, model, config, split, exit, threshold, endpoints, grammars: Default::default() })
    }

    /// Handshakes with every cloud endpoint now (when this edge uses a
    /// cloud). A reachable endpoint that cannot serve this edge (another
    /// model, split, fingerprint or encoding; refused credentials) is an
    /// error, said once and never retried; an unreachable one is tried when
    /// a generation needs it. The endpoints that answered.
    pub async fn connect(&self) -> Result<usize, GenerateError> {
        if self.split == self.bundle.num_layers() {
            return Ok(0);
        }
        let spec = self.session_spec(self.bundle.config().context);
        let timeout = self.config.connect.connect_timeout.max(Duration::from_millis(500));
        let mut ok = 0;
        for ep in self.endpoints.iter() {
            match decoder_handshake(ep, &spec, timeout).await {
                Ok(_) => ok += 1,
                Err(LinkError::Incompatible(e)) => {
                    // Said once, by the caller that gets this error.
                    ep.refuse(e.clone());
                    return Err(LinkError::from(e).into());
                }
                Err(e) => {
                    tracing::warn!(endpoint = %ep.url, error = %e, "cloud unreachable at start; the edge answers until it is back");
                }
            }
        }
        Ok(ok)
    }

    /// Whether generations can reach a cloud now (always at K = N): the
    /// decoder handshake with the first endpoint that passes it, within the
    /// connect timeout; else why none does.
    pub async fn probe(&self) -> Result<(), LinkError> {
        if self.split == self.bundle.num_layers() {
            return Ok(());
        }
        let spec = self.session_spec(self.bundle.config().context);
        let timeout = self.config.connect.connect_timeout.max(Duration::from_millis(500));
        let mut last = LinkError::NoCloud;
        for ep in self.endpoints.iter() {
            if let Some(r) = ep.refusal() {
                last = r.clone().into();
                continue;
            }
            match decoder_handshake(ep, &spec, timeout).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The link's timing: how long a session may take to open, how long
    /// after a loss the cloud is tried again.
    fn timing(&self) -> LinkTiming {
        LinkTiming {
            open_timeout: self.config.connect.connect_timeout + self.config.deadline,
            retry_every: self.config.retry_every,
        }
    }

    /// Whether `mode` can run on this edge as loaded (at its split).
    pub fn check_mode(&self, mode: Mode) -> Result<(), GenerateError> {
        if self.runs(mode) {
            return Ok(());
        }
        let (k, n) = (self.split, self.bundle.config().layers);
        let runs: Vec<&str> = [Mode::Split, Mode::EarlyExit, Mode::Speculative, Mode::AllCloud, Mode::AllEdge]
            .into_iter()
            .filter(|&m| self.runs(m))
            .map(Mode::name)
            .collect();
        Err(GenerateError::Config(format!(
            "mode {} does not run on this edge (split {k} of {n} layers{}); it runs: {}",
            mode.name(),
            if self.endpoints.is_empty() { ", no cloud" } else { "" },
            runs.join(", ")
        )))
    }

    fn runs(&self, mode: Mode) -> bool {
        let (k, n) = (self.split, self.bundle.config().layers);
        let fits = match mode {
            Mode::AllCloud => k == 0,
            Mode::AllEdge => k == n,
            Mode::Split | Mode::Speculative => k < n,
            Mode::EarlyExit => k < n && self.exit.is_some() && self.threshold.is_some(),
        };
        fits && (mode == Mode::AllEdge || !self.endpoints.is_empty())
    }

    pub fn tokenizer(&self) -> &Arc<DecoderTokenizer> {
        self.bundle.tokenizer()
    }

    pub fn bundle(&self) -> &DecoderBundle {
        &self.bundle
    }

    pub fn split(&self) -> usize {
        self.split
    }

    /// The mode generations run in unless they name another.
    pub fn mode(&self) -> Mode {
        self.config.mode
    }

    pub fn threshold(&self) -> Option<f32> {
        self.threshold
    }

    /// Generates up to `opts.max_tokens` tokens after `prompt`, calling
    /// `on_token` as each is emitted.
    pub async fn generate(
        &self,
        prompt: &[u32],
        opts: &GenOptions,
        on_token: impl FnMut(&TokenEvent),
    ) -> Result<Generated, GenerateError> {
        if prompt.is_empty() {
            return Err(GenerateError::BadRequest("the prompt has no tokens".into()));
        }
        let c = self.bundle.config().clone();
        let max_positions = prompt.len() + opts.max_tokens;
        if max_positions > c.context {
            return Err(GenerateError::ContextExceeded {
                prompt: prompt.len(),
                max_tokens: opts.max_tokens,
                context: c.context,
            });
        }
        let mode = opts.mode.unwrap_or(self.config.mode);
        if mode != self.config.mode {
            self.check_mode(mode).map_err(|e| GenerateError::BadRequest(e.to_string()))?;
        }
        if opts.draft == Some(0) {
            return Err(GenerateError::BadRequest("the draft length must be at least 1".into()));
        }
        opts.truncation.check().map_err(|e| GenerateError::BadRequest(e.to_string()))?;
        if let Some(n) = opts.logprobs {
            offramp_common::decoder::logits::check_top_logprobs(n.min(u32::MAX as usize) as u32)
                .map_err(|e| GenerateError::BadRequest(e.to_string()))?;
        }
        if mode == Mode::Speculative {
            return speculative::generate(self, prompt, opts, on_token).await;
        }
        stepwise::generate(self, prompt, opts, mode, on_token).await
    }

    /// The session the edge asks a cloud for.
    fn session_spec(&self, max_positions: usize) -> SessionSpec {
        SessionSpec {
            model_id: self.bundle.model_id().to_string(),
            split: self.split,
            cloud_fingerprint: self.bundle.cloud_fingerprint(self.split),
            max_positions,
            encoding: self.config.encoding,
            edge_id: self.config.edge_id.clone(),
        }
    }

    /// Whether this edge can follow `c` (a schema the engine takes).
    pub fn check_constraint(&self, c: &grammar::Constraint) -> Result<(), GenerateError> {
        self.grammar(c).map(drop)
    }

    /// A fresh state of the grammar `c` over this model's vocabulary.
    fn grammar(&self, c: &grammar::Constraint) -> Result<grammar::Grammar, GenerateError> {
        let grammars = self
            .grammars
            .get_or_init(|| {
                let vocab = self.bundle.config().vocab;
                grammar::Grammars::new(self.bundle.tokenizer().clone(), vocab).map(Arc::new).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| GenerateError::Grammar(grammar::GrammarError::Tokenizer(e.clone())))?;
        Ok(grammars.start(c)?)
    }

    fn local_head(&self) -> LocalHead {
        LocalHead { exit: self.exit, split: self.split, layers: self.bundle.config().layers }
    }

    fn local_logits(&self, tap: &Tensor) -> Result<Vec<f32>, GenerateError> {
        self.local_head().logits(&self.model, tap)
    }
}

/// The edge's own head for the next token: the whole model's head when
/// K = N, else its deepest exit at or before K (with its adapter), or the
/// bare head over layer K when there is none.
#[derive(Debug, Clone, Copy)]
struct LocalHead {
    exit: Option<usize>,
    split: usize,
    layers: usize,
}

impl LocalHead {
    /// The layer whose state the head reads: N when K = N, else the exit.
    fn tap(self) -> usize {
        match self.exit.filter(|&e| e < self.split) {
            Some(e) if self.split < self.layers => e,
            _ => self.split,
        }
    }

    /// The head's logits over the state at [`Self::tap`].
    fn logits(self, model: &DecoderModel, tap: &Tensor) -> Result<Vec<f32>, GenerateError> {
        let logits = if self.split == self.layers {
            // K = N: the whole model's own head over the last layer.
            model.logits(tap)?
        } else {
            model.exit_logits(self.tap(), tap)?
        };
        Ok(rows(&logits)?.remove(0))
    }
}

impl Summary {
    /// Counts one emitted token of `tier` (and the edge's metric).
    fn count(&mut self, tier: Tier) {
        match tier {
            Tier::Edge => self.edge_tokens += 1,
            Tier::Cloud => self.cloud_tokens += 1,
            Tier::Fallback => self.fallback_tokens += 1,
            Tier::Error => {}
        }
        metrics::counter!("offramp_edge_generated_tokens_total", "tier" => tier.as_str()).increment(1);
    }

    /// Per-token averages and rates once `tokens` were emitted.
    fn finish(&mut self, tokens: usize, elapsed: Duration, first_token_at: Option<Duration>, cloud: &CloudLink) {
        self.tokens = tokens;
        self.elapsed_s = elapsed.as_secs_f64();
        self.tokens_per_s = tokens as f64 / elapsed.as_secs_f64().max(1e-9);
        let ttft = first_token_at.unwrap_or(elapsed);
        self.time_to_first_token_ms = ttft.as_secs_f64() * 1e3;
        if tokens > 1 {
            self.decode_tokens_per_s = (tokens - 1) as f64 / (elapsed - ttft).as_secs_f64().max(1e-9);
        }
        if tokens > 0 {
            self.round_trips_per_token /= tokens as f64;
            self.bytes_up_per_token /= tokens as f64;
            self.bytes_down_per_token /= tokens as f64;
        }
        self.sessions_opened = cloud.opened;
        self.replayed_positions = cloud.replayed;
        metrics::counter!("offramp_edge_cloud_sessions_total").increment(cloud.opened as u64);
    }
}

/// Layers `0..K` over `ids` at `pos`: the layer-K states of the step's
/// positions (row-major), and the last position's state at the head's tap
/// (the exit layer, or K when there is no exit at or before K): what a
/// local answer reads.
fn edge_layers(
    model: &DecoderModel,
    cache: &mut KvCache,
    ids: &[u32],
    pos: usize,
    head: LocalHead,
) -> Result<(Vec<f32>, Tensor), GenerateError> {
    let x = model.embed(ids)?;
    let mut steps = [SessionStep { cache, x, pos }];
    let tapped = model.run(0..head.split, &mut steps, &[head.tap()])?;
    let [s] = steps;
    let state_k = s.x.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(DecoderError::from)?;
    Ok((state_k, last_row(&tapped[0][0])?))
}

/// The cloud's answer to a step within `deadline`.
async fn await_reply(
    rx: oneshot::Receiver<StepReply>,
    deadline: Duration,
    endpoint: Option<String>,
) -> Result<pb::StepResult, LinkError> {
    let endpoint = endpoint.unwrap_or_else(|| "the cloud".into());
    match tokio::time::timeout(deadline, rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Err(LinkError::Closed { endpoint, reason: "the session ended".into() }),
        Err(_) => Err(LinkError::Timeout { endpoint, after: deadline }),
    }
}
