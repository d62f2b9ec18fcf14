//! How an edge reaches a cloud endpoint: gRPC (tonic) or QUIC
//! ([`crate::quic`]). Every transport carries the same protobuf messages and
//! reports failures as gRPC statuses: classification (handshake, offloads)
//! and decoder sessions (the decoder handshake, the `Generate` stream) alike.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use offramp_proto as pb;
use offramp_proto::split_generation_client::SplitGenerationClient;
use offramp_proto::split_inference_client::SplitInferenceClient;
use offramp_transport::tls::ClientTls;
use offramp_transport::token::{BearerInterceptor, Secret, TokenError};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// Largest answer accepted from a cloud, over gRPC or QUIC.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// A gRPC client with the edge's credentials.
pub type GrpcClient = SplitInferenceClient<InterceptedService<Channel, BearerInterceptor>>;

/// The gRPC client of decoder sessions, on the same channel.
pub type GenerationClient = SplitGenerationClient<InterceptedService<Channel, BearerInterceptor>>;

/// The answers of a generation session, in order; an error ends it.
pub type SessionAnswers = Pin<Box<dyn Stream<Item = Result<pb::GenerateResponse, Status>> + Send>>;

/// Both gRPC services of one endpoint over one lazily connecting channel.
#[derive(Debug, Clone)]
pub struct GrpcClients {
    pub infer: GrpcClient,
    pub generation: GenerationClient,
}

/// Why a transport to an endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0:?} is a QUIC URL: use --transport quic")]
    QuicUrl(String),
    #[error("bad cloud URL {url:?}: {detail}")]
    BadUrl { url: String, detail: String },
    #[error("TLS is configured (--ca) but {0:?} is not an https:// URL")]
    NotHttps(String),
    #[error("TLS for {url}: {detail}")]
    Tls { url: String, detail: String },
    #[error(transparent)]
    QuicUrlSyntax(#[from] offramp_transport::quic::UrlError),
    #[error(transparent)]
    QuicTls(#[from] offramp_transport::tls::TlsError),
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// Connection settings shared by transports.
#[derive(Debug, Clone, Copy)]
pub struct ConnectConfig {
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Client-side adaptive throttling of offloads ([`crate::throttle`]):
    /// the `K` the cloud may see times what it accepts; `None`: off.
    pub throttle: Option<f64>,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        use crate::config::defaults;
        Self {
            connect_timeout: defaults::CONNECT_TIMEOUT,
            keepalive_interval: defaults::KEEPALIVE_INTERVAL,
            keepalive_timeout: defaults::KEEPALIVE_TIMEOUT,
            throttle: Some(crate::throttle::K),
        }
    }
}

/// What an edge proves itself with: TLS material (read once, used by both
/// transports) and a bearer token.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub tls: Option<ClientTls>,
    pub token: Option<Secret>,
}

/// Which transport an edge uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    /// gRPC over HTTP/2 (http:// or https:// URLs), one unary call per offload.
    Grpc,
    /// gRPC over HTTP/2, every offload on one persistent `InferStream` per
    /// endpoint (no HTTP/2 stream set up per request): the default.
    #[default]
    GrpcStream,
    /// QUIC streams with TLS 1.3 (quic://host:port URLs; needs --ca).
    Quic,
}

/// A client for one endpoint: its link, and the throttle in front of its
/// offloads.
#[derive(Debug, Clone)]
pub struct Transport {
    link: Link,
    throttle: Option<Arc<crate::throttle::Throttle>>,
}

#[derive(Debug, Clone)]
enum Link {
    Grpc(GrpcClients),
    /// The handshake over unary calls, offloads over the stream.
    GrpcStream(GrpcClients, Arc<crate::grpc_stream::StreamClient>),
    Quic(Arc<crate::quic::QuicClient>),
}

/// Seeds for the throttles' coin flips (any distinct values will do).
static THROTTLE_SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Transport {
    fn with(link: Link, c: &ConnectConfig) -> Self {
        let seed = THROTTLE_SEED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self { link, throttle: c.throttle.map(|k| Arc::new(crate::throttle::Throttle::new(k, seed))) }
    }

    /// A client of `kind` for `url`.
    pub fn new(kind: TransportKind, url: &str, c: &ConnectConfig, creds: &Credentials) -> Result<Self, TransportError> {
        match kind {
            TransportKind::Grpc => Self::grpc(url, c, creds),
            TransportKind::GrpcStream => {
                let clients = grpc_clients(url, c, creds)?;
                let stream = crate::grpc_stream::StreamClient::new(clients.infer.clone());
                Ok(Self::with(Link::GrpcStream(clients, Arc::new(stream)), c))
            }
            TransportKind::Quic => Self::quic(url, c, creds),
        }
    }

    /// A lazily connecting gRPC client: nothing is dialled until the first
    /// call, and a broken connection is re-dialled on the next call.
    pub fn grpc(url: &str, c: &ConnectConfig, creds: &Credentials) -> Result<Self, TransportError> {
        Ok(Self::with(Link::Grpc(grpc_clients(url, c, creds)?), c))
    }

    /// A lazily connecting QUIC client (`quic://host:port`); TLS needs `--ca`.
    pub fn quic(url: &str, c: &ConnectConfig, creds: &Credentials) -> Result<Self, TransportError> {
        Ok(Self::with(Link::Quic(Arc::new(crate::quic::QuicClient::new(url, c, creds)?)), c))
    }

    pub async fn model_info(&self, timeout: Duration) -> Result<pb::ModelInfo, Status> {
        match &self.link {
            Link::Quic(client) => client.model_info(timeout).await,
            Link::Grpc(c) | Link::GrpcStream(c, _) => {
                let mut client = c.infer.clone();
                within(timeout, client.get_model_info(timed(pb::ModelInfoRequest {}, timeout)), "handshake timed out")
                    .await
            }
        }
    }

    /// One request with a deadline. A deadline that passes locally is reported
    /// as `DeadlineExceeded`; a request the throttle refuses never leaves
    /// (`ResourceExhausted`).
    pub async fn infer(&self, req: pb::InferRequest, timeout: Duration) -> Result<pb::InferResponse, Status> {
        self.admit()?;
        self.infer_admitted(req, timeout).await
    }

    /// The throttle's verdict on one more request (counted as asked for);
    /// `Err`: refused here. [`Self::infer`] asks it itself; a caller that
    /// wants to skip building a request the throttle would refuse asks
    /// first and then sends with [`Self::infer_admitted`].
    pub fn admit(&self) -> Result<(), Status> {
        self.throttle.as_ref().map_or(Ok(()), |t| t.admit())
    }

    /// [`Self::infer`] for a request [`Self::admit`] let through.
    pub async fn infer_admitted(&self, req: pb::InferRequest, timeout: Duration) -> Result<pb::InferResponse, Status> {
        let answer = self.send(req, timeout).await;
        if let Some(throttle) = &self.throttle {
            throttle.record(answer.as_ref().map(|_| ()).map_err(Status::code));
        }
        answer
    }

    async fn send(&self, req: pb::InferRequest, timeout: Duration) -> Result<pb::InferResponse, Status> {
        match &self.link {
            Link::Quic(client) => {
                // The deadline travels in the request, as on the stream
                // (gRPC's unary calls carry it as `grpc-timeout`): the cloud
                // refuses at once what it cannot answer in time, and drops
                // it when the deadline passes.
                let mut req = req;
                req.timeout_us = timeout.as_micros().clamp(1, u64::MAX as u128) as u64;
                client.infer(&req, timeout).await
            }
            Link::GrpcStream(_, stream) => stream.infer(req, timeout).await,
            Link::Grpc(c) => {
                let mut client = c.infer.clone();
                within(timeout, client.infer(timed(req, timeout)), "offload deadline passed").await
            }
        }
    }

    /// The decoders the endpoint holds (the decoder handshake).
    pub async fn decoder_info(&self, timeout: Duration) -> Result<pb::DecoderInfo, Status> {
        match &self.link {
            Link::Quic(client) => client.decoder_info(timeout).await,
            Link::Grpc(c) | Link::GrpcStream(c, _) => {
                let mut client = c.generation.clone();
                let call = client.get_decoder_info(timed(pb::ModelInfoRequest {}, timeout));
                within(timeout, call, "decoder handshake timed out").await
            }
        }
    }

    /// Opens a generation session: `outbound` carries the edge's messages
    /// (open, then steps) until it is dropped; the answers come back in order.
    pub async fn generate(
        &self,
        outbound: tokio::sync::mpsc::UnboundedReceiver<pb::GenerateRequest>,
    ) -> Result<SessionAnswers, Status> {
        match &self.link {
            Link::Quic(client) => client.generate(outbound).await,
            Link::Grpc(c) | Link::GrpcStream(c, _) => {
                let outbound = tokio_stream::wrappers::UnboundedReceiverStream::new(outbound);
                let answers = c.generation.clone().generate(outbound).await?.into_inner();
                Ok(Box::pin(answers))
            }
        }
    }
}

/// Both gRPC clients of `url` on one lazily connecting channel.
fn grpc_clients(url: &str, c: &ConnectConfig, creds: &Credentials) -> Result<GrpcClients, TransportError> {
    let (channel, interceptor) = grpc_channel(url, c, creds)?;
    let generation = SplitGenerationClient::with_interceptor(channel.clone(), interceptor.clone())
        .max_decoding_message_size(MAX_ANSWER_BYTES);
    let infer =
        SplitInferenceClient::with_interceptor(channel, interceptor).max_decoding_message_size(MAX_ANSWER_BYTES);
    Ok(GrpcClients { infer, generation })
}

/// A gRPC request carrying `timeout` as its `grpc-timeout`.
fn timed<M>(msg: M, timeout: Duration) -> tonic::Request<M> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// A unary call's answer, or `DeadlineExceeded` (`late`) once `timeout`
/// passes locally.
async fn within<M>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<M>, Status>>,
    late: &'static str,
) -> Result<M, Status> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        // tonic's channel enforces the call's own `grpc-timeout` too, and
        // reports it as `Cancelled` ("Timeout expired"): it is this
        // deadline passing, `DeadlineExceeded` as gRPC names it.
        Ok(Err(s)) if s.code() == tonic::Code::Cancelled && caused_by::<tonic::TimeoutExpired>(&s) => {
            Err(Status::deadline_exceeded(late))
        }
        // A connection that failed under the call (reset, keep-alive
        // unanswered) is `Unknown` ("transport error") from tonic;
        // gRPC names a failed connection `Unavailable`.
        Ok(Err(s)) if s.code() == tonic::Code::Unknown && caused_by::<tonic::transport::Error>(&s) => {
            Err(Status::unavailable(format!("the connection failed: {}", error_chain(&s))))
        }
        Ok(Err(s)) => Err(s),
        Err(_) => Err(Status::deadline_exceeded(late)),
    }
}

/// Whether an error of type `E` is somewhere in `status`'s causes.
fn caused_by<E: std::error::Error + 'static>(status: &Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        if e.is::<E>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A status's message and its causes, `: `-separated.
fn error_chain(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        text.push_str(&format!(": {e}"));
        cause = e.source();
    }
    text
}

/// A lazily connecting gRPC channel to `url` with the edge's TLS settings,
/// and the interceptor that adds its bearer token (shared by the
/// classification and generation clients).
pub fn grpc_channel(
    url: &str,
    c: &ConnectConfig,
    creds: &Credentials,
) -> Result<(Channel, BearerInterceptor), TransportError> {
    if url.starts_with("quic://") {
        return Err(TransportError::QuicUrl(url.to_string()));
    }
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| TransportError::BadUrl { url: url.to_string(), detail: e.to_string() })?
        .connect_timeout(c.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(c.keepalive_interval)
        .keep_alive_timeout(c.keepalive_timeout)
        .keep_alive_while_idle(true);
    if let Some(tls) = &creds.tls {
        if !url.starts_with("https://") {
            return Err(TransportError::NotHttps(url.to_string()));
        }
        endpoint = endpoint
            .tls_config(tls.tonic())
            .map_err(|e| TransportError::Tls { url: url.to_string(), detail: e.to_string() })?;
    }
    let interceptor = BearerInterceptor::new(creds.token.as_ref())?;
    Ok((endpoint.connect_lazy(), interceptor))
}
