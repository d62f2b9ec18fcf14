//! The cloud's configuration, in two layers:
//!
//! - [`CloudArgs`]: what an operator writes — flags, `OFFRAMP_*` variables
//!   and an optional `--config FILE` (TOML, the same names as the flags).
//!   Paths and unparsed choices; every tunable is optional here.
//! - [`CloudConfig`]: what the server runs with — validated values, TLS
//!   material and tokens already read, defaults filled in from
//!   [`defaults`]. Programs that run a cloud in-process build one directly
//!   ([`CloudConfig::new`]) and never write files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use offramp_common::config::{read_toml, relative_to, ConfigFileError};
use offramp_common::policy::{PolicyError, PolicyFile};
use offramp_common::{codec, units, Bundle};
use offramp_proto as pb;
use offramp_transport::tls::{Identity, ServerTls, ServerTlsArgs, TlsError};
use offramp_transport::token::{TokenError, TokenTable};

pub use crate::generation::SessionLimits;

/// The built-in defaults, defined once: [`CloudConfig::new`] uses them, the
/// flags' help shows them (a test checks the two agree).
pub mod defaults {
    use std::time::Duration;

    /// gRPC listen address (loopback).
    pub const LISTEN: &str = "127.0.0.1:50051";
    pub const MAX_PAYLOAD: &str = "4MiB";
    pub const WORKERS: usize = 1;
    pub const MAX_BATCH: usize = 32;
    pub const BATCH_WAIT: Duration = Duration::ZERO;
    pub const MAX_QUEUE: usize = 1024;
    pub const MAX_QUEUE_DELAY: Duration = Duration::from_millis(20);
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Bad cloud configuration: what is wrong, with which setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("no model given: pass --model DIR (or `model = [...]` in the config file)")]
    NoModel,
    #[error("--{flag} must be at least 1 (got {got})")]
    Zero { flag: &'static str, got: usize },
    #[error("--encodings must name at least one encoding")]
    NoEncoding,
    #[error("{flag} {value:?}: {detail}")]
    Value { flag: &'static str, value: String, detail: String },
    #[error(
        "--quic-listen needs a certificate: --tls-cert and --tls-key, or --self-signed (with --cert-out FILE for \
         the edge's --ca) for local runs"
    )]
    QuicNeedsCertificate,
    #[error("--self-signed and --cert-out only apply with --quic-listen")]
    SelfSignedWithoutQuic,
    #[error("--self-signed cannot be combined with --tls-cert")]
    SelfSignedWithCert,
    #[error("--cert-out writes the --self-signed certificate; without --self-signed there is none to write")]
    CertOutWithoutSelfSigned,
    #[error("writing the self-signed certificate to {}: {source}", path.display())]
    CertOut { path: PathBuf, source: std::io::Error },
    #[error("--policy {}: {source}", path.display())]
    Policy { path: PathBuf, source: PolicyError },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// QUIC listener options.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct QuicArgs {
    /// Also serve over QUIC on this UDP address (off by default; loopback
    /// recommended; port 0 picks a free port). Needs a certificate:
    /// --tls-cert/--tls-key, or --self-signed for local runs.
    #[arg(long, env = "OFFRAMP_QUIC_LISTEN")]
    pub quic_listen: Option<SocketAddr>,
    /// Make a self-signed certificate for QUIC at start (SAN localhost,
    /// 127.0.0.1, ::1 and a non-loopback listen IP). For local runs and tests
    /// only: edges must be given it with --ca (see --cert-out).
    #[arg(long, env = "OFFRAMP_SELF_SIGNED")]
    #[serde(default)]
    pub self_signed: bool,
    /// Write the self-signed certificate (PEM, no key) to this file.
    #[arg(long, env = "OFFRAMP_CERT_OUT")]
    pub cert_out: Option<PathBuf>,
}

/// Cloud flags (each also an `OFFRAMP_*` variable and a key of `--config`).
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CloudArgs {
    /// TOML file with any of these settings under their flag names
    /// (`max-batch = 8`); flags and environment variables override it.
    #[arg(long, env = "OFFRAMP_CLOUD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Model bundle directory: the whole model, or the cloud side of a split
    /// (`offramp split`). Repeat for several models.
    #[arg(long = "model", env = "OFFRAMP_MODEL", value_delimiter = ',')]
    #[serde(default, rename = "model")]
    pub models: Vec<PathBuf>,
    /// gRPC listen address; port 0 picks a free port [default: 127.0.0.1:50051].
    #[arg(long, env = "OFFRAMP_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Policy for the cloud-side exits when a request carries none (default:
    /// each bundle's policy.toml, else final exit only).
    #[arg(long, env = "OFFRAMP_POLICY")]
    pub policy: Option<PathBuf>,
    /// Largest accepted hidden-state payload [default: 4MiB].
    #[arg(long, env = "OFFRAMP_MAX_PAYLOAD", value_parser = units::parse_bytes)]
    #[serde(default, deserialize_with = "units::serde::bytes")]
    pub max_payload: Option<usize>,
    /// Compute threads [default: 1].
    #[arg(long, env = "OFFRAMP_WORKERS")]
    pub workers: Option<usize>,
    /// Largest batch across edges; 1 turns batching off [default: 32].
    #[arg(long, env = "OFFRAMP_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// How long a request may wait for others to fill its batch. 0 adds no
    /// latency: a batch is whatever queued up while the previous one computed
    /// (so batches grow with load by themselves) [default: 0s].
    #[arg(long, env = "OFFRAMP_BATCH_WAIT", value_parser = units::parse_duration)]
    #[serde(default, deserialize_with = "units::serde::duration")]
    pub batch_wait: Option<Duration>,
    /// Bound on queued work; beyond it requests get ResourceExhausted at once
    /// [default: 1024].
    #[arg(long, env = "OFFRAMP_MAX_QUEUE")]
    pub max_queue: Option<usize>,
    /// Admission target: a request is refused at once (ResourceExhausted,
    /// with a retry hint) when the cloud's measured service rate says it
    /// would wait longer than this, or than its own deadline, before its
    /// answer; one batch per compute worker is always admitted
    /// [default: 20ms].
    #[arg(long, env = "OFFRAMP_MAX_QUEUE_DELAY", value_parser = units::parse_duration)]
    #[serde(default, deserialize_with = "units::serde::duration")]
    pub max_queue_delay: Option<Duration>,
    /// Serve Prometheus metrics on this address (off by default).
    #[arg(long, env = "OFFRAMP_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Bearer tokens accepted, one `edge-id token` per line. Without it every
    /// caller is admitted and nobody is identified (keep the loopback bind).
    #[arg(long, env = "OFFRAMP_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub tls: ServerTlsArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub quic: QuicArgs,
    /// Hidden-state encodings accepted, listed in the handshake [default:
    /// f32,f16,bf16,int8].
    #[arg(long, env = "OFFRAMP_ENCODINGS", value_delimiter = ',', value_parser = codec::parse_encoding)]
    #[serde(default, deserialize_with = "codec::serde_names::encodings")]
    pub encodings: Vec<pb::Encoding>,
    /// On SIGTERM/SIGINT, how long in-flight work may take to finish [default: 10s].
    #[arg(long, env = "OFFRAMP_DRAIN_TIMEOUT", value_parser = units::parse_duration)]
    #[serde(default, deserialize_with = "units::serde::duration")]
    pub drain_timeout: Option<Duration>,
    /// Decoders: most generation sessions open at once [default: 64].
    #[arg(long, env = "OFFRAMP_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// Decoders: most positions (prompt + generated tokens) one session may
    /// reach [default: 2048].
    #[arg(long, env = "OFFRAMP_MAX_SESSION_TOKENS")]
    pub max_session_tokens: Option<usize>,
    /// Decoders: a session with no message for this long is closed [default: 60s].
    #[arg(long, env = "OFFRAMP_SESSION_TTL", value_parser = units::parse_duration)]
    #[serde(default, deserialize_with = "units::serde::duration")]
    pub session_ttl: Option<Duration>,
    /// Decoders: memory all sessions' KV caches may reserve; a session
    /// reserves what its longest length needs when it opens [default: 2GiB].
    #[arg(long, env = "OFFRAMP_KV_BUDGET", value_parser = units::parse_bytes)]
    #[serde(default, deserialize_with = "units::serde::bytes")]
    pub kv_budget: Option<usize>,
    /// Decoders: most decode steps (of different sessions) in one forward
    /// pass [default: 16].
    #[arg(long, env = "OFFRAMP_MAX_DECODE_BATCH")]
    pub max_decode_batch: Option<usize>,
}

impl CloudArgs {
    /// These flags over the `--config` file's settings (if any).
    pub fn with_file(self) -> Result<Self, ConfigError> {
        let Some(path) = self.config.clone() else { return Ok(self) };
        let file: CloudArgs = read_toml(&path)?;
        let rel = |p: PathBuf| relative_to(&path, p);
        let rel_opt = |p: Option<PathBuf>| p.map(rel);
        Ok(Self {
            config: Some(path.clone()),
            models: if self.models.is_empty() { file.models.into_iter().map(rel).collect() } else { self.models },
            listen: self.listen.or(file.listen),
            policy: self.policy.or(rel_opt(file.policy)),
            max_payload: self.max_payload.or(file.max_payload),
            workers: self.workers.or(file.workers),
            max_batch: self.max_batch.or(file.max_batch),
            batch_wait: self.batch_wait.or(file.batch_wait),
            max_queue: self.max_queue.or(file.max_queue),
            max_queue_delay: self.max_queue_delay.or(file.max_queue_delay),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            auth_token_file: self.auth_token_file.or(rel_opt(file.auth_token_file)),
            tls: ServerTlsArgs {
                tls_cert: self.tls.tls_cert.or(rel_opt(file.tls.tls_cert)),
                tls_key: self.tls.tls_key.or(rel_opt(file.tls.tls_key)),
                tls_client_ca: self.tls.tls_client_ca.or(rel_opt(file.tls.tls_client_ca)),
            },
            quic: QuicArgs {
                quic_listen: self.quic.quic_listen.or(file.quic.quic_listen),
                self_signed: self.quic.self_signed || file.quic.self_signed,
                cert_out: self.quic.cert_out.or(rel_opt(file.quic.cert_out)),
            },
            encodings: if self.encodings.is_empty() { file.encodings } else { self.encodings },
            drain_timeout: self.drain_timeout.or(file.drain_timeout),
            max_sessions: self.max_sessions.or(file.max_sessions),
            max_session_tokens: self.max_session_tokens.or(file.max_session_tokens),
            session_ttl: self.session_ttl.or(file.session_ttl),
            kv_budget: self.kv_budget.or(file.kv_budget),
            max_decode_batch: self.max_decode_batch.or(file.max_decode_batch),
        })
    }
}

/// A model to serve: a bundle directory (loaded after the server is up,
/// while health says NOT_SERVING) or a bundle already in memory.
#[derive(Debug, Clone)]
pub enum ModelSource {
    Dir(PathBuf),
    Loaded(Arc<Bundle>),
}

/// Batching and admission, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Largest batch; 1 turns batching off.
    pub max_batch: usize,
    /// How long the first request of a batch waits for company.
    pub batch_wait: Duration,
    /// Bound on queued plus running requests; beyond it, `ResourceExhausted`.
    pub max_queue: usize,
    /// Compute threads.
    pub workers: usize,
}

impl BatchConfig {
    /// Every count must be at least 1.
    pub fn try_new(
        max_batch: usize,
        batch_wait: Duration,
        max_queue: usize,
        workers: usize,
    ) -> Result<Self, ConfigError> {
        for (flag, got) in [("max-batch", max_batch), ("max-queue", max_queue), ("workers", workers)] {
            if got == 0 {
                return Err(ConfigError::Zero { flag, got });
            }
        }
        Ok(Self { max_batch, batch_wait, max_queue, workers })
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: defaults::MAX_BATCH,
            batch_wait: defaults::BATCH_WAIT,
            max_queue: defaults::MAX_QUEUE,
            workers: defaults::WORKERS,
        }
    }
}

/// QUIC beside gRPC: where, and the certificate it presents.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    pub listen: SocketAddr,
    pub tls: ServerTls,
}

/// What a cloud runs with.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    pub models: Vec<ModelSource>,
    pub listen: SocketAddr,
    /// Overrides each bundle's own policy for requests that carry none.
    pub policy: Option<PolicyFile>,
    pub max_payload: usize,
    pub batch: BatchConfig,
    /// The admission target ([`crate::admission`]).
    pub max_queue_delay: Duration,
    pub metrics_listen: Option<SocketAddr>,
    /// Accepted tokens; `None`: authentication off.
    pub tokens: Option<TokenTable>,
    /// TLS for gRPC (and QUIC's certificate unless [`QuicConfig`] has its own).
    pub tls: Option<ServerTls>,
    pub quic: Option<QuicConfig>,
    /// Accepted hidden-state encodings (never empty).
    pub encodings: Vec<pb::Encoding>,
    pub drain_timeout: Duration,
    /// Bounds on decoder generation sessions.
    pub sessions: SessionLimits,
}

impl CloudConfig {
    /// A cloud for `bundle` on a free loopback port, with the defaults.
    pub fn new(bundle: Bundle) -> Self {
        Self::for_sources(vec![ModelSource::Loaded(Arc::new(bundle))])
    }

    /// Serving the bundles in `dirs` (classifier or decoder bundles), loaded
    /// when the server starts; everything else at its default.
    pub fn from_dirs(dirs: Vec<PathBuf>) -> Self {
        Self::for_sources(dirs.into_iter().map(ModelSource::Dir).collect())
    }

    fn for_sources(models: Vec<ModelSource>) -> Self {
        Self {
            models,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            policy: None,
            max_payload: units::parse_bytes(defaults::MAX_PAYLOAD).expect("default payload parses"),
            batch: BatchConfig::default(),
            max_queue_delay: defaults::MAX_QUEUE_DELAY,
            metrics_listen: None,
            tokens: None,
            tls: None,
            quic: None,
            encodings: codec::ENCODINGS.to_vec(),
            drain_timeout: defaults::DRAIN_TIMEOUT,
            sessions: SessionLimits::default(),
        }
    }

    /// Also serve QUIC on a free loopback port with a fresh self-signed
    /// certificate; returns the certificate's PEM for the edge's CA.
    pub fn with_self_signed_quic(&mut self) -> Result<Vec<u8>, ConfigError> {
        let identity = Identity::self_signed(vec!["localhost".into(), "127.0.0.1".into(), "::1".into()])?;
        let pem = identity.certificate_pem().to_vec();
        self.quic = Some(QuicConfig { listen: SocketAddr::from(([127, 0, 0, 1], 0)), tls: ServerTls::new(identity) });
        Ok(pem)
    }

    /// Reads the files the flags name (config file, policy, tokens, TLS) and
    /// validates every value; the bundles themselves load when serving.
    pub fn from_args(args: CloudArgs) -> Result<Self, ConfigError> {
        let args = args.with_file()?;
        if args.models.is_empty() {
            return Err(ConfigError::NoModel);
        }
        let mut config = Self::for_sources(args.models.iter().cloned().map(ModelSource::Dir).collect());
        config.listen = match args.listen {
            Some(l) => l,
            None => defaults::LISTEN.parse().expect("default listen address parses"),
        };
        if let Some(p) = &args.policy {
            config.policy =
                Some(PolicyFile::load(p).map_err(|source| ConfigError::Policy { path: p.clone(), source })?);
        }
        config.max_payload = args.max_payload.unwrap_or(config.max_payload);
        config.batch = BatchConfig::try_new(
            args.max_batch.unwrap_or(defaults::MAX_BATCH),
            args.batch_wait.unwrap_or(defaults::BATCH_WAIT),
            args.max_queue.unwrap_or(defaults::MAX_QUEUE),
            args.workers.unwrap_or(defaults::WORKERS),
        )?;
        config.max_queue_delay = args.max_queue_delay.unwrap_or(defaults::MAX_QUEUE_DELAY);
        config.metrics_listen = args.metrics_listen;
        config.tokens = args.auth_token_file.as_deref().map(TokenTable::load).transpose()?;
        config.tls = ServerTls::load(&args.tls)?;
        config.quic = quic_config(&args.quic, config.tls.as_ref())?;
        if !args.encodings.is_empty() {
            config.encodings = args.encodings;
        }
        config.drain_timeout = args.drain_timeout.unwrap_or(defaults::DRAIN_TIMEOUT);
        let d = SessionLimits::default();
        config.sessions = SessionLimits {
            max_sessions: args.max_sessions.unwrap_or(d.max_sessions),
            max_tokens: args.max_session_tokens.unwrap_or(d.max_tokens),
            idle_ttl: args.session_ttl.unwrap_or(d.idle_ttl),
            kv_budget: args.kv_budget.unwrap_or(d.kv_budget),
            max_batch: args.max_decode_batch.unwrap_or(d.max_batch),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what a hand-built config could get wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.models.is_empty() {
            return Err(ConfigError::NoModel);
        }
        if self.encodings.is_empty() {
            return Err(ConfigError::NoEncoding);
        }
        BatchConfig::try_new(self.batch.max_batch, self.batch.batch_wait, self.batch.max_queue, self.batch.workers)?;
        let s = &self.sessions;
        for (flag, got) in
            [("max-sessions", s.max_sessions), ("max-session-tokens", s.max_tokens), ("max-decode-batch", s.max_batch)]
        {
            if got == 0 {
                return Err(ConfigError::Zero { flag, got });
            }
        }
        if self.max_queue_delay.is_zero() {
            return Err(ConfigError::Value {
                flag: "--max-queue-delay",
                value: "0s".into(),
                detail: "must be positive (a cloud that admits no wait refuses everything beyond one batch)".into(),
            });
        }
        if s.idle_ttl.is_zero() {
            return Err(ConfigError::Value {
                flag: "--session-ttl",
                value: "0s".into(),
                detail: "must be positive".into(),
            });
        }
        Ok(())
    }
}

/// QUIC's certificate: the TLS files, else a self-signed one (written to
/// `--cert-out`).
fn quic_config(args: &QuicArgs, tls: Option<&ServerTls>) -> Result<Option<QuicConfig>, ConfigError> {
    let Some(listen) = args.quic_listen else {
        if args.self_signed || args.cert_out.is_some() {
            return Err(ConfigError::SelfSignedWithoutQuic);
        }
        return Ok(None);
    };
    if args.self_signed && tls.is_some() {
        return Err(ConfigError::SelfSignedWithCert);
    }
    if args.cert_out.is_some() && !args.self_signed {
        return Err(ConfigError::CertOutWithoutSelfSigned);
    }
    if let Some(tls) = tls {
        return Ok(Some(QuicConfig { listen, tls: tls.clone() }));
    }
    if !args.self_signed {
        return Err(ConfigError::QuicNeedsCertificate);
    }
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
        names.push(listen.ip().to_string());
    }
    let identity = Identity::self_signed(names.clone())?;
    tracing::warn!(?names, "QUIC uses a self-signed certificate (local runs and tests only)");
    if let Some(out) = &args.cert_out {
        write_cert(out, identity.certificate_pem())?;
        tracing::info!(path = %out.display(), "wrote the self-signed certificate (give it to edges with --ca)");
    }
    Ok(Some(QuicConfig { listen, tls: ServerTls::new(identity) }))
}

fn write_cert(path: &Path, pem: &[u8]) -> Result<(), ConfigError> {
    std::fs::write(path, pem).map_err(|source| ConfigError::CertOut { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: CloudArgs,
    }

    #[test]
    fn help_shows_the_defaults_in_use() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for shown in [
            format!("[default: {}]", defaults::LISTEN),
            format!("[default: {}]", defaults::MAX_PAYLOAD),
            format!("[default: {}]", defaults::WORKERS),
            format!("[default: {}]", defaults::MAX_BATCH),
            format!("[default: {}s]", defaults::BATCH_WAIT.as_secs()),
            format!("[default: {}]", defaults::MAX_QUEUE),
            format!("[default: {}ms]", defaults::MAX_QUEUE_DELAY.as_millis()),
            format!("[default: {}s]", defaults::DRAIN_TIMEOUT.as_secs()),
        ] {
            assert!(help.contains(&shown), "help lacks {shown}");
        }
    }

    #[test]
    fn bad_values_are_refused_not_clamped() {
        let args = |extra: &[&str]| {
            let mut argv = vec!["cloud", "--model", "m"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().args
        };
        let e = CloudConfig::from_args(args(&["--workers", "0"])).unwrap_err();
        assert!(matches!(e, ConfigError::Zero { flag: "workers", .. }), "{e}");
        let e = CloudConfig::from_args(args(&["--max-batch", "0"])).unwrap_err();
        assert!(e.to_string().contains("--max-batch must be at least 1"), "{e}");
        let e = CloudConfig::from_args(args(&["--quic-listen", "127.0.0.1:0"])).unwrap_err();
        assert!(matches!(e, ConfigError::QuicNeedsCertificate), "{e}");
        let e = CloudConfig::from_args(Cli::try_parse_from(["cloud"]).unwrap().args).unwrap_err();
        assert!(matches!(e, ConfigError::NoModel), "{e}");
        let ok = CloudConfig::from_args(args(&["--max-batch", "4"])).unwrap();
        assert_eq!(ok.batch, BatchConfig { max_batch: 4, ..BatchConfig::default() });
        assert_eq!(ok.listen, defaults::LISTEN.parse().unwrap());
    }

    #[test]
    fn config_file_under_flags() {
        let dir = std::env::temp_dir().join(format!("offramp-cloud-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cloud.toml");
        std::fs::write(
            &file,
            "model = [\"models/m\"]\nmax-batch = 8\nworkers = 2\nbatch-wait = \"2ms\"\nencodings = [\"f16\"]\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["cloud", "--config", file.to_str().unwrap(), "--workers", "3"]).unwrap();
        let c = CloudConfig::from_args(cli.args).unwrap();
        assert_eq!(c.batch.max_batch, 8, "from the file");
        assert_eq!(c.batch.workers, 3, "the flag wins");
        assert_eq!(c.batch.batch_wait, Duration::from_millis(2));
        assert_eq!(c.encodings, vec![pb::Encoding::F16]);
        assert!(matches!(&c.models[..], [ModelSource::Dir(p)] if *p == dir.join("models/m")), "{:?}", c.models);
        std::fs::write(&file, "max-bach = 8\n").unwrap();
        let cli = Cli::try_parse_from(["cloud", "--config", file.to_str().unwrap()]).unwrap();
        let e = CloudConfig::from_args(cli.args).unwrap_err().to_string();
        assert!(e.contains("max-bach"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
