//! `offramp-edge serve`: the local API on the device. Applications send an
//! input and get a class, whichever tier answered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use offramp_common::codec;
use offramp_proto as pb;
use offramp_proto::classify_server::{Classify, ClassifyServer};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::config::EdgeArgs;
use crate::runtime::{Edge, Tier};

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub edge: EdgeArgs,
    /// Listen address of the local API (loopback by default).
    #[arg(long, env = "OFFRAMP_EDGE_LISTEN", default_value = "127.0.0.1:50061")]
    pub listen: SocketAddr,
}

pub struct ClassifyService {
    pub edge: Arc<Edge>,
}

#[tonic::async_trait]
impl Classify for ClassifyService {
    async fn classify(&self, request: Request<pb::ClassifyRequest>) -> Result<Response<pb::ClassifyResponse>, Status> {
        let req = request.into_inner();
        let tensor = req.input.ok_or_else(|| Status::invalid_argument("request has no input tensor"))?;
        let (shape, values) =
            codec::decode(&tensor, 64 << 20).map_err(|e| Status::invalid_argument(format!("input: {e}")))?;
        let want = &self.edge.bundle().manifest().input.shape;
        if &shape != want {
            return Err(Status::invalid_argument(format!("input has shape {shape:?}, the model expects {want:?}")));
        }
        let deadline = if req.deadline_ms == 0 {
            self.edge.config.deadline
        } else {
            Duration::from_millis(req.deadline_ms as u64)
        };
        let a = self.edge.classify_with_deadline(None, values, deadline).await;
        if a.tier == Tier::Error {
            let msg = a.error.unwrap_or_else(|| "no answer".into());
            return Err(Status::unavailable(msg));
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
        }))
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
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(ClassifyServer::new(ClassifyService { edge }))
        .serve_with_incoming_shutdown(offramp_common::net::no_delay(listener), shutdown)
        .await
}
