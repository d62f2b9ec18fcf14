//! The Offramp cloud service: runs blocks `[K, N)` of a multi-exit network and
//! their exits for hidden states sent by edges, over gRPC and optionally QUIC
//! ([`quic`]).
//!
//! `main` parses [`Config`], sets up tracing and calls [`serve`]; tests call the
//! same [`serve`] in-process on `127.0.0.1:0`.

pub mod batcher;
pub mod error;
pub mod models;
pub mod quic;
pub mod service;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use offramp_common::{codec, units};
use offramp_proto as pb;
use offramp_proto::split_inference_server::SplitInferenceServer;
use tokio::net::TcpListener;

use crate::batcher::{BatchConfig, Batcher};
use crate::models::Registry;
use crate::service::{CloudService, CloudState};

/// Cloud configuration (flags, each also readable from the environment).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Model bundle directory: the whole model, or the cloud side of a split
    /// (`offramp split`). Repeat for several models.
    #[arg(long = "model", env = "OFFRAMP_MODEL", required = true, value_delimiter = ',')]
    pub models: Vec<PathBuf>,
    /// gRPC listen address. Loopback by default; port 0 picks a free port.
    #[arg(long, env = "OFFRAMP_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Default policy for the cloud-side exits when a request carries none
    /// (default: the bundle's policy.toml, else final exit only).
    #[arg(long, env = "OFFRAMP_POLICY")]
    pub policy: Option<PathBuf>,
    /// Largest accepted hidden-state payload.
    #[arg(long, env = "OFFRAMP_MAX_PAYLOAD", default_value = "4MiB", value_parser = units::parse_bytes)]
    pub max_payload: usize,
    /// Compute threads.
    #[arg(long, env = "OFFRAMP_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Largest batch across edges (1 turns batching off).
    #[arg(long, env = "OFFRAMP_MAX_BATCH", default_value_t = 32)]
    pub max_batch: usize,
    /// How long a request may wait for others to fill its batch. The default 0
    /// adds no latency: a batch is whatever queued up while the previous one
    /// computed (so batches grow with load by themselves).
    #[arg(long, env = "OFFRAMP_BATCH_WAIT", default_value = "0s", value_parser = units::parse_duration)]
    pub batch_wait: Duration,
    /// Bound on queued work; beyond it requests get ResourceExhausted at once.
    #[arg(long, env = "OFFRAMP_MAX_QUEUE", default_value_t = 1024)]
    pub max_queue: usize,
    /// Serve Prometheus metrics on this address (off by default).
    #[arg(long, env = "OFFRAMP_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Bearer tokens accepted, one `edge-id token` per line. Without it every
    /// caller is admitted (keep the default loopback bind then).
    #[arg(long, env = "OFFRAMP_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: offramp_common::security::ServerTlsArgs,
    #[command(flatten)]
    pub quic: quic::QuicArgs,
    /// Hidden-state encodings accepted (listed in the handshake; edges check
    /// theirs against it).
    #[arg(long, env = "OFFRAMP_ENCODINGS", value_delimiter = ',', default_value = "f32,f16,bf16,int8", value_parser = codec::parse_encoding)]
    pub encodings: Vec<pb::Encoding>,
    /// On SIGTERM/SIGINT, how long in-flight work may take to finish.
    #[arg(long, env = "OFFRAMP_DRAIN_TIMEOUT", default_value = "10s", value_parser = units::parse_duration)]
    pub drain_timeout: Duration,
}

impl Config {
    /// A config for one model with defaults (tests, demo).
    pub fn for_model(model: impl Into<PathBuf>) -> Self {
        Self {
            models: vec![model.into()],
            listen: "127.0.0.1:0".parse().expect("valid address"),
            policy: None,
            max_payload: 4 << 20,
            workers: 1,
            max_batch: 32,
            batch_wait: Duration::ZERO,
            max_queue: 1024,
            drain_timeout: Duration::from_secs(10),
            metrics_listen: None,
            auth_token_file: None,
            tls: Default::default(),
            quic: Default::default(),
            encodings: codec::ENCODINGS.to_vec(),
        }
    }
}

/// Where a ready cloud listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    pub grpc: SocketAddr,
    /// The QUIC (UDP) address, when `--quic-listen` is on.
    pub quic: Option<SocketAddr>,
}

/// Serves until `shutdown` resolves, then drains. `ready` is called with the
/// bound addresses once the models are loaded and health says SERVING; until
/// then health answers NOT_SERVING and inference `Unavailable`.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(Listening) + Send + 'static,
) -> Result<()> {
    if config.encodings.is_empty() {
        anyhow::bail!("--encodings must name at least one encoding");
    }
    let addr = listener.local_addr()?;
    if let Some(m) = config.metrics_listen {
        match telemetry::install_metrics(m) {
            Ok(()) => tracing::info!(addr = %m, "metrics listening"),
            Err(e) => tracing::warn!(error = %e, "metrics exporter not installed (one per process)"),
        }
    }
    let tokens = match &config.auth_token_file {
        Some(p) => Some(offramp_common::security::TokenTable::load(p).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let auth = telemetry::Auth::new(tokens);
    let mut builder = tonic::transport::Server::builder();
    if let (Some(cert), Some(key)) = (&config.tls.tls_cert, &config.tls.tls_key) {
        use offramp_common::security::read_file;
        let identity = tonic::transport::Identity::from_pem(
            read_file(cert, "TLS certificate").map_err(anyhow::Error::msg)?,
            read_file(key, "TLS key").map_err(anyhow::Error::msg)?,
        );
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &config.tls.tls_client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(
                read_file(ca, "client CA").map_err(anyhow::Error::msg)?,
            ));
        }
        builder = builder.tls_config(tls).context("TLS configuration")?;
        tracing::info!("TLS on");
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<SplitInferenceServer<CloudService>>().await;
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    let service = CloudService::default();
    let loaded = service.loaded.clone();

    // Shutdown: health NOT_SERVING and new work refused at once, then the
    // server stops accepting and in-flight requests get `drain_timeout`.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let max_message = config.max_payload + 64 * 1024;
    let quic = match config.quic.quic_listen {
        Some(listen) => {
            let identity = quic::identity(&config.quic, &config.tls, listen)?;
            let endpoint = quic::bind(listen, quic::server_config(identity, config.tls.tls_client_ca.as_deref())?)?;
            let quic_addr = endpoint.local_addr()?;
            let ctx = Arc::new(quic::StreamContext::new(loaded.clone(), auth.clone(), max_message));
            let task = tokio::spawn(quic::run(endpoint, ctx, stop_rx.clone(), config.drain_timeout));
            Some((quic_addr, task))
        }
        None => None,
    };
    let drain_started = {
        let (health, loaded) = (health.clone(), loaded.clone());
        async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, refusing new work, draining");
            if let Some(state) = loaded.get() {
                state.draining.store(true, Ordering::Relaxed);
            }
            health.set_not_serving::<SplitInferenceServer<CloudService>>().await;
            health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            let _ = stop_tx.send(true);
        }
    };
    tokio::spawn(drain_started);

    let split_service = tonic::service::interceptor::InterceptedService::new(
        SplitInferenceServer::new(service).max_decoding_message_size(max_message),
        move |req| auth.check(req),
    );
    let server = builder
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        // Bound what an overloaded server buffers per connection: HTTP/2 flow
        // control stops senders instead of memory growing with the backlog.
        .max_concurrent_streams(Some(256))
        .initial_connection_window_size(Some(1 << 20))
        .initial_stream_window_size(Some(256 << 10))
        .add_service(health_service)
        .add_service(split_service)
        .serve_with_incoming_shutdown(offramp_common::net::no_delay(listener), {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        });
    let server = tokio::spawn(server);

    let state = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || -> Result<Arc<CloudState>> {
            let registry = Registry::load(&config.models, config.policy.as_deref())?;
            let batcher = Batcher::start(BatchConfig {
                max_batch: config.max_batch,
                batch_wait: config.batch_wait,
                max_queue: config.max_queue,
                workers: config.workers,
            });
            Ok(Arc::new(CloudState {
                registry,
                batcher,
                max_payload_bytes: config.max_payload,
                encodings: config.encodings.clone(),
                draining: false.into(),
            }))
        })
        .await
        .context("model loader panicked")??
    };
    let _ = loaded.set(state);
    if !*stop_rx.borrow() {
        health.set_serving::<SplitInferenceServer<CloudService>>().await;
        health.set_service_status("", tonic_health::ServingStatus::Serving).await;
        let quic_addr = quic.as_ref().map(|q| q.0);
        tracing::info!(%addr, quic = ?quic_addr, "serving");
        ready(Listening { grpc: addr, quic: quic_addr });
    }

    let _ = stop_rx.wait_for(|s| *s).await;
    match tokio::time::timeout(config.drain_timeout, server).await {
        Ok(joined) => joined.context("server task panicked")?.context("grpc server failed")?,
        Err(_) => tracing::warn!(timeout = ?config.drain_timeout, "drain timed out; dropping in-flight requests"),
    }
    if let Some((_, task)) = quic {
        // Bounded by the drain timeout itself.
        task.await.context("QUIC server task panicked")?;
    }
    Ok(())
}

pub use offramp_common::net::shutdown_signal;

/// A cloud running in-process (tests, demo, experiments).
pub struct CloudHandle {
    pub addr: SocketAddr,
    /// The QUIC address, when `config.quic.quic_listen` was set.
    pub quic_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl CloudHandle {
    /// Binds `config.listen`, loads the models and returns once SERVING.
    pub async fn start(config: Config) -> Result<Self> {
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(
            config,
            listener,
            async move {
                let _ = stop_rx.await;
            },
            move |l| {
                let _ = ready_tx.send(l);
            },
        ));
        match ready_rx.await {
            Ok(l) => Ok(Self { addr: l.grpc, quic_addr: l.quic, stop: Some(stop), task }),
            Err(_) => Err(task
                .await
                .context("cloud task panicked")?
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("cloud stopped before ready"))),
        }
    }

    /// `http://addr` for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `quic://addr` for QUIC clients, when QUIC is on.
    pub fn quic_url(&self) -> Option<String> {
        self.quic_addr.map(|a| format!("quic://{a}"))
    }

    /// Graceful shutdown, waiting for the drain.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.context("cloud task panicked")?
    }
}

impl Drop for CloudHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
