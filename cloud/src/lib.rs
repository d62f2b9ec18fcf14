//! The Offramp cloud service: runs blocks `[K, N)` of a multi-exit network and
//! their exits for hidden states sent by edges, over gRPC and optionally QUIC
//! ([`quic`]).
//!
//! `main` parses [`CloudArgs`], turns them into a [`CloudConfig`], sets up
//! tracing and calls [`serve`]; tests and the lab call the same [`serve`]
//! in-process on `127.0.0.1:0` (through [`CloudHandle`]).

pub mod admission;
pub mod auth;
pub mod batcher;
pub mod cli;
pub mod config;
pub mod early;
pub mod error;
pub mod generation;
pub mod models;
pub mod quic;
pub mod service;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use offramp_proto::split_inference_server::SplitInferenceServer;
use tokio::net::TcpListener;

use crate::auth::Auth;
use crate::batcher::Batcher;
pub use crate::config::{CloudArgs, CloudConfig, ConfigError, ModelSource};
use crate::models::Registry;
use crate::service::{CloudService, CloudState};

/// Why a cloud could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen for QUIC on {addr}: {source}")]
    QuicBind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] offramp_transport::tls::TlsError),
    #[error("TLS configuration: {0}")]
    GrpcTls(tonic::transport::Error),
    #[error(transparent)]
    Load(#[from] models::LoadError),
    #[error("starting the compute threads: {0}")]
    Workers(std::io::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(tonic::transport::Error),
    #[error("{0} panicked")]
    Panicked(&'static str),
    #[error("the cloud stopped before it was ready")]
    StoppedEarly,
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
    config: CloudConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(Listening) + Send + 'static,
) -> Result<(), ServeError> {
    config.validate()?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    if let Some(m) = config.metrics_listen {
        match telemetry::install_metrics(m) {
            Ok(()) => tracing::info!(addr = %m, "metrics listening"),
            Err(e) => tracing::warn!(error = %e, "metrics exporter not installed (one per process)"),
        }
    }
    let auth = Auth::new(config.tokens.clone());
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls.tonic()).map_err(ServeError::GrpcTls)?;
        tracing::info!(mutual = tls.is_mutual(), "TLS on");
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, false).await;
    let service = CloudService::default();
    let loaded = service.loaded.clone();

    // Shutdown: health NOT_SERVING and new work refused at once, then the
    // server stops accepting and in-flight requests get `drain_timeout`.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let max_message = config.max_payload + 64 * 1024;
    // One admission for every transport, there before the models load (the
    // unary calls' early check sits in front of the services).
    let admission = admission::Admission::new(config.max_queue_delay, config.batch.max_batch * config.batch.workers);
    let quic = match &config.quic {
        Some(q) => {
            let ctx = Arc::new(quic::StreamContext::new(loaded.clone(), auth.clone(), max_message));
            Some(start_quic(q, ctx, stop_rx.clone(), config.drain_timeout)?)
        }
        None => None,
    };
    tokio::spawn(drain_on(shutdown, health.clone(), loaded.clone(), stop_tx));
    let services = GrpcServices { service, auth, max_message, admission: admission.clone() };
    let server = tokio::spawn(grpc_server(builder, services, health_service, listener, stop_rx.clone()));

    let state = {
        let config = config.clone();
        let admission = admission.clone();
        tokio::task::spawn_blocking(move || load_state(&config, admission))
            .await
            .map_err(|_| ServeError::Panicked("model loader"))??
    };
    let _ = loaded.set(state);
    if !*stop_rx.borrow() {
        set_health(&health, true).await;
        let quic_addr = quic.as_ref().map(|q| q.0);
        tracing::info!(%addr, quic = ?quic_addr, "serving");
        ready(Listening { grpc: addr, quic: quic_addr });
    }

    let _ = stop_rx.wait_for(|s| *s).await;
    match tokio::time::timeout(config.drain_timeout, server).await {
        Ok(joined) => joined.map_err(|_| ServeError::Panicked("gRPC server"))?.map_err(ServeError::Grpc)?,
        Err(_) => tracing::warn!(timeout = ?config.drain_timeout, "drain timed out; dropping in-flight requests"),
    }
    if let Some((_, task)) = quic {
        // Bounded by the drain timeout itself.
        task.await.map_err(|_| ServeError::Panicked("QUIC server"))?;
    }
    Ok(())
}

/// Health of the inference service and of the server as a whole.
async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    if serving {
        health.set_serving::<SplitInferenceServer<CloudService>>().await;
        health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    } else {
        health.set_not_serving::<SplitInferenceServer<CloudService>>().await;
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    }
}

/// Once `shutdown` resolves: health NOT_SERVING, new work refused, and the
/// servers told to stop accepting (they then drain).
async fn drain_on(
    shutdown: impl Future<Output = ()>,
    health: tonic_health::server::HealthReporter,
    loaded: Arc<std::sync::OnceLock<Arc<CloudState>>>,
    stop: tokio::sync::watch::Sender<bool>,
) {
    shutdown.await;
    tracing::info!("shutting down: health NOT_SERVING, refusing new work, draining");
    if let Some(state) = loaded.get() {
        state.draining.store(true, Ordering::Relaxed);
    }
    set_health(&health, false).await;
    let _ = stop.send(true);
}

/// What the gRPC server serves.
struct GrpcServices {
    service: CloudService,
    auth: Auth,
    max_message: usize,
    admission: Arc<admission::Admission>,
}

/// The gRPC server on `listener` until `stop` turns true: health,
/// `SplitInference` and `SplitGeneration` behind the token check, with the
/// transport settings below.
fn grpc_server(
    builder: tonic::transport::Server,
    s: GrpcServices,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    listener: TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> impl Future<Output = Result<(), tonic::transport::Error>> {
    let generation_service = {
        let auth = s.auth.clone();
        tonic::service::interceptor::InterceptedService::new(
            offramp_proto::split_generation_server::SplitGenerationServer::new(service::GenerationService {
                loaded: s.service.loaded.clone(),
            })
            .max_decoding_message_size(s.max_message),
            move |req| auth.check(req),
        )
    };
    let auth = s.auth;
    let split_service = tonic::service::interceptor::InterceptedService::new(
        SplitInferenceServer::new(s.service).max_decoding_message_size(s.max_message),
        move |req| auth.check(req),
    );
    let mut builder = builder
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        // Bound what an overloaded server buffers per connection: HTTP/2 flow
        // control stops senders instead of memory growing with the backlog.
        .max_concurrent_streams(Some(256))
        .initial_connection_window_size(Some(1 << 20))
        .initial_stream_window_size(Some(256 << 10))
        // Hidden states arrive in frames of up to 256 KiB instead of HTTP/2's
        // 16 KiB default: a 200 KB transformer state is one frame, read
        // with few syscalls and task wake-ups instead of thirteen of each.
        .max_frame_size(Some(256 << 10))
        // Where tonic's defaults differ from gRPC's status rules (415 for a
        // non-gRPC content type, UNIMPLEMENTED naming an unknown method,
        // DEADLINE_EXCEEDED for an expired grpc-timeout, InvalidArgument for
        // oversized or malformed unary bodies).
        .layer(grpc_rules())
        // Unary Infer calls admitted or refused on their headers, before
        // their message is read.
        .layer(early::EarlyAdmissionLayer::new(s.admission.clone()));
    builder.add_service(health).add_service(split_service).add_service(generation_service).serve_with_incoming_shutdown(
        offramp_common::net::no_delay(listener),
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    )
}

/// Binds the QUIC endpoint and serves it on a task of its own; returns the
/// bound address and the task (which ends after its drain).
fn start_quic(
    q: &config::QuicConfig,
    ctx: Arc<quic::StreamContext>,
    stop: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    let server_config =
        offramp_transport::quic::server_config(&q.tls, quic::MAX_STREAMS_PER_CONNECTION, quic::IDLE_TIMEOUT)?;
    let bind_error = |source| ServeError::QuicBind { addr: q.listen, source };
    let endpoint = offramp_transport::quic::endpoint(q.listen, Some(server_config)).map_err(bind_error)?;
    let addr = endpoint.local_addr().map_err(bind_error)?;
    Ok((addr, tokio::spawn(quic::run(endpoint, ctx, stop, drain))))
}

/// Loads the models and starts the compute threads (blocking: run off the
/// async workers).
fn load_state(config: &CloudConfig, admission: Arc<admission::Admission>) -> Result<Arc<CloudState>, ServeError> {
    let mut registry = Registry::load(&config.models, config.policy.as_ref())?;
    let batcher = Batcher::start(config.batch).map_err(ServeError::Workers)?;
    let decoders = std::mem::take(&mut registry.decoders);
    let generation =
        generation::Generation::start(decoders, config.sessions, config.max_payload, config.encodings.clone())
            .map_err(ServeError::Workers)?;
    Ok(Arc::new(CloudState {
        registry,
        batcher,
        admission,
        max_payload_bytes: config.max_payload,
        encodings: config.encodings.clone(),
        draining: false.into(),
        generation: Arc::new(generation),
    }))
}

pub use offramp_common::net::shutdown_signal;

/// A cloud running in-process (tests, demo, experiments).
pub struct CloudHandle {
    pub addr: SocketAddr,
    /// The QUIC address, when `config.quic.quic_listen` was set.
    pub quic_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl CloudHandle {
    /// Binds `config.listen`, loads the models and returns once SERVING.
    pub async fn start(config: CloudConfig) -> Result<Self, ServeError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Bind { addr: config.listen, source })?;
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
                .map_err(|_| ServeError::Panicked("cloud task"))?
                .err()
                .unwrap_or(ServeError::StoppedEarly)),
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
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.map_err(|_| ServeError::Panicked("cloud task"))?
    }
}

impl Drop for CloudHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The gRPC rules layer for the cloud's server: `SplitInference` (whose
/// `InferStream` streams requests), `SplitGeneration` (whose `Generate`
/// does) and gRPC health (whose `Check` and `Watch` take one request).
fn grpc_rules() -> offramp_transport::grpc_rules::GrpcRulesLayer {
    use tonic::server::NamedService;
    type Health = tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>;
    offramp_transport::grpc_rules::GrpcRulesLayer::new(
        &[
            SplitInferenceServer::<CloudService>::NAME,
            offramp_proto::split_generation_server::SplitGenerationServer::<service::GenerationService>::NAME,
            Health::NAME,
        ],
        &["/offramp.v1.SplitInference/InferStream", "/offramp.v1.SplitGeneration/Generate"],
    )
}
