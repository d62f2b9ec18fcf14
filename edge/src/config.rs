//! The edge's configuration, in two layers:
//!
//! - [`EdgeArgs`]: what an operator writes — flags, `OFFRAMP_*` variables
//!   and an optional `--config FILE` (TOML, the same names as the flags).
//!   Paths and unparsed choices; every tunable is optional here.
//! - [`EdgeConfig`]: what [`crate::Edge`] runs with — the loaded bundle,
//!   the [`Policy`] value, credentials already read, validated breaker
//!   settings, and defaults from [`defaults`]. Programs that drive an edge
//!   in-process build one with [`EdgeConfig::new`] and never write files.
//!   A decoder's edge runs with a [`GenerateConfig`], built by the same code
//!   from the same flags ([`load`] recognises the bundle's kind once and
//!   refuses, by name, every flag given that does not apply to it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use offramp_common::config::{read_toml, relative_to, ConfigFileError};
use offramp_common::decoder::DecoderBundle;
use offramp_common::kind::{AnyBundle, ModelKind, OpenError};
use offramp_common::policy::PolicyError;
use offramp_common::{codec, paths, units, Bundle, Policy};
use offramp_proto as pb;
use offramp_transport::tls::{ClientTls, ClientTlsArgs, TlsError};
use offramp_transport::token::{Secret, TokenError};
use serde::Serialize;

use crate::adapt::BudgetConfig;
use crate::generate::{GenerateConfig, Mode};
use crate::plan::{Objective, PlanConfig};
use crate::transport::{ConnectConfig, Credentials, TransportKind};

/// The built-in defaults, defined once: [`EdgeConfig::new`] uses them, the
/// flags' help shows them (a test checks the two agree).
pub mod defaults {
    use std::time::Duration;

    pub const DEADLINE: Duration = Duration::from_millis(500);
    /// A decoder's deadline: how long one token waits for the cloud.
    pub const TOKEN_DEADLINE: Duration = Duration::from_secs(2);
    pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
    pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);
    pub const BREAKER_FAILURES: u32 = 3;
    pub const BREAKER_BACKOFF: Duration = Duration::from_millis(100);
    pub const BREAKER_MAX_BACKOFF: Duration = Duration::from_secs(1);
    pub const EDGE_ID: &str = "edge";
    /// Decoders: how long after a lost session the cloud is tried again.
    pub const RETRY_EVERY: Duration = Duration::from_millis(500);
    /// Decoders, speculative: most drafts ahead of the last verified token.
    pub const DRAFT: usize = 6;
    /// Decoders, speculative: most verifications in flight.
    pub const PIPELINE: usize = 8;
}

/// What to do when the cloud does not answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FallbackMode {
    /// Answer with the deepest local exit's prediction, whatever its confidence.
    #[default]
    BestLocal,
    /// Finish the network on the device (needs a bundle holding every block).
    LocalFull,
    /// Return an error.
    Fail,
}

/// Bad edge configuration: what is wrong, with which setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("no model given: pass --model DIR (or `model = \"...\"` in the config file)")]
    NoModel,
    #[error(transparent)]
    NotFound(#[from] paths::NotFound),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("--{flag} must be {rule} (got {got})")]
    Invalid { flag: &'static str, rule: &'static str, got: String },
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Flags given that do nothing for the loaded bundle's kind.
    #[error("{} does not apply to {}, a {} bundle: {}", flags.iter().map(|f| format!("--{f}")).collect::<Vec<_>>().join(", "), model, kind.name(), hint)]
    NotForKind { flags: Vec<&'static str>, model: String, kind: ModelKind, hint: &'static str },
    /// The bundle's kind is not what this command runs.
    #[error("{model} is a {} bundle; {hint}", kind.name())]
    WrongKind { model: String, kind: ModelKind, hint: &'static str },

    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// Edge flags shared by `run` and `serve` (each also an `OFFRAMP_*`
/// variable and a key of `--config`).
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EdgeArgs {
    /// TOML file with any of these settings under their flag names
    /// (`deadline = "300ms"`); flags and environment variables override it.
    #[arg(long, env = "OFFRAMP_EDGE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Model bundle: the whole model or the edge side of a split (`offramp
    /// split`). A relative path is looked up in the working directory, then
    /// beside the executable.
    #[arg(long, env = "OFFRAMP_MODEL")]
    pub model: Option<PathBuf>,
    /// Split point K: blocks [0, K) run here, [K, N) in the cloud. 0 sends the
    /// raw input (all-cloud); N never offloads (all-edge). Default: the edge
    /// side held by a split bundle, or N for a whole model.
    #[arg(long, env = "OFFRAMP_SPLIT")]
    pub split: Option<usize>,
    /// Cloud endpoint URL (http://host:port, or quic://host:port with
    /// --transport quic). Repeat (or comma-separate) for failover between replicas.
    #[arg(long = "cloud", env = "OFFRAMP_CLOUD", value_delimiter = ',')]
    #[serde(default, rename = "cloud")]
    pub clouds: Vec<String>,
    /// Transport to the cloud: grpc-stream (gRPC, every offload on one
    /// persistent stream per endpoint), grpc (gRPC, one unary call per
    /// offload), or quic (TLS 1.3 always: needs --ca) [default: grpc-stream].
    #[arg(long, env = "OFFRAMP_TRANSPORT", value_enum)]
    pub transport: Option<TransportKind>,
    /// Exit policy TOML (default: the bundle's policy.toml, else final exit only).
    #[arg(long, env = "OFFRAMP_POLICY")]
    pub policy: Option<PathBuf>,
    /// Hidden-state encoding on the wire: f32, f16, bf16 or int8 [default: f32].
    #[arg(long, env = "OFFRAMP_ENCODING", value_parser = codec::parse_encoding)]
    #[serde(default, deserialize_with = "codec::serde_names::encoding")]
    pub encoding: Option<pb::Encoding>,
    /// Lossless compression of the encoded hidden state: none, or lz4 (used
    /// per request only when it makes the payload smaller; the cloud must
    /// list it in its handshake) [default: none].
    #[arg(long, env = "OFFRAMP_COMPRESSION", value_parser = codec::parse_compression)]
    #[serde(default, deserialize_with = "codec::serde_names::compression")]
    pub compression: Option<pb::Compression>,
    /// Deadline for each offload: the edge answers by then, one way or
    /// another [default: 500ms].
    #[arg(long, env = "OFFRAMP_DEADLINE", value_parser = units::parse_duration)]
    #[serde(default, deserialize_with = "units::serde::duration")]
    pub deadline: Option<Duration>,
    /// What to answer when the cloud does not [default: best-local].
    #[arg(long, env = "OFFRAMP_FALLBACK", value_enum)]
    pub fallback: Option<FallbackMode>,
    /// Connect timeout to a cloud endpoint: TCP connect, or the QUIC
    /// handshake [default: 300ms].
    #[arg(long, env = "OFFRAMP_CONNECT_TIMEOUT", value_parser = units::parse_duration)]
    #[serde(default, deserialize_with = "units::serde::duration")]
    pub connect_timeout: Option<Duration>,
    /// Consecutive failures that open an endpoint's circuit breaker [default: 3].
    #[arg(long, env = "OFFRAMP_BREAKER_FAILURES")]
    pub breaker_failures: Option<u32>,
    /// First open period of the breaker, doubled per failed probe [default: 100ms].
    #[arg(long, env = "OFFRAMP_BREAKER_BACKOFF", value_parser = units::parse_duration)]
    #[serde(default, deserialize_with = "units::serde::duration")]
    pub breaker_backoff: Option<Duration>,
    /// Longest open period of the breaker [default: 1s].
    #[arg(long, env = "OFFRAMP_BREAKER_MAX_BACKOFF", value_parser = units::parse_duration)]
    #[serde(default, deserialize_with = "units::serde::duration")]
    pub breaker_max_backoff: Option<Duration>,
    /// Ask the cloud for per-class probabilities.
    #[arg(long, env = "OFFRAMP_PROBABILITIES")]
    #[serde(default)]
    pub probabilities: bool,
    /// File holding this edge's bearer token for the cloud.
    #[arg(long, env = "OFFRAMP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub tls: ClientTlsArgs,
    /// Serve Prometheus metrics on this address (off by default).
    #[arg(long, env = "OFFRAMP_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Name of this edge in its requests (the cloud checks it against the
    /// identity its token proves, when it has tokens) [default: edge].
    #[arg(long, env = "OFFRAMP_EDGE_ID")]
    pub edge_id: Option<String>,
    /// Adapt the edge exits' thresholds while serving, keeping the estimated
    /// accuracy loss against the full model within this budget (`1%`,
    /// `0.01`); feedback from offloads and shadow requests (see
    /// docs/src/architecture.md, "Adaptive thresholds"). Off by default.
    #[arg(long, env = "OFFRAMP_ACCURACY_BUDGET", value_parser = units::parse_ratio)]
    pub accuracy_budget: Option<f64>,
    /// With --accuracy-budget: fraction of edge-answered inputs also sent to
    /// the cloud in the background as feedback [default: 10%].
    #[arg(long, env = "OFFRAMP_SHADOW_FRACTION", value_parser = units::parse_ratio)]
    pub shadow_fraction: Option<f64>,
    /// Re-plan the split point (any K up to the one this bundle holds) and
    /// the encoding (f32, or int8 + LZ4) while serving, from measured costs:
    /// edge compute, request bytes, RTT and goodput to the cloud, the
    /// cloud's compute, exit rates (see docs/src/architecture.md, "Adaptive
    /// split"). The cloud must serve every such split (one holding the whole
    /// model does). Off by default.
    #[arg(long, env = "OFFRAMP_ADAPTIVE_SPLIT")]
    #[serde(default)]
    pub adaptive_split: bool,
    /// With --adaptive-split: take the route with the least offload among
    /// those expected within this latency (`50ms`), instead of the fastest.
    #[arg(long, env = "OFFRAMP_LATENCY_SLO", value_parser = units::parse_duration)]
    #[serde(default, deserialize_with = "units::serde::duration")]
    pub latency_slo: Option<Duration>,
    /// Decoders: split: every token from the cloud; early-exit: the edge's
    /// exit answers when confident; speculative: the edge drafts, the cloud
    /// verifies several drafts per round trip (same output as split);
    /// all-cloud (K = 0); all-edge (K = N) [default: split].
    #[arg(long, env = "OFFRAMP_MODE", value_enum)]
    pub mode: Option<Mode>,
    /// Decoders, early-exit: top-1 probability above which the exit answers
    /// (default: the bundle's calibrated threshold).
    #[arg(long, env = "OFFRAMP_THRESHOLD")]
    pub threshold: Option<f32>,
    /// Decoders, speculative: most tokens drafted ahead of the last verified
    /// one (adapting below it to the measured acceptance rate and round
    /// trip) [default: 6].
    #[arg(long, env = "OFFRAMP_DRAFT")]
    pub draft: Option<usize>,
    /// Decoders, speculative: send blocks of exactly --draft drafts (no adaptation).
    #[arg(long, env = "OFFRAMP_FIXED_DRAFT")]
    #[serde(default)]
    pub fixed_draft: bool,
    /// Decoders, speculative: most verifications in flight; the edge drafts
    /// on while they are (1: send a block and wait for its answer) [default: 8].
    #[arg(long, env = "OFFRAMP_PIPELINE")]
    pub pipeline: Option<usize>,
    /// Decoders: how often a lost cloud session is tried again [default: 500ms].
    #[arg(long, env = "OFFRAMP_RETRY_EVERY", value_parser = units::parse_duration)]
    #[serde(default, deserialize_with = "units::serde::duration")]
    pub retry_every: Option<Duration>,
}

/// Flags (by name) that only a classifier's edge uses, each with whether it
/// was given.
fn classifier_only(a: &EdgeArgs) -> Vec<(&'static str, bool)> {
    vec![
        ("policy", a.policy.is_some()),
        ("compression", a.compression.is_some()),
        ("fallback", a.fallback.is_some()),
        ("probabilities", a.probabilities),
        ("accuracy-budget", a.accuracy_budget.is_some()),
        ("shadow-fraction", a.shadow_fraction.is_some()),
        ("adaptive-split", a.adaptive_split),
        ("latency-slo", a.latency_slo.is_some()),
        ("breaker-failures", a.breaker_failures.is_some()),
        ("breaker-backoff", a.breaker_backoff.is_some()),
        ("breaker-max-backoff", a.breaker_max_backoff.is_some()),
    ]
}

/// Flags (by name) that only a decoder's edge uses, each with whether it
/// was given.
fn decoder_only(a: &EdgeArgs) -> Vec<(&'static str, bool)> {
    vec![
        ("mode", a.mode.is_some()),
        ("threshold", a.threshold.is_some()),
        ("draft", a.draft.is_some()),
        ("fixed-draft", a.fixed_draft),
        ("pipeline", a.pipeline.is_some()),
        ("retry-every", a.retry_every.is_some()),
    ]
}

impl EdgeArgs {
    /// These flags over the `--config` file's settings (if any).
    pub fn with_file(self) -> Result<Self, ConfigError> {
        let Some(path) = self.config.clone() else { return Ok(self) };
        let file: EdgeArgs = read_toml(&path)?;
        let rel_opt = |p: Option<PathBuf>| p.map(|p| relative_to(&path, p));
        Ok(Self {
            config: Some(path.clone()),
            model: self.model.or(rel_opt(file.model)),
            split: self.split.or(file.split),
            clouds: if self.clouds.is_empty() { file.clouds } else { self.clouds },
            transport: self.transport.or(file.transport),
            policy: self.policy.or(rel_opt(file.policy)),
            encoding: self.encoding.or(file.encoding),
            compression: self.compression.or(file.compression),
            deadline: self.deadline.or(file.deadline),
            fallback: self.fallback.or(file.fallback),
            connect_timeout: self.connect_timeout.or(file.connect_timeout),
            breaker_failures: self.breaker_failures.or(file.breaker_failures),
            breaker_backoff: self.breaker_backoff.or(file.breaker_backoff),
            breaker_max_backoff: self.breaker_max_backoff.or(file.breaker_max_backoff),
            probabilities: self.probabilities || file.probabilities,
            token_file: self.token_file.or(rel_opt(file.token_file)),
            tls: ClientTlsArgs {
                ca: self.tls.ca.or(rel_opt(file.tls.ca)),
                tls_client_cert: self.tls.tls_client_cert.or(rel_opt(file.tls.tls_client_cert)),
                tls_client_key: self.tls.tls_client_key.or(rel_opt(file.tls.tls_client_key)),
                tls_domain: self.tls.tls_domain.or(file.tls.tls_domain),
            },
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            edge_id: self.edge_id.or(file.edge_id),
            accuracy_budget: self.accuracy_budget.or(file.accuracy_budget),
            shadow_fraction: self.shadow_fraction.or(file.shadow_fraction),
            adaptive_split: self.adaptive_split || file.adaptive_split,
            latency_slo: self.latency_slo.or(file.latency_slo),
            mode: self.mode.or(file.mode),
            threshold: self.threshold.or(file.threshold),
            draft: self.draft.or(file.draft),
            fixed_draft: self.fixed_draft || file.fixed_draft,
            pipeline: self.pipeline.or(file.pipeline),
            retry_every: self.retry_every.or(file.retry_every),
        })
    }

    /// Refuses, by name, every flag given that does nothing for a bundle
    /// of `kind` (the project's rule: refused, never silently ignored).
    pub fn refuse_for(&self, kind: ModelKind, model: &str) -> Result<(), ConfigError> {
        let (list, hint) = match kind {
            ModelKind::Decoder => (classifier_only(self), "they configure a classifier's exits and offloads"),
            ModelKind::Classifier => (decoder_only(self), "they configure generation with a decoder"),
        };
        let flags: Vec<&'static str> = list.into_iter().filter(|&(_, given)| given).map(|(f, _)| f).collect();
        if flags.is_empty() {
            return Ok(());
        }
        Err(ConfigError::NotForKind { flags, model: model.to_string(), kind, hint })
    }

    /// The settings every kind's link uses, with the defaults.
    fn link(&self, decoder: bool) -> Result<LinkSettings, ConfigError> {
        let deadline = self.deadline.unwrap_or(if decoder { defaults::TOKEN_DEADLINE } else { defaults::DEADLINE });
        let connect_timeout = self.connect_timeout.unwrap_or(defaults::CONNECT_TIMEOUT);
        if deadline.is_zero() {
            return Err(ConfigError::Invalid { flag: "deadline", rule: "positive", got: "0s".into() });
        }
        if connect_timeout.is_zero() {
            return Err(ConfigError::Invalid { flag: "connect-timeout", rule: "positive", got: "0s".into() });
        }
        Ok(LinkSettings {
            transport: self.transport.unwrap_or_default(),
            encoding: self.encoding.unwrap_or(pb::Encoding::F32),
            deadline,
            connect_timeout,
            breaker: BreakerSettings::try_new(
                self.breaker_failures.unwrap_or(defaults::BREAKER_FAILURES),
                self.breaker_backoff.unwrap_or(defaults::BREAKER_BACKOFF),
                self.breaker_max_backoff.unwrap_or(defaults::BREAKER_MAX_BACKOFF),
            )?,
            credentials: Credentials {
                tls: ClientTls::load(&self.tls)?,
                token: self.token_file.as_deref().map(Secret::from_file).transpose()?,
            },
            edge_id: self.edge_id.clone().unwrap_or_else(|| defaults::EDGE_ID.to_string()),
        })
    }
}

/// What every kind's link to the cloud is set up with, read once from the
/// flags (and defaults).
#[derive(Debug, Clone)]
struct LinkSettings {
    transport: TransportKind,
    encoding: pb::Encoding,
    deadline: Duration,
    connect_timeout: Duration,
    breaker: BreakerSettings,
    credentials: Credentials,
    edge_id: String,
}

/// An edge's configuration, by the kind of bundle it loaded.
#[derive(Debug)]
pub enum Loaded {
    Classifier(Box<EdgeConfig>),
    Decoder(Box<DecoderEdgeConfig>),
}

/// What a decoder's edge runs with.
#[derive(Debug, Clone)]
pub struct DecoderEdgeConfig {
    pub bundle: DecoderBundle,
    pub generate: GenerateConfig,
    pub metrics_listen: Option<SocketAddr>,
}

/// Reads the flags (and the `--config` file), opens the bundle, recognises
/// its kind (the edge's one dispatch point between kinds) and builds that
/// kind's configuration, refusing flags that do not apply to it.
pub fn load(args: EdgeArgs) -> Result<Loaded, ConfigError> {
    let args = args.with_file()?;
    let model = paths::find(args.model.as_deref().ok_or(ConfigError::NoModel)?)?;
    match AnyBundle::open(&model)? {
        AnyBundle::Classifier(bundle) => {
            args.refuse_for(ModelKind::Classifier, bundle.model_id())?;
            Ok(Loaded::Classifier(Box::new(EdgeConfig::with_bundle(args, bundle)?)))
        }
        AnyBundle::Decoder(bundle) => {
            args.refuse_for(ModelKind::Decoder, bundle.model_id())?;
            let link = args.link(true)?;
            let split = args.split.unwrap_or(bundle.holds().end);
            let mut g = GenerateConfig::new(args.mode.unwrap_or(Mode::Split), split, args.clouds.clone());
            g.transport = link.transport;
            g.encoding = link.encoding;
            g.deadline = link.deadline;
            g.connect = ConnectConfig { connect_timeout: link.connect_timeout, ..ConnectConfig::default() };
            g.credentials = link.credentials;
            g.edge_id = link.edge_id;
            g.threshold = args.threshold;
            g.draft = args.draft.unwrap_or(defaults::DRAFT);
            g.adapt_draft = !args.fixed_draft;
            g.pipeline = args.pipeline.unwrap_or(defaults::PIPELINE);
            g.retry_every = args.retry_every.unwrap_or(defaults::RETRY_EVERY);
            if let Some(t) = g.threshold {
                if !(0.0..=1.0).contains(&t) {
                    return Err(ConfigError::Invalid { flag: "threshold", rule: "in [0, 1]", got: t.to_string() });
                }
            }
            for (flag, v) in [("draft", g.draft), ("pipeline", g.pipeline)] {
                if v == 0 {
                    return Err(ConfigError::Invalid { flag, rule: "at least 1", got: "0".into() });
                }
            }
            Ok(Loaded::Decoder(Box::new(DecoderEdgeConfig {
                bundle,
                generate: g,
                metrics_listen: args.metrics_listen,
            })))
        }
    }
}

/// Circuit-breaker settings, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker (at least 1).
    pub failures: u32,
    /// First open period (positive).
    pub backoff: Duration,
    /// Longest open period (at least `backoff`).
    pub max_backoff: Duration,
}

impl BreakerSettings {
    pub fn try_new(failures: u32, backoff: Duration, max_backoff: Duration) -> Result<Self, ConfigError> {
        if failures == 0 {
            return Err(ConfigError::Invalid { flag: "breaker-failures", rule: "at least 1", got: "0".into() });
        }
        if backoff.is_zero() {
            return Err(ConfigError::Invalid { flag: "breaker-backoff", rule: "positive", got: "0s".into() });
        }
        if max_backoff < backoff {
            return Err(ConfigError::Invalid {
                flag: "breaker-max-backoff",
                rule: "at least --breaker-backoff",
                got: format!("{max_backoff:?} < {backoff:?}"),
            });
        }
        Ok(Self { failures, backoff, max_backoff })
    }
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: defaults::BREAKER_FAILURES,
            backoff: defaults::BREAKER_BACKOFF,
            max_backoff: defaults::BREAKER_MAX_BACKOFF,
        }
    }
}

/// What an edge runs with.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// The whole model or its edge side.
    pub bundle: Bundle,
    /// Split point K; `None`: the edge side the bundle holds.
    pub split: Option<usize>,
    /// Exit policy; `None`: the bundle's own `policy.toml`, else final exit only.
    pub policy: Option<Policy>,
    /// Cloud endpoints, tried in order (failover).
    pub clouds: Vec<String>,
    pub transport: TransportKind,
    pub encoding: pb::Encoding,
    pub compression: pb::Compression,
    pub deadline: Duration,
    pub fallback: FallbackMode,
    pub connect_timeout: Duration,
    pub breaker: BreakerSettings,
    pub probabilities: bool,
    pub credentials: Credentials,
    pub metrics_listen: Option<SocketAddr>,
    pub edge_id: String,
    /// Adaptive thresholds under an accuracy budget; `None`: the policy's
    /// thresholds stay as configured.
    pub accuracy_budget: Option<BudgetConfig>,
    /// The split point and encoding re-planned live; `None`: fixed.
    pub adaptive_split: Option<PlanConfig>,
}

impl EdgeConfig {
    /// An edge for `bundle` at `split` (`None`: what the bundle holds) with
    /// the given clouds and the defaults.
    pub fn new(bundle: Bundle, split: Option<usize>, clouds: Vec<String>) -> Self {
        Self {
            bundle,
            split,
            policy: None,
            clouds,
            transport: TransportKind::GrpcStream,
            encoding: pb::Encoding::F32,
            compression: pb::Compression::None,
            deadline: defaults::DEADLINE,
            fallback: FallbackMode::BestLocal,
            connect_timeout: defaults::CONNECT_TIMEOUT,
            breaker: BreakerSettings::default(),
            probabilities: false,
            credentials: Credentials::default(),
            metrics_listen: None,
            edge_id: defaults::EDGE_ID.to_string(),
            accuracy_budget: None,
            adaptive_split: None,
        }
    }

    /// Reads what the flags name (config file, bundle, policy, token, TLS
    /// files) and validates every value: a classifier's edge (a decoder
    /// bundle is refused, naming the commands that run one).
    pub fn from_args(args: EdgeArgs) -> Result<Self, ConfigError> {
        match load(args)? {
            Loaded::Classifier(c) => Ok(*c),
            Loaded::Decoder(d) => Err(ConfigError::WrongKind {
                model: d.bundle.model_id().to_string(),
                kind: ModelKind::Decoder,
                hint: "generate with it (`offramp-edge generate`) or serve it over HTTP (`offramp-edge serve --http-listen`)",
            }),
        }
    }

    /// A classifier's edge over `bundle` from the flags.
    fn with_bundle(args: EdgeArgs, bundle: Bundle) -> Result<Self, ConfigError> {
        let link = args.link(false)?;
        let policy = match &args.policy {
            Some(p) => Some(Policy::load(p, bundle.num_exits())?),
            None => None,
        };
        let mut config = Self::new(bundle, args.split, args.clouds.clone());
        config.policy = policy;
        config.transport = link.transport;
        config.encoding = link.encoding;
        config.compression = args.compression.unwrap_or(config.compression);
        config.deadline = link.deadline;
        config.fallback = args.fallback.unwrap_or_default();
        config.connect_timeout = link.connect_timeout;
        config.breaker = link.breaker;
        config.credentials = link.credentials;
        config.edge_id = link.edge_id;
        config.probabilities = args.probabilities;
        config.metrics_listen = args.metrics_listen;
        config.accuracy_budget = match (args.accuracy_budget, args.shadow_fraction) {
            (Some(b), shadow) => {
                let mut c = BudgetConfig::new(b);
                c.shadow = shadow.unwrap_or(c.shadow);
                Some(c)
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    flag: "shadow-fraction",
                    rule: "only with --accuracy-budget",
                    got: "no budget".into(),
                })
            }
            (None, None) => None,
        };
        config.adaptive_split = match (args.adaptive_split, args.latency_slo) {
            (true, slo) => Some(PlanConfig::new(slo.map_or(Objective::MinLatency, Objective::Slo))),
            (false, Some(_)) => {
                return Err(ConfigError::Invalid {
                    flag: "latency-slo",
                    rule: "only with --adaptive-split",
                    got: "a fixed split".into(),
                })
            }
            (false, None) => None,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what a hand-built config could get wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.deadline.is_zero() {
            return Err(ConfigError::Invalid { flag: "deadline", rule: "positive", got: "0s".into() });
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::Invalid { flag: "connect-timeout", rule: "positive", got: "0s".into() });
        }
        BreakerSettings::try_new(self.breaker.failures, self.breaker.backoff, self.breaker.max_backoff)?;
        if let Some(p) = &self.adaptive_split {
            p.validate().map_err(|e| ConfigError::Invalid {
                flag: "latency-slo",
                rule: "valid settings",
                got: e.to_string(),
            })?;
        }
        if let Some(b) = &self.accuracy_budget {
            b.validate().map_err(|e| ConfigError::Invalid {
                flag: "accuracy-budget",
                rule: "valid settings",
                got: e.to_string(),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: EdgeArgs,
    }

    #[test]
    fn help_shows_the_defaults_in_use() {
        let help = Cli::command().render_long_help().to_string();
        for shown in [
            format!("[default: {}ms]", defaults::DEADLINE.as_millis()),
            format!("[default: {}ms]", defaults::CONNECT_TIMEOUT.as_millis()),
            format!("[default: {}]", defaults::BREAKER_FAILURES),
            format!("[default: {}ms]", defaults::BREAKER_BACKOFF.as_millis()),
            format!("[default: {}s]", defaults::BREAKER_MAX_BACKOFF.as_secs()),
            format!("[default: {}]", defaults::EDGE_ID),
            format!("[default: {}ms]", defaults::RETRY_EVERY.as_millis()),
            format!("[default: {}]", defaults::DRAFT),
            format!("[default: {}]", defaults::PIPELINE),
        ] {
            assert!(help.contains(&shown), "help lacks {shown}");
        }
    }

    #[test]
    fn adaptive_flags_build_their_settings_and_refuse_half_pairs() {
        let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/b-lenet-mnist");
        let parse = |extra: &[&str]| {
            let mut argv = vec!["edge", "--model", model];
            argv.extend_from_slice(extra);
            EdgeConfig::from_args(Cli::try_parse_from(argv).unwrap().args)
        };
        let c = parse(&["--accuracy-budget", "1%", "--shadow-fraction", "0.2", "--adaptive-split"]).unwrap();
        let b = c.accuracy_budget.unwrap();
        assert!((b.budget - 0.01).abs() < 1e-12 && (b.shadow - 0.2).abs() < 1e-12, "{b:?}");
        assert_eq!(c.adaptive_split.unwrap().objective, Objective::MinLatency);
        let c = parse(&["--adaptive-split", "--latency-slo", "50ms"]).unwrap();
        assert_eq!(c.adaptive_split.unwrap().objective, Objective::Slo(Duration::from_millis(50)));
        assert!(parse(&[]).unwrap().adaptive_split.is_none());
        let e = parse(&["--latency-slo", "50ms"]).unwrap_err().to_string();
        assert!(e.contains("--latency-slo must be only with --adaptive-split"), "{e}");
        let e = parse(&["--shadow-fraction", "0.2"]).unwrap_err().to_string();
        assert!(e.contains("--shadow-fraction must be only with --accuracy-budget"), "{e}");
        // Over 100% the flag parser refuses; 0 the settings do.
        assert!(Cli::try_parse_from(["edge", "--accuracy-budget", "150%"]).is_err());
        let e = parse(&["--accuracy-budget", "0%"]).unwrap_err().to_string();
        assert!(e.contains("accuracy budget 0 must be in (0, 1)"), "{e}");
        let e = parse(&["--adaptive-split", "--latency-slo", "0ms"]).unwrap_err().to_string();
        assert!(e.contains("latency objective must be positive"), "{e}");
    }

    #[test]
    fn flags_for_the_other_kind_are_refused_by_name() {
        let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/b-lenet-mnist");
        let args = |extra: &[&str]| {
            let mut argv = vec!["edge", "--model", model];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().args
        };
        let e = load(args(&["--mode", "speculative", "--draft", "4"])).unwrap_err().to_string();
        assert!(e.starts_with("--mode, --draft does not apply to b-lenet-mnist, a classifier bundle"), "{e}");
        assert!(matches!(load(args(&["--deadline", "1s"])).unwrap(), Loaded::Classifier(_)));
        // The decoder side of the list, checked without a decoder bundle.
        let a = args(&["--policy", "p.toml", "--adaptive-split", "--fallback", "fail"]);
        let e = a.refuse_for(ModelKind::Decoder, "tiny").unwrap_err().to_string();
        assert_eq!(
            e,
            "--policy, --fallback, --adaptive-split does not apply to tiny, a decoder bundle: they configure a \
             classifier's exits and offloads"
        );
        assert!(args(&["--transport", "quic", "--deadline", "2s"]).refuse_for(ModelKind::Decoder, "t").is_ok());
        let e = args(&["--breaker-failures", "2"]).refuse_for(ModelKind::Decoder, "t").unwrap_err().to_string();
        assert!(e.starts_with("--breaker-failures does not apply"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_not_clamped() {
        let e = BreakerSettings::try_new(0, defaults::BREAKER_BACKOFF, defaults::BREAKER_MAX_BACKOFF).unwrap_err();
        assert!(e.to_string().contains("--breaker-failures must be at least 1"), "{e}");
        let e = BreakerSettings::try_new(3, Duration::from_secs(2), Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("--breaker-max-backoff"), "{e}");
        let e = EdgeConfig::from_args(Cli::try_parse_from(["edge"]).unwrap().args).unwrap_err();
        assert!(matches!(e, ConfigError::NoModel), "{e}");
        let e = EdgeConfig::from_args(Cli::try_parse_from(["edge", "--model", "no/such/bundle"]).unwrap().args)
            .unwrap_err();
        assert!(e.to_string().starts_with("no/such/bundle not found"), "{e}");
    }

    #[test]
    fn config_file_under_flags() {
        let dir = std::env::temp_dir().join(format!("offramp-edge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("edge.toml");
        std::fs::write(
            &file,
            "model = \"m\"\ncloud = [\"http://a:1\", \"http://b:2\"]\ndeadline = \"250ms\"\nencoding = \"int8\"\n\
             fallback = \"fail\"\nca = \"ca.pem\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["edge", "--config", file.to_str().unwrap(), "--deadline", "1s"]).unwrap();
        let a = cli.args.with_file().unwrap();
        assert_eq!(a.deadline, Some(Duration::from_secs(1)), "the flag wins");
        assert_eq!(a.clouds, vec!["http://a:1", "http://b:2"]);
        assert_eq!(a.encoding, Some(pb::Encoding::Int8));
        assert_eq!(a.fallback, Some(FallbackMode::Fail));
        assert_eq!(a.model, Some(dir.join("m")), "relative to the file");
        assert_eq!(a.tls.ca, Some(dir.join("ca.pem")));
        std::fs::write(&file, "encoding = \"f64\"\n").unwrap();
        let e =
            Cli::try_parse_from(["edge", "--config", file.to_str().unwrap()]).unwrap().args.with_file().unwrap_err();
        assert!(e.to_string().contains("unknown encoding \"f64\""), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
