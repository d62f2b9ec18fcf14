//! `offramp-edge serve`: the local API on the device. Applications send an
//! input and get a class, whichever tier answered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use offramp_common::codec;
use offramp_common::codec::echo;
use offramp_proto as pb;
use offramp_proto::classify_server::{Classify, ClassifyServer};
use offramp_transport::grpc_rules::GrpcRulesLayer;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use crate::config::EdgeArgs;
use crate::runtime::{Edge, Tier};

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub edge: EdgeArgs,
    /// Listen address of the local Classify API of a classifier (loopback
    /// by default).
    #[arg(long, env = "OFFRAMP_EDGE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub http: crate::http::args::HttpArgs,
}

/// Where the Classify API listens unless told.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50061";

impl ServeArgs {
    /// Whether --listen was set to something other than its default.
    pub fn listen_given(&self) -> bool {
        self.listen.to_string() != DEFAULT_LISTEN
    }
}

/// Largest input payload the local API decodes.
const MAX_INPUT_BYTES: usize = 64 << 20;
/// Largest text the local API tokenizes (longer texts are truncated to the
/// model's maximum length anyway).
const MAX_TEXT_BYTES: usize = 64 << 10;

pub struct ClassifyService {
    pub edge: Arc<Edge>,
}

#[tonic::async_trait]
impl Classify for ClassifyService {
    async fn classify(&self, request: Request<pb::ClassifyRequest>) -> Result<Response<pb::ClassifyResponse>, Status> {
        let req = request.into_inner();
        let values = self.check_input(req.input.as_ref(), &req.text)?;
        let deadline = if req.deadline_ms == 0 {
            self.edge.config.deadline
        } else {
            Duration::from_millis(req.deadline_ms as u64)
        };
        let a = self.edge.classify_with_deadline(None, values, deadline).await;
        if a.tier == Tier::Error {
            let msg = a.error.unwrap_or_else(|| "no answer".into());
            // An input that overflowed the network is the caller's to fix;
            // anything else is this device failing to answer.
            return Err(if a.overflow.is_some() { Status::invalid_argument(msg) } else { Status::unavailable(msg) });
        }
        let prediction = a.prediction.unwrap_or_default();
        Ok(Response::new(pb::ClassifyResponse {
            prediction,
            label: self.edge.bundle().labels().get(prediction as usize).cloned().unwrap_or_default(),
            exit: a.exit.unwrap_or_default(),
            confidence: a.confidence,
            tier: a.tier.as_str().into(),
            reason: a.reason.map(|r| r.as_str().to_string()).unwrap_or_default(),
            latency_us: a.latency_us,
            probabilities: if req.want_probabilities { a.probabilities } else { vec![] },
            split: a.split as u32,
            thresholds: a.thresholds,
            encoding: a.encoding.unwrap_or_default().to_string(),
        }))
    }
}

impl ClassifyService {
    /// Decodes and checks an input (a tensor, or text for a text model);
    /// messages echo the caller's shape bounded.
    fn check_input(&self, tensor: Option<&pb::Tensor>, text: &str) -> Result<Vec<f32>, Status> {
        let bundle = self.edge.bundle();
        match (tensor, text.is_empty()) {
            (Some(_), false) => {
                return Err(Status::invalid_argument("request has both an input tensor and text: send one"))
            }
            (None, false) if text.len() > MAX_TEXT_BYTES => {
                return Err(Status::invalid_argument(format!(
                    "text of {} bytes is over the limit of {MAX_TEXT_BYTES}",
                    text.len()
                )))
            }
            (None, false) => return self.edge.tokenize(text).map_err(|e| Status::invalid_argument(e.to_string())),
            (None, true) if bundle.takes_tokens() => {
                return Err(Status::invalid_argument("request has no text (or token-id tensor) to classify"))
            }
            (None, true) => return Err(Status::invalid_argument("request has no input tensor")),
            (Some(_), true) => {}
        }
        let tensor = tensor.expect("matched above");
        let (shape, values) =
            codec::decode(tensor, MAX_INPUT_BYTES).map_err(|e| Status::invalid_argument(format!("input: {e}")))?;
        let want = &bundle.manifest().input.shape;
        if bundle.takes_tokens() {
            if shape.len() != 1 || shape[0] == 0 || shape[0] > want[0] {
                return Err(Status::invalid_argument(format!(
                    "input has shape {}, the model takes [T] token ids with 1 <= T <= {}",
                    echo::Shape::of_usize(&shape),
                    want[0]
                )));
            }
            self.edge.check_input(&values).map_err(|e| Status::invalid_argument(format!("input: {e}")))?;
        } else if &shape != want {
            return Err(Status::invalid_argument(format!(
                "input has shape {}, the model expects {want:?}",
                echo::Shape::of_usize(&shape)
            )));
        }
        Ok(values)
    }
}

/// Serves the local API until `shutdown` resolves.
pub async fn serve(
    edge: Arc<Edge>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ClassifyServer<ClassifyService>>().await;
    type Health = tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>;
    type Local = ClassifyServer<ClassifyService>;
    tonic::transport::Server::builder()
        // The same gRPC rules as the cloud's server: 415 for a non-gRPC
        // content type, UNIMPLEMENTED naming an unknown method,
        // DEADLINE_EXCEEDED for an expired grpc-timeout, one whole message
        // per unary call, InvalidArgument for oversized or malformed bodies.
        .layer(GrpcRulesLayer::new(&[Local::NAME, Health::NAME], &[]))
        .add_service(health_service)
        .add_service(
            ClassifyServer::new(ClassifyService { edge })
                .max_decoding_message_size(MAX_INPUT_BYTES + MAX_TEXT_BYTES + 4096),
        )
        .serve_with_incoming_shutdown(offramp_common::net::no_delay(listener), shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::testing::tiny;
    use crate::runtime::EdgeConfig;
    use tonic::Code;

    async fn service(huge: &[&str]) -> ClassifyService {
        let edge = Edge::start(EdgeConfig::new(tiny(huge), Some(4), vec![])).await.unwrap();
        ClassifyService { edge: Arc::new(edge) }
    }

    fn classify_request(values: &[f32], shape: &[usize]) -> Request<pb::ClassifyRequest> {
        Request::new(pb::ClassifyRequest {
            input: Some(codec::encode(values, shape, pb::Encoding::F32)),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn an_input_that_overflows_is_invalid_argument_naming_the_block() {
        let s = service(&["blocks.3.weight"]).await;
        let e = s.classify(classify_request(&[0.5; 784], &[1, 28, 28])).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("overflowed the network at block 3 (fc1)"), "{}", e.message());
        let ok = service(&[]).await.classify(classify_request(&[0.5; 784], &[1, 28, 28])).await.unwrap();
        assert!(ok.into_inner().confidence.is_finite());
    }

    #[tokio::test]
    async fn bad_inputs_are_refused_with_bounded_messages() {
        let s = service(&[]).await;
        let e = s.classify(classify_request(&[0.5; 100], &[1, 10, 10])).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("[1, 10, 10]") && e.message().contains("expects [1, 28, 28]"), "{}", e.message());
        // 100,000 dimensions of 1: decodes (one element), echoed bounded.
        let e = s.classify(classify_request(&[0.5], &[1; 100_000])).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().len() < 200 && e.message().contains("(100000 dims)"), "{}", e.message());
        let e = s.classify(Request::new(pb::ClassifyRequest::default())).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
}
