//! How an edge reaches a cloud endpoint. gRPC (tonic) today; every transport
//! carries the same protobuf messages and reports failures as gRPC statuses.

use std::time::Duration;

use offramp_proto as pb;
use offramp_proto::split_inference_client::SplitInferenceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// Connection settings shared by transports.
#[derive(Debug, Clone, Copy)]
pub struct ConnectConfig {
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
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

/// A client for one endpoint.
#[derive(Debug, Clone)]
pub enum Transport {
    Grpc(SplitInferenceClient<Channel>),
}

impl Transport {
    /// A lazily connecting gRPC client: nothing is dialled until the first
    /// call, and a broken connection is re-dialled on the next call.
    pub fn grpc(url: &str, c: &ConnectConfig) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("bad cloud URL {url:?}: {e}"))?
            .connect_timeout(c.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(c.keepalive_interval)
            .keep_alive_timeout(c.keepalive_timeout)
            .keep_alive_while_idle(true);
        Ok(Transport::Grpc(SplitInferenceClient::new(endpoint.connect_lazy()).max_decoding_message_size(64 << 20)))
    }

    pub async fn model_info(&self, timeout: Duration) -> Result<pb::ModelInfo, Status> {
        match self {
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
