//! How an edge reaches a cloud endpoint: gRPC (tonic) or QUIC
//! ([`crate::quic`]). Every transport carries the same protobuf messages and
//! reports failures as gRPC statuses.

use std::sync::Arc;
use std::time::Duration;

use offramp_common::security::{read_file, ClientTlsArgs, Secret};
use offramp_proto as pb;
use offramp_proto::split_inference_client::SplitInferenceClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Status;

/// Largest answer accepted from a cloud, over gRPC or QUIC.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Adds `authorization: Bearer <token>` when a token is configured.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&Secret>) -> Result<Self, String> {
        token
            .map(|t| {
                let mut v: MetadataValue<_> = format!("Bearer {}", t.expose())
                    .parse()
                    .map_err(|_| "token is not valid header text".to_string())?;
                v.set_sensitive(true);
                Ok(v)
            })
            .transpose()
            .map(Self)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A gRPC client with the edge's credentials.
pub type GrpcClient = SplitInferenceClient<InterceptedService<Channel, BearerToken>>;

/// Builds the client TLS config from files.
pub fn client_tls(args: &ClientTlsArgs) -> Result<Option<ClientTlsConfig>, String> {
    let Some(ca) = &args.ca else {
        if args.tls_client_cert.is_some() {
            return Err("--tls-client-cert needs --ca (the server's CA)".into());
        }
        return Ok(None);
    };
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_file(ca, "CA certificate")?));
    if let (Some(cert), Some(key)) = (&args.tls_client_cert, &args.tls_client_key) {
        tls = tls.identity(Identity::from_pem(read_file(cert, "client certificate")?, read_file(key, "client key")?));
    }
    if let Some(d) = &args.tls_domain {
        tls = tls.domain_name(d.clone());
    }
    Ok(Some(tls))
}

/// Connection settings shared by transports.
#[derive(Debug, Clone, Copy)]
pub struct ConnectConfig {
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

/// Credentials for a connection.
#[derive(Clone, Default)]
pub struct Credentials {
    pub tls: Option<ClientTlsConfig>,
    pub token: BearerToken,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(500),
            keepalive_interval: Duration::from_secs(2),
            keepalive_timeout: Duration::from_secs(1),
        }
    }
}

/// Which transport an edge uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    /// gRPC over HTTP/2 (http:// or https:// URLs).
    #[default]
    Grpc,
    /// QUIC streams with TLS 1.3 (quic://host:port URLs; needs --ca).
    Quic,
}

/// A client for one endpoint.
#[derive(Debug, Clone)]
pub enum Transport {
    Grpc(GrpcClient),
    Quic(Arc<crate::quic::QuicClient>),
}

impl Transport {
    /// A lazily connecting gRPC client: nothing is dialled until the first
    /// call, and a broken connection is re-dialled on the next call.
    pub fn grpc(url: &str, c: &ConnectConfig, creds: &Credentials) -> Result<Self, String> {
        if url.starts_with("quic://") {
            return Err(format!("{url:?} is a QUIC URL: use --transport quic"));
        }
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("bad cloud URL {url:?}: {e}"))?
            .connect_timeout(c.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(c.keepalive_interval)
            .keep_alive_timeout(c.keepalive_timeout)
            .keep_alive_while_idle(true);
        if let Some(tls) = &creds.tls {
            if !url.starts_with("https://") {
                return Err(format!("TLS is configured (--ca) but {url:?} is not an https:// URL"));
            }
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| format!("TLS for {url}: {e}"))?;
        }
        let client = SplitInferenceClient::with_interceptor(endpoint.connect_lazy(), creds.token.clone());
        Ok(Transport::Grpc(client.max_decoding_message_size(MAX_ANSWER_BYTES)))
    }

    /// A lazily connecting QUIC client (`quic://host:port`); TLS needs `--ca`.
    pub fn quic(url: &str, c: &ConnectConfig, tls: &ClientTlsArgs, token: Option<&Secret>) -> Result<Self, String> {
        Ok(Transport::Quic(Arc::new(crate::quic::QuicClient::new(url, c, tls, token.cloned())?)))
    }

    pub async fn model_info(&self, timeout: Duration) -> Result<pb::ModelInfo, Status> {
        match self {
            Transport::Quic(client) => client.model_info(timeout).await,
            Transport::Grpc(client) => {
                let mut req = tonic::Request::new(pb::ModelInfoRequest {});
                req.set_timeout(timeout);
                match tokio::time::timeout(timeout, client.clone().get_model_info(req)).await {
                    Ok(r) => r.map(tonic::Response::into_inner),
                    Err(_) => Err(Status::deadline_exceeded("handshake timed out")),
                }
            }
        }
    }

    /// One request with a deadline. A deadline that passes locally is reported
    /// as `DeadlineExceeded`.
    pub async fn infer(&self, req: pb::InferRequest, timeout: Duration) -> Result<pb::InferResponse, Status> {
        match self {
            Transport::Quic(client) => client.infer(&req, timeout).await,
            Transport::Grpc(client) => {
                let mut r = tonic::Request::new(req);
                r.set_timeout(timeout);
                match tokio::time::timeout(timeout, client.clone().infer(r)).await {
                    Ok(r) => r.map(tonic::Response::into_inner),
                    Err(_) => Err(Status::deadline_exceeded("offload deadline passed")),
                }
            }
        }
    }
}
